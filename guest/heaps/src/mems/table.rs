//! MeMS hash table of live PROCESS segment starts (open addressing, backward-shift deletion,
//! resized by doubling / halving).

use super::*;

impl<S: PageSource> Mems<S> {
    // ---- hash table of PROCESS starts -------------------------------------------------------

    #[inline(always)]
    pub(super) fn hslot(&self, key: usize) -> usize {
        let bits = self.table_cap.trailing_zeros();
        (key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - bits)
    }

    #[inline(always)]
    pub(super) fn entry(&self, i: usize) -> *mut [usize; 2] {
        at::<[usize; 2]>(self.table + i * 16)
    }

    /// The PROCESS node starting at `key`, or 0.
    #[inline]
    pub(super) fn hget(&self, key: usize) -> usize {
        if self.table_len == 0 {
            return 0;
        }
        let mask = self.table_cap - 1;
        let mut i = self.hslot(key);
        loop {
            // SAFETY: `i < table_cap`; the table is live while `table_len > 0`.
            let e = unsafe { *self.entry(i) };
            if e[0] == key {
                return e[1];
            }
            if e[0] == 0 {
                return 0;
            }
            i = (i + 1) & mask;
        }
    }

    /// Insert (the key must be absent and capacity ensured).
    pub(super) fn hinsert(&mut self, key: usize, val: usize) {
        let mask = self.table_cap - 1;
        let mut i = self.hslot(key);
        // SAFETY: `i < table_cap`, the table is live and has a free entry (load ≤ 3/4).
        unsafe {
            while (*self.entry(i))[0] != 0 {
                i = (i + 1) & mask;
            }
            *self.entry(i) = [key, val];
        }
        self.table_len += 1;
    }

    /// Remove `key` (present) with backward-shift deletion.
    pub(super) fn hremove(&mut self, key: usize) {
        let mask = self.table_cap - 1;
        let mut i = self.hslot(key);
        // SAFETY: all indices are masked to the live table.
        unsafe {
            while (*self.entry(i))[0] != key {
                i = (i + 1) & mask;
            }
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let e = *self.entry(j);
                if e[0] == 0 {
                    break;
                }
                let home = self.hslot(e[0]);
                // Move e back to the hole at i unless its home lies cyclically in (i, j].
                let in_range = if i <= j {
                    i < home && home <= j
                } else {
                    i < home || home <= j
                };
                if !in_range {
                    *self.entry(i) = e;
                    i = j;
                }
            }
            *self.entry(i) = [0, 0];
        }
        self.table_len -= 1;
        if self.table_len * 8 < self.table_cap
            && (self.table_cap > MIN_TABLE || (self.table_cap == MIN_TABLE && self.home != 0))
        {
            // Down to one page, then back into the home page.
            let _ = self.hresize(self.table_cap / 2);
        }
    }

    /// Is the table in the home page's upper half?
    #[inline(always)]
    pub(super) fn table_at_home(&self) -> bool {
        self.table != 0 && self.table == self.home + HOME_TABLE_OFF
    }

    /// Room for one more entry.
    pub(super) fn hreserve(&mut self) -> Result<(), HeapError> {
        if self.table == 0 {
            self.hresize(if self.home != 0 {
                HOME_TABLE
            } else {
                MIN_TABLE
            })
        } else if (self.table_len + 1) * 4 > self.table_cap * 3 {
            self.hresize(self.table_cap * 2)
        } else {
            Ok(())
        }
    }

    /// Move the entries to a table of `cap` entries: the home table for [`HOME_TABLE`] (with
    /// a home page), else fresh pages of its own.
    pub(super) fn hresize(&mut self, cap: usize) -> Result<(), HeapError> {
        let old_pages = self.table_pages();
        let new = if cap == HOME_TABLE && self.home != 0 {
            let t = self.home + HOME_TABLE_OFF;
            // SAFETY: the upper half of the live home page is the home table's, unused now
            // (the table is elsewhere or absent); it may hold entries of an earlier stay.
            unsafe { core::ptr::write_bytes(at::<u8>(t), 0, HOME_TABLE * 16) };
            t
        } else {
            let pages = (cap * 16).div_ceil(PAGE_SIZE);
            map(&mut self.source, pages).ok_or(HeapError::OutOfMemory { pages })?
        };
        let (old, old_cap) = (self.table, self.table_cap);
        self.table = new;
        self.table_cap = cap;
        self.table_len = 0;
        for i in 0..old_cap {
            // SAFETY: `old` is the live old table of `old_cap` entries.
            let e = unsafe { *at::<[usize; 2]>(old + i * 16) };
            if e[0] != 0 {
                self.hinsert(e[0], e[1]);
            }
        }
        if old_pages != 0 {
            unmap(&mut self.source, old, old_pages);
        }
        Ok(())
    }

    pub(super) fn release_table(&mut self) {
        let pages = self.table_pages();
        if pages != 0 {
            unmap(&mut self.source, self.table, pages);
        }
        self.table = 0;
        self.table_cap = 0;
        self.table_len = 0;
    }
}
