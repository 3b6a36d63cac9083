//! The run report: what the VMM saw, as readable text and as one JSON object.
//!
//! JSON keys (stable; tests and users assert on them): `outcome`, `guest_exit_code`,
//! `memslots` (`slot gpa size flags`), `e820` (`start size type`), `zones` (`name start end
//! present_frames free_frames ...`), `page_tables`, `faults` (`vector error_code cr2 rip
//! resolved kind`), `stage2` (`gpa size write value rip`), `exits` (counts by reason),
//! `hypercalls`, `records`, `console`, `timings`, `cpu`.

use crate::boot::cpuid::Features;
use crate::hypercall::{CallStats, Hypercalls};
use crate::memory::Memslot;
use crate::space::{AddressSpace, FaultRecord};
use crate::vmm::VmConfig;
use kvm_ioctls::VcpuFd;
use memvisor_abi::E820_RAM;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON_MODE: AtomicBool = AtomicBool::new(false);

/// Route live guest console output to stderr (stdout carries JSON).
pub fn set_json_mode(on: bool) {
    JSON_MODE.store(on, Ordering::SeqCst);
}

/// Whether stdout carries JSON.
pub fn json_mode() -> bool {
    JSON_MODE.load(Ordering::SeqCst)
}

/// How the run ended.
/// Fault-log entries printed in the text report (the JSON report has the whole log).
pub const FAULT_TEXT_MAX: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called exit(code).
    Exited(u32),
    /// The guest panicked.
    Panicked(String),
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// KVM_EXIT_HLT without an exit hypercall.
    Halted,
    /// The watchdog stopped a runaway vCPU.
    Timeout,
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason.
    FailEntry {
        /// hardware_entry_failure_reason.
        reason: u64,
        /// The CPU.
        cpu: u32,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError,
    /// Some other exit.
    UnexpectedExit(String),
    /// KVM_RUN failed.
    KvmError(String),
    /// A host invariant broke after a hypercall batch (checked runs only).
    InvariantViolation(Vec<crate::invariants::Violation>),
}

impl Outcome {
    /// Short name for JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Exited(_) => "exit",
            Outcome::Panicked(_) => "panic",
            Outcome::TripleFault => "triple_fault",
            Outcome::Halted => "halted",
            Outcome::Timeout => "timeout",
            Outcome::FailEntry { .. } => "fail_entry",
            Outcome::InternalError => "internal_error",
            Outcome::UnexpectedExit(_) => "unexpected_exit",
            Outcome::KvmError(_) => "kvm_error",
            Outcome::InvariantViolation(_) => "invariant_violation",
        }
    }
}

/// Upper bounds (µs) of the exit-latency histogram buckets; the last bucket is open.
pub const LATENCY_BUCKETS_US: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Host-side handling time of one exit reason: from KVM_RUN's return to the next KVM_RUN.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExitLatencyStats {
    /// Exits of this reason.
    pub count: u64,
    /// Sum of handling times, ns.
    pub total_ns: u64,
    /// Largest handling time, ns.
    pub max_ns: u64,
    /// Counts per bucket: `< 1 µs`, `< 2 µs`, ... `< 1024 µs`, `>= 1024 µs` (12 buckets).
    pub histogram: [u64; 12],
}

/// Exit-handling latency by exit reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExitLatency(pub BTreeMap<String, ExitLatencyStats>);

impl ExitLatency {
    /// Account one exit of `reason` handled in `d`.
    pub fn record(&mut self, reason: &str, d: std::time::Duration) {
        let ns = d.as_nanos() as u64;
        let e = self.0.entry(reason.to_string()).or_default();
        e.count += 1;
        e.total_ns += ns;
        e.max_ns = e.max_ns.max(ns);
        let us = ns / 1000;
        let b = LATENCY_BUCKETS_US
            .iter()
            .position(|&ub| us < ub)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        e.histogram[b] += 1;
    }
}

/// A stage-2 fault: an access to a GPA with no memslot (KVM_EXIT_MMIO).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Stage2Fault {
    /// The GPA accessed.
    pub gpa: u64,
    /// Access size in bytes.
    pub size: u32,
    /// True for a write.
    pub write: bool,
    /// The written value (writes only).
    pub value: Option<u64>,
    /// Guest RIP.
    pub rip: u64,
    /// The GPA was in a declared lazy range: the VMM added a memslot and completed the access.
    pub lazy_backed: bool,
}

/// vCPU registers at a crash.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Registers {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RAX.
    pub rax: u64,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl Registers {
    /// Read from the vCPU (None if KVM refuses).
    pub fn read(vcpu: &VcpuFd) -> Option<Self> {
        let r = vcpu.get_regs().ok()?;
        let s = vcpu.get_sregs().ok()?;
        Some(Registers {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            rax: r.rax,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }
}

/// Timings in microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Timings {
    /// VMM start → ready to enter the guest.
    pub setup_us: u64,
    /// Time spent in KVM_SET_USER_MEMORY_REGION for guest RAM.
    pub memslot_us: u64,
    /// VMM start → first KVM_RUN.
    pub first_entry_us: u64,
    /// VMM start → the guest's first instruction (its `out` to the null port, seen by the
    /// VMM); None if the guest never got there.
    pub first_guest_instruction_us: Option<u64>,
    /// Guest run time.
    pub run_us: u64,
    /// Whole run.
    pub total_us: u64,
}

/// An e820 entry in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct E820Json {
    /// First GPA.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// `ram` or `reserved`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A zone in JSON (frames are 4 KiB).
#[derive(Debug, Clone, Serialize)]
pub struct ZoneJson {
    /// DMA, DMA32, Normal, HighMem.
    pub name: &'static str,
    /// First GPA of the zone's span.
    pub start: u64,
    /// One past the last GPA of the span.
    pub end: u64,
    /// Frames of RAM in the span.
    pub present_frames: u64,
    /// Frames the allocator manages (present minus reserved).
    pub managed_frames: u64,
    /// Free frames.
    pub free_frames: u64,
    /// Successful allocations.
    pub allocations: u64,
    /// Allocations served here for a higher zone.
    pub fallbacks_in: u64,
    /// Requests for this zone served by a lower one.
    pub fallbacks_out: u64,
    /// Failed allocations.
    pub failures: u64,
}

/// Page-table summary in JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PageTablesJson {
    /// GPA of the PML4.
    pub cr3: u64,
    /// Table frames in use.
    pub table_frames: u64,
    /// PDPT / PD / PT frames.
    pub pdpt_tables: u64,
    /// PD frames.
    pub pd_tables: u64,
    /// PT frames.
    pub pt_tables: u64,
    /// 2 MiB pool chunks.
    pub pool_chunks: u64,
    /// First GPA of each pool chunk (every page-table frame lies in one of these 2 MiB runs).
    pub pool_chunk_gpas: Vec<u64>,
    /// Leaf mappings by size.
    pub mappings_4k: u64,
    /// 2 MiB leaves.
    pub mappings_2m: u64,
    /// 1 GiB leaves.
    pub mappings_1g: u64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// How the run ended (`exit`, `panic`, `triple_fault`, `timeout`, ...).
    pub outcome: &'static str,
    /// The guest's exit code, or null if it did not exit normally.
    pub guest_exit_code: Option<u32>,
    /// Panic message or failure detail.
    pub message: Option<String>,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// KVM memslots.
    pub memslots: Vec<Memslot>,
    /// The e820 map.
    pub e820: Vec<E820Json>,
    /// Zones.
    pub zones: Vec<ZoneJson>,
    /// `/proc/zoneinfo`-like text.
    pub zoneinfo: String,
    /// `/proc/buddyinfo`-like text.
    pub buddyinfo: String,
    /// Page tables.
    pub page_tables: PageTablesJson,
    /// Fault log.
    pub faults: Vec<FaultRecord>,
    /// Faults in total (the log keeps the first 4096).
    pub faults_total: u64,
    /// Stage-2 faults (first 1024).
    pub stage2: Vec<Stage2Fault>,
    /// Stage-2 faults in total.
    pub stage2_total: u64,
    /// Exits by reason.
    pub exits: BTreeMap<String, u64>,
    /// Host handling time of exits by reason (count, total, max, histogram).
    pub exit_latency: ExitLatency,
    /// What the stage-2 scenario did (slot operations, lazy backing, dirty-log reads).
    pub stage2_report: Option<crate::stage2::Stage2Report>,
    /// Faults by kind (`lazy`, `reported`) and vector, e.g. `lazy/14`.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Hypercalls by call.
    pub hypercalls: BTreeMap<&'static str, CallStats>,
    /// Hypercall results by status.
    pub hypercall_status: BTreeMap<&'static str, u64>,
    /// Rejected request blocks.
    pub bad_blocks: u64,
    /// Live mmap regions at exit and the data frames they hold.
    pub regions_live: u64,
    /// Data frames still mapped for mmap regions at exit.
    pub mapped_frames: u64,
    /// Lazy faults served.
    pub lazy_faults: u64,
    /// Of those, served through the #PF assist exit (`crate::pf_assist`).
    pub lazy_faults_assisted: u64,
    /// Of those, returned to the guest by the VMM's own iretq.
    pub vmm_irets: u64,
    /// Times the VMM flushed KVM's shadow page tables after removing or reducing mappings.
    pub shadow_flushes: u64,
    /// `key=value` records from the guest.
    pub records: BTreeMap<String, String>,
    /// Guest console output.
    pub console: String,
    /// Registers at a crash.
    pub registers: Option<Registers>,
    /// Host invariants: checks run, violations, frames by state and leaks at exit, teardown
    /// (see [`crate::invariants`]).
    pub invariants: Option<crate::invariants::InvariantSummary>,
    /// Timings.
    pub timings: Timings,
    /// The fault matrix's totals (`fault-matrix` scenario; null otherwise).
    pub matrix: Option<crate::matrix::MatrixReport>,
    /// Guest CPU paging features.
    pub cpu: Features,
    /// TSC frequency the guest was told (kHz; KVM_GET_TSC_KHZ when CPUID lacks it).
    pub tsc_khz: u64,
}

impl Report {
    /// Gather the report after a run.
    #[allow(clippy::too_many_arguments)]
    pub fn collect(
        cfg: &VmConfig,
        space: &AddressSpace,
        memslots: Vec<Memslot>,
        cpu: Features,
        hc: Hypercalls,
        exits: BTreeMap<String, u64>,
        stage2: Vec<Stage2Fault>,
        stage2_total: u64,
        shadow_flushes: u64,
        outcome: Outcome,
        registers: Option<Registers>,
        timings: Timings,
        tsc_khz: u64,
        exit_latency: ExitLatency,
        stage2_rep: Option<crate::stage2::Stage2Report>,
    ) -> Report {
        let e820 = space
            .ram
            .e820
            .iter()
            .map(|e| E820Json {
                start: e.addr,
                size: e.size,
                kind: if e.kind == E820_RAM {
                    "ram"
                } else {
                    "reserved"
                },
            })
            .collect();
        let zones = space
            .zones
            .zones()
            .iter()
            .map(|z| ZoneJson {
                name: z.kind.name(),
                start: z.start_pfn.0 * 4096,
                end: z.end_pfn.0 * 4096,
                present_frames: z.present,
                managed_frames: z.managed,
                free_frames: z.free,
                allocations: z.allocations,
                fallbacks_in: z.fallbacks_in,
                fallbacks_out: z.fallbacks_out,
                failures: z.failures,
            })
            .collect();
        let s = space.pt.summary(&space.ram.mem);
        let page_tables = PageTablesJson {
            cr3: s.root_gpa,
            table_frames: s.table_frames,
            pdpt_tables: s.pdpt_tables,
            pd_tables: s.pd_tables,
            pt_tables: s.pt_tables,
            pool_chunks: space.pool.chunks.len() as u64,
            pool_chunk_gpas: space.pool.chunks.iter().map(|c| c.0 * 4096).collect(),
            mappings_4k: s.mappings_4k,
            mappings_2m: s.mappings_2m,
            mappings_1g: s.mappings_1g,
        };
        let (code, message) = match &outcome {
            Outcome::Exited(c) => (Some(*c), None),
            Outcome::Panicked(m) => (None, Some(format!("guest panicked: {m}"))),
            Outcome::TripleFault => (None, Some("triple fault (KVM_EXIT_SHUTDOWN)".to_string())),
            Outcome::Halted => (None, Some("guest halted without calling exit".into())),
            Outcome::Timeout => (
                None,
                Some(format!(
                    "timeout: guest still running after {:?}",
                    cfg.timeout
                )),
            ),
            Outcome::FailEntry { reason, cpu } => (
                None,
                Some(format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason {reason:#x} on cpu {cpu}"
                )),
            ),
            Outcome::InternalError => (None, Some("KVM_EXIT_INTERNAL_ERROR".into())),
            Outcome::UnexpectedExit(e) => (None, Some(format!("unexpected exit: {e}"))),
            Outcome::KvmError(e) => (None, Some(format!("KVM_RUN failed: {e}"))),
            Outcome::InvariantViolation(v) => (
                None,
                Some(format!(
                    "host invariant violated after a hypercall batch: {} ({} violation(s))",
                    v.first().map(|x| x.to_string()).unwrap_or_default(),
                    v.len()
                )),
            ),
        };
        Report {
            scenario: cfg.scenario_name.clone(),
            outcome: outcome.name(),
            guest_exit_code: code,
            message,
            mem_bytes: cfg.mem_bytes,
            memslots,
            e820,
            zones,
            zoneinfo: space.zones.zoneinfo(),
            buddyinfo: space.zones.buddyinfo(),
            page_tables,
            faults: space.faults.clone(),
            faults_total: space.counters.faults,
            stage2,
            stage2_total,
            exits,
            exit_latency,
            stage2_report: stage2_rep,
            faults_by_kind: space.counters.by_kind.clone(),
            hypercalls: hc.by_call,
            hypercall_status: hc.by_status,
            bad_blocks: hc.bad_blocks,
            regions_live: space.regions.len() as u64,
            mapped_frames: space.counters.mapped_frames,
            lazy_faults: space.counters.lazy_faults,
            lazy_faults_assisted: space.counters.lazy_faults_assisted,
            vmm_irets: space.counters.vmm_irets,
            shadow_flushes,
            records: hc.records.into_iter().collect(),
            console: hc.console,
            registers,
            invariants: match &outcome {
                Outcome::InvariantViolation(v) => Some(crate::invariants::InvariantSummary {
                    violations: v.clone(),
                    ..Default::default()
                }),
                _ => None,
            },
            timings,
            matrix: hc
                .matrix
                .as_deref()
                .and_then(crate::matrix::MatrixReport::from_run),
            cpu,
            tsc_khz,
        }
    }

    /// True if the guest exited with code 0 (and the fault matrix, if any, has no failures).
    pub fn success(&self) -> bool {
        self.guest_exit_code == Some(0) && self.matrix.as_ref().is_none_or(|m| m.summary.fail == 0)
    }

    /// The last exception in the fault log, if any.
    pub fn last_exception(&self) -> Option<&FaultRecord> {
        self.faults.last()
    }

    /// The readable text report. The fault log shows its first [`FAULT_TEXT_MAX`] entries
    /// (with counts by kind when it is longer); `--json` has all of them.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "\n=== memvisor report: scenario '{}' ===", self.scenario);
        match (self.guest_exit_code, &self.message) {
            (Some(c), _) => {
                let _ = writeln!(o, "outcome: guest exited with code {c}");
            }
            (None, Some(m)) => {
                let _ = writeln!(o, "outcome: {} — {m}", self.outcome);
            }
            (None, None) => {
                let _ = writeln!(o, "outcome: {}", self.outcome);
            }
        }
        if let Some(r) = &self.registers {
            let _ = writeln!(
                o,
                "registers: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.cr0, r.cr2, r.cr3, r.cr4, r.efer
            );
            if let Some(f) = self.last_exception() {
                let _ = writeln!(
                    o,
                    "last exception: vector {} error_code={:#x} cr2={:#x} rip={:#x}",
                    f.vector, f.error_code, f.cr2, f.rip
                );
            }
        }
        let _ = writeln!(o, "\n-- memslots ({} MiB guest RAM)", self.mem_bytes >> 20);
        for m in &self.memslots {
            let _ = writeln!(
                o,
                "  slot {:>2}  gpa {:#014x}..{:#014x}  {:>8} KiB  flags {:#x}",
                m.slot,
                m.gpa,
                m.gpa + m.size,
                m.size >> 10,
                m.flags
            );
        }
        let _ = writeln!(o, "-- e820");
        for e in &self.e820 {
            let _ = writeln!(
                o,
                "  [{:#014x}-{:#014x}] {}",
                e.start,
                e.start + e.size - 1,
                e.kind
            );
        }
        let _ = writeln!(o, "-- zones (frames are 4 KiB)");
        for z in &self.zones {
            let _ = writeln!(
                o,
                "  {:<7} [{:#012x}, {:#012x})  present {:>8}  managed {:>8}  free {:>8}  allocs {:>6}  fallback in/out {}/{}  failures {}",
                z.name, z.start, z.end, z.present_frames, z.managed_frames, z.free_frames,
                z.allocations, z.fallbacks_in, z.fallbacks_out, z.failures
            );
        }
        let _ = writeln!(o, "-- buddyinfo\n{}", self.buddyinfo.trim_end());
        let _ = writeln!(o, "-- zoneinfo\n{}", indent(&self.zoneinfo));
        let p = &self.page_tables;
        let _ = writeln!(
            o,
            "-- page tables: CR3 {:#x}; {} table frames (PDPT {}, PD {}, PT {}) in {} pool chunk(s); mappings 4K {} / 2M {} / 1G {}",
            p.cr3, p.table_frames, p.pdpt_tables, p.pd_tables, p.pt_tables, p.pool_chunks,
            p.mappings_4k, p.mappings_2m, p.mappings_1g
        );
        let _ = writeln!(
            o,
            "-- fault log ({} total, {} lazy faults served: {} through the #PF assist exit, {} returned by the VMM's iretq)",
            self.faults_total, self.lazy_faults, self.lazy_faults_assisted, self.vmm_irets
        );
        if self.faults.len() > FAULT_TEXT_MAX {
            let kinds: Vec<String> = self
                .faults_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(o, "  by kind/vector: {}", kinds.join(", "));
        }
        for f in self.faults.iter().take(FAULT_TEXT_MAX) {
            let _ = writeln!(
                o,
                "  vector {:>2}  error_code {:#06x} [{}]  cr2 {:#018x}  rip {:#018x}  {} ({})",
                f.vector,
                f.error_code,
                pf_bits(f.error_code),
                f.cr2,
                f.rip,
                if f.resolved { "resolved" } else { "unresolved" },
                f.kind
            );
        }
        if self.faults.len() > FAULT_TEXT_MAX {
            let _ = writeln!(
                o,
                "  ... {} more logged (all of them in --json)",
                self.faults.len() - FAULT_TEXT_MAX
            );
        }
        if self.stage2_total > 0 {
            let _ = writeln!(o, "-- stage-2 faults ({} total)", self.stage2_total);
            for s in &self.stage2 {
                let _ = writeln!(
                    o,
                    "  gpa {:#014x}  {} bytes  {}{}  rip {:#x}{}",
                    s.gpa,
                    s.size,
                    if s.write { "write" } else { "read" },
                    s.value
                        .map(|v| format!(" value {v:#x}"))
                        .unwrap_or_default(),
                    s.rip,
                    if s.lazy_backed {
                        "  (lazy: memslot added, access completed)"
                    } else {
                        ""
                    }
                );
            }
        }
        let _ = writeln!(o, "-- exits by reason (count; host handling mean / max µs; histogram <1 <2 <4 .. <1024 >=1024 µs)");
        for (k, v) in &self.exits {
            match self.exit_latency.0.get(k) {
                Some(l) if l.count > 0 => {
                    let _ = writeln!(
                        o,
                        "  {k:<22} {v:>8}  {:>8.2} / {:>8.2}  {:?}",
                        l.total_ns as f64 / l.count as f64 / 1000.0,
                        l.max_ns as f64 / 1000.0,
                        l.histogram
                    );
                }
                _ => {
                    let _ = writeln!(o, "  {k:<22} {v:>8}");
                }
            }
        }
        let _ = writeln!(o, "-- hypercalls (count / errors / mean host µs)");
        for (k, v) in &self.hypercalls {
            let mean = if v.count > 0 {
                v.total_ns as f64 / v.count as f64 / 1000.0
            } else {
                0.0
            };
            let _ = writeln!(o, "  {k:<14} {:>8} {:>6} {:>8.2}", v.count, v.errors, mean);
        }
        let _ = writeln!(
            o,
            "-- at exit: {} live regions holding {} frames; bad request blocks {}; shadow page-table flushes {}",
            self.regions_live, self.mapped_frames, self.bad_blocks, self.shadow_flushes
        );
        if let Some(inv) = &self.invariants {
            let _ = writeln!(o, "-- invariants: {}", inv.line());
            for v in inv.violations.iter().take(16) {
                let _ = writeln!(o, "  VIOLATION {v}");
            }
        }
        if let Some(m) = &self.matrix {
            o.push_str(&m.to_text());
        }
        let t = &self.timings;
        let _ = writeln!(
            o,
            "-- timings: setup {} µs, first KVM_RUN {} µs and first guest instruction {} µs after start, guest run {:.2} ms, total {:.2} ms",
            t.setup_us,
            t.first_entry_us,
            t.first_guest_instruction_us.map_or("-".to_string(), |v| v.to_string()),
            t.run_us as f64 / 1000.0,
            t.total_us as f64 / 1000.0
        );
        o
    }
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// #PF error-code bits as text: P W U RSVD I/D (Intel SDM Vol. 3A §4.7).
pub fn pf_bits(e: u64) -> String {
    let names = [(1, "P"), (2, "W"), (4, "U"), (8, "RSVD"), (16, "I/D")];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| e & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join("|")
    }
}
