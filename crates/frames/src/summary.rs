//! A hierarchical bitset: level 0 has one bit per item, each higher level one bit per 64-bit
//! word of the level below ("that word is non-zero"), up to a single top word. Set, clear and
//! "next set bit at or after `i`" cost O(levels) = O(log64 n) word operations.
//!
//! The bitmap allocator keeps two of these over its 512-frame groups (LLFree's "tree" level).

/// See the module docs. All levels live in one vector (`offs[k]..offs[k + 1]` is level `k`)
/// so the common case — level 0 only — is a single indexed read-modify-write.
#[derive(Clone, Debug)]
pub(crate) struct SummaryBits {
    bits: Vec<u64>,
    /// Start of each level in `bits`, plus the end (`offs[depth]`).
    offs: Vec<usize>,
    len: usize,
}

impl SummaryBits {
    /// All `len` bits clear.
    pub(crate) fn new(len: usize) -> Self {
        let mut offs = vec![0];
        let mut n = len.max(1);
        loop {
            let words = n.div_ceil(64);
            offs.push(offs[offs.len() - 1] + words);
            if words == 1 {
                break;
            }
            n = words;
        }
        let total = offs[offs.len() - 1];
        Self {
            bits: vec![0u64; total],
            offs,
            len,
        }
    }

    fn depth(&self) -> usize {
        self.offs.len() - 1
    }

    fn level(&self, k: usize) -> &[u64] {
        &self.bits[self.offs[k]..self.offs[k + 1]]
    }

    /// Clear every bit.
    pub(crate) fn clear_all(&mut self) {
        self.bits.fill(0);
    }

    /// Bit `i` (false if out of range).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 64] & (1u64 << (i % 64)) != 0
    }

    /// Set bit `i` (`i < len`).
    #[inline]
    pub(crate) fn set(&mut self, i: usize) {
        debug_assert!(i < self.len);
        let word = &mut self.bits[i / 64];
        let was = *word;
        *word = was | (1u64 << (i % 64));
        if was == 0 && self.offs.len() > 2 {
            self.set_up(i / 64);
        }
    }

    /// Level 0 word `w` became non-zero: set the summary bits above it.
    #[cold]
    fn set_up(&mut self, w: usize) {
        let mut idx = w;
        for k in 1..self.depth() {
            let word = &mut self.bits[self.offs[k] + idx / 64];
            let was = *word;
            *word = was | (1u64 << (idx % 64));
            if was != 0 {
                return;
            }
            idx /= 64;
        }
    }

    /// Clear bit `i` (`i < len`).
    #[inline]
    pub(crate) fn clear(&mut self, i: usize) {
        debug_assert!(i < self.len);
        let word = &mut self.bits[i / 64];
        *word &= !(1u64 << (i % 64));
        if *word == 0 && self.offs.len() > 2 {
            self.clear_up(i / 64);
        }
    }

    /// Level 0 word `w` became zero: clear the summary bits above it.
    #[cold]
    fn clear_up(&mut self, w: usize) {
        let mut idx = w;
        for k in 1..self.depth() {
            let word = &mut self.bits[self.offs[k] + idx / 64];
            *word &= !(1u64 << (idx % 64));
            if *word != 0 {
                return;
            }
            idx /= 64;
        }
    }

    /// The first set bit at or after `from`, if any.
    pub(crate) fn find_next(&self, from: usize) -> Option<usize> {
        if from >= self.len {
            return None;
        }
        // Ascend until a word has a set bit at or after the current position.
        let mut k = 0;
        let mut idx = from;
        loop {
            let w = idx / 64;
            let word = *self.level(k).get(w)?;
            let masked = word & (!0u64 << (idx % 64));
            if masked != 0 {
                idx = w * 64 + masked.trailing_zeros() as usize;
                break;
            }
            if k + 1 == self.depth() {
                return None;
            }
            idx = w + 1;
            k += 1;
        }
        // Descend: every summary bit promises a non-zero word below.
        while k > 0 {
            k -= 1;
            let word = self.level(k)[idx];
            idx = idx * 64 + word.trailing_zeros() as usize;
        }
        Some(idx)
    }

    /// True if every summary bit equals "the word below is non-zero" and no bit at or above
    /// `len` is set (a consistency check for tests).
    pub(crate) fn consistent(&self) -> bool {
        let l0 = self.level(0);
        let tail_clear = (self.len..l0.len() * 64).all(|i| l0[i / 64] & (1u64 << (i % 64)) == 0);
        tail_clear
            && (1..self.depth()).all(|k| {
                let (below, here) = (self.level(k - 1), self.level(k));
                (0..here.len() * 64).all(|j| {
                    let bit = here[j / 64] & (1u64 << (j % 64)) != 0;
                    bit == below.get(j).is_some_and(|&w| w != 0)
                })
            })
    }

    /// Heap bytes used.
    pub(crate) fn bytes(&self) -> usize {
        self.bits.len() * 8 + self.offs.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_next_across_levels() {
        for len in [1usize, 63, 64, 65, 4096, 4097, 300_000] {
            let mut s = SummaryBits::new(len);
            assert_eq!(s.find_next(0), None);
            let picks: Vec<usize> = [0, 1, 63, 64, 4095, 4096, 299_999]
                .into_iter()
                .filter(|&i| i < len)
                .collect();
            for &i in &picks {
                s.set(i);
            }
            for from in 0..len.min(5000) {
                let want = picks.iter().copied().filter(|&i| i >= from).min();
                assert_eq!(s.find_next(from), want, "len {len} from {from}");
            }
            for &i in &picks {
                assert!(s.get(i));
                s.clear(i);
            }
            assert_eq!(s.find_next(0), None);
            assert_eq!(s.find_next(len), None);
        }
    }
}
