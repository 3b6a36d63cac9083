//! The run report: what the VMM saw, as readable text and as one JSON object.
//!
//! JSON keys (stable; tests and users assert on them): `outcome`, `guest_exit_code`,
//! `memslots` (`slot gpa size flags`), `e820` (`start size type`), `zones` (`name start end
//! present_frames free_frames ...`), `page_tables`, `faults` (`vector error_code cr2 rip
//! resolved kind`), `stage2` (`gpa size write value rip rip_source exit_rip lazy_backed`),
//! `exits` (counts by reason), `hypercalls`, `records`, `console`, `timings`, `cpu`. 64-bit
//! addresses and bit patterns are hex strings ([`hex`]); the whole shape is
//! `docs/report.schema.json`.

pub mod hex;
mod latency;
mod sections;

use crate::boot::cpuid::Features;
use crate::hypercall::{CallStats, Hypercalls};
use crate::memory::Memslot;
use crate::space::{AddressSpace, FaultRecord};
use memvisor_abi::E820_RAM;
use serde::Serialize;
use std::collections::BTreeMap;

pub use latency::{ExitLatency, ExitLatencyStats, LATENCY_BUCKETS_US};
pub use sections::{
    E820Json, PageTablesJson, Registers, ScenarioSection, Stage2Fault, Timings, ZoneJson,
};

/// How the run ended.
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
    /// The userfaultfd handler's counters and serve-time histogram when RAM is uffd-backed
    /// (`--uffd`; null otherwise).
    pub uffd: Option<crate::uffd::UffdStats>,
    /// What a restored VM read from its snapshot files (`memvisor restore`; null otherwise).
    pub restore: Option<crate::snapshot::RestoreStats>,
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
    /// The scenario's own section, set by its host side's
    /// [`Scenario::finish`](crate::scenario::Scenario::finish): the fault matrix's totals
    /// (`fault-matrix`), null otherwise. JSON key `matrix` (the schema's name for it).
    #[serde(rename = "matrix")]
    pub section: Option<Box<dyn ScenarioSection>>,
    /// Guest CPU paging features.
    pub cpu: Features,
    /// The host's KVM backend (shadow or two-dimensional paging) and MAXPHYADDR.
    pub backend: Option<crate::backend::HostInfo>,
    /// TSC frequency the guest was told (kHz; KVM_GET_TSC_KHZ when CPUID lacks it).
    pub tsc_khz: u64,
}

/// What the VMM kept of one run: the input of [`Report::collect`].
pub struct RunRecord<'a> {
    /// Scenario name.
    pub scenario: String,
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// The run's wall-clock limit (named in a timeout's message).
    pub timeout: std::time::Duration,
    /// The guest's address space at the end.
    pub space: &'a AddressSpace,
    /// KVM memslots of guest RAM.
    pub memslots: Vec<Memslot>,
    /// Guest CPU paging features.
    pub cpu: Features,
    /// Hypercall statistics, console and records.
    pub hypercalls: Hypercalls,
    /// Exits by reason.
    pub exits: BTreeMap<String, u64>,
    /// Host handling time of exits by reason.
    pub exit_latency: ExitLatency,
    /// Stage-2 faults kept, and their total.
    pub stage2: (Vec<Stage2Fault>, u64),
    /// What the stage-2 regions saw, if set up.
    pub stage2_report: Option<crate::stage2::Stage2Report>,
    /// Shadow flushes done.
    pub shadow_flushes: u64,
    /// How the run ended.
    pub outcome: Outcome,
    /// Registers at a crash.
    pub registers: Option<Registers>,
    /// Timings.
    pub timings: Timings,
    /// TSC frequency the guest was told (kHz).
    pub tsc_khz: u64,
    /// KVM's MMU backend and MAXPHYADDR.
    pub backend: Option<crate::backend::HostInfo>,
}

impl Report {
    /// Gather the report after a run (scenario sections such as `matrix` are added by the
    /// scenario's host side, [`crate::scenario::Scenario::finish`]).
    pub fn collect(r: RunRecord<'_>) -> Report {
        let RunRecord {
            scenario,
            mem_bytes,
            timeout,
            space,
            memslots,
            cpu,
            hypercalls: hc,
            exits,
            exit_latency,
            stage2: (stage2, stage2_total),
            stage2_report: stage2_rep,
            shadow_flushes,
            outcome,
            registers,
            timings,
            tsc_khz,
            backend,
        } = r;
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
                start: z.start_pfn.raw() * 4096,
                end: z.end_pfn.raw() * 4096,
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
            cr3: space.cr3(),
            paging_levels: if space.la57() { 5 } else { 4 },
            table_frames: s.table_frames,
            pdpt_tables: s.pdpt_tables,
            pd_tables: s.pd_tables,
            pt_tables: s.pt_tables,
            pool_chunks: space.pool.chunks.len() as u64,
            pool_chunk_gpas: space.pool.chunks.iter().map(|c| c.raw() * 4096).collect(),
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
                Some(format!("timeout: guest still running after {:?}", timeout)),
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
            scenario,
            outcome: outcome.name(),
            guest_exit_code: code,
            message,
            mem_bytes,
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
            uffd: space.ram.uffd.as_ref().map(|h| h.stats()),
            restore: None,
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
            section: None,
            cpu,
            backend,
            tsc_khz,
        }
    }

    /// True if the guest exited with code 0 (and the scenario's section, if any, passed: the
    /// fault matrix has no failures).
    pub fn success(&self) -> bool {
        self.guest_exit_code == Some(0) && self.section.as_ref().is_none_or(|s| s.passed())
    }

    /// The last exception in the fault log, if any.
    pub fn last_exception(&self) -> Option<&FaultRecord> {
        self.faults.last()
    }
}
