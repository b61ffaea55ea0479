//! The first bytes of a connection, read before a version adapter sees them: a CONNECT of a
//! protocol level other than 4 or 5 gets CONNACK 0x01, one past `mqtt.max_connections` gets 0x03
//! (MQTT 5: 0x97), anything that is not a CONNECT is closed without an answer.

use std::time::Duration;

use actors::metrics::{CONNECTIONS_REFUSED, MQTT_PROTOCOL_ERRORS};
use metrics::counter;
use ntex::util::BytesMut;

use super::peer_log::peer_event;

/// The protocol versions served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}

/// CONNACK 0x01, unacceptable protocol version, in the MQTT 3.1.1 form: MQTT 3.1 reads it too,
/// and nothing is known of the form a client of a future level would read.
const CONNACK_UNSUPPORTED_VERSION: [u8; 4] = [0x20, 0x02, 0x00, 0x01];
/// CONNACK 0x03, server unavailable (MQTT 3.1.1).
const CONNACK_UNAVAILABLE_V3: [u8; 4] = [0x20, 0x02, 0x00, 0x03];
/// CONNACK 0x97, quota exceeded, without properties (MQTT 5).
const CONNACK_QUOTA_EXCEEDED_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x97, 0x00];

/// What the first bytes of a connection are, read before a version adapter sees them. ntex-mqtt's
/// codecs refuse a CONNECT of a protocol level they do not speak as malformed, without the
/// CONNACK 0x01 MQTT 3.1.1 §3.1.2.2 requires: the listener reads this first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    Mqtt(Version),
    /// A CONNECT of another protocol level (MQTT 3.1's `MQIsdp` level 3 included).
    UnsupportedLevel(u8),
    /// Not an MQTT CONNECT: closed without an answer [MQTT-3.1.0-1], [MQTT-3.1.2-1].
    NotMqtt,
}

/// The fixed header of the packet at the start of `buf`: (header length, remaining length);
/// `None` while incomplete, `Some(Err)` when the length is malformed.
fn fixed_header(buf: &[u8]) -> Option<Result<(usize, usize), ()>> {
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(Ok((i + 2, remaining)));
        }
    }
    (buf.len() >= 5).then_some(Err(()))
}

/// Reads `buf` as the start of a connection; `None` until enough of it arrived.
pub fn opening(buf: &[u8]) -> Option<Opening> {
    if *buf.first()? != 0x10 {
        return Some(Opening::NotMqtt);
    }
    let Ok((header, remaining)) = fixed_header(buf)? else {
        return Some(Opening::NotMqtt);
    };
    let body = &buf[header..];
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    if name_len > 6 || remaining < 2 + name_len + 1 {
        return Some(Opening::NotMqtt);
    }
    let name = body.get(2..2 + name_len)?;
    let level = *body.get(2 + name_len)?;
    Some(match (name, level) {
        (b"MQTT", 4) => Opening::Mqtt(Version::V3),
        (b"MQTT", 5) => Opening::Mqtt(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Opening::UnsupportedLevel(level),
        _ => Opening::NotMqtt,
    })
}

/// Reads the [`Opening`] without consuming it: the version adapter reads the same bytes next.
struct PeekOpening;

impl ntex::codec::Decoder for PeekOpening {
    type Item = Opening;
    type Error = std::convert::Infallible;

    fn decode(&self, src: &mut BytesMut) -> Result<Option<Opening>, Self::Error> {
        Ok(opening(src))
    }
}

/// Consumes the first packet once it is all there, so that closing after the answer does not
/// reset the connection over unread bytes (the peer could lose the answer).
struct SkipPacket;

impl ntex::codec::Decoder for SkipPacket {
    type Item = ();
    type Error = ();

    fn decode(&self, src: &mut BytesMut) -> Result<Option<()>, ()> {
        match fixed_header(src) {
            None => Ok(None),
            Some(Err(())) => Err(()),
            Some(Ok((header, remaining))) => {
                let len = header.saturating_add(remaining);
                if src.len() < len {
                    return Ok(None);
                }
                let _ = src.split_to(len);
                Ok(Some(()))
            }
        }
    }
}

/// Decides whether a version adapter gets this new connection, and which: `None`
/// once it was answered here or closed. The CONNECT must start within `connect_timeout`
/// (the adapter gives it as long again to complete).
pub(super) async fn first_bytes(
    io: &ntex::io::Io,
    past_cap: bool,
    connect_timeout: Duration,
) -> Option<Version> {
    let verdict = ntex::time::timeout(connect_timeout, async {
        let Ok(Some(opening)) = io.recv(&PeekOpening).await else {
            return None;
        };
        let refusal: (&'static [u8], &'static str) = match opening {
            Opening::Mqtt(version) if !past_cap => return Some(Ok(version)),
            Opening::Mqtt(Version::V3) => (&CONNACK_UNAVAILABLE_V3, "max_connections"),
            Opening::Mqtt(Version::V5) => (&CONNACK_QUOTA_EXCEEDED_V5, "max_connections"),
            Opening::UnsupportedLevel(_) => (&CONNACK_UNSUPPORTED_VERSION, "unsupported_protocol"),
            Opening::NotMqtt => {
                counter!(MQTT_PROTOCOL_ERRORS, "reason" => "not_mqtt").increment(1);
                peer_event!(
                    DEBUG,
                    ?opening,
                    "mqtt connection not starting with a CONNECT closed"
                );
                return None;
            }
        };
        // The whole CONNECT is read before answering, as a client expects.
        io.recv(&SkipPacket).await.ok().flatten()?;
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => refusal.1).increment(1);
        peer_event!(
            DEBUG,
            ?opening,
            reason = refusal.1,
            "mqtt connection refused"
        );
        Some(Err(refusal.0))
    })
    .await;
    match verdict {
        Ok(Some(Ok(version))) => Some(version),
        Ok(Some(Err(answer))) => {
            if io.encode_slice(answer).is_ok() {
                let _ = ntex::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            }
            None
        }
        Err(()) => {
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => "timeout").increment(1);
            peer_event!(DEBUG, "mqtt connection without a CONNECT in time closed");
            None
        }
        // Closed, or not MQTT: nothing to answer.
        Ok(None) => None,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT's first bytes with this protocol name and level.
    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = vec![0, u8::try_from(name.len()).unwrap_or(u8::MAX)];
        body.extend_from_slice(name);
        body.extend([level, 0x02, 0, 60, 0, 0]);
        let mut packet = vec![0x10, u8::try_from(body.len()).unwrap_or(u8::MAX)];
        packet.extend(body);
        packet
    }

    #[test]
    fn the_first_bytes_tell_the_protocol_level() {
        use Opening::*;
        let cases: &[(Vec<u8>, Option<Opening>)] = &[
            (connect(b"MQTT", 4), Some(Mqtt(Version::V3))),
            (connect(b"MQTT", 5), Some(Mqtt(Version::V5))),
            (connect(b"MQTT", 3), Some(UnsupportedLevel(3))),
            (connect(b"MQTT", 6), Some(UnsupportedLevel(6))),
            (connect(b"MQTT", 0), Some(UnsupportedLevel(0))),
            (connect(b"MQIsdp", 3), Some(UnsupportedLevel(3))),
            (connect(b"MQTX", 4), Some(NotMqtt)),
            (connect(b"MQTTMQTT", 4), Some(NotMqtt)),
            (b"GET / HTTP/1.1\r\n".to_vec(), Some(NotMqtt)),
            // PUBLISH first [MQTT-3.1.0-1].
            (vec![0x30, 0x02, 0x00, 0x00], Some(NotMqtt)),
            // A remaining length of five bytes.
            (vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01], Some(NotMqtt)),
            // Too short to hold the level it claims.
            (
                vec![0x10, 0x02, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4],
                Some(NotMqtt),
            ),
            // Not all there yet.
            (vec![], None),
            (vec![0x10], None),
            (vec![0x10, 0x80], None),
            (connect(b"MQTT", 4)[..8].to_vec(), None),
        ];
        for (bytes, want) in cases {
            assert_eq!(opening(bytes), *want, "{bytes:02x?}");
        }
    }

    #[test]
    fn skip_packet_consumes_exactly_one_whole_packet() {
        use ntex::codec::Decoder;
        let mut two = BytesMut::from(&connect(b"MQTT", 4)[..]);
        two.extend_from_slice(&[0xc0, 0x00]);
        let whole = two.len() - 2;
        let mut partial = BytesMut::from(&two[..whole - 1]);
        assert_eq!(SkipPacket.decode(&mut partial), Ok(None));
        assert_eq!(
            partial.len(),
            whole - 1,
            "nothing consumed until it is all there"
        );
        assert_eq!(SkipPacket.decode(&mut two), Ok(Some(())));
        assert_eq!(&two[..], &[0xc0, 0x00]);
        let mut malformed = BytesMut::from(&[0x10, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(SkipPacket.decode(&mut malformed), Err(()));
    }
}
