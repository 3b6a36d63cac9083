//! Host side of `fault-matrix` ([`crate::matrix`]): the test tables and plan before the run,
//! `MatrixSync` between passes, the verdicts in the report's `matrix` section.

use crate::matrix::{MatrixReport, MatrixRun};
use memvisor::report::{Report, ScenarioSection};
use memvisor::scenario::{Prepare, Scenario};
use memvisor::space::{AddressSpace, SpaceError};
use memvisor_abi::{Hypercall, Status};
use std::time::Duration;

/// The run's matrix state (built by `prepare`).
#[derive(Default)]
struct FaultMatrix {
    run: Option<Box<MatrixRun>>,
}

/// A fresh host side.
pub fn new() -> Box<dyn Scenario> {
    Box::new(FaultMatrix::default())
}

impl Scenario for FaultMatrix {
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn options(&self) -> &'static [&'static str] {
        &["cases-out", "known-deviation"]
    }

    /// Half the passes run with EFER.NXE = 0, where NX is a reserved bit.
    fn no_nx(&self) -> bool {
        true
    }

    /// The LA57 variant needs a 5-level boot (CR4.LA57 cannot be set later).
    fn five_level(&self) -> bool {
        true
    }

    fn prepare(&mut self, ctx: Prepare<'_>) -> Result<(), SpaceError> {
        let (run, plan_gva) = crate::matrix::setup(ctx.space, ctx.phys_bits)?;
        ctx.boot_arg[0] = plan_gva;
        self.run = Some(run);
        Ok(())
    }

    fn control(&mut self, space: &mut AddressSpace, call: &Hypercall) -> Result<u64, Status> {
        match (call, self.run.as_mut()) {
            (&Hypercall::MatrixSync { ended, next }, Some(m)) => m.sync(space, ended, next),
            _ => Err(Status::NoSys),
        }
    }

    fn snapshot_safe(&self) -> bool {
        false
    }

    fn finish(&mut self, report: &mut Report) {
        report.section = self
            .run
            .as_deref()
            .and_then(MatrixReport::from_run)
            .map(|m| Box::new(m) as Box<dyn ScenarioSection>);
    }
}

/// The report's `matrix` section: passed when no case differs from the oracle.
impl ScenarioSection for MatrixReport {
    fn passed(&self) -> bool {
        self.summary.fail == 0
    }

    fn to_text(&self) -> String {
        MatrixReport::to_text(self)
    }

    fn clone_box(&self) -> Box<dyn ScenarioSection> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The fault matrix's section of `report` (`None` for another scenario, or when the guest did
/// not finish the matrix).
pub fn matrix_report(report: &Report) -> Option<&MatrixReport> {
    report.section.as_ref()?.as_any().downcast_ref()
}

/// [`matrix_report`], mutable (to apply a known deviation).
pub fn matrix_report_mut(report: &mut Report) -> Option<&mut MatrixReport> {
    report.section.as_mut()?.as_any_mut().downcast_mut()
}
