//! The REST API in ThingsBoard's paths and shapes, the HTTP device API and `/metrics`, on one
//! actix-web listener.

pub mod access;
mod asset;
mod auth;
mod converter;
mod customer;
pub mod device;
mod entity;
pub mod error;
mod integration;
pub mod profile;
mod relation;
mod rpc;
mod telemetry;
mod user;

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload, web};
use actors::ingress::Ingress;
use actors::ports::{DeviceProfiles, DeviceRecords, DeviceRegistry, Store};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{Auth, AuthError, Principal};
use error::ApiError;

/// What every handler may use; shared by all HTTP workers.
pub struct ApiState {
    pub auth: Auth,
    /// Customers, users, assets, device assignments and relations.
    pub directory: Arc<actors::directory::Directory>,
    /// How long an activation link stays valid.
    pub activation_ttl: std::time::Duration,
    pub registry: Arc<dyn DeviceRegistry>,
    pub store: Arc<dyn Store>,
    /// Device profiles (provisioning settings); devices name theirs by `type`.
    pub profiles: Arc<dyn DeviceProfiles>,
    /// Persistent RPCs and claim requests.
    pub records: Arc<dyn DeviceRecords>,
    pub ingress: Arc<Ingress>,
    pub metrics: Option<PrometheusHandle>,
    pub device_api: crate::transport::http::DeviceApiConfig,
    pub converters: Arc<actors::converter::ConverterRuntime>,
    pub integrations: Arc<actors::integration::Integrations>,
    /// This node's name, shown as the `server` of debug events.
    pub node_id: String,
    /// The way back to devices: RPC calls, long polls, shared attribute deletions.
    pub downlinks: Arc<actors::downlink::router::Downlinks>,
    /// This node's live device sessions: a deleted device's, or one whose credentials
    /// changed, are ended.
    pub sessions: Arc<dyn actors::ports::DeviceSessions>,
    /// WebSocket sessions: the live hub they watch devices in, and their limits.
    pub ws: crate::transport::ws::WsState,
}

pub type State = web::Data<ApiState>;

impl ApiState {
    /// The access-check layer over this node's registry and directory.
    pub fn access(&self) -> access::Access {
        access::Access {
            registry: self.registry.clone(),
            directory: self.directory.clone(),
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().error_handler(|err, _req| {
        ApiError::invalid(format!("Invalid request body: {err}")).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::bad_request(format!("Invalid request parameters: {err}")).into()
    }))
    .route("/metrics", web::get().to(metrics))
    .configure(auth::routes)
    .configure(converter::routes)
    .configure(integration::routes)
    .configure(customer::routes)
    .configure(asset::routes)
    .configure(relation::routes)
    .configure(user::routes)
    .configure(device::routes)
    .configure(profile::routes)
    .configure(telemetry::routes)
    .configure(rpc::routes)
    .configure(crate::transport::http::routes)
    .configure(crate::transport::ws::routes)
    .configure(crate::transport::http_integration::routes)
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::no_such_resource())
    }));
}

async fn metrics(state: State) -> HttpResponse {
    match &state.metrics {
        Some(handle) => {
            crate::exporter::collect_process();
            HttpResponse::Ok()
                .content_type("text/plain; version=0.0.4")
                .body(handle.render())
        }
        None => HttpResponse::NotFound().finish(),
    }
}

/// An authenticated caller: the `X-Authorization: Bearer <jwt>` header (or `Authorization`)
/// must hold a valid access token, else 401 in ThingsBoard's error shape.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<State>()
        .ok_or_else(|| ApiError::internal("API state missing"))?;
    let header = req
        .headers()
        .get("X-Authorization")
        .or_else(|| req.headers().get("Authorization"))
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or(AuthError::Missing)?
        .trim();
    Ok(Caller(state.auth.verify_access(token)?))
}

/// ThingsBoard's page parameters: `pageSize` (required, positive), `page` (from 0),
/// `textSearch`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    pub page_size: Option<usize>,
    pub page: Option<usize>,
    pub text_search: Option<String>,
}

impl PageQuery {
    /// The page asked for, its size capped at `max`.
    pub fn request(&self, max: usize) -> Result<actors::ports::PageRequest, ApiError> {
        let page_size = self.page_size.filter(|s| *s > 0).ok_or_else(|| {
            ApiError::bad_request("Parameter 'pageSize' is required and must be positive")
        })?;
        Ok(actors::ports::PageRequest {
            page_size: page_size.min(max),
            page: self.page.unwrap_or(0),
            text_search: self.text_search.clone().filter(|t| !t.is_empty()),
        })
    }
}

/// ThingsBoard's page: `data`, `totalPages`, `totalElements`, `hasNext`.
pub fn page_json(
    request: &actors::ports::PageRequest,
    total_elements: usize,
    data: Vec<serde_json::Value>,
) -> serde_json::Value {
    let total_pages = total_elements.div_ceil(request.page_size.max(1));
    serde_json::json!({
        "data": data,
        "totalPages": total_pages,
        "totalElements": total_elements,
        "hasNext": request.page.checked_add(1).is_some_and(|next| next < total_pages),
    })
}
