//! Reports, the random pre-fill and the invariant check of [`BitmapAllocator`] (its seed
//! aliases are in [`crate::seed_api`]).

use super::bitmap::{BitmapAllocator, GROUP_FRAMES, GROUP_WORDS, MAX_ORDER};
use super::splitmix64;

impl BitmapAllocator {
    /// Recompute group counts and both summary bitmaps from the bitmap.
    pub(crate) fn rebuild_summaries(&mut self) {
        self.nonempty.clear_all();
        self.full.clear_all();
        for (g, chunk) in self.words.chunks_exact(GROUP_WORDS).enumerate() {
            // All-used and all-free words (most of them) without a bit count: the generic
            // x86_64 target has no `popcnt` instruction.
            let ones = |w: &u64| match *w {
                0 => 0,
                u64::MAX => 64,
                w => w.count_ones(),
            };
            let c: u32 = chunk.iter().map(ones).sum();
            self.group_free[g] = c as u16;
            if c > 0 {
                self.nonempty.set(g);
            }
            if u64::from(c) == GROUP_FRAMES {
                self.full.set(g);
            }
        }
    }

    /// Check every internal invariant (group counts, both summaries, the hint, the free and
    /// reserved counts, padding bits). For tests; O(frames).
    ///
    /// # Errors
    /// A description of the first violated invariant.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let first = (self.base - self.origin) as usize;
        let last = first + self.frames as usize;
        let mut free = 0u64;
        for (g, chunk) in self.words.chunks_exact(GROUP_WORDS).enumerate() {
            let c: u64 = chunk.iter().map(|w| u64::from(w.count_ones())).sum();
            free += c;
            if c != u64::from(self.group_free[g]) {
                return Err(format!("group {g}: count {} != {c}", self.group_free[g]));
            }
            if self.nonempty.get(g) != (c > 0) || self.full.get(g) != (c == GROUP_FRAMES) {
                return Err(format!("group {g}: summary bits wrong for count {c}"));
            }
        }
        if !self.nonempty.consistent() || !self.full.consistent() {
            return Err("summary levels inconsistent".into());
        }
        if free != self.free {
            return Err(format!("free {} != bitmap {free}", self.free));
        }
        let pad_free = (0..first)
            .chain(last..self.words.len() * 64)
            .any(|i| self.words[i / 64] & (1u64 << (i % 64)) != 0);
        if pad_free {
            return Err("a padding bit is set".into());
        }
        if self.words[..self.hint.min(self.words.len())]
            .iter()
            .any(|&w| w != 0)
        {
            return Err(format!("free frame below the hint word {}", self.hint));
        }
        let resv: u64 = self.reserved.iter().map(|(s, e)| e - s).sum();
        if resv != self.reserved_frames {
            return Err(format!("reserved {} != map {resv}", self.reserved_frames));
        }
        Ok(())
    }

    // ----- reports -----------------------------------------------------------------------

    /// Free blocks per buddy order 0..=10, as Linux `/proc/buddyinfo` would show them for a
    /// perfectly coalesced buddy allocator: `counts[k]` is the number of **maximal** free
    /// blocks of order `k` — runs of `2^k` free frames whose first PFN is a multiple of `2^k`
    /// and whose enclosing order-`k+1` block is not entirely free (order 10 is the largest).
    /// Every free frame lies in exactly one such block, so `Σ counts[k]·2^k` = free frames.
    /// Cost O(frames / 64), skipping empty and entirely free 2 MiB groups in O(1).
    pub fn free_runs_by_order(&self) -> [u64; MAX_ORDER + 1] {
        let mut out = [0u64; MAX_ORDER + 1];
        let groups = self.group_free.len();
        let og = self.origin / GROUP_FRAMES;
        let is_full = |g: usize| u64::from(self.group_free[g]) == GROUP_FRAMES;
        let mut g = 0;
        while g < groups {
            if is_full(g) {
                if (og + g as u64) % 2 == 0 && g + 1 < groups && is_full(g + 1) {
                    out[10] += 1;
                    g += 2;
                } else {
                    out[9] += 1;
                    g += 1;
                }
                continue;
            }
            if self.group_free[g] != 0 {
                count_group(
                    &self.words[g * GROUP_WORDS..(g + 1) * GROUP_WORDS],
                    &mut out,
                );
            }
            g += 1;
        }
        out
    }

    /// Seed 000 `init_bitmap_rand`: mark each currently free frame allocated with probability
    /// `fill_ratio` (clamped to `[0, 1]`; NaN counts as 0), from a SplitMix64 stream seeded
    /// with `seed` — the same seed, ratio and state give the same pattern. The filled frames
    /// are ordinary allocated frames (freeable); no `allocations` are counted. Returns the
    /// number of frames filled. Cost O(frames).
    pub fn init_bitmap_rand(&mut self, seed: u64, fill_ratio: f64) -> u64 {
        let p = if fill_ratio.is_nan() {
            0.0
        } else {
            fill_ratio.clamp(0.0, 1.0)
        };
        if p == 0.0 {
            return 0;
        }
        let threshold = if p >= 1.0 {
            u64::MAX
        } else {
            (p * 18_446_744_073_709_551_616.0) as u64
        };
        let mut state = seed;
        let mut filled = 0u64;
        for word in &mut self.words {
            let mut bits = *word;
            while bits != 0 {
                let b = bits & bits.wrapping_neg();
                bits ^= b;
                if p >= 1.0 || splitmix64(&mut state) < threshold {
                    *word &= !b;
                    filled += 1;
                }
            }
        }
        self.free -= filled;
        self.rebuild_summaries();
        filled
    }
}

/// Add the maximal buddy blocks of one partially free 8-word group to `out` (orders 0..=8).
fn count_group(ws: &[u64], out: &mut [u64; MAX_ORDER + 1]) {
    const M: [u64; 6] = [
        0x5555_5555_5555_5555,
        0x1111_1111_1111_1111,
        0x0101_0101_0101_0101,
        0x0001_0001_0001_0001,
        0x0000_0001_0000_0001,
        0x0000_0000_0000_0001,
    ];
    let mut full_words = 0u32;
    for (k, &w) in ws.iter().enumerate() {
        if w == !0 {
            full_words |= 1 << k;
            continue;
        }
        // m[k]: bit p set iff the 2^k-aligned block at p is entirely free.
        let mut m = w;
        for (order, &mask) in M.iter().enumerate() {
            let up = m & (m >> (1u32 << order)) & mask;
            out[order] += u64::from(m.count_ones()) - 2 * u64::from(up.count_ones());
            m = up;
        }
    }
    // Entirely free words combine into order 6..=8 blocks (the group is not entirely free).
    let f6 = full_words;
    let f7 = f6 & (f6 >> 1) & 0x55;
    let f8 = f7 & (f7 >> 2) & 0x11;
    out[6] += u64::from(f6.count_ones()) - 2 * u64::from(f7.count_ones());
    out[7] += u64::from(f7.count_ones()) - 2 * u64::from(f8.count_ones());
    out[8] += u64::from(f8.count_ones());
}
