//! The kube-rs watchers against the API-server simulator: what reaches the catalog, what leaves it, and
//! what a forced relist does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeSet;
use std::time::Duration;

use apisim::{ApiServer, Resource};
use k8s::watch::{self, Batch, SOURCE, WatchConfig};
use messages::{Kind, MeshCatalog, ObjectKey, SourceEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Applies the watchers' batches to a catalog, as the catalog actor does, and keeps them for inspection.
struct Feed {
    rx: mpsc::Receiver<Batch>,
    catalog: MeshCatalog,
    log: Vec<SourceEvent>,
}

impl Feed {
    fn new(rx: mpsc::Receiver<Batch>) -> Self {
        let mut catalog = MeshCatalog::new("cluster.local");
        catalog.expect(SOURCE, watch::kinds());
        Self { rx, catalog, log: Vec::new() }
    }

    /// Applies batches until `done` holds; fails after a generous bound instead of hanging.
    async fn until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            let batch = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; catalog holds {:?}", self.keys()))
                .expect("the watchers stopped");
            for event in batch {
                let _ = self.catalog.apply_from(SOURCE, event.clone());
                self.log.push(event);
            }
        }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.catalog.object_keys().iter().map(ObjectKey::to_string).collect()
    }

    fn has(&self, key: &str) -> bool {
        self.keys().contains(key)
    }
}

fn kinds_of(events: &[SourceEvent]) -> BTreeSet<Kind> {
    events
        .iter()
        .flat_map(|e| match e {
            SourceEvent::Apply(o) => vec![o.key().kind],
            SourceEvent::Delete(k) => vec![k.kind],
            SourceEvent::Reset(r) => r.kinds.iter().copied().collect(),
        })
        .collect()
}

fn res(group: &str, version: &str, plural: &str) -> Resource {
    Resource::new(group, version, plural)
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A namespace's worth of every kind the mesh reads.
fn populate(sim: &ApiServer, ns: &str) {
    let put = |r: Resource, v: Value| {
        sim.put(&r, v).unwrap_or_else(|e| panic!("writing to the simulator: {e}"));
    };
    put(
        res("", "v1", "serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": ns}}),
    );
    put(
        res("", "v1", "services"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    for (i, ip) in [(1, "10.244.0.11"), (2, "10.244.0.12")] {
        put(
            res("", "v1", "pods"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("web-{i}"), "namespace": ns, "labels": {"app": "web"},
                                "managedFields": [{"manager": "kubectl"}], "annotations": {"big": "x".repeat(1000)}},
                   "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]},
                   "status": {"podIP": ip}}),
        );
    }
    put(
        res("discovery.k8s.io", "v1", "endpointslices"),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-abcde", "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.0.11"]}, {"addresses": ["10.244.0.12"]}],
               "ports": [{"port": 8080}]}),
    );
    put(
        res("specs.smi-spec.io", "v1alpha4", "httproutegroups"),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
               "metadata": {"name": "routes", "namespace": ns},
               "spec": {"matches": [{"name": "all", "pathRegex": ".*", "methods": ["*"]}]}}),
    );
    put(
        res("specs.smi-spec.io", "v1alpha4", "tcproutes"),
        json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
               "metadata": {"name": "tcp", "namespace": ns}, "spec": {"matches": {"ports": [8080]}}}),
    );
    put(
        res("access.smi-spec.io", "v1alpha3", "traffictargets"),
        json!({"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
               "metadata": {"name": "web", "namespace": ns},
               "spec": {"destination": {"kind": "ServiceAccount", "name": "web", "namespace": ns},
                        "sources": [{"kind": "ServiceAccount", "name": "web", "namespace": ns}],
                        "rules": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["all"]}]}}),
    );
    put(
        res("split.smi-spec.io", "v1alpha2", "trafficsplits"),
        json!({"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
               "metadata": {"name": "web-split", "namespace": ns},
               "spec": {"service": "web", "backends": [{"service": "web", "weight": 100}]}}),
    );
}

fn expected(ns: &str) -> BTreeSet<String> {
    [
        format!("Namespace {ns}"),
        format!("ServiceAccount {ns}/web"),
        format!("Service {ns}/web"),
        format!("Pod {ns}/web-1"),
        format!("Pod {ns}/web-2"),
        format!("EndpointSlice {ns}/web-abcde"),
        format!("HTTPRouteGroup {ns}/routes"),
        format!("TCPRoute {ns}/tcp"),
        format!("TrafficTarget {ns}/web"),
        format!("TrafficSplit {ns}/web-split"),
    ]
    .into_iter()
    .collect()
}

async fn start() -> (ApiServer, Feed) {
    let sim = ApiServer::start().await.expect("simulator");
    let monitored = json!({"openservicemesh.io/monitored-by": "osm"});
    let namespaces = res("", "v1", "namespaces");
    sim.put(&namespaces, namespace("shop", monitored.clone())).unwrap();
    sim.put(&namespaces, namespace("other", json!({}))).unwrap();
    sim.put(
        &namespaces,
        namespace("quiet", json!({"openservicemesh.io/monitored-by": "osm", "openservicemesh.io/ignore": "true"})),
    )
    .unwrap();
    sim.put(&namespaces, namespace("elsewhere", json!({"openservicemesh.io/monitored-by": "another-mesh"}))).unwrap();
    sim.put(&namespaces, namespace("osm-system", json!({}))).unwrap();
    for ns in ["shop", "other", "quiet", "elsewhere"] {
        populate(&sim, ns);
    }
    sim.put(
        &res("config.openservicemesh.io", "v1alpha2", "meshconfigs"),
        json!({"apiVersion": "config.openservicemesh.io/v1alpha2", "kind": "MeshConfig",
               "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
               "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": false}}}),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let config = WatchConfig { mesh_name: "osm".to_owned(), osm_namespace: "osm-system".to_owned() };
    tokio::spawn(watch::run(sim.client().expect("client"), config, tx));
    let mut feed = Feed::new(rx);
    feed.until("the first sync", |f| f.catalog.is_synced()).await;
    (sim, feed)
}

#[tokio::test]
async fn a_monitored_namespace_reaches_the_catalog_and_leaves_it_with_its_label() {
    let (sim, mut feed) = start().await;
    let mut want = expected("shop");
    want.insert("MeshConfig osm-system/osm-mesh-config".to_owned());
    assert_eq!(feed.keys(), want, "only the monitored namespace (not ignored, not another mesh's) and the MeshConfig");
    assert!(!feed.catalog.settings().permissive, "the MeshConfig is in force");
    let pod = feed.catalog.pod("shop", "web-1").expect("pod");
    assert_eq!(pod.ip, Some("10.244.0.11".parse().unwrap()));

    // A live change in a monitored namespace arrives as it happens.
    let pods = res("", "v1", "pods");
    assert!(sim.remove(&pods, "shop", "web-2"));
    feed.until("the pod's deletion", |f| !f.has("Pod shop/web-2")).await;

    // Labelling another namespace brings its objects; unlabelling the first takes all of them away.
    let namespaces = res("", "v1", "namespaces");
    sim.put(&namespaces, namespace("other", json!({"openservicemesh.io/monitored-by": "osm"}))).unwrap();
    feed.until("the newly monitored namespace", |f| expected("other").is_subset(&f.keys())).await;
    sim.put(&namespaces, namespace("shop", json!({}))).unwrap();
    feed.until("the unmonitored namespace to leave", |f| !f.keys().iter().any(|k| k.contains("shop"))).await;
    let mut want = expected("other");
    want.insert("MeshConfig osm-system/osm-mesh-config".to_owned());
    assert_eq!(feed.keys(), want);
}

#[tokio::test]
async fn a_forced_relist_of_pods_loses_no_delete_and_leaves_the_other_kinds_alone() {
    let (sim, mut feed) = start().await;
    let before = feed.log.len();
    let resets_before =
        feed.log.iter().filter(|e| matches!(e, SourceEvent::Reset(r) if r.kinds.contains(&Kind::Pod))).count();
    // The watch of pods is cut with 410 Gone, and a pod is deleted before the watcher could resume: only
    // the relist can tell it is gone.
    sim.expire("", "pods");
    assert!(sim.remove(&res("", "v1", "pods"), "shop", "web-1"));
    feed.until("the pods' relist", |f| {
        f.log.iter().filter(|e| matches!(e, SourceEvent::Reset(r) if r.kinds.contains(&Kind::Pod))).count()
            > resets_before
    })
    .await;
    feed.until("the deleted pod to go", |f| !f.has("Pod shop/web-1")).await;
    assert!(feed.has("Pod shop/web-2"));
    let since = &feed.log[before..];
    assert_eq!(kinds_of(since), [Kind::Pod].into_iter().collect(), "only pods were relisted: {since:?}");
    let mut want = expected("shop");
    want.insert("MeshConfig osm-system/osm-mesh-config".to_owned());
    want.remove("Pod shop/web-1");
    assert_eq!(feed.keys(), want, "every other kind is as it was");
}

#[tokio::test]
async fn a_bad_object_is_rejected_and_its_last_good_version_stays() {
    let (sim, mut feed) = start().await;
    let services = res("", "v1", "services");
    let mut svc = sim.get(&services, "shop", "web").unwrap();
    svc["spec"]["ports"][0]["port"] = json!(70000);
    sim.put(&services, svc).unwrap();
    // A later change of the same kind (one watcher, in order) shows the bad one was passed over.
    let late = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late", "namespace": "shop"},
                      "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 81}]}});
    sim.put(&services, late).unwrap();
    feed.until("the later change", |f| f.has("Service shop/late")).await;
    assert!(feed.has("Service shop/web"), "the Service keeps its last good version");
}
