//! IN and OUT to *null ports* as inline code at CPL 0 (docs/translator.md, "Null-port I/O").
//!
//! A null port is one whose device model does nothing: a write is dropped and a read returns
//! a constant (the floating bus), whatever the access size. The runtime says which ports those
//! are ([`Config::null_ports`], built by the monitor from its machine, fixed for a run; the
//! default is none); an access of n bytes at port p is null when the ports p .. p + n - 1
//! (modulo 2^16, as the machine splits a wide access into byte accesses) all are: a word IN at
//! a null port whose neighbour is a real device register still goes to the device.
//!
//! At CPL 0 an IN or OUT cannot fault (CPL <= IOPL: no I/O permission check), so only the
//! device's effect has to be reproduced, and for a null port there is none but the value read:
//!
//! * `in al/ax/eax, imm8`, `out imm8, al/ax/eax`: decided here. A null IN is
//!   `mov al/ax/eax, value` (the floating value in every byte), a null OUT emits nothing;
//!   any other port is the usual `Emulate` callout (`CalloutKind::Io`).
//! * `in al/ax/eax, dx`, `out dx, al/ax/eax`: the port is known at run time only. The runtime
//!   keeps one byte map per access size on the vCPU region ([`Abi::null_port_maps`], written
//!   from [`NullPorts::map`]); flag-free test:
//!
//! ```text
//! mov gs:[s_c], ecx
//! movzx ecx, dx
//! movzx ecx, byte gs:[ecx + null_port_map(size)]   ; 1: null, 0: a device
//! lea ecx, [ecx - 1]
//! jecxz fast
//! jmp slow
//! fast: mov ecx, gs:[s_c]
//! mov al/ax/eax, value                              ; IN only
//! done:
//! ...
//! slow: mov ecx, gs:[s_c]; <Emulate callout>; jmp done    (out of line)
//! ```
//!
//! Nothing here can fault (the maps are inside the vCPU region's limit), changes a flag or
//! touches guest memory. INS/OUTS (and their REP forms), a LOCK prefix (#UD) and any IN/OUT at
//! CPL > 0 (IOPL and the TSS's I/O bitmap apply) stay callouts. Inline accesses do not reach
//! the machine, so its statistics (`--stats`: port reads and writes, unclaimed ports) do not
//! count them.

use std::sync::Arc;

use iced_x86::{Code, Instruction, MemoryOperand, Register};

use super::{mk, Builder, CoEip, Done, FALL, S_C};
use crate::abi::{Abi, CalloutOp};
use crate::classify::CalloutKind;
use crate::units::GuestInsn;
use crate::Config;

/// The access sizes with a map at [`Abi::null_port_maps`] (in this order).
pub const NULL_PORT_SIZES: [u32; 3] = [1, 2, 4];

/// Ports: 65536.
pub const PORTS: u32 = 1 << 16;

/// The set of null ports (see the module documentation) and the byte they read. Cheap to
/// clone; `Default` is the empty set (every IN and OUT a callout).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NullPorts {
    /// One bit per port, or nothing for the empty set.
    bits: Option<Arc<[u64]>>,
    /// What a byte read of a null port returns.
    value: u8,
}

impl std::fmt::Debug for NullPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: u32 = self.bits.as_deref().map_or(0, |b| b.iter().map(|w| w.count_ones()).sum());
        f.debug_struct("NullPorts").field("ports", &n).field("value", &self.value).finish()
    }
}

impl NullPorts {
    /// The ports `p` for which `is_null(p)`, each reading `value`.
    pub fn new(is_null: impl Fn(u16) -> bool, value: u8) -> NullPorts {
        let mut bits = vec![0u64; (PORTS / 64) as usize];
        for p in 0..=u16::MAX {
            if is_null(p) {
                bits[p as usize / 64] |= 1 << (p % 64);
            }
        }
        NullPorts { bits: Some(bits.into()), value }
    }

    /// Whether byte port `port` is null.
    pub fn contains(&self, port: u16) -> bool {
        self.bits.as_deref().is_some_and(|b| b[port as usize / 64] >> (port % 64) & 1 != 0)
    }

    /// Whether an access of `size` bytes at `port` touches only null ports (`port`,
    /// `port + 1`, ... modulo 2^16).
    pub fn access(&self, port: u16, size: u32) -> bool {
        (0..size).all(|i| self.contains(port.wrapping_add(i as u16)))
    }

    /// The byte a null port reads.
    pub fn value(&self) -> u8 {
        self.value
    }

    /// The value an IN of `size` bytes from null ports reads.
    pub fn read(&self, size: u32) -> u32 {
        (0..size).fold(0, |v, i| v | (self.value as u32) << (8 * i))
    }

    /// The run-time map for access size `size` (one of [`NULL_PORT_SIZES`]): 65536 bytes, byte
    /// `p` is 1 if an access of `size` bytes at port `p` is null, else 0.
    pub fn map(&self, size: u32) -> Vec<u8> {
        (0..PORTS).map(|p| self.access(p as u16, size) as u8).collect()
    }
}

/// The register an IN writes or an OUT reads, and its size in bytes.
fn data_reg(i: &Instruction) -> Option<(Register, u32)> {
    use Code as C;
    let r = match i.code() {
        C::In_AL_imm8 | C::In_AL_DX | C::Out_imm8_AL | C::Out_DX_AL => Register::AL,
        C::In_AX_imm8 | C::In_AX_DX | C::Out_imm8_AX | C::Out_DX_AX => Register::AX,
        C::In_EAX_imm8 | C::In_EAX_DX | C::Out_imm8_EAX | C::Out_DX_EAX => Register::EAX,
        _ => return None,
    };
    Some((r, r.size() as u32))
}

/// The rule for IN and OUT at CPL 0 (the caller checked the CPL: `classify` makes every
/// inline kind a callout elsewhere).
pub(super) fn port_io(b: &mut Builder<'_>, gi: &GuestInsn, cfg: &Config, next: u32) -> Done {
    let i = &gi.instr;
    let emulate = |b: &mut Builder<'_>| {
        b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, CalloutKind::Io as u32);
        FALL
    };
    let Some((reg, size)) = data_reg(i) else {
        return emulate(b);
    };
    if i.has_lock_prefix() || cfg.null_ports.bits.is_none() {
        return emulate(b);
    }
    let is_in = matches!(
        i.code(),
        Code::In_AL_imm8 | Code::In_AX_imm8 | Code::In_EAX_imm8 | Code::In_AL_DX | Code::In_AX_DX | Code::In_EAX_DX
    );
    let value = cfg.null_ports.read(size);
    let read = |b: &mut Builder<'_>| {
        if is_in {
            let code = match size {
                1 => Code::Mov_r8_imm8,
                2 => Code::Mov_r16_imm16,
                _ => Code::Mov_r32_imm32,
            };
            b.ins(mk(Instruction::with2(code, reg, value)));
        }
    };
    let imm = matches!(
        i.code(),
        Code::In_AL_imm8 | Code::In_AX_imm8 | Code::In_EAX_imm8 | Code::Out_imm8_AL | Code::Out_imm8_AX | Code::Out_imm8_EAX
    );
    if imm {
        if !cfg.null_ports.access(i.immediate8() as u16, size) {
            return emulate(b);
        }
        read(b);
        return FALL;
    }
    let a: &Abi = b.abi;
    let map = a.null_port_map(size).expect("a map for every IN/OUT size");
    let sc = b.slot(S_C);
    let slow = b.label();
    let done = b.label();
    b.st32(sc, Register::ECX);
    b.ins(mk(Instruction::with2(Code::Movzx_r32_rm16, Register::ECX, Register::DX)));
    b.ins(mk(Instruction::with2(
        Code::Movzx_r32_rm8,
        Register::ECX,
        MemoryOperand::new(Register::ECX, Register::None, 1, map as i64, 4, false, Register::GS),
    )));
    // JECXZ reaches only 127 bytes: it skips the near jump to the slow path.
    b.ins(mk(Instruction::with2(
        Code::Lea_r32_m,
        Register::ECX,
        MemoryOperand::new(Register::ECX, Register::None, 1, -1, 1, false, Register::None),
    )));
    let fast = b.label();
    b.branch(Code::Jecxz_rel8_32, fast);
    b.branch(Code::Jmp_rel32_32, slow);
    b.bind(fast);
    b.ld32(Register::ECX, sc);
    read(b);
    b.bind(done);
    b.defer_emulate(slow, gi.eip, next, CalloutKind::Io, sc, done);
    FALL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_null_only_if_every_byte_is() {
        // Null: everything but 0x3f8..=0x3ff and 0x0000.
        let n = NullPorts::new(|p| !(0x3f8..=0x3ff).contains(&p) && p != 0, 0xff);
        assert!(n.access(0x3f7, 1));
        assert!(!n.access(0x3f7, 2));
        assert!(!n.access(0x3f5, 4));
        assert!(n.access(0x3f4, 4));
        assert!(n.access(0x400, 4));
        // Wraps as the machine's byte split does: 0xffff, then 0x0000.
        assert!(n.access(0xffff, 1));
        assert!(!n.access(0xffff, 2));
        assert!(!n.access(0xfffe, 4));
        assert!(n.access(0xfffc, 4));
        assert_eq!(n.read(1), 0xff);
        assert_eq!(n.read(2), 0xffff);
        assert_eq!(n.read(4), 0xffff_ffff);
        let m2 = n.map(2);
        assert_eq!(m2.len(), PORTS as usize);
        assert_eq!((m2[0x3f6], m2[0x3f7], m2[0x3f8], m2[0x400], m2[0xffff]), (1, 0, 0, 1, 0));
        let empty = NullPorts::default();
        assert!(!empty.access(0xe0, 1));
        assert!(empty.map(1).iter().all(|&b| b == 0));
    }
}
