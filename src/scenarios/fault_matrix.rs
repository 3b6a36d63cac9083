//! Host side of `fault-matrix` ([`crate::matrix`]): the test tables and plan before the run,
//! `MatrixSync` between passes, the verdicts in the report's `matrix` section.

use crate::matrix::{MatrixReport, MatrixRun};
use crate::report::Report;
use crate::scenario::{Prepare, Scenario};
use crate::space::{AddressSpace, SpaceError};
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

    fn finish(&mut self, report: &mut Report) {
        report.matrix = self.run.as_deref().and_then(MatrixReport::from_run);
    }
}
