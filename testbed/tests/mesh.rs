//! End to end through real Envoy: the controller binary serving sidecars in network-namespace pods, with
//! the init container's iptables rules, talking mTLS to each other. Needs root, iptables and Envoy
//! (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use messages::{Pod, ProxyUuid};
use sidecar::AdsApi;
use testbed::{Binaries, LocalMesh, MeshOptions};

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";
const WAIT: Duration = Duration::from_secs(20);

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic")
}

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

/// Starts the controller, server-1 (HTTP :8080, TCP echo :7070) and the client.
fn start(api: AdsApi) -> LocalMesh {
    let mut opts = MeshOptions::new(fixture());
    opts.ads_api = api;
    let mut mesh = LocalMesh::start(opts, bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "server-1").expect("server pod");
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.spawn_app(SERVER, &["tcp-echo", "--port", "7070", "--name", "server-1"]).unwrap();
    mesh.spawn_app(SERVER, &["banner-server", "--port", "3306", "--name", "server-1"]).unwrap();
    mesh.add_pod("demo", "client").expect("client pod");
    mesh
}

/// GET through the client's sidecar; retried while the server app starts.
fn http_get(mesh: &LocalMesh, url: &str) -> String {
    mesh.eventually(WAIT, &format!("GET {url} from the client to succeed"), || {
        let out = mesh.app(CLIENT, &["get", url]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.starts_with("status=200").then_some(text)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nclient envoy:\n{}\ncontroller:\n{}",
            mesh.pod(CLIENT).unwrap().envoy_log_tail(),
            mesh.controller_output()
        )
    })
}

fn stat(mesh: &LocalMesh, pod: &str, name: &str) -> u64 {
    mesh.stat(pod, name).unwrap().unwrap_or_else(|| panic!("{pod}: Envoy has no stat {name}"))
}

fn check_http_and_tcp(mesh: &LocalMesh) {
    // The controller reports itself ready and counts both sidecars.
    assert_eq!(mesh.controller_http("/health/ready").unwrap().trim(), "ready");
    let metrics = mesh.controller_http("/metrics").unwrap();
    assert!(metrics.contains("osm_proxy_connect_count 2\n"), "{metrics}");

    // HTTP to the ClusterIP: client app → client Envoy (15001) → mTLS → server Envoy (15003) → app.
    let body = http_get(mesh, "http://10.96.0.10/hello");
    assert!(body.contains("hello from server-1 path=/hello"), "{body}");
    assert!(
        stat(mesh, SERVER, "listener.0.0.0.0_15003.ssl.handshake") > 0,
        "the request must arrive over mTLS on 15003"
    );
    let clusters = mesh.admin(CLIENT, "/clusters").unwrap();
    assert!(
        clusters.contains("demo/server|8080::10.244.1.2:8080::"),
        "client Envoy lacks the upstream cluster:\n{clusters}"
    );
    assert!(stat(mesh, CLIENT, "cluster.demo_server_8080.upstream_rq_200") >= 1);
    assert!(stat(mesh, CLIENT, "cluster.demo_server_8080.ssl.handshake") >= 1);
    // The annotated server exposes its sidecar's stats for Prometheus on :15010; the client does not.
    let scraped = mesh.get_from_hub("http://10.244.1.2:15010/stats/prometheus").unwrap();
    assert!(
        scraped.contains("envoy_listener_ssl_handshake{envoy_listener_address=\"0.0.0.0_15003\"}"),
        "{scraped:.2000}"
    );
    assert!(mesh.get_from_hub("http://10.244.1.1:15010/stats/prometheus").is_err());

    // TCP (non-HTTP) through both sidecars.
    let handshakes = stat(mesh, SERVER, "listener.0.0.0.0_15003.ssl.handshake");
    let reply = mesh
        .eventually(WAIT, "TCP echo through the mesh", || {
            let out = mesh.app(CLIENT, &["tcp-send", "10.96.0.11:7000", "ping"]).ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap();
    assert_eq!(reply, "server-1: ping");
    assert!(stat(mesh, SERVER, "listener.0.0.0.0_15003.ssl.handshake") > handshakes);
    assert!(stat(mesh, CLIENT, "cluster.demo_echo_7070.upstream_cx_total") >= 1);

    // Server-first TCP (appProtocol tcp-server-first): the server speaks first, nothing waits for the client.
    let greeting = mesh
        .eventually(WAIT, "a server-first greeting through the mesh", || {
            let out = mesh.app(CLIENT, &["tcp-read", "10.96.0.11:3306", "--timeout-s", "3"]).ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap();
    assert_eq!(greeting, "server-1 ready");
    assert!(stat(mesh, CLIENT, "cluster.demo_echo_3306.upstream_cx_total") >= 1);
}

#[test]
fn sotw_mesh_serves_http_and_tcp_follows_yaml_edits_and_refuses_strangers() {
    let mut mesh = start(AdsApi::Sotw);
    check_http_and_tcp(&mesh);

    // A malformed file is reported with its name; the mesh keeps serving.
    mesh.write_mesh_file("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: bad\n").unwrap();
    mesh.eventually(WAIT, "the controller to report broken.yaml", || {
        let log = mesh.controller_output();
        (log.contains("broken.yaml") && log.contains("mesh file rejected")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    assert!(http_get(&mesh, "http://10.96.0.10/").contains("server-1"));

    // Scale out by editing YAML: a second server pod, listed in the Endpoints.
    let server2 = std::fs::read_to_string(fixture().join("server.yaml"))
        .unwrap()
        .replace("addresses: [{ip: 10.244.1.2}]", "addresses: [{ip: 10.244.1.2}, {ip: 10.244.1.3}]");
    mesh.write_mesh_file("server.yaml", &server2).unwrap();
    mesh.write_mesh_file(
        "server-2.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: server-2, namespace: demo, labels: {app: server}}\n\
         spec: {serviceAccountName: server, containers: [{name: app, image: mesh-app}]}\nstatus: {podIP: 10.244.1.3}\n",
    )
    .unwrap();
    mesh.add_pod("demo", "server-2").unwrap();
    mesh.spawn_app("demo/server-2", &["http-server", "--port", "8080", "--name", "server-2"]).unwrap();
    mesh.eventually(WAIT, "client EDS to list two endpoints", || {
        let c = mesh.admin(CLIENT, "/clusters").ok()?;
        (c.contains("demo/server|8080::10.244.1.2:8080::") && c.contains("demo/server|8080::10.244.1.3:8080::"))
            .then_some(())
    })
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    mesh.eventually(WAIT, "traffic to reach both servers", || {
        let body = http_get(&mesh, "http://10.96.0.10/");
        seen.insert(body.split_whitespace().nth(3).unwrap_or_default().to_owned());
        (seen.contains("server-1") && seen.contains("server-2")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: saw {seen:?}"));
    // The TCP service's selector picked up server-2 too (endpoints derived from pods).
    mesh.eventually(WAIT, "echo endpoints derived from pods", || {
        let c = mesh.admin(CLIENT, "/clusters").ok()?;
        c.contains("demo/echo|7070::10.244.1.3:7070::").then_some(())
    })
    .unwrap();

    // A pod that is not in the mesh directory gets no config: its stream is refused.
    let stranger = Pod {
        namespace: "demo".into(),
        name: "stranger".into(),
        labels: Default::default(),
        service_account: "client".into(),
        ip: Some("10.244.1.9".parse().unwrap()),
        proxy_uuid: ProxyUuid::derived("demo", "stranger"),
        container_ports: vec![],
        prometheus_scrape: false,
    };
    let stranger_key = mesh.start_pod(&stranger).unwrap();
    // A pod that claims another identity than its pod's service account is refused too.
    let mut impostor = mesh.pod_model("demo", "client").unwrap();
    impostor.name = "impostor".into();
    impostor.service_account = "server".into();
    impostor.ip = Some("10.244.1.10".parse().unwrap());
    let impostor_key = mesh.start_pod(&impostor).unwrap();
    mesh.eventually(WAIT, "the controller to refuse both", || {
        let log = mesh.controller_output();
        (log.contains(&format!("no pod in the mesh has proxy UUID {}", stranger.proxy_uuid))
            && log.contains("presented identity server.demo but its pod demo/client runs as client.demo"))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    // Envoy sees PERMISSION_DENIED (7) with the reason (percent-encoded, as gRPC sends it).
    for (key, reason) in
        [(&stranger_key, "no%20pod%20in%20the%20mesh"), (&impostor_key, "presented%20identity%20server.demo")]
    {
        mesh.eventually(WAIT, &format!("{key}'s Envoy to log the refusal"), || {
            let log = mesh.pod(key).ok()?.envoy_log_tail();
            (log.contains("gRPC config stream to osm-controller closed: 7, ") && log.contains(reason)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", mesh.pod(key).unwrap().envoy_log_tail()));
        assert_eq!(
            mesh.stat(key, "listener_manager.lds.update_success").unwrap(),
            Some(0),
            "{key} must get no listeners"
        );
        assert_eq!(
            mesh.stat(key, "cluster_manager.cds.update_success").unwrap(),
            Some(0),
            "{key} must get no clusters"
        );
    }
    // And the mesh still serves.
    assert!(http_get(&mesh, "http://10.96.0.10/").starts_with("status=200"));
    cluster_update_keeps_endpoints(&mesh);
}

#[test]
fn delta_mesh_serves_http_and_tcp_and_follows_edits() {
    let mesh = start(AdsApi::Delta);
    check_http_and_tcp(&mesh);
    assert!(stat(&mesh, CLIENT, "cluster_manager.cds.update_success") >= 1);
    // Removing the TCP service removes its cluster and listener chain from the client (delta removal).
    remove_echo_service(&mesh);
    assert!(http_get(&mesh, "http://10.96.0.10/").contains("server-1"));
    cluster_update_keeps_endpoints(&mesh);
}

/// Switching the HTTP Service to plain TCP changes its cluster but not its endpoints; Envoy re-warms the
/// cluster and must get the endpoints again, or the cluster would come up empty.
fn cluster_update_keeps_endpoints(mesh: &LocalMesh) {
    let text = std::fs::read_to_string(mesh.mesh_dir.join("server.yaml")).unwrap();
    let as_tcp = text.replace(
        "- {name: http, port: 80, targetPort: 8080}",
        "- {name: http, port: 80, targetPort: 8080, appProtocol: tcp}",
    );
    assert_ne!(as_tcp, text);
    mesh.write_mesh_file("server.yaml", &as_tcp).unwrap();
    mesh.eventually(WAIT, "the client's listener to use tcp_proxy for the server", || {
        let dump = mesh.admin(CLIENT, "/config_dump?resource=dynamic_listeners").ok()?;
        dump.contains("outbound_demo/server_80_tcp").then_some(())
    })
    .unwrap();
    mesh.eventually(WAIT, "no cluster left warming", || {
        (mesh.stat(CLIENT, "cluster_manager.warming_clusters").ok()?? == 0).then_some(())
    })
    .unwrap();
    // The endpoints came with the cluster: Envoy did not have to give up waiting for them.
    assert_eq!(stat(mesh, CLIENT, "cluster.demo_server_8080.init_fetch_timeout"), 0);
    // HTTP still flows, now proxied as TCP, to a cluster that kept its endpoint.
    assert!(http_get(mesh, "http://10.96.0.10/tcp").contains("path=/tcp"));
}

/// Deletes the `echo` Service from the mesh directory and waits until the client's Envoy dropped its cluster.
fn remove_echo_service(mesh: &LocalMesh) {
    let without_echo: String = std::fs::read_to_string(fixture().join("server.yaml"))
        .unwrap()
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: echo"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    mesh.write_mesh_file("server.yaml", &without_echo).unwrap();
    mesh.eventually(WAIT, "the echo cluster to disappear from the client", || {
        let c = mesh.admin(CLIENT, "/clusters").ok()?;
        (!c.contains("demo/echo|7070")).then_some(())
    })
    .unwrap();
}

/// A client pod and a host outside the mesh (no sidecar) serving HTTP on 10.244.9.1:8080.
fn start_with_outside_host(controller_args: &[&str]) -> (LocalMesh, String) {
    let mut opts = MeshOptions::new(fixture());
    opts.controller_args = controller_args.iter().map(|s| s.to_string()).collect();
    let mut mesh = LocalMesh::start(opts, bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "client").unwrap();
    let outside = mesh.add_external_host("outside", "10.244.9.1".parse().unwrap()).unwrap();
    mesh.spawn_app(&outside, &["http-server", "--port", "8080", "--name", "outside"]).unwrap();
    (mesh, outside)
}

#[test]
fn egress_passthrough_reaches_hosts_outside_the_mesh() {
    let (mesh, _) = start_with_outside_host(&[]);
    let body = http_get(&mesh, "http://10.244.9.1:8080/external");
    assert!(body.contains("hello from outside"), "{body}");
    // It went through the sidecar's passthrough cluster, not around it.
    assert!(stat(&mesh, CLIENT, "cluster.passthrough-outbound.upstream_cx_total") >= 1);
}

#[test]
fn without_egress_only_mesh_services_are_reachable() {
    let (mesh, outside) = start_with_outside_host(&["--enable-egress", "false"]);
    // The outside host is up (reachable from a host without a sidecar)...
    mesh.eventually(WAIT, "the outside server to listen", || {
        let out = mesh.app(&outside, &["get", "http://127.0.0.1:8080/"]).ok()?;
        out.status.success().then_some(())
    })
    .unwrap();
    // ...but the client's sidecar has nowhere to send traffic for it.
    let out = mesh.app(CLIENT, &["get", "http://10.244.9.1:8080/", "--timeout-s", "2"]).unwrap();
    assert!(!out.status.success(), "egress must be blocked: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(mesh.stat(CLIENT, "cluster.passthrough-outbound.upstream_cx_total").unwrap(), None);
    assert!(stat(&mesh, CLIENT, "listener.0.0.0.0_15001.no_filter_chain_match") >= 1);
}

#[test]
fn sidecars_ride_out_a_controller_restart() {
    let mut mesh = start(AdsApi::Delta);
    assert!(http_get(&mesh, "http://10.96.0.10/").contains("server-1"));

    // Control plane down: the sidecars keep their last config and traffic keeps flowing.
    mesh.stop_controller();
    mesh.eventually(WAIT, "the client to notice the controller is gone", || {
        (mesh.stat(CLIENT, "control_plane.connected_state").ok()?? == 0).then_some(())
    })
    .unwrap();
    assert!(http_get(&mesh, "http://10.96.0.10/down").contains("server-1"));

    // Back up, with the root from its state directory: the sidecars reconnect with the bootstrap files they
    // have (they verify the ADS server against that root, and the server their client certificates).
    mesh.start_controller().unwrap();
    for pod in [CLIENT, SERVER] {
        mesh.eventually(WAIT, &format!("{pod} to reconnect"), || {
            (mesh.stat(pod, "control_plane.connected_state").ok()?? == 1).then_some(())
        })
        .unwrap();
    }
    // The new sessions are live: an edit reaches the client.
    remove_echo_service(&mesh);
    assert!(http_get(&mesh, "http://10.96.0.10/up").contains("server-1"));
}
