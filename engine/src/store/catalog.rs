//! Where converter and integration definitions are kept, per store backend: a `catalog` table
//! of JSON documents (a few rows per integration, read whole at start-up and written on every
//! change). The document is the definition's serde form, tagged with its kind.

use std::sync::Arc;

use actors::integration::{ConverterDef, IntegrationDef};
use actors::ports::{Catalog, StoreError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize)]
#[serde(tag = "entity", rename_all = "lowercase")]
enum Doc {
    Converter(ConverterDef),
    Integration(IntegrationDef),
}

type Loaded = (Vec<ConverterDef>, Vec<IntegrationDef>);

/// Sorts documents into their kinds; a document this engine cannot read is a start-up error
/// (silently dropping an integration would stop its devices without a word).
fn sort(docs: impl IntoIterator<Item = (Uuid, String)>) -> Result<Loaded, StoreError> {
    let (mut converters, mut integrations) = (Vec::new(), Vec::new());
    for (id, body) in docs {
        match serde_json::from_str::<Doc>(&body) {
            Ok(Doc::Converter(c)) => converters.push(c),
            Ok(Doc::Integration(i)) => integrations.push(i),
            Err(e) => {
                return Err(StoreError::Permanent(format!(
                    "catalog entry {id} is unreadable: {e}"
                )));
            }
        }
    }
    Ok((converters, integrations))
}

fn encode(doc: &Doc) -> Result<String, StoreError> {
    serde_json::to_string(doc).map_err(|e| StoreError::Permanent(e.to_string()))
}

// ---------------------------------------------------------------------------------------------

pub mod embedded {
    use super::*;
    use crate::store::embedded::Db;
    use rusqlite::params;

    pub struct EmbeddedCatalog {
        pub(crate) db: Arc<Db>,
    }

    impl EmbeddedCatalog {
        async fn put(&self, id: Uuid, doc: &Doc) -> Result<(), StoreError> {
            let body = encode(doc)?;
            self.db
                .write(move |c| {
                    c.execute(
                        "INSERT OR REPLACE INTO catalog (id, body) VALUES (?1, ?2)",
                        params![id.as_bytes(), body],
                    )
                })
                .await
                .map(|_| ())
        }
    }

    #[async_trait]
    impl Catalog for EmbeddedCatalog {
        async fn load(&self) -> Result<Loaded, StoreError> {
            let rows = self
                .db
                .read(|c| {
                    let mut stmt = c
                        .prepare("SELECT id, body FROM catalog")
                        .map_err(crate::store::embedded::sql_error)?;
                    stmt.query_map([], |r| {
                        let id: Vec<u8> = r.get(0)?;
                        Ok((Uuid::from_slice(&id).unwrap_or_default(), r.get(1)?))
                    })
                    .and_then(Iterator::collect::<rusqlite::Result<Vec<(Uuid, String)>>>)
                    .map_err(crate::store::embedded::sql_error)
                })
                .await?;
            sort(rows)
        }

        async fn put_converter(&self, def: &ConverterDef) -> Result<(), StoreError> {
            self.put(def.id, &Doc::Converter(def.clone())).await
        }

        async fn put_integration(&self, def: &IntegrationDef) -> Result<(), StoreError> {
            self.put(def.id, &Doc::Integration(def.clone())).await
        }

        async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
            self.db
                .write(move |c| {
                    c.execute("DELETE FROM catalog WHERE id = ?1", params![id.as_bytes()])
                })
                .await
                .map(|_| ())
        }
    }
}

// ---------------------------------------------------------------------------------------------

pub mod ch {
    use super::*;
    use crate::store::clickhouse::{Versions, ch_error};
    use ::clickhouse::{Client, Row};

    /// A row of `catalog`, in its column order. A delete is a newer row with `deleted = 1`.
    #[derive(Row, Serialize, Deserialize)]
    struct CatalogRow {
        #[serde(with = "::clickhouse::serde::uuid")]
        id: Uuid,
        body: String,
        deleted: u8,
        ver: u64,
    }

    /// The newest version of every entry, deleted ones left out (see the device table for why
    /// not `FINAL`).
    const CURRENT: &str =
        "SELECT id, argMax(body, ver), argMax(deleted, ver) AS is_deleted, max(ver)
                           FROM catalog GROUP BY id HAVING is_deleted = 0";

    pub struct ClickHouseCatalog {
        pub(crate) client: Client,
        pub(crate) versions: Arc<Versions>,
    }

    impl ClickHouseCatalog {
        async fn insert(&self, id: Uuid, body: String, deleted: bool) -> Result<(), StoreError> {
            let row = CatalogRow {
                id,
                body,
                deleted: u8::from(deleted),
                ver: self.versions.next(),
            };
            let mut insert = self
                .client
                .insert::<CatalogRow>("catalog")
                .await
                .map_err(ch_error)?;
            insert.write(&row).await.map_err(ch_error)?;
            insert.end().await.map_err(ch_error)
        }
    }

    #[async_trait]
    impl Catalog for ClickHouseCatalog {
        async fn load(&self) -> Result<Loaded, StoreError> {
            let rows = self
                .client
                .query(CURRENT)
                .fetch_all::<CatalogRow>()
                .await
                .map_err(ch_error)?;
            sort(rows.into_iter().map(|r| (r.id, r.body)))
        }

        async fn put_converter(&self, def: &ConverterDef) -> Result<(), StoreError> {
            self.insert(def.id, encode(&Doc::Converter(def.clone()))?, false)
                .await
        }

        async fn put_integration(&self, def: &IntegrationDef) -> Result<(), StoreError> {
            self.insert(def.id, encode(&Doc::Integration(def.clone()))?, false)
                .await
        }

        async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
            self.insert(id, String::new(), true).await
        }
    }
}
