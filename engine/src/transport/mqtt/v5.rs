//! The MQTT 5 adapter: ntex-mqtt's v5 codec's packets to the connection core's events, and the
//! core's outcomes to MQTT 5's reason codes (CONNACK, PUBACK, SUBACK, UNSUBACK, DISCONNECT), each
//! table a plain function. Topic aliases from the client are resolved here (at most
//! [`TOPIC_ALIAS_MAXIMUM`], announced in CONNACK).

use std::num::NonZeroU16;
use std::sync::Arc;
use std::task::{Context, Poll};

use actors::ingress::RejectionKind;
use actors::metrics::CONNECTIONS_REFUSED;
use actors::session::outbound::{CloseReason, Downlink};
use metrics::counter;
use ntex::io::Io;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::QoS;
use ntex_mqtt::v5::codec::{
    Codec, ConnectAck, ConnectAckReason, Decoded, Disconnect, DisconnectReasonCode, Encoded,
    Packet, Publish, PublishAck, PublishAck2, PublishAckReason, SubscribeAck, SubscribeAckReason,
    UnsubscribeAck, UnsubscribeAckReason,
};

use super::core::{Fault, Login, Node, Published};
use super::dispatch::{self, Event, Goodbye, Limits, Protocol, Unread};
use super::peer_log::peer_event;
use super::provisioning;
use super::topics::FilterRefusal;
use super::writer::Wire;

/// Topic aliases a client may set (CONNACK's Topic Alias Maximum).
pub(super) const TOPIC_ALIAS_MAXIMUM: u16 = 32;

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
/// take it: DISCONNECT 0x83).
fn puback_reason(published: &Published) -> Option<PublishAckReason> {
    match published {
        Published::Queued | Published::Unanswered => Some(PublishAckReason::Success),
        Published::UnknownTopic => Some(PublishAckReason::TopicNameInvalid),
        Published::Refused(rejection) => match rejection.kind() {
            RejectionKind::BadPayload => Some(PublishAckReason::PayloadFormatInvalid),
            RejectionKind::TooLarge | RejectionKind::Quota => Some(PublishAckReason::QuotaExceeded),
            RejectionKind::Unavailable => None,
        },
        // A gateway message taken in part: the first refused part's reason.
        Published::PartlyRefused(rejection) => Some(match rejection.kind() {
            RejectionKind::BadPayload => PublishAckReason::PayloadFormatInvalid,
            RejectionKind::TooLarge | RejectionKind::Quota => PublishAckReason::QuotaExceeded,
            RejectionKind::Unavailable => PublishAckReason::UnspecifiedError,
        }),
    }
}

/// The SUBACK reason of a subscription.
fn suback_reason(granted: &Result<QoS, FilterRefusal>) -> SubscribeAckReason {
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
        CloseReason::Administrative => DisconnectReasonCode::AdministrativeAction,
        // Never said: nobody is there to hear it.
        CloseReason::PeerGone => DisconnectReasonCode::NormalDisconnection,
    }
}

/// The DISCONNECT reason of a fault.
fn fault_reason(fault: &Fault) -> DisconnectReasonCode {
    match fault {
        Fault::BadTopic(bad) => bad.reason(),
        Fault::UnexpectedAuth | Fault::SecondConnect | Fault::Unexpected(_) => {
            DisconnectReasonCode::ProtocolError
        }
        Fault::Malformed(_) => DisconnectReasonCode::MalformedPacket,
        Fault::TooLarge => DisconnectReasonCode::PacketTooLarge,
        Fault::KeepAlive | Fault::WriteStalled => DisconnectReasonCode::KeepAliveTimeout,
        Fault::TopicAlias => DisconnectReasonCode::TopicAliasInvalid,
        Fault::QosNotSupported => DisconnectReasonCode::QosNotSupported,
        Fault::Rejected(_) | Fault::SessionGone => {
            DisconnectReasonCode::ImplementationSpecificError
        }
    }
}

/// Serves an MQTT 5 connection from its CONNECT on.
pub(super) async fn run(node: Arc<Node>, io: &Io) {
    let settings = &node.settings;
    let codec = Codec::new();
    codec.set_max_inbound_size(settings.max_frame);
    // Payloads come whole (see `v3::run`).
    codec.set_min_chunk_size(u32::MAX);
    let connect =
        dispatch::read_connect(
            io,
            &codec,
            settings.connect_timeout,
            |decoded| match decoded {
                Decoded::Packet(Packet::Connect(connect), _) => Some(connect),
                _ => None,
            },
        )
        .await;
    let Some(connect) = connect else {
        return;
    };
    let codec_ref = &codec;
    let refuse = |reason| async move {
        let ack = ConnectAck {
            reason_code: reason,
            ..ConnectAck::default()
        };
        if io
            .encode(
                Encoded::Packet(Packet::ConnectAck(Box::new(ack))),
                codec_ref,
            )
            .is_ok()
        {
            dispatch::refuse(io).await;
        }
    };
    // Enhanced authentication (MQTT 5 §4.12) is not offered: whatever the method, 0x8C.
    if let Some(method) = &connect.auth_method {
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "bad_auth_method")
            .increment(1);
        peer_event!(
            DEBUG,
            ?method,
            "mqtt 5 connect with an authentication method refused"
        );
        refuse(ConnectAckReason::BadAuthenticationMethod).await;
        return;
    }
    if provisioning::wanted(connect.username.as_deref(), &connect.client_id) {
        let ack = accepted(settings, false);
        if io
            .encode(Encoded::Packet(Packet::ConnectAck(Box::new(ack))), &codec)
            .is_ok()
        {
            provisioning::serve(V5::new(codec), io, &node).await;
        }
        return;
    }
    // As ThingsBoard: Session Present whenever the client did not ask for a clean start.
    let session_present = !connect.clean_start;
    let login = node
        .login(
            &connect.client_id,
            connect.username.as_deref(),
            connect.password.as_deref(),
        )
        .await;
    if let Some(reason) = connack_reason(&login) {
        refuse(reason).await;
        return;
    }
    let Login::Device(device) = login else {
        return;
    };
    let (connection, outbound) = node.open(device);
    let ack = accepted(settings, session_present);
    if io
        .encode(Encoded::Packet(Packet::ConnectAck(Box::new(ack))), &codec)
        .is_err()
    {
        return;
    }
    if let Some(max) = connect.max_packet_size {
        codec.set_max_outbound_size(max.get());
    }
    let limits = Limits {
        keep_alive: dispatch::keep_alive(connect.keep_alive),
        receive_maximum: settings.receive_maximum.into(),
        write_timeout: settings.write_timeout,
        send_maximum: connect
            .receive_max
            .map_or(dispatch::SEND_MAXIMUM, |max| {
                max.get().min(dispatch::SEND_MAXIMUM)
            })
            .into(),
    };
    drop(connect);
    dispatch::serve(V5::new(codec), io, connection, outbound, &limits).await;
}

/// The CONNACK of an accepted connection. QoS 2 is granted as 1: MQTT 5 clients learn it from
/// CONNACK's Maximum QoS.
fn accepted(settings: &dispatch::Settings, session_present: bool) -> ConnectAck {
    ConnectAck {
        session_present,
        reason_code: ConnectAckReason::Success,
        max_qos: QoS::AtLeastOnce,
        receive_max: NonZeroU16::new(settings.receive_maximum).unwrap_or(NonZeroU16::MAX),
        topic_alias_max: TOPIC_ALIAS_MAXIMUM,
        max_packet_size: Some(settings.max_frame),
        ..ConnectAck::default()
    }
}

/// A connection's MQTT 5 side.
struct V5 {
    codec: Codec,
    /// A PUBLISH whose payload is still arriving.
    partial: Option<Publish>,
    /// The topics of the client's Topic Aliases (alias `n` at `n - 1`); grown on first use.
    aliases: Vec<ByteString>,
}

impl V5 {
    fn new(codec: Codec) -> V5 {
        V5 {
            codec,
            partial: None,
            aliases: Vec::new(),
        }
    }

    fn send(&self, io: &Io, packet: Packet) {
        // A connection that cannot take it is gone: the reading side sees it.
        let _ = io.encode(Encoded::Packet(packet), &self.codec);
    }

    /// The event of a whole PUBLISH: its topic alias resolved or set.
    fn publish(&mut self, mut publish: Publish, payload: Bytes) -> Result<Event, Fault> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(Fault::QosNotSupported);
        }
        if let Some(alias) = publish.properties.topic_alias {
            if alias.get() > TOPIC_ALIAS_MAXIMUM {
                return Err(Fault::TopicAlias);
            }
            let at = usize::from(alias.get() - 1);
            if publish.topic.is_empty() {
                match self.aliases.get(at) {
                    Some(topic) if !topic.is_empty() => publish.topic = topic.clone(),
                    _ => return Err(Fault::TopicAlias),
                }
            } else {
                if self.aliases.len() <= at {
                    self.aliases.resize(at + 1, ByteString::new());
                }
                self.aliases[at] = publish.topic.clone();
            }
        }
        Ok(Event::Publish {
            topic: publish.topic,
            payload,
            qos: publish.qos,
            id: publish.packet_id,
        })
    }
}

/// The event of a packet other than PUBLISH.
fn packet_event(packet: Packet) -> Result<Event, Fault> {
    Ok(match packet {
        Packet::PublishAck(ack) => Event::Acked(ack.packet_id),
        Packet::PublishRelease(release) => Event::Released(release.packet_id),
        Packet::Subscribe(subscribe) => Event::Subscribe(
            subscribe.packet_id,
            subscribe
                .topic_filters
                .into_iter()
                .map(|(filter, options)| (filter, options.qos))
                .collect(),
        ),
        Packet::Unsubscribe(unsubscribe) => {
            Event::Unsubscribe(unsubscribe.packet_id, unsubscribe.topic_filters)
        }
        Packet::PingRequest => Event::Ping,
        Packet::Disconnect(_) => Event::Disconnect,
        Packet::Connect(_) => return Err(Fault::SecondConnect),
        // Enhanced authentication is not offered (CONNECT with a method gets 0x8C), so AUTH is a
        // protocol error.
        Packet::Auth(_) => return Err(Fault::UnexpectedAuth),
        Packet::ConnectAck(_) => return Err(Fault::Unexpected("CONNACK")),
        Packet::PublishReceived(_) => return Err(Fault::Unexpected("PUBREC")),
        Packet::PublishComplete(_) => return Err(Fault::Unexpected("PUBCOMP")),
        Packet::SubscribeAck(_) => return Err(Fault::Unexpected("SUBACK")),
        Packet::UnsubscribeAck(_) => return Err(Fault::Unexpected("UNSUBACK")),
        Packet::PingResponse => return Err(Fault::Unexpected("PINGRESP")),
    })
}

impl Wire for V5 {
    fn publish(&self, io: &Io, downlink: Downlink, id: Option<NonZeroU16>) -> bool {
        let Ok(payload_size) = u32::try_from(downlink.payload.len()) else {
            return false;
        };
        let publish = Publish {
            qos: if id.is_some() {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            topic: ByteString::from(downlink.topic),
            packet_id: id,
            payload_size,
            ..Publish::default()
        };
        // Fails when the client's Maximum Packet Size is smaller: the message is dropped.
        io.encode(
            Encoded::Publish(publish, Some(Bytes::from(downlink.payload))),
            &self.codec,
        )
        .is_ok()
    }
}

impl Protocol for V5 {
    fn poll_event(&mut self, io: &Io, cx: &mut Context<'_>) -> Poll<Result<Event, Unread>> {
        loop {
            let decoded = match io.poll_recv(&self.codec, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(dispatch::unread(e))),
                Poll::Ready(Ok(decoded)) => decoded,
            };
            let event = match decoded {
                Decoded::Publish(publish, payload, _) => {
                    if payload.len() as u64 == u64::from(publish.payload_size) {
                        self.publish(publish, payload)
                    } else {
                        self.partial = Some(publish);
                        continue;
                    }
                }
                Decoded::PayloadChunk(payload, true) => match self.partial.take() {
                    Some(publish) => self.publish(publish, payload),
                    None => Err(Fault::Malformed("payload without PUBLISH".into())),
                },
                Decoded::PayloadChunk(_, false) => {
                    Err(Fault::Malformed("payload in pieces".into()))
                }
                Decoded::Packet(packet, _) => packet_event(packet),
            };
            return Poll::Ready(event.map_err(Unread::Fault));
        }
    }

    fn answer(
        &self,
        io: &Io,
        qos: QoS,
        id: Option<NonZeroU16>,
        published: Published,
    ) -> Result<(), Fault> {
        if published == Published::Unanswered {
            return Ok(());
        }
        let Some(reason_code) = puback_reason(&published) else {
            return Err(match published {
                Published::Refused(rejection) => Fault::Rejected(rejection),
                _ => Fault::SessionGone,
            });
        };
        let Some(packet_id) = id else {
            return Ok(());
        };
        let ack = PublishAck {
            packet_id,
            reason_code,
            ..PublishAck::default()
        };
        match qos {
            QoS::AtLeastOnce => self.send(io, Packet::PublishAck(ack)),
            QoS::ExactlyOnce => self.send(io, Packet::PublishReceived(ack)),
            QoS::AtMostOnce => {}
        }
        Ok(())
    }

    fn complete(&self, io: &Io, packet_id: NonZeroU16) {
        let complete = PublishAck2 {
            packet_id,
            ..PublishAck2::default()
        };
        self.send(io, Packet::PublishComplete(complete));
    }

    fn suback(&self, io: &Io, packet_id: NonZeroU16, granted: &[Result<QoS, FilterRefusal>]) {
        let ack = SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: granted.iter().map(suback_reason).collect(),
        };
        self.send(io, Packet::SubscribeAck(ack));
    }

    fn unsuback(&self, io: &Io, packet_id: NonZeroU16, had: &[bool]) {
        let ack = UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: had.iter().copied().map(unsuback_reason).collect(),
        };
        self.send(io, Packet::UnsubscribeAck(ack));
    }

    fn pong(&self, io: &Io) {
        self.send(io, Packet::PingResponse);
    }

    fn goodbye(&self, io: &Io, why: Goodbye<'_>) {
        let reason = match why {
            Goodbye::Fault(fault) => fault_reason(fault),
            Goodbye::Close(reason) => close_reason(reason),
        };
        self.send(io, Packet::Disconnect(Disconnect::new(reason)));
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
            assert_eq!(suback_reason(&granted), want, "{granted:?}");
        }
        assert_eq!(unsuback_reason(true), UnsubscribeAckReason::Success);
        assert_eq!(
            unsuback_reason(false),
            UnsubscribeAckReason::NoSubscriptionExisted
        );
    }

    #[test]
    fn disconnect_reasons() {
        use DisconnectReasonCode::*;
        assert_eq!(close_reason(CloseReason::TakenOver), SessionTakenOver);
        let cases = [
            (Fault::BadTopic(BadTopic::Nul), MalformedPacket),
            (Fault::BadTopic(BadTopic::Empty), ProtocolError),
            (Fault::UnexpectedAuth, ProtocolError),
            (Fault::SecondConnect, ProtocolError),
            (Fault::Unexpected("PUBREC"), ProtocolError),
            (Fault::Malformed("x".into()), MalformedPacket),
            (Fault::TooLarge, PacketTooLarge),
            (Fault::KeepAlive, KeepAliveTimeout),
            (Fault::TopicAlias, TopicAliasInvalid),
            (Fault::QosNotSupported, QosNotSupported),
            (Fault::SessionGone, ImplementationSpecificError),
            (
                Fault::Rejected(Rejection::Queue(QueueError::Closed)),
                ImplementationSpecificError,
            ),
        ];
        for (fault, want) in cases {
            assert_eq!(fault_reason(&fault), want, "{fault:?}");
        }
    }
}
