//! Families: handles, counters, the per-family state, registration and lookup.

use super::*;

/// Handle of a registered page family (index into the family table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FamilyId(pub(super) u16);

impl FamilyId {
    /// The family's index (0-based, in registration order).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A family given by id or by name (for [`PageFamilies::xcalloc`]).
#[derive(Debug, Clone, Copy)]
pub enum FamilyRef<'a> {
    /// By handle (O(1)).
    Id(FamilyId),
    /// By registered name (O(number of families)).
    Name(&'a str),
}

impl From<FamilyId> for FamilyRef<'_> {
    fn from(id: FamilyId) -> Self {
        FamilyRef::Id(id)
    }
}

impl<'a> From<&'a str> for FamilyRef<'a> {
    fn from(name: &'a str) -> Self {
        FamilyRef::Name(name)
    }
}

/// Counters of one family (all O(1) to read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyInfo {
    /// Registered name.
    pub name: &'static str,
    /// Registered struct size in bytes.
    pub struct_size: usize,
    /// Block total (header + payload) of a one-unit allocation, in bytes.
    pub unit_block: usize,
    /// VM pages owned.
    pub vm_pages: usize,
    /// 4 KiB pages owned (a multi-page VM page counts all its pages).
    pub pages: usize,
    /// Blocks (TBC).
    pub blocks: usize,
    /// Free blocks (FBC).
    pub free_blocks: usize,
    /// Bytes in allocated blocks, headers included (the seed's AppMemUsage).
    pub alloc_bytes: usize,
    /// Bytes in free blocks, headers included.
    pub free_bytes: usize,
    /// Completely free VM pages kept by the empty-page cache.
    pub empty_pages: usize,
    /// Freed one-unit blocks held unmerged by the quick cache
    /// ([`PageFamilies::set_quick_cache`]); not counted in `free_blocks` / `alloc_bytes`.
    pub quick_blocks: usize,
}

impl FamilyInfo {
    /// Occupied blocks (OBC): live allocations.
    pub fn allocated_blocks(&self) -> usize {
        self.blocks - self.free_blocks - self.quick_blocks
    }
}

pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) struct_size: usize,
    pub(super) unit_total: usize,
    /// Bit `c` set iff `heads[c] != 0`.
    pub(super) bitmap: u64,
    /// Header address of the first free block of each class (0 = empty).
    pub(super) heads: [usize; NCLASS],
    /// Base of the first VM page (newest first, as the seed inserts), 0 = none.
    pub(super) first_page: usize,
    pub(super) vm_pages: usize,
    pub(super) os_pages: usize,
    pub(super) empty_pages: usize,
    /// Quick cache: header of the most recently cached block (0 = none) and the count.
    pub(super) quick_head: usize,
    pub(super) quick_len: usize,
    pub(super) blocks: usize,
    pub(super) free_blocks: usize,
    pub(super) alloc_bytes: usize,
    pub(super) free_bytes: usize,
}

impl Family {
    pub(super) const EMPTY: Family = Family {
        name: "",
        struct_size: 0,
        unit_total: 0,
        bitmap: 0,
        heads: [0; NCLASS],
        first_page: 0,
        vm_pages: 0,
        os_pages: 0,
        empty_pages: 0,
        quick_head: 0,
        quick_len: 0,
        blocks: 0,
        free_blocks: 0,
        alloc_bytes: 0,
        free_bytes: 0,
    };

    pub(super) fn info(&self) -> FamilyInfo {
        FamilyInfo {
            name: self.name,
            struct_size: self.struct_size,
            unit_block: self.unit_total,
            vm_pages: self.vm_pages,
            pages: self.os_pages,
            blocks: self.blocks,
            free_blocks: self.free_blocks,
            alloc_bytes: self.alloc_bytes,
            free_bytes: self.free_bytes,
            empty_pages: self.empty_pages,
            quick_blocks: self.quick_len,
        }
    }
}

impl<S: PageSource> PageFamilies<S> {
    /// Number of registered families.
    pub fn family_count(&self) -> usize {
        self.count
    }

    /// Counters of a family.
    ///
    /// # Errors
    /// [`HeapError`] for an unknown family id.
    pub fn family_info(&self, id: FamilyId) -> Result<FamilyInfo, HeapError> {
        let fid = self.check_id(id)?;
        Ok(self.families[fid].info())
    }

    /// The seed's `mm_instantiate_new_page_family`: register a family for structs of
    /// `struct_size` bytes. Errors: duplicate name, size 0 or above [`MAX_BLOCK_PAYLOAD`],
    /// table full ([`MAX_FAMILIES`]).
    ///
    /// # Errors
    /// [`HeapError`] for a duplicate name, a size of 0 or above [`MAX_BLOCK_PAYLOAD`], or a full table.
    pub fn mm_instantiate_new_page_family(
        &mut self,
        name: &'static str,
        struct_size: usize,
    ) -> Result<FamilyId, HeapError> {
        if self.lookup_page_family_by_name(name).is_some() {
            return Err(HeapError::FamilyExists { name });
        }
        let unit_total = match block_total(struct_size) {
            Some(t) if struct_size > 0 => t,
            _ => return Err(HeapError::InvalidStructSize { size: struct_size }),
        };
        if self.count == MAX_FAMILIES {
            return Err(HeapError::TooManyFamilies { max: MAX_FAMILIES });
        }
        let fam = &mut self.families[self.count];
        *fam = Family::EMPTY;
        fam.name = name;
        fam.struct_size = struct_size;
        fam.unit_total = unit_total;
        self.count += 1;
        Ok(FamilyId((self.count - 1) as u16))
    }

    /// The seed's `lookup_page_family_by_name` (exact match).
    pub fn lookup_page_family_by_name(&self, name: &str) -> Option<FamilyId> {
        self.families[..self.count]
            .iter()
            .position(|f| f.name == name)
            .map(|i| FamilyId(i as u16))
    }

    pub(super) fn check_id(&self, id: FamilyId) -> Result<usize, HeapError> {
        let i = id.index();
        if i < self.count {
            Ok(i)
        } else {
            Err(HeapError::UnknownFamily { id: i })
        }
    }

    pub(super) fn resolve(&self, f: FamilyRef<'_>) -> Result<usize, HeapError> {
        match f {
            FamilyRef::Id(id) => self.check_id(id),
            FamilyRef::Name(n) => match self.lookup_page_family_by_name(n) {
                Some(id) => Ok(id.index()),
                None => Err(HeapError::UnknownFamilyName {
                    name: NameBuf::new(n),
                }),
            },
        }
    }
}
