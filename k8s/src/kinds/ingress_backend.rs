//! OSM's `policy.openservicemesh.io/v1alpha1` IngressBackend: which clients outside the mesh (an ingress
//! controller, by its Service's endpoints or an address range; over HTTPS also by its certificate's
//! principal) may reach which backend Services of the object's namespace, on the port their pods listen
//! on. Without one, a meshed pod accepts mesh mTLS only.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{Cidr, IngressSource, IngressTarget, Kind, MeshObject, ServiceKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::{ConvertError, NameRule, check_name, err, name_ns};

/// `policy.openservicemesh.io/v1alpha1` IngressBackend.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.openservicemesh.io",
    version = "v1alpha1",
    kind = "IngressBackend",
    plural = "ingressbackends",
    namespaced,
    shortname = "ingressbackend",
    status = "IngressBackendStatus",
    printcolumn = r#"{"name":"Status","type":"string","description":"Current status of the IngressBackend policy.","jsonPath":".status.currentStatus"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressBackendSpec {
    pub backends: Vec<BackendSpec>,
    pub sources: Vec<SourceSpec>,
    /// References to other resources (OSM reserves it; not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<MatchSpec>>,
}

/// Written by the controller: `committed`, or `error` and why.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressBackendStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    /// The backend Service (in the IngressBackend's namespace).
    pub name: String,
    pub port: BackendPortSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendPortSpec {
    /// The port the backend's pods listen on (the Service's target port).
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
    /// `http` or `https`.
    pub protocol: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsSpec {
    pub skip_client_cert_validation: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni_hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// `Service`, `IPRange` or `AuthenticatedPrincipal`.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

/// The IngressBackend in the model, with OSM's validation; every problem is named at once.
pub fn convert(o: &IngressBackend) -> Result<messages::IngressBackend, ConvertError> {
    let (namespace, name, label) = name_ns("IngressBackend", &o.metadata, true)?;
    let spec = &o.spec;
    let mut problems = Vec::new();
    let mut sources = Vec::new();
    for (i, s) in spec.sources.iter().enumerate() {
        let field = format!("spec.sources[{i}]");
        match s.kind.as_str() {
            "Service" => {
                let Some(ns) = s.namespace.as_deref().filter(|n| !n.is_empty()) else {
                    problems.push(format!("{field}: a Service source needs a namespace"));
                    continue;
                };
                match (check_name(NameRule::Dns1035Label, &s.name), check_name(NameRule::Dns1123Label, ns)) {
                    (Ok(()), Ok(())) => sources.push(IngressSource::Service(ServiceKey::new(ns, s.name.clone()))),
                    (Err(e), _) => problems.push(format!("{field}.name: {e}")),
                    (_, Err(e)) => problems.push(format!("{field}.namespace: {e}")),
                }
            }
            "IPRange" => match Cidr::parse(&s.name) {
                Ok(c) => sources.push(IngressSource::IpRange(c)),
                Err(e) => problems.push(format!("{field}.name: {e}")),
            },
            "AuthenticatedPrincipal" if !s.name.trim().is_empty() => {
                sources.push(IngressSource::AuthenticatedPrincipal(s.name.trim().to_owned()));
            }
            "AuthenticatedPrincipal" => problems.push(format!("{field}.name is empty")),
            other => {
                problems.push(format!("{field}.kind {other:?} is not one of Service, IPRange, AuthenticatedPrincipal"))
            }
        }
    }
    let principals = sources.iter().any(|s| matches!(s, IngressSource::AuthenticatedPrincipal(_)));
    let mut backends: Vec<IngressTarget> = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let field = format!("spec.backends[{i}]");
        if let Err(e) = check_name(NameRule::Dns1035Label, &b.name) {
            problems.push(format!("{field}.name: {e}"));
            continue;
        }
        let Some(port) = u16::try_from(b.port.number).ok().filter(|p| *p > 0) else {
            problems.push(format!("{field}.port.number {} is not a port (1-65535)", b.port.number));
            continue;
        };
        let https = match b.port.protocol.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => {
                problems.push(format!("{field}.port.protocol {other:?} is not http or https"));
                continue;
            }
        };
        let skip = b.tls.as_ref().is_some_and(|t| t.skip_client_cert_validation);
        if https && !skip && !principals {
            problems.push(format!(
                "{field}: HTTPS with client-certificate validation needs an AuthenticatedPrincipal source (or \
                 tls.skipClientCertValidation: true)"
            ));
            continue;
        }
        if backends.iter().any(|t| t.service == b.name && t.port == port) {
            problems.push(format!("{field}: {}:{port} is listed twice", b.name));
            continue;
        }
        let sni_hosts = b.tls.as_ref().and_then(|t| t.sni_hosts.clone()).unwrap_or_default();
        backends.push(IngressTarget {
            service: b.name.clone(),
            port,
            https,
            skip_client_cert_validation: skip,
            sni_hosts: sni_hosts.into_iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect(),
        });
    }
    if spec.backends.is_empty() {
        problems.push("spec.backends is empty".to_owned());
    }
    if !problems.is_empty() {
        return Err(err(&label, problems.join("; ")));
    }
    Ok(messages::IngressBackend { namespace, name, backends, sources })
}

impl MeshKind for IngressBackend {
    const KIND: Kind = Kind::IngressBackend;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ib(spec: serde_json::Value) -> Result<messages::IngressBackend, ConvertError> {
        let o: IngressBackend = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.openservicemesh.io/v1alpha1", "kind": "IngressBackend",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        convert(&o)
    }

    #[test]
    fn osms_examples_read_as_written() {
        let http = ib(serde_json::json!({
            "backends": [{"name": "web", "port": {"number": 8080, "protocol": "http"}}],
            "sources": [
                {"kind": "Service", "name": "ingress-nginx", "namespace": "ingress"},
                {"kind": "IPRange", "name": "10.250.0.0/16"}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(http.backends[0].port, 8080);
        assert!(!http.backends[0].https);
        assert_eq!(http.sources[0], IngressSource::Service(ServiceKey::new("ingress", "ingress-nginx")));
        assert_eq!(
            http.sources[1].clone(),
            IngressSource::IpRange(Cidr::parse("10.250.0.0/16").unwrap_or_else(|e| panic!("{e}")))
        );
        let https = ib(serde_json::json!({
            "backends": [{"name": "web", "port": {"number": 8443, "protocol": "HTTPS"},
                          "tls": {"skipClientCertValidation": false, "sniHosts": ["web.shop.svc.cluster.local"]}}],
            "sources": [{"kind": "AuthenticatedPrincipal", "name": "ingress.osm-system.cluster.local"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(https.backends[0].https && !https.backends[0].skip_client_cert_validation);
    }

    #[test]
    fn osms_rules_are_enforced_with_every_problem_named() {
        let bad = ib(serde_json::json!({
            "backends": [
                {"name": "web", "port": {"number": 8443, "protocol": "https"}},
                {"name": "web", "port": {"number": 8080, "protocol": "grpc"}}
            ],
            "sources": [
                {"kind": "Service", "name": "ingress"},
                {"kind": "IPRange", "name": "10.0.0.300/8"},
                {"kind": "Pod", "name": "x"}
            ]
        }))
        .unwrap_err()
        .to_string();
        for named in [
            "IngressBackend shop/web",
            "sources[0]: a Service source needs a namespace",
            "sources[1].name",
            "sources[2].kind \"Pod\"",
            "backends[0]: HTTPS with client-certificate validation needs an AuthenticatedPrincipal",
            "backends[1].port.protocol \"grpc\"",
        ] {
            assert!(bad.contains(named), "{named}: {bad}");
        }
    }
}
