//! Device transports: MQTT (ntex-mqtt) and the HTTP device API (actix-web).

pub mod http;
pub mod mqtt;
