//! [`SnapshotSource`]: the uffd handler's page source for a restored VM (snapshot layers,
//! newest first), its counters, and what a restore read ([`RestoreStats`]).

use super::{Snapshot, SnapshotError};
use crate::uffd::{PageSource, PAGE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a restored VM read from its snapshot files (the report's `restore` section).
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct RestoreStats {
    /// Pages read from the files (each on the first touch of its frame, through the uffd
    /// handler).
    pub pages_read: u64,
    /// Pages the files hold (all layers, each GPA once).
    pub file_pages: u64,
    /// Pages whose CRC-32 did not match (served zero, logged).
    pub corrupt_pages: u64,
    /// Snapshot layers (1 for a full snapshot, 2 with a base).
    pub layers: u64,
    /// Time from the start of the restore to the VM ready to run (files validated, state
    /// decoded, RAM registered with userfaultfd, memslots, vCPU state loaded), µs.
    pub restore_us: u64,
    /// Guest accesses to RAM whose memslot was still being registered (lazy restore's
    /// deferred chunks), completed by the VMM.
    pub deferred_accesses: u64,
    /// Times the VMM waited for the deferred memslots because a host edit (a hypercall, a
    /// #PF assist, the `Vm` API) handed out frames, which may lie in a deferred chunk where
    /// the guest could not walk or fetch (0 or 1: the slots are all there afterwards).
    pub frame_waits: u64,
}

/// Counters of a [`SnapshotSource`].
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Pages read from the files.
    pub pages_read: AtomicU64,
    /// Pages whose CRC-32 did not match (served zero, logged).
    pub corrupt: AtomicU64,
}

/// Serves uffd faults from snapshot layers (the newest layer holding a page wins), mapping
/// host addresses back to GPAs.
pub struct SnapshotSource {
    layers: Vec<Arc<Snapshot>>,
    /// `(hva, gpa, bytes)` of each registered RAM range.
    ranges: Vec<(u64, u64, u64)>,
    /// What it read.
    pub counters: Arc<SourceCounters>,
}

impl SnapshotSource {
    /// A source for `layers` (base first) over the host ranges `(hva, gpa, bytes)`.
    pub fn new(layers: Vec<Arc<Snapshot>>, ranges: Vec<(u64, u64, u64)>) -> SnapshotSource {
        SnapshotSource {
            layers,
            ranges,
            counters: Arc::default(),
        }
    }
}

impl SnapshotSource {
    /// The GPA of host address `hva`, if it is in a registered range.
    fn gpa(&self, hva: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|&&(h, _, n)| hva >= h && hva - h < n)
            .map(|&(h, g, _)| g + (hva - h))
    }

    /// Read the page at `gpa` from the newest layer holding it (CRC-checked): `Ok(false)` if
    /// no layer holds it.
    fn read_gpa(&self, gpa: u64, buf: &mut [u8; PAGE as usize]) -> Result<bool, SnapshotError> {
        for layer in self.layers.iter().rev() {
            if layer.read_page(gpa, buf)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl PageSource for SnapshotSource {
    fn read(&mut self, hva: u64, buf: &mut [u8; PAGE as usize]) -> bool {
        let Some(gpa) = self.gpa(hva) else {
            return false;
        };
        match self.read_gpa(gpa, buf) {
            Ok(true) => {
                self.counters.pages_read.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(false) => false,
            Err(e) => {
                log::error!("{e}");
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Pages in order from `hva` while a layer holds them and their CRC matches, each counted
    /// in [`SourceCounters::pages_read`] (a page with a bad CRC ends the run uncounted: its own
    /// fault reads, logs and counts it).
    fn read_ahead(&mut self, hva: u64, buf: &mut [u8]) -> u64 {
        let mut n = 0;
        for chunk in buf.chunks_exact_mut(PAGE as usize) {
            let Ok(page) = <&mut [u8; PAGE as usize]>::try_from(chunk) else {
                break;
            };
            let hit = self
                .gpa(hva + n * PAGE)
                .is_some_and(|gpa| matches!(self.read_gpa(gpa, page), Ok(true)));
            if !hit {
                break;
            }
            n += 1;
        }
        self.counters.pages_read.fetch_add(n, Ordering::Relaxed);
        n
    }
}
