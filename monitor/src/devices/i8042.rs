//! The i8042 keyboard controller (ports 0x60 data, 0x64 status/command), with a keyboard
//! that answers commands but has no keys, and no mouse.
//!
//! Enough for Linux's probe (`i8042` and `atkbd`): the command byte (0x20/0x60), self tests
//! (0xaa, 0xab, 0xa9), port enables (0xa7/0xa8/0xad/0xae), the loopback writes (0xd2/0xd3)
//! the driver uses to find the aux port, the output port (0xd0/0xd1) and the keyboard's
//! commands (reset 0xff, identify 0xf2, LEDs, rate, scan set, enable/disable, echo). A byte for
//! the mouse (0xd4) gets 0xfe ("no device") with the timeout bit, as a PC without one answers.
//! IRQ 1 (keyboard) and IRQ 12 (aux) follow the output buffer and the command byte.
//!
//! **Reset**: command 0xfe (pulse the reset line) or an output-port write with bit 0 clear
//! asks for a CPU reset: [`I8042::reset_requested`]. `vmm` ends the run there (exit status 0):
//! it is how Linux's `reboot` resets a PC without ACPI.

use std::collections::VecDeque;

const ST_OBF: u8 = 0x01;
const ST_SYS: u8 = 0x04;
const ST_CMD: u8 = 0x08;
const ST_UNLOCKED: u8 = 0x10;
const ST_AUX_OBF: u8 = 0x20;
const ST_TIMEOUT: u8 = 0x40;

const CCB_KBD_INT: u8 = 0x01;
const CCB_AUX_INT: u8 = 0x02;
const CCB_SYS: u8 = 0x04;
const CCB_KBD_DISABLE: u8 = 0x10;
const CCB_AUX_DISABLE: u8 = 0x20;
const CCB_XLATE: u8 = 0x40;

/// What the next byte written to port 0x60 is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataFor {
    Keyboard,
    CommandByte,
    OutputPort,
    KbdLoopback,
    AuxLoopback,
    Aux,
    /// The parameter of a keyboard command (LEDs, rate, scan set).
    KbdParam(u8),
}

#[derive(Clone, Debug)]
pub struct I8042 {
    /// Bytes waiting for the guest: (value, from the aux port).
    out: VecDeque<(u8, bool)>,
    ccb: u8,
    status_extra: u8,
    data_for: DataFor,
    output_port: u8,
    scan_set: u8,
    reset: bool,
    /// The interrupt outputs are held low after a read of the output buffer until
    /// [`release_irq`](I8042::release_irq): the real controller takes a moment to load the
    /// next byte, and the 8259's edge-triggered inputs need the line to drop and rise again
    /// for each byte (without this, a reply of several bytes raises one interrupt).
    holdoff: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042::new()
    }
}

impl I8042 {
    pub const DATA_PORT: u16 = 0x60;
    pub const STATUS_PORT: u16 = 0x64;
    pub const KBD_IRQ: u8 = 1;
    pub const AUX_IRQ: u8 = 12;

    pub fn new() -> I8042 {
        I8042 {
            out: VecDeque::new(),
            ccb: CCB_KBD_INT | CCB_SYS | CCB_XLATE,
            status_extra: 0,
            data_for: DataFor::Keyboard,
            output_port: 0x03,
            scan_set: 2,
            reset: false,
            holdoff: false,
        }
    }

    /// Whether the outputs are held low after a read (see the field).
    pub fn irq_held(&self) -> bool {
        self.holdoff
    }

    /// Let the interrupt outputs follow the output buffer again.
    pub fn release_irq(&mut self) {
        self.holdoff = false;
    }

    /// Whether the guest asked for a CPU reset.
    pub fn reset_requested(&self) -> bool {
        self.reset
    }

    /// The levels of IRQ 1 and IRQ 12.
    pub fn irq_levels(&self) -> (bool, bool) {
        if self.holdoff {
            return (false, false);
        }
        match self.out.front() {
            Some((_, false)) => (self.ccb & CCB_KBD_INT != 0, false),
            Some((_, true)) => (false, self.ccb & CCB_AUX_INT != 0),
            None => (false, false),
        }
    }

    fn push(&mut self, v: u8) {
        self.out.push_back((v, false));
    }

    pub fn read(&mut self, port: u16) -> u8 {
        if port == Self::STATUS_PORT {
            let mut s = ST_UNLOCKED | self.status_extra;
            if self.ccb & CCB_SYS != 0 {
                s |= ST_SYS;
            }
            match self.out.front() {
                Some((_, false)) => s |= ST_OBF,
                Some((_, true)) => s |= ST_OBF | ST_AUX_OBF,
                None => {}
            }
            return s;
        }
        match self.out.pop_front() {
            Some((v, _)) => {
                self.status_extra &= !ST_TIMEOUT;
                self.holdoff = true;
                v
            }
            // An empty buffer reads what was last there; nothing better is known.
            None => 0,
        }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        if port == Self::STATUS_PORT {
            self.command(v);
        } else {
            self.data(v);
        }
    }

    fn command(&mut self, c: u8) {
        self.status_extra |= ST_CMD;
        self.data_for = DataFor::Keyboard;
        match c {
            0x20 => self.push(self.ccb),
            0x60 => self.data_for = DataFor::CommandByte,
            0xa7 => self.ccb |= CCB_AUX_DISABLE,
            0xa8 => self.ccb &= !CCB_AUX_DISABLE,
            0xa9 => self.push(0x00), // aux interface test: ok
            0xaa => {
                self.push(0x55); // self test passed
                self.ccb |= CCB_SYS;
            }
            0xab => self.push(0x00), // keyboard interface test: ok
            0xad => self.ccb |= CCB_KBD_DISABLE,
            0xae => self.ccb &= !CCB_KBD_DISABLE,
            0xc0 => self.push(0x80), // input port: keyboard not locked
            0xd0 => self.push(self.output_port),
            0xd1 => self.data_for = DataFor::OutputPort,
            0xd2 => self.data_for = DataFor::KbdLoopback,
            0xd3 => self.data_for = DataFor::AuxLoopback,
            0xd4 => self.data_for = DataFor::Aux,
            0xe0 => self.push(0x00), // test inputs
            0xf0..=0xff => {
                // Pulse output lines: bit 0 low is the CPU reset line.
                if c & 0x01 == 0 {
                    self.reset = true;
                }
            }
            _ => tracing::debug!(command = c, "unknown i8042 command"),
        }
    }

    fn data(&mut self, v: u8) {
        self.status_extra &= !ST_CMD;
        let target = std::mem::replace(&mut self.data_for, DataFor::Keyboard);
        match target {
            DataFor::CommandByte => self.ccb = v,
            DataFor::OutputPort => {
                self.output_port = v;
                if v & 0x01 == 0 {
                    self.reset = true;
                }
            }
            DataFor::KbdLoopback => self.push(v),
            DataFor::AuxLoopback => self.out.push_back((v, true)),
            DataFor::Aux => {
                // No mouse: the controller times out and answers 0xfe.
                self.status_extra |= ST_TIMEOUT;
                self.out.push_back((0xfe, true));
            }
            DataFor::KbdParam(cmd) => {
                if cmd == 0xf0 && v == 0 {
                    self.push(0xfa);
                    self.push(self.scan_set);
                } else {
                    if cmd == 0xf0 && (1..=3).contains(&v) {
                        self.scan_set = v;
                    }
                    self.push(0xfa);
                }
            }
            DataFor::Keyboard => self.keyboard(v),
        }
    }

    /// A command for the keyboard itself.
    fn keyboard(&mut self, c: u8) {
        // Writing to the keyboard enables its interface.
        self.ccb &= !CCB_KBD_DISABLE;
        match c {
            0xff => {
                self.push(0xfa);
                self.push(0xaa); // self test passed
                self.scan_set = 2;
            }
            0xf2 => {
                self.push(0xfa);
                self.push(0xab); // MF2 keyboard
                self.push(if self.ccb & CCB_XLATE != 0 { 0x41 } else { 0x83 });
            }
            0xed | 0xf3 | 0xf0 => {
                self.push(0xfa);
                self.data_for = DataFor::KbdParam(c);
            }
            0xee => self.push(0xee),
            0xfe => {} // resend: nothing was sent
            _ => self.push(0xfa),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(k: &mut I8042, c: u8) {
        k.write(0x64, c);
    }

    fn data(k: &mut I8042) -> Option<u8> {
        (k.read(0x64) & ST_OBF != 0).then(|| k.read(0x60))
    }

    #[test]
    fn controller_commands() {
        let mut k = I8042::new();
        assert_eq!(k.read(0x64) & ST_OBF, 0);
        cmd(&mut k, 0xaa);
        assert_eq!(data(&mut k), Some(0x55));
        assert_ne!(k.read(0x64) & ST_SYS, 0);
        cmd(&mut k, 0x20);
        assert_eq!(data(&mut k), Some(0x45));
        cmd(&mut k, 0x60);
        k.write(0x60, 0x47);
        cmd(&mut k, 0x20);
        assert_eq!(data(&mut k), Some(0x47));
        cmd(&mut k, 0xab);
        assert_eq!(data(&mut k), Some(0x00));
        cmd(&mut k, 0xa9);
        assert_eq!(data(&mut k), Some(0x00));
        assert_eq!(data(&mut k), None);
    }

    #[test]
    fn loopback_and_missing_mouse() {
        let mut k = I8042::new();
        cmd(&mut k, 0x60);
        k.write(0x60, 0x47); // both interrupts on
        cmd(&mut k, 0xd3);
        k.write(0x60, 0x5a);
        assert_eq!(k.read(0x64) & (ST_OBF | ST_AUX_OBF), ST_OBF | ST_AUX_OBF);
        assert_eq!(k.irq_levels(), (false, true));
        assert_eq!(k.read(0x60), 0x5a);
        assert_eq!(k.irq_levels(), (false, false));
        k.release_irq();
        assert_eq!(k.irq_levels(), (false, false));
        cmd(&mut k, 0xd2);
        k.write(0x60, 0x33);
        k.release_irq();
        assert_eq!(k.irq_levels(), (true, false));
        assert_eq!(data(&mut k), Some(0x33));
        cmd(&mut k, 0xd4);
        k.write(0x60, 0xf2);
        assert_ne!(k.read(0x64) & ST_TIMEOUT, 0);
        assert_eq!(data(&mut k), Some(0xfe));
    }

    #[test]
    fn keyboard_commands() {
        let mut k = I8042::new();
        k.write(0x60, 0xff);
        assert_eq!(data(&mut k), Some(0xfa));
        assert_eq!(data(&mut k), Some(0xaa));
        k.write(0x60, 0xf2);
        assert_eq!((data(&mut k), data(&mut k), data(&mut k)), (Some(0xfa), Some(0xab), Some(0x41)));
        k.write(0x60, 0xed);
        assert_eq!(data(&mut k), Some(0xfa));
        k.write(0x60, 0x07);
        assert_eq!(data(&mut k), Some(0xfa));
        k.write(0x60, 0xf0);
        k.write(0x60, 0x00);
        assert_eq!((data(&mut k), data(&mut k), data(&mut k)), (Some(0xfa), Some(0xfa), Some(2)));
        k.write(0x60, 0xee);
        assert_eq!(data(&mut k), Some(0xee));
        k.write(0x60, 0xf4);
        assert_eq!(data(&mut k), Some(0xfa));
        // The keyboard interrupt follows the command byte.
        k.write(0x60, 0xf5);
        k.release_irq();
        assert_eq!(k.irq_levels(), (true, false));
        cmd(&mut k, 0x60);
        k.write(0x60, 0x44);
        assert_eq!(k.irq_levels(), (false, false));
    }

    /// A reply of several bytes: the line drops after each read and rises again when the
    /// machine releases it, so an edge-triggered input sees one edge per byte.
    #[test]
    fn one_interrupt_edge_per_byte() {
        let mut k = I8042::new();
        k.write(0x60, 0xf2); // identify: fa ab 41
        let mut edges = 0;
        let mut level = false;
        for _ in 0..3 {
            let (kbd, _) = k.irq_levels();
            if kbd && !level {
                edges += 1;
            }
            level = kbd;
            k.read(0x60);
            level &= k.irq_levels().0;
            k.release_irq();
        }
        assert_eq!(edges, 3);
        assert_eq!(k.irq_levels(), (false, false));
    }

    #[test]
    fn reset_line() {
        let mut k = I8042::new();
        cmd(&mut k, 0xff); // pulse nothing
        assert!(!k.reset_requested());
        cmd(&mut k, 0xfe);
        assert!(k.reset_requested());
        let mut k = I8042::new();
        cmd(&mut k, 0xd0);
        assert_eq!(data(&mut k), Some(0x03));
        cmd(&mut k, 0xd1);
        k.write(0x60, 0x02);
        assert!(k.reset_requested());
    }
}
