//! `store.test_pause_file`, a knob for tests: the sink's store, whose writes wait while a file
//! exists. With it a test holds storage still (the queue fills, acknowledgements wait) for as
//! long as it needs, then lets it go, instead of racing a batch timer. Reads are not held.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actors::batch::WriteBatch;
use actors::model::{AttributeScope, DeviceId};
use actors::ports::{AttributeValue, LatestValue, RangeQuery, RangeResult, Store, StoreError};
use async_trait::async_trait;

/// How often a held write looks for the file again.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

pub struct PausableStore {
    inner: Arc<dyn Store>,
    file: PathBuf,
}

impl PausableStore {
    pub fn new(inner: Arc<dyn Store>, file: PathBuf) -> PausableStore {
        PausableStore { inner, file }
    }

    /// One `stat` call: short enough to make on the runtime's thread.
    fn paused(&self) -> bool {
        self.file.exists()
    }
}

#[async_trait]
impl Store for PausableStore {
    async fn write(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        while self.paused() {
            tokio::time::sleep(LOOK_AGAIN).await;
        }
        self.inner.write(batch).await
    }

    async fn latest(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<LatestValue>, StoreError> {
        self.inner.latest(device, keys).await
    }

    async fn timeseries_keys(&self, device: DeviceId) -> Result<Vec<String>, StoreError> {
        self.inner.timeseries_keys(device).await
    }

    async fn range(&self, device: DeviceId, query: &RangeQuery) -> Result<RangeResult, StoreError> {
        self.inner.range(device, query).await
    }

    async fn attributes(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
        keys: Option<&[String]>,
    ) -> Result<Vec<AttributeValue>, StoreError> {
        self.inner.attributes(device, scope, keys).await
    }

    async fn attribute_keys(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.attribute_keys(device, scope).await
    }

    async fn delete_attributes(
        &self,
        device: DeviceId,
        scope: AttributeScope,
        keys: &[String],
        ts: i64,
    ) -> Result<(), StoreError> {
        self.inner.delete_attributes(device, scope, keys, ts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::testing::MemStore;

    #[tokio::test(start_paused = true)]
    async fn writes_wait_while_the_file_exists() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("paused");
        std::fs::write(&file, b"").expect("pause file");
        let store = Arc::new(PausableStore::new(
            Arc::new(MemStore::default()),
            file.clone(),
        ));
        let writing = tokio::spawn({
            let store = store.clone();
            async move { store.write(Arc::new(WriteBatch::default())).await }
        });
        // Paused time runs straight through a minute of looks at the file.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!writing.is_finished(), "a write went through while paused");
        std::fs::remove_file(&file).expect("unpause");
        writing.await.expect("joined").expect("written");
    }
}
