//! The snapshot file: a stream of length-prefixed records, written and read one record at a
//! time so no snapshot is ever held in memory, and sent over the network as is.
//!
//! ```text
//! "QKVSNAP1"                     magic, 8 bytes
//! [u32 LE length][postcard Record]...
//!     Record::Meta               always first: last log id and membership of the state
//!     Record::Key / ClientAddr / Auth / Lease   the state, keys in byte order
//!     Record::End                always last: record count and CRC-32 of every byte before it
//! ```
//!
//! A file is complete only with its `End` record and a matching checksum; a truncated or
//! corrupted transfer is refused before openraft ever sees it.

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde::Serialize;

use bytes::Bytes;

use crate::limits;
use crate::types::NodeId;
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"QKVSNAP1";

/// One key's stored record: in the state machine (RocksDB) and in snapshot files alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// Revision (log index) of the write that created the key since it last was absent.
    pub create_revision: u64,
    /// Revision (log index) of the last write to the key.
    pub mod_revision: u64,
    pub value: Bytes,
}

/// Encodes a stored record (postcard), as the state machine and snapshot files keep it.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a stored record written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One record of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
pub enum Record {
    Meta(SnapshotMeta),
    Key {
        key: String,
        value: StoredValue,
    },
    ClientAddr {
        node_id: NodeId,
        client_addr: String,
    },
    End {
        records: u64,
        checksum: u32,
    },
    // Appended (postcard numbers variants): one `auth/…` record of the state machine.
    Auth {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// One `lease/…` record of the state machine (a lease, or a key's attachment to one).
    Lease {
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Writes a snapshot file record by record.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    hasher: crc32fast::Hasher,
    records: u64,
}

impl SnapshotWriter {
    /// Creates `path` (which must not exist) and writes the header and the metadata record.
    pub fn create(path: &Path, meta: &SnapshotMeta) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        let mut writer =
            Self { out: BufWriter::with_capacity(1 << 20, file), hasher: crc32fast::Hasher::new(), records: 0 };
        writer.write_bytes(MAGIC)?;
        writer.write_record(&Record::Meta(meta.clone()))?;
        Ok(writer)
    }

    pub fn write_key(&mut self, key: String, value: StoredValue) -> io::Result<()> {
        self.write_record(&Record::Key { key, value })
    }

    pub fn write_client_addr(&mut self, node_id: NodeId, client_addr: String) -> io::Result<()> {
        self.write_record(&Record::ClientAddr { node_id, client_addr })
    }

    pub fn write_lease(&mut self, key: Vec<u8>, value: Vec<u8>) -> io::Result<()> {
        self.write_record(&Record::Lease { key, value })
    }

    pub fn write_auth(&mut self, key: Vec<u8>, value: Vec<u8>) -> io::Result<()> {
        self.write_record(&Record::Auth { key, value })
    }

    /// Writes the `End` record and makes the file durable.
    pub fn finish(mut self) -> io::Result<()> {
        let end = Record::End { records: self.records, checksum: self.hasher.clone().finalize() };
        self.write_record(&end)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }

    fn write_record(&mut self, record: &Record) -> io::Result<()> {
        let bytes = encode(record)?;
        let length = u32::try_from(bytes.len())
            .ok()
            .filter(|length| *length as usize <= limits::MAX_SNAPSHOT_RECORD_BYTES)
            .ok_or_else(|| invalid(format!("snapshot record of {} bytes is over the limit", bytes.len())))?;
        self.write_bytes(&length.to_le_bytes())?;
        self.write_bytes(&bytes)?;
        self.records += 1;
        Ok(())
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }
}

/// Reads a snapshot file record by record, checking its framing, its order and its checksum.
pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    hasher: crc32fast::Hasher,
    records: u64,
    meta: SnapshotMeta,
    ended: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header and the metadata record.
    pub fn new(input: R) -> io::Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| invalid("not a quorumkv snapshot: too short"))?;
        if &magic != MAGIC {
            return Err(invalid("not a quorumkv snapshot: bad magic"));
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&magic);
        let (_, first) = read_record(&mut input, &mut hasher)?;
        match first {
            Some(Record::Meta(meta)) => Ok(Self { input, hasher, records: 1, meta, ended: false }),
            _ => Err(invalid("snapshot does not start with its metadata")),
        }
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The next state record; `None` after a valid `End` record (and nothing after it).
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.ended {
            return Ok(None);
        }
        let checksum_before = self.hasher.clone().finalize();
        let records_before = self.records;
        match self.read_record()? {
            None => Err(invalid("snapshot ends without its End record (truncated)")),
            Some(Record::Meta(_)) => Err(invalid("snapshot has a second metadata record")),
            Some(Record::End { records, checksum }) => {
                if records != records_before || checksum != checksum_before {
                    return Err(invalid("snapshot checksum or record count does not match (corrupted)"));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest)? != 0 {
                    return Err(invalid("snapshot has bytes after its End record"));
                }
                self.ended = true;
                Ok(None)
            }
            Some(record) => Ok(Some(record)),
        }
    }

    /// Reads to the end, checking everything; returns the metadata.
    pub fn verify(mut self) -> io::Result<SnapshotMeta> {
        while self.next_record()?.is_some() {}
        Ok(self.meta)
    }

    fn read_record(&mut self) -> io::Result<Option<Record>> {
        let (records, record) = read_record(&mut self.input, &mut self.hasher)?;
        self.records += records;
        Ok(record)
    }
}

/// Reads one length-prefixed record; returns how many were read (0 at a clean end) and it.
fn read_record<R: Read>(input: &mut BufReader<R>, hasher: &mut crc32fast::Hasher) -> io::Result<(u64, Option<Record>)> {
    let mut length = [0u8; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok((0, None)),
        Err(error) => return Err(error),
    }
    let size = u32::from_le_bytes(length) as usize;
    if size > limits::MAX_SNAPSHOT_RECORD_BYTES {
        return Err(invalid(format!("snapshot record of {size} bytes is over the limit")));
    }
    let mut bytes = vec![0u8; size];
    input.read_exact(&mut bytes).map_err(|_| invalid("snapshot record cut short (truncated)"))?;
    hasher.update(&length);
    hasher.update(&bytes);
    decode(&bytes).map(|record| (1, Some(record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_sample(path: &Path) {
        let meta = SnapshotMeta { last_log_id: None, last_membership: Default::default() };
        let mut writer = SnapshotWriter::create(path, &meta).unwrap();
        for i in 0..100u64 {
            let value = StoredValue { create_revision: i, mod_revision: i, value: vec![i as u8; 100].into() };
            writer.write_key(format!("key/{i:03}"), value).unwrap();
        }
        writer.write_client_addr(1, "127.0.0.1:8081".into()).unwrap();
        writer.finish().unwrap();
    }

    #[test]
    fn a_written_snapshot_reads_back_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let mut reader = SnapshotReader::new(File::open(&path).unwrap()).unwrap();
        let mut keys = 0;
        let mut addrs = 0;
        while let Some(record) = reader.next_record().unwrap() {
            match record {
                Record::Key { key, value } => {
                    assert_eq!(key, format!("key/{keys:03}"));
                    assert_eq!(value.value.len(), 100);
                    keys += 1;
                }
                Record::ClientAddr { .. } => addrs += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((keys, addrs), (100, 1));
    }

    #[test]
    fn truncated_corrupted_or_extended_snapshots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        write_sample(&path);
        let bytes = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8]| SnapshotReader::new(bytes).and_then(|reader| reader.verify());
        assert!(check(&bytes).is_ok());
        for cut in [0, 7, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(check(&bytes[..cut]).is_err(), "truncated at {cut} accepted");
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x40;
        assert!(check(&flipped).is_err(), "corrupted byte accepted");
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(check(&extended).is_err(), "trailing byte accepted");
    }
}
