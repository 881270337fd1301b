//! The custom resources the mesh reads: SMI (TrafficTarget, HTTPRouteGroup, TCPRoute, TrafficSplit) and
//! OSM's MeshConfig, at the versions OSM serves. The same types are read from the mesh directory and, through
//! kube-rs, from a cluster; field names and defaults follow the upstream CRDs.
//!
//! Specs refuse unknown fields: a misspelt `enablePermissiveTraficPolicyMode` is an error naming the field,
//! not a setting silently left at its default.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The CustomResourceDefinitions of the kinds below, generated from these types: `osm-controller crds`
/// prints them and the Helm chart ships them (a test keeps the two equal).
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![TrafficTarget::crd(), HTTPRouteGroup::crd(), TCPRoute::crd(), TrafficSplit::crd(), MeshConfig::crd()]
}

/// [`definitions`] as one multi-document YAML stream.
pub fn definitions_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_multiple(&definitions())
}

/// `access.smi-spec.io/v1alpha3` TrafficTarget: who (`sources`) may reach whom (`destination`) over which
/// routes (`rules`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "access.smi-spec.io", version = "v1alpha3", kind = "TrafficTarget", namespaced, shortname = "tt")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTargetSpec {
    pub destination: IdentityBindingSubject,
    #[serde(default)]
    pub sources: Vec<IdentityBindingSubject>,
    #[serde(default)]
    pub rules: Vec<TrafficTargetRule>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityBindingSubject {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTargetRule {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub matches: Vec<String>,
}

/// `specs.smi-spec.io/v1alpha4` HTTPRouteGroup: named HTTP request matches that TrafficTargets refer to.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "specs.smi-spec.io", version = "v1alpha4", kind = "HTTPRouteGroup", namespaced, shortname = "htr")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPRouteGroupSpec {
    #[serde(default)]
    pub matches: Vec<HTTPMatch>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPMatch {
    pub name: String,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Option<HTTPHeaders>,
}

/// Header matches: `{name: regex}`, or the list-of-maps form (`- user-agent: ".*Android.*"`) seen in SMI's
/// examples; both mean "every listed header matches".
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum HTTPHeaders {
    Map(BTreeMap<String, String>),
    List(Vec<BTreeMap<String, String>>),
}

impl HTTPHeaders {
    pub fn flatten(&self) -> BTreeMap<String, String> {
        match self {
            HTTPHeaders::Map(m) => m.clone(),
            HTTPHeaders::List(l) => l.iter().flat_map(|m| m.clone()).collect(),
        }
    }
}

/// `specs.smi-spec.io/v1alpha4` TCPRoute: the destination ports a TrafficTarget allows.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "specs.smi-spec.io", version = "v1alpha4", kind = "TCPRoute", namespaced)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPRouteSpec {
    #[serde(default)]
    pub matches: TCPMatch,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ports: Vec<i64>,
}

/// `split.smi-spec.io/v1alpha2` TrafficSplit: traffic for the apex `service` goes to `backends` by weight.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "split.smi-spec.io", version = "v1alpha2", kind = "TrafficSplit", namespaced, shortname = "ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    pub service: String,
    #[serde(default)]
    pub backends: Vec<TrafficSplitBackend>,
    /// Route matches (v1alpha4's field; kept so such objects parse). Not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitBackend {
    pub service: String,
    pub weight: i64,
}

/// `config.openservicemesh.io/v1alpha2` MeshConfig: mesh-wide settings, with OSM's sections and names.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "config.openservicemesh.io",
    version = "v1alpha2",
    kind = "MeshConfig",
    namespaced,
    shortname = "meshconfig"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<ObservabilitySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_flags: Option<FeatureFlags>,
}

macro_rules! optional_fields {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }
    };
}

optional_fields!(
    /// `spec.sidecar`.
    SidecarSpec {
        enable_privileged_init_container: bool,
        log_level: String,
        envoy_image: String,
        envoy_windows_image: String,
        init_container_image: String,
        max_data_plane_connections: i64,
        config_resync_interval: String,
        resources: serde_json::Value,
        tls_min_protocol_version: String,
        tls_max_protocol_version: String,
        cipher_suites: Vec<String>,
        ecdh_curves: Vec<String>,
        local_proxy_mode: String,
    }
);

optional_fields!(
    /// `spec.traffic`.
    TrafficSpec {
        enable_egress: bool,
        enable_permissive_traffic_policy_mode: bool,
        outbound_ip_range_exclusion_list: Vec<String>,
        outbound_ip_range_inclusion_list: Vec<String>,
        outbound_port_exclusion_list: Vec<i64>,
        inbound_port_exclusion_list: Vec<i64>,
        network_interface_exclusion_list: Vec<String>,
        inbound_external_authorization: serde_json::Value,
    }
);

optional_fields!(
    /// `spec.observability`.
    ObservabilitySpec {
        osm_log_level: String,
        enable_debug_server: bool,
        tracing: serde_json::Value,
    }
);

optional_fields!(
    /// `spec.certificate`.
    CertificateSpec {
        service_cert_validity_duration: String,
        cert_key_bit_size: i64,
        ingress_gateway: serde_json::Value,
    }
);

optional_fields!(
    /// `spec.featureFlags`.
    FeatureFlags {
        enable_wasm_stats: bool,
        enable_egress_policy: bool,
        enable_snapshot_cache_mode: bool,
        enable_async_proxy_service_mapping: bool,
        enable_ingress_backend_policy: bool,
        enable_envoy_active_health_checks: bool,
        enable_retry_policy: bool,
        enable_mesh_root_certificate: bool,
    }
);

/// MeshConfig fields the controller acts on; every other field that is set is reported as not acted on.
pub const MESH_CONFIG_ACTED_ON: &[&str] = &["traffic.enableEgress", "traffic.enablePermissiveTrafficPolicyMode"];

impl MeshConfigSpec {
    /// The dotted paths of the fields that are set, e.g. `sidecar.logLevel`.
    pub fn set_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(self) {
            for (section, fields) in sections {
                match fields {
                    serde_json::Value::Object(fields) => {
                        out.extend(fields.keys().map(|f| format!("{section}.{f}")));
                    }
                    _ => out.push(section),
                }
            }
        }
        out
    }

    /// Fields set in this MeshConfig that the controller does not act on yet.
    pub fn not_acted_on(&self) -> Vec<String> {
        self.set_fields().into_iter().filter(|f| !MESH_CONFIG_ACTED_ON.contains(&f.as_str())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn api_versions_are_the_ones_osm_serves() {
        assert_eq!(TrafficTarget::api_version(&()), "access.smi-spec.io/v1alpha3");
        assert_eq!(HTTPRouteGroup::api_version(&()), "specs.smi-spec.io/v1alpha4");
        assert_eq!(TCPRoute::api_version(&()), "specs.smi-spec.io/v1alpha4");
        assert_eq!(TrafficSplit::api_version(&()), "split.smi-spec.io/v1alpha2");
        assert_eq!(MeshConfig::api_version(&()), "config.openservicemesh.io/v1alpha2");
    }

    #[test]
    fn header_matches_accept_both_shapes() {
        let m: HTTPMatch =
            serde_json::from_value(serde_json::json!({"name": "a", "headers": [{"x-a": "1"}, {"host": "b"}]})).unwrap();
        assert_eq!(m.headers.unwrap().flatten().len(), 2);
        let m: HTTPMatch = serde_json::from_value(serde_json::json!({"name": "a", "headers": {"x-a": "1"}})).unwrap();
        assert_eq!(m.headers.unwrap().flatten()["x-a"], "1");
    }

    #[test]
    fn mesh_config_reports_what_it_does_not_act_on_and_refuses_typos() {
        let spec: MeshConfigSpec = serde_json::from_value(serde_json::json!({
            "traffic": {"enablePermissiveTrafficPolicyMode": false, "outboundPortExclusionList": [6379]},
            "sidecar": {"logLevel": "debug"}
        }))
        .unwrap();
        assert_eq!(spec.not_acted_on(), vec!["sidecar.logLevel", "traffic.outboundPortExclusionList"]);
        let typo = serde_json::from_value::<MeshConfigSpec>(serde_json::json!({
            "traffic": {"enablePermissiveTraficPolicyMode": false}
        }));
        assert!(typo.unwrap_err().to_string().contains("enablePermissiveTraficPolicyMode"));
    }
}

#[cfg(test)]
mod definition_tests {
    use super::*;

    #[test]
    fn definitions_are_structural_and_name_osm_plurals() {
        let names: Vec<String> = definitions().iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect();
        assert_eq!(
            names,
            [
                "traffictargets.access.smi-spec.io",
                "httproutegroups.specs.smi-spec.io",
                "tcproutes.specs.smi-spec.io",
                "trafficsplits.split.smi-spec.io",
                "meshconfigs.config.openservicemesh.io"
            ]
        );
        let yaml = definitions_yaml().unwrap_or_default();
        assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 5);
    }
}
