//! The controller's HTTP endpoint (OSM: port 9091): liveness, readiness, Prometheus metrics, version,
//! every connected proxy's config status (`/status/proxies`, JSON, read by `osm proxy status`); and the
//! bounded HTTP(S) serving loop it shares with the admission webhooks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub status: Arc<crate::status::StatusBoard>,
    /// The actors that answer path checks, once they run (the endpoint comes up before them).
    pub actors: Arc<std::sync::OnceLock<Queries>>,
    /// What this controller serves, for `/status/mesh`.
    pub identity: Arc<MeshIdentity>,
    /// True once the catalog has its first full content (the ADS listener is bound before that).
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health/alive", get(|| async { "alive\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/status/proxies", get(proxy_status))
        .route("/status/changes", get(changes))
        .route("/status/connectivity", get(connectivity))
        .route("/status/policy", get(pod_policies))
        .route("/status/mesh", get(mesh_summary))
        .route("/version", get(|| async { format!("{{\"version\":\"{}\"}}\n", env!("CARGO_PKG_VERSION")) }))
        .with_state(state)
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the mesh catalog has not finished its first sync\n")
    }
}

/// The value of `key` in a query string (`Some("")` for a bare `key`), percent-decoded as browsers and
/// `curl --data-urlencode` send it (`from=bookbuyer%2Fbookbuyer`).
pub(crate) fn query_param(uri: &axum::http::Uri, key: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes()).find_map(|(k, v)| (k == key).then(|| v.into_owned()))
}

/// `?generation=N`: a number, or what to answer instead (a 400 naming the parameter).
fn generation_param(uri: &axum::http::Uri) -> Result<Option<u64>, (StatusCode, String)> {
    match query_param(uri, "generation") {
        None => Ok(None),
        Some(g) => g
            .parse()
            .map(Some)
            .map_err(|_| (StatusCode::BAD_REQUEST, format!("generation={g:?}: give a mesh generation number\n"))),
    }
}

/// A JSON answer.
pub(crate) fn json(body: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string_pretty(body).unwrap_or_default() + "\n";
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The board's view with each proxy's pod named (operators think in pods).
async fn status_with_pods(s: &HttpState) -> crate::status::MeshStatus {
    let mut view = s.status.view();
    if let Some(q) = s.actors.get() {
        let uuids = view.proxies.iter().map(|p| p.uuid.clone()).collect();
        if let Ok(pods) = q.catalog.send(crate::catalog::PodsOf(uuids)).await {
            for (p, pod) in view.proxies.iter_mut().zip(pods) {
                p.pod = pod;
            }
        }
    }
    view
}

/// `/status/proxies`: every proxy's status; with `?summary` only the counts (what `osm proxy status
/// --wait` polls: a few bytes instead of megabytes at 10,000 proxies), counting the proxies that hold
/// `?generation=N` (default: the latest change).
async fn proxy_status(State(s): State<HttpState>, uri: axum::http::Uri) -> Response {
    let generation = match generation_param(&uri) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
    };
    if query_param(&uri, "summary").is_some() {
        json(&s.status.summary(generation))
    } else {
        json(&status_with_pods(&s).await)
    }
}

/// `/status/changes[?generation=N]`: the recent mesh changes (or one), newest first, each with how many
/// proxies hold it and which do not.
async fn changes(State(s): State<HttpState>, uri: axum::http::Uri) -> Response {
    let generation = match generation_param(&uri) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
    };
    let mut changes = s.status.change_status(&s.status.view(), generation);
    // Name the pods of the proxies listed (at most a hundred per change), not of every proxy.
    if let Some(q) = s.actors.get() {
        let listed: Vec<String> = changes.iter().flat_map(|c| c.not_holding.iter().cloned()).collect();
        if let Ok(pods) = q.catalog.send(crate::catalog::PodsOf(listed.clone())).await {
            let pods: std::collections::HashMap<String, String> =
                listed.into_iter().zip(pods).filter_map(|(uuid, pod)| Some((uuid, pod?))).collect();
            for name in changes.iter_mut().flat_map(|c| c.not_holding.iter_mut()) {
                if let Some(pod) = pods.get(name.as_str()) {
                    name.clone_from(pod);
                }
            }
        }
    }
    json(&changes)
}

/// What this controller serves.
pub use messages::status::{CertSeen, Connectivity, MeshSummary, SidecarSeen};

#[derive(Debug, Clone, Default)]
pub struct MeshIdentity {
    pub trust_domain: String,
    pub sources: Vec<String>,
}

/// Who answers the controller's questions about the mesh.
#[derive(Clone)]
pub struct Queries {
    pub catalog: actix::Addr<crate::catalog::CatalogActor>,
    pub certs: actix::Addr<crate::certs::CertActor>,
}

async fn mesh_summary(State(s): State<HttpState>) -> Response {
    let Some(q) = s.actors.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the controller is starting\n").into_response();
    };
    let (Ok(c), Ok(signer)) = (q.catalog.send(crate::catalog::Summary).await, q.certs.send(crate::certs::Signer).await)
    else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the controller is not answering\n").into_response();
    };
    let status = s.status.summary(None);
    let summary = MeshSummary {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        trust_domain: s.identity.trust_domain.clone(),
        sources: s.identity.sources.clone(),
        synced: c.synced,
        mode: if c.permissive { "permissive" } else { "SMI" }.to_owned(),
        egress: c.egress,
        tracing: c.tracing,
        mesh_config: c.mesh_config,
        services: c.services,
        pods: c.pods,
        proxies_connected: status.proxies,
        proxies_synced: status.synced,
        policy_errors: c.policy_errors.len(),
        signing_root: signer,
    };
    json(&summary)
}

/// `/status/connectivity?from=<ns>/<pod>&to=<ns>/<svc>[:<port>]`: the catalog's path check, then the
/// sidecars of both ends (connected, synced) and their certificates.
/// `?pod=<namespace>/<pod>`: the policy objects that shape that pod's sidecar, and how.
async fn pod_policies(State(s): State<HttpState>, uri: axum::http::Uri) -> Response {
    let Some(pod) = query_param(&uri, "pod") else {
        return (StatusCode::BAD_REQUEST, "give pod=<namespace>/<pod>\n").into_response();
    };
    let Some((ns, name)) = pod.split_once('/') else {
        return (StatusCode::BAD_REQUEST, format!("pod={pod}: <namespace>/<pod>\n")).into_response();
    };
    let Some(q) = s.actors.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the controller is starting\n").into_response();
    };
    match q.catalog.send(crate::catalog::PoliciesOf(ns.to_owned(), name.to_owned())).await {
        Ok(Some(p)) => json(&p),
        Ok(None) => (StatusCode::NOT_FOUND, format!("pod {pod} is not in the mesh\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the catalog is not answering\n").into_response(),
    }
}

async fn connectivity(State(s): State<HttpState>, uri: axum::http::Uri) -> axum::response::Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m + "\n").into_response();
    let param = |k: &str| query_param(&uri, k);
    let (Some(from), Some(to)) = (param("from"), param("to")) else {
        return bad("give from=<namespace>/<pod> and to=<namespace>/<service>[:<port>]".to_owned());
    };
    let Some((from_ns, from_pod)) = from.split_once('/') else { return bad(format!("from={from}: <namespace>/<pod>")) };
    let (svc, port) = match to.rsplit_once(':') {
        Some((svc, p)) => match p.parse::<u16>() {
            Ok(p) => (svc, Some(p)),
            Err(_) => return bad(format!("to={to}: the port must be a number")),
        },
        None => (to.as_str(), None),
    };
    let Some((to_ns, to_name)) = svc.split_once('/') else { return bad(format!("to={to}: <namespace>/<service>")) };
    let Some(q) = s.actors.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the controller is starting\n").into_response();
    };
    let ask = crate::catalog::CheckPath {
        from: (from_ns.to_owned(), from_pod.to_owned()),
        to: messages::ServiceKey::new(to_ns, to_name),
        port,
    };
    let Ok(check) = q.catalog.send(ask).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the catalog is not answering\n").into_response();
    };
    let mut sidecars = Vec::new();
    let mut certificates = Vec::new();
    // The sidecars and certificates of both ends, once the source pod is known.
    if check.source.is_some() {
        let seen = |(uuid, identity): &(messages::ProxyUuid, messages::ServiceIdentity), source: bool| SidecarSeen {
            uuid: uuid.to_string(),
            identity: identity.to_string(),
            source,
            status: s.status.proxy(uuid.as_str()),
        };
        sidecars.extend(check.source.iter().map(|p| seen(p, true)));
        sidecars.extend(check.destinations.iter().map(|p| seen(p, false)));
        let identities: std::collections::BTreeSet<messages::ServiceIdentity> =
            check.source.iter().chain(&check.destinations).map(|(_, i)| i.clone()).collect();
        if let Ok(certs) = q.certs.send(crate::certs::CertInfo(identities.into_iter().collect())).await {
            certificates = certs
                .into_iter()
                .map(|(id, info)| CertSeen {
                    identity: id.to_string(),
                    signed_by: info.as_ref().and_then(|f| f.signed_by.clone()),
                    issued: info.map(|f| (f.serial, crate::status::unix(f.not_after))),
                })
                .collect();
        }
    }
    let report = Connectivity::new((from, to), check.steps, sidecars, certificates, crate::status::unix_now());
    json(&report)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let counts = s.status.counts();
    s.metrics.set_proxies_behind(counts.behind);
    s.metrics.set_generation(counts.generation, counts.not_holding_latest);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.encode())
}

/// Bounds on the HTTP endpoint's peers, so idle or slow connections can neither exhaust file descriptors
/// nor keep the health endpoints from answering.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections held at once (beyond it, new ones wait in the listen backlog).
    pub max_connections: usize,
    /// A request's headers must arrive within this (from the connection's start or the previous response).
    pub header_timeout: std::time::Duration,
    /// No connection lives longer than this.
    pub max_connection_age: std::time::Duration,
    /// Connections held at once from one address: one peer's idle sockets cannot take every slot, so the
    /// kubelet's liveness and readiness probes (and Prometheus) are answered whatever one peer does.
    pub max_per_peer: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            header_timeout: std::time::Duration::from_secs(5),
            max_connection_age: std::time::Duration::from_secs(60),
            max_per_peer: 16,
        }
    }
}

/// Serves the endpoint until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), limits, None, shutdown).await
}

#[derive(Debug, thiserror::Error)]
#[error("HTTPS server certificate rejected: {0}")]
pub struct TlsError(String);

/// A TLS acceptor for an HTTPS server with this certificate chain and key (HTTP/1.1, no client certificate).
pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Connections held per peer address.
#[derive(Default, Clone)]
struct PeerCounts(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection of a peer, counted until dropped.
struct PeerHold(PeerCounts, std::net::IpAddr);

impl PeerCounts {
    fn hold(&self, ip: std::net::IpAddr, max: usize) -> Option<PeerHold> {
        let mut counts = self.0.lock().ok()?;
        let n = counts.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(PeerHold(self.clone(), ip))
    }
}

impl Drop for PeerHold {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.0.0.lock()
            && let Some(n) = counts.get_mut(&self.1)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// Serves `app` until `shutdown` resolves, over TLS when an acceptor is given (the handshake counts
/// against the header timeout).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use futures::StreamExt;
    let app = hyper_util::service::TowerToHyperService::new(app);
    // The ADS listener's accept loop: a connection limit, and back-off when descriptors run out.
    let mut conns = std::pin::pin!(xds::server::incoming(listener, limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    let peers = PeerCounts::default();
    loop {
        let conn = tokio::select! {
            () = &mut shutdown => return Ok(()),
            conn = conns.next() => conn,
        };
        let Some(Ok(conn)) = conn else { continue };
        // Past its share, a peer's connection is closed at once (its slot freed for others).
        let Some(held) = conn.peer_addr().and_then(|a| peers.hold(a.ip(), limits.max_per_peer)) else {
            tracing::debug!(peer = ?conn.peer_addr(), "HTTP connection refused: the peer holds its share");
            continue;
        };
        let app = app.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _held = held;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let age = limits.max_connection_age;
            let result = match tls {
                None => {
                    tokio::time::timeout(age, builder.serve_connection(hyper_util::rt::TokioIo::new(conn), app)).await
                }
                Some(tls) => {
                    let stream = match tokio::time::timeout(limits.header_timeout, tls.accept(conn)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "HTTPS handshake failed"),
                        Err(_) => return tracing::debug!("HTTPS handshake timed out"),
                    };
                    tokio::time::timeout(age, builder.serve_connection(hyper_util::rt::TokioIo::new(stream), app)).await
                }
            };
            if let Ok(Err(e)) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ProxyStatusView, SyncState};

    fn seen(uuid: &str, source: bool, state: Option<SyncState>) -> SidecarSeen {
        let identity = if source { "client.demo" } else { "web.demo" };
        SidecarSeen {
            uuid: uuid.to_owned(),
            identity: identity.to_owned(),
            source,
            status: state.map(|state| ProxyStatusView {
                uuid: uuid.to_owned(),
                pod: None,
                identity: identity.to_owned(),
                api: "sotw".to_owned(),
                state,
                generation: 1,
                behind_s: 0.0,
                synced_s_ago: Some(0.0),
                connected_s: 1.0,
                types: Default::default(),
            }),
        }
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: axum::http::Uri = "/status/connectivity?from=bookbuyer%2Fbookbuyer&to=a+b&summary".parse().unwrap();
        assert_eq!(query_param(&uri, "from").as_deref(), Some("bookbuyer/bookbuyer"));
        assert_eq!(query_param(&uri, "to").as_deref(), Some("a b"));
        assert_eq!(query_param(&uri, "summary").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "nope"), None);
    }

    #[test]
    fn replicas_reports_merge_into_what_the_replica_serving_each_sidecar_sees() {
        let path = vec![messages::PathStep { step: "policy".to_owned(), ok: true, detail: "allowed".to_owned() }];
        let ends = ("demo/client".to_owned(), "demo/web:80".to_owned());
        let cert = |id: &str, until: Option<f64>| CertSeen {
            identity: id.to_owned(),
            issued: until.map(|u| ("01".to_owned(), u)),
            signed_by: Some("osm-ca".to_owned()),
        };
        // Replica a serves the client and web-1; replica b serves web-2; each issued its sidecars' certificates.
        let a = Connectivity::new(
            ends.clone(),
            path.clone(),
            vec![
                seen("c", true, Some(SyncState::Synced)),
                seen("w1", false, Some(SyncState::Synced)),
                seen("w2", false, None),
            ],
            vec![cert("client.demo", Some(200.0)), cert("web.demo", Some(250.0))],
            100.0,
        );
        let b = Connectivity::new(
            ends.clone(),
            path.clone(),
            vec![seen("c", true, None), seen("w1", false, None), seen("w2", false, Some(SyncState::Synced))],
            vec![cert("client.demo", None), cert("web.demo", Some(300.0))],
            100.0,
        );
        assert!(!a.ok && !b.ok, "each alone misses the other's sidecars (and b the client's certificate)");
        let merged = Connectivity::merge(vec![a, b.clone()], 100.0).unwrap();
        assert!(merged.ok, "{:#?}", merged.steps);
        assert!(merged.steps.iter().any(|s| s.detail == "all 2 are connected and synced"), "{:#?}", merged.steps);
        // A sidecar refusing its config on the replica it is connected to stays a failure.
        let nack = Connectivity::new(
            ends,
            path,
            vec![
                seen("c", true, Some(SyncState::Nack)),
                seen("w1", false, Some(SyncState::Synced)),
                seen("w2", false, None),
            ],
            vec![cert("client.demo", Some(200.0))],
            100.0,
        );
        let merged = Connectivity::merge(vec![nack, b.clone()], 100.0).unwrap();
        let source = merged.steps.iter().find(|s| s.step == "source sidecar").unwrap();
        assert!(!merged.ok && !source.ok && source.detail.contains("refused"), "{source:?}");
        // The replica serving the client holds a certificate no trusted root issued: a good one elsewhere
        // does not hide it.
        let mut stale = cert("client.demo", Some(500.0));
        stale.signed_by = None;
        let c = Connectivity::new(
            ("demo/client".to_owned(), "demo/web:80".to_owned()),
            vec![],
            vec![
                seen("c", true, Some(SyncState::Synced)),
                seen("w1", false, Some(SyncState::Synced)),
                seen("w2", false, None),
            ],
            vec![stale],
            100.0,
        );
        let mut elsewhere = b;
        elsewhere.certificates.push(cert("client.demo", Some(900.0)));
        let merged = Connectivity::merge(vec![c, elsewhere], 100.0).unwrap();
        let client =
            merged.steps.iter().find(|s| s.step == "certificate" && s.detail.starts_with("client.demo")).unwrap();
        assert!(!client.ok && client.detail.contains("no root the sidecars trust"), "{client:?}");
    }
}
