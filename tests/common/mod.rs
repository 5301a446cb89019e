pub mod gen;
pub mod guest;
