//! Kubernetes mode end to end: the controller watches an API server (the simulator, in this process),
//! its admission webhook injects pods, and the injected pods — their bootstrap Secret mounted at
//! `/etc/envoy`, their init container's rules, their `envoy` container's user and command line — run in
//! network-namespace pods with real Envoy and carry traffic. Needs root, iptables and Envoy
//! (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use apisim::{ApiServer, Options, Resource};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use testbed::{Binaries, LocalMesh, MeshOptions};

const WAIT: Duration = Duration::from_secs(20);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const HUB: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const WEBHOOK_PORT: u16 = 9090;

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {openservicemesh.io/monitored-by: osm}
  annotations: {openservicemesh.io/sidecar-injection: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
"#;

/// A pod as a user would write it, before admission.
fn pod(name: &str, app: &str, sa: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
        "spec": {"serviceAccountName": sa, "containers": [{
            "name": "app", "image": "mesh-app", "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
            // Answered by the injected osm-healthcheck container: the app's port, and one nothing listens on.
            "livenessProbe": {"tcpSocket": {"port": "http"}},
            "startupProbe": {"tcpSocket": {"port": 9999}}
        }]}
    })
}

/// Submits `pod` through the mutating webhook (as the API server does on create), applies the patch and
/// stores the result with its IP, as the kubelet would report it.
async fn admit(sim: &ApiServer, root_pem: &str, pod: Value, ip: &str) -> Pod {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("create-{}", pod["metadata"]["name"].as_str().unwrap()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "admin"},
            "object": pod.clone(), "dryRun": false
        }
    });
    let addr = SocketAddr::from((HUB, WEBHOOK_PORT));
    let resp = apisim::webhook::review(addr, "osm-injector.osm-system.svc", root_pem, "/mutate-pod-creation", &review)
        .await
        .unwrap();
    assert_eq!(resp["allowed"], true, "{resp}");
    let patch = base64::engine::general_purpose::STANDARD.decode(resp["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut injected = pod;
    json_patch::patch(&mut injected, &patch).unwrap();
    injected["status"] = json!({"podIP": ip, "phase": "Running"});
    let stored = sim.put(&Resource::new("", "v1", "pods"), injected).unwrap();
    serde_json::from_value(stored).unwrap()
}

/// The Secrets of the namespace, decoded, as the kubelet would mount them.
fn secrets(sim: &ApiServer) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    sim.list(&Resource::new("", "v1", "secrets"))
        .into_iter()
        .filter(|s| s["metadata"]["namespace"] == "shop")
        .map(|s| {
            let data = s["data"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), b64.decode(v.as_str().unwrap()).unwrap()))
                .collect();
            (s["metadata"]["name"].as_str().unwrap().to_owned(), data)
        })
        .collect()
}

#[test]
fn pods_injected_by_the_webhook_carry_traffic_through_real_envoy() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut opts = MeshOptions::new(empty.path());
    opts.host_link = Some((HOST, HUB));
    let mut mesh = LocalMesh::prepare(opts, bins()).expect("the pod network");
    let sim = rt
        .block_on(ApiServer::start_with(Options { bind: SocketAddr::from((HOST, 0)), ..Options::default() }))
        .unwrap();
    sim.apply_yaml(OBJECTS).unwrap();
    // The mesh root the controller will find in its namespace's osm-ca-bundle Secret.
    let ca = rt
        .block_on(async { k8s::ca_secret::load_or_create(sim.client().unwrap(), "osm-system", "cluster.local").await })
        .unwrap();
    let kubeconfig = mesh.work_dir().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig_for(&format!("http://{HOST}:{}", sim.port()))).unwrap();
    let gateway = mesh.opts.gateway.to_string();
    mesh.opts.controller_args.extend(
        [
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--webhook-addr",
            &format!("0.0.0.0:{WEBHOOK_PORT}"),
            "--sidecar-ads-host",
            &gateway,
        ]
        .map(str::to_owned),
    );
    mesh.start_controller().expect("the controller in Kubernetes mode");

    let root = ca.root_pem().to_owned();
    let web = rt.block_on(admit(&sim, &root, pod("web-1", "web", "web"), "10.244.2.1"));
    let client = rt.block_on(admit(&sim, &root, pod("client", "client", "client"), "10.244.2.2"));
    let secrets = secrets(&sim);
    assert_eq!(secrets.len(), 2, "one bootstrap Secret per injected pod");
    for p in [&web, &client] {
        let key = mesh.start_injected_pod(p, &secrets).unwrap();
        mesh.wait_envoy_ready(&key).unwrap();
    }
    mesh.spawn_app("shop/web-1", &["http-server", "--port", "8080", "--name", "web-1"]).unwrap();

    // The client reaches the Service through both sidecars (mTLS between them).
    let body = mesh
        .eventually(WAIT, "the client to reach web through the mesh", || {
            let out = mesh.app("shop/client", &["get", "http://10.96.0.20/"]).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.starts_with("status=200").then_some(text)
        })
        .unwrap_or_else(|e| panic!("{e}\ncontroller:\n{}", mesh.controller_output()));
    assert!(body.contains("hello from web-1"), "{body}");
    for stat in ["cluster.shop_web_8080.upstream_rq_200", "cluster.shop_web_8080.ssl.handshake"] {
        assert!(mesh.stat("shop/client", stat).unwrap().unwrap_or(0) > 0, "{stat}: through the sidecar, over mTLS");
    }

    // The rewritten readiness probe, from outside the pod as the kubelet sends it, reaches the app through
    // the sidecar's probe listener.
    let probe = web.spec.as_ref().unwrap().containers[0].readiness_probe.clone().unwrap().http_get.unwrap();
    let url = format!(
        "http://10.244.2.1:{}{}",
        match probe.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p,
            other => panic!("probe port {other:?}"),
        },
        probe.path.unwrap()
    );
    let answer = mesh.get_from_hub(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(answer.contains("hello from web-1"), "{answer}");
    // The tcpSocket probes, rewritten to osm-healthcheck, check the application's port past the sidecar
    // (which listens for every intercepted port, so a probe that reached it would pass whatever the app).
    let app = &web.spec.as_ref().unwrap().containers[0];
    let live = app.liveness_probe.clone().unwrap().http_get.unwrap();
    // (The kubelet retries too: the helper process may still be binding.)
    mesh.eventually(WAIT, "the tcpSocket liveness probe to pass (the app listens on 8080)", || {
        mesh.probe_from_hub("shop/web-1", &live).ok().filter(|(status, _)| *status == 200)
    })
    .unwrap();
    let startup = app.startup_probe.clone().unwrap().http_get.unwrap();
    let (status, body) = mesh.probe_from_hub("shop/web-1", &startup).unwrap();
    assert_eq!(status, 404, "nothing listens on 9999: {body}");
    assert!(body.contains("127.0.0.1:9999"), "{body}");

    // osm on a cluster, with nothing but the kubeconfig: the controller's pod and the sidecars' admin
    // interfaces through the API server's port-forwards (the kubelet's part done from inside each pod's
    // network namespace; the controller runs in the hub's), no port-forward of the operator's own.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: osm-controller-0, namespace: osm-system, labels: {app: osm-controller}}\n\
         spec: {containers: [{name: osm-controller, image: x}]}\n\
         status: {phase: Running, conditions: [{type: Ready, status: \"True\"}]}\n",
    )
    .unwrap();
    let mut reach: BTreeMap<String, (String, String)> = ["shop/web-1", "shop/client"]
        .into_iter()
        .map(|k| (k.to_owned(), (mesh.pod(k).unwrap().netns_name().to_owned(), "127.0.0.1".to_owned())))
        .collect();
    reach.insert("osm-system/osm-controller-0".to_owned(), (mesh.hub_netns_name().to_owned(), gateway.clone()));
    let app = bins().app;
    let dialer: apisim::portforward::PodDialer = std::sync::Arc::new(move |ns: &str, pod: &str, port: u16| {
        let target = reach.get(&format!("{ns}/{pod}")).cloned();
        let app = app.clone();
        let dial: futures::future::BoxFuture<'static, std::io::Result<Box<dyn apisim::portforward::PodStream>>> =
            Box::pin(async move {
                let (netns, host) = target.ok_or_else(|| std::io::Error::other("no such pod running"))?;
                let mut child = tokio::process::Command::new("ip")
                    .args(["netns", "exec", &netns])
                    .arg(&app)
                    .args(["pipe", &format!("{host}:{port}")])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()?;
                let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
                let stream = tokio::io::join(
                    stdout.ok_or_else(|| std::io::Error::other("no stdout"))?,
                    stdin.ok_or_else(|| std::io::Error::other("no stdin"))?,
                );
                Ok(Box::new(stream) as Box<dyn apisim::portforward::PodStream>)
            });
        dial
    });
    sim.forward_ports_with(dialer);
    let osm = |args: &[&str]| {
        let out = mesh.osm_on_cluster(&kubeconfig, args).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, table, err) = osm(&["proxy", "status", "--wait", "--timeout-s", "20"]);
    assert_eq!(code, Some(0), "{table}{err}");
    assert!(table.contains("shop/web-1") && table.contains("shop/client"), "{table}");
    assert!(table.contains("2 proxies: 2 synced") && table.contains("held by 2 of 2 proxies"), "{table}");
    let (code, report, err) = osm(&["verify", "connectivity", "--from", "shop/client", "--to", "shop/web:80"]);
    assert_eq!(code, Some(0), "{report}{err}");
    assert!(report.contains("OK: shop/client can reach shop/web:80"), "{report}");
    let report = mesh.work_dir().join("bug-report");
    let (code, _, err) = osm(&["support", "bug-report", "--out", &report.display().to_string()]);
    assert_eq!(code, Some(0), "{err}");
    let proxies = std::fs::read_to_string(report.join("osm-system_osm-controller-0/proxies.json")).unwrap();
    assert!(proxies.contains("shop/client"), "{proxies}");
    let (_, list, err) = osm(&["mesh", "list"]);
    assert!(list.contains("2 connected, 2 synced") && list.contains("cluster"), "{list}{err}");

    let (code, dump, err) = osm(&["proxy", "get", "config_dump", "shop/client"]);
    assert_eq!(code, Some(0), "{err}");
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let text = dump.to_string();
    assert!(text.contains("shop/web|8080"), "the client's clusters: {text:.2000}");
    let (code, stats, err) = osm(&["proxy", "get", "stats", "shop/web-1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(stats.contains("control_plane.connected_state: 1"), "{stats:.2000}");
    // A pod that is not there is named, with the API server's answer.
    let (code, _, error) = osm(&["proxy", "get", "stats", "shop/nobody"]);
    assert!(code != Some(0) && error.contains("shop/nobody") && error.contains("not found"), "{error}");
    let requests = sim.requests();
    for pod in ["client", "osm-controller-0"] {
        assert!(requests.iter().any(|(_, path)| path.contains(&format!("/pods/{pod}/portforward"))), "{requests:?}");
    }
}
