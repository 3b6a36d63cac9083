//! Reports in the seed's print layout (and a slabinfo-like table).

use core::fmt::{self, Write};

use super::*;

impl<S: PageSource> PageFamilies<S> {
    // ---- reports (seed layout) ---------------------------------------------------------------

    /// The seed's `mm_print_registered_page_families`: one `Page Family : NAME, Size = N`
    /// line per family (size in bytes).
    ///
    /// # Errors
    /// What the writer `w` returns.
    pub fn mm_print_registered_page_families(&self, w: &mut dyn Write) -> fmt::Result {
        for f in &self.families[..self.count] {
            writeln!(w, "Page Family : {}, Size = {}", f.name, f.struct_size)?;
        }
        Ok(())
    }

    /// The seed's `mm_print_memory_usage`: for each family (or only `name`), its struct size,
    /// its VM pages with every block (ALLOCATED / F R E E D, `block_size` = payload bytes,
    /// `offset` = bytes from the VM page start, prev/next blocks), then the family's app memory
    /// in use, VM pages in use and % of memory in use by the application; then the totals.
    ///
    /// # Errors
    /// What the writer `w` returns.
    pub fn mm_print_memory_usage(&self, w: &mut dyn Write, name: Option<&str>) -> fmt::Result {
        writeln!(w, "\nPage Size = {PAGE_SIZE} Bytes")?;
        let mut total_pages = 0;
        for fam in &self.families[..self.count] {
            if name.is_some_and(|n| n != fam.name) {
                continue;
            }
            writeln!(
                w,
                "vm_page_family : {}, struct size = {}",
                fam.name, fam.struct_size
            )?;
            let mut page = fam.first_page;
            let mut index = 0;
            while page != 0 {
                // SAFETY: `page` is a live VM page of this family; blocks are walked inside it.
                let (p, next, prev) = unsafe {
                    (
                        rd32(page + VP_PAGES) as usize,
                        rdw(page + VP_NEXT),
                        rdw(page + VP_PREV),
                    )
                };
                writeln!(
                    w,
                    "\tPage Index : {index} (base = {}, pages = {p})",
                    Hex(page)
                )?;
                writeln!(w, "\t\t next = {}, prev = {}", Hex(next), Hex(prev))?;
                writeln!(w, "\t\t page family = {}", fam.name)?;
                let end = page + p * PAGE_SIZE - BLOCK_HEADER;
                let mut h = page + first_off(p);
                let mut j = 0;
                let mut prev_t = 0;
                while h < end {
                    // SAFETY: inside the live page (sizes are kept consistent by the heap).
                    let sw = unsafe { rd32(h) };
                    let t = (sw & !LOW) as usize;
                    if t < MIN_BLOCK {
                        writeln!(w, "\t\t\t{:<14} <corrupted block header>", Hex(h))?;
                        break;
                    }
                    let prev_b = if prev_t == 0 { 0 } else { h - prev_t };
                    let next_b = if h + t < end { h + t } else { 0 };
                    let quick = sw & LOW == QMAGIC;
                    writeln!(
                        w,
                        "\t\t\t{:<14} Block {:<3} {}  block_size = {:<6}  offset = {:<6}  prev = {:<14}  next = {}{}",
                        Hex(h),
                        j,
                        if sw & FREE != 0 || quick { "F R E E D" } else { "ALLOCATED" },
                        t - BLOCK_HEADER,
                        h - page,
                        Hex(prev_b),
                        Hex(next_b),
                        if quick { "  [quick]" } else { "" }
                    )?;
                    j += 1;
                    prev_t = t;
                    h += t;
                }
                index += 1;
                page = next;
            }
            let bytes = fam.os_pages * PAGE_SIZE;
            writeln!(
                w,
                "\tApp Memory in use : {} Bytes, VM Pages in use : {} ({} Bytes), % of memory in use by the application : {}",
                fam.alloc_bytes,
                fam.os_pages,
                bytes,
                Percent(fam.alloc_bytes, bytes)
            )?;
            writeln!(w)?;
            total_pages += fam.os_pages;
        }
        writeln!(
            w,
            "# Of VM Pages in Use : {} ({} Bytes)",
            total_pages,
            total_pages * PAGE_SIZE
        )?;
        writeln!(
            w,
            "Total Memory being used by Memory Manager = {} Bytes (+ {} Bytes of page registry)",
            self.data_pages * PAGE_SIZE,
            self.registry.node_pages() * PAGE_SIZE
        )
    }

    /// The seed's `mm_print_block_usage`: per family
    /// `NAME   TBC : n    FBC : n    OBC : n AppMemUsage : bytes` (total, free and occupied
    /// block counts; bytes of allocated blocks including headers).
    ///
    /// # Errors
    /// What the writer `w` returns.
    pub fn mm_print_block_usage(&self, w: &mut dyn Write) -> fmt::Result {
        for f in &self.families[..self.count] {
            writeln!(
                w,
                "{:<20}   TBC : {:<4}    FBC : {:<4}    OBC : {:<4} AppMemUsage : {}",
                f.name,
                f.blocks,
                f.free_blocks + f.quick_len,
                f.blocks - f.free_blocks - f.quick_len,
                f.alloc_bytes
            )?;
        }
        Ok(())
    }

    /// A `/proc/slabinfo`-like table: header lines, then per family
    /// `name active_objs num_objs objsize objperslab pagesperslab`, where an object is a
    /// one-unit block: `objsize` = its block bytes (header + payload), `objperslab` = how many
    /// fit in a one-page VM page, `active_objs` = live allocations, `num_objs` = live
    /// allocations + objects that fit in the free blocks, `pagesperslab` = 1.
    ///
    /// # Errors
    /// What the writer `w` returns.
    pub fn mm_print_slabinfo(&self, w: &mut dyn Write) -> fmt::Result {
        writeln!(w, "slabinfo - version: 2.1 (memvisor page families)")?;
        writeln!(
            w,
            "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab>"
        )?;
        for f in &self.families[..self.count] {
            let active = f.blocks - f.free_blocks - f.quick_len;
            writeln!(
                w,
                "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4}",
                f.name,
                active,
                active + f.quick_len + f.free_bytes / f.unit_total,
                f.unit_total,
                region_bytes(1) / f.unit_total,
                1
            )?;
        }
        Ok(())
    }
}

/// `used / total` as a percentage with two decimals (integer arithmetic, no floats).
struct Percent(usize, usize);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 == 0 {
            return f.write_str("0.00 %");
        }
        let bp = (self.0 as u128 * 10000 / self.1 as u128) as u64;
        write!(f, "{}.{:02} %", bp / 100, bp % 100)
    }
}
