//! The doubly linked lists of a slab class (partly used and full slabs), linked through the
//! slab headers' `next` / `prev` fields (`slab.rs`).

use super::slab::hdr;

/// Push slab `s` at the head of the list `head`.
#[inline(always)]
pub(super) fn push(head: &mut usize, s: usize) {
    // SAFETY: `s` and `*head` (if non-zero) are live slab headers.
    unsafe {
        (*hdr(s)).prev = 0;
        (*hdr(s)).next = *head;
        if *head != 0 {
            (*hdr(*head)).prev = s;
        }
    }
    *head = s;
}

/// Insert slab `s` second on the list `head` (first if the list is empty).
#[inline(always)]
pub(super) fn push_second(head: &mut usize, s: usize) {
    if *head == 0 {
        return push(head, s);
    }
    // SAFETY: `s` and `*head` are live slab headers, the head's next (if non-zero) too.
    unsafe {
        let h0 = *head;
        let n = (*hdr(h0)).next;
        (*hdr(s)).prev = h0;
        (*hdr(s)).next = n;
        if n != 0 {
            (*hdr(n)).prev = s;
        }
        (*hdr(h0)).next = s;
    }
}

/// Unlink slab `s` from the list `head`.
#[inline(always)]
pub(super) fn unlink(head: &mut usize, s: usize) {
    // SAFETY: `s` is a live slab header on the list; its neighbours are live headers.
    unsafe {
        let h = hdr(s);
        let (p, n) = ((*h).prev, (*h).next);
        if p != 0 {
            (*hdr(p)).next = n;
        } else {
            *head = n;
        }
        if n != 0 {
            (*hdr(n)).prev = p;
        }
        (*h).prev = 0;
        (*h).next = 0;
    }
}
