//! The domain model: devices, typed key-value entries and the normalised message that flows from
//! the transports through the queue into storage.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for deriving tenant and device ids (UUIDv5), fixed forever: changing it would change
/// every id in every deployment.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_4e3a_9c55_4d0e_8f2a_5e0c_7d41_a9b3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

impl TenantId {
    /// A tenant's id is derived from its name, so every node agrees on it without coordination.
    pub fn from_name(name: &str) -> TenantId {
        TenantId(Uuid::new_v5(
            &ID_NAMESPACE,
            format!("tenant:{name}").as_bytes(),
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub Uuid);

impl DeviceId {
    /// UUIDv5 of (tenant, device name): any node can create the same device at once without a race.
    pub fn derive(tenant: TenantId, name: &str) -> DeviceId {
        DeviceId(Uuid::new_v5(&tenant.0, name.as_bytes()))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A device's access token: the MQTT username, the path segment of the HTTP device API.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccessToken(pub String);

impl fmt::Debug for AccessToken {
    // Tokens are credentials: never print them whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(3).collect();
        write!(f, "AccessToken({shown}…)")
    }
}

/// The prefix of the access token a device with MQTT basic credentials is registered under
/// (see [`BasicCredentials::token`]); no token a user chooses may start with it.
pub const BASIC_TOKEN_PREFIX: &str = "mqtt-basic:";

/// Whether `token` stands for MQTT basic credentials: such a token cannot be used as one (MQTT
/// username, HTTP path).
pub fn is_basic_token(token: &str) -> bool {
    token.starts_with(BASIC_TOKEN_PREFIX)
}

/// ThingsBoard's `MQTT_BASIC` credentials: a client id, a user name (at least one of the two)
/// and an optional password, each at most [`MAX_ACCESS_TOKEN_CHARS`] characters.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct BasicCredentials {
    pub client_id: Option<String>,
    pub user_name: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for BasicCredentials {
    // The password is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("client_id", &self.client_id)
            .field("user_name", &self.user_name)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl BasicCredentials {
    /// Credentials with empty fields left out; refused without a client id and a user name, or
    /// with a field over [`MAX_ACCESS_TOKEN_CHARS`].
    pub fn new(
        client_id: Option<String>,
        user_name: Option<String>,
        password: Option<String>,
    ) -> Result<BasicCredentials, NameError> {
        let given = |s: Option<String>| s.filter(|s| !s.is_empty());
        let credentials = BasicCredentials {
            client_id: given(client_id),
            user_name: given(user_name),
            password: given(password),
        };
        if credentials.client_id.is_none() && credentials.user_name.is_none() {
            return Err(NameError::Empty {
                what: "MQTT basic credentials' clientId and userName",
            });
        }
        for (what, value) in [
            ("clientId", &credentials.client_id),
            ("userName", &credentials.user_name),
            ("password", &credentials.password),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() > MAX_ACCESS_TOKEN_CHARS)
            {
                return Err(NameError::TooLong {
                    what,
                    max: MAX_ACCESS_TOKEN_CHARS,
                });
            }
        }
        Ok(credentials)
    }

    /// The access token the device is registered under: [`BASIC_TOKEN_PREFIX`] and a BLAKE2b
    /// digest of the three fields (each length-prefixed, so no two sets of fields share one).
    /// A CONNECT's fields give the same token exactly when they match, password included, so
    /// finding the device by it is the check; only the digest is stored.
    pub fn token(&self) -> AccessToken {
        use blake2::{Blake2b512, Digest};
        let mut hasher = Blake2b512::new();
        for field in [&self.client_id, &self.user_name, &self.password] {
            match field {
                None => hasher.update([0u8]),
                Some(v) => {
                    hasher.update([1u8]);
                    hasher.update((v.len() as u64).to_be_bytes());
                    hasher.update(v.as_bytes());
                }
            }
        }
        let digest = hasher.finalize();
        let mut token = String::with_capacity(BASIC_TOKEN_PREFIX.len() + 64);
        token.push_str(BASIC_TOKEN_PREFIX);
        for byte in &digest[..32] {
            token.push_str(&format!("{byte:02x}"));
        }
        AccessToken(token)
    }

    /// The credentials a CONNECT may match, in ThingsBoard's order: client id and user name
    /// together, then the user name alone, then the client id alone; each with the password
    /// given, then without it (credentials stored without a password take any, as in
    /// ThingsBoard).
    pub fn candidates(
        client_id: &str,
        user_name: Option<&str>,
        password: Option<&str>,
    ) -> Vec<BasicCredentials> {
        let some = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let (client_id, user_name, password) =
            (some(Some(client_id)), some(user_name), some(password));
        let mut out = Vec::with_capacity(6);
        let mut push = |client_id: &Option<String>, user_name: &Option<String>| {
            out.push(BasicCredentials {
                client_id: client_id.clone(),
                user_name: user_name.clone(),
                password: password.clone(),
            });
            if password.is_some() {
                out.push(BasicCredentials {
                    client_id: client_id.clone(),
                    user_name: user_name.clone(),
                    password: None,
                });
            }
        };
        if client_id.is_some() && user_name.is_some() {
            push(&client_id, &user_name);
        }
        if user_name.is_some() {
            push(&None, &user_name);
        }
        if client_id.is_some() {
            push(&client_id, &None);
        }
        out
    }
}

/// Longest device name, in characters (ThingsBoard's column is `varchar(255)`).
pub const MAX_DEVICE_NAME_CHARS: usize = 255;
/// Longest device type (profile name), in characters.
pub const MAX_DEVICE_TYPE_CHARS: usize = 255;
/// Shortest and longest access token, in characters (ThingsBoard's column is `varchar(32)` for
/// generated tokens but accepts longer ones; we allow up to 256).
pub const MIN_ACCESS_TOKEN_CHARS: usize = 2;
pub const MAX_ACCESS_TOKEN_CHARS: usize = 256;

/// Why a peer-supplied name or token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} is shorter than {min} characters")]
    TooShort { what: &'static str, min: usize },
    #[error("{what} must not contain control characters")]
    ControlCharacter { what: &'static str },
    #[error("{what} must not start with {prefix:?}")]
    Reserved {
        what: &'static str,
        prefix: &'static str,
    },
}

/// Checks a name a peer chose (device name, device type): not empty or blank, at most `max`
/// characters, no control characters (newlines and escape sequences would forge log lines and
/// break CSV exports).
pub fn validate_name(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    if name.trim().is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.chars().count() > max {
        return Err(NameError::TooLong { what, max });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter { what });
    }
    Ok(())
}

/// A device name as ThingsBoard accepts it, and nothing that could forge a log line.
pub fn validate_device_name(name: &str) -> Result<(), NameError> {
    validate_name("device name", name, MAX_DEVICE_NAME_CHARS)
}

/// An access token: 2 to 256 characters, no control characters or spaces (it is an MQTT user
/// name and an HTTP path segment). One-character tokens are refused: they are guessed at once.
pub fn validate_access_token(token: &str) -> Result<(), NameError> {
    let what = "access token";
    let len = token.chars().count();
    if len == 0 {
        return Err(NameError::Empty { what });
    }
    if len < MIN_ACCESS_TOKEN_CHARS {
        return Err(NameError::TooShort {
            what,
            min: MIN_ACCESS_TOKEN_CHARS,
        });
    }
    if len > MAX_ACCESS_TOKEN_CHARS {
        return Err(NameError::TooLong {
            what,
            max: MAX_ACCESS_TOKEN_CHARS,
        });
    }
    if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NameError::ControlCharacter { what });
    }
    if is_basic_token(token) {
        return Err(NameError::Reserved {
            what,
            prefix: BASIC_TOKEN_PREFIX,
        });
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub tenant_id: TenantId,
    pub name: String,
    /// ThingsBoard's device type (the profile name), `"default"` unless given.
    pub device_type: String,
    pub label: Option<String>,
    pub token: AccessToken,
    /// Milliseconds since the Unix epoch.
    pub created_time: i64,
    /// ThingsBoard's `additionalInfo`: a JSON object's text, at most
    /// [`MAX_ADDITIONAL_INFO_BYTES`]; `None` for `null`. `"gateway": true` makes the device a
    /// gateway ([`Device::is_gateway`]).
    #[serde(default)]
    pub additional_info: Option<String>,
}

/// Longest `additionalInfo` a device keeps, in bytes of JSON text.
pub const MAX_ADDITIONAL_INFO_BYTES: usize = 16 * 1024;

impl Device {
    /// A gateway may use the gateway API (`v1/gateway/*`): its `additionalInfo` says
    /// `"gateway": true`, as ThingsBoard's does.
    pub fn is_gateway(&self) -> bool {
        #[derive(Deserialize)]
        struct Info {
            #[serde(default)]
            gateway: serde_json::Value,
        }
        self.additional_info
            .as_deref()
            .and_then(|text| serde_json::from_str::<Info>(text).ok())
            .is_some_and(|info| info.gateway == serde_json::Value::Bool(true))
    }
}

/// A value as ThingsBoard types it: the type a device sent is the type stored and returned.
#[derive(Clone, Debug, PartialEq)]
pub enum KvValue {
    Bool(bool),
    Long(i64),
    Double(f64),
    String(String),
    /// A JSON object or array, kept as its text.
    Json(String),
}

impl KvValue {
    /// ThingsBoard's `getValueAsString`: what the REST API shows without strict data types.
    pub fn to_tb_string(&self) -> String {
        match self {
            KvValue::Bool(b) => b.to_string(),
            KvValue::Long(l) => l.to_string(),
            KvValue::Double(d) => format_double(*d),
            KvValue::String(s) | KvValue::Json(s) => s.clone(),
        }
    }
}

/// Why a value cannot be stored as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "value of key {key:?} is not a finite number ({value}): storage has no infinity or NaN"
    )]
    NotFinite { key: String, value: String },
}

impl KvValue {
    /// Whether storage holds the value and gives it back: a DOUBLE must be finite (JSON, the
    /// REST API and ThingsBoard have no infinity or NaN; they would read back as `null`).
    pub fn is_storable(&self) -> bool {
        match self {
            KvValue::Double(d) => d.is_finite(),
            _ => true,
        }
    }
}

/// The DOUBLE a computed number (a converter's float) is stored as: refused when it is not
/// finite, -0.0 made 0.0 (ThingsBoard's `BigDecimal` has no negative zero). Call it wherever a
/// float becomes a [`KvValue`].
pub fn double_value(key: &str, d: f64) -> Result<KvValue, ValueError> {
    if d.is_finite() {
        Ok(KvValue::Double(if d == 0.0 { 0.0 } else { d }))
    } else {
        Err(ValueError::NotFinite {
            key: key.to_owned(),
            value: d.to_string(),
        })
    }
}

/// Checks entries made elsewhere than the payload parser (a converter, a decoded record): every
/// value storable. The first one that is not is the error.
pub fn validate_entries(entries: &[KvEntry]) -> Result<(), ValueError> {
    match entries.iter().find(|e| !e.value.is_storable()) {
        None => Ok(()),
        Some(e) => Err(ValueError::NotFinite {
            key: e.key.clone(),
            value: e.value.to_tb_string(),
        }),
    }
}

/// Java's `Double.toString` for the values devices send: always with a fractional part.
pub fn format_double(d: f64) -> String {
    if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e16 {
        format!("{d:.1}")
    } else {
        d.to_string()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct KvEntry {
    pub key: String,
    pub value: KvValue,
}

impl KvEntry {
    pub fn new(key: impl Into<String>, value: KvValue) -> KvEntry {
        KvEntry {
            key: key.into(),
            value,
        }
    }
}

/// Entries that share one timestamp (milliseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct TsRecord {
    pub ts: i64,
    pub entries: Vec<KvEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AttributeScope {
    #[serde(rename = "CLIENT_SCOPE")]
    Client,
    #[serde(rename = "SHARED_SCOPE")]
    Shared,
    #[serde(rename = "SERVER_SCOPE")]
    Server,
}

impl AttributeScope {
    pub const ALL: [AttributeScope; 3] = [
        AttributeScope::Client,
        AttributeScope::Shared,
        AttributeScope::Server,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttributeScope::Client => "CLIENT_SCOPE",
            AttributeScope::Shared => "SHARED_SCOPE",
            AttributeScope::Server => "SERVER_SCOPE",
        }
    }

    pub fn parse(s: &str) -> Option<AttributeScope> {
        AttributeScope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
    }

    /// The stable small number storage uses for the scope.
    pub fn code(self) -> i64 {
        match self {
            AttributeScope::Client => 1,
            AttributeScope::Shared => 2,
            AttributeScope::Server => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<AttributeScope> {
        AttributeScope::ALL
            .into_iter()
            .find(|scope| scope.code() == code)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum MessageBody {
    Telemetry(Vec<TsRecord>),
    Attributes {
        scope: AttributeScope,
        entries: Vec<KvEntry>,
    },
    /// For the owner of the device's partition, never stored (`downlink::event`).
    Device(crate::downlink::event::DeviceEvent),
}

/// The normalised message every transport produces and every sink consumes.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    /// When the engine received it (milliseconds since the Unix epoch); also the timestamp of
    /// attribute updates and of telemetry sent without one.
    pub received_ts: i64,
    pub body: MessageBody,
}

impl Message {
    /// Every entry, whatever the body.
    pub fn entries(&self) -> impl Iterator<Item = &KvEntry> {
        let (records, attributes): (&[TsRecord], &[KvEntry]) = match &self.body {
            MessageBody::Telemetry(records) => (records, &[]),
            MessageBody::Attributes { entries, .. } => (&[], entries),
            MessageBody::Device(_) => (&[], &[]),
        };
        records
            .iter()
            .flat_map(|r| r.entries.iter())
            .chain(attributes)
    }

    /// [`validate_entries`] over the whole message.
    pub fn validate_values(&self) -> Result<(), ValueError> {
        match &self.body {
            MessageBody::Telemetry(records) => records
                .iter()
                .try_for_each(|r| validate_entries(&r.entries)),
            MessageBody::Attributes { entries, .. } => validate_entries(entries),
            MessageBody::Device(_) => Ok(()),
        }
    }

    /// Key-value entries carried: ThingsBoard's "data points".
    pub fn data_points(&self) -> usize {
        match &self.body {
            MessageBody::Telemetry(records) => records.iter().map(|r| r.entries.len()).sum(),
            MessageBody::Attributes { entries, .. } => entries.len(),
            MessageBody::Device(_) => 0,
        }
    }
}

/// Messages are shared, not copied, between the queue and its consumers.
pub type SharedMessage = Arc<Message>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_scoped_by_tenant() {
        let t1 = TenantId::from_name("a");
        let t2 = TenantId::from_name("b");
        assert_eq!(DeviceId::derive(t1, "dev"), DeviceId::derive(t1, "dev"));
        assert_ne!(DeviceId::derive(t1, "dev"), DeviceId::derive(t2, "dev"));
        assert_eq!(DeviceId::derive(t1, "dev").0.get_version_num(), 5);
    }

    #[test]
    fn values_print_as_thingsboard_does() {
        let cases = [
            (KvValue::Double(42.0), "42.0"),
            (KvValue::Double(0.5), "0.5"),
            (KvValue::Long(73), "73"),
            (KvValue::Bool(true), "true"),
            (KvValue::String("x".into()), "x"),
            (KvValue::Json("{\"a\":1}".into()), "{\"a\":1}"),
        ];
        for (value, want) in cases {
            assert_eq!(value.to_tb_string(), want, "{value:?}");
        }
    }

    #[test]
    fn names_and_tokens_are_checked() {
        let long = "n".repeat(MAX_DEVICE_NAME_CHARS + 1);
        let cases: [(&str, bool); 7] = [
            ("Thermostat A", true),
            ("Ünïcødé 名前", true),
            ("", false),
            ("   ", false),
            ("bad\nERROR forged", false),
            ("esc\u{1b}[31mred", false),
            (&long, false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_device_name(name).is_ok(), ok, "{name:?}");
        }
        assert!(validate_device_name(&"n".repeat(MAX_DEVICE_NAME_CHARS)).is_ok());
        for (token, ok) in [
            ("A1_TEST_TOKEN", true),
            ("x", false),
            ("", false),
            ("a b", false),
        ] {
            assert_eq!(validate_access_token(token).is_ok(), ok, "{token:?}");
        }
        assert!(validate_access_token(&"t".repeat(MAX_ACCESS_TOKEN_CHARS + 1)).is_err());
        assert!(validate_access_token("mqtt-basic:abc").is_err());
    }

    #[test]
    fn basic_credentials_match_only_all_their_fields() {
        let creds = |c: &str, u: &str, p: &str| {
            BasicCredentials::new(Some(c.into()), Some(u.into()), Some(p.into()))
        };
        let full = creds("c", "u", "p").expect("valid");
        // The token: the prefix, and not a token a user could choose.
        assert!(is_basic_token(&full.token().0));
        assert!(validate_access_token(&full.token().0).is_err());
        // A CONNECT with all three finds it first; a wrong password or client id does not.
        let first = |c: &str, u: Option<&str>, p: Option<&str>| {
            BasicCredentials::candidates(c, u, p)
                .into_iter()
                .map(|b| b.token())
                .collect::<Vec<_>>()
        };
        assert_eq!(first("c", Some("u"), Some("p"))[0], full.token());
        assert!(!first("c", Some("u"), Some("q")).contains(&full.token()));
        assert!(!first("x", Some("u"), Some("p")).contains(&full.token()));
        // Credentials without a client id match any client id; without a user name, the
        // client id alone.
        let user_only = creds("", "u", "p").expect("valid");
        assert!(first("any", Some("u"), Some("p")).contains(&user_only.token()));
        let client_only = creds("c", "", "").expect("valid");
        assert!(first("c", None, None).contains(&client_only.token()));
        // Credentials stored without a password take any (ThingsBoard).
        assert!(first("c", None, Some("p")).contains(&client_only.token()));
        // Fields are length-prefixed: moving a character between them changes the token.
        assert_ne!(
            creds("ab", "c", "").expect("valid").token(),
            creds("a", "bc", "").expect("valid").token()
        );
        // Neither client id nor user name; a field too long.
        assert!(BasicCredentials::new(None, Some(String::new()), Some("p".into())).is_err());
        assert!(creds("c", &"u".repeat(MAX_ACCESS_TOKEN_CHARS + 1), "").is_err());
        // Debug never shows the password.
        assert!(!format!("{full:?}").contains("\"p\""));
    }

    #[test]
    fn only_finite_doubles_are_storable() {
        for (d, ok) in [
            (1.5, true),
            (f64::INFINITY, false),
            (f64::NEG_INFINITY, false),
            (f64::NAN, false),
        ] {
            assert_eq!(KvValue::Double(d).is_storable(), ok, "{d}");
            assert_eq!(double_value("k", d).is_ok(), ok, "{d}");
        }
        let Ok(KvValue::Double(zero)) = double_value("k", -0.0) else {
            panic!("-0.0 is a value")
        };
        assert!(zero.is_sign_positive());
        let entries = [
            KvEntry::new("ok", KvValue::Long(1)),
            KvEntry::new("bad", KvValue::Double(f64::NAN)),
        ];
        assert_eq!(
            validate_entries(&entries),
            Err(ValueError::NotFinite {
                key: "bad".into(),
                value: "NaN".into()
            })
        );
        let message = Message {
            tenant_id: TenantId::from_name("t"),
            device_id: DeviceId::derive(TenantId::from_name("t"), "d"),
            received_ts: 0,
            body: MessageBody::Telemetry(vec![TsRecord {
                ts: 1,
                entries: entries.to_vec(),
            }]),
        };
        assert!(message.validate_values().is_err());
        assert_eq!(message.entries().count(), 2);
    }

    #[test]
    fn token_debug_hides_the_secret() {
        assert_eq!(
            format!("{:?}", AccessToken("secret-token".into())),
            "AccessToken(sec…)"
        );
    }
}
