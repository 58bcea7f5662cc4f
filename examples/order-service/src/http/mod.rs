//! The HTTP API: JSON over axum, documented with utoipa.
//!
//! Every route is registered together with its OpenAPI description
//! (`utoipa_axum::routes!`), so `/openapi.json` cannot drift from the router.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::{Currency, Line, Money, OrderCommand, OrderStatus};
use crate::read_model::{CustomerTotals, OrderFilter, OrderSummary};
use crate::service::{OrderService, OrderView, ProjectionView, Readiness, RequestMeta, StockView};

mod error;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};

/// The header that carries the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// Settings of the HTTP layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub body_limit: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
        }
    }
}

type AppState = Arc<dyn OrderService>;

/// The API's OpenAPI description; the routes add their paths to it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-service",
        description = "An event-sourced order service: orders, stock, read models and a checkout saga."
    ),
    tags(
        (name = "orders", description = "Place and change orders; read them from their aggregate or from the order list"),
        (name = "customers", description = "Per-customer totals from the `customer_totals` read model"),
        (name = "inventory", description = "Stock per SKU, reserved by the checkout saga"),
        (name = "admin", description = "Projections: position, lag, parked events, rebuilds"),
        (name = "health", description = "Liveness and readiness")
    )
)]
struct ApiDoc;

/// The API's OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(place_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(add_line))
        .routes(routes!(remove_line))
        .routes(routes!(pay_order))
        .routes(routes!(ship_order))
        .routes(routes!(cancel_order))
        .routes(routes!(all_customer_totals))
        .routes(routes!(customer_totals))
        .routes(routes!(restock))
        .routes(routes!(get_stock))
        .routes(routes!(list_projections))
        .routes(routes!(rebuild_projection))
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// The API's router over a service, with request ids, tracing, the body
/// limit and JSON errors.
pub fn router(service: Arc<dyn OrderService>, config: &HttpConfig) -> Router {
    let (router, api) = api_router().split_for_parts();
    let api = Arc::new(api);
    router
        .route(
            "/openapi.json",
            get(move || {
                let api = Arc::clone(&api);
                async move { Json(api) }
            }),
        )
        .fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) })
        .with_state(service)
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &Request<axum::body::Body>| {
                            let request_id = request
                                .headers()
                                .get(REQUEST_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default();
                            tracing::info_span!(
                                "request",
                                method = %request.method(),
                                path = %request.uri().path(),
                                request_id,
                            )
                        })
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(axum::middleware::map_response(error::json_errors))
                .layer(RequestBodyLimitLayer::new(config.body_limit)),
        )
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The id becomes the events' correlation id: keep only a sane one.
        let request_id = parts
            .headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
            .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
        Ok(RequestMeta { request_id })
    }
}

/// The body of `POST /orders`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// Who orders: 1 to 64 characters.
    #[schema(example = "ada")]
    pub customer: String,
    /// The order's currency; every price must be in it.
    pub currency: Currency,
    /// At least one line.
    pub lines: Vec<Line>,
}

/// The body of `POST /orders/{id}/cancel`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Why; a default reason when empty.
    #[serde(default)]
    #[schema(example = "changed my mind")]
    pub reason: String,
}

/// The body of `POST /inventory/{sku}/restock`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockRequest {
    /// How many units arrived; at least 1.
    #[schema(example = 10, minimum = 1)]
    pub quantity: u32,
}

/// The filters of `GET /orders`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListOrdersQuery {
    /// Only orders with this status.
    pub status: Option<OrderStatus>,
    /// Only orders of this customer.
    pub customer: Option<String>,
    /// At most this many orders, oldest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The body of `GET /health`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    #[schema(example = "ok")]
    pub status: String,
}

/// Places an order. The checkout saga then reserves its stock and confirms
/// it (status `confirmed`) or cancels it.
#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = PlaceOrderRequest,
    responses(
        (status = 201, description = "The order, placed", body = OrderView,
            headers(("location" = String, description = "The order's URL"))),
        (status = 400, description = "Malformed JSON or unknown fields", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "A rule refused the order (no lines, zero quantity, mixed currencies, …)", body = ErrorBody),
    ))]
async fn place_order(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiJson(body): ApiJson<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let order = service
        .place_order(&meta, body.customer, body.currency, body.lines)
        .await?;
    let location = HeaderValue::from_str(&format!("/orders/{}", order.id))
        .map_err(|e| ApiError::from(crate::service::ServiceError::internal(e)))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(order),
    )
        .into_response())
}

/// Lists orders from the `order_summaries` read model, oldest first.
#[utoipa::path(get, path = "/orders", tag = "orders",
    params(ListOrdersQuery),
    responses(
        (status = 200, description = "The orders", body = Vec<OrderSummary>),
        (status = 400, description = "An unknown filter or value", body = ErrorBody),
    ))]
async fn list_orders(
    State(service): State<AppState>,
    ApiQuery(query): ApiQuery<ListOrdersQuery>,
) -> Result<Json<Vec<OrderSummary>>, ApiError> {
    let filter = OrderFilter {
        status: query.status,
        customer: query.customer,
        limit: query.limit.unwrap_or(100).min(1000),
    };
    Ok(Json(service.list_orders(&filter).await?))
}

/// Reads an order from its aggregate (always up to date).
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
    ))]
async fn get_order(
    State(service): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(service.order(id).await?))
}

async fn change(
    service: &AppState,
    meta: &RequestMeta,
    id: Uuid,
    command: OrderCommand,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(service.change_order(meta, id, command).await?))
}

/// Adds a line to an unpaid order; the checkout saga reserves its stock.
#[utoipa::path(post, path = "/orders/{id}/lines", tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    request_body = Line,
    responses(
        (status = 200, description = "The order with the line", body = OrderView),
        (status = 400, description = "Malformed JSON or unknown fields", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "The order is paid, shipped or cancelled, or has a line for the SKU", body = ErrorBody),
        (status = 422, description = "Zero quantity, another currency or an invalid SKU", body = ErrorBody),
    ))]
async fn add_line(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(line): ApiJson<Line>,
) -> Result<Json<OrderView>, ApiError> {
    change(&service, &meta, id, OrderCommand::AddLine(line)).await
}

/// Removes a line from an unpaid order (not its last line).
#[utoipa::path(delete, path = "/orders/{id}/lines/{sku}", tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id"),
           ("sku" = String, Path, description = "The line's SKU")),
    responses(
        (status = 200, description = "The order without the line", body = OrderView),
        (status = 404, description = "No such order or line", body = ErrorBody),
        (status = 409, description = "The order is paid, shipped or cancelled, or it is the last line", body = ErrorBody),
    ))]
async fn remove_line(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiPath((id, sku)): ApiPath<(Uuid, String)>,
) -> Result<Json<OrderView>, ApiError> {
    change(&service, &meta, id, OrderCommand::RemoveLine { sku }).await
}

/// Pays a confirmed order: the amount must be its total, in its currency.
#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    request_body = Money,
    responses(
        (status = 200, description = "The paid order", body = OrderView),
        (status = 400, description = "Malformed JSON or unknown fields", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Stock not yet reserved, already paid, shipped or cancelled", body = ErrorBody),
        (status = 422, description = "Not the total, or another currency", body = ErrorBody),
    ))]
async fn pay_order(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(amount): ApiJson<Money>,
) -> Result<Json<OrderView>, ApiError> {
    change(&service, &meta, id, OrderCommand::Pay { amount }).await
}

/// Ships a paid order; the checkout saga takes its stock out of the warehouse.
#[utoipa::path(post, path = "/orders/{id}/ship", tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The shipped order", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Not paid, already shipped or cancelled", body = ErrorBody),
    ))]
async fn ship_order(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<OrderView>, ApiError> {
    change(&service, &meta, id, OrderCommand::Ship).await
}

/// Cancels an order that has not shipped; a paid order is refunded and the
/// checkout saga releases its stock.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path, description = "The order's id")),
    request_body = CancelRequest,
    responses(
        (status = 200, description = "The cancelled order", body = OrderView),
        (status = 400, description = "Malformed JSON or unknown fields", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Already shipped or cancelled", body = ErrorBody),
    ))]
async fn cancel_order(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<CancelRequest>,
) -> Result<Json<OrderView>, ApiError> {
    let command = OrderCommand::Cancel {
        reason: body.reason,
    };
    change(&service, &meta, id, command).await
}

/// Every customer's totals, from the `customer_totals` read model.
#[utoipa::path(get, path = "/customers/totals", tag = "customers",
    responses((status = 200, description = "Totals by customer and currency", body = Vec<CustomerTotals>)))]
async fn all_customer_totals(
    State(service): State<AppState>,
) -> Result<Json<Vec<CustomerTotals>>, ApiError> {
    Ok(Json(service.customer_totals(None).await?))
}

/// One customer's totals, one entry per currency.
#[utoipa::path(get, path = "/customers/{customer}/totals", tag = "customers",
    params(("customer" = String, Path, description = "The customer's id")),
    responses(
        (status = 200, description = "The customer's totals by currency", body = Vec<CustomerTotals>),
        (status = 404, description = "The customer has no orders", body = ErrorBody),
    ))]
async fn customer_totals(
    State(service): State<AppState>,
    ApiPath(customer): ApiPath<String>,
) -> Result<Json<Vec<CustomerTotals>>, ApiError> {
    let totals = service.customer_totals(Some(&customer)).await?;
    if totals.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("customer `{customer}` has no orders"),
        ));
    }
    Ok(Json(totals))
}

/// Records units of a SKU arriving in the warehouse.
#[utoipa::path(post, path = "/inventory/{sku}/restock", tag = "inventory",
    params(("sku" = String, Path, description = "The SKU")),
    request_body = RestockRequest,
    responses(
        (status = 200, description = "The SKU's stock", body = StockView),
        (status = 400, description = "Malformed JSON or unknown fields", body = ErrorBody),
        (status = 422, description = "Zero quantity or an invalid SKU", body = ErrorBody),
    ))]
async fn restock(
    State(service): State<AppState>,
    meta: RequestMeta,
    ApiPath(sku): ApiPath<String>,
    ApiJson(body): ApiJson<RestockRequest>,
) -> Result<Json<StockView>, ApiError> {
    Ok(Json(service.restock(&meta, &sku, body.quantity).await?))
}

/// The stock of a SKU.
#[utoipa::path(get, path = "/inventory/{sku}", tag = "inventory",
    params(("sku" = String, Path, description = "The SKU")),
    responses(
        (status = 200, description = "The SKU's stock", body = StockView),
        (status = 404, description = "No stock of this SKU was ever recorded", body = ErrorBody),
    ))]
async fn get_stock(
    State(service): State<AppState>,
    ApiPath(sku): ApiPath<String>,
) -> Result<Json<StockView>, ApiError> {
    Ok(Json(service.stock(&sku).await?))
}

/// The projections (read models and the checkout saga): position, lag,
/// parked events and state.
#[utoipa::path(get, path = "/admin/projections", tag = "admin",
    responses((status = 200, description = "Every projection", body = Vec<ProjectionView>)))]
async fn list_projections(
    State(service): State<AppState>,
) -> Result<Json<Vec<ProjectionView>>, ApiError> {
    Ok(Json(service.projections().await?))
}

/// Rebuilds a projection: stops it after its batch, clears its read model
/// and checkpoint, and starts it again from the start of the log.
#[utoipa::path(post, path = "/admin/projections/{name}/rebuild", tag = "admin",
    params(("name" = String, Path, description = "The projection's name")),
    responses(
        (status = 200, description = "The projection, restarted from the start", body = ProjectionView),
        (status = 404, description = "No projection has this name", body = ErrorBody),
    ))]
async fn rebuild_projection(
    State(service): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectionView>, ApiError> {
    Ok(Json(service.rebuild_projection(&name).await?))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: the store answers and every projection runs.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the checks say why", body = Readiness),
    ))]
async fn ready(State(service): State<AppState>) -> Response {
    let readiness = service.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}
