//! UpstreamTrafficSetting through real Envoy: client-side circuit breakers (requests beyond
//! `maxRequests`/`maxPendingRequests` answered 503 by the client's own sidecar, counted as
//! `upstream_rq_pending_overflow`), a local HTTP rate limit on the upstream's sidecar (429 with the
//! configured header past the bucket; per route where `httpRoutes` says so) and a TCP connection limit (the
//! connection past it is closed, the first one works). A bad object is reported with its code while the
//! rest of the mesh keeps working. Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";
const WAIT: Duration = Duration::from_secs(30);

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

fn setting(name: &str, host: &str, spec: &str) -> String {
    format!(
        "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: UpstreamTrafficSetting\n\
         metadata: {{name: {name}, namespace: demo}}\nspec:\n  host: {host}\n{spec}"
    )
}

/// Waits until every proxy holds what the controller sent (the change is in force).
fn in_force(mesh: &LocalMesh) {
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "30"]).unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn get(mesh: &LocalMesh, path: &str) -> String {
    let out = mesh.app(CLIENT, &["get", "--show-headers", &format!("http://10.96.0.10{path}")]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `pod`'s Envoy holds configuration (its config dump) that `has`.
fn holds(mesh: &LocalMesh, pod: &str, what: &str, has: impl Fn(&str) -> bool) {
    mesh.eventually(WAIT, what, || has(&mesh.admin(pod, "/config_dump").ok()?).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
}

#[test]
fn upstream_traffic_settings_break_circuits_and_limit_rates_in_real_envoy() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.spawn_app(SERVER, &["tcp-echo", "--port", "7070", "--name", "echo-1"]).unwrap();
    mesh.add_pod("demo", "client").unwrap();
    mesh.eventually(WAIT, "the client reaches the server", || {
        get(&mesh, "/hello").starts_with("status=200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));

    // Without a setting: no circuit breaks under a burst (thresholds at their maximum, not Envoy's 1,024).
    let burst = |mesh: &LocalMesh| {
        let out = mesh.app(CLIENT, &["burst", "http://10.96.0.10/slow/400/x", "--count", "8"]).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all_ok = burst(&mesh);
    assert!(all_ok.contains("200=8"), "{all_ok}");

    // Circuit breakers: one request at a time, one waiting; the rest of a burst is refused by the client's
    // own sidecar.
    let breakers = "  connectionSettings:\n    tcp: {maxConnections: 1, connectTimeout: 3s}\n    \
                    http: {maxRequests: 1, maxPendingRequests: 1}\n";
    mesh.write_mesh_file("uts-server.yaml", &setting("server", "server.demo.svc.cluster.local", breakers)).unwrap();
    holds(&mesh, CLIENT, "the client's cluster to carry the circuit breakers", |d| {
        d.contains("\"track_remaining\": true")
    });
    in_force(&mesh);
    let broken = burst(&mesh);
    assert!(broken.contains("503="), "requests past the thresholds get 503: {broken}");
    let overflow = mesh.stat(CLIENT, "cluster.demo_server_8080.upstream_rq_pending_overflow").unwrap().unwrap_or(0);
    assert!(overflow > 0, "Envoy counted the overflow: {broken}");

    // A local HTTP rate limit on the server's sidecar: two requests an hour, then 429 with the header.
    let limit = "  rateLimit:\n    local:\n      http:\n        requests: 2\n        unit: hour\n        \
                 responseHeadersToAdd: [{name: x-rate-limited, value: by-server}]\n";
    mesh.write_mesh_file("uts-server.yaml", &setting("server", "server.demo.svc.cluster.local", limit)).unwrap();
    holds(&mesh, SERVER, "the server's host to carry the rate limit", |d| d.contains("x-rate-limited"));
    in_force(&mesh);
    for i in 0..2 {
        let ok = get(&mesh, "/limited");
        assert!(ok.starts_with("status=200"), "request {i}: {ok}");
    }
    let limited = get(&mesh, "/limited");
    assert!(limited.starts_with("status=429"), "{limited}");
    assert!(limited.contains("header x-rate-limited: by-server"), "{limited}");
    let stat = "http_local_rate_limiter.http_local_rate_limit.rate_limited";
    assert!(mesh.stat(SERVER, stat).unwrap().unwrap_or(0) >= 1, "the server's sidecar counted it");

    // Per route (permissive mode's one route, `.*`): its own bucket and status.
    let per_route = "  httpRoutes:\n  - path: .*\n    rateLimit:\n      local: {requests: 1, unit: hour, responseStatusCode: 503}\n";
    mesh.write_mesh_file("uts-server.yaml", &setting("server", "server.demo.svc.cluster.local", per_route)).unwrap();
    holds(&mesh, SERVER, "the server's route to carry its limit instead", |d| {
        !d.contains("x-rate-limited") && d.contains("local_rate_limit_enforced")
    });
    in_force(&mesh);
    let first = get(&mesh, "/route");
    assert!(first.starts_with("status=200"), "{first}");
    let second = get(&mesh, "/route");
    assert!(second.starts_with("status=503"), "{second}");

    // A TCP connection limit on the echo Service: the first connection is echoed, the next is closed.
    let tcp = "  rateLimit:\n    local:\n      tcp: {connections: 1, unit: hour}\n";
    mesh.write_mesh_file("uts-echo.yaml", &setting("echo", "echo.demo.svc.cluster.local", tcp)).unwrap();
    holds(&mesh, SERVER, "the echo chain to carry the connection limit", |d| {
        d.contains("envoy.filters.network.local_ratelimit")
    });
    in_force(&mesh);
    let send = |mesh: &LocalMesh| mesh.app(CLIENT, &["tcp-send", "10.96.0.11:7000", "ping"]).unwrap();
    let first = send(&mesh);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("echo-1"), "{}", String::from_utf8_lossy(&first.stdout));
    let second = send(&mesh);
    assert!(!second.status.success(), "the second connection within the hour is refused");

    // A setting for a host that is no Service of its namespace is reported with its code; the others stay.
    mesh.write_mesh_file("uts-bad.yaml", &setting("nowhere", "nowhere.other.svc.cluster.local", "")).unwrap();
    mesh.eventually(WAIT, "E2031 to be reported", || mesh.controller_output().contains("E2031").then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    let still = send(&mesh);
    assert!(!still.status.success(), "the echo limit stays in force");
    assert!(get(&mesh, "/route").starts_with("status=503"), "the route limit stays in force");
}
