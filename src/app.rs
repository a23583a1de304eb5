//! `serve`: builds the registry, the worker supervisor, the HTTP server and the pushers,
//! and shuts them down in order on SIGTERM/SIGINT.

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// Runs the proxy until a shutdown signal.
pub async fn serve(_config: Config) -> Result<(), ServeError> {
    Err(ServeError::Other("not built yet".into()))
}
