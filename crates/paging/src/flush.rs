//! The pending shadow flush as a value: [`ShadowFlush`].
//!
//! Under shadow paging (KVM's software MMU; PVM here) KVM keeps its own copy of the guest's
//! leaf entries and ignores the VMM's later edits of guest page tables until the VMM drops
//! its shadow pages (the memslot "flush slot" of the VMM). An edit that removes a mapping,
//! reduces its rights, or moves table frames out from under the guest returns a
//! [`ShadowFlush`]; the caller either flushes with it (consuming it: the flush happens once)
//! or keeps it pending with [`ShadowFlush::merge`]. The type is `#[must_use]` and neither
//! `Copy` nor `Clone`, so a pending flush can be neither forgotten silently nor applied
//! twice:
//!
//! ```compile_fail
//! use memvisor_paging::ShadowFlush;
//! fn flush(_: ShadowFlush) {}
//! let t = ShadowFlush::needed();
//! flush(t);
//! flush(t); // error[E0382]: use of moved value
//! ```
//!
//! and an owed flush cannot be dropped on the floor:
//!
//! ```compile_fail
//! #![deny(unused_must_use)]
//! use memvisor_paging::ShadowFlush;
//! fn unmap() -> ShadowFlush { ShadowFlush::needed() }
//! unmap(); // error: unused `ShadowFlush` that must be used
//! ```
//!
//! [`Mapper::unmap`](crate::Mapper::unmap) and [`PageTables::protect`](crate::PageTables::protect)
//! return their token ([`Unmapped::flush`], [`Protected::flush`]) inside `#[must_use]`
//! outcomes.
//!
//! Sources: KVM API doc (`KVM_SET_USER_MEMORY_REGION`: deleting a slot drops its shadow
//! pages); Intel SDM Vol. 3A §4.10.4 (why a removed or reduced entry needs an invalidation).

use crate::addr::{Gpa, Gva};
use crate::{PageSize, PteFlags};

/// A shadow flush that is owed (or not) after page-table edits. Consume it with
/// [`ShadowFlush::take_needed`] (the VMM's flush), or [`ShadowFlush::discard`] where no KVM
/// shadow exists (host-only harnesses).
#[must_use = "a page-table edit may need a shadow flush: flush with it, merge it, or discard it"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShadowFlush {
    needed: bool,
}

impl ShadowFlush {
    /// No flush owed.
    pub const fn none() -> Self {
        ShadowFlush { needed: false }
    }

    /// A flush is owed (a mapping that KVM may have shadowed was removed or reduced).
    pub const fn needed() -> Self {
        ShadowFlush { needed: true }
    }

    /// Owed iff `needed`.
    pub const fn when(needed: bool) -> Self {
        ShadowFlush { needed }
    }

    /// True if a flush is owed.
    pub const fn is_needed(&self) -> bool {
        self.needed
    }

    /// One token owing a flush if either does.
    pub const fn merge(self, other: ShadowFlush) -> Self {
        ShadowFlush {
            needed: self.needed || other.needed,
        }
    }

    /// Add `other` into `self` in place (a pending flush kept for later).
    pub fn absorb(&mut self, other: ShadowFlush) {
        self.needed |= other.needed;
    }

    /// Consume the token: true if the caller must flush now (exactly once per owed flush).
    #[must_use = "true means the shadow must be flushed now"]
    pub const fn take_needed(self) -> bool {
        self.needed
    }

    /// Drop the token on purpose where there is no KVM shadow to flush (host-only harnesses
    /// and checks). Returns whether a flush was owed.
    pub const fn discard(self) -> bool {
        self.needed
    }
}

/// What [`Mapper::unmap`](crate::Mapper::unmap) removed, and the shadow flush it owes.
#[must_use = "unmapped leaves owe a shadow flush and their data frames: free them and flush"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unmapped {
    /// The removed leaves `(gva, gpa, size)` in GVA order (the caller frees the data frames).
    pub leaves: Vec<(Gva, Gpa, PageSize)>,
    /// Owed iff a removed leaf had its Accessed bit set: KVM builds shadow entries only from
    /// guest PTEs with A set (its walker sets A; prefetch skips A=0 entries), so a
    /// never-accessed leaf needs no flush.
    pub flush: ShadowFlush,
}

/// What [`PageTables::protect`](crate::PageTables::protect) changed, and the shadow flush it
/// owes.
#[must_use = "reduced rights owe a shadow flush: flush with it, merge it, or discard it"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Protected {
    /// Leaf entries whose value changed (0: no TLB flush needed).
    pub changed: u64,
    /// Owed iff a leaf with its Accessed bit set lost a right ([`reduces`]): P, RW or US
    /// cleared, or NX set. Granting rights owes nothing (a stale shadow entry only faults,
    /// and KVM refreshes it from the guest PTE).
    pub flush: ShadowFlush,
}

/// True if going from leaf `old` to leaf `new` takes a right away: RW or US cleared, NX set,
/// or P cleared (Intel SDM Vol. 3A §4.10.4.3: such a change needs an invalidation).
pub fn reduces(old: u64, new: u64) -> bool {
    let (p, rw, us, nx) = (
        PteFlags::PRESENT.bits(),
        PteFlags::WRITABLE.bits(),
        PteFlags::USER.bits(),
        PteFlags::NO_EXECUTE.bits(),
    );
    let lost = |bit: u64| old & bit != 0 && new & bit == 0;
    lost(p) || lost(rw) || lost(us) || (new & nx != 0 && old & nx == 0)
}

/// The flush owed for a leaf entry `old` that is removed or whose rights are reduced.
pub(crate) fn owed_for(old: u64) -> ShadowFlush {
    ShadowFlush::when(old & PteFlags::ACCESSED.bits() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_take() {
        assert!(!ShadowFlush::none().take_needed());
        assert!(ShadowFlush::none()
            .merge(ShadowFlush::needed())
            .take_needed());
        let mut p = ShadowFlush::default();
        p.absorb(ShadowFlush::when(false));
        assert!(!p.is_needed());
        p.absorb(ShadowFlush::needed());
        assert!(std::mem::take(&mut p).take_needed());
        // Taken once: the pending flush is gone.
        assert!(!p.take_needed());
    }
}
