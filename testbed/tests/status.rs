//! `osm proxy status` through real Envoy: one sidecar refuses its listeners (the port of the Prometheus
//! listener a mesh edit asks for is already taken in its pod), and the tool shows that proxy with Envoy's
//! error while the other stays synced; `--wait` waits for a change to be live everywhere and says when it
//! is not. Needs root, iptables and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";
const WAIT: Duration = Duration::from_secs(30);

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller, osm and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

/// `osm proxy status -o json`, parsed: (identity, state, the LDS error if any) per proxy.
fn status(mesh: &LocalMesh) -> Vec<(String, String, Option<String>)> {
    let out = mesh.osm(&["proxy", "status", "-o", "json"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["identity"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
                p["types"]["LDS"]["nack"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn a_proxy_that_refuses_its_config_is_shown_with_envoys_error_while_the_rest_stay_synced() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.add_pod("demo", "client").unwrap();

    // Everything sent is ACKed: --wait returns at once, and the table says so.
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "30"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("2 proxies: 2 synced, 0 stale, 0 NACK"), "{table}");
    assert!(table.contains("client.demo") && table.contains("server.demo"), "{table}");
    assert!(table.starts_with("POD") && table.contains("demo/server-1") && table.contains("demo/client"), "{table}");
    // What the client's Envoy itself holds, from its admin interface in the pod's network namespace.
    let out = mesh.osm_in_pod(CLIENT, &["proxy", "get", "config_dump", "demo/client"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(dump["configs"].as_array().is_some_and(|c| !c.is_empty()));
    let out = mesh.osm_in_pod(CLIENT, &["proxy", "get", "stats", "demo/client"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("control_plane.connected_state: 1"), "{out:?}");
    let out = mesh.osm_in_pod(CLIENT, &["proxy", "get", "certs", "demo/client"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ca_cert\""), "the sidecar's certificates: {out:?}");
    let out = mesh.osm_in_pod(CLIENT, &["proxy", "get", "quitquitquit", "demo/client"]).unwrap();
    assert!(!out.status.success(), "only read-only admin pages: {out:?}");
    let out = mesh.osm_in_pod(CLIENT, &["proxy", "get", "stats", "other/pod"]).unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("client.demo"), "{out:?}");
    let out = mesh.osm(&["verify", "control-plane"]).unwrap();
    let health = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{health}");
    assert!(
        health.contains("2 connected: 2 synced") && health.contains("OK: the control plane is healthy"),
        "{health}"
    );
    let out = mesh.osm(&["mesh", "list"]).unwrap();
    let mesh_list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{mesh_list}{}", String::from_utf8_lossy(&out.stderr));
    assert!(mesh_list.contains("2 connected, 2 synced") && mesh_list.contains("permissive"), "{mesh_list}");
    assert!(mesh_list.contains("trust domain cluster.local") && mesh_list.contains("mesh directory"), "{mesh_list}");

    // Something in the client's pod holds the Prometheus port; then the mesh asks for its listener there.
    mesh.spawn_app(CLIENT, &["http-server", "--port", "15010", "--name", "squatter"]).unwrap();
    mesh.eventually(WAIT, "the squatter to listen", || {
        let out = mesh.app(CLIENT, &["get", "http://127.0.0.1:15010/"]).ok()?;
        String::from_utf8_lossy(&out.stdout).starts_with("status=200").then_some(())
    })
    .unwrap();
    let client_yaml = std::fs::read_to_string(mesh.mesh_dir.join("client.yaml")).unwrap();
    let scraped = client_yaml
        .replace("labels: {app: client}", "labels: {app: client}\n  annotations: {prometheus.io/scrape: \"true\"}");
    assert_ne!(client_yaml, scraped);
    mesh.write_mesh_file("client.yaml", &scraped).unwrap();

    let seen = mesh
        .eventually(WAIT, "the client's NACK in osm proxy status", || {
            let s = status(&mesh);
            let client = s.iter().find(|p| p.0 == "client.demo")?;
            (client.1 == "nack").then(|| s.clone())
        })
        .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", status(&mesh), mesh.controller_output()));
    let client = seen.iter().find(|p| p.0 == "client.demo").unwrap();
    let error = client.2.as_deref().unwrap_or_default();
    assert!(error.contains("15010"), "Envoy's reason names the port: {error}");
    let server = seen.iter().find(|p| p.0 == "server.demo").unwrap();
    assert_eq!(server.1, "synced", "the rest stay synced: {seen:?}");

    // The table names the proxy and the reason; --wait gives up with exit code 3.
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "2"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{table}");
    assert!(table.contains("NACK") && table.contains("LDS") && table.contains("15010"), "{table}");
    assert!(table.contains("2 proxies: 1 synced, 0 stale, 1 NACK"), "{table}");
    assert!(table.contains("applied): held by 1 of 2 proxies"), "{table}");
    // The change is numbered; the controller knows the client's sidecar does not hold it.
    let out = mesh.osm(&["mesh", "changes", "-o", "json"]).unwrap();
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = &changes[0];
    assert!(change["what"].as_str().unwrap().contains("Pod demo/client applied"), "{changes:#}");
    assert_eq!((change["proxies"].as_u64(), change["holding"].as_u64()), (Some(2), Some(1)), "{changes:#}");
    let generation = change["generation"].as_u64().unwrap().to_string();
    let out = mesh.osm(&["mesh", "changes", "--generation", &generation]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains(&format!("not holding generation {generation}:\n  demo/client\n")), "{table}");
    assert!(table.contains("1/2") && table.contains("Pod demo/client applied"), "{table}");
    let out = mesh.osm(&["proxy", "status", "--wait", "--generation", &generation, "--timeout-s", "1"]).unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = mesh.osm(&["proxy", "status", "--wait", "--generation", "999999", "--timeout-s", "1"]).unwrap();
    let error = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && error.contains("generation 999999 has not happened"), "{error}");
    // The NACK is counted under its stable code, which the tool explains.
    let metrics = mesh.controller_http("/metrics").unwrap();
    assert!(metrics.contains("osm_error_err_code_count{err_code=\"E5004\"}"), "{metrics}");
    assert!(metrics.contains("\nosm_proxy_not_holding_latest_count 1\n"), "{metrics}");
    let out = mesh.osm(&["verify", "control-plane"]).unwrap();
    let health = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(2), "{health}");
    assert!(health.contains("FAIL proxies") && health.contains("1 refusing their configuration"), "{health}");
    // A bug report collects it all, and explains the error code counted.
    let report = tempfile::tempdir().unwrap();
    let out = mesh.osm(&["support", "bug-report", "--out", &report.path().display().to_string()]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary = std::fs::read_to_string(report.path().join("SUMMARY.txt")).unwrap();
    assert!(summary.contains("error E5004 counted 1") && summary.contains("demo/client"), "{summary}");
    let controller = std::fs::read_dir(report.path()).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let proxies = std::fs::read_to_string(controller.join("proxies.json")).unwrap();
    assert!(proxies.contains("\"nack\"") && proxies.contains("15010"), "{proxies}");
    let metrics = std::fs::read_to_string(controller.join("metrics.txt")).unwrap();
    assert!(metrics.contains("osm_proxy_connect_count"), "{metrics}");
    for file in ["mesh.json", "changes.json", "version.json"] {
        assert!(controller.join(file).exists(), "{file}");
    }
    let out = mesh.osm(&["support", "error-info", "E5004"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("osm proxy status"), "{out:?}");
    let _ = SERVER;
}

/// `/metrics`, parsed with a Prometheus text parser.
fn scrape(mesh: &LocalMesh) -> prometheus_parse::Scrape {
    let text = mesh.controller_http("/metrics").unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// A counter's or gauge's value (summed over its series).
fn value(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A histogram's observations: its `+Inf` bucket.
fn observations(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) if s.metric == name => buckets.last().map(|b| b.count),
            _ => None,
        })
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_connected_proxies_and_time_each_change_to_its_acks() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "server-1").unwrap();
    assert_eq!(value(&scrape(&mesh), "osm_proxy_connect_count"), 1.0);
    mesh.add_pod("demo", "client").unwrap();
    let synced = |mesh: &LocalMesh| {
        let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "30"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    };
    synced(&mesh);
    let before = scrape(&mesh);
    assert_eq!(value(&before, "osm_proxy_connect_count"), 2.0);
    assert_eq!(value(&before, "osm_proxy_out_of_date_count"), 0.0);
    let acks = observations(&before, "osm_proxy_config_ack_time");

    // A new Service: both proxies (permissive mode) get it and ACK it; each ACK is timed.
    mesh.write_mesh_file(
        "extra.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.99, selector: {app: server}, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    )
    .unwrap();
    mesh.eventually(WAIT, "both proxies' ACKs of the change to be timed", || {
        (observations(&scrape(&mesh), "osm_proxy_config_ack_time") >= acks + 2.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_http("/metrics").unwrap()));
    synced(&mesh);
    let out = mesh.osm(&["mesh", "changes", "-o", "json"]).unwrap();
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changes[0]["what"], "Service demo/extra applied", "{changes:#}");
    assert_eq!((changes[0]["holding"].as_u64(), changes[0]["proxies"].as_u64()), (Some(2), Some(2)));
    let after = scrape(&mesh);
    assert!(value(&after, "osm_proxy_config_ack_time_sum") > value(&before, "osm_proxy_config_ack_time_sum"));
    assert!(value(&after, "osm_snapshot_proxies_built_count") > value(&before, "osm_snapshot_proxies_built_count"));
    assert!(value(&after, "osm_cert_next_expiry_timestamp_seconds") > 0.0);
    assert!(value(&after, "osm_mesh_generation") > value(&before, "osm_mesh_generation"), "the Service is a change");
    assert_eq!(value(&after, "osm_proxy_not_holding_latest_count"), 0.0);
    assert_eq!(value(&after, "osm_version_info"), 1.0);
}
