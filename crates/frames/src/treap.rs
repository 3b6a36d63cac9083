//! An address-ordered treap of disjoint extents `(start, len)` where every node also stores the
//! largest `len` in its subtree, so "the lowest extent that can hold `len` aligned to `align`"
//! is found by descending only into subtrees whose maximum is at least `len` (first fit in
//! O(log n) expected steps when `align` is 1). Nodes live in an arena (`Vec`) with a free list.

use super::splitmix64;

const NIL: usize = usize::MAX;

#[derive(Clone, Debug)]
struct Node {
    start: u64,
    len: u64,
    max: u64,
    prio: u64,
    l: usize,
    r: usize,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct ExtentTree {
    nodes: Vec<Node>,
    spare: Vec<usize>,
    root: usize,
    rng: u64,
    count: usize,
}

/// `x` rounded up to a multiple of `align` (a power of two), if that fits in `u64`.
#[inline]
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl ExtentTree {
    pub(crate) fn new() -> Self {
        Self {
            nodes: Vec::new(),
            spare: Vec::new(),
            root: NIL,
            rng: 0x6d65_6d76_6973_6f72,
            count: 0,
        }
    }

    /// Number of extents.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Largest extent length (0 if empty).
    pub(crate) fn max_len(&self) -> u64 {
        self.max_of(self.root)
    }

    /// Heap bytes used.
    pub(crate) fn bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>() + self.spare.capacity() * 8
    }

    #[inline]
    fn max_of(&self, t: usize) -> u64 {
        if t == NIL {
            0
        } else {
            self.nodes[t].max
        }
    }

    fn pull(&mut self, t: usize) {
        let (l, r) = (self.nodes[t].l, self.nodes[t].r);
        let m = self.nodes[t].len.max(self.max_of(l)).max(self.max_of(r));
        self.nodes[t].max = m;
    }

    /// Split `t` into (starts < key, starts >= key).
    fn split(&mut self, t: usize, key: u64) -> (usize, usize) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t].start < key {
            let (a, b) = self.split(self.nodes[t].r, key);
            self.nodes[t].r = a;
            self.pull(t);
            (t, b)
        } else {
            let (a, b) = self.split(self.nodes[t].l, key);
            self.nodes[t].l = b;
            self.pull(t);
            (a, t)
        }
    }

    /// Merge `a` and `b`, every start in `a` below every start in `b`.
    fn merge(&mut self, a: usize, b: usize) -> usize {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a].prio > self.nodes[b].prio {
            let r = self.merge(self.nodes[a].r, b);
            self.nodes[a].r = r;
            self.pull(a);
            a
        } else {
            let l = self.merge(a, self.nodes[b].l);
            self.nodes[b].l = l;
            self.pull(b);
            b
        }
    }

    /// Insert the extent `[start, start + len)` (disjoint from the others, `len > 0`).
    pub(crate) fn insert(&mut self, start: u64, len: u64) {
        let node = Node {
            start,
            len,
            max: len,
            prio: splitmix64(&mut self.rng),
            l: NIL,
            r: NIL,
        };
        let n = match self.spare.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        let (a, b) = self.split(self.root, start);
        let left = self.merge(a, n);
        self.root = self.merge(left, b);
        self.count += 1;
    }

    /// Remove the extent starting at `start`; returns its length.
    pub(crate) fn remove(&mut self, start: u64) -> Option<u64> {
        let (a, b) = self.split(self.root, start);
        let (m, c) = match start.checked_add(1) {
            Some(k) => self.split(b, k),
            None => (b, NIL),
        };
        let len = (m != NIL).then(|| self.nodes[m].len);
        if m != NIL {
            self.spare.push(m);
            self.count -= 1;
        }
        self.root = self.merge(a, c);
        len
    }

    /// The extent with the largest start `<= x`.
    pub(crate) fn pred_le(&self, x: u64) -> Option<(u64, u64)> {
        let (mut t, mut best) = (self.root, None);
        while t != NIL {
            let n = &self.nodes[t];
            if n.start <= x {
                best = Some((n.start, n.len));
                t = n.r;
            } else {
                t = n.l;
            }
        }
        best
    }

    /// The extent with the smallest start `> x`.
    pub(crate) fn succ_gt(&self, x: u64) -> Option<(u64, u64)> {
        let (mut t, mut best) = (self.root, None);
        while t != NIL {
            let n = &self.nodes[t];
            if n.start > x {
                best = Some((n.start, n.len));
                t = n.l;
            } else {
                t = n.r;
            }
        }
        best
    }

    /// The lowest extent holding `len` units starting at a multiple of `align`:
    /// `(extent start, extent len, aligned start)`.
    pub(crate) fn first_fit(&self, len: u64, align: u64) -> Option<(u64, u64, u64)> {
        self.first_fit_in(self.root, len, align)
    }

    fn first_fit_in(&self, t: usize, len: u64, align: u64) -> Option<(u64, u64, u64)> {
        if self.max_of(t) < len {
            return None;
        }
        let n = &self.nodes[t];
        if let Some(hit) = self.first_fit_in(n.l, len, align) {
            return Some(hit);
        }
        if let Some(a) = align_up(n.start, align) {
            if a - n.start <= n.len && n.len - (a - n.start) >= len {
                return Some((n.start, n.len, a));
            }
        }
        self.first_fit_in(n.r, len, align)
    }

    /// The extents in address order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        let mut it = Iter {
            tree: self,
            stack: Vec::new(),
        };
        it.push_left(self.root);
        it
    }
}

/// In-order iterator over an [`ExtentTree`].
pub(crate) struct Iter<'a> {
    tree: &'a ExtentTree,
    stack: Vec<usize>,
}

impl Iter<'_> {
    fn push_left(&mut self, mut t: usize) {
        while t != NIL {
            self.stack.push(t);
            t = self.tree.nodes[t].l;
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let t = self.stack.pop()?;
        let n = &self.tree.nodes[t];
        self.push_left(n.r);
        Some((n.start, n.len))
    }
}
