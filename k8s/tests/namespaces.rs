//! `osm namespace add|remove|list` against the API-server simulator: the label and annotation OSM uses,
//! idempotence, and a namespace of another mesh refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use apisim::{ApiServer, Resource};
use k8s::namespaces::{self, MeshNamespace, NamespaceError};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_join_and_leave_the_mesh_by_label_and_annotation() {
    let sim = ApiServer::start().await.unwrap();
    let ns = Resource::new("", "v1", "namespaces");
    for name in ["demo", "other", "elsewhere"] {
        sim.put(&ns, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap();
    }
    let client = sim.client().unwrap();
    namespaces::add(client.clone(), "demo", "osm", true).await.unwrap();
    namespaces::add(client.clone(), "demo", "osm", true).await.unwrap();
    namespaces::add(client.clone(), "other", "osm", false).await.unwrap();
    namespaces::add(client.clone(), "elsewhere", "mesh-b", true).await.unwrap();
    let demo = sim.get(&ns, "", "demo").unwrap();
    assert_eq!(demo["metadata"]["labels"]["openservicemesh.io/monitored-by"], "osm");
    assert_eq!(demo["metadata"]["annotations"]["openservicemesh.io/sidecar-injection"], "enabled");
    assert_eq!(
        namespaces::list(client.clone(), Some("osm")).await.unwrap(),
        vec![
            MeshNamespace { name: "demo".into(), mesh: "osm".into(), sidecar_injection: true },
            MeshNamespace { name: "other".into(), mesh: "osm".into(), sidecar_injection: false },
        ]
    );
    assert_eq!(namespaces::list(client.clone(), None).await.unwrap().len(), 3);
    let e = namespaces::add(client.clone(), "elsewhere", "osm", true).await.unwrap_err();
    assert!(matches!(e, NamespaceError::OtherMesh { .. }), "{e}");
    assert!(e.to_string().contains("already in mesh mesh-b"), "{e}");
    assert!(matches!(namespaces::add(client.clone(), "nope", "osm", true).await, Err(NamespaceError::NotFound(_))));
    namespaces::remove(client.clone(), "demo", "osm").await.unwrap();
    let demo = sim.get(&ns, "", "demo").unwrap();
    assert!(demo["metadata"]["labels"].get("openservicemesh.io/monitored-by").is_none(), "{demo}");
    assert!(matches!(namespaces::remove(client, "demo", "osm").await, Err(NamespaceError::NotInMesh { .. })));
}
