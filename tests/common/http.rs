//! Plain HTTP plumbing: a router served in this process, a raw `GET`, and
//! an address where nothing answers.

use std::io::{Read, Write};
use std::time::Duration;

/// Serves `router` on a loopback port the system picks, until the test's
/// runtime ends; its base URL.
pub async fn serve_router(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// A loopback address where connections are refused, held for as long as
/// the value lives: the port is bound (so no one else gets it) but never
/// listened on, so a connect gets a reset rather than reaching anyone.
pub struct Refused {
    socket: tokio::net::TcpSocket,
}

impl Refused {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind 127.0.0.1:0");
        Refused { socket }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!(
            "http://{}",
            self.socket.local_addr().expect("local address")
        )
    }
}

/// A plain `GET` of `url` (`http://host:port/path`); the whole response,
/// status line and headers included.
pub fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}
