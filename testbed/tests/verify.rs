//! `osm verify connectivity` through real Envoy, in SMI mode: the path from the client (named by a
//! TrafficTarget) checks out and its requests pass; the path from the thief (named by none) is reported
//! blocked with the TrafficTarget it is missing, and its requests are refused; once that TrafficTarget
//! exists the tool says OK and the request passes. Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

const CLIENT: &str = "demo/client";
const THIEF: &str = "demo/thief";
const WAIT: Duration = Duration::from_secs(30);
const API: &str = "http://10.96.0.10/api/books";

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller, osm and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

/// `osm verify connectivity`: (exit code, output).
fn verify(mesh: &LocalMesh, from: &str) -> (Option<i32>, String) {
    let out = mesh.osm(&["verify", "connectivity", "--from", from, "--to", "demo/server:80"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn request_passes(mesh: &LocalMesh, pod: &str) -> bool {
    mesh.app(pod, &["get", API, "--timeout-s", "3"])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("status=200"))
}

#[test]
fn verify_connectivity_names_the_missing_traffic_target_and_agrees_with_envoy() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smi");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    for name in ["server-1", "server-2"] {
        mesh.add_pod("demo", name).unwrap();
        mesh.spawn_app(&format!("demo/{name}"), &["http-server", "--port", "8080", "--name", name]).unwrap();
    }
    mesh.add_pod("demo", "client").unwrap();
    mesh.add_pod("demo", "thief").unwrap();
    mesh.eventually(WAIT, "the client's request to pass", || request_passes(&mesh, CLIENT).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));

    // Allowed: every step checks out, and says by what.
    let (code, text) = mesh
        .eventually(WAIT, "the client's path to verify", || {
            let (code, text) = verify(&mesh, CLIENT);
            (code == Some(0)).then_some((code, text))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", verify(&mesh, CLIENT).1));
    assert_eq!(code, Some(0));
    assert!(text.contains("OK: demo/client can reach demo/server:80"), "{text}");
    assert!(text.contains("allowed by TrafficTarget demo/client-to-server"), "{text}");
    assert!(text.contains("source sidecar") && text.contains("connected and synced"), "{text}");
    assert!(text.contains("certificate") && text.contains("client.demo: serial"), "{text}");
    assert!(text.contains("signed by trusted root"), "the certificates come from a root the sidecars trust: {text}");

    // Denied: blocked at the policy, naming what to add; Envoy agrees.
    let (code, text) = verify(&mesh, THIEF);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("BLOCKED at policy"), "{text}");
    assert!(
        text.contains("no TrafficTarget allows thief.demo to reach server.demo")
            && text.contains("destination ServiceAccount server and source ServiceAccount thief"),
        "{text}"
    );
    assert!(!request_passes(&mesh, THIEF));

    // The TrafficTarget it asked for: now OK, and the request passes.
    mesh.write_mesh_file(
        "thief-target.yaml",
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\n\
         metadata: {name: thief-to-server, namespace: demo}\n\
         spec:\n  destination: {kind: ServiceAccount, name: server, namespace: demo}\n\
         \x20 sources: [{kind: ServiceAccount, name: thief, namespace: demo}]\n\
         \x20 rules: [{kind: HTTPRouteGroup, name: api, matches: [read]}]\n",
    )
    .unwrap();
    let text = mesh
        .eventually(WAIT, "the thief's path to verify", || {
            let (code, text) = verify(&mesh, THIEF);
            (code == Some(0)).then_some(text)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", verify(&mesh, THIEF).1));
    assert!(text.contains("allowed by TrafficTarget demo/thief-to-server"), "{text}");
    mesh.eventually(WAIT, "the thief's request to pass", || request_passes(&mesh, THIEF).then_some(())).unwrap();

    // JSON for scripts; a pod that does not exist is named.
    let out =
        mesh.osm(&["verify", "connectivity", "--from", "demo/nobody", "--to", "demo/server:80", "-o", "json"]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert!(json["steps"][0]["detail"].as_str().unwrap().contains("pod demo/nobody is not in the mesh"), "{json}");
}
