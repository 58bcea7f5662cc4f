//! The store contract every backend implements.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::Result;
use crate::types::{
    AppendOptions, AppendOutcome, Checkpoint, Committed, EventFilter, ExpectedVersion, NewEvent,
    ParkedEvent, Position, RecordedEvent, ReplayedEvent, Snapshot, StreamId, Version,
};

/// A slice of the global log, as returned by [`EventStore::read_all`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogSlice {
    /// The events that passed the filter, in log order.
    pub events: Vec<RecordedEvent>,
    /// Where the next read starts: the position of the last event the store
    /// examined, whether or not it passed the filter (the `after` of the read
    /// when the store examined none). Readers keep this, not the position of
    /// the last returned event, so that a filter over rare types does not
    /// scan the same events again.
    pub next: Position,
}

/// How a read of the log sent through [`EventStore::read_all_into`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadEnd {
    /// How many events the read sent in all.
    pub events: usize,
    /// Where the next read starts (the `next` of the read's last slice).
    pub next: Position,
}

/// The event log: append to streams, read streams and the global log, wait
/// for new events.
///
/// Implemented by each backend (in-memory, SQLite, PostgreSQL); called by the
/// [`Repository`](crate::Repository), the projection runner and relays.
/// Every backend passes the conformance suite of the `testkit` feature.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends events to a stream atomically: all of them or none.
    ///
    /// Fails with [`Error::Conflict`](crate::Error::Conflict) when the
    /// stream's version does not match `expected`. With an idempotency key
    /// that was used before, writes nothing and returns
    /// [`AppendOutcome::Duplicate`] with what the first append wrote, or
    /// [`Error::IdempotencyKeyReused`](crate::Error::IdempotencyKeyReused)
    /// when that was another stream. An empty `events` is refused with
    /// [`Error::EmptyAppend`](crate::Error::EmptyAppend).
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendOutcome>;

    /// Reads the events of a stream in version order, starting at version
    /// `from` (inclusive): exactly `limit` of them when the stream holds that
    /// many more, so a shorter page means the end of the stream. An unknown
    /// stream reads as empty.
    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Calls `visit` with each event of a stream from version `from`, in
    /// order, stopping at the first error. The default reads pages with
    /// [`EventStore::read_stream`]; a store that holds its events in memory
    /// overrides it to lend them instead of copying them.
    async fn visit_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        visit: &mut (dyn for<'e> FnMut(&'e RecordedEvent) -> Result<()> + Send),
    ) -> Result<()> {
        const PAGE: usize = 1024;
        let mut from = from;
        loop {
            let page = self.read_stream(stream_id, from, PAGE).await?;
            for raw in &page {
                visit(raw)?;
            }
            match page.last() {
                Some(last) if page.len() == PAGE => from = last.version.next(),
                _ => return Ok(()),
            }
        }
    }

    /// Calls `visit` with what replaying an aggregate needs of each event
    /// of a stream from version `from`, in order, stopping at the first
    /// error: the repository's load. The default goes through
    /// [`EventStore::visit_stream`]; a store that can read less than whole
    /// events overrides it.
    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        visit: &mut (dyn for<'e> FnMut(ReplayedEvent<'e>) -> Result<()> + Send),
    ) -> Result<()> {
        self.visit_stream(stream_id, from, &mut |event| {
            visit(ReplayedEvent::of(event))
        })
        .await
    }

    /// The version of a stream's last event ([`Version::INITIAL`] for a
    /// stream without events).
    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version>;

    /// Reads at most `limit` events of the global log after the event at
    /// `after`, in log order, keeping those that pass `filter`.
    ///
    /// Log order never skips an event: an event that becomes visible later
    /// always comes after every event already returned. Within one stream,
    /// log order is version order.
    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice>;

    /// Reads what [`read_all`](Self::read_all) reads and sends it to
    /// `slices` as it goes, so that a reader can work on the first events
    /// while the store still reads the rest (the [`LogReader`](crate::LogReader)
    /// does). The slices follow one another in log order; each one's `next`
    /// is where a read after it starts (the position of its last event, and
    /// for the read's last slice, which may hold no events, where the read
    /// ends). At least one slice is sent. Answers how many events were sent
    /// and where the read ends.
    ///
    /// When the read fails, the slices sent before the error hold a part of
    /// the log read in full, from `after` on: a reader may keep them and
    /// read again from the last one's `next`.
    ///
    /// The default sends the one slice that `read_all` returns; a store that
    /// reads its events in parts sends each as it comes. A receiver that
    /// was dropped gets nothing; the read still ends normally.
    async fn read_all_into(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
        slices: &UnboundedSender<LogSlice>,
    ) -> Result<ReadEnd> {
        let slice = self.read_all(after, filter, limit).await?;
        let end = ReadEnd {
            events: slice.events.len(),
            next: slice.next,
        };
        // A reader that went away wants nothing more.
        slices.send(slice).ok();
        Ok(end)
    }

    /// The position of the last event of the log ([`Position::START`] when empty).
    async fn head(&self) -> Result<Position>;

    /// Waits until the log may hold events after `after`, or until `timeout`.
    /// Returns whether new events may be there. Never a busy loop.
    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<bool>;

    /// What the append with this idempotency key wrote, if there was one.
    async fn find_idempotency_key(&self, key: &str) -> Result<Option<Committed>>;
}

/// Saved aggregate states, kept beside the events of their streams.
#[async_trait]
pub trait SnapshotStore: EventStore {
    /// Saves a snapshot, replacing any older one of the stream.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()>;

    /// The latest snapshot of a stream.
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>>;

    /// Loads a stream for a replay: hands its latest snapshot (or the error
    /// that kept it from loading) to [`Replay::start`], then the events from
    /// the version that `start` chose to [`Replay::event`], in order,
    /// stopping at the first error. The repository's load of an aggregate
    /// that takes snapshots.
    ///
    /// The default loads the snapshot, then calls
    /// [`EventStore::replay_stream`]; a store overrides it to read both in
    /// one round trip.
    async fn replay_from_snapshot(
        &self,
        stream_id: &StreamId,
        replay: &mut dyn Replay,
    ) -> Result<()> {
        let from = replay.start(self.load_snapshot(stream_id).await);
        self.replay_stream(stream_id, from, &mut |event| replay.event(event))
            .await
    }
}

/// The receiving end of [`SnapshotStore::replay_from_snapshot`].
pub trait Replay: Send {
    /// Takes the stream's latest snapshot and says from which version to
    /// replay: the one after the snapshot's to build on it, or
    /// [`Version(1)`](Version) to ignore it (a snapshot of an older state
    /// shape, or one that failed to load).
    fn start(&mut self, snapshot: Result<Option<Snapshot>>) -> Version;

    /// Takes the next event of the replay.
    fn event(&mut self, event: ReplayedEvent<'_>) -> Result<()>;
}

/// Projection checkpoints and parked events.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// A projection's checkpoint, if it has one.
    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>>;

    /// Saves a projection's checkpoint.
    async fn save_checkpoint(&self, projection: &str, checkpoint: Checkpoint) -> Result<()>;

    /// Parks an event a projection could not handle. Parking the same
    /// (projection, position) again replaces the earlier entry.
    async fn park(&self, parked: ParkedEvent) -> Result<()>;

    /// A projection's parked events, by position.
    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>>;

    /// Removes a parked event; returns whether it was there.
    async fn unpark(&self, projection: &str, position: Position) -> Result<bool>;
}

/// Opens and commits the context a projection handler works in.
///
/// The projection runner calls `begin` before a batch, hands the context to
/// the handler for every event, then calls `commit` with the new checkpoint.
/// A store whose read models live in its own database provides its
/// transaction type here, so that the read model and the checkpoint commit
/// together. Every [`CheckpointStore`] provides `()`, the context of read
/// models that live elsewhere (in memory, say); the checkpoint is then saved
/// after the batch.
#[async_trait]
pub trait ContextProvider<C: Send>: Send + Sync {
    /// Opens a context (a transaction).
    async fn begin(&self) -> Result<C>;

    /// Saves `checkpoint` (when given) for `projection` inside the context
    /// and commits it.
    async fn commit(
        &self,
        context: C,
        projection: &str,
        checkpoint: Option<Checkpoint>,
    ) -> Result<()>;

    /// Whether dropping an uncommitted context undoes the handler's writes.
    fn is_transactional(&self) -> bool;
}

#[async_trait]
impl<S: CheckpointStore + ?Sized> ContextProvider<()> for S {
    async fn begin(&self) -> Result<()> {
        Ok(())
    }

    async fn commit(
        &self,
        _context: (),
        projection: &str,
        checkpoint: Option<Checkpoint>,
    ) -> Result<()> {
        match checkpoint {
            Some(checkpoint) => self.save_checkpoint(projection, checkpoint).await,
            None => Ok(()),
        }
    }

    fn is_transactional(&self) -> bool {
        false
    }
}

/// Drops redelivered events that come from outside the store's own log (a
/// Kafka topic, say), by remembering per consumer and stream the highest
/// version applied.
///
/// A consumer calls [`claim`](Inbox::claim) inside the context its handler
/// writes in, before handling an event. The claim is committed with the
/// context: where the context is a transaction, the read model's write and
/// the claim stand or fall together, so a redelivered event (after a crash
/// or a rebalance) is recognised and its effect applied once. A stream's
/// events arrive in version order (they share a partition), so one version
/// per stream is all there is to keep.
///
/// ```
/// use es_core::{InMemoryStore, Inbox, StreamId, Version};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("order-1");
/// assert!(store.claim(&mut (), "summary", &stream, Version(1)).await?);
/// assert!(!store.claim(&mut (), "summary", &stream, Version(1)).await?, "a redelivery");
/// assert!(store.claim(&mut (), "summary", &stream, Version(2)).await?);
/// # Ok::<(), es_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Inbox<C: Send>: ContextProvider<C> {
    /// Records inside `context` that `consumer` applies `version` of
    /// `stream_id`. Returns `false`, recording nothing, when the consumer
    /// already applied that version or a later one.
    async fn claim(
        &self,
        context: &mut C,
        consumer: &str,
        stream_id: &StreamId,
        version: Version,
    ) -> Result<bool>;

    /// Forgets inside `context` everything `consumer` claimed (before a
    /// rebuild of its read model).
    async fn reset_claims(&self, context: &mut C, consumer: &str) -> Result<()>;
}
