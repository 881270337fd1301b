//! The controller's HTTP endpoint (OSM: port 9091): liveness, readiness, Prometheus metrics, version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// True once the catalog has its first full content (the ADS listener is bound before that).
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health/alive", get(|| async { "alive\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
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

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
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
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            header_timeout: std::time::Duration::from_secs(5),
            max_connection_age: std::time::Duration::from_secs(60),
        }
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use futures::StreamExt;
    let app = hyper_util::service::TowerToHyperService::new(router(state));
    // The ADS listener's accept loop: a connection limit, and back-off when descriptors run out.
    let mut conns = std::pin::pin!(xds::server::incoming(listener, limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            () = &mut shutdown => return Ok(()),
            conn = conns.next() => conn,
        };
        let Some(Ok(conn)) = conn else { continue };
        let app = app.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let serving = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), app);
            if let Ok(Err(e)) = tokio::time::timeout(limits.max_connection_age, serving).await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}
