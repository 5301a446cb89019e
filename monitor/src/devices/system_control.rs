//! Port 0x61, "system control port B" of the PC/AT: bit 0 gates PIT channel 2, bit 1 enables
//! the speaker, bit 4 toggles with DRAM refresh (every 15.085 µs; old delay loops poll it),
//! bit 5 reads PIT channel 2's OUT. The PIT itself is passed in: this register is glue.

use super::pit::Pit;

/// Refresh request period of the PC/AT (bit 4 toggles at this rate).
const REFRESH_NS: u64 = 15_085;

#[derive(Clone, Debug, Default)]
pub struct SystemControl {
    /// The writable bits 0-3 (timer 2 gate, speaker data, parity check disables).
    bits: u8,
}

impl SystemControl {
    pub const PORT: u16 = 0x61;

    pub fn new() -> SystemControl {
        SystemControl::default()
    }

    pub fn read(&self, pit: &Pit, now_ns: u64) -> u8 {
        let refresh = (now_ns / REFRESH_NS) & 1 == 1;
        (self.bits & 0x0f) | (u8::from(refresh) << 4) | (u8::from(pit.out2(now_ns)) << 5)
    }

    pub fn write(&mut self, v: u8, pit: &mut Pit, now_ns: u64) {
        self.bits = v & 0x0f;
        pit.set_gate2(v & 1 != 0, now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pit::ticks_to_ns;

    /// Linux's PIT calibration of the TSC: gate high, speaker off, channel 2 in mode 0 with a
    /// count, then wait for bit 5.
    #[test]
    fn channel2_output_through_port_61() {
        let mut pit = Pit::new();
        let mut sc = SystemControl::new();
        sc.write(0x01, &mut pit, 0);
        assert_eq!(sc.read(&pit, 0) & 0x0f, 0x01);
        pit.write(0x43, 0xb0, 0);
        pit.write(0x42, 0x2e, 0);
        pit.write(0x42, 0x9b, 0); // 0x9b2e: about 33 ms
        assert_eq!(sc.read(&pit, ticks_to_ns(0x9b2d)) & 0x20, 0);
        assert_eq!(sc.read(&pit, ticks_to_ns(0x9b2e)) & 0x20, 0x20);
    }

    #[test]
    fn refresh_bit_toggles() {
        let pit = Pit::new();
        let sc = SystemControl::new();
        let a = sc.read(&pit, 0) & 0x10;
        let b = sc.read(&pit, REFRESH_NS) & 0x10;
        assert_ne!(a, b);
    }
}
