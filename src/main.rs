//! The `codex-proxy` binary: parse the command line, load the configuration, run.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use codex_proxy::cli::{self, PushArgs, StatusArgs};
use codex_proxy::config::{Config, HumanDuration, LogFormat};

#[derive(Parser)]
#[command(
    name = "codex-proxy",
    version,
    about = "OpenAI-compatible proxy in front of a supervised Codex app-server, with pull and push metrics"
)]
struct Cli {
    /// TOML configuration file; every key is optional. Before or after the subcommand.
    #[arg(long, global = true, env = "CODEX_PROXY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line); overrides `[log] format`.
    /// Which events: the `RUST_LOG` directives (default `info`).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Validate a configuration and print the effective one with secrets masked.
    CheckConfig,
    /// Exit 0 when the proxy's /readyz answers 200, else 1 (a container health check
    /// without curl).
    Healthcheck {
        /// The URL to ask; default: /readyz on the configured server.listen (loopback when
        /// it listens on every address).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// How long to wait for the answer, e.g. 3s.
        #[arg(long, default_value = "5s")]
        timeout: HumanDuration,
    },
    /// Show the proxy's /status.json as a table: exit 0 when all is well, 1 when the
    /// worker is down or a push destination is failing, 2 when the proxy cannot be asked.
    Status(StatusArgs),
    /// Run the built-in demo app-server worker on stdin/stdout.
    DemoWorker,
    /// Validate a text-format exposition (FILE, or stdin) and push it once to a Pushgateway,
    /// or by remote-write. Exit 0 when delivered, 1 when refused or unreachable, 2 on bad input.
    Push(PushArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = match load(cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let format = match cli.log_format.as_deref() {
                Some("json") => LogFormat::Json,
                Some(_) => LogFormat::Text,
                None => config.log.format,
            };
            init_logging(format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("codex-proxy: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(codex_proxy::app::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{:#}", anyhow::Error::from(e));
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig => match load(cli.config) {
            Ok(c) => {
                print!("{}", c.to_masked_toml());
                for line in codex_proxy::push::remote_write::protocols_in_use(&c.remote_write) {
                    println!("# {line}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Healthcheck { url, timeout } => {
            let url = match url {
                Some(url) => url,
                None => match load(cli.config) {
                    Ok(c) => cli::readyz_url(c.server.listen),
                    Err(code) => return code,
                },
            };
            cli::healthcheck(&url, timeout.0)
        }
        Command::Status(args) => {
            let url = match &args.url {
                Some(url) => url.clone(),
                None => match load(cli.config) {
                    Ok(c) => {
                        cli::local_url(c.server.listen, c.server.tls.is_some(), "/status.json")
                    }
                    Err(code) => return code,
                },
            };
            cli::status(&args, &url)
        }
        Command::DemoWorker => run_demo_worker(),
        Command::Push(args) => cli::push(args),
    }
}

/// Serves the demo app-server on stdin/stdout with the `DEMO_*` knobs of the environment.
fn run_demo_worker() -> ExitCode {
    use codex_proxy::worker::demo;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-worker: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let knobs = demo::DemoKnobs::from_env(|k| std::env::var(k).ok());
    let code = runtime.block_on(demo::run(tokio::io::stdin(), tokio::io::stdout(), knobs));
    // Exit at once: a runtime shutdown would wait for the blocking stdin read.
    std::process::exit(code)
}

/// Loads the configuration; a bad one exits 2 with the key named.
fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.as_deref(), |k| std::env::var(k).ok()).map_err(|e| {
        eprintln!("codex-proxy: {e}");
        ExitCode::from(2)
    })
}

/// Logs to stderr through `RUST_LOG`'s directives (`info` when unset; a directive that
/// does not parse is skipped), as text or one JSON object per line.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
