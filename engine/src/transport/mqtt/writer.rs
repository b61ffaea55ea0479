//! The connection's writer: the one task that owns ntex-mqtt's sink (an `Rc`, so it stays on the
//! connection's thread) and drains the connection's bounded outbound channel into it.
//!
//! Anything that sends to the device, from any thread, holds an [`Outbound`] clone; only this
//! task touches the sink. Before taking a message it waits until the peer can take a packet:
//! the client's Receive Maximum has room (QoS 1 in flight) and ntex's write buffer is below its
//! high-water mark (a device that does not read fills the socket, then that buffer). While it
//! waits, messages stay in the channel, which fills, and its producers wait. The engine thus
//! holds, per connection, at most the channel's capacity plus one write buffer.
//!
//! The writer ends when asked to close the connection (session take-over), when the peer is
//! gone, or when the connection ends ([`WriterGuard`] dropped).
//!
//! [`Outbound`]: actors::session::Outbound

use actors::session::outbound::{CloseReason, Downlink, DownlinkQos, OutboundReceiver, Pending};
use ntex::io::IoRef;
use ntex::util::Bytes;
use ntex_mqtt::{v3, v5};

/// What the writer needs from a connection's sink, one implementation per protocol version.
pub(super) trait Wire: 'static {
    /// Whether the peer can take a packet now (QoS 1 credit, the write buffer under its
    /// high-water mark).
    fn is_ready(&self) -> bool;
    /// Waits until the peer may take a packet; `false` once the connection is gone. Either
    /// condition clearing wakes this, so check [`Wire::is_ready`] again.
    fn ready(&self) -> impl Future<Output = bool>;
    /// Writes one PUBLISH; `false` if the connection could not take it.
    fn publish(&self, downlink: Downlink) -> bool;
    fn close(&self, reason: CloseReason);
}

/// A connection's sink, with its I/O handle: ntex flags the write buffer's high-water mark on
/// the I/O at once, and tells the sink only when the connection's dispatcher next runs.
pub(super) struct Sink<S> {
    sink: S,
    io: IoRef,
}

impl<S> Sink<S> {
    pub(super) fn new(sink: S, io: IoRef) -> Self {
        Sink { sink, io }
    }
}

/// Gives the other tasks of this thread (the connection's dispatcher) one turn.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

impl Wire for Sink<v3::MqttSink> {
    fn is_ready(&self) -> bool {
        self.sink.is_ready() && !self.io.is_wr_backpressure()
    }

    async fn ready(&self) -> bool {
        if self.sink.is_ready() {
            // Only the I/O knows yet: let the dispatcher pass it on to the sink.
            yield_once().await;
            return self.sink.is_open();
        }
        self.sink.ready().await
    }

    fn publish(&self, downlink: Downlink) -> bool {
        let payload = Bytes::from(downlink.payload);
        let publish = self.sink.publish(downlink.topic);
        match downlink.qos {
            DownlinkQos::AtMostOnce => publish.send_at_most_once(payload).is_ok(),
            // `is_ready` made sure there is credit; the device's PUBACK frees it.
            DownlinkQos::AtLeastOnce => publish.send_at_least_once_no_block(payload).is_ok(),
        }
    }

    /// MQTT 3.1.1 has no way to say why: the connection is closed.
    fn close(&self, _reason: CloseReason) {
        self.sink.close();
    }
}

impl Wire for Sink<v5::MqttSink> {
    fn is_ready(&self) -> bool {
        self.sink.is_ready() && !self.io.is_wr_backpressure()
    }

    async fn ready(&self) -> bool {
        if self.sink.is_ready() {
            yield_once().await;
            return self.sink.is_open();
        }
        self.sink.ready().await
    }

    fn publish(&self, downlink: Downlink) -> bool {
        let payload = Bytes::from(downlink.payload);
        let publish = self.sink.publish(downlink.topic);
        match downlink.qos {
            DownlinkQos::AtMostOnce => publish.send_at_most_once(payload).is_ok(),
            DownlinkQos::AtLeastOnce => publish.send_at_least_once_no_block(payload).is_ok(),
        }
    }

    fn close(&self, reason: CloseReason) {
        self.sink
            .close_with_reason(v5::codec::Disconnect::new(super::v5::close_reason(reason)));
    }
}

/// Starts the writer of a connection on the current (the connection's) thread.
pub(super) fn spawn<W: Wire>(wire: W, outbound: OutboundReceiver) {
    ntex::rt::spawn(run(wire, outbound));
}

/// Set up QoS 1 downlinks: they are sent without waiting for their PUBACK (the writer goes on
/// with the next message); the client's Receive Maximum still bounds how many are unanswered.
pub(super) fn v3_acks(sink: &v3::MqttSink) {
    sink.publish_ack_cb(|_, _| {});
}

pub(super) fn v5_acks(sink: &v5::MqttSink) {
    sink.publish_ack_cb(|_, _| {});
}

/// Drains `outbound` into `wire` until the connection closes.
pub(super) async fn run<W: Wire>(wire: W, outbound: OutboundReceiver) {
    loop {
        match outbound.wait().await {
            Pending::Close(reason) => {
                wire.close(reason);
                return;
            }
            Pending::Ended => return,
            Pending::Message => {
                if !wire.is_ready() {
                    outbound.stalled(true);
                    let mut open = true;
                    while open && !wire.is_ready() {
                        open = wire.ready().await;
                    }
                    outbound.stalled(false);
                    if !open {
                        // The peer is gone; dropping the receiver drops (and counts) the rest.
                        return;
                    }
                }
                let Some(downlink) = outbound.take() else {
                    continue;
                };
                if wire.publish(downlink) {
                    outbound.written();
                } else {
                    outbound.dropped();
                }
            }
        }
    }
}

/// Ends the connection's writer when dropped (the connection ended), whatever it was waiting for.
pub(super) struct WriterGuard(pub(super) actors::session::Outbound);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use actors::session::outbound::{self, OutboundMeters, SendError};
    use futures::FutureExt;

    use super::*;

    /// A sink whose readiness the test sets: not ready is a device that stopped reading.
    #[derive(Clone, Default)]
    struct FakeWire {
        readable: Rc<Cell<bool>>,
        ready: Rc<tokio::sync::Notify>,
        written: Rc<RefCell<Vec<String>>>,
        closed: Rc<Cell<Option<CloseReason>>>,
    }

    impl Wire for FakeWire {
        fn is_ready(&self) -> bool {
            self.readable.get()
        }

        async fn ready(&self) -> bool {
            self.ready.notified().await;
            true
        }

        fn publish(&self, downlink: Downlink) -> bool {
            self.written.borrow_mut().push(downlink.topic);
            true
        }

        fn close(&self, reason: CloseReason) {
            self.closed.set(Some(reason));
        }
    }

    fn rpc(n: usize) -> Downlink {
        Downlink {
            topic: format!("v1/devices/me/rpc/request/{n}"),
            payload: vec![0; 1024],
            qos: DownlinkQos::AtLeastOnce,
        }
    }

    /// Runs the writer until it has nothing left it can do.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The writer's bound: with the peer not reading, the writer takes nothing, the channel holds
    /// its capacity and no more, and the next producer waits until the peer reads again.
    #[tokio::test]
    async fn a_peer_that_does_not_read_fills_the_channel_and_its_producer_waits() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let wire = FakeWire::default();
                let (tx, rx) = outbound::channel(4, OutboundMeters::new());
                let writer = tokio::task::spawn_local(run(wire.clone(), rx));
                for n in 0..4 {
                    tx.send(rpc(n)).await.expect("room");
                }
                settle().await;
                assert!(
                    wire.written.borrow().is_empty(),
                    "nothing taken while not ready"
                );
                assert_eq!(tx.len(), 4);
                assert!(matches!(tx.try_send(rpc(4)), Err(SendError::Full(_))));
                assert!(tx.is_stalled(), "the writer waits for the peer");
                let mut fifth = Box::pin(tx.send(rpc(4)));
                assert!((&mut fifth).now_or_never().is_none(), "the producer waits");
                assert_eq!(tx.waiting(), 1);

                wire.readable.set(true);
                wire.ready.notify_one();
                fifth.await.expect("room once the peer reads");
                settle().await;
                assert!(!tx.is_stalled());
                assert_eq!(
                    *wire.written.borrow(),
                    (0..5).map(|n| rpc(n).topic).collect::<Vec<_>>(),
                    "written in order"
                );
                assert!(tx.is_empty());

                tx.close(CloseReason::TakenOver);
                writer.await.expect("the writer ends");
                assert_eq!(wire.closed.get(), Some(CloseReason::TakenOver));
                assert!(tx.is_closed(), "the channel closed with its writer");
            })
            .await;
    }

    #[tokio::test]
    async fn an_ended_connection_stops_its_writer_and_releases_its_producers() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let wire = FakeWire::default();
                let (tx, rx) = outbound::channel(1, OutboundMeters::new());
                let writer = tokio::task::spawn_local(run(wire.clone(), rx));
                settle().await;
                let guard = WriterGuard(tx.clone());
                drop(guard);
                writer.await.expect("the writer ends");
                assert_eq!(wire.closed.get(), None, "nothing to close: it ended");
                assert!(matches!(tx.send(rpc(0)).await, Err(SendError::Closed(_))));
            })
            .await;
    }
}
