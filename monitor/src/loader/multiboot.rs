//! Multiboot 1 (the GNU Multiboot Specification 0.6.96) for ELF test kernels.
//!
//! The kernel image carries a Multiboot header (magic 0x1BADB002, flags, checksum making the
//! three sum to zero) 4-byte aligned within its first 8 KiB. Its ELF32 i386 `PT_LOAD` segments
//! are copied to their physical addresses (`p_paddr`) and the rest of each segment up to
//! `p_memsz` is zeroed (BSS). If the header's flag bit 16 is set, the header's own load
//! addresses are used instead (the "a.out kludge"; also how a flat binary is loaded).
//!
//! The Multiboot information structure (MBI) is built at [`MBI_BASE`], in low memory below
//! 640 KiB where PC kernels never load: flags, `mem_lower`/`mem_upper`, the command line, a
//! BIOS-style memory map and the boot loader name. The CPU starts in 32-bit protected mode,
//! flat 4 GiB segments, paging off, IF = 0, EAX = 0x2BADB002, EBX = the MBI's address.
//!
//! Everything is validated before anything is written, and every problem with the image is a
//! [`LoadError`] with a message that names it: never a panic.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS32, ELFDATA2LSB, ELFMAG, EM_386, ET_EXEC, SELFMAG};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD};
use vmm_interp::state::flags;
use vmm_interp::CpuState;

use crate::memory::GuestRam;

/// The magic of the Multiboot header in the kernel image.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// The value in EAX when the kernel starts.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie within this many bytes from the start of the file.
pub const HEADER_SEARCH: usize = 8192;

/// Where the MBI and everything it points to (memory map, command line, loader name) go.
pub const MBI_BASE: u32 = 0x8000;
/// The end of the boot-information area (exclusive).
pub const MBI_END: u32 = 0x1_0000;
const MMAP_OFFSET: u32 = 0x100;
const NAME_OFFSET: u32 = 0x200;
const CMDLINE_OFFSET: u32 = 0x300;
/// The longest command line that fits (without its NUL).
pub const MAX_CMDLINE: usize = (MBI_END - MBI_BASE - CMDLINE_OFFSET - 1) as usize;
/// The start of the EBDA / end of conventional memory reported to the guest (639 KiB).
const LOW_MEM_END: u64 = 0x9_fc00;
const HIGH_MEM: u64 = 0x10_0000;

/// Header flags the loader honours: bit 0 (page-align modules: there are none), bit 1
/// (memory information: always given), bit 16 (load addresses in the header).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMINFO: u32 = 1 << 1;
const FLAG_VIDEO: u32 = 1 << 2;
const FLAG_ADDRESSES: u32 = 1 << 16;

/// MBI flags the loader sets.
const MBI_MEM: u32 = 1 << 0;
const MBI_CMDLINE: u32 = 1 << 2;
const MBI_MMAP: u32 = 1 << 6;
const MBI_LOADER_NAME: u32 = 1 << 9;

/// Why a kernel image cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("the kernel image is empty")]
    Empty,
    #[error("not an ELF file (no ELF magic) and no Multiboot header with load addresses (flag bit 16) in its first 8 KiB")]
    NotElf,
    #[error("not a 32-bit ELF file (ELF class {0}; Multiboot 1 kernels are ELF32)")]
    NotElf32(u8),
    #[error("not a little-endian ELF file (ELF data encoding {0})")]
    NotLittleEndian(u8),
    #[error("not an i386 ELF file (e_machine {0}; expected EM_386 = 3)")]
    NotI386(u16),
    #[error("not an executable ELF file (e_type {0}; expected ET_EXEC = 2)")]
    NotExecutable(u16),
    #[error("malformed ELF file: {0}")]
    Elf(String),
    #[error("no Multiboot header (magic 0x1badb002, 4-byte aligned) in the first 8 KiB of the image")]
    NoHeader,
    #[error("the Multiboot header at file offset {offset:#x} has a bad checksum: magic {magic:#010x} + flags {flags:#010x} + checksum {checksum:#010x} is not 0 (mod 2^32)")]
    BadChecksum { offset: usize, magic: u32, flags: u32, checksum: u32 },
    #[error("the Multiboot header at file offset {offset:#x} is truncated")]
    TruncatedHeader { offset: usize },
    #[error("the kernel requires Multiboot features vmm does not provide (header flags {flags:#010x}: {what})")]
    UnsupportedFlags { flags: u32, what: String },
    #[error("the ELF file has no loadable (PT_LOAD) segment")]
    NoSegments,
    #[error("segment {index}: file size {filesz:#x} is larger than its memory size {memsz:#x}")]
    FileSizeAboveMemSize { index: usize, filesz: u64, memsz: u64 },
    #[error("segment {index}: file bytes {offset:#x}+{size:#x} lie outside the {file_len}-byte file (truncated image?)")]
    SegmentOutsideFile { index: usize, offset: u64, size: u64, file_len: usize },
    #[error("the kernel needs {size:#x} bytes ({} MiB) of memory, more than the guest's {ram:#x} bytes ({} MiB)", size >> 20, ram >> 20)]
    KernelTooLarge { size: u64, ram: u64 },
    #[error("segment {index} at physical {addr:#x}+{size:#x} lies outside guest memory ({ram:#x} bytes)")]
    SegmentOutsideRam { index: usize, addr: u64, size: u64, ram: u64 },
    #[error("segment {index} at physical {addr:#x}+{size:#x} overlaps the Multiboot information area [{:#x}, {:#x})", MBI_BASE, MBI_END)]
    SegmentOverlapsMbi { index: usize, addr: u64, size: u64 },
    #[error("the entry point {0:#010x} is not inside any loaded segment")]
    EntryNotLoaded(u32),
    #[error("the command line is {0} bytes; at most {MAX_CMDLINE} fit")]
    CmdlineTooLong(usize),
    #[error("guest memory of {0:#x} bytes is too small for the Multiboot information area")]
    RamTooSmall(u64),
    #[error("the Multiboot header's load addresses are inconsistent: {0}")]
    BadAddresses(String),
}

/// A segment as loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub addr: u32,
    /// Bytes copied from the file.
    pub file_size: u32,
    /// Bytes occupied in memory (the rest zeroed).
    pub mem_size: u32,
}

/// A loaded kernel: where it went and how to start it.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub entry: u32,
    pub mbi_addr: u32,
    pub segments: Vec<Segment>,
    /// The CPU state the kernel starts in.
    pub state: CpuState,
}

/// The Multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset.
    pub offset: usize,
    pub flags: u32,
    /// Header fields at offsets 12-28, meaningful with flag bit 16.
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Find and check the Multiboot header.
pub fn find_header(image: &[u8]) -> Result<Header, LoadError> {
    let limit = image.len().min(HEADER_SEARCH);
    let mut off = 0;
    while off + 12 <= limit {
        if u32_at(image, off) == Some(HEADER_MAGIC) {
            let flags = u32_at(image, off + 4).unwrap_or(0);
            let checksum = u32_at(image, off + 8).unwrap_or(0);
            if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
                return Err(LoadError::BadChecksum { offset: off, magic: HEADER_MAGIC, flags, checksum });
            }
            let mut h = Header { offset: off, flags, ..Header::default_at(off) };
            if flags & FLAG_ADDRESSES != 0 {
                let f = |i: usize| u32_at(image, off + 12 + 4 * i).ok_or(LoadError::TruncatedHeader { offset: off });
                h.header_addr = f(0)?;
                h.load_addr = f(1)?;
                h.load_end_addr = f(2)?;
                h.bss_end_addr = f(3)?;
                h.entry_addr = f(4)?;
            }
            return Ok(h);
        }
        off += 4;
    }
    Err(LoadError::NoHeader)
}

impl Header {
    fn default_at(offset: usize) -> Header {
        Header { offset, flags: 0, header_addr: 0, load_addr: 0, load_end_addr: 0, bss_end_addr: 0, entry_addr: 0 }
    }
}

/// What will be copied where: (physical address, file range, memory size).
struct Plan {
    entry: u32,
    /// (index for messages, addr, file offset, file size, mem size)
    segments: Vec<(usize, u64, u64, u64, u64)>,
}

/// The ELF identification and header fields that make a file an i386 executable.
fn check_ident(image: &[u8]) -> Result<(), LoadError> {
    if image.len() < 0x34 {
        return Err(LoadError::Elf(format!("{} bytes is too short for an ELF32 header", image.len())));
    }
    if image[EI_CLASS] != ELFCLASS32 {
        return Err(LoadError::NotElf32(image[EI_CLASS]));
    }
    if image[EI_DATA] != ELFDATA2LSB {
        return Err(LoadError::NotLittleEndian(image[EI_DATA]));
    }
    let machine = u16::from_le_bytes([image[18], image[19]]);
    if machine != EM_386 {
        return Err(LoadError::NotI386(machine));
    }
    Ok(())
}

fn plan_elf(image: &[u8]) -> Result<Plan, LoadError> {
    check_ident(image)?;
    let header = goblin::elf::Elf::parse_header(image).map_err(|e| LoadError::Elf(e.to_string()))?;
    if header.e_machine != EM_386 {
        return Err(LoadError::NotI386(header.e_machine));
    }
    if header.e_type != ET_EXEC {
        return Err(LoadError::NotExecutable(header.e_type));
    }
    let ctx = Ctx::new(Container::Little, Endian::Little);
    let phoff = usize::try_from(header.e_phoff).map_err(|_| LoadError::Elf("e_phoff out of range".into()))?;
    if header.e_phnum != 0 && phoff >= image.len() {
        return Err(LoadError::Elf(format!("program headers at {phoff:#x} lie outside the {}-byte file", image.len())));
    }
    let phdrs = ProgramHeader::parse(image, phoff, header.e_phnum as usize, ctx)
        .map_err(|e| LoadError::Elf(format!("program headers: {e}")))?;
    let segments: Vec<_> = phdrs
        .iter()
        .enumerate()
        .filter(|(_, p)| p.p_type == PT_LOAD && p.p_memsz > 0)
        .map(|(i, p)| (i, p.p_paddr, p.p_offset, p.p_filesz, p.p_memsz))
        .collect();
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    let entry = u32::try_from(header.e_entry).map_err(|_| LoadError::EntryNotLoaded(u32::MAX))?;
    // GRUB translates a virtual entry point into the segment's physical address space;
    // accept the entry inside either range.
    let inside = phdrs.iter().filter(|p| p.p_type == PT_LOAD).find_map(|p| {
        if (p.p_paddr..p.p_paddr.saturating_add(p.p_memsz)).contains(&header.e_entry) {
            Some(entry)
        } else if (p.p_vaddr..p.p_vaddr.saturating_add(p.p_memsz)).contains(&header.e_entry) {
            u32::try_from(header.e_entry - p.p_vaddr + p.p_paddr).ok()
        } else {
            None
        }
    });
    let entry = inside.ok_or(LoadError::EntryNotLoaded(entry))?;
    Ok(Plan { entry, segments })
}

fn plan_addresses(image: &[u8], h: &Header) -> Result<Plan, LoadError> {
    let bad = |s: &str| LoadError::BadAddresses(s.to_string());
    if h.load_addr > h.header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let file_off = (h.offset as u64).checked_sub((h.header_addr - h.load_addr) as u64).ok_or(bad(
        "header_addr - load_addr is larger than the header's file offset",
    ))?;
    let file_size = if h.load_end_addr == 0 {
        image.len() as u64 - file_off
    } else {
        (h.load_end_addr as u64).checked_sub(h.load_addr as u64).ok_or(bad("load_end_addr is below load_addr"))?
    };
    let mem_size = if h.bss_end_addr == 0 {
        file_size
    } else {
        (h.bss_end_addr as u64)
            .checked_sub(h.load_addr as u64)
            .filter(|m| *m >= file_size)
            .ok_or(bad("bss_end_addr is below load_end_addr"))?
    };
    if !(h.load_addr as u64..h.load_addr as u64 + mem_size).contains(&(h.entry_addr as u64)) {
        return Err(LoadError::EntryNotLoaded(h.entry_addr));
    }
    Ok(Plan { entry: h.entry_addr, segments: vec![(0, h.load_addr as u64, file_off, file_size, mem_size)] })
}

/// Load a Multiboot kernel `image` into `ram` with command line `cmdline`.
pub fn load(ram: &mut GuestRam, image: &[u8], cmdline: &str) -> Result<Kernel, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    let is_elf = image.len() >= SELFMAG && &image[..SELFMAG] == ELFMAG;
    if is_elf {
        check_ident(image)?;
    }
    let header = match find_header(image) {
        Ok(h) => h,
        Err(LoadError::NoHeader) if !is_elf => return Err(LoadError::NotElf),
        Err(e) => return Err(e),
    };
    let required = header.flags & 0xffff;
    let unsupported = required & !(FLAG_PAGE_ALIGN | FLAG_MEMINFO);
    if unsupported != 0 {
        let what = if unsupported & FLAG_VIDEO != 0 {
            "a graphics mode (bit 2)".to_string()
        } else {
            format!("unknown required bits {unsupported:#x}")
        };
        return Err(LoadError::UnsupportedFlags { flags: header.flags, what });
    }
    let plan = if header.flags & FLAG_ADDRESSES != 0 {
        plan_addresses(image, &header)?
    } else if is_elf {
        plan_elf(image)?
    } else {
        return Err(LoadError::NotElf);
    };
    if cmdline.len() > MAX_CMDLINE {
        return Err(LoadError::CmdlineTooLong(cmdline.len()));
    }
    let ram_len = ram.len() as u64;
    if ram_len < MBI_END as u64 {
        return Err(LoadError::RamTooSmall(ram_len));
    }

    // Validate every segment before writing anything.
    let total: u64 = plan.segments.iter().map(|s| s.4).fold(0u64, |a, b| a.saturating_add(b));
    if total > ram_len {
        return Err(LoadError::KernelTooLarge { size: total, ram: ram_len });
    }
    for &(index, addr, offset, filesz, memsz) in &plan.segments {
        if filesz > memsz {
            return Err(LoadError::FileSizeAboveMemSize { index, filesz, memsz });
        }
        if offset.checked_add(filesz).is_none_or(|end| end > image.len() as u64) {
            return Err(LoadError::SegmentOutsideFile { index, offset, size: filesz, file_len: image.len() });
        }
        if addr.checked_add(memsz).is_none_or(|end| end > ram_len) {
            return Err(LoadError::SegmentOutsideRam { index, addr, size: memsz, ram: ram_len });
        }
        if addr < MBI_END as u64 && addr + memsz > MBI_BASE as u64 {
            return Err(LoadError::SegmentOverlapsMbi { index, addr, size: memsz });
        }
    }

    let mut segments = Vec::new();
    for &(_, addr, offset, filesz, memsz) in &plan.segments {
        let bytes = &image[offset as usize..(offset + filesz) as usize];
        // Checked above: these cannot fail.
        ram.write(addr, bytes).map_err(|e| LoadError::Elf(e.to_string()))?;
        ram.zero(addr + filesz, (memsz - filesz) as usize).map_err(|e| LoadError::Elf(e.to_string()))?;
        segments.push(Segment { addr: addr as u32, file_size: filesz as u32, mem_size: memsz as u32 });
    }

    let mbi_addr = write_mbi(ram, cmdline).map_err(|e| LoadError::Elf(e.to_string()))?;
    Ok(Kernel { entry: plan.entry, mbi_addr, segments, state: entry_state(plan.entry, mbi_addr) })
}

/// The BIOS-style memory map for `ram_len` bytes of RAM: (base, length, type), type 1 =
/// available, 2 = reserved.
pub fn memory_map(ram_len: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, ram_len.min(LOW_MEM_END), 1)];
    if ram_len > LOW_MEM_END {
        map.push((LOW_MEM_END, 0xa_0000 - LOW_MEM_END, 2));
        // The BIOS area: reserved on a PC whatever backs it here.
        map.push((0xf_0000, 0x1_0000, 2));
    }
    if ram_len > HIGH_MEM {
        map.push((HIGH_MEM, ram_len - HIGH_MEM, 1));
    }
    map
}

fn write_mbi(ram: &mut GuestRam, cmdline: &str) -> Result<u32, crate::memory::OutOfRam> {
    let ram_len = ram.len() as u64;
    let base = MBI_BASE as u64;
    ram.zero(base, (MBI_END - MBI_BASE) as usize)?;
    let mem_lower = (ram_len.min(LOW_MEM_END) / 1024) as u32;
    let mem_upper = (ram_len.saturating_sub(HIGH_MEM).min(0xffff_ffff_u64 << 10) / 1024) as u32;

    let mmap_addr = MBI_BASE + MMAP_OFFSET;
    let mut mmap = Vec::new();
    for (b, l, t) in memory_map(ram_len) {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&b.to_le_bytes());
        mmap.extend_from_slice(&l.to_le_bytes());
        mmap.extend_from_slice(&t.to_le_bytes());
    }
    ram.write(mmap_addr as u64, &mmap)?;
    let name_addr = MBI_BASE + NAME_OFFSET;
    ram.write(name_addr as u64, b"vmm\0")?;
    let cmdline_addr = MBI_BASE + CMDLINE_OFFSET;
    ram.write(cmdline_addr as u64, cmdline.as_bytes())?;
    ram.write(cmdline_addr as u64 + cmdline.len() as u64, &[0])?;

    let fields: [(u32, u32); 7] = [
        (0, MBI_MEM | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME),
        (4, mem_lower),
        (8, mem_upper),
        (16, cmdline_addr),
        (44, mmap.len() as u32),
        (48, mmap_addr),
        (64, name_addr),
    ];
    for (off, v) in fields {
        ram.write_u32(base + off as u64, v)?;
    }
    Ok(MBI_BASE)
}

/// The machine state of the Multiboot hand-off.
pub fn entry_state(entry: u32, mbi_addr: u32) -> CpuState {
    // Flat 32-bit segments (CS 0x08, data 0x10), CR0.PE with paging off, GDTR/IDTR unset.
    let mut s = CpuState::flat_protected(0);
    s.eip = entry;
    s.eflags = flags::FIXED1;
    s.gpr[vmm_interp::state::reg::EAX] = BOOTLOADER_MAGIC;
    s.gpr[vmm_interp::state::reg::EBX] = mbi_addr;
    // The spec leaves ESP undefined; give the kernel a usable one below the MBI.
    s.gpr[vmm_interp::state::reg::ESP] = MBI_BASE;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_interp::state::{cr, SegReg};

    const LOAD: u32 = 0x10_0000;

    fn mb_header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&(0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)).to_le_bytes());
        h
    }

    /// A minimal ELF32 executable: header, program headers, then each segment's bytes.
    /// `segs`: (paddr, bytes, memsz).
    fn elf(entry: u32, segs: &[(u32, Vec<u8>, u32)]) -> Vec<u8> {
        let phoff = 52u32;
        let mut data_off = phoff + 32 * segs.len() as u32;
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
        out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out.extend_from_slice(&3u16.to_le_bytes()); // EM_386
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&phoff.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&52u16.to_le_bytes());
        out.extend_from_slice(&32u16.to_le_bytes());
        out.extend_from_slice(&(segs.len() as u16).to_le_bytes());
        out.extend_from_slice(&40u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        for (paddr, bytes, memsz) in segs {
            for v in [1, data_off, *paddr, *paddr, bytes.len() as u32, *memsz, 7, 4] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            data_off += bytes.len() as u32;
        }
        for (_, bytes, _) in segs {
            out.extend_from_slice(bytes);
        }
        out
    }

    fn kernel_text() -> Vec<u8> {
        let mut t = mb_header(FLAG_MEMINFO);
        t.extend_from_slice(&[0xf4; 4]); // hlt
        t
    }

    #[test]
    fn loads_segments_zeroes_bss_and_builds_the_mbi() {
        let text = kernel_text();
        let data = vec![0xaa; 8];
        let img = elf(LOAD + 12, &[(LOAD, text.clone(), text.len() as u32), (LOAD + 0x1000, data, 0x100)]);
        let mut ram = GuestRam::heap(16 << 20);
        ram.write(LOAD as u64 + 0x1008, &[0x55; 0x10]).unwrap();
        let k = load(&mut ram, &img, "console=ttyS0 test").unwrap();
        assert_eq!(k.entry, LOAD + 12);
        assert_eq!(ram.slice(LOAD as u64, text.len()).unwrap(), &text[..]);
        assert_eq!(ram.slice(LOAD as u64 + 0x1000, 8).unwrap(), &[0xaa; 8]);
        assert!(ram.slice(LOAD as u64 + 0x1008, 0xf8).unwrap().iter().all(|b| *b == 0), "BSS zeroed");
        assert_eq!(k.segments.len(), 2);
        assert_eq!(k.segments[1], Segment { addr: LOAD + 0x1000, file_size: 8, mem_size: 0x100 });

        // Entry state (Multiboot spec section 3.2).
        let s = &k.state;
        assert_eq!(s.gpr[0], 0x2bad_b002);
        assert_eq!(s.gpr[3], k.mbi_addr);
        assert_eq!(s.eip, LOAD + 12);
        assert_eq!(s.eflags & (flags::IF | flags::VM), 0);
        assert_ne!(s.cr0 & cr::CR0_PE, 0);
        assert_eq!(s.cr0 & cr::CR0_PG, 0);
        for seg in SegReg::ALL {
            let d = s.seg(seg);
            assert_eq!((d.base, d.limit), (0, 0xffff_ffff), "{}", seg.name());
            assert!(d.big() && d.present());
        }
        assert!(s.seg(SegReg::Cs).is_code());
        assert_eq!(s.cpl, 0);

        // MBI fields (Multiboot spec section 3.3).
        let mbi = k.mbi_addr as u64;
        let rd = |a: u64| ram.read_u32(a).unwrap();
        let f = rd(mbi);
        assert_eq!(f & (1 | 4 | 64 | 512), 1 | 4 | 64 | 512);
        assert_eq!(rd(mbi + 4), 639);
        assert_eq!(rd(mbi + 8), 15 * 1024);
        let cmd = rd(mbi + 16) as u64;
        assert_eq!(ram.slice(cmd, 19).unwrap(), b"console=ttyS0 test\0");
        let (len, addr) = (rd(mbi + 44) as u64, rd(mbi + 48) as u64);
        let mut entries = Vec::new();
        let mut p = addr;
        while p < addr + len {
            let size = rd(p) as u64;
            let b = ram.slice(p + 4, 20).unwrap();
            let base = u64::from_le_bytes(b[0..8].try_into().unwrap());
            let length = u64::from_le_bytes(b[8..16].try_into().unwrap());
            let ty = u32::from_le_bytes(b[16..20].try_into().unwrap());
            entries.push((base, length, ty));
            p += size + 4;
        }
        assert!(entries.contains(&(0, 0x9fc00, 1)));
        assert!(entries.contains(&(0x10_0000, 15 << 20, 1)));
        let name = rd(mbi + 64) as u64;
        assert_eq!(ram.slice(name, 4).unwrap(), b"vmm\0");
    }

    fn err(img: &[u8], ram: usize) -> LoadError {
        let mut r = GuestRam::heap(ram);
        let e = load(&mut r, img, "").unwrap_err();
        assert!(!e.to_string().is_empty());
        e
    }

    #[test]
    fn not_elf() {
        assert_eq!(err(b"", 1 << 20), LoadError::Empty);
        assert_eq!(err(b"#!/bin/sh\necho hello\n", 1 << 20), LoadError::NotElf);
        // A Multiboot header without load addresses in a non-ELF file.
        let mut flat = mb_header(0);
        flat.extend_from_slice(&[0x90; 100]);
        assert_eq!(err(&flat, 1 << 20), LoadError::NotElf);
    }

    #[test]
    fn wrong_elf_class_or_machine() {
        let text = kernel_text();
        let mut img = elf(LOAD + 12, &[(LOAD, text.clone(), 16)]);
        img[4] = 2;
        assert_eq!(err(&img, 4 << 20), LoadError::NotElf32(2));
        let mut img = elf(LOAD + 12, &[(LOAD, text.clone(), 16)]);
        img[5] = 2;
        assert_eq!(err(&img, 4 << 20), LoadError::NotLittleEndian(2));
        let mut img = elf(LOAD + 12, &[(LOAD, text, 16)]);
        img[18] = 62; // EM_X86_64
        assert_eq!(err(&img, 4 << 20), LoadError::NotI386(62));
    }

    #[test]
    fn missing_or_corrupt_header() {
        let img = elf(LOAD, &[(LOAD, vec![0xf4; 64], 64)]);
        assert_eq!(err(&img, 4 << 20), LoadError::NoHeader);
        let mut text = kernel_text();
        text[8] ^= 1;
        let img = elf(LOAD + 12, &[(LOAD, text, 16)]);
        assert!(matches!(err(&img, 4 << 20), LoadError::BadChecksum { .. }));
        // A header beyond the first 8 KiB is not found.
        let mut text = vec![0x90; 8192];
        text.extend_from_slice(&kernel_text());
        let n = text.len() as u32;
        let img = elf(LOAD, &[(LOAD, text, n)]);
        assert_eq!(err(&img, 4 << 20), LoadError::NoHeader);
    }

    #[test]
    fn unsupported_requirements() {
        let mut text = mb_header(FLAG_VIDEO);
        text.push(0xf4);
        let img = elf(LOAD + 12, &[(LOAD, text, 13)]);
        assert!(matches!(err(&img, 4 << 20), LoadError::UnsupportedFlags { .. }));
    }

    #[test]
    fn segments_must_fit() {
        let text = kernel_text();
        // A kernel larger than guest memory.
        let img = elf(LOAD + 12, &[(LOAD, text.clone(), 16 << 20)]);
        assert!(matches!(err(&img, 4 << 20), LoadError::KernelTooLarge { .. }));
        // A segment past the end of RAM.
        let img = elf(0x3f_fff0 + 12, &[(0x3f_fff0, text.clone(), 0x100)]);
        assert!(matches!(err(&img, 4 << 20), LoadError::SegmentOutsideRam { .. }));
        // A segment at the top of the 4 GiB space (address arithmetic must not wrap).
        let img = elf(0xffff_ff00 + 12, &[(0xffff_ff00, text.clone(), 0x1000)]);
        assert!(matches!(err(&img, 4 << 20), LoadError::SegmentOutsideRam { .. }));
        // Over the MBI.
        let img = elf(0x8000 + 12, &[(0x8000, text.clone(), 16)]);
        assert!(matches!(err(&img, 4 << 20), LoadError::SegmentOverlapsMbi { .. }));
        // File bytes past the end of a truncated file.
        let mut img = elf(LOAD + 12, &[(LOAD, text.clone(), 16)]);
        img.truncate(img.len() - 2);
        assert!(matches!(err(&img, 4 << 20), LoadError::SegmentOutsideFile { .. }));
        // Entry outside every segment.
        let img = elf(0x5000, &[(LOAD, text, 16)]);
        assert_eq!(err(&img, 4 << 20), LoadError::EntryNotLoaded(0x5000));
    }

    #[test]
    fn failed_loads_write_nothing() {
        let text = kernel_text();
        let img = elf(LOAD + 12, &[(LOAD, text.clone(), 16), (0x8000, text, 16)]);
        let mut ram = GuestRam::heap(4 << 20);
        assert!(load(&mut ram, &img, "").is_err());
        assert!(ram.as_slice().iter().all(|b| *b == 0));
    }

    #[test]
    fn truncated_elf_headers_are_errors() {
        let text = kernel_text();
        let img = elf(LOAD + 12, &[(LOAD, text, 16)]);
        for n in [3, 4, 20, 51, 60] {
            let e = err(&img[..n], 4 << 20);
            assert!(matches!(e, LoadError::Elf(_) | LoadError::NoHeader | LoadError::NotElf), "{n}: {e}");
        }
        // Program header count pointing past the file.
        let mut img = img.clone();
        img[44] = 200;
        assert!(matches!(err(&img, 4 << 20), LoadError::Elf(_)));
    }

    #[test]
    fn a_out_kludge_loads_a_flat_binary() {
        // Header at file offset 0 of a flat image that loads at 1 MiB with 0x100 bytes of BSS.
        let flags = FLAG_MEMINFO | FLAG_ADDRESSES;
        let mut img = mb_header(flags);
        for v in [LOAD, LOAD, 0, LOAD + 0x200, LOAD + 32] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.extend_from_slice(&[0xf4; 8]);
        let mut ram = GuestRam::heap(4 << 20);
        ram.write(LOAD as u64 + 40, &[1; 16]).unwrap();
        let k = load(&mut ram, &img, "").unwrap();
        assert_eq!(k.entry, LOAD + 32);
        assert_eq!(ram.slice(LOAD as u64 + 32, 8).unwrap(), &[0xf4; 8]);
        assert_eq!(ram.slice(LOAD as u64 + 40, 16).unwrap(), &[0; 16]);
        assert_eq!(k.segments[0].mem_size, 0x200);
    }

    #[test]
    fn small_ram_memory_map() {
        assert_eq!(memory_map(0x8_0000), vec![(0, 0x8_0000, 1)]);
        let m = memory_map(64 << 20);
        assert_eq!(m.last(), Some(&(0x10_0000, (64 << 20) - 0x10_0000, 1)));
    }
}
