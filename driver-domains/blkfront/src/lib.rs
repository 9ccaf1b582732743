//! Platform-independent blkif frontend engine (work in progress).
#![no_std]
#![forbid(unsafe_code)]
