//! `memvisor snapshot` and `memvisor restore` (called from `main.rs`).
//!
//! `snapshot --scenario NAME --at-sync N --out FILE` runs a built-in scenario to its Nth
//! ucall sync point (`sync!` in the guest; `demo` and `seed-page-family` have two), writes a
//! full snapshot there and **stops** (exit 0, one line per file written); with
//! `--incremental-at-sync M --incremental-out FILE2` it runs on to sync point M (> N) and
//! writes the pages dirtied since FILE as an incremental layer; with `--continue` it then runs
//! the guest to its end and prints the report as `run` does (exit code as `run`).
//!
//! `restore FILE [--base BASE]` continues the guest of FILE (an incremental layer on BASE
//! when given) in this new process, memory served lazily from the files through
//! userfaultfd, and prints the same report as an uninterrupted run, with a `restore` section
//! (pages read from the files). Bad files exit 2 with one line before the guest runs.

use crate::report_text::ReportText as _;
use memvisor::hypercall::ConsoleEcho;
use memvisor::report::Report;
use memvisor::snapshot::SnapshotError;
use memvisor::vm::{Exit, RestoreOptions, SnapError, Ucall, Vm};
use memvisor::vmm::VmConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `memvisor snapshot`.
#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// Built-in scenario to run (one with sync points: demo, seed-page-family).
    #[arg(long, default_value = "demo")]
    pub scenario: String,
    /// Take the full snapshot at this sync point (1 = the first).
    #[arg(long, value_name = "N")]
    pub at_sync: u32,
    /// The snapshot file (written to a temporary file and renamed).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also take an incremental snapshot (pages dirtied since FILE) at this later sync point.
    #[arg(long, value_name = "M", requires = "incremental_out")]
    pub incremental_at_sync: Option<u32>,
    /// The incremental snapshot file.
    #[arg(long, value_name = "FILE2", requires = "incremental_at_sync")]
    pub incremental_out: Option<PathBuf>,
    /// After the snapshot(s), run the guest to its end and print the report (default: stop).
    #[arg(long = "continue")]
    pub cont: bool,
    /// Guest RAM (K/M/G/T suffixes).
    #[arg(long, default_value = "256M")]
    pub mem: String,
    /// Guest kernel ELF (default: the embedded guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Quick mode of benchmark-like scenarios.
    #[arg(long)]
    pub quick: bool,
    /// Wall-clock limit for the guest in seconds (default 30).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Print the report (with `--continue`) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `memvisor restore`.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The snapshot to continue from (an incremental layer when `--base` is given).
    pub file: PathBuf,
    /// The full snapshot FILE is layered on.
    #[arg(long, value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// Guest RAM the snapshot must have been taken with (default: the file's).
    #[arg(long)]
    pub mem: Option<String>,
    /// Guest kernel ELF the snapshot must have been taken with (default: the embedded guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Wall-clock limit for the rest of the run in seconds (default 30).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Print the report as JSON (guest console on stderr).
    #[arg(long)]
    pub json: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("memvisor: {msg}");
    ExitCode::from(2)
}

fn kernel(path: &Option<PathBuf>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let Some(p) = path else {
        return Ok(memvisor::guest_image::GUEST_ELF.to_vec());
    };
    let mut v = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| {
            f.take(memvisor::boot::loader::MAX_KERNEL_FILE + 1)
                .read_to_end(&mut v)
        })
        .map_err(|e| format!("--kernel {}: {e}", p.display()))?;
    Ok(v)
}

fn mem(s: &str) -> Result<u64, String> {
    match memvisor::memory::parse_size(s) {
        Ok(b) if b == 0 || b % 4096 != 0 || b > memvisor::layout::MAX_MEM_SIZE => Err(format!(
            "--mem {s}: must be a non-zero multiple of 4 KiB up to {} GiB",
            memvisor::layout::MAX_MEM_SIZE >> 30
        )),
        Ok(b) => Ok(b),
        Err(e) => Err(format!("--mem: {e}")),
    }
}

fn timeout(t: Option<f64>) -> Result<Duration, String> {
    let t = t.unwrap_or(30.0 * memvisor::backend::time_scale());
    if !(t.is_finite() && t > 0.0 && t <= 86_400.0) {
        return Err("--timeout must be a number of seconds in (0, 86400]".into());
    }
    Ok(Duration::from_secs_f64(t))
}

/// Run the VM to its end (sync points and MMIO exits resume at once) and print its report
/// as `memvisor run` does; the exit code is `run`'s.
fn finish(mut vm: Vm, json: bool) -> ExitCode {
    loop {
        match vm.run() {
            Ok(e) if e.resumable() => continue,
            Ok(_) => break,
            Err(e) => return fail(e),
        }
    }
    let report: Report = vm.report();
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(format!("cannot encode the report: {e}")),
        }
    } else {
        print!("{}", report.to_text());
        if let Some(r) = &report.restore {
            println!(
                "restore: {} of the {} pages in {} snapshot layer(s) read (on first touch, through userfaultfd); ready to run after {} us",
                r.pages_read, r.file_pages, r.layers, r.restore_us
            );
        }
    }
    if report.success() {
        ExitCode::SUCCESS
    } else {
        if !json {
            eprintln!(
                "memvisor: guest failed: {}",
                report.message.clone().unwrap_or_else(|| format!(
                    "exit code {}",
                    report.guest_exit_code.unwrap_or(1)
                ))
            );
        }
        ExitCode::from(1)
    }
}

/// `memvisor snapshot`.
pub fn snapshot_cmd(a: SnapshotArgs) -> ExitCode {
    let setup = || -> Result<(VmConfig, Box<dyn memvisor::scenario::Scenario>), String> {
        let entry = crate::registry::by_name(&a.scenario).ok_or_else(|| {
            format!(
                "unknown scenario '{}' (known: {})",
                a.scenario,
                crate::registry::names()
            )
        })?;
        if a.at_sync == 0 {
            return Err("--at-sync counts from 1".into());
        }
        if a.incremental_at_sync.is_some_and(|m| m <= a.at_sync) {
            return Err("--incremental-at-sync must come after --at-sync".into());
        }
        let hooks = entry.hooks();
        let cfg = VmConfig {
            mem_bytes: mem(&a.mem)?,
            kernel: kernel(&a.kernel)?,
            scenario: entry.name.into(),
            flags: if a.quick {
                memvisor_abi::flags::QUICK
            } else {
                0
            },
            timeout: timeout(a.timeout)?,
            echo_console: echo(a.json),
            check_invariants: hooks.check_invariants(),
            ..VmConfig::default()
        };
        Ok((cfg, hooks))
    };
    let (cfg, hooks) = match setup() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut vm = match Vm::create(&cfg, hooks, None) {
        Ok(vm) => vm,
        Err(e) => return fail(e),
    };
    vm.set_stepwise(true);
    let mut plan = vec![(a.at_sync, &a.out, false)];
    if let (Some(m), Some(out)) = (a.incremental_at_sync, &a.incremental_out) {
        plan.push((m, out, true));
    }
    let mut seen = 0u32;
    for (at, out, incremental) in plan {
        while seen < at {
            match vm.run() {
                Ok(Exit::Ucall(Ucall::Sync(_))) => seen += 1,
                Ok(e) if e.resumable() => {}
                Ok(e) => {
                    return fail(format!(
                    "scenario {} ended ({e:?}) after {seen} sync point(s), before sync point {at}",
                    a.scenario
                ))
                }
                Err(e) => return fail(e),
            }
        }
        let r = if incremental {
            vm.snapshot_incremental(out)
        } else {
            vm.snapshot(out)
        };
        match r {
            Ok(info) => eprintln!(
                "snapshot: {} at sync point {at}: {} pages, {} state bytes, id {:#x}{}, {} us",
                out.display(),
                info.pages,
                info.state_bytes,
                info.id,
                info.base_id
                    .map(|b| format!(", incremental on {b:#x}"))
                    .unwrap_or_default(),
                info.elapsed.as_micros()
            ),
            Err(e) => return fail(e),
        }
    }
    if a.cont {
        vm.set_stepwise(false);
        finish(vm, a.json)
    } else {
        ExitCode::SUCCESS
    }
}

/// Live console output; on stderr when stdout carries the JSON report.
fn echo(json: bool) -> ConsoleEcho {
    if json {
        ConsoleEcho::Stderr
    } else {
        ConsoleEcho::Stdout
    }
}

/// `memvisor restore`.
pub fn restore_cmd(a: RestoreArgs) -> ExitCode {
    let opts = || -> Result<RestoreOptions, String> {
        Ok(RestoreOptions {
            mem_bytes: a.mem.as_deref().map(mem).transpose()?,
            timeout: timeout(a.timeout)?,
            echo_console: echo(a.json),
            hooks: crate::registry::hooks_for,
            verify_pages: true,
            ..RestoreOptions::default()
        })
    };
    let (opts, kernel) = match (opts(), kernel(&a.kernel)) {
        (Ok(o), Ok(k)) => (o, k),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    match Vm::restore(&a.file, a.base.as_deref(), kernel, opts) {
        Ok(mut vm) => {
            // The guest's output up to the sync point, as the uninterrupted run printed it.
            echo(a.json).write(vm.console());
            vm.set_stepwise(false);
            finish(vm, a.json)
        }
        Err(SnapError::File(SnapshotError::Io { path, source })) => {
            fail(format!("snapshot {}: {source}", path.display()))
        }
        Err(e) => fail(e),
    }
}
