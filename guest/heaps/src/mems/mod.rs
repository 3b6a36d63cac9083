//! MeMS, the memory management system of seed `004_1209ef3e46c6e329.txt`: a **main chain** of
//! page-multiple regions obtained from the page source, each with a **sub-chain** of PROCESS
//! (allocated) and HOLE (free) segments.
//!
//! # Behaviour (as in the seed)
//! * [`Mems::mems_malloc`] reuses a hole that fits (the hole's front becomes the PROCESS
//!   segment, the rest stays a HOLE); if none fits it grows the chain with a new main node of
//!   `ceil(size / 4096)` pages whose remainder becomes a HOLE.
//! * [`Mems::mems_free`] turns the segment into a HOLE and merges it with adjacent holes of the
//!   same main node.
//! * [`Mems::mems_get`] gives the physical address ([`PageSource::translate`]).
//! * [`Mems::mems_finish`] unmaps everything; [`Mems::mems_print_stats`] prints the seed's
//!   report.
//!
//! # Differences from the seed
//! * Addresses are real (guest) virtual addresses, printed in decimal, not MeMS-virtual
//!   addresses starting at 1000. `mems_malloc` returns a pointer usable directly.
//! * Sizes are rounded up to a multiple of 16 bytes (so every segment is 16-byte aligned);
//!   `P[a:b]` shows the rounded extent, so the segments of a main node always tile it. Size 0
//!   is served as 16 bytes.
//! * Holes are indexed by size in a two-level segregated-fit index (TLSF-style: 64 power-of-two
//!   ranges × 8 linear sub-ranges, two bitmaps), so finding a hole never walks the chains:
//!   first the request's own size class (exact below 256 bytes; above, up to
//!   [`SCAN_LIMIT`] holes of that class are checked), then the head of the next non-empty
//!   larger class, which always fits. This is a good fit rather than the seed's first fit.
//! * Optional: [`Mems::set_release_empty`] unmaps a main node as soon as it is one hole (the
//!   seed keeps it until `mems_finish`; off by default).
//! * Optional growth policy (both off by default, which is the seed's behaviour):
//!   - [`Mems::set_min_grow_pages`]: when no hole fits, the chain grows by a main node of at
//!     least that many pages, so the requests that follow share its remainder instead of each
//!     growing a node of its own;
//!   - [`Mems::set_solo_min`]: a request of at least that many bytes gets a **solo** main node
//!     of its own, exactly `ceil(size / 4096)` pages. Its leftover (the tail of the last page,
//!     alignment padding) stays a HOLE segment, so the report and the tiling are unchanged,
//!     but it is kept out of the hole index: no other request is placed there, so the node is
//!     unmapped as soon as its PROCESS segment is freed (like an `mmap` threshold). Without
//!     it, a small block placed in the tail of a large block's node keeps the whole node
//!     mapped after the large block is freed.
//! * [`Mems::mems_resize_in_place`] grows a PROCESS segment into the HOLE that follows it in
//!   its main node, or shrinks it (the cut tail becomes a HOLE, merged with the next one).
//!
//! # Where the metadata lives
//! Never inside the regions handed to the program. Main and sub-chain nodes are 64-byte slots
//! in **node-pool pages** (one page = a 64-byte pool header + 63 slots, chained); live
//! PROCESS segments are found by address in an open-addressing **hash table** (16-byte
//! entries, resized by doubling/halving). The first pool page (the *home* page) holds 31
//! slots and, in its upper half, the table while it has at most 128 entries (up to 96 live
//! PROCESS segments), so a fresh MeMS maps a single metadata page; a bigger table has pages
//! of its own. The few lookups by any address (`mems_get`, [`Mems::contains`], classifying a
//! bad free) walk the main chain, as the seed's `mems_get` does: no per-page map is kept, so
//! a large block's node costs no work per page to make or drop. All of it comes from the
//! same page source and is counted by [`Mems::pages_in_use`]; `mems_finish` returns it all.
//! Since the regions hold no metadata, they are mapped with [`PageSource::map_pages_dirty`]
//! (a recycling source need not zero them; `mems_malloc` never promised zeroed memory).

use core::fmt::{self, Write};
use core::ptr::NonNull;

mod alloc;
mod free;
mod index;
mod pool;
mod report;
mod table;

use crate::{at, map, map_dirty, round_up, shrink, unmap, HeapError, PageSource, PAGE_SIZE};

/// Alignment of every segment start, in bytes.
pub const ALIGN: usize = 16;
/// Largest alignment [`Mems::mems_alloc_aligned`] accepts (1 GiB).
pub const MAX_ALIGN: usize = 1 << 30;
/// Holes of the request's own (inexact) size class checked before a larger class is used.
pub const SCAN_LIMIT: usize = 16;

const NODE: usize = 64;
const SLOTS_PER_POOL_PAGE: usize = PAGE_SIZE / NODE - 1;
const KIND_P: u32 = 0x50; // 'P'
const KIND_H: u32 = 0x48; // 'H'
const KIND_MAIN: u32 = 0x4d; // 'M'
/// Main-node flag: a solo node (its holes are not in the index).
const MAIN_SOLO: usize = 1;
const NODE_MAGIC: u32 = 0x4d65_4d53; // "MeMS"
const FL: usize = 64;
const SL: usize = 8;
/// Smallest hash table of its own pages (one page).
const MIN_TABLE: usize = PAGE_SIZE / 16;
/// The hash table while it is small: 128 entries in the upper half of the first node-pool
/// page (the "home" page), so a fresh MeMS maps one metadata page, not two.
const HOME_TABLE: usize = MIN_TABLE / 2;
/// Offset of the home table in the home page; node slots of the home page stop below it.
const HOME_TABLE_OFF: usize = PAGE_SIZE - HOME_TABLE * 16;
/// Node slots of the home page.
const HOME_SLOTS: usize = HOME_TABLE_OFF / NODE - 1;

/// A sub-chain node (PROCESS or HOLE segment), 64 bytes in a pool page.
#[repr(C)]
struct Seg {
    start: usize,
    size: usize,
    main: usize,
    prev: usize,
    next: usize,
    fprev: usize,
    fnext: usize,
    kind: u32,
    magic: u32,
}

/// A main-chain node, 64 bytes in a pool page.
#[repr(C)]
struct Main {
    start: usize,
    pages: usize,
    head: usize,
    sub_len: usize,
    prev: usize,
    next: usize,
    /// [`MAIN_SOLO`] or 0.
    flags: usize,
    kind: u32,
    magic: u32,
}

const _: () = assert!(core::mem::size_of::<Seg>() == NODE);
const _: () = assert!(core::mem::size_of::<Main>() == NODE);

#[inline(always)]
fn seg(a: usize) -> *mut Seg {
    at::<Seg>(a)
}
#[inline(always)]
fn mainp(a: usize) -> *mut Main {
    at::<Main>(a)
}

/// Size class of `size` bytes (a multiple of 16): `(fl, sl)`.
#[inline(always)]
fn mapping(size: usize) -> (usize, usize) {
    let g = size >> 4;
    if g < SL {
        (0, g)
    } else {
        let l = (usize::BITS - 1 - g.leading_zeros()) as usize;
        (l - 2, (g >> (l - 3)) & (SL - 1))
    }
}

/// Is every hole of class `(fl, _)` the same size?
#[inline(always)]
fn exact(fl: usize) -> bool {
    fl <= 1
}

/// Result of [`Mems::audit`], recomputed by walking the chains.
/// `data_pages * 4096 == process_bytes + hole_bytes` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemsAudit {
    /// Main-chain nodes.
    pub main_nodes: usize,
    /// Pages of the main-chain regions.
    pub data_pages: usize,
    /// PROCESS segments.
    pub process_segments: usize,
    /// HOLE segments.
    pub holes: usize,
    /// Bytes in PROCESS segments.
    pub process_bytes: usize,
    /// Bytes in HOLE segments (the report's "Space unused").
    pub hole_bytes: usize,
    /// Node-pool pages.
    pub pool_pages: usize,
    /// Hash-table pages.
    pub table_pages: usize,
}

/// The MeMS heap (seed 004). See the module docs.
pub struct Mems<S: PageSource> {
    source: S,
    // Main chain.
    first_main: usize,
    last_main: usize,
    main_len: usize,
    data_pages: usize,
    hole_bytes: usize,
    release_empty: bool,
    /// A main node became one HOLE and was kept (`release_empty` off at the time); sticky
    /// until `mems_finish`, so the audit knows empty nodes may exist.
    kept_empty: bool,
    min_grow_pages: usize,
    solo_min: usize,
    // Node pool.
    pool_first: usize,
    /// The home page (the first pool page mapped), 0 if none.
    home: usize,
    pool_pages: usize,
    free_nodes: usize,
    free_count: usize,
    // Hash table of live PROCESS segment starts.
    table: usize,
    table_cap: usize,
    table_len: usize,
    // Hole index.
    fl_bitmap: u64,
    sl_bitmap: [u8; FL],
    heads: [[usize; SL]; FL],
}

impl<S: PageSource> Mems<S> {
    /// An empty MeMS on `source` (the seed's `mems_init`); maps nothing yet.
    pub const fn new(source: S) -> Self {
        Mems {
            source,
            first_main: 0,
            last_main: 0,
            main_len: 0,
            data_pages: 0,
            hole_bytes: 0,
            release_empty: false,
            kept_empty: false,
            min_grow_pages: 1,
            solo_min: usize::MAX,
            pool_first: 0,
            home: 0,
            pool_pages: 0,
            free_nodes: 0,
            free_count: 0,
            table: 0,
            table_cap: 0,
            table_len: 0,
            fl_bitmap: 0,
            sl_bitmap: [0; FL],
            heads: [[0; SL]; FL],
        }
    }

    /// The seed's `mems_init`: same as [`Mems::new`].
    pub const fn mems_init(source: S) -> Self {
        Self::new(source)
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The page source, mutably.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// When `true`, a main node that becomes a single HOLE is unmapped at once (and the node
    /// pool and hash table too once nothing is left). Default `false`, as in the seed, where
    /// memory only goes back in `mems_finish`.
    pub fn set_release_empty(&mut self, on: bool) {
        self.release_empty = on;
    }

    /// When the chain has to grow for a request below the solo threshold, grow it by at least
    /// `pages` pages (default 1: `ceil(size / 4096)` pages, as in the seed).
    pub fn set_min_grow_pages(&mut self, pages: usize) {
        self.min_grow_pages = pages.max(1);
    }

    /// Requests of at least `bytes` bytes get a solo main node (see the module docs); default
    /// `usize::MAX` (never). Applies to requests made after the call.
    pub fn set_solo_min(&mut self, bytes: usize) {
        self.solo_min = bytes;
    }

    /// Pages mapped from the source: regions + node pool + hash table.
    pub fn pages_in_use(&self) -> usize {
        self.data_pages + self.metadata_pages()
    }

    /// Pages of the main-chain regions (the report's "Pages used").
    pub fn data_pages(&self) -> usize {
        self.data_pages
    }

    /// Pages of metadata: node pool and hash table.
    pub fn metadata_pages(&self) -> usize {
        self.pool_pages + self.table_pages()
    }

    /// Pages of the hash table's own (0 while it lives in the home page).
    pub(crate) fn table_pages(&self) -> usize {
        if self.table_at_home() {
            0
        } else {
            self.table_cap * 16 / PAGE_SIZE
        }
    }

    /// Node slots in the pool pages.
    fn pool_slots(&self) -> usize {
        match self.pool_pages {
            0 => 0,
            n => HOME_SLOTS + (n - 1) * SLOTS_PER_POOL_PAGE,
        }
    }

    /// Bytes in holes (the report's "Space unused").
    pub fn hole_bytes(&self) -> usize {
        self.hole_bytes
    }

    /// Number of main-chain nodes.
    pub fn main_chain_len(&self) -> usize {
        self.main_len
    }
}

impl<S: PageSource> Drop for Mems<S> {
    /// Same as [`Mems::mems_finish`].
    fn drop(&mut self) {
        self.mems_finish();
    }
}
