//! `memvisor bench`: one process, one guest, a table of figures each beside a peer measured in
//! the same run, and their ratio.
//!
//! Guest figures come from the `bench` scenario (rdtsc in the guest, converted to ns with the
//! TSC frequency KVM reports); host figures are timed here with `Instant` over many
//! repetitions (median of batches). Targets are read from the table, never asserted by a
//! timed test.

use memvisor::paging::PageSize;
use memvisor::report::Report;
use memvisor::vmm::{self, VmConfig, VmmError};
use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
pub use target::{Target, Verdict};

mod heap;
mod host;
mod target;
mod uffd;

/// One figure of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Figure name.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Unit of `value` and `peer_value`.
    pub unit: &'static str,
    /// The peer measured in the same run.
    pub peer: String,
    /// The peer's value.
    pub peer_value: f64,
    /// value / peer_value.
    pub ratio: f64,
    /// The target as text (`for scale` if none).
    pub target: String,
    /// Whether the target was met: true, false, or null for a row that is for scale.
    pub met: Option<bool>,
    /// The row's verdict (`met`, `missed`, `for_scale`).
    pub verdict: Verdict,
}

fn fig(
    name: &str,
    value: f64,
    unit: &'static str,
    peer: &str,
    peer_value: f64,
    target: Target,
) -> Figure {
    let ratio = if peer_value != 0.0 {
        value / peer_value
    } else {
        f64::NAN
    };
    let verdict = target.verdict(value, ratio);
    Figure {
        name: name.into(),
        value,
        unit,
        peer: peer.into(),
        peer_value,
        ratio,
        target: target.text(unit),
        met: verdict.met(),
        verdict,
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// CPU model (from /proc/cpuinfo).
    pub cpu: String,
    /// `pvm` (KVM with the PVM backend) or `vmx/svm` or `unknown`.
    pub kvm_backend: String,
    /// TSC frequency used for the bench guest's figures, kHz (0 when `--only` skipped them).
    pub tsc_khz: u64,
    /// Quick mode (few iterations).
    pub quick: bool,
    /// The figures.
    pub figures: Vec<Figure>,
    /// Names of the figures whose target was missed (see each figure's `met`).
    pub missed: Vec<String>,
}

/// Median over `batches` of the mean duration of `per` calls of `f`, in ns.
fn median_ns(batches: usize, per: u32, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..batches.max(1))
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..per {
                f();
            }
            t0.elapsed().as_nanos() as f64 / per.max(1) as f64
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn kvm_backend() -> String {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "pvm".into()
    } else if std::path::Path::new("/sys/module/kvm_intel").exists()
        || std::path::Path::new("/sys/module/kvm_amd").exists()
    {
        "vmx/svm".into()
    } else {
        "unknown".into()
    }
}

fn guest_config(quick: bool) -> VmConfig {
    VmConfig {
        mem_bytes: 256 << 20,
        scenario: "bench".into(),
        flags: if quick { memvisor_abi::flags::QUICK } else { 0 },
        timeout: Duration::from_secs(300),
        ..VmConfig::default()
    }
}

fn rec(r: &Report, name: &str, tsc_khz: u64) -> f64 {
    r.records
        .get(&format!("bench.{name}"))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|cycles| cycles * 1e6 / tsc_khz.max(1) as f64)
        .unwrap_or(f64::NAN)
}

/// Errors of the bench command.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The VMM could not run the guest.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The guest did not finish its measurements.
    #[error("the bench scenario failed: {0}")]
    Guest(String),
}

/// Run everything.
///
/// # Errors
/// [`BenchError`] when the guest cannot run or fails.
pub fn run(quick: bool) -> Result<BenchResult, BenchError> {
    run_only(quick, None)
}

/// Groups of rows measured together, by the prefixes of their rows' names; the first group
/// (`core`: the bench guest's and the host's own rows) is everything else.
type Group = (
    &'static [&'static str],
    fn(bool) -> Result<Vec<Figure>, BenchError>,
);

/// [`run`] limited to the rows whose name starts with `only` (`memvisor bench --only
/// PREFIX`): only the groups that can produce such a row run (a group's rows keep their
/// peers, measured in the same run); `None` runs everything.
///
/// # Errors
/// As [`run`].
pub fn run_only(quick: bool, only: Option<&str>) -> Result<BenchResult, BenchError> {
    let groups: [Group; 4] = [
        (&["uffd_"], |q| Ok(uffd::figures(q))),
        (
            &["guest_demand_paging_", "guest_memslot_", "guest_uffd_"],
            |q| Ok(uffd::guest_figures(q)),
        ),
        (&["snapshot_restore_"], |q| Ok(uffd::restore_figures(q))),
        (&["heap_"], heap::heap_figures),
    ];
    let hit = |names: &[&str], p: &str| names.iter().any(|n| n.starts_with(p) || p.starts_with(n));
    let core = only.is_none_or(|p| !groups.iter().any(|g| hit(g.0, p)));
    let (mut f, khz) = if core {
        core_figures(quick)?
    } else {
        (Vec::new(), 0)
    };
    for (names, run) in groups {
        if only.is_none_or(|p| hit(names, p)) {
            f.extend(run(quick)?);
        }
    }
    f.retain(|x| only.is_none_or(|p| x.name.starts_with(p)));
    Ok(BenchResult {
        cpu: cpu_model(),
        kvm_backend: kvm_backend(),
        tsc_khz: khz,
        quick,
        missed: f
            .iter()
            .filter(|x| x.verdict == Verdict::Missed)
            .map(|x| x.name.clone())
            .collect(),
        figures: f,
    })
}

/// The bench guest's and the host's own rows, and the TSC frequency (kHz) of the guest's.
fn core_figures(quick: bool) -> Result<(Vec<Figure>, u64), BenchError> {
    let cfg = guest_config(quick);
    let r = vmm::run(&cfg)?;
    if !r.success() {
        return Err(BenchError::Guest(
            r.message.clone().unwrap_or_else(|| r.outcome.to_string()),
        ));
    }
    let khz = r.tsc_khz;
    let g = |n: &str| rec(&r, n, khz);
    let mut f = Vec::new();
    let r3_exit = g("r3_bare_exit");
    let r0_exit = g("r0_bare_exit");
    f.push(fig(
        "null_hypercall_ring3",
        g("r3_null_hypercall"),
        "ns",
        "bare_exit_ring3 (write to the null doorbell)",
        r3_exit,
        Target::RatioMax(1.10),
    ));
    f.push(fig(
        "null_hypercall_ring0",
        g("r0_null_hypercall"),
        "ns",
        "bare_exit_ring0 (out to the null port)",
        r0_exit,
        Target::RatioMax(1.10),
    ));
    f.push(fig(
        "ucall_sync_ring3",
        g("r3_ucall_sync"),
        "ns",
        "bare_exit_ring3",
        r3_exit,
        Target::RatioMax(1.10),
    ));
    f.push(fig(
        "guest_handled_pf_ring3",
        g("r3_guest_pf"),
        "ns",
        "bare_exit_ring3",
        r3_exit,
        Target::Scale,
    ));
    f.push(fig(
        "demand_paging_fault_ring3",
        g("r3_demand_fault"),
        "ns",
        "bare_exit_ring3",
        r3_exit,
        Target::RatioMax(1.5),
    ));
    f.push(fig(
        "first_touch_populated_ring3",
        g("r3_first_touch"),
        "ns",
        "bare_exit_ring3",
        r3_exit,
        Target::Scale,
    ));
    let minor = host::host_minor_fault_ns(if quick { 256 } else { 4096 });
    f.push(fig(
        "host_linux_minor_fault",
        minor,
        "ns",
        "bare_exit_ring3",
        r3_exit,
        Target::Scale,
    ));
    let per_page = |n: &str| {
        let ns = g(n);
        if ns > 0.0 {
            1e9 / ns
        } else {
            f64::NAN
        }
    };
    let one = per_page("r3_mmap_munmap_1p_per_page");
    for n in [1, 16, 512] {
        f.push(fig(
            &format!("mmap_munmap_{n}_pages_per_call"),
            per_page(&format!("r3_mmap_munmap_{n}p_per_page")),
            "pages/s",
            "mmap_munmap_1_pages_per_call",
            one,
            Target::RatioMin(1.0),
        ));
    }
    let reps = if quick { 5 } else { 31 };
    let (pt2m, ms2m) = host::pt_build(64 << 30, PageSize::Size2M, reps);
    f.push(fig(
        "pt_build_64GiB_direct_map_2M",
        pt2m,
        "ns/entry",
        "memset of the same PTE bytes",
        ms2m,
        Target::RatioMax(2.0),
    ));
    let (pt4k, ms4k) = host::pt_build(1 << 30, PageSize::Size4K, reps);
    f.push(fig(
        "pt_build_1GiB_4K",
        pt4k,
        "ns/entry",
        "memset of the same PTE bytes",
        ms4k,
        Target::RatioMax(2.0),
    ));
    f.push(fig(
        "pt_build_64GiB_direct_map_2M_total",
        pt2m * 32768.0 / 1000.0,
        "us",
        "memset of the same PTE bytes",
        ms2m * 32768.0 / 1000.0,
        Target::ValueMax(1000.0),
    ));
    let boot = boot_figures(if quick { 3 } else { 15 })?;
    f.push(fig(
        "vmm_start_to_first_guest_instruction_256MiB",
        boot.0,
        "us",
        "kvm_memslot_registration_256MiB",
        boot.1,
        Target::ValueMax(5000.0),
    ));
    let (slot_gib, setup_gib) = memslot_per_gib(quick)?;
    f.push(fig(
        "kvm_memslot_registration_per_GiB",
        slot_gib,
        "us",
        "vmm_setup_per_GiB (4 GiB guest)",
        setup_gib,
        Target::Scale,
    ));
    let (ours, buddy) = host::frames_pair();
    f.push(fig(
        "frames_single_alloc_free_pair_1GiB",
        ours,
        "ns",
        "buddy_system_allocator::FrameAllocator",
        buddy,
        Target::ValueAndRatioMax(25.0, 0.33),
    ));
    Ok((f, khz))
}

/// Median VMM start → first guest instruction (µs) and memslot registration (µs), 256 MiB.
fn boot_figures(runs: usize) -> Result<(f64, f64), BenchError> {
    let mut cfg = guest_config(true);
    cfg.scenario = "boot".into();
    let mut first = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..runs {
        let r = vmm::run(&cfg)?;
        first.push(r.timings.first_guest_instruction_us.unwrap_or(0) as f64);
        slots.push(r.timings.memslot_us as f64);
    }
    first.sort_by(|a, b| a.total_cmp(b));
    slots.sort_by(|a, b| a.total_cmp(b));
    Ok((first[first.len() / 2], slots[slots.len() / 2]))
}

/// KVM memslot registration per GiB vs the VMM's whole setup per GiB, for a 4 GiB guest.
fn memslot_per_gib(quick: bool) -> Result<(f64, f64), BenchError> {
    let mut cfg = guest_config(true);
    cfg.mem_bytes = 4 << 30;
    cfg.scenario = "boot".into();
    let runs = if quick { 1 } else { 5 };
    let mut slot = Vec::new();
    let mut setup = Vec::new();
    for _ in 0..runs {
        let r = vmm::run(&cfg)?;
        slot.push(r.timings.memslot_us as f64 / 4.0);
        setup.push(r.timings.setup_us as f64 / 4.0);
    }
    slot.sort_by(|a, b| a.total_cmp(b));
    setup.sort_by(|a, b| a.total_cmp(b));
    Ok((slot[slot.len() / 2], setup[setup.len() / 2]))
}

impl BenchResult {
    /// Replace (or append) the "memvisor bench" section of the Markdown file `path`
    /// (BENCHMARKS.md) with this table and today's date, writing a temporary file and
    /// renaming it so a failure never leaves a partial file.
    ///
    /// # Errors
    /// The I/O error of writing or renaming the temporary file.
    pub fn update_md(&self, path: &std::path::Path) -> std::io::Result<()> {
        const HEAD: &str = "## memvisor bench";
        let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let date = std::process::Command::new("date")
            .arg("+%Y-%m-%d")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let section = format!(
            "{HEAD}\n\nRun {date} with `cargo run --release -- bench --update-md`.\n\n{}\n",
            self.table()
        );
        let new = match old.find(HEAD) {
            Some(start) => {
                let rest = &old[start + HEAD.len()..];
                let end = rest
                    .find("\n## ")
                    .map_or(old.len(), |i| start + HEAD.len() + i + 1);
                format!("{}{}{}", &old[..start], section, &old[end..])
            }
            None => format!("{}\n{}", old.trim_end(), "\n".to_string() + &section),
        };
        let tmp = path.with_extension("md.tmp");
        let res = std::fs::write(&tmp, new).and_then(|()| std::fs::rename(&tmp, path));
        if res.is_err() {
            // Never leave the partial file behind.
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// The table as text (Markdown).
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "machine: {} — KVM backend: {} — TSC {} kHz{}\n",
            self.cpu,
            self.kvm_backend,
            self.tsc_khz,
            if self.quick {
                " — QUICK mode (few iterations)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "| figure | value | peer (same run) | peer value | ratio | target | status |"
        );
        let _ = writeln!(o, "| --- | ---: | --- | ---: | ---: | --- | --- |");
        for f in &self.figures {
            let _ = writeln!(
                o,
                "| {} | {:.1} {} | {} | {:.1} {} | {:.2} | {} | {} |",
                f.name,
                f.value,
                f.unit,
                f.peer,
                f.peer_value,
                f.unit,
                f.ratio,
                f.target,
                f.verdict.label()
            );
        }
        let _ = writeln!(o, "\n{}", self.summary());
        o
    }

    /// The rows whose target was missed.
    pub fn missed(&self) -> impl Iterator<Item = &Figure> {
        self.figures.iter().filter(|f| f.verdict == Verdict::Missed)
    }

    /// One line: how many targets were met, and each missed one with its value and target.
    pub fn summary(&self) -> String {
        let with_target = self
            .figures
            .iter()
            .filter(|f| f.verdict != Verdict::ForScale)
            .count();
        let missed: Vec<String> = self
            .missed()
            .map(|f| {
                format!(
                    "{} ({:.1} {}, ratio {:.2}; target {})",
                    f.name, f.value, f.unit, f.ratio, f.target
                )
            })
            .collect();
        if missed.is_empty() {
            format!("targets: all {with_target} met")
        } else {
            format!(
                "targets: {} of {with_target} MISSED: {}",
                missed.len(),
                missed.join("; ")
            )
        }
    }
}
