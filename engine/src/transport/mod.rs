//! Device transports: MQTT (ntex-mqtt), the HTTP device API (actix-web), and the integration
//! endpoints: CoAP (coap-lite on UDP) and HTTP.

pub mod coap;
pub mod http;
pub mod http_integration;
pub mod http_server;
pub mod mqtt;
