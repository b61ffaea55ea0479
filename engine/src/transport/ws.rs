//! The WebSocket telemetry API (reference §5): `/api/ws/plugins/telemetry?token=JWT` and
//! `/api/ws` (a `token` in the URL, or an `authCmd` in the first message), both taking both
//! command wrappers. Each socket is one task on its HTTP worker: it reads frames, runs
//! commands through its [`Session`] and sends what the live hub hands it.
//!
//! Closes, with ThingsBoard's codes: a bad token in the URL 1011; no `authCmd` first 1008
//! "Auth cmd is missing", a bad one 1007, none within `ws.auth_timeout` 1008; too many
//! sessions or subscriptions for the user 1008; more than `ws.max_pending_updates` updates
//! waiting 1008 "Max pending updates limit reached!"; no pong for `ws.pong_timeout`, or a
//! message the client does not take within `ws.send_timeout`, 4500; a frame over
//! `ws.max_frame_size` 1009; a binary frame 1003; another `/api/ws/plugins/..` path 1007.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use actors::live::session::{Budget, Limits, Session as Subscriptions};
use actors::live::{LiveHub, Overflow};
use actors::metrics::{WS_CLOSED, WS_MESSAGES_SENT, WS_SESSIONS};
use actors::model::now_ms;
use actors::protocol::ws::{self, BAD_REQUEST};
use metrics::{counter, gauge};
use parking_lot::Mutex;
use serde::Deserialize;
use uuid::Uuid;

use crate::api::ApiState;
use crate::api::access::UserViewer;
use crate::auth::Principal;
use crate::config::{ApiConfig, WsConfig};

/// What the WebSocket sessions of a node share.
#[derive(Clone)]
pub struct WsState {
    pub hub: Arc<LiveHub>,
    pub config: WsConfig,
    pub limits: Limits,
    users: Arc<Mutex<HashMap<Uuid, UserSeats>>>,
}

/// One user's open sessions and the subscriptions they hold.
struct UserSeats {
    sessions: usize,
    subscriptions: Arc<AtomicUsize>,
}

/// A session's place among its user's (released when dropped).
struct Seat {
    users: Arc<Mutex<HashMap<Uuid, UserSeats>>>,
    user: Uuid,
    subscriptions: Arc<AtomicUsize>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut users = self.users.lock();
        if let Some(seats) = users.get_mut(&self.user) {
            seats.sessions -= 1;
            if seats.sessions == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl WsState {
    pub fn new(hub: Arc<LiveHub>, config: WsConfig, api: &ApiConfig) -> WsState {
        let limits = Limits {
            max_keys: api.max_keys_per_request,
            max_points: api
                .max_intervals
                .max(api.default_limit)
                .min(api.max_points_per_response),
            max_entities: config.max_entities_per_subscription,
            max_values: api.max_points_per_response,
        };
        WsState {
            hub,
            config,
            limits,
            users: Arc::default(),
        }
    }

    fn seat(&self, user: Uuid) -> Option<Seat> {
        let mut users = self.users.lock();
        let seats = users.entry(user).or_insert_with(|| UserSeats {
            sessions: 0,
            subscriptions: Arc::default(),
        });
        if seats.sessions >= self.config.max_sessions_per_user {
            return None;
        }
        seats.sessions += 1;
        Some(Seat {
            users: self.users.clone(),
            user,
            subscriptions: seats.subscriptions.clone(),
        })
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/ws", web::get().to(open))
        .route("/api/ws/plugins/telemetry", web::get().to(open))
        .route("/api/ws/plugins/{kind}", web::get().to(unknown));
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn open(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<ApiState>,
    query: web::Query<TokenQuery>,
) -> actix_web::Result<HttpResponse> {
    use actix_web::FromRequest;
    let max = state.ws.config.max_frame_size;
    let limit = FrameLimit::new(max);
    let oversized = Oversized(limit.exceeded.clone());
    let mut guarded = limited(body.into_inner(), limit);
    let body = web::Payload::from_request(&req, &mut guarded).await?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let token = query.into_inner().token.filter(|t| !t.is_empty());
    actix_web::rt::spawn(run(state.into_inner(), session, stream, token, oversized));
    Ok(response)
}

/// `/api/ws/plugins/<other>`: upgraded, then closed as ThingsBoard does.
async fn unknown(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, session, _stream) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(close(
        session,
        CloseCode::Invalid,
        "Unknown session type",
        "protocol",
    ));
    Ok(response)
}

/// Why a session ends: its close code, reason and `reason` label.
struct End {
    code: CloseCode,
    reason: String,
    label: &'static str,
}

impl End {
    fn new(code: CloseCode, reason: impl Into<String>, label: &'static str) -> End {
        End {
            code,
            reason: reason.into(),
            label,
        }
    }
}

/// ThingsBoard's "session not reliable" code.
const NOT_RELIABLE: u16 = 4500;

async fn close(session: Session, code: CloseCode, reason: &str, label: &'static str) {
    counter!(WS_CLOSED, "reason" => label).increment(1);
    // A client that reads nothing cannot take the close frame either: then the socket just
    // goes when the session is dropped.
    let reason = CloseReason {
        code,
        description: Some(reason.chars().take(100).collect()),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), session.close(Some(reason))).await;
}

async fn run(
    state: Arc<ApiState>,
    mut session: Session,
    mut stream: AggregatedMessageStream,
    token: Option<String>,
    frames: Oversized,
) {
    let open = OpenSession::new();
    let end = serve(&state, &mut session, &mut stream, token, &frames).await;
    drop(open);
    match end {
        Some(end) => close(session, end.code, &end.reason, end.label).await,
        None => counter!(WS_CLOSED, "reason" => "client").increment(1),
    }
}

/// Counts a session in `engine_ws_sessions` while it lives (a panic included).
struct OpenSession;

impl OpenSession {
    fn new() -> OpenSession {
        gauge!(WS_SESSIONS).increment(1.0);
        OpenSession
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        gauge!(WS_SESSIONS).decrement(1.0);
    }
}

/// Answers a client's ping; `Some` when the session is to end. A client that pings and never
/// reads cannot hold the session up: the pong waits `send_timeout` at most.
async fn pong(session: &mut Session, payload: &[u8], config: &WsConfig) -> Option<Option<End>> {
    match tokio::time::timeout(config.send_timeout, session.pong(payload)).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(None),
        Err(_) => Some(Some(send_timed_out())),
    }
}

/// Runs the session until it ends; `None` when the client closed it or went away.
async fn serve(
    state: &ApiState,
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
    token: Option<String>,
    frames: &Oversized,
) -> Option<End> {
    let config = &state.ws.config;
    let (user, first) = match token {
        Some(token) => match state.auth.verify_access(&token) {
            Ok(user) => (user, None),
            Err(e) => return Some(End::new(CloseCode::Error, e.to_string(), "auth")),
        },
        None => match authenticate(state, session, stream, frames).await {
            Ok(authenticated) => authenticated,
            Err(end) => return end,
        },
    };
    let Some(seat) = state.ws.seat(user.user_id) else {
        return Some(End::new(
            CloseCode::Policy,
            "Max sessions limit reached!",
            "limit",
        ));
    };
    let (watch, mut inbox) = state.ws.hub.watcher(config.max_pending_updates);
    let overflow = watch.overflow();
    let viewer = Arc::new(UserViewer {
        access: state.access(),
        user,
    });
    let mut subs = Subscriptions::new(
        viewer,
        state.store.clone(),
        watch,
        state.ws.limits,
        Budget::new(
            seat.subscriptions.clone(),
            config.max_subscriptions_per_user,
        ),
    );
    let mut out = Vec::new();
    if let Some(first) = first
        && let Some(end) = commands(&mut subs, first, session, &mut out, config, &overflow).await
    {
        return end;
    }
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_pong = Instant::now();
    loop {
        tokio::select! {
            () = overflow.wait() => return Some(overflowed_end()),
            message = stream.recv() => {
                let text = match message {
                    None => return None,
                    Some(Err(e)) => return protocol_error(&e, frames),
                    Some(Ok(AggregatedMessage::Text(text))) => text,
                    Some(Ok(AggregatedMessage::Ping(payload))) => {
                        if let Some(end) = pong(session, &payload, config).await {
                            return end;
                        }
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {
                        last_pong = Instant::now();
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        return Some(End::new(
                            CloseCode::Unsupported,
                            "Binary messages are not supported",
                            "protocol",
                        ));
                    }
                    Some(Ok(AggregatedMessage::Close(reason))) => return Some(client_closed(reason)),
                };
                match ws::parse(&text) {
                    Ok(frame) => {
                        if let Some(end) =
                            commands(&mut subs, frame.cmds, session, &mut out, config, &overflow)
                                .await
                        {
                            return end;
                        }
                    }
                    Err(_) => {
                        let error = ws::data_error(1, BAD_REQUEST, "Failed to parse the payload");
                        if let Some(end) = send(session, error, config, &overflow).await {
                            return end;
                        }
                    }
                }
            }
            changes = inbox.recv() => {
                // One change at a time, sent before the next is rendered: what waits for the
                // socket is at most one change's messages.
                for change in &changes? {
                    out.clear();
                    subs.change(change, &mut out);
                    for message in out.drain(..) {
                        if let Some(end) = send(session, message, config, &overflow).await {
                            return end;
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if last_pong.elapsed() >= config.pong_timeout {
                    return Some(End::new(
                        CloseCode::Other(NOT_RELIABLE),
                        "No response to ping",
                        "no_pong",
                    ));
                }
                match tokio::time::timeout(config.send_timeout, session.ping(b"")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => return Some(send_timed_out()),
                }
            }
        }
    }
}

/// A session without a token in its URL: its first message must bring an `authCmd`.
/// Returns the user and the commands that came with it.
async fn authenticate(
    state: &ApiState,
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
    frames: &Oversized,
) -> Result<(Principal, Option<Vec<ws::Cmd>>), Option<End>> {
    let deadline = tokio::time::sleep(state.ws.config.auth_timeout);
    tokio::pin!(deadline);
    loop {
        let message = tokio::select! {
            () = &mut deadline => {
                return Err(Some(End::new(CloseCode::Policy, "Auth timeout", "auth")));
            }
            message = stream.recv() => message,
        };
        let text = match message {
            None => return Err(None),
            Some(Ok(AggregatedMessage::Close(reason))) => return Err(Some(client_closed(reason))),
            Some(Err(e)) => return Err(protocol_error(&e, frames)),
            Some(Ok(AggregatedMessage::Ping(payload))) => {
                if let Some(end) = pong(session, &payload, &state.ws.config).await {
                    return Err(end);
                }
                continue;
            }
            Some(Ok(AggregatedMessage::Pong(_))) => continue,
            Some(Ok(AggregatedMessage::Binary(_))) => {
                return Err(Some(End::new(
                    CloseCode::Unsupported,
                    "Binary messages are not supported",
                    "protocol",
                )));
            }
            Some(Ok(AggregatedMessage::Text(text))) => text,
        };
        let Ok(frame) = ws::parse(&text) else {
            return Err(Some(End::new(
                CloseCode::Invalid,
                "Failed to parse the payload",
                "auth",
            )));
        };
        let Some(token) = frame.auth.and_then(|a| a.token).filter(|t| !t.is_empty()) else {
            return Err(Some(End::new(
                CloseCode::Policy,
                "Auth cmd is missing",
                "auth",
            )));
        };
        return match state.auth.verify_access(&token) {
            Ok(user) => Ok((user, Some(frame.cmds))),
            Err(e) => Err(Some(End::new(CloseCode::Invalid, e.to_string(), "auth"))),
        };
    }
}

/// Runs a frame's commands and sends their answers; `Some` when the session is to end.
async fn commands(
    subs: &mut Subscriptions,
    cmds: Vec<ws::Cmd>,
    session: &mut Session,
    out: &mut Vec<String>,
    config: &WsConfig,
    overflow: &Overflow,
) -> Option<Option<End>> {
    for cmd in cmds {
        out.clear();
        let outcome = subs.command(cmd, now_ms(), out).await;
        for message in out.drain(..) {
            if let Some(end) = send(session, message, config, overflow).await {
                return Some(end);
            }
        }
        if let Err(closing) = outcome {
            return Some(Some(End::new(
                CloseCode::from(closing.code),
                closing.reason,
                "limit",
            )));
        }
    }
    None
}

/// Sends one message; `Some` when the session is to end (`None` inside: the client is gone).
/// A client that does not read holds the send up: its queue overflowing ends the wait.
async fn send(
    session: &mut Session,
    message: String,
    config: &WsConfig,
    overflow: &Overflow,
) -> Option<Option<End>> {
    let sent = tokio::time::timeout(config.send_timeout, session.text(message));
    tokio::select! {
        biased;
        result = sent => match result {
            Ok(Ok(())) => {
                counter!(WS_MESSAGES_SENT).increment(1);
                None
            }
            Ok(Err(_)) => Some(None),
            Err(_) => Some(Some(send_timed_out())),
        },
        () = overflow.wait() => Some(Some(overflowed_end())),
    }
}

fn overflowed_end() -> End {
    End::new(
        CloseCode::Policy,
        "Max pending updates limit reached!",
        "overflow",
    )
}

/// The client closed: its close is answered with its own code (browsers report an
/// unanswered close as 1006).
fn client_closed(reason: Option<CloseReason>) -> End {
    let code = reason.map_or(CloseCode::Normal, |r| r.code);
    End::new(code, "", "client")
}

fn send_timed_out() -> End {
    End::new(
        CloseCode::Other(NOT_RELIABLE),
        "Client does not read",
        "send_timeout",
    )
}

/// How a broken frame ends the session: `None` when the client just went away.
fn protocol_error(e: &actix_ws::ProtocolError, frames: &Oversized) -> Option<End> {
    use actix_ws::ProtocolError as P;
    let too_big = || End::new(CloseCode::Size, "Message too big", "protocol");
    match e {
        _ if frames.0.get() => Some(too_big()),
        P::Overflow => Some(too_big()),
        // Text that is not UTF-8.
        P::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => Some(End::new(
            CloseCode::Invalid,
            "Text is not UTF-8",
            "protocol",
        )),
        // Fragments adding up past the limit.
        P::Io(io) if io.to_string().contains("continuation") => Some(too_big()),
        // The connection ended under the frame.
        P::Io(_) => None,
        other => Some(End::new(CloseCode::Protocol, other.to_string(), "protocol")),
    }
}

/// Set when [`FrameLimit`] cut a socket's stream: its error is a frame too big.
pub struct Oversized(std::rc::Rc<std::cell::Cell<bool>>);

/// Watches the frame headers of a socket's incoming bytes and ends the stream as soon as one
/// declares a payload over `max` (actix-http would buffer the whole frame before it refused
/// it: a peer could make it hold gigabytes).
pub struct FrameLimit {
    max: u64,
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    exceeded: std::rc::Rc<std::cell::Cell<bool>>,
}

impl FrameLimit {
    fn new(max: usize) -> FrameLimit {
        FrameLimit {
            max: u64::try_from(max).unwrap_or(u64::MAX),
            header: [0; 14],
            have: 0,
            remaining: 0,
            exceeded: std::rc::Rc::default(),
        }
    }

    /// The header's length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let masked = usize::from(self.header[1] & 0x80 != 0) * 4;
        2 + masked
            + match self.header[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            }
    }

    /// Reads a chunk; false once a frame is over the limit.
    fn scan(&mut self, mut chunk: &[u8]) -> bool {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                chunk = &chunk[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            let want = if self.have < 2 { 2 } else { self.header_len() };
            let take = (want - self.have).min(chunk.len());
            self.header[self.have..self.have + take].copy_from_slice(&chunk[..take]);
            self.have += take;
            chunk = &chunk[take..];
            if self.have < 2 || self.have < self.header_len() {
                continue;
            }
            let length = match self.header[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            if length > self.max {
                self.exceeded.set(true);
                return false;
            }
            self.have = 0;
            self.remaining = length;
        }
        true
    }
}

/// The request's body (the client's frames) through a [`FrameLimit`].
fn limited(payload: actix_web::dev::Payload, mut limit: FrameLimit) -> actix_web::dev::Payload {
    use futures::StreamExt;
    let stream = payload.map(move |chunk| match chunk {
        Ok(bytes) if !limit.scan(&bytes) => Err(actix_web::error::PayloadError::Overflow),
        other => other,
    });
    actix_web::dev::Payload::from(Box::pin(stream) as actix_http::BoxedPayloadStream)
}

#[cfg(test)]
mod tests {
    use super::FrameLimit;

    /// A frame header: FIN + opcode, then the length in its 7-bit, 16-bit or 64-bit form.
    fn header(opcode: u8, length: u64, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut h = vec![0x80 | opcode];
        match length {
            0..=125 => h.push(mask_bit | u8::try_from(length).expect("fits")),
            126..=0xffff => {
                h.push(mask_bit | 126);
                h.extend_from_slice(&u16::try_from(length).expect("fits").to_be_bytes());
            }
            _ => {
                h.push(mask_bit | 127);
                h.extend_from_slice(&length.to_be_bytes());
            }
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    fn frame(opcode: u8, length: usize, masked: bool) -> Vec<u8> {
        let mut f = header(opcode, length as u64, masked);
        f.extend(std::iter::repeat_n(b'x', length));
        f
    }

    /// Feeds `bytes` in chunks of `chunk`: whether every frame was within the limit.
    fn scan(max: usize, bytes: &[u8], chunk: usize) -> bool {
        let mut limit = FrameLimit::new(max);
        bytes.chunks(chunk).all(|c| limit.scan(c))
    }

    #[test]
    fn frames_within_the_limit_pass_whatever_the_chunking() {
        let mut stream = Vec::new();
        for (op, len) in [
            (1, 0),
            (1, 125),
            (9, 125),
            (1, 126),
            (2, 4096),
            (0, 300),
            (10, 3),
        ] {
            stream.extend(frame(op, len, true));
        }
        stream.extend(frame(1, 5, false));
        for chunk in [1, 2, 3, 7, 13, 64, 4096, stream.len()] {
            assert!(scan(4096, &stream, chunk), "chunks of {chunk}");
        }
    }

    #[test]
    fn a_header_over_the_limit_is_refused_before_its_payload() {
        for (length, max) in [
            (4097u64, 4096usize),
            (70_000, 65_535),
            (1 << 40, 32_768),
            (u64::MAX, 32_768),
        ] {
            for masked in [true, false] {
                let h = header(1, length, masked);
                for chunk in [1, 2, 5, h.len()] {
                    assert!(!scan(max, &h, chunk), "{length} > {max}, chunks of {chunk}");
                }
            }
        }
        // After good frames, split across chunks.
        let mut stream = frame(1, 100, true);
        stream.extend(header(1, 5000, true));
        assert!(!scan(4096, &stream, 3));
        let mut limit = FrameLimit::new(4096);
        assert!(!limit.scan(&stream));
        assert!(limit.exceeded.get());
    }
}
