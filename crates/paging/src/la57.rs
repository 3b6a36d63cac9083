//! 5-level paging (CR4.LA57): a PML5 above the PML4 (Intel SDM Vol. 3A §4.5, "4-Level
//! Paging and 5-Level Paging"; the PML5E format is Table 4-14's: P, R/W, U/S, PWT, PCD, A,
//! XD, bits 51:12 the PML4's address, bit 7 reserved).
//!
//! CR4.LA57 cannot be changed while IA-32e mode is active (§4.1.1: MOV to CR4 with a new
//! LA57 value #GPs), so a guest that is to run 5-level must start on a PML5. The design here:
//!
//! * [`PageTables::enable_la57`] allocates one PML5 whose **entries 0 and 511 point to the
//!   existing PML4** (`P | RW | US`, as every intermediate entry). A 4-level canonical
//!   address (bits 63:47 equal) then has bits 56:48 equal to 0 or 511 and translates through
//!   exactly the same PML4E … PTE as under 4-level paging, low half and high half. Every
//!   other walker of this crate keeps walking from the PML4 for [`Gva`]s (48-bit canonical
//!   by construction), and stays exact.
//! * The CR3 value is then the PML5's GPA ([`PageTables::cr3_root`]). The PML5 is a table
//!   frame like the others (level 5 in the table set): it is never mapped writable, it is
//!   freed with [`PageTables::free_all`], and the VMM's invariant checks see it.
//! * Addresses that need 5-level paging (bits 56:48 not 0 or 511) stay raw `u64`s: they are
//!   never a [`Gva`]. [`PageTables::translate_la57`] walks them. Only test tables (the fault
//!   matrix, feature `test-pokes`) give PML5 entries 1–510 a value
//!   ([`PageTables::set_pml5e`]); such an entry points to the same PML4, with the flags the
//!   test asks for.

use super::io;
use super::pte::{Pte, PteFlags, ADDR_MASK};
use super::table::TABLE_ENTRY_FLAGS;
use super::walk::{Translation, WalkEntry};
use super::{FrameSource, PageTables, PagingError, Result};
use crate::addr::{Gpa, Gva, Pfn};
#[cfg(any(test, feature = "test-pokes"))]
use crate::ToGuestAddress;
#[cfg(any(test, feature = "test-pokes"))]
use vm_memory::Bytes;
use vm_memory::GuestMemoryBackend;

/// True if `va` is canonical under 5-level paging: bits 63:57 all equal bit 56 (SDM Vol. 3A
/// §3.3.7.1).
pub const fn is_canonical_la57(va: u64) -> bool {
    let top = va >> 56; // bits 63:56
    top == 0 || top == 0xff
}

/// Index of `va`'s entry in the PML5 (bits 56:48).
pub const fn pml5_index(va: u64) -> usize {
    ((va >> 48) & 0x1ff) as usize
}

/// The bits a PML5E may be given by [`PageTables::set_pml5e`] besides the PML4's address:
/// P, R/W, U/S, PWT, PCD, A and XD.
pub const PML5E_FLAGS: u64 = PteFlags::PRESENT.bits()
    | PteFlags::WRITABLE.bits()
    | PteFlags::USER.bits()
    | (1 << 3) // PWT
    | (1 << 4) // PCD
    | PteFlags::ACCESSED.bits()
    | PteFlags::NO_EXECUTE.bits();

/// A 5-level walk ([`PageTables::translate_la57`]): the PML5E, then the 4-level walk below
/// it, with the effective rights ANDed / ORed over all five levels (SDM Vol. 3A §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation57 {
    /// The 57-bit linear address walked.
    pub va: u64,
    /// The PML5E read (level 5).
    pub pml5e: WalkEntry,
    /// The walk below the PML5E, of the 4-level address with the same bits 47:0
    /// (`gva`); `effective` covers all five levels.
    pub below: Translation,
}

impl PageTables {
    /// Put a PML5 above the PML4 (see the crate docs, `la57.rs`): entries 0 and 511 point to
    /// the PML4, the rest are zero. Returns the PML5 frame, whose GPA is the CR3 value for
    /// CR4.LA57 = 1. Idempotent: a second call returns the same frame.
    ///
    /// # Errors
    /// Frame-source errors; [`PagingError::Memory`]; the tables are unchanged.
    pub fn enable_la57<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        frames: &mut dyn FrameSource,
    ) -> Result<Pfn> {
        if let Some(p) = self.pml5 {
            return Ok(p);
        }
        let to_pml4 = self.root.gpa()?.raw() | TABLE_ENTRY_FLAGS.bits();
        let (pfn, view) = self.alloc_table(mem, frames, 5)?;
        let mut slots = io::Slots::whole();
        slots.set(0, to_pml4);
        slots.set(511, to_pml4);
        if let Err(e) = view.write_back(mem, &slots, io::Dirty::ALL) {
            self.free_table(frames, pfn);
            return Err(e);
        }
        self.pml5 = Some(pfn);
        Ok(pfn)
    }

    /// The PML5 frame if [`Self::enable_la57`] made one.
    pub fn pml5(&self) -> Option<Pfn> {
        self.pml5
    }

    /// The frame CR3 points to: the PML5 under 5-level paging, else the PML4.
    pub fn cr3_root(&self) -> Pfn {
        self.pml5.unwrap_or(self.root)
    }

    /// GPA of PML5 entry `index` (0–511).
    ///
    /// # Errors
    /// [`PagingError::NonCanonical`] (with the entry's first address) if 5-level paging is
    /// off or `index` is above 511.
    pub fn pml5e_gpa(&self, index: usize) -> Result<Gpa> {
        match (self.pml5, index) {
            (Some(p), 0..=511) => Ok(Gpa::new(p.gpa()?.raw() | (index as u64 * 8))),
            _ => Err(PagingError::NonCanonical {
                gva: (index as u64) << 48,
            }),
        }
    }

    /// Software walk of a 5-level linear address `va`, as the CPU does it with CR4.LA57 = 1:
    /// the PML5E of bits 56:48 (its P, reserved bits and rights), then the PML4E … leaf of
    /// bits 47:0. A PML5E must point to this `PageTables`' PML4 (the only PML4 it has).
    ///
    /// # Errors
    /// [`PagingError::NonCanonical`] if `va` is not 57-bit canonical or 5-level paging is
    /// off; [`PagingError::NotMapped`] (PML5E or a lower entry not present);
    /// [`PagingError::ReservedBits`] (PS or an address bit above MAXPHYADDR in the PML5E, or
    /// below); [`PagingError::CorruptTable`] (a PML5E pointing elsewhere); as
    /// [`Self::translate`].
    pub fn translate_la57<M: GuestMemoryBackend>(&self, mem: &M, va: u64) -> Result<Translation57> {
        let Some(pml5) = self.pml5.filter(|_| is_canonical_la57(va)) else {
            return Err(PagingError::NonCanonical { gva: va });
        };
        let gva = Gva::new_truncate(va);
        let index = pml5_index(va);
        let pte = Pte::from_raw(io::read_entry(mem, pml5.gpa()?, index)?);
        let pml5e = WalkEntry {
            level: 5,
            table: pml5,
            index: index as u16,
            pte,
        };
        if !pte.is_present() {
            return Err(PagingError::NotMapped { gva });
        }
        let cfg = self.config;
        // A PML5E's reserved bits are a PML4E's (SDM Vol. 3A Table 4-14 / 4-15).
        let bits = pte.reserved_bits(4, cfg.phys_addr_bits, cfg.nx_enabled);
        if bits != 0 {
            return Err(PagingError::ReservedBits {
                gva,
                level: 5,
                pte: pte.raw(),
                bits,
            });
        }
        if pte.raw() & ADDR_MASK != self.root.gpa()?.raw() {
            return Err(PagingError::CorruptTable {
                gva,
                level: 5,
                pte: pte.raw(),
            });
        }
        let mut below = self.translate(mem, gva)?;
        let flags = pte.flags();
        below.effective.writable &= flags.contains(PteFlags::WRITABLE);
        below.effective.user &= flags.contains(PteFlags::USER);
        below.effective.executable &= !(cfg.nx_enabled && flags.contains(PteFlags::NO_EXECUTE));
        Ok(Translation57 { va, pml5e, below })
    }

    /// Set PML5 entry `index` (1–510) to point to the PML4 with `flags` (bits of
    /// [`PML5E_FLAGS`], plus, for reserved-bit tests, bits 51:MAXPHYADDR); `flags` = 0 makes
    /// the entry zero. Entries 0 and 511 (the 4-level address space) are refused. Returns
    /// the old entry. Test tables only (the fault matrix's PML5E combinations); the caller
    /// flushes TLBs.
    ///
    /// # Errors
    /// [`PagingError::NonCanonical`] if 5-level paging is off or `index` is 0, 511 or above;
    /// [`PagingError::UnsupportedFlags`] for other bits; [`PagingError::Memory`].
    #[cfg(any(test, feature = "test-pokes"))]
    pub fn set_pml5e<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        index: usize,
        flags: u64,
    ) -> Result<u64> {
        if !(1..=510).contains(&index) {
            return Err(PagingError::NonCanonical {
                gva: (index as u64) << 48,
            });
        }
        let at = self.pml5e_gpa(index)?;
        let allowed = PML5E_FLAGS | super::pte::phys_reserved_mask(self.config.phys_addr_bits);
        if flags & !allowed != 0 {
            return Err(PagingError::UnsupportedFlags {
                flags: PteFlags::from_bits_truncate(flags),
                unsupported: flags & !allowed,
            });
        }
        let new = if flags == 0 {
            0
        } else {
            self.root.gpa()?.raw() | flags
        };
        let old = mem
            .read_obj::<u64>(at.to_guest_address())
            .map_err(|source| PagingError::Memory { gpa: at, source })?;
        mem.write_obj(new, at.to_guest_address())
            .map_err(|source| PagingError::Memory { gpa: at, source })?;
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FramePool, PageSize};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn setup() -> (GuestMemoryMmap, FramePool, PageTables) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let mut pool = FramePool::new(Pfn::new(0x400), 256).unwrap();
        let pt = PageTables::new(&mem, &mut pool).unwrap();
        (mem, pool, pt)
    }

    const T: u64 = 0x7;

    #[test]
    fn pml5_aliases_both_halves_of_the_4_level_space() {
        let (mem, mut pool, mut pt) = setup();
        assert_eq!(pt.cr3_root(), pt.root());
        let low = Gva::new(0x40_0000);
        let high = Gva::new(0xffff_8880_0000_0000);
        let flags = PteFlags::PRESENT | PteFlags::WRITABLE;
        let mut m = pt.edit(&mem, &mut pool);
        m.map(low, Gpa::new(0x10_0000), PageSize::Size4K, flags)
            .unwrap();
        m.map(high, Gpa::new(0x20_0000), PageSize::Size4K, flags)
            .unwrap();
        let frames = pt.table_frame_count();
        let p5 = pt.enable_la57(&mem, &mut pool).unwrap();
        assert_eq!(pt.enable_la57(&mem, &mut pool).unwrap(), p5);
        assert_eq!((pt.cr3_root(), pt.pml5()), (p5, Some(p5)));
        assert_eq!(pt.table_frame_count(), frames + 1);
        assert_eq!(pt.table_level(p5), Some(5));
        let root = pt.root().gpa().unwrap().raw();
        let e = |i: usize| {
            mem.read_obj::<u64>(pt.pml5e_gpa(i).unwrap().to_guest_address())
                .unwrap()
        };
        assert_eq!((e(0), e(511), e(1), e(510)), (root | T, root | T, 0, 0));
        // Both halves translate as under 4-level paging, with the PML5E in the walk.
        for (gva, gpa, idx) in [(low, 0x10_0000, 0u16), (high, 0x20_0000, 511)] {
            let t = pt.translate_la57(&mem, gva.raw()).unwrap();
            assert_eq!((t.pml5e.level, t.pml5e.index), (5, idx));
            assert_eq!(t.below.gpa.raw(), gpa);
            assert_eq!(t.below, pt.translate(&mem, gva).unwrap());
        }
        // A 57-bit address whose PML5E is empty is not mapped; a non-canonical one is refused.
        assert!(matches!(
            pt.translate_la57(&mem, (1 << 48) | low.raw()),
            Err(PagingError::NotMapped { .. })
        ));
        assert!(matches!(
            pt.translate_la57(&mem, 1 << 57),
            Err(PagingError::NonCanonical { .. })
        ));
        // The PML5 is a table frame: a writable mapping over it is refused.
        let r = pt.edit(&mem, &mut pool).map(
            Gva::new(0x60_0000),
            p5.gpa().unwrap(),
            PageSize::Size4K,
            flags,
        );
        assert!(matches!(r, Err(PagingError::WritableTableFrame { .. })));
        let before = pool.in_use();
        pt.free_all(&mut pool);
        assert_eq!(pool.in_use(), before - frames - 1);
    }

    #[test]
    fn pml5e_rights_and_reserved_bits() {
        let (mem, mut pool, mut pt) = setup();
        // Without a PML5 there is no 5-level walk and no PML5E to set.
        assert!(pt.translate_la57(&mem, 0x1000).is_err());
        assert!(pt.set_pml5e(&mem, 1, T).is_err());
        let va = 0x40_0000u64;
        let all = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER;
        pt.edit(&mem, &mut pool)
            .map(Gva::new(va), Gpa::new(0x10_0000), PageSize::Size4K, all)
            .unwrap();
        pt.enable_la57(&mem, &mut pool).unwrap();
        for bad in [0usize, 511, 512] {
            assert!(pt.set_pml5e(&mem, bad, T).is_err(), "index {bad}");
        }
        assert!(matches!(
            pt.set_pml5e(&mem, 3, T | 0x80),
            Err(PagingError::UnsupportedFlags { .. })
        ));
        let va5 = (3u64 << 48) | va;
        // RW clear in the PML5E: read-only over the whole walk; US clear: supervisor-only.
        assert_eq!(pt.set_pml5e(&mem, 3, 0x5).unwrap(), 0);
        let e = pt.translate_la57(&mem, va5).unwrap().below.effective;
        assert_eq!((e.writable, e.user, e.executable), (false, true, true));
        pt.set_pml5e(&mem, 3, 0x3 | (1 << 63)).unwrap();
        let e = pt.translate_la57(&mem, va5).unwrap().below.effective;
        assert_eq!((e.writable, e.user, e.executable), (true, false, false));
        // Not present; then a reserved address bit (MAXPHYADDR 52 by default: none).
        pt.set_pml5e(&mem, 3, 0x6).unwrap();
        assert!(matches!(
            pt.translate_la57(&mem, va5),
            Err(PagingError::NotMapped { .. })
        ));
        pt.set_pml5e(&mem, 3, 0).unwrap();
        let g = pt.pml5e_gpa(3).unwrap().to_guest_address();
        assert_eq!(mem.read_obj::<u64>(g).unwrap(), 0);
        // MAXPHYADDR 40: bit 45 of a PML5E is reserved (RSVD at level 5).
        let (mem2, mut pool2, _) = setup();
        let cfg = crate::PagingConfig {
            phys_addr_bits: 40,
            nx_enabled: true,
        };
        let mut p = PageTables::with_config(&mem2, &mut pool2, cfg).unwrap();
        p.enable_la57(&mem2, &mut pool2).unwrap();
        p.set_pml5e(&mem2, 2, T | (1 << 45)).unwrap();
        let r = p.translate_la57(&mem2, 2 << 48);
        assert!(matches!(r, Err(PagingError::ReservedBits { level: 5, .. })));
    }

    #[test]
    fn canonical_57() {
        assert!(is_canonical_la57(0x00ff_ffff_ffff_ffff));
        assert!(is_canonical_la57(0xff00_0000_0000_0000));
        assert!(!is_canonical_la57(0x0100_0000_0000_0000));
        assert!(!is_canonical_la57(0xfe00_0000_0000_0000));
        assert_eq!(pml5_index(0x0001_2000_0000_0000), 1);
        assert_eq!(pml5_index(0xffff_8000_0000_0000), 511);
    }
}
