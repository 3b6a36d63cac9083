//! The recursive editors behind `map_range`, `unmap` and `protect`.
//!
//! Every edit walks the GVA range table by table: each visited table is read into a local
//! buffer once ([`Slots`]), edited there and its changed entries written back in one copy (see
//! `io.rs`). A new table is written whole (zeros included), so zeroing costs no extra pass;
//! a new leaf table is written in one pass straight into guest memory.

use super::flush::{owed_for, reduces};
use super::io::{self, Dirty, Slots, TableView};
use super::mapper::Mapper;
use super::pte::{Pte, PteFlags, ADDR_MASK};
use super::table::{entry_index, entry_span, TABLE_ENTRY_FLAGS};
use super::{PageSize, PageTables, PagingError, Protected, Result, Unmapped};
use crate::addr::Gva;
use vm_memory::bitmap::MS;
use vm_memory::GuestMemoryBackend;

/// What a `map_range` writes.
pub(super) struct MapReq {
    /// First GVA of the whole request.
    pub(super) first: u64,
    /// GPA mapped at `first`.
    pub(super) gpa_first: u64,
    /// Level of the leaves (1–3).
    pub(super) level: u8,
    /// Leaf flags, HUGE included for 2M / 1G.
    pub(super) leaf_bits: u64,
    /// The last GVA mapped so far by this request (what a rollback clears).
    pub(super) progress: Option<u64>,
}

/// Which leaves a removal walk clears.
#[derive(Clone, Copy)]
pub(super) struct Removal {
    /// Leaves entirely inside `[walk first, clear_last]` are cleared; `None` clears nothing
    /// (the walk only frees empty tables).
    pub(super) clear_last: Option<u64>,
}

impl<'a, M: GuestMemoryBackend> Mapper<'a, M> {
    /// Map `[first, last]` (inside the span of `view`, a table at `level`). `fresh`: the
    /// table was just allocated (contents unknown, treated as zero, written whole).
    /// `req.progress` is the last GVA mapped so far by this request.
    pub(super) fn map_in(
        &mut self,
        view: &TableView<'a, MS<'a, M>>,
        level: u8,
        fresh: bool,
        first: u64,
        last: u64,
        req: &mut MapReq,
    ) -> Result<()> {
        if fresh && level == req.level {
            // The common case of a large map: a new leaf table, written in one pass.
            let a = entry_index(first, level);
            let b = entry_index(last, level);
            let first_entry = (req.gpa_first + (first - req.first)) | req.leaf_bits;
            view.write_fresh_leaves(self.mem, a, b, first_entry, entry_span(level))?;
            self.count_leaves(level, (b - a + 1) as u64);
            req.progress = Some(last);
            return Ok(());
        }
        let (mut buf, mut dirty) = if fresh {
            (Slots::whole(), Dirty::ALL)
        } else {
            let (a, b) = (entry_index(first, level), entry_index(last, level));
            (view.read(a, b)?, Dirty::NONE)
        };
        let res = if level == req.level {
            self.fill_leaves(&mut buf, &mut dirty, level, fresh, (first, last), req)
        } else {
            self.map_children(&mut buf, &mut dirty, level, first, last, req)
        };
        // Written back on error too: the entries set so far link tables that were created
        // (and must be found by the rollback).
        let wb = view.write_back(self.mem, &buf, dirty);
        res.and(wb)
    }

    fn count_leaves(&mut self, level: u8, n: u64) {
        if let Some(size) = PageSize::from_level(level) {
            self.pt.leaves_per_size[size.index()] += n;
        }
    }

    fn fill_leaves(
        &mut self,
        buf: &mut Slots,
        dirty: &mut Dirty,
        level: u8,
        fresh: bool,
        (first, last): (u64, u64),
        req: &mut MapReq,
    ) -> Result<()> {
        let step = entry_span(level);
        let a = entry_index(first, level);
        let b = entry_index(last, level);
        let entries = buf.range_mut(a, b);
        if !fresh {
            if let Some(k) = entries.iter().position(|&e| Pte::from_raw(e).is_present()) {
                return Err(PagingError::AlreadyMapped {
                    gva: Gva::new_truncate(first + k as u64 * step),
                });
            }
        }
        // gpa_first + (first - req.first) is aligned to `step` and the whole GPA range lies
        // below 2^52 (checked), so adding k * step never carries into the flag bits.
        let base = (req.gpa_first + (first - req.first)) | req.leaf_bits;
        for (k, e) in entries.iter_mut().enumerate() {
            *e = base + k as u64 * step;
        }
        dirty.mark(a, b);
        self.count_leaves(level, (b - a + 1) as u64);
        req.progress = Some(last);
        Ok(())
    }

    fn map_children(
        &mut self,
        buf: &mut Slots,
        dirty: &mut Dirty,
        level: u8,
        first: u64,
        last: u64,
        req: &mut MapReq,
    ) -> Result<()> {
        let span = entry_span(level);
        let mut va = first;
        loop {
            let idx = entry_index(va, level);
            let sub_last = last.min(va | (span - 1));
            let pte = Pte::from_raw(buf.get(idx));
            if !pte.is_present() {
                let (child, child_view) =
                    self.pt
                        .alloc_table(self.mem, &mut *self.frames, level - 1)?;
                buf.set(idx, Pte::new(child.gpa()?, TABLE_ENTRY_FLAGS).raw());
                dirty.mark(idx, idx);
                self.map_in(&child_view, level - 1, true, va, sub_last, req)?;
            } else if pte.is_leaf(level) {
                return Err(PagingError::WouldSplitLargePage {
                    gva: Gva::new_truncate(va),
                    leaf_gva: Gva::new_truncate(va & !(span - 1)),
                    page_size: PageSize::from_level(level).unwrap_or(PageSize::Size1G),
                });
            } else {
                let child = self.pt.child_table(pte, level, va)?;
                let child_view = io::view(self.mem, child)?;
                self.map_in(&child_view, level - 1, false, va, sub_last, req)?;
            }
            if sub_last == last {
                return Ok(());
            }
            va = sub_last + 1;
        }
    }

    /// Undo a failed `map_range` of `[first, last]`: clear the leaves it wrote
    /// (`[first, progress]`) and free the tables left empty anywhere in the range.
    pub(super) fn rollback(&mut self, first: u64, last: u64, progress: Option<u64>) {
        let removal = Removal {
            clear_last: progress,
        };
        let res = io::view(self.mem, self.pt.root)
            .and_then(|root| self.remove_in(&root, 4, first, last, removal, None));
        if let Err(e) = res {
            log::error!("page-table rollback of {first:#x}..={last:#x} failed: {e}");
        }
    }

    // ---- unmap --------------------------------------------------------------------------

    /// Clear the leaves of `[first, last]` selected by `removal`, free child tables that end
    /// up empty. Returns true if this table is empty afterwards.
    pub(super) fn remove_in(
        &mut self,
        view: &TableView<'a, MS<'a, M>>,
        level: u8,
        first: u64,
        last: u64,
        removal: Removal,
        mut out: Option<&mut Unmapped>,
    ) -> Result<bool> {
        let mut buf = view.read(entry_index(first, level), entry_index(last, level))?;
        let mut dirty = Dirty::NONE;
        let span = entry_span(level);
        let mut va = first;
        let mut res = Ok(());
        loop {
            let idx = entry_index(va, level);
            let base = va & !(span - 1);
            let span_last = base | (span - 1);
            let sub_last = last.min(span_last);
            let pte = Pte::from_raw(buf.get(idx));
            if pte.is_leaf(level) {
                let inside = base == va && sub_last == span_last;
                let selected = removal.clear_last.is_some_and(|c| span_last <= c);
                if inside && selected {
                    buf.set(idx, 0);
                    dirty.mark(idx, idx);
                    if let Some(size) = PageSize::from_level(level) {
                        let n = &mut self.pt.leaves_per_size[size.index()];
                        *n = n.saturating_sub(1);
                        if let Some(out) = out.as_deref_mut() {
                            out.leaves
                                .push((Gva::new_truncate(base), pte.leaf_addr(level), size));
                            out.flush.absorb(owed_for(pte.raw()));
                        }
                    }
                }
            } else if pte.is_present() {
                let mem = self.mem;
                let child = self
                    .pt
                    .child_table(pte, level, va)
                    .and_then(|c| Ok((c, io::view(mem, c)?)));
                let emptied = child.and_then(|(c, cv)| {
                    let e =
                        self.remove_in(&cv, level - 1, va, sub_last, removal, out.as_deref_mut())?;
                    Ok((c, e))
                });
                match emptied {
                    Ok((c, true)) => {
                        buf.set(idx, 0);
                        dirty.mark(idx, idx);
                        self.pt.free_table(&mut *self.frames, c);
                    }
                    Ok((_, false)) => {}
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            if sub_last == last {
                break;
            }
            va = sub_last + 1;
        }
        let wb = view.write_back(self.mem, &buf, dirty);
        res.and(wb)?;
        view.is_empty_with(&buf)
    }
}

impl PageTables {
    // ---- protect ------------------------------------------------------------------------

    /// Give the leaves of `[first, last]` (inside the span of `view`, a table at `level`) the
    /// leaf `flags`, counting changed entries in `changed`.
    pub(super) fn protect_in<'a, M: GuestMemoryBackend>(
        &self,
        mem: &'a M,
        view: &TableView<'a, MS<'a, M>>,
        level: u8,
        (first, last): (u64, u64),
        flags: u64,
        out: &mut Protected,
    ) -> Result<()> {
        let mut buf = view.read(entry_index(first, level), entry_index(last, level))?;
        let mut dirty = Dirty::NONE;
        let span = entry_span(level);
        let keep = ADDR_MASK | PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits();
        let huge = if level > 1 { PteFlags::HUGE.bits() } else { 0 };
        let mut va = first;
        let mut res = Ok(());
        loop {
            let idx = entry_index(va, level);
            let sub_last = last.min(va | (span - 1));
            let pte = Pte::from_raw(buf.get(idx));
            if pte.is_leaf(level) {
                // Coverage was checked by `check_fully_mapped`.
                let new = (pte.raw() & keep) | flags | huge;
                if new != pte.raw() {
                    buf.set(idx, new);
                    dirty.mark(idx, idx);
                    out.changed += 1;
                    if reduces(pte.raw(), new) {
                        out.flush.absorb(owed_for(pte.raw()));
                    }
                }
            } else if pte.is_present() {
                let r = self
                    .child_table(pte, level, va)
                    .and_then(|c| io::view(mem, c))
                    .and_then(|cv| {
                        self.protect_in(mem, &cv, level - 1, (va, sub_last), flags, out)
                    });
                if let Err(e) = r {
                    res = Err(e);
                    break;
                }
            }
            if sub_last == last {
                break;
            }
            va = sub_last + 1;
        }
        let wb = view.write_back(mem, &buf, dirty);
        res.and(wb)
    }
}
