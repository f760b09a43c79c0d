//! Writes a node forwards to the leader travel in batches: one peer message, and one
//! proposal on the leader, for every write that queued while the earlier batches were out.
//!
//! Each forwarded write used to be its own HTTP request to the leader and its own message to
//! its Raft core; under load that per-write cost was most of what a follower spent on a
//! write. Here each peer has one queue and one task that drains it: a write waits only while
//! [`MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER`] batches are already out (one write alone is sent
//! at once, so nothing is added to a lone write's latency), and the leader answers each write
//! of a batch separately ([`protocol::ForwardWrites`]).
//!
//! `ack=all` writes are not batched (`PeerClient::forward_write`): each waits for every voter,
//! and would hold the quorum writes of its batch as long.
//!
//! The caller sees exactly what one forward would give it (`Result<Result<CommandResult,
//! Error>, CallError>`), so the way to the leader (`leader.rs`) keeps its retry rule: a batch
//! that got no answer leaves every write in it with an unknown outcome, never retried; a
//! write the leader refused as "not the leader" is certainly not run, and retried alone.
//!
//! A leader of a build before batches answers `404` before anything runs; the batch's
//! writes are then forwarded one by one, so a rolling restart onto this build is safe.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;

use super::peer_client::CallError;
use super::peer_client::PeerClient;
use crate::error::Error;
use crate::limits::MAX_FORWARDED_WRITES_PER_BATCH;
use crate::limits::MAX_FORWARDED_WRITE_BATCH_BYTES;
use crate::limits::MAX_QUEUED_FORWARDED_WRITES_PER_PEER;
use crate::limits::MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER;
use crate::protocol;
use crate::protocol::ForwardedWrite;
use crate::types::CommandResult;
use crate::types::NodeId;

/// What forwarding one write came to: the leader's answer, or why there was none.
pub type Forwarded = Result<Result<CommandResult, Error>, CallError>;

/// One write waiting for a batch.
struct Queued {
    /// The write, encoded as one element of a batch (on the caller's task, not the sender's).
    element: Vec<u8>,
    timeout: Duration,
    queued_at: Instant,
    reply: oneshot::Sender<Forwarded>,
}

/// The queue of writes to one peer. Cheap to clone; the sending task ends once every clone
/// is dropped and the queue is empty.
#[derive(Clone)]
pub(crate) struct WriteBatches {
    target: NodeId,
    queue: mpsc::Sender<Queued>,
}

impl WriteBatches {
    /// Starts the sending task for `peer` on the current runtime. `peer` must not hold a
    /// `WriteBatches` itself, or the task would keep its own queue open for ever.
    pub(crate) fn start(peer: PeerClient) -> Self {
        let (queue, pending) = mpsc::channel(MAX_QUEUED_FORWARDED_WRITES_PER_PEER);
        let target = peer.target();
        tokio::spawn(run(peer, pending));
        Self { target, queue }
    }

    /// Forwards `write` to the peer in the next batch, and waits for its answer.
    pub(crate) async fn forward(&self, write: &ForwardedWrite, timeout: Duration) -> Forwarded {
        let element = protocol::encode_element(write)
            .map_err(|error| CallError::NotSent(self.target, format!("encode: {error}")))?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued { element, timeout, queued_at: Instant::now(), reply };
        match self.queue.try_send(queued) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(CallError::Busy(self.target)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(CallError::NotSent(self.target, "the batch sender has stopped".into()))
            }
        }
        // Dropped unanswered only if the sending task died: the batch may have been sent.
        answer.await.unwrap_or_else(|_| Err(CallError::NoAnswer(self.target, "the batch sender stopped".into())))
    }
}

/// Drains the queue into batches, at most [`MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER`] out at once.
async fn run(peer: PeerClient, mut pending: mpsc::Receiver<Queued>) {
    let in_flight = Arc::new(Semaphore::new(MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER));
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match pending.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // While every batch slot is taken, the writes arriving meanwhile queue for this batch,
        // as they would queue in the leader's Raft: a slow disk slows writes down rather than
        // failing them. A write that cannot be sent within its timeout (a leader that stopped
        // answering) is refused, certainly not sent, rather than kept.
        let wait_until = tokio::time::Instant::from_std(first.queued_at + first.timeout);
        let slot = match tokio::time::timeout_at(wait_until, in_flight.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => return,
            Err(_) => {
                let _ = first.reply.send(Err(CallError::Busy(peer.target())));
                continue;
            }
        };
        let (batch, next) = take_batch(first, &mut pending);
        carried = next;
        tokio::spawn(send(peer.clone(), batch, slot));
    }
}

/// `first` and whatever else is queued, up to a batch's count and size; the write that would
/// have passed the size is handed back for the next batch.
fn take_batch(first: Queued, pending: &mut mpsc::Receiver<Queued>) -> (Vec<Queued>, Option<Queued>) {
    let mut bytes = first.element.len();
    let mut batch = vec![first];
    while batch.len() < MAX_FORWARDED_WRITES_PER_BATCH {
        match pending.try_recv() {
            Ok(next) if bytes + next.element.len() > MAX_FORWARDED_WRITE_BATCH_BYTES => return (batch, Some(next)),
            Ok(next) => {
                bytes += next.element.len();
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    (batch, None)
}

/// Sends one batch and hands each write its answer.
async fn send(peer: PeerClient, batch: Vec<Queued>, _slot: OwnedSemaphorePermit) {
    let timeout = batch.iter().map(|queued| queued.timeout).max().unwrap_or_default();
    let answers = match protocol::encode_sequence(&batch.iter().map(|queued| &queued.element[..]).collect::<Vec<_>>()) {
        Ok(message) => peer.forward_encoded::<protocol::ForwardWrites>(message, timeout).await,
        Err(error) => Err(CallError::NotSent(peer.target(), format!("encode: {error}"))),
    };
    match answers {
        Ok(results) if results.len() == batch.len() => {
            for (queued, result) in batch.into_iter().zip(results) {
                let _ = queued.reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let why = format!("{} answers to a batch of {} writes", results.len(), batch.len());
            for queued in batch {
                let _ = queued.reply.send(Err(CallError::NoAnswer(peer.target(), why.clone())));
            }
        }
        Err(CallError::UnknownPath(..)) => one_by_one(&peer, batch).await,
        Err(error) => {
            for queued in batch {
                let _ = queued.reply.send(Err(error.clone()));
            }
        }
    }
}

/// A leader that does not know batches: each write forwarded alone, all at once.
async fn one_by_one(peer: &PeerClient, batch: Vec<Queued>) {
    let sends = batch.into_iter().map(|queued| async move {
        let message = protocol::encode_from_element(&queued.element);
        let answer = peer.forward_encoded::<protocol::ForwardWrite>(message, queued.timeout).await;
        let _ = queued.reply.send(answer);
    });
    futures::future::join_all(sends).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    use axum::routing::post;

    use super::*;
    use crate::network::PeerClients;
    use crate::network::PeerCredentials;
    use crate::protocol::Ack;
    use crate::protocol::Rpc;
    use crate::types::Command;
    use crate::types::Precondition;

    /// A stand-in leader on loopback serving `router`, and a client of this node's to it.
    async fn peer_serving(router: axum::Router) -> (PeerClient, tempfile::TempDir) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _state_machine) = crate::store::open(dir.path()).await.expect("open");
        let clients = PeerClients::new(crate::store::BootstrapRecord::new(&log), PeerCredentials::new(vec![], None));
        (clients.get(2, &addr), dir)
    }

    fn put(key: &str) -> ForwardedWrite {
        let value = bytes::Bytes::from_static(b"v");
        ForwardedWrite {
            command: Command::Put { key: key.into(), value, precondition: Precondition::None },
            ack: Ack::Quorum,
        }
    }

    /// Goal: against a leader of a build before batches (it answers `404` to them, nothing
    /// run), every write of a batch is forwarded alone and gets the leader's own answer, so a
    /// rolling restart onto this build fails no write.
    #[tokio::test]
    async fn a_leader_without_batches_gets_the_writes_one_by_one() {
        let singles = Arc::new(AtomicU64::new(0));
        let counted = singles.clone();
        let batches_refused = Arc::new(AtomicU64::new(0));
        let refused = batches_refused.clone();
        let router = axum::Router::new()
            .route(
                protocol::ForwardWrites::PATH,
                post(move || async move {
                    refused.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::NOT_FOUND
                }),
            )
            .route(
                protocol::ForwardWrite::PATH,
                post(move |body: axum::body::Bytes| async move {
                    let write: ForwardedWrite = protocol::decode(&body).expect("a single write");
                    let Command::Put { key, .. } = write.command else { panic!("a put") };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let revision: u64 = key.parse().expect("a number");
                    let answer: <protocol::ForwardWrite as Rpc>::Reply = Ok(CommandResult::Put { revision });
                    protocol::encode(&answer).expect("encode")
                }),
            );
        let (peer, _dir) = peer_serving(router).await;
        let writes = ["7", "8", "9"].map(put);
        let answers =
            futures::future::join_all(writes.iter().map(|w| peer.forward_write(w, Duration::from_secs(5)))).await;
        for (answer, revision) in answers.into_iter().zip([7, 8, 9]) {
            match answer {
                Ok(Ok(CommandResult::Put { revision: answered })) => assert_eq!(answered, revision),
                other => panic!("write {revision}: {other:?}"),
            }
        }
        assert_eq!(singles.load(Ordering::SeqCst), 3);
        assert!(batches_refused.load(Ordering::SeqCst) >= 1, "the writes were never offered as a batch");
    }

    /// Goal: while every batch slot is held by a leader that does not answer, a queued write
    /// is refused (`Busy`: not sent, so `429`) once its own timeout has passed, instead of
    /// waiting for a slot as long as the stuck batches last.
    #[tokio::test]
    async fn a_queued_write_waits_for_a_batch_no_longer_than_its_timeout() {
        let arrived = Arc::new(AtomicU64::new(0));
        let counted = arrived.clone();
        let router = axum::Router::new().route(
            protocol::ForwardWrites::PATH,
            post(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }),
        );
        let (peer, _dir) = peer_serving(router).await;
        let timeout = Duration::from_secs(60);
        let mut stuck = Vec::new();
        for held in 1..=MAX_WRITE_BATCHES_IN_FLIGHT_PER_PEER as u64 {
            let peer = peer.clone();
            stuck.push(tokio::spawn(async move { peer.forward_write(&put("1"), timeout).await }));
            let deadline = Instant::now() + Duration::from_secs(10);
            while arrived.load(Ordering::SeqCst) < held {
                assert!(Instant::now() < deadline, "batch {held} never reached the leader");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let started = Instant::now();
        let own_timeout = Duration::from_secs(2);
        let answer = tokio::time::timeout(Duration::from_secs(10), peer.forward_write(&put("2"), own_timeout))
            .await
            .expect("the queued write was kept waiting for a slot");
        assert!(matches!(answer, Err(CallError::Busy(_))), "{answer:?}");
        assert!(started.elapsed() >= own_timeout, "refused before its timeout");
        for task in stuck {
            task.abort();
        }
    }

    /// Goal: a batch answered with the wrong number of answers gives none of its writes an
    /// answer that may belong to another: each has an unknown outcome (sent, no valid answer).
    #[tokio::test]
    async fn a_batch_answered_with_the_wrong_count_leaves_every_write_unknown() {
        let router = axum::Router::new().route(
            protocol::ForwardWrites::PATH,
            post(|| async {
                let answer: <protocol::ForwardWrites as Rpc>::Reply = vec![Ok(CommandResult::Put { revision: 1 })];
                protocol::encode(&answer).expect("encode")
            }),
        );
        let (peer, _dir) = peer_serving(router).await;
        // On this one-thread runtime all six are queued before the sender runs: one batch.
        let writes = ["1", "2", "3", "4", "5", "6"].map(put);
        let answers =
            futures::future::join_all(writes.iter().map(|w| peer.forward_write(w, Duration::from_secs(5)))).await;
        for answer in answers {
            assert!(matches!(answer, Err(CallError::NoAnswer(..))), "{answer:?}");
        }
    }

    fn queued(element_bytes: usize) -> (Queued, oneshot::Receiver<Forwarded>) {
        let (reply, answer) = oneshot::channel();
        let element = vec![0; element_bytes];
        (Queued { element, timeout: Duration::from_secs(1), queued_at: Instant::now(), reply }, answer)
    }

    /// Goal: a batch takes what is queued up to the count limit, and a write that would pass
    /// the size limit starts the next batch instead of being lost or sent oversized.
    #[test]
    fn batches_are_cut_at_their_count_and_size() {
        let (queue, mut pending) = mpsc::channel(2 * MAX_FORWARDED_WRITES_PER_BATCH + 1);
        let mut answers = Vec::new();
        for _ in 0..MAX_FORWARDED_WRITES_PER_BATCH + 3 {
            let (write, answer) = queued(10);
            queue.try_send(write).expect("room");
            answers.push(answer);
        }
        let first = pending.try_recv().expect("queued");
        let (batch, carried) = take_batch(first, &mut pending);
        assert_eq!(batch.len(), MAX_FORWARDED_WRITES_PER_BATCH);
        assert!(carried.is_none());
        let first = pending.try_recv().expect("queued");
        let (batch, carried) = take_batch(first, &mut pending);
        assert_eq!(batch.len(), 3, "the rest, in a second batch");
        assert!(carried.is_none());

        let half = MAX_FORWARDED_WRITE_BATCH_BYTES / 2;
        for bytes in [half, half, 1, MAX_FORWARDED_WRITE_BATCH_BYTES * 2] {
            let (write, answer) = queued(bytes);
            queue.try_send(write).expect("room");
            answers.push(answer);
        }
        let first = pending.try_recv().expect("queued");
        let (batch, carried) = take_batch(first, &mut pending);
        assert_eq!(batch.iter().map(|q| q.element.len()).collect::<Vec<_>>(), vec![half, half]);
        let carried = carried.expect("the write past the size starts the next batch");
        assert_eq!(carried.element.len(), 1);
        let (batch, carried) = take_batch(carried, &mut pending);
        assert_eq!(batch.len(), 1, "the write before a large one goes without it");
        let (batch, _) = take_batch(carried.expect("the large write"), &mut pending);
        assert_eq!(batch[0].element.len(), MAX_FORWARDED_WRITE_BATCH_BYTES * 2, "a write over the size goes alone");
    }
}
