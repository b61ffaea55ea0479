//! The directory on every app request: the access check's look-up of a device's customer, one
//! level of an asset tree, and a customer's page of assets, over a directory the size of the
//! default bounds' tenth (1,000 customers, 10,000 assets, 20,000 relations, 10,000 assigned
//! devices).

use std::sync::Arc;

use actors::directory::{
    Asset, Contact, Customer, Directory, DirectoryLimits, EntityRef, MemoryDirectoryStore,
    Relation, RelationKey,
};
use actors::model::{DeviceId, TenantId};
use actors::ports::PageRequest;
use criterion::{Criterion, criterion_group, criterion_main};
use uuid::Uuid;

fn directory(rt: &tokio::runtime::Runtime) -> (Directory, Vec<Uuid>, Vec<DeviceId>, Vec<Uuid>) {
    rt.block_on(async {
        let dir = Directory::open(
            Arc::new(MemoryDirectoryStore::default()),
            DirectoryLimits::default(),
        )
        .await
        .expect("open");
        let tenant = TenantId::from_name("bench");
        let mut customers = Vec::new();
        for i in 0..1_000 {
            let c = dir
                .save_customer(Customer {
                    id: Uuid::new_v4(),
                    tenant_id: tenant,
                    created_time: 0,
                    title: format!("customer {i}"),
                    contact: Contact::default(),
                    additional_info: None,
                })
                .await
                .expect("customer");
            customers.push(c.id);
        }
        let mut devices = Vec::new();
        let mut assets = Vec::new();
        for i in 0..10_000 {
            let customer = customers[i % customers.len()];
            let device = DeviceId(Uuid::new_v4());
            dir.assign_device(tenant, device, Some(customer))
                .await
                .expect("assign");
            let asset = dir
                .save_asset(Asset {
                    id: Uuid::new_v4(),
                    tenant_id: tenant,
                    customer_id: Some(customer),
                    created_time: 0,
                    name: format!("asset {i}"),
                    asset_type: "room".into(),
                    label: None,
                    additional_info: None,
                })
                .await
                .expect("asset");
            for to in [EntityRef::device(device), EntityRef::asset(Uuid::new_v4())] {
                dir.save_relation(Relation {
                    tenant_id: tenant,
                    customer_id: None,
                    key: RelationKey {
                        from: EntityRef::asset(asset.id),
                        to,
                        relation_type: "Contains".into(),
                        type_group: "COMMON".into(),
                    },
                    additional_info: None,
                })
                .await
                .expect("relation");
            }
            devices.push(device);
            assets.push(asset.id);
        }
        (dir, customers, devices, assets)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (dir, customers, devices, assets) = directory(&rt);
    let tenant = TenantId::from_name("bench");
    let mut i = 0usize;
    c.bench_function("device_customer (access check)", |b| {
        b.iter(|| {
            i = (i + 1) % devices.len();
            dir.device_customer(devices[i])
        })
    });
    c.bench_function("relations from an asset (one tree level)", |b| {
        b.iter(|| {
            i = (i + 1) % assets.len();
            dir.relations(
                EntityRef::asset(assets[i]),
                true,
                "COMMON",
                Some("Contains"),
            )
        })
    });
    let page = PageRequest {
        page_size: 20,
        page: 0,
        text_search: None,
    };
    c.bench_function("a customer's assets, first page of 20", |b| {
        b.iter(|| {
            i = (i + 1) % customers.len();
            dir.assets(tenant, Some(customers[i]), None, &page)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
