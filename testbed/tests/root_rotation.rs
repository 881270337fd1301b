//! A full root rotation through real Envoy, driven by MeshRootCertificates in the mesh directory, while a
//! client sends requests without pause: the new root is added as passive (both sidecars trust both
//! roots), made active (every service certificate is re-issued from it), and the old one retired. The
//! sidecars' bundles are refreshed in place with `osm-controller bootstrap` along the way. No request
//! fails; at the end every certificate the sidecars hold chains to the new root only, they trust nothing
//! else, and after a controller restart they reconnect and keep following mesh edits. Needs root, iptables,
//! openssl and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

mod common;

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";
const WAIT: Duration = Duration::from_secs(30);

fn bins() -> Binaries {
    let mut b = Binaries::locate().expect("building osm-controller and mesh-app");
    b.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
    b
}

fn mrc(name: &str, secret: &str, role: &str) -> String {
    format!(
        "apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshRootCertificate
metadata: {{name: {name}, namespace: osm-system}}
spec:
  role: {role}
  trustDomain: cluster.local
  provider:
    tresor:
      ca:
        secretRef: {{name: {secret}, namespace: osm-system}}
"
    )
}

/// The serial of the first certificate of a PEM file, as Envoy's `/certs` writes it.
fn serial(pem: &str) -> String {
    certs::serial_of(&certs::pem_to_der(pem).unwrap()).unwrap().trim_start_matches('0').to_owned()
}

/// Whether openssl verifies `chain` (a leaf and what follows it) against `root` alone.
fn chains_to(dir: &Path, chain: &str, root: &Path) -> bool {
    let leaf = dir.join("leaf.pem");
    std::fs::write(&leaf, chain).unwrap();
    std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(root)
        .arg(&leaf)
        .output()
        .expect("openssl (scripts/setup.sh installs it)")
        .status
        .success()
}

#[test]
fn a_root_rotation_under_traffic_fails_no_request_and_ends_on_the_new_root_alone() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic");
    let mut mesh = LocalMesh::start(MeshOptions::new(fixture), bins()).expect("starting the local mesh");
    mesh.add_pod("demo", "server-1").unwrap();
    mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
    mesh.add_pod("demo", "client").unwrap();
    let get = |mesh: &LocalMesh| {
        mesh.app(CLIENT, &["get", "http://10.96.0.10/hello", "--timeout-s", "5"])
            .map(|o| String::from_utf8_lossy(&o.stdout).starts_with("status=200"))
            .unwrap_or(false)
    };
    mesh.eventually(WAIT, "the first request to succeed", || get(&mesh).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    let old_root_file = mesh.state_dir.join("ca.crt");
    let old_root = serial(&std::fs::read_to_string(&old_root_file).unwrap());
    let new_root_file =
        certs::roots::RootStore::dir_of(&mesh.state_dir, &("osm-system".to_owned(), "osm-ca-bundle-2".to_owned()))
            .join("ca.crt");
    let trusted = |pod: &str| common::cert_serials(&mesh, pod, "ca_cert");
    let presented = |pod: &str| common::cert_serials(&mesh, pod, "cert_chain");
    let both = [SERVER, CLIENT];
    let fail = |e: testbed::TestbedError| -> ! { panic!("{e}\n{}", mesh.controller_output()) };

    let (ok, failed, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let counter = if get(&mesh) { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        // However this scope ends (a failed step panics), the request loop stops, or the scope waits forever.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&done);
        // Each phase carries traffic before the next begins.
        let carries_traffic = |phase: &str| {
            let at = ok.load(Ordering::Relaxed);
            mesh.eventually(WAIT, &format!("20 requests {phase}"), || {
                (ok.load(Ordering::Relaxed) >= at + 20).then_some(())
            })
            .unwrap_or_else(|e| fail(e));
        };
        carries_traffic("before the rotation");

        // 1. The root the mesh started with, named by an MRC; 2. a new root beside it, passive.
        // (Each step's MRCs are written together, so the controller never reads half a step.)
        let step = |old_role: Option<&str>, new_role: &str| {
            let old = old_role.map(|r| mrc("osm-mesh-root-certificate", "osm-ca-bundle", r)).unwrap_or_default();
            let new = mrc("osm-mesh-root-certificate-2", "osm-ca-bundle-2", new_role);
            mesh.write_mesh_file("roots.yaml", &format!("{old}---\n{new}")).unwrap();
        };
        step(Some("active"), "passive");
        let new_root = mesh
            .eventually(WAIT, "the controller to create the new root", || {
                std::fs::read_to_string(&new_root_file).ok().map(|pem| serial(&pem))
            })
            .unwrap_or_else(|e| fail(e));
        let before: Vec<Vec<String>> = both.iter().map(|p| common::service_chains(&mesh, p)).collect();
        for pod in both {
            mesh.eventually(WAIT, &format!("{pod} to trust both roots"), || {
                let t = trusted(pod);
                (t.contains(&old_root) && t.contains(&new_root)).then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}: old {old_root}, new {new_root}, trusted {:?}", trusted(pod)));
            // The sidecar's own bundle: a client certificate still from the old root, both roots trusted;
            // Envoy presents the new client certificate without a restart.
            mesh.bootstrap_again(pod).unwrap_or_else(|e| fail(e));
            let client_cert = std::fs::read_to_string(mesh.pod(pod).unwrap().dir.join(sidecar::CERT_FILE)).unwrap();
            mesh.eventually(WAIT, &format!("{pod} to present its refreshed client certificate"), || {
                presented(pod).contains(&serial(&client_cert)).then_some(())
            })
            .unwrap_or_else(|e| fail(e));
        }
        carries_traffic("with both roots trusted");
        let after: Vec<Vec<String>> = both.iter().map(|p| common::service_chains(&mesh, p)).collect();
        assert_eq!(before, after, "the old root still signs the service certificates");

        // 3. The new root signs, the old one is still trusted: every service certificate is re-issued.
        step(Some("passive"), "active");
        for pod in both {
            mesh.eventually(WAIT, &format!("{pod}'s service certificate from the new root"), || {
                let chains = common::service_chains(&mesh, pod);
                (!chains.is_empty() && chains.iter().all(|c| chains_to(mesh.work_dir(), c, &new_root_file)))
                    .then_some(())
            })
            .unwrap_or_else(|e| fail(e));
            mesh.bootstrap_again(pod).unwrap_or_else(|e| fail(e));
        }
        carries_traffic("with certificates from the new root");

        // 4. The old root retires. `bootstrap` issues from the roots the controller put in force: wait until
        // it has read the change, or a bundle written now would still trust the old root.
        step(None, "active");
        let in_force = mesh.state_dir.join("roots/in-force.json");
        mesh.eventually(WAIT, "the controller to put the new root alone in force", || {
            let text = std::fs::read_to_string(&in_force).ok()?;
            (text.contains("osm-mesh-root-certificate-2") && !text.contains("\"osm-mesh-root-certificate\""))
                .then_some(())
        })
        .unwrap_or_else(|e| fail(e));
        for pod in both {
            mesh.bootstrap_again(pod).unwrap_or_else(|e| fail(e));
        }
        for pod in both {
            // Neither the controller's validation contexts nor the refreshed bundle trust the old root.
            mesh.eventually(WAIT, &format!("{pod} to trust the new root only"), || {
                let t = trusted(pod);
                (t.contains(&new_root) && !t.contains(&old_root)).then_some(())
            })
            .unwrap_or_else(|e| fail(e));
        }
        carries_traffic("on the new root alone");
    });
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed during the rotation", ok + failed);

    for pod in [SERVER, CLIENT] {
        let chains = common::service_chains(&mesh, pod);
        assert!(!chains.is_empty(), "{pod} holds a service certificate");
        for chain in &chains {
            assert!(chains_to(mesh.work_dir(), chain, &new_root_file), "{pod}: chains to the new root");
            assert!(!chains_to(mesh.work_dir(), chain, &old_root_file), "{pod}: not to the old one");
        }
        // The xDS client certificate Envoy presents is the refreshed one, from the new root.
        let client_cert = std::fs::read_to_string(mesh.pod(pod).unwrap().dir.join(sidecar::CERT_FILE)).unwrap();
        assert!(chains_to(mesh.work_dir(), &client_cert, &new_root_file));
        assert!(common::cert_serials(&mesh, pod, "cert_chain").contains(&serial(&client_cert)), "{pod}");
    }

    // A restart: the controller starts on the roots the mesh directory names, and the sidecars reconnect
    // with their refreshed bundles (the ADS server's certificate is from the new root; the sidecars'
    // client certificates are verified against it).
    mesh.stop_controller();
    mesh.start_controller().unwrap();
    for pod in [SERVER, CLIENT] {
        mesh.eventually(WAIT, &format!("{pod} to reconnect"), || {
            (mesh.stat(pod, "control_plane.connected_state").ok()?? == 1).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    }
    let log = mesh.controller_output();
    assert!(!log.contains("ADS TLS handshake failed"), "{log}");
    // When the old root retired, the streams the sidecars had opened with their first (old-root) client
    // certificates were ended; they reconnected with the refreshed ones.
    assert!(log.contains("ended the streams of sidecars whose client certificate's root was retired"), "{log}");
    assert!(get(&mesh), "traffic after the restart");
}
