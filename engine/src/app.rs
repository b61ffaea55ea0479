//! Wiring: builds the ports, spawns the actors, starts the transports, and shuts them down in
//! the order that loses nothing: stop accepting, close connections, drain the queue into
//! storage.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use actors::converter::ConverterRuntime;
use actors::directory::{Directory, DirectoryStore};
use actors::downlink::event::NodeId;
use actors::downlink::router::{DownlinkBus, DownlinkSettings, Downlinks, NoBus};
use actors::ingress::Ingress;
use actors::integration::Integrations;
use actors::integration::pool::ConverterPool;
use actors::ports::{
    Catalog, DeadLetters, DeviceProfiles, DeviceRecords, DeviceRegistry, Producer, Store,
};
use actors::rule_chain::{DefaultRuleChain, MakeRuleChain, RuleChain};
use actors::session::supervisor::{SessionSupervisor, SupervisorMsg};
use actors::sink::{AfterStore, AfterStoreAll, SinkArgs, SinkConfig};
use actors::sink_feed::{FeedConsumer, SharedFeed};
use actors::sink_supervisor::{MakeSink, SinkSupervisor, SinkSupervisorArgs, SinkSupervisorMsg};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::api::ApiState;
use crate::auth::Auth;
use crate::config::{Config, QueueKind, StoreKind, bytes};
use crate::queue::kafka::{self, KafkaProducer, KafkaSource, SourceHandle};
use crate::queue::memory::{MemoryQueue, MemorySource};
use crate::store::clickhouse::ClickHouseStore;
use crate::store::embedded::EmbeddedStore;
use crate::store::paused::PausableStore;
use crate::store::registry::RegistryLimits;
use crate::transport::coap::CoapServer;
use crate::transport::http::DeviceApiConfig;
use crate::transport::mqtt::{MqttContext, MqttServer};

pub struct Running {
    mqtt: MqttServer,
    coap: CoapServer,
    queue: Queue,
    http: actix_web::dev::ServerHandle,
    http_task: JoinHandle<std::io::Result<()>>,
    sinks: (ActorRef<SinkSupervisorMsg>, JoinHandle<()>),
    supervisor: ActorRef<SupervisorMsg>,
    shutdown_timeout: Duration,
}

/// The queue backend, as shutdown needs it.
enum Queue {
    Memory {
        queue: MemoryQueue,
        source: MemorySource,
    },
    Kafka {
        producer: KafkaProducer,
        source: SourceHandle,
        listener: kafka::bus::BusListener,
    },
}

/// This node's name, made once and kept in `<data_dir>/node-id`.
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_owned());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let id = format!("engine-{}", uuid::Uuid::new_v4());
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Reads the directory again every `interval`: other nodes write it too.
fn spawn_directory_reload(directory: Arc<Directory>, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = directory.reload().await {
                metrics::counter!(actors::metrics::DIRECTORY_RELOAD_FAILURES).increment(1);
                warn!(error = %e, "the directory could not be read again; the last one read stays");
            }
        }
    });
}

/// Deletes persistent RPC records older than `ttl`, hourly (every node: the deletion is
/// idempotent). `ttl` zero: never.
fn spawn_rpc_ttl(records: Arc<dyn DeviceRecords>, ttl: Duration) {
    let Ok(ttl_ms) = i64::try_from(ttl.as_millis()) else {
        return;
    };
    if ttl_ms == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let before = actors::model::now_ms().saturating_sub(ttl_ms);
            if let Err(e) = records.delete_rpcs_created_before(before).await {
                warn!(error = %e, "old persistent RPC records could not be deleted");
            }
        }
    });
}

/// Requests that may wait on HTTP connections at once: at most half the connection cap, so
/// waiting device polls or RPC calls never take the connections the REST API and `/metrics`
/// need.
fn waiting_cap(configured: usize, max_connections: usize) -> usize {
    configured.min(max_connections / 2).max(1)
}

fn registry_limits(config: &Config) -> RegistryLimits {
    RegistryLimits {
        max_per_tenant: config.devices.max_per_tenant,
        unknown_cache_size: config.devices.unknown_cache_size,
        unknown_cache_ttl: config.devices.unknown_cache_ttl,
        max_concurrent_lookups: config.devices.max_concurrent_lookups,
    }
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("cannot listen for {what} on {addr}"))
}

pub async fn start(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Running> {
    type Opened = (
        Arc<dyn Store>,
        Arc<dyn DeviceRegistry>,
        Arc<dyn Catalog>,
        Arc<dyn DeviceProfiles>,
        Arc<dyn DeviceRecords>,
        Arc<dyn DirectoryStore>,
    );
    let (store, registry, catalog, profiles, records, directory_store): Opened = match config
        .store
        .kind
    {
        StoreKind::Embedded => {
            let (store, registry) = EmbeddedStore::open(&config.data_dir)?;
            let store = store.with_read_budget(config.api.query_timeout);
            let catalog = Arc::new(store.catalog());
            let records = Arc::new(store.records());
            let directory = Arc::new(store.directory());
            let registry = registry.limited(&registry_limits(&config));
            (
                Arc::new(store),
                Arc::new(registry),
                catalog,
                records.clone(),
                records,
                directory,
            )
        }
        StoreKind::Clickhouse => {
            let (store, registry) = ClickHouseStore::open(&config.store).await?;
            info!(url = %config.store.url, database = %config.store.database, "clickhouse store ready");
            let catalog = Arc::new(store.catalog());
            let records = Arc::new(store.records());
            let directory = Arc::new(store.directory());
            let registry = registry.limited(&registry_limits(&config));
            (
                Arc::new(store),
                Arc::new(registry),
                catalog,
                records.clone(),
                records,
                directory,
            )
        }
    };
    let directory = Directory::open(directory_store, config.directory.limits())
        .await
        .context("cannot load the directory (customers, users, assets, relations)")?;
    let directory = if config.store.kind == StoreKind::Clickhouse {
        // Other nodes write the same table.
        let directory = Arc::new(directory.shared());
        spawn_directory_reload(directory.clone(), config.directory.reload_interval);
        directory
    } else {
        Arc::new(directory)
    };
    let sink_config = SinkConfig {
        batch_size: config.store.batch_size(),
        batch_interval: config.store.batch_interval(),
        retry_base: config.store.retry_base,
        retry_max: config.store.retry_max,
    };
    let sink_store: Arc<dyn Store> = match &config.store.test_pause_file {
        Some(file) => {
            warn!(file = %file.display(), "store.test_pause_file is set: storage writes wait while that file exists (a test knob)");
            Arc::new(PausableStore::new(store.clone(), file.clone()))
        }
        None => store.clone(),
    };
    let node = node_id(&config.data_dir)?;
    spawn_rpc_ttl(records.clone(), config.devices.rpc_ttl);
    // The node's downlinks keep the state of the devices whose partitions it owns, so the rule
    // chains need them, and they need the queue's producer to announce sessions.
    // Returns them and the rule chain maker that holds them.
    let downlinks_of = |producer: Arc<dyn Producer>, bus: Arc<dyn DownlinkBus>| {
        let ingress = Arc::new(Ingress::new(producer, bytes(config.mqtt.max_payload_size)));
        let downlinks = Downlinks::start(
            NodeId::from(node.as_str()),
            DownlinkSettings {
                max_waiting_calls: waiting_cap(
                    DownlinkSettings::default().max_waiting_calls,
                    config.http.max_connections,
                ),
                rpc_ack_timeout: config.mqtt.rpc_ack_timeout,
                ..DownlinkSettings::default()
            },
            ingress,
            records.clone(),
            bus,
        );
        let held = downlinks.clone();
        let make_chain: MakeRuleChain = Arc::new(move |_| {
            Box::new(DefaultRuleChain::with_downlinks(held.clone())) as Box<dyn RuleChain>
        });
        (downlinks, make_chain)
    };
    // WebSocket sessions watch devices here; the sinks tell it what they stored.
    let live = actors::live::LiveHub::new();
    let (queue, producer, sink_count, make, downlinks): (
        Queue,
        Arc<dyn Producer>,
        usize,
        MakeSink,
        Arc<Downlinks>,
    ) = match config.queue.kind {
        QueueKind::Memory => {
            let queue =
                MemoryQueue::new(config.queue.partitions, config.queue.partition_capacity, 1);
            let (downlinks, make_chain) = downlinks_of(Arc::new(queue.clone()), Arc::new(NoBus));
            // The same topology as Kafka's: partitions -> rule chains -> sink.
            let (to_sink, from_chains) =
                mpsc::channel(sink_config.batch_size.saturating_mul(2).max(1024));
            let (source, committer) =
                MemorySource::start(&queue, make_chain, to_sink, config.queue.partition_capacity)
                    .await?;
            let feed = SharedFeed::new(from_chains);
            let after_store: Arc<dyn AfterStore> =
                Arc::new(AfterStoreAll(vec![downlinks.clone(), live.clone()]));
            let make: MakeSink = Arc::new(move |_| SinkArgs {
                consumer: Box::new(FeedConsumer::new(feed.clone(), committer.clone())),
                store: sink_store.clone(),
                config: sink_config.clone(),
                dead_letters: None,
                after_store: Some(after_store.clone()),
            });
            (
                Queue::Memory {
                    queue: queue.clone(),
                    source,
                },
                Arc::new(queue),
                1,
                make,
                downlinks,
            )
        }
        QueueKind::Kafka => {
            kafka::ensure_topics(&config.queue).await?;
            let producer = KafkaProducer::new(&config.queue)?;
            let bus = Arc::new(kafka::bus::KafkaBus::new(&config.queue)?);
            let (downlinks, make_chain) = downlinks_of(Arc::new(producer.clone()), bus);
            // This node's downlinks are read before any session or caller can want one.
            let listener = kafka::bus::listen(&config.queue, &node, downlinks.clone()).await?;
            // Rule chains -> sink: room for two batches, so the sink always has the next
            // one ready while it writes.
            let (to_sink, from_chains) =
                mpsc::channel(sink_config.batch_size.saturating_mul(2).max(1024));
            let instance_id = match &config.queue.instance_id {
                Some(id) => id.clone(),
                None => node.clone(),
            };
            let (source, committer) =
                KafkaSource::start(&config.queue, &instance_id, make_chain, to_sink, {
                    let downlinks = downlinks.clone();
                    Arc::new(move |assigned| downlinks.rebalanced(assigned))
                })
                .await?;
            let feed = SharedFeed::new(from_chains);
            let dead_letters: Arc<dyn DeadLetters> = Arc::new(producer.clone());
            let after_store: Arc<dyn AfterStore> =
                Arc::new(AfterStoreAll(vec![downlinks.clone(), live.clone()]));
            let make: MakeSink = Arc::new(move |_| SinkArgs {
                consumer: Box::new(FeedConsumer::new(feed.clone(), committer.clone())),
                store: sink_store.clone(),
                config: sink_config.clone(),
                dead_letters: Some(dead_letters.clone()),
                after_store: Some(after_store.clone()),
            });
            info!(brokers = %config.queue.brokers, topic = %config.queue.topic, "kafka queue ready");
            (
                Queue::Kafka {
                    producer: producer.clone(),
                    source,
                    listener,
                },
                Arc::new(producer),
                1,
                make,
                downlinks,
            )
        }
    };
    live.connect(downlinks.clone());
    let sinks = Actor::spawn(
        Some("sinks".into()),
        SinkSupervisor,
        SinkSupervisorArgs {
            sinks: sink_count,
            make,
        },
    )
    .await?;
    let (supervisor, _) = Actor::spawn(Some("sessions".into()), SessionSupervisor, ()).await?;

    let mqtt_listener = bind(config.mqtt.bind, "MQTT")?;
    let http_listener = crate::transport::http_server::bind(config.http.bind, config.http.backlog)
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.bind))?;
    let mqtt_addr = mqtt_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    // One key count per device, whatever transport brings its keys.
    let limits = config.limits.ingress();
    let ctx = Arc::new(MqttContext {
        registry: registry.clone(),
        records: records.clone(),
        store: store.clone(),
        profiles: profiles.clone(),
        ingress: Arc::new(
            Ingress::new(producer.clone(), bytes(config.mqtt.max_payload_size))
                .with_limits(limits.clone()),
        ),
        supervisor: supervisor.get_cell(),
        receive_maximum: config.mqtt.receive_maximum,
        outbound_capacity: config.mqtt.outbound_capacity,
        session_limits: actors::protocol::rpc::SessionLimits {
            max_payload_size: config.mqtt.max_payload_size.as_u64(),
            max_inflight_messages: config.mqtt.receive_maximum.into(),
            ..Default::default()
        },
        client_rpc_timeout: config.mqtt.client_rpc_timeout,
        downlinks: downlinks.clone(),
        gateway_max_devices: config.mqtt.gateway_max_devices,
        gateway_devices: Arc::new(crate::transport::mqtt::DeviceBudget::new(
            config.mqtt.gateway_max_devices_total,
        )),
    });
    let mqtt = MqttServer::start(mqtt_listener, &config.mqtt, ctx)?;

    let http_max = bytes(config.http.max_payload_size);
    let ingress = Arc::new(Ingress::new(producer, http_max).with_limits(limits));
    let auth = Auth::new(&config.auth, &config.data_dir)?.with_directory(directory.clone());
    let integrations = Arc::new(
        start_integrations(&config, &auth, registry.clone(), ingress.clone(), catalog).await?,
    );
    let integration_max = bytes(config.integrations.max_payload_size);
    let coap = CoapServer::start(&config.coap, integration_max, integrations.clone()).await?;
    let coap_addr = coap.local_addr();
    let state = web::Data::new(ApiState {
        auth,
        directory,
        activation_ttl: config.directory.activation_ttl,
        registry,
        store,
        profiles,
        records,
        ingress,
        metrics,
        device_api: DeviceApiConfig {
            queue_wait: config.http.queue_wait,
            body_timeout: config.http.body_timeout,
            max_payload: http_max,
            request_timeout: config.http.request_timeout,
            max_request_timeout: config.http.max_request_timeout,
            waiting: std::sync::Arc::new(tokio::sync::Semaphore::new(waiting_cap(
                config.http.max_waiting_requests,
                config.http.max_connections,
            ))),
        },
        converters: integrations.runtime().clone(),
        integrations,
        node_id: node,
        downlinks,
        sessions: mqtt.sessions(),
        ws: crate::transport::ws::WsState::new(live.clone(), config.ws.clone(), &config.api),
    });
    let server = crate::transport::http_server::serve(
        http_listener,
        &config.http,
        crate::transport::http_server::AppParts {
            state,
            limits: web::Data::new(config.api.clone()),
            payload_limit: http_max.max(integration_max).saturating_add(64 * 1024),
        },
    )?;
    let http = server.handle();
    let http_task = tokio::spawn(server);

    info!(%mqtt_addr, "mqtt listening");
    info!(%http_addr, "http listening");
    info!(%coap_addr, "coap listening");
    Ok(Running {
        mqtt,
        coap,
        queue,
        http,
        http_task,
        sinks,
        supervisor,
        shutdown_timeout: config.shutdown_timeout,
    })
}

/// The integration hub: the catalog loaded, then the integrations the config file declares
/// (re)created over it.
async fn start_integrations(
    config: &Config,
    auth: &Auth,
    registry: Arc<dyn DeviceRegistry>,
    ingress: Arc<Ingress>,
    catalog: Arc<dyn Catalog>,
) -> anyhow::Result<Integrations> {
    let c = &config.integrations;
    let pool = ConverterPool::new(c.workers, c.queue_capacity);
    info!(threads = pool.threads(), "converter pool started");
    let hub = Integrations::start(
        Arc::new(ConverterRuntime::new(&c.script.limits())),
        pool,
        registry,
        ingress,
        catalog,
        Arc::new(crate::integrations::debug_events(c)),
        crate::integrations::settings(c),
    )
    .await
    .context("cannot load the integrations")?;
    crate::integrations::declare(&hub, c, auth.tenant_id()).await?;
    Ok(hub)
}

impl Running {
    /// Graceful shutdown: every message acknowledged before it is in storage when this returns
    /// `Ok`.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        info!("shutting down: closing listeners");
        let (mqtt, http, coap) = (self.mqtt.stop(), self.http.stop(true), self.coap.stop());
        tokio::join!(mqtt, http, coap);
        let _ = self.http_task.await;
        // Nothing can send any more; a sender still waiting for room is told the queue closed.
        let (source, mut memory) = match self.queue {
            Queue::Memory { queue, source } => {
                queue.close();
                info!(
                    messages = queue.depth(),
                    "listeners closed, draining the queue into storage"
                );
                (None, Some(source))
            }
            Queue::Kafka {
                producer,
                mut source,
                listener,
            } => {
                listener.stop().await;
                producer.close();
                if let Err(e) = producer.flush(self.shutdown_timeout).await {
                    error!(error = %e, "kafka did not confirm every record before shutdown");
                }
                // Stop reading; what the rule chains hold is stored below, the rest stays in
                // Kafka for the next start.
                source.stop().await;
                info!("listeners closed, storing what was read from kafka");
                (Some(source), None)
            }
        };
        let drain = async {
            // Everything the memory queue holds goes through the rule chains to the sink.
            if let Some(source) = memory.as_mut() {
                source.stop().await;
            }
            let (sinks, join) = self.sinks;
            let stats = ractor::call!(sinks, SinkSupervisorMsg::Drain).context("sinks died")?;
            let _ = join.await;
            anyhow::Ok(stats.messages)
        };
        let result = tokio::time::timeout(self.shutdown_timeout, drain).await;
        if let Some(source) = source {
            source.finish().await;
        }
        self.supervisor.stop(None);
        match result {
            Ok(Ok(messages)) => {
                info!(messages_stored_since_start = messages, "drained, bye");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                error!(timeout = ?self.shutdown_timeout, "storage did not take the queue in time");
                anyhow::bail!(
                    "shutdown timed out after {:?} with messages not stored",
                    self.shutdown_timeout
                )
            }
        }
    }
}
