//! One actor per connected proxy, and the [`SessionManager`] that admits proxies.
//!
//! The session actor owns the proxy's pure session state machine (SotW or delta), its request stream and
//! its snapshot watch. Responses are sent with `ctx.wait`, so a slow proxy stops its own session from
//! reading further input (backpressure) and never grows a queue.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;
use messages::{ProxyId, VerifyError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use xds::server::RequestStream;
use xds::sotw::Outcome;
use xds::{AdsStream, Protocol, SessionHandler};

use crate::catalog::{CatalogActor, IsSynced, Verify};
use crate::metrics::Metrics;
use crate::snapshot::{ProxyState, SnapshotActor, Subscribe, Unsubscribe};

pub struct ProxySession<P: Protocol> {
    proxy: ProxyId,
    uuid: String,
    identity: String,
    metrics: Arc<Metrics>,
    protocol: P,
    responses: mpsc::Sender<Result<P::Response, Status>>,
    snapshots: Addr<SnapshotActor>,
    setup: Option<(RequestStream<P::Request>, watch::Receiver<ProxyState>)>,
}

impl<P: Protocol> ProxySession<P> {
    fn send_all(&mut self, out: Vec<P::Response>, ctx: &mut Context<Self>) {
        if out.is_empty() {
            return;
        }
        let tx = self.responses.clone();
        let (metrics, uuid) = (self.metrics.clone(), self.uuid.clone());
        ctx.wait(
            async move {
                for r in out {
                    let ty = xds::type_label(P::response_type_url(&r));
                    let ok = tx.send(Ok(r)).await.is_ok();
                    metrics.response_sent(&uuid, ty, ok);
                    if !ok {
                        return false;
                    }
                }
                true
            }
            .into_actor(self)
            .map(|ok, _, ctx| {
                if !ok {
                    ctx.stop();
                }
            }),
        );
    }

    fn handle_outcome(&mut self, out: Outcome<P::Response>, ctx: &mut Context<Self>) {
        if let Some(nack) = &out.nack {
            self.metrics.nack(xds::type_label(&nack.type_url));
            tracing::warn!(
                proxy = %self.proxy, type_url = %nack.type_url, version = %nack.version, error = %nack.message,
                "proxy rejected config (NACK); it keeps its last good config"
            );
        }
        if let Some(t) = &out.unknown_type {
            tracing::warn!(proxy = %self.proxy, type_url = %t, "proxy asked for a resource type this control plane does not serve");
        }
        self.send_all(out.responses, ctx);
    }
}

impl<P: Protocol> Actor for ProxySession<P> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some((requests, states)) = self.setup.take() {
            ctx.add_stream(requests);
            ctx.add_stream(WatchStream::new(states));
        }
        self.metrics.proxy_connected(&self.uuid, &self.identity);
        tracing::info!(proxy = %self.proxy, api = P::NAME, "proxy connected");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.metrics.proxy_disconnected(&self.uuid);
        tracing::info!(proxy = %self.proxy, "proxy disconnected");
        self.snapshots.do_send(Unsubscribe(self.proxy.uuid.clone()));
    }
}

impl<P: Protocol> StreamHandler<Result<P::Request, Status>> for ProxySession<P> {
    fn handle(&mut self, item: Result<P::Request, Status>, ctx: &mut Self::Context) {
        match item {
            Ok(req) => {
                self.metrics.xds_request(&self.uuid, xds::type_label(P::request_type_url(&req)));
                let out = self.protocol.on_request(&req);
                self.handle_outcome(out, ctx);
            }
            Err(status) => {
                tracing::debug!(proxy = %self.proxy, %status, "request stream error");
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl<P: Protocol> StreamHandler<ProxyState> for ProxySession<P> {
    fn handle(&mut self, state: ProxyState, ctx: &mut Self::Context) {
        match state {
            ProxyState::Pending => {}
            ProxyState::Ready(snap) => {
                let out = self.protocol.on_snapshot(snap);
                self.send_all(out, ctx);
            }
            ProxyState::Gone(reason) => {
                let tx = self.responses.clone();
                ctx.wait(
                    async move {
                        let _ = tx.send(Err(Status::permission_denied(reason))).await;
                    }
                    .into_actor(self)
                    .map(|_, _, ctx| ctx.stop()),
                );
            }
        }
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

/// Admits proxies: verifies them against the catalog, subscribes them to their snapshots and starts
/// their session actor on one of the session arbiters (threads), round robin.
pub struct SessionManager {
    catalog: Addr<CatalogActor>,
    snapshots: Addr<SnapshotActor>,
    arbiters: Vec<ArbiterHandle>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl SessionManager {
    pub fn new(
        catalog: Addr<CatalogActor>,
        snapshots: Addr<SnapshotActor>,
        arbiters: Vec<ArbiterHandle>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { catalog, snapshots, arbiters, next: AtomicUsize::new(0), metrics }
    }

    fn arbiter(&self) -> ArbiterHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        match self.arbiters.get(i % self.arbiters.len().max(1)) {
            Some(a) => a.clone(),
            None => Arbiter::current(),
        }
    }
}

/// What a session actor starts with.
struct SessionParts<P: Protocol> {
    proxy: ProxyId,
    protocol: P,
    requests: RequestStream<P::Request>,
    responses: mpsc::Sender<Result<P::Response, Status>>,
    states: watch::Receiver<ProxyState>,
    snapshots: Addr<SnapshotActor>,
    metrics: Arc<Metrics>,
}

fn start<P: Protocol + Send>(arbiter: &ArbiterHandle, parts: SessionParts<P>)
where
    P::Response: Send,
{
    let SessionParts { proxy, protocol, requests, responses, states, snapshots, metrics } = parts;
    ProxySession::start_in_arbiter(arbiter, move |_| ProxySession {
        uuid: proxy.uuid.to_string(),
        identity: proxy.identity.to_string(),
        metrics,
        proxy,
        protocol,
        responses,
        snapshots,
        setup: Some((requests, states)),
    });
}

impl SessionHandler for SessionManager {
    fn open(
        &self,
        proxy: ProxyId,
        peer: Option<SocketAddr>,
        stream: AdsStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'static>> {
        let catalog = self.catalog.clone();
        let snapshots = self.snapshots.clone();
        let arbiter = self.arbiter();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let unavailable = |e: MailboxError| Status::unavailable(format!("control plane busy: {e}"));
            if !catalog.send(IsSynced).await.map_err(unavailable)? {
                metrics.rejected("not_synced");
                return Err(Status::unavailable("the mesh catalog has not finished its first sync; retry shortly"));
            }
            if let Err(e) = catalog.send(Verify(proxy.clone())).await.map_err(unavailable)? {
                tracing::warn!(proxy = %proxy, peer = ?peer, error = %e, "refused proxy");
                metrics.rejected(match e {
                    VerifyError::UnknownProxy(_) => "unknown_proxy",
                    VerifyError::DuplicateProxy { .. } => "duplicate_proxy",
                    VerifyError::IdentityMismatch { .. } => "identity_mismatch",
                });
                return Err(Status::permission_denied(e.to_string()));
            }
            let states = snapshots
                .send(Subscribe { uuid: proxy.uuid.clone(), identity: proxy.identity.clone() })
                .await
                .map_err(unavailable)?;
            match stream {
                AdsStream::Sotw { requests, responses } => {
                    let protocol = xds::sotw::SotwSession::new();
                    start(&arbiter, SessionParts { proxy, protocol, requests, responses, states, snapshots, metrics })
                }
                AdsStream::Delta { requests, responses } => {
                    let protocol = xds::delta::DeltaSession::new();
                    start(&arbiter, SessionParts { proxy, protocol, requests, responses, states, snapshots, metrics })
                }
            }
            Ok(())
        })
    }
}
