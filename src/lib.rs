//! memvisor: a hypervisor-style guest physical memory manager on KVM.
//!
//! The host VMM owns every 4 KiB frame of guest RAM ([`frames`]), builds and owns the guest's
//! x86_64 4-level page tables ([`paging`]), and serves the guest's memory requests by
//! hypercall ([`hypercall`], [`space`]). [`registry::run`] boots a built-in scenario of the embedded guest and
//! returns a [`report::Report`]; [`Vm`] is the step-wise API tests are written with
//! (create, shape memory, `run()` to the next [`Exit`], assert, run again). See `README.md` for the tour.

pub mod api;
pub mod backend;
pub mod bench;
pub mod boot;
pub mod guest_build;
pub mod guest_image;
pub mod hypercall;
pub mod invariants;
pub mod layout;
pub mod matrix;
pub mod memory;
pub mod pf_assist;
pub mod registry;
pub mod replay;
pub mod replay_many;
pub mod report;
pub mod scenario;
pub mod snapshot;
pub mod space;
pub mod stage2;
pub mod uffd;
pub mod vm;
pub mod vmm;

pub use memvisor_frames as frames;
pub use memvisor_frames::addr;
pub use memvisor_paging as paging;
pub use vm::{Exit, Ucall, Vm, VmOptions};
