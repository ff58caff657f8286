//! The egress server end to end, over real sockets: a client on the Unix
//! socket, upstreams on 127.0.0.1. Names resolve through a fixed table, so
//! no test sends a DNS query, and every address a test lets the proxy dial
//! is on loopback.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::dial::Resolve;
use super::{Body, EgressRules, EgressServer, ModelRoutes, boxed, parse_openings, serve_with};
use crate::model_proxy::{ModelAuth, ModelRoute, RouteGuard};
use crate::sandbox::NetworkPolicy;
use crate::secret::Secret;

/// Every wait in these tests is bounded: a hang is a failure, not a stall.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Names the proxy may look up, and how many lookups it made.
#[derive(Default)]
struct FixedResolver {
    names: HashMap<String, Vec<SocketAddr>>,
    lookups: AtomicUsize,
}

impl Resolve for Arc<FixedResolver> {
    fn lookup(&self, name: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.names.get(name).map(|addrs| {
            addrs
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect()
        });
        Box::pin(async move {
            found.ok_or_else(|| io::Error::other("no such name in the test resolver"))
        })
    }
}

/// A running egress server on a socket in a temporary folder.
struct Proxy {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: Option<EgressServer>,
    resolver: Arc<FixedResolver>,
}

impl Proxy {
    fn start(allow: Option<&[&str]>, open: &str, routes: ModelRoutes) -> Proxy {
        Proxy::start_with(allow, open, routes, FixedResolver::default())
    }

    fn start_with(
        allow: Option<&[&str]>,
        open: &str,
        routes: ModelRoutes,
        resolver: FixedResolver,
    ) -> Proxy {
        let policy = NetworkPolicy {
            allow: allow.map(|a| a.iter().map(|p| (*p).to_owned()).collect()),
        };
        let openings = parse_openings(open).expect("openings parse");
        let rules = EgressRules::new(&policy, openings).expect("valid rules");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("egress.sock");
        let listener = UnixListener::bind(&path).expect("bind the socket");
        let resolver = Arc::new(resolver);
        let server = serve_with(
            listener,
            Arc::new(rules),
            Arc::new(resolver.clone()),
            routes,
        );
        Proxy {
            _dir: dir,
            path,
            server: Some(server),
            resolver,
        }
    }

    async fn client(&self) -> SendRequest<Full<Bytes>> {
        client(&self.path).await
    }

    /// Sends one request on a fresh connection; the status and body text.
    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
        let mut client = self.client().await;
        let response = within("the proxy answers", client.send_request(request))
            .await
            .expect("a response");
        let (parts, body) = response.into_parts();
        let body = within("the body", body.collect()).await.expect("body");
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        (parts.status, parts.headers, text)
    }

    /// Opens a tunnel to `target`; the upgraded stream.
    async fn tunnel(&self, target: &str) -> TokioIo<hyper::upgrade::Upgraded> {
        let mut client = self.client().await;
        let response = within("CONNECT", client.send_request(connect(target)))
            .await
            .expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        TokioIo::new(
            within("the upgrade", hyper::upgrade::on(response))
                .await
                .expect("upgraded"),
        )
    }
}

async fn client(path: &Path) -> SendRequest<Full<Bytes>> {
    let stream = UnixStream::connect(path).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection.with_upgrades());
    sender
}

fn connect(target: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target)
        .body(Full::default())
        .expect("request")
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .body(Full::default())
        .expect("request")
}

/// A TCP server on loopback that answers each read with `echo:` and the
/// bytes, and reports each connection the peer closed.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed, closes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if stream.write_all(&reply).await.is_err() {
                        break;
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    (addr, closes)
}

/// A loopback HTTP server that hands each request to `handle`.
async fn http_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handle(request);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP server that describes each request it gets in its body.
async fn describing_server() -> SocketAddr {
    http_server(|request: Request<Incoming>| async move {
        let mut names: Vec<&str> = request.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let text = format!(
            "{} {} host={host} headers={}",
            request.method(),
            request.uri(),
            names.join(",")
        );
        Response::new(boxed(Full::new(Bytes::from(text))))
    })
    .await
}

/// A port on 127.0.0.1 nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

fn routes() -> ModelRoutes {
    ModelRoutes::new().expect("the client builds")
}

#[tokio::test]
async fn connect_to_loopback_is_refused_by_default() {
    let (addr, _) = echo_server().await;
    let proxy = Proxy::start(None, "", routes());
    let (status, _, body) = proxy.send(connect(&addr.to_string())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        format!("sandstorm egress proxy refused {addr}: loopback address (127.0.0.0/8)")
    );
    for target in [
        "[::1]:443",
        "169.254.169.254:80",
        "10.0.0.5:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let (status, _, body) = proxy.send(connect(target)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{target}: {body}");
        assert!(body.starts_with("sandstorm egress proxy refused"), "{body}");
    }
}

#[tokio::test]
async fn an_opened_port_tunnels_bytes_both_ways() {
    let (addr, _) = echo_server().await;
    let proxy = Proxy::start(None, &addr.to_string(), routes());
    let mut tunnel = proxy.tunnel(&addr.to_string()).await;
    for message in [&b"hello"[..], b"again"] {
        within("write", tunnel.write_all(message))
            .await
            .expect("write");
        let mut reply = vec![0; 5 + message.len()];
        within("read", tunnel.read_exact(&mut reply))
            .await
            .expect("read");
        assert_eq!(reply, [b"echo:", message].concat());
    }
}

#[tokio::test]
async fn another_port_on_an_opened_address_stays_shut() {
    let (opened, _) = echo_server().await;
    let (other, _) = echo_server().await;
    let proxy = Proxy::start(None, &opened.to_string(), routes());
    let (status, _, body) = proxy.send(connect(&other.to_string())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("loopback address"), "{body}");
    let (status, _, body) = proxy.send(get(&format!("http://{other}/"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn plain_http_is_forwarded_only_when_opened() {
    let addr = describing_server().await;
    let shut = Proxy::start(None, "", routes());
    let (status, _, body) = shut.send(get(&format!("http://{addr}/x"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        format!("sandstorm egress proxy refused {addr}: loopback address (127.0.0.0/8)")
    );

    let open = Proxy::start(None, &addr.ip().to_string(), routes());
    let request = Request::builder()
        .uri(format!("http://{addr}/path/to?q=1"))
        .header("host", "spoofed.test")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-keep", "2")
        .body(Full::default())
        .expect("request");
    let (status, _, body) = open.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        format!("GET /path/to?q=1 host={addr} headers=host,x-keep")
    );
}

#[tokio::test]
async fn only_http_urls_are_forwarded() {
    let proxy = Proxy::start(None, "", routes());
    let (status, _, body) = proxy.send(get("https://127.0.0.1:1/")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("https:// goes through CONNECT"), "{body}");
}

/// The documented rule: an allowlist names domains, so it refuses an IP
/// literal, even one the operator opened.
#[tokio::test]
async fn an_allowlist_refuses_an_opened_ip_literal() {
    let (addr, _) = echo_server().await;
    let proxy = Proxy::start(Some(&["example.test"]), &addr.to_string(), routes());
    let (status, _, body) = proxy.send(connect(&addr.to_string())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        format!(
            "sandstorm egress proxy refused {addr}: network.allow is set, and it names \
             domains, never an IP address"
        )
    );
}

/// A name resolves once; of its addresses only the one that passed is
/// dialled (the private one is never tried); a name off the list is never
/// looked up.
#[tokio::test]
async fn names_resolve_once_and_only_checked_addresses_are_dialled() {
    let (addr, _) = echo_server().await;
    let mut resolver = FixedResolver::default();
    let private: SocketAddr = "10.0.0.5:1".parse().expect("addr");
    resolver
        .names
        .insert("mirror.example.test".into(), vec![private, addr]);
    resolver
        .names
        .insert("private.example.test".into(), vec![private]);
    let proxy = Proxy::start_with(
        Some(&["*.example.test"]),
        &addr.to_string(),
        routes(),
        resolver,
    );

    let mut tunnel = proxy
        .tunnel(&format!("Mirror.Example.Test.:{}", addr.port()))
        .await;
    within("write", tunnel.write_all(b"hi"))
        .await
        .expect("write");
    let mut reply = [0; 7];
    within("read", tunnel.read_exact(&mut reply))
        .await
        .expect("read");
    assert_eq!(&reply, b"echo:hi");
    assert_eq!(proxy.resolver.lookups.load(Ordering::SeqCst), 1);

    let (status, _, body) = proxy.send(connect("private.example.test:80")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "sandstorm egress proxy refused private.example.test:80 (10.0.0.5): private address \
         (10.0.0.0/8)"
    );

    let (status, _, body) = proxy.send(connect("elsewhere.test:443")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "sandstorm egress proxy refused elsewhere.test:443: the host is not on the \
         sandbox's network.allow list"
    );
    assert_eq!(proxy.resolver.lookups.load(Ordering::SeqCst), 2);

    let (status, _, body) = proxy.send(connect("missing.example.test:443")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        "sandstorm egress proxy could not resolve missing.example.test:443: no such name in \
         the test resolver"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_prompt_502() {
    let port = closed_port().await;
    let proxy = Proxy::start(None, &format!("127.0.0.1:{port}"), routes());
    let (status, _, body) = proxy.send(connect(&format!("127.0.0.1:{port}"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.starts_with(&format!(
            "sandstorm egress proxy could not connect to 127.0.0.1:{port}: 127.0.0.1:{port}: "
        )),
        "{body}"
    );
}

#[tokio::test]
async fn dropping_the_server_closes_open_tunnels() {
    let (addr, mut closes) = echo_server().await;
    let mut proxy = Proxy::start(None, &addr.to_string(), routes());
    let mut tunnel = proxy.tunnel(&addr.to_string()).await;
    within("write", tunnel.write_all(b"x"))
        .await
        .expect("write");
    let mut reply = [0; 6];
    within("read", tunnel.read_exact(&mut reply))
        .await
        .expect("read");

    drop(proxy.server.take());
    let mut rest = Vec::new();
    let read = within("the tunnel closes", tunnel.read_to_end(&mut rest)).await;
    assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
    within("the upstream sees the close", closes.recv())
        .await
        .expect("closed");
    within("the socket stops accepting", async {
        while UnixStream::connect(&proxy.path).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// What the fake model API saw of one request.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A fake model API on loopback: reports each request, and answers with
/// the chunks the test sends through the returned channel, as they come.
async fn model_server() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Seen>,
    mpsc::Sender<Bytes>,
) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (chunks, chunks_rx) = mpsc::channel::<Bytes>(4);
    let chunks_rx = Arc::new(tokio::sync::Mutex::new(Some(chunks_rx)));
    let addr = http_server(move |request: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        let chunks_rx = chunks_rx.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            let _ = seen_tx.send(Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
            });
            let Some(rx) = chunks_rx.lock().await.take() else {
                return Response::new(boxed(Full::new(Bytes::from_static(b"second"))));
            };
            let stream =
                ReceiverStream::new(rx).map(|chunk| Ok::<_, io::Error>(Frame::data(chunk)));
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "1")
                .header("request-id", "req_1")
                .body(boxed(StreamBody::new(stream)))
                .expect("response")
        }
    })
    .await;
    (addr, seen, chunks)
}

fn model_request(auth: (&str, &str)) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/messages?beta=true")
        .header("host", "127.0.0.1:3128")
        .header(auth.0, auth.1)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")))
        .expect("request")
}

fn register(routes: &ModelRoutes, addr: SocketAddr, auth: ModelAuth) -> RouteGuard {
    routes.register(ModelRoute {
        base_url: format!("http://{addr}/api").parse().expect("url"),
        auth,
        spend: None,
    })
}

#[tokio::test]
async fn the_model_endpoint_puts_the_real_key_on_and_streams_the_answer() {
    let (addr, mut seen, chunks) = model_server().await;
    let routes = routes();
    let guard = register(
        &routes,
        addr,
        ModelAuth::ApiKey(Secret::new("sk-ant-real-key")),
    );
    let proxy = Proxy::start(None, "", routes.clone());

    let mut client = proxy.client().await;
    let response = within(
        "the response head",
        client.send_request(model_request(("x-api-key", guard.token()))),
    )
    .await
    .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["request-id"], "req_1");
    assert!(response.headers().get("x-upstream-hop").is_none());

    let seen = within("the upstream's request", seen.recv())
        .await
        .expect("seen");
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/api/v1/messages?beta=true");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-real-key");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["host"], addr.to_string());
    assert_eq!(seen.body, Bytes::from_static(b"{\"model\":\"m\"}"));
    for value in seen.headers.values() {
        assert!(!value.as_bytes().ends_with(guard.token().as_bytes()));
    }

    // Chunk two does not exist until chunk one has arrived.
    let mut body = response.into_body();
    chunks
        .send(Bytes::from_static(b"event: one\n\n"))
        .await
        .expect("send");
    let first = within("chunk one", body.frame())
        .await
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "event: one\n\n");
    chunks
        .send(Bytes::from_static(b"event: two\n\n"))
        .await
        .expect("send");
    drop(chunks);
    let rest = within("the rest", body.collect()).await.expect("rest");
    assert_eq!(rest.to_bytes(), "event: two\n\n");
}

#[tokio::test]
async fn a_bearer_route_sends_the_real_token_as_bearer() {
    let (addr, mut seen, chunks) = model_server().await;
    drop(chunks);
    let routes = routes();
    let guard = register(&routes, addr, ModelAuth::Bearer(Secret::new("sk-or-real")));
    let proxy = Proxy::start(None, "", routes.clone());
    let mut request = model_request(("authorization", &format!("Bearer {}", guard.token())));
    // The SDK sends both headers when both variables hold the placeholder.
    request
        .headers_mut()
        .insert("x-api-key", guard.token().parse().expect("header value"));
    let (status, _, _) = proxy.send(request).await;
    assert_eq!(status, StatusCode::OK);
    let seen = within("the upstream's request", seen.recv())
        .await
        .expect("seen");
    assert_eq!(seen.headers["authorization"], "Bearer sk-or-real");
    assert!(seen.headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn unknown_missing_and_dead_tokens_get_a_401() {
    let (addr, mut seen, _chunks) = model_server().await;
    let routes = routes();
    let guard = register(
        &routes,
        addr,
        ModelAuth::ApiKey(Secret::new("sk-ant-real-key")),
    );
    let token = guard.token().to_owned();
    let proxy = Proxy::start(None, "", routes.clone());

    let unauthorized = |(status, headers, body): (StatusCode, HeaderMap, String)| {
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "authentication_error");
        assert!(json["error"]["message"].is_string());
        assert!(!body.contains("sk-ant-real-key"));
    };
    unauthorized(
        proxy
            .send(model_request((
                "x-api-key",
                "sk-ant-sandstorm-placeholder-0000",
            )))
            .await,
    );
    unauthorized(proxy.send(model_request(("x-other", "none"))).await);
    drop(guard);
    unauthorized(proxy.send(model_request(("x-api-key", &token))).await);
    assert!(seen.try_recv().is_err(), "nothing reached the upstream");
}

#[tokio::test]
async fn a_path_that_climbs_out_of_the_prefix_is_refused() {
    let (addr, mut seen, _chunks) = model_server().await;
    let routes = routes();
    let guard = register(&routes, addr, ModelAuth::ApiKey(Secret::new("k")));
    let proxy = Proxy::start(None, "", routes.clone());
    let mut request = model_request(("x-api-key", guard.token()));
    *request.uri_mut() = "/v1/../../admin".parse().expect("uri");
    let (status, _, body) = proxy.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("invalid_request_error"), "{body}");
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn an_unreachable_model_api_is_a_502_in_anthropics_shape() {
    let port = closed_port().await;
    let routes = routes();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let guard = register(
        &routes,
        addr,
        ModelAuth::ApiKey(Secret::new("sk-ant-real-key")),
    );
    let proxy = Proxy::start(None, "", routes.clone());
    let (status, _, body) = proxy
        .send(model_request(("x-api-key", guard.token())))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["error"]["type"], "api_error");
    assert!(!body.contains("sk-ant-real-key"));
}

/// The clouds' clients, told to skip their own auth, send no credential:
/// the token comes in the base URL's path and goes no further.
#[tokio::test]
async fn a_token_in_the_path_names_the_route_and_stays_here() {
    let (addr, mut seen, chunks) = model_server().await;
    drop(chunks);
    let routes = routes();
    let guard = register(
        &routes,
        addr,
        ModelAuth::ApiKey(Secret::new("foundry-real")),
    );
    let proxy = Proxy::start(None, "", routes.clone());
    // Foundry's client sends this dummy when it skips its auth.
    let mut request = model_request(("authorization", "Bearer skip-foundry-auth"));
    *request.uri_mut() = format!("/sandstorm/{}/v1/messages?beta=true", guard.token())
        .parse()
        .expect("uri");
    let (status, _, body) = proxy.send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = within("the upstream's request", seen.recv())
        .await
        .expect("seen");
    assert_eq!(seen.uri, "/api/v1/messages?beta=true");
    assert_eq!(seen.headers["x-api-key"], "foundry-real");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_wrong_or_dead_token_in_the_path_gets_a_401() {
    let (addr, mut seen, _chunks) = model_server().await;
    let routes = routes();
    let guard = register(&routes, addr, ModelAuth::ApiKey(Secret::new("k-real")));
    let token = guard.token().to_owned();
    let proxy = Proxy::start(None, "", routes.clone());
    let request = |path: &str| {
        // A valid header token does not rescue a path that names another.
        let mut request = model_request(("x-api-key", &token));
        *request.uri_mut() = path.parse().expect("uri");
        request
    };
    for path in [
        "/sandstorm/sk-ant-sandstorm-placeholder-0000/v1/messages".to_owned(),
        "/sandstorm/".to_owned(),
        format!("/sandstorm/{token}x/v1/messages"),
    ] {
        let (status, _, body) = proxy.send(request(&path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(body.contains("authentication_error"), "{body}");
    }
    drop(guard);
    let (status, _, _) = proxy
        .send(request(&format!("/sandstorm/{token}/v1/messages")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(seen.try_recv().is_err(), "nothing reached the upstream");
}
