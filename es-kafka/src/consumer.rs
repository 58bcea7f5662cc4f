//! Projections fed from Kafka topics by a consumer group.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use es_core::{
    Checkpoint, CheckpointStore, Error, EventFilter, FailurePolicy, Inbox, ParkedEvent, Position,
    Projection, RecordedEvent, Result,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::headers::{Incoming, MessageError, MessageOrigin};

/// The consumer settings the runner chooses; [`KafkaConfig::set`] overrides them.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("session.timeout.ms", "10000"),
    ("fetch.wait.max.ms", "100"),
];

/// The consumer settings the runner's guarantees rest on.
const CONSUMER_FIXED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
];

/// Counters of a Kafka-fed projection, shared by its clones.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    received: AtomicU64,
    handled: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    parked: AtomicU64,
    batches: AtomicU64,
}

impl ConsumerStats {
    /// Messages taken off the topics (redeliveries count again).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Events handed to the projection and committed.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Redelivered events dropped because their effect was already committed.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Events of types the projection does not read, dropped by
    /// [`KafkaProjectionRunner::skip_other_types`].
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Messages parked.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }

    /// Batches committed.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// A message the projection could not handle, kept in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedMessage {
    /// Where it was on the broker.
    pub origin: MessageOrigin,
    /// What could be read of it: the event, or, for a message that is not a
    /// well-formed event, its fields as far as they parse (a payload that is
    /// not JSON is kept as a JSON string of its text). `position` holds the
    /// message's offset; the source store's position is in the metadata's
    /// `es.position` key.
    pub event: RecordedEvent,
    /// Why it was parked.
    pub error: String,
    /// When.
    pub parked_at: DateTime<Utc>,
}

/// The metadata key that keeps a parked message's source position.
const SOURCE_POSITION: &str = "es.position";

/// Feeds an es-core [`Projection`] from Kafka topics through a consumer
/// group.
///
/// Messages are read in batches; for each batch the runner opens the
/// projection's context from the store, claims each event in the store's
/// [`Inbox`] by stream and version (a redelivered event, after a crash or a
/// rebalance, is recognised there and dropped), hands the new ones to the
/// projection, commits the context, and only then commits the consumer
/// group's offsets. With a transactional context (a SQLite or PostgreSQL
/// read model) the read model and the claims commit together, so each
/// event's effect is applied exactly once; events are decoded by the
/// projection through the upcasters of its event families, the headers
/// naming their type and schema version. Partitions are handled in order,
/// and rebalances need no care: offsets of a lost partition fail to commit
/// and its new owner drops what was already applied.
///
/// A message that is not an event of a type the projection reads, or that
/// the projection fails on, stops the runner (the default, with the error
/// naming topic, partition and offset; nothing of its batch is committed),
/// or, with [`FailurePolicy::Park`], is parked in the store and listed by
/// [`parked`](KafkaProjectionRunner::parked). It is never skipped silently.
///
/// ```no_run
/// use es_core::InMemoryStore;
/// use es_kafka::{KafkaConfig, KafkaProjectionRunner};
/// # #[derive(Default)] struct Summary;
/// # #[async_trait::async_trait] impl es_core::Projection for Summary {
/// #   type Context = (); const NAME: &'static str = "summary";
/// #   fn event_types() -> Option<Vec<String>> { None }
/// #   async fn handle(&self, _: &mut (), _: &es_core::RecordedEvent) -> Result<(), es_core::BoxError> { Ok(()) }
/// #   async fn reset(&self, _: &mut ()) -> Result<(), es_core::BoxError> { Ok(()) } }
///
/// # async fn run() -> es_core::Result<()> {
/// let runner = KafkaProjectionRunner::new(
///     &KafkaConfig::new("127.0.0.1:9092"),
///     "billing",             // the consumer group
///     ["shop.order"],        // the topics
///     InMemoryStore::new(),  // claims and parked messages
///     Summary::default(),
/// )?;
/// let running = runner.spawn();
/// // ...
/// running.stop().await?;
/// # Ok(()) }
/// ```
pub struct KafkaProjectionRunner<P, S> {
    inner: Arc<Inner<P, S>>,
    batch_size: usize,
    batch_wait: Duration,
    policy: FailurePolicy,
    skip_other_types: bool,
}

struct Inner<P, S> {
    config: KafkaConfig,
    group: String,
    topics: Vec<String>,
    store: S,
    projection: P,
    filter: EventFilter,
    stats: Arc<ConsumerStats>,
}

impl<P, S> Clone for KafkaProjectionRunner<P, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            batch_size: self.batch_size,
            batch_wait: self.batch_wait,
            policy: self.policy,
            skip_other_types: self.skip_other_types,
        }
    }
}

impl<P: Projection, S> std::fmt::Debug for KafkaProjectionRunner<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProjectionRunner")
            .field("projection", &P::NAME)
            .field("group", &self.inner.group)
            .field("topics", &self.inner.topics)
            .field("batch_size", &self.batch_size)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What became of one message of a batch.
enum Outcome {
    Handled,
    Duplicate,
    Skipped,
}

impl<P, S> KafkaProjectionRunner<P, S>
where
    P: Projection,
    S: Inbox<P::Context> + CheckpointStore + 'static,
{
    /// A runner in consumer group `group` over `topics`, with batches of at
    /// most 500 messages gathered for at most 50 ms, and
    /// [`FailurePolicy::Stop`]. `store` keeps the claims (in the
    /// projection's context) and the parked messages.
    pub fn new<T: Into<String>>(
        config: &KafkaConfig,
        group: impl Into<String>,
        topics: impl IntoIterator<Item = T>,
        store: S,
        projection: P,
    ) -> Result<Self> {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        if topics.is_empty() {
            return Err(Error::Store {
                message: format!("Kafka projection `{}` was given no topic", P::NAME),
                source: None,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                group: group.into(),
                topics,
                store,
                projection,
                filter: EventFilter {
                    event_types: P::event_types(),
                },
                stats: Arc::default(),
            }),
            batch_size: 500,
            batch_wait: Duration::from_millis(50),
            policy: FailurePolicy::Stop,
            skip_other_types: false,
        })
    }

    /// Sets the most messages handled in one batch (one transaction).
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets how long a batch may wait for more messages once it has one.
    #[must_use]
    pub fn batch_wait(mut self, batch_wait: Duration) -> Self {
        self.batch_wait = batch_wait;
        self
    }

    /// Sets what happens to a message the projection cannot handle.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Drops, counted in [`ConsumerStats::skipped`], well-formed events of
    /// types the projection does not read, for topics that carry more than
    /// it needs. Without it such an event is a failure (stop or park): an
    /// unknown type usually means a producer newer than this code.
    #[must_use]
    pub fn skip_other_types(mut self) -> Self {
        self.skip_other_types = true;
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

    /// The runner's counters.
    pub fn stats(&self) -> &Arc<ConsumerStats> {
        &self.inner.stats
    }

    /// The checkpoint key under which the store keeps the projection version
    /// the read model was built by (the offsets are the broker's).
    fn version_key() -> String {
        format!("{}@kafka", P::NAME)
    }

    /// The key parked messages of one partition are kept under.
    fn parking_key(topic: &str, partition: i32) -> String {
        format!("{}@{topic}#{partition}", P::NAME)
    }

    fn consumer(&self) -> Result<StreamConsumer> {
        let inner = &*self.inner;
        let consumer: StreamConsumer = inner
            .config
            .client(CONSUMER_DEFAULTS, CONSUMER_FIXED)
            .set("group.id", &inner.group)
            .create()
            .map_err(|e| Error::store(format!("cannot create the consumer of `{}`", P::NAME), e))?;
        let topics: Vec<&str> = inner.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| {
            Error::store(format!("cannot subscribe `{}` to {topics:?}", P::NAME), e)
        })?;
        Ok(consumer)
    }

    /// Consumes until `shutdown` completes; the batch in progress is
    /// committed first. Transient broker errors are logged and the consumer
    /// keeps going; a message the projection cannot handle ends the run with
    /// the error under [`FailurePolicy::Stop`].
    ///
    /// When the stored projection version differs from the code's, the read
    /// model is [rebuilt](Self::rebuild) first.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.check_version().await?;
        let consumer = self.consumer()?;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let first = tokio::select! {
                biased;
                () = &mut shutdown => break,
                message = consumer.recv() => message,
            };
            let mut batch = Vec::with_capacity(self.batch_size);
            match first {
                Ok(message) => batch.push(Incoming::read(&message)),
                Err(error) => {
                    transient(&error);
                    // Errors can come back to back while the broker is away.
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            }
            let deadline = tokio::time::Instant::now() + self.batch_wait;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(message)) => batch.push(Incoming::read(&message)),
                    Ok(Err(error)) => transient(&error),
                    Err(_elapsed) => break,
                }
            }
            self.inner
                .stats
                .received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.handle_batch(&batch).await?;
            commit_offsets(&consumer, &batch, CommitMode::Async);
        }
        tracing::info!(projection = P::NAME, group = %self.inner.group, "Kafka projection stopped");
        Ok(())
    }

    /// Runs the projection on a tokio task until
    /// [`RunningKafkaProjection::stop`], which commits the batch in progress.
    pub fn spawn(&self) -> RunningKafkaProjection {
        let runner = self.clone();
        RunningKafkaProjection::spawn_with(
            |shutdown| async move { runner.run_until(shutdown).await },
        )
    }

    /// Rebuilds when the read model was built by another projection version;
    /// records the version on the first run.
    async fn check_version(&self) -> Result<()> {
        let store = &self.inner.store;
        match store.load_checkpoint(&Self::version_key()).await? {
            Some(stored) if stored.version == P::VERSION => Ok(()),
            Some(stored) => {
                tracing::info!(
                    projection = P::NAME,
                    stored = stored.version,
                    current = P::VERSION,
                    "projection version changed; rebuilding from the topics"
                );
                self.rebuild().await
            }
            None => {
                store
                    .save_checkpoint(&Self::version_key(), Self::version_checkpoint())
                    .await
            }
        }
    }

    fn version_checkpoint() -> Checkpoint {
        Checkpoint {
            position: Position::START,
            version: P::VERSION,
        }
    }

    /// Builds the read model again from the topics: moves the consumer
    /// group's offsets back to the oldest message each partition keeps,
    /// then, in one context (one transaction where the store has them),
    /// resets the read model, forgets the events claimed in the [`Inbox`]
    /// and records the projection version; the parked messages of the
    /// topics are dropped. The next run consumes the topics from the start.
    ///
    /// Stop every runner of the group first: the broker refuses to move the
    /// offsets of a group that has members, and this fails without changing
    /// the read model. If the rebuild stops halfway, the offsets may have
    /// moved back with the read model intact; the events then come again as
    /// duplicates and are dropped, so nothing is applied twice.
    ///
    /// A rebuild sees what the topics still hold. For a complete read model
    /// they must keep every event (`retention.ms = -1`, no compaction), or
    /// the source service publishes its whole log again
    /// ([`KafkaRelay::reset`](crate::KafkaRelay::reset)).
    pub async fn rebuild(&self) -> Result<()> {
        self.rewind_offsets().await?;
        let store = &self.inner.store;
        let mut context = store.begin().await?;
        es_core::reset_projection(&self.inner.projection, &mut context).await?;
        store.reset_claims(&mut context, P::NAME).await?;
        store
            .commit(
                context,
                &Self::version_key(),
                Some(Self::version_checkpoint()),
            )
            .await?;
        for parked in self.parked().await? {
            let key = Self::parking_key(&parked.origin.topic, parked.origin.partition);
            let offset = u64::try_from(parked.origin.offset).unwrap_or(0);
            store.unpark(&key, Position(offset)).await?;
        }
        tracing::info!(projection = P::NAME, group = %self.inner.group, "Kafka projection reset for rebuild");
        Ok(())
    }

    /// Commits, for the group, the oldest offset of every partition of the
    /// runner's topics.
    async fn rewind_offsets(&self) -> Result<()> {
        let runner = self.clone();
        blocking(move || {
            let inner = &*runner.inner;
            let consumer = runner.plain_consumer()?;
            let mut offsets = TopicPartitionList::new();
            for (topic, partitions) in partition_counts(&consumer, &inner.topics)? {
                for partition in 0..partitions {
                    let (low, _high) = consumer
                        .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                        .map_err(|e| {
                            Error::store(format!("cannot read the offsets of {topic}#{partition}"), e)
                        })?;
                    offsets
                        .add_partition_offset(&topic, partition, Offset::Offset(low))
                        .map_err(|e| Error::store("cannot list an offset to commit", e))?;
                }
            }
            consumer.commit(&offsets, CommitMode::Sync).map_err(|e| {
                Error::store(
                    format!(
                        "cannot move the offsets of consumer group `{}` back (are its consumers still running?)",
                        inner.group
                    ),
                    e,
                )
            })
        })
        .await
    }

    /// A consumer of the group that joins nothing: for metadata and offsets.
    fn plain_consumer(&self) -> Result<BaseConsumer> {
        let inner = &*self.inner;
        inner
            .config
            .client(CONSUMER_DEFAULTS, CONSUMER_FIXED)
            .set("group.id", &inner.group)
            .create()
            .map_err(|e| Error::store("cannot create a Kafka client", e))
    }

    /// Handles one batch in one context, parking or stopping at failures.
    async fn handle_batch(&self, batch: &[Incoming]) -> Result<()> {
        let store = &self.inner.store;
        let mut context = store.begin().await?;
        let mut counts = [0u64; 3];
        let mut parked = vec![false; batch.len()];
        for (i, message) in batch.iter().enumerate() {
            let error = match self.handle_one(&mut context, message).await {
                Ok(outcome) => {
                    counts[outcome as usize] += 1;
                    continue;
                }
                Err(error) => error,
            };
            if self.policy == FailurePolicy::Stop {
                tracing::error!(projection = P::NAME, %error, "Kafka projection stopped");
                return Err(error);
            }
            // Undo the failed handler's writes where the store can, then
            // redo what came before it, but the parked, in a fresh context.
            if store.is_transactional() {
                drop(context);
                context = store.begin().await?;
                counts = [0; 3];
                for (earlier, _) in batch[..i].iter().zip(&parked).filter(|(_, p)| !**p) {
                    let outcome = self.handle_one(&mut context, earlier).await?;
                    counts[outcome as usize] += 1;
                }
            }
            self.park(message, &error).await?;
            parked[i] = true;
        }
        store.commit(context, P::NAME, None).await?;
        let stats = &self.inner.stats;
        stats
            .handled
            .fetch_add(counts[Outcome::Handled as usize], Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(counts[Outcome::Duplicate as usize], Ordering::Relaxed);
        stats
            .skipped
            .fetch_add(counts[Outcome::Skipped as usize], Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn handle_one(&self, context: &mut P::Context, message: &Incoming) -> Result<Outcome> {
        let inner = &*self.inner;
        if let Some(problem) = &message.problem {
            return Err(message_error(problem.clone()));
        }
        let event = &message.event;
        if !inner.filter.matches(&event.event_type) {
            if self.skip_other_types {
                return Ok(Outcome::Skipped);
            }
            return Err(message_error(MessageError::UnknownType {
                origin: message.origin.clone(),
                event_type: event.event_type.to_string(),
            }));
        }
        if !inner
            .store
            .claim(context, P::NAME, &event.stream_id, event.version)
            .await?
        {
            return Ok(Outcome::Duplicate);
        }
        inner
            .projection
            .handle(context, event)
            .await
            .map_err(|source| Error::Projection {
                projection: P::NAME.to_owned(),
                position: event.position,
                stream_id: event.stream_id.clone(),
                version: event.version,
                event_type: event.event_type.to_string(),
                source: format!("message {}: {source}", message.origin).into(),
            })?;
        Ok(Outcome::Handled)
    }

    async fn park(&self, message: &Incoming, error: &Error) -> Result<()> {
        let origin = &message.origin;
        let mut event = message.event.clone();
        event
            .metadata
            .extra
            .insert(SOURCE_POSITION.to_owned(), event.position.0.to_string());
        event.position = Position(u64::try_from(origin.offset).unwrap_or(0));
        tracing::warn!(projection = P::NAME, message = %origin, %error, "message parked");
        self.inner
            .store
            .park(ParkedEvent {
                projection: Self::parking_key(&origin.topic, origin.partition),
                event,
                error: full_text(error),
                parked_at: Utc::now(),
            })
            .await?;
        self.inner.stats.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The parked messages of the runner's topics, by topic, partition and
    /// offset. Asks the broker how many partitions each topic has.
    pub async fn parked(&self) -> Result<Vec<ParkedMessage>> {
        let mut parked = Vec::new();
        for (topic, partitions) in self.partitions().await? {
            for partition in 0..partitions {
                let key = Self::parking_key(&topic, partition);
                for entry in self.inner.store.parked(&key).await? {
                    let mut event = entry.event;
                    let offset = i64::try_from(event.position.0).unwrap_or(i64::MAX);
                    if let Some(source) = event.metadata.extra.remove(SOURCE_POSITION) {
                        event.position = Position(source.parse().unwrap_or(0));
                    }
                    parked.push(ParkedMessage {
                        origin: MessageOrigin {
                            topic: topic.clone(),
                            partition,
                            offset,
                        },
                        event,
                        error: entry.error,
                        parked_at: entry.parked_at,
                    });
                }
            }
        }
        Ok(parked)
    }

    /// Hands a parked message to the projection again; on success it is
    /// committed and removed, on failure it stays parked with the new error.
    /// Returns whether it succeeded.
    pub async fn retry_parked(&self, parked: &ParkedMessage) -> Result<bool> {
        let store = &self.inner.store;
        let key = Self::parking_key(&parked.origin.topic, parked.origin.partition);
        let message = Incoming {
            origin: parked.origin.clone(),
            event: parked.event.clone(),
            problem: None,
        };
        let mut context = store.begin().await?;
        match self.handle_one(&mut context, &message).await {
            Ok(_) => {
                store.commit(context, P::NAME, None).await?;
                let offset = u64::try_from(parked.origin.offset).unwrap_or(0);
                store.unpark(&key, Position(offset)).await?;
                Ok(true)
            }
            Err(error) => {
                drop(context);
                self.park(&message, &error).await?;
                Ok(false)
            }
        }
    }

    /// The partition count of each of the runner's topics.
    async fn partitions(&self) -> Result<BTreeMap<String, i32>> {
        let runner = self.clone();
        blocking(move || partition_counts(&runner.plain_consumer()?, &runner.inner.topics)).await
    }
}

/// How long a metadata or offset request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a blocking client call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::store("a Kafka client task failed", e))?
}

/// The partition count of each of `topics` (0 for a topic that does not exist).
fn partition_counts(consumer: &BaseConsumer, topics: &[String]) -> Result<BTreeMap<String, i32>> {
    let mut counts = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| Error::store(format!("cannot read the metadata of `{topic}`"), e))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        counts.insert(topic.clone(), i32::try_from(partitions).unwrap_or(i32::MAX));
    }
    Ok(counts)
}

fn message_error(error: MessageError) -> Error {
    Error::Store {
        message: "a message is not an event the projection can read".to_owned(),
        source: Some(Box::new(error)),
    }
}

/// An error with its sources, each once.
fn full_text(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

fn transient(error: &KafkaError) {
    tracing::warn!(%error, "Kafka consumer error; continuing");
}

/// Commits, per partition, the offset after the batch's last message.
fn commit_offsets(consumer: &StreamConsumer, batch: &[Incoming], mode: CommitMode) {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for message in batch {
        let entry = next
            .entry((message.origin.topic.as_str(), message.origin.partition))
            .or_insert(0);
        *entry = (*entry).max(message.origin.offset + 1);
    }
    let mut offsets = TopicPartitionList::with_capacity(next.len());
    for ((topic, partition), offset) in next {
        if let Err(error) = offsets.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            tracing::warn!(%error, topic, partition, "cannot list an offset to commit");
        }
    }
    if let Err(error) = consumer.commit(&offsets, mode) {
        // A partition taken away by a rebalance cannot be committed; its new
        // owner gets the batch again and drops what was applied.
        tracing::warn!(%error, "offsets not committed; redelivered events will be dropped as duplicates");
    }
}

/// A Kafka-fed projection running on a tokio task: `stop` commits the batch
/// in progress; `abort` ends it as a crash would (the batch is neither
/// committed nor acknowledged).
pub type RunningKafkaProjection = es_core::RunningProjection;
