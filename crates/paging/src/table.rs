//! [`PageTables`]: the state (root, table frames, counters), its public editing API (map,
//! unmap, protect) and table-frame bookkeeping. The argument checks are in `checks.rs`, the
//! recursive editors in `edit.rs`, the read-only side (translate, leaves, dump, summary) in
//! `walk.rs`.

use super::checks::check_va_range;
use super::io::{self, Dirty, Slots, TableView};
use super::pte::{Pte, PteFlags};
use super::tableset::TableSet;
use super::{FrameSource, PagingError, Result};
use crate::addr::{Gva, Pfn, PAGE_SIZE};
use vm_memory::bitmap::MS;
use vm_memory::GuestMemoryBackend;

/// Flags of every intermediate entry (PML4E, PDPTE, PDE pointing to a table): `P | RW | US`,
/// NX clear, so that the leaf alone decides the effective rights (SDM Vol. 3A §4.6).
pub const TABLE_ENTRY_FLAGS: PteFlags = PteFlags::PRESENT
    .union(PteFlags::WRITABLE)
    .union(PteFlags::USER);

/// CPU facts the tables depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PagingConfig {
    /// MAXPHYADDR (CPUID.80000008H:EAX bits 7:0); clamped to 32..=52. Mapped GPAs and table
    /// frames must lie below `2^phys_addr_bits`.
    pub phys_addr_bits: u8,
    /// IA32_EFER.NXE is set: NX may be used (else leaf flags with NX are refused).
    pub nx_enabled: bool,
}

impl Default for PagingConfig {
    fn default() -> Self {
        PagingConfig {
            phys_addr_bits: 52,
            nx_enabled: true,
        }
    }
}

/// A guest's 4-level page tables (with an optional PML5 above them, `la57.rs`), living in
/// guest RAM.
///
/// Holds the root (PML4) frame, every table frame with its level, and counters. See the
/// [module docs](super) for the policies (intermediate flags, all-or-nothing, table frames).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PageTables {
    pub(super) root: Pfn,
    /// The PML5 above the PML4 under 5-level paging ([`PageTables::enable_la57`]).
    #[serde(default)]
    pub(super) pml5: Option<Pfn>,
    /// Every table frame (root and PML5 included) → its level (5 = PML5, 4 = PML4 … 1 = PT).
    pub(super) tables: TableSet,
    /// Table frames per level, index `level - 1` (the PML5 at index 4).
    pub(super) tables_per_level: [u64; 5],
    /// Leaf entries per page size, index [`PageSize::index`].
    pub(super) leaves_per_size: [u64; 3],
    pub(super) config: PagingConfig,
    /// Entries given reserved bits by [`PageTables::poison_entry`] (test tables only):
    /// entry GPA → the bits set.
    pub(super) poisoned: std::collections::BTreeMap<u64, u64>,
}

/// Span in bytes covered by one entry of a table at `level` (1–4).
pub(super) const fn entry_span(level: u8) -> u64 {
    1 << (12 + 9 * (level as u32 - 1))
}

/// Index of the entry for `va` in a table at `level`.
pub(super) const fn entry_index(va: u64, level: u8) -> usize {
    ((va >> (12 + 9 * (level as u32 - 1))) & 0x1ff) as usize
}

impl PageTables {
    /// Empty tables: allocates and zeroes the PML4. Default [`PagingConfig`] (52-bit
    /// physical addresses, NX enabled).
    ///
    /// # Errors
    /// Frame-source errors; [`PagingError::Memory`] if the frame is not in guest memory.
    pub fn new<M: GuestMemoryBackend>(mem: &M, frames: &mut dyn FrameSource) -> Result<Self> {
        Self::with_config(mem, frames, PagingConfig::default())
    }

    /// Empty tables for a CPU described by `config`.
    ///
    /// # Errors
    /// As [`PageTables::new`].
    pub fn with_config<M: GuestMemoryBackend>(
        mem: &M,
        frames: &mut dyn FrameSource,
        config: PagingConfig,
    ) -> Result<Self> {
        let config = PagingConfig {
            phys_addr_bits: config.phys_addr_bits.clamp(32, 52),
            ..config
        };
        let mut pt = PageTables {
            root: Pfn::new(0),
            pml5: None,
            tables: TableSet::default(),
            tables_per_level: [0; 5],
            leaves_per_size: [0; 3],
            config,
            poisoned: std::collections::BTreeMap::new(),
        };
        let (root, view) = pt.alloc_table(mem, frames, 4)?;
        if let Err(e) = view.write_back(mem, &Slots::whole(), Dirty::ALL) {
            pt.free_table(frames, root);
            return Err(e);
        }
        pt.root = root;
        Ok(pt)
    }

    /// The PML4 frame; its GPA is the CR3 value (PCID 0, PWT = PCD = 0) under 4-level
    /// paging (under 5-level paging CR3 is [`Self::cr3_root`], the PML5).
    pub fn root(&self) -> Pfn {
        self.root
    }

    /// The configuration in use.
    pub fn config(&self) -> PagingConfig {
        self.config
    }

    /// True if `pfn` holds one of these tables.
    pub fn is_table_frame(&self, pfn: Pfn) -> bool {
        self.tables.get(pfn).is_some()
    }

    /// Level of table frame `pfn` (5 = PML5, 4 = PML4 … 1 = PT), `None` if it is not a table.
    pub fn table_level(&self, pfn: Pfn) -> Option<u8> {
        self.tables.get(pfn)
    }

    /// Every table frame, ascending.
    pub fn table_frames(&self) -> impl Iterator<Item = Pfn> + '_ {
        self.tables.sorted().into_iter()
    }

    /// Number of table frames (root included).
    pub fn table_frame_count(&self) -> u64 {
        self.tables.len() as u64
    }

    /// Give every table frame, the PML4 (and PML5) included, back to `frames`. The guest must not run
    /// on these tables any more.
    pub fn free_all(self, frames: &mut dyn FrameSource) {
        for pfn in self.tables.into_pfns() {
            frames.free_table_frame(pfn);
        }
    }

    /// Give every leaf in `[gva, gva + len)` the leaf `flags`, keeping its address and page
    /// size. The accessed and dirty bits the CPU set are kept (ORed with `flags`). Returns
    /// the number of leaf entries whose value changed (0: no TLB flush needed) and the shadow
    /// flush owed for the rights taken away ([`Protected`](crate::Protected)).
    ///
    /// Same range policy as [`Mapper::unmap`](crate::Mapper::unmap); `flags` as for [`Mapper::map`](crate::Mapper::map). (No table
    /// frame is allocated or freed, so this edit needs no [`Mapper`](crate::Mapper).)
    ///
    /// # Errors
    /// [`PagingError::NotMapped`], [`PagingError::WouldSplitLargePage`],
    /// [`PagingError::WritableTableFrame`], flag and argument errors; the tables are
    /// unchanged.
    pub fn protect<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        gva: Gva,
        len: u64,
        flags: PteFlags,
    ) -> Result<crate::Protected> {
        self.check_leaf_flags(flags)?;
        let last = check_va_range(gva, len, PAGE_SIZE)?;
        self.check_fully_mapped(mem, gva.raw(), last, flags.contains(PteFlags::WRITABLE))?;
        let root = io::view(mem, self.root)?;
        let mut out = crate::Protected::default();
        self.protect_in(mem, &root, 4, (gva.raw(), last), flags.bits(), &mut out)?;
        Ok(out)
    }

    // ---- table frames -------------------------------------------------------------------

    /// A new table frame for `level`, registered, with a view of it. Its contents are not
    /// zeroed here: the caller writes the whole frame.
    pub(super) fn alloc_table<'m, M: GuestMemoryBackend>(
        &mut self,
        mem: &'m M,
        frames: &mut dyn FrameSource,
        level: u8,
    ) -> Result<(Pfn, TableView<'m, MS<'m, M>>)> {
        let pfn = frames.alloc_table_frame()?;
        let checked = pfn
            .gpa()
            .map_err(PagingError::from)
            .and_then(|gpa| self.check_gpa_range(gpa, PAGE_SIZE, PAGE_SIZE))
            .and_then(|_| io::view(mem, pfn));
        let view = match checked {
            Ok(view) => view,
            Err(e) => {
                // (A live table frame always passes these checks, so this is never one.)
                frames.free_table_frame(pfn);
                return Err(e);
            }
        };
        if self.tables.insert_new(pfn, level) {
            self.tables_per_level[usize::from(level - 1)] += 1;
            Ok((pfn, view))
        } else {
            // Not ours to free: it is a live table.
            Err(PagingError::DuplicateTableFrame { pfn })
        }
    }

    pub(super) fn free_table(&mut self, frames: &mut dyn FrameSource, pfn: Pfn) {
        if let Some(level) = self.tables.remove(pfn) {
            let n = &mut self.tables_per_level[usize::from(level.clamp(1, 5) - 1)];
            *n = n.saturating_sub(1);
            frames.free_table_frame(pfn);
        }
    }

    /// The table that non-leaf entry `pte` of a table at `level` points to: it must be one of
    /// ours, at `level - 1`.
    pub(super) fn child_table(&self, pte: Pte, level: u8, va: u64) -> Result<Pfn> {
        let pfn = pte.addr().pfn();
        if level > 1 && self.tables.get(pfn) == Some(level - 1) && pfn != self.root {
            Ok(pfn)
        } else {
            Err(PagingError::CorruptTable {
                gva: Gva::new_truncate(va),
                level,
                pte: pte.raw(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_indices() {
        assert_eq!(entry_span(1), 4096);
        assert_eq!(entry_span(2), 2 << 20);
        assert_eq!(entry_span(3), 1 << 30);
        assert_eq!(entry_span(4), 1 << 39);
        let va = 0xffff_8880_0020_1000u64;
        for level in 1..=4 {
            assert_eq!(
                entry_index(va, level),
                Gva::new(va).table_index(level.into())
            );
        }
    }
}
