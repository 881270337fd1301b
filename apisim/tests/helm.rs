//! The repository's chart (`deploy/chart/osm`) through the real `helm` (installed by `scripts/setup.sh`;
//! `MESH_HELM` may name another binary) against the simulator: install (server-side apply, CRDs waited
//! for until Established, the release stored in a protobuf-encoded Secret), upgrade with reused values,
//! uninstall; and the conflict a real API server reports when `kubectl edit` changed a field Helm applies.
//! The chart changes under other hands: the checks are about the release and its objects, not their
//! contents.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::path::PathBuf;

use apisim::{ApiServer, Resource};
use common::{Tools, ToolsExt as _, http};
use serde_json::{Value, json};

fn chart() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/chart/osm").display().to_string()
}

const NS: &str = "osm-system";

/// The release's Secrets (Helm's storage), newest revision last.
fn releases(sim: &ApiServer) -> Vec<Value> {
    let mut found: Vec<Value> = sim
        .list(&Resource::new("", "v1", "secrets"))
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["owner"] == "helm" && s["metadata"]["labels"]["name"] == "osm")
        .collect();
    found.sort_by_key(|s| s["metadata"]["labels"]["version"].as_str().and_then(|v| v.parse::<u32>().ok()));
    found
}

/// Names (`kind/name`) of the objects of the release's manifest, as kubectl finds them in the cluster.
async fn objects_found(tools: &Tools, manifest: &str) -> Vec<String> {
    let run = tools.kubectl(&["get", "-f", manifest, "--ignore-not-found", "-o", "name"]).await;
    assert!(run.ok, "{run:?}");
    run.stdout.lines().map(str::to_owned).collect()
}

async fn install(tools: &Tools) {
    let run = tools
        .helm(&[
            "install",
            "osm",
            &chart(),
            "--namespace",
            NS,
            "--create-namespace",
            "--kubeconfig",
            &tools.kubeconfig.display().to_string(),
        ])
        .await;
    assert!(run.ok, "helm install failed:\n{}{}", run.stdout, run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_the_chart_upgrades_it_with_reused_values_and_uninstalls_it() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    let kubeconfig = tools.kubeconfig.display().to_string();
    install(&tools).await;

    let stored = releases(&sim);
    assert_eq!(stored.len(), 1, "one release Secret");
    assert_eq!(stored[0]["metadata"]["labels"]["status"], "deployed");
    let crds = sim.list(&Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions"));
    assert!(!crds.is_empty(), "the chart's CRDs");
    for crd in &crds {
        let established =
            crd["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Established");
        assert!(established, "{crd}");
    }
    let manifest = tools.helm(&["get", "manifest", "osm", "--namespace", NS, "--kubeconfig", &kubeconfig]).await;
    assert!(manifest.ok, "{manifest:?}");
    let manifest = tools.file("release.yaml", &manifest.stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert!(!docs.is_empty());
    let installed = objects_found(&tools, &manifest).await;
    assert_eq!(installed.len(), docs.len(), "every object of the release exists: {installed:?}");
    let listed = tools.helm(&["list", "--namespace", NS, "--kubeconfig", &kubeconfig]).await;
    assert!(listed.ok && listed.stdout.contains("deployed"), "{listed:?}");

    // The controller fills the webhooks' CA bundles (a JSON patch of its own): an upgrade keeps them.
    let mutating = Resource::new("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations");
    let hooks = sim.list(&mutating);
    for hook in &hooks {
        let name = hook["metadata"]["name"].as_str().unwrap();
        let patch = json!([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="}]).to_string();
        let path = format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}?fieldManager=osm-controller"
        );
        assert_eq!(http(&sim, "PATCH", &path, "application/json-patch+json", &patch).await.status, 200);
    }

    let run = tools
        .helm(&["upgrade", "osm", &chart(), "--namespace", NS, "--reuse-values", "--kubeconfig", &kubeconfig])
        .await;
    assert!(run.ok, "helm upgrade failed:\n{}{}", run.stdout, run.stderr);
    let stored = releases(&sim);
    assert_eq!(stored.last().unwrap()["metadata"]["labels"]["version"], "2");
    assert_eq!(stored.last().unwrap()["metadata"]["labels"]["status"], "deployed");
    for hook in &hooks {
        let now = sim.get(&mutating, "", hook["metadata"]["name"].as_str().unwrap()).unwrap();
        assert_eq!(
            now["webhooks"][0]["clientConfig"]["caBundle"], "Q0E=",
            "the controller's field survives the upgrade"
        );
    }

    let run = tools.helm(&["uninstall", "osm", "--namespace", NS, "--kubeconfig", &kubeconfig]).await;
    assert!(run.ok, "helm uninstall failed:\n{}{}", run.stdout, run.stderr);
    assert!(releases(&sim).is_empty(), "the release's Secrets are gone");
    let kept: Vec<&Value> =
        docs.iter().filter(|d| d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep").collect();
    assert_eq!(objects_found(&tools, &manifest).await.len(), kept.len(), "only what the chart keeps is left");
    assert_eq!(
        sim.list(&Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")).len(),
        crds.len(),
        "Helm keeps CRDs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_conflicts_with_a_field_kubectl_edit_changed_until_forced() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    let kubeconfig = tools.kubeconfig.display().to_string();
    install(&tools).await;
    let deployments = Resource::new("apps", "v1", "deployments");
    let deployment = sim.list(&deployments).into_iter().next().expect("the chart's Deployment");
    let name = deployment["metadata"]["name"].as_str().unwrap().to_owned();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_owned();

    // The first container's image, edited by hand.
    let editor = tools.script("editor.sh", "sed -i '0,/image: .*/s//image: example.com\\/edited:1/' \"$1\"");
    let run = tools.kubectl_env(&["edit", "deployment", &name, "-n", NS], &[("KUBE_EDITOR", &editor)]).await;
    assert!(run.ok, "{run:?}");
    let edited = sim.get(&deployments, NS, &name).unwrap();
    assert_eq!(edited["spec"]["template"]["spec"]["containers"][0]["image"], "example.com/edited:1");

    let upgrade = ["upgrade", "osm", &chart(), "--namespace", NS, "--reuse-values", "--kubeconfig", &kubeconfig];
    let run = tools.helm(&upgrade).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains("Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1"),
        "{run:?}"
    );
    assert!(run.stderr.contains("].image"), "{run:?}");
    assert_eq!(
        sim.get(&deployments, NS, &name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        "example.com/edited:1"
    );

    let forced: Vec<&str> = upgrade.iter().copied().chain(["--force-conflicts"]).collect();
    let run = tools.helm(&forced).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(
        sim.get(&deployments, NS, &name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        image.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_takes_a_client_side_applied_release_over_to_server_side_apply() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    let kubeconfig = tools.kubeconfig.display().to_string();
    let install = ["install", "osm", &chart(), "--namespace", NS, "--create-namespace", "--server-side=false"];
    let run = tools.helm(&[&install[..], &["--kubeconfig", &kubeconfig]].concat()).await;
    assert!(run.ok, "{run:?}");
    let deployments = Resource::new("apps", "v1", "deployments");
    let managers = |sim: &ApiServer| -> Vec<(String, String)> {
        let d = sim.list(&deployments).into_iter().next().expect("the chart's Deployment");
        d["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["manager"].as_str().unwrap().to_owned(), m["operation"].as_str().unwrap().to_owned()))
            .collect()
    };
    assert_eq!(managers(&sim), [("helm".to_owned(), "Update".to_owned())]);

    // Helm hands its fields over to server-side apply (rewriting managedFields), then applies a change.
    let upgrade = ["upgrade", "osm", &chart(), "--namespace", NS, "--reuse-values", "--server-side=true"];
    let run = tools.helm(&[&upgrade[..], &["--set", "replicaCount=3", "--kubeconfig", &kubeconfig]].concat()).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(managers(&sim), [("helm".to_owned(), "Apply".to_owned())]);
}
