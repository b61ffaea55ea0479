//! The MQTT 3.1.1 adapter: ntex-mqtt's v3 codec's packets to the connection core's events, and
//! the core's outcomes to 3.1.1's few answers (CONNACK return codes, SUBACK 0x80, closing the
//! connection where 3.1.1 has no way to refuse one message).

use std::num::NonZeroU16;
use std::sync::Arc;
use std::task::{Context, Poll};

use actors::session::outbound::Downlink;
use ntex::io::Io;
use ntex::util::{ByteString, Bytes};
use ntex_mqtt::QoS;
use ntex_mqtt::v3::codec::{
    Codec, ConnectAck, ConnectAckReason, Decoded, Encoded, Packet, Publish, SubscribeReturnCode,
};

use super::core::{Fault, Login, Node, Published};
use super::dispatch::{self, Event, Goodbye, Limits, Protocol, Unread};
use super::provisioning;
use super::topics::FilterRefusal;
use super::writer::Wire;

/// Serves an MQTT 3.1.1 connection from its CONNECT on.
pub(super) async fn run(node: Arc<Node>, io: &Io) {
    let settings = &node.settings;
    let codec = Codec::new();
    codec.set_max_size(settings.max_frame);
    // Payloads come whole: a PUBLISH whose payload is still arriving is held back until it is
    // all there (at most `max_frame`).
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
    if provisioning::wanted(connect.username.as_deref(), &connect.client_id) {
        let ack = Packet::ConnectAck(ConnectAck {
            session_present: false,
            return_code: ConnectAckReason::ConnectionAccepted,
        });
        if io.encode(Encoded::Packet(ack), &codec).is_ok() {
            provisioning::serve(V3::new(codec), io, &node).await;
        }
        return;
    }
    // ThingsBoard's CONNACK claims a session whenever the client asked to keep one
    // (`!cleanSession`), though it keeps none; clients are used to it.
    let session_present = !connect.clean_session;
    let login = node
        .login(
            &connect.client_id,
            connect.username.as_deref(),
            connect.password.as_deref(),
        )
        .await;
    let device = match login {
        Login::Device(device) => device,
        refused => {
            let return_code = match refused {
                Login::EmptyToken => ConnectAckReason::BadUserNameOrPassword,
                Login::UnknownToken => ConnectAckReason::NotAuthorized,
                Login::Unavailable | Login::Device(_) => ConnectAckReason::ServiceUnavailable,
            };
            let ack = Packet::ConnectAck(ConnectAck {
                session_present: false,
                return_code,
            });
            if io.encode(Encoded::Packet(ack), &codec).is_ok() {
                dispatch::refuse(io).await;
            }
            return;
        }
    };
    let (connection, outbound) = node.open(device);
    let ack = Packet::ConnectAck(ConnectAck {
        session_present,
        return_code: ConnectAckReason::ConnectionAccepted,
    });
    if io.encode(Encoded::Packet(ack), &codec).is_err() {
        return;
    }
    let limits = Limits {
        keep_alive: dispatch::keep_alive(connect.keep_alive),
        receive_maximum: settings.receive_maximum.into(),
        write_timeout: settings.write_timeout,
        send_maximum: dispatch::SEND_MAXIMUM.into(),
    };
    drop(connect);
    dispatch::serve(V3::new(codec), io, connection, outbound, &limits).await;
}

/// A connection's MQTT 3.1.1 side.
struct V3 {
    codec: Codec,
    /// A PUBLISH whose payload is still arriving.
    partial: Option<Publish>,
}

impl V3 {
    fn new(codec: Codec) -> V3 {
        V3 {
            codec,
            partial: None,
        }
    }

    fn send(&self, io: &Io, packet: Packet) {
        // A connection that cannot take it is gone: the reading side sees it.
        let _ = io.encode(Encoded::Packet(packet), &self.codec);
    }
}

fn publish_event(publish: Publish, payload: Bytes) -> Event {
    Event::Publish {
        topic: publish.topic,
        payload,
        qos: publish.qos,
        id: publish.packet_id,
    }
}

/// The event of a packet other than PUBLISH.
fn packet_event(packet: Packet) -> Result<Event, Fault> {
    Ok(match packet {
        Packet::PublishAck { packet_id } => Event::Acked(packet_id),
        Packet::PublishRelease { packet_id } => Event::Released(packet_id),
        Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Event::Subscribe(packet_id, topic_filters),
        Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Event::Unsubscribe(packet_id, topic_filters),
        Packet::PingRequest => Event::Ping,
        Packet::Disconnect => Event::Disconnect,
        Packet::Connect(_) => return Err(Fault::SecondConnect),
        Packet::ConnectAck(_) => return Err(Fault::Unexpected("CONNACK")),
        Packet::PublishReceived { .. } => return Err(Fault::Unexpected("PUBREC")),
        Packet::PublishComplete { .. } => return Err(Fault::Unexpected("PUBCOMP")),
        Packet::SubscribeAck { .. } => return Err(Fault::Unexpected("SUBACK")),
        Packet::UnsubscribeAck { .. } => return Err(Fault::Unexpected("UNSUBACK")),
        Packet::PingResponse => return Err(Fault::Unexpected("PINGRESP")),
    })
}

impl Wire for V3 {
    fn publish(&self, io: &Io, downlink: Downlink, id: Option<NonZeroU16>) -> bool {
        let Ok(payload_size) = u32::try_from(downlink.payload.len()) else {
            return false;
        };
        let publish = Publish {
            dup: false,
            retain: false,
            qos: if id.is_some() {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            topic: ByteString::from(downlink.topic),
            packet_id: id,
            payload_size,
        };
        io.encode(
            Encoded::Publish(publish, Some(Bytes::from(downlink.payload))),
            &self.codec,
        )
        .is_ok()
    }
}

impl Protocol for V3 {
    fn poll_event(&mut self, io: &Io, cx: &mut Context<'_>) -> Poll<Result<Event, Unread>> {
        loop {
            let decoded = match io.poll_recv(&self.codec, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(dispatch::unread(e))),
                Poll::Ready(Ok(decoded)) => decoded,
            };
            return Poll::Ready(match decoded {
                Decoded::Publish(publish, payload, _) => {
                    if payload.len() as u64 == u64::from(publish.payload_size) {
                        Ok(publish_event(publish, payload))
                    } else {
                        self.partial = Some(publish);
                        continue;
                    }
                }
                Decoded::PayloadChunk(payload, true) => match self.partial.take() {
                    Some(publish) => Ok(publish_event(publish, payload)),
                    None => Err(Unread::Fault(Fault::Malformed(
                        "payload without PUBLISH".into(),
                    ))),
                },
                Decoded::PayloadChunk(_, false) => {
                    Err(Unread::Fault(Fault::Malformed("payload in pieces".into())))
                }
                Decoded::Packet(packet, _) => packet_event(packet).map_err(Unread::Fault),
            });
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
        answer(published)?;
        match (qos, id) {
            (QoS::AtLeastOnce, Some(packet_id)) => self.send(io, Packet::PublishAck { packet_id }),
            (QoS::ExactlyOnce, Some(packet_id)) => {
                self.send(io, Packet::PublishReceived { packet_id });
            }
            _ => {}
        }
        Ok(())
    }

    fn complete(&self, io: &Io, packet_id: NonZeroU16) {
        self.send(io, Packet::PublishComplete { packet_id });
    }

    fn suback(&self, io: &Io, packet_id: NonZeroU16, granted: &[Result<QoS, FilterRefusal>]) {
        let status = granted.iter().map(return_code).collect();
        self.send(io, Packet::SubscribeAck { packet_id, status });
    }

    /// 3.1.1's UNSUBACK has no per-filter result.
    fn unsuback(&self, io: &Io, packet_id: NonZeroU16, _had: &[bool]) {
        self.send(io, Packet::UnsubscribeAck { packet_id });
    }

    fn pong(&self, io: &Io) {
        self.send(io, Packet::PingResponse);
    }

    /// MQTT 3.1.1 has no way to say why: the connection is just closed.
    fn goodbye(&self, _io: &Io, _why: Goodbye<'_>) {}
}

/// A subscription's SUBACK return code: the QoS granted, or 0x80.
fn return_code(granted: &Result<QoS, FilterRefusal>) -> SubscribeReturnCode {
    match granted {
        Ok(qos) => SubscribeReturnCode::Success(*qos),
        Err(_) => SubscribeReturnCode::Failure,
    }
}

/// Whether a PUBLISH's outcome lets the connection go on: MQTT 3.1.1 has no way to refuse one
/// message, so a refused one closes the connection. An unknown topic is acknowledged and
/// dropped (ThingsBoard's behaviour).
fn answer(published: Published) -> Result<(), Fault> {
    match published {
        // 3.1.1 cannot say a gateway message was taken only in part: its PUBACK says taken
        // (the refused parts are counted and logged), as ThingsBoard's does.
        Published::Queued
        | Published::UnknownTopic
        | Published::Unanswered
        | Published::PartlyRefused(_) => Ok(()),
        Published::Refused(rejection) => Err(Fault::Rejected(rejection)),
    }
}

#[cfg(test)]
mod tests {
    use actors::ingress::Rejection;
    use actors::payload::PayloadError;
    use actors::ports::QueueError;

    use super::super::topics::{FilterRefusal, Subscriptions};
    use super::*;

    /// The SUBACK return code of a subscription.
    fn suback_code(granted: Result<QoS, FilterRefusal>) -> u8 {
        match return_code(&granted) {
            SubscribeReturnCode::Success(qos) => qos as u8,
            SubscribeReturnCode::Failure => 0x80,
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
