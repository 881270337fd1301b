//! The mesh model: plain values converted from Kubernetes objects at the edge (`k8s`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::kinds::{Kind, MeshObject};
use sha2::{Digest, Sha256};

/// Default trust domain, as in OSM's chart (`trustDomain: cluster.local`).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Pod label that carries the sidecar's proxy UUID (set by injection).
pub const PROXY_UUID_LABEL: &str = "osm-proxy-uuid";
/// The UID Envoy runs as; iptables exempts it from interception.
pub const ENVOY_UID: u32 = 1500;

/// Envoy's fixed ports inside a pod.
pub mod ports {
    pub const ADMIN: u16 = 15000;
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND: u16 = 15003;
    pub const PROMETHEUS: u16 = 15010;
    pub const LIVENESS: u16 = 15901;
    pub const READINESS: u16 = 15902;
    pub const STARTUP: u16 = 15903;
    pub const HEALTHCHECK: u16 = 15904;
    pub const ADS: u16 = 15128;
}

/// Mesh-wide settings (MeshConfig). Defaults follow the Helm chart's preset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshSettings {
    /// `traffic.enableEgress`: traffic to destinations outside the mesh passes through the sidecar to its
    /// original destination. Without it, only mesh Services are reachable.
    pub enable_egress: bool,
    /// `traffic.enablePermissiveTrafficPolicyMode`: every mesh Service may call every other (mTLS still on);
    /// off, only what SMI TrafficTargets allow.
    pub permissive: bool,
    /// `observability.tracing`: every HTTP connection manager reports Zipkin spans to this collector.
    pub tracing: Option<TracingSettings>,
    /// `featureFlags.enableRetryPolicy`: Retry policies are in force (OSM's default: off).
    pub retry_policy: bool,
}

/// Where sidecars send Zipkin (HTTP JSON, v2) spans: OSM's MeshConfig `observability.tracing`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TracingSettings {
    /// Host name or IP address of the collector.
    pub address: String,
    pub port: u16,
    /// Path spans are POSTed to (`/api/v2/spans`).
    pub endpoint: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self { enable_egress: true, permissive: true, tracing: None, retry_policy: false }
    }
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// `<namespace>/<name>` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// The in-cluster FQDN, `<svc>.<ns>.svc.cluster.local`; also the SNI of mesh mTLS.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Application protocol of a Service port, chosen as OSM does: `appProtocol`, else the port-name prefix
/// `<proto>-`, else HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AppProtocol {
    Http,
    Tcp,
    Grpc,
    TcpServerFirst,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Tcp => "tcp",
            AppProtocol::Grpc => "grpc",
            AppProtocol::TcpServerFirst => "tcp-server-first",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(AppProtocol::Http),
            "tcp" => Some(AppProtocol::Tcp),
            "grpc" => Some(AppProtocol::Grpc),
            "tcp-server-first" => Some(AppProtocol::TcpServerFirst),
            _ => None,
        }
    }

    /// Selects the protocol of a port from its `appProtocol` and its name.
    pub fn select(app_protocol: Option<&str>, port_name: Option<&str>) -> Self {
        if let Some(p) = app_protocol.and_then(Self::parse) {
            return p;
        }
        if let Some(name) = port_name {
            // Longest prefix first: "tcp-server-first-x" must not read as "tcp".
            for proto in [AppProtocol::TcpServerFirst, AppProtocol::Http, AppProtocol::Tcp, AppProtocol::Grpc] {
                let prefix = format!("{}-", proto.as_str());
                if name.to_ascii_lowercase().starts_with(&prefix) {
                    return proto;
                }
            }
        }
        AppProtocol::Http
    }

    /// HTTP-family protocols are served through an HTTP connection manager; the rest through tcp_proxy.
    pub fn is_http(self) -> bool {
        matches!(self, AppProtocol::Http | AppProtocol::Grpc)
    }
}

impl fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Service's `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: AppProtocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    /// `None` for headless Services (`clusterIP: None`) and Services without an address yet.
    pub cluster_ip: Option<IpAddr>,
    /// `None` when the Service has no selector (its endpoints are managed by hand).
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: u16,
}

/// One subset of an Endpoints object (or one EndpointSlice): every address serves every port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSubset {
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<EndpointPort>,
}

/// An Endpoints object or an EndpointSlice, reduced to the Service it belongs to and its ready addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The key of the object itself (an EndpointSlice has its own name).
    pub key: ObjectKey,
    pub service: ServiceKey,
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub ip: Option<IpAddr>,
    pub proxy_uuid: ProxyUuid,
    pub container_ports: Vec<ContainerPort>,
    /// Annotation `prometheus.io/scrape: "true"`: the sidecar serves its stats for Prometheus on :15010.
    pub prometheus_scrape: bool,
}

impl Pod {
    pub fn identity(&self) -> ServiceIdentity {
        ServiceIdentity::new(self.service_account.clone(), self.namespace.clone())
    }

    /// Resolves a Service's target port against this pod's container ports.
    pub fn resolve_target_port(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => {
                self.container_ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.port)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

/// An SMI subject: `kind` is `ServiceAccount` for every subject the mesh acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    /// Defaults to the namespace of the object that names the subject.
    pub namespace: String,
}

/// One rule of a TrafficTarget: a route object (`HTTPRouteGroup` or `TCPRoute`) in the TrafficTarget's
/// namespace and, for HTTP, the names of the matches it allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrafficTargetRule {
    pub kind: String,
    pub name: String,
    pub matches: Vec<String>,
}

/// SMI `TrafficTarget` (access.smi-spec.io/v1alpha3), as written: validity is the policy engine's business,
/// because most of it depends on other objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTarget {
    pub namespace: String,
    pub name: String,
    pub destination: Subject,
    pub sources: Vec<Subject>,
    pub rules: Vec<TrafficTargetRule>,
}

/// One named match of an HTTPRouteGroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpMatch {
    pub name: String,
    pub path_regex: Option<String>,
    pub methods: Vec<String>,
    /// Header name → RE2 regex of its value.
    pub headers: BTreeMap<String, String>,
}

/// SMI `HTTPRouteGroup` (specs.smi-spec.io/v1alpha4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRouteGroup {
    pub namespace: String,
    pub name: String,
    pub matches: Vec<HttpMatch>,
}

/// SMI `TCPRoute` (specs.smi-spec.io/v1alpha4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRoute {
    pub namespace: String,
    pub name: String,
    /// Destination ports, as written (checked by the policy engine).
    pub ports: Vec<i64>,
}

/// SMI `TrafficSplit` (split.smi-spec.io/v1alpha2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSplit {
    pub namespace: String,
    pub name: String,
    /// The apex Service, in the split's namespace.
    pub service: String,
    /// (backend Service, weight), as written.
    pub backends: Vec<(String, i64)>,
}

/// OSM's `MeshConfig`, reduced to what the controller acts on; the rest is listed so it can be reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshConfig {
    pub namespace: String,
    pub name: String,
    pub enable_egress: Option<bool>,
    pub permissive: Option<bool>,
    /// `spec.certificate.serviceCertValidityDuration`, at least [`MIN_CERT_VALIDITY`].
    pub service_cert_validity: Option<std::time::Duration>,
    /// `spec.observability.tracing`, when enabled.
    pub tracing: Option<TracingSettings>,
    /// `spec.observability.enableDebugServer`.
    pub enable_debug_server: Option<bool>,
    /// `spec.certificate.certKeyBitSize`: RSA service-certificate keys of this size (2048, 3072 or 4096)
    /// instead of ECDSA P-256.
    pub cert_key_bits: Option<u32>,
    /// `observability.osmLogLevel`: the controller's own log level, live.
    pub osm_log_level: Option<String>,
    /// `certificate.ingressGateway`: the certificate an ingress controller presents to meshed backends.
    pub ingress_gateway: Option<Box<IngressGatewayCert>>,
    /// `featureFlags`, every flag OSM has, with OSM's defaults where unset (for
    /// `osm_feature_flag_enabled`).
    pub feature_flags: Vec<(String, bool)>,
    /// Fields that are set but not acted on yet, e.g. `sidecar.logLevel`.
    pub not_acted_on: Vec<String>,
}

/// OSM's `Retry` (`policy.openservicemesh.io/v1alpha1`): how the sidecars of a source service account
/// retry requests to destination Services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub namespace: String,
    pub name: String,
    pub source: ServiceIdentity,
    /// Destination Services (destinations of other kinds are ignored, as OSM ignores them).
    pub destinations: Vec<ServiceKey>,
    pub policy: RetryPolicy,
}

/// A `retryPolicy`, as Envoy applies it to a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Envoy's `retry_on` conditions, comma-separated (`5xx`, `connect-failure`, ...).
    pub retry_on: String,
    pub num_retries: u32,
    pub per_try_timeout: std::time::Duration,
    /// Exponential backoff from this interval (at most ten times it, Envoy's default).
    pub backoff_base_interval: std::time::Duration,
}

/// The ingress gateway's certificate (MeshConfig `certificate.ingressGateway`): issued by the mesh's
/// signing root to these names (the first is its CN; IngressBackends name it as an AuthenticatedPrincipal),
/// kept renewed, and stored where the ingress controller reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IngressGatewayCert {
    pub subject_alt_names: Vec<String>,
    pub validity: std::time::Duration,
    /// (namespace, name) of the `kubernetes.io/tls` Secret on a cluster; on the embedded default, the
    /// directory `<state dir>/ingress-gateway/<namespace>/<name>/`.
    pub secret: (String, String),
}

/// An IP range, `<address>/<prefix length>` (IPv4 or IPv6), with no host bits beyond the prefix required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IP range (a.b.c.d/n or an IPv6 prefix)");
        let (addr, len) = text.trim().split_once('/').ok_or_else(bad)?;
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("{text:?}: the prefix length is at most {max}"));
        }
        Ok(Self { addr, len })
    }

    /// A single address.
    pub fn host(addr: std::net::IpAddr) -> Self {
        Self { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// OSM's `IngressBackend` (`policy.openservicemesh.io/v1alpha1`): which clients outside the mesh (an
/// ingress controller) may reach which backend Services of its namespace, over plain HTTP or HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IngressBackend {
    pub namespace: String,
    pub name: String,
    pub backends: Vec<IngressTarget>,
    pub sources: Vec<IngressSource>,
}

/// One backend: a Service of the IngressBackend's namespace and the port its pods listen on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IngressTarget {
    pub service: String,
    /// The backend's target port (the port its pods listen on).
    pub port: u16,
    pub https: bool,
    /// HTTPS: accept clients without a certificate of the mesh CA.
    pub skip_client_cert_validation: bool,
    /// HTTPS: the SNI names the chain matches (empty: any).
    pub sni_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IngressSource {
    /// The addresses of a Service's endpoints (the ingress controller's pods).
    Service(ServiceKey),
    IpRange(Cidr),
    /// A client certificate's principal (its URI or DNS SAN), for HTTPS with client-certificate validation.
    AuthenticatedPrincipal(String),
}

/// OSM's `UpstreamTrafficSetting` (`policy.openservicemesh.io/v1alpha1`): how clients connect to one
/// upstream Service (client-side circuit breakers and timeouts) and how much its sidecars accept (local
/// rate limits, for the Service or per route).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UpstreamTrafficSetting {
    pub namespace: String,
    pub name: String,
    /// `spec.host` as written: `<svc>.<ns>.svc.cluster.local` for a Service of the object's namespace.
    pub host: String,
    pub connection: ConnectionSettings,
    /// Connections accepted by the upstream's sidecars, per time unit.
    pub tcp_rate_limit: Option<TcpRateLimit>,
    /// Requests accepted by the upstream's sidecars (every route), per time unit.
    pub http_rate_limit: Option<HttpRateLimit>,
    /// Per-route request limits: the route whose path regex is `path`.
    pub route_rate_limits: Vec<(String, HttpRateLimit)>,
}

/// Client-side circuit-breaker thresholds and timeouts (`connectionSettings`); unset means OSM's default
/// (no threshold, a 1 s connect timeout).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionSettings {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<std::time::Duration>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

/// A token bucket: `per_unit` tokens each `unit`, up to `per_unit + burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenBucket {
    pub per_unit: u32,
    pub unit: std::time::Duration,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpRateLimit {
    pub connections: TokenBucket,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HttpRateLimit {
    pub requests: TokenBucket,
    /// The status of a refused request (OSM's default: 429).
    pub status: u16,
    /// Headers added to a refused request's response.
    pub headers: Vec<(String, String)>,
}

/// The 4xx and 5xx statuses Envoy's `type.v3.StatusCode` defines: a local reply (a rate limit's refusal)
/// can carry only these.
pub const ENVOY_HTTP_ERROR_STATUSES: &[u16] = &[
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 426,
    428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// Envoy's HTTP `retry_on` conditions (a Retry naming another is refused: Envoy would reject the route).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The shortest service-certificate validity accepted: renewals come half-way through at the latest, so
/// a minute means a new certificate every 30 seconds or so.
pub const MIN_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(60);

/// Parses a duration the way Go's `time.ParseDuration` writes them (the form OSM's MeshConfig uses):
/// decimal numbers, each with a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `24h`, `1h30m`, `1.5h`,
/// `90s`. Negative durations are refused.
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration (use e.g. 24h, 1h30m or 90s)");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = tail;
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| bad())
}

impl MeshConfig {
    /// The settings in force: this object's fields over `base` (the command line's).
    pub fn apply_to(&self, base: &MeshSettings) -> MeshSettings {
        MeshSettings {
            enable_egress: self.enable_egress.unwrap_or(base.enable_egress),
            permissive: self.permissive.unwrap_or(base.permissive),
            tracing: self.tracing.clone().or_else(|| base.tracing.clone()),
            retry_policy: self
                .feature_flags
                .iter()
                .find(|(flag, _)| flag == "enableRetryPolicy")
                .map_or(base.retry_policy, |(_, on)| *on),
        }
    }
}

/// What a mesh root does (OSM's MeshRootCertificate `spec.role`): an active root signs and is trusted, a
/// passive one is only trusted (on its way in or out), an inactive one is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RootRole {
    Active,
    Passive,
    Inactive,
}

impl fmt::Display for RootRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RootRole::Active => "active",
            RootRole::Passive => "passive",
            RootRole::Inactive => "inactive",
        })
    }
}

/// OSM's `MeshRootCertificate`: one root of the mesh and its role. The built-in (`tresor`) provider keeps the
/// root's certificate and key in the Secret `secret` names; the Secret the mesh started with
/// (`osm-ca-bundle`) is the root the controller was started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRootCertificate {
    pub namespace: String,
    pub name: String,
    pub role: RootRole,
    pub trust_domain: String,
    /// `spec.provider.tresor.ca.secretRef`: (namespace, name).
    pub secret: (String, String),
}

/// A workload identity: `<sa>.<ns>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceIdentity {
    pub service_account: String,
    pub namespace: String,
}

impl ServiceIdentity {
    pub fn new(service_account: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self { service_account: service_account.into(), namespace: namespace.into() }
    }

    /// `<sa>.<ns>.<trust-domain>`: the DNS SAN of the identity's service certificate.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!("{}.{}.{}", self.service_account, self.namespace, trust_domain)
    }

    /// `spiffe://<trust-domain>/<sa>/<ns>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{}/{}/{}", trust_domain, self.service_account, self.namespace)
    }

    /// The SDS name of this identity's certificate: `service-cert:<ns>/<sa>`.
    pub fn sds_cert_name(&self) -> String {
        format!("service-cert:{}/{}", self.namespace, self.service_account)
    }
}

impl fmt::Display for ServiceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service_account, self.namespace)
    }
}

/// A sidecar's proxy UUID. Restricted to `[A-Za-z0-9-]` because it is the first dot-separated label of the
/// xDS client certificate's common name. Shared, not copied: a connected proxy's UUID is held by its
/// session, its status, its metrics and its snapshot entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProxyUuid(std::sync::Arc<str>);

/// Maps keyed by UUID are looked up by `&str` (hashing and comparing as the text does).
impl std::borrow::Borrow<str> for ProxyUuid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid proxy UUID {0:?}: expected 1-63 characters of [A-Za-z0-9-]")]
pub struct InvalidProxyUuid(pub String);

impl ProxyUuid {
    pub fn parse(s: &str) -> Result<Self, InvalidProxyUuid> {
        let ok = !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok { Ok(Self(s.into())) } else { Err(InvalidProxyUuid(s.to_owned())) }
    }

    /// A stable UUID for a pod that has no `osm-proxy-uuid` label (pods described by hand in the mesh
    /// directory): derived from namespace and name, so a restart of the controller keeps it.
    pub fn derived(namespace: &str, name: &str) -> Self {
        let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        let h: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Self(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProxyUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a sidecar's xDS client certificate says about it: the URI SAN
/// `spiffe://<trust-domain>/osm-sidecar/<ns>/<sa>/<uuid>` (the authority), and for people reading it the CN
/// `<uuid>.sidecar.<sa>.<ns>.<trust-domain>` (OSM's form). Only the URI is trusted: a CN can be forged by a
/// service account whose name contains dots, and a service certificate never carries a URI with this path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProxyId {
    pub uuid: ProxyUuid,
    pub identity: ServiceIdentity,
}

/// The first path segment of a sidecar's certificate URI; service certificates' SPIFFE IDs
/// (`spiffe://<td>/<sa>/<ns>`) have two segments, so the two can never be confused.
pub const PROXY_URI_SEGMENT: &str = "osm-sidecar";

impl ProxyId {
    /// The URI SAN of the sidecar's xDS client certificate.
    pub fn uri(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/{PROXY_URI_SEGMENT}/{}/{}/{}",
            self.identity.namespace, self.identity.service_account, self.uuid
        )
    }

    /// Reads a sidecar certificate URI, which must be of `trust_domain` exactly.
    pub fn from_uri(uri: &str, trust_domain: &str) -> Result<Self, InvalidProxyCn> {
        let bad = |why: String| InvalidProxyCn(uri.to_owned(), why);
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| bad("not a spiffe:// URI".to_owned()))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| bad("no path".to_owned()))?;
        if td != trust_domain {
            return Err(bad(format!("trust domain {td:?} is not this mesh's ({trust_domain:?})")));
        }
        match path.split('/').collect::<Vec<_>>().as_slice() {
            [PROXY_URI_SEGMENT, ns, sa, uuid] if !ns.is_empty() && !sa.is_empty() => Ok(Self {
                uuid: ProxyUuid::parse(uuid).map_err(|e| bad(e.to_string()))?,
                identity: ServiceIdentity::new(*sa, *ns),
            }),
            _ => Err(bad(format!(
                "expected spiffe://{trust_domain}/{PROXY_URI_SEGMENT}/<namespace>/<service-account>/<proxy-uuid>"
            ))),
        }
    }

    pub fn common_name(&self, trust_domain: &str) -> String {
        format!("{}.sidecar.{}.{}.{}", self.uuid, self.identity.service_account, self.identity.namespace, trust_domain)
    }

    /// Parses the common name of an xDS client certificate.
    pub fn from_common_name(cn: &str) -> Result<Self, InvalidProxyCn> {
        let parts: Vec<&str> = cn.splitn(5, '.').collect();
        match parts.as_slice() {
            [uuid, "sidecar", sa, ns, _td] if !sa.is_empty() && !ns.is_empty() => Ok(Self {
                uuid: ProxyUuid::parse(uuid).map_err(|e| InvalidProxyCn(cn.to_owned(), e.to_string()))?,
                identity: ServiceIdentity::new(*sa, *ns),
            }),
            _ => Err(InvalidProxyCn(
                cn.to_owned(),
                "expected <proxy-uuid>.sidecar.<service-account>.<namespace>.<trust-domain>".to_owned(),
            )),
        }
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.uuid, self.identity)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} does not name a sidecar: {1}")]
pub struct InvalidProxyCn(pub String, pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_selection_follows_app_protocol_then_name_prefix_then_http() {
        assert_eq!(AppProtocol::select(Some("tcp"), Some("http-x")), AppProtocol::Tcp);
        assert_eq!(AppProtocol::select(None, Some("tcp-server-first-db")), AppProtocol::TcpServerFirst);
        assert_eq!(AppProtocol::select(None, Some("tcp-echo")), AppProtocol::Tcp);
        assert_eq!(AppProtocol::select(None, Some("grpc-api")), AppProtocol::Grpc);
        assert_eq!(AppProtocol::select(Some("kubernetes.io/h2c"), Some("web")), AppProtocol::Http);
        assert_eq!(AppProtocol::select(None, None), AppProtocol::Http);
    }

    #[test]
    fn proxy_cn_round_trips() {
        let id = ProxyId {
            uuid: ProxyUuid::parse("0f5c-42").unwrap(),
            identity: ServiceIdentity::new("bookbuyer", "books"),
        };
        let cn = id.common_name("cluster.local");
        assert_eq!(cn, "0f5c-42.sidecar.bookbuyer.books.cluster.local");
        assert_eq!(ProxyId::from_common_name(&cn).unwrap(), id);
        assert!(ProxyId::from_common_name("ads.cluster.local").is_err());
        assert!(ProxyId::from_common_name("x.gateway.sa.ns.cluster.local").is_err());
    }

    #[test]
    fn proxy_uri_round_trips_and_nothing_else_reads_as_one() {
        let id = ProxyId { uuid: ProxyUuid::parse("u1").unwrap(), identity: ServiceIdentity::new("web", "shop") };
        let uri = id.uri("cluster.local");
        assert_eq!(uri, "spiffe://cluster.local/osm-sidecar/shop/web/u1");
        assert_eq!(ProxyId::from_uri(&uri, "cluster.local").unwrap(), id);
        assert!(ProxyId::from_uri(&uri, "other.local").unwrap_err().to_string().contains("trust domain"));
        // A service certificate's SPIFFE ID, whatever its names, is not a sidecar's.
        let service = ServiceIdentity::new("u1.sidecar.web", "shop").spiffe_id("cluster.local");
        assert!(ProxyId::from_uri(&service, "cluster.local").is_err());
        assert!(ProxyId::from_uri("spiffe://cluster.local/osm-sidecar/shop/web/u1/x", "cluster.local").is_err());
        assert!(ProxyId::from_uri("https://cluster.local/osm-sidecar/shop/web/u1", "cluster.local").is_err());
    }

    #[test]
    fn derived_uuid_is_stable_and_valid() {
        let a = ProxyUuid::derived("ns", "pod");
        assert_eq!(a, ProxyUuid::derived("ns", "pod"));
        assert_ne!(a, ProxyUuid::derived("ns", "pod2"));
        assert!(ProxyUuid::parse(a.as_str()).is_ok());
        assert_eq!(a.as_str().len(), 36);
    }

    #[test]
    fn identity_names() {
        let id = ServiceIdentity::new("sa", "ns");
        assert_eq!(id.principal("cluster.local"), "sa.ns.cluster.local");
        assert_eq!(id.spiffe_id("td"), "spiffe://td/sa/ns");
        assert_eq!(id.sds_cert_name(), "service-cert:ns/sa");
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_as_go_writes_them() {
        for (text, secs) in [("24h", 86400.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("90s", 90.0), ("0", 0.0)] {
            assert_eq!(parse_go_duration(text), Ok(Duration::from_secs_f64(secs)), "{text}");
        }
        assert_eq!(parse_go_duration("1m0.5s"), Ok(Duration::from_millis(60_500)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        for bad in ["", "24", "h", "1d", "-1h", "1h-5m", "1..5h", "abc"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
