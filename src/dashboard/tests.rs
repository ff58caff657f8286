//! The page and its assets as the router serves them.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = routes::<()>()
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_page_and_its_assets_carry_the_security_headers() {
    for (path, content_type) in [
        (PAGE_PATH, "text/html; charset=utf-8"),
        (SCRIPT_PATH, "text/javascript; charset=utf-8"),
        (STYLE_PATH, "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty(), "{path}");
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        for directive in csp.split(';') {
            assert!(
                !directive.contains("unsafe")
                    && !directive.contains("http")
                    && !directive.contains('*'),
                "only this origin, nothing inline: {directive}"
            );
        }
    }
}

#[test]
fn the_page_loads_only_its_own_assets_and_nothing_inline() {
    assert!(PAGE.contains(&format!("src=\"{SCRIPT_PATH}\"")));
    assert!(PAGE.contains(&format!("href=\"{STYLE_PATH}\"")));
    // Inline script and style would be refused by the policy; a CDN would
    // break the page offline.
    assert_eq!(PAGE.matches("<script").count(), 1, "one script, ours");
    assert!(!PAGE.contains("<style") && !PAGE.contains("style=\""));
    for text in [PAGE, SCRIPT, STYLE] {
        assert!(!text.contains("http://") && !text.contains("https://"));
    }
    // Data from the API only ever goes in as text.
    assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML"));
    assert!(!SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("document.write"));
    // The token never goes in a URL, nor in storage that outlives the tab,
    // nor in a log.
    assert!(!SCRIPT.contains("localStorage") && !SCRIPT.contains("console."));
}
