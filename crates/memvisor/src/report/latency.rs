//! Exit-handling latency: per exit reason, counts, total and maximum host handling time and
//! a log2 histogram.

use serde::Serialize;
use std::collections::BTreeMap;

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
