//! Stage-2 demand paging with userfaultfd: guest RAM (or chosen host ranges) registered in
//! `UFFDIO_REGISTER_MODE_MISSING` and served by a handler thread of the VMM, as Firecracker's
//! snapshot-restore handler and Linux's `demand_paging_test.c` do.
//!
//! Every first touch of a registered page — by the guest (KVM's `get_user_pages` on a stage-2
//! fault blocks the vCPU thread in the kernel) or by the VMM itself (vm-memory writes) — raises
//! a `UFFD_EVENT_PAGEFAULT` message; the handler thread fills the page with `UFFDIO_COPY`
//! (from a [`PageSource`], e.g. a snapshot file) or `UFFDIO_ZEROPAGE` (the source has no data
//! for it; for fresh RAM, [`ZeroSource`], one `UFFDIO_COPY` of zeros fills the faulting
//! page's whole 16-page block instead: fault-around), then wakes the faulting thread. Each
//! served fault is counted and timed.
//!
//! `UFFD_EVENT_REMOVE` (requested with `UFFD_FEATURE_EVENT_REMOVE`): when the VMM discards
//! host pages of a registered range (`madvise(MADV_DONTNEED)`, [`discard`]), the kernel reports
//! the range before it drops the pages; the handler marks those pages so their next fault is
//! served as zero, never from the source again (no stale snapshot page comes back after the
//! guest unmapped and the VMM discarded the frame).
//!
//! Sources: Linux `Documentation/admin-guide/mm/userfaultfd.rst`, `include/uapi/linux/
//! userfaultfd.h` (structures and ioctl numbers below, x86_64).

use serde::Serialize;
use serve::{serve, touched};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use thiserror::Error;

/// Bytes in a page served by the handler.
pub const PAGE: u64 = 4096;

const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
// _IOWR(0xAA, nr, size) = 0xc000_0000 | size << 16 | 0xaa << 8 | nr.
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
// _IOR(0xAA, 0x02, struct uffdio_range) = 0x8000_0000 | 16 << 16 | 0xaa << 8 | 2.
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` (32 bytes): event, 7 reserved bytes, then the 24-byte argument union
/// (pagefault: flags, address, ptid; remove: start, end).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    arg: [u64; 3],
}

/// Errors of this module.
#[derive(Debug, Error)]
pub enum UffdError {
    /// The `userfaultfd` system call failed (no kernel support, or no permission: root or
    /// `vm.unprivileged_userfaultfd=1` needed).
    #[error("userfaultfd() failed: {source}")]
    Create {
        /// The OS error.
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{what} failed for host range {start:#x} (+{len:#x} bytes): {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// First host address.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel lacks a feature the handler needs.
    #[error("userfaultfd lacks {what} (unsupported by host)")]
    Unsupported {
        /// The missing feature.
        what: &'static str,
    },
    /// A range is empty, not page-aligned, or wraps.
    #[error("host range {start:#x} (+{len:#x} bytes) is empty or not 4 KiB aligned")]
    BadRange {
        /// First host address.
        start: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The handler thread could not be started.
    #[error("cannot start the userfaultfd handler thread: {source}")]
    Thread {
        /// The OS error.
        source: io::Error,
    },
}

/// Where the handler gets a page's contents.
pub trait PageSource: Send + 'static {
    /// Fill `buf` with the page at host address `hva` (4 KiB aligned, inside a registered
    /// range) and return true, or return false when the page is all zeros (served with
    /// `UFFDIO_ZEROPAGE`).
    fn read(&mut self, hva: u64, buf: &mut [u8; PAGE as usize]) -> bool;

    /// Fault-around: pages (a power of two) of the aligned block around a faulting page that
    /// the handler fills with zeros in one `UFFDIO_COPY` when the source has no data for the page
    /// (default 1: the faulting page only). Counted in [`UffdStats::fault_around`]. Only a
    /// source that has data for no page at all may return more than 1 (the neighbours are
    /// never asked for).
    fn fault_around_pages(&self) -> u64 {
        1
    }

    /// Readahead for a source with data: fill `buf` (a whole number of pages) with the pages
    /// from host address `hva` on, in order, and return how many were filled: it stops at the
    /// first page the source has no data for (or cannot read, e.g. a CRC mismatch: that page
    /// is then asked for with [`PageSource::read`] on its own fault). The handler asks for
    /// this only after [`PageSource::read`] returned data for the page before `hva`, with a
    /// window that starts at 0 pages and doubles while faults come in order (see
    /// `UffdStats::read_ahead`). Default: [`PageSource::read`] page by page.
    fn read_ahead(&mut self, hva: u64, buf: &mut [u8]) -> u64 {
        let mut n = 0;
        for chunk in buf.chunks_exact_mut(PAGE as usize) {
            let Ok(page) = <&mut [u8; PAGE as usize]>::try_from(chunk) else {
                break;
            };
            if !self.read(hva + n * PAGE, page) {
                break;
            }
            n += 1;
        }
        n
    }
}

/// A source with no data: every page is served zero (fresh guest RAM).
#[derive(Debug, Default, Clone, Copy)]
pub struct ZeroSource;

impl PageSource for ZeroSource {
    fn read(&mut self, _hva: u64, _buf: &mut [u8; PAGE as usize]) -> bool {
        false
    }

    /// 16 pages (64 KiB, aligned): a fault in fresh RAM fills its whole block with zeroed
    /// private pages in one `UFFDIO_COPY`, as Cloud Hypervisor's prefault cursor and the
    /// kernel's own fault-around do; when faults come in order the block grows (up to
    /// [`FAULT_AROUND_MAX_PAGES`]), so a guest that touches memory in order takes few uffd
    /// round trips, and its writes take no further fault (`UFFDIO_ZEROPAGE` would
    /// map the shared zero page read-only: each first write would then take the kernel's
    /// copy-on-write fault; measured 2.5 × vs 1.3 × the `MADV_POPULATE_WRITE` floor per page,
    /// BENCHMARKS.md).
    fn fault_around_pages(&self) -> u64 {
        FAULT_AROUND_PAGES
    }
}

/// Fault-around block of [`ZeroSource`], pages.
pub const FAULT_AROUND_PAGES: u64 = 16;

/// Largest fault-around block, pages (2 MiB): the window doubles from
/// [`FAULT_AROUND_PAGES`] up to this while faults come in order (each the page after the
/// previous block), and falls back to the aligned 16-page block on any other fault.
pub const FAULT_AROUND_MAX_PAGES: u64 = 512;

/// Buckets of the serve-latency histogram: bucket `i` counts faults served in
/// `[2^i, 2^(i+1))` ns (bucket 0 also takes 0 ns; the last takes everything above).
pub const HIST_BUCKETS: usize = 32;

/// What the handler did (a copy of its counters).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UffdStats {
    /// Registered bytes.
    pub registered_bytes: u64,
    /// Page-fault messages read.
    pub faults: u64,
    /// Of those, write faults (`UFFD_PAGEFAULT_FLAG_WRITE`).
    pub write_faults: u64,
    /// Pages filled with `UFFDIO_COPY` from the source.
    pub copies: u64,
    /// Faults served zero: `UFFDIO_ZEROPAGE`, or with fault-around the faulting page of a
    /// zeroed block (`UFFDIO_COPY`).
    pub zeropages: u64,
    /// Faults another path had already served (`EEXIST`) or retried after `EAGAIN`.
    pub raced: u64,
    /// Pages the source was asked for (and returned data for: `copies`).
    pub source_reads: u64,
    /// `UFFD_EVENT_REMOVE` messages read.
    pub remove_events: u64,
    /// Pages those covered (served zero on their next fault).
    pub removed_pages: u64,
    /// Faults whose ioctl failed otherwise (the faulting thread is woken and faults again).
    pub errors: u64,
    /// Pages filled zero ahead of a fault (fault-around: [`PageSource::fault_around_pages`]),
    /// not counted in `zeropages`.
    pub fault_around: u64,
    /// Pages copied from the source ahead of a fault (readahead: [`PageSource::read_ahead`];
    /// the window starts at the faulting page alone and doubles, up to
    /// [`FAULT_AROUND_MAX_PAGES`], while faults come in order), not counted in `copies`.
    pub read_ahead: u64,
    /// Total serve time in ns (message read → page in place).
    pub total_ns: u64,
    /// Longest serve time in ns.
    pub max_ns: u64,
    /// Serve-time histogram: `hist_ns_log2[i]` faults took `[2^i, 2^(i+1))` ns.
    pub hist_ns_log2: Vec<u64>,
}

impl UffdStats {
    fn record(&mut self, ns: u64) {
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        if self.hist_ns_log2.len() != HIST_BUCKETS {
            self.hist_ns_log2 = vec![0; HIST_BUCKETS];
        }
        let b = (63 - ns.max(1).leading_zeros() as usize).min(HIST_BUCKETS - 1);
        self.hist_ns_log2[b] += 1;
    }

    /// The report's text section: counts, then the non-empty histogram buckets.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "-- userfaultfd: {} MiB registered; {} faults ({} writes): {} from the source (+{} pages readahead), {} zero (+{} pages fault-around), {} raced, {} errors; {} REMOVE events ({} pages)",
            self.registered_bytes >> 20,
            self.faults,
            self.write_faults,
            self.copies,
            self.read_ahead,
            self.zeropages,
            self.fault_around,
            self.raced,
            self.errors,
            self.remove_events,
            self.removed_pages
        );
        let _ = writeln!(
            o,
            "  serve time: mean {:.2} us, max {:.2} us; histogram (ns range: faults):",
            self.mean_ns() as f64 / 1000.0,
            self.max_ns as f64 / 1000.0
        );
        for (i, &n) in self.hist_ns_log2.iter().enumerate() {
            if n > 0 {
                let _ = writeln!(o, "    [{:>10}, {:>10}): {n}", 1u64 << i, 1u64 << (i + 1));
            }
        }
        o
    }

    /// Mean serve time in ns (0 without faults).
    pub fn mean_ns(&self) -> u64 {
        self.total_ns
            .checked_div(self.copies + self.zeropages)
            .unwrap_or(0)
    }
}

struct Shared {
    stats: Mutex<UffdStats>,
    stop: AtomicBool,
    /// Host pages served (copy or zero) or removed since the last
    /// [`UffdHandler::take_touched`]: every page whose contents may differ from the source.
    touched: Mutex<Vec<u64>>,
    /// Record `touched` (off unless [`UffdHandler::track_touched`]: the list grows with
    /// every fault).
    track: AtomicBool,
}

/// A userfaultfd with its handler thread; dropping it stops the thread and closes the fd
/// (the kernel then unregisters the ranges: later faults are ordinary anonymous faults).
pub struct UffdHandler {
    fd: Arc<OwnedFd>,
    wake: OwnedFd,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    ranges: Vec<(u64, u64)>,
}

impl std::fmt::Debug for UffdHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdHandler")
            .field("ranges", &self.ranges)
            .finish()
    }
}

fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `req` is one of the userfaultfd ioctls above and `arg` points to the
    // `#[repr(C)]` structure of exactly the size encoded in `req`, alive for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl UffdHandler {
    /// Create a userfaultfd, register the host ranges `(hva, bytes)` in MISSING mode and start
    /// the handler thread serving them from `source`.
    ///
    /// # Errors
    /// [`UffdError::Create`] without userfaultfd, [`UffdError::Unsupported`] without
    /// `UFFD_FEATURE_EVENT_REMOVE` or `UFFDIO_COPY` / `UFFDIO_ZEROPAGE` on the range,
    /// [`UffdError::BadRange`], [`UffdError::Ioctl`], [`UffdError::Thread`].
    ///
    /// # Safety
    /// Each range must be a private anonymous mapping owned by the caller that stays mapped
    /// while the handler lives; the handler writes pages into it (`UFFDIO_COPY`).
    pub unsafe fn start(
        ranges: &[(u64, u64)],
        source: Box<dyn PageSource>,
    ) -> Result<UffdHandler, UffdError> {
        // SAFETY: plain system call; the returned descriptor is owned below.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(UffdError::Create {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_EVENT_REMOVE,
            ioctls: 0,
        };
        ioctl(&fd, UFFDIO_API, &mut api).map_err(|source| UffdError::Ioctl {
            what: "UFFDIO_API",
            start: 0,
            len: 0,
            source,
        })?;
        if api.features & UFFD_FEATURE_EVENT_REMOVE == 0 {
            return Err(UffdError::Unsupported {
                what: "UFFD_FEATURE_EVENT_REMOVE",
            });
        }
        let mut registered = 0u64;
        for &(start, len) in ranges {
            if len == 0 || start % PAGE != 0 || len % PAGE != 0 || start.checked_add(len).is_none()
            {
                return Err(UffdError::BadRange { start, len });
            }
            let mut reg = UffdioRegister {
                range: UffdioRange { start, len },
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            ioctl(&fd, UFFDIO_REGISTER, &mut reg).map_err(|source| UffdError::Ioctl {
                what: "UFFDIO_REGISTER",
                start,
                len,
                source,
            })?;
            // _UFFDIO_COPY = 0x03, _UFFDIO_ZEROPAGE = 0x04 (bits of `ioctls`).
            if reg.ioctls & (1 << 3) == 0 || reg.ioctls & (1 << 4) == 0 {
                return Err(UffdError::Unsupported {
                    what: "UFFDIO_COPY / UFFDIO_ZEROPAGE on this range",
                });
            }
            registered += len;
        }
        // SAFETY: plain system call; the descriptor is owned below.
        let ev = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if ev < 0 {
            return Err(UffdError::Thread {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fresh descriptor nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(ev) };
        let shared = Arc::new(Shared {
            stats: Mutex::new(UffdStats {
                registered_bytes: registered,
                hist_ns_log2: vec![0; HIST_BUCKETS],
                ..UffdStats::default()
            }),
            stop: AtomicBool::new(false),
            touched: Mutex::new(Vec::new()),
            track: AtomicBool::new(false),
        });
        let fd = Arc::new(fd);
        let (tfd, tshared, twake) = (fd.clone(), shared.clone(), ev);
        let tranges = ranges.to_vec();
        let thread = std::thread::Builder::new()
            .name("uffd-handler".into())
            .spawn(move || serve(&tfd, twake, &tshared, source, &tranges))
            .map_err(|source| UffdError::Thread { source })?;
        Ok(UffdHandler {
            fd,
            wake,
            shared,
            thread: Some(thread),
            ranges: ranges.to_vec(),
        })
    }

    /// The handler's counters so far.
    pub fn stats(&self) -> UffdStats {
        match self.shared.stats.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Host pages (4 KiB aligned) served or discarded (`UFFD_EVENT_REMOVE`) since the last
    /// call, in no order, possibly repeated: the pages that may no longer equal the source.
    /// (A snapshot of a VM restored from a file layers exactly these on top of it.)
    pub fn take_touched(&self) -> Vec<u64> {
        std::mem::take(&mut *touched(&self.shared))
    }

    /// Start recording the pages [`UffdHandler::take_touched`] returns (off by default).
    pub fn track_touched(&self) {
        self.shared.track.store(true, Ordering::SeqCst);
    }

    /// The registered ranges `(hva, bytes)`.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
}

impl Drop for UffdHandler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = &self.fd;
    }
}

/// Discard host pages `[hva, hva + len)` of a registered range (`MADV_DONTNEED`): the kernel
/// reports `UFFD_EVENT_REMOVE` to the handler (which marks the pages zero-on-next-fault)
/// before it drops them; the call returns once the handler has read the event.
///
/// # Errors
/// The OS error of `madvise`.
///
/// # Safety
/// The range must be host memory the caller owns and whose contents it no longer needs.
pub unsafe fn discard(hva: u64, len: u64) -> io::Result<()> {
    // SAFETY: forwarded to the caller; MADV_DONTNEED unmaps no VMA.
    let rc = unsafe { libc::madvise(hva as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl crate::memory::GuestRam {
    /// Register every RAM region with a new userfaultfd served from `source` (MISSING mode):
    /// from now on each first touch of a frame, by the guest or the VMM, is served by the
    /// handler thread. Call before anything is written to RAM.
    ///
    /// # Errors
    /// As [`UffdHandler::start`].
    pub fn attach_uffd(&mut self, source: Box<dyn PageSource>) -> Result<(), UffdError> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let ranges: Vec<(u64, u64)> = self
            .mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.len()))
            .collect();
        // The handler is stored in `self`, so it is dropped with (and before the unmapping of)
        // the regions it serves.
        // SAFETY: each range is exactly one private anonymous mapping vm-memory created for
        // this GuestRam. The handler writes only in answer to a fault in the range, i.e. while
        // it is mapped; when the GuestRam drops, the mappings go first (field order) and the
        // kernel unregisters them with them (no UFFD_FEATURE_EVENT_UNMAP: no message), then
        // the handler stops.
        let h = unsafe { UffdHandler::start(&ranges, source)? };
        self.uffd = Some(h);
        Ok(())
    }

    /// With uffd-backed RAM, discard the host pages of the freed frames `[gpa, gpa + len)`
    /// (`MADV_DONTNEED`; the handler sees `UFFD_EVENT_REMOVE` and serves them zero on their
    /// next touch). Without uffd, nothing.
    pub fn discard_if_uffd(&self, gpa: u64, len: u64) {
        if self.uffd.is_none() || !self.contains(gpa, len) {
            return;
        }
        let Some(hva) = self.hva(gpa) else { return };
        // SAFETY: `[gpa, gpa + len)` lies in one RAM region (checked above), so the host range
        // is inside its mapping; the frames were just freed, their contents are not needed
        // (a freed frame is zeroed before reuse anyway).
        if let Err(e) = unsafe { discard(hva, len) } {
            log::warn!("MADV_DONTNEED of freed frames at GPA {gpa:#x}: {e}");
        }
    }

    /// Host address of guest-physical `gpa` in RAM.
    fn hva(&self, gpa: u64) -> Option<u64> {
        use vm_memory::GuestMemoryBackend;
        self.mem
            .get_host_address(vm_memory::GuestAddress(gpa))
            .ok()
            .map(|p| p as u64)
    }
}

mod serve;
#[cfg(test)]
mod tests;
