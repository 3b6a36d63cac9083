//! The passes (an access at a CPL in a mode) and the feature variants ([`variants`]): which
//! run on this host and which are skipped, and why.

use super::oracle::{Access, Mode};
use super::tables::{self, TestVa};
use memvisor_abi::layout::{
    MATRIX_1G_SLOT, MATRIX_IMPLICIT_SLOT, MATRIX_LA57_SLOT, MATRIX_VARIANT_SLOT,
};

/// One pass: an access at a CPL in a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassSpec {
    /// The access.
    pub access: Access,
    /// 0 or 3.
    pub cpl: u8,
    /// The mode.
    pub mode: Mode,
}

/// The 24 base passes (WP × NXE × CPL × access), mode outermost, `extra` mode bits on top.
pub(super) fn base_passes(extra: Mode) -> Vec<PassSpec> {
    let mut v = Vec::with_capacity(24);
    for wp in [false, true] {
        for nxe in [false, true] {
            for cpl in [0u8, 3] {
                for access in Access::ALL {
                    v.push(PassSpec {
                        access,
                        cpl,
                        mode: Mode { wp, nxe, ..extra },
                    });
                }
            }
        }
    }
    v
}

/// A set of cases that cannot run here: its VAs × its passes.
#[derive(Debug, Clone)]
pub struct SkippedSet {
    /// Feature name (`smep`, `smap`, `smap-implicit`, `pku`, `1g`, `la57`, `nx`, `rsvd`).
    pub feature: &'static str,
    /// Why (`unsupported by host`, or what is missing).
    pub reason: String,
    /// The VAs (entries: flag bits per level; a 1 GiB path has two levels).
    pub vas: Vec<SkippedVa>,
    /// The passes.
    pub passes: Vec<PassSpec>,
}

/// A VA of a skipped set.
#[derive(Debug, Clone, Copy)]
pub struct SkippedVa {
    /// The VA.
    pub va: u64,
    /// PML4E, PDPTE, PDE, PTE flag bits (`None`: no such level, e.g. below a 1 GiB leaf).
    pub entries: [Option<u64>; 4],
    /// PML5E flag bits of a 5-level VA (`None`: a 4-level walk).
    pub pml5e: Option<u64>,
}

impl SkippedVa {
    /// The skipped form of a test VA (levels below its leaf are `None`).
    pub fn of(t: &TestVa) -> SkippedVa {
        let mut entries = t.entries.map(Some);
        for (i, e) in entries.iter_mut().enumerate() {
            if 4 - i < usize::from(t.leaf_level) {
                *e = None;
            }
        }
        SkippedVa {
            va: t.va,
            entries,
            pml5e: t.pml5e,
        }
    }
}

/// One feature variant: its own test VAs and passes.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Feature name (`smep`, `smap`, `smap-implicit`, `pku`, `1g`, `la57`).
    pub feature: &'static str,
    /// Its test VAs.
    pub vas: Vec<TestVa>,
    /// Its passes.
    pub passes: Vec<PassSpec>,
    /// `None` if it runs here, else why not (`unsupported by host`, `not implemented: ...`).
    pub skip: Option<String>,
    /// The passes run CR4.SMEP / SMAP on: CPL 0 must execute from the supervisor-only alias
    /// of the probe code ([`memvisor_abi::layout::MATRIX_TRAMP_GVA`]).
    pub needs_tramp: bool,
}

impl Variant {
    /// The skipped set of a variant that does not run.
    pub fn skipped(&self) -> Option<SkippedSet> {
        self.skip.as_ref().map(|reason| SkippedSet {
            feature: self.feature,
            reason: reason.clone(),
            vas: self.vas.iter().map(SkippedVa::of).collect(),
            passes: self.passes.clone(),
        })
    }
}

const T: u64 = 0x7;
/// PS (a PDPTE that is a 1 GiB leaf).
const PS: u64 = 0x80;

/// 256 VAs in PML4 slot `slot`: PML4E = PDPTE = P|RW|US, the 16 × 16 PDE × PTE flag
/// combinations, the PTE with `leaf_extra` bits (e.g. a protection key).
fn pde_pte_vas(slot: u64, leaf_extra: u64) -> Vec<TestVa> {
    (0..256u64)
        .map(|k| {
            let (i2, i1) = (k >> 4, k & 15);
            TestVa {
                va: (slot << 39) | (i2 << 21) | (i1 << 12),
                entries: [
                    T,
                    T,
                    tables::combo_flags(i2),
                    tables::combo_flags(i1) | leaf_extra,
                ],
                rsvd_level: None,
                leaf_level: 1,
                pml5e: None,
            }
        })
        .collect()
}

/// 256 VAs through 1 GiB leaves: PML4 slot `MATRIX_1G_SLOT + i4` (PML4E combination `i4`),
/// PDPTE `i3` a 1 GiB leaf (PS = 1) with combination `i3` mapping GPA 0; the VA's low 30
/// bits are `data_gpa`, so it reaches the data frame.
pub(super) fn one_g_vas(data_gpa: u64) -> Vec<TestVa> {
    (0..256u64)
        .map(|k| {
            let (i4, i3) = (k >> 4, k & 15);
            TestVa {
                va: ((MATRIX_1G_SLOT + i4) << 39) | (i3 << 30) | (data_gpa & ((1 << 30) - 1)),
                entries: [tables::combo_flags(i4), tables::combo_flags(i3) | PS, 0, 0],
                rsvd_level: None,
                leaf_level: 3,
                pml5e: None,
            }
        })
        .collect()
}

/// Byte offset in the data frame of the segment descriptor the implicit-access passes read
/// (offset 0 stays `0xC3` for the fetch and write probes).
pub const DESC_OFFSET: u64 = 8;

/// The implicit-access variant's VAs: the 256 PDE × PTE combinations of PML4 slot
/// [`MATRIX_IMPLICIT_SLOT`] (PML4E = PDPTE = P|RW|US), each at byte [`DESC_OFFSET`] of its
/// page, where the data frame holds a segment descriptor. The 16 PTE combinations of one
/// PDE are 16 consecutive pages, so one LDT (64 KiB-aligned base, limit 0xFFFF) spans them.
pub(super) fn implicit_vas() -> Vec<TestVa> {
    pde_pte_vas(MATRIX_IMPLICIT_SLOT, 0)
        .into_iter()
        .map(|t| TestVa {
            va: t.va | DESC_OFFSET,
            ..t
        })
        .collect()
}

/// The implicit-access variant's 12 passes: an implicit supervisor read ([`Access::Desc`])
/// at CPL 0 and 3 × EFER.NXE × (CR4.SMAP = 0; SMAP = 1 with RFLAGS.AC = 0; SMAP = 1 with
/// AC = 1), CR0.WP = 1.
pub(super) fn implicit_passes() -> Vec<PassSpec> {
    let mut v = Vec::with_capacity(12);
    for (smap, ac) in [(false, false), (true, false), (true, true)] {
        for nxe in [false, true] {
            for cpl in [0u8, 3] {
                v.push(PassSpec {
                    access: Access::Desc,
                    cpl,
                    mode: Mode {
                        wp: true,
                        nxe,
                        smap,
                        ac,
                        ..Mode::default()
                    },
                });
            }
        }
    }
    v
}

/// What the host and the guest image offer the variants.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// The guest CPUID's features.
    pub features: memvisor::boot::cpuid::Features,
    /// GPA of the matrix's data frame (1 GiB leaves need it below 1 GiB).
    pub data_gpa: u64,
    /// The kernel image has the probe-code symbols (an alias can be mapped).
    pub tramp: bool,
    /// The guest booted with 5-level paging (CR4.LA57 = 1, CR3 a PML5).
    pub la57_boot: bool,
}

/// The LA57 variant's 16 VAs: PML5E flag combination `i5` (0–15) at PML5 index `i5 + 1`
/// (bits 56:48 nonzero, bit 56 clear: canonical in 57 bits, not in 48), over a `P|RW|US`
/// path in PML4 slot [`MATRIX_LA57_SLOT`] with its own leaf (PTE index `i5`).
pub(super) fn la57_vas() -> Vec<TestVa> {
    (0..16u64)
        .map(|i5| TestVa {
            va: ((i5 + 1) << 48) | (MATRIX_LA57_SLOT << 39) | (i5 << 12),
            entries: [T; 4],
            rsvd_level: None,
            leaf_level: 1,
            pml5e: Some(tables::combo_flags(i5)),
        })
        .collect()
}

/// The feature variants beyond WP and NXE. Each runs where the CPUID has the feature and
/// the rest is in place; otherwise its cases are skipped: "unsupported by host" when the
/// CPUID lacks it, "not implemented: WHY" when the guest side cannot run it yet (never a
/// pass).
///
/// * `smep`: CR4.SMEP = 1, PML4 slot 84, 256 PDE × PTE combinations × the 24 base passes.
/// * `smap`: CR4.SMAP = 1, slot 85, the same × RFLAGS.AC = 0 and 1 (48 passes, CPL 0 and 3).
/// * `smap-implicit`: implicit supervisor-mode reads (a segment load reads its descriptor
///   from an LDT on the test page, SDM Vol. 3A §4.6.1), slot 95, 256 PDE × PTE combinations
///   × `implicit_passes` (12: CPL 0 / 3 × NXE × SMAP off / SMAP with AC = 0 / AC = 1);
///   run where CPUID has SMAP.
/// * `pku`: CR4.PKE = 1, leaves with protection key 1, PKRU.AD1 = 1 (slot 86) and
///   PKRU.WD1 = 1 (slot 87), 256 VAs each × 24 passes.
/// * `1g`: 1 GiB leaves: 16 PML4E × 16 PDPTE (PS = 1) combinations, slots 98–113, × 24.
/// * `la57`: 5-level paging: 16 PML5E combinations over a `P|RW|US` path × 24 (`la57_vas`;
///   the PML5E is the case's fifth level). It needs the 5-level boot, which the VMM does
///   where the CPUID has LA57; on a PVM host, whose KVM reports LA57 but cannot enter a
///   guest with CR4.LA57 = 1, its cases are "unsupported by host".
pub fn variants(o: &Offer) -> Vec<Variant> {
    let f = &o.features;
    let skip = |supported: bool, missing: Option<&str>| match (supported, missing) {
        (false, _) => Some("unsupported by host".to_string()),
        (true, Some(why)) => Some(format!("not implemented: {why}")),
        (true, None) => None,
    };
    let no_tramp = (!o.tramp).then_some("the guest kernel has no probe-code symbols");
    let s = MATRIX_VARIANT_SLOT;
    let mut v = vec![Variant {
        feature: "smep",
        skip: skip(f.smep, no_tramp),
        vas: pde_pte_vas(s, 0),
        passes: base_passes(Mode {
            smep: true,
            ..Mode::default()
        }),
        needs_tramp: true,
    }];
    // SMAP: CPL 0 and CPL 3 passes, AC = 0 and 1 (SMAP does not restrict CPL 3 accesses,
    // the oracle says so; the passes check it, with the ring switch's implicit supervisor
    // reads on US=0 structures).
    let smap = Mode {
        smap: true,
        ..Mode::default()
    };
    let mut smap_passes = base_passes(smap);
    smap_passes.extend(base_passes(Mode { ac: true, ..smap }));
    v.push(Variant {
        feature: "smap",
        skip: skip(f.smap, no_tramp),
        vas: pde_pte_vas(s + 1, 0),
        passes: smap_passes,
        needs_tramp: true,
    });
    v.push(Variant {
        feature: "smap-implicit",
        skip: skip(f.smap, no_tramp),
        vas: implicit_vas(),
        passes: implicit_passes(),
        needs_tramp: true,
    });
    for (slot, pkru) in [(s + 2, 1u32 << 2), (s + 3, 1 << 3)] {
        v.push(Variant {
            feature: "pku",
            skip: skip(f.pku, None),
            vas: pde_pte_vas(slot, 1 << 59),
            passes: base_passes(Mode {
                pke: true,
                pkru,
                ..Mode::default()
            }),
            needs_tramp: false,
        });
    }
    let low = o.data_gpa < 1 << 30;
    v.push(Variant {
        feature: "1g",
        skip: skip(
            f.page_1g,
            (!low).then_some("the matrix's data frame lies above 1 GiB"),
        ),
        vas: one_g_vas(o.data_gpa),
        passes: base_passes(Mode::default()),
        needs_tramp: false,
    });
    v.push(Variant {
        feature: "la57",
        skip: skip(f.la57 && o.la57_boot, None),
        vas: la57_vas(),
        passes: base_passes(Mode::default()),
        needs_tramp: false,
    });
    v
}
