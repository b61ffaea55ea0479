//! The MQTT 3.1.1 adapter: ntex-mqtt's v3 packets to the connection core's calls, and the
//! core's outcomes to 3.1.1's few answers (CONNACK return codes, SUBACK 0x80, closing the
//! connection where 3.1.1 has no way to refuse one message).

use std::sync::Arc;

use ntex::service::{Service, ServiceCtx};
use ntex_mqtt::error::DispatcherError;
use ntex_mqtt::v3;

use super::core::{Connection, Fault, Login, Node, Published};
use super::{OneConnectService, second_connect, writer};

pub(super) async fn handshake(
    node: Arc<Node>,
    hs: v3::Handshake,
) -> Result<v3::HandshakeAck<Connection>, Fault> {
    let username = hs.packet().username.as_ref().map(|u| u.as_str().to_owned());
    // ThingsBoard's CONNACK claims a session whenever the client asked to keep one
    // (`!cleanSession`), though it keeps none; clients are used to it.
    let session_present = !hs.packet().clean_session;
    Ok(match node.login(username.as_deref()).await {
        Login::Device(device) => {
            let (sink, io) = (hs.sink(), hs.io().get_ref());
            let connection = node.open(device, move |outbound| {
                writer::v3_acks(&sink);
                writer::spawn(writer::Sink::new(sink, io), outbound);
            });
            hs.ack(connection, session_present)
        }
        Login::EmptyToken => hs.bad_username_or_pwd(),
        Login::UnknownToken => hs.not_authorized(),
        Login::Unavailable => hs.service_unavailable(),
    })
}

/// The answer to a PUBLISH: `Ok` is a PUBACK (QoS 1), an error closes the connection, as MQTT
/// 3.1.1 has no way to refuse one message. An unknown topic is acknowledged and dropped
/// (ThingsBoard's behaviour).
fn answer(published: Published) -> Result<(), Fault> {
    match published {
        Published::Queued | Published::UnknownTopic => Ok(()),
        Published::Refused(rejection) => Err(Fault::Rejected(rejection)),
    }
}

pub(super) async fn publish(
    session: v3::Session<Connection>,
    publish: v3::Publish,
) -> Result<(), Fault> {
    answer(
        session
            .publish(publish.publish_topic(), publish.read_all())
            .await?,
    )
}

pub(super) async fn protocol(
    session: v3::Session<Connection>,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, Fault> {
    Ok(match msg {
        v3::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut sub in subscribe.iter_mut() {
                match session.subscribe(sub.topic(), sub.qos()) {
                    Ok(qos) => sub.confirm(qos),
                    Err(_) => sub.fail(),
                }
            }
            subscribe.ack()
        }
        v3::ProtocolMessage::Unsubscribe(unsubscribe) => {
            // 3.1.1's UNSUBACK has no per-filter result.
            for filter in unsubscribe.iter() {
                session.unsubscribe(filter);
            }
            unsubscribe.ack()
        }
        v3::ProtocolMessage::PublishRelease(release) => release.ack(),
        v3::ProtocolMessage::Ping(ping) => {
            session.ping();
            ping.ack()
        }
        v3::ProtocolMessage::Disconnect(disconnect) => {
            session.disconnect().await;
            disconnect.ack()
        }
    })
}

/// Connection-level events.
pub(super) async fn control(
    session: v3::Session<Connection>,
    msg: ntex_mqtt::Control<Fault>,
) -> Result<Option<v3::codec::Encoded>, Fault> {
    if let ntex_mqtt::Control::Stop(reason) = msg {
        session.stopped(&reason).await;
    }
    Ok(None)
}

impl<S, E> Service<v3::codec::Decoded> for OneConnectService<S>
where
    S: Service<v3::codec::Decoded, Error = DispatcherError<E>>,
{
    type Response = S::Response;
    type Error = S::Error;

    /// Boxed while it runs: ntex keeps a box the size of this future for the connection's
    /// life, and inline it would hold the whole pipeline's readiness (2.2 KiB per connection).
    async fn ready(&self, ctx: ServiceCtx<'_, Self>) -> Result<(), Self::Error> {
        Box::pin(ctx.ready(&self.inner)).await
    }
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(
        &self,
        req: v3::codec::Decoded,
        ctx: ServiceCtx<'_, Self>,
    ) -> Result<S::Response, S::Error> {
        if let v3::codec::Decoded::Packet(v3::codec::Packet::Connect(_), _) = req {
            return Err(second_connect());
        }
        ctx.call(&self.inner, req).await
    }
}

#[cfg(test)]
mod tests {
    use actors::ingress::Rejection;
    use actors::payload::PayloadError;
    use actors::ports::QueueError;
    use ntex_mqtt::QoS;

    use super::super::topics::{FilterRefusal, Subscriptions};
    use super::*;

    /// The SUBACK return code of a subscription (`sub.confirm(qos)` or `sub.fail()`).
    fn suback_code(granted: Result<QoS, FilterRefusal>) -> u8 {
        match granted {
            Ok(qos) => qos as u8,
            Err(_) => 0x80,
        }
    }

    #[test]
    fn what_is_acknowledged_and_what_closes_the_connection() {
        let cases = [
            (Published::Queued, true),
            (Published::UnknownTopic, true),
            (
                Published::Refused(Rejection::Payload(PayloadError::Empty)),
                false,
            ),
            (
                Published::Refused(Rejection::TooLarge { size: 2, max: 1 }),
                false,
            ),
            (
                Published::Refused(Rejection::Queue(QueueError::Closed)),
                false,
            ),
        ];
        for (published, want) in cases {
            let shown = format!("{published:?}");
            assert_eq!(answer(published).is_ok(), want, "{shown}");
        }
    }

    #[test]
    fn suback_codes() {
        let mut subs = Subscriptions::default();
        let cases = [
            ("v1/devices/me/attributes", QoS::ExactlyOnce, 0x01),
            ("v1/devices/me/rpc/request/+", QoS::AtMostOnce, 0x00),
            ("v1/devices/me/rpc/request/#", QoS::AtLeastOnce, 0x80),
            ("a/#/b", QoS::AtLeastOnce, 0x80),
        ];
        for (filter, qos, want) in cases {
            assert_eq!(suback_code(subs.subscribe(filter, qos)), want, "{filter}");
        }
    }
}
