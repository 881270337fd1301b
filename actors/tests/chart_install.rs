//! The chart on a cluster from nothing, as a new user installs it: the real `helm` against the API-server
//! simulator, which calls admission webhooks as a real API server does (`failurePolicy: Fail`, "no
//! endpoints available" until the controller serves). `helm install` succeeds while no webhook is
//! reachable; the controller then bootstraps on its own (the webhooks' CA bundles, the MeshConfig from the
//! chart's preset, created through its own validating webhook), and `helm upgrade --reuse-values` still
//! succeeds after an operator edited the MeshConfig.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apisim::clients::Tools;
use apisim::{ApiServer, Resource};
use serde_json::Value;

mod common;

const NS: &str = "osm-system";

/// Waits until `want` holds; fails after a generous bound instead of hanging.
async fn until(what: &str, want: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !want() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_with_the_webhooks_unreachable_and_the_controller_bootstraps_on_its_own() {
    let sim = ApiServer::start().await.unwrap();
    // The webhooks' Services have no endpoints until the controller serves.
    let ports: Arc<Mutex<Option<(u16, u16)>>> = Arc::default();
    let seen = ports.clone();
    sim.resolve_services_with(Arc::new(move |ns: &str, name: &str, port: u16| {
        let (injector, validator) = (*seen.lock().unwrap())?;
        match (ns, name, port) {
            (NS, "osm-injector", 9090) => Some(SocketAddr::from(([127, 0, 0, 1], injector))),
            (NS, "osm-validator", 9093) => Some(SocketAddr::from(([127, 0, 0, 1], validator))),
            _ => None,
        }
    }));
    let tools = Tools::new(&sim).unwrap();
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/chart/osm").display().to_string();
    let install = [
        "install",
        "osm",
        &chart,
        "--namespace",
        NS,
        "--create-namespace",
        "--set",
        "meshConfig.enablePermissiveTrafficPolicyMode=false",
    ];
    let run = tools.helm(&install).await;
    assert!(run.ok, "helm install with no webhook reachable:\n{}{}", run.stdout, run.stderr);

    // The controller, as the chart's Deployment runs it.
    let config = common::on_cluster(&sim.url(), tools.dir.path(), "osm-controller-0");
    let running = common::Running::start(config);
    *ports.lock().unwrap() = Some((running.webhook_port, running.validator_port));

    // It fills the CA bundles and creates the MeshConfig from the preset, through its own validator.
    let hooks = |kind: &str, name: &str| {
        sim.get(&Resource::new("admissionregistration.k8s.io", "v1", kind), "", name)
            .map(|c| c["webhooks"].as_array().unwrap().iter().all(|w| w["clientConfig"]["caBundle"].is_string()))
            .unwrap_or(false)
    };
    until("the webhooks' CA bundles", || {
        hooks("mutatingwebhookconfigurations", "osm-webhook-osm")
            && hooks("validatingwebhookconfigurations", "osm-validator-mesh-osm")
    })
    .await;
    let mesh_configs = Resource::new("config.openservicemesh.io", "v1alpha2", "meshconfigs");
    until("the MeshConfig from the preset", || sim.get(&mesh_configs, NS, "osm-mesh-config").is_some()).await;
    let mc: Value = sim.get(&mesh_configs, NS, "osm-mesh-config").unwrap();
    assert_eq!(mc["spec"]["traffic"]["enablePermissiveTrafficPolicyMode"], false, "the preset's value: {mc}");
    // And it becomes ready (every kind listed once; the duties above do not wait for that).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while common::get_at(running.http_port, "/health/ready").await.map(|(code, _)| code) != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "the controller never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The validator answers for the MeshConfig now: a bad value is refused at the door with its code.
    let tools = &tools;
    let patch = |spec: &'static str| async move {
        tools.kubectl(&["patch", "meshconfig", "osm-mesh-config", "-n", NS, "--type", "merge", "-p", spec]).await
    };
    let refused = patch(r#"{"spec":{"certificate":{"serviceCertValidityDuration":"999999h"}}}"#).await;
    assert!(!refused.ok && refused.stderr.contains("E4152"), "{refused:?}");

    // Retry, the policy API's first kind, at the door of a mesh namespace: the CRD's schema refuses a
    // policy with a required field missing (422, as a real API server does), the validator one Envoy
    // would reject, and a good one is stored.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {openservicemesh.io/monitored-by: osm}}",
    )
    .unwrap();
    let apply = |name: &'static str, policy: &'static str| async move {
        let file = tools.dir.path().join(format!("{name}.yaml"));
        let spec = if policy.is_empty() { String::new() } else { format!("  retryPolicy: {policy}\n") };
        std::fs::write(
            &file,
            format!(
                "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: Retry\nmetadata: {{name: {name}, namespace: demo}}\n\
                 spec:\n  source: {{kind: ServiceAccount, name: client, namespace: demo}}\n\
                 \x20 destinations: [{{kind: Service, name: server, namespace: demo}}]\n{spec}"
            ),
        )
        .unwrap();
        tools.kubectl(&["apply", "-f", &file.display().to_string()]).await
    };
    let missing = apply("no-policy", "").await;
    assert!(
        !missing.ok && missing.stderr.contains("retryPolicy") && !missing.stderr.contains("admission webhook"),
        "refused by the schema, before admission: {missing:?}"
    );
    let envoy_would_reject =
        apply("sometimes", "{retryOn: sometimes, perTryTimeout: 1s, numRetries: 3, retryBackoffBaseInterval: 10ms}")
            .await;
    assert!(
        !envoy_would_reject.ok && envoy_would_reject.stderr.contains("Retry demo/sometimes: spec.retryPolicy.retryOn"),
        "{envoy_would_reject:?}"
    );
    let good = apply("good", "{retryOn: 5xx, perTryTimeout: 1s, numRetries: 3, retryBackoffBaseInterval: 10ms}").await;
    assert!(good.ok, "{good:?}");
    let retries = Resource::new("policy.openservicemesh.io", "v1alpha1", "retries");
    assert!(sim.get(&retries, "demo", "good").is_some() && sim.get(&retries, "demo", "sometimes").is_none());
    // UpstreamTrafficSetting: one per host and namespace (the validator reads the others), a status Envoy
    // cannot answer with refused by the validator, one outside 400-599 by the schema.
    let uts = |name: &'static str, extra: &'static str| async move {
        let file = tools.dir.path().join(format!("uts-{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: UpstreamTrafficSetting\n\
                 metadata: {{name: {name}, namespace: demo}}\nspec:\n  host: server.demo.svc.cluster.local\n{extra}"
            ),
        )
        .unwrap();
        tools.kubectl(&["apply", "-f", &file.display().to_string()]).await
    };
    let first = uts("first", "  connectionSettings: {tcp: {maxConnections: 10}}\n").await;
    assert!(first.ok, "{first:?}");
    let again = uts("first", "  connectionSettings: {tcp: {maxConnections: 20}}\n").await;
    assert!(again.ok, "an object may change its own host's settings: {again:?}");
    let second = uts("second", "").await;
    assert!(
        !second.ok && second.stderr.contains("E2032") && second.stderr.contains("demo/first"),
        "a second setting for the host is refused, naming the first: {second:?}"
    );
    let status = "  rateLimit: {local: {http: {requests: 1, unit: second, responseStatusCode: 499}}}\n";
    let not_envoys = uts("status", status).await;
    assert!(
        !not_envoys.ok && not_envoys.stderr.contains("responseStatusCode 499"),
        "a status Envoy cannot send is refused: {not_envoys:?}"
    );
    let out_of_range =
        uts("range", "  rateLimit: {local: {http: {requests: 1, unit: second, responseStatusCode: 600}}}\n").await;
    assert!(
        !out_of_range.ok
            && out_of_range.stderr.contains("responseStatusCode")
            && !out_of_range.stderr.contains("admission webhook"),
        "refused by the schema: {out_of_range:?}"
    );
    let unit = uts("unit", "  rateLimit: {local: {tcp: {connections: 1, unit: day}}}\n").await;
    assert!(!unit.ok && unit.stderr.contains("unit"), "{unit:?}");

    // IngressBackend: the controller writes its status (an error naming the missing backend Service, then
    // committed once it exists); a second one for the same backend port is refused by the validator.
    let ib = |name: &'static str| async move {
        let file = tools.dir.path().join(format!("ib-{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: IngressBackend\nmetadata: {{name: {name}, namespace: demo}}\n\
                 spec:\n  backends: [{{name: server, port: {{number: 8080, protocol: http}}}}]\n\
                 \x20 sources: [{{kind: IPRange, name: 10.0.0.0/8}}]\n"
            ),
        )
        .unwrap();
        tools.kubectl(&["apply", "-f", &file.display().to_string()]).await
    };
    let first = ib("edge").await;
    assert!(first.ok, "{first:?}");
    let backends = Resource::new("policy.openservicemesh.io", "v1alpha1", "ingressbackends");
    let status = |want: &'static str| {
        let sim = &sim;
        let backends = &backends;
        async move {
            until(&format!("the IngressBackend's status {want}"), || {
                sim.get(backends, "demo", "edge").is_some_and(|o| o["status"]["currentStatus"] == want)
            })
            .await;
            sim.get(backends, "demo", "edge").unwrap()["status"]["reason"].as_str().unwrap_or_default().to_owned()
        }
    };
    let reason = status("error").await;
    assert!(reason.contains("E2034") && reason.contains("demo/server"), "{reason}");
    sim.apply_yaml("apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: demo}\nspec: {ports: [{port: 80, targetPort: 8080}]}")
        .unwrap();
    status("committed").await;
    let second = ib("edge-too").await;
    assert!(
        !second.ok && second.stderr.contains("E2033") && second.stderr.contains("demo/edge"),
        "a second IngressBackend for the backend port is refused: {second:?}"
    );

    // The ingress gateway certificate, from the MeshConfig: a kubernetes.io/tls Secret, signed by the mesh root.
    let gateway = patch(
        r#"{"spec":{"certificate":{"ingressGateway":{"subjectAltNames":["edge.ingress.cluster.local"],"validityDuration":"1h","secret":{"name":"edge-cert","namespace":"ingress"}}}}}"#,
    )
    .await;
    assert!(gateway.ok, "{gateway:?}");
    let secrets = Resource::new("", "v1", "secrets");
    until("the ingress gateway's Secret", || sim.get(&secrets, "ingress", "edge-cert").is_some()).await;
    let secret = sim.get(&secrets, "ingress", "edge-cert").unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(secret["data"][key].is_string(), "{key} in {secret}");
    }

    // An operator's own edit, then an upgrade with reused values: the chart does not own the MeshConfig,
    // so nothing conflicts, and the edit stays.
    let edit = patch(r#"{"spec":{"traffic":{"enableEgress":false}}}"#).await;
    assert!(edit.ok, "{edit:?}");
    let run = tools.helm(&["upgrade", "osm", &chart, "--namespace", NS, "--reuse-values"]).await;
    assert!(run.ok, "helm upgrade --reuse-values:\n{}{}", run.stdout, run.stderr);
    let mc: Value = sim.get(&mesh_configs, NS, "osm-mesh-config").unwrap();
    assert_eq!(mc["spec"]["traffic"]["enableEgress"], false, "the operator's edit stays: {mc}");
    until("the CA bundles after the upgrade", || {
        hooks("mutatingwebhookconfigurations", "osm-webhook-osm")
            && hooks("validatingwebhookconfigurations", "osm-validator-mesh-osm")
    })
    .await;
    drop(running);
}
