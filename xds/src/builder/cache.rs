//! Encoded resources shared between proxies and kept across builds, keyed by their inputs.

use super::*;

/// Encoded resources shared between proxies and kept across builds. Many proxies see the same clusters,
/// endpoints, routes and outbound listener; each is encoded once and shared by `Arc`, and a later build
/// that needs the same content (a rebuild after a change elsewhere) finds it here instead of encoding it
/// again. Keys are the inputs of the resource themselves ([`CacheKey`]: compared, not just hashed), so
/// equal keys mean equal bytes; large inputs (an upstream list) are interned once per batch and compared
/// by pointer after that. Entries no build used in the last [`BuildCache::KEEP_BATCHES`] batches are dropped, which bounds the
/// cache by what recent builds needed (content that changed leaves under its old key).
#[derive(Debug, Default)]
pub struct BuildCache {
    entries: HashMap<CacheKey, (Vec<Arc<Resource>>, u64)>,
    batch: u64,
    /// What the outbound listener and routes of each upstream list of this batch depend on, interned, by
    /// list: proxies share lists (all of them in permissive mode, one per identity in SMI mode), so each
    /// is interned once per batch.
    upstream_chains: HashMap<usize, (Arc<Vec<ServiceView>>, Interned<ChainsInput>)>,
    /// Every [`ChainsInput`] in use, by content: equal content is one `Arc`.
    chains: HashSet<Arc<ChainsInput>>,
    /// The upstream part of each list of this batch (with the list, to keep its address unique).
    upstream_parts: HashMap<(usize, String), UpstreamParts>,
    /// Resource sets of the snapshots proxies hold, shared by the proxies with the same set of a type.
    pub(super) sets: crate::snapshot::SetCache,
    /// Pairs of this batch's sets found consistent (see [`crate::consistency::Checked`]).
    pub(super) checked: crate::consistency::Checked,
    pub hits: u64,
    pub misses: u64,
}

/// The key of a cached resource: everything its bytes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum CacheKey {
    /// The proxy's certificate: its identity and PEMs.
    Cert(ServiceIdentity, String, String),
    /// A validation context: its name and the trust bundle.
    Root(&'static str, String),
    /// An upstream cluster: its name, protocol, the identities it accepts, the trust domain, and its
    /// Service's connection settings (UpstreamTrafficSetting).
    Cluster(String, AppProtocol, BTreeSet<ServiceIdentity>, String, Option<messages::ConnectionSettings>),
    /// An assignment: its cluster and endpoints.
    Endpoints(String, Vec<SocketAddr>),
    OutboundListener(Interned<ChainsInput>, MeshSettings),
    /// Outbound routes: the proxy's namespace (short host names resolve in it), the chains' input, and
    /// the proxy's retry policies.
    OutboundRoutes(String, Interned<ChainsInput>, BTreeMap<ServiceKey, messages::RetryPolicy>),
    Tracing(TracingSettings),
    /// A resource that depends on nothing.
    Fixed(&'static str),
}

/// Everything the outbound listener and routes depend on: Services, addresses and ports (with their
/// splits), but endpoints only where they are the addresses matched (headless Services), so an endpoint
/// change re-encodes neither.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct ChainsInput(Vec<(ServiceKey, Option<IpAddr>, Vec<ChainsPort>)>);

pub(super) type ChainsPort = (Option<String>, u16, u16, AppProtocol, messages::catalog::SplitTargets, Vec<SocketAddr>);

impl ChainsInput {
    fn of(upstream: &[ServiceView]) -> Self {
        Self(
            upstream
                .iter()
                .map(|svc| {
                    let ports = svc
                        .ports
                        .iter()
                        .map(|p| {
                            let matched = if svc.cluster_ip.is_none() { p.endpoints.clone() } else { Vec::new() };
                            (p.name.clone(), p.port, p.target_port, p.protocol, p.split.clone(), matched)
                        })
                        .collect();
                    (svc.key.clone(), svc.cluster_ip, ports)
                })
                .collect(),
        )
    }
}

/// A value interned by content: one `Arc` per distinct content, so comparing two is comparing pointers
/// (and hashing one is hashing its address), with no collision possible.
#[derive(Debug)]
pub(super) struct Interned<T>(Arc<T>);

impl<T> Clone for Interned<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> PartialEq for Interned<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Interned<T> {}

impl<T> Hash for Interned<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).hash(state);
    }
}

/// An upstream list (kept so its address stays unique) and its part.
pub(super) type UpstreamParts = (Arc<Vec<ServiceView>>, Arc<UpstreamPart>);

/// What an upstream list contributes to every proxy that sees it: its clusters and their endpoints (each
/// cluster with its assignment), and the ports whose outbound route configuration the listener refers to.
#[derive(Debug)]
pub struct UpstreamPart {
    pub clusters: Vec<Arc<Resource>>,
    pub endpoints: Vec<Arc<Resource>>,
    pub http_ports: BTreeSet<u16>,
}

impl BuildCache {
    /// Batches an unused entry survives.
    pub const KEEP_BATCHES: u64 = 8;

    pub fn new() -> Self {
        Self::default()
    }

    /// The interned input of an upstream list's outbound listener and routes, once per list and batch.
    pub(super) fn upstream_chains(&mut self, upstream: &Arc<Vec<ServiceView>>) -> Interned<ChainsInput> {
        // The entry holds the list, so its address cannot be reused by another list while the entry lives.
        let chains = &mut self.chains;
        let (_, interned) = self.upstream_chains.entry(Arc::as_ptr(upstream) as usize).or_insert_with(|| {
            let input = ChainsInput::of(upstream);
            let shared = match chains.get(&input) {
                Some(shared) => shared.clone(),
                None => {
                    let shared = Arc::new(input);
                    chains.insert(shared.clone());
                    shared
                }
            };
            (upstream.clone(), Interned(shared))
        });
        interned.clone()
    }

    /// The clusters and endpoints of an upstream list, assembled once per list and batch from the cache.
    pub(super) fn upstream_part(&mut self, upstream: &Arc<Vec<ServiceView>>, td: &str) -> Arc<UpstreamPart> {
        let key = (Arc::as_ptr(upstream) as usize, td.to_owned());
        if let Some((_, part)) = self.upstream_parts.get(&key) {
            return part.clone();
        }
        let mut part = UpstreamPart { clusters: Vec::new(), endpoints: Vec::new(), http_ports: BTreeSet::new() };
        let mut done = BTreeSet::new();
        // A cluster is keyed by its identities, not the endpoints, so an endpoint change re-encodes no cluster.
        for svc in upstream.iter() {
            for port in &svc.ports {
                let cluster_name = port.cluster_name(&svc.key);
                if !done.insert(cluster_name.clone()) {
                    continue;
                }
                // Ports sharing the cluster may disagree on protocol: HTTP options on a cluster are harmless
                // to tcp_proxy, while their absence would downgrade HTTP/2 (gRPC) to HTTP/1.1.
                let cluster_protocol = svc
                    .ports
                    .iter()
                    .filter(|p| p.target_port == port.target_port)
                    .map(|p| p.protocol)
                    .find(|p| p.is_http())
                    .unwrap_or(port.protocol);
                let key = CacheKey::Cluster(
                    cluster_name.clone(),
                    cluster_protocol,
                    svc.identities.clone(),
                    td.to_owned(),
                    svc.traffic.as_ref().map(|t| t.connection.clone()),
                );
                part.clusters.extend(self.get_or_make(key, || {
                    vec![resource(&cluster_name, upstream_cluster(svc, cluster_protocol, &cluster_name, td))]
                }));
                // Service ports that lead to the same target port share the cluster: its endpoints are
                // theirs together.
                let endpoints: Vec<SocketAddr> = svc
                    .ports
                    .iter()
                    .filter(|p| p.target_port == port.target_port)
                    .flat_map(|p| p.endpoints.iter().copied())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let key = CacheKey::Endpoints(cluster_name.clone(), endpoints.clone());
                part.endpoints.extend(
                    self.get_or_make(key, || vec![resource(&cluster_name, load_assignment(&cluster_name, &endpoints))]),
                );
                if port.protocol.is_http() && (svc.cluster_ip.is_some() || !port.endpoints.is_empty()) {
                    part.http_ports.insert(port.port);
                }
            }
        }
        let part = Arc::new(part);
        self.upstream_parts.insert(key, (upstream.clone(), part.clone()));
        part
    }

    /// Starts a batch: entries unused for [`Self::KEEP_BATCHES`] batches are dropped.
    pub fn next_batch(&mut self) {
        // Before the sweep: the pairs name sets by address, and a swept set's address may be reused.
        self.checked.clear();
        self.upstream_chains.clear();
        self.upstream_parts.clear();
        self.sets.sweep();
        self.batch += 1;
        let oldest = self.batch.saturating_sub(Self::KEEP_BATCHES);
        self.entries.retain(|_, (_, used)| *used >= oldest);
        // Kept while a cache key holds it (the batch's lists were let go above).
        self.chains.retain(|shared| Arc::strong_count(shared) > 1);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn get_or_make(&mut self, key: CacheKey, make: impl FnOnce() -> Vec<Resource>) -> Vec<Arc<Resource>> {
        let batch = self.batch;
        if let Some((v, used)) = self.entries.get_mut(&key) {
            self.hits += 1;
            *used = batch;
            return v.clone();
        }
        self.misses += 1;
        let v: Vec<Arc<Resource>> = make().into_iter().map(Arc::new).collect();
        self.entries.insert(key, (v.clone(), batch));
        v
    }
}
