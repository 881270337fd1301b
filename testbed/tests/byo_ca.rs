//! Bring your own CA, through real Envoy: roots generated with openssl (RSA 2048 and ECDSA P-256), given
//! to the controller as files; sidecars talk mTLS with certificates it signed and trust that root alone.
//! With the RSA root, MeshConfig `certKeyBitSize` then switches service certificates to RSA keys. Needs root,
//! iptables, openssl and Envoy (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::{Binaries, LocalMesh, MeshOptions};

mod common;

const SERVER: &str = "demo/server-1";
const CLIENT: &str = "demo/client";

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A self-signed CA of `algorithm` in `dir`; returns (certificate, key, serial in hex).
fn root(dir: &Path, name: &str, keygen: &[&str]) -> (PathBuf, PathBuf, String) {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    let mut args = vec!["genpkey"];
    args.extend(keygen);
    args.extend(["-out", &key]);
    openssl(dir, &args);
    let subject = format!("/CN=byo-{name}/O=Example Corp");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            &subject,
            "-days",
            "30",
            "-out",
            &crt,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let serial = openssl(dir, &["x509", "-in", &crt, "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_ascii_lowercase();
    (dir.join(crt), dir.join(key), serial)
}

#[test]
fn sidecars_serve_mtls_on_a_root_brought_from_openssl_files_rsa_and_ecdsa() {
    let keys = tempfile::tempdir().unwrap();
    for (name, keygen) in [
        ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..]),
        ("ecdsa", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
    ] {
        let (crt, key, serial) = root(keys.path(), name, keygen);
        let mut opts = MeshOptions::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/basic"));
        opts.ca_files = Some((crt, key));
        let mut bins = Binaries::locate().expect("building osm-controller and mesh-app");
        bins.app = PathBuf::from(env!("CARGO_BIN_EXE_mesh-app"));
        let mut mesh = LocalMesh::start(opts, bins).expect("starting the local mesh");
        mesh.add_pod("demo", "server-1").unwrap();
        mesh.spawn_app(SERVER, &["http-server", "--port", "8080", "--name", "server-1"]).unwrap();
        mesh.add_pod("demo", "client").unwrap();
        let body = mesh
            .eventually(Duration::from_secs(20), &format!("{name}: GET through the mesh"), || {
                let out = mesh.app(CLIENT, &["get", "http://10.96.0.10/hello"]).ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.starts_with("status=200").then_some(text)
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
        assert!(body.contains("hello from server-1"), "{body}");
        assert!(mesh.stat(SERVER, "listener.0.0.0.0_15003.ssl.handshake").unwrap().unwrap_or(0) > 0, "over mTLS");
        // Both sidecars trust the brought root, and only it.
        let want = serial.trim_start_matches('0').to_owned();
        for pod in [SERVER, CLIENT] {
            let trusted = common::cert_serials(&mesh, pod, "ca_cert");
            assert!(!trusted.is_empty() && trusted.iter().all(|s| *s == want), "{name} {pod}: {trusted:?} vs {want}");
        }
        assert!(mesh.controller_output().contains("mesh CA brought from files"), "{}", mesh.controller_output());
        if name == "rsa" {
            rsa_leaf_keys_from_the_mesh_config(&mesh, keys.path());
        }
    }
}

/// MeshConfig `certificate.certKeyBitSize`: service certificates are re-issued with RSA keys of that size,
/// and traffic flows over them.
fn rsa_leaf_keys_from_the_mesh_config(mesh: &LocalMesh, dir: &Path) {
    mesh.write_mesh_file(
        "meshconfig.yaml",
        "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
         metadata: {name: osm-mesh-config, namespace: osm-system}\nspec: {certificate: {certKeyBitSize: 2048}}\n",
    )
    .unwrap();
    for pod in [SERVER, CLIENT] {
        mesh.eventually(Duration::from_secs(30), &format!("{pod}: an RSA 2048 service certificate"), || {
            let chains = common::service_chains(mesh, pod);
            let leaf = dir.join("leaf.pem");
            std::fs::write(&leaf, chains.first()?).unwrap();
            let text = openssl(dir, &["x509", "-in", "leaf.pem", "-noout", "-text"]);
            text.contains("Public-Key: (2048 bit)").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.controller_output()));
    }
    let out = mesh.app(CLIENT, &["get", "http://10.96.0.10/rsa"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("status=200"), "{out:?}");
}
