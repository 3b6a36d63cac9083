//! userfaultfd-backed guest RAM (`--uffd`, `VmConfig::uffd`): the demo and heap scenarios run
//! with every first touch of a frame served by the VMM's uffd handler thread and must end
//! exactly as a run on ordinary anonymous RAM (guest output, fault log, zones, page tables,
//! exit code); the handler's counters must add up, munmap must discard freed frames through
//! `UFFD_EVENT_REMOVE`, and `--json` must match `docs/report.schema.json`.

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
        text.contains("-- userfaultfd: 256 MiB registered;"),
        "{text}"
    );
    assert!(text.contains("serve time: mean"), "{text}");
}
