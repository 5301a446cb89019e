//! Instruction semantics, one module per family (after Bochs's `cpu/`):
//!
//! | module | instructions |
//! |---|---|
//! | [`arith`] | ADD ADC SUB SBB CMP INC DEC NEG MUL IMUL DIV IDIV |
//! | [`logic`] | AND OR XOR NOT TEST |
//! | [`shift`] | SHL SAL SHR SAR ROL ROR RCL RCR SHLD SHRD |
//! | [`bit`] | BT BTS BTR BTC BSF BSR BSWAP SETcc |
//! | [`bcd`] | DAA DAS AAA AAS AAM AAD |
//! | [`data`] | MOV MOVZX MOVSX XCHG CMOVcc LEA CBW CWDE CWD CDQ XLAT CMPXCHG CMPXCHG8B XADD LAHF SAHF CLC STC CMC CLD STD NOP |
//! | [`stack`] | PUSH POP PUSHA POPA PUSHF POPF ENTER LEAVE |
//! | [`string`] | MOVS CMPS SCAS LODS STOS INS OUTS with REP/REPE/REPNE |
//! | [`control`] | near JMP Jcc CALL RET, LOOP LOOPE LOOPNE JCXZ JECXZ, INT n INT3 INTO BOUND UD2 |
//! | [`far`] | far JMP CALL RET (call gates), IRET |
//! | [`protection`] | MOV/PUSH/POP Sreg, LDS LES LFS LGS LSS, LAR LSL VERR VERW ARPL, LGDT LIDT LLDT LTR SGDT SIDT SLDT STR SMSW LMSW CLTS |
//! | [`system`] | MOV CRn/DRn, RDMSR WRMSR CPUID RDTSC RDPMC HLT CLI STI INVLPG INVD WBINVD IN OUT SYSENTER SYSEXIT |
//! | [`fpu`] | x87/MMX/SSE state management: FXSAVE FXRSTOR FNINIT FNSTSW FNSTCW FLDCW FNSTENV FLDENV FNCLEX FWAIT EMMS LDMXCSR STMXCSR |
//! | [`x87`] | x87 arithmetic: FLD FST(P) FILD FIST(P) FADD FSUB(R) FMUL FDIV(R) (+P, FI*) FCHS FABS FXCH FLD1 FLDZ FCOM(P)(P) FUCOM(P)(P) FICOM(P) FTST |

pub(crate) mod arith;
mod bcd;
mod bit;
mod control;
mod data;
mod far;
mod fpu;
mod logic;
pub(crate) mod operand;
mod protection;
mod shift;
mod stack;
mod string;
mod system;
mod x87;

use iced_x86::{CpuidFeature, Instruction, Mnemonic as M, OpKind};

use crate::exc;
use crate::{Bus, Cpu, Fault, Res};

impl<B: Bus> Cpu<B> {
    /// Execute one decoded instruction. On success `self.next_eip` is where execution
    /// continues; on a fault nothing architectural has been committed except memory writes
    /// the CPU would also have made.
    pub(crate) fn exec(&mut self, i: &Instruction) -> Res<()> {
        match i.mnemonic() {
            // arithmetic
            M::Add => self.add(i),
            M::Adc => self.adc(i),
            M::Sub => self.sub(i),
            M::Sbb => self.sbb(i),
            M::Cmp => self.cmp(i),
            M::Inc => self.inc(i),
            M::Dec => self.dec(i),
            M::Neg => self.neg(i),
            M::Mul => self.mul(i),
            M::Imul => self.imul(i),
            M::Div => self.div(i),
            M::Idiv => self.idiv(i),
            // logic
            M::And => self.and(i),
            M::Or => self.or(i),
            M::Xor => self.xor(i),
            M::Not => self.not(i),
            M::Test => self.test(i),
            // shifts and rotates
            M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr => self.shift(i),
            M::Shld => self.shld(i),
            M::Shrd => self.shrd(i),
            // bits
            M::Bt | M::Bts | M::Btr | M::Btc => self.bt(i),
            M::Bsf => self.bsf(i),
            M::Bsr => self.bsr(i),
            // F3 0F BC / F3 0F BD decode as TZCNT/LZCNT; a CPU without BMI1/LZCNT (a P6)
            // ignores the F3 prefix and executes BSF/BSR (Linux's `__ffs` is `rep; bsf`).
            M::Tzcnt if !self.model_has(CpuidFeature::BMI1) => self.bsf(i),
            M::Lzcnt if !self.model_has(CpuidFeature::LZCNT) => self.bsr(i),
            M::Bswap => self.bswap(i),
            M::Seto | M::Setno | M::Setb | M::Setae | M::Sete | M::Setne | M::Setbe | M::Seta | M::Sets
            | M::Setns | M::Setp | M::Setnp | M::Setl | M::Setge | M::Setle | M::Setg => self.setcc(i),
            // BCD
            M::Daa => self.daa(i),
            M::Das => self.das(i),
            M::Aaa => self.aaa(i),
            M::Aas => self.aas(i),
            M::Aam => self.aam(i),
            M::Aad => self.aad(i),
            // data transfer
            M::Mov => self.mov_any(i),
            M::Movzx => self.movzx(i),
            M::Movsx => self.movsx(i),
            M::Xchg => self.xchg(i),
            M::Cmovo | M::Cmovno | M::Cmovb | M::Cmovae | M::Cmove | M::Cmovne | M::Cmovbe | M::Cmova | M::Cmovs
            | M::Cmovns | M::Cmovp | M::Cmovnp | M::Cmovl | M::Cmovge | M::Cmovle | M::Cmovg => self.cmovcc(i),
            M::Lea => self.lea(i),
            M::Cbw | M::Cwde | M::Cwd | M::Cdq => self.convert(i),
            M::Xlatb => self.xlat(i),
            M::Cmpxchg => self.cmpxchg(i),
            M::Cmpxchg8b => self.cmpxchg8b(i),
            M::Xadd => self.xadd(i),
            M::Lahf => self.lahf(i),
            M::Sahf => self.sahf(i),
            M::Clc | M::Stc | M::Cmc | M::Cld | M::Std => self.flag_op(i),
            M::Nop | M::Pause | M::Prefetchnta | M::Prefetcht0 | M::Prefetcht1 | M::Prefetcht2 | M::Lfence
            | M::Sfence | M::Mfence => Ok(()),
            M::Salc => self.salc(i),
            // stack
            M::Push => self.push_op(i),
            M::Pop => self.pop_op(i),
            M::Pusha | M::Pushad => self.pusha(i),
            M::Popa | M::Popad => self.popa(i),
            M::Pushf | M::Pushfd => self.pushf(i),
            M::Popf | M::Popfd => self.popf(i),
            M::Enter => self.enter(i),
            M::Leave => self.leave(i),
            // strings
            M::Movsb | M::Movsw | M::Cmpsb | M::Cmpsw | M::Scasb | M::Scasw | M::Scasd | M::Lodsb | M::Lodsw
            | M::Lodsd | M::Stosb | M::Stosw | M::Stosd | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw
            | M::Outsd => self.string(i),
            // MOVSD and CMPSD are also SSE2 instructions with XMM operands.
            M::Movsd | M::Cmpsd if !is_xmm_op(i) => self.string(i),
            // near control transfer
            M::Jmp if is_near(i) => self.jmp_near(i),
            M::Jo | M::Jno | M::Jb | M::Jae | M::Je | M::Jne | M::Jbe | M::Ja | M::Js | M::Jns | M::Jp | M::Jnp
            | M::Jl | M::Jge | M::Jle | M::Jg => self.jcc(i),
            M::Call if is_near(i) => self.call_near(i),
            M::Ret => self.ret_near(i),
            M::Loop | M::Loope | M::Loopne => self.loop_(i),
            M::Jcxz | M::Jecxz => self.jcxz(i),
            M::Int => self.int_n(i),
            M::Int3 => self.int3(i),
            M::Into => self.into(i),
            M::Int1 => self.int1(i),
            M::Bound => self.bound(i),
            M::Ud0 | M::Ud1 | M::Ud2 => Err(exc::ud()),
            // far control transfer
            M::Jmp => self.jmp_far(i),
            M::Call => self.call_far(i),
            M::Retf => self.retf(i),
            M::Iret | M::Iretd => self.iret(i),
            // protection
            M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => self.load_far_pointer(i),
            M::Lar => self.lar(i),
            M::Lsl => self.lsl(i),
            M::Verr | M::Verw => self.verr_verw(i),
            M::Arpl => self.arpl(i),
            M::Lgdt | M::Lidt => self.lgdt_lidt(i),
            M::Sgdt | M::Sidt => self.sgdt_sidt(i),
            M::Lldt => self.lldt(i),
            M::Ltr => self.ltr(i),
            M::Sldt => self.sldt(i),
            M::Str => self.str_(i),
            M::Smsw => self.smsw(i),
            M::Lmsw => self.lmsw(i),
            M::Clts => self.clts(i),
            // system
            M::Rdmsr => self.rdmsr(i),
            M::Wrmsr => self.wrmsr(i),
            M::Cpuid => self.cpuid(i),
            M::Rdtsc => self.rdtsc(i),
            M::Rdpmc => self.rdpmc(i),
            M::Hlt => self.hlt(i),
            M::Cli => self.cli(i),
            M::Sti => self.sti(i),
            M::Invlpg => self.invlpg(i),
            M::Invd | M::Wbinvd => self.invd(i),
            M::In => self.in_(i),
            M::Out => self.out(i),
            M::Sysenter => self.sysenter(i),
            M::Sysexit => self.sysexit(i),
            M::Rsm => Err(exc::ud()),
            // x87, MMX, SSE
            M::Fxsave | M::Fxrstor | M::Fninit | M::Fnstsw | M::Fnstcw | M::Fldcw | M::Fnstenv | M::Fldenv
            | M::Fnclex | M::Wait | M::Emms | M::Ldmxcsr | M::Stmxcsr | M::Fnsave | M::Frstor => self.fpu_state(i),
            M::Fld | M::Fild | M::Fld1 | M::Fldz | M::Fst | M::Fstp | M::Fist | M::Fistp | M::Fadd | M::Faddp
            | M::Fiadd | M::Fsub | M::Fsubp | M::Fisub | M::Fsubr | M::Fsubrp | M::Fisubr | M::Fmul | M::Fmulp
            | M::Fimul | M::Fdiv | M::Fdivp | M::Fidiv | M::Fdivr | M::Fdivrp | M::Fidivr | M::Fchs | M::Fabs
            | M::Fxch | M::Fcom | M::Fcomp | M::Fcompp | M::Fucom | M::Fucomp | M::Fucompp | M::Ficom
            | M::Ficomp | M::Ftst => self.x87(i),
            _ => self.unimplemented(i),
        }
    }

    /// MOV: to or from a segment, control or debug register goes to its family; the rest is
    /// plain data transfer.
    fn mov_any(&mut self, i: &Instruction) -> Res<()> {
        for n in 0..2 {
            if i.op_kind(n) == OpKind::Register {
                let r = i.op_register(n);
                if r.is_segment_register() {
                    return if n == 0 { self.mov_to_sreg(i) } else { self.mov_from_sreg(i) };
                }
                if r.is_cr() {
                    return self.mov_cr(i);
                }
                if r.is_dr() {
                    return self.mov_dr(i);
                }
                if r.is_tr() {
                    return Err(exc::ud());
                }
            }
        }
        self.mov(i)
    }

    /// An instruction with no handler. If it needs a feature the virtual CPU model does not
    /// have, the CPU would raise #UD; otherwise the interpreter does not implement it.
    fn unimplemented(&mut self, i: &Instruction) -> Res<()> {
        if i.cpuid_features().iter().any(|f| !self.model_has(*f)) {
            return Err(exc::ud());
        }
        if is_x87_or_simd(i) {
            self.fpu_available(i)?;
            return Err(Fault::Unsupported("x87/MMX/SSE arithmetic is not implemented by the interpreter"));
        }
        Err(Fault::Unsupported("instruction not implemented by the interpreter"))
    }

    /// Whether the virtual CPU model has an iced-x86 CPUID feature.
    pub(crate) fn model_has(&self, f: CpuidFeature) -> bool {
        use crate::cpuid::edx1;
        use CpuidFeature as F;
        let edx = self.model.features_edx();
        match f {
            F::INTEL8086 | F::INTEL8086_ONLY | F::INTEL186 | F::INTEL286 | F::INTEL286_ONLY | F::INTEL386
            | F::INTEL386_ONLY | F::INTEL486 | F::FPU | F::FPU287 | F::FPU287XL_ONLY
            | F::FPU387 | F::FPU387SL_ONLY | F::CPUID | F::MULTIBYTENOP | F::PAUSE => true,
            F::TSC => edx & edx1::TSC != 0,
            F::MSR => edx & edx1::MSR != 0,
            F::CX8 => edx & edx1::CX8 != 0,
            F::CMOV => edx & edx1::CMOV != 0,
            F::MMX => edx & edx1::MMX != 0,
            F::FXSR => edx & edx1::FXSR != 0,
            F::SSE => edx & edx1::SSE != 0,
            F::SSE2 => edx & edx1::SSE2 != 0,
            F::SEP => self.model.sep,
            _ => false,
        }
    }
}

fn is_near(i: &Instruction) -> bool {
    matches!(
        i.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::Register
    ) || (i.op0_kind() == OpKind::Memory
        && !i.memory_size().is_packed()
        && i.memory_size().size() <= 4
        && i.memory_size() != iced_x86::MemorySize::SegPtr16)
}

fn is_xmm_op(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_xmm())
}

fn is_x87_or_simd(i: &Instruction) -> bool {
    is_fpu_opcode(i)
        || (0..i.op_count()).any(|n| {
            i.op_kind(n) == OpKind::Register && {
                let r = i.op_register(n);
                r.is_st() || r.is_mm() || r.is_xmm()
            }
        })
}

/// ESC opcodes D8-DF.
fn is_fpu_opcode(i: &Instruction) -> bool {
    let oc = i.op_code();
    oc.table() == iced_x86::OpCodeTableKind::Normal && (0xd8..=0xdf).contains(&oc.op_code())
}
