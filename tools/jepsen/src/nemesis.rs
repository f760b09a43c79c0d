//! The nemesis: which fault to install next, as the seed dictates, and the membership faults
//! (removing a voter, adding it back), which go through the cluster's own API. The process and
//! network faults are `scripts/faults/*`, run by [`Cluster`].

use std::time::Duration;
use std::time::Instant;

use backon::ConstantBuilder;
use backon::Retryable;
use quorumkv_api::AddLearnerRequest;
use quorumkv_api::ClusterStatus;
use quorumkv_api::NodeRef;

use crate::cluster::Cluster;
use crate::faults::FaultStatus;
use crate::faults::Requested;
use crate::options::ClusterKind;
use crate::options::Nemesis;
use crate::options::Options;

/// Picks and installs one fault, as the schedule's seed dictates. Returns the node removed
/// from the membership, if that was the fault, so the healing step adds it back.
pub async fn inject(
    options: &Options,
    cluster: &Cluster,
    http: &reqwest::Client,
    rng: &mut fastrand::Rng,
    log: &mut std::fs::File,
    start: Instant,
) -> Option<u64> {
    let kinds = fault_kinds(options.nemesis, cluster.kind);
    let kind = kinds[rng.usize(..kinds.len())];
    let target = if rng.bool() { "leader".to_string() } else { rng.u64(1..=cluster.nodes).to_string() };
    match kind {
        Nemesis::Kill => cluster.fault(log, start, "kill", "faults/kill.sh", &[&target]).await,
        Nemesis::PowerCut => {
            // Mostly the leader: its unsynced tail is what followers may already have committed.
            let chosen =
                if rng.u8(..4) == 0 { Ok(rng.u64(1..=cluster.nodes).to_string()) } else { cluster.leader().await };
            match chosen {
                Ok(id) => {
                    cluster.fault(log, start, "power-cut", "faults/kill.sh", &[&id]).await;
                    // At once: a leader back before anyone else is elected is the case that
                    // lost writes while openraft's leader restore was on.
                    cluster.harness_step(log, start, "faults/restart.sh", &[&id]).await;
                }
                Err(error) => {
                    cluster.record(log, start, &format!("power-cut -> Skipped: {error}"));
                    cluster.note("power-cut", FaultStatus::Skipped);
                }
            }
        }
        Nemesis::Pause => cluster.fault(log, start, "pause", "faults/pause.sh", &[&target]).await,
        Nemesis::Membership => return remove_member(cluster, http, rng, log, start).await,
        _ => {
            let spec = partition_spec(cluster.nodes, rng);
            let spec = match spec.as_str() {
                "leader-and-one" => match cluster.leader().await.ok().and_then(|l| l.parse::<u64>().ok()) {
                    Some(leader) => leader_and_one_spec(cluster.nodes, leader, rng),
                    None => "isolate-leader".to_string(),
                },
                _ => spec,
            };
            cluster.fault(log, start, "partition", "faults/partition.sh", &[&spec]).await;
        }
    }
    None
}

/// The fault kinds the schedule picks from for a `--nemesis` on a kind of cluster.
fn fault_kinds(nemesis: Nemesis, cluster: ClusterKind) -> &'static [Nemesis] {
    match nemesis {
        Nemesis::Mix if cluster != ClusterKind::Local => {
            &[Nemesis::Kill, Nemesis::Pause, Nemesis::Partition, Nemesis::Membership]
        }
        Nemesis::Mix => &[Nemesis::Kill, Nemesis::Pause, Nemesis::Membership],
        Nemesis::KillPause => &[Nemesis::Kill, Nemesis::Pause],
        Nemesis::Kill => &[Nemesis::Kill],
        Nemesis::Pause => &[Nemesis::Pause],
        Nemesis::Membership => &[Nemesis::Membership],
        Nemesis::PowerCut => &[Nemesis::PowerCut],
        Nemesis::Partition | Nemesis::None => &[Nemesis::Partition],
    }
}

/// The name a fault kind is counted under in `result.json`.
fn fault_name(kind: Nemesis) -> &'static str {
    match kind {
        Nemesis::Kill => "kill",
        Nemesis::Pause => "pause",
        Nemesis::Partition => "partition",
        Nemesis::Membership => "membership",
        Nemesis::PowerCut => "power-cut",
        Nemesis::KillPause | Nemesis::Mix | Nemesis::None => "mixed",
    }
}

/// What a run must have installed for its verdict to stand: the one kind it names, or for a
/// mix at least one of the kinds the schedule picks from.
pub fn requested_faults(nemesis: Nemesis, cluster: ClusterKind) -> Requested {
    let kinds: Vec<&'static str> = fault_kinds(nemesis, cluster).iter().map(|kind| fault_name(*kind)).collect();
    match nemesis {
        Nemesis::None => Requested::Nothing,
        Nemesis::Mix | Nemesis::KillPause => Requested::AnyOf(kinds),
        _ => Requested::Each(kinds),
    }
}

/// A random partition: majority/minority, leader isolation, and on 5 nodes or more bridge,
/// ring, or the leader with one other node (`leader-and-one`, resolved by the caller).
fn partition_spec(nodes: u64, rng: &mut fastrand::Rng) -> String {
    let mut ids: Vec<u64> = (1..=nodes).collect();
    rng.shuffle(&mut ids);
    let choices = if nodes >= 5 { 5 } else { 2 };
    match rng.usize(..choices) {
        0 => "isolate-leader".to_string(),
        1 => {
            let minority = (nodes as usize - 1) / 2;
            format!("{}/{}", join_ids(&ids[..minority]), join_ids(&ids[minority..]))
        }
        // Bridge: two halves that both see one node in the middle (a non-transitive split).
        2 => format!("{}/{}", join_ids(&ids[..3]), join_ids(&ids[2..])),
        // Ring: each node sees only its two neighbours.
        3 => (0..ids.len()).map(|i| join_ids(&[ids[i], ids[(i + 1) % ids.len()]])).collect::<Vec<_>>().join("/"),
        // The deposed-leader case: a node still connected to an old leader that lost its
        // quorum keeps hearing from it while the majority elects another and moves on.
        _ => "leader-and-one".to_string(),
    }
}

/// The leader and one random other node, cut off from the rest.
fn leader_and_one_spec(nodes: u64, leader: u64, rng: &mut fastrand::Rng) -> String {
    let others: Vec<u64> = (1..=nodes).filter(|id| *id != leader).collect();
    let companion = others[rng.usize(..others.len())];
    let rest: Vec<u64> = others.into_iter().filter(|id| *id != companion).collect();
    format!("{leader},{companion}/{}", join_ids(&rest))
}

fn join_ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Membership nemesis: removes a random voter that is not the leader.
pub async fn remove_member(
    cluster: &Cluster,
    http: &reqwest::Client,
    rng: &mut fastrand::Rng,
    log: &mut std::fs::File,
    start: Instant,
) -> Option<u64> {
    let chosen = async {
        let status = cluster.admin(http, reqwest::Method::GET, "/v1/cluster", None::<&()>).await?;
        let status: ClusterStatus = serde_json::from_str(&status.1).ok()?;
        let leader = status.leader_id?;
        let mut followers: Vec<u64> =
            status.members.iter().filter(|m| m.voter).map(|m| m.id).filter(|id| *id != leader).collect();
        followers.sort_unstable();
        followers.get(rng.usize(..followers.len().max(1))).copied()
    };
    let Some(id) = chosen.await else {
        cluster.record(log, start, "membership remove -> Skipped: no leader or no follower voter known");
        cluster.note("membership", FaultStatus::Skipped);
        return None;
    };
    let answer = cluster.admin(http, reqwest::Method::DELETE, &format!("/v1/cluster/members/{id}"), None::<&()>).await;
    // 200: removed. A 4xx or 503 is a definite refusal; anything else (504, no answer) may
    // or may not have removed it.
    let status = match answer.as_ref().map(|a| a.0) {
        Some(200) => FaultStatus::Installed,
        Some(code) if (400..500).contains(&code) || code == 503 => FaultStatus::Skipped,
        _ => FaultStatus::Indeterminate,
    };
    cluster.record(log, start, &format!("membership remove {id} -> {status:?}: HTTP {:?}", answer.map(|a| a.0)));
    cluster.note("membership", status);
    (status == FaultStatus::Installed).then_some(id)
}

/// Adding a removed node back is tried this many times, this far apart (20 s: a change still in
/// flight, or a learner still catching up, is refused meanwhile).
const READD_ATTEMPTS: usize = 40;
const READD_INTERVAL: Duration = Duration::from_millis(500);

/// Adds a removed node back as a learner, then promotes it once it has caught up.
pub async fn readd_member(cluster: &Cluster, http: &reqwest::Client, id: u64, log: &mut std::fs::File, start: Instant) {
    let env = std::fs::read_to_string(cluster.dir.join(format!("node-{id}.env"))).unwrap_or_default();
    let Some(peer_addr) = env.lines().find_map(|line| line.strip_prefix("PEER_ADDR=")) else { return };
    let request = AddLearnerRequest { id, peer_addr: peer_addr.to_string(), fresh: false };
    // Bounded: each step is retried while a change is in flight or the node catches up.
    let add_and_promote = || async {
        // A promotion whose answer was lost may have happened: adding a voter as a learner is
        // refused (409), so look first.
        let status = cluster.admin(http, reqwest::Method::GET, "/v1/cluster", None::<&()>).await;
        let status = status.and_then(|(_, body)| serde_json::from_str::<ClusterStatus>(&body).ok());
        if status.is_some_and(|status| status.members.iter().any(|member| member.id == id && member.voter)) {
            return Ok((200, "already a voter".to_string()));
        }
        let added = cluster.admin(http, reqwest::Method::POST, "/v1/cluster/learners", Some(&request)).await;
        let promoted = match added {
            Some((200, _)) => {
                cluster.admin(http, reqwest::Method::POST, "/v1/cluster/voters", Some(&NodeRef { id })).await
            }
            other => other,
        };
        match promoted {
            Some((200, body)) => Ok((200, body)),
            other => Err(other),
        }
    };
    let retries = ConstantBuilder::default().with_delay(READD_INTERVAL).with_max_times(READD_ATTEMPTS - 1);
    let outcome = add_and_promote.retry(retries).await.unwrap_or_else(|last| last.unwrap_or((0, String::new())));
    let outcome = (outcome.0 != 0).then_some(outcome);
    let status = outcome.as_ref().map(|a| a.0);
    cluster.record(log, start, &format!("membership re-add {id} -> HTTP {status:?}"));
    if status != Some(200) {
        cluster.harness_failure(format!("node {id} was not added back (last answer HTTP {status:?})"));
    }
}
