//! The state machine on its own: the same log entries give the same state however openraft
//! splits them into apply batches. Within a batch, entries see the earlier ones through an
//! overlay (RocksDB has not been written yet), so conditional writes, transactions and
//! `delete_prefix` must judge by it exactly as they would by RocksDB after separate batches.

use bytes::Bytes;
use futures::stream;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use quorumkv::txn::Cmp;
use quorumkv::txn::Compare;
use quorumkv::txn::Target;
use quorumkv::txn::Txn;
use quorumkv::txn::TxnOp;
use quorumkv::types::test_log_id;
use quorumkv::types::Command;
use quorumkv::types::Entry;
use quorumkv::types::Precondition;
use quorumkv::types::TypeConfig;

fn put(key: &str, value: &str, precondition: Precondition) -> Command {
    Command::Put { key: key.into(), value: Bytes::from(value.to_string()), precondition }
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    Command::Txn(Txn { compare, success, failure })
}

fn op_put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put { key: key.into(), value: Bytes::from(value.to_string()) }
}

fn exists(key: &str, exists: bool) -> Compare {
    Compare { key: key.into(), cmp: Cmp::Equal, target: Target::Exists(exists) }
}

/// The history: each entry depends on what the ones before it did (revision = index).
fn commands() -> Vec<Command> {
    vec![
        /* 1 */ put("a", "1", Precondition::None),
        /* 2 */ txn(vec![], vec![op_put("b/1", "x"), op_put("b/2", "x")], vec![]),
        /* 3 */
        txn(vec![exists("b/1", true)], vec![TxnOp::DeletePrefix { prefix: "b/".into() }, op_put("b/3", "y")], vec![]),
        /* 4 */ put("b/4", "z", Precondition::Absent),
        /* 5 */ Command::Delete { key: "a".into(), precondition: Precondition::ModRevision(1) },
        /* 6 */ put("a", "lost", Precondition::ModRevision(1)),
        /* 7 */ txn(vec![exists("a", false)], vec![op_put("a", "2"), TxnOp::Get { key: "a".into() }], vec![]),
        /* 8 */ txn(vec![], vec![op_put("c", "1"), TxnOp::Delete { key: "c".into() }, op_put("c", "2")], vec![]),
        /* 9 */ put("b/4", "again", Precondition::Absent),
        /* 10 */
        txn(
            vec![Compare { key: "b/4".into(), cmp: Cmp::Equal, target: Target::Value(Bytes::from_static(b"z")) }],
            vec![TxnOp::DeletePrefix { prefix: "b/".into() }, op_put("b/5", "w")],
            vec![op_put("wrong", "branch")],
        ),
        /* 11 */ put("d", "never", Precondition::ModRevision(0)),
        /* 12 */ txn(vec![exists("b/5", false)], vec![op_put("wrong", "branch")], vec![op_put("e", "1")]),
        /* 13 */ Command::Delete { key: "e".into(), precondition: Precondition::Exists },
        /* 14 */ put("e", "3", Precondition::Absent),
    ]
}

/// Applies the commands as entries 1..=n, `batch` entries per apply call; returns every key
/// with its revisions and value.
async fn apply_in_batches(batch: usize) -> Vec<(String, u64, u64, String)> {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let (_log, mut state_machine) = quorumkv::store::open(dir.path()).await.expect("open");
    let entries: Vec<Entry> = (commands().into_iter().enumerate())
        .map(|(index, command)| Entry::new_normal(test_log_id(1, 1, index as u64 + 1), command))
        .collect();
    for chunk in entries.chunks(batch) {
        let items: Vec<Result<openraft::storage::EntryResponder<TypeConfig>, std::io::Error>> =
            chunk.iter().cloned().map(|entry| Ok((entry, None))).collect();
        state_machine.apply(stream::iter(items)).await.expect("applied");
    }
    let mut state = Vec::new();
    state_machine
        .reader()
        .for_each_in_snapshot(|key, stored| {
            let value = String::from_utf8_lossy(&stored.value).into_owned();
            state.push((key.to_string(), stored.create_revision, stored.mod_revision, value));
            true
        })
        .expect("read");
    state
}

/// Goal: batches of 1, 2, 3, 5 and all 14 entries end in the same state, and it is the state
/// the commands describe.
#[tokio::test]
async fn the_same_entries_give_the_same_state_whatever_the_batches() {
    let expected: Vec<(String, u64, u64, String)> =
        [("a", 7, 7, "2"), ("b/5", 10, 10, "w"), ("c", 8, 8, "2"), ("e", 14, 14, "3")]
            .iter()
            .map(|(key, create, modified, value)| (key.to_string(), *create, *modified, value.to_string()))
            .collect();
    for batch in [1, 2, 3, 5, 14] {
        assert_eq!(apply_in_batches(batch).await, expected, "batches of {batch}");
    }
}
