//! Build a guest program written on the guest SDK (`memvisor-guest-sdk`) for
//! `x86_64-unknown-none`, from a test or a user's own crate, with no extra command: the same
//! recipe as `build.rs` uses for the embedded kernel (its own target directory, an
//! environment stripped of the outer cargo's `CARGO*` / `RUST*` variables) plus the SDK's
//! linker script and `--cfg memvisor_guest`, so one source file can hold a test's guest code
//! (under `#[cfg(memvisor_guest)]`) and its host assertions (under `#[cfg(not(...))]`).
//!
//! ```no_run
//! let elf = memvisor::guest_build::build(
//!     std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/guests/Cargo.toml")),
//!     "ro_write",
//!     std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-guests")),
//! )?;
//! let vm = memvisor::Vm::new(elf, memvisor::VmOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// The guest target.
pub const TARGET: &str = "x86_64-unknown-none";

/// Errors of [`build`].
#[derive(Debug, Error)]
pub enum GuestBuildError {
    /// cargo could not be started.
    #[error("cannot run cargo for the guest {bin}: {source}")]
    Spawn {
        /// The binary asked for.
        bin: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// cargo failed (its output names the compile error).
    #[error("building the guest {bin} failed ({status}):\n{stderr}")]
    Failed {
        /// The binary asked for.
        bin: String,
        /// cargo's exit status.
        status: std::process::ExitStatus,
        /// cargo's stderr.
        stderr: String,
    },
    /// The ELF cannot be read after the build.
    #[error("reading the guest ELF {path}: {source}")]
    Read {
        /// Where it should be.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
}

include!("sanitize_env.rs");

/// The SDK's linker script (`guest/sdk/link.ld`: GVA = GPA + `KERNEL_VIRT_OFFSET`, one
/// `PT_LOAD` per permission class).
pub fn sdk_linker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/sdk/link.ld")
}

/// Build binary `bin` of the guest package at `manifest` (release, for [`TARGET`], in
/// `target_dir`) and return its ELF. Cargo's own lock serialises concurrent callers; an
/// up-to-date binary costs one cargo no-op (~0.2 s).
///
/// # Errors
/// [`GuestBuildError`], with cargo's output for a compile error.
pub fn build(manifest: &Path, bin: &str, target_dir: &Path) -> Result<Vec<u8>, GuestBuildError> {
    let flags = [
        format!("-Clink-arg=-T{}", sdk_linker_script().display()),
        "-Crelocation-model=static".into(),
        "-Ccode-model=kernel".into(),
        "--cfg=memvisor_guest".into(),
    ]
    .join("\u{1f}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = sanitized(&mut Command::new(cargo))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            TARGET,
            "--bin",
            bin,
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .output()
        .map_err(|source| GuestBuildError::Spawn {
            bin: bin.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(GuestBuildError::Failed {
            bin: bin.into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let path = target_dir.join(TARGET).join("release").join(bin);
    std::fs::read(&path).map_err(|source| GuestBuildError::Read { path, source })
}
