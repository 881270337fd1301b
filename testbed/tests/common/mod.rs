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
