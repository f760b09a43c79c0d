//! Jepsen-style testing of quorumkv: a seeded fault run of a whole cluster (`quorumkv-jepsen`)
//! and the online self-check of a live one (`quorumkv verify`).
//!
//! Concurrent clients run a workload against every node while a nemesis injects faults on a
//! schedule through `scripts/faults/*`. Every operation is recorded (invoke → ok / fail /
//! info). At the end every node is killed with SIGKILL at once and restarted, final reads are
//! folded into the history, and the history is checked: linearizability per key for the
//! register workload, lost and unexpected elements for the set workload, bounded staleness for
//! bounded reads, and identical replicas. The seed reproduces the schedule and the operation mix.
//!
//! The parts, as etcd's `tests/robustness` has them:
//!
//! | module | role |
//! |---|---|
//! | [`options`] | the flags of a run |
//! | [`cluster`] | the cluster under test: up and down through `scripts/`, fault scripts, final observations |
//! | [`nemesis`] | which fault next (seeded), and the membership faults |
//! | [`faults`] | the ledger of faults installed, skipped or indeterminate, and harness failures |
//! | [`traffic`] | the clients and their workloads, recording every operation |
//! | [`watchers`] | a watcher per node beside the register clients, reconnecting across faults |
//! | [`leases`] | a lease holder per node beside the register clients: grant, attach, renew, abandon |
//! | [`locks`] | a lock holder bound to each node beside them, all taking one lock and working a fenced counter |
//! | [`history`] | the recorded operations |
//! | [`checker`] | linearizability (registers), [`checker::set`], [`checker::staleness`], [`checker::watch`], [`checker::lease`], [`checker::lock`] |
//! | [`report`] | `history.jsonl`, `result.json` and what a run prints |
//! | [`run`] | one fault run, start to end |
//! | [`verify`] | `quorumkv verify`: a short register workload on a live cluster, checked and cleaned up |

pub mod checker;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod leases;
pub mod locks;
pub mod nemesis;
pub mod options;
pub mod report;
pub mod run;
pub mod traffic;
pub mod verify;
pub mod watchers;
