//! The mesh index: every object the sources reported, and the per-proxy view derived from them.
//!
//! A plain struct with synchronous methods, owned by the catalog actor and tested here without any runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::events::SourceEvent;
use crate::model::*;

/// Which proxies need a new snapshot after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
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
}

impl ResolvedPort {
    pub fn cluster_name(&self, svc: &ServiceKey) -> String {
        format!("{}|{}", svc, self.target_port)
    }
}

/// A Service as seen by one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceView {
    pub key: ServiceKey,
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ResolvedPort>,
    /// Identities of the pods behind the Service: the SANs an upstream connection accepts.
    pub identities: BTreeSet<ServiceIdentity>,
}

/// Everything needed to build one proxy's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyView {
    pub pod: Pod,
    pub trust_domain: String,
    pub settings: MeshSettings,
    /// Services this pod backs (inbound); `target_port` resolved for this pod, `endpoints` empty.
    pub local: Vec<ServiceView>,
    /// Services this pod may call (outbound). Shared: in permissive mode every proxy sees the same list,
    /// computed once per batch of views (see [`MeshCatalog::proxy_views`]).
    pub upstream: Arc<Vec<ServiceView>>,
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
    settings: MeshSettings,
    namespaces: BTreeMap<String, Namespace>,
    services: BTreeMap<ServiceKey, Service>,
    endpoints: BTreeMap<ObjectKey, Endpoints>,
    pods: BTreeMap<NsName, Pod>,
    service_accounts: BTreeSet<NsName>,
    synced: bool,
    // Indexes, maintained on every change, so a view costs what it touches rather than the whole mesh.
    endpoints_by_service: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    pods_by_uuid: HashMap<ProxyUuid, BTreeSet<NsName>>,
    pods_by_ip: HashMap<IpAddr, BTreeSet<NsName>>,
    /// (namespace, label key, label value) → pod names.
    pods_by_label: HashMap<(String, String, String), BTreeSet<String>>,
}

impl MeshCatalog {
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self { trust_domain: trust_domain.into(), ..Default::default() }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Replaces the mesh-wide settings; every proxy is dirty when they change.
    pub fn set_settings(&mut self, settings: MeshSettings) -> Dirty {
        if self.settings == settings {
            return Dirty::Nothing;
        }
        self.settings = settings;
        Dirty::All
    }

    /// True once a source has delivered its first full content (`Reset`); no config is served before.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.endpoints.len(), self.pods.len())
    }

    pub fn apply(&mut self, event: SourceEvent) -> Dirty {
        match event {
            SourceEvent::Apply(obj) => self.upsert(obj),
            SourceEvent::Delete(key) => self.remove(&key),
            SourceEvent::Reset(objects) => {
                self.synced = true;
                let keep: BTreeSet<ObjectKey> = objects.iter().map(MeshObject::key).collect();
                let mut dirty = Dirty::Nothing;
                for key in self.all_keys() {
                    if !keep.contains(&key) {
                        dirty = dirty.merge(self.remove(&key));
                    }
                }
                for obj in objects {
                    dirty = dirty.merge(self.upsert(obj));
                }
                dirty
            }
        }
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> =
            self.namespaces.keys().map(|n| ObjectKey::new(Kind::Namespace, "", n.clone())).collect();
        keys.extend(self.services.keys().map(|k| ObjectKey::new(Kind::Service, k.namespace.clone(), k.name.clone())));
        keys.extend(self.endpoints.keys().cloned());
        keys.extend(self.pods.keys().map(|(ns, n)| ObjectKey::new(Kind::Pod, ns.clone(), n.clone())));
        keys.extend(
            self.service_accounts.iter().map(|(ns, n)| ObjectKey::new(Kind::ServiceAccount, ns.clone(), n.clone())),
        );
        keys
    }

    fn upsert(&mut self, obj: MeshObject) -> Dirty {
        match obj {
            MeshObject::Namespace(ns) => {
                // Namespaces carry no config yet; they are kept for troubleshooting and later selectors.
                self.namespaces.insert(ns.name.clone(), ns);
                Dirty::Nothing
            }
            MeshObject::ServiceAccount(sa) => {
                self.service_accounts.insert((sa.namespace, sa.name));
                Dirty::Nothing
            }
            MeshObject::Service(svc) => {
                if self.services.get(&svc.key) == Some(&svc) {
                    return Dirty::Nothing;
                }
                self.services.insert(svc.key.clone(), svc);
                Dirty::All
            }
            MeshObject::Endpoints(ep) => {
                if self.endpoints.get(&ep.key) == Some(&ep) {
                    return Dirty::Nothing;
                }
                self.remove_endpoints(&ep.key.clone());
                self.endpoints_by_service.entry(ep.service.clone()).or_default().insert(ep.key.clone());
                self.endpoints.insert(ep.key.clone(), ep);
                Dirty::All
            }
            MeshObject::Pod(pod) => {
                let key = (pod.namespace.clone(), pod.name.clone());
                if self.pods.get(&key) == Some(&pod) {
                    return Dirty::Nothing;
                }
                self.remove_pod(&key);
                self.pods_by_uuid.entry(pod.proxy_uuid.clone()).or_default().insert(key.clone());
                if let Some(ip) = pod.ip {
                    self.pods_by_ip.entry(ip).or_default().insert(key.clone());
                }
                for (k, v) in &pod.labels {
                    self.pods_by_label
                        .entry((pod.namespace.clone(), k.clone(), v.clone()))
                        .or_default()
                        .insert(pod.name.clone());
                }
                self.pods.insert(key, pod);
                // A pod's address and labels feed other proxies' endpoints and SAN lists.
                Dirty::All
            }
        }
    }

    fn remove(&mut self, key: &ObjectKey) -> Dirty {
        let removed = match key.kind {
            Kind::Namespace => {
                self.namespaces.remove(&key.name);
                false
            }
            Kind::ServiceAccount => {
                self.service_accounts.remove(&(key.namespace.clone(), key.name.clone()));
                false
            }
            Kind::Service => self.services.remove(&ServiceKey::new(key.namespace.clone(), key.name.clone())).is_some(),
            Kind::Endpoints | Kind::EndpointSlice => self.remove_endpoints(key),
            Kind::Pod => self.remove_pod(&(key.namespace.clone(), key.name.clone())),
        };
        if removed { Dirty::All } else { Dirty::Nothing }
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
        if let Some(ip) = old.ip {
            unindex(&mut self.pods_by_ip, ip, key);
        }
        for (k, v) in &old.labels {
            unindex(&mut self.pods_by_label, (old.namespace.clone(), k.clone(), v.clone()), &old.name);
        }
        true
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    fn pods_with_uuid(&self, uuid: &ProxyUuid) -> impl Iterator<Item = &Pod> {
        self.pods_by_uuid.get(uuid).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    /// Every pod with this address (usually one; a reused address can briefly have two).
    fn pods_at(&self, ip: IpAddr) -> impl Iterator<Item = &Pod> {
        self.pods_by_ip.get(&ip).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    fn endpoint_objects<'a>(&'a self, svc: &ServiceKey) -> impl Iterator<Item = &'a Endpoints> + 'a {
        self.endpoints_by_service.get(svc).into_iter().flatten().filter_map(|k| self.endpoints.get(k))
    }

    /// Checks a connecting proxy's certificate against the pod it claims to be.
    pub fn verify(&self, proxy: &ProxyId) -> Result<&Pod, VerifyError> {
        let pods: Vec<&Pod> = self.pods_with_uuid(&proxy.uuid).collect();
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
        self.view_with(uuid, &Arc::new(self.upstream_views()))
    }

    /// Views of many proxies at once. The Services every proxy may call are derived once and shared by
    /// `Arc`, so a batch of N views costs one pass over the Services, not N.
    pub fn proxy_views<'a>(
        &'a self,
        uuids: impl IntoIterator<Item = ProxyUuid> + 'a,
    ) -> impl Iterator<Item = (ProxyUuid, Option<ProxyView>)> + 'a {
        let upstream = Arc::new(self.upstream_views());
        uuids.into_iter().map(move |u| {
            let v = self.view_with(&u, &upstream);
            (u, v)
        })
    }

    fn upstream_views(&self) -> Vec<ServiceView> {
        self.services.values().filter_map(|svc| self.service_view(svc)).collect()
    }

    fn view_with(&self, uuid: &ProxyUuid, upstream: &Arc<Vec<ServiceView>>) -> Option<ProxyView> {
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
        Some(ProxyView {
            pod: pod.clone(),
            trust_domain: self.trust_domain.clone(),
            settings: self.settings.clone(),
            local,
            upstream: upstream.clone(),
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
                ResolvedPort { name: sp.name.clone(), port: sp.port, target_port, protocol: sp.protocol, endpoints }
            })
            .collect();
        if ports.is_empty() {
            return None;
        }
        Some(ServiceView { key: svc.key.clone(), cluster_ip: svc.cluster_ip, ports, identities })
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
        })
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
        let d = c.apply(SourceEvent::Reset(vec![
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
        assert_eq!(c.apply(SourceEvent::Reset(vec![MeshObject::Pod(p)])), Dirty::All);
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
}
