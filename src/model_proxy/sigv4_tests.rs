//! Our SigV4 against botocore's: the vectors it recorded, and botocore
//! itself when the repository's `.venv` has it (scripts/setup makes it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::*;

const CASES: &str = include_str!("../../tests/fixtures/sigv4/cases.json");
const VECTORS: &str = include_str!("../../tests/fixtures/sigv4/vectors.json");
const SCRIPT: &str = "tests/fixtures/sigv4/botocore_sign.py";

fn cases() -> Vec<Value> {
    serde_json::from_str(CASES).expect("cases.json")
}

fn text<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field].as_str().unwrap_or_default()
}

/// The headers our signer adds to `case`'s request, by name. The request
/// also carries headers of the agent's that must stay out of the
/// signature; botocore saw only the case's own.
fn ours(case: &Value) -> Map<String, Value> {
    let signer = AwsSigner {
        region: text(case, "region").to_owned(),
        access_key_id: Secret::new(text(case, "access_key_id")),
        secret_access_key: Secret::new(text(case, "secret_access_key")),
        session_token: case["session_token"].as_str().map(Secret::new),
    };
    let mut headers = HeaderMap::new();
    for (name, value) in case["headers"].as_object().expect("headers") {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value.as_str().expect("text")).expect("value"),
        );
    }
    for (name, value) in [
        ("anthropic-version", "2023-06-01"),
        ("x-stainless-retry-count", "0"),
        ("user-agent", "claude-cli/2.1.332"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    let before: Vec<HeaderName> = headers.keys().cloned().collect();
    let url = Url::parse(text(case, "url")).expect("url");
    let method = Method::from_bytes(text(case, "method").as_bytes()).expect("method");
    let time = UNIX_EPOCH + Duration::from_secs(case["time"].as_u64().expect("time"));
    signer
        .sign(
            &method,
            &url,
            &mut headers,
            text(case, "body").as_bytes(),
            time,
        )
        .expect("signs");
    headers
        .iter()
        .filter(|(name, _)| !before.contains(name))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Value::String(value.to_str().expect("text").to_owned()),
            )
        })
        .collect()
}

fn assert_matches(theirs: &[Value], what: &str) {
    let cases = cases();
    assert_eq!(theirs.len(), cases.len(), "{what}");
    for (case, theirs) in cases.iter().zip(theirs) {
        assert_eq!(
            &Value::Object(ours(case)),
            theirs,
            "{what}: {}",
            text(case, "name")
        );
    }
}

#[test]
fn signatures_match_the_vectors_botocore_recorded() {
    let vectors: Vec<Value> = serde_json::from_str(VECTORS).expect("vectors.json");
    assert_matches(&vectors, "recorded vectors");
}

#[test]
fn signatures_match_botocore_live() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !python.is_file() {
        eprintln!("no .venv (scripts/setup makes it): only the recorded vectors were checked");
        return;
    }
    let mut child = Command::new(python)
        .arg(root.join(SCRIPT))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), CASES.as_bytes())
        .expect("cases written");
    let output = child.wait_with_output().expect("python ends");
    assert!(output.status.success(), "{SCRIPT} failed");
    let theirs: Vec<Value> = serde_json::from_slice(&output.stdout).expect("json");
    assert_matches(&theirs, "botocore");
}

#[test]
fn a_retry_is_signed_afresh() {
    let case = &cases()[0];
    let signer = AwsSigner {
        region: "us-east-1".to_owned(),
        access_key_id: Secret::new(text(case, "access_key_id")),
        secret_access_key: Secret::new(text(case, "secret_access_key")),
        session_token: None,
    };
    let url = Url::parse(text(case, "url")).expect("url");
    let mut headers = HeaderMap::new();
    // What an agent could send to confuse the signature: stale values.
    headers.insert("x-amz-date", HeaderValue::from_static("19700101T000000Z"));
    headers.insert("x-amz-security-token", HeaderValue::from_static("forged"));
    let time = UNIX_EPOCH + Duration::from_secs(1_764_979_200);
    signer
        .sign(&Method::POST, &url, &mut headers, b"{}", time)
        .expect("signs");
    assert_eq!(headers["x-amz-date"], "20251206T000000Z");
    assert!(headers.get("x-amz-security-token").is_none());
    assert!(headers[header::AUTHORIZATION].is_sensitive());
    assert_eq!(headers.get_all("x-amz-date").iter().count(), 1);
}

#[test]
fn debug_shows_the_region_only() {
    let signer = AwsSigner {
        region: "us-east-1".to_owned(),
        access_key_id: Secret::new("AKIAVISIBLE"),
        secret_access_key: Secret::new("very-secret"),
        session_token: Some(Secret::new("session-secret")),
    };
    let shown = format!("{signer:?}");
    assert!(shown.contains("us-east-1"), "{shown}");
    for secret in ["AKIAVISIBLE", "very-secret", "session-secret"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}
