//! How the kernel image is mapped: one mapping per `PT_LOAD` segment, W^X, in 4 KiB pages,
//! except that an executable segment may take **2 MiB pages**.
//!
//! Why 2 MiB text: on a host that shadows the guest's page tables in software (KVM's PVM
//! backend; README, "On a PVM host"), every flush of the shadow page tables drops every
//! translation, and the next fetch from each 4 KiB code page takes a shadow fault (one exit,
//! ~35 µs from ring 3). A flush follows every `munmap` of touched pages, so a program's code
//! pages are faulted in again after each one; with its text in one 2 MiB page, the first
//! fetch after a flush maps all of it (KVM maps a 2 MiB shadow page when the host backs the
//! range with a transparent huge page, which [`crate::memory`] advises for guest RAM;
//! otherwise it falls back to 4 KiB shadow pages and nothing else changes). Linux maps its
//! kernel text in 2 MiB pages for the same reason (TLB reach). Measured in BENCHMARKS.md,
//! "Tenth session".
//!
//! A segment takes 2 MiB pages only when that changes nothing else: it is executable, its
//! GVA and GPA are 2 MiB-aligned, its range rounded up to 2 MiB overlaps no other segment
//! (GVA or GPA), and the rounded GPA end lies inside the image (another segment follows),
//! so the frames between the segment's end and the 2 MiB boundary are reserved image
//! frames that no one else maps writable. The guest's linker script puts `.rodata` at the
//! next 2 MiB boundary after `.text` (`guest/kernel/link.ld`, `guest/sdk/link.ld`); an image
//! laid out otherwise is mapped in 4 KiB pages as before.

use crate::addr::{LARGE_PAGE_SIZE, PAGE_SIZE};
use crate::boot::loader::{KernelImage, Segment};
use crate::paging::{PageSize, Protection};

/// One mapping of the kernel image: `len` bytes from `gva` to `gpa` in pages of `size`,
/// with `prot` (the segment's R/W/X, always user-accessible: the guest runs in ring 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageMapping {
    /// Index of the segment in [`KernelImage::segments`].
    pub segment: usize,
    /// First GVA (aligned to `size`).
    pub gva: u64,
    /// First GPA (aligned to `size`).
    pub gpa: u64,
    /// Bytes mapped (a multiple of `size`).
    pub len: u64,
    /// Page size of every leaf.
    pub size: PageSize,
    /// Rights of the segment.
    pub prot: Protection,
}

/// The mappings of `image`'s segments, in segment order (see the module docs for when a
/// segment takes 2 MiB pages). W^X and the mmap window are checked by the caller.
pub fn image_mappings(image: &KernelImage) -> Vec<ImageMapping> {
    let segs = &image.segments;
    segs.iter()
        .enumerate()
        .map(|(i, s)| {
            let prot = if s.exec {
                Protection::USER_CODE
            } else if s.write {
                Protection::USER_DATA
            } else {
                Protection::USER_RODATA
            };
            let big = large_ok(i, segs, image.phys_end);
            let (unit, size) = if big {
                (LARGE_PAGE_SIZE, PageSize::Size2M)
            } else {
                (PAGE_SIZE, PageSize::Size4K)
            };
            let gva = s.gva & !(unit - 1);
            ImageMapping {
                segment: i,
                gva,
                gpa: s.gpa & !(unit - 1),
                len: (s.gva + s.memsz).div_ceil(unit) * unit - gva,
                size,
                prot,
            }
        })
        .collect()
}

/// May segment `i` of `segs` take 2 MiB pages (module docs)?
fn large_ok(i: usize, segs: &[Segment], phys_end: u64) -> bool {
    let s = &segs[i];
    let mask = LARGE_PAGE_SIZE - 1;
    if !s.exec || s.write || s.memsz == 0 || s.gva & mask != 0 || s.gpa & mask != 0 {
        return false;
    }
    let Some(len) = s
        .memsz
        .checked_next_multiple_of(LARGE_PAGE_SIZE)
        .filter(|&l| s.gva.checked_add(l).is_some())
    else {
        return false;
    };
    let Some(gpa_end) = s.gpa.checked_add(len).filter(|&e| e <= phys_end) else {
        return false;
    };
    let overlaps = |a: u64, n: u64, b: u64, m: u64| a < b.saturating_add(m) && b < a + n;
    segs.iter().enumerate().all(|(j, o)| {
        j == i
            || !(overlaps(s.gva, len, o.gva, o.memsz)
                || overlaps(s.gpa, gpa_end - s.gpa, o.gpa, o.memsz))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2: u64 = LARGE_PAGE_SIZE;
    const BASE_GVA: u64 = 0xffff_ffff_8000_0000;

    fn seg(gpa: u64, memsz: u64, write: bool, exec: bool) -> Segment {
        Segment {
            gpa,
            gva: BASE_GVA + gpa,
            memsz,
            read: true,
            write,
            exec,
        }
    }

    fn image(segments: Vec<Segment>) -> KernelImage {
        let phys_start = segments.iter().map(|s| s.gpa).min().unwrap_or(0) & !(PAGE_SIZE - 1);
        let phys_end = segments
            .iter()
            .map(|s| (s.gpa + s.memsz).div_ceil(PAGE_SIZE) * PAGE_SIZE)
            .max()
            .unwrap_or(0);
        KernelImage {
            entry: BASE_GVA + M2,
            segments,
            phys_start,
            phys_end,
            pf_assist_done: None,
            matrix_tramp: None,
        }
    }

    #[test]
    fn text_alone_in_its_2mib_takes_a_large_page() {
        // Our layout: text at 2 MiB, rodata at the next 2 MiB boundary, data after it.
        let img = image(vec![
            seg(M2, 0x7_15ee, false, true),
            seg(2 * M2, 0x8db4, false, false),
            seg(2 * M2 + 0x9000, 0x4_0000, true, false),
        ]);
        let m = image_mappings(&img);
        assert_eq!(
            m[0],
            ImageMapping {
                segment: 0,
                gva: BASE_GVA + M2,
                gpa: M2,
                len: M2,
                size: PageSize::Size2M,
                prot: Protection::USER_CODE,
            }
        );
        assert_eq!((m[1].size, m[1].len), (PageSize::Size4K, 0x9000));
        assert_eq!((m[2].size, m[2].len), (PageSize::Size4K, 0x4_0000));
        assert_eq!(m[2].prot, Protection::USER_DATA);
    }

    #[test]
    fn text_sharing_its_2mib_keeps_4kib_pages() {
        // rodata right after text (the old layout): a 2 MiB leaf would map rodata and
        // data frames executable.
        let img = image(vec![
            seg(M2, 0x7_15ee, false, true),
            seg(M2 + 0x7_2000, 0x8db4, false, false),
            seg(M2 + 0x7_b000, 0x4_0000, true, false),
        ]);
        let m = image_mappings(&img);
        assert_eq!((m[0].size, m[0].len), (PageSize::Size4K, 0x7_2000));
    }

    #[test]
    fn text_last_or_unaligned_keeps_4kib_pages() {
        // Nothing after the text: its 2 MiB tail would be frames outside the image.
        let last = image(vec![seg(M2, 0x1000, false, true)]);
        assert_eq!(image_mappings(&last)[0].size, PageSize::Size4K);
        // Not 2 MiB-aligned.
        let odd = image(vec![
            seg(M2 + 0x1000, 0x1000, false, true),
            seg(3 * M2, 0x1000, true, false),
        ]);
        assert_eq!(image_mappings(&odd)[0].size, PageSize::Size4K);
        // Writable data never takes a large page, aligned or not.
        let data = image(vec![
            seg(M2, 0x1000, true, false),
            seg(2 * M2, 0x1000, false, true),
            seg(3 * M2, 0x1000, false, false),
        ]);
        let m = image_mappings(&data);
        assert_eq!((m[0].size, m[1].size), (PageSize::Size4K, PageSize::Size2M));
    }
}
