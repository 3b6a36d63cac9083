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
//! MINOR mode ([`UffdMode::MissingMinor`], guest RAM on shared memory:
//! [`crate::memory::RamBacking::Shm`]): the range is registered
//! `UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR` (needs
//! `UFFD_FEATURE_MINOR_SHMEM`). A page not in the memfd's page cache still faults *missing*
//! (served as above: `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`, which also fill the page cache); a page
//! already in the page cache (put there through the VMM's unregistered alias mapping, e.g.
//! [`crate::memory::GuestRam::shm_prefill`]) but not yet mapped in the registered range faults
//! *minor* and is served with `UFFDIO_CONTINUE`: its page-cache page is mapped, nothing is
//! copied. Minor and missing faults are counted apart ([`UffdStats::minor_faults`],
//! [`UffdStats::missing_faults`]). On shared memory a discard is `MADV_REMOVE` (a hole punched
//! in the memfd; [`discard`]), since `MADV_DONTNEED` would leave the old page in the page cache.
//!
//! Sources: Linux `Documentation/admin-guide/mm/userfaultfd.rst`, `include/uapi/linux/
//! userfaultfd.h` (structures and ioctl numbers below, x86_64).

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
const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
// _IOWR(0xAA, nr, size) = 0xc000_0000 | size << 16 | 0xaa << 8 | nr.
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;
const UFFDIO_CONTINUE: u64 = 0xc020_aa07;
// _IOR(0xAA, 0x02, struct uffdio_range) = 0x8000_0000 | 16 << 16 | 0xaa << 8 | 2.
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;
const UFFDIO_CONTINUE_MODE_DONTWAKE: u64 = 1;
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

#[repr(C)]
struct UffdioContinue {
    range: UffdioRange,
    mode: u64,
    mapped: i64,
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
    /// A guest-physical range given for userfaultfd (`--uffd-range`) is malformed, empty, not
    /// 4 KiB aligned, outside RAM (or across the MMIO hole) or overlaps another.
    #[error("GPA range {text}: {why}")]
    BadGpaRange {
        /// The range as given (`START..END`, or hex start and length).
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The prefault cursor needs shared-memory RAM registered with userfaultfd.
    #[error("prefault cursor: {why}")]
    NoCursor {
        /// What is missing.
        why: &'static str,
    },
    /// Shared-memory RAM could not be prefilled or discarded.
    #[error(transparent)]
    Shm(#[from] crate::memory::ShmError),
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
    /// The prefault cursor's thread ([`crate::memory::GuestRam::start_prefault_cursor`]).
    cursor: Option<JoinHandle<()>>,
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
        // SAFETY: forwarded to the caller.
        unsafe { Self::start_with(ranges, source, UffdMode::Missing) }
    }

    /// [`UffdHandler::start`] in `mode`. With [`UffdMode::MissingMinor`] the ranges must be
    /// shared-memory mappings (`MAP_SHARED` of a memfd or tmpfs file); minor faults are
    /// resolved with `UFFDIO_CONTINUE` (whatever the page cache holds is mapped; `source` is
    /// asked only on missing faults).
    ///
    /// # Errors
    /// As [`UffdHandler::start`]; [`UffdError::Unsupported`] when MINOR mode is asked and the
    /// kernel lacks `UFFD_FEATURE_MINOR_SHMEM` or `UFFDIO_CONTINUE` on the range (an
    /// anonymous range has no MINOR mode: `UFFDIO_REGISTER` fails with `EINVAL`).
    ///
    /// # Safety
    /// Each range must be a mapping owned by the caller (private anonymous, or shared memory
    /// for MINOR mode) that stays mapped while the handler lives; the handler writes pages
    /// into it (`UFFDIO_COPY`).
    pub unsafe fn start_with(
        ranges: &[(u64, u64)],
        source: Box<dyn PageSource>,
        mode: UffdMode,
    ) -> Result<UffdHandler, UffdError> {
        let minor = mode == UffdMode::MissingMinor;
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
        let wanted = UFFD_FEATURE_EVENT_REMOVE | if minor { UFFD_FEATURE_MINOR_SHMEM } else { 0 };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: wanted,
            ioctls: 0,
        };
        if let Err(source) = ioctl(&fd, UFFDIO_API, &mut api) {
            // The kernel refuses (EINVAL) a request for a feature it does not know.
            if minor && source.raw_os_error() == Some(libc::EINVAL) {
                return Err(UffdError::Unsupported {
                    what: "UFFD_FEATURE_MINOR_SHMEM",
                });
            }
            return Err(UffdError::Ioctl {
                what: "UFFDIO_API",
                start: 0,
                len: 0,
                source,
            });
        }
        if api.features & UFFD_FEATURE_EVENT_REMOVE == 0 {
            return Err(UffdError::Unsupported {
                what: "UFFD_FEATURE_EVENT_REMOVE",
            });
        }
        if minor && api.features & UFFD_FEATURE_MINOR_SHMEM == 0 {
            return Err(UffdError::Unsupported {
                what: "UFFD_FEATURE_MINOR_SHMEM",
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
                mode: UFFDIO_REGISTER_MODE_MISSING
                    | if minor { UFFDIO_REGISTER_MODE_MINOR } else { 0 },
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
            // _UFFDIO_CONTINUE = 0x07.
            if minor && reg.ioctls & (1 << 7) == 0 {
                return Err(UffdError::Unsupported {
                    what: "UFFDIO_CONTINUE on this range",
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
                mode,
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
            cursor: None,
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
        if let Some(t) = self.cursor.take() {
            let _ = t.join();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = &self.fd;
    }
}

/// Discard host pages `[hva, hva + len)` of a registered private anonymous range
/// (`MADV_DONTNEED`): the kernel reports `UFFD_EVENT_REMOVE` to the handler (which marks the
/// pages zero-on-next-fault) before it drops them; the call returns once the handler has read
/// the event.
///
/// # Errors
/// The OS error of `madvise`.
///
/// # Safety
/// The range must be host memory the caller owns and whose contents it no longer needs.
pub unsafe fn discard(hva: u64, len: u64) -> io::Result<()> {
    // SAFETY: forwarded to the caller; MADV_DONTNEED unmaps no VMA.
    unsafe { madvise(hva, len, libc::MADV_DONTNEED) }
}

/// [`discard`] for a registered shared-memory range (MINOR mode): `MADV_REMOVE`, which punches
/// a hole in the file, so the page-cache pages go too and no stale page comes back on the
/// next touch (`MADV_DONTNEED` would only unmap them). Raises `UFFD_EVENT_REMOVE` likewise.
///
/// # Errors
/// The OS error of `madvise`.
///
/// # Safety
/// As [`discard`], for every mapping of the same file pages (the alias included).
pub unsafe fn discard_shared(hva: u64, len: u64) -> io::Result<()> {
    // SAFETY: forwarded to the caller; MADV_REMOVE unmaps no VMA.
    unsafe { madvise(hva, len, libc::MADV_REMOVE) }
}

/// # Safety
/// As [`discard`].
unsafe fn madvise(hva: u64, len: u64, advice: i32) -> io::Result<()> {
    // SAFETY: forwarded to the caller.
    let rc = unsafe { libc::madvise(hva as *mut libc::c_void, len as usize, advice) };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

mod ram;
mod stats;
pub use stats::{UffdMode, UffdStats, HIST_BUCKETS};
mod serve;
pub use ram::{parse_gpa_range, RamOptions, CURSOR_STEP};
#[cfg(test)]
mod shm_tests;
#[cfg(test)]
mod tests;
