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
//! Sources: KVM API doc (`KVM_SET_USER_MEMORY_REGION`: deleting a slot drops its shadow
//! pages); Intel SDM Vol. 3A §4.10.4 (why a removed or reduced entry needs an invalidation).

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
