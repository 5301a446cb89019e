//! Every rewrite rule of the translator, in one place (DynamoRIO's "mangling").
//!
//! [`mangle`] turns a [`Unit`] into a [`Seq`]: iced-x86 `Instruction`s with symbolic labels,
//! the guest EIP and the recovery rule of each (for precise exceptions), and the fragment's
//! exits. `emit.rs` encodes it. The rules (docs/translator.md has the sequences):
//!
//! * **Pending-interrupt checks**: at the fragment entry (flag-free: `movzx ecx, word
//!   gs:[vif]`, `lea ecx, [ecx-101h]`, `jecxz`; only the runtime enters there), in every lookup
//!   (before the table read), and as *check sites* (`jmp dword gs:[check slot]`: to the next instruction while
//!   no interrupt is pending, to a stub with the full check while the runtime has the slots
//!   armed) after POPF and after the instruction that follows STI; backward direct exits are
//!   *checked exits* through a slot. Forward exits enter their targets past the entry check
//!   (docs/translator.md has the argument).
//! * **IDENT**: the instruction is copied (re-encoded as 32-bit code).
//! * **Direct branches** (JMP, Jcc, CALL, LOOPcc, JCXZ): `jmp`/`jcc rel32` to an exit stub that
//!   calls out with `Exit`; chaining patches the rel32 to the target's fragment. CALL first
//!   pushes the *guest* return address.
//! * **Returns and indirect branches**: the target is looked up in the table on the vCPU page;
//!   a hit jumps to the fragment (`jmp gs:[slot]`), a miss calls out with `IndirectMiss`.
//! * **Inline** CLI/STI, PUSHF/POPF, reads of segment selectors, CRn and DRn, SGDT/SIDT/SLDT/
//!   STR/SMSW, RDTSC, CPUID (see [`InlineKind`]); IN/OUT to the machine's null ports
//!   (`mangle/io.rs`).
//! * **Callouts** for everything heavy: `Emulate` at the guest EIP, then the fragment goes on;
//!   also for an IDENT instruction the runtime hinted (`Config::hints`: it kept faulting).
//!
//! Invariants: emitted code never changes the guest's arithmetic flags except where the guest
//! instruction does; scratch registers are saved in vCPU slots and every emitted instruction
//! that can fault carries a [`Recovery`] that rebuilds the guest state of the guest instruction
//! it belongs to; the only accesses through GS are the translator's own.

use iced_x86::{
    Code, ConditionCode, Encoder, Instruction, MemoryOperand, Mnemonic, OpKind, Register,
};

mod syscall;
pub mod io;
mod user_gs;

use crate::abi::{Abi, CalloutOp, VIRT_MASK};
use crate::classify::{classify, CalloutKind, InlineKind, Translation};
use crate::units::{GuestInsn, Unit, UnitEnd};
use crate::Config;

/// A symbolic position in a [`Seq`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label(pub u32);

/// How to rebuild the guest state when the emitted instruction faults: reload these registers
/// from these vCPU offsets and add `esp_adjust` to ESP; the guest EIP is the item's
/// `guest_eip` (the guest instruction did not complete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Recovery {
    /// Registers to reload from the vCPU region (32-bit registers, GS offsets).
    pub restore: [Option<(Register, u32)>; 2],
    /// Added to ESP.
    pub esp_adjust: i32,
    /// The fault is not the guest's: after the registers are rebuilt, the runtime executes the
    /// guest instruction itself (the interpreter), whatever the fault was. For inline
    /// sequences that touch memory the guest instruction would touch with other rights (the
    /// inline INT writes the kernel stack from user code): their faults say nothing the
    /// instruction's own execution would not find again.
    pub emulate: bool,
}

impl Recovery {
    /// Nothing to undo.
    pub const NONE: Recovery = Recovery {
        restore: [None, None],
        esp_adjust: 0,
        emulate: false,
    };

    fn reg(r: Register, slot: u32) -> Recovery {
        Recovery {
            restore: [Some((r, slot)), None],
            esp_adjust: 0,
            emulate: false,
        }
    }
}

/// One emitted instruction.
#[derive(Clone, Debug)]
pub struct Item {
    /// The instruction (branch targets are set by `emit` from `target`).
    pub instr: Instruction,
    /// Branch target inside the sequence.
    pub target: Option<Label>,
    /// The guest instruction it belongs to.
    pub guest_eip: u32,
    /// State recovery if it faults.
    pub recovery: Recovery,
    /// This is the patchable branch of exit number n.
    pub exit: Option<u32>,
    /// The guest instruction is the one after STI (its interrupt shadow).
    pub shadow: bool,
}

/// Why a fragment is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Guest EIP of the target.
    pub target_eip: u32,
    /// The stub (its first instruction).
    pub stub: Label,
    /// A *checked* exit (a backward branch, or one that must check for interrupts at its
    /// target): `jmp dword gs:[check slot]` instead of a patchable rel32; chaining writes the
    /// slot's continuation. The check slot number.
    pub slot: Option<u32>,
}

/// A pending-interrupt check site: `jmp dword gs:[Abi::check_slot(slot)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// The check slot.
    pub slot: u32,
    /// Where it continues while no interrupt is pending (for a checked exit: its exit stub,
    /// until chaining changes the slot's continuation).
    pub cont: Label,
    /// Its check stub (the full check, then the continuation).
    pub stub: Label,
    /// Where IF may just have become 1 (after POPF, after the STI shadow): armed whenever an
    /// interrupt is pending. The others (backward exits) need arming only while the virtual
    /// IF is set too: IF can only become 1 through an enabling site or a callout.
    pub enable: bool,
}

/// A mangled unit, ready to encode.
#[derive(Clone, Debug, Default)]
pub struct Seq {
    /// The instructions.
    pub items: Vec<Item>,
    /// Label id to the index of the item it is bound to.
    pub labels: Vec<Option<usize>>,
    /// Exits, by number.
    pub exits: Vec<Exit>,
    /// Where execution enters the fragment (the runtime's entries: through the
    /// pending-interrupt check).
    pub entry: Option<Label>,
    /// The first guest instruction, past the entry's check: where chained exits and lookup
    /// hits enter (they check elsewhere, see [`mangle`]).
    pub body: Option<Label>,
    /// The check sites, by slot.
    pub sites: Vec<Site>,
    /// Guest EIP of the unit.
    pub start_eip: u32,
    /// Guest EIPs of the `Emulate` callouts, in emission order (the runtime keeps their
    /// decoded instructions, so that a callout does not decode again).
    pub emulate_eips: Vec<u32>,
}

// Scratch slot numbers.
const S0: u32 = 0;
const S1: u32 = 1;
const S2: u32 = 2;
const S_CHK: u32 = 3;
const S_A: u32 = 4;
const S_C: u32 = 5;

enum CoEip {
    Imm(u32),
    /// Already stored in `callout_eip` (or `callout_next`).
    Preset,
}

/// Where a check stub goes on.
#[derive(Clone, Copy)]
enum Then {
    /// To a label in the fragment.
    Label(Label),
    /// Through a check slot's continuation (a checked exit).
    Cont(u32),
}

/// Out-of-line code emitted after the body.
type Deferred<'a> = Box<dyn FnOnce(&mut Builder<'a>) + 'a>;

/// Builder of a [`Seq`]: the rules below use it.
pub struct Builder<'a> {
    abi: &'a Abi,
    /// The lookup table this fragment's indirect branches use (by the unit's CPL).
    ibl_table: u32,
    seq: Seq,
    pending: Vec<Label>,
    eip: u32,
    rec: Recovery,
    deferred: Vec<(Label, Deferred<'a>)>,
    /// The first check slot of this fragment.
    slot_base: u32,
    /// Exits made now are checked exits (the instruction in the STI shadow).
    force_checked: bool,
    /// Guest EIPs of instructions in an STI shadow (their items are marked `shadow`).
    shadow_eips: Vec<u32>,
    /// The branch being mangled needs a pending-interrupt check before it (at this EIP, its
    /// own): every exit is checked, with its stub checking at this EIP instead of the target.
    check_at: Option<u32>,
    /// The instructions a conditional branch of the unit may reach without leaving the
    /// fragment: guest EIP and the label at the instruction's first item (superblocks).
    inside: Vec<(u32, Label)>,
}

fn mk(r: Result<Instruction, iced_x86::IcedError>) -> Instruction {
    r.expect("static instruction form")
}

fn gs(off: u32) -> MemoryOperand {
    MemoryOperand::new(
        Register::None,
        Register::None,
        1,
        off as i64,
        4,
        false,
        Register::GS,
    )
}

/// A byte at gs:[off].
fn gs8(off: u32) -> MemoryOperand {
    gs(off)
}

fn gs_base(base: Register, off: u32) -> MemoryOperand {
    MemoryOperand::new(base, Register::None, 1, off as i64, 4, false, Register::GS)
}

fn stack(disp: i32) -> MemoryOperand {
    MemoryOperand::new(
        Register::ESP,
        Register::None,
        1,
        disp as i64,
        if disp == 0 { 0 } else { 1 },
        false,
        Register::None,
    )
}

fn reg16(r: Register) -> Register {
    match r {
        Register::EAX => Register::AX,
        Register::ECX => Register::CX,
        Register::EDX => Register::DX,
        Register::EBX => Register::BX,
        _ => unreachable!(),
    }
}

fn reg8(r: Register) -> Register {
    match r {
        Register::EAX => Register::AL,
        Register::ECX => Register::CL,
        Register::EDX => Register::DL,
        Register::EBX => Register::BL,
        _ => unreachable!(),
    }
}

/// A register among EAX ECX EDX EBX that the instruction's memory operand does not use.
fn free_reg(i: &Instruction) -> Register {
    let used = [
        i.memory_base().full_register32(),
        i.memory_index().full_register32(),
    ];
    [Register::EAX, Register::ECX, Register::EDX, Register::EBX]
        .into_iter()
        .find(|r| !used.contains(r))
        .expect("a free register")
}

impl<'a> Builder<'a> {
    fn new(abi: &'a Abi, start_eip: u32) -> Self {
        Builder {
            abi,
            ibl_table: abi.ibl_table,
            seq: Seq {
                start_eip,
                ..Seq::default()
            },
            pending: Vec::new(),
            eip: start_eip,
            rec: Recovery::NONE,
            deferred: Vec::new(),
            slot_base: 0,
            force_checked: false,
            shadow_eips: Vec::new(),
            check_at: None,
            inside: Vec::new(),
        }
    }

    fn label(&mut self) -> Label {
        self.seq.labels.push(None);
        Label(self.seq.labels.len() as u32 - 1)
    }

    fn bind(&mut self, l: Label) {
        self.pending.push(l);
    }

    fn push_item(&mut self, instr: Instruction, target: Option<Label>, exit: Option<u32>) {
        let idx = self.seq.items.len();
        for l in self.pending.drain(..) {
            self.seq.labels[l.0 as usize] = Some(idx);
        }
        self.seq.items.push(Item {
            instr,
            target,
            guest_eip: self.eip,
            recovery: self.rec,
            exit,
            shadow: self.shadow_eips.contains(&self.eip),
        });
    }

    fn ins(&mut self, i: Instruction) {
        self.push_item(i, None, None);
    }

    fn ins_rec(&mut self, i: Instruction, rec: Recovery) {
        let saved = self.rec;
        self.rec = rec;
        self.ins(i);
        self.rec = saved;
    }

    fn branch(&mut self, code: Code, l: Label) {
        let i = mk(Instruction::with_branch(code, 0));
        self.push_item(i, Some(l), None);
    }

    /// Out-of-line code placed after the body (stubs), emitted by `f` at `l`.
    fn defer(&mut self, l: Label, f: impl FnOnce(&mut Builder<'a>) + 'a) {
        self.deferred.push((l, Box::new(f)));
    }

    /// The out-of-line way of an inline rule that found it cannot finish the guest
    /// instruction at `eip`: at `slow`, ECX back from slot `sc`, the instruction's `Emulate`
    /// callout (of `kind`), then on at `done`.
    fn defer_emulate(&mut self, slow: Label, eip: u32, next: u32, kind: CalloutKind, sc: u32, done: Label) {
        self.defer(slow, move |b| {
            b.eip = eip;
            b.ld32(Register::ECX, sc);
            b.callout(CalloutOp::Emulate, CoEip::Imm(eip), next, kind as u32);
            b.branch(Code::Jmp_rel32_32, done);
        });
    }

    // --- small instruction helpers ---
    fn st32(&mut self, off: u32, r: Register) {
        self.ins(mk(Instruction::with2(Code::Mov_rm32_r32, gs(off), r)));
    }
    fn ld32(&mut self, r: Register, off: u32) {
        self.ins(mk(Instruction::with2(Code::Mov_r32_rm32, r, gs(off))));
    }
    fn st_imm32(&mut self, off: u32, v: u32) {
        self.ins(mk(Instruction::with2(Code::Mov_rm32_imm32, gs(off), v)));
    }
    fn slot(&self, n: u32) -> u32 {
        self.abi.slot(n)
    }

    /// The callout sequence: switch to the callout stack, store the operation, far call the
    /// gate, reload the guest's SS:ESP.
    fn callout(&mut self, op: CalloutOp, eip: CoEip, next: u32, arg: u32) {
        self.callout_full(op, eip, CoEip::Imm(next), arg);
    }

    fn callout_full(&mut self, op: CalloutOp, eip: CoEip, next: CoEip, arg: u32) {
        let a = self.abi;
        self.st32(a.callout_esp, Register::ESP);
        self.ins(mk(Instruction::with2(
            Code::Mov_rm16_Sreg,
            gs(a.callout_ss),
            Register::SS,
        )));
        self.ins(mk(Instruction::with2(
            Code::Lss_r32_m1632,
            Register::ESP,
            gs(a.callout_stack),
        )));
        self.st_imm32(a.callout_op, op as u32);
        if let CoEip::Imm(e) = eip {
            self.st_imm32(a.callout_eip, e);
            if op == CalloutOp::Emulate {
                self.seq.emulate_eips.push(e);
            }
        }
        if let CoEip::Imm(n) = next {
            self.st_imm32(a.callout_next, n);
        }
        self.st_imm32(a.callout_arg, arg);
        self.ins(mk(Instruction::with1(Code::Call_m1632, gs(a.gate))));
        self.ins(mk(Instruction::with2(
            Code::Lss_r32_m1632,
            Register::ESP,
            gs(a.callout_esp),
        )));
    }

    fn ud2(&mut self) {
        self.ins(Instruction::with(Code::Ud2));
    }

    /// An exit to guest `target` from the guest instruction at `from` (taken if `cc` holds;
    /// always without). A forward exit (`target > from`) is a patchable `jmp rel32` (or
    /// `jcc rel32`) to a stub; a backward one, or any exit while `force_checked`, is a
    /// *checked* exit: `jmp dword gs:[check slot]` (behind the inverted condition as a short
    /// branch), whose slot holds the stub, or once chained the target, or while an interrupt
    /// is pending a check stub at the target EIP.
    fn exit(&mut self, cc: Option<ConditionCode>, target: u32, from: u32) {
        let stub = self.label();
        let n = self.seq.exits.len() as u32;
        if self.force_checked || self.check_at.is_some() || target <= from {
            // The check is at the target, or before the branch (which changes nothing but
            // EIP: the state there is the branch's own, whichever way it went).
            let at = self.check_at.unwrap_or(target);
            let slot = self.slot_base + self.seq.sites.len() as u32;
            let k = self.label();
            self.seq.sites.push(Site {
                slot,
                cont: stub,
                stub: k,
                enable: self.force_checked || self.check_at.is_some(),
            });
            self.seq.exits.push(Exit {
                target_eip: target,
                stub,
                slot: Some(slot),
            });
            let skip = cc.map(|cc| {
                let skip = self.label();
                self.branch(cond_short(negate(cc)), skip);
                skip
            });
            let jmp = mk(Instruction::with1(
                Code::Jmp_rm32,
                gs(self.abi.check_slot(slot)),
            ));
            self.ins(jmp);
            if let Some(skip) = skip {
                self.bind(skip);
            }
            let at_target = self.check_at.is_none();
            self.defer(k, move |b| {
                b.eip = at;
                if at_target {
                    // Pending: leave through the exit stub (the `Exit` callout to the target:
                    // the run loop then takes the interrupt there), no callout of its own.
                    b.short_check(Then::Cont(slot), stub);
                } else {
                    b.full_check(at, Then::Cont(slot));
                }
            });
        } else {
            self.seq.exits.push(Exit {
                target_eip: target,
                stub,
                slot: None,
            });
            let code = cc.map_or(Code::Jmp_rel32_32, cond_near);
            let i = mk(Instruction::with_branch(code, 0));
            self.push_item(i, Some(stub), Some(n));
        }
        self.defer(stub, move |b| {
            b.eip = target;
            b.callout(CalloutOp::Exit, CoEip::Imm(target), target, n);
            b.ud2();
        });
    }

    /// The flag-free pending-interrupt test (ECX clobbered): `movzx ecx, word gs:[vif]`
    /// (`vif` and `irq` as one word), `lea ecx, [ecx-101h]`, `jecxz to`: jumps when the virtual
    /// IF is set and an interrupt is pending.
    fn jump_if_irq(&mut self, to: Label) {
        let a = self.abi;
        self.ins(mk(Instruction::with2(
            Code::Movzx_r32_rm16,
            Register::ECX,
            gs(a.vif),
        )));
        self.ins(mk(Instruction::with2(
            Code::Lea_r32_m,
            Register::ECX,
            MemoryOperand::new(
                Register::ECX,
                Register::None,
                1,
                -0x101,
                4,
                false,
                Register::None,
            ),
        )));
        self.branch(Code::Jecxz_rel8_32, to);
    }

    /// The pending-interrupt check at the fragment entry: a trampoline to the stub placed just
    /// before the entry point, so that the common path has no taken branch.
    fn entry_check(&mut self, eip: u32, entry: Label) {
        self.eip = eip;
        let chk = self.slot(S_CHK);
        let t = self.label();
        let go = self.label();
        let stub = self.label();
        self.bind(t);
        self.branch(Code::Jmp_rel32_32, stub);
        self.bind(entry);
        self.seq.entry = Some(entry);
        self.st32(chk, Register::ECX);
        self.jump_if_irq(t);
        self.ld32(Register::ECX, chk);
        self.bind(go);
        self.seq.body = Some(go);
        self.defer(stub, move |b| {
            b.eip = eip;
            b.ld32(Register::ECX, chk);
            b.callout(CalloutOp::PendingIrq, CoEip::Imm(eip), eip, 0);
            b.branch(Code::Jmp_rel32_32, go);
        });
    }

    /// A pending-interrupt check site at guest `eip` (guest state exact there):
    /// `jmp dword gs:[check slot]`, a jump to the next instruction while no interrupt is
    /// pending; armed, to a stub with the full check.
    fn check_site(&mut self, eip: u32) {
        let saved = self.eip;
        self.eip = eip;
        let slot = self.slot_base + self.seq.sites.len() as u32;
        let cont = self.label();
        let stub = self.label();
        self.seq.sites.push(Site {
            slot,
            cont,
            stub,
            enable: true,
        });
        self.ins(mk(Instruction::with1(
            Code::Jmp_rm32,
            gs(self.abi.check_slot(slot)),
        )));
        self.bind(cont);
        self.defer(stub, move |b| {
            b.eip = eip;
            b.full_check(eip, Then::Label(cont));
        });
        self.eip = saved;
    }

    /// The full check (flag-free, ECX through a slot): the `PendingIrq` callout at `eip` if
    /// `irq` and `vif` are both set; then on to `then`.
    fn full_check(&mut self, eip: u32, then: Then) {
        let chk = self.slot(S_CHK);
        let irq = self.label();
        self.st32(chk, Register::ECX);
        self.jump_if_irq(irq);
        self.ld32(Register::ECX, chk);
        self.go_on(then);
        self.bind(irq);
        self.ld32(Register::ECX, chk);
        self.callout(CalloutOp::PendingIrq, CoEip::Imm(eip), eip, 0);
        self.go_on(then);
    }

    /// The check of a checked exit's stub at its target: on to `then`, or, pending and
    /// enabled, to the exit stub `exit` (guest ECX restored).
    fn short_check(&mut self, then: Then, exit: Label) {
        let chk = self.slot(S_CHK);
        let irq = self.label();
        self.st32(chk, Register::ECX);
        self.jump_if_irq(irq);
        self.ld32(Register::ECX, chk);
        self.go_on(then);
        self.bind(irq);
        self.ld32(Register::ECX, chk);
        self.branch(Code::Jmp_rel32_32, exit);
    }

    fn go_on(&mut self, then: Then) {
        match then {
            Then::Label(l) => self.branch(Code::Jmp_rel32_32, l),
            Then::Cont(slot) => self.ins(mk(Instruction::with1(
                Code::Jmp_rm32,
                gs(self.abi.check_cont(slot)),
            ))),
        }
    }

    /// Restores CF PF AF ZF SF OF and DF from the EFLAGS image in slot `s` (clobbers EAX).
    fn flags_from_slot(&mut self, s: u32) {
        let l_std = self.label();
        let l_df = self.label();
        self.ld32(Register::EAX, s);
        self.ins(mk(Instruction::with2(
            Code::Bt_rm32_imm8,
            Register::EAX,
            10u32,
        )));
        self.branch(Code::Jb_rel8_32, l_std);
        self.ins(Instruction::with(Code::Cld));
        self.branch(Code::Jmp_rel8_32, l_df);
        self.bind(l_std);
        self.ins(Instruction::with(Code::Std));
        self.bind(l_df);
        self.ins(mk(Instruction::with2(
            Code::Shr_rm32_imm8,
            Register::EAX,
            11u32,
        )));
        self.ins(mk(Instruction::with2(
            Code::And_rm32_imm8,
            Register::EAX,
            1u32,
        )));
        self.ins(mk(Instruction::with2(
            Code::Mov_r8_rm8,
            Register::AH,
            gs(s),
        )));
        self.ins(mk(Instruction::with2(
            Code::Add_rm8_imm8,
            Register::AL,
            0x7fu32,
        )));
        self.ins(Instruction::with(Code::Sahf));
    }

    /// Saves the arithmetic flags into slot `s` (LAHF/SETO; clobbers EAX).
    fn save_flags_lahf(&mut self, s: u32) {
        self.ins(Instruction::with(Code::Lahf));
        self.ins(mk(Instruction::with1(Code::Seto_rm8, Register::AL)));
        self.st32(s, Register::EAX);
    }

    /// Restores what [`Self::save_flags_lahf`] saved (clobbers EAX).
    fn restore_flags_lahf(&mut self, s: u32) {
        self.ld32(Register::EAX, s);
        self.ins(mk(Instruction::with2(
            Code::Add_rm8_imm8,
            Register::AL,
            0x7fu32,
        )));
        self.ins(Instruction::with(Code::Sahf));
    }

    /// The indirect-branch lookup; the guest target is in EAX, the guest's EAX and ECX are in
    /// slots S_A and S_C. Never falls through.
    /// The lookup of the target in EAX (guest EAX and ECX saved in their slots), flag-free:
    /// the entry's tag is the negated guest EIP, so `tag + target` is 0 on a hit. A hit
    /// restores EAX and ECX and jumps to the fragment through a slot; a miss makes the
    /// `IndirectMiss` callout with the target. The hit path reads the entry twice (tag, then
    /// fragment) instead of keeping its address in a slot: two loads from the same line are
    /// cheaper than a store and a reload.
    fn ibl(&mut self) {
        let a = self.abi;
        let table = self.ibl_table;
        let (sa, sc, sj) = (self.slot(S_A), self.slot(S_C), self.slot(S2));
        let entry = |field: u32| {
            MemoryOperand::new(
                Register::None,
                Register::ECX,
                8,
                (table + field) as i64,
                4,
                false,
                Register::GS,
            )
        };
        let idx = if a.ibl_bits == 8 {
            (Code::Movzx_r32_rm8, Register::AL)
        } else {
            (Code::Movzx_r32_rm16, Register::AX)
        };
        // The target's pending-interrupt check (ECX is free; table entries lead past their
        // fragments' entry checks): pending and enabled, the miss path's callout, after which
        // the run loop takes the interrupt at the target.
        let miss = self.label();
        self.jump_if_irq(miss);
        self.ins(mk(Instruction::with2(idx.0, Register::ECX, idx.1)));
        self.ins(mk(Instruction::with2(
            Code::Mov_r32_rm32,
            Register::ECX,
            entry(0),
        )));
        self.ins(mk(Instruction::with2(
            Code::Lea_r32_m,
            Register::ECX,
            MemoryOperand::new(Register::ECX, Register::EAX, 1, 0, 0, false, Register::None),
        )));
        let hit = self.label();
        self.branch(Code::Jecxz_rel8_32, hit);
        // Miss: EAX still holds the target.
        self.bind(miss);
        self.st32(a.callout_eip, Register::EAX);
        self.ld32(Register::EAX, sa);
        self.ld32(Register::ECX, sc);
        self.callout(CalloutOp::IndirectMiss, CoEip::Preset, 0, 0);
        self.ud2();
        // Hit.
        self.bind(hit);
        self.ins(mk(Instruction::with2(idx.0, Register::ECX, idx.1)));
        self.ins(mk(Instruction::with2(
            Code::Mov_r32_rm32,
            Register::ECX,
            entry(4),
        )));
        self.st32(sj, Register::ECX);
        self.ld32(Register::EAX, sa);
        self.ld32(Register::ECX, sc);
        self.ins(mk(Instruction::with1(Code::Jmp_rm32, gs(sj))));
    }

    /// The shared routine that empty lookup-table entries point at (see
    /// `emit::ibl_miss_routine`). An empty entry's tag is 0, so the only target that "hits" it
    /// is 0: the routine makes the `IndirectMiss` callout for target 0 (EAX and ECX are the
    /// guest's again, as after every hit).
    pub fn miss_routine(abi: &'a Abi) -> Seq {
        let mut b = Builder::new(abi, 0);
        let entry = b.label();
        b.bind(entry);
        b.seq.entry = Some(entry);
        b.callout(CalloutOp::IndirectMiss, CoEip::Imm(0), 0, 0);
        b.ud2();
        b.finish()
    }

    fn finish(mut self) -> Seq {
        while !self.deferred.is_empty() {
            let d = std::mem::take(&mut self.deferred);
            for (l, f) in d {
                self.bind(l);
                f(&mut self);
            }
        }
        assert!(self.pending.is_empty(), "label bound past the end");
        self.seq
    }
}

/// Mangles a decoded unit.
pub fn mangle(unit: &Unit, cfg: &Config) -> Seq {
    let abi = &cfg.abi;
    let mut b = Builder::new(abi, unit.start);
    b.ibl_table = abi.ibl_table_for(unit.mode.cpl);
    b.slot_base = cfg.slot_base;
    let entry = b.label();
    b.entry_check(unit.start, entry);
    let mut check_after: Option<usize> = None;
    let mut check_at_branch: Option<u32> = None;
    let mut falls_through = true;
    // Every instruction but the first (whose way in is the entry) and those in an STI shadow
    // (reached from elsewhere they would not be) is a possible target of an internal branch.
    let labels: Vec<Option<Label>> = (0..unit.insns.len())
        .map(|k| {
            let after_sti = k > 0 && unit.insns[k - 1].instr.mnemonic() == Mnemonic::Sti;
            (k > 0 && !after_sti).then(|| b.label())
        })
        .collect();
    b.inside = unit
        .insns
        .iter()
        .zip(&labels)
        .filter_map(|(g, l)| l.map(|l| (g.eip, l)))
        .collect();
    let last = unit.insns.len().wrapping_sub(1);
    for (k, gi) in unit.insns.iter().enumerate() {
        if let Some(l) = labels[k] {
            b.bind(l);
        }
        b.eip = gi.eip;
        b.rec = Recovery::NONE;
        b.check_at = check_at_branch.take();
        // The instruction in the STI shadow: if it leaves the fragment, the check is at the
        // target (its exits are checked exits; a lookup hit checks anyway).
        let shadow = check_after == Some(k);
        b.force_checked = shadow;
        if shadow {
            b.shadow_eips.push(gi.eip);
        }
        let r = mangle_insn(&mut b, gi, unit, cfg, k == last);
        b.force_checked = false;
        b.check_at = None;
        falls_through = r.falls_through;
        if r.check_after_next {
            check_after = Some(k + 1);
        }
        if shadow {
            check_after = None;
        }
        // Also at the unit's end: a chained fall-through exit enters past the next
        // fragment's entry check.
        if (r.check_after || shadow) && falls_through {
            // Followed by a direct JMP/Jcc: its exits check (before it), one indirect jump
            // fewer on the way (a Jcc the unit goes on past checks on its not-taken way too).
            let branch = unit.insns.get(k + 1).is_some_and(|n| {
                let c = n.instr.code();
                c.is_jcc_short_or_near() || c.is_jmp_short_or_near()
            });
            if branch {
                check_at_branch = Some(gi.next_eip());
            } else {
                b.check_site(gi.next_eip());
            }
        }
    }
    b.rec = Recovery::NONE;
    match unit.end {
        UnitEnd::Invalid { eip } | UnitEnd::FetchFault { eip } => {
            b.eip = eip;
            let op = if matches!(unit.end, UnitEnd::Invalid { .. }) {
                CalloutOp::Invalid
            } else {
                CalloutOp::FetchFault
            };
            b.callout(op, CoEip::Imm(eip), 0, 0);
            b.ud2();
        }
        UnitEnd::Limit { next } => {
            let from = unit.insns.last().map_or(next, |l| l.eip);
            b.eip = next;
            b.exit(None, next, from);
        }
        UnitEnd::Branch => {
            if falls_through {
                let last = unit
                    .insns
                    .last()
                    .expect("a branch-ended unit has instructions");
                b.eip = last.next_eip();
                b.exit(
                    None,
                    last.next_eip() & if unit.mode.code32 { u32::MAX } else { 0xffff },
                    last.eip,
                );
            }
        }
    }
    b.finish()
}

struct Done {
    falls_through: bool,
    /// Pending-interrupt check right after this instruction (POPF).
    check_after: bool,
    /// Pending-interrupt check after the next instruction (STI).
    check_after_next: bool,
}

const FALL: Done = Done {
    falls_through: true,
    check_after: false,
    check_after_next: false,
};
const STOP: Done = Done {
    falls_through: false,
    check_after: false,
    check_after_next: false,
};

fn encodable(i: &Instruction) -> bool {
    Encoder::new(32).encode(i, 0).is_ok()
}

fn mangle_insn(b: &mut Builder<'_>, gi: &GuestInsn, unit: &Unit, cfg: &Config, last: bool) -> Done {
    let i = &gi.instr;
    let model = match (&cfg.user_model, unit.mode.cpl) {
        (Some(m), 3) => m,
        _ => &cfg.model,
    };
    let c = classify(i, unit.mode, model);
    let next = gi.next_eip() & if unit.mode.code32 { u32::MAX } else { 0xffff };
    if unit.mode.user_gs && crate::classify::uses_reserved_segment(i) {
        // User code's GS operands through the guest GS base (mangle/user_gs.rs).
        if let Some(done) = user_gs::user_gs(b, gi, unit, cfg, next) {
            return done;
        }
    }
    let emulate = |b: &mut Builder<'_>, kind: CalloutKind| {
        b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, kind as u32);
        FALL
    };
    let stack32 = unit.mode.stack32;
    match c.translation {
        Translation::Ident if cfg.hints.contains(unit.cs_base.wrapping_add(gi.eip), unit.mode) => {
            // Adaptive retranslation: it kept faulting as a copy (crate::hints).
            emulate(b, CalloutKind::Adaptive)
        }
        Translation::Ident => {
            let mut copy = *i;
            copy.set_ip(0);
            if !encodable(&copy) {
                return emulate(b, CalloutKind::NotInModel);
            }
            b.ins(copy);
            FALL
        }
        Translation::Callout(CalloutKind::Interrupt)
            if i.code() == Code::Int_imm8 && unit.mode.cpl == 3 && unit.mode.code32 && stack32 =>
        {
            // System calls without a callout (mangle/syscall.rs).
            syscall::fast_int(b, gi, next, i.immediate8())
        }
        Translation::Callout(CalloutKind::Iret)
            if i.code() == Code::Iretd && unit.mode.cpl == 0 && unit.mode.code32 && stack32 =>
        {
            syscall::fast_iret(b, gi, next)
        }
        Translation::Callout(k) => emulate(b, k),
        Translation::Relink => relink(b, gi, next, last),
        Translation::Lookup => {
            if i.mnemonic() == Mnemonic::Ret && !stack32 {
                return emulate(b, CalloutKind::Stack16);
            }
            lookup(b, gi, next);
            STOP
        }
        Translation::Inline(k) => {
            let needs_stack32 = matches!(k, InlineKind::Pushf | InlineKind::Popf)
                || (k == InlineKind::LoadSreg && i.mnemonic() == Mnemonic::Pop);
            if needs_stack32 && !stack32 {
                return emulate(b, CalloutKind::Stack16);
            }
            inline(b, gi, k, next, cfg)
        }
    }
}

fn cond_near(cc: ConditionCode) -> Code {
    use ConditionCode as C;
    match cc {
        C::o => Code::Jo_rel32_32,
        C::no => Code::Jno_rel32_32,
        C::b => Code::Jb_rel32_32,
        C::ae => Code::Jae_rel32_32,
        C::e => Code::Je_rel32_32,
        C::ne => Code::Jne_rel32_32,
        C::be => Code::Jbe_rel32_32,
        C::a => Code::Ja_rel32_32,
        C::s => Code::Js_rel32_32,
        C::ns => Code::Jns_rel32_32,
        C::p => Code::Jp_rel32_32,
        C::np => Code::Jnp_rel32_32,
        C::l => Code::Jl_rel32_32,
        C::ge => Code::Jge_rel32_32,
        C::le => Code::Jle_rel32_32,
        C::g => Code::Jg_rel32_32,
        C::None => unreachable!(),
    }
}

/// The short (rel8) form of a conditional branch.
fn cond_short(cc: ConditionCode) -> Code {
    use ConditionCode as C;
    match cc {
        C::o => Code::Jo_rel8_32,
        C::no => Code::Jno_rel8_32,
        C::b => Code::Jb_rel8_32,
        C::ae => Code::Jae_rel8_32,
        C::e => Code::Je_rel8_32,
        C::ne => Code::Jne_rel8_32,
        C::be => Code::Jbe_rel8_32,
        C::a => Code::Ja_rel8_32,
        C::s => Code::Js_rel8_32,
        C::ns => Code::Jns_rel8_32,
        C::p => Code::Jp_rel8_32,
        C::np => Code::Jnp_rel8_32,
        C::l => Code::Jl_rel8_32,
        C::ge => Code::Jge_rel8_32,
        C::le => Code::Jle_rel8_32,
        C::g => Code::Jg_rel8_32,
        C::None => unreachable!(),
    }
}

/// The opposite condition.
fn negate(cc: ConditionCode) -> ConditionCode {
    use ConditionCode as C;
    match cc {
        C::o => C::no,
        C::no => C::o,
        C::b => C::ae,
        C::ae => C::b,
        C::e => C::ne,
        C::ne => C::e,
        C::be => C::a,
        C::a => C::be,
        C::s => C::ns,
        C::ns => C::s,
        C::p => C::np,
        C::np => C::p,
        C::l => C::ge,
        C::ge => C::l,
        C::le => C::g,
        C::g => C::le,
        C::None => C::None,
    }
}

/// LOOPcc/JCXZ with the same counter register, 32-bit operand size (the target is a TC
/// address).
fn counter_branch(code: Code) -> Code {
    use Code as C;
    match code {
        C::Loop_rel8_16_CX | C::Loop_rel8_32_CX => C::Loop_rel8_32_CX,
        C::Loop_rel8_16_ECX | C::Loop_rel8_32_ECX => C::Loop_rel8_32_ECX,
        C::Loope_rel8_16_CX | C::Loope_rel8_32_CX => C::Loope_rel8_32_CX,
        C::Loope_rel8_16_ECX | C::Loope_rel8_32_ECX => C::Loope_rel8_32_ECX,
        C::Loopne_rel8_16_CX | C::Loopne_rel8_32_CX => C::Loopne_rel8_32_CX,
        C::Loopne_rel8_16_ECX | C::Loopne_rel8_32_ECX => C::Loopne_rel8_32_ECX,
        C::Jcxz_rel8_16 | C::Jcxz_rel8_32 => C::Jcxz_rel8_32,
        C::Jecxz_rel8_16 | C::Jecxz_rel8_32 => C::Jecxz_rel8_32,
        other => unreachable!("not a counter branch: {other:?}"),
    }
}

/// Direct branches. `last`: the branch ends its unit; otherwise it is a Jcc the unit goes on
/// past (a superblock, `units.rs`): only its taken way is an exit, or not even that when the
/// target is a later instruction of the unit.
fn relink(b: &mut Builder<'_>, gi: &GuestInsn, next: u32, last: bool) -> Done {
    let i = &gi.instr;
    let code = i.code();
    let target = i.near_branch_target() as u32;
    if !last {
        debug_assert!(code.is_jcc_short_or_near());
        let cc = i.condition_code();
        // A forward branch inside the fragment needs no pending-interrupt check (as a chained
        // forward exit needs none); one that must check leaves through a checked exit.
        let inside = (target > gi.eip && !b.force_checked && b.check_at.is_none())
            .then(|| b.inside.iter().find(|&&(e, _)| e == target).map(|&(_, l)| l))
            .flatten();
        match inside {
            Some(l) => b.branch(cond_near(cc), l),
            None => b.exit(Some(cc), target, gi.eip),
        }
        if let Some(at) = b.check_at {
            // The check before the branch, on its not-taken way: the state there is the
            // branch's own but for EIP, so the check reports the branch's EIP.
            b.check_site(at);
        }
        return FALL;
    }
    if code.is_call_near() {
        // Push the guest return address, then leave for the callee.
        if i.op_code().operand_size() == 16 {
            b.ins(mk(Instruction::with1(Code::Push_imm16, next & 0xffff)));
        } else {
            b.ins(mk(Instruction::with1(Code::Pushd_imm32, next)));
        }
        b.exit(None, target, gi.eip);
    } else if code.is_jmp_short_or_near() {
        b.exit(None, target, gi.eip);
    } else if code.is_jcc_short_or_near() {
        b.exit(Some(i.condition_code()), target, gi.eip);
        b.exit(None, next, gi.eip);
    } else {
        // LOOPcc / JCXZ: a short branch over the fall-through exit to the taken exit.
        let taken = b.label();
        b.branch(counter_branch(code), taken);
        b.exit(None, next, gi.eip);
        b.bind(taken);
        b.exit(None, target, gi.eip);
    }
    STOP
}

fn lookup(b: &mut Builder<'_>, gi: &GuestInsn, next: u32) {
    let i = &gi.instr;
    let (sa, sc) = (b.slot(S_A), b.slot(S_C));
    b.st32(sa, Register::EAX);
    b.st32(sc, Register::ECX);
    let size16 = i.op_code().operand_size() == 16;
    if i.mnemonic() == Mnemonic::Ret {
        if size16 {
            b.ins(mk(Instruction::with2(
                Code::Movzx_r32_rm16,
                Register::EAX,
                stack(0),
            )));
        } else {
            // POP faults (#PF, #SS) before it changes EAX or ESP: nothing to undo.
            b.ins(mk(Instruction::with1(Code::Pop_r32, Register::EAX)));
        }
        let pop = if size16 { 2 } else { 0 }
            + if i.op_count() > 0 {
                i.immediate16() as i32
            } else {
                0
            };
        if pop != 0 {
            b.ins(mk(Instruction::with2(
                Code::Lea_r32_m,
                Register::ESP,
                stack(pop),
            )));
        }
        b.ibl();
        // The target is dynamic: the miss callout reads it from the slot.
        return;
    }
    // JMP/CALL r/m: load the target into EAX (the operand may use EAX or ECX: unchanged yet).
    let mut ld = *i;
    ld.set_ip(0);
    if i.op0_kind() == OpKind::Register {
        let r = i.op0_register();
        if size16 {
            ld = mk(Instruction::with2(Code::Movzx_r32_rm16, Register::EAX, r));
        } else {
            ld = mk(Instruction::with2(Code::Mov_r32_rm32, Register::EAX, r));
        }
    } else {
        ld.set_code(if size16 {
            Code::Movzx_r32_rm16
        } else {
            Code::Mov_r32_rm32
        });
        ld.set_op0_kind(OpKind::Register);
        ld.set_op0_register(Register::EAX);
        ld.set_op1_kind(OpKind::Memory);
    }
    b.ins(ld);
    if i.code().is_call_near_indirect() {
        let rec = Recovery::reg(Register::EAX, sa);
        if size16 {
            b.ins_rec(mk(Instruction::with1(Code::Push_imm16, next & 0xffff)), rec);
        } else {
            b.ins_rec(mk(Instruction::with1(Code::Pushd_imm32, next)), rec);
        }
    }
    b.ibl();
}

/// Stores the 16-bit value at gs:[off] to the guest's memory operand of `i` through a free
/// register.
fn store16_from_gs(b: &mut Builder<'_>, i: &Instruction, off: u32) {
    let r = free_reg(i);
    let s0 = b.slot(S0);
    b.st32(s0, r);
    b.ins(mk(Instruction::with2(
        Code::Mov_r16_rm16,
        reg16(r),
        gs(off),
    )));
    let mut st = *i;
    st.set_ip(0);
    st.set_code(Code::Mov_rm16_r16);
    st.set_op0_kind(OpKind::Memory);
    st.set_op1_kind(OpKind::Register);
    st.set_op1_register(reg16(r));
    b.ins_rec(st, Recovery::reg(r, s0));
    b.ld32(r, s0);
}

/// A register destination gets the u32 at gs:[off] (r32) or its low half (r16).
fn load_reg_from_gs(b: &mut Builder<'_>, r: Register, off: u32) {
    if r.size() == 2 {
        b.ins(mk(Instruction::with2(Code::Mov_r16_rm16, r, gs(off))));
    } else {
        b.ins(mk(Instruction::with2(Code::Mov_r32_rm32, r, gs(off))));
    }
}

fn inline(b: &mut Builder<'_>, gi: &GuestInsn, k: InlineKind, next: u32, cfg: &Config) -> Done {
    let i = &gi.instr;
    let a = b.abi;
    let (s0, s1) = (b.slot(S0), b.slot(S1));
    match k {
        InlineKind::SetIf => {
            let v = (i.mnemonic() == Mnemonic::Sti) as u32;
            b.ins(mk(Instruction::with2(
                Code::Mov_rm8_imm8,
                MemoryOperand::new(
                    Register::None,
                    Register::None,
                    1,
                    a.vif as i64,
                    4,
                    false,
                    Register::GS,
                ),
                v,
            )));
            Done {
                check_after_next: v == 1,
                ..FALL
            }
        }
        InlineKind::Pushf => {
            // PUSHF pushes the host's image (the guest's CF PF AF ZF SF OF DF); the image is
            // then rewritten in place with the virtual system flags, the arithmetic flags
            // saved (LAHF/SETO) and restored around it. No POPF: the host's is slow.
            let w = i.mnemonic() == Mnemonic::Pushf; // 16-bit
            b.ins(Instruction::with(if w {
                Code::Pushfw
            } else {
                Code::Pushfd
            }));
            b.st32(s0, Register::EAX);
            b.save_flags_lahf(s1);
            if w {
                b.ins(mk(Instruction::with2(
                    Code::Movzx_r32_rm16,
                    Register::EAX,
                    stack(0),
                )));
            } else {
                b.ins(mk(Instruction::with2(
                    Code::Mov_r32_rm32,
                    Register::EAX,
                    stack(0),
                )));
            }
            b.ins(mk(Instruction::with2(
                Code::And_rm32_imm32,
                Register::EAX,
                !VIRT_MASK,
            )));
            // IF (bit 9, clear now) = vif (0 or 1) added twice to AH.
            for _ in 0..2 {
                b.ins(mk(Instruction::with2(
                    Code::Add_r8_rm8,
                    Register::AH,
                    gs8(a.vif),
                )));
            }
            b.ins(mk(Instruction::with2(
                Code::Or_r32_rm32,
                Register::EAX,
                gs(a.vflags),
            )));
            if w {
                b.ins(mk(Instruction::with2(
                    Code::Mov_rm16_r16,
                    stack(0),
                    Register::AX,
                )));
            } else {
                b.ins(mk(Instruction::with2(
                    Code::Mov_rm32_r32,
                    stack(0),
                    Register::EAX,
                )));
            }
            b.restore_flags_lahf(s1);
            b.ld32(Register::EAX, s0);
            FALL
        }
        InlineKind::Popf => {
            let w = i.mnemonic() == Mnemonic::Popf;
            // At CPL 0: TF IOPL NT (and AC ID with 32 bits) from the image, IF separately,
            // RF cleared (32 bits), VM VIF VIP unchanged.
            let (settable, keep) = if w {
                (0x7100u32, VIRT_MASK & 0xffff_0000)
            } else {
                (0x24_7100u32, 0x1a_0000u32)
            };
            b.st32(s0, Register::EAX);
            if w {
                b.ins(mk(Instruction::with2(
                    Code::Movzx_r32_rm16,
                    Register::EAX,
                    stack(0),
                )));
            } else {
                b.ins(mk(Instruction::with2(
                    Code::Mov_r32_rm32,
                    Register::EAX,
                    stack(0),
                )));
            }
            b.ins(mk(Instruction::with2(
                Code::Lea_r32_m,
                Register::ESP,
                stack(if w { 2 } else { 4 }),
            )));
            b.st32(s1, Register::EAX);
            // vif = IF; vflags = (vflags & keep) | (image & settable).
            b.ins(mk(Instruction::with2(
                Code::Bt_rm32_imm8,
                Register::EAX,
                9u32,
            )));
            b.ins(mk(Instruction::with1(Code::Setb_rm8, gs8(a.vif))));
            b.ins(mk(Instruction::with2(
                Code::And_rm32_imm32,
                Register::EAX,
                settable,
            )));
            b.ins(mk(Instruction::with2(
                Code::And_rm32_imm32,
                gs(a.vflags),
                keep,
            )));
            b.ins(mk(Instruction::with2(
                Code::Or_rm32_r32,
                gs(a.vflags),
                Register::EAX,
            )));
            // A POPF that sets TF: the runtime single-steps (a callout at the next EIP).
            let trap = b.label();
            let after = b.label();
            b.ins(mk(Instruction::with2(
                Code::Test_rm8_imm8,
                Register::AH,
                1u32,
            )));
            b.branch(Code::Jne_rel32_32, trap);
            b.flags_from_slot(s1);
            b.ld32(Register::EAX, s0);
            b.bind(after);
            let eip = b.eip;
            b.defer(trap, move |b| {
                b.eip = next;
                b.flags_from_slot(s1);
                b.ld32(Register::EAX, s0);
                b.callout(
                    CalloutOp::PendingIrq,
                    CoEip::Imm(next),
                    next,
                    CalloutKind::PopfTrap as u32,
                );
                b.branch(Code::Jmp_rel32_32, after);
            });
            b.eip = eip;
            Done {
                check_after: true,
                ..FALL
            }
        }
        InlineKind::ReadSreg => {
            let off = a.vseg_of(i.op1_register());
            if i.op0_kind() == OpKind::Register {
                load_reg_from_gs(b, i.op0_register(), off);
            } else {
                store16_from_gs(b, i, off);
            }
            FALL
        }
        InlineKind::PushSreg => {
            let off = a.vseg_of(i.op0_register());
            let code = if i.op_code().operand_size() == 16 {
                Code::Push_rm16
            } else {
                Code::Push_rm32
            };
            b.ins(mk(Instruction::with1(code, gs(off))));
            FALL
        }
        InlineKind::LoadSreg => load_sreg(b, gi, next),
        InlineKind::Verify => verify_seg(b, gi, next),
        InlineKind::PortIo => io::port_io(b, gi, cfg, next),
        InlineKind::ReadCr => {
            let n = i.op1_register().number() as u32;
            if n > 4 || n == 1 {
                return emulate_here(b, gi, next, CalloutKind::CrWrite);
            }
            load_reg_from_gs(b, i.op0_register(), a.cr_of(n));
            FALL
        }
        InlineKind::ReadDr => {
            let n = i.op1_register().number() as u32;
            if n == 4 || n == 5 || n > 7 {
                // DR4/DR5 depend on CR4.DE: the interpreter decides.
                return emulate_here(b, gi, next, CalloutKind::DrWrite);
            }
            load_reg_from_gs(b, i.op0_register(), a.dr_of(n));
            FALL
        }
        InlineKind::StoreTable => {
            let base = if i.mnemonic() == Mnemonic::Sgdt {
                a.gdtr
            } else {
                a.idtr
            };
            let r = free_reg(i);
            let rec = Recovery::reg(r, s0);
            b.st32(s0, r);
            // The probe: the first byte swapped out and back (XCHG checks for a write first:
            // a read-only segment, such as a readable code segment in DS, is a #GP before any
            // page is touched, as for SGDT itself; a read probe would set the page's accessed
            // bit first).
            let mut probe_st = *i;
            probe_st.set_ip(0);
            probe_st.set_code(Code::Xchg_rm8_r8);
            probe_st.set_op0_kind(OpKind::Memory);
            probe_st.set_op1_kind(OpKind::Register);
            probe_st.set_op1_register(reg8(r));
            b.ins_rec(probe_st, rec);
            b.ins_rec(probe_st, rec);
            probe_st.set_code(Code::Mov_rm8_r8);
            b.ld32(r, base + 2);
            let mut hi = probe_st;
            hi.set_code(Code::Mov_rm32_r32);
            hi.set_op1_register(r);
            let addr16 = i.memory_base().size() == 2
                || i.memory_index().size() == 2
                || (i.memory_base() == Register::None
                    && i.memory_index() == Register::None
                    && i.memory_displ_size() == 2);
            if addr16 {
                hi.set_memory_displacement32(i.memory_displacement32().wrapping_add(2) & 0xffff);
                hi.set_memory_displ_size(2);
            } else {
                hi.set_memory_displacement32(i.memory_displacement32().wrapping_add(2));
                hi.set_memory_displ_size(4);
            }
            b.ins_rec(hi, rec);
            b.ins(mk(Instruction::with2(
                Code::Mov_r16_rm16,
                reg16(r),
                gs(base),
            )));
            let mut lo = probe_st;
            lo.set_code(Code::Mov_rm16_r16);
            lo.set_op1_register(reg16(r));
            b.ins_rec(lo, rec);
            b.ld32(r, s0);
            FALL
        }
        InlineKind::StoreSelector => {
            let off = if i.mnemonic() == Mnemonic::Sldt {
                a.ldtr
            } else {
                a.tr
            };
            if i.op0_kind() == OpKind::Register {
                load_reg_from_gs(b, i.op0_register(), off);
            } else {
                store16_from_gs(b, i, off);
            }
            FALL
        }
        InlineKind::Smsw => {
            if i.op0_kind() == OpKind::Register {
                load_reg_from_gs(b, i.op0_register(), a.cr_of(0));
            } else {
                store16_from_gs(b, i, a.cr_of(0));
            }
            FALL
        }
        InlineKind::Rdtsc => {
            b.save_flags_lahf(s0);
            b.ins(Instruction::with(Code::Rdtsc));
            b.ins(mk(Instruction::with2(
                Code::Add_r32_rm32,
                Register::EAX,
                gs(a.tsc_offset),
            )));
            b.ins(mk(Instruction::with2(
                Code::Adc_r32_rm32,
                Register::EDX,
                gs(a.tsc_offset + 4),
            )));
            b.st32(s1, Register::EAX);
            b.restore_flags_lahf(s0);
            b.ld32(Register::EAX, s1);
            FALL
        }
        InlineKind::BitScan => {
            let code = match i.code() {
                Code::Tzcnt_r16_rm16 => Code::Bsf_r16_rm16,
                Code::Tzcnt_r32_rm32 => Code::Bsf_r32_rm32,
                Code::Lzcnt_r16_rm16 => Code::Bsr_r16_rm16,
                Code::Lzcnt_r32_rm32 => Code::Bsr_r32_rm32,
                _ => {
                    b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, CalloutKind::NotInModel as u32);
                    return FALL;
                }
            };
            let mut copy = *i;
            copy.set_ip(0);
            copy.set_code(code);
            copy.set_has_repe_prefix(false);
            copy.set_has_repne_prefix(false);
            if !encodable(&copy) {
                b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, CalloutKind::NotInModel as u32);
                return FALL;
            }
            b.ins(copy);
            FALL
        }
        InlineKind::Cpuid => {
            let slow = b.label();
            let done = b.label();
            b.st32(s0, Register::EAX);
            b.save_flags_lahf(s1);
            b.ld32(Register::EAX, s0);
            b.ins(mk(Instruction::with2(
                Code::Cmp_r32_rm32,
                Register::EAX,
                gs(a.cpuid_count),
            )));
            b.branch(Code::Jae_rel32_32, slow);
            b.ins(mk(Instruction::with2(
                Code::Shl_rm32_imm8,
                Register::EAX,
                4u32,
            )));
            for (r, o) in [
                (Register::EBX, 4),
                (Register::ECX, 8),
                (Register::EDX, 12),
                (Register::EAX, 0),
            ] {
                b.ins(mk(Instruction::with2(
                    Code::Mov_r32_rm32,
                    r,
                    gs_base(Register::EAX, a.cpuid_table + o),
                )));
            }
            b.st32(s0, Register::EAX);
            b.restore_flags_lahf(s1);
            b.ld32(Register::EAX, s0);
            b.bind(done);
            let eip = gi.eip;
            b.defer(slow, move |b| {
                b.eip = eip;
                b.restore_flags_lahf(s1);
                b.ld32(Register::EAX, s0);
                b.callout(
                    CalloutOp::Emulate,
                    CoEip::Imm(eip),
                    next,
                    CalloutKind::CpuidLeaf as u32,
                );
                b.branch(Code::Jmp_rel32_32, done);
            });
            FALL
        }
    }
}

/// The 16-bit register of a general register (any size).
fn gpr16(r: Register) -> Register {
    use Register as R;
    match r.full_register32() {
        R::EAX => R::AX,
        R::ECX => R::CX,
        R::EDX => R::DX,
        R::EBX => R::BX,
        R::ESP => R::SP,
        R::EBP => R::BP,
        R::ESI => R::SI,
        R::EDI => R::DI,
        other => unreachable!("not a general register: {other:?}"),
    }
}

/// `movzx ecx, <the r/m16 operand number n of i>` (register or memory, recovery `rec`).
/// False if the memory form cannot be encoded.
fn selector_to_ecx(b: &mut Builder<'_>, i: &Instruction, n: u32, rec: Recovery) -> bool {
    if i.op_kind(n) == OpKind::Register {
        b.ins(mk(Instruction::with2(Code::Movzx_r32_rm16, Register::ECX, gpr16(i.op_register(n)))));
        return true;
    }
    let mut ld = *i;
    ld.set_ip(0);
    ld.set_code(Code::Movzx_r32_rm16);
    ld.set_op0_kind(OpKind::Register);
    ld.set_op0_register(Register::ECX);
    ld.set_op1_kind(OpKind::Memory);
    if !encodable(&ld) {
        return false;
    }
    b.ins_rec(ld, rec);
    true
}

/// VERR/VERW (docs/translator.md): a selector with a nonzero selector-table entry is
/// loadable at CPL 0, so it is readable, and it is writable exactly when its host shadow is
/// (a writable data segment; code and read-only data are shadowed read-only); null
/// selectors map to the host's null selector. The host's VERR/VERW on the entry therefore
/// sets ZF as the guest's would; an empty entry makes the `Emulate` callout. Only ZF
/// changes, as for the guest instruction.
fn verify_seg(b: &mut Builder<'_>, gi: &GuestInsn, next: u32) -> Done {
    let i = &gi.instr;
    let a = b.abi;
    let sc = b.slot(S_C);
    let rec = Recovery::reg(Register::ECX, sc);
    let host = if i.mnemonic() == Mnemonic::Verr { Code::Verr_r32m16 } else { Code::Verw_r32m16 };
    b.st32(sc, Register::ECX);
    if i.op0_kind() == OpKind::Memory && i.memory_segment() == Register::CS {
        // A `cs:` operand (Linux: `verw %cs:mds_verw_sel`): read through ES loaded with the
        // guest CS's shadow (readable code, or the load faults as the guest's read would),
        // ES restored after; a fault in between restores ECX and ES.
        let ses = b.slot(S2);
        let rec2 = Recovery {
            restore: [Some((Register::ECX, sc)), Some((Register::ES, ses))],
            esp_adjust: 0,
            emulate: false,
        };
        b.ins(mk(Instruction::with2(Code::Mov_rm16_Sreg, gs(ses), Register::ES)));
        b.ins_rec(mk(Instruction::with2(Code::Mov_Sreg_rm16, Register::ES, gs(a.cs_shadow))), rec2);
        let mut ld = *i;
        ld.set_ip(0);
        ld.set_code(Code::Movzx_r32_rm16);
        ld.set_op0_kind(OpKind::Register);
        ld.set_op0_register(Register::ECX);
        ld.set_op1_kind(OpKind::Memory);
        ld.set_segment_prefix(Register::ES);
        if !encodable(&ld) {
            b.ins(mk(Instruction::with2(Code::Mov_Sreg_rm16, Register::ES, gs(ses))));
            b.ld32(Register::ECX, sc);
            return emulate_here(b, gi, next, CalloutKind::DescriptorCheck);
        }
        b.ins_rec(ld, rec2);
        b.ins_rec(mk(Instruction::with2(Code::Mov_Sreg_rm16, Register::ES, gs(ses))), rec2);
    } else if !selector_to_ecx(b, i, 0, rec) {
        b.ld32(Register::ECX, sc);
        return emulate_here(b, gi, next, CalloutKind::DescriptorCheck);
    }
    b.ins(mk(Instruction::with2(
        Code::Movzx_r32_rm16,
        Register::ECX,
        MemoryOperand::new(Register::None, Register::ECX, 2, a.seg_table as i64, 4, false, Register::GS),
    )));
    let slow = b.label();
    let tramp = b.label();
    let done = b.label();
    b.branch(Code::Jecxz_rel8_32, tramp);
    b.ins(mk(Instruction::with1(host, Register::ECX)));
    b.ld32(Register::ECX, sc);
    b.branch(Code::Jmp_rel8_32, done);
    b.bind(tramp);
    b.branch(Code::Jmp_rel32_32, slow);
    b.bind(done);
    b.defer_emulate(slow, gi.eip, next, CalloutKind::DescriptorCheck, sc, done);
    FALL
}

/// MOV/POP to DS, ES or FS (docs/translator.md, "Inline segment loads"): the guest selector
/// indexes the selector table; a nonzero entry is the host selector to load (the runtime
/// filled it after validating that selector for CPL 0), then the virtual selector is
/// stored; an empty entry makes the `Emulate` callout, as before. Flag-free; every emitted
/// instruction that can fault restores ECX (its only change to the guest state).
fn load_sreg(b: &mut Builder<'_>, gi: &GuestInsn, next: u32) -> Done {
    let i = &gi.instr;
    let a = b.abi;
    let (sc, s1) = (b.slot(S_C), b.slot(S1));
    let rec = Recovery::reg(Register::ECX, sc);
    let (sreg, pop) = match i.code() {
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 => (i.op0_register(), 0),
        Code::Popw_DS => (Register::DS, 2),
        Code::Popd_DS => (Register::DS, 4),
        Code::Popw_ES => (Register::ES, 2),
        Code::Popd_ES => (Register::ES, 4),
        Code::Popw_FS => (Register::FS, 2),
        Code::Popd_FS => (Register::FS, 4),
        _ => return emulate_here(b, gi, next, CalloutKind::SegmentLoad),
    };
    if !matches!(sreg, Register::DS | Register::ES | Register::FS) {
        return emulate_here(b, gi, next, CalloutKind::SegmentLoad);
    }
    b.st32(sc, Register::ECX);
    // ECX = the guest selector, zero-extended (a POP reads what the guest's POP reads).
    match pop {
        4 => {
            b.ins_rec(mk(Instruction::with2(Code::Mov_r32_rm32, Register::ECX, stack(0))), rec);
            b.ins(mk(Instruction::with2(Code::Movzx_r32_rm16, Register::ECX, Register::CX)));
        }
        2 => b.ins_rec(mk(Instruction::with2(Code::Movzx_r32_rm16, Register::ECX, stack(0))), rec),
        _ => {
            if !selector_to_ecx(b, i, 1, rec) {
                b.ld32(Register::ECX, sc);
                return emulate_here(b, gi, next, CalloutKind::SegmentLoad);
            }
        }
    }
    b.st32(s1, Register::ECX);
    b.ins(mk(Instruction::with2(
        Code::Movzx_r32_rm16,
        Register::ECX,
        MemoryOperand::new(Register::None, Register::ECX, 2, a.seg_table as i64, 4, false, Register::GS),
    )));
    let slow = b.label();
    let tramp = b.label();
    let done = b.label();
    b.branch(Code::Jecxz_rel8_32, tramp);
    // A register that already holds the host selector is not loaded again (a load costs
    // 20-120 cycles here; Linux reloads `__USER_DS` into DS and ES on every kernel entry and
    // exit): it holds the descriptor a load would give, since host LDT slots change only in
    // the monitor and every entry reloads what changed (direct/entry.rs). Flag-free:
    // ECX = new + !cur + 1 = new - cur, JECXZ; then ECX = new again.
    let sa = b.slot(S_A);
    let rec2 = Recovery {
        restore: [Some((Register::ECX, sc)), Some((Register::EAX, sa))],
        ..Recovery::NONE
    };
    let same = b.label();
    let s2 = b.slot(S2);
    b.st32(sa, Register::EAX);
    b.ins(mk(Instruction::with2(Code::Mov_rm16_Sreg, gs(s2), sreg)));
    b.ins(mk(Instruction::with2(Code::Movzx_r32_rm16, Register::EAX, gs(s2))));
    b.ins(mk(Instruction::with1(Code::Not_rm32, Register::EAX)));
    b.ins(mk(Instruction::with2(Code::Lea_r32_m, Register::ECX, MemoryOperand::new(Register::ECX, Register::EAX, 1, 1, 1, false, Register::None))));
    b.branch(Code::Jecxz_rel8_32, same);
    b.ins(mk(Instruction::with1(Code::Not_rm32, Register::EAX)));
    b.ins(mk(Instruction::with2(Code::Lea_r32_m, Register::ECX, MemoryOperand::new(Register::ECX, Register::EAX, 1, 0, 0, false, Register::None))));
    // Cannot fault while the runtime keeps its promise; if it did, the guest instruction
    // restarts (as a callout) with ECX and EAX restored.
    b.ins_rec(mk(Instruction::with2(Code::Mov_Sreg_r32m16, sreg, Register::ECX)), rec2);
    b.bind(same);
    b.ld32(Register::EAX, sa);
    b.ld32(Register::ECX, s1);
    b.st32(a.vseg_of(sreg), Register::ECX);
    b.ld32(Register::ECX, sc);
    if pop != 0 {
        b.ins(mk(Instruction::with2(Code::Lea_r32_m, Register::ESP, stack(pop))));
    }
    // JECXZ reaches 127 bytes: a trampoline to the out-of-line callout.
    b.branch(Code::Jmp_rel8_32, done);
    b.bind(tramp);
    b.branch(Code::Jmp_rel32_32, slow);
    b.bind(done);
    b.defer_emulate(slow, gi.eip, next, CalloutKind::SegmentLoad, sc, done);
    FALL
}

fn emulate_here(b: &mut Builder<'_>, gi: &GuestInsn, next: u32, kind: CalloutKind) -> Done {
    b.callout(CalloutOp::Emulate, CoEip::Imm(gi.eip), next, kind as u32);
    FALL
}
