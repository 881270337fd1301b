//! `osm install`, `osm mesh upgrade`, `osm uninstall mesh`, `osm namespace ignore` and `osm metrics
//! enable|disable` on the API-server simulator, with the real `helm` (installed by `scripts/setup.sh`)
//! driven by the `osm` binary as a user runs it: OSM's pre-install checks, the CRDs brought to the
//! embedded chart's version, values kept across an upgrade, and what an uninstall leaves or deletes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use apisim::clients::Tools;
use apisim::{ApiServer, Resource};
use serde_json::{Value, json};

const NS: &str = "osm-system";

/// Runs `osm` as a user would, with Helm's homes in the test's own directory.
fn osm(tools: &Tools, args: &[&str]) -> (bool, String) {
    let home = tools.dir.path().join("home");
    let helm = std::env::var("MESH_HELM").unwrap_or_else(|_| "helm".to_owned());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_osm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&tools.kubeconfig)
        .env("HOME", &home)
        .env("HELM_CACHE_HOME", home.join("helm-cache"))
        .env("HELM_CONFIG_HOME", home.join("helm-config"))
        .env("HELM_DATA_HOME", home.join("helm-data"))
        .env("OSM_HELM", helm)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osm_installs_upgrades_and_uninstalls_the_chart_it_embeds() {
    let sim = ApiServer::start().await.unwrap();
    let tools = Tools::new(&sim).unwrap();
    let deployments = Resource::new("apps", "v1", "deployments");
    let crds = Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions");

    // Refused before anything is touched: a name that cannot be a label.
    let (ok, text) = osm(&tools, &["install", "--mesh-name", "My_Mesh", "--no-wait"]);
    assert!(!ok && text.contains("mesh name \"My_Mesh\""), "{text}");
    assert!(sim.list(&crds).is_empty(), "nothing applied for a refused install");

    let (ok, text) =
        osm(&tools, &["install", "--no-wait", "--set", "meshConfig.enablePermissiveTrafficPolicyMode=false"]);
    assert!(ok, "{text}");
    assert!(text.contains("mesh osm (chart 0.1.0) installed in namespace osm-system"), "{text}");
    let controller = sim.get(&deployments, NS, "osm-controller").expect("the controller's Deployment");
    assert!(args(&controller).contains(&"--mesh-name=osm".to_owned()), "{controller}");
    let retries = "retries.policy.openservicemesh.io";
    assert!(sim.get(&crds, "", retries).is_some(), "the CRDs are applied");
    let preset = sim.get(&Resource::new("", "v1", "configmaps"), NS, "preset-mesh-config").unwrap();
    assert!(preset.to_string().contains("enablePermissiveTrafficPolicyMode"), "{preset}");

    // One mesh per namespace, one namespace per mesh name.
    let (ok, text) = osm(&tools, &["install", "--mesh-name", "other", "--no-wait"]);
    assert!(!ok && text.contains("namespace osm-system already has mesh osm"), "{text}");
    let (ok, text) = osm(&tools, &["install", "--osm-namespace", "elsewhere", "--no-wait"]);
    assert!(!ok && text.contains("a mesh named osm is already installed in namespace osm-system"), "{text}");

    // An upgrade brings back a CRD an older version lacked, applies a new value, keeps the install's.
    assert!(sim.remove(&crds, "", retries));
    let (ok, text) = osm(&tools, &["mesh", "upgrade", "--no-wait", "--set", "sidecar.logLevel=debug"]);
    assert!(ok, "{text}");
    assert!(text.contains("upgraded from 0.1.0 to chart 0.1.0"), "{text}");
    assert!(sim.get(&crds, "", retries).is_some(), "the upgrade applies the CRDs");
    let values = tools.helm(&["get", "values", "osm", "--namespace", NS, "-o", "json"]).await;
    assert!(values.ok, "{values:?}");
    let values: Value = serde_json::from_str(&values.stdout).unwrap();
    assert_eq!(values["sidecar"]["logLevel"], "debug", "{values}");
    assert_eq!(values["meshConfig"]["enablePermissiveTrafficPolicyMode"], false, "the install's value: {values}");
    let (ok, text) = osm(&tools, &["mesh", "upgrade", "--mesh-name", "nosuch", "--no-wait"]);
    assert!(!ok && text.contains("no mesh named nosuch") && text.contains("installed: osm in osm-system"), "{text}");

    // Namespaces: an ignored one cannot be added; metrics on a mesh namespace reach its injected pods.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: books}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: loose}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: injected, namespace: books, labels: {osm-proxy-uuid: \
         11111111-2222-3333-4444-555555555555}}\nspec: {containers: [{name: app, image: app}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: books}\n\
         spec: {containers: [{name: app, image: app}]}\n",
    )
    .unwrap();
    let (ok, text) = osm(&tools, &["namespace", "ignore", "legacy"]);
    assert!(ok, "{text}");
    let namespaces = Resource::new("", "v1", "namespaces");
    assert_eq!(sim.get(&namespaces, "", "legacy").unwrap()["metadata"]["labels"]["openservicemesh.io/ignore"], "true");
    let (ok, text) = osm(&tools, &["namespace", "add", "legacy"]);
    assert!(!ok && text.contains("namespace legacy is ignored"), "{text}");
    let (ok, text) = osm(&tools, &["namespace", "add", "books"]);
    assert!(ok, "{text}");
    let (ok, text) = osm(&tools, &["metrics", "enable", "--namespace", "books"]);
    assert!(ok && text.contains("1 running pods with a sidecar changed"), "{text}");
    let pods = Resource::new("", "v1", "pods");
    let annotations = |pod: &str| sim.get(&pods, "books", pod).unwrap()["metadata"]["annotations"].clone();
    assert_eq!(annotations("injected")["prometheus.io/scrape"], "true");
    assert_eq!(annotations("injected")["prometheus.io/port"], "15010");
    assert!(annotations("plain").get("prometheus.io/scrape").is_none(), "no sidecar, nothing to scrape");
    assert_eq!(
        sim.get(&namespaces, "", "books").unwrap()["metadata"]["annotations"]["openservicemesh.io/metrics"],
        "enabled"
    );
    let (ok, text) = osm(&tools, &["metrics", "disable", "--namespace", "books"]);
    assert!(ok, "{text}");
    assert!(annotations("injected").get("prometheus.io/scrape").is_none(), "{}", annotations("injected"));
    let (ok, text) = osm(&tools, &["metrics", "enable", "--namespace", "loose"]);
    assert!(!ok && text.contains("namespace loose is in no mesh"), "{text}");

    // Uninstall: asks first (no terminal here: refused without --force); keeps the mesh root by default,
    // deletes it and the CRDs when asked.
    let (ok, text) = osm(&tools, &["uninstall", "mesh"]);
    assert!(!ok && text.contains("--force"), "{text}");
    assert!(sim.get(&deployments, NS, "osm-controller").is_some());
    let secrets = Resource::new("", "v1", "secrets");
    sim.put(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "osm-ca-bundle", "namespace": NS}}),
    )
    .unwrap();
    let (ok, text) = osm(&tools, &["uninstall", "mesh", "--force", "--delete-cluster-wide-resources"]);
    assert!(ok, "{text}");
    assert!(sim.get(&deployments, NS, "osm-controller").is_none(), "the release is gone");
    assert!(sim.get(&secrets, NS, "osm-ca-bundle").is_none(), "{text}");
    assert!(sim.get(&crds, "", retries).is_none(), "no other mesh: the CRDs go: {text}");
    let (ok, text) = osm(&tools, &["uninstall", "mesh", "--force"]);
    assert!(!ok && text.contains("no mesh named osm is installed") && text.contains("the cluster has none"), "{text}");
}
