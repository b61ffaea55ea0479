//! Where the directory (customers, users, assets, device assignments, relations) is kept, per
//! store backend: a `directory` table of JSON documents, read whole at start-up (and, with
//! ClickHouse, which other nodes write too, every `directory.reload_interval`) and written on
//! every change.

use std::sync::Arc;

use actors::directory::{DirectoryStore, Doc};
use actors::ports::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Reads the stored documents; one this engine cannot read is a start-up error (dropping a
/// customer's assignment silently would show its devices to nobody, or a user's to everyone).
fn decode(rows: impl IntoIterator<Item = (Uuid, String)>) -> Result<Vec<Doc>, StoreError> {
    rows.into_iter()
        .map(|(id, body)| {
            serde_json::from_str::<Doc>(&body).map_err(|e| {
                StoreError::Permanent(format!("directory entry {id} is unreadable: {e}"))
            })
        })
        .collect()
}

fn encode(doc: &Doc) -> Result<(Uuid, String), StoreError> {
    serde_json::to_string(doc)
        .map(|body| (doc.id(), body))
        .map_err(|e| StoreError::Permanent(e.to_string()))
}

// ---------------------------------------------------------------------------------------------

pub mod embedded {
    use super::*;
    use crate::store::embedded::{Db, sql_error};
    use rusqlite::params;

    #[derive(Clone)]
    pub struct EmbeddedDirectory {
        pub(crate) db: Arc<Db>,
    }

    #[async_trait]
    impl DirectoryStore for EmbeddedDirectory {
        async fn load(&self) -> Result<Vec<Doc>, StoreError> {
            let rows = self
                .db
                .read(|c| {
                    let mut stmt = c
                        .prepare("SELECT id, body FROM directory")
                        .map_err(sql_error)?;
                    stmt.query_map([], |r| {
                        let id: Vec<u8> = r.get(0)?;
                        Ok((Uuid::from_slice(&id).unwrap_or_default(), r.get(1)?))
                    })
                    .and_then(Iterator::collect::<rusqlite::Result<Vec<(Uuid, String)>>>)
                    .map_err(sql_error)
                })
                .await?;
            decode(rows)
        }

        async fn write(&self, put: &[Doc], delete: &[Uuid]) -> Result<(), StoreError> {
            let put = put.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
            let delete = delete.to_vec();
            self.db
                .write(move |c| {
                    let tx = c.transaction()?;
                    for id in &delete {
                        tx.execute(
                            "DELETE FROM directory WHERE id = ?1",
                            params![id.as_bytes()],
                        )?;
                    }
                    for (id, body) in &put {
                        tx.execute(
                            "INSERT OR REPLACE INTO directory (id, body) VALUES (?1, ?2)",
                            params![id.as_bytes(), body],
                        )?;
                    }
                    tx.commit()
                })
                .await
        }
    }
}

// ---------------------------------------------------------------------------------------------

pub mod ch {
    use super::*;
    use crate::store::clickhouse::{Versions, ch_error};
    use ::clickhouse::{Client, Row};

    /// A row of `directory`, in its column order. A delete is a newer row with `deleted = 1`.
    #[derive(Row, Serialize, Deserialize)]
    struct DirectoryRow {
        #[serde(with = "::clickhouse::serde::uuid")]
        id: Uuid,
        body: String,
        deleted: u8,
        ver: u64,
    }

    /// The newest version of every entry, deleted ones left out, and so are entries whose
    /// deletion is final whatever came after it (a node that had not seen the deletion yet
    /// may write the entry again, with a newer version).
    const CURRENT: &str =
        "SELECT id, argMax(body, ver), argMax(deleted, ver) AS is_deleted, max(ver)
                           FROM directory GROUP BY id
                           HAVING is_deleted = 0 AND countIf(deleted = 1 AND body = 'final') = 0";

    /// Customers, users and assets have random (v4) ids, never given again: their deletion
    /// is final. Assignments and relations have ids derived from what they join (v5), made
    /// again when they are.
    fn final_deletion(id: &Uuid) -> bool {
        id.get_version_num() == 4
    }

    #[derive(Clone)]
    pub struct ClickHouseDirectory {
        pub(crate) client: Client,
        pub(crate) versions: Arc<Versions>,
    }

    #[async_trait]
    impl DirectoryStore for ClickHouseDirectory {
        async fn load(&self) -> Result<Vec<Doc>, StoreError> {
            let rows = self
                .client
                .query(CURRENT)
                .fetch_all::<DirectoryRow>()
                .await
                .map_err(ch_error)?;
            decode(rows.into_iter().map(|r| (r.id, r.body)))
        }

        async fn write(&self, put: &[Doc], delete: &[Uuid]) -> Result<(), StoreError> {
            let mut rows = Vec::with_capacity(put.len() + delete.len());
            for id in delete {
                rows.push(DirectoryRow {
                    id: *id,
                    body: if final_deletion(id) { "final" } else { "" }.to_owned(),
                    deleted: 1,
                    ver: self.versions.next(),
                });
            }
            for doc in put {
                let (id, body) = encode(doc)?;
                rows.push(DirectoryRow {
                    id,
                    body,
                    deleted: 0,
                    ver: self.versions.next(),
                });
            }
            // One insert: one part, all or nothing.
            let mut insert = self
                .client
                .insert::<DirectoryRow>("directory")
                .await
                .map_err(ch_error)?;
            for row in &rows {
                insert.write(row).await.map_err(ch_error)?;
            }
            insert.end().await.map_err(ch_error)
        }
    }
}
