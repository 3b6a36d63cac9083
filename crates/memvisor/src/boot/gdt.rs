//! The boot GDT: null, 64-bit code, data. Intel SDM Vol. 3A §3.4.5 (segment descriptors),
//! §5.2.1 (code-segment descriptor in 64-bit mode: L=1, D=0).

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit kernel code segment (GDT index 1).
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the kernel data segment (GDT index 2).
pub const DATA_SELECTOR: u16 = 0x10;

/// Encode a segment descriptor from `flags` (bits 15:12 G D/B L AVL and 7:0 P DPL S type
/// packed as in Firecracker's `gdt_entry`), `base` and `limit` (20 bits).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, code (P DPL0 S type=0xB, G L), data (P DPL0 S type=0x3, G D/B).
pub const BOOT_GDT: [u64; 3] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
];

/// Decode GDT entry `index` into KVM's segment form for `KVM_SET_SREGS` (selector
/// `index * 8`, RPL 0).
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    decode_descriptor(entry, u16::from(index) * 8)
}

/// The one segment-descriptor decoder (Intel SDM Vol. 3A §3.4.5, Figure 3-8): base
/// (bits 63:56, 39:16), limit (51:48, 15:0; scaled by 4 KiB when G), type, S, DPL, P, AVL,
/// L, D/B, G, as KVM's segment-register cache for `selector`. A not-present descriptor is
/// `unusable`. Used for the boot GDT and for the guest's GDT entries read by the #PF assist.
pub fn decode_descriptor(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_descriptor_bytes() {
        assert_eq!(BOOT_GDT[0], 0);
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn kvm_segments() {
        let cs = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(cs.selector, CODE_SELECTOR);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(ds.selector, DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_, ds.unusable), (0, 1, 3, 0));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
        // A ring-3 selector (RPL 3) is kept as given; the rest decodes the same.
        let user = decode_descriptor(BOOT_GDT[1], 0x0b);
        assert_eq!(user.selector, 0x0b);
        assert_eq!(
            (user.base, user.limit, user.l, user.type_),
            (0, 0xffff_ffff, 1, 0xb)
        );
    }
}
