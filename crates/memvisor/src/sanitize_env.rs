// Shared by `build.rs` (through `include!`) and `guest_build.rs`: one definition of which of
// the outer cargo's variables an inner cargo must not see.

/// Remove the outer build's variables (cargo sets them for build scripts and tests; they
/// would point the inner cargo at the outer target, profile and flags).
pub fn sanitized(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let keep = k == "CARGO_HOME" || k == "CARGO_NET_OFFLINE" || k == "CARGO_HTTP_TIMEOUT";
        let strip = (k.starts_with("CARGO") && !keep)
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTDOC")
            || k == "RUSTFLAGS"
            || k.starts_with("__CARGO")
            || matches!(
                k,
                "DEBUG" | "OPT_LEVEL" | "PROFILE" | "TARGET" | "HOST" | "NUM_JOBS" | "OUT_DIR"
            );
        if strip {
            cmd.env_remove(k);
        }
    }
    cmd
}
