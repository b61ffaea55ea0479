//! Storage backends behind the `Store` and `DeviceRegistry` ports. Every backend passes the
//! shared contract suite in `contract`.

pub mod clickhouse;
pub mod embedded;
pub mod registry;

#[cfg(test)]
pub mod contract;
