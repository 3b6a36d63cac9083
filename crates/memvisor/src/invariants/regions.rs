//! Guard pages (below each stack, after each guarded region), the regions themselves
//! (aligned, disjoint, inside the mmap window, well-formed protection, populated ones fully
//! mapped), and the window's accounting: its free extents and the regions with their guards
//! partition it exactly (no GVA leak).

use super::checker::{Checker, STACKS};
use super::Leak;
use crate::addr::PAGE_SIZE;
use crate::layout::{MMAP_GUARD, MMAP_WINDOW_END, MMAP_WINDOW_START};
use crate::space::Backing;
use memvisor_abi::prot;
use std::collections::BTreeMap;

/// Check the guard pages, the regions and the window; `mapped_in_region` is the leaf walk's
/// frames by region ([`super::leaves::LeafScan`]). Returns the leak report: the frames still
/// mapped, by region.
pub(super) fn check_regions(
    c: &mut Checker<'_>,
    mut mapped_in_region: BTreeMap<u64, (u64, Vec<u64>)>,
) -> Vec<Leak> {
    let space = c.space;
    let mem = &space.ram.mem;
    // Guard pages: below each stack, after each region.
    for (bottom, _) in STACKS {
        let g = bottom - PAGE_SIZE;
        if space.pt.translate_raw(mem, g).is_ok() {
            c.at(
                "guard_mapped",
                None,
                g,
                "a stack guard page is mapped".into(),
            );
        }
    }

    // Regions, and the mmap window's bookkeeping.
    let mut prev_end = MMAP_WINDOW_START;
    let mut owned_gva: Vec<(u64, u64)> = Vec::new();
    let mut leaks = Vec::new();
    for (&key, r) in &space.regions {
        let guard = if r.guard { MMAP_GUARD } else { 0 };
        let aligned = r.start % PAGE_SIZE == 0 && r.end % PAGE_SIZE == 0;
        let in_window = r.start >= MMAP_WINDOW_START
            && r.end
                .checked_add(guard)
                .is_some_and(|e| e <= MMAP_WINDOW_END);
        if key != r.start || r.start >= r.end || !aligned || !in_window {
            c.at(
                "region",
                None,
                r.start,
                format!(
                    "region {} [{:#x}, {:#x}) is malformed or outside the window",
                    r.id, r.start, r.end
                ),
            );
            continue;
        }
        if r.start < prev_end {
            c.at(
                "region",
                None,
                r.start,
                format!(
                    "region {} overlaps the previous region or its guard page",
                    r.id
                ),
            );
        }
        prev_end = r.end + guard;
        owned_gva.push((r.start, r.end + guard));
        let prot_ok = r.prot.first_key_value().is_some_and(|(&k, _)| k == r.start)
            && r.prot.iter().all(|(&k, p)| {
                let p = p.bits();
                k >= r.start
                    && k < r.end
                    && p != prot::NONE
                    && p & !prot::ALL == 0
                    && !(p & prot::WRITE != 0 && p & prot::EXEC != 0)
            });
        if !prot_ok {
            c.at(
                "region",
                None,
                r.start,
                format!(
                    "region {} has a malformed protection map {:?}",
                    r.id, r.prot
                ),
            );
        }
        if r.guard && space.pt.translate_raw(mem, r.end).is_ok() {
            c.at(
                "guard_mapped",
                None,
                r.end,
                format!("the guard page of region {} is mapped", r.id),
            );
        }
        let (frames, pfns) = mapped_in_region.remove(&r.start).unwrap_or_default();
        let pages = (r.end - r.start) / PAGE_SIZE;
        if r.backing == Backing::Populated && frames != pages {
            c.at(
                "region",
                None,
                r.start,
                format!(
                    "populated region {} has {frames} of its {pages} pages mapped",
                    r.id
                ),
            );
        }
        if frames > 0 {
            leaks.push(Leak {
                region: r.id,
                start: r.start,
                end: r.end,
                frames,
                pfns,
            });
        }
    }
    let mut items: Vec<(u64, u64, bool)> = owned_gva.iter().map(|&(s, e)| (s, e, true)).collect();
    items.extend(
        space
            .window
            .extents()
            .map(|(s, l)| (s, s.saturating_add(l), false)),
    );
    items.sort_unstable();
    let mut cur = MMAP_WINDOW_START;
    for (s, e, owned) in items {
        if s > cur {
            c.plain(
                "window",
                format!("mmap window range [{cur:#x}, {s:#x}) is neither free nor owned by a region (GVA leak)"),
            );
        } else if s < cur {
            c.plain(
                "window",
                format!(
                    "mmap window range at {s:#x} is {} and overlaps the previous range",
                    if owned { "owned by a region" } else { "free" }
                ),
            );
        }
        cur = cur.max(e);
    }
    if cur != MMAP_WINDOW_END {
        c.plain(
            "window",
            format!("mmap window accounting ends at {cur:#x}, not {MMAP_WINDOW_END:#x}"),
        );
    }
    leaks
}
