//! `memvisor snapshot` / `memvisor restore`: the demo and a heap scenario snapshotted at a
//! midpoint (a ucall sync point) and restored in a **new process** finish exactly as an
//! uninterrupted run (guest output, fault log, zone counters, page tables, hypercall and exit
//! counts, exit code); the restore reads only the pages the rest of the run touches (counted,
//! fewer than the file holds); base + incremental layer restores as the full snapshot taken
//! at the same sync point; and every bad file is refused with exit 2 and one line before the
//! guest runs.

mod common;

use common::memvisor_cli as memvisor;
use serde_json::Value;
use std::path::Path;

fn uffd_or_skip(test: &str) -> bool {
    common::uffd_or_skip(test)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Run `memvisor args`, require exit `code`, and parse stdout as the JSON report.
fn json_of(args: &[&str], code: i32) -> Value {
    let out = memvisor(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// The parts of a report an interrupted run must reproduce (timings aside).
fn observable(j: &Value) -> Value {
    let calls: serde_json::Map<String, Value> = j["hypercalls"]
        .as_object()
        .expect("hypercalls")
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!([v["count"], v["errors"]])))
        .collect();
    let mut exits = j["exits"].clone();
    if let Some(m) = exits.as_object_mut() {
        m.remove("intr"); // watchdog signals: timing
    }
    serde_json::json!({
        "outcome": j["outcome"],
        "guest_exit_code": j["guest_exit_code"],
        "console": j["console"],
        "faults": j["faults"],
        "faults_by_kind": j["faults_by_kind"],
        "zones": j["zones"],
        "page_tables": j["page_tables"],
        "lazy_faults": j["lazy_faults"],
        "mapped_frames": j["mapped_frames"],
        "regions_live": j["regions_live"],
        "hypercalls": calls,
        "hypercall_status": j["hypercall_status"],
        "bad_blocks": j["bad_blocks"],
        "exits": exits,
        "stage2": j["stage2"],
        "records": j["records"],
    })
}

/// `restore --json` matches `docs/report.schema.json` (its `restore` and `uffd` sections too).
fn assert_schema(j: &Value) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/report.schema.json"
    ))
    .expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    let v = jsonschema::draft202012::new(&schema).expect("valid schema");
    let errors: Vec<String> = v.iter_errors(j).take(5).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

fn snapshot(scenario: &str, at: u32, out: &Path, inc: Option<(u32, &Path)>) {
    let at = at.to_string();
    let mut args = vec![
        "snapshot",
        "--scenario",
        scenario,
        "--at-sync",
        &at,
        "--out",
        s(out),
    ];
    let m;
    if let Some((mm, p)) = inc {
        m = mm.to_string();
        args.extend(["--incremental-at-sync", &m, "--incremental-out", s(p)]);
    }
    let o = memvisor(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.exists(), "{} written", out.display());
}

/// Snapshot `scenario` at sync 1 (and an incremental layer at sync 2), plus a full snapshot
/// at sync 2 in another run; restore each in a new process; compare with a whole run.
fn same_as_uninterrupted(scenario: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s1, s2, full2) = (
        dir.path().join("s1.snap"),
        dir.path().join("s2.snap"),
        dir.path().join("full2.snap"),
    );
    snapshot(scenario, 1, &s1, Some((2, &s2)));
    snapshot(scenario, 2, &full2, None);
    let whole = json_of(&["run", "--scenario", scenario, "--json"], 0);
    assert!(whole["restore"].is_null());
    let want = observable(&whole);
    for (what, args) in [
        ("full at sync 1", vec!["restore", s(&s1), "--json"]),
        (
            "base at sync 1 + incremental at sync 2",
            vec!["restore", s(&s2), "--base", s(&s1), "--json"],
        ),
        ("full at sync 2", vec!["restore", s(&full2), "--json"]),
    ] {
        let r = json_of(&args, 0);
        assert_eq!(observable(&r), want, "{scenario}, {what}");
        assert_schema(&r);
        let (read, held) = (
            r["restore"]["pages_read"].as_u64().expect("pages_read"),
            r["restore"]["file_pages"].as_u64().expect("file_pages"),
        );
        assert!(
            read > 0 && read < held,
            "{scenario}, {what}: {read} pages read of {held} (only touched pages are read)"
        );
        assert_eq!(r["restore"]["corrupt_pages"], 0);
        // Every page read was served through the uffd handler with UFFDIO_COPY: for its own
        // fault, or ahead of one (readahead of in-order faults).
        let copied = r["uffd"]["copies"].as_u64().expect("copies")
            + r["uffd"]["read_ahead"].as_u64().expect("read_ahead");
        assert!(copied >= read, "{r:#}");
    }
    // The incremental layer holds only what changed between the two sync points.
    let info = memvisor(&["snapshot-info", s(&s1), s(&s2)]);
    assert_eq!(info.status.code(), Some(0));
}

#[test]
fn demo_restored_in_a_new_process_finishes_as_an_uninterrupted_run() {
    if uffd_or_skip("demo_restored_in_a_new_process_finishes_as_an_uninterrupted_run") {
        same_as_uninterrupted("demo");
    }
}

#[test]
fn heap_scenario_restored_in_a_new_process_finishes_as_an_uninterrupted_run() {
    if uffd_or_skip("heap_scenario_restored_in_a_new_process_finishes_as_an_uninterrupted_run") {
        same_as_uninterrupted("seed-page-family");
    }
}

#[test]
fn snapshot_continue_prints_the_whole_report() {
    if !uffd_or_skip("snapshot_continue_prints_the_whole_report") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("c.snap");
    let r = json_of(
        &[
            "snapshot",
            "--scenario",
            "demo",
            "--at-sync",
            "2",
            "--out",
            s(&p),
            "--continue",
            "--json",
        ],
        0,
    );
    let whole = json_of(&["run", "--json"], 0);
    assert_eq!(observable(&r), observable(&whole));
    assert!(p.exists());
}

/// Restore of a bad file: exit 2, one line naming the defect, and nothing of the guest ran
/// (no console output on stdout).
fn assert_refused(args: &[&str], needle: &str) {
    let (_, out) = common::assert_bad_input(args, needle);
    assert!(out.stdout.is_empty(), "{args:?}: the guest ran");
}

#[test]
fn bad_snapshots_are_refused_before_the_guest_runs() {
    if !uffd_or_skip("bad_snapshots_are_refused_before_the_guest_runs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (s1, s2) = (dir.path().join("s1.snap"), dir.path().join("s2.snap"));
    snapshot("demo", 1, &s1, Some((2, &s2)));
    let good = std::fs::read(&s1).expect("read");
    let bad = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let cut = bad("cut.snap", &good[..good.len() - 4096]);
    assert_refused(&["restore", s(&cut)], "truncated");
    let mut x = good.clone();
    x[20] ^= 1;
    assert_refused(&["restore", s(&bad("hdr.snap", &x))], "corrupt header");
    // First byte of the STATE blob (header 64 + section header 24).
    let mut x = good.clone();
    x[88] ^= 0x40;
    assert_refused(
        &["restore", s(&bad("st.snap", &x))],
        "corrupt state section",
    );
    // The last byte of the last page's data.
    let mut x = good.clone();
    let n = x.len();
    x[n - 1] ^= 0x5a;
    assert_refused(&["restore", s(&bad("pg.snap", &x))], "corrupt page at GPA");
    let mut x = good.clone();
    x[8] = 7;
    assert_refused(&["restore", s(&bad("ver.snap", &x))], "format version 7");
    assert_refused(
        &["restore", "--mem", "512M", s(&s1)],
        "taken with 268435456 bytes of guest RAM, this VM has 536870912",
    );
    let other = bad("other.elf", b"\x7fELF another kernel");
    assert_refused(
        &["restore", "--kernel", s(&other), s(&s1)],
        "another guest kernel",
    );
    assert_refused(&["restore", s(&s2)], "layered on snapshot");
    assert_refused(
        &["restore", s(&s1), "--base", s(&s1)],
        "layered on snapshot",
    );
    assert_refused(
        &["restore", s(&bad("junk.snap", b"hello"))],
        "not a memvisor snapshot",
    );
    assert_refused(&["restore", s(&dir.path().join("none.snap"))], "none.snap");
    // Snapshot-side bad input: a sync point the scenario never reaches, an unknown scenario.
    let (line, _) = common::assert_bad_input(
        &[
            "snapshot",
            "--scenario",
            "demo",
            "--at-sync",
            "9",
            "--out",
            s(&dir.path().join("never.snap")),
        ],
        "before sync point 9",
    );
    assert!(line.contains("after 2 sync point(s)"), "{line}");
    assert!(!dir.path().join("never.snap").exists());
    common::assert_bad_input(
        &[
            "snapshot",
            "--scenario",
            "nope",
            "--at-sync",
            "1",
            "--out",
            "x.snap",
        ],
        "unknown scenario",
    );
}
