//! Single-entry access for tests of the paging hardware itself (the fault matrix): the GPA of
//! the entry at any level of a walk, [`set_entry_flags`](PageTables::set_entry_flags) for
//! intermediate entries with rights other than `P | RW | US`, and
//! [`poison_entry`](PageTables::poison_entry), a raw setter of reserved bits.
//!
//! These break the module's usual policy on purpose (intermediate entries are `P | RW | US`;
//! no entry has reserved bits set), so they are meant for test page tables only, e.g. under
//! a PML4 slot the tests own. What the rest of the module does with such paths:
//!
//! * an intermediate entry with P = 0 (its address kept) is a hole for every walker
//!   (translate: `NotMapped`; leaves / dump: nothing below it);
//! * a leaf whose P was cleared is no longer counted as a leaf (and is a hole);
//! * an entry given reserved bits by `poison_entry` is remembered: `translate` reports
//!   [`PagingError::ReservedBits`] at it and the range walkers (leaves, dump) treat it as a
//!   hole (the CPU cannot use it either); editors (map / unmap / protect) that need to go
//!   through it fail with [`PagingError::CorruptTable`] and change nothing.
//! * [`translate`](PageTables::translate) computes the effective rights over all levels as
//!   before, so it reports the rights such a path really grants.

use super::io;
#[cfg(any(test, feature = "test-pokes"))]
use super::pte::phys_reserved_mask;
use super::pte::{Pte, PteFlags, ADDR_MASK};
use super::table::entry_index;
use super::{PageTables, PagingError, Result};
use crate::addr::{Gpa, Gva};
#[cfg(any(test, feature = "test-pokes"))]
use crate::ToGuestAddress;
#[cfg(any(test, feature = "test-pokes"))]
use vm_memory::Bytes;
use vm_memory::GuestMemoryBackend;

impl PageTables {
    /// GPA of the entry at `level` (4 = PML4E … 1 = PTE) on the walk of `gva`. Entries above
    /// `level` must point to tables of this `PageTables` (present or not: a non-present
    /// entry made by [`set_entry_flags`](Self::set_entry_flags) keeps its address and is
    /// followed) and must not be leaves.
    ///
    /// # Errors
    /// [`PagingError::NonCanonical`], [`PagingError::NotMapped`] (an entry above `level` is
    /// zero or a leaf), [`PagingError::CorruptTable`] (it points elsewhere, or it was
    /// poisoned), [`PagingError::Memory`]; `level` outside 1..=4 is
    /// [`PagingError::NotMapped`].
    pub fn entry_gpa<M: GuestMemoryBackend>(&self, mem: &M, gva: Gva, level: u8) -> Result<Gpa> {
        if !gva.is_canonical() {
            return Err(PagingError::NonCanonical { gva: gva.raw() });
        }
        if !(1..=4).contains(&level) {
            return Err(PagingError::NotMapped { gva });
        }
        let mut table = self.root;
        let mut l = 4u8;
        loop {
            let gpa = Gpa::new(table.gpa()?.raw() | (entry_index(gva.raw(), l) as u64 * 8));
            if l == level {
                return Ok(gpa);
            }
            let raw = io::read_entry(mem, table.gpa()?, entry_index(gva.raw(), l))?;
            if self.poisoned.contains_key(&gpa.raw()) {
                return Err(PagingError::CorruptTable {
                    gva,
                    level: l,
                    pte: raw,
                });
            }
            // Follow the address whether or not P is set; a leaf (PS) ends the walk.
            let as_present = Pte::from_raw(raw | PteFlags::PRESENT.bits());
            if raw & ADDR_MASK == 0 || as_present.is_leaf(l) {
                return Err(PagingError::NotMapped { gva });
            }
            table = self.child_table(as_present, l, gva.raw())?;
            l -= 1;
        }
    }

    /// Replace the flag bits of the entry at `level` on the walk of `gva` with `flags`,
    /// keeping its address bits: e.g. an intermediate entry with RW or US clear, NX set, or
    /// P clear. Returns the old entry. The entry must exist (see [`Self::entry_gpa`]) and be
    /// non-zero (a leaf over GPA 0 is allowed); `flags` may only hold P, RW, US, PWT, PCD, A, D, G and NX, and PS is kept
    /// as it was (a table pointer stays one). Leaf counts follow P of level-1 / PS entries.
    ///
    /// Test tables only (see the module docs); the caller flushes TLBs.
    ///
    /// # Errors
    /// As [`Self::entry_gpa`]; [`PagingError::UnsupportedFlags`] for other bits;
    /// [`PagingError::NotMapped`] if the entry is zero.
    #[cfg(any(test, feature = "test-pokes"))]
    pub fn set_entry_flags<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        gva: Gva,
        level: u8,
        flags: PteFlags,
    ) -> Result<Pte> {
        let unsupported = flags.bits() & !PteFlags::LEAF_ALLOWED.bits();
        if unsupported != 0 {
            return Err(PagingError::UnsupportedFlags { flags, unsupported });
        }
        let gpa = self.entry_gpa(mem, gva, level)?;
        let old = read(mem, gpa)?;
        // An all-zero entry was never built; a leaf over GPA 0 (a 1 GiB page of the first
        // GiB) has address bits 0 but P or PS set.
        if old.raw() == 0 {
            return Err(PagingError::NotMapped { gva });
        }
        let keep = ADDR_MASK | PteFlags::HUGE.bits();
        let new = Pte::from_raw((old.raw() & keep) | flags.bits());
        write(mem, gpa, new)?;
        let was_leaf = Pte::from_raw(old.raw()).is_leaf(level);
        let is_leaf = new.is_leaf(level);
        if let Some(size) = super::PageSize::from_level(level) {
            let n = &mut self.leaves_per_size[size.index()];
            match (was_leaf, is_leaf) {
                (true, false) => *n = n.saturating_sub(1),
                (false, true) => *n += 1,
                _ => {}
            }
        }
        Ok(old)
    }

    /// Set `bits` (which must lie in bits 51:M, M = MAXPHYADDR of the guest CPU given as
    /// `phys_bits`) in the entry at `level` on the walk of `gva`, making it unusable: the
    /// CPU raises #PF with RSVD = 1 when a walk reaches it while it is present. Returns the
    /// old entry. The entry is remembered as poisoned (see the module docs); call
    /// this after every other edit under it.
    ///
    /// **Test tables only**: this is the one way to write reserved bits into an entry.
    ///
    /// # Errors
    /// As [`Self::entry_gpa`]; [`PagingError::UnsupportedFlags`] if `bits` is zero or
    /// outside bits 51:M.
    #[cfg(any(test, feature = "test-pokes"))]
    pub fn poison_entry<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        gva: Gva,
        level: u8,
        bits: u64,
        phys_bits: u8,
    ) -> Result<Pte> {
        let allowed = phys_reserved_mask(phys_bits);
        if bits == 0 || bits & !allowed != 0 {
            return Err(PagingError::UnsupportedFlags {
                flags: PteFlags::from_bits_truncate(bits),
                unsupported: bits & !allowed,
            });
        }
        let gpa = self.entry_gpa(mem, gva, level)?;
        let old = read(mem, gpa)?;
        write(mem, gpa, Pte::from_raw(old.raw() | bits))?;
        *self.poisoned.entry(gpa.raw()).or_default() |= bits;
        Ok(old)
    }

    /// Reserved bits set by [`Self::poison_entry`] in the entry at `entry_gpa`, if any.
    pub(super) fn poisoned_bits(&self, entry_gpa: u64) -> Option<u64> {
        self.poisoned.get(&entry_gpa).copied()
    }
}

#[cfg(any(test, feature = "test-pokes"))]
fn read<M: GuestMemoryBackend>(mem: &M, gpa: Gpa) -> Result<Pte> {
    mem.read_obj::<u64>(gpa.to_guest_address())
        .map(Pte::from_raw)
        .map_err(|source| PagingError::Memory { gpa, source })
}

#[cfg(any(test, feature = "test-pokes"))]
fn write<M: GuestMemoryBackend>(mem: &M, gpa: Gpa, pte: Pte) -> Result<()> {
    mem.write_obj::<u64>(pte.raw(), gpa.to_guest_address())
        .map_err(|source| PagingError::Memory { gpa, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pfn;
    use crate::{FramePool, PageSize};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    type Mem = GuestMemoryMmap<()>;
    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const NX: u64 = 1 << 63;

    fn setup() -> (Mem, FramePool, PageTables) {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("guest memory");
        let mut pool = FramePool::new(Pfn::new(2048), 64).expect("pool");
        let pt = PageTables::new(&mem, &mut pool).expect("tables");
        (mem, pool, pt)
    }

    #[test]
    fn intermediate_flags_and_walkers() {
        let (mem, mut pool, mut pt) = setup();
        let va = Gva::new(0x2000_0000_0000);
        let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER;
        pt.edit(&mem, &mut pool)
            .map(va, Gpa::new(0x10_0000), PageSize::Size4K, flags)
            .expect("map");
        // A read-only, supervisor, NX PDE: translate combines the rights over all levels.
        let pde = PteFlags::from_bits_truncate(P | NX);
        let old = pt.set_entry_flags(&mem, va, 2, pde).expect("set PDE");
        assert_eq!(old.flags().bits(), P | RW | US);
        let t = pt.translate(&mem, va).expect("translate");
        assert!(!t.effective.writable && !t.effective.user && !t.effective.executable);
        assert_eq!(t.walk[2].map(|w| w.pte.flags().bits()), Some(P | NX));
        // Not-present PDE: a hole for translate, leaves and dump; the entry keeps its address
        // and the PTE below it can still be reached and edited.
        pt.set_entry_flags(&mem, va, 2, PteFlags::from_bits_truncate(RW))
            .expect("clear P");
        assert!(matches!(
            pt.translate(&mem, va),
            Err(PagingError::NotMapped { .. })
        ));
        assert!(pt.try_leaves(&mem).expect("leaves").is_empty());
        let leaf_gpa = pt.entry_gpa(&mem, va, 1).expect("PTE gpa");
        pt.set_entry_flags(&mem, va, 1, PteFlags::from_bits_truncate(US))
            .expect("clear the leaf's P");
        assert_eq!(pt.summary(&mem).mappings_4k, 0);
        let raw: u64 = mem.read_obj(leaf_gpa.to_guest_address()).expect("read");
        assert_eq!(raw, 0x10_0000 | US);
        pt.set_entry_flags(&mem, va, 1, flags).expect("leaf back");
        assert_eq!(pt.summary(&mem).mappings_4k, 1);
        // Bad flags are refused; PS and address bits cannot be smuggled in.
        assert!(pt
            .set_entry_flags(&mem, va, 2, PteFlags::from_bits_truncate(P | 0x80))
            .is_err());
        assert!(pt.entry_gpa(&mem, va, 5).is_err());
        assert!(Gva::new_canonical(1 << 47).is_err());
        // An unmapped path has no entry below the PML4E.
        assert!(pt.entry_gpa(&mem, Gva::new(0x3000_0000_0000), 3).is_err());
    }

    #[test]
    fn flags_of_a_1g_leaf_over_gpa_0() {
        // A 1 GiB leaf mapping GPA 0 has address bits 0: its flags can still be edited (PS
        // kept); an all-zero entry is still refused.
        let (mem, mut pool, mut pt) = setup();
        let va = Gva::new(0x3100_0000_0000);
        pt.edit(&mem, &mut pool)
            .map(va, Gpa::new(0), PageSize::Size1G, PteFlags::PRESENT)
            .expect("map 1 GiB");
        let old = pt
            .set_entry_flags(&mem, va, 3, PteFlags::from_bits_truncate(P | RW | US))
            .expect("set the leaf's flags");
        assert_eq!(old.raw(), P | 0x80);
        let gpa = pt.entry_gpa(&mem, va, 3).expect("PDPTE gpa");
        let raw: u64 = mem.read_obj(gpa.to_guest_address()).expect("read");
        assert_eq!(raw, P | RW | US | 0x80);
        let other = Gva::new(0x3100_4000_0000); // the next PDPTE: zero
        assert!(matches!(
            pt.set_entry_flags(&mem, other, 3, PteFlags::PRESENT),
            Err(PagingError::NotMapped { .. })
        ));
    }

    #[test]
    fn poisoned_entries() {
        let (mem, mut pool, mut pt) = setup();
        let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER;
        let a = Gva::new(0x2000_0000_0000);
        let b = Gva::new(0x2080_0000_0000);
        for va in [a, b] {
            pt.edit(&mem, &mut pool)
                .map(va, Gpa::new(0x10_0000), PageSize::Size4K, flags)
                .expect("map");
        }
        // Only bits 51:MAXPHYADDR may be set.
        assert!(pt.poison_entry(&mem, a, 3, 1 << 40, 48).is_err());
        assert!(pt.poison_entry(&mem, a, 3, 0, 48).is_err());
        assert!(pt.poison_entry(&mem, a, 3, 1 << 51, 52).is_err());
        pt.poison_entry(&mem, a, 3, 1 << 51, 48)
            .expect("poison PDPTE");
        match pt.translate(&mem, a) {
            Err(PagingError::ReservedBits { level, bits, .. }) => {
                assert_eq!((level, bits), (3, 1 << 51));
            }
            other => panic!("{other:?}"),
        }
        // The walkers skip the poisoned path and still list the other one.
        let leaves = pt.try_leaves(&mem).expect("leaves");
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].gva, b);
        assert!(!pt.dump(&mem).contains("walk error"));
        // Editors refuse to go through it and change nothing.
        assert!(pt.edit(&mem, &mut pool).unmap(a, 4096).is_err());
        assert!(pt.entry_gpa(&mem, a, 1).is_err());
        // A poisoned leaf.
        pt.poison_entry(&mem, b, 1, 1 << 50, 48)
            .expect("poison PTE");
        assert!(matches!(
            pt.translate(&mem, b),
            Err(PagingError::ReservedBits { level: 1, .. })
        ));
        assert!(pt.try_leaves(&mem).expect("leaves").is_empty());
    }
}
