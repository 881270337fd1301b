//! Sidecar injection, the pure part of the mutating webhook: whether a pod gets a sidecar, and the pod
//! it becomes (as a JSON patch) plus the bootstrap Secret it mounts.
//!
//! What a pod gets is [`sidecar::sidecar_for_pod`]'s bundle, the same function the mesh directory's
//! `osm-controller bootstrap` uses: the bootstrap and xDS client certificate go into the Secret
//! `envoy-bootstrap-config-<uuid>` mounted at `/etc/envoy`; the init container `osm-init` runs the bundle's
//! iptables rules; the `envoy` container runs the bundle's command line as uid 1500. The decision and the
//! names follow OSM (`openservicemesh.io/sidecar-injection` on the pod, else on its namespace; label
//! `osm-proxy-uuid`; probe rewriting to 15901–15903).

use std::collections::BTreeMap;

use certs::CertificateAuthority;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use messages::{ENVOY_UID, PROXY_UUID_LABEL, ProxyUuid, ports};
use serde_json::{Value, json};
use sidecar::{InterceptOptions, ProbeKind, ProbeRoute, SidecarOptions};

use crate::crds;
use crate::watch::{IGNORE_LABEL, MONITORED_BY_LABEL};

/// Pod or namespace annotation: `enabled`/`yes`/`true` or `disabled`/`no`/`false`; the pod's wins.
pub const INJECTION_ANNOTATION: &str = "openservicemesh.io/sidecar-injection";
/// Namespace annotation: `enabled` adds Prometheus scrape annotations to injected pods.
pub const METRICS_ANNOTATION: &str = "openservicemesh.io/metrics";
pub const OUTBOUND_PORT_EXCLUSIONS: &str = "openservicemesh.io/outbound-port-exclusion-list";
pub const INBOUND_PORT_EXCLUSIONS: &str = "openservicemesh.io/inbound-port-exclusion-list";
pub const OUTBOUND_IP_EXCLUSIONS: &str = "openservicemesh.io/outbound-ip-range-exclusion-list";
pub const OUTBOUND_IP_INCLUSIONS: &str = "openservicemesh.io/outbound-ip-range-inclusion-list";
pub const ENVOY_CONTAINER: &str = "envoy";
pub const INIT_CONTAINER: &str = "osm-init";
/// The container answering rewritten `tcpSocket` probes, and what those probes ask it.
pub const HEALTHCHECK_CONTAINER: &str = "osm-healthcheck";
pub const HEALTHCHECK_PATH: &str = "/osm-healthcheck";
pub const HEALTHCHECK_PORT_HEADER: &str = "Original-Tcp-Port";
/// Not the proxy's uid: connections from uid 1500 to 127.0.0.1 may be sent to the pod IP (podIP mode),
/// and the helper must reach the port exactly as the probe named it.
const HEALTHCHECK_UID: i64 = 65532;
pub const BOOTSTRAP_VOLUME: &str = "envoy-bootstrap-config-volume";
pub const BOOTSTRAP_MOUNT: &str = "/etc/envoy";
/// The node label (and pod nodeSelector key) that names the operating system.
pub const OS_LABEL: &str = "kubernetes.io/os";

/// The bootstrap Secret of a proxy.
pub fn bootstrap_secret_name(uuid: &ProxyUuid) -> String {
    format!("envoy-bootstrap-config-{}", uuid.as_str())
}

/// Why a pod cannot be injected; each has a stable code, shown in the denial.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("E7001: annotation {annotation}={value:?} on {on}: use enabled, yes, true, disabled, no or false")]
    InjectionAnnotation { annotation: &'static str, value: String, on: String },
    #[error("E7002: annotation {annotation}={value:?}: {reason}")]
    ExclusionList { annotation: &'static str, value: String, reason: String },
    #[error("E7003: cannot build the sidecar: {0}")]
    Sidecar(#[from] sidecar::SidecarError),
    #[error("E7004: container {container:?}: {probe} probe: {reason}")]
    Probe { container: String, probe: &'static str, reason: String },
    #[error("E7005: MeshConfig: {0}")]
    MeshConfig(String),
    #[error("E7006: the pod has no name and no generateName")]
    Unnamed,
    #[error(
        "E7007: pod {pod} already carries a sidecar (osm-proxy-uuid {uuid}): a copy of an injected pod would share \
         its proxy identity; create it from the original spec, without the envoy and osm-init containers and the label"
    )]
    AlreadyInjected { pod: String, uuid: String },
    #[error(
        "E7008: pod {pod} runs on Windows (nodeSelector kubernetes.io/os=windows): the mesh has no Windows sidecar; \
         disable injection for it (annotation openservicemesh.io/sidecar-injection: disabled)"
    )]
    Windows { pod: String },
}

/// What the injector puts into pods; from the command line and the MeshConfig's `sidecar` and `traffic`
/// sections.
#[derive(Debug, Clone)]
pub struct InjectorSettings {
    pub mesh_name: String,
    pub osm_namespace: String,
    pub envoy_image: String,
    pub init_image: String,
    /// The image of the `osm-healthcheck` container, added to pods with `tcpSocket` probes (it must
    /// have `/osm-healthcheck`).
    pub healthcheck_image: String,
    pub privileged_init: bool,
    pub log_level: String,
    pub resources: Option<core::ResourceRequirements>,
    /// Mesh-wide interception exclusions; pod annotations add to them.
    pub intercept: InterceptOptions,
    /// Where sidecars reach the ADS server.
    pub controller_host: String,
    pub controller_port: u16,
    pub ads_api: sidecar::AdsApi,
}

impl InjectorSettings {
    pub fn new(mesh_name: &str, osm_namespace: &str) -> Self {
        Self {
            mesh_name: mesh_name.to_owned(),
            osm_namespace: osm_namespace.to_owned(),
            envoy_image: "envoyproxy/envoy:v1.40.0".to_owned(),
            init_image: "openservicemesh/init:v1.2.0".to_owned(),
            healthcheck_image: "openservicemesh/osm-healthcheck:v1.2.0".to_owned(),
            privileged_init: false,
            log_level: "error".to_owned(),
            resources: None,
            intercept: InterceptOptions::default(),
            controller_host: format!("osm-controller.{osm_namespace}.svc.cluster.local"),
            controller_port: ports::ADS,
            ads_api: sidecar::AdsApi::Sotw,
        }
    }

    /// These settings with the MeshConfig's overrides.
    pub fn with_mesh_config(&self, mc: &crds::MeshConfigSpec) -> Result<Self, InjectError> {
        let mut s = self.clone();
        if let Some(sc) = &mc.sidecar {
            if let Some(v) = &sc.envoy_image {
                s.envoy_image = v.clone();
            }
            if let Some(v) = &sc.init_container_image {
                s.init_image = v.clone();
            }
            if let Some(v) = sc.enable_privileged_init_container {
                s.privileged_init = v;
            }
            if let Some(v) = &sc.log_level {
                s.log_level = v.clone();
            }
            if let Some(v) = &sc.resources {
                s.resources = Some(
                    serde_json::from_value(v.clone())
                        .map_err(|e| InjectError::MeshConfig(format!("sidecar.resources: {e}")))?,
                );
            }
        }
        if let Some(t) = &mc.traffic {
            let ports = |field: &str, v: &Option<Vec<i64>>| -> Result<Vec<u16>, InjectError> {
                v.iter()
                    .flatten()
                    .map(|p| {
                        u16::try_from(*p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| InjectError::MeshConfig(format!("traffic.{field}: {p} is not a port")))
                    })
                    .collect()
            };
            s.intercept.outbound_port_exclusions = ports("outboundPortExclusionList", &t.outbound_port_exclusion_list)?;
            s.intercept.inbound_port_exclusions = ports("inboundPortExclusionList", &t.inbound_port_exclusion_list)?;
            s.intercept.outbound_ip_range_exclusions = t.outbound_ip_range_exclusion_list.clone().unwrap_or_default();
            s.intercept.outbound_ip_range_inclusions = t.outbound_ip_range_inclusion_list.clone().unwrap_or_default();
            s.intercept.network_interface_exclusions = t.network_interface_exclusion_list.clone().unwrap_or_default();
        }
        Ok(s)
    }
}

/// Whether a pod gets a sidecar, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(String),
}

pub(crate) fn switch(annotation: &'static str, value: &str, on: String) -> Result<bool, InjectError> {
    match value.to_ascii_lowercase().as_str() {
        "enabled" | "yes" | "true" => Ok(true),
        "disabled" | "no" | "false" => Ok(false),
        _ => Err(InjectError::InjectionAnnotation { annotation, value: value.to_owned(), on }),
    }
}

pub(crate) fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// Decides injection like OSM: never for host-network pods, system namespaces, the control plane's
/// namespace or namespaces outside the mesh; then the pod's annotation, else the namespace's.
pub fn decide(pod: &core::Pod, ns: &core::Namespace, s: &InjectorSettings) -> Result<Decision, InjectError> {
    let skip = |why: &str| Ok(Decision::Skip(why.to_owned()));
    let ns_name = ns.metadata.name.clone().unwrap_or_default();
    if pod.spec.as_ref().and_then(|sp| sp.host_network) == Some(true) {
        return skip("host-network pods share the node's network and cannot be intercepted");
    }
    if ["kube-system", "kube-public", s.osm_namespace.as_str()].contains(&ns_name.as_str()) {
        return skip("system and control-plane namespaces are never injected");
    }
    let label = |k: &str| ns.metadata.labels.as_ref().and_then(|l| l.get(k)).map(String::as_str);
    if label(MONITORED_BY_LABEL) != Some(s.mesh_name.as_str()) || label(IGNORE_LABEL) == Some("true") {
        return skip("the namespace is not in this mesh");
    }
    let pod_name = pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default();
    let on_pod = annotation(&pod.metadata, INJECTION_ANNOTATION)
        .map(|v| switch(INJECTION_ANNOTATION, v, format!("pod {ns_name}/{pod_name}")))
        .transpose()?;
    let on_ns = annotation(&ns.metadata, INJECTION_ANNOTATION)
        .map(|v| switch(INJECTION_ANNOTATION, v, format!("namespace {ns_name}")))
        .transpose()?;
    match on_pod.or(on_ns) {
        Some(true) => {
            // A copy of an injected pod (its spec taken from a running one) would share that pod's proxy
            // UUID, and so its identity and bootstrap Secret: refused rather than served twice.
            let uuid = pod.metadata.labels.as_ref().and_then(|l| l.get(PROXY_UUID_LABEL));
            let has_envoy = pod.spec.as_ref().is_some_and(|sp| sp.containers.iter().any(|c| c.name == ENVOY_CONTAINER));
            if let Some(uuid) = uuid.filter(|_| has_envoy) {
                return Err(InjectError::AlreadyInjected { pod: format!("{ns_name}/{pod_name}"), uuid: uuid.clone() });
            }
            let os = pod.spec.as_ref().and_then(|sp| sp.node_selector.as_ref()).and_then(|n| n.get(OS_LABEL));
            if os.is_some_and(|os| os.eq_ignore_ascii_case("windows")) {
                return Err(InjectError::Windows { pod: format!("{ns_name}/{pod_name}") });
            }
            Ok(Decision::Inject)
        }
        Some(false) => skip("injection is disabled by annotation"),
        None => skip("neither the pod nor its namespace enables injection"),
    }
}

/// The injected pod, the patch from the submitted one to it, and the Secret it mounts.
#[derive(Debug, Clone)]
pub struct Injection {
    pub uuid: ProxyUuid,
    pub pod: core::Pod,
    pub patch: json_patch::Patch,
    pub secret: core::Secret,
    /// Things the user should know (shown by kubectl as warnings).
    pub warnings: Vec<String>,
}

fn exclusion_ports(pod: &core::Pod, key: &'static str) -> Result<Vec<u16>, InjectError> {
    let Some(v) = annotation(&pod.metadata, key) else { return Ok(Vec::new()) };
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| InjectError::ExclusionList {
                annotation: key,
                value: v.to_owned(),
                reason: format!("{p:?} is not a port (1-65535)"),
            })
        })
        .collect()
}

fn exclusion_list(pod: &core::Pod, key: &'static str) -> Vec<String> {
    annotation(&pod.metadata, key)
        .map(|v| v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Interception options: the mesh's, plus the pod's annotations.
fn intercept_for(pod: &core::Pod, s: &InjectorSettings) -> Result<InterceptOptions, InjectError> {
    let mut o = s.intercept.clone();
    o.outbound_port_exclusions.extend(exclusion_ports(pod, OUTBOUND_PORT_EXCLUSIONS)?);
    o.inbound_port_exclusions.extend(exclusion_ports(pod, INBOUND_PORT_EXCLUSIONS)?);
    o.outbound_ip_range_exclusions.extend(exclusion_list(pod, OUTBOUND_IP_EXCLUSIONS));
    o.outbound_ip_range_inclusions.extend(exclusion_list(pod, OUTBOUND_IP_INCLUSIONS));
    // Checked now, so a bad CIDR is a denial naming the annotation rather than a broken init container.
    sidecar::iptables_rules(&o).map_err(|e| InjectError::ExclusionList {
        annotation: "openservicemesh.io/outbound-ip-range-*",
        value: format!("{:?} {:?}", o.outbound_ip_range_exclusions, o.outbound_ip_range_inclusions),
        reason: e.to_string(),
    })?;
    o.outbound_port_exclusions.sort_unstable();
    o.outbound_port_exclusions.dedup();
    o.inbound_port_exclusions.sort_unstable();
    o.inbound_port_exclusions.dedup();
    Ok(o)
}

/// The probes of a pod once rewritten: what the sidecar must serve, and whether the `osm-healthcheck`
/// container must answer `tcpSocket` probes.
#[derive(Debug, Default)]
struct RewrittenProbes {
    routes: Vec<ProbeRoute>,
    healthcheck: bool,
    /// Probes that cannot pass the sidecar as they are.
    warnings: Vec<String>,
}

/// Rewrites the application containers' probes so they reach the application past its sidecar:
/// `httpGet` to the sidecar's probe ports, `tcpSocket` to the `osm-healthcheck` container (an `httpGet`
/// on 15904 naming the original port in a header).
fn rewrite_probes(spec: &mut core::PodSpec, not_intercepted: &[u16]) -> Result<RewrittenProbes, InjectError> {
    let mut routes = Vec::new();
    let mut healthcheck = false;
    let mut warnings = Vec::new();
    for c in &mut spec.containers {
        let named: BTreeMap<String, i32> =
            c.ports.iter().flatten().filter_map(|p| p.name.clone().map(|n| (n, p.container_port))).collect();
        let container = c.name.clone();
        for (kind, probe) in [
            (ProbeKind::Liveness, &mut c.liveness_probe),
            (ProbeKind::Readiness, &mut c.readiness_probe),
            (ProbeKind::Startup, &mut c.startup_probe),
        ] {
            let Some(probe) = probe.as_mut() else { continue };
            let timeout_s = probe.timeout_seconds.and_then(|t| u32::try_from(t).ok()).unwrap_or(1);
            let bad = |reason: String| InjectError::Probe { container: container.clone(), probe: kind.name(), reason };
            let resolve = |port: &IntOrString| -> Result<u16, InjectError> {
                let port = match port {
                    IntOrString::Int(p) => *p,
                    IntOrString::String(name) => match name.parse::<i32>() {
                        Ok(p) => p,
                        Err(_) => *named.get(name).ok_or_else(|| bad(format!("port {name:?} is not a named port")))?,
                    },
                };
                u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| bad(format!("port {port}")))
            };
            if let Some(tcp) = probe.tcp_socket.take() {
                let port = resolve(&tcp.port)?;
                probe.http_get = Some(core::HTTPGetAction {
                    port: IntOrString::Int(i32::from(ports::HEALTHCHECK)),
                    path: Some(HEALTHCHECK_PATH.to_owned()),
                    http_headers: Some(vec![core::HTTPHeader {
                        name: HEALTHCHECK_PORT_HEADER.to_owned(),
                        value: port.to_string(),
                    }]),
                    ..Default::default()
                });
                healthcheck = true;
                continue;
            }
            if let Some(grpc) = &probe.grpc {
                if u16::try_from(grpc.port).is_ok_and(|p| not_intercepted.contains(&p)) {
                    continue;
                }
                // As in OSM, left alone: the kubelet's plain-text gRPC reaches the sidecar's inbound listener,
                // which accepts mesh mTLS only, unless the port is excluded from interception.
                warnings.push(format!(
                    "container {container:?}: the {} gRPC probe on port {} passes through the sidecar, which \
                     accepts mesh mTLS only; list the port in the pod annotation {INBOUND_PORT_EXCLUSIONS}",
                    kind.name(),
                    grpc.port
                ));
                continue;
            }
            let Some(get) = probe.http_get.as_mut() else { continue };
            let port = resolve(&get.port)?;
            let https = get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            if https && routes.iter().any(|r: &ProbeRoute| r.kind == kind && r.https) {
                return Err(bad("only one HTTPS probe of each kind can pass through the sidecar".to_owned()));
            }
            let route = ProbeRoute {
                kind,
                container: container.clone(),
                port,
                path: get.path.clone().unwrap_or_else(|| "/".to_owned()),
                https,
                timeout_s,
            };
            get.port = IntOrString::Int(i32::from(kind.port()));
            get.path = Some(route.rewritten_path());
            routes.push(route);
        }
    }
    Ok(RewrittenProbes { routes, healthcheck, warnings })
}

/// The annotations that have Prometheus scrape a sidecar (and the controller open its metrics listener):
/// on pods injected in a namespace with metrics enabled, and on running ones by `osm metrics enable`.
pub fn prometheus_annotations() -> [(&'static str, String); 3] {
    [
        (crate::convert::PROMETHEUS_SCRAPE_ANNOTATION, "true".to_owned()),
        ("prometheus.io/port", ports::PROMETHEUS.to_string()),
        ("prometheus.io/path", "/stats/prometheus".to_owned()),
    ]
}

/// The helper's log level for the sidecar's (Envoy's names: `warning`, `critical`).
fn healthcheck_verbosity(envoy_level: &str) -> &'static str {
    match envoy_level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "off" => "off",
        _ => "error",
    }
}

/// A Kubernetes type from its JSON form; only the settings (an image name, say) can make this fail.
fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, InjectError> {
    serde_json::from_value(v).map_err(|e| InjectError::MeshConfig(format!("building the pod: {e}")))
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// Injects the sidecar into `pod` (created in `namespace`), as proxy `uuid`.
pub fn inject(
    pod: &core::Pod,
    namespace: &str,
    ns: &core::Namespace,
    ca: &CertificateAuthority,
    s: &InjectorSettings,
    uuid: ProxyUuid,
) -> Result<Injection, InjectError> {
    let name = pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).ok_or(InjectError::Unnamed)?;
    let mut out = pod.clone();
    let mut spec = out.spec.take().unwrap_or_default();
    let service_account =
        spec.service_account_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".to_owned());
    let intercept = intercept_for(pod, s)?;
    let RewrittenProbes { routes: probes, healthcheck, warnings } =
        rewrite_probes(&mut spec, &intercept.inbound_port_exclusions)?;
    let opts = SidecarOptions {
        controller_host: s.controller_host.clone(),
        controller_port: s.controller_port,
        ads_api: s.ads_api,
        config_dir: BOOTSTRAP_MOUNT.to_owned(),
        log_level: s.log_level.clone(),
        intercept,
        probes: probes.clone(),
        ..SidecarOptions::default()
    };
    let model = messages::Pod {
        namespace: namespace.to_owned(),
        name,
        labels: BTreeMap::new(),
        service_account: service_account.clone(),
        ip: None,
        proxy_uuid: uuid.clone(),
        container_ports: Vec::new(),
        prometheus_scrape: false,
    };
    let bundle = sidecar::sidecar_for_pod(&model, ca, ca.root_pem(), &opts)?;
    let secret_name = bootstrap_secret_name(&uuid);

    out.metadata.labels.get_or_insert_with(BTreeMap::new).insert(PROXY_UUID_LABEL.to_owned(), uuid.as_str().to_owned());
    if annotation(&ns.metadata, METRICS_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("enabled")) {
        let a = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
        a.extend(prometheus_annotations().map(|(k, v)| (k.to_owned(), v)));
    }
    spec.volumes.get_or_insert_with(Vec::new).push(typed(json!({
        "name": BOOTSTRAP_VOLUME,
        "secret": {"secretName": secret_name, "defaultMode": 0o444}
    }))?);
    let script = format!("iptables-restore --noflush <<'EOF'\n{}EOF\n", bundle.iptables_rules);
    spec.init_containers.get_or_insert_with(Vec::new).push(typed(json!({
        "name": INIT_CONTAINER,
        "image": s.init_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
        "env": [field_env("POD_IP", "status.podIP")],
        "securityContext": {
            "privileged": s.privileged_init,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "capabilities": {"add": ["NET_ADMIN"]}
        }
    }))?);
    let mut container_ports = vec![
        json!({"name": "proxy-admin", "containerPort": ports::ADMIN}),
        json!({"name": "proxy-inbound", "containerPort": ports::INBOUND}),
        json!({"name": "proxy-metrics", "containerPort": ports::PROMETHEUS}),
    ];
    for kind in ProbeKind::ALL {
        if probes.iter().any(|p| p.kind == kind) {
            container_ports.push(json!({"name": format!("{}-port", kind.name()), "containerPort": kind.port()}));
        }
    }
    let mut envoy = json!({
        "name": ENVOY_CONTAINER,
        "image": s.envoy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["envoy"],
        "args": bundle.envoy_args,
        "ports": container_ports,
        "volumeMounts": [{"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_MOUNT, "readOnly": true}],
        "env": [
            field_env("POD_UID", "metadata.uid"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "securityContext": {
            "runAsUser": ENVOY_UID,
            "runAsGroup": ENVOY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}
        }
    });
    if let Some(r) = &s.resources {
        envoy["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    spec.containers.push(typed(envoy)?);
    if healthcheck {
        spec.containers.push(typed(json!({
            "name": HEALTHCHECK_CONTAINER,
            "image": s.healthcheck_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/osm-healthcheck"],
            "args": ["--verbosity", healthcheck_verbosity(&s.log_level)],
            "ports": [{"name": "osm-healthcheck", "containerPort": ports::HEALTHCHECK}],
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": HEALTHCHECK_UID,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}
            }
        }))?);
    }
    out.spec = Some(spec);

    let before = serde_json::to_value(pod).unwrap_or(Value::Null);
    let after = serde_json::to_value(&out).unwrap_or(Value::Null);
    let patch = json_patch::diff(&before, &after);

    let data: BTreeMap<String, ByteString> = bundle
        .files()
        .into_iter()
        .map(|(file, contents, _)| (file.to_owned(), ByteString(contents.as_bytes().to_vec())))
        .collect();
    let secret = core::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(secret_name),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "openservicemesh.io".to_owned()),
                ("app.kubernetes.io/instance".to_owned(), s.mesh_name.clone()),
                (PROXY_UUID_LABEL.to_owned(), uuid.as_str().to_owned()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Ok(Injection { uuid, pod: out, patch, secret, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: Value, annotations: Value) -> core::Namespace {
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": labels, "annotations": annotations}}))
            .unwrap_or_default()
    }

    fn monitored(annotations: Value) -> core::Namespace {
        ns(json!({"openservicemesh.io/monitored-by": "osm"}), annotations)
    }

    fn pod(extra: Value) -> core::Pod {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{
                    "name": "app", "image": "app",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"}},
                    "readinessProbe": {"httpGet": {"port": 8443, "path": "/ready", "scheme": "HTTPS"}},
                    "startupProbe": {"tcpSocket": {"port": 8080}}
                }]
            }
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap_or_default()
    }

    fn settings() -> InjectorSettings {
        InjectorSettings::new("osm", "osm-system")
    }

    #[test]
    fn the_pod_annotation_wins_over_the_namespace() {
        let on = monitored(json!({INJECTION_ANNOTATION: "enabled"}));
        assert_eq!(decide(&pod(json!({})), &on, &settings()).ok(), Some(Decision::Inject));
        let opted_out = pod(json!({"metadata": {"annotations": {INJECTION_ANNOTATION: "disabled"}}}));
        assert!(matches!(decide(&opted_out, &on, &settings()), Ok(Decision::Skip(_))));
        let off = monitored(json!({}));
        let opted_in = pod(json!({"metadata": {"annotations": {INJECTION_ANNOTATION: "yes"}}}));
        assert_eq!(decide(&opted_in, &off, &settings()).ok(), Some(Decision::Inject));
        assert!(matches!(decide(&pod(json!({})), &off, &settings()), Ok(Decision::Skip(_))));
        let typo = pod(json!({"metadata": {"annotations": {INJECTION_ANNOTATION: "enbaled"}}}));
        let e = decide(&typo, &on, &settings()).unwrap_err().to_string();
        assert!(e.starts_with("E7001") && e.contains("shop/web-1"), "{e}");
    }

    #[test]
    fn never_host_network_system_or_foreign_namespaces() {
        let on = json!({INJECTION_ANNOTATION: "enabled"});
        let host = pod(json!({"spec": {"hostNetwork": true}}));
        assert!(matches!(decide(&host, &monitored(on.clone()), &settings()), Ok(Decision::Skip(_))));
        let other_mesh = ns(json!({"openservicemesh.io/monitored-by": "other"}), on.clone());
        assert!(matches!(decide(&pod(json!({})), &other_mesh, &settings()), Ok(Decision::Skip(_))));
        let ignored = ns(json!({"openservicemesh.io/monitored-by": "osm", "openservicemesh.io/ignore": "true"}), on);
        assert!(matches!(decide(&pod(json!({})), &ignored, &settings()), Ok(Decision::Skip(_))));
    }

    #[test]
    fn the_injected_pod_carries_the_sidecar_and_its_probes() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap_or_else(|e| panic!("{e}"));
        let uuid = ProxyUuid::parse("11111111-2222-3333-4444-555555555555").unwrap_or_else(|e| panic!("{e}"));
        let p = pod(json!({"metadata": {"annotations": {OUTBOUND_PORT_EXCLUSIONS: "5432, 6379"}}}));
        let metrics = monitored(json!({METRICS_ANNOTATION: "enabled"}));
        let inj = inject(&p, "shop", &metrics, &ca, &settings(), uuid).unwrap_or_else(|e| panic!("{e}"));
        let spec = inj.pod.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["app", "envoy", "osm-healthcheck"],
            "a tcpSocket probe brings the osm-healthcheck container"
        );
        let envoy = &spec.containers[1];
        assert_eq!(envoy.security_context.as_ref().and_then(|s| s.run_as_user), Some(1500));
        assert_eq!(envoy.args.as_ref().map(|a| a[3].as_str()), Some("/etc/envoy/bootstrap.yaml"));
        let init = &spec.init_containers.as_ref().unwrap_or(&Vec::new())[0].clone();
        let script = init.command.as_ref().map(|c| c[2].clone()).unwrap_or_default();
        assert!(script.contains("--dports 5432,6379 -j RETURN"), "{script}");
        let app = &spec.containers[0];
        let live = app.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).cloned().unwrap_or_default();
        assert_eq!((live.port, live.path.as_deref()), (IntOrString::Int(15901), Some("/osm-liveness-probe/app")));
        let ready = app.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).cloned().unwrap_or_default();
        assert_eq!((ready.port, ready.path.as_deref()), (IntOrString::Int(15902), Some("/ready")));
        // The tcpSocket probe becomes an httpGet to osm-healthcheck naming the original port.
        let startup = app.startup_probe.as_ref().and_then(|p| p.http_get.as_ref()).cloned().unwrap_or_default();
        assert!(app.startup_probe.as_ref().is_some_and(|p| p.tcp_socket.is_none()));
        assert_eq!((startup.port, startup.path.as_deref()), (IntOrString::Int(15904), Some("/osm-healthcheck")));
        let headers = startup.http_headers.unwrap_or_default();
        assert_eq!(
            headers.iter().map(|h| (h.name.as_str(), h.value.as_str())).collect::<Vec<_>>(),
            [("Original-Tcp-Port", "8080")]
        );
        let helper = &spec.containers[2];
        assert_eq!(helper.command.as_deref(), Some(&["/osm-healthcheck".to_owned()][..]));
        assert_eq!(helper.args.as_deref(), Some(&["--verbosity".to_owned(), "error".to_owned()][..]));
        assert_eq!(helper.ports.as_ref().map(|p| p[0].container_port), Some(15904));
        assert!(inj.warnings.is_empty(), "{:?}", inj.warnings);

        // A gRPC probe is left as it is, and the user told why it fails unless its port is not intercepted.
        let grpc = pod(json!({"spec": {"containers": [{"name": "app", "livenessProbe": {"grpc": {"port": 9000}}}]}}));
        let grpc_uuid = ProxyUuid::derived("shop", "grpc");
        let warned =
            inject(&grpc, "shop", &metrics, &ca, &settings(), grpc_uuid.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert!(warned.warnings.len() == 1 && warned.warnings[0].contains("port 9000"), "{:?}", warned.warnings);
        let mut excluded = grpc.clone();
        excluded.metadata.annotations = Some(BTreeMap::from([(INBOUND_PORT_EXCLUSIONS.to_owned(), "9000".to_owned())]));
        let quiet = inject(&excluded, "shop", &metrics, &ca, &settings(), grpc_uuid).unwrap_or_else(|e| panic!("{e}"));
        assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
        let labels = inj.pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(PROXY_UUID_LABEL).map(String::as_str), Some("11111111-2222-3333-4444-555555555555"));
        let ann = inj.pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("prometheus.io/port").map(String::as_str), Some("15010"));

        // The Secret holds what the bootstrap names, and the bootstrap serves the rewritten probes.
        let data = inj.secret.data.clone().unwrap_or_default();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "bootstrap.yaml",
                "cacert.pem",
                "sds_cert.pem",
                "sds_key.pem",
                "tls_certificate_sds_secret.yaml",
                "validation_context_sds_secret.yaml"
            ]
        );
        let boot: Value = serde_json::from_slice(&data["bootstrap.yaml"].0).unwrap_or(Value::Null);
        let listeners = boot["static_resources"]["listeners"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = listeners.iter().filter_map(|l| l["name"].as_str()).collect();
        assert_eq!(names, ["liveness_listener", "readiness_listener"]);
        // The sidecar waits for the application as long as the kubelet waits for the probe.
        let slow = pod(json!({"spec": {"containers": [{"name": "app", "image": "app",
            "livenessProbe": {"httpGet": {"port": 8080, "path": "/healthz"}, "timeoutSeconds": 3}}]}}));
        let uuid2 = ProxyUuid::parse("11111111-2222-3333-4444-555555555556").unwrap_or_else(|e| panic!("{e}"));
        let slow = inject(&slow, "shop", &metrics, &ca, &settings(), uuid2).unwrap_or_else(|e| panic!("{e}"));
        let data = slow.secret.data.clone().unwrap_or_default();
        let boot: Value = serde_json::from_slice(&data["bootstrap.yaml"].0).unwrap_or(Value::Null);
        let text = boot.to_string();
        assert!(text.contains("\"timeout\":\"3s\"") && !text.contains("\"timeout\":\"1s\""), "{text}");

        // The patch turns the submitted pod into the injected one.
        let mut applied = serde_json::to_value(&p).unwrap_or(Value::Null);
        json_patch::patch(&mut applied, &inj.patch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(applied, serde_json::to_value(&inj.pod).unwrap_or(Value::Null));
    }

    #[test]
    fn bad_annotations_are_denials_that_name_them() {
        let ca = CertificateAuthority::generate("cluster.local").unwrap_or_else(|e| panic!("{e}"));
        let on = monitored(json!({}));
        for (key, value) in [(OUTBOUND_PORT_EXCLUSIONS, "80,http"), (OUTBOUND_IP_EXCLUSIONS, "10.0.0.0")] {
            let p = pod(json!({"metadata": {"annotations": {key: value}}}));
            let e = inject(&p, "shop", &on, &ca, &settings(), ProxyUuid::derived("shop", "web-1")).unwrap_err();
            assert!(e.to_string().starts_with("E7002"), "{e}");
        }
    }
}
