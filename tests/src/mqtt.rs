//! Small MQTT 3.1.1 and 5 device clients on rumqttc, driven by a background task that reports
//! every event, so a test can wait for a PUBACK or for the server closing the connection.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::Engine;

const WAIT: Duration = Duration::from_secs(20);

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// PUBACK with this reason code (always 0 for MQTT 3.1.1).
    Acked(u8),
    /// The server closed the connection instead.
    Disconnected,
}

pub struct Device3 {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    /// Server-to-device publishes seen while waiting for something else, oldest first.
    received: std::collections::VecDeque<(String, Vec<u8>)>,
}

/// Connects with the access token as username. `Err` carries the refusal.
pub async fn connect_v3(
    engine: &Engine,
    token: &str,
    client_id: &str,
) -> Result<Device3, ConnectReturnCode> {
    connect_v3_keep_alive(engine, token, client_id, Duration::from_secs(30)).await
}

/// [`connect_v3`] with this keep-alive: the client sends PINGREQ when it has been quiet that long.
pub async fn connect_v3_keep_alive(
    engine: &Engine,
    token: &str,
    client_id: &str,
    keep_alive: Duration,
) -> Result<Device3, ConnectReturnCode> {
    connect_v3_as(engine, client_id, token, "", keep_alive).await
}

/// Connects with MQTT basic credentials: this client id, user name and password (an empty user
/// name is sent as such).
pub async fn connect_v3_basic(
    engine: &Engine,
    client_id: &str,
    user_name: &str,
    password: &str,
) -> Result<Device3, ConnectReturnCode> {
    connect_v3_as(
        engine,
        client_id,
        user_name,
        password,
        Duration::from_secs(30),
    )
    .await
}

async fn connect_v3_as(
    engine: &Engine,
    client_id: &str,
    user_name: &str,
    password: &str,
    keep_alive: Duration,
) -> Result<Device3, ConnectReturnCode> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", engine.mqtt.port());
    options.set_credentials(user_name, password);
    options.set_keep_alive(keep_alive);
    options.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let stop = event.is_err();
            let event = event.map_err(|e| match e {
                ConnectionError::ConnectionRefused(code) => format!("refused:{}", code as u8),
                other => other.to_string(),
            });
            if tx.send(event).is_err() || stop {
                return;
            }
        }
    });
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(Ok(Event::Incoming(Packet::ConnAck(_))))) => {
                return Ok(Device3 {
                    client,
                    events,
                    received: std::collections::VecDeque::new(),
                });
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                let code = e
                    .strip_prefix("refused:")
                    .and_then(|c| c.parse::<u8>().ok());
                return Err(match code {
                    Some(4) => ConnectReturnCode::BadUserNamePassword,
                    Some(5) => ConnectReturnCode::NotAuthorized,
                    Some(3) => ConnectReturnCode::ServiceUnavailable,
                    _ => ConnectReturnCode::RefusedProtocolVersion,
                });
            }
            _ => return Err(ConnectReturnCode::ServiceUnavailable),
        }
    }
}

impl Device3 {
    /// Publishes at QoS 1 and waits for its PUBACK or for the connection to close.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<Outcome> {
        self.send(topic, payload).await?;
        self.outcome(WAIT)
            .await?
            .ok_or_else(|| anyhow!("neither PUBACK nor disconnect within {WAIT:?}"))
    }

    /// Sends a QoS 1 publish without waiting for its answer.
    pub async fn send(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .map_err(|e| anyhow!("publish: {e}"))
    }

    /// The next PUBACK or disconnect, or `None` when neither came within `wait`.
    pub async fn outcome(&mut self, wait: Duration) -> Result<Option<Outcome>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(None),
                Ok(None | Some(Err(_))) => return Ok(Some(Outcome::Disconnected)),
                Ok(Some(Ok(Event::Incoming(Packet::PubAck(_))))) => {
                    return Ok(Some(Outcome::Acked(0)));
                }
                Ok(Some(Ok(Event::Incoming(Packet::Disconnect)))) => {
                    return Ok(Some(Outcome::Disconnected));
                }
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                    self.received.push_back((p.topic, p.payload.to_vec()));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next publish the server sent (topic, payload), or `None` when none came within
    /// `wait` or the connection closed.
    pub async fn next_publish(&mut self, wait: Duration) -> Result<Option<(String, Vec<u8>)>> {
        if let Some(p) = self.received.pop_front() {
            return Ok(Some(p));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) | Ok(None | Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                    return Ok(Some((p.topic, p.payload.to_vec())));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Publishes at QoS 0 (no acknowledgement).
    pub async fn publish_qos0(&self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload.into())
            .await
            .map_err(|e| anyhow!("publish: {e}"))
    }

    /// Subscribes and returns the granted QoS codes (0x80 = refused).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<Vec<u8>> {
        self.client
            .subscribe(filter, qos)
            .await
            .map_err(|e| anyhow!("subscribe: {e}"))?;
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Err(_) => bail!("no SUBACK within {WAIT:?}"),
                Ok(None | Some(Err(_))) => bail!("disconnected instead of SUBACK"),
                Ok(Some(Ok(Event::Incoming(Packet::SubAck(ack))))) => {
                    return Ok(ack
                        .return_codes
                        .iter()
                        .map(|c| match c {
                            rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                            rumqttc::SubscribeReasonCode::Failure => 0x80,
                        })
                        .collect());
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
    }
}

pub mod v5 {
    //! The MQTT 5 client.

    use super::{Outcome, WAIT};
    use crate::Engine;
    use anyhow::{Result, anyhow, bail};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
    use tokio::sync::mpsc;

    pub struct Device5 {
        client: AsyncClient,
        events: mpsc::UnboundedReceiver<Result<Event, Option<ConnectReturnCode>>>,
    }

    pub async fn connect(
        engine: &Engine,
        token: &str,
        client_id: &str,
    ) -> Result<Device5, Option<ConnectReturnCode>> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", engine.mqtt.port());
        options.set_credentials(token, "");
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let stop = event.is_err();
                let event = event.map_err(|e| match e {
                    ConnectionError::ConnectionRefused(code) => Some(code),
                    _ => None,
                });
                if tx.send(event).is_err() || stop {
                    return;
                }
            }
        });
        loop {
            match tokio::time::timeout(WAIT, events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::ConnAck(_))))) => {
                    return Ok(Device5 { client, events });
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(code))) => return Err(code),
                _ => return Err(None),
            }
        }
    }

    impl Device5 {
        pub async fn publish(
            &mut self,
            topic: &str,
            payload: impl Into<Vec<u8>>,
        ) -> Result<Outcome> {
            self.client
                .publish(topic, QoS::AtLeastOnce, false, payload.into())
                .await
                .map_err(|e| anyhow!("publish: {e}"))?;
            loop {
                match tokio::time::timeout(WAIT, self.events.recv()).await {
                    Err(_) => bail!("neither PUBACK nor disconnect within {WAIT:?}"),
                    Ok(None | Some(Err(_))) => return Ok(Outcome::Disconnected),
                    Ok(Some(Ok(Event::Incoming(Packet::PubAck(ack))))) => {
                        return Ok(Outcome::Acked(reason_code(&ack.reason)));
                    }
                    Ok(Some(Ok(Event::Incoming(Packet::Disconnect(_))))) => {
                        return Ok(Outcome::Disconnected);
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }

    impl Device5 {
        /// Subscribes and returns the SUBACK's reason codes.
        pub async fn subscribe(&mut self, filter: &str) -> Result<Vec<u8>> {
            self.client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow!("subscribe: {e}"))?;
            loop {
                match tokio::time::timeout(WAIT, self.events.recv()).await {
                    Err(_) => bail!("no SUBACK within {WAIT:?}"),
                    Ok(None | Some(Err(_))) => bail!("disconnected before the SUBACK"),
                    Ok(Some(Ok(Event::Incoming(Packet::SubAck(ack))))) => {
                        return Ok(ack
                            .return_codes
                            .iter()
                            .map(|c| match c {
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(q) => {
                                    *q as u8
                                }
                                _ => 0x80,
                            })
                            .collect());
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }

        /// The next PUBLISH from the server (topic, payload), if one comes within `wait`.
        pub async fn next_publish(
            &mut self,
            wait: std::time::Duration,
        ) -> Result<Option<(String, Vec<u8>)>> {
            let until = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(until, self.events.recv()).await {
                    Err(_) => return Ok(None),
                    Ok(None | Some(Err(_))) => bail!("disconnected"),
                    Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                        return Ok(Some((
                            String::from_utf8_lossy(&p.topic).into_owned(),
                            p.payload.to_vec(),
                        )));
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }

    fn reason_code(reason: &rumqttc::v5::mqttbytes::v5::PubAckReason) -> u8 {
        use rumqttc::v5::mqttbytes::v5::PubAckReason::*;
        match reason {
            Success => 0x00,
            NoMatchingSubscribers => 0x10,
            UnspecifiedError => 0x80,
            ImplementationSpecificError => 0x83,
            NotAuthorized => 0x87,
            TopicNameInvalid => 0x90,
            PacketIdentifierInUse => 0x91,
            QuotaExceeded => 0x97,
            PayloadFormatInvalid => 0x99,
        }
    }
}

pub mod raw {
    //! Hand-built MQTT packets on a plain TCP socket: what well-behaved client libraries refuse
    //! to send (unsupported protocol levels, a second CONNECT, topics with NUL), and exact
    //! reading of what the server answers.

    use std::net::SocketAddr;
    use std::time::Duration;

    use anyhow::{Context, Result, bail};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::Engine;

    /// How long to wait for the server's next packet or for it to close.
    const WAIT: Duration = Duration::from_secs(20);

    /// One TCP connection to the engine's MQTT listener.
    pub struct Raw {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Raw {
        pub async fn open(engine: &Engine) -> Result<Raw> {
            Raw::open_at(engine.mqtt).await
        }

        /// Connects to an MQTT listener at this address.
        pub async fn open_at(mqtt: SocketAddr) -> Result<Raw> {
            let stream = TcpStream::connect(mqtt)
                .await
                .context("connecting to the MQTT listener")?;
            stream.set_nodelay(true)?;
            Ok(Raw {
                stream,
                buf: Vec::new(),
            })
        }

        /// Sends these bytes. `Err` when the server already closed the connection.
        pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await?;
            Ok(())
        }

        /// The next whole packet the server sends (fixed header included), or `None` when it
        /// closed the connection first. Fails when neither happens within 20 s.
        pub async fn packet(&mut self) -> Result<Option<Vec<u8>>> {
            tokio::time::timeout(WAIT, self.read_packet())
                .await
                .context("neither a packet nor a close within 20 s")?
        }

        /// Waits for the server to close the connection; fails when it sends a packet first.
        pub async fn closed(&mut self) -> Result<()> {
            match self.packet().await? {
                None => Ok(()),
                Some(packet) => bail!("expected the connection closed, got packet {packet:02x?}"),
            }
        }

        async fn read_packet(&mut self) -> Result<Option<Vec<u8>>> {
            loop {
                if let Some(len) = whole_packet(&self.buf) {
                    return Ok(Some(self.buf.drain(..len).collect()));
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Ok(None),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    // A reset is the server closing too.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// The length of the first whole packet in `buf`, if it is all there.
    fn whole_packet(buf: &[u8]) -> Option<usize> {
        let mut remaining = 0usize;
        for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
            remaining |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                let len = 1 + i + 1 + remaining;
                return (buf.len() >= len).then_some(len);
            }
        }
        None
    }

    /// `len` as MQTT's variable byte integer.
    fn var_int(mut len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                return out;
            }
        }
    }

    fn string(s: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(s.len())
            .expect("test strings are short")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(s);
        out
    }

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        out.extend(var_int(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// CONNECT with this protocol name and level, the token as username, clean session, a
    /// 60 s keep-alive; `properties` (already encoded) are written only for level 5.
    pub fn connect_as(name: &str, level: u8, token: &str, properties: &[u8]) -> Vec<u8> {
        connect_with(name, level, token, 60, properties)
    }

    /// An MQTT 3.1.1 (`level` 4) or 5 CONNECT with this keep-alive, in seconds.
    pub fn connect_keep_alive(level: u8, token: &str, keep_alive: u16) -> Vec<u8> {
        connect_with("MQTT", level, token, keep_alive, &[])
    }

    fn connect_with(
        name: &str,
        level: u8,
        token: &str,
        keep_alive: u16,
        properties: &[u8],
    ) -> Vec<u8> {
        let mut body = string(name.as_bytes());
        body.push(level);
        body.push(0x82); // username, clean session
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if level == 5 {
            body.extend(var_int(properties.len()));
            body.extend_from_slice(properties);
        }
        body.extend(string(b"raw-client"));
        body.extend(string(token.as_bytes()));
        packet(0x10, &body)
    }

    /// An MQTT 3.1.1 (`level` 4) or 5 CONNECT.
    pub fn connect(level: u8, token: &str) -> Vec<u8> {
        connect_as("MQTT", level, token, &[])
    }

    /// MQTT 5's Authentication Method property (0x15).
    pub fn auth_method(method: &str) -> Vec<u8> {
        let mut out = vec![0x15];
        out.extend(string(method.as_bytes()));
        out
    }

    /// PUBLISH at QoS 1 with this packet id (QoS 0 when `None`); `v5` adds the empty property
    /// list MQTT 5 requires.
    pub fn publish(v5: bool, topic: &[u8], packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut body = string(topic);
        if let Some(id) = packet_id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        packet(if packet_id.is_some() { 0x32 } else { 0x30 }, &body)
    }

    /// An MQTT 5 PUBLISH at `qos` (packet id `packet_id` unless QoS 0) with these properties
    /// (already encoded).
    pub fn publish5(
        topic: &[u8],
        qos: u8,
        packet_id: u16,
        properties: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = string(topic);
        if qos > 0 {
            body.extend_from_slice(&packet_id.to_be_bytes());
        }
        body.extend(var_int(properties.len()));
        body.extend_from_slice(properties);
        body.extend_from_slice(payload);
        packet(0x30 | (qos << 1), &body)
    }

    /// SUBSCRIBE to one filter at `qos` (MQTT 5 with an empty property list when `v5`).
    pub fn subscribe(v5: bool, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        if v5 {
            body.push(0);
        }
        body.extend(string(filter.as_bytes()));
        body.push(qos);
        packet(0x82, &body)
    }

    /// A PUBLISH's topic and payload (`v5`: skipping its properties).
    pub fn published(v5: bool, packet: &[u8]) -> Option<(String, Vec<u8>)> {
        if packet.first()? & 0xf0 != 0x30 {
            return None;
        }
        let qos = (packet[0] >> 1) & 0x03;
        let mut at = 1;
        while packet.get(at)? & 0x80 != 0 {
            at += 1;
        }
        at += 1;
        let len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
        let topic = String::from_utf8(packet.get(at + 2..at + 2 + len)?.to_vec()).ok()?;
        at += 2 + len;
        if qos > 0 {
            at += 2;
        }
        if v5 {
            let mut props = 0usize;
            let mut shift = 0;
            loop {
                let byte = *packet.get(at)?;
                at += 1;
                props |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            at += props;
        }
        Some((topic, packet.get(at..)?.to_vec()))
    }

    /// MQTT 5's Topic Alias property (0x23).
    pub fn topic_alias(alias: u16) -> Vec<u8> {
        let mut out = vec![0x23];
        out.extend_from_slice(&alias.to_be_bytes());
        out
    }

    /// PINGREQ.
    pub const PINGREQ: [u8; 2] = [0xc0, 0x00];

    /// PUBACK's packet id and reason code (MQTT 5; 0x00 when the packet has none).
    pub fn puback(packet: &[u8]) -> Option<(u16, u8)> {
        if packet.first() != Some(&0x40) {
            return None;
        }
        let id = u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]);
        Some((id, packet.get(4).copied().unwrap_or(0)))
    }

    /// A QoS 1 or 2 PUBLISH's packet id.
    pub fn publish_id(packet: &[u8]) -> Option<u16> {
        if packet.first()? & 0xf0 != 0x30 || (packet[0] >> 1) & 0x03 == 0 {
            return None;
        }
        let mut at = 1;
        while packet.get(at)? & 0x80 != 0 {
            at += 1;
        }
        at += 1;
        let len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
        at += 2 + len;
        Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
    }

    /// The client's PUBACK of packet `id` (3.1.1; MQTT 5 reads it as success).
    pub fn puback_of(id: u16) -> Vec<u8> {
        let [hi, lo] = id.to_be_bytes();
        vec![0x40, 0x02, hi, lo]
    }

    /// CONNACK's return code (3.1.1) or reason code (5).
    pub fn connack_code(packet: &[u8]) -> Option<u8> {
        (packet.first() == Some(&0x20)).then(|| packet.get(3).copied())?
    }

    /// DISCONNECT's reason code (MQTT 5; a DISCONNECT without one means 0x00).
    pub fn disconnect_reason(packet: &[u8]) -> Option<u8> {
        (packet.first() == Some(&0xe0)).then(|| packet.get(2).copied().unwrap_or(0))
    }
}
