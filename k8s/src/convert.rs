//! Kubernetes objects (k8s-openapi types) → mesh model.
//!
//! Every conversion error names the object and the field, so a bad manifest is easy to find.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use messages::*;

use crate::crds;

/// Pod annotation that asks for the sidecar's Prometheus listener (set by injection when the namespace has
/// metrics enabled).
pub const PROMETHEUS_SCRAPE_ANNOTATION: &str = "prometheus.io/scrape";

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {reason}")]
pub struct ConvertError {
    pub object: String,
    pub reason: String,
}

fn err(object: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError { object: object.to_owned(), reason: reason.into() }
}

/// Kubernetes' name rules, enforced where objects enter: a name the API server would refuse would otherwise
/// reach Envoy (as SNI, cluster and route names) and be rejected there, by every sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric (namespaces).
    Dns1123Label,
    /// RFC 1035 label: as a 1123 label, but starting with a letter (Services).
    Dns1035Label,
    /// RFC 1123 subdomain: at most 253, dot-separated 1123 labels (most other objects).
    Dns1123Subdomain,
}

/// Checks `value` against `rule`; the error says which rule and what is wrong.
pub fn check_name(rule: NameRule, value: &str) -> Result<(), String> {
    fn label(l: &str, first_letter: bool) -> Result<(), String> {
        let b = l.as_bytes();
        if b.is_empty() || b.len() > 63 {
            return Err(format!("{l:?} must be 1-63 characters"));
        }
        if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') {
            return Err(format!("{l:?} may hold only lower-case letters, digits and '-'"));
        }
        let first_ok = if first_letter { b[0].is_ascii_lowercase() } else { b[0].is_ascii_alphanumeric() };
        if !first_ok || !b[b.len() - 1].is_ascii_alphanumeric() {
            let start = if first_letter { "a letter" } else { "a letter or digit" };
            return Err(format!("{l:?} must start with {start} and end with a letter or digit"));
        }
        Ok(())
    }
    match rule {
        NameRule::Dns1123Label => label(value, false),
        NameRule::Dns1035Label => label(value, true),
        NameRule::Dns1123Subdomain => {
            if value.len() > 253 {
                return Err(format!("a name of {} characters; at most 253", value.len()));
            }
            value.split('.').try_for_each(|l| label(l, false))
        }
    }
}

/// The rule for the name of an object of `kind`.
fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Namespace" => NameRule::Dns1123Label,
        "Service" => NameRule::Dns1035Label,
        _ => NameRule::Dns1123Subdomain,
    }
}

fn name_ns(kind: &str, meta: &ObjectMeta, namespaced: bool) -> Result<(String, String, String), ConvertError> {
    let name = meta.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| err(kind, "metadata.name is missing"))?;
    let ns = if namespaced { meta.namespace.clone().unwrap_or_else(|| "default".to_owned()) } else { String::new() };
    let label = if namespaced { format!("{kind} {ns}/{name}") } else { format!("{kind} {name}") };
    check_name(name_rule(kind), &name).map_err(|e| err(&label, format!("metadata.name: {e}")))?;
    if namespaced {
        check_name(NameRule::Dns1123Label, &ns).map_err(|e| err(&label, format!("metadata.namespace: {e}")))?;
    }
    Ok((ns, name, label))
}

fn port_u16(object: &str, field: &str, v: i32) -> Result<u16, ConvertError> {
    u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| err(object, format!("{field} {v} is not a port (1-65535)")))
}

fn parse_ip(object: &str, field: &str, v: &str) -> Result<IpAddr, ConvertError> {
    v.parse().map_err(|_| err(object, format!("{field} {v:?} is not an IP address")))
}

fn is_tcp(protocol: Option<&str>) -> bool {
    // Only TCP is intercepted by the sidecar; UDP/SCTP ports pass by the mesh.
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

pub fn namespace(o: &core::Namespace) -> Result<Namespace, ConvertError> {
    let (_, name, _) = name_ns("Namespace", &o.metadata, false)?;
    Ok(Namespace { name, labels: o.metadata.labels.clone().unwrap_or_default() })
}

pub fn service_account(o: &core::ServiceAccount) -> Result<ServiceAccount, ConvertError> {
    let (namespace, name, _) = name_ns("ServiceAccount", &o.metadata, true)?;
    Ok(ServiceAccount { namespace, name })
}

pub fn service(o: &core::Service) -> Result<Service, ConvertError> {
    let (ns, name, label) = name_ns("Service", &o.metadata, true)?;
    let spec = o.spec.clone().unwrap_or_default();
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => Some(parse_ip(&label, "spec.clusterIP", ip)?),
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
        if !is_tcp(p.protocol.as_deref()) {
            continue;
        }
        let port = port_u16(&label, &format!("spec.ports[{i}].port"), p.port)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_u16(&label, &format!("spec.ports[{i}].targetPort"), *n)?)
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port_u16(&label, &format!("spec.ports[{i}].targetPort"), n)?),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            target_port,
            protocol: AppProtocol::select(p.app_protocol.as_deref(), p.name.as_deref()),
        });
    }
    let selector: Option<BTreeMap<String, String>> = spec.selector.filter(|s| !s.is_empty());
    Ok(Service { key: ServiceKey::new(ns, name), cluster_ip, selector, ports })
}

pub fn endpoints(o: &core::Endpoints) -> Result<Endpoints, ConvertError> {
    let (ns, name, label) = name_ns("Endpoints", &o.metadata, true)?;
    let mut subsets = Vec::new();
    for (i, s) in o.subsets.clone().unwrap_or_default().iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in s.addresses.clone().unwrap_or_default().iter().enumerate() {
            addresses.push(parse_ip(&label, &format!("subsets[{i}].addresses[{j}].ip"), &a.ip)?);
        }
        let mut ports = Vec::new();
        for (j, p) in s.ports.clone().unwrap_or_default().iter().enumerate() {
            if is_tcp(p.protocol.as_deref()) {
                let port = port_u16(&label, &format!("subsets[{i}].ports[{j}].port"), p.port)?;
                ports.push(EndpointPort { name: p.name.clone().filter(|n| !n.is_empty()), port });
            }
        }
        subsets.push(EndpointSubset { addresses, ports });
    }
    Ok(Endpoints {
        key: ObjectKey::new(Kind::Endpoints, ns.clone(), name.clone()),
        service: ServiceKey::new(ns, name),
        subsets,
    })
}

pub fn endpoint_slice(o: &discovery::EndpointSlice) -> Result<Endpoints, ConvertError> {
    let (ns, name, label) = name_ns("EndpointSlice", &o.metadata, true)?;
    let service = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| err(&label, format!("label {SERVICE_NAME_LABEL} is missing: the slice names no Service")))?;
    check_name(NameRule::Dns1035Label, &service)
        .map_err(|e| err(&label, format!("label {SERVICE_NAME_LABEL}: {e}")))?;
    let mut addresses = Vec::new();
    for (i, e) in o.endpoints.iter().flatten().enumerate() {
        // A not-ready endpoint receives no traffic, as with kube-proxy.
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(parse_ip(&label, &format!("endpoints[{i}].addresses[{j}]"), a)?);
        }
    }
    let mut ports = Vec::new();
    for (j, p) in o.ports.clone().unwrap_or_default().iter().enumerate() {
        if is_tcp(p.protocol.as_deref()) {
            let port = p.port.ok_or_else(|| err(&label, format!("ports[{j}].port is missing")))?;
            let port = port_u16(&label, &format!("ports[{j}].port"), port)?;
            ports.push(EndpointPort { name: p.name.clone().filter(|n| !n.is_empty()), port });
        }
    }
    Ok(Endpoints {
        key: ObjectKey::new(Kind::EndpointSlice, ns.clone(), name),
        service: ServiceKey::new(ns, service),
        subsets: vec![EndpointSubset { addresses, ports }],
    })
}

pub fn pod(o: &core::Pod) -> Result<Pod, ConvertError> {
    let (ns, name, label) = name_ns("Pod", &o.metadata, true)?;
    let labels = o.metadata.labels.clone().unwrap_or_default();
    let proxy_uuid = match labels.get(PROXY_UUID_LABEL) {
        Some(v) => ProxyUuid::parse(v).map_err(|e| err(&label, format!("label {PROXY_UUID_LABEL}: {e}")))?,
        None => ProxyUuid::derived(&ns, &name),
    };
    let spec = o.spec.clone().unwrap_or_default();
    let service_account =
        spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".to_owned());
    check_name(NameRule::Dns1123Subdomain, &service_account)
        .map_err(|e| err(&label, format!("spec.serviceAccountName: {e}")))?;
    let ip = match o.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => None,
        Some(ip) => Some(parse_ip(&label, "status.podIP", ip)?),
    };
    let mut container_ports = Vec::new();
    for c in &spec.containers {
        for (j, p) in c.ports.clone().unwrap_or_default().iter().enumerate() {
            if is_tcp(p.protocol.as_deref()) {
                let port =
                    port_u16(&label, &format!("containers[{}].ports[{j}].containerPort", c.name), p.container_port)?;
                container_ports.push(ContainerPort { name: p.name.clone(), port });
            }
        }
    }
    let prometheus_scrape = o
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROMETHEUS_SCRAPE_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(Pod { namespace: ns, name, labels, service_account, ip, proxy_uuid, container_ports, prometheus_scrape })
}

fn subject(s: &crds::IdentityBindingSubject, label: &str, field: &str) -> Result<Subject, ConvertError> {
    // An absent namespace stays empty: the policy engine refuses it with a code (E2020 for the
    // destination, E2030 for a source). Reading it as the TrafficTarget's own namespace would grant
    // access OSM denies.
    let namespace = s.namespace.clone().unwrap_or_default();
    check_name(NameRule::Dns1123Subdomain, &s.name).map_err(|e| err(label, format!("{field}.name: {e}")))?;
    if !namespace.is_empty() {
        check_name(NameRule::Dns1123Label, &namespace).map_err(|e| err(label, format!("{field}.namespace: {e}")))?;
    }
    Ok(Subject { kind: s.kind.clone(), name: s.name.clone(), namespace })
}

pub fn traffic_target(o: &crds::TrafficTarget) -> Result<TrafficTarget, ConvertError> {
    let (namespace, name, label) = name_ns("TrafficTarget", &o.metadata, true)?;
    let sources = o
        .spec
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| subject(s, &label, &format!("spec.sources[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(TrafficTarget {
        destination: subject(&o.spec.destination, &label, "spec.destination")?,
        sources,
        rules: o
            .spec
            .rules
            .iter()
            .map(|r| TrafficTargetRule { kind: r.kind.clone(), name: r.name.clone(), matches: r.matches.clone() })
            .collect(),
        namespace,
        name,
    })
}

pub fn http_route_group(o: &crds::HTTPRouteGroup) -> Result<HttpRouteGroup, ConvertError> {
    let (namespace, name, label) = name_ns("HTTPRouteGroup", &o.metadata, true)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut matches = Vec::new();
    for (i, m) in o.spec.matches.iter().enumerate() {
        if m.name.is_empty() {
            return Err(err(&label, format!("spec.matches[{i}].name is empty")));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(err(&label, format!("spec.matches[{i}].name {:?} is used twice", m.name)));
        }
        matches.push(HttpMatch {
            name: m.name.clone(),
            path_regex: m.path_regex.clone(),
            methods: m.methods.clone(),
            headers: m.headers.as_ref().map(crds::HTTPHeaders::flatten).unwrap_or_default(),
        });
    }
    Ok(HttpRouteGroup { namespace, name, matches })
}

pub fn tcp_route(o: &crds::TCPRoute) -> Result<TcpRoute, ConvertError> {
    let (namespace, name, _) = name_ns("TCPRoute", &o.metadata, true)?;
    Ok(TcpRoute { namespace, name, ports: o.spec.matches.ports.clone() })
}

pub fn traffic_split(o: &crds::TrafficSplit) -> Result<TrafficSplit, ConvertError> {
    let (namespace, name, label) = name_ns("TrafficSplit", &o.metadata, true)?;
    check_name(NameRule::Dns1035Label, &o.spec.service).map_err(|e| err(&label, format!("spec.service: {e}")))?;
    for (i, b) in o.spec.backends.iter().enumerate() {
        check_name(NameRule::Dns1035Label, &b.service)
            .map_err(|e| err(&label, format!("spec.backends[{i}].service: {e}")))?;
    }
    Ok(TrafficSplit {
        namespace,
        name,
        service: o.spec.service.clone(),
        backends: o.spec.backends.iter().map(|b| (b.service.clone(), b.weight)).collect(),
    })
}

/// Envoy's log levels (`sidecar.logLevel`).
pub const ENVOY_LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warning", "warn", "error", "critical", "off"];
/// OSM's control-plane log levels (`observability.osmLogLevel`).
pub const OSM_LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "fatal", "panic", "disabled"];
/// TLS versions of `sidecar.tlsMinProtocolVersion` / `tlsMaxProtocolVersion`.
pub const TLS_VERSIONS: &[&str] = &["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"];
/// `sidecar.localProxyMode`.
pub const LOCAL_PROXY_MODES: &[&str] = &["Localhost", "PodIP"];

/// Every problem of a MeshConfig's fields, each naming its field: the object is refused whole (its last
/// good version stays in force), but the operator learns everything to fix at once.
fn mesh_config_problems(spec: &crds::MeshConfigSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let mut one_of = |field: &str, value: &Option<String>, allowed: &[&str]| {
        if let Some(v) = value.as_deref().filter(|v| !allowed.contains(v)) {
            problems.push(format!("spec.{field} {v:?} is not one of {}", allowed.join(", ")));
        }
    };
    if let Some(sc) = &spec.sidecar {
        one_of("sidecar.logLevel", &sc.log_level, ENVOY_LOG_LEVELS);
        one_of("sidecar.tlsMinProtocolVersion", &sc.tls_min_protocol_version, TLS_VERSIONS);
        one_of("sidecar.tlsMaxProtocolVersion", &sc.tls_max_protocol_version, TLS_VERSIONS);
        one_of("sidecar.localProxyMode", &sc.local_proxy_mode, LOCAL_PROXY_MODES);
    }
    if let Some(obs) = &spec.observability {
        one_of("observability.osmLogLevel", &obs.osm_log_level, OSM_LOG_LEVELS);
    }
    if let Some(sc) = &spec.sidecar {
        if let Some(n) = sc.max_data_plane_connections.filter(|n| *n < 0) {
            problems.push(format!("spec.sidecar.maxDataPlaneConnections {n} is negative (0: unlimited)"));
        }
        if let Some(v) = &sc.config_resync_interval
            && let Err(e) = messages::parse_go_duration(v)
        {
            problems.push(format!("spec.sidecar.configResyncInterval: {e}"));
        }
    }
    if let Some(t) = &spec.traffic {
        for (field, ports) in [
            ("outboundPortExclusionList", &t.outbound_port_exclusion_list),
            ("inboundPortExclusionList", &t.inbound_port_exclusion_list),
        ] {
            for p in ports.iter().flatten().filter(|p| !(1..=65535).contains(*p)) {
                problems.push(format!("spec.traffic.{field}: {p} is not a port (1-65535)"));
            }
        }
        for (field, ranges) in [
            ("outboundIPRangeExclusionList", &t.outbound_ip_range_exclusion_list),
            ("outboundIPRangeInclusionList", &t.outbound_ip_range_inclusion_list),
        ] {
            for r in ranges.iter().flatten() {
                if let Err(e) = sidecar::check_cidr(r) {
                    problems.push(format!("spec.traffic.{field}: {e}"));
                }
            }
        }
    }
    if let Some(c) = &spec.certificate {
        let field = "spec.certificate.serviceCertValidityDuration";
        if let Some(v) = &c.service_cert_validity_duration {
            match messages::parse_go_duration(v) {
                Err(e) => problems.push(format!("{field}: {e}")),
                Ok(d) if d < messages::MIN_CERT_VALIDITY => {
                    problems.push(format!("{field} {v:?} is shorter than the shortest accepted validity, 1m"))
                }
                // The signer's own limit: a longer validity would make every issuance fail.
                Ok(d) if d > certs::LONG_VALIDITY => problems.push(format!(
                    "{field} {v:?} is longer than the longest validity the CA issues, 87600h (ten years)"
                )),
                Ok(_) => {}
            }
        }
        if let Some(b) = c.cert_key_bit_size.filter(|b| ![2048, 3072, 4096].contains(b)) {
            problems.push(format!(
                "spec.certificate.certKeyBitSize {b} is not an RSA key size the mesh issues (2048, 3072, 4096)"
            ));
        }
    }
    problems
}

pub fn mesh_config(o: &crds::MeshConfig) -> Result<MeshConfig, ConvertError> {
    let (namespace, name, _) = name_ns("MeshConfig", &o.metadata, true)?;
    let traffic = o.spec.traffic.clone().unwrap_or_default();
    let object = format!("MeshConfig {namespace}/{name}");
    let mut problems = mesh_config_problems(&o.spec);
    let tracing = match o.spec.observability.as_ref().and_then(|obs| obs.tracing.as_ref()) {
        None => None,
        Some(t) => match tracing_settings(&object, &namespace, t) {
            Ok(t) => t,
            Err(e) => {
                problems.push(e.reason);
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(ConvertError {
            object,
            reason: format!("[{}] {}", messages::errcode::MESH_CONFIG_INVALID, problems.join("; ")),
        });
    }
    let certificate = o.spec.certificate.clone().unwrap_or_default();
    Ok(MeshConfig {
        tracing,
        enable_debug_server: o.spec.observability.as_ref().and_then(|obs| obs.enable_debug_server),
        osm_log_level: o.spec.observability.as_ref().and_then(|obs| obs.osm_log_level.clone()),
        feature_flags: o.spec.feature_flags.clone().unwrap_or_default().resolved(),
        namespace,
        name,
        enable_egress: traffic.enable_egress,
        permissive: traffic.enable_permissive_traffic_policy_mode,
        // (Both checked above.)
        service_cert_validity: certificate
            .service_cert_validity_duration
            .as_deref()
            .and_then(|v| messages::parse_go_duration(v).ok()),
        cert_key_bits: certificate.cert_key_bit_size.and_then(|b| u32::try_from(b).ok()),
        not_acted_on: o.spec.not_acted_on(),
    })
}

/// `observability.tracing {enable, address, port, endpoint}` (OSM's defaults: the `jaeger` Service of the
/// control plane's namespace, 9411, `/api/v2/spans`); `None` when not enabled.
fn tracing_settings(
    object: &str,
    namespace: &str,
    t: &serde_json::Value,
) -> Result<Option<TracingSettings>, ConvertError> {
    let field = |f: &str| format!("spec.observability.tracing.{f}");
    let Some(t) = t.as_object() else {
        return Err(err(object, "spec.observability.tracing must be an object {enable, address, port, endpoint}"));
    };
    if let Some(unknown) = t.keys().find(|k| !["enable", "address", "port", "endpoint"].contains(&k.as_str())) {
        return Err(err(
            object,
            format!("{} is not a field of tracing (enable, address, port, endpoint)", field(unknown)),
        ));
    }
    let enable = match t.get("enable") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| err(object, format!("{} must be true or false", field("enable"))))?,
    };
    if !enable {
        return Ok(None);
    }
    let address = match t.get("address") {
        None => String::new(),
        Some(v) => v.as_str().ok_or_else(|| err(object, format!("{} must be a string", field("address"))))?.to_owned(),
    };
    let address = if address.is_empty() { format!("jaeger.{namespace}.svc.cluster.local") } else { address };
    if address.parse::<IpAddr>().is_err() {
        check_name(NameRule::Dns1123Subdomain, &address)
            .map_err(|e| err(object, format!("{}: not an IP address or host name: {e}", field("address"))))?;
    }
    let port = match t.get("port") {
        None => 9411,
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| err(object, format!("{} {v} is not a port (1-65535)", field("port"))))?,
    };
    let endpoint = match t.get("endpoint") {
        None => "/api/v2/spans".to_owned(),
        Some(v) => v.as_str().ok_or_else(|| err(object, format!("{} must be a string", field("endpoint"))))?.to_owned(),
    };
    if !endpoint.starts_with('/') || endpoint.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(object, format!("{} {endpoint:?} must be a path starting with /", field("endpoint"))));
    }
    Ok(Some(TracingSettings { address, port, endpoint }))
}

/// The root of a MeshRootCertificate (its trust domain is checked against the mesh's where roots are
/// put to use).
pub fn mesh_root_certificate(o: &crds::MeshRootCertificate) -> Result<MeshRootCertificate, ConvertError> {
    let (namespace, name, label) = name_ns("MeshRootCertificate", &o.metadata, true)?;
    let role = match o.spec.role.as_str() {
        "active" => RootRole::Active,
        "passive" => RootRole::Passive,
        "inactive" => RootRole::Inactive,
        other => return Err(err(&label, format!("spec.role {other:?} is not one of active, passive, inactive"))),
    };
    let p = &o.spec.provider;
    let secret = match (&p.tresor, &p.vault, &p.cert_manager) {
        (Some(t), None, None) => {
            let r = &t.ca.secret_ref;
            check_name(NameRule::Dns1123Subdomain, &r.name)
                .map_err(|e| err(&label, format!("spec.provider.tresor.ca.secretRef.name: {e}")))?;
            if let Some(ns) = &r.namespace {
                check_name(NameRule::Dns1123Label, ns)
                    .map_err(|e| err(&label, format!("spec.provider.tresor.ca.secretRef.namespace: {e}")))?;
            }
            (r.namespace.clone().unwrap_or_else(|| namespace.clone()), r.name.clone())
        }
        (None, None, None) => return Err(err(&label, "spec.provider names no issuer (tresor)")),
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(err(
                &label,
                "spec.provider: only the built-in issuer (tresor) is supported; vault and certManager are not yet",
            ));
        }
        _ => return Err(err(&label, "spec.provider must name exactly one issuer")),
    };
    if o.spec.spiffe_enabled == Some(true) {
        return Err(err(&label, "spec.spiffeEnabled: SPIFFE URIs in service certificates are not supported yet"));
    }
    Ok(MeshRootCertificate { namespace, name, role, trust_domain: o.spec.trust_domain.clone(), secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn mesh_config_validity_is_a_go_duration_of_at_least_a_minute() {
        let mc = |v: &str| {
            mesh_config(&from_json::<crds::MeshConfig>(serde_json::json!({
                "apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshConfig",
                "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
                "spec": {"certificate": {"serviceCertValidityDuration": v}}
            })))
        };
        assert_eq!(mc("1h30m").unwrap().service_cert_validity, Some(std::time::Duration::from_secs(5400)));
        assert_eq!(mc("1m").unwrap().service_cert_validity, Some(std::time::Duration::from_secs(60)));
        assert!(mc("1m").unwrap().not_acted_on.is_empty());
        let short = mc("30s").unwrap_err().to_string();
        assert!(short.contains("MeshConfig osm-system/osm-mesh-config") && short.contains("shortest"), "{short}");
        let bad = mc("1d").unwrap_err().to_string();
        assert!(bad.contains("serviceCertValidityDuration") && bad.contains("not a duration"), "{bad}");
    }

    #[test]
    fn every_bad_mesh_config_field_is_named_at_once_with_the_code() {
        let mc = mesh_config(&from_json::<crds::MeshConfig>(serde_json::json!({
            "apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshConfig",
            "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
            "spec": {
                "sidecar": {"logLevel": "verbose", "tlsMinProtocolVersion": "TLSv1_4", "localProxyMode": "Host",
                            "maxDataPlaneConnections": -1, "configResyncInterval": "soon"},
                "traffic": {"outboundPortExclusionList": [70000], "outboundIPRangeExclusionList": ["fd00::/8", "10.0.0.0"]},
                "observability": {"osmLogLevel": "loud", "tracing": {"enable": true, "port": 0}},
                "certificate": {"serviceCertValidityDuration": "999999h", "certKeyBitSize": 1024}
            }
        })));
        let e = mc.unwrap_err().to_string();
        assert!(e.starts_with("MeshConfig osm-system/osm-mesh-config: [E4152]"), "{e}");
        for field in [
            "sidecar.logLevel \"verbose\"",
            "tlsMinProtocolVersion \"TLSv1_4\"",
            "localProxyMode",
            "maxDataPlaneConnections -1",
            "configResyncInterval",
            "outboundPortExclusionList: 70000",
            "IPv6 range",
            "\"10.0.0.0\" is not a CIDR",
            "osmLogLevel \"loud\"",
            "tracing.port",
            "longer than the longest validity the CA issues",
            "certKeyBitSize 1024",
        ] {
            assert!(e.contains(field), "{field} missing from: {e}");
        }
        // OSM's own defaults pass, and the log level is carried.
        let ok = mesh_config(&from_json::<crds::MeshConfig>(serde_json::json!({
            "apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshConfig",
            "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
            "spec": {"observability": {"osmLogLevel": "debug"}, "certificate": {"serviceCertValidityDuration": "87600h"}}
        })))
        .unwrap();
        assert_eq!(ok.osm_log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn mesh_config_tracing_has_osms_defaults_and_refuses_what_envoy_would() {
        let mc = |t: serde_json::Value| {
            mesh_config(&from_json::<crds::MeshConfig>(serde_json::json!({
                "apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshConfig",
                "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
                "spec": {"observability": {"tracing": t}}
            })))
        };
        let on = mc(serde_json::json!({"enable": true})).unwrap();
        assert_eq!(
            on.tracing,
            Some(TracingSettings {
                address: "jaeger.osm-system.svc.cluster.local".into(),
                port: 9411,
                endpoint: "/api/v2/spans".into()
            })
        );
        assert!(on.not_acted_on.is_empty(), "{:?}", on.not_acted_on);
        assert_eq!(mc(serde_json::json!({"enable": false, "address": "10.0.0.1"})).unwrap().tracing, None);
        let custom = mc(serde_json::json!({"enable": true, "address": "10.0.0.1", "port": 9412, "endpoint": "/z"}));
        assert_eq!(custom.unwrap().tracing.unwrap().port, 9412);
        for (bad, want) in [
            (serde_json::json!({"enable": true, "port": 0}), "tracing.port 0"),
            (serde_json::json!({"enable": true, "endpoint": "spans"}), "tracing.endpoint"),
            (serde_json::json!({"enable": true, "adress": "x"}), "tracing.adress is not a field"),
            (serde_json::json!({"enable": "yes"}), "tracing.enable must be"),
            (serde_json::json!({"enable": true, "address": "bad host!"}), "tracing.address"),
        ] {
            let e = mc(bad).unwrap_err().to_string();
            assert!(e.contains("MeshConfig osm-system/osm-mesh-config") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn mesh_config_key_size_is_one_the_mesh_issues() {
        let mc = |bits: i64| {
            mesh_config(&from_json::<crds::MeshConfig>(serde_json::json!({
                "apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshConfig",
                "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
                "spec": {"certificate": {"certKeyBitSize": bits}}
            })))
        };
        assert_eq!(mc(3072).unwrap().cert_key_bits, Some(3072));
        assert!(mc(3072).unwrap().not_acted_on.is_empty());
        let weak = mc(1024).unwrap_err().to_string();
        assert!(weak.contains("osm-system/osm-mesh-config") && weak.contains("certKeyBitSize 1024"), "{weak}");
    }

    #[test]
    fn mesh_root_certificates_name_their_role_and_only_the_builtin_issuer() {
        let mrc = |spec: serde_json::Value| {
            mesh_root_certificate(&from_json::<crds::MeshRootCertificate>(serde_json::json!({
                "apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshRootCertificate",
                "metadata": {"name": "next", "namespace": "osm-system"},
                "spec": spec
            })))
        };
        let tresor = serde_json::json!({"tresor": {"ca": {"secretRef": {"name": "osm-ca-bundle-2"}}}});
        let ok =
            mrc(serde_json::json!({"role": "passive", "trustDomain": "cluster.local", "provider": tresor})).unwrap();
        assert_eq!((ok.role, ok.secret), (RootRole::Passive, ("osm-system".into(), "osm-ca-bundle-2".into())));
        let role = mrc(serde_json::json!({"role": "standby", "provider": tresor})).unwrap_err().to_string();
        assert!(role.contains("MeshRootCertificate osm-system/next") && role.contains("spec.role \"standby\""));
        let vault =
            mrc(serde_json::json!({"role": "active", "provider": {"vault": {"host": "v"}}})).unwrap_err().to_string();
        assert!(vault.contains("only the built-in issuer (tresor)"), "{vault}");
    }

    #[test]
    fn service_ports_protocols_and_headless() {
        let svc: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "db", "namespace": "data"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [
                {"name": "tcp-server-first-mysql", "port": 3306},
                {"name": "metrics", "port": 9000, "targetPort": "prom", "appProtocol": "tcp"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]}
        }));
        let s = service(&svc).unwrap();
        assert_eq!(s.cluster_ip, None);
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[0].protocol, AppProtocol::TcpServerFirst);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(3306));
        assert_eq!(s.ports[1].target_port, TargetPort::Name("prom".into()));
        assert_eq!(s.ports[1].protocol, AppProtocol::Tcp);
    }

    #[test]
    fn bad_fields_name_the_object() {
        let svc: core::Service = from_json(serde_json::json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}
        }));
        assert_eq!(
            service(&svc).unwrap_err().to_string(),
            "Service demo/web: spec.clusterIP \"10.96.0.300\" is not an IP address"
        );
        let p: core::Pod = from_json(serde_json::json!({
            "metadata": {"name": "p", "labels": {"osm-proxy-uuid": "a.b"}}
        }));
        assert!(pod(&p).unwrap_err().to_string().starts_with("Pod default/p: label osm-proxy-uuid"));
    }

    #[test]
    fn names_kubernetes_would_refuse_are_refused_here() {
        let long = "a".repeat(300);
        let svc: core::Service = from_json(serde_json::json!({
            "metadata": {"name": long, "namespace": "demo"}, "spec": {"ports": [{"port": 80}]}
        }));
        let e = service(&svc).unwrap_err().to_string();
        assert!(e.contains("metadata.name") && e.contains("must be 1-63 characters"), "{e}");
        let svc: core::Service = from_json(serde_json::json!({"metadata": {"name": "9lives", "namespace": "demo"}}));
        assert!(service(&svc).unwrap_err().to_string().contains("must start with a letter"));
        let p: core::Pod = from_json(serde_json::json!({"metadata": {"name": "p", "namespace": "Demo"}}));
        assert!(pod(&p).unwrap_err().to_string().contains("metadata.namespace: \"Demo\" may hold only lower-case"));
        let p: core::Pod = from_json(serde_json::json!({
            "metadata": {"name": "web-0.web", "namespace": "demo"}, "spec": {"containers": [], "serviceAccountName": "a_b"}
        }));
        assert!(pod(&p).unwrap_err().to_string().contains("spec.serviceAccountName"));
        assert!(check_name(NameRule::Dns1123Subdomain, "web-0.web").is_ok());
        assert!(check_name(NameRule::Dns1123Subdomain, &format!("{}.b", "a".repeat(252))).is_err());
        assert!(check_name(NameRule::Dns1123Label, "-x").is_err());
    }

    #[test]
    fn slice_without_service_label_is_rejected_and_unready_endpoints_skipped() {
        let s: discovery::EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "demo"}, "addressType": "IPv4", "endpoints": []
        }));
        assert!(endpoint_slice(&s).unwrap_err().to_string().contains("kubernetes.io/service-name"));
        let s: discovery::EndpointSlice = from_json(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}
            ],
            "ports": [{"name": "http", "port": 8080}]
        }));
        let e = endpoint_slice(&s).unwrap();
        assert_eq!(e.service, ServiceKey::new("demo", "web"));
        assert_eq!(e.subsets[0].addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
