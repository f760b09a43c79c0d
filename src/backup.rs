//! Backups: a consistent copy of the key-value state as JSON lines, streamed from a running
//! node, and restored into any cluster through ordinary writes.
//!
//! Format (`quorumkv-backup/1`): a header line, one line per key, and a trailer with the count
//! (a file without its trailer was cut short and is refused):
//!
//! ```text
//! {"format":"quorumkv-backup/1","applied_index":1234}
//! {"key":"config/db","value_base64":"aGVsbG8="}
//! {"end":true,"keys":1}
//! ```
//!
//! The format and its reader belong to `quorumkv-wire` (`quorumkv_wire::backup`), with the
//! other formats read from outside, so they are fuzzed without building RocksDB.

use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::node::Consistency;
use crate::node::Node;

pub use quorumkv_wire::backup::BackupReader;
pub use quorumkv_wire::backup::BackupRecord;
pub use quorumkv_wire::backup::FORMAT;

/// Chunks of backup output in flight between the RocksDB reader and the HTTP response: the
/// reader waits when the client reads slowly, so memory stays bounded.
const BACKUP_CHANNEL_CHUNKS: usize = 16;
/// Lines gathered into one chunk of the response.
const LINES_PER_CHUNK: usize = 256;

impl Node {
    /// Streams a backup of the state as of a linearizable read point: every write acknowledged
    /// before the request is in it.
    pub async fn backup(&self) -> Result<mpsc::Receiver<Result<Bytes, std::io::Error>>, Error> {
        self.await_read_point(Consistency::Linearizable).await?;
        let applied_index = self.status()?.applied_index;
        let (sender, receiver) = mpsc::channel(BACKUP_CHANNEL_CHUNKS);
        let reader = self.kv_reader();
        tokio::task::spawn_blocking(move || {
            let header = json!({ "format": FORMAT, "applied_index": applied_index });
            let mut chunk = format!("{header}\n");
            let mut lines = 0usize;
            let mut keys = 0u64;
            let result = reader.for_each_in_snapshot(|key, stored| {
                let record = BackupRecord {
                    key: key.to_string(),
                    value_base64: base64::engine::general_purpose::STANDARD.encode(&stored.value),
                };
                chunk.push_str(&serde_json::to_string(&record).unwrap_or_default());
                chunk.push('\n');
                keys += 1;
                lines += 1;
                if lines == LINES_PER_CHUNK {
                    lines = 0;
                    let full = std::mem::take(&mut chunk);
                    // A closed channel means the client went away: stop reading.
                    return sender.blocking_send(Ok(Bytes::from(full))).is_ok();
                }
                true
            });
            match result {
                Ok(()) => {
                    chunk.push_str(&format!("{}\n", json!({ "end": true, "keys": keys })));
                    let _ = sender.blocking_send(Ok(Bytes::from(chunk)));
                }
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                }
            }
        });
        Ok(receiver)
    }
}
