//! Encoding of stored records: postcard for structured values, big-endian for log indexes
//! (so RocksDB's byte order is log order).

use std::io;

/// Postcard, shared with snapshot files (`quorumkv_wire::snapshot`), so a record reads the same
/// in RocksDB and in a snapshot.
pub(crate) use quorumkv_wire::snapshot::decode;
pub(crate) use quorumkv_wire::snapshot::encode;

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn index_from_key(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] =
        key.try_into().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "log key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}
