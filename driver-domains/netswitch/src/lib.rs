//! The net driver domain's switch (work in progress).
#![no_std]
#![forbid(unsafe_code)]
