//! The mesh directory's unit tests.

use super::*;
use messages::Kind;

const SERVER: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: demo}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: server-1, namespace: demo, labels: {app: server}}
spec:
  serviceAccountName: server
  containers: [{name: app, image: x}]
status: {podIP: 10.244.1.2}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"#;

fn keys(events: &[SourceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            SourceEvent::Apply(o) => format!("apply {}", o.key()),
            SourceEvent::Delete(k) => format!("delete {k}"),
            SourceEvent::Reset(r) => format!("reset {}", r.objects.len()),
        })
        .collect()
}

#[test]
fn first_scan_resets_then_changes_are_incremental() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("server.yaml"), SERVER).unwrap();
    let mut src = YamlDir::new(dir.path());
    let scan = src.scan();
    assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    assert_eq!(keys(&scan.events), vec!["reset 3"]);
    assert!(src.scan().events.is_empty());

    let client = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nstatus: {podIP: 10.244.1.1}\n";
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/client.yml"), client).unwrap();
    assert_eq!(keys(&src.scan().events), vec!["apply Pod demo/client"]);

    fs::remove_file(dir.path().join("server.yaml")).unwrap();
    let mut got = keys(&src.scan().events);
    got.sort();
    assert_eq!(
        got,
        vec!["delete Pod demo/server-1", "delete Service demo/server", "delete ServiceAccount demo/server"]
    );
}

#[test]
fn a_file_removed_between_listing_and_reading_is_gone_not_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    fs::write(&path, SERVER).unwrap();
    let mut src = YamlDir::new(dir.path());
    src.scan();
    // The race: the scan listed the file, then its writer removed it before it was read.
    fs::remove_file(&path).unwrap();
    assert!(src.refresh(&path));
    assert!(src.broken_files().is_empty(), "{:?}", src.broken_files());
    let mut got = keys(&src.scan().events);
    got.sort();
    assert_eq!(
        got,
        vec!["delete Pod demo/server-1", "delete Service demo/server", "delete ServiceAccount demo/server"]
    );
}

#[test]
fn broken_file_is_reported_and_keeps_its_last_good_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    fs::write(&path, SERVER).unwrap();
    let mut src = YamlDir::new(dir.path());
    src.scan();

    fs::write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: demo}\nspec: {ports: [{port: 99999}]}\n",
    )
    .unwrap();
    let scan = src.scan();
    assert!(scan.events.is_empty(), "a broken file must not delete objects: {:?}", keys(&scan.events));
    assert_eq!(scan.errors.len(), 1);
    let msg = scan.errors[0].to_string();
    assert!(msg.contains("server.yaml"), "{msg}");
    assert!(msg.contains("Service demo/server: spec.ports[0].port 99999 is not a port"), "{msg}");
    assert_eq!(src.broken_files().len(), 1);

    fs::write(&path, "key: [unclosed\n").unwrap();
    let msg = src.scan().errors[0].to_string();
    assert!(msg.contains("invalid YAML"), "{msg}");

    fs::write(&path, SERVER.replace("10.244.1.2", "10.244.1.9")).unwrap();
    let scan = src.scan();
    assert!(scan.errors.is_empty());
    assert_eq!(keys(&scan.events), vec!["apply Pod demo/server-1"]);
    assert!(src.broken_files().is_empty());
}

#[test]
fn duplicate_definitions_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), SERVER).unwrap();
    fs::write(dir.path().join("b.yaml"), SERVER).unwrap();
    let scan = YamlDir::new(dir.path()).scan();
    assert_eq!(scan.errors.len(), 3);
    assert!(scan.errors[0].to_string().contains("already defined in"));
    match &scan.events[0] {
        SourceEvent::Reset(r) => assert_eq!(r.objects.len(), 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_file_never_takes_over_an_object_in_force() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("server.yaml"), SERVER).unwrap();
    let mut src = YamlDir::new(dir.path());
    src.scan();
    // Sorts first, redefines the pod with another address.
    fs::write(dir.path().join("00-override.yaml"), SERVER.replace("10.244.1.2", "10.244.1.66")).unwrap();
    let scan = src.scan();
    assert!(scan.events.is_empty(), "{:?}", keys(&scan.events));
    assert!(scan.errors.iter().all(|e| e.path.ends_with("00-override.yaml")), "{:?}", scan.errors);
    assert!(scan.errors[0].reason.contains("already defined in"));
    // Once the original file goes, the other definition takes over.
    fs::remove_file(dir.path().join("server.yaml")).unwrap();
    let scan = src.scan();
    assert!(scan.errors.is_empty());
    assert_eq!(keys(&scan.events), vec!["apply Pod demo/server-1"]);
}

#[test]
fn errors_are_reported_while_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("bad.yaml"), "kind: [").unwrap();
    let mut src = YamlDir::new(dir.path());
    assert_eq!(src.scan().errors.len(), 1);
    assert_eq!(src.scan().errors.len(), 1, "still broken, still reported");
    fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    assert!(src.scan().errors.is_empty());
}

#[test]
fn unknown_fields_pass_and_wrong_types_name_the_object() {
    let ok = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n}\nspec: {futureField: 1, containers: []}\n";
    assert_eq!(parse_file(ok).unwrap().len(), 1);
    let bad =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: eighty}]}\n";
    let err = parse_file(bad).unwrap_err();
    assert!(err.starts_with("document 1: Service \"web\": "), "{err}");
    assert!(err.contains("invalid type"), "{err}");
    let no_kind = "apiVersion: v1\nmetadata: {name: x}\n";
    assert_eq!(parse_file(no_kind).unwrap_err(), "document 1: kind is missing");
}

#[test]
fn a_file_being_written_is_read_once_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("server.yaml"), SERVER).unwrap();
    // A settle time no scan of this test can outlast: the file's age, not the clock, decides.
    let settle = std::time::Duration::from_secs(60);
    let mut src = YamlDir::new(dir.path()).with_settle(settle);
    src.scan();
    fs::write(dir.path().join("server.yaml"), "").unwrap(); // truncated mid-write
    assert!(src.scan().events.is_empty(), "a fresh change waits");
    let path = dir.path().join("server.yaml");
    fs::write(&path, SERVER.replace("10.244.1.2", "10.244.1.7")).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - settle - std::time::Duration::from_secs(1)).unwrap();
    assert_eq!(keys(&src.scan().events), vec!["apply Pod demo/server-1"]);
}

#[test]
fn missing_directory_keeps_state() {
    let mut src = YamlDir::new("/nonexistent/mesh");
    let scan = src.scan();
    assert!(scan.events.is_empty());
    assert!(scan.errors[0].reason.contains("cannot read the mesh directory"));
}

#[test]
fn lists_and_endpoint_slices_parse() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  endpoints: [{addresses: [10.0.0.1]}]
  ports: [{name: http, port: 80}]
"#;
    let objs = parse_file(text).unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].key().kind, Kind::EndpointSlice);
}

const POLICY: &str = r#"
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: to-store, namespace: books}
spec:
  destination: {kind: ServiceAccount, name: bookstore, namespace: books}
  sources: [{kind: ServiceAccount, name: bookbuyer}]
  rules: [{kind: HTTPRouteGroup, name: routes, matches: [buy]}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: routes, namespace: books}
spec:
  matches:
  - {name: buy, pathRegex: /buy, methods: [GET], headers: [{host: "store.*"}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: db, namespace: books}
spec: {matches: {ports: [3306]}}
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: store-split, namespace: books}
spec: {service: bookstore, backends: [{service: bookstore-v1, weight: 90}, {service: bookstore-v2, weight: 10}]}
---
apiVersion: config.openservicemesh.io/v1alpha2
kind: MeshConfig
metadata: {name: osm-mesh-config, namespace: osm-system}
spec:
  traffic: {enablePermissiveTrafficPolicyMode: false}
  sidecar: {logLevel: debug}
"#;

#[test]
fn policy_kinds_parse_with_defaults_and_report_unused_mesh_config_fields() {
    let objects = parse_file(POLICY).unwrap();
    let kinds: Vec<String> = objects.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        kinds,
        vec![
            "TrafficTarget books/to-store",
            "HTTPRouteGroup books/routes",
            "TCPRoute books/db",
            "TrafficSplit books/store-split",
            "MeshConfig osm-system/osm-mesh-config"
        ]
    );
    let MeshObject::TrafficTarget(tt) = &objects[0] else { panic!() };
    // Never read as the target's namespace: the policy engine refuses it with E2030 (fails closed).
    assert_eq!(tt.sources[0].namespace, "", "a source without a namespace keeps none");
    let MeshObject::HttpRouteGroup(g) = &objects[1] else { panic!() };
    assert_eq!(g.matches[0].headers["host"], "store.*");
    let MeshObject::MeshConfig(mc) = &objects[4] else { panic!() };
    assert_eq!(mc.permissive, Some(false));
    assert!(mc.not_acted_on.is_empty(), "sidecar.logLevel is the injector's: {:?}", mc.not_acted_on);
}

#[test]
fn mesh_kinds_at_other_versions_or_with_typos_are_errors_not_skipped() {
    let old = "apiVersion: access.smi-spec.io/v1alpha2\nkind: TrafficTarget\nmetadata: {name: t}\nspec: {}\n";
    let e = parse_file(old).unwrap_err();
    assert!(e.contains("TrafficTarget \"t\" of apiVersion access.smi-spec.io/v1alpha2 is not supported"), "{e}");
    assert!(e.contains("access.smi-spec.io/v1alpha3"), "{e}");
    let typo = "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\nmetadata: {name: m}\n\
                spec: {traffic: {enablePermissiveTraficPolicyMode: false}}\n";
    let e = parse_file(typo).unwrap_err();
    assert!(e.contains("MeshConfig \"m\"") && e.contains("enablePermissiveTraficPolicyMode"), "{e}");
    let typo = "apiVersion: v1\nkind: Servcie\nmetadata: {name: web}\n";
    assert!(parse_file(typo).unwrap_err().contains("Servcie \"web\" of apiVersion v1 is not read by the mesh"));
    assert!(parse_file("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n").unwrap().is_empty());
    // Kinds of other API groups are none of the mesh's business.
    assert!(parse_file("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").unwrap().is_empty());
}

#[test]
fn only_regular_files_are_read_and_a_fifo_or_device_never_hangs_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("server.yaml"), SERVER).unwrap();
    let fifo = dir.path().join("x.yaml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
    // A ConfigMap volume: the visible file is a link into a hidden directory.
    fs::create_dir(dir.path().join("..data")).unwrap();
    let client = SERVER.replace("server", "client").replace("10.96.0.10", "10.96.0.20").replace("1.2}", "1.20}");
    fs::write(dir.path().join("..data/client.yaml"), client).unwrap();
    std::os::unix::fs::symlink("..data/client.yaml", dir.path().join("client.yaml")).unwrap();
    let mut y = YamlDir::new(dir.path());
    let scan = y.scan();
    let mut bad: Vec<String> =
        scan.errors.iter().map(|e| e.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    bad.sort();
    assert_eq!(bad, vec!["x.yaml", "zero.yaml"], "{:?}", scan.errors);
    assert!(scan.errors.iter().all(|e| e.reason.contains("not a regular file")), "{:?}", scan.errors);
    let SourceEvent::Reset(messages::Reset { objects, .. }) = &scan.events[0] else { panic!() };
    let names: BTreeSet<String> = objects.iter().map(|o| o.key().name).collect();
    assert!(names.contains("client") && names.contains("server"), "{names:?}");
}

#[test]
fn an_oversized_file_is_refused_and_keeps_its_last_good_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    fs::write(&path, SERVER).unwrap();
    let mut y = YamlDir::new(dir.path());
    y.scan();
    // Sparse: the size is what counts, nothing is read.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    drop(f);
    let scan = y.scan();
    assert!(scan.events.is_empty(), "nothing is deleted: {:?}", scan.events);
    assert!(scan.errors[0].reason.contains("the limit is 33554432"), "{:?}", scan.errors);
}

#[test]
fn a_dump_of_thousands_of_documents_parses() {
    let doc = |i: usize| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: demo, labels: {{app: a, i: \"{i}\"}}}}\n\
             spec: {{serviceAccountName: sa, containers: [{{name: c, image: i, ports: [{{containerPort: 80}}]}}]}}\n\
             status: {{podIP: 10.1.{}.{}}}\n",
            i / 250,
            i % 250 + 1
        )
    };
    let text: Vec<String> = (0..3000).map(doc).collect();
    assert_eq!(parse_file(&text.join("---\n")).unwrap().len(), 3000);
}

#[test]
fn a_file_open_for_writing_is_not_read_until_closed_however_long_the_writer_pauses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    fs::write(&path, SERVER).unwrap();
    let mut y = YamlDir::new(dir.path());
    y.scan();
    // The writer truncated the file and wrote half of it, then paused (its mtime is old news by now).
    let half = &SERVER[..SERVER.find("kind: Service").unwrap()];
    fs::write(&path, half).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - std::time::Duration::from_secs(2)).unwrap();
    y.mark_writing(&path);
    let scan = y.scan();
    assert_eq!(scan.deferred, 1);
    assert!(scan.events.is_empty(), "a half-written file must not delete objects: {:?}", scan.events);
    // Closed: read at once.
    fs::write(&path, SERVER.replace("10.96.0.10", "10.96.0.99")).unwrap();
    y.mark_complete(&path);
    let scan = y.scan();
    assert_eq!(scan.deferred, 0);
    assert_eq!(scan.events.len(), 1, "{:?}", scan.events);
    // A writer that never closes is read once it has left the file alone for the patience period.
    fs::write(&path, SERVER).unwrap();
    y.mark_writing(&path);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - YamlDir::WRITER_PATIENCE).unwrap();
    assert_eq!(y.scan().events.len(), 1);
}

#[test]
fn a_newcomer_claiming_a_cluster_ip_pod_ip_or_proxy_uuid_in_force_is_refused_until_it_is_free() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("server.yaml"), SERVER).unwrap();
    let mut y = YamlDir::new(dir.path());
    y.scan();
    let thief = "apiVersion: v1\nkind: Service\nmetadata: {name: thief, namespace: demo}\n\
                 spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {name: twin, namespace: other, labels: {osm-proxy-uuid: u-1}}\n\
                 spec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.99}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {name: squatter, namespace: demo}\n\
                 spec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.2}\n";
    let holder = "apiVersion: v1\nkind: Pod\nmetadata: {name: first, namespace: demo, labels: {osm-proxy-uuid: u-1}}\n\
                  spec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.50}\n";
    fs::write(dir.path().join("a-holder.yaml"), holder).unwrap();
    y.scan();
    fs::write(dir.path().join("thief.yaml"), thief).unwrap();
    let scan = y.scan();
    assert!(scan.events.is_empty(), "nothing in force changes: {:?}", scan.events);
    let mut reasons: Vec<&str> = scan.errors.iter().map(|e| e.reason.as_str()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("Pod demo/squatter claims pod IP 10.244.1.2, which Pod demo/server-1 (in "));
    assert!(reasons[1].starts_with("Pod other/twin claims proxy UUID u-1, which Pod demo/first (in "));
    assert!(reasons[2].starts_with("Service demo/thief claims ClusterIP 10.96.0.10, which Service demo/server (in "));
    assert!(reasons[2].contains("server.yaml) holds; this definition is ignored"), "{}", reasons[2]);
    assert!(scan.errors.iter().all(|e| e.path.ends_with("thief.yaml")));
    // The holder goes: the waiting Service comes into force.
    fs::write(dir.path().join("server.yaml"), SERVER.split("---").next().unwrap()).unwrap();
    let scan = y.scan();
    let applied: Vec<String> = scan
        .events
        .iter()
        .filter_map(|e| match e {
            SourceEvent::Apply(o) => Some(o.key().to_string()),
            _ => None,
        })
        .collect();
    assert!(applied.contains(&"Service demo/thief".to_owned()), "{:?}", scan.events);
    assert!(applied.contains(&"Pod demo/squatter".to_owned()), "{:?}", scan.events);
    assert_eq!(scan.errors.len(), 1, "only the UUID twin still waits: {:?}", scan.errors);
}

/// Permission bits do not stop root, so as root this test runs itself again as `nobody`.
#[test]
fn an_unreadable_subdirectory_is_reported_and_its_files_keep_their_objects() {
    const INNER: &str = "YAML_DIR_UNREADABLE_INNER";
    let is_root = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    if is_root && std::env::var_os(INNER).is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(exe)
            .args([
                "--exact",
                "yaml_dir::tests::an_unreadable_subdirectory_is_reported_and_its_files_keep_their_objects",
            ])
            .env(INNER, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("1 passed"), "{text}{}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("team-a");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("server.yaml"), SERVER).unwrap();
    let mut y = YamlDir::new(dir.path());
    let SourceEvent::Reset(messages::Reset { objects, .. }) = &y.scan().events[0] else { panic!() };
    assert!(!objects.is_empty());
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o000)).unwrap();
    let scan = y.scan();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(scan.events.is_empty(), "nothing is deleted: {:?}", scan.events);
    assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
    assert_eq!(scan.errors[0].path, sub);
    assert!(scan.errors[0].reason.contains("cannot read this directory"), "{:?}", scan.errors);
}
