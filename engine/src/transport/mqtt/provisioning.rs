//! ThingsBoard's provision-only MQTT session: a CONNECT whose username or client id is
//! `provision` is accepted without credentials, may subscribe to `/provision/response` only and
//! publish to `/provision/request` only; each request is decided as `POST /api/v1/provision`
//! decides it (`crate::provision`) and answered on `/provision/response`. A publish to any other
//! topic is acknowledged (MQTT 5: PUBACK 0x90) and closes the session; so does a request that is
//! not JSON or storage that fails. The session lasts at most [`SESSION_LIMIT`] (ThingsBoard
//! closes it a minute after its answer) and answers at most [`REQUESTS_MAX`] requests.

use std::future::poll_fn;
use std::time::Duration;

use actors::ingress::Rejection;
use actors::metrics::MESSAGES_REJECTED;
use actors::protocol::provision::ProvisionRequest;
use actors::session::outbound::{Downlink, DownlinkQos};
use metrics::counter;
use ntex::io::Io;
use ntex_mqtt::QoS;

use super::core::{Fault, Node, Published};
use super::dispatch::{Event, Goodbye, Protocol, Unread};
use super::peer_log::peer_event;
use super::topics::FilterRefusal;
use super::writer::Credit;
use crate::provision::Provisioning;

/// The username, or client id, that asks for a provision-only session.
pub(super) const PROVISION: &str = "provision";
pub(super) const REQUEST_TOPIC: &str = "/provision/request";
pub(super) const RESPONSE_TOPIC: &str = "/provision/response";

/// How long a provision-only session may stay open.
pub(super) const SESSION_LIMIT: Duration = Duration::from_secs(60);
/// Requests one session may make.
pub(super) const REQUESTS_MAX: usize = 16;

/// Whether a CONNECT asks for a provision-only session.
pub(super) fn wanted(username: Option<&str>, client_id: &str) -> bool {
    username == Some(PROVISION) || client_id == PROVISION
}

/// Serves a provision-only session (CONNACK already sent) until it ends.
pub(super) async fn serve<P: Protocol>(mut proto: P, io: &Io, node: &Node) {
    let ended = ntex::time::timeout(SESSION_LIMIT, session(&mut proto, io, node)).await;
    if let Ok(Some(fault)) = &ended {
        proto.goodbye(io, Goodbye::Fault(fault));
    }
    let _ = ntex::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// The session's packets; `Some` when it ends on a fault to tell the peer.
async fn session<P: Protocol>(proto: &mut P, io: &Io, node: &Node) -> Option<Fault> {
    let ctx = &node.ctx;
    let provisioning = Provisioning {
        registry: &ctx.registry,
        profiles: &ctx.profiles,
        store: &ctx.store,
        ingress: &ctx.ingress,
    };
    let mut answer_qos = QoS::AtLeastOnce;
    let mut answered = 0usize;
    // Every answer may be unacknowledged at once: the session answers at most this many.
    let mut credit = Credit::new(REQUESTS_MAX);
    loop {
        let event = poll_fn(|cx| proto.poll_event(io, cx)).await;
        match event {
            Ok(Event::Subscribe(id, filters)) => {
                let granted: Vec<_> = filters
                    .iter()
                    .map(|(filter, qos)| {
                        if filter == RESPONSE_TOPIC {
                            let qos = (*qos).min(QoS::AtLeastOnce);
                            answer_qos = qos;
                            Ok(qos)
                        } else {
                            Err(FilterRefusal::NotServed)
                        }
                    })
                    .collect();
                proto.suback(io, id, &granted);
            }
            Ok(Event::Unsubscribe(id, filters)) => {
                let had: Vec<_> = filters.iter().map(|f| f == RESPONSE_TOPIC).collect();
                proto.unsuback(io, id, &had);
            }
            Ok(Event::Publish {
                topic,
                payload,
                qos,
                id,
            }) => {
                if topic != REQUEST_TOPIC {
                    counter!(MESSAGES_REJECTED, "transport" => "mqtt", "reason" => "unknown_topic")
                        .increment(1);
                    peer_event!(
                        DEBUG,
                        ?topic,
                        "provision session publish to another topic, closed"
                    );
                    let _ = proto.answer(io, qos, id, Published::UnknownTopic);
                    return None;
                }
                let request = match ProvisionRequest::parse(&payload) {
                    Ok(request) => request,
                    Err(e) => return Some(Fault::Rejected(Rejection::Payload(e))),
                };
                if answered >= REQUESTS_MAX {
                    return Some(Fault::Unexpected(
                        "provision requests past the session's limit",
                    ));
                }
                answered += 1;
                let outcome = match provisioning.provision(&request).await {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        peer_event!(WARN, error = %e, "mqtt provision request failed");
                        return Some(Fault::SessionGone);
                    }
                };
                if let Err(fault) = proto.answer(io, qos, id, Published::Queued) {
                    return Some(fault);
                }
                let downlink = Downlink {
                    topic: RESPONSE_TOPIC.to_owned(),
                    payload: outcome.render().into_bytes(),
                    qos: if answer_qos == QoS::AtMostOnce {
                        DownlinkQos::AtMostOnce
                    } else {
                        DownlinkQos::AtLeastOnce
                    },
                    tracked: None,
                };
                let packet_id = match downlink.qos {
                    DownlinkQos::AtLeastOnce => credit.take(),
                    DownlinkQos::AtMostOnce => None,
                };
                proto.publish(io, downlink, packet_id);
            }
            Ok(Event::Released(id)) => proto.complete(io, id),
            Ok(Event::Acked(id)) => {
                credit.release(id);
            }
            Ok(Event::Ping) => proto.pong(io),
            Ok(Event::Disconnect) | Err(Unread::PeerGone) => return None,
            Err(Unread::Timer) => {}
            Err(Unread::Backpressure) => {
                if io.flush(false).await.is_err() {
                    return None;
                }
            }
            Err(Unread::Fault(fault)) => return Some(fault),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provision_sessions_are_asked_for_by_username_or_client_id() {
        let cases = [
            (Some("provision"), "client", true),
            (None, "provision", true),
            (Some("token"), "provision", true),
            (Some("Provision"), "c", false),
            (Some("token"), "c", false),
            (None, "", false),
        ];
        for (username, client_id, want) in cases {
            assert_eq!(
                wanted(username, client_id),
                want,
                "{username:?} {client_id}"
            );
        }
    }
}
