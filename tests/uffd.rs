//! userfaultfd-backed guest RAM (`--uffd`, `VmConfig::uffd`): the demo and heap scenarios run
//! with every first touch of a frame served by the VMM's uffd handler thread and must end
//! exactly as a run on ordinary anonymous RAM (guest output, fault log, zones, page tables,
//! exit code); the handler's counters must add up, munmap must discard freed frames through
//! `UFFD_EVENT_REMOVE`, and `--json` must match `docs/report.schema.json`. The same holds on
//! shared-memory RAM (`--ram-backing shm`: MISSING | MINOR, minor faults after a prefill
//! through the alias) and with only chosen GPA ranges registered (`--uffd-range`).

mod common;

use memvisor::report::Report;
use serde_json::Value;
use std::process::Command;

fn uffd_or_skip(test: &str) -> bool {
    common::uffd_or_skip(test)
}

/// The console with measured figures (`N cycles/op`) blanked: timings differ run to run.
fn untimed(console: &str) -> String {
    let words: Vec<&str> = console.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let timed = words.get(i + 1).is_some_and(|n| n.starts_with("cycles/op"))
            && w.chars().all(|c| c.is_ascii_digit());
        out.push(if timed { "N" } else { w });
    }
    out.join(" ")
}

/// The parts of a report that must not depend on how RAM is backed.
fn observable(r: &Report) -> Value {
    let j = serde_json::to_value(r).expect("report to JSON");
    serde_json::json!({
        "outcome": j["outcome"],
        "guest_exit_code": j["guest_exit_code"],
        "console": untimed(&r.console),
        "faults": j["faults"],
        "faults_by_kind": j["faults_by_kind"],
        "zones": j["zones"],
        "page_tables": j["page_tables"],
        "lazy_faults": j["lazy_faults"],
        "mapped_frames": j["mapped_frames"],
        "regions_live": j["regions_live"],
        "hypercall_status": j["hypercall_status"],
        "invariants": j["invariants"],
    })
}

fn same_with_and_without_uffd(scenario: &str) {
    let plain_cfg = common::config(scenario, 256 << 20);
    let mut uffd_cfg = plain_cfg.clone();
    uffd_cfg.uffd = true;
    let plain = common::run(&plain_cfg);
    let uffd = common::run(&uffd_cfg);
    assert_eq!(
        plain.guest_exit_code,
        Some(0),
        "{scenario}: {}",
        plain.console
    );
    assert!(plain.uffd.is_none());
    assert_eq!(
        observable(&plain),
        observable(&uffd),
        "{scenario}: a uffd-backed run must end exactly as a plain one"
    );
    let s = uffd.uffd.as_ref().expect("uffd section in the report");
    assert_eq!(s.registered_bytes, 256 << 20);
    assert!(
        s.faults > 0,
        "{scenario}: no page fault reached the handler"
    );
    assert_eq!(s.errors, 0);
    assert_eq!(s.copies, 0, "a zero source never copies");
    assert_eq!(s.source_reads, 0);
    assert_eq!(s.faults, s.zeropages + s.raced);
    assert_eq!(s.hist_ns_log2.iter().sum::<u64>(), s.zeropages);
    assert!(s.max_ns >= s.mean_ns());
    // Every frame the guest's munmaps freed was discarded (MADV_DONTNEED -> REMOVE event).
    if scenario == "demo" {
        assert!(
            s.remove_events > 0,
            "demo unmaps regions: REMOVE events expected"
        );
        assert!(s.removed_pages >= s.remove_events);
    }
}

#[test]
fn demo_same_with_uffd() {
    if !uffd_or_skip("demo_same_with_uffd") {
        return;
    }
    same_with_and_without_uffd("demo");
}

#[test]
fn heap_scenarios_same_with_uffd() {
    if !uffd_or_skip("heap_scenarios_same_with_uffd") {
        return;
    }
    same_with_and_without_uffd("seed-mems");
    same_with_and_without_uffd("heap-stress");
}

#[test]
fn cli_uffd_json_matches_schema_and_text_has_histogram() {
    if !uffd_or_skip("cli_uffd_json_matches_schema_and_text_has_histogram") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "--uffd", "--json"])
        .output()
        .expect("run memvisor");
    assert_eq!(out.status.code(), Some(0));
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/report.schema.json"
    ))
    .expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    let v = jsonschema::draft202012::new(&schema).expect("valid schema");
    let errors: Vec<String> = v.iter_errors(&j).take(5).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(j["uffd"]["hist_ns_log2"].as_array().map(Vec::len), Some(32));
    assert!(j["uffd"]["faults"].as_u64() > Some(0));

    let out = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "--uffd"])
        .output()
        .expect("run memvisor");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-- userfaultfd: 256 MiB registered (MISSING);"),
        "{text}"
    );
    assert!(text.contains("serve time: mean"), "{text}");
}

/// The report of `scenario` on 256 MiB with `ram` (shared memory and/or chosen ranges) and
/// `--uffd`, checked against a plain run: same observable end; the handler's counters add up.
fn same_as_plain_with(scenario: &str, ram: memvisor::uffd::RamOptions) -> Report {
    let plain_cfg = common::config(scenario, 256 << 20);
    let mut cfg = plain_cfg.clone();
    cfg.uffd = true;
    cfg.ram = ram;
    let plain = common::run(&plain_cfg);
    let r = common::run(&cfg);
    assert_eq!(
        plain.guest_exit_code,
        Some(0),
        "{scenario}: {}",
        plain.console
    );
    assert_eq!(
        observable(&plain),
        observable(&r),
        "{scenario}: a run with {:?} must end exactly as a plain one",
        cfg.ram
    );
    let s = r.uffd.as_ref().expect("uffd section in the report");
    assert_eq!(s.errors, 0);
    assert_eq!(s.faults, s.missing_faults + s.minor_faults);
    assert_eq!(s.faults, s.zeropages + s.continues + s.raced);
    assert_eq!(
        s.hist_ns_log2.iter().sum::<u64>(),
        s.zeropages + s.continues
    );
    r
}

/// userfaultfd with MINOR mode on shared memory (`UFFD_FEATURE_MINOR_SHMEM`, Linux 5.14);
/// false (reported "skipped: unsupported by host") on a kernel without it.
fn minor_or_skip(test: &str) -> bool {
    if !uffd_or_skip(test) {
        return false;
    }
    let mut ram = memvisor::memory::GuestRam::new_with(2 << 20, memvisor::memory::RamBacking::Shm)
        .expect("shared-memory RAM");
    match ram.attach_uffd(Box::new(memvisor::uffd::ZeroSource)) {
        Ok(()) => true,
        Err(memvisor::uffd::UffdError::Unsupported { what }) => {
            eprintln!("skipped {test}: unsupported by host ({what})");
            false
        }
        Err(e) => panic!("{test}: userfaultfd on shared memory: {e}"),
    }
}

fn shm(prefill: Vec<(u64, u64)>) -> memvisor::uffd::RamOptions {
    memvisor::uffd::RamOptions {
        backing: memvisor::memory::RamBacking::Shm,
        prefill,
        ..Default::default()
    }
}

#[test]
fn shm_minor_mode_same_as_plain() {
    if !minor_or_skip("shm_minor_mode_same_as_plain") {
        return;
    }
    for scenario in ["demo", "seed-mems"] {
        // Nothing in the page cache: every fault is missing (COPY / ZEROPAGE on shmem).
        let r = same_as_plain_with(scenario, shm(vec![]));
        let s = r.uffd.as_ref().expect("uffd");
        assert_eq!(s.mode, memvisor::uffd::UffdMode::MissingMinor);
        assert_eq!(s.registered_bytes, 256 << 20);
        assert!(s.missing_faults > 0, "{scenario}");
        assert_eq!(s.minor_faults, 0, "{scenario}: nothing was prefilled");
        assert!(
            s.remove_events > 0,
            "{scenario}: munmap must discard (MADV_REMOVE)"
        );
        // All of RAM prefilled through the alias: the guest's and the VMM's first touches
        // find the page cache filled and fault minor (UFFDIO_CONTINUE); only pages the
        // guest freed (holes punched) and touched again fault missing.
        let r = same_as_plain_with(scenario, shm(vec![(0, 256 << 20)]));
        let s = r.uffd.as_ref().expect("uffd");
        assert!(
            s.minor_faults > 0,
            "{scenario}: no minor fault after prefill"
        );
        assert_eq!(s.continues + s.raced, s.minor_faults, "{scenario}");
        assert!(
            s.minor_faults > s.missing_faults,
            "{scenario}: {} minor vs {} missing",
            s.minor_faults,
            s.missing_faults
        );
    }
    // The prefault cursor races the guest: the same end whatever it has filled by then.
    for scenario in ["demo", "heap-stress"] {
        let mut ram = shm(vec![]);
        ram.prefault_cursor = true;
        let r = same_as_plain_with(scenario, ram);
        let s = r.uffd.as_ref().expect("uffd");
        assert!(s.prefaulted_bytes <= s.registered_bytes);
        assert_eq!(s.prefaulted_bytes % 4096, 0);
    }
    // A prefill of part of RAM: only some faults are minor.
    let r = same_as_plain_with("heap-stress", shm(vec![(16 << 20, 16 << 20)]));
    let s = r.uffd.as_ref().expect("uffd");
    assert!(s.faults > 0);
}

#[test]
fn chosen_uffd_ranges_same_as_plain() {
    if !minor_or_skip("chosen_uffd_ranges_same_as_plain") {
        return;
    }
    let whole = same_as_plain_with("demo", Default::default());
    let all = whole.uffd.as_ref().expect("uffd").faults;
    // 16..32 MiB: the demo's frames come from here (kernel image and boot tables below).
    let one = |ranges: Vec<(u64, u64)>, backing| {
        same_as_plain_with(
            "demo",
            memvisor::uffd::RamOptions {
                backing,
                uffd_ranges: ranges,
                ..Default::default()
            },
        )
    };
    for backing in [
        memvisor::memory::RamBacking::Anonymous,
        memvisor::memory::RamBacking::Shm,
    ] {
        let r = one(vec![(16 << 20, 16 << 20)], backing);
        let s = r.uffd.as_ref().expect("uffd");
        assert_eq!(s.registered_bytes, 16 << 20);
        assert!(s.faults > 0 && s.faults <= all, "{} of {all}", s.faults);
        // A range the demo never touches: registered, no fault, same output.
        let r = one(vec![(128 << 20, 64 << 20)], backing);
        let s = r.uffd.as_ref().expect("uffd");
        assert_eq!((s.registered_bytes, s.faults), (64 << 20, 0));
        // Two ranges add up.
        let r = one(vec![(0, 16 << 20), (128 << 20, 64 << 20)], backing);
        assert_eq!(r.uffd.as_ref().expect("uffd").registered_bytes, 80 << 20);
    }
}

#[test]
fn cli_ram_backing_and_ranges() {
    if !minor_or_skip("cli_ram_backing_and_ranges") {
        return;
    }
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(args)
            .output()
            .expect("run memvisor")
    };
    let out = run(&[
        "run",
        "--ram-backing",
        "shm",
        "--uffd-range",
        "0x1000000..0x2000000",
        "--uffd-prefill",
        "0x1000000..0x2000000",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["uffd"]["mode"], "missing_minor");
    assert_eq!(j["uffd"]["registered_bytes"].as_u64(), Some(16 << 20));
    assert!(j["uffd"]["minor_faults"].as_u64() > Some(0));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/report.schema.json"
        ))
        .expect("schema"),
    )
    .expect("schema JSON");
    let v = jsonschema::draft202012::new(&schema).expect("valid schema");
    let errors: Vec<String> = v.iter_errors(&j).take(5).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let out = run(&["run", "--ram-backing", "shm", "--uffd"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("registered (MISSING|MINOR)"), "{text}");
    for (args, what) in [
        (
            &["run", "--uffd-range", "0x1000..0x1800"][..],
            "not 4 KiB aligned",
        ),
        (
            &["run", "--uffd-range", "0x1000"][..],
            "expected START..END",
        ),
        (
            &["run", "--uffd-range", "0x2000..0x1000"][..],
            "empty or reversed",
        ),
        (
            &["run", "--uffd-range", "0x0..0x20000000"][..],
            "not inside guest RAM",
        ),
        (
            &[
                "run",
                "--uffd-range",
                "0..0x3000",
                "--uffd-range",
                "0x2000..0x4000",
            ][..],
            "overlaps",
        ),
        (
            &["run", "--uffd-prefill", "0..0x1000"][..],
            "needs --ram-backing shm",
        ),
        (&["run", "--ram-backing", "tmpfs"][..], "tmpfs"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
    }
}

/// Run `vm` (stepwise) through its resumable exits up to sync point `n` or the end.
fn run_until_sync(vm: &mut memvisor::vm::Vm, n: u64) {
    use memvisor::vm::{Exit, Ucall};
    loop {
        match vm.run().expect("run") {
            Exit::Ucall(Ucall::Sync(k)) if k.first() == Some(&n) => return,
            e if e.resumable() => {}
            e => panic!("ended before sync {n}: {e:?}"),
        }
    }
}

fn run_to_end(mut vm: memvisor::vm::Vm) -> Report {
    while vm.run().expect("run").resumable() {}
    vm.report()
}

#[test]
fn snapshot_of_a_shm_guest_restores_on_anonymous_ram() {
    if !minor_or_skip("snapshot_of_a_shm_guest_restores_on_anonymous_ram") {
        return;
    }
    let mut cfg = common::config("demo", 256 << 20);
    cfg.uffd = true;
    cfg.ram = shm(vec![(16 << 20, 16 << 20)]);
    let hooks = memvisor_cli::registry::hooks_for;
    let mut vm = memvisor::vm::Vm::create(&cfg, hooks("demo"), None).expect("VM");
    vm.set_stepwise(true);
    run_until_sync(&mut vm, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shm.snap");
    let info = vm.snapshot(&path).expect("snapshot of a shm guest");
    assert!(info.pages > 0);
    let whole = run_to_end(vm);
    let opts = memvisor::vm::RestoreOptions {
        hooks,
        ..Default::default()
    };
    let restored =
        memvisor::vm::Vm::restore(&path, None, memvisor::guest_image::GUEST_ELF.to_vec(), opts)
            .expect("restore");
    let r = run_to_end(restored);
    assert_eq!(whole.guest_exit_code, Some(0), "{}", whole.console);
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.console);
    let j = serde_json::to_value(&r).expect("JSON");
    let w = serde_json::to_value(&whole).expect("JSON");
    assert_eq!(j["zones"], w["zones"]);
    assert_eq!(j["outcome"], w["outcome"]);
    // The restored VM's RAM is anonymous (MISSING mode), served from the file.
    let s = r.uffd.as_ref().expect("uffd");
    assert_eq!(s.mode, memvisor::uffd::UffdMode::Missing);
    assert_eq!(untimed(&r.console), untimed(&whole.console));
    assert_eq!(j["faults"], w["faults"]);
}
