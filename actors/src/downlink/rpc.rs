//! The server-side RPC state of one device, as ThingsBoard's device actor keeps it: the request
//! id counter and the requests waiting for delivery, a reply or their expiry. Plain data, no
//! runtime: the owner of the device's queue partition holds one per device with RPCs in flight
//! and feeds it the clock.
//!
//! ThingsBoard's rules, kept here:
//! - ids count from 0 per device (`rpcSeq++`) and start again after a restart (ThingsBoard's
//!   device actor lives as long as the node runs, so the owner keeps the counter as long, see
//!   [`super::owner`]); we wrap to 0 past `i32::MAX` instead of going negative, since a device
//!   answers nothing for a negative id;
//! - a request to a device with no RPC-subscribed session waits until it expires and is sent
//!   when a session subscribes;
//! - a new subscription gets every pending request (ThingsBoard's default `BURST` strategy),
//!   including two-way requests already sent and not yet answered, so a device that reconnects
//!   may see an id twice;
//! - a one-way request is done once handed to the connection; a two-way one once the device
//!   replies to its id; a reply to an unknown or finished id is ignored;
//! - a persistent request is tracked to the device's acknowledgement: each send is SENT when
//!   written and DELIVERED when acknowledged (PUBACK; at QoS 0 and on HTTP, when written); a
//!   send not acknowledged within the acknowledgement timeout (`transport.mqtt.timeout`, 10 s)
//!   is a TIMEOUT, which uses one of its `retries`; one more than those fails it. It is not
//!   sent again at once (BURST), but with the others at the next subscription;
//! - at expiry a request that was never sent and one that was sent are told apart (REST answers
//!   409 / 408 on the v1 paths).
//!
//! Unlike ThingsBoard, the number of requests pending per device is bounded; past the bound a
//! new request is refused at once ([`Full`]), so a device that never connects cannot grow the
//! engine's memory.

use std::collections::BTreeMap;

/// `transport.mqtt.timeout`: how long a persistent request's send may go unacknowledged
/// before it counts as a TIMEOUT (at most until the request expires).
pub const DEFAULT_ACK_TIMEOUT_MS: i64 = 10_000;

/// One-way requests are answered when handed to the device, two-way ones with its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    OneWay,
    TwoWay,
}

/// A request to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcRequest {
    pub method: String,
    /// The JSON text of `params` (`null` when the caller gave none).
    pub params: String,
    pub direction: Direction,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at: i64,
    /// How many of a persistent request's sends may go unacknowledged before it fails
    /// (ThingsBoard's `retries`, capped by `actors.rpc.max_retries`). Other requests are not
    /// tracked to their acknowledgement, and ignore it.
    pub retries: u32,
}

/// A request to send now, under its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub id: i32,
    pub request: RpcRequest,
    /// A persistent request's record: the session says under this id when it wrote the request
    /// and when the device acknowledged it ([`DeviceRpcs::written`], [`DeviceRpcs::acknowledged`]).
    pub record: Option<uuid::Uuid>,
}

/// How a request ended, for whoever asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A one-way request was handed to the device's connection (a persistent one: the device
    /// acknowledged it).
    Sent,
    /// A two-way request's reply, as the device sent it.
    Reply(Vec<u8>),
    /// It expired; `sent` says whether the device ever got it.
    Expired { sent: bool },
    /// Not taken: the device has as many requests pending as it may.
    Refused,
    /// A persistent request's sends went unacknowledged once more than its `retries` allow.
    Undelivered { retries: u32 },
}

/// The device has as many requests pending as it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the device has {0} RPC requests pending, as many as it may")]
pub struct Full(pub usize);

/// Where a persistent request's latest send stands.
#[derive(Clone, Copy, Debug, Default)]
struct Tracking {
    /// The device must acknowledge the latest send by then; `None`: not waiting.
    ack_by: Option<i64>,
    /// The latest send was written to the device's connection.
    written: bool,
    /// The device acknowledged a send.
    acknowledged: bool,
    /// Sends that went unacknowledged.
    timeouts: u32,
}

struct Pending<C> {
    request: RpcRequest,
    caller: C,
    sent: bool,
    record: Option<uuid::Uuid>,
    tracking: Tracking,
}

impl<C> Pending<C> {
    /// Sent (again) at `now`: a tracked request not yet acknowledged waits for that anew.
    fn send(&mut self, id: i32, now: i64, ack_timeout: i64) -> Outgoing {
        self.sent = true;
        if self.record.is_some() && !self.tracking.acknowledged {
            self.tracking.ack_by =
                Some(now.saturating_add(ack_timeout).min(self.request.expires_at));
            self.tracking.written = false;
        }
        Outgoing {
            id,
            request: self.request.clone(),
            record: self.record,
        }
    }

    /// Ends when handed over: a one-way request nobody tracks.
    fn done_when_sent(&self) -> bool {
        self.request.direction == Direction::OneWay && self.record.is_none()
    }
}

/// What [`DeviceRpcs::submit`] did with a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Submitted<C> {
    pub id: i32,
    /// Send it now (the device has an RPC subscription).
    pub send: Option<Outgoing>,
    /// It is already done: a one-way request handed over, or one that expired on arrival.
    pub done: Option<(C, Resolution)>,
}

/// What an acknowledgement did to a tracked request.
#[derive(Debug, PartialEq, Eq)]
pub enum Acknowledged<C> {
    /// A two-way request reached the device; it waits for the reply.
    Delivered,
    /// A one-way request reached the device: it is done.
    Done(C, Resolution),
}

/// What [`DeviceRpcs::expire`] found due.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<C> {
    /// Requests that ended: expired, or tracked ones out of retries.
    pub ended: Vec<(C, Resolution)>,
    /// Tracked requests whose latest send went unacknowledged, with retries left: they wait
    /// for the next subscription (ThingsBoard's BURST strategy does not send again at once;
    /// MQTT 5 forbids sending a PUBLISH again on the same connection).
    pub timed_out: Vec<i32>,
}

/// One device's RPC requests. `C` is whatever tells the owner whom to answer (a REST call
/// waiting on some node, a persistent request's record).
pub struct DeviceRpcs<C> {
    next_id: i32,
    pending: BTreeMap<i32, Pending<C>>,
    capacity: usize,
    ack_timeout: i64,
}

impl<C> DeviceRpcs<C> {
    /// State with room for `capacity` pending requests.
    pub fn new(capacity: usize) -> Self {
        Self::resumed(capacity, 0)
    }

    /// State whose next request gets id `next_id` (the counter of a device whose state was let
    /// go while the engine ran).
    pub fn resumed(capacity: usize, next_id: i32) -> Self {
        DeviceRpcs {
            next_id,
            pending: BTreeMap::new(),
            capacity,
            ack_timeout: DEFAULT_ACK_TIMEOUT_MS,
        }
    }

    /// Tracked sends not acknowledged within `ms` time out.
    pub fn with_ack_timeout(mut self, ms: i64) -> Self {
        self.ack_timeout = ms.max(1);
        self
    }

    /// The id the next request gets.
    pub fn next_id(&self) -> i32 {
        self.next_id
    }

    /// Takes a request at `now`. `online`: a session of the device subscribes to RPC, so the
    /// request goes out at once. `record`: a persistent request's record; such a request is
    /// tracked until the device acknowledges it (one-way ones end then).
    pub fn submit(
        &mut self,
        request: RpcRequest,
        caller: C,
        now: i64,
        online: bool,
        record: Option<uuid::Uuid>,
    ) -> Result<Submitted<C>, Full> {
        if self.pending.len() >= self.capacity {
            return Err(Full(self.capacity));
        }
        let id = self.take_id();
        if request.expires_at <= now {
            return Ok(Submitted {
                id,
                send: None,
                done: Some((caller, Resolution::Expired { sent: false })),
            });
        }
        let mut pending = Pending {
            request,
            caller,
            sent: false,
            record,
            tracking: Tracking::default(),
        };
        if !online {
            self.pending.insert(id, pending);
            return Ok(Submitted {
                id,
                send: None,
                done: None,
            });
        }
        let send = Some(pending.send(id, now, self.ack_timeout));
        if pending.done_when_sent() {
            return Ok(Submitted {
                id,
                send,
                done: Some((pending.caller, Resolution::Sent)),
            });
        }
        self.pending.insert(id, pending);
        Ok(Submitted {
            id,
            send,
            done: None,
        })
    }

    fn take_id(&mut self) -> i32 {
        let id = self.next_id;
        self.next_id = id.checked_add(1).unwrap_or(0);
        id
    }

    /// A session subscribed to RPC at `now`: every pending request goes to it, in id order.
    /// One-way requests nobody tracks are then done.
    pub fn subscribed(&mut self, now: i64) -> (Vec<Outgoing>, Vec<(C, Resolution)>) {
        let ack_timeout = self.ack_timeout;
        let outgoing: Vec<Outgoing> = self
            .pending
            .iter_mut()
            .map(|(&id, p)| p.send(id, now, ack_timeout))
            .collect();
        let one_way: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.done_when_sent())
            .map(|(&id, _)| id)
            .collect();
        let done = one_way
            .into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| (p.caller, Resolution::Sent))
            .collect();
        (outgoing, done)
    }

    /// A session that takes one downlink subscribed to RPC at `now`: the first pending request
    /// goes to it (done, if one-way and not tracked); the others wait for the next
    /// subscription.
    pub fn subscribed_once(&mut self, now: i64) -> (Vec<Outgoing>, Vec<(C, Resolution)>) {
        let ack_timeout = self.ack_timeout;
        let Some((&id, pending)) = self.pending.iter_mut().next() else {
            return (Vec::new(), Vec::new());
        };
        let outgoing = vec![pending.send(id, now, ack_timeout)];
        let done = if pending.done_when_sent() {
            self.pending
                .remove(&id)
                .map(|p| (p.caller, Resolution::Sent))
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
        (outgoing, done)
    }

    /// A session wrote tracked request `id` to the device and waits for its acknowledgement:
    /// true the first time for this send (the record becomes SENT). A report that comes after
    /// the acknowledgement, or after the send timed out, changes nothing.
    pub fn written(&mut self, id: i32) -> bool {
        match self.pending.get_mut(&id) {
            Some(p)
                if p.record.is_some()
                    && p.tracking.ack_by.is_some()
                    && !p.tracking.acknowledged
                    && !p.tracking.written =>
            {
                p.tracking.written = true;
                true
            }
            _ => false,
        }
    }

    /// The device acknowledged tracked request `id` (at QoS 0: it was written); `None` when
    /// that changes nothing (not tracked, already acknowledged, gone).
    pub fn acknowledged(&mut self, id: i32) -> Option<Acknowledged<C>> {
        let p = self.pending.get_mut(&id)?;
        if p.record.is_none() || p.tracking.acknowledged {
            return None;
        }
        p.tracking.acknowledged = true;
        p.tracking.ack_by = None;
        if p.request.direction == Direction::OneWay {
            let p = self.pending.remove(&id)?;
            return Some(Acknowledged::Done(p.caller, Resolution::Sent));
        }
        Some(Acknowledged::Delivered)
    }

    /// The device replied to `id`: the two-way request it answers, if it is still pending.
    pub fn reply(&mut self, id: i32, payload: Vec<u8>) -> Option<(C, Resolution)> {
        match self.pending.get(&id) {
            Some(p) if p.request.direction == Direction::TwoWay => self
                .pending
                .remove(&id)
                .map(|p| (p.caller, Resolution::Reply(payload))),
            _ => None,
        }
    }

    /// The caller of pending request `id`.
    pub fn caller(&self, id: i32) -> Option<&C> {
        self.pending.get(&id).map(|p| &p.caller)
    }

    /// The id of the first pending request whose caller `matches`.
    pub fn find(&self, matches: impl Fn(&C) -> bool) -> Option<i32> {
        self.pending
            .iter()
            .find(|(_, p)| matches(&p.caller))
            .map(|(&id, _)| id)
    }

    /// Removes the request `id` (its caller gave up or it was deleted); its caller, if it was
    /// pending.
    pub fn cancel(&mut self, id: i32) -> Option<C> {
        self.pending.remove(&id).map(|p| p.caller)
    }

    /// Ends every request whose time is up at `now`, and times out tracked sends the device did
    /// not acknowledge in time: each such timeout uses one of the request's retries, and one
    /// more than it has fails it (ThingsBoard's FAILED).
    pub fn expire(&mut self, now: i64) -> Due<C> {
        let mut ended_ids = Vec::new();
        let mut timed_out = Vec::new();
        for (&id, p) in self.pending.iter_mut() {
            if p.request.expires_at <= now {
                ended_ids.push((id, Resolution::Expired { sent: p.sent }));
                continue;
            }
            if p.tracking.ack_by.is_some_and(|by| by <= now) {
                p.tracking.ack_by = None;
                p.tracking.written = false;
                if p.tracking.timeouts >= p.request.retries {
                    ended_ids.push((
                        id,
                        Resolution::Undelivered {
                            retries: p.request.retries,
                        },
                    ));
                } else {
                    p.tracking.timeouts += 1;
                    timed_out.push(id);
                }
            }
        }
        let ended = ended_ids
            .into_iter()
            .filter_map(|(id, resolution)| self.pending.remove(&id).map(|p| (p.caller, resolution)))
            .collect();
        Due { ended, timed_out }
    }

    /// The earliest expiry or acknowledgement deadline among pending requests: when to call
    /// [`DeviceRpcs::expire`] next.
    pub fn next_deadline(&self) -> Option<i64> {
        self.pending
            .values()
            .map(|p| {
                p.tracking
                    .ack_by
                    .map_or(p.request.expires_at, |by| by.min(p.request.expires_at))
            })
            .min()
    }

    /// Requests pending (waiting for delivery or a reply).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(direction: Direction, expires_at: i64) -> RpcRequest {
        RpcRequest {
            method: "setGpio".into(),
            params: r#"{"pin":7}"#.into(),
            direction,
            expires_at,
            retries: 0,
        }
    }

    #[test]
    fn ids_count_from_zero_and_wrap_to_zero() {
        let mut rpcs = DeviceRpcs::new(10);
        let ids: Vec<i32> = (0..3)
            .map(|_| {
                rpcs.submit(request(Direction::OneWay, 100), (), 0, true, None)
                    .map(|s| s.id)
            })
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        assert_eq!(ids, [0, 1, 2]);
        rpcs.next_id = i32::MAX;
        let last = rpcs.submit(request(Direction::OneWay, 100), (), 0, true, None);
        let next = rpcs.submit(request(Direction::OneWay, 100), (), 0, true, None);
        assert_eq!(
            (last.map(|s| s.id), next.map(|s| s.id)),
            (Ok(i32::MAX), Ok(0))
        );
    }

    #[test]
    fn an_online_device_gets_the_request_at_once() {
        // (direction, online) -> (sent now, done at once, still pending)
        let cases = [
            (Direction::OneWay, true, true, Some(Resolution::Sent), 0),
            (Direction::TwoWay, true, true, None, 1),
            (Direction::OneWay, false, false, None, 1),
            (Direction::TwoWay, false, false, None, 1),
        ];
        for (direction, online, sent, done, pending) in cases {
            let mut rpcs = DeviceRpcs::new(10);
            let submitted = rpcs.submit(request(direction, 100), "caller", 0, online, None);
            let Ok(submitted) = submitted else {
                panic!("refused: {submitted:?}");
            };
            assert_eq!(
                submitted.send.is_some(),
                sent,
                "{direction:?} online={online}"
            );
            assert_eq!(
                submitted.done.map(|(_, r)| r),
                done,
                "{direction:?} online={online}"
            );
            assert_eq!(rpcs.len(), pending, "{direction:?} online={online}");
        }
    }

    #[test]
    fn a_request_already_expired_is_done_and_never_sent() {
        let mut rpcs = DeviceRpcs::new(10);
        let submitted = rpcs.submit(request(Direction::TwoWay, 50), 1, 50, true, None);
        assert_eq!(
            submitted,
            Ok(Submitted {
                id: 0,
                send: None,
                done: Some((1, Resolution::Expired { sent: false })),
            })
        );
        assert!(rpcs.is_empty());
    }

    #[test]
    fn a_subscription_gets_every_pending_request_burst() {
        let mut rpcs = DeviceRpcs::new(10);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "a", 0, false, None);
        let _ = rpcs.submit(request(Direction::OneWay, 100), "b", 0, false, None);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "c", 0, true, None);
        let (outgoing, done) = rpcs.subscribed(0);
        let ids: Vec<i32> = outgoing.iter().map(|o| o.id).collect();
        // The two-way request sent before is sent again (ThingsBoard's BURST).
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(done, [("b", Resolution::Sent)]);
        // A second subscription (a reconnect) sees the unanswered two-way requests again.
        let (again, done) = rpcs.subscribed(0);
        assert_eq!(again.iter().map(|o| o.id).collect::<Vec<_>>(), [0, 2]);
        assert!(done.is_empty());
    }

    #[test]
    fn replies_end_two_way_requests_only() {
        let mut rpcs = DeviceRpcs::new(10);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "two", 0, true, None);
        let _ = rpcs.submit(request(Direction::OneWay, 100), "one", 0, false, None);
        // Unknown id, a one-way id, then the right one, then the same again (stale).
        assert_eq!(rpcs.reply(7, b"{}".to_vec()), None);
        assert_eq!(rpcs.reply(1, b"{}".to_vec()), None);
        assert_eq!(
            rpcs.reply(0, b"{\"ok\":true}".to_vec()),
            Some(("two", Resolution::Reply(b"{\"ok\":true}".to_vec())))
        );
        assert_eq!(rpcs.reply(0, b"{}".to_vec()), None);
        assert_eq!(rpcs.len(), 1);
    }

    #[test]
    fn expiry_tells_sent_from_never_sent() {
        let mut rpcs = DeviceRpcs::new(10);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "sent", 0, true, None);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "offline", 0, false, None);
        let _ = rpcs.submit(request(Direction::TwoWay, 300), "later", 0, false, None);
        assert_eq!(rpcs.next_deadline(), Some(100));
        assert!(rpcs.expire(99).ended.is_empty());
        assert_eq!(
            rpcs.expire(100).ended,
            [
                ("sent", Resolution::Expired { sent: true }),
                ("offline", Resolution::Expired { sent: false }),
            ]
        );
        assert_eq!(rpcs.next_deadline(), Some(300));
        assert_eq!(rpcs.cancel(2), Some("later"));
        assert_eq!(rpcs.next_deadline(), None);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let mut rpcs = DeviceRpcs::new(2);
        assert!(
            rpcs.submit(request(Direction::TwoWay, 100), (), 0, false, None)
                .is_ok()
        );
        assert!(
            rpcs.submit(request(Direction::OneWay, 100), (), 0, false, None)
                .is_ok()
        );
        assert_eq!(
            rpcs.submit(request(Direction::TwoWay, 100), (), 0, false, None),
            Err(Full(2))
        );
        // Answered or expired requests make room again.
        let _ = rpcs.expire(100);
        assert!(
            rpcs.submit(request(Direction::TwoWay, 200), (), 100, false, None)
                .is_ok()
        );
    }

    fn record(n: u128) -> Option<uuid::Uuid> {
        Some(uuid::Uuid::from_u128(n))
    }

    fn tracked(direction: Direction, expires_at: i64, retries: u32) -> RpcRequest {
        RpcRequest {
            retries,
            ..request(direction, expires_at)
        }
    }

    #[test]
    fn a_persistent_request_is_tracked_to_its_acknowledgement() {
        // (direction) -> what the acknowledgement does, and whether it stays pending
        for (direction, acked, pending) in [
            (
                Direction::OneWay,
                Acknowledged::Done("p", Resolution::Sent),
                0,
            ),
            (Direction::TwoWay, Acknowledged::Delivered, 1),
        ] {
            let mut rpcs = DeviceRpcs::new(10).with_ack_timeout(1_000);
            let submitted = rpcs.submit(tracked(direction, 60_000, 2), "p", 0, true, record(1));
            let Ok(submitted) = submitted else {
                panic!("refused: {submitted:?}");
            };
            // Even a one-way request waits for the device to acknowledge it.
            assert_eq!(submitted.done, None, "{direction:?}");
            assert_eq!(submitted.send.map(|o| o.record), Some(record(1)));
            assert_eq!(
                rpcs.next_deadline(),
                Some(1_000),
                "the acknowledgement is due"
            );
            assert!(rpcs.written(0), "SENT once per send");
            assert!(!rpcs.written(0));
            assert_eq!(rpcs.acknowledged(0), Some(acked), "{direction:?}");
            assert_eq!(rpcs.acknowledged(0), None, "acknowledged once");
            assert!(!rpcs.written(0), "a late SENT after the acknowledgement");
            assert_eq!(rpcs.len(), pending, "{direction:?}");
            let due = rpcs.expire(5_000);
            assert!(due.ended.is_empty() && due.timed_out.is_empty(), "{due:?}");
        }
    }

    #[test]
    fn requests_nobody_tracks_ignore_acknowledgements() {
        let mut rpcs = DeviceRpcs::new(10).with_ack_timeout(1_000);
        let _ = rpcs.submit(request(Direction::TwoWay, 60_000), "call", 0, true, None);
        assert!(!rpcs.written(0));
        assert_eq!(rpcs.acknowledged(0), None);
        assert_eq!(rpcs.acknowledged(7), None, "unknown id");
        assert_eq!(
            rpcs.next_deadline(),
            Some(60_000),
            "no acknowledgement is awaited"
        );
        let due = rpcs.expire(59_999);
        assert!(due.timed_out.is_empty());
    }

    #[test]
    fn unacknowledged_sends_use_up_the_retries_then_fail() {
        // retries -> timeouts reported before the request fails
        for retries in [0, 1, 3] {
            let mut rpcs = DeviceRpcs::new(10).with_ack_timeout(1_000);
            let _ = rpcs.submit(
                tracked(Direction::TwoWay, 1_000_000, retries),
                "p",
                0,
                true,
                record(1),
            );
            let mut now = 0;
            let mut timeouts = 0;
            let failed = loop {
                now += 1_000;
                let due = rpcs.expire(now);
                if let Some(ended) = due.ended.into_iter().next() {
                    break ended;
                }
                assert_eq!(due.timed_out, [0], "retries={retries}");
                timeouts += 1;
                // Not sent again until a session subscribes (BURST).
                assert_eq!(rpcs.next_deadline(), Some(1_000_000));
                assert!(rpcs.expire(now + 500).timed_out.is_empty());
                let (again, done) = rpcs.subscribed(now);
                assert_eq!(again.len(), 1);
                assert!(done.is_empty());
                assert_eq!(rpcs.next_deadline(), Some(now + 1_000), "waits again");
            };
            assert_eq!(timeouts, retries);
            assert_eq!(failed, ("p", Resolution::Undelivered { retries }));
            assert!(rpcs.is_empty());
        }
    }

    #[test]
    fn the_acknowledgement_deadline_never_passes_the_expiry() {
        let mut rpcs = DeviceRpcs::new(10).with_ack_timeout(10_000);
        let _ = rpcs.submit(
            tracked(Direction::TwoWay, 3_000, 5),
            "p",
            0,
            true,
            record(1),
        );
        assert_eq!(rpcs.next_deadline(), Some(3_000));
        // At the expiry the request expires (it was sent), rather than timing out.
        let due = rpcs.expire(3_000);
        assert_eq!(due.ended, [("p", Resolution::Expired { sent: true })]);
        assert!(due.timed_out.is_empty());
    }

    #[test]
    fn an_acknowledged_two_way_request_sent_again_is_not_tracked_again() {
        let mut rpcs = DeviceRpcs::new(10).with_ack_timeout(1_000);
        let _ = rpcs.submit(
            tracked(Direction::TwoWay, 60_000, 0),
            "p",
            0,
            true,
            record(1),
        );
        assert_eq!(rpcs.acknowledged(0), Some(Acknowledged::Delivered));
        // A reconnect: the unanswered request is sent again (BURST), and waits for its reply
        // only.
        let (again, _) = rpcs.subscribed(10);
        assert_eq!(
            again.iter().map(|o| o.record).collect::<Vec<_>>(),
            [record(1)]
        );
        assert!(!rpcs.written(0));
        assert!(rpcs.expire(5_000).ended.is_empty());
        assert_eq!(
            rpcs.reply(0, b"{}".to_vec()),
            Some(("p", Resolution::Reply(b"{}".to_vec())))
        );
    }

    #[test]
    fn a_tracked_request_offline_waits_for_a_subscription_to_start_its_clock() {
        let mut rpcs = DeviceRpcs::new(10).with_ack_timeout(1_000);
        let _ = rpcs.submit(
            tracked(Direction::OneWay, 60_000, 0),
            "p",
            0,
            false,
            record(1),
        );
        assert!(!rpcs.written(0), "not sent yet");
        assert!(rpcs.expire(30_000).ended.is_empty());
        let (once, done) = rpcs.subscribed_once(30_000);
        assert_eq!(once.len(), 1);
        assert!(
            done.is_empty(),
            "a tracked one-way request waits for its acknowledgement"
        );
        assert_eq!(rpcs.next_deadline(), Some(31_000));
        assert_eq!(
            rpcs.acknowledged(0),
            Some(Acknowledged::Done("p", Resolution::Sent))
        );
    }
}
