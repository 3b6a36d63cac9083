//! Model tests for `memvisor::frames` (issue 2): random operation sequences against simple
//! shadow models, plus unit tests of edge cases and reports.
//!
//! * `BitmapAllocator` vs a `Vec<St>` (free / used / reserved per frame): exact first-fit
//!   results, exact error values, unchanged state after errors, every statistic, buddyinfo.
//! * `ZoneTable` vs per-RAM-frame states plus a re-implementation of the zonelist and
//!   `lowmem_reserve` rules: the serving zone and frame, errors, per-zone statistics.
//! * `FreeMap` vs a `Vec<bool>`: first/best fit results, errors, coalesced extents.

use memvisor_frames::addr::{Gpa, Pfn};
use memvisor_frames::{
    BitmapAllocator, BitmapStats, FitPolicy, FrameError, FreeMap, ZoneKind, ZonePreset, ZoneTable,
};
use proptest::prelude::*;

/// Proptest case count: `default`, or `PROPTEST_CASES` from the environment for deep runs.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Free,
    Used,
    Resv,
}

/// Maximal-buddy-block counts from the maximal free runs `[s, e)` (PFNs): an aligned block
/// of 2^k frames is entirely free iff it lies inside one maximal free run.
fn buddy_from_runs(runs: &[(u64, u64)]) -> [u64; 11] {
    let mut full = [0u64; 12];
    for (k, slot) in full.iter_mut().enumerate().take(11) {
        let b = 1u64 << k;
        *slot = runs
            .iter()
            .map(|&(s, e)| (e / b).saturating_sub(s.div_ceil(b)))
            .sum();
    }
    let mut out = [0u64; 11];
    for k in 0..11 {
        out[k] = full[k] - if k < 10 { 2 * full[k + 1] } else { 0 };
    }
    out
}

/// Lowest `p` in `cands` (ascending PFNs with their state) starting an aligned free run of
/// `n`; `None` if absent. `cands` must list consecutive PFNs per segment; segments are
/// separated by a `None` state (a hole).
fn first_fit(cells: &[(u64, Option<St>)], n: u64, align: u64) -> Option<u64> {
    // run[i] = free cells from i onwards (with consecutive PFNs)
    let mut run = vec![0u64; cells.len() + 1];
    for i in (0..cells.len()).rev() {
        let cont = i + 1 < cells.len() && cells[i + 1].0 == cells[i].0 + 1;
        run[i] = if cells[i].1 == Some(St::Free) {
            1 + if cont { run[i + 1] } else { 0 }
        } else {
            0
        };
    }
    cells
        .iter()
        .enumerate()
        .find(|(i, c)| c.0 % align == 0 && run[*i] >= n)
        .map(|(_, c)| c.0)
}

// ---------------------------------------------------------------------------------------
// BitmapAllocator
// ---------------------------------------------------------------------------------------

struct BitModel {
    base: u64,
    st: Vec<St>,
    stats: BitmapStats,
}

impl BitModel {
    fn end(&self) -> u64 {
        self.base + self.st.len() as u64
    }
    fn range(&self, pfn: u64, n: u64) -> Result<std::ops::Range<usize>, FrameError> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        let out = FrameError::OutOfRange {
            pfn: Pfn::new(pfn),
            count: n,
        };
        let end = pfn.checked_add(n).ok_or(out.clone())?;
        if pfn < self.base || end > self.end() {
            return Err(out);
        }
        Ok((pfn - self.base) as usize..(end - self.base) as usize)
    }
    fn first(&self, r: &std::ops::Range<usize>, s: St) -> Option<Pfn> {
        r.clone()
            .find(|&i| self.st[i] == s)
            .map(|i| Pfn::new(self.base + i as u64))
    }
    fn check_free(&self, pfn: u64, n: u64) -> Result<std::ops::Range<usize>, FrameError> {
        let r = self.range(pfn, n)?;
        if let Some(p) = self.first(&r, St::Resv) {
            return Err(FrameError::Reserved { pfn: p });
        }
        if r.clone().all(|i| self.st[i] == St::Free) {
            return Err(FrameError::DoubleFree { pfn: Pfn::new(pfn) });
        }
        if let Some(p) = self.first(&r, St::Free) {
            return Err(FrameError::NotAllocated { pfn: p });
        }
        Ok(r)
    }
    fn check_reserve(&self, pfn: u64, n: u64) -> Result<std::ops::Range<usize>, FrameError> {
        let r = self.range(pfn, n)?;
        if let Some(p) = self.first(&r, St::Resv) {
            return Err(FrameError::Reserved { pfn: p });
        }
        if let Some(p) = self.first(&r, St::Used) {
            return Err(FrameError::InUse { pfn: p });
        }
        Ok(r)
    }
    fn alloc(&self, n: u64, align: u64) -> Result<u64, FrameError> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        if !align.is_power_of_two() {
            return Err(FrameError::BadAlign { align });
        }
        let cells: Vec<(u64, Option<St>)> = self
            .st
            .iter()
            .enumerate()
            .map(|(i, &s)| (self.base + i as u64, Some(s)))
            .collect();
        first_fit(&cells, n, align).ok_or(FrameError::OutOfFrames {
            requested: n,
            zone: None,
        })
    }
    fn set(&mut self, r: std::ops::Range<usize>, s: St) {
        for i in r {
            self.st[i] = s;
        }
    }
    fn count(&self, s: St) -> u64 {
        self.st.iter().filter(|&&x| x == s).count() as u64
    }
    fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.st.len() {
            if self.st[i] == St::Free {
                let s = i;
                while i < self.st.len() && self.st[i] == St::Free {
                    i += 1;
                }
                runs.push((self.base + s as u64, self.base + i as u64));
            } else {
                i += 1;
            }
        }
        runs
    }
}

#[derive(Debug, Clone)]
enum BitOp {
    Alloc,
    Contig { n: u64, align_log: u32 },
    FreeLive { idx: usize },
    FreeRaw { off: i64, n: u64 },
    Reserve { off: i64, n: u64 },
}

fn count_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1u64..=8,
        3 => 9u64..=80,
        2 => prop::sample::select(vec![63u64, 64, 65, 128, 256, 511, 512, 513, 1023, 1024, 1500]),
        1 => prop::sample::select(vec![0u64, u64::MAX, u64::MAX / 2, 1 << 40]),
    ]
}

fn bit_op() -> impl Strategy<Value = BitOp> {
    prop_oneof![
        8 => Just(BitOp::Alloc),
        5 => (count_strategy(), prop_oneof![4 => 0u32..=6, 2 => 7u32..=10, 1 => Just(63u32)])
            .prop_map(|(n, align_log)| BitOp::Contig { n, align_log }),
        7 => any::<usize>().prop_map(|idx| BitOp::FreeLive { idx }),
        3 => (-20i64..3100, count_strategy()).prop_map(|(off, n)| BitOp::FreeRaw { off, n }),
        2 => (-20i64..3100, count_strategy()).prop_map(|(off, n)| BitOp::Reserve { off, n }),
    ]
}

fn check_bitmap(a: &BitmapAllocator, m: &BitModel, full: bool) {
    assert_eq!(a.stats(), m.stats, "stats");
    if let Err(e) = a.check_invariants() {
        panic!("invariant: {e}");
    }
    assert_eq!(m.stats.free, m.count(St::Free));
    assert_eq!(m.stats.used, m.count(St::Used));
    assert_eq!(m.stats.reserved, m.count(St::Resv));
    if full {
        for (i, &s) in m.st.iter().enumerate() {
            let p = Pfn::new(m.base + i as u64);
            assert_eq!(a.is_free(p), s == St::Free, "is_free {p}");
            assert_eq!(a.is_reserved(p), s == St::Resv, "is_reserved {p}");
            assert_eq!(a.is_allocated(p), s == St::Used, "is_allocated {p}");
        }
        for p in [m.base.wrapping_sub(1), m.end(), u64::MAX] {
            assert!(!a.is_free(Pfn::new(p)) && !a.is_reserved(Pfn::new(p)));
        }
        assert_eq!(
            a.free_runs_by_order(),
            buddy_from_runs(&m.runs()),
            "buddyinfo"
        );
        let mut resv = Vec::new();
        for (s, e) in
            m.st.iter()
                .enumerate()
                .filter(|(_, &s)| s == St::Resv)
                .map(|(i, _)| (m.base + i as u64, m.base + i as u64 + 1))
        {
            match resv.last_mut() {
                Some((_, le)) if *le == s => *le = e,
                _ => resv.push((s, e)),
            }
        }
        let got: Vec<(u64, u64)> = a
            .reserved_ranges()
            .map(|(p, n)| (p.raw(), p.raw() + n))
            .collect();
        assert_eq!(got, resv, "reserved ranges");
    }
}

fn run_bitmap(base: u64, frames: u64, fill: Option<(u64, f64)>, ops: Vec<BitOp>) {
    let mut a = BitmapAllocator::new(Pfn::new(base), frames);
    let mut m = BitModel {
        base,
        st: vec![St::Free; frames as usize],
        stats: BitmapStats {
            total: frames,
            free: frames,
            ..BitmapStats::default()
        },
    };
    if let Some((seed, ratio)) = fill {
        let filled = a.init_bitmap_rand(seed, ratio);
        for (i, s) in m.st.iter_mut().enumerate() {
            if !a.is_free(Pfn::new(base + i as u64)) {
                *s = St::Used;
            }
        }
        assert_eq!(filled, m.count(St::Used));
        m.stats.free -= filled;
        m.stats.used += filled;
    }
    check_bitmap(&a, &m, true);
    let mut live: Vec<(u64, u64)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let before = a.clone();
        let ok = match op {
            BitOp::Alloc | BitOp::Contig { .. } => {
                let (n, align) = match op {
                    BitOp::Contig { n, align_log } => (n, 1u64 << align_log),
                    _ => (1, 1),
                };
                let want = m.alloc(n, align);
                let got = if n == 1 && align == 1 && step % 2 == 0 {
                    a.alloc()
                } else {
                    a.alloc_contiguous(n, align)
                };
                assert_eq!(got.clone().map(|p| p.raw()), want, "alloc({n}, {align})");
                if let Ok(p) = want {
                    let r = (p - base) as usize..(p - base + n) as usize;
                    assert!(r.clone().all(|i| m.st[i] == St::Free), "handed out twice");
                    m.set(r, St::Used);
                    m.stats.free -= n;
                    m.stats.used += n;
                    m.stats.allocations += 1;
                    live.push((p, n));
                }
                want.is_ok()
            }
            BitOp::FreeLive { .. } | BitOp::FreeRaw { .. } => {
                let (p, n) = match op {
                    BitOp::FreeLive { idx } => {
                        if live.is_empty() {
                            continue;
                        }
                        live.swap_remove(idx % live.len())
                    }
                    BitOp::FreeRaw { off, n } => ((base as i64 + off).max(0) as u64, n),
                    _ => unreachable!(),
                };
                let want = m.check_free(p, n);
                let got = a.free(Pfn::new(p), n);
                assert_eq!(got, want.clone().map(|_| ()), "free({p}, {n})");
                if let Ok(r) = want {
                    m.set(r, St::Free);
                    m.stats.free += n;
                    m.stats.used -= n;
                    m.stats.frees += 1;
                    true
                } else {
                    false
                }
            }
            BitOp::Reserve { off, n } => {
                let p = (base as i64 + off).max(0) as u64;
                let want = m.check_reserve(p, n);
                let got = a.reserve(Pfn::new(p), n);
                assert_eq!(got, want.clone().map(|_| ()), "reserve({p}, {n})");
                if let Ok(r) = want {
                    m.set(r, St::Resv);
                    m.stats.free -= n;
                    m.stats.reserved += n;
                    true
                } else {
                    false
                }
            }
        };
        if !ok {
            m.stats.failures += 1;
            // An error changes nothing but the failure counter.
            assert_eq!(a.words_snapshot(), before.words_snapshot());
            assert_eq!(a.free_runs_by_order(), before.free_runs_by_order());
        }
        check_bitmap(&a, &m, step % 16 == 15);
    }
    check_bitmap(&a, &m, true);
}

/// Comparable snapshot of an allocator's observable state (everything but counters).
trait Snapshot {
    fn words_snapshot(&self) -> (Vec<(u64, u64)>, u64, Pfn, [u64; 11]);
}

impl Snapshot for BitmapAllocator {
    fn words_snapshot(&self) -> (Vec<(u64, u64)>, u64, Pfn, [u64; 11]) {
        let mut free = Vec::new();
        let mut p = self.base().raw();
        while p < self.end().raw() {
            if self.is_free(Pfn::new(p)) {
                let s = p;
                while p < self.end().raw() && self.is_free(Pfn::new(p)) {
                    p += 1;
                }
                free.push((s, p));
            } else {
                p += 1;
            }
        }
        let st = self.stats();
        (
            free,
            st.reserved,
            self.next_free_hint(),
            self.free_runs_by_order(),
        )
    }
}

fn base_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(511),
        Just(512),
        Just(1000),
        Just(3 * 4096 + 17),
        0u64..5000
    ]
}

fn frames_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=70, Just(512), Just(1024), Just(2048), 500u64..=3000,]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn bitmap_matches_model(
        base in base_strategy(),
        frames in frames_strategy(),
        fill in prop::option::weighted(0.3, (any::<u64>(), 0.0f64..1.0)),
        ops in prop::collection::vec(bit_op(), 1..160),
    ) {
        run_bitmap(base, frames, fill, ops);
    }
}

// ---------------------------------------------------------------------------------------
// ZoneTable
// ---------------------------------------------------------------------------------------

struct ZoneModel {
    preset: ZonePreset,
    /// RAM frame states (holes are absent).
    st: std::collections::BTreeMap<u64, St>,
    zones: Vec<ZM>,
}

#[derive(Debug, Default, Clone)]
struct ZM {
    kind: Option<ZoneKind>,
    start: u64,
    end: u64,
    present: u64,
    allocations: u64,
    frees: u64,
    fallbacks_in: u64,
    fallbacks_out: u64,
    failures: u64,
}

fn layout(preset: ZonePreset) -> Vec<(ZoneKind, u64, u64)> {
    const M16: u64 = 4096;
    const M896: u64 = 229_376;
    const G4: u64 = 1 << 20;
    const TOP: u64 = 1 << 52;
    match preset {
        ZonePreset::X86_64 => vec![
            (ZoneKind::Dma, 0, M16),
            (ZoneKind::Dma32, M16, G4),
            (ZoneKind::Normal, G4, TOP),
        ],
        ZonePreset::Legacy => vec![
            (ZoneKind::Dma, 0, M16),
            (ZoneKind::Normal, M16, M896),
            (ZoneKind::HighMem, M896, TOP),
        ],
    }
}

fn zonelist(preset: ZonePreset, z: ZoneKind) -> Option<Vec<ZoneKind>> {
    use ZoneKind::*;
    match (preset, z) {
        (_, Dma) => Some(vec![Dma]),
        (ZonePreset::X86_64, Dma32) => Some(vec![Dma32, Dma]),
        (ZonePreset::X86_64, Normal) => Some(vec![Normal, Dma32, Dma]),
        (ZonePreset::Legacy, Normal) => Some(vec![Normal, HighMem, Dma]),
        (ZonePreset::Legacy, HighMem) => Some(vec![HighMem, Normal, Dma]),
        _ => None,
    }
}

fn ratio(k: ZoneKind) -> u64 {
    match k {
        ZoneKind::Dma | ZoneKind::Dma32 => 256,
        ZoneKind::Normal => 32,
        ZoneKind::HighMem => 0,
    }
}

impl ZoneModel {
    fn new(ram: &[(u64, u64)], preset: ZonePreset) -> Self {
        // RAM pfn ranges: start rounded up, end rounded down.
        let mut st = std::collections::BTreeMap::new();
        // Touching byte ranges merge before rounding to whole frames.
        let mut bytes: Vec<(u64, u64)> = ram.iter().map(|&(s, l)| (s, s + l)).collect();
        bytes.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in bytes {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        for (s, e) in merged {
            for p in s.div_ceil(4096)..e / 4096 {
                st.insert(p, St::Free);
            }
        }
        let zones = layout(preset)
            .into_iter()
            .map(|(kind, lo, hi)| {
                let frames: Vec<u64> = st.range(lo..hi).map(|(&p, _)| p).collect();
                let (start, end) = match (frames.first(), frames.last()) {
                    (Some(&f), Some(&l)) => (f, l + 1),
                    _ => (lo, lo),
                };
                ZM {
                    kind: Some(kind),
                    start,
                    end,
                    present: frames.len() as u64,
                    ..ZM::default()
                }
            })
            .collect();
        Self { preset, st, zones }
    }
    fn idx(&self, k: ZoneKind) -> Option<usize> {
        self.zones.iter().position(|z| z.kind == Some(k))
    }
    fn zone_at(&self, p: u64) -> Option<usize> {
        self.zones.iter().position(|z| z.start <= p && p < z.end)
    }
    fn count(&self, i: usize, s: St) -> u64 {
        let z = &self.zones[i];
        self.st
            .range(z.start..z.end)
            .filter(|(_, &x)| x == s)
            .count() as u64
    }
    fn managed(&self, i: usize) -> u64 {
        self.zones[i].present - self.count(i, St::Resv)
    }
    fn lowmem(&self, i: usize, req: ZoneKind) -> u64 {
        let k = self.zones[i].kind.unwrap();
        if k >= req || ratio(k) == 0 {
            return 0;
        }
        let above: u64 = (0..self.zones.len())
            .filter(|&j| {
                let kj = self.zones[j].kind.unwrap();
                kj > k && kj <= req
            })
            .map(|j| self.managed(j))
            .sum();
        above / ratio(k)
    }
    fn alloc(&mut self, req: ZoneKind, n: u64, align: u64, exact: bool) -> Result<u64, FrameError> {
        let list = zonelist(self.preset, req).ok_or(FrameError::NoSuchZone { zone: req })?;
        let ri = self.idx(req).unwrap();
        let bad = if n == 0 {
            Some(FrameError::ZeroCount)
        } else if !align.is_power_of_two() {
            Some(FrameError::BadAlign { align })
        } else {
            None
        };
        if let Some(e) = bad {
            self.zones[ri].failures += 1;
            return Err(e);
        }
        let tries = if exact { &list[..1] } else { &list[..] };
        for &k in tries {
            let i = self.idx(k).unwrap();
            let z = &self.zones[i];
            if z.start == z.end {
                continue;
            }
            if self.count(i, St::Free) < n.saturating_add(self.lowmem(i, req)) {
                continue;
            }
            let cells: Vec<(u64, Option<St>)> = self
                .st
                .range(z.start..z.end)
                .map(|(&p, &s)| (p, Some(s)))
                .collect();
            if let Some(p) = first_fit(&cells, n, align) {
                for q in p..p + n {
                    self.st.insert(q, St::Used);
                }
                self.zones[i].allocations += 1;
                if i != ri {
                    self.zones[i].fallbacks_in += 1;
                    self.zones[ri].fallbacks_out += 1;
                }
                return Ok(p);
            }
        }
        self.zones[ri].failures += 1;
        Err(FrameError::OutOfFrames {
            requested: n,
            zone: Some(req),
        })
    }
    /// First reserved-or-hole frame in [s, e), else first frame in state `s2`.
    fn first_bad(&self, s: u64, e: u64, second: St) -> Result<(), FrameError> {
        if let Some(p) = (s..e).find(|p| matches!(self.st.get(p), None | Some(St::Resv))) {
            return Err(FrameError::Reserved { pfn: Pfn::new(p) });
        }
        if second == St::Used {
            if let Some(p) = (s..e).find(|p| self.st.get(p) == Some(&St::Used)) {
                return Err(FrameError::InUse { pfn: Pfn::new(p) });
            }
        }
        Ok(())
    }
    fn free(&mut self, pfn: u64, n: u64) -> Result<(), FrameError> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        let out = FrameError::OutOfRange {
            pfn: Pfn::new(pfn),
            count: n,
        };
        let end = pfn.checked_add(n).ok_or(out.clone())?;
        let i = self.zone_at(pfn).ok_or(out.clone())?;
        if end > self.zones[i].end {
            let last = self.zones.iter().map(|z| z.end).max().unwrap();
            return Err(if end <= last {
                FrameError::Straddle {
                    pfn: Pfn::new(pfn),
                    count: n,
                }
            } else {
                out
            });
        }
        self.first_bad(pfn, end, St::Free)?;
        if (pfn..end).all(|p| self.st[&p] == St::Free) {
            return Err(FrameError::DoubleFree { pfn: Pfn::new(pfn) });
        }
        if let Some(p) = (pfn..end).find(|p| self.st[p] == St::Free) {
            return Err(FrameError::NotAllocated { pfn: Pfn::new(p) });
        }
        for p in pfn..end {
            self.st.insert(p, St::Free);
        }
        self.zones[i].frees += 1;
        Ok(())
    }
    fn reserve(&mut self, pfn: u64, n: u64) -> Result<(), FrameError> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        let out = FrameError::OutOfRange {
            pfn: Pfn::new(pfn),
            count: n,
        };
        let end = pfn.checked_add(n).ok_or(out.clone())?;
        let mut cur = pfn;
        while cur < end {
            let i = self.zone_at(cur).ok_or(out.clone())?;
            let pe = end.min(self.zones[i].end);
            self.first_bad(cur, pe, St::Used)?;
            cur = pe;
        }
        for p in pfn..end {
            self.st.insert(p, St::Resv);
        }
        Ok(())
    }
    fn runs(&self, i: usize) -> Vec<(u64, u64)> {
        let z = &self.zones[i];
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (&p, _) in self
            .st
            .range(z.start..z.end)
            .filter(|(_, &s)| s == St::Free)
        {
            match runs.last_mut() {
                Some((_, e)) if *e == p => *e = p + 1,
                _ => runs.push((p, p + 1)),
            }
        }
        runs
    }
}

fn check_zones(t: &ZoneTable, m: &ZoneModel, full: bool) {
    let zs = t.zones();
    assert_eq!(zs.len(), m.zones.len());
    let mut total = 0;
    for (i, (z, mz)) in zs.iter().zip(&m.zones).enumerate() {
        assert_eq!(Some(z.kind), mz.kind);
        assert_eq!(z.name, z.kind.name());
        assert_eq!(
            (z.start_pfn.raw(), z.end_pfn.raw()),
            (mz.start, mz.end),
            "{} span",
            z.name
        );
        assert_eq!(z.spanned, mz.end - mz.start);
        assert_eq!(z.present, mz.present, "{} present", z.name);
        assert_eq!(z.managed, m.managed(i), "{} managed", z.name);
        assert_eq!(z.free, m.count(i, St::Free), "{} free", z.name);
        assert_eq!(
            (
                z.allocations,
                z.frees,
                z.fallbacks_in,
                z.fallbacks_out,
                z.failures
            ),
            (
                mz.allocations,
                mz.frees,
                mz.fallbacks_in,
                mz.fallbacks_out,
                mz.failures
            ),
            "{} counters",
            z.name
        );
        let prot: Vec<u64> = m
            .zones
            .iter()
            .map(|o| m.lowmem(i, o.kind.unwrap()))
            .collect();
        assert_eq!(z.protection, prot, "{} protection", z.name);
        assert_eq!(
            z.free_runs_by_order,
            buddy_from_runs(&m.runs(i)),
            "{} buddy",
            z.name
        );
        total += z.free;
    }
    assert_eq!(t.total_free(), total);
    if full {
        for (&p, &s) in &m.st {
            assert_eq!(
                t.is_allocated(Pfn::new(p)),
                s == St::Used,
                "is_allocated {p}"
            );
            assert_eq!(t.is_free(Pfn::new(p)), s == St::Free, "is_free {p}");
            assert!(t.is_ram(Pfn::new(p)));
            let want = m.zone_at(p).and_then(|i| m.zones[i].kind);
            assert_eq!(t.zone_of(Pfn::new(p)), want);
        }
    }
}

#[derive(Debug, Clone)]
enum ZOp {
    Alloc {
        zone: usize,
        n: u64,
        align_log: u32,
        exact: bool,
    },
    FreeLive {
        idx: usize,
    },
    FreeRaw {
        at: usize,
        off: i64,
        n: u64,
    },
    Reserve {
        at: usize,
        off: i64,
        n: u64,
    },
    /// Allocate from one zone only (chunks of 256, 16, then 1 frame) until it has at most
    /// `keep` free frames or an allocation fails: brings zones near exhaustion so fallback
    /// and `lowmem_reserve` decisions happen.
    Drain {
        zone: usize,
        keep: u64,
    },
}

fn zone_op() -> impl Strategy<Value = ZOp> {
    let n = prop_oneof![
        8 => 1u64..=6,
        3 => 7u64..=100,
        1 => prop::sample::select(vec![0u64, 512, 1024, 2000, u64::MAX]),
    ];
    prop_oneof![
        10 => (0usize..4, n.clone(), prop_oneof![5 => Just(0u32), 3 => 1u32..=6, 1 => Just(9u32)], any::<bool>())
            .prop_map(|(zone, n, align_log, exact)| ZOp::Alloc { zone, n, align_log, exact }),
        8 => any::<usize>().prop_map(|idx| ZOp::FreeLive { idx }),
        2 => (any::<usize>(), -40i64..2600, n.clone()).prop_map(|(at, off, n)| ZOp::FreeRaw { at, off, n }),
        2 => (any::<usize>(), -40i64..2600, n).prop_map(|(at, off, n)| ZOp::Reserve { at, off, n }),
        2 => (0usize..4, prop_oneof![0u64..8, 8u64..40]).prop_map(|(zone, keep)| ZOp::Drain { zone, keep }),
    ]
}

/// RAM ranges in bytes, non-overlapping: up to one range near each zone boundary (0, 16 MiB,
/// 896 MiB, 4 GiB), each `(offset frames, length frames, misaligned)`, plus an extra one.
fn ram_strategy() -> impl Strategy<Value = Vec<(u64, u64)>> {
    let anchors = [0u64, 4096, 229_376, 1 << 20];
    let piece = (
        -2500i64..2500,
        prop_oneof![1u64..64, 64u64..600, 600u64..3000],
        prop::bool::weighted(0.2),
    );
    (
        prop::collection::vec(prop::option::weighted(0.8, piece.clone()), 4),
        prop::option::of((0usize..4, piece)),
    )
        .prop_map(move |(v, extra)| {
            let mut r: Vec<(u64, u64)> = v
                .into_iter()
                .enumerate()
                .filter_map(|(a, p)| p.map(|p| (a, p)))
                .chain(extra)
                .map(|(a, (off, len, mis))| {
                    let pfn = (anchors[a] as i64 + off).max(0) as u64;
                    let extra = if mis { 100 } else { 0 };
                    (pfn * 4096 + extra, len * 4096)
                })
                .collect();
            r.sort_unstable();
            let mut out: Vec<(u64, u64)> = Vec::new();
            for (s, l) in r {
                if out.last().is_none_or(|&(ps, pl)| ps + pl <= s) {
                    out.push((s, l));
                }
            }
            out.reverse(); // the table must sort them itself
            out
        })
}

fn run_zones(ram: Vec<(u64, u64)>, legacy: bool, ops: Vec<ZOp>) {
    let preset = if legacy {
        ZonePreset::Legacy
    } else {
        ZonePreset::X86_64
    };
    let gpas: Vec<(Gpa, u64)> = ram.iter().map(|&(s, l)| (Gpa::new(s), l)).collect();
    let mut t = ZoneTable::new(&gpas, preset).expect("valid RAM map");
    let mut m = ZoneModel::new(&ram, preset);
    check_zones(&t, &m, true);
    let mut anchors: Vec<u64> = ram.iter().map(|&(s, _)| s / 4096).collect();
    anchors.push(4096);
    let mut live: Vec<(u64, u64)> = Vec::new();
    // Frames ever allocated or reserved.
    let mut ever: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            ZOp::Alloc {
                zone,
                n,
                align_log,
                exact,
            } => {
                let z = ZoneKind::ALL[zone];
                let align = 1u64 << align_log;
                let want = m.alloc(z, n, align, exact);
                let got = if exact {
                    t.alloc_exact(z, n, align)
                } else {
                    // alloc_fresh: "fresh" must mean no frame of the run was ever allocated
                    // or reserved (the caller then skips zeroing it).
                    t.alloc_fresh(z, n, align).map(|(p, fresh)| {
                        if fresh {
                            let used = (p.raw()..p.raw() + n).find(|f| ever.contains(f));
                            assert_eq!(used, None, "fresh run at {} reuses a frame", p.raw());
                        }
                        p
                    })
                };
                assert_eq!(
                    got.map(|p| p.raw()),
                    want,
                    "alloc({z}, {n}, {align}, {exact})"
                );
                if let Ok(p) = want {
                    live.push((p, n));
                    ever.extend(p..p + n);
                }
            }
            ZOp::FreeLive { idx } => {
                if live.is_empty() {
                    continue;
                }
                let (p, n) = live.swap_remove(idx % live.len());
                let want = m.free(p, n);
                assert_eq!(t.free(Pfn::new(p), n), want, "free({p}, {n})");
            }
            ZOp::FreeRaw { at, off, n } => {
                let p = (anchors[at % anchors.len()] as i64 + off).max(0) as u64;
                let want = m.free(p, n);
                assert_eq!(t.free(Pfn::new(p), n), want, "free raw({p}, {n})");
            }
            ZOp::Reserve { at, off, n } => {
                let p = (anchors[at % anchors.len()] as i64 + off).max(0) as u64;
                let want = m.reserve(p, n);
                assert_eq!(t.reserve(Pfn::new(p), n), want, "reserve({p}, {n})");
                if want.is_ok() {
                    ever.extend(p..p + n);
                }
            }
            ZOp::Drain { zone, keep } => {
                let z = ZoneKind::ALL[zone];
                let Some(i) = m.idx(z) else { continue };
                for chunk in [256u64, 16, 1] {
                    while m.count(i, St::Free) >= keep + chunk {
                        let want = m.alloc(z, chunk, 1, true);
                        assert_eq!(
                            t.alloc_exact(z, chunk, 1).map(|p| p.raw()),
                            want,
                            "drain {z}"
                        );
                        match want {
                            Ok(p) => {
                                live.push((p, chunk));
                                ever.extend(p..p + chunk);
                            }
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        check_zones(&t, &m, step % 25 == 24);
    }
    check_zones(&t, &m, true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn zones_match_model(
        ram in ram_strategy(),
        legacy in any::<bool>(),
        ops in prop::collection::vec(zone_op(), 1..200),
    ) {
        run_zones(ram, legacy, ops);
    }
}

// ---------------------------------------------------------------------------------------
// FreeMap
// ---------------------------------------------------------------------------------------

struct MapModel {
    start: u64,
    free: Vec<bool>,
}

impl MapModel {
    fn extents(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, _) in self.free.iter().enumerate().filter(|(_, &f)| f) {
            let p = self.start + i as u64;
            match out.last_mut() {
                Some((s, l)) if *s + *l == p => *l += 1,
                _ => out.push((p, 1)),
            }
        }
        out
    }
    fn alloc(&mut self, len: u64, align: u64, policy: FitPolicy) -> Result<u64, FrameError> {
        if len == 0 {
            return Err(FrameError::ZeroCount);
        }
        if !align.is_power_of_two() {
            return Err(FrameError::BadAlign { align });
        }
        let fits = |&(es, el): &(u64, u64)| -> Option<(u64, u64, u64)> {
            let a = es.checked_add(align - 1)? & !(align - 1);
            (a - es <= el && el - (a - es) >= len).then_some((el, es, a))
        };
        let ext = self.extents();
        let pick = match policy {
            FitPolicy::FirstFit => ext.iter().find_map(fits),
            FitPolicy::BestFit => ext.iter().filter_map(fits).min(),
        };
        let (_, _, a) = pick.ok_or(FrameError::NoSpace { len, align })?;
        for i in 0..len {
            self.free[(a - self.start + i) as usize] = false;
        }
        Ok(a)
    }
    fn alloc_at(&mut self, s: u64, len: u64) -> Result<u64, FrameError> {
        if len == 0 {
            return Err(FrameError::ZeroCount);
        }
        let bad = FrameError::BadRange { start: s, len };
        let e = s.checked_add(len).ok_or(bad.clone())?;
        if s < self.start || e > self.start + self.free.len() as u64 {
            return Err(bad);
        }
        let holder = self
            .extents()
            .into_iter()
            .find(|&(es, el)| es <= s && s < es + el);
        let (other_start, other_len) = holder.unwrap_or((s, 0));
        if holder.is_none() || other_start + other_len < e {
            return Err(FrameError::Overlap {
                start: s,
                len,
                other_start,
                other_len,
            });
        }
        for i in s..e {
            self.free[(i - self.start) as usize] = false;
        }
        Ok(s)
    }
    fn free(&mut self, s: u64, len: u64) -> Result<(), FrameError> {
        if len == 0 {
            return Err(FrameError::ZeroCount);
        }
        let bad = FrameError::BadRange { start: s, len };
        let e = s.checked_add(len).ok_or(bad.clone())?;
        if s < self.start || e > self.start + self.free.len() as u64 {
            return Err(bad);
        }
        let ext = self.extents();
        if let Some(&(ps, pl)) = ext.iter().rev().find(|&&(es, _)| es <= s) {
            if ps + pl >= e {
                return Err(FrameError::DoubleFreeExtent { start: s, len });
            }
            if ps + pl > s {
                return Err(FrameError::Overlap {
                    start: s,
                    len,
                    other_start: ps,
                    other_len: pl,
                });
            }
        }
        if let Some(&(ss, sl)) = ext.iter().find(|&&(es, _)| es > s) {
            if ss < e {
                return Err(FrameError::Overlap {
                    start: s,
                    len,
                    other_start: ss,
                    other_len: sl,
                });
            }
        }
        for i in s..e {
            self.free[(i - self.start) as usize] = true;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum MOp {
    Alloc {
        len: u64,
        align_log: u32,
        best: bool,
    },
    FreeLive {
        idx: usize,
        cut: (u16, u16),
    },
    FreeRaw {
        off: i64,
        len: u64,
    },
    AllocAt {
        off: i64,
        len: u64,
    },
}

fn map_op() -> impl Strategy<Value = MOp> {
    let len = prop_oneof![
        6 => 1u64..=20,
        3 => 21u64..=300,
        1 => prop::sample::select(vec![0u64, 2000, u64::MAX]),
    ];
    prop_oneof![
        6 => (len.clone(), prop_oneof![3 => Just(0u32), 2 => 1u32..=7, 1 => Just(63u32)], any::<bool>())
            .prop_map(|(len, align_log, best)| MOp::Alloc { len, align_log, best }),
        6 => (any::<usize>(), any::<(u16, u16)>()).prop_map(|(idx, cut)| MOp::FreeLive { idx, cut }),
        2 => (-30i64..1600, len.clone()).prop_map(|(off, len)| MOp::FreeRaw { off, len }),
        3 => (-30i64..1600, len).prop_map(|(off, len)| MOp::AllocAt { off, len }),
    ]
}

fn run_freemap(start_kind: u8, size: u64, ops: Vec<MOp>) {
    let start = match start_kind {
        0 => 0,
        1 => 4096,
        2 => 0x7fff_0000_1234,
        _ => u64::MAX - size,
    };
    let mut f = FreeMap::new(start, size);
    let mut m = MapModel {
        start,
        free: vec![true; size as usize],
    };
    let mut live: Vec<(u64, u64)> = Vec::new();
    let (mut allocs, mut frees, mut fails) = (0u64, 0u64, 0u64);
    for op in ops {
        let ok = match op {
            MOp::Alloc {
                len,
                align_log,
                best,
            } => {
                let align = 1u64 << align_log;
                let policy = if best {
                    FitPolicy::BestFit
                } else {
                    FitPolicy::FirstFit
                };
                let want = m.alloc(len, align, policy);
                let got = if best || align != 1 {
                    f.alloc_with(len, align, policy)
                } else {
                    f.alloc_freemap(len)
                };
                assert_eq!(got, want, "alloc({len}, {align}, {policy:?})");
                if let Ok(a) = want {
                    live.push((a, len));
                    allocs += 1;
                }
                want.is_ok()
            }
            MOp::FreeLive { idx, cut } => {
                if live.is_empty() {
                    continue;
                }
                let (a, len) = live.swap_remove(idx % live.len());
                // free a sub-range [a + x, a + y) and keep the rest live
                let x = u64::from(cut.0) % len;
                let y = x + 1 + u64::from(cut.1) % (len - x);
                let want = m.free(a + x, y - x);
                assert_eq!(
                    f.dealloc_freemap(a + x, y - x),
                    want.clone(),
                    "free({}, {})",
                    a + x,
                    y - x
                );
                if want.is_ok() {
                    frees += 1;
                    if x > 0 {
                        live.push((a, x));
                    }
                    if y < len {
                        live.push((a + y, len - y));
                    }
                }
                want.is_ok()
            }
            MOp::FreeRaw { off, len } => {
                let s = (start as i128 + off as i128).clamp(0, u64::MAX as i128) as u64;
                let want = m.free(s, len);
                assert_eq!(f.free(s, len), want.clone(), "free raw({s}, {len})");
                if want.is_ok() {
                    frees += 1;
                }
                want.is_ok()
            }
            MOp::AllocAt { off, len } => {
                let s = (start as i128 + off as i128).clamp(0, u64::MAX as i128) as u64;
                let want = m.alloc_at(s, len);
                assert_eq!(f.alloc_at(s, len), want.clone(), "alloc_at({s}, {len})");
                if want.is_ok() {
                    live.push((s, len));
                    allocs += 1;
                }
                want.is_ok()
            }
        };
        if !ok {
            fails += 1;
        }
        let ext: Vec<(u64, u64)> = f.extents().collect();
        assert_eq!(ext, m.extents(), "extents (coalesced)");
        assert_eq!(f.free_bytes(), m.free.iter().filter(|&&b| b).count() as u64);
        assert_eq!(f.extent_count(), ext.len());
        assert_eq!(
            f.largest_extent(),
            ext.iter().map(|e| e.1).max().unwrap_or(0)
        );
        assert_eq!(f.counters(), (allocs, frees, fails));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn freemap_matches_model(
        start_kind in 0u8..4,
        size in prop_oneof![1u64..=40, 41u64..=1500],
        ops in prop::collection::vec(map_op(), 1..150),
    ) {
        run_freemap(start_kind, size, ops);
    }
}

// ---------------------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------------------

#[test]
fn bitmap_extreme_inputs_are_errors() {
    let mut a = BitmapAllocator::new(Pfn::new(0x100), 1000);
    let before = a.stats();
    let oor = |pfn: u64, count: u64| FrameError::OutOfRange {
        pfn: Pfn::new(pfn),
        count,
    };
    assert_eq!(
        a.free(Pfn::new(u64::MAX), u64::MAX),
        Err(oor(u64::MAX, u64::MAX))
    );
    assert_eq!(a.free(Pfn::new(u64::MAX), 1), Err(oor(u64::MAX, 1)));
    assert_eq!(a.free(Pfn::new(0x100), u64::MAX), Err(oor(0x100, u64::MAX)));
    assert_eq!(a.free(Pfn::new(0xff), 1), Err(oor(0xff, 1)));
    assert_eq!(a.free(Pfn::new(0x100 + 1000), 1), Err(oor(0x100 + 1000, 1)));
    assert_eq!(a.free(Pfn::new(0x100), 0), Err(FrameError::ZeroCount));
    assert_eq!(
        a.reserve(Pfn::new(u64::MAX - 1), 5),
        Err(oor(u64::MAX - 1, 5))
    );
    assert_eq!(
        a.alloc_contiguous(u64::MAX, 1),
        Err(FrameError::OutOfFrames {
            requested: u64::MAX,
            zone: None
        })
    );
    assert_eq!(
        a.alloc_contiguous(1, 0),
        Err(FrameError::BadAlign { align: 0 })
    );
    assert_eq!(
        a.alloc_contiguous(1, 3),
        Err(FrameError::BadAlign { align: 3 })
    );
    assert_eq!(a.alloc_contiguous(0, 1), Err(FrameError::ZeroCount));
    // 2^63-aligned: no such PFN in [0x100, 0x100 + 1000).
    assert!(matches!(
        a.alloc_contiguous(1, 1 << 63),
        Err(FrameError::OutOfFrames { .. })
    ));
    assert_eq!(
        a.free(Pfn::new(0x100), 1),
        Err(FrameError::DoubleFree {
            pfn: Pfn::new(0x100)
        })
    );
    let after = a.stats();
    assert_eq!(
        (after.free, after.used, after.allocations),
        (before.free, 0, 0)
    );
    assert_eq!(after.failures, 13);

    // A PFN-0-based allocator can satisfy any power-of-two alignment at frame 0.
    let mut z = BitmapAllocator::new(Pfn::new(0), 10);
    assert_eq!(z.alloc_contiguous(1, 1 << 63), Ok(Pfn::new(0)));

    for (base, frames) in [
        (0, memvisor_frames::MAX_FRAMES + 1),
        (memvisor_frames::MAX_PFN, 1),
        (u64::MAX, 2),
    ] {
        assert!(matches!(
            BitmapAllocator::try_new(Pfn::new(base), frames),
            Err(FrameError::TooLarge { .. })
        ));
    }
    let empty = BitmapAllocator::new(Pfn::new(7), 0);
    assert_eq!(empty.stats().total, 0);
    let mut empty = empty;
    assert!(empty.alloc().is_err());
    assert!(empty.free(Pfn::new(7), 1).is_err());
}

/// A large allocator (3 summary levels): no exact first-fit model, but every result is
/// checked against a per-frame model and all internal invariants hold.
#[test]
fn bitmap_large_random_ops_keep_invariants() {
    let base = 0x12_3456u64;
    let frames = (1u64 << 21) + 12_345; // 4120 groups: 3 summary levels
    let mut a = BitmapAllocator::new(Pfn::new(base), frames);
    a.init_bitmap_rand(99, 0.3);
    let mut verified = 0;
    let mut used: Vec<bool> = (0..frames)
        .map(|i| !a.is_free(Pfn::new(base + i)))
        .collect();
    let mut live: Vec<(u64, u64)> = Vec::new();
    let mut rng = 0x9e37_79b9_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for step in 0..6000u32 {
        let r = next();
        match r % 8 {
            0..=3 => {
                let (n, align) = match r % 5 {
                    0 => (1, 1),
                    1 => (1 + (r >> 8) % 9, 1),
                    2 => (512, 512),
                    3 => (1 + (r >> 8) % 700, 1 << ((r >> 20) % 11)),
                    _ => (1 << ((r >> 8) % 7), 1 << ((r >> 8) % 7)),
                };
                match a.alloc_contiguous(n, align) {
                    Ok(p) => {
                        assert_eq!(p.raw() % align, 0);
                        let i = (p.raw() - base) as usize;
                        assert!(
                            used[i..i + n as usize].iter().all(|&u| !u),
                            "handed out twice"
                        );
                        used[i..i + n as usize].fill(true);
                        live.push((p.raw(), n));
                    }
                    Err(FrameError::OutOfFrames { .. }) if verified < 25 => {
                        verified += 1;
                        // Verify there really is no aligned free run of n frames.
                        let mut run = 0u64;
                        for (i, &u) in used.iter().enumerate() {
                            run = if u { 0 } else { run + 1 };
                            let start = base + i as u64 + 1 - run.min(i as u64 + 1);
                            let s = start.div_ceil(align) * align;
                            assert!(
                                run < n || s + n > base + i as u64 + 1,
                                "missed a fit of {n}/{align}"
                            );
                        }
                    }
                    Err(FrameError::OutOfFrames { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            _ => {
                if let Some(k) = (!live.is_empty()).then(|| (r >> 8) as usize % live.len()) {
                    let (p, n) = live.swap_remove(k);
                    a.free(Pfn::new(p), n).unwrap();
                    let i = (p - base) as usize;
                    used[i..i + n as usize].fill(false);
                }
            }
        }
        if step % 500 == 0 {
            a.check_invariants().unwrap();
        }
    }
    a.check_invariants().unwrap();
    let free = used.iter().filter(|&&u| !u).count() as u64;
    assert_eq!(a.free_frames(), free);
}

#[test]
fn bitmap_one_gib_exhaust_and_free() {
    let frames = 1u64 << 18;
    let mut a = BitmapAllocator::new(Pfn::new(0x40000), frames);
    for i in 0..frames {
        assert_eq!(a.alloc(), Ok(Pfn::new(0x40000 + i)));
    }
    assert!(a.alloc().is_err());
    assert_eq!(a.free_runs_by_order(), [0; 11]);
    // Free every other frame, then everything else in one call per run.
    for i in (0..frames).step_by(2) {
        a.free(Pfn::new(0x40000 + i), 1).unwrap();
    }
    let b = a.free_runs_by_order();
    assert_eq!(b[0], frames / 2);
    assert_eq!(
        a.free(Pfn::new(0x40000), 2),
        Err(FrameError::NotAllocated {
            pfn: Pfn::new(0x40000)
        })
    );
    for i in (1..frames).step_by(2) {
        a.free(Pfn::new(0x40000 + i), 1).unwrap();
    }
    let mut want = [0u64; 11];
    want[10] = frames / 1024;
    assert_eq!(a.free_runs_by_order(), want);
    assert_eq!(a.stats().free, frames);
}

#[test]
fn bitmap_huge_pages_and_reserve() {
    // 64 MiB at an unaligned base: 2 MiB-aligned runs start at multiples of 512.
    let mut a = BitmapAllocator::new(Pfn::new(100), 16384);
    a.reserve(Pfn::new(100), 412).unwrap(); // up to PFN 512
    assert!(
        a.is_reserved(Pfn::new(100))
            && a.is_reserved(Pfn::new(511))
            && !a.is_reserved(Pfn::new(512))
    );
    assert_eq!(
        a.free(Pfn::new(200), 1),
        Err(FrameError::Reserved { pfn: Pfn::new(200) })
    );
    assert_eq!(
        a.free(Pfn::new(500), 20),
        Err(FrameError::Reserved { pfn: Pfn::new(500) })
    );
    assert_eq!(
        a.reserve(Pfn::new(511), 2),
        Err(FrameError::Reserved { pfn: Pfn::new(511) })
    );
    let p = a.alloc_contiguous(512, 512).unwrap();
    assert_eq!(p, Pfn::new(512));
    assert_eq!(
        a.reserve(Pfn::new(1000), 1),
        Err(FrameError::InUse {
            pfn: Pfn::new(1000)
        })
    );
    let mut got = vec![p];
    while let Ok(p) = a.alloc_contiguous(512, 512) {
        assert_eq!(p.raw() % 512, 0);
        got.push(p);
    }
    // [512, 16484) holds 31 whole 2 MiB groups.
    assert_eq!(got.len(), 31);
    let s = a.stats();
    assert_eq!(
        (s.reserved, s.used, s.free),
        (412, 31 * 512, 16384 - 412 - 31 * 512)
    );
    for p in got {
        a.free(p, 512).unwrap();
    }
    // 1024-frame (4 MiB) aligned run of 1500 frames.
    assert_eq!(a.alloc_contiguous(1500, 1024), Ok(Pfn::new(1024)));
    assert_eq!(a.allocate_pages(3), Ok(Pfn::new(512)));
    a.deallocate_pages(Pfn::new(512), 3).unwrap();
    assert_eq!(a.allocate_page(), Ok(Pfn::new(512)));
    a.free_frame(Pfn::new(512)).unwrap();
    assert_eq!(a.allocate_frame(), Ok(Pfn::new(512)));
}

#[test]
fn init_bitmap_rand_is_reproducible() {
    let frames = 1u64 << 20;
    let mut a = BitmapAllocator::new(Pfn::new(0), frames);
    let mut b = BitmapAllocator::new(Pfn::new(0), frames);
    let fa = a.init_bitmap_rand(42, 0.9);
    let fb = b.init_bitmap_rand(42, 0.9);
    assert_eq!(fa, fb);
    assert!((fa as f64 / frames as f64 - 0.9).abs() < 0.005, "{fa}");
    for p in (0..frames).step_by(997) {
        assert_eq!(a.is_free(Pfn::new(p)), b.is_free(Pfn::new(p)));
    }
    let mut c = BitmapAllocator::new(Pfn::new(0), frames);
    assert_ne!(c.init_bitmap_rand(43, 0.9), 0);
    let mut d = BitmapAllocator::new(Pfn::new(0), 100);
    assert_eq!(d.init_bitmap_rand(1, f64::NAN), 0);
    assert_eq!(d.init_bitmap_rand(1, -3.0), 0);
    assert_eq!(d.init_bitmap_rand(1, 7.0), 100);
    assert!(d.alloc().is_err());
    assert_eq!(d.stats().used, 100);
    assert_eq!(d.stats().allocations, 0);
    d.free(Pfn::new(0), 100).unwrap();
}

#[test]
fn metadata_is_under_budget() {
    for frames in [1u64 << 18, 1 << 24] {
        let mut a = BitmapAllocator::new(Pfn::new(0), frames);
        a.reserve(Pfn::new(0), 256).unwrap();
        a.reserve(Pfn::new(frames - 256), 256).unwrap();
        let per_frame = a.metadata_bytes() as f64 / frames as f64;
        assert!(per_frame <= 0.14, "{frames} frames: {per_frame} B/frame");
        assert!(per_frame >= 0.125);
    }
}

fn typical_vm() -> ZoneTable {
    // 640 KiB low RAM, [1 MiB, 3 GiB), PCI hole, [4 GiB, 6 GiB).
    let ram = [
        (Gpa::new(0), 640 << 10),
        (Gpa::new(1 << 20), (3 << 30) - (1 << 20)),
        (Gpa::new(4 << 30), 2 << 30),
    ];
    ZoneTable::new(&ram, ZonePreset::default()).unwrap()
}

#[test]
fn zones_typical_layout_and_reports() {
    let mut t = typical_vm();
    let z = t.zones();
    let names: Vec<&str> = z.iter().map(|z| z.name).collect();
    assert_eq!(names, ["DMA", "DMA32", "Normal"]);
    assert_eq!(
        (z[0].start_pfn, z[0].end_pfn, z[0].present),
        (Pfn::new(0), Pfn::new(4096), 4000)
    );
    assert_eq!(
        (z[1].start_pfn, z[1].end_pfn),
        (Pfn::new(4096), Pfn::new(786_432))
    );
    assert_eq!(z[1].present, 786_432 - 4096);
    assert_eq!((z[2].start_pfn.raw(), z[2].present), (1 << 20, 1 << 19));
    // lowmem_reserve: DMA keeps (DMA32 + Normal) / 256 frames against Normal requests.
    assert_eq!(
        z[0].protection,
        vec![
            0,
            (786_432 - 4096) / 256,
            (786_432 - 4096 + (1 << 19)) / 256
        ]
    );
    assert_eq!(t.zone_of(Pfn::new(200)), Some(ZoneKind::Dma)); // hole inside DMA's span
    assert!(!t.is_ram(Pfn::new(200)) && t.is_reserved(Pfn::new(200)));
    assert_eq!(t.zone_of(Pfn::new(900_000)), None); // PCI hole between spans
    assert_eq!(
        t.free(Pfn::new(200), 1),
        Err(FrameError::Reserved { pfn: Pfn::new(200) })
    );
    assert_eq!(
        t.free(Pfn::new(4000), 200),
        Err(FrameError::Straddle {
            pfn: Pfn::new(4000),
            count: 200
        })
    );
    assert_eq!(
        t.free(Pfn::new(900_000), 1),
        Err(FrameError::OutOfRange {
            pfn: Pfn::new(900_000),
            count: 1
        })
    );
    // The kernel image straddles DMA and DMA32: reserve is all-or-nothing across zones.
    t.reserve(Pfn::new(4000), 1000).unwrap();
    assert_eq!(t.zones()[0].managed, 4000 - 96);
    assert_eq!(
        t.reserve(Pfn::new(3000), 2000),
        Err(FrameError::Reserved {
            pfn: Pfn::new(4000)
        })
    );
    assert_eq!(t.zones()[0].managed, 4000 - 96);
    assert_eq!(
        t.alloc(ZoneKind::HighMem, 1, 1),
        Err(FrameError::NoSuchZone {
            zone: ZoneKind::HighMem
        })
    );
    let p = t.alloc(ZoneKind::Dma32, 512, 512).unwrap();
    assert_eq!(p, Pfn::new(5120));
    assert!(t.is_allocated(p));
    assert_eq!(
        t.allocate_frame_in_zone(ZoneKind::Normal),
        Ok(Pfn::new(1 << 20))
    );

    let info = t.zoneinfo();
    assert!(
        info.contains("Node 0, zone      DMA\n  pages free     3904\n"),
        "{info}"
    );
    assert!(info.contains("        spanned  4096\n        present  4000\n        managed  3904\n"));
    assert!(info.contains("Node 0, zone    DMA32\n"));
    assert!(info.contains("Node 0, zone   Normal\n"));
    assert!(info.contains("  start_pfn:           1048576\n"));
    let buddy = t.buddyinfo();
    let lines: Vec<&str> = buddy.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("Node 0, zone      DMA "));
    let normal: Vec<u64> = lines[2]["Node 0, zone   Normal ".len()..]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(normal.len(), 11);
    assert_eq!(
        normal.iter().enumerate().map(|(k, c)| c << k).sum::<u64>(),
        (1 << 19) - 1
    );
    assert_eq!(t.get_zone_stats(), t.zones());
}

#[test]
fn zones_fallback_and_lowmem_reserve() {
    // DMA 100 frames, DMA32 5120 frames, Normal 2560 frames.
    let ram = [
        (Gpa::new(0), 100 * 4096),
        (Gpa::new(16 << 20), 5120 * 4096),
        (Gpa::new(4 << 30), 2560 * 4096),
    ];
    let mut t = ZoneTable::new(&ram, ZonePreset::X86_64).unwrap();
    let prot: Vec<Vec<u64>> = t.zones().iter().map(|z| z.protection.clone()).collect();
    assert_eq!(prot, [vec![0, 20, 30], vec![0, 0, 10], vec![0, 0, 0]]);
    let mut served = [0u64; 3];
    while let Ok(p) = t.alloc(ZoneKind::Normal, 1, 1) {
        let i = match t.zone_of(p) {
            Some(ZoneKind::Dma) => 0,
            Some(ZoneKind::Dma32) => 1,
            _ => 2,
        };
        served[i] += 1;
    }
    // Normal fully, DMA32 down to its reserve of 10, DMA down to its reserve of 30.
    assert_eq!(served, [70, 5110, 2560]);
    let z = t.zones();
    assert_eq!((z[0].free, z[1].free, z[2].free), (30, 10, 0));
    assert_eq!(
        (z[2].fallbacks_out, z[1].fallbacks_in, z[0].fallbacks_in),
        (5180, 5110, 70)
    );
    assert_eq!(z[2].failures, 1);
    // A DMA32 request may still use DMA down to DMA's reserve for DMA32 (20).
    for _ in 0..10 {
        t.alloc_exact(ZoneKind::Dma32, 1, 1).unwrap();
    }
    assert_eq!(
        t.alloc_exact(ZoneKind::Dma32, 1, 1),
        Err(FrameError::OutOfFrames {
            requested: 1,
            zone: Some(ZoneKind::Dma32)
        })
    );
    for _ in 0..10 {
        let p = t.alloc(ZoneKind::Dma32, 1, 1).unwrap();
        assert_eq!(t.zone_of(p), Some(ZoneKind::Dma));
    }
    assert!(t.alloc(ZoneKind::Dma32, 1, 1).is_err());
    // DMA requests use every DMA frame.
    for _ in 0..20 {
        t.alloc(ZoneKind::Dma, 1, 1).unwrap();
    }
    assert_eq!(t.total_free(), 0);
}

#[test]
fn zones_legacy_preset() {
    let ram = [(Gpa::new(0), 1 << 30)];
    let mut t = ZoneTable::new(&ram, ZonePreset::Legacy).unwrap();
    let names: Vec<&str> = t.zones().iter().map(|z| z.name).collect();
    assert_eq!(names, ["DMA", "Normal", "HighMem"]);
    assert_eq!(t.zones()[1].end_pfn, Pfn::new(229_376));
    assert_eq!(t.zones()[2].present, 262_144 - 229_376);
    assert_eq!(
        t.alloc(ZoneKind::Dma32, 1, 1),
        Err(FrameError::NoSuchZone {
            zone: ZoneKind::Dma32
        })
    );
    // Seed order Normal -> HighMem -> DMA: exhaust Normal, then HighMem serves.
    t.reserve(Pfn::new(4096), 229_376 - 4096).unwrap();
    assert_eq!(t.alloc(ZoneKind::Normal, 1, 1), Ok(Pfn::new(229_376)));
    assert_eq!(t.zones()[2].fallbacks_in, 1);
}

#[test]
fn zones_bad_ram_maps() {
    assert!(matches!(
        ZoneTable::new(
            &[(Gpa::new(0), 8192), (Gpa::new(4096), 8192)],
            ZonePreset::X86_64
        ),
        Err(FrameError::Overlap {
            start: 4096,
            len: 8192,
            other_start: 0,
            other_len: 8192
        })
    ));
    assert_eq!(
        ZoneTable::new(&[(Gpa::new(u64::MAX), 2)], ZonePreset::X86_64).err(),
        Some(FrameError::BadRange {
            start: u64::MAX,
            len: 2
        })
    );
    assert!(matches!(
        // Normal would span 2^48 frames: more than one bitmap manages.
        ZoneTable::new(
            &[(Gpa::new(4 << 30), 4096), (Gpa::new(1 << 60), 4096)],
            ZonePreset::X86_64
        ),
        Err(FrameError::TooLarge { .. })
    ));
    let mut t = ZoneTable::new(&[], ZonePreset::X86_64).unwrap();
    assert_eq!(t.total_free(), 0);
    assert!(matches!(
        t.alloc(ZoneKind::Normal, 1, 1),
        Err(FrameError::OutOfFrames { .. })
    ));
    assert!(t.free(Pfn::new(0), 1).is_err());
    assert!(t.reserve(Pfn::new(0), 1).is_err());
    assert_eq!(t.buddyinfo(), "");
    // Sub-page pieces are not RAM; touching ranges merge.
    let t = ZoneTable::new(
        &[
            (Gpa::new(100), 4000),
            (Gpa::new(8192), 4096),
            (Gpa::new(12288), 4096),
        ],
        ZonePreset::X86_64,
    )
    .unwrap();
    assert_eq!(t.ram_frames().collect::<Vec<_>>(), vec![(Pfn::new(2), 2)]);
    // Byte ranges that touch inside a frame merge before rounding.
    let t = ZoneTable::new(
        &[(Gpa::new(0), 6000), (Gpa::new(6000), 6288)],
        ZonePreset::X86_64,
    )
    .unwrap();
    assert_eq!(t.ram_frames().collect::<Vec<_>>(), vec![(Pfn::new(0), 3)]);
}

#[test]
fn freemap_seed_behaviour() {
    let mut f = FreeMap::new(0x1000, 0x10000);
    let a = f.alloc_freemap(128).unwrap();
    assert_eq!(a, 0x1000);
    let b = f.alloc(0x1000, 0x1000).unwrap();
    assert_eq!(b, 0x2000);
    assert_eq!(
        f.extents().collect::<Vec<_>>(),
        vec![(0x1080, 0xf80), (0x3000, 0xe000)]
    );
    f.dealloc_freemap(a, 128).unwrap();
    f.free(b, 0x1000).unwrap();
    assert_eq!(f.extents().collect::<Vec<_>>(), vec![(0x1000, 0x10000)]);
    assert_eq!(
        f.free(0x1000, 1),
        Err(FrameError::DoubleFreeExtent {
            start: 0x1000,
            len: 1
        })
    );
    assert_eq!(
        f.free(0, 0x1001),
        Err(FrameError::BadRange {
            start: 0,
            len: 0x1001
        })
    );
    assert_eq!(
        f.free(u64::MAX, 2),
        Err(FrameError::BadRange {
            start: u64::MAX,
            len: 2
        })
    );
    assert_eq!(f.alloc(0, 1), Err(FrameError::ZeroCount));
    assert_eq!(f.alloc(1, 6), Err(FrameError::BadAlign { align: 6 }));
    assert_eq!(
        f.alloc(u64::MAX, 1),
        Err(FrameError::NoSpace {
            len: u64::MAX,
            align: 1
        })
    );
    // Best fit picks the smallest hole, first fit the lowest.
    let mut g = FreeMap::new(0, 1000);
    let x = g.alloc(100, 1).unwrap();
    let _y = g.alloc(10, 1).unwrap();
    let z = g.alloc(20, 1).unwrap();
    let _w = g.alloc(10, 1).unwrap();
    g.free(x, 100).unwrap();
    g.free(z, 20).unwrap();
    assert_eq!(g.alloc_with(15, 1, FitPolicy::BestFit), Ok(z));
    assert_eq!(g.alloc_with(15, 1, FitPolicy::FirstFit), Ok(x));
    // Partial overlap is reported with the free extent it hits.
    assert_eq!(
        g.free(x + 10, 10),
        Err(FrameError::Overlap {
            start: x + 10,
            len: 10,
            other_start: x + 15,
            other_len: 85
        })
    );
    assert!(FreeMap::try_new(u64::MAX, 1).is_err());
    assert_eq!(
        FreeMap::new(5, 0).alloc(1, 1),
        Err(FrameError::NoSpace { len: 1, align: 1 })
    );
    assert!(g.metadata_bytes() > 0);
}

#[test]
fn error_messages_name_their_fields() {
    let e = FrameError::OutOfFrames {
        requested: 3,
        zone: Some(ZoneKind::Dma32),
    };
    assert_eq!(
        e.to_string(),
        "out of frames: no free run of 3 frame(s) for zone DMA32"
    );
    let e = FrameError::Reserved {
        pfn: Pfn::new(0x10),
    };
    assert_eq!(e.to_string(), "pfn 0x10 is reserved");
}
