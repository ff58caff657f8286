//! Trace context across process boundaries, W3C Trace Context both ways:
//! a request's `traceparent` (and `tracestate`) makes its run a child of
//! the caller's trace, and the run's own context goes into its sandbox as
//! `TRACEPARENT`, the variable the Agent SDK's tracing reads.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The caller's trace, from a request's headers: an empty context when it
/// sent none, or one that does not parse.
pub(crate) fn from_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// `context` as the W3C variables a process reads (`TRACEPARENT`, and
/// `TRACESTATE` when there is state); empty for an invalid context.
pub(crate) fn to_env(context: &Context) -> BTreeMap<String, String> {
    let mut fields = Fields::default();
    TraceContextPropagator::new().inject_context(context, &mut fields);
    fields
        .0
        .into_iter()
        .map(|(name, value)| (name.to_ascii_uppercase(), value))
        .collect()
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_traceparent_header_round_trips_to_the_variable() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(PARENT));
        let context = from_headers(&headers);
        let span = context.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            to_env(&context).get("TRACEPARENT").map(String::as_str),
            Some(PARENT)
        );
    }

    #[test]
    fn no_or_a_bad_header_is_no_parent() {
        let mut headers = http::HeaderMap::new();
        assert!(to_env(&from_headers(&headers)).is_empty());
        headers.insert("traceparent", http::HeaderValue::from_static("00-zz-1-01"));
        assert!(!from_headers(&headers).span().span_context().is_valid());
    }
}
