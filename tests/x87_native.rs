//! x87 arithmetic of the interpreter against the host's x87 (the native runner at CPL 3):
//! random operands (normals of near and extreme exponents, denormals, zeros, infinities,
//! NaNs) and operations under random rounding and precision control, all exceptions masked;
//! the 80-bit results, the stores, and FSW (condition codes, exception flags, TOP) must be
//! identical bit for bit.

use iced_x86::code_asm::*;
use vmm_interp::{Cpu, CpuState, Exit, RamBus};
use vmm_monitor::native::{self, NativeCase, Prot, Region};

const N_CODE: u32 = 0x1000_0000;
const N_DATA: u32 = 0x1000_1000;
const I_CODE: u32 = 0x1000;
const I_DATA: u32 = 0x2000;
const LEN: usize = 112;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn operand(r: &mut Rng, near: u16) -> u128 {
    let sign = (r.below(2) as u128) << 79;
    let mant = r.next() | 1 << 63;
    let v = match r.below(16) {
        0 => 0,
        1 => 0x7fff_8000_0000_0000_0000,
        2 => 0x7fff_c000_0000_0000_0000 | (r.next() >> 2) as u128, // QNaN
        3 => 0x7fff_8000_0000_0000_0000 | ((r.next() >> 2) | 1) as u128, // SNaN
        4 => (r.next() >> 1) as u128,                                  // denormal
        5 => (0x7ffe_u128 - r.below(3) as u128) << 64 | mant as u128, // huge
        6 => (1 + r.below(3) as u128) << 64 | mant as u128,          // tiny
        7 => 0x3fff_8000_0000_0000_0000 | (r.below(8) as u128),
        _ => ((near as u128 + r.below(80) as u128 - 40) & 0x7fff).max(1) << 64 | mant as u128,
    };
    sign | v
}

/// The snippet (EBX = data): FCW at +0, FSW after the operation at +2, final FSW at +4,
/// operand b at +16, a at +32, ST0 and ST1 after the operation at +48/+64, stores at +80.
fn snippet(op: usize) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    a.fninit().unwrap();
    a.fldcw(word_ptr(ebx)).unwrap();
    a.fld(tword_ptr(ebx + 16)).unwrap();
    a.fld(tword_ptr(ebx + 32)).unwrap();
    match op {
        0 => a.db(&[0xd8, 0xc1]).unwrap(), // fadd st0, st1
        1 => a.db(&[0xd8, 0xe1]).unwrap(), // fsub st0, st1
        2 => a.db(&[0xd8, 0xe9]).unwrap(), // fsubr st0, st1
        3 => a.db(&[0xd8, 0xc9]).unwrap(), // fmul st0, st1
        4 => a.db(&[0xd8, 0xf1]).unwrap(), // fdiv st0, st1
        5 => a.db(&[0xd8, 0xf9]).unwrap(), // fdivr st0, st1
        6 => a.db(&[0xde, 0xc1]).unwrap(), // faddp st1, st0
        7 => a.db(&[0xde, 0xe9]).unwrap(), // fsubp st1, st0
        8 => a.db(&[0xdc, 0xf9]).unwrap(), // fdiv st1, st0
        9 => a.db(&[0xd8, 0xd1]).unwrap(), // fcom st1
        10 => a.db(&[0xdd, 0xe1]).unwrap(), // fucom st1
        11 => a.db(&[0xda, 0xe9]).unwrap(), // fucompp
        12 => a.ftst().unwrap(),
        13 => a.fistp(dword_ptr(ebx + 80)).unwrap(),
        14 => a.fistp(word_ptr(ebx + 80)).unwrap(),
        15 => a.fistp(qword_ptr(ebx + 80)).unwrap(),
        16 => a.fst(dword_ptr(ebx + 80)).unwrap(),
        17 => a.fst(qword_ptr(ebx + 80)).unwrap(),
        18 => a.fchs().unwrap(),
        19 => a.fabs().unwrap(),
        20 => a.fadd(qword_ptr(ebx + 88)).unwrap(),
        21 => a.fmul(dword_ptr(ebx + 96)).unwrap(),
        22 => a.fld(qword_ptr(ebx + 88)).unwrap(),
        23 => a.fld(dword_ptr(ebx + 96)).unwrap(),
        24 => a.fcomp(qword_ptr(ebx + 88)).unwrap(),
        _ => a.db(&[0xd9, 0xc9]).unwrap(), // fxch st1
    }
    a.fnstsw(word_ptr(ebx + 2)).unwrap();
    a.fstp(tword_ptr(ebx + 48)).unwrap();
    a.fstp(tword_ptr(ebx + 64)).unwrap();
    a.fnstsw(word_ptr(ebx + 4)).unwrap();
    a.hlt().unwrap();
    a.assemble(0).unwrap()
}

const OPS: usize = 26;

fn interp(code: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bus = RamBus::new(0x10000);
    bus.ram[I_CODE as usize..I_CODE as usize + code.len()].copy_from_slice(code);
    bus.ram[I_DATA as usize..I_DATA as usize + data.len()].copy_from_slice(data);
    let mut s = CpuState::flat_protected(0);
    s.eip = I_CODE;
    s.gpr[4] = 0x8000;
    s.gpr[3] = I_DATA;
    s.eflags = 0x202;
    let mut cpu = Cpu::with_state(s, bus);
    cpu.intercept = !0;
    let exit = cpu.run(1000);
    assert_eq!(exit, Exit::Halt, "interpreter exit");
    cpu.bus.ram[I_DATA as usize..I_DATA as usize + LEN].to_vec()
}

fn host(code: &[u8], data: &[u8]) -> Vec<u8> {
    let mut page = vec![0u8; 0x1000];
    page[..code.len()].copy_from_slice(code);
    let mut dpage = vec![0u8; 0x1000];
    dpage[..data.len()].copy_from_slice(data);
    let mut gpr = [0u32; 8];
    gpr[3] = N_DATA;
    let out = native::run(&NativeCase {
        regions: vec![
            Region { addr: N_CODE, bytes: page, prot: Prot::ReadExec },
            Region { addr: N_DATA, bytes: dpage, prot: Prot::ReadWrite },
        ],
        gpr,
        eflags: 0x202,
        eip: N_CODE,
        stop_eip: N_CODE + code.len() as u32 - 1,
        timeout_ms: 2000,
    })
    .expect("native runner");
    assert!(out.exception.is_none(), "host exception {:?}", out.exception);
    out.memory[1][..LEN].to_vec()
}

#[test]
fn x87_matches_host() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let codes: Vec<Vec<u8>> = (0..OPS).map(snippet).collect();
    let mut failures = Vec::new();
    for n in 0..6000 {
        let op = n % OPS;
        let near = 0x3fff + r.below(200) as u16 - 100;
        let (a, b) = (operand(&mut r, near), operand(&mut r, near));
        let fcw: u16 = 0x7f | (r.below(4) as u16) << 8 | (r.below(4) as u16) << 10;
        let fcw = if r.below(2) == 0 { 0x37f } else { fcw };
        let mut data = vec![0u8; LEN];
        data[0..2].copy_from_slice(&fcw.to_le_bytes());
        data[16..26].copy_from_slice(&b.to_le_bytes()[..10]);
        data[32..42].copy_from_slice(&a.to_le_bytes()[..10]);
        data[88..96].copy_from_slice(&r.next().to_le_bytes());
        data[96..100].copy_from_slice(&(r.next() as u32).to_le_bytes());
        let (h, i) = (host(&codes[op], &data), interp(&codes[op], &data));
        if h != i {
            failures.push(format!(
                "op {op} fcw {fcw:#06x} a {a:#022x} b {b:#022x}\n host {:02x?}\n intp {:02x?}",
                &h[..LEN],
                &i[..LEN]
            ));
        }
    }
    for f in failures.iter().take(10) {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} mismatches", failures.len());
}
