//! What the interpreter sees of the machine around it: guest-physical memory, I/O ports,
//! the interrupt line and time.

/// The machine a [`Cpu`](crate::Cpu) runs in.
///
/// Guest RAM is one byte slice starting at guest-physical address 0 (`ram()`); a physical
/// access at or above its end goes to `mmio_read`/`mmio_write`. Whoever else writes guest RAM
/// (a device, the monitor) needs no notification: the decoded-instruction cache checks the
/// bytes it decoded on every hit.
pub trait Bus {
    /// Guest RAM from physical address 0.
    fn ram(&mut self) -> &mut [u8];

    /// A read of `size` bytes (1, 2 or 4) of guest-physical memory outside RAM.
    /// The default is an open bus: all ones.
    fn mmio_read(&mut self, _paddr: u32, size: u8) -> u32 {
        size_mask(size)
    }

    /// A write of `size` bytes (1, 2 or 4) outside RAM. The default discards it.
    fn mmio_write(&mut self, _paddr: u32, _size: u8, _value: u32) {}

    /// IN from `port` (`size` 1, 2 or 4). The default is a floating bus: all ones.
    fn io_in(&mut self, _port: u16, size: u8) -> u32 {
        size_mask(size)
    }

    /// OUT to `port`. Return [`IoAction::Exit`] to end the current `run` after this
    /// instruction with [`Exit::PortIo`](crate::Exit::PortIo) (a debug-exit port, say).
    fn io_out(&mut self, _port: u16, _size: u8, _value: u32) -> IoAction {
        IoAction::Continue
    }

    /// Whether an external interrupt (INTR) is being asserted. Polled at instruction
    /// boundaries while EFLAGS.IF is set.
    fn interrupt_pending(&mut self) -> bool {
        false
    }

    /// The interrupt acknowledge cycle: the vector of the interrupt being taken,
    /// or `None` if the request went away.
    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        None
    }

    /// The time stamp counter before the guest's offset is added. `None` lets the
    /// interpreter count retired instructions instead (deterministic runs).
    fn tsc(&mut self) -> Option<u64> {
        None
    }

    /// The rate of [`tsc`](Bus::tsc) in Hz, when the machine knows it. [`Cpu::with_state`]
    /// puts it into the CPU model (CPUID leaves 0x15 and 0x16).
    ///
    /// [`Cpu::with_state`]: crate::Cpu::with_state
    fn tsc_hz(&self) -> Option<u64> {
        None
    }

    /// Whether a WRMSR to IA32_TIME_STAMP_COUNTER (0x10) changes what the guest reads (the
    /// interpreter keeps an offset). A machine whose TSC is shared with code the interpreter
    /// does not run (the host's, read directly by guest code) answers `false`, and the write
    /// is then ignored: an offset only the interpreter honoured would make the TSC jump when
    /// execution moves between engines.
    fn tsc_writable(&self) -> bool {
        true
    }
}

/// What a port write asks of the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoAction {
    Continue,
    Exit,
}

#[inline]
pub(crate) fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// A plain machine: RAM and nothing else. Ports float, MMIO reads all ones, no interrupts.
#[derive(Clone, Debug)]
pub struct RamBus {
    pub ram: Vec<u8>,
}

impl RamBus {
    pub fn new(size: usize) -> RamBus {
        RamBus { ram: vec![0; size] }
    }
}

impl Bus for RamBus {
    fn ram(&mut self) -> &mut [u8] {
        &mut self.ram
    }
}
