//! Test guests: small Multiboot kernels assembled in Rust (iced-x86 `code_asm`), packaged as
//! ELF files and run through `vmm run`. Each asserts its serial output (stdout) and how the
//! run ended (the debug-exit status, `(value << 1) | 1`, or vmm's documented exit codes).
//!
//! Expected values come from the architecture and the specifications (Multiboot 1, the
//! 8254/8259A data sheets, the SDM's rules for interrupts, paging and privilege), not from
//! what the implementation printed.

#[allow(dead_code)]
mod common;

use common::guest::*;
use iced_x86::code_asm::*;

fn ok(r: Result<(), IcedError>) {
    r.expect("assembling the test guest");
}

/// The engine combinations every guest also runs under, compared with the interpreter.
const USER_DIRECT: &[&str] = &["--kernel-engine", "interp", "--user-engine", "direct"];
const ALL_DIRECT: &[&str] = &["--kernel-engine", "direct", "--user-engine", "direct"];
const KERNEL_BT: &[&str] = &["--kernel-engine", "bt", "--user-engine", "direct"];
const KERNEL_BT_USER_INTERP: &[&str] = &["--kernel-engine", "bt", "--user-engine", "interp"];
const ALL_BT: &[&str] = &["--kernel-engine", "bt", "--user-engine", "bt"];

/// The value of the `--stats` counter `name` (a line: the name, spaces, a number), if printed.
fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| l.trim().strip_prefix(name).filter(|r| r.starts_with(' ')).map(|r| r.trim().parse::<u64>().unwrap()))
}

/// The `--stats` report of `g` run with 32 MiB under `--kernel-engine bt --user-engine bt`,
/// which must end with the OK status.
fn stats_with_all_translated(g: Guest) -> String {
    let mut args = vec!["--mem", "32M", "--timeout", "30", "--stats"];
    args.extend_from_slice(ALL_BT);
    let out = run_vmm(&g.build(), &args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(OK_STATUS), "{err}");
    err
}

/// The general registers and EIP of the `--final-state` report.
fn final_registers(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("eax=")
                || l.trim_start().starts_with("esi=")
                || l.trim_start().starts_with("eip=")
        })
        .map(|l| l.split(" eflags").next().unwrap_or(l).trim().to_string())
        .collect()
}

/// Run `image` with `args` plus `engines` and `--final-state`: (status, stdout, final registers).
fn run_with(image: &[u8], args: &[&str], engines: &[&str]) -> (Option<i32>, String, Vec<String>) {
    let mut a: Vec<&str> = args.to_vec();
    a.extend_from_slice(engines);
    a.push("--final-state");
    let out = run_vmm(image, &a);
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(!se.contains("panicked"), "{engines:?}: {se}");
    (out.status.code(), so, final_registers(&se))
}

/// Run under the interpreter and check the guest ended through the debug-exit port with
/// [`OK`]; then run it with the user engine direct, with both engines direct, and with the
/// kernel under `bt` (user direct, interp, then bt), and check the serial output, the exit
/// status and the final registers are the interpreter's (the kernel-direct run's output may
/// differ where the direct engine is known to be wrong; `bt` must never differ).
fn run_ok(g: Guest, args: &[&str]) -> String {
    run_ok_except(g, args, same)
}

/// As [`run_ok`]; the kernel-direct run's output goes through `kernel_direct` (which asserts
/// the differences the direct engine is known to show) instead of being compared.
fn run_ok_except(g: Guest, args: &[&str], kernel_direct: impl Fn(&str, &str)) -> String {
    let image = g.build();
    let (status, so, regs) = run_with(&image, args, &[]);
    assert_eq!(status, Some(OK_STATUS), "stdout:\n{so}");
    assert_eq!(regs.len(), 3, "final state missing");
    let (s2, so2, regs2) = run_with(&image, args, USER_DIRECT);
    assert_eq!((s2, &so2), (status, &so), "user direct");
    assert_eq!(regs2, regs, "user direct: final registers");
    let (s3, so3, regs3) = run_with(&image, args, ALL_DIRECT);
    assert_eq!(s3, status, "kernel direct: stdout\n{so3}");
    if so3 == so {
        assert_eq!(regs3, regs, "kernel direct: final registers");
    }
    kernel_direct(&so, &so3);
    for engines in [KERNEL_BT, KERNEL_BT_USER_INTERP, ALL_BT] {
        let (s4, so4, regs4) = run_with(&image, args, engines);
        assert_eq!((s4, &so4), (status, &so), "{engines:?}");
        assert_eq!(regs4, regs, "{engines:?}: final registers");
    }
    so
}

/// For guests whose kernel reads nothing the direct engine gets wrong.
fn same(interp: &str, direct: &str) {
    assert_eq!(direct, interp, "kernel direct");
}

#[test]
fn serial_hello_and_multiboot_handoff() {
    let mut g = Guest::new();
    g.print("hello from a Multiboot kernel\r\n");
    g.print("eax=");
    ok(g.k.mov(eax, dword_ptr(BOOT_EAX)));
    g.print_eax();
    g.print("\r\nmem_upper=");
    ok((|| {
        g.k.mov(ebx, dword_ptr(BOOT_EBX))?;
        g.k.mov(eax, dword_ptr(ebx + 8))
    })());
    g.print_eax();
    g.print("\r\ncmdline=");
    let puts = g.puts;
    ok((|| {
        g.k.mov(ebx, dword_ptr(BOOT_EBX))?;
        g.k.mov(esi, dword_ptr(ebx + 16))?;
        g.k.call(puts)
    })());
    g.print("\r\n");
    g.exit(OK);
    let so = run_ok(
        g,
        &[
            "--mem",
            "64M",
            "--cmdline",
            "hello cmdline",
            "--timeout",
            "30",
        ],
    );
    // Multiboot: EAX = 0x2BADB002; mem_upper = KiB above 1 MiB = (64 - 1) * 1024 = 0xFC00.
    assert_eq!(
        so,
        "hello from a Multiboot kernel\r\neax=0x2BADB002\r\nmem_upper=0x0000FC00\r\ncmdline=hello cmdline\r\n"
    );
}

#[test]
fn gdt_idt_tss_setup() {
    let mut g = Guest::new();
    g.print("cs=");
    ok((|| {
        g.k.xor(eax, eax)?;
        g.k.mov(ax, cs)
    })());
    g.print_eax();
    g.print(" ss=");
    ok((|| {
        g.k.xor(eax, eax)?;
        g.k.mov(ax, ss)
    })());
    g.print_eax();
    g.print(" tr=");
    ok((|| {
        g.k.xor(eax, eax)?;
        g.k.str(ax)
    })());
    g.print_eax();
    g.print("\r\ngdt base=");
    ok(g.k.sgdt(ptr(VARS)));
    ok(g.k.mov(eax, dword_ptr(VARS + 2)));
    g.print_eax();
    g.print(" limit=");
    ok(g.k.movzx(eax, word_ptr(VARS)));
    g.print_eax();
    g.print("\r\nidt base=");
    ok(g.k.sidt(ptr(VARS)));
    ok(g.k.mov(eax, dword_ptr(VARS + 2)));
    g.print_eax();
    g.print(" limit=");
    ok(g.k.movzx(eax, word_ptr(VARS)));
    g.print_eax();
    g.print("\r\n");
    ok(g.k.int3());
    g.print("back from the breakpoint handler\r\n");
    g.enter_user(0x002);
    // The user task raises int 0x81 (a DPL 3 gate): the CPU switches to the TSS's SS0:ESP0.
    ok(g.u.int(0x81));
    // #BP handler.
    g.trap_handler(3, 0);
    g.print("#BP handled\r\n");
    ok(g.k.iretd());
    // int 0x81 handler: report ESP and the saved CS and SS, then finish.
    g.interrupt_handler(0x81, 3);
    ok(g.k.mov(ebx, esp));
    g.print("int 0x81 from CPL 3: esp=");
    ok(g.k.mov(eax, ebx));
    g.print_eax();
    g.print(" cs=");
    ok(g.k.mov(eax, dword_ptr(ebx + 4)));
    g.print_eax();
    g.print(" ss=");
    ok(g.k.mov(eax, dword_ptr(ebx + 16)));
    g.print_eax();
    g.print("\r\n");
    g.exit(OK);
    let so = run_ok_except(g, &["--timeout", "30"], |interp, direct| {
        // Under the direct engine the kernel reads its host shadow selectors (RPL 3) for CS
        // and SS, and SGDT/SIDT run on the CPU at host CPL 3: the host kernel's UMIP emulation
        // answers with its dummy tables (0xfffe0000 / 0xffff0000, limit 0), or, on a host that
        // does not emulate them for LDT code segments, they trap and are emulated exactly.
        // Everything else is the same.
        let (i1, irest) = interp.split_once("\r\n").unwrap();
        let (d1, drest) = direct.split_once("\r\n").unwrap();
        let umip = "gdt base=0xFFFE0000 limit=0x00000000\r\nidt base=0xFFFF0000 limit=0x00000000\r\n";
        let (i_tables, i_tail) = irest.split_at(irest.find("#BP").unwrap());
        let (d_tables, d_tail) = drest.split_at(drest.find("#BP").unwrap());
        assert!(d_tables == i_tables || d_tables == umip, "kernel direct: {d_tables}");
        assert_eq!(d_tail, i_tail, "kernel direct");
        assert_ne!(d1, i1);
        // STR: the guest's TR if it trapped, the host's TSS selector (0x40) if the host ran it.
        assert!(d1.ends_with("tr=0x00000028") || d1.ends_with("tr=0x00000040"), "{d1}");
        let field = |name: &str| {
            let v = d1.split(name).nth(1).unwrap().get(..10).unwrap();
            u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        };
        assert_eq!(field("cs=") & 3, 3, "CS with RPL 3: {d1}");
        assert_eq!(field("ss=") & 3, 3, "SS with RPL 3: {d1}");
    });
    assert_eq!(
        so,
        "cs=0x00000008 ss=0x00000010 tr=0x00000028\r\n\
         gdt base=0x00110000 limit=0x0000002F\r\n\
         idt base=0x00111000 limit=0x000007FF\r\n\
         #BP handled\r\n\
         back from the breakpoint handler\r\n\
         int 0x81 from CPL 3: esp=0x0013FFEC cs=0x0000001B ss=0x00000023\r\n"
    );
}

#[test]
fn paging_with_4k_and_4m_pages() {
    let mut g = Guest::new();
    let mut p = standard_paging();
    p.map_4m(0x80_0000, 0x80_0000, PTE_P | PTE_W);
    p.map_4m(0x1000_0000, 0x80_0000, PTE_P | PTE_W);
    p.map_4k(0x2000_0000, 0x80_1000, PTE_P | PTE_W);
    g.paging = Some(p);
    ok(g.k.mov(dword_ptr(0x80_0010), 0xdead_beefu32));
    g.enable_paging(true, false);
    g.print("paging on\r\n4M alias read: ");
    ok(g.k.mov(eax, dword_ptr(0x1000_0010)));
    g.print_eax();
    ok(g.k.mov(dword_ptr(0x2000_0020), 0xcafe_f00du32));
    g.print("\r\n4K alias write seen through the 4M page: ");
    ok(g.k.mov(eax, dword_ptr(0x80_1020)));
    g.print_eax();
    g.print("\r\n");
    ok(g.k.mov(eax, dword_ptr(0x3000_0000)));
    g.print("no fault?\r\n");
    g.exit(0x55);
    g.interrupt_handler(14, 0);
    g.print("#PF cr2=");
    ok(g.k.mov(eax, cr2));
    g.print_eax();
    g.print(" err=");
    ok(g.k.mov(eax, dword_ptr(esp)));
    g.print_eax();
    g.print("\r\n");
    g.exit(OK);
    let so = run_ok(g, &["--mem", "32M", "--timeout", "30"]);
    // The read of an unmapped page by the kernel: error code 0 (not present, read, CPL 0).
    assert_eq!(
        so,
        "paging on\r\n4M alias read: 0xDEADBEEF\r\n4K alias write seen through the 4M page: 0xCAFEF00D\r\n\
         #PF cr2=0x30000000 err=0x00000000\r\n"
    );
}

#[test]
fn user_task_system_calls() {
    let mut g = Guest::new();
    g.install_syscalls();
    g.print("kernel: entering the user task\r\n");
    g.enter_user(0x202);
    g.user_print("user: hello from CPL 3\r\n");
    ok((|| {
        g.u.xor(eax, eax)?;
        g.u.mov(ax, cs)?;
        g.u.and(eax, 3)?;
        g.u.cmp(eax, 3)
    })());
    g.user_pass_if_equal("user: CS.RPL is 3\r\n");
    let so = run_ok(g, &["--timeout", "30"]);
    assert_eq!(
        so,
        "kernel: entering the user task\r\nuser: hello from CPL 3\r\nuser: CS.RPL is 3\r\n"
    );
}

#[test]
fn demand_paging_by_the_guest() {
    let mut g = Guest::new();
    let mut p = standard_paging();
    let table = p.table(0x50_0000);
    g.paging = Some(p);
    g.install_syscalls();
    const NEXT_FRAME: u32 = VARS;
    ok(g.k.mov(dword_ptr(NEXT_FRAME), 0x60_0000u32));
    g.enable_paging(false, true);
    g.enter_user(0x202);
    // User: touch three unmapped pages, then read them back.
    let mut bad = g.u.create_label();
    ok((|| {
        for (i, v) in [0x1111_1111u32, 0x2222_2222, 0x3333_3333]
            .iter()
            .enumerate()
        {
            g.u.mov(dword_ptr(0x50_0000 + 0x1004 * i as u32), *v)?;
        }
        for (i, v) in [0x1111_1111u32, 0x2222_2222, 0x3333_3333]
            .iter()
            .enumerate()
        {
            g.u.cmp(dword_ptr(0x50_0000 + 0x1004 * i as u32), *v as i32)?;
            g.u.jne(bad)?;
        }
        Ok(())
    })());
    g.user_print("user: three pages mapped on demand hold what I wrote\r\n");
    g.user_exit(OK);
    ok(g.u.set_label(&mut bad));
    g.user_exit(0x55);
    // #PF: report, map the next free frame at CR2's page, return to retry.
    g.interrupt_handler(14, 0);
    ok(g.k.pushad());
    g.print("#PF at ");
    ok(g.k.mov(eax, cr2));
    g.print_eax();
    g.print(" err ");
    ok(g.k.mov(eax, dword_ptr(esp + 32)));
    g.print_eax();
    g.print("\r\n");
    ok((|| {
        g.k.mov(ebx, cr2)?;
        g.k.shr(ebx, 12)?;
        g.k.and(ebx, 0x3ff)?;
        g.k.mov(eax, dword_ptr(NEXT_FRAME))?;
        g.k.or(eax, 7)?;
        g.k.mov(dword_ptr(ebx * 4 + table), eax)?;
        g.k.add(dword_ptr(NEXT_FRAME), 0x1000)?;
        g.k.mov(eax, cr2)?;
        g.k.invlpg(ptr(eax))?;
        g.k.popad()?;
        g.k.add(esp, 4)?;
        g.k.iretd()
    })());
    let so = run_ok(g, &["--timeout", "30"]);
    // Error code 6: not present (P=0), write (W/R=1), user mode (U/S=1).
    assert_eq!(
        so,
        "#PF at 0x00500000 err 0x00000006\r\n#PF at 0x00501004 err 0x00000006\r\n#PF at 0x00502008 err 0x00000006\r\n\
         user: three pages mapped on demand hold what I wrote\r\n"
    );
}

#[test]
fn copy_on_write_through_cr0_wp() {
    let mut g = Guest::new();
    let mut p = standard_paging();
    p.map_4k(0x50_0000, 0x50_0000, PTE_P); // read-only, the "shared" page
    p.map_4k(0x60_0000, 0x60_0000, PTE_P | PTE_W); // the copy's frame
    p.map_4k(0x70_0000, 0x50_0000, PTE_P); // a read-only view of the original frame
    let pte = p.pte_addr(0x50_0000);
    g.paging = Some(p);
    ok(g.k.mov(dword_ptr(0x50_0000), 0xaaaa_aaaau32));
    g.enable_paging(false, false);
    // CR0.WP = 0: the supervisor may write read-only pages.
    ok(g.k.mov(dword_ptr(0x50_0100), 1u32));
    g.print("WP=0: supervisor write to a read-only page succeeded\r\n");
    ok((|| {
        g.k.mov(eax, cr0)?;
        g.k.or(eax, 0x1_0000)?;
        g.k.mov(cr0, eax)?;
        // WP = 1: this write faults; the handler copies the page and the write is retried.
        g.k.mov(dword_ptr(0x50_0000), 0xbbbb_bbbbu32)
    })());
    g.print("after the copy: new=");
    ok(g.k.mov(eax, dword_ptr(0x50_0000)));
    g.print_eax();
    g.print(" original=");
    ok(g.k.mov(eax, dword_ptr(0x70_0000)));
    g.print_eax();
    g.print(" flag=");
    ok(g.k.mov(eax, dword_ptr(0x50_0100)));
    g.print_eax();
    g.print("\r\n");
    g.exit(OK);
    g.interrupt_handler(14, 0);
    ok(g.k.pushad());
    g.print("#PF cr2=");
    ok(g.k.mov(eax, cr2));
    g.print_eax();
    g.print(" err=");
    ok(g.k.mov(eax, dword_ptr(esp + 32)));
    g.print_eax();
    g.print(": copying the page\r\n");
    ok((|| {
        g.k.mov(esi, 0x50_0000u32)?;
        g.k.mov(edi, 0x60_0000u32)?;
        g.k.mov(ecx, 1024u32)?;
        g.k.cld()?;
        g.k.rep().movsd()?;
        g.k.mov(dword_ptr(pte), 0x60_0000u32 | PTE_P | PTE_W)?;
        g.k.mov(eax, cr2)?;
        g.k.invlpg(ptr(eax))?;
        g.k.popad()?;
        g.k.add(esp, 4)?;
        g.k.iretd()
    })());
    let so = run_ok(g, &["--timeout", "30"]);
    // Error code 3: protection violation (P=1), write, supervisor.
    assert_eq!(
        so,
        "WP=0: supervisor write to a read-only page succeeded\r\n\
         #PF cr2=0x00500000 err=0x00000003: copying the page\r\n\
         after the copy: new=0xBBBBBBBB original=0xAAAAAAAA flag=0x00000001\r\n"
    );
}

#[test]
fn counted_timer_interrupts() {
    let mut g = Guest::new();
    const TICKS: u32 = VARS;
    ok((|| {
        // 8259A: ICW1 edge/cascade/ICW4, ICW2 vectors 0x20/0x28, ICW3, ICW4 8086; only IRQ 0.
        for (port, v) in [
            (0x20u32, 0x11u32),
            (0xa0, 0x11),
            (0x21, 0x20),
            (0xa1, 0x28),
            (0x21, 4),
            (0xa1, 2),
            (0x21, 1),
            (0xa1, 1),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            g.k.mov(al, v)?;
            g.k.out(port, al)?;
        }
        // Read back the mask (OCW1).
        g.k.in_(al, 0x21)?;
        g.k.movzx(ebx, al)
    })());
    g.print("IMR=");
    ok(g.k.mov(eax, ebx));
    g.print_eax();
    g.print("\r\n");
    // PIT channel 2 through port 0x61: gate on, mode 0, count 0x800; wait for OUT (bit 5).
    let mut wait2 = g.k.create_label();
    ok((|| {
        g.k.mov(al, 1u32)?;
        g.k.out(0x61, al)?;
        g.k.mov(al, 0xb0u32)?;
        g.k.out(0x43, al)?;
        g.k.mov(al, 0u32)?;
        g.k.out(0x42, al)?;
        g.k.mov(al, 8u32)?;
        g.k.out(0x42, al)?;
        g.k.set_label(&mut wait2)?;
        g.k.in_(al, 0x61)?;
        g.k.test(al, 0x20)?;
        g.k.jz(wait2)
    })());
    g.print("channel 2 reached its terminal count\r\n");
    // Channel 0: mode 2, 1193 ticks (1 ms).
    let mut wait = g.k.create_label();
    ok((|| {
        g.k.mov(al, 0x34u32)?;
        g.k.out(0x43, al)?;
        g.k.mov(al, 1193u32 & 0xff)?;
        g.k.out(0x40, al)?;
        g.k.mov(al, 1193u32 >> 8)?;
        g.k.out(0x40, al)?;
        g.k.set_label(&mut wait)?;
        g.k.sti()?;
        g.k.hlt()?;
        g.k.cmp(dword_ptr(TICKS), 5)?;
        g.k.jb(wait)?;
        g.k.cli()
    })());
    g.print("five timer interrupts\r\n");
    g.exit(OK);
    g.interrupt_handler(0x20, 0);
    ok(g.k.pushad());
    ok(g.k.inc(dword_ptr(TICKS)));
    // At the fifth tick the handler masks IRQ 0 itself: printing a tick can take longer than
    // the 1 ms period (a loaded host, a slow engine), and a tick pending at the IRET would
    // otherwise be taken before the main loop's CLI.
    let mut keep = g.k.create_label();
    ok((|| {
        g.k.cmp(dword_ptr(TICKS), 5)?;
        g.k.jb(keep)?;
        g.k.mov(al, 0xffu32)?;
        g.k.out(0x21, al)?;
        g.k.set_label(&mut keep)?;
        g.k.nop()
    })());
    g.print("tick ");
    ok(g.k.mov(eax, dword_ptr(TICKS)));
    g.print_eax();
    g.print("\r\n");
    ok((|| {
        g.k.mov(al, 0x20u32)?;
        g.k.out(0x20, al)?;
        g.k.popad()?;
        g.k.iretd()
    })());
    let image = g.build();
    for engines in [&[][..], USER_DIRECT, ALL_DIRECT] {
        let mut args = vec!["--stats", "--timeout", "30"];
        args.extend_from_slice(engines);
        let t0 = std::time::Instant::now();
        let out = run_vmm(&image, &args);
        let elapsed = t0.elapsed();
        let (so, se) = (stdout(&out), stderr(&out));
        assert_eq!(
            out.status.code(),
            Some(OK_STATUS),
            "{engines:?}: {so}\n{se}"
        );
        let mut want = String::from("IMR=0x000000FE\r\nchannel 2 reached its terminal count\r\n");
        for i in 1..=5 {
            want.push_str(&format!("tick 0x{i:08X}\r\n"));
        }
        want.push_str("five timer interrupts\r\n");
        assert_eq!(so, want);
        // Five periods of 1193 ticks at 1.193182 MHz: at least 5 ms of guest time.
        assert!(elapsed.as_millis() >= 5, "{elapsed:?}");
        assert!(se.contains("interrupts      5"), "{se}");
        assert!(se.contains("instructions"), "{se}");
    }
}

/// `bad` unless EDX:EAX is at least the 64-bit value at `last`; then store it there.
/// Clobbers EBX and ECX.
fn check_not_before(a: &mut CodeAssembler, last: u32, bad: CodeLabel) -> Result<(), IcedError> {
    a.mov(ecx, eax)?;
    a.mov(ebx, edx)?;
    a.sub(ecx, dword_ptr(last))?;
    a.sbb(ebx, dword_ptr(last + 4))?;
    a.jb(bad)?;
    a.mov(dword_ptr(last), eax)?;
    a.mov(dword_ptr(last + 4), edx)
}

/// One time stamp counter whichever engine runs: the TSC read alternately by user code
/// (RDTSC) and by the kernel (RDTSC and RDMSR of IA32_TIME_STAMP_COUNTER, in an `int 0x81`
/// handler) never goes backwards (SDM vol. 3, "Time-Stamp Counter": it only counts up), under the
/// interpreter, with user code direct, with the kernel translated (user code direct, then
/// interpreted, then translated) and with both direct. The engines differ in what runs where:
/// the interpreter reads the machine's TSC, translated RDTSC and directly executed RDTSC the
/// host's.
#[test]
fn the_tsc_never_goes_backwards_between_engines() {
    const LAST: u32 = VARS + 0x20;
    let mut g = Guest::new();
    g.install_syscalls();
    let mut kbad = g.k.create_label();
    g.print("reading the TSC at CPL 0 and 3\r\n");
    ok((|| {
        g.k.mov(dword_ptr(LAST), 0u32)?;
        g.k.mov(dword_ptr(LAST + 4), 0u32)?;
        g.k.rdtsc()?;
        check_not_before(&mut g.k, LAST, kbad)
    })());
    g.enter_user(0x202);
    let mut ubad = g.u.create_label();
    let mut again = g.u.create_label();
    ok((|| {
        g.u.mov(ebp, 200u32)?;
        g.u.set_label(&mut again)?;
        g.u.rdtsc()?;
        check_not_before(&mut g.u, LAST, ubad)?;
        g.u.int(0x81)?;
        g.u.dec(ebp)?;
        g.u.jnz(again)?;
        // Leave nothing time-dependent in the final registers (compared between engines).
        for r in [ecx, edx, esi, edi] {
            g.u.xor(r, r)?;
        }
        Ok(())
    })());
    g.user_exit(OK);
    ok(g.u.set_label(&mut ubad));
    g.user_exit(0x55);
    g.interrupt_handler(0x81, 3);
    ok((|| {
        g.k.pushad()?;
        g.k.rdtsc()?;
        check_not_before(&mut g.k, LAST, kbad)?;
        g.k.mov(ecx, 0x10u32)?;
        g.k.rdmsr()?;
        check_not_before(&mut g.k, LAST, kbad)?;
        g.k.popad()?;
        g.k.iretd()?;
        g.k.set_label(&mut kbad)
    })());
    g.print("kernel: the TSC went backwards\r\n");
    g.exit(0x56);
    let so = run_ok(g, &["--timeout", "30"]);
    assert_eq!(so, "reading the TSC at CPL 0 and 3\r\n");
}

#[test]
fn general_protection_fault_from_user_mode() {
    let mut g = Guest::new();
    g.enter_user(0x202);
    ok(g.u.cli()); // the first user instruction, at USER_BASE: privileged at CPL 3 with IOPL 0
    ok(g.u.hlt());
    g.interrupt_handler(13, 0);
    ok(g.k.mov(ebx, esp));
    g.print("#GP err=");
    ok(g.k.mov(eax, dword_ptr(ebx)));
    g.print_eax();
    g.print(" eip=");
    ok(g.k.mov(eax, dword_ptr(ebx + 4)));
    g.print_eax();
    g.print(" cs=");
    ok(g.k.mov(eax, dword_ptr(ebx + 8)));
    g.print_eax();
    g.print("\r\n");
    g.exit(OK);
    let so = run_ok(g, &["--timeout", "30"]);
    assert_eq!(
        so,
        format!("#GP err=0x00000000 eip=0x{USER_BASE:08X} cs=0x0000001B\r\n")
    );
}

#[test]
fn triple_fault_ends_the_run_with_a_report() {
    let mut g = Guest::new();
    g.idt_limit = 0; // no usable gate: #UD -> #GP -> #DF -> shutdown
    g.print("about to fault with an empty IDT\r\n");
    ok(g.k.ud2());
    g.exit(OK);
    let image = g.build();
    for engines in [&[][..], ALL_DIRECT] {
        let mut args = vec!["--timeout", "30"];
        args.extend_from_slice(engines);
        let out = run_vmm(&image, &args);
        let (so, se) = (stdout(&out), stderr(&out));
        assert_eq!(so, "about to fault with an empty IDT\r\n");
        assert_eq!(
            out.status.code(),
            Some(4),
            "documented exit status of a triple fault; stderr:\n{se}"
        );
        for w in [
            "triple fault",
            "eax=",
            "esp=",
            "eip=",
            "cs=0008",
            "idtr",
            "limit=0000",
            "cr0=",
            "cr3=",
            "#DF",
        ] {
            assert!(se.contains(w), "{w:?} missing from the report:\n{se}");
        }
        assert!(!se.contains("panicked"));
    }
}

/// The Popek-Goldberg demonstration: sensitive but unprivileged instructions. A kernel run by
/// trap-and-emulate at host CPL 3 sees them misbehave silently: CS shows RPL 3, and POPF drops
/// the IF change (the virtual IF stays clear, so the HLT that follows can never be woken,
/// although PUSHF, which shows the host's IF, claims interrupts are on). Run correctly, the
/// kernel sees CPL 0, its own GDT, and the timer interrupt wakes it.
fn popek_goldberg_guest() -> Guest {
    let mut g = Guest::new();
    ok((|| {
        g.k.xor(ebx, ebx)?;
        g.k.mov(bx, cs)?;
        g.k.and(ebx, 3)
    })());
    g.print("CPL from CS: ");
    ok(g.k.mov(eax, ebx));
    g.print_eax();
    ok(g.k.sgdt(ptr(VARS)));
    g.print("\r\nSGDT base: ");
    ok(g.k.mov(eax, dword_ptr(VARS + 2)));
    g.print_eax();
    ok((|| {
        // PIC: vectors 0x20/0x28, only IRQ 0 (the PIT is started later, at 1 kHz).
        for (port, v) in [
            (0x20u32, 0x11u32),
            (0xa0, 0x11),
            (0x21, 0x20),
            (0xa1, 0x28),
            (0x21, 4),
            (0xa1, 2),
            (0x21, 1),
            (0xa1, 1),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            g.k.mov(al, v)?;
            g.k.out(port, al)?;
        }
        g.k.sti()?;
        g.k.pushfd()?;
        g.k.cli()?;
        g.k.popfd()?; // restores IF = 1
        g.k.pushfd()?;
        g.k.pop(ebx)?;
        g.k.and(ebx, 0x200)
    })());
    g.print("\r\nIF after POPF (PUSHF): ");
    ok(g.k.mov(eax, ebx));
    g.print_eax();
    g.print("\r\n");
    ok((|| {
        // Only now start the timer (so that no tick interrupts the printing).
        g.k.mov(al, 0x34u32)?;
        g.k.out(0x43, al)?;
        g.k.mov(al, 1193u32 & 0xff)?;
        g.k.out(0x40, al)?;
        g.k.mov(al, 1193u32 >> 8)?;
        g.k.out(0x40, al)?;
        g.k.hlt() // woken by the timer if POPF really set IF
    })());
    g.exit(0x55);
    g.interrupt_handler(0x20, 0);
    g.print("timer interrupt after POPF\r\n");
    g.exit(OK);
    g
}

#[test]
fn popek_goldberg_under_interp() {
    let image = popek_goldberg_guest().build();
    let (status, so, _) = run_with(&image, &["--timeout", "30"], &["--kernel-engine", "interp"]);
    assert_eq!(status, Some(OK_STATUS), "{so}");
    assert_eq!(
        so,
        format!("CPL from CS: 0x00000000\r\nSGDT base: 0x{GDT:08X}\r\nIF after POPF (PUSHF): 0x00000200\r\ntimer interrupt after POPF\r\n")
    );
}

/// The translator's half: under `bt` the kernel sees CPL 0 in CS, its own GDT base, and POPF
/// restores the virtual IF, so the timer wakes the HLT.
#[test]
fn popek_goldberg_under_bt() {
    let image = popek_goldberg_guest().build();
    for user in ["direct", "interp", "bt"] {
        let (status, so, _) = run_with(&image, &["--timeout", "30"], &["--kernel-engine", "bt", "--user-engine", user]);
        assert_eq!(status, Some(OK_STATUS), "{so}");
        assert_eq!(
            so,
            format!("CPL from CS: 0x00000000\r\nSGDT base: 0x{GDT:08X}\r\nIF after POPF (PUSHF): 0x00000200\r\ntimer interrupt after POPF\r\n")
        );
    }
}

/// The direct engine's half of the demonstration: the guest kernel visibly misbehaves.
#[test]
fn popek_goldberg_under_direct() {
    let out = run_vmm(
        &popek_goldberg_guest().build(),
        &["--kernel-engine", "direct", "--timeout", "30"],
    );
    let (so, se) = (stdout(&out), stderr(&out));
    // POPF did not restore the virtual IF: the HLT can never be woken (exit status 10).
    assert_eq!(out.status.code(), Some(10), "{so}\n{se}");
    assert!(se.contains("halted with interrupts disabled"), "{se}");
    let lines: Vec<&str> = so.lines().collect();
    assert_eq!(lines.len(), 3, "{so}");
    // CS shows the host's shadow selector, RPL 3.
    assert_eq!(lines[0], "CPL from CS: 0x00000003");
    // SGDT: see docs/direct.md. On this host the kernel does not spoof SGDT for code in an
    // LDT code segment: it raises #GP, and the monitor emulates it correctly.
    assert!(lines[1].starts_with("SGDT base: 0x"), "{so}");
    // PUSHF shows the host's IF (1): the guest cannot tell that its IF is clear.
    assert_eq!(lines[2], "IF after POPF (PUSHF): 0x00000200");
}

/// Frames of the address-space tests: "mov eax, 1; ret" at `RET1`, "mov eax, 2; ret" at
/// `RET2`; `PD2` is a second page directory, `T2` its page table for the remapped address.
const RET1: u32 = 0x20_0000;
const RET2: u32 = 0x20_1000;
const PD2: u32 = 0x20_2000;
const T2: u32 = 0x20_3000;

/// Kernel: "mov eax, `v`; ret" (B8 imm32, C3) at `at`.
fn write_mov_eax_ret(k: &mut CodeAssembler, at: u32, v: u32) -> Result<(), IcedError> {
    k.mov(byte_ptr(at), 0xb8u32)?;
    k.mov(dword_ptr(at + 1), v)?;
    k.mov(byte_ptr(at + 5), 0xc3u32)
}

/// Kernel: both callees ([`RET1`], [`RET2`]), and [`PD2`], a copy of the page directory whose
/// entry for `lin` points at [`T2`], which maps `lin` to `RET2` with `flags`.
fn two_spaces(k: &mut CodeAssembler, lin: u32, flags: u32) -> Result<(), IcedError> {
    write_mov_eax_ret(k, RET1, 1)?;
    write_mov_eax_ret(k, RET2, 2)?;
    k.mov(esi, PAGE_DIR)?;
    k.mov(edi, PD2)?;
    k.mov(ecx, 1024u32)?;
    k.cld()?;
    k.rep().movsd()?;
    k.mov(dword_ptr(PD2 + (lin >> 22) * 4), T2 | PTE_P | PTE_W | PTE_U)?;
    k.mov(dword_ptr(T2 + ((lin >> 12) & 0x3ff) * 4), RET2 | flags)
}

/// Two address spaces map different code at the same linear address (not global pages), and
/// the kernel calls it through a register after each CR3 write: the translator's lookup table
/// must not carry the first space's fragment into the second (it keeps only fragments of
/// global pages across a CR3 write, as the TLB keeps only global entries).
#[test]
fn indirect_calls_after_cr3_switches_reach_each_spaces_code() {
    const X: u32 = 0x0100_0000; // the shared linear address, in its own page table
    let mut g = Guest::new();
    let mut p = standard_paging();
    p.map_4k(X, RET1, PTE_P | PTE_W);
    g.paging = Some(p);
    // Space 2 (PD2) maps X to RET2.
    ok(two_spaces(&mut g.k, X, PTE_P | PTE_W));
    g.enable_paging(true, false);
    for _ in 0..3 {
        for pd in [PAGE_DIR, PD2] {
            ok(g.k.mov(eax, pd));
            ok(g.k.mov(cr3, eax));
            ok(g.k.mov(ebx, X));
            ok(g.k.call(ebx));
            g.print_eax();
            g.print(" ");
        }
    }
    g.print("\r\n");
    g.exit(OK);
    let so = run_ok(g, &["--mem", "32M", "--timeout", "30"]);
    let want = "0x00000001 0x00000002 ".repeat(3) + "\r\n";
    assert_eq!(so, want);
}

/// How the kernel makes the callee's linear page map the other frame between two calls.
#[derive(Clone, Copy)]
enum Remap {
    /// Switch CR3 between two page directories.
    Cr3Switch,
    /// Rewrite the PTE in place, then INVLPG.
    PteAndInvlpg,
    /// Rewrite the PTE in place, then write CR3 with the value it has.
    PteAndCr3Reload,
}

/// User code calls a function at a linear address whose page maps one of two frames ("mov
/// eax, 1; ret" or "mov eax, 2; ret"), and a system call makes it map the other one after each
/// call ([`Remap`]). The calling page keeps its frame, so its translation stays valid, but its
/// chained CALL and the lookup entry of the callee must not carry the old frame's code over
/// (the runtime checks user chains and lookup entries against the address space after a CR3
/// change, an INVLPG of a page user code came from and a CR3 reload, and redoes a chain when
/// its target's frames are mapped again).
fn user_callee_remapped(remap: Remap) {
    const F: u32 = 0x0100_0000; // the callee's linear address, in its own page table
    const N: u32 = 100;
    let mut g = Guest::new();
    let mut p = standard_paging();
    p.map_4k(F, RET1, PTE_P | PTE_U);
    let pte_f = p.pte_addr(F);
    g.paging = Some(p);
    ok(two_spaces(&mut g.k, F, PTE_P | PTE_U));
    g.enable_paging(true, false);
    g.install_syscalls();
    g.enter_user(0x202);
    // int 0x81: F maps the other frame.
    g.trap_handler(0x81, 3);
    ok((|| {
        let k = &mut g.k;
        match remap {
            Remap::Cr3Switch => {
                k.mov(eax, cr3)?;
                k.xor(eax, PAGE_DIR ^ PD2)?;
                k.mov(cr3, eax)?;
            }
            Remap::PteAndInvlpg => {
                k.xor(dword_ptr(pte_f), RET1 ^ RET2)?;
                k.invlpg(byte_ptr(F))?;
            }
            Remap::PteAndCr3Reload => {
                k.xor(dword_ptr(pte_f), RET1 ^ RET2)?;
                k.mov(eax, cr3)?;
                k.mov(cr3, eax)?;
            }
        }
        k.iretd()
    })());
    g.user_loop(N, |u| {
        u.call(F as u64)?;
        u.add(esi, eax)?;
        u.int(0x81)?;
        Ok(())
    });
    ok(g.u.cmp(esi, N / 2 * 3));
    g.user_pass_if_equal("user: each frame's callee\r\n");
    let so = run_ok(g, &["--mem", "32M", "--timeout", "30"]);
    assert_eq!(so, "user: each frame's callee\r\n");
}

#[test]
fn user_chains_across_cr3_switches_reach_each_spaces_code() {
    user_callee_remapped(Remap::Cr3Switch);
}

#[test]
fn user_chains_after_invlpg_reach_the_new_frames_code() {
    user_callee_remapped(Remap::PteAndInvlpg);
}

#[test]
fn user_chains_after_a_cr3_reload_reach_the_new_frames_code() {
    user_callee_remapped(Remap::PteAndCr3Reload);
}

/// User code calls a function whose page is not present at first: the call's target is
/// translated while the page does not map (a fragment that is only a fetch-fault callout),
/// the guest's page-fault handler maps the page, and from then on the function must run from
/// a translation of its code, not from that callout: the fragment was valid only while the
/// page did not map. 1,000 calls, translated user code: fewer than 100 callouts.
#[test]
fn a_fragment_of_an_unmapped_page_is_retranslated_once_it_maps() {
    const F: u32 = 0x0100_0000; // the callee's linear address, not present at first
    const N: u32 = 1000;
    let build = || {
        let mut g = Guest::new();
        let mut p = standard_paging();
        p.map_4k(F, RET1, 0);
        let pte_f = p.pte_addr(F);
        g.paging = Some(p);
        ok(write_mov_eax_ret(&mut g.k, RET1, 1));
        g.enable_paging(true, false);
        g.install_syscalls();
        g.enter_user(0x202);
        // #PF: map F and retry.
        g.interrupt_handler(14, 0);
        ok((|| {
            let k = &mut g.k;
            k.mov(dword_ptr(pte_f), RET1 | PTE_P | PTE_U)?;
            k.invlpg(byte_ptr(F))?;
            k.add(esp, 4)?;
            k.iretd()
        })());
        g.user_loop(N, |u| {
            u.call(F as u64)?;
            u.add(esi, eax)?;
            Ok(())
        });
        ok(g.u.cmp(esi, N));
        g.user_pass_if_equal("user: mapped on demand\r\n");
        g
    };
    let so = run_ok(build(), &["--mem", "32M", "--timeout", "30"]);
    assert_eq!(so, "user: mapped on demand\r\n");
    let err = stats_with_all_translated(build());
    let callouts = stat(&err, "bt-emulate").unwrap_or(0);
    assert!(callouts < 100, "{callouts} callouts for {N} calls: the fetch-fault fragment was kept\n{err}");
}

/// Indirect calls to linear address 0: an empty lookup-table entry is `{ 0, miss routine }`,
/// so a lookup of target 0 "hits" it and the miss routine makes the `IndirectMiss` callout
/// for target 0; once translated, the entry for 0 holds the fragment and later calls hit it.
/// User code (page 0 mapped to a callee returning 1) calls through EAX = 0 300 times, under
/// every engine pairing (the interpreter's result); with everything translated, the calls
/// must not all miss.
#[test]
fn indirect_calls_to_address_zero_go_through_the_lookup() {
    const N: u32 = 300;
    let build = || {
        let mut g = Guest::new();
        let mut p = standard_paging();
        p.map_4k(0, RET1, PTE_P | PTE_U);
        g.paging = Some(p);
        ok(write_mov_eax_ret(&mut g.k, RET1, 1));
        g.enable_paging(true, false);
        g.install_syscalls();
        g.enter_user(0x202);
        g.user_loop(N, |u| {
            u.xor(eax, eax)?;
            u.call(eax)?;
            u.add(esi, eax)?;
            Ok(())
        });
        ok(g.u.cmp(esi, N));
        g.user_pass_if_equal("user: called 0\r\n");
        g
    };
    let so = run_ok(build(), &["--mem", "32M", "--timeout", "30"]);
    assert_eq!(so, "user: called 0\r\n");
    let err = stats_with_all_translated(build());
    let misses = stat(&err, "bt-ibl-miss-user").unwrap_or(0);
    assert!(misses < u64::from(N) / 2, "{misses} lookup misses for {N} calls to 0\n{err}");
}

/// Adaptive user-mode translation: a user loop of 2,000 null system calls (`int 0x80`) under
/// the default engines (kernel bt, user direct). Its page becomes hot, runs translated, and
/// its system calls become callouts: the host signals stop after the first few. The result is
/// the interpreter's (run_ok compares every engine pairing).
#[test]
fn a_system_call_loop_becomes_hot_and_stops_trapping() {
    const N: u32 = 2000;
    let build = || {
        let mut g = Guest::new();
        g.install_syscalls();
        g.enter_user(0x202);
        g.user_loop(N, |u| {
            u.xor(eax, eax)?; // system call 0: returns at once
            u.int(0x80)?;
            u.inc(esi)?;
            Ok(())
        });
        ok(g.u.cmp(esi, N));
        g.user_pass_if_equal("user: 2000 system calls\r\n");
        g
    };
    let so = run_ok(build(), &["--timeout", "30"]);
    assert_eq!(so, "user: 2000 system calls\r\n");
    let exits = |extra: &[&str]| {
        let mut args = vec!["--timeout", "30", "--stats"];
        args.extend_from_slice(extra);
        let out = run_vmm(&build().build(), &args);
        assert_eq!(out.status.code(), Some(OK_STATUS), "{}", stderr(&out));
        let err = stderr(&out);
        let count = |name: &str| stat(&err, name).unwrap_or(0);
        (count("syscall"), count("hot-user-page"))
    };
    let (traps, hot) = exits(&[]);
    assert!(hot >= 1, "the loop's page became hot");
    assert!(traps < 100, "{traps} system calls trapped: they should be callouts once the page is hot");
    let (traps, hot) = exits(&["--no-adaptive-user"]);
    assert_eq!(hot, 0);
    assert!(traps >= N as u64, "without adaptive translation every system call traps: {traps}");
}

/// Port I/O under `bt` at CPL 0, where IN and OUT to ports whose device does nothing are
/// inline code (scanner/src/mangle/io.rs). Ports no device claims and the delay port 0xed
/// read all ones at every size (the floating ISA bus, docs/machine.md), in both forms (imm8,
/// DX); an access that straddles a null port and a real one goes to the device: a word OUT at
/// COM1's scratch register 0x3ff (and 0x400, no device) and a dword OUT at 0x7d (0x7d-0x7f no
/// device, 0x80 the POST code) are kept, and word INs at 0x3ff and at 0x7f read them back
/// (the null half all ones); the serial output itself is `OUT DX` to COM1; the run ends with
/// `OUT DX, AL` to the debug-exit port (an exit with another status follows, should that OUT
/// be dropped). Also a 1000-iteration loop of null-port INs with `--stats`: the interpreter's
/// machine sees each as an unclaimed port, under `bt` (inline) the machine sees none.
#[test]
fn null_port_io_is_inline_under_bt_and_real_ports_still_work() {
    let build = |loop_only: bool| {
        let mut g = Guest::new();
        if loop_only {
            ok((|| {
                let mut top = g.k.create_label();
                g.k.mov(ecx, 1000u32)?;
                g.k.set_label(&mut top)?;
                g.k.in_(al, 0xe0u32)?;
                g.k.dec(ecx)?;
                g.k.jnz(top)
            })());
            g.exit(OK);
            return g;
        }
        ok((|| {
            g.k.mov(dx, 0x3ffu32)?;
            g.k.mov(ax, 0xa55au32)?;
            g.k.out(dx, ax)?;
            g.k.mov(dx, 0x7du32)?;
            g.k.mov(eax, 0x99aa_bbccu32)?;
            g.k.out(dx, eax)
        })());
        let ins: [(&str, u16, bool, u8); 10] = [
            ("in al,0e0h", 0xe0, true, 1),
            ("in ax,0e0h", 0xe0, true, 2),
            ("in eax,0e0h", 0xe0, true, 4),
            ("in al,dx(0e0h)", 0xe0, false, 1),
            ("in ax,dx(0edh)", 0xed, false, 2),
            ("in eax,dx(0ech)", 0xec, false, 4),
            ("in eax,dx(5555h)", 0x5555, false, 4),
            ("in ax,dx(3ffh)", 0x3ff, false, 2),
            ("in ax,dx(7fh)", 0x7f, false, 2),
            ("in al,80h", 0x80, true, 1),
        ];
        for (name, port, imm, size) in ins {
            ok((|| {
                g.k.mov(eax, 0x1234_5678u32)?;
                match (imm, size) {
                    (true, 1) => g.k.in_(al, port as u32),
                    (true, 2) => g.k.in_(ax, port as u32),
                    (true, _) => g.k.in_(eax, port as u32),
                    (false, s) => {
                        g.k.mov(dx, port as u32)?;
                        match s {
                            1 => g.k.in_(al, dx),
                            2 => g.k.in_(ax, dx),
                            _ => g.k.in_(eax, dx),
                        }
                    }
                }
            })());
            ok(g.k.push(eax));
            g.print(&format!("{name}="));
            ok(g.k.pop(eax));
            g.print_eax();
            g.print("\r\n");
        }
        ok((|| {
            g.k.mov(al, OK as u32)?;
            g.k.mov(dx, 0xf4u32)?;
            g.k.out(dx, al)
        })());
        g.exit(0x55);
        g
    };
    let so = run_ok(build(false), &["--timeout", "30"]);
    // EAX held 0x12345678 before each IN: a byte or word IN keeps the bytes above it.
    assert_eq!(
        so,
        "in al,0e0h=0x123456FF\r\nin ax,0e0h=0x1234FFFF\r\nin eax,0e0h=0xFFFFFFFF\r\n\
         in al,dx(0e0h)=0x123456FF\r\nin ax,dx(0edh)=0x1234FFFF\r\nin eax,dx(0ech)=0xFFFFFFFF\r\n\
         in eax,dx(5555h)=0xFFFFFFFF\r\nin ax,dx(3ffh)=0x1234FF5A\r\nin ax,dx(7fh)=0x123499FF\r\n\
         in al,80h=0x12345699\r\n"
    );
    let unclaimed = |engine: &str| {
        let out = run_vmm(&build(true).build(), &["--timeout", "30", "--stats", "--kernel-engine", engine]);
        assert_eq!(out.status.code(), Some(OK_STATUS), "{}", stderr(&out));
        stat(&stderr(&out), "unclaimed ports").expect("an unclaimed-ports line")
    };
    assert!(unclaimed("interp") >= 1000);
    assert!(unclaimed("bt") < 10, "bt's null-port INs reached the machine");
}
