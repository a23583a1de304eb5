//! `[server.tls]`: HTTPS on the proxy's own port, in rustls with the ring provider (the one
//! reqwest already brings, so there is one crypto stack), TLS 1.2 at least, with optional
//! client certificates (exporter-toolkit's `tls_server_config` meaning).
//!
//! The certificate, key and client CA are read at start (a bad one is a config error) and
//! then compared with their files every second, like the secrets (crate::secrets): when
//! one changes, the server configuration is built anew and new connections get it; open
//! connections keep theirs. A change that does not load (a half-written key, a certificate
//! that does not match its key) keeps the last good configuration, with a warning.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ClientAuth, TlsServerConfig};

/// How often the files are compared with what is in use.
const POLL: Duration = Duration::from_secs(1);

/// A TLS file that cannot be used; `key` is its configuration key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct TlsError {
    pub(crate) key: &'static str,
    pub(crate) message: String,
}

fn error(key: &'static str, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        message: message.to_string(),
    }
}

/// The files of `[server.tls]` and how to build a rustls configuration from them.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    client_auth: ClientAuth,
}

/// What the files held when last read.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl TlsFiles {
    pub(crate) fn new(config: &TlsServerConfig) -> TlsFiles {
        TlsFiles {
            cert: config.cert_file.clone(),
            key: config.key_file.clone(),
            ca: config.client_ca_file.clone(),
            client_auth: config.client_auth,
        }
    }

    /// Reads and builds now.
    pub(crate) fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.build(&self.read()?)
    }

    fn read(&self) -> Result<Contents, TlsError> {
        let read = |key, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))
        };
        Ok(Contents {
            cert: read("server.tls.cert_file", &self.cert)?,
            key: read("server.tls.key_file", &self.key)?,
            ca: self
                .ca
                .as_ref()
                .map(|p| read("server.tls.client_ca_file", p))
                .transpose()?,
        })
    }

    fn build(&self, c: &Contents) -> Result<Arc<ServerConfig>, TlsError> {
        let certs = CertificateDer::pem_slice_iter(&c.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error("server.tls.cert_file", format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(error("server.tls.cert_file", "holds no certificate"));
        }
        // The key's text is never shown, only that it does not parse.
        let key = PrivateKeyDer::from_pem_slice(&c.key)
            .map_err(|_| error("server.tls.key_file", "holds no PEM private key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| error("server.tls", e))?;
        let builder = match (self.client_auth, &c.ca) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (_, None) => {
                return Err(error(
                    "server.tls.client_ca_file",
                    "client_auth request or require needs it",
                ))
            }
            (auth, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| {
                        error(
                            "server.tls.client_ca_file",
                            format!("not PEM certificates: {e}"),
                        )
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| error("server.tls.client_ca_file", e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Request {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| error("server.tls.client_ca_file", e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            error(
                "server.tls.key_file",
                format!("does not fit the certificate: {e}"),
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The acceptor of new connections, kept in step with the files. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Tls {
    current: Arc<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Loads the files now and follows their changes until the runtime ends.
    pub(crate) fn start(config: &TlsServerConfig) -> Result<Tls, TlsError> {
        let files = TlsFiles::new(config);
        let contents = files.read()?;
        let tls = Tls {
            current: Arc::new(RwLock::new(TlsAcceptor::from(files.build(&contents)?))),
        };
        tokio::spawn(tls.clone().follow(files, contents));
        Ok(tls)
    }

    /// The acceptor for a connection accepted now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn follow(self, files: TlsFiles, mut last: Contents) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let f = files.clone();
            // Small, but blocking reads.
            let Ok(read) = tokio::task::spawn_blocking(move || f.read()).await else {
                continue;
            };
            let built = read.and_then(|contents| {
                if contents == last {
                    return Ok(None);
                }
                let config = files.build(&contents)?;
                last = contents;
                Ok(Some(config))
            });
            match built {
                Ok(None) => failing = false,
                Ok(Some(config)) => {
                    failing = false;
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                        TlsAcceptor::from(config);
                    tracing::info!("server.tls files changed; new connections use them");
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            key = e.key,
                            "{}; keeping the previous TLS configuration",
                            e.message
                        );
                    }
                    failing = true;
                }
            }
        }
    }
}
