//! Device provisioning in ThingsBoard's shapes: the request a device sends (MQTT
//! `/provision/request`, HTTP `POST /api/v1/provision`) and the three answers.

use serde::Deserialize;

use crate::payload::PayloadError;

/// The credentials a provisioned device is to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// An access token; `None`: the server makes one.
    AccessToken(Option<String>),
    /// MQTT basic credentials (client id, user name, password), at least one of them given.
    MqttBasic {
        client_id: Option<String>,
        username: Option<String>,
        password: Option<String>,
    },
    /// An X.509 certificate (PEM text): not served by this engine.
    X509(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionRequest {
    pub key: String,
    pub secret: String,
    /// Trimmed; `None`: the server names the device.
    pub device_name: Option<String>,
    pub credentials: Credentials,
    /// Makes the new device a gateway.
    pub gateway: bool,
}

impl ProvisionRequest {
    /// `provisionDeviceKey` and `provisionDeviceSecret` are required; `credentialsType`
    /// defaults to `ACCESS_TOKEN`.
    pub fn parse(payload: &[u8]) -> Result<ProvisionRequest, PayloadError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            provision_device_key: Option<String>,
            provision_device_secret: Option<String>,
            device_name: Option<String>,
            credentials_type: Option<String>,
            token: Option<String>,
            client_id: Option<String>,
            username: Option<String>,
            password: Option<String>,
            hash: Option<String>,
            gateway: Option<bool>,
        }
        let raw: Raw = serde_json::from_slice(payload)
            .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
        let missing = |what| PayloadError::WrongShape {
            found: what,
            expected: "provisionDeviceKey and provisionDeviceSecret",
        };
        let key = raw
            .provision_device_key
            .ok_or_else(|| missing("request without provisionDeviceKey"))?;
        let secret = raw
            .provision_device_secret
            .ok_or_else(|| missing("request without provisionDeviceSecret"))?;
        let credentials = match raw.credentials_type.as_deref() {
            None | Some("ACCESS_TOKEN") => {
                Credentials::AccessToken(raw.token.filter(|t| !t.is_empty()))
            }
            Some("MQTT_BASIC") => {
                let (client_id, username, password) = (
                    raw.client_id.filter(|s| !s.is_empty()),
                    raw.username.filter(|s| !s.is_empty()),
                    raw.password.filter(|s| !s.is_empty()),
                );
                if client_id.is_none() && username.is_none() {
                    return Err(missing("MQTT_BASIC request without clientId or username"));
                }
                Credentials::MqttBasic {
                    client_id,
                    username,
                    password,
                }
            }
            Some("X509_CERTIFICATE") => Credentials::X509(raw.hash.unwrap_or_default()),
            Some(_) => return Err(missing("request with an unknown credentialsType")),
        };
        Ok(ProvisionRequest {
            key,
            secret,
            device_name: raw
                .device_name
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty()),
            credentials,
            gateway: raw.gateway.unwrap_or(false),
        })
    }
}

/// How a provisioning request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProvisionOutcome {
    Success(Credentials),
    /// Unknown key, wrong secret, a profile without provisioning.
    NotFound,
    /// The device exists already (or was provisioned already).
    Failure,
}

impl ProvisionOutcome {
    /// The answer on `/provision/response` and the HTTP body (200 in every case).
    pub fn render(&self) -> String {
        let body = match self {
            ProvisionOutcome::Success(Credentials::AccessToken(token)) => serde_json::json!({
                "credentialsValue": token,
                "credentialsType": "ACCESS_TOKEN",
                "status": "SUCCESS",
            }),
            ProvisionOutcome::Success(Credentials::MqttBasic {
                client_id,
                username,
                password,
            }) => serde_json::json!({
                // `userName` here, `username` in the request: ThingsBoard's spelling.
                "credentialsValue": {"clientId": client_id, "userName": username, "password": password},
                "credentialsType": "MQTT_BASIC",
                "status": "SUCCESS",
            }),
            ProvisionOutcome::Success(Credentials::X509(pem)) => serde_json::json!({
                "credentialsValue": pem,
                "credentialsType": "X509_CERTIFICATE",
                "status": "SUCCESS",
            }),
            ProvisionOutcome::NotFound => serde_json::json!({
                "errorMsg": "Provision data was not found!",
                "status": "NOT_FOUND",
            }),
            ProvisionOutcome::Failure => serde_json::json!({
                "errorMsg": "Failed to provision device!",
                "status": "FAILURE",
            }),
        };
        body.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let parsed = ProvisionRequest::parse(
            br#"{"deviceName":"  d1 ","provisionDeviceKey":"k","provisionDeviceSecret":"s"}"#,
        );
        assert_eq!(
            parsed,
            Ok(ProvisionRequest {
                key: "k".into(),
                secret: "s".into(),
                device_name: Some("d1".into()),
                credentials: Credentials::AccessToken(None),
                gateway: false,
            })
        );
        let basic = ProvisionRequest::parse(
            br#"{"provisionDeviceKey":"k","provisionDeviceSecret":"s","credentialsType":"MQTT_BASIC","clientId":"c","username":"u","password":"p","gateway":true}"#,
        );
        assert_eq!(
            basic.map(|r| (r.credentials, r.gateway, r.device_name)),
            Ok((
                Credentials::MqttBasic {
                    client_id: Some("c".into()),
                    username: Some("u".into()),
                    password: Some("p".into())
                },
                true,
                None
            ))
        );
        for bad in [
            "",
            "[]",
            r#"{"provisionDeviceSecret":"s"}"#,
            r#"{"provisionDeviceKey":"k"}"#,
            r#"{"provisionDeviceKey":"k","provisionDeviceSecret":"s","credentialsType":"MQTT_BASIC","password":"p"}"#,
            r#"{"provisionDeviceKey":"k","provisionDeviceSecret":"s","credentialsType":"LWM2M"}"#,
        ] {
            assert!(ProvisionRequest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_render_as_thingsboard() {
        let parse = |o: ProvisionOutcome| -> serde_json::Value {
            serde_json::from_str(&o.render()).unwrap_or_default()
        };
        assert_eq!(
            parse(ProvisionOutcome::Success(Credentials::AccessToken(Some(
                "t1".into()
            )))),
            serde_json::json!({"credentialsValue":"t1","credentialsType":"ACCESS_TOKEN","status":"SUCCESS"})
        );
        assert_eq!(
            parse(ProvisionOutcome::Success(Credentials::MqttBasic {
                client_id: Some("c".into()),
                username: None,
                password: Some("p".into())
            }))["credentialsValue"],
            serde_json::json!({"clientId":"c","userName":null,"password":"p"})
        );
        assert_eq!(
            parse(ProvisionOutcome::NotFound),
            serde_json::json!({"errorMsg":"Provision data was not found!","status":"NOT_FOUND"})
        );
        assert_eq!(
            parse(ProvisionOutcome::Failure),
            serde_json::json!({"errorMsg":"Failed to provision device!","status":"FAILURE"})
        );
    }
}
