//! 5-level paging for a space: a PML5 above the PML4 (`memvisor_paging`'s `la57.rs`), for a
//! guest that boots with CR4.LA57 = 1 (SDM Vol. 3A §4.5). Entries 0 and 511 of the PML5 point
//! to the PML4, so every 4-level canonical GVA keeps its translation and every host walker
//! (which walks [`Gva`](crate::addr::Gva)s from the PML4) stays exact; the CR3 value becomes
//! the PML5's GPA ([`AddressSpace::cr3`]).

use super::{AddressSpace, SpaceError};
use crate::addr::PAGE_SIZE;

impl AddressSpace {
    /// Put a PML5 (one frame of the table pool, read-only in the direct map like every table
    /// frame) above the PML4, before the guest runs; [`Self::cr3`] then returns it. Idempotent.
    ///
    /// # Errors
    /// [`SpaceError::Paging`] if no table frame is left (the pool is grown by one chunk if
    /// empty).
    pub fn enable_la57(&mut self) -> Result<u64, SpaceError> {
        self.ensure_pool(1)
            .map_err(|_| SpaceError::Paging(crate::paging::PagingError::OutOfFrames))?;
        let pfn = self.pt.enable_la57(&self.ram.mem, &mut self.pool)?;
        Ok(pfn.raw() * PAGE_SIZE)
    }

    /// True if the guest runs (or will boot) with 5-level paging: the tables have a PML5.
    pub fn la57(&self) -> bool {
        self.pt.pml5().is_some()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cr3_moves_to_the_pml5_and_the_invariants_hold() {
        let mut s = crate::invariants::tests::space();
        let pml4 = s.cr3();
        assert!(!s.la57());
        let cr3 = s.enable_la57().unwrap();
        assert_eq!(s.enable_la57().unwrap(), cr3);
        assert!(s.la57());
        assert_eq!(s.cr3(), cr3);
        assert_ne!(cr3, pml4);
        // The PML5 is a pool frame, counted with the tables, never mapped writable.
        let pfn = crate::addr::Pfn::new(cr3 >> 12);
        assert!(s.pool.owns(pfn) && s.pool.is_table(pfn));
        assert_eq!(s.pt.table_level(pfn), Some(5));
        let report = crate::invariants::check(&s);
        assert!(report.is_ok(), "{report:?}");
        // The direct map (upper half) walks through PML5E 511.
        let m =
            s.pt.translate_la57(&s.ram.mem, crate::layout::DIRECT_MAP_BASE)
                .unwrap();
        assert_eq!(m.pml5e.index, 511);
    }

    #[test]
    fn a_57_bit_address_never_passes_a_48_bit_check() {
        let mut s = crate::invariants::tests::space();
        s.enable_la57().unwrap();
        // Bits 56:48 = 1 over a mapped 48-bit GVA (the direct map's low bits): every 48-bit
        // entry point refuses it instead of translating the truncated address.
        let va = (1u64 << 48) | 0x1000;
        assert!(s.pt.translate_raw(&s.ram.mem, va).is_err());
        assert!(s.lazy_fault(va, 0x4, 0).is_err());
        assert!(s.pt.translate_la57(&s.ram.mem, va).is_err());
    }
}
