//! The seed documents' names for frame operations, as thin aliases of the one real API each
//! (nothing here has behaviour of its own; reproducing the seeds' API is the point). Seeds are
//! the specification documents in `../shared/seeds/`:
//!
//! | seed document | seed name | real API |
//! | --- | --- | --- |
//! | `000_79339277aaa7d822.txt` (BitMemManager) | `allocate_page` | [`BitmapAllocator::alloc`] |
//! | `000_79339277aaa7d822.txt` | `allocate_pages(n)` | [`BitmapAllocator::alloc_contiguous`]`(n, 1)` |
//! | `000_79339277aaa7d822.txt` | `deallocate_pages(p, n)` | [`BitmapAllocator::free`] |
//! | `000_79339277aaa7d822.txt` (FreeMemManager) | `alloc_freemap(len)` | [`FreeMap::alloc`]`(len, 1)` |
//! | `000_79339277aaa7d822.txt` | `dealloc_freemap(p, len)` | [`FreeMap::free`] |
//! | `002_2147badeb8a18e20.txt` (FrameAllocator) | `allocate_frame` | [`BitmapAllocator::alloc`] |
//! | `002_2147badeb8a18e20.txt` | `free_frame(f)` | [`BitmapAllocator::free`]`(f, 1)` |
//! | `003_733038d7242770b3.txt` (zones) | `allocate_frame_in_zone(z)` | [`ZoneTable::alloc`]`(z, 1, 1)` |
//! | `003_733038d7242770b3.txt` | `get_zone_stats` | [`ZoneTable::zones`] |

use crate::addr::Pfn;
use crate::{BitmapAllocator, FreeMap, Result, ZoneKind, ZoneStats, ZoneTable};

impl BitmapAllocator {
    /// Seed 000 `BitMemManager::allocate_page`: [`alloc`](Self::alloc).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn allocate_page(&mut self) -> Result<Pfn> {
        self.alloc()
    }

    /// Seed 000 `BitMemManager::allocate_pages(n)`: `n` contiguous frames, no alignment.
    ///
    /// # Errors
    /// As [`alloc_contiguous`](Self::alloc_contiguous).
    pub fn allocate_pages(&mut self, n: u64) -> Result<Pfn> {
        self.alloc_contiguous(n, 1)
    }

    /// Seed 000 `BitMemManager::deallocate_pages(ptr, n)`: [`free`](Self::free).
    ///
    /// # Errors
    /// As [`free`](Self::free).
    pub fn deallocate_pages(&mut self, pfn: Pfn, n: u64) -> Result<()> {
        self.free(pfn, n)
    }

    /// Seed 002 `FrameAllocator::allocate_frame`: [`alloc`](Self::alloc).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn allocate_frame(&mut self) -> Result<Pfn> {
        self.alloc()
    }

    /// Seed 002 `FrameAllocator::free_frame` (which silently ignored bad frees; this one
    /// reports them): `free(pfn, 1)`.
    ///
    /// # Errors
    /// As [`free`](Self::free).
    pub fn free_frame(&mut self, pfn: Pfn) -> Result<()> {
        self.free(pfn, 1)
    }
}

impl FreeMap {
    /// Seed 000 `FreeMemManager::alloc_freemap(len)`: first fit, no alignment.
    ///
    /// # Errors
    /// As [`alloc_with`](Self::alloc_with).
    pub fn alloc_freemap(&mut self, len: u64) -> Result<u64> {
        self.alloc(len, 1)
    }

    /// Seed 000 `FreeMemManager::dealloc_freemap(ptr, len)`: [`free`](Self::free).
    ///
    /// # Errors
    /// As [`free`](Self::free).
    pub fn dealloc_freemap(&mut self, start: u64, len: u64) -> Result<()> {
        self.free(start, len)
    }
}

impl ZoneTable {
    /// Seed 003 `allocate_frame_in_zone`: one frame from `zone`, with fallback.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    pub fn allocate_frame_in_zone(&mut self, zone: ZoneKind) -> Result<Pfn> {
        self.alloc(zone, 1, 1)
    }

    /// Seed 003 `get_zone_stats`: [`zones`](Self::zones).
    pub fn get_zone_stats(&self) -> Vec<ZoneStats> {
        self.zones()
    }
}
