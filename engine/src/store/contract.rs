//! The contract every store backend passes: the same calls, the same answers. Each backend's
//! tests call these suites against a real instance.

use std::sync::Arc;

use actors::batch::WriteBatch;
use actors::model::{
    AccessToken, AttributeScope, Device, DeviceId, KvEntry, KvValue, Message, MessageBody,
    TenantId, TsRecord,
};
use actors::ports::{
    Aggregation, ClaimRequest, DeviceProfile, DeviceProfiles, DeviceRecords, DeviceRegistry,
    MAX_CLAIM_SECRET_BYTES, MAX_PENDING_RPCS, MAX_PROFILE_DESCRIPTION_BYTES,
    MAX_PROFILE_NAME_BYTES, MAX_PROFILE_PAGE_SIZE, MAX_PROVISION_CREDENTIAL_BYTES,
    MAX_RPC_PAGE_SIZE, MAX_RPC_REQUEST_BYTES, MAX_RPC_RESPONSE_BYTES, Order, Page, PageRequest,
    ProvisionType, RangeQuery, RecordError, RegistryError, RpcPageRequest, RpcRecord, RpcStatus,
    Store, TsValue,
};

fn tenant() -> TenantId {
    TenantId::from_name("contract")
}

fn telemetry(device: DeviceId, ts: i64, entries: Vec<KvEntry>) -> Message {
    Message {
        tenant_id: tenant(),
        device_id: device,
        received_ts: ts,
        body: MessageBody::Telemetry(vec![TsRecord { ts, entries }]),
    }
}

fn attributes(device: DeviceId, ts: i64, scope: AttributeScope, entries: Vec<KvEntry>) -> Message {
    Message {
        tenant_id: tenant(),
        device_id: device,
        received_ts: ts,
        body: MessageBody::Attributes { scope, entries },
    }
}

async fn write(store: &dyn Store, messages: &[Message]) {
    let batch = WriteBatch::from_messages(messages.iter());
    store.write(Arc::new(batch)).await.expect("write");
}

fn range(keys: &[&str], start: i64, end: i64, agg: Aggregation, interval: i64) -> RangeQuery {
    RangeQuery {
        keys: Some(keys.iter().map(|k| (*k).to_owned()).collect()),
        start_ts: start,
        end_ts: end,
        interval,
        limit: 100,
        agg,
        order: Order::Asc,
    }
}

fn points(series: Option<&Vec<TsValue>>) -> Vec<(i64, KvValue)> {
    series
        .map(|s| s.iter().map(|p| (p.ts, p.value.clone())).collect())
        .unwrap_or_default()
}

pub async fn store_suite(store: &dyn Store) {
    let d = DeviceId::derive(tenant(), "suite-device");
    let other = DeviceId::derive(tenant(), "other-device");
    let all_types = vec![
        KvEntry::new("s", KvValue::String("text".into())),
        KvEntry::new("b", KvValue::Bool(true)),
        KvEntry::new("l", KvValue::Long(-73)),
        KvEntry::new("d", KvValue::Double(42.5)),
        KvEntry::new("j", KvValue::Json(r#"{"a":[1,2]}"#.into())),
    ];
    write(store, &[telemetry(d, 1_000, all_types.clone())]).await;
    write(
        store,
        &[telemetry(
            other,
            1_000,
            vec![KvEntry::new("s", KvValue::Long(1))],
        )],
    )
    .await;

    // Types survive the round trip; keys are sorted; other devices stay apart.
    let keys = store.timeseries_keys(d).await.expect("keys");
    assert_eq!(keys, ["b", "d", "j", "l", "s"]);
    let latest = store.latest(d, None).await.expect("latest");
    for entry in &all_types {
        let got = latest
            .iter()
            .find(|l| l.key == entry.key)
            .expect("key present");
        assert_eq!(got.value.as_ref(), Some(&entry.value), "{}", entry.key);
        assert_eq!(got.ts, 1_000);
    }

    // A missing key is answered with no value.
    let asked = ["l".to_owned(), "nope".to_owned()];
    let latest = store.latest(d, Some(&asked)).await.expect("latest");
    assert_eq!(latest.len(), 2);
    assert_eq!(latest[1].key, "nope");
    assert_eq!(latest[1].value, None);

    // Latest only moves forward in time.
    write(
        store,
        &[telemetry(d, 500, vec![KvEntry::new("l", KvValue::Long(1))])],
    )
    .await;
    write(
        store,
        &[telemetry(
            d,
            2_000,
            vec![KvEntry::new("l", KvValue::Long(2))],
        )],
    )
    .await;
    let latest = store
        .latest(d, Some(&["l".to_owned()]))
        .await
        .expect("latest");
    assert_eq!(
        (latest[0].ts, latest[0].value.clone()),
        (2_000, Some(KvValue::Long(2)))
    );

    // Ranges are [start, end), ordered, limited.
    let raw = store
        .range(d, &range(&["l"], 500, 2_000, Aggregation::None, 0))
        .await
        .expect("range");
    assert_eq!(
        points(raw.get("l")),
        [(500, KvValue::Long(1)), (1_000, KvValue::Long(-73))]
    );
    let mut desc = range(&["l"], 0, 10_000, Aggregation::None, 0);
    desc.order = Order::Desc;
    desc.limit = 2;
    let got = store.range(d, &desc).await.expect("range");
    assert_eq!(
        points(got.get("l")),
        [(2_000, KvValue::Long(2)), (1_000, KvValue::Long(-73))]
    );

    // A replayed batch changes nothing.
    let replay = [telemetry(
        d,
        3_000,
        vec![KvEntry::new("r", KvValue::Long(5))],
    )];
    write(store, &replay).await;
    write(store, &replay).await;
    let sum = store
        .range(d, &range(&["r"], 0, 10_000, Aggregation::Sum, 0))
        .await
        .expect("sum");
    assert_eq!(points(sum.get("r")), [(5_000, KvValue::Long(5))]);
    let count = store
        .range(d, &range(&["r"], 0, 10_000, Aggregation::Count, 0))
        .await
        .expect("count");
    assert_eq!(points(count.get("r")), [(5_000, KvValue::Long(1))]);

    // Aggregation by interval: buckets of 10 from 0, reported at their middle.
    let agg_dev = DeviceId::derive(tenant(), "agg-device");
    let series: Vec<Message> = [(1, 2), (5, 4), (12, 10), (25, 7)]
        .iter()
        .map(|(ts, v)| telemetry(agg_dev, *ts, vec![KvEntry::new("x", KvValue::Long(*v))]))
        .collect();
    write(store, &series).await;
    write(
        store,
        &[telemetry(
            agg_dev,
            15,
            vec![KvEntry::new("x", KvValue::Double(0.5))],
        )],
    )
    .await;
    let cases: &[(Aggregation, &[(i64, KvValue)])] = &[
        (
            Aggregation::Count,
            &[
                (5, KvValue::Long(2)),
                (15, KvValue::Long(2)),
                (25, KvValue::Long(1)),
            ],
        ),
        (
            Aggregation::Sum,
            &[
                (5, KvValue::Long(6)),
                (15, KvValue::Double(10.5)),
                (25, KvValue::Long(7)),
            ],
        ),
        (
            Aggregation::Min,
            &[
                (5, KvValue::Long(2)),
                (15, KvValue::Double(0.5)),
                (25, KvValue::Long(7)),
            ],
        ),
        (
            Aggregation::Max,
            &[
                (5, KvValue::Long(4)),
                (15, KvValue::Double(10.0)),
                (25, KvValue::Long(7)),
            ],
        ),
        (
            Aggregation::Avg,
            &[
                (5, KvValue::Double(3.0)),
                (15, KvValue::Double(5.25)),
                (25, KvValue::Double(7.0)),
            ],
        ),
    ];
    for (agg, want) in cases {
        let got = store
            .range(agg_dev, &range(&["x"], 0, 30, *agg, 10))
            .await
            .expect("agg");
        assert_eq!(points(got.get("x")), *want, "{agg:?}");
    }
    // The last bucket is cut at endTs and reported at the middle of what is left.
    let got = store
        .range(agg_dev, &range(&["x"], 0, 26, Aggregation::Count, 10))
        .await
        .expect("agg");
    assert_eq!(points(got.get("x")).last(), Some(&(23, KvValue::Long(1))));
    let strings = store
        .range(d, &range(&["s"], 0, 10_000, Aggregation::Avg, 0))
        .await
        .expect("avg");
    assert!(!strings.contains_key("s"), "strings have no average");

    // Attributes by scope.
    write(
        store,
        &[
            attributes(
                d,
                10,
                AttributeScope::Client,
                vec![KvEntry::new("fw", KvValue::String("1.0".into()))],
            ),
            attributes(
                d,
                11,
                AttributeScope::Shared,
                vec![KvEntry::new("target", KvValue::Long(3))],
            ),
            attributes(
                d,
                12,
                AttributeScope::Client,
                vec![KvEntry::new("fw", KvValue::String("1.1".into()))],
            ),
        ],
    )
    .await;
    let all = store.attributes(d, None, None).await.expect("attrs");
    let all: Vec<(AttributeScope, &str, i64, &KvValue)> = all
        .iter()
        .map(|a| (a.scope, a.key.as_str(), a.last_update_ts, &a.value))
        .collect();
    assert_eq!(
        all,
        [
            (
                AttributeScope::Client,
                "fw",
                12,
                &KvValue::String("1.1".into())
            ),
            (AttributeScope::Shared, "target", 11, &KvValue::Long(3)),
        ]
    );
    let client = store
        .attributes(d, Some(AttributeScope::Client), None)
        .await
        .expect("attrs");
    assert_eq!(client.len(), 1);
    let server = store
        .attributes(d, Some(AttributeScope::Server), None)
        .await
        .expect("attrs");
    assert!(server.is_empty());
    let keys = store.attribute_keys(d, None).await.expect("keys");
    assert_eq!(keys, ["fw", "target"]);
    let picked = store
        .attributes(d, None, Some(&["target".to_owned()]))
        .await
        .expect("attrs");
    assert_eq!(picked.len(), 1);

    // Deleting: gone from values and keys; another scope's key of the same name stays; only a
    // newer write brings it back.
    write(
        store,
        &[attributes(
            d,
            13,
            AttributeScope::Server,
            vec![KvEntry::new("target", KvValue::Long(9))],
        )],
    )
    .await;
    store
        .delete_attributes(
            d,
            AttributeScope::Shared,
            &["target".to_owned(), "never-there".to_owned()],
            20,
        )
        .await
        .expect("delete");
    let left: Vec<(AttributeScope, String)> = store
        .attributes(d, None, None)
        .await
        .expect("attrs")
        .into_iter()
        .map(|a| (a.scope, a.key))
        .collect();
    assert_eq!(
        left,
        [
            (AttributeScope::Client, "fw".to_owned()),
            (AttributeScope::Server, "target".to_owned())
        ]
    );
    assert!(
        store
            .attributes(d, Some(AttributeScope::Shared), None)
            .await
            .expect("attrs")
            .is_empty()
    );
    assert_eq!(
        store
            .attribute_keys(d, Some(AttributeScope::Shared))
            .await
            .expect("keys"),
        Vec::<String>::new()
    );
    assert_eq!(
        store.attribute_keys(d, None).await.expect("keys"),
        ["fw", "target"]
    );
    // A value older than the deletion, stored after it (it waited in the queue), stays
    // deleted.
    write(
        store,
        &[attributes(
            d,
            15,
            AttributeScope::Shared,
            vec![KvEntry::new("target", KvValue::Long(8))],
        )],
    )
    .await;
    assert!(
        store
            .attributes(d, Some(AttributeScope::Shared), None)
            .await
            .expect("attrs")
            .is_empty()
    );
    write(
        store,
        &[attributes(
            d,
            21,
            AttributeScope::Shared,
            vec![KvEntry::new("target", KvValue::Long(4))],
        )],
    )
    .await;
    let back = store
        .attributes(d, Some(AttributeScope::Shared), None)
        .await
        .expect("attrs");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].value, KvValue::Long(4));
}

/// A device of [`tenant`] named `name`, logging in with `token`.
pub(crate) fn device(name: &str, token: &str) -> Device {
    Device {
        id: DeviceId::derive(tenant(), name),
        tenant_id: tenant(),
        name: name.into(),
        device_type: "default".into(),
        label: None,
        token: AccessToken(token.into()),
        created_time: 1,
        additional_info: None,
    }
}

pub async fn registry_suite(registry: &dyn DeviceRegistry) {
    let a = registry.save(device("alpha", "tok-a")).await.expect("save");
    registry.save(device("beta", "tok-b")).await.expect("save");
    assert_eq!(
        registry.by_token("tok-a").await.expect("lookup").as_deref(),
        Some(&*a)
    );
    assert_eq!(registry.by_token("nope").await.expect("lookup"), None);
    assert_eq!(
        registry
            .get(a.id)
            .await
            .expect("get")
            .map(|d| d.name.clone()),
        Some("alpha".into())
    );
    assert!(
        registry
            .by_name(tenant(), "beta")
            .await
            .expect("lookup")
            .is_some()
    );

    let dup_token = registry.save(device("gamma", "tok-a")).await;
    assert_eq!(dup_token.err(), Some(RegistryError::DuplicateToken));
    let mut renamed = device("beta", "tok-fresh");
    renamed.id = a.id;
    assert_eq!(
        registry.save(renamed).await.err(),
        Some(RegistryError::DuplicateName)
    );

    // A new token replaces the old one.
    let mut retoken = (*a).clone();
    retoken.token = AccessToken("tok-a2".into());
    registry.save(retoken).await.expect("update");
    assert!(registry.by_token("tok-a").await.expect("lookup").is_none());
    assert!(registry.by_token("tok-a2").await.expect("lookup").is_some());

    for i in 0..5 {
        registry
            .save(device(&format!("page-{i}"), &format!("tok-p{i}")))
            .await
            .expect("save");
    }
    let page = |page, text: Option<&str>| PageRequest {
        page_size: 2,
        page,
        text_search: text.map(str::to_owned),
    };
    let first = registry.list(tenant(), &page(0, None)).await.expect("list");
    assert_eq!(first.total_elements, 7);
    let names: Vec<&str> = first.data.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    let last = registry.list(tenant(), &page(3, None)).await.expect("list");
    assert_eq!(last.data.len(), 1);
    let found = registry
        .list(tenant(), &page(0, Some("PAGE-")))
        .await
        .expect("list");
    assert_eq!(found.total_elements, 5);
    let none = registry
        .list(TenantId::from_name("elsewhere"), &page(0, None))
        .await
        .expect("list");
    assert_eq!(none.total_elements, 0);

    assert!(registry.delete(a.id).await.expect("delete"));
    assert!(!registry.delete(a.id).await.expect("delete again"));
    assert!(registry.by_token("tok-a2").await.expect("lookup").is_none());

    renamed_devices_keep_their_id(registry).await;
}

/// A renamed device keeps its id (derived from its first name); a device created later under
/// the old name is a new device with an id of its own, and the renamed one is untouched.
async fn renamed_devices_keep_their_id(registry: &dyn DeviceRegistry) {
    let first = registry
        .save(device("old-name", "tok-old"))
        .await
        .expect("save");
    let renamed = Device {
        name: "new-name".into(),
        ..(*first).clone()
    };
    registry.save(renamed).await.expect("rename");
    assert!(
        registry
            .by_name(tenant(), "old-name")
            .await
            .expect("lookup")
            .is_none()
    );

    let again = registry
        .create(device("old-name", "tok-again"))
        .await
        .expect("a new device under the old name");
    assert_ne!(again.id, first.id, "a new device, not the renamed one");
    let kept = registry
        .by_name(tenant(), "new-name")
        .await
        .expect("lookup")
        .expect("the renamed device is still there");
    assert_eq!((kept.id, kept.token.0.as_str()), (first.id, "tok-old"));
    assert_eq!(
        registry
            .by_token("tok-old")
            .await
            .expect("lookup")
            .map(|d| d.name.clone()),
        Some("new-name".into())
    );
    assert_eq!(
        registry
            .by_token("tok-again")
            .await
            .expect("lookup")
            .map(|d| d.id),
        Some(again.id)
    );
    assert_eq!(
        registry
            .get(first.id)
            .await
            .expect("get")
            .map(|d| d.name.clone()),
        Some("new-name".into())
    );
    assert_eq!(
        registry.create(device("old-name", "tok-third")).await.err(),
        Some(RegistryError::DuplicateName),
        "names are unique per tenant"
    );
    assert_eq!(
        registry.create(device("third", "tok-old")).await.err(),
        Some(RegistryError::DuplicateToken)
    );

    // Deleted, then created again under the same name: the same id, a new device.
    assert!(registry.delete(again.id).await.expect("delete"));
    let reborn = registry
        .create(device("old-name", "tok-reborn"))
        .await
        .expect("created again");
    assert_eq!(reborn.id, again.id);
    assert_eq!(
        registry
            .by_name(tenant(), "old-name")
            .await
            .expect("lookup")
            .map(|d| d.token.0.clone()),
        Some("tok-reborn".into())
    );
}

/// Writes a device and some data; `check_sample` reads them back (e.g. after a reopen).
pub async fn write_sample(store: &dyn Store, registry: &dyn DeviceRegistry) -> DeviceId {
    let d = registry
        .save(Device {
            additional_info: Some(r#"{"gateway":true,"note":"kept"}"#.into()),
            ..device("durable", "tok-durable")
        })
        .await
        .expect("save");
    // One without, to show `null` is kept apart from text.
    registry
        .save(device("durable-plain", "tok-durable-plain"))
        .await
        .expect("save");
    write(
        store,
        &[
            telemetry(d.id, 7, vec![KvEntry::new("t", KvValue::Double(1.5))]),
            attributes(
                d.id,
                8,
                AttributeScope::Client,
                vec![KvEntry::new("a", KvValue::Bool(false))],
            ),
        ],
    )
    .await;
    d.id
}

pub async fn check_sample(store: &dyn Store, registry: &dyn DeviceRegistry, id: DeviceId) {
    let d = registry
        .by_token("tok-durable")
        .await
        .expect("lookup")
        .expect("device kept");
    assert_eq!(d.id, id);
    assert_eq!(
        d.additional_info.as_deref(),
        Some(r#"{"gateway":true,"note":"kept"}"#),
        "additionalInfo kept"
    );
    assert!(d.is_gateway());
    let plain = registry
        .by_token("tok-durable-plain")
        .await
        .expect("lookup")
        .expect("device kept");
    assert_eq!(plain.additional_info, None);
    assert!(!plain.is_gateway());
    let latest = store.latest(id, None).await.expect("latest");
    assert_eq!(latest[0].value, Some(KvValue::Double(1.5)));
    let attrs = store.attributes(id, None, None).await.expect("attrs");
    assert_eq!(attrs[0].value, KvValue::Bool(false));
}

/// The catalog contract: definitions written are read back whole, a replaced one is read in
/// its newest form, a deleted one is gone.
pub async fn catalog_suite(catalog: &dyn actors::ports::Catalog) {
    use actors::integration::{ConverterDef, ConverterKind, IntegrationDef, IntegrationKind};
    let tenant = actors::model::TenantId::from_name("catalog");
    let mut converter = ConverterDef {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        name: "c".into(),
        kind: ConverterKind::Uplink,
        script: "#{deviceName: \"d\"}".into(),
        debug_mode: true,
        created_time: 1,
    };
    let integration = IntegrationDef {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        name: "i".into(),
        kind: IntegrationKind::Coap,
        routing_key: "key-1".into(),
        enabled: true,
        allow_create_devices: false,
        uplink_converter_id: converter.id,
        downlink_converter_id: Some(uuid::Uuid::new_v4()),
        metadata: [("a".to_owned(), "b".to_owned())].into(),
        debug_mode: false,
        created_time: 2,
    };
    catalog
        .put_converter(&converter)
        .await
        .expect("put converter");
    catalog
        .put_integration(&integration)
        .await
        .expect("put integration");
    converter.script = "#{deviceName: \"e\"}".into();
    catalog
        .put_converter(&converter)
        .await
        .expect("replace converter");
    let (converters, integrations) = catalog.load().await.expect("load");
    assert_eq!(
        converters,
        vec![converter.clone()],
        "the newest version, once"
    );
    assert_eq!(integrations, vec![integration.clone()]);
    catalog.delete(integration.id).await.expect("delete");
    let (converters, integrations) = catalog.load().await.expect("load");
    assert_eq!(converters.len(), 1);
    assert!(integrations.is_empty(), "deleted");
}

fn rpc(device: DeviceId, created_time: i64, status: actors::ports::RpcStatus) -> RpcRecord {
    RpcRecord {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant(),
        device_id: device,
        created_time,
        expiration_time: created_time + 60_000,
        request: format!(r#"{{"method":"m{created_time}","params":{{"a":[1,2]}},"oneway":false}}"#),
        response: None,
        status,
        additional_info: Some(r#"{"note":"é"}"#.into()),
    }
}

fn rpc_page(page_size: usize, page: usize, status: Option<RpcStatus>) -> RpcPageRequest {
    RpcPageRequest {
        page_size,
        page,
        status,
    }
}

/// What a page holds: the created times, in order.
fn created(page: &Page<RpcRecord>) -> Vec<i64> {
    page.data.iter().map(|r| r.created_time).collect()
}

/// The records contract: persistent RPCs and claim requests.
pub async fn records_suite(records: &dyn DeviceRecords) {
    rpc_records(records).await;
    claim_requests(records).await;
}

async fn rpc_records(records: &dyn DeviceRecords) {
    use RpcStatus::{Delivered, Queued, Successful};
    let d = DeviceId::derive(tenant(), "rpc-device");
    let other = DeviceId::derive(tenant(), "rpc-other");
    let mut saved = Vec::new();
    for (t, status) in [
        (10, Queued),
        (20, Delivered),
        (30, Queued),
        (40, Successful),
        (50, Queued),
    ] {
        let r = rpc(d, t, status);
        records.save_rpc(&r).await.expect("save");
        saved.push(r);
    }
    records
        .save_rpc(&rpc(other, 35, Queued))
        .await
        .expect("save");

    // Read back whole, by id.
    let first = &saved[0];
    assert_eq!(
        records.rpc(first.id).await.expect("get").as_ref(),
        Some(first)
    );
    assert_eq!(records.rpc(uuid::Uuid::new_v4()).await.expect("get"), None);

    // Pages: newest first, the total counted over all pages, the filter applied before both.
    let cases: &[(RpcPageRequest, &[i64], usize)] = &[
        (rpc_page(2, 0, None), &[50, 40], 5),
        (rpc_page(2, 1, None), &[30, 20], 5),
        (rpc_page(2, 2, None), &[10], 5),
        (rpc_page(2, 3, None), &[], 5),
        (rpc_page(10, 0, Some(Queued)), &[50, 30, 10], 3),
        (rpc_page(1, 1, Some(Queued)), &[30], 3),
        (rpc_page(10, 0, Some(RpcStatus::Failed)), &[], 0),
    ];
    for (request, want, total) in cases {
        let got = records.device_rpcs(d, request).await.expect("page");
        assert_eq!(
            (created(&got).as_slice(), got.total_elements),
            (*want, *total),
            "{request:?}"
        );
    }

    // A save with a known id replaces the record: status and response change, it moves
    // between the filters.
    let mut answered = saved[2].clone();
    answered.status = Successful;
    answered.response = Some(r#"{"ok":true}"#.into());
    records.save_rpc(&answered).await.expect("replace");
    assert_eq!(
        records.rpc(answered.id).await.expect("get"),
        Some(answered.clone())
    );
    let all = records
        .device_rpcs(d, &rpc_page(10, 0, None))
        .await
        .expect("page");
    assert_eq!(all.total_elements, 5, "replaced, not added");
    // Those not finished (QUEUED, SENT, DELIVERED, TIMEOUT), oldest first.
    let pending = records.pending_rpcs(d, 10).await.expect("pending");
    let pending: Vec<i64> = pending.iter().map(|r| r.created_time).collect();
    assert_eq!(pending, [10, 20, 50], "oldest first, the answered one gone");
    let one = records.pending_rpcs(d, 1).await.expect("pending");
    assert_eq!(one.len(), 1);

    // Deleted: gone from every read, and an update does not bring it back.
    assert!(records.delete_rpc(saved[0].id).await.expect("delete"));
    assert!(!records.update_rpc(&saved[0]).await.expect("update"));
    let mut moved = saved[4].clone();
    moved.status = Delivered;
    assert!(records.update_rpc(&moved).await.expect("update"));
    assert_eq!(
        records.rpc(moved.id).await.expect("get"),
        Some(moved.clone())
    );
    records.save_rpc(&saved[4]).await.expect("back to queued");
    assert!(!records.delete_rpc(saved[0].id).await.expect("delete again"));
    assert_eq!(records.rpc(saved[0].id).await.expect("get"), None);
    let pending = records.pending_rpcs(d, 10).await.expect("pending");
    assert_eq!(pending.len(), 2);
    let all = records
        .device_rpcs(d, &rpc_page(10, 0, None))
        .await
        .expect("page");
    assert_eq!(created(&all), [50, 40, 30, 20]);
    assert_eq!(all.total_elements, 4);
    let others = records.pending_rpcs(other, 10).await.expect("pending");
    assert_eq!(others.len(), 1, "other devices stay apart");

    // The TTL: every record created before the time goes, whatever its status or device.
    records.delete_rpcs_created_before(35).await.expect("ttl");
    let all = records
        .device_rpcs(d, &rpc_page(10, 0, None))
        .await
        .expect("page");
    assert_eq!((created(&all), all.total_elements), (vec![50, 40], 2));
    assert_eq!(records.rpc(saved[2].id).await.expect("get"), None);
    let others = records.pending_rpcs(other, 10).await.expect("pending");
    assert_eq!(others.len(), 1, "created at 35: not before it");

    // Bounds: too long, not JSON, pages too large or empty; nothing is written.
    let mut long = rpc(d, 60, Queued);
    long.request = format!("\"{}\"", "x".repeat(MAX_RPC_REQUEST_BYTES));
    assert!(matches!(
        records.save_rpc(&long).await,
        Err(RecordError::TooLong {
            field: "request",
            ..
        })
    ));
    let mut long = rpc(d, 60, Queued);
    long.response = Some(format!("\"{}\"", "x".repeat(MAX_RPC_RESPONSE_BYTES)));
    assert!(matches!(
        records.save_rpc(&long).await,
        Err(RecordError::TooLong {
            field: "response",
            ..
        })
    ));
    let mut not_json = rpc(d, 60, Queued);
    not_json.additional_info = Some("{".into());
    assert_eq!(
        records.save_rpc(&not_json).await,
        Err(RecordError::NotJson {
            field: "additionalInfo"
        })
    );
    assert_eq!(records.rpc(long.id).await.expect("get"), None);
    for size in [0, MAX_RPC_PAGE_SIZE + 1] {
        assert!(matches!(
            records.device_rpcs(d, &rpc_page(size, 0, None)).await,
            Err(RecordError::PageSize { .. })
        ));
    }
    assert!(matches!(
        records
            .device_rpcs(d, &rpc_page(MAX_RPC_PAGE_SIZE, usize::MAX, None))
            .await,
        Err(RecordError::PageOutOfRange { .. })
    ));
    assert!(matches!(
        records.pending_rpcs(d, MAX_PENDING_RPCS + 1).await,
        Err(RecordError::PageSize { .. })
    ));
    // The largest record allowed is stored whole.
    let mut largest = rpc(d, 70, Queued);
    largest.request = format!("\"{}\"", "y".repeat(MAX_RPC_REQUEST_BYTES - 2));
    largest.response = Some(format!("\"{}\"", "z".repeat(MAX_RPC_RESPONSE_BYTES - 2)));
    records.save_rpc(&largest).await.expect("at the bound");
    assert_eq!(records.rpc(largest.id).await.expect("get"), Some(largest));
}

async fn claim_requests(records: &dyn DeviceRecords) {
    let d = DeviceId::derive(tenant(), "claimed");
    let claim = |secret: &str, expiration_time| ClaimRequest {
        device_id: d,
        secret_key: secret.into(),
        expiration_time,
    };
    assert_eq!(records.claim(d).await.expect("get"), None);
    let first = claim("s1", 1_000);
    assert_eq!(
        records.put_claim_if_absent(&first, 0).await.expect("put"),
        first
    );
    // While it stands, a second request changes nothing.
    assert_eq!(
        records
            .put_claim_if_absent(&claim("s2", 5_000), 999)
            .await
            .expect("put"),
        first
    );
    assert_eq!(records.claim(d).await.expect("get"), Some(first.clone()));
    // Expired: replaced.
    let second = claim("", 9_000);
    assert_eq!(
        records
            .put_claim_if_absent(&second, 1_000)
            .await
            .expect("put"),
        second,
        "an empty secret is a secret too"
    );
    assert_eq!(records.claim(d).await.expect("get"), Some(second));
    let other = DeviceId::derive(tenant(), "unclaimed");
    assert_eq!(records.claim(other).await.expect("get"), None);

    assert!(records.delete_claim(d).await.expect("delete"));
    assert!(!records.delete_claim(d).await.expect("delete again"));
    assert_eq!(records.claim(d).await.expect("get"), None);
    // Deleted, then asked again: a new one stands.
    let third = claim("s3", 20_000);
    assert_eq!(
        records
            .put_claim_if_absent(&third, 2_000)
            .await
            .expect("put"),
        third
    );
    assert_eq!(records.claim(d).await.expect("get"), Some(third));

    let long = claim(&"k".repeat(MAX_CLAIM_SECRET_BYTES + 1), 50_000);
    assert!(matches!(
        records.put_claim_if_absent(&long, 100_000).await,
        Err(RecordError::TooLong {
            field: "secretKey",
            ..
        })
    ));
    assert_eq!(
        records.claim(d).await.expect("get").map(|c| c.secret_key),
        Some("s3".into())
    );
}

/// Writes an RPC and a claim request; `check_records_sample` reads them back (after a reopen).
pub async fn write_records_sample(records: &dyn DeviceRecords) -> RpcRecord {
    let d = DeviceId::derive(tenant(), "durable-records");
    let r = rpc(d, 77, RpcStatus::Queued);
    records.save_rpc(&r).await.expect("save");
    let claim = ClaimRequest {
        device_id: d,
        secret_key: "kept".into(),
        expiration_time: i64::MAX,
    };
    records.put_claim_if_absent(&claim, 0).await.expect("claim");
    r
}

pub async fn check_records_sample(records: &dyn DeviceRecords, rpc: &RpcRecord) {
    assert_eq!(
        records
            .pending_rpcs(rpc.device_id, 10)
            .await
            .expect("pending"),
        std::slice::from_ref(rpc)
    );
    assert_eq!(
        records
            .claim(rpc.device_id)
            .await
            .expect("claim")
            .map(|c| c.secret_key),
        Some("kept".into())
    );
}

fn profile(tenant: TenantId, name: &str, default: bool, key: Option<&str>) -> DeviceProfile {
    DeviceProfile {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        created_time: 5,
        name: name.into(),
        default,
        description: Some(format!("the {name} profile")),
        provision_type: if key.is_some() {
            ProvisionType::AllowCreateNewDevices
        } else {
            ProvisionType::Disabled
        },
        provision_device_key: key.map(str::to_owned),
        provision_device_secret: key.map(|k| format!("{k}-secret")),
    }
}

/// The device profiles contract: lookups, names unique per tenant, provision keys unique, one
/// default per tenant, pages, bounds.
pub async fn profiles_suite(profiles: &dyn DeviceProfiles) {
    let t = TenantId::from_name("profiles");
    let elsewhere = TenantId::from_name("profiles-elsewhere");
    let a = profile(t, "alpha", true, Some("key-a"));
    let b = profile(t, "Beta", false, None);
    let c = profile(t, "gamma", false, Some("key-c"));
    let other = profile(elsewhere, "alpha", true, None);
    for p in [&a, &b, &c, &other] {
        profiles.save_profile(p).await.expect("save");
    }

    assert_eq!(profiles.profile(a.id).await.expect("get"), Some(a.clone()));
    assert_eq!(
        profiles.profile(uuid::Uuid::new_v4()).await.expect("get"),
        None
    );
    let by_name = profiles.profile_by_name(t, "Beta").await.expect("by name");
    assert_eq!(by_name, Some(b.clone()));
    assert_eq!(
        profiles.profile_by_name(t, "beta").await.expect("by name"),
        None
    );
    let by_name = profiles
        .profile_by_name(elsewhere, "alpha")
        .await
        .expect("by name");
    assert_eq!(
        by_name.map(|p| p.id),
        Some(other.id),
        "names are per tenant"
    );
    assert_eq!(
        profiles.default_profile(t).await.expect("default"),
        Some(a.clone())
    );
    let by_key = profiles
        .profile_by_provision_key("key-c")
        .await
        .expect("by key");
    assert_eq!(by_key, Some(c.clone()));
    assert_eq!(
        profiles
            .profile_by_provision_key("nope")
            .await
            .expect("by key"),
        None
    );

    // A new default clears the old one.
    let b = DeviceProfile { default: true, ..b };
    profiles.save_profile(&b).await.expect("new default");
    assert_eq!(
        profiles.default_profile(t).await.expect("default"),
        Some(b.clone())
    );
    let old = profiles.profile(a.id).await.expect("get").expect("kept");
    assert!(!old.default, "no longer the default");
    let theirs = profiles.default_profile(elsewhere).await.expect("default");
    assert_eq!(
        theirs.map(|p| p.id),
        Some(other.id),
        "other tenants keep theirs"
    );

    // Names unique per tenant, provision keys unique; nothing written when refused.
    let clash = profile(t, "gamma", false, None);
    assert_eq!(
        profiles.save_profile(&clash).await,
        Err(RecordError::DuplicateName)
    );
    let renamed = DeviceProfile {
        name: "Beta".into(),
        ..a.clone()
    };
    assert_eq!(
        profiles.save_profile(&renamed).await,
        Err(RecordError::DuplicateName)
    );
    let key_clash = profile(elsewhere, "delta", false, Some("key-a"));
    assert_eq!(
        profiles.save_profile(&key_clash).await,
        Err(RecordError::DuplicateProvisionKey)
    );
    assert_eq!(profiles.profile(key_clash.id).await.expect("get"), None);

    // A replace by id: renamed, with a new key; the old name and key find nothing.
    let c = DeviceProfile {
        name: "gamma-2".into(),
        provision_device_key: Some("key-c2".into()),
        ..c
    };
    profiles.save_profile(&c).await.expect("replace");
    assert_eq!(
        profiles.profile_by_name(t, "gamma").await.expect("by name"),
        None
    );
    assert_eq!(
        profiles
            .profile_by_provision_key("key-c")
            .await
            .expect("by key"),
        None
    );
    assert_eq!(
        profiles
            .profile_by_name(t, "gamma-2")
            .await
            .expect("by name"),
        Some(c.clone())
    );
    let freed = profile(t, "gamma", false, Some("key-c"));
    profiles
        .save_profile(&freed)
        .await
        .expect("the old name and key are free");

    // Pages by name; a case-insensitive prefix.
    let page = |page_size, page, text: Option<&str>| PageRequest {
        page_size,
        page,
        text_search: text.map(str::to_owned),
    };
    let cases: &[(PageRequest, &[&str], usize)] = &[
        (page(2, 0, None), &["Beta", "alpha"], 4),
        (page(2, 1, None), &["gamma", "gamma-2"], 4),
        (page(2, 2, None), &[], 4),
        (page(10, 0, Some("GAM")), &["gamma", "gamma-2"], 2),
        (page(10, 0, Some("beta")), &["Beta"], 1),
        (page(10, 0, Some("zeta")), &[], 0),
    ];
    for (request, want, total) in cases {
        let got = profiles.profiles(t, request).await.expect("page");
        let names: Vec<&str> = got.data.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            (names.as_slice(), got.total_elements),
            (*want, *total),
            "{request:?}"
        );
    }

    // Bounds.
    type Case = (fn(&mut DeviceProfile), &'static str);
    let too_long: &[Case] = &[
        (|p| p.name = "n".repeat(MAX_PROFILE_NAME_BYTES + 1), "name"),
        (
            |p| p.description = Some("d".repeat(MAX_PROFILE_DESCRIPTION_BYTES + 1)),
            "description",
        ),
        (
            |p| p.provision_device_key = Some("k".repeat(MAX_PROVISION_CREDENTIAL_BYTES + 1)),
            "provisionDeviceKey",
        ),
        (
            |p| p.provision_device_secret = Some("s".repeat(MAX_PROVISION_CREDENTIAL_BYTES + 1)),
            "provisionDeviceSecret",
        ),
    ];
    for (change, field) in too_long {
        let mut p = profile(t, "bounded", false, None);
        change(&mut p);
        assert!(
            matches!(profiles.save_profile(&p).await, Err(RecordError::TooLong { field: f, .. }) if f == *field),
            "{field}"
        );
        assert_eq!(profiles.profile(p.id).await.expect("get"), None);
    }
    let unnamed = profile(t, "", false, None);
    assert_eq!(
        profiles.save_profile(&unnamed).await,
        Err(RecordError::Missing { field: "name" })
    );
    let longest = profile(t, &"n".repeat(MAX_PROFILE_NAME_BYTES), false, None);
    profiles.save_profile(&longest).await.expect("at the bound");
    for request in [page(0, 0, None), page(MAX_PROFILE_PAGE_SIZE + 1, 0, None)] {
        assert!(matches!(
            profiles.profiles(t, &request).await,
            Err(RecordError::PageSize { .. })
        ));
    }
    assert!(matches!(
        profiles
            .profiles(t, &page(MAX_PROFILE_PAGE_SIZE, usize::MAX, None))
            .await,
        Err(RecordError::PageOutOfRange { .. })
    ));
    let long_search = "x".repeat(MAX_PROFILE_NAME_BYTES + 1);
    assert!(matches!(
        profiles.profiles(t, &page(10, 0, Some(&long_search))).await,
        Err(RecordError::TooLong {
            field: "textSearch",
            ..
        })
    ));

    // Deleted: gone from every lookup.
    assert!(profiles.delete_profile(b.id).await.expect("delete"));
    assert!(!profiles.delete_profile(b.id).await.expect("delete again"));
    assert_eq!(profiles.profile(b.id).await.expect("get"), None);
    assert_eq!(profiles.default_profile(t).await.expect("default"), None);
    assert_eq!(
        profiles.profile_by_name(t, "Beta").await.expect("by name"),
        None
    );
    assert!(profiles.delete_profile(a.id).await.expect("delete"));
    assert_eq!(
        profiles
            .profile_by_provision_key("key-a")
            .await
            .expect("by key"),
        None
    );
    let left = profiles
        .profiles(t, &page(10, 0, None))
        .await
        .expect("page");
    assert_eq!(left.total_elements, 3);
}

/// The directory store: documents of every kind round-trip, a write replaces and deletes in
/// one go, and the directory built over the store sees what another instance wrote.
pub async fn directory_suite(
    store: &(impl actors::directory::DirectoryStore + Clone),
    shared: bool,
) {
    use actors::directory::{
        Asset, Authority, Contact, Customer, Directory, DirectoryLimits, Doc, EntityRef, Relation,
        RelationKey, User,
    };
    use actors::model::{DeviceId, TenantId};
    use std::sync::Arc;
    let tenant = TenantId::from_name("directory");
    let customer = Customer {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        created_time: 1,
        title: "Acme \"quoted\" ünïcode".into(),
        contact: Contact {
            email: Some("ops@acme".into()),
            ..Contact::default()
        },
        additional_info: Some(r#"{"description":"x"}"#.into()),
    };
    let user = User {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        customer_id: Some(customer.id),
        created_time: 2,
        email: "user@acme".into(),
        authority: Authority::CustomerUser,
        first_name: Some("Ann".into()),
        last_name: None,
        phone: None,
        additional_info: None,
        password_hash: Some("$argon2id$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        activate_token: None,
        activate_expires: 0,
    };
    let asset = Asset {
        id: uuid::Uuid::new_v4(),
        tenant_id: tenant,
        customer_id: Some(customer.id),
        created_time: 3,
        name: "Building".into(),
        asset_type: "building".into(),
        label: Some("HQ".into()),
        additional_info: None,
    };
    let device = DeviceId(uuid::Uuid::new_v4());
    let relation = Relation {
        tenant_id: tenant,
        customer_id: Some(customer.id),
        key: RelationKey {
            from: EntityRef::asset(asset.id),
            to: EntityRef::device(device),
            relation_type: "Contains".into(),
            type_group: "COMMON".into(),
        },
        additional_info: Some("{\"a\":1}".into()),
    };
    let assignment = Doc::Assignment {
        device,
        tenant_id: tenant,
        customer: customer.id,
    };
    let docs = vec![
        Doc::Customer(customer.clone()),
        Doc::User(user.clone()),
        Doc::Asset(asset.clone()),
        Doc::Relation(relation.clone()),
        assignment.clone(),
    ];
    store.write(&docs, &[]).await.expect("write");
    let sorted = |mut docs: Vec<Doc>| {
        docs.sort_by_key(Doc::id);
        docs
    };
    assert_eq!(
        sorted(store.load().await.expect("load")),
        sorted(docs.clone())
    );
    // A replacement and a deletion in one write.
    let renamed = Asset {
        name: "Building 2".into(),
        ..asset.clone()
    };
    store
        .write(&[Doc::Asset(renamed.clone())], &[assignment.id(), user.id])
        .await
        .expect("write");
    let loaded = sorted(store.load().await.expect("load"));
    assert_eq!(
        loaded,
        sorted(vec![
            Doc::Customer(customer.clone()),
            Doc::Asset(renamed),
            Doc::Relation(relation.clone()),
        ])
    );
    // A directory over the same store sees it all, and its writes reach another one.
    let first = Directory::open(Arc::new(store.clone()), DirectoryLimits::default())
        .await
        .expect("open");
    assert_eq!(
        first.asset_by_name(tenant, "Building 2").map(|a| a.id),
        Some(asset.id)
    );
    first.delete_asset(asset.id).await.expect("delete");
    let second = Directory::open(Arc::new(store.clone()), DirectoryLimits::default())
        .await
        .expect("open");
    assert!(second.asset(asset.id).is_none());
    assert!(
        second
            .relations(EntityRef::device(device), false, "COMMON", None)
            .is_empty(),
        "the asset's relations went with it"
    );
    assert_eq!(
        second.customer(customer.id).map(|c| c.title.clone()),
        Some(customer.title.clone())
    );
    // A deleted customer stays deleted even if a node that had not seen the deletion writes
    // it again afterwards; a relation deleted and made again is back.
    store
        .write(&[], &[customer.id, relation.key.doc_id()])
        .await
        .expect("delete");
    store
        .write(
            &[
                Doc::Customer(customer.clone()),
                Doc::Relation(relation.clone()),
            ],
            &[],
        )
        .await
        .expect("stale write");
    let after = store.load().await.expect("load");
    // (A store of one node has no node that missed a deletion: there the write stands.)
    assert_eq!(
        after.iter().any(|d| d.id() == customer.id),
        !shared,
        "a deleted customer after a stale write"
    );
    assert!(after.iter().any(|d| d.id() == relation.key.doc_id()));
}
