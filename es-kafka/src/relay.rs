//! The relay: an event store's global log, produced to Kafka topics.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use chrono::Utc;
use es_core::{
    BoxError, Checkpoint, CheckpointStore, Error, Event, EventFilter, EventSchema, EventStore,
    FailurePolicy, ParkedEvent, Payload, Position, RecordedEvent, Result, StreamId, Version,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use tokio::sync::watch;

use crate::config::KafkaConfig;
use crate::headers;

/// Which topic an event goes to.
///
/// ```
/// use es_kafka::TopicMapping;
/// # use es_core::{EventId, Metadata, Position, RecordedEvent, StreamId, Version};
/// # let event = |stream: &str| RecordedEvent {
/// #     position: Position(1), stream_id: StreamId::new(stream), version: Version(1),
/// #     event_id: EventId::new(), event_type: "Placed".into(), schema_version: 1,
/// #     payload: serde_json::json!({}).into(), metadata: Metadata::default(), recorded_at: chrono::Utc::now(),
/// # };
///
/// assert_eq!(TopicMapping::PerAggregate.topic(&event("order-7f3c")), "order");
/// assert_eq!(TopicMapping::prefixed("shop.").topic(&event("order-7f3c")), "shop.order");
/// assert_eq!(TopicMapping::single("events").topic(&event("order-7f3c")), "events");
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum TopicMapping {
    /// One topic per aggregate: the stream id's part before its first `-`
    /// (`order-7f3c` goes to `order`), as [`StreamId::for_aggregate`] builds ids.
    #[default]
    PerAggregate,
    /// One topic per aggregate, its name after a prefix (`shop.order`).
    Prefixed(String),
    /// Every event to one topic.
    Single(String),
    /// A function of the event.
    Custom(fn(&RecordedEvent) -> String),
}

impl TopicMapping {
    /// One topic per aggregate, named `{prefix}{aggregate}`.
    pub fn prefixed(prefix: impl Into<String>) -> Self {
        TopicMapping::Prefixed(prefix.into())
    }

    /// Every event to `topic`.
    pub fn single(topic: impl Into<String>) -> Self {
        TopicMapping::Single(topic.into())
    }

    /// The topic of `event`.
    pub fn topic(&self, event: &RecordedEvent) -> String {
        let aggregate = || {
            let id = event.stream_id.as_str();
            id.split_once('-').map_or(id, |(aggregate, _)| aggregate)
        };
        match self {
            TopicMapping::PerAggregate => aggregate().to_owned(),
            TopicMapping::Prefixed(prefix) => format!("{prefix}{}", aggregate()),
            TopicMapping::Single(topic) => topic.clone(),
            TopicMapping::Custom(map) => map(event),
        }
    }
}

/// Counters of a relay, shared by its clones.
#[derive(Debug, Default)]
pub struct RelayStats {
    produced: AtomicU64,
    acknowledged: AtomicU64,
    retries: AtomicU64,
    checkpoint: AtomicU64,
}

impl RelayStats {
    /// Messages handed to the producer (retries count again).
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Messages the broker acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Times the relay went back to its checkpoint after a failure.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The last checkpoint saved.
    pub fn checkpoint(&self) -> Position {
        Position(self.checkpoint.load(Ordering::Relaxed))
    }
}

/// Follows an event store's global log from its own checkpoint and produces
/// every event to Kafka.
///
/// Each event becomes one message: the key is the stream id (so a stream's
/// events share a partition and keep their order), the value is the JSON
/// payload brought to its type's current schema version by the upcasters of
/// the families registered with [`upcast`](KafkaRelay::upcast) (other types
/// go as stored), and the [headers](crate::headers::names) carry the event
/// id, type, schema version, stream version, position, recorded-at time,
/// correlation and causation ids, a W3C `traceparent` when the metadata has
/// one, the other metadata key/values and the content type.
///
/// The producer is idempotent and the checkpoint (saved in the source store
/// under the relay's [`name`](KafkaRelay::name)) only ever moves past events
/// the broker acknowledged, in log order. After a failure the relay goes
/// back to its checkpoint and produces again: delivery is at least once, so
/// consumers drop duplicates by stream and version (the
/// [`KafkaProjectionRunner`](crate::KafkaProjectionRunner) does).
///
/// ```no_run
/// use es_core::InMemoryStore;
/// use es_kafka::{KafkaConfig, KafkaRelay, TopicMapping};
/// # #[derive(es_core::Event, serde::Serialize, serde::Deserialize)] enum OrderEvent { Placed }
///
/// # async fn run() -> es_core::Result<()> {
/// let store = InMemoryStore::new();
/// let relay = KafkaRelay::new(store, &KafkaConfig::new("127.0.0.1:9092"))?
///     .name("orders_to_kafka")
///     .topics(TopicMapping::prefixed("shop."))
///     .upcast::<OrderEvent>();
/// let running = relay.spawn();
/// // ... the service appends events; the relay publishes them ...
/// running.stop().await?; // flushes what is in flight and saves the checkpoint
/// # Ok(()) }
/// ```
pub struct KafkaRelay<S> {
    store: Arc<S>,
    producer: FutureProducer,
    name: String,
    topics: TopicMapping,
    schemas: Vec<&'static EventSchema>,
    filter: EventFilter,
    policy: FailurePolicy,
    batch_size: usize,
    max_in_flight: usize,
    checkpoint_interval: Duration,
    idle_wait: Duration,
    retry_backoff: Duration,
    stats: Arc<RelayStats>,
}

impl<S> Clone for KafkaRelay<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            producer: self.producer.clone(),
            name: self.name.clone(),
            topics: self.topics.clone(),
            schemas: self.schemas.clone(),
            filter: self.filter.clone(),
            policy: self.policy,
            batch_size: self.batch_size,
            max_in_flight: self.max_in_flight,
            checkpoint_interval: self.checkpoint_interval,
            idle_wait: self.idle_wait,
            retry_backoff: self.retry_backoff,
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<S> std::fmt::Debug for KafkaRelay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRelay")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("batch_size", &self.batch_size)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// The producer settings the relay chooses; [`KafkaConfig::set`] overrides them.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "30000"),
    ("queue.buffering.max.messages", "100000"),
];

/// The producer settings the relay's guarantees rest on.
const PRODUCER_FIXED: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("max.in.flight.requests.per.connection", "5"),
];

/// An event handed to the producer, or the end of a read that skipped
/// filtered events.
struct Pending {
    position: Position,
    delivery: Option<(DeliveryFuture, StreamId, Version)>,
}

/// Why a pass of the relay loop ended.
enum Interrupt {
    /// Something that may pass (the broker is away, the store's connection
    /// dropped): go back to the checkpoint and try again.
    Transient(Error),
    /// An error that trying again cannot fix.
    Fatal(Error),
}

impl<S> KafkaRelay<S>
where
    S: EventStore + CheckpointStore + 'static,
{
    /// A relay named `kafka_relay` with one topic per aggregate, reading
    /// pages of 1,000 events and keeping at most 20,000 unacknowledged.
    pub fn new(store: S, config: &KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = config
            .client(PRODUCER_DEFAULTS, PRODUCER_FIXED)
            .create()
            .map_err(|e| Error::store("cannot create the Kafka producer", e))?;
        Ok(Self {
            store: Arc::new(store),
            producer,
            name: "kafka_relay".to_owned(),
            topics: TopicMapping::PerAggregate,
            schemas: Vec::new(),
            filter: EventFilter::all(),
            policy: FailurePolicy::Stop,
            batch_size: 1000,
            max_in_flight: 20_000,
            checkpoint_interval: Duration::from_millis(200),
            idle_wait: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(500),
            stats: Arc::default(),
        })
    }

    /// Sets the relay's name: the key of its checkpoint (and of its parked
    /// events) in the store. Two relays of one store need two names.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets which topic each event goes to.
    #[must_use]
    pub fn topics(mut self, topics: TopicMapping) -> Self {
        self.topics = topics;
        self
    }

    /// Publishes the events of family `E` upcast to their current schema
    /// versions and current type names.
    #[must_use]
    pub fn upcast<E: Event>(mut self) -> Self {
        self.schemas.push(E::schema());
        self
    }

    /// Relays only the stored types that pass `filter`.
    #[must_use]
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets what happens to an event that cannot be upcast or encoded: stop
    /// the relay with the error (the default), or park it in the store under
    /// the relay's name and go on.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how many events one read of the log returns at most.
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets how many produced events may wait for their acknowledgement.
    /// When that many wait, the relay stops reading until the broker
    /// catches up: the backpressure on a slow broker.
    #[must_use]
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Sets how often the checkpoint is saved while events keep coming (it
    /// is saved at once whenever the relay has caught up).
    #[must_use]
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// Sets how long to wait before going back to the checkpoint after a
    /// failure (the broker or the store away).
    #[must_use]
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Sets how long an idle relay waits for new events before it looks
    /// again (stores wake it when events arrive).
    #[must_use]
    pub fn idle_wait(mut self, idle_wait: Duration) -> Self {
        self.idle_wait = idle_wait;
        self
    }

    /// The relay's counters.
    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// The store the relay follows.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Makes the relay publish the whole log again: moves its checkpoint
    /// back to the start and drops its parked events (they are tried again
    /// on the way). Consumers see every event a second time and drop the
    /// duplicates by stream and version. Stop the relay first, so that no
    /// save of its own overwrites the reset.
    pub async fn reset(&self) -> Result<()> {
        self.save(Position::START).await?;
        for parked in self.store.parked(&self.name).await? {
            self.store.unpark(&self.name, parked.event.position).await?;
        }
        tracing::info!(relay = %self.name, "relay reset: the whole log is published again");
        Ok(())
    }

    /// The relay's saved checkpoint.
    pub async fn checkpoint(&self) -> Result<Position> {
        Ok(self
            .store
            .load_checkpoint(&self.name)
            .await?
            .map_or(Position::START, |c| c.position))
    }

    /// Relays every event up to the log's current end, waits for the
    /// broker's acknowledgements, saves the checkpoint and returns it.
    /// Failures are retried as in [`run_until`](KafkaRelay::run_until), up to
    /// `attempts` times.
    pub async fn catch_up(&self, attempts: u32) -> Result<Position> {
        let mut attempt = 0;
        loop {
            let head = self.store.head().await?;
            match self.pass(Some(head), std::future::pending()).await {
                Ok(position) => return Ok(position),
                Err(Interrupt::Fatal(error)) => return Err(error),
                Err(Interrupt::Transient(error)) => {
                    attempt += 1;
                    if attempt >= attempts {
                        return Err(error);
                    }
                    self.back_off(&error).await;
                }
            }
        }
    }

    /// Relays events until `shutdown` completes, then waits for what is in
    /// flight and saves the checkpoint. Failures that may pass (the broker
    /// down, a dropped store connection) are logged and retried from the
    /// checkpoint after the backoff; it returns an error only for a failure
    /// retrying cannot fix.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let (stop, stopped) = watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        let work = async {
            loop {
                let mut waiter = stopped.clone();
                let stop_requested = async move {
                    let _ = waiter.wait_for(|s| *s).await;
                };
                match self.pass(None, stop_requested).await {
                    Ok(_) => return Ok(()),
                    Err(Interrupt::Fatal(error)) => return Err(error),
                    Err(Interrupt::Transient(error)) => {
                        if *stopped.borrow() {
                            return Err(error);
                        }
                        self.back_off(&error).await;
                    }
                }
            }
        };
        let mut work = std::pin::pin!(work);
        tokio::select! {
            result = &mut work => return result,
            () = &mut shutdown => {}
        }
        stop.send_replace(true);
        work.await
    }

    /// Runs the relay on a tokio task until [`RunningRelay::stop`], which
    /// waits for the events in flight and saves the checkpoint.
    pub fn spawn(&self) -> RunningRelay {
        let relay = self.clone();
        RunningRelay::spawn_with(|shutdown| async move { relay.run_until(shutdown).await })
    }

    async fn back_off(&self, error: &Error) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(relay = %self.name, %error, backoff = ?self.retry_backoff,
            "relay interrupted; resuming from its checkpoint");
        tokio::time::sleep(self.retry_backoff).await;
    }

    /// One pass from the checkpoint: until `until` is relayed (catch-up), or
    /// until `stop` completes (follow). Returns the saved checkpoint.
    async fn pass(
        &self,
        until: Option<Position>,
        stop: impl Future<Output = ()> + Send,
    ) -> std::result::Result<Position, Interrupt> {
        let mut stop = std::pin::pin!(stop);
        let store = &*self.store;
        let mut acked = self.checkpoint().await.map_err(Interrupt::Transient)?;
        let mut saved = acked;
        let mut last_save = Instant::now();
        let mut read_from = acked;
        let mut window: VecDeque<Pending> = VecDeque::new();
        let mut stopping = false;
        loop {
            // Read and produce while there is room.
            let mut read_any = false;
            let room = self.max_in_flight.saturating_sub(window.len());
            let wanted = until.is_none_or(|until| read_from < until);
            if !stopping && wanted && room > 0 {
                let slice = store
                    .read_all(read_from, &self.filter, self.batch_size.min(room))
                    .await
                    .map_err(Interrupt::Transient)?;
                for event in &slice.events {
                    match self.produce(event, &mut window, &mut acked).await {
                        Ok(Some(pending)) => window.push_back(pending),
                        Ok(None) => {}
                        Err(Interrupt::Fatal(error)) => {
                            // Keep what the broker took before the failing event.
                            while !window.is_empty() {
                                self.drain(&mut window, &mut acked, true).await?;
                            }
                            if acked > saved {
                                self.save(acked).await.map_err(Interrupt::Transient)?;
                            }
                            return Err(Interrupt::Fatal(error));
                        }
                        Err(transient) => return Err(transient),
                    }
                }
                if slice.next > read_from {
                    read_any = true;
                    window.push_back(Pending {
                        position: slice.next,
                        delivery: None,
                    });
                    read_from = slice.next;
                }
            }
            // Take the acknowledgements that are in, in order; wait for the
            // oldest when there is nothing else to do.
            let must_wait = !read_any || window.len() >= self.max_in_flight;
            self.drain(&mut window, &mut acked, must_wait).await?;
            let idle = window.is_empty();
            if acked > saved && (idle || last_save.elapsed() >= self.checkpoint_interval) {
                self.save(acked).await.map_err(Interrupt::Transient)?;
                saved = acked;
                last_save = Instant::now();
            }
            if !idle {
                continue;
            }
            if stopping || until.is_some_and(|until| read_from >= until) {
                return Ok(saved);
            }
            if !read_any {
                tokio::select! {
                    () = &mut stop => stopping = true,
                    waited = store.wait_for_events(read_from, self.idle_wait) => {
                        waited.map_err(Interrupt::Transient)?;
                    }
                }
            } else if poll_once(&mut stop).await {
                stopping = true;
            }
        }
    }

    /// Hands one event to the producer; `None` when it was parked instead.
    /// Waits for acknowledgements while the producer's queue is full.
    async fn produce(
        &self,
        event: &RecordedEvent,
        window: &mut VecDeque<Pending>,
        acked: &mut Position,
    ) -> std::result::Result<Option<Pending>, Interrupt> {
        let (event_type, schema_version, payload) = match self.encode(event) {
            Ok(encoded) => encoded,
            Err(source) => return self.refuse(event, source).await.map(|()| None),
        };
        let topic = self.topics.topic(event);
        let headers = headers::encode(event, event_type, schema_version);
        let mut record = FutureRecord::to(&topic)
            .key(event.stream_id.as_str())
            .payload(payload.as_str())
            .headers(headers);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.stats.produced.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(Pending {
                        position: event.position,
                        delivery: Some((delivery, event.stream_id.clone(), event.version)),
                    }));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if window.iter().all(|p| p.delivery.is_none()) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    self.drain(window, acked, true).await?;
                }
                Err((error, _)) => {
                    return Err(Interrupt::Fatal(delivery_error(
                        &self.name,
                        &event.stream_id,
                        event.version,
                        event.position,
                        error,
                    )))
                }
            }
        }
    }

    /// The type name, schema version and JSON payload to publish.
    fn encode<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> std::result::Result<(&'a str, u32, Payload), BoxError> {
        for schema in &self.schemas {
            match schema.upcast(&event.event_type, event.schema_version, &event.payload) {
                Ok((name, payload)) => {
                    let version = schema.current_version(name).unwrap_or(event.schema_version);
                    return Ok((name, version, payload.into_owned()));
                }
                Err(es_core::DecodeErrorKind::UnknownType) => {}
                Err(kind) => return Err(Box::new(kind)),
            }
        }
        Ok((
            event.event_type.as_str(),
            event.schema_version,
            event.payload.clone(),
        ))
    }

    /// Stops with, or parks, an event that cannot be published.
    async fn refuse(
        &self,
        event: &RecordedEvent,
        source: BoxError,
    ) -> std::result::Result<(), Interrupt> {
        let error = Error::Projection {
            projection: self.name.clone(),
            position: event.position,
            stream_id: event.stream_id.clone(),
            version: event.version,
            event_type: event.event_type.to_string(),
            source,
        };
        match self.policy {
            FailurePolicy::Stop => {
                tracing::error!(relay = %self.name, %error, "relay stopped");
                Err(Interrupt::Fatal(error))
            }
            FailurePolicy::Park => {
                tracing::warn!(relay = %self.name, %error, "event parked, not relayed");
                self.store
                    .park(ParkedEvent {
                        projection: self.name.clone(),
                        event: event.clone(),
                        error: error.to_string(),
                        parked_at: Utc::now(),
                    })
                    .await
                    .map_err(Interrupt::Transient)
            }
        }
    }

    /// Takes acknowledged deliveries off the front of the window, moving
    /// `acked`; with `wait`, waits for the front one first.
    async fn drain(
        &self,
        window: &mut VecDeque<Pending>,
        acked: &mut Position,
        mut wait: bool,
    ) -> std::result::Result<(), Interrupt> {
        while let Some(front) = window.front_mut() {
            let Some((delivery, stream_id, version)) = &mut front.delivery else {
                *acked = front.position;
                window.pop_front();
                continue;
            };
            let result = if wait {
                delivery.await
            } else {
                match poll_now(delivery).await {
                    Some(result) => result,
                    None => return Ok(()),
                }
            };
            wait = false;
            match result {
                Ok(Ok(_)) => {
                    self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                    *acked = front.position;
                    window.pop_front();
                }
                Ok(Err((error, _))) => {
                    let error =
                        delivery_error(&self.name, stream_id, *version, front.position, error);
                    return Err(Interrupt::Transient(error));
                }
                Err(_canceled) => {
                    return Err(Interrupt::Transient(Error::Store {
                        message: format!("relay `{}`: the producer was dropped", self.name),
                        source: None,
                    }))
                }
            }
        }
        Ok(())
    }

    async fn save(&self, position: Position) -> Result<()> {
        self.store
            .save_checkpoint(
                &self.name,
                Checkpoint {
                    position,
                    version: 1,
                },
            )
            .await?;
        self.stats.checkpoint.store(position.0, Ordering::Relaxed);
        tracing::debug!(relay = %self.name, position = %position, "relay checkpoint saved");
        Ok(())
    }

    /// Waits until the producer has delivered everything queued, or `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| Error::store(format!("relay `{}` could not flush", self.name), e))
    }
}

/// The result of a delivery future, if it is ready now.
async fn poll_now<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    poll_fn(|cx| match Pin::new(&mut *future).poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Whether a future completes when polled once now.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> bool {
    poll_now(future).await.is_some()
}

fn delivery_error(
    relay: &str,
    stream_id: &StreamId,
    version: Version,
    position: Position,
    error: KafkaError,
) -> Error {
    Error::store(
        format!("relay `{relay}` could not deliver `{stream_id}` v{version} (position {position})"),
        error,
    )
}

/// A relay running on a tokio task: [`stop`](RunningRelay::stop) waits for
/// its events in flight and saves its checkpoint; `abort` ends it as a crash
/// would.
pub type RunningRelay = es_core::RunningProjection;
