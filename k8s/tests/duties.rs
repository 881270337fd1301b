//! The leader's duties against the API-server simulator: the MeshConfig is created with OSM's defaults
//! when there is none, and created again with its last settings when it is deleted, so a stray delete
//! never leaves the cluster without its mesh settings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use apisim::{ApiServer, Resource};
use serde_json::Value;

fn mesh_configs() -> Resource {
    Resource::new("config.openservicemesh.io", "v1alpha2", "meshconfigs")
}

/// The MeshConfig once `want` holds for it; fails after a generous bound instead of hanging.
async fn mesh_config_when(sim: &ApiServer, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(mc) = sim.get(&mesh_configs(), "osm-system", "osm-mesh-config").filter(|mc| want(mc)) {
            return mc;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_mesh_config_comes_back_with_its_last_settings() {
    let sim = ApiServer::start().await.unwrap();
    let keeper = tokio::spawn(k8s::duties::keep_mesh_config(sim.client().unwrap(), "osm-system".into()));

    // None at first: OSM's preset, every section of it.
    let mc = mesh_config_when(&sim, "the default MeshConfig", |_| true).await;
    let spec = &mc["spec"];
    assert_eq!(spec["traffic"]["enablePermissiveTrafficPolicyMode"], true, "{spec}");
    assert_eq!(spec["sidecar"]["logLevel"], "error", "{spec}");
    assert_eq!(spec["observability"]["osmLogLevel"], "info", "{spec}");
    assert_eq!(spec["certificate"]["serviceCertValidityDuration"], "24h", "{spec}");

    // The operator switches to SMI mode, then the MeshConfig is deleted: it comes back in SMI mode.
    sim.apply_yaml(
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {name: osm-mesh-config, namespace: osm-system}\n\
         spec: {traffic: {enablePermissiveTrafficPolicyMode: false, enableEgress: false}, \
         certificate: {serviceCertValidityDuration: 1h}}",
    )
    .unwrap();
    let smi = |mc: &Value| mc["spec"]["traffic"]["enablePermissiveTrafficPolicyMode"] == false;
    mesh_config_when(&sim, "SMI mode applied", smi).await;
    // (The watch's delete event carries the object's last state, so the keeper need not have seen the
    // update before the delete.)
    assert!(sim.remove(&mesh_configs(), "osm-system", "osm-mesh-config"));
    let back = mesh_config_when(&sim, "the MeshConfig re-created", smi).await;
    assert_eq!(back["spec"]["traffic"]["enableEgress"], false);
    assert_eq!(back["spec"]["certificate"]["serviceCertValidityDuration"], "1h");
    keeper.abort();
}
