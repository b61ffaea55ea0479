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
