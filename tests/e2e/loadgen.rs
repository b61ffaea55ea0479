//! The load generator against the real engine: devices provisioned over REST, a few seconds of
//! load, and `--verify` confirming every acknowledged data point is stored.

use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use tests::{Engine, loadgen_binary};

fn loadgen(args: &[&str]) -> Result<(bool, String, Value)> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("report.json");
    let out = Command::new(loadgen_binary())
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .output()
        .context("running loadgen")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Ok((out.status.success(), text, report))
}

fn check_verified(ok: bool, text: &str, report: &Value) {
    assert!(ok, "loadgen failed:\n{text}");
    let acked = report["acked"].as_u64().unwrap_or(0);
    assert!(acked > 0, "nothing acknowledged:\n{text}");
    assert_eq!(report["verify"]["missing_devices"], 0, "{text}");
    assert_eq!(report["verify"]["expected"].as_u64(), Some(acked), "{text}");
    assert!(report["verify"]["stored"].as_u64() >= Some(acked), "{text}");
    assert!(
        report["latency_ms"]["p99"]
            .as_f64()
            .is_some_and(|p| p > 0.0),
        "{text}"
    );
    assert!(
        text.contains("verify"),
        "the report shows the verification:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_load_is_stored_in_full() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let http = engine.url("");
    let target = engine.mqtt.to_string();
    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--devices",
        "20",
        "--provision",
        &http,
        "--verify",
        &http,
        "--duration",
        "2s",
        "--source-addrs",
        "2",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["connections_ok"], 20, "{text}");

    // Open loop: a set rate and a set number of messages.
    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--devices",
        "10",
        "--provision",
        &http,
        "--verify",
        &http,
        "--rate",
        "500",
        "--messages",
        "600",
        "--profile",
        "industrial-plc",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["acked"], 600, "{text}");
    assert!(
        report["schedule_lag_ms"]["count"].as_u64() == Some(600),
        "{text}"
    );
    Ok(())
}

/// Gateway mode: gateways made over REST, their devices made by the engine as the gateways
/// connect them, telemetry batched per publish, every device's points verified; open loop too.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_load_is_stored_in_full() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let http = engine.url("");
    let target = engine.mqtt.to_string();
    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--gateways",
        "3",
        "--devices-per-gateway",
        "40",
        "--batch-devices",
        "15",
        "--provision",
        &http,
        "--verify",
        &http,
        "--duration",
        "2s",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["connections_ok"], 120, "{text}");
    assert_eq!(report["verify"]["devices"], 120, "{text}");
    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--gateways",
        "2",
        "--devices-per-gateway",
        "10",
        "--batch-devices",
        "4",
        "--token-prefix",
        "open-",
        "--provision",
        &http,
        "--verify",
        &http,
        "--rate",
        "400",
        "--messages",
        "800",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["acked"], 800, "{text}");
    Ok(())
}

/// `--processes`: the devices spread over worker processes, one merged report, every device's
/// acknowledged points verified; and QoS 0, whose messages count once a PINGRESP shows the
/// server read them.
#[tokio::test(flavor = "multi_thread")]
async fn mqtt_load_over_several_processes_and_qos0_is_stored_in_full() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let http = engine.url("");
    let target = engine.mqtt.to_string();
    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--devices",
        "30",
        "--processes",
        "3",
        "--provision",
        &http,
        "--verify",
        &http,
        "--messages",
        "3001",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["connections_ok"], 30, "{text}");
    assert_eq!(report["acked"], 3001, "{text}");
    assert_eq!(report["verify"]["devices"], 30, "{text}");
    assert_eq!(
        report["latency_ms"]["count"], 3001,
        "every worker's latencies are merged:\n{text}"
    );

    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--devices",
        "10",
        "--qos",
        "0",
        "--provision",
        &http,
        "--verify",
        &http,
        "--messages",
        "2000",
    ])?;
    assert!(ok, "loadgen failed:\n{text}");
    assert_eq!(report["acked"], 2000, "{text}");
    assert_eq!(report["verify"]["missing_devices"], 0, "{text}");
    assert_eq!(report["verify"]["stored"], 2000, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_load_is_stored_in_full() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let http = engine.url("");
    let (ok, text, report) = loadgen(&[
        "http",
        "--url",
        &http,
        "--devices",
        "8",
        "--concurrency",
        "8",
        "--provision",
        &http,
        "--verify",
        &http,
        "--messages",
        "400",
        "--profile",
        "smart-tracker",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["acked"], 400, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_reported_as_refused_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let target = engine.mqtt.to_string();
    // No --provision: the tokens do not exist.
    let (ok, text, report) = loadgen(&[
        "mqtt",
        "--target",
        &target,
        "--devices",
        "3",
        "--messages",
        "3",
        "--token-prefix",
        "nobody-",
    ])?;
    assert!(!ok, "a run where no device could connect fails:\n{text}");
    assert_eq!(report["connections_failed"], 3, "{text}");
    assert!(text.contains("unknown access token (0x05)"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn coap_load_is_stored_in_full() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let http = engine.url("");
    let target = engine.coap.to_string();
    // Confirmable requests; --provision creates the converter and the integration.
    let (ok, text, report) = loadgen(&[
        "coap",
        "--target",
        &target,
        "--devices",
        "20",
        "--concurrency",
        "8",
        "--provision",
        &http,
        "--verify",
        &http,
        "--messages",
        "600",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["acked"], 600, "{text}");
    let key = text
        .split("routing key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no routing key printed:\n{text}"))?
        .to_owned();

    // Non-confirmable requests to the same integration, at a set rate; the integration is
    // found again by name rather than created twice.
    let (ok, text, report) = loadgen(&[
        "coap",
        "--target",
        &target,
        "--devices",
        "20",
        "--provision",
        &http,
        "--verify",
        &http,
        "--non",
        "--rate",
        "300",
        "--messages",
        "300",
        "--profile",
        "industrial-plc",
    ])?;
    check_verified(ok, &text, &report);
    assert_eq!(report["acked"], 300, "{text}");
    assert!(
        text.contains(&key),
        "the same integration is reused:\n{text}"
    );

    // An unknown routing key: every request is refused with 4.04 and the run fails.
    let (ok, text, report) = loadgen(&[
        "coap",
        "--target",
        &target,
        "--routing-key",
        "no-such-key",
        "--devices",
        "2",
        "--messages",
        "4",
    ])?;
    assert!(!ok, "a run where every request is refused fails:\n{text}");
    assert_eq!(report["failures"]["CoAP 4.04"], 4, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn downlink_load_round_trips_rpc_and_fans_out_attributes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start(dir.path())?;
    let rest = engine.url("");
    let target = engine.mqtt.to_string();
    let (ok, text, report) = loadgen(&[
        "downlink",
        "--target",
        &target,
        "--rest",
        &rest,
        "--devices",
        "20",
        "--concurrency",
        "8",
        "--duration",
        "2s",
        "--rounds",
        "3",
    ])?;
    assert!(ok, "loadgen failed:\n{text}");
    // Every call was answered with its own params, and every update reached its device.
    assert!(report["rpc_calls"].as_u64() > Some(0), "{text}");
    assert_eq!(report["rpc_failed"], 0, "{text}");
    assert!(report["rpc_latency"]["p99"].as_f64() > Some(0.0), "{text}");
    assert_eq!(report["updates_sent"], 60, "{text}");
    assert_eq!(report["updates_delivered"], 60, "{text}");
    assert!(report["updates_per_second"].as_f64() > Some(0.0), "{text}");
    assert!(text.contains("two-way RPC:"), "{text}");
    Ok(())
}
