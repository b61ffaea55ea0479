//! The HTTP listener (REST API, HTTP device API, integrations, `/metrics`): actix-web's app on
//! actix-server, with the limits a hostile client meets before any handler runs.
//!
//! - Connections: at most `http.max_connections` open (never more than a quarter of the
//!   process's file limit); one past it is answered 503 and closed at once, and counted.
//! - Headers: a request's line and headers must arrive within `http.header_timeout` of the
//!   connection's start (first request) or of their first byte (later requests on a kept-alive
//!   connection); past it the client gets 408 and the connection is closed. actix-web bounds
//!   only the first request's head, so [`Guarded`], a wrapper of the socket, keeps the deadline
//!   for every request.
//! - Bodies: every route reads its body through [`bound_request`]'s wrapper, which ends it
//!   with a timeout error `http.body_timeout` after the headers; the answer becomes 408 and the
//!   connection is closed. A WebSocket handshake (a GET of `/api/ws...` asking for the upgrade)
//!   is the exception: its body is its frames, and once it is upgraded no header or idle
//!   deadline applies; its session keeps its own (authentication, pong and send timeouts).
//! - Idle: a connection with no request in progress and nothing written for `keep_alive +
//!   header_timeout` is closed, whatever it is doing (a body being drained, a response that the
//!   client does not read).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_http::error::{DispatchError, PayloadError};
use actix_http::{HttpService, KeepAlive};
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpResponse, ResponseError, web};
use actors::metrics::{CONNECTIONS_REFUSED, HTTP_CONNECTIONS_OPEN, HTTP_TIMEOUTS};
use bytes::Bytes;
use futures::Stream;
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tracing::info;

use crate::api::error::ApiError;
use crate::api::{self, State};
use crate::config::{ApiConfig, HttpConfig};

/// What every worker's app is made of.
#[derive(Clone)]
pub struct AppParts {
    pub state: State,
    pub limits: web::Data<ApiConfig>,
    /// Largest body any route reads whole (device API, integrations), with room for REST.
    pub payload_limit: usize,
}

/// Binds the listener with `backlog` pending connections at most.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// The connection cap: `configured`, but at most a quarter of the open-file limit.
fn connection_cap(configured: usize) -> usize {
    let files = rlimit::Resource::NOFILE
        .get()
        .ok()
        .and_then(|(soft, _)| usize::try_from(soft).ok());
    match files {
        Some(files) => configured.min((files / 4).max(1)),
        None => configured,
    }
}

/// Starts serving `listener` on actix-server's workers; await the server to run it.
pub fn serve(
    listener: std::net::TcpListener,
    config: &HttpConfig,
    parts: AppParts,
) -> io::Result<Server> {
    let cap = connection_cap(config.max_connections);
    info!(
        max_connections = cap,
        configured = config.max_connections,
        "http connection cap"
    );
    let gate = Arc::new(Gate {
        open: AtomicUsize::new(0),
        max: cap,
    });
    let timeouts = Timeouts {
        header: config.header_timeout,
        body: config.body_timeout,
        keep_alive: config.keep_alive,
    };
    let local = listener.local_addr()?;
    let mut builder = Server::build()
        // The gate is the limit; this per-worker cap only backs it up.
        .max_concurrent_connections(cap)
        .disable_signals()
        .shutdown_timeout(5);
    if config.workers > 0 {
        builder = builder.workers(config.workers);
    }
    let graceful = builder.graceful_shutdown_signal();
    let builder = builder.listen("http", listener, move || {
        let gate = gate.clone();
        let accept = fn_service(move |io: TcpStream| {
            let gate = gate.clone();
            async move {
                let Some(pass) = gate.enter() else {
                    counter!(CONNECTIONS_REFUSED, "transport" => "http", "reason" => "too_many_connections")
                        .increment(1);
                    // Best effort, never waited for: the connection is closed right after.
                    let _ = io.try_write(SERVICE_UNAVAILABLE);
                    return Err(DispatchError::Io(io::Error::other("too many connections")));
                };
                let peer = io.peer_addr().ok();
                Ok((Guarded::new(io, pass, timeouts), peer))
            }
        });
        let graceful = graceful.clone();
        let parts = parts.clone();
        let app = App::new()
            .app_data(parts.state.clone())
            .app_data(parts.limits.clone())
            .app_data(web::PayloadConfig::new(parts.payload_limit))
            .wrap(from_fn(move |req, next| bound_request(req, next, timeouts.body)))
            .configure(api::routes);
        let http = HttpService::build()
            .keep_alive(KeepAlive::Timeout(timeouts.keep_alive))
            // `Guarded` keeps the header deadline; actix-web's own (first request only) is a
            // backstop behind it.
            .client_request_timeout(timeouts.header.saturating_mul(2))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(local)
            .on_connect_ext(|io: &Guarded, ext| {
                ext.insert(io.conn.clone());
            })
            .graceful_shutdown_signal(move || {
                let signal = graceful.clone();
                async move { signal.notified().await }
            })
            .h1(map_config(
                app.into_factory()
                    .map_err(|e: actix_web::Error| e.error_response()),
                |()| AppConfig::default(),
            ));
        accept.and_then(http)
    })?;
    Ok(builder.run())
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Duration,
    body: Duration,
    keep_alive: Duration,
}

/// Counts open connections against the cap, across workers.
struct Gate {
    open: AtomicUsize,
    max: usize,
}

impl Gate {
    fn enter(self: &Arc<Self>) -> Option<Pass> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
        Some(Pass(self.clone()))
    }
}

/// One open connection; gives its place back when the connection is dropped.
struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// What the socket wrapper and the request middleware of one connection share (one worker
/// thread owns both).
#[derive(Debug)]
pub struct ConnState {
    /// A request has been dispatched and not yet answered.
    active: Cell<bool>,
    /// Since when the next request's head has been awaited: the connection's start, or the
    /// first byte read after the last answer.
    head_since: Cell<Option<Instant>>,
    /// The last answer, or the last write after it.
    idle_since: Cell<Option<Instant>>,
    /// The connection became a WebSocket: no header or idle deadline applies any more.
    upgraded: Cell<bool>,
}

impl ConnState {
    fn request_started(&self) {
        self.active.set(true);
        self.head_since.set(None);
        self.idle_since.set(None);
    }

    fn request_finished(&self) {
        self.active.set(false);
        self.idle_since.set(Some(Instant::now()));
    }
}

/// Marks a request active for as long as its middleware future lives.
struct ActiveRequest(Rc<ConnState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Why [`Guarded`] gave up on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// A request's head did not arrive in time: answered 408.
    Header,
    /// Nothing happened for too long with no request in progress.
    Idle,
}

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
connection: close\r\ncontent-length: 0\r\n\r\n";

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The socket of one connection, with the header and idle deadlines kept on its reads.
pub struct Guarded {
    io: TcpStream,
    conn: Rc<ConnState>,
    timeouts: Timeouts,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// The last write did not take all it was given: a response is still on its way.
    write_pending: bool,
    expired: Option<Expiry>,
    _pass: Pass,
}

impl Guarded {
    fn new(io: TcpStream, pass: Pass, timeouts: Timeouts) -> Guarded {
        let now = Instant::now();
        Guarded {
            io,
            conn: Rc::new(ConnState {
                active: Cell::new(false),
                head_since: Cell::new(Some(now)),
                idle_since: Cell::new(None),
                upgraded: Cell::new(false),
            }),
            timeouts,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            write_pending: false,
            expired: None,
            _pass: pass,
        }
    }

    /// The nearest deadline, if no request is in progress.
    fn deadline(&self) -> Option<(Instant, Expiry)> {
        if self.conn.active.get() || self.conn.upgraded.get() {
            return None;
        }
        let head = self
            .conn
            .head_since
            .get()
            .map(|t| (t + self.timeouts.header, Expiry::Header));
        let idle = self.conn.idle_since.get().map(|t| {
            (
                t + self.timeouts.keep_alive + self.timeouts.header,
                Expiry::Idle,
            )
        });
        match (head, idle) {
            (Some(h), Some(i)) => Some(if h.0 <= i.0 { h } else { i }),
            (h, i) => h.or(i),
        }
    }

    /// Gives up on the connection: a 408 when a head was late (and no answer is half
    /// written), then end of stream, so actix-web shuts the connection down. A connection
    /// whose answer is stuck gets an error instead, which drops it at once.
    fn expire(&mut self, cx: &mut Context<'_>, why: Expiry) -> Poll<io::Result<()>> {
        if self.expired.is_none() {
            let phase = match why {
                Expiry::Header => "header",
                Expiry::Idle => "idle",
            };
            counter!(HTTP_TIMEOUTS, "phase" => phase).increment(1);
            if why == Expiry::Header && !self.write_pending {
                // Best effort: a full socket buffer only loses the courtesy.
                let _ = Pin::new(&mut self.io).poll_write(cx, REQUEST_TIMEOUT);
            }
            self.expired = Some(why);
        }
        if self.write_pending {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle too long",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.expired {
            return this.expire(cx, why);
        }
        let deadline = this.deadline();
        if let Some((at, why)) = deadline
            && Instant::now() >= at
        {
            return this.expire(cx, why);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let conn = &this.conn;
                if buf.filled().len() > before
                    && !conn.active.get()
                    && conn.head_since.get().is_none()
                {
                    conn.head_since.set(Some(Instant::now()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some((at, why)) = deadline else {
                    return Poll::Pending;
                };
                if this.armed != Some(at) {
                    this.timer.as_mut().reset(at.into());
                    this.armed = Some(at);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.expire(cx, why),
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_pending = !matches!(result, Poll::Ready(Ok(n)) if n == buf.len());
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) && this.conn.idle_since.get().is_some() {
            this.conn.idle_since.set(Some(Instant::now()));
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Marks the connection busy while a request is handled, and ends its body with a timeout
/// error `body_timeout` after the headers; a request whose body timed out is answered 408
/// (text for the device API, ThingsBoard's error body elsewhere) and its connection closed.
async fn bound_request(
    mut req: ServiceRequest,
    next: Next<BoxBody>,
    body_timeout: Duration,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let _active = req.conn_data::<Rc<ConnState>>().map(|conn| {
        conn.request_started();
        ActiveRequest(conn.clone())
    });
    let fired = Rc::new(Cell::new(false));
    // A WebSocket's body is its frames, for as long as it is open: not bounded here (its
    // session keeps its own liveness rules).
    let upgrade = is_websocket(&req);
    let payload = if upgrade {
        Payload::None
    } else {
        req.take_payload()
    };
    if !matches!(payload, Payload::None) {
        let bounded = Deadline {
            inner: payload,
            timer: Box::pin(tokio::time::sleep(body_timeout)),
            fired: fired.clone(),
            done: false,
        };
        req.set_payload(Payload::from(
            Box::pin(bounded) as actix_http::BoxedPayloadStream
        ));
    }
    let timed_out = BodyTimedOut {
        device_api: is_device_api(req.path()),
        timeout: body_timeout,
    };
    let conn = req.conn_data::<Rc<ConnState>>().cloned();
    let result = next.call(req).await;
    if let (Some(conn), Ok(res)) = (&conn, &result)
        && res.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        conn.upgraded.set(true);
    }
    if !fired.get() {
        return result;
    }
    counter!(HTTP_TIMEOUTS, "phase" => "body").increment(1);
    match result {
        Ok(res) => {
            let (request, _) = res.into_parts();
            Ok(ServiceResponse::new(request, timed_out.error_response()))
        }
        Err(_) => Err(timed_out.into()),
    }
}

/// A WebSocket handshake: a GET of the WebSocket API with `Upgrade: websocket` (any other
/// request keeps its body deadline, whatever its headers say).
fn is_websocket(req: &ServiceRequest) -> bool {
    req.method() == actix_web::http::Method::GET
        && req.path().starts_with("/api/ws")
        && req
            .headers()
            .get(actix_web::http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A body that did not arrive in time, as an error actix-web answers with [`body_timed_out`].
#[derive(Debug)]
struct BodyTimedOut {
    device_api: bool,
    timeout: Duration,
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body not received within {:?}", self.timeout)
    }
}

impl ResponseError for BodyTimedOut {
    fn status_code(&self) -> StatusCode {
        StatusCode::REQUEST_TIMEOUT
    }

    fn error_response(&self) -> HttpResponse {
        body_timed_out(self.device_api, self.timeout)
    }
}

/// `/api/v1/{token}/...`, the device API (text answers), not the integrations under it.
fn is_device_api(path: &str) -> bool {
    path.starts_with("/api/v1/") && !path.starts_with("/api/v1/integrations/")
}

/// The 408 for a body that did not arrive in time; the connection is closed after it.
pub fn body_timed_out(device_api: bool, body_timeout: Duration) -> HttpResponse {
    let message = format!("Request body not received within {body_timeout:?}");
    let mut response = if device_api {
        HttpResponse::build(StatusCode::REQUEST_TIMEOUT)
            .content_type("text/plain; charset=utf-8")
            .body(format!("Request Timeout: {message}"))
    } else {
        ApiError::request_timeout(message).error_response()
    };
    response
        .head_mut()
        .set_connection_type(actix_http::ConnectionType::Close);
    response
}

/// Whether a payload error is [`Deadline`]'s timeout.
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}

/// A request body that ends with a timeout error once its deadline passes.
struct Deadline {
    inner: Payload,
    timer: Pin<Box<Sleep>>,
    fired: Rc<Cell<bool>>,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            this.done = true;
            this.fired.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body not received in time",
            )))));
        }
        let next = Pin::new(&mut this.inner).poll_next(cx);
        if matches!(next, Poll::Ready(None)) {
            this.done = true;
        }
        next
    }
}
