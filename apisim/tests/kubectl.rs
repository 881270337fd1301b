//! The real `kubectl` (installed by `scripts/setup.sh`) against the simulator through a kubeconfig:
//! discovery, `apply -f` (client- and server-side), `get`, `label`, `annotate`, `edit` (with a
//! `KUBE_EDITOR` script), `create` (protobuf bodies), `delete`, and strict field validation of custom
//! resources; kube-rs's discovery (the unaggregated documents) finds the same.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use apisim::{ApiServer, Resource};
use common::ToolsExt as _;
use serde_json::Value;

const MANIFEST: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: demo}
data: {level: info}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: nginx:1
        ports: [{containerPort: 80, name: http}]
      - name: side
        image: busybox:1
";

const CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              mode: {type: string, enum: [fast, slow], default: slow}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
  - name: v1alpha1
    served: false
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

fn deployments() -> Resource {
    Resource::new("apps", "v1", "deployments")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_labels_annotates_edits_creates_and_deletes() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    let manifest = tools.file("manifest.yaml", MANIFEST);
    let out = tools.kubectl_ok(&["apply", "-f", &manifest]).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let web = json(&tools.kubectl_ok(&["get", "deployment", "web", "-n", "demo", "-o", "json"]).await);
    assert_eq!(web["spec"]["template"]["spec"]["containers"][1]["image"], "busybox:1");
    let all = tools.kubectl_ok(&["get", "all", "-n", "demo", "-o", "name"]).await;
    assert_eq!(all.trim(), "deployment.apps/web", "the `all` category");
    let cms = tools.kubectl_ok(&["get", "cm", "-A"]).await;
    assert!(cms.contains("demo") && cms.contains("settings"), "{cms}");

    tools.kubectl_ok(&["label", "configmap", "settings", "-n", "demo", "tier=front"]).await;
    tools.kubectl_ok(&["annotate", "deploy", "web", "-n", "demo", "note=hello"]).await;
    let settings = sim.get(&Resource::new("", "v1", "configmaps"), "demo", "settings").unwrap();
    assert_eq!(settings["metadata"]["labels"]["tier"], "front");
    let stored = sim.get(&deployments(), "demo", "web").unwrap();
    assert_eq!(stored["metadata"]["annotations"]["note"], "hello");

    // `kubectl edit` sends a strategic merge patch: the containers merge by name.
    let editor =
        tools.script("editor.sh", "sed -i 's/replicas: 1/replicas: 3/; s/image: busybox:1/image: busybox:2/' \"$1\"");
    let run = tools.kubectl_env(&["edit", "deployment", "web", "-n", "demo"], &[("KUBE_EDITOR", &editor)]).await;
    assert!(run.ok, "{run:?}");
    let edited = sim.get(&deployments(), "demo", "web").unwrap();
    let containers = &edited["spec"]["template"]["spec"]["containers"];
    assert_eq!((edited["spec"]["replicas"].as_u64(), containers[1]["image"].as_str()), (Some(3), Some("busybox:2")));
    assert_eq!(containers[0]["ports"][0]["name"], "http", "the container not edited kept its fields");
    let managers: Vec<&str> =
        edited["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&"kubectl-edit") && managers.contains(&"kubectl-client-side-apply"), "{managers:?}");

    // Applying the manifest again (a three-way strategic merge) puts back what it says.
    let manifest = tools.file("manifest.yaml", &MANIFEST.replace("nginx:1", "nginx:2"));
    tools.kubectl_ok(&["apply", "-f", &manifest]).await;
    let applied = sim.get(&deployments(), "demo", "web").unwrap();
    let containers = &applied["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        (containers[0]["image"].as_str(), containers[1]["image"].as_str()),
        (Some("nginx:2"), Some("busybox:1"))
    );
    assert_eq!(applied["spec"]["replicas"], 1);

    // Generators send protobuf bodies.
    tools.kubectl_ok(&["create", "namespace", "other"]).await;
    tools.kubectl_ok(&["create", "secret", "generic", "token", "-n", "other", "--from-literal=key=s3cr3t"]).await;
    tools.kubectl_ok(&["create", "configmap", "plain", "-n", "other", "--from-literal=a=b"]).await;
    let secret = sim.get(&Resource::new("", "v1", "secrets"), "other", "token").unwrap();
    assert_eq!(secret["data"]["key"], "czNjcjN0");
    assert_eq!(sim.get(&Resource::new("", "v1", "configmaps"), "other", "plain").unwrap()["data"]["a"], "b");

    let out = tools.kubectl_ok(&["delete", "-f", &manifest]).await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    assert!(sim.get(&deployments(), "demo", "web").is_none());
    let gone = tools.kubectl(&["get", "deployment", "web", "-n", "demo"]).await;
    assert!(!gone.ok && gone.stderr.contains("NotFound"), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_crds_and_its_custom_resources_are_validated_strictly() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    let version = json(&tools.kubectl_ok(&["version", "-o", "json"]).await);
    assert_eq!(version["serverVersion"]["minor"], "37");
    tools.kubectl_ok(&["apply", "-f", &tools.file("crd.yaml", CRD)]).await;
    let resources = tools.kubectl_ok(&["api-resources", "--api-group=example.com", "-o", "wide"]).await;
    assert!(
        resources.contains("widgets") && resources.contains("wd") && resources.contains("example.com/v1"),
        "{resources}"
    );
    let built_in = tools.kubectl_ok(&["api-resources", "--namespaced=false", "-o", "name"]).await;
    assert!(built_in.lines().any(|l| l == "customresourcedefinitions.apiextensions.k8s.io"), "{built_in}");

    // kube-rs reads the unaggregated documents: the same resources.
    let discovery = kube::Discovery::new(sim.client().unwrap()).run().await.unwrap();
    let group = discovery.get("example.com").expect("the CRD's group");
    let versions: Vec<String> = group.versions().map(str::to_owned).collect();
    assert_eq!(versions, ["v1", "v1beta1"], "served versions only, the storage version preferred");
    let (deploy, caps) = discovery.get("apps").unwrap().recommended_kind("Deployment").unwrap();
    assert_eq!((deploy.plural.as_str(), caps.scope), ("deployments", kube::discovery::Scope::Namespaced));

    // kubectl asks for strict field validation: an unknown field is an error, not a warning.
    let widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\nspec: {size: 3, colour: red}\n";
    let path = tools.file("widget.yaml", widget);
    let run = tools.kubectl(&["apply", "-f", &path]).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains("Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.colour\""),
        "{run:?}"
    );
    let run = tools.kubectl(&["apply", "--validate=warn", "-f", &path]).await;
    assert!(run.ok && run.stderr.contains("unknown field \"spec.colour\""), "{run:?}");
    let stored = json(&tools.kubectl_ok(&["get", "wd", "w", "-o", "json"]).await);
    assert_eq!(stored["spec"], serde_json::json!({"size": 3, "mode": "slow"}), "pruned and defaulted");

    let path = tools.file("widget.yaml", &widget.replace("colour: red", "mode: medium").replace("size: 3", "size: 30"));
    let run = tools.kubectl(&["apply", "-f", &path]).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains("spec.mode: Unsupported value: \"medium\": supported values: \"fast\", \"slow\""),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("spec.size: Invalid value: 30: spec.size in body should be less than or equal to 10"),
        "{run:?}"
    );
    let listed =
        tools.kubectl_ok(&["get", "widgets.v1beta1.example.com", "-o", "jsonpath={.items[0].apiVersion}"]).await;
    assert_eq!(listed, "example.com/v1beta1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_owns_fields_conflicts_with_an_edit_and_removes_what_it_stops_applying() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    let manifest = tools.file("original.yaml", MANIFEST);
    tools.kubectl_ok(&["apply", "--server-side", "-f", &manifest]).await;
    let editor = tools.script("editor.sh", "sed -i 's/image: busybox:1/image: busybox:edited/' \"$1\"");
    let run = tools.kubectl_env(&["edit", "deployment", "web", "-n", "demo"], &[("KUBE_EDITOR", &editor)]).await;
    assert!(run.ok, "{run:?}");

    let changed = tools.file("changed.yaml", &MANIFEST.replace("busybox:1", "busybox:2"));
    let run = tools.kubectl(&["apply", "--server-side", "-f", &changed]).await;
    assert!(!run.ok, "{run:?}");
    assert!(
        run.stderr.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: \
             .spec.template.spec.containers[name=\"side\"].image"
        ),
        "{run:?}"
    );
    // Applying the value already there is no conflict (the field is shared); forcing takes the field.
    let same = tools.file("same.yaml", &MANIFEST.replace("busybox:1", "busybox:edited"));
    tools.kubectl_ok(&["apply", "--server-side", "-f", &same]).await;
    tools.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &changed]).await;
    let web = sim.get(&deployments(), "demo", "web").unwrap();
    assert_eq!(web["spec"]["template"]["spec"]["containers"][1]["image"], "busybox:2");

    // A field the applier no longer applies, and no one else owns, goes.
    let without_side =
        MANIFEST.replace("busybox:1", "busybox:2").replace("      - name: side\n        image: busybox:2\n", "");
    let without_side = tools.file("without-side.yaml", &without_side);
    tools.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &without_side]).await;
    let web = sim.get(&deployments(), "demo", "web").unwrap();
    let names: Vec<&str> = web["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["app"], "{web}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_switches_from_client_side_to_server_side_apply_without_conflicts() {
    let sim = ApiServer::start().await.unwrap();
    let tools = common::tools(&sim);
    tools.kubectl_ok(&["apply", "-f", &tools.file("client.yaml", MANIFEST)]).await;
    let changed = tools.file("server.yaml", &MANIFEST.replace("nginx:1", "nginx:2"));
    tools.kubectl_ok(&["apply", "--server-side", "-f", &changed]).await;
    let web = sim.get(&deployments(), "demo", "web").unwrap();
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:2");

    // What another manager changed since is still a conflict.
    tools.kubectl_ok(&["scale", "deployment", "web", "-n", "demo", "--replicas=5"]).await;
    let run = tools.kubectl(&["apply", "--server-side", "-f", &changed]).await;
    assert!(
        !run.ok
            && run
                .stderr
                .contains("conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"),
        "{run:?}"
    );
}
