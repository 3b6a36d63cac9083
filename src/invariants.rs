//! The host's invariants over the guest's memory (issue 7 §1), checked after every hypercall
//! batch in checked runs ([`crate::vmm::VmConfig::check_invariants`]) and at the end of every
//! run.
//!
//! [`check`] verifies, from the host's own records and a walk of every leaf PTE:
//!
//! * **Frames**: every RAM frame is in exactly one state — free, boot-reserved (page 0 and the
//!   boot-info frame), kernel image, page-table pool (a 2 MiB chunk), boot stack, or mapped
//!   for exactly one mmap region (its owner). Each claimed frame has the matching allocator
//!   state (reserved or allocated), no frame has two owners, no allocated frame is without an
//!   owner (a leak), and per zone `present = reserved + managed`, `managed = free +
//!   allocated` with `allocated` and `reserved` equal to the frames the owners claim.
//! * **Page tables**: every table frame lies in the pool; no leaf maps a pool frame writable,
//!   and only the direct map maps one at all (read-only, by design: see the README).
//! * **W^X**: no leaf is writable and executable; the kernel image's leaves carry exactly
//!   their segment's rights and no leaf anywhere maps a kernel frame writable unless its
//!   segment is writable (no writable alias of text or rodata).
//! * **Guards**: the page below each stack and the page after each mmap region are unmapped.
//! * **Leaves**: every leaf lies in a known area (direct map at its identity offset, kernel
//!   image, stacks, an mmap region with that region's protection) and inside guest RAM, except
//!   the documented doorbell page ([`memvisor_abi::DOORBELL_GPA`]) and the pages of the
//!   stage-2 test layout ([`memvisor_abi::stage2`], identity-offset GPAs above RAM).
//! * **Regions and the mmap window**: regions are page aligned, disjoint with their guard
//!   pages, inside the window; populated regions are fully mapped; the window's free extents
//!   and the regions (with guards) partition the window exactly (no GVA leak).
//!
//! A [`Violation`] names the frame, the GVA and the leaf PTE (value and location) concerned.
//! The [`InvariantReport`] counts frames by state and lists the frames still mapped at the
//! time of the check with their owner region (the leak report at exit). [`teardown_check`]
//! unmaps every region and checks that every data frame, and then every frame but the boot
//! structures', is free.

pub mod harness;

use crate::addr::{Gva, PAGE_SIZE};
use crate::layout::BLOB_GVA;
use crate::layout::{
    BOOT_INFO_GPA, BOOT_STACK_BOTTOM, BOOT_STACK_TOP, DF_STACK_BOTTOM, DF_STACK_TOP,
    DIRECT_MAP_BASE, MMAP_GUARD, MMAP_WINDOW_END, MMAP_WINDOW_START, TABLE_POOL_CHUNK_FRAMES,
    USER_STACK_BOTTOM, USER_STACK_TOP,
};
use crate::matrix::tables::AREA as MATRIX_AREA;
use crate::paging::{Leaf, PteFlags};
use crate::space::ops::pte_flags_for;
use crate::space::{AddressSpace, Backing};
use memvisor_abi::{prot, stage2 as s2, DOORBELL_GPA, DOORBELL_GVA};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Bytes of the stage-2 test layout the host may map outside RAM (four regions, 1 MiB apart).
const STAGE2_SPAN: u64 = 4 << 20;
/// The blob area: the PML4 slot of [`crate::layout::BLOB_GVA`].
const BLOB_AREA: core::ops::Range<u64> = BLOB_GVA..BLOB_GVA + (1 << 39);

/// Most violations one check reports (the rest are counted in the last one's detail).
pub const MAX_VIOLATIONS: usize = 64;
/// Most frames listed per region in the leak report.
pub const LEAK_FRAMES_LISTED: usize = 16;

/// One broken invariant: what, and the frame / GVA / PTE concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant (`frame_double_owner`, `frame_unowned`, `frame_state`, `zone_count`,
    /// `table_frame_writable`, `table_frame_mapped`, `table_frame_outside_pool`, `wx`,
    /// `kernel_rights`, `kernel_alias_writable`, `guard_mapped`, `leaf_outside_ram`,
    /// `stray_leaf`, `leaf_outside_region`, `region_prot`, `region`, `window`,
    /// `mapped_counter`, `walk`, `teardown`, ...).
    pub kind: &'static str,
    /// The frame (PFN) concerned, if any.
    pub frame: Option<u64>,
    /// The GVA concerned, if any.
    pub gva: Option<u64>,
    /// The raw leaf PTE that maps `gva`, if any.
    pub pte: Option<u64>,
    /// The table frame (PFN) and index holding that PTE.
    pub pte_at: Option<(u64, u16)>,
    /// Explanation.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(p) = self.frame {
            write!(f, " frame {:#x} (GPA {:#x})", p, p.wrapping_mul(PAGE_SIZE))?;
        }
        if let Some(g) = self.gva {
            write!(f, " GVA {g:#x}")?;
        }
        if let Some(p) = self.pte {
            write!(f, " PTE {p:#018x} [{}]", PteFlags::from_bits_truncate(p))?;
        }
        if let Some((t, i)) = self.pte_at {
            write!(f, " at table {t:#x}[{i}]")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a frame is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FrameState {
    /// Page 0 and the boot-info frame (reserved).
    BootReserved,
    /// The kernel image (reserved).
    Kernel,
    /// A page-table pool chunk (allocated): page tables and the pool's spare frames.
    TablePool,
    /// A boot, #DF or ring-3 stack frame (allocated).
    Stack,
    /// A read-only blob the host mapped for the guest at [`crate::layout::BLOB_GVA`] (e.g. a
    /// replay trace; allocated).
    Blob,
    /// The fault matrix's data frame and records buffer
    /// ([`AddressSpace::matrix_frames`]; allocated).
    Matrix,
    /// Mapped for the mmap region with this id (allocated).
    Mapped {
        /// The owner region's id.
        region: u64,
    },
}

impl FrameState {
    fn reserved(self) -> bool {
        matches!(self, FrameState::BootReserved | FrameState::Kernel)
    }
}

/// Frames by state (4 KiB frames); `ram` is the sum of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrameCounts {
    /// RAM frames.
    pub ram: u64,
    /// Free frames.
    pub free: u64,
    /// Page 0 and the boot-info frame.
    pub boot_reserved: u64,
    /// Kernel image frames.
    pub kernel: u64,
    /// Page-table pool frames (in use or spare).
    pub table_pool: u64,
    /// Pool frames holding page tables.
    pub page_tables: u64,
    /// Stack frames.
    pub stacks: u64,
    /// Frames mapped for mmap regions.
    pub mapped: u64,
    /// Blob frames and fault-matrix frames (other host-owned guest data).
    pub host_data: u64,
}

/// Per-zone accounting as checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ZoneCount {
    /// Zone name.
    pub name: &'static str,
    /// RAM frames in the zone.
    pub present: u64,
    /// Present minus reserved.
    pub managed: u64,
    /// Free frames.
    pub free: u64,
    /// Allocated frames (managed minus free).
    pub allocated: u64,
    /// Reserved RAM frames (present minus managed).
    pub reserved: u64,
    /// Allocated frames that have an owner.
    pub owned: u64,
}

/// Leaves by area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LeafCounts {
    /// Direct-map leaves.
    pub direct: u64,
    /// Direct-map leaves mapped read-only.
    pub direct_read_only: u64,
    /// Kernel-image leaves.
    pub kernel: u64,
    /// Stack leaves.
    pub stacks: u64,
    /// The doorbell page.
    pub doorbell: u64,
    /// Pages of the stage-2 test layout ([`memvisor_abi::stage2`]; GPAs above RAM).
    pub stage2_test: u64,
    /// Leaves in mmap regions.
    pub mmap: u64,
    /// Leaves of the blob area and of the fault matrix's area.
    pub host_data: u64,
}

/// Frames still mapped for one region (the leak report, at exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    /// The owner region's id.
    pub region: u64,
    /// Its first GVA.
    pub start: u64,
    /// One past its last GVA.
    pub end: u64,
    /// Frames mapped for it.
    pub frames: u64,
    /// The first [`LEAK_FRAMES_LISTED`] of them (PFNs).
    pub pfns: Vec<u64>,
}

/// What a successful [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InvariantReport {
    /// Frames by state.
    pub frames: FrameCounts,
    /// Per zone.
    pub zones: Vec<ZoneCount>,
    /// Leaves by area.
    pub leaves: LeafCounts,
    /// Live regions.
    pub regions: u64,
    /// Frames still mapped, by owner region.
    pub leaks: Vec<Leak>,
}

/// What [`teardown_check`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TeardownReport {
    /// Regions unmapped.
    pub regions_unmapped: u64,
    /// Data frames given back.
    pub data_frames_freed: u64,
    /// Frames that would be given back with the page tables, pool chunks, stacks and other
    /// host-owned guest data (blob, fault matrix).
    pub boot_frames: u64,
    /// Free frames in the end (with the boot structures given back).
    pub free_frames: u64,
    /// Managed frames (all free after teardown).
    pub managed_frames: u64,
}

/// The invariant part of the run report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InvariantSummary {
    /// Checked after every hypercall batch ([`crate::vmm::VmConfig::check_invariants`]).
    pub checked_every_batch: bool,
    /// Checks run during the run.
    pub checks: u64,
    /// Violations found (during the run, at exit or at teardown).
    pub violations: Vec<Violation>,
    /// The check at exit (frames by state, leak report), if it passed.
    pub at_exit: Option<InvariantReport>,
    /// The teardown check, if it passed.
    pub teardown: Option<TeardownReport>,
}

impl InvariantSummary {
    /// One line for the text report.
    pub fn line(&self) -> String {
        let mut parts = vec![format!(
            "{} check(s){}",
            self.checks,
            if self.checked_every_batch {
                " (after every batch)"
            } else {
                ""
            }
        )];
        if let Some(r) = &self.at_exit {
            let f = &r.frames;
            parts.push(format!(
                "at exit: {} RAM frames = {} free + {} boot + {} kernel + {} table pool ({} tables) + {} stacks + {} blob/matrix + {} mapped; {} frame(s) still mapped for {} region(s)",
                f.ram, f.free, f.boot_reserved, f.kernel, f.table_pool, f.page_tables, f.stacks,
                f.host_data, f.mapped, r.leaks.iter().map(|l| l.frames).sum::<u64>(), r.leaks.len()
            ));
        }
        if let Some(t) = &self.teardown {
            parts.push(format!(
                "teardown: {} region(s) unmapped, {} data frames freed, all {} managed frames free",
                t.regions_unmapped, t.data_frames_freed, t.managed_frames
            ));
        }
        if let Some(v) = self.violations.first() {
            parts.push(format!(
                "{} VIOLATION(S), first: {v}",
                self.violations.len()
            ));
        }
        parts.join("; ")
    }
}

/// A run of frames claimed by an owner.
#[derive(Debug, Clone, Copy)]
struct Claim {
    start: u64,
    count: u64,
    state: FrameState,
    /// The GVA of the leaf that maps it (data frames).
    gva: Option<u64>,
}

struct Checker<'a> {
    space: &'a AddressSpace,
    out: Vec<Violation>,
    dropped: usize,
}

impl Checker<'_> {
    fn push(&mut self, v: Violation) {
        if self.out.len() < MAX_VIOLATIONS {
            self.out.push(v);
        } else {
            self.dropped += 1;
        }
    }

    /// A violation about the leaf (or absence of one) at `gva`: the PTE is looked up.
    fn at(&mut self, kind: &'static str, frame: Option<u64>, gva: u64, detail: String) {
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

    fn frame(&mut self, kind: &'static str, frame: u64, detail: String) {
        self.push(Violation {
            kind,
            frame: Some(frame),
            gva: None,
            pte: None,
            pte_at: None,
            detail,
        });
    }

    fn plain(&mut self, kind: &'static str, detail: String) {
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
    match space.pt.translate(&space.ram.mem, Gva(gva)) {
        Ok(t) => {
            let at = t.entries().last().map(|e| (e.table.0, e.index));
            (Some(t.leaf_pte.raw()), at)
        }
        Err(_) => (None, None),
    }
}

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

/// `[a, a + n)` and `[b, b + m)` overlap.
fn overlaps(a: u64, n: u64, b: u64, m: u64) -> bool {
    a < b.saturating_add(m) && b < a.saturating_add(n)
}

/// The three stacks: (bottom, top) GVAs; their guard is the page below `bottom`.
const STACKS: [(u64, u64); 3] = [
    (BOOT_STACK_BOTTOM, BOOT_STACK_TOP),
    (DF_STACK_BOTTOM, DF_STACK_TOP),
    (USER_STACK_BOTTOM, USER_STACK_TOP),
];

/// Check every invariant of issue 7 §1 on `space`.
///
/// # Errors
/// The violations found (at most [`MAX_VIOLATIONS`]).
pub fn check(space: &AddressSpace) -> Result<InvariantReport, Vec<Violation>> {
    let mut c = Checker {
        space,
        out: Vec::new(),
        dropped: 0,
    };
    let report = run_checks(&mut c);
    if c.dropped > 0 {
        let n = c.dropped;
        if let Some(last) = c.out.last_mut() {
            last.detail += &format!(" (and {n} more violations not listed)");
        }
    }
    if c.out.is_empty() {
        Ok(report)
    } else {
        Err(c.out)
    }
}

fn run_checks(c: &mut Checker<'_>) -> InvariantReport {
    let space = c.space;
    let mem = &space.ram.mem;
    // W^X is checked where the host enforces it: with NX, and not in the fault matrix's
    // documented no-NX relaxation (`BuildOptions::no_nx`).
    let nx = space.features.nx && !space.build_options.no_nx;
    let pool_frames = |gpa: u64, size: u64| -> Option<u64> {
        space.pool.chunks.iter().find_map(|ch| {
            let (s, n) = (ch.0 * PAGE_SIZE, TABLE_POOL_CHUNK_FRAMES * PAGE_SIZE);
            overlaps(gpa, size, s, n).then(|| gpa.max(s) / PAGE_SIZE)
        })
    };
    let (kstart, kend) = (space.kernel.phys_start, space.kernel.phys_end);
    // Kernel segments by page range: (gva_lo, gva_hi, gpa_lo, index).
    let segs: Vec<(u64, u64, u64)> = space
        .kernel
        .segments
        .iter()
        .map(|s| {
            let lo = s.gva & !(PAGE_SIZE - 1);
            let hi = (s.gva + s.memsz).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            (lo, hi, s.gpa & !(PAGE_SIZE - 1))
        })
        .collect();
    // Expected stack mappings: GVA -> PFN (the build maps them in this order).
    let mut stack_map: HashMap<u64, u64> = HashMap::new();
    let mut it = space.stack_frames.iter();
    for (bottom, top) in STACKS {
        let mut g = bottom;
        while g < top {
            if let Some(p) = it.next() {
                stack_map.insert(g, p.0);
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
    let matrix = !space.matrix_frames.is_empty();
    if matrix {
        // The fault matrix maps its frames (data frame, records buffer) in its own area, on
        // tables with deliberately non-present or reserved-bit entries: only what can be
        // walked is checked: every leaf there maps one of its frames.
        let len = MATRIX_AREA.end - MATRIX_AREA.start;
        let mine = space
            .pt
            .leaves_in_range(mem, Gva(MATRIX_AREA.start), len)
            .unwrap_or_default();
        for l in mine {
            let (first, n) = (l.gpa.0 / PAGE_SIZE, l.size.bytes() / PAGE_SIZE);
            let owned = space
                .matrix_frames
                .iter()
                .any(|&(p, k)| first >= p.0 && first + n <= p.0 + k);
            counts.host_data += 1;
            if !owned {
                c.at(
                    "stray_leaf",
                    Some(first),
                    l.gva.0,
                    "a leaf of the fault matrix's area maps a frame the matrix does not own".into(),
                );
            }
        }
    }
    let mut claims: Vec<Claim> = Vec::new();
    let mut mapped_in_region: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    let mut stack_leaves = 0u64;
    for leaf in &leaves {
        let (gva, gpa, size) = (leaf.gva.0, leaf.gpa.0, leaf.size.bytes());
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
        } else if (s2::GVA_BASE..s2::GVA_BASE + STAGE2_SPAN).contains(&gva)
            && gpa == s2::GPA_BASE + (gva - s2::GVA_BASE)
            && !space.ram.contains(gpa, size)
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
                let (lo, _, gpa_lo) = segs[i];
                let s = space.kernel.segments[i];
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
                            r.prot_at(gva),
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

    // Guard pages: below each stack, after each region.
    for (bottom, _) in STACKS {
        let g = bottom - PAGE_SIZE;
        if space.pt.translate(mem, Gva(g)).is_ok() {
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
            && r.prot.iter().all(|(&k, &p)| {
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
        if r.guard && space.pt.translate(mem, Gva(r.end)).is_ok() {
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

    // Page-table frames: all in the pool, and as many as the pool hands out.
    let mut tables = 0u64;
    for t in space.pt.table_frames() {
        tables += 1;
        if !space.pool.owns(t) || !space.pool.is_table(t) {
            c.frame(
                "table_frame_outside_pool",
                t.0,
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
            start: ch.0,
            count: TABLE_POOL_CHUNK_FRAMES,
            state: FrameState::TablePool,
            gva: None,
        });
    }
    for p in &space.stack_frames {
        claims.push(Claim {
            start: p.0,
            count: 1,
            state: FrameState::Stack,
            gva: None,
        });
    }
    for &(p, n) in &space.matrix_frames {
        claims.push(Claim {
            start: p.0,
            count: n,
            state: FrameState::Matrix,
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
            let p = crate::addr::Pfn(pfn);
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
        let (zs, ze) = (z.start_pfn.0, z.end_pfn.0);
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
            FrameState::Blob | FrameState::Matrix => counts_by_state.host_data += n,
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
    InvariantReport {
        frames: counts_by_state,
        zones,
        leaves: counts,
        regions: space.regions.len() as u64,
        leaks,
    }
}

/// Every leaf, outside the fault matrix's area when it is in use (see [`run_checks`]).
fn walk_leaves(space: &AddressSpace) -> Result<Vec<Leaf>, crate::paging::PagingError> {
    let mem = &space.ram.mem;
    if space.matrix_frames.is_empty() {
        return space.pt.try_leaves(mem);
    }
    let mut out = space.pt.leaves_in_range(mem, Gva(0), MATRIX_AREA.start)?;
    let low_end = 1u64 << 47;
    out.extend(
        space
            .pt
            .leaves_in_range(mem, Gva(MATRIX_AREA.end), low_end - MATRIX_AREA.end)?,
    );
    out.extend(
        space
            .pt
            .leaves_in_range(mem, Gva(!(low_end - 1)), low_end)?,
    );
    Ok(out)
}

/// Name (some of) the allocated frames of zone span `[zs, ze)` that no owner claims.
fn hunt_unowned(c: &mut Checker<'_>, claims: &[Claim], zs: u64, ze: u64) {
    let mut found = 0;
    for pfn in zs..ze {
        if found >= 8 {
            break;
        }
        if !c.space.zones.is_allocated(crate::addr::Pfn(pfn)) {
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
            Gva(MMAP_WINDOW_START),
            MMAP_WINDOW_END - MMAP_WINDOW_START,
        )
        .unwrap_or_default();
    for leaf in window {
        let first = leaf.gpa.0 / PAGE_SIZE;
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
    space.shadow_stale = false;
    if let Err(v) = check(space) {
        out.extend(v);
    }
    for &pfn in &data {
        if !space.zones.is_free(crate::addr::Pfn(pfn)) {
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
                frame: Some(ch.0),
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
            Gva(BLOB_AREA.start),
            BLOB_AREA.end - BLOB_AREA.start,
        )
        .unwrap_or_default()
        .iter()
        .map(|l| (l.gpa.0 / PAGE_SIZE, l.size.bytes() / PAGE_SIZE))
        .collect();
    let host_data = space
        .matrix_frames
        .iter()
        .map(|&(p, n)| (p.0, n))
        .chain(blob);
    for (p, n) in host_data {
        if zones.free(crate::addr::Pfn(p), n).is_ok() {
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
                frame: Some(p.0),
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

/// Fill in the report's invariant summary at the end of a run: the check at exit (with the
/// leak report) and the teardown check. In a checked run a violation fails the run.
pub fn finish(
    report: &mut crate::report::Report,
    space: &mut AddressSpace,
    checked: bool,
    checks: u64,
) {
    let mut sum = report.invariants.take().unwrap_or_default();
    sum.checked_every_batch = checked;
    sum.checks = checks + 1;
    match check(space) {
        Ok(r) => sum.at_exit = Some(r),
        Err(v) => sum.violations.extend(v),
    }
    match teardown_check(space) {
        Ok(t) => sum.teardown = Some(t),
        Err(v) => sum.violations.extend(v),
    }
    if checked && !sum.violations.is_empty() && report.outcome != "invariant_violation" {
        report.outcome = "invariant_violation";
        report.guest_exit_code = None;
        report.message = Some(format!(
            "host invariant violated at exit: {} ({} violation(s))",
            sum.violations[0],
            sum.violations.len()
        ));
    }
    report.invariants = Some(sum);
}

/// The VMM's per-batch hook: when `enabled`, count and run [`check`].
///
/// # Errors
/// The violations [`check`] found.
pub fn after_batch(
    enabled: bool,
    space: &AddressSpace,
    checks: &mut u64,
) -> Result<(), Vec<Violation>> {
    if !enabled {
        return Ok(());
    }
    *checks += 1;
    check(space).map(|_| ())
}
