//! The fault matrix's oracle: what the CPU must do for one access through one walk, written
//! from the Intel SDM Vol. 3A §4.6 (access rights), §4.7 (page-fault error code) and §4.5
//! (reserved bits of 4-level paging entries), and §4.8 (accessed and dirty flags).
//!
//! * The walk reads the entries from the PML4E down (from the PML5E under 5-level paging,
//!   CR4.LA57 = 1, [`expect_walk`]; a PML5E's reserved bits are a PML4E's, SDM Vol. 3A
//!   Table 4-14). The first entry with P = 0 ends it with
//!   a not-present fault (error code P = 0). A present entry with a reserved bit set (bits
//!   51:MAXPHYADDR, XD when IA32_EFER.NXE = 0, PS in a PML4E, the low address bits of a large
//!   leaf) ends it with RSVD = 1 and P = 1. A level-1 entry, or a PDPTE / PDE with PS = 1,
//!   is the leaf.
//! * Rights (§4.6): a **user-mode address** has U/S = 1 at every level; **writable** means
//!   R/W = 1 at every level; **execute-disable** means NXE = 1 and XD = 1 at some level.
//!   - CPL 3 (user-mode access): reads need a user-mode address; writes a user-mode,
//!     writable address; fetches a user-mode address without execute-disable. CR4.SMAP,
//!     CR4.SMEP and RFLAGS.AC change nothing here (§4.6.1: they restrict supervisor-mode
//!     accesses only).
//!   - CPL 0 (supervisor-mode access): reads are allowed (CR4.SMAP = 1 with RFLAGS.AC = 0
//!     forbids user-mode addresses); writes are allowed when CR0.WP = 0 (SMAP aside), else
//!     only to writable addresses; fetches are forbidden with execute-disable, and from
//!     user-mode addresses when CR4.SMEP = 1.
//!   - Protection keys (CR4.PKE = 1): data accesses to a user-mode address whose leaf has
//!     key *i* fault if PKRU.AD*i* = 1, and writes if PKRU.WD*i* = 1 and (CPL 3 or CR0.WP = 1).
//!   - Implicit supervisor-mode accesses (the CPU's own reads of the GDT, LDT, IDT, TSS;
//!     [`Access::Desc`]) are supervisor-mode accesses at any CPL (§4.6): a supervisor read,
//!     U/S = 0 in the error code, and with CR4.SMAP = 1 a user-mode address faults whatever
//!     RFLAGS.AC says (§4.6.1).
//! * Error code (§4.7): P (0 not-present, 1 otherwise), W/R (the access was a write), U/S
//!   (CPL 3), RSVD, I/D (an instruction fetch, only when NXE = 1 or SMEP = 1), PK (the PKRU
//!   disallowed the data access).
//! * A/D (§4.8): a successful access sets A in the leaf, a successful write also D. A fault
//!   leaves the leaf as it was (what kvm-unit-tests' `access.c` expects too).

use memvisor::paging::Pte;

/// #PF error code: the fault was a protection or reserved-bit fault (not not-present).
pub const PF_P: u64 = 1;
/// #PF error code: the access was a write.
pub const PF_W: u64 = 2;
/// #PF error code: the access was at CPL 3.
pub const PF_U: u64 = 4;
/// #PF error code: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u64 = 8;
/// #PF error code: the access was an instruction fetch (only with NXE or SMEP).
pub const PF_ID: u64 = 16;
/// #PF error code: protection keys disallowed the access.
pub const PF_PK: u64 = 32;

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
const A: u64 = 0x20;
const D: u64 = 0x40;
const XD: u64 = 1 << 63;

/// The kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
    /// An implicit supervisor-mode data read (SDM Vol. 3A §4.6.1): the CPU reads a segment
    /// descriptor (here from an LDT at the VA) to load a segment register. Supervisor-mode
    /// at any CPL: the error code has U/S = 0; CR4.SMAP forbids user-mode addresses
    /// whatever RFLAGS.AC says; SMEP does not apply (not a fetch).
    Desc,
}

impl Access {
    /// All three, in matrix order.
    pub const ALL: [Access; 3] = [Access::Read, Access::Write, Access::Exec];

    /// `r`, `w` or `x`.
    pub fn letter(self) -> char {
        match self {
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Exec => 'x',
            Access::Desc => 'd',
        }
    }
}

/// Processor state that decides rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    /// CR0.WP.
    pub wp: bool,
    /// IA32_EFER.NXE.
    pub nxe: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// RFLAGS.AC (matters with SMAP).
    pub ac: bool,
    /// CR4.PKE.
    pub pke: bool,
    /// PKRU (with PKE).
    pub pkru: u32,
}

/// What the oracle expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// `Some(error code)` if the access must raise #PF.
    pub fault: Option<u64>,
    /// The leaf entry afterwards, given the leaf before.
    pub leaf_after: u64,
}

/// Expected outcome of `access` at `cpl` (0 or 3) in `mode` through the walk `entries`
/// (raw entries from the PML4E down; the walk stops at the first not-present, reserved or
/// leaf entry, so later entries may be anything). `phys_bits` is MAXPHYADDR. `entries`
/// must hold the walk down to its leaf (a walk that runs out of entries is treated as
/// ending in a not-present entry).
pub fn expect(entries: &[u64], access: Access, cpl: u8, mode: Mode, phys_bits: u8) -> Expect {
    expect_walk(entries, 4, access, cpl, mode, phys_bits)
}

/// [`expect`] for a walk whose first entry is at level `top`: 4 (the PML4E, 4-level paging)
/// or 5 (the PML5E, 5-level paging; the rights are then the AND / OR over all five levels,
/// §4.6). Any other `top` is taken as 4.
pub fn expect_walk(
    entries: &[u64],
    top: u8,
    access: Access,
    cpl: u8,
    mode: Mode,
    phys_bits: u8,
) -> Expect {
    if access == Access::Desc {
        // An implicit supervisor read: a supervisor-mode read whatever the CPL, with SMAP
        // applying as if RFLAGS.AC were 0.
        return expect_walk(
            entries,
            top,
            Access::Read,
            0,
            Mode { ac: false, ..mode },
            phys_bits,
        );
    }
    let top = if top == 5 { 5u8 } else { 4 };
    let mut err = 0;
    if access == Access::Write {
        err |= PF_W;
    }
    if cpl == 3 {
        err |= PF_U;
    }
    if access == Access::Exec && (mode.nxe || mode.smep) {
        err |= PF_ID;
    }
    let (mut user, mut writable, mut xd) = (true, true, false);
    let mut leaf = None;
    for (i, &e) in entries.iter().take(usize::from(top)).enumerate() {
        let level = top - i as u8;
        if e & P == 0 {
            break;
        }
        // A PML5E has a PML4E's reserved bits (PS among them).
        if Pte::from_raw(e).reserved_bits(level.min(4), phys_bits, mode.nxe) != 0 {
            return Expect {
                fault: Some(err | PF_P | PF_RSVD),
                leaf_after: entries.last().copied().unwrap_or(0),
            };
        }
        user &= e & US != 0;
        writable &= e & RW != 0;
        xd |= mode.nxe && e & XD != 0;
        if level == 1 || (level <= 3 && e & PS != 0) {
            leaf = Some(e);
            break;
        }
    }
    let Some(leaf) = leaf else {
        return Expect {
            fault: Some(err),
            leaf_after: entries.last().copied().unwrap_or(0),
        };
    };
    let data = access != Access::Exec;
    let key = (leaf >> 59) & 0xf;
    let ad = (mode.pkru >> (2 * key)) & 1 != 0;
    let wd = (mode.pkru >> (2 * key + 1)) & 1 != 0;
    let pk = mode.pke
        && user
        && data
        && (ad || (wd && access == Access::Write && (cpl == 3 || mode.wp)));
    let smap = mode.smap && user && !mode.ac;
    // (An implicit read, `Desc`, was turned into a CPL 0 read with AC = 0 above.)
    let denied = match (cpl == 3, access) {
        (true, Access::Read | Access::Desc) => !user,
        (true, Access::Write) => !user || !writable,
        (true, Access::Exec) => !user || xd,
        (false, Access::Read | Access::Desc) => smap,
        (false, Access::Write) => smap || (mode.wp && !writable),
        (false, Access::Exec) => xd || (mode.smep && user),
    };
    if denied || pk {
        return Expect {
            fault: Some(err | PF_P | if pk { PF_PK } else { 0 }),
            leaf_after: leaf,
        };
    }
    let set = if access == Access::Write { A | D } else { A };
    Expect {
        fault: None,
        leaf_after: leaf | set,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NXB: u64 = XD;
    const R51: u64 = 1 << 51;
    /// A permissive intermediate entry.
    const T: u64 = P | RW | US;

    fn m(wp: bool, nxe: bool) -> Mode {
        Mode {
            wp,
            nxe,
            ..Mode::default()
        }
    }

    fn fault(e: &[u64], a: Access, cpl: u8, mode: Mode) -> Option<u64> {
        expect(e, a, cpl, mode, 48).fault
    }

    #[test]
    fn supervisor_write_to_read_only_user_page() {
        // SDM §4.6.1: with CR0.WP = 0 supervisor writes ignore R/W; with WP = 1 they fault
        // with P | W (0x3).
        let walk = [T, T, T, P | US];
        let ok = expect(&walk, Access::Write, 0, m(false, true), 48);
        assert_eq!(ok.fault, None);
        assert_eq!(ok.leaf_after, P | US | A | D);
        assert_eq!(fault(&walk, Access::Write, 0, m(true, true)), Some(0x3));
        // Read-only at an upper level counts the same.
        let walk = [T, P | US, T, T];
        assert_eq!(fault(&walk, Access::Write, 0, m(true, false)), Some(0x3));
        assert_eq!(fault(&walk, Access::Write, 0, m(false, false)), None);
    }

    #[test]
    fn user_accesses() {
        // User read of a supervisor page: P | U (0x5); U/S clear at any level.
        assert_eq!(
            fault(&[T, T, T, P | RW], Access::Read, 3, m(true, true)),
            Some(0x5)
        );
        assert_eq!(
            fault(&[P | RW, T, T, T], Access::Read, 3, m(true, true)),
            Some(0x5)
        );
        // User write to a read-only user page: P | W | U (0x7), whatever WP says.
        assert_eq!(
            fault(&[T, T, T, P | US], Access::Write, 3, m(false, true)),
            Some(0x7)
        );
        // User read of a user page succeeds and sets A only.
        let e = expect(&[T, T, T, P | US], Access::Read, 3, m(true, true), 48);
        assert_eq!((e.fault, e.leaf_after), (None, P | US | A));
        // Not present at the PDE: error code U only (0x4); write adds W (0x6).
        assert_eq!(
            fault(&[T, T, RW | US, T], Access::Read, 3, m(true, true)),
            Some(0x4)
        );
        assert_eq!(
            fault(&[T, T, 0, T], Access::Write, 3, m(true, true)),
            Some(0x6)
        );
        // Supervisor read of a not-present page: error code 0.
        assert_eq!(
            fault(&[0, T, T, T], Access::Read, 0, m(true, true)),
            Some(0)
        );
    }

    #[test]
    fn execute_disable() {
        // NX fetch with NXE = 1: P | I/D (0x11) at CPL 0, P | U | I/D (0x15) at CPL 3.
        let walk = [T, T, T, T | NXB];
        assert_eq!(fault(&walk, Access::Exec, 0, m(true, true)), Some(0x11));
        assert_eq!(fault(&walk, Access::Exec, 3, m(true, true)), Some(0x15));
        // XD at an upper level counts too; reads are unaffected.
        let walk = [T | NXB, T, T, T];
        assert_eq!(fault(&walk, Access::Exec, 0, m(false, true)), Some(0x11));
        assert_eq!(fault(&walk, Access::Read, 0, m(false, true)), None);
        // Not-present fetch with NXE = 1 still reports I/D (0x10); with NXE = 0 it does not.
        assert_eq!(
            fault(&[T, T, T, 0], Access::Exec, 0, m(true, true)),
            Some(0x10)
        );
        assert_eq!(
            fault(&[T, T, T, 0], Access::Exec, 0, m(true, false)),
            Some(0)
        );
        // A user fetch from a supervisor page: P | U | I/D.
        assert_eq!(
            fault(&[T, T, T, P], Access::Exec, 3, m(true, true)),
            Some(0x15)
        );
        // Supervisor fetch from a user page without SMEP is fine.
        let e = expect(&[T, T, T, T], Access::Exec, 0, m(true, true), 48);
        assert_eq!((e.fault, e.leaf_after), (None, T | A));
    }

    #[test]
    fn nx_bit_is_reserved_without_nxe() {
        // XD with NXE = 0 is a reserved bit: P | RSVD (0x9) for a supervisor read, and no I/D
        // for a fetch (NXE = 0, no SMEP).
        let walk = [T, T, T, T | NXB];
        assert_eq!(fault(&walk, Access::Read, 0, m(true, false)), Some(0x9));
        assert_eq!(fault(&walk, Access::Write, 3, m(true, false)), Some(0xf));
        assert_eq!(fault(&walk, Access::Exec, 0, m(true, false)), Some(0x9));
        // A not-present entry above the reserved one wins (the walk stops there).
        assert_eq!(
            fault(&[T, 0, T | NXB, T], Access::Read, 0, m(true, false)),
            Some(0)
        );
        // A reserved entry above a not-present one wins.
        assert_eq!(
            fault(&[T | NXB, 0, T, T], Access::Read, 3, m(true, false)),
            Some(0xd)
        );
    }

    #[test]
    fn reserved_address_bit() {
        // Bit 51 with MAXPHYADDR 48 is reserved at every level: P | RSVD, plus W / U / I/D.
        for level in 0..4 {
            let mut walk = [T; 4];
            walk[level] |= R51;
            assert_eq!(fault(&walk, Access::Read, 0, m(true, true)), Some(0x9));
            assert_eq!(fault(&walk, Access::Write, 3, m(true, true)), Some(0xf));
            assert_eq!(fault(&walk, Access::Exec, 3, m(true, true)), Some(0x1d));
            // With MAXPHYADDR 52 the bit is an address bit.
            assert_eq!(
                expect(&walk, Access::Read, 0, m(true, true), 52).fault,
                None
            );
        }
        // The matrix's bit is MAXPHYADDR itself: reserved at that width, an address bit one
        // wider.
        for bits in [39u8, 40, 46, 48] {
            let mut walk = [T; 4];
            walk[2] |= super::super::tables::rsvd_bit(bits);
            let at = |b| expect(&walk, Access::Read, 3, m(true, true), b).fault;
            assert_eq!(at(bits), Some(0xd), "MAXPHYADDR {bits}");
            assert_eq!(at(bits + 1), None, "MAXPHYADDR {}", bits + 1);
        }
        // Reserved bits in a not-present entry are ignored.
        assert_eq!(
            fault(&[T, R51, T, T], Access::Read, 0, m(true, true)),
            Some(0)
        );
    }

    #[test]
    fn large_pages_and_ps_in_pml4e() {
        // PS in a PML4E is reserved.
        assert_eq!(
            fault(&[T | PS, T, T, T], Access::Read, 0, m(true, true)),
            Some(0x9)
        );
        // A 1 GiB leaf ends the walk at the PDPTE.
        let e = expect(&[T, P | US | PS], Access::Write, 3, m(true, true), 48);
        assert_eq!(e.fault, Some(0x7));
        let e = expect(&[T, T | PS], Access::Write, 3, m(true, true), 48);
        assert_eq!((e.fault, e.leaf_after), (None, T | PS | A | D));
    }

    #[test]
    fn five_level_walk() {
        let t5 = |e: &[u64], a, cpl, mode| expect_walk(e, 5, a, cpl, mode, 48).fault;
        // The PML5E's rights count like any level's: US=0 there makes a user access fault
        // with P | U, RW=0 a CPL 3 write with P | W | U, XD (NXE = 1) a fetch with I/D.
        assert_eq!(
            t5(&[P | RW, T, T, T, T], Access::Read, 3, m(true, true)),
            Some(0x5)
        );
        assert_eq!(
            t5(&[P | US, T, T, T, T], Access::Write, 3, m(false, true)),
            Some(0x7)
        );
        assert_eq!(
            t5(&[P | US, T, T, T, T], Access::Write, 0, m(true, true)),
            Some(0x3)
        );
        assert_eq!(
            t5(&[P | US, T, T, T, T], Access::Write, 0, m(false, true)),
            None
        );
        assert_eq!(
            t5(&[T | NXB, T, T, T, T], Access::Exec, 3, m(true, true)),
            Some(0x15)
        );
        // Not present at the PML5E: P = 0; with NXE = 0, XD in the PML5E is reserved.
        assert_eq!(
            t5(&[RW | US, T, T, T, T], Access::Write, 3, m(true, true)),
            Some(0x6)
        );
        assert_eq!(
            t5(&[T | NXB, T, T, T, T], Access::Read, 0, m(true, false)),
            Some(0x9)
        );
        // PS and an address bit above MAXPHYADDR in a PML5E are reserved.
        assert_eq!(
            t5(&[T | PS, T, T, T, T], Access::Read, 3, m(true, true)),
            Some(0xd)
        );
        assert_eq!(
            t5(&[T | R51, T, T, T, T], Access::Read, 0, m(true, true)),
            Some(0x9)
        );
        // A permissive PML5E leaves the 4-level answer, A/D included.
        let e = expect_walk(&[T, T, T, T, P | US], 5, Access::Read, 3, m(true, true), 48);
        assert_eq!((e.fault, e.leaf_after), (None, P | US | A));
        assert_eq!(
            expect_walk(&[T, T, T, P | US], 4, Access::Write, 3, m(true, true), 48),
            expect(&[T, T, T, P | US], Access::Write, 3, m(true, true), 48)
        );
    }

    #[test]
    fn smep_smap_pku() {
        let user = [T, T, T, T];
        let sup = [T, T, T, P | RW];
        let smep = Mode {
            smep: true,
            ..m(true, false)
        };
        // SMEP: supervisor fetch from a user page faults with P | I/D even with NXE = 0.
        assert_eq!(fault(&user, Access::Exec, 0, smep), Some(0x11));
        assert_eq!(fault(&sup, Access::Exec, 0, smep), None);
        assert_eq!(fault(&user, Access::Exec, 3, smep), None);
        let smap = Mode {
            smap: true,
            ..m(false, true)
        };
        assert_eq!(fault(&user, Access::Read, 0, smap), Some(0x1));
        assert_eq!(fault(&user, Access::Write, 0, smap), Some(0x3));
        assert_eq!(
            fault(&user, Access::Read, 0, Mode { ac: true, ..smap }),
            None
        );
        assert_eq!(fault(&sup, Access::Write, 0, smap), None);
        // SMAP does not restrict CPL 3 (user-mode) accesses, AC = 0 or 1: the same outcome
        // as without SMAP for every access and both page kinds.
        for ac in [false, true] {
            let mode = Mode { ac, ..smap };
            for a in Access::ALL {
                for e in [&user, &sup, &[T, T, T, P | US]] {
                    assert_eq!(fault(e, a, 3, mode), fault(e, a, 3, m(false, true)));
                }
            }
        }
        assert_eq!(fault(&user, Access::Write, 3, smap), None);
        assert_eq!(fault(&sup, Access::Read, 3, smap), Some(0x5));
        // Implicit supervisor reads: U/S = 0 at CPL 3 too; SMAP faults on user pages even
        // with AC = 1; no SMAP: a supervisor read (user and read-only pages allowed).
        for cpl in [0, 3] {
            for ac in [false, true] {
                let mode = Mode { ac, ..smap };
                assert_eq!(fault(&user, Access::Desc, cpl, mode), Some(0x1));
                assert_eq!(fault(&sup, Access::Desc, cpl, mode), None);
                assert_eq!(
                    fault(&[T, T, T, P | US], Access::Desc, cpl, m(true, true)),
                    None
                );
            }
            assert_eq!(fault(&sup, Access::Desc, cpl, m(true, true)), None);
            assert_eq!(fault(&[T, T, US, T], Access::Desc, cpl, smap), Some(0));
            // NX with NXE = 0 is reserved: P | RSVD, still U/S = 0.
            let nx = [T, T, T, T | XD];
            assert_eq!(fault(&nx, Access::Desc, cpl, m(true, false)), Some(0x9));
            let e = expect(&user, Access::Desc, cpl, m(true, true), 48);
            assert_eq!((e.fault, e.leaf_after), (None, T | A));
        }
        // PKU: key 1 access-disabled / write-disabled.
        let k1 = [T, T, T, T | (1 << 59)];
        let ad = Mode {
            pke: true,
            pkru: 1 << 2,
            ..m(true, true)
        };
        let wd = Mode { pkru: 1 << 3, ..ad };
        assert_eq!(fault(&k1, Access::Read, 3, ad), Some(0x25));
        assert_eq!(fault(&k1, Access::Exec, 3, ad), None);
        assert_eq!(fault(&k1, Access::Read, 3, wd), None);
        assert_eq!(fault(&k1, Access::Write, 3, wd), Some(0x27));
        assert_eq!(fault(&k1, Access::Write, 0, wd), Some(0x23));
        assert_eq!(fault(&k1, Access::Write, 0, Mode { wp: false, ..wd }), None);
        // Keys do not apply to supervisor-mode addresses.
        let sk1 = [T, T, T, P | RW | (1 << 59)];
        assert_eq!(fault(&sk1, Access::Read, 0, ad), None);
    }
}
