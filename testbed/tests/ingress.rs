//! IngressBackend through real Envoy and a real ingress proxy: nginx (Debian's), on a host outside the mesh,
//! proxies to a meshed HTTP server's pod. Without an IngressBackend the server's sidecar turns it away
//! (plain HTTP is not mesh mTLS); with one naming the ingress host's address range, or its Service, nginx
//! gets 200 and another host outside the mesh is still turned away. Over HTTPS nginx presents the ingress
//! gateway certificate the controller issues from the MeshConfig (files in its state directory) and is
//! admitted as its AuthenticatedPrincipal; with another certificate, or none, it is refused. Needs root,
//! iptables, Envoy and nginx (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

const SERVER: &str = "demo/server-1";
const WAIT: Duration = Duration::from_secs(30);
const INGRESS_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 1);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 2);

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

const GATEWAY_NAME: &str = "ingress-gateway.ingress.cluster.local";

/// nginx as an ingress controller runs it: port 8000 proxies to the server pod's port 8080 over HTTP;
/// 8001 over HTTPS with the ingress gateway certificate (`gateway`), 8002 with a certificate of its own
/// (`own`), 8003 with none.
fn nginx_conf(dir: &std::path::Path, gateway: &std::path::Path, own: &std::path::Path) -> String {
    let d = dir.display();
    let tls = |cert: Option<&std::path::Path>| {
        let client = cert.map_or(String::new(), |c| {
            format!("proxy_ssl_certificate {0}/tls.crt; proxy_ssl_certificate_key {0}/tls.key; ", c.display())
        });
        // The sidecar presents the server's service certificate, signed by the mesh root. No TLS session
        // reuse: the three servers share one upstream, and a resumed session would carry the first
        // handshake's client certificate.
        format!(
            "proxy_pass https://10.244.1.2:8080; {client}proxy_ssl_trusted_certificate {}/ca.crt; \
             proxy_ssl_verify on; proxy_ssl_name server.demo.cluster.local; proxy_ssl_server_name on; \
             proxy_ssl_session_reuse off;",
            gateway.display()
        )
    };
    let https = [(8001, tls(Some(gateway))), (8002, tls(Some(own))), (8003, tls(None))]
        .iter()
        .map(|(port, loc)| format!("  server {{\n    listen 127.0.0.1:{port};\n    location / {{ {loc} }}\n  }}\n"))
        .collect::<String>();
    format!(
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/nginx-access.log;\n  client_body_temp_path {d}/nginx-body;\n\
         \x20 proxy_temp_path {d}/nginx-proxy;\n  fastcgi_temp_path {d}/nginx-fastcgi;\n\
         \x20 uwsgi_temp_path {d}/nginx-uwsgi;\n  scgi_temp_path {d}/nginx-scgi;\n\
         \x20 server {{\n    listen 127.0.0.1:8000;\n    location / {{ proxy_pass http://10.244.1.2:8080; }}\n  }}\n{https}}}\n"
    )
}

fn ingress_backend(sources: &str) -> String {
    backend_for("http", sources)
}

fn backend_for(protocol: &str, sources: &str) -> String {
    format!(
        "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: IngressBackend\nmetadata: {{name: server, namespace: demo}}\n\
         spec:\n  backends: [{{name: server, port: {{number: 8080, protocol: {protocol}}}}}]\n  sources: {sources}\n"
    )
}

/// What the ingress host's nginx answers for `path` (its status line, `status=<code>`).
fn through_nginx(mesh: &LocalMesh, path: &str) -> String {
    through_nginx_port(mesh, 8000, path)
}

fn through_nginx_port(mesh: &LocalMesh, port: u16, path: &str) -> String {
    let out = mesh.app("external/ingress", &["get", &format!("http://127.0.0.1:{port}{path}")]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a host outside the mesh gets an answer from the server pod directly.
fn direct(mesh: &LocalMesh, host: &str) -> bool {
    mesh.app(host, &["get", "http://10.244.1.2:8080/direct", "--timeout-s", "3"]).unwrap().status.success()
}

#[test]
fn an_ingress_backend_opens_a_meshed_service_to_its_ingress_only() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    // The ingress gateway certificate, from the MeshConfig: issued into the state directory.
    mesh.write_mesh_file(
        "meshconfig.yaml",
        &format!(
            "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
             metadata: {{name: osm-mesh-config, namespace: osm-system}}\nspec:\n  certificate:\n    ingressGateway:\n\
             \x20     subjectAltNames: [{GATEWAY_NAME}]\n      validityDuration: 1h\n\
             \x20     secret: {{name: ingress-gateway-cert, namespace: ingress}}\n"
        ),
    )
    .unwrap();
    let gateway = mesh.state_dir.join("ingress-gateway/ingress/ingress-gateway-cert");
    mesh.eventually(WAIT, "the ingress gateway certificate", || gateway.join("tls.key").exists().then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.add_pod("demo", "client").unwrap();
    let ingress = mesh.add_external_host("ingress", INGRESS_IP).unwrap();
    let other = mesh.add_external_host("other", OTHER_IP).unwrap();
    let dir = mesh.pod(&ingress).unwrap().dir.clone();
    // A certificate the mesh did not issue, for the client that must be refused.
    let own = dir.join("own");
    std::fs::create_dir_all(&own).unwrap();
    let openssl = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={GATEWAY_NAME}"), "-addext", &format!("subjectAltName=DNS:{GATEWAY_NAME}")])
        .arg("-keyout")
        .arg(own.join("tls.key"))
        .arg("-out")
        .arg(own.join("tls.crt"))
        .output()
        .unwrap();
    assert!(openssl.status.success(), "{}", String::from_utf8_lossy(&openssl.stderr));
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, &gateway, &own)).unwrap();
    mesh.spawn_program(&ingress, "nginx", &["-c", &conf.display().to_string(), "-g", "daemon off;"]).unwrap();
    // The mesh works, and nginx runs: it answers 502 while the sidecar turns it away.
    mesh.eventually(WAIT, "the client to reach the server through the mesh", || {
        let out = mesh.app("demo/client", &["get", "http://10.96.0.10/"]).ok()?;
        String::from_utf8_lossy(&out.stdout).starts_with("status=200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    mesh.eventually(WAIT, "nginx to answer", || through_nginx(&mesh, "/").starts_with("status=5").then_some(()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!direct(&mesh, &other), "no IngressBackend: plain HTTP from outside the mesh is turned away");

    // By address range: nginx gets through; the other host does not.
    mesh.write_mesh_file("ingress.yaml", &ingress_backend(&format!("[{{kind: IPRange, name: {INGRESS_IP}/32}}]")))
        .unwrap();
    mesh.eventually(WAIT, "nginx to reach the server", || {
        through_nginx(&mesh, "/by-range").starts_with("status=200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    assert!(through_nginx(&mesh, "/by-range").contains("hello from server-1"));
    assert!(!direct(&mesh, &other), "another host outside the range is turned away");

    // The policy gone: closed again.
    mesh.remove_mesh_file("ingress.yaml").unwrap();
    mesh.eventually(WAIT, "ingress to close", || through_nginx(&mesh, "/closed").starts_with("status=5").then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));

    // By the ingress controller's Service: its endpoints' addresses, followed as they change.
    let endpoints = |ip: Ipv4Addr| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ingress}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: ingress-nginx, namespace: ingress}}\n\
             spec: {{clusterIP: 10.96.0.90, ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: ingress-nginx, namespace: ingress}}\n\
             subsets: [{{addresses: [{{ip: {ip}}}], ports: [{{name: http, port: 80}}]}}]\n"
        )
    };
    mesh.write_mesh_file("ingress-service.yaml", &endpoints(INGRESS_IP)).unwrap();
    mesh.write_mesh_file(
        "ingress.yaml",
        &ingress_backend("[{kind: Service, name: ingress-nginx, namespace: ingress}]"),
    )
    .unwrap();
    mesh.eventually(WAIT, "nginx to reach the server as the Service's endpoint", || {
        through_nginx(&mesh, "/by-service").starts_with("status=200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    assert!(!direct(&mesh, &other), "a host that is not the Service's endpoint is turned away");
    // The Service's endpoint moves to the other host: the other host gets through, nginx no longer.
    mesh.write_mesh_file("ingress-service.yaml", &endpoints(OTHER_IP)).unwrap();
    mesh.eventually(WAIT, "the new endpoint to be admitted", || direct(&mesh, &other).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    assert!(through_nginx(&mesh, "/moved").starts_with("status=5"), "the old endpoint is turned away");

    mesh.remove_mesh_file("ingress-service.yaml").unwrap();

    // HTTPS: the sidecar terminates TLS from the ingress and checks its certificate against the mesh root,
    // then RBAC admits the AuthenticatedPrincipal only.
    let https = |principal: &str| {
        backend_for(
            "https",
            &format!("[{{kind: IPRange, name: {INGRESS_IP}/32}}, {{kind: AuthenticatedPrincipal, name: {principal}}}]"),
        )
    };
    mesh.write_mesh_file("ingress.yaml", &https(GATEWAY_NAME)).unwrap();
    mesh.eventually(WAIT, "nginx to reach the server over HTTPS with the gateway certificate", || {
        through_nginx_port(&mesh, 8001, "/tls").starts_with("status=200").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    assert!(through_nginx_port(&mesh, 8001, "/tls").contains("hello from server-1"));
    let own_cert = through_nginx_port(&mesh, 8002, "/own");
    assert!(own_cert.starts_with("status=502"), "a certificate the mesh did not issue is refused: {own_cert}");
    let no_cert = through_nginx_port(&mesh, 8003, "/none");
    assert!(no_cert.starts_with("status=502"), "no client certificate is refused: {no_cert}");
    assert!(through_nginx(&mesh, "/plain").starts_with("status=5"), "plain HTTP is not admitted to an HTTPS backend");
    // The operator's view: `osm policy get` names the IngressBackend and what it admits.
    let out = mesh.osm(&["policy", "get", SERVER]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains("IngressBackend") && table.contains("admits https to demo/server port 8080"), "{table}");
    assert!(table.contains(&format!("principal {GATEWAY_NAME}")), "{table}");

    // Another principal named: the gateway's certificate is valid but not admitted.
    mesh.write_mesh_file("ingress.yaml", &https("someone-else.ingress.cluster.local")).unwrap();
    mesh.eventually(WAIT, "RBAC to refuse the gateway's principal", || {
        through_nginx_port(&mesh, 8001, "/rbac").starts_with("status=403").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
}
