//! Admission webhooks as the real API server calls them: matching, the AdmissionReview sent, mutation
//! before validation, denials, failure policies, TLS trust, timeouts and dry runs, over HTTP from kube-rs,
//! raw requests and the real `kubectl`; the simulator's own Rust API bypasses them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use apisim::{ApiServer, Resource};
use base64::Engine as _;
use common::{ToolsExt as _, http, webhook};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

const JSON: &str = "application/json";
const SERVICE_NAME: &str = "hooks.hooks-system.svc";

fn configmap(ns: &str, name: &str, data: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data})
        .to_string()
}

/// A webhook configuration of one webhook, as YAML for [`ApiServer::apply_yaml`].
fn configuration(kind: &str, name: &str, hook: Value) -> String {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name},
        "webhooks": [hook],
    })
    .to_string()
}

/// A webhook on `hooks.hooks-system.svc:443<path>` for configmaps.
fn hook(name: &str, path: &str, ca_bundle: &str, operations: &[&str]) -> Value {
    json!({
        "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "timeoutSeconds": 5,
        "clientConfig": {"service": {"namespace": "hooks-system", "name": "hooks", "path": path}, "caBundle": ca_bundle},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": operations, "resources": ["configmaps"]}],
    })
}

fn resolve_to(sim: &ApiServer, addr: SocketAddr) {
    sim.resolve_services_with(Arc::new(move |ns: &str, name: &str, port: u16| {
        (ns == "hooks-system" && name == "hooks" && port == 443).then_some(addr)
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_closed_webhook_without_endpoints_refuses_writes_with_the_api_servers_message() {
    let sim = ApiServer::start().await.unwrap();
    let validator = json!({
        "name": "v.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None", "timeoutSeconds": 7,
        "clientConfig": {"service": {"namespace": "osm-system", "name": "osm-validator", "port": 9093, "path": "/validate"}},
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}],
    });
    sim.apply_yaml(&configuration("ValidatingWebhookConfiguration", "validate", validator.clone())).unwrap();

    // kube-rs: 500, in the real API server's words (failurePolicy defaults to Fail).
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(sim.client().unwrap(), "demo");
    let cm: ConfigMap = serde_json::from_str(&configmap("demo", "a", json!({"k": "v"}))).unwrap();
    let kube::Error::Api(status) = cms.create(&Default::default(), &cm).await.unwrap_err() else {
        panic!("an API error")
    };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    assert_eq!(
        status.message,
        "Internal error occurred: failed calling webhook \"v.example.com\": failed to call webhook: Post \
         \"https://osm-validator.osm-system.svc:9093/validate?timeout=7s\": no endpoints available for service \
         \"osm-validator\""
    );
    assert!(sim.get(&Resource::new("", "v1", "configmaps"), "demo", "a").is_none());

    // The real kubectl meets the same refusal.
    let tools = common::tools(&sim);
    let manifest = tools.file("cm.yaml", &configmap("demo", "b", json!({})));
    let run = tools.kubectl(&["apply", "-f", &manifest]).await;
    assert!(!run.ok && run.stderr.contains("no endpoints available for service \"osm-validator\""), "{run:?}");

    // The cluster's own writes (the Rust API) are not subject to admission.
    sim.apply_yaml(&configmap("demo", "seeded", json!({}))).unwrap();

    // failurePolicy: Ignore lets the write through.
    let mut ignoring = validator;
    ignoring["failurePolicy"] = json!("Ignore");
    sim.apply_yaml(&configuration("ValidatingWebhookConfiguration", "validate", ignoring)).unwrap();
    cms.create(&Default::default(), &cm).await.unwrap();
    assert!(sim.get(&Resource::new("", "v1", "configmaps"), "demo", "a").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_apply_before_validation_and_a_denial_carries_the_webhooks_code_and_message() {
    let hooks = webhook(
        &[SERVICE_NAME],
        Arc::new(|path: &str, review: &Value| {
            let object = &review["request"]["object"];
            match path.split('?').next() {
                Some("/mutate") => {
                    let patch = if object.pointer("/metadata/labels").is_some() {
                        json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
                    } else {
                        json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
                    };
                    let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
                    Some(json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}))
                }
                _ if object.pointer("/data/forbidden").is_some() => Some(json!({
                    "allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "data.forbidden is set"},
                })),
                _ if !object.is_null() && object.pointer("/metadata/labels/mutated").is_none() => {
                    Some(json!({"allowed": false}))
                }
                _ => Some(json!({"allowed": true, "warnings": ["checked by check.example.com"]})),
            }
        }),
    )
    .await;
    let sim = ApiServer::start().await.unwrap();
    resolve_to(&sim, hooks.addr);
    sim.apply_yaml(&configuration(
        "MutatingWebhookConfiguration",
        "label",
        hook("label.example.com", "/mutate", &hooks.ca_bundle, &["CREATE", "UPDATE"]),
    ))
    .unwrap();
    sim.apply_yaml(&configuration(
        "ValidatingWebhookConfiguration",
        "check",
        hook("check.example.com", "/validate", &hooks.ca_bundle, &["CREATE", "UPDATE", "DELETE"]),
    ))
    .unwrap();

    let created = http(
        &sim,
        "POST",
        "/api/v1/namespaces/demo/configmaps?fieldManager=test",
        JSON,
        &configmap("demo", "a", json!({"k": "v"})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["metadata"]["labels"]["mutated"], "yes");
    assert_eq!(created.warnings, ["checked by check.example.com"]);
    let stored = sim.get(&Resource::new("", "v1", "configmaps"), "demo", "a").unwrap();
    assert_eq!(stored["metadata"]["labels"]["mutated"], "yes");

    // The reviews: the mutating webhook first, then the validating one seeing the mutated object.
    let reviews = hooks.reviews();
    assert_eq!(
        reviews.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["/mutate?timeout=5s", "/validate?timeout=5s"]
    );
    let (_, review) = &reviews[0];
    assert_eq!(
        (review["apiVersion"].as_str(), review["kind"].as_str()),
        (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    );
    let request = &review["request"];
    assert!(!request["uid"].as_str().unwrap().is_empty());
    assert_eq!(request["kind"], json!({"group": "", "version": "v1", "kind": "ConfigMap"}));
    assert_eq!(request["resource"], json!({"group": "", "version": "v1", "resource": "configmaps"}));
    assert_eq!((request["namespace"].as_str(), request["name"].as_str()), (Some("demo"), Some("a")));
    assert_eq!((request["operation"].as_str(), request["dryRun"].as_bool()), (Some("CREATE"), Some(false)));
    assert!(request["userInfo"]["username"].is_string());
    assert_eq!(request["object"]["data"], json!({"k": "v"}));
    assert!(request["oldObject"].is_null());
    assert_eq!(request["options"]["fieldManager"], "test");
    assert_ne!(reviews[1].1["request"]["uid"], request["uid"], "every call has its own uid");
    assert_eq!(reviews[1].1["request"]["object"]["metadata"]["labels"]["mutated"], "yes");

    // An update is reviewed with the old object.
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(sim.client().unwrap(), "demo");
    let mut cm: ConfigMap = serde_json::from_value(stored).unwrap();
    cm.data = Some([("k".to_owned(), "w".to_owned())].into());
    cm.metadata.labels = None;
    let replaced = cms.replace("a", &Default::default(), &cm).await.unwrap();
    assert_eq!(replaced.metadata.labels.unwrap()["mutated"], "yes", "mutated again on update");
    let (_, update) = hooks.reviews().last().cloned().unwrap();
    assert_eq!(update["request"]["operation"], "UPDATE");
    assert_eq!(update["request"]["oldObject"]["data"]["k"], "v");

    // A denial: the webhook's code and message; nothing stored.
    let denied = http(
        &sim,
        "POST",
        "/api/v1/namespaces/demo/configmaps",
        JSON,
        &configmap("demo", "b", json!({"forbidden": "1"})),
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.body["message"],
        "admission webhook \"check.example.com\" denied the request: data.forbidden is set"
    );
    assert_eq!(denied.body["reason"], "Forbidden");
    assert!(sim.get(&Resource::new("", "v1", "configmaps"), "demo", "b").is_none());

    // A delete reaches the webhook whose rules say DELETE, with the old object and no object.
    let before = hooks.reviews().len();
    cms.delete("a", &Default::default()).await.unwrap();
    let reviews = hooks.reviews();
    assert_eq!(reviews.len(), before + 1, "only the validating webhook says DELETE");
    let delete = &reviews[before].1["request"];
    assert_eq!((delete["operation"].as_str(), delete["object"].is_null()), (Some("DELETE"), true));
    assert_eq!(delete["oldObject"]["metadata"]["name"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_namespace_and_object_selectors_choose_the_webhooks_called() {
    let hooks = webhook(&[SERVICE_NAME], Arc::new(|_: &str, _: &Value| Some(json!({"allowed": true})))).await;
    let sim = ApiServer::start().await.unwrap();
    resolve_to(&sim, hooks.addr);
    let mut in_mesh = hook("mesh.example.com", "/mesh", &hooks.ca_bundle, &["CREATE"]);
    in_mesh["namespaceSelector"] = json!({
        "matchLabels": {"mesh": "on"},
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}],
    });
    in_mesh["objectSelector"] = json!({"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]});
    sim.apply_yaml(&configuration("ValidatingWebhookConfiguration", "mesh", in_mesh)).unwrap();
    let mut cluster_deletes = hook("deletes.example.com", "/deletes", &hooks.ca_bundle, &["DELETE"]);
    cluster_deletes["rules"] = json!([{"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["DELETE"], "resources": ["*"], "scope": "Cluster"}]);
    sim.apply_yaml(&configuration("ValidatingWebhookConfiguration", "deletes", cluster_deletes)).unwrap();
    for (ns, labels) in
        [("in-mesh", json!({"mesh": "on"})), ("outside", json!({})), ("kube-system", json!({"mesh": "on"}))]
    {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}});
        assert_eq!(http(&sim, "POST", "/api/v1/namespaces", JSON, &body.to_string()).await.status, 201);
    }
    let ns = sim.get(&Resource::new("", "v1", "namespaces"), "", "outside").unwrap();
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "outside", "as real Namespaces are labelled");

    let calls = |path: &str| hooks.reviews().iter().filter(|(p, _)| p.starts_with(path)).count();
    let create = |ns: &str, name: &str, labels: Value| {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}});
        let (sim, path) = (&sim, format!("/api/v1/namespaces/{ns}/configmaps"));
        async move { http(sim, "POST", &path, JSON, &body.to_string()).await.status }
    };
    assert_eq!(create("in-mesh", "a", json!({})).await, 201);
    assert_eq!(calls("/mesh"), 1);
    assert_eq!(create("outside", "a", json!({})).await, 201);
    assert_eq!(create("kube-system", "a", json!({})).await, 201);
    assert_eq!(create("in-mesh", "skipped", json!({"skip": "yes"})).await, 201);
    assert_eq!(calls("/mesh"), 1, "namespaceSelector and objectSelector left the others out");
    assert_eq!(calls("/deletes"), 0, "Namespaces created: not a DELETE");

    assert_eq!(http(&sim, "DELETE", "/api/v1/namespaces/in-mesh/configmaps/a", JSON, "").await.status, 200);
    assert_eq!(calls("/deletes"), 0, "a ConfigMap is namespaced; the rule's scope is Cluster");
    assert_eq!(http(&sim, "DELETE", "/api/v1/namespaces/outside", JSON, "").await.status, 200);
    assert_eq!(calls("/deletes"), 1);
    let (_, review) = hooks.reviews().into_iter().find(|(p, _)| p.starts_with("/deletes")).unwrap();
    assert_eq!(review["request"]["resource"]["resource"], "namespaces");
    assert_eq!(review["request"]["kind"]["kind"], "Namespace");

    // Webhook configurations are never subject to webhooks.
    let all = json!({"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]});
    let mut everything = hook("everything.example.com", "/everything", &hooks.ca_bundle, &["CREATE"]);
    everything["rules"] = json!([all]);
    let config = configuration("ValidatingWebhookConfiguration", "everything", everything);
    let stored =
        http(&sim, "POST", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", JSON, &config)
            .await;
    assert_eq!(stored.status, 201);
    let path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/deletes";
    assert_eq!(http(&sim, "DELETE", path, JSON, "").await.status, 200);
    assert_eq!(calls("/everything"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_ca_bundle_is_trusted_calls_have_a_deadline_and_urls_are_used_as_they_are() {
    let hooks = webhook(
        &[SERVICE_NAME, "127.0.0.1"],
        Arc::new(|path: &str, _: &Value| (!path.starts_with("/slow")).then(|| json!({"allowed": true}))),
    )
    .await;
    let sim = ApiServer::start().await.unwrap();
    let create = |name: &str| {
        let (sim, body) = (&sim, configmap("demo", name, json!({})));
        async move { http(sim, "POST", "/api/v1/namespaces/demo/configmaps", JSON, &body).await }
    };
    let by_url = |path: &str, ca_bundle: &str, timeout: u64, policy: &str| {
        let mut h = hook("url.example.com", "", ca_bundle, &["CREATE"]);
        h["clientConfig"] = json!({"url": format!("https://{}{path}", hooks.addr), "caBundle": ca_bundle});
        h["timeoutSeconds"] = json!(timeout);
        h["failurePolicy"] = json!(policy);
        configuration("ValidatingWebhookConfiguration", "by-url", h)
    };

    sim.apply_yaml(&by_url("/ok", &hooks.ca_bundle, 5, "Fail")).unwrap();
    assert_eq!(create("a").await.status, 201);
    assert_eq!(hooks.reviews().last().unwrap().0, "/ok?timeout=5s");

    let (other_ca, _, _) = common::self_signed(&["127.0.0.1"]);
    sim.apply_yaml(&by_url("/ok", &common::ca_bundle_of(&other_ca), 5, "Fail")).unwrap();
    let refused = create("b").await;
    assert_eq!(refused.status, 500);
    assert_eq!(
        refused.body["message"],
        format!(
            "Internal error occurred: failed calling webhook \"url.example.com\": failed to call webhook: Post \
             \"https://{}/ok?timeout=5s\": tls: failed to verify certificate: x509: certificate signed by unknown \
             authority",
            hooks.addr
        )
    );

    // A webhook that never answers: the call ends at timeoutSeconds.
    sim.apply_yaml(&by_url("/slow", &hooks.ca_bundle, 1, "Fail")).unwrap();
    let started = std::time::Instant::now();
    let timed_out = create("c").await;
    assert_eq!(timed_out.status, 500);
    assert!(
        timed_out.body["message"].as_str().unwrap().ends_with("/slow?timeout=1s\": context deadline exceeded"),
        "{timed_out:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    sim.apply_yaml(&by_url("/slow", &hooks.ca_bundle, 1, "Ignore")).unwrap();
    assert_eq!(create("c").await.status, 201);

    // A service whose endpoint refuses connections.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    resolve_to(&sim, closed_addr);
    sim.apply_yaml(&configuration(
        "ValidatingWebhookConfiguration",
        "by-url",
        hook("svc.example.com", "/x", &hooks.ca_bundle, &["CREATE"]),
    ))
    .unwrap();
    let refused = create("d").await;
    assert!(
        refused.body["message"].as_str().unwrap().ends_with(&format!(
            "Post \"https://hooks.hooks-system.svc:443/x?timeout=5s\": dial tcp {closed_addr}: connect: connection refused"
        )),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reaches_only_webhooks_without_side_effects() {
    let hooks = webhook(&[SERVICE_NAME], Arc::new(|_: &str, _: &Value| Some(json!({"allowed": true})))).await;
    let sim = ApiServer::start().await.unwrap();
    resolve_to(&sim, hooks.addr);
    let mut hook = hook("effects.example.com", "/v", &hooks.ca_bundle, &["CREATE"]);
    hook["sideEffects"] = json!("NoneOnDryRun");
    sim.apply_yaml(&configuration("ValidatingWebhookConfiguration", "effects", hook.clone())).unwrap();
    let dry =
        http(&sim, "POST", "/api/v1/namespaces/demo/configmaps?dryRun=All", JSON, &configmap("demo", "a", json!({})))
            .await;
    assert_eq!(dry.status, 201);
    assert_eq!(hooks.reviews().last().unwrap().1["request"]["dryRun"], true);
    assert!(sim.get(&Resource::new("", "v1", "configmaps"), "demo", "a").is_none(), "a dry run stores nothing");

    hook["sideEffects"] = json!("Some");
    sim.apply_yaml(&configuration("ValidatingWebhookConfiguration", "effects", hook)).unwrap();
    let calls = hooks.reviews().len();
    let dry =
        http(&sim, "POST", "/api/v1/namespaces/demo/configmaps?dryRun=All", JSON, &configmap("demo", "a", json!({})))
            .await;
    assert_eq!(dry.status, 400);
    assert_eq!(dry.body["message"], "admission webhook \"effects.example.com\" does not support dry run");
    assert_eq!(hooks.reviews().len(), calls);
    let real = http(&sim, "POST", "/api/v1/namespaces/demo/configmaps", JSON, &configmap("demo", "a", json!({}))).await;
    assert_eq!(real.status, 201);
}
