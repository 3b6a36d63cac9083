//! Guest scenarios selectable with `--scenario NAME`.

use memvisor_abi::scenario;

/// Known scenarios: (name, ABI number, description).
pub const SCENARIOS: &[(&str, u32, &str)] = &[(
    "demo",
    scenario::DEMO,
    "the main job: mmap populated and lazy memory, demand faults, a protection fault recovered, translate, munmap",
)];

/// Look up a scenario number by name.
pub fn by_name(name: &str) -> Option<u32> {
    SCENARIOS.iter().find(|s| s.0 == name).map(|s| s.1)
}

/// Names, comma-separated (for error messages).
pub fn names() -> String {
    SCENARIOS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
}
