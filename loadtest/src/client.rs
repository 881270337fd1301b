//! A simulated sidecar: a real ADS client over mTLS that behaves like Envoy on the wire.
//!
//! It requests types in Envoy's order (CDS; then EDS for the clusters it got; LDS; then RDS and SDS by the
//! names its clusters and listeners reference), ACKs every response (or NACKs one type on request),
//! reconnects with Envoy's jittered exponential back-off, and on a delta reconnect tells what it still
//! holds. It records what a load test needs: when it connected and converged, bytes received, and when it
//! first saw each marked endpoint change ([`crate::mesh::marker_seq`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Node, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use xds::ResourceType;

use crate::mesh::marker_seq;

/// Which ADS flavour a sidecar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Sotw,
    Delta,
}

/// Where and as whom a sidecar connects.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub addr: SocketAddr,
    /// The name the ADS server certificate is checked against (`ads.<trust-domain>`).
    pub server_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Source address: one loopback address offers ~28k ports, so large runs spread over several.
    pub local_ip: Option<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: tonic::transport::Error },
    #[error("ADS stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("request queue closed")]
    Closed,
}

/// Opens an mTLS channel to the ADS server, as a sidecar's bootstrap would.
pub async fn connect(cfg: &ConnectConfig) -> Result<AggregatedDiscoveryServiceClient<Channel>, ClientError> {
    Ok(AggregatedDiscoveryServiceClient::new(connect_channel(cfg).await?).max_decoding_message_size(MAX_MESSAGE))
}

/// The largest response a sidecar accepts.
const MAX_MESSAGE: usize = 64 << 20;

async fn connect_channel(cfg: &ConnectConfig) -> Result<Channel, ClientError> {
    let err = |source| ClientError::Connect { addr: cfg.addr, source };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cfg.ca_pem))
        .identity(Identity::from_pem(&cfg.cert_pem, &cfg.key_pem))
        .domain_name(cfg.server_name.clone());
    let channel = Endpoint::from_shared(format!("https://{}", cfg.addr))
        .map_err(err)?
        .tls_config(tls)
        .map_err(err)?
        .local_address(cfg.local_ip)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(err)?;
    Ok(channel)
}

/// The parts of a SotW `DiscoveryResponse` a sidecar acts on, decoded without copying: each resource's
/// bytes are a slice of the received buffer, decoded only as far as the sidecar needs (the harness
/// shares the machine with the controller it measures, so its own cost is kept low).
#[derive(Clone, PartialEq, prost::Message)]
struct LeanResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LeanAny>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// `google.protobuf.Any` with its fields left as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct LeanAny {
    #[prost(bytes = "bytes", tag = "1")]
    type_url: prost::bytes::Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: prost::bytes::Bytes,
}

/// A `ClusterLoadAssignment` reduced to its name and its endpoints' addresses (field numbers of
/// envoy.config.endpoint.v3 and envoy.config.core.v3; everything else is skipped).
mod lean_eds {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Assignment {
        #[prost(string, tag = "1")]
        pub cluster_name: String,
        #[prost(message, repeated, tag = "2")]
        pub endpoints: Vec<Locality>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Locality {
        #[prost(message, repeated, tag = "2")]
        pub lb_endpoints: Vec<LbEndpoint>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LbEndpoint {
        #[prost(message, optional, tag = "1")]
        pub endpoint: Option<Endpoint>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Endpoint {
        #[prost(message, optional, tag = "1")]
        pub address: Option<Address>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Address {
        #[prost(message, optional, tag = "1")]
        pub socket_address: Option<SocketAddress>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SocketAddress {
        #[prost(string, tag = "2")]
        pub address: String,
    }
}

const SOTW_METHOD: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Queues a request to the server. A full queue (the connection is busy) is waited on, as Envoy does;
/// only a closed stream is an error.
async fn send<T>(tx: &mpsc::Sender<T>, req: T) -> Result<(), ClientError> {
    tx.send(req).await.map_err(|_| ClientError::Closed)
}

/// Marked changes written by a load test and when each reached each sidecar.
#[derive(Debug)]
pub struct Changes {
    written: Vec<Mutex<Option<Instant>>>,
    /// Per change: latencies (write → received) of every sidecar that got it, in microseconds.
    latencies: Vec<Mutex<Vec<u64>>>,
}

impl Changes {
    pub fn new(capacity: usize) -> Self {
        Self {
            written: (0..=capacity).map(|_| Mutex::new(None)).collect(),
            latencies: (0..=capacity).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Records that change `seq` is being written now (call before writing it).
    pub fn mark_written(&self, seq: u32) {
        if let Some(m) = self.written.get(seq as usize)
            && let Ok(mut w) = m.lock()
        {
            *w = Some(Instant::now());
        }
    }

    fn reached(&self, seq: u32, now: Instant) {
        let Some(Ok(written)) = self.written.get(seq as usize).map(|m| m.lock().map(|w| *w)) else { return };
        let Some(written) = written else { return };
        if let Some(Ok(mut l)) = self.latencies.get(seq as usize).map(Mutex::lock) {
            l.push(now.saturating_duration_since(written).as_micros() as u64);
        }
    }

    /// Latencies of change `seq`, in microseconds.
    pub fn latencies(&self, seq: u32) -> Vec<u64> {
        self.latencies.get(seq as usize).and_then(|m| m.lock().ok().map(|l| l.clone())).unwrap_or_default()
    }
}

/// What one sidecar recorded; written by its task, read by the harness.
#[derive(Debug, Default)]
pub struct SidecarStats {
    /// Microseconds since the run's epoch; 0 = not yet.
    pub launched_us: AtomicU64,
    pub first_response_us: AtomicU64,
    pub converged_us: AtomicU64,
    /// Latest convergence (after a reconnect too).
    pub last_converged_us: AtomicU64,
    pub converged: AtomicBool,
    pub bytes: AtomicU64,
    pub bytes_at_convergence: AtomicU64,
    /// Bytes received per type (in [`ResourceType::ALL`]'s order), and as they were at convergence.
    pub bytes_by_type: [AtomicU64; 5],
    pub bytes_by_type_at_convergence: [AtomicU64; 5],
    pub responses: AtomicU64,
    pub connect_errors: AtomicU64,
    pub stream_errors: AtomicU64,
    pub streams: AtomicU64,
    /// Highest marked change seen in any endpoint assignment.
    pub max_seq: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl SidecarStats {
    pub fn is_converged(&self) -> bool {
        self.converged.load(Ordering::Relaxed)
    }
}

/// How a simulated sidecar behaves.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub uuid: String,
    pub api: Api,
    pub connect: ConnectConfig,
    /// NACK the first response of this type (then ACK as usual).
    pub nack: Option<ResourceType>,
}

/// One simulated sidecar; [`Sidecar::run`] keeps it connected until `stop` is raised.
#[derive(Debug)]
pub struct Sidecar {
    cfg: SidecarConfig,
    epoch: Instant,
    pub stats: Arc<SidecarStats>,
    changes: Arc<Changes>,
    rng: u64,
    /// Delta: what the sidecar holds, per type, kept across reconnects.
    held: BTreeMap<ResourceType, BTreeMap<String, String>>,
}

/// Envoy's ADS retry back-off: 500 ms base, 30 s cap, full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn micros_since(epoch: Instant) -> u64 {
    (epoch.elapsed().as_micros() as u64).max(1)
}

impl Sidecar {
    pub fn new(cfg: SidecarConfig, epoch: Instant, changes: Arc<Changes>) -> Self {
        let rng =
            cfg.uuid.bytes().fold(0x9E37_79B9_7F4A_7C15_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
        Self { cfg, epoch, stats: Arc::default(), changes, rng: rng | 1, held: BTreeMap::new() }
    }

    fn jitter(&mut self, cap: Duration) -> Duration {
        // xorshift64: enough to spread reconnects.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(self.rng % (cap.as_millis() as u64).max(1))
    }

    /// Connects, serves the stream, and reconnects with back-off until `stop` is raised.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.stats.launched_us.store(micros_since(self.epoch), Ordering::Relaxed);
        let mut backoff = BACKOFF_BASE;
        loop {
            if *stop.borrow() {
                return;
            }
            let attempt = async {
                let channel = connect_channel(&self.cfg.connect).await?;
                self.stats.streams.fetch_add(1, Ordering::Relaxed);
                match self.cfg.api {
                    Api::Sotw => self.sotw(channel).await,
                    Api::Delta => {
                        let client =
                            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
                        self.delta(client).await
                    }
                }
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let was_converged = self.stats.converged.swap(false, Ordering::Relaxed);
            match result {
                Err(ClientError::Connect { .. }) => self.stats.connect_errors.fetch_add(1, Ordering::Relaxed),
                Err(_) | Ok(()) => self.stats.stream_errors.fetch_add(1, Ordering::Relaxed),
            };
            if let Err(e) = result
                && let Ok(mut l) = self.stats.last_error.lock()
            {
                *l = Some(e.to_string());
            }
            if was_converged {
                backoff = BACKOFF_BASE;
            }
            let wait = self.jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn on_bytes(&self, type_url: &str, n: usize) {
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(i) = ResourceType::ALL.iter().position(|t| t.type_url() == type_url) {
            self.stats.bytes_by_type[i].fetch_add(n as u64, Ordering::Relaxed);
        }
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        let _ = self.stats.first_response_us.compare_exchange(
            0,
            micros_since(self.epoch),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn on_converged(&self) {
        let now = micros_since(self.epoch);
        if !self.stats.converged.swap(true, Ordering::Relaxed) {
            self.stats.last_converged_us.store(now, Ordering::Relaxed);
            if self.stats.converged_us.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                self.stats.bytes_at_convergence.store(self.stats.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                for (at, now) in self.stats.bytes_by_type_at_convergence.iter().zip(&self.stats.bytes_by_type) {
                    at.store(now.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
    }

    fn on_endpoints(&self, cla: &lean_eds::Assignment) {
        let best = cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| e.endpoint.as_ref()?.address.as_ref()?.socket_address.as_ref())
            .filter_map(|s| s.address.parse::<IpAddr>().ok())
            .filter_map(marker_seq)
            .max();
        if let Some(seq) = best {
            let old = self.stats.max_seq.fetch_max(u64::from(seq), Ordering::Relaxed);
            let now = Instant::now();
            for s in (old + 1)..=u64::from(seq) {
                self.changes.reached(s as u32, now);
            }
        }
    }

    async fn sotw(&mut self, channel: Channel) -> Result<(), ClientError> {
        let (tx, rx) = mpsc::channel(16);
        // As the sidecar bootstrap sets `set_node_on_first_message_only`: the node goes with the first
        // request of a stream only.
        let mut node = Some(Node { id: self.cfg.uuid.clone(), cluster: "loadtest".to_owned(), ..Default::default() });
        let mut view = View::default();
        let mut state: BTreeMap<ResourceType, SotwType> = BTreeMap::new();
        let mut nacked = false;
        let mut request = |ty: ResourceType, st: &SotwType| DiscoveryRequest {
            node: node.take(),
            type_url: ty.type_url().to_owned(),
            resource_names: st.names.iter().cloned().collect(),
            version_info: st.version.clone(),
            response_nonce: st.nonce.clone(),
            ..Default::default()
        };
        state.insert(ResourceType::Cluster, SotwType::default());
        send(&tx, request(ResourceType::Cluster, &state[&ResourceType::Cluster])).await?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<DiscoveryRequest, LeanResponse>::default();
        let mut stream = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static(SOTW_METHOD),
                codec,
            )
            .await?
            .into_inner();
        while let Some(resp) = stream.message().await? {
            self.on_bytes(&resp.type_url, resp.encoded_len());
            let Some(ty) = ResourceType::from_type_url(&resp.type_url) else { continue };
            let st = state.entry(ty).or_default();
            if self.cfg.nack == Some(ty) && !nacked {
                nacked = true;
                let mut nack = request(ty, st);
                nack.response_nonce = resp.nonce.clone();
                nack.error_detail =
                    Some(RpcStatus { code: 3, message: "rejected by the load test".into(), details: vec![] });
                send(&tx, nack).await?;
                continue;
            }
            st.version = resp.version_info.clone();
            st.nonce = resp.nonce.clone();
            st.got = true;
            st.have = BTreeMap::new();
            for any in &resp.resources {
                if let Some(name) = view.apply(ty, &any.value, self) {
                    st.have.insert(name, String::new());
                }
            }
            // State of the world: what is not in the response is gone.
            view.retain(ty, &st.have);
            send(&tx, request(ty, st)).await?;
            // What the new content references decides the next requests, as Envoy's subscriptions do.
            for (next, names) in view.wanted(ty) {
                let known = state.get(&next).map(|s| &s.names);
                // Like Envoy, no request for a named type before something names a resource of it (an
                // empty SotW request would be a wildcard).
                if known == Some(&names) || (known.is_none() && names.is_empty() && !next.is_wildcard()) {
                    continue;
                }
                let nst = state.entry(next).or_default();
                nst.names = names;
                nst.got = false;
                send(&tx, request(next, nst)).await?;
            }
            if view.complete(|t| state.get(&t).map(|s| (s.got, &s.names, &s.have))) {
                self.on_converged();
            }
        }
        Ok(())
    }

    async fn delta(&mut self, mut client: AggregatedDiscoveryServiceClient<Channel>) -> Result<(), ClientError> {
        let (tx, rx) = mpsc::channel(16);
        // The node goes with the first request of a stream only (`set_node_on_first_message_only`).
        let node = std::cell::Cell::new(Some(Node {
            id: self.cfg.uuid.clone(),
            cluster: "loadtest".to_owned(),
            ..Default::default()
        }));
        let mut view = View::default();
        let mut names: BTreeMap<ResourceType, BTreeSet<String>> = BTreeMap::new();
        let mut got: BTreeSet<ResourceType> = BTreeSet::new();
        let mut nacked = false;
        let first = |node: Option<Node>,
                     ty: ResourceType,
                     subscribe: Vec<String>,
                     held: Option<&BTreeMap<String, String>>| DeltaDiscoveryRequest {
            node,
            type_url: ty.type_url().to_owned(),
            resource_names_subscribe: subscribe,
            initial_resource_versions: held
                .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            ..Default::default()
        };
        // A reconnect forgets decoded content but tells the server what is still held.
        send(&tx, first(node.take(), ResourceType::Cluster, vec![], self.held.get(&ResourceType::Cluster))).await?;
        names.insert(ResourceType::Cluster, BTreeSet::new());
        let mut stream = client.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
        while let Some(resp) = stream.message().await? {
            self.on_bytes(&resp.type_url, resp.encoded_len());
            let Some(ty) = ResourceType::from_type_url(&resp.type_url) else { continue };
            let ack = DeltaDiscoveryRequest {
                node: node.take(),
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if self.cfg.nack == Some(ty) && !nacked {
                nacked = true;
                let mut nack = ack;
                nack.error_detail =
                    Some(RpcStatus { code: 3, message: "rejected by the load test".into(), details: vec![] });
                send(&tx, nack).await?;
                continue;
            }
            got.insert(ty);
            for r in &resp.resources {
                if let Some(any) = &r.resource {
                    view.apply(ty, &any.value, self);
                    self.held.entry(ty).or_default().insert(r.name.clone(), r.version.clone());
                }
            }
            for name in &resp.removed_resources {
                view.remove(ty, name);
                if let Some(h) = self.held.get_mut(&ty) {
                    h.remove(name);
                }
            }
            send(&tx, ack).await?;
            for (next, wanted) in view.wanted(ty) {
                let current = names.get(&next);
                if current == Some(&wanted) || (current.is_none() && wanted.is_empty() && !next.is_wildcard()) {
                    continue;
                }
                let is_first = current.is_none();
                let old = current.cloned().unwrap_or_default();
                let subscribe: Vec<String> = wanted.difference(&old).cloned().collect();
                let unsubscribe: Vec<String> = old.difference(&wanted).cloned().collect();
                if is_first {
                    send(&tx, first(node.take(), next, subscribe, self.held.get(&next))).await?;
                } else {
                    if let Some(h) = self.held.get_mut(&next) {
                        for n in &unsubscribe {
                            h.remove(n);
                        }
                    }
                    send(
                        &tx,
                        DeltaDiscoveryRequest {
                            node: node.take(),
                            type_url: next.type_url().to_owned(),
                            resource_names_subscribe: subscribe,
                            resource_names_unsubscribe: unsubscribe,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                names.insert(next, wanted);
            }
            let empty = BTreeMap::new();
            let held = &self.held;
            if view.complete(|t| names.get(&t).map(|n| (got.contains(&t), n, held.get(&t).unwrap_or(&empty)))) {
                self.on_converged();
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct SotwType {
    names: BTreeSet<String>,
    version: String,
    nonce: String,
    got: bool,
    have: BTreeMap<String, String>,
}

/// What a cluster or listener references.
#[derive(Debug, Default, Clone)]
struct Refs {
    eds: Option<String>,
    rds: Vec<String>,
    sds: Vec<String>,
}

/// The decoded configuration a sidecar holds, reduced to what decides its requests.
#[derive(Debug, Default)]
struct View {
    clusters: BTreeMap<String, Refs>,
    listeners: BTreeMap<String, Refs>,
}

fn sds_names(ctx: Option<&CommonTlsContext>, out: &mut Vec<String>) {
    let Some(ctx) = ctx else { return };
    out.extend(ctx.tls_certificate_sds_secret_configs.iter().map(|s| s.name.clone()));
    match &ctx.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            out.push(s.name.clone());
        }
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            out.extend(c.validation_context_sds_secret_config.iter().map(|s| s.name.clone()));
        }
        _ => {}
    }
}

fn chain_refs(chain: &FilterChain, refs: &mut Refs) {
    for f in &chain.filters {
        if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type
            && any.type_url.ends_with("HttpConnectionManager")
            && let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
            && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
        {
            refs.rds.push(rds.route_config_name);
        }
    }
    if let Some(ts) = &chain.transport_socket
        && let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type
        && let Ok(tls) = DownstreamTlsContext::decode(any.value.as_slice())
    {
        sds_names(tls.common_tls_context.as_ref(), &mut refs.sds);
    }
}

impl View {
    /// Decodes one resource (the value of its `Any`); returns its name.
    fn apply(&mut self, ty: ResourceType, value: &[u8], sidecar: &Sidecar) -> Option<String> {
        match ty {
            ResourceType::Cluster => {
                let c = Cluster::decode(value).ok()?;
                let mut refs = Refs::default();
                let eds = matches!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32);
                if eds {
                    let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.clone()).unwrap_or_default();
                    refs.eds = Some(if service.is_empty() { c.name.clone() } else { service });
                }
                if let Some(ts) = &c.transport_socket
                    && let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type
                    && let Ok(tls) = UpstreamTlsContext::decode(any.value.as_slice())
                {
                    sds_names(tls.common_tls_context.as_ref(), &mut refs.sds);
                }
                self.clusters.insert(c.name.clone(), refs);
                Some(c.name)
            }
            ResourceType::Listener => {
                let l = Listener::decode(value).ok()?;
                let mut refs = Refs::default();
                for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                    chain_refs(chain, &mut refs);
                }
                self.listeners.insert(l.name.clone(), refs);
                Some(l.name)
            }
            ResourceType::Endpoint => {
                let cla = lean_eds::Assignment::decode(value).ok()?;
                sidecar.on_endpoints(&cla);
                Some(cla.cluster_name)
            }
            ResourceType::Route => {
                let rc = envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(value).ok()?;
                Some(rc.name)
            }
            ResourceType::Secret => {
                let s = envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(value).ok()?;
                Some(s.name)
            }
        }
    }

    fn retain(&mut self, ty: ResourceType, names: &BTreeMap<String, String>) {
        match ty {
            ResourceType::Cluster => self.clusters.retain(|n, _| names.contains_key(n)),
            ResourceType::Listener => self.listeners.retain(|n, _| names.contains_key(n)),
            _ => {}
        }
    }

    fn remove(&mut self, ty: ResourceType, name: &str) {
        match ty {
            ResourceType::Cluster => {
                self.clusters.remove(name);
            }
            ResourceType::Listener => {
                self.listeners.remove(name);
            }
            _ => {}
        }
    }

    /// The requests new content of `ty` leads to: after clusters, EDS (and LDS, wildcard); after
    /// listeners, RDS; SDS follows both.
    fn wanted(&self, ty: ResourceType) -> Vec<(ResourceType, BTreeSet<String>)> {
        let sds =
            || self.clusters.values().chain(self.listeners.values()).flat_map(|r| r.sds.iter().cloned()).collect();
        match ty {
            ResourceType::Cluster => vec![
                (ResourceType::Endpoint, self.clusters.values().filter_map(|r| r.eds.clone()).collect()),
                (ResourceType::Listener, BTreeSet::new()),
                (ResourceType::Secret, sds()),
            ],
            ResourceType::Listener => vec![
                (ResourceType::Route, self.listeners.values().flat_map(|r| r.rds.iter().cloned()).collect()),
                (ResourceType::Secret, sds()),
            ],
            _ => vec![],
        }
    }

    /// Every type has been answered and holds every name asked for.
    fn complete<'a>(
        &self,
        state: impl Fn(ResourceType) -> Option<(bool, &'a BTreeSet<String>, &'a BTreeMap<String, String>)>,
    ) -> bool {
        ResourceType::ALL.into_iter().all(|ty| match state(ty) {
            None => !ty.is_wildcard() && self.wanted_empty(ty),
            Some((got, names, have)) => {
                (names.is_empty() && !ty.is_wildcard()) || (got && names.iter().all(|n| have.contains_key(n)))
            }
        })
    }

    fn wanted_empty(&self, ty: ResourceType) -> bool {
        match ty {
            ResourceType::Endpoint => self.clusters.values().all(|r| r.eds.is_none()),
            ResourceType::Route => self.listeners.values().all(|r| r.rds.is_empty()),
            ResourceType::Secret => self.clusters.values().chain(self.listeners.values()).all(|r| r.sds.is_empty()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn lean_messages_read_what_the_full_ones_carry() {
        let endpoint = |ip: &str| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                        ..Default::default()
                    })),
                }),
                hostname: "pod".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let cla = ClusterLoadAssignment {
            cluster_name: "ns/web|80".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint("10.0.0.1"), endpoint("10.255.0.7")],
                ..Default::default()
            }],
            ..Default::default()
        };
        let full = DiscoveryResponse {
            version_info: "v1".into(),
            resources: vec![Any { type_url: "t".into(), value: cla.encode_to_vec() }],
            type_url: ResourceType::Endpoint.type_url().into(),
            nonce: "1-v1".into(),
            ..Default::default()
        };
        let wire = full.encode_to_vec();
        let lean = LeanResponse::decode(wire.as_slice()).unwrap();
        assert_eq!((lean.version_info.as_str(), lean.nonce.as_str()), ("v1", "1-v1"));
        assert_eq!(lean.type_url, full.type_url);
        assert_eq!(lean.encoded_len(), wire.len(), "bytes are counted as received");
        let eds = lean_eds::Assignment::decode(lean.resources[0].value.as_ref()).unwrap();
        assert_eq!(eds.cluster_name, "ns/web|80");
        let ips: Vec<&str> = eds
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .filter_map(|e| Some(e.endpoint.as_ref()?.address.as_ref()?.socket_address.as_ref()?.address.as_str()))
            .collect();
        assert_eq!(ips, ["10.0.0.1", "10.255.0.7"]);
    }
}
