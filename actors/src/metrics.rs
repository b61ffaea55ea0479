//! Every metric name the engine exports, in one place: the Grafana dashboards are checked
//! against this list.
//!
//! Convention: `engine_<subsystem>_<name>_<unit>`; counters end in `_total`; durations are in
//! seconds and sizes in bytes; labels are low-cardinality (`transport`, `reason`, `mailbox`),
//! never a device id.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const MESSAGES_RECEIVED: &str = "engine_messages_received_total";
pub const MESSAGES_ACCEPTED: &str = "engine_messages_accepted_total";
pub const MESSAGES_REJECTED: &str = "engine_messages_rejected_total";
pub const DATA_POINTS_RECEIVED: &str = "engine_data_points_received_total";
pub const ACK_LATENCY: &str = "engine_ack_latency_seconds";

pub const SESSIONS_ACTIVE: &str = "engine_sessions_active";
pub const SESSIONS_OPENED: &str = "engine_sessions_opened_total";
pub const SESSIONS_CLOSED: &str = "engine_sessions_closed_total";
pub const SESSIONS_FAILED: &str = "engine_sessions_failed_total";
pub const SESSIONS_HIBERNATED: &str = "engine_sessions_hibernated_total";
pub const CONNECTIONS_REFUSED: &str = "engine_connections_refused_total";

pub const MAILBOX_DEPTH: &str = "engine_mailbox_depth";
/// A histogram of each wait; its `_sum` is the total time senders were blocked.
pub const MAILBOX_BLOCKED: &str = "engine_mailbox_blocked_seconds";

pub const QUEUE_DEPTH: &str = "engine_queue_depth_messages";
pub const QUEUE_PRODUCE_BLOCKED: &str = "engine_queue_produce_blocked_seconds";
pub const QUEUE_LAG: &str = "engine_queue_lag_messages";

pub const SINK_BATCH_MESSAGES: &str = "engine_sink_batch_messages";
pub const SINK_WRITE_LATENCY: &str = "engine_sink_write_latency_seconds";
pub const DATA_POINTS_STORED: &str = "engine_data_points_stored_total";
pub const STORAGE_ERRORS: &str = "engine_storage_errors_total";
pub const SINK_RESTARTS: &str = "engine_sink_restarts_total";
pub const RULE_CHAIN_MESSAGES: &str = "engine_rule_chain_messages_total";
pub const DEAD_LETTERS: &str = "engine_dead_letters_total";
pub const QUEUE_IN_FLIGHT: &str = "engine_queue_in_flight_messages";
pub const QUEUE_PRODUCE_LATENCY: &str = "engine_queue_produce_latency_seconds";

pub const INTEGRATION_MESSAGES: &str = "engine_integration_messages_total";
pub const INTEGRATION_ERRORS: &str = "engine_integration_errors_total";
pub const INTEGRATION_CONVERSIONS: &str = "engine_integration_conversions_total";
pub const INTEGRATION_CONVERSION_SECONDS: &str = "engine_integration_conversion_seconds";
pub const INTEGRATION_UNKNOWN_KEY: &str = "engine_integration_unknown_key_total";
pub const DEVICES_CREATED: &str = "engine_integration_devices_created_total";
pub const CONVERTER_POOL_QUEUED: &str = "engine_converter_pool_queued_jobs";

// ---- CoAP endpoint (engine/src/transport/coap) ------------------------------------------------
// Every datagram a peer sends ends in one of: an uplink (the integration metrics), a duplicate,
// dropped without an answer, or refused by the endpoint itself with an answer.

/// Datagrams dropped without an answer, by reason (`COAP_DROP_REASONS`).
pub const COAP_DROPPED: &str = "engine_coap_dropped_total";
/// Retransmitted requests answered from the exchange cache (or ignored while running).
pub const COAP_DUPLICATES: &str = "engine_coap_duplicates_total";
/// Requests the endpoint answered with an error (or a Reset) before any integration, by reason
/// (`COAP_REFUSE_REASONS`).
pub const COAP_REFUSED: &str = "engine_coap_refused_total";
/// State dropped before its time to stay within a bound, by `what` (`exchange`,
/// `block_transfer`).
pub const COAP_EVICTED: &str = "engine_coap_evicted_total";
/// Exchanges kept for retransmissions now.
pub const COAP_EXCHANGES: &str = "engine_coap_exchanges";
/// Bytes charged to Block1 uploads being assembled now.
pub const COAP_BLOCK_BYTES: &str = "engine_coap_block_bytes";

/// Every `reason` of `engine_coap_dropped_total`: `malformed` (not CoAP, or a non-confirmable
/// message with a format error), `version` (not version 1), `unexpected` (an acknowledgement,
/// reset or non-confirmable Empty message), `response` and `reserved_code` (non-confirmable),
/// `bad_option` (a non-confirmable request with a bad critical option), `overloaded`.
pub const COAP_DROP_REASONS: &[&str] = &[
    "malformed",
    "version",
    "unexpected",
    "response",
    "reserved_code",
    "bad_option",
    "overloaded",
];

/// Every `reason` of `engine_coap_refused_total`: a Reset for `malformed`, `response` and
/// `reserved_code` confirmable messages; 4.02 `bad_option`, 5.05 `proxy`, 4.05 `method`, 4.04
/// `path`, 4.00 `bad_block` (SZX 7), 4.08 `block_incomplete`, 4.13 `too_large`, 5.00
/// `internal_error`.
pub const COAP_REFUSE_REASONS: &[&str] = &[
    "malformed",
    "response",
    "reserved_code",
    "bad_option",
    "proxy",
    "method",
    "path",
    "bad_block",
    "block_incomplete",
    "too_large",
    "internal_error",
];

fn describe_coap() {
    describe_counter!(
        COAP_DROPPED,
        "CoAP datagrams dropped without an answer, by reason"
    );
    describe_counter!(
        COAP_DUPLICATES,
        "Retransmitted confirmable CoAP requests answered from the exchange cache"
    );
    describe_counter!(
        COAP_REFUSED,
        "CoAP requests refused by the endpoint before any integration, by reason"
    );
    describe_counter!(
        COAP_EVICTED,
        "CoAP exchanges and Block1 uploads dropped early to stay within their bounds, by what"
    );
    describe_gauge!(COAP_EXCHANGES, "CoAP exchanges kept for retransmissions");
    describe_gauge!(
        COAP_BLOCK_BYTES,
        Unit::Bytes,
        "Bytes of CoAP Block1 uploads being assembled"
    );
}

fn register_zero_coap() {
    use metrics::{counter, gauge};
    for &reason in COAP_DROP_REASONS {
        counter!(COAP_DROPPED, "reason" => reason).increment(0);
    }
    for &reason in COAP_REFUSE_REASONS {
        counter!(COAP_REFUSED, "reason" => reason).increment(0);
    }
    for what in ["exchange", "block_transfer"] {
        counter!(COAP_EVICTED, "what" => what).increment(0);
    }
    counter!(COAP_DUPLICATES).increment(0);
    gauge!(COAP_EXCHANGES).increment(0.0);
    gauge!(COAP_BLOCK_BYTES).increment(0.0);
}
// ---- end of CoAP endpoint ---------------------------------------------------------------------

// --- REST API authentication (engine/src/auth.rs) ---
/// Login attempts by `outcome` (`AUTH_LOGIN_OUTCOMES`): every refusal of a login limit is one.
pub const AUTH_LOGINS: &str = "engine_auth_logins_total";
/// Lockouts started, by `kind` (`user`, `address`).
pub const AUTH_LOCKOUTS: &str = "engine_auth_lockouts_total";
/// Logins waiting for a password-checking thread.
pub const AUTH_LOGIN_QUEUE: &str = "engine_auth_login_queue_jobs";
/// Access and refresh tokens refused, by `reason` (`AUTH_TOKEN_REFUSALS`).
pub const AUTH_TOKENS_REFUSED: &str = "engine_auth_tokens_refused_total";
/// Sessions ended by `POST /api/auth/logout`.
pub const AUTH_LOGOUTS: &str = "engine_auth_logouts_total";
/// Logged-out sessions remembered until their tokens expire.
pub const AUTH_REVOKED_SESSIONS: &str = "engine_auth_revoked_sessions";

/// Every `outcome` of `engine_auth_logins_total`.
pub const AUTH_LOGIN_OUTCOMES: &[&str] = &[
    "success",
    "bad_credentials",
    "user_locked",
    "address_limited",
    "overloaded",
    "demo_remote",
    "unavailable",
];

/// Every `reason` of `engine_auth_tokens_refused_total`.
pub const AUTH_TOKEN_REFUSALS: &[&str] =
    &["invalid", "expired", "other_user", "outdated", "revoked"];
// --- end of REST API authentication ---
// --- MQTT listener: connection limits, protocol errors, peer-triggered logs (issue 10) ---------

/// MQTT connections open now: TCP sockets from accept to close, before and after CONNECT
/// (capped by `mqtt.max_connections`).
pub const MQTT_CONNECTIONS_OPEN: &str = "engine_mqtt_connections_open";
/// Sessions closed because their device connected again past
/// `mqtt.max_connections_per_device`.
pub const MQTT_SESSIONS_TAKEN_OVER: &str = "engine_mqtt_sessions_taken_over_total";
/// Connections closed for breaking the protocol, by reason.
pub const MQTT_PROTOCOL_ERRORS: &str = "engine_mqtt_protocol_errors_total";
/// Log lines a peer could trigger that the rate limit held back.
pub const MQTT_LOG_LINES_SUPPRESSED: &str = "engine_mqtt_log_lines_suppressed_total";
/// Server-to-device messages waiting in the connections' outbound channels (all connections;
/// each channel holds at most `mqtt.outbound_capacity`).
pub const MQTT_OUTBOUND_DEPTH: &str = "engine_mqtt_outbound_depth_messages";
/// Waits of producers on a full outbound channel (a device not reading fast enough); the
/// histogram's `_sum` is the total time producers were held back.
pub const MQTT_OUTBOUND_BLOCKED: &str = "engine_mqtt_outbound_blocked_seconds";
/// Server-to-device messages by `outcome`: `written` to the connection, or `dropped` because
/// the connection closed first.
pub const MQTT_OUTBOUND_MESSAGES: &str = "engine_mqtt_outbound_messages_total";
/// Connections whose writer waits for the peer to take a packet (its socket is full, or its
/// QoS 1 in flight is at its Receive Maximum): devices not reading what the server sends.
pub const MQTT_OUTBOUND_STALLED: &str = "engine_mqtt_outbound_stalled_connections";

/// Every `reason` of `engine_connections_refused_total` only the MQTT listener gives.
pub const MQTT_REFUSE_REASONS: &[&str] = &[
    "max_connections",
    "unsupported_protocol",
    "bad_auth_method",
    "unavailable",
];

/// Every `reason` of `engine_mqtt_protocol_errors_total`.
pub const MQTT_PROTOCOL_ERROR_REASONS: &[&str] = &[
    "not_mqtt",
    "second_connect",
    "empty_topic",
    "nul_in_topic",
    "wildcard_in_topic",
    "unexpected_auth",
    "malformed",
    "violation",
    "timeout",
];

fn describe_mqtt() {
    describe_gauge!(
        MQTT_CONNECTIONS_OPEN,
        "MQTT connections open now (sockets, before and after CONNECT)"
    );
    describe_counter!(
        MQTT_SESSIONS_TAKEN_OVER,
        "MQTT sessions closed because their device connected again past its session limit"
    );
    describe_counter!(
        MQTT_PROTOCOL_ERRORS,
        "MQTT connections closed for breaking the protocol, by reason"
    );
    describe_counter!(
        MQTT_LOG_LINES_SUPPRESSED,
        "Log lines an MQTT peer triggered that the rate limit held back"
    );
    describe_gauge!(
        MQTT_OUTBOUND_DEPTH,
        "Server-to-device MQTT messages waiting in connections' outbound channels"
    );
    describe_histogram!(
        MQTT_OUTBOUND_BLOCKED,
        Unit::Seconds,
        "Waits of producers on a connection's full outbound channel"
    );
    describe_counter!(
        MQTT_OUTBOUND_MESSAGES,
        "Server-to-device MQTT messages, by outcome (written, dropped)"
    );
    describe_gauge!(
        MQTT_OUTBOUND_STALLED,
        "MQTT connections whose writer waits for the device to take a packet"
    );
}

fn register_zero_mqtt() {
    use metrics::counter;
    for &reason in MQTT_REFUSE_REASONS {
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => reason).increment(0);
    }
    for &reason in MQTT_PROTOCOL_ERROR_REASONS {
        counter!(MQTT_PROTOCOL_ERRORS, "reason" => reason).increment(0);
    }
    counter!(MQTT_SESSIONS_TAKEN_OVER).increment(0);
    counter!(MQTT_LOG_LINES_SUPPRESSED).increment(0);
    metrics::gauge!(MQTT_CONNECTIONS_OPEN).increment(0.0);
    metrics::gauge!(MQTT_OUTBOUND_DEPTH).increment(0.0);
    metrics::gauge!(MQTT_OUTBOUND_STALLED).increment(0.0);
    // One zero wait makes the series exist before the first real one (its `_sum` is unchanged).
    metrics::histogram!(MQTT_OUTBOUND_BLOCKED).record(0.0);
    for outcome in ["written", "dropped"] {
        counter!(MQTT_OUTBOUND_MESSAGES, "outcome" => outcome).increment(0);
    }
}

// --- end of the MQTT listener's block ---------------------------------------------------------
// --- HTTP listener and REST API limits (issue 10) --------------------------------------------
/// Connections the HTTP listener holds open now.
pub const HTTP_CONNECTIONS_OPEN: &str = "engine_http_connections_open";
/// Requests cut off because the client sent too slowly, by `phase` (`header`, `body`).
pub const HTTP_TIMEOUTS: &str = "engine_http_timeouts_total";
/// REST requests refused by a limit or a validation, by `reason`.
pub const API_REQUESTS_REFUSED: &str = "engine_api_requests_refused_total";
/// Storage reads running now, by `kind` (`heavy`: range reads; `light`: everything else).
pub const STORE_READS_RUNNING: &str = "engine_store_reads_running";
/// Storage reads waiting for their turn, by `kind`.
pub const STORE_READS_WAITING: &str = "engine_store_reads_waiting";
/// Every `reason` of `engine_api_requests_refused_total`.
pub const API_REFUSE_REASONS: &[&str] = &[
    "too_many_keys",
    "too_many_points",
    "too_many_intervals",
    "bad_range",
    "time_budget",
    "busy",
    "invalid_name",
    "invalid_token",
];

fn describe_http() {
    describe_gauge!(
        HTTP_CONNECTIONS_OPEN,
        "Connections the HTTP listener holds open"
    );
    describe_counter!(
        HTTP_TIMEOUTS,
        "HTTP connections cut off because the client was too slow, by phase (header and body: answered 408; idle: nothing in progress for keep_alive + header_timeout)"
    );
    describe_counter!(
        API_REQUESTS_REFUSED,
        "REST requests refused by a limit or a validation, by reason"
    );
    describe_gauge!(
        STORE_READS_RUNNING,
        "Storage reads running, by kind (heavy: range reads; light: the others)"
    );
    describe_gauge!(
        STORE_READS_WAITING,
        "Storage reads waiting for their turn, by kind"
    );
}

fn register_zero_http() {
    use metrics::{counter, gauge};
    counter!(CONNECTIONS_REFUSED, "transport" => "http", "reason" => "too_many_connections")
        .increment(0);
    gauge!(HTTP_CONNECTIONS_OPEN).increment(0.0);
    for phase in ["header", "body", "idle"] {
        counter!(HTTP_TIMEOUTS, "phase" => phase).increment(0);
    }
    for &reason in API_REFUSE_REASONS {
        counter!(API_REQUESTS_REFUSED, "reason" => reason).increment(0);
    }
    for kind in ["heavy", "light"] {
        gauge!(STORE_READS_RUNNING, "kind" => kind).increment(0.0);
        gauge!(STORE_READS_WAITING, "kind" => kind).increment(0.0);
    }
}
// --- end of HTTP listener and REST API limits -------------------------------------------------

// --- Ingress limits (issue 10): keys per device, values storage cannot hold, peer-triggered
// log lines. Refusals themselves are `engine_messages_rejected_total` reasons.
/// Distinct (device, key) pairs the ingress tracks to enforce `limits.max_keys_per_device`.
pub const INGRESS_TRACKED_KEYS: &str = "engine_ingress_tracked_keys";
/// Values a sink left out of a batch because storage could not give them back (a non-finite
/// DOUBLE that passed every earlier check), by reason.
pub const SINK_VALUES_DROPPED: &str = "engine_sink_values_dropped_total";
/// Log lines a peer triggered that a rate limit held back, by log site.
pub const LOG_LINES_SUPPRESSED: &str = "engine_log_lines_suppressed_total";
/// Every `site` of `engine_log_lines_suppressed_total`.
pub const LOG_SITES: &[&str] = &["uplink_rejected", "sink_value_dropped"];
// --- end of ingress limits

// --- Cluster: the device registry over a shared store, rule-chain supervision, rebalances ---
/// Lookups of a token or device name the node does not hold, by `result`: `hit` (answered
/// "unknown" from the negative cache) or `miss` (looked up in the shared device table).
pub const REGISTRY_NEGATIVE_CACHE: &str = "engine_registry_negative_cache_total";
/// Reads of the shared device table (ClickHouse), by `by` (`token`, `name`, `id`, `check`).
pub const REGISTRY_TABLE_LOOKUPS: &str = "engine_registry_table_lookups_total";
/// Device creations refused, by `reason` (`tenant_limit`).
pub const REGISTRY_DEVICES_REFUSED: &str = "engine_registry_devices_refused_total";
/// Creations that lost to another node's creation of the same device at the same moment.
pub const REGISTRY_CREATION_CONFLICTS: &str = "engine_registry_creation_conflicts_total";
/// Rule chains restarted after they failed.
pub const RULE_CHAIN_RESTARTS: &str = "engine_rule_chain_restarts_total";
/// Consumer-group rebalance events of this node, by `kind` (`assign`, `revoke`).
pub const QUEUE_REBALANCES: &str = "engine_queue_rebalances_total";
/// Queue partitions this node reads now (a Kafka consumer-group member's assignment).
pub const QUEUE_PARTITIONS_ASSIGNED: &str = "engine_queue_partitions_assigned";
/// Downlinks handed to this node's sessions, by `outcome`: `delivered` to a session,
/// `dropped` (its channel full or it gone), `no_route` (for another node, no bus),
/// `announce_failed` (a session's subscriptions could not be told to the owner),
/// `no_session` (none of this node's sessions wanted it), `answer_dropped` (an answer to a
/// device's request waited 30 s for a device that does not read).
pub const DOWNLINKS: &str = "engine_downlinks_total";
/// Server-side RPC calls from the REST API answered on this node, by `outcome`: `sent`
/// (one-way, handed to the device), `replied`, `timeout` (sent, no reply in time),
/// `not_delivered` (the device never took it), `refused` (too many pending for the device),
/// `busy` (too many calls waiting on the node), `persisted` (a persistent request stored and
/// handed to the owner).
pub const RPC_CALLS: &str = "engine_rpc_calls_total";
/// Persistent RPC records kept by this node as the devices' owner, by `outcome`: `written` (a
/// status change stored), `gone` (the record was deleted or already final), `write_failed`,
/// `reloaded` (a queued record given to the owner after a start), `reload_failed`.
pub const RPC_RECORDS: &str = "engine_rpc_records_total";
/// Stored changes handed to WebSocket sessions watching their device, by `outcome`: `queued`,
/// `overflow` (the session's queue was full: it is closed).
pub const LIVE_CHANGES: &str = "engine_live_changes_total";
/// WebSocket sessions open now.
pub const WS_SESSIONS: &str = "engine_ws_sessions";
/// WebSocket sessions closed, by `reason`: `client`, `auth` (no or bad credentials),
/// `limit` (sessions or subscriptions per user), `overflow` (pending updates), `no_pong`,
/// `send_timeout`, `protocol` (a frame too big or not text).
pub const WS_CLOSED: &str = "engine_ws_sessions_closed_total";
/// The `reason`s of [`WS_CLOSED`].
pub const WS_CLOSE_REASONS: &[&str] = &[
    "client",
    "auth",
    "limit",
    "overflow",
    "no_pong",
    "send_timeout",
    "protocol",
];
/// Messages sent to WebSocket clients.
pub const WS_MESSAGES_SENT: &str = "engine_ws_messages_sent_total";
/// Entries of the directory this node holds, by `kind` (customers, users, assets,
/// assignments, relations).
pub const DIRECTORY_ENTRIES: &str = "engine_directory_entries";
/// The `kind`s of [`DIRECTORY_ENTRIES`].
pub const DIRECTORY_KINDS: &[&str] = &["customers", "users", "assets", "assignments", "relations"];
/// Directory reads of a shared store that failed (the last one read stays in use).
pub const DIRECTORY_RELOAD_FAILURES: &str = "engine_directory_reload_failures_total";

/// Registers help texts and units with whatever recorder is installed.
pub fn describe() {
    describe_mqtt();
    describe_counter!(
        LIVE_CHANGES,
        "Stored changes handed to watching WebSocket sessions, by outcome (queued, overflow)"
    );
    describe_gauge!(WS_SESSIONS, "WebSocket sessions open now");
    describe_counter!(
        WS_CLOSED,
        "WebSocket sessions closed, by reason (client, auth, limit, overflow, no_pong, send_timeout, protocol)"
    );
    describe_counter!(WS_MESSAGES_SENT, "Messages sent to WebSocket clients");
    describe_gauge!(
        DIRECTORY_ENTRIES,
        "Directory entries this node holds, by kind (customers, users, assets, assignments, relations)"
    );
    describe_counter!(
        DIRECTORY_RELOAD_FAILURES,
        "Reads of the shared directory that failed (the last one read stays in use)"
    );
    describe_counter!(
        DOWNLINKS,
        "Downlinks for this node's sessions, by outcome (delivered, dropped, no_route, announce_failed, no_session, answer_dropped)"
    );
    describe_counter!(
        RPC_CALLS,
        "Server-side RPC calls answered, by outcome (sent, replied, timeout, not_delivered, refused, busy, persisted)"
    );
    describe_counter!(
        RPC_RECORDS,
        "Persistent RPC records kept by this node as owner, by outcome (written, gone, write_failed, reloaded, reload_failed)"
    );
    describe_integration_limits();
    describe_counter!(MESSAGES_RECEIVED, "Uplink messages received, by transport");
    describe_counter!(
        MESSAGES_ACCEPTED,
        "Uplink messages the queue accepted, by transport"
    );
    describe_counter!(
        MESSAGES_REJECTED,
        "Uplink messages refused, by transport and reason"
    );
    describe_counter!(
        DATA_POINTS_RECEIVED,
        "Key-value entries in accepted uplinks"
    );
    describe_histogram!(
        ACK_LATENCY,
        Unit::Seconds,
        "Receipt to acknowledgement, by transport"
    );
    describe_gauge!(SESSIONS_ACTIVE, "Device sessions open now, by transport");
    describe_counter!(SESSIONS_OPENED, "Device sessions opened, by transport");
    describe_counter!(SESSIONS_CLOSED, "Device sessions closed, by transport");
    describe_counter!(SESSIONS_FAILED, "Device session actors that crashed");
    describe_counter!(
        SESSIONS_HIBERNATED,
        "Idle device sessions whose actor was passivated until the next publish, by transport"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused, by transport and reason"
    );
    describe_gauge!(
        MAILBOX_DEPTH,
        "Messages waiting in bounded mailboxes, by mailbox"
    );
    describe_histogram!(
        MAILBOX_BLOCKED,
        Unit::Seconds,
        "Waits of senders on a full mailbox"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Messages in the queue not yet committed by a sink"
    );
    describe_histogram!(
        QUEUE_PRODUCE_BLOCKED,
        Unit::Seconds,
        "Waits of producers on a full queue"
    );
    describe_gauge!(
        QUEUE_LAG,
        "Messages produced but not yet committed, per consumer"
    );
    describe_histogram!(SINK_BATCH_MESSAGES, "Messages per storage write");
    describe_histogram!(
        SINK_WRITE_LATENCY,
        Unit::Seconds,
        "Duration of one storage write"
    );
    describe_counter!(
        DATA_POINTS_STORED,
        "Time-series points and attribute values written"
    );
    describe_counter!(
        STORAGE_ERRORS,
        "Failed storage writes, by kind (retryable, permanent)"
    );
    describe_counter!(SINK_RESTARTS, "Sinks restarted after a crash");
    describe_counter!(
        RULE_CHAIN_MESSAGES,
        "Messages through the rule chains, by outcome (save_timeseries, save_attributes, dropped, failed, device_state)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Messages storage refused for good, sent to the dead-letter topic, by reason"
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        "Messages handed to the queue and not yet confirmed by it"
    );
    describe_histogram!(
        QUEUE_PRODUCE_LATENCY,
        Unit::Seconds,
        "Hand-over to the queue until it confirmed holding the message (Kafka delivery report)"
    );
    describe_counter!(
        INTEGRATION_MESSAGES,
        "Uplinks received by an integration, by integration and type"
    );
    describe_counter!(
        INTEGRATION_ERRORS,
        "Integration uplinks that failed, by integration, type and reason"
    );
    describe_counter!(
        INTEGRATION_CONVERSIONS,
        "Uplink converter runs, by integration and type"
    );
    describe_histogram!(
        INTEGRATION_CONVERSION_SECONDS,
        Unit::Seconds,
        "Duration of one uplink converter run on the worker pool, by integration and type"
    );
    describe_counter!(
        INTEGRATION_UNKNOWN_KEY,
        "Integration requests for a routing key no enabled integration has, by type"
    );
    describe_counter!(
        DEVICES_CREATED,
        "Devices created by integrations on their first uplink, by integration"
    );
    describe_gauge!(
        CONVERTER_POOL_QUEUED,
        "Converter jobs waiting for a worker thread"
    );
    // REST API authentication
    describe_counter!(
        AUTH_LOGINS,
        "REST API login attempts, by outcome (success, bad_credentials, user_locked, \
         address_limited, overloaded, demo_remote, unavailable)"
    );
    describe_counter!(
        AUTH_LOCKOUTS,
        "Lockouts started after too many failed logins, by kind (user, address)"
    );
    describe_gauge!(
        AUTH_LOGIN_QUEUE,
        "Logins waiting for a password-checking thread"
    );
    describe_counter!(
        AUTH_TOKENS_REFUSED,
        "REST API tokens refused, by reason (invalid, expired, other_user, outdated, revoked)"
    );
    describe_counter!(AUTH_LOGOUTS, "Sessions ended by POST /api/auth/logout");
    describe_gauge!(
        AUTH_REVOKED_SESSIONS,
        "Logged-out sessions remembered until their tokens expire"
    );
    describe_http();
    describe_coap();
    // Ingress limits (issue 10).
    describe_gauge!(
        INGRESS_TRACKED_KEYS,
        "Distinct (device, key) pairs tracked for the keys-per-device limit"
    );
    describe_counter!(
        SINK_VALUES_DROPPED,
        "Values left out of a storage batch because storage could not give them back, by reason"
    );
    describe_counter!(
        LOG_LINES_SUPPRESSED,
        "Peer-triggered log lines held back by a rate limit, by site"
    );
    describe_cluster();
}

fn describe_cluster() {
    describe_counter!(
        REGISTRY_NEGATIVE_CACHE,
        "Lookups of unknown tokens and device names, by result (hit: answered from the negative cache, miss: looked up in the shared device table)"
    );
    describe_counter!(
        REGISTRY_TABLE_LOOKUPS,
        "Reads of the shared device table, by what was looked up"
    );
    describe_counter!(
        REGISTRY_DEVICES_REFUSED,
        "Device creations refused, by reason (tenant_limit)"
    );
    describe_counter!(
        REGISTRY_CREATION_CONFLICTS,
        "Device creations that lost to another node creating the same device at the same moment"
    );
    describe_counter!(RULE_CHAIN_RESTARTS, "Rule chains restarted after a failure");
    describe_counter!(
        QUEUE_REBALANCES,
        "Consumer-group rebalance events of this node, by kind (assign, revoke)"
    );
    describe_gauge!(
        QUEUE_PARTITIONS_ASSIGNED,
        "Queue partitions this node reads now (its share of the Kafka consumer group)"
    );
}

/// Every `reason` of `engine_integration_errors_total`.
pub const INTEGRATION_ERROR_REASONS: &[&str] = &[
    "disabled",
    "empty",
    "too_large",
    "converter",
    "refused",
    "overloaded",
    "queue",
];

/// Every `reason` of `engine_messages_rejected_total`.
pub const REJECT_REASONS: &[&str] = &[
    "empty",
    "invalid_json",
    "wrong_shape",
    "null_value",
    "number_out_of_range",
    "bad_timestamp",
    "bad_values",
    "empty_key",
    // Ingress limits (issue 10).
    "json_too_deep",
    "key_too_long",
    "not_finite",
    "too_many_keys",
    "too_many_data_points",
    // The gateway API (issue 14).
    "too_many_gateway_devices",
    "too_many_devices",
    "not_a_gateway",
    "too_large",
    "unknown_topic",
    "queue_closed",
    "queue_unavailable",
    "queue_rejected",
];

/// Every `reason` of `engine_connections_refused_total`.
pub const REFUSE_REASONS: &[&str] = &["empty_token", "bad_token"];

pub const TRANSPORTS: &[&str] = &["mqtt", "http", "coap", "http_integration", "mqtt_gateway"];

/// Creates every labelled counter at zero, so dashboards and alerts see 0 before the first
/// event instead of no series at all.
pub fn register_zero() {
    use metrics::counter;
    register_zero_mqtt();
    register_integration_limits();
    for &transport in TRANSPORTS {
        for &reason in REJECT_REASONS {
            counter!(MESSAGES_REJECTED, "transport" => transport, "reason" => reason).increment(0);
        }
        for &reason in REFUSE_REASONS {
            counter!(CONNECTIONS_REFUSED, "transport" => transport, "reason" => reason)
                .increment(0);
        }
        counter!(MESSAGES_RECEIVED, "transport" => transport).increment(0);
        counter!(MESSAGES_ACCEPTED, "transport" => transport).increment(0);
        counter!(DATA_POINTS_RECEIVED, "transport" => transport).increment(0);
    }
    for kind in ["retryable", "permanent"] {
        counter!(STORAGE_ERRORS, "kind" => kind).increment(0);
    }
    counter!(SINK_RESTARTS).increment(0);
    metrics::gauge!(WS_SESSIONS).increment(0.0);
    counter!(WS_MESSAGES_SENT).increment(0);
    counter!(DIRECTORY_RELOAD_FAILURES).increment(0);
    for kind in DIRECTORY_KINDS {
        metrics::gauge!(DIRECTORY_ENTRIES, "kind" => *kind).set(0.0);
    }
    for outcome in ["queued", "overflow"] {
        counter!(LIVE_CHANGES, "outcome" => outcome).increment(0);
    }
    for reason in WS_CLOSE_REASONS {
        counter!(WS_CLOSED, "reason" => *reason).increment(0);
    }
    counter!(SESSIONS_FAILED).increment(0);
    counter!(DATA_POINTS_STORED).increment(0);
    metrics::gauge!(SESSIONS_ACTIVE, "transport" => "mqtt").increment(0.0);
    counter!(SESSIONS_HIBERNATED, "transport" => "mqtt").increment(0);
    for outcome in [
        "save_timeseries",
        "save_attributes",
        "dropped",
        "device_state",
    ] {
        counter!(RULE_CHAIN_MESSAGES, "outcome" => outcome).increment(0);
    }
    for reason in ["storage_refused", "undecodable"] {
        counter!(DEAD_LETTERS, "reason" => reason).increment(0);
    }
    for kind in ["COAP", "HTTP"] {
        counter!(INTEGRATION_UNKNOWN_KEY, "type" => kind).increment(0);
    }
    // REST API authentication
    for &outcome in AUTH_LOGIN_OUTCOMES {
        counter!(AUTH_LOGINS, "outcome" => outcome).increment(0);
    }
    for kind in ["user", "address"] {
        counter!(AUTH_LOCKOUTS, "kind" => kind).increment(0);
    }
    for &reason in AUTH_TOKEN_REFUSALS {
        counter!(AUTH_TOKENS_REFUSED, "reason" => reason).increment(0);
    }
    counter!(AUTH_LOGOUTS).increment(0);
    metrics::gauge!(AUTH_LOGIN_QUEUE).increment(0.0);
    metrics::gauge!(AUTH_REVOKED_SESSIONS).increment(0.0);
    register_zero_coap();
    // Ingress limits (issue 10).
    metrics::gauge!(INGRESS_TRACKED_KEYS).increment(0.0);
    counter!(SINK_VALUES_DROPPED, "reason" => "not_finite").increment(0);
    for &site in LOG_SITES {
        counter!(LOG_LINES_SUPPRESSED, "site" => site).increment(0);
    }
    metrics::gauge!(CONVERTER_POOL_QUEUED).increment(0.0);
    metrics::gauge!(QUEUE_IN_FLIGHT).increment(0.0);
    metrics::histogram!(QUEUE_PRODUCE_LATENCY).record(0.0);
    metrics::gauge!(MAILBOX_DEPTH, "mailbox" => "session").increment(0.0);
    metrics::gauge!(QUEUE_DEPTH).increment(0.0);
    // The exporter shows a histogram only once it has a sample: one zero wait makes the
    // "time blocked" series exist (their `_sum`, the total wait, is unchanged).
    metrics::histogram!(MAILBOX_BLOCKED, "mailbox" => "session").record(0.0);
    metrics::histogram!(QUEUE_PRODUCE_BLOCKED).record(0.0);
    register_zero_http();
}

// ---------------------------------------------------------------------------------------------
// Integrations: what their limits refuse or cut (devices per uplink and per integration, debug
// events by size).

/// Devices an integration did not resolve or create because of a limit, by integration and
/// reason (`per_uplink`, `per_integration`).
pub const DEVICES_REFUSED: &str = "engine_integration_devices_refused_total";
/// Reasons of [`DEVICES_REFUSED`].
pub const DEVICES_REFUSED_REASONS: &[&str] = &["per_uplink", "per_integration"];
/// Debug events dropped to make room, by reason (`count`, `entity_bytes`, `total_bytes`).
pub const DEBUG_EVENTS_DROPPED: &str = "engine_integration_debug_events_dropped_total";
/// Debug events whose long texts were cut.
pub const DEBUG_EVENTS_TRUNCATED: &str = "engine_integration_debug_events_truncated_total";

fn describe_integration_limits() {
    describe_counter!(
        DEVICES_REFUSED,
        "Devices named by integration uplinks and refused by a limit, by integration and reason"
    );
    describe_counter!(
        DEBUG_EVENTS_DROPPED,
        "Integration and converter debug events dropped to stay within their limits, by reason"
    );
    describe_counter!(
        DEBUG_EVENTS_TRUNCATED,
        "Integration and converter debug events whose long texts were cut"
    );
}

fn register_integration_limits() {
    use metrics::counter;
    for reason in ["count", "entity_bytes", "total_bytes"] {
        counter!(DEBUG_EVENTS_DROPPED, "reason" => reason).increment(0);
    }
    counter!(DEBUG_EVENTS_TRUNCATED).increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::{KeyKind, QuotaError, Rejection};
    use crate::model::ValueError;
    use crate::payload::PayloadError;
    use crate::ports::QueueError;

    #[test]
    fn every_rejection_reason_is_registered() {
        let rejections = [
            Rejection::Payload(PayloadError::Empty),
            Rejection::Payload(PayloadError::InvalidJson(String::new())),
            Rejection::Payload(PayloadError::WrongShape {
                found: "",
                expected: "",
            }),
            Rejection::Payload(PayloadError::NullValue { key: String::new() }),
            Rejection::Payload(PayloadError::NumberOutOfRange {
                key: String::new(),
                text: String::new(),
            }),
            Rejection::Payload(PayloadError::KeyTooLong { len: 0, max: 0 }),
            Rejection::Payload(PayloadError::TooDeep {
                key: String::new(),
                max: 0,
            }),
            Rejection::Payload(PayloadError::Value(ValueError::NotFinite {
                key: String::new(),
                value: String::new(),
            })),
            Rejection::Quota(QuotaError::TooManyKeys {
                kind: KeyKind::Telemetry,
                max: 0,
            }),
            Rejection::Quota(QuotaError::TooManyKeys {
                kind: KeyKind::Attributes,
                max: 0,
            }),
            Rejection::Quota(QuotaError::TooManyDataPoints { count: 0, max: 0 }),
            Rejection::Quota(QuotaError::TooManyGatewayDevices { max: 0 }),
            Rejection::Quota(QuotaError::TooManyTenantDevices { max: 0 }),
            Rejection::Payload(PayloadError::BadTimestamp(String::new())),
            Rejection::Payload(PayloadError::BadValues),
            Rejection::Payload(PayloadError::EmptyKey),
            Rejection::TooLarge { size: 0, max: 0 },
            Rejection::Queue(QueueError::Closed),
            Rejection::Queue(QueueError::Unavailable(String::new())),
            Rejection::Queue(QueueError::Rejected(String::new())),
        ];
        for r in rejections {
            assert!(
                REJECT_REASONS.contains(&r.reason()),
                "{} is not in REJECT_REASONS",
                r.reason()
            );
        }
    }
}
