//! `SessionHandle`, what a transport holds for one connected device: the uplink hand-off to the
//! queue and the address of the device's [`DeviceSession`] actor.
//!
//! Uplinks do not go through the actor. A publish takes a [`Ticket`] from the session's
//! [`Bound`] (at most `mailbox_capacity` publishes wait, and the wait is measured), then its turn
//! (a fair lock, so publishes reach the queue in the order they arrived), then hands the payload
//! to [`Ingress`] on the caller's own task and returns the [`Accepted`] the transport awaits
//! before acknowledging. Against the former actor `call` this saves, per publish, a boxed
//! message, a oneshot channel and two task wake-ups (see ARCHITECTURE.md for the measurements).
//!
//! The actor holds the session's state and handles its control messages (server-to-device
//! messages today). It runs while the device is active: spawned on its first publish or control
//! message, passivated ([`SessionHandle::hibernate`]) when the device goes quiet, so an idle
//! connected device costs no actor (ractor's task, mailbox and channels would be most of a
//! connection's memory).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use metrics::{counter, gauge};
use ractor::{Actor, ActorCell, ActorRef};
use thiserror::Error;
use tokio::sync::Mutex;

use super::device::{DeviceSession, DeviceSessionArgs, SessionMsg};
use super::outbound::{Downlink, Outbound};
use super::supervisor::SupervisorMsg;
use crate::ingress::{Accepted, Ingress, Rejection, Transport, Uplink};
use crate::mailbox::Bound;
use crate::metrics::{SESSIONS_ACTIVE, SESSIONS_CLOSED, SESSIONS_HIBERNATED, SESSIONS_OPENED};
use crate::model::Device;

/// Control messages that may wait in an awake actor's mailbox. Each is passed on to the
/// connection's outbound channel, which holds the real bound (`mqtt.outbound_capacity`); this
/// only lets a burst (a few RPCs at once) queue while the actor waits for room there.
const CONTROL_CAPACITY: usize = 16;

#[derive(Clone)]
pub struct SessionArgs {
    pub device: Arc<Device>,
    pub ingress: Arc<Ingress>,
    pub transport: Transport,
    /// The connection's way back to the device.
    pub outbound: Outbound,
}

/// Counts the session as active for exactly as long as its connection holds it, awake or
/// hibernating.
struct ActiveGuard(Transport);

impl ActiveGuard {
    fn open(transport: Transport) -> ActiveGuard {
        counter!(SESSIONS_OPENED, "transport" => transport.as_str()).increment(1);
        gauge!(SESSIONS_ACTIVE, "transport" => transport.as_str()).increment(1.0);
        ActiveGuard(transport)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        counter!(SESSIONS_CLOSED, "transport" => self.0.as_str()).increment(1);
        gauge!(SESSIONS_ACTIVE, "transport" => self.0.as_str()).decrement(1.0);
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum SessionError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The session failed (crashed or stopped): the connection must close.
    #[error("session is gone")]
    Gone,
}

/// An awake actor and the bound of its mailbox.
struct Awake {
    actor: ActorRef<SessionMsg>,
    control: Bound,
}

pub struct SessionHandle {
    supervisor: ActorCell,
    args: SessionArgs,
    /// `None` while hibernating. A tokio mutex, held across the spawn, so concurrent control
    /// messages wait for the one actor instead of spawning two.
    actor: Mutex<Option<Awake>>,
    /// Publishes handed over and not yet in the queue.
    uplinks: Bound,
    /// Whose turn it is to reach the queue: tokio's mutex is fair (first come, first served),
    /// which keeps the device's order.
    turn: Mutex<()>,
    /// The uplink path panicked once: the session is gone.
    failed: AtomicBool,
    /// Whether `actor` holds one (read without the lock on every publish).
    awake: AtomicBool,
    _active: ActiveGuard,
}

impl SessionHandle {
    /// Opens the session of one connection; its actor, linked to `supervisor`, is spawned on
    /// the runtime of the first publish or control message, so a session lives on the same
    /// thread as its connection.
    pub fn open(supervisor: ActorCell, args: SessionArgs, mailbox_capacity: usize) -> Self {
        SessionHandle {
            supervisor,
            _active: ActiveGuard::open(args.transport),
            args,
            actor: Mutex::new(None),
            uplinks: Bound::new("session", mailbox_capacity),
            turn: Mutex::new(()),
            failed: AtomicBool::new(false),
            awake: AtomicBool::new(false),
        }
    }

    /// Hands one uplink to the queue, after every uplink this session received before it;
    /// waits while the session's bound or the queue is full.
    pub async fn publish<P: AsRef<[u8]>>(
        &self,
        uplink: Uplink,
        payload: P,
    ) -> Result<Accepted, SessionError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(SessionError::Gone);
        }
        if !self.awake.load(Ordering::Relaxed) {
            // A device that publishes is active: its actor is up for what the server sends back.
            self.actor().await?;
        }
        let ticket = self.uplinks.ticket().await.ok_or(SessionError::Gone)?;
        let turn = self.turn.lock().await;
        let args = &self.args;
        let handed = AssertUnwindSafe(args.ingress.publish(
            &args.device,
            args.transport,
            uplink,
            payload.as_ref(),
        ))
        .catch_unwind()
        .await;
        drop(turn);
        drop(ticket);
        match handed {
            Ok(result) => Ok(result?),
            Err(panic) => {
                self.fail(&*panic);
                Err(SessionError::Gone)
            }
        }
    }

    /// The uplink path panicked: the session is gone, and its supervisor counts and logs it as
    /// it does a crashed actor.
    fn fail(&self, panic: &(dyn std::any::Any + Send)) {
        if self.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        let error = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let _ = self.supervisor.send_message(SupervisorMsg::Failed {
            device: self.args.device.name.clone(),
            error,
        });
    }

    /// Hands a server-to-device message to the session; waits while its mailbox is full (and
    /// that fills while the connection's outbound channel is full).
    pub async fn downlink(&self, downlink: Downlink) -> Result<(), SessionError> {
        let (actor, control) = self.actor().await?;
        let ticket = control.ticket().await.ok_or(SessionError::Gone)?;
        actor
            .send_message(SessionMsg::Downlink { downlink, ticket })
            .map_err(|_| SessionError::Gone)
    }

    /// The connection's outbound channel: the one way in for anything sent to the device.
    pub fn outbound(&self) -> &Outbound {
        &self.args.outbound
    }

    /// The live actor, spawned if the session hibernates. A crashed actor is not replaced: its
    /// stale reference answers [`SessionError::Gone`] and the connection closes.
    async fn actor(&self) -> Result<(ActorRef<SessionMsg>, Bound), SessionError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(SessionError::Gone);
        }
        let mut slot = self.actor.lock().await;
        if let Some(awake) = slot.as_ref() {
            return Ok((awake.actor.clone(), awake.control.clone()));
        }
        let args = DeviceSessionArgs {
            device: self.args.device.clone(),
            outbound: self.args.outbound.clone(),
        };
        let (actor, _join) =
            Actor::spawn_linked(None, DeviceSession, args, self.supervisor.clone())
                .await
                .map_err(|_| SessionError::Gone)?;
        let control = Bound::new("session_control", CONTROL_CAPACITY);
        *slot = Some(Awake {
            actor: actor.clone(),
            control: control.clone(),
        });
        self.awake.store(true, Ordering::Relaxed);
        Ok((actor, control))
    }

    /// Passivates the session actor if nothing waits in its mailbox; the next publish or control
    /// message spawns a new one. The transport calls this when the device shows it is idle (an MQTT
    /// PINGREQ, which clients send only after a keep-alive period without other packets).
    /// Returns whether an actor was stopped.
    pub fn hibernate(&self) -> bool {
        let Ok(mut slot) = self.actor.try_lock() else {
            return false;
        };
        if !slot.as_ref().is_some_and(|awake| awake.control.is_idle()) {
            return false;
        }
        match slot.take() {
            Some(awake) => {
                self.awake.store(false, Ordering::Relaxed);
                let _ = awake.actor.drain();
                counter!(SESSIONS_HIBERNATED, "transport" => self.args.transport.as_str())
                    .increment(1);
                true
            }
            None => false,
        }
    }

    /// Whether a session actor is running now (false while hibernating).
    pub fn is_awake(&self) -> bool {
        self.actor
            .try_lock()
            .map(|slot| slot.is_some())
            .unwrap_or(true)
    }
}

impl Drop for SessionHandle {
    /// The connection is gone, but what it handed over is not dropped: the actor works through
    /// its mailbox, then stops.
    fn drop(&mut self) {
        if let Some(awake) = self.actor.get_mut().take() {
            let _ = awake.actor.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessToken, DeviceId, KvValue, MessageBody, TenantId};
    use crate::session::outbound::{self, DownlinkQos, OutboundMeters, OutboundReceiver, Pending};
    use crate::session::supervisor::{SessionSupervisor, SupervisorMsg};
    use crate::testing::MemProducer;

    fn device(name: &str) -> Arc<Device> {
        let tenant = TenantId::from_name("t");
        Arc::new(Device {
            id: DeviceId::derive(tenant, name),
            tenant_id: tenant,
            name: name.into(),
            device_type: "default".into(),
            label: None,
            token: AccessToken(format!("{name}-token")),
            created_time: 0,
            additional_info: None,
        })
    }

    async fn setup(producer: Arc<MemProducer>) -> (ActorRef<SupervisorMsg>, Arc<Ingress>) {
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, ())
            .await
            .expect("supervisor starts");
        (supervisor, Arc::new(Ingress::new(producer, 1024)))
    }

    /// A session and the writer's end of its connection's outbound channel.
    struct Session {
        handle: SessionHandle,
        writer: OutboundReceiver,
    }

    impl std::ops::Deref for Session {
        type Target = SessionHandle;

        fn deref(&self) -> &SessionHandle {
            &self.handle
        }
    }

    async fn session(
        supervisor: &ActorRef<SupervisorMsg>,
        ingress: &Arc<Ingress>,
        name: &str,
    ) -> Session {
        let (outbound, writer) = outbound::channel(4, OutboundMeters::new());
        let args = SessionArgs {
            device: device(name),
            ingress: ingress.clone(),
            transport: Transport::Mqtt,
            outbound,
        };
        Session {
            handle: SessionHandle::open(supervisor.get_cell(), args, 4),
            writer,
        }
    }

    fn rpc(n: u8) -> Downlink {
        Downlink {
            topic: format!("v1/devices/me/rpc/request/{n}"),
            payload: b"{}".to_vec(),
            qos: DownlinkQos::AtLeastOnce,
            tracked: None,
        }
    }

    /// A queue that records what it is sent at once and reports delivery only when the test
    /// releases it, as Kafka reports a record's delivery some time after taking it.
    struct HeldProducer {
        sent: std::sync::Mutex<Vec<crate::model::SharedMessage>>,
        delivered: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait::async_trait]
    impl crate::ports::Producer for HeldProducer {
        async fn send(
            &self,
            message: crate::model::SharedMessage,
        ) -> Result<crate::ports::Delivery, crate::ports::QueueError> {
            self.sent.lock().expect("not poisoned").push(message);
            let delivered = self.delivered.clone();
            Ok(crate::ports::Delivery::Pending(Box::pin(async move {
                let permit = delivered
                    .acquire()
                    .await
                    .map_err(|_| crate::ports::QueueError::Closed)?;
                permit.forget();
                Ok(())
            })))
        }
    }

    /// A full queue: `send` waits until the test opens it, one message per permit.
    struct FullQueue {
        room: tokio::sync::Semaphore,
        sent: std::sync::Mutex<Vec<crate::model::SharedMessage>>,
    }

    #[async_trait::async_trait]
    impl crate::ports::Producer for FullQueue {
        async fn send(
            &self,
            message: crate::model::SharedMessage,
        ) -> Result<crate::ports::Delivery, crate::ports::QueueError> {
            self.room
                .acquire()
                .await
                .map_err(|_| crate::ports::QueueError::Closed)?
                .forget();
            self.sent.lock().expect("not poisoned").push(message);
            Ok(crate::ports::Delivery::Done(Ok(())))
        }
    }

    fn telemetry_value(message: &crate::model::SharedMessage) -> KvValue {
        match &message.body {
            MessageBody::Telemetry(records) => records[0].entries[0].value.clone(),
            other => panic!("not telemetry: {other:?}"),
        }
    }

    #[tokio::test]
    async fn telemetry_reaches_the_queue_before_the_reply() {
        let producer = Arc::new(HeldProducer {
            sent: std::sync::Mutex::default(),
            delivered: Arc::new(tokio::sync::Semaphore::new(0)),
        });
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, ())
            .await
            .expect("supervisor starts");
        let ingress = Arc::new(Ingress::new(producer.clone(), 1024));
        let s = session(&supervisor, &ingress, "d1").await;
        let accepted = s
            .publish(Uplink::Telemetry, br#"{"t":1}"#.to_vec())
            .await
            .expect("accepted");
        // The reply came: the queue already holds the message...
        let sent = producer.sent.lock().expect("not poisoned").clone();
        assert_eq!(sent.len(), 1, "the session replied before enqueueing");
        assert_eq!(sent[0].device_id, device("d1").id);
        let MessageBody::Telemetry(records) = &sent[0].body else {
            panic!("not telemetry")
        };
        assert_eq!(records[0].entries[0].value, KvValue::Long(1));
        // ...and the acknowledgement still waits for the queue's delivery report.
        let mut confirmed = Box::pin(accepted.confirmed());
        assert!(
            (&mut confirmed).now_or_never().is_none(),
            "confirmed before the queue reported delivery"
        );
        producer.delivered.add_permits(1);
        confirmed.await.expect("confirmed once delivered");
    }

    /// Publishes handed over while the queue is full reach it in the order they came, and no
    /// more than the session's bound wait.
    #[tokio::test]
    async fn uplinks_keep_their_order_while_the_queue_makes_them_wait() {
        let producer = Arc::new(FullQueue {
            room: tokio::sync::Semaphore::new(0),
            sent: std::sync::Mutex::default(),
        });
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, ())
            .await
            .expect("supervisor starts");
        let ingress = Arc::new(Ingress::new(producer.clone(), 1024));
        let s = session(&supervisor, &ingress, "d1").await;
        let publishes: Vec<_> = (1..=4)
            .map(|t| Box::pin(s.publish(Uplink::Telemetry, format!(r#"{{"t":{t}}}"#))))
            .collect();
        let mut all = Box::pin(futures::future::join_all(publishes));
        assert!((&mut all).now_or_never().is_none(), "the queue is full");
        assert!(!s.uplinks.is_idle(), "the waiting publishes hold the bound");
        let mut fifth = Box::pin(s.publish(Uplink::Telemetry, r#"{"t":5}"#));
        assert!(
            (&mut fifth).now_or_never().is_none(),
            "past the bound a publish waits for a place"
        );
        producer.room.add_permits(5);
        for accepted in all.await {
            accepted.expect("accepted").confirmed().await.expect("ok");
        }
        fifth
            .await
            .expect("accepted")
            .confirmed()
            .await
            .expect("ok");
        let values: Vec<KvValue> = producer
            .sent
            .lock()
            .expect("not poisoned")
            .iter()
            .map(telemetry_value)
            .collect();
        assert_eq!(values, (1..=5).map(KvValue::Long).collect::<Vec<_>>());
        assert!(s.uplinks.is_idle());
        assert!(s.is_awake(), "a publishing device's actor is up");
    }

    #[tokio::test]
    async fn a_bad_payload_is_rejected_and_the_session_lives_on() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        let err = s.publish(Uplink::Telemetry, b"{oops".to_vec()).await.err();
        assert!(
            matches!(err, Some(SessionError::Rejected(Rejection::Payload(_)))),
            "{err:?}"
        );
        let too_big = vec![b' '; 2000];
        let err = s.publish(Uplink::Attributes, too_big).await.err();
        assert!(matches!(
            err,
            Some(SessionError::Rejected(Rejection::TooLarge { .. }))
        ));
        s.publish(Uplink::Attributes, br#"{"fw":"v1.0"}"#.to_vec())
            .await
            .expect("the session lives on")
            .confirmed()
            .await
            .expect("confirmed");
        let sent = producer.messages();
        assert_eq!(sent.len(), 1, "only the good message reached the queue");
        let MessageBody::Attributes { entries, .. } = &sent[0].body else {
            panic!("not attributes: {:?}", sent[0].body)
        };
        assert_eq!(entries[0].key, "fw");
        assert_eq!(entries[0].value, KvValue::String("v1.0".into()));
    }

    #[tokio::test]
    async fn a_crashed_session_affects_no_other() {
        let producer = Arc::new(MemProducer::default());
        producer.panic_for(device("crasher").id);
        let (supervisor, ingress) = setup(producer.clone()).await;
        let crasher = session(&supervisor, &ingress, "crasher").await;
        let healthy = session(&supervisor, &ingress, "healthy").await;

        let err = crasher
            .publish(Uplink::Telemetry, br#"{"t":1}"#.to_vec())
            .await
            .err();
        assert_eq!(err, Some(SessionError::Gone));
        let again = crasher
            .publish(Uplink::Telemetry, br#"{"t":2}"#.to_vec())
            .await
            .err();
        assert_eq!(again, Some(SessionError::Gone));

        let ok = healthy
            .publish(Uplink::Telemetry, br#"{"t":3}"#.to_vec())
            .await;
        ok.expect("healthy session works")
            .confirmed()
            .await
            .expect("confirmed");
        assert_eq!(producer.messages().len(), 1);

        let stats = ractor::call!(supervisor, SupervisorMsg::Stats).expect("supervisor alive");
        assert_eq!(stats.failed, 1);
    }

    #[tokio::test]
    async fn a_downlink_goes_through_the_actor_to_the_outbound_channel() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        assert!(!s.is_awake(), "no actor before the first control message");
        s.downlink(rpc(1)).await.expect("taken");
        assert_eq!(s.writer.wait().await, Pending::Message);
        assert_eq!(s.writer.take(), Some(rpc(1)));
        assert!(s.is_awake());
    }

    #[tokio::test]
    async fn an_idle_session_hibernates_and_wakes_on_the_next_publish() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        assert!(!s.is_awake(), "no actor before the first publish");

        for t in 1..=2 {
            let payload = format!(r#"{{"t":{t}}}"#).into_bytes();
            let accepted = s.publish(Uplink::Telemetry, payload).await;
            accepted.expect("accepted").confirmed().await.expect("ok");
            assert!(s.is_awake());
            assert!(s.hibernate(), "an idle session hibernates");
            assert!(!s.is_awake());
            assert!(!s.hibernate(), "nothing left to passivate");
        }
        let values: Vec<KvValue> = producer.messages().iter().map(telemetry_value).collect();
        assert_eq!(values, [KvValue::Long(1), KvValue::Long(2)]);
        let stats = ractor::call!(supervisor, SupervisorMsg::Stats).expect("supervisor alive");
        assert_eq!(stats.failed, 0, "passivation is not a failure");
    }

    #[tokio::test]
    async fn an_idle_session_hibernates_and_wakes_on_the_next_control_message() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        assert!(!s.hibernate(), "nothing to passivate");

        for n in 1..=2 {
            s.downlink(rpc(n)).await.expect("taken");
            assert_eq!(s.writer.wait().await, Pending::Message);
            assert_eq!(s.writer.take(), Some(rpc(n)));
            // The ticket is given back once the channel took the message.
            while !s.hibernate() {
                tokio::task::yield_now().await;
            }
            assert!(!s.is_awake());
            assert!(!s.hibernate(), "nothing left to passivate");
        }
        let stats = ractor::call!(supervisor, SupervisorMsg::Stats).expect("supervisor alive");
        assert_eq!(stats.failed, 0, "passivation is not a failure");
    }

    #[tokio::test]
    async fn a_session_with_a_control_message_in_its_mailbox_stays_awake() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        s.downlink(rpc(1)).await.expect("taken");
        let (_, control) = s.actor().await.expect("awake");
        let waiting = control.ticket().await.expect("room");
        assert!(!s.hibernate());
        assert!(s.is_awake());
        drop(waiting);
        while !s.hibernate() {
            tokio::task::yield_now().await;
        }
    }

    /// A full outbound channel holds the actor back, and through its bounded mailbox whoever
    /// sends downlinks: nothing past the two bounds is taken.
    #[tokio::test]
    async fn a_device_that_does_not_read_holds_back_its_downlinks() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        let capacity = s.outbound().capacity();
        let mut sent = 0u8;
        let blocked = loop {
            let mut next = Box::pin(s.downlink(rpc(sent)));
            // Let the actor move what it can into the channel before deciding.
            let mut polls = 0;
            let done = loop {
                if (&mut next).now_or_never().is_some() {
                    break true;
                }
                polls += 1;
                if polls > 100 {
                    break false;
                }
                tokio::task::yield_now().await;
            };
            if !done {
                break next;
            }
            sent += 1;
        };
        assert_eq!(s.outbound().len(), capacity, "the channel is full");
        // The actor holds one message (and its ticket) while it waits for room, its mailbox
        // the rest of its tickets.
        assert_eq!(usize::from(sent), capacity + CONTROL_CAPACITY);
        assert_eq!(s.writer.take(), Some(rpc(0)));
        blocked.await.expect("a place freed");
    }

    /// A session counts as active from its connection's open to its close, and a closed
    /// connection's actor works through its mailbox and stops: nothing of it stays behind.
    #[tokio::test]
    async fn a_closed_session_is_counted_and_its_actor_stops() {
        use crate::metrics::{SESSIONS_ACTIVE, SESSIONS_CLOSED, SESSIONS_OPENED};
        let recorded = crate::test_metrics::Recorded::start();
        let mqtt = [("transport", "mqtt")];
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        assert_eq!(recorded.gauge(SESSIONS_ACTIVE, &mqtt), 1.0);
        s.publish(Uplink::Telemetry, br#"{"t":1}"#.to_vec())
            .await
            .expect("accepted")
            .confirmed()
            .await
            .expect("stored");
        s.downlink(rpc(1)).await.expect("taken");
        let (actor, _) = s.actor().await.expect("awake");
        let Session { handle, writer } = s;
        drop(handle);
        assert_eq!(recorded.gauge(SESSIONS_ACTIVE, &mqtt), 0.0);
        assert_eq!(recorded.counter(SESSIONS_OPENED, &mqtt), 1);
        assert_eq!(recorded.counter(SESSIONS_CLOSED, &mqtt), 1);
        let waited = std::time::Instant::now();
        while actor.get_status() != ractor::ActorStatus::Stopped {
            // Only bounds a hang: the actor stops as soon as its mailbox is empty.
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(60),
                "the closed session's actor is still {:?}",
                actor.get_status()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(producer.messages().len(), 1);
        assert_eq!(
            writer.take(),
            Some(rpc(1)),
            "the drained actor passed it on"
        );
    }
}
