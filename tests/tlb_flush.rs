//! TLB / shadow-flush correctness on whatever KVM backend runs the test (PVM here; VMX+EPT and
//! SVM+NPT through `scripts/hostvm.sh`): after the host reduces a mapping the guest had used,
//! the next access must fault. The demo guest writes a populated region, has the host make one
//! of its pages read-only (`mprotect`) and writes it again, and reads the region after `munmap`;
//! it exits non-zero if either access succeeds. With shadow paging the VMM must flush KVM's
//! shadow pages for that (the flush slot); with EPT / NPT it must not flush at all.

mod common;

use memvisor::backend::Backend;
use memvisor_cli::report_text::ReportText as _;

#[test]
fn reduced_mappings_fault_and_flushes_follow_the_backend() {
    if !common::kvm_or_skip("reduced_mappings_fault_and_flushes_follow_the_backend") {
        return;
    }
    let r = common::run(&common::config("demo", 256 << 20));
    assert_eq!(r.guest_exit_code, Some(0), "{}", r.to_text());
    let host = r.backend.expect("the report names the backend");
    assert_eq!(host.name, Backend::detect());
    // protect, then write: a protection fault (P | W | U) on a page written before.
    assert!(
        r.faults
            .iter()
            .any(|f| f.vector == 14 && f.error_code == 0x7 && f.kind == "reported"),
        "no write fault after mprotect:\n{}",
        r.to_text()
    );
    // unmap, then read: a not-present fault (U) at the region's first page.
    assert!(
        r.faults
            .iter()
            .any(|f| f.vector == 14 && f.error_code == 0x4 && f.kind == "reported"),
        "no fault after munmap:\n{}",
        r.to_text()
    );
    if host.shadow_paging {
        assert!(r.shadow_flushes >= 2, "{} shadow flushes", r.shadow_flushes);
    } else {
        assert_eq!(
            r.shadow_flushes, 0,
            "{} shadow flushes on {:?}",
            r.shadow_flushes, host
        );
        assert!(r
            .memslots
            .iter()
            .all(|m| m.gpa != memvisor::backend::FLUSH_SLOT_GPA));
    }
    let json = serde_json::to_value(&r).expect("json");
    assert_eq!(json["backend"]["name"], host.name.name());
    assert_eq!(json["backend"]["maxphyaddr"], u64::from(host.maxphyaddr));
}
