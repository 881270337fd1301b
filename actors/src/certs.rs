//! The certificate actor: issues service certificates per identity, caches them, and renews each one
//! before it expires. A renewal goes straight to the snapshot actor as a dirty identity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use certs::{CertificateAuthority, IssuedCert};
use messages::ServiceIdentity;

use crate::metrics::Metrics;
use crate::snapshot::{ConnectSnapshots, IdentitiesRenewed, SnapshotActor};

/// Certificates for these identities (issued on first request). One identity that cannot be issued does
/// not hold back the others.
#[derive(Message)]
#[rtype(result = "HashMap<ServiceIdentity, Result<Arc<IssuedCert>, String>>")]
pub struct GetCerts(pub Vec<ServiceIdentity>);

/// Identities no connected proxy uses any more: stop renewing them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget(pub Vec<ServiceIdentity>);

pub struct CertActor {
    metrics: Arc<Metrics>,
    ca: Arc<CertificateAuthority>,
    validity: Duration,
    cache: HashMap<ServiceIdentity, Arc<IssuedCert>>,
    snapshots: Option<Addr<SnapshotActor>>,
}

/// Renew when a third of the lifetime is left (OSM: max(validity/3, 5 min) before expiry), spread by a
/// small jitter so certificates issued together do not all renew in the same instant.
pub fn renew_after(cert: &IssuedCert, now: SystemTime) -> Duration {
    let lifetime = cert.lifetime();
    let before = (lifetime / 3).max(Duration::from_secs(5 * 60)).min(lifetime);
    let jitter = Duration::from_millis(u64::from(cert.serial.bytes().fold(0u8, |a, b| a.wrapping_add(b))) * 16);
    let at = cert.not_after - before + jitter.min(lifetime / 20);
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

impl CertActor {
    pub fn new(ca: Arc<CertificateAuthority>, validity: Duration, metrics: Arc<Metrics>) -> Self {
        Self { metrics, ca, validity, cache: HashMap::new(), snapshots: None }
    }

    fn issue(&mut self, id: &ServiceIdentity, ctx: &mut Context<Self>) -> Result<Arc<IssuedCert>, certs::CertError> {
        let started = std::time::Instant::now();
        let cert = Arc::new(self.ca.issue_service(id, self.validity, false)?);
        self.metrics.cert_issued(started.elapsed());
        let wait = renew_after(&cert, SystemTime::now());
        tracing::debug!(identity = %id, serial = %cert.serial, renew_in_s = wait.as_secs(), "issued service certificate");
        let id2 = id.clone();
        let serial = cert.serial.clone();
        ctx.run_later(wait, move |act, ctx| act.renew(id2, &serial, ctx));
        self.cache.insert(id.clone(), cert.clone());
        Ok(cert)
    }

    fn renew(&mut self, id: ServiceIdentity, serial: &str, ctx: &mut Context<Self>) {
        if self.cache.get(&id).is_none_or(|c| c.serial != serial) {
            return; // superseded
        }
        match self.issue(&id, ctx) {
            Ok(_) => {
                tracing::info!(identity = %id, "renewed service certificate");
                if let Some(s) = &self.snapshots {
                    s.do_send(IdentitiesRenewed(vec![id]));
                }
            }
            Err(e) => {
                // Keep serving the valid certificate and try again shortly.
                tracing::error!(identity = %id, error = %e, "certificate renewal failed; retrying in 30s");
                let serial = serial.to_owned();
                ctx.run_later(Duration::from_secs(30), move |act, ctx| act.renew(id, &serial, ctx));
            }
        }
    }
}

impl Actor for CertActor {
    type Context = Context<Self>;
}

impl Handler<ConnectSnapshots> for CertActor {
    type Result = ();
    fn handle(&mut self, msg: ConnectSnapshots, _: &mut Self::Context) {
        self.snapshots = Some(msg.0);
    }
}

impl Handler<GetCerts> for CertActor {
    type Result = MessageResult<GetCerts>;

    fn handle(&mut self, msg: GetCerts, ctx: &mut Self::Context) -> Self::Result {
        let mut out = HashMap::new();
        for id in msg.0 {
            let cert = match self.cache.get(&id) {
                Some(c) => Ok(c.clone()),
                None => self.issue(&id, ctx).map_err(|e| {
                    tracing::error!(identity = %id, error = %e, "cannot issue service certificate");
                    e.to_string()
                }),
            };
            out.insert(id, cert);
        }
        MessageResult(out)
    }
}

impl Handler<Forget> for CertActor {
    type Result = ();
    fn handle(&mut self, msg: Forget, _: &mut Self::Context) {
        for id in msg.0 {
            // A pending renewal finds no cache entry and stops.
            if self.cache.remove(&id).is_some() {
                tracing::debug!(identity = %id, "certificate no longer needed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_a_third_before_expiry_with_floor() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let id = ServiceIdentity::new("a", "b");
        let c = ca.issue_service(&id, Duration::from_secs(24 * 3600), false).unwrap();
        let w = renew_after(&c, c.not_before);
        let life = c.lifetime();
        assert!(w >= life - life / 3 && w <= life - life / 3 + life / 20, "{w:?}");
        let short = ca.issue_service(&id, Duration::from_secs(600), false).unwrap();
        let w = renew_after(&short, short.not_before);
        assert!(w <= short.lifetime() - Duration::from_secs(300) + short.lifetime() / 20, "{w:?}");
    }
}
