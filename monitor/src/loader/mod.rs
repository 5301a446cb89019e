//! Boot loaders: put a guest kernel into guest RAM and say how the CPU must start.

pub mod linux;
pub mod multiboot;
