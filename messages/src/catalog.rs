//! The mesh index: every object the sources reported, and the per-proxy view derived from them.
//!
//! A plain struct with synchronous methods, owned by the catalog actor and tested here without any runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::events::SourceEvent;
use crate::kinds::{Keyed, Model, Role};
use crate::model::*;
use crate::policy::{self, InboundPolicy, Policy, PolicyError};

/// Which proxies need a new snapshot after a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Dirty {
    #[default]
    Nothing,
    /// The change is visible to every proxy (in permissive mode every proxy sees every Service).
    All,
    Proxies(BTreeSet<ProxyUuid>),
}

impl Dirty {
    pub fn merge(self, other: Dirty) -> Dirty {
        match (self, other) {
            (Dirty::All, _) | (_, Dirty::All) => Dirty::All,
            (Dirty::Nothing, d) | (d, Dirty::Nothing) => d,
            (Dirty::Proxies(mut a), Dirty::Proxies(b)) => {
                a.extend(b);
                Dirty::Proxies(a)
            }
        }
    }
}

/// Why a connecting proxy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "no pod in the mesh has proxy UUID {0} (hint: is the pod described in the mesh directory, with label osm-proxy-uuid?)"
    )]
    UnknownProxy(ProxyUuid),
    #[error("proxy UUID {uuid} is claimed by more than one pod: {pods:?}")]
    DuplicateProxy { uuid: ProxyUuid, pods: Vec<String> },
    #[error(
        "proxy {uuid} presented identity {presented} but its pod {pod} runs as {actual} (hint: regenerate the sidecar bootstrap)"
    )]
    IdentityMismatch { uuid: ProxyUuid, pod: String, presented: String, actual: String },
}

/// One port of a Service as a proxy sees it: the numbers resolved and the endpoints listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedPort {
    pub name: Option<String>,
    pub port: u16,
    /// The backends' port number; names the upstream cluster `<ns>/<svc>|<target_port>`.
    pub target_port: u16,
    pub protocol: AppProtocol,
    pub endpoints: Vec<SocketAddr>,
    /// For an apex Service of a TrafficSplit: the weighted backend clusters its traffic goes to instead of
    /// its own (empty: no split).
    pub split: SplitTargets,
}

impl ResolvedPort {
    pub fn cluster_name(&self, svc: &ServiceKey) -> String {
        format!("{}|{}", svc, self.target_port)
    }
}

/// Where a TrafficSplit sends an apex Service port's traffic: (backend cluster, weight).
pub type SplitTargets = Vec<(String, u32)>;

/// A Service as seen by one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceView {
    pub key: ServiceKey,
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ResolvedPort>,
    /// Identities of the pods behind the Service: the SANs an upstream connection accepts.
    pub identities: BTreeSet<ServiceIdentity>,
    /// For a local Service that backs TrafficSplits: the apex Services (and their ClusterIPs) whose
    /// requests it accepts too, on the same port numbers.
    pub apexes: Vec<(ServiceKey, Option<IpAddr>)>,
}

/// Everything needed to build one proxy's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyView {
    pub pod: Arc<Pod>,
    pub trust_domain: String,
    pub settings: MeshSettings,
    /// Services this pod backs (inbound); `target_port` resolved for this pod, `endpoints` empty.
    pub local: Vec<ServiceView>,
    /// Services this pod may call (outbound). Shared: in permissive mode every proxy sees the same list,
    /// computed once per batch of views (see [`MeshCatalog::proxy_views`]); in SMI mode one list per
    /// identity.
    pub upstream: Arc<Vec<ServiceView>>,
    /// What this proxy's identity accepts, and from whom: `None` in permissive mode (everything, from every
    /// mesh identity); in SMI mode the identity's policy, empty when no TrafficTarget names it.
    pub inbound_policy: Option<Arc<InboundPolicy>>,
}

impl ProxyView {
    pub fn identity(&self) -> ServiceIdentity {
        self.pod.identity()
    }
}

type NsName = (String, String);

#[derive(Debug, Clone, Default)]
pub struct MeshCatalog {
    trust_domain: String,
    /// Settings from the command line; a MeshConfig object overrides them.
    base_settings: MeshSettings,
    /// The settings in force.
    settings: MeshSettings,
    /// The last MeshConfig in force, kept in force once every MeshConfig is deleted: deleting the
    /// MeshConfig must never fall back to the command line's (possibly permissive) defaults and so widen
    /// access (policy fails closed, as OSM keeps its last MeshConfig).
    retained_mesh_config: Option<MeshConfig>,
    /// Every object kept as it is (policy inputs, settings, roots, inventory: see [`Role`]), by key, so
    /// the objects of one kind are one range.
    store: BTreeMap<ObjectKey, MeshObject>,
    /// Computed from the policy objects whenever one of them (or the set of Services) changes.
    policy: Policy,
    policy_stale: bool,
    services: BTreeMap<ServiceKey, Service>,
    endpoints: BTreeMap<ObjectKey, Endpoints>,
    pods: BTreeMap<NsName, Arc<Pod>>,
    synced: bool,
    /// (source, kind) pairs that must have been listed once before the catalog counts as synced; empty:
    /// the first reset of anything will do.
    expected: BTreeSet<(String, Kind)>,
    /// (source, kind) pairs listed so far.
    listed: BTreeSet<(String, Kind)>,
    /// Which source put each object in the catalog (a reset only removes its own).
    origins: HashMap<ObjectKey, String>,
    // Indexes, maintained on every change, so a view costs what it touches rather than the whole mesh.
    endpoints_by_service: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    pods_by_uuid: HashMap<ProxyUuid, BTreeSet<NsName>>,
    pods_by_ip: HashMap<IpAddr, BTreeSet<NsName>>,
    /// (namespace, label key, label value) → pod names.
    pods_by_label: HashMap<(String, String, String), BTreeSet<String>>,
    pods_by_identity: HashMap<ServiceIdentity, BTreeSet<NsName>>,
}

impl MeshCatalog {
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self { trust_domain: trust_domain.into(), ..Default::default() }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Replaces the command line's mesh-wide settings (a MeshConfig object overrides them); every proxy is
    /// dirty when the settings in force change.
    pub fn set_settings(&mut self, settings: MeshSettings) -> Dirty {
        self.base_settings = settings;
        self.refresh_settings()
    }

    pub fn settings(&self) -> &MeshSettings {
        &self.settings
    }

    /// The MeshConfig in force, if any: the first present one, else the last one in force before every
    /// MeshConfig was deleted (see [`Self::mesh_config_deleted`]).
    pub fn mesh_config(&self) -> Option<&MeshConfig> {
        self.objects::<MeshConfig>().next().or(self.retained_mesh_config.as_ref())
    }

    /// True when the MeshConfig in force was deleted and its last settings are kept.
    pub fn mesh_config_deleted(&self) -> bool {
        self.objects::<MeshConfig>().next().is_none() && self.retained_mesh_config.is_some()
    }

    /// The MeshRootCertificates, by namespace and name.
    pub fn root_certificates(&self) -> impl Iterator<Item = &MeshRootCertificate> {
        self.objects::<MeshRootCertificate>()
    }

    /// Every object of the kind of `T` held as it is (see [`Role`]), by namespace and name.
    pub fn objects<T: Model>(&self) -> impl Iterator<Item = &T> {
        self.store
            .range(ObjectKey::new(T::KIND, "", "")..)
            .take_while(|(k, _)| k.kind == T::KIND)
            .filter_map(|(_, o)| T::of(o))
    }

    /// Policy objects (or parts of them) that are not in force, and why.
    pub fn policy_errors(&self) -> &[PolicyError] {
        &self.policy.errors
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn refresh_settings(&mut self) -> Dirty {
        let in_force = self.objects::<MeshConfig>().next().cloned();
        if in_force.is_some() {
            self.retained_mesh_config = in_force;
        }
        let settings = match self.mesh_config() {
            Some(mc) => mc.apply_to(&self.base_settings),
            None => self.base_settings.clone(),
        };
        if settings == self.settings {
            return Dirty::Nothing;
        }
        self.settings = settings;
        Dirty::All
    }

    /// Recomputes the policy after policy objects or Services changed; dirty are the proxies whose
    /// configuration the difference reaches (see ARCHITECTURE.md, "Policy").
    fn refresh_policy(&mut self) -> Dirty {
        if !std::mem::take(&mut self.policy_stale) {
            return Dirty::Nothing;
        }
        let services = &self.services;
        let mut new = policy::compute(
            self.objects::<TrafficTarget>(),
            self.objects::<HttpRouteGroup>(),
            self.objects::<TcpRoute>(),
            self.objects::<TrafficSplit>(),
            |k| services.contains_key(k),
        );
        let mesh_configs: Vec<ObjectKey> = self.objects::<MeshConfig>().map(Keyed::object_key).collect();
        if let [first, others @ ..] = mesh_configs.as_slice() {
            for other in others.iter().cloned() {
                new.errors.push(PolicyError {
                    code: policy::codes::MULTIPLE_MESH_CONFIGS,
                    object: other,
                    reason: format!("{first} is the MeshConfig in force; this one is ignored"),
                });
            }
        }
        if let Some(mc) = self.retained_mesh_config.as_ref().filter(|_| self.mesh_config_deleted()) {
            new.errors.push(PolicyError {
                code: policy::codes::MESH_CONFIG_DELETED,
                object: ObjectKey::new(Kind::MeshConfig, mc.namespace.clone(), mc.name.clone()),
                reason: "it was deleted; its last settings stay in force until a MeshConfig is created again"
                    .to_owned(),
            });
        }
        let old = std::mem::replace(&mut self.policy, new);
        let mut dirty = Dirty::Nothing;
        if !self.settings.permissive {
            // Access rules matter in SMI mode only: the proxies of every identity whose rules changed.
            let ids = old.changed_identities(&self.policy);
            dirty = dirty.merge(self.proxies_of(ids.iter()));
        }
        for apex in old.changed_splits(&self.policy) {
            dirty = dirty.merge(self.split_audience(&apex, &old));
        }
        dirty
    }

    /// Proxies that see a change of `apex`'s split: those that may call it, and the pods behind its old and
    /// new backends (they accept the apex's host names).
    fn split_audience(&self, apex: &ServiceKey, old: &Policy) -> Dirty {
        if self.settings.permissive {
            return Dirty::All;
        }
        let mut behind: BTreeSet<ServiceIdentity> = BTreeSet::new();
        let backends = [old, &self.policy].into_iter().flat_map(|p| p.splits.get(apex)).flatten().map(|(b, _)| b);
        for svc in std::iter::once(apex).chain(backends) {
            if let Some(svc) = self.services.get(svc) {
                behind.extend(self.pods_behind(svc).map(Pod::identity));
            }
        }
        let callers: BTreeSet<ServiceIdentity> = [old, &self.policy]
            .into_iter()
            .flat_map(|p| p.outbound.iter())
            .filter(|(_, dests)| !dests.is_disjoint(&behind))
            .map(|(src, _)| src.clone())
            .collect();
        self.proxies_of(behind.iter().chain(callers.iter()))
    }

    fn proxies_of<'a>(&self, ids: impl Iterator<Item = &'a ServiceIdentity>) -> Dirty {
        let set: BTreeSet<ProxyUuid> = ids
            .flat_map(|id| self.pods_by_identity.get(id).into_iter().flatten())
            .filter_map(|k| self.pods.get(k))
            .map(|p| p.proxy_uuid.clone())
            .collect();
        if set.is_empty() { Dirty::Nothing } else { Dirty::Proxies(set) }
    }

    /// True once a source has delivered its first full content (`Reset`); no config is served before.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Declares that `source` will list `kinds`: the catalog is synced (and xDS served) only once every
    /// declared (source, kind) has been listed once.
    pub fn expect(&mut self, source: &str, kinds: impl IntoIterator<Item = Kind>) {
        self.expected.extend(kinds.into_iter().map(|k| (source.to_owned(), k)));
        self.synced = !self.listed.is_empty() && self.expected.is_subset(&self.listed);
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.endpoints.len(), self.pods.len())
    }

    /// Namespaces of the mesh (monitored, on a cluster; described, in the mesh directory).
    pub fn namespace_count(&self) -> usize {
        self.objects::<Namespace>().count()
    }

    /// Applies an event of the default source (the mesh directory).
    pub fn apply(&mut self, event: SourceEvent) -> Dirty {
        self.apply_from(crate::events::DEFAULT_SOURCE, event)
    }

    /// Applies an event of `source`.
    pub fn apply_from(&mut self, source: &str, event: SourceEvent) -> Dirty {
        let dirty = self.apply_one(source, event);
        dirty.merge(self.refresh_policy())
    }

    fn apply_one(&mut self, source: &str, event: SourceEvent) -> Dirty {
        match event {
            SourceEvent::Apply(obj) => {
                self.origins.insert(obj.key(), source.to_owned());
                self.upsert(obj)
            }
            SourceEvent::Delete(key) => {
                self.origins.remove(&key);
                self.remove(&key)
            }
            SourceEvent::Reset(reset) => {
                let source = reset.source;
                self.listed.extend(reset.kinds.iter().map(|k| (source.clone(), *k)));
                self.synced = self.expected.is_subset(&self.listed);
                let keep: BTreeSet<ObjectKey> = reset.objects.iter().map(MeshObject::key).collect();
                let mut dirty = Dirty::Nothing;
                for key in self.all_keys() {
                    let ours = self.origins.get(&key).is_none_or(|o| *o == source);
                    if reset.kinds.contains(&key.kind) && ours && !keep.contains(&key) {
                        self.origins.remove(&key);
                        dirty = dirty.merge(self.remove(&key));
                    }
                }
                for obj in reset.objects {
                    self.origins.insert(obj.key(), source.clone());
                    dirty = dirty.merge(self.upsert(obj));
                }
                dirty
            }
        }
    }

    /// The key of every object held, from every source (for troubleshooting and tests).
    pub fn object_keys(&self) -> BTreeSet<ObjectKey> {
        self.all_keys().into_iter().collect()
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = self.store.keys().cloned().collect();
        keys.extend(self.services.keys().map(|k| ObjectKey::new(Kind::Service, k.namespace.clone(), k.name.clone())));
        keys.extend(self.endpoints.keys().cloned());
        keys.extend(self.pods.keys().map(|(ns, n)| ObjectKey::new(Kind::Pod, ns.clone(), n.clone())));
        keys
    }

    fn upsert(&mut self, obj: MeshObject) -> Dirty {
        let key = obj.key();
        match key.kind.role() {
            Role::Policy | Role::Settings => {
                if self.store.get(&key) == Some(&obj) {
                    return Dirty::Nothing;
                }
                self.store.insert(key.clone(), obj);
                self.policy_stale = true;
                return if key.kind.role() == Role::Settings { self.refresh_settings() } else { Dirty::Nothing };
            }
            Role::Roots | Role::Inventory => {
                self.store.insert(key, obj);
                return Dirty::Nothing;
            }
            Role::Service | Role::Endpoints | Role::Pod => {}
        }
        match obj {
            MeshObject::Service(svc) => {
                if self.services.get(&svc.key) == Some(&svc) {
                    return Dirty::Nothing;
                }
                let svc_key = svc.key.clone();
                let before = self.service_audience(std::slice::from_ref(&svc_key));
                // TrafficSplits name Services: whether one exists decides whether a split holds.
                if self.services.insert(svc.key.clone(), svc).is_none() {
                    self.policy_stale = true;
                }
                before.merge(self.service_audience(&[svc_key]))
            }
            MeshObject::Endpoints(ep) => {
                if self.endpoints.get(&ep.key) == Some(&ep) {
                    return Dirty::Nothing;
                }
                let svc_key = ep.service.clone();
                let before = self.service_audience(std::slice::from_ref(&svc_key));
                self.remove_endpoints(&ep.key.clone());
                self.endpoints_by_service.entry(ep.service.clone()).or_default().insert(ep.key.clone());
                self.endpoints.insert(ep.key.clone(), ep);
                before.merge(self.service_audience(&[svc_key]))
            }
            MeshObject::Pod(pod) => {
                let key = (pod.namespace.clone(), pod.name.clone());
                if self.pods.get(&key).is_some_and(|p| **p == pod) {
                    return Dirty::Nothing;
                }
                let before = self.pod_audience(&key);
                self.remove_pod(&key);
                self.pods_by_uuid.entry(pod.proxy_uuid.clone()).or_default().insert(key.clone());
                self.pods_by_identity.entry(pod.identity()).or_default().insert(key.clone());
                if let Some(ip) = pod.ip {
                    self.pods_by_ip.entry(ip).or_default().insert(key.clone());
                }
                for (k, v) in &pod.labels {
                    self.pods_by_label
                        .entry((pod.namespace.clone(), k.clone(), v.clone()))
                        .or_default()
                        .insert(pod.name.clone());
                }
                self.pods.insert(key.clone(), Arc::new(pod));
                // A pod's address and labels feed other proxies' endpoints and SAN lists.
                before.merge(self.pod_audience(&key))
            }
            // Kept as they are, above.
            _ => Dirty::Nothing,
        }
    }

    fn remove(&mut self, key: &ObjectKey) -> Dirty {
        match key.kind.role() {
            Role::Policy => {
                self.policy_stale |= self.store.remove(key).is_some();
                Dirty::Nothing
            }
            Role::Settings => {
                self.policy_stale |= self.store.remove(key).is_some();
                self.refresh_settings()
            }
            Role::Roots | Role::Inventory => {
                self.store.remove(key);
                Dirty::Nothing
            }
            Role::Service => {
                let svc_key = ServiceKey::new(key.namespace.clone(), key.name.clone());
                let audience = self.service_audience(std::slice::from_ref(&svc_key));
                let gone = self.services.remove(&svc_key).is_some();
                self.policy_stale |= gone;
                if gone { audience } else { Dirty::Nothing }
            }
            Role::Endpoints => {
                let Some(svc_key) = self.endpoints.get(key).map(|e| e.service.clone()) else { return Dirty::Nothing };
                let before = self.service_audience(std::slice::from_ref(&svc_key));
                self.remove_endpoints(key);
                before.merge(self.service_audience(&[svc_key]))
            }
            Role::Pod => {
                let pod_key = (key.namespace.clone(), key.name.clone());
                let audience = self.pod_audience(&pod_key);
                if self.remove_pod(&pod_key) { audience } else { Dirty::Nothing }
            }
        }
    }

    /// The proxies that see these Services: in permissive mode every proxy; in SMI mode the pods behind them
    /// (the Services are local to them) and the proxies of every identity allowed to call one of those pods.
    /// A Service in a TrafficSplit reaches every proxy (splits are rare; their audience is wider).
    fn service_audience(&self, keys: &[ServiceKey]) -> Dirty {
        if self.settings.permissive {
            return Dirty::All;
        }
        let split = |k: &ServiceKey| {
            self.policy.splits.contains_key(k) || self.policy.splits.values().flatten().any(|(b, _)| b == k)
        };
        if keys.iter().any(split) {
            return Dirty::All;
        }
        let mut behind: BTreeSet<ServiceIdentity> = BTreeSet::new();
        let mut proxies: BTreeSet<ProxyUuid> = BTreeSet::new();
        for svc in keys.iter().filter_map(|k| self.services.get(k)) {
            for pod in self.pods_behind(svc) {
                behind.insert(pod.identity());
                proxies.insert(pod.proxy_uuid.clone());
            }
        }
        let callers = self.policy.outbound.iter().filter(|(_, dests)| !dests.is_disjoint(&behind)).map(|(src, _)| src);
        match self.proxies_of(callers) {
            Dirty::Proxies(p) => proxies.extend(p),
            Dirty::All => return Dirty::All,
            Dirty::Nothing => {}
        }
        if proxies.is_empty() { Dirty::Nothing } else { Dirty::Proxies(proxies) }
    }

    /// The pods a Service is local to: those its selector matches and those its Endpoints list by address.
    fn pods_behind<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
        let listed = self
            .endpoint_objects(&svc.key)
            .flat_map(|e| e.subsets.iter().flat_map(|s| s.addresses.iter()))
            .flat_map(|ip| self.pods_at(*ip));
        self.selected_pods(svc).chain(listed)
    }

    /// The proxies a pod's change reaches: its own, and the audience of every Service it backs (selected by
    /// labels, or listed by address in its namespace's Endpoints).
    fn pod_audience(&self, key: &NsName) -> Dirty {
        if self.settings.permissive {
            return Dirty::All;
        }
        let Some(pod) = self.pods.get(key) else { return Dirty::Nothing };
        let ns = &pod.namespace;
        let mut backs: Vec<ServiceKey> = self
            .services
            .range(ServiceKey::new(ns.clone(), "")..)
            .take_while(|(k, _)| &k.namespace == ns)
            .filter(|(_, svc)| {
                svc.selector
                    .as_ref()
                    .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(ip) = pod.ip {
            for kind in [Kind::Endpoints, Kind::EndpointSlice] {
                let listing = self
                    .endpoints
                    .range(ObjectKey::new(kind, ns.clone(), "")..)
                    .take_while(|(k, _)| k.kind == kind && &k.namespace == ns)
                    .filter(|(_, e)| e.subsets.iter().any(|s| s.addresses.contains(&ip)))
                    .map(|(_, e)| e.service.clone());
                backs.extend(listing);
            }
        }
        Dirty::Proxies(BTreeSet::from([pod.proxy_uuid.clone()])).merge(self.service_audience(&backs))
    }

    fn remove_endpoints(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.endpoints.remove(key) else { return false };
        if let Some(set) = self.endpoints_by_service.get_mut(&old.service) {
            set.remove(key);
            if set.is_empty() {
                self.endpoints_by_service.remove(&old.service);
            }
        }
        true
    }

    fn remove_pod(&mut self, key: &NsName) -> bool {
        let Some(old) = self.pods.remove(key) else { return false };
        fn unindex<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, BTreeSet<V>>, k: K, v: &V) {
            if let Some(set) = map.get_mut(&k) {
                set.remove(v);
                if set.is_empty() {
                    map.remove(&k);
                }
            }
        }
        unindex(&mut self.pods_by_uuid, old.proxy_uuid.clone(), key);
        unindex(&mut self.pods_by_identity, old.identity(), key);
        if let Some(ip) = old.ip {
            unindex(&mut self.pods_by_ip, ip, key);
        }
        for (k, v) in &old.labels {
            unindex(&mut self.pods_by_label, (old.namespace.clone(), k.clone(), v.clone()), &old.name);
        }
        true
    }

    /// The Service `key` as any proxy sees it (every endpoint), if it exists with ports.
    pub fn service_view_of(&self, key: &ServiceKey) -> Option<ServiceView> {
        self.services.get(key).and_then(|s| self.service_view(s))
    }

    /// The pod (`<namespace>/<name>`) of a proxy, when exactly one pod has its UUID.
    pub fn pod_of(&self, uuid: &ProxyUuid) -> Option<String> {
        let mut pods = self.pods_with_uuid(uuid);
        match (pods.next(), pods.next()) {
            (Some(p), None) => Some(format!("{}/{}", p.namespace, p.name)),
            _ => None,
        }
    }

    /// Every TrafficTarget, by namespace and name.
    pub fn traffic_targets(&self) -> impl Iterator<Item = &TrafficTarget> {
        self.objects::<TrafficTarget>()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned())).map(Arc::as_ref)
    }

    fn pods_with_uuid(&self, uuid: &ProxyUuid) -> impl Iterator<Item = &Arc<Pod>> {
        self.pods_by_uuid.get(uuid).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    /// Every pod with this address (usually one; a reused address can briefly have two).
    pub(crate) fn pods_at(&self, ip: IpAddr) -> impl Iterator<Item = &Pod> {
        self.pods_by_ip.get(&ip).into_iter().flatten().filter_map(|k| self.pods.get(k)).map(Arc::as_ref)
    }

    fn endpoint_objects<'a>(&'a self, svc: &ServiceKey) -> impl Iterator<Item = &'a Endpoints> + 'a {
        self.endpoints_by_service.get(svc).into_iter().flatten().filter_map(|k| self.endpoints.get(k))
    }

    /// Checks a connecting proxy's certificate against the pod it claims to be.
    pub fn verify(&self, proxy: &ProxyId) -> Result<&Pod, VerifyError> {
        let pods: Vec<&Pod> = self.pods_with_uuid(&proxy.uuid).map(Arc::as_ref).collect();
        match pods.as_slice() {
            [] => Err(VerifyError::UnknownProxy(proxy.uuid.clone())),
            [pod] => {
                if pod.identity() == proxy.identity {
                    Ok(pod)
                } else {
                    Err(VerifyError::IdentityMismatch {
                        uuid: proxy.uuid.clone(),
                        pod: format!("{}/{}", pod.namespace, pod.name),
                        presented: proxy.identity.to_string(),
                        actual: pod.identity().to_string(),
                    })
                }
            }
            many => Err(VerifyError::DuplicateProxy {
                uuid: proxy.uuid.clone(),
                pods: many.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
            }),
        }
    }

    /// The configuration inputs of one proxy, or `None` if no single pod has that UUID.
    pub fn proxy_view(&self, uuid: &ProxyUuid) -> Option<ProxyView> {
        let mut upstreams = Upstreams::new();
        self.view_with(uuid, &mut upstreams)
    }

    /// Views of many proxies at once. The Services a proxy may call are derived once per batch and shared by
    /// `Arc` (in permissive mode one list for every proxy; in SMI mode one per identity), so a batch of N
    /// views costs one pass over the Services, not N.
    pub fn proxy_views<'a>(
        &'a self,
        uuids: impl IntoIterator<Item = ProxyUuid> + 'a,
    ) -> impl Iterator<Item = (ProxyUuid, Option<ProxyView>)> + 'a {
        let mut upstreams = Upstreams::new();
        uuids.into_iter().map(move |u| {
            let v = self.view_with(&u, &mut upstreams);
            (u, v)
        })
    }

    fn upstream_views(&self) -> Vec<ServiceView> {
        self.services.values().filter_map(|svc| self.service_view(svc)).collect()
    }

    /// What `identity` may call in SMI mode: Services with pods of an allowed destination identity, with
    /// only those pods as endpoints and SANs; an apex Service whenever one of its backends is allowed.
    fn allowed_upstream(&self, identity: &ServiceIdentity, all: &[ServiceView]) -> Vec<ServiceView> {
        let empty = BTreeSet::new();
        let allowed = self.policy.outbound.get(identity).unwrap_or(&empty);
        // A Service as `identity` sees it: only the allowed identities' pods as SANs and endpoints.
        let restrict = |svc: &ServiceView| {
            let mut v = svc.clone();
            v.identities.retain(|i| allowed.contains(i));
            for p in &mut v.ports {
                p.endpoints.retain(|a| self.pods_at(a.ip()).any(|pod| allowed.contains(&pod.identity())));
            }
            v
        };
        let mut kept: Vec<Option<ServiceView>> =
            all.iter().map(|svc| (!svc.identities.is_disjoint(allowed)).then(|| restrict(svc))).collect();
        let kept_keys: BTreeSet<ServiceKey> = kept.iter().flatten().map(|s| s.key.clone()).collect();
        for (svc, slot) in all.iter().zip(kept.iter_mut()) {
            let reaches_backend = self
                .policy
                .splits
                .get(&svc.key)
                .is_some_and(|backends| backends.iter().any(|(b, _)| kept_keys.contains(b)));
            if slot.is_none() && reaches_backend {
                *slot = Some(restrict(svc));
            }
        }
        kept.into_iter().flatten().collect()
    }

    /// Points the ports of every apex Service in `list` at its backends' clusters (same port number; a
    /// backend without that port, or not in the list, is left out).
    fn apply_splits(&self, list: &mut [ServiceView]) {
        if self.policy.splits.is_empty() {
            return;
        }
        let index: HashMap<ServiceKey, usize> = list.iter().enumerate().map(|(i, s)| (s.key.clone(), i)).collect();
        for (apex, backends) in &self.policy.splits {
            let Some(&ai) = index.get(apex) else { continue };
            let ports: Vec<(usize, SplitTargets)> = list[ai]
                .ports
                .iter()
                .enumerate()
                .map(|(pi, ap)| {
                    let targets = backends
                        .iter()
                        .filter_map(|(b, w)| {
                            let bs = &list[*index.get(b)?];
                            let bp = bs.ports.iter().find(|p| p.port == ap.port)?;
                            Some((bp.cluster_name(&bs.key), *w))
                        })
                        .collect();
                    (pi, targets)
                })
                .collect();
            for (pi, targets) in ports {
                list[ai].ports[pi].split = targets;
            }
        }
    }

    fn view_with(&self, uuid: &ProxyUuid, upstreams: &mut Upstreams) -> Option<ProxyView> {
        let mut pods = self.pods_with_uuid(uuid);
        let pod = pods.next()?;
        if pods.next().is_some() {
            return None;
        }
        let local = self
            .services
            .range(ServiceKey::new(pod.namespace.clone(), "")..)
            .take_while(|(k, _)| k.namespace == pod.namespace)
            .filter_map(|(_, svc)| self.local_view(svc, pod))
            .collect();
        let identity = pod.identity();
        let inbound_policy =
            (!self.settings.permissive).then(|| self.policy.inbound.get(&identity).cloned().unwrap_or_default());
        Some(ProxyView {
            pod: pod.clone(),
            trust_domain: self.trust_domain.clone(),
            settings: self.settings.clone(),
            local,
            upstream: upstreams.for_identity(self, &identity),
            inbound_policy,
        })
    }

    fn has_endpoint_objects(&self, svc: &ServiceKey) -> bool {
        self.endpoints_by_service.contains_key(svc)
    }

    /// Pods in the Service's namespace whose labels match its selector (candidates come from the index of
    /// the selector's first label).
    fn selected_pods<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
        let selector = svc.selector.as_ref().filter(|s| !s.is_empty());
        let ns = &svc.key.namespace;
        let candidates = selector
            .and_then(|sel| sel.iter().next())
            .and_then(|(k, v)| self.pods_by_label.get(&(ns.clone(), k.clone(), v.clone())));
        candidates
            .into_iter()
            .flatten()
            .filter_map(move |name| self.pods.get(&(ns.clone(), name.clone())))
            .map(Arc::as_ref)
            .filter(move |p| selector.is_some_and(|sel| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))))
    }

    /// Endpoints of one Service port: from Endpoints/EndpointSlice objects when the Service has any, else
    /// from the pods its selector matches (what Kubernetes' endpoint controller would write).
    fn port_endpoints(&self, svc: &Service, sp: &ServicePort) -> Vec<SocketAddr> {
        let mut out = BTreeSet::new();
        if self.has_endpoint_objects(&svc.key) {
            for ep in self.endpoint_objects(&svc.key) {
                for subset in &ep.subsets {
                    let port = match_endpoint_port(svc, sp, &subset.ports);
                    if let Some(port) = port {
                        out.extend(subset.addresses.iter().map(|ip| SocketAddr::new(*ip, port)));
                    }
                }
            }
        } else {
            for pod in self.selected_pods(svc) {
                if let (Some(ip), Some(port)) = (pod.ip, pod.resolve_target_port(&sp.target_port)) {
                    out.insert(SocketAddr::new(ip, port));
                }
            }
        }
        out.into_iter().collect()
    }

    fn service_view(&self, svc: &Service) -> Option<ServiceView> {
        let mut identities = BTreeSet::new();
        let ports: Vec<ResolvedPort> = svc
            .ports
            .iter()
            .map(|sp| {
                let endpoints = self.port_endpoints(svc, sp);
                identities.extend(endpoints.iter().flat_map(|a| self.pods_at(a.ip())).map(|p| p.identity()));
                let target_port = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(_) => endpoints.first().map(|a| a.port()).unwrap_or(sp.port),
                };
                ResolvedPort {
                    name: sp.name.clone(),
                    port: sp.port,
                    target_port,
                    protocol: sp.protocol,
                    endpoints,
                    split: Vec::new(),
                }
            })
            .collect();
        if ports.is_empty() {
            return None;
        }
        Some(ServiceView { key: svc.key.clone(), cluster_ip: svc.cluster_ip, ports, identities, apexes: Vec::new() })
    }

    fn local_view(&self, svc: &Service, pod: &Pod) -> Option<ServiceView> {
        if svc.key.namespace != pod.namespace {
            return None;
        }
        let selected = svc
            .selector
            .as_ref()
            .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)));
        let mut ports = Vec::new();
        for sp in &svc.ports {
            // A pod listed in hand-written Endpoints backs the Service with whatever port is listed there.
            let listed = pod.ip.and_then(|ip| {
                self.endpoint_objects(&svc.key)
                    .flat_map(|e| e.subsets.iter())
                    .filter(|s| s.addresses.contains(&ip))
                    .find_map(|s| match_endpoint_port(svc, sp, &s.ports))
            });
            let target = listed.or_else(|| if selected { pod.resolve_target_port(&sp.target_port) } else { None });
            if let Some(target_port) = target {
                ports.push(ResolvedPort {
                    name: sp.name.clone(),
                    port: sp.port,
                    target_port,
                    protocol: sp.protocol,
                    endpoints: Vec::new(),
                    split: Vec::new(),
                });
            }
        }
        if ports.is_empty() {
            return None;
        }
        Some(ServiceView {
            key: svc.key.clone(),
            cluster_ip: svc.cluster_ip,
            ports,
            identities: BTreeSet::from([pod.identity()]),
            apexes: self
                .policy
                .splits
                .iter()
                .filter(|(_, backends)| backends.iter().any(|(b, _)| b == &svc.key))
                .map(|(apex, _)| (apex.clone(), self.services.get(apex).and_then(|a| a.cluster_ip)))
                .collect(),
        })
    }
}

/// The upstream lists of one batch of views, each computed on first use.
struct Upstreams {
    all: Option<Arc<Vec<ServiceView>>>,
    per_identity: HashMap<ServiceIdentity, Arc<Vec<ServiceView>>>,
}

impl Upstreams {
    fn new() -> Self {
        Self { all: None, per_identity: HashMap::new() }
    }

    fn all(&mut self, catalog: &MeshCatalog) -> Arc<Vec<ServiceView>> {
        self.all
            .get_or_insert_with(|| {
                let mut list = catalog.upstream_views();
                if catalog.settings.permissive {
                    catalog.apply_splits(&mut list);
                }
                Arc::new(list)
            })
            .clone()
    }

    fn for_identity(&mut self, catalog: &MeshCatalog, identity: &ServiceIdentity) -> Arc<Vec<ServiceView>> {
        let all = self.all(catalog);
        if catalog.settings.permissive {
            return all;
        }
        self.per_identity
            .entry(identity.clone())
            .or_insert_with(|| {
                let mut list = catalog.allowed_upstream(identity, &all);
                catalog.apply_splits(&mut list);
                Arc::new(list)
            })
            .clone()
    }
}

/// Kubernetes matches Endpoints ports to Service ports by name; a single unnamed port matches the single
/// Service port.
fn match_endpoint_port(svc: &Service, sp: &ServicePort, ports: &[EndpointPort]) -> Option<u16> {
    match &sp.name {
        Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.port),
        None if svc.ports.len() == 1 && ports.len() == 1 => Some(ports[0].port),
        None => ports.iter().find(|p| p.name.is_none()).map(|p| p.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, sa: &str, ip: &str, app: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
            service_account: sa.into(),
            ip: Some(ip.parse().unwrap()),
            proxy_uuid: ProxyUuid::derived(ns, name),
            container_ports: vec![ContainerPort { name: Some("web".into()), port: 8080 }],
            prometheus_scrape: false,
        }
    }

    fn service(ns: &str, name: &str, ip: &str, app: &str, target: TargetPort) -> Service {
        Service {
            key: ServiceKey::new(ns, name),
            cluster_ip: Some(ip.parse().unwrap()),
            selector: Some(BTreeMap::from([("app".into(), app.into())])),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: target,
                protocol: AppProtocol::Http,
            }],
        }
    }

    fn mesh() -> MeshCatalog {
        let mut c = MeshCatalog::new("cluster.local");
        let d = c.apply(SourceEvent::reset_all(vec![
            MeshObject::Pod(pod("demo", "client", "client", "10.244.1.1", "client")),
            MeshObject::Pod(pod("demo", "server", "server", "10.244.1.2", "server")),
            MeshObject::Service(service("demo", "server", "10.96.0.10", "server", TargetPort::Name("web".into()))),
        ]));
        assert_eq!(d, Dirty::All);
        c
    }

    #[test]
    fn selector_service_gets_endpoints_from_pods() {
        let c = mesh();
        let view = c.proxy_view(&ProxyUuid::derived("demo", "client")).unwrap();
        let svc = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
        assert_eq!(svc.ports[0].endpoints, vec!["10.244.1.2:8080".parse().unwrap()]);
        assert_eq!(svc.ports[0].target_port, 8080);
        assert_eq!(svc.ports[0].cluster_name(&svc.key), "demo/server|8080");
        assert_eq!(svc.identities, BTreeSet::from([ServiceIdentity::new("server", "demo")]));
        assert!(view.local.is_empty());

        let server = c.proxy_view(&ProxyUuid::derived("demo", "server")).unwrap();
        assert_eq!(server.local.len(), 1);
        assert_eq!(server.local[0].ports[0].target_port, 8080);
    }

    #[test]
    fn explicit_endpoints_win_over_selector() {
        let mut c = mesh();
        c.apply(SourceEvent::Apply(MeshObject::Endpoints(Endpoints {
            key: ObjectKey::new(Kind::Endpoints, "demo", "server"),
            service: ServiceKey::new("demo", "server"),
            subsets: vec![EndpointSubset {
                addresses: vec!["10.244.1.2".parse().unwrap(), "10.244.1.3".parse().unwrap()],
                ports: vec![EndpointPort { name: Some("http".into()), port: 9090 }],
            }],
        })));
        let view = c.proxy_view(&ProxyUuid::derived("demo", "client")).unwrap();
        let svc = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
        assert_eq!(svc.ports[0].endpoints.len(), 2);
        assert_eq!(svc.ports[0].endpoints[0].port(), 9090);
        let server = c.proxy_view(&ProxyUuid::derived("demo", "server")).unwrap();
        assert_eq!(server.local[0].ports[0].target_port, 9090);
    }

    #[test]
    fn reset_removes_missing_objects_and_unchanged_apply_is_clean() {
        let mut c = mesh();
        let p = pod("demo", "client", "client", "10.244.1.1", "client");
        assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Pod(p.clone()))), Dirty::Nothing);
        assert_eq!(c.apply(SourceEvent::reset_all(vec![MeshObject::Pod(p)])), Dirty::All);
        assert_eq!(c.counts(), (0, 0, 1));
        assert!(c.proxy_view(&ProxyUuid::derived("demo", "server")).is_none());
    }

    #[test]
    fn indexes_follow_pod_updates_and_deletes() {
        let mut c = mesh();
        let client = ProxyUuid::derived("demo", "client");
        // Relabel and move the server: it leaves the selector and its old address is forgotten.
        let mut moved = pod("demo", "server", "server", "10.244.9.9", "other");
        c.apply(SourceEvent::Apply(MeshObject::Pod(moved.clone())));
        let view = c.proxy_view(&client).unwrap();
        assert!(view.upstream[0].ports[0].endpoints.is_empty());
        assert!(view.upstream[0].identities.is_empty());
        moved.labels.insert("app".into(), "server".into());
        c.apply(SourceEvent::Apply(MeshObject::Pod(moved)));
        let view = c.proxy_view(&client).unwrap();
        assert_eq!(view.upstream[0].ports[0].endpoints, vec!["10.244.9.9:8080".parse().unwrap()]);
        c.apply(SourceEvent::Delete(ObjectKey::new(Kind::Pod, "demo", "server")));
        assert!(c.proxy_view(&ProxyUuid::derived("demo", "server")).is_none());
        assert!(c.proxy_view(&client).unwrap().upstream[0].ports[0].endpoints.is_empty());
    }

    #[test]
    fn verify_checks_uuid_and_identity() {
        let c = mesh();
        let uuid = ProxyUuid::derived("demo", "client");
        let ok = ProxyId { uuid: uuid.clone(), identity: ServiceIdentity::new("client", "demo") };
        assert_eq!(c.verify(&ok).unwrap().name, "client");
        let wrong_sa = ProxyId { uuid, identity: ServiceIdentity::new("server", "demo") };
        assert!(matches!(c.verify(&wrong_sa), Err(VerifyError::IdentityMismatch { .. })));
        let unknown = ProxyId { uuid: ProxyUuid::parse("nope").unwrap(), identity: ServiceIdentity::new("a", "b") };
        assert!(matches!(c.verify(&unknown), Err(VerifyError::UnknownProxy(_))));
    }

    fn smi(permissive: bool) -> MeshCatalog {
        let mut c = mesh();
        c.apply(SourceEvent::Apply(MeshObject::Pod(pod("demo", "thief", "thief", "10.244.1.3", "thief"))));
        c.apply(SourceEvent::Apply(MeshObject::MeshConfig(MeshConfig {
            namespace: "osm-system".into(),
            name: "osm-mesh-config".into(),
            enable_egress: None,
            permissive: Some(permissive),
            not_acted_on: vec![],
            service_cert_validity: None,
            cert_key_bits: None,
            tracing: None,
            enable_debug_server: None,
            osm_log_level: None,
            feature_flags: vec![],
        })));
        c
    }

    fn allow(source: &str) -> Vec<SourceEvent> {
        vec![
            SourceEvent::Apply(MeshObject::HttpRouteGroup(HttpRouteGroup {
                namespace: "demo".into(),
                name: "routes".into(),
                matches: vec![HttpMatch {
                    name: "all".into(),
                    path_regex: None,
                    methods: vec![],
                    headers: Default::default(),
                }],
            })),
            SourceEvent::Apply(MeshObject::TrafficTarget(TrafficTarget {
                namespace: "demo".into(),
                name: "to-server".into(),
                destination: Subject { kind: "ServiceAccount".into(), name: "server".into(), namespace: "demo".into() },
                sources: vec![Subject { kind: "ServiceAccount".into(), name: source.into(), namespace: "demo".into() }],
                rules: vec![TrafficTargetRule {
                    kind: "HTTPRouteGroup".into(),
                    name: "routes".into(),
                    matches: vec![],
                }],
            })),
        ]
    }

    #[test]
    fn smi_mode_shows_each_identity_only_what_it_may_call() {
        let mut c = smi(false);
        let client = ProxyUuid::derived("demo", "client");
        let thief = ProxyUuid::derived("demo", "thief");
        let server = ProxyUuid::derived("demo", "server");
        assert!(c.proxy_view(&client).unwrap().upstream.is_empty(), "no TrafficTarget: nothing to call");
        assert_eq!(c.proxy_view(&server).unwrap().inbound_policy, Some(Arc::default()), "and nothing accepted");
        let mut dirty = Dirty::Nothing;
        for e in allow("client") {
            dirty = dirty.merge(c.apply(e));
        }
        // Only the source's and the destination's proxies are rebuilt.
        assert_eq!(dirty, Dirty::Proxies(BTreeSet::from([client.clone(), server.clone()])));
        let views: Vec<_> = c.proxy_views([client.clone(), thief.clone()]).collect();
        let up = &views[0].1.as_ref().unwrap().upstream;
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].ports[0].endpoints, vec!["10.244.1.2:8080".parse().unwrap()]);
        assert!(views[1].1.as_ref().unwrap().upstream.is_empty());
        let inbound = c.proxy_view(&server).unwrap().inbound_policy.unwrap();
        assert_eq!(inbound.http.values().next().unwrap(), &BTreeSet::from([ServiceIdentity::new("client", "demo")]));
        // Removing the target revokes it, again touching only those two.
        let dirty = c.apply(SourceEvent::Delete(ObjectKey::new(Kind::TrafficTarget, "demo", "to-server")));
        assert_eq!(dirty, Dirty::Proxies(BTreeSet::from([client.clone(), server])));
        assert!(c.proxy_view(&client).unwrap().upstream.is_empty());
        // Deleting the MeshConfig does not fall back to the (permissive) command line: SMI mode stays in
        // force, reported with its code, and nobody's configuration changes.
        let key = ObjectKey::new(Kind::MeshConfig, "osm-system", "osm-mesh-config");
        let dirty = c.apply(SourceEvent::Delete(key.clone()));
        assert_eq!(dirty, Dirty::Nothing);
        assert!(!c.settings().permissive);
        assert!(c.mesh_config_deleted());
        assert!(c.proxy_view(&client).unwrap().upstream.is_empty());
        let deleted: Vec<_> =
            c.policy_errors().iter().filter(|e| e.code == policy::codes::MESH_CONFIG_DELETED).collect();
        assert_eq!(deleted.len(), 1, "{:?}", c.policy_errors());
        assert_eq!(deleted[0].object, key);
        // A relist that no longer finds it is the same deletion.
        let mut relisted = smi(false);
        relisted.apply(SourceEvent::Reset(crate::events::Reset {
            source: crate::events::DEFAULT_SOURCE.into(),
            kinds: [Kind::MeshConfig].into(),
            objects: vec![],
        }));
        assert!(!relisted.settings().permissive && relisted.mesh_config_deleted());
        // Switching to permissive mode (a MeshConfig that says so) reaches everyone.
        let mut permissive = smi(true);
        let mc = permissive.mesh_config().unwrap().clone();
        let dirty = c.apply(SourceEvent::Apply(MeshObject::MeshConfig(mc)));
        assert_eq!(dirty, Dirty::All);
        assert!(!c.mesh_config_deleted());
        assert!(c.policy_errors().iter().all(|e| e.code != policy::codes::MESH_CONFIG_DELETED));
        assert_eq!(c.proxy_view(&client).unwrap().upstream.len(), 1);
        assert_eq!(c.proxy_view(&client).unwrap().inbound_policy, None);
        permissive.apply(SourceEvent::Delete(key));
        assert!(permissive.settings().permissive, "the last MeshConfig in force is kept, whatever it says");
    }

    #[test]
    fn in_smi_mode_a_service_or_pod_change_reaches_only_those_who_see_it() {
        let mut c = smi(false);
        for e in allow("client") {
            c.apply(e);
        }
        let client = ProxyUuid::derived("demo", "client");
        let server = ProxyUuid::derived("demo", "server");
        let only = |u: &[&ProxyUuid]| Dirty::Proxies(u.iter().map(|u| (*u).clone()).collect());
        // Endpoints of the server Service: its callers (the client) and its pods; not the thief.
        let dirty = c.apply(SourceEvent::Apply(MeshObject::Endpoints(Endpoints {
            key: ObjectKey::new(Kind::Endpoints, "demo", "server"),
            service: ServiceKey::new("demo", "server"),
            subsets: vec![EndpointSubset {
                addresses: vec!["10.244.1.2".parse().unwrap()],
                ports: vec![EndpointPort { name: Some("http".into()), port: 8080 }],
            }],
        })));
        assert_eq!(dirty, only(&[&client, &server]));
        // The server pod moves: itself and its callers.
        let mut moved = pod("demo", "server", "server", "10.244.1.7", "server");
        moved.labels.insert("v".into(), "2".into());
        assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Pod(moved))), only(&[&client, &server]));
        // The thief's pod changes: only its own proxy (nobody calls it, it backs nothing).
        let thief = pod("demo", "thief", "thief", "10.244.1.33", "thief");
        assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Pod(thief))), only(&[&ProxyUuid::derived("demo", "thief")]));
        // A Service nobody may call and nobody backs reaches nobody.
        let lonely = service("demo", "lonely", "10.96.0.99", "nobody", TargetPort::Number(80));
        assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Service(lonely))), Dirty::Nothing);
        // In permissive mode everyone sees every Service.
        let mut p = smi(true);
        let svc = service("demo", "other", "10.96.0.98", "server", TargetPort::Number(80));
        assert_eq!(p.apply(SourceEvent::Apply(MeshObject::Service(svc))), Dirty::All);
    }

    #[test]
    fn a_relist_replaces_only_its_own_source_and_kinds_and_readiness_waits_for_every_listing() {
        use crate::events::Reset;
        let reset = |source: &str, kinds: &[Kind], objects: Vec<MeshObject>| {
            SourceEvent::Reset(Reset { source: source.into(), kinds: kinds.iter().copied().collect(), objects })
        };
        let mut c = MeshCatalog::new("cluster.local");
        c.expect("k8s", [Kind::Service, Kind::Pod]);
        // The mesh directory joins a machine outside Kubernetes: its pod stays whatever the cluster relists.
        c.apply(SourceEvent::reset_all(vec![MeshObject::Pod(pod("vm", "db", "db", "10.0.9.1", "db"))]));
        assert!(!c.is_synced(), "the cluster's kinds have not been listed yet");
        c.apply_from(
            "k8s",
            reset(
                "k8s",
                &[Kind::Service],
                vec![MeshObject::Service(service("demo", "server", "10.96.0.10", "server", TargetPort::Number(8080)))],
            ),
        );
        assert!(!c.is_synced());
        let server = pod("demo", "server", "server", "10.244.1.2", "server");
        let client = pod("demo", "client", "client", "10.244.1.1", "client");
        c.apply_from("k8s", reset("k8s", &[Kind::Pod], vec![MeshObject::Pod(server.clone()), MeshObject::Pod(client)]));
        assert!(c.is_synced());
        assert_eq!(c.counts(), (1, 0, 3));
        // A Pod relist without the client removes the client only: not the Service, not the directory's pod.
        c.apply_from("k8s", reset("k8s", &[Kind::Pod], vec![MeshObject::Pod(server)]));
        assert_eq!(c.counts(), (1, 0, 2));
        assert!(c.pod("vm", "db").is_some());
        assert!(c.pod("demo", "client").is_none());
    }

    #[test]
    fn policy_edits_in_permissive_mode_rebuild_nobody() {
        let mut c = smi(true);
        for e in allow("client") {
            assert_eq!(c.apply(e), Dirty::Nothing);
        }
        assert!(c.policy_errors().is_empty());
    }

    #[test]
    fn a_split_sends_apex_traffic_to_backends_which_accept_the_apex_hosts() {
        let mut c = mesh();
        c.apply(SourceEvent::Apply(MeshObject::Pod(pod("demo", "server-v2", "server", "10.244.1.4", "server-v2"))));
        c.apply(SourceEvent::Apply(MeshObject::Service(service(
            "demo",
            "server-v2",
            "10.96.0.12",
            "server-v2",
            TargetPort::Number(9090),
        ))));
        let dirty = c.apply(SourceEvent::Apply(MeshObject::TrafficSplit(TrafficSplit {
            namespace: "demo".into(),
            name: "server-split".into(),
            service: "server".into(),
            backends: vec![("server".into(), 90), ("server-v2".into(), 10)],
        })));
        assert_eq!(dirty, Dirty::All, "in permissive mode every proxy may call the apex");
        let view = c.proxy_view(&ProxyUuid::derived("demo", "client")).unwrap();
        let apex = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
        assert_eq!(
            apex.ports[0].split,
            vec![("demo/server|8080".to_owned(), 90), ("demo/server-v2|9090".to_owned(), 10)]
        );
        let v2 = c.proxy_view(&ProxyUuid::derived("demo", "server-v2")).unwrap();
        assert_eq!(v2.local[0].apexes, vec![(ServiceKey::new("demo", "server"), Some("10.96.0.10".parse().unwrap()))]);
    }
}
