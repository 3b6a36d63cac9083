//! Frame ownership and accounting: page-table frames all in the pool; every frame claimed by
//! at most one owner, with the matching allocator state; per zone `present = reserved +
//! managed` and `managed = free + allocated` with the owners accounting for every reserved and
//! allocated frame (else the unowned ones are named); frames by state add up to RAM.

use super::checker::{Checker, Claim};
use super::{FrameCounts, FrameState, ZoneCount};
use crate::addr::PAGE_SIZE;
use crate::layout::{BOOT_INFO_GPA, TABLE_POOL_CHUNK_FRAMES};

/// Check that every page-table frame is a table frame of the pool, and that there are as many
/// as the pool has in use. Returns the number of page-table frames.
pub(super) fn check_tables(c: &mut Checker<'_>) -> u64 {
    let space = c.space;
    let mut tables = 0u64;
    for t in space.pt.table_frames() {
        tables += 1;
        if !space.pool.owns(t) || !space.pool.is_table(t) {
            c.frame(
                "table_frame_outside_pool",
                t.raw(),
                "a page-table frame is not a table frame of the pool".into(),
            );
        }
    }
    if tables != space.pool.in_use() {
        c.plain(
            "table_frame_outside_pool",
            format!(
                "{tables} page-table frames, but the pool has {} in use",
                space.pool.in_use()
            ),
        );
    }
    tables
}

/// Add the boot structures' claims to the leaves' `claims` and check ownership, allocator
/// state and the per-zone counts (see the module docs); `tables` is [`check_tables`]' count.
pub(super) fn check_frames(
    c: &mut Checker<'_>,
    mut claims: Vec<Claim>,
    tables: u64,
) -> (FrameCounts, Vec<ZoneCount>) {
    let space = c.space;
    let (kstart, kend) = (space.kernel.phys_start, space.kernel.phys_end);
    // Frame claims: every owner's frames.
    let data_frames: u64 = claims
        .iter()
        .filter(|c| matches!(c.state, FrameState::Mapped { .. }))
        .map(|c| c.count)
        .sum();
    let boot_info = BOOT_INFO_GPA / PAGE_SIZE;
    claims.push(Claim {
        start: 0,
        count: 1,
        state: FrameState::BootReserved,
        gva: None,
    });
    claims.push(Claim {
        start: boot_info,
        count: 1,
        state: FrameState::BootReserved,
        gva: None,
    });
    if kend > kstart {
        claims.push(Claim {
            start: kstart / PAGE_SIZE,
            count: (kend - kstart) / PAGE_SIZE,
            state: FrameState::Kernel,
            gva: None,
        });
    }
    for ch in &space.pool.chunks {
        claims.push(Claim {
            start: ch.raw(),
            count: TABLE_POOL_CHUNK_FRAMES,
            state: FrameState::TablePool,
            gva: None,
        });
    }
    for p in &space.stack_frames {
        claims.push(Claim {
            start: p.raw(),
            count: 1,
            state: FrameState::Stack,
            gva: None,
        });
    }
    for &(p, n) in space.host_areas().iter().flat_map(|a| &a.frames) {
        claims.push(Claim {
            start: p.raw(),
            count: n,
            state: FrameState::HostArea,
            gva: None,
        });
    }
    claims.sort_unstable_by_key(|c| c.start);
    let mut last: Option<Claim> = None;
    for cl in &claims {
        if let Some(p) = last {
            if cl.start < p.start + p.count {
                let detail = format!(
                    "frame has two owners: {:?}{} and {:?}{}",
                    p.state,
                    p.gva.map(|g| format!(" (GVA {g:#x})")).unwrap_or_default(),
                    cl.state,
                    cl.gva.map(|g| format!(" (GVA {g:#x})")).unwrap_or_default(),
                );
                match cl.gva.or(p.gva) {
                    Some(g) => c.at("frame_double_owner", Some(cl.start), g, detail),
                    None => c.frame("frame_double_owner", cl.start, detail),
                }
            }
        }
        if last.is_none_or(|p| cl.start + cl.count > p.start + p.count) {
            last = Some(*cl);
        }
        // The allocator must agree: reserved for boot structures and the kernel, allocated
        // for everything else.
        for pfn in cl.start..cl.start + cl.count {
            let p = crate::addr::Pfn::new(pfn);
            let ok = if cl.state.reserved() {
                space.zones.is_reserved(p) && space.zones.is_ram(p)
            } else {
                space.zones.is_allocated(p)
            };
            if !ok {
                let want = if cl.state.reserved() {
                    "reserved RAM"
                } else {
                    "allocated"
                };
                let detail = format!("{:?} frame is not {want} in the zone allocator", cl.state);
                match cl.gva {
                    Some(g) => c.at(
                        "frame_state",
                        Some(pfn),
                        g + (pfn - cl.start) * PAGE_SIZE,
                        detail,
                    ),
                    None => c.frame("frame_state", pfn, detail),
                }
                break;
            }
        }
    }

    // Per zone: present = reserved + free + allocated, and the owners account for all of
    // the reserved and allocated frames.
    let stats = space.zones.zones();
    let mut zones = Vec::new();
    let mut counts_by_state = FrameCounts::default();
    for z in &stats {
        let (zs, ze) = (z.start_pfn.raw(), z.end_pfn.raw());
        let (mut owned, mut reserved) = (0u64, 0u64);
        for cl in &claims {
            let (s, e) = (cl.start.max(zs), (cl.start + cl.count).min(ze));
            if s < e {
                if cl.state.reserved() {
                    reserved += e - s;
                } else {
                    owned += e - s;
                }
            }
        }
        let allocated = z.managed.saturating_sub(z.free);
        let zr = z.present.saturating_sub(z.managed);
        if z.managed > z.present || z.free > z.managed {
            c.plain(
                "zone_count",
                format!(
                    "zone {}: present {} managed {} free {} do not add up",
                    z.name, z.present, z.managed, z.free
                ),
            );
        }
        if reserved != zr {
            c.plain(
                "zone_count",
                format!("zone {}: {zr} reserved frames, {reserved} claimed by boot structures and the kernel", z.name),
            );
        }
        if owned != allocated {
            c.plain(
                "zone_count",
                format!(
                    "zone {}: {allocated} allocated frames, {owned} with an owner",
                    z.name
                ),
            );
            if owned < allocated {
                hunt_unowned(c, &claims, zs, ze);
            }
        }
        zones.push(ZoneCount {
            name: z.name,
            present: z.present,
            managed: z.managed,
            free: z.free,
            allocated,
            reserved: zr,
            owned,
        });
        counts_by_state.ram += z.present;
        counts_by_state.free += z.free;
    }
    let ram_frames: u64 = space.zones.ram_frames().map(|(_, n)| n).sum();
    if ram_frames != counts_by_state.ram {
        c.plain(
            "zone_count",
            format!(
                "{ram_frames} RAM frames, but the zones hold {} present frames",
                counts_by_state.ram
            ),
        );
    }
    for cl in &claims {
        let n = cl.count;
        match cl.state {
            FrameState::BootReserved => counts_by_state.boot_reserved += n,
            FrameState::Kernel => counts_by_state.kernel += n,
            FrameState::TablePool => counts_by_state.table_pool += n,
            FrameState::Stack => counts_by_state.stacks += n,
            FrameState::Mapped { .. } => counts_by_state.mapped += n,
            FrameState::Blob | FrameState::HostArea => counts_by_state.host_data += n,
        }
    }
    counts_by_state.page_tables = tables;
    let f = &counts_by_state;
    if f.free + f.boot_reserved + f.kernel + f.table_pool + f.stacks + f.mapped + f.host_data
        != f.ram
    {
        c.plain(
            "zone_count",
            format!("frames by state do not add up to the RAM frames: {f:?}"),
        );
    }
    if data_frames != space.counters.mapped_frames {
        c.plain(
            "mapped_counter",
            format!(
                "{data_frames} frames mapped in regions, but the counter says {}",
                space.counters.mapped_frames
            ),
        );
    }
    (counts_by_state, zones)
}

/// Name (some of) the allocated frames of zone span `[zs, ze)` that no owner claims.
fn hunt_unowned(c: &mut Checker<'_>, claims: &[Claim], zs: u64, ze: u64) {
    let mut found = 0;
    for pfn in zs..ze {
        if found >= 8 {
            break;
        }
        if !c.space.zones.is_allocated(crate::addr::Pfn::new(pfn)) {
            continue;
        }
        // Claims are sorted and (else already reported) disjoint: only the last one starting
        // at or before `pfn` can cover it.
        let i = claims.partition_point(|cl| cl.start <= pfn);
        let claimed = i > 0 && pfn < claims[i - 1].start + claims[i - 1].count;
        if !claimed {
            found += 1;
            c.frame(
                "frame_unowned",
                pfn,
                "allocated frame with no owner (leaked: not free, not mapped, not a table or stack)"
                    .into(),
            );
        }
    }
}
