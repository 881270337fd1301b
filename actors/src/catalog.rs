//! The catalog actor: the one writer of the [`MeshCatalog`]. It applies source events and pushes what
//! follows downstream: who is dirty to the snapshot actor (awaited: backpressure), the certificate
//! settings and MeshRootCertificates to the certificate actor. The catalog itself is shared
//! ([`SharedCatalog`]): the snapshot builder reads views from it and sessions verify proxies against it
//! directly, off this thread; the HTTP endpoint's questions are answered here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use messages::{
    Dirty, MeshCatalog, MeshConfig, MeshRootCertificate, MeshSettings, PolicyError, ProxyUuid, SourceEvent,
};

use crate::certs::{CertActor, CertSettings, SetRoots};
use crate::metrics::Metrics;

use crate::snapshot::{MarkDirty, SnapshotActor};

/// The catalog, written by the catalog actor alone and read by the snapshot builder and sessions.
pub type SharedCatalog = Arc<std::sync::RwLock<MeshCatalog>>;

/// A new shared catalog with the command line's settings.
pub fn shared_catalog(trust_domain: &str, settings: MeshSettings) -> SharedCatalog {
    let mut catalog = MeshCatalog::new(trust_domain);
    catalog.set_settings(settings);
    Arc::new(std::sync::RwLock::new(catalog))
}

/// Reads a shared catalog (a writer that panicked left it as it was: still the best there is).
pub fn read(catalog: &SharedCatalog) -> std::sync::RwLockReadGuard<'_, MeshCatalog> {
    catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes a shared catalog (the catalog actor alone does).
fn write(catalog: &SharedCatalog) -> std::sync::RwLockWriteGuard<'_, MeshCatalog> {
    catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A batch of source events; answered once the catalog applied them and the snapshot actor took the
/// dirty set, so a fast source slows down instead of queueing without bound.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyEvents {
    /// The source the events come from (a `Reset` names its own).
    pub source: String,
    pub events: Vec<SourceEvent>,
}

impl ApplyEvents {
    /// Events of the mesh directory, the default source.
    pub fn from_dir(events: Vec<SourceEvent>) -> Self {
        Self::from_source(messages::DEFAULT_SOURCE, events)
    }

    pub fn from_source(source: &str, events: Vec<SourceEvent>) -> Self {
        Self { source: source.to_owned(), events }
    }
}

/// Declares the kinds a source will list: the catalog is synced once each was listed once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Expect {
    pub source: String,
    pub kinds: Vec<messages::Kind>,
}

/// Checks the path from a pod (namespace, name) to a Service, on one of its ports or all.
#[derive(Message)]
#[rtype(result = "messages::PathCheck")]
pub struct CheckPath {
    pub from: (String, String),
    pub to: messages::ServiceKey,
    pub port: Option<u16>,
}

/// The policies that shape one pod's sidecar (`osm policy get`).
#[derive(Message)]
#[rtype(result = "Option<messages::status::PodPolicies>")]
pub struct PoliciesOf(pub String, pub String);

/// The pods of these proxies (`<namespace>/<name>`), in the order asked.
#[derive(Message)]
#[rtype(result = "Vec<Option<String>>")]
pub struct PodsOf(pub Vec<String>);

/// What the catalog holds, for the debug server.
#[derive(Message)]
#[rtype(result = "CatalogSummary")]
pub struct Summary;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CatalogSummary {
    pub synced: bool,
    pub services: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub permissive: bool,
    pub egress: bool,
    pub tracing: Option<String>,
    pub mesh_config: Option<String>,
    pub policy_errors: Vec<String>,
    pub root_certificates: Vec<String>,
}

pub struct CatalogActor {
    catalog: SharedCatalog,
    snapshots: Addr<SnapshotActor>,
    /// Raised once the catalog has its first full content (`/health/ready`).
    synced: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// What was last reported, so each problem is logged when it appears, not on every change.
    reported_errors: Vec<PolicyError>,
    reported_config: Option<(Option<MeshConfig>, MeshSettings)>,
    /// Told the service-certificate validity of the MeshConfig in force and the MeshRootCertificates, and
    /// what it was last told.
    certs: Addr<CertActor>,
    told_settings: Option<CertSettings>,
    told_roots: Option<Vec<MeshRootCertificate>>,
    /// Switched by the MeshConfig's `observability.enableDebugServer`.
    debug_switch: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    /// Where the MeshConfig's `certificate.ingressGateway` goes (the gateway certificate's task).
    gateway: Option<Arc<tokio::sync::watch::Sender<Option<messages::IngressGatewayCert>>>>,
    /// Where each IngressBackend's status goes (written on a cluster).
    statuses: Option<Arc<tokio::sync::watch::Sender<crate::policy_status::Statuses>>>,
    /// Follows the MeshConfig's `observability.osmLogLevel`, and the level it was last set to.
    log_level: Option<crate::LogLevelControl>,
    told_log_level: Option<&'static str>,
}

impl CatalogActor {
    /// Writes `catalog`, telling `snapshots` who is dirty and `certs` the certificate settings and roots.
    pub fn new(
        catalog: SharedCatalog,
        (snapshots, certs): (Addr<SnapshotActor>, Addr<CertActor>),
        synced: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            catalog,
            snapshots,
            synced,
            metrics,
            reported_errors: Vec::new(),
            reported_config: None,
            certs,
            told_settings: None,
            told_roots: None,
            debug_switch: None,
            gateway: None,
            statuses: None,
            log_level: None,
            told_log_level: None,
        }
    }

    /// Follows the MeshConfig's `observability.osmLogLevel` through `control`.
    pub fn with_log_level(self, control: Option<crate::LogLevelControl>) -> Self {
        Self { log_level: control, ..self }
    }

    /// Follows the MeshConfig's `observability.enableDebugServer` on `switch`.
    pub fn with_debug_switch(self, switch: Arc<tokio::sync::watch::Sender<bool>>) -> Self {
        Self { debug_switch: Some(switch), ..self }
    }

    pub fn with_ingress_gateway(
        self,
        gateway: Arc<tokio::sync::watch::Sender<Option<messages::IngressGatewayCert>>>,
    ) -> Self {
        Self { gateway: Some(gateway), ..self }
    }

    pub fn with_policy_status(self, statuses: Arc<tokio::sync::watch::Sender<crate::policy_status::Statuses>>) -> Self {
        Self { statuses: Some(statuses), ..self }
    }

    /// Logs what changed in the policy's health and the settings in force.
    fn report(&mut self) {
        let shared = self.catalog.clone();
        let catalog = read(&shared);
        let errors = catalog.policy_errors();
        if errors != self.reported_errors.as_slice() {
            for e in errors.iter().filter(|e| !self.reported_errors.contains(e)) {
                tracing::error!(error_code = e.code, object = %e.object, "policy object not in force: {}", e.reason);
                self.metrics.error(e.code);
            }
            for e in self.reported_errors.iter().filter(|e| !errors.contains(e)) {
                tracing::info!(error_code = e.code, object = %e.object, "policy problem resolved");
            }
            self.reported_errors = errors.to_vec();
            self.metrics.set_policy_errors(errors.len());
        }
        let config = (catalog.mesh_config().cloned(), catalog.settings().clone());
        if self.reported_config.as_ref() != Some(&config) {
            let (mc, settings) = &config;
            let deleted = if catalog.mesh_config_deleted() { " (deleted; its last settings kept)" } else { "" };
            let source = mc.as_ref().map(|m| format!("MeshConfig {}/{}{deleted}", m.namespace, m.name));
            let source = source.as_deref().unwrap_or("command line");
            let mode = if settings.permissive { "permissive" } else { "SMI" };
            tracing::info!(
                traffic_policy = mode,
                egress = settings.enable_egress,
                from = source,
                "mesh settings in force"
            );
            if let Some(mc) = mc
                && !mc.not_acted_on.is_empty()
            {
                tracing::warn!(
                    fields = %mc.not_acted_on.join(", "),
                    "MeshConfig {}/{} sets fields this controller does not act on yet; they have no effect",
                    mc.namespace,
                    mc.name
                );
            }
            self.metrics.set_feature_flags(mc.as_ref().map_or(&[][..], |m| &m.feature_flags));
            self.reported_config = Some(config);
        }
        let mc = catalog.mesh_config();
        let settings = CertSettings {
            validity: mc.and_then(|m| m.service_cert_validity),
            // (The size was checked where the MeshConfig was read.)
            key: mc
                .and_then(|m| m.cert_key_bits)
                .and_then(::certs::RsaBits::new)
                .map_or(::certs::KeyAlgorithm::EcdsaP256, ::certs::KeyAlgorithm::Rsa),
        };
        if self.told_settings != Some(settings) {
            self.certs.do_send(settings);
            self.told_settings = Some(settings);
        }
        if let Some(control) = &self.log_level {
            // OSM's levels in the filter's terms; no MeshConfig level leaves the command line's in force.
            let level = match catalog.mesh_config().and_then(|m| m.osm_log_level.as_deref()) {
                Some("trace") => Some("trace"),
                Some("debug") => Some("debug"),
                Some("info") => Some("info"),
                Some("warn") => Some("warn"),
                Some("error" | "fatal" | "panic") => Some("error"),
                Some("disabled") => Some("off"),
                _ => None,
            };
            if let Some(level) = level.filter(|l| self.told_log_level != Some(*l)) {
                // Said before the change, so the line is seen whichever way the level moves.
                tracing::info!(level, "controller log level set by the MeshConfig's observability.osmLogLevel");
                match (control.0)(level) {
                    Ok(()) => self.told_log_level = Some(level),
                    Err(e) => tracing::warn!(error = %e, level, "cannot set the log level"),
                }
            }
        }
        self.metrics.set_namespaces(catalog.namespace_count());
        if let Some(switch) = &self.debug_switch {
            let on = catalog.mesh_config().and_then(|m| m.enable_debug_server).unwrap_or(false);
            switch.send_if_modified(|cur| std::mem::replace(cur, on) != on);
        }
        if let Some(statuses) = &self.statuses {
            let now = crate::policy_status::of(&catalog);
            if *statuses.borrow() != now {
                for ib in crate::policy_status::insecure(&catalog) {
                    tracing::warn!(
                        object = %ib,
                        "IngressBackend admits plain HTTP from any address, which is insecure: name the ingress \
                         controller in spec.sources (its Service or an IPRange)"
                    );
                }
                statuses.send_replace(now);
            }
        }
        if let Some(gateway) = &self.gateway {
            let want = catalog.mesh_config().and_then(|m| m.ingress_gateway.as_deref().cloned());
            gateway.send_if_modified(|cur| {
                let changed = *cur != want;
                if changed {
                    cur.clone_from(&want);
                }
                changed
            });
        }
        let roots: Vec<MeshRootCertificate> = catalog.root_certificates().cloned().collect();
        if self.told_roots.as_ref() != Some(&roots) {
            self.certs.do_send(SetRoots(roots.clone()));
            self.told_roots = Some(roots);
        }
    }
}

impl Actor for CatalogActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Queries from many sessions arrive at once on a restart; give them room.
        ctx.set_mailbox_capacity(1024);
    }
}

/// `osm_k8s_api_event_count` for one event from the cluster.
fn count_k8s_event(metrics: &Metrics, event: &SourceEvent) {
    match event {
        SourceEvent::Apply(o) => {
            let key = o.key();
            metrics.k8s_event(key.kind, "applied", &key.namespace);
        }
        SourceEvent::Delete(key) => metrics.k8s_event(key.kind, "deleted", &key.namespace),
        SourceEvent::Reset(r) => r.kinds.iter().for_each(|k| metrics.k8s_event(*k, "relisted", "")),
    }
}

impl Handler<ApplyEvents> for CatalogActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: ApplyEvents, _: &mut Self::Context) -> Self::Result {
        let mut dirty = Dirty::Nothing;
        // What changed, for `/status/changes`: the first event that touched a proxy, and how many more did.
        let (mut first, mut more) = (None, 0usize);
        let from_cluster = msg.source == k8s::watch::SOURCE;
        let shared = self.catalog.clone();
        let mut catalog = write(&shared);
        for event in msg.events {
            if from_cluster {
                count_k8s_event(&self.metrics, &event);
            }
            let described = first.is_none().then(|| describe(&event));
            let touched = catalog.apply_from(&msg.source, event);
            if touched != Dirty::Nothing {
                if first.is_none() {
                    first = described;
                } else {
                    more += 1;
                }
            }
            dirty = dirty.merge(touched);
        }
        let synced = catalog.is_synced();
        let (services, endpoints, pods) = catalog.counts();
        // Readers (builds, sessions) wait only while the events are applied.
        drop(catalog);
        if synced {
            self.synced.store(true, Ordering::Relaxed);
            self.report();
        }
        tracing::debug!(services, endpoints, pods, ?dirty, "catalog updated");
        let snapshots = self.snapshots.clone();
        Box::pin(
            async move {
                if dirty != Dirty::Nothing {
                    let mut what = first.unwrap_or_default();
                    if more > 0 {
                        what.push_str(&format!(" and {more} more"));
                    }
                    // Awaited: the catalog waits while the snapshot actor's mailbox is full.
                    let _ = snapshots.send(MarkDirty { dirty, what }).await;
                }
            }
            .into_actor(self),
        )
    }
}

/// A source event in a few words (the `what` of a mesh change).
fn describe(event: &messages::SourceEvent) -> String {
    match event {
        messages::SourceEvent::Apply(object) => format!("{} applied", object.key()),
        messages::SourceEvent::Delete(key) => format!("{key} deleted"),
        messages::SourceEvent::Reset(reset) => {
            format!("{} listed ({} objects)", reset.source, reset.objects.len())
        }
    }
}

impl Handler<Expect> for CatalogActor {
    type Result = ();
    fn handle(&mut self, msg: Expect, _: &mut Self::Context) {
        let mut catalog = write(&self.catalog);
        catalog.expect(&msg.source, msg.kinds);
        self.synced.store(catalog.is_synced(), Ordering::Relaxed);
    }
}

impl Handler<PodsOf> for CatalogActor {
    type Result = MessageResult<PodsOf>;
    fn handle(&mut self, msg: PodsOf, _: &mut Self::Context) -> Self::Result {
        let catalog = read(&self.catalog);
        MessageResult(msg.0.iter().map(|u| ProxyUuid::parse(u).ok().and_then(|u| catalog.pod_of(&u))).collect())
    }
}

impl Handler<Summary> for CatalogActor {
    type Result = MessageResult<Summary>;
    fn handle(&mut self, _: Summary, _: &mut Self::Context) -> Self::Result {
        let c = read(&self.catalog);
        let (services, endpoints, pods) = c.counts();
        let settings = c.settings();
        MessageResult(CatalogSummary {
            synced: c.is_synced(),
            services,
            endpoints,
            pods,
            permissive: settings.permissive,
            egress: settings.enable_egress,
            tracing: settings.tracing.as_ref().map(|t| format!("{}:{}{}", t.address, t.port, t.endpoint)),
            mesh_config: c.mesh_config().map(|m| {
                let deleted = if c.mesh_config_deleted() { " (deleted; its last settings kept)" } else { "" };
                format!("{}/{}{deleted}", m.namespace, m.name)
            }),
            policy_errors: c.policy_errors().iter().map(|e| format!("{} {}: {}", e.code, e.object, e.reason)).collect(),
            root_certificates: c
                .root_certificates()
                .map(|m| format!("{}/{} ({})", m.namespace, m.name, m.role))
                .collect(),
        })
    }
}

impl Handler<PoliciesOf> for CatalogActor {
    type Result = MessageResult<PoliciesOf>;
    fn handle(&mut self, msg: PoliciesOf, _: &mut Self::Context) -> Self::Result {
        MessageResult(read(&self.catalog).pod_policies(&msg.0, &msg.1))
    }
}

impl Handler<CheckPath> for CatalogActor {
    type Result = MessageResult<CheckPath>;
    fn handle(&mut self, msg: CheckPath, _: &mut Self::Context) -> Self::Result {
        MessageResult(read(&self.catalog).check_path((&msg.from.0, &msg.from.1), &msg.to, msg.port))
    }
}
