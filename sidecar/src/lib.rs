//! What a pod gets when it joins the mesh: the Envoy bootstrap, the xDS client certificate and trust
//! root, the Envoy command line, and the iptables rules of the init container.
//!
//! Data flow: [`sidecar_for_pod`] is the one function that turns a pod (mesh model) and the CA into
//! a [`SidecarBundle`]. The local mesh harness (`testbed`), the `osm-controller bootstrap` command for
//! machines outside Kubernetes, and the Kubernetes injector all call it, so every sidecar starts alike.

use std::fmt::Write as _;
use std::time::Duration;

use certs::{IssuedCert, Issuer};
use messages::{ENVOY_UID, Pod, ProxyId, ports};
use serde_json::{Value, json};

/// Name of the bootstrap's static cluster pointing at the control plane.
pub const CONTROLLER_CLUSTER: &str = "osm-controller";
pub const BOOTSTRAP_FILE: &str = "bootstrap.yaml";
pub const CERT_FILE: &str = "sds_cert.pem";
pub const KEY_FILE: &str = "sds_key.pem";
pub const CA_FILE: &str = "cacert.pem";
/// File-based SDS configurations naming the three files above: Envoy watches the bundle's directory and
/// takes a refreshed client certificate or trust bundle into use without a restart.
pub const TLS_SDS_FILE: &str = "tls_certificate_sds_secret.yaml";
pub const VALIDATION_SDS_FILE: &str = "validation_context_sds_secret.yaml";
const TLS_SDS_SECRET: &str = "tls_sds";
const VALIDATION_SDS_SECRET: &str = "validation_context_sds";

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("pod {0}: cannot issue its xDS client certificate: {1}")]
    Cert(String, certs::CertError),
    #[error("invalid interception option: {0}")]
    Option(String),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// Which ADS flavour the sidecar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdsApi {
    /// State of the world (`GRPC`).
    #[default]
    Sotw,
    /// Incremental (`DELTA_GRPC`).
    Delta,
}

impl AdsApi {
    fn api_type(self) -> &'static str {
        match self {
            AdsApi::Sotw => "GRPC",
            AdsApi::Delta => "DELTA_GRPC",
        }
    }
}

/// Traffic the init container leaves alone (MeshConfig `traffic.*ExclusionList` and pod annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterceptOptions {
    pub outbound_port_exclusions: Vec<u16>,
    pub inbound_port_exclusions: Vec<u16>,
    /// CIDRs that bypass the sidecar on the way out.
    pub outbound_ip_range_exclusions: Vec<String>,
    /// When non-empty, only these CIDRs are redirected on the way out.
    pub outbound_ip_range_inclusions: Vec<String>,
    pub network_interface_exclusions: Vec<String>,
}

/// Which kubelet probe a [`ProbeRoute`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [ProbeKind::Liveness, ProbeKind::Readiness, ProbeKind::Startup];

    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }

    /// The sidecar port the rewritten probe targets (outside interception).
    pub fn port(self) -> u16 {
        match self {
            ProbeKind::Liveness => ports::LIVENESS,
            ProbeKind::Readiness => ports::READINESS,
            ProbeKind::Startup => ports::STARTUP,
        }
    }
}

/// An application's `httpGet` probe, rewritten to reach the sidecar on the probe's own port (left alone by
/// the interception rules) and forwarded by it to the application on the loopback: with mTLS on every
/// inbound port, the kubelet could not reach the application otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRoute {
    pub kind: ProbeKind,
    pub container: String,
    /// The application's port and path, as the probe had them.
    pub port: u16,
    pub path: String,
    /// An HTTPS probe is passed through as TCP (the path cannot be seen): one per kind.
    pub https: bool,
    /// The probe's `timeoutSeconds` (Kubernetes' default: 1): the sidecar waits as long as the kubelet.
    pub timeout_s: u32,
}

impl ProbeRoute {
    /// The path the rewritten probe asks for (HTTP probes; HTTPS probes keep their own).
    pub fn rewritten_path(&self) -> String {
        if self.https { self.path.clone() } else { format!("/osm-{}-probe/{}", self.kind.name(), self.container) }
    }

    fn cluster(&self) -> String {
        format!("{}_{}_cluster", self.container, self.kind.name())
    }
}

#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Host (IP or DNS name) and port where the sidecar reaches the ADS server.
    pub controller_host: String,
    pub controller_port: u16,
    pub ads_api: AdsApi,
    /// Directory where the bundle's files are mounted in the sidecar (`/etc/envoy` under Kubernetes).
    pub config_dir: String,
    pub log_level: String,
    pub intercept: InterceptOptions,
    pub client_cert_validity: Duration,
    /// Application probes the sidecar serves (Kubernetes injection).
    pub probes: Vec<ProbeRoute>,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        Self {
            controller_host: "osm-controller.osm-system.svc.cluster.local".to_owned(),
            controller_port: ports::ADS,
            ads_api: AdsApi::Sotw,
            config_dir: "/etc/envoy".to_owned(),
            log_level: "error".to_owned(),
            intercept: InterceptOptions::default(),
            client_cert_validity: certs::LONG_VALIDITY,
            probes: Vec::new(),
        }
    }
}

/// Everything one sidecar needs.
#[derive(Debug, Clone)]
pub struct SidecarBundle {
    pub proxy: ProxyId,
    pub bootstrap: String,
    pub client_cert: IssuedCert,
    /// The roots the sidecar trusts the controller with (every root in use).
    pub ca_pem: String,
    pub tls_sds: String,
    pub validation_sds: String,
    pub iptables_rules: String,
    pub envoy_args: Vec<String>,
}

impl SidecarBundle {
    /// The files to place in `config_dir`: (name, contents, unix mode).
    pub fn files(&self) -> Vec<(&'static str, &str, u32)> {
        vec![
            (BOOTSTRAP_FILE, self.bootstrap.as_str(), 0o644),
            (CERT_FILE, self.client_cert.cert_pem.as_str(), 0o644),
            (KEY_FILE, self.client_cert.key_pem.as_str(), 0o600),
            (CA_FILE, self.ca_pem.as_str(), 0o644),
            (TLS_SDS_FILE, self.tls_sds.as_str(), 0o644),
            (VALIDATION_SDS_FILE, self.validation_sds.as_str(), 0o644),
        ]
    }
}

/// Builds the complete sidecar of one pod: its xDS client certificate signed by `signer`, trusting the
/// controller through `trust_pem` (every root in use).
pub fn sidecar_for_pod(
    pod: &Pod,
    signer: &dyn Issuer,
    trust_pem: &str,
    opts: &SidecarOptions,
) -> Result<SidecarBundle, SidecarError> {
    let proxy = ProxyId { uuid: pod.proxy_uuid.clone(), identity: pod.identity() };
    let client_cert = signer
        .issue_proxy_client(&proxy, opts.client_cert_validity)
        .map_err(|e| SidecarError::Cert(format!("{}/{}", pod.namespace, pod.name), e))?;
    let bootstrap = bootstrap(&proxy, signer.trust_domain(), opts);
    let bootstrap = serde_json::to_string_pretty(&bootstrap).unwrap_or_default();
    let (tls_sds, validation_sds) = sds_files(&opts.config_dir);
    Ok(SidecarBundle {
        envoy_args: envoy_args(&proxy, opts),
        iptables_rules: iptables_rules(&opts.intercept)?,
        proxy,
        bootstrap,
        client_cert,
        ca_pem: trust_pem.to_owned(),
        tls_sds,
        validation_sds,
    })
}

/// The file-based SDS configurations (JSON, which Envoy reads as YAML) of the xDS client certificate and
/// of the roots the controller is trusted with.
fn sds_files(dir: &str) -> (String, String) {
    let secret = |body: Value| json!({"resources": [body]});
    let tls = secret(json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": TLS_SDS_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": format!("{dir}/{CERT_FILE}")},
            "private_key": {"filename": format!("{dir}/{KEY_FILE}")}
        }
    }));
    let validation = secret(json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": VALIDATION_SDS_SECRET,
        "validation_context": {"trusted_ca": {"filename": format!("{dir}/{CA_FILE}")}}
    }));
    (
        serde_json::to_string_pretty(&tls).unwrap_or_default(),
        serde_json::to_string_pretty(&validation).unwrap_or_default(),
    )
}

/// An SDS source reading `file` of the bundle's directory, reloaded when the directory's content is
/// replaced (see [`write_bundle`]).
fn file_sds(name: &str, dir: &str, file: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": format!("{dir}/{file}"), "watched_directory": {"path": dir}}
        }
    })
}

/// The entry the bundle's files are reached through: a symbolic link to the directory of the current
/// version, swapped in one rename (as Kubernetes updates a mounted Secret), so Envoy never reads a
/// certificate of one version with the key of another.
const DATA_LINK: &str = "..data";

/// Writes `files` ((name, contents, mode)) into `dir` as one version replacing the previous one
/// atomically: the files go into a new hidden directory, `..data` is switched to it in one rename, and each
/// name is a link through `..data`. Envoy, watching `dir`, sees the switch and reloads its SDS files.
/// Files are given to `owner` (uid and gid) when possible; returns whether they were.
pub fn write_bundle(dir: &std::path::Path, files: &[(&str, &str, u32)], owner: u32) -> Result<bool, SidecarError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| SidecarError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let version = format!("..{nanos}.{}", std::process::id());
    let vdir = dir.join(&version);
    std::fs::create_dir(&vdir).map_err(io(&vdir))?;
    std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o755)).map_err(io(&vdir))?;
    let mut owned = std::os::unix::fs::chown(&vdir, Some(owner), Some(owner)).is_ok();
    for (name, contents, mode) in files {
        let path = vdir.join(name);
        // Created with its mode: a key is never readable by others, not even for a moment.
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(*mode).open(&path).map_err(io(&path))?;
        std::io::Write::write_all(&mut f, contents.as_bytes()).map_err(io(&path))?;
        // (The mode given at creation is masked by the umask.)
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(io(&path))?;
        owned &= std::os::unix::fs::chown(&path, Some(owner), Some(owner)).is_ok();
    }
    let previous = std::fs::read_link(dir.join(DATA_LINK)).ok();
    let tmp_link = dir.join(format!("{DATA_LINK}_tmp"));
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&version, &tmp_link).map_err(io(&tmp_link))?;
    std::fs::rename(&tmp_link, dir.join(DATA_LINK)).map_err(io(&dir.join(DATA_LINK)))?;
    for (name, _, _) in files {
        let path = dir.join(name);
        let target = std::path::Path::new(DATA_LINK).join(name);
        if std::fs::read_link(&path).is_ok_and(|t| t == target) {
            continue;
        }
        // A plain file of an older layout, or nothing yet: replaced by the link in one rename.
        let tmp = dir.join(format!(".{name}.link"));
        let _ = std::fs::remove_file(&tmp);
        symlink(&target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    // Only a version directory of ours goes: a single relative `..<n>` name, never a path elsewhere.
    if let Some(old) = previous.filter(|p| *p != std::path::Path::new(&version))
        && let Some(name) = old.to_str()
        && name.starts_with("..")
        && !name.contains('/')
        && name != ".."
    {
        let _ = std::fs::remove_dir_all(dir.join(name));
    }
    Ok(owned)
}

/// Envoy's arguments, as the injected container runs it.
pub fn envoy_args(proxy: &ProxyId, opts: &SidecarOptions) -> Vec<String> {
    vec![
        "--log-level".to_owned(),
        opts.log_level.clone(),
        "--config-path".to_owned(),
        format!("{}/{BOOTSTRAP_FILE}", opts.config_dir),
        "--service-cluster".to_owned(),
        proxy.identity.to_string(),
    ]
}

/// The Envoy bootstrap (JSON, which Envoy reads as YAML): node id = proxy UUID, admin on 127.0.0.1:15000,
/// ADS over mTLS to the controller; clusters and listeners come from ADS.
pub fn bootstrap(proxy: &ProxyId, trust_domain: &str, opts: &SidecarOptions) -> Value {
    let dir = &opts.config_dir;
    let ads_cn = certs::ads_server_common_name(trust_domain);
    let is_ip = opts.controller_host.parse::<std::net::IpAddr>().is_ok();
    let (probe_listeners, probe_clusters) = probe_resources(&opts.probes);
    let mut doc = json!({
        "node": {
            "id": proxy.uuid.as_str(),
            "cluster": proxy.identity.to_string(),
        },
        "admin": {
            "access_log": [{
                "name": "envoy.access_loggers.stream",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}
            }],
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports::ADMIN}}
        },
        // Envoy refuses regexes whose compiled RE2 program is larger than 100 by default, so a route like
        // `/api/[0-9]{1,200}` in an HTTPRouteGroup would be NACKed. The controller validates every regex
        // (syntax, length); Envoy's limit is lifted to match, with a warning above a size worth reviewing.
        "layered_runtime": {
            "layers": [{
                "name": "static",
                "static_layer": {
                    "re2.max_program_size.error_level": u32::MAX,
                    "re2.max_program_size.warn_level": 1000
                }
            }]
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": opts.ads_api.api_type(),
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": CONTROLLER_CLUSTER}}]
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [{
                "name": CONTROLLER_CLUSTER,
                "type": if is_ip { "STATIC" } else { "LOGICAL_DNS" },
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": CONTROLLER_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": opts.controller_host, "port_value": opts.controller_port
                    }}}}]}]
                },
                // xDS is gRPC: without explicit HTTP/2 Envoy never opens the stream.
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": ads_cn,
                        "common_tls_context": {
                            "alpn_protocols": ["h2"],
                            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                            // From files Envoy watches: a refreshed bundle (a new client certificate, a
                            // root rotation's trust bundle) is taken into use without a restart.
                            "tls_certificate_sds_secret_configs": [file_sds(TLS_SDS_SECRET, dir, TLS_SDS_FILE)],
                            "combined_validation_context": {
                                "default_validation_context": {
                                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": ads_cn}}]
                                },
                                "validation_context_sds_secret_config":
                                    file_sds(VALIDATION_SDS_SECRET, dir, VALIDATION_SDS_FILE)
                            }
                        }
                    }
                },
                "upstream_connection_options": {
                    "tcp_keepalive": {"keepalive_probes": 5, "keepalive_time": 60, "keepalive_interval": 5}
                }
            }]
        }
    });
    if !probe_listeners.is_empty() {
        doc["static_resources"]["listeners"] = Value::Array(probe_listeners);
        if let Some(clusters) = doc["static_resources"]["clusters"].as_array_mut() {
            clusters.extend(probe_clusters);
        }
    }
    doc
}

/// The static listeners (one per probe kind, on its port) and clusters (one per probe, to the application
/// on the loopback) that serve rewritten probes.
fn probe_resources(probes: &[ProbeRoute]) -> (Vec<Value>, Vec<Value>) {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for kind in ProbeKind::ALL {
        let of_kind: Vec<&ProbeRoute> = probes.iter().filter(|p| p.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let mut chains = Vec::new();
        let http: Vec<&&ProbeRoute> = of_kind.iter().filter(|p| !p.https).collect();
        if !http.is_empty() {
            let routes: Vec<Value> = http
                .iter()
                .map(|p| {
                    json!({
                        "match": {"prefix": p.rewritten_path()},
                        "route": {
                            "cluster": p.cluster(), "prefix_rewrite": p.path, "timeout": format!("{}s", p.timeout_s.max(1))
                        }
                    })
                })
                .collect();
            chains.push(json!({
                "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "health_probes_http",
                        "route_config": {
                            "name": format!("{}_route", kind.name()),
                            "virtual_hosts": [{"name": "probes", "domains": ["*"], "routes": routes}]
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]
            }));
        }
        if let Some(p) = of_kind.iter().find(|p| p.https) {
            chains.push(json!({
                "filter_chain_match": {"transport_protocol": "tls"},
                "filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "health_probes_https",
                        "cluster": p.cluster()
                    }
                }]
            }));
        }
        listeners.push(json!({
            "name": format!("{}_listener", kind.name()),
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": kind.port()}},
            "listener_filters": [{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
            }],
            "filter_chains": chains
        }));
        for p in of_kind {
            clusters.push(json!({
                "name": p.cluster(),
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": p.cluster(),
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": p.port
                    }}}}]}]
                }
            }));
        }
    }
    (listeners, clusters)
}

/// Checks an IP range for the interception rules: IPv4 CIDR only, as the rules are IPv4 (`iptables`);
/// an IPv6 range would make `iptables-restore` fail in the init container and the pod never start.
pub fn check_cidr(c: &str) -> Result<(), SidecarError> {
    let (ip, len) =
        c.split_once('/').ok_or_else(|| SidecarError::Option(format!("{c:?} is not a CIDR (a.b.c.d/n)")))?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| SidecarError::Option(format!("{c:?}: bad address")))?;
    if ip.is_ipv6() {
        return Err(SidecarError::Option(format!(
            "{c:?} is an IPv6 range: pods are intercepted over IPv4 only, so IPv6 traffic is never redirected \
             and needs no exclusion"
        )));
    }
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(SidecarError::Option(format!("{c:?}: bad prefix length"))),
    }
}

fn check_iface(i: &str) -> Result<(), SidecarError> {
    let ok = !i.is_empty() && i.len() <= 15 && i.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok { Ok(()) } else { Err(SidecarError::Option(format!("{i:?} is not an interface name"))) }
}

fn multiport(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// The init container's rules, for `iptables-restore --noflush` (nat table): inbound TCP is redirected to
/// 15003, outbound TCP to 15001; Envoy's own traffic (uid 1500) and loopback are left alone.
pub fn iptables_rules(opts: &InterceptOptions) -> Result<String, SidecarError> {
    for c in opts.outbound_ip_range_exclusions.iter().chain(&opts.outbound_ip_range_inclusions) {
        check_cidr(c)?;
    }
    for i in &opts.network_interface_exclusions {
        check_iface(i)?;
    }
    let mut r = String::new();
    let uid = ENVOY_UID;
    let _ = writeln!(r, "*nat");
    for chain in ["OSM_PROXY_INBOUND", "OSM_PROXY_IN_REDIRECT", "OSM_PROXY_OUTBOUND", "OSM_PROXY_OUT_REDIRECT"] {
        let _ = writeln!(r, ":{chain} - [0:0]");
    }
    // Inbound.
    let _ = writeln!(r, "-A OSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port {}", ports::INBOUND);
    let _ = writeln!(r, "-A PREROUTING -p tcp -j OSM_PROXY_INBOUND");
    for port in [ports::PROMETHEUS, ports::LIVENESS, ports::READINESS, ports::STARTUP, ports::HEALTHCHECK] {
        let _ = writeln!(r, "-A OSM_PROXY_INBOUND -p tcp --dport {port} -j RETURN");
    }
    for iface in &opts.network_interface_exclusions {
        let _ = writeln!(r, "-A OSM_PROXY_INBOUND -i {iface} -j RETURN");
    }
    if !opts.inbound_port_exclusions.is_empty() {
        let _ = writeln!(
            r,
            "-A OSM_PROXY_INBOUND -p tcp --match multiport --dports {} -j RETURN",
            multiport(&opts.inbound_port_exclusions)
        );
    }
    let _ = writeln!(r, "-A OSM_PROXY_INBOUND -p tcp -j OSM_PROXY_IN_REDIRECT");
    // Outbound.
    let _ = writeln!(r, "-A OSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-port {}", ports::OUTBOUND);
    let _ = writeln!(r, "-A OUTPUT -p tcp -j OSM_PROXY_OUTBOUND");
    // Envoy calling its own pod's address goes through the inbound path (a pod calling its own Service).
    let _ = writeln!(
        r,
        "-A OSM_PROXY_OUTBOUND -o lo ! -d 127.0.0.1/32 -m owner --uid-owner {uid} -j OSM_PROXY_IN_REDIRECT"
    );
    let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -o lo -m owner ! --uid-owner {uid} -j RETURN");
    let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -m owner --uid-owner {uid} -j RETURN");
    let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN");
    for iface in &opts.network_interface_exclusions {
        let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -o {iface} -j RETURN");
    }
    for c in &opts.outbound_ip_range_exclusions {
        let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -d {c} -j RETURN");
    }
    if !opts.outbound_port_exclusions.is_empty() {
        let _ = writeln!(
            r,
            "-A OSM_PROXY_OUTBOUND -p tcp --match multiport --dports {} -j RETURN",
            multiport(&opts.outbound_port_exclusions)
        );
    }
    if opts.outbound_ip_range_inclusions.is_empty() {
        let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -j OSM_PROXY_OUT_REDIRECT");
    } else {
        for c in &opts.outbound_ip_range_inclusions {
            let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -d {c} -j OSM_PROXY_OUT_REDIRECT");
        }
        let _ = writeln!(r, "-A OSM_PROXY_OUTBOUND -j RETURN");
    }
    let _ = writeln!(r, "COMMIT");
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::ProxyUuid;
    use std::collections::BTreeMap;

    fn pod() -> Pod {
        Pod {
            namespace: "demo".into(),
            name: "client".into(),
            labels: BTreeMap::new(),
            service_account: "client".into(),
            ip: Some("10.244.1.1".parse().unwrap()),
            proxy_uuid: ProxyUuid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            container_ports: vec![],
            prometheus_scrape: false,
        }
    }

    #[test]
    fn bundle_names_the_proxy_everywhere() {
        let ca = certs::CertificateAuthority::generate("cluster.local").unwrap();
        let opts = SidecarOptions { controller_host: "10.1.0.1".into(), ads_api: AdsApi::Delta, ..Default::default() };
        let b = sidecar_for_pod(&pod(), &ca, ca.root_pem(), &opts).unwrap();
        let v: Value = serde_json::from_str(&b.bootstrap).unwrap();
        assert_eq!(v["node"]["id"], "11111111-2222-3333-4444-555555555555");
        assert_eq!(v["admin"]["address"]["socket_address"]["port_value"], 15000);
        assert_eq!(v["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
        let cluster = &v["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STATIC");
        assert_eq!(
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
            15128
        );
        assert_eq!(b.client_cert.common_name, "11111111-2222-3333-4444-555555555555.sidecar.client.demo.cluster.local");
        assert_eq!(b.ca_pem, ca.root_pem());
        assert_eq!(b.envoy_args[3], "/etc/envoy/bootstrap.yaml");
        assert_eq!(b.files().iter().find(|f| f.0 == KEY_FILE).unwrap().2, 0o600);
    }

    #[test]
    fn a_bundle_is_replaced_in_one_step_and_leaves_no_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.pem"), "plain file of an older layout").unwrap();
        let uid = rustix_uid();
        write_bundle(d, &[("a.pem", "one", 0o644), ("k.pem", "key one", 0o600)], uid).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a.pem")).unwrap(), "one");
        let first = std::fs::read_link(d.join(DATA_LINK)).unwrap();
        write_bundle(d, &[("a.pem", "two", 0o644), ("k.pem", "key two", 0o600)], uid).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a.pem")).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(d.join("k.pem")).unwrap(), "key two");
        assert_eq!(std::fs::read_link(d.join("k.pem")).unwrap(), std::path::Path::new("..data/k.pem"));
        let mode = std::fs::metadata(d.join("k.pem")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert!(!d.join(first).exists(), "the previous version is removed");
        let entries = std::fs::read_dir(d).unwrap().count();
        assert_eq!(entries, 4, "..data, its version, and the two links");
    }

    /// The current user: files can always be given to oneself.
    fn rustix_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn iptables_rules_redirect_and_exempt_envoy() {
        let r = iptables_rules(&InterceptOptions::default()).unwrap();
        assert!(r.starts_with("*nat\n"));
        assert!(r.contains("-A OSM_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port 15003"));
        assert!(r.contains("-A OSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-port 15001"));
        assert!(r.contains("-A OSM_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN"));
        assert!(r.contains("-A OSM_PROXY_INBOUND -p tcp --dport 15010 -j RETURN"));
        assert!(r.trim_end().ends_with("COMMIT"));
    }

    #[test]
    fn exclusions_and_inclusions() {
        let opts = InterceptOptions {
            outbound_port_exclusions: vec![5432, 6379],
            outbound_ip_range_inclusions: vec!["10.96.0.0/12".into()],
            ..Default::default()
        };
        let r = iptables_rules(&opts).unwrap();
        assert!(r.contains("--dports 5432,6379 -j RETURN"));
        assert!(r.contains(
            "-A OSM_PROXY_OUTBOUND -d 10.96.0.0/12 -j OSM_PROXY_OUT_REDIRECT\n-A OSM_PROXY_OUTBOUND -j RETURN"
        ));
        let bad = InterceptOptions { outbound_ip_range_exclusions: vec!["10.0.0.0".into()], ..Default::default() };
        assert!(iptables_rules(&bad).unwrap_err().to_string().contains("not a CIDR"));
    }
}
