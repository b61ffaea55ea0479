//! The session of one connected device (one MQTT connection).
//!
//! Receives `Publish` from the MQTT transport; the transport takes a [`Ticket`] from the
//! session's [`Bound`] first, so at most `mailbox_capacity` publishes wait here. Sends each
//! uplink through [`Ingress`] to the queue and replies with the [`Accepted`] the transport awaits
//! before it acknowledges. Linked to the [`SessionSupervisor`](crate::supervisor), so a crash
//! ends this connection and no other.

use std::marker::PhantomData;
use std::sync::Arc;

use metrics::{counter, gauge};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::ingress::{Accepted, Ingress, Rejection, Transport, Uplink};
use crate::mailbox::{Bound, Ticket};
use crate::metrics::{SESSIONS_ACTIVE, SESSIONS_CLOSED, SESSIONS_HIBERNATED, SESSIONS_OPENED};
use crate::model::Device;

/// `P` is the transport's payload buffer, handed over without a copy.
pub struct DeviceSession<P>(PhantomData<fn() -> P>);

#[derive(Clone)]
pub struct SessionArgs {
    pub device: Arc<Device>,
    pub ingress: Arc<Ingress>,
    pub transport: Transport,
}

pub struct SessionState {
    device: Arc<Device>,
    ingress: Arc<Ingress>,
    transport: Transport,
}

pub enum SessionMsg<P> {
    Publish {
        uplink: Uplink,
        payload: P,
        ticket: Ticket,
        reply: RpcReplyPort<Result<Accepted, Rejection>>,
    },
}

impl<P: AsRef<[u8]> + Send + 'static> Actor for DeviceSession<P> {
    type Msg = SessionMsg<P>;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        Ok(SessionState {
            device: args.device,
            ingress: args.ingress,
            transport: args.transport,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Publish {
                uplink,
                payload,
                ticket,
                reply,
            } => {
                let result = state
                    .ingress
                    .publish(&state.device, state.transport, uplink, payload.as_ref())
                    .await;
                drop(ticket);
                // The transport may have gone (connection closed); nothing to tell it then.
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
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
    /// The session actor is gone (crashed or stopped): the connection must close.
    #[error("session is gone")]
    Gone,
}

/// What the transport holds for one connection.
///
/// The session actor is spawned on the first publish and passivated ([`hibernate`]) when the
/// device goes quiet, so an idle connected device costs no actor: ractor's task, mailbox and
/// channels are most of a connection's memory (see the README's benchmark notes). Ordering is
/// kept: an actor is only passivated while nothing is in its mailbox, and the next publish
/// spawns a fresh one.
///
/// [`hibernate`]: SessionHandle::hibernate
pub struct SessionHandle<P> {
    supervisor: ActorCell,
    args: SessionArgs,
    /// `None` while hibernating. A tokio mutex, held across the spawn, so concurrent publishes
    /// wait for the one actor instead of spawning two.
    actor: Mutex<Option<ActorRef<SessionMsg<P>>>>,
    bound: Bound,
    _active: ActiveGuard,
}

impl<P: AsRef<[u8]> + Send + 'static> SessionHandle<P> {
    /// Opens the session of one connection; its actor, linked to `supervisor`, is spawned on
    /// the runtime of the first publish, so a session lives on the same thread as its
    /// connection.
    pub fn open(supervisor: ActorCell, args: SessionArgs, mailbox_capacity: usize) -> Self {
        SessionHandle {
            supervisor,
            _active: ActiveGuard::open(args.transport),
            args,
            actor: Mutex::new(None),
            bound: Bound::new("session", mailbox_capacity),
        }
    }

    /// Hands one uplink to the session; waits while its mailbox is full.
    pub async fn publish(&self, uplink: Uplink, payload: P) -> Result<Accepted, SessionError> {
        let ticket = self.bound.ticket().await.ok_or(SessionError::Gone)?;
        let actor = self.actor().await?;
        let reply = actor
            .call(
                |reply| SessionMsg::Publish {
                    uplink,
                    payload,
                    ticket,
                    reply,
                },
                None,
            )
            .await
            .map_err(|_| SessionError::Gone)?;
        match reply {
            ractor::rpc::CallResult::Success(result) => Ok(result?),
            _ => Err(SessionError::Gone),
        }
    }

    /// The live actor, spawned if the session hibernates. A crashed actor is not replaced: its
    /// stale reference answers [`SessionError::Gone`] and the connection closes.
    async fn actor(&self) -> Result<ActorRef<SessionMsg<P>>, SessionError> {
        let mut slot = self.actor.lock().await;
        if let Some(actor) = slot.as_ref() {
            return Ok(actor.clone());
        }
        let (actor, _join) = Actor::spawn_linked(
            None,
            DeviceSession::<P>(PhantomData),
            self.args.clone(),
            self.supervisor.clone(),
        )
        .await
        .map_err(|_| SessionError::Gone)?;
        *slot = Some(actor.clone());
        Ok(actor)
    }

    /// Passivates the session actor if nothing waits in its mailbox; the next publish spawns a
    /// new one. The transport calls this when the device shows it is idle (an MQTT PINGREQ,
    /// which clients send only after a keep-alive period without other packets). Returns whether
    /// an actor was stopped.
    pub fn hibernate(&self) -> bool {
        if !self.bound.is_idle() {
            return false;
        }
        let Ok(mut slot) = self.actor.try_lock() else {
            return false;
        };
        match slot.take() {
            Some(actor) => {
                let _ = actor.drain();
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

impl<P> Drop for SessionHandle<P> {
    /// The connection is gone, but what it handed over is not dropped: the session works
    /// through its mailbox, then stops. (`mosquitto_pub` sends PUBLISH and DISCONNECT
    /// back to back; the publish must still be stored.)
    fn drop(&mut self) {
        if let Some(actor) = self.actor.get_mut().take() {
            let _ = actor.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessToken, DeviceId, KvValue, MessageBody, TenantId};
    use crate::supervisor::{SessionSupervisor, SupervisorMsg};
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
        })
    }

    async fn setup(producer: Arc<MemProducer>) -> (ActorRef<SupervisorMsg>, Arc<Ingress>) {
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, ())
            .await
            .expect("supervisor starts");
        (supervisor, Arc::new(Ingress::new(producer, 1024)))
    }

    async fn session(
        supervisor: &ActorRef<SupervisorMsg>,
        ingress: &Arc<Ingress>,
        name: &str,
    ) -> SessionHandle<Vec<u8>> {
        let args = SessionArgs {
            device: device(name),
            ingress: ingress.clone(),
            transport: Transport::Mqtt,
        };
        SessionHandle::open(supervisor.get_cell(), args, 4)
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

    #[tokio::test]
    async fn telemetry_reaches_the_queue_before_the_reply() {
        use futures::FutureExt;

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
        s.publish(Uplink::Attributes, br#"{"fw":"1.0"}"#.to_vec())
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
        assert_eq!(entries[0].value, KvValue::String("1.0".into()));
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

        let values: Vec<KvValue> = producer
            .messages()
            .iter()
            .map(|m| match &m.body {
                MessageBody::Telemetry(records) => records[0].entries[0].value.clone(),
                _ => panic!("not telemetry"),
            })
            .collect();
        assert_eq!(values, [KvValue::Long(1), KvValue::Long(2)]);
        let stats = ractor::call!(supervisor, SupervisorMsg::Stats).expect("supervisor alive");
        assert_eq!(stats.failed, 0, "passivation is not a failure");
    }

    #[tokio::test]
    async fn a_session_with_a_publish_in_its_mailbox_stays_awake() {
        let producer = Arc::new(MemProducer::default());
        let (supervisor, ingress) = setup(producer.clone()).await;
        let s = session(&supervisor, &ingress, "d1").await;
        s.publish(Uplink::Telemetry, br#"{"t":1}"#.to_vec())
            .await
            .expect("accepted");
        let waiting = s.bound.ticket().await.expect("room");
        assert!(!s.hibernate());
        assert!(s.is_awake());
        drop(waiting);
        assert!(s.hibernate());
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
        let actor = s.actor.lock().await.clone().expect("awake");
        drop(s);
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
    }
}
