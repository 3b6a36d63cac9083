//! Contiguous-run searches of [`BitmapAllocator`]. Each returns the bit index of the lowest
//! run of `n` free frames whose PFN (`origin + index`) is a multiple of `align`, or `None`.
//! All start at the next-free hint (no free frame lies below it) and rely on `origin` being
//! 2 MiB-aligned, so group `g` starts at PFN `origin + 512·g`, a multiple of 512.

use super::bitmap::{BitmapAllocator, GROUP_FRAMES, GROUP_WORDS};

/// Bit `p` set iff bits `p .. p + n` of `w` are all set (`1 <= n <= 64`).
#[inline]
fn run_mask(w: u64, n: u64) -> u64 {
    let mut m = w;
    let mut k = 1;
    while k < n {
        let s = k.min(n - k);
        m &= m >> s;
        k += s;
    }
    m
}

/// Bits at every multiple of `align` (`align` a power of two <= 64).
#[inline]
fn align_pattern(align: u64) -> u64 {
    (u128::from(u64::MAX) / ((1u128 << align) - 1)) as u64
}

/// Mask of the low `r` bits (`r < 64`).
#[inline]
fn low_mask(r: u64) -> u64 {
    (1u64 << r) - 1
}

impl BitmapAllocator {
    /// True if the first `r` frames (`r <= 512`) of group `g` are free.
    fn prefix_free(&self, g: usize, r: u64) -> bool {
        let ws = &self.words[g * GROUP_WORDS..(g + 1) * GROUP_WORDS];
        let full = (r / 64) as usize;
        if !ws[..full].iter().all(|&w| w == !0) {
            return false;
        }
        let rem = r % 64;
        rem == 0 || ws[full] & low_mask(rem) == low_mask(rem)
    }

    /// `align >= 512`: the run starts at a group boundary; it is `n / 512` entirely free
    /// groups followed by a free prefix of `n % 512` frames. Candidates come from the `full`
    /// summary (or `nonempty` when `n < 512`).
    pub(super) fn search_group_aligned(&self, n: u64, align: u64) -> Option<usize> {
        let groups = self.group_free.len();
        let ga = align / GROUP_FRAMES;
        let og = self.origin / GROUP_FRAMES;
        let k = (n / GROUP_FRAMES) as usize;
        let r = n % GROUP_FRAMES;
        let mut cursor = self.hint / GROUP_WORDS;
        loop {
            let cand = if k >= 1 {
                self.full.find_next(cursor)?
            } else {
                self.nonempty.find_next(cursor)?
            };
            let abs = og + cand as u64;
            let aligned = abs.checked_add(ga - 1)? & !(ga - 1);
            let g = usize::try_from(aligned - og).ok()?;
            if g >= groups || k + usize::from(r > 0) > groups - g {
                return None;
            }
            if g != cand {
                cursor = g;
                continue;
            }
            if let Some(j) = (0..k).find(|&j| u64::from(self.group_free[g + j]) != GROUP_FRAMES) {
                cursor = g + j + 1;
                continue;
            }
            if r > 0 && !self.prefix_free(g + k, r) {
                cursor = g + 1;
                continue;
            }
            return Some(g * GROUP_FRAMES as usize);
        }
    }

    /// `n <= align < 512`: the run lies inside one `align`-aligned window of one group, so
    /// groups with fewer than `n` free frames are skipped.
    pub(super) fn search_confined(&self, n: u64, align: u64) -> Option<usize> {
        let mut g = self.hint / GROUP_WORDS;
        loop {
            g = self.nonempty.find_next(g)?;
            if u64::from(self.group_free[g]) >= n {
                let words = g * GROUP_WORDS..(g + 1) * GROUP_WORDS;
                if align <= 64 {
                    let pat = align_pattern(align);
                    for w in words {
                        let m = run_mask(self.words[w], n) & pat;
                        if m != 0 {
                            return Some(w * 64 + m.trailing_zeros() as usize);
                        }
                    }
                } else {
                    let step = (align / 64) as usize;
                    let nfull = (n / 64) as usize;
                    let rem = n % 64;
                    for w in words.step_by(step) {
                        let ok = self.words[w..w + nfull].iter().all(|&x| x == !0)
                            && (rem == 0 || self.words[w + nfull] & low_mask(rem) == low_mask(rem));
                        if ok {
                            return Some(w * 64);
                        }
                    }
                }
            }
            g += 1;
        }
    }

    /// General case (`align < n`, `align < 512`): walk maximal free runs in address order,
    /// skipping empty groups via `nonempty` and, for `n >= 1023` (such a run always contains
    /// an entirely free group), jumping to the group before the next entirely free one.
    pub(super) fn search_runs(&self, n: u64, align: u64) -> Option<usize> {
        let groups = self.group_free.len();
        let origin = self.origin;
        // Lowest aligned start inside the run [rs, rs + rl) that fits n frames.
        let fit = |rs: usize, rl: u64| -> Option<usize> {
            let abs = origin + rs as u64;
            let s = (abs + align - 1) & !(align - 1);
            let off = s - abs;
            (off + n <= rl).then_some(rs + off as usize)
        };
        let mut g = self.hint / GROUP_WORDS;
        let mut run_start = 0usize;
        let mut run_len = 0u64;
        while g < groups {
            if run_len == 0 {
                g = if n >= 2 * GROUP_FRAMES - 1 {
                    self.full.find_next(g)?.saturating_sub(1).max(g)
                } else {
                    self.nonempty.find_next(g)?
                };
            }
            let cnt = u64::from(self.group_free[g]);
            if cnt == 0 {
                run_len = 0;
                g += 1;
                continue;
            }
            if cnt == GROUP_FRAMES {
                if run_len == 0 {
                    run_start = g * GROUP_FRAMES as usize;
                }
                run_len += GROUP_FRAMES;
                if let Some(s) = fit(run_start, run_len) {
                    return Some(s);
                }
                g += 1;
                continue;
            }
            for w in g * GROUP_WORDS..(g + 1) * GROUP_WORDS {
                let word = self.words[w];
                if word == 0 {
                    run_len = 0;
                    continue;
                }
                let mut pos = 0u32;
                while pos < 64 {
                    let x = word >> pos;
                    if x == 0 {
                        run_len = 0;
                        break;
                    }
                    let zeros = x.trailing_zeros();
                    if zeros > 0 {
                        run_len = 0;
                        pos += zeros;
                        continue;
                    }
                    // `!x` has ones above bit 63 - pos, so this stops at the word's end.
                    let ones = if pos == 0 && x == !0 {
                        64
                    } else {
                        (!x).trailing_zeros()
                    };
                    if run_len == 0 {
                        run_start = w * 64 + pos as usize;
                    }
                    run_len += u64::from(ones);
                    if let Some(s) = fit(run_start, run_len) {
                        return Some(s);
                    }
                    pos += ones;
                }
            }
            g += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(run_mask(0b1110_1111, 3), 0b0010_0011);
        assert_eq!(run_mask(!0, 64), 1);
        assert_eq!(run_mask(!0 >> 1, 64), 0);
        assert_eq!(run_mask(0b1011, 1), 0b1011);
        assert_eq!(align_pattern(1), !0);
        assert_eq!(align_pattern(2), 0x5555_5555_5555_5555);
        assert_eq!(align_pattern(32), 0x0000_0001_0000_0001);
        assert_eq!(align_pattern(64), 1);
    }
}
