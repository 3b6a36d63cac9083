//! The leaf walk: every leaf PTE is classified by area (doorbell, stage-2 test layout, blob,
//! direct map, kernel image, stacks, mmap window) and checked for W^X, RAM bounds, page-table
//! frame aliases, writable aliases of the kernel's read-only segments and its area's rights.
//! The frames mapped by blob and mmap-region leaves become [`Claim`]s for the frame checks
//! (`super::frames`). In the fault matrix's area only the walkable leaves are checked.

use super::checker::{overlaps, Checker, Claim, STACKS};
use super::{FrameState, LeafCounts, LEAK_FRAMES_LISTED};
use crate::addr::{Gva, PAGE_SIZE};
use crate::layout::{DIRECT_MAP_BASE, MMAP_WINDOW_END, MMAP_WINDOW_START, TABLE_POOL_CHUNK_FRAMES};
use crate::paging::{Leaf, PteFlags};
use crate::space::ops::pte_flags_for;
use crate::space::AddressSpace;
use memvisor_abi::{stage2 as s2, DOORBELL_GPA, DOORBELL_GVA};
use std::collections::{BTreeMap, HashMap};

/// The blob area: the PML4 slot of [`crate::layout::BLOB_GVA`].
pub(super) use crate::layout::BLOB_AREA;

/// Where a leaf lives.
enum Area {
    Doorbell,
    Stage2Test,
    Blob,
    Direct,
    Kernel(usize),
    Stack(u64),
    Window,
    Other,
}

/// What the leaf walk found: leaves by area, the frames that blob and mmap-region leaves map
/// (one [`Claim`] per leaf), and per region (by start GVA) the frames mapped for it and the
/// first [`LEAK_FRAMES_LISTED`] of them.
pub(super) struct LeafScan {
    pub(super) counts: LeafCounts,
    pub(super) claims: Vec<Claim>,
    pub(super) mapped_in_region: BTreeMap<u64, (u64, Vec<u64>)>,
}

/// Walk and check every leaf (see the module docs).
pub(super) fn check_leaves(c: &mut Checker<'_>) -> LeafScan {
    let space = c.space;
    let mem = &space.ram.mem;
    // W^X is checked where the host enforces it: with NX, and not in the fault matrix's
    // documented no-NX relaxation (`BuildOptions::no_nx`).
    let nx = space.features.nx && !space.build_options.no_nx;
    let pool_frames = |gpa: u64, size: u64| -> Option<u64> {
        space.pool.chunks.iter().find_map(|ch| {
            let (s, n) = (ch.raw() * PAGE_SIZE, TABLE_POOL_CHUNK_FRAMES * PAGE_SIZE);
            overlaps(gpa, size, s, n).then(|| gpa.max(s) / PAGE_SIZE)
        })
    };
    let (kstart, kend) = (space.kernel.phys_start, space.kernel.phys_end);
    // Kernel segments by the range the build maps (`space::image`, 2 MiB text included):
    // (gva_lo, gva_hi, gpa_lo), in segment order.
    let segs: Vec<(u64, u64, u64)> = crate::space::image::image_mappings(&space.kernel)
        .iter()
        .map(|m| (m.gva, m.gva + m.len, m.gpa))
        .collect();
    // Expected stack mappings: GVA -> PFN (the build maps them in this order).
    let mut stack_map: HashMap<u64, u64> = HashMap::new();
    let mut it = space.stack_frames.iter();
    for (bottom, top) in STACKS {
        let mut g = bottom;
        while g < top {
            if let Some(p) = it.next() {
                stack_map.insert(g, p.raw());
            }
            g += PAGE_SIZE;
        }
    }
    if stack_map.len() != space.stack_frames.len() {
        c.plain(
            "stack",
            format!(
                "{} stack frames recorded for {} stack pages",
                space.stack_frames.len(),
                stack_map.len()
            ),
        );
    }
    let direct_end = DIRECT_MAP_BASE.saturating_add(space.ram.end());
    let mut counts = LeafCounts::default();

    let leaves: Vec<Leaf> = match walk_leaves(space) {
        Ok(l) => l,
        Err(e) => {
            c.plain("walk", format!("the page-table walk failed: {e}"));
            space.pt.leaves(mem)
        }
    };
    for area in space.host_areas() {
        // A scenario's host area (the fault matrix's: data frame, records buffer) may sit on
        // tables with deliberately non-present or reserved-bit entries: only what can be
        // walked is checked: every leaf there maps one of its frames.
        let len = area.gva.end - area.gva.start;
        let mine = space
            .pt
            .leaves_in_range(mem, Gva::new(area.gva.start), len)
            .unwrap_or_default();
        for l in mine {
            let (first, n) = (l.gpa.raw() / PAGE_SIZE, l.size.bytes() / PAGE_SIZE);
            let owned = area
                .frames
                .iter()
                .any(|&(p, k)| first >= p.raw() && first + n <= p.raw() + k);
            counts.host_data += 1;
            if !owned {
                c.at(
                    "stray_leaf",
                    Some(first),
                    l.gva.raw(),
                    "a leaf of a host area maps a frame the area does not own".into(),
                );
            }
        }
    }
    let mut claims: Vec<Claim> = Vec::new();
    let mut mapped_in_region: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    let mut stack_leaves = 0u64;
    for leaf in &leaves {
        let (gva, gpa, size) = (leaf.gva.raw(), leaf.gpa.raw(), leaf.size.bytes());
        let f = leaf.flags;
        let w = f.contains(PteFlags::WRITABLE);
        let x = !nx || !f.contains(PteFlags::NO_EXECUTE);
        let pfn = gpa / PAGE_SIZE;
        if nx && w && x {
            c.at(
                "wx",
                Some(pfn),
                gva,
                "leaf is writable and executable".into(),
            );
        }
        let area = if gva == DOORBELL_GVA && size == PAGE_SIZE {
            Area::Doorbell
        } else if gva >= s2::GVA_BASE
            && gpa
                .checked_sub(gva - s2::GVA_BASE)
                .is_some_and(crate::layout::PhysLayout::is_stage2_base)
            && space.stage2_ranges.iter().any(|&(s, n)| {
                gpa >= s
                    && gpa
                        .checked_add(size)
                        .is_some_and(|e| e <= s.saturating_add(n))
            })
            && !space.ram.contains(gpa, size)
            || space.device_maps.iter().any(|&(g, len, p)| {
                gva >= g && gva - g < len && gpa == p + (gva - g) && !space.ram.contains(gpa, size)
            })
        {
            Area::Stage2Test
        } else if BLOB_AREA.contains(&gva) {
            Area::Blob
        } else if (DIRECT_MAP_BASE..direct_end).contains(&gva) {
            Area::Direct
        } else if let Some(i) = segs.iter().position(|&(lo, hi, _)| gva >= lo && gva < hi) {
            Area::Kernel(i)
        } else if let Some(&p) = stack_map.get(&gva) {
            Area::Stack(p)
        } else if (MMAP_WINDOW_START..MMAP_WINDOW_END).contains(&gva) {
            Area::Window
        } else {
            Area::Other
        };
        if matches!(area, Area::Doorbell) {
            counts.doorbell += 1;
            if gpa != DOORBELL_GPA {
                c.at(
                    "doorbell",
                    Some(pfn),
                    gva,
                    format!("the doorbell page maps GPA {gpa:#x}, not {DOORBELL_GPA:#x}"),
                );
            }
            continue;
        }
        if matches!(area, Area::Stage2Test) {
            counts.stage2_test += 1;
            continue;
        }
        if !space.ram.contains(gpa, size) {
            c.at(
                "leaf_outside_ram",
                Some(pfn),
                gva,
                format!("leaf of {size:#x} bytes maps GPA {gpa:#x}, not (wholly) guest RAM"),
            );
            continue;
        }
        if let Some(p) = pool_frames(gpa, size) {
            if w {
                c.at(
                    "table_frame_writable",
                    Some(p),
                    gva,
                    "a writable leaf maps a page-table pool frame".into(),
                );
            } else if !matches!(area, Area::Direct) {
                c.at(
                    "table_frame_mapped",
                    Some(p),
                    gva,
                    "a leaf outside the direct map maps a page-table pool frame".into(),
                );
            }
        }
        // No writable alias of a non-writable kernel segment (text, rodata) anywhere.
        if w && overlaps(gpa, size, kstart, kend - kstart) {
            let bad = space
                .kernel
                .segments
                .iter()
                .find(|s| !s.write && overlaps(gpa, size, s.gpa & !(PAGE_SIZE - 1), s.memsz));
            if let Some(s) = bad {
                c.at(
                    "kernel_alias_writable",
                    Some(gpa.max(s.gpa) / PAGE_SIZE),
                    gva,
                    "a writable leaf maps a frame of a read-only kernel segment".into(),
                );
            }
        }
        match area {
            Area::Doorbell | Area::Stage2Test => {}
            Area::Blob => {
                counts.host_data += 1;
                if w {
                    c.at("blob", Some(pfn), gva, "a blob page is writable".into());
                }
                claims.push(Claim {
                    start: pfn,
                    count: size / PAGE_SIZE,
                    state: FrameState::Blob,
                    gva: Some(gva),
                });
            }
            Area::Direct => {
                counts.direct += 1;
                if !w {
                    counts.direct_read_only += 1;
                }
                if gpa != gva - DIRECT_MAP_BASE {
                    c.at(
                        "direct_map",
                        Some(pfn),
                        gva,
                        format!(
                            "direct-map leaf maps GPA {gpa:#x}, not {:#x}",
                            gva - DIRECT_MAP_BASE
                        ),
                    );
                }
                if w && overlaps(gpa, size, kstart, kend - kstart) {
                    c.at(
                        "kernel_alias_writable",
                        Some(gpa.max(kstart) / PAGE_SIZE),
                        gva,
                        "the direct map maps kernel-image frames writable".into(),
                    );
                }
                if x && nx {
                    c.at(
                        "direct_map",
                        Some(pfn),
                        gva,
                        "direct-map leaf is executable".into(),
                    );
                }
            }
            Area::Kernel(i) => {
                counts.kernel += 1;
                let (lo, hi, gpa_lo) = segs[i];
                let s = space.kernel.segments[i];
                if gva.saturating_add(size) > hi {
                    c.at(
                        "kernel_rights",
                        Some(pfn),
                        gva,
                        format!(
                            "kernel leaf of {size:#x} bytes runs past its segment's end {hi:#x}"
                        ),
                    );
                }
                if gpa != gpa_lo + (gva - lo) {
                    c.at(
                        "kernel_rights",
                        Some(pfn),
                        gva,
                        format!(
                            "kernel leaf maps GPA {gpa:#x}, not {:#x}",
                            gpa_lo + (gva - lo)
                        ),
                    );
                }
                if w != s.write || (nx && x != s.exec) {
                    c.at(
                        "kernel_rights",
                        Some(pfn),
                        gva,
                        format!(
                            "kernel leaf rights W={} X={} differ from its segment's W={} X={}",
                            w, x, s.write, s.exec
                        ),
                    );
                }
            }
            Area::Stack(p) => {
                counts.stacks += 1;
                stack_leaves += 1;
                if pfn != p || size != PAGE_SIZE {
                    c.at(
                        "stack",
                        Some(pfn),
                        gva,
                        format!("stack page maps frame {pfn:#x}, not its stack frame {p:#x}"),
                    );
                }
                if x && nx {
                    c.at("stack", Some(pfn), gva, "stack page is executable".into());
                }
            }
            Area::Window => {
                counts.mmap += 1;
                let region = space
                    .regions
                    .range(..=gva)
                    .next_back()
                    .map(|(_, r)| r)
                    .filter(|r| gva.saturating_add(size) <= r.end);
                let Some(r) = region else {
                    c.at(
                        "leaf_outside_region",
                        Some(pfn),
                        gva,
                        "a leaf in the mmap window lies outside every region".into(),
                    );
                    continue;
                };
                let want = pte_flags_for(r.prot_at(gva), nx);
                let mask =
                    PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER | PteFlags::NO_EXECUTE;
                if (f & mask) != (want & mask) {
                    c.at(
                        "region_prot",
                        Some(pfn),
                        gva,
                        format!(
                            "leaf flags [{}] differ from region {}'s protection {:#x} ([{}])",
                            f & mask,
                            r.id,
                            r.prot_at(gva).bits(),
                            want & mask
                        ),
                    );
                }
                claims.push(Claim {
                    start: pfn,
                    count: size / PAGE_SIZE,
                    state: FrameState::Mapped { region: r.id },
                    gva: Some(gva),
                });
                let e = mapped_in_region.entry(r.start).or_default();
                e.0 += size / PAGE_SIZE;
                for i in 0..size / PAGE_SIZE {
                    if e.1.len() < LEAK_FRAMES_LISTED {
                        e.1.push(pfn + i);
                    }
                }
            }
            Area::Other => c.at(
                "stray_leaf",
                Some(pfn),
                gva,
                "a leaf outside the direct map, kernel image, stacks, doorbell and mmap window"
                    .into(),
            ),
        }
    }
    if stack_leaves != stack_map.len() as u64 {
        c.plain(
            "stack",
            format!(
                "{stack_leaves} stack pages mapped, {} expected",
                stack_map.len()
            ),
        );
    }
    LeafScan {
        counts,
        claims,
        mapped_in_region,
    }
}

/// Every leaf outside the host areas (see [`check_leaves`]).
fn walk_leaves(space: &AddressSpace) -> Result<Vec<Leaf>, crate::paging::PagingError> {
    let mem = &space.ram.mem;
    if space.host_areas().is_empty() {
        return space.pt.try_leaves(mem);
    }
    let low_end = 1u64 << 47;
    let mut areas: Vec<_> = space.host_areas().iter().map(|a| a.gva.clone()).collect();
    areas.sort_unstable_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut at = 0u64;
    for r in areas.iter().chain(std::iter::once(&(low_end..low_end))) {
        if r.start > at {
            out.extend(space.pt.leaves_in_range(mem, Gva::new(at), r.start - at)?);
        }
        at = at.max(r.end);
    }
    out.extend(
        space
            .pt
            .leaves_in_range(mem, Gva::new(!(low_end - 1)), low_end)?,
    );
    Ok(out)
}
