//! The `codex-proxy` binary: parse the command line, load the configuration, run.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use codex_proxy::cli::push_once;
use codex_proxy::config::{Config, HumanDuration, PushMethod};

#[derive(Parser)]
#[command(
    name = "codex-proxy",
    version,
    about = "OpenAI-compatible proxy in front of a supervised Codex app-server, with pull and push metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve {
        /// TOML configuration file; every key is optional.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the effective one with secrets masked.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the built-in demo app-server worker on stdin/stdout.
    DemoWorker,
    /// Validate a text-format exposition (FILE, or stdin) and push it once to a Pushgateway,
    /// or by remote-write. Exit 0 when delivered, 1 when refused or unreachable, 2 on bad input.
    Push(PushArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["gateway", "remote_write"])))]
struct PushArgs {
    /// Pushgateway base URL, e.g. http://127.0.0.1:9091
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// Remote-write URL instead, e.g. http://127.0.0.1:9090/api/v1/write; samples get the current time.
    #[arg(long, value_name = "URL")]
    remote_write: Option<String>,
    /// The `job` of the grouping key (remote-write: the `job` label of every series).
    #[arg(long)]
    job: String,
    /// A further grouping label (remote-write: a label of every series); repeatable.
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
    /// put replaces the whole group, post only the families in the file.
    #[arg(long, value_parser = ["put", "post"], conflicts_with = "remote_write")]
    method: Option<String>,
    /// Delete the group instead of pushing (no input is read).
    #[arg(long, conflicts_with_all = ["method", "file", "remote_write"])]
    delete: bool,
    /// Timeout of each request, e.g. 10s.
    #[arg(long, default_value = "10s")]
    timeout: HumanDuration,
    /// Exposition file in text format 0.0.4; `-` or nothing reads stdin.
    #[arg(value_name = "FILE|-")]
    file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => {
            let config = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging();
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
                    eprintln!("codex-proxy: {:#}", anyhow::Error::from(e));
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig { config } => match load(config) {
            Ok(c) => {
                print!("{}", c.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::DemoWorker => run_demo_worker(),
        Command::Push(args) => push(args),
    }
}

/// `codex-proxy push`: one delivery, a one-line summary or the destination's message.
fn push(args: PushArgs) -> ExitCode {
    let target = match (args.gateway, args.remote_write) {
        (Some(url), _) if args.delete => push_once::Target::DeleteGroup { url },
        (Some(url), _) => push_once::Target::Pushgateway {
            url,
            method: match args.method.as_deref() {
                Some("post") => PushMethod::Post,
                _ => PushMethod::Put,
            },
        },
        (None, Some(url)) => push_once::Target::RemoteWrite { url },
        (None, None) => {
            eprintln!("codex-proxy: push needs --gateway or --remote-write");
            return ExitCode::from(2);
        }
    };
    let deleting = matches!(target, push_once::Target::DeleteGroup { .. });
    let request = push_once::labels_from_args(&args.labels).map(|labels| push_once::Request {
        target,
        input: push_once::Input::from_arg(args.file),
        job: args.job,
        labels,
        timeout: args.timeout.0,
    });
    match request.and_then(push_once::run) {
        Ok(_) if deleting => {
            eprintln!("codex-proxy: group deleted");
            ExitCode::SUCCESS
        }
        Ok(d) => {
            eprintln!(
                "codex-proxy: pushed {} samples in {} families",
                d.samples, d.families
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("codex-proxy: {e}");
            ExitCode::from(e.exit_code())
        }
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

fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
