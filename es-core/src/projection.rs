//! Projections and the runner that feeds them from the global log.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::{BoxError, Error, Result};
use crate::event::Event;
use crate::reader::LogReader;
use crate::store::{CheckpointStore, ContextProvider, EventStore, LogSlice};
use crate::types::{Checkpoint, Envelope, EventFilter, ParkedEvent, Position, RecordedEvent};

/// A read model fed by events of the global log.
///
/// A projection names the [`Context`](Projection::Context) its handler works
/// in: `()` for a read model in memory or elsewhere, or a store's transaction
/// type for a read model in the store's own database. A runner can feed a
/// projection when its store provides that context
/// ([`ContextProvider`]); with a transaction, the read model's writes and the
/// projection's checkpoint commit together.
///
/// Derive it with `#[derive(Projection)]` and implement [`Handles<E>`] for
/// each event family it reads plus [`ResetProjection`] (see [`Handles`] for
/// a complete example):
///
/// | key of `#[projection(…)]` | meaning |
/// | --- | --- |
/// | `name = "order_summary"` | the checkpoint's key (required) |
/// | `version = N` | the projection's version; changing it rebuilds (default 1) |
/// | `events(OrderEvent, PaymentEvent)` | the families it handles; it reads only their stored types (required) |
/// | `context = SqliteTx` | the handler's context (default `()`) |
/// | `crate = "path"` | where `es_core` is, for a renamed dependency |
///
/// `handle` receives stored events of the types in
/// [`event_types`](Projection::event_types) and decodes them with the event
/// family's [`Event::decode`](crate::Event::decode), so upcasters and aliases
/// apply. An error from `handle` stops the projection at that event, or parks
/// the event, per the runner's [`FailurePolicy`].
///
/// ```
/// use std::sync::Mutex;
/// use es_core::{BoxError, Projection, RecordedEvent};
///
/// #[derive(Default)]
/// struct EventCount(Mutex<u64>);
///
/// #[async_trait::async_trait]
/// impl Projection for EventCount {
///     type Context = ();
///     const NAME: &'static str = "event_count";
///     fn event_types() -> Option<Vec<String>> { None }
///     async fn handle(&self, _: &mut (), _: &RecordedEvent) -> Result<(), BoxError> {
///         *self.0.lock().unwrap() += 1;
///         Ok(())
///     }
///     async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
///         *self.0.lock().unwrap() = 0;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// What the handler works in: `()`, or a store's transaction.
    type Context: Send;

    /// The projection's name, the key of its checkpoint.
    const NAME: &'static str;

    /// The projection's version. Changing it rebuilds the read model from
    /// the start of the log.
    const VERSION: u32 = 1;

    /// The stored event type names to read (with aliases), or `None` for
    /// every event. Use [`Event::stored_types`](crate::Event::stored_types).
    fn event_types() -> Option<Vec<String>>;

    /// Handles one event.
    async fn handle(
        &self,
        context: &mut Self::Context,
        event: &RecordedEvent,
    ) -> Result<(), BoxError>;

    /// Handles a batch of events, in log order, in one context: what the
    /// runner calls for each batch it reads. The default handles them one by
    /// one with [`Projection::handle`]; override it to write a whole batch at
    /// once (one multi-row insert instead of one statement per event).
    ///
    /// On failure, [`BatchError::handled`] says how many leading events took
    /// effect in `context`. Where the context is a transaction, the runner
    /// discards it and handles the batch again one event at a time, so the
    /// failure policy applies to exactly the event that fails.
    async fn handle_batch(
        &self,
        context: &mut Self::Context,
        events: &[RecordedEvent],
    ) -> Result<(), BatchError> {
        for (handled, event) in events.iter().enumerate() {
            self.handle(context, event)
                .await
                .map_err(|source| BatchError { handled, source })?;
        }
        Ok(())
    }

    /// Clears the read model before a rebuild.
    async fn reset(&self, context: &mut Self::Context) -> Result<(), BoxError>;
}

/// A batch of events a projection could not handle as a whole.
#[derive(Debug)]
pub struct BatchError {
    /// How many leading events of the batch took effect; the event at this
    /// index failed.
    pub handled: usize,
    /// Why it failed.
    pub source: BoxError,
}

impl BatchError {
    /// A failure at the event at index `handled`.
    pub fn at(handled: usize, source: impl Into<BoxError>) -> Self {
        Self {
            handled,
            source: source.into(),
        }
    }
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} of the batch failed: {}",
            self.handled, self.source
        )
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Clears `projection`'s read model inside `context` before a rebuild; a
/// failure names the projection. Runners of projections (this crate's, the
/// Kafka-fed one) call it in the transaction that also resets their position.
pub async fn reset_projection<P: Projection>(
    projection: &P,
    context: &mut P::Context,
) -> Result<()> {
    projection
        .reset(context)
        .await
        .map_err(|source| Error::store(format!("projection `{}` failed to reset", P::NAME), source))
}

/// A projection's handler of one event family, called by the dispatch that
/// `#[derive(Projection)]` writes for each family in its `events(…)`.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use es_core::{BoxError, Envelope, Handles, Projection, ResetProjection};
/// # use es_core::Event;
/// # #[derive(Event, serde::Serialize, serde::Deserialize, Debug)]
/// # enum OrderEvent { Placed { total: u64 } }
///
/// #[derive(Projection, Default)]
/// #[projection(name = "revenue", events(OrderEvent))]
/// struct Revenue(AtomicU64);
///
/// #[async_trait::async_trait]
/// impl Handles<OrderEvent> for Revenue {
///     async fn handle_event(&self, _: &mut (), event: Envelope<OrderEvent>) -> Result<(), BoxError> {
///         let OrderEvent::Placed { total } = event.event;
///         self.0.fetch_add(total, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// #[async_trait::async_trait]
/// impl ResetProjection for Revenue {
///     async fn reset_read_model(&self, _: &mut ()) -> Result<(), BoxError> {
///         self.0.store(0, Ordering::Relaxed);
///         Ok(())
///     }
/// }
/// assert_eq!(Revenue::event_types(), Some(vec!["Placed".to_string()]));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle `{E}` events",
    label = "listed in `events(…)`, so `{Self}` must implement `Handles<{E}>`",
    note = "add: `#[async_trait] impl Handles<{E}> for {Self} {{ async fn handle_event(&self, context: &mut Self::Context, event: Envelope<{E}>) -> Result<(), BoxError> {{ … }} }}`"
)]
#[async_trait]
pub trait Handles<E: Event>: Projection {
    /// Handles one decoded event of the family.
    async fn handle_event(
        &self,
        context: &mut Self::Context,
        event: Envelope<E>,
    ) -> Result<(), BoxError>;

    /// Handles consecutive decoded events of the family, in log order: the
    /// derived [`Projection::handle_batch`] hands each run of one family's
    /// events in a batch to it. The default calls
    /// [`handle_event`](Handles::handle_event) for each; override it to write
    /// them at once. On failure, [`BatchError::handled`] counts the events
    /// of `events` that took effect.
    async fn handle_events(
        &self,
        context: &mut Self::Context,
        events: Vec<Envelope<E>>,
    ) -> Result<(), BatchError> {
        for (handled, event) in events.into_iter().enumerate() {
            self.handle_event(context, event)
                .await
                .map_err(|source| BatchError { handled, source })?;
        }
        Ok(())
    }
}

/// How a derived projection clears its read model before a rebuild.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say how to clear its read model",
    label = "derive(Projection) needs `{Self}: ResetProjection` for rebuilds",
    note = "add: `#[async_trait] impl ResetProjection for {Self} {{ async fn reset_read_model(&self, context: &mut Self::Context) -> Result<(), BoxError> {{ … }} }}`"
)]
#[async_trait]
pub trait ResetProjection: Projection {
    /// Clears the read model (in `context`, where it is a transaction).
    async fn reset_read_model(&self, context: &mut Self::Context) -> Result<(), BoxError>;
}

/// What the runner does when a handler fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Stop the projection with [`Error::Projection`], naming the failing
    /// event. Nothing after it is handled until the projection is started again.
    #[default]
    Stop,
    /// Park the event (kept, listable, retryable) and go on.
    Park,
}

/// Where a projection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: &'static str,
    /// The version of the code.
    pub version: u32,
    /// The stored checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// The log's last position.
    pub head: Position,
    /// How many events are parked.
    pub parked: usize,
}

/// The result of [`ProjectionRunner::retry_parked`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Parked events handled successfully and removed.
    pub recovered: usize,
    /// Parked events that failed again and stay parked.
    pub still_failing: usize,
}

/// Feeds a projection from the global log: catch up from the checkpoint,
/// then follow new events, in batches, checkpointing after each batch.
///
/// ```
/// # use std::sync::Mutex;
/// # use es_core::{BoxError, Projection, RecordedEvent};
/// # #[derive(Default)] struct EventCount(Mutex<u64>);
/// # #[async_trait::async_trait]
/// # impl Projection for EventCount {
/// #     type Context = ();
/// #     const NAME: &'static str = "event_count";
/// #     fn event_types() -> Option<Vec<String>> { None }
/// #     async fn handle(&self, _: &mut (), _: &RecordedEvent) -> Result<(), BoxError> { *self.0.lock().unwrap() += 1; Ok(()) }
/// #     async fn reset(&self, _: &mut ()) -> Result<(), BoxError> { *self.0.lock().unwrap() = 0; Ok(()) }
/// # }
/// use es_core::{InMemoryStore, ProjectionRunner};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = InMemoryStore::new();
/// let runner = ProjectionRunner::new(store.clone(), EventCount::default());
/// let running = runner.spawn();
/// // ... commands append events; the projection follows them ...
/// running.stop().await?;
/// # Ok::<(), es_core::Error>(())
/// # }).unwrap();
/// ```
pub struct ProjectionRunner<P, S> {
    inner: Arc<Inner<P, S>>,
    batch_size: usize,
    policy: FailurePolicy,
    idle_wait: Duration,
}

/// What clones of a runner share.
struct Inner<P, S> {
    store: Arc<S>,
    projection: P,
    filter: EventFilter,
}

impl<P, S> Clone for ProjectionRunner<P, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            batch_size: self.batch_size,
            policy: self.policy,
            idle_wait: self.idle_wait,
        }
    }
}

impl<P, S> std::fmt::Debug for ProjectionRunner<P, S>
where
    P: Projection,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("projection", &P::NAME)
            .field("batch_size", &self.batch_size)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Whether a step found work.
enum Step {
    Progress(Position),
    Idle(Position),
}

impl<P, S> ProjectionRunner<P, S>
where
    P: Projection,
    S: EventStore + CheckpointStore + ContextProvider<P::Context> + 'static,
{
    /// A runner with batches of 500 events and [`FailurePolicy::Stop`].
    pub fn new(store: S, projection: P) -> Self {
        let filter = EventFilter {
            event_types: P::event_types(),
        };
        Self {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                projection,
                filter,
            }),
            batch_size: 500,
            policy: FailurePolicy::Stop,
            idle_wait: Duration::from_secs(5),
        }
    }

    /// Sets the most events handled in one batch (one transaction).
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets what happens when the handler fails.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how long a follower waits for new events before it looks again
    /// (a safety net: stores wake followers when events arrive).
    #[must_use]
    pub fn idle_wait(mut self, idle_wait: Duration) -> Self {
        self.idle_wait = idle_wait;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.inner.projection
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// A reader of the log for this projection, after `position`.
    fn reader(&self, position: Position) -> LogReader<S> {
        LogReader::new(
            Arc::clone(&self.inner.store),
            position,
            self.inner.filter.clone(),
            self.batch_size,
        )
    }

    /// The projection's checkpoint, its head and parked count.
    pub async fn status(&self) -> Result<ProjectionStatus> {
        let store = &self.inner.store;
        Ok(ProjectionStatus {
            name: P::NAME,
            version: P::VERSION,
            checkpoint: store.load_checkpoint(P::NAME).await?,
            head: store.head().await?,
            parked: store.parked(P::NAME).await?.len(),
        })
    }

    /// Where to start: the stored checkpoint, after a rebuild if the stored
    /// version differs from the code's.
    async fn start(&self) -> Result<Position> {
        match self.inner.store.load_checkpoint(P::NAME).await? {
            Some(c) if c.version == P::VERSION => Ok(c.position),
            Some(c) => {
                tracing::info!(
                    projection = P::NAME,
                    stored = c.version,
                    current = P::VERSION,
                    "projection version changed; rebuilding"
                );
                self.rebuild().await?;
                Ok(Position::START)
            }
            None => Ok(Position::START),
        }
    }

    /// Clears the read model and the checkpoint (in one transaction where the
    /// store provides one) and drops the parked events; the next run replays
    /// the log from the start. Stop a running projection first.
    pub async fn rebuild(&self) -> Result<()> {
        let store = &self.inner.store;
        let mut context = store.begin().await?;
        reset_projection(&self.inner.projection, &mut context).await?;
        store
            .commit(
                context,
                P::NAME,
                Some(Checkpoint {
                    position: Position::START,
                    version: P::VERSION,
                }),
            )
            .await?;
        for parked in store.parked(P::NAME).await? {
            store.unpark(P::NAME, parked.event.position).await?;
        }
        tracing::info!(projection = P::NAME, "projection reset for rebuild");
        Ok(())
    }

    /// Handles every event up to the log's current end, then returns the
    /// checkpoint.
    pub async fn catch_up(&self) -> Result<Position> {
        let mut reader = self.reader(self.start().await?);
        loop {
            if let Step::Idle(p) = self.step(&mut reader).await? {
                return Ok(p);
            }
        }
    }

    /// Catches up, then follows new events until `shutdown` completes. A
    /// batch in progress is finished before returning.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut reader = self.reader(self.start().await?);
        loop {
            let stop_now = tokio::select! {
                biased;
                () = &mut shutdown => true,
                () = std::future::ready(()) => false,
            };
            if stop_now {
                break;
            }
            if let Step::Idle(position) = self.step(&mut reader).await? {
                tokio::select! {
                    () = &mut shutdown => break,
                    waited = self.inner.store.wait_for_events(position, self.idle_wait) => {
                        waited?;
                    }
                }
            }
        }
        let position = reader.position();
        tracing::info!(projection = P::NAME, position = %position, "projection stopped");
        Ok(())
    }

    /// Runs the projection on a tokio task until [`RunningProjection::stop`].
    pub fn spawn(&self) -> RunningProjection {
        let runner = self.clone();
        RunningProjection::spawn_with(|shutdown| async move { runner.run_until(shutdown).await })
    }

    /// Reads and handles the reader's next batch; the reader then stands
    /// where the step got to.
    async fn step(&self, reader: &mut LogReader<S>) -> Result<Step> {
        let position = reader.position();
        let slice = reader.next_page().await?;
        let step = self.handle_slice(position, slice).await?;
        let (Step::Progress(p) | Step::Idle(p)) = step;
        reader.seek(p);
        Ok(step)
    }

    /// Handles a slice of the log read after `position`.
    async fn handle_slice(&self, position: Position, slice: LogSlice) -> Result<Step> {
        if slice.events.is_empty() {
            if slice.next != position {
                self.commit_empty(slice.next).await?;
                return Ok(Step::Progress(slice.next));
            }
            return Ok(Step::Idle(position));
        }
        let span = tracing::debug_span!(
            "projection_batch",
            projection = P::NAME,
            from = position.0,
            to = slice.next.0,
            events = slice.events.len(),
        );
        self.handle_batch(&slice.events, slice.next)
            .instrument(span)
            .await
    }

    async fn commit_empty(&self, position: Position) -> Result<()> {
        let store = &self.inner.store;
        let context = store.begin().await?;
        store
            .commit(context, P::NAME, Some(self.checkpoint(position)))
            .await
    }

    fn checkpoint(&self, position: Position) -> Checkpoint {
        Checkpoint {
            position,
            version: P::VERSION,
        }
    }

    async fn handle_batch(&self, events: &[RecordedEvent], next: Position) -> Result<Step> {
        let inner = &*self.inner;
        let store = &inner.store;
        let mut context = store.begin().await?;
        let failure = match inner.projection.handle_batch(&mut context, events).await {
            Ok(()) => {
                store
                    .commit(context, P::NAME, Some(self.checkpoint(next)))
                    .await?;
                return Ok(Step::Progress(next));
            }
            Err(failure) => failure,
        };
        if !store.is_transactional() {
            // What the batch did stays: go on from the event that failed.
            let i = failure.handled.min(events.len().saturating_sub(1));
            return self.failed(context, events, i, failure.source).await;
        }
        // The batch's writes go with its transaction: find the failing event
        // one at a time.
        drop(context);
        let mut context = store.begin().await?;
        for (i, event) in events.iter().enumerate() {
            if let Err(source) = inner.projection.handle(&mut context, event).await {
                return self.failed(context, events, i, source).await;
            }
        }
        store
            .commit(context, P::NAME, Some(self.checkpoint(next)))
            .await?;
        Ok(Step::Progress(next))
    }

    /// Applies the failure policy to `events[i]`, keeping the effect of the
    /// events before it.
    async fn failed(
        &self,
        context: P::Context,
        events: &[RecordedEvent],
        i: usize,
        source: BoxError,
    ) -> Result<Step> {
        let inner = &*self.inner;
        let store = &inner.store;
        let event = &events[i];
        let before = i.checked_sub(1).map(|b| events[b].position);
        // Undo the batch where the store can, then keep what is safe to keep.
        let context = if store.is_transactional() {
            drop(context);
            let mut redo = store.begin().await?;
            for earlier in &events[..i] {
                inner
                    .projection
                    .handle(&mut redo, earlier)
                    .await
                    .map_err(|source| projection_error(P::NAME, earlier, source))?;
            }
            redo
        } else {
            context
        };
        match self.policy {
            FailurePolicy::Stop => {
                if let Some(before) = before {
                    store
                        .commit(context, P::NAME, Some(self.checkpoint(before)))
                        .await?;
                }
                let error = projection_error(P::NAME, event, source);
                tracing::error!(%error, "projection stopped");
                Err(error)
            }
            FailurePolicy::Park => {
                tracing::warn!(
                    projection = P::NAME,
                    position = %event.position,
                    event_type = %event.event_type,
                    error = %source,
                    "event parked"
                );
                store
                    .park(ParkedEvent {
                        projection: P::NAME.to_owned(),
                        event: event.clone(),
                        error: source.to_string(),
                        parked_at: Utc::now(),
                    })
                    .await?;
                store
                    .commit(context, P::NAME, Some(self.checkpoint(event.position)))
                    .await?;
                Ok(Step::Progress(event.position))
            }
        }
    }

    /// Handles the parked events again, in position order: each that
    /// succeeds is committed and removed, each that fails stays parked with
    /// its new error.
    pub async fn retry_parked(&self) -> Result<RetryReport> {
        let inner = &*self.inner;
        let store = &inner.store;
        let mut report = RetryReport::default();
        for parked in store.parked(P::NAME).await? {
            let mut context = store.begin().await?;
            match inner.projection.handle(&mut context, &parked.event).await {
                Ok(()) => {
                    store.commit(context, P::NAME, None).await?;
                    store.unpark(P::NAME, parked.event.position).await?;
                    report.recovered += 1;
                }
                Err(error) => {
                    drop(context);
                    store
                        .park(ParkedEvent {
                            error: error.to_string(),
                            parked_at: Utc::now(),
                            ..parked
                        })
                        .await?;
                    report.still_failing += 1;
                }
            }
        }
        Ok(report)
    }
}

fn projection_error(projection: &str, event: &RecordedEvent, source: BoxError) -> Error {
    Error::Projection {
        projection: projection.to_owned(),
        position: event.position,
        stream_id: event.stream_id.clone(),
        version: event.version,
        event_type: event.event_type.to_string(),
        source,
    }
}

/// A projection (or another follower of a log, such as a relay) running on
/// a tokio task.
#[derive(Debug)]
pub struct RunningProjection {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningProjection {
    /// Spawns `run` on a tokio task, handing it a shutdown future that
    /// completes when [`stop`](RunningProjection::stop) is called or the
    /// handle is dropped: how runners implement their `spawn`.
    ///
    /// ```
    /// use es_core::RunningProjection;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let running = RunningProjection::spawn_with(|shutdown| async move {
    ///     shutdown.await; // work until asked to stop
    ///     Ok(())
    /// });
    /// running.stop().await?;
    /// # Ok::<(), es_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn spawn_with<F, Fut>(run: F) -> Self
    where
        F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (stop, mut stopped) = watch::channel(false);
        let shutdown = Box::pin(async move {
            // The sender is kept by the handle; when it is dropped, stop too.
            let _ = stopped.wait_for(|s| *s).await;
        });
        let task = tokio::spawn(run(shutdown));
        RunningProjection { stop, task }
    }

    /// Ends the task at once, as a crash would: the batch in progress is
    /// neither finished nor committed.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Asks the projection to stop after its current batch and waits for it.
    /// Returns the error that stopped it earlier, if one did.
    pub async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        self.task
            .await
            .map_err(|e| Error::store("projection task failed", e))?
    }

    /// Whether the task has ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
