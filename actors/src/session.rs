//! One session per connected proxy, and the [`SessionManager`] that admits proxies.
//!
//! A session is a task on the multi-threaded serving runtime that owns the proxy's pure session state
//! machine (SotW or delta), its request stream and its snapshot watch, and reacts to whichever comes
//! first. Responses are awaited one by one, so a slow proxy stops its own session from reading further
//! input (backpressure) and never grows a queue; snapshots that arrive meanwhile coalesce in the watch.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use futures::StreamExt;
use messages::{ProxyId, VerifyError};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use xds::limits::peer_str;
use xds::server::RequestStream;
use xds::{AdsStream, Protocol, SessionHandler};

use crate::catalog::SharedCatalog;
use crate::metrics::{Metrics, ProxyCounters};
use crate::snapshot::{ProxyState, SnapshotActor, Subscribe, Unsubscribe};
use crate::status::{ProxyStatus, StatusBoard};

/// Admits proxies: verifies them against the catalog, subscribes them to their snapshots and spawns
/// their session on the serving runtime.
pub struct SessionManager {
    /// Read directly to admit a proxy (no message to the catalog actor).
    catalog: SharedCatalog,
    snapshots: Addr<SnapshotActor>,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    /// Raised at shutdown: every session tells its proxy to go (UNAVAILABLE) and ends.
    stopping: watch::Receiver<bool>,
}

impl SessionManager {
    pub fn new(
        catalog: SharedCatalog,
        snapshots: Addr<SnapshotActor>,
        metrics: Arc<Metrics>,
        status: Arc<StatusBoard>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self { catalog, snapshots, metrics, status, stopping }
    }
}

/// What a session starts with.
struct Session<P: Protocol> {
    proxy: ProxyId,
    uuid: messages::ProxyUuid,
    protocol: P,
    requests: RequestStream<P::Request>,
    responses: mpsc::Sender<Result<P::Response, Status>>,
    states: watch::Receiver<ProxyState>,
    metrics: Arc<Metrics>,
    /// This proxy's series in `metrics`.
    counters: Arc<ProxyCounters>,
    /// This proxy's config status (what was sent, ACKed, refused).
    status: Arc<ProxyStatus>,
    board: Arc<StatusBoard>,
    stopping: watch::Receiver<bool>,
    /// Warnings this session logged about what its proxy sent; past [`WARNINGS_PER_SESSION`] they are
    /// suppressed, so a hostile or broken proxy cannot flood the log.
    warnings: u32,
    /// The proxy got its first configuration (later ones are changes, timed to their ACK).
    configured: bool,
}

const WARNINGS_PER_SESSION: u32 = 8;

/// Connect and disconnect lines: per proxy, at most one every 10 s (the first at once).
static CONNECT_LINES: std::sync::LazyLock<messages::ratelog::KeyedLogLimiter> =
    std::sync::LazyLock::new(|| messages::ratelog::KeyedLogLimiter::new(std::time::Duration::from_secs(10), 65_536));
static DISCONNECT_LINES: std::sync::LazyLock<messages::ratelog::KeyedLogLimiter> =
    std::sync::LazyLock::new(|| messages::ratelog::KeyedLogLimiter::new(std::time::Duration::from_secs(10), 65_536));

/// Why a session ended.
enum End {
    /// The proxy closed its stream or went away.
    Proxy,
    /// Tell the proxy why before closing.
    Close(Status),
}

impl<P: Protocol + Send> Session<P>
where
    P::Response: Send,
{
    async fn run(mut self) {
        // A proxy reconnecting in a loop (or a peer opening streams as one) writes a line now and then
        // with how many were left out, not one per stream.
        if let Some(left_out) = CONNECT_LINES.admit(self.uuid.as_str()) {
            tracing::info!(proxy = %self.proxy, api = P::NAME, left_out_since_last = left_out, "proxy connected");
        }
        let end = self.serve().await;
        if let End::Close(status) = end {
            let _ = self.responses.send(Err(status)).await;
        }
        self.metrics.proxy_disconnected(self.uuid.as_str());
        self.board.leave(&self.status);
        if let Some(left_out) = DISCONNECT_LINES.admit(self.uuid.as_str()) {
            tracing::info!(proxy = %self.proxy, left_out_since_last = left_out, "proxy disconnected");
        }
    }

    async fn serve(&mut self) -> End {
        // The state at subscription may already be a snapshot.
        let first = self.states.borrow_and_update().clone();
        if let Some(end) = self.on_state(first).await {
            return end;
        }
        loop {
            enum Event<R> {
                Stop,
                State(bool),
                Request(Option<Result<R, Status>>),
            }
            let event = tokio::select! {
                biased;
                _ = self.stopping.wait_for(|s| *s) => Event::Stop,
                changed = self.states.changed() => Event::State(changed.is_ok()),
                req = self.requests.next() => Event::Request(req),
            };
            match event {
                Event::Stop => return End::Close(Status::unavailable("the control plane is shutting down; reconnect")),
                Event::State(false) => {
                    return End::Close(Status::unavailable("the control plane dropped this proxy; reconnect"));
                }
                Event::State(true) => {
                    let state = self.states.borrow_and_update().clone();
                    if let Some(end) = self.on_state(state).await {
                        return end;
                    }
                }
                Event::Request(Some(Ok(req))) => {
                    let ty = xds::type_label(P::request_type_url(&req));
                    self.counters.xds_request(ty);
                    let (nonce, error) = P::request_answer(&req);
                    self.status.answered(ty, nonce, error);
                    let out = self.protocol.on_request(&req);
                    if let Some(reason) = out.refused {
                        tracing::warn!(proxy = %self.proxy, %reason, "request refused; closing the stream");
                        return End::Close(Status::resource_exhausted(format!("request refused: {reason}")));
                    }
                    if let Some(nack) = &out.nack {
                        self.metrics.nack(xds::type_label(&nack.type_url));
                        self.metrics.error(messages::errcode::PROXY_NACK);
                        let (ty, version, error) =
                            (peer_str(&nack.type_url), peer_str(&nack.version), peer_str(&nack.message));
                        self.warn(|proxy| {
                            tracing::warn!(
                                %proxy, type_url = %ty, %version, %error,
                                error_code = messages::errcode::PROXY_NACK,
                                "proxy rejected config (NACK); it keeps its last good config"
                            )
                        });
                    }
                    if let Some(t) = &out.unknown_type {
                        let t = peer_str(t);
                        self.warn(|proxy| {
                            tracing::warn!(%proxy, type_url = %t, "proxy asked for a resource type this control plane does not serve")
                        });
                    }
                    if !self.send_all(out.responses).await {
                        return End::Proxy;
                    }
                    // Only now: an ACK may have released a response the session held back for it.
                    self.settle();
                }
                Event::Request(Some(Err(status))) => {
                    // An undecodable or oversized request ends the stream with an error the proxy sees,
                    // never with OK. (If the proxy itself went away, nobody reads this.)
                    tracing::debug!(proxy = %self.proxy, %status, "request stream error");
                    return End::Close(Status::new(status.code(), format!("request refused: {}", status.message())));
                }
                Event::Request(None) => return End::Proxy,
            }
        }
    }

    /// Logs a warning about what the proxy sent, until the session's budget is spent.
    fn warn(&mut self, log: impl FnOnce(&ProxyId)) {
        self.warnings += 1;
        if self.warnings <= WARNINGS_PER_SESSION {
            log(&self.proxy);
        }
        if self.warnings == WARNINGS_PER_SESSION {
            tracing::warn!(proxy = %self.proxy, "further warnings about this proxy's requests are suppressed (NACKs are still counted in metrics)");
        }
    }

    async fn on_state(&mut self, state: ProxyState) -> Option<End> {
        match state {
            ProxyState::Pending => None,
            ProxyState::Ready(snap, changed_at, generation) => {
                let out = self.protocol.on_snapshot(snap);
                // A change that sends nothing to this proxy is not waited for, nor a first configuration.
                if let Some(at) = changed_at
                    && !out.is_empty()
                    && self.configured
                {
                    self.status.change_sent(at);
                }
                self.configured = true;
                if !self.send_all(out).await {
                    return Some(End::Proxy);
                }
                self.status.took(generation);
                self.settle();
                None
            }
            ProxyState::Gone(reason) => Some(End::Close(Status::permission_denied(reason))),
        }
    }

    /// When the proxy holds everything sent to it, it holds the generation last taken; a change it was
    /// waiting for is timed.
    fn settle(&self) {
        if let Some(took) = self.status.settle() {
            self.metrics.change_acked(took);
        }
    }

    /// Sends in order; false once the proxy is gone.
    async fn send_all(&mut self, out: Vec<P::Response>) -> bool {
        for r in out {
            let ty = xds::type_label(P::response_type_url(&r));
            let (nonce, version) = P::response_nonce_version(&r);
            self.status.sent(ty, nonce, version);
            let ok = self.responses.send(Ok(r)).await.is_ok();
            self.counters.response_sent(ty, ok);
            if !ok {
                return false;
            }
        }
        true
    }
}

/// What every session starts with, whichever protocol it speaks.
struct Admitted {
    proxy: ProxyId,
    states: watch::Receiver<ProxyState>,
    gens: Arc<crate::status::ProxyGenerations>,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    stopping: watch::Receiver<bool>,
    snapshots: Addr<SnapshotActor>,
}

impl Admitted {
    /// Runs the session on the serving runtime; the snapshot actor hears when it ends.
    fn spawn<P: Protocol + Send>(
        self,
        protocol: P,
        requests: RequestStream<P::Request>,
        responses: mpsc::Sender<Result<P::Response, Status>>,
    ) where
        P::Response: Send,
    {
        let Admitted { proxy, states, gens, metrics, board, stopping, snapshots } = self;
        let uuid = proxy.uuid.clone();
        // Formatted once and shared by the proxy's status and metrics.
        let identity: Arc<str> = proxy.identity.to_string().into();
        let counters = metrics.proxy_connected(&uuid, &identity);
        let status = board.join(&uuid, identity, P::NAME, gens);
        let session = Session {
            uuid: uuid.clone(),
            proxy,
            protocol,
            requests,
            responses,
            states,
            metrics,
            counters,
            status,
            board,
            stopping,
            warnings: 0,
            configured: false,
        };
        tokio::spawn(async move {
            session.run().await;
            snapshots.do_send(Unsubscribe(uuid));
        });
    }
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
        let metrics = self.metrics.clone();
        let board = self.status.clone();
        let stopping = self.stopping.clone();
        Box::pin(async move {
            let unavailable = |e: MailboxError| Status::unavailable(format!("control plane busy: {e}"));
            if *stopping.borrow() {
                return Err(Status::unavailable("the control plane is shutting down; reconnect"));
            }
            let verified = {
                let catalog = crate::catalog::read(&catalog);
                catalog.is_synced().then(|| catalog.verify(&proxy).map(|_| ()))
            };
            let Some(verified) = verified else {
                metrics.rejected("not_synced");
                return Err(Status::unavailable("the mesh catalog has not finished its first sync; retry shortly"));
            };
            if let Err(e) = verified {
                use messages::errcode;
                let (reason, code) = match e {
                    VerifyError::UnknownProxy(_) => ("unknown_proxy", errcode::PROXY_UNKNOWN),
                    VerifyError::DuplicateProxy { .. } => ("duplicate_proxy", errcode::PROXY_DUPLICATE),
                    VerifyError::IdentityMismatch { .. } => ("identity_mismatch", errcode::PROXY_IDENTITY_MISMATCH),
                };
                tracing::warn!(proxy = %proxy, peer = ?peer, error = %e, error_code = code, "refused proxy");
                metrics.rejected(reason);
                metrics.error(code);
                return Err(Status::permission_denied(e.to_string()));
            }
            let subscribed = snapshots
                .send(Subscribe { uuid: proxy.uuid.clone(), identity: proxy.identity.clone() })
                .await
                .map_err(unavailable)?;
            let (states, gens) = match subscribed {
                Ok(s) => s,
                Err(held) => {
                    // Rate-limited: a peer opening streams in a loop must not flood the log.
                    static LIMITER: std::sync::LazyLock<messages::ratelog::LogLimiter> =
                        std::sync::LazyLock::new(|| {
                            messages::ratelog::LogLimiter::new(std::time::Duration::from_secs(10))
                        });
                    if let Some(left_out) = LIMITER.admit("too_many_sessions") {
                        tracing::warn!(proxy = %proxy, peer = ?peer, sessions = held, left_out_since_last = left_out, "refused a session: the proxy holds too many");
                    }
                    metrics.rejected("too_many_sessions");
                    return Err(Status::resource_exhausted(format!(
                        "proxy {} already holds {held} sessions (at most {})",
                        proxy.uuid,
                        crate::snapshot::MAX_SESSIONS_PER_PROXY
                    )));
                }
            };
            let admitted = Admitted { proxy, states, gens, metrics, board, stopping, snapshots };
            match stream {
                AdsStream::Sotw { requests, responses } => {
                    admitted.spawn(xds::sotw::SotwSession::new(), requests, responses);
                }
                AdsStream::Delta { requests, responses } => {
                    admitted.spawn(xds::delta::DeltaSession::new(), requests, responses);
                }
            }
            Ok(())
        })
    }
}
