//! Fuzz entry points (placeholder).

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// `(name, entry point)` of every target.
pub const TARGETS: &[(&str, Target)] = &[];
