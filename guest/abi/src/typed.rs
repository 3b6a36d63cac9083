//! Typed hypercalls: [`Prot`], [`Zone`], [`MapFlags`] and [`Hypercall`], the one decoder of a
//! [`Request`] used by both the host (to dispatch) and the guest SDK (to encode).
//!
//! Decoding checks only the envelope (a known call number: else [`Status::NoSys`];
//! `reserved == 0`: else [`Status::Inval`]). Argument values, unknown bits of [`Prot`] and
//! [`MapFlags`] included, are kept as sent and checked by the host's address space, in one
//! documented order (e.g. `Mmap`: protection bits, then W^X, then flags, then length).

use crate::{map, prot, Call, Request, Status};

/// Protection bits of `Mmap` / `Mprotect` (see [`prot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot(u64);

impl Prot {
    /// Not accessible (refused by `Mmap` and `Mprotect`: the host answers `Inval`).
    pub const NONE: Prot = Prot(prot::NONE);
    /// Readable.
    pub const READ: Prot = Prot(prot::READ);
    /// Writable (PTE.RW).
    pub const WRITE: Prot = Prot(prot::WRITE);
    /// Executable (PTE.NX clear).
    pub const EXEC: Prot = Prot(prot::EXEC);
    /// Accessible from CPL 3 (PTE.US).
    pub const USER: Prot = Prot(prot::USER);
    /// Read + write + user: ordinary data for ring-3 code.
    pub const USER_RW: Prot = Prot(prot::READ | prot::WRITE | prot::USER);
    /// Read + user.
    pub const USER_RO: Prot = Prot(prot::READ | prot::USER);

    /// From raw bits.
    ///
    /// # Errors
    /// [`Status::Inval`] for bits outside [`prot::ALL`].
    pub const fn from_bits(bits: u64) -> Result<Prot, Status> {
        if bits & !prot::ALL != 0 {
            Err(Status::Inval)
        } else {
            Ok(Prot(bits))
        }
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// From raw bits, unknown ones kept (what the decoder does; the host checks them).
    pub const fn from_bits_retain(bits: u64) -> Prot {
        Prot(bits)
    }

    /// The union of two sets of bits.
    pub const fn union(self, o: Prot) -> Prot {
        Prot(self.0 | o.0)
    }
}

impl core::ops::BitOr for Prot {
    type Output = Prot;
    fn bitor(self, o: Prot) -> Prot {
        self.union(o)
    }
}

/// Flags of `Mmap` (see [`map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapFlags(u64);

impl MapFlags {
    /// Populate now with 4 KiB pages (the default when no flag is given).
    pub const POPULATE: MapFlags = MapFlags(map::POPULATE);
    /// Back pages on first touch (demand paging, served by the host's #PF assist).
    pub const LAZY: MapFlags = MapFlags(map::LAZY);
    /// 2 MiB pages where the length allows (with `POPULATE`).
    pub const HUGE: MapFlags = MapFlags(map::HUGE);
    /// At exactly the GVA given (`Hypercall::Mmap::addr`), never replacing a mapping.
    pub const FIXED: MapFlags = MapFlags(map::FIXED);

    /// From raw bits.
    ///
    /// # Errors
    /// [`Status::Inval`] for bits outside [`map::ALL`].
    pub const fn from_bits(bits: u64) -> Result<MapFlags, Status> {
        if bits & !map::ALL != 0 {
            Err(Status::Inval)
        } else {
            Ok(MapFlags(bits))
        }
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// From raw bits, unknown ones kept (what the decoder does; the host checks them).
    pub const fn from_bits_retain(bits: u64) -> MapFlags {
        MapFlags(bits)
    }
}

impl core::ops::BitOr for MapFlags {
    type Output = MapFlags;
    fn bitor(self, o: MapFlags) -> MapFlags {
        MapFlags(self.0 | o.0)
    }
}

/// A zone number of `Mmap` (see [`crate::zone`]). Any value decodes: whether the zone exists
/// in this guest is the host's answer (`NoZone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Zone(pub u64);

impl Zone {
    /// Normal, falling back to DMA32 then DMA.
    pub const ANY: Zone = Zone(crate::zone::ANY);
    /// Frames below 16 MiB.
    pub const DMA: Zone = Zone(crate::zone::DMA);
    /// Frames in [16 MiB, 4 GiB).
    pub const DMA32: Zone = Zone(crate::zone::DMA32);
    /// Frames at or above 4 GiB.
    pub const NORMAL: Zone = Zone(crate::zone::NORMAL);
}

/// One decoded hypercall (arguments as in [`Call`]'s documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// [`Call::Nop`].
    Nop,
    /// [`Call::ConsoleWrite`]: text at `gva`, `len` bytes.
    ConsoleWrite { gva: u64, len: u64 },
    /// [`Call::Exit`].
    Exit { code: u32 },
    /// [`Call::Mmap`].
    Mmap {
        len: u64,
        prot: Prot,
        zone: Zone,
        flags: MapFlags,
        /// The GVA for [`MapFlags::FIXED`], else 0.
        addr: u64,
    },
    /// [`Call::Munmap`].
    Munmap { gva: u64, len: u64 },
    /// [`Call::Mprotect`].
    Mprotect { gva: u64, len: u64, prot: Prot },
    /// [`Call::Translate`].
    Translate { gva: u64 },
    /// [`Call::Stats`]: the host fills a [`crate::MemStats`] at `gva`.
    Stats { gva: u64 },
    /// [`Call::FaultReport`].
    FaultReport {
        vector: u64,
        error_code: u64,
        cr2: u64,
        rip: u64,
        resolved: bool,
    },
    /// [`Call::LazyFault`].
    LazyFault { cr2: u64, error_code: u64, rip: u64 },
    /// [`Call::Panic`]: message at `gva`, `len` bytes.
    Panic { gva: u64, len: u64 },
    /// [`Call::Record`]: a `key=value` line at `gva`, `len` bytes.
    Record { gva: u64, len: u64 },
    /// [`Call::Stage2`].
    Stage2 { op: u64, arg: u64 },
    /// [`Call::Ucall`]: a [`crate::ucall::Record`] at `gva`, `len` bytes.
    Ucall { gva: u64, len: u64 },
    /// [`Call::MatrixSync`].
    MatrixSync { ended: u64, next: u64 },
}

impl Hypercall {
    /// Decode a request.
    ///
    /// # Errors
    /// `NoSys` for an unknown call number; `Inval` for `reserved != 0`.
    pub fn decode(r: &Request) -> Result<Hypercall, Status> {
        if r.reserved != 0 {
            return Err(Status::Inval);
        }
        let a = r.args;
        let call = Call::from_u32(r.nr).ok_or(Status::NoSys)?;
        Ok(match call {
            Call::Nop => Hypercall::Nop,
            Call::ConsoleWrite => Hypercall::ConsoleWrite {
                gva: a[0],
                len: a[1],
            },
            Call::Exit => Hypercall::Exit { code: a[0] as u32 },
            Call::Mmap => Hypercall::Mmap {
                len: a[0],
                prot: Prot::from_bits_retain(a[1]),
                zone: Zone(a[2]),
                flags: MapFlags::from_bits_retain(a[3]),
                addr: a[4],
            },
            Call::Munmap => Hypercall::Munmap {
                gva: a[0],
                len: a[1],
            },
            Call::Mprotect => Hypercall::Mprotect {
                gva: a[0],
                len: a[1],
                prot: Prot::from_bits_retain(a[2]),
            },
            Call::Translate => Hypercall::Translate { gva: a[0] },
            Call::Stats => Hypercall::Stats { gva: a[0] },
            Call::FaultReport => Hypercall::FaultReport {
                vector: a[0],
                error_code: a[1],
                cr2: a[2],
                rip: a[3],
                resolved: a[4] != 0,
            },
            Call::LazyFault => Hypercall::LazyFault {
                cr2: a[0],
                error_code: a[1],
                rip: a[2],
            },
            Call::Panic => Hypercall::Panic {
                gva: a[0],
                len: a[1],
            },
            Call::Record => Hypercall::Record {
                gva: a[0],
                len: a[1],
            },
            Call::Stage2 => Hypercall::Stage2 {
                op: a[0],
                arg: a[1],
            },
            Call::Ucall => Hypercall::Ucall {
                gva: a[0],
                len: a[1],
            },
            Call::MatrixSync => Hypercall::MatrixSync {
                ended: a[0],
                next: a[1],
            },
        })
    }

    /// The call number.
    pub const fn call(&self) -> Call {
        match self {
            Hypercall::Nop => Call::Nop,
            Hypercall::ConsoleWrite { .. } => Call::ConsoleWrite,
            Hypercall::Exit { .. } => Call::Exit,
            Hypercall::Mmap { .. } => Call::Mmap,
            Hypercall::Munmap { .. } => Call::Munmap,
            Hypercall::Mprotect { .. } => Call::Mprotect,
            Hypercall::Translate { .. } => Call::Translate,
            Hypercall::Stats { .. } => Call::Stats,
            Hypercall::FaultReport { .. } => Call::FaultReport,
            Hypercall::LazyFault { .. } => Call::LazyFault,
            Hypercall::Panic { .. } => Call::Panic,
            Hypercall::Record { .. } => Call::Record,
            Hypercall::Stage2 { .. } => Call::Stage2,
            Hypercall::Ucall { .. } => Call::Ucall,
            Hypercall::MatrixSync { .. } => Call::MatrixSync,
        }
    }

    /// Encode as a request (the inverse of [`Hypercall::decode`]).
    pub const fn encode(self) -> Request {
        let args = match self {
            Hypercall::Nop => [0; 5],
            Hypercall::ConsoleWrite { gva, len }
            | Hypercall::Munmap { gva, len }
            | Hypercall::Panic { gva, len }
            | Hypercall::Record { gva, len }
            | Hypercall::Ucall { gva, len } => [gva, len, 0, 0, 0],
            Hypercall::Exit { code } => [code as u64, 0, 0, 0, 0],
            Hypercall::Mmap {
                len,
                prot,
                zone,
                flags,
                addr,
            } => [len, prot.0, zone.0, flags.0, addr],
            Hypercall::Mprotect { gva, len, prot } => [gva, len, prot.0, 0, 0],
            Hypercall::Translate { gva } | Hypercall::Stats { gva } => [gva, 0, 0, 0, 0],
            Hypercall::FaultReport {
                vector,
                error_code,
                cr2,
                rip,
                resolved,
            } => [vector, error_code, cr2, rip, resolved as u64],
            Hypercall::LazyFault {
                cr2,
                error_code,
                rip,
            } => [cr2, error_code, rip, 0, 0],
            Hypercall::Stage2 { op, arg } => [op, arg, 0, 0, 0],
            Hypercall::MatrixSync { ended, next } => [ended, next, 0, 0, 0],
        };
        Request::new(self.call(), args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_inverts_encode() {
        let calls = [
            Hypercall::Nop,
            Hypercall::Exit { code: 7 },
            Hypercall::Mmap {
                len: 4096,
                prot: Prot::USER_RW,
                zone: Zone::DMA,
                flags: MapFlags::LAZY,
                addr: 0,
            },
            Hypercall::Mmap {
                len: 4096,
                prot: Prot::USER_RW,
                zone: Zone::ANY,
                flags: MapFlags::FIXED,
                addr: 1 << 40,
            },
            Hypercall::Mprotect {
                gva: 1 << 44,
                len: 8192,
                prot: Prot::USER_RO,
            },
            Hypercall::FaultReport {
                vector: 14,
                error_code: 7,
                cr2: 3,
                rip: 4,
                resolved: true,
            },
            Hypercall::Ucall {
                gva: 0x1000,
                len: 64,
            },
            Hypercall::MatrixSync { ended: 1, next: 2 },
        ];
        for c in calls {
            assert_eq!(Hypercall::decode(&c.encode()), Ok(c));
        }
    }

    #[test]
    fn decode_checks_the_envelope_and_keeps_argument_bits() {
        let mut r = Hypercall::Mmap {
            len: 4096,
            prot: Prot::READ,
            zone: Zone::ANY,
            flags: MapFlags::POPULATE,
            addr: 0,
        }
        .encode();
        r.args[1] = 1 << 9;
        r.args[3] = 1 << 5;
        let Ok(Hypercall::Mmap { prot, flags, .. }) = Hypercall::decode(&r) else {
            panic!("decodes");
        };
        assert_eq!((prot.bits(), flags.bits()), (1 << 9, 1 << 5));
        assert_eq!(Prot::from_bits(1 << 9), Err(Status::Inval));
        assert_eq!(MapFlags::from_bits(1 << 5), Err(Status::Inval));
        r.reserved = 1;
        assert_eq!(Hypercall::decode(&r), Err(Status::Inval));
        let unknown = Request {
            nr: 99,
            ..Request::default()
        };
        assert_eq!(Hypercall::decode(&unknown), Err(Status::NoSys));
    }
}
