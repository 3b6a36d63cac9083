//! A heap scenario (`crate::heap::scenarios`), in ring 3.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "MeMS: the classic example (ten 1000-byte arrays, stats, mems_get checked against the host, free, reuse, mems_finish)";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::heap::scenarios::seed_mems, 0) as u32
}
