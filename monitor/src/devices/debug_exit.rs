//! The debug-exit port of QEMU's `isa-debug-exit` device (port 0xf4, one byte wide): a
//! write of `value` asks the monitor to end the run with process exit status
//! `(value << 1) | 1`. Test guests use it to report success or failure.

/// The device: remembers the value written.
#[derive(Clone, Debug, Default)]
pub struct DebugExit {
    pub value: Option<u8>,
}

impl DebugExit {
    pub const PORT: u16 = 0xf4;

    pub fn new() -> DebugExit {
        DebugExit::default()
    }

    pub fn write(&mut self, value: u8) {
        self.value = Some(value);
    }

    /// The exit status the guest asked for, if it wrote the port.
    pub fn status(&self) -> Option<i32> {
        self.value.map(status_for)
    }
}

/// The exit status for a value written to the port: `(value << 1) | 1`.
pub fn status_for(value: u8) -> i32 {
    ((value as i32) << 1) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_qemu_convention() {
        let mut d = DebugExit::new();
        assert_eq!(d.status(), None);
        d.write(0);
        assert_eq!(d.status(), Some(1));
        d.write(0x10);
        assert_eq!(d.status(), Some(0x21));
        d.write(0xff);
        assert_eq!(d.status(), Some(0x1ff));
    }
}
