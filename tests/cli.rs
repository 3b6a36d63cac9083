//! The `memvisor` binary: bad input exits 2 with one clear line; the main job exits 0 and
//! `--json` prints the documented keys.

mod common;

use common::memvisor_cli as memvisor;

fn assert_bad(args: &[&str], needle: &str) {
    let (line, out) = common::assert_bad_input(args, needle);
    assert!(line.starts_with("memvisor: "), "{args:?}: {line}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: wrote to stdout");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not an ELF file\n").expect("write");
    let truncated = dir.path().join("truncated.elf");
    std::fs::write(&truncated, &memvisor::guest_image::GUEST_ELF[..100]).expect("write");
    // An ELF header for aarch64 (e_machine 183), otherwise like ours.
    let mut arm = memvisor::guest_image::GUEST_ELF.to_vec();
    arm[18] = 183;
    arm[19] = 0;
    let arm_path = dir.path().join("arm.elf");
    std::fs::write(&arm_path, &arm).expect("write");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();

    assert_bad(&["--mem", "0"], "greater than 0");
    assert_bad(&["--mem", "4097"], "multiple of 4 KiB");
    assert_bad(&["--mem", "12Q"], "unknown suffix");
    assert_bad(&["--mem", "lots"], "invalid size");
    assert_bad(&["--mem", "4096T"], "maximum");
    assert_bad(&["--mem", "99999999999999999999"], "too large");
    assert_bad(&["--bogus"], "--bogus");
    assert_bad(&["--scenario", "nope"], "unknown scenario");
    assert_bad(&["--timeout", "-1"], "--timeout");
    assert_bad(&["--kernel", "/nonexistent/kernel"], "/nonexistent/kernel");
    assert_bad(&["--kernel", &s(&text)], "ELF");
    assert_bad(&["--kernel", &s(&truncated)], "ELF");
    assert_bad(&["--kernel", &s(&arm_path)], "not x86_64");
    assert_bad(&["--mem", "2M"], "too small");
}

#[test]
fn main_job_json_has_the_documented_keys() {
    if !common::kvm_or_skip("main_job_json_has_the_documented_keys") {
        return;
    }
    let out = memvisor(&["run", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    for key in [
        "memslots",
        "e820",
        "zones",
        "page_tables",
        "faults",
        "exits",
        "guest_exit_code",
    ] {
        assert!(v.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(v["guest_exit_code"], 0);
    let slot = &v["memslots"][0];
    for k in ["slot", "gpa", "size", "flags"] {
        assert!(slot.get(k).is_some(), "memslot lacks {k}");
    }
    let e = &v["e820"][0];
    assert_eq!(e["type"], "ram");
    for k in ["start", "size"] {
        assert!(e.get(k).is_some(), "e820 lacks {k}");
    }
    for k in ["name", "start", "end", "present_frames", "free_frames"] {
        assert!(v["zones"][0].get(k).is_some(), "zone lacks {k}");
    }
    let f = &v["faults"][0];
    for k in ["vector", "error_code", "cr2", "rip", "resolved"] {
        assert!(f.get(k).is_some(), "fault lacks {k}");
    }
    assert!(v["exits"]["doorbell"].as_u64().unwrap_or(0) > 0);
    // Issue 14: addresses are lossless hex strings, the same everywhere (a JSON number above
    // 2^53 reads back rounded in jq and JavaScript).
    let hex = |x: &serde_json::Value| -> u64 {
        let s = x
            .as_str()
            .unwrap_or_else(|| panic!("{x} is not a hex string"));
        let digits = s
            .strip_prefix("0x")
            .unwrap_or_else(|| panic!("{s} lacks 0x"));
        u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let faults = v["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 10);
    for f in faults {
        let rip = hex(&f["rip"]);
        // Kernel text, above 2^53: where a JSON number would lose bits.
        assert!(rip >= memvisor::layout::KERNEL_VIRT_OFFSET, "{f}");
        assert_eq!(f["rip"], format!("{rip:#x}"));
        hex(&f["cr2"]);
        hex(&f["error_code"]);
    }
    assert_eq!(hex(&v["memslots"][0]["gpa"]), 0);
    assert_eq!(hex(&v["zones"][0]["end"]), 16 << 20);
    hex(&v["page_tables"]["cr3"]);
}

#[test]
fn help_lists_every_scenario_with_its_description() {
    // Issue 14: README said `memvisor --help` lists the scenarios; it did not.
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["scenarios"],
        &["run", "--scenario", "help"],
    ] {
        let out = memvisor(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for s in memvisor_cli::registry::listed() {
            let (name, what) = (s.name, s.description);
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(name) && l.contains(what)),
                "{args:?}: no line for {name}:\n{text}"
            );
        }
    }
}

#[test]
fn text_report_is_readable() {
    if !common::kvm_or_skip("text_report_is_readable") {
        return;
    }
    let out = memvisor(&[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for section in [
        "-- memslots",
        "-- e820",
        "-- zones",
        "-- buddyinfo",
        "-- page tables",
        "-- fault log",
        "-- exits by reason",
        "-- timings",
    ] {
        assert!(text.contains(section), "missing {section} in\n{text}");
    }
    assert!(text.contains("outcome: guest exited with code 0"));
}
