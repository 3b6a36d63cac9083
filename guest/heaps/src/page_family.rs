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

use core::fmt::{self, Write};
use core::ptr::NonNull;

use crate::registry::PageRegistry;
use crate::{at, map_dirty, unmap, HeapError, Hex, NameBuf, PageSource, PAGE_SIZE};

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

const NCLASS: usize = 64;
const PAGE_HDR: usize = 32;
const PAGE_MAGIC: u32 = 0x5046_4d56; // "VMFP"
const FREE: u32 = 1;
const BMAGIC: u32 = 0b1010;
const PMAGIC: u32 = 0b0101;
/// Low nibble of a block held by the quick cache (not FREE, a different magic).
const QMAGIC: u32 = 0b1100;
const LOW: u32 = 0xf;

/// Does a block header's size word carry valid magic bits (free, allocated or cached)?
#[inline(always)]
fn hdr_ok(sw: u32) -> bool {
    let l = sw & LOW;
    l & !FREE == BMAGIC || l == QMAGIC
}

/// Offset of the first block header in a VM page of `p` pages.
#[inline(always)]
const fn first_off(p: usize) -> usize {
    PAGE_HDR + 32 * p + BLOCK_HEADER
}

/// Bytes available for blocks (headers included) in a VM page of `p` pages: `4064p − 48`.
#[inline(always)]
pub const fn region_bytes(p: usize) -> usize {
    p * PAGE_SIZE - BLOCK_HEADER - first_off(p)
}

/// Per-page metadata overhead of a VM page of `p` pages, in bytes: `32p + 48`.
#[inline(always)]
pub const fn page_overhead(p: usize) -> usize {
    p * PAGE_SIZE - region_bytes(p)
}

/// Number of pages of a VM page whose region can hold a block of `total` bytes.
#[inline]
fn pages_for(total: usize) -> usize {
    if total <= region_bytes(1) {
        1
    } else {
        (total + 48).div_ceil(PAGE_SIZE - 32)
    }
}

/// Bytes a one-unit block of a family of `struct_size`-byte structs occupies (8-byte header +
/// payload rounded so the total is a multiple of 16, at least 32); `None` above [`MAX_BLOCK`].
/// Sizes ≡ 8 (mod 16) waste nothing: 24 → 32, 40 → 48, 56 → 64, 120 → 128.
pub const fn block_bytes_for(struct_size: usize) -> Option<usize> {
    match struct_size.checked_add(BLOCK_HEADER + ALIGN - 1) {
        Some(t) => {
            let t = t & !(ALIGN - 1);
            let t = if t < MIN_BLOCK { MIN_BLOCK } else { t };
            if t > MAX_BLOCK {
                None
            } else {
                Some(t)
            }
        }
        None => None,
    }
}

/// Block total (header + payload, multiple of 16, ≥ 32) for a payload of `size` bytes.
#[inline(always)]
fn block_total(size: usize) -> Option<usize> {
    block_bytes_for(size)
}

/// Size class of a free block of `total` bytes (see module docs).
#[inline(always)]
fn fclass(total: usize) -> usize {
    let g = total >> 4;
    if g < 16 {
        g
    } else {
        let fl = (usize::BITS - 1 - g.leading_zeros()) as usize;
        let c = 16 + ((fl - 4) << 2) + ((g >> (fl - 2)) & 3);
        if c < NCLASS {
            c
        } else {
            NCLASS - 1
        }
    }
}

// ---- raw in-band accessors -------------------------------------------------------------------

/// # Safety
/// `a` must be a 4-aligned address inside a live VM page of this heap.
#[inline(always)]
unsafe fn rd32(a: usize) -> u32 {
    // SAFETY: per the contract.
    unsafe { *at::<u32>(a) }
}
/// # Safety
/// As [`rd32`].
#[inline(always)]
unsafe fn wr32(a: usize, v: u32) {
    // SAFETY: per the contract.
    unsafe { *at::<u32>(a) = v }
}
/// # Safety
/// `a` must be an 8-aligned address inside a live VM page of this heap.
#[inline(always)]
unsafe fn rdw(a: usize) -> usize {
    // SAFETY: per the contract.
    unsafe { *at::<usize>(a) }
}
/// # Safety
/// As [`rdw`].
#[inline(always)]
unsafe fn wrw(a: usize, v: usize) {
    // SAFETY: per the contract.
    unsafe { *at::<usize>(a) = v }
}

// VmPage header fields.
const VP_MAGIC: usize = 0;
const VP_FAMILY: usize = 4;
const VP_PAGES: usize = 8;
const VP_NEXT: usize = 16;
const VP_PREV: usize = 24;
// Free block payload fields (offsets from the block header).
const FB_NEXT: usize = 8;
const FB_PREV: usize = 16;
const FB_PAGE: usize = 24;

/// Handle of a registered page family (index into the family table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyId(u16);

impl FamilyId {
    /// The family's index (0-based, in registration order).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A family given by id or by name (for [`PageFamilies::xcalloc`]).
#[derive(Debug, Clone, Copy)]
pub enum FamilyRef<'a> {
    /// By handle (O(1)).
    Id(FamilyId),
    /// By registered name (O(number of families)).
    Name(&'a str),
}

impl From<FamilyId> for FamilyRef<'_> {
    fn from(id: FamilyId) -> Self {
        FamilyRef::Id(id)
    }
}

impl<'a> From<&'a str> for FamilyRef<'a> {
    fn from(name: &'a str) -> Self {
        FamilyRef::Name(name)
    }
}

/// Counters of one family (all O(1) to read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyInfo {
    /// Registered name.
    pub name: &'static str,
    /// Registered struct size in bytes.
    pub struct_size: usize,
    /// Block total (header + payload) of a one-unit allocation, in bytes.
    pub unit_block: usize,
    /// VM pages owned.
    pub vm_pages: usize,
    /// 4 KiB pages owned (a multi-page VM page counts all its pages).
    pub pages: usize,
    /// Blocks (TBC).
    pub blocks: usize,
    /// Free blocks (FBC).
    pub free_blocks: usize,
    /// Bytes in allocated blocks, headers included (the seed's AppMemUsage).
    pub alloc_bytes: usize,
    /// Bytes in free blocks, headers included.
    pub free_bytes: usize,
    /// Completely free VM pages kept by the empty-page cache.
    pub empty_pages: usize,
    /// Freed one-unit blocks held unmerged by the quick cache
    /// ([`PageFamilies::set_quick_cache`]); not counted in `free_blocks` / `alloc_bytes`.
    pub quick_blocks: usize,
}

impl FamilyInfo {
    /// Occupied blocks (OBC): live allocations.
    pub fn allocated_blocks(&self) -> usize {
        self.blocks - self.free_blocks - self.quick_blocks
    }
}

/// Result of [`PageFamilies::audit`]: totals over all families, recomputed by walking every
/// page and block. `data_pages * 4096 == overhead_bytes + alloc_bytes + free_bytes` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PfAudit {
    /// Registered families.
    pub families: usize,
    /// VM pages.
    pub vm_pages: usize,
    /// 4 KiB pages holding VM pages.
    pub data_pages: usize,
    /// 4 KiB pages of the page registry.
    pub registry_pages: usize,
    /// Blocks.
    pub blocks: usize,
    /// Free blocks.
    pub free_blocks: usize,
    /// Bytes in allocated blocks (headers included).
    pub alloc_bytes: usize,
    /// Bytes in free blocks (headers included).
    pub free_bytes: usize,
    /// Page headers, bitmaps and padding, in bytes.
    pub overhead_bytes: usize,
    /// Blocks held by the quick cache.
    pub quick_blocks: usize,
    /// Bytes in blocks held by the quick cache (headers included).
    pub quick_bytes: usize,
}

struct Family {
    name: &'static str,
    struct_size: usize,
    unit_total: usize,
    /// Bit `c` set iff `heads[c] != 0`.
    bitmap: u64,
    /// Header address of the first free block of each class (0 = empty).
    heads: [usize; NCLASS],
    /// Base of the first VM page (newest first, as the seed inserts), 0 = none.
    first_page: usize,
    vm_pages: usize,
    os_pages: usize,
    empty_pages: usize,
    /// Quick cache: header of the most recently cached block (0 = none) and the count.
    quick_head: usize,
    quick_len: usize,
    blocks: usize,
    free_blocks: usize,
    alloc_bytes: usize,
    free_bytes: usize,
}

impl Family {
    const EMPTY: Family = Family {
        name: "",
        struct_size: 0,
        unit_total: 0,
        bitmap: 0,
        heads: [0; NCLASS],
        first_page: 0,
        vm_pages: 0,
        os_pages: 0,
        empty_pages: 0,
        quick_head: 0,
        quick_len: 0,
        blocks: 0,
        free_blocks: 0,
        alloc_bytes: 0,
        free_bytes: 0,
    };

    /// Push the free block at `h` on the list of class `c`.
    ///
    /// # Safety
    /// `h` must be a free block of class `c` of the live VM page `page` of this family, not
    /// on any list.
    #[inline(always)]
    unsafe fn push_c(&mut self, h: usize, c: usize, page: usize) {
        let c = c & (NCLASS - 1);
        let head = self.heads[c];
        // SAFETY: `h` is a free block with a ≥ 24-byte payload; `head` a free block too.
        unsafe {
            wrw(h + FB_NEXT, head);
            wrw(h + FB_PREV, 0);
            wrw(h + FB_PAGE, page);
            if head != 0 {
                wrw(head + FB_PREV, h);
            }
        }
        self.heads[c] = h;
        self.bitmap |= 1 << c;
    }

    /// Push the free block at `h` of `total` bytes on its class list.
    ///
    /// # Safety
    /// As [`Family::push_c`].
    #[inline(always)]
    unsafe fn push(&mut self, h: usize, total: usize, page: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.push_c(h, fclass(total), page) }
    }

    /// Take the free block at `h` off the list of class `c`.
    ///
    /// # Safety
    /// `h` must be on the list of class `c` of this family.
    #[inline(always)]
    unsafe fn unlink_c(&mut self, h: usize, c: usize) {
        let c = c & (NCLASS - 1);
        // SAFETY: `h` and its list neighbours are free blocks of this family.
        unsafe {
            let next = rdw(h + FB_NEXT);
            let prev = rdw(h + FB_PREV);
            if prev != 0 {
                wrw(prev + FB_NEXT, next);
            } else {
                self.heads[c] = next;
                if next == 0 {
                    self.bitmap &= !(1 << c);
                }
            }
            if next != 0 {
                wrw(next + FB_PREV, prev);
            }
        }
    }

    /// Take the free block at `h` of `total` bytes off its class list.
    ///
    /// # Safety
    /// As [`Family::unlink_c`] with `c = fclass(total)`.
    #[inline(always)]
    unsafe fn unlink(&mut self, h: usize, total: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.unlink_c(h, fclass(total)) }
    }

    /// Put the free block `new` in the list position of `old` (same class `c`), O(1) without
    /// touching the bitmap. `new`'s link words must not overlap `old`'s.
    ///
    /// # Safety
    /// `old` must be on the list of class `c`; `new` a free block of class `c` of VM page
    /// `page`, not on any list.
    #[inline(always)]
    unsafe fn replace_c(&mut self, old: usize, new: usize, c: usize, page: usize) {
        // SAFETY: list members are free blocks of this family; `new` is one too.
        unsafe {
            let next = rdw(old + FB_NEXT);
            let prev = rdw(old + FB_PREV);
            wrw(new + FB_NEXT, next);
            wrw(new + FB_PREV, prev);
            wrw(new + FB_PAGE, page);
            if prev != 0 {
                wrw(prev + FB_NEXT, new);
            } else {
                self.heads[c & (NCLASS - 1)] = new;
            }
            if next != 0 {
                wrw(next + FB_PREV, new);
            }
        }
    }

    /// The largest free block that can hold `total` bytes, or 0 (see module docs).
    #[inline(always)]
    fn find(&self, total: usize) -> usize {
        if self.bitmap == 0 {
            return 0;
        }
        let top = (63 - self.bitmap.leading_zeros() as usize) & (NCLASS - 1);
        let rc = fclass(total);
        if top > rc || (top == rc && rc < 16) {
            return self.heads[top];
        }
        if top < rc {
            return 0;
        }
        let mut h = self.heads[top];
        let mut n = 0;
        while h != 0 && n < SCAN_LIMIT {
            // SAFETY: list members are free blocks of live pages of this family.
            let t = unsafe { rd32(h) & !LOW } as usize;
            if t >= total {
                return h;
            }
            // SAFETY: as above.
            h = unsafe { rdw(h + FB_NEXT) };
            n += 1;
        }
        0
    }

    fn info(&self) -> FamilyInfo {
        FamilyInfo {
            name: self.name,
            struct_size: self.struct_size,
            unit_block: self.unit_total,
            vm_pages: self.vm_pages,
            pages: self.os_pages,
            blocks: self.blocks,
            free_blocks: self.free_blocks,
            alloc_bytes: self.alloc_bytes,
            free_bytes: self.free_bytes,
            empty_pages: self.empty_pages,
            quick_blocks: self.quick_len,
        }
    }
}

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

    /// Keep up to `pages` completely free one-page VM pages **per family** instead of
    /// unmapping them at once (default 0: the seed's behaviour). Saves a map/unmap round trip
    /// when a family oscillates around a page boundary. Lowering it does not unmap; call
    /// [`PageFamilies::trim`].
    pub fn set_empty_page_cache(&mut self, pages: usize) {
        self.cache_limit = pages;
    }

    /// Opt-in **quick cache** (deferred coalescing, like dlmalloc's fastbins): up to `blocks`
    /// freed one-unit blocks per family are kept unmerged on a LIFO list and handed out again
    /// first by one-unit `xmalloc`/`xcalloc`. Both operations then skip splitting and merging
    /// (the fast path for a global allocator's small size classes). Default 0 (off: the seed's
    /// behaviour). Cached blocks are free for validation (freeing one again is a
    /// [`HeapError::DoubleFree`]) and in the reports (`F R E E D [quick]`, counted in FBC), but
    /// they are not merged and keep their page mapped until [`PageFamilies::flush_quick`] or
    /// [`PageFamilies::trim`]. Lowering the depth flushes.
    pub fn set_quick_cache(&mut self, blocks: usize) {
        if blocks < self.quick_max {
            self.flush_quick();
        }
        self.quick_max = blocks;
    }

    /// Free every block held by the quick cache for real (merging, and unmapping pages that
    /// become empty).
    pub fn flush_quick(&mut self) {
        for fid in 0..self.count {
            while self.families[fid].quick_head != 0 {
                let fam = &mut self.families[fid];
                let h = fam.quick_head;
                // SAFETY: quick-list members are cached blocks of live VM pages of this
                // family: turn `h` back into an allocated block (header magic, bitmap bit,
                // counters), then free it through the normal path.
                unsafe {
                    fam.quick_head = rdw(h + FB_NEXT);
                    fam.quick_len -= 1;
                    let page = rdw(h + FB_PREV);
                    let t = (rd32(h) & !LOW) as usize;
                    wr32(h, t as u32 | BMAGIC);
                    fam.alloc_bytes += t;
                    let slot = (h + BLOCK_HEADER - page) >> 4;
                    let w = page + PAGE_HDR + (slot >> 6) * 8;
                    wrw(w, rdw(w) | (1 << (slot & 63)));
                    let r = self.free_addr(h + BLOCK_HEADER, 0);
                    debug_assert!(r.is_ok());
                }
            }
        }
    }

    /// Flush the quick cache, then unmap every completely free VM page (those kept by the
    /// empty-page cache). Returns the number of 4 KiB pages given back.
    pub fn trim(&mut self) -> usize {
        self.flush_quick();
        let mut freed = 0;
        for fid in 0..self.count {
            let mut page = self.families[fid].first_page;
            while page != 0 {
                // SAFETY: `page` is a live VM page of family `fid`.
                let (next, p) = unsafe { (rdw(page + VP_NEXT), rd32(page + VP_PAGES) as usize) };
                let h = page + first_off(p);
                // SAFETY: the first block of a live page.
                let sw = unsafe { rd32(h) };
                if sw & FREE != 0 && (sw & !LOW) as usize == region_bytes(p) {
                    let fam = &mut self.families[fid];
                    // SAFETY: a free block is on its class list.
                    unsafe { fam.unlink(h, region_bytes(p)) };
                    fam.empty_pages -= 1;
                    self.release_page(fid, page, p);
                    freed += p;
                }
                page = next;
            }
        }
        freed
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

    /// Number of registered families.
    pub fn family_count(&self) -> usize {
        self.count
    }

    /// Counters of a family.
    pub fn family_info(&self, id: FamilyId) -> Result<FamilyInfo, HeapError> {
        let fid = self.check_id(id)?;
        Ok(self.families[fid].info())
    }

    /// The seed's `mm_instantiate_new_page_family`: register a family for structs of
    /// `struct_size` bytes. Errors: duplicate name, size 0 or above [`MAX_BLOCK_PAYLOAD`],
    /// table full ([`MAX_FAMILIES`]).
    pub fn mm_instantiate_new_page_family(
        &mut self,
        name: &'static str,
        struct_size: usize,
    ) -> Result<FamilyId, HeapError> {
        if self.lookup_page_family_by_name(name).is_some() {
            return Err(HeapError::FamilyExists { name });
        }
        let unit_total = match block_total(struct_size) {
            Some(t) if struct_size > 0 => t,
            _ => return Err(HeapError::InvalidStructSize { size: struct_size }),
        };
        if self.count == MAX_FAMILIES {
            return Err(HeapError::TooManyFamilies { max: MAX_FAMILIES });
        }
        let fam = &mut self.families[self.count];
        *fam = Family::EMPTY;
        fam.name = name;
        fam.struct_size = struct_size;
        fam.unit_total = unit_total;
        self.count += 1;
        Ok(FamilyId((self.count - 1) as u16))
    }

    /// The seed's `lookup_page_family_by_name` (exact match).
    pub fn lookup_page_family_by_name(&self, name: &str) -> Option<FamilyId> {
        self.families[..self.count]
            .iter()
            .position(|f| f.name == name)
            .map(|i| FamilyId(i as u16))
    }

    fn check_id(&self, id: FamilyId) -> Result<usize, HeapError> {
        let i = id.index();
        if i < self.count {
            Ok(i)
        } else {
            Err(HeapError::UnknownFamily { id: i })
        }
    }

    fn resolve(&self, f: FamilyRef<'_>) -> Result<usize, HeapError> {
        match f {
            FamilyRef::Id(id) => self.check_id(id),
            FamilyRef::Name(n) => match self.lookup_page_family_by_name(n) {
                Some(id) => Ok(id.index()),
                None => Err(HeapError::UnknownFamilyName {
                    name: NameBuf::new(n),
                }),
            },
        }
    }

    /// Block total for `units` structs of family `fid`.
    #[inline(always)]
    fn total_for(&self, fid: usize, units: usize) -> Result<usize, HeapError> {
        let fam = &self.families[fid];
        if units <= 1 {
            return Ok(fam.unit_total);
        }
        units
            .checked_mul(fam.struct_size)
            .and_then(block_total)
            .ok_or(HeapError::TooLarge {
                size: units.saturating_mul(fam.struct_size),
            })
    }

    /// The seed's `xcalloc`: zeroed memory for `units` contiguous structs of the family
    /// (`units == 0` is served like 1). The payload is 16-byte aligned and at least
    /// `units * struct_size` bytes long ([`PageFamilies::usable_size`] tells the exact size).
    pub fn xcalloc<'a>(
        &mut self,
        family: impl Into<FamilyRef<'a>>,
        units: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        let fid = self.resolve(family.into())?;
        let total = self.total_for(fid, units)?;
        let p = match self.quick_pop(fid, total) {
            0 => self.alloc_total(fid, total)?,
            p => p,
        };
        // SAFETY: the payload of the block just allocated is `total - 8` writable bytes.
        unsafe { core::ptr::write_bytes(at::<u8>(p), 0, total - BLOCK_HEADER) };
        // SAFETY: payload addresses are never 0.
        Ok(unsafe { NonNull::new_unchecked(at::<u8>(p)) })
    }

    /// Like [`PageFamilies::xcalloc`] but the memory is **not** zeroed (the hot path for a
    /// global allocator: one family per size class, `units == 1`).
    #[inline]
    pub fn xmalloc(&mut self, family: FamilyId, units: usize) -> Result<NonNull<u8>, HeapError> {
        let fid = self.check_id(family)?;
        let total = self.total_for(fid, units)?;
        let p = match self.quick_pop(fid, total) {
            0 => self.alloc_total(fid, total)?,
            p => p,
        };
        // SAFETY: payload addresses are never 0.
        Ok(unsafe { NonNull::new_unchecked(at::<u8>(p)) })
    }

    /// Take a block of `total` bytes from family `fid`'s quick cache: its payload address,
    /// or 0 if the cache is empty or holds another size.
    #[inline(always)]
    fn quick_pop(&mut self, fid: usize, total: usize) -> usize {
        let fam = &mut self.families[fid];
        let h = fam.quick_head;
        if h == 0 || total != fam.unit_total {
            return 0;
        }
        // SAFETY: `h` is a cached block of `unit_total` bytes in the live VM page stored in
        // its payload; it becomes an allocated block again.
        unsafe {
            fam.quick_head = rdw(h + FB_NEXT);
            let page = rdw(h + FB_PREV);
            fam.quick_len -= 1;
            wr32(h, total as u32 | BMAGIC);
            let slot = (h + BLOCK_HEADER - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            wrw(w, rdw(w) | (1 << (slot & 63)));
        }
        fam.alloc_bytes += total;
        h + BLOCK_HEADER
    }

    /// Allocate a block of `total` bytes in family `fid`; returns the payload address.
    #[inline(always)]
    fn alloc_total(&mut self, fid: usize, total: usize) -> Result<usize, HeapError> {
        let mut h = self.families[fid].find(total);
        if h == 0 {
            h = self.new_vm_page(fid, total)?;
        }
        let fam = &mut self.families[fid];
        // SAFETY: `h` is a free block on its class list in a live VM page of family `fid`
        // holding at least `total` bytes; every block is followed by a block header or the
        // page's end sentinel, so all addresses touched lie inside that VM page.
        unsafe {
            let bt = (rd32(h) & !LOW) as usize;
            let page = rdw(h + FB_PAGE);
            let bc = fclass(bt);
            if fam.empty_pages != 0 && rd32(h + 4) & !LOW == 0 && rd32(h + bt) & !LOW == 0 {
                // It was a whole empty page (first block, followed by the end sentinel).
                fam.empty_pages -= 1;
            }
            let rem = bt - total;
            let taken = if rem >= MIN_BLOCK {
                let r = h + total;
                let rc = fclass(rem);
                if rc == bc {
                    fam.replace_c(h, r, bc, page);
                } else {
                    fam.unlink_c(h, bc);
                    fam.push_c(r, rc, page);
                }
                wr32(r, rem as u32 | FREE | BMAGIC);
                wr32(r + 4, total as u32 | PMAGIC);
                wr32(r + rem + 4, rem as u32 | PMAGIC);
                fam.blocks += 1;
                total
            } else {
                fam.unlink_c(h, bc);
                fam.free_blocks -= 1;
                bt
            };
            wr32(h, taken as u32 | BMAGIC);
            let slot = (h + BLOCK_HEADER - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            wrw(w, rdw(w) | (1 << (slot & 63)));
            fam.alloc_bytes += taken;
            fam.free_bytes -= taken;
        }
        Ok(h + BLOCK_HEADER)
    }

    /// Map a VM page big enough for a `total`-byte block, put its single free block on the
    /// family's lists and return that block's header address.
    #[cold]
    fn new_vm_page(&mut self, fid: usize, total: usize) -> Result<usize, HeapError> {
        let p = pages_for(total);
        // Everything the heap reads in the page is written below (header and bitmap zeroed
        // here, block tags), so the source need not zero it.
        let base = map_dirty(&mut self.source, p).ok_or(HeapError::OutOfMemory { pages: p })?;
        if let Err(e) = self.registry.insert_range(&mut self.source, base, p, base) {
            unmap(&mut self.source, base, p);
            return Err(e);
        }
        let fam = &mut self.families[fid];
        let h = base + first_off(p);
        let rt = region_bytes(p);
        // SAFETY: `base` is a fresh mapping of `p` pages owned by this heap (contents
        // unspecified; the header and bitmap are zeroed first). `fam.first_page` (if any) is a
        // live VM page.
        unsafe {
            core::ptr::write_bytes(at::<u8>(base), 0, first_off(p) - BLOCK_HEADER);
            wr32(base + VP_MAGIC, PAGE_MAGIC);
            *at::<u16>(base + VP_FAMILY) = fid as u16;
            wr32(base + VP_PAGES, p as u32);
            wrw(base + VP_NEXT, fam.first_page);
            wrw(base + VP_PREV, 0);
            if fam.first_page != 0 {
                wrw(fam.first_page + VP_PREV, base);
            }
            wr32(h, rt as u32 | FREE | BMAGIC);
            wr32(h + 4, PMAGIC);
            // End sentinel: an allocated block of size 0 in the last 8 bytes.
            wr32(h + rt, BMAGIC);
            wr32(h + rt + 4, rt as u32 | PMAGIC);
            fam.push(h, rt, base);
        }
        fam.first_page = base;
        fam.vm_pages += 1;
        fam.os_pages += p;
        fam.empty_pages += 1;
        fam.blocks += 1;
        fam.free_blocks += 1;
        fam.free_bytes += rt;
        self.data_pages += p;
        Ok(h)
    }

    /// Unlink an empty VM page (its single free block already off the lists) and unmap it.
    fn release_page(&mut self, fid: usize, page: usize, p: usize) {
        let fam = &mut self.families[fid];
        // SAFETY: `page` and its list neighbours are live VM pages of family `fid`.
        unsafe {
            let next = rdw(page + VP_NEXT);
            let prev = rdw(page + VP_PREV);
            if prev != 0 {
                wrw(prev + VP_NEXT, next);
            } else {
                fam.first_page = next;
            }
            if next != 0 {
                wrw(next + VP_PREV, prev);
            }
        }
        fam.vm_pages -= 1;
        fam.os_pages -= p;
        fam.blocks -= 1;
        fam.free_blocks -= 1;
        fam.free_bytes -= region_bytes(p);
        self.data_pages -= p;
        self.registry.remove_range(&mut self.source, page, p);
        unmap(&mut self.source, page, p);
    }

    /// Validate `addr` as the payload of a live block: returns `(page, pages, header)`.
    #[inline(always)]
    fn validate(&self, addr: usize) -> Result<(usize, usize, usize), HeapError> {
        if addr & (ALIGN - 1) != 0 {
            return Err(HeapError::InvalidPointer {
                addr,
                reason: "not 16-byte aligned, so not a block returned by this heap",
            });
        }
        let page = self.registry.get(addr);
        if page == 0 {
            return Err(HeapError::InvalidPointer {
                addr,
                reason: "not in a page owned by this heap",
            });
        }
        // SAFETY: `page` is a registered, live VM page; `addr` lies inside it, so the bitmap
        // word for its slot lies inside the page header.
        unsafe {
            if rd32(page + VP_MAGIC) != PAGE_MAGIC {
                return Err(HeapError::Corrupted {
                    addr: page,
                    reason: "VM page header magic overwritten",
                });
            }
            let p = rd32(page + VP_PAGES) as usize;
            let slot = (addr - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            if rdw(w) & (1 << (slot & 63)) == 0 {
                return Err(self.classify(page, p, addr));
            }
            let h = addr - BLOCK_HEADER;
            let sw = rd32(h);
            if sw & LOW != BMAGIC || rd32(h + 4) & LOW != PMAGIC {
                return Err(HeapError::Corrupted {
                    addr: h,
                    reason: "block header overwritten (buffer overflow?)",
                });
            }
            Ok((page, p, h))
        }
    }

    /// Does `ptr` lie in a VM page of this heap (any byte)? O(1), no block validation: for a
    /// global allocator deciding which heap a pointer belongs to.
    #[inline]
    pub fn contains(&self, ptr: *const u8) -> bool {
        self.registry.get(ptr.addr()) != 0
    }

    /// Payload size in bytes of the live block at `ptr` (≥ what was asked for).
    pub fn usable_size(&self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        let (_, _, h) = self.validate(ptr.as_ptr().addr())?;
        // SAFETY: validated live block header.
        Ok((unsafe { rd32(h) } & !LOW) as usize - BLOCK_HEADER)
    }

    /// The family a live block belongs to.
    pub fn family_of(&self, ptr: NonNull<u8>) -> Result<FamilyId, HeapError> {
        let (page, _, _) = self.validate(ptr.as_ptr().addr())?;
        // SAFETY: validated live VM page.
        Ok(FamilyId(unsafe { *at::<u16>(page + VP_FAMILY) }))
    }

    /// The seed's `xfree`: free a block returned by `xcalloc`/`xmalloc`, merge it with free
    /// neighbours and unmap its VM page if it became empty. Errors (heap unchanged):
    /// [`HeapError::DoubleFree`] if the address lies in free memory,
    /// [`HeapError::InvalidPointer`] if it is not the start of a live block of this heap,
    /// [`HeapError::Corrupted`] if in-band metadata around it fails its checks.
    pub fn xfree(&mut self, ptr: NonNull<u8>) -> Result<(), HeapError> {
        self.free_addr(ptr.as_ptr().addr(), self.quick_max)
    }

    /// [`PageFamilies::xfree`] of `addr`, using the quick cache only below `quick_max`.
    #[inline(always)]
    fn free_addr(&mut self, addr: usize, quick_max: usize) -> Result<(), HeapError> {
        let (page, p, h) = self.validate(addr)?;
        // SAFETY: `h` is a validated live block of the live VM page `page` (p pages). Its
        // neighbours are found from boundary tags; before anything is modified the tags are
        // checked to stay inside the page (the next header at most at the end sentinel) and
        // to agree with each other and carry the magic bits.
        unsafe {
            let total = (rd32(h) & !LOW) as usize;
            let prev_total = (rd32(h + 4) & !LOW) as usize;
            let fid = *at::<u16>(page + VP_FAMILY) as usize;
            let n = h + total;
            if fid >= self.count || total < MIN_BLOCK || n > page + p * PAGE_SIZE - BLOCK_HEADER {
                return Err(HeapError::Corrupted {
                    addr: h,
                    reason: "block header out of range",
                });
            }
            let fam = &mut self.families[fid];
            if total == fam.unit_total && fam.quick_len < quick_max {
                // Quick cache: no merging; the block keeps its place, marked cached.
                wr32(h, total as u32 | QMAGIC);
                wrw(h + FB_NEXT, fam.quick_head);
                wrw(h + FB_PREV, page);
                fam.quick_head = h;
                fam.quick_len += 1;
                fam.alloc_bytes -= total;
                let slot = (addr - page) >> 4;
                let w = page + PAGE_HDR + (slot >> 6) * 8;
                wrw(w, rdw(w) & !(1 << (slot & 63)));
                return Ok(());
            }
            let nsw = rd32(n);
            if !hdr_ok(nsw) || rd32(n + 4) != total as u32 | PMAGIC {
                return Err(HeapError::Corrupted {
                    addr: n,
                    reason: "next block header inconsistent",
                });
            }
            let mut prev_free = false;
            if prev_total != 0 {
                if prev_total > h - (page + first_off(p)) {
                    return Err(HeapError::Corrupted {
                        addr: h,
                        reason: "previous-size tag out of range",
                    });
                }
                let psw = rd32(h - prev_total);
                if psw & !LOW != prev_total as u32 || !hdr_ok(psw) {
                    return Err(HeapError::Corrupted {
                        addr: h - prev_total,
                        reason: "previous block header inconsistent",
                    });
                }
                prev_free = psw & FREE != 0;
            } else if h != page + first_off(p) {
                return Err(HeapError::Corrupted {
                    addr: h,
                    reason: "previous-size tag is 0 but block is not first",
                });
            }
            let nt = (nsw & !LOW) as usize;
            let next_free = nsw & FREE != 0;

            // All checks passed: mutate.
            let slot = (addr - page) >> 4;
            let w = page + PAGE_HDR + (slot >> 6) * 8;
            wrw(w, rdw(w) & !(1 << (slot & 63)));
            let pt = if prev_free { prev_total } else { 0 };
            let ntm = if next_free { nt } else { 0 };
            let start = h - pt;
            let size = pt + total + ntm;
            let c = fclass(size);
            // Empty page: the merged block is the first one and the end sentinel follows it.
            let first_block = if prev_free {
                rd32(start + 4) & !LOW == 0
            } else {
                prev_total == 0
            };
            let empty = first_block
                && if next_free {
                    rd32(n + nt) & !LOW == 0
                } else {
                    nt == 0
                };
            let fam = &mut self.families[fid];
            let keep = !empty || (p == 1 && fam.empty_pages < self.cache_limit);
            if prev_free {
                let pc = fclass(prev_total);
                if next_free {
                    fam.unlink_c(n, fclass(nt));
                }
                if !keep {
                    fam.unlink_c(start, pc);
                } else if pc != c {
                    fam.unlink_c(start, pc);
                    fam.push_c(start, c, page);
                }
            } else if next_free {
                let nc = fclass(nt);
                if !keep {
                    fam.unlink_c(n, nc);
                } else if nc == c {
                    fam.replace_c(n, h, nc, page);
                } else {
                    fam.unlink_c(n, nc);
                    fam.push_c(h, c, page);
                }
            } else if keep {
                fam.push_c(h, c, page);
            }
            wr32(start, size as u32 | FREE | BMAGIC);
            wr32(start + size + 4, size as u32 | PMAGIC);
            let merged = prev_free as usize + next_free as usize;
            fam.alloc_bytes -= total;
            fam.free_bytes += total;
            fam.blocks -= merged;
            fam.free_blocks = fam.free_blocks + 1 - merged;
            if !keep {
                self.release_page(fid, page, p);
            } else if empty {
                fam.empty_pages += 1;
            }
        }
        Ok(())
    }

    /// Why `addr` (in VM page `page` of `p` pages, allocation bit clear) is not freeable.
    /// Walks the page's blocks: only on the error path.
    #[cold]
    fn classify(&self, page: usize, p: usize, addr: usize) -> HeapError {
        let first = page + first_off(p);
        let end = page + p * PAGE_SIZE - BLOCK_HEADER;
        if addr < first {
            return HeapError::InvalidPointer {
                addr,
                reason: "points into a VM page header",
            };
        }
        let mut h = first;
        while h < end {
            // SAFETY: `h` stays inside the live VM page: it starts at the first block and
            // advances by checked sizes that keep it below `end`.
            let sw = unsafe { rd32(h) };
            let t = (sw & !LOW) as usize;
            if !hdr_ok(sw) || t < MIN_BLOCK || h + t > end {
                return HeapError::Corrupted {
                    addr: h,
                    reason: "block header overwritten (buffer overflow?)",
                };
            }
            if addr < h + t {
                return if addr < h + BLOCK_HEADER {
                    HeapError::InvalidPointer {
                        addr,
                        reason: "points into a block header",
                    }
                } else if sw & FREE != 0 || sw & LOW == QMAGIC {
                    HeapError::DoubleFree { addr }
                } else if addr == h + BLOCK_HEADER {
                    HeapError::Corrupted {
                        addr: page,
                        reason: "allocation bitmap lost a live block",
                    }
                } else {
                    HeapError::InvalidPointer {
                        addr,
                        reason: "interior pointer of an allocated block",
                    }
                };
            }
            h += t;
        }
        HeapError::InvalidPointer {
            addr,
            reason: "points into the padding at the end of a VM page",
        }
    }

    /// Walk every family, page and block and check all invariants (boundary tags, magic bits,
    /// allocation bitmap, free lists, full merging, counters, registry). O(heap size); for
    /// tests and the heap-stress scenario.
    pub fn audit(&self) -> Result<PfAudit, HeapError> {
        let corrupt = |addr, reason| Err(HeapError::Corrupted { addr, reason });
        let mut a = PfAudit {
            families: self.count,
            registry_pages: self.registry.node_pages(),
            ..PfAudit::default()
        };
        for (fid, fam) in self.families[..self.count].iter().enumerate() {
            let (mut blocks, mut free_blocks, mut ab, mut fb, mut vp, mut osp, mut empty) =
                (0, 0, 0, 0, 0, 0, 0);
            let mut quick = 0;
            let mut page = fam.first_page;
            let mut prev_page = 0;
            while page != 0 {
                if self.registry.get(page) != page {
                    return corrupt(page, "VM page not in the registry");
                }
                // SAFETY: registered pages are live VM pages; every address read below is
                // bounds-checked against [first, end) before use.
                unsafe {
                    if rd32(page + VP_MAGIC) != PAGE_MAGIC
                        || *at::<u16>(page + VP_FAMILY) as usize != fid
                        || rdw(page + VP_PREV) != prev_page
                    {
                        return corrupt(page, "VM page header");
                    }
                    let p = rd32(page + VP_PAGES) as usize;
                    for i in 0..p {
                        if self.registry.get(page + i * PAGE_SIZE) != page {
                            return corrupt(page, "VM page's pages not all registered");
                        }
                    }
                    vp += 1;
                    osp += p;
                    a.overhead_bytes += page_overhead(p);
                    let first = page + first_off(p);
                    let end = page + p * PAGE_SIZE - BLOCK_HEADER;
                    let mut h = first;
                    let mut prev_t = 0;
                    let mut prev_was_free = false;
                    let mut allocated_here = 0u32;
                    while h < end {
                        let sw = rd32(h);
                        let t = (sw & !LOW) as usize;
                        if !hdr_ok(sw) || t < MIN_BLOCK || h + t > end {
                            return corrupt(h, "block header");
                        }
                        if rd32(h + 4) != prev_t as u32 | PMAGIC {
                            return corrupt(h, "previous-size tag");
                        }
                        let slot = (h + BLOCK_HEADER - page) >> 4;
                        let bit = rdw(page + PAGE_HDR + (slot >> 6) * 8) & (1 << (slot & 63));
                        blocks += 1;
                        if sw & FREE != 0 {
                            if prev_was_free {
                                return corrupt(h, "two adjacent free blocks");
                            }
                            if bit != 0 || rdw(h + FB_PAGE) != page {
                                return corrupt(h, "free block bitmap bit / page link");
                            }
                            free_blocks += 1;
                            fb += t;
                            if t == region_bytes(p) {
                                empty += 1;
                            }
                            prev_was_free = true;
                        } else if sw & LOW == QMAGIC {
                            if bit != 0 || t != fam.unit_total || rdw(h + FB_PREV) != page {
                                return corrupt(h, "quick-cached block");
                            }
                            quick += 1;
                            prev_was_free = false;
                        } else {
                            if bit == 0 {
                                return corrupt(h, "allocated block missing from bitmap");
                            }
                            allocated_here += 1;
                            ab += t;
                            prev_was_free = false;
                        }
                        prev_t = t;
                        h += t;
                    }
                    if h != end || rd32(end) != BMAGIC || rd32(end + 4) != prev_t as u32 | PMAGIC {
                        return corrupt(h, "blocks do not tile the page / end sentinel");
                    }
                    let mut bits = 0;
                    for wi in 0..p * 4 {
                        bits += rdw(page + PAGE_HDR + wi * 8).count_ones();
                    }
                    if bits != allocated_here {
                        return corrupt(page, "stray bits in the allocation bitmap");
                    }
                    prev_page = page;
                    page = rdw(page + VP_NEXT);
                }
            }
            // Free lists: every member is free, in the right class, and the counts match.
            let mut listed = 0;
            for c in 0..NCLASS {
                let mut h = fam.heads[c];
                if (h != 0) != (fam.bitmap & (1 << c) != 0) {
                    return corrupt(c, "class bitmap");
                }
                let mut prev = 0;
                while h != 0 {
                    if self.registry.get(h) == 0 {
                        return corrupt(h, "free-list entry outside the heap");
                    }
                    // SAFETY: `h` lies in a registered (live) page.
                    unsafe {
                        let sw = rd32(h);
                        if sw & FREE == 0
                            || fclass((sw & !LOW) as usize) != c
                            || rdw(h + FB_PREV) != prev
                        {
                            return corrupt(h, "free-list entry");
                        }
                        prev = h;
                        h = rdw(h + FB_NEXT);
                    }
                    listed += 1;
                    if listed > free_blocks {
                        return corrupt(prev, "free list longer than the free blocks");
                    }
                }
            }
            // Quick list: every member is a cached block; the count matches.
            let mut q = fam.quick_head;
            let mut qn = 0;
            while q != 0 {
                if self.registry.get(q) == 0 || qn >= quick {
                    return corrupt(q, "quick list");
                }
                // SAFETY: `q` lies in a registered (live) page.
                unsafe {
                    if rd32(q) & LOW != QMAGIC {
                        return corrupt(q, "quick list entry");
                    }
                    q = rdw(q + FB_NEXT);
                }
                qn += 1;
            }
            if qn != quick || quick != fam.quick_len {
                return corrupt(fid, "quick list length");
            }
            a.quick_blocks += quick;
            a.quick_bytes += quick * fam.unit_total;
            if listed != free_blocks
                || blocks != fam.blocks
                || free_blocks != fam.free_blocks
                || ab != fam.alloc_bytes
                || fb != fam.free_bytes
                || vp != fam.vm_pages
                || osp != fam.os_pages
                || empty != fam.empty_pages
            {
                return corrupt(fid, "family counters");
            }
            a.vm_pages += vp;
            a.data_pages += osp;
            a.blocks += blocks;
            a.free_blocks += free_blocks;
            a.alloc_bytes += ab;
            a.free_bytes += fb;
        }
        if a.data_pages != self.data_pages || self.registry.entries() != self.data_pages {
            return corrupt(0, "page counts");
        }
        if a.data_pages * PAGE_SIZE
            != a.overhead_bytes + a.alloc_bytes + a.free_bytes + a.quick_bytes
        {
            return corrupt(0, "bytes not accounted");
        }
        Ok(a)
    }

    // ---- reports (seed layout) ---------------------------------------------------------------

    /// The seed's `mm_print_registered_page_families`: one `Page Family : NAME, Size = N`
    /// line per family (size in bytes).
    pub fn mm_print_registered_page_families(&self, w: &mut dyn Write) -> fmt::Result {
        for f in &self.families[..self.count] {
            writeln!(w, "Page Family : {}, Size = {}", f.name, f.struct_size)?;
        }
        Ok(())
    }

    /// The seed's `mm_print_memory_usage`: for each family (or only `name`), its struct size,
    /// its VM pages with every block (ALLOCATED / F R E E D, `block_size` = payload bytes,
    /// `offset` = bytes from the VM page start, prev/next blocks), then the family's app memory
    /// in use, VM pages in use and % of memory in use by the application; then the totals.
    pub fn mm_print_memory_usage(&self, w: &mut dyn Write, name: Option<&str>) -> fmt::Result {
        writeln!(w, "\nPage Size = {PAGE_SIZE} Bytes")?;
        let mut total_pages = 0;
        for fam in &self.families[..self.count] {
            if name.is_some_and(|n| n != fam.name) {
                continue;
            }
            writeln!(
                w,
                "vm_page_family : {}, struct size = {}",
                fam.name, fam.struct_size
            )?;
            let mut page = fam.first_page;
            let mut index = 0;
            while page != 0 {
                // SAFETY: `page` is a live VM page of this family; blocks are walked inside it.
                let (p, next, prev) = unsafe {
                    (
                        rd32(page + VP_PAGES) as usize,
                        rdw(page + VP_NEXT),
                        rdw(page + VP_PREV),
                    )
                };
                writeln!(
                    w,
                    "\tPage Index : {index} (base = {}, pages = {p})",
                    Hex(page)
                )?;
                writeln!(w, "\t\t next = {}, prev = {}", Hex(next), Hex(prev))?;
                writeln!(w, "\t\t page family = {}", fam.name)?;
                let end = page + p * PAGE_SIZE - BLOCK_HEADER;
                let mut h = page + first_off(p);
                let mut j = 0;
                let mut prev_t = 0;
                while h < end {
                    // SAFETY: inside the live page (sizes are kept consistent by the heap).
                    let sw = unsafe { rd32(h) };
                    let t = (sw & !LOW) as usize;
                    if t < MIN_BLOCK {
                        writeln!(w, "\t\t\t{:<14} <corrupted block header>", Hex(h))?;
                        break;
                    }
                    let prev_b = if prev_t == 0 { 0 } else { h - prev_t };
                    let next_b = if h + t < end { h + t } else { 0 };
                    let quick = sw & LOW == QMAGIC;
                    writeln!(
                        w,
                        "\t\t\t{:<14} Block {:<3} {}  block_size = {:<6}  offset = {:<6}  prev = {:<14}  next = {}{}",
                        Hex(h),
                        j,
                        if sw & FREE != 0 || quick { "F R E E D" } else { "ALLOCATED" },
                        t - BLOCK_HEADER,
                        h - page,
                        Hex(prev_b),
                        Hex(next_b),
                        if quick { "  [quick]" } else { "" }
                    )?;
                    j += 1;
                    prev_t = t;
                    h += t;
                }
                index += 1;
                page = next;
            }
            let bytes = fam.os_pages * PAGE_SIZE;
            writeln!(
                w,
                "\tApp Memory in use : {} Bytes, VM Pages in use : {} ({} Bytes), % of memory in use by the application : {}",
                fam.alloc_bytes,
                fam.os_pages,
                bytes,
                Percent(fam.alloc_bytes, bytes)
            )?;
            writeln!(w)?;
            total_pages += fam.os_pages;
        }
        writeln!(
            w,
            "# Of VM Pages in Use : {} ({} Bytes)",
            total_pages,
            total_pages * PAGE_SIZE
        )?;
        writeln!(
            w,
            "Total Memory being used by Memory Manager = {} Bytes (+ {} Bytes of page registry)",
            self.data_pages * PAGE_SIZE,
            self.registry.node_pages() * PAGE_SIZE
        )
    }

    /// The seed's `mm_print_block_usage`: per family
    /// `NAME   TBC : n    FBC : n    OBC : n AppMemUsage : bytes` (total, free and occupied
    /// block counts; bytes of allocated blocks including headers).
    pub fn mm_print_block_usage(&self, w: &mut dyn Write) -> fmt::Result {
        for f in &self.families[..self.count] {
            writeln!(
                w,
                "{:<20}   TBC : {:<4}    FBC : {:<4}    OBC : {:<4} AppMemUsage : {}",
                f.name,
                f.blocks,
                f.free_blocks + f.quick_len,
                f.blocks - f.free_blocks - f.quick_len,
                f.alloc_bytes
            )?;
        }
        Ok(())
    }

    /// A `/proc/slabinfo`-like table: header lines, then per family
    /// `name active_objs num_objs objsize objperslab pagesperslab`, where an object is a
    /// one-unit block: `objsize` = its block bytes (header + payload), `objperslab` = how many
    /// fit in a one-page VM page, `active_objs` = live allocations, `num_objs` = live
    /// allocations + objects that fit in the free blocks, `pagesperslab` = 1.
    pub fn mm_print_slabinfo(&self, w: &mut dyn Write) -> fmt::Result {
        writeln!(w, "slabinfo - version: 2.1 (memvisor page families)")?;
        writeln!(
            w,
            "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab>"
        )?;
        for f in &self.families[..self.count] {
            let active = f.blocks - f.free_blocks - f.quick_len;
            writeln!(
                w,
                "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4}",
                f.name,
                active,
                active + f.quick_len + f.free_bytes / f.unit_total,
                f.unit_total,
                region_bytes(1) / f.unit_total,
                1
            )?;
        }
        Ok(())
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

/// `used / total` as a percentage with two decimals (integer arithmetic, no floats).
struct Percent(usize, usize);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 == 0 {
            return f.write_str("0.00 %");
        }
        let bp = (self.0 as u128 * 10000 / self.1 as u128) as u64;
        write!(f, "{}.{:02} %", bp / 100, bp % 100)
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
