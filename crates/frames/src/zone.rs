//! Zones over the guest's e820 RAM map ([`ZoneTable`]); details in its docs.

use std::fmt::Write as _;

use super::bitmap::{BitmapAllocator, MAX_ORDER, MAX_PFN};
use super::preset::{ZoneKind, ZonePreset};
use super::{FrameError, Result};
use crate::addr::{Gpa, Pfn, PAGE_SIZE};

/// Statistics of one zone. Frame counts in 4 KiB frames; call counts in calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneStats {
    /// The zone.
    pub kind: ZoneKind,
    /// Its Linux name.
    pub name: &'static str,
    /// First frame of the span (the zone's first RAM frame; its lower bound if it has none).
    pub start_pfn: Pfn,
    /// One past the last frame of the span (= `start_pfn` if the zone has no RAM).
    pub end_pfn: Pfn,
    /// Frames in the span (`end_pfn - start_pfn`).
    pub spanned: u64,
    /// RAM frames in the span (spanned minus e820 holes).
    pub present: u64,
    /// Present frames minus frames reserved with [`ZoneTable::reserve`].
    pub managed: u64,
    /// Free frames.
    pub free: u64,
    /// Successful allocations served by this zone (including fallbacks into it).
    pub allocations: u64,
    /// Successful frees of frames of this zone.
    pub frees: u64,
    /// Allocations for another zone served here.
    pub fallbacks_in: u64,
    /// Allocations for this zone served by another zone.
    pub fallbacks_out: u64,
    /// Allocation requests for this zone that failed.
    pub failures: u64,
    /// Linux `lowmem_reserve[]` ("protection"): frames this zone keeps free against requests
    /// for each zone of the preset, low to high (0 for itself and lower zones).
    pub protection: Vec<u64>,
    /// Maximal free buddy blocks per order; see [`BitmapAllocator::free_runs_by_order`].
    pub free_runs_by_order: [u64; MAX_ORDER + 1],
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Zone {
    kind: ZoneKind,
    lo: u64,
    /// Span `[start, end)`; `start == end` and `alloc == None` if the zone has no RAM.
    start: u64,
    end: u64,
    alloc: Option<BitmapAllocator>,
    /// Frames at and above this PFN have never been allocated or reserved since the table
    /// was built (a conservative watermark: a gap skipped by first fit stops counting).
    fresh_from: u64,
    present: u64,
    allocations: u64,
    frees: u64,
    fallbacks_in: u64,
    fallbacks_out: u64,
    failures: u64,
}

impl Zone {
    fn managed(&self) -> u64 {
        self.alloc.as_ref().map_or(0, |a| {
            let s = a.stats();
            s.total - s.reserved
        })
    }

    fn free(&self) -> u64 {
        self.alloc.as_ref().map_or(0, BitmapAllocator::free_frames)
    }
}

/// The zone table of one guest: one [`BitmapAllocator`] per populated zone, allocation with
/// zonelist fallback and `lowmem_reserve`, and Linux-style reports.
///
/// Sources: Linux's `struct zone`, zonelists and `lowmem_reserve` (`mm/page_alloc.c`), and seed `003_733038d7242770b3.txt` (RustOS
/// DMA / Normal / HighMem zones with the fallback order Normal → HighMem → DMA).
///
/// Each zone that has RAM owns one [`BitmapAllocator`] over its *span* (first to last RAM
/// frame inside the zone's PFN range); the holes inside the span (frames that are not RAM) are
/// reserved in that bitmap, so they are never handed out and cannot be freed.
///
/// Per-zone counts follow Linux: `spanned` = frames in the span, `present` = RAM frames in the
/// span, `managed` = present minus frames reserved with [`ZoneTable::reserve`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ZoneTable {
    preset: ZonePreset,
    zones: Vec<Zone>,
    /// RAM as sorted, merged `[start, end)` PFN ranges.
    ram: Vec<(u64, u64)>,
}

impl ZoneTable {
    /// Build the zones from the e820 RAM ranges `(start, bytes)`. Ranges may come in any
    /// order; touching ranges merge; zero-length ranges are ignored; a range's partial frames
    /// at either end are not RAM (start rounded up, end rounded down to 4 KiB, as Linux does).
    /// Every RAM frame starts free; frames between RAM ranges inside a zone's span are holes.
    ///
    /// # Errors
    /// [`FrameError::BadRange`] if `start + bytes` overflows; [`FrameError::Overlap`] (bytes)
    /// if two ranges overlap; [`FrameError::TooLarge`] if RAM reaches [`MAX_PFN`] or a zone
    /// spans more than [`MAX_FRAMES`](super::MAX_FRAMES) frames.
    pub fn new(ram: &[(Gpa, u64)], preset: ZonePreset) -> Result<Self> {
        let mut bytes: Vec<(u64, u64)> = Vec::with_capacity(ram.len());
        for &(start, len) in ram {
            let end = start.raw().checked_add(len).ok_or(FrameError::BadRange {
                start: start.raw(),
                len,
            })?;
            if len > 0 {
                bytes.push((start.raw(), end));
            }
        }
        bytes.sort_unstable();
        for pair in bytes.windows(2) {
            let ((s0, e0), (s1, e1)) = (pair[0], pair[1]);
            if s1 < e0 {
                return Err(FrameError::Overlap {
                    start: s1,
                    len: e1 - s1,
                    other_start: s0,
                    other_len: e0 - s0,
                });
            }
        }
        // Merge touching byte ranges first, so a frame split between two ranges stays RAM.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(bytes.len());
        for (s, e) in bytes {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        let mut pfns: Vec<(u64, u64)> = Vec::new();
        for (s, e) in merged {
            let (ps, pe) = (s.div_ceil(PAGE_SIZE), e / PAGE_SIZE);
            if ps >= pe {
                continue;
            }
            if pe > MAX_PFN {
                return Err(FrameError::TooLarge {
                    base: Pfn::new(ps),
                    frames: pe - ps,
                });
            }
            match pfns.last_mut() {
                Some(last) if last.1 == ps => last.1 = pe,
                _ => pfns.push((ps, pe)),
            }
        }
        let mut zones = Vec::new();
        for &(kind, lo, hi) in preset.layout() {
            let pieces: Vec<(u64, u64)> = pfns
                .iter()
                .map(|&(s, e)| (s.max(lo), e.min(hi)))
                .filter(|&(s, e)| s < e)
                .collect();
            let (start, end) = match (pieces.first(), pieces.last()) {
                (Some(f), Some(l)) => (f.0, l.1),
                _ => (lo, lo),
            };
            let present = pieces.iter().map(|&(s, e)| e - s).sum();
            let alloc = if start < end {
                let mut a = BitmapAllocator::try_new(Pfn::new(start), end - start)?;
                for pair in pieces.windows(2) {
                    let (hole_s, hole_e) = (pair[0].1, pair[1].0);
                    let i = a.check_reserve(Pfn::new(hole_s), hole_e - hole_s)?;
                    a.apply_reserve(i, hole_e - hole_s);
                }
                Some(a)
            } else {
                None
            };
            zones.push(Zone {
                kind,
                lo,
                start,
                end,
                alloc,
                fresh_from: start,
                present,
                allocations: 0,
                frees: 0,
                fallbacks_in: 0,
                fallbacks_out: 0,
                failures: 0,
            });
        }
        Ok(Self {
            preset,
            zones,
            ram: pfns,
        })
    }

    /// The preset this table was built with.
    pub fn preset(&self) -> ZonePreset {
        self.preset
    }

    /// The RAM ranges as merged `(first frame, frame count)`, in address order.
    pub fn ram_frames(&self) -> impl Iterator<Item = (Pfn, u64)> + '_ {
        self.ram.iter().map(|&(s, e)| (Pfn::new(s), e - s))
    }

    fn index_of(&self, kind: ZoneKind) -> Option<usize> {
        self.zones.iter().position(|z| z.kind == kind)
    }

    /// Index of the zone whose span holds `pfn`.
    fn zone_index(&self, pfn: u64) -> Option<usize> {
        self.zones
            .iter()
            .position(|z| z.start <= pfn && pfn < z.end)
    }

    /// Linux `lowmem_reserve[req]` of zone `i`: managed frames of the zones above `i` up to
    /// `req`, divided by zone `i`'s ratio; 0 unless zone `i` is below `req`.
    fn lowmem_reserve(&self, i: usize, req: ZoneKind) -> u64 {
        let z = &self.zones[i];
        let ratio = z.kind.lowmem_reserve_ratio();
        if z.kind >= req || ratio == 0 {
            return 0;
        }
        let above: u64 = self
            .zones
            .iter()
            .filter(|o| o.kind > z.kind && o.kind <= req)
            .map(Zone::managed)
            .sum();
        above / ratio
    }

    /// Allocate `n` contiguous frames aligned to `align_frames` (a power of two) for `zone`,
    /// trying its zonelist in order ([`ZonePreset::zonelist`]). A zone below `zone` serves the
    /// request only if it keeps at least its `lowmem_reserve[zone]` frames free afterwards
    /// (no min/low/high watermarks: the host has no reclaim). Within a zone: exact first fit.
    ///
    /// # Errors
    /// [`FrameError::NoSuchZone`], [`FrameError::ZeroCount`], [`FrameError::BadAlign`],
    /// [`FrameError::OutOfFrames`] (`zone: Some(zone)`). Failures count in `zone`'s stats.
    pub fn alloc(&mut self, zone: ZoneKind, n: u64, align_frames: u64) -> Result<Pfn> {
        self.alloc_fresh(zone, n, align_frames).map(|(p, _)| p)
    }

    /// Like [`alloc`](Self::alloc), and also says whether every frame of the run is *fresh*:
    /// never allocated or reserved since the table was built. Guest RAM is anonymous memory
    /// that reads as zero until written, and only allocated or reserved frames are ever
    /// written, so a fresh run needs no zeroing before it is handed to the guest (the host
    /// then never touches its pages at all; the first guest access faults them in).
    ///
    /// Fresh is tracked per zone with a watermark: frames at or above the highest end of any
    /// run handed out or reserved so far. First fit hands out frames from the bottom, so
    /// almost every never-used frame counts; frames below the watermark are never reported
    /// fresh, even if first fit skipped them.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn alloc_fresh(
        &mut self,
        zone: ZoneKind,
        n: u64,
        align_frames: u64,
    ) -> Result<(Pfn, bool)> {
        let list = self
            .preset
            .zonelist(zone)
            .ok_or(FrameError::NoSuchZone { zone })?;
        self.alloc_from(zone, list, n, align_frames)
    }

    /// Like [`alloc`](Self::alloc) but only from `zone` itself (no fallback).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn alloc_exact(&mut self, zone: ZoneKind, n: u64, align_frames: u64) -> Result<Pfn> {
        let list: &[ZoneKind] = match self.preset.zonelist(zone) {
            Some(l) => &l[..1],
            None => return Err(FrameError::NoSuchZone { zone }),
        };
        self.alloc_from(zone, list, n, align_frames).map(|(p, _)| p)
    }

    fn alloc_from(
        &mut self,
        req: ZoneKind,
        list: &[ZoneKind],
        n: u64,
        align: u64,
    ) -> Result<(Pfn, bool)> {
        let req_i = self
            .index_of(req)
            .ok_or(FrameError::NoSuchZone { zone: req })?;
        let err = if n == 0 {
            Some(FrameError::ZeroCount)
        } else if !align.is_power_of_two() {
            Some(FrameError::BadAlign { align })
        } else {
            None
        };
        if let Some(e) = err {
            self.zones[req_i].failures += 1;
            return Err(e);
        }
        for &kind in list {
            let Some(i) = self.index_of(kind) else {
                continue;
            };
            let reserve = self.lowmem_reserve(i, req);
            let z = &mut self.zones[i];
            let Some(a) = z.alloc.as_mut() else {
                continue;
            };
            if a.free_frames() < n.saturating_add(reserve) {
                continue;
            }
            if let Ok(p) = a.alloc_uncounted(n, align) {
                z.allocations += 1;
                let fresh = p.raw() >= z.fresh_from;
                z.fresh_from = z.fresh_from.max(p.raw() + n);
                if i != req_i {
                    z.fallbacks_in += 1;
                    self.zones[req_i].fallbacks_out += 1;
                }
                return Ok((p, fresh));
            }
        }
        self.zones[req_i].failures += 1;
        Err(FrameError::OutOfFrames {
            requested: n,
            zone: Some(req),
        })
    }

    /// Free `[pfn, pfn + n)`, which must lie in one zone and be allocated. All or nothing.
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`]; [`FrameError::OutOfRange`] if `pfn` is in no zone's span or
    /// the range overflows or runs past the last zone; [`FrameError::Straddle`] if it runs
    /// into another zone; otherwise as [`BitmapAllocator::free`] (holes are reserved frames).
    pub fn free(&mut self, pfn: Pfn, n: u64) -> Result<()> {
        let i = self.single_zone(pfn, n)?;
        let z = &mut self.zones[i];
        let a = z
            .alloc
            .as_mut()
            .ok_or(FrameError::OutOfRange { pfn, count: n })?;
        a.free(pfn, n)?;
        z.frees += 1;
        Ok(())
    }

    /// The zone holding all of `[pfn, pfn + n)`.
    fn single_zone(&self, pfn: Pfn, n: u64) -> Result<usize> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        let out = FrameError::OutOfRange { pfn, count: n };
        let end = pfn.raw().checked_add(n).ok_or(out.clone())?;
        let i = self.zone_index(pfn.raw()).ok_or(out.clone())?;
        if end <= self.zones[i].end {
            return Ok(i);
        }
        let last_end = self.zones.iter().map(|z| z.end).max().unwrap_or(0);
        if end <= last_end {
            Err(FrameError::Straddle { pfn, count: n })
        } else {
            Err(out)
        }
    }

    /// Reserve the free RAM frames `[pfn, pfn + n)` (kernel image, boot structures): never
    /// handed out, never freeable, no longer counted as managed. The range may cross zone
    /// boundaries but must be covered by zone spans. All or nothing.
    ///
    /// # Errors
    /// [`FrameError::ZeroCount`]; [`FrameError::OutOfRange`] if part of the range is in no
    /// zone's span or it overflows; [`FrameError::Reserved`] (also for holes) or
    /// [`FrameError::InUse`] for the first offending frame.
    pub fn reserve(&mut self, pfn: Pfn, n: u64) -> Result<()> {
        if n == 0 {
            return Err(FrameError::ZeroCount);
        }
        let out = FrameError::OutOfRange { pfn, count: n };
        let end = pfn.raw().checked_add(n).ok_or(out.clone())?;
        let mut pieces = Vec::new();
        let mut cur = pfn.raw();
        while cur < end {
            let i = self.zone_index(cur).ok_or(out.clone())?;
            let z = &self.zones[i];
            let a = z.alloc.as_ref().ok_or(out.clone())?;
            let piece_end = end.min(z.end);
            let bit = a.check_reserve(Pfn::new(cur), piece_end - cur)?;
            pieces.push((i, bit, piece_end - cur));
            cur = piece_end;
        }
        let mut at = pfn.raw();
        for (i, bit, len) in pieces {
            let z = &mut self.zones[i];
            z.fresh_from = z.fresh_from.max(at + len);
            if let Some(a) = z.alloc.as_mut() {
                a.apply_reserve(bit, len);
            }
            at += len;
        }
        Ok(())
    }

    /// The zone whose span holds `pfn` (holes inside a span count; frames outside every span
    /// give `None`).
    pub fn zone_of(&self, pfn: Pfn) -> Option<ZoneKind> {
        self.zone_index(pfn.raw()).map(|i| self.zones[i].kind)
    }

    /// True if `pfn` is a RAM frame that is currently allocated.
    pub fn is_allocated(&self, pfn: Pfn) -> bool {
        self.bitmap_of(pfn).is_some_and(|a| a.is_allocated(pfn))
    }

    /// True if `pfn` is a free RAM frame.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.bitmap_of(pfn).is_some_and(|a| a.is_free(pfn))
    }

    /// True if `pfn` is a RAM frame (in some e820 RAM range).
    pub fn is_ram(&self, pfn: Pfn) -> bool {
        let i = self.ram.partition_point(|&(s, _)| s <= pfn.raw());
        i > 0 && pfn.raw() < self.ram[i - 1].1
    }

    /// True if `pfn` is inside a zone span and reserved (a hole or reserved RAM).
    pub fn is_reserved(&self, pfn: Pfn) -> bool {
        self.bitmap_of(pfn).is_some_and(|a| a.is_reserved(pfn))
    }

    fn bitmap_of(&self, pfn: Pfn) -> Option<&BitmapAllocator> {
        self.zone_index(pfn.raw())
            .and_then(|i| self.zones[i].alloc.as_ref())
    }

    /// Free frames in all zones.
    pub fn total_free(&self) -> u64 {
        self.zones.iter().map(Zone::free).sum()
    }

    /// Successful frame allocations over all zones since the table was built (or since the
    /// state it was restored from was built): a monotonic count, so unlike
    /// [`Self::total_free`] it moves on every allocation even when frees balance it.
    pub fn total_allocations(&self) -> u64 {
        self.zones
            .iter()
            .filter_map(|z| z.alloc.as_ref())
            .map(|a| a.stats().allocations)
            .sum()
    }

    /// Bytes of allocator metadata over all zones.
    pub fn metadata_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.ram.len() * 16
            + self
                .zones
                .iter()
                .map(|z| {
                    std::mem::size_of::<Zone>()
                        + z.alloc.as_ref().map_or(0, BitmapAllocator::metadata_bytes)
                })
                .sum::<usize>()
    }

    /// Statistics of every zone of the preset, low to high (unpopulated zones included).
    pub fn zones(&self) -> Vec<ZoneStats> {
        (0..self.zones.len())
            .map(|i| {
                let z = &self.zones[i];
                ZoneStats {
                    kind: z.kind,
                    name: z.kind.name(),
                    start_pfn: Pfn::new(z.start),
                    end_pfn: Pfn::new(z.end),
                    spanned: z.end - z.start,
                    present: z.present,
                    managed: z.managed(),
                    free: z.free(),
                    allocations: z.allocations,
                    frees: z.frees,
                    fallbacks_in: z.fallbacks_in,
                    fallbacks_out: z.fallbacks_out,
                    failures: z.failures,
                    protection: self
                        .zones
                        .iter()
                        .map(|o| self.lowmem_reserve(i, o.kind))
                        .collect(),
                    free_runs_by_order: z
                        .alloc
                        .as_ref()
                        .map_or([0; MAX_ORDER + 1], BitmapAllocator::free_runs_by_order),
                }
            })
            .collect()
    }

    /// A `/proc/zoneinfo`-like report (Linux `mm/vmstat.c` `zoneinfo_show_print`): per zone a
    /// `Node 0, zone <name>` header, `pages free/spanned/present/managed`, `protection:`, our
    /// allocation counters as `nr_*` lines, and `start_pfn:`. Watermark lines are omitted
    /// (no watermarks here). Unpopulated zones are listed too, as Linux does.
    pub fn zoneinfo(&self) -> String {
        let mut s = String::new();
        for z in self.zones() {
            let prot: Vec<String> = z.protection.iter().map(u64::to_string).collect();
            let _ = writeln!(s, "Node 0, zone {:>8}", z.name);
            let _ = writeln!(s, "  pages free     {}", z.free);
            let _ = writeln!(s, "        spanned  {}", z.spanned);
            let _ = writeln!(s, "        present  {}", z.present);
            let _ = writeln!(s, "        managed  {}", z.managed);
            let _ = writeln!(s, "        protection: ({})", prot.join(", "));
            let _ = writeln!(s, "      nr_free_pages {}", z.free);
            let _ = writeln!(s, "      nr_alloc_success {}", z.allocations);
            let _ = writeln!(s, "      nr_free_calls {}", z.frees);
            let _ = writeln!(s, "      nr_fallback_in {}", z.fallbacks_in);
            let _ = writeln!(s, "      nr_fallback_out {}", z.fallbacks_out);
            let _ = writeln!(s, "      nr_alloc_fail {}", z.failures);
            let _ = writeln!(s, "  start_pfn:           {}", z.start_pfn.raw());
        }
        s
    }

    /// A `/proc/buddyinfo`-like report: one line per populated zone,
    /// `Node 0, zone <name> ` followed by the count of maximal free buddy blocks of each order
    /// 0..=10 (`%6lu ` each, as Linux prints them).
    pub fn buddyinfo(&self) -> String {
        let mut s = String::new();
        for z in &self.zones {
            let Some(a) = z.alloc.as_ref() else {
                continue;
            };
            let _ = write!(s, "Node 0, zone {:>8} ", z.kind.name());
            for c in a.free_runs_by_order() {
                let _ = write!(s, "{c:>6} ");
            }
            s.push('\n');
        }
        s
    }

    /// RAM frames in `zone` (Linux's `present_pages`); 0 if the zone does not exist. O(1),
    /// unlike [`zones`](Self::zones), which builds every report field.
    pub fn present(&self, zone: ZoneKind) -> u64 {
        self.index_of(zone).map_or(0, |i| self.zones[i].present)
    }

    /// The preset's lower bound of `zone`, if the zone exists.
    pub fn zone_lower_bound(&self, zone: ZoneKind) -> Option<Pfn> {
        self.index_of(zone).map(|i| Pfn::new(self.zones[i].lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_frames_are_never_reused_frames() {
        let mut t = ZoneTable::new(&[(Gpa::new(0), 64 << 20)], ZonePreset::X86_64).unwrap();
        assert_eq!(
            t.alloc_fresh(ZoneKind::Dma, 4, 1).unwrap(),
            (Pfn::new(0), true)
        );
        assert_eq!(
            t.alloc_fresh(ZoneKind::Dma, 4, 1).unwrap(),
            (Pfn::new(4), true)
        );
        t.free(Pfn::new(0), 4).unwrap();
        assert_eq!(
            t.alloc_fresh(ZoneKind::Dma, 1, 1).unwrap(),
            (Pfn::new(0), false)
        );
        // A reservation moves the watermark past itself: never-used frames below it no
        // longer count (conservative), frames above it still do.
        t.reserve(Pfn::new(0x200), 16).unwrap();
        assert_eq!(
            t.alloc_fresh(ZoneKind::Dma, 1, 0x100).unwrap(),
            (Pfn::new(0x100), false)
        );
        assert_eq!(
            t.alloc_fresh(ZoneKind::Dma, 1, 0x400).unwrap(),
            (Pfn::new(0x400), true)
        );
        assert_eq!(t.present(ZoneKind::Dma), 4096);
        assert_eq!(t.present(ZoneKind::Normal), 0);
        // DMA32 has its own watermark.
        assert_eq!(
            t.alloc_fresh(ZoneKind::Dma32, 1, 1).unwrap(),
            (Pfn::new(0x1000), true)
        );
    }
}
