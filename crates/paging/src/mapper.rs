//! [`Mapper`]: the page-table edit view. It binds the tables, guest memory and the frame
//! source once (as the x86_64 crate's `OffsetPageTable` binds its tables and offset), so the
//! edits that may allocate or free table frames — map, map a range, unmap, the direct map —
//! take only their own arguments: `pt.edit(&mem, &mut frames).map(gva, gpa, size, flags)`.
//! [`PageTables::protect`] allocates nothing and stays on the tables.

use super::checks::check_va_range;
use super::direct::direct_map_plan;
use super::edit::{MapReq, Removal};
use super::io;
use super::pte::PteFlags;
use super::table::entry_span;
use super::{FrameSource, PageSize, PageTables, Result, Unmapped};
use crate::addr::{Gpa, Gva, PAGE_SIZE};
use vm_memory::GuestMemoryBackend;

/// The edit view of one [`PageTables`] over guest memory `M` and a frame source (see the
/// module doc). Built by [`PageTables::edit`]; cheap (three references).
pub struct Mapper<'a, M: GuestMemoryBackend> {
    pub(super) pt: &'a mut PageTables,
    pub(super) mem: &'a M,
    pub(super) frames: &'a mut dyn FrameSource,
}

impl PageTables {
    /// The edit view of these tables over `mem`, taking and giving back table frames through
    /// `frames`.
    pub fn edit<'a, M: GuestMemoryBackend>(
        &'a mut self,
        mem: &'a M,
        frames: &'a mut dyn FrameSource,
    ) -> Mapper<'a, M> {
        Mapper {
            pt: self,
            mem,
            frames,
        }
    }
}

impl<M: GuestMemoryBackend> Mapper<'_, M> {
    /// Map one page of `size` at `gva` → `gpa` with leaf `flags`.
    ///
    /// # Errors
    /// [`PagingError::AlreadyMapped`](crate::PagingError::AlreadyMapped) if `gva` is mapped (or, for a large page, any page in
    /// it), [`PagingError::WouldSplitLargePage`](crate::PagingError::WouldSplitLargePage) if a larger leaf covers `gva`,
    /// [`PagingError::Misaligned`](crate::PagingError::Misaligned) / [`PagingError::NonCanonical`](crate::PagingError::NonCanonical) /
    /// [`PagingError::GpaOutOfRange`](crate::PagingError::GpaOutOfRange) for bad arguments, [`PagingError::MissingPresent`](crate::PagingError::MissingPresent) /
    /// [`PagingError::UnsupportedFlags`](crate::PagingError::UnsupportedFlags) for bad flags, [`PagingError::WritableTableFrame`](crate::PagingError::WritableTableFrame),
    /// frame-source and memory errors. The tables are unchanged on error.
    pub fn map(&mut self, gva: Gva, gpa: Gpa, size: PageSize, flags: PteFlags) -> Result<()> {
        self.map_range(gva, gpa, size.bytes(), size, flags)
    }

    /// Map `len` bytes at `gva` → `gpa` (physically contiguous) with pages of `size`. All or
    /// nothing: on error, whatever this call mapped is unmapped again and the tables it
    /// created are freed.
    ///
    /// # Errors
    /// As [`Mapper::map`]; `len` must be a non-zero multiple of `size`.
    pub fn map_range(
        &mut self,
        gva: Gva,
        gpa: Gpa,
        len: u64,
        size: PageSize,
        flags: PteFlags,
    ) -> Result<()> {
        self.pt.check_leaf_flags(flags)?;
        let align = size.bytes();
        let last = check_va_range(gva, len, align)?;
        let gpa_last = self.pt.check_gpa_range(gpa, len, align)?;
        let writable = flags.contains(PteFlags::WRITABLE);
        if writable {
            self.pt.check_no_table_in(gpa.raw(), gpa_last)?;
        }
        let level = size.level();
        let huge = if level > 1 { PteFlags::HUGE.bits() } else { 0 };
        let mut req = MapReq {
            first: gva.raw(),
            gpa_first: gpa.raw(),
            level,
            leaf_bits: flags.bits() | huge,
            progress: None,
        };
        // Room for the page tables a large map creates (one per 512 leaves), capped: `len`
        // may be hostile and the frames run out long before.
        let new_tables = (len / entry_span(level + 1)).saturating_add(3).min(4096);
        self.pt.tables.reserve(new_tables as usize);
        let root = io::view(self.mem, self.pt.root)?;
        let mut res = self.map_in(&root, 4, false, gva.raw(), last, &mut req);
        if res.is_ok() && writable {
            // Tables created by this call must not be inside the writable range either.
            res = self.pt.check_no_table_in(gpa.raw(), gpa_last);
        }
        if let Err(e) = res {
            self.rollback(gva.raw(), last, req.progress);
            return Err(e);
        }
        Ok(())
    }

    /// Unmap every page in `[gva, gva + len)`. Returns the removed leaves `(gva, gpa, size)`
    /// in GVA order (the caller frees the data frames) and the shadow flush owed
    /// ([`Unmapped`]); page-table frames that become empty are freed (never the PML4).
    ///
    /// Policy: every 4 KiB page of the range must be mapped and every large leaf touched
    /// must lie entirely inside the range; otherwise nothing changes.
    ///
    /// # Errors
    /// [`PagingError::NotMapped`](crate::PagingError::NotMapped) (first unmapped address),
    /// [`PagingError::WouldSplitLargePage`](crate::PagingError::WouldSplitLargePage), argument errors; the tables are unchanged.
    pub fn unmap(&mut self, gva: Gva, len: u64) -> Result<Unmapped> {
        let last = check_va_range(gva, len, PAGE_SIZE)?;
        self.pt
            .check_fully_mapped(self.mem, gva.raw(), last, false)?;
        let mut out = Unmapped::default();
        let root = io::view(self.mem, self.pt.root)?;
        let removal = Removal {
            clear_last: Some(last),
        };
        self.remove_in(&root, 4, gva.raw(), last, removal, Some(&mut out))?;
        Ok(out)
    }

    /// Map every RAM range of `ram` at `base + gpa` with leaf `flags`, using 2 MiB pages (1 GiB
    /// pages with `use_1g`, i.e. CPUID.80000001H:EDX.Page1GB) where GVA and GPA are aligned and
    /// 4 KiB pages at unaligned edges; holes between ranges stay unmapped. All or nothing: on
    /// error, everything this call mapped is unmapped again.
    ///
    /// `base` should be 1 GiB aligned for 1 GiB pages (else the largest alignment of `base`
    /// limits the page size). With `WRITABLE` in `flags`, `ram` must not contain page-table
    /// frames ([`PagingError::WritableTableFrame`](crate::PagingError::WritableTableFrame)): leave the table pool out and map it
    /// read-only separately.
    ///
    /// # Errors
    /// As [`direct_map_plan`] and [`Mapper::map_range`] (e.g.
    /// [`PagingError::AlreadyMapped`](crate::PagingError::AlreadyMapped) for overlapping ranges).
    pub fn map_direct(
        &mut self,
        base: Gva,
        ram: &[(Gpa, u64)],
        use_1g: bool,
        flags: PteFlags,
    ) -> Result<()> {
        let plan = direct_map_plan(base, ram, use_1g)?;
        for (i, seg) in plan.iter().enumerate() {
            if let Err(e) = self.map_range(seg.gva, seg.gpa, seg.len, seg.size, flags) {
                for done in plan.iter().take(i).rev() {
                    match self.unmap(done.gva, done.len) {
                        // Leaves this call mapped were never accessed: no flush is owed.
                        Ok(u) => _ = u.flush.discard(),
                        Err(u) => log::error!("direct-map rollback of {} failed: {u}", done.gva),
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
}
