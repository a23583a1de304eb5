//! Command-line subcommands other than `serve`: the one-shot `push`.

pub mod push_once;
