//! MeMS reports: the seed's `mems_print_stats` and the invariant audit.

use super::*;

impl<S: PageSource> Mems<S> {
    // ---- reports -----------------------------------------------------------------------------

    /// The seed's `mems_print_stats`:
    /// ```text
    /// ----- MeMS SYSTEM STATS -----
    /// MAIN[start:end]-> P[a:b] <-> H[c:d] <-> NULL      (one line per main node)
    /// Pages used: N
    /// Space unused: N
    /// Main Chain Length: N
    /// Sub-chain Length array: [a, b, ]
    /// -----------------------------
    /// ```
    /// Addresses are decimal virtual addresses, ranges inclusive; "Pages used" counts region
    /// pages, "Space unused" is the bytes in holes.
    ///
    /// # Errors
    /// What the writer `w` returns.
    pub fn mems_print_stats(&self, w: &mut dyn Write) -> fmt::Result {
        writeln!(w, "----- MeMS SYSTEM STATS -----")?;
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: live main node and sub-chain nodes.
            unsafe {
                let mn = mainp(m);
                write!(
                    w,
                    "MAIN[{}:{}]-> ",
                    (*mn).start,
                    (*mn).start + (*mn).pages * PAGE_SIZE - 1
                )?;
                let mut s = (*mn).head;
                while s != 0 {
                    let sn = seg(s);
                    write!(
                        w,
                        "{}[{}:{}] <-> ",
                        if (*sn).kind == KIND_P { 'P' } else { 'H' },
                        (*sn).start,
                        (*sn).start + (*sn).size - 1
                    )?;
                    s = (*sn).next;
                }
                writeln!(w, "NULL")?;
                m = (*mn).next;
            }
        }
        writeln!(w, "Pages used: {}", self.data_pages)?;
        writeln!(w, "Space unused: {}", self.hole_bytes)?;
        writeln!(w, "Main Chain Length: {}", self.main_len)?;
        write!(w, "Sub-chain Length array: [")?;
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: live main node.
            unsafe {
                write!(w, "{}, ", (*mainp(m)).sub_len)?;
                m = (*mainp(m)).next;
            }
        }
        writeln!(w, "]")?;
        writeln!(w, "-----------------------------")
    }

    /// Walk the chains and check every invariant (tiling, links, no adjacent holes, hash
    /// table, hole index, counters, byte accounting). O(heap size); for tests.
    ///
    /// # Errors
    /// [`HeapError::Corrupted`] at the first broken invariant.
    pub fn audit(&self) -> Result<MemsAudit, HeapError> {
        let corrupt = |addr, reason| Err(HeapError::Corrupted { addr, reason });
        let mut a = MemsAudit {
            pool_pages: self.pool_pages,
            table_pages: self.table_pages(),
            ..MemsAudit::default()
        };
        let mut m = self.first_main;
        let mut prev_m = 0;
        let mut nodes = 0;
        let mut solo_holes = 0;
        while m != 0 {
            // SAFETY: chain members are live nodes; all links are checked as we go.
            unsafe {
                let mn = mainp(m);
                if (*mn).kind != KIND_MAIN || (*mn).magic != NODE_MAGIC || (*mn).prev != prev_m {
                    return corrupt(m, "main node");
                }
                a.main_nodes += 1;
                a.data_pages += (*mn).pages;
                nodes += 1;
                let mut pos = (*mn).start;
                let mut s = (*mn).head;
                let mut prev_s = 0;
                let mut len = 0;
                let mut prev_hole = false;
                let solo = (*mn).flags & MAIN_SOLO != 0;
                if (*mn).flags & !MAIN_SOLO != 0 {
                    return corrupt(m, "main node flags");
                }
                let mut procs = 0;
                while s != 0 {
                    let sn = seg(s);
                    if (*sn).magic != NODE_MAGIC
                        || (*sn).main != m
                        || (*sn).prev != prev_s
                        || (*sn).start != pos
                        || (*sn).size == 0
                        || (*sn).size & (ALIGN - 1) != 0
                    {
                        return corrupt(s, "segment node");
                    }
                    match (*sn).kind {
                        KIND_H => {
                            if prev_hole {
                                return corrupt(s, "two adjacent holes");
                            }
                            a.holes += 1;
                            solo_holes += usize::from(solo);
                            a.hole_bytes += (*sn).size;
                            prev_hole = true;
                        }
                        KIND_P => {
                            if self.hget((*sn).start) != s {
                                return corrupt(s, "PROCESS segment not in the hash table");
                            }
                            a.process_segments += 1;
                            procs += 1;
                            a.process_bytes += (*sn).size;
                            prev_hole = false;
                        }
                        _ => return corrupt(s, "segment kind"),
                    }
                    pos += (*sn).size;
                    len += 1;
                    nodes += 1;
                    prev_s = s;
                    s = (*sn).next;
                }
                if pos != (*mn).start + (*mn).pages * PAGE_SIZE || len != (*mn).sub_len {
                    return corrupt(m, "sub-chain does not tile its main node");
                }
                if solo && procs != 1 {
                    return corrupt(m, "solo main node without exactly one PROCESS segment");
                }
                if self.release_empty && !self.kept_empty && len == 1 && prev_hole {
                    return corrupt(m, "empty main node kept with release_empty on");
                }
                prev_m = m;
                m = (*mn).next;
            }
        }
        if prev_m != self.last_main || a.main_nodes != self.main_len {
            return corrupt(prev_m, "main chain ends / length");
        }
        // Hole index.
        let mut indexed = 0;
        for fl in 0..FL {
            if (self.fl_bitmap >> fl & 1 != 0) != (self.sl_bitmap[fl] != 0) {
                return corrupt(fl, "first-level bitmap");
            }
            for sl in 0..SL {
                let mut h = self.heads[fl][sl];
                if (h != 0) != (self.sl_bitmap[fl] >> sl & 1 != 0) {
                    return corrupt(fl * SL + sl, "second-level bitmap");
                }
                let mut prev = 0;
                while h != 0 {
                    // SAFETY: index members are live HOLE nodes (checked).
                    unsafe {
                        if (*seg(h)).kind != KIND_H
                            || mapping((*seg(h)).size) != (fl, sl)
                            || (*seg(h)).fprev != prev
                            || self.in_solo(h)
                        {
                            return corrupt(h, "hole index entry");
                        }
                        prev = h;
                        h = (*seg(h)).fnext;
                    }
                    indexed += 1;
                    if indexed > a.holes {
                        return corrupt(prev, "hole index longer than the holes");
                    }
                }
            }
        }
        if indexed + solo_holes != a.holes
            || self.table_len != a.process_segments
            || a.hole_bytes != self.hole_bytes
            || a.data_pages != self.data_pages
            || nodes + self.free_count != self.pool_slots()
        {
            return corrupt(0, "counters");
        }
        if a.data_pages * PAGE_SIZE != a.process_bytes + a.hole_bytes {
            return corrupt(0, "bytes not accounted");
        }
        Ok(a)
    }
}
