//! Device transports: MQTT (ntex-mqtt), the HTTP device API (actix-web), and the integration
//! endpoints: CoAP (coap-lite on UDP) and HTTP.

pub mod coap;
pub mod http;
pub mod http_downlink;
pub mod http_integration;
pub mod http_server;
pub mod mqtt;
pub mod ws;

use actors::model::{AttributeScope, DeviceId, KvEntry};
use actors::ports::{Store, StoreError};
use actors::protocol::attributes::{AttributeRequest, Keys};

/// What a device's attribute request asks for, read from storage: its client and its shared
/// attributes (MQTT and HTTP answer the same).
pub async fn requested_attributes(
    store: &dyn Store,
    device: DeviceId,
    request: &AttributeRequest,
) -> Result<(Vec<KvEntry>, Vec<KvEntry>), StoreError> {
    async fn scope(
        store: &dyn Store,
        device: DeviceId,
        scope: AttributeScope,
        keys: &Keys,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let keys = match keys {
            Keys::All => None,
            Keys::Only(keys) if keys.is_empty() => return Ok(Vec::new()),
            Keys::Only(keys) => Some(keys.as_slice()),
        };
        let values = store.attributes(device, Some(scope), keys).await?;
        Ok(values
            .into_iter()
            .map(|a| KvEntry::new(a.key, a.value))
            .collect())
    }
    let client = scope(store, device, AttributeScope::Client, &request.client).await?;
    let shared = scope(store, device, AttributeScope::Shared, &request.shared).await?;
    Ok((client, shared))
}
