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

/// Runs `coap-client` with these arguments and `stdin`; returns what it printed (stdout and
/// stderr: it prints error responses as `4.04 <diagnostic>`).
pub fn coap_client(args: &[&str], stdin: &[u8]) -> Result<String> {
    let mut child = Command::new(coap_client_binary()?)
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
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
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

    /// Sends a request and waits (up to 10 s) for its answer.
    pub async fn call(&self, datagram: &[u8]) -> Result<Packet> {
        self.send(datagram).await?;
        self.recv(Duration::from_secs(10))
            .await?
            .context("no CoAP answer within 10 s")
    }
}

/// A response code as CoAP writes it, e.g. `"2.04"`.
pub fn code(p: &Packet) -> String {
    p.header.get_code()
}
