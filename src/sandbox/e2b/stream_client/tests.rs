//! The stream client's hyper, configured as in production, reading a long
//! process stream from an in-memory connection that counts what hyper reads.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use base64::Engine as _;
use e2b_wire::connect::{FLAG_MESSAGE, encode};
use futures::StreamExt;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use super::*;
use crate::sandbox::ProcessEvent;
use crate::sandbox::e2b::process::process_stream;

/// The client's end of an in-memory connection; counts every byte read.
struct Counted {
    io: DuplexStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read
            .fetch_add(buf.filled().len() - before, Ordering::SeqCst);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// One stdout data frame as an HTTP/1.1 chunk, as envd would send it.
fn chunk_of_output(bytes: usize) -> Vec<u8> {
    let json = format!(
        r#"{{"event":{{"data":{{"stdout":"{}"}}}}}}"#,
        base64::engine::general_purpose::STANDARD.encode(vec![b'x'; bytes])
    );
    let frame = encode(FLAG_MESSAGE, json.as_bytes());
    let mut chunk = format!("{:x}\r\n", frame.len()).into_bytes();
    chunk.extend_from_slice(&frame);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/connect+json\r\n\
transfer-encoding: chunked\r\n\r\n";

#[tokio::test]
async fn reads_no_more_than_a_small_buffer_ahead_of_a_stalled_consumer() {
    // The whole answer is on the connection as soon as the request is, as
    // when envd outpaces the client: hyper could read it all at once.
    let sent = 4 * 1024 * 1024;
    let chunk = chunk_of_output(1000);
    let (client_end, mut server_end) = tokio::io::duplex(2 * sent);
    let mut answer = HEAD.to_vec();
    while answer.len() < sent {
        answer.extend_from_slice(&chunk);
    }
    let server = tokio::spawn(async move {
        let mut request = Vec::new();
        while !request.ends_with(b"start") {
            let mut buf = [0; 1024];
            let n = server_end.read(&mut buf).await.expect("request");
            assert!(n > 0, "the client hung up before its request was whole");
            request.extend_from_slice(&buf[..n]);
        }
        server_end.write_all(&answer).await.expect("written");
        server_end
    });

    let read = Arc::new(AtomicUsize::new(0));
    let connection = Arc::new(Mutex::new(Some(Counted {
        io: client_end,
        read: read.clone(),
    })));
    let connector = tower::service_fn(move |_: ::http::Uri| {
        let io = connection.lock().expect("lock").take();
        Box::pin(async move {
            io.map(TokioIo::new)
                .ok_or_else(|| io::Error::other("one connection only"))
        })
    });
    let client: Client<_, Full<Bytes>> = builder().build(connector);
    let request = ::http::Request::post("http://envd.test/process.Process/Start")
        .body(Full::new(Bytes::from_static(b"start")))
        .expect("request");
    let response = client.request(request).await.expect("response head");
    let mut events = process_stream(
        response.into_body().into_data_stream(),
        Duration::from_secs(5),
    );

    // A consumer that takes a megabyte of output quickly, so hyper's
    // adaptive buffer would grow, and then stops.
    let taken_goal = 1024 * 1024 / chunk.len();
    let mut most_ahead = 0;
    for taken in 1..=taken_goal {
        let event = events.next().await.expect("an event").expect("output");
        assert!(matches!(event, ProcessEvent::Stdout(_)));
        let consumed = HEAD.len() + taken * chunk.len();
        most_ahead = most_ahead.max(read.load(Ordering::SeqCst).saturating_sub(consumed));
    }
    // Stalled: hyper's connection task runs on, with nobody asking.
    let _server_end = server.await.expect("server wrote its answer");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let consumed = HEAD.len() + taken_goal * chunk.len();
    let stalled_ahead = read.load(Ordering::SeqCst).saturating_sub(consumed);

    let bound = 4 * READ_BUFFER;
    assert!(
        most_ahead <= bound,
        "hyper read {most_ahead} bytes ahead of the consumer (bound {bound})"
    );
    assert!(
        stalled_ahead <= bound,
        "hyper read {stalled_ahead} bytes ahead of a stalled consumer (bound {bound})"
    );
    drop(events);
}

#[test]
fn a_connect_timeout_is_a_timeout_and_a_refusal_a_transport_error() {
    let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let chain = Wrapper(Box::new(timed_out));
    assert!(timed_out_somewhere(&chain));
    let refused = Wrapper(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
    assert!(!timed_out_somewhere(&refused));
}

/// An error with a cause, like hyper-util's.
#[derive(Debug)]
struct Wrapper(Box<dyn Error + Send + Sync>);

impl fmt::Display for Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client error (Connect)")
    }
}

impl Error for Wrapper {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.0.as_ref())
    }
}
