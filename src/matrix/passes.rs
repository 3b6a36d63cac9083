//! The passes (an access at a CPL in a mode) and the feature variants whose cases are
//! skipped here ([`variants`]).

use super::oracle::{Access, Mode};
use super::tables;

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
    /// Feature name (`smep`, `smap`, `pku`, `1g`, `la57`, `nx`, `rsvd`).
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
}

const T: u64 = 0x7;

/// 256 VAs in PML4 slot `slot`: PML4E = PDPTE = P|RW|US, the 16 × 16 PDE × PTE flag
/// combinations, the PTE with `leaf_extra` bits (e.g. a protection key).
fn pde_pte_vas(slot: u64, leaf_extra: u64) -> Vec<SkippedVa> {
    (0..256u64)
        .map(|k| {
            let (i2, i1) = (k >> 4, k & 15);
            SkippedVa {
                va: (slot << 39) | (i2 << 21) | (i1 << 12),
                entries: [
                    Some(T),
                    Some(T),
                    Some(tables::combo_flags(i2)),
                    Some(tables::combo_flags(i1) | leaf_extra),
                ],
            }
        })
        .collect()
}

/// The feature variants the matrix has beyond WP and NXE, each skipped here: on this host
/// because the CPUID lacks the feature, on a host that has it because the guest side is not
/// implemented yet (named in the reason; never counted as a pass).
///
/// * `smep`: CR4.SMEP = 1, PML4 slot 84, 256 PDE × PTE combinations × the 24 base passes.
/// * `smap`: CR4.SMAP = 1 (RFLAGS.AC = 0), slot 85, the same.
/// * `pku`: CR4.PKE = 1, leaves with protection key 1, PKRU.AD1 = 1 (slot 86) and
///   PKRU.WD1 = 1 (slot 87), 256 VAs each × 24 passes.
/// * `1g`: 1 GiB leaves: 16 PML4E × 16 PDPTE (PS = 1) combinations, slots 88–103, × 24.
/// * `la57`: 5-level paging: 16 PML5E combinations over a `P|RW|US` path × 24 (VAs above
///   2^48; the PML5E is not a column).
pub fn variants(f: &memvisor::boot::cpuid::Features) -> Vec<SkippedSet> {
    let reason = |supported: bool, missing: &str| {
        if supported {
            format!("not implemented: {missing}")
        } else {
            "unsupported by host".to_string()
        }
    };
    let kernel_user = "the guest kernel runs from user (US=1) pages for PVM's ring 3, \
                       so CR4.SMEP/SMAP would fault the kernel itself";
    let mut v = vec![
        SkippedSet {
            feature: "smep",
            reason: reason(f.smep, kernel_user),
            vas: pde_pte_vas(84, 0),
            passes: base_passes(Mode {
                smep: true,
                ..Mode::default()
            }),
        },
        SkippedSet {
            feature: "smap",
            reason: reason(f.smap, kernel_user),
            vas: pde_pte_vas(85, 0),
            passes: base_passes(Mode {
                smap: true,
                ..Mode::default()
            }),
        },
    ];
    for (slot, pkru) in [(86u64, 1u32 << 2), (87, 1 << 3)] {
        v.push(SkippedSet {
            feature: "pku",
            reason: reason(f.pku, "protection-key leaves are not built"),
            vas: pde_pte_vas(slot, 1 << 59),
            passes: base_passes(Mode {
                pke: true,
                pkru,
                ..Mode::default()
            }),
        });
    }
    let one_g = (0..256u64)
        .map(|k| {
            let (i4, i3) = (k >> 4, k & 15);
            SkippedVa {
                va: ((88 + i4) << 39) | (i3 << 30),
                entries: [
                    Some(tables::combo_flags(i4)),
                    Some(tables::combo_flags(i3) | 0x80),
                    None,
                    None,
                ],
            }
        })
        .collect();
    v.push(SkippedSet {
        feature: "1g",
        reason: reason(f.page_1g, "1 GiB test leaves are not built"),
        vas: one_g,
        passes: base_passes(Mode::default()),
    });
    let la57 = (0..16u64)
        .map(|i5| SkippedVa {
            va: ((i5 + 1) << 48) | (64 << 39),
            entries: [Some(T); 4],
        })
        .collect();
    v.push(SkippedSet {
        feature: "la57",
        reason: reason(f.la57, "5-level paging needs a 5-level boot"),
        vas: la57,
        passes: base_passes(Mode::default()),
    });
    v
}
