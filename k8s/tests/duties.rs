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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_config_is_created_from_the_charts_preset() {
    let sim = ApiServer::start().await.unwrap();
    sim.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: preset-mesh-config, namespace: osm-system}\ndata:\n  \
         preset-mesh-config.json: '{\"traffic\": {\"enablePermissiveTrafficPolicyMode\": false, \
         \"outboundIPRangeExclusionList\": [\"169.254.169.254/32\"]}, \"sidecar\": {\"logLevel\": \"debug\"}}'",
    )
    .unwrap();
    let keeper = tokio::spawn(k8s::duties::keep_mesh_config(sim.client().unwrap(), "osm-system".into()));
    let mc = mesh_config_when(&sim, "the MeshConfig from the preset", |_| true).await;
    assert_eq!(mc["spec"]["traffic"]["enablePermissiveTrafficPolicyMode"], false, "{mc}");
    assert_eq!(mc["spec"]["traffic"]["outboundIPRangeExclusionList"][0], "169.254.169.254/32", "{mc}");
    assert_eq!(mc["spec"]["sidecar"]["logLevel"], "debug", "{mc}");
    keeper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_ca_bundles_are_set_and_set_again_after_an_upgrade_empties_them() {
    let sim = ApiServer::start().await.unwrap();
    let hooks = Resource::new("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations");
    let config = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "osm-validator-mesh-osm"},
        "webhooks": [{"name": "osm-validator.k8s.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "clientConfig": {"service": {"name": "osm-validator", "namespace": "osm-system", "port": 9093}}}]
    });
    sim.put(&hooks, config.clone()).unwrap();
    let root = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";
    let keeper = tokio::spawn(k8s::duties::keep_ca_bundles(sim.client().unwrap(), "osm".into(), root.into()));
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD.encode(root);
    let has_bundle = |sim: &ApiServer| {
        sim.get(&hooks, "", "osm-validator-mesh-osm")
            .is_some_and(|c| c["webhooks"][0]["clientConfig"]["caBundle"] == bundle.as_str())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !has_bundle(&sim) {
        assert!(tokio::time::Instant::now() < deadline, "the CA bundle was never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An upgrade writes the configuration again without a bundle: it is set again.
    sim.put(&hooks, config).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !has_bundle(&sim) {
        assert!(tokio::time::Instant::now() < deadline, "the CA bundle was not set again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keeper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_that_cannot_be_read_is_an_error_never_the_permissive_defaults() {
    let sim = ApiServer::start().await.unwrap();
    let client = sim.client().unwrap();
    // No preset: OSM's defaults.
    let spec = k8s::duties::preset_mesh_config(&client, "osm-system").await.unwrap();
    assert_eq!(spec, k8s::duties::default_mesh_config_spec());
    // A preset with a typo: an error naming it (retried), not the defaults, which are permissive.
    sim.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: preset-mesh-config, namespace: osm-system}\ndata:\n  \
         preset-mesh-config.json: '{\"traffic\": {\"enablePermissiveTraficPolicyMode\": false}}'",
    )
    .unwrap();
    let err = k8s::duties::preset_mesh_config(&client, "osm-system").await.unwrap_err().to_string();
    assert!(err.contains("preset-mesh-config") && err.contains("enablePermissiveTraficPolicyMode"), "{err}");
}
