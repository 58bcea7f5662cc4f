//! The repository: load an aggregate, decide, append, retry on conflicts.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use tracing::{field, Instrument};

use crate::aggregate::{Aggregate, SnapshotPolicy};
use crate::error::{DecodeError, Error, Result};
use crate::event::{Event, EventSchema};
use crate::store::{EventStore, Replay, SnapshotStore};
use crate::types::{
    AppendOptions, AppendOutcome, Committed, ExpectedVersion, Metadata, ReplayedEvent, Snapshot,
    StreamId, Version,
};

/// The error of [`Repository::execute`]: the domain refused the command, or
/// the framework failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The aggregate's `handle` refused the command. Nothing was appended.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Loading or appending failed; a conflict that outlived every retry is
    /// [`Error::Conflict`]. Nothing was appended.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl<E> ExecuteError<E> {
    /// Whether the command failed on a concurrency conflict after every retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ExecuteError::Failed(e) if e.is_conflict())
    }
}

/// Options of one command: its metadata and an optional idempotency key.
///
/// ```
/// use es_core::{ExecuteOptions, Metadata};
///
/// let options = ExecuteOptions::from(Metadata::correlated("req-1"))
///     .idempotency_key("pay-order-7");
/// assert_eq!(options.metadata.correlation_id.as_deref(), Some("req-1"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecuteOptions {
    /// The metadata of every event the command produces.
    pub metadata: Metadata,
    /// With a key, executing again with the same key returns the first
    /// outcome and appends nothing.
    pub idempotency_key: Option<String>,
}

impl ExecuteOptions {
    /// These options with an idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

impl From<Metadata> for ExecuteOptions {
    fn from(metadata: Metadata) -> Self {
        Self {
            metadata,
            idempotency_key: None,
        }
    }
}

/// An aggregate's state as loaded from the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<A> {
    /// The stream it was built from.
    pub stream_id: StreamId,
    /// The version of the last event applied ([`Version::INITIAL`] for a new aggregate).
    pub version: Version,
    /// The state.
    pub state: A,
}

/// What a command did.
#[derive(Clone, Debug, PartialEq)]
pub struct Executed<E> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// Where the events were appended; `None` when the command produced none.
    pub committed: Option<Committed>,
    /// The events the command produced (for a repeated idempotency key: the
    /// events of the first execution).
    pub events: Vec<E>,
    /// The stream's version after the command.
    pub version: Version,
    /// Whether this is the remembered outcome of an earlier execution with the
    /// same idempotency key.
    pub duplicate: bool,
}

/// Loads aggregates and executes commands on them.
///
/// `execute` loads the state (from the latest usable snapshot, then the tail
/// of events), calls the aggregate's `handle`, and appends the events with
/// the loaded version as the expected version. On a conflict it loads again
/// and decides again, up to [`Repository::with_retries`] times (3 by default).
/// Snapshots follow the aggregate's policy; a failed snapshot is logged and
/// counted and never fails the command.
///
/// ```
/// # use es_core::{Aggregate, Event};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # pub enum CounterEvent { Added { amount: u64 } }
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("limit")] pub struct LimitReached;
/// # #[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
/// # #[aggregate(name = "counter", event = CounterEvent, command = u64, error = LimitReached)]
/// # pub struct Counter { total: u64 }
/// # impl Counter {
/// #     fn handle(&self, add: u64) -> Result<Vec<CounterEvent>, LimitReached> {
/// #         if self.total + add > 10 { return Err(LimitReached); } Ok(vec![CounterEvent::Added { amount: add }]) }
/// #     fn apply(&mut self, CounterEvent::Added { amount }: &CounterEvent) { self.total += amount }
/// # }
/// use es_core::{InMemoryStore, Metadata, Repository, ExecuteError};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let counters = Repository::<Counter, _>::new(InMemoryStore::new());
/// counters.execute("c1", 4).await?;
/// counters.execute_with("c1", 5, Metadata::correlated("req-9")).await?;
/// let refused = counters.execute("c1", 2).await;
/// assert!(matches!(refused, Err(ExecuteError::Rejected(LimitReached))));
/// assert_eq!(counters.load("c1").await?.state.total, 9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Repository<A: Aggregate, S> {
    store: S,
    retries: usize,
    cache: Option<Arc<StateCache<A>>>,
    snapshot_failures: Arc<AtomicU64>,
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            retries: self.retries,
            cache: self.cache.clone(),
            snapshot_failures: Arc::clone(&self.snapshot_failures),
        }
    }
}

impl<A: Aggregate, S> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::NAME)
            .field("retries", &self.retries)
            .field("cache", &self.cache.as_ref().map(|c| c.capacity))
            .finish_non_exhaustive()
    }
}

impl<A, S> Repository<A, S>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
{
    /// A repository over a store, with 3 retries and no state cache.
    pub fn new(store: S) -> Self {
        Self {
            store,
            retries: 3,
            cache: None,
            snapshot_failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sets how many times a command is decided again after a conflict.
    #[must_use]
    pub fn with_retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// Keeps the states of up to `capacity` recently used aggregates in
    /// memory, so that a hot aggregate is not replayed for every command. A
    /// cached state is trusted for deciding; a conflict drops it and the
    /// retry loads from the store. Use it when this process is the main
    /// writer of its aggregates.
    #[must_use]
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| Arc::new(StateCache::new(capacity)));
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// How many snapshots failed to save since this repository was made.
    pub fn snapshot_failures(&self) -> u64 {
        self.snapshot_failures.load(Ordering::Relaxed)
    }

    /// The stream id of the aggregate with this id.
    pub fn stream_id(id: impl fmt::Display) -> StreamId {
        StreamId::for_aggregate(A::NAME, id)
    }

    /// Loads an aggregate's current state.
    pub async fn load(&self, id: impl fmt::Display) -> Result<Loaded<A>> {
        let stream_id = Self::stream_id(id);
        let span = tracing::debug_span!(
            "load",
            aggregate = A::NAME,
            stream_id = %stream_id,
            version = field::Empty,
            events = field::Empty,
        );
        async {
            let start = match self.cache.as_ref().and_then(|c| c.get(&stream_id)) {
                Some((version, state)) => Loaded {
                    stream_id: stream_id.clone(),
                    version,
                    state,
                },
                None => return self.load_fresh(&stream_id).await,
            };
            self.replay_tail(start).await
        }
        .instrument(span)
        .await
    }

    /// A load without a cached state: from the latest usable snapshot where
    /// the aggregate takes snapshots (in one round trip where the store can).
    async fn load_fresh(&self, stream_id: &StreamId) -> Result<Loaded<A>> {
        let initial = Loaded {
            stream_id: stream_id.clone(),
            version: Version::INITIAL,
            state: A::default(),
        };
        if A::snapshot_policy() == SnapshotPolicy::Never {
            return self.replay_tail(initial).await;
        }
        let mut replayer = Replayer::new(initial);
        self.store
            .replay_from_snapshot(stream_id, &mut replayer)
            .await?;
        Ok(replayer.done())
    }

    /// Applies the events after `loaded.version`.
    async fn replay_tail(&self, loaded: Loaded<A>) -> Result<Loaded<A>> {
        let stream_id = loaded.stream_id.clone();
        let from = loaded.version.next();
        let mut replayer = Replayer::new(loaded);
        self.store
            .replay_stream(&stream_id, from, &mut |raw| replayer.event(raw))
            .await?;
        Ok(replayer.done())
    }

    /// Executes a command on the aggregate with this id.
    pub async fn execute(
        &self,
        id: impl fmt::Display,
        command: A::Command,
    ) -> std::result::Result<Executed<A::Event>, ExecuteError<A::Error>> {
        self.execute_with(id, command, ExecuteOptions::default())
            .await
    }

    /// Executes a command with metadata (correlation and causation ids) or
    /// other [`ExecuteOptions`] such as an idempotency key.
    pub async fn execute_with(
        &self,
        id: impl fmt::Display,
        command: A::Command,
        options: impl Into<ExecuteOptions>,
    ) -> std::result::Result<Executed<A::Event>, ExecuteError<A::Error>> {
        let options = options.into();
        let stream_id = Self::stream_id(id);
        let span = tracing::debug_span!(
            "execute",
            aggregate = A::NAME,
            stream_id = %stream_id,
            expected = field::Empty,
            version = field::Empty,
            events = field::Empty,
            retries = field::Empty,
        );
        self.execute_in_span(stream_id, command, options)
            .instrument(span)
            .await
    }

    async fn execute_in_span(
        &self,
        stream_id: StreamId,
        command: A::Command,
        options: ExecuteOptions,
    ) -> std::result::Result<Executed<A::Event>, ExecuteError<A::Error>> {
        let span = tracing::Span::current();
        if let Some(key) = &options.idempotency_key {
            if let Some(first) = self.store.find_idempotency_key(key).await? {
                if first.stream_id != stream_id {
                    return Err(Error::IdempotencyKeyReused {
                        key: key.clone(),
                        used_for: first.stream_id,
                        stream_id,
                    }
                    .into());
                }
                return Ok(self.remembered(first).await?);
            }
        }
        let append_options = AppendOptions {
            idempotency_key: options.idempotency_key.clone(),
        };
        let mut attempt = 0;
        loop {
            let (before, mut state) = match self.cache.as_ref().and_then(|c| c.get(&stream_id)) {
                Some(cached) => cached,
                None => {
                    let loaded = self.load_fresh(&stream_id).await?;
                    (loaded.version, loaded.state)
                }
            };
            let events = state
                .decide(command.clone())
                .map_err(ExecuteError::Rejected)?;
            span.record("expected", before.0);
            if events.is_empty() {
                return Ok(Executed {
                    stream_id,
                    committed: None,
                    events,
                    version: before,
                    duplicate: false,
                });
            }
            let mut metadata = options.metadata.clone();
            metadata.recorded_at.get_or_insert_with(Utc::now);
            let encoded = events
                .iter()
                .map(|e| e.encode(metadata.clone()))
                .collect::<Result<Vec<_>>>()?;
            let append_span = tracing::debug_span!(
                "append",
                stream_id = %stream_id,
                expected = before.0,
                events = encoded.len(),
            );
            let outcome = self
                .store
                .append(
                    &stream_id,
                    ExpectedVersion::Exact(before),
                    encoded,
                    &append_options,
                )
                .instrument(append_span)
                .await;
            match outcome {
                Ok(AppendOutcome::Appended(committed)) => {
                    for event in &events {
                        state.evolve(event);
                    }
                    let after = committed.last_version;
                    span.record("version", after.0);
                    span.record("events", events.len());
                    span.record("retries", attempt);
                    if A::snapshot_policy().is_due(before.0, after.0) {
                        self.snapshot(&stream_id, after, &state).await;
                    }
                    if let Some(cache) = &self.cache {
                        cache.put(&stream_id, after, state);
                    }
                    return Ok(Executed {
                        stream_id,
                        committed: Some(committed),
                        events,
                        version: after,
                        duplicate: false,
                    });
                }
                Ok(AppendOutcome::Duplicate(first)) => {
                    return Ok(self.remembered(first).await?);
                }
                Err(error) if error.is_conflict() => {
                    if let Some(cache) = &self.cache {
                        cache.remove(&stream_id);
                    }
                    if attempt >= self.retries {
                        span.record("retries", attempt);
                        return Err(error.into());
                    }
                    attempt += 1;
                    tracing::debug!(attempt, "conflict; deciding again");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The outcome of an earlier execution, read back from the store.
    async fn remembered(&self, first: Committed) -> Result<Executed<A::Event>> {
        let schema = A::Event::schema();
        let count = usize::try_from(first.len()).unwrap_or(usize::MAX);
        let raw = self
            .store
            .read_stream(&first.stream_id, first.first_version, count)
            .await?;
        let events = raw
            .iter()
            .map(|r| schema.decode_event::<A::Event>(r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        tracing::debug!(stream_id = %first.stream_id, "idempotency key seen before; nothing appended");
        Ok(Executed {
            stream_id: first.stream_id.clone(),
            version: first.last_version,
            committed: Some(first),
            events,
            duplicate: true,
        })
    }

    async fn snapshot(&self, stream_id: &StreamId, version: Version, state: &A) {
        let result = match serde_json::to_value(state) {
            Ok(value) => {
                self.store
                    .save_snapshot(Snapshot {
                        stream_id: stream_id.clone(),
                        version,
                        state_version: A::STATE_VERSION,
                        state: value,
                        taken_at: Utc::now(),
                    })
                    .await
            }
            Err(source) => Err(Error::Encode {
                what: format!("state of {}", A::NAME),
                source,
            }),
        };
        if let Err(error) = result {
            self.snapshot_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stream_id = %stream_id, version = %version, %error, "snapshot not saved");
        }
    }
}

/// A bounded map of recently used aggregate states, least recently used out first.
///
/// A hit only stamps its entry with the time of use; the queue of uses is
/// brought up to date lazily: when an eviction finds an entry that was used
/// after it was queued, it queues it again at its last use. So a hit costs
/// one map lookup and the state's clone, and evictions stay exact.
struct StateCache<A> {
    capacity: usize,
    inner: Mutex<CacheInner<A>>,
}

struct CacheInner<A> {
    tick: u64,
    entries: HashMap<StreamId, CacheEntry<A>>,
    /// One item per entry, at the tick it was queued with (at most its last use).
    by_use: BTreeMap<u64, StreamId>,
}

struct CacheEntry<A> {
    version: Version,
    state: A,
    /// The tick of its last use.
    used: u64,
    /// Its key in `by_use`.
    queued: u64,
}

impl<A: Clone> StateCache<A> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(CacheInner {
                tick: 0,
                entries: HashMap::new(),
                by_use: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner<A>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached version and state of a stream.
    fn get(&self, stream_id: &StreamId) -> Option<(Version, A)> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(stream_id)?;
        entry.used = tick;
        Some((entry.version, entry.state.clone()))
    }

    fn put(&self, stream_id: &StreamId, version: Version, state: A) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(entry) = inner.entries.get_mut(stream_id) {
            // A slower command may finish after a later one: keep the newer state.
            if entry.version > version {
                return;
            }
            inner.tick += 1;
            entry.version = version;
            entry.state = state;
            entry.used = inner.tick;
            return;
        }
        inner.tick += 1;
        let tick = inner.tick;
        let entry = CacheEntry {
            version,
            state,
            used: tick,
            queued: tick,
        };
        inner.entries.insert(stream_id.clone(), entry);
        inner.by_use.insert(tick, stream_id.clone());
        while inner.entries.len() > self.capacity {
            let Some((queued, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            match inner.entries.get_mut(&oldest) {
                Some(entry) if entry.used != queued => {
                    entry.queued = entry.used;
                    inner.by_use.insert(entry.used, oldest);
                }
                _ => {
                    inner.entries.remove(&oldest);
                }
            }
        }
    }

    fn remove(&self, stream_id: &StreamId) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.remove(stream_id) {
            inner.by_use.remove(&entry.queued);
        }
    }
}

/// Builds an aggregate's state during a load: from a snapshot, if usable,
/// then event by event.
struct Replayer<A: Aggregate> {
    loaded: Loaded<A>,
    applied: usize,
    schema: &'static EventSchema,
}

impl<A: Aggregate> Replayer<A> {
    fn new(loaded: Loaded<A>) -> Self {
        Self {
            loaded,
            applied: 0,
            schema: A::Event::schema(),
        }
    }

    /// The loaded state; records what the load did on the current span.
    fn done(self) -> Loaded<A> {
        let span = tracing::Span::current();
        span.record("version", self.loaded.version.0);
        span.record("events", self.applied);
        self.loaded
    }
}

impl<A: Aggregate> Replay for Replayer<A> {
    /// Builds on the snapshot when it holds this code's state shape and
    /// deserializes; otherwise the load replays every event.
    fn start(&mut self, snapshot: Result<Option<Snapshot>>) -> Version {
        let stream_id = &self.loaded.stream_id;
        let snapshot = match snapshot {
            Ok(Some(s)) => s,
            Ok(None) => return Version(1),
            Err(error) => {
                tracing::warn!(stream_id = %stream_id, %error, "snapshot unreadable; replaying all events");
                return Version(1);
            }
        };
        if snapshot.state_version != A::STATE_VERSION {
            tracing::debug!(
                stream_id = %stream_id,
                stored = snapshot.state_version,
                current = A::STATE_VERSION,
                "snapshot of another state version ignored"
            );
            return Version(1);
        }
        match A::deserialize(&snapshot.state) {
            Ok(state) => {
                self.loaded.version = snapshot.version;
                self.loaded.state = state;
                snapshot.version.next()
            }
            Err(error) => {
                tracing::warn!(stream_id = %stream_id, version = %snapshot.version, %error,
                    "snapshot does not deserialize; replaying all events");
                Version(1)
            }
        }
    }

    fn event(&mut self, raw: ReplayedEvent<'_>) -> Result<()> {
        let Loaded {
            stream_id,
            version,
            state,
        } = &mut self.loaded;
        let event = self
            .schema
            .decode_json::<A::Event>(raw.event_type, raw.schema_version, raw.payload)
            .map_err(|kind| DecodeError {
                stream_id: stream_id.clone(),
                version: raw.version,
                position: raw.position,
                event_type: raw.event_type.to_owned(),
                schema_version: raw.schema_version,
                kind,
            })?;
        state.evolve(&event);
        *version = raw.version;
        self.applied += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &StateCache<u32>, id: &str, v: u64) {
        cache.put(&id.into(), Version(v), 0);
    }

    #[test]
    fn cache_is_bounded_and_evicts_least_recently_used() {
        let cache = StateCache::new(2);
        put(&cache, "a", 1);
        put(&cache, "b", 1);
        assert!(cache.get(&"a".into()).is_some());
        put(&cache, "c", 1);
        assert!(
            cache.get(&"b".into()).is_none(),
            "b was least recently used"
        );
        assert!(cache.get(&"a".into()).is_some());
        assert!(cache.get(&"c".into()).is_some());
        put(&cache, "a", 2);
        assert_eq!(cache.get(&"a".into()).unwrap().0, Version(2));
        cache.remove(&"a".into());
        assert!(cache.get(&"a".into()).is_none());
        let inner = cache.lock();
        assert_eq!(inner.entries.len(), inner.by_use.len());
    }

    #[test]
    fn cache_evicts_like_a_plain_lru() {
        let cache = StateCache::new(3);
        // Least recently used first.
        let mut model: Vec<String> = Vec::new();
        let mut seed = 7u64;
        for step in 0..5_000u64 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let id = format!("s{}", (seed >> 33) % 6);
            let hit = if (seed >> 20) % 3 == 0 {
                put(&cache, &id, step);
                true
            } else {
                let hit = cache.get(&id.as_str().into()).is_some();
                assert_eq!(hit, model.contains(&id), "step {step}: {id}");
                hit
            };
            if hit {
                model.retain(|m| *m != id);
                model.push(id);
                if model.len() > 3 {
                    model.remove(0);
                }
            }
        }
        let inner = cache.lock();
        assert_eq!(inner.entries.len(), inner.by_use.len());
    }

    #[test]
    fn cache_keeps_the_newer_state() {
        let cache = StateCache::new(2);
        put(&cache, "a", 5);
        cache.put(&"a".into(), Version(3), 3);
        assert_eq!(cache.get(&"a".into()), Some((Version(5), 0)));
    }
}
