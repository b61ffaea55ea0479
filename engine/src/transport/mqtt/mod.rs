//! ThingsBoard's MQTT device API: MQTT 3.1.1 and 5 on one listener, on ntex's I/O with
//! ntex-mqtt's codecs and our own per-connection dispatcher.
//!
//! - `opening.rs`: a peek at each connection's first bytes: a CONNECT of a protocol level other
//!   than 4 or 5 gets CONNACK 0x01, one past `max_connections` 0x03 (MQTT 5: 0x97); levels 4
//!   and 5 go to that version's adapter.
//! - `admission.rs`: the sockets open and each device's sessions; a session past
//!   `max_connections_per_device` takes over from the device's oldest (ThingsBoard's
//!   behaviour).
//! - `core.rs`: the version-neutral connection: login (the access token is CONNECT's
//!   username), publish, subscribe and unsubscribe (granted filters kept per connection), ping,
//!   disconnect, publishes in flight.
//! - `dispatch.rs`: each logged-in connection's one task: reads packets, hands publishes to the
//!   core and answers them in order, answers the rest, writes the downlinks.
//! - `v3.rs`, `v5.rs`: the adapters: CONNECT and CONNACK, packets to the dispatcher's events,
//!   the core's outcomes to each version's answers and reason codes.
//! - `writer.rs`: the writing side, draining the connection's bounded outbound channel (where
//!   every server-to-device message enters) while the peer can take packets.
//! - `topics.rs`: topics and filters as plain functions: uplink and downlink kinds, topic
//!   names the protocol forbids, the filters served, MQTT filter matching.
//! - `provisioning.rs`: the provision-only session (username or client id `provision`).
//! - `peer_log.rs`: one rate limit for the log lines peers can trigger.
//!
//! PUBLISH to `v1/devices/me/telemetry` or `v1/devices/me/attributes` is acknowledged only once
//! the queue has the message; at most `receive_maximum` are in flight per connection, past
//! which the socket is not read. A bad payload closes an MQTT 3.1.1 connection (ThingsBoard's
//! behaviour) and gets an MQTT 5 PUBACK with reason 0x99 (0x97 when too large). A second
//! CONNECT, a PUBLISH topic that is empty, holds U+0000 or a wildcard close the connection (MQTT
//! 5 with the DISCONNECT reason the spec names).
//!
//! ntex runs its own runtime, so the server lives on its own thread with an ntex `System`.
//! Why our own dispatcher rather than ntex-mqtt's server: ARCHITECTURE.md, "The MQTT front".

mod admission;
mod core;
mod dispatch;
mod gateway;
pub use gateway::DeviceBudget;
mod opening;
mod peer_log;
mod provisioning;
pub mod topics;
mod v3;
mod v5;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use actors::model::DeviceId;
use actors::session::Outbound;
use actors::session::outbound::OutboundMeters;
use ntex::io::Io;
use ntex::service::cfg::SharedCfg;
use ntex::service::{Service, ServiceCtx, ServiceFactory};
use tracing::{info, warn};

use self::admission::{Admission, connection_cap, socket_budget};
use self::core::Node;
pub use self::core::{Connection, Fault, MqttContext};
use self::dispatch::Settings;
use self::opening::first_bytes;
pub use self::opening::{Opening, Version, opening};
pub use self::topics::{ATTRIBUTES_TOPIC, DownlinkTopic, TELEMETRY_TOPIC, uplink_of};
use crate::config::{MqttConfig, bytes};

/// ntex's per-connection buffers. A busy connection holds a read buffer and a write buffer of
/// up to `mqtt.io_buffer_size` each; the write buffer's high-water mark is also where a
/// connection whose peer does not read stops taking server-to-device messages (its writer
/// waits, its outbound channel fills). An idle connection returns its empty read buffer to a
/// per-thread cache and keeps at most its write buffer's last page, with its spare room for
/// the next write: pages of 4 KiB (ntex's default is 16) bound that; a busy connection chains
/// pages into one vectored write, so throughput does not depend on their size.
fn io_config(config: &MqttConfig) -> ntex::io::IoConfig {
    let high = usize::try_from(config.io_buffer_size.as_u64()).unwrap_or(usize::MAX);
    let low = (high / 32).max(64);
    ntex::io::IoConfig::new()
        .set_read_buf(high, low, IO_BUFFER_CACHE)
        .set_write_buf(high, low, IO_BUFFER_CACHE)
        .set_write_page_size(ntex::util::BytePageSize::Size4)
}

/// Empty buffers each network thread keeps for the next busy connection.
const IO_BUFFER_CACHE: usize = 128;

/// Each connection: its first bytes ([`first_bytes`]), then the adapter of the version they
/// name.
struct Listener {
    node: Arc<Node>,
}

impl ServiceFactory<Io, SharedCfg> for Listener {
    type Response = ();
    type Error = ();
    type Service = Listener;
    type InitError = ();

    async fn create(&self, _: SharedCfg) -> Result<Listener, ()> {
        Ok(Listener {
            node: self.node.clone(),
        })
    }
}

impl Service<Io> for Listener {
    type Response = ();
    type Error = ();

    async fn call(&self, io: Io, _: ServiceCtx<'_, Self>) -> Result<(), ()> {
        let node = &self.node;
        let socket = node.admission.accept();
        let timeout = node.settings.connect_timeout;
        // Boxed: it lives only until the first packet.
        let version = Box::pin(first_bytes(&io, socket.past_cap, timeout)).await;
        // Each version's connection future is boxed on its own, so an MQTT 3.1.1 connection
        // does not keep room for MQTT 5's larger one.
        match version {
            None => {}
            Some(Version::V3) => Box::pin(v3::run(node.clone(), &io)).await,
            Some(Version::V5) => Box::pin(v5::run(node.clone(), &io)).await,
        }
        drop(socket);
        Ok(())
    }
}

pub struct MqttServer {
    server: ntex::server::Server,
    thread: Option<JoinHandle<()>>,
    admission: Arc<Admission>,
}

impl MqttServer {
    /// Starts serving on `listener` (already bound, so tests can use port 0).
    pub fn start(
        listener: TcpListener,
        config: &MqttConfig,
        ctx: Arc<MqttContext>,
    ) -> io::Result<MqttServer> {
        let workers = if config.workers == 0 {
            num_cpus()
        } else {
            config.workers
        };
        let max_payload = u32::try_from(bytes(config.max_payload_size)).unwrap_or(u32::MAX);
        // Frames a little over the payload limit are read so the uplink path can refuse them
        // with the protocol's own answer; anything bigger is a protocol error.
        let settings = Settings {
            max_frame: max_payload.saturating_add(64 * 1024),
            connect_timeout: config.connect_timeout,
            receive_maximum: config.receive_maximum.max(1),
            write_timeout: config.write_timeout,
        };
        let grace = ntex::time::Millis(
            u32::try_from(config.shutdown_grace.as_millis()).unwrap_or(u32::MAX),
        );
        // Every socket is a descriptor: past the budget the listener stops accepting (the
        // kernel's backlog holds newcomers); below it, `max_connections` refuses with CONNACK,
        // and a sixteenth of the budget stays free to answer those refusals.
        let open_files = rlimit::Resource::NOFILE
            .get()
            .map_or(u64::MAX, |(soft, _)| soft);
        let budget = socket_budget(open_files, config.open_files_reserve);
        let max_connections = connection_cap(config.max_connections, budget);
        if max_connections < config.max_connections {
            warn!(
                configured = config.max_connections,
                open_files,
                reserve = config.open_files_reserve,
                max_connections,
                "mqtt.max_connections lowered to fit the open-files limit"
            );
        }
        let admission = Arc::new(Admission::new(
            max_connections,
            config.max_connections_per_device,
        ));
        let node = Arc::new(Node {
            ctx,
            admission: admission.clone(),
            meters: OutboundMeters::new(),
            settings,
        });
        let io_cfg = io_config(config);
        let per_worker = budget.div_ceil(workers.max(1));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                let system = ntex::rt::System::build()
                    .name("mqtt")
                    .disable_signals()
                    .build(ntex::rt::DefaultRuntime);
                system.block_on(async move {
                    let built = ntex::server::build()
                        .workers(workers)
                        .maxconn(per_worker)
                        .disable_signals()
                        .shutdown_timeout(grace)
                        .listen("mqtt", listener, move |_| {
                            let node = node.clone();
                            async move { Listener { node } }
                        });
                    match built {
                        Ok(builder) => {
                            let server = builder
                                .config("mqtt", SharedCfg::new("MQTT").add(io_cfg))
                                .run();
                            let _ = tx.send(Ok(server.clone()));
                            let _ = server.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let server = rx
            .recv()
            .map_err(|_| io::Error::other("mqtt server thread died at start"))??;
        info!(
            workers,
            max_connections,
            per_device = config.max_connections_per_device,
            "mqtt server started"
        );
        Ok(MqttServer {
            server,
            thread: Some(thread),
            admission,
        })
    }

    /// The way back to `device`'s newest connection on this node, if it is connected: where a
    /// server-to-device message for it enters.
    pub fn outbound(&self, device: DeviceId) -> Option<Outbound> {
        self.admission.newest(device)
    }

    /// This node's MQTT sessions of devices, to end those of a deleted device.
    pub fn sessions(&self) -> Arc<dyn actors::ports::DeviceSessions> {
        self.admission.clone()
    }

    /// Stops accepting, gives open connections the grace period, closes them, and returns once
    /// the server thread ended.
    pub async fn stop(mut self) {
        self.server.stop(true).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
