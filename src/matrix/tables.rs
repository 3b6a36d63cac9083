//! The fault matrix's test page tables, data frame and records buffer.
//!
//! * **Matrix VAs** (65,536): for the flag combinations `i4, i3, i2, i1` (each 0–15: bit 0 P,
//!   bit 1 RW, bit 2 US, bit 3 NX) of the PML4E, PDPTE, PDE and PTE, the VA
//!   `((64 + i4) << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12)` in the low half. Every path
//!   has its own tables: 16 PDPTs, 256 PDs and 4,096 PTs from the table pool.
//! * **Reserved-bit VAs** (4): `(80 + r) << 39` for `r` = PML4E, PDPTE, PDE, PTE: every entry
//!   is `P | RW | US` and bit MAXPHYADDR — the lowest reserved address bit, from CPUID
//!   0x8000_0008 ([`rsvd_bit`]) — is set in the entry of level `r`. Each has its own PDPT, PD
//!   and PT. At MAXPHYADDR 52 no address bit is reserved: those cases are skipped.
//! * **Variant VAs** ([`super::variants`]): 256 per 4 KiB variant in PML4 slots 84–87, and
//!   256 through 1 GiB leaves (PDPTE.PS = 1, mapping GPA 0) in slots 98–113.
//! * Every leaf points to one **data frame** filled with `0xC3` (`ret`), so a fetch probe can
//!   `call` any test VA and a write probe stores the byte already there; its bytes 8..16 hold
//!   the segment descriptor the implicit-access VAs (page offset 8, slot 95) are read at.
//! * The **records buffer** at [`BUF_GVA`] (US=1, RW, no NX): the [`Plan`] in its first
//!   [`PLAN_BYTES`], then one `[va, cr2, error_code]` record per case, pass after pass,
//!   prefilled with `[va, NOT_FAULTED, NOT_FAULTED]`.
//!
//! The scenario's address space is built without NX in the kernel's own mappings (see
//! [`memvisor::space::BuildOptions::no_nx`]), so these helpers map with the same no-NX flags.

use memvisor::addr::{Gpa, Gva, Pfn, PAGE_SIZE};
use memvisor::frames::ZoneKind;
use memvisor::layout::{DIRECT_MAP_BASE, TABLE_POOL_CHUNK_FRAMES};
use memvisor::paging::{PageSize, PteFlags, ShadowFlush};
use memvisor::space::{AddressSpace, HostTables, SpaceError};
use memvisor_abi::matrix::{Plan, NOT_FAULTED, RECORD_BYTES};
use vm_memory::{Bytes, GuestAddress};

/// The matrix's slots and records buffer (defined in [`memvisor::layout`]).
pub use memvisor::layout::{
    MATRIX_BUF_GVA as BUF_GVA, MATRIX_RSVD_SLOT as RSVD_SLOT, MATRIX_SLOT,
    MATRIX_TRAMP_GVA as TRAMP_GVA,
};
/// Bytes at the start of the buffer for the plan (whole pages).
pub const PLAN_BYTES: u64 = (core::mem::size_of::<Plan>() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
/// The GVAs this module maps: PML4 slots 64 (first matrix VA) to 95 (implicit-access VAs);
/// the 1 GiB leaves are in [`memvisor::layout::MATRIX_1G_AREA`].
pub use memvisor::layout::MATRIX_AREA as AREA;
/// Matrix VAs (16^4).
pub const MATRIX_VAS: usize = 1 << 16;
/// Reserved-bit VAs.
pub const RSVD_VAS: usize = 4;
/// Address bits 51:12 of an entry (what [`TestVa::entries`] never holds but the reserved bit).
pub const ADDR_BITS: u64 = 0x000f_ffff_ffff_f000;

/// The reserved bit the reserved-bit VAs set: bit MAXPHYADDR, the lowest of the reserved
/// address bits 51:MAXPHYADDR of a present entry (SDM Vol. 3A §4.5, Tables 4-14 to 4-19);
/// bit 51 at MAXPHYADDR 52, where it is an address bit and the cases are skipped.
pub const fn rsvd_bit(phys_bits: u8) -> u64 {
    1 << if phys_bits < 51 { phys_bits } else { 51 }
}

const T: u64 = 0x7; // P | RW | US
const PS: u64 = 0x80;
/// A leaf's protection key, bits 62:59.
const KEY_BITS: u64 = 0xf << 59;

/// Entry flags for combination `c` (0–15): bit 0 P, bit 1 RW, bit 2 US, bit 3 NX.
pub const fn combo_flags(c: u64) -> u64 {
    (c & 7) | ((c >> 3) & 1) << 63
}

/// One test VA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestVa {
    /// The VA.
    pub va: u64,
    /// Flag bits of the PML4E, PDPTE, PDE and PTE (address bits zero but the reserved bit
    /// where set).
    pub entries: [u64; 4],
    /// Level (4 = PML4E … 1 = PTE) whose entry has the reserved bit set, if any.
    pub rsvd_level: Option<u8>,
    /// Level of the leaf: 1 (a 4 KiB PTE) or 3 (a 1 GiB PDPTE with PS = 1, the entries
    /// below it unused).
    pub leaf_level: u8,
    /// Flag bits of the PML5E for a VA that needs 5-level paging (the LA57 variant: bits
    /// 56:48 of `va` are its PML5 index, 1–510); `None` for a 4-level walk.
    pub pml5e: Option<u64>,
}

impl TestVa {
    /// The walk's entries from its top level down (PML5E first for a 5-level VA) and the
    /// number of them: `&w[..n]` is what the oracle walks.
    pub fn walk(&self) -> ([u64; 5], usize) {
        let mut w = [0; 5];
        match self.pml5e {
            Some(p) => {
                w[0] = p;
                w[1..].copy_from_slice(&self.entries);
                (w, 5)
            }
            None => {
                w[..4].copy_from_slice(&self.entries);
                (w, 4)
            }
        }
    }

    /// The 4-level address with the same bits 47:0 (the VA itself for a 4-level VA): where
    /// the host builds and reads a 5-level VA's entries below the PML5E (through PML5E 0,
    /// which points to the same PML4). LA57 VAs have bit 47 clear.
    pub fn host_va(&self) -> u64 {
        match self.pml5e {
            Some(_) => self.va & ((1 << 47) - 1),
            None => self.va,
        }
    }
}

/// The 65,540 test VAs in matrix order, the reserved-bit ones with [`rsvd_bit`] of
/// `phys_bits`.
pub fn test_vas(phys_bits: u8) -> Vec<TestVa> {
    let mut v = Vec::with_capacity(MATRIX_VAS + RSVD_VAS);
    for k in 0..MATRIX_VAS as u64 {
        let (i4, i3, i2, i1) = (k >> 12, (k >> 8) & 15, (k >> 4) & 15, k & 15);
        v.push(TestVa {
            va: ((MATRIX_SLOT + i4) << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12),
            entries: [i4, i3, i2, i1].map(combo_flags),
            rsvd_level: None,
            leaf_level: 1,
            pml5e: None,
        });
    }
    for r in 0..RSVD_VAS as u64 {
        let mut entries = [T; 4];
        entries[r as usize] |= rsvd_bit(phys_bits);
        v.push(TestVa {
            va: (RSVD_SLOT + r) << 39,
            entries,
            rsvd_level: Some(4 - r as u8),
            leaf_level: 1,
            pml5e: None,
        });
    }
    v
}

/// What [`build`] made.
#[derive(Debug)]
pub struct Built {
    /// GPA of each test VA's leaf entry, in [`test_vas`] order.
    pub leaf_gpas: Vec<u64>,
    /// Each leaf's value as built (A and D clear).
    pub leaf_raw: Vec<u64>,
    /// GPAs of every test entry at every level (A/D cleared before each pass).
    pub entry_gpas: Vec<u64>,
    /// GPA of the data frame.
    pub data_gpa: u64,
    /// GPA of the records buffer (contiguous).
    pub buf_gpa: u64,
    /// Its size in bytes.
    pub buf_bytes: u64,
    /// False if MAXPHYADDR is 52 (no address bit reserved): the reserved-bit VAs were built
    /// without it and their cases are skipped.
    pub rsvd_built: bool,
    /// PML5 indices given test flags (the LA57 VAs'; zeroed after the last pass).
    pub pml5es: Vec<usize>,
}

fn paging(e: memvisor::paging::PagingError) -> SpaceError {
    SpaceError::Paging(e)
}

/// Grow the table pool until it has `n` free frames, mapping each new chunk read-only (and
/// without NX, as the rest of this scenario's kernel mappings) in the direct map.
fn reserve_tables(space: &mut AddressSpace, n: u64) -> Result<(), SpaceError> {
    let ro = PteFlags::PRESENT | PteFlags::USER;
    while space.pool().available() < n {
        let tb = space.host_tables();
        let chunk = tb.pool.grow(tb.zones)?;
        let p = tb
            .pt
            .protect(
                tb.mem,
                Gva::new(DIRECT_MAP_BASE + chunk.raw() * PAGE_SIZE),
                TABLE_POOL_CHUNK_FRAMES * PAGE_SIZE,
                ro,
            )
            .map_err(paging)?;
        // Built in `prepare`, before the guest's first run: there is no shadow to flush yet.
        let _ = p.flush.discard();
    }
    Ok(())
}

/// A run of `n` contiguous frames (DMA32 first, then Normal).
fn frames(space: &mut AddressSpace, n: u64) -> Result<Pfn, SpaceError> {
    let zones = space.host_tables().zones;
    Ok(zones
        .alloc(ZoneKind::Dma32, n, 1)
        .or_else(|_| zones.alloc(ZoneKind::Normal, n, 1))?)
}

/// Allocate the data frame every test leaf maps (DMA zone first, so that it lies in the
/// first GiB the 1 GiB leaves map), fill it with `0xC3`, put [`DESCRIPTOR`] at byte
/// `passes::DESC_OFFSET` (8), and return its GPA.
///
/// # Errors
/// [`SpaceError`] if no frame is free or the write fails.
pub fn data_frame(space: &mut AddressSpace) -> Result<u64, SpaceError> {
    let dma = space.host_tables().zones.alloc(ZoneKind::Dma, 1, 1);
    let data = match dma {
        Ok(p) => p,
        Err(_) => frames(space, 1)?,
    };
    let data_gpa = data.gpa()?.raw();
    let mut page = [0xc3u8; PAGE_SIZE as usize];
    let d = super::passes::DESC_OFFSET as usize;
    page[d..d + 8].copy_from_slice(&DESCRIPTOR.to_le_bytes());
    space
        .ram()
        .mem
        .write_slice(&page, GuestAddress(data_gpa))
        .map_err(|_| SpaceError::Write {
            what: "matrix data frame",
        })?;
    space.add_host_frames(AREA, data, 1);
    Ok(data_gpa)
}

/// The segment descriptor the implicit-access passes load (SDM Vol. 3A §3.4.5): a present
/// DPL 3 read/write data segment, base 0, limit 4 GiB, with its accessed flag already set,
/// so loading it reads the descriptor and writes nothing.
pub const DESCRIPTOR: u64 = 0x00cf_f300_0000_ffff;

/// Build the test tables for `vas` over the data frame at `data_gpa` ([`data_frame`]) and
/// a records buffer of `buf_bytes` (plan included) filled with `records` (already laid out
/// by the caller). `phys_bits` is the guest's MAXPHYADDR. A VA with `leaf_level` 3 gets a
/// 1 GiB leaf mapping GPA 0 (its low 30 bits are `data_gpa`'s).
///
/// # Errors
/// The [`Status`](memvisor_abi::Status) of the first table edit or memory access that failed.
pub fn build(
    space: &mut AddressSpace,
    vas: &[TestVa],
    buf: &[u8],
    phys_bits: u8,
    data_gpa: u64,
) -> Result<Built, SpaceError> {
    // 16 PDPT + 256 PD + 4096 PT, 3 per reserved-bit VA, 18 per 256 variant VAs, the
    // buffer's tables, slack.
    let buf_bytes = (buf.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let variant_vas = (vas.len() as u64).saturating_sub((MATRIX_VAS + RSVD_VAS) as u64);
    let need = 16
        + 256
        + 4096
        + 3 * RSVD_VAS as u64
        + variant_vas.div_ceil(256) * 18
        + buf_bytes / (512 * PAGE_SIZE)
        + 16;
    reserve_tables(space, need)?;

    let buf_pfn = frames(space, buf_bytes / PAGE_SIZE)?;
    space.add_host_frames(AREA, buf_pfn, buf_bytes / PAGE_SIZE);
    let buf_gpa = buf_pfn.gpa()?.raw();
    space
        .ram()
        .mem
        .write_slice(buf, GuestAddress(buf_gpa))
        .map_err(|_| SpaceError::Write {
            what: "matrix records",
        })?;
    let rw_user = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER;
    let tb = space.host_tables();
    tb.pt
        .edit(tb.mem, tb.pool)
        .map_range(
            Gva::new(BUF_GVA),
            Gpa::new(buf_gpa),
            buf_bytes,
            PageSize::Size4K,
            rw_user,
        )
        .map_err(paging)?;

    // Map every test VA P | RW | US (this allocates each path's tables), then give each
    // entry its flags: leaves first, then the tables above (a non-present intermediate
    // entry cannot be mapped through, so those come last), then the reserved bits.
    let HostTables { mem, pt, pool, .. } = space.host_tables();
    for t in vas {
        // A 1 GiB leaf over the first GiB (page tables included) is mapped read-only (the
        // mapper refuses writable mappings of table frames); its test flags, RW among them,
        // are written below and removed after the last pass (`MatrixRun::sync`).
        let (va, gpa, size, flags) = if t.leaf_level == 3 {
            let ro_user = PteFlags::PRESENT | PteFlags::USER;
            (t.va & !((1 << 30) - 1), 0, PageSize::Size1G, ro_user)
        } else {
            (
                t.host_va() & !(PAGE_SIZE - 1),
                data_gpa,
                PageSize::Size4K,
                rw_user,
            )
        };
        pt.edit(mem, &mut *pool)
            .map(canonical(va)?, Gpa::new(gpa), size, flags)
            .map_err(paging)?;
    }
    let mut leaf_gpas = vec![0; vas.len()];
    let mut leaf_raw = Vec::with_capacity(vas.len());
    let mut entry_gpas = Vec::with_capacity(vas.len() + 4400);
    for level in 1..=4u8 {
        let i = 4 - level as usize;
        let mut last_gpa = None;
        for (k, t) in vas.iter().enumerate() {
            if level < t.leaf_level {
                continue;
            }
            let gva = canonical(t.host_va())?;
            let gpa = pt.entry_gpa(mem, gva, level).map_err(paging)?;
            if level == t.leaf_level {
                leaf_gpas[k] = gpa.raw();
            }
            // Consecutive VAs share their upper entries: set each entry once.
            if last_gpa == Some(gpa.raw()) {
                continue;
            }
            last_gpa = Some(gpa.raw());
            entry_gpas.push(gpa.raw());
            // PS stays as mapped (set_entry_flags keeps it).
            // (Protection keys are written below.)
            let flags = PteFlags::from_bits_truncate(t.entries[i] & !ADDR_BITS & !PS & !KEY_BITS);
            pt.set_entry_flags(mem, gva, level, flags).map_err(paging)?;
        }
    }
    // The LA57 VAs' PML5Es (each points to the PML4; the path below it is the host VA's,
    // built above). Refused unless the guest boots 5-level.
    let mut pml5es = Vec::new();
    for t in vas {
        if let Some(f) = t.pml5e {
            let index = memvisor::paging::pml5_index(t.va);
            pt.set_pml5e(mem, index, f & !ADDR_BITS).map_err(paging)?;
            entry_gpas.push(pt.pml5e_gpa(index).map_err(paging)?.raw());
            pml5es.push(index);
        }
    }
    // Protection keys (bits 62:59 of a leaf, SDM Vol. 3A §4.6.2): not flags of the table
    // editor, written into the leaf directly.
    for (t, &g) in vas.iter().zip(&leaf_gpas) {
        let key = t.entries[4 - usize::from(t.leaf_level)] & KEY_BITS;
        if key != 0 {
            let at = GuestAddress(g);
            let raw = mem.read_obj::<u64>(at).map_err(|_| SpaceError::Write {
                what: "matrix leaf",
            })?;
            mem.write_obj::<u64>(raw | key, at)
                .map_err(|_| SpaceError::Write {
                    what: "matrix leaf",
                })?;
        }
    }
    for &g in &leaf_gpas {
        let raw = mem
            .read_obj::<u64>(GuestAddress(g))
            .map_err(|_| SpaceError::Write {
                what: "matrix leaf",
            })?;
        leaf_raw.push(raw);
    }
    let rsvd_built = phys_bits < 52;
    for (k, t) in vas.iter().enumerate() {
        if let (Some(level), true) = (t.rsvd_level, rsvd_built) {
            pt.poison_entry(mem, Gva::new(t.va), level, rsvd_bit(phys_bits), phys_bits)
                .map_err(paging)?;
            if level == 1 {
                leaf_raw[k] |= rsvd_bit(phys_bits);
            }
        }
    }
    Ok(Built {
        leaf_gpas,
        leaf_raw,
        entry_gpas,
        data_gpa,
        buf_gpa,
        buf_bytes,
        rsvd_built,
        pml5es,
    })
}

/// `raw` as a [`Gva`] (the matrix's own VAs are canonical; a bug is an error, not a panic).
fn canonical(raw: u64) -> Result<Gva, SpaceError> {
    memvisor::paging::canonical(raw).map_err(paging)
}

/// Records for the passes, each over its VAs (`passes[i]`), after a plan area of
/// [`PLAN_BYTES`] (zeros).
pub fn records_image(passes: &[&[TestVa]]) -> Vec<u8> {
    let n: usize = passes.iter().map(|p| p.len()).sum();
    let mut buf = vec![0u8; PLAN_BYTES as usize + n * RECORD_BYTES as usize];
    let mut off = PLAN_BYTES as usize;
    for vas in passes {
        for t in *vas {
            for w in [t.va, NOT_FAULTED, NOT_FAULTED] {
                buf[off..off + 8].copy_from_slice(&w.to_le_bytes());
                off += 8;
            }
        }
    }
    buf
}

/// Map the supervisor-only (US=0) aliases the CR4.SMEP / SMAP passes need (SDM Vol. 3A
/// §4.6.1: with SMEP a supervisor fetch from a user-mode address faults; with SMAP a
/// supervisor data access does, always for implicit accesses such as IDT and GDT reads):
///
/// * the kernel's probe code `[start, end)` (GVAs of its image, `start` page-aligned) at
///   [`TRAMP_GVA`], executable, read-only;
/// * the kernel's writable segments (the IDT, GDT, TSS live there) at
///   [`memvisor::layout::MATRIX_KDATA_ALIAS_GVA`] + GPA, read-only;
/// * the records buffer at [`memvisor::layout::MATRIX_BUF_ALIAS_GVA`], writable.
///
/// Returns the `(GVA, length)` of each alias (for [`unmap_aliases`]).
///
/// # Errors
/// [`SpaceError`] if the code range is not in an executable kernel segment or a table edit
/// fails.
pub fn map_aliases(
    space: &mut AddressSpace,
    (start, end): (u64, u64),
    built: &Built,
) -> Result<Vec<(u64, u64)>, SpaceError> {
    let kernel = space.kernel().clone();
    let seg = kernel
        .segments
        .iter()
        .find(|s| s.exec && start >= s.gva && end <= s.gva + s.memsz)
        .ok_or(SpaceError::Write {
            what: "matrix probe code (not in an executable kernel segment)",
        })?;
    let page = |a: u64| a & !(PAGE_SIZE - 1);
    let mut maps = vec![(
        TRAMP_GVA,
        page(seg.gpa + (start - seg.gva)),
        (end - start).div_ceil(PAGE_SIZE) * PAGE_SIZE,
        PteFlags::PRESENT,
    )];
    for s in kernel.segments.iter().filter(|s| s.write) {
        let gpa = page(s.gpa);
        let len = (s.gpa + s.memsz).div_ceil(PAGE_SIZE) * PAGE_SIZE - gpa;
        maps.push((
            memvisor::layout::MATRIX_KDATA_ALIAS_GVA + gpa,
            gpa,
            len,
            PteFlags::PRESENT,
        ));
    }
    maps.push((
        memvisor::layout::MATRIX_BUF_ALIAS_GVA,
        built.buf_gpa,
        built.buf_bytes,
        PteFlags::PRESENT | PteFlags::WRITABLE,
    ));
    let mut done = Vec::with_capacity(maps.len());
    for (gva, gpa, len, flags) in maps {
        let tb = space.host_tables();
        tb.pt
            .edit(tb.mem, tb.pool)
            .map_range(Gva::new(gva), Gpa::new(gpa), len, PageSize::Size4K, flags)
            .map_err(paging)?;
        done.push((gva, len));
    }
    Ok(done)
}

/// Unmap `(GVA, length)` ranges: what [`map_aliases`] mapped, and the LA57 paths' leaves
/// after the last pass. These leaves own no frames (the kernel's, the records buffer's and
/// the data frame's owners stay as they were); returns the shadow flush the removed leaves
/// owe.
///
/// # Errors
/// [`SpaceError`] if a table edit fails.
pub fn unmap_aliases(
    space: &mut AddressSpace,
    aliases: &[(u64, u64)],
) -> Result<ShadowFlush, SpaceError> {
    let mut flush = ShadowFlush::none();
    for &(gva, len) in aliases {
        let tb = space.host_tables();
        let gone = tb
            .pt
            .edit(tb.mem, tb.pool)
            .unmap(Gva::new(gva), len)
            .map_err(paging)?;
        flush.absorb(gone.flush);
    }
    Ok(flush)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vas_are_distinct_and_canonical() {
        let v = test_vas(48);
        assert_eq!(v.len(), 65_540);
        let mut vas: Vec<u64> = v.iter().map(|t| t.va).collect();
        vas.sort_unstable();
        vas.dedup();
        assert_eq!(vas.len(), 65_540);
        assert!(v.iter().all(|t| t.va < 1 << 47));
        assert_eq!(v[0].va, 64 << 39);
        assert_eq!(v[0].entries, [0; 4]);
        let last = v[65_535];
        assert_eq!(last.entries, [combo_flags(15); 4]);
        assert_eq!(combo_flags(15), 0x8000_0000_0000_0007);
        assert_eq!(v[65_536].entries[0], 0x7 | 1 << 48);
        assert_eq!(test_vas(39)[65_537].entries[1], 0x7 | 1 << 39);
        assert_eq!(rsvd_bit(52), 1 << 51);
        assert_eq!(v[65_539].rsvd_level, Some(1));
        const { assert!(BUF_GVA > (RSVD_SLOT + 4) << 39) };
    }
}
