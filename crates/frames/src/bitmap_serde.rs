//! Serialize / Deserialize of [`BitmapAllocator`] (memvisor's snapshot STATE section): the
//! bitmap as one run-length-coded byte string, the derived structures rebuilt on load.
//!
//! # Encoding
//! A map (named fields) of `base`, `frames`, `hint`, `free`, `reserved_frames`,
//! `allocations`, `frees`, `failures`, `reserved` (the coalesced `[start, end)` PFN ranges)
//! and `words_rle`: the bitmap words (1 bit per 4 KiB frame, 1 = free; see
//! [`BitmapAllocator`]'s layout) as a byte string of 12-byte records `run u32 LE, word u64
//! LE`, each `run` ≥ 1 consecutive words equal to `word`. A guest's bitmap is mostly long
//! runs of all-free or all-used words, so a 4 GiB guest's 16 K words take a few records
//! instead of 16 K integers; a byte string decodes as one copy, not one item per word.
//!
//! `origin`, the group counts, both summaries and the reserved-group bits are not stored:
//! they follow from the rest and are rebuilt, so a decoded allocator is consistent by
//! construction. Decoding refuses (a serde error naming the defect, never a panic) a size
//! out of range, a bitmap of another length, a zero run, a set padding bit, a free frame
//! below the hint, free / reserved counts that disagree with the bitmap and the ranges, and
//! a reserved range outside the managed frames.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::bitmap::{BitmapAllocator, GROUP_FRAMES, GROUP_WORDS, MAX_FRAMES, MAX_PFN};
use super::summary::SummaryBits;

/// Bytes of one run record: `run u32`, `word u64`.
const RECORD: usize = 12;

/// The written form (borrowing the allocator).
#[derive(Serialize)]
struct Out<'a> {
    base: u64,
    frames: u64,
    hint: usize,
    free: u64,
    reserved_frames: u64,
    allocations: u64,
    frees: u64,
    failures: u64,
    reserved: &'a BTreeMap<u64, u64>,
    #[serde(with = "serde_bytes")]
    words_rle: Vec<u8>,
}

/// The read form.
#[derive(Deserialize)]
struct In {
    base: u64,
    frames: u64,
    hint: usize,
    free: u64,
    reserved_frames: u64,
    allocations: u64,
    frees: u64,
    failures: u64,
    reserved: BTreeMap<u64, u64>,
    #[serde(with = "serde_bytes")]
    words_rle: Vec<u8>,
}

/// Run-length code `words` (see the module docs).
fn encode(words: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let mut n = 1usize;
        while i + n < words.len() && words[i + n] == w && n < u32::MAX as usize {
            n += 1;
        }
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&w.to_le_bytes());
        i += n;
    }
    out
}

/// Decode `bytes` into exactly `len` words; never allocates more than `len` words.
fn decode(bytes: &[u8], len: usize) -> Result<Vec<u64>, String> {
    if bytes.len() % RECORD != 0 {
        return Err(format!(
            "bitmap runs: {} bytes, not whole {RECORD}-byte records",
            bytes.len()
        ));
    }
    let mut words = Vec::with_capacity(len);
    for rec in bytes.chunks_exact(RECORD) {
        let (n, w) = rec.split_at(4);
        let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        if n == 0 || n > len - words.len() {
            return Err(format!(
                "bitmap runs: a run of {n} words at word {} of {len}",
                words.len()
            ));
        }
        words.resize(words.len() + n, u64::from_le_bytes(b));
    }
    if words.len() != len {
        return Err(format!(
            "bitmap runs: {} words, the allocator has {len}",
            words.len()
        ));
    }
    Ok(words)
}

impl Serialize for BitmapAllocator {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Out {
            base: self.base,
            frames: self.frames,
            hint: self.hint,
            free: self.free,
            reserved_frames: self.reserved_frames,
            allocations: self.allocations,
            frees: self.frees,
            failures: self.failures,
            reserved: &self.reserved,
            words_rle: encode(&self.words),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for BitmapAllocator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        rebuild(In::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// The allocator `i` describes, its derived parts rebuilt, or what is wrong with it.
fn rebuild(i: In) -> Result<BitmapAllocator, String> {
    let end = i.base.checked_add(i.frames).filter(|&e| e <= MAX_PFN);
    let Some(end) = end.filter(|_| i.frames <= MAX_FRAMES) else {
        return Err(format!(
            "bitmap of {} frames at PFN {:#x}: out of range",
            i.frames, i.base
        ));
    };
    let origin = i.base & !(GROUP_FRAMES - 1);
    let groups = (end - origin).div_ceil(GROUP_FRAMES) as usize;
    let words = decode(&i.words_rle, groups * GROUP_WORDS)?;
    if i.hint > words.len() || words[..i.hint].iter().any(|&w| w != 0) {
        return Err(format!(
            "bitmap: a free frame below the hint word {}",
            i.hint
        ));
    }
    let mut resv_groups = vec![0u64; groups.div_ceil(64)];
    let mut resv = 0u64;
    for (&s, &e) in &i.reserved {
        if s >= e || s < i.base || e > end {
            return Err(format!(
                "bitmap: reserved range [{s:#x}, {e:#x}) outside the frames"
            ));
        }
        resv += e - s;
        for g in (s - origin) / GROUP_FRAMES..=(e - 1 - origin) / GROUP_FRAMES {
            resv_groups[g as usize / 64] |= 1u64 << (g % 64);
        }
    }
    if resv != i.reserved_frames {
        return Err(format!(
            "bitmap: reserved {} != ranges {resv}",
            i.reserved_frames
        ));
    }
    let mut a = BitmapAllocator {
        base: i.base,
        frames: i.frames,
        origin,
        words,
        group_free: vec![0; groups],
        nonempty: SummaryBits::new(groups),
        full: SummaryBits::new(groups),
        resv_groups,
        reserved: i.reserved,
        hint: i.hint,
        free: i.free,
        reserved_frames: i.reserved_frames,
        allocations: i.allocations,
        frees: i.frees,
        failures: i.failures,
    };
    a.rebuild_summaries();
    // The rest holds by construction: free count = the bitmap's, padding bits clear.
    let free: u64 = a.group_free.iter().map(|&c| u64::from(c)).sum();
    if free != a.free {
        return Err(format!("bitmap: free {} != bitmap {free}", a.free));
    }
    let first = (a.base - origin) as usize;
    let last = first + a.frames as usize;
    let pad = |i: usize| a.words[i / 64] & (1u64 << (i % 64)) != 0;
    if (0..first).chain(last..a.words.len() * 64).any(pad) {
        return Err("bitmap: a padding bit is set".into());
    }
    debug_assert!(a.check_invariants().is_ok());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pfn;
    use proptest::prelude::*;

    fn roundtrip(a: &BitmapAllocator) -> BitmapAllocator {
        let mut buf = Vec::new();
        ciborium::into_writer(a, &mut buf).expect("encode");
        ciborium::from_reader(&buf[..]).expect("decode")
    }

    proptest! {
        /// Any allocator state (allocations, frees, reservations) survives a round trip
        /// exactly and keeps allocating as the original does.
        #[test]
        fn roundtrip_equals(base in 0u64..4096, frames in 0u64..20_000,
                            ops in proptest::collection::vec((0u8..3, 1u64..600), 0..40)) {
            let mut a = BitmapAllocator::new(Pfn::new(base), frames);
            let mut held = Vec::new();
            for (op, n) in ops {
                match op {
                    0 => if let Ok(p) = a.alloc_contiguous(n, 1) { held.push((p, n)); },
                    1 => if let Some((p, n)) = held.pop() { let _ = a.free(p, n); },
                    _ => { let _ = a.reserve(Pfn::new(base + n * 7 % frames.max(1)), n % 5 + 1); }
                }
            }
            let mut b = roundtrip(&a);
            prop_assert!(b.check_invariants().is_ok());
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            prop_assert_eq!(a.alloc_contiguous(3, 1).ok(), b.alloc_contiguous(3, 1).ok());
            prop_assert_eq!(a.alloc().ok(), b.alloc().ok());
        }
    }

    #[test]
    fn hostile_encodings_are_refused() {
        let a = BitmapAllocator::new(Pfn::new(0), 4096);
        let good = Out {
            base: a.base,
            frames: a.frames,
            hint: a.hint,
            free: a.free,
            reserved_frames: 0,
            allocations: 0,
            frees: 0,
            failures: 0,
            reserved: &a.reserved,
            words_rle: encode(&a.words),
        };
        let dec = |o: &Out| {
            let mut buf = Vec::new();
            ciborium::into_writer(o, &mut buf).expect("encode");
            ciborium::from_reader::<BitmapAllocator, _>(&buf[..]).map_err(|e| e.to_string())
        };
        assert!(dec(&good).is_ok());
        let mut runs = encode(&a.words);
        runs[0] = 0; // a run of 64 words -> 0 words... plus a short tail
        runs[1] = 0;
        runs[2] = 0;
        runs[3] = 0;
        for bad in [
            Out {
                words_rle: runs,
                ..good_copy(&good)
            },
            Out {
                words_rle: encode(&vec![!0u64; 10_000]),
                ..good_copy(&good)
            },
            Out {
                words_rle: vec![1, 2, 3],
                ..good_copy(&good)
            },
            Out {
                free: 1,
                ..good_copy(&good)
            },
            Out {
                frames: u64::MAX,
                ..good_copy(&good)
            },
            Out {
                hint: 1 << 40,
                ..good_copy(&good)
            },
            Out {
                words_rle: encode(&[!0u64; 72]),
                ..good_copy(&good)
            },
        ] {
            assert!(dec(&bad).is_err());
        }
        // Padding frame 0 free (frames 1..512 managed), the free count agreeing.
        let pad = Out {
            base: 1,
            frames: 511,
            hint: 0,
            free: 512,
            words_rle: encode(&[!0u64; 8]),
            ..good_copy(&good)
        };
        assert!(dec(&pad).is_err_and(|e| e.contains("padding")));
        let mut r = BTreeMap::new();
        r.insert(4000u64, 5000u64);
        let bad = Out {
            reserved: &r,
            reserved_frames: 1000,
            ..good_copy(&good)
        };
        assert!(dec(&bad).is_err());
    }

    fn good_copy<'a>(o: &Out<'a>) -> Out<'a> {
        Out {
            words_rle: o.words_rle.clone(),
            ..*o
        }
    }
}
