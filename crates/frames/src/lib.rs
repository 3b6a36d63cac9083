//! Guest frame management: a hierarchical bitmap frame allocator, a Linux-style zone table on
//! top of it, and an extent ("free map") allocator for address ranges.
//!
//! The host VMM owns every 4 KiB frame of guest RAM. Everything here is plain data (no KVM), so
//! it tests and benchmarks anywhere.
//!
//! # Units
//! Frame counts and frame numbers ([`Pfn`]) are in 4 KiB frames
//! ([`PAGE_SIZE`](crate::addr::PAGE_SIZE)); alignments of frame allocations are in frames too
//! (`512` = 2 MiB). RAM ranges given to [`ZoneTable::new`] are in bytes. [`FreeMap`] works in
//! whatever unit its caller uses (the host uses bytes of guest-virtual address space).
//!
//! # Pieces
//! * [`BitmapAllocator`] — 1 bit per frame plus tiny summaries (a `u16` free count per 512-frame
//!   2 MiB group and two hierarchical group bitmaps: "has a free frame" and "entirely free"), as
//!   in LLFree (Wrenger et al., *LLFree: Scalable and Optionally-Persistent Page-Frame
//!   Allocation*, USENIX ATC 2023). Finding a free frame never scans the bitmap: it is the
//!   next-free hint word, or at most one 8-word group found through the summary levels.
//!   Names and behaviour of seed `000_79339277aaa7d822.txt` (`BitMemManager`:
//!   `allocate_page`, `allocate_pages`, `deallocate_pages`, `init_bitmap_rand`) and seed
//!   `002_2147badeb8a18e20.txt` (Orbita `FrameAllocator`: next-free hint, statistics).
//! * [`ZoneTable`] — zones built from the e820 RAM map: Linux x86_64 layout (DMA / DMA32 /
//!   Normal) or the legacy layout of seed `003_733038d7242770b3.txt` (DMA / Normal / HighMem),
//!   with a Linux zonelist fallback, `lowmem_reserve` protection and `/proc/zoneinfo`- and
//!   `/proc/buddyinfo`-like reports (Linux `mm/page_alloc.c`, `mm/vmstat.c`).
//! * [`FreeMap`] — seed 000's `FreeMemManager` (`alloc_freemap` / `dealloc_freemap`): free
//!   extents `start → length`, first fit or best fit with alignment, coalescing frees. Indexed
//!   by an address-ordered tree with per-subtree maximum lengths (first fit) and a size-ordered
//!   set (best fit), so neither policy scans the extent list.
//!
//! # Errors
//! Every operation that can fail returns a [`FrameError`] and then leaves the allocator exactly
//! as it was (only the failure statistics count the failed call). No input — `u64::MAX`
//! counts, ranges that overflow, PFNs outside the managed range — panics; the only panics are
//! the documented ones of [`BitmapAllocator::new`] and [`FreeMap::new`] for sizes their
//! `try_new` rejects.

pub mod addr;
mod bitmap;
mod bitmap_extra;
mod bitmap_serde;
mod freemap;
mod preset;
mod search;
pub mod seed_api;
mod summary;
mod treap;
mod zone;

pub use bitmap::{BitmapAllocator, BitmapStats, GROUP_FRAMES, MAX_FRAMES, MAX_ORDER, MAX_PFN};
pub use freemap::{FitPolicy, FreeMap};
pub use preset::{ZoneKind, ZonePreset};
pub use zone::{ZoneStats, ZoneTable};

use crate::addr::Pfn;

/// Errors of the frame manager. Frame numbers and counts are in 4 KiB frames; the `start`/`len`
/// fields of the extent variants are in the caller's unit (bytes for RAM ranges and GVAs).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// No free run of `requested` frames (with the requested alignment) exists. `zone` is the
    /// requested zone for [`ZoneTable`] allocations, `None` for a bare [`BitmapAllocator`].
    #[error("out of frames: no free run of {requested} frame(s){}", zone_suffix(.zone))]
    OutOfFrames {
        /// Frames requested.
        requested: u64,
        /// The zone the request was for, if any.
        zone: Option<ZoneKind>,
    },
    /// Every frame of the freed range is already free (the range starts at `pfn`).
    #[error("double free: every frame of the range at {pfn} is already free")]
    DoubleFree {
        /// First frame of the freed range.
        pfn: Pfn,
    },
    /// The freed range mixes allocated and free frames; `pfn` is its first free frame.
    #[error("{pfn} is not allocated (the freed range mixes allocated and free frames)")]
    NotAllocated {
        /// First free (not allocated) frame inside the range.
        pfn: Pfn,
    },
    /// The range contains a reserved frame (e820 hole, kernel image, boot structure…);
    /// `pfn` is the first one. Reserved frames can be neither freed nor reserved again.
    #[error("{pfn} is reserved")]
    Reserved {
        /// First reserved frame inside the range.
        pfn: Pfn,
    },
    /// A range to reserve contains an allocated frame; `pfn` is the first one.
    #[error("{pfn} is allocated and cannot be reserved")]
    InUse {
        /// First allocated frame inside the range.
        pfn: Pfn,
    },
    /// `[pfn, pfn + count)` is not inside the managed frames (or `pfn + count` overflows).
    #[error("frames [{pfn}, +{count}) are outside the managed range")]
    OutOfRange {
        /// First frame of the range.
        pfn: Pfn,
        /// Length of the range in frames.
        count: u64,
    },
    /// `[pfn, pfn + count)` is not inside a single zone (allocations never cross zones, so
    /// such a free is a caller bug).
    #[error("frames [{pfn}, +{count}) straddle a zone boundary")]
    Straddle {
        /// First frame of the range.
        pfn: Pfn,
        /// Length of the range in frames.
        count: u64,
    },
    /// The alignment is zero or not a power of two.
    #[error("alignment {align} is not a power of two")]
    BadAlign {
        /// The rejected alignment (frames, or the [`FreeMap`]'s unit).
        align: u64,
    },
    /// A count or length of zero.
    #[error("zero count")]
    ZeroCount,
    /// The zone is not part of the table's preset (e.g. `HighMem` on x86_64, `DMA32` on legacy).
    #[error("zone {zone} does not exist in this zone table")]
    NoSuchZone {
        /// The requested zone.
        zone: ZoneKind,
    },
    /// Two ranges overlap: RAM ranges given to [`ZoneTable::new`] (bytes), or a range freed
    /// into a [`FreeMap`] that partly overlaps a free extent.
    #[error("[{start:#x}, +{len:#x}) overlaps [{other_start:#x}, +{other_len:#x})")]
    Overlap {
        /// Start of the offending range.
        start: u64,
        /// Length of the offending range.
        len: u64,
        /// Start of the range it overlaps.
        other_start: u64,
        /// Length of the range it overlaps.
        other_len: u64,
    },
    /// A [`FreeMap`] free of a range that is entirely free already.
    #[error("double free of extent [{start:#x}, +{len:#x})")]
    DoubleFreeExtent {
        /// Start of the freed range.
        start: u64,
        /// Length of the freed range.
        len: u64,
    },
    /// `[start, start + len)` overflows `u64` or lies outside the [`FreeMap`]'s range.
    #[error("range [{start:#x}, +{len:#x}) is out of bounds or overflows")]
    BadRange {
        /// Start of the range.
        start: u64,
        /// Length of the range.
        len: u64,
    },
    /// No free extent of `len` aligned to `align` exists in a [`FreeMap`].
    #[error("no free extent of {len:#x} aligned to {align:#x}")]
    NoSpace {
        /// Requested length.
        len: u64,
        /// Requested alignment.
        align: u64,
    },
    /// An allocator would manage more than [`MAX_FRAMES`] frames or frames at or above
    /// [`MAX_PFN`].
    #[error("{frames} frames at {base} is too large to manage")]
    TooLarge {
        /// First frame.
        base: Pfn,
        /// Frame count.
        frames: u64,
    },
}

fn zone_suffix(zone: &Option<ZoneKind>) -> String {
    match zone {
        Some(z) => format!(" for zone {z}"),
        None => String::new(),
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, FrameError>;

/// SplitMix64 step (Steele, Lea & Flood 2014): a tiny, reproducible PRNG for
/// [`BitmapAllocator::init_bitmap_rand`] and treap priorities; not for security.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
