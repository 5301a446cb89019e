//! Descriptor shadowing rules (ARCHITECTURE.md section 6): what a guest GDT/LDT code or
//! data descriptor becomes in the host LDT, and where in the host LDT it goes.
//!
//! # The rule
//!
//! A shadow keeps the guest descriptor's type (code/data, conforming/expand-down,
//! readable/writable), base, D/B bit and granularity, gets DPL 3 (ring compression: guest
//! CPL 0 and CPL 3 both run at host CPL 3), is never a 64-bit code segment (the L bit is
//! not carried), and has its limit truncated so that every linear address the segment can
//! reach without wrapping lies below `top` (the monitor area's base, or
//! [`ShadowMmu::user_limit`](crate::ShadowMmu::user_limit) for segments used at CPL 3).
//! System descriptors (TSS, LDT, call/interrupt/trap/task gates) and not-present
//! descriptors are never shadowed: the monitor interprets them.
//!
//! ## Expand-up segments (all code segments, and data without the E bit)
//!
//! Valid offsets are `[0, limit]`, linear `[base, base + limit]`. The limit is lowered to
//! `top - 1 - base`. With G = 1 the limit counts whole pages, so it is rounded *down* to a
//! page: up to 4095 bytes below `top` become unreachable when `base` is not page aligned.
//! If not even one page fits (`top - base < 4096`), the shadow switches to byte
//! granularity. A segment that wraps around 4 GiB (base + limit ≥ 2^32) loses its wrapped
//! part: offsets that would wrap to low linear addresses now exceed the limit.
//!
//! If no byte of the segment lies below `top` (`base >= top`):
//! * a data segment becomes an *empty* segment: expand-down, B = 1, G = 1, limit 0xFFFFF,
//!   whose valid offsets `(0xFFFFFFFF, 0xFFFFFFFF]` are none. Loading it succeeds as it does
//!   on the guest's CPU; every access through it faults;
//! * a code segment cannot be made empty, so its shadow is **not present**: a far
//!   transfer to it raises #NP on the host, which the runtime must recognise as a
//!   truncation fault (the guest's CPU would have faulted only on the first fetch).
//!
//! ## Expand-down data segments
//!
//! Valid offsets are `(limit, upper]` with `upper` = 0xFFFFFFFF (B = 1) or 0xFFFF (B = 0),
//! linear `[base + limit + 1, base + upper]` (mod 2^32). The upper end is fixed by B, which
//! cannot change (it selects SP or ESP for stack operations), so truncation can only
//! *raise* the limit, cutting the low end of the range:
//! * if `base + upper < top` the segment is left alone;
//! * if `base + upper` wraps around 4 GiB and its wrapped end `base + upper - 2^32` lies
//!   below `top`, the limit is raised to `2^32 - 1 - base`, so only the offsets that wrap
//!   to low linear addresses `[0, base + upper - 2^32]` stay valid (the part between the
//!   old start and `top` is lost);
//! * otherwise the end of the segment lies in `[top, 4 GiB)`, which cannot be excluded:
//!   the segment becomes empty (G = 1, limit 0xFFFFF: the limit reaches `upper`).
//!
//! The raised limit is expressed in the original granularity when possible, otherwise with
//! G = 1 (rounded up to a page, which only removes more).
//!
//! Every access that truncation alone forbids faults on the host (#GP or #SS) where the
//! guest's CPU would not have: the runtime emulates it (ARCHITECTURE.md section 7).

/// A shadow descriptor for the host LDT (the fields of Linux's `struct user_desc`, plus the
/// type bits). Always DPL 3, never 64-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostDesc {
    pub base: u32,
    /// G: the limit counts 4 KiB pages.
    pub limit_pages: bool,
    /// Raw 20-bit limit.
    pub limit: u32,
    pub code: bool,
    /// Type bit 2: conforming (code) or expand-down (data).
    pub conforming_or_expand_down: bool,
    /// Type bit 1: readable (code) or writable (data).
    pub writable_or_readable: bool,
    /// D/B.
    pub big: bool,
    pub present: bool,
}

impl HostDesc {
    /// The limit in bytes, scaled by G.
    pub fn byte_limit(&self) -> u32 {
        if self.limit_pages {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        }
    }

    /// The 8-byte descriptor as the host LDT will hold it (DPL 3, Accessed set, AVL and L
    /// clear), for tests and debugging.
    pub fn to_raw(&self) -> u64 {
        let b = u64::from(self.base);
        let l = u64::from(self.limit & 0xf_ffff);
        let mut ty = 1u64; // accessed
        if self.code {
            ty |= 8;
        }
        if self.conforming_or_expand_down {
            ty |= 4;
        }
        if self.writable_or_readable {
            ty |= 2;
        }
        let mut d = (l & 0xffff) | ((b & 0xff_ffff) << 16) | (ty << 40) | (1 << 44) | (3 << 45);
        d |= ((l >> 16) & 0xf) << 48 | ((b >> 24) & 0xff) << 56;
        if self.present {
            d |= 1 << 47;
        }
        if self.big {
            d |= 1 << 54;
        }
        if self.limit_pages {
            d |= 1 << 55;
        }
        d
    }
}

/// The fields of a raw guest descriptor.
#[derive(Clone, Copy, Debug)]
struct Raw {
    base: u32,
    limit: u32,
    ty: u32,
    s: bool,
    p: bool,
    db: bool,
    g: bool,
}

fn parse(raw: u64) -> Raw {
    Raw {
        base: (((raw >> 16) & 0xff_ffff) | ((raw >> 56) & 0xff) << 24) as u32,
        limit: ((raw & 0xffff) | ((raw >> 48) & 0xf) << 16) as u32,
        ty: ((raw >> 40) & 0xf) as u32,
        s: raw & (1 << 44) != 0,
        p: raw & (1 << 47) != 0,
        db: raw & (1 << 54) != 0,
        g: raw & (1 << 55) != 0,
    }
}

const EMPTY_LIMIT: u32 = 0xf_ffff;

/// The shadow of guest descriptor `raw` for a host LDT slot, truncated below `top` (see the
/// module documentation). `None` for system descriptors and not-present descriptors.
pub fn shadow_descriptor(raw: u64, top: u32) -> Option<HostDesc> {
    let r = parse(raw);
    if !r.s || !r.p {
        return None;
    }
    let mut d = HostDesc {
        base: r.base,
        limit_pages: r.g,
        limit: r.limit,
        code: r.ty & 8 != 0,
        conforming_or_expand_down: r.ty & 4 != 0,
        writable_or_readable: r.ty & 2 != 0,
        big: r.db,
        present: true,
    };
    let top = u64::from(top);
    let base = u64::from(r.base);
    let eff = u64::from(d.byte_limit());
    if d.code || !d.conforming_or_expand_down {
        // Expand-up.
        if base >= top {
            if d.code {
                d.present = false;
            } else {
                d.conforming_or_expand_down = true;
                d.big = true;
                d.limit_pages = true;
                d.limit = EMPTY_LIMIT;
            }
            return Some(d);
        }
        let max = top - 1 - base;
        if eff > max {
            if !d.limit_pages {
                d.limit = max as u32;
            } else if max + 1 >= 0x1000 {
                d.limit = (((max + 1) >> 12) - 1) as u32;
            } else {
                d.limit_pages = false;
                d.limit = max as u32;
            }
        }
        return Some(d);
    }
    // Expand-down data.
    let upper: u64 = if d.big { 0xffff_ffff } else { 0xffff };
    if eff >= upper {
        return Some(d); // already empty
    }
    let end = base + upper;
    if end < top {
        return Some(d);
    }
    if end >= 1 << 32 && end - (1 << 32) < top {
        let need = (1u64 << 32) - 1 - base; // the lowest offset limit that wraps
        if eff < need {
            if !d.limit_pages && need <= 0xf_ffff {
                d.limit = need as u32;
            } else {
                d.limit_pages = true;
                d.limit = ((need.saturating_sub(0xfff) + 0xfff) >> 12).min(0xf_ffff) as u32;
            }
        }
        return Some(d);
    }
    d.limit_pages = true;
    d.limit = EMPTY_LIMIT;
    Some(d)
}

// The host LDT's partition. It is laid out so that a guest using few selectors has a short
// host LDT: the host kernel copies the whole table at every `modify_ldt` write (measured on
// this host: 1.5 us per write with 100 entries, 17.7 us with 8,100).

/// First host LDT index for the monitor's own descriptors (indexes 1..8; 0 stays unused).
pub const HOST_LDT_MONITOR: u16 = 1;
/// Host LDT index of the "cached" slot of segment register 0 (ES, CS, SS, DS, FS, GS: 8..14).
pub const HOST_LDT_CACHED: u16 = 8;
/// Host LDT index of the shadows of guest GDT entry 0: two slots per entry, the shadow for
/// guest kernel mode (truncated below the monitor area) and the one for guest user mode
/// (truncated below the shadow MMU's user limit), so that a selector used at both privilege
/// levels (Linux loads `__USER_DS` into DS and ES in the kernel too) is not rewritten at each
/// change of CPL.
pub const HOST_LDT_GUEST_GDT: u16 = 16;
/// Guest GDT entries that have shadow slots.
pub const GUEST_GDT_SLOTS: u16 = 1024;
/// Host LDT index of the shadow of guest LDT entry 0.
pub const HOST_LDT_GUEST_LDT: u16 = HOST_LDT_GUEST_GDT + 2 * GUEST_GDT_SLOTS;
/// Guest LDT entries that have a shadow slot (the rest of the host's 8,192).
pub const GUEST_LDT_SLOTS: u16 = 8192 - HOST_LDT_GUEST_LDT;
// The monitor's slots, the cached slots and the GDT shadows do not overlap.
const _: () = assert!(HOST_LDT_MONITOR + 7 <= HOST_LDT_CACHED && HOST_LDT_CACHED + 6 <= HOST_LDT_GUEST_GDT);

/// A host LDT selector for `index`: TI = 1, RPL 3.
pub const fn ldt_selector(index: u16) -> u16 {
    (index << 3) | 4 | 3
}

/// The host selector that holds the shadow of guest selector `guest_sel` (the guest's RPL
/// is not carried: always RPL 3) while the guest runs in user mode (`user`) or not. A null
/// guest selector (GDT index 0, any RPL) is the host null selector `Some(0)`. `None` for
/// indices beyond the partition (guest LDT index ≥ [`GUEST_LDT_SLOTS`], guest GDT index ≥
/// [`GUEST_GDT_SLOTS`]): the runtime uses a cached slot for segments loaded from them.
pub fn host_selector_for_guest(guest_sel: u16, user: bool) -> Option<u16> {
    let index = guest_sel >> 3;
    if guest_sel & 4 != 0 {
        (index < GUEST_LDT_SLOTS).then(|| ldt_selector(HOST_LDT_GUEST_LDT + index))
    } else if index == 0 {
        Some(0)
    } else {
        (index < GUEST_GDT_SLOTS)
            .then(|| ldt_selector(HOST_LDT_GUEST_GDT + 2 * index + u16::from(user)))
    }
}

/// The host selector of the "cached" slot of segment register `sreg` (0 ES, 1 CS, 2 SS,
/// 3 DS, 4 FS, 5 GS: the interpreter's `SegReg` order). Panics if `sreg >= 6`.
pub fn cached_slot_selector(sreg: usize) -> u16 {
    assert!(sreg < 6, "segment register index {sreg} out of range");
    ldt_selector(HOST_LDT_CACHED + sreg as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a raw descriptor.
    #[allow(clippy::too_many_arguments)]
    fn desc(base: u32, limit: u32, ty: u32, s: bool, dpl: u32, p: bool, db: bool, g: bool) -> u64 {
        let (b, l) = (u64::from(base), u64::from(limit));
        let mut d =
            (l & 0xffff) | (b & 0xff_ffff) << 16 | u64::from(ty) << 40 | u64::from(dpl) << 45;
        d |= ((l >> 16) & 0xf) << 48 | (b >> 24) << 56;
        if s {
            d |= 1 << 44;
        }
        if p {
            d |= 1 << 47;
        }
        if db {
            d |= 1 << 54;
        }
        if g {
            d |= 1 << 55;
        }
        d
    }

    const TOP: u32 = 0xffc0_0000;
    const CODE_RX: u32 = 0xa;
    const DATA_RW: u32 = 0x2;
    const DATA_RW_DOWN: u32 = 0x6;

    fn linear_range(d: &HostDesc) -> Option<(u64, u64)> {
        let lim = u64::from(d.byte_limit());
        let base = u64::from(d.base);
        if !d.code && d.conforming_or_expand_down {
            let upper = if d.big { 0xffff_ffffu64 } else { 0xffff };
            (lim < upper).then(|| (base + lim + 1, base + upper))
        } else {
            Some((base, base + lim))
        }
    }

    #[test]
    fn flat_kernel_code_truncated_below_hole() {
        let raw = desc(0, 0xfffff, CODE_RX, true, 0, true, true, true);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!(
            d,
            HostDesc {
                base: 0,
                limit_pages: true,
                limit: 0xffbff,
                code: true,
                conforming_or_expand_down: false,
                writable_or_readable: true,
                big: true,
                present: true
            }
        );
        assert_eq!(d.byte_limit(), TOP - 1);
        // DPL 3, S, P, type kept (+accessed).
        let r = d.to_raw();
        assert_eq!((r >> 45) & 3, 3);
        assert_eq!((r >> 40) & 0xf, u64::from(CODE_RX | 1));
    }

    #[test]
    fn small_segments_unchanged() {
        let raw = desc(0x1000, 0xffff, DATA_RW, true, 0, true, false, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!(
            (d.base, d.limit, d.limit_pages, d.big),
            (0x1000, 0xffff, false, false)
        );
        let raw = desc(0x1000, 0x100, DATA_RW, true, 3, true, true, true);
        assert_eq!(shadow_descriptor(raw, TOP).unwrap().limit, 0x100);
    }

    #[test]
    fn unaligned_base_rounds_down_a_page() {
        // base 0x800, flat: (limit<<12|fff) <= TOP-1-0x800 -> limit = 0xffbfe.
        let raw = desc(0x800, 0xfffff, DATA_RW, true, 0, true, true, true);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!(d.limit, 0xffbfe);
        assert!(u64::from(d.base) + u64::from(d.byte_limit()) < u64::from(TOP));
        // Byte-granular segment crossing top: exact.
        let raw = desc(TOP - 0x10, 0xffff, DATA_RW, true, 0, true, true, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!((d.limit, d.limit_pages), (0xf, false));
        // Page-granular with less than a page left: switches to bytes.
        let raw = desc(TOP - 0x10, 0xf, DATA_RW, true, 0, true, true, true);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!((d.limit, d.limit_pages), (0xf, false));
    }

    #[test]
    fn user_limit_as_top() {
        let raw = desc(0, 0xfffff, DATA_RW, true, 3, true, true, true);
        let d = shadow_descriptor(raw, 0xc000_0000).unwrap();
        assert_eq!(d.byte_limit(), 0xbfff_ffff);
    }

    #[test]
    fn segment_wholly_above_top() {
        let raw = desc(0xffd0_0000, 0xfff, DATA_RW, true, 0, true, false, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert!(
            d.present
                && d.conforming_or_expand_down
                && d.big
                && d.limit_pages
                && d.limit == 0xfffff
        );
        assert_eq!(linear_range(&d), None, "empty data segment");
        let raw = desc(0xffd0_0000, 0xfff, CODE_RX, true, 0, true, true, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert!(!d.present && d.code);
    }

    #[test]
    fn expand_down_below_top_unchanged() {
        // 16-bit expand-down stack: offsets (0x0fff, 0xffff] at base 0x10000.
        let raw = desc(0x10000, 0x0fff, DATA_RW_DOWN, true, 0, true, false, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!(
            (d.limit, d.limit_pages, d.big, d.conforming_or_expand_down),
            (0x0fff, false, false, true)
        );
    }

    #[test]
    fn expand_down_reaching_hole_becomes_empty() {
        // base 0, B=1: the top end is 0xffffffff, in the hole.
        let raw = desc(0, 0x1000, DATA_RW_DOWN, true, 0, true, true, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert!(d.limit_pages && d.limit == 0xfffff && d.big);
        assert_eq!(linear_range(&d), None);
        // 16-bit expand-down whose end crosses top without wrapping.
        let raw = desc(TOP - 0x100, 0x10, DATA_RW_DOWN, true, 0, true, false, false);
        assert_eq!(linear_range(&shadow_descriptor(raw, TOP).unwrap()), None);
    }

    #[test]
    fn expand_down_wrapping_keeps_the_wrapped_part() {
        // base 0x10_0000, B=1, limit 0: linear [0x10_0001, 0xffff_ffff] + [0, 0xf_ffff].
        let raw = desc(0x10_0000, 0, DATA_RW_DOWN, true, 0, true, true, false);
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert_eq!(d.byte_limit(), 0xffef_ffff);
        let (lo, hi) = linear_range(&d).unwrap();
        assert_eq!(
            (lo, hi),
            (1 << 32, (1 << 32) + 0xf_ffff),
            "only offsets that wrap below 1 MiB"
        );
        // Page granular: rounded up.
        let raw = desc(0x10_0800, 0, DATA_RW_DOWN, true, 0, true, true, true);
        let d = shadow_descriptor(raw, TOP).unwrap();
        let (lo, hi) = linear_range(&d).unwrap();
        assert!(lo >= 1 << 32 && hi - (1 << 32) < u64::from(TOP));
        // Wrapped end itself above top: empty.
        let raw = desc(0xffe0_0000, 0, DATA_RW_DOWN, true, 0, true, true, false);
        assert_eq!(linear_range(&shadow_descriptor(raw, TOP).unwrap()), None);
    }

    #[test]
    fn system_and_not_present_never_shadowed() {
        for ty in [0x1, 0x2, 0x3, 0x4, 0x5, 0x9, 0xb, 0xc, 0xe, 0xf] {
            assert_eq!(
                shadow_descriptor(desc(0, 0x67, ty, false, 0, true, false, false), TOP),
                None
            );
        }
        assert_eq!(
            shadow_descriptor(desc(0, 0xfffff, DATA_RW, true, 0, false, true, true), TOP),
            None
        );
    }

    #[test]
    fn long_mode_bit_dropped_and_conforming_kept() {
        let raw = desc(0, 0xfffff, 0xe, true, 0, true, false, true) | 1 << 53;
        let d = shadow_descriptor(raw, TOP).unwrap();
        assert!(d.code && d.conforming_or_expand_down);
        assert_eq!(d.to_raw() & (1 << 53), 0);
    }

    #[test]
    fn property_every_shadow_ends_below_top() {
        // A deterministic sweep over bases, limits, types and tops.
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let raw = x | 1 << 44 | 1 << 47;
            let top = [TOP, 0xc000_0000, 0x8000_0000, 0x1000][(x >> 60) as usize & 3];
            let d = shadow_descriptor(raw, top).unwrap();
            if let Some((lo, hi)) = linear_range(&d).filter(|_| d.present) {
                if lo < 1 << 32 {
                    assert!(hi < u64::from(top), "{raw:#x} top {top:#x} -> {d:?}");
                } else {
                    assert!(
                        hi - (1 << 32) < u64::from(top),
                        "{raw:#x} top {top:#x} -> {d:?}"
                    );
                }
            }
            let r = parse(raw);
            assert_eq!((d.base, d.code), (r.base, r.ty & 8 != 0));
        }
    }

    #[test]
    fn selector_partition() {
        let ldt0 = HOST_LDT_GUEST_LDT;
        assert_eq!(ldt0, 2064);
        assert_eq!(host_selector_for_guest(0x0f, true), Some(ldt_selector(ldt0 + 1)));
        assert_eq!(host_selector_for_guest(0x0c, false), Some(((ldt0 + 1) << 3) | 7));
        // GDT entries: two slots each, kernel-mode then user-mode shadow.
        assert_eq!(host_selector_for_guest(0x10, false), Some(ldt_selector(16 + 4)));
        assert_eq!(host_selector_for_guest(0x10, true), Some(ldt_selector(16 + 5)));
        assert_eq!(host_selector_for_guest(0x73, false), Some(ldt_selector(16 + 28)));
        assert_eq!(host_selector_for_guest(0x7b, true), Some(ldt_selector(16 + 31)));
        assert_eq!(host_selector_for_guest(0, false), Some(0));
        assert_eq!(host_selector_for_guest(3, true), Some(0));
        assert_eq!(
            host_selector_for_guest(((GUEST_LDT_SLOTS - 1) << 3) | 4, false),
            Some(ldt_selector(8191))
        );
        assert_eq!(host_selector_for_guest((GUEST_LDT_SLOTS << 3) | 4, false), None);
        assert_eq!(
            host_selector_for_guest(1023 << 3, true),
            Some(ldt_selector(16 + 2047))
        );
        assert_eq!(host_selector_for_guest(1024 << 3, false), None);
        assert_eq!(cached_slot_selector(0), (8 << 3) | 7);
        assert_eq!(cached_slot_selector(5), (13 << 3) | 7);
    }

    #[test]
    #[should_panic]
    fn cached_slot_out_of_range() {
        cached_slot_selector(6);
    }
}
