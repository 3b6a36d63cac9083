//! The #PF permission matrix under KVM (issue 5 §1): the full matrix, every case checked
//! against the SDM oracle, the exact skipped count, the `--cases-out` table, and the CLI's
//! handling of bad `--cases-out` arguments.
//!
//! The full matrix (24 passes × 65,540 VAs = 1,572,960 cases) takes about 35–40 s on the PVM
//! development host, inside the 60 s budget, so there is no reduced "quick" subset.

mod common;

use memvisor_cli::matrix::TSV_HEADER;
use memvisor_cli::registry::fault_matrix;
use std::io::BufRead;
use std::process::Command;
use std::time::Duration;

/// Cases per pass: 16^4 flag combinations + 4 reserved-bit VAs.
const VAS: u64 = 65_540;
/// Feature variants (see `memvisor_cli::matrix::variants`): SMEP, SMAP (× AC both ways), 2 ×
/// PKU, 1 GiB pages (256 VAs × 24 passes each, 48 for SMAP), implicit supervisor reads (256
/// VAs × 12 passes) and LA57 (16 VAs × 24 passes).
const VARIANT_CASES: u64 = 6 * 256 * 24 + 256 * 12 + 16 * 24;

#[test]
fn full_matrix_matches_the_sdm() {
    if !common::kvm_or_skip("full_matrix_matches_the_sdm") {
        return;
    }
    let mut cfg = common::config("fault-matrix", 256 << 20);
    cfg.timeout = Duration::from_secs_f64(300.0 * memvisor::backend::time_scale());
    // The host invariants (src/invariants/) do not know the matrix's test areas (PML4
    // slots 64-95, `memvisor_cli::matrix::tables::AREA`, its data and records frames) nor the
    // scenario's no-NX build (`BuildOptions::no_nx`): they would flag them as stray leaves
    // and W^X breaches.
    cfg.check_invariants = false;
    let mut r = common::run(&cfg);
    assert_eq!(r.outcome, "exit", "{:?}\n{}", r.message, r.console);
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.console);
    // On an emulated host with known deviations from the SDM (QEMU TCG: reserved-bit #PF
    // without P, A in a faulting 1 GiB leaf, implicit reads with AC) the suite names them (comma-separated), as
    // `memvisor run --known-deviation` does; nothing else is forgiven.
    let deviations: Vec<_> = std::env::var("MEMVISOR_KNOWN_DEVIATION")
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| memvisor_cli::matrix::KnownDeviation::parse(d).expect("MEMVISOR_KNOWN_DEVIATION"))
        .collect();
    if let Some(m) = fault_matrix::matrix_report_mut(&mut r) {
        for &d in &deviations {
            m.apply_known_deviation(d);
        }
    }
    let deviation = deviations.first();
    let m = fault_matrix::matrix_report(&r).expect("matrix totals");
    let s = &m.summary;
    // The variants that run here (the CPUID has the feature and the guest side is done;
    // the matrix's data frame lies below 1 GiB in 256 MiB of RAM), each with its passes
    // (half of them without NX) over its VAs.
    // The guest booted 5-level where the CPUID has LA57 and KVM took CR4.LA57 (not on PVM,
    // whose supported CPUID has LA57 but whose KVM_SET_SREGS refuses it).
    let la57_boot = r.page_tables.paging_levels == 5;
    assert!(r.cpu.la57 || !la57_boot);
    let offer = memvisor_cli::matrix::Offer {
        features: r.cpu,
        data_gpa: 0,
        tramp: true,
        la57_boot,
    };
    let variants = memvisor_cli::matrix::variants(&offer);
    let nx_keep = |n: u64| if r.cpu.nx { n } else { n / 2 };
    let (mut passes, mut run_cases, mut skipped) = (nx_keep(24), nx_keep(24) * VAS, 0u64);
    for v in &variants {
        let (n, p) = (v.vas.len() as u64, v.passes.len() as u64);
        if v.skip.is_some() {
            skipped += n * p;
        } else {
            passes += nx_keep(p);
            run_cases += nx_keep(p) * n;
            skipped += (p - nx_keep(p)) * n;
        }
    }
    skipped += (24 - nx_keep(24)) * VAS;
    assert_eq!(
        variants
            .iter()
            .map(|v| v.vas.len() * v.passes.len())
            .sum::<usize>() as u64,
        VARIANT_CASES
    );
    assert_eq!(s.fail, 0, "first failures:\n{}", s.failures.join("\n"));
    assert_eq!(s.passes_run, passes);
    assert_eq!(s.pass + s.deviation, run_cases);
    assert!(deviation.is_some() || s.deviation == 0);
    assert_eq!(s.skipped, skipped);
    assert_eq!(s.cases, s.pass + s.fail + s.skipped + s.deviation);
    assert!(r.success());
    // Every feature the CPUID lacks is named as "unsupported by host"; never a pass. A
    // variant that does not run is skipped under its own reason; one that runs is not.
    for (feature, has) in [
        ("smep", r.cpu.smep),
        ("smap", r.cpu.smap),
        ("smap-implicit", r.cpu.smap),
        ("pku", r.cpu.pku),
        ("1g", r.cpu.page_1g),
        ("la57", r.cpu.la57 && la57_boot),
    ] {
        for v in variants.iter().filter(|v| v.feature == feature) {
            match &v.skip {
                Some(reason) => {
                    assert_eq!(reason == "unsupported by host", !has, "{feature}: {reason}");
                    let key = format!("{feature}: {reason}");
                    assert!(s.skipped_by.contains_key(&key), "{key}: {:?}", s.skipped_by);
                }
                None => assert!(has, "{feature} ran without the CPUID feature"),
            }
        }
        if !has {
            assert!(variants
                .iter()
                .filter(|v| v.feature == feature)
                .all(|v| v.skip.is_some()));
        }
    }
    // One MatrixSync per pass plus the final one; one shadow flush per pass with shadow
    // paging, none with EPT / NPT (the guest's TLB flush after the sync is enough there).
    assert_eq!(r.hypercalls["matrix_sync"].count, passes + 1);
    assert_eq!(r.hypercalls["matrix_sync"].errors, 0);
    let host = r.backend.expect("backend");
    if host.shadow_paging {
        assert!(r.shadow_flushes >= passes);
    } else {
        assert_eq!(r.shadow_flushes, 0);
    }
    eprintln!(
        "fault matrix: {} cases, {} pass, {} skipped, wall {:.1} s (passes {:.1} s)",
        s.cases, s.pass, s.skipped, s.wall_seconds, s.passes_seconds
    );

    // The case table: header, one line per case, statuses as counted, and the SDM's
    // hand-picked cases as observed.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cases.tsv");
    m.data.write_tsv(&path).expect("write the case table");
    let f = std::io::BufReader::new(std::fs::File::open(&path).expect("open"));
    let mut lines = f.lines().map(|l| l.expect("utf-8 line"));
    assert_eq!(lines.next().as_deref(), Some(TSV_HEADER));
    let (mut n, mut pass, mut skipped, mut deviating) = (0u64, 0u64, 0u64, 0u64);
    let mut seen = 0;
    for l in lines {
        n += 1;
        let c: Vec<&str> = l.split('\t').collect();
        assert_eq!(c.len(), 17, "{l}");
        match c[14] {
            "pass" => pass += 1,
            "skipped" => skipped += 1,
            "deviation" => deviating += 1,
            other => panic!("status {other}: {l}"),
        }
        // pml4e pdpte pde pte rsvd access cpl wp nxe va faulted error_code cr2 pte_after
        let status = if c[14] == "deviation" { "pass" } else { c[14] };
        // (Hand-picked cases of the base passes only: the variants' rows, `mode` other than
        // `-` or a PML5E (LA57), share these entry flags on their own VAs.)
        let key = (c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], status);
        // LA57 (where it runs): a PML5E without U/S makes a user read fault with P | U, a
        // permissive one lets it through, over the same P|RW|US path.
        let la57 = (c[16], c[5], c[6], c[7], c[8], status);
        match la57 {
            ("0x3", "r", "3", "1", "1", "pass") => assert_eq!((c[10], c[11]), ("1", "0x5"), "{l}"),
            ("0x7", "r", "3", "1", "1", "pass") => assert_eq!((c[10], c[11]), ("0", "-"), "{l}"),
            _ => {}
        }
        let want: Option<(&str, &str)> = match key {
            _ if c[15] != "-" || c[16] != "-" => None,
            // Supervisor write to a read-only user page: WP=0 succeeds, WP=1 faults 0x3.
            ("0x7", "0x7", "0x7", "0x5", "-", "w", "0", "0", "1", "pass") => Some(("0", "-")),
            ("0x7", "0x7", "0x7", "0x5", "-", "w", "0", "1", "1", "pass") => Some(("1", "0x3")),
            // User read of a supervisor page: 0x5.
            ("0x7", "0x7", "0x7", "0x3", "-", "r", "3", "1", "1", "pass") => Some(("1", "0x5")),
            // NX fetch with NXE=1: P | I/D; with NXE=0 the NX bit is reserved: P | RSVD.
            ("0x7", "0x7", "0x7", "0x8000000000000007", "-", "x", "0", "1", "1", "pass") => {
                Some(("1", "0x11"))
            }
            ("0x7", "0x7", "0x7", "0x8000000000000007", "-", "r", "0", "1", "0", "pass") => {
                Some(("1", "0x9"))
            }
            // Bit 51 in the PDE: RSVD with W and U for a user write.
            ("0x7", "0x7", "0x7", "0x7", "pde", "w", "3", "1", "1", "pass") => Some(("1", "0xf")),
            _ => None,
        };
        if let Some((faulted, err)) = want {
            let err = if c[14] == "deviation" {
                // The deviation's code: the oracle's without P.
                let e = u64::from_str_radix(err.trim_start_matches("0x"), 16).expect("hex");
                format!("{:#x}", e & !1)
            } else {
                err.to_string()
            };
            assert_eq!((c[10], c[11]), (faulted, err.as_str()), "{l}");
            if faulted == "1" {
                assert_eq!(c[12], c[9], "CR2 is the VA: {l}");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 6, "every hand-picked case found once");
    assert_eq!(n, s.cases);
    assert_eq!((pass, skipped, deviating), (s.pass, s.skipped, s.deviation));
}

fn memvisor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(args)
        .output()
        .expect("run memvisor")
}

#[test]
fn cases_out_bad_arguments_exit_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no/such/dir/cases.tsv");
    let d = dir.path().to_string_lossy().into_owned();
    for (args, needle) in [
        (
            vec![
                "run",
                "--scenario",
                "fault-matrix",
                "--cases-out",
                missing.to_str().unwrap_or(""),
            ],
            "--cases-out",
        ),
        (
            vec![
                "run",
                "--scenario",
                "fault-matrix",
                "--cases-out",
                d.as_str(),
            ],
            "directory",
        ),
        (
            vec!["run", "--scenario", "demo", "--cases-out", "/tmp/x.tsv"],
            "only for --scenario fault-matrix",
        ),
    ] {
        let out = memvisor(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // Nothing was left behind.
    assert_eq!(
        std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}
