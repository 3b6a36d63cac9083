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
    /// Start the prefault cursor after registration ([`GuestRam::start_prefault_cursor`];
    /// shared memory with userfaultfd only).
    pub prefault_cursor: bool,
}

/// Step of the prefault cursor, bytes.
pub const CURSOR_STEP: u64 = 2 << 20;

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

/// The prefault cursor's thread: `fallocate` each file range `(offset, bytes)` in
/// [`CURSOR_STEP`] steps until done or the handler stops.
fn cursor(file: &std::fs::File, chunks: &[(u64, u64)], shared: &super::Shared) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    for &(off, len) in chunks {
        let end = off + len;
        let mut o = off;
        while o < end {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let n = CURSOR_STEP.min(end - o);
            // SAFETY: plain system call on our own descriptor of the memfd; the range lies
            // inside the file (a registered range of guest RAM).
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, o as i64, n as i64) };
            if rc != 0 {
                log::warn!(
                    "prefault cursor stopped at file offset {o:#x}: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            let mut s = match shared.stats.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            s.prefaulted_bytes += n;
            drop(s);
            o += n;
        }
    }
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

    /// Start the **prefault cursor**, as Cloud Hypervisor's on-demand restore has: a VMM
    /// thread that walks the registered ranges in ascending order, [`CURSOR_STEP`] at a
    /// time, and puts their pages into the memfd's page cache (`fallocate`; pages already
    /// there keep their contents), so the guest's later first touches are minor faults
    /// (`UFFDIO_CONTINUE`, no allocation on the vCPU's path) while the memory is allocated in
    /// the background. It commits host memory for every registered byte; it stops when done,
    /// on an error (logged) or when the handler is dropped. Progress:
    /// [`super::UffdStats::prefaulted_bytes`].
    ///
    /// # Errors
    /// [`UffdError::NoCursor`] without shared memory or userfaultfd, or when a cursor runs
    /// already; [`UffdError::Thread`].
    pub fn start_prefault_cursor(&mut self) -> Result<(), UffdError> {
        let no = |why| UffdError::NoCursor { why };
        let shm = self
            .shm
            .as_ref()
            .ok_or_else(|| no("needs shared-memory RAM (--ram-backing shm)"))?;
        let h = self
            .uffd
            .as_ref()
            .ok_or_else(|| no("needs userfaultfd (--uffd)"))?;
        if h.cursor.is_some() {
            return Err(no("already running"));
        }
        // File ranges of the registered host ranges.
        let mut chunks = Vec::with_capacity(h.ranges.len());
        for &(hva, len) in &h.ranges {
            let off = self
                .gpa_of(hva)
                .and_then(|gpa| self.shm_offset(gpa))
                .ok_or_else(|| no("a registered range is not guest RAM"))?;
            chunks.push((off, len));
        }
        let file = shm
            .file()
            .try_clone()
            .map_err(|source| UffdError::Thread { source })?;
        let shared = h.shared.clone();
        let t = std::thread::Builder::new()
            .name("uffd-prefault".into())
            .spawn(move || cursor(&file, &chunks, &shared))
            .map_err(|source| UffdError::Thread { source })?;
        if let Some(h) = self.uffd.as_mut() {
            h.cursor = Some(t);
        }
        Ok(())
    }

    /// Guest-physical address of host address `hva` in RAM.
    fn gpa_of(&self, hva: u64) -> Option<u64> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.mem.iter().find_map(|r| {
            let p = r.as_ptr() as u64;
            (hva >= p && hva - p < r.len()).then(|| r.start_addr().0 + (hva - p))
        })
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
