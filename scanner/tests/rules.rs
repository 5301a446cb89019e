//! One test per rewrite rule: translate, validate, decode the fragment back and look at the
//! emitted sequence.
mod common;
use common::*;
use iced_x86::{Code, Mnemonic, Register};
use vmm_scanner::classify::CalloutKind;
use vmm_scanner::{Abi, CalloutOp, Config, Mode};

fn has(f: &vmm_scanner::Fragment, line: &str) -> bool {
    listing(f).iter().any(|l| l == line)
}

fn assert_has(f: &vmm_scanner::Fragment, lines: &[&str]) {
    let l = listing(f);
    // The lines appear in this order.
    let mut at = 0;
    for want in lines {
        match l[at..].iter().position(|x| x == want) {
            Some(p) => at += p + 1,
            None => panic!("`{want}` not found (in order) in:\n{}", l.join("\n")),
        }
    }
}

/// The callouts of a fragment as (op, eip, next, arg) from the stores before each far call.
fn callouts(f: &vmm_scanner::Fragment) -> Vec<(u32, Option<u32>, u32, u32)> {
    let a = Abi::default();
    let is = decode(f);
    let mut out = Vec::new();
    for (k, i) in is.iter().enumerate() {
        if i.code() == Code::Call_m1632 {
            let mut op = 0;
            let mut eip = None;
            let mut next = 0;
            let mut arg = 0;
            for j in &is[k.saturating_sub(5)..k] {
                if j.code() == Code::Mov_rm32_imm32 && j.memory_segment() == Register::GS {
                    let d = j.memory_displacement32();
                    let v = j.immediate32();
                    if d == a.callout_op {
                        op = v
                    } else if d == a.callout_eip {
                        eip = Some(v)
                    } else if d == a.callout_next {
                        next = v
                    } else if d == a.callout_arg {
                        arg = v
                    }
                }
            }
            out.push((op, eip, next, arg));
        }
    }
    out
}

const EMU: u32 = CalloutOp::Emulate as u32;

#[test]
fn entry_has_a_flag_free_pending_interrupt_check() {
    let (_, f) = tr(&[0x90, 0xc3]);
    let is = decode(&f);
    // A trampoline to the interrupt stub precedes the entry point.
    assert_eq!(f.entry_off, 5);
    assert_eq!(is[0].code(), Code::Jmp_rel32_32);
    assert_has(
        &f,
        &[
            "mov gs:[3Ch],ecx",
            "movzx ecx,word ptr gs:[0]",
            "lea ecx,[ecx-101h]",
            "jecxz 0FFC00000h",
            "mov ecx,gs:[3Ch]",
            "nop",
        ],
    );
    assert!(callouts(&f).contains(&(CalloutOp::PendingIrq as u32, Some(0x1000), 0x1000, 0)));
    // Nothing between the entry and the first guest instruction writes flags.
    for i in &is[1..6] {
        assert_eq!(i.rflags_modified(), 0, "{:?}", i.code());
    }
}

#[test]
fn ident_copies() {
    let (_, f) = tr(&[0x01, 0xd8, 0x64, 0x8b, 0x03, 0x0f, 0xaf, 0xc1, 0xc3]);
    assert_has(&f, &["add eax,ebx", "mov eax,fs:[ebx]", "imul eax,ecx"]);
    // The PC map names the guest instruction of each copied instruction.
    let is = decode(&f);
    let add = is.iter().find(|i| i.mnemonic() == Mnemonic::Add).unwrap();
    assert_eq!(
        f.guest_state_at(add.ip() as u32 - f.tc_addr)
            .unwrap()
            .guest_eip,
        0x1000
    );
    let imul = is.iter().find(|i| i.mnemonic() == Mnemonic::Imul).unwrap();
    assert_eq!(
        f.guest_state_at(imul.ip() as u32 - f.tc_addr)
            .unwrap()
            .guest_eip,
        0x1005
    );
}

#[test]
fn sixteen_bit_code_is_reencoded_as_32_bit() {
    let m = Mode {
        code32: false,
        stack32: false,
        ..Mode::kernel32()
    };
    // mov ax, [bx+si]; add ax, 1; ret
    let (_, f) = tr_mode(&[0x8b, 0x00, 0x05, 0x01, 0x00, 0xc3], 0x100, m);
    assert_has(&f, &["mov ax,[bx+si]", "add ax,1"]);
    // RET with a 16-bit stack: a callout.
    assert!(callouts(&f).contains(&(EMU, Some(0x105), 0x106, CalloutKind::Stack16 as u32)));
}

#[test]
fn cli_sti() {
    let (_, f) = tr(&[0xfa, 0xfb, 0x90, 0x90, 0xc3]);
    assert_has(
        &f,
        &[
            "mov byte ptr gs:[0],0",
            "mov byte ptr gs:[0],1",
            "nop",
            // The check site: a jump through check slot 0 (to the next instruction while no
            // interrupt is pending), then the next guest instruction.
            "jmp dword ptr gs:[121000h]",
            "nop",
            // Its stub, out of line: the full check.
            "mov gs:[3Ch],ecx",
            "movzx ecx,word ptr gs:[0]",
            "lea ecx,[ecx-101h]",
        ],
    );
    assert_eq!(f.sites.len(), 1);
    assert_eq!(f.sites[0].slot, 0);
    let is = decode(&f);
    let site = is.iter().position(|i| i.code() == Code::Jmp_rm32).unwrap();
    assert_eq!(f.sites[0].cont_off, is[site + 1].ip() as u32 - f.tc_addr, "continues at the next instruction");
    assert!(is.iter().any(|i| i.ip() as u32 - f.tc_addr == f.sites[0].stub_off && i.code() == Code::Mov_rm32_r32));
    // The check after STI comes after the shadow instruction, reporting its successor.
    assert!(callouts(&f).contains(&(CalloutOp::PendingIrq as u32, Some(0x1003), 0x1003, 0)));
    assert!(!callouts(&f).iter().any(|c| c.1 == Some(0x1002)));
}

#[test]
fn pushf() {
    let (_, f) = tr(&[0x9c, 0xc3]);
    assert_has(
        &f,
        &[
            "pushfd",
            "mov gs:[30h],eax",
            "lahf",
            "seto al",
            "mov gs:[34h],eax",
            "mov eax,[esp]",
            "and eax,0FFC08CFFh",
            // IF = vif: 0 or 1 added twice to AH (bit 9 clear after the AND).
            "add ah,gs:[0]",
            "add ah,gs:[0]",
            "or eax,gs:[4]",
            "mov [esp],eax",
            "mov eax,gs:[34h]",
            "add al,7Fh",
            "sahf",
            "mov eax,gs:[30h]",
        ],
    );
    // No host POPF (slow), nothing written below ESP.
    assert!(!listing(&f).iter().any(|l| l.starts_with("popf") || l.contains("[esp-")));
    // 16-bit PUSHF pushes a word.
    let (_, f) = tr(&[0x66, 0x9c, 0xc3]);
    assert_has(
        &f,
        &[
            "pushf",
            "movzx eax,word ptr [esp]",
            "mov [esp],ax",
        ],
    );
}

#[test]
fn popf() {
    let (_, f) = tr(&[0x9d, 0x90, 0xc3]);
    assert_has(
        &f,
        &[
            "mov gs:[30h],eax",
            "mov eax,[esp]",
            "lea esp,[esp+4]",
            "mov gs:[34h],eax",
            "bt eax,9",
            "setb gs:[0]",
            "and eax,247100h",
            "and dword ptr gs:[4],1A0000h",
            "or gs:[4],eax",
            "test ah,1",
            "bt eax,0Ah",
            "cld",
            "std",
            "shr eax,0Bh",
            "and eax,1",
            "mov ah,gs:[34h]",
            "add al,7Fh",
            "sahf",
            "mov eax,gs:[30h]",
            // The pending-interrupt check site, then the next guest instruction.
            "jmp dword ptr gs:[121000h]",
            "nop",
        ],
    );
    assert_eq!(f.sites.len(), 1);
    let c = callouts(&f);
    assert!(c.contains(&(CalloutOp::PendingIrq as u32, Some(0x1001), 0x1001, 0)));
    assert!(c.contains(&(
        CalloutOp::PendingIrq as u32,
        Some(0x1001),
        0x1001,
        CalloutKind::PopfTrap as u32
    )));
    // The only stack access is the read of the image: no write below ESP.
    assert!(!listing(&f).iter().any(|l| l.contains("[esp-")));
}

#[test]
fn segment_selector_reads() {
    let a = Abi::default();
    // mov eax, ds; mov bx, ss; mov [eax], cs; push gs; push es (16-bit); ret
    let (_, f) = tr(&[
        0x8c, 0xd8, 0x66, 0x8c, 0xd3, 0x8c, 0x08, 0x0f, 0xa8, 0x66, 0x06, 0xc3,
    ]);
    assert_eq!(a.vseg_of(Register::DS), 0x5c);
    assert_has(
        &f,
        &[
            "mov eax,gs:[5Ch]",
            "mov bx,gs:[58h]",
            "mov gs:[30h],ecx",
            "mov cx,gs:[54h]",
            "mov [eax],cx",
            "mov ecx,gs:[30h]",
            "push dword ptr gs:[64h]",
            "push word ptr gs:[50h]",
        ],
    );
    // The store to guest memory restores ECX if it faults.
    let is = decode(&f);
    let st = is
        .iter()
        .find(|i| i.code() == Code::Mov_rm16_r16 && i.memory_base() == Register::EAX)
        .unwrap();
    let pc = f.guest_state_at(st.ip() as u32 - f.tc_addr).unwrap();
    assert_eq!(pc.guest_eip, 0x1005);
    assert_eq!(pc.recovery.restore[0], Some((Register::ECX, a.slot(0))));
}

#[test]
fn control_register_and_debug_register_reads() {
    // mov eax, cr0; mov ebx, cr3; mov ecx, cr2; mov edx, cr4; mov esi, dr7; mov eax, dr4; ret
    let (_, f) = tr(&[
        0x0f, 0x20, 0xc0, 0x0f, 0x20, 0xdb, 0x0f, 0x20, 0xd1, 0x0f, 0x20, 0xe2, 0x0f, 0x21, 0xfe,
        0x0f, 0x21, 0xe0, 0xc3,
    ]);
    assert_has(
        &f,
        &[
            "mov eax,gs:[80h]",
            "mov ebx,gs:[8Ch]",
            "mov ecx,gs:[88h]",
            "mov edx,gs:[90h]",
            "mov esi,gs:[0BCh]",
        ],
    );
    assert!(callouts(&f).contains(&(EMU, Some(0x100f), 0x1012, CalloutKind::DrWrite as u32)));
}

#[test]
fn descriptor_table_stores() {
    // sgdt [eax]; sidt [ebx+8]; sldt ecx; str word [esi]; smsw eax; smsw [edx]; ret
    let (_, f) = tr(&[
        0x0f, 0x01, 0x00, 0x0f, 0x01, 0x4b, 0x08, 0x0f, 0x00, 0xc1, 0x0f, 0x00, 0x0e, 0x0f, 0x01,
        0xe0, 0x0f, 0x01, 0x22, 0xc3,
    ]);
    assert_has(
        &f,
        &[
            "mov gs:[30h],ecx",
            "xchg [eax],cl",
            "xchg [eax],cl",
            "mov ecx,gs:[72h]",
            "mov [eax+2],ecx",
            "mov cx,gs:[70h]",
            "mov [eax],cx",
            "mov ecx,gs:[30h]",
            "mov gs:[30h],eax",
            "xchg [ebx+8],al",
            "xchg [ebx+8],al",
            "mov eax,gs:[7Ah]",
            "mov [ebx+0Ah],eax",
            "mov ax,gs:[78h]",
            "mov [ebx+8],ax",
            "mov eax,gs:[30h]",
            "mov ecx,gs:[68h]",
            "mov gs:[30h],eax",
            "mov ax,gs:[6Ch]",
            "mov [esi],ax",
            "mov eax,gs:[80h]",
            "mov ax,gs:[80h]",
            "mov [edx],ax",
        ],
    );
}

#[test]
fn rdtsc_adds_the_offset_and_keeps_flags() {
    let (_, f) = tr(&[0x0f, 0x31, 0xc3]);
    assert_has(
        &f,
        &[
            "lahf",
            "seto al",
            "mov gs:[30h],eax",
            "rdtsc",
            "add eax,gs:[0C0h]",
            "adc edx,gs:[0C4h]",
            "mov gs:[34h],eax",
            "mov eax,gs:[30h]",
            "add al,7Fh",
            "sahf",
            "mov eax,gs:[34h]",
        ],
    );
}

#[test]
fn cpuid_from_the_table() {
    let (_, f) = tr(&[0x0f, 0xa2, 0xc3]);
    assert_has(
        &f,
        &[
            "mov gs:[30h],eax",
            "lahf",
            "seto al",
            "mov gs:[34h],eax",
            "mov eax,gs:[30h]",
            "cmp eax,gs:[0C8h]",
            "shl eax,4",
            "mov ebx,gs:[eax+104h]",
            "mov ecx,gs:[eax+108h]",
            "mov edx,gs:[eax+10Ch]",
            "mov eax,gs:[eax+100h]",
            "sahf",
        ],
    );
    assert!(callouts(&f).contains(&(EMU, Some(0x1000), 0x1002, CalloutKind::CpuidLeaf as u32)));
}

#[test]
fn heavy_instructions_are_callouts() {
    // out dx, al; mov ss, ax; in al, 60h; hlt; wrmsr; invlpg [eax]; lgdt [eax]; ret
    let (u, f) = tr(&[0xee, 0x8e, 0xd0, 0x90]);
    assert_eq!(u.insns.len(), 2, "MOV SS ends the unit");
    let c = callouts(&f);
    assert!(c.contains(&(EMU, Some(0x1000), 0x1001, CalloutKind::Io as u32)));
    assert!(c.contains(&(EMU, Some(0x1001), 0x1003, CalloutKind::SegmentLoad as u32)));
    // After the segment load, an exit to the next instruction.
    assert_eq!(f.exits.len(), 1);
    assert_eq!(f.exits[0].target_eip, 0x1003);
    // The callout sequence itself.
    assert_has(
        &f,
        &[
            "mov gs:[8],esp",
            "mov gs:[0Ch],ss",
            "lss esp,gs:[10h]",
            "mov dword ptr gs:[20h],1",
            "mov dword ptr gs:[24h],1000h",
            "mov dword ptr gs:[28h],1001h",
            "mov dword ptr gs:[2Ch],0Dh",
            "call far fword ptr gs:[18h]",
            "lss esp,gs:[8]",
        ],
    );
    for (code, kind) in [
        (&[0xf4][..], CalloutKind::Hlt),
        (&[0x0f, 0x30], CalloutKind::Msr),
        (&[0x0f, 0x01, 0x38], CalloutKind::Invlpg),
        (&[0x0f, 0x01, 0x10], CalloutKind::TableLoad),
        (&[0xcd, 0x80], CalloutKind::Interrupt),
        (&[0xcf], CalloutKind::Iret),
        (&[0xea, 0, 0, 0, 0, 0x33, 0], CalloutKind::FarTransfer),
        (&[0x0f, 0x34], CalloutKind::FastSystemCall),
        (&[0x65, 0xa1, 0x14, 0, 0, 0], CalloutKind::ReservedSegment),
        (&[0x2e, 0xa1, 0x14, 0, 0, 0], CalloutKind::CsData),
    ] {
        let (_, f) = tr(code);
        assert!(
            callouts(&f)
                .iter()
                .any(|c| c.0 == EMU && c.1 == Some(0x1000) && c.3 == kind as u32),
            "{code:02x?}"
        );
    }
}

#[test]
fn direct_branches_are_relinked() {
    // jmp +0x10
    let (_, f) = tr(&[0xeb, 0x10]);
    assert_eq!(f.exits.len(), 1);
    assert_eq!(f.exits[0].target_eip, 0x1012);
    assert!(callouts(&f).contains(&(CalloutOp::Exit as u32, Some(0x1012), 0x1012, 0)));
    // call +0 pushes the guest return address.
    let (_, f) = tr(&[0xe8, 0, 0, 0, 0]);
    assert_has(&f, &["push 1005h"]);
    assert_eq!(f.exits[0].target_eip, 0x1005);
    // jz: taken and fall-through exits.
    let (_, f) = tr(&[0x74, 0x10]);
    assert_eq!(
        f.exits.iter().map(|e| e.target_eip).collect::<Vec<_>>(),
        vec![0x1012, 0x1002]
    );
    let is = decode(&f);
    assert!(is.iter().any(|i| i.code() == Code::Je_rel32_32));
    // loop: a short loop to the taken exit, the fall-through exit in between.
    let (_, f) = tr(&[0xe2, 0xfe]);
    assert_eq!(
        f.exits.iter().map(|e| e.target_eip).collect::<Vec<_>>(),
        vec![0x1002, 0x1000]
    );
    assert!(decode(&f)
        .iter()
        .any(|i| i.code() == Code::Loop_rel8_32_ECX));
    // 16-bit code: a 16-bit jcxz keeps CX as its counter.
    let m = Mode {
        code32: false,
        stack32: false,
        ..Mode::kernel32()
    };
    let (_, f) = tr_mode(&[0xe3, 0x10], 0x100, m);
    assert!(decode(&f).iter().any(|i| i.code() == Code::Jcxz_rel8_32));
    assert_eq!(
        f.exits.iter().map(|e| e.target_eip).collect::<Vec<_>>(),
        vec![0x102, 0x112]
    );
}

#[test]
fn returns_and_indirect_branches_look_up_the_table() {
    let (_, f) = tr(&[0xc2, 8, 0]);
    assert_has(
        &f,
        &[
            "mov gs:[40h],eax",
            "mov gs:[44h],ecx",
            "pop eax",
            "lea esp,[esp+8]",
            "movzx ecx,ax",
            "mov ecx,gs:[ecx*8+1000h]",
            "lea ecx,[ecx+eax]",
            // Miss: the target to the callout, EAX and ECX back.
            "mov gs:[24h],eax",
            "mov eax,gs:[40h]",
            "mov ecx,gs:[44h]",
            // Hit: the entry's fragment, EAX and ECX back, jump.
            "movzx ecx,ax",
            "mov ecx,gs:[ecx*8+1004h]",
            "mov gs:[38h],ecx",
            "mov eax,gs:[40h]",
            "mov ecx,gs:[44h]",
            "jmp dword ptr gs:[38h]",
        ],
    );
    // A plain RET pops the target and nothing more; the POP carries no recovery (it faults
    // before it changes EAX or ESP).
    let (_, g) = tr(&[0xc3]);
    assert_has(&g, &["mov gs:[44h],ecx", "pop eax", "movzx ecx,ax"]);
    assert!(!listing(&g).iter().any(|l| l.starts_with("lea esp")));
    let pop = decode(&g)
        .into_iter()
        .find(|i| i.code() == Code::Pop_r32)
        .unwrap();
    let pc = g.guest_state_at(pop.ip() as u32 - g.tc_addr).unwrap();
    assert_eq!(
        (pc.guest_eip, pc.recovery.restore, pc.recovery.esp_adjust),
        (0x1000, [None, None], 0)
    );
    assert!(callouts(&f)
        .iter()
        .any(|c| c.0 == CalloutOp::IndirectMiss as u32 && c.1.is_none()));
    // call [eax+4]: target first, then the guest return address; the push restores EAX.
    let (_, f) = tr(&[0xff, 0x50, 0x04]);
    assert_has(&f, &["mov eax,[eax+4]", "push 1003h", "movzx ecx,ax"]);
    let is = decode(&f);
    let push = is.iter().find(|i| i.code() == Code::Pushd_imm32).unwrap();
    let pc = f.guest_state_at(push.ip() as u32 - f.tc_addr).unwrap();
    assert_eq!(pc.guest_eip, 0x1000);
    assert_eq!(
        pc.recovery.restore[0],
        Some((Register::EAX, Abi::default().slot(4)))
    );
    // jmp ecx; 16-bit jmp word [ebx].
    let (_, f) = tr(&[0xff, 0xe1]);
    assert!(has(&f, "mov eax,ecx"));
    let (_, f) = tr(&[0x66, 0xff, 0x23]);
    assert!(has(&f, "movzx eax,word ptr [ebx]"));
}

#[test]
fn unit_end_markers() {
    let (_, f) = tr(&[0x90, 0x0f, 0x04]);
    assert!(callouts(&f).contains(&(CalloutOp::Invalid as u32, Some(0x1001), 0, 0)));
    let (_, f) = tr(&[0x90, 0xb8, 1]);
    assert!(callouts(&f).contains(&(CalloutOp::FetchFault as u32, Some(0x1001), 0, 0)));
    // Never-returning callouts are followed by a UD2 tripwire.
    assert!(decode(&f).iter().any(|i| i.code() == Code::Ud2));
}

#[test]
fn data_segment_loads_use_the_selector_table() {
    let a = Abi::default();
    // mov ds, ax; pop es; mov fs, [ecx+4]; pop ds (16-bit); ret
    let code = [0x8e, 0xd8, 0x07, 0x8e, 0x61, 0x04, 0x66, 0x1f, 0xc3];
    let (u, f) = tr(&code);
    assert_eq!(u.insns.len(), 5, "data-segment loads do not end the unit");
    assert_eq!((a.slot(5), a.slot(1), a.seg_table), (0x44, 0x34, 0x101000));
    assert_has(
        &f,
        &[
            "mov gs:[44h],ecx",
            "movzx ecx,ax",
            "mov gs:[34h],ecx",
            "movzx ecx,word ptr gs:[ecx*2+101000h]",
            "mov ds,cx",
            "mov ecx,gs:[34h]",
            "mov gs:[5Ch],ecx",
            "mov ecx,gs:[44h]",
            // pop es: the guest's 32-bit POP reads a dword.
            "mov ecx,[esp]",
            "movzx ecx,cx",
            "mov es,cx",
            "mov gs:[50h],ecx",
            "lea esp,[esp+4]",
            "movzx ecx,word ptr [ecx+4]",
            "mov fs,cx",
            "mov gs:[60h],ecx",
            "movzx ecx,word ptr [esp]",
            "mov ds,cx",
            "lea esp,[esp+2]",
        ],
    );
    // An empty entry: the callout of before, then the fragment goes on.
    let c = callouts(&f);
    for (eip, next) in [(0x1000, 0x1002), (0x1002, 0x1003), (0x1003, 0x1006), (0x1006, 0x1008)] {
        assert!(c.contains(&(EMU, Some(eip), next, CalloutKind::SegmentLoad as u32)), "{eip:#x}: {c:?}");
    }
    let is = decode(&f);
    for i in &is {
        assert_eq!(i.rflags_modified(), 0, "flag-free: {:?}", i.code());
    }
    // What can fault (the guest's operand, the segment load) restores ECX.
    for i in &is {
        let faults = matches!(i.code(), Code::Mov_Sreg_r32m16)
            || (matches!(i.code(), Code::Mov_r32_rm32 | Code::Movzx_r32_rm16)
                && i.op1_kind() == iced_x86::OpKind::Memory
                && i.memory_segment() != Register::GS);
        if faults {
            let pc = f.guest_state_at(i.ip() as u32 - f.tc_addr).unwrap();
            assert_eq!(pc.recovery.restore[0], Some((Register::ECX, a.slot(5))), "{i}");
        }
    }
    // SS and GS: callouts that end the unit; at CPL 3: callouts.
    for code in [&[0x8e, 0xd0, 0x90][..], &[0x17, 0x90], &[0x8e, 0xe8, 0x90], &[0x0f, 0xa9, 0x90]] {
        let (u, f) = tr(code);
        assert_eq!(u.insns.len(), 1, "{code:02x?}");
        assert!(callouts(&f).iter().any(|c| c.0 == EMU && c.3 == CalloutKind::SegmentLoad as u32));
    }
    let (_, f) = tr_mode(&code, 0x1000, Mode { cpl: 3, ..Mode::kernel32() });
    assert!(callouts(&f).contains(&(EMU, Some(0x1000), 0x1002, CalloutKind::UserMode as u32)));
    // With a 16-bit stack, POP is a callout.
    let (_, f) = tr_mode(&[0x1f, 0xc3], 0x1000, Mode { stack32: false, ..Mode::kernel32() });
    assert!(callouts(&f).contains(&(EMU, Some(0x1000), 0x1001, CalloutKind::Stack16 as u32)));
}

#[test]
fn verr_verw_use_the_selector_table() {
    // verw ax; verr word [ebx+2]; ret
    let (u, f) = tr(&[0x0f, 0x00, 0xe8, 0x0f, 0x00, 0x63, 0x02, 0xc3]);
    assert_eq!(u.insns.len(), 3);
    assert_has(
        &f,
        &[
            "mov gs:[44h],ecx",
            "movzx ecx,ax",
            "movzx ecx,word ptr gs:[ecx*2+101000h]",
            "verw cx",
            "mov ecx,gs:[44h]",
            "movzx ecx,word ptr [ebx+2]",
            "movzx ecx,word ptr gs:[ecx*2+101000h]",
            "verr cx",
            "mov ecx,gs:[44h]",
        ],
    );
    let c = callouts(&f);
    assert!(c.contains(&(EMU, Some(0x1000), 0x1003, CalloutKind::DescriptorCheck as u32)), "{c:?}");
    assert!(c.contains(&(EMU, Some(0x1003), 0x1007, CalloutKind::DescriptorCheck as u32)), "{c:?}");
    // Only the host VERR/VERW writes flags (ZF, as the guest's does).
    for i in decode(&f) {
        if !matches!(i.mnemonic(), Mnemonic::Verr | Mnemonic::Verw) {
            assert_eq!(i.rflags_modified(), 0, "{:?}", i.code());
        }
    }
    // A `cs:` operand: read through ES loaded with the CS shadow; a fault restores ES too.
    let a = Abi::default();
    let (_, f) = tr(&[0x2e, 0x0f, 0x00, 0x28, 0xc3]); // verw cs:[eax]
    assert_has(
        &f,
        &[
            "mov gs:[44h],ecx",
            "mov gs:[38h],es",
            "mov es,gs:[0CCh]",
            "movzx ecx,word ptr es:[eax]",
            "mov es,gs:[38h]",
            "movzx ecx,word ptr gs:[ecx*2+101000h]",
            "verw cx",
        ],
    );
    let is = decode(&f);
    let rd = is.iter().find(|i| i.code() == Code::Movzx_r32_rm16 && i.memory_segment() == Register::ES).unwrap();
    let pc = f.guest_state_at(rd.ip() as u32 - f.tc_addr).unwrap();
    assert_eq!(pc.recovery.restore, [Some((Register::ECX, a.slot(5))), Some((Register::ES, a.slot(2)))]);
    assert!(callouts(&f).contains(&(EMU, Some(0x1000), 0x1004, CalloutKind::DescriptorCheck as u32)));
    // LAR and LSL stay callouts.
    let (_, f) = tr(&[0x0f, 0x02, 0xc0, 0xc3]);
    assert!(callouts(&f).contains(&(EMU, Some(0x1000), 0x1003, CalloutKind::DescriptorCheck as u32)));
}

#[test]
fn user_mode_makes_inline_rules_callouts() {
    let m = Mode {
        cpl: 3,
        ..Mode::kernel32()
    };
    let (_, f) = tr_mode(&[0xfa, 0x9c, 0xc3], 0x1000, m);
    let c = callouts(&f);
    assert!(c.contains(&(EMU, Some(0x1000), 0x1001, CalloutKind::UserMode as u32)));
    assert!(c.contains(&(EMU, Some(0x1001), 0x1002, CalloutKind::UserMode as u32)));
}

#[test]
fn miss_routine_validates() {
    let abi = Abi::default();
    let code = vmm_scanner::emit::ibl_miss_routine(&abi, TC).unwrap();
    let f = vmm_scanner::Fragment {
        tc_addr: TC,
        code,
        entry_off: 0,
        body_off: 0,
        start_eip: 0,
        exits: vec![],
        pc_map: vec![],
        sites: vec![],
    };
    vmm_scanner::validate::check_fragment(&f, &abi, &Default::default()).unwrap();
    // Only target 0 reaches it (an empty entry's tag is 0): the callout is for target 0, with
    // every guest register as the hit path left it.
    assert_has(
        &f,
        &[
            "mov dword ptr gs:[20h],3",
            "mov dword ptr gs:[24h],0",
            "call far fword ptr gs:[18h]",
        ],
    );
    assert!(
        !listing(&f)
            .iter()
            .any(|l| l.contains("ax") || l.contains("cx")),
        "the routine touches no guest register"
    );
}

#[test]
fn validator_rejects_what_must_never_be_emitted() {
    let abi = Abi::default();
    let bad: &[&[u8]] = &[
        &[0xcd, 0x80],                      // int 80h
        &[0xcc],                            // int3
        &[0x0f, 0x05],                      // syscall
        &[0x0f, 0x34],                      // sysenter
        &[0xea, 0, 0, 0, 0, 0x33, 0],       // jmp far 33h:0
        &[0xff, 0x1d, 0, 0, 0, 0],          // call far [0]
        &[0x65, 0xff, 0x1d, 0x20, 0, 0, 0], // call far gs:[20h] (not the gate)
        &[0x8e, 0xe8],                      // mov gs, eax
        &[0x0f, 0xa9],                      // pop gs
        &[0x65, 0xa1, 0, 0, 0x10, 0],       // mov eax, gs:[100000h] (outside the region)
        &[0x2e, 0xa1, 0, 0, 0, 0],          // mov eax, cs:[0]
        &[0xfa],                            // cli
        &[0xcf],                            // iretd
        &[0xf4],                            // hlt
        &[0x0f, 0x01, 0x00],                // sgdt [eax]
    ];
    for b in bad {
        let f = vmm_scanner::Fragment {
            tc_addr: TC,
            code: b.to_vec(),
            entry_off: 0,
            body_off: 0,
            start_eip: 0,
            exits: vec![],
            pc_map: vec![],
            sites: vec![],
        };
        assert!(
            vmm_scanner::validate::check_fragment(&f, &abi, &Default::default()).is_err(),
            "{b:02x?} accepted"
        );
    }
}

#[test]
fn tzcnt_and_lzcnt_run_as_bsf_and_bsr_on_the_p6_model() {
    // tzcnt eax, ebx; lzcnt cx, [esi]; ret — the virtual P6 has neither BMI1 nor LZCNT, so F3
    // 0F BC/BD are REP BSF/BSR: the fragment holds BSF/BSR without the prefix, no callout.
    let (_, f) = tr(&[0xf3, 0x0f, 0xbc, 0xc3, 0x66, 0xf3, 0x0f, 0xbd, 0x0e, 0xc3]);
    assert_has(&f, &["bsf eax,ebx", "bsr cx,[esi]"]);
    assert!(!decode(&f).iter().any(|i| matches!(i.mnemonic(), Mnemonic::Tzcnt | Mnemonic::Lzcnt)));
    assert!(callouts(&f).iter().all(|c| c.0 != EMU), "{:?}", callouts(&f));
    // The PC map names the guest instruction.
    let is = decode(&f);
    let bsr = is.iter().find(|i| i.mnemonic() == Mnemonic::Bsr).unwrap();
    assert_eq!(f.guest_state_at(bsr.ip() as u32 - f.tc_addr).unwrap().guest_eip, 0x1004);
}

/// User code with a flat GS (`Mode::user_gs`): GS operands are inline, through DS at the
/// guest GS base (`ugs_base`) plus the offset; a register offset is checked with BOUND;
/// `call gs:[x]` goes through the lookup; without the mode bit, or in kernel code, they stay
/// `ReservedSegment` callouts.
#[test]
fn user_gs_operands_are_inline_in_flat_user_mode() {
    let a = Abi::default();
    let user = Mode { cpl: 3, user_gs: true, ..Mode::kernel32() };
    // mov eax, gs:[0x14]; mov edx, gs:[eax+ecx*4+8]; call dword gs:[0x10]
    let code = [0x65, 0xa1, 0x14, 0, 0, 0, 0x65, 0x8b, 0x54, 0x88, 0x08, 0x65, 0xff, 0x15, 0x10, 0, 0, 0];
    let (_, f) = tr_mode(&code, 0x0804_8000, user);
    assert!(callouts(&f).iter().all(|c| c.0 != EMU), "no Emulate callout: {:?}\n{}", callouts(&f), listing(&f).join("\n"));
    let base = format!("mov ecx,gs:[{:X}h]", a.ugs_base);
    let pair4 = format!("bound ebx,qword ptr gs:[{:X}h]", a.ugs_bound_of(4).unwrap());
    assert_has(
        &f,
        &[
            // mov eax, gs:[0x14]: the constant offset needs no check.
            &base,
            "mov eax,[ecx+14h]",
            // mov edx, gs:[eax+ecx*4+8]: EBX is the first free register (EDX is the
            // destination, ECX and EAX the operand's).
            // offset + 2^31 against the pair for 4 bytes
            "lea ebx,[eax+ecx*4-7FFFFFF8h]",
            &pair4,
            &format!("mov ebx,gs:[{:X}h]", a.ugs_base),
            "lea ebx,[eax+ebx]",
            "mov edx,[ebx+ecx*4+8]",
            // call dword gs:[0x10]: the target into EAX through ECX, the return address, the
            // lookup.
            &base,
            "mov eax,[ecx+10h]",
            "push 8048012h",
        ],
    );
    for mode in [Mode { user_gs: false, ..user }, Mode { user_gs: true, ..Mode::kernel32() }] {
        let (_, f) = tr_mode(&code[..6], 0x0804_8000, mode);
        let k = callouts(&f);
        assert!(
            k.iter().any(|c| c.0 == EMU && c.3 == CalloutKind::ReservedSegment as u32),
            "{mode:?}: {k:?}\n{}",
            listing(&f).join("\n")
        );
    }
    // An access that runs past offset 0xFFFFFFFF with a constant offset: the callout (#GP).
    let (_, f) = tr_mode(&[0x65, 0xa1, 0xfe, 0xff, 0xff, 0xff], 0x0804_8000, user);
    assert!(callouts(&f).iter().any(|c| c.0 == EMU && c.3 == CalloutKind::ReservedSegment as u32));
    // LEA with a GS prefix: the offset, no memory access, no base added.
    let (_, f) = tr_mode(&[0x65, 0x8d, 0x43, 0x05], 0x0804_8000, user);
    assert!(has(&f, "lea eax,[ebx+5]") && !listing(&f).iter().any(|l| l.contains(&format!("{:X}h]", a.ugs_base))), "{}", listing(&f).join("\n"));
    // String instructions with GS stay callouts.
    let (_, f) = tr_mode(&[0x65, 0xa5], 0x0804_8000, user);
    assert!(callouts(&f).iter().any(|c| c.0 == EMU && c.3 == CalloutKind::ReservedSegment as u32));
}

/// With the host's CPU model for user code (`Config::user_model`), a GS operand with a vector
/// index (an AVX2 gather) stays a callout; an SSE load through GS with a register offset is
/// inline.
#[test]
fn user_gs_vector_operands() {
    use vmm_scanner::classify::Model;
    use vmm_scanner::units::SliceCode;
    use vmm_scanner::{translate, Config};
    let cfg = Config { user_model: Some(Model { features: Vec::new(), any: true }), ..Config::default() };
    let user = Mode { cpl: 3, user_gs: true, ..Mode::kernel32() };
    let go = |code: &[u8]| translate(&mut SliceCode { base: 0x0804_8000, bytes: code }, 0, 0x0804_8000, user, TC, &cfg).expect("encodes").1;
    // vpgatherdd xmm0, gs:[eax+xmm1*4], xmm2
    let f = go(&[0x65, 0xc4, 0xe2, 0x69, 0x90, 0x04, 0x88]);
    assert!(callouts(&f).iter().any(|c| c.0 == EMU && c.3 == CalloutKind::ReservedSegment as u32), "{}", listing(&f).join("\n"));
    // movdqu xmm0, gs:[esi+0x10]
    let f = go(&[0x65, 0xf3, 0x0f, 0x6f, 0x46, 0x10]);
    assert!(callouts(&f).iter().all(|c| c.0 != EMU), "{}", listing(&f).join("\n"));
    assert!(has(&f, "movdqu xmm0,[esi+ecx+10h]"), "{}", listing(&f).join("\n"));
    // EBP as the base: the rewritten operand names DS (EBP's default segment is SS).
    let f = go(&[0x65, 0x8b, 0x45, 0x08]); // mov eax, gs:[ebp+8]
    assert!(has(&f, "mov eax,ds:[ebp+ecx+8]"), "{}", listing(&f).join("\n"));
}

#[test]
fn checks_before_a_direct_branch_go_into_its_exits() {
    // popf; jz 0x1000 (backward), the end of the code: the JZ ends the unit. The check after
    // POPF is at the JZ: no check site there, both exits are checked (through slots), and
    // their stubs check at the JZ's EIP.
    let (u, f) = tr(&[0x9d, 0x74, 0xfd]);
    assert_eq!(u.insns.len(), 2);
    let is = decode(&f);
    assert_eq!(f.exits.len(), 2);
    assert!(f.exits.iter().all(|e| e.slot.is_some()), "{:?}", f.exits);
    assert_eq!(f.sites.len(), 2);
    let a = Abi::default();
    let slot_jumps = is
        .iter()
        .filter(|i| i.code() == Code::Jmp_rm32 && (a.check_slots..a.check_conts).contains(&i.memory_displacement32()))
        .count();
    assert_eq!(slot_jumps, 2, "one per exit, none before the branch");
    let c = callouts(&f);
    assert_eq!(c.iter().filter(|x| **x == (CalloutOp::PendingIrq as u32, Some(0x1001), 0x1001, 0)).count(), 2);
    // A forward branch without a check before it stays a patchable rel32.
    let (_, f) = tr(&[0x90, 0x74, 0x10]);
    assert!(f.exits.iter().all(|e| e.slot.is_none()));
    // A backward one (nop; nop; jz 0x1001) is checked at its target: pending, its stub leaves
    // through the exit stub (the `Exit` callout to 0x1001), no callout of its own.
    let (_, f) = tr(&[0x90, 0x90, 0x74, 0xfd]);
    assert_eq!(f.exits.iter().map(|e| e.slot.is_some()).collect::<Vec<_>>(), [true, false]);
    assert!(!callouts(&f).iter().any(|c| c.0 == CalloutOp::PendingIrq as u32 && c.1 == Some(0x1001)));
    assert!(callouts(&f).contains(&(CalloutOp::Exit as u32, Some(0x1001), 0x1001, 0)));
}

/// IN and OUT at CPL 0 with null ports (mangle/io.rs): everything but 0x60..=0x64 and 0x80 is
/// null here, and reads 0xa5 (a value no other rule would produce).
fn null_port_config() -> vmm_scanner::Config {
    vmm_scanner::Config {
        null_ports: vmm_scanner::NullPorts::new(|p| !(0x60..=0x64).contains(&p) && p != 0x80, 0xa5),
        ..vmm_scanner::Config::default()
    }
}

#[test]
fn in_and_out_imm8_to_null_ports_are_decided_at_translation() {
    let cfg = null_port_config();
    // in al, 0e0h; in ax, 5eh; in eax, 0e0h; out 0e0h, eax; out 5fh, ax; in ax, 5fh; out 80h, al; ret
    let code = [0xe4, 0xe0, 0x66, 0xe5, 0x5e, 0xe5, 0xe0, 0xe7, 0xe0, 0x66, 0xe7, 0x5f, 0x66, 0xe5, 0x5f, 0xe6, 0x80, 0xc3];
    let (_, f) = tr_cfg(&code, 0x1000, Mode::kernel32(), &cfg);
    assert_has(&f, &["mov al,0A5h", "mov ax,0A5A5h", "mov eax,0A5A5A5A5h"]);
    // The word IN at 0x5f reaches 0x60, the OUT 0x80 a device: callouts. The null OUTs are gone.
    let c = callouts(&f);
    let io = |eip, next| (EMU, Some(eip), next, CalloutKind::Io as u32);
    assert!(c.contains(&io(0x1009, 0x100c)), "{c:?}");
    assert!(c.contains(&io(0x100c, 0x100f)), "{c:?}");
    assert!(c.contains(&io(0x100f, 0x1011)), "{c:?}");
    assert_eq!(c.iter().filter(|x| x.3 == CalloutKind::Io as u32).count(), 3, "{c:?}");
    assert!(decode(&f).iter().all(|i| !matches!(i.mnemonic(), Mnemonic::In | Mnemonic::Out)));
    // Without null ports (the default), and at CPL 3, every one is a callout.
    let (_, plain) = tr(&code);
    assert_eq!(callouts(&plain).iter().filter(|x| x.3 == CalloutKind::Io as u32).count(), 7);
    let user = Mode { cpl: 3, ..Mode::kernel32() };
    let (_, f3) = tr_cfg(&code, 0x1000, user, &cfg);
    assert_eq!(callouts(&f3).iter().filter(|x| x.3 == CalloutKind::UserMode as u32).count(), 7);
}

#[test]
fn in_and_out_dx_test_the_port_map_without_flags() {
    let cfg = null_port_config();
    let a = Abi::default();
    // in ax, dx; out dx, eax; insb; lock in al, dx (#UD: an invalid instruction)
    let (_, f) = tr_cfg(&[0x66, 0xed, 0xef, 0x6c, 0xf0, 0xec], 0x1000, Mode::kernel32(), &cfg);
    let map = |n: u32| format!("movzx ecx,byte ptr gs:[ecx+{:X}h]", a.null_port_map(n).unwrap());
    let sc = format!("mov gs:[{:X}h],ecx", a.slot(5));
    let lc = format!("mov ecx,gs:[{:X}h]", a.slot(5));
    let dec = "lea ecx,[ecx-1]";
    assert_has(&f, &[&sc, "movzx ecx,dx", &map(2), dec, &lc, "mov ax,0A5A5h", &sc, "movzx ecx,dx", &map(4), dec, &lc]);
    let c = callouts(&f);
    let io = |eip, next| (EMU, Some(eip), next, CalloutKind::Io as u32);
    // The slow paths (a port with a device) and INSB: callouts; the LOCK form is invalid.
    for (eip, next) in [(0x1000, 0x1002), (0x1002, 0x1003), (0x1003, 0x1004)] {
        assert!(c.contains(&io(eip, next)), "{eip:#x} {c:?}");
    }
    assert!(c.contains(&(CalloutOp::Invalid as u32, Some(0x1004), 0, 0)), "{c:?}");
    // From the first spill to the fragment's exit, nothing writes a flag (the callouts' far
    // calls aside: the gate preserves the guest's flags).
    let is = decode(&f);
    let start = is.iter().position(|i| i.code() == iced_x86::Code::Movzx_r32_rm16 && i.op1_register() == Register::DX).unwrap();
    for i in &is[start..] {
        if i.code() != Code::Call_m1632 {
            assert_eq!(i.rflags_modified(), 0, "{i}");
        }
    }
    // The maps: byte p of the size-n map is 1 exactly when the n ports from p are null.
    let m2 = cfg.null_ports.map(2);
    assert_eq!((m2[0x5e], m2[0x5f], m2[0x60], m2[0x64], m2[0x65]), (1, 0, 0, 0, 1));
    let m4 = cfg.null_ports.map(4);
    assert_eq!((m4[0x5c], m4[0x5d], m4[0x7c], m4[0x7d], m4[0x81]), (1, 0, 1, 0, 1));
}

/// Superblocks (units.rs): a unit goes on past a Jcc. Its taken way is an exit, or a branch
/// inside the fragment when it leads forward to an instruction of the unit; its not-taken way
/// is the next instruction, no exit.
#[test]
fn units_go_on_past_conditional_branches() {
    use vmm_scanner::units::{Limits, UnitEnd};
    // 1000: cmp eax, 1; 1003: jz 1007; 1005: inc ebx; 1006: inc ecx; 1007: inc edx; 1008: jnz 2000; 100e: ret
    let code = [0x83, 0xf8, 0x01, 0x74, 0x02, 0x43, 0x41, 0x42, 0x0f, 0x85, 0xf2, 0x0f, 0x00, 0x00, 0xc3];
    let (u, f) = tr(&code);
    assert_eq!(u.insns.len(), 7, "the unit ends at the RET");
    assert_eq!(u.end, UnitEnd::Branch);
    // The JZ stays inside; the JNZ to 0x2000 is the one direct exit (the RET is a lookup).
    let targets: Vec<u32> = f.exits.iter().map(|e| e.target_eip).collect();
    assert_eq!(targets, [0x2000], "{}", listing(&f).join("\n"));
    assert!(f.exits[0].slot.is_none(), "a forward exit is a patchable rel32");
    // The JZ jumps to the INC EDX's copy, inside the fragment.
    let is = decode(&f);
    let jz = is.iter().find(|i| i.code() == Code::Je_rel32_32).expect("the JZ is a near JE");
    let inc_edx = is.iter().find(|i| i.code() == Code::Inc_r32 && i.op0_register() == Register::EDX).unwrap();
    assert_eq!(jz.near_branch_target(), inc_edx.ip());
    // Every guest instruction is in the PC map, the INC EDX at its own EIP.
    for g in &u.insns {
        assert!(f.pc_map.iter().any(|p| p.guest_eip == g.eip), "{:#x}", g.eip);
    }
    // With max_jcc = 0, units are basic blocks again.
    let cfg = Config { limits: Limits { max_jcc: 0, ..Limits::default() }, ..Config::default() };
    let (u, f) = tr_cfg(&code, 0x1000, Mode::kernel32(), &cfg);
    assert_eq!(u.insns.len(), 2);
    let targets: Vec<u32> = f.exits.iter().map(|e| e.target_eip).collect();
    assert_eq!(targets, [0x1007, 0x1005]);
    // The bound: max_jcc = 1 goes on past the JZ and ends at the JNZ.
    let cfg = Config { limits: Limits { max_jcc: 1, ..Limits::default() }, ..Config::default() };
    let (u, f) = tr_cfg(&code, 0x1000, Mode::kernel32(), &cfg);
    assert_eq!(u.insns.len(), 6);
    let targets: Vec<u32> = f.exits.iter().map(|e| e.target_eip).collect();
    assert_eq!(targets, [0x2000, 0x100e]);
}

/// Inside a superblock, the exits that need a pending-interrupt check keep it: a backward Jcc
/// is a checked exit, and after POPF the check site stays before a Jcc the unit goes on past
/// (its not-taken way is no exit that could check).
#[test]
fn superblock_branches_keep_their_checks() {
    // 1000: nop; 1001: jnz 1000 (backward); 1003: inc eax; 1004: ret
    let (u, f) = tr(&[0x90, 0x75, 0xfd, 0x40, 0xc3]);
    assert_eq!(u.insns.len(), 4);
    assert_eq!(f.exits.len(), 1);
    assert_eq!(f.exits[0].target_eip, 0x1000);
    assert!(f.exits[0].slot.is_some(), "a backward exit is checked");
    // 1000: popf; 1001: jz 1005 (forward); 1003: inc eax; 1004: inc ebx; 1005: ret. The check
    // after POPF goes into the JZ: its taken way is a checked exit, its not-taken way a check
    // site; both report the JZ's EIP, and there is no check site before the JZ.
    let (u, f) = tr(&[0x9d, 0x74, 0x02, 0x40, 0x43, 0xc3]);
    assert_eq!(u.insns.len(), 5);
    assert_eq!(f.exits.len(), 1);
    assert!(f.exits[0].slot.is_some());
    assert_eq!(f.sites.len(), 2);
    let a = Abi::default();
    let is = decode(&f);
    let slot_jumps: Vec<usize> = is
        .iter()
        .enumerate()
        .filter(|(_, i)| i.code() == Code::Jmp_rm32 && (a.check_slots..a.check_conts).contains(&i.memory_displacement32()))
        .map(|(k, _)| k)
        .collect();
    let skip = is.iter().position(|i| i.code() == Code::Jne_rel8_32).expect("the inverted JZ over the checked exit");
    assert_eq!(slot_jumps.len(), 2);
    assert!(slot_jumps.iter().all(|&k| k > skip), "no check before the branch:\n{}", listing(&f).join("\n"));
    let c = callouts(&f);
    assert_eq!(c.iter().filter(|x| **x == (CalloutOp::PendingIrq as u32, Some(0x1001), 0x1001, 0)).count(), 2);
    // Without the POPF, the JZ stays inside the fragment and nothing checks.
    let (_, f) = tr(&[0x90, 0x74, 0x02, 0x40, 0x43, 0xc3]);
    assert!(f.exits.is_empty() && f.sites.is_empty(), "{:?} {:?}", f.exits, f.sites);
    // The instruction after STI is never a branch target inside the fragment (reached from
    // elsewhere it is not in a shadow): 1000: jz 1003; 1002: sti; 1003: nop; 1004: ret
    let (u, f) = tr(&[0x74, 0x01, 0xfb, 0x90, 0xc3]);
    assert_eq!(u.insns.len(), 4);
    assert_eq!(f.exits.len(), 1);
    assert_eq!(f.exits[0].target_eip, 0x1003);
}

/// A unit does not go on past a Jcc into bytes it cannot fetch or decode: the fall-through is a
/// unit of its own, and the fragment does not depend on the page after.
#[test]
fn superblocks_stop_before_unfetchable_code() {
    use vmm_scanner::units::UnitEnd;
    // jz 0x2000 at 0xffe, the end of the readable bytes at the page end.
    let (u, f) = tr_mode(&[0x90, 0x74, 0x10], 0xffd, Mode::kernel32());
    assert_eq!(u.end, UnitEnd::Branch);
    assert_eq!(u.pages, [0]);
    let targets: Vec<u32> = f.exits.iter().map(|e| e.target_eip).collect();
    assert_eq!(targets, [0x1010, 0x1000]);
    // An invalid encoding after a Jcc: the same.
    // 1000: jz 1012; 1002: 0f 04 (no instruction)
    let (u, f) = tr(&[0x74, 0x10, 0x0f, 0x04]);
    assert_eq!(u.insns.len(), 1);
    assert_eq!(u.end, UnitEnd::Branch);
    let targets: Vec<u32> = f.exits.iter().map(|e| e.target_eip).collect();
    assert_eq!(targets, [0x1012, 0x1002]);
    assert!(callouts(&f).iter().all(|c| c.0 != CalloutOp::Invalid as u32));
}
