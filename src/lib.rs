//! memvisor: a hypervisor-style guest physical memory manager on KVM.
//!
//! The host VMM owns every 4 KiB frame of guest RAM ([`frames`]), builds and owns the guest's
//! x86_64 4-level page tables ([`paging`]), and serves the guest's memory requests by
//! hypercall. See `README.md` for the tour.

pub mod addr;
pub mod frames;
pub mod paging;
