//! The mesh index: every object the sources reported, and the per-proxy view derived from them.
//!
//! A plain struct with synchronous methods, owned by the catalog actor and tested here without any runtime.
//! Here: the store (objects kept as they are, by [`Role`]), the indexes of Services, Endpoints and pods,
//! and applying source events; `audience` works out whom a change reaches, `views` what a proxy sees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::events::SourceEvent;
use crate::kinds::{Keyed, Model, Role};
use crate::model::*;
use crate::policy::{self, InboundPolicy, Policy, PolicyError};

mod audience;
mod policies;
#[cfg(test)]
mod tests;
mod views;

pub use views::{IngressPort, ProxyView, ResolvedPort, ServiceView, SplitTargets};

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
}
