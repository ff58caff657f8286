//! The one error type a request can fail with before its stream starts.
//!
//! Every rejection answers `{"error":{"type","message","field"}}` with a
//! status that says whose fault it is. Client mistakes keep their precise
//! message; server faults show a generic one and log the detail.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a request was refused, with the status, `type` and `field` its
/// JSON body carries (see [`ApiError::body`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or a field has the wrong type or value (422).
    #[error("{message}")]
    Invalid {
        /// The request field at fault, when there is one.
        field: Option<String>,
        /// What is wrong, for the client.
        message: String,
    },
    /// The body is JSON but is not an object we can read at all (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the client.
        message: String,
    },
    /// A key the run needs is set nowhere (400).
    #[error("{message}")]
    MissingKey {
        /// The request field that would carry the key.
        field: String,
        /// Which key is missing, and where it can be set.
        message: String,
    },
    /// A size limit was exceeded; the message names the limit (413).
    #[error("{message}")]
    TooLarge {
        /// The request field over the limit; `None` for the whole body.
        field: Option<String>,
        /// Which limit was passed.
        message: String,
    },
    /// The body was not sent as `application/json` (415).
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The bearer token is missing or wrong (401, with
    /// `WWW-Authenticate: Bearer`).
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The operator's setup is wrong (an invalid sandstorm.json, a sandbox
    /// kind this door cannot run). The message names what to fix; it holds
    /// no secrets, only file, field and variable names (500).
    #[error("{message}")]
    Config {
        /// What to fix.
        message: String,
    },
    /// `ds serve` holds as many connections as it allows and this one was
    /// let in only for `GET /health` (503, with `Retry-After`).
    #[error("the server is at its connection limit; try again shortly")]
    Overloaded,
    /// No run with that id, or not one the caller may see: the two look
    /// the same (404).
    #[error("no such run")]
    NoSuchRun,
    /// A follow-up turn came while one is running (409).
    #[error("{message}")]
    TurnRunning {
        /// What is running, and what to do.
        message: String,
    },
    /// The run takes no more turns: it is over and its sandbox is going or
    /// gone (410).
    #[error("{message}")]
    RunOver {
        /// Why, and what to do instead.
        message: String,
    },
    /// The sandbox provider could not be asked (it is down, or refused the
    /// key); the message says which (502).
    #[error("{message}")]
    Provider {
        /// What failed.
        message: String,
    },
    /// A trigger started as many runs as its limits allow; the message
    /// names the limit (429, with `Retry-After`).
    #[error("{message}")]
    TooManyRuns {
        /// Which limit, and when to try again.
        message: String,
        /// Seconds until a start may be taken again.
        retry_after_secs: u64,
    },
    /// Anything else: the client sees a generic message, the log the detail
    /// (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An [`ApiError::Invalid`] that names its field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// The HTTP status: 4xx for the client's mistakes, 500 for ours.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { .. } | ApiError::MissingKey { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Config { .. } | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NoSuchRun => StatusCode::NOT_FOUND,
            ApiError::TurnRunning { .. } => StatusCode::CONFLICT,
            ApiError::RunOver { .. } => StatusCode::GONE,
            ApiError::Provider { .. } => StatusCode::BAD_GATEWAY,
            ApiError::TooManyRuns { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The machine-readable `type` of the error body.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } => "invalid_request",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::MissingKey { .. } => "missing_key",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Config { .. } => "config_error",
            ApiError::Internal(_) => "internal_error",
            ApiError::Overloaded => "overloaded",
            ApiError::NoSuchRun => "not_found",
            ApiError::TurnRunning { .. } => "turn_running",
            ApiError::RunOver { .. } => "run_over",
            ApiError::Provider { .. } => "sandbox_error",
            ApiError::TooManyRuns { .. } => "too_many_runs",
        }
    }

    /// The request field at fault, when the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { field, .. } | ApiError::TooLarge { field, .. } => field.as_deref(),
            ApiError::MissingKey { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The body a client sees.
    pub(crate) fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Internal(_) => "internal error; see the server log".to_owned(),
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind(),
                message,
                field: self.field().map(str::to_owned),
            },
        }
    }
}

/// The JSON body of a refusal: `{"error":{"type","message","field"}}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Serialize)]
pub(crate) struct ErrorDetail {
    /// The machine-readable kind, from [`ApiError::kind`].
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// For people; generic for a 500 from [`ApiError::Internal`].
    pub message: String,
    /// The request field at fault; absent from the JSON when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What an [`ApiError::Overloaded`] tells the client to wait: a slot frees
/// as soon as any connection closes, so a second is plenty.
pub(crate) const RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "request failed");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if let ApiError::TooManyRuns {
            retry_after_secs, ..
        } = &self
        {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(retry_after_secs.max(&1).to_owned()),
            );
            return response;
        }
        let (name, value) = match self {
            ApiError::Unauthorized => (http::header::WWW_AUTHENTICATE, "Bearer"),
            ApiError::Overloaded => (http::header::RETRY_AFTER, RETRY_AFTER_SECS),
            _ => return response,
        };
        response
            .headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
        response
    }
}
