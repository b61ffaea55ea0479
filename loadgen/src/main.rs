//! `loadgen`: simulates many ThingsBoard devices against this engine or any ThingsBoard-style
//! endpoint, and reports throughput and acknowledgement latency.
//!
//! Each transport is a module with one `run` function over the shared [`Run`] (devices,
//! payload template, pacing, statistics): `mqtt`, `http` and `coap` (the CoAP integration).
//! `downlink` drives the way back (RPC and shared attributes through the REST API to MQTT
//! devices) with its own report.

mod coap;
mod downlink;
mod gateway;
mod http;
mod live;
mod mqtt;
mod payload;
mod report;
mod rest;
mod schedule;
mod workers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use payload::{Profile, Template};
use report::{Report, Stats};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for ThingsBoard-style MQTT and HTTP device APIs and the CoAP integration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate devices over MQTT 3.1.1: one connection per device, access token as username
    Mqtt(MqttArgs),
    /// Simulate devices over the HTTP device API (POST /api/v1/{token}/telemetry)
    Http(HttpArgs),
    /// Simulate devices sending to a CoAP integration (POST coap://target/i/{routingKey});
    /// with --provision, the integration and its converter are created when missing
    Coap(CoapArgs),
    /// The way back: MQTT devices answering two-way RPC sent through the REST API, and
    /// shared-attribute updates fanned out to them; reports round trips and deliveries per
    /// second with their latency
    Downlink(downlink::DownlinkArgs),
    /// Live data to apps: WebSocket sessions subscribed to devices' telemetry (ThingsBoard's
    /// WebSocket API) count the updates they get while devices send, and each update's latency
    /// from its point's timestamp (run `loadgen mqtt --wall-clock-ts` beside it)
    Live(live::LiveArgs),
}

/// What every transport shares: the devices, what they send, how fast and for how long.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Number of simulated devices
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Device i is named and authenticated by the token <prefix><i>
    #[arg(long, default_value = "loadgen-")]
    pub token_prefix: String,
    /// Create the devices first through the engine's REST API at this base URL
    /// (e.g. http://127.0.0.1:8080); existing devices with the same token are reused
    #[arg(long, value_name = "URL")]
    pub provision: Option<String>,
    /// Only create the devices (with --provision), then exit without connecting
    #[arg(long, requires = "provision")]
    pub provision_only: bool,
    /// REST login for --provision and --verify
    #[arg(long, default_value = "tenant@thingsboard.org")]
    pub username: String,
    #[arg(long, default_value = "tenant")]
    pub password: String,
    /// Total messages per second over all devices, held on a steady schedule (open loop), or
    /// "max" to send as fast as acknowledgements allow (closed loop)
    #[arg(long, default_value = "max")]
    pub rate: Rate,
    /// How long to send; the default when --messages is not given is 10s
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Total messages to send over all devices (instead of, or as well as, --duration)
    #[arg(long)]
    pub messages: Option<u64>,
    /// Payload profile, modelled on ThingsBoard's performance tests
    #[arg(long, value_enum, default_value = "smart-meter")]
    pub profile: Profile,
    /// A payload template of your own: JSON of the form {"ts":{{ts}},"values":{...}} with
    /// optional {{seq}} and {{device}} placeholders
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// After the run, check through the engine's REST API at this base URL that every
    /// acknowledged data point is stored; exit non-zero if any is missing
    #[arg(long, value_name = "URL")]
    pub verify: Option<String>,
    /// With --verify: give up waiting for storage to catch up after this long without progress
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub verify_patience: Duration,
    /// How long to wait for outstanding acknowledgements after sending stopped
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// No live progress bar (e.g. in CI logs)
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct MqttArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// MQTT server address
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub target: std::net::SocketAddr,
    /// QoS of the publishes: 0 or 1
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Most unacknowledged QoS 1 publishes per connection
    #[arg(long, default_value_t = 16)]
    pub inflight: u16,
    /// New connections per second while ramping up
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Spread connections over this many local addresses 127.0.0.1, 127.0.0.2, ... (each has
    /// its own ephemeral port range; loopback targets only)
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// MQTT keep-alive
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// Spread the devices over this many loadgen processes, each with its own open-file limit,
    /// and merge their reports into one
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub processes: u16,
    /// Internal (set by the parent with --processes): this process is worker <N>
    #[arg(long, hide = true, requires = "start_ms")]
    pub worker: Option<u16>,
    /// Internal: wall-clock milliseconds at which every worker starts publishing
    #[arg(long, hide = true)]
    pub start_ms: Option<i64>,
    /// Gateway mode: this many gateway connections (ThingsBoard's gateway API), each speaking
    /// for --devices-per-gateway devices (--devices is then their product). Gateway g logs in
    /// with the token <prefix>gw<g>; --provision makes the gateways, the engine their devices
    #[arg(long, alias = "gateway", conflicts_with = "processes")]
    pub gateways: Option<usize>,
    /// Gateway mode: devices behind each gateway
    #[arg(long, default_value_t = 100, requires = "gateways")]
    pub devices_per_gateway: usize,
    /// Gateway mode: devices whose next message one telemetry publish carries
    #[arg(long, default_value_t = 100, requires = "gateways")]
    pub batch_devices: usize,
    /// Stamp each message with the wall clock when it is sent (kept unique and increasing per
    /// device: one millisecond past the device's previous one when it sends faster), so a
    /// receiver (`loadgen live`) can measure latency from it; without it `{{ts}}` is the run's
    /// start plus the message's sequence number. Not with --verify, which counts by those
    #[arg(long, conflicts_with_all = ["verify", "gateways"])]
    pub wall_clock_ts: bool,
}

#[derive(Args, Debug)]
pub struct HttpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Base URL of the HTTP device API
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Requests in flight at once (keep-alive connections)
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Args, Debug)]
pub struct CoapArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// CoAP endpoint address (UDP)
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub target: std::net::SocketAddr,
    /// The integration's routing key; without it, --provision creates (or finds) the
    /// integration "loadgen CoAP"
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Path before /i/{routingKey}
    #[arg(long, default_value = "")]
    pub path: String,
    /// Send non-confirmable requests (default: confirmable)
    #[arg(long)]
    pub non: bool,
    /// Requests in flight at once (one UDP socket each)
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    PerSecond(f64),
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "{s:?} is neither a positive number of messages per second nor \"max\""
            )),
        }
    }
}

/// One simulated device.
pub struct Device {
    pub name: String,
    pub token: String,
    /// Messages of this device the engine acknowledged.
    pub acked: AtomicU64,
    /// Messages sent (their sequence numbers are 0..sent).
    pub sent: AtomicU64,
}

/// Everything a transport driver needs; shared by all its tasks.
pub struct Run {
    pub devices: Vec<Device>,
    pub template: Template,
    pub rate: Rate,
    /// Publishing starts here for everyone (after the connection ramp).
    pub start: Instant,
    /// Wall-clock milliseconds at `start`: message k of a device carries ts = start_ms + k.
    pub start_ms: i64,
    pub stop_at: Option<Instant>,
    pub messages: Option<u64>,
    pub drain_timeout: Duration,
    pub stats: Stats,
}

impl Run {
    /// Messages device `lane` may send in total.
    pub fn quota(&self, lane: usize) -> u64 {
        self.messages
            .map_or(u64::MAX, |m| schedule::share(m, self.devices.len(), lane))
    }

    pub fn schedule(&self, lanes: usize, lane: usize) -> Option<schedule::Schedule> {
        match self.rate {
            Rate::Max => None,
            Rate::PerSecond(r) => Some(schedule::Schedule::lane(self.start, r, lanes, lane)),
        }
    }

    pub fn sending_over(&self, now: Instant) -> bool {
        self.stop_at.is_some_and(|t| now >= t)
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The run's shared state. Publishing starts after `ramp`, or, in a `--processes` worker, at
/// the parent's wall-clock instant `start_at_ms`.
fn build_run(common: &CommonArgs, ramp: Duration, start_at_ms: Option<i64>) -> Result<Run> {
    if common.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let template = match &common.payload_file {
        Some(path) => Template::from_file(path)?,
        None => Template::profile(common.profile),
    };
    let duration = match (common.duration, common.messages) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let devices = (0..common.devices)
        .map(|i| {
            let token = format!("{}{i}", common.token_prefix);
            Device {
                name: token.clone(),
                token,
                acked: AtomicU64::new(0),
                sent: AtomicU64::new(0),
            }
        })
        .collect();
    #[allow(clippy::cast_possible_truncation)]
    let (start, start_ms) = match start_at_ms {
        Some(ms) => {
            let wait = u64::try_from(ms.saturating_sub(now_ms())).unwrap_or(0);
            (Instant::now() + Duration::from_millis(wait), ms)
        }
        None => (Instant::now() + ramp, now_ms() + ramp.as_millis() as i64),
    };
    Ok(Run {
        devices,
        template,
        rate: common.rate,
        start,
        start_ms,
        stop_at: duration.map(|d| start + d),
        messages: common.messages,
        drain_timeout: common.drain_timeout,
        stats: Stats::default(),
    })
}

/// Shows the live rate until `done` resolves.
async fn progress(run: Arc<Run>, quiet: bool, mut done: tokio::sync::oneshot::Receiver<()>) {
    if quiet {
        let _ = done.await;
        return;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let (mut last, mut last_at) = (0u64, Instant::now());
    loop {
        tokio::select! {
            _ = &mut done => break,
            _ = tick.tick() => {}
        }
        let acked = run.stats.acked.load(Ordering::Relaxed);
        let sent = run.stats.sent.load(Ordering::Relaxed);
        let connected = run.stats.connected.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let rate = (acked - last) as f64 / last_at.elapsed().as_secs_f64().max(1e-9);
        (last, last_at) = (acked, Instant::now());
        bar.set_message(format!(
            "{connected}/{} connected  {sent} sent  {acked} acked  {rate:.0} acked/s",
            run.devices.len()
        ));
        bar.tick();
    }
    bar.finish_and_clear();
}

async fn execute(
    common: CommonArgs,
    ramp: Duration,
    transport: &str,
    driver: impl AsyncFnOnce(Arc<Run>) -> Result<()>,
) -> Result<bool> {
    raise_open_files_limit();
    if let Some(url) = &common.provision {
        let rest = rest::Rest::login(url, &common.username, &common.password).await?;
        let names: Vec<String> = (0..common.devices)
            .map(|i| format!("{}{i}", common.token_prefix))
            .collect();
        rest.provision(&names)
            .await
            .context("provisioning devices")?;
        eprintln!("provisioned {} devices", names.len());
        if common.provision_only {
            return Ok(true);
        }
    }
    let run = Arc::new(build_run(&common, ramp, None)?);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let bar = tokio::spawn(progress(run.clone(), common.quiet, done_rx));
    let started = Instant::now();
    driver(run.clone()).await?;
    let elapsed = Instant::now().saturating_duration_since(run.start.max(started));
    let _ = done_tx.send(());
    let _ = bar.await;
    let mut report: Report = run.stats.report(transport, elapsed);
    if let Some(url) = &common.verify {
        let rest = rest::Rest::login(url, &common.username, &common.password).await?;
        report.verify = Some(
            rest.verify(&run, common.verify_patience)
                .await
                .context("verifying")?,
        );
    }
    println!("{report}");
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let verified = report
        .verify
        .as_ref()
        .is_none_or(|v| v.missing_devices == 0);
    if !verified {
        eprintln!("verify failed: acknowledged data points are missing");
    }
    // A run where every answered message was refused (e.g. an unknown CoAP routing key) failed.
    let all_refused = report.failed > 0 && report.acked == 0;
    if all_refused {
        eprintln!("every message failed: nothing was acknowledged");
    }
    Ok(verified && report.connections_ok > 0 && !all_refused)
}

/// Thousands of connections need thousands of descriptors: take the hard limit.
fn raise_open_files_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(async move {
        match cli.command {
            Command::Mqtt(mut args) if args.gateways.is_some() => {
                let plan = gateway::Plan {
                    gateways: args.gateways.unwrap_or(1).max(1),
                    per_gateway: args.devices_per_gateway.max(1),
                    batch: args.batch_devices.max(1),
                };
                args.common.devices = plan.gateways * plan.per_gateway;
                #[allow(clippy::cast_precision_loss)]
                let ramp = Duration::from_secs_f64(
                    args.common.devices as f64 / args.connect_rate.max(1.0),
                ) + Duration::from_secs(1);
                let mut common = args.common.clone();
                if let Some(url) = common.provision.take() {
                    let rest = rest::Rest::login(&url, &common.username, &common.password).await?;
                    let names: Vec<String> = (0..plan.gateways)
                        .map(|g| gateway::gateway_token(&common.token_prefix, g))
                        .collect();
                    rest.provision_gateways(&names)
                        .await
                        .context("provisioning gateways")?;
                    eprintln!("provisioned {} gateways", names.len());
                    if common.provision_only {
                        return Ok(true);
                    }
                }
                execute(common, ramp, "mqtt-gateway", async move |run| {
                    gateway::run(run, &args, plan).await
                })
                .await
            }
            Command::Mqtt(args) => {
                if let Some(index) = args.worker {
                    raise_open_files_limit();
                    let run = Arc::new(build_run(&args.common, Duration::ZERO, args.start_ms)?);
                    let lanes =
                        workers::lanes(run.devices.len(), args.processes.into(), index.into());
                    let drive = mqtt::run(run.clone(), &args, lanes.clone());
                    workers::worker(run.clone(), lanes, drive).await?;
                    return Ok(true);
                }
                #[allow(clippy::cast_precision_loss)]
                let mut ramp = Duration::from_secs_f64(
                    args.common.devices as f64 / args.connect_rate.max(1.0),
                );
                if args.processes > 1 {
                    // Time for the workers to start before their connection ramp.
                    ramp += Duration::from_millis(500);
                }
                let common = args.common.clone();
                execute(common, ramp, "mqtt", async move |run| {
                    if args.processes > 1 {
                        workers::parent(run, args.processes.into()).await
                    } else {
                        let lanes = 0..run.devices.len();
                        mqtt::run(run, &args, lanes).await
                    }
                })
                .await
            }
            Command::Http(args) => {
                let common = args.common.clone();
                execute(common, Duration::ZERO, "http", async move |run| {
                    http::run(run, &args).await
                })
                .await
            }
            Command::Downlink(args) => {
                raise_open_files_limit();
                downlink::run(&args).await
            }
            Command::Live(args) => {
                raise_open_files_limit();
                live::run(&args).await
            }
            Command::Coap(args) => {
                let key = match (&args.routing_key, &args.common.provision) {
                    (Some(key), _) => key.clone(),
                    (None, Some(url)) => {
                        let rest =
                            rest::Rest::login(url, &args.common.username, &args.common.password)
                                .await?;
                        let key = rest
                            .integration("loadgen CoAP", "COAP", coap::DECODER)
                            .await
                            .context("provisioning the CoAP integration")?;
                        eprintln!("integration \"loadgen CoAP\": routing key {key}");
                        key
                    }
                    (None, None) => {
                        bail!("give --routing-key, or --provision to create the integration")
                    }
                };
                let common = args.common.clone();
                execute(common, Duration::ZERO, "coap", async move |run| {
                    coap::run(run, &args, &key).await
                })
                .await
            }
        }
    })?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_parses_numbers_and_max() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("2500".parse::<Rate>(), Ok(Rate::PerSecond(2500.0)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }
}
