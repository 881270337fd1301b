//! Certificate rotation through real Envoy: with a one-minute service-certificate validity set live by a
//! MeshConfig, a client sends requests without pause across three renewals of the server's certificate.
//! Every request succeeds, the server's Envoy shows a new serial after each renewal, and the controller
//! pushed the renewals as SDS alone (no cluster or listener resent). Needs root, iptables and Envoy
//! (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testbed::{Binaries, LocalMesh, MeshOptions};

mod common;

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";

const MESH_CONFIG: &str = "apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: osm-system}
spec:
  certificate: {serviceCertValidityDuration: 1m}
";

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

/// The serial numbers of the certificates the pod's Envoy presents.
fn serials(mesh: &LocalMesh, pod: &str) -> BTreeSet<String> {
    common::cert_serials(mesh, pod, "cert_chain")
}

/// The controller's count of responses of `ty` sent to the server's proxy.
fn pushes(mesh: &LocalMesh, ty: &str) -> u64 {
    let metrics = mesh.controller_http("/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("osm_proxy_response_send_success_count{") && l.contains("identity=\"server.demo\""))
        .filter(|l| l.contains(&format!("type=\"{ty}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn one_minute_certificates_rotate_three_times_under_traffic_without_a_failed_request() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.add_pod("demo", "client").unwrap();
    mesh.wait_envoy_ready(SERVER).unwrap();
    mesh.wait_envoy_ready(CLIENT).unwrap();
    let get = |mesh: &LocalMesh| {
        mesh.app(CLIENT, &["get", "http://10.96.0.10/hello", "--timeout-s", "5"])
            .map(|o| String::from_utf8_lossy(&o.stdout).starts_with("status=200"))
            .unwrap_or(false)
    };
    mesh.eventually(Duration::from_secs(20), "the first request to succeed", || get(&mesh).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    let first = serials(&mesh, SERVER);
    assert!(!first.is_empty(), "the server's Envoy presents a certificate");
    let (cds, lds) = (pushes(&mesh, "CDS"), pushes(&mesh, "LDS"));
    let sds = pushes(&mesh, "SDS");

    // Certificates of a minute from now on: renewed about every 30 s.
    mesh.write_mesh_file("meshconfig.yaml", MESH_CONFIG).unwrap();
    let (ok, failed, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let mut seen = vec![first];
    std::thread::scope(|s| {
        // Bounded on its own too: if the loop below panics, `done` is never set, and the scope would wait
        // for this thread forever.
        s.spawn(|| {
            let started = Instant::now();
            while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(200) {
                let counter = if get(&mesh) { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let started = Instant::now();
        while seen.len() < 4 && started.elapsed() < Duration::from_secs(180) {
            std::thread::sleep(Duration::from_secs(2));
            let now = serials(&mesh, SERVER);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(
        seen.len() >= 4,
        "three renewals within three minutes; serials seen: {seen:?}\n{}",
        mesh.controller_output()
    );
    // (The xDS client certificate of the bootstrap is listed too, and stays.)
    assert!(
        seen.windows(2).all(|w| w[1].difference(&w[0]).count() == 1 && w[0].difference(&w[1]).count() == 1),
        "each renewal replaces the service certificate with one of a new serial: {seen:?}"
    );
    assert_eq!(failed, 0, "{failed} of {} requests failed during the rotations", ok + failed);
    assert!(ok > 30, "requests kept flowing: {ok}");
    // Renewals were pushed as secrets alone.
    assert!(pushes(&mesh, "SDS") >= sds + 3, "SDS pushes {sds} -> {}", pushes(&mesh, "SDS"));
    assert_eq!((pushes(&mesh, "CDS"), pushes(&mesh, "LDS")), (cds, lds), "no cluster or listener resent");
}
