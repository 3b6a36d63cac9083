//! `memvisor snapshot-info`: a valid base and incremental layer are described (exit 0); a
//! truncated, corrupt, wrong-version, wrong-size, other-kernel or wrongly layered snapshot is
//! refused with exit 2 and one line naming the file and the defect. `memvisor bench --only
//! snapshot_restore_` measures the restore rows alone.

mod common;

use common::memvisor_cli as memvisor;
use memvisor::snapshot::{write, Identity};
use memvisor::uffd::PAGE;
use std::path::Path;

fn assert_bad(args: &[&str], needle: &str) {
    common::assert_bad_input(args, needle);
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn snapshot_info_accepts_good_and_refuses_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want = Identity::of(256 << 20, memvisor::guest_image::GUEST_ELF);
    let (a, b) = ([1u8; PAGE as usize], [2u8; PAGE as usize]);
    let base = dir.path().join("base.snap");
    let base_id = write(&base, want, None, b"state", &[(0x1000, &a), (0x3000, &b)]).expect("base");
    let inc = dir.path().join("inc.snap");
    write(&inc, want, Some(base_id), b"state", &[(0x3000, &a)]).expect("inc");

    let out = memvisor(&["snapshot-info", s(&base), s(&inc)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(full), 2 pages"), "{text}");
    assert!(text.contains("incremental on"), "{text}");

    let good = std::fs::read(&base).expect("read");
    let bad = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let cut = bad("cut.snap", &good[..good.len() - 100]);
    assert_bad(&["snapshot-info", s(&cut)], "truncated");
    let mut x = good.clone();
    x[30] ^= 0x10;
    assert_bad(
        &["snapshot-info", s(&bad("hdr.snap", &x))],
        "corrupt header",
    );
    let mut x = good.clone();
    x[8] = 9;
    assert_bad(
        &["snapshot-info", s(&bad("ver.snap", &x))],
        "format version 9",
    );
    // Version 1 (zone bitmaps as CBOR integers) is no longer read.
    let mut x = good.clone();
    x[8] = 1;
    assert_bad(
        &["snapshot-info", s(&bad("v1.snap", &x))],
        "format version 1",
    );
    assert_bad(
        &["snapshot-info", "--mem", "512M", s(&base)],
        "taken with 268435456 bytes of guest RAM, this VM has 536870912",
    );
    let other = bad("other.elf", b"not the guest kernel");
    assert_bad(
        &["snapshot-info", "--kernel", s(&other), s(&base)],
        "another guest kernel",
    );
    assert_bad(&["snapshot-info", s(&inc)], "layered on snapshot");
    assert_bad(
        &["snapshot-info", s(&base), s(&base)],
        "layered on snapshot",
    );
    assert_bad(
        &["snapshot-info", s(&bad("junk.snap", b"hello world"))],
        "not a memvisor snapshot",
    );
    assert_bad(
        &["snapshot-info", s(&dir.path().join("missing.snap"))],
        "missing.snap",
    );
}

#[test]
fn bench_only_measures_the_restore_rows() {
    if !common::uffd_or_skip("bench_only_measures_the_restore_rows") {
        return;
    }
    let out = memvisor(&["bench", "--quick", "--json", "--only", "snapshot_restore_"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let rows = v["figures"].as_array().expect("figures");
    let names: Vec<&str> = rows.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "snapshot_restore_to_first_guest_exit_256MiB",
            "snapshot_restore_to_first_guest_exit_4GiB"
        ]
    );
    for f in rows {
        let (a, b) = (f["value"].as_f64(), f["peer_value"].as_f64());
        assert!(
            a.is_some_and(|x| x > 0.0) && b.is_some_and(|x| x > 0.0),
            "{f}"
        );
    }
    assert_bad(&["bench", "--only", "x", "--update-md"], "--update-md");
}
