//! The endpoint's decisions, without a socket: a datagram in, what to send back (or the uplink
//! to hand to the integrations, whose outcome is then turned into the answer). Every datagram a
//! peer can send is counted here: dropped, refused, a duplicate, or an uplink.
//!
//! [`answer`] is the seam for a fuzz target: arbitrary bytes in, the bytes that would be sent
//! back out, with the endpoint's whole state machine behind it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::integration::UplinkError;
use actors::metrics::{COAP_DROPPED, COAP_DUPLICATES, COAP_REFUSED};
use coap_lite::{CoapOption, Packet, ResponseType};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use metrics::counter;
use tracing::{debug, warn};

use super::block::{Block, BlockError, Blocks, uint};
use super::exchange::{ExchangeKey, Exchanges, Seen};
use super::message::{self, Answer, Head, Incoming, OptionError};
use super::metadata::metadata;
use crate::config::{CoapConfig, IntegrationsConfig};

/// The bounds the endpoint works within.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest payload an integration takes (after Block1 assembly).
    pub max_payload: usize,
    pub overload_max_age: Duration,
    pub exchange_lifetime: Duration,
    pub max_exchanges: usize,
    pub max_exchange_bytes: usize,
    pub max_block_transfers: usize,
    pub max_block_transfers_per_peer: usize,
    pub max_block_bytes: usize,
    /// Log lines a second peers may cause; 0: none.
    pub peer_log_lines_per_second: u32,
}

impl Limits {
    pub fn new(coap: &CoapConfig, max_payload: usize) -> Limits {
        let bytes = |b: bytesize::ByteSize| usize::try_from(b.as_u64()).unwrap_or(usize::MAX);
        Limits {
            max_payload,
            overload_max_age: coap.overload_max_age,
            exchange_lifetime: coap.exchange_lifetime,
            max_exchanges: coap.max_exchanges,
            max_exchange_bytes: bytes(coap.max_exchange_bytes),
            max_block_transfers: coap.max_block_transfers,
            max_block_transfers_per_peer: coap.max_block_transfers_per_peer,
            max_block_bytes: bytes(coap.max_block_bytes),
            peer_log_lines_per_second: coap.peer_log_lines_per_second,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        let max_payload = IntegrationsConfig::default().max_payload_size.as_u64();
        Limits::new(
            &CoapConfig::default(),
            usize::try_from(max_payload).unwrap_or(usize::MAX),
        )
    }
}

/// What to do with a datagram.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes back.
    Reply(Arc<[u8]>),
    /// Send nothing.
    Silent,
    /// Hand this to the integrations, then turn the outcome into the answer with
    /// [`Core::finish`].
    Uplink(Uplink),
}

/// A request for an integration, with what its answer needs. It holds no parsed packet, so an
/// uplink in flight costs its payload and metadata only.
#[derive(Debug)]
pub struct Uplink {
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// What the converter sees besides the integration's own metadata.
    pub metadata: BTreeMap<String, String>,
    pub exchange: Pending,
}

/// An exchange waiting for its uplink's outcome.
#[derive(Debug)]
pub struct Pending {
    key: ExchangeKey,
    head: Head,
    /// The Block1 option to echo, when the payload came in blocks.
    block: Option<Block>,
}

impl Pending {
    pub fn peer(&self) -> SocketAddr {
        self.key.0
    }
}

pub struct Core {
    limits: Limits,
    /// The endpoint's own address: the default host and port of `Option:uri`.
    local: SocketAddr,
    exchanges: Exchanges,
    blocks: Blocks,
    /// Message ids of non-confirmable answers.
    next_message_id: u16,
    logs: Option<DefaultDirectRateLimiter>,
}

impl Core {
    pub fn new(limits: Limits, local: SocketAddr) -> Core {
        Core {
            exchanges: Exchanges::new(
                limits.exchange_lifetime,
                limits.max_exchanges,
                limits.max_exchange_bytes,
            ),
            blocks: Blocks::new(
                limits.max_block_transfers,
                limits.max_block_transfers_per_peer,
                limits.max_block_bytes,
            ),
            local,
            next_message_id: rand::random(),
            logs: NonZeroU32::new(limits.peer_log_lines_per_second)
                .map(|n| RateLimiter::direct(Quota::per_second(n))),
            limits,
        }
    }

    /// Whether a log line a peer caused may be written now (the rest are only counted).
    pub fn may_log(&self) -> bool {
        self.logs.as_ref().is_some_and(|l| l.check().is_ok())
    }

    /// Decides what one datagram from `peer` gets. `room`: whether an uplink may start now
    /// (else a new confirmable request is answered 5.03 and a non-confirmable one dropped).
    pub fn datagram(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        now: Instant,
        room: bool,
    ) -> Step {
        let request = match message::read(datagram) {
            Incoming::Request(request) => request,
            Incoming::Ping { message_id } => return reply(message::reset(message_id)),
            Incoming::Ignore(reason) => return self.dropped(reason, peer),
            Incoming::Reject { message_id, reason } => {
                self.refused(reason, peer);
                return reply(message::reset(message_id));
            }
        };
        let message::Request {
            head,
            code,
            mut packet,
        } = request;
        match message::check_options(&mut packet) {
            Ok(()) => {}
            // §5.4.1: a non-confirmable message with a bad critical option is rejected.
            Err(OptionError::Bad(_)) if !head.confirmable => {
                return self.dropped("bad_option", peer);
            }
            Err(OptionError::Bad(why)) => {
                self.refused("bad_option", peer);
                return self.now(&head, Answer::with_text(ResponseType::BadOption, why));
            }
            Err(OptionError::Proxy) => {
                self.refused("proxy", peer);
                let answer =
                    Answer::with_text(ResponseType::ProxyingNotSupported, "this is no proxy");
                return self.now(&head, answer);
            }
        }
        // 0.02 POST and 0.03 PUT; any other method, known or not, is 4.05 (§5.8).
        if !matches!(code, 0x02 | 0x03) {
            self.refused("method", peer);
            let answer = Answer::with_text(
                ResponseType::MethodNotAllowed,
                "use POST or PUT to send data to an integration",
            );
            return self.now(&head, answer);
        }
        let path: Vec<String> = packet
            .get_option(CoapOption::UriPath)
            .map(|segments| {
                segments
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let routing_key = match path.as_slice() {
            [.., i, key] if i == "i" && !key.is_empty() => key.clone(),
            _ => {
                self.refused("path", peer);
                let answer = Answer::with_text(
                    ResponseType::NotFound,
                    "the path must end in /i/{routingKey}",
                );
                return self.now(&head, answer);
            }
        };

        let key = (peer, head.message_id);
        match self.exchanges.begin(key, now) {
            None => {}
            Some(seen) => {
                counter!(COAP_DUPLICATES).increment(1);
                return match seen {
                    Seen::Answered(bytes) if head.confirmable => Step::Reply(bytes),
                    _ => Step::Silent,
                };
            }
        }
        if !room {
            if !head.confirmable {
                return self.dropped("overloaded", peer);
            }
            let answer = Answer::with_text(ResponseType::ServiceUnavailable, "overloaded")
                .option(CoapOption::MaxAge, self.max_age());
            return self.cached(key, &head, answer);
        }

        let mut block = None;
        let payload = match packet
            .get_first_option(CoapOption::Block1)
            .map(|v| Block::parse(v))
        {
            None => std::mem::take(&mut packet.payload),
            Some(None) => {
                self.refused("bad_block", peer);
                let answer =
                    Answer::with_text(ResponseType::BadRequest, "Block1 SZX 7 is reserved");
                return self.cached(key, &head, answer);
            }
            Some(Some(b)) => match self.block(&packet, peer, &routing_key, b) {
                Ok(Some(whole)) => {
                    block = Some(b);
                    whole
                }
                Ok(None) => {
                    let answer =
                        Answer::new(ResponseType::Continue).option(CoapOption::Block1, b.encode());
                    return self.cached(key, &head, answer);
                }
                Err(answer) => return self.cached(key, &head, answer),
            },
        };
        let metadata = metadata(&packet, &path, self.local);
        Step::Uplink(Uplink {
            routing_key,
            payload,
            metadata,
            exchange: Pending { key, head, block },
        })
    }

    /// The answer to an uplink, from its outcome; kept for retransmissions.
    pub fn finish(&mut self, pending: Pending, outcome: Result<(), UplinkError>) -> Arc<[u8]> {
        let mut answer = match outcome {
            Ok(()) => Answer::new(ResponseType::Changed),
            Err(e) => self.error_answer(&e),
        };
        if let Some(block) = pending.block {
            answer.options.push((CoapOption::Block1, block.encode()));
        }
        self.keep(pending.key, &pending.head, answer)
    }

    /// The answer to an uplink that never finished (its task died): 5.00, kept like any other.
    pub fn fail(&mut self, pending: Pending) -> Arc<[u8]> {
        self.refused("internal_error", pending.key.0);
        let answer = Answer::new(ResponseType::InternalServerError);
        self.keep(pending.key, &pending.head, answer)
    }

    /// Adds one Block1 block; the whole payload once the last block is in.
    fn block(
        &mut self,
        packet: &Packet,
        peer: SocketAddr,
        routing_key: &str,
        block: Block,
    ) -> Result<Option<Vec<u8>>, Answer> {
        let too_large = |limit: usize| {
            Answer::with_text(
                ResponseType::RequestEntityTooLarge,
                format!("the payload is over {limit} bytes"),
            )
            .option(
                CoapOption::Size1,
                uint(u32::try_from(limit).unwrap_or(u32::MAX)),
            )
        };
        // RFC 7959 §4: a first block may announce the whole size; refuse at once what will not fit.
        let announced = packet
            .get_first_option(CoapOption::Size1)
            .map(|v| v.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)));
        if block.num == 0 && announced.is_some_and(|n| n > self.limits.max_payload as u64) {
            self.refused("too_large", peer);
            return Err(too_large(self.limits.max_payload));
        }
        let key = (peer, routing_key.to_owned());
        match self
            .blocks
            .add(key, block, &packet.payload, self.limits.max_payload)
        {
            Ok(done) => Ok(done),
            Err(BlockError::Incomplete) => {
                self.refused("block_incomplete", peer);
                Err(Answer::with_text(
                    ResponseType::RequestEntityIncomplete,
                    "block received out of order; start again from block 0",
                ))
            }
            Err(BlockError::TooLarge(limit)) => {
                self.refused("too_large", peer);
                Err(too_large(limit))
            }
        }
    }

    fn error_answer(&self, e: &UplinkError) -> Answer {
        match e {
            UplinkError::NotFound | UplinkError::Disabled => {
                Answer::with_text(ResponseType::NotFound, e.to_string())
            }
            UplinkError::TooLarge { max, .. } => {
                Answer::with_text(ResponseType::RequestEntityTooLarge, e.to_string()).option(
                    CoapOption::Size1,
                    uint(u32::try_from(*max).unwrap_or(u32::MAX)),
                )
            }
            e if e.is_overload() => {
                Answer::with_text(ResponseType::ServiceUnavailable, e.to_string())
                    .option(CoapOption::MaxAge, self.max_age())
            }
            // A converter error, an empty payload, what the converter made and may not be
            // taken: the sender's fault.
            e => Answer::with_text(ResponseType::BadRequest, e.to_string()),
        }
    }

    fn max_age(&self) -> Vec<u8> {
        uint(u32::try_from(self.limits.overload_max_age.as_secs()).unwrap_or(u32::MAX))
    }

    /// An answer sent at once and not kept: the same request would get it again anyway.
    fn now(&mut self, head: &Head, answer: Answer) -> Step {
        Step::Reply(self.encode(head, &answer).into())
    }

    /// An answer kept for retransmissions of its exchange.
    fn cached(&mut self, key: ExchangeKey, head: &Head, answer: Answer) -> Step {
        Step::Reply(self.keep(key, head, answer))
    }

    fn keep(&mut self, key: ExchangeKey, head: &Head, answer: Answer) -> Arc<[u8]> {
        let bytes: Arc<[u8]> = self.encode(head, &answer).into();
        self.exchanges.answer(key, bytes.clone());
        bytes
    }

    fn encode(&mut self, head: &Head, answer: &Answer) -> Vec<u8> {
        let id = self.next_message_id;
        if !head.confirmable {
            self.next_message_id = id.wrapping_add(1);
        }
        let encoded = message::encode(head, answer, id);
        if encoded.fell_back {
            counter!(COAP_REFUSED, "reason" => "internal_error").increment(1);
            if self.may_log() {
                warn!(code = ?answer.code, "coap answer could not be encoded; sent 5.00");
            }
        }
        encoded.bytes
    }

    fn dropped(&self, reason: &'static str, peer: SocketAddr) -> Step {
        counter!(COAP_DROPPED, "reason" => reason).increment(1);
        if self.may_log() {
            debug!(%peer, reason, "coap datagram dropped");
        }
        Step::Silent
    }

    fn refused(&self, reason: &'static str, peer: SocketAddr) {
        counter!(COAP_REFUSED, "reason" => reason).increment(1);
        if self.may_log() {
            debug!(%peer, reason, "coap request refused");
        }
    }
}

fn reply(bytes: Vec<u8>) -> Step {
    Step::Reply(bytes.into())
}

/// The answer a fresh endpoint gives one datagram, an uplink counted as accepted (2.04); `None`
/// when it sends nothing. Arbitrary bytes must never make it panic.
pub fn answer(datagram: &[u8]) -> Option<Vec<u8>> {
    let peer = SocketAddr::from(([192, 0, 2, 1], 5683));
    let local = SocketAddr::from(([127, 0, 0, 1], 5683));
    let mut core = Core::new(Limits::default(), local);
    match core.datagram(datagram, peer, Instant::now(), true) {
        Step::Reply(bytes) => Some(bytes.to_vec()),
        Step::Silent => None,
        Step::Uplink(uplink) => Some(core.finish(uplink.exchange, Ok(())).to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use harness::coap::{ACK, BLOCK1, CON, NON, RST, Raw, SIZE1, URI_HOST, block};

    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40_000))
    }

    fn core() -> Core {
        let limits = Limits {
            max_payload: 100,
            ..Limits::default()
        };
        Core::new(limits, SocketAddr::from(([127, 0, 0, 1], 5683)))
    }

    /// An answer as `"ACK 4.02 #7 [aa bb]"`: type, code, message id (ACK and RST), token;
    /// `"uplink <key> <payload length>"`; `"-"` for silence.
    fn show(step: Step, core: &mut Core) -> String {
        let bytes = match step {
            Step::Silent => return "-".into(),
            Step::Uplink(u) => {
                let text = format!("uplink {} {}", u.routing_key, u.payload.len());
                core.finish(u.exchange, Ok(()));
                return text;
            }
            Step::Reply(bytes) => bytes,
        };
        let p = Packet::from_bytes(&bytes).expect("our answers decode");
        assert!(bytes.len() <= message::MAX_MESSAGE);
        let kind = ["CON", "NON", "ACK", "RST"][usize::from((bytes[0] >> 4) & 3)];
        let id = match kind {
            "ACK" | "RST" => format!(" #{}", p.header.message_id),
            _ => String::new(),
        };
        format!("{kind} {}{id} {:02x?}", p.header.get_code(), p.get_token())
    }

    #[track_caller]
    fn check(core: &mut Core, raw: &Raw, expected: &str) {
        let step = core.datagram(&raw.encode(), peer(), Instant::now(), true);
        assert_eq!(show(step, core), expected, "{raw:?}");
    }

    fn post(mid: u16) -> Raw {
        Raw::post("i/key", b"x", mid)
    }

    #[test]
    fn every_kind_of_datagram_gets_its_answer() {
        let mut c = core();
        let cases: Vec<(Raw, &str)> = vec![
            (post(1), "uplink key 1"),
            (post(2).non(), "uplink key 1"),
            (Raw::empty(CON, 3), "RST 0.00 #3 []"),
            (Raw::empty(NON, 4), "-"),
            (Raw::empty(ACK, 5), "-"),
            (Raw::empty(RST, 6), "-"),
            (post(7).version(0), "-"),
            (post(8).version(2), "-"),
            (post(9).code(0x1f), "ACK 4.05 #9 [00, 09]"),
            (post(10).code(0x01), "ACK 4.05 #10 [00, 0a]"),
            (post(11).code(0x1f).non(), "NON 4.05 [00, 0b]"),
            (post(12).code(0x45), "RST 0.00 #12 []"),
            (post(13).code(0xe0), "RST 0.00 #13 []"),
            (post(14).code(0x45).non(), "-"),
            (post(15).marker_only(), "RST 0.00 #15 []"),
            (post(16).with(9, b"\x01"), "ACK 4.02 #16 [00, 10]"),
            (
                post(17).with(URI_HOST, &[b'h'; 300]),
                "ACK 4.02 #17 [00, 11]",
            ),
            (post(18).with(9, b"").non(), "-"),
            (post(19).with(35, b"coap://x/"), "ACK 5.05 #19 [00, 13]"),
            (Raw::post("no/key", b"x", 20), "ACK 4.04 #20 [00, 14]"),
            (post(21).with(65_000, b""), "uplink key 1"),
        ];
        for (raw, expected) in &cases {
            check(&mut c, raw, expected);
        }
    }

    #[test]
    fn a_retransmission_gets_the_same_answer_and_is_not_processed_again() {
        let mut c = core();
        let raw = post(1).encode();
        let Step::Uplink(u) = c.datagram(&raw, peer(), Instant::now(), true) else {
            panic!("an uplink");
        };
        // While it runs, a retransmission is ignored.
        assert!(matches!(
            c.datagram(&raw, peer(), Instant::now(), true),
            Step::Silent
        ));
        let long = UplinkError::Refused("é".repeat(5000));
        let answer = c.finish(u.exchange, Err(long));
        assert!(answer.len() <= message::MAX_MESSAGE);
        let Step::Reply(again) = c.datagram(&raw, peer(), Instant::now(), true) else {
            panic!("the kept answer");
        };
        assert_eq!(again, answer);
        assert_eq!(show(Step::Reply(again), &mut c), "ACK 4.00 #1 [00, 01]");

        // An uplink whose task died is answered 5.00, and so is its retransmission.
        let raw = post(2).encode();
        let Step::Uplink(u) = c.datagram(&raw, peer(), Instant::now(), true) else {
            panic!("an uplink");
        };
        let failed = c.fail(u.exchange);
        let Step::Reply(again) = c.datagram(&raw, peer(), Instant::now(), true) else {
            panic!("the kept answer");
        };
        assert_eq!(again, failed);
        assert_eq!(show(Step::Reply(again), &mut c), "ACK 5.00 #2 [00, 02]");
    }

    #[test]
    fn without_room_confirmable_requests_are_told_to_come_back() {
        let mut c = core();
        let step = c.datagram(&post(1).encode(), peer(), Instant::now(), false);
        let Step::Reply(bytes) = step else {
            panic!("5.03");
        };
        let p = Packet::from_bytes(&bytes).expect("decodes");
        assert_eq!(p.header.get_code(), "5.03");
        assert_eq!(p.get_first_option(CoapOption::MaxAge), Some(&vec![2]));
        let non = post(2).non().encode();
        assert!(matches!(
            c.datagram(&non, peer(), Instant::now(), false),
            Step::Silent
        ));
    }

    #[test]
    fn block1_uploads_are_assembled_and_their_abuse_refused() {
        let mut c = core();
        let up = |num: u32, more: bool, szx: u8, payload: &[u8], mid: u16| {
            Raw::post("i/key", payload, mid).with(BLOCK1, &block(num, more, szx))
        };
        check(&mut c, &up(0, true, 7, &[0; 16], 1), "ACK 4.00 #1 [00, 01]");
        check(
            &mut c,
            &up(0xf_ffff, true, 6, &[0; 1024], 2),
            "ACK 4.08 #2 [00, 02]",
        );
        let announced = up(0, true, 0, &[0; 16], 3).with(SIZE1, &[0x01, 0x00]);
        check(&mut c, &announced, "ACK 4.13 #3 [00, 03]");
        check(&mut c, &up(0, true, 0, &[0; 16], 4), "ACK 2.31 #4 [00, 04]");
        check(&mut c, &up(1, true, 0, &[0; 16], 5), "ACK 2.31 #5 [00, 05]");
        check(&mut c, &up(2, false, 0, &[0; 5], 6), "uplink key 37");
        // Past max_payload (100 bytes) on the block that crosses it.
        for num in 0..6 {
            check(
                &mut c,
                &up(num, true, 0, &[0; 16], 10 + num as u16),
                &format!("ACK 2.31 #{} [00, {:02x}]", 10 + num, 10 + num),
            );
        }
        check(
            &mut c,
            &up(6, true, 0, &[0; 16], 16),
            "ACK 4.13 #16 [00, 10]",
        );
    }

    /// Junk derived from well-formed requests by flipping, cutting and repeating bytes: no
    /// input may panic, and every answer must decode and fit a datagram.
    #[test]
    fn arbitrary_bytes_never_panic_and_every_answer_fits() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = [
            post(1).with(BLOCK1, &block(0, true, 6)).encode(),
            post(2)
                .with(URI_HOST, b"host")
                .with(SIZE1, &[1, 0])
                .encode(),
            Raw::empty(CON, 3).encode(),
        ];
        for i in 0..20_000 {
            let mut d = seeds[i % seeds.len()].clone();
            for _ in 0..(next() % 4) {
                match next() % 3 {
                    0 if !d.is_empty() => {
                        let at = (next() as usize) % d.len();
                        d[at] = next() as u8;
                    }
                    1 => d.truncate((next() as usize) % (d.len() + 1)),
                    _ => d.extend((0..next() % 40).map(|_| next() as u8)),
                }
            }
            if let Some(bytes) = answer(&d) {
                assert!(bytes.len() <= message::MAX_MESSAGE);
                Packet::from_bytes(&bytes).expect("our answers decode");
            }
        }
    }
}
