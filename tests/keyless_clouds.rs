//! The cloud providers' credentials stay out of a sandbox (#14), local and
//! E2B (the emulator, with the template's model proxy): a process started
//! with Bedrock's, Vertex's or Foundry's variables sees none of their
//! secrets, in its environment, any process's it can read, or any file it
//! can read, and a model request made from inside reaches a loopback
//! stand-in for the provider carrying the real credential: a SigV4
//! signature botocore agrees with, an access token the service account
//! earned from a loopback OAuth server, the Foundry key. On E2B a capped
//! Bedrock run through `ds serve` is accepted and reports no credential in
//! the sandbox.
//!
//! The last test runs the pinned Claude Code itself inside the sandbox,
//! told to skip its own auth, and checks that what it sends (Bedrock's
//! inference-profile list and model call, Vertex's streamRawPredict)
//! arrives authenticated.
//!
//! Every upstream is on 127.0.0.1: the provider's base URL variables name
//! them on the host, as an operator's private endpoint would be named.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::emulator::RunningEmulator;
use common::keys::E2B_KEY;
use common::model_server::{ModelServer, Script};
use common::product::{Chain, Serve};
use common::sandbox::{run, sh};
use sandstorm::sandbox::e2b::{E2bOptions, E2bProvider};
use sandstorm::sandbox::local::{LocalOptions, LocalProvider};
use sandstorm::sandbox::{ProcessSpec, Sandbox, SandboxProvider, SandboxSpec};
use serde_json::{Value, json};

/// Where the runner's environment carries a Vertex key file's contents to
/// a keyless provider (`keys::VERTEX_SERVICE_ACCOUNT_VARIABLE`).
const SERVICE_ACCOUNT_VARIABLE: &str = "SANDSTORM_VERTEX_SERVICE_ACCOUNT";
const CLIENT_EMAIL: &str = "runner@sandstorm-test.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const ACCESS_TOKEN: &str = "ya29.sandstorm-test-access-token";

/// One request a stand-in upstream saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A stand-in for the provider's API on loopback: records every request,
/// answers `{"ok":true}`.
async fn upstream() -> (SocketAddr, Log) {
    let log = Log::default();
    let app =
        Router::new()
            .fallback(any(
                |State(log): State<Log>,
                 method: Method,
                 uri: Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    lock(&log).push(Seen {
                        method,
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    axum::Json(json!({ "ok": true }))
                },
            ))
            .with_state(log.clone());
    (serve(app).await, log)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A sandbox, and on E2B the emulator it lives in, which must outlive it.
struct Sandboxed {
    sandbox: Arc<dyn Sandbox>,
    _emulator: Option<RunningEmulator>,
}

/// A fresh sandbox on `chain`. On E2B: the emulator with the model proxy
/// on, and `upstream` (the stand-in provider) open to the sandbox's egress
/// proxy, the emulated proxy's only way out, as the internet is a real
/// VM's.
async fn sandbox(chain: Chain, upstream: SocketAddr) -> Sandboxed {
    match chain {
        Chain::Local => {
            let options =
                LocalOptions::new(common::runner::runner_dir(), common::emulator::binary());
            let sandbox = LocalProvider::new(options)
                .expect("local provider (bubblewrap: apt-get install -y bubblewrap)")
                .create(SandboxSpec::default())
                .await
                .expect("create sandbox");
            Sandboxed {
                sandbox,
                _emulator: None,
            }
        }
        Chain::E2b => {
            let mut options = common::emulator::options();
            options.egress_open = Some(upstream.to_string());
            let emulator = common::emulator::start_with(options).await;
            let options = E2bOptions::local(&emulator.url, E2B_KEY);
            let sandbox = E2bProvider::new(options)
                .expect("E2B client")
                .create(SandboxSpec::default())
                .await
                .expect("create sandbox");
            Sandboxed {
                sandbox,
                _emulator: Some(emulator),
            }
        }
    }
}

/// Where the sandbox's process reaches the model endpoint, with the token
/// in the path.
fn endpoint(chain: Chain) -> &'static str {
    match chain {
        Chain::Local => "http://127.0.0.1:3128/sandstorm/",
        Chain::E2b => "http://127.0.0.1:880/sandstorm/",
    }
}

/// What a sandbox's process saw, and what its model request got.
struct Inside {
    env: String,
    /// One line per secret: how many readable `/proc/*/environ` and how
    /// many readable files hold it.
    probes: String,
    status: String,
}

/// Runs `env`, looks for each of `secrets` in every process's environment
/// and every file it can read, then makes a model request with curl from
/// inside, in a fresh sandbox on `chain` whose process has `envs`.
async fn env_and_request(
    chain: Chain,
    upstream: SocketAddr,
    envs: &[(&str, &str)],
    secrets: &[&str],
    curl: &str,
) -> Inside {
    let sb = sandbox(chain, upstream).await;
    let spec = ProcessSpec {
        envs: envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..sh(&format!(
            "env; echo '--- probe'; {}; echo '--- curl'; \
             curl -sS -m 20 -o /dev/null -w 'HTTP %{{http_code}}' \
             -H 'content-type: application/json' -d '{{\"max_tokens\":1}}' {curl}",
            probe(secrets)
        ))
    };
    let out = run(&*sb.sandbox, spec).await;
    sb.sandbox.destroy().await.expect("destroy");
    let stdout = out.stdout();
    let (env, rest) = stdout
        .split_once("--- probe\n")
        .unwrap_or_else(|| panic!("no probe: {stdout} {}", out.stderr()));
    let (probes, status) = rest
        .split_once("--- curl\n")
        .unwrap_or_else(|| panic!("no curl line: {stdout} {}", out.stderr()));
    Inside {
        env: env.to_owned(),
        probes: probes.to_owned(),
        status: format!("{status} {}", out.stderr()),
    }
}

/// A shell line per secret that counts the readable environs and files
/// holding it. Each secret is put together in the shell, so that the
/// command's own text does not hold it.
fn probe(secrets: &[&str]) -> String {
    let lines: Vec<String> = secrets
        .iter()
        .map(|secret| {
            let (a, b) = secret.split_at(secret.len() / 2);
            format!(
                "a='{a}'; b='{b}'; echo \"$(grep -l -s -F \"$a$b\" /proc/*/environ | wc -l) \
                 $(grep -r -l -s -F \"$a$b\" /home /tmp /opt /etc /run /var 2>/dev/null \
                 | wc -l)\""
            )
        })
        .collect();
    lines.join("; ")
}

/// None of `secrets` is in the environment, and no readable environ or
/// file holds one of `probed`.
fn assert_hidden(seen: &Inside, secrets: &[&str], probed: &[&str]) {
    for secret in secrets {
        assert!(
            !seen.env.contains(secret),
            "{secret} is inside:\n{}",
            seen.env
        );
    }
    let counts: Vec<&str> = seen.probes.lines().collect();
    assert_eq!(counts.len(), probed.len(), "{}", seen.probes);
    for (secret, count) in probed.iter().zip(counts) {
        assert_eq!(count.trim(), "0 0", "{secret} (environs, files)");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_keys_stay_out_and_requests_arrive_signed() {
    bedrock_keys_stay_out_and_requests_arrive_signed_on(Chain::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_keys_stay_out_of_an_e2b_sandbox_and_its_proxy_signs() {
    bedrock_keys_stay_out_and_requests_arrive_signed_on(Chain::E2b).await;
}

async fn bedrock_keys_stay_out_and_requests_arrive_signed_on(chain: Chain) {
    let (addr, log) = upstream().await;
    let base = format!("http://{addr}/bedrock");
    let (key_id, secret, session) = (
        "AKIASANDSTORME2E0001",
        "e2e-secret-access-key-0000000000000000000",
        "e2e-session-token//+=",
    );
    let inside = env_and_request(
        chain,
        addr,
        &[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", key_id),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_SESSION_TOKEN", session),
            ("ANTHROPIC_BEDROCK_BASE_URL", &base),
        ],
        &[key_id, secret, session],
        "\"$ANTHROPIC_BEDROCK_BASE_URL/model/anthropic.claude-x-v1%3A0/invoke\"",
    )
    .await;
    assert_hidden(
        &inside,
        &[key_id, secret, session, &addr.to_string()],
        &[key_id, secret, session],
    );
    for kept in [
        "CLAUDE_CODE_USE_BEDROCK=1\n",
        "AWS_REGION=eu-west-1\n",
        "CLAUDE_CODE_SKIP_BEDROCK_AUTH=1\n",
        &format!("ANTHROPIC_BEDROCK_BASE_URL={}", endpoint(chain)),
    ] {
        assert!(inside.env.contains(kept), "{kept} missing:\n{}", inside.env);
    }
    assert!(inside.status.starts_with("HTTP 200"), "{}", inside.status);

    let seen = lock(&log).pop().expect("the request arrived");
    assert_signed(addr, &seen, key_id, secret, session);
}

/// `seen` is the stand-in's Bedrock call, SigV4-signed with the keys for
/// eu-west-1, as botocore would sign it.
fn assert_signed(addr: SocketAddr, seen: &Seen, key_id: &str, secret: &str, session: &str) {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/bedrock/model/anthropic.claude-x-v1%3A0/invoke");
    let authorization = seen.header("authorization").expect("signed");
    let date = seen.header("x-amz-date").expect("x-amz-date");
    let scope = format!(
        "AWS4-HMAC-SHA256 Credential={key_id}/{}/eu-west-1/bedrock/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=",
        &date[..8]
    );
    assert!(authorization.starts_with(&scope), "{authorization}");
    assert_eq!(seen.header("x-amz-security-token"), Some(session));

    assert_botocore_agrees(
        addr,
        seen,
        &Keys {
            region: "eu-west-1",
            key_id,
            secret,
            session: Some(session),
        },
    );
}

/// The AWS keys a test gave the endpoint.
struct Keys<'a> {
    region: &'a str,
    key_id: &'a str,
    secret: &'a str,
    session: Option<&'a str>,
}

/// The signature on `seen` is the one AWS would compute: botocore signs
/// what arrived (the headers we sign, the body, the path as sent), at the
/// time it says, and must get the same `Authorization`. Skipped without
/// the repository's `.venv` (scripts/setup makes it).
fn assert_botocore_agrees(addr: SocketAddr, seen: &Seen, keys: &Keys<'_>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !python.is_file() {
        eprintln!("no .venv (scripts/setup makes it): the signature's shape was checked only");
        return;
    }
    let date = seen.header("x-amz-date").expect("x-amz-date");
    // The headers we sign, less those botocore adds itself.
    let headers: serde_json::Map<String, Value> = seen
        .headers
        .iter()
        .filter(|(name, _)| {
            *name == "content-type"
                || (name.as_str().starts_with("x-amz-")
                    && !matches!(name.as_str(), "x-amz-date" | "x-amz-security-token"))
        })
        .map(|(name, value)| {
            let value = value.to_str().expect("text").to_owned();
            (name.as_str().to_owned(), Value::String(value))
        })
        .collect();
    let case = json!([{
        "method": seen.method.as_str(),
        "url": format!("http://{addr}{}", seen.uri),
        "headers": headers,
        "body": String::from_utf8_lossy(&seen.body),
        "time": epoch_seconds(date),
        "region": keys.region,
        "access_key_id": keys.key_id,
        "secret_access_key": keys.secret,
        "session_token": keys.session,
    }]);
    let mut child = Command::new(python)
        .arg(root.join("tests/fixtures/sigv4/botocore_sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        case.to_string().as_bytes(),
    )
    .expect("case written");
    let output = child.wait_with_output().expect("python ends");
    assert!(output.status.success());
    let theirs: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        theirs[0]["authorization"],
        seen.header("authorization").unwrap_or_default(),
        "{} {}",
        seen.method,
        seen.uri
    );
}

/// `20251206T000000Z` as seconds since the epoch.
fn epoch_seconds(date: &str) -> u64 {
    let field = |range: std::ops::Range<usize>| -> u64 { date[range].parse().expect("digits") };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = (field(9..11), field(11..13), field(13..15));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hour * 3_600 + minute * 60 + second
}

/// A throwaway service account: a fresh RSA key that is nobody's, and its
/// key file pointing at `token_uri`.
struct ServiceAccount {
    key_file: String,
    /// One line of the private key's PEM: what to look for inside.
    key_line: String,
    public_key: Vec<u8>,
}

fn service_account(token_uri: &str) -> ServiceAccount {
    let key = KeyPair::generate(KeySize::Rsa2048).expect("rsa key");
    let der = AsDer::<Pkcs8V1Der>::as_der(&key).expect("pkcs8");
    let base64 = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = base64
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("ascii"))
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let key_file = json!({
        "type": "service_account",
        "project_id": "sandstorm-test",
        "private_key_id": "throwaway",
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "token_uri": token_uri,
    })
    .to_string();
    ServiceAccount {
        key_file,
        key_line: lines[1].to_owned(),
        public_key: aws_lc_rs::signature::KeyPair::public_key(&key)
            .as_ref()
            .to_vec(),
    }
}

/// What the fake OAuth server knows and saw.
#[derive(Clone, Default)]
struct OAuth {
    public_key: Arc<Mutex<Vec<u8>>>,
    token_uri: Arc<Mutex<String>>,
    /// Why each refused grant was refused; grants answered, counted.
    refused: Arc<Mutex<Vec<String>>>,
    granted: Arc<Mutex<u32>>,
}

/// Google's token endpoint, as far as the JWT-bearer grant goes: the
/// assertion must be RS256-signed by the account's key, from the account,
/// for this endpoint, asking for the cloud-platform scope, and current.
async fn grant(State(oauth): State<OAuth>, body: Bytes) -> axum::response::Response {
    match check_grant(&oauth, &body) {
        Ok(()) => {
            *lock(&oauth.granted) += 1;
            axum::Json(json!({
                "access_token": ACCESS_TOKEN,
                "expires_in": 3599,
                "token_type": "Bearer",
            }))
            .into_response()
        }
        Err(why) => {
            lock(&oauth.refused).push(why.clone());
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "invalid_grant", "error_description": why })),
            )
                .into_response()
        }
    }
}

fn check_grant(oauth: &OAuth, body: &[u8]) -> Result<(), String> {
    let form: BTreeMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Err(format!("grant_type: {:?}", form.get("grant_type")));
    }
    let assertion = form.get("assertion").ok_or("no assertion")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [head, claims, signature] = parts[..] else {
        return Err("not a JWT".into());
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|e| format!("base64: {e}"))
    };
    let head: Value = serde_json::from_slice(&decode(head)?).map_err(|e| e.to_string())?;
    if head["alg"] != "RS256" {
        return Err(format!("alg: {}", head["alg"]));
    }
    let public_key = lock(&oauth.public_key).clone();
    let (signed, _) = assertion.rsplit_once('.').ok_or("not a JWT")?;
    UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(signed.as_bytes(), &decode(signature)?)
        .map_err(|_| "the signature is not the account's".to_owned())?;
    let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let token_uri = lock(&oauth.token_uri).clone();
    if claims["iss"] != CLIENT_EMAIL {
        return Err(format!("iss: {}", claims["iss"]));
    }
    if claims["aud"] != token_uri.as_str() {
        return Err(format!("aud: {}", claims["aud"]));
    }
    if claims["scope"] != SCOPE {
        return Err(format!("scope: {}", claims["scope"]));
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err(format!("exp: {}", claims["exp"]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_gets_no_key_file_and_requests_carry_the_accounts_token() {
    vertex_gets_no_key_file_on(Chain::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_gets_no_key_file_in_an_e2b_sandbox_and_its_proxy_holds_the_account() {
    vertex_gets_no_key_file_on(Chain::E2b).await;
}

async fn vertex_gets_no_key_file_on(chain: Chain) {
    let oauth = OAuth::default();
    let oauth_addr = serve(
        Router::new()
            .route("/token", post(grant))
            .with_state(oauth.clone()),
    )
    .await;
    let token_uri = format!("http://{oauth_addr}/token");
    let account = service_account(&token_uri);
    *lock(&oauth.public_key) = account.public_key.clone();
    *lock(&oauth.token_uri) = token_uri;
    let (addr, log) = upstream().await;
    let base = format!("http://{addr}/v1");

    let inside = env_and_request(
        chain,
        addr,
        &[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "sandstorm-test"),
            ("ANTHROPIC_VERTEX_BASE_URL", &base),
            (SERVICE_ACCOUNT_VARIABLE, &account.key_file),
        ],
        &[&account.key_line, CLIENT_EMAIL],
        "\"$ANTHROPIC_VERTEX_BASE_URL/projects/sandstorm-test/locations/us-east5/publishers/anthropic/models/claude-x:streamRawPredict\"",
    )
    .await;
    assert_hidden(
        &inside,
        &[
            "PRIVATE KEY",
            CLIENT_EMAIL,
            SERVICE_ACCOUNT_VARIABLE,
            "GOOGLE_APPLICATION_CREDENTIALS",
            ACCESS_TOKEN,
            &addr.to_string(),
        ],
        &[&account.key_line, CLIENT_EMAIL],
    );
    for kept in [
        "CLAUDE_CODE_USE_VERTEX=1\n",
        "CLOUD_ML_REGION=us-east5\n",
        "ANTHROPIC_VERTEX_PROJECT_ID=sandstorm-test\n",
        "CLAUDE_CODE_SKIP_VERTEX_AUTH=1\n",
        &format!("ANTHROPIC_VERTEX_BASE_URL={}", endpoint(chain)),
    ] {
        assert!(inside.env.contains(kept), "{kept} missing:\n{}", inside.env);
    }
    if chain == Chain::E2b {
        // The emulated proxy's only way out is the sandbox's egress proxy,
        // which gcp_auth's token client does not use (a real VM's root
        // reaches the token endpoint directly): the proxy holds the
        // account and tried for a token (502), where one without the
        // account would have no route for the token (401) or not run.
        assert!(inside.status.starts_with("HTTP 502"), "{}", inside.status);
        assert!(
            lock(&log).is_empty(),
            "nothing went upstream unauthenticated"
        );
        return;
    }
    assert_eq!(
        *lock(&oauth.refused),
        Vec::<String>::new(),
        "the grant was refused"
    );
    assert!(inside.status.starts_with("HTTP 200"), "{}", inside.status);
    assert_eq!(*lock(&oauth.granted), 1);
    let seen = lock(&log).pop().expect("the request arrived");
    assert_eq!(
        seen.uri,
        "/v1/projects/sandstorm-test/locations/us-east5/publishers/anthropic/models/claude-x:streamRawPredict"
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {ACCESS_TOKEN}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn foundry_keys_stay_out_and_requests_carry_the_key() {
    foundry_keys_stay_out_on(Chain::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn foundry_keys_stay_out_of_an_e2b_sandbox_and_its_proxy_adds_the_key() {
    foundry_keys_stay_out_on(Chain::E2b).await;
}

async fn foundry_keys_stay_out_on(chain: Chain) {
    let (addr, log) = upstream().await;
    let base = format!("http://{addr}/anthropic");
    let key = "foundry-e2e-key-0123456789";
    let inside = env_and_request(
        chain,
        addr,
        &[
            ("CLAUDE_CODE_USE_FOUNDRY", "1"),
            ("AZURE_API_KEY", key),
            ("AZURE_FOUNDRY_RESOURCE", "my-resource"),
            ("ANTHROPIC_FOUNDRY_BASE_URL", &base),
        ],
        &[key],
        "\"$ANTHROPIC_FOUNDRY_BASE_URL/v1/messages?beta=true\" -H 'authorization: Bearer skip-foundry-auth'",
    )
    .await;
    assert_hidden(&inside, &[key, "my-resource", &addr.to_string()], &[key]);
    for kept in [
        "CLAUDE_CODE_USE_FOUNDRY=1\n",
        "CLAUDE_CODE_SKIP_FOUNDRY_AUTH=1\n",
        &format!("ANTHROPIC_FOUNDRY_BASE_URL={}", endpoint(chain)),
    ] {
        assert!(inside.env.contains(kept), "{kept} missing:\n{}", inside.env);
    }
    assert!(inside.status.starts_with("HTTP 200"), "{}", inside.status);
    let seen = lock(&log).pop().expect("the request arrived");
    assert_eq!(seen.uri, "/anthropic/v1/messages?beta=true");
    assert_eq!(seen.header("x-api-key"), Some(key));
    assert_eq!(seen.header("authorization"), None);
}

/// Runs the pinned Claude Code inside a fresh sandbox, once, with `envs`
/// and the offline settings; its answer does not matter, only what
/// reached the upstream.
async fn run_the_cli(envs: &[(&str, &str)]) -> String {
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let sb = sandbox(Chain::Local, unused).await.sandbox;
    let mut all: BTreeMap<String, String> = common::runner::OFFLINE_ENV
        .iter()
        .chain(envs)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.insert("CLAUDE_CODE_MAX_RETRIES".to_owned(), "0".to_owned());
    let spec = ProcessSpec {
        envs: all,
        ..sh("\"$SANDSTORM_CLAUDE_CODE\" -p hi --max-turns 1; echo \"exit $?\"")
    };
    let out = run(&*sb, spec).await;
    sb.destroy().await.expect("destroy");
    format!("{}{}", out.stdout(), out.stderr())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_cli_reaches_bedrock_signed_and_vertex_with_the_token() {
    let (addr, log) = upstream().await;
    let output = run_the_cli(&[
        ("CLAUDE_CODE_USE_BEDROCK", "1"),
        ("AWS_REGION", "us-west-2"),
        ("AWS_ACCESS_KEY_ID", "AKIASANDSTORMCLI0001"),
        ("AWS_SECRET_ACCESS_KEY", "cli-secret-access-key"),
        (
            "ANTHROPIC_BEDROCK_BASE_URL",
            &format!("http://{addr}/bedrock"),
        ),
    ])
    .await;
    let seen = std::mem::take(&mut *lock(&log));
    let calls: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.uri.starts_with("/bedrock/model/") && s.method == Method::POST)
        .collect();
    assert!(
        !calls.is_empty(),
        "no model call arrived: {seen:?}\n{output}"
    );
    // Every request, the inference-profile list (a GET) as the calls.
    for request in &seen {
        assert_botocore_agrees(
            addr,
            request,
            &Keys {
                region: "us-west-2",
                key_id: "AKIASANDSTORMCLI0001",
                secret: "cli-secret-access-key",
                session: None,
            },
        );
    }

    let oauth = OAuth::default();
    let oauth_addr = serve(
        Router::new()
            .route("/token", post(grant))
            .with_state(oauth.clone()),
    )
    .await;
    let token_uri = format!("http://{oauth_addr}/token");
    let account = service_account(&token_uri);
    *lock(&oauth.public_key) = account.public_key.clone();
    *lock(&oauth.token_uri) = token_uri;
    let output = run_the_cli(&[
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLOUD_ML_REGION", "us-east5"),
        ("ANTHROPIC_VERTEX_PROJECT_ID", "sandstorm-test"),
        ("ANTHROPIC_VERTEX_BASE_URL", &format!("http://{addr}/v1")),
        (SERVICE_ACCOUNT_VARIABLE, &account.key_file),
    ])
    .await;
    let seen = std::mem::take(&mut *lock(&log));
    assert!(
        seen.iter().any(|s| s.uri.starts_with(
            "/v1/projects/sandstorm-test/locations/us-east5/publishers/anthropic/models/"
        ) && s.uri.ends_with(":streamRawPredict")),
        "no model call arrived: {seen:?}\n{output}"
    );
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {ACCESS_TOKEN}").as_str()),
            "{}",
            request.uri
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_bedrock_run_on_e2b_keeps_its_keys_in_the_proxy() {
    // The whole product: `ds serve --sandbox e2b` with the model proxy on,
    // Bedrock switched on, and the run capped. The scripted Anthropic
    // model is only there to satisfy the product's harness: with Bedrock
    // on, the CLI goes to the stand-in.
    let model = ModelServer::start(Script::bash_write_file()).await;
    let (addr, log) = upstream().await;
    let (key_id, secret, session) = (
        "AKIASANDSTORMSERVE01",
        "serve-secret-access-key-000000000000000",
        "serve-session-token//+=",
    );
    let mut product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_EGRESS_OPEN", &addr.to_string())
        .env("CLAUDE_CODE_USE_BEDROCK", "1")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", session)
        .env(
            "ANTHROPIC_BEDROCK_BASE_URL",
            &format!("http://{addr}/bedrock"),
        )
        .start()
        .await;

    // Accepted (not 422): the proxy counts every call with the AWS keys.
    let events = product
        .query(json!({"prompt": "go", "max_tokens": 100_000}))
        .await;
    assert_eq!(
        events.init().get("sandstorm"),
        None,
        "no credential went in: {}",
        events.init()
    );
    let dump = events.dump();
    for value in [key_id, secret, session] {
        assert!(!dump.contains(value), "{value} in the events");
    }
    let seen = std::mem::take(&mut *lock(&log));
    let calls: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.uri.starts_with("/bedrock/model/") && s.method == Method::POST)
        .collect();
    assert!(!calls.is_empty(), "no model call arrived: {seen:?}\n{dump}");
    for request in &seen {
        assert_botocore_agrees(
            addr,
            request,
            &Keys {
                region: "eu-west-1",
                key_id,
                secret,
                session: Some(session),
            },
        );
    }
}
