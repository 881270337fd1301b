//! Writes as the real API server does them, through kube-rs and raw requests: field managers per
//! operation (`metadata.managedFields`), keyed lists owned item by item, deletion of a collection by
//! selector, and request bodies the simulator cannot read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use apisim::{ApiServer, Resource};
use common::http;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const JSON: &str = "application/json";

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["manager"].as_str().unwrap().to_owned(), m["operation"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn managers_own_fields_of_keyed_items_and_an_applier_loses_what_it_stops_applying() {
    let sim = ApiServer::start().await.unwrap();
    let hooks: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(sim.client().unwrap());
    let chart = |timeout: u32, labelled: bool| {
        let mut config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "inject"},
            "webhooks": [{"name": "inject.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                          "timeoutSeconds": timeout,
                          "clientConfig": {"service": {"namespace": "mesh", "name": "injector", "path": "/inject"}}}],
        });
        if labelled {
            config["metadata"]["labels"] = json!({"app": "injector"});
        }
        Patch::Apply(config)
    };
    let as_installer = PatchParams::apply("installer");
    hooks.patch("inject", &as_installer, &chart(10, true)).await.unwrap();

    // The controller sets the CA bundle of the webhook item: its field, inside the installer's item.
    let bundle = json!([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]);
    let json_patch: json_patch::Patch = serde_json::from_value(bundle).unwrap();
    let as_controller = PatchParams { field_manager: Some("controller".to_owned()), ..PatchParams::default() };
    hooks.patch("inject", &as_controller, &Patch::Json::<()>(json_patch)).await.unwrap();
    let stored = serde_json::to_value(hooks.get("inject").await.unwrap()).unwrap();
    assert_eq!(managers(&stored), [("controller".into(), "Update".into()), ("installer".into(), "Apply".into())]);
    let controller = &stored["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(
        controller,
        &json!({"f:webhooks": {"k:{\"name\":\"inject.example.com\"}": {"f:clientConfig": {"f:caBundle": {}}}}})
    );

    // The installer applies again, changed, without its label: no conflict, the bundle stays, the label goes.
    hooks.patch("inject", &as_installer, &chart(20, false)).await.unwrap();
    let stored = serde_json::to_value(hooks.get("inject").await.unwrap()).unwrap();
    assert_eq!(stored["webhooks"][0]["timeoutSeconds"], 20);
    assert_eq!(stored["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=");
    assert!(stored["metadata"].get("labels").is_none_or(|l| l.get("app").is_none()), "{stored}");

    // Another applier changing the installer's field conflicts, in the real server's words.
    let kube::Error::Api(status) =
        hooks.patch("inject", &PatchParams::apply("other"), &chart(30, false)).await.unwrap_err()
    else {
        panic!("an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"installer\": .webhooks[name=\"inject.example.com\"].timeoutSeconds"
    );
    hooks.patch("inject", &PatchParams::apply("other").force(), &chart(30, false)).await.unwrap();
    let stored = serde_json::to_value(hooks.get("inject").await.unwrap()).unwrap();
    assert_eq!(stored["webhooks"][0]["timeoutSeconds"], 30);
}

#[tokio::test]
async fn a_collection_is_deleted_by_selector() {
    let sim = ApiServer::start().await.unwrap();
    for (name, labels) in [("a", json!({"tier": "x"})), ("b", json!({"tier": "x"})), ("c", json!({"tier": "y"}))] {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}});
        assert_eq!(http(&sim, "POST", "/api/v1/namespaces/demo/configmaps", JSON, &cm.to_string()).await.status, 201);
    }
    let deleted = http(&sim, "DELETE", "/api/v1/namespaces/demo/configmaps?labelSelector=tier%3Dx", JSON, "").await;
    assert_eq!((deleted.status, deleted.body["kind"].as_str()), (200, Some("ConfigMapList")));
    assert_eq!(deleted.body["items"].as_array().unwrap().len(), 2);
    let left: Vec<Value> = sim.list(&Resource::new("", "v1", "configmaps"));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["metadata"]["name"], "c");
}

#[tokio::test]
async fn bodies_it_cannot_read_are_415() {
    let sim = ApiServer::start().await.unwrap();
    let cbor = http(&sim, "POST", "/api/v1/namespaces/demo/configmaps", "application/cbor", "\u{a0}").await;
    assert_eq!(cbor.status, 415);
    let pod = http(
        &sim,
        "POST",
        "/api/v1/namespaces/demo/pods",
        "application/vnd.kubernetes.protobuf",
        "k8s\0\n\u{9}\n\u{2}v1\u{12}\u{3}Pod",
    )
    .await;
    assert_eq!(pod.status, 415);
    assert!(pod.body["message"].as_str().unwrap().contains("Pod (v1) in protobuf is not supported"), "{pod:?}");
}
