//! codex-proxy: an OpenAI-compatible HTTP API in front of a supervised Codex app-server,
//! observable through a guarded `/metrics` and a background pusher.
//!
//! Read top-down, in the order a request and its metrics travel (docs/architecture.md
//! draws it): `config` → `worker` (the child process) → `proxy` (HTTP routes) →
//! `metrics` (registry, labels, middleware, `/metrics`) → `exposition` (the snapshot and
//! its text form) → `push` (remote-write and Pushgateway delivery) → `app` (wires them
//! together for `serve`); `cli` holds the one-shot `push` command.

#![forbid(unsafe_code)]
// Items are `pub(crate)` unless a test, benchmark or example reaches them: a `pub` that
// nothing outside can reach hides dead code from the compiler.
#![warn(unreachable_pub)]

pub mod app;
pub mod auth;
pub(crate) mod budget;
pub mod cli;
pub mod config;
pub mod exposition;
pub mod metrics;
pub mod proxy;
pub mod push;
pub(crate) mod secrets;
pub(crate) mod server;
pub mod status;
pub(crate) mod tls;
pub mod worker;
