//! Host side of `heap-bench` (run by `memvisor bench`): the sample traces' blob, as for
//! `replay` ([`super::replay::Blob`]).

/// A fresh host side without a blob.
pub fn new() -> Box<dyn memvisor::scenario::Scenario> {
    super::replay::new()
}

/// A host side that maps `blob` (the encoded sample traces) at `memvisor::layout::BLOB_GVA`.
pub fn new_with_blob(blob: Vec<u8>) -> Box<dyn memvisor::scenario::Scenario> {
    super::replay::with_blob(blob)
}
