//! Hypercall ABI shared by host and guest (in progress).
#![no_std]
