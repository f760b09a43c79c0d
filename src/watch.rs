//! Watches and blocking reads, served by any node from its own applied state and change
//! history (`store::events`).
//!
//! A watch stream reads the history from its start revision at the client's pace and then
//! waits for the next applied batch: events arrive in revision order, each once, and the
//! revision a client may resume after is marked only once every event of it was sent. When the
//! history no longer reaches back to where the stream is (pruned, or replaced by a snapshot
//! install) the stream ends with `compacted` instead of skipping anything.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::auth::Need;
use crate::auth::Principal;
use crate::error::Error;
use crate::limits;
use crate::node::read_error;
use crate::node::Node;
use crate::store::events::EventRecord;
use crate::store::EventsPage;
use crate::store::KvReader;

/// Which keys a watch or blocking read follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Key(String),
    /// Every key starting with it (`""`: every key).
    Prefix(String),
}

impl Filter {
    fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(wanted) => key == wanted,
            Filter::Prefix(prefix) => key.starts_with(prefix.as_str()),
        }
    }

    /// The permission following it needs.
    pub fn need(&self) -> Need<'_> {
        match self {
            Filter::Key(key) => Need::Read(key),
            Filter::Prefix(prefix) => Need::ReadPrefix(prefix),
        }
    }
}

/// What a watch stream sends.
#[derive(Debug)]
pub enum WatchItem {
    /// A change; `complete` when it is the last of its revision the watch sends, so the
    /// client has everything up to `revision`.
    Event { revision: u64, complete: bool, record: EventRecord },
    /// Every event up to this revision was sent.
    Progress(u64),
    /// The stream ends here, for this reason (`compacted`, a revoked credential, ...).
    End(Error),
}

/// How often a waiting stream looks whether the node began to shut down.
const DRAIN_CHECK_MS: u64 = 500;

impl Node {
    /// The first revision a watch asked to start at `start` sends (`None`: the next one this
    /// node applies), or `410 compacted` when the history here no longer reaches back to it.
    pub fn watch_start(&self, start: Option<u64>) -> Result<u64, Error> {
        let clock = self.kv_reader().event_clock().clone();
        let start = start.unwrap_or(clock.applied_revision() + 1).max(1);
        let oldest_revision = clock.events_from();
        if start < oldest_revision {
            return Err(Error::Compacted { oldest_revision });
        }
        Ok(start)
    }

    /// Starts a watch stream from `start`: its items arrive on the receiver, which it holds
    /// a watcher slot for. It ends when the receiver is dropped, the node shuts down, or
    /// with an [`WatchItem::End`].
    pub fn watch(
        self: &Arc<Self>,
        filter: Filter,
        start: u64,
        principal: Option<Principal>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> tokio::sync::mpsc::Receiver<WatchItem> {
        let (sender, receiver) = tokio::sync::mpsc::channel(limits::WATCH_STREAM_BUFFER_EVENTS);
        let node = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = node.stream_events(&filter, start, principal.as_ref(), &sender).await {
                let _ = sender.send(WatchItem::End(error)).await;
            }
        });
        receiver
    }

    /// The stream's producer; returns when the client is gone or the node drains (`Ok`), or
    /// with the reason the stream ends.
    async fn stream_events(
        &self,
        filter: &Filter,
        start: u64,
        principal: Option<&Principal>,
        sender: &tokio::sync::mpsc::Sender<WatchItem>,
    ) -> Result<(), Error> {
        let kv = self.kv_reader();
        let mut applied_changes = kv.event_clock().subscribe();
        let mut cursor = Cursor { revision: start, index: 0 };
        // The last matching event read, held until it is known whether it ends its revision.
        let mut pending: Option<(u64, EventRecord)> = None;
        // The revision the client has whole, as last told: it never goes back.
        let mut marked = start - 1;
        // First, where the stream starts: a client that reconnects before any event resumes
        // from there, not from "now" on another node.
        send(sender, WatchItem::Progress(marked)).await?;
        let mut last_progress = Instant::now();
        loop {
            if self.is_draining() {
                return Ok(());
            }
            let applied = *applied_changes.borrow_and_update();
            let caught_up = cursor.revision > applied;
            if !caught_up {
                let (events, whole) = match cursor.read(&kv, applied).await? {
                    Page::Compacted { oldest_revision } => return Err(Error::Compacted { oldest_revision }),
                    Page::Events { events, whole } => (events, whole),
                };
                for (event_revision, record) in events {
                    if pending.as_ref().is_some_and(|(held, _)| *held != event_revision) {
                        let (held, record) = pending.take().expect("checked");
                        marked = held;
                        send(sender, WatchItem::Event { revision: held, complete: true, record }).await?;
                    }
                    if filter.matches(&record.key) {
                        if let Some((held, record)) = pending.replace((event_revision, record)) {
                            send(sender, WatchItem::Event { revision: held, complete: false, record }).await?;
                        }
                    }
                }
                if whole {
                    // Everything up to `applied` is read.
                    if let Some((held, record)) = pending.take() {
                        marked = held;
                        send(sender, WatchItem::Event { revision: held, complete: true, record }).await?;
                    }
                }
            }
            if last_progress.elapsed() >= Duration::from_millis(limits::WATCH_PROGRESS_INTERVAL_MS) {
                // Judged again, caught up or not: a watch must not outlive its user's permission.
                self.authorize(principal, filter.need())?;
                // Everything before the cursor (and before a held event) was sent. During a long
                // catch-up this keeps the client from taking the stream for dead.
                let whole_to = pending.as_ref().map_or(cursor.revision, |(held, _)| (*held).min(cursor.revision)) - 1;
                if whole_to >= marked {
                    marked = whole_to;
                    send(sender, WatchItem::Progress(marked)).await?;
                }
                last_progress = Instant::now();
            }
            if caught_up {
                let wait = Duration::from_millis(DRAIN_CHECK_MS);
                tokio::select! {
                    _ = tokio::time::timeout(wait, applied_changes.changed()) => {}
                    // The client is gone: give its slot back at once.
                    _ = sender.closed() => return Ok(()),
                }
            }
        }
    }

    /// Waits until a key `filter` follows changes after revision `after`, or `wait` passes
    /// (a blocking read, Consul's blocking query). Returns at once when the history here no
    /// longer reaches back to `after` (whether it changed cannot be told, and an early answer
    /// is always allowed), and when the node begins to shut down.
    pub async fn wait_for_change(&self, filter: &Filter, after: u64, wait: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let kv = self.kv_reader();
        let mut applied_changes = kv.event_clock().subscribe();
        let mut cursor = Cursor { revision: after.saturating_add(1), index: 0 };
        loop {
            if self.is_draining() || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            let applied = *applied_changes.borrow_and_update();
            if cursor.revision <= applied {
                let Page::Events { events, .. } = cursor.read(&kv, applied).await? else { return Ok(()) };
                if events.iter().any(|(_, record)| filter.matches(&record.key)) {
                    return Ok(());
                }
                continue;
            }
            // Looked at again every so often: a shutdown answers waiting reads at once.
            let until = deadline.min(tokio::time::Instant::now() + Duration::from_millis(DRAIN_CHECK_MS));
            if let Ok(Err(_)) = tokio::time::timeout_at(until, applied_changes.changed()).await {
                // The state machine is gone: answer with what there is.
                return Ok(());
            }
        }
    }
}

/// A place in the change history: the next event to read.
struct Cursor {
    revision: u64,
    index: u32,
}

/// What [`Cursor::read`] read.
enum Page {
    /// Events in order with their revisions; `whole` when they reach the applied revision.
    Events { events: Vec<(u64, EventRecord)>, whole: bool },
    /// The history here no longer reaches back to the cursor.
    Compacted { oldest_revision: u64 },
}

impl Cursor {
    /// Reads the next page of the history, up to `applied`, and moves past what it read (past
    /// `applied` when the page reaches it). Pages are bounded in count and bytes; a read that
    /// overlapped a snapshot install is made again shortly.
    async fn read(&mut self, kv: &KvReader, applied: u64) -> Result<Page, Error> {
        let (batch, bytes) = (limits::WATCH_READ_BATCH_EVENTS, limits::WATCH_READ_BATCH_BYTES);
        let mut attempts = 0;
        let page = loop {
            match kv.events_after(self.revision, self.index, applied, batch, bytes) {
                Ok(page) => break page,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {
                    attempts += 1;
                    if attempts >= limits::WATCH_RETRY_ATTEMPTS {
                        // A long (or failed) install: end here; the client may go elsewhere.
                        return Err(read_error(error));
                    }
                    tokio::time::sleep(Duration::from_millis(limits::WATCH_RETRY_PAUSE_MS)).await;
                }
                Err(error) => return Err(read_error(error)),
            }
        };
        let (events, whole) = match page {
            EventsPage::Compacted { oldest_revision } => return Ok(Page::Compacted { oldest_revision }),
            EventsPage::Events { events, whole } => (events, whole),
        };
        match events.last() {
            Some(&(revision, index, _)) if !whole => (self.revision, self.index) = (revision, index + 1),
            _ => (self.revision, self.index) = (applied + 1, 0),
        }
        // A long catch-up must not hold a worker: others (Raft among them) run between pages.
        tokio::task::yield_now().await;
        Ok(Page::Events { events: events.into_iter().map(|(revision, _, record)| (revision, record)).collect(), whole })
    }
}

/// Sends an item; `Err` only to stop the producer once the client is gone.
async fn send(sender: &tokio::sync::mpsc::Sender<WatchItem>, item: WatchItem) -> Result<(), Error> {
    sender.send(item).await.map_err(|_| Error::ShuttingDown)
}
