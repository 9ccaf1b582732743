//! Platform-independent blkif backend engine (work in progress).
#![no_std]
#![forbid(unsafe_code)]
