//! Builds one proxy's Envoy configuration from its [`ProxyView`] (permissive traffic policy).
//!
//! Names and shapes follow OSM's generated configuration: listeners `outbound-listener` (:15001) and
//! `inbound-listener` (:15003), clusters `<ns>/<svc>|<targetPort>` and `…|local`, routes
//! `rds-outbound.<port>` / `rds-inbound.<targetPort>`.
//!
//! Where OSM's names would make a resource differ between proxies that see the same thing, names are fixed
//! instead, so one encoding serves every proxy: the proxy's own certificate is the secret `service-cert`
//! (OSM: `service-cert:<ns>/<sa>`), upstream clusters validate against one trust bundle
//! `root-cert-for-mtls-outbound` (OSM: one copy per upstream Service) and carry their Service's SAN list in
//! the cluster itself, and outbound HTTP traffic of one port goes through one filter chain matching every
//! ClusterIP on that port (OSM: one chain per Service; the routing is by Host in `rds-outbound.<port>`
//! either way). A cluster is then a function of its Service alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, CidrRange, ConfigSource, DataSource, Http1ProtocolOptions,
    Http2ProtocolOptions, SocketAddress, SubstitutionFormatString, TrafficDirection, TransportSocket, address,
    config_source, data_source, socket_address, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, tracing as trace, zipkin_config};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{StdoutAccessLog, stdout_access_log};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher, tls_parameters,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use messages::{
    AppProtocol, MeshSettings, ProxyView, ResolvedPort, ServiceIdentity, ServiceKey, ServiceView, TracingSettings,
    ports,
};

use crate::snapshot::{ProxySnapshot, Resource, ResourceType, SnapshotError};

pub const OUTBOUND_LISTENER: &str = "outbound-listener";
pub const INBOUND_LISTENER: &str = "inbound-listener";
pub const ROOT_CERT_INBOUND: &str = "root-cert-for-mtls-inbound";
/// The trust bundle upstream clusters validate servers against (SANs are matched per cluster).
pub const ROOT_CERT_OUTBOUND: &str = "root-cert-for-mtls-outbound";
/// The proxy's own service certificate and key, under one name for every proxy.
pub const SERVICE_CERT: &str = "service-cert";
/// Egress passthrough: the outbound listener's default chain and its original-destination cluster.
pub const EGRESS_CHAIN: &str = "outbound-egress-filter-chain";
pub const PASSTHROUGH_CLUSTER: &str = "passthrough-outbound";
/// The sidecar's Prometheus endpoint, for pods annotated `prometheus.io/scrape: "true"`.
pub const PROMETHEUS_LISTENER: &str = "inbound-prometheus-listener";
pub const METRICS_CLUSTER: &str = "envoy-metrics-cluster";
/// The cluster Envoy's Zipkin tracer reports spans to (OSM's name).
pub const TRACING_CLUSTER: &str = "envoy-tracing-cluster";
const PROMETHEUS_PATH: &str = "/stats/prometheus";
/// ALPN the mesh's upstream TLS offers; the inbound filter chains match on it.
pub const MESH_ALPN: &str = "osm";

/// The certificate material a proxy's snapshot carries.
#[derive(Debug, Clone, Copy)]
pub struct CertInput<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    /// Roots that validate peers (more than one while a root rotates).
    pub trust_bundle_pem: &'a str,
}

fn socket(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

fn any_addr(port: u16) -> Address {
    socket(IpAddr::from([0, 0, 0, 0]), port)
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_owned(), sds_config: Some(ads()) }
}

fn inline(bytes: &str) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::InlineBytes(bytes.as_bytes().to_vec())), ..Default::default() }
}

fn seconds(s: i64) -> PbDuration {
    PbDuration { seconds: s, nanos: 0 }
}

fn tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

fn cidr(ip: IpAddr) -> CidrRange {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    CidrRange { address_prefix: ip.to_string(), prefix_len: Some(UInt32Value { value: len }) }
}

fn tls_socket(any: Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any)),
    }
}

fn network_filter(name: &str, any: Any) -> Filter {
    Filter { name: name.to_owned(), config_type: Some(filter::ConfigType::TypedConfig(any)) }
}

fn listener_filter(name: &str, any: Any) -> ListenerFilter {
    ListenerFilter {
        name: name.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// Access log written to Envoy's stdout for every request/connection, as OSM does by default (JSON).
fn access_log() -> AccessLog {
    // OSM's default fields, in its order.
    const FORMAT: &str = concat!(
        r#"{"start_time":"%START_TIME%","method":"%REQ(:METHOD)%","path":"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%","#,
        r#""protocol":"%PROTOCOL%","response_code":"%RESPONSE_CODE%","#,
        r#""response_code_details":"%RESPONSE_CODE_DETAILS%","time_to_first_byte":"%RESPONSE_DURATION%","#,
        r#""upstream_cluster":"%UPSTREAM_CLUSTER%","response_flags":"%RESPONSE_FLAGS%","#,
        r#""bytes_received":"%BYTES_RECEIVED%","bytes_sent":"%BYTES_SENT%","duration":"%DURATION%","#,
        r#""upstream_service_time":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%","#,
        r#""x_forwarded_for":"%REQ(X-FORWARDED-FOR)%","user_agent":"%REQ(USER-AGENT)%","#,
        r#""request_id":"%REQ(X-REQUEST-ID)%","requested_server_name":"%REQUESTED_SERVER_NAME%","#,
        r#""authority":"%REQ(:AUTHORITY)%","upstream_host":"%UPSTREAM_HOST%"}"#,
        "\n"
    );
    let fmt = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(FORMAT.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.stream".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(StdoutAccessLog {
            access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(fmt)),
        }))),
        ..Default::default()
    }
}

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    }
}

/// Zipkin (HTTP JSON, v2) spans of every request, reported to [`TRACING_CLUSTER`].
fn tracing(t: &TracingSettings) -> http_connection_manager::Tracing {
    let zipkin = ZipkinConfig {
        collector_cluster: TRACING_CLUSTER.to_owned(),
        collector_endpoint: t.endpoint.clone(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        collector_hostname: t.address.clone(),
        trace_id_128bit: true,
        ..Default::default()
    };
    http_connection_manager::Tracing {
        provider: Some(trace::Http {
            name: "envoy.tracers.zipkin".to_owned(),
            config_type: Some(trace::http::ConfigType::TypedConfig(pack_any(zipkin))),
        }),
        ..Default::default()
    }
}

/// The collector of [`tracing`]: its address as given (an IP, or a name resolved by DNS).
fn tracing_cluster(t: &TracingSettings) -> Cluster {
    let discovery = if t.address.parse::<IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Cluster {
        name: TRACING_CLUSTER.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: TRACING_CLUSTER.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: t.address.clone(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(t.port.into())),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An HTTP connection manager on RDS `route_config`; `rbac` adds the (rule-less) RBAC filter that inbound
/// routes configure per route; with `tracing` every request is traced.
fn http_connection_manager(
    route_config: &str,
    stat_prefix: &str,
    rbac: bool,
    tracing_to: Option<&TracingSettings>,
) -> Filter {
    let mut http_filters = Vec::new();
    if rbac {
        http_filters.push(crate::rbac::http_filter());
    }
    http_filters.push(router_filter());
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters,
        access_log: vec![access_log()],
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        generate_request_id: Some(BoolValue { value: true }),
        tracing: tracing_to.map(tracing),
        ..Default::default()
    };
    network_filter("envoy.filters.network.http_connection_manager", pack_any(hcm))
}

fn tcp_proxy_filter(cluster: &str, stat_prefix: &str) -> Filter {
    tcp_proxy_to(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned()), stat_prefix)
}

/// tcp_proxy to a port's cluster, or to its TrafficSplit backends by weight.
fn tcp_proxy_for(port: &ResolvedPort, cluster: &str, stat_prefix: &str) -> Filter {
    if port.split.is_empty() {
        return tcp_proxy_filter(cluster, stat_prefix);
    }
    let clusters = port
        .split
        .iter()
        .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
            name: name.clone(),
            weight: *weight,
            ..Default::default()
        })
        .collect();
    tcp_proxy_to(tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster { clusters }), stat_prefix)
}

fn tcp_proxy_to(cluster_specifier: tcp_proxy::ClusterSpecifier, stat_prefix: &str) -> Filter {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        access_log: vec![access_log()],
        ..Default::default()
    };
    network_filter("envoy.filters.network.tcp_proxy", pack_any(tcp))
}

/// Hostnames a Service answers to from a client in `client_ns`, each also with `:<port>`. The ClusterIP is
/// included because in-mesh clients often dial it directly.
fn hostnames(svc: &ServiceView, port: u16, client_ns: &str) -> Vec<String> {
    hostnames_of(&svc.key, svc.cluster_ip, port, client_ns)
}

fn hostnames_of(key: &ServiceKey, cluster_ip: Option<IpAddr>, port: u16, client_ns: &str) -> Vec<String> {
    let ServiceKey { namespace: ns, name } = key;
    let mut base = Vec::new();
    if client_ns == ns {
        base.push(name.clone());
    }
    base.push(format!("{name}.{ns}"));
    base.push(format!("{name}.{ns}.svc"));
    base.push(format!("{name}.{ns}.svc.cluster"));
    base.push(format!("{name}.{ns}.svc.cluster.local"));
    let mut out = Vec::with_capacity(base.len() * 2 + 2);
    for h in base {
        out.push(format!("{h}:{port}"));
        out.push(h);
    }
    match cluster_ip {
        Some(IpAddr::V4(ip)) => out.extend([format!("{ip}:{port}"), ip.to_string()]),
        // A Host header carries an IPv6 address in brackets.
        Some(IpAddr::V6(ip)) => out.extend([format!("[{ip}]:{port}"), format!("[{ip}]")]),
        None => {}
    }
    out
}

fn route_to(cluster: &str) -> Route {
    route_with(route_action::ClusterSpecifier::Cluster(cluster.to_owned()))
}

/// The outbound route of a port: to its cluster, or to its TrafficSplit backends by weight.
fn route_for(port: &ResolvedPort, cluster: &str) -> Route {
    if port.split.is_empty() {
        return route_to(cluster);
    }
    let clusters = port
        .split
        .iter()
        .map(|(name, weight)| weighted_cluster::ClusterWeight {
            name: name.clone(),
            weight: Some(UInt32Value { value: *weight }),
            ..Default::default()
        })
        .collect();
    route_with(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }))
}

fn route_with(cluster_specifier: route_action::ClusterSpecifier) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            // No route timeout: streaming and long requests are the application's business.
            timeout: Some(seconds(0)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

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
    sets: crate::snapshot::SetCache,
    /// Pairs of this batch's sets found consistent (see [`crate::consistency::Checked`]).
    checked: crate::consistency::Checked,
    pub hits: u64,
    pub misses: u64,
}

/// The key of a cached resource: everything its bytes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    /// The proxy's certificate: its identity and PEMs.
    Cert(ServiceIdentity, String, String),
    /// A validation context: its name and the trust bundle.
    Root(&'static str, String),
    /// An upstream cluster: its name, protocol, the identities it accepts, the trust domain.
    Cluster(String, AppProtocol, BTreeSet<ServiceIdentity>, String),
    /// An assignment: its cluster and endpoints.
    Endpoints(String, Vec<SocketAddr>),
    OutboundListener(Interned<ChainsInput>, MeshSettings),
    /// Outbound routes: the proxy's namespace (short host names resolve in it) and the chains' input.
    OutboundRoutes(String, Interned<ChainsInput>),
    Tracing(TracingSettings),
    /// A resource that depends on nothing.
    Fixed(&'static str),
}

/// Everything the outbound listener and routes depend on: Services, addresses and ports (with their
/// splits), but endpoints only where they are the addresses matched (headless Services), so an endpoint
/// change re-encodes neither.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ChainsInput(Vec<(ServiceKey, Option<IpAddr>, Vec<ChainsPort>)>);

type ChainsPort = (Option<String>, u16, u16, AppProtocol, messages::catalog::SplitTargets, Vec<SocketAddr>);

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
struct Interned<T>(Arc<T>);

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
type UpstreamParts = (Arc<Vec<ServiceView>>, Arc<UpstreamPart>);

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
    fn upstream_chains(&mut self, upstream: &Arc<Vec<ServiceView>>) -> Interned<ChainsInput> {
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
    fn upstream_part(&mut self, upstream: &Arc<Vec<ServiceView>>, td: &str) -> Arc<UpstreamPart> {
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
                let key =
                    CacheKey::Cluster(cluster_name.clone(), cluster_protocol, svc.identities.clone(), td.to_owned());
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

    fn get_or_make(&mut self, key: CacheKey, make: impl FnOnce() -> Vec<Resource>) -> Vec<Arc<Resource>> {
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

fn resource<M: prost::Name + prost::Message>(name: &str, msg: M) -> Resource {
    Resource::new(name, pack_any(msg))
}

/// Collects a proxy's resources per type, in order; [`ProxySnapshot::assemble`] makes the snapshot.
struct Builder {
    pending: [Vec<Arc<Resource>>; 5],
}

impl Builder {
    fn add<M: prost::Name + prost::Message>(
        &mut self,
        ty: ResourceType,
        name: &str,
        msg: M,
    ) -> Result<(), SnapshotError> {
        self.pending[ty.index()].push(Arc::new(resource(name, msg)));
        Ok(())
    }

    fn add_all(&mut self, ty: ResourceType, resources: Vec<Arc<Resource>>) -> Result<(), SnapshotError> {
        self.pending[ty.index()].extend(resources);
        Ok(())
    }
}

/// Builds a consistent snapshot for one proxy.
pub fn build(view: &ProxyView, certs: CertInput<'_>) -> Result<ProxySnapshot, SnapshotError> {
    build_with(view, certs, &mut BuildCache::new())
}

/// Which destination addresses an outbound chain catches: the ClusterIP, or for a headless Service its
/// endpoints.
fn outbound_prefixes(svc: &ServiceView, port: &ResolvedPort) -> Vec<IpAddr> {
    match svc.cluster_ip {
        Some(ip) => vec![ip],
        None => port.endpoints.iter().map(|a| a.ip()).collect::<BTreeSet<_>>().into_iter().collect(),
    }
}

fn outbound_listener(upstream: &[ServiceView], settings: &MeshSettings) -> Option<Listener> {
    let mut chains = Vec::new();
    // Each (port, address) may be matched by one chain only, or Envoy rejects the listener; two headless
    // Services over the same pods would otherwise both claim those pods' addresses.
    let mut claimed: HashSet<(u16, IpAddr)> = HashSet::new();
    // HTTP ports: one chain per port for every Service on it; routing by Host happens in the port's
    // route configuration, so the chain (and its connection manager) is written once, not per Service.
    let mut http: BTreeMap<u16, Vec<CidrRange>> = BTreeMap::new();
    for svc in upstream {
        for port in &svc.ports {
            let prefixes: Vec<CidrRange> = outbound_prefixes(svc, port)
                .into_iter()
                .filter(|ip| claimed.insert((port.port, *ip)))
                .map(cidr)
                .collect();
            if prefixes.is_empty() {
                continue;
            }
            if port.protocol.is_http() {
                http.entry(port.port).or_default().extend(prefixes);
                continue;
            }
            let cluster_name = port.cluster_name(&svc.key);
            chains.push(FilterChain {
                name: format!("outbound_{}_{}_{}", svc.key, port.port, port.protocol),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: port.port.into() }),
                    prefix_ranges: prefixes,
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_for(port, &cluster_name, &format!("outbound-tcp.{cluster_name}"))],
                ..Default::default()
            });
        }
    }
    for (port, prefixes) in http {
        let rds = format!("rds-outbound.{port}");
        chains.push(FilterChain {
            name: format!("outbound_http_{port}"),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: port.into() }),
                prefix_ranges: prefixes,
                ..Default::default()
            }),
            filters: vec![http_connection_manager(&rds, &rds, false, settings.tracing.as_ref())],
            ..Default::default()
        });
    }
    // With egress enabled, whatever no mesh chain matches goes on to where the application sent it.
    let default_chain = settings.enable_egress.then(|| FilterChain {
        name: EGRESS_CHAIN.to_owned(),
        filters: vec![tcp_proxy_filter(PASSTHROUGH_CLUSTER, &format!("egress-tcp-proxy.{PASSTHROUGH_CLUSTER}"))],
        ..Default::default()
    });
    if chains.is_empty() && default_chain.is_none() {
        return None;
    }
    Some(Listener {
        name: OUTBOUND_LISTENER.to_owned(),
        address: Some(any_addr(ports::OUTBOUND)),
        listener_filters: vec![listener_filter(
            "envoy.filters.listener.original_dst",
            pack_any(OriginalDst::default()),
        )],
        filter_chains: chains,
        default_filter_chain: default_chain,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    })
}

/// `rds-outbound.<port>` route configurations; short host names depend on the client's namespace.
fn outbound_routes(upstream: &[ServiceView], client_ns: &str) -> Vec<Resource> {
    let mut routes: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
    let mut used_domains: HashMap<u16, BTreeSet<String>> = HashMap::new();
    for svc in upstream {
        for port in svc.ports.iter().filter(|p| p.protocol.is_http()) {
            if outbound_prefixes(svc, port).is_empty() {
                continue;
            }
            let used = used_domains.entry(port.port).or_default();
            let domains: Vec<String> =
                hostnames(svc, port.port, client_ns).into_iter().filter(|d| used.insert(d.clone())).collect();
            routes.entry(port.port).or_default().push(VirtualHost {
                name: format!("outbound_virtual-host|{}", svc.key.fqdn()),
                domains,
                routes: vec![route_for(port, &port.cluster_name(&svc.key))],
                ..Default::default()
            });
        }
    }
    routes
        .into_iter()
        .map(|(port, vhosts)| {
            let name = format!("rds-outbound.{port}");
            let rc = RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vhosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            };
            resource(&name, rc)
        })
        .collect()
}

/// The SANs an upstream connection accepts: the identities of the Service's pods.
fn san_matchers(svc: &ServiceView, trust_domain: &str) -> Vec<SubjectAltNameMatcher> {
    svc.identities
        .iter()
        .map(|id| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Dns as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(id.principal(trust_domain))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn validation_secret(name: &str, bundle: &str) -> Resource {
    resource(
        name,
        Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(bundle)),
                ..Default::default()
            })),
        },
    )
}

/// Builds a consistent snapshot for one proxy, sharing encodings through `cache` with the other proxies of
/// the same batch.
pub fn build_with(
    view: &ProxyView,
    certs: CertInput<'_>,
    cache: &mut BuildCache,
) -> Result<ProxySnapshot, SnapshotError> {
    let mut b = Builder { pending: Default::default() };
    let identity = view.identity();
    let own_cert = SERVICE_CERT;
    let td = &view.trust_domain;

    // --- SDS -------------------------------------------------------------------------------------
    let key = CacheKey::Cert(identity.clone(), certs.cert_pem.to_owned(), certs.key_pem.to_owned());
    let cert = cache.get_or_make(key, || {
        vec![resource(
            own_cert,
            Secret {
                name: own_cert.to_owned(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(certs.cert_pem)),
                    private_key: Some(inline(certs.key_pem)),
                    ..Default::default()
                })),
            },
        )]
    });
    b.add_all(ResourceType::Secret, cert)?;
    for root in [ROOT_CERT_INBOUND, ROOT_CERT_OUTBOUND] {
        let secret = cache.get_or_make(CacheKey::Root(root, certs.trust_bundle_pem.to_owned()), || {
            vec![validation_secret(root, certs.trust_bundle_pem)]
        });
        b.add_all(ResourceType::Secret, secret)?;
    }

    // --- Outbound: clusters and endpoints per upstream Service; one listener; routes -------------
    let mut clusters_done = BTreeSet::new();
    let chains = cache.upstream_chains(&view.upstream);
    // Proxies that share an upstream list share all of this: assembled once per list and batch.
    let part = cache.upstream_part(&view.upstream, td);
    b.add_all(ResourceType::Cluster, part.clusters.clone())?;
    b.add_all(ResourceType::Endpoint, part.endpoints.clone())?;
    let listener = cache.get_or_make(CacheKey::OutboundListener(chains.clone(), view.settings.clone()), || {
        outbound_listener(&view.upstream, &view.settings).map(|l| resource(OUTBOUND_LISTENER, l)).into_iter().collect()
    });
    b.add_all(ResourceType::Listener, listener)?;
    if view.settings.enable_egress {
        let passthrough = cache.get_or_make(CacheKey::Fixed("cds-passthrough"), || {
            vec![resource(PASSTHROUGH_CLUSTER, passthrough_cluster())]
        });
        b.add_all(ResourceType::Cluster, passthrough)?;
    }
    if let Some(t) = &view.settings.tracing {
        let cluster =
            cache.get_or_make(CacheKey::Tracing(t.clone()), || vec![resource(TRACING_CLUSTER, tracing_cluster(t))]);
        b.add_all(ResourceType::Cluster, cluster)?;
    }
    let routes = cache.get_or_make(CacheKey::OutboundRoutes(view.pod.namespace.clone(), chains), || {
        outbound_routes(&view.upstream, &view.pod.namespace)
    });
    b.add_all(ResourceType::Route, routes)?;

    // --- Inbound: mTLS-terminating filter chains to local clusters (per pod, not shared) ---------
    let mut inbound_chains = Vec::new();
    let mut inbound_routes: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
    let mut inbound_domains: HashMap<u16, BTreeSet<String>> = HashMap::new();
    for svc in &view.local {
        // Several Service ports may lead to one target port: they share one chain (the match would be
        // identical) whose virtual host answers to every one of those ports.
        let mut by_target: BTreeMap<u16, Vec<&ResolvedPort>> = BTreeMap::new();
        for port in &svc.ports {
            by_target.entry(port.target_port).or_default().push(port);
        }
        for group in by_target.values() {
            let port = group[0];
            let local_cluster = format!("{}|{}|local", svc.key, port.target_port);
            if clusters_done.insert(local_cluster.clone()) {
                // The application behind a gRPC port needs HTTP/2 from its sidecar too.
                let protocol = group.iter().map(|p| p.protocol).find(|p| p.is_http()).unwrap_or(port.protocol);
                b.add(
                    ResourceType::Cluster,
                    &local_cluster,
                    local_cluster_resource(&local_cluster, port.target_port, protocol),
                )?;
            }
            let chain_name = format!("inbound_{}_{}_{}", svc.key, port.target_port, port.protocol);
            let filters = if port.protocol.is_http() {
                let rds = format!("rds-inbound.{}", port.target_port);
                let used = inbound_domains.entry(port.target_port).or_default();
                // A TrafficSplit backend also answers to its apexes' names (clients address the apex).
                let domains: Vec<String> = group
                    .iter()
                    .flat_map(|p| {
                        let own = hostnames(svc, p.port, &svc.key.namespace);
                        let apexes =
                            svc.apexes.iter().flat_map(|(apex, ip)| hostnames_of(apex, *ip, p.port, &apex.namespace));
                        own.into_iter().chain(apexes).collect::<Vec<_>>()
                    })
                    .filter(|d| used.insert(d.clone()))
                    .collect();
                let routes = match &view.inbound_policy {
                    None => vec![route_to(&local_cluster)],
                    Some(policy) => {
                        crate::rbac::inbound_routes(&policy.http_rules_for_port(port.target_port), &local_cluster, td)
                    }
                };
                inbound_routes.entry(port.target_port).or_default().push(VirtualHost {
                    name: format!("inbound_virtual-host|{}", svc.key.fqdn()),
                    domains,
                    routes,
                    ..Default::default()
                });
                vec![http_connection_manager(&rds, &rds, true, view.settings.tracing.as_ref())]
            } else {
                let mut filters = Vec::new();
                if let Some(policy) = &view.inbound_policy {
                    filters.push(network_filter(
                        crate::rbac::NETWORK_RBAC_FILTER,
                        crate::rbac::network_filter(policy.tcp.values(), port.target_port, td),
                    ));
                }
                filters.push(tcp_proxy_filter(&local_cluster, &format!("inbound-tcp.{local_cluster}")));
                filters
            };
            let tls = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_params: Some(tls_params()),
                    tls_certificate_sds_secret_configs: vec![sds(own_cert)],
                    validation_context_type: Some(
                        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                            ROOT_CERT_INBOUND,
                        )),
                    ),
                    ..Default::default()
                }),
                require_client_certificate: Some(BoolValue { value: true }),
                ..Default::default()
            };
            inbound_chains.push(FilterChain {
                name: chain_name,
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: port.target_port.into() }),
                    server_names: vec![svc.key.fqdn()],
                    transport_protocol: "tls".to_owned(),
                    application_protocols: vec![MESH_ALPN.to_owned()],
                    ..Default::default()
                }),
                filters,
                transport_socket: Some(tls_socket(pack_any(tls))),
                ..Default::default()
            });
        }
    }
    for (port, vhosts) in inbound_routes {
        let name = format!("rds-inbound.{port}");
        b.add(
            ResourceType::Route,
            &name,
            RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vhosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            },
        )?;
    }
    if !inbound_chains.is_empty() {
        b.add(
            ResourceType::Listener,
            INBOUND_LISTENER,
            Listener {
                name: INBOUND_LISTENER.to_owned(),
                address: Some(any_addr(ports::INBOUND)),
                listener_filters: vec![
                    listener_filter("envoy.filters.listener.tls_inspector", pack_any(TlsInspector::default())),
                    listener_filter("envoy.filters.listener.original_dst", pack_any(OriginalDst::default())),
                ],
                filter_chains: inbound_chains,
                traffic_direction: TrafficDirection::Inbound as i32,
                ..Default::default()
            },
        )?;
    }

    if view.pod.prometheus_scrape {
        let listener = cache.get_or_make(CacheKey::Fixed("lds-prometheus"), || {
            vec![resource(PROMETHEUS_LISTENER, prometheus_listener())]
        });
        b.add_all(ResourceType::Listener, listener)?;
        let cluster = cache.get_or_make(CacheKey::Fixed("cds-metrics"), || {
            let addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), ports::ADMIN);
            let cluster = Cluster {
                name: METRICS_CLUSTER.to_owned(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(seconds(1)),
                load_assignment: Some(load_assignment(METRICS_CLUSTER, &[addr])),
                ..Default::default()
            };
            vec![resource(METRICS_CLUSTER, cluster)]
        });
        b.add_all(ResourceType::Cluster, cluster)?;
    }

    let snap = ProxySnapshot::assemble(b.pending, &mut cache.sets)?;
    // Derived from the resources, not from what was built: whatever the builder does, a snapshot that
    // names something it does not carry is never published.
    crate::consistency::check_with(&snap, &mut cache.checked)?;
    Ok(snap)
}

/// :15010 → Envoy's own admin `/stats/prometheus` (and nothing else of the admin interface).
fn prometheus_listener() -> Listener {
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(PROMETHEUS_PATH.to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(METRICS_CLUSTER.to_owned())),
            prefix_rewrite: PROMETHEUS_PATH.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: "prometheus-http-conn-manager".to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
            name: "prometheus-route-config".to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: "prometheus-inbound-virtual-host".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![route],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    Listener {
        name: PROMETHEUS_LISTENER.to_owned(),
        address: Some(any_addr(ports::PROMETHEUS)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter("envoy.filters.network.http_connection_manager", pack_any(hcm))],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// An upstream cluster depends on its Service only (never on the proxy that uses it), so every proxy that
/// sees the Service gets the same bytes.
fn upstream_cluster(svc: &ServiceView, protocol: AppProtocol, name: &str, trust_domain: &str) -> Cluster {
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params()),
            tls_certificate_sds_secret_configs: vec![sds(SERVICE_CERT)],
            validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: san_matchers(svc, trust_domain),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOT_CERT_OUTBOUND)),
                    ..Default::default()
                },
            )),
            alpn_protocols: vec![MESH_ALPN.to_owned()],
            ..Default::default()
        }),
        sni: svc.key.fqdn(),
        ..Default::default()
    };
    Cluster {
        name: name.to_owned(),
        alt_stat_name: name.replace(['/', '|'], "_"),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        connect_timeout: Some(seconds(1)),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        transport_socket: Some(tls_socket(pack_any(tls))),
        typed_extension_protocol_options: http_options(protocol),
        ..Default::default()
    }
}

/// Sends a connection to the address it was originally sent to (egress passthrough).
fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst as i32)),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(seconds(1)),
        ..Default::default()
    }
}

/// For HTTP-family clusters: speak to the upstream in whatever protocol the client used (HTTP/1.1, or
/// HTTP/2 for gRPC); without it Envoy would downgrade every request to HTTP/1.1.
fn http_options(protocol: AppProtocol) -> HashMap<String, Any> {
    let mut options = HashMap::new();
    if protocol.is_http() {
        let http = HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                    http_protocol_options::UseDownstreamHttpConfig {
                        http_protocol_options: Some(Http1ProtocolOptions::default()),
                        http2_protocol_options: Some(Http2ProtocolOptions::default()),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        };
        options.insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(), pack_any(http));
    }
    options
}

fn local_cluster_resource(name: &str, port: u16, protocol: AppProtocol) -> Cluster {
    Cluster {
        typed_extension_protocol_options: http_options(protocol),
        name: name.to_owned(),
        alt_stat_name: name.replace(['/', '|'], "_"),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(load_assignment(name, &[SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)])),
        ..Default::default()
    }
}

fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(a.ip(), a.port())),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::{MeshCatalog, MeshObject, ProxyUuid, SourceEvent};
    use prost::Message;

    fn view_for(pod: &str) -> ProxyView {
        view_with(pod, vec![])
    }

    fn view_with(pod: &str, extra: Vec<MeshObject>) -> ProxyView {
        let mut c = MeshCatalog::new("cluster.local");
        let mut objs: Vec<MeshObject> = objects();
        objs.extend(extra);
        c.apply(SourceEvent::reset_all(objs));
        assert!(c.policy_errors().is_empty(), "{:?}", c.policy_errors());
        c.proxy_view(&ProxyUuid::derived("demo", pod)).unwrap()
    }

    /// SMI mode; the client may GET /api/.* on web and reach echo's port 7000.
    fn smi_objects() -> Vec<MeshObject> {
        use messages::*;
        let sa = |name: &str| Subject { kind: "ServiceAccount".into(), name: name.into(), namespace: "demo".into() };
        vec![
            MeshObject::MeshConfig(MeshConfig {
                namespace: "osm-system".into(),
                name: "osm-mesh-config".into(),
                enable_egress: Some(false),
                permissive: Some(false),
                not_acted_on: vec![],
                service_cert_validity: None,
                cert_key_bits: None,
                tracing: None,
                enable_debug_server: None,
                osm_log_level: None,
                feature_flags: vec![],
            }),
            MeshObject::HttpRouteGroup(HttpRouteGroup {
                namespace: "demo".into(),
                name: "api".into(),
                matches: vec![HttpMatch {
                    name: "read".into(),
                    path_regex: Some("/api/.*".into()),
                    methods: vec!["GET".into()],
                    headers: [("host".to_owned(), "web.*".to_owned())].into(),
                }],
            }),
            MeshObject::TcpRoute(TcpRoute { namespace: "demo".into(), name: "echo".into(), ports: vec![7000] }),
            MeshObject::TrafficTarget(TrafficTarget {
                namespace: "demo".into(),
                name: "client-to-web".into(),
                destination: sa("web"),
                sources: vec![sa("client")],
                rules: vec![
                    TrafficTargetRule {
                        kind: "HTTPRouteGroup".into(),
                        name: "api".into(),
                        matches: vec!["read".into()],
                    },
                    TrafficTargetRule { kind: "TCPRoute".into(), name: "echo".into(), matches: vec![] },
                ],
            }),
        ]
    }

    fn decode<M: prost::Message + Default>(snap: &ProxySnapshot, ty: ResourceType, name: &str) -> M {
        M::decode(snap.get(ty).resources()[name].body.value.as_slice()).unwrap()
    }

    /// Two Services (HTTP :80→8080, TCP :7000) backed by pod web-1, and a client pod.
    fn objects() -> Vec<MeshObject> {
        use messages::*;
        use std::collections::BTreeMap;
        let web = |name: &str, ip: &str, port: ServicePort| {
            MeshObject::Service(Service {
                key: ServiceKey::new("demo", name),
                cluster_ip: Some(ip.parse().unwrap()),
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: vec![port],
            })
        };
        let pod = |name: &str, sa: &str, ip: &str, app: &str| {
            MeshObject::Pod(Pod {
                namespace: "demo".into(),
                name: name.into(),
                labels: BTreeMap::from([("app".into(), app.into())]),
                service_account: sa.into(),
                ip: Some(ip.parse().unwrap()),
                proxy_uuid: ProxyUuid::derived("demo", name),
                container_ports: vec![],
                prometheus_scrape: false,
            })
        };
        vec![
            web(
                "web",
                "10.96.0.10",
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: TargetPort::Number(8080),
                    protocol: AppProtocol::Http,
                },
            ),
            web(
                "echo",
                "10.96.0.11",
                ServicePort {
                    name: Some("tcp-echo".into()),
                    port: 7000,
                    target_port: TargetPort::Number(7000),
                    protocol: AppProtocol::Tcp,
                },
            ),
            pod("web-1", "web", "10.244.1.2", "web"),
            pod("client", "client", "10.244.1.1", "client"),
        ]
    }

    const CERTS: CertInput<'static> = CertInput { cert_pem: "CERT", key_pem: "KEY", trust_bundle_pem: "ROOT" };

    /// Cached resources are found by their inputs themselves: a content-equal upstream list of a later
    /// batch (another `Arc`) finds the same listener and routes; a list that differs does not.
    #[test]
    fn cached_resources_are_keyed_by_their_inputs_themselves() {
        let mut cache = BuildCache::new();
        let view = view_for("client");
        let shared = |s: &ProxySnapshot, ty: ResourceType, name: &str| s.get(ty).resources()[name].clone();
        let a = build_with(&view, CERTS, &mut cache).unwrap();
        cache.next_batch();
        let mut same = view.clone();
        same.upstream = Arc::new((*view.upstream).clone());
        let b = build_with(&same, CERTS, &mut cache).unwrap();
        let out = |s: &ProxySnapshot| shared(s, ResourceType::Listener, OUTBOUND_LISTENER);
        assert!(Arc::ptr_eq(&out(&a), &out(&b)));
        cache.next_batch();
        let mut list = (*view.upstream).clone();
        let svc = list.iter_mut().find(|s| s.cluster_ip.is_some()).unwrap();
        svc.cluster_ip = Some(IpAddr::from([10, 96, 99, 99]));
        let mut changed = view.clone();
        changed.upstream = Arc::new(list);
        let c = build_with(&changed, CERTS, &mut cache).unwrap();
        assert!(!Arc::ptr_eq(&out(&a), &out(&c)));
        assert_ne!(out(&a).body, out(&c).body);
    }

    /// The check is derived from the resources: remove anything a built snapshot names and it fails,
    /// naming what is missing and what names it.
    #[test]
    fn the_consistency_check_finds_whatever_a_broken_build_lacks() {
        let mut view = view_with("client", smi_objects());
        view.settings.tracing =
            Some(TracingSettings { address: "jaeger".into(), port: 9411, endpoint: "/api/v2/spans".into() });
        let snap = build(&view, CERTS).unwrap();
        crate::consistency::check(&snap).unwrap();
        let mut named = BTreeSet::new();
        for ty in ResourceType::ALL {
            for r in snap.get(ty).resources().values() {
                named.extend(r.references(ty).clone().unwrap());
            }
        }
        let kinds: BTreeSet<ResourceType> = named.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Route, ResourceType::Secret].into(),
            "the view exercises every kind of reference: {named:?}"
        );
        assert!(named.contains(&(ResourceType::Cluster, TRACING_CLUSTER.to_owned())), "{named:?}");
        // The memo of pairs found complete never hides a broken set.
        let mut checked = crate::consistency::Checked::default();
        crate::consistency::check_with(&snap, &mut checked).unwrap();
        for (ty, name) in &named {
            let broken = snap.without(*ty, name);
            match crate::consistency::check_with(&broken, &mut checked) {
                Err(SnapshotError::Dangling { kind, name: missing, by }) => {
                    assert_eq!((kind, &missing), (*ty, name));
                    assert!(!by.is_empty());
                }
                other => panic!("removing {ty} {name:?} gave {other:?}"),
            }
        }
        // A routed cluster (route → cluster) and a tcp_proxy's (listener → cluster) are among them.
        assert!(named.iter().any(|(k, n)| *k == ResourceType::Cluster && n.starts_with("demo/web|")), "{named:?}");
        assert!(named.iter().any(|(k, n)| *k == ResourceType::Cluster && n.starts_with("demo/echo|")), "{named:?}");
    }

    fn names(s: &ProxySnapshot, ty: ResourceType) -> Vec<String> {
        s.get(ty).resources().keys().cloned().collect()
    }

    #[test]
    fn client_gets_outbound_config_with_osm_names() {
        let snap = build(&view_for("client"), CERTS).unwrap();
        assert_eq!(names(&snap, ResourceType::Cluster), vec!["demo/echo|7000", "demo/web|8080", PASSTHROUGH_CLUSTER]);
        assert_eq!(names(&snap, ResourceType::Endpoint), vec!["demo/echo|7000", "demo/web|8080"]);
        assert_eq!(names(&snap, ResourceType::Listener), vec![OUTBOUND_LISTENER]);
        assert_eq!(names(&snap, ResourceType::Route), vec!["rds-outbound.80"]);
        assert_eq!(names(&snap, ResourceType::Secret), vec![ROOT_CERT_INBOUND, ROOT_CERT_OUTBOUND, SERVICE_CERT]);
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
            .unwrap();
        let chains: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(chains, vec!["outbound_demo/echo_7000_tcp", "outbound_http_80"]);
        let m = l.filter_chains[1].filter_chain_match.as_ref().unwrap();
        assert_eq!(m.prefix_ranges[0].address_prefix, "10.96.0.10");
        let c = Cluster::decode(snap.get(ResourceType::Cluster).resources()["demo/web|8080"].body.value.as_slice())
            .unwrap();
        let Some(transport_socket::ConfigType::TypedConfig(any)) = c.transport_socket.unwrap().config_type else {
            panic!()
        };
        let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
        assert_eq!(tls.sni, "web.demo.svc.cluster.local");
        // The cluster itself says which identities may serve it; the trust bundle is one secret for all.
        let Some(common_tls_context::ValidationContextType::CombinedValidationContext(vc)) =
            tls.common_tls_context.unwrap().validation_context_type
        else {
            panic!()
        };
        assert_eq!(vc.validation_context_sds_secret_config.unwrap().name, ROOT_CERT_OUTBOUND);
        let vc = vc.default_validation_context.unwrap();
        let san = vc.match_typed_subject_alt_names[0].matcher.clone().unwrap().match_pattern.unwrap();
        assert_eq!(san, string_matcher::MatchPattern::Exact("web.demo.cluster.local".into()));
    }

    #[test]
    fn egress_passthrough_follows_the_setting() {
        let mut view = view_for("client");
        let snap = build(&view, CERTS).unwrap();
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
            .unwrap();
        assert_eq!(l.default_filter_chain.unwrap().name, EGRESS_CHAIN);
        view.settings.enable_egress = false;
        let snap = build(&view, CERTS).unwrap();
        assert!(!snap.get(ResourceType::Cluster).resources().contains_key(PASSTHROUGH_CLUSTER));
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
            .unwrap();
        assert!(l.default_filter_chain.is_none());
        Arc::make_mut(&mut view.upstream).clear();
        assert!(build(&view, CERTS).unwrap().get(ResourceType::Listener).resources().is_empty());
    }

    #[test]
    fn tracing_adds_zipkin_to_every_connection_manager_and_its_collector_cluster() {
        let hcm_tracing = |snap: &ProxySnapshot, listener: &str| {
            let l =
                Listener::decode(snap.get(ResourceType::Listener).resources()[listener].body.value.as_slice()).unwrap();
            l.filter_chains
                .iter()
                .flat_map(|c| &c.filters)
                .filter(|f| f.name == "envoy.filters.network.http_connection_manager")
                .map(|f| {
                    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!() };
                    HttpConnectionManager::decode(any.value.as_slice()).unwrap().tracing
                })
                .collect::<Vec<_>>()
        };
        let mut view = view_for("web-1");
        let off = build(&view, CERTS).unwrap();
        assert!(hcm_tracing(&off, INBOUND_LISTENER).iter().all(Option::is_none));
        assert!(!off.get(ResourceType::Cluster).resources().contains_key(TRACING_CLUSTER));
        view.settings.tracing = Some(TracingSettings {
            address: "jaeger.osm-system.svc.cluster.local".into(),
            port: 9411,
            endpoint: "/api/v2/spans".into(),
        });
        let on = build(&view, CERTS).unwrap();
        for listener in [INBOUND_LISTENER, OUTBOUND_LISTENER] {
            let tracing = hcm_tracing(&on, listener);
            assert!(!tracing.is_empty() && tracing.iter().all(Option::is_some), "{listener}");
        }
        let c =
            Cluster::decode(on.get(ResourceType::Cluster).resources()[TRACING_CLUSTER].body.value.as_slice()).unwrap();
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
        );
    }

    fn port(name: &str, port: u16, target: u16, protocol: AppProtocol, eps: &[&str]) -> ResolvedPort {
        ResolvedPort {
            name: Some(name.into()),
            port,
            target_port: target,
            protocol,
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
            split: vec![],
        }
    }

    #[test]
    fn two_service_ports_on_one_target_port_share_one_inbound_chain() {
        let mut view = view_for("web-1");
        view.local.retain(|s| s.key.name == "web");
        view.local[0].ports =
            vec![port("http", 80, 8080, AppProtocol::Http, &[]), port("http-alt", 8080, 8080, AppProtocol::Http, &[])];
        let snap = build(&view, CERTS).unwrap();
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[INBOUND_LISTENER].body.value.as_slice())
            .unwrap();
        assert_eq!(l.filter_chains.len(), 1);
        let rc = RouteConfiguration::decode(
            snap.get(ResourceType::Route).resources()["rds-inbound.8080"].body.value.as_slice(),
        )
        .unwrap();
        assert_eq!(rc.virtual_hosts.len(), 1);
        let domains = &rc.virtual_hosts[0].domains;
        assert!(domains.contains(&"web:80".to_owned()) && domains.contains(&"web:8080".to_owned()), "{domains:?}");
    }

    #[test]
    fn overlapping_headless_services_never_claim_an_address_twice() {
        let mut view = view_for("client");
        let headless = |name: &str| ServiceView {
            key: ServiceKey::new("demo", name),
            cluster_ip: None,
            ports: vec![port("tcp-pg", 5432, 5432, AppProtocol::Tcp, &["10.244.1.2:5432", "10.244.1.3:5432"])],
            identities: Default::default(),
            apexes: vec![],
        };
        view.upstream = Arc::new(vec![headless("pg"), headless("pg-read")]);
        let snap = build(&view, CERTS).unwrap();
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
            .unwrap();
        let mut seen = BTreeSet::new();
        for c in &l.filter_chains {
            let m = c.filter_chain_match.as_ref().unwrap();
            for p in &m.prefix_ranges {
                assert!(
                    seen.insert((m.destination_port.unwrap().value, p.address_prefix.clone())),
                    "{} claimed twice",
                    p.address_prefix
                );
            }
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn ipv6_cluster_ips_are_bracketed_in_domains() {
        let mut view = view_for("client");
        Arc::make_mut(&mut view.upstream).retain(|s| s.key.name == "web");
        Arc::make_mut(&mut view.upstream)[0].cluster_ip = Some("fd00::a".parse().unwrap());
        let snap = build(&view, CERTS).unwrap();
        let rc = RouteConfiguration::decode(
            snap.get(ResourceType::Route).resources()["rds-outbound.80"].body.value.as_slice(),
        )
        .unwrap();
        assert!(rc.virtual_hosts[0].domains.contains(&"[fd00::a]:80".to_owned()));
    }

    #[test]
    fn prometheus_listener_only_when_annotated() {
        let mut view = view_for("web-1");
        assert!(
            !build(&view, CERTS).unwrap().get(ResourceType::Listener).resources().contains_key(PROMETHEUS_LISTENER)
        );
        Arc::make_mut(&mut view.pod).prometheus_scrape = true;
        let snap = build(&view, CERTS).unwrap();
        let l =
            Listener::decode(snap.get(ResourceType::Listener).resources()[PROMETHEUS_LISTENER].body.value.as_slice())
                .unwrap();
        assert_eq!(l.address.unwrap(), any_addr(15010));
        assert!(snap.get(ResourceType::Cluster).resources().contains_key(METRICS_CLUSTER));
    }

    #[test]
    fn server_gets_inbound_mtls_chains_and_local_clusters() {
        let snap = build(&view_for("web-1"), CERTS).unwrap();
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[INBOUND_LISTENER].body.value.as_slice())
            .unwrap();
        let chains: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(chains, vec!["inbound_demo/echo_7000_tcp", "inbound_demo/web_8080_http"]);
        let m = l.filter_chains[1].filter_chain_match.as_ref().unwrap();
        assert_eq!(m.server_names, vec!["web.demo.svc.cluster.local"]);
        assert_eq!(m.application_protocols, vec!["osm"]);
        assert!(snap.get(ResourceType::Cluster).resources().contains_key("demo/web|8080|local"));
        assert!(snap.get(ResourceType::Route).resources().contains_key("rds-inbound.8080"));
    }

    #[test]
    fn a_batch_shares_encodings_and_matches_unshared_builds() {
        let mut cache = BuildCache::new();
        let client = view_for("client");
        let mut twin = client.clone();
        Arc::make_mut(&mut twin.pod).name = "client-2".into();
        let a = build_with(&client, CERTS, &mut cache).unwrap();
        let b = build_with(&twin, CERTS, &mut cache).unwrap();
        assert_eq!(a, build(&client, CERTS).unwrap());
        assert_eq!(a, b);
        for ty in ResourceType::ALL {
            assert!(Arc::ptr_eq(a.shared(ty), b.shared(ty)), "twins share one {ty} set");
            for (name, r) in a.get(ty).resources() {
                assert!(Arc::ptr_eq(r, &b.get(ty).resources()[name]), "{ty} {name} was encoded twice");
            }
        }
        assert!(cache.hits > 0);
        // Another identity shares the outbound parts too: clusters name no identity.
        let server = build_with(&view_for("web-1"), CERTS, &mut cache).unwrap();
        let l = &server.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER];
        assert!(Arc::ptr_eq(l, &a.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER]));
        assert!(Arc::ptr_eq(
            &server.get(ResourceType::Cluster).resources()["demo/web|8080"],
            &a.get(ResourceType::Cluster).resources()["demo/web|8080"]
        ));
        // Only the certificate differs between identities.
        let other = CertInput { cert_pem: "CERT2", key_pem: "KEY2", ..CERTS };
        let server2 = build_with(&view_for("web-1"), other, &mut cache).unwrap();
        assert!(!Arc::ptr_eq(
            &server2.get(ResourceType::Secret).resources()[SERVICE_CERT],
            &server.get(ResourceType::Secret).resources()[SERVICE_CERT]
        ));
    }

    #[test]
    fn the_cache_outlives_a_batch_and_forgets_what_no_build_uses() {
        let mut cache = BuildCache::new();
        let a = build_with(&view_for("client"), CERTS, &mut cache).unwrap();
        cache.next_batch();
        let encoded = cache.misses;
        let b = build_with(&view_for("client"), CERTS, &mut cache).unwrap();
        assert_eq!(cache.misses, encoded, "a rebuild of unchanged content encodes nothing");
        assert!(Arc::ptr_eq(
            &a.get(ResourceType::Cluster).resources()["demo/web|8080"],
            &b.get(ResourceType::Cluster).resources()["demo/web|8080"]
        ));
        let mut changed = view_for("client");
        Arc::make_mut(&mut changed.upstream)[1].ports[0].endpoints.push("10.244.9.9:8080".parse().unwrap());
        let before = cache.misses;
        build_with(&changed, CERTS, &mut cache).unwrap();
        assert_eq!(cache.misses - before, 1, "an endpoint change re-encodes that assignment only");
        for _ in 0..=BuildCache::KEEP_BATCHES {
            cache.next_batch();
        }
        assert!(cache.is_empty());
    }

    #[test]
    fn identical_inputs_give_identical_versions() {
        let a = build(&view_for("client"), CERTS).unwrap();
        let b = build(&view_for("client"), CERTS).unwrap();
        assert_eq!(a, b);
        let c = build(&view_for("client"), CertInput { cert_pem: "CERT2", ..CERTS }).unwrap();
        assert_eq!(a.get(ResourceType::Listener), c.get(ResourceType::Listener));
        assert_ne!(a.get(ResourceType::Secret).version_of(None), c.get(ResourceType::Secret).version_of(None));
    }

    #[test]
    fn smi_inbound_http_routes_carry_rbac_and_end_in_deny() {
        use crate::rbac::{HTTP_RBAC_FILTER, NETWORK_RBAC_FILTER, ROUTE_POLICY};
        use envoy_types::pb::envoy::config::rbac::v3::principal;
        use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
        use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
        let snap = build(&view_with("web-1", smi_objects()), CERTS).unwrap();
        let rc: RouteConfiguration = decode(&snap, ResourceType::Route, "rds-inbound.8080");
        let routes = &rc.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 2, "GET /api/.* for the client, then deny-all (TCP access to 7000 covers not 8080)");
        let m = routes[0].r#match.as_ref().unwrap();
        let Some(route_match::PathSpecifier::SafeRegex(re)) = &m.path_specifier else { panic!() };
        assert_eq!(re.regex, "/api/.*");
        let headers: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(headers, vec![":authority", ":method"]);
        let rbac = |r: &Route| {
            let any = &r.typed_per_filter_config[HTTP_RBAC_FILTER];
            RbacPerRoute::decode(any.value.as_slice()).unwrap().rbac.unwrap().rules.unwrap()
        };
        let allowed = rbac(&routes[0]);
        let names: Vec<String> = allowed.policies[ROUTE_POLICY]
            .principals
            .iter()
            .map(|p| match &p.identifier {
                Some(principal::Identifier::Authenticated(a)) => {
                    match &a.principal_name.as_ref().unwrap().match_pattern {
                        Some(string_matcher::MatchPattern::Exact(e)) => e.clone(),
                        other => panic!("{other:?}"),
                    }
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, vec!["client.demo.cluster.local", "spiffe://cluster.local/client/demo"]);
        assert!(rbac(&routes[1]).policies.is_empty(), "the last route allows nobody");

        // The connection manager runs the RBAC filter before the router.
        let l: Listener = decode(&snap, ResourceType::Listener, INBOUND_LISTENER);
        let http_chain = l.filter_chains.iter().find(|c| c.name.ends_with("_http")).unwrap();
        let Some(filter::ConfigType::TypedConfig(any)) = &http_chain.filters[0].config_type else { panic!() };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(filters, vec![HTTP_RBAC_FILTER, "envoy.filters.http.router"]);
        // The TCP chain starts with L4 RBAC that admits the client (its TCPRoute covers 7000).
        let tcp_chain = l.filter_chains.iter().find(|c| c.name.ends_with("_tcp")).unwrap();
        assert_eq!(tcp_chain.filters[0].name, NETWORK_RBAC_FILTER);
        let Some(filter::ConfigType::TypedConfig(any)) = &tcp_chain.filters[0].config_type else { panic!() };
        let rules = NetworkRbac::decode(any.value.as_slice()).unwrap().rules.unwrap();
        assert_eq!(rules.policies.values().next().unwrap().principals.len(), 2);
    }

    #[test]
    fn smi_outbound_holds_only_allowed_services_and_permissive_inbound_has_no_rbac_rules() {
        let client = build(&view_with("client", smi_objects()), CERTS).unwrap();
        assert_eq!(names(&client, ResourceType::Cluster), vec!["demo/echo|7000", "demo/web|8080"]);
        // web-1 may call nobody, and without egress it gets no outbound listener at all.
        let web = build(&view_with("web-1", smi_objects()), CERTS).unwrap();
        assert!(!web.get(ResourceType::Listener).resources().contains_key(OUTBOUND_LISTENER));
        assert!(names(&web, ResourceType::Cluster).iter().all(|c| c.ends_with("|local")));
        // Permissive: one route to the local cluster, no per-route policy.
        let snap = build(&view_for("web-1"), CERTS).unwrap();
        let rc: RouteConfiguration = decode(&snap, ResourceType::Route, "rds-inbound.8080");
        assert_eq!(rc.virtual_hosts[0].routes.len(), 1);
        assert!(rc.virtual_hosts[0].routes[0].typed_per_filter_config.is_empty());
    }

    #[test]
    fn a_split_becomes_weighted_clusters_for_http_and_tcp() {
        let mut view = view_for("client");
        {
            let up = Arc::make_mut(&mut view.upstream);
            for svc in up.iter_mut() {
                svc.ports[0].split = vec![("demo/web|8080".into(), 90), ("demo/echo|7000".into(), 10)];
            }
        }
        let snap = build(&view, CERTS).unwrap();
        let rc: RouteConfiguration = decode(&snap, ResourceType::Route, "rds-outbound.80");
        let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else { panic!() };
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else { panic!() };
        let weights: Vec<(String, u32)> =
            w.clusters.iter().map(|c| (c.name.clone(), c.weight.unwrap().value)).collect();
        assert_eq!(weights, vec![("demo/web|8080".into(), 90), ("demo/echo|7000".into(), 10)]);
        let l: Listener = decode(&snap, ResourceType::Listener, OUTBOUND_LISTENER);
        let tcp = l.filter_chains.iter().find(|c| c.name.ends_with("_tcp")).unwrap();
        let Some(filter::ConfigType::TypedConfig(any)) = &tcp.filters[0].config_type else { panic!() };
        let proxy = TcpProxy::decode(any.value.as_slice()).unwrap();
        let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else { panic!() };
        assert_eq!(w.clusters.len(), 2);
    }
}
