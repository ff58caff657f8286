//! The test toolkit's own tests: the SSE parser against the spec, split at
//! every chunk border, and the pieces the other tests trust to tell them
//! where things listen.

mod common;

use common::sse::{self, Decoder, Event};
use serde_json::json;

fn event(data: &str) -> Event {
    Event {
        event: "message".to_owned(),
        data: data.to_owned(),
        id: None,
    }
}

/// Feeds `body` in two chunks split at every byte, and whole; every way
/// must give the same events.
fn decode_at_every_border(body: &[u8]) -> Vec<Event> {
    let whole = Decoder::new().feed(body);
    for at in 0..=body.len() {
        let mut decoder = Decoder::new();
        let mut events = decoder.feed(&body[..at]);
        events.extend(decoder.feed(&body[at..]));
        assert_eq!(events, whole, "split at byte {at} of {body:?}");
    }
    whole
}

#[test]
fn data_with_and_without_the_space_after_the_colon_is_the_same_field() {
    let events = decode_at_every_border(b"data: {\"a\":1}\n\ndata:{\"a\":2}\n\ndata:  two\n\n");
    assert_eq!(
        events,
        [event("{\"a\":1}"), event("{\"a\":2}"), event(" two")]
    );
}

#[test]
fn comments_are_skipped_and_an_event_ends_only_at_a_blank_line() {
    let body = b": keepalive\n\ndata: one\n: a comment inside\ndata: two\n\n: keepalive\n\n";
    assert_eq!(decode_at_every_border(body), [event("one\ntwo")]);
}

#[test]
fn lines_end_in_lf_cr_or_crlf() {
    let events = decode_at_every_border(b"data: a\r\n\r\ndata: b\r\rdata: c\n\r\n");
    assert_eq!(events, [event("a"), event("b"), event("c")]);
}

#[test]
fn an_unfinished_event_at_the_end_of_the_stream_is_dropped() {
    assert_eq!(
        decode_at_every_border(b"data: whole\n\ndata: cut"),
        [event("whole")]
    );
    assert_eq!(decode_at_every_border(b"data: cut\n"), []);
}

#[test]
fn event_names_ids_and_unknown_fields() {
    let body = "\u{feff}event: done\nid: 7\nretry: 10\nfoo: bar\ndata\n\ndata: x\n\n";
    let events = decode_at_every_border(body.as_bytes());
    assert_eq!(
        events,
        [
            Event {
                event: "done".to_owned(),
                data: String::new(),
                id: Some("7".to_owned()),
            },
            Event {
                event: "message".to_owned(),
                data: "x".to_owned(),
                // The last event ID carries over.
                id: Some("7".to_owned()),
            },
        ]
    );
}

#[test]
fn an_event_type_the_toolkit_never_saw_passes_through_and_a_closing_one_is_set_apart() {
    let body = "data: {\"type\":\"result\"}\n\ndata: {\"type\":\"novel\"}\n\n\
                data: {\"type\":\"done\",\"status\":\"success\"}\n\n";
    let events = sse::json_events(body);
    assert_eq!(events.len(), 3);
    let (run, closing) = sse::split_closing(&events);
    assert_eq!(run, [json!({"type": "result"}), json!({"type": "novel"})]);
    assert_eq!(closing, Some(&json!({"type": "done", "status": "success"})));
    let (run, closing) = sse::split_closing(&events[..2]);
    assert_eq!((run.len(), closing), (2, None));
}

#[tokio::test]
async fn a_refused_address_refuses() {
    let refused = common::http::Refused::new();
    let error = reqwest::get(refused.url())
        .await
        .expect_err("nothing listens there");
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn the_listening_ports_of_a_child_are_read_from_the_kernel() {
    // The emulator binary prints its address: the kernel must agree.
    let (process, url) = common::emulator::start_binary(common::emulator::binary_command()).await;
    let port: u16 = url
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a port in the URL");
    assert_eq!(common::process::listening_ports(process.pid()), [port]);
}

#[test]
fn the_sockets_of_a_process_are_read_from_the_kernel_with_both_ends() {
    use common::process::{Socket, sockets};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    let unspecified_v4: SocketAddr = "0.0.0.0:0".parse().expect("an address");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listening = listener.local_addr().expect("its address");
    let client = TcpStream::connect(listening).expect("connect");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let mut expected = vec![
        Socket {
            tcp: true,
            local: listening,
            remote: unspecified_v4,
            listening: true,
        },
        Socket {
            tcp: true,
            local: client.local_addr().expect("its address"),
            remote: listening,
            listening: false,
        },
        Socket {
            tcp: false,
            local: udp.local_addr().expect("its address"),
            remote: unspecified_v4,
            listening: false,
        },
    ];
    // IPv6 where the machine has it.
    let v6 = TcpListener::bind("[::1]:0").ok();
    if let Some(v6) = &v6 {
        expected.push(Socket {
            tcp: true,
            local: v6.local_addr().expect("its address"),
            remote: "[::]:0".parse().expect("an address"),
            listening: true,
        });
    }
    let found = sockets(std::process::id());
    for socket in &expected {
        assert!(found.contains(socket), "{socket:?} not in {found:#?}");
    }
}

/// The scripted provider (`testing` feature) behind the real router on a
/// real socket: no bubblewrap, no E2B, and the stream reads back whole.
#[cfg(feature = "testing")]
#[tokio::test]
async fn the_scripted_provider_serves_integration_tests_without_a_sandbox() {
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use sandstorm::app::{AppState, app};
    use sandstorm::doors::PROVIDERS;
    use sandstorm::env::EnvVars;
    use sandstorm::sandbox::ProcessEvent;
    use sandstorm::sandbox::provider::Setup;
    use sandstorm::sandbox::scripted::{Scripted, Then};
    use sandstorm::settings::{Profile, SandboxChoice, Settings};

    let lines = [
        r#"{"type":"system","subtype":"init"}"#,
        r#"{"type":"result"}"#,
    ]
    .map(|line| ProcessEvent::Stdout(Bytes::from(format!("{line}\n"))));
    let provider = Arc::new(Scripted::new(lines.to_vec(), Then::Exit(0)));
    let counters = provider.counters();
    let env = EnvVars::from_pairs([("ANTHROPIC_API_KEY", common::keys::ANTHROPIC_KEY)]);
    let choice = SandboxChoice {
        catalog: PROVIDERS,
        requested: None,
        setup: Setup::CheckOnly,
        executable: None,
    };
    let settings = Settings::build(&env, Path::new("/nonexistent"), Profile::Server, choice)
        .expect("settings");
    let url = common::http::serve_router(app(AppState::new(settings, provider))).await;

    let events = common::stream::query(&url, json!({"prompt": "go"})).await;

    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["system", "result"]);
    assert_eq!((counters.created(), counters.destroyed()), (1, 1));
}
