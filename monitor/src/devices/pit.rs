//! The Intel 8254 programmable interval timer: three 16-bit down counters clocked at
//! 1.193182 MHz. On the PC, channel 0's output drives IRQ 0, channel 1 (DRAM refresh) is
//! unconnected, and channel 2's gate is bit 0 of port 0x61 and its output reads back at bit 5
//! of port 0x61 (Linux calibrates the TSC against it).
//!
//! The counters are not stepped: each channel remembers when its count was loaded (in
//! nanoseconds of the machine's [`Clock`](super::clock::Clock)) and derives count and output
//! from the time elapsed, so reading them is exact at any moment and nothing runs while the
//! guest does not look. Modes 0-5 are modelled for counting and output; modes 2 and 3 are
//! periodic. Counter latch, read-back (count and status), and the LSB/MSB/LSB-then-MSB access
//! modes are implemented. BCD counting is accepted and reported in the status but counts in
//! binary (no PC guest relies on it).

/// The input clock of the 8254 on the PC, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
const NS_PER_S: u64 = 1_000_000_000;

/// PIT ticks elapsed in `ns` nanoseconds (rounded down).
pub fn ns_to_ticks(ns: u64) -> u64 {
    (ns as u128 * PIT_HZ as u128 / NS_PER_S as u128) as u64
}

/// The first nanosecond at which `ticks` PIT ticks have elapsed.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let n = ticks as u128 * NS_PER_S as u128;
    let d = PIT_HZ as u128;
    u64::try_from(n.div_ceil(d)).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Access {
    /// Counter latch command (only in control words).
    #[default]
    Latch,
    Lsb,
    Msb,
    Word,
}

impl Access {
    fn from_bits(b: u8) -> Access {
        match b & 3 {
            0 => Access::Latch,
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        }
    }
    fn bits(self) -> u8 {
        match self {
            Access::Latch => 0,
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        }
    }
}

/// One counter of the 8254.
#[derive(Clone, Debug, Default)]
pub struct Channel {
    mode: u8,
    bcd: bool,
    access: Access,
    /// The count register as loaded (0 means 0x10000).
    reload: u32,
    /// When counting started (in PIT ticks of the global grid `ns_to_ticks(now_ns)`), if it has.
    start: Option<u64>,
    /// A count has been written since the control word but counting has not started.
    null_count: bool,
    gate: bool,
    /// Modes 0 and 4 with the gate low: the count elapsed when the gate fell (counting paused).
    paused_elapsed: Option<u64>,
    /// Output-latched count (counter latch or read-back), and whether its MSB is still due.
    latched_count: Option<u16>,
    latched_msb_next: bool,
    latched_status: Option<u8>,
    /// Word access: the next read is the MSB.
    read_msb_next: bool,
    /// Word access: the LSB written, waiting for the MSB.
    write_lsb: Option<u8>,
    /// Periods of a periodic mode (or the terminal count of a one-shot) already turned into
    /// IRQ edges.
    edges_seen: u64,
}

impl Channel {
    fn count_span(&self) -> u64 {
        if self.reload == 0 {
            0x10000
        } else {
            self.reload as u64
        }
    }

    /// PIT ticks since the count was loaded, if counting.
    fn elapsed(&self, now_ns: u64) -> Option<u64> {
        if let Some(e) = self.paused_elapsed {
            return Some(e);
        }
        self.start.map(|s| ns_to_ticks(now_ns).saturating_sub(s))
    }

    /// The current count as the counter holds it.
    pub fn count(&self, now_ns: u64) -> u16 {
        let n = self.count_span();
        let Some(d) = self.elapsed(now_ns) else {
            return self.reload as u16;
        };
        let v = match self.mode {
            0 | 1 | 4 | 5 => (n.wrapping_sub(d)) & 0xffff,
            // Mode 3 counts down by two, twice per period.
            3 => {
                let half = d % n;
                let r = n - (2 * half) % n;
                r & 0xffff
            }
            _ => n - d % n,
        };
        v as u16
    }

    /// The level of OUT.
    pub fn out(&self, now_ns: u64) -> bool {
        let Some(d) = self.elapsed(now_ns) else {
            // After a control word: mode 0 starts low, every other mode high.
            return self.mode != 0;
        };
        let n = self.count_span();
        match self.mode {
            0 => d >= n,
            1 => d >= n,
            2 => {
                if !self.gate {
                    return true;
                }
                // Low for one clock when the count reaches 1.
                d % n != n - 1
            }
            3 => {
                if !self.gate {
                    return true;
                }
                (d % n) < n.div_ceil(2)
            }
            4 | 5 => d != n,
            _ => true,
        }
    }

    fn status(&self, now_ns: u64) -> u8 {
        (u8::from(self.out(now_ns)) << 7)
            | (u8::from(self.null_count) << 6)
            | (self.access.bits() << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now_ns: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.count(now_ns));
            self.latched_msb_next = self.access == Access::Msb;
        }
    }

    fn control(&mut self, v: u8) {
        self.access = Access::from_bits(v >> 4);
        self.mode = match (v >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.bcd = v & 1 != 0;
        self.start = None;
        self.paused_elapsed = None;
        self.null_count = true;
        self.latched_count = None;
        self.latched_status = None;
        self.read_msb_next = false;
        self.write_lsb = None;
        self.edges_seen = 0;
    }

    fn load(&mut self, count: u16, now_ns: u64) {
        self.reload = count as u32;
        self.null_count = false;
        self.edges_seen = 0;
        self.paused_elapsed = None;
        // Modes 1 and 5 are triggered by the gate; the others start at once (if gated on).
        match self.mode {
            1 | 5 => {}
            _ if self.gate => self.start = Some(ns_to_ticks(now_ns)),
            _ => {
                self.start = Some(ns_to_ticks(now_ns));
                if self.mode == 0 || self.mode == 4 {
                    self.paused_elapsed = Some(0);
                } else {
                    self.start = None;
                }
            }
        }
    }

    fn write(&mut self, v: u8, now_ns: u64) {
        match self.access {
            Access::Lsb => self.load(v as u16, now_ns),
            Access::Msb => self.load((v as u16) << 8, now_ns),
            Access::Word | Access::Latch => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(v);
                    // Mode 0: writing the first byte stops the count.
                    if self.mode == 0 {
                        if let Some(d) = self.elapsed(now_ns) {
                            self.paused_elapsed = Some(d);
                        }
                    }
                }
                Some(lsb) => self.load(u16::from_le_bytes([lsb, v]), now_ns),
            },
        }
    }

    fn read(&mut self, now_ns: u64) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        if let Some(c) = self.latched_count {
            let [lo, hi] = c.to_le_bytes();
            return match self.access {
                Access::Lsb => {
                    self.latched_count = None;
                    lo
                }
                Access::Msb => {
                    self.latched_count = None;
                    hi
                }
                _ => {
                    if self.latched_msb_next {
                        self.latched_count = None;
                        self.latched_msb_next = false;
                        hi
                    } else {
                        self.latched_msb_next = true;
                        lo
                    }
                }
            };
        }
        let [lo, hi] = self.count(now_ns).to_le_bytes();
        match self.access {
            Access::Lsb => lo,
            Access::Msb => hi,
            _ => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lo
                } else {
                    hi
                }
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now_ns: u64) {
        let rising = gate && !self.gate;
        let falling = !gate && self.gate;
        self.gate = gate;
        match self.mode {
            0 | 4 => {
                if falling {
                    self.paused_elapsed = self.elapsed(now_ns);
                } else if rising {
                    if let Some(d) = self.paused_elapsed.take() {
                        self.start = Some(ns_to_ticks(now_ns).saturating_sub(d));
                    }
                }
            }
            1 | 5 | 2 | 3 if rising && !self.null_count => {
                self.start = Some(ns_to_ticks(now_ns));
                self.edges_seen = 0;
            }
            2 | 3 if falling => self.start = None,
            _ => {}
        }
    }

    /// Rising edges of OUT not yet reported, up to `now_ns` (IRQ 0's edge-triggered input
    /// latches at most one, so a count greater than one means ticks were lost).
    fn new_edges(&mut self, now_ns: u64) -> u64 {
        let Some(d) = self.elapsed(now_ns) else { return 0 };
        let n = self.count_span();
        let total = match self.mode {
            // Periodic: one rising edge at the end of every period.
            2 | 3 if self.paused_elapsed.is_none() => d / n,
            // One-shot: OUT rises at terminal count.
            0 | 1 => u64::from(d >= n),
            // Strobes: OUT is low for the one clock at terminal count and rises after it
            // (Linux's PIT clockevent in one-shot mode uses mode 4: one IRQ 0 per count).
            4 | 5 => u64::from(d > n),
            _ => 0,
        };
        let new = total.saturating_sub(self.edges_seen);
        self.edges_seen = self.edges_seen.max(total);
        new
    }

    /// The time of the next rising edge of OUT, if one is coming.
    fn next_edge_ns(&self) -> Option<u64> {
        let start = self.start?;
        if self.paused_elapsed.is_some() {
            return None;
        }
        let n = self.count_span();
        let ticks = match self.mode {
            2 | 3 => (self.edges_seen + 1).checked_mul(n)?,
            0 | 1 if self.edges_seen == 0 => n,
            4 | 5 if self.edges_seen == 0 => n + 1,
            _ => return None,
        };
        Some(ticks_to_ns(start.checked_add(ticks)?))
    }
}

/// The three channels and the control word port.
#[derive(Clone, Debug)]
pub struct Pit {
    pub channels: [Channel; 3],
    /// IRQ 0 edges that were due while one was still pending (lost ticks).
    pub lost_ticks: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Pit::new()
    }
}

impl Pit {
    pub const CHANNEL0: u16 = 0x40;
    pub const CHANNEL2: u16 = 0x42;
    pub const CONTROL: u16 = 0x43;

    pub fn new() -> Pit {
        let mut channels: [Channel; 3] = Default::default();
        // Gates of channels 0 and 1 are tied high on the PC; channel 2's is port 0x61 bit 0.
        channels[0].gate = true;
        channels[1].gate = true;
        Pit { channels, lost_ticks: 0 }
    }

    /// A read of port 0x40-0x43 (the control port reads as nothing: 0xff).
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            0x40..=0x42 => self.channels[(port - 0x40) as usize].read(now_ns),
            _ => 0xff,
        }
    }

    pub fn write(&mut self, port: u16, v: u8, now_ns: u64) {
        match port {
            0x40..=0x42 => self.channels[(port - 0x40) as usize].write(v, now_ns),
            Self::CONTROL => {
                let sc = (v >> 6) as usize;
                if sc == 3 {
                    // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
                    for (i, ch) in self.channels.iter_mut().enumerate() {
                        if v & (2 << i) == 0 {
                            continue;
                        }
                        if v & 0x20 == 0 {
                            ch.latch_count(now_ns);
                        }
                        if v & 0x10 == 0 && ch.latched_status.is_none() {
                            ch.latched_status = Some(ch.status(now_ns));
                        }
                    }
                } else if (v >> 4) & 3 == 0 {
                    self.channels[sc].latch_count(now_ns);
                } else {
                    self.channels[sc].control(v);
                }
            }
            _ => {}
        }
    }

    /// Channel 2's gate (port 0x61 bit 0).
    pub fn set_gate2(&mut self, gate: bool, now_ns: u64) {
        self.channels[2].set_gate(gate, now_ns);
    }

    pub fn gate2(&self) -> bool {
        self.channels[2].gate
    }

    /// Channel 2's OUT (port 0x61 bit 5).
    pub fn out2(&self, now_ns: u64) -> bool {
        self.channels[2].out(now_ns)
    }

    /// Whether channel 0 produced a rising edge on IRQ 0 since the last call.
    pub fn irq0_edge(&mut self, now_ns: u64) -> bool {
        let n = self.channels[0].new_edges(now_ns);
        if n > 1 {
            self.lost_ticks += n - 1;
        }
        n > 0
    }

    /// When channel 0 will next raise IRQ 0 (clock nanoseconds), if it will.
    pub fn next_irq0_ns(&self) -> Option<u64> {
        self.channels[0].next_edge_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK_NS: u64 = 838; // one PIT period is 838.095 ns

    fn at(ticks: u64) -> u64 {
        ticks_to_ns(ticks)
    }

    #[test]
    fn conversions_round_trip() {
        assert_eq!(ns_to_ticks(NS_PER_S), PIT_HZ);
        for t in [0, 1, 2, 1000, 65536, 1_193_182] {
            assert_eq!(ns_to_ticks(ticks_to_ns(t)), t);
            assert!(ns_to_ticks(ticks_to_ns(t).saturating_sub(1)) < t.max(1));
        }
        assert!(ticks_to_ns(1) > TICK_NS && ticks_to_ns(1) <= TICK_NS + 1);
    }

    /// Mode 4 on channel 0, as Linux's one-shot clockevent programs it (control word 0x38,
    /// then LSB and MSB of the delta): one IRQ 0 edge, one tick after terminal count, and
    /// another for each new count.
    #[test]
    fn mode4_one_shot_clockevent() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x38, 0);
        assert_eq!(pit.next_irq0_ns(), None);
        pit.write(0x40, 100, 0);
        pit.write(0x40, 0, 0);
        assert_eq!(pit.next_irq0_ns(), Some(at(101)));
        assert!(!pit.irq0_edge(at(100)));
        assert!(pit.irq0_edge(at(101)));
        assert!(!pit.irq0_edge(at(5000)));
        assert_eq!(pit.next_irq0_ns(), None);
        pit.write(0x40, 0x10, at(6000));
        pit.write(0x40, 0x00, at(6000));
        let due = pit.next_irq0_ns().unwrap();
        assert!(due > at(6000) && due <= at(6000 + 17) + 1, "{due}");
        assert!(pit.irq0_edge(due));
        assert_eq!(pit.lost_ticks, 0);
    }

    /// Mode 2 on channel 0 with a count of 1000: one IRQ 0 edge every 1000 ticks.
    #[test]
    fn mode2_rate_generator_on_irq0() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x34, 0); // channel 0, lobyte/hibyte, mode 2
        pit.write(0x40, 0xe8, 0);
        pit.write(0x40, 0x03, 0); // 1000
        assert_eq!(pit.next_irq0_ns(), Some(at(1000)));
        assert!(!pit.irq0_edge(at(999)));
        assert!(pit.irq0_edge(at(1000)));
        assert!(!pit.irq0_edge(at(1500)));
        assert_eq!(pit.next_irq0_ns(), Some(at(2000)));
        // Four more periods at once (the 2nd to the 5th): one edge, three lost.
        assert!(pit.irq0_edge(at(5000)));
        assert_eq!(pit.lost_ticks, 3);
        assert_eq!(pit.next_irq0_ns(), Some(at(6000)));
        // The count runs n..1.
        assert_eq!(pit.channels[0].count(at(5000)), 1000);
        assert_eq!(pit.channels[0].count(at(5001)), 999);
        assert_eq!(pit.channels[0].count(at(5999)), 1);
        assert!(pit.channels[0].out(at(5998)));
        assert!(!pit.channels[0].out(at(5999)));
    }

    /// Mode 3: square wave, high for the first half of the period, counting down by two.
    #[test]
    fn mode3_square_wave() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x36, 0); // channel 0, lobyte/hibyte, mode 3
        pit.write(0x40, 100, 0);
        pit.write(0x40, 0, 0);
        assert!(pit.channels[0].out(at(49)));
        assert!(!pit.channels[0].out(at(50)));
        assert!(pit.channels[0].out(at(100)));
        assert_eq!(pit.channels[0].count(at(0)), 100);
        assert_eq!(pit.channels[0].count(at(10)), 80);
        assert!(pit.irq0_edge(at(100)));
        assert_eq!(pit.next_irq0_ns(), Some(at(200)));
    }

    /// Count 0 means 65536: the 18.2 Hz BIOS tick.
    #[test]
    fn count_zero_is_65536() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x34, 0);
        pit.write(0x40, 0, 0);
        pit.write(0x40, 0, 0);
        assert_eq!(pit.next_irq0_ns(), Some(at(65536)));
    }

    /// Mode 0: OUT low until terminal count, then high; one interrupt.
    #[test]
    fn mode0_interrupt_on_terminal_count() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x30, 0); // channel 0, lobyte/hibyte, mode 0
        assert!(!pit.channels[0].out(0));
        pit.write(0x40, 0x10, 0);
        pit.write(0x40, 0x00, 0);
        assert!(!pit.channels[0].out(at(15)));
        assert_eq!(pit.channels[0].count(at(15)), 1);
        assert!(pit.channels[0].out(at(16)));
        assert!(pit.irq0_edge(at(20)));
        assert!(!pit.irq0_edge(at(100)));
        assert_eq!(pit.next_irq0_ns(), None);
        // The counter keeps wrapping past zero.
        assert_eq!(pit.channels[0].count(at(17)), 0xffff);
    }

    /// Counter latch freezes the value read until both bytes are read.
    #[test]
    fn counter_latch() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x34, 0);
        pit.write(0x40, 0x00, 0);
        pit.write(0x40, 0x10, 0); // 0x1000
        pit.write(0x43, 0x00, at(0x10)); // latch channel 0
        assert_eq!(pit.read(0x40, at(0x500)), 0xf0);
        assert_eq!(pit.read(0x40, at(0x600)), 0x0f);
        // Unlatched reads follow the counter.
        assert_eq!(pit.read(0x40, at(0x20)), 0xe0);
        assert_eq!(pit.read(0x40, at(0x20)), 0x0f);
    }

    /// Read-back of status and count; status first.
    #[test]
    fn read_back() {
        let mut pit = Pit::new();
        pit.write(0x43, 0xb0, 0); // channel 2, lobyte/hibyte, mode 0
        // Status right after the control word: OUT low, null count, access 3, mode 0.
        pit.write(0x43, 0xe8, 0); // read-back status only, channel 2
        assert_eq!(pit.read(0x42, 0), 0x70);
        pit.set_gate2(true, 0);
        pit.write(0x42, 0x00, 0);
        pit.write(0x42, 0x01, 0); // 0x100
        pit.write(0x43, 0xc8, at(0x200)); // read-back count and status, channel 2
        assert_eq!(pit.read(0x42, at(0x300)), 0xb0, "OUT high, count loaded, mode 0");
        // Mode 0 keeps counting past terminal count: 0x100 - 0x200 wraps to 0xff00.
        assert_eq!(pit.read(0x42, at(0x300)), 0x00);
        assert_eq!(pit.read(0x42, at(0x300)), 0xff);
    }

    #[test]
    fn lsb_and_msb_only_access() {
        let mut pit = Pit::new();
        pit.write(0x43, 0x14, 0); // channel 0, LSB only, mode 2
        pit.write(0x40, 50, 0);
        assert_eq!(pit.read(0x40, at(10)), 40);
        assert_eq!(pit.read(0x40, at(10)), 40);
        pit.write(0x43, 0x24, 0); // MSB only
        pit.write(0x40, 0x02, 0); // 0x200
        assert_eq!(pit.read(0x40, at(0x100)), 0x01);
        assert_eq!(pit.next_irq0_ns(), Some(at(0x200)));
    }

    /// Channel 2 as Linux's PIT TSC calibration uses it: mode 0, gated by port 0x61 bit 0,
    /// OUT (port 0x61 bit 5) goes high at terminal count.
    #[test]
    fn channel2_gate_and_output() {
        let mut pit = Pit::new();
        pit.set_gate2(false, 0);
        pit.write(0x43, 0xb0, 0);
        pit.write(0x42, 0xe8, 0);
        pit.write(0x42, 0x03, 0); // 1000, gate low: not counting
        assert!(!pit.out2(at(5000)));
        pit.set_gate2(true, at(5000));
        assert!(!pit.out2(at(5999)));
        assert!(pit.out2(at(6000)));
        // Gate low pauses mode 0.
        pit.write(0x43, 0xb0, at(7000));
        pit.write(0x42, 0x64, at(7000));
        pit.write(0x42, 0x00, at(7000)); // 100
        pit.set_gate2(false, at(7050));
        assert_eq!(pit.channels[2].count(at(9000)), 50);
        pit.set_gate2(true, at(9000));
        assert!(!pit.out2(at(9049)));
        assert!(pit.out2(at(9051)));
    }

    /// Mode 2 on channel 2: gate low holds OUT high and stops; the rising gate restarts.
    #[test]
    fn gate_restarts_periodic_modes() {
        let mut pit = Pit::new();
        pit.set_gate2(true, 0);
        pit.write(0x43, 0xb4, 0); // channel 2, word, mode 2
        pit.write(0x42, 10, 0);
        pit.write(0x42, 0, 0);
        assert_eq!(pit.channels[2].count(at(3)), 7);
        pit.set_gate2(false, at(3));
        assert!(pit.out2(at(9)));
        pit.set_gate2(true, at(100));
        assert_eq!(pit.channels[2].count(at(101)), 9);
    }
}
