//! What apps need beyond live data (issue 15): customers and their users (activation, login,
//! refresh, password change), the permission matrix of every endpoint for a tenant
//! administrator, a customer user of the owner, one of another customer, no token and an
//! expired token; claiming in every outcome; assets and relations; live updates over
//! WebSocket for a customer user.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::ws::WsClient;
use tests::{Engine, Rest};

use crate::SETTLE;

const WAIT: Duration = Duration::from_secs(30);

async fn status_and_body(resp: reqwest::Response) -> Result<(StatusCode, Value)> {
    let status = resp.status();
    let text = resp.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

/// POSTs `body` and returns the answer's JSON; fails unless 200.
async fn post_ok(rest: &Rest, path: &str, body: &Value) -> Result<Value> {
    let (status, body) = status_and_body(rest.post(path).json(body).send().await?).await?;
    anyhow::ensure!(status == StatusCode::OK, "POST {path}: {status} {body}");
    Ok(body)
}

fn id(v: &Value) -> Result<String> {
    Ok(v["id"]["id"].as_str().context("no id")?.to_owned())
}

pub(crate) async fn create_customer(admin: &Rest, title: &str) -> Result<String> {
    id(&post_ok(admin, "/api/customer", &json!({"title": title})).await?)
}

/// Creates a customer user, activates it through its link with `password`, and returns its id
/// and a client logged in as it.
pub(crate) async fn customer_user(
    engine: &Engine,
    admin: &Rest,
    customer: &str,
    email: &str,
    password: &str,
) -> Result<(String, Rest)> {
    let user = post_ok(
        admin,
        "/api/user?sendActivationMail=False",
        &json!({
            "email": email,
            "authority": "CUSTOMER_USER",
            "customerId": {"entityType": "CUSTOMER", "id": customer},
            "firstName": "Ann",
        }),
    )
    .await?;
    let user_id = id(&user)?;
    let link = admin
        .get(&format!("/api/user/{user_id}/activationLink"))
        .send()
        .await?
        .text()
        .await?;
    let token = link
        .split("activateToken=")
        .nth(1)
        .context("no token in the activation link")?;
    let resp = reqwest::Client::new()
        .post(engine.url("/api/noauth/activate?sendActivationMail=false"))
        .json(&json!({"activateToken": token, "password": password}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == StatusCode::OK,
        "activate: {}",
        resp.status()
    );
    Ok((user_id, engine.login(email, password).await?))
}

pub(crate) async fn assign(admin: &Rest, customer: &str, device: &str) -> Result<Value> {
    post_ok(
        admin,
        &format!("/api/customer/{customer}/device/{device}"),
        &json!({}),
    )
    .await
}

async fn start(env: &[(&str, &str)]) -> Result<(tempfile::TempDir, Engine, Rest)> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::start_with(dir.path(), env)?;
    let rest = engine.rest().await?;
    Ok((dir, engine, rest))
}

#[tokio::test]
async fn a_customer_user_is_activated_logs_in_refreshes_and_changes_its_password() -> Result<()> {
    let (_dir, engine, admin) = start(&[]).await?;
    let customer = create_customer(&admin, "Acme").await?;
    let got = admin.json(&format!("/api/customer/{customer}")).await?;
    assert_eq!(got["title"], "Acme");
    assert_eq!(got["name"], "Acme");
    assert_eq!(got["id"]["entityType"], "CUSTOMER");

    // Created, not yet active: its login is refused as ThingsBoard refuses it.
    let user = post_ok(
        &admin,
        "/api/user?sendActivationMail=false",
        &json!({"email": "Ann@Acme.test", "authority": "CUSTOMER_USER",
                "customerId": {"entityType": "CUSTOMER", "id": customer}}),
    )
    .await?;
    assert_eq!(user["authority"], "CUSTOMER_USER");
    assert_eq!(user["customerId"]["id"], customer.as_str());
    let user_id = id(&user)?;
    let (status, body) = status_and_body(
        reqwest::Client::new()
            .post(engine.url("/api/auth/login"))
            .json(&json!({"username": "Ann@Acme.test", "password": "whatever"}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "User account is not active");

    // The link, as ThingsBoard gives it: plain text with the scheme, host and port.
    let resp = admin
        .get(&format!("/api/user/{user_id}/activationLink"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()?
            .starts_with("text/plain")
    );
    let link = resp.text().await?;
    // Behind a proxy the link names the address the caller used (no port: the scheme's own).
    let proxied = admin
        .get(&format!("/api/user/{user_id}/activationLink"))
        .header("Host", "iot.example.com")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await?
        .text()
        .await?;
    assert!(
        proxied.starts_with("https://iot.example.com/api/noauth/activate?activateToken="),
        "{proxied}"
    );
    let prefix = format!("{}/api/noauth/activate?activateToken=", engine.url(""));
    let token = link.strip_prefix(&prefix).context(link.clone())?.to_owned();
    let noauth = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = noauth
        .get(engine.url(&format!("/api/noauth/activate?activateToken={token}")))
        .send()
        .await?;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    let activate = |token: String, password: &'static str| {
        let noauth = noauth.clone();
        let url = engine.url("/api/noauth/activate");
        async move {
            status_and_body(
                noauth
                    .post(url)
                    .json(&json!({"activateToken": token, "password": password}))
                    .send()
                    .await?,
            )
            .await
        }
    };
    let (status, body) = activate(token.clone(), "short").await?;
    assert_eq!(
        (status, body["errorCode"].clone(), body["message"].clone()),
        (
            StatusCode::BAD_REQUEST,
            json!(31),
            json!("Password must be 6 or more characters in length.")
        )
    );
    let (status, body) = activate("not-a-token".into(), "s3cret-pass").await?;
    assert_eq!(
        (status, body["errorCode"].clone()),
        (StatusCode::BAD_REQUEST, json!(31))
    );
    let (status, pair) = activate(token.clone(), "s3cret-pass").await?;
    assert_eq!(status, StatusCode::OK, "{pair}");
    assert!(pair["token"].is_string() && pair["refreshToken"].is_string());
    // Used up.
    let (status, _) = activate(token.clone(), "another-pass").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = status_and_body(
        admin
            .get(&format!("/api/user/{user_id}/activationLink"))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "already activated");

    // Logged in (the e-mail in any case), it is who it is.
    let ann = engine.login("ann@acme.test", "s3cret-pass").await?;
    let me = ann.json("/api/auth/user").await?;
    assert_eq!(me["authority"], "CUSTOMER_USER");
    assert_eq!(me["customerId"]["id"], customer.as_str());
    assert_eq!(me["id"]["id"], user_id.as_str());
    let activated = Rest {
        http: reqwest::Client::new(),
        base: engine.url(""),
        token: pair["token"].as_str().context("token")?.to_owned(),
    };
    assert_eq!(activated.json("/api/auth/user").await?["id"], me["id"]);

    // A refresh gives a working pair.
    let refreshed = post_ok(
        &ann,
        "/api/auth/token",
        &json!({"refreshToken": pair["refreshToken"]}),
    )
    .await?;
    let renewed = Rest {
        token: refreshed["token"].as_str().context("token")?.to_owned(),
        ..activated
    };
    assert_eq!(renewed.json("/api/auth/user").await?["id"], me["id"]);

    // A password change outdates every earlier token of the user (401, errorCode 11).
    let (status, body) = status_and_body(
        ann.post("/api/auth/changePassword")
            .json(&json!({"currentPassword": "wrong", "newPassword": "n3w-pass"}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let changed = post_ok(
        &ann,
        "/api/auth/changePassword",
        &json!({"currentPassword": "s3cret-pass", "newPassword": "n3w-pass"}),
    )
    .await?;
    let (status, body) = status_and_body(renewed.get("/api/auth/user").send().await?).await?;
    assert_eq!(
        (status, body["errorCode"].clone()),
        (StatusCode::UNAUTHORIZED, json!(11))
    );
    let after = Rest {
        token: changed["token"].as_str().context("token")?.to_owned(),
        ..renewed
    };
    assert_eq!(after.json("/api/auth/user").await?["id"], me["id"]);
    assert!(engine.login("ann@acme.test", "s3cret-pass").await.is_err());
    engine.login("ann@acme.test", "n3w-pass").await?;

    // Bad users: a duplicate e-mail (any case), the administrator's, no customer, no e-mail.
    for (body, what) in [
        (
            json!({"email": "ANN@acme.test", "authority": "CUSTOMER_USER",
                "customerId": {"entityType": "CUSTOMER", "id": customer}}),
            "duplicate",
        ),
        (
            json!({"email": "tenant@thingsboard.org", "authority": "TENANT_ADMIN"}),
            "admin's",
        ),
        (
            json!({"email": "x@acme.test", "authority": "CUSTOMER_USER"}),
            "no customer",
        ),
        (json!({"authority": "CUSTOMER_USER"}), "no e-mail"),
        (
            json!({"email": "not-an-email", "authority": "TENANT_ADMIN"}),
            "bad e-mail",
        ),
    ] {
        let (status, answer) =
            status_and_body(admin.post("/api/user").json(&body).send().await?).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
    }
    let (status, _) = status_and_body(
        admin
            .post("/api/user")
            .json(&json!({"email": "x@acme.test", "authority": "SYS_ADMIN"}))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The customer's users are listed; deleting the customer deletes them, and their tokens
    // stop working.
    let users = admin
        .json(&format!(
            "/api/customer/{customer}/users?pageSize=10&page=0"
        ))
        .await?;
    assert_eq!(users["totalElements"], 1);
    let resp = admin
        .delete(&format!("/api/customer/{customer}"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = status_and_body(after.get("/api/auth/user").send().await?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(engine.login("ann@acme.test", "n3w-pass").await.is_err());
    let (status, body) = status_and_body(
        admin
            .get(&format!("/api/customer/{customer}"))
            .send()
            .await?,
    )
    .await?;
    assert_eq!(
        (status, body["errorCode"].clone()),
        (StatusCode::NOT_FOUND, json!(32))
    );

    // The directory is durable: a restart keeps customers and activated users.
    let kept = create_customer(&admin, "Kept").await?;
    let (_, _) = customer_user(&engine, &admin, &kept, "kept@kept.test", "kept-pass").await?;
    let data_dir = _dir.path().to_owned();
    drop(engine);
    let engine = Engine::start(&data_dir)?;
    let kept_user = engine.login("kept@kept.test", "kept-pass").await?;
    assert_eq!(
        kept_user.json("/api/auth/user").await?["customerId"]["id"],
        kept.as_str()
    );
    Ok(())
}

/// One row of the matrix: a request and the status each caller gets.
struct Row {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// admin, user of the owner customer, user of another customer.
    expect: [u16; 3],
}

fn row(method: &'static str, path: String, body: Option<Value>, expect: [u16; 3]) -> Row {
    Row {
        method,
        path,
        body,
        expect,
    }
}

async fn send(rest: &Rest, row: &Row) -> Result<(StatusCode, Value)> {
    let req = match row.method {
        "GET" => rest.get(&row.path),
        "POST" => rest.post(&row.path),
        "DELETE" => rest.delete(&row.path),
        other => anyhow::bail!("method {other}"),
    };
    let req = match &row.body {
        Some(b) => req.json(b),
        None => req,
    };
    status_and_body(req.send().await?).await
}

#[tokio::test]
async fn every_endpoint_answers_each_role_as_thingsboard_does() -> Result<()> {
    let (_dir, engine, admin) = start(&[]).await?;
    let a = create_customer(&admin, "A").await?;
    let b = create_customer(&admin, "B").await?;
    let own = admin.create_device("own", "own-token").await?;
    let other = admin.create_device("other", "other-token").await?;
    let tenants = admin.create_device("tenants", "tenants-token").await?;
    let spare = admin.create_device("spare", "spare-token").await?;
    assign(&admin, &a, &own).await?;
    assign(&admin, &b, &other).await?;
    let asset = id(&post_ok(
        &admin,
        "/api/asset",
        &json!({"name": "HQ", "type": "building"}),
    )
    .await?)?;
    post_ok(
        &admin,
        &format!("/api/customer/{a}/asset/{asset}"),
        &json!({}),
    )
    .await?;
    let tenant_asset = id(&post_ok(&admin, "/api/asset", &json!({"name": "Depot"})).await?)?;
    post_ok(
        &admin,
        "/api/relation",
        &json!({"from": {"entityType": "ASSET", "id": asset},
                "to": {"entityType": "DEVICE", "id": own}, "type": "Contains"}),
    )
    .await?;
    let (user_a_id, user_a) = customer_user(&engine, &admin, &a, "a@a.test", "a-pass-1").await?;
    let (_, user_b) = customer_user(&engine, &admin, &b, "b@b.test", "b-pass-1").await?;
    let rpc = json!({"method": "setValue", "params": {"v": 1}, "persistent": true});
    let missing = "6a6b6c6d-0000-4000-8000-000000000000";
    let spare_user = id(&post_ok(
        &admin,
        "/api/user",
        &json!({"email": "spare@a.test", "authority": "CUSTOMER_USER",
                "customerId": {"entityType": "CUSTOMER", "id": a}}),
    )
    .await?)?;
    let record = post_ok(&admin, &format!("/api/rpc/oneway/{own}"), &rpc).await?["rpcId"]
        .as_str()
        .context("rpcId")?
        .to_owned();

    let rows = vec![
        row("GET", format!("/api/device/{own}"), None, [200, 200, 403]),
        row(
            "GET",
            format!("/api/device/{tenants}"),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/device/{missing}"),
            None,
            [404, 404, 404],
        ),
        row(
            "GET",
            format!("/api/device/{own}/credentials"),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            "/api/tenant/devices?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            "/api/tenant/devices?deviceName=own".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/customer/{a}/devices?pageSize=10&page=0"),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            format!("/api/plugins/telemetry/DEVICE/{own}/values/timeseries"),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            format!("/api/plugins/telemetry/DEVICE/{own}/values/attributes"),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            format!("/api/plugins/telemetry/DEVICE/{own}/keys/timeseries"),
            None,
            [200, 200, 403],
        ),
        row(
            "POST",
            format!("/api/plugins/telemetry/DEVICE/{own}/attributes/SHARED_SCOPE"),
            Some(json!({"target": 21})),
            [200, 200, 403],
        ),
        row(
            "POST",
            format!("/api/plugins/telemetry/DEVICE/{tenants}/attributes/SHARED_SCOPE"),
            Some(json!({"target": 21})),
            [200, 403, 403],
        ),
        row(
            "POST",
            format!("/api/plugins/rpc/oneway/{own}"),
            Some(rpc.clone()),
            [200, 200, 403],
        ),
        row(
            "POST",
            format!("/api/rpc/oneway/{own}"),
            Some(rpc.clone()),
            [200, 200, 403],
        ),
        row(
            "POST",
            format!("/api/rpc/oneway/{tenants}"),
            Some(rpc.clone()),
            [200, 403, 403],
        ),
        row(
            "POST",
            "/api/device".into(),
            Some(json!({"name": "made-by-user"})),
            [200, 403, 403],
        ),
        row(
            "POST",
            format!("/api/customer/{a}/device/{spare}"),
            None,
            [200, 403, 403],
        ),
        row(
            "DELETE",
            format!("/api/customer/device/{spare}"),
            None,
            [200, 403, 403],
        ),
        row(
            "DELETE",
            format!("/api/device/{spare}"),
            None,
            [200, 403, 403],
        ),
        row("GET", format!("/api/asset/{asset}"), None, [200, 200, 403]),
        row(
            "GET",
            format!("/api/asset/{tenant_asset}"),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            "/api/tenant/assets?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/customer/{a}/assets?pageSize=10&page=0"),
            None,
            [200, 200, 403],
        ),
        row(
            "POST",
            "/api/asset".into(),
            Some(json!({"name": "made-by-user"})),
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/relations?fromId={asset}&fromType=ASSET"),
            None,
            [200, 200, 403],
        ),
        row("GET", format!("/api/customer/{a}"), None, [200, 200, 403]),
        row(
            "GET",
            format!("/api/customer/{a}/title"),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            "/api/customers?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "POST",
            "/api/customer".into(),
            Some(json!({"title": "made-by-user"})),
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/customer/{a}/users?pageSize=10&page=0"),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/user/{user_a_id}"),
            None,
            [200, 200, 403],
        ),
        row(
            "POST",
            "/api/user".into(),
            Some(json!({"email": "new@x.test", "authority": "TENANT_ADMIN"})),
            [200, 403, 403],
        ),
        row(
            "GET",
            "/api/deviceProfiles?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            "/api/converters?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            "/api/integrations?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row("GET", "/api/auth/user".into(), None, [200, 200, 200]),
        // A customer user relabels its device; it may not rename it or make it a gateway.
        row(
            "POST",
            "/api/device".into(),
            Some(
                json!({"id": {"entityType": "DEVICE", "id": own}, "name": "own", "label": "hall"}),
            ),
            [200, 200, 403],
        ),
        row(
            "POST",
            "/api/device".into(),
            Some(
                json!({"id": {"entityType": "DEVICE", "id": own}, "name": "own", "additionalInfo": {"gateway": true}}),
            ),
            [200, 403, 403],
        ),
        row(
            "DELETE",
            format!("/api/rpc/persistent/{record}"),
            None,
            [200, 403, 403],
        ),
        row(
            "POST",
            "/api/relation".into(),
            Some(json!({"from": {"entityType": "ASSET", "id": asset},
                        "to": {"entityType": "DEVICE", "id": own}, "type": "Monitors"})),
            [200, 200, 403],
        ),
        row(
            "POST",
            "/api/relation".into(),
            Some(json!({"from": {"entityType": "ASSET", "id": tenant_asset},
                        "to": {"entityType": "DEVICE", "id": own}, "type": "Monitors"})),
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/relations/info?fromId={asset}&fromType=ASSET"),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            format!(
                "/api/relation?fromId={asset}&fromType=ASSET&relationType=Contains&toId={own}&toType=DEVICE"
            ),
            None,
            [200, 200, 403],
        ),
        row(
            "POST",
            "/api/customer/device/tenants/claim".into(),
            Some(json!({"secretKey": ""})),
            [403, 400, 400],
        ),
        row(
            "DELETE",
            "/api/customer/device/own/claim".into(),
            None,
            [200, 200, 403],
        ),
        row(
            "GET",
            "/api/tenant/users?pageSize=10&page=0".into(),
            None,
            [200, 403, 403],
        ),
        row(
            "GET",
            format!("/api/user/{user_a_id}/activationLink"),
            None,
            [400, 403, 403],
        ),
        // Deletions last: the administrator's row removes what later rows would name.
        row(
            "DELETE",
            format!("/api/asset/{tenant_asset}"),
            None,
            [200, 403, 403],
        ),
        row(
            "DELETE",
            format!("/api/user/{spare_user}"),
            None,
            [200, 403, 403],
        ),
        row(
            "DELETE",
            format!("/api/customer/{b}"),
            None,
            [200, 403, 403],
        ),
        // Last: the administrator's rename changes the name earlier rows use.
        row(
            "POST",
            "/api/device".into(),
            Some(json!({"id": {"entityType": "DEVICE", "id": own}, "name": "renamed"})),
            [200, 403, 403],
        ),
    ];
    let callers = [
        ("tenant admin", &admin),
        ("owner's user", &user_a),
        ("other customer's user", &user_b),
    ];
    // Customer users first: an administrator's row may change what the others see (a
    // creation, the spare device's assignment and deletion).
    for i in [2usize, 1, 0] {
        let (who, rest) = callers[i];
        for r in &rows {
            let (status, body) = send(rest, r).await?;
            assert_eq!(
                status.as_u16(),
                r.expect[i],
                "{who}: {} {} -> {body}",
                r.method,
                r.path
            );
            if status == StatusCode::FORBIDDEN {
                assert_eq!(body["errorCode"], 20, "{body}");
                assert_eq!(
                    body["message"],
                    "You don't have permission to perform this operation!"
                );
            }
        }
    }
    // Lists show a customer user its customer's entities only (the device it gave back in its
    // reclaim row assigned again first).
    assign(&admin, &a, &own).await?;
    let devices = user_a
        .json(&format!("/api/customer/{a}/devices?pageSize=10&page=0"))
        .await?;
    let names: Vec<&str> = devices["data"]
        .as_array()
        .context("data")?
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["renamed"],
        "the administrator's rename row ran last"
    );
    assert_eq!(devices["data"][0]["customerId"]["id"], a.as_str());

    // No token, a garbage token and an expired one: 401 everywhere (10, 10, 11).
    let no_token = reqwest::Client::new();
    for r in &rows {
        let url = engine.url(&r.path);
        let req = match r.method {
            "GET" => no_token.get(&url),
            "POST" => no_token.post(&url),
            _ => no_token.delete(&url),
        };
        let (status, body) = status_and_body(req.send().await?).await?;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "no token: {} {}",
            r.method,
            r.path
        );
        assert_eq!(body["errorCode"], 10);
    }
    let garbage = Rest {
        http: reqwest::Client::new(),
        base: engine.url(""),
        token: "garbage".into(),
    };
    let (status, _) = send(&garbage, &rows[0]).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Expired tokens: an engine whose tokens live one second signs them; every row answers
    // 401 errorCode 11 there, whoever holds one (tokens are checked before any path).
    let short_dir = tempfile::tempdir()?;
    let short = Engine::start_with(short_dir.path(), &[("ENGINE_AUTH__TOKEN_EXPIRATION", "1s")])?;
    let short_admin = short.rest().await?;
    let c = create_customer(&short_admin, "C").await?;
    let (_, short_user) = customer_user(&short, &short_admin, &c, "c@c.test", "c-pass-1").await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for rest in [&short_admin, &short_user] {
        let (status, body) = status_and_body(rest.get("/api/auth/user").send().await?).await?;
        assert_eq!(
            (status, body["errorCode"].clone(), body["message"].clone()),
            (
                StatusCode::UNAUTHORIZED,
                json!(11),
                json!("Token has expired")
            )
        );
        // The same paths on the short-lived engine (its own secret signed the tokens).
        for r in &rows {
            let (status, body) = send(rest, r).await?;
            assert_eq!(
                (status, body["errorCode"].clone()),
                (StatusCode::UNAUTHORIZED, json!(11)),
                "expired: {} {}",
                r.method,
                r.path
            );
        }
    }
    Ok(())
}

/// Whether the relation list at `path` is empty.
async fn no_relations(rest: &Rest, path: &str) -> Result<bool> {
    Ok(rest.json(path).await?.as_array().is_some_and(Vec::is_empty))
}

/// Publishes a claim request over the HTTP device API.
async fn device_claims(engine: &Engine, token: &str, secret: &str, duration_ms: i64) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(engine.url(&format!("/api/v1/{token}/claim")))
        .json(&json!({"secretKey": secret, "durationMs": duration_ms}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "claim: {}", resp.status());
    Ok(())
}

async fn claim(rest: &Rest, name: &str, secret: &str) -> Result<(StatusCode, Value)> {
    status_and_body(
        rest.post(&format!("/api/customer/device/{name}/claim"))
            .json(&json!({"secretKey": secret}))
            .send()
            .await?,
    )
    .await
}

#[tokio::test]
async fn claiming_answers_success_failure_and_claimed_and_the_tenant_reclaims() -> Result<()> {
    let (_dir, engine, admin) = start(&[]).await?;
    let a = create_customer(&admin, "A").await?;
    let b = create_customer(&admin, "B").await?;
    let (_, user_a) = customer_user(&engine, &admin, &a, "a@a.test", "a-pass-1").await?;
    let (_, user_b) = customer_user(&engine, &admin, &b, "b@b.test", "b-pass-1").await?;
    let thermo = admin.create_device("thermo", "thermo-token").await?;
    admin.create_device("silent", "silent-token").await?;

    // Nothing asked: FAILURE. Unknown device: 404. A tenant administrator may not claim.
    assert_eq!(
        claim(&user_a, "silent", "").await?,
        (StatusCode::BAD_REQUEST, json!("FAILURE"))
    );
    assert_eq!(claim(&user_a, "nobody", "").await?.0, StatusCode::NOT_FOUND);
    assert_eq!(
        claim(&admin, "thermo", "abc").await?.0,
        StatusCode::FORBIDDEN
    );

    // An expired request: FAILURE.
    device_claims(&engine, "thermo-token", "abc", 1).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        claim(&user_a, "thermo", "abc").await?,
        (StatusCode::BAD_REQUEST, json!("FAILURE"))
    );

    // A live request: a wrong secret is FAILURE, the right one SUCCESS with the device, now
    // the customer's.
    device_claims(&engine, "thermo-token", "abc", 60_000).await?;
    assert_eq!(
        claim(&user_a, "thermo", "wrong").await?,
        (StatusCode::BAD_REQUEST, json!("FAILURE"))
    );
    let won = admin
        .eventually(SETTLE, || async {
            let (status, body) = claim(&user_a, "thermo", "abc").await?;
            Ok((status == StatusCode::OK).then_some(body))
        })
        .await?;
    assert_eq!(won["response"], "SUCCESS");
    assert_eq!(won["device"]["name"], "thermo");
    assert_eq!(won["device"]["customerId"]["id"], a.as_str());
    assert_eq!(
        user_a.json(&format!("/api/device/{thermo}")).await?["customerId"]["id"],
        a.as_str()
    );
    // Claimed: again, with a wrong secret, or by another customer: CLAIMED.
    assert_eq!(
        claim(&user_a, "thermo", "abc").await?,
        (StatusCode::BAD_REQUEST, json!("CLAIMED"))
    );
    assert_eq!(
        claim(&user_b, "thermo", "wrong").await?,
        (StatusCode::BAD_REQUEST, json!("CLAIMED"))
    );
    assert_eq!(
        user_b
            .get(&format!("/api/device/{thermo}"))
            .send()
            .await?
            .status(),
        StatusCode::FORBIDDEN
    );

    // Another customer cannot take it back; the tenant can, and then nobody has it.
    let reclaim = |rest: &Rest| rest.delete("/api/customer/device/thermo/claim").send();
    assert_eq!(reclaim(&user_b).await?.status(), StatusCode::FORBIDDEN);
    assert_eq!(reclaim(&admin).await?.status(), StatusCode::OK);
    assert_eq!(
        user_a
            .get(&format!("/api/device/{thermo}"))
            .send()
            .await?
            .status(),
        StatusCode::FORBIDDEN
    );
    let listed = user_a
        .json(&format!("/api/customer/{a}/devices?pageSize=10&page=0"))
        .await?;
    assert_eq!(listed["totalElements"], 0);
    // The request was used up: the device must ask again before anyone claims it.
    assert_eq!(
        claim(&user_b, "thermo", "abc").await?,
        (StatusCode::BAD_REQUEST, json!("FAILURE"))
    );
    device_claims(&engine, "thermo-token", "", 60_000).await?;
    let won = admin
        .eventually(SETTLE, || async {
            let (status, body) = claim(&user_b, "thermo", "").await?;
            Ok((status == StatusCode::OK).then_some(body))
        })
        .await?;
    assert_eq!(won["device"]["customerId"]["id"], b.as_str());
    // Its own customer's user may give it back.
    assert_eq!(reclaim(&user_b).await?.status(), StatusCode::OK);

    // Hostile bodies: not JSON, oversized secret types.
    let resp = user_a
        .post("/api/customer/device/thermo/claim")
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = user_a
        .post("/api/customer/device/thermo/claim")
        .json(&json!({"secretKey": 5}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn assets_and_relations_make_a_tree_and_go_with_their_entities() -> Result<()> {
    let (_dir, engine, admin) = start(&[]).await?;
    let asset = |name: &str, kind: &str| {
        let body = json!({"name": name, "type": kind, "label": format!("{name} label")});
        let admin = &admin;
        async move { id(&post_ok(admin, "/api/asset", &body).await?) }
    };
    let building = asset("Building", "building").await?;
    let floor = asset("Floor 1", "floor").await?;
    let room = asset("Room 101", "room").await?;
    let sensor = admin
        .create_device("room-sensor", "room-sensor-token")
        .await?;
    let contains = |from: (&str, &str), to: (&str, &str)| {
        json!({"from": {"entityType": from.0, "id": from.1},
               "to": {"entityType": to.0, "id": to.1}, "type": "Contains"})
    };
    post_ok(
        &admin,
        "/api/relation",
        &contains(("ASSET", &building), ("ASSET", &floor)),
    )
    .await?;
    post_ok(
        &admin,
        "/api/relation",
        &contains(("ASSET", &floor), ("ASSET", &room)),
    )
    .await?;
    let saved = post_ok(
        &admin,
        "/api/v2/relation",
        &contains(("ASSET", &room), ("DEVICE", &sensor)),
    )
    .await?;
    assert_eq!(saved["typeGroup"], "COMMON");
    assert_eq!(saved["to"]["id"], sensor.as_str());

    // The tree, one level per call, as an app walks it.
    let mut level = vec![building.clone()];
    let mut names = Vec::new();
    for _ in 0..3 {
        let mut next = Vec::new();
        for parent in &level {
            let children = admin
                .json(&format!(
                    "/api/relations/info?fromId={parent}&fromType=ASSET&relationType=Contains"
                ))
                .await?;
            for c in children.as_array().context("array")? {
                names.push(c["toName"].as_str().context("toName")?.to_owned());
                if c["to"]["entityType"] == "ASSET" {
                    next.push(c["to"]["id"].as_str().context("id")?.to_owned());
                }
            }
        }
        level = next;
    }
    assert_eq!(names, ["Floor 1", "Room 101", "room-sensor"]);
    let up = admin
        .json(&format!("/api/relations?toId={sensor}&toType=DEVICE"))
        .await?;
    assert_eq!(up.as_array().map(Vec::len), Some(1));
    assert_eq!(up[0]["from"]["id"], room.as_str());
    let path_form = admin
        .json(&format!("/api/relations/from/ASSET/{building}/Contains"))
        .await?;
    assert_eq!(path_form[0]["to"]["id"], floor.as_str());
    let one = admin
        .json(&format!(
            "/api/relation?fromId={building}&fromType=ASSET&relationType=Contains&toId={floor}&toType=ASSET"
        ))
        .await?;
    assert_eq!(one["type"], "Contains");
    assert!(
        no_relations(
            &admin,
            &format!("/api/relations?fromId={building}&fromType=ASSET&relationType=Manages")
        )
        .await?
    );

    // Asset lists, look-up by name, type default.
    let all = admin.json("/api/tenant/assets?pageSize=2&page=0").await?;
    assert_eq!(
        (all["totalElements"].clone(), all["hasNext"].clone()),
        (json!(3), json!(true))
    );
    let rooms = admin
        .json("/api/tenant/assets?pageSize=10&page=0&type=room")
        .await?;
    assert_eq!(rooms["data"][0]["name"], "Room 101");
    assert_eq!(
        admin.json("/api/tenant/assets?assetName=Floor%201").await?["id"]["id"],
        floor.as_str()
    );
    assert_eq!(
        admin.json("/api/tenant/asset?assetName=Floor%201").await?["id"]["id"],
        floor.as_str()
    );
    let plain = post_ok(&admin, "/api/asset", &json!({"name": "Plain"})).await?;
    assert_eq!(plain["type"], "default");
    assert_eq!(
        plain["customerId"]["id"],
        "13814000-1dd2-11b2-8080-808080808080"
    );

    // Hostile input: clear 4xx, nothing saved. JSON nested past what can be read back (128
    // levels) is refused, not kept as `null`.
    let missing = "6a6b6c6d-0000-4000-8000-000000000000";
    let deep: Value = serde_json::from_str(&format!("{}{}", "[".repeat(120), "]".repeat(120)))?;
    let mut deep = deep;
    for _ in 0..10 {
        deep = json!([deep]);
    }
    for (path, body, status) in [
        (
            "/api/relation",
            contains(("ASSET", &building), ("DEVICE", missing)),
            404,
        ),
        (
            "/api/relation",
            contains(("PLANET", &building), ("ASSET", &floor)),
            400,
        ),
        (
            "/api/relation",
            json!({"from": {"entityType": "ASSET", "id": building}, "to": {"entityType": "ASSET", "id": floor}}),
            400,
        ),
        (
            "/api/relation",
            json!({"from": {"entityType": "ASSET", "id": building}, "to": {"entityType": "ASSET", "id": floor}, "type": "Contains", "typeGroup": "NOPE"}),
            400,
        ),
        (
            "/api/relation",
            json!({"from": {"entityType": "ASSET", "id": "not-a-uuid"}, "to": {"entityType": "ASSET", "id": floor}, "type": "Contains"}),
            400,
        ),
        (
            "/api/relation",
            json!({"to": {"entityType": "ASSET", "id": floor}, "type": "Contains"}),
            400,
        ),
        (
            "/api/relation",
            json!({"from": {"entityType": "ASSET", "id": building}, "to": {"entityType": "ASSET", "id": floor}, "type": "x".repeat(300)}),
            400,
        ),
        ("/api/asset", json!({"name": "Floor 1"}), 400),
        ("/api/asset", json!({"type": "x"}), 400),
        ("/api/asset", json!({"name": "x".repeat(300)}), 400),
        (
            "/api/asset",
            json!({"name": "big", "additionalInfo": {"a": "x".repeat(20_000)}}),
            400,
        ),
        (
            "/api/relation",
            json!({"from": {"entityType": "ASSET", "id": building}, "to": {"entityType": "ASSET", "id": floor}, "type": "Big", "additionalInfo": {"a": "x".repeat(1100)}}),
            400,
        ),
        (
            "/api/asset",
            json!({"name": "deep", "additionalInfo": deep}),
            400,
        ),
        ("/api/customer", json!({}), 400),
        ("/api/customer", json!({"title": "Public"}), 400),
    ] {
        let (got, body) = status_and_body(admin.post(path).json(&body).send().await?).await?;
        assert_eq!(got.as_u16(), status, "{path}: {body}");
    }
    let resp = admin
        .delete(&format!(
            "/api/relation?fromId={building}&fromType=ASSET&relationType=Contains&toId={room}&toType=ASSET"
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "no such relation");

    // Deleting the floor takes its two relations; deleting the device its last one.
    assert_eq!(
        admin
            .delete(&format!("/api/asset/{floor}"))
            .send()
            .await?
            .status(),
        StatusCode::OK
    );
    assert!(
        no_relations(
            &admin,
            &format!("/api/relations?fromId={building}&fromType=ASSET")
        )
        .await?
    );
    assert!(no_relations(&admin, &format!("/api/relations?toId={room}&toType=ASSET")).await?);
    assert_eq!(
        admin
            .delete(&format!("/api/device/{sensor}"))
            .send()
            .await?
            .status(),
        StatusCode::OK
    );
    assert!(
        no_relations(
            &admin,
            &format!("/api/relations?fromId={room}&fromType=ASSET")
        )
        .await?
    );
    // A removed relation is gone; `DELETE /api/relations` removes the rest of an entity's.
    post_ok(
        &admin,
        "/api/relation",
        &contains(("ASSET", &building), ("ASSET", &room)),
    )
    .await?;
    let resp = admin
        .delete(&format!("/api/relations?entityId={room}&entityType=ASSET"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        no_relations(
            &admin,
            &format!("/api/relations?fromId={building}&fromType=ASSET")
        )
        .await?
    );
    drop(engine);
    Ok(())
}

#[tokio::test]
async fn a_customer_user_gets_live_updates_of_its_devices_only() -> Result<()> {
    let (_dir, engine, admin) = start(&[]).await?;
    let a = create_customer(&admin, "A").await?;
    let mine = admin.create_device("mine", "mine-token").await?;
    let theirs = admin.create_device("theirs", "theirs-token").await?;
    assign(&admin, &a, &mine).await?;
    let (user_id, user) = customer_user(&engine, &admin, &a, "a@a.test", "a-pass-1").await?;
    let mut ws = WsClient::legacy(&engine, &user.token).await?;
    ws.send(&json!({"tsSubCmds": [
        {"entityType": "DEVICE", "entityId": mine, "scope": "LATEST_TELEMETRY", "cmdId": 1},
        {"entityType": "DEVICE", "entityId": theirs, "scope": "LATEST_TELEMETRY", "cmdId": 2},
    ]}))
    .await?;
    let mut refused = None;
    let mut snapshot = None;
    while refused.is_none() || snapshot.is_none() {
        let m = ws.expect(WAIT).await?;
        match m["subscriptionId"].as_i64() {
            Some(1) => snapshot = Some(m),
            Some(2) => refused = Some(m),
            _ => {}
        }
    }
    let refused = refused.context("refused")?;
    assert_eq!(refused["errorCode"], 3, "{refused}");
    for (token, value) in [("theirs-token", 1), ("mine-token", 2)] {
        reqwest::Client::new()
            .post(engine.url(&format!("/api/v1/{token}/telemetry")))
            .json(&json!({"t": value}))
            .send()
            .await?
            .error_for_status()?;
    }
    let update = ws.expect(WAIT).await?;
    assert_eq!(update["subscriptionId"], 1, "{update}");
    assert_eq!(update["data"]["t"][0][1], "2");

    // ENTITY_DATA by device type shows the customer's device only.
    let mut ws = WsClient::connect(&engine, &format!("/api/ws?token={}", user.token)).await?;
    ws.send(
        &json!({"cmds": [{"type": "ENTITY_DATA", "cmdId": 7, "query": {
        "entityFilter": {"type": "deviceType", "deviceTypes": ["default"], "deviceNameFilter": ""},
        "pageLink": {"pageSize": 10, "page": 0},
        "entityFields": [{"type": "ENTITY_FIELD", "key": "name"}]}}]}),
    )
    .await?;
    let page = ws.expect(WAIT).await?;
    let data = page["data"]["data"].as_array().context("data")?;
    assert_eq!(data.len(), 1, "{page}");
    assert_eq!(data[0]["entityId"]["id"], mine.as_str());

    // A socket outlives its token's check: once the device is taken back, a new subscription
    // on the open socket is refused, and once the user is deleted, everything is.
    let resp = admin
        .delete(&format!("/api/customer/device/{mine}"))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    ws.send(
        &json!({"cmds": [{"type": "TIMESERIES", "cmdId": 8, "entityType": "DEVICE",
        "entityId": mine, "keys": "t"}]}),
    )
    .await?;
    let refused = ws.expect(WAIT).await?;
    assert_eq!(
        (
            refused["subscriptionId"].clone(),
            refused["errorCode"].clone()
        ),
        (json!(8), json!(3)),
        "{refused}"
    );
    assign(&admin, &a, &mine).await?;
    let resp = admin.delete(&format!("/api/user/{user_id}")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    ws.send(
        &json!({"cmds": [{"type": "TIMESERIES", "cmdId": 9, "entityType": "DEVICE",
        "entityId": mine, "keys": "t"}]}),
    )
    .await?;
    let refused = ws.expect(WAIT).await?;
    assert_eq!(
        (
            refused["subscriptionId"].clone(),
            refused["errorCode"].clone()
        ),
        (json!(9), json!(3)),
        "{refused}"
    );
    Ok(())
}

/// The official REST client (tb-rest-client 4.3, `RestClientCE`) runs an app's whole flow
/// unchanged, beside the official device SDK (`tests/sdk/rest_client_flow.py` asserts each
/// step).
#[tokio::test]
async fn the_official_rest_client_runs_an_apps_whole_flow() -> Result<()> {
    let (_dir, engine, _admin) = start(&[]).await?;
    let python = tests::sdk_python()?;
    let script = tests::sdk_script("rest_client_flow.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(engine.url(""))
        .arg("127.0.0.1")
        .arg(engine.mqtt.port().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let read = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut text).await?;
        Ok::<_, anyhow::Error>(text)
    };
    let (out, err) = (
        tokio::spawn(read(Box::new(stdout))),
        tokio::spawn(read(Box::new(stderr))),
    );
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .context("the flow did not end within 300 s")??;
    let (out, err) = (out.await??, err.await??);
    assert!(
        status.success() && out.lines().last() == Some("done"),
        "the flow failed ({status}):\n{out}\n{err}\nengine log:\n{}",
        engine.log()
    );
    for step in [
        "ok activate_user",
        "ok refresh",
        "ok get_timeseries",
        "ok handle_two_way_device_rpc_request",
        "ok find_info_by_from",
        "ok get_device_by_id (the tenant's) (403)",
        "ok claim_device_using_post1",
    ] {
        assert!(out.lines().any(|l| l == step), "{step} missing:\n{out}");
    }
    Ok(())
}

/// An activation link expires after `directory.activation_ttl`; asking for the link again
/// gives a new one.
#[tokio::test]
async fn an_expired_activation_link_is_refused_and_replaced() -> Result<()> {
    let (_dir, engine, admin) = start(&[("ENGINE_DIRECTORY__ACTIVATION_TTL", "1s")]).await?;
    let customer = create_customer(&admin, "Late").await?;
    let user = post_ok(
        &admin,
        "/api/user?sendActivationMail=false",
        &json!({"email": "late@late.test", "authority": "CUSTOMER_USER",
                "customerId": {"entityType": "CUSTOMER", "id": customer}}),
    )
    .await?;
    let link = |admin: &Rest, id: String| {
        let req = admin.get(&format!("/api/user/{id}/activationLink")).send();
        async move {
            let text = req.await?.text().await?;
            Ok::<_, anyhow::Error>(
                text.split("activateToken=")
                    .nth(1)
                    .context("token")?
                    .to_owned(),
            )
        }
    };
    let first = link(&admin, id(&user)?).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let activate = |token: String| {
        reqwest::Client::new()
            .post(engine.url("/api/noauth/activate"))
            .json(&json!({"activateToken": token, "password": "late-pass"}))
            .send()
    };
    let (status, body) = status_and_body(activate(first.clone()).await?).await?;
    assert_eq!(
        (status, body["message"].clone()),
        (StatusCode::BAD_REQUEST, json!("Activation token expired"))
    );
    let second = link(&admin, id(&user)?).await?;
    assert_ne!(second, first);
    assert_eq!(activate(second).await?.status(), StatusCode::OK);
    engine.login("late@late.test", "late-pass").await?;
    Ok(())
}
