//! A WebSocket client for the engine's telemetry API (tokio-tungstenite on a real socket).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::Engine;

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a socket ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects to `path` (with its query) on the engine's HTTP port.
    pub async fn connect(engine: &Engine, path: &str) -> Result<WsClient> {
        let url = engine.url(path).replacen("http://", "ws://", 1);
        let (stream, response) = connect_async(url.as_str())
            .await
            .with_context(|| format!("websocket {path}"))?;
        anyhow::ensure!(response.status().as_u16() == 101, "no upgrade");
        Ok(WsClient { stream })
    }

    /// Like [`WsClient::connect`], with a receive buffer of `bytes` on the client's socket (the
    /// kernel grows a loopback socket's to 32 MiB otherwise): a client that does not read
    /// then holds back the server's writes soon.
    pub async fn connect_small_buffer(engine: &Engine, path: &str, bytes: u32) -> Result<WsClient> {
        let url = engine.url(path).replacen("http://", "ws://", 1);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(bytes)?;
        let tcp = socket.connect(engine.http).await?;
        let (stream, response) =
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(tcp)).await?;
        anyhow::ensure!(response.status().as_u16() == 101, "no upgrade");
        Ok(WsClient { stream })
    }

    /// The legacy endpoint with a token in its URL.
    pub async fn legacy(engine: &Engine, token: &str) -> Result<WsClient> {
        WsClient::connect(engine, &format!("/api/ws/plugins/telemetry?token={token}")).await
    }

    pub async fn send(&mut self, v: &Value) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.stream.send(m).await?;
        Ok(())
    }

    /// The next text message as JSON; `None` when nothing comes within `wait`. Fails when the
    /// socket ends.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("socket ended"),
                Ok(Some(m)) => m?,
            };
            match m {
                Message::Text(t) => return Ok(Some(serde_json::from_str(t.as_str())?)),
                Message::Close(c) => bail!("socket closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next message, which must come within `wait`.
    pub async fn expect(&mut self, wait: Duration) -> Result<Value> {
        self.next(wait)
            .await?
            .with_context(|| format!("no message within {wait:?}"))
    }

    /// Reads until the socket ends, at most `wait`; text messages on the way are skipped.
    pub async fn ended(&mut self, wait: Duration) -> Result<Ended> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => bail!("socket still open after {wait:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Ok(Ended::Dropped),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f: CloseFrame| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return Ok(Ended::Closed(code, reason));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// A WebSocket spoken byte by byte, for frames no well-behaved client sends.
pub struct RawWs {
    pub tcp: TcpStream,
}

impl RawWs {
    /// Upgrades `path` (with its query); the 101 answer is read and checked.
    pub async fn connect(engine: &Engine, path: &str, recv_buffer: Option<u32>) -> Result<RawWs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        let mut tcp = socket.connect(engine.http).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            anyhow::ensure!(tcp.read(&mut b).await? == 1, "closed during the handshake");
            head.push(b[0]);
        }
        anyhow::ensure!(head.starts_with(b"HTTP/1.1 101"), "no upgrade");
        Ok(RawWs { tcp })
    }

    /// A masked frame: `first` is FIN and opcode; `length` is what the header declares, of
    /// which `payload` is sent.
    pub async fn frame(&mut self, first: u8, length: u64, payload: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut out = vec![first];
        match length {
            0..=125 => out.push(0x80 | u8::try_from(length)?),
            126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&u16::try_from(length)?.to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&length.to_be_bytes());
            }
        }
        let mask = [1u8, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&out).await?;
        Ok(())
    }

    /// Reads frames until a close frame: its code; `None` when the connection ends without one
    /// or nothing comes within `wait`.
    pub async fn close_code(&mut self, wait: Duration) -> Result<Option<u16>> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = Vec::new();
        loop {
            // Parse what is buffered (server frames are not masked).
            while buf.len() >= 2 {
                let (len, at) = match buf[1] & 0x7f {
                    126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                    127 if buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&buf[2..10]);
                        (usize::try_from(u64::from_be_bytes(b))?, 10)
                    }
                    126 | 127 => break,
                    n => (usize::from(n), 2),
                };
                if buf.len() < at + len {
                    break;
                }
                if buf[0] & 0x0f == 0x8 {
                    let code = (len >= 2).then(|| u16::from_be_bytes([buf[at], buf[at + 1]]));
                    return Ok(code);
                }
                buf.drain(..at + len);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
