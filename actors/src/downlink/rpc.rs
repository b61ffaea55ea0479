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
//! - at expiry a request that was never sent and one that was sent are told apart (REST answers
//!   409 / 408 on the v1 paths).
//!
//! Unlike ThingsBoard, the number of requests pending per device is bounded; past the bound a
//! new request is refused at once ([`Full`]), so a device that never connects cannot grow the
//! engine's memory.

use std::collections::BTreeMap;

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
}

/// A request to send now, under its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub id: i32,
    pub request: RpcRequest,
}

/// How a request ended, for whoever asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A one-way request was handed to the device's connection.
    Sent,
    /// A two-way request's reply, as the device sent it.
    Reply(Vec<u8>),
    /// It expired; `sent` says whether the device ever got it.
    Expired { sent: bool },
    /// Not taken: the device has as many requests pending as it may.
    Refused,
}

/// The device has as many requests pending as it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the device has {0} RPC requests pending, as many as it may")]
pub struct Full(pub usize);

struct Pending<C> {
    request: RpcRequest,
    caller: C,
    sent: bool,
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

/// One device's RPC requests. `C` is whatever tells the owner whom to answer (a REST call
/// waiting on some node, a persistent request's record).
pub struct DeviceRpcs<C> {
    next_id: i32,
    pending: BTreeMap<i32, Pending<C>>,
    capacity: usize,
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
        }
    }

    /// The id the next request gets.
    pub fn next_id(&self) -> i32 {
        self.next_id
    }

    /// Takes a request at `now`. `online`: a session of the device subscribes to RPC, so the
    /// request goes out at once.
    pub fn submit(
        &mut self,
        request: RpcRequest,
        caller: C,
        now: i64,
        online: bool,
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
        if !online {
            self.pending.insert(
                id,
                Pending {
                    request,
                    caller,
                    sent: false,
                },
            );
            return Ok(Submitted {
                id,
                send: None,
                done: None,
            });
        }
        let send = Some(Outgoing {
            id,
            request: request.clone(),
        });
        if request.direction == Direction::OneWay {
            return Ok(Submitted {
                id,
                send,
                done: Some((caller, Resolution::Sent)),
            });
        }
        self.pending.insert(
            id,
            Pending {
                request,
                caller,
                sent: true,
            },
        );
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

    /// A session subscribed to RPC: every pending request goes to it, in id order. One-way
    /// requests are then done.
    pub fn subscribed(&mut self) -> (Vec<Outgoing>, Vec<(C, Resolution)>) {
        let outgoing: Vec<Outgoing> = self
            .pending
            .iter_mut()
            .map(|(&id, p)| {
                p.sent = true;
                Outgoing {
                    id,
                    request: p.request.clone(),
                }
            })
            .collect();
        let one_way: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.request.direction == Direction::OneWay)
            .map(|(&id, _)| id)
            .collect();
        let done = one_way
            .into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| (p.caller, Resolution::Sent))
            .collect();
        (outgoing, done)
    }

    /// A session that takes one downlink subscribed to RPC: the first pending request goes to
    /// it (done, if one-way); the others wait for the next subscription.
    pub fn subscribed_once(&mut self) -> (Vec<Outgoing>, Vec<(C, Resolution)>) {
        let Some((&id, pending)) = self.pending.iter_mut().next() else {
            return (Vec::new(), Vec::new());
        };
        pending.sent = true;
        let outgoing = vec![Outgoing {
            id,
            request: pending.request.clone(),
        }];
        let done = if pending.request.direction == Direction::OneWay {
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

    /// Ends every request whose time is up at `now`.
    pub fn expire(&mut self, now: i64) -> Vec<(C, Resolution)> {
        let due: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.request.expires_at <= now)
            .map(|(&id, _)| id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .map(|p| (p.caller, Resolution::Expired { sent: p.sent }))
            .collect()
    }

    /// The earliest expiry among pending requests: when to call [`DeviceRpcs::expire`] next.
    pub fn next_deadline(&self) -> Option<i64> {
        self.pending.values().map(|p| p.request.expires_at).min()
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
        }
    }

    #[test]
    fn ids_count_from_zero_and_wrap_to_zero() {
        let mut rpcs = DeviceRpcs::new(10);
        let ids: Vec<i32> = (0..3)
            .map(|_| {
                rpcs.submit(request(Direction::OneWay, 100), (), 0, true)
                    .map(|s| s.id)
            })
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        assert_eq!(ids, [0, 1, 2]);
        rpcs.next_id = i32::MAX;
        let last = rpcs.submit(request(Direction::OneWay, 100), (), 0, true);
        let next = rpcs.submit(request(Direction::OneWay, 100), (), 0, true);
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
            let submitted = rpcs.submit(request(direction, 100), "caller", 0, online);
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
        let submitted = rpcs.submit(request(Direction::TwoWay, 50), 1, 50, true);
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
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "a", 0, false);
        let _ = rpcs.submit(request(Direction::OneWay, 100), "b", 0, false);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "c", 0, true);
        let (outgoing, done) = rpcs.subscribed();
        let ids: Vec<i32> = outgoing.iter().map(|o| o.id).collect();
        // The two-way request sent before is sent again (ThingsBoard's BURST).
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(done, [("b", Resolution::Sent)]);
        // A second subscription (a reconnect) sees the unanswered two-way requests again.
        let (again, done) = rpcs.subscribed();
        assert_eq!(again.iter().map(|o| o.id).collect::<Vec<_>>(), [0, 2]);
        assert!(done.is_empty());
    }

    #[test]
    fn replies_end_two_way_requests_only() {
        let mut rpcs = DeviceRpcs::new(10);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "two", 0, true);
        let _ = rpcs.submit(request(Direction::OneWay, 100), "one", 0, false);
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
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "sent", 0, true);
        let _ = rpcs.submit(request(Direction::TwoWay, 100), "offline", 0, false);
        let _ = rpcs.submit(request(Direction::TwoWay, 300), "later", 0, false);
        assert_eq!(rpcs.next_deadline(), Some(100));
        assert!(rpcs.expire(99).is_empty());
        assert_eq!(
            rpcs.expire(100),
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
            rpcs.submit(request(Direction::TwoWay, 100), (), 0, false)
                .is_ok()
        );
        assert!(
            rpcs.submit(request(Direction::OneWay, 100), (), 0, false)
                .is_ok()
        );
        assert_eq!(
            rpcs.submit(request(Direction::TwoWay, 100), (), 0, false),
            Err(Full(2))
        );
        // Answered or expired requests make room again.
        let _ = rpcs.expire(100);
        assert!(
            rpcs.submit(request(Direction::TwoWay, 200), (), 100, false)
                .is_ok()
        );
    }
}
