//! The `osm` binary against the API-server simulator: namespaces in and out of the mesh.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use apisim::{ApiServer, Resource};
use serde_json::json;

fn osm(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_osm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osm_namespace_add_list_remove() {
    let sim = ApiServer::start().await.unwrap();
    let ns = Resource::new("", "v1", "namespaces");
    for name in ["bookstore", "bookbuyer"] {
        sim.put(&ns, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig()).unwrap();
    let (ok, text) = osm(&kubeconfig, &["namespace", "add", "bookstore", "bookbuyer"]);
    assert!(ok && text.contains("namespace bookbuyer is in mesh osm, with sidecar injection"), "{text}");
    let (ok, text) = osm(&kubeconfig, &["namespace", "list"]);
    assert!(ok, "{text}");
    assert!(text.contains("NAMESPACE") && text.contains("bookstore") && text.contains("enabled"), "{text}");
    let (ok, text) = osm(&kubeconfig, &["namespace", "remove", "bookstore"]);
    assert!(ok, "{text}");
    let (_, text) = osm(&kubeconfig, &["namespace", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{text}");
    let (ok, text) = osm(&kubeconfig, &["namespace", "add", "nowhere"]);
    assert!(!ok && text.contains("namespace nowhere does not exist"), "{text}");
}
