//! OSM's `config.openservicemesh.io/v1alpha2` MeshConfig: mesh-wide settings, with OSM's sections and names.
//! On a cluster the one named `osm-mesh-config` in the control plane's namespace is read.

use std::net::IpAddr;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{Kind, MeshObject};
use messages::{MeshConfig as Model, TracingSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{NameRule, check_name, err, name_ns};
use crate::watch::MESH_CONFIG_NAME;

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

/// `traffic.inboundExternalAuthorization`, with OSM's ranges and defaults (not acted on: reported so).
fn ext_authz(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "properties": {
            "enable": {"type": "boolean"},
            "address": {"type": "string"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "statPrefix": {"type": "string", "default": "inboundExtAuthz"},
            "timeout": {"type": "string", "default": "1s"},
            "failureModeAllow": {"type": "boolean"}
        }
    })
}

macro_rules! optional_fields {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        $(#[$m])*
        pub struct $name {
            $(
                $(#[$fm])*
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
        #[schemars(extend("enum" = ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]))]
        log_level: String,
        envoy_image: String,
        envoy_windows_image: String,
        init_container_image: String,
        max_data_plane_connections: i64,
        config_resync_interval: String,
        #[schemars(schema_with = "crate::crds::open_object")]
        resources: serde_json::Value,
        #[schemars(extend("enum" = ["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"], "default" = "TLSv1_2"))]
        tls_min_protocol_version: String,
        #[schemars(extend("enum" = ["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"], "default" = "TLSv1_3"))]
        tls_max_protocol_version: String,
        cipher_suites: Vec<String>,
        ecdh_curves: Vec<String>,
        #[schemars(extend("enum" = ["Localhost", "PodIP"], "default" = "Localhost"))]
        local_proxy_mode: String,
    }
);

optional_fields!(
    /// `spec.traffic`.
    TrafficSpec {
        enable_egress: bool,
        enable_permissive_traffic_policy_mode: bool,
        // OSM spells the acronym in capitals, which camelCase would not produce.
        #[serde(rename = "outboundIPRangeExclusionList")]
        #[schemars(inner(regex(pattern = r"((?:\d{1,3}\.){3}\d{1,3})\/(\d{1,2})$")))]
        outbound_ip_range_exclusion_list: Vec<String>,
        #[serde(rename = "outboundIPRangeInclusionList")]
        #[schemars(inner(regex(pattern = r"((?:\d{1,3}\.){3}\d{1,3})\/(\d{1,2})$")))]
        outbound_ip_range_inclusion_list: Vec<String>,
        #[schemars(inner(range(min = 1, max = 65535)))]
        outbound_port_exclusion_list: Vec<i64>,
        #[schemars(inner(range(min = 1, max = 65535)))]
        inbound_port_exclusion_list: Vec<i64>,
        network_interface_exclusion_list: Vec<String>,
        #[schemars(schema_with = "ext_authz")]
        inbound_external_authorization: serde_json::Value,
    }
);

optional_fields!(
    /// `spec.observability`.
    ObservabilitySpec {
        osm_log_level: String,
        enable_debug_server: bool,
        #[schemars(schema_with = "crate::crds::open_object")]
        tracing: serde_json::Value,
    }
);

optional_fields!(
    /// `spec.certificate`.
    #[schemars(extend("required" = ["serviceCertValidityDuration", "certKeyBitSize"]))]
    CertificateSpec {
        service_cert_validity_duration: String,
        cert_key_bit_size: i64,
        #[schemars(schema_with = "crate::crds::open_object")]
        ingress_gateway: serde_json::Value,
    }
);

optional_fields!(
    /// `spec.featureFlags`.
    FeatureFlags {
        #[serde(rename = "enableWASMStats")]
        enable_wasm_stats: bool,
        enable_egress_policy: bool,
        enable_snapshot_cache_mode: bool,
        enable_async_proxy_service_mapping: bool,
        enable_ingress_backend_policy: bool,
        enable_envoy_active_health_checks: bool,
        enable_retry_policy: bool,
        enable_mesh_root_certificate: bool,
        /// Deprecated by OSM and no longer used; accepted so OSM's MeshConfigs apply.
        enable_multicluster_mode: bool,
    }
);

impl FeatureFlags {
    /// Every flag by OSM's name, with OSM's default where this one leaves it unset.
    pub fn resolved(&self) -> Vec<(String, bool)> {
        let osm = [
            ("enableWASMStats", self.enable_wasm_stats, true),
            ("enableEgressPolicy", self.enable_egress_policy, true),
            ("enableSnapshotCacheMode", self.enable_snapshot_cache_mode, false),
            ("enableAsyncProxyServiceMapping", self.enable_async_proxy_service_mapping, false),
            ("enableIngressBackendPolicy", self.enable_ingress_backend_policy, true),
            ("enableEnvoyActiveHealthChecks", self.enable_envoy_active_health_checks, false),
            ("enableRetryPolicy", self.enable_retry_policy, false),
            ("enableMeshRootCertificate", self.enable_mesh_root_certificate, false),
        ];
        osm.into_iter().map(|(name, set, default)| (name.to_owned(), set.unwrap_or(default))).collect()
    }
}

/// MeshConfig fields the controller acts on; every other field that is set (to another value than OSM's
/// default, see [`OSM_DEFAULTS`]) is reported as not acted on.
pub const MESH_CONFIG_ACTED_ON: &[&str] = &[
    "featureFlags.enableRetryPolicy",
    "traffic.enableEgress",
    "traffic.enablePermissiveTrafficPolicyMode",
    "certificate.serviceCertValidityDuration",
    "certificate.certKeyBitSize",
    "certificate.ingressGateway",
    "observability.tracing",
    "observability.enableDebugServer",
    "observability.osmLogLevel",
    // Read by the sidecar injector when it builds a pod (they apply to pods created afterwards).
    "sidecar.enablePrivilegedInitContainer",
    "sidecar.logLevel",
    "sidecar.envoyImage",
    "sidecar.initContainerImage",
    "sidecar.resources",
    "traffic.outboundIPRangeExclusionList",
    "traffic.outboundIPRangeInclusionList",
    "traffic.outboundPortExclusionList",
    "traffic.inboundPortExclusionList",
    "traffic.networkInterfaceExclusionList",
];

/// OSM's defaults of fields not acted on whose default is what the mesh does anyway (no limit on
/// sidecars, no periodic resync, Envoy reaching the application on localhost, TLS 1.2 to 1.3): set to
/// these, they change nothing and are not reported.
pub const OSM_DEFAULTS: &[(&str, &str)] = &[
    ("sidecar.maxDataPlaneConnections", "0"),
    ("sidecar.configResyncInterval", "\"0s\""),
    ("sidecar.localProxyMode", "\"Localhost\""),
    ("sidecar.tlsMinProtocolVersion", "\"TLSv1_2\""),
    ("sidecar.tlsMaxProtocolVersion", "\"TLSv1_3\""),
    ("sidecar.cipherSuites", "[]"),
    ("sidecar.ecdhCurves", "[]"),
];

impl MeshConfigSpec {
    /// The dotted paths of the fields that are set, e.g. `sidecar.logLevel`.
    pub fn set_fields(&self) -> Vec<String> {
        self.set_values().into_iter().map(|(f, _)| f).collect()
    }

    /// Each field that is set, with its value as JSON.
    fn set_values(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(self) {
            for (section, fields) in sections {
                match fields {
                    serde_json::Value::Object(fields) => {
                        out.extend(fields.iter().map(|(f, v)| (format!("{section}.{f}"), v.to_string())));
                    }
                    other => out.push((section, other.to_string())),
                }
            }
        }
        out
    }

    /// Fields set in this MeshConfig that the controller does not act on yet (and that are not at OSM's
    /// default, which is what the mesh does anyway).
    pub fn not_acted_on(&self) -> Vec<String> {
        self.set_values()
            .into_iter()
            .filter(|(f, _)| !MESH_CONFIG_ACTED_ON.contains(&f.as_str()))
            .filter(|(f, v)| !OSM_DEFAULTS.contains(&(f.as_str(), v.as_str())))
            .map(|(f, _)| f)
            .collect()
    }
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
fn mesh_config_problems(spec: &MeshConfigSpec) -> Vec<String> {
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

pub fn convert(o: &MeshConfig) -> Result<Model, ConvertError> {
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
    let ingress_gateway = match o.spec.certificate.as_ref().and_then(|c| c.ingress_gateway.as_ref()) {
        None => None,
        Some(g) => match ingress_gateway(g) {
            Ok(g) => Some(Box::new(g)),
            Err(e) => {
                problems.push(e);
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
    Ok(Model {
        tracing,
        enable_debug_server: o.spec.observability.as_ref().and_then(|obs| obs.enable_debug_server),
        osm_log_level: o.spec.observability.as_ref().and_then(|obs| obs.osm_log_level.clone()),
        ingress_gateway,
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

/// `certificate.ingressGateway {subjectAltNames, validityDuration, secret {name, namespace}}`, as OSM has
/// it (every field required).
fn ingress_gateway(g: &serde_json::Value) -> Result<messages::IngressGatewayCert, String> {
    let field = |f: &str| format!("spec.certificate.ingressGateway.{f}");
    let Some(g) = g.as_object() else {
        return Err(format!("{} must be an object {{subjectAltNames, validityDuration, secret}}", field("")));
    };
    if let Some(unknown) = g.keys().find(|k| !["subjectAltNames", "validityDuration", "secret"].contains(&k.as_str())) {
        return Err(format!(
            "{} is not a field of ingressGateway (subjectAltNames, validityDuration, secret)",
            field(unknown)
        ));
    }
    let names: Vec<String> = g
        .get("subjectAltNames")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|n| n.as_str()).map(|n| n.trim().to_ascii_lowercase()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return Err(format!("{} needs at least one DNS name", field("subjectAltNames")));
    }
    if let Some(bad) = names.iter().find(|n| check_name(NameRule::Dns1123Subdomain, n).is_err()) {
        return Err(format!("{}: {bad:?} is not a DNS name", field("subjectAltNames")));
    }
    let validity = g
        .get("validityDuration")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{} is required", field("validityDuration")))?;
    let validity = match messages::parse_go_duration(validity) {
        Ok(d) if d < messages::MIN_CERT_VALIDITY => {
            return Err(format!(
                "{} {validity:?} is shorter than the shortest accepted validity, 1m",
                field("validityDuration")
            ));
        }
        Ok(d) if d > certs::LONG_VALIDITY => {
            return Err(format!("{} {validity:?} is longer than ten years", field("validityDuration")));
        }
        Ok(d) => d,
        Err(e) => return Err(format!("{}: {e}", field("validityDuration"))),
    };
    let secret = g
        .get("secret")
        .and_then(|v| v.as_object())
        .ok_or_else(|| format!("{} {{name, namespace}} is required", field("secret")))?;
    let part = |k: &str| -> Result<String, String> {
        let v = secret.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        check_name(if k == "name" { NameRule::Dns1123Subdomain } else { NameRule::Dns1123Label }, v)
            .map_err(|e| format!("{}: {e}", field(&format!("secret.{k}"))))?;
        Ok(v.to_owned())
    };
    Ok(messages::IngressGatewayCert { subject_alt_names: names, validity, secret: (part("namespace")?, part("name")?) })
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
impl MeshKind for MeshConfig {
    const KIND: Kind = Kind::MeshConfig;
    const WATCH: Watch<Self> = Watch::ControlPlaneObject { name: MESH_CONFIG_NAME, api: kube::Api::namespaced };

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }

    /// Beyond conversion: the injector must be able to build pods with it.
    fn admit(&self) -> Result<(), String> {
        crate::inject::InjectorSettings::new("osm", "osm-system")
            .with_mesh_config(&self.spec)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
