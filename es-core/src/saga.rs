//! Process managers (sagas): projections that react to events by executing
//! commands, idempotently.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::aggregate::Aggregate;
use crate::repository::{ExecuteError, ExecuteOptions, Executed, Repository};
use crate::store::{EventStore, SnapshotStore};
use crate::types::{Metadata, RecordedEvent};

/// The commands one event causes in a process manager.
///
/// A process manager is a [`Projection`](crate::Projection) whose handler
/// executes commands instead of writing a read model; the
/// [`ProjectionRunner`](crate::ProjectionRunner) gives it a checkpoint,
/// batches and failure handling like any projection. Each command goes
/// through [`Reaction::execute`], which derives the command's idempotency key
/// from the process manager's name, the causing event's id and the step's
/// number, and sets causation and correlation ids. A replay, a retry after a
/// crash between two steps, or a rebuild therefore never doubles an effect:
/// a step that already ran returns its first outcome and appends nothing.
///
/// The steps an event causes must be the same each time it is handled (the
/// same commands in the same order), since their keys are numbered.
///
/// ```
/// use es_core::{Aggregate, BoxError, Envelope, Event, Handles, InMemoryStore, Projection,
///               ProjectionRunner, Reaction, Repository, ResetProjection};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// pub enum OrderEvent { Placed { total: u64 } }
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// pub enum PaymentEvent { Charged { amount: u64 } }
///
/// #[derive(Debug, thiserror::Error)] #[error("never")] pub struct Never;
/// #[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
/// #[aggregate(name = "payment", event = PaymentEvent, command = u64, error = Never)]
/// pub struct Payment { charged: u64 }
/// impl Payment {
///     fn handle(&self, amount: u64) -> Result<Vec<PaymentEvent>, Never> {
///         Ok(vec![PaymentEvent::Charged { amount }])
///     }
///     fn apply(&mut self, PaymentEvent::Charged { amount }: &PaymentEvent) { self.charged += amount }
/// }
///
/// /// Charges every placed order.
/// #[derive(Projection)]
/// #[projection(name = "checkout", events(OrderEvent))]
/// pub struct Checkout { payments: Repository<Payment, InMemoryStore> }
///
/// #[async_trait::async_trait]
/// impl Handles<OrderEvent> for Checkout {
///     async fn handle_event(&self, _: &mut (), event: Envelope<OrderEvent>) -> Result<(), BoxError> {
///         let OrderEvent::Placed { total } = event.event;
///         let step = Reaction::new(Self::NAME, &event);
///         step.execute(&self.payments, &event.stream_id, total).await?;
///         Ok(())
///     }
/// }
/// #[async_trait::async_trait]
/// impl ResetProjection for Checkout {
///     async fn reset_read_model(&self, _: &mut ()) -> Result<(), BoxError> { Ok(()) }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use es_core::{EventStore, ExpectedVersion};
/// let store = InMemoryStore::new();
/// let placed = OrderEvent::Placed { total: 30 }.encode(Default::default())?;
/// store.append(&"order-1".into(), ExpectedVersion::NoStream, vec![placed], &Default::default()).await?;
///
/// let payments = Repository::<Payment, _>::new(store.clone());
/// let runner = ProjectionRunner::new(store.clone(), Checkout { payments: payments.clone() });
/// runner.catch_up().await?;
/// runner.rebuild().await?; // replays the log from the start...
/// runner.catch_up().await?;
/// assert_eq!(payments.load("order-1").await?.state.charged, 30); // ...without charging twice
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Reaction<'a> {
    process: &'a str,
    cause: Cause<'a>,
    step: AtomicU32,
}

/// What a reaction needs to know of the event that caused it.
#[derive(Debug, Clone, Copy)]
struct Cause<'a> {
    event_id: &'a crate::types::EventId,
    metadata: &'a Metadata,
}

impl<'a> Reaction<'a> {
    /// The reaction of the process manager `process` to one event, given as
    /// an [`Envelope`](crate::Envelope) or a [`RecordedEvent`].
    pub fn new(process: &'a str, cause: &'a impl CausingEvent) -> Self {
        Self {
            process,
            cause: Cause {
                event_id: cause.event_id(),
                metadata: cause.metadata(),
            },
            step: AtomicU32::new(0),
        }
    }

    /// The options of the next step: its idempotency key, causation and
    /// correlation ids. Each call numbers a new step.
    pub fn next_options(&self) -> ExecuteOptions {
        let step = self.step.fetch_add(1, Ordering::Relaxed);
        let event_id = self.cause.event_id.to_string();
        let correlation = self
            .cause
            .metadata
            .correlation_id
            .clone()
            .unwrap_or_else(|| event_id.clone());
        ExecuteOptions {
            metadata: Metadata::correlated(correlation).caused_by(&event_id),
            idempotency_key: Some(format!("{}/{}/{}", self.process, event_id, step)),
        }
    }

    /// Executes the next step's command, idempotently.
    pub async fn execute<A, S>(
        &self,
        repository: &Repository<A, S>,
        id: impl fmt::Display,
        command: A::Command,
    ) -> Result<Executed<A::Event>, ExecuteError<A::Error>>
    where
        A: Aggregate,
        S: EventStore + SnapshotStore,
    {
        repository
            .execute_with(id, command, self.next_options())
            .await
    }
}

/// An event that can cause commands: its id and metadata.
pub trait CausingEvent {
    /// The event's id.
    fn event_id(&self) -> &crate::types::EventId;
    /// The event's metadata.
    fn metadata(&self) -> &Metadata;
}

impl CausingEvent for RecordedEvent {
    fn event_id(&self) -> &crate::types::EventId {
        &self.event_id
    }

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

impl<E> CausingEvent for crate::types::Envelope<E> {
    fn event_id(&self) -> &crate::types::EventId {
        &self.event_id
    }

    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}
