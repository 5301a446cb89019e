//! The interpreter's speed: a CPU-bound guest loop (loads, stores, ALU, LEA, shifts, compares,
//! taken and not-taken branches) run by the interpreter at CPL 0 with paging on, and the same
//! bytes run natively on the host CPU (compatibility mode, through the native runner) as the
//! baseline. Reports interpreted instructions per second and the slowdown against native.

use std::time::Instant;

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use vmm_interp::mmu::pte;
use vmm_interp::state::{cr, Segment};
use vmm_interp::{Cpu, CpuState, Exit, RamBus};
use vmm_monitor::native::{self, NativeCase, Prot, Region};

const CODE: u32 = 0x2000_0000;
const DATA: u32 = 0x2000_1000;

/// Instructions per loop iteration (counted by the interpreter, checked below).
fn guest(iterations: u32) -> (Vec<u8>, u32) {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    let mut skip = a.create_label();
    a.mov(ecx, iterations).unwrap();
    a.mov(esi, DATA).unwrap();
    a.xor(edi, edi).unwrap();
    a.xor(edx, edx).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(eax, dword_ptr(esi)).unwrap();
    a.add(eax, ecx).unwrap();
    a.xor(edx, eax).unwrap();
    a.mov(dword_ptr(esi + 4), eax).unwrap();
    a.lea(ebx, ptr(eax + ecx * 2)).unwrap();
    a.shr(ebx, 3).unwrap();
    a.sub(edx, ebx).unwrap();
    a.test(cl, 3).unwrap();
    a.jne(skip).unwrap();
    a.inc(edi).unwrap();
    a.set_label(&mut skip).unwrap();
    a.dec(ecx).unwrap();
    a.jne(top).unwrap();
    let stop = a.instructions().len();
    a.hlt().unwrap();
    let r = a
        .assemble_options(
            CODE as u64,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .unwrap();
    let bytes = r.inner.code_buffer.clone();
    let stop_eip = CODE + r.inner.new_instruction_offsets[stop];
    (bytes, stop_eip)
}

fn interp_run(code: &[u8], stop: u32) -> (f64, u64, [u32; 8]) {
    let mut bus = RamBus::new(1 << 20);
    // Identity-free mapping: CODE and DATA pages to physical 0x10000 and 0x11000.
    let pd = 0x1000u32;
    let pt = 0x2000u32;
    let w = |ram: &mut Vec<u8>, a: u32, v: u32| {
        ram[a as usize..a as usize + 4].copy_from_slice(&v.to_le_bytes())
    };
    w(&mut bus.ram, pd + 4 * (CODE >> 22), pt | pte::P | pte::RW);
    w(
        &mut bus.ram,
        pt + 4 * ((CODE >> 12) & 0x3ff),
        0x10000 | pte::P,
    );
    w(
        &mut bus.ram,
        pt + 4 * ((DATA >> 12) & 0x3ff),
        0x11000 | pte::P | pte::RW,
    );
    bus.ram[0x10000..0x10000 + code.len()].copy_from_slice(code);
    let mut st = CpuState::flat_protected(0);
    st.cr0 |= cr::CR0_PG;
    st.cr3 = pd;
    st.eip = CODE;
    st.eflags = 0x2;
    let _ = Segment::default();
    let mut cpu = Cpu::with_state(st, bus);
    cpu.intercept = !0;
    let t = Instant::now();
    let exit = cpu.run(u64::MAX);
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(exit, Exit::Halt, "benchmark guest did not halt: {exit}");
    assert_eq!(cpu.state.eip, stop + 1);
    (dt, cpu.icount, cpu.state.gpr)
}

fn native_run(code: &[u8], stop: u32) -> Result<(f64, [u32; 8]), String> {
    let mut page = vec![0u8; 0x1000];
    page[..code.len()].copy_from_slice(code);
    let case = NativeCase {
        regions: vec![
            Region {
                addr: CODE,
                bytes: page,
                prot: Prot::ReadExec,
            },
            Region {
                addr: DATA,
                bytes: vec![0; 0x1000],
                prot: Prot::ReadWrite,
            },
        ],
        gpr: [0; 8],
        eflags: 0x202,
        eip: CODE,
        stop_eip: stop,
        timeout_ms: 60_000,
    };
    let t = Instant::now();
    let out = native::run(&case).map_err(|e| e.to_string())?;
    let dt = t.elapsed().as_secs_f64();
    if out.exception.is_some() {
        return Err(format!("native run raised {:?}", out.exception));
    }
    Ok((dt, out.gpr))
}

/// Run the benchmark; `scale` multiplies the iteration count (1 = about 50 million
/// interpreted instructions).
pub fn run(scale: f64, json: bool) -> Result<(), String> {
    let iters = ((4_000_000.0 * scale) as u32).max(1000);
    let (code, stop) = guest(iters);
    // Warm-up and correctness: both must end in the same registers.
    let (_, _, small_regs) = interp_run(&guest(1000).0, guest(1000).1);
    let (_, small_native) = native_run(&guest(1000).0, guest(1000).1)?;
    if small_regs != small_native {
        return Err(format!("interpreter and host disagree on the benchmark loop: {small_regs:x?} vs {small_native:x?}"));
    }
    let mut it = Vec::new();
    let mut nt = Vec::new();
    let mut icount = 0;
    for _ in 0..3 {
        let (dt, n, _) = interp_run(&code, stop);
        icount = n;
        it.push(dt);
        let (dn, _) = native_run(&code, stop)?;
        nt.push(dn);
    }
    let ti = super::median(it);
    let tn = super::median(nt);
    let mips = icount as f64 / ti / 1e6;
    let native_mips = icount as f64 / tn / 1e6;
    if json {
        println!(
            "{{\"benchmark\":\"interp-loop\",\"instructions\":{icount},\"interp_seconds\":{ti:.4},\"native_seconds\":{tn:.5},\"interp_mips\":{mips:.1},\"native_mips\":{native_mips:.1},\"slowdown_vs_native\":{:.1},\"goal_mips\":50}}",
            ti / tn
        );
    } else {
        println!(
            "interpreter benchmark: CPU-bound guest loop, {icount} instructions (median of 3)"
        );
        println!("  {:<28} {:>10} {:>12}", "", "seconds", "MIPS");
        println!(
            "  {:<28} {:>10.4} {:>12.1}",
            "interpreter (CPL 0, paging)", ti, mips
        );
        println!(
            "  {:<28} {:>10.5} {:>12.1}",
            "host CPU (native)", tn, native_mips
        );
        println!(
            "  slowdown vs native: {:.1}x; goal: >= 50 MIPS ({})",
            ti / tn,
            if mips >= 50.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
