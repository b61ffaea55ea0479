//! The Grafana dashboards against a real Prometheus (Debian's `prometheus`) scraping a running
//! engine under load from `loadgen`: every PromQL expression of every dashboard must evaluate
//! without error, return series, and name only metrics the engine exports; and the counters of
//! accepted messages and the acknowledgement-latency histogram must have moved by at least what
//! the load generator had acknowledged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tests::{Engine, loadgen_binary};

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_prometheus(dir: &Path, target: &str) -> Result<Prometheus> {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: engine\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )?;
    let port = free_port()?;
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "prometheus is not installed (Debian package prometheus); tests/run.sh installs it",
        )?;
    let prom = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/-/ready", prom.url)).await
            && r.status().is_success()
        {
            return Ok(prom);
        }
        if Instant::now() > deadline {
            bail!("prometheus did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dashboards() -> Result<Vec<(String, Value)>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            out.push((
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                json,
            ));
        }
    }
    let mut names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    ensure!(
        names == ["integrations.json", "overview.json", "transport.json"],
        "expected the overview, per-transport and integrations dashboards, found {names:?}"
    );
    Ok(out)
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Grafana's variables as a user would pick them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$transport", "mqtt")
        .replace("$integration", ".*")
}

/// The value of one series of a Prometheus exposition (`name{labels}` exactly as written).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok())?
    })
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("engine_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_series() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(&dir.path().join("engine"))?;
    let prom = start_prometheus(dir.path(), &engine.http.to_string()).await?;

    // Load for a few seconds while Prometheus scrapes every second: MQTT devices, and devices
    // sending to a CoAP integration (created by loadgen) so the integration panels have series.
    // Each run writes its report, whose acknowledged count the counters are checked against.
    let http = engine.url("");
    let target = engine.mqtt.to_string();
    let (coap_http, coap_target) = (http.clone(), engine.coap.to_string());
    let (mqtt_report, coap_report) = (dir.path().join("mqtt.json"), dir.path().join("coap.json"));
    let coap_json = coap_report.to_string_lossy().into_owned();
    let coap = tokio::task::spawn_blocking(move || {
        Command::new(loadgen_binary())
            .args([
                "coap",
                "--target",
                &coap_target,
                "--devices",
                "5",
                "--token-prefix",
                "coap-",
                "--provision",
                &coap_http,
                "--rate",
                "200",
                "--duration",
                "6s",
                "--quiet",
                "--json",
                &coap_json,
            ])
            .output()
    });
    let mqtt_json = mqtt_report.to_string_lossy().into_owned();
    let load = tokio::task::spawn_blocking(move || {
        Command::new(loadgen_binary())
            .args([
                "mqtt",
                "--target",
                &target,
                "--devices",
                "10",
                "--provision",
                &http,
                "--rate",
                "500",
                "--duration",
                "6s",
                "--quiet",
                "--json",
                &mqtt_json,
            ])
            .output()
    });
    for out in [load.await??, coap.await??] {
        ensure!(
            out.status.success(),
            "loadgen failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A bad payload over HTTP, so rejections are not only zeroes.
    let bad = reqwest::Client::new()
        .post(engine.url("/api/v1/loadgen-0/telemetry"))
        .body("{oops")
        .send()
        .await?;
    ensure!(bad.status().as_u16() == 400);

    // Every acknowledged message moved the accepted counter and the acknowledgement-latency
    // histogram of its transport: an acknowledgement that did not wait for the queue, or a
    // counter that does not count, is caught here.
    let exposition = reqwest::get(engine.url("/metrics")).await?.text().await?;
    for (transport, report) in [("mqtt", &mqtt_report), ("coap", &coap_report)] {
        let report: Value = serde_json::from_str(&std::fs::read_to_string(report)?)?;
        let acked = report["acked"]
            .as_f64()
            .context("acked in the loadgen report")?;
        ensure!(
            acked > 0.0,
            "loadgen got nothing acknowledged over {transport}"
        );
        let label = format!("{{transport=\"{transport}\"}}");
        for series in [
            format!("engine_messages_accepted_total{label}"),
            format!("engine_ack_latency_seconds_count{label}"),
        ] {
            let value =
                sample(&exposition, &series).with_context(|| format!("{series} not exported"))?;
            ensure!(
                value >= acked,
                "{series} is {value}, but loadgen had {acked} messages acknowledged"
            );
        }
    }
    let rejected = exposition
        .lines()
        .filter(|l| {
            l.starts_with("engine_messages_rejected_total{") && l.contains("transport=\"http\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    ensure!(rejected >= 1.0, "the bad payload is counted as rejected");
    // Prometheus has scraped all of it: the same counters, as the panels read them.
    let client = reqwest::Client::new();
    let scraped = |query: String| {
        let (client, url) = (client.clone(), prom.url.clone());
        async move {
            let resp: Value = client
                .get(format!("{url}/api/v1/query"))
                .query(&[("query", query.as_str())])
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(
                resp["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok()),
            )
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for series in [
        "engine_messages_accepted_total{transport=\"mqtt\"}",
        "engine_messages_accepted_total{transport=\"coap\"}",
        "sum(engine_messages_rejected_total{transport=\"http\"})",
    ] {
        let want = if series.starts_with("sum(") {
            1.0
        } else {
            sample(&exposition, series).unwrap_or(f64::MAX)
        };
        loop {
            if scraped(series.to_owned()).await?.is_some_and(|v| v >= want) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "Prometheus never scraped {series} at {want}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let exposition = reqwest::get(engine.url("/metrics")).await?.text().await?;
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();

    let mut failures = Vec::new();
    let mut checked = 0;
    let series_deadline = Instant::now() + Duration::from_secs(60);
    for (file, dashboard) in dashboards()? {
        let mut list = Vec::new();
        exprs(&dashboard["panels"], &mut list);
        ensure!(!list.is_empty(), "{file} has no queries");
        for expr in list {
            checked += 1;
            for name in metric_names(&expr) {
                if !exported.contains(&name) {
                    failures.push(format!(
                        "{file}: {expr}\n  names {name}, which the engine does not export"
                    ));
                }
            }
            let query = substitute(&expr);
            // A series can need another scrape or two (a rate needs two samples of a counter
            // that appeared at the end of the load): asked again until the shared deadline.
            loop {
                let resp: Value = reqwest::Client::new()
                    .get(format!("{}/api/v1/query", prom.url))
                    .query(&[("query", query.as_str())])
                    .send()
                    .await?
                    .json()
                    .await?;
                if resp["status"] != "success" {
                    failures.push(format!("{file}: {query}\n  error: {}", resp["error"]));
                } else if resp["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                    if Instant::now() < series_deadline {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    failures.push(format!("{file}: {query}\n  returned no series"));
                }
                break;
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {checked} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn provisioning_points_at_the_dashboards_and_the_datasource_they_use() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana/provisioning");
    let datasource = std::fs::read_to_string(root.join("datasources/prometheus.yaml"))?;
    ensure!(
        datasource.contains("uid: prometheus"),
        "the dashboards use datasource uid \"prometheus\""
    );
    let provider = std::fs::read_to_string(root.join("dashboards/engine.yaml"))?;
    ensure!(provider.contains("type: file") && provider.contains("GRAFANA_DASHBOARDS_DIR"));
    for (file, dashboard) in dashboards()? {
        ensure!(dashboard["uid"].is_string(), "{file} needs a stable uid");
        let text = dashboard.to_string();
        ensure!(
            !text.contains("\"uid\":\"${"),
            "{file} must not use an unresolved datasource input"
        );
    }
    Ok(())
}
