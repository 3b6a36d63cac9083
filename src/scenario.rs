//! Guest scenarios selectable with `--scenario NAME`.

use memvisor_abi::scenario;

/// Known scenarios: (name, ABI number, description).
pub const SCENARIOS: &[(&str, u32, &str)] = &[
    (
        "demo",
        scenario::DEMO,
        "the main job: mmap populated and lazy memory, demand faults, a protection fault recovered, translate, munmap",
    ),
    ("bench", scenario::BENCH, "in-guest measurements used by `memvisor bench`"),
    ("hostile", scenario::HOSTILE, "a hostile guest: 10^6 random and crafted hypercalls; invariants checked"),
    ("fault-matrix", scenario::FAULT_MATRIX, "the #PF permission matrix: P/RW/US/NX at every level x r/w/x x CPL 0/3 x WP x NXE, checked against the SDM (--cases-out FILE)"),
    ("stage2", scenario::STAGE2, "stage-2 faults: unbacked GPAs, read-only and lazy memslots, slot removal, dirty log"),
    ("seed-page-family", scenario::SEED_PAGE_FAMILY, "page families: the seed's test_application (emp_t, student_t) with its memory and block usage reports after each step"),
    ("seed-mems", scenario::SEED_MEMS, "MeMS: the classic example (ten 1000-byte arrays, stats, mems_get checked against the host, free, reuse, mems_finish)"),
    ("heap-stress", scenario::HEAP_STRESS, "10^6 random operations on each heap (10^5 with --quick), checked with patterns and audits"),
    ("heap-debug", scenario::HEAP_DEBUG, "guard-page heap debugging: an overflow and a use after free caught by the MMU and reported (add --heap-debug guard for the global allocator)"),
    ("boot", scenario::BOOT, "exit 0 as soon as the kernel is up (boot-time measurement)"),
    ("runaway", scenario::RUNAWAY, "spin forever; --timeout stops the vCPU"),
    ("guest-panic", scenario::GUEST_PANIC, "the guest panics; the VMM reports the message and fails"),
    ("triple-fault", scenario::TRIPLE_FAULT, "empty IDT + exception: KVM_EXIT_SHUTDOWN"),
    ("double-fault", scenario::DOUBLE_FAULT, "stack overflow into the guard page: #DF on its IST stack"),
];

/// Look up a scenario number by name.
pub fn by_name(name: &str) -> Option<u32> {
    SCENARIOS.iter().find(|s| s.0 == name).map(|s| s.1)
}

/// Names, comma-separated (for error messages).
pub fn names() -> String {
    SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
}

/// The scenarios with their descriptions, one per line (`memvisor --help`, `memvisor
/// scenarios`).
pub fn help_text() -> String {
    let width = SCENARIOS.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let mut o = String::from("Scenarios (--scenario NAME):\n");
    for (name, _, what) in SCENARIOS {
        o += &format!("  {name:<width$}  {what}\n");
    }
    o
}
