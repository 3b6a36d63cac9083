//! Shared-memory backing of guest RAM ([`RamBacking::Shm`]): one `memfd_create(2)` file holds
//! all of RAM (the RAM ranges one after another, in GPA order), mapped `MAP_SHARED` once per
//! RAM region for vm-memory and KVM's memslots, and once more whole as the **alias**: a second
//! mapping of the same pages that the VMM never registers with userfaultfd.
//!
//! The alias is what makes userfaultfd's MINOR mode useful (Linux
//! `Documentation/admin-guide/mm/userfaultfd.rst`, "minor faults"; QEMU postcopy and KVM
//! selftests' `demand_paging_test -u MINOR -s shmem` use the same pattern): the VMM fills a
//! page's contents into the file's page cache through the alias (no fault: the alias is not
//! registered), and the guest's first touch of that page through the registered mapping is then
//! a *minor* fault, resolved with `UFFDIO_CONTINUE` (map the page-cache page, copy nothing).
//!
//! Discarding pages of shared memory needs a hole punched in the file
//! (`fallocate(FALLOC_FL_PUNCH_HOLE)`, or `madvise(MADV_REMOVE)` on a mapping, which also
//! raises `UFFD_EVENT_REMOVE`): `MADV_DONTNEED` only unmaps, and the old page would come back
//! from the page cache on the next touch.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use thiserror::Error;

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RamBacking {
    /// Private anonymous memory (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`; the default).
    #[default]
    Anonymous,
    /// A `memfd_create` file mapped `MAP_SHARED | MAP_NORESERVE`, with an unregistered alias
    /// mapping ([`ShmBacking`]); with userfaultfd, registered MISSING | MINOR.
    Shm,
}

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ShmError {
    /// A system call on the memfd failed.
    #[error("shared-memory guest RAM ({bytes} bytes): {what} failed: {source}")]
    Sys {
        /// Which call.
        what: &'static str,
        /// RAM size in bytes.
        bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// A file range is empty, not 4 KiB aligned, or beyond the file.
    #[error("shared-memory range at file offset {offset:#x} (+{len:#x} bytes) is empty, not 4 KiB aligned or beyond the {size:#x}-byte file")]
    BadRange {
        /// File offset in bytes.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// File size in bytes.
        size: u64,
    },
}

/// The memfd behind shared-memory RAM and its alias mapping (unmapped on drop).
#[derive(Debug)]
pub struct ShmBacking {
    file: File,
    alias: u64,
    size: u64,
}

impl ShmBacking {
    /// A memfd of `size` bytes (sparse: nothing is allocated) and its alias mapping.
    ///
    /// # Errors
    /// [`ShmError::Sys`] when `memfd_create`, `ftruncate` or `mmap` fails.
    pub fn create(size: u64) -> Result<ShmBacking, ShmError> {
        let sys = |what| {
            move |source| ShmError::Sys {
                what,
                bytes: size,
                source,
            }
        };
        // SAFETY: a NUL-terminated name; the returned descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"memvisor-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(sys("memfd_create")(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(sys("ftruncate"))?;
        // SAFETY: a new shared mapping of the whole file at an address the kernel picks; it is
        // owned by the returned value and unmapped in its Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys("mmap (alias)")(io::Error::last_os_error()));
        }
        Ok(ShmBacking {
            file,
            alias: p as u64,
            size,
        })
    }

    /// The memfd (for vm-memory's `FileOffset`s).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// File size in bytes (= guest RAM size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address (HVA) of file offset `offset` in the alias mapping.
    pub fn alias_hva(&self, offset: u64) -> Option<u64> {
        (offset < self.size).then(|| self.alias + offset)
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        let ok = len > 0
            && offset % 4096 == 0
            && len % 4096 == 0
            && offset.checked_add(len).is_some_and(|e| e <= self.size);
        if ok {
            Ok(())
        } else {
            Err(ShmError::BadRange {
                offset,
                len,
                size: self.size,
            })
        }
    }

    /// Put zeroed pages into the page cache for `[offset, offset + len)` of the file
    /// (`fallocate(2)` mode 0; pages already there keep their contents). No mapping sees a
    /// fault for this: with userfaultfd MINOR mode, the next touch of such a page through a
    /// registered mapping is a minor fault.
    ///
    /// # Errors
    /// [`ShmError::BadRange`], or [`ShmError::Sys`] (e.g. `ENOSPC` when the host's shmem
    /// is full).
    pub fn populate(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: plain system call on our descriptor, range checked inside the file.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, offset as i64, len as i64) };
        if rc != 0 {
            return Err(ShmError::Sys {
                what: "fallocate",
                bytes: self.size,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Write `data` at file offset `offset` through the alias mapping (into the page cache,
    /// raising no userfaultfd event): the pages' next touch through a MINOR-registered mapping
    /// is a minor fault that finds `data`.
    ///
    /// # Errors
    /// [`ShmError::BadRange`] unless `offset` is 4 KiB aligned and the data fit in the file.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ShmError> {
        let len = (data.len() as u64).div_ceil(4096) * 4096;
        self.check(offset, len)?;
        // SAFETY: the destination lies inside the alias mapping (checked), which lives as long
        // as `self`; the source is a live slice that cannot overlap a mapping of ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.alias + offset) as *mut u8,
                data.len(),
            )
        };
        Ok(())
    }

    /// Free `[offset, offset + len)` of the file (`fallocate(FALLOC_FL_PUNCH_HOLE |
    /// FALLOC_FL_KEEP_SIZE)`): the pages leave the page cache and every mapping, and read as
    /// zero afterwards. Raises no userfaultfd event (use `madvise(MADV_REMOVE)` on a
    /// registered mapping for that).
    ///
    /// # Errors
    /// [`ShmError::BadRange`] or [`ShmError::Sys`].
    pub fn punch(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        self.check(offset, len)?;
        // SAFETY: plain system call on our descriptor, range checked inside the file.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as i64,
                len as i64,
            )
        };
        if rc != 0 {
            return Err(ShmError::Sys {
                what: "fallocate(PUNCH_HOLE)",
                bytes: self.size,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for ShmBacking {
    fn drop(&mut self) {
        // SAFETY: exactly the alias mapping created in `create`, unmapped once; nothing
        // borrows it past `self`.
        unsafe { libc::munmap(self.alias as *mut libc::c_void, self.size as usize) };
    }
}
