//! MeMS node pool: 64-byte main and sub-chain nodes in chained pool pages.

use super::*;

impl<S: PageSource> Mems<S> {
    // ---- node pool ---------------------------------------------------------------------------

    /// Make sure at least `n` free node slots exist.
    pub(super) fn reserve_nodes(&mut self, n: usize) -> Result<(), HeapError> {
        while self.free_count < n {
            let page = map(&mut self.source, 1).ok_or(HeapError::OutOfMemory { pages: 1 })?;
            // The first page is the home page: its upper half is kept for the hash table.
            let slots = if self.home == 0 {
                self.home = page;
                HOME_SLOTS
            } else {
                SLOTS_PER_POOL_PAGE
            };
            // SAFETY: `page` is a fresh page owned by the pool: word 0 links the pool pages,
            // slots 1..=slots join the free list (their word 0 links the list).
            unsafe {
                *at::<usize>(page) = self.pool_first;
                for i in 1..=slots {
                    let s = page + i * NODE;
                    *at::<usize>(s) = self.free_nodes;
                    self.free_nodes = s;
                }
            }
            self.pool_first = page;
            self.pool_pages += 1;
            self.free_count += slots;
        }
        Ok(())
    }

    /// Pop a node slot (call [`Self::reserve_nodes`] first).
    pub(super) fn take_node(&mut self) -> usize {
        let n = self.free_nodes;
        debug_assert!(n != 0);
        // SAFETY: `n` is a free slot of a live pool page; word 0 is the free-list link.
        self.free_nodes = unsafe { *at::<usize>(n) };
        self.free_count -= 1;
        n
    }

    pub(super) fn put_node(&mut self, n: usize) {
        // SAFETY: `n` is a slot of a live pool page no longer used by any chain; clearing the
        // magic makes a stale pointer to it fail the node checks.
        unsafe {
            (*seg(n)).magic = 0;
            *at::<usize>(n) = self.free_nodes;
        }
        self.free_nodes = n;
        self.free_count += 1;
    }

    /// Unmap the pool pages (and so the home table: the table goes first if it is there).
    pub(super) fn release_pool(&mut self) {
        if self.table_at_home() {
            self.release_table();
        }
        let mut p = self.pool_first;
        while p != 0 {
            // SAFETY: `p` is a live pool page; read its link before unmapping it.
            let next = unsafe { *at::<usize>(p) };
            unmap(&mut self.source, p, 1);
            p = next;
        }
        self.pool_first = 0;
        self.home = 0;
        self.pool_pages = 0;
        self.free_nodes = 0;
        self.free_count = 0;
    }
}
