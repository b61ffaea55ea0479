//! Each logged-in connection's one task, whatever its protocol version: it reads packets,
//! hands publishes to the connection core, answers them in the order they came, answers the
//! other packets, and writes the server-to-device messages of the connection's outbound channel
//! ([`writer`](super::writer)). The version adapters (`v3.rs`, `v5.rs`) turn packets into
//! [`Event`]s and answers into packets ([`Protocol`]).
//!
//! Bounds: at most `receive_maximum` publishes are being handled at once; past that the socket
//! is not read. Nor is it while ntex's write buffer is over its high-water mark (a peer that
//! does not read its acknowledgements stops being read). A PUBLISH's payload is at most the
//! codec's frame limit, `mqtt.max_payload_size` plus 64 KiB.

use std::future::{Future, poll_fn};
use std::num::NonZeroU16;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actors::session::outbound::{CloseReason, OutboundReceiver};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use ntex::io::Io;
use ntex::time::Seconds;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::QoS;

use super::core::{Connection, Fault, Published};
use super::topics::FilterRefusal;
use super::writer::{self, Credit, Wire};

/// A packet from the device, in version-neutral terms.
#[derive(Debug)]
pub(super) enum Event {
    Publish {
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        id: Option<NonZeroU16>,
    },
    /// PUBACK of a QoS 1 downlink.
    Acked(NonZeroU16),
    /// PUBREL of a QoS 2 publish.
    Released(NonZeroU16),
    Subscribe(NonZeroU16, Vec<(ByteString, QoS)>),
    Unsubscribe(NonZeroU16, Vec<ByteString>),
    Ping,
    Disconnect,
}

/// Why no event could be read.
#[derive(Debug)]
pub(super) enum Unread {
    /// The peer closed the connection (or it broke).
    PeerGone,
    /// The connection's timer fired (see [`serve`] for what it means).
    Timer,
    /// ntex's write buffer is over its high-water mark.
    Backpressure,
    Fault(Fault),
}

/// Why the server says goodbye.
#[derive(Clone, Copy, Debug)]
pub(super) enum Goodbye<'a> {
    Fault(&'a Fault),
    Close(CloseReason),
}

/// A protocol version's packets.
pub(super) trait Protocol: Wire + 'static {
    /// The next event in the read buffer; `Pending` registers the task for more bytes.
    fn poll_event(&mut self, io: &Io, cx: &mut Context<'_>) -> Poll<Result<Event, Unread>>;
    /// Answers PUBLISH `id` of `qos` (PUBACK, PUBREC) or, at QoS 0, refuses it the only way
    /// the version can; `Err` closes the connection.
    fn answer(
        &self,
        io: &Io,
        qos: QoS,
        id: Option<NonZeroU16>,
        published: Published,
    ) -> Result<(), Fault>;
    /// PUBCOMP.
    fn complete(&self, io: &Io, id: NonZeroU16);
    fn suback(&self, io: &Io, id: NonZeroU16, granted: &[Result<QoS, FilterRefusal>]);
    fn unsuback(&self, io: &Io, id: NonZeroU16, had: &[bool]);
    fn pong(&self, io: &Io);
    /// Tells the peer why the server closes the connection, where the version can.
    fn goodbye(&self, io: &Io, why: Goodbye<'_>);
}

/// A connection's limits, from CONNECT and the configuration.
pub(super) struct Limits {
    /// One and a half keep-alive periods; zero for none.
    pub(super) keep_alive: Seconds,
    /// Publishes handled at once at most.
    pub(super) receive_maximum: usize,
    /// QoS 1 downlinks unacknowledged at most.
    pub(super) send_maximum: usize,
    /// `mqtt.write_timeout`: how long what is written to the peer may stay unread (ntex's
    /// write buffer over its high-water mark the whole time) before the peer is taken for gone
    /// and the connection closed, as EMQX's `send_timeout` does. A peer that vanished without
    /// a word (reset, cable cut) is found so even while its connection is not being read
    /// (publishes waiting for room in its channel).
    pub(super) write_timeout: Duration,
}

/// How long a connection that ends waits for the publishes it received to be handed over.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// How long a closing connection may take to flush what it has to say.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// A publish being handled.
type Op = Pin<Box<dyn Future<Output = Done>>>;

/// A publish handled: the answer it is owed.
struct Done {
    qos: QoS,
    id: Option<NonZeroU16>,
    result: Result<Published, Fault>,
}

/// How the loop ended.
enum End {
    /// The peer said DISCONNECT or went away.
    Peer,
    /// The connection's channel asked to close it (a newer session took over).
    Close(CloseReason),
    Fault(Fault),
}

/// Serves a logged-in connection until it ends.
pub(super) async fn serve<P: Protocol>(
    mut proto: P,
    io: &Io,
    connection: Rc<Connection>,
    outbound: OutboundReceiver,
    limits: &Limits,
) {
    let mut ops: FuturesOrdered<Op> = FuturesOrdered::new();
    let mut credit = Credit::new(limits.send_maximum);
    let mut reading = true;
    // The keep-alive timer runs from the moment the read buffer is found empty; a packet read
    // since then disarms it (its firing is then ignored, and it is started again the next
    // time the buffer is empty).
    let mut armed = false;
    // Runs while downlinks wait and the peer takes none of them: it neither reads what is
    // written (write back-pressure) nor acknowledges QoS 1 ones (credit used up). Started
    // again at each sign of progress (a downlink written, a PUBACK).
    let mut write_stall: Option<Pin<Box<ntex::time::Sleep>>> = None;
    let mut progressed = false;
    let end = poll_fn(|cx| {
        loop {
            let mut again = false;
            // Answers, in the order the publishes came.
            while let Poll::Ready(Some(done)) = ops.poll_next_unpin(cx) {
                if let Err(fault) = settle(&proto, io, done) {
                    return Poll::Ready(End::Fault(fault));
                }
            }
            // Server-to-device messages.
            if let Poll::Ready(reason) =
                writer::poll_write(&proto, io, &outbound, &mut credit, &mut progressed, cx)
            {
                return Poll::Ready(match reason {
                    CloseReason::PeerGone => End::Peer,
                    reason => End::Close(reason),
                });
            }
            if io.is_wr_backpressure() || outbound.next_qos().is_some() {
                if std::mem::take(&mut progressed) || write_stall.is_none() {
                    write_stall = Some(Box::pin(ntex::time::sleep(limits.write_timeout)));
                }
                if let Some(stall) = &mut write_stall
                    && stall.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(End::Fault(Fault::WriteStalled));
                }
            } else {
                progressed = false;
                write_stall = None;
            }
            if !reading {
                return Poll::Ready(End::Peer);
            }
            if ops.len() >= limits.receive_maximum {
                // Not reading is not the peer's silence.
                armed = false;
                return Poll::Pending;
            }
            match proto.poll_event(io, cx) {
                Poll::Ready(Ok(event)) => {
                    armed = false;
                    again = true;
                    match event {
                        Event::Publish {
                            topic,
                            payload,
                            qos,
                            id,
                        } => {
                            let connection = connection.clone();
                            let mut op: Op = Box::pin(async move {
                                let result = connection.publish(&topic, payload).await;
                                Done { qos, id, result }
                            });
                            // Most publishes are handed over at once: answered here, unless
                            // an earlier one still waits (answers keep the publishes' order).
                            if ops.is_empty()
                                && let Poll::Ready(done) = op.as_mut().poll(cx)
                            {
                                if let Err(fault) = settle(&proto, io, done) {
                                    return Poll::Ready(End::Fault(fault));
                                }
                                continue;
                            }
                            ops.push_back(op);
                        }
                        Event::Acked(id) => {
                            progressed |= credit.release(id);
                        }
                        Event::Released(id) => proto.complete(io, id),
                        Event::Subscribe(id, filters) => {
                            let granted: Vec<_> = filters
                                .iter()
                                .map(|(filter, qos)| connection.subscribe(filter, *qos))
                                .collect();
                            proto.suback(io, id, &granted);
                        }
                        Event::Unsubscribe(id, filters) => {
                            let had: Vec<_> = filters
                                .iter()
                                .map(|filter| connection.unsubscribe(filter))
                                .collect();
                            proto.unsuback(io, id, &had);
                        }
                        Event::Ping => {
                            connection.ping(ops.is_empty());
                            proto.pong(io);
                        }
                        Event::Disconnect => reading = false,
                    }
                }
                Poll::Ready(Err(Unread::Timer)) => {
                    if armed {
                        return Poll::Ready(End::Fault(Fault::KeepAlive));
                    }
                    again = true;
                }
                Poll::Ready(Err(Unread::Backpressure)) => match io.poll_flush(cx, false) {
                    Poll::Ready(Ok(())) => again = true,
                    Poll::Ready(Err(_)) => {
                        reading = false;
                        again = true;
                    }
                    Poll::Pending => {}
                },
                Poll::Ready(Err(Unread::PeerGone)) => {
                    reading = false;
                    again = true;
                }
                Poll::Ready(Err(Unread::Fault(fault))) => return Poll::Ready(End::Fault(fault)),
                Poll::Pending => {
                    if !armed && !limits.keep_alive.is_zero() {
                        io.start_timer(limits.keep_alive);
                        armed = true;
                    }
                }
            }
            if !again {
                return Poll::Pending;
            }
        }
    })
    .await;
    io.stop_timer();
    match &end {
        End::Fault(fault) => proto.goodbye(io, Goodbye::Fault(fault)),
        End::Close(reason) => proto.goodbye(io, Goodbye::Close(*reason)),
        End::Peer => {}
    }
    // What the device sent before it went is still handed over (a QoS 0 message sent right
    // before DISCONNECT, as `mosquitto_pub -m` does, must be stored); nobody waits for the
    // answers.
    if !ops.is_empty() {
        let _ =
            ntex::time::timeout(SETTLE_LIMIT, async { while ops.next().await.is_some() {} }).await;
    }
    connection.ended(match &end {
        End::Fault(fault) => Some(fault),
        _ => None,
    });
    drop(outbound);
    let _ = ntex::time::timeout(FLUSH_LIMIT, io.shutdown()).await;
}

/// Sends the answer a handled publish is owed; `Err` closes the connection.
fn settle<P: Protocol>(proto: &P, io: &Io, done: Done) -> Result<(), Fault> {
    let published = done.result?;
    proto.answer(io, done.qos, done.id, published)
}

/// The listener's settings every connection shares.
pub(super) struct Settings {
    /// The codec's frame limit: `mqtt.max_payload_size` plus 64 KiB, so a payload a little over
    /// the limit is read and refused with the protocol's own answer.
    pub(super) max_frame: u32,
    /// How long the CONNECT may take to arrive whole.
    pub(super) connect_timeout: Duration,
    /// `mqtt.receive_maximum`.
    pub(super) receive_maximum: u16,
    /// `mqtt.write_timeout`.
    pub(super) write_timeout: Duration,
}

/// QoS 1 downlinks a connection may have unacknowledged, at most (ntex-mqtt's default, and what
/// MQTT 3.1.1 clients, which cannot say, are given).
pub(super) const SEND_MAXIMUM: u16 = 16;

/// One and a half keep-alive periods [MQTT-3.1.2-24]; zero (none) for a keep-alive of zero.
pub(super) fn keep_alive(seconds: u16) -> Seconds {
    Seconds((seconds >> 1).saturating_add(seconds))
}

/// What a read error means.
pub(super) fn unread<U>(error: ntex::io::RecvError<U>) -> Unread
where
    U: ntex::codec::Decoder<Error = ntex_mqtt::error::DecodeError>,
{
    match error {
        ntex::io::RecvError::KeepAlive => Unread::Timer,
        ntex::io::RecvError::WriteBackpressure => Unread::Backpressure,
        ntex::io::RecvError::Decoder(e) => Unread::Fault(decode_fault(e)),
        ntex::io::RecvError::PeerGone(_) => Unread::PeerGone,
    }
}

pub(super) fn decode_fault(error: ntex_mqtt::error::DecodeError) -> Fault {
    match error {
        ntex_mqtt::error::DecodeError::MaxSizeExceeded { .. } => Fault::TooLarge,
        e => Fault::Malformed(e.to_string()),
    }
}

/// Reads the CONNECT (the listener saw its first bytes), within the connect timeout; `None`
/// when it did not come whole, in time, or well-formed (counted).
pub(super) async fn read_connect<U, C>(
    io: &Io,
    codec: &U,
    timeout: Duration,
    connect: impl FnOnce(U::Item) -> Option<C>,
) -> Option<C>
where
    U: ntex::codec::Decoder<Error = ntex_mqtt::error::DecodeError>,
{
    match ntex::time::timeout(timeout, io.recv(codec)).await {
        Ok(Ok(Some(item))) => connect(item),
        Ok(Err(ntex::util::Either::Left(e))) => {
            let fault = decode_fault(e);
            if let Some(label) = fault.protocol_label() {
                metrics::counter!(actors::metrics::MQTT_PROTOCOL_ERRORS, "reason" => label)
                    .increment(1);
            }
            super::peer_log::peer_event!(
                DEBUG,
                ?fault,
                "mqtt connect unreadable, connection closed"
            );
            None
        }
        Err(()) => {
            metrics::counter!(actors::metrics::MQTT_PROTOCOL_ERRORS, "reason" => "timeout")
                .increment(1);
            super::peer_log::peer_event!(
                DEBUG,
                "mqtt connect not complete in time, connection closed"
            );
            None
        }
        Ok(Ok(None) | Err(ntex::util::Either::Right(_))) => None,
    }
}

/// Sends a refusal (a CONNACK that refuses) and closes.
pub(super) async fn refuse(io: &Io) {
    let _ = ntex::time::timeout(FLUSH_LIMIT, io.shutdown()).await;
}
