//! The Helm chart (`deploy/chart/osm`) through the real `helm` (installed by `scripts/setup.sh`): it
//! lints, every manifest it renders loads into the real Kubernetes types without a field lost on the way
//! (a misspelt field would be), and the CRDs it ships are the ones the Rust types generate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1 as admission;
use k8s_openapi::api::{apps, autoscaling, core, policy, rbac};
use serde_json::Value;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/chart/osm")
}

fn helm(args: &[&str]) -> String {
    let bin = std::env::var("MESH_HELM").unwrap_or_else(|_| "helm".to_owned());
    let out = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin} (install it with scripts/setup.sh): {e}"));
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads `doc` into `T` and back: anything the type does not know (a typo, a wrong level) is lost on the
/// way and shows up as a difference.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let diff = json_patch::diff(doc, &back);
    if diff.0.is_empty() { Ok(()) } else { Err(format!("fields not in the type: {diff:?}")) }
}

fn check(doc: &Value) -> Result<&'static str, String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let result = match kind {
        "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(doc),
        "Service" => round_trip::<core::v1::Service>(doc),
        "Deployment" => round_trip::<apps::v1::Deployment>(doc),
        "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(doc),
        "Role" => round_trip::<rbac::v1::Role>(doc),
        "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(doc),
        "MutatingWebhookConfiguration" => round_trip::<admission::MutatingWebhookConfiguration>(doc),
        "ValidatingWebhookConfiguration" => round_trip::<admission::ValidatingWebhookConfiguration>(doc),
        "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(doc),
        "HorizontalPodAutoscaler" => round_trip::<autoscaling::v2::HorizontalPodAutoscaler>(doc),
        "ConfigMap" => round_trip::<core::v1::ConfigMap>(doc).and_then(|()| {
            // The MeshConfig preset must be a MeshConfig spec the controller accepts (strictly: a typo fails).
            let preset = doc["data"]["preset-mesh-config.json"].as_str().ok_or("no preset-mesh-config.json")?;
            let spec: k8s::crds::MeshConfigSpec = serde_json::from_str(preset).map_err(|e| e.to_string())?;
            let mut mc = k8s::crds::MeshConfig::new("osm-mesh-config", spec);
            mc.metadata.namespace = Some("osm-system".into());
            k8s::convert::mesh_config(&mc).map(|_| ()).map_err(|e| e.to_string())
        }),
        other => Err(format!("a kind this test does not know: {other}")),
    };
    result.map(|()| match kind {
        "Deployment" => "Deployment",
        "MutatingWebhookConfiguration" => "MutatingWebhookConfiguration",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "HorizontalPodAutoscaler" => "HorizontalPodAutoscaler",
        _ => "other",
    })
}

fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "osm", chart.as_str(), "--namespace", "osm-system"];
    args.extend_from_slice(extra);
    let text = helm(&args);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("helm's output: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn the_chart_lints_and_renders_only_valid_kubernetes_objects() {
    helm(&["lint", "--strict", &chart().display().to_string()]);
    for extra in [
        &[][..],
        &["--set", "podDisruptionBudget.enabled=true,autoscale.enabled=true,antiAffinity.enabled=false"][..],
        &["--set", "webhooks.validate=false,meshName=blue,replicaCount=3"][..],
    ] {
        let docs = render(extra);
        let mut kinds = Vec::new();
        for doc in &docs {
            let name = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
            kinds.push(check(doc).unwrap_or_else(|e| panic!("{name} ({extra:?}): {e}")));
        }
        assert!(kinds.contains(&"Deployment") && kinds.contains(&"MutatingWebhookConfiguration"), "{extra:?}");
        let optional = kinds.contains(&"PodDisruptionBudget") && kinds.contains(&"HorizontalPodAutoscaler");
        assert_eq!(optional, extra.iter().any(|a| a.contains("autoscale.enabled=true")), "{extra:?}");
    }
    // Install order: Helm creates custom resources after the webhook configurations, before anything serves
    // them. No object of the chart may be one its own webhooks review, or `helm install` fails.
    let docs = render(&[]);
    for hook in docs.iter().filter(|d| d["kind"].as_str().is_some_and(|k| k.ends_with("WebhookConfiguration"))) {
        for w in hook["webhooks"].as_array().unwrap() {
            assert!(w["namespaceSelector"].is_object(), "{}: every webhook is limited to namespaces", w["name"]);
            for rule in w["rules"].as_array().unwrap() {
                for doc in &docs {
                    let api = doc["apiVersion"].as_str().unwrap();
                    let group = api.rsplit_once('/').map_or("", |(g, _)| g);
                    let plural = format!("{}s", doc["kind"].as_str().unwrap().to_ascii_lowercase());
                    let covers = |key: &str, v: &str| rule[key].as_array().unwrap().iter().any(|x| x == v || x == "*");
                    assert!(
                        !(covers("apiGroups", group) && covers("resources", &plural)),
                        "{} {} is reviewed by the chart's own webhook {}",
                        doc["kind"],
                        doc["metadata"]["name"],
                        w["name"]
                    );
                }
            }
        }
    }
    let validator = docs.iter().find(|d| d["kind"] == "ValidatingWebhookConfiguration").unwrap();
    for w in validator["webhooks"].as_array().unwrap() {
        assert_eq!(w["clientConfig"]["service"]["port"], 9093, "OSM's validator port");
        assert_eq!(w["sideEffects"], "None");
    }
    let injector = docs.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").unwrap();
    assert_eq!(
        injector["webhooks"][0]["sideEffects"], "NoneOnDryRun",
        "the injector writes a Secret, not on a dry run"
    );

    let blue = render(&["--set", "meshName=blue"]);
    let hook = blue.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").unwrap();
    assert_eq!(hook["metadata"]["name"], "osm-webhook-blue");
    assert_eq!(hook["webhooks"][0]["namespaceSelector"]["matchLabels"]["openservicemesh.io/monitored-by"], "blue");
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let shipped = std::fs::read_to_string(chart().join("crds/crds.yaml")).unwrap();
    let generated = k8s::crds::definitions_yaml().unwrap();
    assert!(
        shipped == generated,
        "deploy/chart/osm/crds/crds.yaml differs from the types: regenerate it with \
         `cargo run -p actors --bin osm-controller -- crds > deploy/chart/osm/crds/crds.yaml`"
    );
}

#[test]
fn the_round_trip_catches_a_misspelt_field() {
    let svc =
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}});
    assert!(check(&svc).is_err());
    let dup = "apiVersion: v1\nkind: Service\nmetadata: {name: x, name: y}\n";
    assert!(serde_saphyr::from_multiple::<Value>(dup).is_err(), "duplicate keys are refused when parsing");
}
