//! The allocation-trace recorder (`scripts/trace-recorder.sh`, an LD_PRELOAD interposer in
//! C): built with gcc, it records a small program of known allocations and a Python run, and
//! the traces parse with the replayer's parser ([`memvisor_cli::replay::parse`]). Needs gcc and
//! python3 (both fail the test when missing: they are part of the development setup).

use memvisor_cli::replay::{self, Trace};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("trace-recorder-test");
    std::fs::create_dir_all(&d).expect("scratch dir");
    d.join(name)
}

/// Run the recorder script on `cmd`; returns the parsed trace and its text.
fn record(name: &str, extra: &[&str], cmd: &[&str]) -> (Trace, String) {
    let out = scratch(&format!("{name}.trace"));
    let status = Command::new("sh")
        .arg(root().join("scripts/trace-recorder.sh"))
        .args(extra)
        .arg(&out)
        .arg("--")
        .args(cmd)
        .env("MEMVISOR_RECORDER_DIR", scratch("lib"))
        .status()
        .expect("sh runs");
    assert!(status.success(), "{name}: recorder run failed: {status}");
    let text = std::fs::read_to_string(&out).expect("trace written");
    let t = replay::parse(name, &text).unwrap_or_else(|e| panic!("{name}: {e}\n{text:.2000}"));
    (t, text)
}

fn demo_binary() -> PathBuf {
    let exe = scratch("alloc-demo");
    let status = Command::new("gcc")
        .args(["-O0", "-pthread", "-o"])
        .arg(&exe)
        .arg(root().join("tests/data/recorder/alloc-demo.c"))
        .status()
        .expect("gcc runs (gcc is needed to build the recorder)");
    assert!(status.success(), "gcc failed");
    exe
}

#[test]
fn records_a_known_program_exactly() {
    let exe = demo_binary();
    let exe = exe.to_str().expect("utf-8 path");
    let (t, text) = record("demo", &[], &[exe]);
    let events: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        text.starts_with("# memvisor allocation trace v1"),
        "{text:.200}"
    );
    // The single-threaded prefix, in order, with ids renumbered densely from 0.
    let want = [
        "a 0 10", "a 1 300", "r 0 5000", "f 1", "a 2 200", "a 3 128", "a 4 100", "a 5 40", "f 2",
        "f 3", "f 4", "f 0", "f 5",
    ];
    assert_eq!(&events[..want.len()], &want, "{text:.400}");
    // The threads: every 777-byte block reallocated to 778 and freed, under its own id.
    let n = |p: &str| events.iter().filter(|l| l.starts_with(p)).count();
    let allocs_777: Vec<&str> = events
        .iter()
        .filter(|l| l.starts_with("a ") && l.ends_with(" 777"))
        .copied()
        .collect();
    assert_eq!(allocs_777.len(), 4000);
    assert_eq!(
        events
            .iter()
            .filter(|l| l.starts_with("r ") && l.ends_with(" 778"))
            .count(),
        4000
    );
    assert!(n("f ") >= 4000 + 6);
    // Every block the program freed is freed in the trace: nothing of ours is live at the end
    // (glibc's thread start-up may leave a few of its own blocks).
    assert!(t.live_at_end <= 8, "live at end: {}", t.live_at_end);
    assert_eq!(t.ids as usize, n("a "));
}

#[test]
fn the_event_cap_keeps_a_valid_prefix() {
    let exe = demo_binary();
    let exe = exe.to_str().expect("utf-8 path");
    let (t, text) = record("capped", &["--max-events", "50"], &[exe]);
    assert_eq!(t.events.len(), 50, "{text}");
    let (t, _) = record("skipped", &["--skip", "3", "--max-events", "5"], &[exe]);
    // Skipping "a 0 10", "a 1 300", "r 0 5000": block 1's free is not recorded (unknown),
    // block 0 (now unknown too) neither, so the first recorded event is posix_memalign's.
    assert_eq!(t.events.len(), 5);
}

#[test]
fn records_python_through_its_wrapper() {
    // `python3` may be a wrapper script (pyenv) that execs the interpreter: --exe picks the
    // process that records.
    let real = Command::new("python3")
        .args([
            "-c",
            "import sys, os; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3 runs");
    let real = String::from_utf8(real.stdout).expect("utf-8");
    let base = Path::new(real.trim())
        .file_name()
        .and_then(|s| s.to_str())
        .expect("executable name")
        .to_string();
    let (t, _) = record(
        "python",
        &["--exe", &base],
        &[
            "env",
            "PYTHONMALLOC=malloc",
            "python3",
            "-c",
            "import json; s = json.dumps([{'k': list(range(i))} for i in range(200)]); \
             assert len(json.loads(s)) == 200",
        ],
    );
    assert!(t.events.len() > 10_000, "{} events", t.events.len());
    let reallocs = t.events.iter().filter(|e| *e >> 62 == 2).count();
    assert!(reallocs > 100, "{reallocs} reallocs");
}
