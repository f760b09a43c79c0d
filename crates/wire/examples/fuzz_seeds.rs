//! Writes the seed inputs of the fuzz targets (`fuzz/`, docs/fuzzing.md): real encodings of
//! every peer message, a snapshot transfer, backups, tokens and headers, so the fuzzer starts
//! from inputs that get past the framing. The committed corpora hold these and what the
//! fuzzer grew from them.
//!
//! `cargo run -p quorumkv-wire --example fuzz_seeds -- fuzz/corpus`

use std::path::Path;

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use quorumkv_wire::auth;
use quorumkv_wire::auth::AuthCommand;
use quorumkv_wire::auth::Grant;
use quorumkv_wire::auth::Principal;
use quorumkv_wire::auth::TokenClaims;
use quorumkv_wire::error::Error;
use quorumkv_wire::protocol;
use quorumkv_wire::protocol::Ack;
use quorumkv_wire::protocol::AdminCommand;
use quorumkv_wire::protocol::ForwardedWrite;
use quorumkv_wire::protocol::FreshnessReply;
use quorumkv_wire::protocol::ProbeReply;
use quorumkv_wire::protocol::ReadPolicy;
use quorumkv_wire::snapshot::SnapshotWriter;
use quorumkv_wire::snapshot::StoredValue;
use quorumkv_wire::txn::Cmp;
use quorumkv_wire::txn::Compare;
use quorumkv_wire::txn::Target;
use quorumkv_wire::txn::Txn;
use quorumkv_wire::txn::TxnOp;
use quorumkv_wire::txn::TxnOpResult;
use quorumkv_wire::types::test_log_id as log_id;
use quorumkv_wire::types::Command;
use quorumkv_wire::types::CommandResult;
use quorumkv_wire::types::Entry;
use quorumkv_wire::types::Member;
use quorumkv_wire::types::Precondition;
use quorumkv_wire::types::SnapshotMeta;
use quorumkv_wire::types::StoredMembership;
use quorumkv_wire::types::TypeConfig;
use quorumkv_wire::types::Vote;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)
}

fn encoded<T: serde::Serialize>(message: &T) -> Vec<u8> {
    protocol::encode(message).expect("encode")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let vote = Vote::new_committed(5, 1);
    let put = Command::Put { key: "k".into(), value: Bytes::from_static(b"v"), precondition: Precondition::None };
    let as_user = Command::As {
        principal: Principal::User { name: "app".into(), revision: Some(3) },
        command: Box::new(Command::Delete { key: "config/a".into(), precondition: Precondition::ModRevision(9) }),
    };
    let auth_change = Command::Auth(AuthCommand::PutRole {
        name: "reader".into(),
        grants: vec![Grant { prefix: "config/".into(), read: true, write: false }],
    });
    let txn = Command::Txn(Txn {
        compare: vec![
            Compare { key: "config/a".into(), cmp: Cmp::Equal, target: Target::ModRevision(9) },
            Compare { key: "config/b".into(), cmp: Cmp::Less, target: Target::Value(Bytes::from_static(b"v2")) },
            Compare { key: "lock".into(), cmp: Cmp::NotEqual, target: Target::Exists(true) },
        ],
        success: vec![
            TxnOp::Put { key: "config/a".into(), value: Bytes::from_static(b"v3") },
            TxnOp::DeletePrefix { prefix: "tmp/".into() },
        ],
        failure: vec![TxnOp::Get { key: "config/a".into() }, TxnOp::Delete { key: "config/c".into() }],
    });
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([1, 2, 3])],
        std::collections::BTreeMap::from([
            (1, Member { peer_addr: "10.0.0.1:9080".into() }),
            (2, Member { peer_addr: "10.0.0.2:9080".into() }),
            (3, Member { peer_addr: "10.0.0.3:9080".into() }),
        ]),
    )?;

    // peer_message: every request and reply.
    let peer = "peer_message";
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(5, 1, 9)),
        entries: vec![
            Entry::new_blank(log_id(5, 1, 10)),
            Entry::new_normal(log_id(5, 1, 11), put.clone()),
            Entry::new_normal(log_id(5, 1, 12), as_user.clone()),
            Entry::new_normal(log_id(5, 1, 13), auth_change.clone()),
            Entry::new_membership(log_id(5, 1, 14), membership.clone()),
            Entry::new_normal(log_id(5, 1, 15), txn.clone()),
        ],
        leader_commit: Some(log_id(4, 2, 8)),
    };
    write(&dir, peer, "append", &encoded(&append))?;
    write(&dir, peer, "vote", &encoded(&VoteRequest::<TypeConfig>::new(Vote::new(6, 2), Some(log_id(5, 1, 11)))))?;
    write(&dir, peer, "transfer", &encoded(&TransferLeaderRequest::<TypeConfig>::new(vote, 2, None)))?;
    for (name, command) in [("put", put), ("as-user", as_user), ("auth", auth_change), ("txn", txn)] {
        write(&dir, peer, &format!("write-{name}"), &encoded(&ForwardedWrite { command, ack: Ack::All }))?;
    }
    write(&dir, peer, "read-policy", &encoded(&ReadPolicy::Lease))?;
    let admin = AdminCommand::AddLearner { id: 4, peer_addr: "127.0.0.1:9084".into(), fresh: true };
    write(&dir, peer, "admin", &encoded(&admin))?;
    write(&dir, peer, "node-id", &encoded(&3u64))?;
    write(&dir, peer, "append-reply", &encoded(&AppendEntriesResponse::<TypeConfig>::HigherVote(Vote::new(6, 2))))?;
    write(&dir, peer, "vote-reply", &encoded(&VoteResponse::<TypeConfig>::new(vote, None, true)))?;
    let result: Result<CommandResult, Error> = Ok(CommandResult::PreconditionFailed { current_revision: Some(5) });
    write(&dir, peer, "write-reply", &encoded(&result))?;
    let txn_result: Result<CommandResult, Error> = Ok(CommandResult::Txn {
        succeeded: false,
        revision: 16,
        results: vec![
            TxnOpResult::Get(Some(StoredValue {
                create_revision: 3,
                mod_revision: 12,
                value: Bytes::from_static(b"v1"),
            })),
            TxnOpResult::Delete { deleted: true },
            TxnOpResult::DeletePrefix { deleted: 2 },
            TxnOpResult::Put { revision: 16 },
        ],
    });
    write(&dir, peer, "txn-reply", &encoded(&txn_result))?;
    let refused: Result<CommandResult, Error> = Err(Error::TooStale { lag_ms: Some(9), max_lag_ms: 5 });
    write(&dir, peer, "error-reply", &encoded(&refused))?;
    let freshness: Result<FreshnessReply, Error> = Ok(FreshnessReply { committed_index: 41, quorum_age_us: 1500 });
    write(&dir, peer, "freshness-reply", &encoded(&freshness))?;
    let probe: Result<ProbeReply, Error> = Ok(ProbeReply {
        has_seen_asker: true,
        asker_registered: false,
        members: vec![(1, "10.0.0.1:9080".into())],
        committed_membership: Some(log_id(3, 1, 17)),
        asker_in_committed_membership: true,
    });
    write(&dir, peer, "probe-reply", &encoded(&probe))?;

    // snapshot_transfer: the vote's frame, then a snapshot file with every kind of record.
    let scratch = tempfile::tempdir()?;
    let path = scratch.path().join("snapshot");
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(5, 1, 14)),
        last_membership: StoredMembership::new(Some(log_id(5, 1, 14)), membership),
    };
    let mut writer = SnapshotWriter::create(&path, &meta)?;
    for index in 0..3u64 {
        let value = StoredValue { create_revision: index + 1, mod_revision: index + 2, value: Bytes::from(vec![7; 3]) };
        writer.write_key(format!("key/{index}"), value)?;
    }
    writer.write_client_addr(1, "127.0.0.1:8081".into())?;
    writer.write_auth(b"auth/enabled".to_vec(), vec![1])?;
    writer.finish()?;
    let mut transfer = protocol::snapshot_header(&vote)?;
    transfer.extend(std::fs::read(&path)?);
    write(&dir, "snapshot_transfer", "three-keys", &transfer)?;

    // backup_file: a complete backup, an empty one, and one cut short.
    let backup = "{\"format\":\"quorumkv-backup/1\",\"applied_index\":3}\n\
                  {\"key\":\"a\",\"value_base64\":\"aGk=\"}\n\
                  {\"key\":\"b/c\",\"value_base64\":\"\"}\n\
                  {\"end\":true,\"keys\":2}\n";
    write(&dir, "backup_file", "two-keys", backup.as_bytes())?;
    write(
        &dir,
        "backup_file",
        "empty",
        b"{\"format\":\"quorumkv-backup/1\",\"applied_index\":0}\n{\"end\":true,\"keys\":0}\n",
    )?;
    write(&dir, "backup_file", "cut-short", &backup.as_bytes()[..backup.len() / 2])?;

    // client_input: token claims, a token, header values, keys and names.
    let claims = TokenClaims { user: "root".into(), revision: 2, applied_index: 40, expires_at_unix_ms: 1 << 41 };
    write(&dir, "client_input", "claims", &serde_json::to_vec(&claims)?)?;
    write(&dir, "client_input", "token", auth::issue_token(&[9; 32], &claims).as_bytes())?;
    write(&dir, "client_input", "if-match", b"\"42\"\n*")?;
    write(&dir, "client_input", "key", "config/\u{e9}t\u{e9}/db".as_bytes())?;
    write(&dir, "client_input", "client-addr", b"node-1.example:8081")?;
    println!("seeds written under {}", dir.display());
    Ok(())
}
