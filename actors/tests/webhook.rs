//! The admission webhooks over HTTPS, as the API server calls them: real AdmissionReview JSON in, the
//! review answered, and the bootstrap Secret written to the API-server simulator.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::time::Duration;

use apisim::{ApiServer, Resource};
use base64::Engine as _;
use serde_json::{Value, json};

mod common;

struct Webhooks {
    port: u16,
    http_port: u16,
    validator_port: u16,
    root_pem: String,
    // Dropped first: the controller stops before its directory goes.
    _running: common::Running,
    _dir: tempfile::TempDir,
}

impl Webhooks {
    async fn start(sim: &ApiServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The root the controller will find in the cluster.
        let ca = k8s::ca_secret::load_or_create(sim.client().unwrap(), "osm-system", "cluster.local").await.unwrap();
        let config = common::on_cluster(&sim.url(), dir.path(), "test");
        let running = common::Running::start(config);
        Self {
            port: running.webhook_port,
            http_port: running.http_port,
            validator_port: running.validator_port,
            root_pem: ca.root_pem().to_owned(),
            _running: running,
            _dir: dir,
        }
    }

    /// The injector on OSM's 9090 serves `/mutate-pod-creation`, the validator on 9093 `/validate`.
    fn addr(&self, path: &str) -> std::net::SocketAddr {
        ([127, 0, 0, 1], if path == "/validate" { self.validator_port } else { self.port }).into()
    }

    fn server_name(path: &str) -> &'static str {
        if path == "/validate" { "osm-validator.osm-system.svc" } else { "osm-injector.osm-system.svc" }
    }

    async fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        apisim::webhook::post(self.addr(path), Self::server_name(path), &self.root_pem, path, body).await.unwrap()
    }

    async fn review(&self, path: &str, review: &Value) -> Value {
        apisim::webhook::review(self.addr(path), Self::server_name(path), &self.root_pem, path, review).await.unwrap()
    }
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}, "annotations": annotations},
        "spec": {"serviceAccountName": "web", "containers": [{
            "name": "app", "image": "app", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": 8080, "path": "/ready"}}
        }]}
    })
}

fn pod_review(uid: &str, object: Value, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": object, "dryRun": dry_run
        }
    })
}

async fn sim_with_namespace() -> ApiServer {
    let sim = ApiServer::start().await.unwrap();
    sim.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {openservicemesh.io/monitored-by: osm}\n  \
         annotations: {openservicemesh.io/sidecar-injection: enabled}",
    )
    .unwrap();
    sim
}

/// Secrets in the pods' namespace (the mesh root's is in osm-system).
fn secrets(sim: &ApiServer) -> Vec<Value> {
    sim.list(&Resource::new("", "v1", "secrets")).into_iter().filter(|s| s["metadata"]["namespace"] == "shop").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_pod_is_patched_and_its_bootstrap_secret_created() {
    let sim = sim_with_namespace().await;
    let hooks = Webhooks::start(&sim).await;
    let original = pod(json!({}));
    let resp = hooks.review("/mutate-pod-creation", &pod_review("u-1", original.clone(), false)).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert_eq!(resp["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD.decode(resp["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = original;
    json_patch::patch(&mut patched, &patch).unwrap();
    // The patched pod is a valid Kubernetes Pod with the sidecar.
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(patched.clone()).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app", "envoy"]);
    assert_eq!(spec.init_containers.unwrap()[0].name, "osm-init");
    let uuid = pod.metadata.labels.unwrap()["osm-proxy-uuid"].clone();
    let secret = sim.get(&Resource::new("", "v1", "secrets"), "shop", &format!("envoy-bootstrap-config-{uuid}"));
    let secret = secret.expect("the bootstrap Secret is created");
    let boot = base64::engine::general_purpose::STANDARD.decode(secret["data"]["bootstrap.yaml"].as_str().unwrap());
    let boot: Value = serde_json::from_slice(&boot.unwrap()).unwrap();
    assert_eq!(boot["node"]["id"], uuid.as_str());

    // Once the pod exists (and has a UID), it owns its Secret: Kubernetes deletes the Secret with it.
    let created = sim.put(&Resource::new("", "v1", "pods"), patched).unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
    let owned = async {
        loop {
            let s = sim.get(&Resource::new("", "v1", "secrets"), "shop", &format!("envoy-bootstrap-config-{uuid}"));
            if s.is_some_and(|s| s["metadata"]["ownerReferences"][0]["uid"] == uid.as_str()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), owned).await.expect("the pod owns its bootstrap Secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_and_dry_run_create_nothing() {
    let sim = sim_with_namespace().await;
    let hooks = Webhooks::start(&sim).await;
    let opted_out = pod(json!({"openservicemesh.io/sidecar-injection": "disabled"}));
    let resp = hooks.review("/mutate-pod-creation", &pod_review("u-2", opted_out, false)).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none_or(Value::is_null), "no patch: {resp}");
    let resp = hooks.review("/mutate-pod-creation", &pod_review("u-3", pod(json!({})), true)).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_string(), "a dry run sees the patch: {resp}");
    assert!(secrets(&sim).is_empty(), "but no Secret is created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_bad_reviews_get_errors_and_the_server_keeps_serving() {
    let sim = sim_with_namespace().await;
    let hooks = Webhooks::start(&sim).await;
    let (status, body) = hooks.post("/mutate-pod-creation", b"{not json").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("E7010"), "{}", String::from_utf8_lossy(&body));
    let (status, _) = hooks.post("/mutate-pod-creation", &vec![b' '; 5 << 20]).await;
    assert_eq!(status, 413, "bodies over the limit are refused");
    let typo = pod(json!({"openservicemesh.io/sidecar-injection": "maybe"}));
    let resp = hooks.review("/mutate-pod-creation", &pod_review("u-4", typo, false)).await;
    assert_eq!(resp["allowed"], false);
    assert!(resp["status"]["message"].as_str().unwrap().contains("E7001"), "{resp}");
    // Each port serves its own webhook only.
    let (status, _) = apisim::webhook::post(
        hooks.addr("/mutate-pod-creation"),
        "osm-injector.osm-system.svc",
        &hooks.root_pem,
        "/validate",
        b"{}",
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "the injector's port does not validate");
    // Still serving.
    let resp = hooks.review("/mutate-pod-creation", &pod_review("u-5", pod(json!({})), false)).await;
    assert_eq!(resp["allowed"], true);
}

fn target_review(uid: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "access.smi-spec.io", "version": "v1alpha3", "kind": "TrafficTarget"},
            "resource": {"group": "access.smi-spec.io", "version": "v1alpha3", "resource": "traffictargets"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
                       "metadata": {"name": "t", "namespace": "shop"}, "spec": spec}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_that_could_never_be_in_force_is_refused_with_what_to_fix() {
    let sim = sim_with_namespace().await;
    let hooks = Webhooks::start(&sim).await;
    let rules = json!([{"kind": "HTTPRouteGroup", "name": "routes"}]);
    let good = json!({"destination": {"kind": "ServiceAccount", "name": "web", "namespace": "shop"},
                      "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": "shop"}], "rules": rules});
    let resp = hooks.review("/validate", &target_review("v-1", good.clone())).await;
    assert_eq!(resp["allowed"], true, "a rule naming a group that does not exist yet is fine: {resp}");
    let mut elsewhere = good.clone();
    elsewhere["destination"]["namespace"] = json!("other");
    let resp = hooks.review("/validate", &target_review("v-2", elsewhere)).await;
    assert_eq!(resp["allowed"], false);
    assert!(resp["status"]["message"].as_str().unwrap().contains("E2020"), "{resp}");
    // No namespace is never read as the TrafficTarget's own: refused with the code, for the destination
    // and for a source alike.
    let mut no_ns = good.clone();
    no_ns["destination"].as_object_mut().unwrap().remove("namespace");
    let resp = hooks.review("/validate", &target_review("v-4", no_ns)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(message.contains("E2020") && message.contains("spec.destination.namespace is missing"), "{resp}");
    let mut no_source_ns = good.clone();
    no_source_ns["sources"][0].as_object_mut().unwrap().remove("namespace");
    let resp = hooks.review("/validate", &target_review("v-5", no_source_ns)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp["status"]["message"].as_str().unwrap().contains("E2030"), "{resp}");
    let mut typo = good;
    typo["destinaton"] = json!({});
    let resp = hooks.review("/validate", &target_review("v-3", typo)).await;
    assert_eq!(resp["allowed"], false);
    assert!(resp["status"]["message"].as_str().unwrap().contains("destinaton"), "{resp}");
}

/// The review answered for `object` under `kind` and `operation`.
fn review_of(uid: &str, kind: &str, operation: &str, object: Value) -> Value {
    let mut review = pod_review(uid, object, false);
    review["request"]["kind"]["kind"] = json!(kind);
    review["request"]["operation"] = json!(operation);
    review
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_json_reviews_of_pods_being_created_are_injected_and_every_refusal_keeps_the_uid() {
    let sim = sim_with_namespace().await;
    let hooks = Webhooks::start(&sim).await;
    let review = pod_review("t-1", pod(json!({})), false).to_string();
    // Not JSON by its media type: 415 before anything is read, nothing created.
    for path in ["/mutate-pod-creation", "/validate"] {
        let (status, body) = apisim::webhook::exchange(
            hooks.addr(path),
            Webhooks::server_name(path),
            &hooks.root_pem,
            path,
            "text/plain",
            review.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(status, 415, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("E7013"));
    }
    assert!(secrets(&sim).is_empty(), "a refused request creates no Secret");

    // Well-formed reviews of something that is not a readable pod: denied as reviews, uid echoed.
    let mut broken = pod(json!({}));
    broken["spec"]["containers"] = json!("app");
    let resp = hooks.review("/mutate-pod-creation", &pod_review("t-2", broken, false)).await;
    assert_eq!((resp["uid"].as_str(), &resp["allowed"]), (Some("t-2"), &json!(false)), "{resp}");
    assert!(resp["status"]["message"].as_str().unwrap().contains("E7014"), "{resp}");
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"}});
    let resp = hooks.review("/mutate-pod-creation", &review_of("t-3", "ConfigMap", "CREATE", config_map)).await;
    assert_eq!((resp["uid"].as_str(), &resp["allowed"]), (Some("t-3"), &json!(false)), "{resp}");
    assert!(resp["status"]["message"].as_str().unwrap().contains("ConfigMap"), "{resp}");

    // An UPDATE is let through unchanged: no patch, no Secret.
    let resp = hooks.review("/mutate-pod-creation", &review_of("t-4", "Pod", "UPDATE", pod(json!({})))).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none_or(Value::is_null), "an update is not injected: {resp}");
    assert!(secrets(&sim).is_empty());

    // A copy of an injected pod would share its proxy identity: refused, naming the pod.
    let resp = hooks.review("/mutate-pod-creation", &pod_review("t-5", pod(json!({})), false)).await;
    let patch = base64::engine::general_purpose::STANDARD.decode(resp["patch"].as_str().unwrap()).unwrap();
    let mut injected = pod(json!({}));
    json_patch::patch(&mut injected, &serde_json::from_slice::<json_patch::Patch>(&patch).unwrap()).unwrap();
    injected["metadata"]["name"] = json!("web-copy");
    let resp = hooks.review("/mutate-pod-creation", &pod_review("t-6", injected, false)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(message.contains("E7007") && message.contains("shop/web-copy"), "{resp}");
    assert_eq!(secrets(&sim).len(), 1, "only the first admission signed and stored an identity");

    // A Windows pod: the mesh has no Windows sidecar, so it is refused rather than given a Linux one.
    let mut windows = pod(json!({}));
    windows["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "windows"});
    let resp = hooks.review("/mutate-pod-creation", &pod_review("t-7", windows, false)).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp["status"]["message"].as_str().unwrap().contains("E7008"), "{resp}");
    assert_eq!(secrets(&sim).len(), 1);
}

/// The value of the series `series` (name and labels as exposed) in `metrics`.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osm_metrics_count_api_events_namespaces_feature_flags_and_injected_certificates() {
    let sim = sim_with_namespace().await;
    sim.apply_yaml(
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {name: osm-mesh-config, namespace: osm-system}\nspec: {featureFlags: {enableRetryPolicy: true}}",
    )
    .unwrap();
    let hooks = Webhooks::start(&sim).await;
    let metrics = || async { common::get_at(hooks.http_port, "/metrics").await.map(|(_, b)| b).unwrap_or_default() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut text = metrics().await;
    while value(&text, "osm_resource_namespace_count") != Some(1.0) {
        assert!(tokio::time::Instant::now() < deadline, "the namespace was never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics().await;
    }
    assert_eq!(value(&text, "osm_feature_flag_enabled{feature_flag=\"enableRetryPolicy\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "osm_feature_flag_enabled{feature_flag=\"enableEnvoyActiveHealthChecks\"}"), Some(0.0));
    assert!(
        value(&text, "osm_k8s_api_event_count{namespace=\"\",type=\"namespace-relisted\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // A pod applied in the mesh's namespace is an event of its own.
    sim.put(&Resource::new("", "v1", "pods"), pod(json!({}))).unwrap();
    let series = "osm_k8s_api_event_count{namespace=\"shop\",type=\"pod-applied\"}";
    while value(&text, series).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the pod event was never counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics().await;
    }
    // The injector's certificates count as issued.
    let before = value(&text, "osm_cert_issued_count").unwrap_or(0.0);
    let resp = hooks.review("/mutate-pod-creation", &pod_review("m-1", pod(json!({})), false)).await;
    assert!(resp["patch"].is_string(), "{resp}");
    let after = value(&metrics().await, "osm_cert_issued_count").unwrap_or(0.0);
    assert_eq!(after, before + 1.0, "the sidecar's xDS certificate is counted");
}
