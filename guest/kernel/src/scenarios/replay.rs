//! Trace replay (`memvisor replay`; `crate::heap::replay`), in ring 3: the host maps the
//! trace blob and names it in `BootInfo::arg`.

/// One line for `memvisor scenarios`.
pub const DESCRIPTION: &str =
    "replay the allocation traces the host mapped (run by `memvisor replay`)";

/// Kernel entry.
pub fn run() -> u32 {
    crate::user::run(crate::heap::replay::run_user, 0) as u32
}
