//! The port-I/O map: which device answers which port.
//!
//! The map is data (ranges to [`DeviceId`]s) so that the machine's dispatcher is one lookup
//! and a `match`, the devices stay concrete types the machine can also reach directly (the
//! PIC for interrupt acknowledge, the PIT for deadlines), and overlapping registrations are
//! refused when the machine is assembled rather than shadowing each other at run time.

use std::ops::RangeInclusive;

/// The devices of the PC platform that own ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    Pic,
    Elcr,
    Pit,
    /// Port 0x61: system control port B (PIT channel 2 gate and output, speaker, refresh).
    SystemControl,
    /// Port 0x80: POST codes, written by firmware and used by Linux as an I/O delay. Ignored.
    PostCode,
    DebugExit,
    Com1,
    /// MC146818 RTC and CMOS RAM (0x70/0x71).
    Rtc,
    /// i8042 keyboard controller (0x60 data, 0x64 status/command).
    Kbc,
    /// Port 0xed: another I/O delay port (Linux's `io_delay=0xed`). Ignored.
    Delay,
    /// PCI configuration mechanism 1 (0xcf8 address, 0xcfc data): no devices.
    PciConfig,
}

impl DeviceId {
    /// Whether the device's model does nothing: every write is ignored and every read returns
    /// the floating bus ([`FLOATING_BUS`]), without a side effect. The machine dispatches
    /// these devices' ports like ports no device claims (`Machine::read_byte`,
    /// `Machine::write_byte`), and the `bt` engine does IN/OUT there inline
    /// (`Machine::null_ports`). Port 0x80 is not null: it reads back the last POST code.
    pub fn is_null(self) -> bool {
        matches!(self, DeviceId::Delay)
    }
}

/// What a byte read of a port no device drives returns: the floating ISA bus, all ones.
pub const FLOATING_BUS: u8 = 0xff;

/// An overlapping registration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ports {new:#x?} of {new_dev:?} overlap ports {old:#x?} of {old_dev:?}")]
pub struct Overlap {
    pub new: RangeInclusive<u16>,
    pub new_dev: DeviceId,
    pub old: RangeInclusive<u16>,
    pub old_dev: DeviceId,
}

/// Port ranges and their devices.
#[derive(Clone, Debug, Default)]
pub struct PortMap {
    entries: Vec<(RangeInclusive<u16>, DeviceId)>,
}

impl PortMap {
    pub fn new() -> PortMap {
        PortMap::default()
    }

    /// The legacy PC ports this machine implements.
    pub fn pc() -> PortMap {
        let mut m = PortMap::new();
        for (r, d) in [
            (0x20..=0x21, DeviceId::Pic),
            (0xa0..=0xa1, DeviceId::Pic),
            (0x4d0..=0x4d1, DeviceId::Elcr),
            (0x40..=0x43, DeviceId::Pit),
            (0x61..=0x61, DeviceId::SystemControl),
            (0x80..=0x80, DeviceId::PostCode),
            (0xf4..=0xf4, DeviceId::DebugExit),
            (0x3f8..=0x3ff, DeviceId::Com1),
            (0x70..=0x71, DeviceId::Rtc),
            (0x60..=0x60, DeviceId::Kbc),
            (0x64..=0x64, DeviceId::Kbc),
            (0xed..=0xed, DeviceId::Delay),
            (0xcf8..=0xcff, DeviceId::PciConfig),
        ] {
            // The table above has no overlaps (checked by a unit test).
            let _ = m.register(r, d);
        }
        m
    }

    pub fn register(&mut self, ports: RangeInclusive<u16>, dev: DeviceId) -> Result<(), Overlap> {
        if let Some((old, old_dev)) =
            self.entries.iter().find(|(r, _)| r.start() <= ports.end() && ports.start() <= r.end())
        {
            return Err(Overlap { new: ports, new_dev: dev, old: old.clone(), old_dev: *old_dev });
        }
        self.entries.push((ports, dev));
        self.entries.sort_by_key(|(r, _)| *r.start());
        Ok(())
    }

    /// Whether a byte access at `port` does nothing (writes ignored, reads [`FLOATING_BUS`]): no
    /// device claims it, or a null device does ([`DeviceId::is_null`]).
    pub fn is_null(&self, port: u16) -> bool {
        self.lookup(port).is_none_or(|(d, _)| d.is_null())
    }

    /// The device at `port` and the port's offset from the start of its range.
    pub fn lookup(&self, port: u16) -> Option<(DeviceId, u16)> {
        let i = self.entries.partition_point(|(r, _)| *r.start() <= port);
        let (r, d) = self.entries.get(i.checked_sub(1)?)?;
        r.contains(&port).then(|| (*d, port - r.start()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_map_lookups() {
        let m = PortMap::pc();
        assert_eq!(m.lookup(0x20), Some((DeviceId::Pic, 0)));
        assert_eq!(m.lookup(0xa1), Some((DeviceId::Pic, 1)));
        assert_eq!(m.lookup(0x43), Some((DeviceId::Pit, 3)));
        assert_eq!(m.lookup(0x3fd), Some((DeviceId::Com1, 5)));
        assert_eq!(m.lookup(0xf4), Some((DeviceId::DebugExit, 0)));
        assert_eq!(m.lookup(0x22), None);
        assert_eq!(m.lookup(0), None);
        assert_eq!(m.lookup(0xffff), None);
        assert_eq!(m.entries.len(), 13);
        assert_eq!(m.lookup(0x71), Some((DeviceId::Rtc, 1)));
        assert_eq!(m.lookup(0x64), Some((DeviceId::Kbc, 0)));
        assert_eq!(m.lookup(0xcfe), Some((DeviceId::PciConfig, 6)));
    }

    #[test]
    fn null_ports_are_the_unclaimed_and_the_delay_port() {
        let m = PortMap::pc();
        assert!(m.is_null(0xe0) && m.is_null(0xed) && m.is_null(0x3f7) && m.is_null(0x81));
        assert!(!m.is_null(0x80) && !m.is_null(0xf4) && !m.is_null(0x3f8) && !m.is_null(0x21));
        // Every claimed port but the delay port's is a device's.
        let claimed = (0..=u16::MAX).filter(|&p| m.lookup(p).is_some()).count();
        let null = (0..=u16::MAX).filter(|&p| m.is_null(p)).count();
        assert_eq!(65536 - null, claimed - 1);
    }

    #[test]
    fn overlaps_are_refused() {
        let mut m = PortMap::pc();
        let e = m.register(0x3fc..=0x400, DeviceId::PostCode).unwrap_err();
        assert_eq!(e.old_dev, DeviceId::Com1);
        assert!(m.register(0x2f8..=0x2ff, DeviceId::PostCode).is_ok());
        assert_eq!(m.lookup(0x2f8), Some((DeviceId::PostCode, 0)));
    }
}
