//! Every interception rule set the injector writes is one `iptables-restore` accepts: a matrix of pod
//! annotations and MeshConfig exclusions, each injected, its init container's rules applied with
//! `iptables-restore` in a network namespace of its own, thrown away after (stricter than `--test`,
//! which with the nf_tables backend does not even check that a jump's chain exists). A rule set the
//! kernel refuses would leave the pod's init container failing and the pod never starting.
//! Needs root and iptables (`scripts/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::io::Write as _;
use std::process::{Command, Stdio};

use k8s::inject::{self, InjectorSettings};
use k8s_openapi::api::core::v1 as core;
use messages::ProxyUuid;
use serde_json::json;

fn pod(annotations: serde_json::Value) -> core::Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "annotations": annotations},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app"}]}
    }))
    .unwrap()
}

/// The rules between the heredoc markers of the init container's script.
fn rules_of(injection: &inject::Injection) -> String {
    let spec = injection.pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let script = &init.command.as_ref().unwrap()[2];
    let body = script.split_once("<<'EOF'\n").unwrap().1;
    body.rsplit_once("EOF\n").unwrap().0.to_owned()
}

fn iptables_accepts(rules: &str) -> Result<(), String> {
    let mut child = Command::new("unshare")
        .args(["--net", "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running iptables-restore (scripts/setup.sh installs it): {e}"))?;
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[test]
fn every_rule_set_the_injector_writes_is_one_iptables_restore_accepts() {
    let ca = certs::CertificateAuthority::generate("cluster.local").unwrap();
    let ns: core::Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    let mut with_mesh_config = InjectorSettings::new("osm", "osm-system");
    with_mesh_config.intercept.outbound_ip_range_exclusions = vec!["169.254.169.254/32".to_owned()];
    with_mesh_config.intercept.outbound_port_exclusions = vec![25];
    with_mesh_config.intercept.inbound_port_exclusions = vec![9090];
    with_mesh_config.intercept.network_interface_exclusions = vec!["eth1".to_owned()];
    let cases = [
        ("defaults", json!({}), InjectorSettings::new("osm", "osm-system")),
        (
            "port exclusions",
            json!({inject::OUTBOUND_PORT_EXCLUSIONS: "5432, 6379", inject::INBOUND_PORT_EXCLUSIONS: "9000"}),
            InjectorSettings::new("osm", "osm-system"),
        ),
        (
            "ip exclusions",
            json!({inject::OUTBOUND_IP_EXCLUSIONS: "10.0.0.0/8, 192.168.1.1/32"}),
            InjectorSettings::new("osm", "osm-system"),
        ),
        (
            "ip inclusions",
            json!({inject::OUTBOUND_IP_INCLUSIONS: "10.96.0.0/12,10.244.0.0/16"}),
            InjectorSettings::new("osm", "osm-system"),
        ),
        (
            "everything with the MeshConfig's",
            json!({
                inject::OUTBOUND_PORT_EXCLUSIONS: "5432",
                inject::INBOUND_PORT_EXCLUSIONS: "9000",
                inject::OUTBOUND_IP_EXCLUSIONS: "10.0.0.0/8",
                inject::OUTBOUND_IP_INCLUSIONS: "10.96.0.0/12"
            }),
            with_mesh_config.clone(),
        ),
        ("the MeshConfig's alone", json!({}), with_mesh_config),
    ];
    for (what, annotations, settings) in cases {
        let uuid = ProxyUuid::derived("shop", what);
        let injection = inject::inject(&pod(annotations), "shop", &ns, &ca, &settings, uuid).unwrap();
        let rules = rules_of(&injection);
        assert!(rules.starts_with("*nat\n") && rules.trim_end().ends_with("COMMIT"), "{what}: {rules}");
        iptables_accepts(&rules).unwrap_or_else(|e| panic!("{what}: iptables-restore refused:\n{e}\n{rules}"));
    }
    // And the check is real: a rule set it refuses is reported.
    assert!(iptables_accepts("*nat\n-A NO_SUCH_CHAIN -j RETURN\nCOMMIT\n").is_err());
}
