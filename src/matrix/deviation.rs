//! Known deviations of emulated hosts from the SDM (`memvisor run --known-deviation NAME`).
//!
//! The oracle stays the SDM: by default a deviating case is a failure. Naming a known
//! deviation re-classifies exactly the failing cases that differ in the documented way — every
//! other observation equal — as `deviation`, counted apart from pass, fail and skipped. Any
//! other mismatch stays a failure.

use super::oracle;
use super::results::{CaseStatus, MatrixReport};
use std::sync::Arc;
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviationError {
    /// The name is not a known deviation.
    #[error("unknown deviation {name:?} (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
}

/// A documented departure of an emulated CPU from the SDM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownDeviation {
    /// QEMU TCG (7.2) reports a reserved-bit #PF with error code RSVD but without P (e.g.
    /// 0x8 where SDM Vol. 3A §4.7 gives 0x9: a reserved bit is only checked in a present
    /// entry, so P is always 1). Re-classified: the oracle's error code has P and RSVD, the
    /// guest saw exactly that code without P, and CR2, the record and the leaf afterwards
    /// match.
    QemuTcgRsvdP,
}

impl KnownDeviation {
    /// Every known deviation.
    pub const ALL: [KnownDeviation; 1] = [KnownDeviation::QemuTcgRsvdP];

    /// Its option value.
    pub fn name(self) -> &'static str {
        match self {
            KnownDeviation::QemuTcgRsvdP => "qemu-tcg-rsvd-p",
        }
    }

    /// One line saying what it is (the `deviation_by` key).
    pub fn what(self) -> &'static str {
        match self {
            KnownDeviation::QemuTcgRsvdP => {
                "qemu-tcg-rsvd-p: reserved-bit #PF reported without P (QEMU TCG; SDM Vol. 3A §4.7 sets P)"
            }
        }
    }

    /// Parse an option value.
    ///
    /// # Errors
    /// [`DeviationError::Unknown`].
    pub fn parse(name: &str) -> Result<Self, DeviationError> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| DeviationError::Unknown {
                name: name.to_string(),
                known: Self::ALL.map(|d| d.name()).join(", "),
            })
    }

    /// True if a case whose oracle says `expected` (error code, or `None` for no fault)
    /// and that observed `err` (with CR2, record and leaf already equal) deviates this way.
    pub fn explains(self, expected: Option<u64>, err: u64) -> bool {
        match self {
            KnownDeviation::QemuTcgRsvdP => {
                const P: u64 = 1;
                const RSVD: u64 = 1 << 3;
                expected.is_some_and(|e| e & (P | RSVD) == (P | RSVD) && err == e & !P)
            }
        }
    }
}

impl MatrixReport {
    /// Re-classify the failing cases `dev` explains as [`CaseStatus::Deviation`] and update
    /// the totals (`fail` down, `deviation` up, `deviation_by`, the first failures).
    pub fn apply_known_deviation(&mut self, dev: KnownDeviation) {
        let phys_bits = self.summary.phys_bits;
        let data = Arc::make_mut(&mut self.data);
        let n = data.vas.len();
        let mut moved = 0u64;
        for (i, r) in data.results.iter_mut().enumerate() {
            if r.status != CaseStatus::Fail || !r.record_ok || n == 0 {
                continue;
            }
            let (t, spec) = (&data.vas[i % n], &data.passes[i / n]);
            let exp = oracle::expect(&t.entries, spec.access, spec.cpl, spec.mode, phys_bits);
            let leaf_ok = data
                .leaf_raw
                .get(i % n)
                .is_some_and(|&raw| r.pte_after == raw | (exp.leaf_after & 0x60));
            if leaf_ok && r.cr2 == t.va && dev.explains(exp.fault, r.err) {
                r.status = CaseStatus::Deviation;
                moved += 1;
            }
        }
        if moved == 0 {
            return;
        }
        let s = &mut data.summary;
        s.fail -= moved;
        s.deviation += moved;
        *s.deviation_by.entry(dev.what().to_string()).or_default() += moved;
        let failures = data
            .rows()
            .filter(|r| r.status == CaseStatus::Fail)
            .take(20)
            .map(|r| r.to_tsv())
            .collect();
        data.summary.failures = failures;
        self.summary = data.summary.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_exact_rule() {
        assert_eq!(
            KnownDeviation::parse("qemu-tcg-rsvd-p"),
            Ok(KnownDeviation::QemuTcgRsvdP)
        );
        assert!(KnownDeviation::parse("qemu").is_err());
        let d = KnownDeviation::QemuTcgRsvdP;
        // P | RSVD (| W | U | I/D) seen without P: explained.
        assert!(d.explains(Some(0x9), 0x8));
        assert!(d.explains(Some(0x1f), 0x1e));
        // Anything else is not.
        assert!(!d.explains(Some(0x9), 0x9)); // a pass, not a deviation
        assert!(!d.explains(Some(0x9), 0xa)); // another bit differs too
        assert!(!d.explains(Some(0x9), 0x0));
        assert!(!d.explains(Some(0x7), 0x6)); // not a reserved-bit fault
        assert!(!d.explains(None, 0x8));
    }
}
