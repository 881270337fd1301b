//! Golden files: the configuration real Envoy sidecars hold for a few representative meshes, as Envoy itself
//! renders it (admin `/config_dump`), normalised and checked in under `tests/golden/`. A change to the
//! generated configuration shows up in review as a diff of these files.
//!
//! Regenerate after an intended change:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test -p testbed --test golden
//! ```
//!
//! Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use testbed::{Binaries, LocalMesh, MeshOptions};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

/// The resources of one `/config_dump?include_eds`, without what changes from run to run (timestamps,
/// versions, certificate bytes), each list sorted by name.
fn normalise(dump: &Value) -> Value {
    let mut out = Map::new();
    let sorted = |mut v: Vec<Value>, key: &str| {
        v.sort_by(|a, b| a[key].as_str().cmp(&b[key].as_str()));
        Value::Array(v)
    };
    for config in dump["configs"].as_array().into_iter().flatten() {
        let ty = config["@type"].as_str().unwrap_or_default();
        let pick = |list: &str, inner: &str| -> Vec<Value> {
            config[list].as_array().into_iter().flatten().map(|e| e[inner].clone()).collect()
        };
        if ty.ends_with("ListenersConfigDump") {
            let listeners = config["dynamic_listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| l["active_state"]["listener"].clone())
                .collect();
            out.insert("listeners".into(), sorted(listeners, "name"));
        } else if ty.ends_with("ClustersConfigDump") {
            out.insert("clusters".into(), sorted(pick("dynamic_active_clusters", "cluster"), "name"));
        } else if ty.ends_with("RoutesConfigDump") {
            out.insert("routes".into(), sorted(pick("dynamic_route_configs", "route_config"), "name"));
        } else if ty.ends_with("EndpointsConfigDump") {
            out.insert("endpoints".into(), sorted(pick("dynamic_endpoint_configs", "endpoint_config"), "cluster_name"));
        } else if ty.ends_with("SecretsConfigDump") {
            // Names only: the certificates are new on every run.
            let mut names: Vec<Value> =
                config["dynamic_active_secrets"].as_array().into_iter().flatten().map(|s| s["name"].clone()).collect();
            names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            out.insert("secrets".into(), Value::Array(names));
        }
    }
    Value::Object(out)
}

/// The pod's configuration once it holds `marker` and every proxy holds everything the controller sent
/// (its generation, `osm proxy status --wait`), not once it looked unchanged for a while.
fn settled_config(mesh: &LocalMesh, pod: &str, marker: &str) -> Value {
    let dump = || mesh.admin(pod, "/config_dump?include_eds").ok().and_then(|d| serde_json::from_str(&d).ok());
    mesh.eventually(Duration::from_secs(30), &format!("{pod}'s config to hold {marker:?}"), || {
        dump().map(|d| normalise(&d)).filter(|c| c.to_string().contains(marker))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "30"]).unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    normalise(&dump().unwrap_or_else(|| panic!("{pod}'s config dump")))
}

fn check(case: &str, pod: &str, config: &Value) {
    let path = golden_dir().join(case).join(format!("{}.json", pod.replace('/', "_")));
    let text = format!("{}\n", serde_json::to_string_pretty(config).unwrap());
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; generate it with UPDATE_GOLDEN=1 cargo test -p testbed --test golden", path.display())
    });
    if want != text {
        let first = want.lines().zip(text.lines()).position(|(a, b)| a != b).unwrap_or(0);
        let context = |s: &str| s.lines().skip(first.saturating_sub(3)).take(12).collect::<Vec<_>>().join("\n");
        panic!(
            "{} differs from the configuration Envoy holds, from line {}:\n--- golden\n{}\n--- now\n{}\n\
             If the change is intended: UPDATE_GOLDEN=1 cargo test -p testbed --test golden",
            path.display(),
            first + 1,
            context(&want),
            context(&text)
        );
    }
}

/// Starts a mesh from a fixture plus extra files, runs the pods, and checks each pod's configuration.
fn run_case(case: &str, fixture: &str, extra: &[(&str, &str)], pods: &[(&str, &str)]) {
    let mesh = {
        let mut mesh = LocalMesh::start(MeshOptions::new(fixtures().join(fixture)), bins()).unwrap();
        for (name, contents) in extra {
            mesh.write_mesh_file(name, contents).unwrap();
        }
        for (pod, _) in pods {
            let (ns, name) = pod.split_once('/').unwrap();
            mesh.add_pod(ns, name).unwrap();
        }
        mesh
    };
    for (pod, marker) in pods {
        let config = settled_config(&mesh, pod, marker);
        check(case, pod, &config);
    }
}

#[test]
fn permissive() {
    run_case(
        "permissive",
        "basic",
        &[],
        &[("demo/client", "rds-outbound.80"), ("demo/server-1", "inbound_demo/server_8080_http")],
    );
}

#[test]
fn smi_http_and_tcp_routes() {
    run_case(
        "smi-routes",
        "smi",
        &[],
        &[("demo/client", "outbound_demo/echo_7000_tcp"), ("demo/server-1", "rbac-for-route")],
    );
}

#[test]
fn smi_split_and_an_invalid_object() {
    let split = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\n\
                 metadata: {name: server-split, namespace: demo}\n\
                 spec: {service: server, backends: [{service: server-v1, weight: 80}, {service: server-v2, weight: 20}]}\n";
    // A target for the thief whose only route has a broken regex: reported, and it grants nothing.
    let invalid = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\n\
                   metadata: {name: broken, namespace: demo}\nspec: {matches: [{name: all, pathRegex: \"/(\"}]}\n---\n\
                   apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: thief, namespace: demo}\n\
                   spec:\n  destination: {kind: ServiceAccount, name: server, namespace: demo}\n\
                   \x20 sources: [{kind: ServiceAccount, name: thief, namespace: demo}]\n\
                   \x20 rules: [{kind: HTTPRouteGroup, name: broken, matches: [all]}]\n";
    run_case(
        "smi-split-invalid",
        "smi",
        &[("split.yaml", split), ("invalid.yaml", invalid)],
        &[("demo/client", "weighted_clusters"), ("demo/server-2", "server.demo.svc.cluster.local"), ("demo/thief", "")],
    );
}

#[test]
fn smi_upstream_traffic_settings() {
    // Circuit breakers and a connect timeout at the client, a connection limit, a host limit and a limit
    // on the `/api/.*` route at the server.
    let settings = "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: UpstreamTrafficSetting\n\
                    metadata: {name: server, namespace: demo}\nspec:\n  host: server.demo.svc.cluster.local\n\
                    \x20 connectionSettings:\n    tcp: {maxConnections: 50, connectTimeout: 250ms}\n\
                    \x20   http: {maxRequests: 100, maxPendingRequests: 10, maxRequestsPerConnection: 20, maxRetries: 3}\n\
                    \x20 rateLimit:\n    local:\n      tcp: {connections: 100, unit: second, burst: 10}\n\
                    \x20     http: {requests: 50, unit: second, responseHeadersToAdd: [{name: x-limited, value: \"1\"}]}\n\
                    \x20 httpRoutes:\n  - path: /api/.*\n    rateLimit:\n      local: {requests: 5, unit: minute, responseStatusCode: 503}\n";
    run_case(
        "smi-upstream-traffic",
        "smi",
        &[("upstream.yaml", settings)],
        &[("demo/client", "track_remaining"), ("demo/server-1", "x-limited")],
    );
}

#[test]
fn ingress_backend() {
    // Plain HTTP from an address range and an ingress controller's Service, beside the mesh's mTLS chain.
    let ingress = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ingress}\n---\n\
                   apiVersion: v1\nkind: Service\nmetadata: {name: ingress-nginx, namespace: ingress}\n\
                   spec: {clusterIP: 10.96.0.90, ports: [{name: http, port: 80}]}\n---\n\
                   apiVersion: v1\nkind: Endpoints\nmetadata: {name: ingress-nginx, namespace: ingress}\n\
                   subsets: [{addresses: [{ip: 10.244.9.1}], ports: [{name: http, port: 80}]}]\n---\n\
                   apiVersion: policy.openservicemesh.io/v1alpha1\nkind: IngressBackend\n\
                   metadata: {name: server, namespace: demo}\n\
                   spec:\n  backends: [{name: server, port: {number: 8080, protocol: http}}]\n\
                   \x20 sources: [{kind: Service, name: ingress-nginx, namespace: ingress}, {kind: IPRange, name: 10.250.0.0/16}]\n";
    run_case("ingress", "basic", &[("ingress.yaml", ingress)], &[("demo/server-1", "ingress_demo/server_8080_http")]);
}
