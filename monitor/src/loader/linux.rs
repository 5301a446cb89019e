//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), 32-bit entry.
//!
//! What the loader does, as a boot loader that jumps to the protected-mode kernel directly:
//!
//! * checks the setup header of the bzImage at 0x1f1 (boot flag 0xaa55, "HdrS", protocol
//!   2.06 or later, loaded high) and that the file holds the whole protected-mode kernel;
//! * copies the protected-mode kernel (the part after the `setup_sects` real-mode sectors) to
//!   `code32_start` (1 MiB);
//! * places the initrd as high as it can: below the end of RAM and `initrd_addr_max`, page
//!   aligned, above the area the kernel decompresses itself into (`pref_address` +
//!   `init_size`);
//! * writes the command line at [`CMDLINE_ADDR`], a GDT with the protocol's flat `__BOOT_CS`
//!   (0x10) and `__BOOT_DS` (0x18) at [`GDT_ADDR`], and the zero page ([`ZERO_PAGE_ADDR`]):
//!   the setup header copied from the image with the loader's fields filled in, and an e820
//!   map of RAM below 640 KiB, the BIOS hole and RAM from 1 MiB to the end;
//! * starts the CPU in protected mode with paging off, interrupts off, flat CS 0x10 / DS 0x18
//!   and ESI pointing at the zero page.
//!
//! The structures are linux-loader's (`bootparam`), viewed as bytes through vm-memory's
//! `ByteValued`. linux-loader's own `BzImage::load` is not used: it wants a vm-memory
//! `GuestMemory` and a seekable reader and leaves the zero page, the initrd and the CPU to
//! the caller, which is most of this file.
//!
//! Bad input (not a Linux kernel, a truncated file, an old protocol, a kernel or initrd that
//! does not fit) is a [`LinuxError`] with a message that says what: never a panic.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::ByteValued;
use vmm_interp::state::{reg, Segment};
use vmm_interp::{CpuState, TableReg};

use crate::memory::GuestRam;

/// The GDT the kernel starts with: null, null, `__BOOT_CS` (0x10), `__BOOT_DS` (0x18).
pub const GDT_ADDR: u32 = 0x500;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u32 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDR: u32 = 0x20000;
/// Where the protected-mode kernel is loaded (`code32_start` of every bzImage).
pub const KERNEL_ADDR: u32 = 0x10_0000;
/// The boot protocol selectors.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
/// The oldest protocol accepted: 2.06 has `cmdline_size` and is what the 32-bit entry of
/// every kernel since 2.6.22 speaks.
pub const MIN_PROTOCOL: u16 = 0x0206;
/// Where RAM below 1 MiB ends (640 KiB less a 1 KiB EBDA as a BIOS leaves it).
pub const LOW_RAM_END: u64 = 0x9fc00;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const LOADED_HIGH: u8 = 0x01;
const HDR_OFFSET: usize = 0x1f1;

/// Why a kernel cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    #[error("not a Linux kernel (no bzImage setup header: boot flag 0xaa55 at 0x1fe and \"HdrS\" at 0x202)")]
    NotLinux,
    #[error("the bzImage is truncated: {what} needs {need} bytes, the file has {have}")]
    Truncated { what: &'static str, need: u64, have: u64 },
    #[error("boot protocol {}.{:02} is too old: 2.06 or later is needed", .0 >> 8, .0 & 0xff)]
    OldProtocol(u16),
    #[error("a zImage (loaded low) is not supported: use a bzImage")]
    NotLoadedHigh,
    #[error("the kernel needs {need_mib} MiB of RAM to decompress and run (its load area ends at {end:#x}); the guest has {ram_mib} MiB: use a larger --mem")]
    RamTooSmall { need_mib: u64, end: u64, ram_mib: u64 },
    #[error("the initrd ({size} bytes) does not fit between the kernel's end ({kernel_end:#x}) and the highest address it may use ({top:#x}): use a larger --mem or a smaller initrd")]
    InitrdTooLarge { size: u64, kernel_end: u64, top: u64 },
    #[error("the initrd is empty")]
    EmptyInitrd,
    #[error("the command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: u32 },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot unpack the kernel on the host: {0} (boot without --unpack-kernel)")]
    Unpack(String),
}

/// A loaded kernel.
#[derive(Clone, Debug)]
pub struct LinuxKernel {
    /// The boot protocol version (0x020f is 2.15).
    pub protocol: u16,
    /// The kernel's version string from the header, if it has one.
    pub version: Option<String>,
    /// Where the protected-mode kernel was copied, and its size.
    pub kernel: (u32, u32),
    /// Where the initrd was put, and its size.
    pub initrd: Option<(u32, u32)>,
    /// The e820 map handed over: (address, size, type).
    pub e820: Vec<(u64, u64, u32)>,
    /// The CPU state of the 32-bit boot entry.
    pub state: CpuState,
}

/// Whether `image` looks like a bzImage (boot flag and "HdrS"): what `vmm run` uses to tell
/// it from a Multiboot ELF.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) && image.get(0x202..0x206) == Some(b"HdrS")
}

/// The setup header of `image`, as the kernel wrote it.
pub fn parse_header(image: &[u8]) -> Result<setup_header, LinuxError> {
    if image.len() < 0x206 {
        if image.len() >= 0x200 && image[0x1fe..0x200] == [0x55, 0xaa] {
            return Err(LinuxError::Truncated { what: "the setup header", need: 0x206, have: image.len() as u64 });
        }
        return Err(LinuxError::NotLinux);
    }
    if !is_bzimage(image) {
        return Err(LinuxError::NotLinux);
    }
    // The header runs from 0x1f1 to 0x202 + the byte at 0x201 (the jump's offset).
    let end = 0x202 + image[0x201] as usize;
    let have = image.len() as u64;
    if image.len() < end {
        return Err(LinuxError::Truncated { what: "the setup header", need: end as u64, have });
    }
    let mut hdr = setup_header::default();
    let dst = hdr.as_mut_slice();
    let n = dst.len().min(end - HDR_OFFSET);
    dst[..n].copy_from_slice(&image[HDR_OFFSET..HDR_OFFSET + n]);
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(LinuxError::OldProtocol(version));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(LinuxError::NotLoadedHigh);
    }
    Ok(hdr)
}

/// The size of the real-mode part (boot sector and setup) that precedes the kernel.
fn setup_size(hdr: &setup_header) -> usize {
    let sects = if hdr.setup_sects == 0 { 4 } else { hdr.setup_sects as usize };
    (sects + 1) * 512
}

/// The kernel version string the header points at (`kernel_version` + 0x200), if any.
fn kernel_version(image: &[u8], hdr: &setup_header) -> Option<String> {
    let off = hdr.kernel_version as usize;
    if off == 0 {
        return None;
    }
    let s = image.get(off + 0x200..)?;
    let len = s.iter().take(256).position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&s[..len]).into_owned())
}

/// The e820 map for `ram` bytes of RAM: (address, size, type).
pub fn e820_map(ram: u64) -> Vec<(u64, u64, u32)> {
    vec![
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, 0xa0000 - LOW_RAM_END, E820_RESERVED),
        (0xf0000, 0x10000, E820_RESERVED),
        (0x10_0000, ram.saturating_sub(0x10_0000), E820_RAM),
    ]
}

/// The compressed kernel inside a bzImage (`payload_offset`, `payload_length`), decompressed:
/// the `vmlinux` ELF file. XZ (what Debian's x86 kernels use, with the x86 BCJ filter) is
/// supported; other formats are an error.
pub fn unpack_payload(image: &[u8], hdr: &setup_header) -> Result<Vec<u8>, LinuxError> {
    use std::io::Read;
    let start = setup_size(hdr) + hdr.payload_offset as usize;
    let end = start + hdr.payload_length as usize;
    let have = image.len() as u64;
    if hdr.payload_length == 0 {
        return Err(LinuxError::Unpack("the setup header names no payload".into()));
    }
    let payload = image.get(start..end).ok_or(LinuxError::Truncated { what: "the compressed kernel", need: end as u64, have })?;
    let format = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        [0x1f, 0x8b, ..] => "gzip",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x5d, 0, 0, ..] => "lzma",
        [b'B', b'Z', b'h', ..] => "bzip2",
        [0x89, b'L', b'Z', b'O', ..] => "lzo",
        [0x02, 0x21, 0x4c, 0x18, ..] => "lz4",
        _ => "unknown",
    };
    if format != "xz" {
        return Err(LinuxError::Unpack(format!("the kernel is compressed with {format}; only xz is supported")));
    }
    let mut out = Vec::with_capacity(hdr.init_size as usize);
    // The kernel's build appends the decompressed size after the stream: the reader stops at
    // the end of the first stream.
    let mut r = lzma_rust2::XzReader::new(payload, false);
    r.read_to_end(&mut out).map_err(|e| LinuxError::Unpack(format!("xz: {e}")))?;
    Ok(out)
}

/// Copy the `vmlinux` ELF's loadable segments to their physical addresses (`p_paddr`, as
/// the decompressor does when it runs at the link address). Returns the physical entry
/// point (`startup_32`).
fn load_vmlinux(ram: &mut GuestRam, elf: &[u8], lowest: u64, highest: u64) -> Result<u32, LinuxError> {
    use goblin::elf::program_header::PT_LOAD;
    let bad = |s: String| LinuxError::Unpack(s);
    let e = goblin::elf::Elf::parse(elf).map_err(|e| bad(format!("the payload is not an ELF file: {e}")))?;
    if e.is_64 || e.header.e_machine != goblin::elf::header::EM_386 {
        return Err(bad("the payload is not an i386 ELF file".into()));
    }
    let entry = e.entry;
    let mut entry_loaded = false;
    for ph in e.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
        let (pa, filesz, memsz, off) = (ph.p_paddr, ph.p_filesz, ph.p_memsz, ph.p_offset);
        if filesz > memsz || pa < lowest || pa.saturating_add(memsz) > highest {
            return Err(bad(format!("segment at {pa:#x} ({memsz:#x} bytes) lies outside the kernel's area")));
        }
        let data = off
            .checked_add(filesz)
            .and_then(|end| elf.get(off as usize..end as usize))
            .ok_or_else(|| bad(format!("segment at {pa:#x} lies outside the file")))?;
        let fail = |_| bad(format!("segment at {pa:#x} does not fit in RAM"));
        ram.write(pa, data).map_err(fail)?;
        ram.zero(pa + filesz, (memsz - filesz) as usize).map_err(fail)?;
        entry_loaded |= (pa..pa + memsz).contains(&entry);
    }
    if !entry_loaded {
        return Err(bad(format!("the entry point {entry:#x} is not in a loaded segment")));
    }
    u32::try_from(entry).map_err(|_| bad(format!("entry point {entry:#x}")))
}

/// The command line with `reservetop=` added (unless it holds one): the guest kernel then
/// keeps its fixmap, its CPU entry area and its kmap window below the monitor area at
/// `monitor_base` (x86-32 Linux's hook for hypervisors, as VMware's VMI guests used it).
/// Otherwise its entry stack and fixmap pages lie in the monitor area, where every access is
/// emulated.
pub fn reserve_top(cmdline: &str, monitor_base: u32) -> String {
    if cmdline.split_whitespace().any(|w| w.starts_with("reservetop=")) {
        return cmdline.to_string();
    }
    let size = (1u64 << 32) - u64::from(monitor_base);
    let arg = format!("reservetop={}M", size >> 20);
    if cmdline.trim().is_empty() {
        arg
    } else {
        format!("{} {arg}", cmdline.trim_end())
    }
}

/// Load `image` (a bzImage), `initrd` and `cmdline` into `ram`; return the entry state.
pub fn load(ram: &mut GuestRam, image: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> Result<LinuxKernel, LinuxError> {
    load_with(ram, image, initrd, cmdline, false)
}

/// [`load`], and with `unpack` the loader decompresses the kernel itself and starts it at
/// `vmlinux`'s `startup_32` (loaded at its link address, as the bzImage's decompressor would
/// put it with KASLR off), with the same registers and zero page. The kernel is the same;
/// what is skipped is the guest-side decompressor, which costs billions of interpreted
/// instructions.
pub fn load_with(
    ram: &mut GuestRam,
    image: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    unpack: bool,
) -> Result<LinuxKernel, LinuxError> {
    let hdr = parse_header(image)?;
    let have = image.len() as u64;
    let setup = setup_size(&hdr);
    let syssize = u64::from(hdr.syssize) * 16;
    let need = setup as u64 + syssize;
    if have < need {
        return Err(LinuxError::Truncated { what: "the protected-mode kernel (setup_sects and syssize)", need, have });
    }
    let kernel = &image[setup..];
    let ram_len = ram.len() as u64;

    // The kernel decompresses itself to pref_address (or, if not relocatable, 16 MiB /
    // LOAD_PHYSICAL_ADDR, which pref_address says) and needs init_size bytes there.
    let code32 = KERNEL_ADDR as u64;
    let pref = if hdr.pref_address != 0 { hdr.pref_address } else { code32 };
    let kernel_end = (code32 + kernel.len() as u64).max(pref + u64::from(hdr.init_size));
    // Some room above the kernel for the page tables and memory map the kernel allocates
    // before it frees anything: below this it dies with a message of its own, or none.
    let need_ram = (kernel_end + (16 << 20)).next_multiple_of(1 << 20);
    if ram_len < need_ram {
        return Err(LinuxError::RamTooSmall { need_mib: need_ram >> 20, end: kernel_end, ram_mib: ram_len >> 20 });
    }

    // The command line.
    let max_cmdline = if hdr.cmdline_size == 0 { 255 } else { hdr.cmdline_size };
    if cmdline.len() > max_cmdline as usize {
        return Err(LinuxError::CmdlineTooLong { len: cmdline.len(), max: max_cmdline });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::CmdlineNul);
    }

    // The initrd: as high as allowed, page aligned.
    let initrd_place = match initrd {
        None => None,
        Some([]) => return Err(LinuxError::EmptyInitrd),
        Some(bytes) => {
            let size = bytes.len() as u64;
            let max = if hdr.initrd_addr_max == 0 { 0x37ff_ffff } else { hdr.initrd_addr_max };
            let top = ram_len.min(u64::from(max) + 1);
            let too_large = LinuxError::InitrdTooLarge { size, kernel_end, top };
            let addr = top.checked_sub(size).ok_or(too_large.clone())? & !0xfff;
            if addr < kernel_end.next_multiple_of(0x1000) {
                return Err(too_large);
            }
            Some((addr, bytes))
        }
    };

    // Everything fits: write.
    let oops = |_| LinuxError::RamTooSmall { need_mib: need_ram >> 20, end: kernel_end, ram_mib: ram_len >> 20 };
    let mut entry = KERNEL_ADDR;
    if unpack {
        let vmlinux = unpack_payload(image, &hdr)?;
        entry = load_vmlinux(ram, &vmlinux, pref, kernel_end)?;
    } else {
        ram.write(code32, kernel).map_err(oops)?;
    }
    if let Some((addr, bytes)) = initrd_place {
        ram.write(addr, bytes).map_err(oops)?;
    }
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    ram.write(CMDLINE_ADDR.into(), &line).map_err(oops)?;
    let gdt: [u64; 4] = [0, 0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write(GDT_ADDR.into(), &gdt_bytes).map_err(oops)?;

    let mut params = boot_params { hdr, ..boot_params::default() };
    params.hdr.type_of_loader = 0xff;
    params.hdr.vid_mode = 0xffff; // "normal"
    params.hdr.cmd_line_ptr = CMDLINE_ADDR;
    params.hdr.code32_start = KERNEL_ADDR;
    if let Some((addr, bytes)) = initrd_place {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = bytes.len() as u32;
    }
    let e820 = e820_map(ram_len);
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, r#type: *kind };
    }
    params.e820_entries = e820.len() as u8;
    // The BIOS's memory sizes, for kernels that look at them: KiB above 1 MiB.
    params.alt_mem_k = u32::try_from((ram_len - 0x10_0000) >> 10).unwrap_or(u32::MAX);
    params.hdr.ram_size = 0;
    ram.write(ZERO_PAGE_ADDR.into(), params.as_slice()).map_err(oops)?;

    Ok(LinuxKernel {
        protocol: hdr.version,
        version: kernel_version(image, &hdr),
        kernel: (KERNEL_ADDR, kernel.len() as u32),
        initrd: initrd_place.map(|(a, b)| (a as u32, b.len() as u32)),
        e820,
        state: {
            let mut s = entry_state();
            s.eip = entry;
            s
        },
    })
}

/// The CPU at the 32-bit boot entry: protected mode, paging off, IF = 0, flat `__BOOT_CS` and
/// `__BOOT_DS` loaded from the loader's GDT, ESI = the zero page, EBP = EDI = EBX = 0.
pub fn entry_state() -> CpuState {
    let mut s = CpuState::flat_protected(0);
    let cs = Segment::flat(BOOT_CS, true, 0);
    let ds = Segment::flat(BOOT_DS, false, 0);
    s.seg = [ds, cs, ds, ds, ds, ds];
    s.gdtr = TableReg { base: GDT_ADDR, limit: 4 * 8 - 1 };
    s.eip = KERNEL_ADDR;
    s.eflags = 0x2;
    s.gpr = [0; 8];
    s.gpr[reg::ESI] = ZERO_PAGE_ADDR;
    // Not part of the protocol (the kernel sets its own stack), but a valid one costs nothing.
    s.gpr[reg::ESP] = ZERO_PAGE_ADDR;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_interp::state::SegReg;

    /// A minimal bzImage: `setup_sects` = 1, a header of protocol `version`, and `payload` as
    /// the protected-mode kernel.
    pub(crate) fn bzimage(version: u16, payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe] = 0x55;
        img[0x1ff] = 0xaa;
        img[0x200] = 0xeb;
        img[0x201] = 0x6a; // header to 0x26c
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&KERNEL_ADDR.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        img[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes()); // kernel_version at 0x300
        img[0x300..0x305].copy_from_slice(b"6.1.0");
        let sys = payload.len().div_ceil(16) as u32;
        img[0x1f4..0x1f8].copy_from_slice(&sys.to_le_bytes());
        img.extend_from_slice(payload);
        img.resize(1024 + sys as usize * 16, 0);
        img
    }

    #[test]
    fn reserve_top_is_added_once() {
        assert_eq!(reserve_top("", 0xff00_0000), "reservetop=16M");
        assert_eq!(reserve_top("console=ttyS0 ", 0xffc0_0000), "console=ttyS0 reservetop=4M");
        assert_eq!(reserve_top("reservetop=64M quiet", 0xff00_0000), "reservetop=64M quiet");
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_zero_page() {
        let mut ram = GuestRam::heap(64 << 20);
        let img = bzimage(0x020f, &[0xf4; 100]);
        let initrd = vec![0x5a; 10_000];
        let k = load(&mut ram, &img, Some(&initrd), "console=ttyS0").unwrap();
        assert_eq!(k.protocol, 0x020f);
        assert_eq!(k.version.as_deref(), Some("6.1.0"));
        assert_eq!(k.kernel, (KERNEL_ADDR, 112));
        assert_eq!(ram.slice(KERNEL_ADDR.into(), 100).unwrap(), &[0xf4; 100][..]);
        let (ia, is) = k.initrd.unwrap();
        assert_eq!(is, 10_000);
        assert_eq!(ia % 4096, 0);
        assert!(u64::from(ia) + 10_000 <= 64 << 20 && u64::from(ia) + 10_000 + 4096 > 64 << 20);
        assert_eq!(ram.slice(ia.into(), 10_000).unwrap(), &initrd[..]);
        assert_eq!(ram.slice(CMDLINE_ADDR.into(), 14).unwrap(), b"console=ttyS0\0");
        // The zero page.
        let zp = ZERO_PAGE_ADDR as u64;
        let rd = |off: u64| ram.read_u32(zp + off).unwrap();
        assert_eq!(&ram.slice(zp + 0x202, 4).unwrap(), b"HdrS");
        assert_eq!(ram.slice(zp + 0x210, 1).unwrap()[0], 0xff); // type_of_loader
        assert_eq!(rd(0x218), ia); // ramdisk_image
        assert_eq!(rd(0x21c), 10_000); // ramdisk_size
        assert_eq!(rd(0x228), CMDLINE_ADDR); // cmd_line_ptr
        assert_eq!(ram.slice(zp + 0x1e8, 1).unwrap()[0], 4); // e820_entries
        // e820 entry 3: RAM from 1 MiB to the end.
        let e = zp + 0x2d0 + 3 * 20;
        assert_eq!(rd(e - zp), 0x10_0000);
        assert_eq!(rd(e - zp + 8), (64 << 20) - 0x10_0000);
        assert_eq!(rd(e - zp + 16), E820_RAM);
        // The entry state.
        let s = &k.state;
        assert_eq!(s.eip, KERNEL_ADDR);
        assert_eq!(s.gpr[reg::ESI], ZERO_PAGE_ADDR);
        assert_eq!(s.seg(SegReg::Cs).selector, BOOT_CS);
        assert_eq!(s.seg(SegReg::Ds).selector, BOOT_DS);
        assert_eq!(s.seg(SegReg::Ss).selector, BOOT_DS);
        assert_eq!(s.eflags & vmm_interp::state::flags::IF, 0);
        assert!(!s.paging() && s.protected_mode());
        assert_eq!(ram.read_u32(GDT_ADDR as u64 + 0x14).unwrap(), 0x00cf_9a00);
        assert_eq!(ram.read_u32(GDT_ADDR as u64 + 0x1c).unwrap(), 0x00cf_9200);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut ram = GuestRam::heap(64 << 20);
        let img = bzimage(0x020f, &[0x90; 4096]);
        assert_eq!(load(&mut ram, b"#!/bin/sh\n", None, "").unwrap_err(), LinuxError::NotLinux);
        assert!(matches!(load(&mut ram, &[0u8; 4096], None, ""), Err(LinuxError::NotLinux)));
        assert!(matches!(load(&mut ram, &img[..0x204], None, ""), Err(LinuxError::Truncated { .. })));
        assert!(matches!(load(&mut ram, &img[..3000], None, ""), Err(LinuxError::Truncated { .. })));
        assert!(matches!(load(&mut ram, &bzimage(0x0204, &[0; 16]), None, ""), Err(LinuxError::OldProtocol(0x0204))));
        let mut low = img.clone();
        low[0x211] = 0;
        assert_eq!(load(&mut ram, &low, None, "").unwrap_err(), LinuxError::NotLoadedHigh);
        // pref_address 16 MiB + init_size 4 MiB + 16 MiB of room: 36 MiB.
        let mut small = GuestRam::heap(32 << 20);
        let e = load(&mut small, &img, None, "").unwrap_err();
        assert!(matches!(e, LinuxError::RamTooSmall { need_mib: 36, .. }), "{e}");
        assert!(e.to_string().contains("--mem"));
        let big = vec![1u8; 60 << 20];
        assert!(matches!(load(&mut ram, &img, Some(&big), ""), Err(LinuxError::InitrdTooLarge { .. })));
        assert_eq!(load(&mut ram, &img, Some(&[]), "").unwrap_err(), LinuxError::EmptyInitrd);
        let long = "x".repeat(2049);
        assert!(matches!(load(&mut ram, &img, None, &long), Err(LinuxError::CmdlineTooLong { max: 2048, .. })));
        assert!(load(&mut ram, &img, None, &"x".repeat(2048)).is_ok());
        // A fuzz of truncations: never a panic.
        for n in 0..img.len().min(1200) {
            let _ = load(&mut ram, &img[..n], Some(&[1]), "a");
        }
    }

    #[test]
    fn detection() {
        assert!(is_bzimage(&bzimage(0x020f, &[0; 16])));
        assert!(!is_bzimage(b"\x7fELF"));
        assert!(!is_bzimage(&[]));
    }
}
