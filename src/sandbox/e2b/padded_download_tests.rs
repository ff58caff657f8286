//! File reads survive E2B's edge padding HTTP/2 downloads (issue 13,
//! point 6).
//!
//! E2B's edge proxy sends an empty DATA frame after about every 32 KiB of
//! a download. The h2 crate (0.4.20, the locked one) counts empty frames
//! as a flood and closes the connection after 100 of them, so over HTTP/2
//! a download past about 3 MiB fails. The server here is that edge on
//! loopback: TLS offering `h2` and `http/1.1` as E2B's does, padding when
//! it speaks h2. A read through the provider as `E2bProvider::new` builds
//! it must come back whole, and over HTTP/1.1.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{E2bOptions, E2bProvider, Shared};
use crate::sandbox::{SandboxError, SandboxProvider as _, SandboxSpec};

/// E2B's padding interval, and a file long enough for 128 pads: past the
/// 100 empty frames h2 0.4.20 tolerates.
const CHUNK: usize = 32 * 1024;
const FILE_LEN: usize = 128 * CHUNK;

/// The protocol of every request the edge served, in order.
type Seen = Arc<Mutex<Vec<&'static str>>>;

/// The edge on `127.0.0.1`, for `localhost`; returns its port, the
/// certificate to trust, and what it saw.
async fn padding_edge(file: Bytes) -> (u16, CertificateDer<'static>, Seen) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .expect("the certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, file, seen) = (acceptor.clone(), file.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    serve_h2_padded(tls, file, seen).await;
                } else {
                    serve_http1(tls, file, seen).await;
                }
            });
        }
    });
    (port, cert, seen)
}

/// Every DATA frame of the file followed by an empty one, as E2B's edge
/// sends a download over HTTP/2.
async fn serve_h2_padded<T>(io: T, file: Bytes, seen: Seen)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut connection) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = connection.accept().await {
        seen.lock().expect("seen").push("h2");
        let file = file.clone();
        tokio::spawn(async move {
            let response = ::http::Response::builder()
                .header("content-type", "application/octet-stream")
                .body(())
                .expect("a response head");
            let Ok(mut body) = respond.send_response(response, false) else {
                return;
            };
            for start in (0..file.len()).step_by(CHUNK) {
                let chunk = file.slice(start..(start + CHUNK).min(file.len()));
                if body.send_data(chunk, false).is_err()
                    || body.send_data(Bytes::new(), false).is_err()
                {
                    return;
                }
            }
            let _ = body.send_data(Bytes::new(), true);
        });
    }
}

async fn serve_http1<T>(io: T, file: Bytes, seen: Seen)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |_request| {
        seen.lock().expect("seen").push("http/1.1");
        let file = file.clone();
        async move { Ok::<_, std::convert::Infallible>(::http::Response::new(Full::new(file))) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The provider as `E2bProvider::new` builds it, on a TLS setup (as
/// `http::tls_config` makes it) that trusts only the edge's certificate,
/// with the edge at `port` as envd. `E2B_DEBUG`'s create makes a sandbox
/// without asking a control plane, on `E2B_SANDBOX_URL`: the edge.
fn provider(port: u16, cert: CertificateDer<'static>) -> E2bProvider {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("a valid certificate");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut options = E2bOptions::local(&format!("https://localhost:{port}"), "e2b_test");
    options.debug = true;
    E2bProvider::with_tls(options, tls).expect("the provider builds")
}

/// The same provider reading files through the client every other call
/// uses, which offers h2.
fn reading_through_the_shared_client(provider: &E2bProvider) -> E2bProvider {
    let shared = &provider.shared;
    E2bProvider {
        shared: Arc::new(Shared {
            options: shared.options.clone(),
            http: shared.http.clone(),
            files: shared.http.clone(),
            streams: shared.streams.clone(),
            vertex: crate::model_proxy::Accounts::default(),
            starting: shared.starting.clone(),
        }),
    }
}

async fn read(provider: &E2bProvider) -> Result<Bytes, SandboxError> {
    let sandbox = provider
        .create(SandboxSpec::default())
        .await
        .expect("a debug-mode sandbox");
    sandbox.read_file("/home/user/big.bin").await
}

fn file() -> Bytes {
    // A prime period, so no chunk repeats its neighbour.
    (0..=250u8)
        .cycle()
        .take(FILE_LEN)
        .collect::<Vec<_>>()
        .into()
}

/// Fails if file reads offer h2 to the edge, whichever h2 crate is in the
/// tree. The protocol is what decides: an h2 that forgives this padding
/// (see below) reads the file whole, so it is checked first, and its
/// failure says what the read did.
#[tokio::test]
async fn a_padded_download_is_read_whole_over_http1() {
    let (port, cert, seen) = padding_edge(file()).await;
    let answer = read(&provider(port, cert)).await;
    let shown = match &answer {
        Ok(bytes) => format!("{} bytes", bytes.len()),
        Err(err) => err.to_string(),
    };
    assert_eq!(
        *seen.lock().expect("seen"),
        ["http/1.1"],
        "a file read must not offer h2 to an edge that pads h2 downloads (the read: {shown})"
    );
    let bytes = answer.expect("the whole file");
    assert!(
        bytes == file(),
        "the file came back changed ({} bytes)",
        bytes.len()
    );
}

/// The control: through the client that offers h2, the same edge answers
/// in h2, so the test above passes because of the file client and not
/// because this edge never speaks h2.
///
/// What the padding then does depends on the h2 crate, so either outcome
/// passes, and nothing else. The locked h2 0.4.20 counts every empty frame
/// and drops the connection past 100 (ENHANCE_YOUR_CALM, "excessive load
/// generating behavior"): the failure of issue 13, point 6, and what this
/// test sees today. h2 0.4.21 forgives one empty frame after each
/// non-empty one, which is this edge's pattern, so there the read comes
/// back whole (both checked by hand, the second with the lock moved to
/// 0.4.21). That alone would not make HTTP/1.1 unneeded: E2B's edge pads
/// "about every 32 KiB", not provably in this exact pattern. So an h2
/// update fails nothing here; the test above holds either way.
#[tokio::test]
async fn the_shared_client_gets_h2_from_the_same_edge() {
    let (port, cert, seen) = padding_edge(file()).await;
    let answer = read(&reading_through_the_shared_client(&provider(port, cert))).await;
    assert_eq!(*seen.lock().expect("seen"), ["h2"]);
    match answer {
        Err(err) => assert!(
            err.to_string()
                .contains("excessive load generating behavior"),
            "h2 failed on something other than the padding: {err}"
        ),
        Ok(bytes) => assert!(
            bytes == file(),
            "the file came back changed over h2 ({} bytes)",
            bytes.len()
        ),
    }
}
