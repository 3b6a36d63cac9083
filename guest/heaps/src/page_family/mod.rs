//! Page families: a struct-family heap after seed `001_a52b9431769bf736.txt` ("Custom Memory
//! Manager for Linux": `mm_init`, `MM_REG_STRUCT`, `xcalloc`, `xfree`,
//! `mm_print_memory_usage`, `mm_print_block_usage`).
//!
//! # Model (as in the seed)
//! Each registered struct type gets a *page family*. A family owns *VM pages* (one or more
//! contiguous 4 KiB pages from the [`PageSource`]); a VM page starts with a page header and is
//! tiled by *blocks*, each a block header followed by its payload. Allocation takes the
//! family's **largest free block** (the seed's priority list, largest first), splits it (the
//! allocation at its start, the rest a new free block) and returns its payload; if even the
//! largest free block is too small a new VM page is mapped. Free marks the block free and
//! merges it with free physical neighbours; a VM page that becomes completely free is unmapped
//! at once (unless an empty-page cache is configured, [`PageFamilies::set_empty_page_cache`]).
//! A request larger than one page's payload gets a *multi-page VM page* of just enough pages.
//!
//! # Differences from the seed (data structures, not behaviour)
//! * The largest-first priority is a set of 64 segregated size classes per family plus a
//!   64-bit non-empty bitmap: the largest free block is the head of the highest non-empty
//!   class (`leading_zeros`), O(1), instead of a sorted linked list. Classes are exact for
//!   block sizes below 256 bytes and a quarter of a power of two above, so the head of the
//!   top class is the largest free block up to that granularity; when the request falls in the
//!   top class itself, up to [`SCAN_LIMIT`] blocks of that class are checked for one that fits
//!   before a new page is mapped (the seed only ever checks its single largest block).
//! * Block headers are 8 bytes (two `u32` boundary tags): `size | FREE | magic` and
//!   `prev_size | magic`. The seed's `is_free`, `block_size` (payload = size − 8), `offset`
//!   (from the page start) and `prev`/`next` blocks (physically adjacent, found from the sizes)
//!   are all derivable and shown in the reports.
//! * Validation does not trust in-band data: the page registry (a radix tree, see the crate
//!   docs) maps every page to its VM page, and each VM page header holds a bitmap with one bit
//!   per 16-byte slot, set iff an allocated payload starts there. `xfree` of anything else is
//!   an error; the error path walks the page's blocks to tell a double free (the address lies
//!   in free memory) from a pointer that never started a block.
//! * Opt-in fast path: [`PageFamilies::set_quick_cache`] keeps a few freed one-unit blocks per
//!   family unmerged for immediate reuse (deferred coalescing). Off by default.
//!
//! # Costs
//! `xcalloc`/`xmalloc`/`xfree` are O(1): a bitmap `leading_zeros`, list unlink/push, a
//! split or up to two merges, an O(1) registry lookup; mapping or unmapping a page adds one
//! page-source call (and registry updates, one per 4 KiB page). Only error paths, reports,
//! [`PageFamilies::trim`] and [`PageFamilies::audit`] walk blocks or pages.
//!
//! # Layout of a VM page of `p` pages (byte offsets)
//! ```text
//! 0      VmPage header (32 B): magic u32, family u16, pad u16, pages u32, pad u32, next, prev
//! 32     allocation bitmap: p * 32 bytes (256 bits per 4 KiB page)
//! 40+32p first block header (8 B), payload at 48+32p (16-byte aligned)
//! ...    blocks: total sizes are multiples of 16 (header + payload), min 32
//! 4096p-8  end sentinel: a block header of size 0 marked allocated (the last 8 bytes, which
//!          are needed as padding anyway so that every payload stays 16-byte aligned)
//! ```
//! Every block is followed by another block header or the sentinel, so the hot paths never
//! need the page's end. Per-page overhead: `32p + 48` bytes; usable block bytes:
//! [`region_bytes`]`(p) = 4064p − 48` (4016 for one page, so the largest single-page payload
//! is 4008 bytes). A free block's payload holds its free-list links and its VM page's base
//! (24 bytes, the minimum payload).
//!
//! # Limits
//! At most [`MAX_FAMILIES`] (64) families; a block is at most 2 GiB.

use core::ptr::NonNull;

use crate::registry::PageRegistry;
use crate::{at, map_dirty, unmap, HeapError, Hex, NameBuf, PageSource, PAGE_SIZE};

mod alloc;
mod audit;
mod cache;
mod classes;
mod family;
mod free;
mod layout;
mod report;

pub use audit::PfAudit;
use classes::*;
use family::Family;
pub use family::{FamilyId, FamilyInfo, FamilyRef};
use layout::*;
pub use layout::{block_bytes_for, page_overhead, region_bytes};

/// Maximum number of page families (fixed array inside [`PageFamilies`]).
pub const MAX_FAMILIES: usize = 64;
/// Alignment of every payload returned by [`PageFamilies`], in bytes.
pub const ALIGN: usize = 16;
/// Bytes of block header in front of every payload.
pub const BLOCK_HEADER: usize = 8;
/// Smallest block (header + payload) in bytes; the smallest payload is 24 bytes.
pub const MIN_BLOCK: usize = 32;
/// Largest block total (header + payload) in bytes (2 GiB − 16).
pub const MAX_BLOCK: usize = (1 << 31) - 16;
/// Largest payload one allocation can get, in bytes.
pub const MAX_BLOCK_PAYLOAD: usize = MAX_BLOCK - BLOCK_HEADER;
/// Blocks of the top size class checked for a fit before a new VM page is mapped.
pub const SCAN_LIMIT: usize = 16;

/// The page-family heap (seed 001). See the module docs.
///
/// Construct with [`PageFamilies::new`] / [`PageFamilies::mm_init`] (a `const fn`, so it can
/// live in a `static` behind a lock). All methods take `&mut self`; the heap is not
/// thread-safe by itself.
pub struct PageFamilies<S: PageSource> {
    source: S,
    registry: PageRegistry,
    count: usize,
    data_pages: usize,
    cache_limit: usize,
    quick_max: usize,
    families: [Family; MAX_FAMILIES],
}

impl<S: PageSource> PageFamilies<S> {
    /// An empty heap on `source`; maps nothing yet.
    pub const fn new(source: S) -> Self {
        PageFamilies {
            source,
            registry: PageRegistry::new(),
            count: 0,
            data_pages: 0,
            cache_limit: 0,
            quick_max: 0,
            families: [Family::EMPTY; MAX_FAMILIES],
        }
    }

    /// The seed's `mm_init`: same as [`PageFamilies::new`] (the page size is fixed at
    /// [`PAGE_SIZE`]).
    pub const fn mm_init(source: S) -> Self {
        Self::new(source)
    }

    /// The page source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The page source, mutably (e.g. to change a test source's limit).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Pages currently mapped from the source: VM pages plus registry nodes.
    pub fn pages_in_use(&self) -> usize {
        self.data_pages + self.registry.node_pages()
    }

    /// Pages holding VM pages (excluding the page registry).
    pub fn data_pages(&self) -> usize {
        self.data_pages
    }

    /// Pages holding the page registry.
    pub fn metadata_pages(&self) -> usize {
        self.registry.node_pages()
    }
}

impl<S: PageSource> Drop for PageFamilies<S> {
    /// Unmap every VM page and the registry (outstanding blocks become invalid).
    fn drop(&mut self) {
        for fid in 0..self.count {
            let mut page = self.families[fid].first_page;
            while page != 0 {
                // SAFETY: `page` is a live VM page; read its header before unmapping it.
                let (next, p) = unsafe { (rdw(page + VP_NEXT), rd32(page + VP_PAGES) as usize) };
                unmap(&mut self.source, page, p);
                page = next;
            }
        }
        self.registry.clear(&mut self.source);
    }
}

/// Register a page family for a struct type, like the seed's `MM_REG_STRUCT(struct_name)`:
/// `mm_reg_struct!(heap, emp_t)` registers `"emp_t"` with `size_of::<emp_t>()` and returns
/// `Result<FamilyId, HeapError>`.
#[macro_export]
macro_rules! mm_reg_struct {
    ($pf:expr, $t:ty) => {
        $pf.mm_instantiate_new_page_family(::core::stringify!($t), ::core::mem::size_of::<$t>())
    };
}

/// The seed's `XCALLOC(units, struct_name)`: `xcalloc!(heap, 2, emp_t)` allocates zeroed
/// memory for 2 `emp_t`s from the family named `"emp_t"`, as `Result<NonNull<emp_t>, _>`.
#[macro_export]
macro_rules! xcalloc {
    ($pf:expr, $units:expr, $t:ty) => {
        $pf.xcalloc(::core::stringify!($t), $units)
            .map(|p| p.cast::<$t>())
    };
}

/// The seed's `XFREE(ptr)`: `xfree!(heap, p)` for any `NonNull<T>` from [`xcalloc!`].
#[macro_export]
macro_rules! xfree {
    ($pf:expr, $ptr:expr) => {
        $pf.xfree(::core::ptr::NonNull::cast::<u8>($ptr))
    };
}
