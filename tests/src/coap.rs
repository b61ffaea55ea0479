//! CoAP clients for the end-to-end tests: Debian's libcoap `coap-client` (the reference's own
//! tool), and a raw UDP client on coap-lite for what the tool does not expose (message ids,
//! retransmissions, response options).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;

/// The libcoap client: `coap-client` where installed under that name, else Debian's
/// `coap-client-notls` (package `libcoap3-bin`). Fails loudly when neither is there.
pub fn coap_client_binary() -> Result<&'static str> {
    for name in ["coap-client", "coap-client-notls"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return Ok(name);
        }
    }
    bail!("coap-client not found: install Debian's libcoap3-bin (tests/run.sh does)")
}

/// What `coap-client` got back.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The code of the last answer it received, e.g. `"2.04"` (a block-wise upload gets 2.31
    /// for each block but the last).
    pub code: String,
    /// Everything it printed (stdout and stderr): the messages it sent and received, and the
    /// diagnostic payload of an error answer.
    pub output: String,
}

/// Runs `coap-client` with these arguments and `stdin`, and returns the answer it received.
/// Fails when the tool fails or when no answer came: the tool itself prints nothing and exits
/// 0 then, so it is run at verbosity 6, where it prints every message it sends and receives
/// (`v:1 t:ACK c:2.04 i:3da8 {01} [ ]`), and the answer is read from that. `-B 30` bounds its
/// wait.
pub fn coap_client(args: &[&str], stdin: &[u8]) -> Result<Reply> {
    let mut child = Command::new(coap_client_binary()?)
        .args(["-v", "6", "-B", "30"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning coap-client")?;
    child
        .stdin
        .take()
        .context("coap-client stdin")?
        .write_all(stdin)?;
    let out = child.wait_with_output()?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "coap-client {args:?} failed ({}): {output}",
        out.status
    );
    let code = output
        .lines()
        .rev()
        .find_map(answer_code)
        .with_context(|| format!("coap-client {args:?} got no answer: {output}"))?;
    Ok(Reply { code, output })
}

/// The code of a message `coap-client -v 6` printed, when it is an answer: requests print
/// their method (`c:POST`), answers their class and detail (`c:2.04`).
fn answer_code(line: &str) -> Option<String> {
    let fields = line.strip_prefix("v:1 t:")?;
    let code = fields
        .split_whitespace()
        .find_map(|f| f.strip_prefix("c:"))?;
    let (class, detail) = code.split_once('.')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(class, 1) && digits(detail, 2)).then(|| code.to_owned())
}

/// A CoAP request as bytes.
pub fn request(
    confirmable: bool,
    method: RequestType,
    path: &str,
    payload: &[u8],
    message_id: u16,
) -> Result<Vec<u8>> {
    let mut p = Packet::new();
    p.header.set_type(if confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Request(method);
    p.header.message_id = message_id;
    p.set_token(message_id.to_be_bytes().to_vec());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    p.payload = payload.to_vec();
    p.to_bytes().map_err(|e| anyhow::anyhow!("encoding: {e:?}"))
}

/// A UDP socket talking to one CoAP server.
pub struct RawClient {
    socket: UdpSocket,
}

impl RawClient {
    pub async fn connect(server: SocketAddr) -> Result<RawClient> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(server).await?;
        Ok(RawClient { socket })
    }

    pub async fn send(&self, datagram: &[u8]) -> Result<()> {
        self.socket.send(datagram).await?;
        Ok(())
    }

    /// The next datagram, raw; `None` after `wait`.
    pub async fn recv_raw(&self, wait: Duration) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65_535];
        match tokio::time::timeout(wait, self.socket.recv(&mut buf)).await {
            Err(_) => Ok(None),
            Ok(n) => Ok(Some(buf[..n?].to_vec())),
        }
    }

    pub async fn recv(&self, wait: Duration) -> Result<Option<Packet>> {
        match self.recv_raw(wait).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                Packet::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("decoding: {e:?}"))?,
            )),
        }
    }

    /// Sends a request and waits for its answer. The wait only bounds a hang: an answer that
    /// takes a converter's whole wall-time limit on a loaded machine still comes within it.
    pub async fn call(&self, datagram: &[u8]) -> Result<Packet> {
        self.send(datagram).await?;
        self.recv(Duration::from_secs(120))
            .await?
            .context("no CoAP answer within 120 s")
    }
}

/// A response code as CoAP writes it, e.g. `"2.04"`.
pub fn code(p: &Packet) -> String {
    p.header.get_code()
}

/// A CoAP message written byte by byte (RFC 7252 §3), so that a test can write what no codec
/// would: another version, a reserved code, a payload marker with nothing after it, options of
/// any number and length.
#[derive(Clone)]
pub struct Raw {
    /// Version bits (1 is the only version there is).
    pub version: u8,
    /// 0 confirmable, 1 non-confirmable, 2 acknowledgement, 3 reset.
    pub kind: u8,
    /// Class and detail in one byte: `0x02` is 0.02 POST, `0x45` is 2.05.
    pub code: u8,
    pub message_id: u16,
    pub token: Vec<u8>,
    /// (number, value), written in this order (sort them for a well-formed message).
    pub options: Vec<(u16, Vec<u8>)>,
    /// `None`: no payload marker; `Some(empty)`: a marker with nothing after it.
    pub payload: Option<Vec<u8>>,
}

pub const CON: u8 = 0;
pub const NON: u8 = 1;
pub const ACK: u8 = 2;
pub const RST: u8 = 3;
pub const URI_HOST: u16 = 3;
pub const URI_PATH: u16 = 11;
pub const BLOCK1: u16 = 27;
pub const SIZE1: u16 = 60;

impl Raw {
    /// A confirmable POST of `payload` to `path`, token = the message id's bytes.
    pub fn post(path: &str, payload: &[u8], message_id: u16) -> Raw {
        Raw {
            version: 1,
            kind: CON,
            code: 0x02,
            message_id,
            token: message_id.to_be_bytes().to_vec(),
            options: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| (URI_PATH, s.as_bytes().to_vec()))
                .collect(),
            payload: (!payload.is_empty()).then(|| payload.to_vec()),
        }
    }

    /// An empty message (code 0.00, no token): a confirmable one is a CoAP ping.
    pub fn empty(kind: u8, message_id: u16) -> Raw {
        Raw {
            version: 1,
            kind,
            code: 0,
            message_id,
            token: Vec::new(),
            options: Vec::new(),
            payload: None,
        }
    }

    /// Adds an option and keeps the options sorted by number (stable for repeats).
    pub fn with(mut self, number: u16, value: &[u8]) -> Raw {
        self.options.push((number, value.to_vec()));
        self.options.sort_by_key(|(n, _)| *n);
        self
    }

    /// Makes it non-confirmable.
    pub fn non(self) -> Raw {
        Raw { kind: NON, ..self }
    }

    /// Sets the code byte (class << 5 | detail).
    pub fn code(self, code: u8) -> Raw {
        Raw { code, ..self }
    }

    /// Sets the version bits.
    pub fn version(self, version: u8) -> Raw {
        Raw { version, ..self }
    }

    /// A payload marker with nothing after it (a format error).
    pub fn marker_only(self) -> Raw {
        Raw {
            payload: Some(Vec::new()),
            ..self
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            (self.version << 6) | (self.kind << 4) | (self.token.len() as u8 & 0x0f),
            self.code,
        ];
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.token);
        let mut last = 0u16;
        for (number, value) in &self.options {
            let delta = number.wrapping_sub(last);
            last = *number;
            let (d, d_ext) = nibble(usize::from(delta));
            let (l, l_ext) = nibble(value.len());
            out.push((d << 4) | l);
            out.extend_from_slice(&d_ext);
            out.extend_from_slice(&l_ext);
            out.extend_from_slice(value);
        }
        if let Some(payload) = &self.payload {
            out.push(0xff);
            out.extend_from_slice(payload);
        }
        out
    }
}

/// Short enough for a failure message: long option values and payloads by their length.
impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |v: &[u8]| {
            if v.len() <= 16 {
                format!("{:02x?}", v)
            } else {
                format!("<{} bytes>", v.len())
            }
        };
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(n, v)| format!("{n}={}", short(v)))
            .collect();
        write!(
            f,
            "v{} type {} code {}.{:02} #{} token {:02x?} options [{}] payload {}",
            self.version,
            self.kind,
            self.code >> 5,
            self.code & 0x1f,
            self.message_id,
            self.token,
            options.join(", "),
            self.payload.as_deref().map_or("none".into(), short)
        )
    }
}

/// An option delta or length as its 4-bit nibble and extension bytes.
fn nibble(v: usize) -> (u8, Vec<u8>) {
    match v {
        0..=12 => (v as u8, Vec::new()),
        13..=268 => (13, vec![(v - 13) as u8]),
        _ => (14, ((v - 269) as u16).to_be_bytes().to_vec()),
    }
}

/// A Block1 option value: block number, more flag, size exponent (RFC 7959 §2.2).
pub fn block(num: u32, more: bool, szx: u8) -> Vec<u8> {
    let v = (num << 4) | (u32::from(more) << 3) | u32::from(szx);
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// The parts of an answer a test checks: type (0-3), code as "c.dd", message id, token.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub kind: u8,
    pub code: String,
    pub message_id: u16,
    pub token: Vec<u8>,
}

impl Head {
    /// Reads the header and token of a datagram, failing on anything that is not CoAP.
    pub fn of(datagram: &[u8]) -> Result<Head> {
        anyhow::ensure!(datagram.len() >= 4, "short datagram {datagram:?}");
        anyhow::ensure!(datagram[0] >> 6 == 1, "version {}", datagram[0] >> 6);
        let tkl = usize::from(datagram[0] & 0x0f);
        anyhow::ensure!(tkl <= 8 && datagram.len() >= 4 + tkl, "token length {tkl}");
        Ok(Head {
            kind: (datagram[0] >> 4) & 0x3,
            code: format!("{}.{:02}", datagram[1] >> 5, datagram[1] & 0x1f),
            message_id: u16::from_be_bytes([datagram[2], datagram[3]]),
            token: datagram[4..4 + tkl].to_vec(),
        })
    }
}
