//! A figure's target and whether a run met it: `memvisor bench` marks every row met, missed or
//! for scale (no target) and sums up the missed ones. Targets are read from the table, never
//! asserted by a timed test; a missed target does not change the exit code.

use serde::Serialize;

/// What a figure should reach (value in the figure's unit; ratio = value / peer value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// No target: the row is there for scale.
    Scale,
    /// ratio <= this.
    RatioMax(f64),
    /// ratio >= this.
    RatioMin(f64),
    /// value <= this.
    ValueMax(f64),
    /// value >= this.
    ValueMin(f64),
    /// value <= the first and ratio <= the second.
    ValueAndRatioMax(f64, f64),
}

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The target was reached.
    Met,
    /// It was not (a value that could not be measured, NaN, misses every target).
    Missed,
    /// No target.
    ForScale,
}

impl Verdict {
    /// `met`, `MISSED` or `for scale` (the table's status column).
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::ForScale => "for scale",
        }
    }

    /// The JSON `met` field: true, false, or null for scale.
    pub fn met(self) -> Option<bool> {
        match self {
            Verdict::Met => Some(true),
            Verdict::Missed => Some(false),
            Verdict::ForScale => None,
        }
    }
}

impl Target {
    /// The target as text, e.g. `ratio <= 1.1` or `<= 5000 us`.
    pub fn text(self, unit: &str) -> String {
        match self {
            Target::Scale => "for scale".into(),
            Target::RatioMax(r) => format!("ratio <= {r}"),
            Target::RatioMin(r) => format!("ratio >= {r}"),
            Target::ValueMax(v) => format!("<= {v} {unit}"),
            Target::ValueMin(v) => format!(">= {v} {unit}"),
            Target::ValueAndRatioMax(v, r) => format!("<= {v} {unit}, ratio <= {r}"),
        }
    }

    /// The verdict for a measured `value` and `ratio` (NaN compares false: missed).
    pub fn verdict(self, value: f64, ratio: f64) -> Verdict {
        let ok = match self {
            Target::Scale => return Verdict::ForScale,
            Target::RatioMax(r) => ratio <= r,
            Target::RatioMin(r) => ratio >= r,
            Target::ValueMax(v) => value <= v,
            Target::ValueMin(v) => value >= v,
            Target::ValueAndRatioMax(v, r) => value <= v && ratio <= r,
        };
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        // The two misses.
        assert_eq!(Target::RatioMax(1.10).verdict(7.09, 7.09), Verdict::Missed);
        assert_eq!(Target::RatioMax(1.5).verdict(1.0, 1.59), Verdict::Missed);
        assert_eq!(Target::RatioMax(1.10).verdict(1.0, 1.10), Verdict::Met);
        assert_eq!(Target::RatioMin(1.0).verdict(0.0, 1.2), Verdict::Met);
        assert_eq!(Target::RatioMin(1.0).verdict(0.0, 0.9), Verdict::Missed);
        assert_eq!(Target::ValueMax(5000.0).verdict(4000.0, 9.0), Verdict::Met);
        assert_eq!(Target::ValueMin(90.0).verdict(89.9, 1.0), Verdict::Missed);
        let both = Target::ValueAndRatioMax(25.0, 0.33);
        assert_eq!(both.verdict(20.0, 0.3), Verdict::Met);
        assert_eq!(both.verdict(20.0, 0.5), Verdict::Missed);
        assert_eq!(both.verdict(30.0, 0.3), Verdict::Missed);
        assert_eq!(
            Target::RatioMax(2.0).verdict(1.0, f64::NAN),
            Verdict::Missed
        );
        assert_eq!(Target::Scale.verdict(f64::NAN, 1.0), Verdict::ForScale);
        assert_eq!(Verdict::ForScale.met(), None);
        assert_eq!(
            Target::ValueAndRatioMax(25.0, 0.33).text("ns"),
            "<= 25 ns, ratio <= 0.33"
        );
    }

    fn result(figures: Vec<super::super::Figure>) -> super::super::BenchResult {
        super::super::BenchResult {
            cpu: "test".into(),
            kvm_backend: "pvm".into(),
            tsc_khz: 1,
            quick: true,
            missed: Vec::new(),
            figures,
        }
    }

    #[test]
    fn table_marks_rows_and_sums_up_the_missed_ones() {
        use super::super::fig;
        let r = result(vec![
            fig(
                "null_hypercall_ring0",
                7.09,
                "ns",
                "bare",
                1.0,
                Target::RatioMax(1.10),
            ),
            fig(
                "demand_paging_fault_ring3",
                1.59,
                "ns",
                "bare",
                1.0,
                Target::RatioMax(1.5),
            ),
            fig(
                "null_hypercall_ring3",
                1.05,
                "ns",
                "bare",
                1.0,
                Target::RatioMax(1.10),
            ),
            fig(
                "host_linux_minor_fault",
                300.0,
                "ns",
                "bare",
                1.0,
                Target::Scale,
            ),
        ]);
        let t = r.table();
        let row = |name: &str| t.lines().find(|l| l.starts_with(&format!("| {name} |")));
        assert!(
            row("null_hypercall_ring0").is_some_and(|l| l.ends_with("| MISSED |")),
            "{t}"
        );
        assert!(
            row("null_hypercall_ring3").is_some_and(|l| l.ends_with("| met |")),
            "{t}"
        );
        assert!(
            row("host_linux_minor_fault").is_some_and(|l| l.ends_with("| for scale |")),
            "{t}"
        );
        assert_eq!(
            r.summary(),
            "targets: 2 of 3 MISSED: null_hypercall_ring0 (7.1 ns, ratio 7.09; target ratio <= 1.1); \
             demand_paging_fault_ring3 (1.6 ns, ratio 1.59; target ratio <= 1.5)"
        );
        assert!(t.contains(&r.summary()), "{t}");
        let j = serde_json::to_value(&r.figures[0]).unwrap_or_default();
        assert_eq!(
            (&j["met"], &j["verdict"]),
            (&serde_json::json!(false), &serde_json::json!("missed"))
        );
        let ok = result(vec![fig("a", 1.0, "ns", "b", 1.0, Target::RatioMax(1.1))]);
        assert_eq!(ok.summary(), "targets: all 1 met");
    }
}
