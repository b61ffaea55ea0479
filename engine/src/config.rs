//! The engine's configuration: one typed struct per component, every field documented (this is
//! the user documentation; `engine.example.toml` mirrors it), defaults in one place.
//!
//! Sources, later ones winning: built-in defaults, the TOML file given with `--config`,
//! environment variables `ENGINE_<SECTION>__<FIELD>` (e.g. `ENGINE_MQTT__BIND`,
//! `ENGINE_DATA_DIR`), then command-line flags. Environment variables are read here and nowhere
//! else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the embedded store and of generated secrets. Created when missing.
    pub data_dir: PathBuf,
    /// Log filter in `tracing` syntax, e.g. `info` or `engine=debug,info`. `RUST_LOG` wins.
    pub log: String,
    /// Longest a graceful shutdown (SIGTERM, SIGINT) may take to drain acknowledged messages
    /// into storage before the engine gives up and exits with an error.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub ws: WsConfig,
    pub directory: DirectoryConfig,
    pub auth: AuthConfig,
    pub queue: QueueConfig,
    pub store: StoreConfig,
    pub coap: CoapConfig,
    pub integrations: IntegrationsConfig,
    pub limits: LimitsConfig,
    pub devices: DevicesConfig,
}

/// What one device or one message may hold, whatever the transport (MQTT, HTTP, CoAP and HTTP
/// integrations). A message past a limit is refused whole and counted in
/// `engine_messages_rejected_total{reason}`: HTTP 400, MQTT 5 PUBACK 0x97 (keys, data points)
/// or 0x99 (key length), MQTT 3.1.1 closes the connection, integrations answer 4.00 / 400.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Distinct time-series keys, and distinct attribute keys, one device may have; a message
    /// bringing a new key past it is refused (`too_many_keys`), keys the device has keep
    /// flowing. 0: no limit. Counted from the start of the process, per node; tracking costs
    /// about 16 bytes per (device, key).
    pub max_keys_per_device: usize,
    /// Longest key, in characters (`key_too_long`); ThingsBoard's key column is
    /// `varchar(255)`.
    pub max_key_length: usize,
    /// Most key-value entries (data points) in one message (`too_many_data_points`). A 64 KiB
    /// payload holds at most about 10 000; a converter can make more from a small one.
    pub max_data_points_per_message: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use actors::ingress::Limits;
        LimitsConfig {
            max_keys_per_device: Limits::DEFAULT_MAX_KEYS_PER_DEVICE,
            max_key_length: Limits::DEFAULT_MAX_KEY_CHARS,
            max_data_points_per_message: Limits::DEFAULT_MAX_DATA_POINTS_PER_MESSAGE,
        }
    }
}

impl LimitsConfig {
    /// The limits every ingress of the process shares (one key count per device).
    pub fn ingress(&self) -> actors::ingress::Limits {
        actors::ingress::Limits::new(
            self.max_keys_per_device,
            self.max_key_length,
            self.max_data_points_per_message,
        )
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// UDP address of the CoAP integration endpoint (`coap://host/[path/]i/{routingKey}`).
    /// Plain CoAP only: DTLS is not supported.
    pub bind: SocketAddr,
    /// Requests being converted or enqueued at once; past it confirmable requests are answered
    /// 5.03 with `Max-Age` and non-confirmable ones are dropped (and counted).
    pub max_in_flight: usize,
    /// The `Max-Age` of a 5.03 answer: when the device should try again.
    #[serde(with = "humantime_serde")]
    pub overload_max_age: Duration,
    /// How long a confirmable request's answer is kept to answer a retransmission (RFC 7252's
    /// EXCHANGE_LIFETIME is 247 s).
    #[serde(with = "humantime_serde")]
    pub exchange_lifetime: Duration,
    /// Answers kept for retransmissions at most; the oldest go first (counted in
    /// `engine_coap_evicted_total{what="exchange"}`: a retransmission of a forgotten request is
    /// processed again).
    pub max_exchanges: usize,
    /// Memory the kept answers may take at most (answers of at most 1152 bytes plus about 200
    /// bytes of bookkeeping each); the oldest go first, counted as above.
    #[serde(with = "byte_size")]
    pub max_exchange_bytes: ByteSize,
    /// Block-wise (Block1) uploads being assembled at once at most; the oldest go first
    /// (counted in `engine_coap_evicted_total{what="block_transfer"}`; its next block is
    /// answered 4.08).
    pub max_block_transfers: usize,
    /// Block-wise uploads one peer (address and port) may have open at once; past it the
    /// peer's own oldest goes first.
    pub max_block_transfers_per_peer: usize,
    /// Memory the uploads being assembled may take at most; past it the oldest go first. No
    /// single upload may take more (4.13 with `Size1`).
    #[serde(with = "byte_size")]
    pub max_block_bytes: ByteSize,
    /// Log lines a second that CoAP peers may cause at most (malformed datagrams, refusals);
    /// the rest are only counted in `engine_coap_dropped_total` and `engine_coap_refused_total`.
    /// 0 writes none.
    pub peer_log_lines_per_second: u32,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrationsConfig {
    /// Converter worker threads; 0 means one per core. Scripts run only there, never on the
    /// network threads.
    pub workers: usize,
    /// Conversions waiting for a worker at most; past it uplinks are answered "overloaded"
    /// (CoAP 5.03, HTTP 503).
    pub queue_capacity: usize,
    /// Messages one integration may have in conversion or on their way into the queue, so one
    /// flooded integration cannot take the whole pool from the others.
    pub max_in_flight_per_integration: usize,
    /// Longest an integration uplink waits for room in a full queue before it is answered
    /// "overloaded".
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
    /// Largest payload an integration accepts (CoAP: after Block1 assembly).
    #[serde(with = "byte_size")]
    pub max_payload_size: ByteSize,
    /// Debug events kept per integration or converter; the oldest go first.
    pub debug_events_per_entity: usize,
    /// Debug events older than this are dropped.
    #[serde(with = "humantime_serde")]
    pub debug_event_ttl: Duration,
    /// Longest text of a debug event (the payload `in`, the converter's `out`, `metadata`,
    /// `message`, `error`); a longer one is cut, ends with `… [truncated: N bytes in all]`, and
    /// the event carries `"truncated": true`. Counted in
    /// `engine_integration_debug_events_truncated_total`.
    #[serde(with = "byte_size")]
    pub debug_event_max_text_size: ByteSize,
    /// Bytes of debug events kept per integration or converter; past it the oldest go first
    /// (counted in `engine_integration_debug_events_dropped_total{reason="entity_bytes"}`).
    #[serde(with = "byte_size")]
    pub debug_events_max_bytes_per_entity: ByteSize,
    /// Bytes of debug events kept in all; past it the oldest of any entity go first (counted
    /// with `reason="total_bytes"`).
    #[serde(with = "byte_size")]
    pub debug_events_max_bytes: ByteSize,
    /// Devices with a pending HTTP downlink at most.
    pub max_pending_downlinks: usize,
    /// Distinct devices (or assets) the converter output of one uplink may name. Past it the
    /// message is a converter error (CoAP 4.00, HTTP 400, an error event) and nothing of it is
    /// stored; counted in `engine_integration_devices_refused_total{reason="per_uplink"}`.
    /// 0: no limit.
    pub max_devices_per_uplink: usize,
    /// Devices one integration may create while the engine runs (devices it finds are not
    /// counted; a restart starts the count over). Past it a message naming a new device is
    /// refused (CoAP 4.00, HTTP 400, an error event); counted with `reason="per_integration"`.
    /// 0: no limit.
    pub max_devices_per_integration: usize,
    /// Limits of one converter run.
    pub script: ScriptLimits,
    /// Converters declared here are (re)created at every start, with ids derived from their
    /// names; REST changes to them last until the next start.
    pub converter: Vec<ConverterDecl>,
    /// Integrations declared here, likewise.
    pub integration: Vec<IntegrationDecl>,
}

/// Limits of one converter run; breaking one fails that message only (a converter error).
/// Helpers check their results against the size limits before they allocate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Rhai operations (statements, expressions, calls) one run may take.
    pub max_operations: u64,
    /// Longest string, in bytes; also the sum of the strings an array or map holds, and the
    /// keys `toFlatMap` makes.
    pub max_string_size: usize,
    /// Most items of an array or blob, nested ones included.
    pub max_array_size: usize,
    /// Most entries of a map, nested ones included.
    pub max_map_size: usize,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Longest one run may take; checked at every operation (to within a few milliseconds)
    /// and inside helpers.
    #[serde(with = "humantime_serde")]
    pub max_wall_time: Duration,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConverterDecl {
    pub name: String,
    /// `uplink` or `downlink`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The script itself, or...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// ...a file holding it (relative to the working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_file: Option<PathBuf>,
    #[serde(default)]
    pub debug: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationDecl {
    pub name: String,
    /// `coap` or `http`.
    #[serde(rename = "type")]
    pub kind: String,
    pub routing_key: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub allow_create_devices: bool,
    /// The name of a declared uplink converter.
    pub uplink_converter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink_converter: Option<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub debug: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Address of the MQTT listener (MQTT 3.1.1 and 5 on one port).
    pub bind: SocketAddr,
    /// Largest accepted PUBLISH payload; bigger ones are refused (MQTT 5: PUBACK 0x97; MQTT
    /// 3.1.1: disconnect).
    #[serde(with = "byte_size")]
    pub max_payload_size: ByteSize,
    /// Unacknowledged QoS 1 publishes one connection may have in flight; past it the engine
    /// stops reading that socket. Also MQTT 5's Receive Maximum.
    pub receive_maximum: u16,
    /// Network worker threads; 0 means one per core.
    pub workers: usize,
    /// Time a new connection has to send CONNECT: to start it (the first bytes, up to the
    /// protocol level) and again to complete it. A client that sends nothing or dribbles is
    /// closed without an answer.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// MQTT connections open at once (TCP sockets, counted from accept, before and after
    /// CONNECT). Past it a connection's CONNECT is answered with CONNACK 0x03 (server
    /// unavailable; MQTT 5: 0x97, quota exceeded) and closed. The descriptors MQTT may use
    /// are the process's open-files limit minus `open_files_reserve`: this cap is lowered to
    /// 15/16 of them (the rest answers refusals), and past all of them the listener stops
    /// accepting until connections close.
    pub max_connections: usize,
    /// Sessions one device (one access token) may hold at once. A connection past it takes
    /// over: the device's oldest session is closed (MQTT 5: DISCONNECT 0x8E, session taken
    /// over), as ThingsBoard does with its default of 1
    /// (`actors.session.max_concurrent_sessions_per_device`).
    pub max_connections_per_device: usize,
    /// Open files (descriptors) the MQTT listener leaves to everything else: HTTP
    /// connections, the CoAP socket, SQLite files, Kafka and ClickHouse connections.
    pub open_files_reserve: usize,
    /// At shutdown, time open connections get to finish in-flight publishes before they are
    /// closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Server-to-device messages (attribute updates, RPC requests, responses) one connection's
    /// outbound channel holds. A device that does not read fills its socket, then this channel;
    /// past it whatever sends to the device waits (`engine_mqtt_outbound_blocked_seconds`).
    pub outbound_capacity: usize,
    /// A device's own RPC request (`v1/devices/me/rpc/request/{id}`) that nothing answers gets
    /// `{"error":"timeout"}` after this long (ThingsBoard's `transport.client_side_rpc.timeout`).
    /// `getSessionLimits` is answered at once.
    #[serde(with = "humantime_serde")]
    pub client_rpc_timeout: Duration,
    /// A persistent RPC request written to a device at QoS 1 and not acknowledged (PUBACK)
    /// within this is a `TIMEOUT`, which uses one of the request's `retries` (ThingsBoard's
    /// `transport.mqtt.timeout`). The node that owns the device's state applies its own value.
    #[serde(with = "humantime_serde")]
    pub rpc_ack_timeout: Duration,
    /// Devices one gateway connection may speak for at once (`v1/gateway/*`; each connected
    /// device holds a session of its own). A message naming one more is refused for that
    /// device (MQTT 5 PUBACK 0x97), counted as `too_many_gateway_devices`.
    pub gateway_max_devices: usize,
    /// Devices all gateways connected to this node may speak for at once (about 10 KiB each;
    /// the node's bound on what gateways make it hold). Past it, refused as above.
    pub gateway_max_devices_total: usize,
    /// A connection whose peer takes none of the downlinks waiting for it this long (leaves
    /// what is written unread, the write buffer full, or QoS 1 ones unacknowledged, its window
    /// full) is closed: the peer is taken for gone (EMQX's `send_timeout`). Found so even while
    /// the connection is not being read.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Largest read and write buffer of one busy connection; a PUBLISH bigger than this is
    /// read into a buffer grown for it. The write buffer's size is also where the server stops
    /// writing to a device that does not read. An idle connection holds no buffer.
    #[serde(with = "byte_size")]
    pub io_buffer_size: ByteSize,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener: REST API, HTTP device API and `/metrics`.
    pub bind: SocketAddr,
    /// Largest accepted body of the HTTP device API (413 beyond).
    #[serde(with = "byte_size")]
    pub max_payload_size: ByteSize,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest an HTTP device API request waits for room in a full queue before it is answered
    /// 503 with `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
    /// Time a client has to send a request's line and headers: from the connection's start for
    /// its first request, from the first byte for the next ones on a kept-alive connection.
    /// Past it the client gets 408 and the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body once its headers are in (every route:
    /// device API, REST, integrations). Past it the client gets 408 and the connection is
    /// closed. The device API checks the token before it reads any of the body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long an idle kept-alive connection stays open between requests.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Open connections at most, all clients together; a connection past it is closed at once
    /// (counted in `engine_connections_refused_total{transport="http",
    /// reason="too_many_connections"}`). Never more than a quarter of the process's open-file
    /// limit, so storage, MQTT and CoAP keep their descriptors whatever HTTP clients do.
    pub max_connections: usize,
    /// Connections the kernel queues before the engine accepts them (the listen backlog;
    /// the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// How long a device's long poll (`GET /api/v1/{token}/rpc`, `.../attributes/updates`)
    /// waits when it names no `timeout` (or 0), and how long a device's own RPC
    /// (`POST /api/v1/{token}/rpc`) waits before `{"error":"timeout"}` (ThingsBoard's
    /// `transport.http.request_timeout`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest wait a device may ask for; a longer `timeout` is cut to it (ThingsBoard's
    /// `transport.http.max_request_timeout`). Also the longest a REST RPC call (not a
    /// persistent one) waits for its device: its expiry is cut to it.
    #[serde(with = "humantime_serde")]
    pub max_request_timeout: Duration,
    /// Long polls and device RPCs waiting at once, all devices together; past it a request is
    /// answered 503 at once, so waiting requests cannot grow the engine's memory. Never more
    /// than half of `max_connections` (nor are REST RPC calls waiting for a device), so they
    /// cannot take the connections the REST API and `/metrics` need.
    pub max_waiting_requests: usize,
}

/// Limits of the REST API's reads, so that one request cannot take the storage from the
/// others.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Distinct keys one telemetry or attribute read may name in `keys` (repeated keys count
    /// once); more is a 400. A range read without `keys` reads every key of the device and is
    /// refused the same way when the device has more.
    pub max_keys_per_request: usize,
    /// Points per key of a raw range read when `limit` is not given (ThingsBoard: 100).
    pub default_limit: usize,
    /// Points one range read may return: keys × `limit` for raw reads, keys × buckets for
    /// aggregations (ThingsBoard's widgets stop at 50 000); more is a 400.
    pub max_points_per_response: usize,
    /// Buckets one aggregated key may have, (endTs - startTs) / interval (ThingsBoard's
    /// `database.ts_max_intervals`: 700); more is a 400.
    pub max_intervals: usize,
    /// Longest one range read may take in storage; past it the read is stopped and answered
    /// 400. Range reads also run at most three at a time on the embedded store (one of its
    /// four readers stays free for latest values, attributes and devices); a read that waits
    /// this long for its turn is answered 503.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Login name of the tenant administrator. Leave `password_hash` unset to run with the
    /// demo account `tenant@thingsboard.org` / `tenant` (a warning is logged).
    pub username: String,
    /// Argon2 PHC string of the administrator's password; make one with
    /// `engine hash-password`. Never the password itself.
    pub password_hash: Option<String>,
    /// Name of the tenant; the tenant id is derived from it, so keep it stable.
    pub tenant_name: String,
    /// Secret that signs JWTs. When unset, one is generated into `<data_dir>/jwt-secret` at
    /// first start, so tokens survive restarts. Every node of a cluster needs the same one.
    pub jwt_secret: Option<String>,
    /// Lifetime of an access token (ThingsBoard: 2.5 hours).
    #[serde(with = "humantime_serde")]
    pub token_expiration: Duration,
    /// Lifetime of a refresh token (ThingsBoard: 7 days).
    #[serde(with = "humantime_serde")]
    pub refresh_token_expiration: Duration,
    /// Accept logins to the demo account (no `password_hash` set) from other machines. By
    /// default the demo account answers loopback peers only (requests carrying a
    /// `Forwarded`, `X-Forwarded-For` or `X-Real-IP` header count as remote); others get 401.
    pub allow_demo_remote: bool,
    /// Password checks that run at once, each on its own thread; 0 means one per CPU core.
    /// Each takes the hash's memory cost (19 MiB with `engine hash-password`) for tens of
    /// milliseconds, so this bounds what logins can take: this many times that cost.
    pub max_concurrent_logins: usize,
    /// Logins waiting for a password check; past it a login is answered at once with 429 Too
    /// Many Requests (ThingsBoard errorCode 33) and `Retry-After: 1`.
    pub login_queue_capacity: usize,
    /// Failed logins with one username within `failed_login_window` after which that
    /// username is locked for `lockout_duration` (like ThingsBoard's maxFailedLoginAttempts):
    /// its logins are answered 401 "User account is locked due to security policy", right
    /// password or not, without checking it. 0 turns this off.
    pub max_failed_logins: u32,
    /// Failed logins from one address (an IPv4 address, or an IPv6 /64) within
    /// `failed_login_window` after which logins from it are answered 429 Too Many Requests
    /// (errorCode 33, with `Retry-After`) for `lockout_duration`. Behind a reverse proxy every
    /// client has the proxy's address. 0 turns this off.
    pub max_failed_logins_per_address: u32,
    /// The window failed logins are counted in; a success clears the count of its username
    /// and address. At most 365 days.
    #[serde(with = "humantime_serde")]
    pub failed_login_window: Duration,
    /// How long a username or address stays locked. At most 365 days.
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
    /// Usernames, and addresses, whose recent failures are remembered (each, about 100 bytes
    /// an entry); when full, the entry that would expire first is forgotten.
    pub max_tracked_failures: usize,
    /// Logged-out sessions remembered until their tokens expire, in
    /// `<data_dir>/revoked-sessions.json`: revocation is per node. Past it, every token
    /// issued before the logout that overflows is revoked (all sessions end).
    pub max_revoked_sessions: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// In-process, bounded; acknowledged messages not yet stored are lost if the process is
    /// killed (a graceful shutdown drains them).
    Memory,
    /// Kafka (or any Kafka-protocol broker): durable, shared by the nodes of a cluster.
    Kafka,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub kind: QueueKind,
    /// Partitions; a device's messages always go to the same one, in order.
    pub partitions: u32,
    /// Messages a partition holds until a sink commits them. When full, senders wait: MQTT
    /// PUBACKs and HTTP responses are held back. The total is how far ingest may run ahead of
    /// storage, and so bounds the acknowledgement delay under sustained overload. With Kafka,
    /// the messages a partition's rule chain holds read and not yet stored.
    pub partition_capacity: usize,
    /// Kafka: bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Kafka: the topic every uplink goes to; created at start-up when missing, with
    /// `partitions` partitions and `replication_factor` replicas.
    pub topic: String,
    /// Kafka: where messages storage refuses for good go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Kafka: each node reads its downlinks (RPC requests, attribute updates and RPC outcomes
    /// for its sessions and REST callers) from the topic of this prefix and its node id; made
    /// by the node at start-up, one partition.
    pub downlink_topic_prefix: String,
    pub replication_factor: i32,
    /// Kafka: the consumer group of the nodes; partitions are shared out among its members.
    pub group_id: String,
    /// Kafka: this node's static group membership (`group.instance.id`), so a restarted node
    /// takes its partitions straight back instead of waiting for the group to notice it left.
    /// Unset: a name made once and kept in `<data_dir>/node-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Kafka: messages sent and not yet confirmed by the brokers. Beyond it senders wait (held
    /// PUBACKs, slow HTTP answers); it bounds the producer's memory.
    pub max_in_flight: usize,
    /// Kafka: how long the producer waits to fill a batch (librdkafka's `linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Kafka: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: String,
    /// Kafka: how long start-up waits for the brokers before it gives up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Kafka: further librdkafka properties for the producer and the consumer (e.g.
    /// `"security.protocol" = "SASL_SSL"`); they override the engine's own.
    pub properties: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite in `<data_dir>/engine.db`.
    Embedded,
    /// A ClickHouse server (18.16 or newer) over HTTP.
    Clickhouse,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Most messages per storage write; unset: 10 000 (embedded) or 50 000 (ClickHouse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Longest a message waits for its batch to fill before it is written anyway; unset:
    /// 100 ms (embedded) or 1 s (ClickHouse, which wants about one insert per second).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub batch_interval: Option<Duration>,
    /// Delay before the first retry of a failed write; doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// ClickHouse's HTTP interface (kind = "clickhouse").
    pub url: String,
    /// The database the engine creates (if missing) and migrates at start-up.
    pub database: String,
    pub user: String,
    pub password: String,
    /// A knob for tests, never for a deployment: while this file exists, storage writes wait
    /// (the sink keeps its batch and commits nothing, so the queue fills and acknowledgements
    /// wait), and deleting the file lets them go. A test holds the engine in "storage is slow"
    /// with it instead of racing a timer. A shutdown waits for it too. Unset: no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_pause_file: Option<PathBuf>,
}

/// The device registry: its limits, and how a node looks up devices it does not hold when
/// nodes share a ClickHouse store.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Most devices one tenant may have (every node holds all of them in memory, about half a
    /// KiB each: the default bounds that at about 0.5 GB). Creating more is refused: REST answers 403 with ThingsBoard's
    /// "Devices limit reached" (error code 41), an integration's uplink fails with that
    /// reason. Counted in `engine_registry_devices_refused_total{reason="tenant_limit"}`.
    /// 0: no limit.
    pub max_per_tenant: u64,
    /// With a shared (ClickHouse) store, an access token or device name this node does not
    /// hold is looked up in the store; one found unknown is remembered for
    /// `unknown_cache_ttl`, so a device retrying a deleted token costs one query, not one per
    /// attempt. At most this many are remembered (the oldest go first).
    pub unknown_cache_size: usize,
    /// How long an unknown token or name is remembered. A device created with that token on
    /// *another* node is refused here for at most this long (one created through this node
    /// connects at once).
    #[serde(with = "humantime_serde")]
    pub unknown_cache_ttl: Duration,
    /// Lookups in the shared store at once; more wait, so a flood of unknown tokens cannot take
    /// the store's query slots from the storage writes.
    pub max_concurrent_lookups: usize,
    /// Persistent RPC records are deleted this long after they were made, whatever their
    /// status (ThingsBoard's `sql.ttl.rpc.ttl`, 30 days), checked hourly; 0s keeps them.
    #[serde(with = "humantime_serde")]
    pub rpc_ttl: Duration,
}

impl StoreConfig {
    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(match self.kind {
            StoreKind::Embedded => 10_000,
            StoreKind::Clickhouse => 50_000,
        })
    }

    pub fn batch_interval(&self) -> Duration {
        self.batch_interval.unwrap_or(match self.kind {
            StoreKind::Embedded => Duration::from_millis(100),
            StoreKind::Clickhouse => Duration::from_secs(1),
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
            shutdown_timeout: Duration::from_secs(60),
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            api: ApiConfig::default(),
            ws: WsConfig::default(),
            directory: DirectoryConfig::default(),
            auth: AuthConfig::default(),
            queue: QueueConfig::default(),
            store: StoreConfig::default(),
            coap: CoapConfig::default(),
            integrations: IntegrationsConfig::default(),
            limits: LimitsConfig::default(),
            devices: DevicesConfig::default(),
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            max_per_tenant: 1_000_000,
            unknown_cache_size: 10_000,
            unknown_cache_ttl: Duration::from_secs(10),
            max_concurrent_lookups: 8,
            rpc_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 5683)),
            max_in_flight: 4096,
            overload_max_age: Duration::from_secs(2),
            exchange_lifetime: Duration::from_secs(247),
            max_exchanges: 100_000,
            max_exchange_bytes: ByteSize::mib(32),
            max_block_transfers: 1024,
            max_block_transfers_per_peer: 8,
            max_block_bytes: ByteSize::mib(16),
            peer_log_lines_per_second: 10,
        }
    }
}

impl Default for IntegrationsConfig {
    fn default() -> Self {
        IntegrationsConfig {
            workers: 0,
            queue_capacity: 8192,
            max_in_flight_per_integration: 4096,
            queue_wait: Duration::from_secs(2),
            max_payload_size: ByteSize::kib(64),
            debug_events_per_entity: 1000,
            debug_event_ttl: Duration::from_secs(86_400),
            debug_event_max_text_size: ByteSize::kib(16),
            debug_events_max_bytes_per_entity: ByteSize::mib(4),
            debug_events_max_bytes: ByteSize::mib(64),
            max_pending_downlinks: 100_000,
            max_devices_per_uplink: 100,
            max_devices_per_integration: 10_000,
            script: ScriptLimits::default(),
            converter: Vec::new(),
            integration: Vec::new(),
        }
    }
}

impl Default for ScriptLimits {
    fn default() -> Self {
        let l = actors::converter::Limits::default();
        ScriptLimits {
            max_operations: l.max_operations,
            max_string_size: l.max_string_size,
            max_array_size: l.max_array_size,
            max_map_size: l.max_map_size,
            max_call_levels: l.max_call_levels,
            max_wall_time: l.max_wall_time,
        }
    }
}

impl ScriptLimits {
    pub fn limits(&self) -> actors::converter::Limits {
        actors::converter::Limits {
            max_operations: self.max_operations,
            max_string_size: self.max_string_size,
            max_array_size: self.max_array_size,
            max_map_size: self.max_map_size,
            max_call_levels: self.max_call_levels,
            max_wall_time: self.max_wall_time,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            max_payload_size: ByteSize::kib(64),
            receive_maximum: 16,
            workers: 0,
            connect_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_device: 1,
            open_files_reserve: 1024,
            shutdown_grace: Duration::from_secs(1),
            outbound_capacity: 64,
            client_rpc_timeout: Duration::from_secs(60),
            rpc_ack_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            gateway_max_devices: 10_000,
            gateway_max_devices_total: 200_000,
            io_buffer_size: ByteSize::kib(16),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_payload_size: ByteSize::kib(64),
            workers: 0,
            queue_wait: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(5),
            max_connections: 4096,
            backlog: 1024,
            request_timeout: Duration::from_secs(60),
            max_request_timeout: Duration::from_secs(300),
            max_waiting_requests: 2_048,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_keys_per_request: 100,
            default_limit: 100,
            max_points_per_response: 50_000,
            max_intervals: 700,
            query_timeout: Duration::from_secs(10),
        }
    }
}

/// The WebSocket telemetry API (`/api/ws`, `/api/ws/plugins/telemetry`): what one user and
/// one session may hold, and the liveness rules (ThingsBoard's defaults where it has them).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// WebSocket sessions one user may have open at once (on this node); one more is closed
    /// with 1008.
    pub max_sessions_per_user: usize,
    /// Subscriptions one user may hold across its sessions (an `ENTITY_DATA` subscription
    /// counts one per entity); the session whose command goes past it is closed with 1008.
    pub max_subscriptions_per_user: usize,
    /// Entities one `ENTITY_DATA` subscription may cover (`allowedEntities`; ThingsBoard:
    /// 10 000); a larger `pageSize` is cut to it.
    pub max_entities_per_subscription: usize,
    /// Stored changes waiting for one session: a session still holding this many when the next
    /// batch is stored is closed with 1008 "Max pending updates limit reached!" (ThingsBoard:
    /// 1000); at most this many plus one sink batch are held for it.
    pub max_pending_updates: usize,
    /// Largest text frame a client may send (ThingsBoard's container: 32 KiB); larger closes
    /// the session with 1009.
    pub max_frame_size: usize,
    /// A session that has not authenticated (no `token` in the URL, no `authCmd` yet) is
    /// closed with 1008 after this long.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// The server pings this often.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session whose client sent no pong for this long is closed with 4500.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Longest one message may take to be handed to a client that does not read; then the
    /// session is closed (4500).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_sessions_per_user: 100,
            max_subscriptions_per_user: 10_000,
            max_entities_per_subscription: 10_000,
            max_pending_updates: 1000,
            max_frame_size: 32 * 1024,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(5),
        }
    }
}

/// The directory: customers, users, assets and relations, held in memory by every node.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// Customers one tenant may have; one more is refused (403, errorCode 41).
    pub max_customers: usize,
    /// Users (tenant administrators and customer users) one tenant may have.
    pub max_users: usize,
    /// Assets one tenant may have.
    pub max_assets: usize,
    /// Relations in all.
    pub max_relations: usize,
    /// Relations one entity may be an end of (so one list answer is bounded).
    pub max_relations_per_entity: usize,
    /// Relations the users of one customer may make in all (so one customer cannot take the
    /// whole `max_relations`).
    pub max_relations_per_customer: usize,
    /// With a store other nodes write too (ClickHouse), how often this node reads the
    /// directory again: a change made on another node (a device assigned, a user deleted) is
    /// seen here within this time.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// How long an activation link stays valid.
    #[serde(with = "humantime_serde")]
    pub activation_ttl: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        let limits = actors::directory::DirectoryLimits::default();
        DirectoryConfig {
            max_customers: limits.max_customers,
            max_users: limits.max_users,
            max_assets: limits.max_assets,
            max_relations: limits.max_relations,
            max_relations_per_entity: limits.max_relations_per_entity,
            max_relations_per_customer: limits.max_relations_per_customer,
            reload_interval: Duration::from_secs(2),
            activation_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl DirectoryConfig {
    pub fn limits(&self) -> actors::directory::DirectoryLimits {
        actors::directory::DirectoryLimits {
            max_customers: self.max_customers,
            max_users: self.max_users,
            max_assets: self.max_assets,
            max_relations: self.max_relations,
            max_relations_per_entity: self.max_relations_per_entity,
            max_relations_per_customer: self.max_relations_per_customer,
        }
    }
}

/// The demo account of ThingsBoard's documentation, used when none is configured.
pub const DEMO_USERNAME: &str = "tenant@thingsboard.org";
pub const DEMO_PASSWORD: &str = "tenant";

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            username: DEMO_USERNAME.into(),
            password_hash: None,
            tenant_name: "Tenant".into(),
            jwt_secret: None,
            token_expiration: Duration::from_secs(9_000),
            refresh_token_expiration: Duration::from_secs(604_800),
            allow_demo_remote: false,
            max_concurrent_logins: 0,
            login_queue_capacity: 32,
            max_failed_logins: 5,
            max_failed_logins_per_address: 20,
            failed_login_window: Duration::from_secs(60),
            lockout_duration: Duration::from_secs(300),
            max_tracked_failures: 10_000,
            max_revoked_sessions: 10_000,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            kind: QueueKind::Memory,
            partitions: 8,
            partition_capacity: 5_000,
            brokers: "127.0.0.1:9092".into(),
            topic: "ingest".into(),
            dead_letter_topic: "ingest.dlq".into(),
            downlink_topic_prefix: "downlinks.".into(),
            replication_factor: 1,
            group_id: "engine".into(),
            instance_id: None,
            max_in_flight: 100_000,
            linger: Duration::from_millis(5),
            compression: "lz4".into(),
            connect_timeout: Duration::from_secs(10),
            properties: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Embedded,
            batch_size: None,
            batch_interval: None,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            url: "http://127.0.0.1:8123".into(),
            database: "engine".into(),
            user: "default".into(),
            password: String::new(),
            test_pause_file: None,
        }
    }
}

/// Values given as command-line flags; `None` leaves the other sources in charge.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<BindOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<BindOverride>,
    #[serde(skip_serializing_if = "QueueOverride::is_empty")]
    pub queue: QueueOverride,
    #[serde(skip_serializing_if = "StoreOverride::is_empty")]
    pub store: StoreOverride,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coap: Option<BindOverride>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<QueueKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
}

impl QueueOverride {
    fn is_empty(&self) -> bool {
        self.kind.is_none() && self.brokers.is_none()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<StoreKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

impl StoreOverride {
    fn is_empty(&self) -> bool {
        self.kind.is_none() && self.url.is_none() && self.database.is_none()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BindOverride {
    pub bind: SocketAddr,
}

impl Config {
    /// Loads and validates the configuration from every source.
    /// The log filter: `RUST_LOG` when set, as tracing's convention has it, else `log`.
    pub fn log_filter(&self) -> String {
        std::env::var("RUST_LOG")
            .ok()
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| self.log.clone())
    }

    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        // `--config`, else the file `ENGINE_CONFIG` names.
        let from_env = std::env::var_os("ENGINE_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        if let Some(file) = file.or(from_env.as_deref()) {
            anyhow::ensure!(
                file.is_file(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(Env::prefixed("ENGINE_").split("__").ignore(&["config"]))
            .merge(Serialized::defaults(overrides));
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(
            self.queue.partitions > 0,
            "queue.partitions must be at least 1"
        );
        ensure!(
            !self.ws.ping_interval.is_zero() && self.ws.pong_timeout >= self.ws.ping_interval,
            "ws.ping_interval must be positive and ws.pong_timeout at least as long"
        );
        ensure!(
            self.ws.max_pending_updates > 0
                && self.ws.max_frame_size >= 1024
                && self.ws.max_sessions_per_user > 0
                && self.ws.max_entities_per_subscription > 0,
            "ws.max_pending_updates, ws.max_sessions_per_user and ws.max_entities_per_subscription must be positive, ws.max_frame_size at least 1024"
        );
        ensure!(
            self.queue.partition_capacity > 0,
            "queue.partition_capacity must be at least 1"
        );
        ensure!(
            self.queue.max_in_flight > 0,
            "queue.max_in_flight must be at least 1"
        );
        ensure!(
            self.queue.replication_factor > 0,
            "queue.replication_factor must be at least 1"
        );
        ensure!(
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.queue.compression.as_str()),
            "queue.compression must be one of none, gzip, snappy, lz4, zstd"
        );
        ensure!(
            self.store.batch_size() > 0,
            "store.batch_size must be at least 1"
        );
        ensure!(
            !self.store.database.is_empty()
                && self
                    .store
                    .database
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "store.database must be a plain name (letters, digits, _)"
        );
        ensure!(
            self.mqtt.receive_maximum > 0,
            "mqtt.receive_maximum must be at least 1"
        );
        ensure!(
            self.mqtt.max_payload_size.as_u64() <= 256 * 1024 * 1024,
            "mqtt.max_payload_size must be at most 256 MiB (the MQTT packet limit)"
        );
        ensure!(
            self.mqtt.max_connections > 0 && self.mqtt.max_connections_per_device > 0,
            "mqtt.max_connections and mqtt.max_connections_per_device must be at least 1"
        );
        ensure!(
            !self.mqtt.connect_timeout.is_zero(),
            "mqtt.connect_timeout must be more than zero"
        );
        ensure!(
            self.mqtt.outbound_capacity > 0,
            "mqtt.outbound_capacity must be at least 1"
        );
        ensure!(
            !self.mqtt.write_timeout.is_zero(),
            "mqtt.write_timeout must be more than zero"
        );
        ensure!(
            !self.mqtt.rpc_ack_timeout.is_zero(),
            "mqtt.rpc_ack_timeout must be more than zero"
        );
        ensure!(
            self.mqtt.gateway_max_devices > 0 && self.mqtt.gateway_max_devices_total > 0,
            "mqtt.gateway_max_devices and mqtt.gateway_max_devices_total must be at least 1"
        );
        ensure!(
            (1024..=16 * 1024 * 1024).contains(&self.mqtt.io_buffer_size.as_u64()),
            "mqtt.io_buffer_size must be between 1 KiB and 16 MiB"
        );
        ensure!(
            self.http.max_connections > 0 && self.http.backlog > 0,
            "http.max_connections and http.backlog must be at least 1"
        );
        ensure!(
            !self.http.header_timeout.is_zero() && !self.http.body_timeout.is_zero(),
            "http.header_timeout and http.body_timeout must be longer than zero"
        );
        ensure!(
            self.api.max_keys_per_request > 0
                && self.api.default_limit > 0
                && self.api.max_intervals > 0
                && self.api.default_limit <= self.api.max_points_per_response,
            "api.max_keys_per_request, default_limit and max_intervals must be at least 1, \
             and default_limit at most max_points_per_response"
        );
        ensure!(
            !self.api.query_timeout.is_zero(),
            "api.query_timeout must be longer than zero"
        );
        ensure!(
            self.limits.max_key_length > 0 && self.limits.max_data_points_per_message > 0,
            "limits.max_key_length and limits.max_data_points_per_message must be at least 1"
        );
        ensure!(
            self.devices.max_concurrent_lookups > 0,
            "devices.max_concurrent_lookups must be at least 1"
        );
        ensure!(
            self.coap.max_in_flight > 0,
            "coap.max_in_flight must be at least 1"
        );
        ensure!(
            self.coap.max_exchanges > 0
                && self.coap.max_block_transfers > 0
                && self.coap.max_block_transfers_per_peer > 0,
            "coap.max_exchanges, max_block_transfers and max_block_transfers_per_peer must be at least 1"
        );
        ensure!(
            self.integrations.queue_capacity > 0
                && self.integrations.max_in_flight_per_integration > 0,
            "integrations.queue_capacity and max_in_flight_per_integration must be at least 1"
        );
        let script = &self.integrations.script;
        // In Rhai 0 means no limit: a converter could then allocate without bound.
        ensure!(
            script.max_operations > 0
                && script.max_string_size > 0
                && script.max_array_size > 0
                && script.max_map_size > 0
                && script.max_call_levels > 0
                && !script.max_wall_time.is_zero(),
            "every integrations.script limit must be above 0"
        );
        for c in &self.integrations.converter {
            ensure!(
                ["uplink", "downlink"].contains(&c.kind.as_str()),
                "integrations.converter '{}': type must be uplink or downlink",
                c.name
            );
            ensure!(
                c.script.is_some() != c.script_file.is_some(),
                "integrations.converter '{}': give exactly one of script and script_file",
                c.name
            );
        }
        for i in &self.integrations.integration {
            ensure!(
                ["coap", "http"].contains(&i.kind.as_str()),
                "integrations.integration '{}': type must be coap or http",
                i.name
            );
            for name in std::iter::once(&i.uplink_converter).chain(&i.downlink_converter) {
                ensure!(
                    self.integrations.converter.iter().any(|c| &c.name == name),
                    "integrations.integration '{}': no converter named '{name}' is declared",
                    i.name
                );
            }
        }
        let year = Duration::from_secs(365 * 24 * 3600);
        ensure!(
            self.auth.failed_login_window <= year && self.auth.lockout_duration <= year,
            "auth.failed_login_window and auth.lockout_duration must be at most 365 days"
        );
        ensure!(
            self.auth.max_tracked_failures > 0 && self.auth.max_revoked_sessions > 0,
            "auth.max_tracked_failures and auth.max_revoked_sessions must be at least 1"
        );
        ensure!(
            self.auth.password_hash.is_some() || self.auth.username == DEMO_USERNAME,
            "auth.username is set but auth.password_hash is not; create one with `engine hash-password`"
        );
        Ok(())
    }
}

/// Sizes in the configuration: read from an integer of bytes or a string people write ("64KiB",
/// "64 KiB", "1 MB"), written back exactly ("64 KiB", "1 MB", or an integer of bytes).
/// `bytesize`'s own `Serialize` writes a rounded display string ("65.5 KB" for 64 KiB), and the
/// defaults reach figment serialised, so every `ByteSize` field takes
/// `#[serde(with = "byte_size")]` (a test checks every default survives the trip).
pub mod byte_size {
    use bytesize::ByteSize;
    use serde::{Deserialize, Deserializer, Serializer};

    const UNITS: [(u64, &str); 6] = [
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "KB"),
    ];

    /// The exact text of a size: the largest unit it is a whole multiple of, else its bytes.
    pub fn exact(size: ByteSize) -> Option<String> {
        let bytes = size.as_u64();
        UNITS
            .iter()
            .find(|(unit, _)| bytes != 0 && bytes.is_multiple_of(*unit))
            .map(|(unit, name)| format!("{} {name}", bytes / unit))
    }

    pub fn serialize<S: Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        match exact(*size) {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_u64(size.as_u64()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        ByteSize::deserialize(d)
    }
}

/// Payload limits as the transports use them.
pub fn bytes(size: ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine.example.toml");
        let config = Config::load(Some(&path), &Overrides::default()).expect("example loads");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn every_default_survives_the_round_trip_exactly() {
        // The defaults go through figment as serialised values: a lossy form (a size shown
        // as "65.5 KB") would silently change them.
        let loaded = Config::load(None, &Overrides::default()).expect("defaults load");
        assert_eq!(loaded, Config::default());
        assert_eq!(loaded.mqtt.max_payload_size.as_u64(), 65_536);
        assert_eq!(loaded.http.max_payload_size.as_u64(), 65_536);
        assert_eq!(loaded.integrations.max_payload_size.as_u64(), 65_536);
    }

    #[test]
    fn the_printed_config_shows_exact_sizes_and_loads_back() {
        let text = toml::to_string(&Config::default()).expect("serialises");
        assert!(text.contains("max_payload_size = \"64 KiB\""), "{text}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &text).expect("write");
        let loaded = Config::load(Some(&file), &Overrides::default()).expect("printed loads");
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        let cases: &[(&str, u64)] = &[
            ("\"64KiB\"", 65_536),
            ("\"64 KiB\"", 65_536),
            ("\"1 MB\"", 1_000_000),
            ("\"1MiB\"", 1_048_576),
            ("\"65537\"", 65_537),
            ("65537", 65_537),
            ("\"100 B\"", 100),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        for (value, want) in cases {
            std::fs::write(&file, format!("[http]\nmax_payload_size = {value}\n")).expect("write");
            let config = Config::load(Some(&file), &Overrides::default()).expect(value);
            assert_eq!(config.http.max_payload_size.as_u64(), *want, "{value}");
            let text = toml::to_string(&config).expect("serialises");
            std::fs::write(&file, &text).expect("write");
            let again = Config::load(Some(&file), &Overrides::default()).expect("reloads");
            assert_eq!(
                again.http.max_payload_size.as_u64(),
                *want,
                "{value} printed as {text}"
            );
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\n[mqtt]\nbind = \"127.0.0.1:1\"\n",
        )
        .expect("write");
        let overrides = Overrides {
            mqtt: Some(BindOverride {
                bind: "127.0.0.1:2".parse().expect("addr"),
            }),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), &overrides).expect("loads");
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert_eq!(config.mqtt.bind.port(), 2);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("[mqtt]\nbindd = \"127.0.0.1:1\"\n", "bindd"),
            ("[queue]\npartitions = 0\n", "partitions"),
            ("[store]\nbatch_interval = \"soon\"\n", "batch_interval"),
            ("[auth]\nusername = \"me@x\"\n", "password_hash"),
        ];
        for (text, needle) in cases {
            let file = dir.path().join("c.toml");
            std::fs::write(&file, text).expect("write");
            let err = Config::load(Some(&file), &Overrides::default()).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        let missing = Config::load(Some(Path::new("/no/such/file.toml")), &Overrides::default());
        assert!(missing.is_err());
    }
}
