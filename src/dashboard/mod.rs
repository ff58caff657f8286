//! The dashboard at `GET /`: one page, its script and its stylesheet,
//! compiled into the binary so that every door serves it from the shared
//! router with nothing beside the binary and no build step.
//!
//! The page is public and holds no secret: it reads the API with the bearer
//! token the operator types into it, so auth stays on the API alone. What
//! the API answers (prompts, agent events) is untrusted, and the page shows
//! it as text only; the Content-Security-Policy below is the second line:
//! no script, style or connection but this origin's, no inline script, and
//! no framing (clickjacking a cancel button).

use axum::Router;
use axum::http::{HeaderName, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The path of the page.
pub(crate) const PAGE_PATH: &str = "/";
/// The page's script and stylesheet: under a prefix of ours, so they never
/// shadow an API route.
pub(crate) const SCRIPT_PATH: &str = "/dashboard/app.js";
pub(crate) const STYLE_PATH: &str = "/dashboard/app.css";

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Self only, and nothing the page does not use.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, for any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            PAGE_PATH,
            get(|| async { asset(PAGE, "text/html; charset=utf-8") }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            STYLE_PATH,
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // frame-ancestors for browsers that predate it.
        (header::X_FRAME_OPTIONS, "DENY"),
        // A page another site opened cannot reach this one through
        // `window.opener`.
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        // A deploy's new page shows at the next load, not a day later.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests;
