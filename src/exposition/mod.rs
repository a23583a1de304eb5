//! The exposition model and its text form, shared by `/metrics`, the pushers and the
//! one-shot `push` command: [`snapshot::Snapshot`] (a registry's values at one moment),
//! the text-format 0.0.4 encoder that renders one (for `/metrics` and the Pushgateway
//! body alike), the strict parser that reads one, and the Prometheus naming rules. A scrape
//! may ask for OpenMetrics 1.0 (`openmetrics.rs`, with exemplars) or the delimited protobuf
//! (`protobuf.rs`, with native histograms and exemplars) instead.

pub(crate) mod encode;
pub(crate) mod names;
pub(crate) mod openmetrics;
pub mod parse;
pub(crate) mod protobuf;
pub(crate) mod snapshot;
