//! Audio DSP for the media driver domain: format conversion, resampling, mixing, ducking (work in progress).
#![no_std]
#![forbid(unsafe_code)]
