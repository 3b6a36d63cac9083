//! Guest heaps under KVM (issue 4): the seed scenarios, the stress run, guard-page heap
//! debugging, and a replay of every sample trace on every heap, asserting on the reports.
//! Without /dev/kvm each test is skipped with a message (fails under CI=true).

mod common;

use memvisor::report::Report;
use memvisor_cli::replay::{self, ReplayResult};
use memvisor_cli::report_text::ReportText as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn record<'a>(r: &'a Report, key: &str) -> &'a str {
    r.records.get(key).map(String::as_str).unwrap_or_else(|| {
        panic!(
            "no record {key}; records: {:?}\nconsole:\n{}",
            r.records, r.console
        )
    })
}

fn run_ok(scenario: &str, flags: u32) -> Report {
    let mut cfg = common::config(scenario, 256 << 20);
    cfg.flags |= flags;
    let r = common::run(&cfg);
    assert_eq!(
        r.guest_exit_code,
        Some(0),
        "{scenario}: {}\n{}",
        r.console,
        r.to_text()
    );
    r
}

#[test]
fn seed_page_family_prints_the_seed_reports() {
    if !common::kvm_or_skip("seed_page_family_prints_the_seed_reports") {
        return;
    }
    let r = run_ok("seed-page-family", 0);
    let c = &r.console;
    // mm_print_registered_page_families (sizes of the seed's structs).
    assert!(c.contains("Page Family : emp_t, Size = 36"), "{c}");
    assert!(c.contains("Page Family : student_t, Size = 56"), "{c}");
    // The three steps, each with memory usage and block usage.
    for step in ["scenario 1", "scenario 2", "scenario 3"] {
        assert!(c.contains(step), "{step}");
    }
    assert_eq!(
        c.matches("vm_page_family : emp_t, struct size = 36")
            .count(),
        3
    );
    assert!(c.contains("ALLOCATED") && c.contains("F R E E D"));
    assert!(c.contains("% of memory in use by the application"));
    // Block usage after scenario 1: 3 employees + 1 free block; 2 students + 1 free block.
    let lines: Vec<&str> = c.lines().collect();
    let tbc = |name: &str, nth: usize| -> Vec<u64> {
        let l = lines
            .iter()
            .filter(|l| l.starts_with(name) && l.contains("TBC :"))
            .nth(nth)
            .unwrap_or_else(|| panic!("no block usage line {nth} for {name}"));
        l.split(':')
            .skip(1)
            .filter_map(|f| f.split_whitespace().next())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    assert_eq!(tbc("emp_t", 0), vec![4, 1, 3, 144]);
    assert_eq!(tbc("student_t", 0), vec![3, 1, 2, 128]);
    assert_eq!(tbc("emp_t", 1), vec![3, 2, 1, 48]);
    assert_eq!(tbc("student_t", 1), vec![2, 1, 1, 64]);
    assert_eq!(tbc("emp_t", 2), vec![0, 0, 0, 0]);
    assert!(c.contains("slabinfo - version: 2.1"));
    assert_eq!(record(&r, "seedpf.step1.emp_t.obc"), "3");
    assert_eq!(record(&r, "seedpf.step2.emp_t.obc"), "1");
    // Bad requests are errors with the address, not corruption.
    assert!(record(&r, "seedpf.error.0").starts_with("double free of 0x"));
    assert!(record(&r, "seedpf.error.1").starts_with("invalid pointer 0x"));
    assert_eq!(record(&r, "seedpf.error.2"), "unknown page family `car_t`");
    // Empty pages went back to the host (munmap): nothing left mapped.
    assert_eq!(record(&r, "seedpf.step3.data_pages"), "0");
    assert_eq!(record(&r, "seedpf.pages_after_drop"), "0");
    assert_eq!(r.mapped_frames, 0, "{}", r.to_text());
}

#[test]
fn seed_mems_prints_stats_and_translates() {
    if !common::kvm_or_skip("seed_mems_prints_stats_and_translates") {
        return;
    }
    let r = run_ok("seed-mems", 0);
    let c = &r.console;
    // mems_print_stats format: MAIN[a:b]-> P[c:d] <-> ... <-> NULL per main node.
    let mains: Vec<&str> = c.lines().filter(|l| l.starts_with("MAIN[")).collect();
    assert_eq!(
        mains.len(),
        3 * 3,
        "three main nodes in each of the three stats: {c}"
    );
    for l in &mains {
        assert!(l.ends_with("<-> NULL"), "{l}");
        let (head, chain) = l.split_once("-> ").expect("MAIN[..]-> ");
        let nums = |s: &str| -> (u64, u64) {
            let inner = &s[s.find('[').expect("[") + 1..s.find(']').expect("]")];
            let (a, b) = inner.split_once(':').expect(":");
            (a.parse().expect("start"), b.parse().expect("end"))
        };
        let (ms, me) = nums(head);
        assert_eq!((me + 1 - ms) % 4096, 0, "{l}");
        // The segments tile the main node.
        let mut at = ms;
        for seg in chain
            .trim_end_matches("NULL")
            .split(" <-> ")
            .filter(|s| !s.is_empty())
        {
            assert!(seg.starts_with("P[") || seg.starts_with("H["), "{seg}");
            let (a, b) = nums(seg);
            assert_eq!(a, at, "{l}");
            at = b + 1;
        }
        assert_eq!(at, me + 1, "{l}");
    }
    assert!(c.contains("Pages used: 3"));
    assert!(c.contains("Main Chain Length: 3"));
    assert!(c.contains("Sub-chain Length array: [5, 5, 3, ]"));
    assert!(c.contains("Sub-chain Length array: [4, 5, 3, ]"));
    // Ten 1000-byte arrays, 16-byte rounding: 4 × 1008 + 64 per page-pair layout.
    assert_eq!(record(&r, "seedmems.stats1.pages"), "3");
    assert_eq!(record(&r, "seedmems.stats1.main_chain"), "3");
    assert_eq!(record(&r, "seedmems.stats2.unused"), "3216");
    assert_eq!(record(&r, "seedmems.stats3.unused"), "2208");
    // mems_get: a real walk, agreeing with the host; the value is visible through the GPA.
    assert_eq!(record(&r, "seedmems.value_via_phys"), "200");
    assert_eq!(record(&r, "seedmems.translate_mismatches"), "0");
    let gpa: u64 = record(&r, "seedmems.mems_get").parse().expect("gpa");
    assert!(gpa < 256 << 20 && gpa % 4 == 0);
    assert!(record(&r, "seedmems.error").contains("interior pointer"));
    assert_eq!(record(&r, "seedmems.finish.pages"), "0");
    assert!(c.contains("Pages used: 0"));
    assert_eq!(r.mapped_frames, 0, "mems_finish unmapped everything");
}

#[test]
fn heap_stress_finds_no_overlap() {
    if !common::kvm_or_skip("heap_stress_finds_no_overlap") {
        return;
    }
    // QUICK: 10^5 operations per heap (the full run does 10^6).
    let r = run_ok("heap-stress", 0);
    for h in ["page-family", "mems", "memvisor"] {
        assert_eq!(record(&r, &format!("stress.{h}.ops")), "100000");
        assert_eq!(
            record(&r, &format!("stress.{h}.errors")),
            "0",
            "{}",
            r.console
        );
        assert_eq!(
            record(&r, &format!("stress.{h}.audit")),
            "ok",
            "{}",
            r.console
        );
    }
    assert_eq!(record(&r, "stress.global"), "ok");
    assert_eq!(record(&r, "stress.pages_after"), "0");
}

/// (kind, heap, what, size, offset) of the expected heap-debug faults.
const EXPECTED: [(&str, &str, &str, u64, i64); 5] = [
    ("overflow", "page-family", "family=emp_t", 36, 36),
    ("use-after-free", "page-family", "family=emp_t", 36, 4),
    ("overflow", "mems", "segment=P[", 1000, 1000),
    ("use-after-free", "mems", "segment=P[", 1000, 512),
    ("overflow", "memvisor", "size class", 100, 100),
];

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

#[test]
fn heap_debug_guard_catches_overflow_and_use_after_free() {
    if !common::kvm_or_skip("heap_debug_guard_catches_overflow_and_use_after_free") {
        return;
    }
    let r = run_ok("heap-debug", memvisor_abi::flags::HEAP_DEBUG_GUARD);
    assert_eq!(record(&r, "heapdebug.faults"), "5");
    assert_eq!(record(&r, "heapdebug.double_free"), "refused");
    let reported: Vec<_> = r.faults.iter().filter(|f| f.kind == "reported").collect();
    assert_eq!(reported.len(), 5, "{:?}", r.faults);
    for (i, (kind, heap, what, size, offset)) in EXPECTED.iter().enumerate() {
        let line = record(&r, &format!("heapdebug.fault.{}", i + 1));
        assert!(line.starts_with(&format!("{kind} heap={heap} ")), "{line}");
        assert!(line.contains(what), "{line}");
        assert_eq!(field(line, "size"), size.to_string(), "{line}");
        assert_eq!(field(line, "offset"), offset.to_string(), "{line}");
        let addr =
            u64::from_str_radix(field(line, "addr").trim_start_matches("0x"), 16).expect("addr");
        let cr2 =
            u64::from_str_radix(field(line, "cr2").trim_start_matches("0x"), 16).expect("cr2");
        assert_eq!(cr2 as i64 - addr as i64, *offset, "{line}");
        // The hardware saw it: the host's fault log has the same #PF, resolved by the guest.
        let f = reported[i];
        assert_eq!((f.vector, f.cr2), (14, cr2), "{line}");
        assert!(f.resolved);
        assert_eq!(f.error_code & 1, 0, "not present: {line}");
        if *kind == "overflow" {
            // The end of the allocation abuts the guard page.
            assert_eq!(cr2 % 4096, 0, "{line}");
            assert_eq!(f.error_code & 2, 2, "a write: {line}");
        }
    }
    assert!(r.console.contains("5 bad accesses caught and recovered"));
}

#[test]
fn heap_debug_without_the_flag_checks_the_heaps_only() {
    if !common::kvm_or_skip("heap_debug_without_the_flag_checks_the_heaps_only") {
        return;
    }
    let r = run_ok("heap-debug", 0);
    assert_eq!(record(&r, "heapdebug.faults"), "4");
    assert!(!r.records.contains_key("heapdebug.fault.5"));
}

fn traces() -> Vec<PathBuf> {
    let t = replay::sample_traces();
    assert!(
        t.len() >= 8,
        "tests/data/traces should hold at least the eight sample traces"
    );
    t
}

#[test]
fn every_sample_trace_replays_on_every_heap() {
    if !common::kvm_or_skip("every_sample_trace_replays_on_every_heap") {
        return;
    }
    for path in traces() {
        let t = replay::load(&path).expect("sample trace parses");
        for (id, heap) in replay::HEAPS.iter().enumerate() {
            let r = replay::run(&t, id, 512 << 20, Duration::from_secs(120)).expect("VMM runs");
            let res = ReplayResult::from_report(&t, heap, &r);
            let ctx = format!("{} on {heap}: {res:?}\n{}", t.name, r.console);
            assert!(res.ok(), "{ctx}");
            assert_eq!(res.errors, 0, "{ctx}");
            assert_eq!(res.events, t.events.len() as u64, "{ctx}");
            assert_eq!(res.peak_live_bytes, t.peak_live_bytes, "{ctx}");
            assert!(res.peak_mapped_bytes >= res.peak_live_bytes, "{ctx}");
            assert!(res.efficiency > 0.3 && res.efficiency <= 1.0, "{ctx}");
            assert!(res.ops_per_sec > 0, "{ctx}");
            assert_eq!(res.refused_frees, 0, "{ctx}");
            assert_eq!(
                r.records.get("replay.heap").map(String::as_str),
                Some(*heap)
            );
            // Everything went back to the host at the end.
            assert_eq!(r.mapped_frames, 0, "{ctx}");
        }
    }
}

#[test]
fn the_memvisor_heap_meets_the_efficiency_targets_on_every_trace() {
    if !common::kvm_or_skip("the_memvisor_heap_meets_the_efficiency_targets_on_every_trace") {
        return;
    }
    // Efficiency is deterministic (no timing): one checked pass of every trace on memvisor
    // and its peers, in one guest. Targets (issue 13): >= 90 %, >= talc's, and within 3
    // points of the best of talc, rlsf and dlmalloc, on every trace (nginx met them from the
    // eleventh session on, when empty slabs went back at the high-water mark: BENCHMARKS.md).
    // The memvisor heap's efficiency on each, eleventh session: bzip2 0.9893, gcc-cc1 0.9455
    // (talc's too), lua5.4 0.9582, nginx 0.9274, perl 0.9350, python-json 0.9289,
    // redis-server 0.9433, sqlite3 0.9714.
    let traces: Vec<replay::Trace> = traces()
        .iter()
        .map(|p| replay::load(p).expect("parses"))
        .collect();
    let heaps = memvisor_cli::replay_many::heap_list("memvisor,talc,rlsf,dlmalloc").expect("heaps");
    let r = memvisor_cli::replay_many::run(&traces, &heaps, 1, 512 << 20, Duration::from_secs(900))
        .expect("VMM runs");
    let res = memvisor_cli::replay_many::results(&traces, &heaps, &r);
    assert_eq!(res.len(), traces.len() * 4, "{}", r.console);
    let mut report = String::new();
    for t in &traces {
        let eff = |h: &str| {
            let x = res
                .iter()
                .find(|x| x.trace == t.name && x.heap == h)
                .expect("result");
            assert_eq!(x.errors, 0, "{x:?}");
            x.efficiency
        };
        let (ours, talc) = (eff("memvisor"), eff("talc"));
        let best = talc.max(eff("rlsf")).max(eff("dlmalloc"));
        let met = ours >= 0.90 && ours >= talc && ours >= best - 0.03;
        report += &format!(
            "{}: memvisor {ours:.4}, talc {talc:.4}, best peer {best:.4}: {}\n",
            t.name,
            if met { "met" } else { "missed" }
        );
        assert!(met, "{}: an efficiency target is missed\n{report}", t.name);
    }
    println!("{report}");
}

fn memvisor_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memvisor"))
}

#[test]
fn replay_cli_rejects_bad_traces_with_the_line_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, line, what) in [
        ("# t\na 0 16\nf 0\nf 0\n", 4, "free of already freed id 0"),
        ("a 0 16\na 0 8\n", 2, "allocated twice"),
        ("a 0 16\nr 5 8\n", 2, "realloc of unknown id 5"),
        ("a 0 16\nx 1\n", 2, "malformed"),
    ] {
        let p = dir.path().join("bad.trace");
        std::fs::write(&p, text).expect("write");
        let out = memvisor_bin()
            .args(["replay", p.to_str().expect("utf-8"), "--heap", "memvisor"])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("bad.trace:{line}: ")), "{err}");
        assert!(err.contains(what), "{err}");
    }
    let out = memvisor_bin()
        .args([
            "replay",
            "tests/data/traces/gcc-cc1.trace",
            "--heap",
            "glibc",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown heap 'glibc'"));
    let out = memvisor_bin()
        .args(["replay", "no/such.trace"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    // Several traces: a malformed one is rejected with its path and line before any runs.
    let bad = dir.path().join("bad2.trace");
    std::fs::write(&bad, "a 0 16\nf 0\nf 0\n").expect("write");
    let out = memvisor_bin()
        .args(["replay", "tests/data/traces/bzip2.trace"])
        .arg(&bad)
        .args(["--heap", "memvisor,talc"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad2.trace:3: free of already freed id 0"),
        "{err}"
    );
    for list in ["memvisor,memvisor", "memvisor,", "talc,glibc"] {
        let out = memvisor_bin()
            .args(["replay", "tests/data/traces/bzip2.trace", "--heap", list])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{list}");
    }
}

#[test]
fn replay_cli_runs_several_traces_and_heaps_in_one_guest() {
    if !common::kvm_or_skip("replay_cli_runs_several_traces_and_heaps_in_one_guest") {
        return;
    }
    let out = memvisor_bin()
        .args([
            "replay",
            "tests/data/traces/bzip2.trace",
            "tests/data/traces/nginx.trace",
            "--heap",
            "memvisor,talc,rlsf,dlmalloc",
            "--runs",
            "3",
            "--json",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), 8);
    let mut i = 0;
    for (trace, events, live) in [("bzip2", 609, 7532877), ("nginx", 69863, 638137)] {
        for heap in ["memvisor", "talc", "rlsf", "dlmalloc"] {
            let r = &rows[i];
            i += 1;
            assert_eq!(r["trace"], trace, "{r}");
            assert_eq!(r["heap"], heap, "{r}");
            assert_eq!(r["events"], events, "{r}");
            assert_eq!(r["peak_live_bytes"], live, "{r}");
            assert_eq!(r["errors"], 0, "{r}");
            assert_eq!(r["runs"], 3, "{r}");
            assert!(r["ops_per_sec"].as_u64().is_some_and(|o| o > 0), "{r}");
            let eff = r["efficiency"].as_f64().expect("efficiency");
            assert!(eff > 0.3 && eff <= 1.0, "{r}");
            assert!(r["exits_per_1k_ops"].as_f64().is_some(), "{r}");
        }
    }
    // The text form: one table, a header and one row per (trace, heap).
    let out = memvisor_bin()
        .args([
            "replay",
            "tests/data/traces/bzip2.trace",
            "--heap",
            "memvisor,dlmalloc",
            "--runs",
            "1",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("trace") && lines[0].contains("exits/1k"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("bzip2") && lines[1].contains("memvisor"),
        "{text}"
    );
    assert!(lines[2].contains("dlmalloc"), "{text}");
}

#[test]
fn replay_cli_prints_the_result_keys() {
    if !common::kvm_or_skip("replay_cli_prints_the_result_keys") {
        return;
    }
    let out = memvisor_bin()
        .args([
            "replay",
            "tests/data/traces/gcc-cc1.trace",
            "--heap",
            "talc",
            "--json",
        ])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for k in [
        "events",
        "ops_per_sec",
        "peak_live_bytes",
        "peak_mapped_bytes",
        "efficiency",
        "errors",
    ] {
        assert!(v.get(k).is_some(), "no {k} in {v}");
    }
    assert_eq!(v["events"], 66709);
    assert_eq!(v["peak_live_bytes"], 3109719);
    assert_eq!(v["errors"], 0);
    let out = memvisor_bin()
        .args([
            "replay",
            "tests/data/traces/gcc-cc1.trace",
            "--heap",
            "page-family",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for k in [
        "events: 66709",
        "ops_per_sec: ",
        "peak_live_bytes: 3109719",
        "peak_mapped_bytes: ",
        "efficiency: 0.",
        "errors: 0",
    ] {
        assert!(text.contains(k), "{k} in {text}");
    }
}

#[test]
fn heap_debug_flag_is_accepted_by_run() {
    if !common::kvm_or_skip("heap_debug_flag_is_accepted_by_run") {
        return;
    }
    let out = memvisor_bin()
        .args([
            "run",
            "--scenario",
            "heap-debug",
            "--heap-debug",
            "guard",
            "--json",
        ])
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["records"]["heapdebug.faults"], "5");
    let out = memvisor_bin()
        .args(["run", "--scenario", "demo", "--heap-debug", "fence"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}
