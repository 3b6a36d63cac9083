//! A heap scenario (`crate::heap::scenarios`), in ring 3.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str =
    "10^6 random operations on each heap (10^5 with --quick), checked with patterns and audits";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::heap::scenarios::heap_stress, 0) as u32
}
