//! Platform-independent sndif backend engine: streams, requests, events (work in progress).
#![no_std]
#![forbid(unsafe_code)]
