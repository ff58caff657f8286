//! The AWS Lambda door: the shared router under lambda_http's streaming
//! runtime, behind a Function URL with `InvokeMode: RESPONSE_STREAM`; and
//! the cron triggers' EventBridge Scheduler schedules, whose invocations
//! are no HTTP events.
//!
//! Its work of its own:
//! - it tells a schedule's invocation from an HTTP one
//!   ([`doors::scheduled::classify`]): the first fires the trigger
//!   ([`doors::scheduled::fire`]) and answers with JSON once the run has
//!   started, or fails the invocation; the second goes to lambda_http's
//!   adapter and the router, streamed, as before;
//! - it gives each request its invocation's deadline as a
//!   [`PlatformDeadline`], so a run ends itself (an `error` event of type
//!   `timeout`, the sandbox destroyed) before Lambda cuts the stream; and it
//!   uses the invocation's request id as the run's request id when the
//!   client sends none, so events and CloudWatch lines match.

use std::pin::Pin;
use std::process::ExitCode;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;
use lambda_http::lambda_runtime::{
    self, Diagnostic, FunctionResponse, LambdaEvent, StreamResponse,
};
use lambda_http::request::LambdaRequest;
use lambda_http::tower::{ServiceBuilder, ServiceExt};
use lambda_http::{Request, RequestExt, Service, StreamAdapter, service_fn};
use sandstorm::app::{AppState, PlatformDeadline};
use sandstorm::doors::scheduled::{self, Invocation};
use sandstorm::doors::{self, Platform};
use sandstorm::env::EnvVars;
use sandstorm::telemetry::{self, Format};
// lambda_http turns on serde_json's `raw_value`: the event stays text
// until it is known to be HTTP.
use serde_json::value::RawValue;

/// A streamed answer's body, whatever the router's body type.
type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;
/// What an invocation answers: a schedule's JSON, or an HTTP stream.
type Answer = FunctionResponse<serde_json::Value, BodyStream>;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(Format::Json, "info");
    // The function's own directory (/var/task), where a bundled
    // sandstorm.json is found.
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/var/task".into());
    let env = EnvVars::from_pairs(std::env::vars());
    let serverless = match doors::serverless(env, &cwd, Platform::Lambda).await {
        Ok(serverless) => serverless,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let http = StreamAdapter::from(
        ServiceBuilder::new()
            .map_request(|request| with_invocation(request, SystemTime::now()))
            .service(serverless.router),
    );
    let state = serverless.state;
    let handler = service_fn(move |event| invoke(state.clone(), http.clone(), event));
    match doors::keep_running(|| lambda_runtime::run(handler.clone())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}

/// One invocation: a schedule's fires its trigger, anything else is an
/// HTTP event for `http` (lambda_http's streaming adapter of the router).
async fn invoke<S, B>(
    state: AppState,
    http: S,
    event: LambdaEvent<Box<RawValue>>,
) -> Result<Answer, Diagnostic>
where
    S: Service<LambdaEvent<LambdaRequest>, Response = StreamResponse<B>>,
    S::Error: std::fmt::Display,
    B: Stream<Item = Result<Bytes, axum::Error>> + Send + 'static,
{
    let LambdaEvent { payload, context } = event;
    let failed = |error: &scheduled::ScheduledError| {
        tracing::error!(%error, kind = error.kind(), "scheduled invocation failed");
        Diagnostic {
            error_type: error.kind().to_owned(),
            error_message: error.to_string(),
        }
    };
    match scheduled::classify(payload.get()) {
        Ok(Invocation::Scheduled(fire)) => {
            let deadline = doors::deadline_from_epoch_ms(context.deadline, SystemTime::now());
            scheduled::fire(&state, &fire, deadline, &context.request_id)
                .await
                .map(FunctionResponse::BufferedResponse)
                .map_err(|error| failed(&error))
        }
        Err(error) => Err(failed(&error)),
        Ok(Invocation::Http) => {
            // What lambda_http itself does with the event, and its error
            // when the event is none it serves.
            let request: LambdaRequest =
                serde_json::from_str(payload.get()).map_err(|e| Diagnostic {
                    error_type: "Sandstorm.UnknownEvent".to_owned(),
                    error_message: format!("neither an HTTP event nor a schedule's input: {e}"),
                })?;
            let response = http
                .oneshot(LambdaEvent::new(request, context))
                .await
                .map_err(|e| Diagnostic {
                    error_type: "Sandstorm.Http".to_owned(),
                    error_message: e.to_string(),
                })?;
            Ok(FunctionResponse::StreamingResponse(StreamResponse {
                metadata_prelude: response.metadata_prelude,
                stream: Box::pin(response.stream),
            }))
        }
    }
}

/// Carries what the invocation knows into the request: its deadline as a
/// [`PlatformDeadline`] and its request id as `x-request-id`, unless the
/// client sent one. `now` is a parameter so the tests can pin the clock.
fn with_invocation(mut request: Request, now: SystemTime) -> Request {
    let Some(context) = request.lambda_context_ref() else {
        return request;
    };
    let deadline = doors::deadline_from_epoch_ms(context.deadline, now);
    let request_id = http::HeaderValue::from_str(&context.request_id).ok();
    match deadline {
        Some(deadline) => {
            request.extensions_mut().insert(PlatformDeadline(deadline));
        }
        None => tracing::warn!(
            deadline_ms = context.deadline,
            "the invocation's deadline is already past; ignoring it (a local emulator?)"
        ),
    }
    if let Some(id) = request_id
        && !request.headers().contains_key("x-request-id")
    {
        request.headers_mut().insert("x-request-id", id);
    }
    request
}

#[cfg(test)]
mod tests {
    //! The adapter against real event shapes: each fixture goes through
    //! lambda_http's own types into an `http::Request`, with a
    //! `lambda_runtime::Context` built from the Runtime API's `/next`
    //! headers and attached where the streaming runtime attaches it.

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};
    use http_body_util::Full;
    use lambda_http::lambda_runtime::{Config, Context, LambdaEvent};
    use lambda_http::request::LambdaRequest;
    use lambda_http::tower::{ServiceExt, service_fn};
    use lambda_http::{Response, Service, StreamAdapter};
    use tokio::time::Instant;

    use super::*;

    const FUNCTION_URL: &str = include_str!("../../tests/data/lambda/function_url.json");
    const API_GATEWAY_V2: &str = include_str!("../../tests/data/lambda/apigw_v2_http.json");
    const EVENTS: [(&str, &str); 2] = [
        ("Function URL", FUNCTION_URL),
        ("API Gateway v2 HTTP", API_GATEWAY_V2),
    ];

    /// The invocation's id, as the Runtime API sends it. It differs from
    /// the `requestContext.requestId` in the events, which is the front
    /// door's id, not the one CloudWatch logs under.
    const INVOCATION_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";
    /// The fixtures' `timeEpoch`, in milliseconds: the test's "now".
    const NOW_MS: u64 = 1_796_414_736_000;
    const BODY: &[u8] = br#"{"prompt":"Say hello in one short sentence"}"#;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    /// The context lambda_runtime builds from a `/next` response.
    fn context(deadline_ms: u64) -> Context {
        let mut headers = HeaderMap::new();
        headers.insert(
            "lambda-runtime-aws-request-id",
            HeaderValue::from_static(INVOCATION_ID),
        );
        headers.insert("lambda-runtime-deadline-ms", deadline_ms.into());
        headers.insert(
            "lambda-runtime-invoked-function-arn",
            HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:sandstorm"),
        );
        Context::new(INVOCATION_ID, Arc::new(Config::default()), &headers)
            .expect("the Runtime API's headers make a context")
    }

    fn event(json: &str) -> LambdaRequest {
        serde_json::from_str(json).expect("the fixture is an HTTP event lambda_http accepts")
    }

    /// The request the streaming runtime hands the service.
    fn request(json: &str, context: Context) -> Request {
        Request::from(event(json)).with_lambda_context(context)
    }

    /// `json` with a header the client sent.
    fn with_client_header(json: &str, name: &str, value: &str) -> String {
        let mut event: serde_json::Value = serde_json::from_str(json).expect("the fixture is JSON");
        event["headers"][name] = value.into();
        event.to_string()
    }

    fn deadline(request: &Request) -> Option<Instant> {
        request
            .extensions()
            .get::<PlatformDeadline>()
            .map(|deadline| deadline.0)
    }

    fn request_id(request: &Request) -> Option<&str> {
        request
            .headers()
            .get("x-request-id")
            .and_then(|id| id.to_str().ok())
    }

    #[test]
    fn the_fixtures_are_the_query_the_door_serves() {
        for (name, json) in EVENTS {
            let request = request(json, context(NOW_MS + 60_000));
            assert_eq!(request.method(), http::Method::POST, "{name}");
            assert_eq!(request.uri().path(), "/query", "{name}");
            assert_eq!(request.body().as_ref(), BODY, "{name}");
            assert_eq!(request_id(&request), None, "{name}: no client id");
        }
    }

    #[test]
    fn the_invocation_deadline_becomes_the_platform_deadline() {
        for (name, json) in EVENTS {
            let request = request(json, context(NOW_MS + 60_000));
            let before = Instant::now();
            let request = with_invocation(request, now());
            let after = Instant::now();
            let deadline = deadline(&request).unwrap_or_else(|| panic!("{name}: no deadline"));
            let left = Duration::from_secs(60);
            assert!(
                before + left <= deadline && deadline <= after + left,
                "{name}: the deadline is not 60 s from the call"
            );
        }
    }

    #[test]
    fn the_invocation_id_is_the_request_id_when_the_client_sends_none() {
        for (name, json) in EVENTS {
            let request = with_invocation(request(json, context(NOW_MS + 60_000)), now());
            assert_eq!(request_id(&request), Some(INVOCATION_ID), "{name}");
        }
    }

    #[test]
    fn a_client_request_id_wins() {
        for (name, json) in EVENTS {
            let json = with_client_header(json, "x-request-id", "client-chosen-id");
            let request = with_invocation(request(&json, context(NOW_MS + 60_000)), now());
            assert_eq!(request_id(&request), Some("client-chosen-id"), "{name}");
            let ids = request.headers().get_all("x-request-id").iter().count();
            assert_eq!(ids, 1, "{name}: one x-request-id, not two");
        }
    }

    /// `cargo lambda watch` sends a deadline that is already past. Taking
    /// it would end every run at once, so the configured limit holds.
    #[test]
    fn a_past_deadline_is_ignored() {
        for (name, json) in EVENTS {
            for past in [NOW_MS - 1, NOW_MS - 60_000, 0] {
                let request = with_invocation(request(json, context(past)), now());
                assert!(
                    deadline(&request).is_none(),
                    "{name}: deadline {past} taken"
                );
                assert_eq!(request_id(&request), Some(INVOCATION_ID), "{name}");
            }
        }
    }

    #[test]
    fn a_request_without_a_context_passes_unchanged() {
        let request = with_invocation(Request::from(event(FUNCTION_URL)), now());
        assert!(deadline(&request).is_none());
        assert_eq!(request_id(&request), None);
    }

    /// Both kinds of invocation through the one handler: a schedule's is
    /// read as such (its trigger looked up, and this sandstorm.json has no
    /// such trigger: the invocation fails, naming both), an HTTP one is
    /// streamed from the router.
    #[tokio::test]
    async fn a_schedules_invocation_is_fired_and_an_http_one_is_streamed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("sandstorm.json"),
            r#"{"triggers": [{"name": "weekly", "type": "cron", "schedule": "0 9 * * MON",
                              "prompt": "Write the weekly report"}]}"#,
        )
        .expect("write sandstorm.json");
        let serverless = doors::serverless(
            EnvVars::from_pairs([
                ("E2B_API_KEY", "e2b_test"),
                ("SANDSTORM_ALLOW_ANONYMOUS", "1"),
            ]),
            dir.path(),
            Platform::Lambda,
        )
        .await
        .expect("the door's application");
        let http = StreamAdapter::from(serverless.router.clone());
        let scheduled = RawValue::from_string(
            include_str!("../../tests/data/lambda/eventbridge_scheduler.json").to_owned(),
        )
        .expect("JSON");
        let error = invoke(
            serverless.state.clone(),
            http.clone(),
            LambdaEvent::new(scheduled, context(NOW_MS + 60_000)),
        )
        .await
        .err()
        .expect("no such trigger here");
        assert_eq!(error.error_type, "Sandstorm.NoSuchTrigger");
        assert!(
            error.error_message.contains("\"daily-digest\"")
                && error.error_message.contains("weekly"),
            "{error:?}"
        );

        let mut health: serde_json::Value = serde_json::from_str(FUNCTION_URL).expect("JSON");
        health["rawPath"] = "/health".into();
        health["requestContext"]["http"]["method"] = "GET".into();
        health["requestContext"]["http"]["path"] = "/health".into();
        health["body"] = serde_json::Value::Null;
        let event = RawValue::from_string(health.to_string()).expect("JSON");
        let answer = invoke(
            serverless.state,
            http,
            LambdaEvent::new(event, context(NOW_MS + 60_000)),
        )
        .await
        .expect("answered");
        let FunctionResponse::StreamingResponse(response) = answer else {
            panic!("an HTTP event is answered with a stream");
        };
        assert_eq!(response.metadata_prelude.status_code, 200);
        let body: Vec<Bytes> = futures::StreamExt::collect::<Vec<_>>(response.stream)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("the body");
        let body: serde_json::Value = serde_json::from_slice(&body.concat()).expect("JSON");
        assert_eq!(body["status"], "ok", "{body}");
    }

    /// The tests above attach the context by hand; this one lets
    /// lambda_http's own streaming adapter do it, so a change in where the
    /// runtime puts the context fails here rather than in production.
    #[tokio::test]
    async fn the_streaming_runtime_path_reaches_the_adapter() {
        let seen = Arc::new(Mutex::new(None));
        let handler = {
            let seen = Arc::clone(&seen);
            service_fn(move |request: Request| {
                let found = (
                    deadline(&request).is_some(),
                    request_id(&request).map(str::to_owned),
                );
                *seen.lock().expect("no test thread panicked") = Some(found);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            })
        };
        let service = ServiceBuilder::new()
            .map_request(|request| with_invocation(request, now()))
            .service(handler);
        let mut adapter = StreamAdapter::from(service);
        let invocation = LambdaEvent::new(event(FUNCTION_URL), context(NOW_MS + 60_000));
        let response = adapter
            .ready()
            .await
            .expect("the service is ready")
            .call(invocation)
            .await
            .expect("the handler answers");
        drop(response);
        let found = seen.lock().expect("no test thread panicked").take();
        assert_eq!(found, Some((true, Some(INVOCATION_ID.to_owned()))));
    }
}
