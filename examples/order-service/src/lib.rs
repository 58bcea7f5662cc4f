//! An event-sourced order service on es-core: a small but real service.
//!
//! - **Domain** ([`Order`], [`Inventory`]): pure aggregates written with the
//!   derives. `OrderPlaced` is at schema version 2; stored version 1 payloads
//!   are upcast on read ([`OrderPlacedV1`]).
//! - **Read models** ([`OrderSummary`], [`CustomerTotals`]) kept by the
//!   projections `order_summaries` and `customer_totals`: in memory, or in
//!   the database of the events (the SQLite file, or the PostgreSQL schema),
//!   written in the projection's transaction together with its checkpoint.
//! - **Checkout saga** ([`Checkout`]): reserves stock for placed orders and
//!   confirms or cancels them, idempotently (keys derived from the causing
//!   event), so a crash, a restart or a rebuild never reserves twice.
//! - **HTTP API** ([`router`]): JSON over axum, request ids as correlation
//!   ids, JSON errors that name the broken rule, an OpenAPI document at
//!   `/openapi.json`.
//! - **Kafka** ([`kafka_relay`]): with `--kafka-bootstrap`, every event is
//!   published to the topics `{prefix}order` and `{prefix}inventory` by a
//!   relay that runs beside the projections (at least once, in stream order).
//! - **Runtime** ([`run`]): configuration by flags and environment
//!   ([`Config`]): SQLite by default, PostgreSQL and Kafka by configuration;
//!   structured logs, graceful shutdown.
//!
//! ```no_run
//! use clap::Parser;
//!
//! # async fn start() -> Result<(), es_core::BoxError> {
//! let config = order_service::Config::parse();
//! order_service::run(config, order_service::shutdown_signal()).await
//! # }
//! ```

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use es_core::{BoxError, ContextProvider, InMemoryStore};
use es_kafka::{KafkaConfig, KafkaRelay};
use es_postgres::PgEventStore;
use es_sqlite::SqliteEventStore;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

mod app;
mod checkout;
mod config;
mod domain;
mod http;
mod projections;
mod read_model;
mod service;

pub use crate::app::{kafka_relay, kafka_topics, App, AppStore, KAFKA_RELAY};
pub use crate::checkout::Checkout;
pub use crate::config::{Config, LogFormat, StoreKind};
pub use crate::domain::{
    is_valid_sku, Currency, InvalidCurrency, Inventory, InventoryCommand, InventoryError,
    InventoryEvent, Line, LineV1, Money, Order, OrderCommand, OrderError, OrderEvent, OrderLine,
    OrderPlacedV1, OrderStatus, RuleKind,
};
pub use crate::http::{
    openapi, router, ApiError, ApiJson, ApiPath, ApiQuery, CancelRequest, ErrorBody, Health,
    HttpConfig, ListOrdersQuery, PlaceOrderRequest, RestockRequest, REQUEST_ID,
};
pub use crate::projections::{CustomerTotalsProjection, OrderSummaries};
pub use crate::read_model::{
    CustomerTotals, MemoryReadModels, OrderFilter, OrderOwner, OrderSummary, PgReadModels,
    ReadModelStore, SqliteReadModels, SummaryLine,
};
pub use crate::service::{
    Check, LineView, OrderService, OrderView, ProjectionView, Readiness, RequestMeta, ServiceError,
    StockView,
};

/// Installs the global tracing subscriber: the filter and format of the
/// configuration. Fails if one is installed already.
pub fn init_tracing(config: &Config) -> Result<(), BoxError> {
    let filter = EnvFilter::try_new(&config.log)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
}

/// Completes on ctrl-c, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Opens the configured store, starts the projections (and the Kafka relay
/// when `--kafka-bootstrap` is set) and serves the API until `shutdown`
/// completes; then finishes the requests in flight (up to the grace period),
/// stops the projections after their batch, lets the relay deliver what it
/// has in flight, and closes the store.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    match config.store {
        StoreKind::Memory => {
            tracing::warn!("the memory store keeps nothing after the process exits");
            let store = InMemoryStore::new();
            let relay = relay(&config, &store)?;
            let app = App::with_relay(store, MemoryReadModels::new(), relay);
            serve(app, config, shutdown).await
        }
        StoreKind::Sqlite => {
            let path = config.sqlite_path();
            tracing::info!(path = %path.display(), "opening the SQLite store");
            let store = SqliteEventStore::open(&path)
                .await
                .map_err(|e| format!("cannot open the SQLite store {}: {e}", path.display()))?;
            let read_models = SqliteReadModels::open(store.clone()).await?;
            let relay = relay(&config, &store)?;
            let app = App::with_relay(store.clone(), read_models, relay);
            let served = serve(app, config, shutdown).await;
            store.close().await?;
            served
        }
        StoreKind::Postgres => {
            let url = config.database_url.as_str();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(format!(
                    "--store postgres needs a PostgreSQL URL in --database-url or DATABASE_URL \
                     (postgres://user@host:5432/database), not `{url}`"
                )
                .into());
            }
            tracing::info!(schema = %config.database_schema, "connecting to PostgreSQL");
            let store = PgEventStore::options()
                .schema(config.database_schema.clone())
                .connect(url)
                .await
                .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?;
            let read_models = PgReadModels::open(store.clone()).await?;
            let relay = relay(&config, &store)?;
            let app = App::with_relay(store, read_models, relay);
            // The pool closes when the process exits: es-postgres has no
            // `close`, and closing its pool here makes its notification
            // listener log a reconnection warning.
            serve(app, config, shutdown).await
        }
    }
}

/// The Kafka relay of `--kafka-bootstrap`, or `None` without it.
fn relay<S: AppStore>(config: &Config, store: &S) -> Result<Option<KafkaRelay<S>>, BoxError> {
    let Some(bootstrap) = config
        .kafka_bootstrap
        .as_deref()
        .filter(|b| !b.trim().is_empty())
    else {
        return Ok(None);
    };
    let prefix = config.kafka_topic_prefix.as_str();
    let relay = kafka_relay(store.clone(), &KafkaConfig::new(bootstrap), prefix)
        .map_err(|e| format!("cannot set up the Kafka relay to {bootstrap}: {e}"))?;
    tracing::info!(%bootstrap, topics = ?kafka_topics(prefix), "publishing every event to Kafka");
    Ok(Some(relay))
}

async fn serve<S, R>(
    app: App<S, R>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError>
where
    S: AppStore + ContextProvider<R::Tx>,
    R: ReadModelStore,
{
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    app.start().await;
    tracing::info!(address = %listener.local_addr()?, store = ?config.store, "order-service listening");
    let http = HttpConfig {
        body_limit: config.body_limit,
    };
    let service: Arc<dyn OrderService> = Arc::new(app.clone());
    let (signalled, mut on_signal) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        signalled.send_replace(true);
    };
    let server = axum::serve(listener, router(service, &http)).with_graceful_shutdown(signal);
    let mut server = std::pin::pin!(server.into_future());
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let served = tokio::select! {
        served = &mut server => served,
        () = async { let _ = on_signal.wait_for(|s| *s).await; } => {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(?grace, "requests still in flight after the grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    tracing::info!("HTTP server stopped; stopping the projections after their batch");
    app.shutdown().await;
    served?;
    tracing::info!("order-service stopped");
    Ok(())
}
