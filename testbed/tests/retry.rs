//! Retry policies through real Envoy: with the MeshConfig's `enableRetryPolicy` on, a Retry for the
//! client's service account makes its sidecar retry a server that answers 503 at first, so the client
//! gets 200 and Envoy counts the retries; with the flag off the client gets the 503 and nothing is retried.
//! Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";
const WAIT: Duration = Duration::from_secs(30);
const RETRIES: &str = "cluster.demo_server_8080.upstream_rq_retry";

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

const RETRY: &str = "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: Retry\nmetadata: {name: client-to-server, namespace: demo}\n\
    spec:\n  source: {kind: ServiceAccount, name: client, namespace: demo}\n\
    \x20 destinations: [{kind: Service, name: server, namespace: demo}]\n\
    \x20 retryPolicy: {retryOn: 5xx, perTryTimeout: 2s, numRetries: 5, retryBackoffBaseInterval: 10ms}\n";

fn mesh_config(retry: bool) -> String {
    format!(
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {{name: osm-mesh-config, namespace: osm-system}}\n\
         spec:\n  featureFlags: {{enableRetryPolicy: {retry}}}\n"
    )
}

/// Waits until every proxy holds what the controller sent (the change is in force).
fn in_force(mesh: &LocalMesh) {
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "30"]).unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn get(mesh: &LocalMesh, path: &str) -> String {
    let out = mesh.app(CLIENT, &["get", &format!("http://10.96.0.10{path}")]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_retry_policy_turns_a_flaky_server_into_200_only_when_the_feature_flag_is_on() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    mesh.write_mesh_file("meshconfig.yaml", &mesh_config(true)).unwrap();
    mesh.write_mesh_file("retry.yaml", RETRY).unwrap();
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.add_pod("demo", "client").unwrap();
    mesh.eventually(WAIT, "the client reaches the server", || {
        get(&mesh, "/hello").starts_with("status=200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    in_force(&mesh);

    // Three 503s, then 200: the sidecar retries three times and the client sees 200.
    let before = mesh.stat(CLIENT, RETRIES).unwrap().unwrap_or(0);
    let answer = get(&mesh, "/flaky/3/on");
    assert!(answer.starts_with("status=200"), "{answer}\n{}", mesh.controller_output());
    assert_eq!(mesh.stat(CLIENT, RETRIES).unwrap().unwrap_or(0) - before, 3, "Envoy counted three retries");

    // The flag off: the same policy is not in force; the first 503 reaches the client, nothing is retried.
    mesh.write_mesh_file("meshconfig.yaml", &mesh_config(false)).unwrap();
    mesh.eventually(WAIT, "the retry policy to leave the client's routes", || {
        let routes = mesh.admin(CLIENT, "/config_dump?resource=dynamic_route_configs").ok()?;
        (!routes.contains("retry_policy")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    in_force(&mesh);
    let before = mesh.stat(CLIENT, RETRIES).unwrap().unwrap_or(0);
    let answer = get(&mesh, "/flaky/1/off");
    assert!(answer.starts_with("status=503"), "{answer}");
    assert_eq!(mesh.stat(CLIENT, RETRIES).unwrap().unwrap_or(0), before, "no retries without the flag");
}
