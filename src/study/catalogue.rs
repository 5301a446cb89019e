//! The instruction catalogue: one entry per sensitive or privileged instruction, as data.
//!
//! Each [`Case`] says how to set the instruction up and run it (`code`: a prologue that loads
//! what the instruction needs, then the instruction; the guest builder appends a jump to the
//! epilogue), what to observe afterwards (`obs`), and what a real CPU would show at a given
//! CPL (`expect`), computed from the SDM and the guest's known setup (`super::guest`'s
//! constants: its GDT, IDT, TSS, CR0, MSRs), never by running the interpreter.

use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction};
use vmm_interp::state::flags;

use super::guest::{
    self, Ctx, EPILOGUE, GDT, GDT2, GDT_LIMIT, IDT, IDT_LIMIT, LDT_SEL, MAGIC, MEM, MISC_ENABLE,
    SNIPPET, TSS2_SEL, TSS_SEL,
};

/// Whether a real CPU refuses the instruction outside CPL 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priv {
    /// #GP(0) at CPL > 0 whatever the state.
    Yes,
    /// #GP(0) when CPL > IOPL (CLI, STI, IN, OUT; IN/OUT unless the TSS I/O bitmap allows).
    Iopl,
    /// Runs at any CPL.
    No,
}

impl Priv {
    pub fn as_str(self) -> &'static str {
        match self {
            Priv::Yes => "yes",
            Priv::Iopl => "IOPL",
            Priv::No => "no",
        }
    }
}

/// Where an observed value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A general register (x86 order: EAX ECX EDX EBX ESP EBP ESI EDI) after the instruction.
    Gpr(usize),
    /// Guest memory: `size` bytes (1, 2 or 4) at a linear address.
    Mem(u32, u8),
    /// The dword `n` bytes below the top of the stack of the CPL.
    Stack(u32),
    /// EFLAGS after the instruction.
    Eflags,
    GdtrBase,
    GdtrLimit,
    IdtrLimit,
    Ldtr,
    Tr,
    Cr3,
}

/// One observed value: a label, where it comes from, and the bits compared (the value is
/// recorded and shown whole; bits outside `mask` are undefined or irrelevant).
#[derive(Clone, Copy, Debug)]
pub struct Obs {
    pub label: &'static str,
    pub src: Src,
    pub mask: u32,
}

/// An [`Obs`] literal (a literal, so that `&[...]` of them is promoted to `'static`).
macro_rules! o {
    ($label:expr, $src:expr, $mask:expr) => {
        Obs {
            label: $label,
            src: $src,
            mask: $mask,
        }
    };
}

const EAX: Obs = o!("eax", Src::Gpr(0), !0);
const ZF: Obs = o!("zf", Src::Eflags, flags::ZF);
const IF: Obs = o!("if", Src::Eflags, flags::IF);

/// What a real CPU does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Completes; the observed values (in the order of `obs`, masked).
    Values(Vec<u32>),
    /// Raises an exception with this vector and error code.
    Fault(u8, u32),
    /// Delivers a software interrupt through the IDT, pushing this CS.
    Event(u8, u16),
    /// Halts.
    Halt,
}

pub type CodeFn = fn(&mut CodeAssembler, &Ctx) -> Result<(), IcedError>;

#[derive(Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    /// What runs, in assembly.
    pub syntax: &'static str,
    pub privileged: Priv,
    pub sensitive: bool,
    /// One of Robin and Irvine's seventeen (sensitive, unprivileged) instructions.
    pub robin_irvine: bool,
    /// The host kernel emulates it under UMIP (SGDT, SIDT, SLDT, SMSW, STR).
    pub umip: bool,
    /// EFLAGS when the snippet starts.
    pub eflags: u32,
    pub code: CodeFn,
    pub obs: &'static [Obs],
    pub expect: fn(&Ctx) -> Expect,
    /// Why the expected value is what it is (the SDM rule).
    pub rule: &'static str,
}

const GP0: Expect = Expect::Fault(13, 0);

fn privileged(c: &Ctx, v: Vec<u32>) -> Expect {
    if c.cpl == 0 {
        Expect::Values(v)
    } else {
        GP0
    }
}

fn far(code: Code, sel: u16, to: u32) -> Result<Instruction, IcedError> {
    Instruction::with_far_branch(code, sel, to)
}

/// The catalogue, in the order of the report.
pub fn all() -> Vec<Case> {
    let base = flags::FIXED1 | flags::IF;
    vec![
        Case {
            name: "SGDT",
            syntax: "sgdt [mem]",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: true,
            eflags: base,
            code: |a, _| a.sgdt(ptr(MEM)),
            obs: &[o!("limit", Src::Mem(MEM, 2), !0), o!("base", Src::Mem(MEM + 2, 4), !0)],
            expect: |_| Expect::Values(vec![GDT_LIMIT as u32, GDT]),
            rule: "stores GDTR at any CPL (CR4.UMIP clear in the guest)",
        },
        Case {
            name: "SIDT",
            syntax: "sidt [mem]",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: true,
            eflags: base,
            code: |a, _| a.sidt(ptr(MEM)),
            obs: &[o!("limit", Src::Mem(MEM, 2), !0), o!("base", Src::Mem(MEM + 2, 4), !0)],
            expect: |_| Expect::Values(vec![IDT_LIMIT as u32, IDT]),
            rule: "stores IDTR at any CPL (CR4.UMIP clear)",
        },
        Case {
            name: "SLDT",
            syntax: "sldt word [mem]",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: true,
            eflags: base,
            code: |a, _| a.sldt(word_ptr(MEM)),
            obs: &[o!("ldtr", Src::Mem(MEM, 2), !0)],
            expect: |_| Expect::Values(vec![LDT_SEL as u32]),
            rule: "stores the LDTR selector at any CPL (CR4.UMIP clear)",
        },
        Case {
            name: "SMSW",
            syntax: "smsw word [mem]",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: true,
            eflags: base,
            code: |a, _| a.smsw(word_ptr(MEM)),
            obs: &[o!("msw", Src::Mem(MEM, 2), !0)],
            expect: |_| Expect::Values(vec![guest::CR0 & 0xffff]),
            rule: "stores CR0[15:0] at any CPL (CR4.UMIP clear)",
        },
        Case {
            name: "STR",
            syntax: "str word [mem]",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: true,
            eflags: base,
            code: |a, _| a.str(word_ptr(MEM)),
            obs: &[o!("tr", Src::Mem(MEM, 2), !0)],
            expect: |_| Expect::Values(vec![TSS_SEL as u32]),
            rule: "stores the TR selector at any CPL (CR4.UMIP clear)",
        },
        Case {
            name: "PUSHF",
            syntax: "pushfd; pop eax  (EFLAGS = IOPL 1, IF 0)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: flags::FIXED1 | (1 << flags::IOPL_SHIFT),
            code: |a, _| {
                a.pushfd()?;
                a.pop(eax)
            },
            obs: &[o!("pushed", Src::Gpr(0), flags::STATUS | flags::DF | flags::IF | flags::IOPL | flags::FIXED1)],
            expect: |_| Expect::Values(vec![flags::FIXED1 | (1 << flags::IOPL_SHIFT)]),
            rule: "pushes the true EFLAGS (IF and IOPL included) at any CPL",
        },
        Case {
            name: "POPF",
            syntax: "push 0x3002; popfd  (from IF 1, IOPL 0)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.push(0x3002u32)?;
                a.popfd()
            },
            obs: &[o!("if,iopl", Src::Eflags, flags::IF | flags::IOPL)],
            expect: |c| Expect::Values(vec![if c.cpl == 0 { 0x3000 } else { flags::IF }]),
            rule: "CPL 0 changes IF and IOPL; CPL 3 with IOPL 0 leaves both unchanged without faulting",
        },
        Case {
            name: "LAR",
            syntax: "lar eax, ecx  (ecx = 0x38, a DPL 0 data segment)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(eax, 0x1111_1111u32)?;
                a.mov(ecx, guest::PROBE_SEL as u32)?;
                a.lar(eax, ecx)
            },
            // Bits 19:16 of LAR's result are undefined in the SDM ("masked by 00FxFF00H"):
            // not compared (CPUs return the limit's bits 19:16 there).
            obs: &[o!("eax", Src::Gpr(0), !0x000f_0000), ZF],
            expect: |c| {
                if c.cpl == 0 {
                    Expect::Values(vec![guest::PROBE_AR, flags::ZF])
                } else {
                    Expect::Values(vec![0x1111_1111, 0])
                }
            },
            rule: "answers from the guest GDT (bits 19:16 undefined, not compared); a DPL 0 descriptor is invisible at CPL 3 (ZF = 0)",
        },
        Case {
            name: "LAR (DPL 3)",
            syntax: "lar eax, ecx  (ecx = 0x43, a DPL 3 data segment)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(eax, 0x1111_1111u32)?;
                a.mov(ecx, guest::UPROBE_SEL as u32)?;
                a.lar(eax, ecx)
            },
            obs: &[o!("eax", Src::Gpr(0), !0x000f_0000), ZF],
            expect: |_| Expect::Values(vec![guest::UPROBE_AR, flags::ZF]),
            rule: "answers from the guest GDT at any CPL (the descriptor is DPL 3; bits 19:16 not compared)",
        },
        Case {
            name: "LSL",
            syntax: "lsl eax, ecx  (ecx = 0x38, limit 0x12345)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(eax, 0x1111_1111u32)?;
                a.mov(ecx, guest::PROBE_SEL as u32)?;
                a.lsl(eax, ecx)
            },
            obs: &[EAX, ZF],
            expect: |c| {
                if c.cpl == 0 {
                    Expect::Values(vec![guest::PROBE_LIMIT, flags::ZF])
                } else {
                    Expect::Values(vec![0x1111_1111, 0])
                }
            },
            rule: "answers the guest descriptor's limit; invisible at CPL 3 (DPL 0)",
        },
        Case {
            name: "VERR",
            syntax: "verr cx  (cx = 0x38)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(ecx, guest::PROBE_SEL as u32)?;
                a.verr(cx)
            },
            obs: &[ZF],
            expect: |c| Expect::Values(vec![if c.cpl == 0 { flags::ZF } else { 0 }]),
            rule: "ZF = 1 iff readable from the CPL by the guest GDT",
        },
        Case {
            name: "VERW",
            syntax: "verw cx  (cx = 0x38)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(ecx, guest::PROBE_SEL as u32)?;
                a.verw(cx)
            },
            obs: &[ZF],
            expect: |c| Expect::Values(vec![if c.cpl == 0 { flags::ZF } else { 0 }]),
            rule: "ZF = 1 iff writable from the CPL by the guest GDT",
        },
        Case {
            name: "PUSH sreg",
            syntax: "push ss; pop eax",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.push(ss)?;
                a.pop(eax)
            },
            obs: &[o!("ss", Src::Gpr(0), 0xffff)],
            expect: |c| Expect::Values(vec![c.ds() as u32]),
            rule: "pushes the guest's selector (RPL = CPL)",
        },
        Case {
            name: "POP sreg",
            syntax: "push 0x43; pop ds; mov eax, [0x10]  (0x43: base 0x6000)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.push(guest::UPROBE_SEL as u32)?;
                a.pop(ds)?;
                a.mov(eax, dword_ptr(0x10))
            },
            obs: &[EAX],
            expect: |_| Expect::Values(vec![MAGIC]),
            rule: "loads the guest GDT descriptor (base 0x6000): reads the word at 0x6010",
        },
        Case {
            name: "MOV from sreg",
            syntax: "mov ax, cs",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.xor(eax, eax)?;
                a.mov(ax, cs)
            },
            obs: &[o!("cs", Src::Gpr(0), !0)],
            expect: |c| Expect::Values(vec![c.cs() as u32]),
            rule: "reads the guest's CS selector, whose RPL is the CPL",
        },
        Case {
            name: "MOV to sreg",
            syntax: "mov ds, ax; mov eax, [0x10]  (ax = 0x43: base 0x6000)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(eax, guest::UPROBE_SEL as u32)?;
                a.mov(ds, ax)?;
                a.mov(eax, dword_ptr(0x10))
            },
            obs: &[EAX],
            expect: |_| Expect::Values(vec![MAGIC]),
            rule: "loads the guest GDT descriptor (base 0x6000): reads the word at 0x6010",
        },
        Case {
            name: "far CALL",
            syntax: "call far cs_of_cpl:target",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, c| a.add_instruction(far(Code::Call_ptr1632, c.cs(), EPILOGUE)?),
            obs: &[o!("pushed cs", Src::Stack(4), 0xffff), o!("pushed eip", Src::Stack(8), !0)],
            expect: |c| Expect::Values(vec![c.cs() as u32, SNIPPET + 7]),
            rule: "same-privilege far call: pushes the guest's CS (RPL = CPL) and the return EIP",
        },
        Case {
            name: "far JMP",
            syntax: "jmp far cs_of_cpl:target",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, c| a.add_instruction(far(Code::Jmp_ptr1632, c.cs(), EPILOGUE)?),
            obs: &[o!("esp", Src::Gpr(4), !0)],
            expect: |c| Expect::Values(vec![c.stack_top()]),
            rule: "same-privilege far jump through the guest GDT",
        },
        Case {
            name: "far RET",
            syntax: "push cs_of_cpl; push target; retf",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, c| {
                a.push(c.cs() as u32)?;
                a.push(EPILOGUE)?;
                a.retf()
            },
            obs: &[o!("esp", Src::Gpr(4), !0)],
            expect: |c| Expect::Values(vec![c.stack_top()]),
            rule: "same-privilege far return through the guest GDT",
        },
        Case {
            name: "INT n",
            syntax: "int 0x21  (a DPL 3 interrupt gate)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: true,
            umip: false,
            eflags: base,
            code: |a, _| a.int(0x21),
            obs: &[],
            expect: |c| Expect::Event(0x21, c.cs()),
            rule: "delivered through the guest IDT (gate DPL 3), pushing the guest's CS",
        },
        Case {
            name: "CLI",
            syntax: "cli  (IF 1, IOPL 0)",
            privileged: Priv::Iopl,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.cli(),
            obs: &[IF],
            expect: |c| privileged(c, vec![0]),
            rule: "clears IF at CPL <= IOPL, else #GP(0)",
        },
        Case {
            name: "STI",
            syntax: "sti  (IF 0, IOPL 0)",
            privileged: Priv::Iopl,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: flags::FIXED1,
            code: |a, _| {
                a.sti()?;
                a.nop()
            },
            obs: &[IF],
            expect: |c| privileged(c, vec![flags::IF]),
            rule: "sets IF at CPL <= IOPL, else #GP(0)",
        },
        Case {
            name: "HLT",
            syntax: "hlt",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.hlt(),
            obs: &[],
            expect: |c| if c.cpl == 0 { Expect::Halt } else { GP0 },
            rule: "halts at CPL 0 (nothing wakes this guest), else #GP(0)",
        },
        Case {
            name: "MOV from CR0",
            syntax: "mov eax, cr0",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.mov(eax, cr0),
            obs: &[EAX],
            expect: |c| privileged(c, vec![guest::CR0]),
            rule: "reads CR0 at CPL 0, else #GP(0)",
        },
        Case {
            name: "MOV to CR3",
            syntax: "mov cr3, eax  (eax = 0x7000)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(eax, 0x7000u32)?;
                a.mov(cr3, eax)
            },
            obs: &[o!("cr3", Src::Cr3, !0)],
            expect: |c| privileged(c, vec![0x7000]),
            rule: "writes CR3 at CPL 0, else #GP(0)",
        },
        Case {
            name: "LGDT",
            syntax: "lgdt [mem+0x20]  (a copy of the GDT at 0x1100)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.lgdt(ptr(MEM + 0x20)),
            obs: &[o!("gdtr.base", Src::GdtrBase, !0), o!("gdtr.limit", Src::GdtrLimit, !0)],
            expect: |c| privileged(c, vec![GDT2, GDT_LIMIT as u32]),
            rule: "loads GDTR at CPL 0, else #GP(0)",
        },
        Case {
            name: "LIDT",
            syntax: "lidt [mem+0x28]  (limit 0x3ff)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.lidt(ptr(MEM + 0x28)),
            obs: &[o!("idtr.limit", Src::IdtrLimit, !0)],
            expect: |c| privileged(c, vec![0x3ff]),
            rule: "loads IDTR at CPL 0, else #GP(0)",
        },
        Case {
            name: "LLDT",
            syntax: "lldt ax  (ax = 0)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.xor(eax, eax)?;
                a.lldt(ax)
            },
            obs: &[o!("ldtr", Src::Ldtr, !0)],
            expect: |c| privileged(c, vec![0]),
            rule: "loads LDTR at CPL 0, else #GP(0)",
        },
        Case {
            name: "LTR",
            syntax: "ltr ax  (ax = 0x48, an available TSS)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(eax, TSS2_SEL as u32)?;
                a.ltr(ax)
            },
            obs: &[o!("tr", Src::Tr, !0)],
            expect: |c| privileged(c, vec![TSS2_SEL as u32]),
            rule: "loads TR at CPL 0, else #GP(0)",
        },
        Case {
            name: "INVLPG",
            syntax: "invlpg [mem]",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.invlpg(ptr(MEM)),
            obs: &[],
            expect: |c| privileged(c, vec![]),
            rule: "completes at CPL 0, else #GP(0)",
        },
        Case {
            name: "IN",
            syntax: "in al, 0x80  (IOPL 0; the TSS bitmap denies 0x80)",
            privileged: Priv::Iopl,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.in_(al, 0x80),
            obs: &[],
            expect: |c| privileged(c, vec![]),
            rule: "completes at CPL <= IOPL or when the I/O bitmap allows the port, else #GP(0)",
        },
        Case {
            name: "OUT",
            syntax: "out 0x80, al  (IOPL 0; the TSS bitmap denies 0x80)",
            privileged: Priv::Iopl,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.out(0x80, al),
            obs: &[],
            expect: |c| privileged(c, vec![]),
            rule: "completes at CPL <= IOPL or when the I/O bitmap allows the port, else #GP(0)",
        },
        Case {
            name: "RDMSR",
            syntax: "rdmsr  (ecx = 0x1a0, IA32_MISC_ENABLE)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(ecx, 0x1a0u32)?;
                a.rdmsr()
            },
            obs: &[EAX, o!("edx", Src::Gpr(2), !0)],
            expect: |c| privileged(c, vec![MISC_ENABLE, 0]),
            rule: "reads the guest's MSR at CPL 0, else #GP(0)",
        },
        Case {
            name: "WRMSR",
            syntax: "wrmsr; rdmsr  (ecx = 0x1a0, edx:eax = 4)",
            privileged: Priv::Yes,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.mov(ecx, 0x1a0u32)?;
                a.mov(eax, 4u32)?;
                a.xor(edx, edx)?;
                a.wrmsr()?;
                a.xor(eax, eax)?;
                a.rdmsr()
            },
            obs: &[EAX],
            expect: |c| privileged(c, vec![4]),
            rule: "writes the MSR at CPL 0 (read back), else #GP(0)",
        },
        Case {
            name: "CPUID",
            syntax: "cpuid  (eax = 0)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| {
                a.xor(eax, eax)?;
                a.cpuid()
            },
            obs: &[EAX, o!("ebx", Src::Gpr(3), !0), o!("ecx", Src::Gpr(1), !0), o!("edx", Src::Gpr(2), !0)],
            expect: |_| {
                let r = guest::virtual_cpu().cpuid(0, 0);
                Expect::Values(vec![r[0], r[1], r[2], r[3]])
            },
            rule: "answers the virtual CPU model (P6-class, GenuineIntel) at any CPL",
        },
        Case {
            name: "RDTSC",
            syntax: "rdtsc  (CR4.TSD = 0)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.rdtsc(),
            obs: &[],
            expect: |_| Expect::Values(vec![]),
            rule: "runs at any CPL unless CR4.TSD (the value is time: not compared)",
        },
        Case {
            name: "SYSENTER",
            syntax: "sysenter",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, _| a.sysenter(),
            obs: &[],
            expect: |_| Expect::Fault(6, 0),
            rule: "the virtual CPU has no SEP (CPUID.1:EDX[11] = 0): #UD at any CPL",
        },
        Case {
            name: "IRET",
            syntax: "push 0x2; push cs_of_cpl; push target; iretd  (from IF 1)",
            privileged: Priv::No,
            sensitive: true,
            robin_irvine: false,
            umip: false,
            eflags: base,
            code: |a, c| {
                a.push(flags::FIXED1)?;
                a.push(c.cs() as u32)?;
                a.push(EPILOGUE)?;
                a.iretd()
            },
            obs: &[IF],
            expect: |c| Expect::Values(vec![if c.cpl == 0 { 0 } else { flags::IF }]),
            rule: "same-privilege IRET: CPL 0 restores IF; CPL 3 with IOPL 0 leaves IF unchanged",
        },
    ]
}
