//! One CoAP datagram read into what it asks of the endpoint (RFC 7252 §3, §4, §5.4, §5.10), and
//! answers written so that they always fit one datagram: pure functions, no socket, no state.
//!
//! coap-lite decodes the bytes; it checks neither the version, nor a payload marker with nothing
//! after it, nor an Empty message's extra bytes, nor option numbers and lengths. Those checks are
//! here.

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

/// Largest message the endpoint sends: RFC 7252 §4.6's bound when the path MTU is unknown
/// (IPv6's 1280-byte minimum MTU less IP and UDP headers), and under coap-lite's 1280 bytes.
pub const MAX_MESSAGE: usize = 1152;

/// What a datagram is.
#[derive(Debug)]
pub enum Incoming {
    /// Nothing to answer; the `engine_coap_dropped_total` reason.
    Ignore(&'static str),
    /// A CoAP ping (an Empty confirmable message): answered with a Reset.
    Ping { message_id: u16 },
    /// A confirmable message that cannot be processed: rejected with a Reset (§4.2); the
    /// `engine_coap_refused_total` reason.
    Reject {
        message_id: u16,
        reason: &'static str,
    },
    /// A request; its options are not checked yet (see [`check_options`]).
    Request(Request),
}

#[derive(Debug)]
pub struct Request {
    pub head: Head,
    /// The method code (0.01-0.31).
    pub code: u8,
    pub packet: Packet,
}

/// What an answer needs of its request.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub confirmable: bool,
    pub message_id: u16,
    /// At most 8 bytes (longer tokens are a format error).
    pub token: Vec<u8>,
}

/// Reads one datagram.
pub fn read(datagram: &[u8]) -> Incoming {
    let [first, code, id_high, id_low, ..] = *datagram else {
        return Incoming::Ignore("malformed");
    };
    // §3: a message of another version is silently ignored.
    if first >> 6 != 1 {
        return Incoming::Ignore("version");
    }
    let message_id = u16::from_be_bytes([id_high, id_low]);
    let reject = |reason| match (first >> 4) & 0x3 {
        0 => Incoming::Reject { message_id, reason },
        _ => Incoming::Ignore(reason),
    };
    match (first >> 4) & 0x3 {
        0 | 1 => {}
        // The endpoint never sends a confirmable message: there is nothing to acknowledge or
        // reset (a Reset to one of its non-confirmable answers needs no action either).
        _ => return Incoming::Ignore("unexpected"),
    }
    let confirmable = (first >> 4) & 0x3 == 0;
    if code == 0 {
        // §4.1: an Empty message has no token and nothing after the message id.
        return match (datagram.len(), confirmable) {
            (4, true) => Incoming::Ping { message_id },
            (4, false) => Incoming::Ignore("unexpected"),
            _ => reject("malformed"),
        };
    }
    match code >> 5 {
        0 => {}
        // §4.2: a confirmable response with no request behind it is rejected.
        2..=5 => return reject("response"),
        // Classes 1, 6 and 7 are reserved (§12.1).
        _ => return reject("reserved_code"),
    }
    let Ok(packet) = Packet::from_bytes(datagram) else {
        return reject("malformed");
    };
    // §3: a payload marker followed by a zero-length payload is a format error.
    if packet.payload.is_empty()
        && datagram.len() > 4 + packet.get_token().len() + options_len(&packet)
    {
        return reject("malformed");
    }
    Incoming::Request(Request {
        head: Head {
            confirmable,
            message_id,
            token: packet.get_token().to_vec(),
        },
        code,
        packet,
    })
}

/// The bytes the options of `packet` take on the wire (the encoding of deltas and lengths is
/// unique, so this is what they took in the datagram).
fn options_len(packet: &Packet) -> usize {
    let extension = |n: usize| match n {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    };
    let mut last = 0u16;
    let mut len = 0;
    for (&number, values) in packet.options() {
        for value in values {
            let delta = usize::from(number.saturating_sub(last));
            last = number;
            len += 1 + extension(delta) + extension(value.len()) + value.len();
        }
    }
    len
}

/// The options the endpoint reads or accepts in a request: number, name, shortest and longest
/// value (§5.10, RFC 7959 §2.1 for Block1/Block2), whether it may repeat. Any other critical
/// (odd) option is unrecognised; any other elective one is ignored.
const KNOWN: &[(u16, &str, usize, usize, bool)] = &[
    (1, "If-Match", 0, 8, true),
    (3, "Uri-Host", 1, 255, false),
    (4, "ETag", 1, 8, true),
    (5, "If-None-Match", 0, 0, false),
    (7, "Uri-Port", 0, 2, false),
    (8, "Location-Path", 0, 255, true),
    (11, "Uri-Path", 0, 255, true),
    (12, "Content-Format", 0, 2, false),
    (15, "Uri-Query", 0, 255, true),
    (17, "Accept", 0, 2, false),
    (20, "Location-Query", 0, 255, true),
    (23, "Block2", 0, 3, false),
    (27, "Block1", 0, 3, false),
    (35, "Proxy-Uri", 1, 1034, false),
    (39, "Proxy-Scheme", 1, 255, false),
    (60, "Size1", 0, 4, false),
];

/// Why a request's options refuse it.
#[derive(Debug, PartialEq)]
pub enum OptionError {
    /// An unrecognised critical option, or a critical one of the wrong length or repeated:
    /// 4.02 Bad Option with this reason (§5.4.1).
    Bad(String),
    /// Proxy-Uri or Proxy-Scheme: this endpoint is no proxy, 5.05 (§5.7.2).
    Proxy,
}

/// Checks a request's options (§5.4.1, §5.4.3, §5.4.5). An elective option of the wrong length,
/// or repeated where it may not be, is removed from `packet` (treated as unrecognised: ignored).
pub fn check_options(packet: &mut Packet) -> Result<(), OptionError> {
    let mut trimmed: Vec<(u16, std::collections::LinkedList<Vec<u8>>)> = Vec::new();
    for (&number, values) in packet.options() {
        let critical = number & 1 == 1;
        let Some(&(_, name, min, max, repeatable)) = KNOWN.iter().find(|k| k.0 == number) else {
            if critical && !values.is_empty() {
                return Err(OptionError::Bad(format!(
                    "unrecognised critical option {number}"
                )));
            }
            continue;
        };
        let fits = |v: &Vec<u8>| (min..=max).contains(&v.len());
        if let Some(bad) = values.iter().find(|v| !fits(v))
            && critical
        {
            return Err(OptionError::Bad(format!(
                "{name} option of {} bytes: {min} to {max} allowed",
                bad.len()
            )));
        }
        if values.len() > 1 && !repeatable && critical {
            return Err(OptionError::Bad(format!(
                "{name} option may occur only once"
            )));
        }
        if values.iter().any(|v| !fits(v)) || (values.len() > 1 && !repeatable) {
            let kept = values
                .iter()
                .filter(|v| fits(v))
                .take(if repeatable { usize::MAX } else { 1 })
                .cloned()
                .collect();
            trimmed.push((number, kept));
        }
    }
    for (number, kept) in trimmed {
        packet.set_option(CoapOption::from(number), kept);
    }
    let present = |o| packet.get_option(o).is_some_and(|v| !v.is_empty());
    if present(CoapOption::ProxyUri) || present(CoapOption::ProxyScheme) {
        return Err(OptionError::Proxy);
    }
    Ok(())
}

/// What to answer a request with.
#[derive(Debug)]
pub struct Answer {
    pub code: ResponseType,
    pub options: Vec<(CoapOption, Vec<u8>)>,
    /// Diagnostic text (§5.5.2), cut to fit the datagram.
    pub diagnostic: String,
}

impl Answer {
    pub fn new(code: ResponseType) -> Answer {
        Answer {
            code,
            options: Vec::new(),
            diagnostic: String::new(),
        }
    }

    pub fn with_text(code: ResponseType, text: impl Into<String>) -> Answer {
        Answer {
            diagnostic: text.into(),
            ..Answer::new(code)
        }
    }

    pub fn option(mut self, option: CoapOption, value: Vec<u8>) -> Answer {
        self.options.push((option, value));
        self
    }
}

/// An encoded answer.
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// The answer could not be encoded: `bytes` is a bare 5.00 instead.
    pub fell_back: bool,
}

/// Encodes `answer` to the request with `head`: a piggybacked acknowledgement of a confirmable
/// request, else a non-confirmable response with `message_id`. The diagnostic is cut on a
/// character boundary (ending in "…") so that the whole message fits [`MAX_MESSAGE`]; should the
/// answer still not encode, the request gets a bare 5.00 (no options, no payload), which always
/// does: an exchange is never left without an answer.
pub fn encode(head: &Head, answer: &Answer, message_id: u16) -> Encoded {
    let (kind, id) = if head.confirmable {
        (MessageType::Acknowledgement, head.message_id)
    } else {
        (MessageType::NonConfirmable, message_id)
    };
    let mut packet = Packet::new();
    packet.header.set_type(kind);
    packet.header.message_id = id;
    packet.header.code = MessageClass::Response(answer.code);
    packet.set_token(head.token.iter().take(8).copied().collect());
    for (option, value) in &answer.options {
        packet.add_option(*option, value.clone());
    }
    match packet.to_bytes_with_limit(MAX_MESSAGE) {
        Ok(mut bytes) => {
            // The payload marker takes one byte.
            let room = MAX_MESSAGE.saturating_sub(bytes.len() + 1);
            let text = truncate(&answer.diagnostic, room);
            if !text.is_empty() {
                bytes.push(0xff);
                bytes.extend_from_slice(text.as_bytes());
            }
            Encoded {
                bytes,
                fell_back: false,
            }
        }
        Err(_) => Encoded {
            bytes: bare(head, kind, id, ResponseType::InternalServerError),
            fell_back: true,
        },
    }
}

/// A response of a header and token only.
fn bare(head: &Head, kind: MessageType, message_id: u16, code: ResponseType) -> Vec<u8> {
    let token = &head.token[..head.token.len().min(8)];
    let kind = match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let mut bytes = vec![
        0x40 | (kind << 4) | token.len() as u8,
        u8::from(MessageClass::Response(code)),
    ];
    bytes.extend_from_slice(&message_id.to_be_bytes());
    bytes.extend_from_slice(token);
    bytes
}

/// A Reset matching `message_id`: an Empty message (code 0.00, no token, §4.2).
pub fn reset(message_id: u16) -> Vec<u8> {
    let [high, low] = message_id.to_be_bytes();
    vec![0x70, 0x00, high, low]
}

/// `text` cut to at most `max` bytes on a character boundary, ending in "…" when cut.
fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    const MARK: &str = "…";
    let (budget, mark) = match max.checked_sub(MARK.len()) {
        Some(budget) => (budget, MARK),
        None => (max, ""),
    };
    let mut end = budget;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(incoming: &Incoming) -> String {
        match incoming {
            Incoming::Ignore(reason) => format!("ignore {reason}"),
            Incoming::Ping { message_id } => format!("ping {message_id}"),
            Incoming::Reject { message_id, reason } => format!("reject {message_id} {reason}"),
            Incoming::Request(r) => format!("request 0.{:02}", r.code),
        }
    }

    #[track_caller]
    fn check(datagram: &[u8], expected: &str) {
        assert_eq!(kind_of(&read(datagram)), expected, "{datagram:02x?}");
    }

    #[test]
    fn datagrams_are_classified_as_rfc_7252_has_it() {
        check(&[], "ignore malformed");
        check(&[0x40, 0x02, 0x00], "ignore malformed");
        check(&[0x40, 0x00, 0x00, 0x07], "ping 7");
        check(&[0x50, 0x00, 0x00, 0x07], "ignore unexpected");
        check(&[0x60, 0x00, 0x00, 0x07], "ignore unexpected");
        check(&[0x70, 0x00, 0x00, 0x07], "ignore unexpected");
        // Versions 0, 2 and 3.
        check(&[0x00, 0x02, 0x00, 0x07], "ignore version");
        check(&[0x80, 0x02, 0x00, 0x07], "ignore version");
        check(&[0xc0, 0x02, 0x00, 0x07], "ignore version");
        // An Empty message with a token or a payload.
        check(&[0x41, 0x00, 0x00, 0x07, 0x01], "reject 7 malformed");
        check(&[0x40, 0x00, 0x00, 0x07, 0xff, 0x01], "reject 7 malformed");
        check(&[0x51, 0x00, 0x00, 0x07, 0x01], "ignore malformed");
        // Responses and reserved classes.
        check(&[0x40, 0x45, 0x00, 0x07], "reject 7 response");
        check(&[0x50, 0x45, 0x00, 0x07], "ignore response");
        check(&[0x40, 0x20, 0x00, 0x07], "reject 7 reserved_code");
        check(&[0x40, 0xe0, 0x00, 0x07], "reject 7 reserved_code");
        // Requests, any method code.
        check(&[0x40, 0x02, 0x00, 0x07], "request 0.02");
        check(&[0x40, 0x1f, 0x00, 0x07], "request 0.31");
        // Format errors: token length 9, option delta 15, a marker with no payload, an
        // option longer than the datagram.
        check(
            &[0x49, 0x02, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            "reject 7 malformed",
        );
        check(&[0x40, 0x02, 0x00, 0x07, 0xf1, 0x00], "reject 7 malformed");
        check(&[0x40, 0x02, 0x00, 0x07, 0xff], "reject 7 malformed");
        check(
            &[0x40, 0x02, 0x00, 0x07, 0xb1, 0x69, 0xff],
            "reject 7 malformed",
        );
        check(&[0x40, 0x02, 0x00, 0x07, 0xb5, 0x69], "reject 7 malformed");
        // A payload, and an option value ending in 0xff with no payload at all.
        check(
            &[0x40, 0x02, 0x00, 0x07, 0xb1, 0x69, 0xff, 0x31],
            "request 0.02",
        );
        check(&[0x40, 0x02, 0x00, 0x07, 0xb1, 0xff], "request 0.02");
    }

    fn request(options: &[(u16, &[u8])]) -> Packet {
        let mut p = Packet::new();
        p.header.code = MessageClass::Request(coap_lite::RequestType::Post);
        for (number, value) in options {
            p.add_option(CoapOption::from(*number), value.to_vec());
        }
        p
    }

    #[test]
    fn options_are_checked_by_number_length_and_count() {
        let bad = |options: &[(u16, &[u8])]| check_options(&mut request(options)).err();
        assert_eq!(bad(&[(11, b"i"), (11, b"key"), (60, b"\x01")]), None);
        assert_eq!(bad(&[(3, &[b'h'; 255])]), None);
        assert_eq!(
            bad(&[(3, &[b'h'; 300])]),
            Some(OptionError::Bad(
                "Uri-Host option of 300 bytes: 1 to 255 allowed".into()
            ))
        );
        assert!(matches!(bad(&[(3, b"")]), Some(OptionError::Bad(_))));
        assert!(matches!(
            bad(&[(11, &[b'p'; 256])]),
            Some(OptionError::Bad(_))
        ));
        assert!(matches!(bad(&[(27, &[0; 4])]), Some(OptionError::Bad(_))));
        assert!(matches!(
            bad(&[(3, b"a"), (3, b"b")]),
            Some(OptionError::Bad(_))
        ));
        assert_eq!(
            bad(&[(9, b"\x01")]),
            Some(OptionError::Bad("unrecognised critical option 9".into()))
        );
        assert!(matches!(bad(&[(65_001, b"")]), Some(OptionError::Bad(_))));
        assert_eq!(bad(&[(35, b"coap://x/")]), Some(OptionError::Proxy));
        assert_eq!(bad(&[(39, b"coap")]), Some(OptionError::Proxy));
        // Elective options: unknown ones are ignored, wrong ones dropped.
        assert_eq!(bad(&[(65_000, b"x"), (2, b"")]), None);
        let mut p = request(&[(12, &[0, 0, 50]), (8, b"a"), (8, b"b")]);
        assert_eq!(check_options(&mut p), Ok(()));
        assert_eq!(p.get_first_option(CoapOption::ContentFormat), None);
        assert_eq!(
            p.get_option(CoapOption::LocationPath).map(|l| l.len()),
            Some(2)
        );
        let mut p = request(&[(12, &[50]), (12, &[0])]);
        assert_eq!(check_options(&mut p), Ok(()));
        assert_eq!(
            p.get_option(CoapOption::ContentFormat)
                .map(|l| l.iter().cloned().collect::<Vec<_>>()),
            Some(vec![vec![50]])
        );
    }

    fn head(confirmable: bool) -> Head {
        Head {
            confirmable,
            message_id: 0x1234,
            token: vec![0xaa, 0xbb],
        }
    }

    #[test]
    fn long_diagnostics_are_cut_to_fit_one_datagram_on_a_character_boundary() {
        for len in [0, 10, 1000, 1137, 1138, 1139, 1140, 5000] {
            for filler in ["x", "é", "€", "😀"] {
                let text = filler.repeat(len);
                let answer = Answer::with_text(ResponseType::BadRequest, text.clone());
                let encoded = encode(&head(true), &answer, 0);
                assert!(!encoded.fell_back);
                let bytes = encoded.bytes;
                assert!(bytes.len() <= MAX_MESSAGE, "{} bytes", bytes.len());
                let p = Packet::from_bytes(&bytes).expect("decodes");
                assert_eq!(p.header.message_id, 0x1234);
                assert_eq!(p.get_token(), &[0xaa, 0xbb]);
                assert_eq!(
                    p.header.code,
                    MessageClass::Response(ResponseType::BadRequest)
                );
                let got = String::from_utf8(p.payload).expect("UTF-8");
                if text.len() + 1 + 6 <= MAX_MESSAGE {
                    assert_eq!(got, text);
                } else {
                    assert!(got.ends_with('…') && text.starts_with(got.trim_end_matches('…')));
                    assert!(bytes.len() > MAX_MESSAGE - 4, "cut no shorter than needed");
                }
            }
        }
    }

    #[test]
    fn an_answer_that_cannot_be_encoded_becomes_a_bare_5_00() {
        let answer = Answer::with_text(ResponseType::BadRequest, "why")
            .option(CoapOption::LocationPath, vec![b'x'; 2000]);
        for confirmable in [true, false] {
            let encoded = encode(&head(confirmable), &answer, 0x0042);
            assert!(encoded.fell_back);
            let p = Packet::from_bytes(&encoded.bytes).expect("decodes");
            assert_eq!(p.header.code.to_string(), "5.00");
            assert_eq!(p.get_token(), &[0xaa, 0xbb]);
            assert!(p.payload.is_empty() && p.options().next().is_none());
            if confirmable {
                assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
                assert_eq!(p.header.message_id, 0x1234);
            } else {
                assert_eq!(p.header.get_type(), MessageType::NonConfirmable);
                assert_eq!(p.header.message_id, 0x0042);
            }
        }
    }

    #[test]
    fn a_reset_is_an_empty_message() {
        assert_eq!(reset(0x0102), vec![0x70, 0x00, 0x01, 0x02]);
        let p = Packet::from_bytes(&reset(0x0102)).expect("decodes");
        assert_eq!(p.header.get_type(), MessageType::Reset);
        assert_eq!(p.header.code, MessageClass::Empty);
    }
}
