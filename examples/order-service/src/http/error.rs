//! JSON errors: the API's error type, extractors whose rejections are JSON
//! errors, and a layer that turns every other error response into one.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::RuleKind;
use crate::service::ServiceError;

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What kind of error: `rule_violated`, `not_found`, `malformed_json`,
    /// `invalid_body`, `invalid_path`, `invalid_query`,
    /// `unsupported_media_type`, `payload_too_large`, `method_not_allowed`,
    /// `concurrency_conflict` or `internal`.
    #[schema(example = "rule_violated")]
    pub error: String,
    /// The domain rule that refused the command, for `rule_violated` and
    /// some `not_found` errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "no_shipping_before_payment")]
    pub rule: Option<String>,
    /// What went wrong, for people.
    #[schema(example = "the order is not paid; it cannot ship before payment")]
    pub message: String,
}

/// An error response: a status and an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl ApiError {
    /// An error without a rule.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_owned(),
                rule: None,
                message: message.into(),
            },
        }
    }

    /// A refusal by a domain rule.
    pub fn rule(kind: RuleKind, rule: &str, message: impl Into<String>) -> Self {
        let (status, error) = match kind {
            RuleKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            RuleKind::InvalidInput => (StatusCode::UNPROCESSABLE_ENTITY, "rule_violated"),
            RuleKind::Conflict => (StatusCode::CONFLICT, "rule_violated"),
        };
        let mut error = Self::new(status, error, message);
        error.body.rule = Some(rule.to_owned());
        error
    }

    /// The JSON error for a status that arrived without one (from the
    /// router or a layer).
    pub fn from_status(status: StatusCode) -> Self {
        let (error, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no route matches this path"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "this path does not take this method")
            }
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                "the request body is larger than the limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send the body as JSON with `content-type: application/json`",
            ),
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            s if s.is_server_error() => ("internal", "the service failed to answer"),
            _ => ("bad_request", "the request is not valid"),
        };
        Self::new(status, error, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Order(refusal) => {
                ApiError::rule(refusal.kind(), refusal.rule(), refusal.to_string())
            }
            ServiceError::Inventory(refusal) => {
                ApiError::rule(refusal.kind(), refusal.rule(), refusal.to_string())
            }
            ServiceError::NotFound(message) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            conflict @ ServiceError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "concurrency_conflict",
                conflict.to_string(),
            ),
            ServiceError::Internal(error) => {
                tracing::error!(%error, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the service failed; the request id in `x-request-id` finds it in the logs",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonSyntaxError(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
            }
            JsonRejection::JsonDataError(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            other => ApiError::new(other.status(), "bad_request", message),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path parameters whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Gives every error response a JSON body: the router's 404 and 405 and the
/// body limit's 413 come without one.
pub(crate) async fn json_errors<B>(response: Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response.map(axum::body::Body::new);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response.map(axum::body::Body::new);
    }
    let (parts, _) = response.into_parts();
    let mut replaced = ApiError::from_status(status).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    replaced.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    replaced
}
