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
}
