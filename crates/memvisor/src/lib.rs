//! memvisor: a hypervisor-style guest physical memory manager on KVM — the VMM library.
//!
//! The host VMM owns every 4 KiB frame of guest RAM ([`frames`]), builds and owns the guest's
//! x86_64 4-level page tables ([`paging`]), and serves the guest's memory requests by
//! hypercall ([`hypercall`], [`space`]). [`vmm::run_scenario`] boots the embedded guest with a
//! scenario's host side ([`scenario::Scenario`]) and returns a [`report::Report`]; [`Vm`] is the
//! step-wise API tests are written with (create, shape memory, `run()` to the next [`Exit`],
//! assert, run again). The tools (the `memvisor` CLI, the built-in scenarios' host sides and
//! their registry, bench, replay, the fault matrix, the hostile harness, report text) are the
//! `memvisor-cli` crate at the workspace root, on top of this one. See `README.md` for the tour.

pub mod backend;
pub mod boot;
pub mod guest_build;
pub mod guest_image;
pub mod hypercall;
pub mod invariants;
pub mod layout;
pub mod memory;
pub mod pf_assist;
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
