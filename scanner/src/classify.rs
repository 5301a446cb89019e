//! The sensitive-instruction table, as data, and the classifier.
//!
//! [`TABLE`] has one entry per instruction class: the iced-x86 mnemonics or codes it covers,
//! whether the instruction is privileged (faults at CPL > 0, or at CPL > IOPL), whether it is
//! sensitive (its behaviour depends on, or changes, state the monitor virtualizes), its group
//! in Robin and Irvine's analysis (USENIX Security 2000), what the host does with it when
//! translated code (host CPL 3, compatibility mode) executes it as it is (ARCHITECTURE.md
//! section 4 and the table measured in `monitor/src/native/mod.rs`), and what the translator
//! emits. `docs/sensitive-instructions.md` is generated from it ([`markdown`]; a unit test fails
//! if the committed file differs).
//!
//! [`classify`] looks an instruction up: first the operand-based classes (a memory operand
//! through the reserved segment register, a CS-relative data access), then the classes by code
//! and by mnemonic, then the instructions outside the virtual CPU model and, when the guest's
//! CR0.TS or CR0.EM is set, the x87/MMX/SSE instructions; everything else is IDENT. At a guest
//! CPL other than 0 every inline translation becomes a callout (the inline sequences implement
//! CPL-0 semantics).

use iced_x86::{Code, CpuidFeature, Instruction, Mnemonic, OpKind, Register};

use crate::abi::RESERVED_SEGMENT;
use crate::Mode;

/// What the host does when translated code (host CPL 3, compatibility mode, the monitor's
/// shadow descriptors) executes the instruction unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Runs with the result it would have at guest CPL 0.
    Same(&'static str),
    /// Runs silently with a different result.
    Different(&'static str),
    /// Caught by the host's UMIP and emulated by the host kernel with dummy values.
    Umip,
    /// Raises #GP (SIGSEGV, trapno 13).
    Gp(&'static str),
    /// Raises #UD (SIGILL, trapno 6).
    Ud(&'static str),
    /// A trap other than #GP/#UD.
    Trap(&'static str),
    /// A host system call (SIGSYS under the seccomp filter).
    Syscall(&'static str),
    /// Depends on the operands: described.
    Depends(&'static str),
}

impl Host {
    fn describe(&self) -> String {
        let (head, more) = match self {
            Host::Same(s) => ("runs, same result", s),
            Host::Different(s) => ("runs silently, different result", s),
            Host::Umip => ("UMIP: emulated by the host kernel with dummy values", &""),
            Host::Gp(s) => ("#GP (SIGSEGV trapno 13)", s),
            Host::Ud(s) => ("#UD (SIGILL trapno 6)", s),
            Host::Trap(s) => ("trap", s),
            Host::Syscall(s) => ("host system call", s),
            Host::Depends(s) => ("depends", s),
        };
        if more.is_empty() {
            head.to_string()
        } else {
            format!("{head}: {more}")
        }
    }
}

/// Robin and Irvine's groups of sensitive unprivileged instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RobinIrvine {
    /// Not in their list.
    None,
    /// "Sensitive register instructions": SGDT SIDT SLDT SMSW PUSHF POPF.
    SensitiveRegister,
    /// "Protection system references": LAR LSL VERR VERW POP PUSH CALL JMP INT n RET STR MOV.
    ProtectionSystem,
}

/// The inline sequences (mangle.rs), working on the vCPU page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InlineKind {
    /// CLI/STI: write the virtual IF (STI: pending-interrupt check after the next instruction).
    SetIf,
    /// PUSHF: push the guest's flags with the virtual system bits merged in.
    Pushf,
    /// POPF: virtual system bits to the vCPU page, arithmetic flags and DF to the host;
    /// pending-interrupt check after.
    Popf,
    /// MOV r/m, Sreg: the virtual selector.
    ReadSreg,
    /// PUSH Sreg: push the virtual selector.
    PushSreg,
    /// MOV r32, CRn: the virtual CRn.
    ReadCr,
    /// MOV r32, DRn: the virtual DRn.
    ReadDr,
    /// SGDT/SIDT: store the virtual GDTR/IDTR.
    StoreTable,
    /// SLDT/STR: the virtual LDTR/TR selector.
    StoreSelector,
    /// SMSW: the virtual CR0.
    Smsw,
    /// RDTSC: host TSC plus the offset.
    Rdtsc,
    /// CPUID: from the table on the vCPU page (a callout for leaves not in it).
    Cpuid,
    /// TZCNT/LZCNT on a model without BMI1/LZCNT: BSF/BSR (the prefix dropped).
    BitScan,
    /// MOV/POP to DS, ES or FS: the host selector from the selector table on the vCPU region
    /// (a callout when the entry is 0).
    LoadSreg,
    /// VERR/VERW: on the host selector from the selector table (a callout when the entry is 0).
    Verify,
    /// IN/OUT to the machine's null ports: the floating value, or nothing (mangle/io.rs; a
    /// callout for other ports).
    PortIo,
}

/// Why a callout is made (passed as the callout argument with `CalloutOp::Emulate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CalloutKind {
    /// MOV/POP to a segment register, LDS LES LFS LGS LSS.
    SegmentLoad = 1,
    /// Far CALL/JMP/RET.
    FarTransfer = 2,
    /// IRET.
    Iret = 3,
    /// INT n, INT3, INTO, INT1.
    Interrupt = 4,
    /// MOV to CRn, LMSW, CLTS.
    CrWrite = 5,
    /// MOV to DRn.
    DrWrite = 6,
    /// INVLPG.
    Invlpg = 7,
    /// WBINVD, INVD.
    CacheControl = 8,
    /// LGDT LIDT LLDT LTR.
    TableLoad = 9,
    /// HLT.
    Hlt = 10,
    /// RDMSR, WRMSR.
    Msr = 11,
    /// RDPMC.
    Rdpmc = 12,
    /// IN OUT INS OUTS.
    Io = 13,
    /// LAR LSL VERR VERW.
    DescriptorCheck = 14,
    /// SYSENTER SYSEXIT SYSCALL SYSRET.
    FastSystemCall = 15,
    /// UD0 UD1 UD2.
    Undefined = 16,
    /// A memory operand through the reserved segment register.
    ReservedSegment = 17,
    /// A CS-relative data access.
    CsData = 18,
    /// An instruction the virtual CPU model does not have.
    NotInModel = 19,
    /// x87/MMX/SSE while the guest's CR0.TS or CR0.EM is set.
    FpuTrap = 20,
    /// A sensitive instruction at guest CPL > 0 (inline sequences are CPL-0 semantics).
    UserMode = 21,
    /// CPUID of a leaf not in the inline table.
    CpuidLeaf = 22,
    /// POPF that sets the virtual TF (single-stepping: the runtime interprets).
    PopfTrap = 23,
    /// An inline sequence that addresses the stack through ESP, with a 16-bit stack segment.
    Stack16 = 24,
    /// An IDENT instruction that kept faulting in translated code (a store into a code frame,
    /// an access into the monitor area, page 0 or MMIO): retranslated as a callout because the
    /// runtime hinted it ([`crate::hints`]).
    Adaptive = 25,
}

impl CalloutKind {
    /// Whether a unit ends after this callout (control transfers and mode changes).
    pub fn ends_unit(self) -> bool {
        matches!(
            self,
            CalloutKind::SegmentLoad
                | CalloutKind::FarTransfer
                | CalloutKind::Iret
                | CalloutKind::Interrupt
                | CalloutKind::CrWrite
                | CalloutKind::FastSystemCall
                | CalloutKind::Undefined
        )
    }
}

/// What the translator emits for an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Copied unchanged.
    Ident,
    /// A direct near branch: relinked to the target's fragment (or an exit stub); CALL pushes
    /// the guest return address.
    Relink,
    /// A near return or indirect branch: inline lookup of the target in the table.
    Lookup,
    /// An inline sequence on the vCPU page.
    Inline(InlineKind),
    /// A callout through the 64-bit gate.
    Callout(CalloutKind),
}

/// How a class recognises its instructions.
#[derive(Clone, Copy, Debug)]
pub enum Matcher {
    /// Any of these mnemonics.
    Mnemonics(&'static [Mnemonic]),
    /// Any of these codes.
    Codes(&'static [Code]),
    /// A property of the operands, mode or model (described; tested in [`classify`]).
    Special(Special),
}

/// The classes recognised by a property rather than an opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// A memory operand (or prefix) through the reserved segment register.
    ReservedSegment,
    /// A memory operand through CS.
    CsData,
    /// MOV or POP to DS, ES or FS.
    DataSegmentLoad,
    /// Requires a CPUID feature outside the virtual CPU model.
    NotInModel,
    /// x87/MMX/SSE/FXSR with the guest's CR0.TS or CR0.EM set.
    FpuTrap,
    /// TZCNT/LZCNT while the model lacks BMI1/LZCNT.
    BitScanAlias,
    /// Everything else.
    Other,
}

/// One instruction class of the table.
#[derive(Clone, Copy, Debug)]
pub struct Class {
    /// Name.
    pub name: &'static str,
    /// What it covers.
    pub matcher: Matcher,
    /// Faults when executed at CPL > 0 (or CPL > IOPL) on a real CPU.
    pub privileged: bool,
    /// Its behaviour depends on or changes virtualized state (Popek-Goldberg).
    pub sensitive: bool,
    /// Robin and Irvine's group.
    pub ri: RobinIrvine,
    /// What the host does with it at CPL 3.
    pub host: Host,
    /// What the translator emits (at guest CPL 0).
    pub translation: Translation,
    /// Whether a unit ends after it.
    pub ends_unit: bool,
    /// Remarks for the doc.
    pub note: &'static str,
}

use Host::*;
use RobinIrvine as RI;

macro_rules! class {
    ($name:expr, $m:expr, priv $p:expr, sens $s:expr, $ri:expr, $host:expr, $tr:expr, ends $e:expr, $note:expr) => {
        Class {
            name: $name,
            matcher: $m,
            privileged: $p,
            sensitive: $s,
            ri: $ri,
            host: $host,
            translation: $tr,
            ends_unit: $e,
            note: $note,
        }
    };
}

use CalloutKind as CK;
use InlineKind as IK;
use Matcher::{Codes, Mnemonics};
use Mnemonic as M;
use Translation::{Callout, Inline};

/// The table. Order matters only for [`Matcher::Special`] classes, which [`classify`] tests
/// before the others.
pub static TABLE: &[Class] = &[
    class!("Reserved segment register (GS) in a memory operand or prefix", Matcher::Special(Special::ReservedSegment),
        priv false, sens true, RI::None, Different("GS is the translator's: it would reach the vCPU page"),
        Callout(CK::ReservedSegment), ends false,
        "The guest's GS selector and base are virtual; the runtime interprets the instruction with them. In user code whose GS is flat (`Mode::user_gs`) an explicit GS operand is inline instead: GS base + offset through DS (mangle/user_gs.rs). Loads and reads of GS itself are the segment-register classes below."),
    class!("CS-relative data access", Matcher::Special(Special::CsData),
        priv false, sens true, RI::None, Different("translated code runs in the monitor's code segment, not the guest's"),
        Callout(CK::CsData), ends false,
        "A `cs:` memory operand would read through the monitor's flat code segment, which reaches the monitor area."),
    class!("MOV / POP to DS, ES, FS", Matcher::Special(Special::DataSegmentLoad),
        priv false, sens true, RI::ProtectionSystem, Depends("#GP for most guest selectors; a host GDT selector loads the host's descriptor"),
        Inline(IK::LoadSreg), ends false,
        "The selector table on the vCPU region gives the host selector of the guest selector's shadow, filled by the runtime only for selectors it has validated for CPL 0 and dropped when the descriptor, the tables or the mode change; an empty entry makes the `Emulate` callout (SegmentLoad). SS and GS loads are the rows below."),
    class!("CLI / STI", Mnemonics(&[M::Cli, M::Sti]),
        priv true, sens true, RI::None, Gp("IOPL 0 < CPL 3"),
        Inline(IK::SetIf), ends false,
        "One byte store to the virtual IF; after STI the pending-interrupt check follows the next instruction (the STI shadow)."),
    class!("PUSHF", Mnemonics(&[M::Pushf, M::Pushfd]),
        priv false, sens true, RI::SensitiveRegister, Different("pushes the host's IF=1 and IOPL=0"),
        Inline(IK::Pushf), ends false,
        "Pushes the host flags, then merges the virtual IF, IOPL, NT, AC, ... into the pushed image; arithmetic flags untouched."),
    class!("POPF", Mnemonics(&[M::Popf, M::Popfd]),
        priv false, sens true, RI::SensitiveRegister, Different("changes of IF and IOPL are silently ignored"),
        Inline(IK::Popf), ends false,
        "Virtual bits to the vCPU page, CF PF AF ZF SF OF DF to the host (SAHF, ADD AL,7Fh, CLD/STD); pending-interrupt check after; a POPF that sets TF is a callout."),
    class!("IRET", Mnemonics(&[M::Iret, M::Iretd]),
        priv false, sens true, RI::None, Depends("#GP returning to CPL 0 selectors; a return to host selectors would succeed"),
        Callout(CK::Iret), ends true,
        "The runtime pops the frame against the guest's descriptor tables and checks for pending interrupts. IRETD from kernel code to the user code the runtime validated is inline (mangle/syscall.rs): the frame read, the virtual flags, selectors and shadows switched, then the user lookup table."),
    class!("SGDT / SIDT", Mnemonics(&[M::Sgdt, M::Sidt]),
        priv false, sens true, RI::SensitiveRegister, Umip,
        Inline(IK::StoreTable), ends false,
        "Stores the virtual limit and base (a byte probe first, so a fault leaves memory unchanged)."),
    class!("SLDT", Mnemonics(&[M::Sldt]),
        priv false, sens true, RI::SensitiveRegister, Umip,
        Inline(IK::StoreSelector), ends false, "Register destinations are zero-extended (P6 and later)."),
    class!("STR", Mnemonics(&[M::Str]),
        priv false, sens true, RI::ProtectionSystem, Umip,
        Inline(IK::StoreSelector), ends false, ""),
    class!("SMSW", Mnemonics(&[M::Smsw]),
        priv false, sens true, RI::SensitiveRegister, Umip,
        Inline(IK::Smsw), ends false, "SMSW r32 stores all of CR0, as the interpreter does."),
    class!("LGDT / LIDT / LLDT / LTR", Mnemonics(&[M::Lgdt, M::Lidt, M::Lldt, M::Ltr]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::TableLoad), ends false, "The runtime reshadows the descriptor tables."),
    class!("LMSW / CLTS", Mnemonics(&[M::Lmsw, M::Clts]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::CrWrite), ends true, "CR0.TS and PE change the translation mode."),
    class!("MOV from CRn", Codes(&[Code::Mov_r32_cr]),
        priv true, sens true, RI::None, Gp(""),
        Inline(IK::ReadCr), ends false, ""),
    class!("MOV to CRn", Codes(&[Code::Mov_cr_r32]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::CrWrite), ends true, "CR0/CR3/CR4 writes change paging and the shadow MMU."),
    class!("MOV from DRn", Codes(&[Code::Mov_r32_dr]),
        priv true, sens true, RI::None, Gp(""),
        Inline(IK::ReadDr), ends false, ""),
    class!("MOV to DRn", Codes(&[Code::Mov_dr_r32]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::DrWrite), ends false, ""),
    class!("INVLPG", Mnemonics(&[M::Invlpg]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::Invlpg), ends false, "The shadow MMU unmaps the page."),
    class!("WBINVD / INVD", Mnemonics(&[M::Wbinvd, M::Invd]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::CacheControl), ends false, ""),
    class!("HLT", Mnemonics(&[M::Hlt]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::Hlt), ends false, "The runtime sleeps until the next interrupt."),
    class!("RDMSR / WRMSR", Mnemonics(&[M::Rdmsr, M::Wrmsr]),
        priv true, sens true, RI::None, Gp(""),
        Callout(CK::Msr), ends false, ""),
    class!("RDTSC", Mnemonics(&[M::Rdtsc]),
        priv false, sens true, RI::None, Different("the host's TSC (CR4.TSD is clear)"),
        Inline(IK::Rdtsc), ends false, "Host RDTSC plus the virtual offset; flags saved with LAHF/SETO."),
    class!("RDPMC", Mnemonics(&[M::Rdpmc]),
        priv false, sens true, RI::None, Gp("CR4.PCE is clear unless perf enabled it"),
        Callout(CK::Rdpmc), ends false, ""),
    class!("CPUID", Mnemonics(&[M::Cpuid]),
        priv false, sens true, RI::None, Different("the host's leaves (#GP once CPUID faulting is on)"),
        Inline(IK::Cpuid), ends false, "Basic leaves from the table on the vCPU page; other leaves are a callout."),
    class!("IN / OUT", Mnemonics(&[M::In, M::Out]),
        priv true, sens true, RI::None, Gp("IOPL 0 and no I/O bitmap"),
        Inline(IK::PortIo), ends false, "IOPL-sensitive; the device models. Ports whose device does nothing (the machine's null ports): IN reads the floating bus, OUT is dropped (the DX forms test a port map on the vCPU page). Other ports: CALLOUT(Io)."),
    class!("INS / OUTS", Mnemonics(&[M::Insb, M::Insw, M::Insd, M::Outsb, M::Outsw, M::Outsd]),
        priv true, sens true, RI::None, Gp("IOPL 0 and no I/O bitmap"),
        Callout(CK::Io), ends false, "IOPL-sensitive; the device models."),
    class!("MOV from a segment register", Codes(&[Code::Mov_rm16_Sreg, Code::Mov_r32m16_Sreg]),
        priv false, sens true, RI::ProtectionSystem, Different("reads the shadow selector"),
        Inline(IK::ReadSreg), ends false, "The virtual selector (GS's too); r32 destinations zero-extended."),
    class!("MOV to a segment register", Codes(&[Code::Mov_Sreg_rm16, Code::Mov_Sreg_r32m16]),
        priv false, sens true, RI::ProtectionSystem, Depends("#GP for most guest selectors; a host GDT selector loads the host's descriptor"),
        Callout(CK::SegmentLoad), ends true, "SS and GS (DS, ES, FS: the row above). The runtime loads the shadow descriptor (MOV SS: stack size and interrupt shadow; GS: the virtual selector and base)."),
    class!("PUSH segment register", Codes(&[
            Code::Pushw_ES, Code::Pushd_ES, Code::Pushw_CS, Code::Pushd_CS, Code::Pushw_SS, Code::Pushd_SS,
            Code::Pushw_DS, Code::Pushd_DS, Code::Pushw_FS, Code::Pushd_FS, Code::Pushw_GS, Code::Pushd_GS]),
        priv false, sens true, RI::ProtectionSystem, Different("pushes the shadow selector"),
        Inline(IK::PushSreg), ends false, "PUSH of the virtual selector from the vCPU page (32-bit: zero-extended)."),
    class!("POP segment register", Codes(&[
            Code::Popw_ES, Code::Popd_ES, Code::Popw_SS, Code::Popd_SS, Code::Popw_DS, Code::Popd_DS,
            Code::Popw_FS, Code::Popd_FS, Code::Popw_GS, Code::Popd_GS]),
        priv false, sens true, RI::ProtectionSystem, Depends("as MOV to a segment register"),
        Callout(CK::SegmentLoad), ends true, ""),
    class!("LDS / LES / LFS / LGS / LSS", Mnemonics(&[M::Lds, M::Les, M::Lfs, M::Lgs, M::Lss]),
        priv false, sens true, RI::ProtectionSystem, Depends("as MOV to a segment register"),
        Callout(CK::SegmentLoad), ends true, ""),
    class!("VERR / VERW", Mnemonics(&[M::Verr, M::Verw]),
        priv false, sens true, RI::ProtectionSystem, Different("answers from the host's GDT and the shadow LDT (DPL 3)"),
        Inline(IK::Verify), ends false,
        "A selector with a selector-table entry (loadable at CPL 0) is verified on its host shadow, which is readable and, exactly when the guest's segment is writable data, writable (null: the host's null selector, ZF = 0); an empty entry makes the `Emulate` callout (DescriptorCheck). A `cs:` operand is read through ES loaded with the CS shadow (`Abi::cs_shadow`)."),
    class!("LAR / LSL", Mnemonics(&[M::Lar, M::Lsl]),
        priv false, sens true, RI::ProtectionSystem, Different("answers from the host's GDT and the shadow LDT (DPL 3, truncated limits)"),
        Callout(CK::DescriptorCheck), ends false, ""),
    class!("far CALL / JMP", Codes(&[
            Code::Call_ptr1616, Code::Call_ptr1632, Code::Call_m1616, Code::Call_m1632,
            Code::Jmp_ptr1616, Code::Jmp_ptr1632, Code::Jmp_m1616, Code::Jmp_m1632]),
        priv false, sens true, RI::ProtectionSystem, Depends("to a host selector it succeeds (0x33: 64-bit mode, out of the sandbox); otherwise #GP"),
        Callout(CK::FarTransfer), ends true, "Never emitted: no far transfer to a host selector."),
    class!("far RET", Mnemonics(&[M::Retf]),
        priv false, sens true, RI::ProtectionSystem, Depends("as far CALL / JMP"),
        Callout(CK::FarTransfer), ends true, ""),
    class!("INT n", Codes(&[Code::Int_imm8]),
        priv false, sens true, RI::ProtectionSystem, Gp("error code (n<<3)|2 (the host IDT's DPL); INT 80h is a host system call; INT 3/4 trap"),
        Callout(CK::Interrupt), ends true, "The runtime delivers through the guest's IDT. In user code, the vector whose gate the runtime validated is inline (mangle/syscall.rs): the frame pushed on SS0:ESP0, the virtual flags, selectors and shadows switched, then the kernel lookup table."),
    class!("INT3", Codes(&[Code::Int3]),
        priv false, sens true, RI::None, Trap("#BP: SIGTRAP, EIP after the instruction"),
        Callout(CK::Interrupt), ends true, ""),
    class!("INTO", Codes(&[Code::Into]),
        priv false, sens true, RI::None, Trap("#OF when OF=1: SIGSEGV trapno 4"),
        Callout(CK::Interrupt), ends true, ""),
    class!("INT1 (ICEBP)", Codes(&[Code::Int1]),
        priv false, sens true, RI::None, Trap("#DB: SIGTRAP, reported at the instruction itself on this host"),
        Callout(CK::Interrupt), ends true, ""),
    class!("BOUND", Mnemonics(&[M::Bound]),
        priv false, sens false, RI::None, Same("#BR at any CPL: SIGSEGV trapno 5 at the instruction"),
        Translation::Ident, ends false, "Its #BR reaches the guest through the precise-exception map, like #DE or #PF."),
    class!("SYSENTER / SYSEXIT", Mnemonics(&[M::Sysenter, M::Sysexit]),
        priv false, sens true, RI::None, Ud("this AMD host in long mode (on Intel SYSENTER is a host system call); SYSEXIT: #GP at CPL 3"),
        Callout(CK::FastSystemCall), ends true, "The virtual CPU has no SEP: the interpreter raises #UD."),
    class!("SYSCALL / SYSRET", Mnemonics(&[M::Syscall, M::Sysret]),
        priv false, sens true, RI::None, Syscall("AMD runs SYSCALL in compatibility mode (SIGSYS under seccomp, garbage EIP)"),
        Callout(CK::FastSystemCall), ends true, "Not in the virtual CPU: #UD."),
    class!("UD0 / UD1 / UD2", Mnemonics(&[M::Ud0, M::Ud1, M::Ud2]),
        priv false, sens false, RI::None, Ud(""),
        Callout(CK::Undefined), ends true, "A callout rather than a SIGILL."),
    class!("Near direct JMP / Jcc / CALL / LOOPcc / JCXZ", Matcher::Special(Special::Other),
        priv false, sens false, RI::None, Same("but the target is a guest address"),
        Translation::Relink, ends true, "Relinked to the target's fragment (chained in place) or an exit stub; CALL pushes the guest return address."),
    class!("Near RET / indirect JMP / CALL", Matcher::Special(Special::Other),
        priv false, sens false, RI::None, Same("but the target is a guest address"),
        Translation::Lookup, ends true, "Inline lookup in the table on the vCPU page; a miss is a callout."),
    class!("TZCNT / LZCNT outside the virtual CPU model", Matcher::Special(Special::BitScanAlias),
        priv false, sens true, RI::None, Depends("the host's TZCNT/LZCNT, not the BSF/BSR a P6 executes"),
        Inline(IK::BitScan), ends false, "F3 0F BC/BD is REP BSF/BSR to a CPU without BMI1/LZCNT (the interpreter's model); compilers emit it as a BSF that newer CPUs run faster (Linux's __ffs). Emitted as BSF/BSR without the prefix: the host then computes what the virtual P6 does."),
    class!("Outside the virtual CPU model", Matcher::Special(Special::NotInModel),
        priv false, sens true, RI::None, Depends("runs if the host has the feature"),
        Callout(CK::NotInModel), ends false, "Anything needing a CPUID feature the virtual P6 lacks (SSE3+, RDTSCP, SMAP, XSAVE, MONITOR, VMX/SVM, ...): the interpreter raises #UD."),
    class!("x87 / MMX / SSE with CR0.TS or CR0.EM set", Matcher::Special(Special::FpuTrap),
        priv false, sens true, RI::None, Same("but without the guest's #NM: the host's CR0 is not the guest's"),
        Callout(CK::FpuTrap), ends false, "Part of the translation mode: such fragments are retranslated after CLTS."),
    class!("Everything else", Matcher::Special(Special::Other),
        priv false, sens false, RI::None, Same(""),
        Translation::Ident, ends false, "Copied (re-encoded for the 32-bit translation cache)."),
];

fn class_named(name: &str) -> &'static Class {
    TABLE
        .iter()
        .find(|c| c.name == name)
        .expect("class in table")
}

/// The CPUID features of the virtual CPU (iced-x86's names).
#[derive(Clone, Debug)]
pub struct Model {
    /// Features present.
    pub features: Vec<CpuidFeature>,
    /// Every feature: the host CPU decides (an instruction it lacks raises #UD natively).
    pub any: bool,
}

impl Default for Model {
    /// The P6-class CPU of ARCHITECTURE.md section 8 (the interpreter's default model).
    fn default() -> Self {
        use CpuidFeature as F;
        Model {
            features: vec![
                F::INTEL8086,
                F::INTEL186,
                F::INTEL286,
                F::INTEL386,
                F::INTEL486,
                F::CPUID,
                F::TSC,
                F::MSR,
                F::CX8,
                F::CMOV,
                F::FPU,
                F::FPU287,
                F::FPU387,
                F::MMX,
                F::SSE,
                F::SSE2,
                F::FXSR,
                F::PAUSE,
                F::MULTIBYTENOP,
            ],
            any: false,
        }
    }
}

impl Model {
    /// The host's model: every instruction is in it, the host CPU runs what it has and raises
    /// #UD for the rest. The model of guest user code that runs directly, where CPUID answers
    /// with the host's features (no CPUID faulting on the host): translated hot user code
    /// (adaptive user-mode translation) must not refuse what that code was told it may use.
    pub fn host() -> Model {
        Model { features: Vec::new(), any: true }
    }

    /// Whether the model has every feature `instr` needs.
    pub fn has(&self, instr: &Instruction) -> bool {
        self.any
            || instr
            .cpuid_features()
            .iter()
            .all(|f| self.features.contains(f))
    }
}

/// The result of [`classify`].
#[derive(Clone, Copy, Debug)]
pub struct Classification {
    /// The class.
    pub class: &'static Class,
    /// The translation for this instruction in this mode.
    pub translation: Translation,
}

fn has_memory_operand(instr: &Instruction) -> bool {
    instr.op_kinds().any(|k| {
        matches!(
            k,
            OpKind::Memory
                | OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemorySegDI
                | OpKind::MemorySegEDI
                | OpKind::MemorySegRDI
        )
    })
}

/// Whether the instruction uses the reserved segment register for memory (or carries its
/// prefix).
pub fn uses_reserved_segment(instr: &Instruction) -> bool {
    instr.segment_prefix() == RESERVED_SEGMENT
        || (has_memory_operand(instr) && instr.memory_segment() == RESERVED_SEGMENT)
}

/// MOV or POP to DS, ES or FS (the loads the translator makes inline).
pub fn is_data_segment_load(instr: &Instruction) -> bool {
    let sreg = match instr.code() {
        Code::Mov_Sreg_rm16 | Code::Mov_Sreg_r32m16 => instr.op0_register(),
        Code::Popw_DS | Code::Popd_DS => Register::DS,
        Code::Popw_ES | Code::Popd_ES => Register::ES,
        Code::Popw_FS | Code::Popd_FS => Register::FS,
        _ => return false,
    };
    matches!(sreg, Register::DS | Register::ES | Register::FS)
}

fn is_fpu_like(instr: &Instruction) -> bool {
    use CpuidFeature as F;
    matches!(instr.mnemonic(), M::Wait)
        || instr.cpuid_features().iter().any(|f| {
            matches!(
                f,
                F::FPU | F::FPU287 | F::FPU387 | F::MMX | F::SSE | F::SSE2 | F::FXSR
            )
        })
}

fn is_relink(instr: &Instruction) -> bool {
    let c = instr.code();
    c.is_jmp_short_or_near()
        || c.is_jcc_short_or_near()
        || c.is_call_near()
        || c.is_loop()
        || c.is_loopcc()
        || c.is_jcx_short()
}

fn is_lookup(instr: &Instruction) -> bool {
    let c = instr.code();
    matches!(instr.mnemonic(), M::Ret) || c.is_jmp_near_indirect() || c.is_call_near_indirect()
}

/// Classifies an instruction for translation in `mode` with CPU model `model`.
pub fn classify(instr: &Instruction, mode: Mode, model: &Model) -> Classification {
    let class = lookup(instr, mode, model);
    let mut translation = class.translation;
    if mode.cpl != 0 {
        if let Translation::Inline(_) = translation {
            translation = Translation::Callout(CalloutKind::UserMode);
        }
    }
    Classification { class, translation }
}

fn lookup(instr: &Instruction, mode: Mode, model: &Model) -> &'static Class {
    if uses_reserved_segment(instr) {
        return &TABLE[0];
    }
    if matches!(instr.mnemonic(), Mnemonic::Verr | Mnemonic::Verw) {
        // Also with a `cs:` operand: the inline sequence reads it through the CS shadow.
        return class_named("VERR / VERW");
    }
    if has_memory_operand(instr) && instr.memory_segment() == Register::CS {
        return &TABLE[1];
    }
    if is_data_segment_load(instr) {
        return &TABLE[2];
    }
    let code = instr.code();
    let mnemonic = instr.mnemonic();
    for c in TABLE {
        let hit = match c.matcher {
            Matcher::Mnemonics(ms) => ms.contains(&mnemonic),
            Matcher::Codes(cs) => cs.contains(&code),
            Matcher::Special(_) => false,
        };
        if hit {
            return c;
        }
    }
    if !model.has(instr) {
        if matches!(mnemonic, Mnemonic::Tzcnt | Mnemonic::Lzcnt) {
            return class_named("TZCNT / LZCNT outside the virtual CPU model");
        }
        return class_named("Outside the virtual CPU model");
    }
    if mode.fpu_trap && is_fpu_like(instr) {
        return class_named("x87 / MMX / SSE with CR0.TS or CR0.EM set");
    }
    if is_relink(instr) {
        return class_named("Near direct JMP / Jcc / CALL / LOOPcc / JCXZ");
    }
    if is_lookup(instr) {
        return class_named("Near RET / indirect JMP / CALL");
    }
    class_named("Everything else")
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn translation_text(t: Translation) -> String {
    match t {
        Translation::Ident => "IDENT".into(),
        Translation::Relink => "RELINK".into(),
        Translation::Lookup => "LOOKUP".into(),
        Translation::Inline(k) => format!("INLINE({k:?})"),
        Translation::Callout(k) => format!("CALLOUT({k:?})"),
    }
}

fn covers_text(m: Matcher) -> String {
    match m {
        Matcher::Mnemonics(ms) => ms
            .iter()
            .map(|m| format!("`{m:?}`"))
            .collect::<Vec<_>>()
            .join(" "),
        Matcher::Codes(cs) => cs
            .iter()
            .map(|c| format!("`{c:?}`"))
            .collect::<Vec<_>>()
            .join(" "),
        Matcher::Special(Special::ReservedSegment) => {
            "any memory operand whose segment is GS, any GS prefix".into()
        }
        Matcher::Special(Special::CsData) => "any memory operand whose segment is CS".into(),
        Matcher::Special(Special::DataSegmentLoad) => {
            "`Mov_Sreg_rm16` `Mov_Sreg_r32m16` with DS ES FS, `Popw_DS` `Popd_DS` `Popw_ES` `Popd_ES` `Popw_FS` `Popd_FS`".into()
        }
        Matcher::Special(Special::NotInModel) => "`cpuid_features()` not all in `Model`".into(),
        Matcher::Special(Special::BitScanAlias) => {
            "`Tzcnt` `Lzcnt` when the model lacks BMI1 / LZCNT".into()
        }
        Matcher::Special(Special::FpuTrap) => {
            "features FPU* MMX SSE SSE2 FXSR, `Wait` (mode bit `fpu_trap`)".into()
        }
        Matcher::Special(Special::Other) => "by flow control (see name)".into(),
    }
}

/// `docs/sensitive-instructions.md`, generated from [`TABLE`].
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str("# Sensitive and privileged instructions\n\n");
    s.push_str("<!-- Generated from scanner/src/classify.rs (TABLE) by `markdown()`; do not edit by hand.\n");
    s.push_str(
        "     Regenerate: VMM_UPDATE_DOCS=1 cargo test -p vmm-scanner doc_table_is_current -->\n\n",
    );
    s.push_str(
        "Every instruction class the translator treats specially, for guest kernel code (CPL 0) that runs \
translated at host CPL 3 in compatibility mode. *Privileged*: faults at CPL > 0 (or CPL > IOPL) on a real CPU. \
*Sensitive*: behaviour depends on or changes state the monitor virtualizes (Popek and Goldberg). *Robin & Irvine*: \
the group in Robin and Irvine's analysis of the Pentium (USENIX Security 2000) of sensitive instructions that are \
not privileged. *Host at CPL 3*: what happens if translated code executed it unchanged, measured on the \
development host (AMD EPYC, Linux with UMIP; ARCHITECTURE.md section 4, `monitor/src/native/mod.rs`). \
*Translation*: IDENT (copied), RELINK / LOOKUP (control flow), INLINE(kind) (a sequence on the vCPU page, no exit), \
CALLOUT(kind) (a far call through the 64-bit gate, never a signal). The inline sequences and the callout ABI \
are in docs/translator.md. At a guest CPL other than 0 every INLINE becomes CALLOUT(UserMode).\n\n",
    );
    s.push_str("The reserved segment register is **GS** (scanner/src/abi.rs explains why).\n\n");
    s.push_str("| class | iced-x86 mnemonics / codes | privileged | sensitive | Robin & Irvine | host at CPL 3 | translation | ends unit | notes |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for c in TABLE {
        let ri = match c.ri {
            RobinIrvine::None => "",
            RobinIrvine::SensitiveRegister => "sensitive register",
            RobinIrvine::ProtectionSystem => "protection system",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            c.name,
            covers_text(c.matcher),
            yes(c.privileged),
            yes(c.sensitive),
            ri,
            c.host.describe().replace('|', "\\|"),
            translation_text(c.translation),
            yes(c.ends_unit),
            c.note.replace('|', "\\|"),
        ));
    }
    s.push_str(
        "\nRobin and Irvine's list (SGDT SIDT SLDT SMSW PUSHF POPF; LAR LSL VERR VERW, POP and PUSH of segment \
registers, far CALL JMP RET, INT n, STR, MOV to and from segment registers) is covered by the rows marked in \
their column.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    fn cls(bytes: &[u8]) -> Classification {
        let i = Decoder::new(32, bytes, DecoderOptions::NONE).decode();
        assert_ne!(i.code(), Code::INVALID, "{bytes:02x?}");
        classify(&i, Mode::kernel32(), &Model::default())
    }

    #[test]
    fn doc_table_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/sensitive-instructions.md"
        );
        let want = markdown();
        if std::env::var_os("VMM_UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(have == want, "docs/sensitive-instructions.md is stale: run VMM_UPDATE_DOCS=1 cargo test -p vmm-scanner doc_table_is_current");
    }

    #[test]
    fn the_issue_list_is_covered() {
        use Translation as T;
        let cases: &[(&[u8], Translation)] = &[
            (&[0xfa], T::Inline(IK::SetIf)),                     // cli
            (&[0xfb], T::Inline(IK::SetIf)),                     // sti
            (&[0x9c], T::Inline(IK::Pushf)),                     // pushfd
            (&[0x66, 0x9d], T::Inline(IK::Popf)),                // popf
            (&[0xcf], T::Callout(CK::Iret)),                     // iretd
            (&[0x0f, 0x01, 0x00], T::Inline(IK::StoreTable)),    // sgdt [eax]
            (&[0x0f, 0x01, 0x08], T::Inline(IK::StoreTable)),    // sidt [eax]
            (&[0x0f, 0x00, 0xc0], T::Inline(IK::StoreSelector)), // sldt eax
            (&[0x0f, 0x00, 0xc8], T::Inline(IK::StoreSelector)), // str eax
            (&[0x0f, 0x01, 0xe0], T::Inline(IK::Smsw)),          // smsw eax
            (&[0x0f, 0x01, 0x10], T::Callout(CK::TableLoad)),    // lgdt
            (&[0x0f, 0x01, 0x18], T::Callout(CK::TableLoad)),    // lidt
            (&[0x0f, 0x00, 0xd0], T::Callout(CK::TableLoad)),    // lldt ax
            (&[0x0f, 0x00, 0xd8], T::Callout(CK::TableLoad)),    // ltr ax
            (&[0x0f, 0x01, 0xf0], T::Callout(CK::CrWrite)),      // lmsw ax
            (&[0x0f, 0x06], T::Callout(CK::CrWrite)),            // clts
            (&[0x0f, 0x20, 0xd8], T::Inline(IK::ReadCr)),        // mov eax, cr3
            (&[0x0f, 0x22, 0xd8], T::Callout(CK::CrWrite)),      // mov cr3, eax
            (&[0x0f, 0x21, 0xf8], T::Inline(IK::ReadDr)),        // mov eax, dr7
            (&[0x0f, 0x23, 0xf8], T::Callout(CK::DrWrite)),      // mov dr7, eax
            (&[0x0f, 0x01, 0x38], T::Callout(CK::Invlpg)),       // invlpg [eax]
            (&[0x0f, 0x09], T::Callout(CK::CacheControl)),       // wbinvd
            (&[0x0f, 0x08], T::Callout(CK::CacheControl)),       // invd
            (&[0xf4], T::Callout(CK::Hlt)),
            (&[0x0f, 0x32], T::Callout(CK::Msr)),
            (&[0x0f, 0x30], T::Callout(CK::Msr)),
            (&[0x0f, 0x31], T::Inline(IK::Rdtsc)),
            (&[0x0f, 0x33], T::Callout(CK::Rdpmc)),
            (&[0x0f, 0xa2], T::Inline(IK::Cpuid)),
            (&[0xe4, 0x60], T::Inline(IK::PortIo)), // in al, 60h
            (&[0xee], T::Inline(IK::PortIo)),       // out dx, al
            (&[0x6c], T::Callout(CK::Io)),          // insb
            (&[0xf3, 0x6f], T::Callout(CK::Io)),    // rep outsd
            (&[0x8c, 0xd8], T::Inline(IK::ReadSreg)), // mov eax, ds
            (&[0x8c, 0x28], T::Inline(IK::ReadSreg)), // mov [eax], gs
            (&[0x8e, 0xd8], T::Inline(IK::LoadSreg)), // mov ds, eax
            (&[0x8e, 0x20], T::Inline(IK::LoadSreg)), // mov fs, [eax]
            (&[0x8e, 0xd0], T::Callout(CK::SegmentLoad)), // mov ss, eax
            (&[0x17], T::Callout(CK::SegmentLoad)),       // pop ss
            (&[0x07], T::Inline(IK::LoadSreg)),           // pop es
            (&[0x0f, 0xa1], T::Inline(IK::LoadSreg)),     // pop fs
            (&[0x8e, 0xe8], T::Callout(CK::SegmentLoad)), // mov gs, eax
            (&[0x1e], T::Inline(IK::PushSreg)),  // push ds
            (&[0x0f, 0xa8], T::Inline(IK::PushSreg)), // push gs
            (&[0x1f], T::Inline(IK::LoadSreg)), // pop ds
            (&[0x0f, 0xa9], T::Callout(CK::SegmentLoad)), // pop gs
            (&[0xc5, 0x00], T::Callout(CK::SegmentLoad)), // lds eax, [eax]
            (&[0x0f, 0xb2, 0x00], T::Callout(CK::SegmentLoad)), // lss
            (&[0x0f, 0xb5, 0x00], T::Callout(CK::SegmentLoad)), // lgs
            (&[0x0f, 0x02, 0xc0], T::Callout(CK::DescriptorCheck)), // lar
            (&[0x0f, 0x03, 0xc0], T::Callout(CK::DescriptorCheck)), // lsl
            (&[0x0f, 0x00, 0xe0], T::Inline(IK::Verify)), // verr
            (&[0x0f, 0x00, 0xe8], T::Inline(IK::Verify)), // verw
            (&[0x2e, 0x0f, 0x00, 0x28], T::Inline(IK::Verify)), // verw cs:[eax]
            (&[0x9a, 0, 0, 0, 0, 0x33, 0], T::Callout(CK::FarTransfer)), // call far 33:0
            (&[0xea, 0, 0, 0, 0, 0x33, 0], T::Callout(CK::FarTransfer)), // jmp far
            (&[0xff, 0x18], T::Callout(CK::FarTransfer)), // call far [eax]
            (&[0xff, 0x28], T::Callout(CK::FarTransfer)), // jmp far [eax]
            (&[0xcb], T::Callout(CK::FarTransfer)), // retf
            (&[0xca, 4, 0], T::Callout(CK::FarTransfer)), // retf 4
            (&[0xcd, 0x80], T::Callout(CK::Interrupt)),
            (&[0xcc], T::Callout(CK::Interrupt)),
            (&[0xce], T::Callout(CK::Interrupt)),
            (&[0xf1], T::Callout(CK::Interrupt)),
            (&[0x62, 0x00], T::Ident), // bound
            (&[0x0f, 0x34], T::Callout(CK::FastSystemCall)),
            (&[0x0f, 0x35], T::Callout(CK::FastSystemCall)),
            (&[0x0f, 0x05], T::Callout(CK::FastSystemCall)),
            (&[0x0f, 0x07], T::Callout(CK::FastSystemCall)),
            (&[0x0f, 0x0b], T::Callout(CK::Undefined)),
            (&[0x65, 0x8b, 0x00], T::Callout(CK::ReservedSegment)), // mov eax, gs:[eax]
            (&[0x65, 0xa5], T::Callout(CK::ReservedSegment)),       // movsd with gs: source
            (&[0x65, 0x90], T::Callout(CK::ReservedSegment)),       // a stray gs prefix
            (&[0x2e, 0x8b, 0x00], T::Callout(CK::CsData)),          // mov eax, cs:[eax]
            (&[0x64, 0x8b, 0x00], T::Ident),                        // mov eax, fs:[eax]
            (&[0xeb, 0x00], T::Relink),
            (&[0x74, 0x00], T::Relink),
            (&[0xe8, 0, 0, 0, 0], T::Relink),
            (&[0xe2, 0x00], T::Relink), // loop
            (&[0xe3, 0x00], T::Relink), // jecxz
            (&[0xc3], T::Lookup),
            (&[0xc2, 8, 0], T::Lookup),
            (&[0xff, 0xe0], T::Lookup),                        // jmp eax
            (&[0xff, 0x10], T::Lookup),                        // call [eax]
            (&[0x01, 0xd8], T::Ident),                         // add eax, ebx
            (&[0xd9, 0xc0], T::Ident),                         // fld st0
            (&[0x0f, 0x01, 0xcb], T::Callout(CK::NotInModel)), // stac
            (&[0x0f, 0x01, 0xf9], T::Callout(CK::NotInModel)), // rdtscp
            (&[0x0f, 0x01, 0xd0], T::Callout(CK::NotInModel)), // xgetbv
            (&[0x0f, 0x01, 0xc8], T::Callout(CK::NotInModel)), // monitor
            (&[0x66, 0x0f, 0x38, 0x00, 0xc1], T::Callout(CK::NotInModel)), // pshufb (SSSE3)
        ];
        for (bytes, want) in cases {
            assert_eq!(cls(bytes).translation, *want, "{bytes:02x?}");
        }
    }

    #[test]
    fn mode_dependent_classes() {
        let i = Decoder::new(32, &[0xd9, 0xc0], DecoderOptions::NONE).decode();
        let mut m = Mode::kernel32();
        m.fpu_trap = true;
        assert_eq!(
            classify(&i, m, &Model::default()).translation,
            Translation::Callout(CK::FpuTrap)
        );
        let i = Decoder::new(32, &[0xfa], DecoderOptions::NONE).decode();
        let mut m = Mode::kernel32();
        m.cpl = 3;
        assert_eq!(
            classify(&i, m, &Model::default()).translation,
            Translation::Callout(CK::UserMode)
        );
    }

    #[test]
    fn robin_and_irvine_groups_are_represented() {
        let sr: Vec<_> = TABLE
            .iter()
            .filter(|c| c.ri == RI::SensitiveRegister)
            .map(|c| c.name)
            .collect();
        assert_eq!(sr, ["PUSHF", "POPF", "SGDT / SIDT", "SLDT", "SMSW"]);
        assert!(
            TABLE
                .iter()
                .filter(|c| c.ri == RI::ProtectionSystem)
                .count()
                >= 9
        );
        // Every class in their list is sensitive.
        assert!(TABLE
            .iter()
            .filter(|c| c.ri != RI::None)
            .all(|c| c.sensitive));
    }
}
