//! A device's request to be claimed (`v1/devices/me/claim`, `POST /api/v1/{token}/claim`):
//! an optional JSON object `{"secretKey":"..","durationMs":..}`.

use serde::Deserialize;

use crate::payload::PayloadError;

/// `security.claim.duration`: how long a claim request stands when the device gives no
/// (positive) duration, in milliseconds (24 hours).
pub const DEFAULT_DURATION_MS: i64 = 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// `""` when the device gave none (a customer then claims with an empty secret).
    pub secret_key: String,
    pub duration_ms: i64,
}

impl ClaimRequest {
    /// An empty payload is a claim with no secret and the default duration; anything but a
    /// JSON object is invalid.
    pub fn parse(payload: &[u8]) -> Result<ClaimRequest, PayloadError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            secret_key: Option<String>,
            duration_ms: Option<i64>,
        }
        let Some(first) = payload.iter().find(|b| !b.is_ascii_whitespace()) else {
            return Ok(ClaimRequest {
                secret_key: String::new(),
                duration_ms: DEFAULT_DURATION_MS,
            });
        };
        if *first != b'{' {
            return Err(PayloadError::WrongShape {
                found: "value other than an object",
                expected: "object",
            });
        }
        let raw: Raw = serde_json::from_slice(payload)
            .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
        Ok(ClaimRequest {
            secret_key: raw.secret_key.unwrap_or_default(),
            duration_ms: raw
                .duration_ms
                .filter(|d| *d > 0)
                .unwrap_or(DEFAULT_DURATION_MS),
        })
    }
}

/// What a customer user's claim (`POST /api/customer/device/{name}/claim`) is answered,
/// before the device is assigned (ThingsBoard §4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The request stands and the secret matches: assign the device (if nobody has taken it
    /// meanwhile) and use the request up.
    Take,
    /// 400 with this JSON string: `"FAILURE"` while the device is nobody's, `"CLAIMED"` once
    /// it is somebody's.
    Refuse(&'static str),
}

/// Decides a claim from the device's stored request (`None`: it asked for nothing), the
/// secret given (an empty one matches an empty one), the time, and whether the device is
/// assigned already.
pub fn decide(
    request: Option<&crate::ports::ClaimRequest>,
    secret: &str,
    now_ms: i64,
    owned: bool,
) -> ClaimAnswer {
    let refused = ClaimAnswer::Refuse(if owned { "CLAIMED" } else { "FAILURE" });
    match request {
        Some(r) if !r.is_expired(now_ms) && r.secret_key == secret && !owned => ClaimAnswer::Take,
        _ => refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_requests() {
        let cases = [
            ("", Some(("", DEFAULT_DURATION_MS))),
            ("{}", Some(("", DEFAULT_DURATION_MS))),
            (
                r#"{"secretKey":"abc","durationMs":60000}"#,
                Some(("abc", 60_000)),
            ),
            (
                r#"{"secretKey":"abc","durationMs":0}"#,
                Some(("abc", DEFAULT_DURATION_MS)),
            ),
            (r#"{"durationMs":-1}"#, Some(("", DEFAULT_DURATION_MS))),
            ("[]", None),
            ("\"abc\"", None),
            ("{bad", None),
            (r#"{"secretKey":5}"#, None),
        ];
        for (payload, expected) in cases {
            let parsed = ClaimRequest::parse(payload.as_bytes()).ok();
            assert_eq!(
                parsed,
                expected.map(|(s, d)| ClaimRequest {
                    secret_key: s.to_owned(),
                    duration_ms: d
                }),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn a_claim_is_taken_only_with_a_standing_request_its_secret_and_nobody_owning_it() {
        use crate::model::DeviceId;
        let request = |secret: &str, expires: i64| crate::ports::ClaimRequest {
            device_id: DeviceId(uuid::Uuid::nil()),
            secret_key: secret.into(),
            expiration_time: expires,
        };
        let (abc, empty) = (request("abc", 100), request("", 100));
        for (stored, secret, now, owned, answer) in [
            (Some(&abc), "abc", 99, false, ClaimAnswer::Take),
            (Some(&empty), "", 99, false, ClaimAnswer::Take),
            (Some(&abc), "abd", 99, false, ClaimAnswer::Refuse("FAILURE")),
            (Some(&abc), "", 99, false, ClaimAnswer::Refuse("FAILURE")),
            (
                Some(&empty),
                "abc",
                99,
                false,
                ClaimAnswer::Refuse("FAILURE"),
            ),
            (
                Some(&abc),
                "abc",
                100,
                false,
                ClaimAnswer::Refuse("FAILURE"),
            ),
            (None, "", 0, false, ClaimAnswer::Refuse("FAILURE")),
            (Some(&abc), "abc", 99, true, ClaimAnswer::Refuse("CLAIMED")),
            (
                Some(&abc),
                "wrong",
                99,
                true,
                ClaimAnswer::Refuse("CLAIMED"),
            ),
            (Some(&abc), "abc", 100, true, ClaimAnswer::Refuse("CLAIMED")),
            (None, "", 0, true, ClaimAnswer::Refuse("CLAIMED")),
        ] {
            assert_eq!(
                decide(stored, secret, now, owned),
                answer,
                "{stored:?} {secret:?} at {now}, owned {owned}"
            );
        }
    }
}
