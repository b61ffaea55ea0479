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
    pub auth: AuthConfig,
    pub queue: QueueConfig,
    pub store: StoreConfig,
    pub coap: CoapConfig,
    pub integrations: IntegrationsConfig,
    pub devices: DevicesConfig,
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
    /// Answers kept for retransmissions at most; the oldest go first.
    pub max_exchanges: usize,
    /// Block-wise (Block1) uploads being assembled at once at most; the oldest go first.
    pub max_block_transfers: usize,
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
    pub max_payload_size: ByteSize,
    /// Debug events kept per integration or converter.
    pub debug_events_per_entity: usize,
    /// Debug events older than this are dropped.
    #[serde(with = "humantime_serde")]
    pub debug_event_ttl: Duration,
    /// Devices with a pending HTTP downlink at most.
    pub max_pending_downlinks: usize,
    /// Limits of one converter run.
    pub script: ScriptLimits,
    /// Converters declared here are (re)created at every start, with ids derived from their
    /// names; REST changes to them last until the next start.
    pub converter: Vec<ConverterDecl>,
    /// Integrations declared here, likewise.
    pub integration: Vec<IntegrationDecl>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    pub max_operations: u64,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_call_levels: usize,
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
    pub max_payload_size: ByteSize,
    /// Unacknowledged QoS 1 publishes one connection may have in flight; past it the engine
    /// stops reading that socket. Also MQTT 5's Receive Maximum.
    pub receive_maximum: u16,
    /// Network worker threads; 0 means one per core.
    pub workers: usize,
    /// Time a new connection has to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// At shutdown, time open connections get to finish in-flight publishes before they are
    /// closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener: REST API, HTTP device API and `/metrics`.
    pub bind: SocketAddr,
    /// Largest accepted body of the HTTP device API (413 beyond).
    pub max_payload_size: ByteSize,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest an HTTP device API request waits for room in a full queue before it is answered
    /// 503 with `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
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
            auth: AuthConfig::default(),
            queue: QueueConfig::default(),
            store: StoreConfig::default(),
            coap: CoapConfig::default(),
            integrations: IntegrationsConfig::default(),
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
            max_block_transfers: 1024,
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
            max_pending_downlinks: 100_000,
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
            shutdown_grace: Duration::from_secs(1),
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
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
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
            self.devices.max_concurrent_lookups > 0,
            "devices.max_concurrent_lookups must be at least 1"
        );
        ensure!(
            self.coap.max_in_flight > 0,
            "coap.max_in_flight must be at least 1"
        );
        ensure!(
            self.integrations.queue_capacity > 0
                && self.integrations.max_in_flight_per_integration > 0,
            "integrations.queue_capacity and max_in_flight_per_integration must be at least 1"
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
        ensure!(
            self.auth.password_hash.is_some() || self.auth.username == DEMO_USERNAME,
            "auth.username is set but auth.password_hash is not; create one with `engine hash-password`"
        );
        Ok(())
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
