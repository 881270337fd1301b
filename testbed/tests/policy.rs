//! SMI policy end to end through real Envoy: access control by TrafficTarget with HTTP and TCP routes,
//! TrafficSplit over HTTP and TCP, and MeshConfig switching permissive ↔ SMI, all on the live mesh without
//! restarting a sidecar. Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sidecar::AdsApi;
use testbed::{Binaries, LocalMesh, MeshOptions};

const CLIENT: &str = "demo/client";
const THIEF: &str = "demo/thief";
const WAIT: Duration = Duration::from_secs(30);
const API: &str = "http://10.96.0.10/api/books";
const ECHO: &str = "10.96.0.11:7000";
const GRPC: &str = "10.96.0.16:9000";
const DB: &str = "10.96.0.17:3306";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smi")
}

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

fn start(api: AdsApi) -> LocalMesh {
    let mut opts = MeshOptions::new(fixture());
    opts.ads_api = api;
    let mut mesh = LocalMesh::start(opts, bins()).expect("starting the local mesh");
    for (pod, name) in [("demo/server-1", "server-1"), ("demo/server-2", "server-2")] {
        mesh.add_pod("demo", name).expect("server pod");
        mesh.spawn_app(pod, &["http-server", "--port", "8080", "--name", name]).unwrap();
        mesh.spawn_app(pod, &["tcp-echo", "--port", "7070", "--name", name]).unwrap();
        mesh.spawn_app(pod, &["grpc-server", "--port", "9000", "--name", name]).unwrap();
        mesh.spawn_app(pod, &["banner-server", "--port", "3306", "--name", name]).unwrap();
    }
    mesh.add_pod("demo", "client").expect("client pod");
    mesh.add_pod("demo", "thief").expect("thief pod");
    mesh
}

/// What one HTTP request from `pod` ends in: `200`, `403 RBAC: access denied`, ... or `error` when no
/// response came (the sidecar had nowhere to send it).
fn outcome(mesh: &LocalMesh, pod: &str, url: &str, extra: &[&str]) -> String {
    let mut args = vec!["get", url, "--timeout-s", "3"];
    args.extend_from_slice(extra);
    let Ok(out) = mesh.app(pod, &args) else { return "error".to_owned() };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    match lines.next().and_then(|l| l.strip_prefix("status=")) {
        Some("200") => "200".to_owned(),
        Some(code) => format!("{code} {}", lines.next().unwrap_or_default().trim()),
        None => "error".to_owned(),
    }
}

fn tcp_outcome(mesh: &LocalMesh, pod: &str) -> String {
    match mesh.app(pod, &["tcp-send", ECHO, "ping", "--timeout-s", "3"]) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => "error".to_owned(),
    }
}

fn diagnostics(mesh: &LocalMesh) -> String {
    let pod = |k: &str| mesh.pod(k).map(|p| p.envoy_log_tail()).unwrap_or_default();
    format!(
        "client envoy:\n{}\nserver-1 envoy:\n{}\ncontroller:\n{}",
        pod(CLIENT),
        pod("demo/server-1"),
        mesh.controller_output()
    )
}

/// Waits until a request from `pod` ends in `want`.
fn expect(mesh: &LocalMesh, pod: &str, url: &str, extra: &[&str], want: &str) {
    let mut last = String::new();
    mesh.eventually(WAIT, &format!("{pod}: {url} {extra:?} → {want}"), || {
        last = outcome(mesh, pod, url, extra);
        (last == want).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; last outcome: {last}\n{}", diagnostics(mesh)));
}

fn expect_tcp(mesh: &LocalMesh, pod: &str, want: impl Fn(&str) -> bool, what: &str) {
    let mut last = String::new();
    mesh.eventually(WAIT, &format!("{pod}: TCP {ECHO} {what}"), || {
        last = tcp_outcome(mesh, pod);
        want(&last).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; last outcome: {last}\n{}", diagnostics(mesh)));
}

const DENIED: &str = "403 RBAC: access denied";

/// Access as `target.yaml` grants it: the client's allowed routes pass, everything else is refused.
fn check_access(mesh: &LocalMesh) {
    expect(mesh, CLIENT, API, &[], "200");
    // Outside the route group: another path, another method, a route whose header is missing.
    assert_eq!(outcome(mesh, CLIENT, "http://10.96.0.10/admin", &[]), DENIED);
    assert_eq!(outcome(mesh, CLIENT, API, &["--method", "DELETE"]), DENIED);
    assert_eq!(outcome(mesh, CLIENT, "http://10.96.0.10/debug", &[]), DENIED);
    assert_eq!(outcome(mesh, CLIENT, "http://10.96.0.10/debug", &["--header", "x-debug: 1"]), "200");
    assert_eq!(outcome(mesh, CLIENT, "http://10.96.0.10/reviews/42/great", &[]), "200");
    // TCP to the port the TCPRoute allows.
    expect_tcp(mesh, CLIENT, |r| r.ends_with(": ping"), "to be echoed");
    // gRPC (HTTP/2 end to end) on an allowed route, and a server-first protocol on an allowed port.
    let grpc = |pod: &str| {
        mesh.app(pod, &["grpc-check", GRPC, "--timeout-s", "3"])
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let banner = |pod: &str| {
        mesh.app(pod, &["tcp-read", DB, "--timeout-s", "3"])
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    mesh.eventually(WAIT, "a gRPC health check through the mesh", || grpc(CLIENT).filter(|s| s == "SERVING"))
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(mesh)));
    mesh.eventually(WAIT, "the database greeting through the mesh", || {
        banner(CLIENT).filter(|s| s == "server-1 ready")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(mesh)));
    // The thief is named by no TrafficTarget: its sidecar has no route to the servers at all.
    assert_eq!(outcome(mesh, THIEF, API, &[]), "error");
    assert_eq!(tcp_outcome(mesh, THIEF), "error");
    assert_eq!(grpc(THIEF), None);
    assert_eq!(banner(THIEF), None);
    let clusters = mesh.admin(THIEF, "/clusters").unwrap();
    assert!(!clusters.contains("demo/server"), "the thief must get no server cluster:\n{clusters}");
    // Inbound RBAC refused the denied requests on the servers (the 403 is theirs, not the client's).
    let denied: u64 = ["demo/server-1", "demo/server-2"]
        .iter()
        .map(|p| mesh.stat(p, "http.rds-inbound.8080.rbac.denied").unwrap().unwrap_or(0))
        .sum();
    assert!(denied >= 3, "servers counted {denied} RBAC denials");
}

/// Live edits of the policy: revoke and restore the TrafficTarget, then permissive ↔ SMI.
fn check_live_changes(mesh: &LocalMesh) {
    let target = std::fs::read_to_string(fixture().join("target.yaml")).unwrap();
    mesh.write_mesh_file("target.yaml", "").unwrap();
    expect(mesh, CLIENT, API, &[], "error");
    mesh.write_mesh_file("target.yaml", &target).unwrap();
    expect(mesh, CLIENT, API, &[], "200");

    let meshconfig = std::fs::read_to_string(fixture().join("meshconfig.yaml")).unwrap();
    mesh.write_mesh_file(
        "meshconfig.yaml",
        &meshconfig.replace("enablePermissiveTrafficPolicyMode: false", "enablePermissiveTrafficPolicyMode: true"),
    )
    .unwrap();
    expect(mesh, THIEF, API, &[], "200");
    expect(mesh, CLIENT, "http://10.96.0.10/admin", &[], "200");
    mesh.write_mesh_file("meshconfig.yaml", &meshconfig).unwrap();
    expect(mesh, THIEF, API, &[], "error");
    expect(mesh, CLIENT, "http://10.96.0.10/admin", &[], DENIED);
    assert!(mesh.controller_output().contains("traffic_policy=\"permissive\""), "{}", mesh.controller_output());
    // Every sidecar rode through on its first connection: nothing restarted.
    for pod in [CLIENT, THIEF, "demo/server-1"] {
        assert_eq!(mesh.stat(pod, "control_plane.connected_state").unwrap(), Some(1));
    }
}

/// Answers per server over `count` requests; errors are a failure.
fn tally(mesh: &LocalMesh, target: &str, tcp: bool, count: u32) -> BTreeMap<String, u32> {
    let n = count.to_string();
    let mut args = vec!["tally", target, "--count", &n];
    if tcp {
        args.push("--tcp");
    }
    let out = mesh.app(CLIENT, &args).unwrap();
    let mut seen: BTreeMap<String, u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect();
    assert_eq!(seen.remove("errors"), Some(0), "{seen:?}");
    seen
}

fn split_yaml(apex: &str, v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{name: {apex}-split, namespace: demo}}\n\
         spec:\n  service: {apex}\n  backends:\n  - {{service: {apex}-v1, weight: {v1}}}\n  - {{service: {apex}-v2, weight: {v2}}}\n"
    )
}

/// A split's ratio over 400 requests is within 10 % of the weights (4 standard deviations at 50/50).
fn check_split(mesh: &LocalMesh, apex: &str, target: &str, tcp: bool) {
    const N: u32 = 400;
    // The wait below uses smaller samples, whose bound is wider in proportion (still 4 deviations).
    let within = |seen: &BTreeMap<String, u32>, v1_share: f64| {
        let n = f64::from(seen.values().sum::<u32>());
        let v1 = f64::from(*seen.get("server-1").unwrap_or(&0));
        (v1 - v1_share * n).abs() <= 0.1 * f64::from(N) * (n / f64::from(N)).sqrt()
    };
    for (v1, v2) in [(50, 50), (90, 10)] {
        mesh.write_mesh_file(&format!("{apex}-split.yaml"), &split_yaml(apex, v1, v2)).unwrap();
        let share = f64::from(v1) / 100.0;
        // Wait until the new weights are in force (a few requests land under the old ones meanwhile), then
        // measure on a fresh sample.
        let mut last = BTreeMap::new();
        mesh.eventually(WAIT, &format!("{apex} split {v1}/{v2} in force"), || {
            last = tally(mesh, target, tcp, N / 4);
            within(&last, share).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}; last sample {last:?}\n{}", diagnostics(mesh)));
        let seen = tally(mesh, target, tcp, N);
        assert!(within(&seen, share), "{apex} {v1}/{v2}: {seen:?}");
        assert_eq!(seen.values().sum::<u32>(), N);
    }
}

#[test]
fn sotw_smi_access_routes_splits_and_live_mode_switch() {
    let mesh = start(AdsApi::Sotw);
    check_access(&mesh);
    check_split(&mesh, "server", API, false);
    check_split(&mesh, "echo", ECHO, true);
    // The split did not widen access: still only the allowed routes.
    assert_eq!(outcome(&mesh, CLIENT, "http://10.96.0.10/admin", &[]), DENIED);
    check_live_changes(&mesh);
}

#[test]
fn delta_smi_access_splits_and_live_changes() {
    let mesh = start(AdsApi::Delta);
    check_access(&mesh);
    check_split(&mesh, "server", API, false);
    check_split(&mesh, "echo", ECHO, true);
    check_live_changes(&mesh);
}

#[test]
fn invalid_policy_is_reported_with_its_code_and_the_rest_keeps_working() {
    let mesh = start(AdsApi::Delta);
    expect(&mesh, CLIENT, API, &[], "200");
    // A second target for the thief whose route group has a broken regex, and a split with zero weights.
    mesh.write_mesh_file(
        "bad.yaml",
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: broken, namespace: demo}\n\
         spec: {matches: [{name: all, pathRegex: \"/(\"}]}\n---\n\
         apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: thief, namespace: demo}\n\
         spec:\n  destination: {kind: ServiceAccount, name: server, namespace: demo}\n\
         \x20 sources: [{kind: ServiceAccount, name: thief, namespace: demo}]\n\
         \x20 rules: [{kind: HTTPRouteGroup, name: broken, matches: [all]}]\n---\n\
         apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: zero, namespace: demo}\n\
         spec: {service: server, backends: [{service: server-v1, weight: 0}]}\n",
    )
    .unwrap();
    mesh.eventually(WAIT, "the controller to report both objects with their codes", || {
        let log = mesh.controller_output();
        (log.contains("error_code=\"E2025\"")
            && log.contains("HTTPRouteGroup demo/broken")
            && log.contains("error_code=\"E2028\"")
            && log.contains("TrafficSplit demo/zero"))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    let metrics = mesh.controller_http("/metrics").unwrap();
    assert!(metrics.contains("osm_error_err_code_count{err_code=\"E2025\"} 1"), "{metrics}");
    assert!(metrics.contains("osm_policy_error_count 2"), "{metrics}");
    // Nothing Envoy would reject was sent (every proxy holds what was sent: a rejection would show as a
    // NACK here), the valid policy holds, and the thief gained nothing.
    wait_in_force(&mesh);
    for pod in [CLIENT, "demo/server-1", "demo/server-2"] {
        for ty in ["lds", "cds", "rds"] {
            let stat = if ty == "lds" {
                "listener_manager.lds.update_rejected".to_owned()
            } else if ty == "cds" {
                "cluster_manager.cds.update_rejected".to_owned()
            } else {
                "http.rds-inbound.8080.rds.rds-inbound.8080.update_rejected".to_owned()
            };
            assert_eq!(mesh.stat(pod, &stat).unwrap().unwrap_or(0), 0, "{pod} rejected {ty}");
        }
    }
    expect(&mesh, CLIENT, API, &[], "200");
    assert_eq!(outcome(&mesh, THIEF, API, &[]), "error");
    check_fails_closed(&mesh);
}

/// Waits until every sidecar holds the mesh's latest change (the controller's generation), so what is
/// checked next is the configuration after the change, not before it.
fn wait_in_force(mesh: &LocalMesh) {
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "30"]).unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Neither a TrafficTarget without a destination namespace nor a deleted MeshConfig opens access.
fn check_fails_closed(mesh: &LocalMesh) {
    mesh.write_mesh_file(
        "no-namespace.yaml",
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: thief-no-ns, namespace: demo}\n\
         spec:\n  destination: {kind: ServiceAccount, name: server}\n\
         \x20 sources: [{kind: ServiceAccount, name: thief, namespace: demo}]\n\
         \x20 rules: [{kind: HTTPRouteGroup, name: api}]\n---\n\
         apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: thief-no-src-ns, namespace: demo}\n\
         spec:\n  destination: {kind: ServiceAccount, name: server, namespace: demo}\n\
         \x20 sources: [{kind: ServiceAccount, name: thief}]\n\
         \x20 rules: [{kind: HTTPRouteGroup, name: api}]\n",
    )
    .unwrap();
    mesh.eventually(WAIT, "the controller to refuse both targets with their codes", || {
        let log = mesh.controller_output();
        (log.contains("TrafficTarget demo/thief-no-ns")
            && log.contains("spec.destination.namespace is missing")
            && log.contains("error_code=\"E2030\""))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    wait_in_force(mesh);
    assert_eq!(outcome(mesh, THIEF, API, &[]), "error");
    let clusters = mesh.admin(THIEF, "/clusters").unwrap();
    assert!(!clusters.contains("demo/server"), "the thief must get no server cluster:\n{clusters}");

    // The MeshConfig (SMI mode) is deleted: its settings stay in force, and the deletion is reported.
    mesh.remove_mesh_file("meshconfig.yaml").unwrap();
    mesh.eventually(WAIT, "the controller to report the deleted MeshConfig", || {
        mesh.controller_output().contains("error_code=\"E4151\"").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    wait_in_force(mesh);
    assert_eq!(outcome(mesh, THIEF, API, &[]), "error");
    assert_eq!(outcome(mesh, CLIENT, "http://10.96.0.10/admin", &[]), DENIED);
    expect(mesh, CLIENT, API, &[], "200");
    let summary = mesh.controller_http("/status/mesh").unwrap();
    assert!(summary.contains("deleted; its last settings kept"), "{summary}");

    // A MeshConfig that would open the mesh but has a field out of range is refused whole: SMI mode stays.
    mesh.write_mesh_file(
        "meshconfig.yaml",
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {name: osm-mesh-config, namespace: osm-system}\n\
         spec: {traffic: {enablePermissiveTrafficPolicyMode: true}, certificate: {serviceCertValidityDuration: 999999h}}\n",
    )
    .unwrap();
    mesh.eventually(WAIT, "the controller to refuse the MeshConfig with E4152", || {
        mesh.controller_output().contains("E4152").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    wait_in_force(mesh);
    assert_eq!(outcome(mesh, THIEF, API, &[]), "error");
    assert_eq!(outcome(mesh, CLIENT, "http://10.96.0.10/admin", &[]), DENIED);
}
