//! The builder's unit tests.

use super::*;
use messages::{MeshCatalog, MeshObject, ProxyUuid, SourceEvent};
use prost::Message;

fn view_for(pod: &str) -> ProxyView {
    view_with(pod, vec![])
}

fn view_with(pod: &str, extra: Vec<MeshObject>) -> ProxyView {
    let mut c = MeshCatalog::new("cluster.local");
    let mut objs: Vec<MeshObject> = objects();
    objs.extend(extra);
    c.apply(SourceEvent::reset_all(objs));
    assert!(c.policy_errors().is_empty(), "{:?}", c.policy_errors());
    c.proxy_view(&ProxyUuid::derived("demo", pod)).unwrap()
}

/// SMI mode; the client may GET /api/.* on web and reach echo's port 7000.
fn smi_objects() -> Vec<MeshObject> {
    use messages::*;
    let sa = |name: &str| Subject { kind: "ServiceAccount".into(), name: name.into(), namespace: "demo".into() };
    vec![
        MeshObject::MeshConfig(MeshConfig {
            namespace: "osm-system".into(),
            name: "osm-mesh-config".into(),
            enable_egress: Some(false),
            permissive: Some(false),
            not_acted_on: vec![],
            service_cert_validity: None,
            cert_key_bits: None,
            tracing: None,
            enable_debug_server: None,
            osm_log_level: None,
            ingress_gateway: None,
            feature_flags: vec![],
        }),
        MeshObject::HttpRouteGroup(HttpRouteGroup {
            namespace: "demo".into(),
            name: "api".into(),
            matches: vec![HttpMatch {
                name: "read".into(),
                path_regex: Some("/api/.*".into()),
                methods: vec!["GET".into()],
                headers: [("host".to_owned(), "web.*".to_owned())].into(),
            }],
        }),
        MeshObject::TcpRoute(TcpRoute { namespace: "demo".into(), name: "echo".into(), ports: vec![7000] }),
        MeshObject::TrafficTarget(TrafficTarget {
            namespace: "demo".into(),
            name: "client-to-web".into(),
            destination: sa("web"),
            sources: vec![sa("client")],
            rules: vec![
                TrafficTargetRule { kind: "HTTPRouteGroup".into(), name: "api".into(), matches: vec!["read".into()] },
                TrafficTargetRule { kind: "TCPRoute".into(), name: "echo".into(), matches: vec![] },
            ],
        }),
    ]
}

fn decode<M: prost::Message + Default>(snap: &ProxySnapshot, ty: ResourceType, name: &str) -> M {
    M::decode(snap.get(ty).resources()[name].body.value.as_slice()).unwrap()
}

/// Two Services (HTTP :80→8080, TCP :7000) backed by pod web-1, and a client pod.
fn objects() -> Vec<MeshObject> {
    use messages::*;
    use std::collections::BTreeMap;
    let web = |name: &str, ip: &str, port: ServicePort| {
        MeshObject::Service(Service {
            key: ServiceKey::new("demo", name),
            cluster_ip: Some(ip.parse().unwrap()),
            selector: Some(BTreeMap::from([("app".into(), "web".into())])),
            ports: vec![port],
        })
    };
    let pod = |name: &str, sa: &str, ip: &str, app: &str| {
        MeshObject::Pod(Pod {
            namespace: "demo".into(),
            name: name.into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
            service_account: sa.into(),
            ip: Some(ip.parse().unwrap()),
            proxy_uuid: ProxyUuid::derived("demo", name),
            container_ports: vec![],
            prometheus_scrape: false,
        })
    };
    vec![
        web(
            "web",
            "10.96.0.10",
            ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: TargetPort::Number(8080),
                protocol: AppProtocol::Http,
            },
        ),
        web(
            "echo",
            "10.96.0.11",
            ServicePort {
                name: Some("tcp-echo".into()),
                port: 7000,
                target_port: TargetPort::Number(7000),
                protocol: AppProtocol::Tcp,
            },
        ),
        pod("web-1", "web", "10.244.1.2", "web"),
        pod("client", "client", "10.244.1.1", "client"),
    ]
}

const CERTS: CertInput<'static> = CertInput { cert_pem: "CERT", key_pem: "KEY", trust_bundle_pem: "ROOT" };

/// Cached resources are found by their inputs themselves: a content-equal upstream list of a later
/// batch (another `Arc`) finds the same listener and routes; a list that differs does not.
#[test]
fn cached_resources_are_keyed_by_their_inputs_themselves() {
    let mut cache = BuildCache::new();
    let view = view_for("client");
    let shared = |s: &ProxySnapshot, ty: ResourceType, name: &str| s.get(ty).resources()[name].clone();
    let a = build_with(&view, CERTS, &mut cache).unwrap();
    cache.next_batch();
    let mut same = view.clone();
    same.upstream = Arc::new((*view.upstream).clone());
    let b = build_with(&same, CERTS, &mut cache).unwrap();
    let out = |s: &ProxySnapshot| shared(s, ResourceType::Listener, OUTBOUND_LISTENER);
    assert!(Arc::ptr_eq(&out(&a), &out(&b)));
    cache.next_batch();
    let mut list = (*view.upstream).clone();
    let svc = list.iter_mut().find(|s| s.cluster_ip.is_some()).unwrap();
    svc.cluster_ip = Some(IpAddr::from([10, 96, 99, 99]));
    let mut changed = view.clone();
    changed.upstream = Arc::new(list);
    let c = build_with(&changed, CERTS, &mut cache).unwrap();
    assert!(!Arc::ptr_eq(&out(&a), &out(&c)));
    assert_ne!(out(&a).body, out(&c).body);
}

/// The check is derived from the resources: remove anything a built snapshot names and it fails,
/// naming what is missing and what names it.
#[test]
fn the_consistency_check_finds_whatever_a_broken_build_lacks() {
    let mut view = view_with("client", smi_objects());
    view.settings.tracing =
        Some(TracingSettings { address: "jaeger".into(), port: 9411, endpoint: "/api/v2/spans".into() });
    let snap = build(&view, CERTS).unwrap();
    crate::consistency::check(&snap).unwrap();
    let mut named = BTreeSet::new();
    for ty in ResourceType::ALL {
        for r in snap.get(ty).resources().values() {
            named.extend(r.references(ty).clone().unwrap());
        }
    }
    let kinds: BTreeSet<ResourceType> = named.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Route, ResourceType::Secret].into(),
        "the view exercises every kind of reference: {named:?}"
    );
    assert!(named.contains(&(ResourceType::Cluster, TRACING_CLUSTER.to_owned())), "{named:?}");
    // The memo of pairs found complete never hides a broken set.
    let mut checked = crate::consistency::Checked::default();
    crate::consistency::check_with(&snap, &mut checked).unwrap();
    for (ty, name) in &named {
        let broken = snap.without(*ty, name);
        match crate::consistency::check_with(&broken, &mut checked) {
            Err(SnapshotError::Dangling { kind, name: missing, by }) => {
                assert_eq!((kind, &missing), (*ty, name));
                assert!(!by.is_empty());
            }
            other => panic!("removing {ty} {name:?} gave {other:?}"),
        }
    }
    // A routed cluster (route → cluster) and a tcp_proxy's (listener → cluster) are among them.
    assert!(named.iter().any(|(k, n)| *k == ResourceType::Cluster && n.starts_with("demo/web|")), "{named:?}");
    assert!(named.iter().any(|(k, n)| *k == ResourceType::Cluster && n.starts_with("demo/echo|")), "{named:?}");
}

fn names(s: &ProxySnapshot, ty: ResourceType) -> Vec<String> {
    s.get(ty).resources().keys().cloned().collect()
}

#[test]
fn client_gets_outbound_config_with_osm_names() {
    let snap = build(&view_for("client"), CERTS).unwrap();
    assert_eq!(names(&snap, ResourceType::Cluster), vec!["demo/echo|7000", "demo/web|8080", PASSTHROUGH_CLUSTER]);
    assert_eq!(names(&snap, ResourceType::Endpoint), vec!["demo/echo|7000", "demo/web|8080"]);
    assert_eq!(names(&snap, ResourceType::Listener), vec![OUTBOUND_LISTENER]);
    assert_eq!(names(&snap, ResourceType::Route), vec!["rds-outbound.80"]);
    assert_eq!(names(&snap, ResourceType::Secret), vec![ROOT_CERT_INBOUND, ROOT_CERT_OUTBOUND, SERVICE_CERT]);
    let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
        .unwrap();
    let chains: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(chains, vec!["outbound_demo/echo_7000_tcp", "outbound_http_80"]);
    let m = l.filter_chains[1].filter_chain_match.as_ref().unwrap();
    assert_eq!(m.prefix_ranges[0].address_prefix, "10.96.0.10");
    let c =
        Cluster::decode(snap.get(ResourceType::Cluster).resources()["demo/web|8080"].body.value.as_slice()).unwrap();
    let Some(transport_socket::ConfigType::TypedConfig(any)) = c.transport_socket.unwrap().config_type else {
        panic!()
    };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(tls.sni, "web.demo.svc.cluster.local");
    // The cluster itself says which identities may serve it; the trust bundle is one secret for all.
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(vc)) =
        tls.common_tls_context.unwrap().validation_context_type
    else {
        panic!()
    };
    assert_eq!(vc.validation_context_sds_secret_config.unwrap().name, ROOT_CERT_OUTBOUND);
    let vc = vc.default_validation_context.unwrap();
    let san = vc.match_typed_subject_alt_names[0].matcher.clone().unwrap().match_pattern.unwrap();
    assert_eq!(san, string_matcher::MatchPattern::Exact("web.demo.cluster.local".into()));
}

#[test]
fn egress_passthrough_follows_the_setting() {
    let mut view = view_for("client");
    let snap = build(&view, CERTS).unwrap();
    let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
        .unwrap();
    assert_eq!(l.default_filter_chain.unwrap().name, EGRESS_CHAIN);
    view.settings.enable_egress = false;
    let snap = build(&view, CERTS).unwrap();
    assert!(!snap.get(ResourceType::Cluster).resources().contains_key(PASSTHROUGH_CLUSTER));
    let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
        .unwrap();
    assert!(l.default_filter_chain.is_none());
    Arc::make_mut(&mut view.upstream).clear();
    assert!(build(&view, CERTS).unwrap().get(ResourceType::Listener).resources().is_empty());
}

#[test]
fn tracing_adds_zipkin_to_every_connection_manager_and_its_collector_cluster() {
    let hcm_tracing = |snap: &ProxySnapshot, listener: &str| {
        let l = Listener::decode(snap.get(ResourceType::Listener).resources()[listener].body.value.as_slice()).unwrap();
        l.filter_chains
            .iter()
            .flat_map(|c| &c.filters)
            .filter(|f| f.name == "envoy.filters.network.http_connection_manager")
            .map(|f| {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!() };
                HttpConnectionManager::decode(any.value.as_slice()).unwrap().tracing
            })
            .collect::<Vec<_>>()
    };
    let mut view = view_for("web-1");
    let off = build(&view, CERTS).unwrap();
    assert!(hcm_tracing(&off, INBOUND_LISTENER).iter().all(Option::is_none));
    assert!(!off.get(ResourceType::Cluster).resources().contains_key(TRACING_CLUSTER));
    view.settings.tracing = Some(TracingSettings {
        address: "jaeger.osm-system.svc.cluster.local".into(),
        port: 9411,
        endpoint: "/api/v2/spans".into(),
    });
    let on = build(&view, CERTS).unwrap();
    for listener in [INBOUND_LISTENER, OUTBOUND_LISTENER] {
        let tracing = hcm_tracing(&on, listener);
        assert!(!tracing.is_empty() && tracing.iter().all(Option::is_some), "{listener}");
    }
    let c = Cluster::decode(on.get(ResourceType::Cluster).resources()[TRACING_CLUSTER].body.value.as_slice()).unwrap();
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
    );
}

fn port(name: &str, port: u16, target: u16, protocol: AppProtocol, eps: &[&str]) -> ResolvedPort {
    ResolvedPort {
        name: Some(name.into()),
        port,
        target_port: target,
        protocol,
        endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        split: vec![],
    }
}

#[test]
fn two_service_ports_on_one_target_port_share_one_inbound_chain() {
    let mut view = view_for("web-1");
    view.local.retain(|s| s.key.name == "web");
    view.local[0].ports =
        vec![port("http", 80, 8080, AppProtocol::Http, &[]), port("http-alt", 8080, 8080, AppProtocol::Http, &[])];
    let snap = build(&view, CERTS).unwrap();
    let l =
        Listener::decode(snap.get(ResourceType::Listener).resources()[INBOUND_LISTENER].body.value.as_slice()).unwrap();
    assert_eq!(l.filter_chains.len(), 1);
    let rc =
        RouteConfiguration::decode(snap.get(ResourceType::Route).resources()["rds-inbound.8080"].body.value.as_slice())
            .unwrap();
    assert_eq!(rc.virtual_hosts.len(), 1);
    let domains = &rc.virtual_hosts[0].domains;
    assert!(domains.contains(&"web:80".to_owned()) && domains.contains(&"web:8080".to_owned()), "{domains:?}");
}

#[test]
fn overlapping_headless_services_never_claim_an_address_twice() {
    let mut view = view_for("client");
    let headless = |name: &str| ServiceView {
        key: ServiceKey::new("demo", name),
        cluster_ip: None,
        ports: vec![port("tcp-pg", 5432, 5432, AppProtocol::Tcp, &["10.244.1.2:5432", "10.244.1.3:5432"])],
        identities: Default::default(),
        apexes: vec![],
        traffic: None,
        ingress: vec![],
    };
    view.upstream = Arc::new(vec![headless("pg"), headless("pg-read")]);
    let snap = build(&view, CERTS).unwrap();
    let l = Listener::decode(snap.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER].body.value.as_slice())
        .unwrap();
    let mut seen = BTreeSet::new();
    for c in &l.filter_chains {
        let m = c.filter_chain_match.as_ref().unwrap();
        for p in &m.prefix_ranges {
            assert!(
                seen.insert((m.destination_port.unwrap().value, p.address_prefix.clone())),
                "{} claimed twice",
                p.address_prefix
            );
        }
    }
    assert_eq!(seen.len(), 2);
}

#[test]
fn ipv6_cluster_ips_are_bracketed_in_domains() {
    let mut view = view_for("client");
    Arc::make_mut(&mut view.upstream).retain(|s| s.key.name == "web");
    Arc::make_mut(&mut view.upstream)[0].cluster_ip = Some("fd00::a".parse().unwrap());
    let snap = build(&view, CERTS).unwrap();
    let rc =
        RouteConfiguration::decode(snap.get(ResourceType::Route).resources()["rds-outbound.80"].body.value.as_slice())
            .unwrap();
    assert!(rc.virtual_hosts[0].domains.contains(&"[fd00::a]:80".to_owned()));
}

#[test]
fn prometheus_listener_only_when_annotated() {
    let mut view = view_for("web-1");
    assert!(!build(&view, CERTS).unwrap().get(ResourceType::Listener).resources().contains_key(PROMETHEUS_LISTENER));
    Arc::make_mut(&mut view.pod).prometheus_scrape = true;
    let snap = build(&view, CERTS).unwrap();
    let l = Listener::decode(snap.get(ResourceType::Listener).resources()[PROMETHEUS_LISTENER].body.value.as_slice())
        .unwrap();
    assert_eq!(l.address.unwrap(), any_addr(15010));
    assert!(snap.get(ResourceType::Cluster).resources().contains_key(METRICS_CLUSTER));
}

#[test]
fn server_gets_inbound_mtls_chains_and_local_clusters() {
    let snap = build(&view_for("web-1"), CERTS).unwrap();
    let l =
        Listener::decode(snap.get(ResourceType::Listener).resources()[INBOUND_LISTENER].body.value.as_slice()).unwrap();
    let chains: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(chains, vec!["inbound_demo/echo_7000_tcp", "inbound_demo/web_8080_http"]);
    let m = l.filter_chains[1].filter_chain_match.as_ref().unwrap();
    assert_eq!(m.server_names, vec!["web.demo.svc.cluster.local"]);
    assert_eq!(m.application_protocols, vec!["osm"]);
    assert!(snap.get(ResourceType::Cluster).resources().contains_key("demo/web|8080|local"));
    assert!(snap.get(ResourceType::Route).resources().contains_key("rds-inbound.8080"));
}

#[test]
fn a_batch_shares_encodings_and_matches_unshared_builds() {
    let mut cache = BuildCache::new();
    let client = view_for("client");
    let mut twin = client.clone();
    Arc::make_mut(&mut twin.pod).name = "client-2".into();
    let a = build_with(&client, CERTS, &mut cache).unwrap();
    let b = build_with(&twin, CERTS, &mut cache).unwrap();
    assert_eq!(a, build(&client, CERTS).unwrap());
    assert_eq!(a, b);
    for ty in ResourceType::ALL {
        assert!(Arc::ptr_eq(a.shared(ty), b.shared(ty)), "twins share one {ty} set");
        for (name, r) in a.get(ty).resources() {
            assert!(Arc::ptr_eq(r, &b.get(ty).resources()[name]), "{ty} {name} was encoded twice");
        }
    }
    assert!(cache.hits > 0);
    // Another identity shares the outbound parts too: clusters name no identity.
    let server = build_with(&view_for("web-1"), CERTS, &mut cache).unwrap();
    let l = &server.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER];
    assert!(Arc::ptr_eq(l, &a.get(ResourceType::Listener).resources()[OUTBOUND_LISTENER]));
    assert!(Arc::ptr_eq(
        &server.get(ResourceType::Cluster).resources()["demo/web|8080"],
        &a.get(ResourceType::Cluster).resources()["demo/web|8080"]
    ));
    // Only the certificate differs between identities.
    let other = CertInput { cert_pem: "CERT2", key_pem: "KEY2", ..CERTS };
    let server2 = build_with(&view_for("web-1"), other, &mut cache).unwrap();
    assert!(!Arc::ptr_eq(
        &server2.get(ResourceType::Secret).resources()[SERVICE_CERT],
        &server.get(ResourceType::Secret).resources()[SERVICE_CERT]
    ));
}

#[test]
fn the_cache_outlives_a_batch_and_forgets_what_no_build_uses() {
    let mut cache = BuildCache::new();
    let a = build_with(&view_for("client"), CERTS, &mut cache).unwrap();
    cache.next_batch();
    let encoded = cache.misses;
    let b = build_with(&view_for("client"), CERTS, &mut cache).unwrap();
    assert_eq!(cache.misses, encoded, "a rebuild of unchanged content encodes nothing");
    assert!(Arc::ptr_eq(
        &a.get(ResourceType::Cluster).resources()["demo/web|8080"],
        &b.get(ResourceType::Cluster).resources()["demo/web|8080"]
    ));
    let mut changed = view_for("client");
    Arc::make_mut(&mut changed.upstream)[1].ports[0].endpoints.push("10.244.9.9:8080".parse().unwrap());
    let before = cache.misses;
    build_with(&changed, CERTS, &mut cache).unwrap();
    assert_eq!(cache.misses - before, 1, "an endpoint change re-encodes that assignment only");
    for _ in 0..=BuildCache::KEEP_BATCHES {
        cache.next_batch();
    }
    assert!(cache.is_empty());
}

#[test]
fn identical_inputs_give_identical_versions() {
    let a = build(&view_for("client"), CERTS).unwrap();
    let b = build(&view_for("client"), CERTS).unwrap();
    assert_eq!(a, b);
    let c = build(&view_for("client"), CertInput { cert_pem: "CERT2", ..CERTS }).unwrap();
    assert_eq!(a.get(ResourceType::Listener), c.get(ResourceType::Listener));
    assert_ne!(a.get(ResourceType::Secret).version_of(None), c.get(ResourceType::Secret).version_of(None));
}

#[test]
fn smi_inbound_http_routes_carry_rbac_and_end_in_deny() {
    use crate::rbac::{HTTP_RBAC_FILTER, NETWORK_RBAC_FILTER, ROUTE_POLICY};
    use envoy_types::pb::envoy::config::rbac::v3::principal;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    let snap = build(&view_with("web-1", smi_objects()), CERTS).unwrap();
    let rc: RouteConfiguration = decode(&snap, ResourceType::Route, "rds-inbound.8080");
    let routes = &rc.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 2, "GET /api/.* for the client, then deny-all (TCP access to 7000 covers not 8080)");
    let m = routes[0].r#match.as_ref().unwrap();
    let Some(route_match::PathSpecifier::SafeRegex(re)) = &m.path_specifier else { panic!() };
    assert_eq!(re.regex, "/api/.*");
    let headers: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(headers, vec![":authority", ":method"]);
    let rbac = |r: &Route| {
        let any = &r.typed_per_filter_config[HTTP_RBAC_FILTER];
        RbacPerRoute::decode(any.value.as_slice()).unwrap().rbac.unwrap().rules.unwrap()
    };
    let allowed = rbac(&routes[0]);
    let names: Vec<String> = allowed.policies[ROUTE_POLICY]
        .principals
        .iter()
        .map(|p| match &p.identifier {
            Some(principal::Identifier::Authenticated(a)) => match &a.principal_name.as_ref().unwrap().match_pattern {
                Some(string_matcher::MatchPattern::Exact(e)) => e.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, vec!["client.demo.cluster.local", "spiffe://cluster.local/client/demo"]);
    assert!(rbac(&routes[1]).policies.is_empty(), "the last route allows nobody");

    // The connection manager runs the RBAC filter, then the (per-host, per-route) rate limit, before the
    // router.
    let l: Listener = decode(&snap, ResourceType::Listener, INBOUND_LISTENER);
    let http_chain = l.filter_chains.iter().find(|c| c.name.ends_with("_http")).unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &http_chain.filters[0].config_type else { panic!() };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(filters, vec![HTTP_RBAC_FILTER, limits::HTTP_LOCAL_RATE_LIMIT, "envoy.filters.http.router"]);
    // The TCP chain starts with L4 RBAC that admits the client (its TCPRoute covers 7000).
    let tcp_chain = l.filter_chains.iter().find(|c| c.name.ends_with("_tcp")).unwrap();
    assert_eq!(tcp_chain.filters[0].name, NETWORK_RBAC_FILTER);
    let Some(filter::ConfigType::TypedConfig(any)) = &tcp_chain.filters[0].config_type else { panic!() };
    let rules = NetworkRbac::decode(any.value.as_slice()).unwrap().rules.unwrap();
    assert_eq!(rules.policies.values().next().unwrap().principals.len(), 2);
}

#[test]
fn smi_outbound_holds_only_allowed_services_and_permissive_inbound_has_no_rbac_rules() {
    let client = build(&view_with("client", smi_objects()), CERTS).unwrap();
    assert_eq!(names(&client, ResourceType::Cluster), vec!["demo/echo|7000", "demo/web|8080"]);
    // web-1 may call nobody, and without egress it gets no outbound listener at all.
    let web = build(&view_with("web-1", smi_objects()), CERTS).unwrap();
    assert!(!web.get(ResourceType::Listener).resources().contains_key(OUTBOUND_LISTENER));
    assert!(names(&web, ResourceType::Cluster).iter().all(|c| c.ends_with("|local")));
    // Permissive: one route to the local cluster, no per-route policy.
    let snap = build(&view_for("web-1"), CERTS).unwrap();
    let rc: RouteConfiguration = decode(&snap, ResourceType::Route, "rds-inbound.8080");
    assert_eq!(rc.virtual_hosts[0].routes.len(), 1);
    assert!(rc.virtual_hosts[0].routes[0].typed_per_filter_config.is_empty());
}

#[test]
fn a_split_becomes_weighted_clusters_for_http_and_tcp() {
    let mut view = view_for("client");
    {
        let up = Arc::make_mut(&mut view.upstream);
        for svc in up.iter_mut() {
            svc.ports[0].split = vec![("demo/web|8080".into(), 90), ("demo/echo|7000".into(), 10)];
        }
    }
    let snap = build(&view, CERTS).unwrap();
    let rc: RouteConfiguration = decode(&snap, ResourceType::Route, "rds-outbound.80");
    let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else { panic!() };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else { panic!() };
    let weights: Vec<(String, u32)> = w.clusters.iter().map(|c| (c.name.clone(), c.weight.unwrap().value)).collect();
    assert_eq!(weights, vec![("demo/web|8080".into(), 90), ("demo/echo|7000".into(), 10)]);
    let l: Listener = decode(&snap, ResourceType::Listener, OUTBOUND_LISTENER);
    let tcp = l.filter_chains.iter().find(|c| c.name.ends_with("_tcp")).unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &tcp.filters[0].config_type else { panic!() };
    let proxy = TcpProxy::decode(any.value.as_slice()).unwrap();
    let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else { panic!() };
    assert_eq!(w.clusters.len(), 2);
}

/// Two Services on one target port share `rds-inbound.<port>`, and a split sends the apex's requests through
/// the backend's chain to the apex's host: every inbound chain carries the rate-limit filter, so a limit on
/// any host applies whichever chain a request came through, and at once on connections already open.
#[test]
fn a_request_limit_puts_the_filter_in_every_chain_of_its_port() {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use messages::*;
    use std::collections::BTreeMap;
    let second = MeshObject::Service(Service {
        key: ServiceKey::new("demo", "web-v1"),
        cluster_ip: Some("10.96.0.12".parse().unwrap()),
        selector: Some(BTreeMap::from([("app".into(), "web".into())])),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Number(8080),
            protocol: AppProtocol::Http,
        }],
    });
    let limit = MeshObject::UpstreamTrafficSetting(UpstreamTrafficSetting {
        namespace: "demo".into(),
        name: "web".into(),
        host: "web.demo.svc.cluster.local".into(),
        connection: ConnectionSettings::default(),
        tcp_rate_limit: None,
        http_rate_limit: Some(HttpRateLimit {
            requests: messages::TokenBucket { per_unit: 1, unit: std::time::Duration::from_secs(1), burst: 0 },
            status: 429,
            headers: vec![],
        }),
        route_rate_limits: vec![],
    });
    let view = view_with("web-1", vec![second, limit]);
    let snap = build(&view, CERTS).unwrap();
    let l =
        Listener::decode(snap.get(ResourceType::Listener).resources()[INBOUND_LISTENER].body.value.as_slice()).unwrap();
    let http_chains: Vec<&FilterChain> = l.filter_chains.iter().filter(|c| c.name.ends_with("_8080_http")).collect();
    assert_eq!(http_chains.len(), 2, "{:?}", l.filter_chains.iter().map(|c| &c.name).collect::<Vec<_>>());
    for chain in http_chains {
        let hcm = chain.filters.iter().find(|f| f.name == "envoy.filters.network.http_connection_manager").unwrap();
        let Some(filter::ConfigType::TypedConfig(any)) = &hcm.config_type else { panic!("no config") };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        assert!(
            hcm.http_filters.iter().any(|f| f.name == limits::HTTP_LOCAL_RATE_LIMIT),
            "{}: {:?}",
            chain.name,
            hcm.http_filters.iter().map(|f| &f.name).collect::<Vec<_>>()
        );
    }
}
