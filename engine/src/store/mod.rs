//! Storage backends behind the `Store` and `DeviceRegistry` ports. Every backend passes the
//! shared contract suite in `contract`.

pub mod embedded;

#[cfg(test)]
pub mod contract;
