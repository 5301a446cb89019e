//! A 16550A UART (COM1 at 0x3f8, IRQ 4 on the PC) whose transmitter writes to a host sink
//! (stdout in production) and whose receiver is fed by the monitor.
//!
//! Written here rather than taken from `vm-superio`: that crate's `Serial` signals interrupts
//! through a push-button `Trigger` (an eventfd edge for KVM's irqfd), while the virtual 8259A
//! here needs the *level* of the UART's interrupt output, gated by MCR.OUT2 as the PC wires it,
//! to model edge and level triggering faithfully; it also lacks loopback-driven modem status,
//! which Linux's 8250 probe uses.
//!
//! Modelled: RBR/THR, IER, IIR (priorities: line status, received data, THR empty, modem
//! status; FIFO bits), FCR (enable and clear), LCR with the divisor latch (DLAB), MCR with
//! loopback, LSR (DR, OE, THRE, TEMT), MSR with delta bits, SCR. Transmission is instant: THR
//! is always empty again by the time the guest can look.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_RLS: u8 = 0x04;
const IER_MS: u8 = 0x08;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

const LCR_DLAB: u8 = 0x80;

/// Receive FIFO depth of the 16550A (the holding register alone when FIFOs are off).
const RX_FIFO: usize = 16;

/// A `Write` sink whose bytes can be read back (tests, and callers capturing serial output).
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn new() -> SharedBuffer {
        SharedBuffer::default()
    }

    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The 16550A.
pub struct Uart {
    out: Box<dyn Write + Send>,
    rx: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr_errors: u8,
    /// Modem status inputs (CTS, DSR, RI, DCD in bits 4-7) and the delta bits (0-3).
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    /// The THR-empty interrupt is pending (cleared by reading IIR with it the source, or by
    /// writing THR).
    thre_pending: bool,
    /// Bytes transmitted (to the sink or looped back).
    pub tx_count: u64,
}

impl std::fmt::Debug for Uart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart")
            .field("ier", &self.ier)
            .field("lcr", &self.lcr)
            .field("mcr", &self.mcr)
            .field("rx", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Uart {
    pub const COM1: u16 = 0x3f8;
    pub const COM1_IRQ: u8 = 4;

    pub fn new(out: Box<dyn Write + Send>) -> Uart {
        Uart {
            out,
            rx: VecDeque::new(),
            ier: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            // No modem attached: the status lines read inactive.
            msr: 0,
            scr: 0,
            // 115200 baud after reset, as firmware usually leaves it.
            dll: 1,
            dlm: 0,
            fifo_enabled: false,
            thre_pending: false,
            tx_count: 0,
        }
    }

    /// Bytes from the host side (the terminal) into the receiver. Returns how many were
    /// taken; the rest would overrun.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let room = self.rx_capacity().saturating_sub(self.rx.len());
        let n = bytes.len().min(room);
        self.rx.extend(&bytes[..n]);
        if n < bytes.len() {
            self.lsr_errors |= LSR_OE;
        }
        n
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            RX_FIFO
        } else {
            1
        }
    }

    /// Whether the receiver can take another byte.
    pub fn can_receive(&self) -> bool {
        self.mcr & MCR_LOOP == 0 && self.rx.len() < self.rx_capacity()
    }

    fn lsr(&self) -> u8 {
        let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
        dr | self.lsr_errors | LSR_THRE | LSR_TEMT
    }

    /// The interrupt being signalled, as IIR bits 0-3 (1 = none).
    fn iir_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors != 0 {
            0x06
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            0x04
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            0x02
        } else if self.ier & IER_MS != 0 && self.msr & 0x0f != 0 {
            0x00
        } else {
            0x01
        }
    }

    /// The level of the IRQ line: the UART's INTRPT output, which the PC gates with OUT2
    /// (and which loopback mode disconnects).
    pub fn irq_level(&self) -> bool {
        self.iir_id() != 0x01 && self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
    }

    fn set_modem_inputs(&mut self, lines: u8) {
        let old = self.msr & 0xf0;
        let new = lines & 0xf0;
        let mut delta = 0;
        if (old ^ new) & 0x10 != 0 {
            delta |= 0x01; // DCTS
        }
        if (old ^ new) & 0x20 != 0 {
            delta |= 0x02; // DDSR
        }
        if old & 0x40 != 0 && new & 0x40 == 0 {
            delta |= 0x04; // TERI: trailing edge of RI
        }
        if (old ^ new) & 0x80 != 0 {
            delta |= 0x08; // DDCD
        }
        self.msr = new | (self.msr & 0x0f) | delta;
    }

    fn transmit(&mut self, b: u8) {
        self.tx_count += 1;
        if self.mcr & MCR_LOOP != 0 {
            if self.rx.len() < self.rx_capacity() {
                self.rx.push_back(b);
            } else {
                self.lsr_errors |= LSR_OE;
            }
        } else {
            let _ = self.out.write_all(&[b]);
            if b == b'\n' {
                let _ = self.out.flush();
            }
        }
        self.thre_pending = true;
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }

    /// A read of register `offset` (0-7).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let id = self.iir_id();
                if id == 0x02 {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled { 0xc0 } else { 0 }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let v = self.lsr();
                self.lsr_errors = 0;
                v
            }
            6 => {
                let v = self.msr;
                self.msr &= 0xf0;
                v
            }
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// A write of register `offset` (0-7).
    pub fn write(&mut self, offset: u16, v: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = v,
            0 => self.transmit(v),
            1 if dlab => self.dlm = v,
            1 => {
                let old = self.ier;
                self.ier = v & 0x0f;
                // Enabling the THRE interrupt while THR is empty raises it at once.
                if old & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                }
            }
            2 => {
                let enable = v & 0x01 != 0;
                if enable != self.fifo_enabled || v & 0x02 != 0 {
                    self.rx.clear();
                }
                self.fifo_enabled = enable;
            }
            3 => self.lcr = v,
            4 => {
                self.mcr = v & 0x1f;
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
                    let m = self.mcr;
                    let lines = (u8::from(m & MCR_RTS != 0) << 4)
                        | (u8::from(m & MCR_DTR != 0) << 5)
                        | (u8::from(m & MCR_OUT1 != 0) << 6)
                        | (u8::from(m & MCR_OUT2 != 0) << 7);
                    self.set_modem_inputs(lines);
                } else {
                    self.set_modem_inputs(0);
                }
            }
            7 => self.scr = v,
            _ => {} // LSR and MSR are read-only
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uart() -> (Uart, SharedBuffer) {
        let buf = SharedBuffer::new();
        (Uart::new(Box::new(buf.clone())), buf)
    }

    #[test]
    fn transmit_goes_to_the_sink() {
        let (mut u, buf) = uart();
        assert_eq!(u.read(5) & 0x60, 0x60, "THRE and TEMT");
        for b in b"hi\n" {
            u.write(0, *b);
        }
        assert_eq!(buf.contents(), b"hi\n");
        assert_eq!(u.tx_count, 3);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut u, buf) = uart();
        u.write(3, 0x83); // DLAB, 8N1
        u.write(0, 0x0c);
        u.write(1, 0x00);
        u.write(3, 0x03);
        assert_eq!(u.read(3), 0x03);
        u.write(3, 0x83);
        assert_eq!(u.read(0), 0x0c);
        assert_eq!(u.read(1), 0x00);
        u.write(3, 0x03);
        u.write(7, 0x5a);
        assert_eq!(u.read(7), 0x5a);
        assert!(buf.contents().is_empty(), "divisor writes are not data");
    }

    #[test]
    fn thre_interrupt_needs_out2_and_clears_on_iir_read() {
        let (mut u, _) = uart();
        assert_eq!(u.read(2), 0x01);
        u.write(1, IER_THRE);
        assert!(!u.irq_level(), "OUT2 low: the PC's IRQ line is gated off");
        u.write(4, MCR_OUT2 | MCR_DTR | MCR_RTS);
        assert!(u.irq_level());
        assert_eq!(u.read(2), 0x02);
        assert!(!u.irq_level());
        assert_eq!(u.read(2), 0x01);
        u.write(0, b'x');
        assert!(u.irq_level(), "THR empty again after the byte went out");
        u.write(1, 0);
        assert!(!u.irq_level());
    }

    #[test]
    fn receive_and_data_ready_interrupt() {
        let (mut u, _) = uart();
        u.write(4, MCR_OUT2);
        u.write(1, IER_RDA);
        assert!(!u.irq_level());
        assert_eq!(u.receive(b"ab"), 1, "no FIFO: a one-byte holding register");
        assert!(u.irq_level());
        assert_eq!(u.read(2), 0x04);
        assert_eq!(u.read(5) & (LSR_DR | LSR_OE), LSR_DR | LSR_OE);
        assert_eq!(u.read(5) & LSR_OE, 0, "OE clears on read");
        assert_eq!(u.read(0), b'a');
        assert!(!u.irq_level());
        u.write(2, 0x07); // enable and clear FIFOs
        assert_eq!(u.read(2) & 0xc0, 0xc0);
        assert_eq!(u.receive(&[0; 20]), 16);
    }

    #[test]
    fn line_status_interrupt_has_priority() {
        let (mut u, _) = uart();
        u.write(4, MCR_OUT2);
        u.write(1, IER_RDA | IER_RLS | IER_THRE);
        u.receive(b"xy");
        assert_eq!(u.read(2), 0x06);
        u.read(5);
        assert_eq!(u.read(2), 0x04);
        u.read(0);
        assert_eq!(u.read(2), 0x02);
    }

    #[test]
    fn loopback_as_linux_probes_it() {
        let (mut u, buf) = uart();
        // 8250 autoconfig: MCR = LOOP | OUT2 | RTS; MSR's upper nibble must read 0x90.
        u.write(4, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(u.read(6) & 0xf0, 0x90);
        u.write(0, 0x55);
        assert_eq!(u.read(5) & LSR_DR, LSR_DR);
        assert_eq!(u.read(0), 0x55);
        assert!(buf.contents().is_empty(), "loopback keeps bytes off the line");
        u.write(1, IER_RDA);
        u.write(0, 0x66);
        assert!(!u.irq_level(), "loopback disconnects the interrupt output");
        u.write(4, MCR_OUT2);
        let msr = u.read(6);
        assert_eq!(msr & 0xf0, 0x00);
        assert_eq!(msr & 0x0f, 0x09, "DCTS and DDCD after CTS and DCD dropped");
        assert_eq!(u.read(6) & 0x0f, 0);
    }
}
