//! Kafka for es-core: publish an event store's global log to topics, and feed
//! projections of other services from those topics.
//!
//! **Delivery guarantees.** The [`KafkaRelay`] publishes every event of the
//! store at least once, in stream order, moving its checkpoint only past
//! events the broker acknowledged; the [`KafkaProjectionRunner`] commits
//! offsets only after its projection committed and drops redelivered events
//! by stream and version, so a SQLite or PostgreSQL read model sees each
//! event's effect exactly once.
//!
//! Kafka is the bus between services here, never the store of record: the
//! event table is the outbox (no dual write), and per-aggregate reads and
//! optimistic concurrency stay in the database.
//!
//! # Publishing
//!
//! ```no_run
//! use es_core::InMemoryStore;
//! use es_kafka::{KafkaConfig, KafkaRelay, TopicMapping};
//! # #[derive(es_core::Event, serde::Serialize, serde::Deserialize)] enum OrderEvent { Placed }
//!
//! # async fn run() -> es_core::Result<()> {
//! let store = InMemoryStore::new(); // or a SQLite / PostgreSQL store
//! let relay = KafkaRelay::new(store, &KafkaConfig::new("127.0.0.1:9092"))?
//!     .topics(TopicMapping::prefixed("shop."))   // order-7f3c → topic shop.order
//!     .upcast::<OrderEvent>();                    // publish current schema versions
//! let running = relay.spawn();
//! # running.stop().await }
//! ```
//!
//! # Consuming
//!
//! A consuming service runs an ordinary es-core [`Projection`](es_core::Projection)
//! (derived or written by hand) from the topics; its store keeps the
//! deduplication claims ([`Inbox`](es_core::Inbox)) in the same transaction
//! as the read model:
//!
//! ```no_run
//! # use es_kafka::{KafkaConfig, KafkaProjectionRunner};
//! # #[derive(Default)] struct OrderSummary;
//! # #[async_trait::async_trait] impl es_core::Projection for OrderSummary {
//! #   type Context = (); const NAME: &'static str = "order_summary";
//! #   fn event_types() -> Option<Vec<String>> { None }
//! #   async fn handle(&self, _: &mut (), _: &es_core::RecordedEvent) -> Result<(), es_core::BoxError> { Ok(()) }
//! #   async fn reset(&self, _: &mut ()) -> Result<(), es_core::BoxError> { Ok(()) } }
//! # async fn run(store: es_core::InMemoryStore) -> es_core::Result<()> {
//! let runner = KafkaProjectionRunner::new(
//!     &KafkaConfig::new("127.0.0.1:9092"),
//!     "billing-service",
//!     ["shop.order"],
//!     store,
//!     OrderSummary::default(),
//! )?;
//! runner
//!     .run_until(async { tokio::signal::ctrl_c().await.ok(); }) // finishes its batch on Ctrl-C
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Changing the projection's [`VERSION`](es_core::Projection::VERSION), or
//! calling [`KafkaProjectionRunner::rebuild`] with the group stopped, builds
//! the read model again from the oldest offsets the topics keep.
//!
//! # Message format
//!
//! | part | content |
//! | --- | --- |
//! | key | the stream id (`order-7f3c…`) |
//! | value | the event's JSON payload, at the schema version of its headers |
//! | headers | see [`headers::names`]: event id, type, schema version, stream id and version, position, recorded-at, correlation and causation ids, `traceparent`, other metadata as `es-meta-<key>`, `content-type: application/json` |

mod config;
mod consumer;
pub mod headers;
mod relay;

pub use crate::config::KafkaConfig;
pub use crate::consumer::{
    ConsumerStats, KafkaProjectionRunner, ParkedMessage, RunningKafkaProjection,
};
pub use crate::headers::{MessageError, MessageOrigin};
pub use crate::relay::{KafkaRelay, RelayStats, RunningRelay, TopicMapping};
