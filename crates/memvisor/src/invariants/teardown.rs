//! The teardown check at exit: unmap every region, then every data frame must be free and the
//! invariants must still hold; with the page tables, pool chunks, stacks and host data given
//! back (on a copy of the zone allocator) every managed frame must be free.

use super::leaves::BLOB_AREA;
use super::{check, TeardownReport, Violation, MAX_VIOLATIONS};
use crate::addr::{Gva, PAGE_SIZE};
use crate::layout::{MMAP_WINDOW_END, MMAP_WINDOW_START, TABLE_POOL_CHUNK_FRAMES};
use crate::space::AddressSpace;

/// Unmap every region and check that every data frame is free again, that the invariants
/// still hold, and that once the page tables, the pool chunks and the stacks are given back
/// (simulated on a copy of the zone allocator) every managed frame is free.
///
/// # Errors
/// The violations found.
pub fn teardown_check(space: &mut AddressSpace) -> Result<TeardownReport, Vec<Violation>> {
    let before = check(space)?;
    let mut out = Vec::new();
    let mut data: Vec<u64> = Vec::new();
    let window = space
        .pt
        .leaves_in_range(
            &space.ram.mem,
            Gva::new(MMAP_WINDOW_START),
            MMAP_WINDOW_END - MMAP_WINDOW_START,
        )
        .unwrap_or_default();
    for leaf in window {
        let first = leaf.gpa.raw() / PAGE_SIZE;
        data.extend(first..first + leaf.size.bytes() / PAGE_SIZE);
    }
    let regions: Vec<(u64, u64)> = space.regions.values().map(|r| (r.start, r.end)).collect();
    for &(s, e) in &regions {
        if let Err(st) = space.munmap(s, e - s) {
            out.push(Violation {
                kind: "teardown",
                frame: None,
                gva: Some(s),
                pte: None,
                pte_at: None,
                detail: format!("munmap of region [{s:#x}, {e:#x}) failed: {}", st.name()),
            });
        }
    }
    // No KVM here: the owed shadow flush has nothing to flush.
    space.take_shadow_flush().discard();
    if let Err(v) = check(space) {
        out.extend(v);
    }
    for &pfn in &data {
        if !space.zones.is_free(crate::addr::Pfn::new(pfn)) {
            out.push(Violation {
                kind: "teardown",
                frame: Some(pfn),
                gva: None,
                pte: None,
                pte_at: None,
                detail: "data frame not free after every region was unmapped".into(),
            });
            if out.len() >= MAX_VIOLATIONS {
                break;
            }
        }
    }
    if space.counters.mapped_frames != 0 || !space.regions.is_empty() {
        out.push(Violation {
            kind: "teardown",
            frame: None,
            gva: None,
            pte: None,
            pte_at: None,
            detail: format!(
                "{} regions and {} mapped frames left after unmapping every region",
                space.regions.len(),
                space.counters.mapped_frames
            ),
        });
    }
    // Give back the boot structures on a copy of the allocator: then every managed frame must
    // be free (kernel image and boot info stay reserved, not managed).
    let mut zones = space.zones.clone();
    let mut boot_frames = 0;
    for ch in &space.pool.chunks {
        if zones.free(*ch, TABLE_POOL_CHUNK_FRAMES).is_ok() {
            boot_frames += TABLE_POOL_CHUNK_FRAMES;
        } else {
            out.push(Violation {
                kind: "teardown",
                frame: Some(ch.raw()),
                gva: None,
                pte: None,
                pte_at: None,
                detail: "page-table pool chunk cannot be freed".into(),
            });
        }
    }
    let blob: Vec<(u64, u64)> = space
        .pt
        .leaves_in_range(
            &space.ram.mem,
            Gva::new(BLOB_AREA.start),
            BLOB_AREA.end - BLOB_AREA.start,
        )
        .unwrap_or_default()
        .iter()
        .map(|l| (l.gpa.raw() / PAGE_SIZE, l.size.bytes() / PAGE_SIZE))
        .collect();
    let host_data = space
        .host_areas()
        .iter()
        .flat_map(|a| &a.frames)
        .map(|&(p, n)| (p.raw(), n))
        .chain(blob);
    for (p, n) in host_data {
        if zones.free(crate::addr::Pfn::new(p), n).is_ok() {
            boot_frames += n;
        } else {
            out.push(Violation {
                kind: "teardown",
                frame: Some(p),
                gva: None,
                pte: None,
                pte_at: None,
                detail: "blob or fault-matrix frames cannot be freed".into(),
            });
        }
    }
    for p in &space.stack_frames {
        if zones.free(*p, 1).is_ok() {
            boot_frames += 1;
        } else {
            out.push(Violation {
                kind: "teardown",
                frame: Some(p.raw()),
                gva: None,
                pte: None,
                pte_at: None,
                detail: "stack frame cannot be freed".into(),
            });
        }
    }
    let (mut free, mut managed) = (0, 0);
    for z in zones.zones() {
        free += z.free;
        managed += z.managed;
        if z.free != z.managed {
            out.push(Violation {
                kind: "teardown",
                frame: None,
                gva: None,
                pte: None,
                pte_at: None,
                detail: format!(
                    "zone {}: {} of {} managed frames free after teardown",
                    z.name, z.free, z.managed
                ),
            });
        }
    }
    if out.is_empty() {
        Ok(TeardownReport {
            regions_unmapped: regions.len() as u64,
            data_frames_freed: before.frames.mapped,
            boot_frames,
            free_frames: free,
            managed_frames: managed,
        })
    } else {
        Err(out)
    }
}
