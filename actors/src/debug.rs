//! The debug server (OSM: port 9092): off by default, switched on and off live by the MeshConfig's
//! `observability.enableDebugServer`, bound to `--debug-addr` (localhost unless configured). Read-only
//! JSON views of what the controller holds: connected proxies and their status, issued certificates
//! (identity, serial, expiry — never keys), the catalog, and a proxy's generated configuration (resource
//! names, versions and sizes by type).

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;

use crate::http::{HttpLimits, Queries, json, query_param};
use crate::status::StatusBoard;

/// What the debug server reads.
#[derive(Clone)]
pub struct DebugState {
    pub queries: Queries,
    pub snapshots: Addr<crate::snapshot::SnapshotActor>,
    pub status: Arc<StatusBoard>,
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the controller is not answering\n").into_response()
}

/// An actor's answer as JSON, or 503 when it did not answer.
fn answer<T: Serialize, E>(answered: Result<T, E>) -> Response {
    answered.map_or_else(|_| unavailable(), |v| json(&v))
}

pub fn router(state: DebugState) -> Router {
    Router::new()
        .route(
            "/debug",
            get(|| async {
                "/debug/proxies  connected proxies and their config status\n\
                 /debug/certs    issued service certificates (identity, serial, expiry)\n\
                 /debug/catalog  what the catalog holds\n\
                 /debug/config?proxy=<uuid>  a proxy's generated configuration\n"
            }),
        )
        .route("/debug/proxies", get(|State(s): State<DebugState>| async move { json(&s.status.view()) }))
        .route(
            "/debug/certs",
            get(|State(s): State<DebugState>| async move { answer(s.queries.certs.send(crate::certs::ListCerts).await) }),
        )
        .route(
            "/debug/catalog",
            get(|State(s): State<DebugState>| async move { answer(s.queries.catalog.send(crate::catalog::Summary).await) }),
        )
        .route(
            "/debug/config",
            get(|State(s): State<DebugState>, uri: axum::http::Uri| async move {
                let Some(uuid) = query_param(&uri, "proxy") else {
                    return (StatusCode::BAD_REQUEST, "give proxy=<uuid> (see /debug/proxies)\n").into_response();
                };
                let Ok(uuid) = messages::ProxyUuid::parse(&uuid) else {
                    return (StatusCode::BAD_REQUEST, "proxy=<uuid>: not a proxy UUID\n").into_response();
                };
                match s.snapshots.send(crate::snapshot::ProxyConfig(uuid)).await {
                    Ok(Some(config)) => json(&config),
                    Ok(None) => {
                        (StatusCode::NOT_FOUND, "no configuration for that proxy (not connected?)\n").into_response()
                    }
                    Err(_) => unavailable(),
                }
            }),
        )
        .with_state(state)
}

/// Serves the debug endpoints while `enabled` says so, until `stopped` resolves.
pub async fn run(
    mut enabled: watch::Receiver<bool>,
    addr: SocketAddr,
    state: DebugState,
    limits: HttpLimits,
    stopped: impl Future<Output = ()> + Send,
) {
    let mut stopped = std::pin::pin!(stopped);
    loop {
        // Off: wait to be switched on.
        tokio::select! {
            () = &mut stopped => return,
            on = enabled.wait_for(|on| *on) => if on.is_err() { return },
        }
        let listener = match xds::server::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot start the debug server (is --debug-addr taken?)");
                tokio::select! {
                    () = &mut stopped => return,
                    off = enabled.wait_for(|on| !*on) => if off.is_err() { return } else { continue },
                }
            }
        };
        tracing::info!(%addr, "debug server on (MeshConfig observability.enableDebugServer): /debug");
        let mut off = enabled.clone();
        let until = async move {
            let _ = off.wait_for(|on| !*on).await;
        };
        let serving = crate::http::serve_router(listener, router(state.clone()), limits.clone(), None, until);
        tokio::select! {
            () = &mut stopped => return,
            result = serving => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "debug server failed");
                }
            }
        }
        tracing::info!("debug server off");
        if enabled.has_changed().is_err() {
            return;
        }
    }
}
