//! The direct map: every RAM range `[gpa, gpa + len)` mapped at `base + gpa`, with the
//! largest pages alignment allows (1 GiB only when the CPU has them), holes left unmapped:
//! the plan ([`direct_map_plan`]); [`Mapper::map_direct`](crate::Mapper::map_direct) maps it.

use super::{Operand, PageSize, PagingError, Result};
use crate::addr::{Gpa, Gva, PAGE_SIZE};

/// One `map_range` call of a direct map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectSegment {
    /// First GVA.
    pub gva: Gva,
    /// First GPA.
    pub gpa: Gpa,
    /// Length in bytes (a multiple of `size`).
    pub len: u64,
    /// Page size.
    pub size: PageSize,
}

/// Split the direct map of `ram` at `base` into segments of one page size each: 4 KiB up to
/// the first 2 MiB boundary, 2 MiB up to the first 1 GiB boundary (with `use_1g`), 1 GiB
/// pages, then 2 MiB and 4 KiB for the tail. A page size is used only where GVA and GPA are
/// both aligned to it. Zero-length ranges are skipped.
///
/// # Errors
/// [`PagingError::Misaligned`] if a range start or length or `base` is not 4 KiB aligned,
/// [`PagingError::LengthOverflow`] if `gpa + len` or `base + gpa + len` overflows,
/// [`PagingError::NonCanonical`] if `base` is not canonical.
pub fn direct_map_plan(base: Gva, ram: &[(Gpa, u64)], use_1g: bool) -> Result<Vec<DirectSegment>> {
    if !base.is_canonical() {
        return Err(PagingError::NonCanonical { gva: base.raw() });
    }
    if !base.is_aligned(PAGE_SIZE) {
        return Err(PagingError::Misaligned {
            what: Operand::Gva,
            value: base.raw(),
            align: PAGE_SIZE,
        });
    }
    let max = if use_1g {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    };
    // Largest page size at which GVA and GPA can both be aligned: limited by `base`.
    let sizes: Vec<PageSize> = PageSize::ALL
        .into_iter()
        .filter(|s| *s <= max && base.is_aligned(s.bytes()))
        .collect();
    let mut out = Vec::new();
    for &(gpa, len) in ram {
        if len == 0 {
            continue;
        }
        for (what, value) in [(Operand::Gpa, gpa.raw()), (Operand::Length, len)] {
            if value % PAGE_SIZE != 0 {
                return Err(PagingError::Misaligned {
                    what,
                    value,
                    align: PAGE_SIZE,
                });
            }
        }
        let overflow = PagingError::LengthOverflow {
            start: gpa.raw(),
            len,
        };
        let end = gpa.raw().checked_add(len).ok_or(overflow)?;
        // Last GVA must exist too.
        base.raw()
            .checked_add(end - 1)
            .ok_or(PagingError::LengthOverflow {
                start: base.raw(),
                len: end,
            })?;
        let mut c = gpa.raw();
        while c < end {
            // Largest size with `c` aligned and one page fitting.
            let k = (0..sizes.len())
                .rev()
                .find(|&k| c % sizes[k].bytes() == 0 && end - c >= sizes[k].bytes())
                .unwrap_or(0);
            let size = sizes.get(k).copied().unwrap_or(PageSize::Size4K);
            let step = size.bytes();
            // Run up to where the next larger size becomes usable (or the end).
            let limit = match sizes.get(k + 1) {
                Some(bigger) if c % bigger.bytes() != 0 => {
                    let next = (c | (bigger.bytes() - 1)).saturating_add(1);
                    next.min(end)
                }
                _ => end,
            };
            let n = ((limit - c) / step).max(1);
            let seg_len = n * step;
            out.push(DirectSegment {
                gva: Gva::new_truncate(base.raw() + c),
                gpa: Gpa::new(c),
                len: seg_len,
                size,
            });
            c += seg_len;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2: u64 = 2 << 20;
    const G1: u64 = 1 << 30;

    fn plan(base: u64, ram: &[(u64, u64)], use_1g: bool) -> Vec<(u64, u64, PageSize)> {
        let ram: Vec<_> = ram.iter().map(|&(g, l)| (Gpa::new(g), l)).collect();
        direct_map_plan(Gva::new(base), &ram, use_1g)
            .unwrap()
            .into_iter()
            .map(|s| {
                assert_eq!(s.gva.raw(), base + s.gpa.raw());
                (s.gpa.raw(), s.len, s.size)
            })
            .collect()
    }

    #[test]
    fn plan_splits_edges() {
        use PageSize::*;
        let base = 0xffff_8880_0000_0000;
        assert_eq!(plan(base, &[(0, 64 * G1)], false), [(0, 64 * G1, Size2M)]);
        assert_eq!(plan(base, &[(0, 64 * G1)], true), [(0, 64 * G1, Size1G)]);
        assert_eq!(
            plan(base, &[(0x1000, 3 * G1 - 0x2000)], true),
            [
                (0x1000, M2 - 0x1000, Size4K),
                (M2, G1 - M2, Size2M),
                (G1, G1, Size1G),
                (2 * G1, G1 - M2, Size2M),
                (3 * G1 - M2, M2 - 0x1000, Size4K),
            ]
        );
        assert_eq!(
            plan(base, &[(0x1000, 3 * G1)], true),
            [
                (0x1000, M2 - 0x1000, Size4K),
                (M2, G1 - M2, Size2M),
                (G1, 2 * G1, Size1G),
                (3 * G1, 0x1000, Size4K),
            ]
        );
        // Below 4 GiB with the MMIO hole, 2 MiB pages.
        assert_eq!(
            plan(base, &[(0, 3 * G1), (4 * G1, G1), (0, 0)], false),
            [(0, 3 * G1, Size2M), (4 * G1, G1, Size2M)]
        );
        // A small range inside one 2 MiB page.
        assert_eq!(
            plan(base, &[(0x5000, 0x3000)], true),
            [(0x5000, 0x3000, Size4K)]
        );
        // A base aligned only to 4 KiB forces 4 KiB pages.
        assert_eq!(plan(0x1000, &[(0, M2)], true), [(0, M2, Size4K)]);
        // 1 GiB aligned GPA but only 2 MiB of it.
        assert_eq!(
            plan(base, &[(G1, M2 + 0x1000)], true),
            [(G1, M2, Size2M), (G1 + M2, 0x1000, Size4K)]
        );
    }

    #[test]
    fn plan_rejects_bad_input() {
        let base = Gva::new(0xffff_8880_0000_0000);
        assert!(direct_map_plan(base, &[(Gpa::new(0x10), 0x1000)], false).is_err());
        assert!(direct_map_plan(base, &[(Gpa::new(0), 0x1001)], false).is_err());
        assert!(direct_map_plan(base, &[(Gpa::new(u64::MAX - 0xfff), 0x2000)], false).is_err());
        assert!(direct_map_plan(base, &[(Gpa::new(0), 0x0077_8000_0000_0000)], false).is_err());
        assert!(Gva::new_canonical(0x0000_8000_0000_0000).is_err());
        assert!(direct_map_plan(Gva::new(0x10), &[], false).is_err());
    }
}
