//! The connection's writing side: server-to-device PUBLISHes from the connection's bounded
//! outbound channel, written into ntex's write buffer by the connection's own task.
//!
//! Anything that sends to the device, from any thread, holds an [`Outbound`] clone; only the
//! connection's task writes. Before taking a message it checks that the peer can take a packet:
//! a QoS 1 message needs a free place among the device's unacknowledged ones ([`Credit`]), and
//! any message needs ntex's write buffer under its high-water mark (a device that does not read
//! fills the socket, then that buffer). While it cannot, messages stay in the channel, which
//! fills, and its producers wait. The engine thus holds, per connection, at most the channel's
//! capacity plus one write buffer.
//!
//! [`Outbound`]: actors::session::Outbound

use std::num::NonZeroU16;
use std::task::{Context, Poll};

use actors::session::outbound::{
    CloseReason, Downlink, DownlinkQos, OutboundReceiver, Pending, Tracked,
};
use ntex::io::Io;

/// Writes one server-to-device PUBLISH in a protocol version's form.
pub(super) trait Wire {
    /// Encodes `downlink` (QoS 1 with `id`) into the write buffer; `false` if the connection
    /// could not take it.
    fn publish(&self, io: &Io, downlink: Downlink, id: Option<NonZeroU16>) -> bool;
}

/// QoS 1 downlinks sent and not yet acknowledged: at most `cap` (the client's Receive Maximum,
/// within the engine's own cap), each with a packet id no other of them holds, and the report
/// of those whose acknowledgement someone waits for.
pub(super) struct Credit {
    cap: usize,
    last: u16,
    in_flight: Vec<(NonZeroU16, Option<Tracked>)>,
}

impl Credit {
    pub(super) fn new(cap: usize) -> Credit {
        Credit {
            cap: cap.clamp(1, usize::from(u16::MAX)),
            last: 0,
            in_flight: Vec::new(),
        }
    }

    pub(super) fn has_room(&self) -> bool {
        self.in_flight.len() < self.cap
    }

    /// A packet id for the next QoS 1 downlink, now in flight; `None` without room.
    pub(super) fn take(&mut self) -> Option<NonZeroU16> {
        if !self.has_room() {
            return None;
        }
        loop {
            self.last = self.last.wrapping_add(1);
            let Some(id) = NonZeroU16::new(self.last) else {
                continue;
            };
            if !self.in_flight.iter().any(|(held, _)| *held == id) {
                self.in_flight.push((id, None));
                return Some(id);
            }
        }
    }

    /// The downlink sent under `id` (in flight) waits for its acknowledgement to be reported.
    fn track(&mut self, id: NonZeroU16, tracked: Tracked) {
        if let Some((_, slot)) = self.in_flight.iter_mut().find(|(held, _)| *held == id) {
            *slot = Some(tracked);
        }
    }

    /// The device acknowledged `id`; whether it was in flight. Its report, if it has one, is
    /// told.
    pub(super) fn release(&mut self, id: NonZeroU16) -> bool {
        match self.in_flight.iter().position(|(held, _)| *held == id) {
            Some(at) => {
                if let (_, Some(tracked)) = self.in_flight.swap_remove(at) {
                    tracked.0.acknowledged();
                }
                true
            }
            None => false,
        }
    }
}

/// Writes what the outbound channel holds while the peer can take it; `Ready` with the reason
/// when the connection is to close (the peer is told why where the protocol can). `Pending`
/// once the channel is empty (woken by the next message), the write buffer is full (woken when
/// it drains) or QoS 1 credit is used up (the caller polls again after a PUBACK).
pub(super) fn poll_write<W: Wire>(
    wire: &W,
    io: &Io,
    outbound: &OutboundReceiver,
    credit: &mut Credit,
    progressed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<CloseReason> {
    loop {
        match outbound.poll_wait(cx) {
            Poll::Pending => {
                outbound.stalled(false);
                return Poll::Pending;
            }
            Poll::Ready(Pending::Close(reason)) => return Poll::Ready(reason),
            Poll::Ready(Pending::Message) => {}
        }
        if io.is_wr_backpressure() {
            // Registers this task to be woken once the buffer drains below its low mark.
            match io.poll_flush(cx, false) {
                Poll::Ready(Ok(())) => {}
                Poll::Pending => {
                    outbound.stalled(true);
                    return Poll::Pending;
                }
                // The peer is gone (its socket reset). The reading side may not be reading
                // (publishes waiting on this very channel), so the writer says so itself.
                Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::PeerGone),
            }
        }
        let id = match outbound.next_qos() {
            Some(DownlinkQos::AtLeastOnce) => match credit.take() {
                Some(id) => Some(id),
                None => {
                    outbound.stalled(true);
                    return Poll::Pending;
                }
            },
            Some(DownlinkQos::AtMostOnce) => None,
            None => continue,
        };
        let Some(mut downlink) = outbound.take() else {
            if let Some(id) = id {
                credit.release(id);
            }
            continue;
        };
        let tracked = downlink.tracked.take();
        if wire.publish(io, downlink, id) {
            outbound.written();
            *progressed = true;
            match (tracked, id) {
                (Some(tracked), Some(id)) => {
                    tracked.0.written();
                    credit.track(id, tracked);
                }
                (Some(tracked), None) => tracked.0.acknowledged(),
                (None, _) => {}
            }
        } else {
            if let Some(id) = id {
                credit.release(id);
            }
            outbound.dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("not zero")
    }

    #[test]
    fn credit_bounds_unacknowledged_downlinks() {
        let mut credit = Credit::new(2);
        assert_eq!(credit.take(), Some(id(1)));
        assert_eq!(credit.take(), Some(id(2)));
        assert!(!credit.has_room());
        assert_eq!(credit.take(), None, "a third waits for an acknowledgement");
        assert!(!credit.release(id(9)), "an id not in flight frees nothing");
        assert!(credit.release(id(1)));
        assert!(!credit.release(id(1)), "acknowledged once");
        assert_eq!(credit.take(), Some(id(3)));
        assert_eq!(Credit::new(0).take(), Some(id(1)), "at least one");
    }

    #[test]
    fn packet_ids_wrap_and_skip_those_in_flight() {
        let mut credit = Credit::new(3);
        assert_eq!(credit.take(), Some(id(1)), "held all along");
        for n in 2..=u16::MAX {
            assert_eq!(credit.take(), Some(id(n)));
            assert!(credit.release(id(n)));
        }
        assert_eq!(credit.take(), Some(id(2)), "0 is no id and 1 is in flight");
    }

    #[derive(Default)]
    struct Counted {
        written: std::sync::atomic::AtomicUsize,
        acknowledged: std::sync::atomic::AtomicUsize,
    }

    impl actors::session::outbound::DeliveryReport for Counted {
        fn written(&self) {
            self.written
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }

        fn acknowledged(&self) {
            self.acknowledged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_tracked_downlink_is_reported_acknowledged_once_at_its_puback() {
        use std::sync::atomic::Ordering::Relaxed;
        let report = std::sync::Arc::new(Counted::default());
        let mut credit = Credit::new(4);
        let plain = credit.take().expect("room");
        let tracked = credit.take().expect("room");
        credit.track(tracked, Tracked(report.clone()));
        assert!(credit.release(plain));
        assert_eq!(
            report.acknowledged.load(Relaxed),
            0,
            "another packet's PUBACK"
        );
        assert!(credit.release(tracked));
        assert!(!credit.release(tracked), "a second PUBACK of the id");
        assert_eq!(report.acknowledged.load(Relaxed), 1);
        // An id taken again later is not tracked any more.
        for _ in 0..u16::MAX {
            if let Some(id) = credit.take() {
                credit.release(id);
            }
        }
        assert_eq!(report.acknowledged.load(Relaxed), 1);
    }
}
