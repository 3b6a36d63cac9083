//! Snapshot files: a versioned, checksummed container for a guest's sparse memory (only pages
//! ever written) and opaque state sections, read lazily (a page at a time, for the uffd
//! handler: [`SnapshotSource`]), with incremental layers on top of a base.
//!
//! # Format, version 2 (all integers little-endian)
//!
//! ```text
//! header (64 bytes)
//!   0  magic         8 bytes  "MVSNAP\0\x01"
//!   8  version       u32      2
//!  12  flags         u32      bit 0: incremental (layered on the snapshot `base_id`)
//!  16  mem_bytes     u64      guest RAM the snapshot was taken with
//!  24  kernel_len    u64      length of the guest kernel ELF
//!  32  kernel_crc    u32      CRC-32 (IEEE) of the guest kernel ELF
//!  36  sections      u32      number of sections that follow
//!  40  id            u64      this snapshot's id (CRC-32 of its index, with the time in ns)
//!  48  base_id       u64      the id of the layer below (0 for a full snapshot)
//!  56  header_crc    u32      CRC-32 of bytes 0..56
//!  60  reserved      u32      0
//! sections, each: kind u32, reserved u32, len u64, crc u32, reserved u32, then len bytes
//!   kind 1  STATE    opaque state blob (vCPU and VMM state; crc over the blob)
//!   kind 2  PAGES    index: count u64, then count × (gpa u64, page_crc u32, reserved u32);
//!                    then count × 4096 bytes of page data in index order.
//!                    `crc` covers the count and the index only; each page's own CRC-32 is
//!                    checked when the page is read, so opening stays O(index), not O(RAM).
//! ```
//!
//! A file is written to `.NAME.tmp` beside the target, synced, and renamed over it: never a
//! partial file under the final name. [`Snapshot::open`] refuses a truncated file, a bad
//! magic, another version, a bad header or section checksum, a RAM size or guest kernel other
//! than the caller's, before anything runs; [`Snapshot::open_layer`] also checks `base_id`.
//! Sources of the approach: Firecracker's snapshot format (versioned state file with a CRC64,
//! memory served by a uffd handler), Linux `Documentation/admin-guide/mm/userfaultfd.rst`.

mod info;
mod source;
pub use info::describe;
pub use source::{RestoreStats, SnapshotSource, SourceCounters};

use crate::uffd::PAGE;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File magic.
pub const MAGIC: [u8; 8] = *b"MVSNAP\0\x01";
/// The format version this build writes and reads. Version 2 (STATE version 2) stores the
/// zone bitmaps run-length coded (`memvisor_frames`' `BitmapAllocator` encoding); version 1
/// files are refused with [`SnapshotError::Version`].
pub const VERSION: u32 = 2;
const HEADER: usize = 64;
const SECTION_HEADER: usize = 24;
const KIND_STATE: u32 = 1;
const KIND_PAGES: u32 = 2;
const FLAG_INCREMENTAL: u32 = 1;

/// Errors of this module (each names the file and what is wrong, on one line).
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The file could not be read or written.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file ends before the structure that needs it.
    #[error("snapshot {path}: truncated: {what} needs bytes up to {need}, the file has {have}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// File size.
        have: u64,
    },
    /// Not a memvisor snapshot.
    #[error("snapshot {path}: not a memvisor snapshot (bad magic)")]
    Magic {
        /// The file.
        path: PathBuf,
    },
    /// Another format version.
    #[error("snapshot {path}: format version {found}, this memvisor reads version {supported}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version supported.
        supported: u32,
    },
    /// A checksum does not match.
    #[error("snapshot {path}: corrupt {what} (CRC-32 {found:#010x}, expected {expected:#010x})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which part.
        what: String,
        /// CRC computed.
        found: u32,
        /// CRC recorded.
        expected: u32,
    },
    /// A structural defect (unknown section, duplicate page, unaligned GPA, ...).
    #[error("snapshot {path}: malformed: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Taken with another RAM size.
    #[error("snapshot {path}: taken with {file} bytes of guest RAM, this VM has {expected}")]
    MemSize {
        /// The file.
        path: PathBuf,
        /// RAM size in the file.
        file: u64,
        /// RAM size of the VM.
        expected: u64,
    },
    /// Taken with another guest kernel.
    #[error("snapshot {path}: taken with another guest kernel ({file_len} bytes, CRC-32 {file_crc:#010x}; this one: {len} bytes, {crc:#010x})")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// Kernel length in the file.
        file_len: u64,
        /// Kernel CRC in the file.
        file_crc: u32,
        /// This kernel's length.
        len: u64,
        /// This kernel's CRC.
        crc: u32,
    },
    /// An incremental layer on the wrong base (or a full snapshot given as a layer).
    #[error("snapshot {path}: layered on snapshot {base:#x}, but the layer below is {below:#x}")]
    WrongBase {
        /// The file.
        path: PathBuf,
        /// `base_id` in the file.
        base: u64,
        /// Id of the layer below.
        below: u64,
    },
}

/// What a snapshot is taken of: the VM it must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Guest RAM in bytes.
    pub mem_bytes: u64,
    /// Guest kernel ELF length.
    pub kernel_len: u64,
    /// Guest kernel ELF CRC-32.
    pub kernel_crc: u32,
}

impl Identity {
    /// The identity of a VM with `mem_bytes` of RAM running the kernel ELF `kernel`.
    pub fn of(mem_bytes: u64, kernel: &[u8]) -> Identity {
        Identity {
            mem_bytes,
            kernel_len: kernel.len() as u64,
            kernel_crc: crc32fast::hash(kernel),
        }
    }
}

/// Write a snapshot: `state` (opaque), and `pages` as `(gpa, 4 KiB of data)` in any order
/// (GPAs 4 KiB aligned, each once). `base_id` makes it an incremental layer on that snapshot.
/// Returns the new snapshot's id.
///
/// # Errors
/// [`SnapshotError::Malformed`] for an unaligned or repeated GPA, [`SnapshotError::Io`].
pub fn write(
    path: &Path,
    id: Identity,
    base_id: Option<u64>,
    state: &[u8],
    pages: &[(u64, &[u8; PAGE as usize])],
) -> Result<u64, SnapshotError> {
    let io_err = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut seen = std::collections::HashSet::new();
    let mut index = Vec::with_capacity(8 + pages.len() * 16);
    index.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for &(gpa, data) in pages {
        if gpa % PAGE != 0 || !seen.insert(gpa) {
            return Err(SnapshotError::Malformed {
                path: path.to_path_buf(),
                why: format!("page GPA {gpa:#x} unaligned or repeated"),
            });
        }
        index.extend_from_slice(&gpa.to_le_bytes());
        index.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        index.extend_from_slice(&0u32.to_le_bytes());
    }
    let index_crc = crc32fast::hash(&index);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let snap_id = (now << 32 | index_crc as u64).max(1);
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    let flags = if base_id.is_some() {
        FLAG_INCREMENTAL
    } else {
        0
    };
    header.extend_from_slice(&flags.to_le_bytes());
    header.extend_from_slice(&id.mem_bytes.to_le_bytes());
    header.extend_from_slice(&id.kernel_len.to_le_bytes());
    header.extend_from_slice(&id.kernel_crc.to_le_bytes());
    header.extend_from_slice(&2u32.to_le_bytes());
    header.extend_from_slice(&snap_id.to_le_bytes());
    header.extend_from_slice(&base_id.unwrap_or(0).to_le_bytes());
    let hcrc = crc32fast::hash(&header);
    header.extend_from_slice(&hcrc.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| -> io::Result<()> {
        let f = File::create(&tmp)?;
        let mut w = io::BufWriter::new(&f);
        w.write_all(&header)?;
        write_section(
            &mut w,
            KIND_STATE,
            state.len() as u64,
            crc32fast::hash(state),
        )?;
        w.write_all(state)?;
        let pages_len = index.len() as u64 + pages.len() as u64 * PAGE;
        write_section(&mut w, KIND_PAGES, pages_len, index_crc)?;
        w.write_all(&index)?;
        for &(_, data) in pages {
            w.write_all(data)?;
        }
        w.flush()?;
        drop(w);
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(snap_id)
}

fn write_section(w: &mut impl Write, kind: u32, len: u64, crc: u32) -> io::Result<()> {
    w.write_all(&kind.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&crc.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// An opened, validated snapshot file; pages are read from it on demand.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    file: File,
    /// This snapshot's id.
    pub id: u64,
    /// The id of the layer below (0: a full snapshot).
    pub base_id: u64,
    /// The VM it was taken of.
    pub identity: Identity,
    /// The state section.
    pub state: Vec<u8>,
    /// GPA -> (file offset of the data, CRC-32 of the page).
    pages: HashMap<u64, (u64, u32)>,
}

impl Snapshot {
    /// Open and validate a full snapshot for a VM of identity `want`: header, checksums of
    /// the header, the state and the page index, RAM size and guest kernel. Page data is
    /// checked page by page when read.
    ///
    /// # Errors
    /// Every [`SnapshotError`] but `WrongBase` (an incremental file given as a full one is
    /// `WrongBase` too).
    pub fn open(path: &Path, want: Identity) -> Result<Snapshot, SnapshotError> {
        let s = Self::open_any(path, want)?;
        if s.base_id != 0 {
            return Err(SnapshotError::WrongBase {
                path: path.to_path_buf(),
                base: s.base_id,
                below: 0,
            });
        }
        Ok(s)
    }

    /// Open an incremental layer that must sit on the snapshot with id `below`.
    ///
    /// # Errors
    /// As [`Snapshot::open`], and [`SnapshotError::WrongBase`].
    pub fn open_layer(path: &Path, want: Identity, below: u64) -> Result<Snapshot, SnapshotError> {
        let s = Self::open_any(path, want)?;
        if s.base_id != below {
            return Err(SnapshotError::WrongBase {
                path: path.to_path_buf(),
                base: s.base_id,
                below,
            });
        }
        Ok(s)
    }

    fn open_any(path: &Path, want: Identity) -> Result<Snapshot, SnapshotError> {
        let p = || path.to_path_buf();
        let io_err = |source| SnapshotError::Io { path: p(), source };
        let file = File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let truncated = |what, need: u64| SnapshotError::Truncated {
            path: p(),
            what,
            need,
            have: size,
        };
        let h = read_header(&file, path, size)?;
        let identity = Identity {
            mem_bytes: le_u64(&h, 16),
            kernel_len: le_u64(&h, 24),
            kernel_crc: le_u32(&h, 32),
        };
        if identity.mem_bytes != want.mem_bytes {
            return Err(SnapshotError::MemSize {
                path: p(),
                file: identity.mem_bytes,
                expected: want.mem_bytes,
            });
        }
        if (identity.kernel_len, identity.kernel_crc) != (want.kernel_len, want.kernel_crc) {
            return Err(SnapshotError::Kernel {
                path: p(),
                file_len: identity.kernel_len,
                file_crc: identity.kernel_crc,
                len: want.kernel_len,
                crc: want.kernel_crc,
            });
        }
        let flags = le_u32(&h, 12);
        let (id, base_id) = (le_u64(&h, 40), le_u64(&h, 48));
        if (flags & FLAG_INCREMENTAL != 0) != (base_id != 0) || flags & !FLAG_INCREMENTAL != 0 {
            return Err(SnapshotError::Malformed {
                path: p(),
                why: format!("flags {flags:#x} disagree with base id {base_id:#x}"),
            });
        }
        let nsections = le_u32(&h, 36);
        let mut at = HEADER as u64;
        let mut state = None;
        let mut pages = None;
        for _ in 0..nsections {
            let end = at + SECTION_HEADER as u64;
            if end > size {
                return Err(truncated("a section header", end));
            }
            let mut sh = [0u8; SECTION_HEADER];
            file.read_exact_at(&mut sh, at).map_err(io_err)?;
            let (kind, len, crc) = (le_u32(&sh, 0), le_u64(&sh, 8), le_u32(&sh, 16));
            let body = end;
            let body_end = body
                .checked_add(len)
                .ok_or_else(|| truncated("a section", u64::MAX))?;
            if body_end > size {
                return Err(truncated(
                    if kind == KIND_PAGES {
                        "the page section"
                    } else {
                        "the state section"
                    },
                    body_end,
                ));
            }
            match kind {
                KIND_STATE if state.is_none() => {
                    let mut blob = vec![0u8; len as usize];
                    file.read_exact_at(&mut blob, body).map_err(io_err)?;
                    let c = crc32fast::hash(&blob);
                    if c != crc {
                        return Err(SnapshotError::Corrupt {
                            path: p(),
                            what: "state section".into(),
                            found: c,
                            expected: crc,
                        });
                    }
                    state = Some(blob);
                }
                KIND_PAGES if pages.is_none() => {
                    pages = Some(read_index(&file, &p(), body, len, crc, size)?);
                }
                _ => {
                    return Err(SnapshotError::Malformed {
                        path: p(),
                        why: format!("unknown or repeated section kind {kind}"),
                    })
                }
            }
            at = body_end;
        }
        if at != size {
            return Err(SnapshotError::Malformed {
                path: p(),
                why: format!("{} bytes after the last section", size - at),
            });
        }
        let (Some(state), Some(pages)) = (state, pages) else {
            return Err(SnapshotError::Malformed {
                path: p(),
                why: "a state or page section is missing".into(),
            });
        };
        if let Some((&gpa, _)) = pages
            .iter()
            .find(|(&g, _)| g.checked_add(PAGE).is_none_or(|e| e > MAX_GPA))
        {
            return Err(SnapshotError::Malformed {
                path: p(),
                why: format!("page GPA {gpa:#x} out of range"),
            });
        }
        Ok(Snapshot {
            path: path.to_path_buf(),
            file,
            id,
            base_id,
            identity,
            state,
            pages,
        })
    }

    /// GPAs of the pages this file holds, ascending.
    pub fn gpas(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.pages.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Pages in the file.
    pub fn page_count(&self) -> u64 {
        self.pages.len() as u64
    }

    /// Read every page once and check its CRC-32 (O(pages in the file), not O(RAM)): a
    /// restore that must refuse a corrupt file before the guest runs calls this; the pages
    /// are still served lazily afterwards.
    ///
    /// # Errors
    /// [`SnapshotError::Io`], or [`SnapshotError::Corrupt`] naming the first bad page.
    pub fn verify_pages(&self) -> Result<(), SnapshotError> {
        let mut buf = [0u8; PAGE as usize];
        for gpa in self.gpas() {
            self.read_page(gpa, &mut buf)?;
        }
        Ok(())
    }

    /// Read the page at `gpa` into `buf` if the file has it: `Ok(false)` if not.
    ///
    /// # Errors
    /// [`SnapshotError::Io`], or [`SnapshotError::Corrupt`] if its CRC-32 does not match.
    pub fn read_page(
        &self,
        gpa: u64,
        buf: &mut [u8; PAGE as usize],
    ) -> Result<bool, SnapshotError> {
        let Some(&(off, crc)) = self.pages.get(&gpa) else {
            return Ok(false);
        };
        self.file
            .read_exact_at(buf, off)
            .map_err(|source| SnapshotError::Io {
                path: self.path.clone(),
                source,
            })?;
        let c = crc32fast::hash(buf);
        if c != crc {
            return Err(SnapshotError::Corrupt {
                path: self.path.clone(),
                what: format!("page at GPA {gpa:#x}"),
                found: c,
                expected: crc,
            });
        }
        Ok(true)
    }
}

/// Read and check the header of an open file of `size` bytes: length, magic, version,
/// header CRC.
fn read_header(file: &File, path: &Path, size: u64) -> Result<[u8; HEADER], SnapshotError> {
    let p = || path.to_path_buf();
    let io_err = |source| SnapshotError::Io { path: p(), source };
    let truncated = |what, need: u64| SnapshotError::Truncated {
        path: p(),
        what,
        need,
        have: size,
    };
    if size < HEADER as u64 {
        // A short file with a wrong magic is not a snapshot at all.
        let mut m = vec![0u8; size as usize];
        file.read_exact_at(&mut m, 0).map_err(io_err)?;
        if !MAGIC.starts_with(&m[..m.len().min(8)]) {
            return Err(SnapshotError::Magic { path: p() });
        }
        return Err(truncated("the header", HEADER as u64));
    }
    let mut h = [0u8; HEADER];
    file.read_exact_at(&mut h, 0).map_err(io_err)?;
    if h[..8] != MAGIC {
        return Err(SnapshotError::Magic { path: p() });
    }
    let version = le_u32(&h, 8);
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: p(),
            found: version,
            supported: VERSION,
        });
    }
    let hcrc = crc32fast::hash(&h[..56]);
    if hcrc != le_u32(&h, 56) {
        return Err(SnapshotError::Corrupt {
            path: p(),
            what: "header".into(),
            found: hcrc,
            expected: le_u32(&h, 56),
        });
    }
    Ok(h)
}

/// The identity (RAM size, guest kernel length and CRC) recorded in the header of `path`,
/// after checking length, magic, version and the header CRC.
///
/// # Errors
/// [`SnapshotError::Io`], [`SnapshotError::Truncated`], [`SnapshotError::Magic`],
/// [`SnapshotError::Version`], [`SnapshotError::Corrupt`].
pub fn read_identity(path: &Path) -> Result<Identity, SnapshotError> {
    let io_err = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let h = read_header(&file, path, size)?;
    Ok(Identity {
        mem_bytes: le_u64(&h, 16),
        kernel_len: le_u64(&h, 24),
        kernel_crc: le_u32(&h, 32),
    })
}

/// Highest GPA a snapshot page may have (1 TiB of RAM above the MMIO hole).
const MAX_GPA: u64 = crate::layout::MAX_MEM_SIZE + crate::layout::MMIO_HOLE_END;

fn read_index(
    file: &File,
    path: &Path,
    body: u64,
    len: u64,
    crc: u32,
    size: u64,
) -> Result<HashMap<u64, (u64, u32)>, SnapshotError> {
    let p = || path.to_path_buf();
    let malformed = |why: String| SnapshotError::Malformed { path: p(), why };
    if len < 8 {
        return Err(malformed("page section shorter than its count".into()));
    }
    let mut c = [0u8; 8];
    file.read_exact_at(&mut c, body)
        .map_err(|source| SnapshotError::Io { path: p(), source })?;
    let count = u64::from_le_bytes(c);
    let need = count
        .checked_mul(16 + PAGE)
        .and_then(|n| n.checked_add(8))
        .ok_or_else(|| malformed(format!("page count {count} overflows")))?;
    if need != len {
        return Err(if body + need > size {
            SnapshotError::Truncated {
                path: p(),
                what: "the page section",
                need: body.saturating_add(need),
                have: size,
            }
        } else {
            malformed(format!("page section of {len} bytes for {count} pages"))
        });
    }
    let mut index = vec![0u8; 8 + count as usize * 16];
    file.read_exact_at(&mut index, body)
        .map_err(|source| SnapshotError::Io { path: p(), source })?;
    let found = crc32fast::hash(&index);
    if found != crc {
        return Err(SnapshotError::Corrupt {
            path: p(),
            what: "page index".into(),
            found,
            expected: crc,
        });
    }
    let data = body + 8 + count * 16;
    let mut pages = HashMap::with_capacity(count as usize);
    for i in 0..count as usize {
        let gpa = le_u64(&index, 8 + i * 16);
        let pcrc = le_u32(&index, 8 + i * 16 + 8);
        if gpa % PAGE != 0 || pages.insert(gpa, (data + i as u64 * PAGE, pcrc)).is_some() {
            return Err(malformed(format!(
                "page GPA {gpa:#x} unaligned or repeated"
            )));
        }
    }
    Ok(pages)
}

#[cfg(test)]
mod tests;
