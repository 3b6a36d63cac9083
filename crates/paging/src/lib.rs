//! x86_64 4-level guest page tables (PML4 → PDPT → PD → PT), built and owned by the host,
//! optionally under a PML5 for 5-level paging ([`PageTables::enable_la57`], `la57.rs`).
//!
//! The VMM builds the guest's page tables in guest RAM, in 4 KiB frames it gets from a
//! [`FrameSource`] (its zone allocator; tests use [`FramePool`]). [`PageTables`] holds the
//! tables; [`PageTables::edit`] binds them with guest memory and the frame source into a
//! [`Mapper`], the edit view: [`map`](Mapper::map), [`map_range`](Mapper::map_range),
//! [`unmap`](Mapper::unmap) and [`map_direct`](Mapper::map_direct) (a direct map of guest RAM
//! with 2 MiB / 1 GiB pages). On the tables themselves: [`protect`](PageTables::protect),
//! [`translate`](PageTables::translate) (a software walk with the effective rights),
//! [`dump`](PageTables::dump), [`summary`](PageTables::summary) and [`leaves`](PageTables::leaves).
//! Edits that may leave KVM's shadow pages stale owe a [`ShadowFlush`].
//!
//! # Layout and policies
//!
//! * **Entry format** ([`pte`]): Intel SDM Vol. 3A §4.5, tables 4-14 … 4-20. Bits 51:12 hold
//!   the next table's or the page's GPA; P, R/W, U/S, PWT, PCD, A, D, PS, G and XD/NX (bit 63)
//!   are the [`PteFlags`]. PAT (bit 7 in a PTE, bit 12 in large leaves) and protection keys are
//!   not used: they are always 0.
//! * **Intermediate entries** (PML4E, PDPTE and PDE pointing to a table) are always
//!   `P | RW | US`, with NX clear. SDM Vol. 3A §4.6: the effective rights of an access are the
//!   AND of R/W and U/S over all levels and the OR of XD over all levels, so permissive upper
//!   levels mean the **leaf alone decides** the rights. That keeps `protect` a leaf-only edit and
//!   lets one table serve leaves of any protection.
//! * **Leaves** get exactly the caller's flags (which must include [`PteFlags::PRESENT`] and no
//!   [`PteFlags::HUGE`], which `map` sets itself for 2 MiB and 1 GiB pages).
//! * **Table frames**: a new table frame is zeroed (its 4 KiB are written in full, zeros plus
//!   any entries, in one copy). A non-root table that becomes empty is freed back to the
//!   [`FrameSource`] at once, so a non-root table is never empty; the PML4 is never freed
//!   (until [`PageTables::free_all`]). Every table pointer that a walk follows must point to a
//!   frame this `PageTables` allocated, at the right level, or the walk stops with
//!   [`PagingError::CorruptTable`].
//! * **Page-table frames are never writable to the guest through a mapping made here**: a
//!   writable mapping whose GPA range holds one of the table frames is refused with
//!   [`PagingError::WritableTableFrame`] (checked by `map_range`, `protect` and `map_direct`).
//!   The check sees the table frames that exist when the call runs (and the ones it creates),
//!   so the VMM should take table frames from a pool it never maps writable (for the direct
//!   map: leave the pool out of the RAM list, or map it read-only).
//! * **All-or-nothing**: every operation either succeeds or returns an error and leaves the
//!   tables byte-for-byte as they were (same table frames, same entries). `unmap` and
//!   `protect` validate the whole range in a read-only pass before changing anything;
//!   `map_range` checks as it goes and undoes its own work on error. (The one exception is
//!   a guest-memory access failing half-way through an edit, which cannot happen for table
//!   frames that were accessible when allocated.)
//!   Arguments are treated as hostile: canonical checks, alignment, checked arithmetic, GPAs
//!   within MAXPHYADDR; nothing here panics on bad input.
//! * **TLB**: nothing here flushes TLBs. After `unmap` or `protect` of a live address space the
//!   guest must `invlpg` the pages (or reload CR3) before relying on the change.
//! * **Concurrency**: entries are written with plain stores into guest RAM (single entries with
//!   one aligned 8-byte store, runs of entries with a memcpy, new leaf tables with aligned
//!   vector stores). Only a single-entry update is guaranteed to be one atomic 8-byte store,
//!   so edit the tables while the vCPUs that use them are stopped (e.g. in a hypercall exit). `PageTables` itself is a plain `&mut self` structure (no interior locking).
//!
//! # Files
//!
//! `pte.rs` (entry and flag bits, reserved bits), `protection.rs` (presets), `table.rs`
//! (`PageTables` state and public editing API), `checks.rs` (argument and range checks),
//! `edit.rs` (the recursive map / unmap / protect editors), `walk.rs` (translate, leaves, dump,
//! summary), `entry.rs` (single entries at any level, for test tables such as the fault
//! matrix's: flags of intermediate entries, reserved bits), `direct.rs` (direct map), `io.rs` (guest-memory access to tables),
//! `tableset.rs` (the set of table frames), `la57.rs` (5-level paging: the PML5 above the PML4,
//! its walk).
//!
//! Sources: Intel SDM Vol. 3A §4.5 (4-level paging, entry formats), §4.6 (access rights),
//! §4.10.4 (TLB invalidation); issue 3 "Page tables"; seed `003_733038d7242770b3.txt`
//! (protection presets KERNEL_CODE … DEVICE_MEMORY).

#[cfg(not(target_endian = "little"))]
compile_error!("paging writes x86 page-table entries in host byte order: little-endian hosts only");

mod checks;
mod direct;
mod edit;
mod entry;
mod flush;
mod io;
mod la57;
mod mapper;
pub mod protection;
pub mod pte;
mod table;
mod tableset;
mod walk;

pub use direct::{direct_map_plan, DirectSegment};
pub use flush::{reduces, Protected, ShadowFlush, Unmapped};
pub use la57::{is_canonical_la57, pml5_index, Translation57, PML5E_FLAGS};
pub use mapper::Mapper;
pub use protection::Protection;
pub use pte::{Pte, PteFlags, ADDR_MASK};
pub use table::{PageTables, PagingConfig, TABLE_ENTRY_FLAGS};
pub use walk::{EffectiveAccess, Leaf, PageTableSummary, Translation, WalkEntry};

/// The address newtypes of `memvisor-frames`, imported once so `crate::addr::...` names them.
use memvisor_frames::addr;

use crate::addr::{AddrError, Gpa, Gva, Pfn, HUGE_PAGE_SIZE, LARGE_PAGE_SIZE, PAGE_SIZE};
use thiserror::Error;
use vm_memory::GuestMemoryError;

/// A [`Gpa`] as a vm-memory [`GuestAddress`](vm_memory::GuestAddress) (the conversion lives
/// here because `memvisor-frames` does not depend on vm-memory).
pub trait ToGuestAddress {
    /// The same byte address as a vm-memory `GuestAddress`.
    fn to_guest_address(self) -> vm_memory::GuestAddress;
}

impl ToGuestAddress for Gpa {
    fn to_guest_address(self) -> vm_memory::GuestAddress {
        vm_memory::GuestAddress(self.raw())
    }
}

/// A raw (untrusted) 64-bit linear address as a [`Gva`].
///
/// # Errors
/// [`PagingError::NonCanonical`] if `raw` is not canonical (bits 63:47 not all equal; SDM
/// Vol. 3A §3.3.7.1) — the error the walks returned for such an address before [`Gva`] was
/// canonical by construction.
pub const fn canonical(raw: u64) -> Result<Gva> {
    match Gva::new_canonical(raw) {
        Ok(gva) => Ok(gva),
        Err(_) => Err(PagingError::NonCanonical { gva: raw }),
    }
}

/// Number of entries in one table (4 KiB / 8 bytes).
pub const ENTRIES_PER_TABLE: usize = 512;

/// Size of a leaf page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum PageSize {
    /// 4 KiB page: a PT entry (level 1).
    Size4K,
    /// 2 MiB page: a PD entry with PS=1 (level 2).
    Size2M,
    /// 1 GiB page: a PDPT entry with PS=1 (level 3); needs CPUID.80000001H:EDX.Page1GB.
    Size1G,
}

impl PageSize {
    /// All sizes, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => PAGE_SIZE,
            PageSize::Size2M => LARGE_PAGE_SIZE,
            PageSize::Size1G => HUGE_PAGE_SIZE,
        }
    }

    /// The table level whose entries are leaves of this size (1 = PT, 2 = PD, 3 = PDPT).
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// The page size of a leaf at `level` (1–3), `None` for other levels.
    pub const fn from_level(level: u8) -> Option<PageSize> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }

    /// Index 0–2 (4K, 2M, 1G), for per-size counters.
    pub(crate) const fn index(self) -> usize {
        self.level() as usize - 1
    }
}

impl core::fmt::Display for PageSize {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PageSize::Size4K => "4K",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
        })
    }
}

/// Which argument an alignment error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// A guest virtual address.
    Gva,
    /// A guest physical address.
    Gpa,
    /// A length in bytes.
    Length,
}

impl core::fmt::Display for Operand {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Operand::Gva => "GVA",
            Operand::Gpa => "GPA",
            Operand::Length => "length",
        })
    }
}

/// Errors of the page-table module. Every error leaves the tables unchanged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PagingError {
    /// A GVA (or the end of a range) is not canonical, or a range crosses the non-canonical hole.
    #[error("GVA {gva:#x} is not canonical")]
    NonCanonical {
        /// The first non-canonical address concerned.
        gva: u64,
    },
    /// An address or length is not a multiple of the page size.
    #[error("{what} {value:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// Which argument.
        what: Operand,
        /// The rejected value.
        value: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// A range of zero bytes.
    #[error("empty range at {gva}")]
    ZeroLength {
        /// Start of the range.
        gva: Gva,
    },
    /// `start + len` does not fit in 64 bits.
    #[error("range {start:#x} + {len:#x} overflows")]
    LengthOverflow {
        /// Start of the range.
        start: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// A GPA range reaches beyond the guest's physical address width.
    #[error("GPA range {gpa:#x} + {len:#x} exceeds {phys_bits}-bit physical addresses")]
    GpaOutOfRange {
        /// Start of the GPA range.
        gpa: u64,
        /// Its length in bytes.
        len: u64,
        /// MAXPHYADDR.
        phys_bits: u8,
    },
    /// Leaf flags without [`PteFlags::PRESENT`].
    #[error("leaf flags {flags} lack PRESENT")]
    MissingPresent {
        /// The rejected flags.
        flags: PteFlags,
    },
    /// Leaf flags with bits a leaf may not be given (HUGE, address bits, reserved bits, or NX
    /// when NX is disabled).
    #[error("leaf flags {flags} contain unsupported bits {unsupported:#x}")]
    UnsupportedFlags {
        /// The rejected flags.
        flags: PteFlags,
        /// The offending bits.
        unsupported: u64,
    },
    /// Some page of the requested range is already mapped.
    #[error("{gva} is already mapped")]
    AlreadyMapped {
        /// The first mapped address found in the range.
        gva: Gva,
    },
    /// Some page of the range is not mapped.
    #[error("{gva} is not mapped")]
    NotMapped {
        /// The first unmapped address found in the range.
        gva: Gva,
    },
    /// The operation would need to split an existing 2 MiB or 1 GiB leaf (map of a smaller
    /// page inside it, unmap or protect of part of it). Large leaves are never split.
    #[error("{gva} lies in the {page_size} page at {leaf_gva}, which would have to be split")]
    WouldSplitLargePage {
        /// The address that falls inside the large page.
        gva: Gva,
        /// Start of the large page.
        leaf_gva: Gva,
        /// Its size.
        page_size: PageSize,
    },
    /// A writable mapping would cover a page-table frame.
    #[error("writable mapping of {gpa} would expose page-table frame {table}")]
    WritableTableFrame {
        /// Start of the GPA range of the mapping.
        gpa: Gpa,
        /// The table frame inside it.
        table: Pfn,
    },
    /// The frame source has no frame for a new table.
    #[error("out of page-table frames")]
    OutOfFrames,
    /// The frame source returned a frame that already is one of the tables.
    #[error("frame source returned {pfn}, which already holds a page table")]
    DuplicateTableFrame {
        /// The frame.
        pfn: Pfn,
    },
    /// A walk found an entry pointing to a frame that is not one of this `PageTables`' tables
    /// of the expected level.
    #[error("corrupt entry {pte:#x} at level {level} for {gva}")]
    CorruptTable {
        /// The address being walked.
        gva: Gva,
        /// Level of the table holding the entry (4 = PML4).
        level: u8,
        /// The raw entry.
        pte: u64,
    },
    /// A walk found reserved bits set (the CPU would raise #PF with RSVD=1).
    #[error("entry {pte:#x} at level {level} for {gva} has reserved bits {bits:#x} set")]
    ReservedBits {
        /// The address being walked.
        gva: Gva,
        /// Level of the table holding the entry.
        level: u8,
        /// The raw entry.
        pte: u64,
        /// The reserved bits that are set.
        bits: u64,
    },
    /// Guest memory holding a table could not be accessed.
    #[error("guest memory access to table frame at {gpa} failed")]
    Memory {
        /// GPA of the access.
        gpa: Gpa,
        /// The vm-memory error.
        #[source]
        source: GuestMemoryError,
    },
    /// Address arithmetic failed.
    #[error(transparent)]
    Addr(#[from] AddrError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, PagingError>;

/// Where [`PageTables`] gets and returns its table frames.
///
/// Implemented by the VMM over its zone allocator; [`FramePool`] is a simple implementation.
/// The source need not zero frames: `PageTables` writes all 4 KiB of a new table.
pub trait FrameSource {
    /// A free 4 KiB frame for a page table, or [`PagingError::OutOfFrames`].
    ///
    /// # Errors
    /// Whatever the source reports; [`PagingError::OutOfFrames`] when exhausted.
    fn alloc_table_frame(&mut self) -> Result<Pfn>;
    /// Give back a frame from [`alloc_table_frame`](Self::alloc_table_frame). It is all zeros
    /// when freed because its table became empty, arbitrary after [`PageTables::free_all`].
    fn free_table_frame(&mut self, pfn: Pfn);
}

/// A [`FrameSource`] over a fixed run of frames `[first, first + count)`, e.g. a page-table
/// pool the VMM reserves and never maps writable. Freed frames are reused first (LIFO).
#[derive(Debug, Clone)]
pub struct FramePool {
    first: u64,
    next: u64,
    end: u64,
    free: Vec<Pfn>,
    /// One bit per frame of `[first, next)`: handed out and not freed since.
    in_use: Vec<u64>,
}

impl FramePool {
    /// A pool of `count` frames starting at `first`.
    ///
    /// # Errors
    /// [`AddrError::Overflow`] if the run does not fit in 64 bits.
    pub fn new(first: Pfn, count: u64) -> Result<Self> {
        let end = first.checked_add(count)?.raw();
        Ok(Self {
            first: first.raw(),
            next: first.raw(),
            end,
            free: Vec::new(),
            in_use: Vec::new(),
        })
    }

    /// True if `pfn` belongs to this pool's run.
    pub fn contains(&self, pfn: Pfn) -> bool {
        (self.first..self.end).contains(&pfn.raw())
    }

    /// Frames currently handed out.
    pub fn in_use(&self) -> u64 {
        (self.next - self.first).saturating_sub(self.free.len() as u64)
    }

    /// Frames still available.
    pub fn available(&self) -> u64 {
        (self.end - self.next) + self.free.len() as u64
    }
}

impl FramePool {
    /// Bit position of `pfn` (which must be in `[first, next)`).
    fn bit(&self, pfn: Pfn) -> (usize, u64) {
        let i = pfn.raw() - self.first;
        ((i / 64) as usize, 1 << (i % 64))
    }
}

impl FrameSource for FramePool {
    fn alloc_table_frame(&mut self) -> Result<Pfn> {
        let pfn = match self.free.pop() {
            Some(pfn) => pfn,
            None if self.next < self.end => {
                self.next += 1;
                Pfn::new(self.next - 1)
            }
            None => return Err(PagingError::OutOfFrames),
        };
        let (w, m) = self.bit(pfn);
        if self.in_use.len() <= w {
            self.in_use.resize(w + 1, 0);
        }
        self.in_use[w] |= m;
        Ok(pfn)
    }

    fn free_table_frame(&mut self, pfn: Pfn) {
        // Frames that are not ours, or not handed out (double free), are ignored rather than
        // corrupting the pool.
        if !self.contains(pfn) || pfn.raw() >= self.next {
            return;
        }
        let (w, m) = self.bit(pfn);
        if let Some(word) = self.in_use.get_mut(w) {
            if *word & m != 0 {
                *word &= !m;
                self.free.push(pfn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(PageSize::Size4K.bytes(), 4096);
        assert_eq!(PageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
        for s in PageSize::ALL {
            assert_eq!(PageSize::from_level(s.level()), Some(s));
        }
        assert_eq!(PageSize::from_level(4), None);
        assert_eq!(PageSize::Size2M.to_string(), "2M");
    }

    #[test]
    fn frame_pool() {
        let mut p = FramePool::new(Pfn::new(10), 2).unwrap();
        assert_eq!(p.alloc_table_frame().unwrap(), Pfn::new(10));
        assert_eq!(p.alloc_table_frame().unwrap(), Pfn::new(11));
        assert!(matches!(
            p.alloc_table_frame(),
            Err(PagingError::OutOfFrames)
        ));
        p.free_table_frame(Pfn::new(10));
        p.free_table_frame(Pfn::new(10)); // double free ignored
        p.free_table_frame(Pfn::new(99)); // foreign frame ignored
        assert_eq!(p.in_use(), 1);
        assert_eq!(p.alloc_table_frame().unwrap(), Pfn::new(10));
        assert!(FramePool::new(Pfn::new(u64::MAX), 2).is_err());
    }
}
