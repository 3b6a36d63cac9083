//! The page-table frame pool: page-table frames come from 2 MiB chunks (512 frames, 2 MiB
//! aligned) allocated from the zone allocator, so the direct map can map each chunk read-only
//! with a single PD entry and no table frame is ever writable by the guest.

use crate::addr::Pfn;
use crate::frames::{ZoneKind, ZoneTable};
use crate::layout::TABLE_POOL_CHUNK_FRAMES;
use crate::paging::{FrameSource, PagingError};
use std::collections::BTreeSet;

/// Frames handed out for page tables.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TablePool {
    /// First PFN of each chunk.
    pub chunks: Vec<Pfn>,
    free: Vec<Pfn>,
    in_use: BTreeSet<Pfn>,
}

impl TablePool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocate one more chunk from `zones` (zone DMA32, falling back to DMA; then any zone).
    /// Returns the chunk's first PFN.
    ///
    /// # Errors
    /// The zone allocator's error when no 2 MiB-aligned run of 512 free frames exists.
    pub fn grow(&mut self, zones: &mut ZoneTable) -> Result<Pfn, crate::frames::FrameError> {
        let first = Self::alloc_chunk(zones)?;
        self.add_chunk(first);
        Ok(first)
    }

    /// Allocate a chunk's frames from `zones` as [`Self::grow`] does, without adding it.
    ///
    /// # Errors
    /// As [`Self::grow`].
    pub fn alloc_chunk(zones: &mut ZoneTable) -> Result<Pfn, crate::frames::FrameError> {
        zones
            .alloc(
                ZoneKind::Dma32,
                TABLE_POOL_CHUNK_FRAMES,
                TABLE_POOL_CHUNK_FRAMES,
            )
            .or_else(|_| {
                zones.alloc(
                    ZoneKind::Normal,
                    TABLE_POOL_CHUNK_FRAMES,
                    TABLE_POOL_CHUNK_FRAMES,
                )
            })
    }

    /// Add an allocated chunk starting at `first` to the pool.
    pub fn add_chunk(&mut self, first: Pfn) {
        self.chunks.push(first);
        // Hand out low frames first: push in reverse so pop() yields ascending PFNs.
        for i in (0..TABLE_POOL_CHUNK_FRAMES).rev() {
            self.free.push(Pfn::new(first.raw() + i));
        }
    }

    /// Free frames left in the pool.
    pub fn available(&self) -> u64 {
        self.free.len() as u64
    }

    /// Frames currently holding page tables.
    pub fn in_use(&self) -> u64 {
        self.in_use.len() as u64
    }

    /// True if `pfn` lies in one of the pool's chunks (in use or not).
    pub fn owns(&self, pfn: Pfn) -> bool {
        self.chunks
            .iter()
            .any(|c| pfn.raw() >= c.raw() && pfn.raw() < c.raw() + TABLE_POOL_CHUNK_FRAMES)
    }

    /// True if `pfn` currently holds a page table.
    pub fn is_table(&self, pfn: Pfn) -> bool {
        self.in_use.contains(&pfn)
    }
}

impl FrameSource for TablePool {
    fn alloc_table_frame(&mut self) -> Result<Pfn, PagingError> {
        let pfn = self.free.pop().ok_or(PagingError::OutOfFrames)?;
        self.in_use.insert(pfn);
        Ok(pfn)
    }

    fn free_table_frame(&mut self, pfn: Pfn) {
        if self.in_use.remove(&pfn) {
            self.free.push(pfn);
        }
    }
}
