//! Revocation on a running aggregator: the revocation list (`crl.pem` in the PKI directory) and
//! the API tokens (`api-tokens.json`) are read again when they change (polled every second) or
//! on SIGHUP; new handshakes are checked against the new list at once, open connections of
//! revoked certificates are closed, and a revoked token is refused from its next request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_net::pki::Pki;

use crate::Shared;
use crate::auth::Authority;
use crate::metrics::Metrics;

/// How often the revocation list's modification time is checked.
const POLL: Duration = Duration::from_secs(1);

/// Watches the revocation list of `pki` and the API tokens (until dropped).
pub async fn watch(
    pki: Pki,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    authority: Arc<Authority>,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; the revocation list is still polled");
            None
        }
    };
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut last = stamp(&pki.crl());
    let mut last_tokens = stamp(authority.file().path());
    loop {
        let hangup = async {
            match &mut hangups {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let signalled = tokio::select! {
            () = tokio::time::sleep(POLL) => false,
            _ = hangup => true,
        };
        let tokens = stamp(authority.file().path());
        if signalled || tokens != last_tokens {
            last_tokens = tokens;
            if let Err(e) = authority.reload() {
                tracing::error!(error = %e, "the API tokens do not load; keeping the ones in use");
            }
        }
        let now = stamp(&pki.crl());
        if !signalled && now == last {
            continue;
        }
        last = now;
        reload(&pki, &endpoint, &shared);
    }
}

/// Applies the revocation list on disk: to new handshakes, and to open connections.
pub fn reload(pki: &Pki, endpoint: &quinn::Endpoint, shared: &Shared) {
    let config = match fleet_net::tls::server_config(pki) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, crl = %pki.crl().display(), "the revocation list does not load; keeping the one in use");
            return;
        }
    };
    let revoked = match pki.revoked_serials() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reading the revoked serials; keeping the list in use");
            return;
        }
    };
    endpoint.set_server_config(Some(config));
    Metrics::add(&shared.metrics.crl_reloads, 1);
    let closed = shared.connections.close_revoked(&revoked);
    Metrics::add(&shared.metrics.revoked_closed, closed.len() as u64);
    tracing::info!(revoked = revoked.len(), closed = ?closed, "revocation list applied");
}
