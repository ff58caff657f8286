//! `e2b-emulator`: E2B's control plane and envd on one loopback port, backed
//! by local bubblewrap sandboxes. Point an E2B SDK at it with
//! `E2B_API_URL` and `E2B_SANDBOX_URL`; see docs/emulator.md.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Parser;
use e2b_emulator::knobs::{CreateFault, CreateFaultMode, StreamCut, Synthetic};
use e2b_emulator::{EmulatorOptions, Knobs, serve_with_shutdown};
use sandstorm::sandbox::local::shim;
use sandstorm::secret::Secret;
use sandstorm::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "e2b-emulator",
    version,
    about = "An offline E2B emulator backed by bubblewrap sandboxes"
)]
struct Args {
    /// Address to listen on (loopback unless you mean it).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The one X-API-KEY clients must send. Default: a random key, printed
    /// at start as `api key: ...`.
    #[arg(long, env = "E2B_EMULATOR_API_KEY", hide_env_values = true, value_parser = secret)]
    api_key: Option<Secret>,
    /// The runner install (a folder with node_modules) bound into sandboxes.
    #[arg(long, default_value = "runner")]
    runner_dir: PathBuf,
    /// Where sandbox directories are created (default: the temp folder).
    #[arg(long)]
    work_root: Option<PathBuf>,
    /// The bubblewrap binary.
    #[arg(long, default_value = "/usr/bin/bwrap")]
    bwrap: PathBuf,
    /// Private addresses sandboxes may reach through their egress proxy,
    /// e.g. `10.0.0.0/8,127.0.0.1:8443` (public addresses always are).
    #[arg(long, env = "SANDSTORM_EGRESS_OPEN")]
    egress_open: Option<String>,
    /// Milliseconds added to every request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fail the next N creates with 500 (clients must not retry it).
    #[arg(long, value_name = "N", conflicts_with_all = ["create_503", "create_429", "create_hang"])]
    create_500: Option<u32>,
    /// Answer the next N creates with 503 (clients retry it).
    #[arg(long, value_name = "N", conflicts_with_all = ["create_429", "create_hang"])]
    create_503: Option<u32>,
    /// Answer the next N creates with 429.
    #[arg(long, value_name = "N", conflicts_with = "create_hang")]
    create_429: Option<u32>,
    /// Never answer the next N creates.
    #[arg(long, value_name = "N")]
    create_hang: Option<u32>,
    /// Cut process streams after K stdout frames (with --cut-stream-count).
    #[arg(long, value_name = "K")]
    cut_stream_after: Option<u32>,
    /// How many streams to cut (default 1).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        requires = "cut_stream_after"
    )]
    cut_stream_count: u32,
    /// Fail the next N kills with 503.
    #[arg(long, value_name = "N", default_value_t = 0)]
    kill_failures: u32,
    /// Synthetic runner: answer starts of runner.mjs with N JSON lines.
    #[arg(long, value_name = "N", requires = "synthetic_bytes")]
    synthetic_lines: Option<u64>,
    /// Synthetic runner: bytes per line.
    #[arg(long, value_name = "S", requires = "synthetic_lines")]
    synthetic_bytes: Option<usize>,
    /// Answer without TCP_NODELAY (envd and E2B's edge set it), so that a
    /// response's small writes wait for the client's delayed ACK.
    #[arg(long)]
    no_tcp_nodelay: bool,
    /// Seconds of `Retry-After` on injected 429s.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    retry_after: u64,
    /// Accept what E2B refuses (timeouts above --max-timeout, unknown
    /// templates, envd calls without E2b-Sandbox-Port, Start's content type
    /// and protocol version, a missing cwd) and give processes the local
    /// sandbox's environment, not envd's. Strict (as E2B) without it.
    #[arg(long)]
    lenient: bool,
    /// The plan's longest sandbox timeout in seconds (E2B's Hobby plan: one
    /// hour); create asks for more get E2B's 400.
    #[arg(long, value_name = "SECS", default_value_t = e2b_emulator::DEFAULT_MAX_TIMEOUT_SECS)]
    max_timeout: u64,
    /// A template create accepts, besides `base`, `sandstorm` and
    /// `sandstorm-test` (repeatable); others get E2B's 404.
    #[arg(long = "template", value_name = "NAME")]
    templates: Vec<String>,
    /// A file of template names create accepts, one a line (`#` starts a
    /// comment).
    #[arg(long, value_name = "FILE")]
    templates_file: Option<PathBuf>,
    /// The `envdVersion` create and connect report (the SDKs switch
    /// features on it).
    #[arg(long, value_name = "VERSION", default_value = e2b_emulator::DEFAULT_ENVD_VERSION)]
    envd_version: String,
    /// A file the template runs as root, and the host file that stands in
    /// for it: `/usr/local/bin/sandstorm-model-proxy=target/debug/sandstorm-model-proxy`
    /// (repeatable). Root processes run beside the sandbox, and only when
    /// the emulator runs as root.
    #[arg(long = "root-command", value_name = "PATH=HOST_PATH", value_parser = root_command)]
    root_commands: Vec<(String, PathBuf)>,
    /// Milliseconds between the attempts of a lifecycle webhook delivery
    /// that failed (three more attempts, as E2B makes).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    webhook_retry_delay_ms: u64,
}

/// `PATH=HOST_PATH`.
fn root_command(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((path, host)) if path.starts_with('/') && !host.is_empty() => {
            Ok((path.to_owned(), PathBuf::from(host)))
        }
        _ => Err(format!(
            "expected PATH=HOST_PATH with an absolute PATH in the template, got {text:?}"
        )),
    }
}

impl Args {
    fn knobs(&self) -> Knobs {
        let create_fault = [
            (self.create_500, CreateFaultMode::Error),
            (self.create_503, CreateFaultMode::Unavailable),
            (self.create_429, CreateFaultMode::RateLimit),
            (self.create_hang, CreateFaultMode::Hang),
        ]
        .into_iter()
        .find_map(|(count, mode)| count.map(|count| CreateFault { mode, count }));
        Knobs {
            latency_ms: self.latency_ms,
            create_fault,
            stream_cut: self.cut_stream_after.map(|after_frames| StreamCut {
                after_frames,
                count: self.cut_stream_count,
            }),
            kill_failures: self.kill_failures,
            synthetic: self
                .synthetic_lines
                .zip(self.synthetic_bytes)
                .map(|(lines, bytes)| Synthetic { lines, bytes }),
            retry_after_secs: Some(self.retry_after),
            synthetic_process: false,
            // For tests, through /_emulator/config.
            runner_start_delay_ms: 0,
            no_tcp_nodelay: self.no_tcp_nodelay,
            // For tests, through /_emulator/config.
            upload_delay_ms: 0,
            upload_failures: 0,
        }
    }

    /// The built-in templates, those named by `--template`, and those
    /// listed in `--templates-file`.
    fn templates(&self) -> std::io::Result<BTreeSet<String>> {
        let mut templates: BTreeSet<String> = e2b_emulator::DEFAULT_TEMPLATES
            .iter()
            .map(|&t| t.to_owned())
            .chain(self.templates.iter().cloned())
            .collect();
        if let Some(file) = &self.templates_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("--templates-file {}: {e}", file.display()),
                )
            })?;
            templates.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or_default().trim())
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        Ok(templates)
    }
}

/// The key goes straight into a [`Secret`], so the `Debug` of the parsed
/// arguments never shows it.
#[allow(
    clippy::unnecessary_wraps,
    reason = "clap's value_parser takes a function that returns a Result"
)]
fn secret(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

fn main() -> std::process::ExitCode {
    // Inside its sandboxes this binary is the local provider's shim.
    let raw: Vec<_> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == shim::SHIM_COMMAND) {
        return shim::main(&raw[1..]);
    }
    let served = tokio::runtime::Runtime::new().and_then(|runtime| runtime.block_on(serve()));
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("e2b-emulator: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> std::io::Result<()> {
    // The product's logging: text on stderr, `RUST_LOG` over the default.
    telemetry::init(telemetry::Format::Text, "warn");
    let args = Args::parse();
    let options = EmulatorOptions {
        api_key: match &args.api_key {
            Some(key) => key.clone(),
            None => {
                let key = e2b_emulator::random_api_key();
                // Its own key, for the operator who started it: stderr,
                // beside the address, never in a log file.
                eprintln!("api key: {}", key.expose());
                key
            }
        },
        runner_dir: args.runner_dir.clone(),
        work_root: args.work_root.clone(),
        bwrap: args.bwrap.clone(),
        shim: std::env::current_exe()?,
        egress_open: args.egress_open.clone(),
        knobs: args.knobs(),
        lenient: args.lenient,
        max_timeout_secs: args.max_timeout,
        templates: args.templates()?,
        envd_version: args.envd_version.clone(),
        root_commands: args.root_commands.iter().cloned().collect(),
        webhook_retry: e2b_emulator::DeliveryRetry {
            delay: std::time::Duration::from_millis(args.webhook_retry_delay_ms),
            ..e2b_emulator::DeliveryRetry::default()
        },
    };
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    // Tests and scripts read the bound address (port 0 picks one) from
    // here: stderr, as `ds serve` prints it.
    eprintln!("listening on http://{}", listener.local_addr()?);
    // Ctrl-C or SIGTERM (a test fixture stopping us) ends the emulator
    // cleanly: every sandbox is killed and its directory removed.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    serve_with_shutdown(listener, options, shutdown).await
}
