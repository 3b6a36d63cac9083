//! Host side of `stage2`: the stage-2 test layout ([`memvisor::stage2::Stage2`]) and its window's
//! first GPA in `BootInfo::arg[1]`.

use memvisor::scenario::{Prepare, Scenario};
use memvisor::space::SpaceError;

struct Stage2Layout;

/// A fresh host side.
pub fn new() -> Box<dyn Scenario> {
    Box::new(Stage2Layout)
}

impl Scenario for Stage2Layout {
    fn stage2_layout(&self) -> bool {
        true
    }

    fn prepare(&mut self, ctx: Prepare<'_>) -> Result<(), SpaceError> {
        ctx.boot_arg[1] = ctx.phys.stage2_base;
        Ok(())
    }
}
