//! The MQTT 5 adapter: ntex-mqtt's v5 packets to the connection core's calls, and the core's
//! outcomes to MQTT 5's reason codes (CONNACK, PUBACK, SUBACK, UNSUBACK, DISCONNECT), each
//! table a plain function.

use std::sync::Arc;

use actors::ingress::RejectionKind;
use actors::metrics::{CONNECTIONS_REFUSED, MQTT_PROTOCOL_ERRORS};
use actors::session::outbound::CloseReason;
use metrics::counter;
use ntex::service::{Service, ServiceCtx};
use ntex_mqtt::error::DispatcherError;
use ntex_mqtt::v5::codec::{
    ConnectAckReason, DisconnectReasonCode, PublishAckReason, SubscribeAckReason,
    UnsubscribeAckReason,
};
use ntex_mqtt::{QoS, v5};

use super::core::{Connection, Fault, Login, Node, Published};
use super::peer_log::peer_event;
use super::topics::FilterRefusal;
use super::{OneConnectService, second_connect, writer};

impl TryFrom<Fault> for v5::PublishAck {
    type Error = Fault;

    fn try_from(fault: Fault) -> Result<Self, Fault> {
        Err(fault)
    }
}

/// The CONNACK reason of a refused login.
fn connack_reason(login: &Login) -> Option<ConnectAckReason> {
    match login {
        Login::Device(_) => None,
        Login::EmptyToken => Some(ConnectAckReason::BadUserNameOrPassword),
        Login::UnknownToken => Some(ConnectAckReason::NotAuthorized),
        Login::Unavailable => Some(ConnectAckReason::ServerUnavailable),
    }
}

/// The PUBACK reason of a PUBLISH's outcome; `None` closes the connection (the queue cannot
/// take it: ntex-mqtt then sends DISCONNECT 0x83).
fn puback_reason(published: &Published) -> Option<PublishAckReason> {
    match published {
        Published::Queued => Some(PublishAckReason::Success),
        Published::UnknownTopic => Some(PublishAckReason::TopicNameInvalid),
        Published::Refused(rejection) => match rejection.kind() {
            RejectionKind::BadPayload => Some(PublishAckReason::PayloadFormatInvalid),
            RejectionKind::TooLarge | RejectionKind::Quota => Some(PublishAckReason::QuotaExceeded),
            RejectionKind::Unavailable => None,
        },
    }
}

/// The SUBACK reason of a subscription.
fn suback_reason(granted: Result<QoS, FilterRefusal>) -> SubscribeAckReason {
    match granted {
        Ok(QoS::AtMostOnce) => SubscribeAckReason::GrantedQos0,
        Ok(QoS::AtLeastOnce) => SubscribeAckReason::GrantedQos1,
        Ok(QoS::ExactlyOnce) => SubscribeAckReason::GrantedQos2,
        // ThingsBoard answers every refused filter 0x8F, well-formed or not.
        Err(FilterRefusal::Malformed | FilterRefusal::NotServed) => {
            SubscribeAckReason::TopicFilterInvalid
        }
    }
}

/// The UNSUBACK reason of an unsubscription.
fn unsuback_reason(had: bool) -> UnsubscribeAckReason {
    if had {
        UnsubscribeAckReason::Success
    } else {
        UnsubscribeAckReason::NoSubscriptionExisted
    }
}

/// The DISCONNECT reason of a connection the server closes.
pub(super) fn close_reason(reason: CloseReason) -> DisconnectReasonCode {
    match reason {
        CloseReason::TakenOver => DisconnectReasonCode::SessionTakenOver,
    }
}

/// The DISCONNECT reason of a fault that has its own (ntex-mqtt answers the rest with 0x83).
fn fault_reason(fault: &Fault) -> Option<DisconnectReasonCode> {
    match fault {
        Fault::BadTopic(bad) => Some(bad.reason()),
        Fault::UnexpectedAuth => Some(DisconnectReasonCode::ProtocolError),
        Fault::Rejected(_) | Fault::SessionGone | Fault::Protocol(_) => None,
    }
}

pub(super) async fn handshake(
    node: Arc<Node>,
    hs: v5::Handshake,
) -> Result<v5::HandshakeAck<Connection>, Fault> {
    // Enhanced authentication (MQTT 5 §4.12) is not offered: whatever the method, 0x8C.
    if let Some(method) = &hs.packet().auth_method {
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "bad_auth_method")
            .increment(1);
        peer_event!(
            DEBUG,
            ?method,
            "mqtt 5 connect with an authentication method refused"
        );
        return Ok(hs.failed(ConnectAckReason::BadAuthenticationMethod));
    }
    let username = hs.packet().username.as_ref().map(|u| u.as_str().to_owned());
    // As ThingsBoard: Session Present whenever the client did not ask for a clean start.
    let session_present = !hs.packet().clean_start;
    let login = node.login(username.as_deref()).await;
    if let Some(reason) = connack_reason(&login) {
        return Ok(hs.failed(reason));
    }
    let Login::Device(device) = login else {
        return Ok(hs.failed(ConnectAckReason::UnspecifiedError));
    };
    let (sink, io) = (hs.sink(), hs.io().get_ref());
    let connection = node.open(device, move |outbound| {
        writer::v5_acks(&sink);
        writer::spawn(writer::Sink::new(sink, io), outbound);
    });
    // QoS 2 is granted as 1: MQTT 5 clients learn it from CONNACK's Maximum QoS.
    Ok(hs.ack(connection).with(|ack| {
        ack.max_qos = QoS::AtLeastOnce;
        ack.session_present = session_present;
    }))
}

pub(super) async fn publish(
    session: v5::Session<Connection>,
    publish: v5::Publish,
) -> Result<v5::PublishAck, Fault> {
    let published = session
        .publish(publish.publish_topic(), publish.read_all())
        .await?;
    match puback_reason(&published) {
        Some(reason) => Ok(publish.ack().reason_code(reason)),
        None => match published {
            Published::Refused(rejection) => Err(Fault::Rejected(rejection)),
            Published::Queued | Published::UnknownTopic => Ok(publish.ack()),
        },
    }
}

pub(super) async fn protocol(
    session: v5::Session<Connection>,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, Fault> {
    Ok(match msg {
        v5::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut sub in subscribe.iter_mut() {
                match suback_reason(session.subscribe(sub.topic(), sub.options().qos)) {
                    SubscribeAckReason::GrantedQos0 => sub.confirm(QoS::AtMostOnce),
                    SubscribeAckReason::GrantedQos1 => sub.confirm(QoS::AtLeastOnce),
                    SubscribeAckReason::GrantedQos2 => sub.confirm(QoS::ExactlyOnce),
                    refused => sub.fail(refused),
                }
            }
            subscribe.ack()
        }
        v5::ProtocolMessage::Unsubscribe(mut unsubscribe) => {
            for mut item in unsubscribe.iter_mut() {
                match unsuback_reason(session.unsubscribe(item.topic())) {
                    UnsubscribeAckReason::Success => item.success(),
                    other => item.fail(other),
                }
            }
            unsubscribe.ack()
        }
        v5::ProtocolMessage::PublishRelease(release) => release.ack(),
        v5::ProtocolMessage::Ping(ping) => {
            session.ping();
            ping.ack()
        }
        v5::ProtocolMessage::Disconnect(disconnect) => {
            session.disconnect().await;
            disconnect.ack()
        }
        // Enhanced authentication is not offered (CONNECT with a method gets 0x8C), so AUTH is a
        // protocol error. An error, not `disconnect_with`: ntex-mqtt closes the socket before
        // writing a DISCONNECT given that way.
        v5::ProtocolMessage::Auth(_) => {
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => "unexpected_auth").increment(1);
            return Err(Fault::UnexpectedAuth);
        }
    })
}

pub(super) async fn control(
    session: v5::Session<Connection>,
    msg: ntex_mqtt::Control<Fault>,
) -> Result<Option<v5::codec::Encoded>, Fault> {
    let ntex_mqtt::Control::Stop(reason) = msg else {
        return Ok(None);
    };
    let answer = match &reason {
        ntex_mqtt::Reason::Error(e) => fault_reason(e.get_ref()),
        _ => None,
    };
    session.stopped(&reason).await;
    Ok(answer.map(|code| v5::codec::Packet::from(v5::codec::Disconnect::new(code)).into()))
}

impl<S, E> Service<v5::codec::Decoded> for OneConnectService<S>
where
    S: Service<v5::codec::Decoded, Error = DispatcherError<E>>,
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
        req: v5::codec::Decoded,
        ctx: ServiceCtx<'_, Self>,
    ) -> Result<S::Response, S::Error> {
        if let v5::codec::Decoded::Packet(v5::codec::Packet::Connect(_), _) = req {
            return Err(second_connect());
        }
        ctx.call(&self.inner, req).await
    }
}

#[cfg(test)]
mod tests {
    use actors::ingress::{KeyKind, QuotaError, Rejection};
    use actors::payload::PayloadError;
    use actors::ports::QueueError;

    use super::super::topics::BadTopic;
    use super::*;

    #[test]
    fn connack_reasons() {
        let cases = [
            (
                Login::EmptyToken,
                Some(ConnectAckReason::BadUserNameOrPassword),
            ),
            (Login::UnknownToken, Some(ConnectAckReason::NotAuthorized)),
            (
                Login::Unavailable,
                Some(ConnectAckReason::ServerUnavailable),
            ),
        ];
        for (login, want) in cases {
            assert_eq!(connack_reason(&login), want);
        }
    }

    #[test]
    fn puback_reasons() {
        use PublishAckReason::*;
        let cases = [
            (Published::Queued, Some(Success)),
            (Published::UnknownTopic, Some(TopicNameInvalid)),
            (
                Published::Refused(Rejection::Payload(PayloadError::Empty)),
                Some(PayloadFormatInvalid),
            ),
            (
                Published::Refused(Rejection::TooLarge { size: 2, max: 1 }),
                Some(QuotaExceeded),
            ),
            (
                Published::Refused(Rejection::Quota(QuotaError::TooManyKeys {
                    kind: KeyKind::Telemetry,
                    max: 1,
                })),
                Some(QuotaExceeded),
            ),
            (
                Published::Refused(Rejection::Queue(QueueError::Closed)),
                None,
            ),
        ];
        for (published, want) in cases {
            assert_eq!(puback_reason(&published), want, "{published:?}");
        }
    }

    #[test]
    fn suback_and_unsuback_reasons() {
        let cases = [
            (Ok(QoS::AtMostOnce), SubscribeAckReason::GrantedQos0),
            (Ok(QoS::AtLeastOnce), SubscribeAckReason::GrantedQos1),
            (
                Err(FilterRefusal::NotServed),
                SubscribeAckReason::TopicFilterInvalid,
            ),
            (
                Err(FilterRefusal::Malformed),
                SubscribeAckReason::TopicFilterInvalid,
            ),
        ];
        for (granted, want) in cases {
            assert_eq!(suback_reason(granted), want, "{granted:?}");
        }
        assert_eq!(unsuback_reason(true), UnsubscribeAckReason::Success);
        assert_eq!(
            unsuback_reason(false),
            UnsubscribeAckReason::NoSubscriptionExisted
        );
    }

    #[test]
    fn disconnect_reasons() {
        assert_eq!(
            close_reason(CloseReason::TakenOver),
            DisconnectReasonCode::SessionTakenOver
        );
        let cases = [
            (
                Fault::BadTopic(BadTopic::Nul),
                Some(DisconnectReasonCode::MalformedPacket),
            ),
            (
                Fault::BadTopic(BadTopic::Empty),
                Some(DisconnectReasonCode::ProtocolError),
            ),
            (
                Fault::UnexpectedAuth,
                Some(DisconnectReasonCode::ProtocolError),
            ),
            (Fault::SessionGone, None),
            (Fault::Protocol("x".into()), None),
        ];
        for (fault, want) in cases {
            assert_eq!(fault_reason(&fault), want, "{fault:?}");
        }
    }
}
