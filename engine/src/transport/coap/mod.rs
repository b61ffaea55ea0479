//! The CoAP integration endpoint (RFC 7252, coap-lite's codec on a tokio UDP socket): devices
//! POST or PUT to `coap://host[:port]/[path/]i/{routingKey}`.
//!
//! - Confirmable requests get a piggybacked ACK carrying the response; non-confirmable ones
//!   get a non-confirmable response.
//! - Errors as ThingsBoard's troubleshooting table has them: another method 4.05, an unknown
//!   routing key 4.04, an empty or malformed payload 4.00, a converter error 4.00 with the
//!   reason as diagnostic payload (cut to fit one datagram); overload 5.03 with `Max-Age` (a
//!   non-confirmable request is dropped and counted instead).
//! - RFC 7252's own rules: other versions are ignored, a ping or a confirmable message that
//!   cannot be processed gets a Reset, an unrecognised critical option or an option of the wrong
//!   length 4.02, a proxy request 5.05.
//! - A retransmitted confirmable request (same message id from the same peer within the
//!   exchange lifetime) is answered from a bounded cache, never processed twice; every
//!   exchange gets an answer, if need be a bare 5.00.
//! - Block-wise uploads (Block1, RFC 7959) are assembled up to the integration payload limit,
//!   bounded in number, per peer and in bytes.
//! - Plain CoAP only: there is no DTLS endpoint.
//!
//! `message` reads and writes datagrams, `metadata` names a request's options for its converter,
//! `exchange` and `block` hold the endpoint's bounded state, `decide` makes every decision without a socket; this file only moves datagrams between
//! the socket, the core and the integrations.

mod block;
pub mod decide;
mod exchange;
pub mod message;
mod metadata;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actors::integration::{IntegrationKind, Integrations};
use anyhow::Context;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::debug;

use self::decide::{Core, Limits, Pending, Step, Uplink};
use crate::config::CoapConfig;

pub use self::decide::answer;

/// Largest datagram read; CoAP over UDP stays well below it.
const MAX_DATAGRAM: usize = 65_535;

pub struct CoapServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CoapServer {
    /// `max_payload`: the integrations' payload limit, which bounds Block1 assembly too.
    pub async fn start(
        config: &CoapConfig,
        max_payload: usize,
        hub: Arc<Integrations>,
    ) -> anyhow::Result<CoapServer> {
        let socket = UdpSocket::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen for CoAP on {}", config.bind))?;
        let addr = socket.local_addr()?;
        let endpoint = Arc::new(Endpoint {
            socket: Arc::new(socket),
            hub,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            core: Mutex::new(Core::new(Limits::new(config, max_payload), addr)),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(endpoint.serve(stopped));
        Ok(CoapServer { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops reading requests; requests already taken finish on their own.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Endpoint {
    socket: Arc<UdpSocket>,
    hub: Arc<Integrations>,
    /// Uplinks being converted or enqueued: `coap.max_in_flight`.
    in_flight: Arc<Semaphore>,
    core: Mutex<Core>,
}

impl Endpoint {
    async fn serve(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                _ = stopped.changed() => return,
                r = self.socket.recv_from(&mut buf) => r,
            };
            let (n, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    // E.g. an ICMP "port unreachable" of an earlier answer: not fatal, and a
                    // peer can cause it.
                    if self.core.lock().may_log() {
                        debug!(error = %e, "coap receive failed");
                    }
                    continue;
                }
            };
            let permit = self.in_flight.clone().try_acquire_owned().ok();
            let step = self
                .core
                .lock()
                .datagram(&buf[..n], peer, Instant::now(), permit.is_some());
            match (step, permit) {
                (Step::Silent, _) => {}
                (Step::Reply(bytes), _) => self.send(&bytes, peer).await,
                (Step::Uplink(uplink), Some(permit)) => {
                    tokio::spawn(self.clone().uplink(uplink, permit));
                }
                // The core hands out uplinks only when there is room; should it not, the
                // exchange still gets an answer.
                (Step::Uplink(uplink), None) => {
                    let bytes = self.core.lock().fail(uplink.exchange);
                    self.send(&bytes, peer).await;
                }
            }
        }
    }

    /// Runs one uplink and sends its answer; the answer is kept for retransmissions even when
    /// the task dies on the way (see `Unanswered`).
    async fn uplink(self: Arc<Self>, uplink: Uplink, permit: OwnedSemaphorePermit) {
        let Uplink {
            routing_key,
            payload,
            metadata,
            exchange,
        } = uplink;
        let peer = exchange.peer();
        let mut guard = Unanswered {
            endpoint: self.clone(),
            exchange: Some(exchange),
        };
        let outcome = self
            .hub
            .uplink(IntegrationKind::Coap, &routing_key, payload, metadata)
            .await
            .map(drop);
        drop(permit);
        let Some(exchange) = guard.exchange.take() else {
            return;
        };
        let bytes = self.core.lock().finish(exchange, outcome);
        self.send(&bytes, peer).await;
    }

    async fn send(&self, bytes: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, peer).await
            && self.core.lock().may_log()
        {
            debug!(%peer, error = %e, "coap answer not sent");
        }
    }
}

/// An uplink whose task ends without answering (a panic, a runtime shutting down) still answers
/// its exchange: 5.00, kept for retransmissions, sent without waiting.
struct Unanswered {
    endpoint: Arc<Endpoint>,
    exchange: Option<Pending>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            let peer = exchange.peer();
            let bytes = self.endpoint.core.lock().fail(exchange);
            let _ = self.endpoint.socket.try_send_to(&bytes, peer);
        }
    }
}
