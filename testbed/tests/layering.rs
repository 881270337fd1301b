//! The crate dependency rule, checked against the resolved dependency graph: `messages` is the shared
//! vocabulary, `xds` never pulls in a Kubernetes client, `k8s` never gRPC, and only `actors` knows actix.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

use std::process::Command;

fn deps(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_free_of(package: &str, forbidden: &[&str]) {
    let d = deps(package);
    for f in forbidden {
        assert!(!d.iter().any(|x| x == f), "{package} must not depend on {f} (directly or not)");
    }
}

#[test]
fn dependency_rule_holds() {
    assert_free_of(
        "messages",
        &["actix", "tokio", "tonic", "kube", "k8s-openapi", "envoy-types", "k8s", "xds", "certs"],
    );
    assert_free_of("xds", &["kube", "k8s-openapi", "k8s", "actix", "actors"]);
    assert_free_of("k8s", &["tonic", "envoy-types", "xds", "actix", "actors"]);
    assert_free_of("certs", &["tonic", "kube", "k8s-openapi", "actix", "xds", "k8s"]);
    assert_free_of("sidecar", &["tonic", "actix", "xds", "k8s"]);
    // The CLI reads the controller's documents (messages::status) and the cluster; it serves nothing.
    assert_free_of("osm-cli", &["actix", "actors", "tonic", "envoy-types", "xds"]);
}

/// Data flows one way between the actors: sources → catalog → (snapshots, certificates), certificates →
/// snapshots (through the certificate store and the trust channel). An actor holds the address only of
/// actors downstream of it, so no message can ask an upstream actor for state, and nothing is wired after
/// start.
#[test]
fn actors_only_address_those_downstream() {
    let src = |file: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../actors/src").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let upstream_of = [
        ("snapshot.rs", &["Addr<CatalogActor>", "Addr<CertActor>", "Addr<crate::catalog", "Addr<crate::certs"][..]),
        ("certs.rs", &["Addr<SnapshotActor>", "Addr<CatalogActor>", "Addr<crate::snapshot", "Addr<crate::catalog"][..]),
    ];
    for (file, forbidden) in upstream_of {
        let text = src(file);
        for f in forbidden {
            assert!(!text.contains(f), "actors/src/{file} holds {f}: an address upstream");
        }
    }
    for file in ["lib.rs", "catalog.rs", "snapshot.rs", "certs.rs", "session.rs"] {
        let text = src(file);
        for wiring in ["ConnectSnapshots", "ConnectCerts", "GetViews", "GetCerts"] {
            assert!(!text.contains(wiring), "actors/src/{file} still has {wiring}");
        }
    }
}
