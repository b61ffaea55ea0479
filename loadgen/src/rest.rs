//! The engine's REST API, for `--provision` (create the devices) and `--verify` (count what was
//! stored).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};

use crate::Run;
use crate::report::Verify;

/// Requests in flight at once against the REST API.
const PARALLEL: usize = 32;

pub struct Rest {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Rest {
    pub async fn login(base: &str, username: &str, password: &str) -> Result<Rest> {
        let http = reqwest::Client::new();
        let base = base.trim_end_matches('/').to_owned();
        let resp = http
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        if !resp.status().is_success() {
            bail!(
                "login to {base} as {username} failed: HTTP {}",
                resp.status()
            );
        }
        let body: Value = resp.json().await?;
        let token = body["token"]
            .as_str()
            .context("no token in the login answer")?
            .to_owned();
        Ok(Rest { http, base, token })
    }

    /// The access token of the login (for the WebSocket API's `?token=`).
    pub fn token(&self) -> &str {
        &self.token
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .header("X-Authorization", format!("Bearer {}", self.token))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("X-Authorization", format!("Bearer {}", self.token))
    }

    /// The routing key of the integration `name` of this type, created (with an uplink
    /// converter running `decoder`) when there is none.
    pub async fn integration(&self, name: &str, kind: &str, decoder: &str) -> Result<String> {
        let page: Value = self
            .get("/api/integrations?pageSize=1000&page=0")
            .send()
            .await?
            .json()
            .await?;
        if let Some(existing) = page["data"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["name"] == name && i["type"] == kind))
        {
            return existing["routingKey"]
                .as_str()
                .map(str::to_owned)
                .context("integration without a routing key");
        }
        let converter: Value = self
            .post("/api/converter")
            .json(
                &json!({"name": format!("{name} converter"), "type": "UPLINK",
                          "configuration": {"scriptLang": "TBEL", "tbelDecoder": decoder}}),
            )
            .send()
            .await?
            .json()
            .await?;
        let converter_id = converter["id"]["id"]
            .as_str()
            .with_context(|| format!("cannot create the converter: {converter}"))?;
        let integration: Value = self
            .post("/api/integration")
            .json(&json!({"name": name, "type": kind, "enabled": true,
                          "allowCreateDevicesOrAssets": true,
                          "defaultConverterId": {"entityType": "CONVERTER", "id": converter_id}}))
            .send()
            .await?
            .json()
            .await?;
        integration["routingKey"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("cannot create the integration: {integration}"))
    }

    /// The ids of the devices named `names`, in order.
    pub async fn device_ids(&self, names: &[String]) -> Result<Vec<String>> {
        let ids: Vec<Result<String>> = stream::iter(names)
            .map(|name| async move {
                let device: Value = self
                    .get(&format!("/api/tenant/devices?deviceName={name}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                device["id"]["id"]
                    .as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("no device {name}"))
            })
            .buffered(PARALLEL)
            .collect()
            .await;
        ids.into_iter().collect()
    }

    /// A two-way RPC `{"method":"echo","params":params}` to device `id`: status and body.
    pub async fn rpc_twoway(
        &self,
        id: &str,
        params: &Value,
        timeout_ms: u64,
    ) -> Result<(u16, String)> {
        let resp = self
            .post(&format!("/api/rpc/twoway/{id}"))
            .json(&json!({"method": "echo", "params": params, "timeout": timeout_ms}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// The engine's CPU seconds and resident bytes from its `/metrics`, if it answers.
    pub async fn engine_process(&self) -> Option<(f64, f64)> {
        let text = self.get("/metrics").send().await.ok()?.text().await.ok()?;
        let sample = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some((
            sample("process_cpu_seconds_total")?,
            sample("process_resident_memory_bytes")?,
        ))
    }

    /// Saves shared attributes of device `id`: the status.
    pub async fn shared_attributes(&self, id: &str, body: &Value) -> Result<u16> {
        let resp = self
            .post(&format!(
                "/api/plugins/telemetry/DEVICE/{id}/attributes/SHARED_SCOPE"
            ))
            .json(body)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// Creates a device per name, with the name as its access token; a device that already
    /// exists with that token is fine.
    pub async fn provision(&self, names: &[String]) -> Result<()> {
        let results: Vec<Result<()>> = stream::iter(names)
            .map(|name| self.provision_one(name))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Creates these gateways (ThingsBoard's `additionalInfo.gateway`), each named and
    /// authenticated by its name, as [`Rest::provision`] does devices.
    pub async fn provision_gateways(&self, names: &[String]) -> Result<()> {
        let results: Vec<Result<()>> = stream::iter(names)
            .map(|name| self.provision_as(name, true))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn provision_one(&self, name: &str) -> Result<()> {
        self.provision_as(name, false).await
    }

    async fn provision_as(&self, name: &str, gateway: bool) -> Result<()> {
        let body = if gateway {
            json!({"name": name, "type": "loadgen-gateway", "additionalInfo": {"gateway": true}})
        } else {
            json!({"name": name, "type": "loadgen"})
        };
        let resp = self
            .http
            .post(format!("{}/api/device?accessToken={name}", self.base))
            .header("X-Authorization", format!("Bearer {}", self.token))
            .json(&body)
            .send()
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        // Already there? Then its token must be ours.
        let existing: Value = self
            .get(&format!("/api/tenant/devices?deviceName={name}"))
            .send()
            .await?
            .json()
            .await?;
        let id = existing["id"]["id"]
            .as_str()
            .with_context(|| format!("cannot create device {name}"))?;
        let creds: Value = self
            .get(&format!("/api/device/{id}/credentials"))
            .send()
            .await?
            .json()
            .await?;
        if creds["credentialsId"].as_str() == Some(name) {
            Ok(())
        } else {
            bail!("device {name} exists with another access token")
        }
    }

    /// Counts, per device, the stored points of the template's first key in this run's time
    /// range, and compares with what the engine acknowledged. Storage trails acknowledgement
    /// (the queue is written in batches), so devices still short are counted again until all
    /// have caught up, or until nothing changed for `patience`.
    pub async fn verify(&self, run: &Run, patience: Duration) -> Result<Verify> {
        let mut stored: Vec<u64> = vec![0; run.devices.len()];
        let mut pending: Vec<usize> = (0..run.devices.len()).collect();
        let mut ids: Vec<Option<String>> = vec![None; run.devices.len()];
        let mut last_progress = Instant::now();
        loop {
            let counted: Vec<Result<(usize, String, u64)>> = stream::iter(pending.iter().copied())
                .map(|i| {
                    let id = ids[i].clone();
                    async move {
                        let (id, n) = self.count(run, i, id).await?;
                        Ok((i, id, n))
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            let mut progressed = false;
            for result in counted {
                let (i, id, n) = result?;
                ids[i] = Some(id);
                progressed |= n > stored[i];
                stored[i] = n;
            }
            pending.retain(|&i| stored[i] < run.devices[i].acked.load(Ordering::Relaxed));
            if progressed {
                last_progress = Instant::now();
            }
            if pending.is_empty() || last_progress.elapsed() >= patience {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut verify = Verify {
            devices: run.devices.len() as u64,
            expected: 0,
            stored: 0,
            missing_devices: 0,
        };
        for (dev, n) in run.devices.iter().zip(&stored) {
            verify.expected += dev.acked.load(Ordering::Relaxed);
            verify.stored += n;
        }
        verify.missing_devices = pending.len() as u64;
        Ok(verify)
    }

    /// Stored points of device `i` in this run; returns its id for the next round.
    async fn count(&self, run: &Run, i: usize, id: Option<String>) -> Result<(String, u64)> {
        let dev = &run.devices[i];
        let sent = dev.sent.load(Ordering::Relaxed);
        let id = match id {
            Some(id) => id,
            None => {
                let found: Value = self
                    .get(&format!("/api/tenant/devices?deviceName={}", dev.name))
                    .send()
                    .await?
                    .json()
                    .await?;
                found["id"]["id"]
                    .as_str()
                    .with_context(|| format!("device {} not found", dev.name))?
                    .to_owned()
            }
        };
        if sent == 0 {
            return Ok((id, 0));
        }
        let key = &run.template.verify_key;
        #[allow(clippy::cast_possible_wrap)]
        let end = run.start_ms + sent as i64;
        let path = format!(
            "/api/plugins/telemetry/DEVICE/{id}/values/timeseries?keys={key}&startTs={}&endTs={end}&agg=COUNT&interval={}&useStrictDataTypes=true",
            run.start_ms,
            end - run.start_ms
        );
        let body: Value = self.get(&path).send().await?.json().await?;
        let stored = body[key.as_str()].as_array().map_or(0, |points| {
            points.iter().filter_map(|p| p["value"].as_u64()).sum()
        });
        Ok((id, stored))
    }
}
