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

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::node::Consistency;
use crate::node::Node;

pub const FORMAT: &str = "quorumkv-backup/1";
/// Chunks of backup output in flight between the RocksDB reader and the HTTP response: the
/// reader waits when the client reads slowly, so memory stays bounded.
const BACKUP_CHANNEL_CHUNKS: usize = 16;
/// Lines gathered into one chunk of the response.
const LINES_PER_CHUNK: usize = 256;

/// One key of a backup.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupRecord {
    pub key: String,
    pub value_base64: String,
}

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

/// Checks the header and trailer of a backup's text; returns the number of keys it holds.
pub fn check_complete(text: &str) -> Result<u64, String> {
    let mut lines = text.lines();
    let header: serde_json::Value =
        lines.next().and_then(|l| serde_json::from_str(l).ok()).ok_or("not a quorumkv backup: no header")?;
    if header["format"] != FORMAT {
        return Err(format!("not a {FORMAT} backup: header {header}"));
    }
    let trailer: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("the backup has no trailer: it was cut short")?;
    if trailer["end"] != true {
        return Err("the backup has no trailer: it was cut short".into());
    }
    let keys = trailer["keys"].as_u64().ok_or("the backup trailer has no key count")?;
    let records = text.lines().count().saturating_sub(2) as u64;
    if records != keys {
        return Err(format!("the backup holds {records} records but its trailer says {keys}"));
    }
    Ok(keys)
}

/// The (key, value) records of a complete backup's text.
pub fn records(text: &str) -> Result<Vec<(String, Bytes)>, String> {
    let count = text.lines().count();
    text.lines()
        .enumerate()
        .filter(|(number, _)| *number != 0 && *number + 1 != count)
        .map(|(number, line)| {
            let record: BackupRecord = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", number + 1))?;
            let value = base64::engine::general_purpose::STANDARD
                .decode(&record.value_base64)
                .map_err(|e| format!("line {}: {e}", number + 1))?;
            Ok((record.key, Bytes::from(value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_backups_parse_and_truncated_ones_are_refused() {
        let good = "{\"format\":\"quorumkv-backup/1\",\"applied_index\":3}\n\
                    {\"key\":\"a\",\"value_base64\":\"aGk=\"}\n\
                    {\"end\":true,\"keys\":1}\n";
        assert_eq!(check_complete(good), Ok(1));
        assert_eq!(records(good).expect("records"), vec![("a".to_string(), Bytes::from_static(b"hi"))]);
        let cut = good.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(check_complete(&cut).is_err());
        assert!(check_complete("{\"format\":\"other\"}\n{\"end\":true,\"keys\":0}").is_err());
    }
}
