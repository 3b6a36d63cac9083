//! Argument and range checks of [`PageTables`] edits: hostile input is refused before
//! anything changes.

use super::pte::PteFlags;
use super::walk::Visit;
use super::{Operand, PageTables, PagingError, Result};
use crate::addr::{Gpa, Gva, Pfn};
use vm_memory::GuestMemoryBackend;

/// First address of the non-canonical hole (48-bit linear addresses).
const HOLE_START: u64 = 1 << 47;

/// Validate a GVA range of `len` bytes aligned to `align`; returns its last byte.
pub(super) fn check_va_range(gva: Gva, len: u64, align: u64) -> Result<u64> {
    if !gva.is_canonical() {
        return Err(PagingError::NonCanonical { gva: gva.raw() });
    }
    if !gva.is_aligned(align) {
        return Err(PagingError::Misaligned {
            what: Operand::Gva,
            value: gva.raw(),
            align,
        });
    }
    if len == 0 {
        return Err(PagingError::ZeroLength { gva });
    }
    if len % align != 0 {
        return Err(PagingError::Misaligned {
            what: Operand::Length,
            value: len,
            align,
        });
    }
    let last = gva
        .raw()
        .checked_add(len - 1)
        .ok_or(PagingError::LengthOverflow {
            start: gva.raw(),
            len,
        })?;
    // A high-half start cannot leave the high half without overflowing (checked above).
    if gva.raw() < HOLE_START && last >= HOLE_START {
        return Err(PagingError::NonCanonical { gva: HOLE_START });
    }
    Ok(last)
}

impl PageTables {
    pub(super) fn check_leaf_flags(&self, flags: PteFlags) -> Result<()> {
        if !flags.contains(PteFlags::PRESENT) {
            return Err(PagingError::MissingPresent { flags });
        }
        let mut allowed = PteFlags::LEAF_ALLOWED;
        if !self.config.nx_enabled {
            allowed.remove(PteFlags::NO_EXECUTE);
        }
        let unsupported = flags.bits() & !allowed.bits();
        if unsupported != 0 {
            return Err(PagingError::UnsupportedFlags { flags, unsupported });
        }
        Ok(())
    }

    /// Validate a GPA range; returns its last byte.
    pub(super) fn check_gpa_range(&self, gpa: Gpa, len: u64, align: u64) -> Result<u64> {
        if !gpa.is_aligned(align) {
            return Err(PagingError::Misaligned {
                what: Operand::Gpa,
                value: gpa.raw(),
                align,
            });
        }
        let last = len
            .checked_sub(1)
            .and_then(|l| gpa.raw().checked_add(l))
            .ok_or(PagingError::LengthOverflow {
                start: gpa.raw(),
                len,
            })?;
        if last >> self.config.phys_addr_bits != 0 {
            return Err(PagingError::GpaOutOfRange {
                gpa: gpa.raw(),
                len,
                phys_bits: self.config.phys_addr_bits,
            });
        }
        Ok(last)
    }

    /// No table frame may lie in the GPA range `[first, last]`.
    pub(super) fn check_no_table_in(&self, first: u64, last: u64) -> Result<()> {
        let lo = Pfn::new(first >> 12);
        let hi = Pfn::new(last >> 12);
        match self.tables.lowest_in(lo, hi) {
            Some(table) => Err(PagingError::WritableTableFrame {
                gpa: Gpa::new(first),
                table,
            }),
            None => Ok(()),
        }
    }

    /// Every page in `[first, last]` is mapped by leaves lying entirely inside the range;
    /// with `writable`, none of those leaves maps a table frame.
    pub(super) fn check_fully_mapped<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        first: u64,
        last: u64,
        writable: bool,
    ) -> Result<()> {
        // Contiguous GPA runs of the leaves, checked against the table frames run by run.
        let mut run: Option<(u64, u64)> = None;
        self.walk_range(mem, first, last, &mut |v| match v {
            Visit::Hole { va, .. } => Err(PagingError::NotMapped {
                gva: Gva::new_truncate(va),
            }),
            Visit::Leaf {
                va,
                base,
                size,
                pte,
            } => {
                let span_last = base + (size.bytes() - 1);
                if base < first || span_last > last {
                    return Err(PagingError::WouldSplitLargePage {
                        gva: Gva::new_truncate(va),
                        leaf_gva: Gva::new_truncate(base),
                        page_size: size,
                    });
                }
                if writable {
                    let g = pte.leaf_addr(size.level()).raw();
                    let g_last = g + (size.bytes() - 1);
                    match run {
                        Some((s, e)) if e.checked_add(1) == Some(g) => run = Some((s, g_last)),
                        Some((s, e)) => {
                            self.check_no_table_in(s, e)?;
                            run = Some((g, g_last));
                        }
                        None => run = Some((g, g_last)),
                    }
                }
                Ok(())
            }
        })?;
        if let Some((s, e)) = run {
            self.check_no_table_in(s, e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Operand;

    #[test]
    fn va_range_checks() {
        assert_eq!(
            check_va_range(Gva::new(0x1000), 0x2000, 4096).unwrap(),
            0x2fff
        );
        assert!(matches!(
            check_va_range(Gva::new(0x1001), 0x1000, 4096),
            Err(PagingError::Misaligned {
                what: Operand::Gva,
                ..
            })
        ));
        assert!(matches!(
            check_va_range(Gva::new(0x1000), 0x1001, 4096),
            Err(PagingError::Misaligned {
                what: Operand::Length,
                ..
            })
        ));
        assert!(matches!(
            check_va_range(Gva::new(0x1000), 0, 4096),
            Err(PagingError::ZeroLength { .. })
        ));
        // A non-canonical start cannot even be built as a Gva.
        assert!(Gva::new_canonical(0x0000_8000_0000_0000).is_err());
        assert!(matches!(
            check_va_range(Gva::new(0x7fff_ffff_f000), 0x2000, 4096),
            Err(PagingError::NonCanonical {
                gva: 0x0000_8000_0000_0000
            })
        ));
        assert!(matches!(
            check_va_range(Gva::new(0xffff_ffff_ffff_f000), 0x2000, 4096),
            Err(PagingError::LengthOverflow { .. })
        ));
        // The very last page of the address space is fine.
        assert_eq!(
            check_va_range(Gva::new(0xffff_ffff_ffff_f000), 0x1000, 4096).unwrap(),
            u64::MAX
        );
    }
}
