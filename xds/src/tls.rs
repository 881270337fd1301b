//! The ADS server's TLS handshakes, done here rather than inside the HTTP/2 server so that every failed
//! handshake is known: logged with its reason and a hint (rate-limited), and reported to the caller for
//! counting. A sidecar bootstrapped against another mesh root otherwise just never connects, with nothing
//! said on either side.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::server::{Conn, ServerTls};

/// A handshake that did not complete.
#[derive(Debug, Clone)]
pub struct HandshakeFailure {
    /// A stable label: `unknown_ca`, `no_client_certificate`, `client_certificate_expired`,
    /// `peer_refused`, `not_tls`, `timeout`, `tls_error`, `io`.
    pub reason: &'static str,
    /// What happened, with a hint where one helps.
    pub detail: String,
    pub peer: Option<SocketAddr>,
}

/// Told about every failed handshake (e.g. to count it).
pub type FailureSink = Arc<dyn Fn(&HandshakeFailure) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("ADS server TLS configuration rejected: {0}")]
pub struct TlsConfigError(String);

/// The ADS server's certificate and key, replaceable while the server runs: each handshake takes the
/// newest; a connection made earlier keeps the one it was made with.
#[derive(Debug)]
pub struct ServerCertificate {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsConfigError> {
        Ok(Self { current: std::sync::RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)) })
    }

    /// From now on, handshakes present this certificate.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsConfigError> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        let mut current = self.current.write().map_err(|_| TlsConfigError("certificate lock poisoned".to_owned()))?;
        *current = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// The roots a client certificate must chain to, replaceable while the server runs (a root rotation
/// trusts the old and the new root, then the new one only); each handshake verifies with the newest, and
/// [`ClientRoots::evict_untrusted`] ends the streams of connections made with a root no longer trusted.
pub struct ClientRoots {
    current: std::sync::RwLock<Arc<dyn ClientCertVerifier>>,
    /// Open streams: the client certificate chain they were opened with, and how to end them.
    streams: Mutex<Vec<LiveStream>>,
}

impl std::fmt::Debug for ClientRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRoots").finish_non_exhaustive()
    }
}

/// An open ADS stream as the roots see it.
pub struct LiveStream {
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// Whether the stream has ended.
    pub closed: Box<dyn Fn() -> bool + Send + Sync>,
    /// Ends the stream with this status.
    pub end: Box<dyn Fn(tonic::Status) + Send + Sync>,
}

/// Streams registered between sweeps of ended ones.
const SWEEP_EVERY: usize = 1024;

impl ClientRoots {
    pub fn new(ca_pem: &str) -> Result<Self, TlsConfigError> {
        Ok(Self { current: std::sync::RwLock::new(client_verifier(ca_pem)?), streams: Mutex::default() })
    }

    /// Keeps `stream` until it ends, to end it should its client certificate's root be retired.
    pub fn track(&self, stream: LiveStream) {
        let Ok(mut streams) = self.streams.lock() else { return };
        if streams.len() % SWEEP_EVERY == SWEEP_EVERY - 1 {
            streams.retain(|s| !(s.closed)());
        }
        streams.push(stream);
    }

    /// Ends every open stream whose client certificate does not chain to the roots in force (a retired
    /// root: those sidecars must not keep receiving configuration and keys); returns how many. Costs a
    /// signature verification per stream: run it off the serving threads.
    pub fn evict_untrusted(&self) -> usize {
        let Ok(verifier) = self.get() else { return 0 };
        let Ok(mut streams) = self.streams.lock() else { return 0 };
        let before = streams.len();
        let mut evicted = 0;
        streams.retain(|s| {
            if (s.closed)() {
                return false;
            }
            let Some((leaf, rest)) = s.chain.split_first() else { return true };
            match verifier.verify_client_cert(leaf, rest, UnixTime::now()) {
                Ok(_) => true,
                Err(e) => {
                    (s.end)(tonic::Status::unauthenticated(format!(
                        "this sidecar's client certificate no longer chains to a root of the mesh ({e}); \
                         bootstrap it again"
                    )));
                    evicted += 1;
                    false
                }
            }
        });
        tracing::debug!(streams = before, evicted, "streams checked against the new client roots");
        evicted
    }

    /// From now on, client certificates must chain to one of `ca_pem`'s certificates.
    pub fn replace(&self, ca_pem: &str) -> Result<(), TlsConfigError> {
        let verifier = client_verifier(ca_pem)?;
        let mut current = self.current.write().map_err(|_| TlsConfigError("client roots lock poisoned".to_owned()))?;
        *current = verifier;
        Ok(())
    }

    fn get(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.current.read().map(|c| c.clone()).map_err(|_| rustls::Error::General("client roots lock poisoned".into()))
    }
}

fn client_verifier(ca_pem: &str) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsConfigError(format!("{what}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| bad("client CA", &e))?).map_err(|e| bad("client CA", &e))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(rustls::crypto::ring::default_provider()))
        .build()
        .map_err(|e| bad("client verifier", &e))
}

impl ClientCertVerifier for ClientRoots {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (Envoy sends its one certificate whatever they say); none avoids holding a
        // borrow of a verifier that may be replaced.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()?.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().map(|v| v.supported_verify_schemes()).unwrap_or_default()
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsConfigError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsConfigError(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("server key", &e))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad("server key", &e))?;
    Ok(CertifiedKey::new(chain, key))
}

/// Server TLS with a required client certificate signed by the mesh root; HTTP/2 only.
pub fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| TlsConfigError(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = tls.client_roots.clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(tls.certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Why a handshake failed, as (reason, detail).
fn classify(e: &std::io::Error) -> (&'static str, String) {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return ("io", e.to_string());
    };
    match tls {
        rustls::Error::NoCertificatesPresented => (
            "no_client_certificate",
            "the peer presented no client certificate (every sidecar must: is this an ADS client?)".to_owned(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => (
            "unknown_ca",
            "the client certificate is not signed by this mesh's root (hint: the sidecar was bootstrapped \
             with another state directory's CA; bootstrap it again with the controller's --state-dir)"
                .to_owned(),
        ),
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => (
            "client_certificate_expired",
            "the client certificate has expired (bootstrap the sidecar again)".to_owned(),
        ),
        rustls::Error::InvalidCertificate(other) => ("invalid_client_certificate", format!("{other:?}")),
        rustls::Error::AlertReceived(alert) => (
            "peer_refused",
            format!(
                "the peer ended the handshake ({alert:?}; hint: a sidecar that does not trust this controller's \
                 certificate was bootstrapped against another mesh root)"
            ),
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            ("not_tls", format!("the peer does not speak TLS as expected: {tls}"))
        }
        other => ("tls_error", other.to_string()),
    }
}

/// Logs handshake failures: the first of each reason at once, then at most one line per reason every
/// `EVERY`, with how many were not logged in between.
struct Reporter {
    sink: FailureSink,
    limiter: messages::ratelog::LogLimiter,
}

const EVERY: Duration = Duration::from_secs(10);

impl Reporter {
    fn report(&self, failure: HandshakeFailure) {
        (self.sink)(&failure);
        let Some(suppressed) = self.limiter.admit(failure.reason) else { return };
        tracing::warn!(
            reason = failure.reason, peer = ?failure.peer, suppressed_since_last = suppressed,
            error_code = messages::errcode::ADS_HANDSHAKE_FAILED,
            "ADS TLS handshake failed: {}", failure.detail
        );
    }
}

/// TLS streams of the accepted connections, each handshake done concurrently on its own task within
/// `timeout`. Ends (and stops accepting) once the receiving side is dropped.
pub fn incoming<S>(
    tcp: S,
    config: Arc<ServerConfig>,
    timeout: Duration,
    sink: FailureSink,
) -> impl Stream<Item = std::io::Result<TlsStream<Conn>>>
where
    S: Stream<Item = std::io::Result<Conn>> + Send + 'static,
{
    // Handshaken connections wait here for the HTTP/2 server; small, since it takes them at once.
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let reporter = Arc::new(Reporter { sink, limiter: messages::ratelog::LogLimiter::new(EVERY) });
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let conn = tokio::select! {
                () = tx.closed() => return,
                conn = tcp.next() => conn,
            };
            let conn = match conn {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(conn)) => conn,
            };
            let (acceptor, tx, reporter) = (acceptor.clone(), tx.clone(), reporter.clone());
            tokio::spawn(async move {
                let peer = conn.peer_addr();
                let failure = match tokio::time::timeout(timeout, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let (reason, detail) = classify(&e);
                        HandshakeFailure { reason, detail, peer }
                    }
                    Err(_) => HandshakeFailure {
                        reason: "timeout",
                        detail: format!("no TLS handshake within {} s; connection closed", timeout.as_secs()),
                        peer,
                    },
                };
                reporter.report(failure);
            });
        }
    });
    ReceiverStream::new(rx)
}
