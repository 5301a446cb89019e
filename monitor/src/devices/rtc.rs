//! The MC146818 real-time clock and CMOS RAM (ports 0x70/0x71, IRQ 8).
//!
//! * Port 0x70 selects a register (bit 7 is the NMI mask, kept and ignored); port 0x71 reads
//!   or writes it.
//! * Time registers (0x00-0x09, century 0x32) are computed from a wall-clock origin (the host's
//!   `SystemTime` when the machine is made) plus the machine clock's progress, in BCD or binary
//!   and 12 or 24 hour format as status register B says. A guest that sets the time moves an
//!   offset; while B.SET is 1 the registers are frozen and writable, and clearing SET starts
//!   the clock from them.
//! * Status A: UIP (bit 7) is 1 during the last 244 µs of every second, as the update cycle
//!   of the real part; the divider and rate bits are plain storage (the rate drives the
//!   periodic interrupt). Status D: VRT, the battery is good.
//! * Interrupts: periodic (B.PIE, at the rate of A's low bits), alarm (B.AIE, with "don't
//!   care" values 0xc0-0xff) and update-ended (B.UIE, once a second). Their flags are in
//!   status C, with IRQF; reading C clears it. The IRQ 8 line is IRQF (the PC's RTC line is
//!   active until C is read).
//! * CMOS RAM 0x0e-0x7f: plain storage, with the memory sizes a BIOS leaves: base memory
//!   (0x15/0x16, 640 KiB), extended memory in KiB (0x17/0x18 and 0x30/0x31, at most 0xffff)
//!   and memory above 16 MiB in 64 KiB blocks (0x34/0x35).

/// Seconds of the proleptic Gregorian calendar, from 1970-01-01.
type UnixSecs = i64;

const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;

/// The update cycle's length: UIP is set this long before each second boundary.
pub const UIP_NS: u64 = 244_000;

/// A broken-down date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 1 = Sunday .. 7 = Saturday, as the RTC counts.
    pub weekday: u32,
}

impl DateTime {
    /// From seconds since 1970 (Howard Hinnant's `civil_from_days`).
    pub fn from_unix(t: UnixSecs) -> DateTime {
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday (5).
        let weekday = ((days + 4).rem_euclid(7) + 1) as u32;
        DateTime { year, month, day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60, weekday }
    }

    /// To seconds since 1970 (`days_from_civil`); fields out of range are taken as they come.
    pub fn to_unix(&self) -> UnixSecs {
        let m = i64::from(self.month.clamp(1, 12));
        let y = self.year - i64::from(m <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day.max(1)) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second)
    }
}

/// The RTC and CMOS RAM.
#[derive(Clone, Debug)]
pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    /// Wall-clock seconds at machine-clock time 0, including the guest's adjustments.
    origin: UnixSecs,
    /// The time while B.SET holds the clock.
    frozen: Option<UnixSecs>,
    /// Machine-clock time up to which interrupt flags were brought.
    checked_ns: u64,
}

impl Rtc {
    pub const IRQ: u8 = 8;
    pub const INDEX_PORT: u16 = 0x70;
    pub const DATA_PORT: u16 = 0x71;

    /// An RTC showing `wall` (seconds since 1970) at machine-clock time 0, with `ram_bytes` of
    /// guest RAM recorded in the CMOS memory-size bytes.
    pub fn new(wall: UnixSecs, ram_bytes: u64) -> Rtc {
        let mut ram = [0u8; 128];
        ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
        ram[REG_B] = B_24H;
        ram[REG_D] = 0x80; // VRT
        let base_kib: u16 = 640;
        ram[0x15..0x17].copy_from_slice(&base_kib.to_le_bytes());
        let ext_kib = (ram_bytes.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        ram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        ram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        let above16 = (ram_bytes.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        ram[0x34..0x36].copy_from_slice(&above16.to_le_bytes());
        // Equipment byte: an FPU, no floppies, EGA/VGA.
        ram[0x14] = 0x02;
        Rtc { index: 0, ram, origin: wall, frozen: None, checked_ns: 0 }
    }

    /// The host's wall clock now, in seconds since 1970.
    pub fn host_wall_clock() -> UnixSecs {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// The time the RTC shows at machine-clock `now_ns`.
    pub fn time(&self, now_ns: u64) -> UnixSecs {
        self.frozen.unwrap_or(self.origin + (now_ns / 1_000_000_000) as i64)
    }

    /// The level of the IRQ 8 line.
    pub fn irq_level(&self) -> bool {
        self.ram[REG_C] & C_IRQF != 0
    }

    fn binary(&self) -> bool {
        self.ram[REG_B] & B_DM_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.binary() {
            v
        } else {
            (v / 10) << 4 | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.binary() {
            u32::from(v)
        } else {
            u32::from(v >> 4) * 10 + u32::from(v & 0xf)
        }
    }

    fn encode_hour(&self, h: u32) -> u8 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.encode(h);
        }
        let pm = if h >= 12 { 0x80 } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            x => x,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> u32 {
        if self.ram[REG_B] & B_24H != 0 {
            return self.decode(v) % 24;
        }
        let h12 = self.decode(v & 0x7f) % 12;
        h12 + if v & 0x80 != 0 { 12 } else { 0 }
    }

    /// The periodic interrupt's period, if the rate selects one.
    fn period_ns(&self) -> Option<u64> {
        let rate = u32::from(self.ram[REG_A] & 0x0f);
        match rate {
            0 => None,
            1 | 2 => Some(1_000_000_000 * (1u64 << (rate + 6)) / 32_768),
            r => Some(1_000_000_000 * (1u64 << (r - 1)) / 32_768),
        }
    }

    /// Whether the alarm registers match `t`.
    fn alarm_matches(&self, t: UnixSecs) -> bool {
        let d = DateTime::from_unix(t);
        let m = |alarm: usize, now: u8| alarm_byte_matches(self.ram[alarm], now);
        m(0x01, self.encode(d.second)) && m(0x03, self.encode(d.minute)) && m(0x05, self.encode_hour(d.hour))
    }

    /// Bring the interrupt flags in C up to `now_ns`.
    pub fn update(&mut self, now_ns: u64) {
        if now_ns <= self.checked_ns {
            return;
        }
        let then = self.checked_ns;
        self.checked_ns = now_ns;
        let mut flags = 0;
        if let Some(p) = self.period_ns() {
            if now_ns / p != then / p {
                flags |= C_PF;
            }
        }
        if self.frozen.is_none() && now_ns / 1_000_000_000 != then / 1_000_000_000 {
            flags |= C_UF;
            // Alarm: any second boundary crossed that matches (the last few are enough).
            let (t0, t1) = (self.origin + (then / 1_000_000_000) as i64, self.time(now_ns));
            if (t0 + 1..=t1).rev().take(86_400).any(|t| self.alarm_matches(t)) {
                flags |= C_AF;
            }
        }
        self.ram[REG_C] |= flags;
        let enabled = self.ram[REG_B] & (B_PIE | B_AIE | B_UIE);
        // PF/AF/UF map onto PIE/AIE/UIE bit for bit.
        if self.ram[REG_C] & enabled & 0x70 != 0 {
            self.ram[REG_C] |= C_IRQF;
        }
    }

    /// When the next enabled interrupt is due (machine-clock nanoseconds), if any.
    pub fn next_deadline_ns(&self, now_ns: u64) -> Option<u64> {
        let b = self.ram[REG_B];
        let mut next = None::<u64>;
        if b & B_PIE != 0 {
            if let Some(p) = self.period_ns() {
                next = Some((now_ns / p + 1) * p);
            }
        }
        if b & (B_UIE | B_AIE) != 0 && self.frozen.is_none() {
            let s = (now_ns / 1_000_000_000 + 1) * 1_000_000_000;
            next = Some(next.map_or(s, |n| n.min(s)));
        }
        next
    }

    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        if port == Self::INDEX_PORT {
            // Write-only on a real PC; reads float.
            return 0xff;
        }
        self.update(now_ns);
        let i = (self.index & 0x7f) as usize;
        let d = DateTime::from_unix(self.time(now_ns));
        match i {
            0x00 => self.encode(d.second),
            0x02 => self.encode(d.minute),
            0x04 => self.encode_hour(d.hour),
            0x06 => self.encode(d.weekday),
            0x07 => self.encode(d.day),
            0x08 => self.encode(d.month),
            0x09 => self.encode(d.year.rem_euclid(100) as u32),
            CENTURY => self.encode(d.year.div_euclid(100) as u32),
            REG_A => {
                let in_update = self.frozen.is_none() && now_ns % 1_000_000_000 >= 1_000_000_000 - UIP_NS;
                (self.ram[REG_A] & 0x7f) | if in_update { A_UIP } else { 0 }
            }
            REG_C => std::mem::take(&mut self.ram[REG_C]),
            _ => self.ram[i],
        }
    }

    pub fn write(&mut self, port: u16, v: u8, now_ns: u64) {
        if port == Self::INDEX_PORT {
            self.index = v;
            return;
        }
        self.update(now_ns);
        let i = (self.index & 0x7f) as usize;
        match i {
            0x00 | 0x02 | 0x04 | 0x06 | 0x07 | 0x08 | 0x09 | CENTURY => {
                let mut d = DateTime::from_unix(self.time(now_ns));
                match i {
                    0x00 => d.second = self.decode(v) % 60,
                    0x02 => d.minute = self.decode(v) % 60,
                    0x04 => d.hour = self.decode_hour(v),
                    0x06 => {} // the day of week follows the date
                    0x07 => d.day = self.decode(v),
                    0x08 => d.month = self.decode(v),
                    0x09 => d.year = d.year.div_euclid(100) * 100 + i64::from(self.decode(v) % 100),
                    _ => d.year = i64::from(self.decode(v)) * 100 + d.year.rem_euclid(100),
                }
                self.set_time(d.to_unix(), now_ns);
            }
            REG_A => self.ram[REG_A] = v & 0x7f,
            REG_B => {
                let was_set = self.ram[REG_B] & B_SET != 0;
                let set = v & B_SET != 0;
                if set && !was_set {
                    self.frozen = Some(self.time(now_ns));
                } else if !set && was_set {
                    let t = self.time(now_ns);
                    self.frozen = None;
                    self.set_time(t, now_ns);
                }
                // SET clears UIE, as on the real part.
                self.ram[REG_B] = if set { v & !B_UIE } else { v };
                // Enabling an interrupt whose flag is already up raises IRQF.
                if self.ram[REG_C] & self.ram[REG_B] & 0x70 != 0 {
                    self.ram[REG_C] |= C_IRQF;
                }
            }
            REG_C | REG_D => {} // read-only
            _ => self.ram[i] = v,
        }
    }

    fn set_time(&mut self, t: UnixSecs, now_ns: u64) {
        if self.frozen.is_some() {
            self.frozen = Some(t);
        } else {
            self.origin = t - (now_ns / 1_000_000_000) as i64;
        }
    }
}

/// An alarm byte matches when equal, or when its two top bits are set ("don't care").
fn alarm_byte_matches(alarm: u8, now: u8) -> bool {
    alarm & 0xc0 == 0xc0 || alarm == now
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:30 UTC, a Thursday.
    const T: UnixSecs = 1_709_214_330;
    const S: u64 = 1_000_000_000;

    fn rd(r: &mut Rtc, i: u8, now: u64) -> u8 {
        r.write(0x70, i, now);
        r.read(0x71, now)
    }

    fn wr(r: &mut Rtc, i: u8, v: u8, now: u64) {
        r.write(0x70, i, now);
        r.write(0x71, v, now);
    }

    #[test]
    fn calendar_round_trips() {
        let d = DateTime::from_unix(T);
        assert_eq!((d.year, d.month, d.day, d.hour, d.minute, d.second, d.weekday), (2024, 2, 29, 13, 45, 30, 5));
        assert_eq!(d.to_unix(), T);
        assert_eq!(DateTime::from_unix(0).weekday, 5);
        for t in [0, 86_399, 951_782_400, 4_107_542_400, T] {
            assert_eq!(DateTime::from_unix(t).to_unix(), t);
        }
    }

    #[test]
    fn bcd_24h_time_follows_the_clock() {
        let mut r = Rtc::new(T, 256 << 20);
        assert_eq!(rd(&mut r, 0x00, 0), 0x30);
        assert_eq!(rd(&mut r, 0x02, 0), 0x45);
        assert_eq!(rd(&mut r, 0x04, 0), 0x13);
        assert_eq!(rd(&mut r, 0x06, 0), 0x05);
        assert_eq!(rd(&mut r, 0x07, 0), 0x29);
        assert_eq!(rd(&mut r, 0x08, 0), 0x02);
        assert_eq!(rd(&mut r, 0x09, 0), 0x24);
        assert_eq!(rd(&mut r, 0x32, 0), 0x20);
        assert_eq!(rd(&mut r, 0x00, 31 * S), 0x01);
        assert_eq!(rd(&mut r, 0x02, 31 * S), 0x46);
        assert_eq!(rd(&mut r, 0x0d, 0), 0x80);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut r = Rtc::new(T, 256 << 20);
        wr(&mut r, 0x0b, B_DM_BINARY, 0); // binary, 12 hour
        assert_eq!(rd(&mut r, 0x00, 0), 30);
        assert_eq!(rd(&mut r, 0x04, 0), 0x80 | 1); // 1 PM
        assert_eq!(rd(&mut r, 0x09, 0), 24);
        wr(&mut r, 0x0b, 0, 0); // BCD, 12 hour
        assert_eq!(rd(&mut r, 0x04, 0), 0x81);
        // Midnight and noon.
        let mut r = Rtc::new(T - 13 * 3600, 0);
        wr(&mut r, 0x0b, 0, 0);
        assert_eq!(rd(&mut r, 0x04, 0), 0x12);
        let mut r = Rtc::new(T - 3600, 0);
        wr(&mut r, 0x0b, 0, 0);
        assert_eq!(rd(&mut r, 0x04, 0), 0x92);
    }

    #[test]
    fn setting_the_time() {
        let mut r = Rtc::new(T, 0);
        wr(&mut r, 0x0b, B_SET | B_24H, 0);
        wr(&mut r, 0x04, 0x08, 0);
        wr(&mut r, 0x02, 0x00, 0);
        wr(&mut r, 0x00, 0x00, 0);
        wr(&mut r, 0x09, 0x25, 0);
        // Frozen while SET.
        assert_eq!(rd(&mut r, 0x00, 5 * S), 0x00);
        assert_eq!(rd(&mut r, 0x0a, 5 * S - 1000) & A_UIP, 0);
        wr(&mut r, 0x0b, B_24H, 10 * S);
        assert_eq!(rd(&mut r, 0x00, 12 * S), 0x02);
        assert_eq!(rd(&mut r, 0x04, 12 * S), 0x08);
        assert_eq!(rd(&mut r, 0x09, 12 * S), 0x25);
        // Direct writes move the clock too.
        wr(&mut r, 0x02, 0x30, 12 * S);
        assert_eq!(rd(&mut r, 0x02, 13 * S), 0x30);
    }

    #[test]
    fn update_in_progress_window() {
        let mut r = Rtc::new(T, 0);
        assert_eq!(rd(&mut r, 0x0a, 0), 0x26);
        assert_eq!(rd(&mut r, 0x0a, S - UIP_NS - 1), 0x26);
        assert_eq!(rd(&mut r, 0x0a, S - UIP_NS), 0xa6);
        assert_eq!(rd(&mut r, 0x0a, S - 1), 0xa6);
        assert_eq!(rd(&mut r, 0x0a, S), 0x26);
    }

    #[test]
    fn periodic_update_and_alarm_interrupts() {
        let mut r = Rtc::new(T, 0);
        // Nothing enabled: flags rise, IRQF does not.
        r.update(2 * S);
        assert!(!r.irq_level());
        assert_eq!(rd(&mut r, 0x0c, 2 * S) & (C_UF | C_PF), C_UF | C_PF);
        assert_eq!(rd(&mut r, 0x0c, 2 * S), 0, "reading C clears it");
        assert_eq!(r.next_deadline_ns(2 * S), None);
        // Periodic at 1024 Hz (rate 6).
        wr(&mut r, 0x0b, B_24H | B_PIE, 2 * S);
        let p = S / 1024 + 1; // 976562.5 ns rounded to the grid used
        let due = r.next_deadline_ns(2 * S).unwrap();
        assert!(due > 2 * S && due <= 2 * S + p, "{due}");
        r.update(due - 1);
        assert!(!r.irq_level());
        r.update(due);
        assert!(r.irq_level());
        assert_eq!(rd(&mut r, 0x0c, due), C_IRQF | C_PF);
        assert!(!r.irq_level());
        // Update-ended: once a second.
        wr(&mut r, 0x0b, B_24H | B_UIE, due);
        assert_eq!(r.next_deadline_ns(due), Some(3 * S));
        r.update(3 * S);
        assert!(r.irq_level());
        assert_eq!(rd(&mut r, 0x0c, 3 * S) & (C_IRQF | C_UF), C_IRQF | C_UF);
        // Alarm at hh:mm:35 (hour and minute don't care): T is hh:mm:30 at 0.
        wr(&mut r, 0x0b, B_24H | B_AIE, 3 * S);
        wr(&mut r, 0x01, 0x35, 3 * S);
        wr(&mut r, 0x03, 0xc0, 3 * S);
        wr(&mut r, 0x05, 0xff, 3 * S);
        r.update(4 * S);
        assert!(!r.irq_level());
        r.update(5 * S);
        assert!(r.irq_level());
        assert_eq!(rd(&mut r, 0x0c, 5 * S) & (C_IRQF | C_AF), C_IRQF | C_AF);
    }

    #[test]
    fn cmos_memory_sizes_and_storage() {
        let mut r = Rtc::new(T, 256 << 20);
        assert_eq!(rd(&mut r, 0x15, 0), 0x80);
        assert_eq!(rd(&mut r, 0x16, 0), 0x02);
        // 256 MiB: the KiB count above 1 MiB saturates at 0xffff, as a BIOS leaves it.
        assert_eq!([rd(&mut r, 0x17, 0), rd(&mut r, 0x18, 0)], [0xff, 0xff]);
        assert_eq!([rd(&mut r, 0x34, 0), rd(&mut r, 0x35, 0)], (240u16 * 16).to_le_bytes());
        let mut small = Rtc::new(T, 32 << 20);
        let ext = (31u16 << 10).to_le_bytes();
        assert_eq!([rd(&mut small, 0x17, 0), rd(&mut small, 0x18, 0)], ext);
        assert_eq!([rd(&mut small, 0x30, 0), rd(&mut small, 0x31, 0)], ext);
        assert_eq!([rd(&mut small, 0x34, 0), rd(&mut small, 0x35, 0)], (16u16 * 16).to_le_bytes());
        // NMI mask bit in the index is ignored; RAM is storage; index reads float.
        wr(&mut r, 0x80 | 0x40, 0x5a, 0);
        assert_eq!(rd(&mut r, 0x40, 0), 0x5a);
        assert_eq!(r.read(0x70, 0), 0xff);
        // C and D are read-only.
        wr(&mut r, 0x0d, 0, 0);
        assert_eq!(rd(&mut r, 0x0d, 0), 0x80);
    }
}
