//! `docs/report.schema.json` against real output: `memvisor run --json` of every scenario
//! (crash paths included; the fault matrix's full run, ~25 s), `memvisor bench --quick --json`
//! and `memvisor replay --json` must validate, and the schema must refuse a 64-bit address
//! written as a JSON number (issue 14: jq printed 18446744071564173000 for 0xffffffff80201e8a).
//! Three tests (the scenarios, the fault matrix, bench + replay) so the harness runs them side
//! by side; each is one guest run after another.

mod common;

use serde_json::Value;
use std::process::Command;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/report.schema.json"
    ))
    .expect("read the schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::draft202012::new(&schema).expect("a valid draft 2020-12 schema")
}

/// Run the binary; its stdout parsed as JSON, and its exit code.
fn json_of(args: &[&str]) -> (Value, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(args)
        .output()
        .expect("run memvisor");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not JSON ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code())
}

fn assert_valid(v: &jsonschema::Validator, what: &str, json: &Value) {
    let errors: Vec<String> = v
        .iter_errors(json)
        .take(5)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

#[test]
fn every_scenario_matches_the_schema() {
    if !common::kvm_or_skip("every_scenario_matches_the_schema") {
        return;
    }
    let v = schema();
    let runs: &[(&[&str], i32)] = &[
        (&["--scenario", "demo"], 0),
        (&["--scenario", "stage2"], 0),
        (&["--scenario", "hostile", "--quick"], 0),
        (&["--scenario", "bench", "--quick"], 0),
        (&["--scenario", "boot"], 0),
        (&["--scenario", "seed-page-family"], 0),
        (&["--scenario", "seed-mems"], 0),
        (&["--scenario", "heap-stress", "--quick"], 0),
        (&["--scenario", "heap-debug"], 0),
        (&["--scenario", "heap-debug", "--heap-debug", "guard"], 0),
        (&["--scenario", "guest-panic"], 1),
        (&["--scenario", "triple-fault"], 1),
        (&["--scenario", "double-fault"], 1),
        (&["--scenario", "runaway", "--timeout", "1"], 1),
    ];
    let mut names = vec![FAULT_MATRIX[1]];
    for (args, code) in runs {
        run_and_validate(&v, args, *code);
        names.push(args[1]);
    }
    for s in memvisor_cli::registry::listed() {
        assert!(
            names.contains(&s.name),
            "scenario {} is not checked",
            s.name
        );
    }
}

/// The fault matrix's full run (checked by `every_scenario_matches_the_schema`'s list).
const FAULT_MATRIX: [&str; 2] = ["--scenario", "fault-matrix"];

fn run_and_validate(v: &jsonschema::Validator, args: &[&str], code: i32) {
    let mut all = vec!["run", "--json"];
    all.extend_from_slice(args);
    let (json, status) = json_of(&all);
    assert_eq!(status, Some(code), "{all:?}: {}", json["message"]);
    assert_valid(v, &format!("{all:?}"), &json);
}

#[test]
fn the_fault_matrix_report_matches_the_schema() {
    if !common::kvm_or_skip("the_fault_matrix_report_matches_the_schema") {
        return;
    }
    run_and_validate(&schema(), &FAULT_MATRIX, 0);
}

#[test]
fn bench_and_replay_match_the_schema() {
    if !common::kvm_or_skip("bench_and_replay_match_the_schema") {
        return;
    }
    let v = schema();
    let (bench, status) = json_of(&["bench", "--quick", "--json"]);
    assert_eq!(status, Some(0));
    assert_valid(&v, "bench", &bench);
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/traces/python-json.trace"
    );
    let (replay, status) = json_of(&["replay", trace, "--json"]);
    assert_eq!(status, Some(0));
    assert_valid(&v, "replay", &replay);
    // Several traces and heaps in one guest: a JSON array of the same records.
    let small = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/traces/bzip2.trace");
    let (many, status) = json_of(&[
        "replay",
        small,
        small,
        "--heap",
        "memvisor,talc",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(status, Some(0));
    assert_eq!(many.as_array().map(Vec::len), Some(4), "{many}");
    assert_valid(&v, "replay (several)", &many);
}

#[test]
fn the_schema_refuses_addresses_as_numbers() {
    let v = schema();
    let fault = serde_json::json!({"vector": 14, "error_code": "0x4", "cr2": "0x100000000000",
        "rip": "0xffffffff80201e8a", "resolved": true, "kind": "reported"});
    let report = |fault: &Value| {
        let mut r: Value = serde_json::from_str(REPORT).expect("REPORT is JSON");
        r["faults"][0] = fault.clone();
        r
    };
    assert_valid(&v, "hand-written report", &report(&fault));
    // The lossy form the issue saw, and hex with leading zeros or capitals: refused.
    for (key, bad) in [
        ("rip", serde_json::json!(18446744071564173000u64)),
        ("rip", serde_json::json!("0xFFFFFFFF80201E8A")),
        ("cr2", serde_json::json!("0x0000100000000000")),
        ("error_code", serde_json::json!(4)),
    ] {
        let mut f = fault.clone();
        f[key] = bad.clone();
        assert!(!v.is_valid(&report(&f)), "{key} = {bad} accepted");
    }
}

/// A minimal run report (every required key), its one fault replaced by the test.
const REPORT: &str = r#"{
    "scenario": "demo", "outcome": "exit", "guest_exit_code": 0, "message": null,
    "mem_bytes": 268435456,
    "memslots": [{"slot": 0, "gpa": "0x0", "size": 268435456, "flags": "0x0"}],
    "e820": [{"start": "0x0", "size": 268435456, "type": "ram"}],
    "zones": [], "zoneinfo": "", "buddyinfo": "",
    "page_tables": {"cr3": "0x1000", "table_frames": 4, "pdpt_tables": 1, "pd_tables": 1,
        "pt_tables": 1, "pool_chunks": 1, "pool_chunk_gpas": ["0x200000"],
        "mappings_4k": 0, "mappings_2m": 128, "mappings_1g": 0},
    "faults": [null], "faults_total": 1, "stage2": [], "stage2_total": 0,
    "exits": {"io_out": 3}, "exit_latency": {}, "stage2_report": null,
    "faults_by_kind": {}, "hypercalls": {}, "hypercall_status": {}, "bad_blocks": 0,
    "regions_live": 0, "mapped_frames": 0, "lazy_faults": 0, "lazy_faults_assisted": 0,
    "vmm_irets": 0, "shadow_flushes": 0, "records": {}, "console": "",
    "registers": null, "invariants": null,
    "timings": {"setup_us": 1, "memslot_us": 1, "first_entry_us": 1,
        "first_guest_instruction_us": null, "run_us": 1, "total_us": 2},
    "matrix": null,
    "cpu": {"nx": true, "page_1g": false, "smep": false, "smap": false, "pku": false,
        "la57": false, "pse": true, "tsc_khz": 0},
    "tsc_khz": 2000000
}"#;
