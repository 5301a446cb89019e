//! The virtual PC: guest RAM and the legacy devices, wired as on a PC/AT, presented to the
//! CPU engines as a [`vmm_interp::Bus`].
//!
//! * RAM from physical address 0 ([`GuestRam`]).
//! * Port I/O dispatched through a [`PortMap`] to the 8259A pair (0x20, 0xa0, ELCR 0x4d0),
//!   the 8254 (0x40-0x43), port 0x61, port 0x80 (ignored), the debug-exit port 0xf4 and the
//!   16550A on COM1 (0x3f8, IRQ 4). Unclaimed ports float (reads all ones, writes ignored).
//!   Accesses wider than a byte are split into byte accesses at consecutive ports, as the
//!   8-bit ISA bus does.
//! * Interrupts: PIT channel 0 drives IRQ 0, the UART drives IRQ 4; the master PIC's output
//!   is the CPU's INTR. Time comes from a [`Clock`]; the PIT is brought up to date whenever
//!   the guest touches a timer port, at least every [`POLL_INTERVAL`] interrupt polls, and
//!   by the engines before they wait.
//! * [`Machine::next_deadline_ns`] says when the next interrupt is due, so that HLT can sleep
//!   until then instead of spinning.

use std::io::Write;

use vmm_interp::{Bus, IoAction};

use crate::devices::{Clock, DebugExit, DeviceId, PicPair, Pit, PortMap, SystemControl, Uart};
use crate::memory::GuestRam;

/// Interrupt polls (one per instruction while EFLAGS.IF is set) between two readings of the
/// clock: the granularity of timer interrupt delivery in instructions.
pub const POLL_INTERVAL: u32 = 256;

/// Counters of what the guest did with the platform (`--stats`).
#[derive(Clone, Debug, Default)]
pub struct MachineStats {
    pub port_reads: u64,
    pub port_writes: u64,
    /// Accesses to ports no device claims.
    pub unclaimed_ports: u64,
    /// Interrupt acknowledge cycles (external interrupts taken).
    pub interrupts: u64,
    /// Timer interrupts raised on IRQ 0.
    pub timer_irqs: u64,
}

/// The machine: RAM and devices.
pub struct Machine {
    pub ram: GuestRam,
    pub pic: PicPair,
    pub pit: Pit,
    pub com1: Uart,
    pub debug_exit: DebugExit,
    pub system_control: SystemControl,
    pub stats: MachineStats,
    /// The last value written to port 0x80.
    pub post_code: u8,
    ports: PortMap,
    clock: Box<dyn Clock>,
    poll_countdown: u32,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("ram", &self.ram.len()).field("pic", &self.pic).finish_non_exhaustive()
    }
}

impl Machine {
    pub const PIT_IRQ: u8 = 0;

    /// A PC with `ram`, devices timed by `clock`, and COM1's output going to `serial_out`.
    pub fn new(ram: GuestRam, clock: Box<dyn Clock>, serial_out: Box<dyn Write + Send>) -> Machine {
        Machine {
            ram,
            pic: PicPair::new(),
            pit: Pit::new(),
            com1: Uart::new(serial_out),
            debug_exit: DebugExit::new(),
            system_control: SystemControl::new(),
            stats: MachineStats::default(),
            post_code: 0,
            ports: PortMap::pc(),
            clock,
            poll_countdown: POLL_INTERVAL,
        }
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Bring the timers up to the clock and the interrupt lines up to the devices.
    pub fn update(&mut self) {
        let now = self.now_ns();
        if self.pit.irq0_edge(now) {
            self.stats.timer_irqs += 1;
            self.pic.pulse_irq(Self::PIT_IRQ);
        }
        self.update_uart_irq();
    }

    fn update_uart_irq(&mut self) {
        self.pic.set_irq(Uart::COM1_IRQ, self.com1.irq_level());
    }

    /// Whether the PIC asserts INTR now (after [`update`](Self::update)).
    pub fn interrupt_requested(&mut self) -> bool {
        self.update();
        self.pic.int_output()
    }

    /// When the next device interrupt is due (clock nanoseconds), if any is scheduled. It may
    /// be masked at the PIC or the guest's IF may be clear: waking early is harmless.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.pit.next_irq0_ns()
    }

    /// The exit status the guest asked for through the debug-exit port.
    pub fn exit_status(&self) -> Option<i32> {
        self.debug_exit.status()
    }

    /// Host input for COM1. Returns how many bytes the UART took.
    pub fn serial_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.com1.receive(bytes);
        self.update_uart_irq();
        n
    }

    /// Flush device output (the serial sink).
    pub fn flush(&mut self) {
        self.com1.flush();
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let Some((dev, off)) = self.ports.lookup(port) else {
            self.stats.unclaimed_ports += 1;
            tracing::trace!(port, "read of an unclaimed port");
            return 0xff;
        };
        match dev {
            DeviceId::Pic | DeviceId::Elcr => self.pic.read(port),
            DeviceId::Pit => {
                let now = self.now_ns();
                self.pit.read(port, now)
            }
            DeviceId::SystemControl => {
                let now = self.now_ns();
                self.system_control.read(&self.pit, now)
            }
            DeviceId::PostCode => self.post_code,
            DeviceId::DebugExit => 0xff,
            DeviceId::Com1 => {
                let v = self.com1.read(off);
                self.update_uart_irq();
                v
            }
        }
    }

    /// Returns whether the write asks the engine to stop (the debug-exit port).
    fn write_byte(&mut self, port: u16, v: u8) -> bool {
        let Some((dev, off)) = self.ports.lookup(port) else {
            self.stats.unclaimed_ports += 1;
            tracing::trace!(port, value = v, "write to an unclaimed port");
            return false;
        };
        match dev {
            DeviceId::Pic | DeviceId::Elcr => self.pic.write(port, v),
            DeviceId::Pit => {
                let now = self.now_ns();
                self.pit.write(port, v, now);
                // A new count may have moved channel 0's next edge.
                self.update();
            }
            DeviceId::SystemControl => {
                let now = self.now_ns();
                self.system_control.write(v, &mut self.pit, now);
            }
            DeviceId::PostCode => self.post_code = v,
            DeviceId::DebugExit => {
                self.debug_exit.write(v);
                return true;
            }
            DeviceId::Com1 => {
                self.com1.write(off, v);
                self.update_uart_irq();
            }
        }
        false
    }
}

impl Bus for Machine {
    fn ram(&mut self) -> &mut [u8] {
        self.ram.as_mut_slice()
    }

    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        self.stats.port_reads += 1;
        let mut v = 0u32;
        for i in 0..size.min(4) {
            v |= (self.read_byte(port.wrapping_add(i as u16)) as u32) << (8 * i);
        }
        v
    }

    fn io_out(&mut self, port: u16, size: u8, value: u32) -> IoAction {
        self.stats.port_writes += 1;
        let mut exit = false;
        for i in 0..size.min(4) {
            if self.write_byte(port.wrapping_add(i as u16), (value >> (8 * i)) as u8) {
                exit = true;
                break;
            }
        }
        if exit {
            IoAction::Exit
        } else {
            IoAction::Continue
        }
    }

    fn interrupt_pending(&mut self) -> bool {
        self.poll_countdown -= 1;
        if self.poll_countdown == 0 {
            self.poll_countdown = POLL_INTERVAL;
            self.update();
        }
        self.pic.int_output()
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        self.stats.interrupts += 1;
        let v = self.pic.acknowledge();
        self.update_uart_irq();
        Some(v)
    }

    fn tsc(&mut self) -> Option<u64> {
        // A 1 GHz virtual TSC that follows the machine's clock (so it keeps counting while
        // the guest sleeps in HLT, as a real TSC does).
        Some(self.now_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pit::ticks_to_ns;
    use crate::devices::{ManualClock, SharedBuffer};

    fn machine() -> (Machine, ManualClock, SharedBuffer) {
        let clock = ManualClock::new();
        let out = SharedBuffer::new();
        let m = Machine::new(GuestRam::heap(1 << 20), Box::new(clock.clone()), Box::new(out.clone()));
        (m, clock, out)
    }

    fn init_pic(m: &mut Machine) {
        for (p, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
            m.io_out(p, 1, v);
        }
        for (p, v) in [(0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            m.io_out(p, 1, v);
        }
        m.io_out(0x21, 1, 0);
        m.io_out(0xa1, 1, 0);
    }

    #[test]
    fn timer_interrupts_follow_the_clock() {
        let (mut m, clock, _) = machine();
        init_pic(&mut m);
        assert_eq!(m.next_deadline_ns(), None);
        // 100 Hz: 11932 ticks, mode 2.
        m.io_out(0x43, 1, 0x34);
        m.io_out(0x40, 1, 11932 & 0xff);
        m.io_out(0x40, 1, 11932 >> 8);
        let due = m.next_deadline_ns().unwrap();
        assert_eq!(due, ticks_to_ns(11932));
        assert!(!m.interrupt_requested());
        clock.sleep_until(due);
        assert!(m.interrupt_requested());
        assert_eq!(m.acknowledge_interrupt(), Some(0x20));
        assert!(!m.interrupt_requested());
        m.io_out(0x20, 1, 0x20);
        assert_eq!(m.next_deadline_ns(), Some(ticks_to_ns(2 * 11932)));
        assert_eq!(m.stats.timer_irqs, 1);
    }

    #[test]
    fn interrupt_polling_reads_the_clock_periodically() {
        let (mut m, clock, _) = machine();
        init_pic(&mut m);
        m.io_out(0x43, 1, 0x34);
        m.io_out(0x40, 1, 100);
        m.io_out(0x40, 1, 0);
        clock.advance(ticks_to_ns(100));
        let mut polls = 0;
        while !m.interrupt_pending() {
            polls += 1;
            assert!(polls <= POLL_INTERVAL, "the clock was not read");
        }
    }

    #[test]
    fn serial_output_and_irq4() {
        let (mut m, _, out) = machine();
        init_pic(&mut m);
        for b in b"ok\r\n" {
            assert_eq!(m.io_out(0x3f8, 1, *b as u32), IoAction::Continue);
        }
        assert_eq!(out.contents(), b"ok\r\n");
        m.io_out(0x3fc, 1, 0x08); // OUT2
        m.io_out(0x3f9, 1, 0x02); // THRE interrupt
        assert!(m.interrupt_requested());
        assert_eq!(m.acknowledge_interrupt(), Some(0x24));
        assert_eq!(m.io_in(0x3fa, 1), 0x02);
        m.io_out(0x20, 1, 0x20);
        assert!(!m.interrupt_requested());
        // Input raises the received-data interrupt.
        m.io_out(0x3f9, 1, 0x01);
        assert_eq!(m.serial_input(b"k"), 1);
        assert!(m.interrupt_requested());
        assert_eq!(m.acknowledge_interrupt(), Some(0x24));
        assert_eq!(m.io_in(0x3f8, 1), b'k' as u32);
    }

    #[test]
    fn debug_exit_port_ends_the_run() {
        let (mut m, _, _) = machine();
        assert_eq!(m.io_out(0x80, 1, 0x55), IoAction::Continue);
        assert_eq!(m.io_in(0x80, 1), 0x55);
        assert_eq!(m.exit_status(), None);
        assert_eq!(m.io_out(0xf4, 1, 0x10), IoAction::Exit);
        assert_eq!(m.exit_status(), Some(0x21));
        // A word write splits into bytes: the low byte reaches 0xf4 first.
        assert_eq!(m.io_out(0xf4, 2, 0x0203), IoAction::Exit);
        assert_eq!(m.exit_status(), Some(7));
    }

    #[test]
    fn unclaimed_ports_float_and_wide_reads_split() {
        let (mut m, _, _) = machine();
        assert_eq!(m.io_in(0x1234, 1), 0xff);
        assert_eq!(m.io_in(0x1234, 4), 0xffff_ffff);
        assert_eq!(m.io_out(0x1234, 4, 0), IoAction::Continue);
        m.io_out(0x21, 1, 0xab);
        m.io_out(0x3ff, 1, 0x5a);
        // 0x20 reads IRR (0), 0x21 reads IMR.
        assert_eq!(m.io_in(0x20, 2), 0xab00);
        assert_eq!(m.io_in(0x3ff, 2), 0xff5a);
        assert!(m.stats.unclaimed_ports >= 3);
    }

    #[test]
    fn pit_channel2_through_port_61() {
        let (mut m, clock, _) = machine();
        m.io_out(0x61, 1, 0x01);
        m.io_out(0x43, 1, 0xb0);
        m.io_out(0x42, 1, 0x00);
        m.io_out(0x42, 1, 0x10);
        assert_eq!(m.io_in(0x61, 1) & 0x21, 0x01);
        clock.sleep_until(ticks_to_ns(0x1000));
        assert_eq!(m.io_in(0x61, 1) & 0x20, 0x20);
    }

    #[test]
    fn tsc_follows_the_clock() {
        let (mut m, clock, _) = machine();
        clock.advance(5000);
        assert_eq!(m.tsc(), Some(5000));
        assert_eq!(m.ram().len(), 1 << 20);
    }
}
