//! Unit tests: the verdict, the TSV rows, the variants, the base passes and the known
//! deviation's re-classification.

use super::oracle::{Access, Mode};
use super::passes::base_passes;
use super::run::{judge, mode_bits};
use super::tables::TestVa;
use super::*;
use memvisor_abi::matrix::{self as abi, NOT_FAULTED};

fn spec(access: Access, cpl: u8, wp: bool) -> PassSpec {
    PassSpec {
        access,
        cpl,
        mode: Mode {
            wp,
            nxe: true,
            ..Mode::default()
        },
    }
}

#[test]
fn judge_needs_every_observation_to_match() {
    // Read-only user page (PTE P|US), supervisor write.
    let t = TestVa {
        va: 0x2000_0000_5000,
        entries: [7, 7, 7, 5],
        rsvd_level: None,
        leaf_level: 1,
        pml5e: None,
    };
    let leaf = 0x0131_4000 | 5;
    let wp0 = spec(Access::Write, 0, false);
    let wp1 = spec(Access::Write, 0, true);
    // WP=0: no fault, A and D set.
    assert!(judge(
        &t,
        &wp0,
        leaf,
        true,
        NOT_FAULTED,
        NOT_FAULTED,
        Some(leaf | 0x60),
        48
    ));
    assert!(!judge(
        &t,
        &wp0,
        leaf,
        true,
        NOT_FAULTED,
        NOT_FAULTED,
        Some(leaf | 0x20),
        48
    ));
    assert!(!judge(&t, &wp0, leaf, true, t.va, 3, Some(leaf), 48));
    assert!(!judge(
        &t,
        &wp0,
        leaf,
        true,
        NOT_FAULTED,
        NOT_FAULTED,
        None,
        48
    ));
    assert!(!judge(
        &t,
        &wp0,
        leaf,
        false,
        NOT_FAULTED,
        NOT_FAULTED,
        Some(leaf | 0x60),
        48
    ));
    // WP=1: #PF 0x3 at CR2 = VA, leaf untouched.
    assert!(judge(&t, &wp1, leaf, true, t.va, 3, Some(leaf), 48));
    assert!(!judge(&t, &wp1, leaf, true, t.va + 1, 3, Some(leaf), 48));
    assert!(!judge(&t, &wp1, leaf, true, t.va, 7, Some(leaf), 48));
    assert!(!judge(&t, &wp1, leaf, true, t.va, 3, Some(leaf | 0x20), 48));
    assert!(!judge(
        &t,
        &wp1,
        leaf,
        true,
        NOT_FAULTED,
        NOT_FAULTED,
        Some(leaf | 0x60),
        48
    ));
}

#[test]
fn rows_as_tsv() {
    let row = Row {
        entries: [Some(7), Some(7), Some(7), Some(0x8000_0000_0000_0007)],
        pml5e: None,
        rsvd_level: None,
        pass: spec(Access::Exec, 0, true),
        va: 0x2000_0000_f000,
        result: Some(CaseResult {
            cr2: 0x2000_0000_f000,
            err: 0x11,
            pte_after: 0x8000_0000_0131_4007,
            record_ok: true,
            status: CaseStatus::Pass,
        }),
        status: CaseStatus::Pass,
    };
    assert_eq!(
        row.to_tsv(),
        "0x7\t0x7\t0x7\t0x8000000000000007\t-\tx\t0\t1\t1\t0x20000000f000\t1\t0x11\t\
         0x20000000f000\t0x8000000001314007\tpass\t-\t-"
    );
    assert_eq!(TSV_HEADER.split('\t').count(), 17);
    assert_eq!(row.to_tsv().split('\t').count(), 17);
    // A 5-level case: the PML5E's flags in the last column (XD | P | US here).
    let la57 = Row {
        pml5e: Some(0x8000_0000_0000_0005),
        va: 0x0001_3900_0000_0000,
        ..row
    };
    assert!(la57.to_tsv().ends_with("\tpass\t-\t0x8000000000000005"));
    let skipped = Row {
        entries: [Some(7), Some(0x87), None, None],
        rsvd_level: Some(3),
        result: None,
        status: CaseStatus::Skipped,
        ..row
    };
    assert_eq!(
        skipped.to_tsv(),
        "0x7\t0x87\t-\t-\tpdpte\tx\t0\t1\t1\t0x20000000f000\t-\t-\t-\t-\tskipped\t-\t-"
    );
    let mut pk = row;
    pk.pass.mode.pke = true;
    pk.pass.mode.pkru = 4;
    pk.pass.mode.smap = true;
    pk.pass.mode.ac = true;
    assert!(pk.to_tsv().ends_with("\tpass\tsmap+ac+pke+pkru=0x4\t-"));
}

#[test]
fn variants_and_passes() {
    let none = memvisor::boot::cpuid::Features::default();
    let offer = |features, data_gpa, tramp| Offer {
        features,
        data_gpa,
        tramp,
        la57_boot: true,
    };
    let v = variants(&offer(none, 0x1000, true));
    let total: usize = v.iter().map(|s| s.vas.len() * s.passes.len()).sum();
    // SMEP 256 × 24, SMAP 256 × 48 (AC both ways), SMAP implicit 256 × 12, 2 × PKU
    // 256 × 24, 1 GiB 256 × 24, LA57 16 × 24.
    assert_eq!(total, 40_320);
    assert!(v
        .iter()
        .all(|s| s.skip.as_deref() == Some("unsupported by host")));
    let all = memvisor::boot::cpuid::Features {
        smep: true,
        smap: true,
        pku: true,
        page_1g: true,
        la57: true,
        ..none
    };
    let runs = |o: &Offer| -> Vec<&'static str> {
        variants(o)
            .iter()
            .filter(|v| v.skip.is_none())
            .map(|v| v.feature)
            .collect()
    };
    assert_eq!(
        runs(&offer(all, 0x1000, true)),
        ["smep", "smap", "smap-implicit", "pku", "pku", "1g", "la57"]
    );
    for v in variants(&offer(all, 0x1000, true)) {
        assert!(v.skip.is_none() || v.skip.is_some_and(|s| s.starts_with("not implemented")));
    }
    // CPUID has LA57 but KVM refused the 5-level boot (a PVM host): unsupported by host.
    let refused = Offer {
        la57_boot: false,
        ..offer(all, 0x1000, true)
    };
    let la57 = variants(&refused)
        .into_iter()
        .find(|v| v.feature == "la57")
        .expect("la57 variant");
    assert_eq!(la57.skip.as_deref(), Some("unsupported by host"));
    assert_eq!(la57.vas.len() * la57.passes.len(), 384);
    // The LA57 VAs: canonical in 57 bits, not in 48, PML5 indices 1..=16 (never 0 / 511),
    // distinct leaves at one host VA each (bits 47:0), the PML5E flags the 16 combinations.
    let mut host = Vec::new();
    for (i, t) in la57.vas.iter().enumerate() {
        assert!(memvisor::paging::is_canonical_la57(t.va));
        assert!(memvisor::paging::canonical(t.va).is_err(), "{:#x}", t.va);
        assert_eq!(memvisor::paging::pml5_index(t.va), i + 1);
        assert_eq!(t.pml5e, Some(tables::combo_flags(i as u64)));
        assert_eq!((t.entries, t.leaf_level), ([7; 4], 1));
        assert!(memvisor_abi::layout::MATRIX_LA57_AREA.contains(&t.host_va()));
        assert_eq!(t.walk(), ([t.pml5e.unwrap_or(0), 7, 7, 7, 7], 5));
        host.push(t.host_va());
    }
    host.dedup();
    assert_eq!(host.len(), 16);
    // No probe-code symbols: no SMEP / SMAP; a data frame above 1 GiB: no 1 GiB leaves.
    assert_eq!(runs(&offer(all, 1 << 30, false)), ["pku", "pku", "la57"]);
    // The variant VAs are distinct from each other and from the base VAs, canonical, and
    // a 1 GiB VA reaches the data frame's offset.
    let mut vas: Vec<u64> = tables::test_vas(48).iter().map(|t| t.va).collect();
    // (The two SMAP variants, CPL 0 and CPL 3 passes, share their VAs.)
    let mut smap_seen = false;
    for v in variants(&offer(all, 0x12_3000, true)) {
        let again = v.feature == "smap" && std::mem::replace(&mut smap_seen, true);
        if v.feature != "la57" && !again {
            vas.extend(v.vas.iter().map(|t| t.va));
        }
        if v.feature == "1g" {
            let t = v.vas[0x5f];
            assert_eq!(t.va, ((98 + 5) << 39) | (15 << 30) | 0x12_3000);
            assert_eq!(t.entries[..2], [0x5, 0x8000_0000_0000_0087]);
            assert_eq!(t.leaf_level, 3);
            assert_eq!(SkippedVa::of(&t).entries[2..], [None, None]);
        }
    }
    let n = vas.len();
    vas.sort_unstable();
    vas.dedup();
    assert_eq!(vas.len(), n);
    assert!(vas.iter().all(|&va| va < 1 << 47));
    assert!(vas
        .iter()
        .all(|&va| !(tables::BUF_GVA..tables::TRAMP_GVA + (1 << 39)).contains(&va)));
    let p = base_passes(Mode::default());
    assert_eq!(p.len(), 24);
    assert_eq!(mode_bits(p[23].mode), abi::MODE_WP | abi::MODE_NXE);
    assert_eq!((p[3].cpl, p[3].access), (3, Access::Read));
}

#[test]
fn implicit_access_variant_layout() {
    use super::passes::{implicit_passes, implicit_vas, DESC_OFFSET};
    let v = implicit_vas();
    assert_eq!(v.len(), 256);
    assert_eq!(v[0x1f].va, (95 << 39) | (1 << 21) | (15 << 12) | 8);
    assert_eq!(v[0x1f].entries, [7, 7, 1, tables::combo_flags(15)]);
    // One LDT per PDE combination: a 64 KiB-aligned base, the 16 PTE combinations inside its
    // limit (0xFFFF) at selector (va & 0xffff) | 7 (TI = 1, RPL 3), index * 8 = page offset.
    for g in v.chunks(16) {
        let base = g[0].va & !0xffff;
        for t in g {
            assert_eq!(t.va & !0xffff, base);
            assert_eq!(t.va & 0xfff, DESC_OFFSET);
            let sel = (t.va & 0xffff) | 7;
            assert_eq!(base + (sel >> 3) * 8, t.va);
            assert!((sel >> 3) * 8 + 7 <= 0xffff);
        }
    }
    // The descriptor: present, DPL 3, a code/data (S = 1) read/write data segment whose
    // accessed flag is set (type 3): loading it writes nothing.
    let d = tables::DESCRIPTOR;
    assert_eq!((d >> 47) & 1, 1);
    assert_eq!((d >> 45) & 3, 3);
    assert_eq!((d >> 44) & 1, 1);
    assert_eq!((d >> 40) & 0xf, 3);
    let p = implicit_passes();
    assert_eq!(p.len(), 12);
    assert!(p.iter().all(|s| s.access == Access::Desc && s.mode.wp));
    assert_eq!(p.iter().filter(|s| s.mode.ac && !s.mode.smap).count(), 0);
    // The oracle per pass for a user page: a fault (U/S = 0) exactly when SMAP is on.
    let user = [7, 7, 7, 7];
    for s in &p {
        let e = oracle::expect(&user, s.access, s.cpl, s.mode, 48);
        assert_eq!(e.fault, s.mode.smap.then_some(1), "{s:?}");
    }
}

#[test]
fn known_deviation_moves_exactly_the_rsvd_without_p_cases() {
    use std::collections::BTreeMap;
    // Four reserved-bit VAs (bit 48 in the PML4E), one user read pass (expected P|U|RSVD =
    // 0xd). Observed: 0xc (the deviation), 0xd (a pass), 0x4 (another mismatch), and 0xc
    // with a wrong CR2 (not only P differs).
    let va = |i: u64| 0x2000_0000_0000 + (i << 39);
    let vas: Vec<TestVa> = (0..4)
        .map(|i| TestVa {
            va: va(i),
            entries: [7 | tables::rsvd_bit(48), 7, 7, 7],
            rsvd_level: Some(4),
            leaf_level: 1,
            pml5e: None,
        })
        .collect();
    let leaf = 0x0131_4007;
    let obs = [(0xc, va(0)), (0xd, va(1)), (0x4, va(2)), (0xc, va(0))];
    let results: Vec<CaseResult> = obs
        .iter()
        .map(|&(err, cr2)| CaseResult {
            cr2,
            err,
            pte_after: leaf,
            record_ok: true,
            status: if err == 0xd {
                CaseStatus::Pass
            } else {
                CaseStatus::Fail
            },
        })
        .collect();
    let summary = MatrixSummary {
        cases: 4,
        pass: 1,
        fail: 3,
        skipped: 0,
        deviation: 0,
        deviation_by: BTreeMap::new(),
        skipped_by: BTreeMap::new(),
        passes_run: 1,
        vas: 4,
        phys_bits: 48,
        setup_seconds: 0.0,
        passes_seconds: 0.0,
        wall_seconds: 0.0,
        pass_seconds: Vec::new(),
        failures: Vec::new(),
    };
    let data = MatrixData {
        vas,
        leaf_raw: vec![leaf; 4],
        passes: vec![spec(Access::Read, 3, true)],
        pass_vas: std::iter::once(0..4).collect(),
        results,
        skipped_sets: Vec::new(),
        summary: summary.clone(),
    };
    let mut m = MatrixReport {
        summary,
        data: std::sync::Arc::new(data),
    };
    m.apply_known_deviation(KnownDeviation::QemuTcgRsvdP);
    let s = &m.summary;
    assert_eq!((s.pass, s.fail, s.deviation, s.cases), (1, 2, 1, 4));
    assert_eq!(s.deviation_by.values().sum::<u64>(), 1);
    assert_eq!(s.failures.len(), 2);
    let st: Vec<CaseStatus> = m.data.rows().map(|r| r.status).collect();
    assert_eq!(
        st,
        [
            CaseStatus::Deviation,
            CaseStatus::Pass,
            CaseStatus::Fail,
            CaseStatus::Fail
        ]
    );
    assert!(m
        .data
        .rows()
        .next()
        .is_some_and(|r| r.to_tsv().ends_with("\tdeviation\t-\t-")));
}

#[test]
fn one_gib_leaf_has_the_rights_of_a_permissive_4k_path_below_it() {
    // A 1 GiB leaf (PDPTE.PS = 1) over the same PML4E / PDPTE flags must fault exactly as a
    // 4 KiB path whose PDE and PTE add nothing (P | RW | US, no XD), for every combination,
    // access, CPL and mode of the 1 GiB variant; only the leaf differs.
    let t = 0x7;
    for v in passes::one_g_vas(0x12_3000) {
        for spec in base_passes(Mode::default()) {
            let big = oracle::expect(&v.entries[..2], spec.access, spec.cpl, spec.mode, 48);
            let small = oracle::expect(
                &[v.entries[0], v.entries[1] & !0x80, t, t],
                spec.access,
                spec.cpl,
                spec.mode,
                48,
            );
            assert_eq!(big.fault, small.fault, "{v:?} {spec:?}");
            if v.entries[0] & 1 != 0 && v.entries[1] & 1 != 0 {
                assert_eq!(big.leaf_after & !0x60, v.entries[1], "{v:?} {spec:?}");
            }
        }
    }
}

#[test]
fn records_image_lays_out_each_pass_over_its_own_vas() {
    let vas = tables::test_vas(48);
    let (a, b) = (&vas[..3], &vas[65_536..]);
    let img = tables::records_image(&[a, b]);
    let rec = abi::RECORD_BYTES as usize;
    assert_eq!(img.len(), tables::PLAN_BYTES as usize + 7 * rec);
    let word = |i: usize, w: usize| {
        let o = tables::PLAN_BYTES as usize + i * rec + w * 8;
        u64::from_le_bytes(img[o..o + 8].try_into().expect("8 bytes"))
    };
    assert_eq!(word(0, 0), a[0].va);
    assert_eq!(word(3, 0), b[0].va);
    assert_eq!(word(6, 0), b[3].va);
    assert_eq!((word(6, 1), word(6, 2)), (NOT_FAULTED, NOT_FAULTED));
}
