//! Guest-memory access to table frames.
//!
//! The entries of a table that an operation touches are read into local [`Slots`] with one
//! copy, edited there, and the changed run written back with one copy
//! ([`TableView::write_back`]): one region lookup per table instead of one per entry, and
//! the entry loops vectorise. A few entries live inline (no 4 KiB buffer to zero for
//! single-page operations). A single changed entry is written with `write_obj::<u64>` at its
//! GPA (one aligned 8-byte store). A new leaf table, the bulk of a large `map_range`, is
//! written in one pass straight into guest memory ([`TableView::write_fresh_leaves`]).

use super::{PagingError, Result, ENTRIES_PER_TABLE};
use crate::addr::{Gpa, Pfn, PAGE_SIZE};
use crate::ToGuestAddress;
use vm_memory::bitmap::{BitmapSlice, MS};
use vm_memory::{ByteValued, Bytes, GuestMemoryBackend, VolatileSlice};

/// One table's 512 entries, host side.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct TableBuf(pub(crate) [u64; ENTRIES_PER_TABLE]);

// SAFETY: `TableBuf` is `repr(C)` around a `[u64; 512]`: 4096 bytes, alignment 8, no
// padding; every bit pattern is a valid value and it holds no pointers or references, which
// is what `ByteValued` requires.
unsafe impl ByteValued for TableBuf {}

impl TableBuf {
    /// All entries zero.
    pub(crate) const fn zero() -> Self {
        TableBuf([0; ENTRIES_PER_TABLE])
    }
}

/// Entries held inline by [`Slots`] (small, so that `Slots` moves cheaply; a `[u64; 8]` is
/// `ByteValued`).
const INLINE: usize = 8;

/// Host copies of entries `a..a + len` of one table: inline for up to 8 entries, in a
/// boxed [`TableBuf`] for more. Reads outside the held run give 0, writes there are ignored.
pub(crate) struct Slots {
    a: usize,
    len: usize,
    inline: [u64; INLINE],
    boxed: Option<Box<TableBuf>>,
}

impl Slots {
    /// Zeroed room for entries `a..=b` (nothing if `a > b` or `b >= 512`).
    pub(crate) fn new(a: usize, b: usize) -> Self {
        let len = if a <= b && b < ENTRIES_PER_TABLE {
            b - a + 1
        } else {
            0
        };
        Slots {
            a,
            len,
            inline: [0; INLINE],
            boxed: (len > INLINE).then(|| Box::new(TableBuf::zero())),
        }
    }

    /// Zeroed room for the whole table.
    pub(crate) fn whole() -> Self {
        Self::new(0, ENTRIES_PER_TABLE - 1)
    }

    /// Position of absolute index `idx` in the storage, if held.
    fn pos(&self, idx: usize) -> Option<usize> {
        let k = idx.checked_sub(self.a)?;
        if k >= self.len {
            return None;
        }
        Some(if self.boxed.is_some() { idx } else { k })
    }

    fn storage(&self) -> &[u64] {
        match &self.boxed {
            Some(b) => &b.0,
            None => &self.inline,
        }
    }

    fn storage_mut(&mut self) -> &mut [u64] {
        match &mut self.boxed {
            Some(b) => &mut b.0,
            None => &mut self.inline,
        }
    }

    fn storage_bytes(&self) -> &[u8] {
        match &self.boxed {
            Some(b) => b.as_slice(),
            None => ByteValued::as_slice(&self.inline),
        }
    }

    fn storage_bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.boxed {
            Some(b) => b.as_mut_slice(),
            None => ByteValued::as_mut_slice(&mut self.inline),
        }
    }

    /// Entry `idx` (0 if not held).
    pub(crate) fn get(&self, idx: usize) -> u64 {
        self.pos(idx)
            .and_then(|p| self.storage().get(p))
            .copied()
            .unwrap_or(0)
    }

    /// Set entry `idx` (ignored if not held).
    pub(crate) fn set(&mut self, idx: usize, value: u64) {
        if let Some(p) = self.pos(idx) {
            if let Some(e) = self.storage_mut().get_mut(p) {
                *e = value;
            }
        }
    }

    /// Entries `lo..=hi` as a slice (empty unless all are held).
    pub(crate) fn range_mut(&mut self, lo: usize, hi: usize) -> &mut [u64] {
        match (self.pos(lo), self.pos(hi)) {
            (Some(p), Some(q)) if p <= q => self.storage_mut().get_mut(p..=q).unwrap_or_default(),
            _ => &mut [],
        }
    }

    /// Bytes of entries `lo..=hi` (empty unless all are held).
    fn range_bytes(&self, lo: usize, hi: usize) -> &[u8] {
        match (self.pos(lo), self.pos(hi)) {
            (Some(p), Some(q)) if p <= q => self
                .storage_bytes()
                .get(p * 8..(q + 1) * 8)
                .unwrap_or_default(),
            _ => &[],
        }
    }

    /// True if every held entry is zero.
    fn held_zero(&self) -> bool {
        let held = match self.pos(self.a) {
            Some(p) => self.storage().get(p..p + self.len).unwrap_or_default(),
            None => &[],
        };
        held.iter().all(|&e| e == 0)
    }
}

/// The inclusive run of entry indices changed in [`Slots`] (empty if `lo > hi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dirty {
    lo: usize,
    hi: usize,
}

impl Dirty {
    /// Nothing changed.
    pub(crate) const NONE: Dirty = Dirty {
        lo: ENTRIES_PER_TABLE,
        hi: 0,
    };
    /// The whole table (a new table: its zeros must be written too).
    pub(crate) const ALL: Dirty = Dirty {
        lo: 0,
        hi: ENTRIES_PER_TABLE - 1,
    };

    /// Entries `a..=b` changed.
    pub(crate) fn mark(&mut self, a: usize, b: usize) {
        self.lo = self.lo.min(a);
        self.hi = self.hi.max(b);
    }
}

/// A table frame mapped for host access: its GPA and a 4 KiB volatile slice of it.
pub(crate) struct TableView<'m, B: BitmapSlice> {
    pub(crate) gpa: Gpa,
    slice: VolatileSlice<'m, B>,
}

/// A view of table frame `pfn`, or a [`PagingError::Memory`] error if the frame is not
/// entirely inside one guest memory region.
pub(crate) fn view<M: GuestMemoryBackend>(mem: &M, pfn: Pfn) -> Result<TableView<'_, MS<'_, M>>> {
    let gpa = pfn.gpa()?;
    let slice = mem
        .get_slice(gpa.to_guest_address(), PAGE_SIZE as usize)
        .map_err(|source| PagingError::Memory { gpa, source })?;
    Ok(TableView { gpa, slice })
}

/// Read entry `index` of the table at `table` (one `read_obj::<u64>` at its GPA).
pub(crate) fn read_entry<M: GuestMemoryBackend>(mem: &M, table: Gpa, index: usize) -> Result<u64> {
    let gpa = entry_gpa(table, index);
    mem.read_obj::<u64>(gpa.to_guest_address())
        .map_err(|source| PagingError::Memory { gpa, source })
}

fn entry_gpa(table: Gpa, index: usize) -> Gpa {
    // A table GPA is page aligned and index < 512, so this stays inside the frame.
    Gpa::new(table.raw() | ((index % ENTRIES_PER_TABLE) as u64 * 8))
}

impl<B: BitmapSlice> TableView<'_, B> {
    fn mem_err(&self, e: vm_memory::VolatileMemoryError) -> PagingError {
        PagingError::Memory {
            gpa: self.gpa,
            source: e.into(),
        }
    }

    /// Entries `a..=b` of this table, read with one 8-byte read for a single entry, one copy
    /// for a run.
    pub(crate) fn read(&self, a: usize, b: usize) -> Result<Slots> {
        let mut slots = Slots::new(a, b);
        if slots.len == 1 {
            let v = self
                .slice
                .read_obj::<u64>(a * 8)
                .map_err(|e| self.mem_err(e))?;
            slots.set(a, v);
        } else if slots.len > 1 {
            let (p, len) = (slots.pos(a).unwrap_or(0), slots.len);
            let bytes = slots
                .storage_bytes_mut()
                .get_mut(p * 8..(p + len) * 8)
                .unwrap_or_default();
            self.slice
                .read_slice(bytes, a * 8)
                .map_err(|e| self.mem_err(e))?;
        }
        Ok(slots)
    }

    /// True if the whole table is zero, given `slots` read from it (and maybe edited since):
    /// reads the other entries, 32 at a time, only when the held ones are all zero.
    pub(crate) fn is_empty_with(&self, slots: &Slots) -> Result<bool> {
        if !slots.held_zero() {
            return Ok(false);
        }
        let (a, end) = (slots.a, slots.a + slots.len);
        const CHUNK: usize = 32;
        let mut chunk = [0u64; CHUNK];
        let mut i = 0;
        while i < ENTRIES_PER_TABLE {
            if (a..end).contains(&i) {
                i = end;
                continue;
            }
            let stop = if i < a { a } else { ENTRIES_PER_TABLE }.min(i + CHUNK);
            let n = stop - i;
            let bytes = ByteValued::as_mut_slice(&mut chunk)
                .get_mut(..n * 8)
                .unwrap_or_default();
            self.slice
                .read_slice(bytes, i * 8)
                .map_err(|e| self.mem_err(e))?;
            if chunk.iter().take(n).fold(0, |acc, &e| acc | e) != 0 {
                return Ok(false);
            }
            i = stop;
        }
        Ok(true)
    }

    /// Write the `dirty` run of `slots` back: one `write_obj::<u64>` at the entry's GPA for a
    /// single entry, one copy for a run.
    pub(crate) fn write_back<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        slots: &Slots,
        dirty: Dirty,
    ) -> Result<()> {
        if dirty.lo > dirty.hi || dirty.hi >= ENTRIES_PER_TABLE {
            return Ok(());
        }
        if dirty.lo == dirty.hi {
            let gpa = entry_gpa(self.gpa, dirty.lo);
            return mem
                .write_obj::<u64>(slots.get(dirty.lo), gpa.to_guest_address())
                .map_err(|source| PagingError::Memory { gpa, source });
        }
        let bytes = slots.range_bytes(dirty.lo, dirty.hi);
        self.slice
            .write_slice(bytes, dirty.lo * 8)
            .map_err(|e| self.mem_err(e))
    }

    /// Write a whole new table: entries `a..=b` are `first + (i - a) * step`, all others
    /// zero. One pass of aligned stores straight into guest memory, with AVX2 when the host
    /// has it (falls back to a buffered copy if the host mapping is not 8-byte aligned).
    pub(crate) fn write_fresh_leaves<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        a: usize,
        b: usize,
        first: u64,
        step: u64,
    ) -> Result<()> {
        if a > b || b >= ENTRIES_PER_TABLE {
            return Ok(());
        }
        let guard = self.slice.ptr_guard_mut();
        let ptr = guard.as_ptr().cast::<u64>();
        if guard.len() < ENTRIES_PER_TABLE * 8 || !ptr.is_aligned() {
            return self.write_fresh_leaves_buffered(mem, a, b, first, step);
        }
        // SAFETY: `ptr` is the host address of this 4 KiB table frame: the slice was obtained
        // from `mem` with a length of 4096 (checked just above) and `mem` outlives `self`, so
        // `ptr..ptr + 512` u64s are mapped and writable for the whole call; `ptr` is 8-byte
        // aligned (checked). `a <= b < 512`, so every offset below is inside the frame. Only
        // raw-pointer writes of plain integers are made and no Rust reference to guest memory
        // is created; a concurrently running vCPU can only observe whole aligned 8-byte
        // entries, as with vm-memory's own `write_slice` (which uses `copy_nonoverlapping`).
        // `fill_avx2` is called only when the CPU supports AVX2.
        unsafe {
            if a > 0 {
                core::ptr::write_bytes(ptr, 0, a);
            }
            let run = ptr.add(a);
            let n = b - a + 1;
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                fill_avx2(run, n, first, step);
            } else {
                fill(run, n, first, step);
            }
            #[cfg(not(target_arch = "x86_64"))]
            fill(run, n, first, step);
            if b + 1 < ENTRIES_PER_TABLE {
                core::ptr::write_bytes(ptr.add(b + 1), 0, ENTRIES_PER_TABLE - 1 - b);
            }
        }
        self.slice.bitmap().mark_dirty(0, ENTRIES_PER_TABLE * 8);
        Ok(())
    }

    #[cold]
    fn write_fresh_leaves_buffered<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        a: usize,
        b: usize,
        first: u64,
        step: u64,
    ) -> Result<()> {
        let mut slots = Slots::whole();
        let mut entry = first;
        for e in slots.range_mut(a, b) {
            *e = entry;
            entry = entry.wrapping_add(step);
        }
        self.write_back(mem, &slots, Dirty::ALL)
    }
}

/// Write `n` entries `first, first + step, …` at `run`.
///
/// # Safety
/// `run` must be valid for writes of `n` aligned `u64`s.
#[inline(always)]
unsafe fn fill(run: *mut u64, n: usize, first: u64, step: u64) {
    let mut entry = first;
    for k in 0..n {
        // SAFETY: `k < n`, and the caller guarantees `run..run + n` is writable and aligned.
        unsafe { run.add(k).write(entry) };
        entry = entry.wrapping_add(step);
    }
}

/// [`fill`] compiled for AVX2 (32-byte stores).
///
/// # Safety
/// As [`fill`]; the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2(run: *mut u64, n: usize, first: u64, step: u64) {
    // SAFETY: forwarded from the caller.
    unsafe { fill(run, n, first, step) }
}
