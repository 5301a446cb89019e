//! Pre-decoded fast paths for the commonest instruction forms, chosen once when a block is
//! built (`block.rs`) instead of at every execution.
//!
//! Only 32-bit register destinations with register, immediate or dword memory sources
//! (ADD ADC SUB SBB CMP AND OR XOR TEST, MOV, INC, DEC, LEA), stores of a 32-bit register,
//! PUSH r32, and Jcc with a 32-bit operand size. Each fast path does exactly what the
//! generic handler does for that form, in the same order, with the same flag helpers
//! (`add_flags`, `sub_flags`, `szp`): it only skips the mnemonic dispatch and the operand-kind
//! matches of `read_op`/`rmw_op`/`write_op`. Anything else is [`Fast::Generic`] and goes
//! through `exec`.
//!
//! Invariant: a fast path changes no general register and no flag before its last fallible
//! step (the memory access, the Jcc limit check). So the block loop takes no register
//! snapshot for it: if it fails, the current registers *are* the ones before it. The differential test checks `run` (which uses these) against `step`
//! (which never does) on every case.

use iced_x86::{ConditionCode, Instruction, Mnemonic as M, OpKind, Register};

use crate::exc;
use crate::exec::arith::{add_flags, sub_flags, szp};
use crate::state::{flags, SegReg};
use crate::{Bus, Cpu, Res};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alu {
    Add,
    Adc,
    Sub,
    Sbb,
    Cmp,
    And,
    Or,
    Xor,
    Test,
}

/// How to execute one instruction of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fast {
    Generic,
    /// `op r32, r32`
    AluRR { op: Alu, d: u8, s: u8 },
    /// `op r32, imm` (imm32 or sign-extended imm8)
    AluRI { op: Alu, d: u8, imm: u32 },
    /// `op r32, dword [mem]`
    AluRM { op: Alu, d: u8 },
    Inc { d: u8 },
    Dec { d: u8 },
    MovRR { d: u8, s: u8 },
    MovRI { d: u8, imm: u32 },
    /// `mov r32, dword [mem]`
    Load { d: u8 },
    /// `mov dword [mem], r32`
    Store { s: u8 },
    /// `lea r32, [mem]`
    Lea { d: u8 },
    Push { s: u8 },
    /// Jcc with a 32-bit operand size; `target` is where the instruction was decoded to jump
    /// (blocks are entered at the EIP they were decoded at).
    Jcc { cc: ConditionCode, target: u32 },
}

/// The index of a 32-bit general register.
fn gpr32(r: Register) -> Option<u8> {
    let n = r as u32;
    let eax = Register::EAX as u32;
    (eax..=Register::EDI as u32).contains(&n).then(|| (n - eax) as u8)
}

fn alu_of(m: M) -> Option<Alu> {
    Some(match m {
        M::Add => Alu::Add,
        M::Adc => Alu::Adc,
        M::Sub => Alu::Sub,
        M::Sbb => Alu::Sbb,
        M::Cmp => Alu::Cmp,
        M::And => Alu::And,
        M::Or => Alu::Or,
        M::Xor => Alu::Xor,
        M::Test => Alu::Test,
        _ => return None,
    })
}

fn dword_mem(i: &Instruction, n: u32) -> bool {
    i.op_kind(n) == OpKind::Memory && i.memory_size() == iced_x86::MemorySize::UInt32
}

/// Choose the fast path of a decoded instruction.
pub(crate) fn classify(i: &Instruction) -> Fast {
    if i.has_lock_prefix() {
        return Fast::Generic;
    }
    let m = i.mnemonic();
    let reg = |n: u32| if i.op_kind(n) == OpKind::Register { gpr32(i.op_register(n)) } else { None };
    if let Some(op) = alu_of(m) {
        if i.op_count() != 2 {
            return Fast::Generic;
        }
        let Some(d) = reg(0) else { return Fast::Generic };
        return match i.op1_kind() {
            OpKind::Register => match reg(1) {
                Some(s) => Fast::AluRR { op, d, s },
                None => Fast::Generic,
            },
            OpKind::Immediate32 | OpKind::Immediate8to32 => Fast::AluRI { op, d, imm: i.immediate(1) as u32 },
            OpKind::Memory if dword_mem(i, 1) => Fast::AluRM { op, d },
            _ => Fast::Generic,
        };
    }
    match m {
        M::Inc | M::Dec if i.op_count() == 1 => match reg(0) {
            Some(d) if m == M::Inc => Fast::Inc { d },
            Some(d) => Fast::Dec { d },
            None => Fast::Generic,
        },
        M::Mov if i.op_count() == 2 => match (reg(0), i.op1_kind()) {
            (Some(d), OpKind::Register) => match reg(1) {
                Some(s) => Fast::MovRR { d, s },
                None => Fast::Generic,
            },
            (Some(d), OpKind::Immediate32) => Fast::MovRI { d, imm: i.immediate32() },
            (Some(d), OpKind::Memory) if dword_mem(i, 1) => Fast::Load { d },
            (None, OpKind::Register) if dword_mem(i, 0) => match reg(1) {
                Some(s) => Fast::Store { s },
                None => Fast::Generic,
            },
            _ => Fast::Generic,
        },
        M::Lea if i.op_count() == 2 && i.op1_kind() == OpKind::Memory => match reg(0) {
            Some(d) => Fast::Lea { d },
            None => Fast::Generic,
        },
        M::Push if i.op_count() == 1 => match reg(0) {
            Some(s) => Fast::Push { s },
            None => Fast::Generic,
        },
        M::Jo | M::Jno | M::Jb | M::Jae | M::Je | M::Jne | M::Jbe | M::Ja | M::Js | M::Jns | M::Jp | M::Jnp
        | M::Jl | M::Jge | M::Jle | M::Jg
            if i.op0_kind() == OpKind::NearBranch32 && i.op_code().operand_size() == 32 =>
        {
            Fast::Jcc { cc: i.condition_code(), target: i.near_branch32() }
        }
        _ => Fast::Generic,
    }
}

impl<B: Bus> Cpu<B> {
    /// `a op b` at 32 bits: the result is written to register `d` except for CMP and TEST.
    #[inline(always)]
    fn fast_alu(&mut self, op: Alu, d: u8, b: u32) {
        let a = self.state.gpr[d as usize & 7];
        let (r, f) = match op {
            Alu::Add => add_flags(a, b, 0, 4),
            Alu::Adc => add_flags(a, b, self.state.eflags & flags::CF, 4),
            Alu::Sub | Alu::Cmp => sub_flags(a, b, 0, 4),
            Alu::Sbb => sub_flags(a, b, self.state.eflags & flags::CF, 4),
            Alu::And | Alu::Test => (a & b, szp(a & b, 4)),
            Alu::Or => (a | b, szp(a | b, 4)),
            Alu::Xor => (a ^ b, szp(a ^ b, 4)),
        };
        if !matches!(op, Alu::Cmp | Alu::Test) {
            self.state.gpr[d as usize & 7] = r;
        }
        self.set_status(f);
    }

    /// Execute `i` by its fast path `f` (not `Generic`).
    #[inline(always)]
    pub(crate) fn exec_fast(&mut self, f: Fast, i: &Instruction) -> Res<()> {
        match f {
            Fast::AluRR { op, d, s } => {
                let b = self.state.gpr[s as usize & 7];
                self.fast_alu(op, d, b);
            }
            Fast::AluRI { op, d, imm } => self.fast_alu(op, d, imm),
            Fast::AluRM { op, d } => {
                let (s, off) = self.ea(i);
                let b = self.read(s, off, 4)?;
                self.fast_alu(op, d, b);
            }
            Fast::Inc { d } => {
                let a = self.state.gpr[d as usize & 7];
                let (r, f) = add_flags(a, 1, 0, 4);
                self.state.gpr[d as usize & 7] = r;
                self.set_status((f & !flags::CF) | (self.state.eflags & flags::CF));
            }
            Fast::Dec { d } => {
                let a = self.state.gpr[d as usize & 7];
                let (r, f) = sub_flags(a, 1, 0, 4);
                self.state.gpr[d as usize & 7] = r;
                self.set_status((f & !flags::CF) | (self.state.eflags & flags::CF));
            }
            Fast::MovRR { d, s } => self.state.gpr[d as usize & 7] = self.state.gpr[s as usize & 7],
            Fast::MovRI { d, imm } => self.state.gpr[d as usize & 7] = imm,
            Fast::Load { d } => {
                let (s, off) = self.ea(i);
                self.state.gpr[d as usize & 7] = self.read(s, off, 4)?;
            }
            Fast::Store { s } => {
                let v = self.state.gpr[s as usize & 7];
                let (seg, off) = self.ea(i);
                self.write(seg, off, 4, v)?;
            }
            Fast::Lea { d } => {
                let (_, a) = self.ea(i);
                self.state.gpr[d as usize & 7] = a;
            }
            Fast::Push { s } => {
                let v = self.state.gpr[s as usize & 7];
                self.push(4, v)?;
            }
            Fast::Jcc { cc, target } => {
                if self.cond(cc) {
                    if target > self.state.seg[SegReg::Cs as usize].limit {
                        return Err(exc::gp0());
                    }
                    self.next_eip = target;
                }
            }
            Fast::Generic => return self.exec(i),
        }
        Ok(())
    }
}
