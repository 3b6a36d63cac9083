//! Guest heaps (in progress).
#![no_std]
