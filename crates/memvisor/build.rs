//! Builds the guest kernel (`guest/kernel` at the workspace root, its own workspace) for
//! `x86_64-unknown-none` and embeds the ELF (`src/guest_image.rs`): own target dir under OUT_DIR
//! (no lock shared with this build), an environment stripped of the outer build's CARGO*/RUST*
//! variables, and the target installed with rustup when it is missing.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

include!("src/sanitize_env.rs");

fn target_installed() -> bool {
    let out = sanitized(&mut Command::new("rustc"))
        .args(["--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let root = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&root).join("lib/rustlib").join(TARGET).exists()
        }
        _ => false,
    }
}

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // This package is `crates/memvisor`; the guest crates live at the workspace root.
    let root = manifest.join("../..");
    let guest = root.join("guest/kernel");
    for p in [
        "guest/kernel/src",
        "guest/kernel/Cargo.toml",
        "guest/kernel/Cargo.lock",
        "guest/kernel/link.ld",
        "guest/kernel/.cargo/config.toml",
        "guest/sdk/src",
        "guest/sdk/Cargo.toml",
        "guest/abi/src",
        "guest/abi/Cargo.toml",
        "guest/heaps/src",
        "guest/heaps/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed=../../{p}");
    }

    if !target_installed() {
        println!("cargo:warning=installing the {TARGET} target with rustup (needed to build the guest kernel)");
        let st = sanitized(&mut Command::new("rustup"))
            .args(["target", "add", TARGET])
            .status();
        match st {
            Ok(s) if s.success() => {}
            other => panic!(
                "the {TARGET} target is missing and `rustup target add {TARGET}` failed ({other:?}); install it by hand"
            ),
        }
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("guest-target");
    let status = sanitized(&mut Command::new(cargo))
        .current_dir(&guest)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .status()
        .expect("failed to run cargo for the guest kernel");
    assert!(
        status.success(),
        "building the guest kernel failed (see the output above)"
    );
    let elf = target_dir.join(TARGET).join("release/memvisor-guest");
    std::fs::copy(&elf, out.join("memvisor-guest.elf")).expect("copy the guest ELF");
}
