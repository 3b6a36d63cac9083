//! Guest RAM on userfaultfd: which GPA ranges are registered ([`RamOptions`]), in which mode
//! (MISSING for anonymous RAM, MISSING | MINOR for shared memory), the shared-memory prefill
//! that makes later touches minor faults, and the discard of freed frames.

use super::{discard, discard_shared, PageSource, UffdError, UffdHandler, UffdMode, PAGE};
use crate::memory::{GuestRam, RamBacking};

/// How guest RAM is backed and which of it userfaultfd serves (`VmConfig::ram`; CLI
/// `--ram-backing`, `--uffd-range`, `--uffd-prefill`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RamOptions {
    /// Anonymous (default) or shared memory.
    pub backing: RamBacking,
    /// GPA ranges `(first GPA, bytes)` registered with userfaultfd when it is on; empty:
    /// the whole RAM. Each must be non-empty, 4 KiB aligned, inside one RAM range and overlap
    /// no other ([`GuestRam::attach_uffd_ranges`]); the rest of RAM is backed normally.
    pub uffd_ranges: Vec<(u64, u64)>,
    /// GPA ranges `(first GPA, bytes)` whose shared-memory page cache is filled (zeroed
    /// pages) through the alias mapping before the guest runs: with userfaultfd their first
    /// touch is a minor fault ([`GuestRam::shm_prefill`]; shared memory only).
    pub prefill: Vec<(u64, u64)>,
}

/// Parse a GPA range `START..END` (end exclusive; each a decimal or `0x` hex number of
/// bytes) into `(first GPA, bytes)`.
///
/// # Errors
/// [`UffdError::BadGpaRange`] when malformed, empty, reversed or not 4 KiB aligned (whether
/// it lies in RAM is checked against the VM: [`GuestRam::attach_uffd_ranges`]).
pub fn parse_gpa_range(text: &str) -> Result<(u64, u64), UffdError> {
    let bad = |why| UffdError::BadGpaRange {
        text: text.to_string(),
        why,
    };
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| bad("expected START..END (bytes, decimal or 0x hex)"))?;
    let num = |s: &str| {
        let s = s.trim();
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => u64::from_str_radix(&h.replace('_', ""), 16).ok(),
            None => s.replace('_', "").parse::<u64>().ok(),
        }
    };
    let start = num(a).ok_or_else(|| bad("START is not a decimal or 0x hex number"))?;
    let end = num(b).ok_or_else(|| bad("END is not a decimal or 0x hex number"))?;
    if end <= start {
        return Err(bad("empty or reversed (END must be above START)"));
    }
    if start % PAGE != 0 || end % PAGE != 0 {
        return Err(bad("not 4 KiB aligned"));
    }
    Ok((start, end - start))
}

fn show(start: u64, len: u64) -> String {
    format!("{start:#x}..{:#x}", start.saturating_add(len))
}

impl GuestRam {
    /// Register every RAM region with a new userfaultfd served from `source`: from now on
    /// each first touch of a frame, by the guest or the VMM, is served by the handler thread.
    /// MISSING mode on anonymous RAM, MISSING | MINOR on shared memory. Call before anything
    /// is written to RAM.
    ///
    /// # Errors
    /// As [`UffdHandler::start_with`].
    pub fn attach_uffd(&mut self, source: Box<dyn PageSource>) -> Result<(), UffdError> {
        self.attach_uffd_ranges(source, &[])
    }

    /// [`GuestRam::attach_uffd`] for the GPA ranges `(first GPA, bytes)` only (empty: the
    /// whole RAM); the rest of RAM stays ordinary memory.
    ///
    /// # Errors
    /// [`UffdError::BadGpaRange`] when a range is empty, not 4 KiB aligned, not inside one
    /// RAM range (e.g. across the MMIO hole) or overlaps another; else as
    /// [`UffdHandler::start_with`] (MINOR mode unsupported by the kernel:
    /// [`UffdError::Unsupported`], never a silent fallback to MISSING).
    pub fn attach_uffd_ranges(
        &mut self,
        source: Box<dyn PageSource>,
        gpa_ranges: &[(u64, u64)],
    ) -> Result<(), UffdError> {
        let ranges = if gpa_ranges.is_empty() {
            use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
            self.mem
                .iter()
                .map(|r| (r.as_ptr() as u64, r.len()))
                .collect()
        } else {
            self.check_gpa_ranges(gpa_ranges)?;
            let mut v = Vec::with_capacity(gpa_ranges.len());
            for &(gpa, len) in gpa_ranges {
                let hva = self.hva(gpa).ok_or_else(|| UffdError::BadGpaRange {
                    text: show(gpa, len),
                    why: "not inside guest RAM",
                })?;
                v.push((hva, len));
            }
            v
        };
        let mode = match self.backing() {
            RamBacking::Anonymous => UffdMode::Missing,
            RamBacking::Shm => UffdMode::MissingMinor,
        };
        // The handler is stored in `self`, so it is dropped with (and before the unmapping of)
        // the regions it serves.
        // SAFETY: each range lies inside one mapping vm-memory created for this GuestRam
        // (private anonymous, or MAP_SHARED of our memfd with shared backing, matching
        // `mode`). The handler writes only in answer to a fault in the range, i.e. while it is
        // mapped; when the GuestRam drops, the mappings go first (field order) and the kernel
        // unregisters them with them (no UFFD_FEATURE_EVENT_UNMAP: no message), then the
        // handler stops.
        let h = unsafe { UffdHandler::start_with(&ranges, source, mode)? };
        self.uffd = Some(h);
        Ok(())
    }

    /// Each range non-empty, aligned, inside one RAM range; no two overlap.
    fn check_gpa_ranges(&self, gpa_ranges: &[(u64, u64)]) -> Result<(), UffdError> {
        let mut sorted = gpa_ranges.to_vec();
        sorted.sort_unstable();
        for (i, &(gpa, len)) in sorted.iter().enumerate() {
            let bad = |why| UffdError::BadGpaRange {
                text: show(gpa, len),
                why,
            };
            if len == 0 || gpa % PAGE != 0 || len % PAGE != 0 {
                return Err(bad("empty or not 4 KiB aligned"));
            }
            if !self.contains(gpa, len) {
                return Err(bad(
                    "not inside guest RAM (one RAM range: below the MMIO hole or from 4 GiB)",
                ));
            }
            if let Some(&(next, _)) = sorted.get(i + 1) {
                if next < gpa + len {
                    return Err(bad("overlaps another uffd range"));
                }
            }
        }
        Ok(())
    }

    /// With shared-memory RAM, put zeroed pages into the memfd's page cache for the GPA range
    /// `[gpa, gpa + len)` through the file (`fallocate`; pages already there keep their
    /// contents): no userfaultfd event; with MINOR mode, the first touch of each such page
    /// through guest RAM is then a minor fault (`UFFDIO_CONTINUE`), not a missing one.
    ///
    /// # Errors
    /// [`UffdError::BadGpaRange`] for anonymous RAM or a range not inside one RAM range,
    /// [`UffdError::Shm`] when `fallocate` fails.
    pub fn shm_prefill(&self, gpa: u64, len: u64) -> Result<(), UffdError> {
        let bad = |why| UffdError::BadGpaRange {
            text: show(gpa, len),
            why,
        };
        let shm = self
            .shm
            .as_ref()
            .ok_or_else(|| bad("prefill needs shared-memory RAM (--ram-backing shm)"))?;
        if len == 0 || !self.contains(gpa, len) {
            return Err(bad("prefill range empty or not inside one RAM range"));
        }
        let offset = self
            .shm_offset(gpa)
            .ok_or_else(|| bad("not inside guest RAM"))?;
        shm.populate(offset, len)?;
        Ok(())
    }

    /// With uffd-backed RAM, discard the host pages of the freed frames `[gpa, gpa + len)`
    /// (`MADV_DONTNEED`, or `MADV_REMOVE` on shared memory so the page cache drops them too;
    /// the handler sees `UFFD_EVENT_REMOVE` for the registered part and serves those pages
    /// zero on their next touch). Without uffd, nothing.
    pub fn discard_if_uffd(&self, gpa: u64, len: u64) {
        if self.uffd.is_none() || !self.contains(gpa, len) {
            return;
        }
        let Some(hva) = self.hva(gpa) else { return };
        let shared = self.shm.is_some();
        // SAFETY: `[gpa, gpa + len)` lies in one RAM region (checked above), so the host range
        // is inside its mapping (and, with shared memory, the matching file pages are guest RAM
        // only: the alias maps nothing else); the frames were just freed, their contents are
        // not needed (a freed frame is zeroed before reuse anyway).
        let r = unsafe {
            if shared {
                discard_shared(hva, len)
            } else {
                discard(hva, len)
            }
        };
        if let Err(e) = r {
            log::warn!("discarding freed frames at GPA {gpa:#x}: {e}");
        }
    }

    /// Host address of guest-physical `gpa` in RAM.
    pub(crate) fn hva(&self, gpa: u64) -> Option<u64> {
        use vm_memory::GuestMemoryBackend;
        self.mem
            .get_host_address(vm_memory::GuestAddress(gpa))
            .ok()
            .map(|p| p as u64)
    }
}
