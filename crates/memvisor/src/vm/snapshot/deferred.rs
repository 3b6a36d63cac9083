//! Lazy restore's deferred RAM memslots: a restored VM's first `KVM_RUN` waits only for the
//! memslots of the RAM chunks holding the snapshot's pages (page tables, kernel image,
//! stacks, data: see `restore.rs`); the other RAM chunks' memslots are registered by a
//! background thread started when the first `KVM_RUN` returns, while the guest runs on. `KVM_SET_USER_MEMORY_REGION` of a big slot is
//! where a restore's time grows with RAM (under shadow paging KVM allocates and zeroes the
//! slot's rmap and write-tracking arrays, KVM API doc §4.35).
//!
//! A guest data access to a GPA whose memslot is not registered yet exits as
//! `KVM_EXIT_MMIO` (KVM decoded the instruction; KVM API doc §5 `kvm_run`): [`Deferred`]
//! waits for the thread, then completes the access against guest RAM itself (a write copies
//! the bytes to the HVA, a read fills them from it, which userfaultfd serves) and the guest
//! continues; every later access hits the memslot. Anything that walks the memslot list
//! (dirty log, snapshot, extra memslots) waits for the thread first ([`Deferred::settle`]).
//!
//! A page-table walk or an instruction fetch cannot be completed that way, so frames the
//! VMM hands out after the restore must not lie in a chunk without a memslot: after every
//! host edit (hypercall, #PF assist) [`Deferred::after_host_edit`] waits for the thread if
//! the edit took frames from the zones or the page-table pool (a new table, a newly mapped
//! frame); the frames in use at the snapshot are in the eager chunks (they were written).

use crate::memory::{register_plan, GuestRam, MemoryError, Memslot, SlotPlan};
use crate::space::AddressSpace;
use kvm_ioctls::VmFd;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Registers the deferred slots; returns the µs it took.
type Job = Box<dyn FnOnce() -> Result<u64, MemoryError> + Send>;

/// The deferred RAM memslots of a restored VM (none for a VM built by `Vm::new`).
#[derive(Default)]
pub(crate) struct Deferred {
    /// `(first GPA, bytes)` of each deferred slot.
    ranges: Vec<(u64, u64)>,
    /// The registration, until [`Self::start`].
    job: Option<Job>,
    /// The registering thread, until joined.
    thread: Option<JoinHandle<Result<u64, MemoryError>>>,
    /// The registration failed: `(slot, gpa, size, errno)` of the slot KVM refused.
    failed: Option<(u32, u64, u64, i32)>,
    /// Guest accesses completed by the VMM (MMIO exits into a deferred chunk).
    pub(crate) accesses: u64,
    /// Times a host edit that handed out frames waited for the deferred slots
    /// ([`Self::after_host_edit`]).
    pub(crate) frame_waits: u64,
    /// The zones' allocation count and the table frames in use at the restore
    /// ([`Self::after_host_edit`]).
    baseline: (u64, u64),
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("ranges", &self.ranges)
            .field("started", &self.job.is_none())
            .field("failed", &self.failed)
            .field("accesses", &self.accesses)
            .field("frame_waits", &self.frame_waits)
            .finish()
    }
}

impl Deferred {
    /// `plan`'s slots, to be registered with `vm` on a thread from [`Self::start`] (the
    /// vCPU loop calls it when the first `KVM_RUN` returns, so the registration does not
    /// compete with the guest's start for a CPU or KVM's locks), after `delay` (a test hook
    /// that makes the guest meet unregistered RAM; zero otherwise).
    ///
    /// # Safety
    /// Every `[hva, hva + size)` of `plan` must stay mapped until [`Self::settle`] returned
    /// or `self` is dropped (the owner drops `self` before guest RAM).
    pub(crate) unsafe fn new(vm: Arc<VmFd>, plan: SlotPlan, delay: Duration) -> Deferred {
        let ranges = plan.iter().map(|(m, _)| (m.gpa, m.size)).collect();
        if plan.is_empty() {
            return Deferred::default();
        }
        let job: Job = Box::new(move || {
            std::thread::sleep(delay);
            let t = Instant::now();
            // SAFETY: forwarded to the caller of `new`.
            unsafe { register_plan(&vm, &plan) }?;
            Ok(t.elapsed().as_micros() as u64)
        });
        Deferred {
            ranges,
            job: Some(job),
            thread: None,
            failed: None,
            accesses: 0,
            frame_waits: 0,
            baseline: (0, 0),
        }
    }

    /// Remember the restored address space's frame counts, for [`Self::after_host_edit`].
    pub(crate) fn watch(&mut self, space: &AddressSpace) {
        self.baseline = (space.zones().total_allocations(), space.pool().in_use());
    }

    /// After a host edit of `space`: while slots are still deferred, wait for them if the
    /// edit handed out a frame (the zones' monotonic allocation count or the pool's table
    /// frames changed; a free count would miss an edit that frees and allocates alike, such
    /// as a `MAP_FIXED` mmap over a mapping), which may lie in a deferred chunk and be walked
    /// or fetched from by the guest next.
    ///
    /// # Errors
    /// As [`Self::settle`].
    pub(crate) fn after_host_edit(&mut self, space: &AddressSpace) -> Result<(), MemoryError> {
        if self.job.is_none() && self.thread.is_none() {
            return Ok(());
        }
        if (space.zones().total_allocations(), space.pool().in_use()) != self.baseline {
            log::debug!("restore: a host edit handed out frames; waiting for deferred memslots");
            self.frame_waits += 1;
            return self.settle();
        }
        Ok(())
    }

    /// Start registering the deferred slots on their thread (once; with no thread
    /// available they are registered here).
    pub(crate) fn start(&mut self) {
        let Some(job) = self.job.take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("memvisor-memslots".into())
            .spawn(move || match rx.recv() {
                Ok(job) => job(),
                Err(_) => Ok(0),
            });
        match spawned {
            Ok(t) => {
                // The receiver lives until the thread ran the job.
                let _ = tx.send(job);
                self.thread = Some(t);
            }
            Err(e) => {
                log::debug!("restore: deferred memslots inline ({e})");
                let done = job();
                self.record(done);
            }
        }
    }

    fn record(&mut self, done: Result<u64, MemoryError>) {
        match done {
            Ok(us) => log::debug!("restore: deferred memslots registered in {us} us"),
            Err(MemoryError::Memslot {
                slot,
                gpa,
                size,
                source,
            }) => self.failed = Some((slot, gpa, size, source.errno())),
            Err(e) => {
                log::warn!("deferred memslots: {e}");
                self.failed = Some((0, 0, 0, libc::EINVAL));
            }
        }
    }

    /// Wait until every deferred slot is registered.
    ///
    /// # Errors
    /// [`MemoryError::Memslot`] if KVM refused one (every later call says so again).
    pub(crate) fn settle(&mut self) -> Result<(), MemoryError> {
        self.start();
        if let Some(t) = self.thread.take() {
            let done = t
                .join()
                .unwrap_or(Err(MemoryError::Access { gpa: 0, len: 0 }));
            self.record(done);
        }
        match self.failed {
            None => Ok(()),
            Some((slot, gpa, size, errno)) => Err(MemoryError::Memslot {
                slot,
                gpa,
                size,
                source: kvm_ioctls::Error::new(errno),
            }),
        }
    }

    /// True if `[gpa, gpa + len)` lies wholly in one deferred slot.
    pub(crate) fn covers(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        self.ranges
            .iter()
            .any(|&(a, n)| gpa >= a && end <= a.saturating_add(n))
    }

    /// Complete a guest MMIO access into a deferred chunk against `ram` (after
    /// [`Self::settle`]): a write (`write`) stores `data` at `gpa`, a read fills `data`
    /// from it.
    ///
    /// # Errors
    /// As [`Self::settle`]; [`MemoryError::Access`] if `ram` refuses the GPA (not RAM).
    pub(crate) fn complete(
        &mut self,
        ram: &GuestRam,
        gpa: u64,
        data: &mut [u8],
        write: bool,
    ) -> Result<(), MemoryError> {
        self.settle()?;
        let at = GuestAddress(gpa);
        let done = if write {
            ram.mem.write_slice(data, at)
        } else {
            ram.mem.read_slice(data, at)
        };
        done.map_err(|_| MemoryError::Access {
            gpa,
            len: data.len() as u64,
        })?;
        self.accesses += 1;
        Ok(())
    }
}

/// Most eager memslots a lazy restore registers before the first `KVM_RUN`: each costs
/// KVM a fixed ~15-20 µs here (measured, PVM host) besides its size, so a snapshot whose
/// pages are scattered over more chunks gets larger chunks instead.
pub(crate) const MAX_EAGER_SLOTS: usize = 16;

/// Lazy restore's memslot plan for `ram`: `(eager, deferred)` slots with their HVAs
/// ([`split_plan`]); eager are the `chunk`-sized chunks holding a GPA of `held` (the
/// layers' pages). The chunk doubles until there are at most [`MAX_EAGER_SLOTS`] eager
/// slots and all slots fit KVM's `limit` (with room for the flush slot); with no room at
/// all every slot is eager.
pub(crate) fn lazy_plan(
    ram: &GuestRam,
    held: &[u64],
    chunk: u64,
    limit: usize,
) -> (SlotPlan, SlotPlan) {
    let mut chunk = chunk.clamp(2 << 20, 1 << 40).next_power_of_two();
    if limit < 4 {
        return (ram.slot_plan(), Vec::new());
    }
    loop {
        let chunks: BTreeSet<u64> = held.iter().map(|g| g & !(chunk - 1)).collect();
        let (eager, late) = split_plan(ram, chunk, &|g| chunks.contains(&g));
        if eager.len() + late.len() + 2 <= limit && eager.len() <= MAX_EAGER_SLOTS {
            return (eager, late);
        }
        if chunk >= 1 << 40 {
            return (ram.slot_plan(), Vec::new());
        }
        chunk *= 2;
    }
}

/// The memslots of a lazy restore: each RAM region of `ram` cut at `chunk`-aligned GPAs
/// (`chunk` a power of two, at least 4 KiB) into chunks; `eager(gpa)` (the chunk's first
/// GPA) says which chunks KVM must have before the first `KVM_RUN`; consecutive chunks of
/// the same kind are one memslot. Returns `(eager, deferred)` slots, each with its HVA,
/// numbered from 0 in GPA order across both lists (flags 0); together they cover RAM
/// exactly as [`GuestRam::slot_plan`] does.
pub(crate) fn split_plan(
    ram: &GuestRam,
    chunk: u64,
    eager: &dyn Fn(u64) -> bool,
) -> (SlotPlan, SlotPlan) {
    let chunk = chunk.max(4096).next_power_of_two();
    let mut pieces: Vec<(bool, Memslot, u64)> = Vec::new();
    for region in ram.mem.iter() {
        let (start, len, hva) = (region.start_addr().0, region.len(), region.as_ptr() as u64);
        let end = start + len;
        let mut at = start;
        while at < end {
            let first = at & !(chunk - 1);
            let next = (first + chunk).min(end);
            let kind = eager(first);
            match pieces.last_mut() {
                Some((k, m, _)) if *k == kind && m.gpa + m.size == at => m.size += next - at,
                _ => pieces.push((
                    kind,
                    Memslot {
                        slot: 0,
                        gpa: at,
                        size: next - at,
                        flags: 0,
                    },
                    hva + (at - start),
                )),
            }
            at = next;
        }
    }
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for (i, (kind, mut m, hva)) in pieces.into_iter().enumerate() {
        m.slot = i as u32;
        if kind {
            early.push((m, hva));
        } else {
            late.push((m, hva));
        }
    }
    (early, late)
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // Never started: nothing to register for a VM that goes. Else the thread may still
        // register slots over guest RAM: wait before RAM goes.
        self.job = None;
        let _ = self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

    #[test]
    fn split_plan_covers_ram() {
        let ram = GuestRam::new(MMIO_HOLE_START + (1 << 30)).expect("ram");
        let chunk = 256 << 20;
        let (early, late) = split_plan(&ram, chunk, &|gpa| gpa < chunk || gpa == MMIO_HOLE_END);
        assert_eq!(early.len(), 2);
        assert_eq!((early[0].0.gpa, early[0].0.size), (0, chunk));
        assert_eq!((early[1].0.gpa, early[1].0.size), (MMIO_HOLE_END, chunk));
        assert_eq!(late.len(), 2);
        assert_eq!(
            (late[0].0.gpa, late[0].0.size),
            (chunk, MMIO_HOLE_START - chunk)
        );
        let all: Vec<_> = early.iter().chain(&late).collect();
        assert_eq!(all.iter().map(|(m, _)| m.size).sum::<u64>(), ram.bytes);
        let mut nums: Vec<u32> = all.iter().map(|(m, _)| m.slot).collect();
        nums.sort_unstable();
        assert_eq!(nums, [0, 1, 2, 3]);
        // HVAs follow GPAs inside a region.
        let base = ram.slot_plan()[0].1;
        assert_eq!(late[0].1, base + chunk);
        // All eager: one slot per region, as slot_plan.
        let (e, l) = split_plan(&ram, chunk, &|_| true);
        assert_eq!((e.len(), l.len()), (2, 0));
    }
    #[test]
    fn lazy_plan_bounds_eager_slots() {
        let ram = GuestRam::new(MMIO_HOLE_START + (1 << 30)).expect("ram");
        let mib = 1u64 << 20;
        // The demo's pages: two 2 MiB-chunk runs low and one page above 4 GiB.
        let held = [0, 3 * mib, 16 * mib + 4096, MMIO_HOLE_END + 8192];
        let (e, l) = lazy_plan(&ram, &held, 2 * mib, 32_764);
        let spans: Vec<_> = e.iter().map(|(m, _)| (m.gpa, m.size)).collect();
        assert_eq!(
            spans,
            [(0, 4 * mib), (16 * mib, 2 * mib), (MMIO_HOLE_END, 2 * mib)]
        );
        assert_eq!(l.len(), 3);
        // Pages in 90 chunks 32 MiB apart: the chunk doubles to 16 or fewer eager slots.
        let held: Vec<u64> = (0..90).map(|i| i * 32 * mib).collect();
        let (e, l) = lazy_plan(&ram, &held, 2 * mib, 32_764);
        assert!(e.len() <= MAX_EAGER_SLOTS, "{} eager slots", e.len());
        let size: u64 = e.iter().chain(&l).map(|(m, _)| m.size).sum();
        assert_eq!(size, ram.bytes);
        for g in &held {
            assert!(e.iter().any(|(m, _)| *g >= m.gpa && *g < m.gpa + m.size));
        }
        // No room in KVM for a split: RAM as one slot per region, all eager.
        let (e, l) = lazy_plan(&ram, &held, 2 * mib, 3);
        assert_eq!((e.len(), l.len()), (2, 0));
    }
}
