//! Kubernetes objects (k8s-openapi types) → mesh model: the rules every kind's conversion shares (names,
//! ports, addresses), and each kind's conversion re-exported from its module in [`crate::kinds`].
//!
//! Every conversion error names the object and the field, so a bad manifest is easy to find.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use crate::kinds::endpoint_slice::convert as endpoint_slice;
pub use crate::kinds::endpoints::convert as endpoints;
pub use crate::kinds::http_route_group::convert as http_route_group;
pub use crate::kinds::mesh_config::convert as mesh_config;
pub use crate::kinds::mesh_config::{ENVOY_LOG_LEVELS, LOCAL_PROXY_MODES, OSM_LOG_LEVELS, TLS_VERSIONS};
pub use crate::kinds::mesh_root_certificate::convert as mesh_root_certificate;
pub use crate::kinds::namespace::convert as namespace;
pub use crate::kinds::pod::convert as pod;
pub use crate::kinds::service::convert as service;
pub use crate::kinds::service_account::convert as service_account;
pub use crate::kinds::tcp_route::convert as tcp_route;
pub use crate::kinds::traffic_split::convert as traffic_split;
pub use crate::kinds::traffic_target::convert as traffic_target;

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

pub(crate) fn err(object: &str, reason: impl Into<String>) -> ConvertError {
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

pub(crate) fn name_ns(
    kind: &str,
    meta: &ObjectMeta,
    namespaced: bool,
) -> Result<(String, String, String), ConvertError> {
    let name = meta.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| err(kind, "metadata.name is missing"))?;
    let ns = if namespaced { meta.namespace.clone().unwrap_or_else(|| "default".to_owned()) } else { String::new() };
    let label = if namespaced { format!("{kind} {ns}/{name}") } else { format!("{kind} {name}") };
    check_name(name_rule(kind), &name).map_err(|e| err(&label, format!("metadata.name: {e}")))?;
    if namespaced {
        check_name(NameRule::Dns1123Label, &ns).map_err(|e| err(&label, format!("metadata.namespace: {e}")))?;
    }
    Ok((ns, name, label))
}

pub(crate) fn port_u16(object: &str, field: &str, v: i32) -> Result<u16, ConvertError> {
    u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| err(object, format!("{field} {v} is not a port (1-65535)")))
}

pub(crate) fn parse_ip(object: &str, field: &str, v: &str) -> Result<IpAddr, ConvertError> {
    v.parse().map_err(|_| err(object, format!("{field} {v:?} is not an IP address")))
}

pub(crate) fn is_tcp(protocol: Option<&str>) -> bool {
    // Only TCP is intercepted by the sidecar; UDP/SCTP ports pass by the mesh.
    protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use messages::*;

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
