//! The MQTT server in process, with a raw TCP client: what only a real connection shows.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actors::ingress::Ingress;
use actors::model::{AccessToken, Device, DeviceId, TenantId};
use actors::ports::DeviceRegistry;
use actors::session::outbound::{Downlink, DownlinkQos};
use actors::session::supervisor::SessionSupervisor;
use actors::testing::{MemProducer, MemRegistry};

use super::*;

/// Downlinks of this size fill socket buffers fast.
const MESSAGE: usize = 1024;

struct Running {
    server: MqttServer,
    /// The embedded store's directory (device profiles), kept while the server runs.
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    device: Arc<Device>,
}

async fn start(config: MqttConfig) -> Running {
    let registry = Arc::new(MemRegistry::default());
    let tenant = TenantId::from_name("t");
    let device = registry
        .create(Device {
            id: DeviceId::derive(tenant, "slow-reader"),
            tenant_id: tenant,
            name: "slow-reader".into(),
            device_type: "default".into(),
            label: None,
            token: AccessToken("slow-token".into()),
            created_time: 0,
            additional_info: None,
        })
        .await
        .expect("created");
    let (supervisor, _) = ractor::Actor::spawn(None, SessionSupervisor, ())
        .await
        .expect("supervisor starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let (embedded, _) = crate::store::embedded::EmbeddedStore::open(dir.path()).expect("opens");
    let ingress = Arc::new(Ingress::new(Arc::new(MemProducer::default()), 65_536));
    let downlinks = actors::downlink::router::Downlinks::start(
        "test-node".into(),
        actors::downlink::router::DownlinkSettings::default(),
        ingress.clone(),
        Arc::new(actors::testing::MemRecords::default()),
        Arc::new(actors::downlink::router::NoBus),
    );
    let ctx = Arc::new(MqttContext {
        downlinks,
        gateway_max_devices: 16,
        gateway_devices: Arc::new(super::DeviceBudget::new(64)),
        profiles: Arc::new(embedded.records()),
        registry,
        records: Arc::new(actors::testing::MemRecords::default()),
        store: Arc::new(actors::testing::MemStore::default()),
        ingress,
        supervisor: supervisor.get_cell(),
        receive_maximum: config.receive_maximum,
        outbound_capacity: config.outbound_capacity,
        session_limits: actors::protocol::rpc::SessionLimits::default(),
        client_rpc_timeout: config.client_rpc_timeout,
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("bound");
    let config = MqttConfig {
        workers: 1,
        ..config
    };
    let server = MqttServer::start(listener, &config, ctx).expect("mqtt starts");
    Running {
        server,
        _dir: dir,
        addr,
        device,
    }
}

/// An MQTT 3.1.1 CONNECT with this username, keep-alive off.
fn connect_packet(username: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x82, 0, 0];
    body.extend([0, 1, b'c']);
    body.extend(u16::try_from(username.len()).expect("short").to_be_bytes());
    body.extend(username.as_bytes());
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("short")];
    packet.extend(body);
    packet
}

/// A client whose receive buffer is as small as the kernel allows, so the server's writes pile
/// up on the server's side as soon as the client stops reading.
fn small_window_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// Reads MQTT packets from `stream` until `count` PUBLISH packets came; returns their topics'
/// last levels in order.
fn read_publishes(stream: &mut TcpStream, count: usize) -> Vec<usize> {
    let mut reader = std::io::BufReader::new(stream);
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let mut header = [0u8; 1];
        reader.read_exact(&mut header).expect("a packet");
        let mut remaining = 0usize;
        for shift in (0..4).map(|i| 7 * i) {
            let mut byte = [0u8; 1];
            reader.read_exact(&mut byte).expect("length");
            remaining |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; remaining];
        reader.read_exact(&mut body).expect("body");
        if header[0] & 0xf0 == 0x30 {
            let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = std::str::from_utf8(&body[2..2 + len]).expect("utf-8");
            let id = topic.rsplit('/').next().and_then(|id| id.parse().ok());
            ids.push(id.expect("a numbered topic"));
        }
    }
    ids
}

/// The bytes the kernel may hold for one connection between the writer and a client that does
/// not read: the server's send buffer at its largest, the client's receive buffer.
fn kernel_buffers() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    wmem_max + 2 * 4096
}

/// A device that stops reading its socket cannot grow the engine's memory: the socket buffers
/// fill, then ntex's write buffer up to its high-water mark; the writer then waits, the
/// connection's outbound channel fills, and whoever sends to the device waits. Once the device
/// reads again, everything arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_cannot_grow_the_engines_memory() {
    let config = MqttConfig::default();
    let running = start(config.clone()).await;
    let mut client = small_window_client(running.addr);
    client
        .write_all(&connect_packet("slow-token"))
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let outbound = running
        .server
        .outbound(running.device.id)
        .expect("the device is connected");
    assert_eq!(outbound.capacity(), config.outbound_capacity);

    // The engine holds at most this much for the connection, whatever is sent to it.
    let bound = kernel_buffers()
        + usize::try_from(config.io_buffer_size.as_u64()).expect("fits")
        + (config.outbound_capacity + 1) * (MESSAGE + 64);
    let total = 4 * bound / MESSAGE;
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn({
        let (outbound, sent) = (outbound.clone(), sent.clone());
        async move {
            for n in 0..total {
                let downlink = Downlink {
                    topic: format!("v1/devices/me/rpc/request/{n}"),
                    payload: vec![b'x'; MESSAGE],
                    qos: DownlinkQos::AtMostOnce,
                    tracked: None,
                };
                outbound
                    .send(downlink)
                    .await
                    .expect("the connection is open");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // Wait until the writer waits for the device, the channel is full and the producer waits.
    let waited = Instant::now();
    while !(outbound.is_stalled()
        && outbound.waiting() == 1
        && outbound.len() == outbound.capacity())
    {
        assert!(
            !producer.is_finished(),
            "all {total} messages were taken: nothing held the producer back"
        );
        // Only bounds a hang: the state comes as soon as the buffers are full.
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "never held back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let taken = sent.load(Ordering::Relaxed);
    assert!(
        taken * MESSAGE <= bound,
        "{taken} messages of {MESSAGE} bytes taken, over the bound of {bound} bytes"
    );

    // The device reads again: everything comes, in order, and the producer finishes.
    let reader = std::thread::spawn(move || read_publishes(&mut client, total));
    producer.await.expect("the producer finishes");
    let ids = reader.join().expect("the reader");
    assert_eq!(ids, (0..total).collect::<Vec<_>>());
    assert!(!outbound.is_stalled());
    running.server.stop().await;
}

/// A second connection of the device takes over: the first is closed through its writer, and
/// the way back to the device is the new connection's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_closes_the_old_connection_through_its_writer() {
    let running = start(MqttConfig::default()).await;
    let mut first = TcpStream::connect(running.addr).expect("connect");
    first
        .write_all(&connect_packet("slow-token"))
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    first.read_exact(&mut connack).expect("CONNACK");
    let old = running
        .server
        .outbound(running.device.id)
        .expect("connected");

    let mut second = TcpStream::connect(running.addr).expect("connect");
    second
        .write_all(&connect_packet("slow-token"))
        .expect("CONNECT");
    second.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    let mut rest = Vec::new();
    first.read_to_end(&mut rest).expect("closed by the server");
    assert!(rest.is_empty(), "MQTT 3.1.1 is closed without a word");
    let new = running
        .server
        .outbound(running.device.id)
        .expect("connected");
    let waited = Instant::now();
    while !old.is_closed() {
        // Only bounds a hang: the old writer ends with its connection.
        assert!(waited.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!new.is_closed());
    running.server.stop().await;
}
