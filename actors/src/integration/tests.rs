use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use super::events::{DebugEvents, EventKind, EventQuery};
use super::pool::ConverterPool;
use super::*;
use crate::converter::{DownlinkContent, Limits};
use crate::model::{KvValue, MessageBody};
use crate::testing::{MemCatalog, MemProducer, MemRegistry};

const CSV: &str = include_str!("../../../examples/converters/coap-csv.rhai");
const DOWNLINK: &str = include_str!("../../../examples/converters/mqtt-downlink.rhai");

struct Fixture {
    hub: Integrations,
    producer: Arc<MemProducer>,
    registry: Arc<MemRegistry>,
    tenant: TenantId,
}

async fn fixture() -> Fixture {
    fixture_with(Settings::default(), ConverterPool::new(2, 64)).await
}

async fn fixture_with(settings: Settings, pool: ConverterPool) -> Fixture {
    let producer = Arc::new(MemProducer::default());
    let registry = Arc::new(MemRegistry::default());
    let hub = Integrations::start(
        Arc::new(ConverterRuntime::new(&Limits {
            max_wall_time: Duration::from_millis(200),
            ..Limits::default()
        })),
        pool,
        registry.clone(),
        Arc::new(Ingress::new(producer.clone(), 64 * 1024)),
        Arc::new(MemCatalog::default()),
        Arc::new(DebugEvents::new(100, Duration::from_secs(60))),
        settings,
    )
    .await
    .expect("started");
    Fixture {
        hub,
        producer,
        registry,
        tenant: TenantId::from_name("t"),
    }
}

impl Fixture {
    async fn converter(&self, name: &str, kind: ConverterKind, script: &str) -> ConverterDef {
        self.hub
            .save_converter(ConverterDef {
                id: Uuid::new_v4(),
                tenant_id: self.tenant,
                name: name.into(),
                kind,
                script: script.into(),
                debug_mode: true,
                created_time: 0,
            })
            .await
            .expect("converter saved")
    }

    async fn integration(
        &self,
        kind: IntegrationKind,
        key: &str,
        uplink: &ConverterDef,
        allow_create: bool,
    ) -> IntegrationDef {
        self.hub
            .save_integration(IntegrationDef {
                id: Uuid::new_v4(),
                tenant_id: self.tenant,
                name: format!("integration {key}"),
                kind,
                routing_key: key.into(),
                enabled: true,
                allow_create_devices: allow_create,
                uplink_converter_id: uplink.id,
                downlink_converter_id: None,
                metadata: BTreeMap::from([("region".into(), "eu".into())]),
                debug_mode: true,
                created_time: 0,
            })
            .await
            .expect("integration saved")
    }

    async fn send(
        &self,
        kind: IntegrationKind,
        key: &str,
        payload: &str,
    ) -> Result<UplinkOutcome, UplinkError> {
        self.hub
            .uplink(kind, key, payload.as_bytes().to_vec(), BTreeMap::new())
            .await
    }
}

fn query(kind: Option<EventKind>) -> EventQuery {
    EventQuery {
        kind,
        start_ts: None,
        end_ts: None,
        page_size: 100,
        page: 0,
        ascending: false,
    }
}

#[tokio::test]
async fn the_reference_coap_message_creates_its_device_with_typed_telemetry() {
    let f = fixture().await;
    let csv = f.converter("csv", ConverterKind::Uplink, CSV).await;
    let coap = f.integration(IntegrationKind::Coap, "k1", &csv, true).await;
    let outcome = f
        .send(
            IntegrationKind::Coap,
            "k1",
            "SN-001,default,temperature,25.7,humidity,69\n",
        )
        .await
        .expect("taken");
    assert_eq!(outcome.devices.len(), 1);
    let device = &outcome.devices[0];
    assert_eq!(device.name, "SN-001");
    assert_eq!(device.device_type, "default");
    assert_eq!(device.id, DeviceId::derive(f.tenant, "SN-001"), "UUIDv5 id");
    assert_eq!(f.registry.devices().len(), 1);
    let messages = f.producer.messages();
    assert_eq!(messages.len(), 1, "no empty attributes message");
    let MessageBody::Telemetry(records) = &messages[0].body else {
        panic!("telemetry expected: {:?}", messages[0].body);
    };
    let mut values: Vec<_> = records[0]
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.clone()))
        .collect();
    values.sort_by_key(|(k, _)| *k);
    assert_eq!(
        values,
        vec![
            ("humidity", KvValue::Double(69.0)),
            ("temperature", KvValue::Double(25.7))
        ]
    );
    // Debug on: the integration and the converter recorded what happened.
    let (events, _) = f
        .hub
        .events()
        .query(coap.id, &query(Some(EventKind::DebugIntegration)));
    assert_eq!(events[0].body["status"], "OK");
    assert_eq!(events[0].body["messageType"], "TEXT");
    let (events, _) = f
        .hub
        .events()
        .query(csv.id, &query(Some(EventKind::DebugConverter)));
    assert_eq!(
        events[0].body["in"],
        "SN-001,default,temperature,25.7,humidity,69\n"
    );
    assert!(
        events[0].body["out"]
            .as_str()
            .is_some_and(|o| o.contains("SN-001"))
    );
    assert!(
        events[0].body["metadata"]
            .as_str()
            .is_some_and(|m| m.contains("region"))
    );
    // A second message finds the device instead of creating it again.
    f.send(IntegrationKind::Coap, "k1", "SN-001,default,temperature,26")
        .await
        .expect("taken");
    assert_eq!(f.registry.devices().len(), 1);
}

#[tokio::test]
async fn a_device_the_integration_may_not_create_is_refused_with_an_event() {
    let f = fixture().await;
    let csv = f.converter("csv", ConverterKind::Uplink, CSV).await;
    let coap = f
        .integration(IntegrationKind::Coap, "k1", &csv, false)
        .await;
    let e = f
        .send(IntegrationKind::Coap, "k1", "SN-404,default,t,1")
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, UplinkError::Refused(m) if m.contains("SN-404") && m.contains("may not create")),
        "{e}"
    );
    assert!(f.producer.messages().is_empty());
    assert!(f.registry.devices().is_empty());
    let (events, _) = f.hub.events().query(coap.id, &query(None));
    assert_eq!(events[0].body["status"], "ERROR");
    assert!(
        events[0].body["error"]
            .as_str()
            .is_some_and(|m| m.contains("SN-404"))
    );
}

#[tokio::test]
async fn routing_keys_kinds_and_the_enabled_flag_are_checked() {
    let f = fixture().await;
    let csv = f.converter("csv", ConverterKind::Uplink, CSV).await;
    let mut http = f.integration(IntegrationKind::Http, "h1", &csv, true).await;
    assert_eq!(
        f.send(IntegrationKind::Coap, "h1", "a,b,c,1").await.err(),
        Some(UplinkError::NotFound),
        "an HTTP integration's key is not a CoAP endpoint"
    );
    assert_eq!(
        f.send(IntegrationKind::Http, "nope", "a,b,c,1").await.err(),
        Some(UplinkError::NotFound)
    );
    assert_eq!(
        f.send(IntegrationKind::Http, "h1", "").await.err(),
        Some(UplinkError::EmptyPayload)
    );
    http.enabled = false;
    f.hub.save_integration(http.clone()).await.expect("saved");
    assert_eq!(
        f.send(IntegrationKind::Http, "h1", "a,b,c,1").await.err(),
        Some(UplinkError::Disabled)
    );
    // Another integration may not take the key.
    let mut other = http.clone();
    other.id = Uuid::new_v4();
    let e = f.hub.save_integration(other).await.expect_err("taken key");
    assert!(e.to_string().contains("routing key"), "{e}");
    // An integration's uplink converter must be an uplink converter.
    let down = f.converter("down", ConverterKind::Downlink, DOWNLINK).await;
    let mut wrong = http.clone();
    wrong.uplink_converter_id = down.id;
    let e = f.hub.save_integration(wrong).await.expect_err("wrong kind");
    assert!(e.to_string().contains("DOWNLINK"), "{e}");
    // A converter in use cannot be deleted; an unused one can.
    let e = f
        .hub
        .delete_converter(f.tenant, csv.id)
        .await
        .expect_err("in use");
    assert!(e.to_string().contains("used by"), "{e}");
    f.hub
        .delete_converter(f.tenant, down.id)
        .await
        .expect("deleted");
    f.hub
        .delete_integration(f.tenant, http.id)
        .await
        .expect("deleted");
    f.hub
        .delete_converter(f.tenant, csv.id)
        .await
        .expect("deleted");
}

#[tokio::test]
async fn a_failing_converter_fails_its_own_messages_only() {
    let f = fixture().await;
    let csv = f.converter("csv", ConverterKind::Uplink, CSV).await;
    let broken = f
        .converter(
            "broken",
            ConverterKind::Uplink,
            r#"raiseError("bad frame"); 1"#,
        )
        .await;
    let spin = f.converter("spin", ConverterKind::Uplink, "loop { }").await;
    f.integration(IntegrationKind::Http, "good", &csv, true)
        .await;
    f.integration(IntegrationKind::Http, "bad", &broken, true)
        .await;
    f.integration(IntegrationKind::Http, "slow", &spin, true)
        .await;
    // Many errors in a row: no blacklisting, the next good message still goes through, and
    // the working integration is never affected.
    for _ in 0..5 {
        let e = f
            .send(IntegrationKind::Http, "bad", "x")
            .await
            .expect_err("fails");
        assert!(e.to_string().contains("bad frame"), "{e}");
        let e = f
            .send(IntegrationKind::Http, "slow", "x")
            .await
            .expect_err("stopped");
        assert!(e.to_string().contains("limit"), "{e}");
        f.send(IntegrationKind::Http, "good", "D1,default,t,1")
            .await
            .expect("taken");
    }
    assert_eq!(f.producer.messages().len(), 5);
    // Errors are recorded for the converter even with debug off.
    let (events, _) = f.hub.events().query(broken.id, &query(None));
    assert_eq!(events.len(), 5);
    assert!(
        events[0].body["error"]
            .as_str()
            .is_some_and(|m| m.contains("bad frame"))
    );
}

#[tokio::test]
async fn a_changed_converter_applies_to_the_next_message() {
    let f = fixture().await;
    let mut conv = f
        .converter(
            "v",
            ConverterKind::Uplink,
            r#"#{deviceName: "D", telemetry: #{v: 1}}"#,
        )
        .await;
    f.integration(IntegrationKind::Http, "k", &conv, true).await;
    f.send(IntegrationKind::Http, "k", "x").await.expect("v1");
    conv.script = r#"#{deviceName: "D", telemetry: #{v: 2}}"#.into();
    f.hub.save_converter(conv.clone()).await.expect("saved");
    f.send(IntegrationKind::Http, "k", "x").await.expect("v2");
    let values: Vec<_> = f
        .producer
        .messages()
        .iter()
        .map(|m| match &m.body {
            MessageBody::Telemetry(r) => r[0].entries[0].value.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, vec![KvValue::Long(1), KvValue::Long(2)]);
    // A script that does not compile is refused and the old one stays in force.
    conv.script = "let = ;".into();
    let e = f.hub.save_converter(conv).await.expect_err("syntax");
    assert!(e.to_string().contains("line 1"), "{e}");
    f.send(IntegrationKind::Http, "k", "x")
        .await
        .expect("still v2");
}

#[tokio::test]
async fn attributes_and_several_records_become_messages_of_each_device() {
    let f = fixture().await;
    let conv = f
        .converter(
            "multi",
            ConverterKind::Uplink,
            r#"[#{deviceName: "A", attributes: #{fw: "1.0"}, telemetry: [#{ts: 1000, values: #{t: 1}}, #{ts: 2000, values: #{t: 2}}]},
                #{deviceName: "B", deviceType: "meter", telemetry: #{t: 3}}]"#,
        )
        .await;
    f.integration(IntegrationKind::Http, "k", &conv, true).await;
    let outcome = f
        .send(IntegrationKind::Http, "k", "x")
        .await
        .expect("taken");
    let names: Vec<_> = outcome.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["A", "B"]);
    assert_eq!(outcome.devices[1].device_type, "meter");
    let messages = f.producer.messages();
    assert_eq!(messages.len(), 3);
    assert!(
        matches!(&messages[0].body, MessageBody::Attributes { scope: AttributeScope::Client, entries } if entries[0].key == "fw")
    );
    let MessageBody::Telemetry(records) = &messages[1].body else {
        panic!("telemetry");
    };
    assert_eq!(
        records.iter().map(|r| r.ts).collect::<Vec<_>>(),
        vec![1000, 2000]
    );
}

#[tokio::test]
async fn an_http_downlink_waits_for_the_devices_next_uplink() {
    let f = fixture().await;
    let up = f
        .converter(
            "up",
            ConverterKind::Uplink,
            r#"#{deviceName: "sensorA", telemetry: #{t: 1}}"#,
        )
        .await;
    let down = f.converter("down", ConverterKind::Downlink, DOWNLINK).await;
    let mut http = f.integration(IntegrationKind::Http, "k", &up, true).await;
    http.downlink_converter_id = Some(down.id);
    f.hub.save_integration(http).await.expect("saved");
    let first = f
        .send(IntegrationKind::Http, "k", "x")
        .await
        .expect("taken");
    assert!(first.downlink.is_none());
    let device = first.devices[0].clone();
    let queued = f
        .hub
        .downlink(
            &device,
            "ATTRIBUTES_UPDATED",
            json!({"uploadFrequency": 30}),
            BTreeMap::from([("firmwareVersion".into(), "1.2.3".into())]),
        )
        .await
        .expect("converted");
    assert!(queued);
    // The latest one wins.
    f.hub
        .downlink(
            &device,
            "ATTRIBUTES_UPDATED",
            json!({"uploadFrequency": 60}),
            BTreeMap::from([("firmwareVersion".into(), "1.2.3".into())]),
        )
        .await
        .expect("converted");
    let second = f
        .send(IntegrationKind::Http, "k", "x")
        .await
        .expect("taken");
    let downlink = second.downlink.expect("pending downlink returned");
    assert_eq!(
        downlink.content,
        DownlinkContent::Json(r#"{"firmwareVersion":"1.2.3","tempFreq":60}"#.into())
    );
    assert!(
        downlink
            .metadata
            .contains(&("topic".into(), "temp-sensor/sensorA/upload".into()))
    );
    let third = f
        .send(IntegrationKind::Http, "k", "x")
        .await
        .expect("taken");
    assert!(third.downlink.is_none(), "a downlink is returned once");
}

#[tokio::test]
async fn definitions_survive_a_restart_through_the_catalog() {
    let catalog = Arc::new(MemCatalog::default());
    let start = || async {
        Integrations::start(
            Arc::new(ConverterRuntime::new(&Limits::default())),
            ConverterPool::new(1, 8),
            Arc::new(MemRegistry::default()),
            Arc::new(Ingress::new(Arc::new(MemProducer::default()), 1024)),
            catalog.clone(),
            Arc::new(DebugEvents::new(10, Duration::from_secs(60))),
            Settings::default(),
        )
        .await
        .expect("started")
    };
    let tenant = TenantId::from_name("t");
    let hub = start().await;
    let conv = hub
        .save_converter(ConverterDef {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            name: "c".into(),
            kind: ConverterKind::Uplink,
            script: CSV.into(),
            debug_mode: false,
            created_time: 0,
        })
        .await
        .expect("saved");
    hub.save_integration(IntegrationDef {
        id: Uuid::new_v4(),
        tenant_id: tenant,
        name: "i".into(),
        kind: IntegrationKind::Coap,
        routing_key: "key".into(),
        enabled: true,
        allow_create_devices: true,
        uplink_converter_id: conv.id,
        downlink_converter_id: None,
        metadata: BTreeMap::new(),
        debug_mode: false,
        created_time: 0,
    })
    .await
    .expect("saved");
    drop(hub);
    let again = start().await;
    again
        .uplink(
            IntegrationKind::Coap,
            "key",
            b"D,default,t,1".to_vec(),
            BTreeMap::new(),
        )
        .await
        .expect("served after restart");
    let page = PageRequest {
        page_size: 10,
        page: 0,
        text_search: None,
    };
    assert_eq!(again.integrations(tenant, &page).total_elements, 1);
    assert_eq!(
        again
            .converters(tenant, Some(ConverterKind::Uplink), &page)
            .total_elements,
        1
    );
    assert_eq!(
        again
            .converters(tenant, Some(ConverterKind::Downlink), &page)
            .total_elements,
        0
    );
}

#[tokio::test]
async fn one_message_cannot_name_more_devices_than_the_limit() {
    let f = fixture_with(
        Settings {
            max_devices_per_uplink: 10,
            ..Settings::default()
        },
        ConverterPool::new(2, 64),
    )
    .await;
    // The issue's case: a ten-byte datagram, a converter that makes a name per iteration.
    let conv = f
        .converter(
            "fan-out",
            ConverterKind::Uplink,
            r#"let out = []; for i in 0..30 { out.push(#{deviceName: "d" + i, telemetry: #{t: 1}}); } out"#,
        )
        .await;
    let coap = f.integration(IntegrationKind::Coap, "k", &conv, true).await;
    let e = f
        .send(IntegrationKind::Coap, "k", "0123456789")
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, UplinkError::Convert(c) if c.message.contains("named 30 devices") && c.message.contains("at most 10 ")),
        "{e}"
    );
    assert!(f.registry.devices().is_empty(), "no device created");
    assert!(f.producer.messages().is_empty());
    let (events, _) = f.hub.events().query(conv.id, &query(None));
    assert!(
        events[0].body["error"]
            .as_str()
            .is_some_and(|m| m.contains("max_devices_per_uplink")),
        "a converter error event"
    );
    let (events, _) = f.hub.events().query(coap.id, &query(None));
    assert_eq!(events[0].body["status"], "ERROR");
    // Many records of a few devices are fine.
    let few = f
        .converter(
            "readings",
            ConverterKind::Uplink,
            r#"let out = []; for i in 0..30 { out.push(#{deviceName: "d" + (i % 3), telemetry: #{ts: i, values: #{t: i}}}); } out"#,
        )
        .await;
    f.integration(IntegrationKind::Coap, "few", &few, true)
        .await;
    f.send(IntegrationKind::Coap, "few", "x")
        .await
        .expect("three devices");
    assert_eq!(f.registry.devices().len(), 3);
}

#[tokio::test]
async fn an_integration_creates_at_most_its_limit_of_devices() {
    let f = fixture_with(
        Settings {
            max_devices_per_integration: 3,
            ..Settings::default()
        },
        ConverterPool::new(2, 64),
    )
    .await;
    let csv = f.converter("csv", ConverterKind::Uplink, CSV).await;
    let coap = f.integration(IntegrationKind::Coap, "a", &csv, true).await;
    for n in 0..3 {
        f.send(IntegrationKind::Coap, "a", &format!("D{n},default,t,1"))
            .await
            .expect("created");
    }
    let e = f
        .send(IntegrationKind::Coap, "a", "D3,default,t,1")
        .await
        .expect_err("past the limit");
    assert!(
        matches!(&e, UplinkError::Refused(m) if m.contains("\"D3\"") && m.contains("limit of 3")),
        "{e}"
    );
    assert_eq!(f.registry.devices().len(), 3);
    let (events, _) = f
        .hub
        .events()
        .query(coap.id, &query(Some(EventKind::DebugIntegration)));
    assert!(
        events[0].body["error"]
            .as_str()
            .is_some_and(|m| m.contains("max_devices_per_integration"))
    );
    // Devices it created still send; another integration has its own count; a converter
    // edit does not start the count over.
    f.send(IntegrationKind::Coap, "a", "D1,default,t,2")
        .await
        .expect("known device");
    f.integration(IntegrationKind::Coap, "b", &csv, true).await;
    f.send(IntegrationKind::Coap, "b", "E0,default,t,1")
        .await
        .expect("own count");
    f.hub.save_converter(csv.clone()).await.expect("saved");
    f.send(IntegrationKind::Coap, "a", "D4,default,t,1")
        .await
        .expect_err("still at its limit");
}

#[tokio::test]
async fn a_converter_made_name_that_could_forge_a_log_line_is_a_converter_error() {
    let f = fixture().await;
    let conv = f
        .converter(
            "forger",
            ConverterKind::Uplink,
            r#"#{deviceName: "bad\nERROR forged", telemetry: #{t: 1}}"#,
        )
        .await;
    f.integration(IntegrationKind::Http, "k", &conv, true).await;
    let e = f
        .send(IntegrationKind::Http, "k", "x")
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, UplinkError::Convert(c) if c.message == "deviceName: device name must not contain control characters"),
        "{e}"
    );
    assert!(f.registry.devices().is_empty());
}

#[tokio::test]
async fn converter_events_do_not_show_credentials_the_converter_still_gets() {
    let f = fixture().await;
    let conv = f
        .converter(
            "auth",
            ConverterKind::Uplink,
            r#"#{deviceName: "A", attributes: #{auth: metadata.authorization}}"#,
        )
        .await;
    f.integration(IntegrationKind::Http, "k", &conv, true).await;
    f.hub
        .uplink(
            IntegrationKind::Http,
            "k",
            b"x".to_vec(),
            BTreeMap::from([
                ("authorization".into(), "Bearer s3cret".into()),
                ("cookie".into(), "session=abc".into()),
                ("x-site".into(), "plant-7".into()),
            ]),
        )
        .await
        .expect("taken");
    let messages = f.producer.messages();
    assert!(
        matches!(&messages[0].body, MessageBody::Attributes { entries, .. } if entries[0].value == KvValue::String("Bearer s3cret".into())),
        "the converter gets the header"
    );
    let (events, _) = f.hub.events().query(conv.id, &query(None));
    let metadata = events[0].body["metadata"].as_str().expect("metadata");
    assert!(
        !metadata.contains("s3cret") && !metadata.contains("session=abc"),
        "{metadata}"
    );
    assert!(metadata.contains("plant-7"), "{metadata}");
}

#[tokio::test]
async fn saving_a_converter_compiles_it_on_the_converter_pool() {
    // One worker held by a job and one waiting: the pool has no room.
    let f = fixture_with(Settings::default(), ConverterPool::new(1, 1)).await;
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let pool = &f.hub.pool;
    let holder = pool.run(move || {
        let _ = started_tx.send(());
        let _ = held.recv();
    });
    let rest = async {
        // The worker holds the first job: the next one waits in the queue's only place.
        let _ = started.await;
        let queued = pool.run(|| ());
        let save = async {
            let e = f
                .hub
                .save_converter(ConverterDef {
                    id: Uuid::new_v4(),
                    tenant_id: f.tenant,
                    name: "c".into(),
                    kind: ConverterKind::Uplink,
                    script: CSV.into(),
                    debug_mode: false,
                    created_time: 0,
                })
                .await;
            let _ = release.send(());
            e
        };
        tokio::join!(queued, save)
    };
    let (busy, (queued, saved)) = tokio::join!(holder, rest);
    assert_eq!(saved.expect_err("the pool is full"), CatalogError::Busy);
    assert!(busy.is_ok() && queued.is_ok());
    // With room again, it is saved.
    f.converter("c", ConverterKind::Uplink, CSV).await;
}

#[tokio::test]
async fn converter_and_integration_names_are_checked() {
    let f = fixture().await;
    let csv = f.converter("csv", ConverterKind::Uplink, CSV).await;
    let mut bad = csv.clone();
    bad.id = Uuid::new_v4();
    bad.name = "two\nlines".into();
    let e = f.hub.save_converter(bad).await.expect_err("refused");
    assert_eq!(
        e,
        CatalogError::Invalid("converter name must not contain control characters".into())
    );
    let mut long = f.integration(IntegrationKind::Http, "k", &csv, true).await;
    long.name = "i".repeat(256);
    let e = f.hub.save_integration(long).await.expect_err("refused");
    assert_eq!(
        e,
        CatalogError::Invalid("integration name is longer than 255 characters".into())
    );
}

/// Polls `f` once: an uplink polled once has taken its in-flight permit and handed its
/// conversion to the pool (the pool's queue takes a job without waiting), and then waits.
fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(f).poll(&mut cx)
}

#[tokio::test]
async fn one_integration_holds_no_more_than_its_share_of_the_converter_pool() {
    // One pool thread, kept busy until released, so uplinks wait in the pool's queue holding
    // their integration's permits.
    let f = fixture_with(
        Settings {
            max_in_flight: 2,
            ..Settings::default()
        },
        ConverterPool::new(1, 64),
    )
    .await;
    let up = f
        .converter(
            "up",
            ConverterKind::Uplink,
            r#"#{deviceName: decodeToString(payload), telemetry: #{t: 1}}"#,
        )
        .await;
    f.integration(IntegrationKind::Http, "greedy", &up, true)
        .await;
    f.integration(IntegrationKind::Http, "other", &up, true)
        .await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let hub = &f.hub;
    let mut busy = Box::pin(hub.run_script(move |_: &ConverterRuntime| {
        let _ = started_tx.send(());
        let _ = release_rx.recv();
    }));
    assert!(poll_once(&mut busy).is_pending());
    started_rx.await.expect("the pool thread is busy");

    let uplink = |key: &'static str, device: &'static str| {
        Box::pin(hub.uplink(
            IntegrationKind::Http,
            key,
            device.as_bytes().to_vec(),
            BTreeMap::new(),
        ))
    };
    let mut first = uplink("greedy", "g1");
    let mut second = uplink("greedy", "g2");
    assert!(poll_once(&mut first).is_pending());
    assert!(poll_once(&mut second).is_pending());
    // The greedy integration's share is taken: its third message is refused at once, not
    // queued behind the other two...
    let mut third = uplink("greedy", "g3");
    match poll_once(&mut third) {
        std::task::Poll::Ready(Err(UplinkError::Overloaded)) => {}
        std::task::Poll::Ready(other) => panic!("{:?}", other.map(|o| o.devices.len())),
        std::task::Poll::Pending => panic!("a third message of the greedy integration waits"),
    }
    // ...while another integration's message still gets a place in the pool.
    let mut other = uplink("other", "o1");
    assert!(poll_once(&mut other).is_pending());

    release_tx.send(()).expect("pool thread waiting");
    busy.await.expect("ran");
    for (uplink, device) in [(first, "g1"), (second, "g2"), (other, "o1")] {
        let outcome = uplink.await.expect("converted and enqueued");
        assert_eq!(outcome.devices[0].name, device);
    }
    let mut stored: Vec<String> = f
        .registry
        .devices()
        .iter()
        .map(|d| d.name.clone())
        .collect();
    stored.sort();
    assert_eq!(stored, ["g1", "g2", "o1"]);
    // With its messages done, the greedy integration has its share back.
    let again = uplink("greedy", "g3").await.expect("room again");
    assert_eq!(again.devices[0].name, "g3");
}

#[tokio::test]
async fn pending_downlinks_are_bounded_and_the_oldest_is_dropped() {
    let f = fixture_with(
        Settings {
            max_pending_downlinks: 2,
            ..Settings::default()
        },
        ConverterPool::new(2, 64),
    )
    .await;
    let up = f
        .converter(
            "up",
            ConverterKind::Uplink,
            r#"#{deviceName: decodeToString(payload), telemetry: #{t: 1}}"#,
        )
        .await;
    let down = f.converter("down", ConverterKind::Downlink, DOWNLINK).await;
    let mut http = f.integration(IntegrationKind::Http, "k", &up, true).await;
    http.downlink_converter_id = Some(down.id);
    f.hub.save_integration(http).await.expect("saved");
    let mut devices = Vec::new();
    for name in ["a", "b", "c"] {
        let first = f
            .send(IntegrationKind::Http, "k", name)
            .await
            .expect("taken");
        devices.push(first.devices[0].clone());
    }
    // Downlinks for a, b, then c: one more than the bound, so a's is dropped.
    for device in &devices {
        let queued = f
            .hub
            .downlink(
                device,
                "ATTRIBUTES_UPDATED",
                json!({"uploadFrequency": 30}),
                BTreeMap::from([("firmwareVersion".into(), "1".into())]),
            )
            .await
            .expect("converted");
        assert!(queued, "{}", device.name);
    }
    let mut got = Vec::new();
    for name in ["a", "b", "c"] {
        let next = f
            .send(IntegrationKind::Http, "k", name)
            .await
            .expect("taken");
        got.push((name, next.downlink.is_some()));
    }
    assert_eq!(got, [("a", false), ("b", true), ("c", true)]);
}

#[tokio::test]
async fn an_asset_is_refused_and_nothing_of_its_message_is_enqueued() {
    let f = fixture().await;
    let up = f
        .converter(
            "up",
            ConverterKind::Uplink,
            r#"[#{deviceName: "meter", telemetry: #{t: 1}}, #{assetName: "building", assetType: "site", attributes: #{floors: 3}}]"#,
        )
        .await;
    let coap = f
        .integration(IntegrationKind::Coap, "assets", &up, true)
        .await;
    let e = f
        .send(IntegrationKind::Coap, "assets", "x")
        .await
        .expect_err("refused");
    assert!(
        matches!(&e, UplinkError::Refused(m)
            if m == "asset 'building': this engine stores devices only; return deviceName"),
        "{e}"
    );
    // The device named beside the asset is resolved first but nothing reaches the queue.
    assert!(f.producer.messages().is_empty());
    let (events, _) = f.hub.events().query(coap.id, &query(None));
    assert_eq!(events[0].body["status"], "ERROR");
    assert!(
        events[0].body["error"]
            .as_str()
            .is_some_and(|m| m.contains("asset 'building'")),
        "{}",
        events[0].body
    );
}
