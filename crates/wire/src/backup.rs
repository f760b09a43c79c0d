//! The backup file format, `quorumkv-backup/1`: JSON lines, one header, one line per key
//! (its value in base64), one trailer with the key count. A node writes it (`GET /v1/backup`);
//! `quorumkv restore` reads it back line by line, each line bounded, and refuses a file that is
//! cut short, has lines after its trailer, or a count that does not match.

use std::io::BufRead;
use std::io::Read;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

pub const FORMAT: &str = "quorumkv-backup/1";

/// One key of a backup.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupRecord {
    pub key: String,
    pub value_base64: String,
}

/// Longest line a backup may hold: one key and a base64 value at their ceilings, plus JSON.
const MAX_BACKUP_LINE_BYTES: usize =
    crate::limits::MAX_KEY_BYTES_CEILING + crate::limits::MAX_VALUE_BYTES_CEILING / 3 * 4 + 1024;

/// Reads a backup line by line (never the whole file into memory), each line bounded.
pub struct BackupReader<R: BufRead> {
    input: R,
    line_number: u64,
}

impl<R: BufRead> BackupReader<R> {
    pub fn new(input: R) -> Self {
        Self { input, line_number: 0 }
    }

    /// The next line, without its newline; `None` at the end.
    fn next_line(&mut self) -> Result<Option<String>, String> {
        let mut line = Vec::new();
        let limit = MAX_BACKUP_LINE_BYTES as u64 + 1;
        let read = (&mut self.input).take(limit).read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(None);
        }
        self.line_number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_BACKUP_LINE_BYTES {
            return Err(format!("line {} is longer than {MAX_BACKUP_LINE_BYTES} bytes", self.line_number));
        }
        String::from_utf8(line).map(Some).map_err(|_| format!("line {} is not UTF-8", self.line_number))
    }

    /// Checks the header, every record and the trailer; returns the number of keys.
    pub fn check_complete(mut self) -> Result<u64, String> {
        self.header()?;
        let mut records = 0u64;
        loop {
            match self.next_entry()? {
                Entry::Record(..) => records += 1,
                Entry::End { keys } if keys == records => break,
                Entry::End { keys } => {
                    return Err(format!("the backup holds {records} records but its trailer says {keys}"))
                }
            }
        }
        if self.next_line()?.is_some() {
            return Err("the backup has lines after its trailer".into());
        }
        Ok(records)
    }

    /// Reads the header line; call before [`BackupReader::next_record`].
    pub fn header(&mut self) -> Result<(), String> {
        let header: serde_json::Value = self
            .next_line()?
            .and_then(|line| serde_json::from_str(&line).ok())
            .ok_or("not a quorumkv backup: no header")?;
        if header["format"] != FORMAT {
            return Err(format!("not a {FORMAT} backup: header {header}"));
        }
        Ok(())
    }

    /// The next (key, value); `None` at the trailer.
    pub fn next_record(&mut self) -> Result<Option<(String, Bytes)>, String> {
        match self.next_entry()? {
            Entry::Record(key, value) => Ok(Some((key, value))),
            Entry::End { .. } => Ok(None),
        }
    }

    fn next_entry(&mut self) -> Result<Entry, String> {
        let line = self.next_line()?.ok_or("the backup has no trailer: it was cut short")?;
        let number = self.line_number;
        let json: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("line {number}: {e}"))?;
        if json["end"] == true {
            let keys = json["keys"].as_u64().ok_or("the backup trailer has no key count")?;
            return Ok(Entry::End { keys });
        }
        let record: BackupRecord = serde_json::from_value(json).map_err(|e| format!("line {number}: {e}"))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(&record.value_base64)
            .map_err(|e| format!("line {number}: {e}"))?;
        Ok(Entry::Record(record.key, Bytes::from(value)))
    }
}

enum Entry {
    Record(String, Bytes),
    End { keys: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_backups_parse_and_truncated_ones_are_refused() {
        let check = |text: &str| BackupReader::new(text.as_bytes()).check_complete();
        let good = "{\"format\":\"quorumkv-backup/1\",\"applied_index\":3}\n\
                    {\"key\":\"a\",\"value_base64\":\"aGk=\"}\n\
                    {\"end\":true,\"keys\":1}\n";
        assert_eq!(check(good), Ok(1));
        let mut reader = BackupReader::new(good.as_bytes());
        reader.header().expect("header");
        assert_eq!(reader.next_record(), Ok(Some(("a".to_string(), Bytes::from_static(b"hi")))));
        assert_eq!(reader.next_record(), Ok(None));
        let cut = good.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(check(&cut).is_err());
        assert!(check(&format!("{good}{{\"key\":\"b\",\"value_base64\":\"\"}}\n")).is_err());
        assert!(check("{\"format\":\"other\"}\n{\"end\":true,\"keys\":0}").is_err());
        assert!(check(&good.replace("\"keys\":1", "\"keys\":2")).is_err());
    }
}
