//! openraft's storage conformance suite against quorumkv's RocksDB log store and state
//! machine: ordering, truncation, purge, vote, membership and snapshot rules.

use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use quorumkv::store::LogStore;
use quorumkv::store::StateMachine;
use quorumkv::types::TypeConfig;
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (log_store, state_machine) =
            quorumkv::store::open(dir.path()).await.map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log_store, state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_suite() {
    Suite::test_all(RocksBuilder).await.expect("storage conformance");
}
