//! A paused embedded store, without touching the engine: the test holds SQLite's write lock on
//! the engine's database, so every write the engine tries (a sink's batch, a new device) finds
//! the database busy and is retried, and acknowledged messages stay in the queue until the lock
//! is released.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;

/// SQLite's write lock on `<data_dir>/engine.db`, held until [`StoreLock::release`] or drop.
pub struct StoreLock {
    conn: Connection,
}

impl StoreLock {
    /// Takes the write lock (waiting up to 20 s for a write in progress to end). Readers go on
    /// reading: the database is in WAL mode.
    pub fn take(data_dir: &Path) -> Result<StoreLock> {
        let path = data_dir.join("engine.db");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(20))?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .context("taking the store's write lock")?;
        Ok(StoreLock { conn })
    }

    /// Lets the engine write again.
    pub fn release(self) -> Result<()> {
        self.conn.execute_batch("ROLLBACK")?;
        Ok(())
    }
}
