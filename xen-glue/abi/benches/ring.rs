//! Placeholder until the ring benchmark lands.
fn main() {}
