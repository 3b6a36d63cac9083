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
//!
//! # Where the metadata lives
//! Never inside the regions handed to the program. Main and sub-chain nodes are 64-byte slots
//! in **node-pool pages** (one page = a 64-byte pool header + 63 slots, chained); live
//! PROCESS segments are found by address in an open-addressing **hash table** (16-byte
//! entries, in pages, resized by doubling/halving); the page registry (see the crate docs) maps every region
//! page to its main node (for `mems_get` and for classifying bad frees). All of it comes from
//! the same page source and is counted by [`Mems::pages_in_use`]; `mems_finish` returns it all.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use crate::registry::PageRegistry;
use crate::{at, map, round_up, unmap, HeapError, PageSource, PAGE_SIZE};

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
const NODE_MAGIC: u32 = 0x4d65_4d53; // "MeMS"
const FL: usize = 64;
const SL: usize = 8;
const MIN_TABLE: usize = PAGE_SIZE / 16;

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
    _pad: usize,
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
    /// Page-registry pages.
    pub registry_pages: usize,
}

/// The MeMS heap (seed 004). See the module docs.
pub struct Mems<S: PageSource> {
    source: S,
    registry: PageRegistry,
    // Main chain.
    first_main: usize,
    last_main: usize,
    main_len: usize,
    data_pages: usize,
    hole_bytes: usize,
    release_empty: bool,
    // Node pool.
    pool_first: usize,
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
            registry: PageRegistry::new(),
            first_main: 0,
            last_main: 0,
            main_len: 0,
            data_pages: 0,
            hole_bytes: 0,
            release_empty: false,
            pool_first: 0,
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

    /// Pages mapped from the source: regions + node pool + hash table + registry.
    pub fn pages_in_use(&self) -> usize {
        self.data_pages + self.metadata_pages()
    }

    /// Pages of the main-chain regions (the report's "Pages used").
    pub fn data_pages(&self) -> usize {
        self.data_pages
    }

    /// Pages of metadata: node pool, hash table and page registry.
    pub fn metadata_pages(&self) -> usize {
        self.pool_pages + self.table_cap * 16 / PAGE_SIZE + self.registry.node_pages()
    }

    /// Bytes in holes (the report's "Space unused").
    pub fn hole_bytes(&self) -> usize {
        self.hole_bytes
    }

    /// Number of main-chain nodes.
    pub fn main_chain_len(&self) -> usize {
        self.main_len
    }

    // ---- node pool ---------------------------------------------------------------------------

    /// Make sure at least `n` free node slots exist.
    fn reserve_nodes(&mut self, n: usize) -> Result<(), HeapError> {
        while self.free_count < n {
            let page = map(&mut self.source, 1).ok_or(HeapError::OutOfMemory { pages: 1 })?;
            // SAFETY: `page` is a fresh page owned by the pool: word 0 links the pool pages,
            // slots 1..64 join the free list (their word 0 links the list).
            unsafe {
                *at::<usize>(page) = self.pool_first;
                for i in 1..=SLOTS_PER_POOL_PAGE {
                    let s = page + i * NODE;
                    *at::<usize>(s) = self.free_nodes;
                    self.free_nodes = s;
                }
            }
            self.pool_first = page;
            self.pool_pages += 1;
            self.free_count += SLOTS_PER_POOL_PAGE;
        }
        Ok(())
    }

    /// Pop a node slot (call [`Self::reserve_nodes`] first).
    fn take_node(&mut self) -> usize {
        let n = self.free_nodes;
        debug_assert!(n != 0);
        // SAFETY: `n` is a free slot of a live pool page; word 0 is the free-list link.
        self.free_nodes = unsafe { *at::<usize>(n) };
        self.free_count -= 1;
        n
    }

    fn put_node(&mut self, n: usize) {
        // SAFETY: `n` is a slot of a live pool page no longer used by any chain; clearing the
        // magic makes a stale pointer to it fail the node checks.
        unsafe {
            (*seg(n)).magic = 0;
            *at::<usize>(n) = self.free_nodes;
        }
        self.free_nodes = n;
        self.free_count += 1;
    }

    fn release_pool(&mut self) {
        let mut p = self.pool_first;
        while p != 0 {
            // SAFETY: `p` is a live pool page; read its link before unmapping it.
            let next = unsafe { *at::<usize>(p) };
            unmap(&mut self.source, p, 1);
            p = next;
        }
        self.pool_first = 0;
        self.pool_pages = 0;
        self.free_nodes = 0;
        self.free_count = 0;
    }

    // ---- hash table of PROCESS starts -------------------------------------------------------

    #[inline(always)]
    fn hslot(&self, key: usize) -> usize {
        let bits = self.table_cap.trailing_zeros();
        (key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - bits)
    }

    #[inline(always)]
    fn entry(&self, i: usize) -> *mut [usize; 2] {
        at::<[usize; 2]>(self.table + i * 16)
    }

    /// The PROCESS node starting at `key`, or 0.
    #[inline]
    fn hget(&self, key: usize) -> usize {
        if self.table_len == 0 {
            return 0;
        }
        let mask = self.table_cap - 1;
        let mut i = self.hslot(key);
        loop {
            // SAFETY: `i < table_cap`; the table is live while `table_len > 0`.
            let e = unsafe { *self.entry(i) };
            if e[0] == key {
                return e[1];
            }
            if e[0] == 0 {
                return 0;
            }
            i = (i + 1) & mask;
        }
    }

    /// Insert (the key must be absent and capacity ensured).
    fn hinsert(&mut self, key: usize, val: usize) {
        let mask = self.table_cap - 1;
        let mut i = self.hslot(key);
        // SAFETY: `i < table_cap`, the table is live and has a free entry (load ≤ 1/2).
        unsafe {
            while (*self.entry(i))[0] != 0 {
                i = (i + 1) & mask;
            }
            *self.entry(i) = [key, val];
        }
        self.table_len += 1;
    }

    /// Remove `key` (present) with backward-shift deletion.
    fn hremove(&mut self, key: usize) {
        let mask = self.table_cap - 1;
        let mut i = self.hslot(key);
        // SAFETY: all indices are masked to the live table.
        unsafe {
            while (*self.entry(i))[0] != key {
                i = (i + 1) & mask;
            }
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let e = *self.entry(j);
                if e[0] == 0 {
                    break;
                }
                let home = self.hslot(e[0]);
                // Move e back to the hole at i unless its home lies cyclically in (i, j].
                let in_range = if i <= j {
                    i < home && home <= j
                } else {
                    i < home || home <= j
                };
                if !in_range {
                    *self.entry(i) = e;
                    i = j;
                }
            }
            *self.entry(i) = [0, 0];
        }
        self.table_len -= 1;
        if self.table_cap > MIN_TABLE && self.table_len * 8 < self.table_cap {
            let _ = self.hresize(self.table_cap / 2);
        }
    }

    /// Room for one more entry.
    fn hreserve(&mut self) -> Result<(), HeapError> {
        if self.table == 0 {
            self.hresize(MIN_TABLE)
        } else if (self.table_len + 1) * 2 > self.table_cap {
            self.hresize(self.table_cap * 2)
        } else {
            Ok(())
        }
    }

    fn hresize(&mut self, cap: usize) -> Result<(), HeapError> {
        let pages = cap * 16 / PAGE_SIZE;
        let new = map(&mut self.source, pages).ok_or(HeapError::OutOfMemory { pages })?;
        let (old, old_cap) = (self.table, self.table_cap);
        self.table = new;
        self.table_cap = cap;
        self.table_len = 0;
        for i in 0..old_cap {
            // SAFETY: `old` is the live old table of `old_cap` entries.
            let e = unsafe { *at::<[usize; 2]>(old + i * 16) };
            if e[0] != 0 {
                self.hinsert(e[0], e[1]);
            }
        }
        if old != 0 {
            unmap(&mut self.source, old, old_cap * 16 / PAGE_SIZE);
        }
        Ok(())
    }

    fn release_table(&mut self) {
        if self.table != 0 {
            unmap(
                &mut self.source,
                self.table,
                self.table_cap * 16 / PAGE_SIZE,
            );
        }
        self.table = 0;
        self.table_cap = 0;
        self.table_len = 0;
    }

    // ---- hole index --------------------------------------------------------------------------

    /// # Safety
    /// `h` must be a HOLE node not in the index.
    unsafe fn index_insert(&mut self, h: usize) {
        // SAFETY: `h` and the current head are live HOLE nodes.
        unsafe {
            let (fl, sl) = mapping((*seg(h)).size);
            let head = self.heads[fl][sl];
            (*seg(h)).fprev = 0;
            (*seg(h)).fnext = head;
            if head != 0 {
                (*seg(head)).fprev = h;
            }
            self.heads[fl][sl] = h;
            self.sl_bitmap[fl] |= 1 << sl;
            self.fl_bitmap |= 1 << fl;
        }
    }

    /// # Safety
    /// `h` must be a HOLE node in the index (its size unchanged since insertion).
    unsafe fn index_remove(&mut self, h: usize) {
        // SAFETY: `h` and its list neighbours are live HOLE nodes.
        unsafe {
            let (fl, sl) = mapping((*seg(h)).size);
            let (p, n) = ((*seg(h)).fprev, (*seg(h)).fnext);
            if p != 0 {
                (*seg(p)).fnext = n;
            } else {
                self.heads[fl][sl] = n;
                if n == 0 {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            }
            if n != 0 {
                (*seg(n)).fprev = p;
            }
        }
    }

    /// A hole of at least `size` bytes, or 0 (see module docs).
    fn find_hole(&self, size: usize) -> usize {
        let (fl, sl) = mapping(size);
        let mut h = self.heads[fl][sl];
        if h != 0 {
            if exact(fl) {
                return h;
            }
            let mut n = 0;
            while h != 0 && n < SCAN_LIMIT {
                // SAFETY: index members are live HOLE nodes.
                unsafe {
                    if (*seg(h)).size >= size {
                        return h;
                    }
                    h = (*seg(h)).fnext;
                }
                n += 1;
            }
        }
        let m = (self.sl_bitmap[fl] as u32) & (!0u32 << (sl + 1));
        if m != 0 {
            return self.heads[fl][m.trailing_zeros() as usize];
        }
        if fl + 1 >= FL {
            return 0;
        }
        let fm = self.fl_bitmap & (!0u64 << (fl + 1));
        if fm == 0 {
            return 0;
        }
        let f = fm.trailing_zeros() as usize;
        self.heads[f][self.sl_bitmap[f].trailing_zeros() as usize]
    }

    // ---- allocation --------------------------------------------------------------------------

    /// The seed's `mems_malloc`: `size` bytes (rounded up to 16), 16-byte aligned, not zeroed.
    pub fn mems_malloc(&mut self, size: usize) -> Result<NonNull<u8>, HeapError> {
        self.mems_alloc_aligned(size, ALIGN)
    }

    /// `mems_malloc` with an alignment (a power of two ≤ [`MAX_ALIGN`]). Any padding in front
    /// of the segment stays a HOLE.
    pub fn mems_alloc_aligned(
        &mut self,
        size: usize,
        align: usize,
    ) -> Result<NonNull<u8>, HeapError> {
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(HeapError::InvalidAlignment { align });
        }
        let align = align.max(ALIGN);
        let too_large = HeapError::TooLarge { size };
        let size = round_up(size.max(1), ALIGN).ok_or(too_large)?;
        let search = size.checked_add(align - ALIGN).ok_or(too_large)?;
        if search > isize::MAX as usize / 2 {
            return Err(too_large);
        }
        // Everything that can fail happens before the chains change.
        // grow: main + hole; carve: alignment-padding hole + tail hole.
        self.reserve_nodes(4)?;
        self.hreserve()?;
        let mut h = self.find_hole(search);
        if h == 0 {
            let lead = align.saturating_sub(PAGE_SIZE);
            let pages = (size + lead).div_ceil(PAGE_SIZE);
            h = self.grow(pages)?;
        }
        // SAFETY: `h` is an indexed HOLE of at least `size` bytes after aligning its start.
        let p = unsafe { self.carve(h, size, align) };
        // SAFETY: segment starts are never 0.
        Ok(unsafe { NonNull::new_unchecked(at::<u8>(p)) })
    }

    /// Append a main node of `pages` pages to the chain; returns its single (indexed) HOLE.
    #[cold]
    fn grow(&mut self, pages: usize) -> Result<usize, HeapError> {
        let base = map(&mut self.source, pages).ok_or(HeapError::OutOfMemory { pages })?;
        let m = self.take_node();
        if let Err(e) = self.registry.insert_range(&mut self.source, base, pages, m) {
            unmap(&mut self.source, base, pages);
            self.put_node(m);
            return Err(e);
        }
        let h = self.take_node();
        // SAFETY: `m` and `h` are fresh pool slots; `last_main` (if any) is a live main node.
        unsafe {
            *mainp(m) = Main {
                start: base,
                pages,
                head: h,
                sub_len: 1,
                prev: self.last_main,
                next: 0,
                _pad: 0,
                kind: KIND_MAIN,
                magic: NODE_MAGIC,
            };
            *seg(h) = Seg {
                start: base,
                size: pages * PAGE_SIZE,
                main: m,
                prev: 0,
                next: 0,
                fprev: 0,
                fnext: 0,
                kind: KIND_H,
                magic: NODE_MAGIC,
            };
            if self.last_main != 0 {
                (*mainp(self.last_main)).next = m;
            } else {
                self.first_main = m;
            }
            self.index_insert(h);
        }
        self.last_main = m;
        self.main_len += 1;
        self.data_pages += pages;
        self.hole_bytes += pages * PAGE_SIZE;
        Ok(h)
    }

    /// Turn the front of hole `h` (after alignment padding) into a PROCESS segment of `size`
    /// bytes; returns its start. Needs 2 reserved nodes and a reserved hash entry.
    ///
    /// # Safety
    /// `h` must be an indexed HOLE holding `size` bytes at an `align`-aligned address.
    unsafe fn carve(&mut self, h: usize, size: usize, align: usize) -> usize {
        // SAFETY: `h`, its neighbours and its main node are live nodes; new nodes come from
        // the reserved pool slots.
        unsafe {
            self.index_remove(h);
            let s = seg(h);
            let m = (*s).main;
            let start = (*s).start;
            let aligned = (start + align - 1) & !(align - 1);
            let pad = aligned - start;
            if pad > 0 {
                let q = self.take_node();
                *seg(q) = Seg {
                    start,
                    size: pad,
                    main: m,
                    prev: (*s).prev,
                    next: h,
                    fprev: 0,
                    fnext: 0,
                    kind: KIND_H,
                    magic: NODE_MAGIC,
                };
                if (*s).prev != 0 {
                    (*seg((*s).prev)).next = q;
                } else {
                    (*mainp(m)).head = q;
                }
                (*s).prev = q;
                (*s).start = aligned;
                (*s).size -= pad;
                (*mainp(m)).sub_len += 1;
                self.index_insert(q);
            }
            debug_assert!((*s).size >= size);
            if (*s).size > size {
                let t = self.take_node();
                *seg(t) = Seg {
                    start: aligned + size,
                    size: (*s).size - size,
                    main: m,
                    prev: h,
                    next: (*s).next,
                    fprev: 0,
                    fnext: 0,
                    kind: KIND_H,
                    magic: NODE_MAGIC,
                };
                if (*s).next != 0 {
                    (*seg((*s).next)).prev = t;
                }
                (*s).next = t;
                (*s).size = size;
                (*mainp(m)).sub_len += 1;
                self.index_insert(t);
            }
            (*s).kind = KIND_P;
            self.hole_bytes -= size;
            self.hinsert(aligned, h);
            aligned
        }
    }

    // ---- free --------------------------------------------------------------------------------

    /// The live PROCESS node starting at `addr`, or the error explaining why there is none.
    fn lookup_process(&self, addr: usize) -> Result<usize, HeapError> {
        let n = self.hget(addr);
        if n == 0 {
            return Err(self.classify(addr));
        }
        // SAFETY: hash values are live PROCESS nodes of the pool.
        let (kind, magic, start) = unsafe { ((*seg(n)).kind, (*seg(n)).magic, (*seg(n)).start) };
        if kind != KIND_P || magic != NODE_MAGIC || start != addr {
            return Err(HeapError::Corrupted {
                addr: n,
                reason: "segment node inconsistent with the hash table",
            });
        }
        Ok(n)
    }

    /// Size in bytes of the PROCESS segment starting at `ptr`.
    pub fn mems_usable_size(&self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        let n = self.lookup_process(ptr.as_ptr().addr())?;
        // SAFETY: a live PROCESS node.
        Ok(unsafe { (*seg(n)).size })
    }

    /// The seed's `mems_free`: the segment starting at `ptr` becomes a HOLE, merged with
    /// adjacent holes. Errors (heap unchanged): [`HeapError::DoubleFree`] if `ptr` lies in a
    /// hole, [`HeapError::InvalidPointer`] if it is not the start of a PROCESS segment.
    pub fn mems_free(&mut self, ptr: NonNull<u8>) -> Result<(), HeapError> {
        let addr = ptr.as_ptr().addr();
        let n = self.lookup_process(addr)?;
        self.hremove(addr);
        // SAFETY: `n` is a live PROCESS node; its sub-chain neighbours and main node are live.
        unsafe {
            let s = seg(n);
            let m = (*s).main;
            (*s).kind = KIND_H;
            self.hole_bytes += (*s).size;
            let mut cur = n;
            let p = (*s).prev;
            if p != 0 && (*seg(p)).kind == KIND_H {
                self.index_remove(p);
                (*seg(p)).size += (*s).size;
                (*seg(p)).next = (*s).next;
                if (*s).next != 0 {
                    (*seg((*s).next)).prev = p;
                }
                (*mainp(m)).sub_len -= 1;
                self.put_node(n);
                cur = p;
            }
            let c = seg(cur);
            let nx = (*c).next;
            if nx != 0 && (*seg(nx)).kind == KIND_H {
                self.index_remove(nx);
                (*c).size += (*seg(nx)).size;
                (*c).next = (*seg(nx)).next;
                if (*c).next != 0 {
                    (*seg((*c).next)).prev = cur;
                }
                (*mainp(m)).sub_len -= 1;
                self.put_node(nx);
            }
            if self.release_empty && (*mainp(m)).sub_len == 1 {
                self.release_main(m);
                if self.main_len == 0 {
                    self.release_pool();
                    self.release_table();
                }
            } else {
                self.index_insert(cur);
            }
        }
        Ok(())
    }

    /// Unmap main node `m` (a single HOLE, not indexed) and drop it from the chain.
    ///
    /// # Safety
    /// `m` must be a live main node whose only segment is a HOLE outside the index.
    unsafe fn release_main(&mut self, m: usize) {
        // SAFETY: per the contract; chain neighbours are live main nodes.
        unsafe {
            let mn = mainp(m);
            let (start, pages, head, prev, next) =
                ((*mn).start, (*mn).pages, (*mn).head, (*mn).prev, (*mn).next);
            if prev != 0 {
                (*mainp(prev)).next = next;
            } else {
                self.first_main = next;
            }
            if next != 0 {
                (*mainp(next)).prev = prev;
            } else {
                self.last_main = prev;
            }
            self.registry.remove_range(&mut self.source, start, pages);
            unmap(&mut self.source, start, pages);
            self.put_node(head);
            self.put_node(m);
            self.main_len -= 1;
            self.data_pages -= pages;
            self.hole_bytes -= pages * PAGE_SIZE;
        }
    }

    /// Why `addr` is not the start of a PROCESS segment (walks one sub-chain: error path).
    #[cold]
    fn classify(&self, addr: usize) -> HeapError {
        let m = self.registry.get(addr);
        if m == 0 {
            return HeapError::InvalidPointer {
                addr,
                reason: "not in a MeMS region",
            };
        }
        // SAFETY: registry values are live main nodes; their sub-chains are live nodes.
        unsafe {
            let mut s = (*mainp(m)).head;
            while s != 0 {
                let (start, size, kind) = ((*seg(s)).start, (*seg(s)).size, (*seg(s)).kind);
                if addr >= start && addr < start + size {
                    return if kind == KIND_H {
                        HeapError::DoubleFree { addr }
                    } else {
                        HeapError::InvalidPointer {
                            addr,
                            reason: "interior pointer of a PROCESS segment",
                        }
                    };
                }
                s = (*seg(s)).next;
            }
        }
        HeapError::Corrupted {
            addr: m,
            reason: "sub-chain does not cover its main node",
        }
    }

    /// Does `ptr` lie inside one of this heap's regions (any byte, allocated or not)? O(1).
    pub fn contains(&self, ptr: *const u8) -> bool {
        self.registry.get(ptr.addr()) != 0
    }

    /// The seed's `mems_get`: the physical address of `ptr`, which must lie inside a MeMS
    /// region (any byte of it); `None` if it does not, or if the page source cannot translate.
    pub fn mems_get(&self, ptr: *const u8) -> Option<u64> {
        let addr = ptr.addr();
        if self.registry.get(addr) == 0 {
            return None;
        }
        self.source.translate(addr)
    }

    /// The seed's `mems_finish`: unmap every region and all metadata. The heap is empty (and
    /// usable again) afterwards; every pointer it returned is invalid.
    pub fn mems_finish(&mut self) {
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: `m` is a live main node (in a pool page, unmapped only below).
            let (start, pages, next) =
                unsafe { ((*mainp(m)).start, (*mainp(m)).pages, (*mainp(m)).next) };
            unmap(&mut self.source, start, pages);
            m = next;
        }
        self.registry.clear(&mut self.source);
        self.release_pool();
        self.release_table();
        self.first_main = 0;
        self.last_main = 0;
        self.main_len = 0;
        self.data_pages = 0;
        self.hole_bytes = 0;
        self.fl_bitmap = 0;
        self.sl_bitmap = [0; FL];
        self.heads = [[0; SL]; FL];
    }

    // ---- reports -----------------------------------------------------------------------------

    /// The seed's `mems_print_stats`:
    /// ```text
    /// ----- MeMS SYSTEM STATS -----
    /// MAIN[start:end]-> P[a:b] <-> H[c:d] <-> NULL      (one line per main node)
    /// Pages used: N
    /// Space unused: N
    /// Main Chain Length: N
    /// Sub-chain Length array: [a, b, ]
    /// -----------------------------
    /// ```
    /// Addresses are decimal virtual addresses, ranges inclusive; "Pages used" counts region
    /// pages, "Space unused" is the bytes in holes.
    pub fn mems_print_stats(&self, w: &mut dyn Write) -> fmt::Result {
        writeln!(w, "----- MeMS SYSTEM STATS -----")?;
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: live main node and sub-chain nodes.
            unsafe {
                let mn = mainp(m);
                write!(
                    w,
                    "MAIN[{}:{}]-> ",
                    (*mn).start,
                    (*mn).start + (*mn).pages * PAGE_SIZE - 1
                )?;
                let mut s = (*mn).head;
                while s != 0 {
                    let sn = seg(s);
                    write!(
                        w,
                        "{}[{}:{}] <-> ",
                        if (*sn).kind == KIND_P { 'P' } else { 'H' },
                        (*sn).start,
                        (*sn).start + (*sn).size - 1
                    )?;
                    s = (*sn).next;
                }
                writeln!(w, "NULL")?;
                m = (*mn).next;
            }
        }
        writeln!(w, "Pages used: {}", self.data_pages)?;
        writeln!(w, "Space unused: {}", self.hole_bytes)?;
        writeln!(w, "Main Chain Length: {}", self.main_len)?;
        write!(w, "Sub-chain Length array: [")?;
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: live main node.
            unsafe {
                write!(w, "{}, ", (*mainp(m)).sub_len)?;
                m = (*mainp(m)).next;
            }
        }
        writeln!(w, "]")?;
        writeln!(w, "-----------------------------")
    }

    /// Walk the chains and check every invariant (tiling, links, no adjacent holes, hash
    /// table, hole index, registry, counters, byte accounting). O(heap size); for tests.
    pub fn audit(&self) -> Result<MemsAudit, HeapError> {
        let corrupt = |addr, reason| Err(HeapError::Corrupted { addr, reason });
        let mut a = MemsAudit {
            pool_pages: self.pool_pages,
            table_pages: self.table_cap * 16 / PAGE_SIZE,
            registry_pages: self.registry.node_pages(),
            ..MemsAudit::default()
        };
        let mut m = self.first_main;
        let mut prev_m = 0;
        let mut nodes = 0;
        while m != 0 {
            // SAFETY: chain members are live nodes; all links are checked as we go.
            unsafe {
                let mn = mainp(m);
                if (*mn).kind != KIND_MAIN || (*mn).magic != NODE_MAGIC || (*mn).prev != prev_m {
                    return corrupt(m, "main node");
                }
                for i in 0..(*mn).pages {
                    if self.registry.get((*mn).start + i * PAGE_SIZE) != m {
                        return corrupt(m, "region page not registered to its main node");
                    }
                }
                a.main_nodes += 1;
                a.data_pages += (*mn).pages;
                nodes += 1;
                let mut pos = (*mn).start;
                let mut s = (*mn).head;
                let mut prev_s = 0;
                let mut len = 0;
                let mut prev_hole = false;
                while s != 0 {
                    let sn = seg(s);
                    if (*sn).magic != NODE_MAGIC
                        || (*sn).main != m
                        || (*sn).prev != prev_s
                        || (*sn).start != pos
                        || (*sn).size == 0
                        || (*sn).size & (ALIGN - 1) != 0
                    {
                        return corrupt(s, "segment node");
                    }
                    match (*sn).kind {
                        KIND_H => {
                            if prev_hole {
                                return corrupt(s, "two adjacent holes");
                            }
                            a.holes += 1;
                            a.hole_bytes += (*sn).size;
                            prev_hole = true;
                        }
                        KIND_P => {
                            if self.hget((*sn).start) != s {
                                return corrupt(s, "PROCESS segment not in the hash table");
                            }
                            a.process_segments += 1;
                            a.process_bytes += (*sn).size;
                            prev_hole = false;
                        }
                        _ => return corrupt(s, "segment kind"),
                    }
                    pos += (*sn).size;
                    len += 1;
                    nodes += 1;
                    prev_s = s;
                    s = (*sn).next;
                }
                if pos != (*mn).start + (*mn).pages * PAGE_SIZE || len != (*mn).sub_len {
                    return corrupt(m, "sub-chain does not tile its main node");
                }
                if self.release_empty && len == 1 && prev_hole {
                    return corrupt(m, "empty main node kept with release_empty on");
                }
                prev_m = m;
                m = (*mn).next;
            }
        }
        if prev_m != self.last_main || a.main_nodes != self.main_len {
            return corrupt(prev_m, "main chain ends / length");
        }
        // Hole index.
        let mut indexed = 0;
        for fl in 0..FL {
            if (self.fl_bitmap >> fl & 1 != 0) != (self.sl_bitmap[fl] != 0) {
                return corrupt(fl, "first-level bitmap");
            }
            for sl in 0..SL {
                let mut h = self.heads[fl][sl];
                if (h != 0) != (self.sl_bitmap[fl] >> sl & 1 != 0) {
                    return corrupt(fl * SL + sl, "second-level bitmap");
                }
                let mut prev = 0;
                while h != 0 {
                    // SAFETY: index members are live HOLE nodes (checked).
                    unsafe {
                        if (*seg(h)).kind != KIND_H
                            || mapping((*seg(h)).size) != (fl, sl)
                            || (*seg(h)).fprev != prev
                        {
                            return corrupt(h, "hole index entry");
                        }
                        prev = h;
                        h = (*seg(h)).fnext;
                    }
                    indexed += 1;
                    if indexed > a.holes {
                        return corrupt(prev, "hole index longer than the holes");
                    }
                }
            }
        }
        if indexed != a.holes
            || self.table_len != a.process_segments
            || a.hole_bytes != self.hole_bytes
            || a.data_pages != self.data_pages
            || self.registry.entries() != self.data_pages
            || nodes + self.free_count != self.pool_pages * SLOTS_PER_POOL_PAGE
        {
            return corrupt(0, "counters");
        }
        if a.data_pages * PAGE_SIZE != a.process_bytes + a.hole_bytes {
            return corrupt(0, "bytes not accounted");
        }
        Ok(a)
    }
}

impl<S: PageSource> Drop for Mems<S> {
    /// Same as [`Mems::mems_finish`].
    fn drop(&mut self) {
        self.mems_finish();
    }
}
