//! Real servers the production-path tests need, started on free loopback ports in throw-away
//! directories: Debian's `clickhouse-server` (with its own config file and data path, not the
//! system service) and the Kafka-protocol broker `tansu`. Each can be stopped and started again
//! on the same port and data, for the fault tests. A missing binary fails the test loudly:
//! `tests/run.sh` installs both.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free loopback port (bound and released; the server binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_binary(env: &str, name: &str, hint: &str) -> Result<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Ok(PathBuf::from(path));
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found (set {env} or put it on PATH): {hint}")
}

fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up: {status}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on {addr} within 30 s")
}

/// Starts `command` in `dir` with its output in `dir/log`, and waits until it listens on
/// `port` (fails, killing it, if it exits or does not listen within 30 s).
fn spawn_server(
    mut command: Command,
    dir: &Path,
    log: &str,
    port: u16,
    what: &str,
) -> Result<Child> {
    let log = std::fs::File::create(dir.join(log))?;
    let mut child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_port(addr, &mut child, what).inspect_err(|_| {
        let _ = child.kill();
    })?;
    Ok(child)
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A ClickHouse server of its own.
pub struct ClickHouse {
    dir: tempfile::TempDir,
    pub http_port: u16,
    tcp_port: u16,
    child: Option<Child>,
}

impl ClickHouse {
    pub fn start() -> Result<ClickHouse> {
        let mut server = ClickHouse {
            dir: tempfile::tempdir()?,
            http_port: free_port()?,
            tcp_port: free_port()?,
            child: None,
        };
        server.write_config()?;
        server.resume()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn write_config(&self) -> Result<()> {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{data}/</path>
    <tmp_path>{data}/tmp/</tmp_path>
    <user_files_path>{data}/user_files/</user_files_path>
    <format_schema_path>{data}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port,
            data = data.display()
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
"#;
        std::fs::write(self.dir.path().join("config.xml"), config)?;
        std::fs::write(self.dir.path().join("users.xml"), users)?;
        Ok(())
    }

    /// Starts the server (again), on the same port and data.
    pub fn resume(&mut self) -> Result<()> {
        let bin = find_binary(
            "CLICKHOUSE_SERVER_BIN",
            "clickhouse-server",
            "install Debian's clickhouse-server (tests/run.sh does)",
        )?;
        let mut command = Command::new(bin);
        command.arg(format!(
            "--config-file={}",
            self.dir.path().join("config.xml").display()
        ));
        self.child = Some(spawn_server(
            command,
            self.dir.path(),
            "server.log",
            self.http_port,
            "clickhouse-server",
        )?);
        Ok(())
    }

    /// Stops the server (SIGTERM); its data stays for `resume`.
    pub fn pause(&mut self) {
        stop_child(&mut self.child);
    }

    /// Runs `sql` over HTTP and returns the answer's text.
    pub async fn query(&self, sql: &str) -> Result<String> {
        let response = reqwest::Client::new()
            .post(self.url())
            .body(sql.to_owned())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("clickhouse: {status}: {text}");
        }
        Ok(text)
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.pause();
    }
}

/// A Kafka-protocol broker (tansu) of its own, keeping its data in a SQLite file so a
/// restart keeps every message it acknowledged.
pub struct Tansu {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    pub fn start() -> Result<Tansu> {
        let mut broker = Tansu {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            child: None,
        };
        broker.resume()?;
        Ok(broker)
    }

    /// `host:port` for the Kafka clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again), on the same port and data.
    pub fn resume(&mut self) -> Result<()> {
        let bin = find_binary(
            "TANSU_BIN",
            "tansu",
            "install it with `cargo install tansu --features dynostore,libsql` (tests/run.sh does)",
        )?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(bin);
        command
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            // Relative to the working directory (tansu joins an absolute path onto it).
            .args(["--storage-engine", "sqlite://tansu.db"]);
        self.child = Some(spawn_server(
            command,
            self.dir.path(),
            "broker.log",
            self.port,
            "tansu",
        )?);
        Ok(())
    }

    /// Stops the broker (SIGTERM); its data stays for `resume`.
    pub fn pause(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.pause();
    }
}
