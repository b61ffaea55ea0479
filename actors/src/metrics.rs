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
pub const COAP_DROPPED: &str = "engine_coap_dropped_total";
pub const COAP_DUPLICATES: &str = "engine_coap_duplicates_total";

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

/// Registers help texts and units with whatever recorder is installed.
pub fn describe() {
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
        "Messages through the rule chains, by outcome (save_timeseries, save_attributes, dropped)"
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
    describe_counter!(
        COAP_DROPPED,
        "CoAP datagrams dropped without an answer, by reason"
    );
    describe_counter!(
        COAP_DUPLICATES,
        "Retransmitted confirmable CoAP requests answered from the exchange cache"
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
    "big_integer",
    "bad_timestamp",
    "bad_values",
    "empty_key",
    "too_large",
    "unknown_topic",
    "queue_closed",
    "queue_unavailable",
    "queue_rejected",
];

/// Every `reason` of `engine_connections_refused_total`.
pub const REFUSE_REASONS: &[&str] = &["empty_token", "bad_token"];

pub const TRANSPORTS: &[&str] = &["mqtt", "http", "coap", "http_integration"];

/// Creates every labelled counter at zero, so dashboards and alerts see 0 before the first
/// event instead of no series at all.
pub fn register_zero() {
    use metrics::counter;
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
    counter!(SESSIONS_FAILED).increment(0);
    counter!(DATA_POINTS_STORED).increment(0);
    metrics::gauge!(SESSIONS_ACTIVE, "transport" => "mqtt").increment(0.0);
    counter!(SESSIONS_HIBERNATED, "transport" => "mqtt").increment(0);
    for outcome in ["save_timeseries", "save_attributes", "dropped"] {
        counter!(RULE_CHAIN_MESSAGES, "outcome" => outcome).increment(0);
    }
    for reason in ["storage_refused", "undecodable"] {
        counter!(DEAD_LETTERS, "reason" => reason).increment(0);
    }
    for kind in ["COAP", "HTTP"] {
        counter!(INTEGRATION_UNKNOWN_KEY, "type" => kind).increment(0);
    }
    for reason in ["malformed", "overloaded"] {
        counter!(COAP_DROPPED, "reason" => reason).increment(0);
    }
    counter!(COAP_DUPLICATES).increment(0);
    metrics::gauge!(CONVERTER_POOL_QUEUED).increment(0.0);
    metrics::gauge!(QUEUE_IN_FLIGHT).increment(0.0);
    metrics::histogram!(QUEUE_PRODUCE_LATENCY).record(0.0);
    metrics::gauge!(MAILBOX_DEPTH, "mailbox" => "session").increment(0.0);
    metrics::gauge!(QUEUE_DEPTH).increment(0.0);
    // The exporter shows a histogram only once it has a sample: one zero wait makes the
    // "time blocked" series exist (their `_sum`, the total wait, is unchanged).
    metrics::histogram!(MAILBOX_BLOCKED, "mailbox" => "session").record(0.0);
    metrics::histogram!(QUEUE_PRODUCE_BLOCKED).record(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::Rejection;
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
            Rejection::Payload(PayloadError::BigInteger {
                key: String::new(),
                text: String::new(),
            }),
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
