//! Topics and topic filters of ThingsBoard's MQTT device API, as plain functions: which uplink a
//! PUBLISH topic carries, which server-to-device topic a downlink goes to, which topic names the
//! protocol forbids, which filters a device may subscribe to, and MQTT's filter matching
//! (`+`, `#`, and the rule that wildcards at the start do not match `$` topics).

use actors::ingress::Uplink;
use ntex_mqtt::QoS;
use ntex_mqtt::v5::codec::DisconnectReasonCode;

pub const TELEMETRY_TOPIC: &str = "v1/devices/me/telemetry";
pub const ATTRIBUTES_TOPIC: &str = "v1/devices/me/attributes";
/// A device's claim request.
pub const CLAIM_TOPIC: &str = "v1/devices/me/claim";

/// The uplink a device PUBLISH topic carries; `None` for a topic the device API does not take.
pub fn uplink_of(topic: &str) -> Option<Uplink> {
    match topic {
        TELEMETRY_TOPIC => Some(Uplink::Telemetry),
        ATTRIBUTES_TOPIC => Some(Uplink::Attributes),
        _ => None,
    }
}

const ATTRIBUTE_REQUEST_PREFIX: &str = "v1/devices/me/attributes/request/";

/// The request id of an attribute request topic (`v1/devices/me/attributes/request/{id}`):
/// `None` for another topic, `Some(Err(()))` when the id is not a 32-bit integer (ThingsBoard
/// then treats the message as invalid). Negative ids are ids: ThingsBoard takes them and
/// answers nothing.
pub fn attribute_request_id(topic: &str) -> Option<Result<i32, ()>> {
    let id = topic.strip_prefix(ATTRIBUTE_REQUEST_PREFIX)?;
    Some(id.parse::<i32>().map_err(|_| ()))
}

/// The request id of a device's own RPC request (`v1/devices/me/rpc/request/{id}`), with
/// [`attribute_request_id`]'s rules.
pub fn rpc_request_id(topic: &str) -> Option<Result<i32, ()>> {
    let id = topic.strip_prefix(RPC_REQUEST_PREFIX)?;
    Some(id.parse::<i32>().map_err(|_| ()))
}

/// The request id a device's reply to a server-side RPC names
/// (`v1/devices/me/rpc/response/{id}`), with [`attribute_request_id`]'s rules.
pub fn rpc_response_id(topic: &str) -> Option<Result<i32, ()>> {
    let id = topic.strip_prefix(RPC_RESPONSE_PREFIX)?;
    Some(id.parse::<i32>().map_err(|_| ()))
}

/// A server-to-device topic: where attribute updates, responses and RPC requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownlinkTopic {
    /// Shared attribute updates: `v1/devices/me/attributes`.
    Attributes,
    /// The answer to an attribute request: `v1/devices/me/attributes/response/{id}`.
    AttributeResponse(u32),
    /// A server-side RPC: `v1/devices/me/rpc/request/{id}`.
    RpcRequest(u32),
    /// The answer to a client-side RPC: `v1/devices/me/rpc/response/{id}`.
    RpcResponse(u32),
}

const ATTRIBUTE_RESPONSE_PREFIX: &str = "v1/devices/me/attributes/response/";
const RPC_REQUEST_PREFIX: &str = "v1/devices/me/rpc/request/";
const RPC_RESPONSE_PREFIX: &str = "v1/devices/me/rpc/response/";

impl DownlinkTopic {
    /// The topic name a downlink of this kind is published to.
    pub fn name(self) -> String {
        match self {
            DownlinkTopic::Attributes => ATTRIBUTES_TOPIC.to_owned(),
            DownlinkTopic::AttributeResponse(id) => format!("{ATTRIBUTE_RESPONSE_PREFIX}{id}"),
            DownlinkTopic::RpcRequest(id) => format!("{RPC_REQUEST_PREFIX}{id}"),
            DownlinkTopic::RpcResponse(id) => format!("{RPC_RESPONSE_PREFIX}{id}"),
        }
    }

    /// Reads a topic name as a downlink topic (ids are ThingsBoard's decimal integers).
    pub fn of(topic: &str) -> Option<DownlinkTopic> {
        if topic == ATTRIBUTES_TOPIC {
            return Some(DownlinkTopic::Attributes);
        }
        let id = |prefix: &str| -> Option<u32> {
            let digits = topic.strip_prefix(prefix)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()
        };
        id(ATTRIBUTE_RESPONSE_PREFIX)
            .map(DownlinkTopic::AttributeResponse)
            .or_else(|| id(RPC_REQUEST_PREFIX).map(DownlinkTopic::RpcRequest))
            .or_else(|| id(RPC_RESPONSE_PREFIX).map(DownlinkTopic::RpcResponse))
    }
}

// --- topic names -------------------------------------------------------------------------------

/// A PUBLISH topic name no server may accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadTopic {
    /// MQTT 3.1.1 §4.7.3 [MQTT-4.7.3-1]; MQTT 5: a protocol error without a Topic Alias.
    Empty,
    /// U+0000 makes the packet malformed: MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4.
    Nul,
    /// Wildcards are for filters only [MQTT-3.3.2-2].
    Wildcard,
}

impl BadTopic {
    pub fn of(topic: &str) -> Option<BadTopic> {
        if topic.is_empty() {
            Some(BadTopic::Empty)
        } else if topic.contains('\0') {
            Some(BadTopic::Nul)
        } else if topic.contains(['+', '#']) {
            Some(BadTopic::Wildcard)
        } else {
            None
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            BadTopic::Empty => "empty_topic",
            BadTopic::Nul => "nul_in_topic",
            BadTopic::Wildcard => "wildcard_in_topic",
        }
    }

    /// The MQTT 5 DISCONNECT reason.
    pub fn reason(self) -> DisconnectReasonCode {
        match self {
            BadTopic::Nul => DisconnectReasonCode::MalformedPacket,
            BadTopic::Empty | BadTopic::Wildcard => DisconnectReasonCode::ProtocolError,
        }
    }
}

// --- topic filters -----------------------------------------------------------------------------

/// Whether `filter` is a well-formed topic filter (MQTT 3.1.1 §4.7.1, MQTT 5 §4.7.1): not
/// empty, no U+0000, `+` and `#` each alone in their level, `#` only last.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if !last => return false,
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether the topic name `topic` matches the well-formed filter `filter`: `+` matches one level
/// (an empty one too), `#` this level's parent and everything below it; a filter starting with a
/// wildcard does not match a topic starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter = filter.split('/');
    let mut topic = topic.split('/');
    loop {
        match (filter.next(), topic.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The filters a device may subscribe to: exactly ThingsBoard's server-to-device filters (its
/// `processSubscribe` refuses anything else, `#` and `…/request/#` included), the gateway
/// API's among them (granted to any device, as by ThingsBoard; only a gateway gets anything
/// there).
pub const SUBSCRIBABLE: [&str; 7] = [
    "v1/devices/me/attributes",
    "v1/devices/me/attributes/response/+",
    "v1/devices/me/rpc/request/+",
    "v1/devices/me/rpc/response/+",
    "v1/gateway/attributes",
    "v1/gateway/attributes/response",
    "v1/gateway/rpc",
];

/// Why a SUBSCRIBE filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterRefusal {
    /// Not a well-formed filter.
    Malformed,
    /// Well-formed, but not one of the device API's filters.
    NotServed,
}

/// The subscriptions granted on one connection: the QoS granted for each of [`SUBSCRIBABLE`]
/// (a connection can hold no other filter, so seven slots are all it needs, without
/// allocating).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions {
    granted: [Option<QoS>; SUBSCRIBABLE.len()],
}

impl Subscriptions {
    /// Grants `filter` at `requested` QoS, at most 1 (ThingsBoard never grants QoS 2); a new
    /// subscription to a filter already held replaces it [MQTT-3.8.4-3].
    pub fn subscribe(&mut self, filter: &str, requested: QoS) -> Result<QoS, FilterRefusal> {
        if !is_valid_filter(filter) {
            return Err(FilterRefusal::Malformed);
        }
        let slot = SUBSCRIBABLE
            .iter()
            .position(|f| *f == filter)
            .ok_or(FilterRefusal::NotServed)?;
        let qos = requested.min(QoS::AtLeastOnce);
        self.granted[slot] = Some(qos);
        Ok(qos)
    }

    /// Removes the subscription to `filter`; whether there was one.
    pub fn unsubscribe(&mut self, filter: &str) -> bool {
        SUBSCRIBABLE
            .iter()
            .position(|f| *f == filter)
            .and_then(|slot| self.granted[slot].take())
            .is_some()
    }

    /// The QoS of the first granted filter matching `topic`; `None` if none does.
    pub fn qos_for(&self, topic: &str) -> Option<QoS> {
        SUBSCRIBABLE
            .iter()
            .zip(self.granted)
            .find_map(|(filter, qos)| qos.filter(|_| matches(filter, topic)))
    }

    /// Whether a granted filter matches `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.qos_for(topic).is_some()
    }

    /// The filters granted now, with their QoS.
    pub fn granted(&self) -> impl Iterator<Item = (&'static str, QoS)> + '_ {
        SUBSCRIBABLE
            .iter()
            .zip(self.granted)
            .filter_map(|(filter, qos)| Some((*filter, qos?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_request_ids() {
        let cases = [
            ("v1/devices/me/attributes/request/7", Some(Ok(7))),
            ("v1/devices/me/attributes/request/-3", Some(Ok(-3))),
            (
                "v1/devices/me/attributes/request/2147483647",
                Some(Ok(i32::MAX)),
            ),
            ("v1/devices/me/attributes/request/2147483648", Some(Err(()))),
            ("v1/devices/me/attributes/request/x", Some(Err(()))),
            ("v1/devices/me/attributes/request/", Some(Err(()))),
            ("v1/devices/me/attributes/request", None),
            ("v1/devices/me/attributes", None),
        ];
        for (topic, id) in cases {
            assert_eq!(attribute_request_id(topic), id, "{topic}");
        }
        assert_eq!(rpc_request_id("v1/devices/me/rpc/request/4"), Some(Ok(4)));
        assert_eq!(rpc_request_id("v1/devices/me/rpc/request/+"), Some(Err(())));
        assert_eq!(rpc_request_id("v1/devices/me/rpc/response/4"), None);
    }

    #[test]
    fn only_the_device_api_topics_are_uplinks() {
        let cases = [
            ("v1/devices/me/telemetry", Some(Uplink::Telemetry)),
            ("v1/devices/me/attributes", Some(Uplink::Attributes)),
            ("v1/devices/me/telemetry/", None),
            ("/v1/devices/me/telemetry", None),
            ("V1/devices/me/telemetry", None),
            ("v1/devices/me/attributes/request/1", None),
            ("v1/devices/me/rpc/response/1", None),
            ("other", None),
            ("", None),
        ];
        for (topic, want) in cases {
            assert_eq!(uplink_of(topic), want, "{topic:?}");
        }
    }

    #[test]
    fn downlink_topics_read_back_as_what_they_were_made_from() {
        use DownlinkTopic::*;
        let cases = [
            (Attributes, "v1/devices/me/attributes"),
            (AttributeResponse(7), "v1/devices/me/attributes/response/7"),
            (RpcRequest(0), "v1/devices/me/rpc/request/0"),
            (
                RpcResponse(4_294_967_295),
                "v1/devices/me/rpc/response/4294967295",
            ),
        ];
        for (kind, topic) in cases {
            assert_eq!(kind.name(), topic);
            assert_eq!(DownlinkTopic::of(topic), Some(kind), "{topic}");
        }
        for topic in [
            "v1/devices/me/rpc/request/",
            "v1/devices/me/rpc/request/+",
            "v1/devices/me/rpc/request/-1",
            "v1/devices/me/rpc/request/1/2",
            "v1/devices/me/rpc/request/4294967296",
            "v1/devices/me/attributes/response",
            "v1/devices/me/telemetry",
        ] {
            assert_eq!(DownlinkTopic::of(topic), None, "{topic}");
        }
    }

    #[test]
    fn topic_names_the_protocol_forbids() {
        let cases = [
            ("", Some(BadTopic::Empty)),
            ("v1/devices/me/telemetry\0", Some(BadTopic::Nul)),
            ("a/+/b", Some(BadTopic::Wildcard)),
            ("#", Some(BadTopic::Wildcard)),
            ("v1/devices/me/telemetry", None),
            ("/", None),
        ];
        for (topic, want) in cases {
            assert_eq!(BadTopic::of(topic), want, "{topic:?}");
        }
        assert_eq!(
            BadTopic::Nul.reason(),
            DisconnectReasonCode::MalformedPacket
        );
        assert_eq!(
            BadTopic::Empty.reason(),
            DisconnectReasonCode::ProtocolError
        );
        assert_eq!(
            BadTopic::Wildcard.reason(),
            DisconnectReasonCode::ProtocolError
        );
    }

    #[test]
    fn well_formed_filters() {
        let cases = [
            ("#", true),
            ("+", true),
            ("/", true),
            ("a/#", true),
            ("+/+/#", true),
            ("a//b", true),
            ("v1/devices/me/rpc/request/+", true),
            ("", false),
            ("a#", false),
            ("a/#/b", false),
            ("#/", false),
            ("a+/b", false),
            ("a/b+", false),
            ("a/\0", false),
        ];
        for (filter, valid) in cases {
            assert_eq!(is_valid_filter(filter), valid, "{filter:?}");
        }
    }

    /// MQTT 3.1.1 §4.7.1 and §4.7.2's own examples, and the device API's filters.
    #[test]
    fn filter_matching() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+", "sport", true),
            ("+", "/finance", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+/tennis/#", "sport/tennis", true),
            ("sport/tennis#", "sport/tennis", false),
            ("sport", "sport/", false),
            ("sport/", "sport", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            // Wildcards at the start do not match `$` topics [MQTT-4.7.2-1].
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            // The device API.
            (
                "v1/devices/me/rpc/request/+",
                "v1/devices/me/rpc/request/12",
                true,
            ),
            (
                "v1/devices/me/rpc/request/+",
                "v1/devices/me/rpc/response/12",
                false,
            ),
            (
                "v1/devices/me/attributes",
                "v1/devices/me/attributes/response/1",
                false,
            ),
            (
                "v1/devices/me/attributes/response/+",
                "v1/devices/me/attributes/response/1",
                true,
            ),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter:?} ~ {topic:?}");
        }
    }

    #[test]
    fn a_connection_keeps_the_filters_it_was_granted() {
        let mut subs = Subscriptions::default();
        assert_eq!(subs.qos_for("v1/devices/me/rpc/request/1"), None);
        let cases = [
            (
                "v1/devices/me/attributes",
                QoS::ExactlyOnce,
                Ok(QoS::AtLeastOnce),
            ),
            (
                "v1/devices/me/rpc/request/+",
                QoS::AtMostOnce,
                Ok(QoS::AtMostOnce),
            ),
            (
                "v1/devices/me/rpc/request/#",
                QoS::AtLeastOnce,
                Err(FilterRefusal::NotServed),
            ),
            (
                "some/other/#",
                QoS::AtLeastOnce,
                Err(FilterRefusal::NotServed),
            ),
            ("#", QoS::AtLeastOnce, Err(FilterRefusal::NotServed)),
            ("a/#/b", QoS::AtLeastOnce, Err(FilterRefusal::Malformed)),
        ];
        for (filter, qos, want) in cases {
            assert_eq!(subs.subscribe(filter, qos), want, "{filter:?}");
        }
        assert_eq!(
            subs.granted().collect::<Vec<_>>(),
            [
                ("v1/devices/me/attributes", QoS::AtLeastOnce),
                ("v1/devices/me/rpc/request/+", QoS::AtMostOnce),
            ]
        );
        assert_eq!(
            subs.qos_for("v1/devices/me/rpc/request/3"),
            Some(QoS::AtMostOnce)
        );
        assert!(subs.is_subscribed("v1/devices/me/attributes"));
        assert!(!subs.is_subscribed("v1/devices/me/attributes/response/3"));
        assert!(!subs.is_subscribed("v1/devices/me/rpc/response/3"));

        // Subscribing again replaces the granted QoS.
        assert_eq!(
            subs.subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce),
            Ok(QoS::AtLeastOnce)
        );
        assert_eq!(
            subs.qos_for("v1/devices/me/rpc/request/3"),
            Some(QoS::AtLeastOnce)
        );

        assert!(subs.unsubscribe("v1/devices/me/rpc/request/+"));
        assert!(
            !subs.unsubscribe("v1/devices/me/rpc/request/+"),
            "gone already"
        );
        assert!(!subs.unsubscribe("some/other/#"), "never granted");
        assert!(!subs.is_subscribed("v1/devices/me/rpc/request/3"));
        assert!(subs.is_subscribed("v1/devices/me/attributes"));
    }
}
