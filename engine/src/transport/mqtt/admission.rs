//! Who is connected: the sockets open (behind `mqtt.max_connections`, itself within the
//! open-files limit) and each device's sessions (behind `mqtt.max_connections_per_device`; a
//! session past it takes over from the device's oldest, as ThingsBoard does). Shared by all
//! network workers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actors::metrics::{MQTT_CONNECTIONS_OPEN, MQTT_SESSIONS_TAKEN_OVER};
use actors::model::{Device, DeviceId};
use actors::session::Outbound;
use actors::session::outbound::CloseReason;
use metrics::{counter, gauge};

use super::peer_log::peer_event;

/// How many MQTT sockets the open-files limit leaves room for: the limit minus `reserve`, or
/// half the limit when it is too small to keep the whole reserve.
pub(super) fn socket_budget(open_files: u64, reserve: usize) -> usize {
    let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
    if open_files / 2 > reserve {
        open_files - reserve
    } else {
        open_files / 2
    }
}

/// `mqtt.max_connections` within the socket budget, leaving a sixteenth of it to answer the
/// connections refused past the cap.
pub(super) fn connection_cap(configured: usize, budget: usize) -> usize {
    configured.min(budget - budget / 16).max(1)
}

/// Each device's sessions, oldest first; a session past `max` pushes the oldest out.
struct Sessions<T> {
    max: usize,
    next: u64,
    by_device: HashMap<DeviceId, VecDeque<(u64, T)>>,
}

impl<T> Sessions<T> {
    fn new(max: usize) -> Sessions<T> {
        Sessions {
            max,
            next: 0,
            by_device: HashMap::new(),
        }
    }

    /// Adds a session of `device`; returns its id and the sessions it pushed out.
    fn join(&mut self, device: DeviceId, session: T) -> (u64, Vec<T>) {
        let id = self.next;
        self.next += 1;
        let live = self.by_device.entry(device).or_default();
        live.push_back((id, session));
        let mut out = Vec::new();
        while live.len() > self.max {
            out.extend(live.pop_front().map(|(_, session)| session));
        }
        (id, out)
    }

    fn newest(&self, device: DeviceId) -> Option<&T> {
        self.by_device
            .get(&device)
            .and_then(|live| live.back())
            .map(|(_, session)| session)
    }

    fn leave(&mut self, device: DeviceId, id: u64) {
        if let Some(live) = self.by_device.get_mut(&device) {
            // Ids only grow, so each device's sessions are sorted by id.
            if let Ok(at) = live.binary_search_by_key(&id, |(i, _)| *i) {
                live.remove(at);
            }
            if live.is_empty() {
                self.by_device.remove(&device);
            }
        }
    }
}

/// Who holds one of a device's sessions, and how it is told a newer one pushed it out.
#[derive(Clone)]
pub(super) enum Holder {
    /// The device's own connection: told to close through its outbound channel.
    Connection(Outbound),
    /// The device behind a gateway: the gateway lets it go (its connection stays).
    Gateway(Arc<dyn PushedOut>),
}

/// A session behind a gateway, told it was pushed out.
pub(super) trait PushedOut: Send + Sync {
    fn pushed_out(&self);
}

/// Who is connected: the sockets open (behind `mqtt.max_connections`) and each device's
/// sessions (behind `mqtt.max_connections_per_device`), its own connections and gateways'
/// sessions for it alike (ThingsBoard counts both). Shared by all network workers.
pub(super) struct Admission {
    max_connections: usize,
    open: AtomicUsize,
    /// Each session's holder (through which it is told to close); the lock is held only to
    /// add, remove or look up one.
    sessions: Mutex<Sessions<Holder>>,
}

/// A socket being served; counted as open until dropped.
pub(super) struct Socket {
    admission: Arc<Admission>,
    /// It was accepted with `max_connections` sockets already open.
    pub(super) past_cap: bool,
}

/// A session's place among its device's; given up when dropped.
pub(super) struct Seat {
    admission: Arc<Admission>,
    device: DeviceId,
    id: u64,
}

impl Admission {
    pub(super) fn new(max_connections: usize, max_per_device: usize) -> Admission {
        Admission {
            max_connections,
            open: AtomicUsize::new(0),
            sessions: Mutex::new(Sessions::new(max_per_device)),
        }
    }

    pub(super) fn accept(self: &Arc<Self>) -> Socket {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        gauge!(MQTT_CONNECTIONS_OPEN).increment(1.0);
        Socket {
            admission: self.clone(),
            past_cap: before >= self.max_connections,
        }
    }

    /// Seats a new session of `device`; the sessions it pushes out are told to close.
    pub(super) fn seat(self: &Arc<Self>, device: &Device, holder: Holder) -> Seat {
        let (id, out) = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join(device.id, holder);
        for old in out {
            counter!(MQTT_SESSIONS_TAKEN_OVER).increment(1);
            peer_event!(INFO, device = ?device.name, "mqtt session taken over by a new session of its device");
            match old {
                Holder::Connection(outbound) => outbound.close(CloseReason::TakenOver),
                Holder::Gateway(gateway) => gateway.pushed_out(),
            }
        }
        Seat {
            admission: self.clone(),
            device: device.id,
            id,
        }
    }
}

impl actors::ports::DeviceSessions for Admission {
    fn close(&self, device: DeviceId) {
        let holders: Vec<Holder> = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_device
            .get(&device)
            .map(|live| live.iter().map(|(_, holder)| holder.clone()).collect())
            .unwrap_or_default();
        for holder in holders {
            match holder {
                Holder::Connection(outbound) => outbound.close(CloseReason::Administrative),
                Holder::Gateway(gateway) => gateway.pushed_out(),
            }
        }
    }
}

impl Admission {
    /// The way back to the newest session of `device` on this node, if it is connected on a
    /// connection of its own.
    pub(super) fn newest(&self, device: DeviceId) -> Option<Outbound> {
        match self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .newest(device)
        {
            Some(Holder::Connection(outbound)) => Some(outbound.clone()),
            _ => None,
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
        gauge!(MQTT_CONNECTIONS_OPEN).decrement(1.0);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.admission
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leave(self.device, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_past_its_sessions_pushes_out_the_oldest() {
        let (a, b) = (
            DeviceId(uuid::Uuid::from_u128(1)),
            DeviceId(uuid::Uuid::from_u128(2)),
        );
        let mut one = Sessions::new(1);
        let (a1, out) = one.join(a, "a1");
        assert!(out.is_empty());
        let (_, out) = one.join(b, "b1");
        assert!(out.is_empty(), "another device has its own place");
        let (a2, out) = one.join(a, "a2");
        assert_eq!(out, ["a1"]);
        one.leave(a, a1); // the pushed-out session ends later: nothing to do
        let (_, out) = one.join(a, "a3");
        assert_eq!(out, ["a2"]);
        one.leave(a, a2);
        assert_eq!(
            one.newest(a),
            Some(&"a3"),
            "the way back is the newest session's"
        );
        assert_eq!(one.newest(b), Some(&"b1"));
        assert_eq!(one.newest(DeviceId(uuid::Uuid::from_u128(3))), None);

        let mut two = Sessions::new(2);
        let (x1, _) = two.join(a, "x1");
        two.join(a, "x2");
        two.leave(a, x1);
        let (_, out) = two.join(a, "x3");
        assert!(out.is_empty(), "a session that ended frees its place");
        let (_, out) = two.join(a, "x4");
        assert_eq!(out, ["x2"]);
        assert_eq!(two.by_device[&a].len(), 2);
    }

    #[test]
    fn ended_sessions_leave_nothing_behind() {
        let a = DeviceId(uuid::Uuid::from_u128(1));
        let mut sessions = Sessions::new(1);
        let ids: Vec<u64> = (0..100).map(|i| sessions.join(a, i).0).collect();
        for id in ids {
            sessions.leave(a, id);
        }
        assert!(sessions.by_device.is_empty());
    }

    #[test]
    fn the_socket_budget_keeps_the_reserve_for_everything_else() {
        assert_eq!(socket_budget(1_048_576, 1024), 1_047_552);
        assert_eq!(socket_budget(20_000, 1024), 18_976);
        // Too small a limit for the whole reserve: half of it each.
        assert_eq!(socket_budget(1024, 1024), 512);
        assert_eq!(socket_budget(u64::MAX, 1024), usize::MAX - 1024);
        assert_eq!(connection_cap(100_000, 1_047_552), 100_000);
        assert_eq!(connection_cap(100_000, 18_976), 17_790);
        assert_eq!(connection_cap(100_000, 0), 1);
    }
}
