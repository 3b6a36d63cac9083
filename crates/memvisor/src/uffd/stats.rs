//! The handler's counters ([`UffdStats`]) and the report's text section.

use serde::Serialize;

/// Buckets of the serve-latency histogram: bucket `i` counts faults served in
/// `[2^i, 2^(i+1))` ns (bucket 0 also takes 0 ns; the last takes everything above).
pub const HIST_BUCKETS: usize = 32;

/// Which faults a registration reports (`UFFDIO_REGISTER` mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UffdMode {
    /// `UFFDIO_REGISTER_MODE_MISSING`: pages not yet mapped (any backing).
    #[default]
    Missing,
    /// `UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR`: also pages in the page cache
    /// but not yet mapped (shared memory only; needs `UFFD_FEATURE_MINOR_SHMEM`).
    MissingMinor,
}

/// What the handler did (a copy of its counters).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UffdStats {
    /// Registration mode.
    pub mode: UffdMode,
    /// Registered bytes.
    pub registered_bytes: u64,
    /// Page-fault messages read (`missing_faults + minor_faults`).
    pub faults: u64,
    /// Of those, missing faults (no page in the backing yet: served by copy or zero).
    pub missing_faults: u64,
    /// Of those, minor faults (page in the shared memory's page cache, not yet mapped in the
    /// registered range: served by `UFFDIO_CONTINUE`; 0 in [`UffdMode::Missing`]).
    pub minor_faults: u64,
    /// Minor faults resolved with `UFFDIO_CONTINUE` (the rest raced or failed).
    pub continues: u64,
    /// Pages mapped with `UFFDIO_CONTINUE` ahead of a minor fault (continue-ahead: the run
    /// starts at the faulting page alone and doubles, up to
    /// [`FAULT_AROUND_MAX_PAGES`](super::FAULT_AROUND_MAX_PAGES), while minor faults come in
    /// order; it stops at a page not in the page cache or already mapped), not in `continues`.
    pub continue_ahead: u64,
    /// Bytes of the registered shared memory the prefault cursor has put into the page cache
    /// so far (0 without `--uffd-prefault`).
    pub prefaulted_bytes: u64,
    /// Of those, write faults (`UFFD_PAGEFAULT_FLAG_WRITE`).
    pub write_faults: u64,
    /// Pages filled with `UFFDIO_COPY` from the source.
    pub copies: u64,
    /// Faults served zero: `UFFDIO_ZEROPAGE`, or with fault-around the faulting page of a
    /// zeroed block (`UFFDIO_COPY`).
    pub zeropages: u64,
    /// Faults another path had already served (`EEXIST`) or retried after `EAGAIN`.
    pub raced: u64,
    /// Pages the source was asked for (and returned data for: `copies`).
    pub source_reads: u64,
    /// `UFFD_EVENT_REMOVE` messages read.
    pub remove_events: u64,
    /// Pages those covered (served zero on their next fault).
    pub removed_pages: u64,
    /// Faults whose ioctl failed otherwise (the faulting thread is woken and faults again).
    pub errors: u64,
    /// Pages filled zero ahead of a fault (fault-around: [`PageSource::fault_around_pages`](super::PageSource::fault_around_pages)),
    /// not counted in `zeropages`.
    pub fault_around: u64,
    /// Pages copied from the source ahead of a fault (readahead: [`PageSource::read_ahead`](super::PageSource::read_ahead);
    /// the window starts at the faulting page alone and doubles, up to
    /// [`FAULT_AROUND_MAX_PAGES`](super::FAULT_AROUND_MAX_PAGES), while faults come in order), not counted in `copies`.
    pub read_ahead: u64,
    /// Total serve time in ns (message read → page in place).
    pub total_ns: u64,
    /// Longest serve time in ns.
    pub max_ns: u64,
    /// Serve-time histogram: `hist_ns_log2[i]` faults took `[2^i, 2^(i+1))` ns.
    pub hist_ns_log2: Vec<u64>,
}

impl UffdStats {
    pub(super) fn record(&mut self, ns: u64) {
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        if self.hist_ns_log2.len() != HIST_BUCKETS {
            self.hist_ns_log2 = vec![0; HIST_BUCKETS];
        }
        let b = (63 - ns.max(1).leading_zeros() as usize).min(HIST_BUCKETS - 1);
        self.hist_ns_log2[b] += 1;
    }

    /// The report's text section: counts, then the non-empty histogram buckets.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "-- userfaultfd: {} MiB registered ({}); {} faults ({} writes; {} missing, {} minor): {} from the source (+{} pages readahead), {} zero (+{} pages fault-around), {} continued (+{} pages ahead), {} raced, {} errors; {} REMOVE events ({} pages); {} MiB prefaulted",
            self.registered_bytes >> 20,
            match self.mode {
                UffdMode::Missing => "MISSING",
                UffdMode::MissingMinor => "MISSING|MINOR",
            },
            self.faults,
            self.write_faults,
            self.missing_faults,
            self.minor_faults,
            self.copies,
            self.read_ahead,
            self.zeropages,
            self.fault_around,
            self.continues,
            self.continue_ahead,
            self.raced,
            self.errors,
            self.remove_events,
            self.removed_pages,
            self.prefaulted_bytes >> 20
        );
        let _ = writeln!(
            o,
            "  serve time: mean {:.2} us, max {:.2} us; histogram (ns range: faults):",
            self.mean_ns() as f64 / 1000.0,
            self.max_ns as f64 / 1000.0
        );
        for (i, &n) in self.hist_ns_log2.iter().enumerate() {
            if n > 0 {
                let _ = writeln!(o, "    [{:>10}, {:>10}): {n}", 1u64 << i, 1u64 << (i + 1));
            }
        }
        o
    }

    /// Mean serve time in ns (0 without faults).
    pub fn mean_ns(&self) -> u64 {
        self.total_ns
            .checked_div(self.copies + self.zeropages + self.continues)
            .unwrap_or(0)
    }
}
