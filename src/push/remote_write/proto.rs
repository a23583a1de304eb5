//! The remote-write messages of `proto/`, as prost types generated at build time (`build.rs`).
//!
//! The pusher writes these bytes itself (`encode.rs`, `encode_v2.rs`: no `String` per
//! label); these types are the reference it is tested against, what a receiver (the tests'
//! in-process one) decodes with, and what a queued 2.0 request is read back with when a
//! receiver turns out to speak only 1.0 (`transcode.rs`).

// Generated code: its doc comments come from the `.proto` files, its `Debug` from prost.
#![allow(missing_docs, clippy::doc_markdown, unused_qualifications)]

/// Remote-write 1.0: `prometheus.WriteRequest`.
pub use self::v1::*;

mod v1 {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Remote-write 2.0: `io.prometheus.write.v2.Request`.
pub mod v2 {
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
}
