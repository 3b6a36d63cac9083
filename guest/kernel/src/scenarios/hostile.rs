//! A hostile guest (`crate::hostile`): random and crafted hypercalls, in ring 3.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str =
    "a hostile guest: 10^6 random and crafted hypercalls; invariants checked";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::hostile::run_user, 0) as u32
}
