//! The names OSM gives the resources (and the host names a Service answers to).

use super::*;

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

pub(super) const PROMETHEUS_PATH: &str = "/stats/prometheus";

/// ALPN the mesh's upstream TLS offers; the inbound filter chains match on it.
pub const MESH_ALPN: &str = "osm";

/// Hostnames a Service answers to from a client in `client_ns`, each also with `:<port>`. The ClusterIP is
/// included because in-mesh clients often dial it directly.
pub(super) fn hostnames(svc: &ServiceView, port: u16, client_ns: &str) -> Vec<String> {
    hostnames_of(&svc.key, svc.cluster_ip, port, client_ns)
}

pub(super) fn hostnames_of(key: &ServiceKey, cluster_ip: Option<IpAddr>, port: u16, client_ns: &str) -> Vec<String> {
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
