//! The application: repositories, projections, the saga and the optional
//! Kafka relay over one store, with the supervisors that keep them running.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{
    Aggregate, CheckpointStore, ContextProvider, EventStore, ExecuteError, Executed, FailurePolicy,
    Metadata, Position, Projection, ProjectionRunner, ProjectionStatus, Repository, SnapshotStore,
    Version,
};
use es_kafka::{KafkaConfig, KafkaRelay, TopicMapping};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::checkout::Checkout;
use crate::domain::{
    is_valid_sku, Currency, Inventory, InventoryCommand, InventoryEvent, Line, Order, OrderCommand,
    OrderError, OrderEvent,
};
use crate::projections::{CustomerTotalsProjection, OrderSummaries};
use crate::read_model::{CustomerTotals, OrderFilter, OrderSummary, ReadModelStore};
use crate::service::{
    Check, OrderService, OrderView, ProjectionView, Readiness, RequestMeta, ServiceError, StockView,
};

/// What a store must offer the application: the event log, snapshots and
/// checkpoints, cheaply cloned. Every es-core store is one.
pub trait AppStore:
    EventStore + SnapshotStore + CheckpointStore + Clone + std::fmt::Debug + 'static
{
}

impl<T> AppStore for T where
    T: EventStore + SnapshotStore + CheckpointStore + Clone + std::fmt::Debug + 'static
{
}

/// The highest log position this process has appended, by a request or by
/// the saga: what "caught up" means for [`App::settle`]. (A store's head
/// may trail its last commits: PostgreSQL's gap-safe head stays below
/// transactions still open.)
#[derive(Clone, Debug, Default)]
pub(crate) struct Watermark(Arc<AtomicU64>);

impl Watermark {
    /// Notes what a command appended.
    pub(crate) fn note<E>(&self, executed: &Executed<E>) {
        if let Some(committed) = &executed.committed {
            self.0
                .fetch_max(committed.last_position.get(), Ordering::SeqCst);
        }
    }

    fn get(&self) -> Position {
        Position(self.0.load(Ordering::SeqCst))
    }
}

/// The name of the Kafka relay: the key of its checkpoint and of its parked
/// events in the store, and its name among the projections.
pub const KAFKA_RELAY: &str = "kafka_relay";

/// The version the relay writes in its checkpoint.
const KAFKA_RELAY_VERSION: u32 = 1;

/// The topics [`kafka_relay`] publishes to: one per aggregate,
/// `{prefix}order` and `{prefix}inventory`.
///
/// ```
/// assert_eq!(
///     order_service::kafka_topics("shop."),
///     ["shop.order", "shop.inventory"]
/// );
/// ```
pub fn kafka_topics(prefix: &str) -> Vec<String> {
    [Order::NAME, Inventory::NAME]
        .iter()
        .map(|aggregate| format!("{prefix}{aggregate}"))
        .collect()
}

/// A relay that publishes every event of `store` to Kafka, to the topics of
/// [`kafka_topics`]: the message key is the stream id, the payload the
/// event's JSON at its current schema version (a stored `OrderPlaced` v1 goes
/// out as v2). Hand it to [`App::with_relay`], which runs it.
pub fn kafka_relay<S: AppStore>(
    store: S,
    config: &KafkaConfig,
    topic_prefix: &str,
) -> es_core::Result<KafkaRelay<S>> {
    Ok(KafkaRelay::new(store, config)?
        .name(KAFKA_RELAY)
        .topics(TopicMapping::prefixed(topic_prefix))
        .upcast::<OrderEvent>()
        .upcast::<InventoryEvent>())
}

/// How long a supervisor waits before it starts a failed projection again,
/// at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The order service: commands through repositories, queries on read
/// models, and the projections and checkout saga that follow the log.
///
/// `S` is the event store, `R` where the read models live; the store must
/// provide the read models' context (`()` for memory, `SqliteTx` or `PgTx`
/// for read models in the store's database).
///
/// [`App::new`] builds it, [`App::with_relay`] with a Kafka relay too;
/// [`App::start`] starts every projection (and the relay) under a
/// supervisor (a projection that fails is started again after a growing
/// pause); [`App::shutdown`] stops them after their current batch.
pub struct App<S: AppStore, R: ReadModelStore> {
    inner: Arc<Inner<S, R>>,
}

impl<S: AppStore, R: ReadModelStore> Clone for App<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: AppStore, R: ReadModelStore> std::fmt::Debug for App<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

struct Inner<S: AppStore, R: ReadModelStore> {
    store: S,
    read_models: R,
    orders: Repository<Order, S>,
    inventory: Repository<Inventory, S>,
    workers: Vec<Worker>,
    appended: Watermark,
}

impl<S, R> App<S, R>
where
    S: AppStore + ContextProvider<R::Tx>,
    R: ReadModelStore,
{
    /// The application over a store and its read models. Nothing runs yet:
    /// call [`App::start`].
    pub fn new(store: S, read_models: R) -> Self {
        Self::with_relay(store, read_models, None)
    }

    /// The application over a store and its read models that, when `relay`
    /// is given, also publishes every event of the store to Kafka (build the
    /// relay with [`kafka_relay`]).
    ///
    /// The relay runs beside the projections, under a supervisor, as the
    /// projection [`KAFKA_RELAY`] (the name its checkpoint is kept under,
    /// whatever name it was given): [`App::start`], [`App::shutdown`],
    /// [`App::settle`], the readiness checks and the projection list include
    /// it. Nothing runs yet: call [`App::start`].
    pub fn with_relay(store: S, read_models: R, relay: Option<KafkaRelay<S>>) -> Self {
        let orders = Repository::<Order, _>::new(store.clone()).with_cache(1024);
        let inventory = Repository::<Inventory, _>::new(store.clone()).with_cache(1024);
        let summaries =
            ProjectionRunner::new(store.clone(), OrderSummaries::new(read_models.clone()))
                .failure_policy(FailurePolicy::Park);
        let totals = ProjectionRunner::new(
            store.clone(),
            CustomerTotalsProjection::new(read_models.clone()),
        )
        .failure_policy(FailurePolicy::Park);
        let appended = Watermark::default();
        let mut workers = vec![
            Worker::new(Arc::new(summaries)),
            Worker::new(Arc::new(totals)),
            checkout_worker(
                store.clone(),
                Checkout::new(orders.clone(), inventory.clone()).noting(appended.clone()),
            ),
        ];
        if let Some(relay) = relay {
            workers.push(Worker::new(Arc::new(relay.name(KAFKA_RELAY))));
        }
        Self {
            inner: Arc::new(Inner {
                store,
                read_models,
                orders,
                inventory,
                workers,
                appended,
            }),
        }
    }

    /// The event store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The read models.
    pub fn read_models(&self) -> &R {
        &self.inner.read_models
    }

    /// The orders.
    pub fn orders(&self) -> &Repository<Order, S> {
        &self.inner.orders
    }

    /// The stock of each SKU.
    pub fn inventory(&self) -> &Repository<Inventory, S> {
        &self.inner.inventory
    }

    /// The names of the projections, the checkout saga and the Kafka relay
    /// included.
    pub fn projection_names(&self) -> Vec<&'static str> {
        self.inner.workers.iter().map(|w| w.runner.name()).collect()
    }

    /// Starts every projection that is not running, each under a supervisor.
    pub async fn start(&self) {
        for worker in &self.inner.workers {
            worker.start().await;
        }
    }

    /// Stops every projection after its current batch and waits for them.
    pub async fn shutdown(&self) {
        for worker in &self.inner.workers {
            worker.stop().await;
        }
    }

    /// Waits until every projection has handled every event this process
    /// appended and the whole log before it, for tests and tools; fails
    /// after `timeout`.
    pub async fn settle(&self, timeout: Duration) -> Result<(), ServiceError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut behind = Vec::new();
            let head = self
                .inner
                .store
                .head()
                .await
                .map_err(ServiceError::internal)?;
            let appended = self.inner.appended.get();
            if head < appended {
                behind.push(format!("the log's head at {head} of {appended}"));
            }
            for worker in &self.inner.workers {
                let status = worker
                    .runner
                    .status()
                    .await
                    .map_err(ServiceError::internal)?;
                let position = status.checkpoint.map(|c| c.position).unwrap_or_default();
                if position < status.head {
                    behind.push(format!("{} at {position} of {}", status.name, status.head));
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::internal(format!(
                    "projections did not catch up in {timeout:?}: {}",
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn worker(&self, name: &str) -> Option<&Worker> {
        self.inner.workers.iter().find(|w| w.runner.name() == name)
    }

    async fn view(&self, worker: &Worker) -> Result<ProjectionView, ServiceError> {
        let status = worker
            .runner
            .status()
            .await
            .map_err(ServiceError::internal)?;
        let (state, last_error) = worker.state();
        let position = status.checkpoint.map(|c| c.position.get()).unwrap_or(0);
        Ok(ProjectionView {
            name: status.name.to_owned(),
            version: status.version,
            position,
            head: status.head.get(),
            lag: status.head.get().saturating_sub(position),
            parked: status.parked,
            state: state.to_owned(),
            last_error,
        })
    }

    async fn load_order(&self, id: Uuid) -> Result<OrderView, ServiceError> {
        let loaded = self
            .inner
            .orders
            .load(id)
            .await
            .map_err(ServiceError::internal)?;
        if !loaded.state.exists() {
            return Err(OrderError::NotFound.into());
        }
        Ok(OrderView::new(id, &loaded.state, loaded.version.get()))
    }
}

/// The checkout saga's worker. Built where `S` has no other context bound,
/// so that the saga gets the `()` context every store provides.
fn checkout_worker<S: AppStore>(store: S, checkout: Checkout<S>) -> Worker {
    let runner = ProjectionRunner::new(store, checkout).batch_size(50);
    Worker::new(Arc::new(runner))
}

/// Maps a repository's error: refusals keep their rule, conflicts that
/// outlived the retries become [`ServiceError::Conflict`].
fn execute_error<E>(what: &str, error: ExecuteError<E>) -> ServiceError
where
    ServiceError: From<E>,
{
    if error.is_conflict() {
        return ServiceError::Conflict(what.to_owned());
    }
    match error {
        ExecuteError::Rejected(refusal) => refusal.into(),
        ExecuteError::Failed(error) => ServiceError::internal(error),
    }
}

fn check_sku(sku: &str) -> Result<(), ServiceError> {
    if is_valid_sku(sku) {
        Ok(())
    } else {
        Err(OrderError::InvalidSku {
            sku: sku.to_owned(),
        }
        .into())
    }
}

#[async_trait]
impl<S, R> OrderService for App<S, R>
where
    S: AppStore + ContextProvider<R::Tx>,
    R: ReadModelStore,
{
    async fn place_order(
        &self,
        meta: &RequestMeta,
        customer: String,
        currency: Currency,
        lines: Vec<Line>,
    ) -> Result<OrderView, ServiceError> {
        let id = Uuid::now_v7();
        let command = OrderCommand::Place {
            customer,
            currency,
            lines,
        };
        let executed = self
            .inner
            .orders
            .execute_with(id, command, Metadata::correlated(&meta.request_id))
            .await
            .map_err(|e| execute_error("order", e))?;
        self.inner.appended.note(&executed);
        tracing::info!(order_id = %id, "order placed");
        self.load_order(id).await
    }

    async fn change_order(
        &self,
        meta: &RequestMeta,
        id: Uuid,
        command: OrderCommand,
    ) -> Result<OrderView, ServiceError> {
        let executed = self
            .inner
            .orders
            .execute_with(id, command, Metadata::correlated(&meta.request_id))
            .await
            .map_err(|e| execute_error("order", e))?;
        self.inner.appended.note(&executed);
        tracing::info!(order_id = %id, version = %executed.version, "order changed");
        self.load_order(id).await
    }

    async fn order(&self, id: Uuid) -> Result<OrderView, ServiceError> {
        self.load_order(id).await
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, ServiceError> {
        self.inner
            .read_models
            .list_orders(filter)
            .await
            .map_err(ServiceError::Internal)
    }

    async fn customer_totals(
        &self,
        customer: Option<&str>,
    ) -> Result<Vec<CustomerTotals>, ServiceError> {
        self.inner
            .read_models
            .list_totals(customer)
            .await
            .map_err(ServiceError::Internal)
    }

    async fn restock(
        &self,
        meta: &RequestMeta,
        sku: &str,
        quantity: u32,
    ) -> Result<StockView, ServiceError> {
        check_sku(sku)?;
        let executed = self
            .inner
            .inventory
            .execute_with(
                sku,
                InventoryCommand::Restock { quantity },
                Metadata::correlated(&meta.request_id),
            )
            .await
            .map_err(|e| execute_error("stock", e))?;
        self.inner.appended.note(&executed);
        self.stock(sku).await
    }

    async fn stock(&self, sku: &str) -> Result<StockView, ServiceError> {
        check_sku(sku)?;
        let loaded = self
            .inner
            .inventory
            .load(sku)
            .await
            .map_err(ServiceError::internal)?;
        if loaded.version == Version::INITIAL {
            return Err(ServiceError::NotFound(format!(
                "no stock of `{sku}` was ever recorded"
            )));
        }
        Ok(StockView::new(sku.to_owned(), &loaded.state))
    }

    async fn projections(&self) -> Result<Vec<ProjectionView>, ServiceError> {
        let mut views = Vec::with_capacity(self.inner.workers.len());
        for worker in &self.inner.workers {
            views.push(self.view(worker).await?);
        }
        Ok(views)
    }

    async fn rebuild_projection(&self, name: &str) -> Result<ProjectionView, ServiceError> {
        let worker = self
            .worker(name)
            .ok_or_else(|| ServiceError::NotFound(format!("no projection is named `{name}`")))?;
        worker.rebuild().await.map_err(ServiceError::internal)?;
        self.view(worker).await
    }

    async fn readiness(&self) -> Readiness {
        let mut checks = Vec::new();
        let store = match self.inner.store.head().await {
            Ok(head) => Check {
                name: "store".into(),
                ok: true,
                detail: format!("head at position {head}"),
            },
            Err(error) => Check {
                name: "store".into(),
                ok: false,
                detail: error.to_string(),
            },
        };
        checks.push(store);
        for worker in &self.inner.workers {
            let (state, error) = worker.state();
            checks.push(Check {
                name: format!("projection {}", worker.runner.name()),
                ok: matches!(state, "running" | "rebuilding"),
                detail: error.map_or_else(|| state.to_owned(), |e| format!("{state}: {e}")),
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// A projection runner (or the Kafka relay) seen through what the
/// supervisor needs, whatever its projection and context.
#[async_trait]
trait Supervised: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn status(&self) -> es_core::Result<ProjectionStatus>;
    async fn rebuild(&self) -> es_core::Result<()>;
    async fn run(&self, stop: watch::Receiver<bool>) -> es_core::Result<()>;
}

#[async_trait]
impl<P, S> Supervised for ProjectionRunner<P, S>
where
    P: Projection,
    S: EventStore + CheckpointStore + ContextProvider<P::Context> + 'static,
{
    fn name(&self) -> &'static str {
        P::NAME
    }

    async fn status(&self) -> es_core::Result<ProjectionStatus> {
        ProjectionRunner::status(self).await
    }

    async fn rebuild(&self) -> es_core::Result<()> {
        ProjectionRunner::rebuild(self).await
    }

    async fn run(&self, mut stop: watch::Receiver<bool>) -> es_core::Result<()> {
        self.run_until(async move {
            // A dropped sender stops the projection too.
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
    }
}

#[async_trait]
impl<S: AppStore> Supervised for KafkaRelay<S> {
    fn name(&self) -> &'static str {
        KAFKA_RELAY
    }

    async fn status(&self) -> es_core::Result<ProjectionStatus> {
        let store = self.store();
        Ok(ProjectionStatus {
            name: KAFKA_RELAY,
            version: KAFKA_RELAY_VERSION,
            checkpoint: store.load_checkpoint(KAFKA_RELAY).await?,
            head: store.head().await?,
            parked: store.parked(KAFKA_RELAY).await?.len(),
        })
    }

    /// Publishes the whole log again ([`KafkaRelay::reset`]); at-least-once
    /// consumers drop the duplicates. The supervisor has stopped the relay
    /// before.
    async fn rebuild(&self) -> es_core::Result<()> {
        self.reset().await
    }

    async fn run(&self, mut stop: watch::Receiver<bool>) -> es_core::Result<()> {
        self.run_until(async move {
            // A dropped sender stops the relay too.
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await
    }
}

/// What a supervised projection is doing.
#[derive(Clone, Debug, Default)]
enum WorkerState {
    #[default]
    NotStarted,
    Running,
    Retrying(String),
    Rebuilding,
    Stopped,
}

/// One projection under a supervisor task.
struct Worker {
    runner: Arc<dyn Supervised>,
    state: Arc<Mutex<WorkerState>>,
    task: tokio::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl Worker {
    fn new(runner: Arc<dyn Supervised>) -> Self {
        Self {
            runner,
            state: Arc::default(),
            task: tokio::sync::Mutex::new(None),
        }
    }

    fn set_state(state: &Mutex<WorkerState>, new: WorkerState) {
        // Replacing the value cannot leave it half written.
        *state.lock().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// The state's name and the last error while retrying.
    fn state(&self) -> (&'static str, Option<String>) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &*state {
            WorkerState::NotStarted => ("not_started", None),
            WorkerState::Running => ("running", None),
            WorkerState::Retrying(error) => ("retrying", Some(error.clone())),
            WorkerState::Rebuilding => ("rebuilding", None),
            WorkerState::Stopped => ("stopped", None),
        }
    }

    async fn start(&self) {
        let mut task = self.task.lock().await;
        if task.is_some() {
            return;
        }
        *task = Some(self.spawn());
    }

    /// Spawns the supervisor; the projection counts as running from now.
    fn spawn(&self) -> (watch::Sender<bool>, JoinHandle<()>) {
        Self::set_state(&self.state, WorkerState::Running);
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(supervise(
            Arc::clone(&self.runner),
            stopped,
            Arc::clone(&self.state),
        ));
        (stop, handle)
    }

    async fn stop(&self) {
        let mut task = self.task.lock().await;
        Self::stop_locked(&mut task, &self.state).await;
    }

    async fn stop_locked(
        task: &mut Option<(watch::Sender<bool>, JoinHandle<()>)>,
        state: &Mutex<WorkerState>,
    ) {
        if let Some((stop, handle)) = task.take() {
            stop.send_replace(true);
            if let Err(error) = handle.await {
                tracing::error!(%error, "projection supervisor ended abnormally");
            }
            Self::set_state(state, WorkerState::Stopped);
        }
    }

    /// Stops the projection after its batch, rebuilds it and starts it
    /// again if it was running.
    async fn rebuild(&self) -> es_core::Result<()> {
        let mut task = self.task.lock().await;
        let was_running = task.is_some();
        Self::stop_locked(&mut task, &self.state).await;
        Self::set_state(&self.state, WorkerState::Rebuilding);
        tracing::info!(projection = self.runner.name(), "rebuilding projection");
        let result = self.runner.rebuild().await;
        if was_running {
            *task = Some(self.spawn());
        } else {
            Self::set_state(&self.state, WorkerState::Stopped);
        }
        result
    }
}

/// Runs a projection until `stop` says so; after an error, starts it again
/// after a pause that doubles up to [`RETRY_MAX`].
async fn supervise(
    runner: Arc<dyn Supervised>,
    stop: watch::Receiver<bool>,
    state: Arc<Mutex<WorkerState>>,
) {
    let name = runner.name();
    let mut pause = RETRY_FIRST;
    loop {
        if *stop.borrow() {
            break;
        }
        Worker::set_state(&state, WorkerState::Running);
        let started = Instant::now();
        let result = runner.run(stop.clone()).await;
        if *stop.borrow() {
            break;
        }
        let error = match result {
            Ok(()) => "stopped without being asked to".to_owned(),
            Err(error) => error.to_string(),
        };
        tracing::error!(projection = name, %error, retry_in = ?pause, "projection failed; it will start again");
        Worker::set_state(&state, WorkerState::Retrying(error));
        if started.elapsed() > RETRY_MAX {
            pause = RETRY_FIRST;
        }
        let mut waiting = stop.clone();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = waiting.wait_for(|stop| *stop) => break,
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
    tracing::info!(projection = name, "projection stopped");
}
