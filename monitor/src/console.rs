//! The serial console as the user's terminal: what the guest prints is watched for the
//! kernel's power-down and panic messages, and what the user types reaches COM1's receiver.
//!
//! * [`ConsoleWatch`] wraps the UART's output sink and raises [`ConsoleFlags`] when it sees
//!   Linux's "reboot: Power down" / "reboot: System halted" (the kernel then halts with
//!   interrupts off: on a PC without ACPI that is how `poweroff` ends) and "Kernel panic -
//!   not syncing" (and the "---[ end Kernel panic" line after the report).
//! * [`InputSource`] is where COM1's input comes from; [`StdinInput`] reads standard input
//!   (polled, never blocking the guest), handles QEMU's escape (Ctrl-A x quits, Ctrl-A
//!   Ctrl-A sends a Ctrl-A) when standard input is a terminal.
//! * [`RawTerminal`] puts the terminal in raw mode for the run and restores it when dropped,
//!   and from a panic hook, so the user's shell is never left raw.
//!
//! Everything here is safe Rust: nix's termios and poll wrappers.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// What the console has seen (bits of an [`AtomicU8`], shared by the sink and the machine).
#[derive(Clone, Debug, Default)]
pub struct ConsoleFlags(Arc<AtomicU8>);

impl ConsoleFlags {
    pub const POWER_DOWN: u8 = 1;
    pub const PANIC: u8 = 2;
    pub const PANIC_END: u8 = 4;
    pub const RESTART: u8 = 8;

    pub fn new() -> ConsoleFlags {
        ConsoleFlags::default()
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn has(&self, f: u8) -> bool {
        self.get() & f != 0
    }

    fn raise(&self, f: u8) {
        self.0.fetch_or(f, Ordering::Relaxed);
    }
}

/// The console messages and the flags they raise.
const PATTERNS: &[(&[u8], u8)] = &[
    (b"reboot: Power down", ConsoleFlags::POWER_DOWN),
    (b"reboot: System halted", ConsoleFlags::POWER_DOWN),
    (b"reboot: Restarting system", ConsoleFlags::RESTART),
    (b"Kernel panic - not syncing", ConsoleFlags::PANIC),
    (b"---[ end Kernel panic", ConsoleFlags::PANIC_END),
];

/// A sink that passes everything on to `inner` and watches each line for [`PATTERNS`].
pub struct ConsoleWatch {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
    flags: ConsoleFlags,
}

impl ConsoleWatch {
    const MAX_LINE: usize = 256;

    pub fn new(inner: Box<dyn Write + Send>, flags: ConsoleFlags) -> ConsoleWatch {
        ConsoleWatch { inner, line: Vec::new(), flags }
    }

    fn watch(&mut self, b: u8) {
        if b == b'\n' || b == b'\r' {
            self.line.clear();
            return;
        }
        if self.line.len() < Self::MAX_LINE {
            self.line.push(b);
            for (p, f) in PATTERNS {
                if self.line.ends_with(p) {
                    self.flags.raise(*f);
                }
            }
        }
    }
}

impl Write for ConsoleWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            self.watch(b);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What an input source produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the guest (possibly none: the wait timed out).
    Bytes(Vec<u8>),
    /// The user asked to quit (Ctrl-A x).
    Quit,
    /// The source is closed: no more input will come.
    Closed,
}

/// Where COM1's input comes from.
pub trait InputSource: Send {
    /// Wait up to `timeout` (zero: just look) for input.
    fn read(&mut self, timeout: Duration) -> Input;
}

/// QEMU's console escape: Ctrl-A x quits, Ctrl-A Ctrl-A is a literal Ctrl-A, Ctrl-A followed
/// by anything else passes both bytes on.
#[derive(Clone, Debug, Default)]
pub struct Escape {
    pending: bool,
}

impl Escape {
    pub const CTRL_A: u8 = 0x01;

    /// Filter `bytes` into `out`; true if the user asked to quit.
    pub fn filter(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in bytes {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return true,
                    Self::CTRL_A => out.push(Self::CTRL_A),
                    _ => out.extend_from_slice(&[Self::CTRL_A, b]),
                }
            } else if b == Self::CTRL_A {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// Standard input, polled.
pub struct StdinInput {
    escape: Option<Escape>,
    closed: bool,
}

impl StdinInput {
    /// `escape`: whether Ctrl-A is the escape key (when standard input is a terminal).
    pub fn new(escape: bool) -> StdinInput {
        StdinInput { escape: escape.then(Escape::default), closed: false }
    }
}

impl InputSource for StdinInput {
    fn read(&mut self, timeout: Duration) -> Input {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        if self.closed {
            std::thread::sleep(timeout);
            return Input::Closed;
        }
        let stdin = std::io::stdin();
        let fd: BorrowedFd<'_> = stdin.as_fd();
        let ms = u16::try_from(timeout.as_millis().min(10_000)).unwrap_or(10_000);
        // Round up: a sub-millisecond wait is a look, never a spin.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Input::Bytes(Vec::new()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Input::Bytes(Vec::new()),
            Err(_) => {
                self.closed = true;
                return Input::Closed;
            }
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return Input::Bytes(Vec::new());
        }
        let mut buf = [0u8; 256];
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(_) => {
                self.closed = true;
                Input::Closed
            }
            Ok(n) => {
                let mut out = Vec::with_capacity(n);
                match &mut self.escape {
                    Some(e) => {
                        if e.filter(&buf[..n], &mut out) {
                            return Input::Quit;
                        }
                    }
                    None => out.extend_from_slice(&buf[..n]),
                }
                Input::Bytes(out)
            }
        }
    }
}

/// The terminal settings to restore (shared with the panic hook).
static SAVED: Mutex<Option<nix::libc::termios>> = Mutex::new(None);
static HOOK: Once = Once::new();

fn restore_saved() {
    let saved = SAVED.lock().map(|mut s| s.take()).unwrap_or(None);
    if let Some(t) = saved {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t.into());
    }
}

/// Standard input in raw mode while this lives (only if it is a terminal).
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Raw mode if standard input is a terminal; otherwise nothing (`is_raw` says which).
    pub fn enter() -> RawTerminal {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(orig) = tcgetattr(stdin.as_fd()) else {
            return RawTerminal { active: false };
        };
        let mut raw = orig.clone();
        cfmakeraw(&mut raw);
        // Keep output post-processing: the guest sends \r\n itself, but vmm's own messages
        // on stderr (a panic, for one) should still start at the left margin.
        raw.output_flags = orig.output_flags;
        if let Ok(mut s) = SAVED.lock() {
            *s = Some(orig.into());
        }
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        if tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            restore_saved();
            return RawTerminal { active: false };
        }
        RawTerminal { active: true }
    }

    pub fn is_raw(&self) -> bool {
        self.active
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            restore_saved();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::SharedBuffer;

    #[test]
    fn watch_sees_power_down_and_panic() {
        let flags = ConsoleFlags::new();
        let out = SharedBuffer::new();
        let mut w = ConsoleWatch::new(Box::new(out.clone()), flags.clone());
        w.write_all(b"[    1.0] reboot: Power").unwrap();
        assert_eq!(flags.get(), 0);
        w.write_all(b" down\r\n").unwrap();
        assert!(flags.has(ConsoleFlags::POWER_DOWN));
        w.write_all(b"[ 2.0] Kernel panic - not syncing: VFS\r\n---[ end Kernel panic - x ]---\r\n").unwrap();
        assert!(flags.has(ConsoleFlags::PANIC) && flags.has(ConsoleFlags::PANIC_END));
        assert!(out.text().contains("reboot: Power down"));
        let flags = ConsoleFlags::new();
        let mut w = ConsoleWatch::new(Box::new(SharedBuffer::new()), flags.clone());
        w.write_all(b"reboot: System halted\n").unwrap();
        assert_eq!(flags.get(), ConsoleFlags::POWER_DOWN);
    }

    #[test]
    fn escape_keys() {
        let mut e = Escape::default();
        let mut out = Vec::new();
        assert!(!e.filter(b"ls\r", &mut out));
        assert!(!e.filter(&[1, 1, b'a', 1], &mut out));
        assert_eq!(out, b"ls\r\x01a");
        assert!(!e.filter(b"c", &mut out));
        assert_eq!(out, b"ls\r\x01a\x01c");
        assert!(e.filter(&[b'z', 1, b'x', b'q'], &mut out));
    }
}
