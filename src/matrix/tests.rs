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
         0x20000000f000\t0x8000000001314007\tpass"
    );
    assert_eq!(TSV_HEADER.split('\t').count(), 15);
    assert_eq!(row.to_tsv().split('\t').count(), 15);
    let skipped = Row {
        entries: [Some(7), Some(0x87), None, None],
        rsvd_level: Some(3),
        result: None,
        status: CaseStatus::Skipped,
        ..row
    };
    assert_eq!(
        skipped.to_tsv(),
        "0x7\t0x87\t-\t-\tpdpte\tx\t0\t1\t1\t0x20000000f000\t-\t-\t-\t-\tskipped"
    );
}

#[test]
fn variants_and_passes() {
    let none = memvisor::boot::cpuid::Features::default();
    let v = variants(&none);
    let total: usize = v.iter().map(|s| s.vas.len() * s.passes.len()).sum();
    assert_eq!(total, 31_104);
    assert!(v.iter().all(|s| s.reason == "unsupported by host"));
    let all = memvisor::boot::cpuid::Features {
        smep: true,
        smap: true,
        pku: true,
        page_1g: true,
        la57: true,
        ..none
    };
    assert!(variants(&all)
        .iter()
        .all(|s| s.reason.starts_with("not implemented")));
    let p = base_passes(Mode::default());
    assert_eq!(p.len(), 24);
    assert_eq!(mode_bits(p[23].mode), abi::MODE_WP | abi::MODE_NXE);
    assert_eq!((p[3].cpl, p[3].access), (3, Access::Read));
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
        .is_some_and(|r| r.to_tsv().ends_with("\tdeviation")));
}
