//! The in-memory store: every store trait, thread-safe, nothing durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::store::{CheckpointStore, EventStore, Inbox, LogSlice, SnapshotStore};
use crate::types::{
    AppendOptions, AppendOutcome, Checkpoint, Committed, EventFilter, ExpectedVersion, NewEvent,
    ParkedEvent, Position, RecordedEvent, Snapshot, StreamId, Version,
};

/// A store that keeps everything in memory: for unit tests, examples and
/// quick starts. Cloning it gives another handle to the same store.
///
/// ```
/// use es_core::{EventStore, ExpectedVersion, InMemoryStore, NewEvent, EventId, Metadata, AppendOptions, Version};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = InMemoryStore::new();
/// let event = NewEvent {
///     event_id: EventId::new(),
///     event_type: "Opened".into(),
///     schema_version: 1,
///     payload: serde_json::json!({}).into(),
///     metadata: Metadata::default(),
/// };
/// let stream = "account-1".into();
/// store.append(&stream, ExpectedVersion::NoStream, vec![event], &AppendOptions::default()).await?;
/// assert_eq!(store.stream_version(&stream).await?, Version(1));
/// # Ok::<(), es_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct InMemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: RwLock<State>,
    head: AtomicU64,
    appended: Notify,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    keys: HashMap<String, Committed>,
    snapshots: HashMap<StreamId, Snapshot>,
    checkpoints: HashMap<String, Checkpoint>,
    parked: HashMap<String, BTreeMap<Position, ParkedEvent>>,
    claims: HashMap<String, HashMap<StreamId, Version>>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(State::default()),
                head: AtomicU64::new(0),
                appended: Notify::new(),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written:
        // every write below completes its checks before it mutates anything.
        self.shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn version_of(&self, stream_id: &StreamId) -> Version {
        Version(self.streams.get(stream_id).map_or(0, |s| s.len() as u64))
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendOutcome> {
        if events.is_empty() {
            return Err(Error::EmptyAppend {
                stream_id: stream_id.clone(),
            });
        }
        let mut guard = self.write();
        let state = &mut *guard;
        if let Some(key) = &options.idempotency_key {
            if let Some(first) = state.keys.get(key) {
                if &first.stream_id != stream_id {
                    return Err(Error::IdempotencyKeyReused {
                        key: key.clone(),
                        used_for: first.stream_id.clone(),
                        stream_id: stream_id.clone(),
                    });
                }
                return Ok(AppendOutcome::Duplicate(first.clone()));
            }
        }
        // One lookup of the stream serves the version check and the append.
        let indexes = state.streams.get_mut(stream_id);
        let actual = Version(indexes.as_ref().map_or(0, |s| s.len() as u64));
        if !expected.matches(actual) {
            return Err(Error::Conflict {
                stream_id: stream_id.clone(),
                expected,
                actual,
            });
        }
        // Read the clock only when an event comes without `recorded_at` (the
        // repository always sets it); all such events share one reading.
        let mut now = None;
        let first_index = state.log.len();
        let count = events.len();
        for (i, new) in events.into_iter().enumerate() {
            let mut metadata = new.metadata;
            let recorded_at = *metadata
                .recorded_at
                .get_or_insert_with(|| *now.get_or_insert_with(Utc::now));
            state.log.push(RecordedEvent {
                position: Position((first_index + i + 1) as u64),
                stream_id: stream_id.clone(),
                version: Version(actual.0 + i as u64 + 1),
                event_id: new.event_id,
                event_type: new.event_type.into(),
                schema_version: new.schema_version,
                payload: new.payload,
                metadata,
                recorded_at,
            });
        }
        // Only a new stream needs an owned copy of its id.
        let appended = first_index..first_index + count;
        match indexes {
            Some(indexes) => indexes.extend(appended),
            None => {
                state.streams.insert(stream_id.clone(), appended.collect());
            }
        }
        let committed = Committed {
            stream_id: stream_id.clone(),
            first_version: actual.next(),
            last_version: Version(actual.0 + count as u64),
            first_position: Position(first_index as u64 + 1),
            last_position: Position((first_index + count) as u64),
        };
        if let Some(key) = &options.idempotency_key {
            state.keys.insert(key.clone(), committed.clone());
        }
        let head = committed.last_position;
        drop(guard);
        // Appends publish their heads outside the lock, possibly out of
        // order: `fetch_max` never lets an older head replace a newer one.
        self.shared.head.fetch_max(head.0, Ordering::AcqRel);
        self.shared.appended.notify_waiters();
        Ok(AppendOutcome::Appended(committed))
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let state = self.read();
        let Some(indexes) = state.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        let skip = from.0.saturating_sub(1) as usize;
        Ok(indexes
            .iter()
            .skip(skip)
            .take(limit)
            .map(|&i| state.log[i].clone())
            .collect())
    }

    async fn visit_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        visit: &mut (dyn for<'e> FnMut(&'e RecordedEvent) -> Result<()> + Send),
    ) -> Result<()> {
        let state = self.read();
        let Some(indexes) = state.streams.get(stream_id) else {
            return Ok(());
        };
        let skip = from.0.saturating_sub(1) as usize;
        for &i in indexes.iter().skip(skip) {
            visit(&state.log[i])?;
        }
        Ok(())
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version> {
        Ok(self.read().version_of(stream_id))
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice> {
        let state = self.read();
        let mut slice = LogSlice {
            events: Vec::new(),
            next: after,
        };
        let start = (after.0 as usize).min(state.log.len());
        for event in &state.log[start..] {
            if slice.events.len() >= limit {
                break;
            }
            slice.next = event.position;
            if filter.matches(&event.event_type) {
                slice.events.push(event.clone());
            }
        }
        Ok(slice)
    }

    async fn head(&self) -> Result<Position> {
        Ok(Position(self.shared.head.load(Ordering::Acquire)))
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.appended.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before reading the head, so an append in between wakes us.
            notified.as_mut().enable();
            if self.shared.head.load(Ordering::Acquire) > after.0 {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(self.shared.head.load(Ordering::Acquire) > after.0);
            }
        }
    }

    async fn find_idempotency_key(&self, key: &str) -> Result<Option<Committed>> {
        Ok(self.read().keys.get(key).cloned())
    }
}

#[async_trait]
impl SnapshotStore for InMemoryStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.write()
            .snapshots
            .insert(snapshot.stream_id.clone(), snapshot);
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.read().snapshots.get(stream_id).cloned())
    }
}

#[async_trait]
impl CheckpointStore for InMemoryStore {
    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>> {
        Ok(self.read().checkpoints.get(projection).copied())
    }

    async fn save_checkpoint(&self, projection: &str, checkpoint: Checkpoint) -> Result<()> {
        self.write()
            .checkpoints
            .insert(projection.to_owned(), checkpoint);
        Ok(())
    }

    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        self.write()
            .parked
            .entry(parked.projection.clone())
            .or_default()
            .insert(parked.event.position, parked);
        Ok(())
    }

    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>> {
        Ok(self
            .read()
            .parked
            .get(projection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn unpark(&self, projection: &str, position: Position) -> Result<bool> {
        Ok(self
            .write()
            .parked
            .get_mut(projection)
            .is_some_and(|m| m.remove(&position).is_some()))
    }
}

#[async_trait]
impl Inbox<()> for InMemoryStore {
    async fn claim(
        &self,
        _context: &mut (),
        consumer: &str,
        stream_id: &StreamId,
        version: Version,
    ) -> Result<bool> {
        let mut state = self.write();
        let streams = match state.claims.get_mut(consumer) {
            Some(streams) => streams,
            None => state.claims.entry(consumer.to_owned()).or_default(),
        };
        match streams.get_mut(stream_id) {
            Some(applied) if *applied >= version => Ok(false),
            Some(applied) => {
                *applied = version;
                Ok(true)
            }
            None => {
                streams.insert(stream_id.clone(), version);
                Ok(true)
            }
        }
    }

    async fn reset_claims(&self, _context: &mut (), consumer: &str) -> Result<()> {
        self.write().claims.remove(consumer);
        Ok(())
    }
}
