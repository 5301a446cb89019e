//! System calls without a callout: `INT n` in user code and `IRETD` back to it, inline.
//!
//! A guest system call is two privilege changes, `INT n` at CPL 3 and `IRETD` at CPL 0. As
//! callouts they cost a round trip through the monitor each. Both are inline when the runtime
//! has validated, in the block at [`Abi::fsys`] (`abi::fsys`), what they would do: for one
//! vector, its gate, the kernel's CS and SS0:ESP0 and their shadows; for IRETD, the user CS
//! and the user data selector it may return to and that selector's user-mode shadow. Anything
//! else (another vector, a return to kernel code, NT or TF or VM, data segments other than a
//! null selector and the user data selector, a block the runtime emptied) takes the callout,
//! as before. docs/translator.md, "System calls without a callout", gives the conditions the
//! runtime checks (bt/fastsys.rs) and why the guest cannot tell the difference.
//!
//! * **INT n** (user code): pushes SS, ESP, EFLAGS, CS, EIP on the gate's stack (host SS the
//!   shadow of SS0; a fault there is not the guest's: the recovery rebuilds ESP and has the
//!   runtime execute the INT), clears TF NT RF VM (and IF for an interrupt gate) in the
//!   virtual flags, switches the virtual CS and SS, the host DS ES FS to their kernel-mode
//!   shadows, `fsys::VCPL` to 0, and goes to the handler through the kernel lookup table.
//! * **IRETD** (kernel code): reads the frame (a fault: the runtime executes the IRETD), checks
//!   it, loads the virtual flags, CS and SS, the user-mode shadows of DS ES FS, SS:ESP, the
//!   arithmetic flags and DF, `fsys::VCPL` 3, and goes to the return address through the user
//!   lookup table, whose hit path checks for a pending interrupt first.

use iced_x86::{Code, Instruction, MemoryOperand, Register};

use super::{gs, mk, stack, Builder, CalloutKind, CalloutOp, CoEip, Done, Recovery, FALL, S2, S_A, S_C};
use crate::abi::{fsys, HOST_FLAGS, VIRT_MASK};
use crate::units::GuestInsn;

const EAX: Register = Register::EAX;
const ECX: Register = Register::ECX;
const ESP: Register = Register::ESP;

/// EFLAGS bits.
const TF: u32 = 0x100;
const IF: u32 = 0x200;
const NT: u32 = 0x4000;
const RF: u32 = 0x1_0000;
const VM: u32 = 0x2_0000;

impl Builder<'_> {
    fn f(&self, off: u32) -> u32 {
        self.abi.fsys + off
    }

    /// `lea ecx, [ecx - v]`: flag-free, ECX zero exactly when it held `v`.
    fn ecx_minus(&mut self, v: u32) {
        self.ins(mk(Instruction::with2(
            Code::Lea_r32_m,
            ECX,
            MemoryOperand::new(ECX, Register::None, 1, -(v as i64), 4, false, Register::None),
        )));
    }

    fn op_rm_imm(&mut self, code: Code, m: MemoryOperand, v: u32) {
        self.ins(mk(Instruction::with2(code, m, v)));
    }

    fn op_r_rm(&mut self, code: Code, r: Register, m: MemoryOperand) {
        self.ins(mk(Instruction::with2(code, r, m)));
    }

    /// LAHF/SETO into `fsys::SAVED_FLAGS` (EAX clobbered, flags kept).
    /// `mov sreg, gs:[from]` unless the register already holds that selector (a null FS
    /// across a system call: a null load costs ~120 cycles here). ECX and the flags are free.
    /// Exact: a register that holds the host selector holds its current descriptor (see
    /// `load_sreg` in mangle.rs).
    fn load_sreg_if_other(&mut self, sreg: Register, from: u32) {
        let skip = self.label();
        let s2 = self.slot(S2);
        self.ins(mk(Instruction::with2(Code::Mov_rm16_Sreg, gs(s2), sreg)));
        self.op_r_rm(Code::Mov_r16_rm16, Register::CX, gs(s2));
        self.op_r_rm(Code::Cmp_r16_rm16, Register::CX, gs(from));
        self.branch(Code::Je_rel8_32, skip);
        self.ins(mk(Instruction::with2(Code::Mov_Sreg_rm16, sreg, gs(from))));
        self.bind(skip);
    }

    fn save_flags(&mut self) {
        let s = self.f(fsys::SAVED_FLAGS);
        self.save_flags_lahf(s);
    }

    /// The lookup of the target in EAX in `table` (guest EAX and ECX in their slots).
    fn ibl_in(&mut self, table: u32) {
        let own = self.ibl_table;
        self.ibl_table = table;
        self.ibl();
        self.ibl_table = own;
    }
}

/// `INT n` in user code (32-bit code and stack): inline while `fsys::INT_VEC` is `n`, the
/// `Emulate` callout otherwise.
pub(super) fn fast_int(b: &mut Builder<'_>, gi: &GuestInsn, next: u32, vector: u8) -> Done {
    let a = b.abi;
    let (sa, sc) = (b.slot(S_A), b.slot(S_C));
    let slow = b.label();
    let fast = b.label();
    b.st32(sc, ECX);
    b.ld32(ECX, b.f(fsys::INT_VEC));
    b.ecx_minus(vector as u32);
    b.branch(Code::Jecxz_rel8_32, fast);
    b.ld32(ECX, sc);
    b.branch(Code::Jmp_rel32_32, slow);
    b.bind(fast);
    b.ld32(ECX, sc);
    // The frame, on the gate's stack. A fault: the user ESP back, and the runtime executes
    // the INT (the host SS in the exit record is not the guest's then; the runtime rebuilds
    // the guest's from its own state, unchanged).
    let saved_esp = b.f(fsys::SAVED_ESP);
    b.st32(saved_esp, ESP);
    b.op_r_rm(Code::Lss_r32_m1632, ESP, gs(b.f(fsys::INT_STACK)));
    let rec = Recovery {
        restore: [Some((ESP, saved_esp)), None],
        esp_adjust: 0,
        emulate: true,
    };
    b.ins_rec(mk(Instruction::with1(Code::Push_rm32, gs(a.vseg_of(Register::SS)))), rec);
    b.ins_rec(mk(Instruction::with1(Code::Push_rm32, gs(saved_esp))), rec);
    b.ins_rec(Instruction::with(Code::Pushfd), rec);
    b.ins_rec(mk(Instruction::with1(Code::Push_rm32, gs(a.vseg_of(Register::CS)))), rec);
    b.ins_rec(mk(Instruction::with1(Code::Pushd_imm32, next)), rec);
    // Nothing faults from here on. The pushed EFLAGS: the host's arithmetic flags and DF,
    // the virtual bits (what `Bt::eflags` computes at an exit).
    b.st32(sa, EAX);
    b.save_flags();
    b.op_r_rm(Code::Mov_r32_rm32, EAX, stack(8));
    b.ins(mk(Instruction::with2(Code::And_rm32_imm32, EAX, HOST_FLAGS)));
    b.ins(mk(Instruction::with2(Code::Or_rm32_imm8, EAX, 2u32)));
    b.ld32(ECX, a.vflags);
    b.ins(mk(Instruction::with2(Code::And_rm32_imm32, ECX, VIRT_MASK & !IF)));
    b.ins(mk(Instruction::with2(Code::Or_r32_rm32, EAX, ECX)));
    b.op_r_rm(Code::Movzx_r32_rm8, ECX, gs(a.vif));
    b.ins(mk(Instruction::with2(Code::And_rm32_imm8, ECX, 1u32)));
    b.ins(mk(Instruction::with2(Code::Shl_rm32_imm8, ECX, 9u32)));
    b.ins(mk(Instruction::with2(Code::Or_r32_rm32, EAX, ECX)));
    b.ins(mk(Instruction::with2(Code::Mov_rm32_r32, stack(8), EAX)));
    // The new virtual flags, selectors, privilege.
    b.op_rm_imm(Code::And_rm32_imm32, gs(a.vflags), !(TF | NT | RF | VM));
    b.op_r_rm(Code::Mov_r8_rm8, Register::AL, gs(b.f(fsys::INT_VIF)));
    b.ins(mk(Instruction::with2(Code::And_rm8_r8, gs(a.vif), Register::AL)));
    for (to, from) in [
        (a.vseg_of(Register::CS), fsys::INT_CS),
        (a.vseg_of(Register::SS), fsys::INT_SS),
        (a.cs_shadow, fsys::INT_CS_HOST),
    ] {
        b.ld32(ECX, b.f(from));
        b.st32(to, ECX);
    }
    b.st_imm32(b.f(fsys::VCPL), 0);
    b.op_rm_imm(Code::Add_rm32_imm8, gs(b.f(fsys::N_INT)), 1);
    for (sreg, from) in [(Register::DS, fsys::K_DS), (Register::ES, fsys::K_ES), (Register::FS, fsys::K_FS)] {
        b.load_sreg_if_other(sreg, b.f(from));
    }
    b.restore_flags_lahf(b.f(fsys::SAVED_FLAGS));
    b.ld32(EAX, b.f(fsys::INT_EIP));
    b.ibl_in(a.ibl_table);
    b.bind(slow);
    b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, CalloutKind::Interrupt as u32);
    FALL
}

/// `IRETD` in kernel code (32-bit code and stack): inline to user code while the runtime's
/// conditions hold (`fsys::RET_OK`) and the frame and the data segments are the ones it
/// validated; the `Emulate` callout otherwise.
pub(super) fn fast_iret(b: &mut Builder<'_>, gi: &GuestInsn, next: u32) -> Done {
    let a = b.abi;
    let (sa, sc) = (b.slot(S_A), b.slot(S_C));
    let slow = b.label();
    let undo = b.label();
    let fast = b.label();
    b.st32(sa, EAX);
    b.st32(sc, ECX);
    b.ld32(ECX, b.f(fsys::RET_OK));
    b.ecx_minus(1);
    b.branch(Code::Jecxz_rel8_32, fast);
    b.branch(Code::Jmp_rel32_32, slow);
    b.bind(fast);
    // The frame. A fault: EAX and ECX back, and the runtime executes the IRETD.
    let rec = Recovery {
        restore: [Some((EAX, sa)), Some((ECX, sc))],
        esp_adjust: 0,
        emulate: true,
    };
    for (k, slot) in [fsys::R_EIP, fsys::R_CS, fsys::R_FL, fsys::R_ESP, fsys::R_SS].into_iter().enumerate() {
        b.ins_rec(mk(Instruction::with2(Code::Mov_r32_rm32, ECX, stack(4 * k as i32))), rec);
        b.st32(b.f(slot), ECX);
    }
    // The checks (flags saved; restored on the way to the callout).
    b.save_flags();
    b.op_rm_imm(Code::Test_rm8_imm8, gs(a.vflags + 1), NT >> 8);
    b.branch(Code::Jne_rel32_32, undo);
    b.op_r_rm(Code::Mov_r32_rm32, ECX, gs(b.f(fsys::R_CS)));
    b.op_r_rm(Code::Cmp_r16_rm16, Register::CX, gs(b.f(fsys::RET_CS)));
    b.branch(Code::Jne_rel32_32, undo);
    b.op_r_rm(Code::Mov_r32_rm32, ECX, gs(b.f(fsys::R_SS)));
    b.op_r_rm(Code::Cmp_r16_rm16, Register::CX, gs(b.f(fsys::USEL)));
    b.branch(Code::Jne_rel32_32, undo);
    b.op_rm_imm(Code::Test_rm32_imm32, gs(b.f(fsys::R_FL)), VM | TF);
    b.branch(Code::Jne_rel32_32, undo);
    // DS, ES, FS: the user data selector (its user-mode shadow) or a null selector (a null
    // host selector); anything else would need the interpreter's checks.
    for (sreg, to) in [(Register::DS, fsys::U_DS), (Register::ES, fsys::U_ES), (Register::FS, fsys::U_FS)] {
        let store = b.label();
        b.ld32(ECX, a.vseg_of(sreg));
        b.ld32(EAX, b.f(fsys::USEL_HOST));
        b.op_r_rm(Code::Cmp_r32_rm32, ECX, gs(b.f(fsys::USEL)));
        b.branch(Code::Je_rel8_32, store);
        b.ins(mk(Instruction::with2(Code::Mov_r32_imm32, EAX, 3u32)));
        b.ins(mk(Instruction::with2(Code::Cmp_rm32_imm8, ECX, 3u32)));
        b.branch(Code::Ja_rel32_32, undo);
        b.bind(store);
        b.st32(b.f(to), EAX);
    }
    // Committed. The kernel-mode shadows of DS, ES, FS (for the next inline INT).
    for (sreg, to) in [(Register::DS, fsys::K_DS), (Register::ES, fsys::K_ES), (Register::FS, fsys::K_FS)] {
        b.ins(mk(Instruction::with2(Code::Mov_rm16_Sreg, gs(b.f(to)), sreg)));
    }
    // The virtual flags (at CPL 0 a 32-bit IRET loads all of them; VM and TF are 0 here).
    b.ld32(EAX, b.f(fsys::R_FL));
    b.ins(mk(Instruction::with2(Code::Mov_r32_rm32, ECX, EAX)));
    b.ins(mk(Instruction::with2(Code::Shr_rm32_imm8, ECX, 9u32)));
    b.ins(mk(Instruction::with2(Code::And_rm32_imm8, ECX, 1u32)));
    b.ins(mk(Instruction::with2(Code::Mov_rm8_r8, gs(a.vif), Register::CL)));
    b.ins(mk(Instruction::with2(Code::And_rm32_imm32, EAX, VIRT_MASK & !IF)));
    b.st32(a.vflags, EAX);
    for (to, from) in [(a.vseg_of(Register::CS), fsys::R_CS), (a.vseg_of(Register::SS), fsys::R_SS)] {
        b.op_r_rm(Code::Movzx_r32_rm16, ECX, gs(b.f(from)));
        b.st32(to, ECX);
    }
    b.st_imm32(b.f(fsys::VCPL), 3);
    b.op_rm_imm(Code::Add_rm32_imm8, gs(b.f(fsys::N_IRET)), 1);
    for (sreg, from) in [(Register::DS, fsys::U_DS), (Register::ES, fsys::U_ES), (Register::FS, fsys::U_FS)] {
        b.load_sreg_if_other(sreg, b.f(from));
    }
    b.ld32(ECX, b.f(fsys::R_ESP));
    b.st32(b.f(fsys::RET_STACK), ECX);
    b.op_r_rm(Code::Lss_r32_m1632, ESP, gs(b.f(fsys::RET_STACK)));
    b.flags_from_slot(b.f(fsys::R_FL));
    b.ld32(EAX, b.f(fsys::R_EIP));
    b.ibl_in(a.ibl_user_table);
    // Not inline: the guest's flags, EAX and ECX back, the callout.
    b.bind(undo);
    b.restore_flags_lahf(b.f(fsys::SAVED_FLAGS));
    b.bind(slow);
    b.ld32(EAX, sa);
    b.ld32(ECX, sc);
    b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, CalloutKind::Iret as u32);
    FALL
}
