//! Many linearizable reads on a follower share one read point (DESIGN.md §23).
//!
//! A read point (a ReadIndex or lease confirmation by the leader, asked for over the peer
//! channel) is valid for every read that *arrived before the round that produced it began*:
//! the leader confirmed its leadership, and chose the log id to wait for, after those reads
//! started. So concurrent reads share rounds: a read that arrives while no round runs starts
//! one; a read that arrives while one runs joins the *next* round, which starts when the
//! running one ends (or, if that one is slow, [`limits::READ_ROUND_OVERLAP_MS`] after the read
//! queued, as long as fewer than [`limits::MAX_READ_ROUNDS_IN_FLIGHT`] rounds run), and serves
//! every read that joined it. Under load that is one forwarded request per round trip instead
//! of one per read. A read never takes the answer of a round that began before it arrived.
//!
//! Rounds run as tasks of their own: a read whose client went away does not cancel the round
//! others are waiting for.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crate::limits;

type RoundFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Concurrent callers of [`ReadRounds::read_point`] share rounds as the module says.
pub struct ReadRounds<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// Callers that have arrived, ever: a caller's ticket is its place in that count. A round
    /// covers the tickets below the count read when it began.
    arrivals: AtomicU64,
    state: Mutex<State<T>>,
    /// Signalled whenever a round ends: a queued round waiting for a free slot looks again.
    round_ended: tokio::sync::Notify,
    /// Runs one round (a read point asked of the leader).
    round: Box<dyn Fn() -> RoundFuture<T> + Send + Sync>,
    /// The answer of a round whose task ended without one (it panicked).
    lost: fn() -> T,
}

struct State<T> {
    /// The latest answer and the tickets it covers (those below the count).
    answered: Option<(u64, T)>,
    /// The round that began last, while it runs.
    running: Option<Round<T>>,
    /// The round that begins next, once readers wait for it.
    next: Option<tokio::sync::watch::Receiver<Option<T>>>,
    /// Rounds begun and not yet ended (at most [`limits::MAX_READ_ROUNDS_IN_FLIGHT`]).
    in_flight: usize,
}

/// Ends a round's slot however its task ends, a panic included.
struct Slot<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.in_flight -= 1;
        drop(state);
        self.shared.round_ended.notify_waiters();
    }
}

struct Round<T> {
    covers: u64,
    answer: tokio::sync::watch::Receiver<Option<T>>,
    /// Resolves when the round ends (its sender is dropped then, answered or not).
    ended: tokio::sync::watch::Receiver<()>,
}

impl<T: Clone + Send + Sync + 'static> ReadRounds<T> {
    /// Rounds run by `round`; `lost` is the answer when a round's task panicked.
    pub fn new(round: impl Fn() -> RoundFuture<T> + Send + Sync + 'static, lost: fn() -> T) -> Self {
        let state = State { answered: None, running: None, next: None, in_flight: 0 };
        let shared = Shared {
            arrivals: AtomicU64::new(0),
            state: Mutex::new(state),
            round_ended: tokio::sync::Notify::new(),
            round: Box::new(round),
            lost,
        };
        Self { shared: Arc::new(shared) }
    }

    /// The answer of a round that began after this call did.
    pub async fn read_point(&self) -> T {
        let shared = &self.shared;
        // One atomic: a round's count, read after this, is above every ticket taken before.
        let ticket = shared.arrivals.fetch_add(1, Ordering::SeqCst);
        let mut answer = {
            let mut state = shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some((covers, answer)) = &state.answered {
                if ticket < *covers {
                    return answer.clone();
                }
            }
            match (&state.running, &state.next) {
                (Some(running), _) if ticket < running.covers => running.answer.clone(),
                (_, Some(next)) => next.clone(),
                (Some(running), None) => {
                    let (sender, receiver) = tokio::sync::watch::channel(None);
                    let after = running.ended.clone();
                    state.next = Some(receiver.clone());
                    tokio::spawn(Shared::next_round(shared.clone(), after, sender));
                    receiver
                }
                (None, None) => {
                    let (sender, receiver) = tokio::sync::watch::channel(None);
                    Shared::begin(shared, &mut state, sender, receiver.clone());
                    receiver
                }
            }
        };
        let answered = answer.wait_for(Option::is_some).await.ok().and_then(|answer| answer.clone());
        answered.unwrap_or_else(shared.lost)
    }
}

impl<T: Clone + Send + Sync + 'static> Shared<T> {
    /// Begins a round now (the state locked): it covers every ticket taken so far.
    fn begin(
        shared: &Arc<Self>,
        state: &mut State<T>,
        sender: tokio::sync::watch::Sender<Option<T>>,
        answer: tokio::sync::watch::Receiver<Option<T>>,
    ) {
        let round = (shared.round)();
        let covers = shared.arrivals.load(Ordering::SeqCst);
        let (ended_sender, ended) = tokio::sync::watch::channel(());
        state.running = Some(Round { covers, answer, ended });
        state.in_flight += 1;
        let slot = Slot { shared: shared.clone() };
        let shared = shared.clone();
        tokio::spawn(async move {
            // Both dropped at the end, panic or not: the slot is free again, and the next round
            // stops waiting for this one.
            let _slot = slot;
            let _ended = ended_sender;
            let answer = round.await;
            {
                let mut state = shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if state.answered.as_ref().is_none_or(|(answered, _)| *answered < covers) {
                    state.answered = Some((covers, answer.clone()));
                }
                if state.running.as_ref().is_some_and(|running| running.covers == covers) {
                    state.running = None;
                }
            }
            sender.send_replace(Some(answer));
        });
    }

    /// The round readers joined while another ran: begins when that one ends, or after
    /// [`limits::READ_ROUND_OVERLAP_MS`] (a slow round does not hold up every read), once
    /// fewer than [`limits::MAX_READ_ROUNDS_IN_FLIGHT`] rounds run.
    async fn next_round(
        shared: Arc<Self>,
        mut after: tokio::sync::watch::Receiver<()>,
        sender: tokio::sync::watch::Sender<Option<T>>,
    ) {
        let overlap = Duration::from_millis(limits::READ_ROUND_OVERLAP_MS);
        let _ = tokio::time::timeout(overlap, after.changed()).await;
        loop {
            // Registered before looking, so an end between the look and the wait is not missed.
            let ended = shared.round_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut state = shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if state.in_flight < limits::MAX_READ_ROUNDS_IN_FLIGHT {
                    // Each `next` has this one task; its readers hold the receiver taken here.
                    if let Some(answer) = state.next.take() {
                        Self::begin(&shared, &mut state, sender, answer);
                    }
                    return;
                }
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds that each answer their own number, once `release` lets them; round number
    /// `panics` panics instead.
    struct Rounds {
        started: AtomicU64,
        release: tokio::sync::Semaphore,
        panics: u64,
    }

    fn rounds(panics: u64) -> (Arc<Rounds>, Arc<ReadRounds<u64>>) {
        let rounds = Arc::new(Rounds { started: AtomicU64::new(0), release: tokio::sync::Semaphore::new(0), panics });
        let inner = rounds.clone();
        let shared = ReadRounds::new(
            move || {
                let rounds = inner.clone();
                Box::pin(async move {
                    let number = rounds.started.fetch_add(1, Ordering::SeqCst) + 1;
                    rounds.release.acquire().await.expect("open").forget();
                    assert_ne!(number, rounds.panics, "round {number} panics");
                    number
                })
            },
            || 0,
        );
        (rounds, Arc::new(shared))
    }

    fn read(shared: &Arc<ReadRounds<u64>>) -> tokio::task::JoinHandle<u64> {
        let shared = shared.clone();
        tokio::spawn(async move { shared.read_point().await })
    }

    /// A reader's answer, failing instead of hanging.
    async fn answer(reader: tokio::task::JoinHandle<u64>) -> u64 {
        tokio::time::timeout(Duration::from_secs(10), reader).await.expect("answered in time").expect("join")
    }

    async fn wait_started(rounds: &Rounds, count: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while rounds.started.load(Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the round started");
    }

    /// Lets the spawned readers run until they wait.
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn reads_that_arrive_during_a_round_share_the_next_one() {
        let (rounds, shared) = rounds(0);
        let first = read(&shared);
        wait_started(&rounds, 1).await;
        let queued: Vec<_> = (0..50).map(|_| read(&shared)).collect();
        settle().await;
        rounds.release.add_permits(1);
        assert_eq!(answer(first).await, 1);
        wait_started(&rounds, 2).await;
        rounds.release.add_permits(1);
        for reader in queued {
            assert_eq!(answer(reader).await, 2, "a read waits for a round begun after it arrived");
        }
        assert_eq!(rounds.started.load(Ordering::SeqCst), 2, "fifty-one reads, two rounds");
        // Alone, after every round: a round of its own.
        let alone = read(&shared);
        wait_started(&rounds, 3).await;
        rounds.release.add_permits(1);
        assert_eq!(answer(alone).await, 3);
    }

    #[tokio::test]
    async fn a_slow_round_does_not_hold_up_the_next() {
        let (rounds, shared) = rounds(0);
        let first = read(&shared);
        wait_started(&rounds, 1).await;
        let second = read(&shared);
        // Round 1 has not ended, yet round 2 begins, after the overlap.
        wait_started(&rounds, 2).await;
        // The semaphore serves the rounds in the order they began.
        rounds.release.add_permits(1);
        assert_eq!(answer(first).await, 1);
        rounds.release.add_permits(1);
        assert_eq!(answer(second).await, 2, "the second read never takes round 1's answer");
    }

    #[tokio::test]
    async fn rounds_in_flight_are_bounded() {
        let (rounds, shared) = rounds(0);
        let first = read(&shared);
        wait_started(&rounds, 1).await;
        let second = read(&shared);
        wait_started(&rounds, 2).await;
        let third = read(&shared);
        // Two rounds run and neither ends: the third waits for a slot, however long.
        tokio::time::sleep(Duration::from_millis(limits::READ_ROUND_OVERLAP_MS * 5)).await;
        assert_eq!(rounds.started.load(Ordering::SeqCst), 2, "at most two rounds at once");
        rounds.release.add_permits(1);
        assert_eq!(answer(first).await, 1);
        wait_started(&rounds, 3).await;
        rounds.release.add_permits(2);
        assert_eq!(answer(second).await, 2);
        assert_eq!(answer(third).await, 3);
    }

    #[tokio::test]
    async fn a_reader_gone_away_does_not_cancel_the_round() {
        let (rounds, shared) = rounds(0);
        let gone = read(&shared);
        wait_started(&rounds, 1).await;
        let waiting = read(&shared);
        settle().await;
        gone.abort();
        rounds.release.add_permits(2);
        assert_eq!(answer(waiting).await, 2);
        // Round 1 took its permit: it ran to its end (a cancelled round would have left it).
        assert_eq!(rounds.release.available_permits(), 0, "round 1 ran to its end");
    }

    #[tokio::test]
    async fn a_round_that_panics_answers_lost_and_later_rounds_run() {
        let (rounds, shared) = rounds(1);
        let first = read(&shared);
        wait_started(&rounds, 1).await;
        let second = read(&shared);
        settle().await;
        rounds.release.add_permits(2);
        assert_eq!(answer(first).await, 0, "the lost answer");
        assert_eq!(answer(second).await, 2);
        // Alone after the panicked round (which stays recorded as running): a round of its own.
        let alone = read(&shared);
        wait_started(&rounds, 3).await;
        rounds.release.add_permits(1);
        assert_eq!(answer(alone).await, 3);
    }
}
