//! The machine the built-in guests run in, for the `interp` engine: guest RAM, COM1 (the
//! transmit side of a 16550: enough for a guest that polls LSR and writes THR) and the
//! debug-exit port of QEMU's isa-debug-exit convention (port 0xf4: exit status
//! `(value << 1) | 1`). The full PC platform (PIC, PIT, RTC, a complete UART) is the monitor's.

use std::io::Write;

use vmm_interp::{Bus, IoAction};

pub const COM1: u16 = 0x3f8;
pub const DEBUG_EXIT: u16 = 0xf4;

pub struct Machine {
    pub ram: Vec<u8>,
    /// Everything the guest wrote to COM1.
    pub serial: Vec<u8>,
    /// Echo serial output to stdout as it comes.
    pub echo: bool,
    /// Set when the guest wrote the debug-exit port: the process exit status it asked for.
    pub exit_status: Option<i32>,
    /// UART registers the guest may write and read back (IER, LCR, MCR, SCR, divisor latch).
    uart_regs: [u8; 8],
}

impl Machine {
    pub fn new(ram_bytes: usize, echo: bool) -> Machine {
        Machine { ram: vec![0; ram_bytes], serial: Vec::new(), echo, exit_status: None, uart_regs: [0; 8] }
    }
}

impl Bus for Machine {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }

    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        match port {
            // LSR: transmitter empty and holding register empty; no data ready.
            p if p == COM1 + 5 => 0x60,
            p if (COM1 + 1..COM1 + 8).contains(&p) => self.uart_regs[(p - COM1) as usize] as u32,
            COM1 => 0,
            _ => match size {
                1 => 0xff,
                2 => 0xffff,
                _ => 0xffff_ffff,
            },
        }
    }

    fn io_out(&mut self, port: u16, _size: u8, value: u32) -> IoAction {
        match port {
            COM1 if self.uart_regs[3] & 0x80 == 0 => {
                let b = value as u8;
                self.serial.push(b);
                if self.echo {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&[b]);
                    if b == b'\n' {
                        let _ = out.flush();
                    }
                }
                IoAction::Continue
            }
            p if (COM1..COM1 + 8).contains(&p) => {
                self.uart_regs[(p - COM1) as usize] = value as u8;
                IoAction::Continue
            }
            DEBUG_EXIT => {
                self.exit_status = Some(((value as i32 & 0xff) << 1) | 1);
                IoAction::Exit
            }
            _ => IoAction::Continue,
        }
    }
}
