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
    let mut options = MqttOptions::new(client_id, "127.0.0.1", engine.mqtt.port());
    options.set_credentials(token, "");
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
                return Ok(Device3 { client, events });
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
