//! The Intel 8259A programmable interrupt controller, as the PC/AT wires a pair of them:
//! the master at ports 0x20/0x21 delivers to the CPU, the slave at 0xa0/0xa1 cascades into
//! the master's IRQ 2; the ELCR (ports 0x4d0/0x4d1, as on PIIX/ISA bridges) selects edge or
//! level triggering per line.
//!
//! Modelled: ICW1-ICW4 (single/cascade, ICW4 needed, base vector, AEOI, special fully nested),
//! OCW1 (IMR), OCW2 (non-specific/specific EOI, rotation, set priority), OCW3 (read IRR/ISR,
//! poll, special mask mode), edge and level triggering, priority resolution with rotation, and
//! the spurious-interrupt rule (a request that went away before the acknowledge cycle gives
//! IRQ 7 of that chip, with no ISR bit set). The structure follows the 8259A data sheet;
//! the priority arithmetic is the classic one (Bochs, QEMU).

/// One 8259A.
#[derive(Clone, Debug, Default)]
pub struct Pic8259 {
    /// Interrupt request register.
    pub irr: u8,
    /// In-service register.
    pub isr: u8,
    /// Interrupt mask register (OCW1).
    pub imr: u8,
    /// Current level of each input line (edge detection).
    lines: u8,
    /// Edge/level control: bit set = level triggered.
    pub elcr: u8,
    /// Bits of `elcr` that may be set.
    elcr_mask: u8,
    /// The IRQ with the lowest priority is `priority_add - 1` (rotation).
    priority_add: u8,
    /// Vector of IRQ 0 (ICW2; low 3 bits are zero).
    pub vector_base: u8,
    /// Which ICW is expected next: 0 = none (operational), 2, 3 or 4.
    init_state: u8,
    icw4_needed: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
    /// ICW3 (master: which inputs have slaves; slave: its identity).
    pub icw3: u8,
    is_master: bool,
}

impl Pic8259 {
    pub fn new(is_master: bool) -> Pic8259 {
        Pic8259 { is_master, elcr_mask: if is_master { 0xf8 } else { 0xde }, ..Default::default() }
    }

    /// The highest-priority bit of `mask` as a priority number (0 = highest), 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        if mask == 0 {
            return 8;
        }
        let mut p = 0;
        while mask & (1 << ((p + self.priority_add) & 7)) == 0 {
            p += 1;
        }
        p
    }

    /// The IRQ this chip would present to its output now, if any.
    pub fn pending_irq(&self) -> Option<u8> {
        let req = self.irr & !self.imr;
        let p = self.priority(req);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            // A further interrupt from the slave may nest within its own service.
            in_service &= !(1 << 2);
        }
        if p < self.priority(in_service) {
            Some((p + self.priority_add) & 7)
        } else {
            None
        }
    }

    /// Drive input line `irq` to `level`.
    pub fn set_line(&mut self, irq: u8, level: bool) {
        let m = 1u8 << (irq & 7);
        if self.elcr & m != 0 {
            if level {
                self.irr |= m;
                self.lines |= m;
            } else {
                self.irr &= !m;
                self.lines &= !m;
            }
        } else if level {
            if self.lines & m == 0 {
                self.irr |= m;
            }
            self.lines |= m;
        } else {
            self.lines &= !m;
        }
    }

    /// The acknowledge cycle for `irq` (one this chip presented).
    fn ack(&mut self, irq: u8) {
        let m = 1u8 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= m;
        }
        // A level-triggered request stays in IRR as long as the line is high.
        if self.elcr & m == 0 {
            self.irr &= !m;
        }
    }

    /// A write to the command port (A0 = 0): ICW1, OCW2 or OCW3.
    pub fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: reinitialize. IMR cleared, edge sense reset, IRR read selected.
            self.irr = 0;
            self.isr = 0;
            self.imr = 0;
            self.lines = 0;
            self.priority_add = 0;
            self.auto_eoi = false;
            self.rotate_on_auto_eoi = false;
            self.special_fully_nested = false;
            self.special_mask = false;
            self.read_isr = false;
            self.poll = false;
            self.icw3 = 0;
            self.single = v & 0x02 != 0;
            self.icw4_needed = v & 0x01 != 0;
            // LTIM (bit 3) is ignored on PC/AT-compatible chipsets: the ELCR decides.
            self.init_state = 2;
        } else if v & 0x08 != 0 {
            // OCW3.
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2.
            let irq = v & 7;
            match v >> 5 {
                0 => self.rotate_on_auto_eoi = false,
                4 => self.rotate_on_auto_eoi = true,
                1 | 5 => {
                    let p = self.priority(self.isr);
                    if p != 8 {
                        let done = (p + self.priority_add) & 7;
                        self.isr &= !(1 << done);
                        if v >> 5 == 5 {
                            self.priority_add = (done + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << irq),
                7 => {
                    self.isr &= !(1 << irq);
                    self.priority_add = (irq + 1) & 7;
                }
                6 => self.priority_add = (irq + 1) & 7,
                _ => {} // 2: no operation
            }
        }
    }

    /// A write to the data port (A0 = 1): ICW2-4 during initialization, OCW1 otherwise.
    pub fn write_data(&mut self, v: u8) {
        match self.init_state {
            2 => {
                self.vector_base = v & 0xf8;
                self.init_state = if !self.single {
                    3
                } else if self.icw4_needed {
                    4
                } else {
                    0
                };
            }
            3 => {
                self.icw3 = v;
                self.init_state = if self.icw4_needed { 4 } else { 0 };
            }
            4 => {
                self.special_fully_nested = v & 0x10 != 0;
                self.auto_eoi = v & 0x02 != 0;
                self.init_state = 0;
            }
            _ => self.imr = v,
        }
    }

    /// A read of the command port: the poll result after an OCW3 poll command, else IRR or ISR.
    fn read_command_plain(&self) -> u8 {
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    pub fn read_data(&self) -> u8 {
        self.imr
    }

    pub fn write_elcr(&mut self, v: u8) {
        self.elcr = v & self.elcr_mask;
        // Level-triggered lines that are low drop their request; high ones request.
        self.irr = (self.irr & !self.elcr) | (self.lines & self.elcr);
    }
}

/// The cascaded pair of a PC/AT.
#[derive(Clone, Debug)]
pub struct PicPair {
    pub master: Pic8259,
    pub slave: Pic8259,
    /// Acknowledge cycles that found no request (spurious IRQ 7 or 15).
    pub spurious: u64,
}

impl Default for PicPair {
    fn default() -> Self {
        PicPair::new()
    }
}

impl PicPair {
    pub const MASTER_CMD: u16 = 0x20;
    pub const MASTER_DATA: u16 = 0x21;
    pub const SLAVE_CMD: u16 = 0xa0;
    pub const SLAVE_DATA: u16 = 0xa1;
    pub const ELCR_MASTER: u16 = 0x4d0;
    pub const ELCR_SLAVE: u16 = 0x4d1;

    pub fn new() -> PicPair {
        PicPair { master: Pic8259::new(true), slave: Pic8259::new(false), spurious: 0 }
    }

    fn cascade(&mut self) {
        let level = self.slave.pending_irq().is_some();
        self.master.set_line(2, level);
    }

    /// Drive IRQ line `irq` (0-15) to `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        if irq < 8 {
            self.master.set_line(irq, level);
        } else if irq < 16 {
            self.slave.set_line(irq - 8, level);
        }
        self.cascade();
    }

    /// A rising then falling edge on `irq`: how a timer tick reaches an edge-triggered line.
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// Whether the master's INT output is asserted.
    pub fn int_output(&self) -> bool {
        self.master.pending_irq().is_some()
    }

    /// The CPU's interrupt acknowledge cycle: the vector the pair puts on the bus. A request
    /// that went away gives the spurious IRQ 7 (or 15 from the slave) without setting ISR.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.pending_irq() {
            Some(2) if !self.master.single => {
                self.master.ack(2);
                match self.slave.pending_irq() {
                    Some(irq) => {
                        self.slave.ack(irq);
                        self.slave.vector_base + irq
                    }
                    None => {
                        self.spurious += 1;
                        self.slave.vector_base + 7
                    }
                }
            }
            Some(irq) => {
                self.master.ack(irq);
                self.master.vector_base + irq
            }
            None => {
                self.spurious += 1;
                self.master.vector_base + 7
            }
        };
        self.cascade();
        vector
    }

    /// The poll command's answer for one chip: 0x80 | level if a request is pending (and
    /// it is acknowledged as by INTA), 0 otherwise.
    fn poll(&mut self, slave: bool) -> u8 {
        let chip = if slave { &mut self.slave } else { &mut self.master };
        chip.poll = false;
        let r = match chip.pending_irq() {
            Some(irq) => {
                chip.ack(irq);
                0x80 | irq
            }
            None => 0,
        };
        self.cascade();
        r
    }

    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            Self::MASTER_CMD if self.master.poll => self.poll(false),
            Self::SLAVE_CMD if self.slave.poll => self.poll(true),
            Self::MASTER_CMD => self.master.read_command_plain(),
            Self::SLAVE_CMD => self.slave.read_command_plain(),
            Self::MASTER_DATA => self.master.read_data(),
            Self::SLAVE_DATA => self.slave.read_data(),
            Self::ELCR_MASTER => self.master.elcr,
            Self::ELCR_SLAVE => self.slave.elcr,
            _ => 0xff,
        }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        match port {
            Self::MASTER_CMD => self.master.write_command(v),
            Self::SLAVE_CMD => self.slave.write_command(v),
            Self::MASTER_DATA => self.master.write_data(v),
            Self::SLAVE_DATA => self.slave.write_data(v),
            Self::ELCR_MASTER => self.master.write_elcr(v),
            Self::ELCR_SLAVE => self.slave.write_elcr(v),
            _ => {}
        }
        self.cascade();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The initialization sequence of Linux and of most PC kernels: master at 0x20, slave at
    /// 0x28, cascade on IRQ 2, 8086 mode.
    fn init(p: &mut PicPair, aeoi: bool) {
        let icw4 = if aeoi { 0x03 } else { 0x01 };
        p.write(0x20, 0x11);
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        p.write(0x21, icw4);
        p.write(0xa0, 0x11);
        p.write(0xa1, 0x28);
        p.write(0xa1, 0x02);
        p.write(0xa1, icw4);
        p.write(0x21, 0x00);
        p.write(0xa1, 0x00);
    }

    #[test]
    fn edge_interrupt_is_acknowledged_and_eoied() {
        let mut p = PicPair::new();
        init(&mut p, false);
        assert!(!p.int_output());
        p.pulse_irq(0);
        assert!(p.int_output());
        // IRR shows the request (OCW3 read IRR is the default after ICW1).
        assert_eq!(p.read(0x20), 0x01);
        assert_eq!(p.acknowledge(), 0x20);
        assert!(!p.int_output());
        // OCW3: read ISR.
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0x01);
        // A second edge while in service waits.
        p.pulse_irq(0);
        assert!(!p.int_output());
        p.write(0x20, 0x20); // non-specific EOI
        assert_eq!(p.read(0x20), 0x00);
        assert!(p.int_output());
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn edge_needs_a_new_rising_edge() {
        let mut p = PicPair::new();
        init(&mut p, true);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x21);
        // The line stays high: no new request.
        p.set_irq(1, true);
        assert!(!p.int_output());
        p.set_irq(1, false);
        p.set_irq(1, true);
        assert!(p.int_output());
    }

    #[test]
    fn masking_holds_requests_in_irr() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.write(0x21, 0x01);
        assert_eq!(p.read(0x21), 0x01);
        p.pulse_irq(0);
        assert!(!p.int_output());
        assert_eq!(p.read(0x20) & 1, 1);
        p.write(0x21, 0x00);
        assert!(p.int_output());
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn priority_and_nesting() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pulse_irq(3);
        p.pulse_irq(1);
        assert_eq!(p.acknowledge(), 0x21);
        // IRQ 3 is lower priority than IRQ 1 in service: blocked.
        assert!(!p.int_output());
        // IRQ 0 is higher: nests.
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x20);
        p.write(0x20, 0x20); // EOI ends IRQ 0 (highest in service)
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0x02);
        p.write(0x20, 0x20);
        assert_eq!(p.acknowledge(), 0x23);
    }

    #[test]
    fn specific_eoi_and_rotation() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pulse_irq(5);
        assert_eq!(p.acknowledge(), 0x25);
        p.write(0x20, 0x60 | 5); // specific EOI for IRQ 5
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0);
        // Set priority: IRQ 4 lowest, so IRQ 5 is now the highest.
        p.write(0x20, 0xc0 | 4);
        p.pulse_irq(0);
        p.pulse_irq(6);
        assert_eq!(p.acknowledge(), 0x26);
        // Rotate on non-specific EOI: IRQ 6 becomes lowest, IRQ 7 highest, then 0.
        p.write(0x20, 0xa0);
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn slave_cascades_through_irq2() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.pulse_irq(12);
        assert!(p.int_output());
        assert_eq!(p.acknowledge(), 0x2c);
        // Both chips have the interrupt in service.
        p.write(0x20, 0x0b);
        p.write(0xa0, 0x0b);
        assert_eq!(p.read(0x20), 0x04);
        assert_eq!(p.read(0xa0), 0x10);
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
        assert_eq!(p.read(0x20), 0);
        assert_eq!(p.read(0xa0), 0);
    }

    #[test]
    fn auto_eoi_sets_no_isr() {
        let mut p = PicPair::new();
        init(&mut p, true);
        p.pulse_irq(4);
        assert_eq!(p.acknowledge(), 0x24);
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0);
        p.pulse_irq(4);
        assert!(p.int_output());
    }

    #[test]
    fn spurious_irq7_and_irq15() {
        let mut p = PicPair::new();
        init(&mut p, false);
        // A level-triggered request that goes away before INTA.
        p.write(0x4d0, 0x20);
        p.set_irq(5, true);
        assert!(p.int_output());
        p.set_irq(5, false);
        assert_eq!(p.acknowledge(), 0x27);
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0, "a spurious IRQ 7 sets no ISR bit");
        // The same on the slave gives IRQ 15; the master sees a real IRQ 2.
        p.write(0x4d1, 0x02);
        p.set_irq(9, true);
        assert!(p.int_output());
        // Drop the slave's request after the master latched IRQ 2 (edge) but before INTA.
        p.slave.set_line(1, false);
        assert_eq!(p.acknowledge(), 0x2f);
        p.write(0xa0, 0x0b);
        assert_eq!(p.read(0xa0), 0);
        assert_eq!(p.spurious, 2);
    }

    #[test]
    fn level_triggered_stays_requested_until_the_line_drops() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.write(0x4d1, 0x08); // IRQ 11 level
        assert_eq!(p.read(0x4d1), 0x08);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x2b);
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
        assert!(p.int_output(), "still high: requested again after EOI");
        // The line drops before the acknowledge: the master had latched IRQ 2 (edge), the
        // slave has nothing: the spurious IRQ 15.
        p.set_irq(11, false);
        assert_eq!(p.acknowledge(), 0x2f);
        p.write(0x20, 0x20);
        assert!(!p.int_output());
        // ELCR bits that cannot be level (IRQ 0, 1, 2, 8, 13) read as 0.
        p.write(0x4d0, 0xff);
        assert_eq!(p.read(0x4d0), 0xf8);
        p.write(0x4d1, 0xff);
        assert_eq!(p.read(0x4d1), 0xde);
    }

    #[test]
    fn poll_mode() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.write(0x21, 0xff);
        p.write(0x21, 0xf7); // only IRQ 3 unmasked
        p.pulse_irq(3);
        p.write(0x20, 0x0c); // OCW3 poll
        assert_eq!(p.read(0x20), 0x83);
        p.write(0x20, 0x0c);
        assert_eq!(p.read(0x20), 0x00);
        p.write(0x20, 0x20);
    }

    #[test]
    fn reinitialization_clears_mask_and_state() {
        let mut p = PicPair::new();
        init(&mut p, false);
        p.write(0x21, 0xfe);
        p.pulse_irq(0);
        p.acknowledge();
        p.write(0x20, 0x11);
        assert_eq!(p.read(0x20), 0);
        p.write(0x21, 0x08);
        p.write(0x21, 0x04);
        p.write(0x21, 0x01);
        assert_eq!(p.read(0x21), 0);
        p.pulse_irq(0);
        assert_eq!(p.acknowledge(), 0x08);
    }
}
