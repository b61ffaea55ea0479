//! Harness of the end-to-end tests: starts the real `engine` binary on free loopback ports in a
//! throw-away data directory, and talks to it with real clients (REST over reqwest, MQTT over
//! rumqttc and Mosquitto's `mosquitto_pub`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

pub mod coap;
pub mod mqtt;
pub mod servers;
pub mod store_lock;
pub mod ws;

/// The engine binary: `E2E_ENGINE_BIN`, else `engine` beside the test executable's profile dir.
pub fn engine_binary() -> PathBuf {
    workspace_binary("engine", "E2E_ENGINE_BIN")
}

/// The load generator binary: `E2E_LOADGEN_BIN`, else `loadgen` from the same build.
pub fn loadgen_binary() -> PathBuf {
    workspace_binary("loadgen", "E2E_LOADGEN_BIN")
}

fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    build_workspace_binaries(profile_dir);
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{name} binary not found at {} after building it",
        bin.display()
    );
    bin
}

/// Builds the workspace's binaries once per test process, in the profile the tests were built
/// with, so that a test never runs an `engine` or `loadgen` older than the sources (`cargo test
/// -p tests` alone builds only the test crate). Cargo's own up-to-date check makes this a
/// fraction of a second when nothing changed.
fn build_workspace_binaries(profile_dir: &Path) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name");
        let target_dir = profile_dir.parent().expect("target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let status = cmd
            .status()
            .expect("cargo runs (set E2E_ENGINE_BIN and E2E_LOADGEN_BIN to skip the build)");
        assert!(
            status.success(),
            "building the workspace binaries failed ({status}); \
             set E2E_ENGINE_BIN and E2E_LOADGEN_BIN to run prebuilt ones"
        );
    });
}

pub struct Engine {
    child: Child,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    /// The CoAP integration endpoint (UDP).
    pub coap: SocketAddr,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Engine {
    /// Starts the engine with its data in `data_dir` and waits until both listeners are up.
    pub fn start(data_dir: &Path) -> Result<Engine> {
        Engine::start_with(data_dir, &[])
    }

    /// Like `start`, with extra `(ENV_VAR, value)` settings.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Result<Engine> {
        Engine::start_with_http_bind(data_dir, "127.0.0.1:0", env)
    }

    /// Like `start_with`, with the HTTP listener (REST API, HTTP device API) on `http_bind`
    /// instead of a loopback port, e.g. `"192.0.2.2:0"` to be reached from a non-loopback peer.
    pub fn start_with_http_bind(
        data_dir: &Path,
        http_bind: &str,
        env: &[(&str, &str)],
    ) -> Result<Engine> {
        let mut cmd = Command::new(engine_binary());
        cmd.args([
            "serve",
            "--mqtt-bind",
            "127.0.0.1:0",
            "--http-bind",
            http_bind,
            "--coap-bind",
            "127.0.0.1:0",
            "--log",
            "info",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .env_remove("ENGINE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning the engine")?;
        let stderr = child.stderr.take().context("engine stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (needle, which) in [
                    ("mqtt_addr=", "mqtt"),
                    ("http_addr=", "http"),
                    ("coap_addr=", "coap"),
                ] {
                    if let Some(rest) = line.split(needle).nth(1) {
                        let addr = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        let _ = tx.send((which, addr));
                    }
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let (mut mqtt, mut http, mut coap) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while mqtt.is_none() || http.is_none() || coap.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("mqtt", addr)) => mqtt = Some(addr.parse()?),
                Ok(("coap", addr)) => coap = Some(addr.parse()?),
                Ok((_, addr)) => http = Some(addr.parse()?),
                Err(_) => {
                    let _ = child.kill();
                    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                    bail!("engine did not start listening within 60 s; its log:\n{log}");
                }
            }
        }
        Ok(Engine {
            child,
            mqtt: mqtt.ok_or_else(|| anyhow!("no mqtt address"))?,
            http: http.ok_or_else(|| anyhow!("no http address"))?,
            coap: coap.ok_or_else(|| anyhow!("no coap address"))?,
            data_dir: data_dir.to_owned(),
            log,
        })
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Kills the process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// The engine's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS for the engine"))
    }

    /// The engine's peak resident memory since it started (VmHWM) in KiB, from /proc: what a
    /// burst cost at its worst, read after the burst without sampling during it.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmHWM for the engine"))
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "engine did not exit within 60 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one series of the engine's `/metrics` (`name` or `name{labels}`, exactly
    /// as the exposition writes it); `None` when it is not exported.
    pub async fn sample(&self, series: &str) -> Result<Option<f64>> {
        let text = reqwest::get(self.url("/metrics")).await?.text().await?;
        Ok(text.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok())?
        }))
    }

    /// Waits until the series' value satisfies `until` (polling `/metrics`); fails after
    /// `timeout`, which only bounds a hang, with the last value seen.
    pub async fn wait_for_sample(
        &self,
        series: &str,
        timeout: Duration,
        until: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.sample(series).await?;
            if let Some(v) = value
                && until(v)
            {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{series} is {value:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A REST client logged in as the demo tenant administrator.
    pub async fn rest(&self) -> Result<Rest> {
        self.login("tenant@thingsboard.org", "tenant").await
    }

    /// A REST client logged in as `username`.
    pub async fn login(&self, username: &str, password: &str) -> Result<Rest> {
        let http = reqwest::Client::new();
        let resp = http
            .post(self.url("/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "login failed: {}",
            resp.status()
        );
        let body: Value = resp.json().await?;
        let token = body["token"]
            .as_str()
            .context("no token in login answer")?
            .to_owned();
        Ok(Rest {
            http,
            base: self.url(""),
            token,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An authenticated REST client.
pub struct Rest {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Rest {
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .header("X-Authorization", format!("Bearer {}", self.token))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("X-Authorization", format!("Bearer {}", self.token))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(format!("{}{path}", self.base))
            .header("X-Authorization", format!("Bearer {}", self.token))
    }

    /// Creates a device with this access token; returns its id.
    pub async fn create_device(&self, name: &str, token: &str) -> Result<String> {
        let resp = self
            .post(&format!("/api/device?accessToken={token}"))
            .json(&json!({"name": name, "type": "default"}))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "create device {name}: {status} {body}");
        Ok(body["id"]["id"].as_str().context("device id")?.to_owned())
    }

    pub async fn json(&self, path: &str) -> Result<Value> {
        let resp = self.get(path).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    /// Latest telemetry with strict data types.
    pub async fn latest(&self, device: &str) -> Result<Value> {
        self.json(&format!(
            "/api/plugins/telemetry/DEVICE/{device}/values/timeseries?useStrictDataTypes=true"
        ))
        .await
    }

    /// Polls `f` until it returns `Some` or `timeout` passes (storage is written in batches).
    pub async fn eventually<T, F, Fut>(&self, timeout: Duration, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("condition not met within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs Mosquitto's `mosquitto_pub` with these arguments against the engine; returns its exit
/// status and output. Fails loudly when the tool is missing.
pub fn mosquitto_pub(engine: &Engine, args: &[&str]) -> Result<(i32, String)> {
    let port = engine.mqtt.port().to_string();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .output()
        .context("mosquitto_pub is not installed (Debian package mosquitto-clients)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

/// The Python interpreter of the virtual environment holding ThingsBoard's official clients
/// (`tb-mqtt-client`, installed by `tests/run.sh`): `TB_SDK_PYTHON`. Fails loudly, with the
/// way to get it, when it is missing.
pub fn sdk_python() -> Result<PathBuf> {
    let python = std::env::var_os("TB_SDK_PYTHON")
        .map(PathBuf::from)
        .context(
            "TB_SDK_PYTHON is not set: run tests/run.sh, which makes a virtual environment \
         with tb-mqtt-client and sets it",
        )?;
    anyhow::ensure!(
        python.exists(),
        "TB_SDK_PYTHON={} does not exist: run tests/run.sh",
        python.display()
    );
    Ok(python)
}

/// A script of `tests/sdk/`.
pub fn sdk_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk").join(name)
}

/// A running SDK script of `tests/sdk/` whose output lines arrive on a channel; killed when
/// dropped (its standard input closed first).
pub struct SdkScript {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Lines read past while waiting for an answer, given out first by [`SdkScript::next`].
    held: std::collections::VecDeque<Value>,
}

impl SdkScript {
    /// Starts `tests/sdk/<name>` with `args` in the SDK's virtual environment.
    pub fn start(name: &str, args: &[&str]) -> Result<SdkScript> {
        use std::io::BufRead;
        let mut child = std::process::Command::new(sdk_python()?)
            .arg(sdk_script(name))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(SdkScript {
            child,
            lines,
            held: std::collections::VecDeque::new(),
        })
    }

    /// The next JSON line, if one comes within `wait`.
    pub fn next(&mut self, wait: std::time::Duration) -> Result<Option<Value>> {
        if let Some(held) = self.held.pop_front() {
            return Ok(Some(held));
        }
        self.read(wait)
    }

    fn read(&self, wait: std::time::Duration) -> Result<Option<Value>> {
        match self.lines.recv_timeout(wait) {
            Ok(line) => Ok(Some(
                serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?,
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(e) => anyhow::bail!("the SDK script ended: {e}"),
        }
    }
}

impl SdkScript {
    /// Writes one line (a command) to the script's standard input.
    pub fn send(&mut self, line: &Value) -> Result<()> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends a command and returns the next JSON line that has `key`, skipping events.
    pub fn ask(&mut self, line: &Value, key: &str) -> Result<Value> {
        self.send(line)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.read(left)? {
                Some(answer) if answer.get(key).is_some() => return Ok(answer),
                Some(event) => self.held.push_back(event),
                None => anyhow::bail!("no answer with {key} to {line}"),
            }
        }
    }
}

impl Drop for SdkScript {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
