//! Kernel ELF loading with the `object` crate: validate an x86_64 ELF64 executable, copy its
//! PT_LOAD segments to their physical addresses (p_paddr) in guest RAM, zero the BSS tails.
//!
//! Every field is checked: a truncated, corrupt, wrong-arch or huge file, a segment outside
//! RAM or over the boot structures, overlapping segments, or an entry point outside an
//! executable segment is a [`LoaderError`], never a panic.

use crate::layout::{BOOT_INFO_GPA, KERNEL_PHYS_BASE};
use crate::memory::GuestRam;
use object::elf::{ELFCLASS64, EM_X86_64, ET_EXEC, PF_R, PF_W, PF_X, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader, Sym};
use object::Endianness;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Largest kernel file accepted, in bytes (64 MiB).
pub const MAX_KERNEL_FILE: u64 = 64 << 20;
/// Largest in-memory size (`p_memsz`) of one segment, in bytes (1 GiB): a tiny file may
/// declare a huge BSS, which would otherwise be zeroed byte by byte in host memory.
pub const MAX_SEGMENT_MEMSZ: u64 = 1 << 30;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// The file is larger than [`MAX_KERNEL_FILE`].
    #[error("kernel file is {bytes} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// File size in bytes.
        bytes: u64,
        /// Limit in bytes.
        max: u64,
    },
    /// Not a parseable ELF64 file.
    #[error("not a valid ELF64 file: {0}")]
    Parse(String),
    /// ELF of another machine or class.
    #[error("ELF is not x86_64 (e_machine {machine}, class {class})")]
    WrongArch {
        /// e_machine.
        machine: u16,
        /// EI_CLASS.
        class: u8,
    },
    /// Not an ET_EXEC file.
    #[error("ELF type {kind} is not ET_EXEC (a statically linked executable)")]
    NotExecutable {
        /// e_type.
        kind: u16,
    },
    /// No PT_LOAD segment.
    #[error("ELF has no loadable segment")]
    NoSegments,
    /// A segment is malformed (filesz > memsz, overflow, misaligned vaddr/paddr pair).
    #[error("segment {index} is malformed: {why}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A segment does not fit in guest RAM or covers the boot structures.
    #[error("segment {index} at GPA {gpa:#x} (+{size:#x}) lies outside usable guest RAM")]
    OutsideRam {
        /// Program header index.
        index: usize,
        /// First GPA.
        gpa: u64,
        /// memsz in bytes.
        size: u64,
    },
    /// Two segments overlap in guest-physical or guest-virtual space.
    #[error("segments {a} and {b} overlap")]
    Overlap {
        /// First index.
        a: usize,
        /// Second index.
        b: usize,
    },
    /// The entry point is not inside an executable segment.
    #[error("entry point {entry:#x} is not in an executable segment")]
    BadEntry {
        /// e_entry.
        entry: u64,
    },
    /// Writing guest memory failed.
    #[error("cannot write segment {index} to guest memory")]
    Write {
        /// Program header index.
        index: usize,
    },
}

/// One loaded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// GPA of the first byte (p_paddr).
    pub gpa: u64,
    /// GVA of the first byte (p_vaddr).
    pub gva: u64,
    /// Bytes in memory (p_memsz).
    pub memsz: u64,
    /// Readable / writable / executable (p_flags R W X).
    pub read: bool,
    /// PF_W.
    pub write: bool,
    /// PF_X.
    pub exec: bool,
}

/// The loaded kernel.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KernelImage {
    /// e_entry (a GVA).
    pub entry: u64,
    /// PT_LOAD segments, in file order.
    pub segments: Vec<Segment>,
    /// Lowest GPA used (page aligned down).
    pub phys_start: u64,
    /// One past the highest GPA used (page aligned up).
    pub phys_end: u64,
    /// GVA of [`memvisor_abi::PF_ASSIST_DONE_SYMBOL`] if the symbol table has it inside an
    /// executable segment; `None` turns host-assisted demand paging off.
    pub pf_assist_done: Option<u64>,
}

/// Validate `data` as our kernel and copy it into `ram`.
///
/// # Errors
/// See [`LoaderError`].
pub fn load(ram: &GuestRam, data: &[u8]) -> Result<KernelImage, LoaderError> {
    if data.len() as u64 > MAX_KERNEL_FILE {
        return Err(LoaderError::TooLarge {
            bytes: data.len() as u64,
            max: MAX_KERNEL_FILE,
        });
    }
    let header = object::elf::FileHeader64::<Endianness>::parse(data)
        .map_err(|e| LoaderError::Parse(e.to_string()))?;
    let endian = header
        .endian()
        .map_err(|e| LoaderError::Parse(e.to_string()))?;
    let machine = header.e_machine(endian);
    let class = header.e_ident().class;
    if machine != EM_X86_64 || class != ELFCLASS64 {
        return Err(LoaderError::WrongArch { machine, class });
    }
    let kind = header.e_type(endian);
    if kind != ET_EXEC {
        return Err(LoaderError::NotExecutable { kind });
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| LoaderError::Parse(e.to_string()))?;
    let mut segments = Vec::new();
    let mut files: Vec<&[u8]> = Vec::new();
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type(endian) != PT_LOAD {
            continue;
        }
        let (gpa, gva) = (ph.p_paddr(endian), ph.p_vaddr(endian));
        let (filesz, memsz) = (ph.p_filesz(endian), ph.p_memsz(endian));
        if filesz > memsz {
            return Err(LoaderError::BadSegment {
                index,
                why: "p_filesz exceeds p_memsz",
            });
        }
        if memsz == 0 {
            continue;
        }
        if memsz > MAX_SEGMENT_MEMSZ {
            return Err(LoaderError::BadSegment {
                index,
                why: "p_memsz exceeds the 1 GiB limit",
            });
        }
        if gpa % 4096 != gva % 4096 {
            return Err(LoaderError::BadSegment {
                index,
                why: "p_vaddr and p_paddr differ in their page offset",
            });
        }
        if gva.checked_add(memsz).is_none() || !crate::addr::is_canonical(gva) {
            return Err(LoaderError::BadSegment {
                index,
                why: "p_vaddr range overflows or is not canonical",
            });
        }
        let fits = gpa >= KERNEL_PHYS_BASE.min(BOOT_INFO_GPA + 0x1000) && ram.contains(gpa, memsz);
        if !fits {
            return Err(LoaderError::OutsideRam {
                index,
                gpa,
                size: memsz,
            });
        }
        let bytes = ph.data(endian, data).map_err(|_| LoaderError::BadSegment {
            index,
            why: "file data lies outside the file",
        })?;
        let flags = ph.p_flags(endian);
        segments.push((
            index,
            Segment {
                gpa,
                gva,
                memsz,
                read: flags & PF_R != 0,
                write: flags & PF_W != 0,
                exec: flags & PF_X != 0,
            },
        ));
        files.push(bytes);
    }
    if segments.is_empty() {
        return Err(LoaderError::NoSegments);
    }
    for (i, (ia, a)) in segments.iter().enumerate() {
        for (ib, b) in segments.iter().skip(i + 1) {
            let page = |x: u64| x & !0xfff;
            let end = |x: u64, n: u64| (x + n + 0xfff) & !0xfff;
            let phys = page(a.gpa) < end(b.gpa, b.memsz) && page(b.gpa) < end(a.gpa, a.memsz);
            let virt = page(a.gva) < end(b.gva, b.memsz) && page(b.gva) < end(a.gva, a.memsz);
            if phys || virt {
                return Err(LoaderError::Overlap { a: *ia, b: *ib });
            }
        }
    }
    let entry = header.e_entry(endian);
    let entry_ok = segments
        .iter()
        .any(|(_, s)| s.exec && entry >= s.gva && entry < s.gva + s.memsz);
    if !entry_ok {
        return Err(LoaderError::BadEntry { entry });
    }
    for ((index, seg), bytes) in segments.iter().zip(&files) {
        ram.mem
            .write_slice(bytes, GuestAddress(seg.gpa))
            .map_err(|_| LoaderError::Write { index: *index })?;
        // Zero the BSS tail in bounded pieces (no allocation of its size).
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut at = seg.gpa + bytes.len() as u64;
        let end = seg.gpa + seg.memsz;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            ram.mem
                .write_slice(&ZEROS[..n], GuestAddress(at))
                .map_err(|_| LoaderError::Write { index: *index })?;
            at += n as u64;
        }
    }
    let phys_start = segments
        .iter()
        .map(|(_, s)| s.gpa & !0xfff)
        .min()
        .unwrap_or(0);
    let phys_end = segments
        .iter()
        .map(|(_, s)| (s.gpa + s.memsz + 0xfff) & !0xfff)
        .max()
        .unwrap_or(0);
    let segments: Vec<Segment> = segments.into_iter().map(|(_, s)| s).collect();
    let pf_assist_done = find_symbol(header, endian, data, memvisor_abi::PF_ASSIST_DONE_SYMBOL)
        .filter(|&a| {
            segments
                .iter()
                .any(|s| s.exec && a >= s.gva && a < s.gva + s.memsz)
        });
    Ok(KernelImage {
        entry,
        segments,
        phys_start,
        phys_end,
        pf_assist_done,
    })
}

/// Value of the symbol `name` in the ELF symbol table, if there is one. A missing or corrupt
/// section or symbol table gives `None` (the symbol is optional).
fn find_symbol(
    header: &object::elf::FileHeader64<Endianness>,
    endian: Endianness,
    data: &[u8],
    name: &str,
) -> Option<u64> {
    let sections = header.sections(endian, data).ok()?;
    let symbols = sections
        .symbols(endian, data, object::elf::SHT_SYMTAB)
        .ok()?;
    symbols.iter().find_map(|sym| {
        let n = symbols.symbol_name(endian, sym).ok()?;
        (n == name.as_bytes()).then(|| sym.st_value(endian))
    })
}
