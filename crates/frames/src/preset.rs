//! Zone kinds and zone-table presets (layouts and zonelists) for [`ZoneTable`](super::ZoneTable).

use super::bitmap::MAX_PFN;
use crate::addr::PAGE_SHIFT;

/// A memory zone. The discriminant orders zones from low to high memory (Linux `enum
/// zone_type`), which is the order `lowmem_reserve` protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ZoneKind {
    /// `ZONE_DMA`: below 16 MiB (ISA DMA).
    Dma = 0,
    /// `ZONE_DMA32`: 16 MiB – 4 GiB (32-bit DMA), x86_64 preset only.
    Dma32 = 1,
    /// `ZONE_NORMAL`: from 4 GiB (x86_64) or 16 MiB – 896 MiB (legacy).
    Normal = 2,
    /// `ZONE_HIGHMEM`: from 896 MiB, legacy preset only.
    HighMem = 3,
}

impl ZoneKind {
    /// All zone kinds, low to high.
    pub const ALL: [ZoneKind; 4] = [
        ZoneKind::Dma,
        ZoneKind::Dma32,
        ZoneKind::Normal,
        ZoneKind::HighMem,
    ];

    /// The Linux name: `"DMA"`, `"DMA32"`, `"Normal"`, `"HighMem"`.
    pub const fn name(self) -> &'static str {
        match self {
            ZoneKind::Dma => "DMA",
            ZoneKind::Dma32 => "DMA32",
            ZoneKind::Normal => "Normal",
            ZoneKind::HighMem => "HighMem",
        }
    }

    /// Linux `sysctl_lowmem_reserve_ratio` of this zone (DMA/DMA32 256, Normal 32).
    pub const fn lowmem_reserve_ratio(self) -> u64 {
        match self {
            ZoneKind::Dma | ZoneKind::Dma32 => 256,
            ZoneKind::Normal => 32,
            ZoneKind::HighMem => 0,
        }
    }
}

impl core::fmt::Display for ZoneKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// 16 MiB in frames.
const PFN_16M: u64 = (16 << 20) >> PAGE_SHIFT;
/// 896 MiB in frames.
const PFN_896M: u64 = (896 << 20) >> PAGE_SHIFT;
/// 4 GiB in frames.
const PFN_4G: u64 = (4 << 30) >> PAGE_SHIFT;

/// Zone layout and fallback policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZonePreset {
    /// Linux x86_64: DMA [0, 16 MiB), DMA32 [16 MiB, 4 GiB), Normal [4 GiB, …). Zonelists
    /// (Linux): Normal → DMA32 → DMA, DMA32 → DMA, DMA alone.
    #[default]
    X86_64,
    /// Seed 003: DMA [0, 16 MiB), Normal [16 MiB, 896 MiB), HighMem [896 MiB, …). Fallback:
    /// Normal → HighMem → DMA (seed 003), HighMem → Normal → DMA (Linux), DMA alone.
    Legacy,
}

impl ZonePreset {
    /// The zones of this preset as `(kind, first PFN, end PFN)`, low to high; the last zone
    /// ends at [`MAX_PFN`].
    pub const fn layout(self) -> &'static [(ZoneKind, u64, u64)] {
        match self {
            ZonePreset::X86_64 => &[
                (ZoneKind::Dma, 0, PFN_16M),
                (ZoneKind::Dma32, PFN_16M, PFN_4G),
                (ZoneKind::Normal, PFN_4G, MAX_PFN),
            ],
            ZonePreset::Legacy => &[
                (ZoneKind::Dma, 0, PFN_16M),
                (ZoneKind::Normal, PFN_16M, PFN_896M),
                (ZoneKind::HighMem, PFN_896M, MAX_PFN),
            ],
        }
    }

    /// The zonelist of a request for `zone`: the zones tried, in order; `None` if the zone is
    /// not part of this preset.
    pub const fn zonelist(self, zone: ZoneKind) -> Option<&'static [ZoneKind]> {
        use ZoneKind::*;
        match (self, zone) {
            (_, Dma) => Some(&[Dma]),
            (ZonePreset::X86_64, Dma32) => Some(&[Dma32, Dma]),
            (ZonePreset::X86_64, Normal) => Some(&[Normal, Dma32, Dma]),
            (ZonePreset::Legacy, Normal) => Some(&[Normal, HighMem, Dma]),
            (ZonePreset::Legacy, HighMem) => Some(&[HighMem, Normal, Dma]),
            _ => None,
        }
    }
}
