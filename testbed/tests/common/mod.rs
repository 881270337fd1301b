//! What several end-to-end tests read from a pod's Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code; each test file uses a part

use std::collections::BTreeSet;

use testbed::LocalMesh;

/// Serial numbers (lower-case hex, no leading zeros) of the certificates in the pod's Envoy admin
/// `/certs` under `field`: `cert_chain` for those it presents, `ca_cert` for those it trusts.
pub fn cert_serials(mesh: &LocalMesh, pod: &str, field: &str) -> BTreeSet<String> {
    let body = mesh.admin(pod, "/certs").unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    json["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c[field].as_array().into_iter().flatten())
        .filter_map(|c| c["serial_number"].as_str().map(|s| s.trim_start_matches('0').to_ascii_lowercase()))
        .collect()
}

/// The service certificate chains (PEM) the pod's Envoy holds from the controller's SDS.
pub fn service_chains(mesh: &LocalMesh, pod: &str) -> Vec<String> {
    use base64::Engine as _;
    let dump: serde_json::Value = serde_json::from_str(&mesh.admin(pod, "/config_dump").unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_active_secrets"].as_array().into_iter().flatten())
        // (The xDS client certificate, from the bundle's files, is listed too.)
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("service-cert")))
        .filter_map(|s| s["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"].as_str())
        .map(|bytes| String::from_utf8(b64.decode(bytes).unwrap()).unwrap())
        .collect()
}
