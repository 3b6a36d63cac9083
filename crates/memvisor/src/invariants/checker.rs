//! The machinery the checks share: the [`Checker`] that collects violations (at most
//! [`super::MAX_VIOLATIONS`]), the frame [`Claim`]s of each owner, the stacks, and small helpers.

use super::{FrameState, Violation, MAX_VIOLATIONS};
use crate::layout::{
    BOOT_STACK_BOTTOM, BOOT_STACK_TOP, DF_STACK_BOTTOM, DF_STACK_TOP, USER_STACK_BOTTOM,
    USER_STACK_TOP,
};
use crate::space::AddressSpace;

/// A run of frames claimed by an owner.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub(super) start: u64,
    pub(super) count: u64,
    pub(super) state: FrameState,
    /// The GVA of the leaf that maps it (data frames).
    pub(super) gva: Option<u64>,
}

pub(super) struct Checker<'a> {
    pub(super) space: &'a AddressSpace,
    pub(super) out: Vec<Violation>,
    pub(super) dropped: usize,
}

impl Checker<'_> {
    pub(super) fn push(&mut self, v: Violation) {
        if self.out.len() < MAX_VIOLATIONS {
            self.out.push(v);
        } else {
            self.dropped += 1;
        }
    }

    /// A violation about the leaf (or absence of one) at `gva`: the PTE is looked up.
    pub(super) fn at(&mut self, kind: &'static str, frame: Option<u64>, gva: u64, detail: String) {
        let (pte, pte_at) = leaf_pte(self.space, gva);
        self.push(Violation {
            kind,
            frame,
            gva: Some(gva),
            pte,
            pte_at,
            detail,
        });
    }

    pub(super) fn frame(&mut self, kind: &'static str, frame: u64, detail: String) {
        self.push(Violation {
            kind,
            frame: Some(frame),
            gva: None,
            pte: None,
            pte_at: None,
            detail,
        });
    }

    pub(super) fn plain(&mut self, kind: &'static str, detail: String) {
        self.push(Violation {
            kind,
            frame: None,
            gva: None,
            pte: None,
            pte_at: None,
            detail,
        });
    }
}

/// The leaf PTE mapping `gva` and where it is (table PFN, index), if any.
fn leaf_pte(space: &AddressSpace, gva: u64) -> (Option<u64>, Option<(u64, u16)>) {
    match space.pt.translate_raw(&space.ram.mem, gva) {
        Ok(t) => {
            let at = t.entries().last().map(|e| (e.table.raw(), e.index));
            (Some(t.leaf_pte.raw()), at)
        }
        Err(_) => (None, None),
    }
}

/// `[a, a + n)` and `[b, b + m)` overlap.
pub(super) fn overlaps(a: u64, n: u64, b: u64, m: u64) -> bool {
    a < b.saturating_add(m) && b < a.saturating_add(n)
}

/// The three stacks: (bottom, top) GVAs; their guard is the page below `bottom`.
pub(super) const STACKS: [(u64, u64); 3] = [
    (BOOT_STACK_BOTTOM, BOOT_STACK_TOP),
    (DF_STACK_BOTTOM, DF_STACK_TOP),
    (USER_STACK_BOTTOM, USER_STACK_TOP),
];
