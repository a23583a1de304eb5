//! Command-line subcommands other than `serve`: the one-shot `push` (its arguments here,
//! its work in `push_once.rs`).

mod healthcheck;
mod push_once;
mod status;

pub use healthcheck::{healthcheck, local_url, readyz_url};
pub use status::{status, StatusArgs};

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{HumanDuration, PushMethod, RemoteWriteProtocol};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["gateway", "remote_write"])))]
pub struct PushArgs {
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
    /// Remote-write protocol: v1, v2 (2.0 with metadata), or auto (2.0, then 1.0 if the
    /// receiver does not understand it).
    #[arg(long, value_parser = ["v1", "v2", "auto"], default_value = "v1", requires = "remote_write")]
    protocol: String,
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

/// `codex-proxy push`: one delivery, a one-line summary or the destination's message.
pub fn push(args: PushArgs) -> ExitCode {
    let target = match (args.gateway, args.remote_write) {
        (Some(url), _) if args.delete => push_once::Target::DeleteGroup { url },
        (Some(url), _) => push_once::Target::Pushgateway {
            url,
            method: match args.method.as_deref() {
                Some("post") => PushMethod::Post,
                _ => PushMethod::Put,
            },
        },
        (None, Some(url)) => push_once::Target::RemoteWrite {
            url,
            protocol: match args.protocol.as_str() {
                "v2" => RemoteWriteProtocol::V2,
                "auto" => RemoteWriteProtocol::Auto,
                _ => RemoteWriteProtocol::V1,
            },
        },
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
