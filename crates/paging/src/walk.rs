//! The read-only side of [`PageTables`]: [`translate`](PageTables::translate) (a software
//! walk with the effective rights of SDM Vol. 3A §4.6), [`leaves`](PageTables::leaves),
//! [`dump`](PageTables::dump) and [`summary`](PageTables::summary).

use super::checks::check_va_range;
use super::io;
use super::pte::{Pte, PteFlags};
use super::table::{entry_index, entry_span};
use super::{PageSize, PageTables, PagingError, Result};
use crate::addr::{Gpa, Gva, Pfn, PAGE_SIZE};
use std::fmt::Write as _;
use vm_memory::GuestMemoryBackend;

/// One entry read by a [`PageTables::translate`] walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEntry {
    /// Level of the table (4 = PML4 … 1 = PT).
    pub level: u8,
    /// The table frame.
    pub table: Pfn,
    /// Index of the entry in the table (0–511).
    pub index: u16,
    /// The entry.
    pub pte: Pte,
}

/// The rights an access through a translation has, combined over all levels (SDM Vol. 3A
/// §4.6, with CR0.WP = 1 and IA32_EFER.NXE as configured): writable and user are the AND
/// of R/W and U/S over all levels; executable is the NOR of XD over all levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EffectiveAccess {
    /// Writes allowed (supervisor writes too, since CR0.WP = 1).
    pub writable: bool,
    /// User-mode accesses allowed.
    pub user: bool,
    /// Instruction fetches allowed.
    pub executable: bool,
}

/// Result of [`PageTables::translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The translated address.
    pub gva: Gva,
    /// Its guest physical address (page frame + offset).
    pub gpa: Gpa,
    /// Size of the leaf page.
    pub page_size: PageSize,
    /// The leaf entry.
    pub leaf_pte: Pte,
    /// Effective rights over the whole walk.
    pub effective: EffectiveAccess,
    /// The entries read, PML4E first; `None` past the leaf.
    pub walk: [Option<WalkEntry>; 4],
}

impl Translation {
    /// The entries read, PML4E first.
    pub fn entries(&self) -> impl Iterator<Item = &WalkEntry> {
        self.walk.iter().flatten()
    }
}

/// One leaf mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// First GVA of the page.
    pub gva: Gva,
    /// First GPA of the page.
    pub gpa: Gpa,
    /// Page size.
    pub size: PageSize,
    /// Leaf flags without [`PteFlags::HUGE`] (as given to `map`, plus A/D if set by the CPU).
    pub flags: PteFlags,
}

/// Counts of a [`PageTables`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct PageTableSummary {
    /// GPA of the PML4 (the CR3 value).
    pub root_gpa: u64,
    /// All table frames (root included).
    pub table_frames: u64,
    /// PML4 frames (1).
    pub pml4_tables: u64,
    /// PDPT frames.
    pub pdpt_tables: u64,
    /// PD frames.
    pub pd_tables: u64,
    /// PT frames.
    pub pt_tables: u64,
    /// 4 KiB leaves.
    pub mappings_4k: u64,
    /// 2 MiB leaves.
    pub mappings_2m: u64,
    /// 1 GiB leaves.
    pub mappings_1g: u64,
    /// Bytes mapped by all leaves (saturating).
    pub mapped_bytes: u64,
}

/// What a range walk meets.
pub(super) enum Visit {
    /// Nothing is mapped from `va` to the end of the current entry's span.
    Hole { va: u64 },
    /// A leaf of `size` at `base` (may start before the walked range) whose page holds `va`,
    /// the first walked address in it.
    Leaf {
        va: u64,
        base: u64,
        size: PageSize,
        pte: Pte,
    },
}

type Visitor<'a> = dyn FnMut(Visit) -> Result<()> + 'a;

impl PageTables {
    /// Walk `[first, last]` (canonical, one half), calling `f` in GVA order.
    pub(super) fn walk_range<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        first: u64,
        last: u64,
        f: &mut Visitor<'_>,
    ) -> Result<()> {
        self.walk_in(mem, self.root, 4, first, last, f)
    }

    fn walk_in<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        table: Pfn,
        level: u8,
        first: u64,
        last: u64,
        f: &mut Visitor<'_>,
    ) -> Result<()> {
        let buf =
            io::view(mem, table)?.read(entry_index(first, level), entry_index(last, level))?;
        let span = entry_span(level);
        let table_gpa = table.gpa()?.raw();
        let mut va = first;
        loop {
            let idx = entry_index(va, level);
            let sub_last = last.min(va | (span - 1));
            let pte = Pte::from_raw(buf.get(idx));
            let poisoned = !self.poisoned.is_empty()
                && self.poisoned_bits(table_gpa | (idx as u64 * 8)).is_some();
            if !pte.is_present() || poisoned {
                f(Visit::Hole { va })?;
            } else if pte.is_leaf(level) {
                let size = PageSize::from_level(level).unwrap_or(PageSize::Size4K);
                f(Visit::Leaf {
                    va,
                    base: va & !(span - 1),
                    size,
                    pte,
                })?;
            } else {
                let child = self.child_table(pte, level, va)?;
                self.walk_in(mem, child, level - 1, va, sub_last, f)?;
            }
            if sub_last == last {
                return Ok(());
            }
            va = sub_last + 1;
        }
    }

    /// [`Self::translate`] of a raw (untrusted) 64-bit GVA.
    ///
    /// # Errors
    /// [`PagingError::NonCanonical`] if `gva` is not canonical, else as [`Self::translate`].
    pub fn translate_raw<M: GuestMemoryBackend>(&self, mem: &M, gva: u64) -> Result<Translation> {
        self.translate(mem, crate::canonical(gva)?)
    }

    /// Software walk of `gva`, as the CPU would do it: the GPA, the page size, the leaf, the
    /// entries read and the effective rights.
    ///
    /// # Errors
    /// [`PagingError::NonCanonical`], [`PagingError::NotMapped`] (some level not present),
    /// [`PagingError::ReservedBits`] (the CPU would fault with RSVD),
    /// [`PagingError::CorruptTable`], [`PagingError::Memory`].
    pub fn translate<M: GuestMemoryBackend>(&self, mem: &M, gva: Gva) -> Result<Translation> {
        if !gva.is_canonical() {
            return Err(PagingError::NonCanonical { gva: gva.raw() });
        }
        let cfg = self.config;
        let mut walk = [None; 4];
        let (mut writable, mut user, mut nx) = (true, true, false);
        let mut table = self.root;
        for (slot, level) in walk.iter_mut().zip((1..=4u8).rev()) {
            let index = entry_index(gva.raw(), level);
            let pte = Pte::from_raw(io::read_entry(mem, table.gpa()?, index)?);
            *slot = Some(WalkEntry {
                level,
                table,
                index: index as u16,
                pte,
            });
            if !pte.is_present() {
                return Err(PagingError::NotMapped { gva });
            }
            let poisoned = self
                .poisoned_bits(table.gpa()?.raw() | (index as u64 * 8))
                .unwrap_or(0);
            let bits = pte.reserved_bits(level, cfg.phys_addr_bits, cfg.nx_enabled) | poisoned;
            if bits != 0 {
                return Err(PagingError::ReservedBits {
                    gva,
                    level,
                    pte: pte.raw(),
                    bits,
                });
            }
            let flags = pte.flags();
            writable &= flags.contains(PteFlags::WRITABLE);
            user &= flags.contains(PteFlags::USER);
            nx |= cfg.nx_enabled && flags.contains(PteFlags::NO_EXECUTE);
            if let (true, Some(page_size)) = (pte.is_leaf(level), PageSize::from_level(level)) {
                let offset = gva.raw() & (page_size.bytes() - 1);
                return Ok(Translation {
                    gva,
                    gpa: Gpa::new(pte.leaf_addr(level).raw() | offset),
                    page_size,
                    leaf_pte: pte,
                    effective: EffectiveAccess {
                        writable,
                        user,
                        executable: !nx,
                    },
                    walk,
                });
            }
            table = self.child_table(pte, level, gva.raw())?;
        }
        // Level 1 entries that are present are always leaves.
        Err(PagingError::NotMapped { gva })
    }

    /// Every leaf in GVA order (low half, then high half), or the first walk error.
    ///
    /// # Errors
    /// [`PagingError::CorruptTable`], [`PagingError::Memory`].
    pub fn try_leaves<M: GuestMemoryBackend>(&self, mem: &M) -> Result<Vec<Leaf>> {
        let mut out = Vec::new();
        self.leaves_in(mem, 0, u64::MAX, &mut out)?;
        Ok(out)
    }

    /// Every leaf in GVA order; a walk error ends the list early (see
    /// [`PageTables::try_leaves`]).
    pub fn leaves<M: GuestMemoryBackend>(&self, mem: &M) -> Vec<Leaf> {
        let mut out = Vec::new();
        let _ = self.leaves_in(mem, 0, u64::MAX, &mut out);
        out
    }

    /// The leaves that intersect `[gva, gva + len)`, in GVA order.
    ///
    /// # Errors
    /// Argument errors as for `unmap`, walk errors as for [`PageTables::try_leaves`].
    pub fn leaves_in_range<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        gva: Gva,
        len: u64,
    ) -> Result<Vec<Leaf>> {
        let last = check_va_range(gva, len, PAGE_SIZE)?;
        let mut out = Vec::new();
        self.leaves_in(mem, gva.raw(), last, &mut out)?;
        Ok(out)
    }

    fn leaves_in<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        first: u64,
        last: u64,
        out: &mut Vec<Leaf>,
    ) -> Result<()> {
        self.visit_leaves(mem, first, last, &mut |l| out.push(l))
    }

    /// Call `f` for every leaf whose page starts in `[first, last]` or contains `first`, in
    /// GVA order, skipping the non-canonical hole.
    fn visit_leaves<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        first: u64,
        last: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<()> {
        const LOW_LAST: u64 = (1 << 47) - 1;
        const HIGH_FIRST: u64 = !LOW_LAST;
        let mut visit = |v: Visit| {
            if let Visit::Leaf {
                base, size, pte, ..
            } = v
            {
                f(Leaf {
                    gva: Gva::new_truncate(base),
                    gpa: pte.leaf_addr(size.level()),
                    size,
                    flags: pte.flags() - PteFlags::HUGE,
                });
            }
            Ok(())
        };
        if first <= LOW_LAST {
            self.walk_range(mem, first, last.min(LOW_LAST), &mut visit)?;
        }
        if last >= HIGH_FIRST {
            self.walk_range(mem, first.max(HIGH_FIRST), last, &mut visit)?;
        }
        Ok(())
    }

    /// Human-readable listing: a header with the counts, then one line per run of leaves
    /// contiguous in GVA and GPA with the same size and flags (exclusive end GVA):
    ///
    /// ```text
    /// 0xffff888000000000-0xffff889000000000 -> 0x0000000000000000  2M x32768  P RW G NX
    /// ```
    ///
    /// Runs are coalesced during the walk, so the output is one line per run whatever the
    /// number of leaves. A walk error ends the listing with a `walk error:` line.
    pub fn dump<M: GuestMemoryBackend>(&self, mem: &M) -> String {
        let s = self.summary(mem);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "page tables: CR3 {:#x}, {} table frames (PML4 {}, PDPT {}, PD {}, PT {}); \
             leaves 4K {}, 2M {}, 1G {}",
            s.root_gpa,
            s.table_frames,
            s.pml4_tables,
            s.pdpt_tables,
            s.pd_tables,
            s.pt_tables,
            s.mappings_4k,
            s.mappings_2m,
            s.mappings_1g
        );
        fn line(out: &mut String, (l, n): (Leaf, u64)) {
            let end = u128::from(l.gva.raw()) + u128::from(n) * u128::from(l.size.bytes());
            let _ = writeln!(
                out,
                "{:#018x}-{:#018x} -> {:#018x}  {} x{}  {}",
                l.gva.raw(),
                end,
                l.gpa.raw(),
                l.size,
                n,
                l.flags
            );
        }
        let mut run: Option<(Leaf, u64)> = None;
        let res = self.visit_leaves(mem, 0, u64::MAX, &mut |l| {
            run = match run {
                Some((r, n))
                    if r.size == l.size
                        && r.flags == l.flags
                        && n.checked_mul(r.size.bytes()).is_some_and(|d| {
                            r.gva.raw().checked_add(d) == Some(l.gva.raw())
                                && r.gpa.raw().checked_add(d) == Some(l.gpa.raw())
                        }) =>
                {
                    Some((r, n + 1))
                }
                Some(prev) => {
                    line(&mut out, prev);
                    Some((l, 1))
                }
                None => Some((l, 1)),
            };
        });
        if let Some(prev) = run {
            line(&mut out, prev);
        }
        if let Err(e) = res {
            let _ = writeln!(out, "walk error: {e}");
        }
        out
    }

    /// Table frames per level and leaf mappings per page size (from counters kept by the
    /// editor; `mem` is not read).
    pub fn summary<M: GuestMemoryBackend>(&self, _mem: &M) -> PageTableSummary {
        let [pt, pd, pdpt, pml4, _pml5] = self.tables_per_level;
        let [m4k, m2m, m1g] = self.leaves_per_size;
        let mapped_bytes = PageSize::ALL
            .iter()
            .zip(self.leaves_per_size)
            .fold(0u64, |acc, (s, n)| {
                acc.saturating_add(n.saturating_mul(s.bytes()))
            });
        PageTableSummary {
            root_gpa: self.root.raw() << 12,
            table_frames: self.tables.len() as u64,
            pml4_tables: pml4,
            pdpt_tables: pdpt,
            pd_tables: pd,
            pt_tables: pt,
            mappings_4k: m4k,
            mappings_2m: m2m,
            mappings_1g: m1g,
            mapped_bytes,
        }
    }
}
