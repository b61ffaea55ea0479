//! The `engine` binary: `engine serve` runs the ingestion engine; `engine hash-password` makes
//! the password hash the configuration needs.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

use engine::config::{
    BindOverride, Config, Overrides, QueueKind, QueueOverride, StoreKind, StoreOverride,
};

/// jemalloc, not glibc's malloc: about a quarter less engine CPU per message under sustained
/// MQTT load (ARCHITECTURE.md, "The allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A ThingsBoard-compatible IoT ingestion engine: devices send telemetry and attributes over
/// MQTT and HTTP; everything flows through a queue into storage; a REST API reads it back.
#[derive(Parser)]
#[command(name = "engine", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine (embedded queue and store by default: no external servers needed)
    #[command(after_help = SERVE_AFTER_HELP)]
    Serve(Box<ServeArgs>),
    /// Print the Argon2 hash of a password, for `auth.password_hash`; reads the password from
    /// standard input when not given
    HashPassword {
        /// The password (prefer standard input: arguments end up in shell history)
        password: Option<String>,
    },
}

const SERVE_AFTER_HELP: &str = "\
Every option of the configuration file (all documented in engine.example.toml) can also be set
as an environment variable ENGINE_<SECTION>__<OPTION>, e.g. ENGINE_MQTT__MAX_PAYLOAD_SIZE=128KiB
or ENGINE_DATA_DIR=/var/lib/engine. Flags win over the environment, the environment over the
file. SIGTERM or SIGINT stops the engine gracefully: it stops accepting, stores everything it
acknowledged, and exits 0.";

/// Options of `engine serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (else the file ENGINE_CONFIG names); every option has a default
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT listener address [default: 0.0.0.0:1883]
    #[arg(long, value_name = "ADDR")]
    mqtt_bind: Option<SocketAddr>,
    /// HTTP listener address: REST API, HTTP device API, /metrics [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR")]
    http_bind: Option<SocketAddr>,
    /// CoAP integration endpoint (UDP) [default: 0.0.0.0:5683]
    #[arg(long, value_name = "ADDR")]
    coap_bind: Option<SocketAddr>,
    /// Directory of the embedded store and generated secrets [default: ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. "info" or "engine=debug,info" [default: info]
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Queue backend: memory or kafka [default: memory]
    #[arg(long, value_name = "KIND")]
    queue_kind: Option<QueueKind>,
    /// Kafka bootstrap brokers, host:port[,host:port] [default: 127.0.0.1:9092]
    #[arg(long, value_name = "BROKERS")]
    queue_brokers: Option<String>,
    /// Store backend: embedded or clickhouse [default: embedded]
    #[arg(long, value_name = "KIND")]
    store_kind: Option<StoreKind>,
    /// ClickHouse HTTP interface [default: http://127.0.0.1:8123]
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// ClickHouse database, created and migrated at start-up [default: engine]
    #[arg(long, value_name = "NAME")]
    store_database: Option<String>,
    /// Print the effective configuration (all sources merged) as TOML and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::HashPassword { password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut p = String::new();
                    std::io::stdin().read_to_string(&mut p)?;
                    p.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            anyhow::ensure!(!password.is_empty(), "the password is empty");
            println!("{}", engine::auth::hash_password(&password)?);
            Ok(())
        }
        Command::Serve(args) => serve(*args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        data_dir: args.data_dir,
        log: args.log,
        mqtt: args.mqtt_bind.map(|bind| BindOverride { bind }),
        http: args.http_bind.map(|bind| BindOverride { bind }),
        coap: args.coap_bind.map(|bind| BindOverride { bind }),
        queue: QueueOverride {
            kind: args.queue_kind,
            brokers: args.queue_brokers,
        },
        store: StoreOverride {
            kind: args.store_kind,
            url: args.store_url,
            database: args.store_database,
        },
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    if args.print_config {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }
    let filter =
        EnvFilter::try_new(config.log_filter()).or_else(|_| EnvFilter::try_new(&config.log))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();

    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("engine")
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let metrics = engine::exporter::install()?;
        info!(version = env!("CARGO_PKG_VERSION"), data_dir = %config.data_dir.display(), "starting");
        let running = engine::app::start(config, Some(metrics)).await?;
        wait_for_signal().await?;
        running.shutdown().await
    })
}

/// Every device connection is a descriptor: take the hard limit, not the (often 1024) soft one.
fn raise_open_files_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < hard
        && rlimit::Resource::NOFILE.set(hard, hard).is_ok()
    {
        info!(from = soft, to = hard, "raised the open files limit");
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
