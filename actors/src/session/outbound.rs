//! The way from the server to one connected device: a bounded channel whose sending end,
//! [`Outbound`], is `Send` and cloneable (the session actor holds it; anything on any thread may
//! hold a clone), and whose receiving end, [`OutboundReceiver`], belongs to the connection's
//! writer, the one task that owns the transport's sink and writes to the socket.
//!
//! Every server-to-device message enters here. The channel holds at most `capacity` messages:
//! a full channel makes [`Outbound::send`] wait (the wait is measured) and [`Outbound::try_send`]
//! fail, so a device that stops reading its socket holds at most `capacity` messages in the
//! engine, whatever the server wants to send it. Closing the connection is a flag, not a
//! message, so a close never waits behind a full channel.
//!
//! The channel allocates nothing until its first message (a `VecDeque` grows on the first push),
//! so an idle connection pays only for the handle.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

use futures::task::AtomicWaker;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{Semaphore, TryAcquireError};

use crate::metrics::{
    MQTT_OUTBOUND_BLOCKED, MQTT_OUTBOUND_DEPTH, MQTT_OUTBOUND_MESSAGES, MQTT_OUTBOUND_STALLED,
};

/// How a server-to-device PUBLISH is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownlinkQos {
    AtMostOnce,
    AtLeastOnce,
}

/// One server-to-device PUBLISH: an attribute update, an RPC request, a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downlink {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: DownlinkQos,
    /// Told when it is written and when the device acknowledges it (a persistent RPC request);
    /// a downlink dropped before it is written tells nothing.
    pub tracked: Option<Tracked>,
}

/// Told what became of a downlink whose delivery matters.
pub trait DeliveryReport: Send + Sync {
    /// Written to the connection at QoS 1: it waits for the device's PUBACK.
    fn written(&self);
    /// The device acknowledged it (PUBACK); at QoS 0, once written.
    fn acknowledged(&self);
}

/// The [`DeliveryReport`] a downlink carries.
#[derive(Clone)]
pub struct Tracked(pub Arc<dyn DeliveryReport>);

impl PartialEq for Tracked {
    fn eq(&self, other: &Tracked) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Tracked {}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracked")
    }
}

/// Why the server closes a connection (MQTT 5 says it in DISCONNECT; 3.1.1 just closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection of the same device took its place (MQTT 5: 0x8E).
    TakenOver,
    /// The device was deleted or its credentials changed (MQTT 5: 0x98, administrative
    /// action, as ThingsBoard closes it).
    Administrative,
    /// The writer found the peer gone (a write failed): nothing more can be said to it.
    PeerGone,
}

impl CloseReason {
    fn code(self) -> u8 {
        match self {
            CloseReason::TakenOver => 1,
            CloseReason::Administrative => 2,
            CloseReason::PeerGone => 3,
        }
    }

    fn from_code(code: u8) -> Option<CloseReason> {
        match code {
            1 => Some(CloseReason::TakenOver),
            2 => Some(CloseReason::Administrative),
            3 => Some(CloseReason::PeerGone),
            _ => None,
        }
    }
}

/// What the writer is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    Publish(Downlink),
    Close(CloseReason),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SendError {
    /// The connection is gone; the message was not taken.
    #[error("the connection is closed")]
    Closed(Downlink),
    /// The channel holds `capacity` messages (only from [`Outbound::try_send`]).
    #[error("the outbound channel is full")]
    Full(Downlink),
}

/// The sending end; cheap to clone, `Send` and `Sync`.
#[derive(Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
}

/// The writer's end. Dropping it closes the channel: waiting senders get
/// [`SendError::Closed`] and what is still queued is dropped and counted.
pub struct OutboundReceiver {
    shared: Arc<Shared>,
}

/// The channels' metric handles, resolved once per server and shared by every connection's
/// channel: a labelled lookup per connection would cost more than the channel itself.
pub struct OutboundMeters {
    depth: Gauge,
    blocked: Histogram,
    stalled: Gauge,
    written: Counter,
    dropped: Counter,
}

impl OutboundMeters {
    pub fn new() -> Arc<OutboundMeters> {
        Arc::new(OutboundMeters {
            depth: gauge!(MQTT_OUTBOUND_DEPTH),
            blocked: histogram!(MQTT_OUTBOUND_BLOCKED),
            stalled: gauge!(MQTT_OUTBOUND_STALLED),
            written: counter!(MQTT_OUTBOUND_MESSAGES, "outcome" => "written"),
            dropped: counter!(MQTT_OUTBOUND_MESSAGES, "outcome" => "dropped"),
        })
    }
}

struct Shared {
    queue: Mutex<VecDeque<Downlink>>,
    /// One permit per free place; closed when the receiver goes.
    room: Semaphore,
    /// Wakes the writer: a message was queued, a close was asked, or the channel closed.
    wake: AtomicWaker,
    /// 0, or the [`CloseReason`] code asked for.
    close: AtomicU8,
    capacity: usize,
    /// Producers waiting for a place now.
    waiting: AtomicUsize,
    /// The writer waits for the peer to take a packet.
    stalled: AtomicBool,
    meters: Arc<OutboundMeters>,
}

/// A channel of `capacity` messages (at least 1).
pub fn channel(capacity: usize, meters: Arc<OutboundMeters>) -> (Outbound, OutboundReceiver) {
    let capacity = capacity.max(1);
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        room: Semaphore::new(capacity),
        wake: AtomicWaker::new(),
        close: AtomicU8::new(0),
        capacity,
        waiting: AtomicUsize::new(0),
        stalled: AtomicBool::new(false),
        meters,
    });
    (
        Outbound {
            shared: shared.clone(),
        },
        OutboundReceiver { shared },
    )
}

impl Outbound {
    /// Queues `downlink`; waits while the channel is full. Fails only once the connection is
    /// gone.
    pub async fn send(&self, downlink: Downlink) -> Result<(), SendError> {
        let shared = &self.shared;
        match shared.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return Err(shared.refused(downlink)),
            Err(TryAcquireError::NoPermits) => {
                let started = Instant::now();
                shared.waiting.fetch_add(1, Ordering::Relaxed);
                let permit = shared.room.acquire().await;
                shared.waiting.fetch_sub(1, Ordering::Relaxed);
                shared.meters.blocked.record(started.elapsed());
                match permit {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Err(shared.refused(downlink)),
                }
            }
        }
        shared.push(downlink);
        Ok(())
    }

    /// Queues `downlink` if there is room now.
    pub fn try_send(&self, downlink: Downlink) -> Result<(), SendError> {
        match self.shared.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return Err(self.shared.refused(downlink)),
            Err(TryAcquireError::NoPermits) => return Err(SendError::Full(downlink)),
        }
        self.shared.push(downlink);
        Ok(())
    }

    /// Asks the writer to close the connection, ahead of anything queued.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.shared.close.compare_exchange(
            0,
            reason.code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.shared.wake.wake();
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.shared.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Producers waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Whether the writer waits for the peer to take a packet (a device not reading).
    pub fn is_stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::Relaxed)
    }

    /// Whether the connection is gone (the writer dropped its end).
    pub fn is_closed(&self) -> bool {
        self.shared.room.is_closed()
    }
}

impl Shared {
    /// A message the gone connection cannot take: counted as dropped.
    fn refused(&self, downlink: Downlink) -> SendError {
        self.meters.dropped.increment(1);
        SendError::Closed(downlink)
    }

    fn push(&self, downlink: Downlink) {
        self.queue.lock().push_back(downlink);
        self.meters.depth.increment(1.0);
        self.wake.wake();
    }
}

impl OutboundReceiver {
    /// Waits until there is something to do: a close asked for (first), or a message queued.
    /// The message stays queued until [`OutboundReceiver::take`], so the writer can wait for the
    /// socket with the channel still counting it.
    pub async fn wait(&self) -> Pending {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// [`OutboundReceiver::wait`] as a poll: `Pending` registers `cx` to be woken by the next
    /// message or close.
    pub fn poll_wait(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Pending> {
        // Registered before checking, so a push between the check and the return wakes it.
        self.shared.wake.register(cx.waker());
        if let Some(reason) = CloseReason::from_code(self.shared.close.load(Ordering::Acquire)) {
            return std::task::Poll::Ready(Pending::Close(reason));
        }
        if self.shared.queue.lock().is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Pending::Message)
        }
    }

    /// The QoS of the oldest queued message, which [`OutboundReceiver::take`] would take.
    pub fn next_qos(&self) -> Option<DownlinkQos> {
        self.shared
            .queue
            .lock()
            .front()
            .map(|downlink| downlink.qos)
    }

    /// Takes the oldest queued message, freeing its place.
    pub fn take(&self) -> Option<Downlink> {
        let downlink = self.shared.queue.lock().pop_front()?;
        self.shared.meters.depth.decrement(1.0);
        self.shared.room.add_permits(1);
        Some(downlink)
    }

    /// The writer waits for the peer to take a packet (`true`), or no longer does.
    pub fn stalled(&self, stalled: bool) {
        if self.shared.stalled.swap(stalled, Ordering::Relaxed) != stalled {
            if stalled {
                self.shared.meters.stalled.increment(1.0);
            } else {
                self.shared.meters.stalled.decrement(1.0);
            }
        }
    }

    /// Counts a message as written to the connection.
    pub fn written(&self) {
        self.shared.meters.written.increment(1);
    }

    /// Counts a message the connection could not take.
    pub fn dropped(&self) {
        self.shared.meters.dropped.increment(1);
    }

    /// The sending end, for the session of this connection.
    pub fn sender(&self) -> Outbound {
        Outbound {
            shared: self.shared.clone(),
        }
    }
}

/// What [`OutboundReceiver::wait`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pending {
    /// Close the connection (say why to the peer first).
    Close(CloseReason),
    /// A message is queued.
    Message,
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.stalled(false);
        self.shared.room.close();
        let left = std::mem::take(&mut *self.shared.queue.lock());
        if !left.is_empty() {
            self.shared.meters.depth.decrement(left.len() as f64);
            self.shared.meters.dropped.increment(left.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn message(n: u8) -> Downlink {
        Downlink {
            topic: format!("v1/devices/me/rpc/request/{n}"),
            payload: vec![n],
            qos: DownlinkQos::AtLeastOnce,
            tracked: None,
        }
    }

    #[tokio::test]
    async fn a_full_channel_makes_the_producer_wait_until_the_writer_takes_one() {
        let (tx, rx) = channel(2, OutboundMeters::new());
        tx.send(message(1)).await.expect("room");
        tx.try_send(message(2)).expect("room");
        assert_eq!(tx.try_send(message(3)), Err(SendError::Full(message(3))));
        let mut third = Box::pin(tx.send(message(3)));
        assert!(
            (&mut third).now_or_never().is_none(),
            "a full channel waits"
        );
        assert_eq!(tx.len(), 2, "nothing past the capacity is held");
        assert_eq!(rx.wait().await, Pending::Message);
        assert_eq!(rx.take(), Some(message(1)));
        third.await.expect("room again");
        assert_eq!(rx.take(), Some(message(2)));
        assert_eq!(rx.take(), Some(message(3)));
        assert_eq!(rx.take(), None);
    }

    #[tokio::test]
    async fn the_producers_wait_is_measured() {
        let recorded = crate::test_metrics::Recorded::start();
        let (tx, rx) = channel(1, OutboundMeters::new());
        tx.send(message(1)).await.expect("room");
        assert_eq!(recorded.gauge(MQTT_OUTBOUND_DEPTH, &[]), 1.0);
        let mut second = Box::pin(tx.send(message(2)));
        assert!((&mut second).now_or_never().is_none());
        rx.take();
        second.await.expect("room");
        assert_eq!(recorded.samples(MQTT_OUTBOUND_BLOCKED, &[]), 1);
        drop(rx);
        assert_eq!(recorded.gauge(MQTT_OUTBOUND_DEPTH, &[]), 0.0);
        assert_eq!(
            recorded.counter(MQTT_OUTBOUND_MESSAGES, &[("outcome", "dropped")]),
            1
        );
    }

    #[tokio::test]
    async fn a_close_goes_ahead_of_a_full_channel() {
        let (tx, rx) = channel(1, OutboundMeters::new());
        tx.send(message(1)).await.expect("room");
        tx.close(CloseReason::TakenOver);
        assert_eq!(rx.wait().await, Pending::Close(CloseReason::TakenOver));
    }

    #[tokio::test]
    async fn a_gone_connection_releases_its_waiting_producers() {
        let (tx, rx) = channel(1, OutboundMeters::new());
        tx.send(message(1)).await.expect("room");
        let mut waiting = Box::pin(tx.send(message(2)));
        assert!((&mut waiting).now_or_never().is_none());
        drop(rx);
        assert_eq!(waiting.await, Err(SendError::Closed(message(2))));
        assert!(tx.is_closed());
        assert_eq!(
            tx.len(),
            0,
            "what was queued is dropped with the connection"
        );
        assert_eq!(tx.try_send(message(3)), Err(SendError::Closed(message(3))));
    }

    #[tokio::test]
    async fn the_writer_is_woken_by_a_message_sent_from_another_thread() {
        let (tx, rx) = channel(4, OutboundMeters::new());
        let sender = std::thread::spawn(move || {
            futures::executor::block_on(tx.send(message(7))).expect("room");
        });
        assert_eq!(rx.wait().await, Pending::Message);
        assert_eq!(rx.take(), Some(message(7)));
        sender.join().expect("sender thread");
    }
}
