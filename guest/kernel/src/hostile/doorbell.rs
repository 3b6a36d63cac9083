//! The request block and the doorbell: the scenario's statics (its block, the `Stats`
//! buffer, pages it offers as targets), ringing the VMM with any GPA, sending a batch, and
//! probe-guarded reads and writes of memory that may fault.

use super::{NB, PAGE};
use crate::hc;
use crate::probe::{self, Probe};
use core::cell::UnsafeCell;
use core::fmt::Write;
use memvisor_abi::{Call, MemStats, Request, Status};

// ---- the request block -----------------------------------------------------------------

/// Statics of this scenario's main code only (never used from an exception handler).
pub(super) struct Shared<T>(pub(super) UnsafeCell<T>);
// SAFETY: one vCPU; these statics are used only by this scenario's main code (never from an
// exception handler).
unsafe impl<T> Sync for Shared<T> {}

/// The full-size request block (the SDK's, in .bss).
pub(super) static BLOCK: hc::StaticBlock<NB> = hc::StaticBlock::new();

pub(super) const NOP: Request = Request::new(Call::Nop, [0; 5]);

/// Where the host writes `Stats`.
pub(super) static STATS: Shared<MemStats> = Shared(UnsafeCell::new(MemStats {
    total_frames: 0,
    free_frames: 0,
    mapped_frames: 0,
    table_frames: 0,
    regions: 0,
    lazy_faults: 0,
}));

/// Two pages of .bss this scenario never touches: the target of "munmap of the kernel image"
/// (if the host wrongly allowed it, nothing the guest needs would go away).
#[repr(C, align(4096))]
pub(super) struct Sacrifice([u8; 2 * PAGE as usize]);
pub(super) static SACRIFICE: Shared<Sacrifice> =
    Shared(UnsafeCell::new(Sacrifice([0; 2 * PAGE as usize])));

/// A read-only page of the kernel image (rodata) the scenario never reads.
#[repr(C, align(4096))]
pub(super) struct RoPage([u8; PAGE as usize]);
pub(super) static RO_PAGE: RoPage = RoPage([0x5a; PAGE as usize]);

/// GVAs of regions mapped during exhaustion.
pub(super) static FLOOD: Shared<[u64; 8192]> = Shared(UnsafeCell::new([0; 8192]));

/// A GVA in the kernel's text this scenario never executes (the `runaway` scenario's code).
pub(super) fn text_gva() -> u64 {
    crate::scenarios::runaway::spin as *const () as u64
}

pub(super) fn block_gpa() -> u64 {
    BLOCK.gpa()
}

pub(super) fn stats_gva() -> u64 {
    STATS.0.get() as u64
}

/// Ring the VMM with any GPA (an 8-byte write to the MMIO doorbell).
pub(super) fn ring(gpa: u64) {
    hc::ring_mmio(gpa);
}

/// Run `reqs` (at most 512) in one exit; results are written back into `reqs`. Returns the
/// host's `completed`.
pub(super) fn send(reqs: &mut [Request]) -> u32 {
    BLOCK.run(reqs)
}

pub(super) fn status_of(raw: i32) -> Option<Status> {
    Status::from_i32(raw)
}

pub(super) fn record(key: &str, value: u64) {
    let mut line = crate::console::Line::new();
    let _ = write!(line, "hostile.{}={}", key, value);
    hc::record(line.as_str());
}

/// Write 8 bytes at GVA `at` (through the direct map) with probes: false if any faulted.
pub(super) fn plant(at: u64, v: u64) -> bool {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        // SAFETY: `at` is a free frame (or the guest's own memory) seen through the direct map;
        // a fault is caught by the probe's exception-table entry.
        if !matches!(unsafe { probe::write(at + i as u64, *b) }, Probe::Ok) {
            return false;
        }
    }
    true
}

/// Read 8 bytes at `at` through probes (None if it faults).
pub(super) fn peek(at: u64) -> Option<u64> {
    let mut v = [0u8; 8];
    for (i, b) in v.iter_mut().enumerate() {
        if !matches!(probe::read(at + i as u64), Probe::Ok) {
            return None;
        }
        // SAFETY: the probe just read this byte without a fault: it is mapped and readable.
        *b = unsafe { core::ptr::read_volatile((at + i as u64) as *const u8) };
    }
    Some(u64::from_le_bytes(v))
}
