//! `memvisor snapshot-info`: open and validate a snapshot and its incremental layers without
//! running anything, and describe them (one line each).

use super::{Identity, Snapshot, SnapshotError};
use std::path::PathBuf;

/// Open `paths` as a base (first) and incremental layers on it (in order) for a VM of
/// identity `want`; returns one line per file: id, base, pages, state bytes.
///
/// # Errors
/// The first [`SnapshotError`] met (the file and the defect, one line).
pub fn describe(paths: &[PathBuf], want: Identity) -> Result<Vec<String>, SnapshotError> {
    let mut below = None;
    let mut out = Vec::new();
    for p in paths {
        let s = match below {
            None => Snapshot::open(p, want)?,
            Some(id) => Snapshot::open_layer(p, want, id)?,
        };
        out.push(format!(
            "{}: snapshot {:#x} ({}), {} pages, {} state bytes, {} MiB RAM, kernel CRC-32 {:#010x}",
            p.display(),
            s.id,
            if s.base_id == 0 {
                "full".to_string()
            } else {
                format!("incremental on {:#x}", s.base_id)
            },
            s.page_count(),
            s.state.len(),
            s.identity.mem_bytes >> 20,
            s.identity.kernel_crc
        ));
        below = Some(s.id);
    }
    Ok(out)
}
