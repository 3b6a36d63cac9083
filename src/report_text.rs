//! The readable text report ([`ReportText::to_text`] on [`Report`]) and its helpers.

use memvisor::report::Report;
use std::fmt::Write as _;

/// Fault-log entries printed in the text report (the JSON report has the whole log).
pub const FAULT_TEXT_MAX: usize = 20;

/// The readable text form of a [`Report`] (what `memvisor run` prints without `--json`).
pub trait ReportText {
    /// The readable text report (see [`ReportText`] on [`Report`]).
    fn to_text(&self) -> String;
}

impl ReportText for Report {
    /// The readable text report. The fault log shows its first [`FAULT_TEXT_MAX`] entries
    /// (with counts by kind when it is longer); `--json` has all of them.
    fn to_text(&self) -> String {
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
            "-- page tables: CR3 {:#x}{}; {} table frames (PDPT {}, PD {}, PT {}) in {} pool chunk(s); mappings 4K {} / 2M {} / 1G {}",
            p.cr3,
            if p.paging_levels == 5 { " (a PML5: 5-level paging)" } else { "" },
            p.table_frames, p.pdpt_tables, p.pd_tables, p.pt_tables, p.pool_chunks,
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
                    "  gpa {:#014x}  {} bytes  {}{}  {}{}",
                    s.gpa,
                    s.size,
                    if s.write { "write" } else { "read" },
                    s.value
                        .map(|v| format!(" value {v:#x}"))
                        .unwrap_or_default(),
                    match (s.rip, s.exit_rip) {
                        (Some(r), _) if s.rip_source == Some("decoded") => {
                            format!("rip {r:#x} (decoded)")
                        }
                        (Some(r), _) => format!("rip {r:#x}"),
                        (None, Some(n)) => format!("rip unknown (next instruction {n:#x})"),
                        (None, None) => "rip unknown".to_string(),
                    },
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
        if let Some(b) = &self.backend {
            let _ = writeln!(o, "-- host: {}", b.line());
        }
        let _ = writeln!(
            o,
            "-- at exit: {} live regions holding {} frames; bad request blocks {}; shadow page-table flushes {}",
            self.regions_live, self.mapped_frames, self.bad_blocks, self.shadow_flushes
        );
        if let Some(u) = &self.uffd {
            o.push_str(&u.to_text());
        }
        if let Some(inv) = &self.invariants {
            let _ = writeln!(o, "-- invariants: {}", inv.line());
            for v in inv.violations.iter().take(16) {
                let _ = writeln!(o, "  VIOLATION {v}");
            }
        }
        if let Some(s) = &self.section {
            o.push_str(&s.to_text());
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
