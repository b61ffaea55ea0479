//! Wiring: builds the ports, spawns the actors, starts the transports, and shuts them down in
//! the order that loses nothing: stop accepting, close connections, drain the queue into
//! storage.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use actors::ingress::Ingress;
use actors::ports::{DeviceRegistry, Store};
use actors::sink::{SinkArgs, SinkConfig};
use actors::sink_supervisor::{MakeSink, SinkSupervisor, SinkSupervisorArgs, SinkSupervisorMsg};
use actors::supervisor::{SessionSupervisor, SupervisorMsg};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::api::{self, ApiState};
use crate::auth::Auth;
use crate::config::{Config, QueueKind, StoreKind, bytes};
use crate::queue::memory::MemoryQueue;
use crate::store::clickhouse::ClickHouseStore;
use crate::store::embedded::EmbeddedStore;
use crate::transport::http::DeviceApiConfig;
use crate::transport::mqtt::{MqttContext, MqttServer};

pub struct Running {
    mqtt: MqttServer,
    queue: MemoryQueue,
    http: actix_web::dev::ServerHandle,
    http_task: JoinHandle<std::io::Result<()>>,
    sinks: (ActorRef<SinkSupervisorMsg>, JoinHandle<()>),
    supervisor: ActorRef<SupervisorMsg>,
    shutdown_timeout: Duration,
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("cannot listen for {what} on {addr}"))
}

pub async fn start(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Running> {
    let (store, registry): (Arc<dyn Store>, Arc<dyn DeviceRegistry>) = match config.store.kind {
        StoreKind::Embedded => {
            let (store, registry) = EmbeddedStore::open(&config.data_dir)?;
            (Arc::new(store), Arc::new(registry))
        }
        StoreKind::Clickhouse => {
            let (store, registry) = ClickHouseStore::open(&config.store).await?;
            info!(url = %config.store.url, database = %config.store.database, "clickhouse store ready");
            (Arc::new(store), Arc::new(registry))
        }
    };
    let queue = match config.queue.kind {
        QueueKind::Memory => {
            MemoryQueue::new(config.queue.partitions, config.queue.partition_capacity, 1)
        }
    };

    let sink_config = SinkConfig {
        batch_size: config.store.batch_size(),
        batch_interval: config.store.batch_interval(),
        retry_base: config.store.retry_base,
        retry_max: config.store.retry_max,
    };
    let (sink_queue, sink_store) = (queue.clone(), store.clone());
    let make: MakeSink = Arc::new(move |i| SinkArgs {
        consumer: Box::new(sink_queue.consumer(i)),
        store: sink_store.clone(),
        config: sink_config.clone(),
    });
    let sinks = Actor::spawn(
        Some("sinks".into()),
        SinkSupervisor,
        SinkSupervisorArgs {
            sinks: queue.consumers(),
            make,
        },
    )
    .await?;
    let (supervisor, _) = Actor::spawn(Some("sessions".into()), SessionSupervisor, ()).await?;

    let mqtt_listener = bind(config.mqtt.bind, "MQTT")?;
    let http_listener = bind(config.http.bind, "HTTP")?;
    let mqtt_addr = mqtt_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let producer: Arc<dyn actors::ports::Producer> = Arc::new(queue.clone());
    let ctx = Arc::new(MqttContext {
        registry: registry.clone(),
        ingress: Arc::new(Ingress::new(
            producer.clone(),
            bytes(config.mqtt.max_payload_size),
        )),
        supervisor: supervisor.get_cell(),
        receive_maximum: config.mqtt.receive_maximum,
    });
    let mqtt = MqttServer::start(mqtt_listener, &config.mqtt, ctx)?;

    let http_max = bytes(config.http.max_payload_size);
    let state = web::Data::new(ApiState {
        auth: Auth::new(&config.auth, &config.data_dir)?,
        registry,
        store,
        ingress: Arc::new(Ingress::new(producer, http_max)),
        metrics,
        device_api: DeviceApiConfig {
            queue_wait: config.http.queue_wait,
        },
    });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(http_max.saturating_add(64 * 1024)))
            .configure(api::routes)
    })
    .disable_signals()
    .shutdown_timeout(5);
    if config.http.workers > 0 {
        server = server.workers(config.http.workers);
    }
    let server = server.listen(http_listener)?.run();
    let http = server.handle();
    let http_task = tokio::spawn(server);

    info!(%mqtt_addr, "mqtt listening");
    info!(%http_addr, "http listening");
    Ok(Running {
        mqtt,
        queue,
        http,
        http_task,
        sinks,
        supervisor,
        shutdown_timeout: config.shutdown_timeout,
    })
}

impl Running {
    /// Graceful shutdown: every message acknowledged before it is in storage when this returns
    /// `Ok`.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        info!("shutting down: closing listeners");
        let (mqtt, http) = (self.mqtt.stop(), self.http.stop(true));
        tokio::join!(mqtt, http);
        let _ = self.http_task.await;
        // Nothing can send any more; a sender still waiting for room is told the queue closed.
        self.queue.close();
        info!(
            messages = self.queue.depth(),
            "listeners closed, draining the queue into storage"
        );
        let drain = async {
            let (sinks, join) = self.sinks;
            let stats = ractor::call!(sinks, SinkSupervisorMsg::Drain).context("sinks died")?;
            let _ = join.await;
            anyhow::Ok(stats.messages)
        };
        let result = tokio::time::timeout(self.shutdown_timeout, drain).await;
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
