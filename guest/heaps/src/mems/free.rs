//! MeMS free: turn a PROCESS segment into a HOLE, merge, release main nodes; lookups.

use super::*;

impl<S: PageSource> Mems<S> {
    // ---- free --------------------------------------------------------------------------------

    /// The live PROCESS node starting at `addr`, or the error explaining why there is none.
    pub(super) fn lookup_process(&self, addr: usize) -> Result<usize, HeapError> {
        let n = self.hget(addr);
        if n == 0 {
            return Err(self.classify(addr));
        }
        // SAFETY: hash values are live PROCESS nodes of the pool.
        let (kind, magic, start) = unsafe { ((*seg(n)).kind, (*seg(n)).magic, (*seg(n)).start) };
        if kind != KIND_P || magic != NODE_MAGIC || start != addr {
            return Err(HeapError::Corrupted {
                addr: n,
                reason: "segment node inconsistent with the hash table",
            });
        }
        Ok(n)
    }

    /// Size in bytes of the PROCESS segment starting at `ptr`.
    ///
    /// # Errors
    /// [`HeapError`] if `ptr` is not the start of a PROCESS segment (as [`Mems::mems_free`]).
    pub fn mems_usable_size(&self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        let n = self.lookup_process(ptr.as_ptr().addr())?;
        // SAFETY: a live PROCESS node.
        Ok(unsafe { (*seg(n)).size })
    }

    /// Resize the PROCESS segment starting at `ptr` to `new_size` bytes (rounded up to 16)
    /// without moving it: growing takes the front of the HOLE that follows it in its main
    /// node, shrinking gives the cut tail to that HOLE (or makes it a new one). `Ok(false)`
    /// (heap unchanged) when growing and that HOLE is missing or too small; errors as for
    /// [`Mems::mems_free`]. The contents up to the smaller size stay in place.
    ///
    /// # Errors
    /// As [`Mems::mems_free`] for a bad `ptr`.
    pub fn mems_resize_in_place(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Result<bool, HeapError> {
        let n = self.lookup_process(ptr.as_ptr().addr())?;
        let Some(new) = round_up(new_size.max(1), ALIGN) else {
            return Ok(false);
        };
        // SAFETY: `n` is a live PROCESS node; its sub-chain neighbours and main node are live.
        unsafe {
            let s = seg(n);
            let old = (*s).size;
            let nx = (*s).next;
            let next_hole = nx != 0 && (*seg(nx)).kind == KIND_H;
            if new > old {
                let take = new - old;
                if !next_hole || (*seg(nx)).size < take {
                    return Ok(false);
                }
                self.index_remove(nx);
                if (*seg(nx)).size == take {
                    (*s).next = (*seg(nx)).next;
                    if (*s).next != 0 {
                        (*seg((*s).next)).prev = n;
                    }
                    (*mainp((*s).main)).sub_len -= 1;
                    self.put_node(nx);
                } else {
                    (*seg(nx)).start += take;
                    (*seg(nx)).size -= take;
                    self.index_insert(nx);
                }
                (*s).size = new;
                self.hole_bytes -= take;
            } else if new < old {
                let cut = old - new;
                if next_hole {
                    self.index_remove(nx);
                    (*seg(nx)).start -= cut;
                    (*seg(nx)).size += cut;
                    self.index_insert(nx);
                } else {
                    self.reserve_nodes(1)?;
                    let t = self.take_node();
                    *seg(t) = Seg {
                        start: (*s).start + new,
                        size: cut,
                        main: (*s).main,
                        prev: n,
                        next: nx,
                        fprev: 0,
                        fnext: 0,
                        kind: KIND_H,
                        magic: NODE_MAGIC,
                    };
                    if nx != 0 {
                        (*seg(nx)).prev = t;
                    }
                    (*s).next = t;
                    (*mainp((*s).main)).sub_len += 1;
                    self.index_insert(t);
                }
                (*s).size = new;
                self.hole_bytes += cut;
            }
        }
        Ok(true)
    }

    /// The seed's `mems_free`: the segment starting at `ptr` becomes a HOLE, merged with
    /// adjacent holes. Errors (heap unchanged): [`HeapError::DoubleFree`] if `ptr` lies in a
    /// hole, [`HeapError::InvalidPointer`] if it is not the start of a PROCESS segment.
    ///
    /// # Errors
    /// [`HeapError::DoubleFree`], [`HeapError::InvalidPointer`] (heap unchanged).
    pub fn mems_free(&mut self, ptr: NonNull<u8>) -> Result<(), HeapError> {
        let addr = ptr.as_ptr().addr();
        let n = self.lookup_process(addr)?;
        self.hremove(addr);
        // SAFETY: `n` is a live PROCESS node; its sub-chain neighbours and main node are live.
        unsafe {
            let s = seg(n);
            let m = (*s).main;
            (*s).kind = KIND_H;
            self.hole_bytes += (*s).size;
            let mut cur = n;
            let p = (*s).prev;
            if p != 0 && (*seg(p)).kind == KIND_H {
                self.index_remove(p);
                (*seg(p)).size += (*s).size;
                (*seg(p)).next = (*s).next;
                if (*s).next != 0 {
                    (*seg((*s).next)).prev = p;
                }
                (*mainp(m)).sub_len -= 1;
                self.put_node(n);
                cur = p;
            }
            let c = seg(cur);
            let nx = (*c).next;
            if nx != 0 && (*seg(nx)).kind == KIND_H {
                self.index_remove(nx);
                (*c).size += (*seg(nx)).size;
                (*c).next = (*seg(nx)).next;
                if (*c).next != 0 {
                    (*seg((*c).next)).prev = cur;
                }
                (*mainp(m)).sub_len -= 1;
                self.put_node(nx);
            }
            let solo = (*mainp(m)).flags & MAIN_SOLO != 0;
            if (self.release_empty || solo) && (*mainp(m)).sub_len == 1 {
                self.release_main(m);
                if self.release_empty && self.main_len == 0 {
                    self.release_pool();
                    self.release_table();
                }
            } else {
                self.kept_empty |= (*mainp(m)).sub_len == 1;
                self.index_insert(cur);
            }
        }
        Ok(())
    }

    /// Give back the pages of the solo node of the PROCESS segment at `ptr` past the last page
    /// the segment reaches ([`PageSource::shrink_pages`]; the node's tail HOLE shrinks or
    /// goes). Returns the pages given back: 0 for a block of a shared (not solo) node, one
    /// with no free page behind it, or a source that cannot shrink a run.
    ///
    /// # Errors
    /// As [`Mems::mems_free`] if `ptr` is not a live PROCESS segment (nothing changes).
    pub fn trim_solo(&mut self, ptr: NonNull<u8>) -> Result<usize, HeapError> {
        let n = self.lookup_process(ptr.as_ptr().addr())?;
        // SAFETY: `n` is a live PROCESS node; its main node and sub-chain are live. A solo
        // node is [HOLE (alignment padding)] PROCESS [HOLE].
        unsafe {
            let m = (*seg(n)).main;
            let mn = mainp(m);
            let t = (*seg(n)).next;
            if (*mn).flags & MAIN_SOLO == 0 || t == 0 {
                return Ok(0);
            }
            let (start, pages) = ((*mn).start, (*mn).pages);
            let keep = ((*seg(n)).start + (*seg(n)).size - start).div_ceil(PAGE_SIZE);
            let cut = pages - keep;
            if cut == 0 || !shrink(&mut self.source, start, pages, keep) {
                return Ok(0);
            }
            (*mn).pages = keep;
            self.data_pages -= cut;
            self.hole_bytes -= cut * PAGE_SIZE;
            if (*seg(t)).size == cut * PAGE_SIZE {
                (*seg(n)).next = 0;
                (*mn).sub_len -= 1;
                self.put_node(t);
            } else {
                (*seg(t)).size -= cut * PAGE_SIZE;
            }
            Ok(cut)
        }
    }

    /// Unmap main node `m` (a single HOLE, not indexed) and drop it from the chain.
    ///
    /// # Safety
    /// `m` must be a live main node whose only segment is a HOLE outside the index.
    pub(super) unsafe fn release_main(&mut self, m: usize) {
        // SAFETY: per the contract; chain neighbours are live main nodes.
        unsafe {
            let mn = mainp(m);
            let (start, pages, head, prev, next) =
                ((*mn).start, (*mn).pages, (*mn).head, (*mn).prev, (*mn).next);
            if prev != 0 {
                (*mainp(prev)).next = next;
            } else {
                self.first_main = next;
            }
            if next != 0 {
                (*mainp(next)).prev = prev;
            } else {
                self.last_main = prev;
            }
            unmap(&mut self.source, start, pages);
            self.put_node(head);
            self.put_node(m);
            self.main_len -= 1;
            self.data_pages -= pages;
            self.hole_bytes -= pages * PAGE_SIZE;
        }
    }

    /// The main node whose region holds byte `addr`, 0 if none: a walk of the main chain
    /// (O(main nodes), as the seed's `mems_get`).
    fn main_of(&self, addr: usize) -> usize {
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: chain members are live main nodes.
            let (start, pages, next) =
                unsafe { ((*mainp(m)).start, (*mainp(m)).pages, (*mainp(m)).next) };
            if addr >= start && addr - start < pages * PAGE_SIZE {
                return m;
            }
            m = next;
        }
        0
    }

    /// Why `addr` is not the start of a PROCESS segment (walks the main chain and one
    /// sub-chain: error path).
    #[cold]
    pub(super) fn classify(&self, addr: usize) -> HeapError {
        let m = self.main_of(addr);
        if m == 0 {
            return HeapError::InvalidPointer {
                addr,
                reason: "not in a MeMS region",
            };
        }
        // SAFETY: `m` is a live main node; its sub-chain holds live nodes.
        unsafe {
            let mut s = (*mainp(m)).head;
            while s != 0 {
                let (start, size, kind) = ((*seg(s)).start, (*seg(s)).size, (*seg(s)).kind);
                if addr >= start && addr < start + size {
                    return if kind == KIND_H {
                        HeapError::DoubleFree { addr }
                    } else {
                        HeapError::InvalidPointer {
                            addr,
                            reason: "interior pointer of a PROCESS segment",
                        }
                    };
                }
                s = (*seg(s)).next;
            }
        }
        HeapError::Corrupted {
            addr: m,
            reason: "sub-chain does not cover its main node",
        }
    }

    /// Does `ptr` lie inside one of this heap's regions (any byte, allocated or not)?
    /// O(main nodes): a walk of the main chain.
    pub fn contains(&self, ptr: *const u8) -> bool {
        self.main_of(ptr.addr()) != 0
    }

    /// The seed's `mems_get`: the physical address of `ptr`, which must lie inside a MeMS
    /// region (any byte of it); `None` if it does not, or if the page source cannot translate.
    pub fn mems_get(&self, ptr: *const u8) -> Option<u64> {
        let addr = ptr.addr();
        if self.main_of(addr) == 0 {
            return None;
        }
        self.source.translate(addr)
    }

    /// The seed's `mems_finish`: unmap every region and all metadata. The heap is empty (and
    /// usable again) afterwards; every pointer it returned is invalid.
    pub fn mems_finish(&mut self) {
        let mut m = self.first_main;
        while m != 0 {
            // SAFETY: `m` is a live main node (in a pool page, unmapped only below).
            let (start, pages, next) =
                unsafe { ((*mainp(m)).start, (*mainp(m)).pages, (*mainp(m)).next) };
            unmap(&mut self.source, start, pages);
            m = next;
        }
        self.release_pool();
        self.release_table();
        self.first_main = 0;
        self.last_main = 0;
        self.main_len = 0;
        self.kept_empty = false;
        self.data_pages = 0;
        self.hole_bytes = 0;
        self.fl_bitmap = 0;
        self.sl_bitmap = [0; FL];
        self.heads = [[0; SL]; FL];
    }
}
