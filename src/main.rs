//! `memvisor`: boot the guest kernel under KVM on host-managed memory and print a report.
//!
//! Exit codes: 0 the guest exited 0; 1 the guest failed (non-zero exit, panic, triple fault,
//! timeout); 2 bad input or the VMM could not start (one line on stderr).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use memvisor::frames::ZonePreset;
use memvisor::hypercall::ConsoleEcho;
use memvisor::memory::parse_size;
use memvisor::report::Report;
use memvisor::vmm::{self, VmConfig};
use memvisor::{guest_image, layout};
use memvisor_cli::registry;
use memvisor_cli::registry::fault_matrix;
use memvisor_cli::report_text::ReportText as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "memvisor",
    version,
    about = "A hypervisor-style guest physical memory manager on KVM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Boot the guest and run a scenario (the default command).
    Run(RunArgs),
    /// Measure: a table of figures, each beside a peer measured in the same run.
    Bench(BenchArgs),
    /// Replay allocation traces inside the guest on one or more heaps (format:
    /// tests/data/traces/README.md); several traces or heaps make one interleaved table.
    Replay(ReplayArgs),
    /// List the scenarios `--scenario NAME` accepts, with their one-line descriptions.
    Scenarios,
    /// Validate a snapshot file and its incremental layers (in order) for a VM of `--mem`
    /// running `--kernel` (default: the embedded guest), without running anything: exit 0 and
    /// one line per file, or exit 2 and one line naming the file and the defect.
    SnapshotInfo(SnapshotInfoArgs),
    /// Run a built-in scenario to its Nth ucall sync point and save a snapshot there (and
    /// optionally an incremental one at a later sync point); stops unless --continue.
    Snapshot(memvisor_cli::snapshot_cli::SnapshotArgs),
    /// Continue a snapshot's guest in this process (memory served lazily from the file
    /// through userfaultfd) and print the report of the whole run.
    Restore(memvisor_cli::snapshot_cli::RestoreArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct SnapshotInfoArgs {
    /// The base snapshot, then its incremental layers in order.
    #[arg(required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Guest RAM of the VM the snapshot must fit (K/M/G/T suffixes).
    #[arg(long, default_value = "256M")]
    mem: String,
    /// The guest kernel ELF the snapshot must have been taken with (default: embedded).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct ReplayArgs {
    /// The trace files (one or more).
    #[arg(required = true, num_args = 1..)]
    traces: Vec<PathBuf>,
    /// Heap, or a comma-separated list (memvisor,talc,rlsf): page-family, mems, memvisor,
    /// talc, linked-list, buddy, rlsf, dlmalloc.
    #[arg(long, default_value = "memvisor")]
    heap: String,
    /// Timed passes per trace and heap when several traces or heaps run (the median counts).
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// Guest RAM (K/M/G/T suffixes).
    #[arg(long, default_value = "512M")]
    mem: String,
    /// Wall-clock limit for the guest in seconds (default 120 per trace and heap).
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(clap::Args, Debug, Clone)]
struct BenchArgs {
    /// Print the figures as JSON (one entry per figure: name, value, unit, peer, peer_value,
    /// ratio).
    #[arg(long)]
    json: bool,
    /// Few iterations (for tests; figures are noisy).
    #[arg(long)]
    quick: bool,
    /// Write the table with today's date into BENCHMARKS.md (section "memvisor bench").
    #[arg(long, conflicts_with = "only")]
    update_md: bool,
    /// Only the rows whose name starts with PREFIX (and only the measurements they need),
    /// e.g. `snapshot_restore_`.
    #[arg(long, value_name = "PREFIX")]
    only: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Guest RAM, e.g. 256M, 4G, 64G (K/M/G/T suffixes; a multiple of 4 KiB).
    #[arg(long, default_value = "256M")]
    mem: String,
    /// Guest kernel ELF (default: the embedded memvisor guest).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Scenario to run in the guest (listed below and by `memvisor scenarios`).
    #[arg(long, default_value = "demo")]
    scenario: String,
    /// Wall-clock limit for the guest in seconds [default: 30; 300 for fault-matrix; times
    /// MEMVISOR_TIME_SCALE or 10 inside QEMU / Bochs].
    #[arg(long, allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Zone layout: x86-64 (DMA/DMA32/Normal, as Linux) or legacy (DMA/Normal/HighMem).
    #[arg(long, value_enum, default_value_t = Zones::X86_64)]
    zones: Zones,
    /// Print the report as one JSON object on stdout (guest console goes to stderr).
    #[arg(long)]
    json: bool,
    /// Quick mode: fewer iterations in benchmark-like scenarios.
    #[arg(long)]
    quick: bool,
    /// Heap debugging: `guard` puts every allocation of the guest's global allocator on its
    /// own pages, its end at an unmapped guard page (overflows and uses after free fault).
    #[arg(long, value_name = "MODE", value_parser = ["guard"])]
    heap_debug: Option<String>,
    /// fault-matrix only: write every case to FILE, one tab-separated line per case after a
    /// header line (written to a temporary file and renamed: never a partial file).
    #[arg(long, value_name = "FILE")]
    cases_out: Option<PathBuf>,
    /// fault-matrix only: count the cases that differ from the SDM oracle exactly as this
    /// known emulator deviation as "deviation" instead of "fail" (qemu-tcg-rsvd-p,
    /// qemu-tcg-1g-a, qemu-tcg-implicit-ac, bochs-implicit-ac; repeatable).
    #[arg(long, value_name = "NAME")]
    known_deviation: Vec<String>,
    /// Back guest RAM with userfaultfd: every first touch of a frame is served by a VMM
    /// handler thread (counted and timed in the report's `uffd` section).
    #[arg(long)]
    uffd: bool,
    /// How guest RAM is backed: `anon` (private anonymous memory) or `shm` (a memfd mapped
    /// shared, with an unregistered alias mapping; with --uffd registered MISSING|MINOR, minor
    /// faults served by UFFDIO_CONTINUE).
    #[arg(long, value_enum, default_value = "anon")]
    ram_backing: RamBackingArg,
    /// Register only this GPA range with userfaultfd (START..END, end exclusive, decimal or
    /// 0x hex, 4 KiB aligned, inside one RAM range; repeatable; implies --uffd); the rest of
    /// RAM is backed normally.
    #[arg(long, value_name = "START..END")]
    uffd_range: Vec<String>,
    /// With --ram-backing shm: put zeroed pages of this GPA range into the memfd's page cache
    /// through the alias before the guest runs, so their first touch is a minor fault
    /// (START..END as --uffd-range; repeatable).
    #[arg(long, value_name = "START..END")]
    uffd_prefill: Vec<String>,
    /// With --ram-backing shm and --uffd: a background prefault cursor fills the registered
    /// memory's page cache in 2 MiB steps while the guest runs (commits that host memory).
    #[arg(long)]
    uffd_prefault: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum RamBackingArg {
    Anon,
    Shm,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Zones {
    #[value(name = "x86-64")]
    X86_64,
    Legacy,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("memvisor: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let scenarios = registry::help_text();
    let cmd = Cli::command()
        .after_help(scenarios.clone())
        .mut_subcommand("run", |c| c.after_help(scenarios));
    let cli = match cmd
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            return fail(line.trim_start_matches("error: "));
        }
    };
    let args = match cli.cmd {
        Some(Cmd::Run(a)) => a,
        Some(Cmd::Bench(b)) => return bench(b),
        Some(Cmd::Replay(r)) => return replay(r),
        Some(Cmd::SnapshotInfo(s)) => return snapshot_info(s),
        Some(Cmd::Snapshot(s)) => return memvisor_cli::snapshot_cli::snapshot_cmd(s),
        Some(Cmd::Restore(r)) => return memvisor_cli::snapshot_cli::restore_cmd(r),
        Some(Cmd::Scenarios) => {
            print!("{}", registry::help_text());
            return ExitCode::SUCCESS;
        }
        None => cli.run,
    };
    run(args)
}

/// `memvisor snapshot-info`: exit 0 if every file is a valid layer for this VM, else 2.
fn snapshot_info(a: SnapshotInfoArgs) -> ExitCode {
    let mem_bytes = match parse_size(&a.mem) {
        Ok(b) => b,
        Err(e) => return fail(format!("--mem: {e}")),
    };
    let kernel = match &a.kernel {
        Some(p) => match std::fs::read(p) {
            Ok(k) => k,
            Err(e) => return fail(format!("--kernel {}: {e}", p.display())),
        },
        None => guest_image::GUEST_ELF.to_vec(),
    };
    let want = memvisor::snapshot::Identity::of(mem_bytes, &kernel);
    match memvisor::snapshot::describe(&a.files, want) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `memvisor replay`: exit 0 if every event replayed without error, 1 if the guest failed or
/// reported errors, 2 for a bad trace or arguments (one line on stderr).
fn replay(a: ReplayArgs) -> ExitCode {
    use memvisor_cli::replay as rp;
    let heaps = match memvisor_cli::replay_many::heap_list(&a.heap) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let mem_bytes = match parse_size(&a.mem) {
        Ok(b) if b >= 64 << 20 && b % 4096 == 0 && b <= layout::MAX_MEM_SIZE => b,
        Ok(_) => return fail("--mem must be a multiple of 4 KiB between 64 MiB and 1 TiB"),
        Err(e) => return fail(format!("--mem: {e}")),
    };
    let pairs = (a.traces.len() * heaps.len()) as f64;
    let timeout = a.timeout.unwrap_or(120.0 * pairs);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
        return fail("--timeout must be a number of seconds in (0, 86400]");
    }
    let mut traces = Vec::new();
    for p in &a.traces {
        match rp::load(p) {
            Ok(t) => traces.push(t),
            Err(e) => return fail(e),
        }
    }
    if traces.len() > 1 || heaps.len() > 1 {
        return replay_many(&traces, &heaps, a.runs, mem_bytes, timeout, a.json);
    }
    let (trace, heap) = (&traces[0], heaps[0]);
    let heap_name = rp::HEAPS[heap];
    let report = match rp::run(trace, heap, mem_bytes, Duration::from_secs_f64(timeout)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let res = rp::ReplayResult::from_report(trace, heap_name, &report);
    if a.json {
        match serde_json::to_string_pretty(&res) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(format!("cannot encode the result: {e}")),
        }
    } else {
        print!("{}", res.text());
    }
    if res.ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "memvisor: replay failed: {}",
            res.first_error
                .clone()
                .or(report.message.clone())
                .unwrap_or_else(|| format!("{} errors, guest outcome {}", res.errors, res.outcome))
        );
        ExitCode::from(1)
    }
}

/// Several traces or heaps in one guest: one table (or a JSON array); exit 1 if any replay
/// reported an error or the guest failed.
fn replay_many(
    traces: &[memvisor_cli::replay::Trace],
    heaps: &[usize],
    runs: u32,
    mem_bytes: u64,
    timeout: f64,
    json: bool,
) -> ExitCode {
    use memvisor_cli::replay_many as many;
    let report = match many::run(
        traces,
        heaps,
        runs,
        mem_bytes,
        Duration::from_secs_f64(timeout),
    ) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let results = many::results(traces, heaps, &report);
    if json {
        match serde_json::to_string_pretty(&results) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(format!("cannot encode the result: {e}")),
        }
    } else {
        print!("{}", many::table(&results));
    }
    let bad = results.iter().filter(|r| r.errors > 0).count();
    if bad == 0 && report.guest_exit_code == Some(0) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "memvisor: replay failed: {bad} of {} replays reported errors, guest outcome {}",
            results.len(),
            report.outcome
        );
        ExitCode::from(1)
    }
}

fn bench(b: BenchArgs) -> ExitCode {
    let result = match memvisor_cli::bench::run_only(b.quick, b.only.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if b.json {
        match serde_json::to_string_pretty(&result) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(format!("cannot encode the figures: {e}")),
        }
    } else {
        print!("{}", result.table());
    }
    if b.update_md {
        if let Err(e) = result.update_md(std::path::Path::new("BENCHMARKS.md")) {
            return fail(format!("BENCHMARKS.md: {e}"));
        }
    }
    ExitCode::SUCCESS
}

fn run(a: RunArgs) -> ExitCode {
    let mem_bytes = match parse_size(&a.mem) {
        Ok(0) => return fail("--mem must be greater than 0"),
        Ok(b) if b % 4096 != 0 => {
            return fail(format!("--mem {} is not a multiple of 4 KiB", a.mem))
        }
        Ok(b) if b > layout::MAX_MEM_SIZE => {
            return fail(format!(
                "--mem {} exceeds the maximum of {} GiB",
                a.mem,
                layout::MAX_MEM_SIZE >> 30
            ))
        }
        Ok(b) => b,
        Err(e) => return fail(format!("--mem: {e}")),
    };
    if a.scenario == "help" {
        print!("{}", registry::help_text());
        return ExitCode::SUCCESS;
    }
    let Some(entry) = registry::by_name(&a.scenario) else {
        return fail(format!(
            "unknown scenario '{}' (known: {})",
            a.scenario,
            registry::names()
        ));
    };
    let hooks = entry.hooks();
    let timeout = a
        .timeout
        .unwrap_or(memvisor::backend::time_scale() * hooks.default_timeout().as_secs_f64());
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
        return fail("--timeout must be a number of seconds in (0, 86400]");
    }
    let only_for = |option: &str| {
        let users: Vec<&str> = registry::listed()
            .filter(|e| e.hooks().options().contains(&option))
            .map(|e| e.name)
            .collect();
        format!("--{option} is only for --scenario {}", users.join(" / "))
    };
    let kernel = match &a.kernel {
        Some(p) => match read_bounded(p, memvisor::boot::loader::MAX_KERNEL_FILE) {
            Ok(k) => k,
            Err(e) => return fail(format!("--kernel {}: {e}", p.display())),
        },
        None => guest_image::GUEST_ELF.to_vec(),
    };
    let mut flags = 0;
    if a.quick {
        flags |= memvisor_abi::flags::QUICK;
    }
    if a.heap_debug.is_some() {
        flags |= memvisor_abi::flags::HEAP_DEBUG_GUARD;
    }
    if let Some(path) = &a.cases_out {
        if !hooks.options().contains(&"cases-out") {
            return fail(only_for("cases-out"));
        }
        if let Err(e) = check_cases_out(path) {
            return fail(format!("--cases-out {}: {e}", path.display()));
        }
    }
    let mut deviations = Vec::new();
    for name in &a.known_deviation {
        if !hooks.options().contains(&"known-deviation") {
            return fail(only_for("known-deviation"));
        }
        match memvisor_cli::matrix::KnownDeviation::parse(name) {
            Ok(d) => deviations.push(d),
            Err(e) => return fail(format!("--known-deviation: {e}")),
        }
    }
    let mut ram = memvisor::uffd::RamOptions {
        backing: match a.ram_backing {
            RamBackingArg::Anon => memvisor::memory::RamBacking::Anonymous,
            RamBackingArg::Shm => memvisor::memory::RamBacking::Shm,
        },
        prefault_cursor: a.uffd_prefault,
        ..Default::default()
    };
    for (flag, texts, out) in [
        ("--uffd-range", &a.uffd_range, &mut ram.uffd_ranges),
        ("--uffd-prefill", &a.uffd_prefill, &mut ram.prefill),
    ] {
        for t in texts {
            match memvisor::uffd::parse_gpa_range(t) {
                Ok(r) => out.push(r),
                Err(e) => return fail(format!("{flag}: {e}")),
            }
        }
    }
    if !ram.prefill.is_empty() && ram.backing != memvisor::memory::RamBacking::Shm {
        return fail("--uffd-prefill needs --ram-backing shm");
    }
    if a.uffd_prefault && ram.backing != memvisor::memory::RamBacking::Shm {
        return fail("--uffd-prefault needs --ram-backing shm");
    }
    let cfg = VmConfig {
        mem_bytes,
        kernel,
        scenario: entry.name.into(),
        flags,
        arg: [0; 4],
        timeout: Duration::from_secs_f64(timeout),
        zone_preset: match a.zones {
            Zones::X86_64 => ZonePreset::X86_64,
            Zones::Legacy => ZonePreset::Legacy,
        },
        // Live console output; on stderr when stdout carries the JSON report.
        echo_console: if a.json {
            ConsoleEcho::Stderr
        } else {
            ConsoleEcho::Stdout
        },
        check_invariants: hooks.check_invariants(),
        uffd: a.uffd || a.uffd_prefault || !ram.uffd_ranges.is_empty(),
        ram,
        ..VmConfig::default()
    };
    let mut report: Report = match vmm::run_scenario(&cfg, hooks) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if let Some(m) = fault_matrix::matrix_report_mut(&mut report) {
        for d in &deviations {
            m.apply_known_deviation(*d);
        }
    }
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(format!("cannot encode the report: {e}")),
        }
    } else {
        print!("{}", report.to_text());
    }
    if let Some(path) = &a.cases_out {
        match fault_matrix::matrix_report(&report) {
            Some(m) => {
                if let Err(e) = m.data.write_tsv(path) {
                    return fail(format!("--cases-out {}: {e}", path.display()));
                }
            }
            None => {
                eprintln!(
                    "memvisor: --cases-out {}: the fault matrix did not finish; nothing written",
                    path.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    if report.success() {
        ExitCode::SUCCESS
    } else {
        if !a.json {
            match fault_matrix::matrix_report(&report) {
                Some(m) if report.guest_exit_code == Some(0) => eprintln!(
                    "memvisor: fault matrix: {} case(s) differ from the SDM oracle",
                    m.summary.fail
                ),
                _ => eprintln!(
                    "memvisor: guest failed: {}",
                    report.message.clone().unwrap_or_else(|| format!(
                        "exit code {}",
                        report.guest_exit_code.unwrap_or(1)
                    ))
                ),
            }
        }
        ExitCode::from(1)
    }
}

/// Read at most `max + 1` bytes of `path` (the loader refuses more than `max`): a huge or
/// endless file (`/dev/zero`) is never read whole into memory.
fn read_bounded(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut v)?;
    Ok(v)
}

/// Fail early if `--cases-out` cannot be written: not a directory, and its temporary file
/// can be created (and is removed again).
fn check_cases_out(path: &std::path::Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::other("is a directory"));
    }
    let tmp = memvisor_cli::matrix::temp_path(path);
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}
