//! The production path with real servers: the engine with `queue.kind = "kafka"` (tansu, a
//! Kafka-protocol broker keeping its log in SQLite so it survives a restart) and
//! `store.kind = "clickhouse"` (Debian's clickhouse-server 18.16). Devices send known QoS 1
//! messages while a server is stopped and started, or the engine is killed; afterwards every
//! acknowledged data point must be stored exactly once, as seen through REST and through a
//! direct ClickHouse count.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tests::mqtt::{Outcome, connect_v3};
use tests::servers::{ClickHouse, Tansu};
use tests::{Engine, Rest};
use tokio::task::JoinHandle;

const TELEMETRY: &str = "v1/devices/me/telemetry";
/// Partitions a node reads now.
const PARTITIONS: &str = "engine_queue_partitions_assigned";
/// Data point times: one per message, far from now so they never clash with other data.
const BASE_TS: i64 = 1_600_000_000_000;

struct Stack {
    clickhouse: ClickHouse,
    kafka: Tansu,
    dir: tempfile::TempDir,
}

impl Stack {
    fn start() -> Result<Stack> {
        Ok(Stack {
            clickhouse: ClickHouse::start()?,
            kafka: Tansu::start()?,
            dir: tempfile::tempdir()?,
        })
    }

    fn engine(&self) -> Result<Engine> {
        self.engine_in(self.dir.path())
    }

    /// An engine node with its own data directory (so its own group membership).
    fn engine_in(&self, dir: &std::path::Path) -> Result<Engine> {
        let brokers = self.kafka.brokers();
        let url = self.clickhouse.url();
        Engine::start_with(
            dir,
            &[
                ("ENGINE_QUEUE__KIND", "kafka"),
                ("ENGINE_QUEUE__BROKERS", &brokers),
                ("ENGINE_QUEUE__PARTITIONS", "4"),
                ("ENGINE_STORE__KIND", "clickhouse"),
                ("ENGINE_STORE__URL", &url),
                ("ENGINE_STORE__DATABASE", "engine"),
                ("ENGINE_STORE__BATCH_INTERVAL", "200ms"),
                // Every acknowledged point is read back in one answer, as an operator
                // auditing a device would configure it.
                ("ENGINE_API__MAX_POINTS_PER_RESPONSE", "1000000"),
            ],
        )
    }

    /// The rows of the key `seq`, counted as a ClickHouse user would count a
    /// `ReplacingMergeTree` (`FINAL`: versions of one key collapsed).
    async fn distinct_points(&self) -> Result<u64> {
        let text = self
            .clickhouse
            .query("SELECT count() FROM engine.ts_kv FINAL WHERE key = 'seq'")
            .await?;
        text.trim().parse().context("a count")
    }
}

/// Acknowledged sequence numbers per device token.
type Acked = Arc<Mutex<BTreeMap<String, BTreeSet<i64>>>>;

/// When the devices of [`publish`] stop.
#[derive(Clone)]
enum Until {
    /// After this long.
    Elapsed(Duration),
    /// Once this is set.
    Stopped(Arc<AtomicBool>),
    /// When the engine is killed, which the test marks here first: a publish that fails after
    /// the mark ends that device's run.
    Killed(Arc<AtomicBool>),
}

/// Each device publishes `{"ts": BASE_TS + seq, "values": {"seq": seq}}` at QoS 1, one at a
/// time, until `until`, each publish waiting for its PUBACK. Connects every device first; the
/// returned tasks end with an error at the first publish that is not acknowledged (a refusal,
/// a disconnect, no answer within the client's 20 s) unless the engine was killed on purpose.
async fn publish(
    engine: &Engine,
    tokens: &[String],
    first_seq: i64,
    until: &Until,
    acked: &Acked,
) -> Result<Vec<JoinHandle<Result<()>>>> {
    let mut tasks = Vec::new();
    for token in tokens {
        let mut device = connect_v3(engine, token, token)
            .await
            .map_err(|code| anyhow::anyhow!("{token} refused: {code:?}"))?;
        let (token, acked, until) = (token.clone(), acked.clone(), until.clone());
        tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut seq = first_seq;
            loop {
                match &until {
                    Until::Elapsed(run) if started.elapsed() >= *run => return Ok(()),
                    Until::Stopped(stop) if stop.load(Ordering::SeqCst) => return Ok(()),
                    _ => {}
                }
                let payload = json!({"ts": BASE_TS + seq, "values": {"seq": seq}}).to_string();
                match device.publish(TELEMETRY, payload).await {
                    Ok(Outcome::Acked(0)) => {
                        acked
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .entry(token.clone())
                            .or_default()
                            .insert(seq);
                        seq += 1;
                    }
                    _ if matches!(&until, Until::Killed(k) if k.load(Ordering::SeqCst)) => {
                        return Ok(());
                    }
                    other => bail!("{token}: message {seq} got {other:?}, not a PUBACK"),
                }
            }
        }));
    }
    Ok(tasks)
}

/// Waits for the devices' runs to end; fails with the first device that failed.
async fn finish(tasks: Vec<JoinHandle<Result<()>>>) -> Result<()> {
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// [`publish`] for `run`, and wait for the end.
async fn publish_for(
    engine: &Engine,
    tokens: &[String],
    first_seq: i64,
    run: Duration,
    acked: &Acked,
) -> Result<()> {
    finish(publish(engine, tokens, first_seq, &Until::Elapsed(run), acked).await?).await
}

/// How many messages of `token` were acknowledged.
fn acked_of(acked: &Acked, token: &str) -> usize {
    acked
        .lock()
        .map(|a| a.get(token).map_or(0, BTreeSet::len))
        .unwrap_or(0)
}

/// Waits until each device had `more` messages acknowledged beyond `from` (its count in
/// `from`, 0 when missing). `timeout` only bounds a hang.
async fn more_acked(
    acked: &Acked,
    from: &BTreeMap<String, usize>,
    tokens: &[String],
    more: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for token in tokens {
        let want = from.get(token).copied().unwrap_or(0) + more;
        while acked_of(acked, token) < want {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{token} had {} messages acknowledged, not {want}, after {timeout:?}",
                acked_of(acked, token)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Acknowledged messages per device now.
fn acked_counts(acked: &Acked) -> BTreeMap<String, usize> {
    acked
        .lock()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.len())).collect())
        .unwrap_or_default()
}

async fn devices(rest: &Rest, count: usize, prefix: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for i in 0..count {
        let token = format!("{prefix}-{i}");
        let id = rest.create_device(&token, &token).await?;
        out.push((token, id));
    }
    Ok(out)
}

/// Every acknowledged point is stored, none twice: per device, REST's raw series holds every
/// acknowledged sequence number once, and REST's COUNT agrees with it; ClickHouse's distinct
/// count agrees with the total.
async fn check_stored_once(
    stack: &Stack,
    rest: &Rest,
    devices: &[(String, String)],
    acked: &Acked,
) -> Result<()> {
    let acked = acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert!(total > 0, "nothing was acknowledged");
    let mut stored_total = 0;
    for (token, id) in devices {
        let want = acked.get(token).cloned().unwrap_or_default();
        let range = format!(
            "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=seq&startTs={}&endTs={}&limit=1000000&useStrictDataTypes=true",
            BASE_TS,
            BASE_TS + 10_000_000
        );
        let series = rest
            .eventually(Duration::from_secs(240), || async {
                let v = rest.json(&range).await?;
                let got: Vec<i64> = v["seq"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["value"].as_i64()).collect())
                    .unwrap_or_default();
                let set: BTreeSet<i64> = got.iter().copied().collect();
                Ok(want.is_subset(&set).then_some(got))
            })
            .await
            .with_context(|| format!("{token}: acknowledged points missing"))?;
        let distinct: BTreeSet<i64> = series.iter().copied().collect();
        assert_eq!(distinct.len(), series.len(), "{token}: a point shows twice");
        let count = rest
            .json(&format!(
                "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys=seq&startTs={}&endTs={}&agg=COUNT&interval=0&useStrictDataTypes=true",
                BASE_TS,
                BASE_TS + 10_000_000
            ))
            .await?;
        assert_eq!(
            count["seq"][0]["value"].as_u64(),
            Some(series.len() as u64),
            "{token}: COUNT counts a replayed point twice: {count}"
        );
        stored_total += series.len();
    }
    assert!(stored_total >= total);
    assert_eq!(stack.distinct_points().await?, stored_total as u64);
    Ok(())
}

fn tokens(devices: &[(String, String)]) -> Vec<String> {
    devices.iter().map(|(t, _)| t.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_and_clickhouse_serve_the_device_and_rest_apis() -> Result<()> {
    let stack = Stack::start()?;
    let engine = stack.engine()?;
    let rest = engine.rest().await?;
    let id = rest.create_device("prod-1", "PROD1").await?;
    let mut device = connect_v3(&engine, "PROD1", "prod-1")
        .await
        .map_err(|code| anyhow::anyhow!("refused: {code:?}"))?;
    let payload =
        json!({"temperature": 42, "humidity": 55.5, "on": true, "name": "a", "cfg": {"x": 1}});
    assert_eq!(
        device.publish(TELEMETRY, payload.to_string()).await?,
        Outcome::Acked(0)
    );
    assert_eq!(
        device
            .publish("v1/devices/me/attributes", r#"{"fw":"1.2","n":3}"#)
            .await?,
        Outcome::Acked(0)
    );
    let latest = rest
        .eventually(Duration::from_secs(30), || async {
            let v = rest.latest(&id).await?;
            Ok((v.as_object().map_or(0, serde_json::Map::len) == 5).then_some(v))
        })
        .await?;
    assert_eq!(latest["temperature"][0]["value"], json!(42));
    assert_eq!(latest["humidity"][0]["value"], json!(55.5));
    assert_eq!(latest["on"][0]["value"], json!(true));
    assert_eq!(latest["name"][0]["value"], json!("a"));
    assert_eq!(latest["cfg"][0]["value"], json!(r#"{"x":1}"#));
    let attributes: Value = rest
        .eventually(Duration::from_secs(30), || async {
            let v = rest
                .json(&format!(
                    "/api/plugins/telemetry/DEVICE/{id}/values/attributes/CLIENT_SCOPE"
                ))
                .await?;
            Ok((v.as_array().map_or(0, Vec::len) == 2).then_some(v))
        })
        .await?;
    assert_eq!(attributes[0]["key"], "fw");
    assert_eq!(attributes[1]["value"], json!(3));
    let direct = stack
        .clickhouse
        .query("SELECT count() FROM engine.ts_kv")
        .await?;
    assert_eq!(direct.trim(), "5");
    let topics = engine.log();
    assert!(topics.contains("kafka topic created"), "{topics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_ingest_loses_nothing_acknowledged() -> Result<()> {
    let stack = Stack::start()?;
    let mut engine = stack.engine()?;
    let rest = engine.rest().await?;
    let devices = devices(&rest, 8, "kill").await?;
    let acked: Acked = Arc::default();

    // Kill once every device has had messages acknowledged, whatever the machine's speed, while
    // they go on publishing.
    let killed = Arc::new(AtomicBool::new(false));
    let publishing = publish(
        &engine,
        &tokens(&devices),
        0,
        &Until::Killed(killed.clone()),
        &acked,
    )
    .await?;
    more_acked(
        &acked,
        &BTreeMap::new(),
        &tokens(&devices),
        20,
        Duration::from_secs(120),
    )
    .await?;
    killed.store(true, Ordering::SeqCst);
    engine.kill()?;
    finish(publishing).await?;
    let before = acked
        .lock()
        .map(|a| a.values().map(BTreeSet::len).sum::<usize>())
        .unwrap_or(0);
    assert!(before > 0, "nothing acknowledged before the kill");

    let engine = stack.engine()?;
    let rest = engine.rest().await?;
    publish_for(
        &engine,
        &tokens(&devices),
        1_000_000,
        Duration::from_secs(2),
        &acked,
    )
    .await?;
    let checked = check_stored_once(&stack, &rest, &devices, &acked).await;
    if checked.is_err() {
        eprintln!("ENGINE LOG:\n{}", engine.log());
        eprintln!(
            "ACKED: {:?}",
            acked.lock().map(|a| a
                .iter()
                .map(|(k, v)| (
                    k.clone(),
                    v.len(),
                    v.iter().next().copied(),
                    v.iter().last().copied()
                ))
                .collect::<Vec<_>>())
        );
        eprintln!(
            "CH: {}",
            stack
                .clickhouse
                .query("SELECT key, count(), min(ts), max(ts) FROM engine.ts_kv GROUP BY key")
                .await?
        );
    }
    checked
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_outage_pauses_storage_and_it_catches_up() -> Result<()> {
    let mut stack = Stack::start()?;
    let engine = stack.engine()?;
    let rest = engine.rest().await?;
    let devices = devices(&rest, 8, "chdown").await?;
    let acked: Acked = Arc::default();
    publish_for(
        &engine,
        &tokens(&devices),
        0,
        Duration::from_secs(1),
        &acked,
    )
    .await?;

    stack.clickhouse.pause();
    // Kafka holds what storage cannot take: devices are still acknowledged, the lag grows.
    publish_for(
        &engine,
        &tokens(&devices),
        10_000,
        Duration::from_secs(6),
        &acked,
    )
    .await?;
    // The consumer's statistics come every 5 s.
    let metrics = rest
        .eventually(Duration::from_secs(15), || async {
            let metrics = reqwest::get(engine.url("/metrics")).await?.text().await?;
            let lag = metric(&metrics, "engine_queue_lag_messages");
            Ok(lag.is_some_and(|l| l > 0.0).then_some(metrics))
        })
        .await
        .context("the lag never showed the backlog")?;
    let errors = metric(&metrics, r#"engine_storage_errors_total{kind="retryable"}"#);
    assert!(
        errors.is_some_and(|e| e > 0.0),
        "failed writes are counted: {errors:?}"
    );
    let rss = engine.rss_kib()?;
    assert!(rss < 512 * 1024, "memory stays bounded: {rss} KiB");

    stack.clickhouse.resume()?;
    publish_for(
        &engine,
        &tokens(&devices),
        20_000,
        Duration::from_secs(1),
        &acked,
    )
    .await?;
    check_stored_once(&stack, &rest, &devices, &acked).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_outage_holds_acknowledgements_and_loses_nothing() -> Result<()> {
    let mut stack = Stack::start()?;
    let engine = stack.engine()?;
    let rest = engine.rest().await?;
    let devices = devices(&rest, 8, "kdown").await?;
    let acked: Acked = Arc::default();
    publish_for(
        &engine,
        &tokens(&devices),
        0,
        Duration::from_secs(1),
        &acked,
    )
    .await?;

    // The broker goes away while devices publish: their PUBACKs wait, nothing fails.
    let outage = async {
        stack.kafka.pause();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stack.kafka.resume()
    };
    let all = tokens(&devices);
    let (published, resumed) = tokio::join!(
        publish_for(&engine, &all, 10_000, Duration::from_secs(6), &acked),
        outage
    );
    published?;
    resumed?;
    publish_for(
        &engine,
        &tokens(&devices),
        20_000,
        Duration::from_secs(1),
        &acked,
    )
    .await?;
    let after = acked
        .lock()
        .map(|a| a.values().map(BTreeSet::len).sum::<usize>())
        .unwrap_or(0);
    if after == 0 {
        bail!("nothing acknowledged");
    }
    check_stored_once(&stack, &rest, &devices, &acked).await
}

/// The value of one series of a Prometheus exposition (`name` or `name{labels}` exactly).
fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok())?
    })
}

/// A device that publishes far faster than Kafka takes records: its socket stops being read
/// (unread bytes pile up in the kernel, TCP pushes back), the engine's memory stays bounded,
/// and the other devices keep being acknowledged and stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_device_is_slowed_and_others_keep_flowing() -> Result<()> {
    let stack = Stack::start()?;
    let engine = stack.engine()?;
    let rest = engine.rest().await?;
    let normal = devices(&rest, 3, "calm").await?;
    rest.create_device("flood", "FLOOD").await?;
    let flooder = connect_v3(&engine, "FLOOD", "flood")
        .await
        .map_err(|code| anyhow::anyhow!("refused: {code:?}"))?;
    // The flood goes on until the test has seen what it checks: the flooder's socket left
    // unread, and after that the calm devices acknowledged while the flood goes on.
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn({
        let stop = stop.clone();
        async move {
            // Small messages: enough to fill its window and leave bytes unread, not so many that
            // the broker's SQLite log takes minutes to read back.
            let filler = "x".repeat(500);
            let mut seq = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let payload = json!({"ts": BASE_TS + seq, "values": {"flood": seq, "pad": filler}});
                // Returns once the client could queue it; the client's queue is bounded, so this
                // waits when the socket does (and looks at `stop` again every second).
                if tokio::time::timeout(
                    Duration::from_secs(1),
                    flooder.send(TELEMETRY, payload.to_string()),
                )
                .await
                .is_err()
                {
                    continue;
                }
                seq += 1;
            }
            flooder
        }
    });

    let acked: Acked = Arc::default();
    let calm = tokens(&normal);
    let publishing = publish(&engine, &calm, 0, &Until::Stopped(stop.clone()), &acked).await?;
    let port = engine.mqtt.port();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let backlog = loop {
        let unread = unread_bytes(port)?;
        if unread > 0 {
            break unread;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the flooder's socket was never left unread"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("{backlog} bytes left unread in the flooder's socket");
    let seen = acked_counts(&acked);
    more_acked(&acked, &seen, &calm, 5, Duration::from_secs(120))
        .await
        .context("the calm devices were not acknowledged during the flood")?;
    stop.store(true, Ordering::SeqCst);
    finish(publishing).await?;
    let rss = engine.rss_kib()?;
    assert!(rss < 512 * 1024, "memory stays bounded: {rss} KiB");
    let _flooder = flooding.await?;
    let checked = check_stored_once(&stack, &rest, &normal, &acked).await;
    if checked.is_err() {
        eprintln!("ENGINE LOG:\n{}", engine.log());
    }
    checked
}

/// The most bytes waiting unread in any of the engine's sockets on `port` (ss's Recv-Q).
fn unread_bytes(port: u16) -> Result<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .context("running ss (Debian's iproute2)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0))
}

/// Start-up fails with a clear message, not a hang, when no broker answers.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_brokers_are_a_clear_start_up_error() -> Result<()> {
    let clickhouse = ClickHouse::start()?;
    let dir = tempfile::tempdir()?;
    let nobody = format!("127.0.0.1:{}", tests::servers::free_port()?);
    let url = clickhouse.url();
    let started = Engine::start_with(
        dir.path(),
        &[
            ("ENGINE_QUEUE__KIND", "kafka"),
            ("ENGINE_QUEUE__BROKERS", &nobody),
            ("ENGINE_QUEUE__CONNECT_TIMEOUT", "2s"),
            ("ENGINE_STORE__KIND", "clickhouse"),
            ("ENGINE_STORE__URL", &url),
        ],
    );
    let Err(error) = started else {
        bail!("the engine started without a broker");
    };
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("cannot reach the Kafka brokers at {nobody}")),
        "{text}"
    );
    Ok(())
}

/// A second node joins the consumer group while devices publish: the first gives up some
/// partitions (storing and committing what it read of them first), the second takes them
/// from the committed offsets, and every acknowledged point is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_node_takes_over_partitions_cleanly() -> Result<()> {
    let stack = Stack::start()?;
    let first = stack.engine()?;
    let rest = first.rest().await?;
    let devices = devices(&rest, 8, "pair").await?;
    let all = tokens(&devices);
    let (to_first, to_second) = all.split_at(4);
    let acked: Acked = Arc::default();
    // The first node owns every partition before the second arrives.
    first
        .wait_for_sample(PARTITIONS, Duration::from_secs(60), |n| n == 4.0)
        .await
        .context("the first node never got the partitions")?;
    publish_for(&first, &all, 0, Duration::from_secs(2), &acked).await?;

    let second_dir = tempfile::tempdir()?;
    let second = stack.engine_in(second_dir.path())?;
    let (a, b) = tokio::join!(
        publish_for(&first, to_first, 10_000, Duration::from_secs(6), &acked),
        publish_for(&second, to_second, 10_000, Duration::from_secs(6), &acked)
    );
    a?;
    b?;
    check_stored_once(&stack, &rest, &devices, &acked).await?;
    // The partitions are shared out: the second node reads some, the first gave them up.
    let second_has = second
        .wait_for_sample(PARTITIONS, Duration::from_secs(60), |n| n > 0.0)
        .await
        .context("the second node got no partitions")?;
    first
        .wait_for_sample(PARTITIONS, Duration::from_secs(60), |n| {
            n + second_has == 4.0
        })
        .await
        .context("the first node did not give up what the second took")?;
    let revoked = first
        .sample(r#"engine_queue_rebalances_total{kind="revoke"}"#)
        .await?;
    assert!(
        revoked.is_some_and(|n| n >= 1.0),
        "the first node gave some partitions up: {revoked:?}"
    );
    Ok(())
}

/// Two nodes sharing only Kafka and ClickHouse: REST calls made on the first reach devices
/// connected to the second (MQTT, and an HTTP long poll), whichever node owns each device's
/// partition, and the devices' replies reach the REST callers on the first.
/// Two engine nodes on the stack, the queue's partitions shared out between them; the first
/// node's REST API.
async fn two_nodes(stack: &Stack, second_dir: &std::path::Path) -> Result<(Engine, Engine, Rest)> {
    let first = stack.engine()?;
    let rest = first.rest().await?;
    first
        .wait_for_sample(PARTITIONS, Duration::from_secs(60), |n| n == 4.0)
        .await
        .context("the first node never got the partitions")?;
    let second = stack.engine_in(second_dir)?;
    let second_has = second
        .wait_for_sample(PARTITIONS, Duration::from_secs(60), |n| n > 0.0)
        .await
        .context("the second node got no partitions")?;
    first
        .wait_for_sample(PARTITIONS, Duration::from_secs(60), |n| {
            n + second_has == 4.0
        })
        .await
        .context("the partitions were not shared out")?;
    Ok((first, second, rest))
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_and_shared_attributes_cross_nodes() -> Result<()> {
    use rumqttc::QoS;
    const WAIT: Duration = Duration::from_secs(30);
    let stack = Stack::start()?;
    let second_dir = tempfile::tempdir()?;
    let (_first, second, rest) = two_nodes(&stack, second_dir.path()).await?;

    // Eight devices, so both nodes own some; all connect to the second node.
    let devices = devices(&rest, 8, "cross").await?;
    let mut connected = Vec::new();
    for (token, id) in &devices {
        let mut device = connect_v3(&second, token, token)
            .await
            .map_err(|c| anyhow::anyhow!("connect {token}: {c:?}"))?;
        assert_eq!(
            device
                .subscribe("v1/devices/me/attributes", QoS::AtLeastOnce)
                .await?,
            [1]
        );
        assert_eq!(
            device
                .subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce)
                .await?,
            [1]
        );
        connected.push((id.clone(), device));
    }
    for (id, device) in &mut connected {
        // Two-way RPC through the first node's REST API.
        let call = {
            let request = rest
                .post(&format!("/api/rpc/twoway/{id}"))
                .json(&json!({"method": "where", "params": {"id": id}, "timeout": 20000}))
                .send();
            tokio::spawn(async move {
                let response = request.await?;
                anyhow::Ok((response.status().as_u16(), response.text().await?))
            })
        };
        let (topic, body) = device.next_publish(WAIT).await?.context("no RPC came")?;
        let body: Value = serde_json::from_slice(&body)?;
        assert_eq!(body, json!({"method": "where", "params": {"id": id}}));
        let n = topic.rsplit('/').next().context("an id")?.to_owned();
        device
            .publish(
                &format!("v1/devices/me/rpc/response/{n}"),
                r#"{"node":"second"}"#,
            )
            .await?;
        let (status, text) = call.await??;
        assert_eq!(
            (status, text.as_str()),
            (200, r#"{"node":"second"}"#),
            "{id}"
        );
        // A shared attribute change and a deletion made on the first node.
        let shared = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE");
        let r = rest.post(&shared).json(&json!({"cfg": 3})).send().await?;
        assert_eq!(r.status(), 200);
        let (_, body) = device.next_publish(WAIT).await?.context("no update came")?;
        assert_eq!(serde_json::from_slice::<Value>(&body)?, json!({"cfg": 3}));
        let r = rest
            .delete(&format!(
                "/api/plugins/telemetry/DEVICE/{id}/SHARED_SCOPE?keys=cfg"
            ))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let (_, body) = device
            .next_publish(WAIT)
            .await?
            .context("no deletion came")?;
        assert_eq!(
            serde_json::from_slice::<Value>(&body)?,
            json!({"deleted": ["cfg"]})
        );
    }

    // A persistent RPC made on the first node, answered on the second, its record kept by the
    // device's owner wherever that is.
    let (id, device) = &mut connected[0];
    let response = rest
        .post(&format!("/api/rpc/twoway/{id}"))
        .json(&json!({"method": "stored", "params": {}, "persistent": true, "timeout": 60000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let rpc_id = response.json::<Value>().await?["rpcId"]
        .as_str()
        .context("rpcId")?
        .to_owned();
    let (topic, _) = device
        .next_publish(WAIT)
        .await?
        .context("no stored RPC came")?;
    // The device's PUBACK, on the second node, reaches the record's keeper.
    rest.eventually(WAIT, || async {
        let record = rest.json(&format!("/api/rpc/persistent/{rpc_id}")).await?;
        Ok((record["status"] == "DELIVERED").then_some(()))
    })
    .await
    .context("the stored RPC never became DELIVERED")?;
    let n = topic.rsplit('/').next().context("an id")?.to_owned();
    device
        .publish(
            &format!("v1/devices/me/rpc/response/{n}"),
            r#"{"stored":true}"#,
        )
        .await?;
    let record = rest
        .eventually(WAIT, || async {
            let record = rest.json(&format!("/api/rpc/persistent/{rpc_id}")).await?;
            Ok((record["status"] == "SUCCESSFUL").then_some(record))
        })
        .await?;
    assert_eq!(record["response"], json!({"stored": true}));

    // An HTTP device long-polling on the second node gets a request made on the first.
    let (token, id) = &devices[7];
    drop(connected);
    let poll = {
        let url = second.url(&format!("/api/v1/{token}/rpc?timeout=20000"));
        tokio::spawn(async move {
            let response = reqwest::get(url).await?;
            anyhow::Ok((response.status().as_u16(), response.text().await?))
        })
    };
    let response = rest
        .post(&format!("/api/plugins/rpc/oneway/{id}"))
        .json(&json!({"method": "poke", "params": null, "timeout": 15000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let (status, body) = poll.await??;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!(
        (body["method"].clone(), body["params"].clone()),
        (json!("poke"), Value::Null)
    );

    // ThingsBoard's own Python SDK on the second node, driven through the first.
    let (token, id) = &devices[6];
    let port = second.mqtt.port().to_string();
    let mut script = tests::SdkScript::start("device_downlinks.py", &["127.0.0.1", &port, token])?;
    let ready = tokio::task::block_in_place(|| script.next(Duration::from_secs(60)))?;
    assert_eq!(ready, Some(json!("ready")));
    let response = rest
        .post(&format!("/api/rpc/twoway/{id}"))
        .json(&json!({"method": "sdk", "params": {"across": true}, "timeout": 20000}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await?,
        json!({"echo": {"across": true}})
    );
    let shared = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE");
    let mut updated = false;
    for _ in 0..40 {
        let r = rest.post(&shared).json(&json!({"sdk": 1})).send().await?;
        assert_eq!(r.status(), 200);
        while let Some(event) =
            tokio::task::block_in_place(|| script.next(Duration::from_millis(500)))?
        {
            updated |= event["attributes"] == json!({"sdk": 1});
        }
        if updated {
            break;
        }
    }
    assert!(updated, "the SDK never got the update");
    Ok(())
}

/// ThingsBoard's gateway client on the second node, its devices' state kept by whichever node
/// owns their partitions: devices made in ClickHouse by the gateway, their telemetry stored,
/// RPC and shared attributes from the first node's REST API reaching them and answered.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_devices_across_nodes() -> Result<()> {
    let stack = Stack::start()?;
    let second_dir = tempfile::tempdir()?;
    let (_first, second, rest) = two_nodes(&stack, second_dir.path()).await?;
    let r = rest
        .post("/api/device?accessToken=GW_PROD")
        .json(&json!({"name": "gw-prod", "additionalInfo": {"gateway": true}}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let port = second.mqtt.port().to_string();
    let mut gw = tests::SdkScript::start("gateway_client.py", &["127.0.0.1", &port, "GW_PROD"])?;
    let ask = |gw: &mut tests::SdkScript, command: Value, key: &str| {
        tokio::task::block_in_place(|| gw.ask(&command, key))
    };
    // Six devices, so both nodes own some.
    for n in 0..6 {
        let name = format!("behind-{n}");
        let rc = ask(&mut gw, json!({"connect": name, "type": "sensor"}), "rc")?;
        assert_eq!(rc["rc"], 0);
        let rc = ask(
            &mut gw,
            json!({"telemetry": name, "values": {"n": n}}),
            "rc",
        )?;
        assert_eq!(rc["rc"], 0);
    }
    for n in 0..6 {
        let name = format!("behind-{n}");
        let found = rest
            .eventually(Duration::from_secs(30), || async {
                let r = rest
                    .get(&format!("/api/tenant/devices?deviceName={name}"))
                    .send()
                    .await?;
                Ok(if r.status() == 200 {
                    Some(r.json::<Value>().await?)
                } else {
                    None
                })
            })
            .await
            .with_context(|| format!("{name} was never made"))?;
        assert_eq!(found["type"], "sensor");
        let id = found["id"]["id"].as_str().context("id")?.to_owned();
        rest.eventually(Duration::from_secs(30), || async {
            let latest = rest.latest(&id).await?;
            Ok((latest["n"][0]["value"] == n).then_some(()))
        })
        .await
        .with_context(|| format!("{name}'s telemetry was never stored"))?;
        // Two-way RPC through the first node, answered by the gateway on the second.
        let call = tokio::spawn(
            rest.post(&format!("/api/rpc/twoway/{id}"))
                .json(&json!({"method": "where", "params": {"n": n}, "timeout": 20000}))
                .send(),
        );
        let response = call.await??;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.json::<Value>().await?, json!({"echo": {"n": n}}));
        // A shared attribute set through the first node reaches the gateway.
        let shared = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE");
        let r = rest.post(&shared).json(&json!({"slot": n})).send().await?;
        assert_eq!(r.status(), 200);
        let update = tokio::task::block_in_place(|| -> Result<Value> {
            loop {
                match gw.next(Duration::from_secs(30))? {
                    Some(e) if e.get("attributes").is_some() => return Ok(e["attributes"].clone()),
                    Some(_) => {}
                    None => anyhow::bail!("no update for {name}"),
                }
            }
        })?;
        assert_eq!(update, json!({"device": name, "data": {"slot": n}}));
    }
    Ok(())
}

/// Live data across nodes: WebSocket clients on the second node watch devices whose
/// partitions either node owns; telemetry sent to the first node, and attribute deletions made
/// through the first node's REST API, reach them in ThingsBoard's shapes.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_updates_cross_nodes() -> Result<()> {
    use tests::ws::WsClient;
    const WAIT: Duration = Duration::from_secs(30);
    let stack = Stack::start()?;
    let second_dir = tempfile::tempdir()?;
    let (first, second, rest) = two_nodes(&stack, second_dir.path()).await?;
    // Eight devices, so both nodes own some.
    let devices = devices(&rest, 8, "live").await?;
    // Each node signs its own tokens here (no shared auth.jwt_secret): log in on the second.
    let second_rest = second.rest().await?;
    let mut ws = WsClient::legacy(&second, &second_rest.token).await?;
    for (i, (_, id)) in devices.iter().enumerate() {
        let cmd = i32::try_from(i)? + 1;
        ws.send(&json!({
            "tsSubCmds": [{"cmdId": cmd, "entityType": "DEVICE", "entityId": id, "keys": "n"}],
            "attrSubCmds": [{"cmdId": cmd + 100, "entityType": "DEVICE", "entityId": id, "scope": "SERVER_SCOPE"}]
        }))
        .await?;
        for _ in 0..2 {
            let snapshot = ws.expect(WAIT).await?;
            assert_eq!(snapshot["errorCode"], 0, "{snapshot}");
        }
    }
    // The owners learn of the second node's watch through the queue: wait until a first
    // update arrives, then every later one must.
    let http = reqwest::Client::new();
    let post = |token: &str, n: i64| {
        http.post(first.url(&format!("/api/v1/{token}/telemetry")))
            .json(&json!({"ts": BASE_TS + n, "values": {"n": n}}))
            .send()
    };
    let mut seen: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for round in 1..=3i64 {
        for (token, _) in &devices {
            let r = post(token, round).await?;
            anyhow::ensure!(r.status().is_success(), "post: {}", r.status());
        }
        loop {
            let done = seen.get(&round).map_or(0, BTreeSet::len) == devices.len();
            if done {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "round {round}: updates from {:?} of 8 subscriptions",
                    seen.get(&round)
                );
            }
            let Some(m) = ws.next(Duration::from_secs(2)).await? else {
                if round == 1 {
                    // Not yet watched on every owner: send the first round again.
                    for (token, _) in &devices {
                        post(token, round).await?;
                    }
                }
                continue;
            };
            let id = m["subscriptionId"].as_i64().context("id")?;
            for point in m["data"]["n"].as_array().into_iter().flatten() {
                let value: i64 = point[1].as_str().context("string")?.parse()?;
                assert_eq!(point[0].as_i64(), Some(BASE_TS + value), "{m}");
                seen.entry(value).or_default().insert(id);
            }
        }
    }
    // Server attributes written and deleted through the first node.
    for (i, (_, id)) in devices.iter().enumerate() {
        let path = format!("/api/plugins/telemetry/DEVICE/{id}/attributes/SERVER_SCOPE");
        let r = rest.post(&path).json(&json!({"floor": i})).send().await?;
        anyhow::ensure!(r.status().is_success());
        let r = rest
            .delete(&format!(
                "/api/plugins/telemetry/DEVICE/{id}/SERVER_SCOPE?keys=floor"
            ))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success());
    }
    let mut written = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    while written.len() < devices.len() || deleted.len() < devices.len() {
        let m = ws.expect(WAIT).await.with_context(|| {
            format!(
                "attribute updates: {} written, {} deleted",
                written.len(),
                deleted.len()
            )
        })?;
        let id = m["subscriptionId"].as_i64().context("id")?;
        if id <= 100 {
            continue;
        }
        let point = &m["data"]["floor"][0];
        if point == &json!([0, ""]) {
            deleted.insert(id);
        } else {
            assert_eq!(point[1], json!((id - 101).to_string()), "{m}");
            written.insert(id);
        }
    }
    Ok(())
}

/// Customers, users and assignments made on one node reach the other (each reads the shared
/// directory table again every `directory.reload_interval`): a user activated on the first
/// logs in on the second and sees its device there; a device taken back on the first is
/// refused on the second; a deleted customer's user can no longer log in anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn customers_and_users_cross_nodes() -> Result<()> {
    use crate::apps::{assign, create_customer, customer_user};
    let stack = Stack::start()?;
    let second_dir = tempfile::tempdir()?;
    let (first, second, rest) = two_nodes(&stack, second_dir.path()).await?;
    let customer = create_customer(&rest, "Cross").await?;
    let device = rest
        .create_device("cross-device", "cross-device-token")
        .await?;
    assign(&rest, &customer, &device).await?;
    let (_, _) = customer_user(&first, &rest, &customer, "cross@x.test", "cross-pass").await?;
    // Wait until the second node has read the directory again (a login tried before would
    // count as a failed one, and enough of those lock the user out).
    let second_admin = second.rest().await?;
    second_admin
        .eventually(Duration::from_secs(60), || async {
            let status = second_admin
                .get(&format!(
                    "/api/customer/{customer}/users?pageSize=10&page=0"
                ))
                .send()
                .await?;
            let page: serde_json::Value = status.json().await?;
            Ok((page["totalElements"] == 1).then_some(()))
        })
        .await
        .context("the second node never read the new customer and user")?;
    let user = second.login("cross@x.test", "cross-pass").await?;
    let seen = user.json(&format!("/api/device/{device}")).await?;
    assert_eq!(seen["customerId"]["id"], customer.as_str());
    let resp = rest
        .delete(&format!("/api/customer/device/{device}"))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "unassign: {}", resp.status());
    rest.eventually(Duration::from_secs(60), || async {
        let status = user
            .get(&format!("/api/device/{device}"))
            .send()
            .await?
            .status();
        Ok((status == reqwest::StatusCode::FORBIDDEN).then_some(()))
    })
    .await
    .context("the second node still shows the device taken back")?;
    let resp = rest
        .delete(&format!("/api/customer/{customer}"))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "delete customer: {}",
        resp.status()
    );
    rest.eventually(Duration::from_secs(60), || async {
        let status = user.get("/api/auth/user").send().await?.status();
        Ok((status == reqwest::StatusCode::UNAUTHORIZED).then_some(()))
    })
    .await
    .context("the deleted customer's user is still signed in on the second node")?;
    assert!(second.login("cross@x.test", "cross-pass").await.is_err());
    Ok(())
}
