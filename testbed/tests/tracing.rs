//! Tracing and access logs through real Envoy: a MeshConfig enabling `observability.tracing` makes every
//! sidecar report Zipkin spans to a collector outside the mesh (a recording HTTP server the test starts),
//! the client's and the server's spans of one request sharing a trace; and each request is logged by the
//! sidecars as one JSON line with OSM's fields. Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";
const WAIT: Duration = Duration::from_secs(30);

/// OSM's default access-log fields (README, "Access logs").
const ACCESS_LOG_FIELDS: [&str; 19] = [
    "start_time",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_code_details",
    "time_to_first_byte",
    "upstream_cluster",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "requested_server_name",
    "authority",
    "upstream_host",
];

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

/// The spans the collector received: every JSON array POSTed to /api/v2/spans, flattened.
fn spans(log: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("POST /api/v2/spans "))
        .filter_map(|body| serde_json::from_str::<Vec<serde_json::Value>>(body).ok())
        .flatten()
        .collect()
}

#[test]
fn tracing_from_the_mesh_config_reports_zipkin_spans_and_requests_are_logged_as_json() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    let collector = mesh.add_external_host("zipkin", "10.244.9.2".parse().unwrap()).unwrap();
    let recorded = mesh.pod(&collector).unwrap().dir.join("spans.log");
    let record = recorded.display().to_string();
    mesh.spawn_app(&collector, &["http-server", "--port", "9411", "--name", "zipkin", "--record", &record]).unwrap();
    mesh.write_mesh_file(
        "meshconfig.yaml",
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {name: osm-mesh-config, namespace: osm-system}\n\
         spec:\n  observability:\n    tracing: {enable: true, address: 10.244.9.2, port: 9411, endpoint: /api/v2/spans}\n",
    )
    .unwrap();
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.add_pod("demo", "client").unwrap();

    // Requests until both sides' spans of one trace reached the collector (Envoy reports in batches).
    let trace = mesh
        .eventually(WAIT, "a client and a server span of one trace at the collector", || {
            let out = mesh.app(CLIENT, &["get", "http://10.96.0.10/traced"]).ok()?;
            if !String::from_utf8_lossy(&out.stdout).starts_with("status=200") {
                return None;
            }
            let spans = spans(&recorded);
            let of_kind = |kind: &str| -> BTreeSet<String> {
                spans
                    .iter()
                    .filter(|s| s["kind"] == kind)
                    .filter_map(|s| s["traceId"].as_str().map(str::to_owned))
                    .collect()
            };
            of_kind("CLIENT").intersection(&of_kind("SERVER")).next().cloned()
        })
        .unwrap_or_else(|e| panic!("{e}\nrecorded: {}", std::fs::read_to_string(&recorded).unwrap_or_default()));
    let spans = spans(&recorded);
    let of_trace: Vec<&serde_json::Value> = spans.iter().filter(|s| s["traceId"] == trace.as_str()).collect();
    assert!(of_trace.iter().all(|s| s["localEndpoint"]["serviceName"].is_string()), "{of_trace:?}");
    assert!(
        of_trace.iter().any(|s| s["tags"]["http.url"].as_str().is_some_and(|u| u.ends_with("/traced"))),
        "{of_trace:?}"
    );

    // The client's sidecar logged the request as JSON with OSM's fields.
    let line = mesh
        .eventually(WAIT, "the client's access-log line of the request", || {
            let log = std::fs::read_to_string(mesh.pod(CLIENT).ok()?.dir.join("envoy.log")).ok()?;
            log.lines().find(|l| l.starts_with('{') && l.contains("\"/traced\"")).map(str::to_owned)
        })
        .unwrap();
    let entry: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line).unwrap();
    let keys: BTreeSet<&str> = entry.keys().map(String::as_str).collect();
    assert_eq!(keys, ACCESS_LOG_FIELDS.into_iter().collect::<BTreeSet<_>>(), "{line}");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["response_code"], "200");
    assert_ne!(entry["request_id"], "-", "{line}");
}
