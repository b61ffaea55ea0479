//! The `engine` binary.
mod config;
mod queue;
mod store;
fn main() {}
