//! The domain and its actors: the model, ThingsBoard's payload formats, the ports the actors
//! talk through, and the actors themselves (device session, session supervisor, rule chain,
//! sink). No
//! network or database code lives here; `engine` provides the adapters.

pub mod batch;
pub mod converter;
pub mod device_keys;
pub mod directory;
pub mod downlink;
pub mod ingress;
pub mod integration;
pub mod lenient;
pub mod live;
pub mod log_limit;
pub mod mailbox;
pub mod metrics;
pub mod model;
pub mod payload;
pub mod ports;
pub mod protocol;
pub mod rule_chain;
pub mod rule_chain_supervisor;
pub mod session;
pub mod sink;
pub mod sink_feed;
pub mod sink_supervisor;
#[cfg(test)]
mod test_metrics;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
