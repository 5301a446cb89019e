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
//!   until then instead of spinning; [`Machine::wait_until`] sleeps, or waits for console
//!   input when there is an [`InputSource`].
//! * Also: the MC146818 RTC/CMOS (0x70/0x71, IRQ 8), the i8042 (0x60/0x64, IRQ 1/12; its
//!   reset line ends the run), the delay port 0xed, and PCI configuration mechanism 1
//!   (0xcf8/0xcfc) with no devices.
//! * COM1's output passes through a [`ConsoleWatch`]: the kernel's power-down and panic
//!   messages become [`StopReason`]s (see [`Machine::stop_request`] and
//!   [`Machine::halt_stop`]).

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use crate::console::{ConsoleFlags, ConsoleWatch, Input, InputSource};

use vmm_interp::{Bus, IoAction};

use crate::devices::{Clock, DebugExit, DeviceId, I8042, PciConfig, PicPair, Pit, PortMap, Rtc, SystemControl, Uart, FLOATING_BUS};
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
    /// Which unclaimed ports, and how often (what the guest probed that is not there).
    pub unclaimed_by_port: std::collections::BTreeMap<u16, u64>,
    /// Interrupt acknowledge cycles (external interrupts taken).
    pub interrupts: u64,
    /// Timer interrupts raised on IRQ 0.
    pub timer_irqs: u64,
}

/// Why the platform asks the run to end (not the CPU's doing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (the i8042's reset line: Linux's `reboot`).
    Reset,
    /// The guest powered off: the kernel said so and halted with interrupts off.
    PowerOff,
    /// The kernel panicked (its "Kernel panic - not syncing" report on the console).
    Panic,
    /// The user quit from the console (Ctrl-A x).
    Quit,
}

impl StopReason {
    /// Whether this is a clean end of the run (exit status 0).
    pub fn is_clean(self) -> bool {
        !matches!(self, StopReason::Panic)
    }
}

/// The machine: RAM and devices.
pub struct Machine {
    pub ram: GuestRam,
    pub pic: PicPair,
    /// Code that reprograms the PIT or the RTC other than through their ports calls
    /// [`timers_changed`](Self::timers_changed).
    pub pit: Pit,
    pub com1: Uart,
    pub debug_exit: DebugExit,
    pub system_control: SystemControl,
    pub rtc: Rtc,
    pub kbc: I8042,
    pub pci: PciConfig,
    /// What the console has seen (power-down, panic).
    pub console: ConsoleFlags,
    pub stats: MachineStats,
    /// The last value written to port 0x80.
    pub post_code: u8,
    ports: PortMap,
    clock: Box<dyn Clock>,
    /// Clock time before which the PIT and the RTC have nothing new to report (their next
    /// enabled event): [`update`](Self::update) skips them until then. Zero after any port
    /// access (a device's programming may have changed).
    timers_due_ns: u64,
    poll_countdown: u32,
    input: Option<Box<dyn InputSource>>,
    /// Input the UART could not take yet.
    pending_input: VecDeque<u8>,
    quit: bool,
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
        let console = ConsoleFlags::new();
        let rtc = Rtc::new(Rtc::host_wall_clock(), ram.len() as u64);
        Machine {
            ram,
            pic: PicPair::new(),
            pit: Pit::new(),
            com1: Uart::new(Box::new(ConsoleWatch::new(serial_out, console.clone()))),
            debug_exit: DebugExit::new(),
            system_control: SystemControl::new(),
            rtc,
            kbc: I8042::new(),
            pci: PciConfig::new(),
            console,
            stats: MachineStats::default(),
            post_code: 0,
            ports: PortMap::pc(),
            clock,
            timers_due_ns: 0,
            poll_countdown: POLL_INTERVAL,
            input: None,
            pending_input: VecDeque::new(),
            quit: false,
        }
    }

    /// Where COM1's input comes from (the terminal).
    pub fn set_input(&mut self, input: Box<dyn InputSource>) {
        self.input = Some(input);
    }

    /// Whether input may still arrive (an input source that is not closed).
    pub fn input_open(&self) -> bool {
        self.input.is_some()
    }

    /// Take input from the source, waiting up to `timeout` for some, and feed COM1.
    pub fn poll_input(&mut self, timeout: Duration) {
        if let Some(src) = self.input.as_mut() {
            match src.read(timeout) {
                Input::Bytes(b) => self.pending_input.extend(b),
                Input::Quit => self.quit = true,
                Input::Closed => self.input = None,
            }
        }
        self.feed_uart();
    }

    fn feed_uart(&mut self) {
        let mut fed = false;
        while self.com1.can_receive() {
            let Some(b) = self.pending_input.pop_front() else { break };
            self.com1.receive(&[b]);
            fed = true;
        }
        if fed {
            self.update_uart_irq();
        }
    }

    /// Wait until clock time `deadline_ns`, or less if console input arrives: flushes the
    /// console first. Without an input source this is the clock's sleep.
    pub fn wait_until(&mut self, deadline_ns: u64) {
        self.flush();
        if self.input.is_none() {
            self.clock.sleep_until(deadline_ns);
            return;
        }
        let now = self.now_ns();
        let timeout = Duration::from_nanos(deadline_ns.saturating_sub(now));
        // Returns early on input, on Ctrl-A x, and when the source closes (the caller looks
        // again and then sleeps on the clock).
        self.poll_input(timeout);
    }

    /// Whether the platform asks the run to end now: the i8042's reset line, the end of a
    /// kernel panic report, or the user's Ctrl-A x.
    pub fn stop_request(&self) -> Option<StopReason> {
        if self.quit {
            Some(StopReason::Quit)
        } else if self.kbc.reset_requested() {
            Some(StopReason::Reset)
        } else if self.console.has(ConsoleFlags::PANIC_END) {
            Some(StopReason::Panic)
        } else {
            None
        }
    }

    /// What a HLT with interrupts off means, if the console explains it: the kernel's
    /// power-down (Linux's `poweroff` on a PC without ACPI halts with IF = 0 after saying
    /// "reboot: Power down" or "reboot: System halted") or a panic.
    pub fn halt_stop(&self) -> Option<StopReason> {
        if self.console.has(ConsoleFlags::PANIC) {
            Some(StopReason::Panic)
        } else if self.console.has(ConsoleFlags::POWER_DOWN) {
            Some(StopReason::PowerOff)
        } else {
            None
        }
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// The PIT or the RTC was changed other than through a port: the next
    /// [`update`](Self::update) looks at them.
    pub fn timers_changed(&mut self) {
        self.timers_due_ns = 0;
    }

    /// Bring the timers up to the clock and the interrupt lines up to the devices.
    ///
    /// The timers are looked at only once their next event is due (`timers_due_ns`, from
    /// [`next_deadline_ns`](Self::next_deadline_ns)): before it, channel 0 has no new edge
    /// and the RTC no enabled flag to raise (the flags it would record meanwhile are the
    /// ones its next update or register access computes over the longer interval).
    pub fn update(&mut self) {
        let now = self.now_ns();
        if now >= self.timers_due_ns {
            if self.pit.irq0_edge(now) {
                self.stats.timer_irqs += 1;
                self.pic.pulse_irq(Self::PIT_IRQ);
            }
            self.rtc.update(now);
            self.timers_due_ns = self.next_deadline_at(now).unwrap_or(u64::MAX);
        }
        self.pic.set_irq(Rtc::IRQ, self.rtc.irq_level());
        if self.kbc.irq_held() {
            self.kbc.release_irq();
            self.update_kbc_irqs();
        }
        if !self.pending_input.is_empty() {
            self.feed_uart();
        }
        self.update_uart_irq();
    }

    fn update_kbc_irqs(&mut self) {
        let (kbd, aux) = self.kbc.irq_levels();
        self.pic.set_irq(I8042::KBD_IRQ, kbd);
        self.pic.set_irq(I8042::AUX_IRQ, aux);
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
        self.next_deadline_at(self.now_ns())
    }

    /// [`next_deadline_ns`](Self::next_deadline_ns) with the clock read at `now`.
    fn next_deadline_at(&self, now: u64) -> Option<u64> {
        let pit = self.pit.next_irq0_ns();
        let rtc = self.rtc.next_deadline_ns(now);
        match (pit, rtc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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

    /// The ports where IN and OUT do nothing but read the floating bus, for every access size
    /// ([`PortMap::is_null`]: no device, or one whose model does nothing; the dispatch below
    /// treats exactly those alike). The `bt` engine does IN and OUT there inline
    /// (scanner/src/mangle/io.rs), without this machine: they are not in [`MachineStats`].
    pub fn null_ports(&self) -> vmm_scanner::NullPorts {
        vmm_scanner::NullPorts::new(|p| self.ports.is_null(p), FLOATING_BUS)
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        self.timers_due_ns = 0;
        let Some((dev, off)) = self.ports.lookup(port) else {
            self.stats.unclaimed_ports += 1;
            *self.stats.unclaimed_by_port.entry(port).or_default() += 1;
            tracing::trace!(port, "read of an unclaimed port");
            return FLOATING_BUS;
        };
        if dev.is_null() {
            return FLOATING_BUS;
        }
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
                // A byte taken from the receiver makes room for the next.
                if !self.pending_input.is_empty() {
                    self.feed_uart();
                }
                self.update_uart_irq();
                v
            }
            DeviceId::Rtc => {
                let now = self.now_ns();
                let v = self.rtc.read(port, now);
                self.pic.set_irq(Rtc::IRQ, self.rtc.irq_level());
                v
            }
            DeviceId::Kbc => {
                let v = self.kbc.read(port);
                self.update_kbc_irqs();
                v
            }
            // Null (returned above).
            DeviceId::Delay => FLOATING_BUS,
            DeviceId::PciConfig => self.pci.read(off),
        }
    }

    /// Returns whether the write asks the engine to stop (the debug-exit port).
    fn write_byte(&mut self, port: u16, v: u8) -> bool {
        self.timers_due_ns = 0;
        let Some((dev, off)) = self.ports.lookup(port) else {
            self.stats.unclaimed_ports += 1;
            *self.stats.unclaimed_by_port.entry(port).or_default() += 1;
            tracing::trace!(port, value = v, "write to an unclaimed port");
            return false;
        };
        if dev.is_null() {
            return false;
        }
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
            DeviceId::Rtc => {
                let now = self.now_ns();
                self.rtc.write(port, v, now);
                self.pic.set_irq(Rtc::IRQ, self.rtc.irq_level());
            }
            DeviceId::Kbc => {
                self.kbc.write(port, v);
                self.update_kbc_irqs();
                // The reset line stops the CPU at once.
                return self.kbc.reset_requested();
            }
            // Null (returned above).
            DeviceId::Delay => {}
            DeviceId::PciConfig => self.pci.write(off, v),
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

    /// The clock's TSC: under the host clock, the host TSC itself, which guest code run
    /// directly or translated reads with RDTSC, so every engine shows the guest the same
    /// counter; it keeps counting while the guest sleeps in HLT, as a real TSC does.
    fn tsc(&mut self) -> Option<u64> {
        Some(self.clock.tsc())
    }

    fn tsc_hz(&self) -> Option<u64> {
        Some(self.clock.tsc_hz())
    }

    /// WRMSR to IA32_TIME_STAMP_COUNTER is ignored: RDTSC in directly executed guest code
    /// reads the host's counter, which cannot be offset (docs/machine.md, "Time").
    fn tsc_writable(&self) -> bool {
        false
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

    /// The set the translator inlines is what the machine does: at every port and size it
    /// calls null, a write (of anything) does not stop the run and a read returns the floating
    /// value whatever was written; a port that reads back what it was written (0x80) or
    /// stops the run (0xf4) is not in it, nor any access that reaches one.
    #[test]
    fn null_ports_are_what_the_machine_ignores() {
        let (mut m, _, _) = machine();
        let n = m.null_ports();
        let mut seen = 0;
        for size in [1u32, 2, 4] {
            for p in 0..=u16::MAX {
                if !n.access(p, size) {
                    continue;
                }
                seen += 1;
                for v in [0, 0x5a5a_5a5a, u32::MAX] {
                    assert_eq!(m.io_out(p, size as u8, v), IoAction::Continue, "port {p:#x} size {size}");
                    assert_eq!(m.io_in(p, size as u8), n.read(size), "port {p:#x} size {size}");
                }
            }
        }
        assert_eq!(m.exit_status(), None);
        assert!(seen > 3 * 60000, "{seen}");
        assert_eq!(n.read(1), 0xff);
        assert!(n.contains(0xed) && n.contains(0xe0));
        assert!(!n.contains(0x80) && !n.contains(0xf4));
        assert!(n.access(0x3f7, 1) && !n.access(0x3f7, 2) && !n.access(0x7e, 4) && !n.access(0xf1, 4));
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
        assert_eq!(m.stats.unclaimed_by_port.get(&0x1234), Some(&3));
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
    fn rtc_periodic_interrupt_on_irq8() {
        let (mut m, clock, _) = machine();
        init_pic(&mut m);
        // Status B: PIE, 24 hour.
        m.io_out(0x70, 1, 0x0b);
        m.io_out(0x71, 1, 0x42);
        let due = m.next_deadline_ns().unwrap();
        assert!(due <= 1_000_000, "{due}");
        clock.sleep_until(due);
        assert!(m.interrupt_requested());
        assert_eq!(m.acknowledge_interrupt(), Some(0x28), "IRQ 8: the slave's first vector");
        // Reading C drops the line.
        m.io_out(0x70, 1, 0x0c);
        assert_eq!(m.io_in(0x71, 1), 0xc0);
        m.io_out(0xa0, 1, 0x20);
        m.io_out(0x20, 1, 0x20);
        assert!(!m.interrupt_requested());
        // The memory size in CMOS: 1 MiB of RAM has no extended memory.
        m.io_out(0x70, 1, 0x17);
        assert_eq!(m.io_in(0x71, 1), 0);
    }

    #[test]
    fn kbc_reset_pci_and_delay_ports() {
        let (mut m, _, _) = machine();
        assert_eq!(m.io_out(0xed, 1, 0), IoAction::Continue);
        assert_eq!(m.io_out(0xcf8, 4, 0x8000_0000), IoAction::Continue);
        assert_eq!(m.io_in(0xcf8, 4), 0x8000_0000);
        assert_eq!(m.io_in(0xcfc, 4), 0xffff_ffff);
        assert_eq!(m.io_in(0xcfe, 2), 0xffff);
        m.io_out(0x64, 1, 0xaa);
        assert_eq!(m.io_in(0x64, 1) & 1, 1);
        assert_eq!(m.io_in(0x60, 1), 0x55);
        assert_eq!(m.stop_request(), None);
        assert_eq!(m.io_out(0x64, 1, 0xfe), IoAction::Exit);
        assert_eq!(m.stop_request(), Some(StopReason::Reset));
        assert_eq!(m.stats.unclaimed_ports, 0);
    }

    #[test]
    fn console_messages_become_stop_reasons() {
        let (mut m, _, out) = machine();
        for b in b"[ 9.1] reboot: Power down\r\n" {
            m.io_out(0x3f8, 1, *b as u32);
        }
        assert!(out.text().contains("Power down"));
        assert_eq!(m.stop_request(), None);
        assert_eq!(m.halt_stop(), Some(StopReason::PowerOff));
        for b in b"Kernel panic - not syncing: x\n---[ end Kernel panic - not syncing: x ]---\n" {
            m.io_out(0x3f8, 1, *b as u32);
        }
        assert_eq!(m.halt_stop(), Some(StopReason::Panic));
        assert_eq!(m.stop_request(), Some(StopReason::Panic));
    }

    struct Script(Vec<Input>);
    impl InputSource for Script {
        fn read(&mut self, _: Duration) -> Input {
            if self.0.is_empty() {
                Input::Closed
            } else {
                self.0.remove(0)
            }
        }
    }

    #[test]
    fn console_input_reaches_the_uart_as_it_makes_room() {
        let (mut m, _, _) = machine();
        m.set_input(Box::new(Script(vec![Input::Bytes(b"abc".to_vec()), Input::Quit])));
        assert!(m.input_open());
        m.poll_input(Duration::ZERO);
        // No FIFO: one byte at a time.
        assert_eq!(m.io_in(0x3fd, 1) & 1, 1);
        assert_eq!(m.io_in(0x3f8, 1), b'a' as u32);
        assert_eq!(m.io_in(0x3f8, 1), b'b' as u32);
        assert_eq!(m.io_in(0x3f8, 1), b'c' as u32);
        assert_eq!(m.io_in(0x3fd, 1) & 1, 0);
        m.wait_until(1000);
        assert_eq!(m.stop_request(), Some(StopReason::Quit));
        m.poll_input(Duration::ZERO);
        assert!(!m.input_open());
    }

    #[test]
    fn tsc_follows_the_clock() {
        let (mut m, clock, _) = machine();
        let hz = ManualClock::DEFAULT_TSC_HZ;
        assert_eq!(m.tsc_hz(), Some(hz));
        clock.advance(5000);
        assert_eq!(m.tsc(), Some(5000 * hz / 1_000_000_000));
        assert_eq!(m.ram().len(), 1 << 20);
    }

    /// Assemble 32-bit code at 0x1000 in flat protected mode, CPL 0, on `m`.
    fn cpu_at_cpl0(m: Machine, code: impl FnOnce(&mut iced_x86::code_asm::CodeAssembler)) -> vmm_interp::Cpu<Machine> {
        let mut a = iced_x86::code_asm::CodeAssembler::new(32).unwrap();
        code(&mut a);
        let bytes = a.assemble(0x1000).unwrap();
        let mut st = vmm_interp::CpuState::flat_protected(0);
        st.eip = 0x1000;
        st.gpr[4] = 0x8000;
        let mut cpu = vmm_interp::Cpu::with_state(st, m);
        cpu.bus.ram()[0x1000..0x1000 + bytes.len()].copy_from_slice(&bytes);
        cpu
    }

    #[test]
    fn interpreter_rdtsc_reads_the_clock_at_its_rate_and_cpuid_reports_it() {
        use iced_x86::code_asm::*;
        // 2.596150 GHz: the ratio in CPUID leaf 0x15 must carry all of it.
        let hz = 2_596_150_000u64;
        let clock = ManualClock::with_tsc_hz(hz);
        let m = Machine::new(GuestRam::heap(1 << 20), Box::new(clock.clone()), Box::new(SharedBuffer::new()));
        let mut cpu = cpu_at_cpl0(m, |a| {
            a.rdtsc().unwrap();
            a.mov(esi, eax).unwrap();
            a.mov(edi, edx).unwrap();
            // A write to IA32_TIME_STAMP_COUNTER is ignored (the TSC is the host's).
            a.mov(ecx, 0x10u32).unwrap();
            a.xor(eax, eax).unwrap();
            a.xor(edx, edx).unwrap();
            a.wrmsr().unwrap();
            a.rdmsr().unwrap();
            a.hlt().unwrap();
        });
        // 3 s and 1 ns: 3 × 2 596 150 000 + 2.59615 ticks, rounded down.
        clock.advance(3_000_000_001);
        assert_eq!(cpu.run(100), vmm_interp::Exit::Halt);
        let g = |r: usize| cpu.state.gpr[r] as u64;
        let first = g(6) | g(7) << 32;
        assert_eq!(first, 3 * hz + 2);
        let msr = g(0) | g(2) << 32;
        assert_eq!(msr, first, "the clock did not move: the MSR reads the same TSC");
        // CPUID leaf 0x15: TSC Hz = ECX × EBX / EAX (SDM vol. 2, CPUID), exact here; Linux's
        // computation in kHz with 32-bit arithmetic must neither overflow nor round.
        let [den, num, crystal, _] = cpu.model.cpuid(0x15, 0);
        assert!(den != 0 && num != 0 && crystal != 0);
        assert_eq!(crystal as u64 * num as u64 / den as u64, hz);
        let linux_khz = (crystal / 1000).checked_mul(num).expect("32-bit overflow") / den;
        assert_eq!(linux_khz as u64, hz / 1000);
        // Leaf 0x16: base and maximum frequency in MHz.
        let l16 = cpu.model.cpuid(0x16, 0);
        assert_eq!((l16[0], l16[1]), (2596, 2596));
        assert!(cpu.model.cpuid(0, 0)[0] >= 0x16, "max basic leaf");
    }
}
