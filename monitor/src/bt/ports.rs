//! The machine's null ports for the translator: IN and OUT there are inline at CPL 0
//! (scanner/src/mangle/io.rs, docs/translator.md, "Null-port I/O").
//!
//! The set comes from the machine ([`Machine::null_ports`](crate::machine::Machine::null_ports),
//! itself from the port map: no second list) and is fixed for a run: the `imm8` forms are
//! decided when they are translated (`Config::null_ports`), the `DX` forms test the maps
//! written here on the vCPU region (`Abi::null_port_maps`, read-only for translated code).

use vmm_scanner::mangle::io::NULL_PORT_SIZES;
use vmm_scanner::NullPorts;

use super::Bt;

impl Bt {
    /// Makes `ports` the null ports of the coming run: the translator's set and the maps.
    /// Called before the run translates anything (at its setup, after `Bt::new` or
    /// `reset_for_next_run`, which leave no fragment): fragments translated for another set
    /// would be wrong.
    pub fn set_null_ports(&mut self, ports: NullPorts) {
        if self.cfg.null_ports == ports {
            return; // a session's next run on the same machine: the maps are written
        }
        for size in NULL_PORT_SIZES {
            let off = self.abi.null_port_map(size).expect("a map per size");
            self.vw(off, &ports.map(size));
        }
        self.cfg.null_ports = ports;
    }
}
