//! The catalog's unit tests.

use super::*;

fn pod(ns: &str, name: &str, sa: &str, ip: &str, app: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: BTreeMap::from([("app".into(), app.into())]),
        service_account: sa.into(),
        ip: Some(ip.parse().unwrap()),
        proxy_uuid: ProxyUuid::derived(ns, name),
        container_ports: vec![ContainerPort { name: Some("web".into()), port: 8080 }],
        prometheus_scrape: false,
    }
}

fn service(ns: &str, name: &str, ip: &str, app: &str, target: TargetPort) -> Service {
    Service {
        key: ServiceKey::new(ns, name),
        cluster_ip: Some(ip.parse().unwrap()),
        selector: Some(BTreeMap::from([("app".into(), app.into())])),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: target,
            protocol: AppProtocol::Http,
        }],
    }
}

fn mesh() -> MeshCatalog {
    let mut c = MeshCatalog::new("cluster.local");
    let d = c.apply(SourceEvent::reset_all(vec![
        MeshObject::Pod(pod("demo", "client", "client", "10.244.1.1", "client")),
        MeshObject::Pod(pod("demo", "server", "server", "10.244.1.2", "server")),
        MeshObject::Service(service("demo", "server", "10.96.0.10", "server", TargetPort::Name("web".into()))),
    ]));
    assert_eq!(d, Dirty::All);
    c
}

#[test]
fn selector_service_gets_endpoints_from_pods() {
    let c = mesh();
    let view = c.proxy_view(&ProxyUuid::derived("demo", "client")).unwrap();
    let svc = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
    assert_eq!(svc.ports[0].endpoints, vec!["10.244.1.2:8080".parse().unwrap()]);
    assert_eq!(svc.ports[0].target_port, 8080);
    assert_eq!(svc.ports[0].cluster_name(&svc.key), "demo/server|8080");
    assert_eq!(svc.identities, BTreeSet::from([ServiceIdentity::new("server", "demo")]));
    assert!(view.local.is_empty());

    let server = c.proxy_view(&ProxyUuid::derived("demo", "server")).unwrap();
    assert_eq!(server.local.len(), 1);
    assert_eq!(server.local[0].ports[0].target_port, 8080);
}

#[test]
fn explicit_endpoints_win_over_selector() {
    let mut c = mesh();
    c.apply(SourceEvent::Apply(MeshObject::Endpoints(Endpoints {
        key: ObjectKey::new(Kind::Endpoints, "demo", "server"),
        service: ServiceKey::new("demo", "server"),
        subsets: vec![EndpointSubset {
            addresses: vec!["10.244.1.2".parse().unwrap(), "10.244.1.3".parse().unwrap()],
            ports: vec![EndpointPort { name: Some("http".into()), port: 9090 }],
        }],
    })));
    let view = c.proxy_view(&ProxyUuid::derived("demo", "client")).unwrap();
    let svc = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
    assert_eq!(svc.ports[0].endpoints.len(), 2);
    assert_eq!(svc.ports[0].endpoints[0].port(), 9090);
    let server = c.proxy_view(&ProxyUuid::derived("demo", "server")).unwrap();
    assert_eq!(server.local[0].ports[0].target_port, 9090);
}

#[test]
fn reset_removes_missing_objects_and_unchanged_apply_is_clean() {
    let mut c = mesh();
    let p = pod("demo", "client", "client", "10.244.1.1", "client");
    assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Pod(p.clone()))), Dirty::Nothing);
    assert_eq!(c.apply(SourceEvent::reset_all(vec![MeshObject::Pod(p)])), Dirty::All);
    assert_eq!(c.counts(), (0, 0, 1));
    assert!(c.proxy_view(&ProxyUuid::derived("demo", "server")).is_none());
}

#[test]
fn indexes_follow_pod_updates_and_deletes() {
    let mut c = mesh();
    let client = ProxyUuid::derived("demo", "client");
    // Relabel and move the server: it leaves the selector and its old address is forgotten.
    let mut moved = pod("demo", "server", "server", "10.244.9.9", "other");
    c.apply(SourceEvent::Apply(MeshObject::Pod(moved.clone())));
    let view = c.proxy_view(&client).unwrap();
    assert!(view.upstream[0].ports[0].endpoints.is_empty());
    assert!(view.upstream[0].identities.is_empty());
    moved.labels.insert("app".into(), "server".into());
    c.apply(SourceEvent::Apply(MeshObject::Pod(moved)));
    let view = c.proxy_view(&client).unwrap();
    assert_eq!(view.upstream[0].ports[0].endpoints, vec!["10.244.9.9:8080".parse().unwrap()]);
    c.apply(SourceEvent::Delete(ObjectKey::new(Kind::Pod, "demo", "server")));
    assert!(c.proxy_view(&ProxyUuid::derived("demo", "server")).is_none());
    assert!(c.proxy_view(&client).unwrap().upstream[0].ports[0].endpoints.is_empty());
}

#[test]
fn verify_checks_uuid_and_identity() {
    let c = mesh();
    let uuid = ProxyUuid::derived("demo", "client");
    let ok = ProxyId { uuid: uuid.clone(), identity: ServiceIdentity::new("client", "demo") };
    assert_eq!(c.verify(&ok).unwrap().name, "client");
    let wrong_sa = ProxyId { uuid, identity: ServiceIdentity::new("server", "demo") };
    assert!(matches!(c.verify(&wrong_sa), Err(VerifyError::IdentityMismatch { .. })));
    let unknown = ProxyId { uuid: ProxyUuid::parse("nope").unwrap(), identity: ServiceIdentity::new("a", "b") };
    assert!(matches!(c.verify(&unknown), Err(VerifyError::UnknownProxy(_))));
}

fn smi(permissive: bool) -> MeshCatalog {
    let mut c = mesh();
    c.apply(SourceEvent::Apply(MeshObject::Pod(pod("demo", "thief", "thief", "10.244.1.3", "thief"))));
    c.apply(SourceEvent::Apply(MeshObject::MeshConfig(MeshConfig {
        namespace: "osm-system".into(),
        name: "osm-mesh-config".into(),
        enable_egress: None,
        permissive: Some(permissive),
        not_acted_on: vec![],
        service_cert_validity: None,
        cert_key_bits: None,
        tracing: None,
        enable_debug_server: None,
        osm_log_level: None,
        ingress_gateway: None,
        feature_flags: vec![],
    })));
    c
}

fn allow(source: &str) -> Vec<SourceEvent> {
    vec![
        SourceEvent::Apply(MeshObject::HttpRouteGroup(HttpRouteGroup {
            namespace: "demo".into(),
            name: "routes".into(),
            matches: vec![HttpMatch {
                name: "all".into(),
                path_regex: None,
                methods: vec![],
                headers: Default::default(),
            }],
        })),
        SourceEvent::Apply(MeshObject::TrafficTarget(TrafficTarget {
            namespace: "demo".into(),
            name: "to-server".into(),
            destination: Subject { kind: "ServiceAccount".into(), name: "server".into(), namespace: "demo".into() },
            sources: vec![Subject { kind: "ServiceAccount".into(), name: source.into(), namespace: "demo".into() }],
            rules: vec![TrafficTargetRule { kind: "HTTPRouteGroup".into(), name: "routes".into(), matches: vec![] }],
        })),
    ]
}

#[test]
fn smi_mode_shows_each_identity_only_what_it_may_call() {
    let mut c = smi(false);
    let client = ProxyUuid::derived("demo", "client");
    let thief = ProxyUuid::derived("demo", "thief");
    let server = ProxyUuid::derived("demo", "server");
    assert!(c.proxy_view(&client).unwrap().upstream.is_empty(), "no TrafficTarget: nothing to call");
    assert_eq!(c.proxy_view(&server).unwrap().inbound_policy, Some(Arc::default()), "and nothing accepted");
    let mut dirty = Dirty::Nothing;
    for e in allow("client") {
        dirty = dirty.merge(c.apply(e));
    }
    // Only the source's and the destination's proxies are rebuilt.
    assert_eq!(dirty, Dirty::Proxies(BTreeSet::from([client.clone(), server.clone()])));
    let views: Vec<_> = c.proxy_views([client.clone(), thief.clone()]).collect();
    let up = &views[0].1.as_ref().unwrap().upstream;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].ports[0].endpoints, vec!["10.244.1.2:8080".parse().unwrap()]);
    assert!(views[1].1.as_ref().unwrap().upstream.is_empty());
    let inbound = c.proxy_view(&server).unwrap().inbound_policy.unwrap();
    assert_eq!(inbound.http.values().next().unwrap(), &BTreeSet::from([ServiceIdentity::new("client", "demo")]));
    // Removing the target revokes it, again touching only those two.
    let dirty = c.apply(SourceEvent::Delete(ObjectKey::new(Kind::TrafficTarget, "demo", "to-server")));
    assert_eq!(dirty, Dirty::Proxies(BTreeSet::from([client.clone(), server])));
    assert!(c.proxy_view(&client).unwrap().upstream.is_empty());
    // Deleting the MeshConfig does not fall back to the (permissive) command line: SMI mode stays in
    // force, reported with its code, and nobody's configuration changes.
    let key = ObjectKey::new(Kind::MeshConfig, "osm-system", "osm-mesh-config");
    let dirty = c.apply(SourceEvent::Delete(key.clone()));
    assert_eq!(dirty, Dirty::Nothing);
    assert!(!c.settings().permissive);
    assert!(c.mesh_config_deleted());
    assert!(c.proxy_view(&client).unwrap().upstream.is_empty());
    let deleted: Vec<_> = c.policy_errors().iter().filter(|e| e.code == policy::codes::MESH_CONFIG_DELETED).collect();
    assert_eq!(deleted.len(), 1, "{:?}", c.policy_errors());
    assert_eq!(deleted[0].object, key);
    // A relist that no longer finds it is the same deletion.
    let mut relisted = smi(false);
    relisted.apply(SourceEvent::Reset(crate::events::Reset {
        source: crate::events::DEFAULT_SOURCE.into(),
        kinds: [Kind::MeshConfig].into(),
        objects: vec![],
    }));
    assert!(!relisted.settings().permissive && relisted.mesh_config_deleted());
    // Switching to permissive mode (a MeshConfig that says so) reaches everyone.
    let mut permissive = smi(true);
    let mc = permissive.mesh_config().unwrap().clone();
    let dirty = c.apply(SourceEvent::Apply(MeshObject::MeshConfig(mc)));
    assert_eq!(dirty, Dirty::All);
    assert!(!c.mesh_config_deleted());
    assert!(c.policy_errors().iter().all(|e| e.code != policy::codes::MESH_CONFIG_DELETED));
    assert_eq!(c.proxy_view(&client).unwrap().upstream.len(), 1);
    assert_eq!(c.proxy_view(&client).unwrap().inbound_policy, None);
    permissive.apply(SourceEvent::Delete(key));
    assert!(permissive.settings().permissive, "the last MeshConfig in force is kept, whatever it says");
}

#[test]
fn in_smi_mode_a_service_or_pod_change_reaches_only_those_who_see_it() {
    let mut c = smi(false);
    for e in allow("client") {
        c.apply(e);
    }
    let client = ProxyUuid::derived("demo", "client");
    let server = ProxyUuid::derived("demo", "server");
    let only = |u: &[&ProxyUuid]| Dirty::Proxies(u.iter().map(|u| (*u).clone()).collect());
    // Endpoints of the server Service: its callers (the client) and its pods; not the thief.
    let dirty = c.apply(SourceEvent::Apply(MeshObject::Endpoints(Endpoints {
        key: ObjectKey::new(Kind::Endpoints, "demo", "server"),
        service: ServiceKey::new("demo", "server"),
        subsets: vec![EndpointSubset {
            addresses: vec!["10.244.1.2".parse().unwrap()],
            ports: vec![EndpointPort { name: Some("http".into()), port: 8080 }],
        }],
    })));
    assert_eq!(dirty, only(&[&client, &server]));
    // The server pod moves: itself and its callers.
    let mut moved = pod("demo", "server", "server", "10.244.1.7", "server");
    moved.labels.insert("v".into(), "2".into());
    assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Pod(moved))), only(&[&client, &server]));
    // The thief's pod changes: only its own proxy (nobody calls it, it backs nothing).
    let thief = pod("demo", "thief", "thief", "10.244.1.33", "thief");
    assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Pod(thief))), only(&[&ProxyUuid::derived("demo", "thief")]));
    // A Service nobody may call and nobody backs reaches nobody.
    let lonely = service("demo", "lonely", "10.96.0.99", "nobody", TargetPort::Number(80));
    assert_eq!(c.apply(SourceEvent::Apply(MeshObject::Service(lonely))), Dirty::Nothing);
    // In permissive mode everyone sees every Service.
    let mut p = smi(true);
    let svc = service("demo", "other", "10.96.0.98", "server", TargetPort::Number(80));
    assert_eq!(p.apply(SourceEvent::Apply(MeshObject::Service(svc))), Dirty::All);
}

#[test]
fn a_relist_replaces_only_its_own_source_and_kinds_and_readiness_waits_for_every_listing() {
    use crate::events::Reset;
    let reset = |source: &str, kinds: &[Kind], objects: Vec<MeshObject>| {
        SourceEvent::Reset(Reset { source: source.into(), kinds: kinds.iter().copied().collect(), objects })
    };
    let mut c = MeshCatalog::new("cluster.local");
    c.expect("k8s", [Kind::Service, Kind::Pod]);
    // The mesh directory joins a machine outside Kubernetes: its pod stays whatever the cluster relists.
    c.apply(SourceEvent::reset_all(vec![MeshObject::Pod(pod("vm", "db", "db", "10.0.9.1", "db"))]));
    assert!(!c.is_synced(), "the cluster's kinds have not been listed yet");
    c.apply_from(
        "k8s",
        reset(
            "k8s",
            &[Kind::Service],
            vec![MeshObject::Service(service("demo", "server", "10.96.0.10", "server", TargetPort::Number(8080)))],
        ),
    );
    assert!(!c.is_synced());
    let server = pod("demo", "server", "server", "10.244.1.2", "server");
    let client = pod("demo", "client", "client", "10.244.1.1", "client");
    c.apply_from("k8s", reset("k8s", &[Kind::Pod], vec![MeshObject::Pod(server.clone()), MeshObject::Pod(client)]));
    assert!(c.is_synced());
    assert_eq!(c.counts(), (1, 0, 3));
    // A Pod relist without the client removes the client only: not the Service, not the directory's pod.
    c.apply_from("k8s", reset("k8s", &[Kind::Pod], vec![MeshObject::Pod(server)]));
    assert_eq!(c.counts(), (1, 0, 2));
    assert!(c.pod("vm", "db").is_some());
    assert!(c.pod("demo", "client").is_none());
}

#[test]
fn policy_edits_in_permissive_mode_rebuild_nobody() {
    let mut c = smi(true);
    for e in allow("client") {
        assert_eq!(c.apply(e), Dirty::Nothing);
    }
    assert!(c.policy_errors().is_empty());
}

#[test]
fn a_split_sends_apex_traffic_to_backends_which_accept_the_apex_hosts() {
    let mut c = mesh();
    c.apply(SourceEvent::Apply(MeshObject::Pod(pod("demo", "server-v2", "server", "10.244.1.4", "server-v2"))));
    c.apply(SourceEvent::Apply(MeshObject::Service(service(
        "demo",
        "server-v2",
        "10.96.0.12",
        "server-v2",
        TargetPort::Number(9090),
    ))));
    let dirty = c.apply(SourceEvent::Apply(MeshObject::TrafficSplit(TrafficSplit {
        namespace: "demo".into(),
        name: "server-split".into(),
        service: "server".into(),
        backends: vec![("server".into(), 90), ("server-v2".into(), 10)],
    })));
    assert_eq!(dirty, Dirty::All, "in permissive mode every proxy may call the apex");
    let view = c.proxy_view(&ProxyUuid::derived("demo", "client")).unwrap();
    let apex = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
    assert_eq!(apex.ports[0].split, vec![("demo/server|8080".to_owned(), 90), ("demo/server-v2|9090".to_owned(), 10)]);
    let v2 = c.proxy_view(&ProxyUuid::derived("demo", "server-v2")).unwrap();
    assert_eq!(v2.local[0].apexes, vec![(ServiceKey::new("demo", "server"), Some("10.96.0.10".parse().unwrap()))]);
}

fn upstream_setting(name: &str, host: &str, max_requests: u32) -> MeshObject {
    MeshObject::UpstreamTrafficSetting(UpstreamTrafficSetting {
        namespace: "demo".into(),
        name: name.into(),
        host: host.into(),
        connection: ConnectionSettings { max_requests: Some(max_requests), ..Default::default() },
        tcp_rate_limit: None,
        http_rate_limit: None,
        route_rate_limits: vec![],
    })
}

#[test]
fn an_upstream_setting_reaches_the_services_callers_and_backers_only() {
    let mut c = smi(false);
    for e in allow("client") {
        c.apply(e);
    }
    let (client, server, thief) = (
        ProxyUuid::derived("demo", "client"),
        ProxyUuid::derived("demo", "server"),
        ProxyUuid::derived("demo", "thief"),
    );
    let d = c.apply(SourceEvent::Apply(upstream_setting("limits", "server.demo.svc.cluster.local", 10)));
    assert_eq!(d, Dirty::Proxies(BTreeSet::from([client.clone(), server.clone()])), "not the thief: it cannot call");
    assert!(c.policy_errors().is_empty(), "{:?}", c.policy_errors());
    let view = c.proxy_view(&client).unwrap();
    let svc = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
    assert_eq!(svc.traffic.as_ref().map(|t| t.connection.max_requests), Some(Some(10)));
    let own = c.proxy_view(&server).unwrap();
    assert!(own.local[0].traffic.is_some(), "the server's sidecar enforces the limits");
    assert!(c.proxy_view(&thief).unwrap().upstream.iter().all(|s| s.traffic.is_none()));

    // A second setting for the host is reported and changes nothing; so is a host that is no Service.
    let d = c.apply(SourceEvent::Apply(upstream_setting("second", "server.demo.svc.cluster.local", 99)));
    assert_eq!(d, Dirty::Nothing);
    let d = c.apply(SourceEvent::Apply(upstream_setting("elsewhere", "server.other.svc.cluster.local", 1)));
    assert_eq!(d, Dirty::Nothing);
    let codes: Vec<(&str, &str)> = c.policy_errors().iter().map(|e| (e.code, e.object.name.as_str())).collect();
    assert_eq!(codes, [("E2031", "elsewhere"), ("E2032", "second")]);
    let view = c.proxy_view(&client).unwrap();
    let svc = view.upstream.iter().find(|s| s.key.name == "server").unwrap();
    assert_eq!(svc.traffic.as_ref().map(|t| t.connection.max_requests), Some(Some(10)), "the first stays in force");
}

#[test]
fn a_pods_policies_name_every_object_that_shapes_its_sidecar() {
    let mut c = smi(false);
    for e in allow("client") {
        c.apply(e);
    }
    c.apply(SourceEvent::Apply(upstream_setting("limits", "server.demo.svc.cluster.local", 10)));
    c.apply(SourceEvent::Apply(MeshObject::Retry(Retry {
        namespace: "demo".into(),
        name: "retry".into(),
        source: ServiceIdentity::new("client", "demo"),
        destinations: vec![ServiceKey::new("demo", "server")],
        policy: RetryPolicy {
            retry_on: "5xx".into(),
            num_retries: 3,
            per_try_timeout: std::time::Duration::from_secs(1),
            backoff_base_interval: std::time::Duration::from_millis(10),
        },
    })));
    let client = c.pod_policies("demo", "client").unwrap();
    assert_eq!(client.mode, "smi");
    let seen: Vec<(&str, &str, &str)> =
        client.applied.iter().map(|a| (a.direction.as_str(), a.kind.as_str(), a.object.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("outbound", "Retry", "demo/retry"),
            ("outbound", "TrafficTarget", "demo/to-server"),
            ("outbound", "UpstreamTrafficSetting", "demo/limits")
        ]
    );
    let retry = &client.applied[0];
    assert!(retry.problems.iter().any(|p| p.contains("enableRetryPolicy is off")), "{retry:?}");
    assert!(client.applied[2].effect.contains("max requests 10"), "{:?}", client.applied[2]);
    let server = c.pod_policies("demo", "server").unwrap();
    assert_eq!(server.backs, ["demo/server"]);
    assert!(server.applied.iter().any(|a| a.direction == "inbound" && a.effect.contains("admits demo/client")));
    assert!(c.pod_policies("demo", "nobody").is_none());
}
