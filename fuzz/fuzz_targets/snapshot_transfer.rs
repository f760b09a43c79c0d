//! The body of a snapshot transfer as the peer port receives it: the vote's frame
//! (`protocol::read_snapshot_header`), then the snapshot file, read record by record with its
//! framing, order and checksum checked (`quorumkv_wire::snapshot::SnapshotReader`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv_wire::protocol;
use quorumkv_wire::snapshot::SnapshotReader;

fuzz_target!(|bytes: &[u8]| {
    // A transfer arrives in pieces: every prefix of a frame must ask for more, never panic.
    let (_vote, header_length) = match protocol::read_snapshot_header(bytes) {
        Ok(Some(header)) => header,
        Ok(None) | Err(_) => return,
    };
    assert!(header_length <= bytes.len());
    for cut in 0..header_length {
        assert!(matches!(protocol::read_snapshot_header(&bytes[..cut]), Ok(None)), "a prefix of {cut} bytes");
    }
    let Ok(mut reader) = SnapshotReader::new(&bytes[header_length..]) else { return };
    let _ = reader.meta();
    while let Ok(Some(_record)) = reader.next_record() {}
});
