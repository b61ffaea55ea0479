use super::*;

fn tenant() -> TenantId {
    TenantId::from_name("t")
}

fn customer(title: &str) -> Customer {
    Customer {
        id: Uuid::new_v4(),
        tenant_id: tenant(),
        created_time: 1,
        title: title.into(),
        contact: Contact::default(),
        additional_info: None,
    }
}

fn user(email: &str, customer: Option<Uuid>) -> User {
    User {
        id: Uuid::new_v4(),
        tenant_id: tenant(),
        customer_id: customer,
        created_time: 1,
        email: email.into(),
        authority: if customer.is_some() {
            Authority::CustomerUser
        } else {
            Authority::TenantAdmin
        },
        first_name: None,
        last_name: None,
        phone: None,
        additional_info: None,
        password_hash: None,
        activate_token: Some(format!("token-{email}")),
        activate_expires: i64::MAX,
    }
}

fn asset(name: &str) -> Asset {
    Asset {
        id: Uuid::new_v4(),
        tenant_id: tenant(),
        customer_id: None,
        created_time: 1,
        name: name.into(),
        asset_type: "building".into(),
        label: None,
        additional_info: None,
    }
}

fn contains(from: EntityRef, to: EntityRef) -> Relation {
    Relation {
        tenant_id: tenant(),
        customer_id: None,
        key: RelationKey {
            from,
            to,
            relation_type: "Contains".into(),
            type_group: "COMMON".into(),
        },
        additional_info: None,
    }
}

fn page(size: usize) -> PageRequest {
    PageRequest {
        page_size: size,
        page: 0,
        text_search: None,
    }
}

async fn open(limits: DirectoryLimits) -> (Arc<MemoryDirectoryStore>, Directory) {
    let store = Arc::new(MemoryDirectoryStore::default());
    let directory = Directory::open(store.clone(), limits).await.expect("open");
    (store, directory)
}

#[tokio::test]
async fn deleting_a_customer_deletes_its_users_and_gives_back_its_devices_and_assets() {
    let (store, dir) = open(DirectoryLimits::default()).await;
    let acme = dir.save_customer(customer("Acme")).await.expect("save");
    let other = dir.save_customer(customer("Other")).await.expect("save");
    let alice = dir
        .save_user(user("alice@acme", Some(acme.id)), "admin")
        .await
        .expect("user");
    let bob = dir
        .save_user(user("bob@other", Some(other.id)), "admin")
        .await
        .expect("user");
    let device = DeviceId(Uuid::new_v4());
    dir.assign_device(tenant(), device, Some(acme.id))
        .await
        .expect("assign");
    let building = dir
        .save_asset(Asset {
            customer_id: Some(acme.id),
            ..asset("HQ")
        })
        .await
        .expect("asset");
    assert_eq!(dir.customer_devices(acme.id), vec![device]);
    assert_eq!(
        dir.assets(tenant(), Some(acme.id), None, &page(10))
            .total_elements,
        1
    );

    assert!(dir.delete_customer(acme.id).await.expect("delete"));
    assert!(!dir.delete_customer(acme.id).await.expect("again"));
    assert!(dir.customer(acme.id).is_none());
    assert!(dir.user(alice.id).is_none());
    assert!(dir.user_by_email("ALICE@acme").is_none());
    assert!(dir.user(bob.id).is_some(), "another customer's user stays");
    assert_eq!(dir.device_customer(device), None);
    assert_eq!(
        dir.asset(building.id).expect("kept").customer_id,
        None,
        "the asset goes back to the tenant"
    );
    // What the store holds is what memory holds.
    let reopened = Directory::open(store, DirectoryLimits::default())
        .await
        .expect("reopen");
    assert!(reopened.user(alice.id).is_none());
    assert!(reopened.user(bob.id).is_some());
    assert_eq!(reopened.asset(building.id).expect("kept").customer_id, None);
    assert_eq!(reopened.device_customer(device), None);
}

#[tokio::test]
async fn emails_are_unique_without_regard_to_case_and_the_administrator_is_reserved() {
    let (_, dir) = open(DirectoryLimits::default()).await;
    let first = dir
        .save_user(user("Alice@Example.com", None), "admin@x")
        .await
        .expect("first");
    let clash = dir
        .save_user(user("alice@example.COM", None), "admin@x")
        .await;
    assert!(
        matches!(clash, Err(DirectoryError::Conflict(_))),
        "{clash:?}"
    );
    let reserved = dir.save_user(user("ADMIN@x", None), "admin@x").await;
    assert!(matches!(reserved, Err(DirectoryError::Conflict(_))));
    // Saving the same user again (an update) is no clash.
    let renamed = User {
        email: "alice2@example.com".into(),
        activate_token: None,
        ..(*first).clone()
    };
    dir.save_user(renamed, "admin@x").await.expect("update");
    assert!(dir.user_by_email("alice@example.com").is_none());
    assert!(dir.user_by_activation("token-Alice@Example.com").is_none());
    assert_eq!(
        dir.user_by_email("ALICE2@example.com").map(|u| u.id),
        Some(first.id)
    );
}

#[tokio::test]
async fn a_device_is_claimed_once() {
    let (_, dir) = open(DirectoryLimits::default()).await;
    let a = dir.save_customer(customer("A")).await.expect("a");
    let b = dir.save_customer(customer("B")).await.expect("b");
    let device = DeviceId(Uuid::new_v4());
    assert!(
        dir.claim_device(tenant(), device, a.id)
            .await
            .expect("claim")
    );
    assert!(
        !dir.claim_device(tenant(), device, b.id)
            .await
            .expect("claim")
    );
    assert_eq!(dir.device_customer(device), Some(a.id));
    dir.assign_device(tenant(), device, None)
        .await
        .expect("reclaim");
    assert!(
        dir.claim_device(tenant(), device, b.id)
            .await
            .expect("claim")
    );
    assert_eq!(dir.customer_devices(b.id), vec![device]);
    assert!(dir.customer_devices(a.id).is_empty());
    let missing = dir
        .assign_device(tenant(), device, Some(Uuid::new_v4()))
        .await;
    assert!(matches!(missing, Err(DirectoryError::NotFound(_))));
}

#[tokio::test]
async fn relations_are_found_from_both_ends_and_go_with_their_entities() {
    let (store, dir) = open(DirectoryLimits::default()).await;
    let building = dir.save_asset(asset("Building")).await.expect("asset");
    let floor = dir.save_asset(asset("Floor 1")).await.expect("asset");
    let device = DeviceId(Uuid::new_v4());
    let b = EntityRef::asset(building.id);
    let f = EntityRef::asset(floor.id);
    let d = EntityRef::device(device);
    dir.save_relation(contains(b, f)).await.expect("rel");
    dir.save_relation(contains(f, d)).await.expect("rel");
    let mut manages = contains(b, d);
    manages.key.relation_type = "Manages".into();
    dir.save_relation(manages.clone()).await.expect("rel");

    assert_eq!(dir.relations(b, true, "COMMON", None).len(), 2);
    assert_eq!(
        dir.relations(b, true, "COMMON", Some("Contains")),
        vec![contains(b, f)]
    );
    assert!(dir.relations(b, true, "ALARM", None).is_empty());
    assert_eq!(dir.relations(d, false, "COMMON", None).len(), 2);

    // Deleting the floor takes its two relations; the building's other one stays.
    assert!(dir.delete_asset(floor.id).await.expect("delete"));
    assert_eq!(
        dir.relations(b, true, "COMMON", None),
        vec![manages.clone()]
    );
    dir.forget_device(device).await.expect("forget");
    assert!(dir.relations(b, true, "COMMON", None).is_empty());
    assert!(
        Directory::open(store, DirectoryLimits::default())
            .await
            .expect("reopen")
            .relations(b, true, "COMMON", None)
            .is_empty()
    );
}

#[tokio::test]
async fn limits_refuse_new_entries_but_not_updates() {
    let limits = DirectoryLimits {
        max_customers: 1,
        max_users: 1,
        max_assets: 1,
        max_relations: 1,
        ..DirectoryLimits::default()
    };
    let (_, dir) = open(limits).await;
    let c = dir.save_customer(customer("one")).await.expect("first");
    assert!(matches!(
        dir.save_customer(customer("two")).await,
        Err(DirectoryError::Limit(_))
    ));
    dir.save_customer(Customer {
        title: "renamed".into(),
        ..(*c).clone()
    })
    .await
    .expect("an update is no new entry");
    dir.save_user(user("a@x", None), "admin")
        .await
        .expect("user");
    assert!(matches!(
        dir.save_user(user("b@x", None), "admin").await,
        Err(DirectoryError::Limit(_))
    ));
    let a = dir.save_asset(asset("a")).await.expect("asset");
    assert!(matches!(
        dir.save_asset(asset("b")).await,
        Err(DirectoryError::Limit(_))
    ));
    let e = EntityRef::asset(a.id);
    dir.save_relation(contains(e, EntityRef::device(DeviceId(Uuid::new_v4()))))
        .await
        .expect("relation");
    assert!(matches!(
        dir.save_relation(contains(e, EntityRef::device(DeviceId(Uuid::new_v4()))))
            .await,
        Err(DirectoryError::Limit(_))
    ));
    assert!(matches!(
        dir.save_asset(Asset {
            id: Uuid::new_v4(),
            ..(*a).clone()
        })
        .await,
        Err(DirectoryError::Conflict(_) | DirectoryError::Limit(_))
    ));
}

#[tokio::test]
async fn pages_are_sorted_and_searched_by_prefix() {
    let (_, dir) = open(DirectoryLimits::default()).await;
    for title in ["beta", "Alpha", "alphabet", "gamma"] {
        dir.save_customer(customer(title)).await.expect("save");
    }
    let found = dir.customers(
        tenant(),
        &PageRequest {
            page_size: 10,
            page: 0,
            text_search: Some("ALP".into()),
        },
    );
    let titles: Vec<&str> = found.data.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles, ["Alpha", "alphabet"]);
    let second = dir.customers(
        tenant(),
        &PageRequest {
            page_size: 3,
            page: 1,
            text_search: None,
        },
    );
    assert_eq!(second.total_elements, 4);
    assert_eq!(second.data.len(), 1);
    assert_eq!(second.data[0].title, "gamma");
    assert!(
        dir.customers(TenantId::from_name("other"), &page(10))
            .data
            .is_empty()
    );
}

#[tokio::test]
async fn writes_check_what_they_name_when_they_are_made() {
    let (_, dir) = open(DirectoryLimits::default()).await;
    let gone = dir.save_customer(customer("gone")).await.expect("save");
    let ann = dir
        .save_user(user("ann@x", Some(gone.id)), "admin")
        .await
        .expect("user");
    let floor = dir.save_asset(asset("floor")).await.expect("asset");
    let knows = contains(
        EntityRef {
            entity_type: EntityType::User,
            id: ann.id,
        },
        EntityRef::asset(floor.id),
    );
    dir.save_relation(knows.clone()).await.expect("relation");
    assert!(dir.delete_customer(gone.id).await.expect("delete"));
    // The customer's users went, and their relations with them.
    assert!(dir.relation(&knows.key).is_none());
    // A change made after a deletion does not bring the user back.
    let late = dir
        .update_user(ann.id, "admin", |u| {
            Ok(User {
                password_hash: Some("x".into()),
                ..u.clone()
            })
        })
        .await;
    assert!(matches!(late, Err(DirectoryError::NotFound(_))), "{late:?}");
    assert!(dir.user(ann.id).is_none());
    // Nothing is assigned to, or made for, a customer that is gone.
    let device = DeviceId(Uuid::new_v4());
    assert!(matches!(
        dir.claim_device(tenant(), device, gone.id).await,
        Err(DirectoryError::NotFound(_))
    ));
    assert!(matches!(
        dir.save_asset(Asset {
            customer_id: Some(gone.id),
            ..(*floor).clone()
        })
        .await,
        Err(DirectoryError::NotFound(_))
    ));
    assert!(matches!(
        dir.save_user(user("bob@x", Some(gone.id)), "admin").await,
        Err(DirectoryError::NotFound(_))
    ));
    // A relation to an asset deleted since it was checked is refused.
    dir.delete_asset(floor.id).await.expect("delete");
    assert!(matches!(
        dir.save_relation(contains(
            EntityRef::device(device),
            EntityRef::asset(floor.id)
        ))
        .await,
        Err(DirectoryError::NotFound(_))
    ));
}

#[tokio::test]
async fn update_user_changes_the_current_record_only() {
    let (_, dir) = open(DirectoryLimits::default()).await;
    let a = dir.save_customer(customer("a")).await.expect("a");
    let b = dir.save_customer(customer("b")).await.expect("b");
    let ann = dir
        .save_user(user("ann@x", Some(a.id)), "admin")
        .await
        .expect("user");
    // Moved while a slow change (a password) was on its way: the move stays.
    dir.update_user(ann.id, "admin", |u| {
        Ok(User {
            customer_id: Some(b.id),
            ..u.clone()
        })
    })
    .await
    .expect("move");
    let hashed = dir
        .update_user(ann.id, "admin", |u| {
            Ok(User {
                password_hash: Some("hash".into()),
                ..u.clone()
            })
        })
        .await
        .expect("password");
    assert_eq!(hashed.customer_id, Some(b.id));
    assert_eq!(hashed.password_hash.as_deref(), Some("hash"));
    let taken = dir
        .save_user(user("bob@x", Some(a.id)), "admin")
        .await
        .expect("bob");
    let clash = dir
        .update_user(taken.id, "admin", |u| {
            Ok(User {
                email: "ANN@x".into(),
                ..u.clone()
            })
        })
        .await;
    assert!(matches!(clash, Err(DirectoryError::Conflict(_))));
}

#[tokio::test]
async fn relations_are_bounded_per_entity_and_per_customer() {
    let limits = DirectoryLimits {
        max_relations_per_entity: 2,
        max_relations_per_customer: 3,
        ..DirectoryLimits::default()
    };
    let (_, dir) = open(limits).await;
    let a = dir.save_customer(customer("a")).await.expect("a");
    let hub = EntityRef::device(DeviceId(Uuid::new_v4()));
    let typed = |t: &str, to: EntityRef, by: Option<Uuid>| {
        let mut r = contains(hub, to);
        r.key.relation_type = t.into();
        r.customer_id = by;
        r
    };
    let one = EntityRef::device(DeviceId(Uuid::new_v4()));
    dir.save_relation(typed("x", one, None)).await.expect("1");
    dir.save_relation(typed("y", one, None)).await.expect("2");
    assert!(matches!(
        dir.save_relation(typed("z", one, None)).await,
        Err(DirectoryError::Limit(_))
    ));
    // Saving one that exists again is no new relation.
    dir.save_relation(typed("y", one, None))
        .await
        .expect("again");
    let mut made = 0;
    for _ in 0..5 {
        let from = EntityRef::device(DeviceId(Uuid::new_v4()));
        let mut r = typed("c", from, Some(a.id));
        r.key.from = from;
        r.key.to = EntityRef::device(DeviceId(Uuid::new_v4()));
        if dir.save_relation(r).await.is_ok() {
            made += 1;
        }
    }
    assert_eq!(made, 3, "the customer's users made at most their share");
}
