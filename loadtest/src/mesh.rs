//! The generated mesh a load test runs against, written as the controller's YAML directory, and the
//! churn that changes it.
//!
//! Shape: `services` server Services of `pods_per_service` pods each, plus one `churn` Service whose
//! endpoints the churn generators change, plus `clients` client pods spread over `accounts` service
//! accounts; every client pod is one simulated sidecar. Every change carries a marker: an endpoint address
//! in 10.255.0.0/16 that encodes a sequence number, so a sidecar can tell which change it has seen.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Namespace of the generated mesh.
pub const NAMESPACE: &str = "lt";
/// The Service whose endpoints churn.
pub const CHURN_SERVICE: &str = "churn";

/// What the churn generators change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChurnKind {
    /// The churn Service's Endpoints object is rewritten with a new marker address.
    Endpoints,
    /// A pod with a new marker address joins the churn Service (one file per pod); the oldest leaves.
    Pods,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshSpec {
    pub services: usize,
    pub pods_per_service: usize,
    pub clients: usize,
    pub accounts: usize,
    /// Client pods per file.
    pub pods_per_file: usize,
    pub churn: ChurnKind,
    /// SMI mode: a MeshConfig turning permissive mode off, and one TrafficTarget per server identity that
    /// lets every client identity in (so every sidecar still sees every Service, through policy).
    pub smi: bool,
}

/// One client pod, whose sidecar the load test simulates.
#[derive(Debug, Clone)]
pub struct ClientPod {
    pub uuid: String,
    pub service_account: String,
    pub ip: Ipv4Addr,
}

/// The highest sequence number a marker can carry.
pub const MAX_MARKER: u32 = 65_535;

/// The endpoint address carrying change `seq` (1..=65535).
pub fn marker_ip(seq: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, (seq >> 8) as u8, (seq & 0xff) as u8)
}

/// The change a marker address carries.
pub fn marker_seq(ip: IpAddr) -> Option<u32> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (a == 10 && b == 255).then_some((u32::from(c) << 8) | u32::from(d))
        }
        IpAddr::V6(_) => None,
    }
}

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1 + (i >> 16) as u8, ((i >> 8) & 0xff) as u8, (i & 0xff) as u8)
}

fn server_ip(svc: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100 + (svc >> 8) as u8, (svc & 0xff) as u8, (pod + 1) as u8)
}

fn cluster_ip(svc: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (svc >> 8) as u8, (svc & 0xff) as u8)
}

/// Writes a file atomically (a temporary file, then rename), as the README asks of operators.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

fn pod_yaml(out: &mut String, name: &str, sa: &str, ip: Ipv4Addr, labels: &[(&str, &str)]) {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{{}}}}}\n\
         spec: {{serviceAccountName: {sa}, containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]}}\n\
         status: {{podIP: {ip}}}\n",
        labels.join(", ")
    );
}

fn service_yaml(out: &mut String, name: &str, ip: Ipv4Addr, selector: bool) {
    let selector = if selector { format!(", selector: {{app: {name}}}") } else { String::new() };
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
         spec: {{clusterIP: {ip}{selector}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    );
}

/// Writes the whole mesh into `dir` (which must exist) and returns the client pods.
pub fn write_mesh(dir: &Path, spec: &MeshSpec) -> io::Result<Vec<ClientPod>> {
    let mut text = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for s in 0..spec.services {
        let name = format!("svc-{s}");
        service_yaml(&mut text, &name, cluster_ip(s), true);
        let sa = format!("{name}-sa");
        for p in 0..spec.pods_per_service {
            pod_yaml(&mut text, &format!("{name}-{p}"), &sa, server_ip(s, p), &[("app", &name)]);
        }
    }
    service_yaml(&mut text, CHURN_SERVICE, Ipv4Addr::new(10, 97, 0, 1), spec.churn == ChurnKind::Pods);
    write_atomic(&dir.join("services.yaml"), &text)?;
    if spec.churn == ChurnKind::Endpoints {
        write_endpoint_change(dir, 0)?;
    }

    let accounts = spec.accounts.max(1);
    if spec.smi {
        let mut dests: Vec<String> = (0..spec.services).map(|s| format!("svc-{s}-sa")).collect();
        dests.push("churn-sa".to_owned());
        write_atomic(&dir.join("policy.yaml"), &policy_yaml(&dests, accounts))?;
    }
    let mut clients = Vec::with_capacity(spec.clients);
    for (chunk_no, chunk) in (0..spec.clients).collect::<Vec<_>>().chunks(spec.pods_per_file.max(1)).enumerate() {
        let mut text = String::new();
        for &i in chunk {
            let pod = ClientPod {
                uuid: format!("lt-{i}"),
                service_account: format!("client-{}", i % accounts),
                ip: client_ip(i),
            };
            pod_yaml(
                &mut text,
                &format!("client-{i}"),
                &pod.service_account,
                pod.ip,
                &[("app", "client"), (messages::PROXY_UUID_LABEL, &pod.uuid)],
            );
            clients.push(pod);
        }
        write_atomic(&dir.join(format!("clients-{chunk_no:04}.yaml")), &text)?;
    }
    Ok(clients)
}

/// SMI mode and the TrafficTargets that let every client account reach every destination account.
fn policy_yaml(destinations: &[String], accounts: usize) -> String {
    let mut text = format!(
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {{name: osm-mesh-config, namespace: osm-system}}\n\
         spec: {{traffic: {{enablePermissiveTrafficPolicyMode: false}}}}\n---\n\
         apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: all, namespace: {NAMESPACE}}}\n\
         spec: {{matches: [{{name: all, pathRegex: \".*\"}}]}}\n"
    );
    let sources: Vec<String> =
        (0..accounts).map(|a| format!("{{kind: ServiceAccount, name: client-{a}, namespace: {NAMESPACE}}}")).collect();
    for dest in destinations {
        let _ = write!(
            text,
            "---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\n\
             metadata: {{name: to-{dest}, namespace: {NAMESPACE}}}\n\
             spec:\n  destination: {{kind: ServiceAccount, name: {dest}, namespace: {NAMESPACE}}}\n\
             \x20 sources: [{}]\n  rules: [{{kind: HTTPRouteGroup, name: all}}]\n",
            sources.join(", ")
        );
    }
    text
}

/// Rewrites the churn Service's Endpoints with the marker of change `seq` (0: a base address only).
pub fn write_endpoint_change(dir: &Path, seq: u32) -> io::Result<()> {
    let addr = if seq == 0 { Ipv4Addr::new(10, 97, 1, 1) } else { marker_ip(seq) };
    let text = format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {CHURN_SERVICE}, namespace: {NAMESPACE}}}\n\
         subsets: [{{addresses: [{{ip: {addr}}}], ports: [{{name: http, port: 8080}}]}}]\n"
    );
    write_atomic(&dir.join("churn-endpoints.yaml"), &text)
}

fn churn_pod_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("churn-pod-{seq:05}.yaml"))
}

/// Adds the churn pod of change `seq` (its address is the marker).
pub fn add_churn_pod(dir: &Path, seq: u32) -> io::Result<()> {
    let mut text = String::new();
    pod_yaml(&mut text, &format!("churn-{seq}"), "churn-sa", marker_ip(seq), &[("app", CHURN_SERVICE)]);
    write_atomic(&churn_pod_path(dir, seq), &text)
}

/// Removes the churn pod of change `seq`.
pub fn remove_churn_pod(dir: &Path, seq: u32) -> io::Result<()> {
    match std::fs::remove_file(churn_pod_path(dir, seq)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        for seq in [1, 255, 256, 4097, MAX_MARKER] {
            assert_eq!(marker_seq(IpAddr::V4(marker_ip(seq))), Some(seq));
        }
        assert_eq!(marker_seq("10.1.0.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))), None);
    }
}
