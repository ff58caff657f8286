//! The keyless model endpoint: the agent calls the model through it with
//! a placeholder token, and the endpoint puts the real credential on.
//!
//! It runs wherever the agent cannot: on the host for a local sandbox
//! (behind the sandbox's egress bridge, `src/sandbox/local/egress/`), and
//! in an E2B VM as root ([`in_sandbox`], the `sandstorm-model-proxy`
//! binary). Either way every model call of a run passes through it, so it
//! is also where the run's spending caps hold ([`crate::spend`]).
//!
//! Each started process gets its own [`ModelRoute`], registered under a
//! fresh random token. [`split`] puts that token where the key variables
//! were, points the client at the sandbox's proxy port, and keeps what the
//! route is made from; [`keyless`] registers the route on the host, and in
//! an E2B VM the model proxy makes the same route from the same variables
//! ([`ModelRoute::from_config`]). A request that arrives with a known token is
//! sent on to the route's upstream with the token swapped for the real
//! credential, and the answer streams back unbuffered, so server-sent
//! events reach the agent as they come. The route goes away when its
//! [`RouteGuard`] drops: the endpoint serves only its own run, and only
//! while that run lives.
//!
//! The cloud providers (Amazon Bedrock, Google Vertex AI, Azure AI
//! Foundry) work the same way ([`clouds`]): their keys, the Vertex service
//! account included, stay here; the CLI is told to skip its own
//! authentication and to use a base URL that carries the token in its path
//! (`/sandstorm/<token>/...`), and the endpoint signs (SigV4) or puts the
//! key or access token on.
//!
//! The upstream is the operator's configuration (Anthropic, a custom
//! `ANTHROPIC_BASE_URL` such as OpenRouter, a cloud provider), so it is not
//! subject to the sandbox's address policy. Tokens are 122 random bits:
//! looking one up in a hash map leaks nothing worth timing.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use reqwest::Url;

use relay::{Body, Direction, Meter, boxed, metered, strip_hop_by_hop};

mod callback;
mod clouds;
mod in_sandbox;
pub(crate) mod relay;
mod sigv4;
mod upstream;
mod vertex;

pub(crate) use callback::{
    CALL_FOR as CALLBACK_WINDOW, TOKEN_VARIABLE as CALLBACK_TOKEN_VARIABLE,
    URL_VARIABLE as CALLBACK_URL_VARIABLE,
};
pub use in_sandbox::main;
pub(crate) use in_sandbox::{
    BINARY, CAPS_VARIABLE, CapsJson, LISTEN, RECORD_VARIABLE, Report, TOKEN_VARIABLE,
    WATCH_PID_VARIABLE,
};

use crate::keys::{ANTHROPIC_KEY_VARIABLE, VERTEX_SERVICE_ACCOUNT_VARIABLE};
use crate::sandbox::SandboxError;
use crate::secret::Secret;
use crate::spend::usage::UsageReader;
use crate::spend::{Refusal, SpendMeter};
pub(crate) use upstream::ModelAuth;
pub(crate) use vertex::Accounts;

/// The bearer-token variable the Agent SDK reads.
const AUTH_TOKEN_VARIABLE: &str = "ANTHROPIC_AUTH_TOKEN";
/// The variable that points the Agent SDK at its API.
const BASE_URL_VARIABLE: &str = "ANTHROPIC_BASE_URL";
/// How long a connection to the upstream may take to open.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Where the SDK goes without `ANTHROPIC_BASE_URL`.
const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// What every placeholder token starts with: shaped like an Anthropic key,
/// so a client that checks the shape is content, and named so nobody takes
/// it for one.
const TOKEN_PREFIX: &str = "sk-ant-sandstorm-placeholder-";
/// The largest request body the endpoint takes: the Messages API's own
/// limit is 32 MB.
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Anthropic's API-key header.
pub(super) const X_API_KEY: &str = "x-api-key";
/// What starts a path that carries its token: `/sandstorm/<token>/...`.
/// The cloud providers' CLI clients send no credential header when told to
/// skip their own authentication, so their base URL carries it.
pub(super) const PATH_TOKEN_PREFIX: &str = "/sandstorm/";

/// Where one process's model requests go, with what credential.
#[derive(Clone)]
pub(crate) struct ModelRoute {
    /// The API's base, e.g. `https://api.anthropic.com`; a path prefix
    /// (`https://openrouter.ai/api`) is kept before the request's path.
    pub(crate) base_url: Url,
    /// The real credential.
    pub(crate) auth: ModelAuth,
    /// The run's tally and caps, when its spend is metered.
    pub(crate) spend: Option<Arc<SpendMeter>>,
}

impl ModelRoute {
    /// The base a request's path goes under: the route's own, or on a
    /// cloud's own endpoint the host that answers that path
    /// ([`clouds::host_for`]).
    fn base_for(&self, path: &str) -> Cow<'_, Url> {
        let Some(host) = clouds::host_for(&self.base_url, path) else {
            return Cow::Borrowed(&self.base_url);
        };
        let mut url = self.base_url.clone();
        match url.set_host(Some(&host)) {
            Ok(()) => Cow::Owned(url),
            Err(_) => Cow::Borrowed(&self.base_url),
        }
    }
}

impl fmt::Debug for ModelRoute {
    // A base URL may carry user info or a query with a key in it: show
    // its origin and path only. The auth's Debug redacts the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRoute")
            .field(
                "base_url",
                &format_args!(
                    "{}{}",
                    self.base_url.origin().ascii_serialization(),
                    self.base_url.path()
                ),
            )
            .field("auth", &self.auth)
            .field("spend", &self.spend)
            .finish()
    }
}

/// The routes of live processes by placeholder token, and the one HTTP
/// client they all go upstream through. Cheap to clone; clones share both.
#[derive(Clone)]
pub(crate) struct ModelRoutes {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Mutex<HashMap<String, Arc<ModelRoute>>>,
    client: reqwest::Client,
    /// Vertex token sources, shared by every run of one service account.
    vertex: vertex::Accounts,
}

impl fmt::Debug for ModelRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRoutes")
            .field("routes", &crate::sync::lock(&self.inner.routes).len())
            .finish_non_exhaustive()
    }
}

impl ModelRoutes {
    /// An empty registry, with its upstream client: no redirects followed
    /// (a redirect is the SDK's to see, and must not carry the key
    /// elsewhere), connections pooled across every sandbox.
    pub(crate) fn new() -> Result<Self, SandboxError> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SandboxError::Other {
                op: "building the model endpoint's http client",
                message: e.to_string(),
            })?;
        Ok(ModelRoutes {
            inner: Arc::new(Inner {
                routes: Mutex::new(HashMap::new()),
                client,
                vertex: vertex::Accounts::default(),
            }),
        })
    }

    /// Registers `route` under a fresh placeholder token; the route lives
    /// as long as the returned guard.
    #[cfg(test)]
    pub(crate) fn register(&self, route: ModelRoute) -> RouteGuard {
        self.register_as(new_token(), route)
    }

    /// Registers `route` under `token`, one made elsewhere by [`split`]
    /// (the E2B model proxy gets its run's from the server).
    pub(crate) fn register_as(&self, token: String, route: ModelRoute) -> RouteGuard {
        crate::sync::lock(&self.inner.routes).insert(token.clone(), Arc::new(route));
        RouteGuard {
            routes: self.clone(),
            token,
        }
    }

    /// The Vertex token sources its routes share.
    pub(crate) fn accounts(&self) -> &vertex::Accounts {
        &self.inner.vertex
    }

    /// The route registered under `token`, while its guard lives.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<ModelRoute>> {
        crate::sync::lock(&self.inner.routes).get(token).cloned()
    }
}

/// Keeps one route registered; dropping it makes its token worthless.
pub(crate) struct RouteGuard {
    routes: ModelRoutes,
    token: String,
}

impl RouteGuard {
    /// The placeholder token the process gets instead of the key.
    #[cfg(test)]
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for RouteGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteGuard").finish_non_exhaustive()
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        crate::sync::lock(&self.routes.inner.routes).remove(&self.token);
    }
}

/// Turns a process environment keyless: registers a route to its model API
/// with its real credential, leaves the process a placeholder token in its
/// place, and points the client at `endpoint` (the sandbox's proxy port,
/// `http://127.0.0.1:3128`). The route lives as long as the returned guard:
/// keep it for the process's life. See [`split`] for what the process
/// keeps; every model call through the route is counted by `spend`, and
/// refused once one of its caps is reached.
///
/// Returns `None` when there is no credential to keep, and an error when
/// the configuration is unusable, as [`split`] does.
pub(crate) fn keyless(
    envs: &mut BTreeMap<String, String>,
    routes: &ModelRoutes,
    endpoint: &str,
    spend: Option<Arc<SpendMeter>>,
) -> Result<Option<RouteGuard>, String> {
    let Some(split) = split(envs, endpoint, &routes.inner.vertex, spend)? else {
        return Ok(None);
    };
    Ok(Some(routes.register_as(split.token, split.route)))
}

/// A process environment split in two by [`split`]: the process keeps the
/// rest, with `token` in it.
pub(crate) struct Split {
    /// The placeholder the process holds instead of the credential.
    pub(crate) token: String,
    /// The variables the route is made from ([`ModelRoute::from_config`]):
    /// what a model endpoint in the sandbox (the E2B model proxy) is given
    /// to make the same route.
    pub(crate) config: BTreeMap<String, String>,
    /// The route, made here from `config`.
    pub(crate) route: ModelRoute,
}

/// Splits a process environment into its model route's configuration and
/// the environment the process runs with instead, which calls the model
/// through `endpoint` with a fresh placeholder token.
///
/// A cloud provider that is switched on wins, as in the CLI ([`clouds`]):
/// its credentials (every cloud's) and the Anthropic key variables leave
/// the environment, its skip-auth switch is set, and its base URL variable
/// becomes `endpoint/sandstorm/<token>`.
///
/// Otherwise the credential is `ANTHROPIC_AUTH_TOKEN` as a bearer token
/// when it is set, else `ANTHROPIC_API_KEY` as `x-api-key`, as the key
/// resolution leaves them (with a custom endpoint and a token it empties
/// the API key); the placeholder goes in each of them that holds a key,
/// and `ANTHROPIC_BASE_URL` becomes `endpoint`. A variable that is empty
/// stays empty: the SDK reads empty as unset, and that is what it was told.
///
/// [`VERTEX_SERVICE_ACCOUNT_VARIABLE`], the Vertex key file's contents for
/// a provider whose endpoint keeps them, never stays.
///
/// Returns `None`, leaving `envs` otherwise untouched, when there is no
/// credential to keep: the process then runs as it would without the
/// endpoint. An error when a base URL is not an http(s) URL or a region is
/// malformed: the key must not go in and the model cannot be reached
/// without it.
pub(crate) fn split(
    envs: &mut BTreeMap<String, String>,
    endpoint: &str,
    accounts: &vertex::Accounts,
    spend: Option<Arc<SpendMeter>>,
) -> Result<Option<Split>, String> {
    let config = route_config(envs);
    envs.remove(VERTEX_SERVICE_ACCOUNT_VARIABLE);
    let Some((cloud, route)) = routed(&config, accounts, spend)? else {
        return Ok(None);
    };
    let token = new_token();
    match cloud {
        Some(cloud) => {
            for name in clouds::credentials().chain([ANTHROPIC_KEY_VARIABLE, AUTH_TOKEN_VARIABLE]) {
                envs.remove(name);
            }
            envs.insert(cloud.skip_auth.to_owned(), "1".to_owned());
            envs.insert(
                cloud.base_url.to_owned(),
                format!(
                    "{}{PATH_TOKEN_PREFIX}{token}",
                    endpoint.trim_end_matches('/')
                ),
            );
        }
        None => placeholders(envs, &token, endpoint),
    }
    Ok(Some(Split {
        token,
        config,
        route,
    }))
}

/// The variables of `envs` a route is made from, set and not empty: the
/// Anthropic ones ([`CREDENTIAL_VARIABLES`]), every cloud's, and the Vertex
/// key file's contents.
fn route_config(envs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    CREDENTIAL_VARIABLES
        .into_iter()
        .chain(clouds::variables())
        .chain([VERTEX_SERVICE_ACCOUNT_VARIABLE])
        .filter_map(|name| {
            let value = envs.get(name).filter(|v| !v.is_empty())?;
            Some((name.to_owned(), value.clone()))
        })
        .collect()
}

/// The route `config` calls for, and the cloud it goes to (`None`:
/// Anthropic's API or a custom endpoint).
fn routed(
    config: &BTreeMap<String, String>,
    accounts: &vertex::Accounts,
    spend: Option<Arc<SpendMeter>>,
) -> Result<Option<(Option<&'static clouds::Cloud>, ModelRoute)>, String> {
    let service_account = config
        .get(VERTEX_SERVICE_ACCOUNT_VARIABLE)
        .map(String::as_str);
    if let Some((cloud, base_url, auth)) = clouds::route(config, service_account, accounts)? {
        let route = ModelRoute {
            base_url,
            auth,
            spend,
        };
        return Ok(Some((Some(cloud), route)));
    }
    Ok(ModelRoute::from_env(config, spend)?.map(|route| (None, route)))
}

/// The variables that hold the Anthropic credential and say where it goes.
const CREDENTIAL_VARIABLES: [&str; 3] = [
    ANTHROPIC_KEY_VARIABLE,
    AUTH_TOKEN_VARIABLE,
    BASE_URL_VARIABLE,
];

impl ModelRoute {
    /// The route a [`Split::config`] calls for, made the way [`split`]
    /// made it: the model proxy in an E2B sandbox makes its run's with
    /// this. `None` when it holds no credential.
    pub(crate) fn from_config(
        config: &BTreeMap<String, String>,
        accounts: &vertex::Accounts,
        spend: Option<Arc<SpendMeter>>,
    ) -> Result<Option<ModelRoute>, String> {
        Ok(routed(config, accounts, spend)?.map(|(_, route)| route))
    }
}

impl ModelRoute {
    /// The Anthropic route a process environment calls for: `ANTHROPIC_AUTH_TOKEN`
    /// as a bearer token when set, else `ANTHROPIC_API_KEY`, to
    /// `ANTHROPIC_BASE_URL` or Anthropic's API. `None` when no variable
    /// holds a key; an error when the base URL is not an http(s) URL.
    fn from_env(
        envs: &BTreeMap<String, String>,
        spend: Option<Arc<SpendMeter>>,
    ) -> Result<Option<ModelRoute>, String> {
        // A placeholder another endpoint handed out is not a key: it must
        // reach that endpoint as it is (an E2B runner under the emulator,
        // whose sandboxes are local ones, holds its model proxy's).
        let value = |name: &str| {
            envs.get(name)
                .filter(|v| !v.is_empty() && !v.starts_with(TOKEN_PREFIX))
        };
        let auth = if let Some(token) = value(AUTH_TOKEN_VARIABLE) {
            ModelAuth::Bearer(Secret::new(token.as_str()))
        } else {
            match value(ANTHROPIC_KEY_VARIABLE) {
                Some(key) => ModelAuth::ApiKey(Secret::new(key.as_str())),
                None => return Ok(None),
            }
        };
        let base = value(BASE_URL_VARIABLE).map_or(DEFAULT_BASE_URL, String::as_str);
        let base_url = match Url::parse(base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => url,
            // The key must not go in, and the run cannot work without it:
            // refuse, saying why (the value itself may hold credentials).
            Ok(_) | Err(_) => {
                return Err(format!(
                    "{BASE_URL_VARIABLE} is not an http(s) URL, so no model endpoint can be \
                     made for the sandbox; fix it in the server's environment"
                ));
            }
        };
        Ok(Some(ModelRoute {
            base_url,
            auth,
            spend,
        }))
    }
}

/// Puts `token` in each key variable that holds a key (an empty one stays
/// empty: the SDK reads empty as unset) and points `ANTHROPIC_BASE_URL` at
/// `endpoint`.
fn placeholders(envs: &mut BTreeMap<String, String>, token: &str, endpoint: &str) {
    for name in [ANTHROPIC_KEY_VARIABLE, AUTH_TOKEN_VARIABLE] {
        if let Some(value) = envs.get_mut(name).filter(|v| !v.is_empty()) {
            token.clone_into(value);
        }
    }
    envs.insert(BASE_URL_VARIABLE.to_owned(), endpoint.to_owned());
}

/// A fresh placeholder token: shaped like an Anthropic key, 122 random
/// bits.
fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Answers one origin-form request: finds the route by its token and
/// relays the request upstream with the real credential.
pub(crate) async fn serve(request: Request<Incoming>, routes: &ModelRoutes) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let Some(route) = route_of(&mut parts.uri, &parts.headers, routes) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "sandstorm model endpoint: missing or unknown placeholder token \
             (it is valid only while its run lives)",
        );
    };
    // Held whole: a signature (SigV4) covers the body's hash, and the
    // spend cap reads the model it names before anything goes upstream.
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!(
                    "sandstorm model endpoint: a request body may hold at most {} MiB",
                    MAX_REQUEST_BODY / (1024 * 1024)
                ),
            );
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "sandstorm model endpoint: the request body could not be read",
            );
        }
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Some(url) = upstream_url(&route.base_for(path_and_query), path_and_query) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "sandstorm model endpoint: the path may not hold . or .. segments or backslashes",
        );
    };
    let target = format!("{}{}", url.origin().ascii_serialization(), parts.uri.path());

    strip_hop_by_hop(&mut parts.headers);
    for name in [header::HOST, header::AUTHORIZATION, header::EXPECT] {
        parts.headers.remove(name);
    }
    parts.headers.remove(X_API_KEY);
    if let Err(e) = route
        .auth
        .apply(&parts.method, &url, &mut parts.headers, &body)
        .await
    {
        tracing::warn!(error = %e, "the model credential could not be applied");
        return error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            &format!("sandstorm model endpoint: {e}"),
        );
    }

    // A call the run pays for: its spend is counted, and a cap may refuse
    // it. Counting tokens and listing models cost nothing.
    let billed = route
        .spend
        .as_ref()
        .filter(|_| is_model_call(&parts.method, parts.uri.path()));
    let requested = billed.and_then(|_| requested_model(parts.uri.path(), &body));
    if let Some(spend) = billed
        && let Err(refusal) = spend.admit(requested.as_deref())
    {
        tracing::info!(reason = %refusal, "refused a model call");
        return refused(&refusal);
    }

    let meter = Meter::new("model", target);
    let sent = routes
        .inner
        .client
        .request(parts.method, url)
        .headers(parts.headers)
        .body(reqwest::Body::wrap(metered(
            Full::new(body),
            &meter,
            Direction::Up,
        )))
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e.without_url(), "the model endpoint could not reach its upstream");
            return error(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "sandstorm model endpoint: the model API could not be reached",
            );
        }
    };
    meter.answered(response.status());
    let (mut parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = metered(body, &meter, Direction::Down);
    let Some(spend) = billed else {
        return Response::from_parts(parts, boxed(body));
    };
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let reader = UsageReader::new(
        header(header::CONTENT_TYPE),
        header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
    );
    let mut tap = UsageTap {
        spend: spend.clone(),
        requested,
        succeeded: parts.status.is_success(),
        reader: Some(reader),
    };
    let body = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            tap.push(data);
        }
        frame
    });
    Response::from_parts(parts, boxed(body))
}

/// Feeds one answer to its usage reader, and counts the call with the
/// run's meter as soon as the answer is complete, or when it is dropped
/// unfinished (the agent hung up): what was used until then is paid for.
struct UsageTap {
    spend: Arc<SpendMeter>,
    requested: Option<String>,
    /// Whether the upstream answered 2xx.
    succeeded: bool,
    reader: Option<UsageReader>,
}

impl UsageTap {
    fn push(&mut self, chunk: &[u8]) {
        if let Some(reader) = &mut self.reader
            && reader.push(chunk)
        {
            self.record();
        }
    }

    fn record(&mut self) {
        if let Some(reader) = self.reader.take() {
            self.spend
                .record(self.requested.as_deref(), &reader.finish(), self.succeeded);
        }
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        self.record();
    }
}

/// Whether a request is a call the run pays for: a Messages call
/// (`/v1/messages`, under any base path), or Bedrock's and Vertex's ways of
/// making one. Token counts, model lists and anything else pass uncounted.
fn is_model_call(method: &Method, path: &str) -> bool {
    const CALLS: [&str; 5] = [
        "/v1/messages",
        "/invoke",
        "/invoke-with-response-stream",
        ":rawPredict",
        ":streamRawPredict",
    ];
    method == Method::POST && CALLS.iter().any(|call| path.ends_with(call))
}

/// The model a call names: `model` in its JSON body (the Messages API), or
/// in its path (`/model/{id}/invoke` on Bedrock, `/models/{id}:rawPredict`
/// on Vertex).
fn requested_model(path: &str, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    if let Ok(Named { model: Some(model) }) = serde_json::from_slice(body) {
        return Some(model);
    }
    let mut segments = path.split('/');
    segments.find(|s| *s == "model" || *s == "models")?;
    let id = segments.next()?.replace("%3A", ":").replace("%3a", ":");
    let id = id.split_once(":raw").map_or(id.as_str(), |(id, _)| id);
    let id = id.split_once(":streamRaw").map_or(id, |(id, _)| id);
    (!id.is_empty()).then(|| id.to_owned())
}

/// The answer to a call a cap or a missing price stopped. A reached cap is
/// Anthropic's `billing_error` (402), which the SDK reports and does not
/// retry; `x-should-retry: false` says so to any client.
fn refused(refusal: &Refusal) -> Response<Body> {
    let (status, kind) = match refusal {
        Refusal::CapReached { .. } => (StatusCode::PAYMENT_REQUIRED, "billing_error"),
        Refusal::Unpriced { .. } | Refusal::NoModel => {
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        Refusal::Unmetered => (StatusCode::BAD_GATEWAY, "api_error"),
    };
    let mut response = error(status, kind, &format!("sandstorm: {refusal}"));
    response
        .headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    response
}

/// The route a request names: by the token in its path, which is then
/// stripped from `uri`, or for a path without one by a token in its
/// headers.
fn route_of(uri: &mut Uri, headers: &HeaderMap, routes: &ModelRoutes) -> Option<Arc<ModelRoute>> {
    let Some((token, rest)) = path_token(uri) else {
        return tokens(headers).find_map(|token| routes.get(token));
    };
    let route = routes.get(&token)?;
    *uri = rest;
    Some(route)
}

/// `/sandstorm/<token>/rest?query` as the token and `/rest?query`; `None`
/// for a path that does not start with [`PATH_TOKEN_PREFIX`].
fn path_token(uri: &Uri) -> Option<(String, Uri)> {
    let after = uri.path().strip_prefix(PATH_TOKEN_PREFIX)?;
    let (token, rest) = match after.find('/') {
        Some(slash) => after.split_at(slash),
        None => (after, "/"),
    };
    let rest = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    Some((token.to_owned(), Uri::try_from(rest).ok()?))
}

/// The tokens a request offers: `x-api-key`, then a bearer token.
fn tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    let api_key = headers.get(X_API_KEY).and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    api_key.into_iter().chain(bearer)
}

/// `base` with the request's path after its own path prefix, and the
/// request's query. `None` for a path that could climb out of the prefix:
/// URL parsing resolves `..` (and `%2e%2e`, and `\` as `/`), so
/// `/../other` would otherwise reach another path on the upstream host
/// with the real key.
fn upstream_url(base: &Url, path_and_query: &str) -> Option<Url> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let climbs = path.contains('\\')
        || path.split('/').any(|segment| {
            let segment = segment.to_ascii_lowercase().replace("%2e", ".");
            segment == "." || segment == ".."
        });
    if climbs {
        return None;
    }
    let mut url = base.clone();
    url.set_path(&format!("{}{path}", base.path().trim_end_matches('/')));
    url.set_query(query);
    url.set_fragment(None);
    Some(url)
}

/// An error in Anthropic's shape, so the SDK reports it as it would one
/// of the API's own.
fn error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message },
    });
    let mut response = Response::new(boxed(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests;
