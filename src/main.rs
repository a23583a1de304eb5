//! The `codex-proxy` binary: parse the command line, load the configuration, run.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use codex_proxy::cli::{self, PushArgs};
use codex_proxy::config::Config;

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
                for line in codex_proxy::push::remote_write::protocols_in_use(&c.remote_write) {
                    println!("# {line}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
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
