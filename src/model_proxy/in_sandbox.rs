//! `sandstorm-model-proxy`: the keyless model endpoint inside an E2B
//! sandbox.
//!
//! A local sandbox's model endpoint lives on the host. An E2B sandbox is a
//! VM far from the server, and the server may be a Lambda invocation that
//! ends long before a detached run does, so the endpoint has to live in the
//! VM, out of the agent's reach. The template installs this binary, and
//! for each runner the E2B provider starts it through envd **as root**,
//! with the real credential in its own environment, right after it started
//! the runner **as `user`** with a placeholder token and
//! `ANTHROPIC_BASE_URL=http://127.0.0.1:880` (for a cloud provider, its
//! skip-auth switch and its base URL variable pointing there with the
//! token in the path, as on the host: [`split`](super::split)):
//!
//! - The agent runs as `user`, without sudo (the template removes it). It
//!   can see the proxy in `/proc`, but not read its environment, memory or
//!   files: they belong to root, and the kernel lets a process read another
//!   uid's `/proc/<pid>/environ` and `mem` only with `CAP_SYS_PTRACE`.
//! - Port 880 is below 1024: only root may listen there, so no process of
//!   the agent's can stand in for the endpoint, even between turns.
//! - The endpoint serves only its run's token, counts every call with the
//!   run's caps ([`crate::spend`]), and ends when the process it watches
//!   (the runner, or a detached run's wrapper) ends: a call after that
//!   finds nothing listening. It then prints what it counted as its last
//!   line, `{"spend":{...}}`, on its own stdout, which only envd (root)
//!   holds, so the server reads a tally the agent could not have written.
//!
//! - For a detached run, whose server may be gone when it ends, it also
//!   keeps its tally in the file [`RECORD_VARIABLE`] names, in a folder of
//!   root's ([`RECORD_DIR`](crate::spend::RECORD_DIR)): rewritten whole
//!   (a new file renamed over the old) after every call it counts or
//!   refuses, and marked final when it ends. Any reader of the run reads
//!   it there; the agent can read it, not write it.
//!
//! - For a detached turn on a serverless door, once the process it watches
//!   has ended and its final tally is written, it calls the server back
//!   with the run's token ([`super::callback`]), so that the run's
//!   completion webhook is told with nothing of the server alive.
//!
//! Its configuration comes in its environment (`SANDSTORM_PROXY_*`, the
//! route's variables of [`Split::config`](super::Split::config), the
//! Vertex key file's contents among them, and
//! [`PRICES_VARIABLE`](crate::spend::prices::PRICES_VARIABLE)), which only
//! root can read. It makes its route with the host's own code
//! ([`ModelRoute::from_config`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::callback::Callback;
use super::{ModelRoute, ModelRoutes, route_config, serve as serve_model};
use crate::exit_watch::ExitWatch;
use crate::spend::prices::PRICES_VARIABLE;
use crate::spend::{Caps, PriceTable, Spend, SpendMeter, SpendRecord};

/// Where the proxy listens, inside the sandbox.
pub(crate) const LISTEN: &str = "127.0.0.1:880";
/// Where the template installs the binary.
pub(crate) const BINARY: &str = "/usr/local/bin/sandstorm-model-proxy";
/// The run's placeholder token, which the runner holds as its key.
pub(crate) const TOKEN_VARIABLE: &str = "SANDSTORM_PROXY_TOKEN";
/// The pid of the process whose end ends the proxy.
pub(crate) const WATCH_PID_VARIABLE: &str = "SANDSTORM_PROXY_WATCH_PID";
/// The run's caps, as JSON: `{"max_cost_usd": 1.5, "max_tokens": 100000}`.
pub(crate) const CAPS_VARIABLE: &str = "SANDSTORM_PROXY_CAPS";
/// Where to keep the tally for readers of a detached run (see the module
/// doc); none is kept without it.
pub(crate) const RECORD_VARIABLE: &str = "SANDSTORM_PROXY_RECORD";
/// Overrides [`LISTEN`] (the E2B emulator's tests).
pub(crate) const LISTEN_VARIABLE: &str = "SANDSTORM_PROXY_LISTEN";

/// How long a connection has to send a whole request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one wait on the watched process lasts; the proxy waits again
/// until the process has ended.
const WATCH_FOREVER: Duration = Duration::from_secs(60 * 60 * 24 * 30);

/// The caps as they travel in [`CAPS_VARIABLE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CapsJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

impl From<Caps> for CapsJson {
    fn from(caps: Caps) -> Self {
        CapsJson {
            max_cost_usd: caps.max_cost_usd,
            max_tokens: caps.max_tokens,
        }
    }
}

/// The proxy's last line: what it counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub spend: Spend,
}

/// Everything the proxy is told, read from its environment.
struct ProxyConfig {
    listen: SocketAddr,
    token: String,
    watch_pid: u32,
    caps: Caps,
    prices: PriceTable,
    route_env: BTreeMap<String, String>,
    record: Option<std::path::PathBuf>,
}

impl ProxyConfig {
    fn from_env(env: &BTreeMap<String, String>) -> Result<ProxyConfig, String> {
        let get = |name: &str| env.get(name).filter(|v| !v.is_empty());
        let listen = get(LISTEN_VARIABLE)
            .map_or(LISTEN, String::as_str)
            .parse()
            .map_err(|e| format!("{LISTEN_VARIABLE}: not an address: {e}"))?;
        let token = get(TOKEN_VARIABLE)
            .cloned()
            .ok_or_else(|| format!("{TOKEN_VARIABLE} is not set"))?;
        let watch_pid = get(WATCH_PID_VARIABLE)
            .ok_or_else(|| format!("{WATCH_PID_VARIABLE} is not set"))?
            .parse()
            .map_err(|e| format!("{WATCH_PID_VARIABLE}: not a pid: {e}"))?;
        let caps: CapsJson = match get(CAPS_VARIABLE) {
            Some(json) => {
                serde_json::from_str(json).map_err(|e| format!("{CAPS_VARIABLE}: {e}"))?
            }
            None => CapsJson::default(),
        };
        let prices = PriceTable::new(get(PRICES_VARIABLE).map(String::as_str))?;
        let route_env = route_config(env);
        Ok(ProxyConfig {
            listen,
            token,
            watch_pid,
            caps: Caps {
                max_cost_usd: caps.max_cost_usd,
                max_tokens: caps.max_tokens,
            },
            prices,
            route_env,
            record: get(RECORD_VARIABLE).map(std::path::PathBuf::from),
        })
    }
}

/// The binary's `main`: serves until the watched process ends, then
/// prints the [`Report`]. Exit status 2 for a configuration it cannot
/// use, 1 when it cannot listen.
pub fn main() -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match ProxyConfig::from_env(&env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sandstorm-model-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let callback = match Callback::from_env(|name| env.get(name).filter(|v| !v.is_empty()).cloned())
    {
        Ok(callback) => callback,
        Err(e) => {
            eprintln!("sandstorm-model-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sandstorm-model-proxy: no runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(report) => {
            // One line, the last: the server reads it when the run ends.
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("sandstorm-model-proxy: no report: {e}"),
            }
            // Then the turn's end, told to a server with nothing alive to
            // see it: its final tally is written by now.
            if let Some(callback) = callback {
                runtime.block_on(callback.call());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sandstorm-model-proxy: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: ProxyConfig) -> Result<Report, String> {
    let meter = SpendMeter::new(config.caps, Arc::new(config.prices));
    let routes = ModelRoutes::new().map_err(|e| e.to_string())?;
    let route = ModelRoute::from_config(&config.route_env, routes.accounts(), Some(meter.clone()))?
        .ok_or(
            "no model credential (ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN, or a cloud \
             provider's) is set",
        )?;
    let record = match &config.record {
        Some(path) => Some(Record::open(path)?),
        None => None,
    };
    // Kept from the first moment, so a reader finds a record (of nothing
    // yet) as soon as the run has one.
    let keeper = record.clone().map(|record| {
        let meter = meter.clone();
        tokio::spawn(async move {
            loop {
                record.write(&meter.spend(), false);
                meter.changed().await;
            }
        })
    });
    let route = routes.register_as(config.token, route);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    // A process that is gone already (or never was) ends the run at once.
    let ended = async {
        match ExitWatch::open(config.watch_pid) {
            Ok(watch) => while !watch.exited_within(WATCH_FOREVER).await {},
            Err(e) => eprintln!(
                "sandstorm-model-proxy: cannot watch pid {}: {e}",
                config.watch_pid
            ),
        }
    };
    tokio::select! {
        () = ended => {}
        () = accept(listener, routes) => {}
    }
    // Every connection task is dropped with the runtime; the token is
    // worthless from here on.
    drop(route);
    // No await from here on: on this one-thread runtime the keeper cannot
    // write again after the final record.
    if let Some(keeper) = keeper {
        keeper.abort();
    }
    if let Some(record) = &record {
        record.write(&meter.spend(), true);
    }
    Ok(Report {
        spend: meter.spend(),
    })
}

/// The file a detached run's tally is kept in.
#[derive(Debug, Clone)]
struct Record {
    path: std::path::PathBuf,
    /// Written first, then renamed over `path`: a reader never sees half a
    /// record.
    scratch: std::path::PathBuf,
}

impl Record {
    /// Makes the record's folder (0755) if need be, and checks that it is
    /// a folder of ours that nobody else may write: one the agent made
    /// first, or a link it planted, is refused.
    fn open(path: &std::path::Path) -> Result<Record, String> {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
        let dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .ok_or_else(|| format!("{RECORD_VARIABLE}: {} has no folder", path.display()))?;
        let name = path
            .file_name()
            .ok_or_else(|| format!("{RECORD_VARIABLE}: {} names no file", path.display()))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot check {}: {e}", dir.display()))?;
        let ours = meta.uid() == rustix::process::geteuid().as_raw();
        if !meta.is_dir() || !ours || meta.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "{} is not a folder only this proxy's user may write; no tally can be kept there",
                dir.display()
            ));
        }
        let mut scratch = name.to_os_string();
        scratch.push(".new");
        Ok(Record {
            path: path.to_owned(),
            scratch: dir.join(scratch),
        })
    }

    /// Replaces the record with `spend`; `complete` once nothing more will
    /// be counted. A failure is said on stderr and the run goes on.
    fn write(&self, spend: &Spend, complete: bool) {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let record = SpendRecord {
            spend: spend.clone(),
            complete,
        };
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let _ = std::fs::remove_file(&self.scratch);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&self.scratch)?;
                // Whatever the umask: readable by all, so the server may
                // read it as any user.
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
                file.write_all(&json)?;
                std::fs::rename(&self.scratch, &self.path)
            });
        if let Err(e) = written {
            eprintln!(
                "sandstorm-model-proxy: cannot keep the tally in {}: {e}",
                self.path.display()
            );
        }
    }
}

async fn accept(listener: TcpListener, routes: ModelRoutes) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let routes = routes.clone();
                        async move { Ok::<_, Infallible>(serve_model(request, &routes).await) }
                    });
                    let served = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "a model proxy connection ended with an error");
                    }
                });
            }
            Err(e) => {
                eprintln!("sandstorm-model-proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_configuration_comes_from_the_environment() {
        let config = ProxyConfig::from_env(&env(&[
            (TOKEN_VARIABLE, "sk-ant-sandstorm-placeholder-x"),
            (WATCH_PID_VARIABLE, "42"),
            (CAPS_VARIABLE, r#"{"max_tokens": 100}"#),
            ("ANTHROPIC_API_KEY", "sk-ant-real"),
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
            ("PATH", "/bin"),
        ]))
        .expect("valid");
        assert_eq!(config.listen.to_string(), LISTEN);
        assert_eq!(config.watch_pid, 42);
        assert_eq!(config.caps.max_tokens, Some(100));
        assert_eq!(
            config.route_env.keys().collect::<Vec<_>>(),
            [
                "ANTHROPIC_API_KEY",
                "AWS_ACCESS_KEY_ID",
                "AWS_REGION",
                "CLAUDE_CODE_USE_BEDROCK"
            ]
        );
    }

    #[test]
    fn a_missing_or_bad_setting_is_named() {
        for (pairs, named) in [
            (vec![(WATCH_PID_VARIABLE, "1")], TOKEN_VARIABLE),
            (vec![(TOKEN_VARIABLE, "t")], WATCH_PID_VARIABLE),
            (
                vec![(TOKEN_VARIABLE, "t"), (WATCH_PID_VARIABLE, "x")],
                WATCH_PID_VARIABLE,
            ),
            (
                vec![
                    (TOKEN_VARIABLE, "t"),
                    (WATCH_PID_VARIABLE, "1"),
                    (CAPS_VARIABLE, r#"{"max_dollars": 1}"#),
                ],
                CAPS_VARIABLE,
            ),
        ] {
            let Err(e) = ProxyConfig::from_env(&env(&pairs)) else {
                panic!("{pairs:?} was accepted");
            };
            assert!(e.contains(named), "{e}");
        }
    }
}
