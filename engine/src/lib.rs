//! The engine's adapters as a library: the `engine` binary (`main.rs`) is a thin CLI over it,
//! and the fuzz targets (`tests/fuzz`) and benchmarks reach the transports' pure parts through it.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod exporter;
pub mod integrations;
pub mod provision;
pub mod queue;
pub mod store;
pub mod transport;
