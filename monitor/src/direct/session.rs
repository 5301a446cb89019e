//! What an [`engine::Session`](crate::engine::Session) keeps between consecutive runs of the
//! `direct` and `bt` engines, so that each run after the first skips the host setup: the
//! reservation of the low 4 GiB (with `RUN_LOCK`), the `bt` engine's monitor area (its 16 MiB
//! memfd, the lookup table, the gate), and guest RAM's memfd.
//!
//! A one-shot run (`direct::run`) uses an empty [`Held`] that is dropped when the run ends:
//! the same code path, nothing kept. How each held resource is made like new for the next
//! run:
//!
//! * the reservation: everything below the monitor area is mapped `PROT_NONE` again
//!   (`Reservation::clear_guest_part`): no shadow mapping of the previous run survives;
//! * the `bt` state: every fragment is dropped, the lookup table's filled entries are reset,
//!   the vCPU region's fixed part is restored to what `Bt::new` wrote, and the counters and
//!   pending state start from zero (`Bt::reset_for_next_run`);
//! * guest RAM: the run's heap RAM is copied into the held memfd (of the same size), and the
//!   result's RAM is a heap copy again: the pages that differ are copied back into the caller's
//!   buffer, so the caller gets the machine it would get from `engine::run`, with heap RAM.

use std::sync::MutexGuard;

use crate::bt::Bt;
use crate::memory::GuestRam;
use crate::space::{MemfdRam, Reservation};

/// Resources kept between the runs of a session. Dropped in declaration order: the monitor
/// area before the reservation it lives in, the lock last.
#[derive(Default)]
pub(crate) struct Held {
    /// The `bt` engine's monitor area and translation cache, and the vCPU region's fixed part
    /// (before the lookup table) as `Bt::new` left it.
    pub(crate) bt: Option<(Bt, Vec<u8>)>,
    /// The low 4 GiB (its guest part is cleared before it is used again).
    pub(crate) reservation: Option<Reservation>,
    /// Guest RAM's memfd, reused by the next run whose heap RAM has the same size.
    pub(crate) ram: Option<MemfdRam>,
    /// Whether runs return heap RAM and leave the memfd here (a session); a one-shot run
    /// returns the memfd RAM, as before.
    pub(crate) keep_ram: bool,
    /// Held while a reservation exists: no other run in the process can reserve the low 4 GiB
    /// meanwhile.
    pub(crate) lock: Option<MutexGuard<'static, ()>>,
}

impl Held {
    /// Held resources for a session (RAM kept).
    pub(crate) fn session() -> Held {
        Held { keep_ram: true, ..Held::default() }
    }

    /// Drops what was made for another monitor base.
    pub(crate) fn fit(&mut self, monitor_base: u32) {
        if self.reservation.as_ref().is_some_and(|r| r.monitor_base != monitor_base) {
            self.bt = None;
            self.reservation = None;
        }
    }

    /// Puts the machine's RAM in a memfd: for a session, heap RAM is copied into the held memfd
    /// (or a new one of its size) and the heap buffer is returned, to be given back with
    /// [`ram_out`].
    pub(crate) fn ram_in(&mut self, ram: &mut GuestRam) -> std::io::Result<Option<Vec<u8>>> {
        match std::mem::replace(ram, GuestRam::Heap(Vec::new())) {
            GuestRam::Heap(v) if self.keep_ram => {
                let mut m = match self.ram.take() {
                    Some(m) if m.len() == v.len() => m,
                    _ => MemfdRam::new(v.len())?,
                };
                m.as_mut_slice().copy_from_slice(&v);
                *ram = GuestRam::Memfd(m);
                Ok(Some(v))
            }
            other => {
                *ram = other.into_memfd()?;
                Ok(None)
            }
        }
    }
}

/// After the run: the memfd's contents back into the caller's heap buffer from
/// [`Held::ram_in`] (only the pages that differ are written: the buffer's untouched pages stay
/// untouched), the memfd kept in `held` (a [`Held`]'s `ram`) for the next run.
pub(crate) fn ram_out(held: &mut Option<MemfdRam>, ram: &mut GuestRam, heap: Option<Vec<u8>>) {
    let Some(mut v) = heap else { return };
    let m = match std::mem::replace(ram, GuestRam::Heap(Vec::new())) {
        GuestRam::Memfd(m) => m,
        other => {
            // Not what `ram_in` put there: leave it.
            *ram = other;
            return;
        }
    };
    for (dst, src) in v.chunks_mut(4096).zip(m.as_slice().chunks(4096)) {
        if dst != src {
            dst.copy_from_slice(src);
        }
    }
    *ram = GuestRam::Heap(v);
    *held = Some(m);
}

/// The vCPU region's fixed part: everything before the lookup table.
pub(crate) fn vcpu_header(bt: &mut Bt) -> Vec<u8> {
    let off = (bt.area.vcpu - bt.area.base) as usize;
    let n = bt.abi.ibl_table as usize;
    bt.area.bytes()[off..off + n].to_vec()
}
