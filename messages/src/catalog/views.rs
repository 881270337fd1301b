//! What one proxy sees: its view (the Services it backs and may call, with endpoints, splits and its
//! inbound policy), derived from the store and its indexes.

use super::*;

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
    /// The UpstreamTrafficSetting in force for the Service: its clients' circuit breakers and connect
    /// timeout, its sidecars' rate limits.
    pub traffic: Option<Arc<UpstreamTrafficSetting>>,
    /// For a local Service: who outside the mesh may reach each of its ports (IngressBackend), one entry per
    /// target port. Empty for a Service a proxy calls.
    pub ingress: Vec<IngressPort>,
}

/// One target port open to clients outside the mesh, as its sidecar enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressPort {
    /// The IngressBackend's name.
    pub policy: String,
    pub target_port: u16,
    pub https: bool,
    pub skip_client_cert_validation: bool,
    pub sni_hosts: Vec<String>,
    /// The client addresses admitted: `None` admits any address (no Service or IPRange source).
    pub source_ranges: Option<Vec<Cidr>>,
    /// The client certificates' principals admitted over HTTPS with validation; empty admits any client.
    pub principals: Vec<String>,
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
    /// How this proxy retries requests to each destination Service (Retry policies, when the MeshConfig
    /// turns them on; empty otherwise).
    pub retries: BTreeMap<ServiceKey, RetryPolicy>,
}

impl ProxyView {
    pub fn identity(&self) -> ServiceIdentity {
        self.pod.identity()
    }
}

impl MeshCatalog {
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

    pub(super) fn upstream_views(&self) -> Vec<ServiceView> {
        self.services.values().filter_map(|svc| self.service_view(svc)).collect()
    }

    /// What `identity` may call in SMI mode: Services with pods of an allowed destination identity, with
    /// only those pods as endpoints and SANs; an apex Service whenever one of its backends is allowed.
    pub(super) fn allowed_upstream(&self, identity: &ServiceIdentity, all: &[ServiceView]) -> Vec<ServiceView> {
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
    pub(super) fn apply_splits(&self, list: &mut [ServiceView]) {
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

    pub(super) fn view_with(&self, uuid: &ProxyUuid, upstreams: &mut Upstreams) -> Option<ProxyView> {
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
        let retries = match self.settings.retry_policy {
            true => self.policy.retries.get(&identity).cloned().unwrap_or_default(),
            false => BTreeMap::new(),
        };
        Some(ProxyView {
            pod: pod.clone(),
            trust_domain: self.trust_domain.clone(),
            settings: self.settings.clone(),
            local,
            upstream: upstreams.for_identity(self, &identity),
            inbound_policy,
            retries,
        })
    }

    pub(super) fn has_endpoint_objects(&self, svc: &ServiceKey) -> bool {
        self.endpoints_by_service.contains_key(svc)
    }

    /// Pods in the Service's namespace whose labels match its selector (candidates come from the index of
    /// the selector's first label).
    pub(super) fn selected_pods<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
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
    pub(super) fn port_endpoints(&self, svc: &Service, sp: &ServicePort) -> Vec<SocketAddr> {
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

    pub(super) fn service_view(&self, svc: &Service) -> Option<ServiceView> {
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
        Some(ServiceView {
            key: svc.key.clone(),
            cluster_ip: svc.cluster_ip,
            ports,
            identities,
            apexes: Vec::new(),
            traffic: self.policy.upstream_traffic.get(&svc.key).cloned(),
            ingress: Vec::new(),
        })
    }

    /// The ingress of a local Service's target ports: sources resolved to addresses (a Service source to its
    /// endpoints' addresses, now), principals as the backend's TLS mode admits them.
    fn ingress_ports(&self, svc: &ServiceKey, ports: &[ResolvedPort]) -> Vec<IngressPort> {
        if self.policy.ingress.is_empty() {
            return Vec::new();
        }
        let targets: BTreeSet<u16> = ports.iter().map(|p| p.target_port).collect();
        targets
            .into_iter()
            .filter_map(|port| {
                let rule = self.policy.ingress.get(&(svc.clone(), port))?;
                let mut ranges: Option<BTreeSet<Cidr>> = None;
                let mut principals = Vec::new();
                for s in &rule.sources {
                    match s {
                        IngressSource::IpRange(c) => {
                            ranges.get_or_insert_with(BTreeSet::new).insert(*c);
                        }
                        IngressSource::Service(k) => {
                            // Named but with no endpoints (yet): it admits no address, and the chain must not
                            // fall open for lack of one.
                            let set = ranges.get_or_insert_with(BTreeSet::new);
                            if let Some(source) = self.services.get(k) {
                                for sp in &source.ports {
                                    set.extend(self.port_endpoints(source, sp).iter().map(|a| Cidr::host(a.ip())));
                                }
                            }
                        }
                        IngressSource::AuthenticatedPrincipal(p) => principals.push(p.clone()),
                    }
                }
                let t = &rule.target;
                // Plain HTTP cannot tell who the client is, and a client without a verified certificate
                // neither: any principal.
                if !t.https || t.skip_client_cert_validation {
                    principals.clear();
                }
                Some(IngressPort {
                    policy: rule.policy.clone(),
                    target_port: port,
                    https: t.https,
                    skip_client_cert_validation: t.skip_client_cert_validation,
                    sni_hosts: t.sni_hosts.clone(),
                    source_ranges: ranges.map(|r| r.into_iter().collect()),
                    principals,
                })
            })
            .collect()
    }

    pub(super) fn local_view(&self, svc: &Service, pod: &Pod) -> Option<ServiceView> {
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
            identities: BTreeSet::from([pod.identity()]),
            apexes: self
                .policy
                .splits
                .iter()
                .filter(|(_, backends)| backends.iter().any(|(b, _)| b == &svc.key))
                .map(|(apex, _)| (apex.clone(), self.services.get(apex).and_then(|a| a.cluster_ip)))
                .collect(),
            traffic: self.policy.upstream_traffic.get(&svc.key).cloned(),
            ingress: self.ingress_ports(&svc.key, &ports),
            ports,
        })
    }
}

/// The upstream lists of one batch of views, each computed on first use.
pub(super) struct Upstreams {
    all: Option<Arc<Vec<ServiceView>>>,
    per_identity: HashMap<ServiceIdentity, Arc<Vec<ServiceView>>>,
}

impl Upstreams {
    pub(super) fn new() -> Self {
        Self { all: None, per_identity: HashMap::new() }
    }

    pub(super) fn all(&mut self, catalog: &MeshCatalog) -> Arc<Vec<ServiceView>> {
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

    pub(super) fn for_identity(&mut self, catalog: &MeshCatalog, identity: &ServiceIdentity) -> Arc<Vec<ServiceView>> {
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
pub(super) fn match_endpoint_port(svc: &Service, sp: &ServicePort, ports: &[EndpointPort]) -> Option<u16> {
    match &sp.name {
        Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.port),
        None if svc.ports.len() == 1 && ports.len() == 1 => Some(ports[0].port),
        None => ports.iter().find(|p| p.name.is_none()).map(|p| p.port),
    }
}
