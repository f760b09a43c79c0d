//! The limits of the formats themselves: no record of any of them may be larger, whatever a
//! node is configured with (its own limits, `quorumkv::limits`, stay below these).

/// No configuration may raise the key limit past this: keys travel in URLs.
pub const MAX_KEY_BYTES_CEILING: usize = 8 * 1024;

/// The value limit may be raised up to this; every value is copied into the log of every
/// replica and sent in one AppendEntries, so large values cost heartbeats their latency.
pub const MAX_VALUE_BYTES_CEILING: usize = 16 * 1024 * 1024;

/// Largest record of a snapshot file: one key and value at their ceilings plus revisions.
pub const MAX_SNAPSHOT_RECORD_BYTES: usize = MAX_KEY_BYTES_CEILING + MAX_VALUE_BYTES_CEILING + 1024;
