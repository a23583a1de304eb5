//! `codex_http_connections_open` and `codex_http_connections_refused_total{reason}`: what
//! the accept loop (crate::server) does with connections, so that an operator sees the
//! limits bite before clients report it.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Why the server closed a connection that it did not serve (to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `server.max_connections` were open: refused at accept.
    MaxConnections,
    /// No complete request head within `server.header_read_timeout`.
    HeaderTimeout,
    /// Kept alive with no request for `server.idle_timeout`.
    IdleTimeout,
}

impl Refusal {
    /// Every reason, in declaration order (`ALL[r as usize] == r`).
    pub(crate) const ALL: [Refusal; 3] = [
        Refusal::MaxConnections,
        Refusal::HeaderTimeout,
        Refusal::IdleTimeout,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::IdleTimeout => "idle_timeout",
        }
    }
}

/// The accept loop's handle on its two families; cheap to clone (shared atomics).
#[derive(Debug, Clone)]
pub(crate) struct ConnectionMetrics {
    open: IntGauge,
    refused_family: IntCounterVec,
    /// One counter per [`Refusal`] of `refused_family`, resolved once so that counting
    /// takes no label lookup.
    refused: [IntCounter; 3],
}

impl ConnectionMetrics {
    /// Declares both families in `registry`, every reason at 0.
    pub(crate) fn new(registry: &Registry) -> Result<ConnectionMetrics, prometheus::Error> {
        let metrics = ConnectionMetrics::unregistered()?;
        registry.register(Box::new(metrics.open.clone()))?;
        registry.register(Box::new(metrics.refused_family.clone()))?;
        Ok(metrics)
    }

    /// Families in no registry: for a server whose connections nobody reads (unit tests).
    pub(crate) fn unregistered() -> Result<ConnectionMetrics, prometheus::Error> {
        let open = IntGauge::new(
            "codex_http_connections_open",
            "HTTP connections open now (at most server.max_connections).",
        )?;
        let refused_family = IntCounterVec::new(
            Opts::new(
                "codex_http_connections_refused_total",
                "HTTP connections closed unserved: refused at server.max_connections, or \
                 closed by server.header_read_timeout or server.idle_timeout.",
            ),
            &["reason"],
        )?;
        let refused = Refusal::ALL.map(|r| refused_family.with_label_values(&[r.as_str()]));
        Ok(ConnectionMetrics {
            open,
            refused_family,
            refused,
        })
    }

    /// A connection was accepted and is served; it counts as open until the guard drops.
    pub(crate) fn opened(&self) -> OpenConnection {
        self.open.inc();
        OpenConnection(self.open.clone())
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }
}

/// Decrements `codex_http_connections_open` when the connection ends.
#[derive(Debug)]
pub(crate) struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_declared_at_zero_and_open_follows_its_guards() {
        let registry = Registry::new();
        let metrics = ConnectionMetrics::new(&registry).unwrap();
        let value = |name: &str, reason: Option<&str>| -> Option<f64> {
            registry
                .gather()
                .into_iter()
                .find(|f| f.name() == name)?
                .get_metric()
                .iter()
                .find(|m| reason.is_none_or(|r| m.get_label().iter().any(|l| l.value() == r)))
                .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        };
        for r in Refusal::ALL {
            let v = value("codex_http_connections_refused_total", Some(r.as_str()));
            assert_eq!(v, Some(0.0), "{}", r.as_str());
        }
        let a = metrics.opened();
        let b = metrics.opened();
        assert_eq!(value("codex_http_connections_open", None), Some(2.0));
        drop(a);
        assert_eq!(value("codex_http_connections_open", None), Some(1.0));
        drop(b);
        metrics.refused(Refusal::IdleTimeout);
        let idle = value("codex_http_connections_refused_total", Some("idle_timeout"));
        assert_eq!(idle, Some(1.0));
        let header = value(
            "codex_http_connections_refused_total",
            Some("header_timeout"),
        );
        assert_eq!(header, Some(0.0));
        assert_eq!(value("codex_http_connections_open", None), Some(0.0));
    }
}
