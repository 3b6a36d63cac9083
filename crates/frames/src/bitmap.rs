//! The hierarchical bitmap frame allocator ([`BitmapAllocator`]); layout in its docs.

use std::collections::BTreeMap;

use super::summary::SummaryBits;
use super::{FrameError, Result};
use crate::addr::Pfn;

/// Frames per summary group: 512 frames = one 2 MiB large page.
pub const GROUP_FRAMES: u64 = 512;
/// Words of the bitmap per group.
pub(super) const GROUP_WORDS: usize = 8;
/// Highest buddy order reported by [`BitmapAllocator::free_runs_by_order`] (Linux
/// `MAX_PAGE_ORDER` = 10, blocks of 1024 frames = 4 MiB).
pub const MAX_ORDER: usize = 10;
/// Largest number of frames one allocator manages (2^32 frames = 16 TiB; 512 MiB of bitmap).
pub const MAX_FRAMES: u64 = 1 << 32;
/// Exclusive upper bound of manageable PFNs (2^52: the GPA of every frame fits in 64 bits).
pub const MAX_PFN: u64 = 1 << 52;

/// Counters of a [`BitmapAllocator`]. Frame counts are in 4 KiB frames; `total = free + used +
/// reserved` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitmapStats {
    /// Frames managed (`frames` given to [`BitmapAllocator::new`]).
    pub total: u64,
    /// Frames free.
    pub free: u64,
    /// Frames allocated (handed out and not yet freed, including `init_bitmap_rand` fill).
    pub used: u64,
    /// Frames reserved (never handed out, never freeable).
    pub reserved: u64,
    /// Successful allocation calls (single or contiguous; one call = one allocation).
    pub allocations: u64,
    /// Successful free calls.
    pub frees: u64,
    /// Calls that returned an error (allocations, frees and reservations).
    pub failures: u64,
}

/// A 1-bit-per-frame allocator for the frames `[base, base + frames)` with LLFree-style
/// summaries (sources: see [crate](crate)).
///
/// # Layout (LLFree-like)
/// * `words`: 1 bit per 4 KiB frame, **1 = free**. Bit 0 of the bitmap is frame `origin =
///   base & !511`, so every 8-word (512-frame) group is a 2 MiB-aligned block of guest physical
///   memory. Bits of padding frames (before `base`, after the end) are 0 and stay 0.
/// * `group_free`: a `u16` count of free frames per group (0..=512).
/// * `nonempty` / `full`: hierarchical bitmaps over groups (one bit per group, then one bit
///   per 64-bit word of the level below, up to one word): "the group has a free frame" and
///   "all 512 frames of the group are free" (a free 2 MiB page). Set, clear and next-set-bit
///   cost O(log64 groups) — 3 word operations at 64 GiB.
/// * `resv_groups` (1 bit per group) and `reserved` (a coalesced `BTreeMap` of reserved PFN
///   ranges) tell reserved frames from allocated ones without a second bit per frame.
/// * `hint`: the next-free hint (seed 002's `next_free`), a word index with the invariant
///   *no free frame lies in a word below `hint`*. Allocation takes the lowest free frame at or
///   after the hint; a free below the hint moves it down. So every allocation is exact first
///   fit (lowest address), and a single-frame allocation is the hint word, or one summary
///   look-up plus at most 8 words.
///
/// Metadata: 1/8 byte per frame for the bitmap plus ~1/256 byte per frame for the summaries
/// (≈ 0.1297 B/frame at 64 GiB; see [`BitmapAllocator::metadata_bytes`]).
///
/// Serde (memvisor's snapshots): the bitmap as one byte string of run-length records, the
/// counters and reserved ranges; the group counts and summaries are rebuilt and the result
/// checked on load, so a hostile encoding is an error, never an inconsistent allocator.
///
/// Not thread-safe by itself (`&mut self` everywhere); the VMM wraps it in its own lock.
/// Serialized by `bitmap_serde` (run-length-coded bitmap, derived parts rebuilt on load).
#[derive(Clone, Debug)]
pub struct BitmapAllocator {
    pub(super) base: u64,
    pub(super) frames: u64,
    pub(super) origin: u64,
    pub(super) words: Vec<u64>,
    pub(super) group_free: Vec<u16>,
    pub(super) nonempty: SummaryBits,
    pub(super) full: SummaryBits,
    pub(super) resv_groups: Vec<u64>,
    pub(super) reserved: BTreeMap<u64, u64>,
    pub(super) hint: usize,
    pub(super) free: u64,
    pub(super) reserved_frames: u64,
    pub(super) allocations: u64,
    pub(super) frees: u64,
    pub(super) failures: u64,
}

/// Calls `f(word index, mask, bits in mask)` for each word overlapping bits
/// `[start, start + n)`. (Counts are computed, not popcounted: the generic x86_64 target has
/// no `popcnt` instruction.)
#[inline]
pub(super) fn for_each_word(start: usize, n: usize, mut f: impl FnMut(usize, u64, u16)) {
    let end = start + n;
    let mut i = start;
    while i < end {
        let w = i / 64;
        let lo = i % 64;
        let hi = (end - w * 64).min(64);
        let mask = if hi - lo == 64 {
            !0u64
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        f(w, mask, (hi - lo) as u16);
        i = w * 64 + hi;
    }
}

impl BitmapAllocator {
    /// An allocator for the frames `[base, base + frames)`, all free.
    ///
    /// # Panics
    /// If [`BitmapAllocator::try_new`] fails (`frames > MAX_FRAMES` or
    /// `base + frames > MAX_PFN`); use `try_new` for untrusted sizes.
    pub fn new(base: Pfn, frames: u64) -> Self {
        match Self::try_new(base, frames) {
            Ok(a) => a,
            Err(e) => panic!("BitmapAllocator::new: {e}"),
        }
    }

    /// An allocator for the frames `[base, base + frames)`, all free. `frames` may be 0.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] if `frames > MAX_FRAMES` or `base + frames > MAX_PFN`.
    pub fn try_new(base: Pfn, frames: u64) -> Result<Self> {
        let too_large = FrameError::TooLarge { base, frames };
        let end = base.raw().checked_add(frames).ok_or(too_large.clone())?;
        if frames > MAX_FRAMES || end > MAX_PFN {
            return Err(too_large);
        }
        let origin = base.raw() & !(GROUP_FRAMES - 1);
        let groups = (end - origin).div_ceil(GROUP_FRAMES) as usize;
        let mut a = Self {
            base: base.raw(),
            frames,
            origin,
            words: vec![0; groups * GROUP_WORDS],
            group_free: vec![0; groups],
            nonempty: SummaryBits::new(groups),
            full: SummaryBits::new(groups),
            resv_groups: vec![0; groups.div_ceil(64)],
            reserved: BTreeMap::new(),
            hint: 0,
            free: frames,
            reserved_frames: 0,
            allocations: 0,
            frees: 0,
            failures: 0,
        };
        let first = (base.raw() - origin) as usize;
        for_each_word(first, frames as usize, |w, m, _| a.words[w] |= m);
        a.hint = first / 64;
        a.rebuild_summaries();
        Ok(a)
    }

    /// First managed frame.
    pub fn base(&self) -> Pfn {
        Pfn::new(self.base)
    }

    /// Number of managed frames.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// One past the last managed frame.
    pub fn end(&self) -> Pfn {
        Pfn::new(self.base + self.frames)
    }

    /// True if `pfn` is one of the managed frames.
    pub fn contains(&self, pfn: Pfn) -> bool {
        pfn.raw() >= self.base && pfn.raw() - self.base < self.frames
    }

    /// The next-free hint as a frame: no free frame lies below it (rounded down to 64 frames).
    pub fn next_free_hint(&self) -> Pfn {
        Pfn::new((self.origin + self.hint as u64 * 64).max(self.base))
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// True if `pfn` is managed and free. Out-of-range frames are not free.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        if !self.contains(pfn) {
            return false;
        }
        let i = (pfn.raw() - self.origin) as usize;
        self.words[i / 64] & (1u64 << (i % 64)) != 0
    }

    /// True if `pfn` is managed and reserved.
    pub fn is_reserved(&self, pfn: Pfn) -> bool {
        self.contains(pfn) && self.first_reserved(pfn.raw(), pfn.raw() + 1).is_some()
    }

    /// True if `pfn` is managed and allocated (neither free nor reserved).
    pub fn is_allocated(&self, pfn: Pfn) -> bool {
        self.contains(pfn) && !self.is_free(pfn) && !self.is_reserved(pfn)
    }

    /// The counters; see [`BitmapStats`].
    pub fn stats(&self) -> BitmapStats {
        BitmapStats {
            total: self.frames,
            free: self.free,
            used: self.frames - self.free - self.reserved_frames,
            reserved: self.reserved_frames,
            allocations: self.allocations,
            frees: self.frees,
            failures: self.failures,
        }
    }

    /// The reserved ranges as `(first frame, frame count)`, coalesced, in address order.
    pub fn reserved_ranges(&self) -> impl Iterator<Item = (Pfn, u64)> + '_ {
        self.reserved.iter().map(|(&s, &e)| (Pfn::new(s), e - s))
    }

    /// Bytes of metadata: the bitmap, the group counts and summaries, the reserved-range map
    /// (estimated at 64 bytes per range) and the struct itself. About 0.129 bytes per frame.
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.words.len() * 8
            + self.group_free.len() * 2
            + self.nonempty.bytes()
            + self.full.bytes()
            + self.resv_groups.len() * 8
            + self.reserved.len() * 64
    }

    // ----- group bookkeeping -------------------------------------------------------------

    #[inline]
    fn group_add(&mut self, g: usize, d: u16) {
        let old = self.group_free[g];
        let new = old + d;
        self.group_free[g] = new;
        if old == 0 {
            self.nonempty.set(g);
        }
        if u64::from(new) == GROUP_FRAMES {
            self.full.set(g);
        }
    }

    #[inline]
    fn group_sub(&mut self, g: usize, d: u16) {
        let old = self.group_free[g];
        let new = old - d;
        self.group_free[g] = new;
        if u64::from(old) == GROUP_FRAMES {
            self.full.clear(g);
        }
        if new == 0 {
            self.nonempty.clear(g);
        }
    }

    /// Calls `f(group, first bit, bit count)` for the part of `[i, i + n)` in each group.
    #[inline]
    fn for_each_group(i: usize, n: usize, mut f: impl FnMut(usize, usize, usize)) {
        let end = i + n;
        let mut s = i;
        while s < end {
            let g = s / GROUP_FRAMES as usize;
            let ge = ((g + 1) * GROUP_FRAMES as usize).min(end);
            f(g, s, ge - s);
            s = ge;
        }
    }

    /// Mark bits `[i, i + n)` free (all currently 0) and update summaries.
    fn set_free_range(&mut self, i: usize, n: usize) {
        Self::for_each_group(i, n, |g, s, c| {
            if c == GROUP_FRAMES as usize {
                self.words[g * GROUP_WORDS..(g + 1) * GROUP_WORDS].fill(!0);
            } else {
                for_each_word(s, c, |w, m, _| self.words[w] |= m);
            }
            self.group_add(g, c as u16);
        });
        self.hint = self.hint.min(i / 64);
    }

    /// Mark bits `[i, i + n)` used (all currently 1) and update summaries.
    pub(super) fn set_used_range(&mut self, i: usize, n: usize) {
        Self::for_each_group(i, n, |g, s, c| {
            if c == GROUP_FRAMES as usize {
                self.words[g * GROUP_WORDS..(g + 1) * GROUP_WORDS].fill(0);
            } else {
                for_each_word(s, c, |w, m, _| self.words[w] &= !m);
            }
            self.group_sub(g, c as u16);
        });
    }

    /// The first bit of `[i, i + n)` (n > 0) whose value is `want` (1 = free), if any.
    fn first_with(&self, i: usize, n: usize, want: bool) -> Option<usize> {
        let flip = if want { 0 } else { !0u64 };
        let (w0, w1) = (i / 64, (i + n - 1) / 64);
        let head = !0u64 << (i % 64);
        let tail = !0u64 >> (63 - (i + n - 1) % 64);
        let at = |w: usize, x: u64| Some(w * 64 + x.trailing_zeros() as usize);
        if w0 == w1 {
            let x = (self.words[w0] ^ flip) & head & tail;
            return if x != 0 { at(w0, x) } else { None };
        }
        let x = (self.words[w0] ^ flip) & head;
        if x != 0 {
            return at(w0, x);
        }
        if let Some(k) = self.words[w0 + 1..w1].iter().position(|&x| x ^ flip != 0) {
            let w = w0 + 1 + k;
            return at(w, self.words[w] ^ flip);
        }
        let x = (self.words[w1] ^ flip) & tail;
        if x != 0 {
            at(w1, x)
        } else {
            None
        }
    }

    /// The first reserved frame in `[start, end)` (PFNs, both inside the managed range).
    #[inline]
    fn first_reserved(&self, start: u64, end: u64) -> Option<u64> {
        if self.reserved.is_empty() {
            return None;
        }
        let g0 = ((start - self.origin) / GROUP_FRAMES) as usize;
        let g1 = ((end - 1 - self.origin) / GROUP_FRAMES) as usize;
        if g0 == g1 && self.resv_groups[g0 / 64] & (1u64 << (g0 % 64)) == 0 {
            return None;
        }
        if let Some((_, &e)) = self.reserved.range(..=start).next_back() {
            if e > start {
                return Some(start);
            }
        }
        self.reserved.range(start + 1..end).next().map(|(&s, _)| s)
    }

    /// Validate `[pfn, pfn + n)` against the managed range; returns the bit index.
    fn check_range(&self, pfn: Pfn, n: u64) -> Result<usize> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        let out = FrameError::OutOfRange { pfn, count: n };
        let end = pfn.raw().checked_add(n).ok_or(out.clone())?;
        if pfn.raw() < self.base || end > self.base + self.frames {
            return Err(out);
        }
        Ok((pfn.raw() - self.origin) as usize)
    }

    // ----- allocation ----------------------------------------------------------------------

    /// Allocate one frame: the lowest free frame, found from the next-free hint.
    ///
    /// # Errors
    /// [`FrameError::OutOfFrames`] (`requested: 1`) if no frame is free.
    #[inline]
    pub fn alloc(&mut self) -> Result<Pfn> {
        let w = match self.words.get(self.hint) {
            Some(&x) if x != 0 => self.hint,
            _ => match self.find_free_word_slow() {
                Some(w) => w,
                None => {
                    self.failures += 1;
                    return Err(FrameError::OutOfFrames {
                        requested: 1,
                        zone: None,
                    });
                }
            },
        };
        let word = self.words[w];
        self.words[w] = word & (word - 1);
        self.hint = w;
        self.group_sub(w / GROUP_WORDS, 1);
        self.free -= 1;
        self.allocations += 1;
        Ok(Pfn::new(
            self.origin + w as u64 * 64 + u64::from(word.trailing_zeros()),
        ))
    }

    /// The hint word is empty: look in the rest of its group, then in the next non-empty group.
    #[cold]
    fn find_free_word_slow(&self) -> Option<usize> {
        let w = self.hint;
        let g = w / GROUP_WORDS;
        if g >= self.group_free.len() {
            return None;
        }
        let g = if self.group_free[g] != 0 {
            g
        } else {
            self.nonempty.find_next(g + 1)?
        };
        let lo = (g * GROUP_WORDS).max(w);
        (lo..(g + 1) * GROUP_WORDS).find(|&i| self.words[i] != 0)
    }

    /// Allocate `n` contiguous frames whose first PFN is a multiple of `align_frames` (a power
    /// of two; `512` = 2 MiB). Exact first fit: the lowest such run is returned.
    ///
    /// Cost: one frame — see [`alloc`](Self::alloc); `align_frames >= 512` — a walk over the
    /// "entirely free" (or "non-empty") group summaries; `n <= align_frames < 512` — group
    /// counts skip groups with fewer than `n` free frames; otherwise a walk over free runs
    /// that skips empty groups (and, for `n >= 1023`, everything before the next free 2 MiB
    /// group).
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`], [`FrameError::BadAlign`], or [`FrameError::OutOfFrames`].
    #[inline]
    pub fn alloc_contiguous(&mut self, n: u64, align_frames: u64) -> Result<Pfn> {
        let r = self.alloc_uncounted(n, align_frames);
        if r.is_err() {
            self.failures += 1;
        }
        r
    }

    /// [`alloc_contiguous`](Self::alloc_contiguous) without counting a failure (zone fallback).
    pub(super) fn alloc_uncounted(&mut self, n: u64, align: u64) -> Result<Pfn> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        if !align.is_power_of_two() {
            return Err(FrameError::BadAlign { align });
        }
        let oof = FrameError::OutOfFrames {
            requested: n,
            zone: None,
        };
        if n > self.free {
            return Err(oof);
        }
        if n == 1 && align == 1 {
            return self.alloc(); // cannot fail: at least one frame is free
        }
        if n == GROUP_FRAMES && align == GROUP_FRAMES {
            // One 2 MiB page: the lowest entirely free group at or after the hint.
            let g = self.full.find_next(self.hint / GROUP_WORDS).ok_or(oof)?;
            self.words[g * GROUP_WORDS..(g + 1) * GROUP_WORDS].fill(0);
            self.group_sub(g, GROUP_FRAMES as u16);
            self.free -= n;
            self.allocations += 1;
            return Ok(Pfn::new(self.origin + g as u64 * GROUP_FRAMES));
        }
        let found = if align >= GROUP_FRAMES {
            self.search_group_aligned(n, align)
        } else if n <= align {
            self.search_confined(n, align)
        } else {
            self.search_runs(n, align)
        };
        let i = found.ok_or(oof)?;
        self.set_used_range(i, n as usize);
        self.free -= n;
        self.allocations += 1;
        Ok(Pfn::new(self.origin + i as u64))
    }

    // ----- free and reserve ----------------------------------------------------------------

    /// Free the `n` frames `[pfn, pfn + n)`, all of which must be allocated. All or nothing.
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`]; [`FrameError::OutOfRange`] (outside the managed frames or
    /// overflowing); [`FrameError::Reserved`] (first reserved frame); [`FrameError::DoubleFree`]
    /// (every frame already free); [`FrameError::NotAllocated`] (first free frame of a range
    /// that mixes allocated and free frames). On error nothing changes.
    #[inline]
    pub fn free(&mut self, pfn: Pfn, n: u64) -> Result<()> {
        let r = if n == 1 {
            self.free_one(pfn)
        } else {
            self.free_range(pfn, n)
        };
        match r {
            Ok(()) => {
                self.frees += 1;
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                Err(e)
            }
        }
    }

    #[inline]
    fn free_one(&mut self, pfn: Pfn) -> Result<()> {
        if !self.contains(pfn) {
            return Err(FrameError::OutOfRange { pfn, count: 1 });
        }
        let i = (pfn.raw() - self.origin) as usize;
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if self.words[w] & bit != 0 {
            return Err(FrameError::DoubleFree { pfn });
        }
        let g = w / GROUP_WORDS;
        if self.resv_groups[g / 64] & (1u64 << (g % 64)) != 0
            && self.first_reserved(pfn.raw(), pfn.raw() + 1).is_some()
        {
            return Err(FrameError::Reserved { pfn });
        }
        self.words[w] |= bit;
        self.group_add(g, 1);
        self.free += 1;
        if w < self.hint {
            self.hint = w;
        }
        Ok(())
    }

    #[inline(never)]
    fn free_range(&mut self, pfn: Pfn, n: u64) -> Result<()> {
        let i = self.check_range(pfn, n)?;
        if n == GROUP_FRAMES && i % GROUP_FRAMES as usize == 0 {
            // One whole 2 MiB group: valid iff all allocated and none reserved.
            let g = i / GROUP_FRAMES as usize;
            let ws = &mut self.words[g * GROUP_WORDS..(g + 1) * GROUP_WORDS];
            if ws.iter().all(|&w| w == 0) && self.resv_groups[g / 64] & (1u64 << (g % 64)) == 0 {
                ws.fill(!0);
                self.group_add(g, GROUP_FRAMES as u16);
                self.free += n;
                self.hint = self.hint.min(g * GROUP_WORDS);
                return Ok(());
            }
        }
        if let Some(r) = self.first_reserved(pfn.raw(), pfn.raw() + n) {
            return Err(FrameError::Reserved { pfn: Pfn::new(r) });
        }
        if let Some(f) = self.first_with(i, n as usize, true) {
            return Err(
                if f == i && self.first_with(i, n as usize, false).is_none() {
                    FrameError::DoubleFree { pfn }
                } else {
                    FrameError::NotAllocated {
                        pfn: Pfn::new(self.origin + f as u64),
                    }
                },
            );
        }
        self.set_free_range(i, n as usize);
        self.free += n;
        Ok(())
    }

    /// Check that `[pfn, pfn + n)` can be reserved; returns its bit index.
    pub(super) fn check_reserve(&self, pfn: Pfn, n: u64) -> Result<usize> {
        let i = self.check_range(pfn, n)?;
        if let Some(r) = self.first_reserved(pfn.raw(), pfn.raw() + n) {
            return Err(FrameError::Reserved { pfn: Pfn::new(r) });
        }
        if let Some(u) = self.first_with(i, n as usize, false) {
            return Err(FrameError::InUse {
                pfn: Pfn::new(self.origin + u as u64),
            });
        }
        Ok(i)
    }

    /// Apply a reservation checked by [`check_reserve`](Self::check_reserve).
    pub(super) fn apply_reserve(&mut self, i: usize, n: u64) {
        let (s, e) = (self.origin + i as u64, self.origin + i as u64 + n);
        self.set_used_range(i, n as usize);
        self.free -= n;
        self.reserved_frames += n;
        let g0 = i / GROUP_FRAMES as usize;
        let g1 = (i + n as usize - 1) / GROUP_FRAMES as usize;
        for g in g0..=g1 {
            self.resv_groups[g / 64] |= 1u64 << (g % 64);
        }
        let (mut start, mut end) = (s, e);
        if let Some((&ps, &pe)) = self.reserved.range(..s).next_back() {
            if pe == s {
                start = ps;
                self.reserved.remove(&ps);
            }
        }
        if let Some(&ne) = self.reserved.get(&e) {
            end = ne;
            self.reserved.remove(&e);
        }
        self.reserved.insert(start, end);
    }

    /// Reserve the free frames `[pfn, pfn + n)`: they are never handed out and cannot be
    /// freed (e820 holes, the kernel image, boot structures). All or nothing.
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`], [`FrameError::OutOfRange`], [`FrameError::Reserved`] (first
    /// frame already reserved), [`FrameError::InUse`] (first allocated frame).
    pub fn reserve(&mut self, pfn: Pfn, n: u64) -> Result<()> {
        match self.check_reserve(pfn, n) {
            Ok(i) => {
                self.apply_reserve(i, n);
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                Err(e)
            }
        }
    }
}
