//! Device models of the PC platform: plain safe Rust, each unit-tested in its file, with no
//! knowledge of the engines. The [`Machine`](crate::machine::Machine) owns them, dispatches
//! port I/O to them through a [`ports::PortMap`] and routes their interrupt lines to the PIC.

pub mod clock;
pub mod debug_exit;
pub mod i8042;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod ports;
pub mod rtc;
pub mod system_control;
pub mod uart;

pub use clock::{Clock, HostClock, ManualClock};
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use pci::PciConfig;
pub use pic::PicPair;
pub use pit::Pit;
pub use ports::{DeviceId, PortMap, FLOATING_BUS};
pub use rtc::Rtc;
pub use system_control::SystemControl;
pub use uart::{SharedBuffer, Uart};
