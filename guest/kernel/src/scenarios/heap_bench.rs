//! In-guest heap figures for `memvisor bench` (`crate::heap::bench`), in ring 3.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str = "in-guest heap figures and trace replays for `memvisor bench`";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::heap::bench::run_user, 0) as u32
}
