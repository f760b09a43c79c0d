//! A backup file as `quorumkv restore` reads it (`quorumkv_wire::backup::BackupReader`): the
//! whole-file check first, then record by record; both must agree on whether it is complete.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quorumkv_wire::backup::BackupReader;

fuzz_target!(|bytes: &[u8]| {
    let complete = BackupReader::new(bytes).check_complete();
    let mut reader = BackupReader::new(bytes);
    let mut records = 0u64;
    let read_through = reader.header().and_then(|()| {
        while reader.next_record()?.is_some() {
            records += 1;
        }
        Ok(())
    });
    // A file the check accepts reads through record by record, with the same count.
    if let Ok(keys) = complete {
        assert!(read_through.is_ok(), "checked complete but unreadable: {read_through:?}");
        assert_eq!(keys, records);
    }
});
