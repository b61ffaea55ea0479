//! Configuration and the CLI: flags over the environment over the file (`--print-config`
//! shows the merge, and a running engine obeys it), `engine hash-password` (argument and
//! standard input), and `shutdown_timeout` bounding a drain the store cannot take.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tests::store_lock::StoreLock;
use tests::{Engine, engine_binary};

/// The value of `key` in `[section]` of a TOML text (the top level when `section` is empty).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
        } else if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

const FILE: &str = r#"
shutdown_timeout = "42s"

[mqtt]
receive_maximum = 5

[api]
default_limit = 123

[http]
max_payload_size = "100 B"
"#;

#[test]
fn print_config_shows_flags_over_environment_over_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("engine.toml");
    std::fs::write(&file, FILE)?;
    let out = Command::new(engine_binary())
        .args(["serve", "--print-config", "--data-dir", "/from/flag"])
        .env_remove("RUST_LOG")
        .env("ENGINE_CONFIG", &file)
        .env("ENGINE_MQTT__RECEIVE_MAXIMUM", "7")
        .env("ENGINE_DATA_DIR", "/from/env")
        .env("ENGINE_LOG", "debug")
        .output()
        .context("running engine --print-config")?;
    ensure!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout)?;
    let cases = [
        // The environment over the file.
        ("mqtt", "receive_maximum", "7"),
        // The file over the defaults.
        ("api", "default_limit", "123"),
        ("", "shutdown_timeout", "\"42s\""),
        // A flag over the environment.
        ("", "data_dir", "\"/from/flag\""),
        // The environment over the defaults.
        ("", "log", "\"debug\""),
        // Defaults for what nobody set.
        ("queue", "partitions", "8"),
    ];
    for (section, key, want) in cases {
        assert_eq!(
            toml_value(&text, section, key).as_deref(),
            Some(want),
            "[{section}] {key} in:\n{text}"
        );
    }
    // It printed and exited: no listener was started.
    ensure!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn post_telemetry(engine: &Engine, token: &str, bytes: usize) -> Result<u16> {
    let body = json!({"pad": "x".repeat(bytes)}).to_string();
    Ok(reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/{token}/telemetry")))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_engine_takes_the_environment_over_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("engine.toml");
    std::fs::write(&file, FILE)?;
    let path = file.to_string_lossy().into_owned();
    // The file alone: bodies over 100 bytes are refused.
    let data = dir.path().join("data");
    let mut engine = Engine::start_with(&data, &[("ENGINE_CONFIG", &path)])?;
    let rest = engine.rest().await?;
    rest.create_device("sized", "SIZED").await?;
    assert_eq!(post_telemetry(&engine, "SIZED", 10).await?, 200);
    assert_eq!(post_telemetry(&engine, "SIZED", 500).await?, 413);
    engine.terminate()?;
    // The environment over the file: 1 KiB.
    let engine = Engine::start_with(
        &data,
        &[
            ("ENGINE_CONFIG", &path),
            ("ENGINE_HTTP__MAX_PAYLOAD_SIZE", "1 KiB"),
        ],
    )?;
    assert_eq!(post_telemetry(&engine, "SIZED", 500).await?, 200);
    assert_eq!(post_telemetry(&engine, "SIZED", 2000).await?, 413);
    Ok(())
}

fn hash_from_argument(password: &str) -> Result<String> {
    let out = Command::new(engine_binary())
        .args(["hash-password", password])
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn hash_from_stdin(password: &str) -> Result<String> {
    let mut child = Command::new(engine_binary())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "{out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn login(engine: &Engine, username: &str, password: &str) -> Result<u16> {
    Ok(reqwest::Client::new()
        .post(engine.url("/api/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_password_makes_hashes_the_engine_logs_in_with() -> Result<()> {
    for (how, hash) in [
        ("argument", hash_from_argument("c0rrect-horse")?),
        ("standard input", hash_from_stdin("c0rrect-horse")?),
    ] {
        ensure!(
            hash.starts_with("$argon2") && !hash.contains("c0rrect-horse"),
            "{how}: {hash}"
        );
        let dir = tempfile::tempdir()?;
        let engine = Engine::start_with(
            dir.path(),
            &[
                ("ENGINE_AUTH__USERNAME", "admin@example.com"),
                ("ENGINE_AUTH__PASSWORD_HASH", &hash),
            ],
        )?;
        assert_eq!(
            login(&engine, "admin@example.com", "c0rrect-horse").await?,
            200,
            "{how}"
        );
        assert_eq!(
            login(&engine, "admin@example.com", "c0rrect-horsE").await?,
            401,
            "{how}"
        );
    }
    // Two hashes of one password differ (salted) and an empty password is refused.
    ensure!(hash_from_argument("same")? != hash_from_argument("same")?);
    let empty = Command::new(engine_binary())
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()?;
    ensure!(!empty.status.success(), "{empty:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_gives_up_after_shutdown_timeout_when_the_store_cannot_take_the_queue()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start_with(dir.path(), &[("ENGINE_SHUTDOWN_TIMEOUT", "2s")])?;
    let rest = engine.rest().await?;
    rest.create_device("stuck", "STUCK").await?;
    // An acknowledged message the store cannot take.
    let lock = StoreLock::take(&engine.data_dir)?;
    assert_eq!(post_telemetry(&engine, "STUCK", 1).await?, 200);
    // SIGTERM: the drain waits 2 s, then the engine exits with an error saying so. (An
    // engine ignoring the setting would not exit while the lock is held, and the harness
    // gives up after 60 s.)
    let status = engine.terminate()?;
    ensure!(!status.success(), "exit status {status}");
    let log = engine.log();
    ensure!(
        log.contains("shutdown timed out after 2s with messages not stored"),
        "log:\n{log}"
    );
    lock.release()?;
    Ok(())
}
