//! Host side of `replay` (and `heap-bench`): the encoded traces ([`crate::replay::Trace`])
//! mapped read-only at [`BLOB_GVA`] before the guest starts. Run by `memvisor replay` and
//! `memvisor bench`, which pass the blob ([`with_blob`]); not selectable with `--scenario`.

use memvisor::layout::BLOB_GVA;
use memvisor::scenario::{Prepare, Scenario};
use memvisor::space::SpaceError;

/// The blob to map (none: the guest finds no trace and fails).
#[derive(Default)]
pub struct Blob {
    blob: Option<Vec<u8>>,
}

/// A fresh host side without a blob.
pub fn new() -> Box<dyn Scenario> {
    Box::new(Blob::default())
}

/// A host side that maps `blob` at [`BLOB_GVA`].
pub fn with_blob(blob: Vec<u8>) -> Box<dyn Scenario> {
    Box::new(Blob { blob: Some(blob) })
}

impl Scenario for Blob {
    fn listed(&self) -> bool {
        false
    }

    fn prepare(&mut self, ctx: Prepare<'_>) -> Result<(), SpaceError> {
        if let Some(b) = self.blob.take() {
            ctx.space.map_blob(BLOB_GVA, &b)?;
        }
        Ok(())
    }
}
