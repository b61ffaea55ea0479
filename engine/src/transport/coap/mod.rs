//! The CoAP integration endpoint (RFC 7252, coap-lite's codec on a tokio UDP socket): devices
//! POST or PUT to `coap://host[:port]/[path/]i/{routingKey}`.
//!
//! - Confirmable requests get a piggybacked ACK carrying the response; non-confirmable ones
//!   get a non-confirmable response.
//! - Errors as ThingsBoard's troubleshooting table has them: another method 4.05, an unknown
//!   routing key 4.04, an empty or malformed payload 4.00, a converter error 4.00 with the
//!   reason as diagnostic payload; overload 5.03 with `Max-Age` (a non-confirmable request is
//!   dropped and counted instead).
//! - A retransmitted confirmable request (same message id from the same peer within the
//!   exchange lifetime) is answered from a bounded cache, never processed twice.
//! - Block-wise uploads (Block1, RFC 7959) are assembled up to the integration payload limit.
//! - Plain CoAP only: there is no DTLS endpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use actors::integration::{IntegrationKind, Integrations, UplinkError};
use actors::metrics::{COAP_DROPPED, COAP_DUPLICATES};
use anyhow::Context;
use coap_lite::{
    CoapOption, ContentFormat, MessageClass, MessageType, Packet, RequestType, ResponseType,
};
use metrics::counter;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::CoapConfig;

/// Largest datagram read; CoAP over UDP stays well below it.
const MAX_DATAGRAM: usize = 65_535;

pub struct CoapServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CoapServer {
    /// `max_payload`: the integrations' payload limit, which bounds Block1 assembly too.
    pub async fn start(
        config: &CoapConfig,
        max_payload: usize,
        hub: Arc<Integrations>,
    ) -> anyhow::Result<CoapServer> {
        let socket = UdpSocket::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen for CoAP on {}", config.bind))?;
        let addr = socket.local_addr()?;
        let endpoint = Arc::new(Endpoint {
            socket: Arc::new(socket),
            hub,
            local: addr,
            max_payload,
            overload_max_age: config.overload_max_age,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            exchanges: Mutex::new(Exchanges::new(
                config.exchange_lifetime,
                config.max_exchanges,
            )),
            blocks: Mutex::new(Blocks::new(config.max_block_transfers)),
            next_message_id: AtomicU16::new(rand::random()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(endpoint.serve(stopped));
        Ok(CoapServer { addr, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops reading requests; requests already taken finish on their own.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Endpoint {
    socket: Arc<UdpSocket>,
    hub: Arc<Integrations>,
    local: SocketAddr,
    max_payload: usize,
    overload_max_age: Duration,
    in_flight: Arc<Semaphore>,
    exchanges: Mutex<Exchanges>,
    blocks: Mutex<Blocks>,
    next_message_id: AtomicU16,
}

type ExchangeKey = (SocketAddr, u16);

enum Exchange {
    /// Being processed; a retransmission is ignored (the answer is on its way).
    Running,
    /// Answered with these bytes; a retransmission gets them again.
    Answered(Arc<Vec<u8>>),
}

/// Recent exchanges by (peer, message id), bounded by count and age.
struct Exchanges {
    lifetime: Duration,
    max: usize,
    by_key: HashMap<ExchangeKey, (Instant, Exchange)>,
    order: VecDeque<(Instant, ExchangeKey)>,
}

impl Exchanges {
    fn new(lifetime: Duration, max: usize) -> Exchanges {
        Exchanges {
            lifetime,
            max: max.max(1),
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// `None` when the exchange is new (and now running); else what is known of it.
    fn begin(&mut self, key: ExchangeKey, now: Instant) -> Option<Option<Arc<Vec<u8>>>> {
        while let Some(&(at, old)) = self.order.front() {
            if now.duration_since(at) < self.lifetime && self.order.len() < self.max {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&old).is_some_and(|(t, _)| *t == at) {
                self.by_key.remove(&old);
            }
        }
        if let Some((_, seen)) = self.by_key.get(&key) {
            return Some(match seen {
                Exchange::Running => None,
                Exchange::Answered(bytes) => Some(bytes.clone()),
            });
        }
        self.by_key.insert(key, (now, Exchange::Running));
        self.order.push_back((now, key));
        None
    }

    fn answer(&mut self, key: ExchangeKey, bytes: Arc<Vec<u8>>) {
        if let Some((_, state)) = self.by_key.get_mut(&key) {
            *state = Exchange::Answered(bytes);
        }
    }
}

/// Block1 uploads being assembled, by peer and URI; bounded (the oldest is dropped).
struct Blocks {
    max: usize,
    by_key: HashMap<(SocketAddr, String), Vec<u8>>,
    order: VecDeque<(SocketAddr, String)>,
}

impl Blocks {
    fn new(max: usize) -> Blocks {
        Blocks {
            max: max.max(1),
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Starts (or restarts) an upload, dropping the oldest ones past the bound.
    fn start(&mut self, key: (SocketAddr, String)) {
        self.remove(&key);
        while self.order.len() >= self.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.by_key.remove(&oldest);
        }
        self.by_key.insert(key.clone(), Vec::new());
        self.order.push_back(key);
    }

    /// Ends an upload; what it had assembled. `order` always holds exactly the keys of
    /// `by_key`, so neither grows past `max`.
    fn remove(&mut self, key: &(SocketAddr, String)) -> Option<Vec<u8>> {
        let data = self.by_key.remove(key)?;
        self.order.retain(|k| k != key);
        Some(data)
    }
}

/// A Block1/Block2 option value: block number, more flag, size exponent.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    num: u32,
    more: bool,
    szx: u8,
}

impl Block {
    fn parse(bytes: &[u8]) -> Option<Block> {
        if bytes.len() > 3 {
            return None;
        }
        let v = bytes.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b));
        let szx = u8::try_from(v & 0x7).ok()?;
        (szx < 7).then_some(Block {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    fn size(self) -> usize {
        16 << self.szx
    }

    fn encode(self) -> Vec<u8> {
        uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }
}

/// An option's unsigned integer in the fewest bytes (zero is no bytes).
fn uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// What to answer a request with.
struct Answer {
    code: ResponseType,
    payload: Vec<u8>,
    options: Vec<(CoapOption, Vec<u8>)>,
}

impl Answer {
    fn new(code: ResponseType) -> Answer {
        Answer {
            code,
            payload: Vec::new(),
            options: Vec::new(),
        }
    }

    fn with_text(code: ResponseType, text: impl Into<String>) -> Answer {
        Answer {
            payload: text.into().into_bytes(),
            ..Answer::new(code)
        }
    }
}

impl Endpoint {
    async fn serve(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                _ = stopped.changed() => return,
                r = self.socket.recv_from(&mut buf) => r,
            };
            let (n, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    // E.g. an ICMP "port unreachable" of an earlier answer: not fatal.
                    debug!(error = %e, "coap receive failed");
                    continue;
                }
            };
            self.datagram(&buf[..n], peer).await;
        }
    }

    async fn datagram(self: &Arc<Self>, datagram: &[u8], peer: SocketAddr) {
        let packet = match Packet::from_bytes(datagram) {
            Ok(p) => p,
            Err(e) => {
                counter!(COAP_DROPPED, "reason" => "malformed").increment(1);
                debug!(%peer, error = ?e, "malformed coap message");
                // A confirmable message we cannot read is rejected with a Reset (RFC 7252
                // 4.2), when at least its header is there.
                if datagram.len() >= 4 && datagram[0] >> 6 == 1 && (datagram[0] >> 4) & 0x3 == 0 {
                    let mut reset = Packet::new();
                    reset.header.set_type(MessageType::Reset);
                    reset.header.message_id = u16::from_be_bytes([datagram[2], datagram[3]]);
                    self.send(&reset, peer).await;
                }
                return;
            }
        };
        let confirmable = match packet.header.get_type() {
            MessageType::Confirmable => true,
            MessageType::NonConfirmable => false,
            MessageType::Acknowledgement | MessageType::Reset => return,
        };
        let method = match packet.header.code {
            MessageClass::Request(method) => method,
            // An empty confirmable message is a ping: answered with a Reset.
            MessageClass::Empty if confirmable => {
                let mut reset = Packet::new();
                reset.header.set_type(MessageType::Reset);
                reset.header.message_id = packet.header.message_id;
                self.send(&reset, peer).await;
                return;
            }
            _ => return,
        };
        let key = (peer, packet.header.message_id);
        let seen = self.exchanges.lock().begin(key, Instant::now());
        match seen {
            None => {}
            Some(answered) => {
                counter!(COAP_DUPLICATES).increment(1);
                if let (true, Some(bytes)) = (confirmable, answered) {
                    let _ = self.socket.send_to(&bytes, peer).await;
                }
                return;
            }
        }
        let Some(permit) = self.in_flight.clone().try_acquire_owned().ok() else {
            if confirmable {
                let mut answer = Answer::with_text(ResponseType::ServiceUnavailable, "overloaded");
                answer.options.push((
                    CoapOption::MaxAge,
                    uint(u32::try_from(self.overload_max_age.as_secs()).unwrap_or(u32::MAX)),
                ));
                self.respond(&packet, key, answer).await;
            } else {
                counter!(COAP_DROPPED, "reason" => "overloaded").increment(1);
            }
            return;
        };
        let endpoint = self.clone();
        tokio::spawn(async move {
            let answer = endpoint.request(&packet, method, peer).await;
            endpoint.respond(&packet, key, answer).await;
            drop(permit);
        });
    }

    async fn request(&self, packet: &Packet, method: RequestType, peer: SocketAddr) -> Answer {
        if !matches!(method, RequestType::Post | RequestType::Put) {
            return Answer::with_text(
                ResponseType::MethodNotAllowed,
                "use POST or PUT to send data to an integration",
            );
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
                return Answer::with_text(
                    ResponseType::NotFound,
                    "the path must end in /i/{routingKey}",
                );
            }
        };
        let mut block_answer = None;
        let payload = match packet
            .get_first_option(CoapOption::Block1)
            .map(|v| Block::parse(v))
        {
            None => packet.payload.clone(),
            Some(None) => {
                return Answer::with_text(ResponseType::BadOption, "invalid Block1 option");
            }
            Some(Some(block)) => match self.block(peer, &path, block, &packet.payload) {
                Ok(Some(whole)) => {
                    block_answer = Some(block);
                    whole
                }
                Ok(None) => {
                    let mut answer = Answer::new(ResponseType::Continue);
                    answer.options.push((CoapOption::Block1, block.encode()));
                    return answer;
                }
                Err(answer) => return answer,
            },
        };
        let metadata = self.metadata(packet, &path);
        let outcome = self
            .hub
            .uplink(IntegrationKind::Coap, &routing_key, payload, metadata)
            .await;
        let mut answer = match outcome {
            Ok(_) => Answer::new(ResponseType::Changed),
            Err(e) => error_answer(&e, self.overload_max_age),
        };
        if let Some(block) = block_answer {
            answer.options.push((CoapOption::Block1, block.encode()));
        }
        answer
    }

    /// Adds one Block1 block; the whole payload once the last block is in.
    fn block(
        &self,
        peer: SocketAddr,
        path: &[String],
        block: Block,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, Answer> {
        let key = (peer, path.join("/"));
        let mut blocks = self.blocks.lock();
        if block.num == 0 {
            blocks.start(key.clone());
        }
        let Some(data) = blocks.by_key.get_mut(&key) else {
            return Err(Answer::with_text(
                ResponseType::RequestEntityIncomplete,
                "block received out of order; start again from block 0",
            ));
        };
        let offset = (block.num as usize).saturating_mul(block.size());
        if offset != data.len() || (block.more && payload.len() != block.size()) {
            blocks.remove(&key);
            return Err(Answer::with_text(
                ResponseType::RequestEntityIncomplete,
                "block received out of order; start again from block 0",
            ));
        }
        if data.len() + payload.len() > self.max_payload {
            blocks.remove(&key);
            let mut answer = Answer::with_text(
                ResponseType::RequestEntityTooLarge,
                format!("the payload is over {} bytes", self.max_payload),
            );
            answer.options.push((
                CoapOption::Size1,
                uint(u32::try_from(self.max_payload).unwrap_or(u32::MAX)),
            ));
            return Err(answer);
        }
        data.extend_from_slice(payload);
        if block.more {
            return Ok(None);
        }
        Ok(Some(blocks.remove(&key).unwrap_or_default()))
    }

    /// What the converter sees besides the integration's own metadata.
    fn metadata(&self, packet: &Packet, path: &[String]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(format) = packet.get_first_option(CoapOption::ContentFormat) {
            let number = format
                .iter()
                .fold(0usize, |v, b| (v << 8) | usize::from(*b));
            m.insert("Option:content-format".into(), content_format_name(number));
        }
        let host = packet
            .get_first_option(CoapOption::UriHost)
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_else(|| self.local.ip().to_string());
        let port = packet
            .get_first_option(CoapOption::UriPort)
            .map(|p| p.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)))
            .unwrap_or(u32::from(self.local.port()));
        let mut uri = format!("coap://{host}:{port}/{}", path.join("/"));
        if let Some(query) = joined(packet, CoapOption::UriQuery, "&") {
            uri.push('?');
            uri.push_str(&query);
        }
        m.insert("Option:uri".into(), uri);
        if let Some(p) = joined(packet, CoapOption::LocationPath, "/") {
            m.insert("Option:location-path".into(), p);
        }
        if let Some(q) = joined(packet, CoapOption::LocationQuery, "&") {
            m.insert("Option:location-query".into(), q);
        }
        m
    }

    async fn respond(&self, request: &Packet, key: ExchangeKey, answer: Answer) {
        let confirmable = request.header.get_type() == MessageType::Confirmable;
        let mut response = Packet::new();
        if confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.header.message_id;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        }
        response.header.code = MessageClass::Response(answer.code);
        response.set_token(request.get_token().to_vec());
        for (option, value) in answer.options {
            response.add_option(option, value);
        }
        response.payload = answer.payload;
        match response.to_bytes() {
            Ok(bytes) => {
                let bytes = Arc::new(bytes);
                self.exchanges.lock().answer(key, bytes.clone());
                if let Err(e) = self.socket.send_to(&bytes, key.0).await {
                    debug!(peer = %key.0, error = %e, "coap answer not sent");
                }
            }
            Err(e) => warn!(error = ?e, "coap answer could not be encoded"),
        }
    }

    async fn send(&self, packet: &Packet, peer: SocketAddr) {
        if let Ok(bytes) = packet.to_bytes() {
            let _ = self.socket.send_to(&bytes, peer).await;
        }
    }
}

fn error_answer(e: &UplinkError, max_age: Duration) -> Answer {
    match e {
        UplinkError::NotFound | UplinkError::Disabled => {
            Answer::with_text(ResponseType::NotFound, e.to_string())
        }
        UplinkError::TooLarge { max, .. } => {
            let mut answer = Answer::with_text(ResponseType::RequestEntityTooLarge, e.to_string());
            answer.options.push((
                CoapOption::Size1,
                uint(u32::try_from(*max).unwrap_or(u32::MAX)),
            ));
            answer
        }
        UplinkError::EmptyPayload | UplinkError::Convert(_) | UplinkError::Refused(_) => {
            Answer::with_text(ResponseType::BadRequest, e.to_string())
        }
        UplinkError::Overloaded | UplinkError::Queue(_) | UplinkError::Registry(_) => {
            let mut answer = Answer::with_text(ResponseType::ServiceUnavailable, e.to_string());
            answer.options.push((
                CoapOption::MaxAge,
                uint(u32::try_from(max_age.as_secs()).unwrap_or(u32::MAX)),
            ));
            answer
        }
    }
}

fn joined(packet: &Packet, option: CoapOption, separator: &str) -> Option<String> {
    let values = packet.get_option(option)?;
    let parts: Vec<String> = values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join(separator))
}

/// The media type of a Content-Format number, as ThingsBoard shows it; the number itself when
/// it is not a common one.
fn content_format_name(number: usize) -> String {
    let name = match ContentFormat::try_from(number) {
        Ok(ContentFormat::TextPlain) => "text/plain",
        Ok(ContentFormat::ApplicationLinkFormat) => "application/link-format",
        Ok(ContentFormat::ApplicationXML) => "application/xml",
        Ok(ContentFormat::ApplicationOctetStream) => "application/octet-stream",
        Ok(ContentFormat::ApplicationEXI) => "application/exi",
        Ok(ContentFormat::ApplicationJSON) => "application/json",
        Ok(ContentFormat::ApplicationCBOR) => "application/cbor",
        Ok(ContentFormat::ApplicationSenmlJSON) => "application/senml+json",
        Ok(ContentFormat::ApplicationSenmlCBOR) => "application/senml+cbor",
        _ => return number.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_options_round_trip() {
        for block in [
            Block {
                num: 0,
                more: true,
                szx: 2,
            },
            Block {
                num: 5,
                more: false,
                szx: 6,
            },
            Block {
                num: 70_000,
                more: true,
                szx: 0,
            },
        ] {
            assert_eq!(Block::parse(&block.encode()), Some(block));
        }
        assert_eq!(
            Block {
                num: 0,
                more: false,
                szx: 0
            }
            .encode(),
            Vec::<u8>::new()
        );
        assert_eq!(Block::parse(&[0x0f]), None, "szx 7 is reserved");
        assert_eq!(
            Block {
                num: 1,
                more: true,
                szx: 2
            }
            .size(),
            64
        );
    }

    #[test]
    fn retransmissions_are_recognised_until_the_lifetime_ends() {
        let mut ex = Exchanges::new(Duration::from_secs(10), 100);
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let t0 = Instant::now();
        assert!(ex.begin((peer, 7), t0).is_none(), "new");
        assert_eq!(ex.begin((peer, 7), t0), Some(None), "running");
        ex.answer((peer, 7), Arc::new(vec![1, 2]));
        assert_eq!(ex.begin((peer, 7), t0), Some(Some(Arc::new(vec![1, 2]))));
        assert!(
            ex.begin((peer, 8), t0).is_none(),
            "another message id is new"
        );
        let later = t0 + Duration::from_secs(11);
        assert!(
            ex.begin((peer, 7), later).is_none(),
            "forgotten after the lifetime"
        );
    }

    #[test]
    fn the_exchange_cache_is_bounded() {
        let mut ex = Exchanges::new(Duration::from_secs(100), 3);
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let now = Instant::now();
        for id in 0..10 {
            ex.begin((peer, id), now);
        }
        assert!(ex.by_key.len() <= 3);
        assert!(ex.begin((peer, 0), now).is_none(), "the oldest went first");
    }

    #[test]
    fn block_uploads_are_bounded_even_when_abandoned() {
        let mut blocks = Blocks::new(4);
        for port in 0..100u16 {
            let key = (SocketAddr::from(([127, 0, 0, 1], port)), "i/key".to_owned());
            blocks.start(key.clone());
            if port % 2 == 0 {
                // An upload that fails part-way is forgotten entirely.
                assert!(blocks.remove(&key).is_some());
            }
            assert!(blocks.order.len() <= 4 && blocks.by_key.len() == blocks.order.len());
        }
        // The newest survive; the oldest were dropped.
        let newest = (SocketAddr::from(([127, 0, 0, 1], 99)), "i/key".to_owned());
        assert!(blocks.by_key.contains_key(&newest));
        let oldest = (SocketAddr::from(([127, 0, 0, 1], 1)), "i/key".to_owned());
        assert!(!blocks.by_key.contains_key(&oldest));
    }

    #[test]
    fn content_formats_have_their_media_type_names() {
        assert_eq!(content_format_name(0), "text/plain");
        assert_eq!(content_format_name(50), "application/json");
        assert_eq!(content_format_name(42), "application/octet-stream");
        assert_eq!(content_format_name(65_000), "65000");
    }
}
