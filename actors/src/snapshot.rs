//! The snapshot actor: keeps the latest snapshot of every connected proxy in a `watch` channel and
//! rebuilds only dirty proxies. One build runs at a time, on the blocking pool; whatever turns dirty
//! meanwhile goes into the next build, so there is no fixed debounce delay and bursts coalesce.
//!
//! Data only comes to it: the catalog actor says who is dirty ([`MarkDirty`]) and shares its catalog,
//! whose views a batch reads directly off the actor thread; certificates are read from the
//! [`CertStore`], which also tells which identities were renewed; the roots sidecars trust arrive on the
//! certificate actor's watch channel. It asks no actor for anything.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use messages::{Dirty, ProxyUuid, ServiceIdentity};
use tokio::sync::watch;
use xds::{CertInput, ProxySnapshot};

use crate::catalog::SharedCatalog;
use crate::certs::CertStore;
use crate::metrics::Metrics;
use crate::schedule::Schedule;
use crate::status::{MeshProgress, ProxyGenerations};

/// What a session sees of its proxy's configuration.
#[derive(Debug, Clone)]
pub enum ProxyState {
    /// Not built yet.
    Pending,
    /// A snapshot; when the mesh change it reflects was made (`None`: no change, e.g. a first
    /// configuration), for the change-to-ACK metric; and the mesh generation it was built for.
    Ready(Arc<ProxySnapshot>, Option<Instant>, u64),
    /// The pod left the mesh: the session ends with this reason.
    Gone(String),
}

/// A mesh change: the proxies it touches, and what it was (for `/status/changes`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkDirty {
    pub dirty: Dirty,
    pub what: String,
}

/// A proxy's generated configuration, for the debug server: `None` when it has none.
#[derive(Message)]
#[rtype(result = "Option<ConfigSummary>")]
pub struct ProxyConfig(pub ProxyUuid);

/// Resource names, versions and sizes by type (never contents: secrets hold keys).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigSummary {
    pub proxy: String,
    pub identity: String,
    /// Type label → (name, version, bytes).
    pub types: std::collections::BTreeMap<String, Vec<(String, String, usize)>>,
}

/// A session starts: it gets the proxy's latest state and all later ones, and the generations of its
/// builds (for its status).
#[derive(Message)]
#[rtype(result = "Result<(watch::Receiver<ProxyState>, Arc<ProxyGenerations>), usize>")]
pub struct Subscribe {
    pub uuid: ProxyUuid,
    pub identity: ServiceIdentity,
}

/// Sessions one proxy may hold at once: a sidecar keeps one ADS stream, and a reconnect racing the old
/// stream makes two; more is a misbehaving or hostile peer (each session holds its own state, and every
/// push goes to each).
pub const MAX_SESSIONS_PER_PROXY: usize = 8;

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub ProxyUuid);

struct Entry {
    identity: ServiceIdentity,
    /// Changes when the entry is replaced, so a build started for its predecessor is not published to it.
    incarnation: u64,
    /// Shared with the build thread, which publishes each snapshot as soon as it is built.
    tx: Arc<watch::Sender<ProxyState>>,
    /// Which mesh generations the proxy's builds were for; shared with its sessions' status.
    gens: Arc<ProxyGenerations>,
}

pub struct SnapshotActor {
    metrics: Arc<Metrics>,
    catalog: SharedCatalog,
    certs: Arc<CertStore>,
    /// The identities renewed (from the store) and the roots in force (from the certificate actor), taken
    /// as streams when the actor starts.
    renewed: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<ServiceIdentity>>>,
    trust: Option<watch::Receiver<Arc<certs::roots::TrustSet>>>,
    root_pem: Arc<str>,
    proxies: HashMap<ProxyUuid, Entry>,
    schedule: Schedule,
    /// Entries made so far (each entry's incarnation).
    incarnations: u64,
    /// When the earliest mesh change not yet in a build was made.
    change_since: Option<Instant>,
    /// The mesh changes, numbered, and how far the builds have come (shown by `/status/proxies`).
    progress: Arc<MeshProgress>,
    /// Encoded resources kept across builds (only one build runs at a time, so the lock is uncontended).
    cache: Arc<std::sync::Mutex<xds::BuildCache>>,
}

/// The outcome of building one proxy.
enum Built {
    /// Built and already handed to the proxy's session by the build thread.
    Published,
    /// No single pod has this proxy's UUID any more.
    PodGone,
    /// The pod now runs as another service account than the one the proxy authenticated as: it must not
    /// receive that identity's key.
    IdentityChanged(ServiceIdentity),
    /// Why, and the error code when the snapshot itself was refused.
    Failed(String, Option<&'static str>),
}

type BuildResult = Vec<(ProxyUuid, u64, Built)>;

/// Whom a build is for: the identity the proxy authenticated with, its entry's incarnation, its sender and
/// build generations.
type BuildTarget = (ServiceIdentity, u64, Arc<watch::Sender<ProxyState>>, Arc<ProxyGenerations>);

impl SnapshotActor {
    /// Builds from `catalog`'s views and `certs`' certificates; rebuilds the proxies of each identity
    /// `renewed` names, and every proxy when what `trust` says sidecars trust changes.
    pub fn new(
        catalog: SharedCatalog,
        (certs, renewed): (Arc<CertStore>, tokio::sync::mpsc::UnboundedReceiver<Vec<ServiceIdentity>>),
        trust: watch::Receiver<Arc<certs::roots::TrustSet>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let root_pem = trust.borrow().trust_pem().into();
        Self {
            metrics,
            catalog,
            certs,
            renewed: Some(renewed),
            trust: Some(trust),
            root_pem,
            proxies: HashMap::new(),
            schedule: Schedule::new(),
            incarnations: 0,
            cache: Arc::default(),
            change_since: None,
            progress: Arc::default(),
        }
    }

    /// Numbers mesh changes and records how far the builds have come in `progress`.
    pub fn with_progress(self, progress: Arc<MeshProgress>) -> Self {
        Self { progress, ..self }
    }

    fn mark(&mut self, dirty: Dirty) {
        self.schedule.mark(dirty);
        self.progress.set_building(!self.schedule.is_idle());
    }

    /// A mesh change: numbered, its clock started, its proxies marked.
    fn change(&mut self, dirty: Dirty, what: String, ctx: &mut Context<Self>) {
        self.progress.change(what);
        self.change_since.get_or_insert_with(Instant::now);
        self.mark(dirty);
        self.kick(ctx);
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.schedule.is_building() {
            return;
        }
        let proxies = &self.proxies;
        // Sessions drop their receiver when they end (the entry is pruned shortly after); a proxy nobody
        // watches needs no snapshot.
        let connected = |u: &ProxyUuid| proxies.get(u).is_some_and(|e| e.tx.receiver_count() > 0);
        // Proxies that have no configuration yet (just connected) go first: they wait for everything, the
        // others only for a change.
        let waiting = |u: &ProxyUuid| proxies.get(u).is_some_and(|e| matches!(*e.tx.borrow(), ProxyState::Pending));
        let Some(uuids) = self.schedule.start(|| proxies.keys(), connected, waiting) else {
            // Nothing is built or waits to be: every change so far reached every proxy it touched.
            self.change_since = None;
            self.progress.settle(self.progress.latest());
            self.progress.set_building(!self.schedule.is_idle());
            return;
        };
        // This batch carries the changes made so far; those made while it builds start their own clock
        // and come with a later generation.
        let changed_at = self.change_since.take();
        let generation = self.progress.latest();
        let retry = uuids.clone();
        // Per proxy of the batch, in its order (the catalog answers in it): the identity the proxy
        // authenticated with (its pod must still run as that identity), and which entry the build is for.
        let expected: Vec<Option<BuildTarget>> = uuids
            .iter()
            .map(|u| self.proxies.get(u).map(|e| (e.identity.clone(), e.incarnation, e.tx.clone(), e.gens.clone())))
            .collect();
        let catalog = self.catalog.clone();
        let certs = self.certs.clone();
        let root = self.root_pem.clone();
        let metrics = self.metrics.clone();
        let cache = self.cache.clone();
        let work = async move {
            // Views are read from the shared catalog off the actor thread (a batch of thousands of views
            // is CPU work; the catalog actor keeps applying meanwhile, and its next change comes as dirt).
            let views = tokio::task::spawn_blocking(move || {
                let catalog = crate::catalog::read(&catalog);
                catalog.proxy_views(uuids).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| format!("views task failed: {e}"))?;
            let identities: BTreeSet<ServiceIdentity> =
                views.iter().filter_map(|(_, v)| v.as_ref().map(|v| v.identity())).collect();
            let certs = certs.certificates(identities).await;
            // Encoding is CPU work: keep it off the actor thread.
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                // Proxies share every resource they see identically, within a batch and across batches.
                let mut cache = cache.lock().map_err(|_| "build cache poisoned".to_owned())?;
                cache.next_batch();
                let results = views
                    .into_iter()
                    .zip(&expected)
                    .map(|((uuid, view), expected)| {
                        let (identity, incarnation, target) = match expected {
                            Some((id, g, tx, gens)) => (Some(id), *g, Some((tx, gens))),
                            None => (None, 0, None),
                        };
                        let result = match view {
                            None => Built::PodGone,
                            Some(view) if identity != Some(&view.identity()) => Built::IdentityChanged(view.identity()),
                            Some(view) => match certs.get(&view.identity()) {
                                None => Built::Failed(format!("no certificate for {}", view.identity()), None),
                                Some(Err(e)) => {
                                    Built::Failed(format!("no certificate for {}: {e}", view.identity()), None)
                                }
                                Some(Ok(cert)) => match xds::build_with(
                                    &view,
                                    CertInput {
                                        cert_pem: &cert.cert_pem,
                                        key_pem: &cert.key_pem,
                                        trust_bundle_pem: &root,
                                    },
                                    &mut cache,
                                ) {
                                    Ok(snap) => {
                                        // Published at once: the first proxies have the change while the
                                        // last are still being built. (A replaced entry has a new sender;
                                        // this one then reaches nobody.)
                                        if let Some((tx, gens)) = target {
                                            publish_ready(tx, gens, Arc::new(snap), &uuid, changed_at, generation);
                                        }
                                        Built::Published
                                    }
                                    Err(e) => Built::Failed(format!("build failed: {e}"), Some(e.code())),
                                },
                            },
                        };
                        (uuid, incarnation, result)
                    })
                    .collect::<BuildResult>();
                metrics.snapshots_built(results.len(), started.elapsed());
                tracing::debug!(
                    proxies = results.len(),
                    shared = cache.hits,
                    encoded = cache.misses,
                    cached = cache.len(),
                    "batch built"
                );
                Ok::<BuildResult, String>(results)
            })
            .await
            .map_err(|e| format!("build task failed: {e}"))?
        };
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(results) => {
                    act.schedule.finished();
                    let failed = act.publish(results, generation);
                    // Every proxy the batch's changes touched was built for them, or says it failed.
                    act.progress.settle(generation);
                    if !failed.is_empty() {
                        // Try those again shortly (e.g. a certificate that could not be issued).
                        ctx.run_later(std::time::Duration::from_secs(1), move |act, ctx| {
                            act.mark(Dirty::Proxies(failed));
                            act.kick(ctx);
                        });
                    }
                    act.kick(ctx);
                }
                Err(e) => {
                    // Keep the proxies dirty and try again shortly; meanwhile they keep their last config.
                    tracing::error!(error = %e, proxies = retry.len(), "snapshot build failed; retrying in 1s");
                    act.schedule.failed(retry.into_iter().collect());
                    ctx.run_later(std::time::Duration::from_secs(1), |act, ctx| act.kick(ctx));
                }
            }
        }));
    }

    /// Hands each result of a batch built for mesh `generation` to its proxy's session; returns the
    /// proxies whose build failed.
    fn publish(&mut self, results: BuildResult, generation: u64) -> BTreeSet<ProxyUuid> {
        let mut failed = BTreeSet::new();
        for (uuid, incarnation, result) in results {
            let Some(entry) = self.proxies.get(&uuid).filter(|e| e.incarnation == incarnation) else { continue };
            match result {
                Built::Published => {}
                Built::PodGone => {
                    tracing::info!(proxy = %uuid, "pod left the mesh; closing its session");
                    entry.tx.send_replace(ProxyState::Gone("the proxy's pod is no longer in the mesh".to_owned()));
                }
                Built::IdentityChanged(now) => {
                    tracing::warn!(proxy = %uuid, was = %entry.identity, now = %now, "pod changed service account; closing its session");
                    entry.tx.send_replace(ProxyState::Gone(format!(
                        "the pod now runs as {now}, not {}: bootstrap the sidecar again",
                        entry.identity
                    )));
                }
                Built::Failed(reason, code) => {
                    entry.gens.failed(generation);
                    if let Some(code) = code {
                        self.metrics.error(code);
                    }
                    let code = code.unwrap_or_default();
                    if matches!(*entry.tx.borrow(), ProxyState::Ready(..)) {
                        tracing::error!(proxy = %uuid, error = %reason, error_code = code, "build failed; the proxy keeps its last good config");
                    } else {
                        tracing::error!(proxy = %uuid, error = %reason, error_code = code, "build failed; the proxy has no config yet");
                    }
                    failed.insert(uuid);
                }
            }
        }
        failed
    }
}

/// Hands a snapshot built for mesh `generation` to a proxy's session, unless it is the one the session has
/// (the proxy then holds `generation` as soon as it holds that one) or the session was told to end.
fn publish_ready(
    tx: &watch::Sender<ProxyState>,
    gens: &ProxyGenerations,
    snap: Arc<ProxySnapshot>,
    uuid: &ProxyUuid,
    changed_at: Option<Instant>,
    generation: u64,
) {
    let resources = snap.len();
    let changed = tx.send_if_modified(|cur| match cur {
        ProxyState::Ready(old, ..) if old.same_as(&snap) => {
            gens.built(generation);
            false
        }
        // Its session was told to end (the pod left, or changed identity) after this build started; a
        // reconnect resets the state and asks for a new build.
        ProxyState::Gone(_) => false,
        _ => {
            gens.published(generation);
            *cur = ProxyState::Ready(snap, changed_at, generation);
            true
        }
    });
    tracing::debug!(proxy = %uuid, resources, changed, "snapshot published");
}

impl Actor for SnapshotActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        if let Some(renewed) = self.renewed.take() {
            ctx.add_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(renewed));
        }
        if let Some(trust) = self.trust.take() {
            ctx.add_stream(tokio_stream::wrappers::WatchStream::from_changes(trust));
        }
    }
}

impl Handler<MarkDirty> for SnapshotActor {
    type Result = ();
    fn handle(&mut self, msg: MarkDirty, ctx: &mut Self::Context) {
        self.change(msg.dirty, msg.what, ctx);
    }
}

impl Handler<ProxyConfig> for SnapshotActor {
    type Result = MessageResult<ProxyConfig>;
    fn handle(&mut self, msg: ProxyConfig, _: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.proxies.get(&msg.0) else { return MessageResult(None) };
        let ProxyState::Ready(snap, ..) = &*entry.tx.borrow() else { return MessageResult(None) };
        let types = xds::ResourceType::ALL
            .into_iter()
            .map(|ty| {
                let list = snap
                    .get(ty)
                    .resources()
                    .values()
                    .map(|r| (r.name.clone(), r.version.clone(), r.body.value.len()))
                    .collect();
                (xds::type_label(ty.type_url()).to_owned(), list)
            })
            .collect();
        MessageResult(Some(ConfigSummary { proxy: msg.0.to_string(), identity: entry.identity.to_string(), types }))
    }
}

/// The roots in force changed: when what sidecars trust changed (a root rotation step), every proxy gets
/// the new validation contexts (an SDS update alone).
impl StreamHandler<Arc<certs::roots::TrustSet>> for SnapshotActor {
    fn handle(&mut self, set: Arc<certs::roots::TrustSet>, ctx: &mut Self::Context) {
        if *set.trust_pem() == *self.root_pem {
            return;
        }
        self.root_pem = set.trust_pem().into();
        self.change(Dirty::All, "the roots sidecars trust changed".to_owned(), ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

/// Certificates renewed: their proxies get them (an SDS update alone); identities no proxy uses any more
/// are forgotten, so they are not renewed again.
impl StreamHandler<Vec<ServiceIdentity>> for SnapshotActor {
    fn handle(&mut self, renewed: Vec<ServiceIdentity>, ctx: &mut Self::Context) {
        let what = match renewed.as_slice() {
            [one] => format!("the certificate of {one} renewed"),
            many => format!("the certificates of {} identities renewed", many.len()),
        };
        self.proxies.retain(|_, e| e.tx.receiver_count() > 0);
        let set: BTreeSet<ProxyUuid> =
            self.proxies.iter().filter(|(_, e)| renewed.contains(&e.identity)).map(|(u, _)| u.clone()).collect();
        let unused: Vec<ServiceIdentity> =
            renewed.into_iter().filter(|id| !self.proxies.values().any(|e| &e.identity == id)).collect();
        if !unused.is_empty() {
            self.certs.forget(&unused);
        }
        self.change(Dirty::Proxies(set), what, ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<Subscribe> for SnapshotActor {
    type Result = MessageResult<Subscribe>;
    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        // A session for another identity than the entry's (the pod changed service account and its sidecar
        // was bootstrapped again) must never see the old identity's snapshot: start a fresh entry, and end
        // the sessions of the old one.
        if let Some(old) = self.proxies.get(&msg.uuid)
            && old.identity != msg.identity
        {
            old.tx.send_replace(ProxyState::Gone(format!("proxy {} now connects as {}", msg.uuid, msg.identity)));
            self.proxies.remove(&msg.uuid);
        }
        // Refused beyond the bound (how many it has): each session costs memory and a share of every push.
        if let Some(e) = self.proxies.get(&msg.uuid)
            && e.tx.receiver_count() >= MAX_SESSIONS_PER_PROXY
        {
            return MessageResult(Err(e.tx.receiver_count()));
        }
        let incarnations = &mut self.incarnations;
        let entry = self.proxies.entry(msg.uuid.clone()).or_insert_with(|| {
            *incarnations += 1;
            Entry {
                identity: msg.identity.clone(),
                incarnation: *incarnations,
                tx: Arc::new(watch::Sender::new(ProxyState::Pending)),
                gens: Arc::default(),
            }
        });
        let rx = entry.tx.subscribe();
        let gens = entry.gens.clone();
        if matches!(*rx.borrow(), ProxyState::Pending | ProxyState::Gone(_)) {
            entry.tx.send_replace(ProxyState::Pending);
        }
        // Built again even when the entry has a snapshot: a proxy reconnecting before its old entry was
        // pruned missed the batches that ran while it had no session (they skip proxies nobody watches),
        // and a build that failed then was not retried. An identical build sends nothing.
        self.mark(Dirty::Proxies(BTreeSet::from([msg.uuid])));
        self.kick(ctx);
        MessageResult(Ok((rx, gens)))
    }
}

impl Handler<Unsubscribe> for SnapshotActor {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Self::Context) {
        // The session's receiver is dropped just after it sends this; prune once it is gone. Another
        // stream of the same proxy (a reconnect racing the old one) may still be watching.
        ctx.run_later(std::time::Duration::from_millis(100), move |act, _| {
            if act.proxies.get(&msg.0).is_some_and(|e| e.tx.receiver_count() == 0) {
                act.proxies.remove(&msg.0);
            }
        });
    }
}
