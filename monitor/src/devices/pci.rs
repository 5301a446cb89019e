//! PCI configuration mechanism 1 with no devices behind it.
//!
//! 0xcf8-0xcfb is the 32-bit CONFIG_ADDRESS register: it keeps what is written (byte lanes
//! too, since the machine splits wide accesses into bytes), so Linux's "is mechanism 1
//! there" check passes; 0xcfc-0xcff (CONFIG_DATA) reads all ones for every address, which
//! is what a bus with no device answers, and ignores writes. Linux then finds no host bridge
//! and runs without PCI.

#[derive(Clone, Debug, Default)]
pub struct PciConfig {
    address: u32,
}

impl PciConfig {
    pub const ADDRESS_PORT: u16 = 0xcf8;
    pub const DATA_PORT: u16 = 0xcfc;

    pub fn new() -> PciConfig {
        PciConfig::default()
    }

    /// `offset` from 0xcf8.
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            0..=3 => (self.address >> (8 * offset)) as u8,
            _ => 0xff,
        }
    }

    pub fn write(&mut self, offset: u16, v: u8) {
        if offset < 4 {
            let shift = 8 * offset;
            self.address = (self.address & !(0xff << shift)) | (u32::from(v) << shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_latches_and_data_floats() {
        let mut p = PciConfig::new();
        for (i, b) in 0x8000_0000u32.to_le_bytes().iter().enumerate() {
            p.write(i as u16, *b);
        }
        let a: Vec<u8> = (0..4).map(|i| p.read(i)).collect();
        assert_eq!(a, 0x8000_0000u32.to_le_bytes());
        assert!((4..8).all(|i| p.read(i) == 0xff));
        p.write(4, 0);
        assert_eq!(p.read(4), 0xff);
    }
}
