//! Errors of both heaps. Every error about a pointer carries the address.

use core::fmt;

/// A family name copied into an error (truncated to 32 bytes on a character boundary).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NameBuf {
    bytes: [u8; 32],
    len: u8,
}

impl NameBuf {
    /// Copy `name`, truncating it to at most 32 bytes (on a UTF-8 character boundary).
    pub fn new(name: &str) -> Self {
        let mut len = name.len().min(32);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; 32];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        NameBuf {
            bytes,
            len: len as u8,
        }
    }

    /// The (possibly truncated) name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of [`crate::PageFamilies`] and [`crate::Mems`].
///
/// A failed call leaves the heap exactly as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapError {
    /// No page family has this id.
    UnknownFamily {
        /// The id that was asked for.
        id: usize,
    },
    /// No page family has this name.
    UnknownFamilyName {
        /// The name that was asked for (truncated to 32 bytes).
        name: NameBuf,
    },
    /// A family with this name is already registered (the seed asserts on this).
    FamilyExists {
        /// The duplicate name.
        name: &'static str,
    },
    /// All family slots are in use.
    TooManyFamilies {
        /// The fixed maximum ([`crate::page_family::MAX_FAMILIES`]).
        max: usize,
    },
    /// A family's struct size must be between 1 byte and
    /// [`crate::page_family::MAX_BLOCK_PAYLOAD`].
    InvalidStructSize {
        /// The struct size in bytes.
        size: usize,
    },
    /// The request is larger than the heap can serve (or its size computation overflows).
    TooLarge {
        /// Requested size in bytes (saturated on overflow).
        size: usize,
    },
    /// The page source refused to map pages.
    OutOfMemory {
        /// Number of 4 KiB pages that were asked for.
        pages: usize,
    },
    /// The alignment is not a power of two, or larger than the heap supports.
    InvalidAlignment {
        /// The alignment in bytes.
        align: usize,
    },
    /// The address lies in memory the heap owns but that is free: it was most likely freed
    /// before.
    DoubleFree {
        /// The address passed to free.
        addr: usize,
    },
    /// The pointer was never returned by this heap (not in a page it owns, not the start of a
    /// block, misaligned, or an interior pointer).
    InvalidPointer {
        /// The address passed in.
        addr: usize,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// In-band metadata failed a consistency check (e.g. a block header's magic bits were
    /// overwritten by a buffer overflow). The heap did not act on it.
    Corrupted {
        /// Address of the damaged metadata.
        addr: usize,
        /// What was wrong.
        reason: &'static str,
    },
}

impl fmt::Display for HeapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeapError::UnknownFamily { id } => write!(f, "unknown page family id {id}"),
            HeapError::UnknownFamilyName { name } => write!(f, "unknown page family `{name}`"),
            HeapError::FamilyExists { name } => {
                write!(f, "page family `{name}` is already registered")
            }
            HeapError::TooManyFamilies { max } => {
                write!(f, "too many page families (maximum {max})")
            }
            HeapError::InvalidStructSize { size } => write!(f, "invalid struct size {size} bytes"),
            HeapError::TooLarge { size } => write!(f, "request of {size} bytes is too large"),
            HeapError::OutOfMemory { pages } => {
                write!(f, "out of memory: the page source refused {pages} page(s)")
            }
            HeapError::InvalidAlignment { align } => write!(f, "unsupported alignment {align}"),
            HeapError::DoubleFree { addr } => {
                write!(f, "double free of {addr:#x}: the memory is already free")
            }
            HeapError::InvalidPointer { addr, reason } => {
                write!(f, "invalid pointer {addr:#x}: {reason}")
            }
            HeapError::Corrupted { addr, reason } => {
                write!(f, "heap metadata corrupted at {addr:#x}: {reason}")
            }
        }
    }
}
