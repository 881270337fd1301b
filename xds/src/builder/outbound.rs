//! What a proxy may call: the outbound listener and routes, upstream clusters, the passthrough cluster.

use super::*;

/// Which destination addresses an outbound chain catches: the ClusterIP, or for a headless Service its
/// endpoints.
pub(super) fn outbound_prefixes(svc: &ServiceView, port: &ResolvedPort) -> Vec<IpAddr> {
    match svc.cluster_ip {
        Some(ip) => vec![ip],
        None => port.endpoints.iter().map(|a| a.ip()).collect::<BTreeSet<_>>().into_iter().collect(),
    }
}

pub(super) fn outbound_listener(upstream: &[ServiceView], settings: &MeshSettings) -> Option<Listener> {
    let mut chains = Vec::new();
    // Each (port, address) may be matched by one chain only, or Envoy rejects the listener; two headless
    // Services over the same pods would otherwise both claim those pods' addresses.
    let mut claimed: HashSet<(u16, IpAddr)> = HashSet::new();
    // HTTP ports: one chain per port for every Service on it; routing by Host happens in the port's
    // route configuration, so the chain (and its connection manager) is written once, not per Service.
    let mut http: BTreeMap<u16, Vec<CidrRange>> = BTreeMap::new();
    for svc in upstream {
        for port in &svc.ports {
            let prefixes: Vec<CidrRange> = outbound_prefixes(svc, port)
                .into_iter()
                .filter(|ip| claimed.insert((port.port, *ip)))
                .map(cidr)
                .collect();
            if prefixes.is_empty() {
                continue;
            }
            if port.protocol.is_http() {
                http.entry(port.port).or_default().extend(prefixes);
                continue;
            }
            let cluster_name = port.cluster_name(&svc.key);
            chains.push(FilterChain {
                name: format!("outbound_{}_{}_{}", svc.key, port.port, port.protocol),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: port.port.into() }),
                    prefix_ranges: prefixes,
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_for(port, &cluster_name, &format!("outbound-tcp.{cluster_name}"))],
                ..Default::default()
            });
        }
    }
    for (port, prefixes) in http {
        let rds = format!("rds-outbound.{port}");
        chains.push(FilterChain {
            name: format!("outbound_http_{port}"),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: port.into() }),
                prefix_ranges: prefixes,
                ..Default::default()
            }),
            filters: vec![http_connection_manager(&rds, &rds, HcmOptions::default(), settings.tracing.as_ref())],
            ..Default::default()
        });
    }
    // With egress enabled, whatever no mesh chain matches goes on to where the application sent it.
    let default_chain = settings.enable_egress.then(|| FilterChain {
        name: EGRESS_CHAIN.to_owned(),
        filters: vec![tcp_proxy_filter(PASSTHROUGH_CLUSTER, &format!("egress-tcp-proxy.{PASSTHROUGH_CLUSTER}"))],
        ..Default::default()
    });
    if chains.is_empty() && default_chain.is_none() {
        return None;
    }
    Some(Listener {
        name: OUTBOUND_LISTENER.to_owned(),
        address: Some(any_addr(ports::OUTBOUND)),
        listener_filters: vec![listener_filter(
            "envoy.filters.listener.original_dst",
            pack_any(OriginalDst::default()),
        )],
        filter_chains: chains,
        default_filter_chain: default_chain,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    })
}

/// `rds-outbound.<port>` route configurations; short host names depend on the client's namespace.
pub(super) fn outbound_routes(
    upstream: &[ServiceView],
    client_ns: &str,
    retries: &BTreeMap<ServiceKey, messages::RetryPolicy>,
) -> Vec<Resource> {
    let mut routes: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
    let mut used_domains: HashMap<u16, BTreeSet<String>> = HashMap::new();
    for svc in upstream {
        for port in svc.ports.iter().filter(|p| p.protocol.is_http()) {
            if outbound_prefixes(svc, port).is_empty() {
                continue;
            }
            let used = used_domains.entry(port.port).or_default();
            let domains: Vec<String> =
                hostnames(svc, port.port, client_ns).into_iter().filter(|d| used.insert(d.clone())).collect();
            routes.entry(port.port).or_default().push(VirtualHost {
                name: format!("outbound_virtual-host|{}", svc.key.fqdn()),
                domains,
                routes: vec![with_retries(route_for(port, &port.cluster_name(&svc.key)), retries.get(&svc.key))],
                ..Default::default()
            });
        }
    }
    routes
        .into_iter()
        .map(|(port, vhosts)| {
            let name = format!("rds-outbound.{port}");
            let rc = RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vhosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            };
            resource(&name, rc)
        })
        .collect()
}

/// The SANs an upstream connection accepts: the identities of the Service's pods.
pub(super) fn san_matchers(svc: &ServiceView, trust_domain: &str) -> Vec<SubjectAltNameMatcher> {
    svc.identities
        .iter()
        .map(|id| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Dns as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(id.principal(trust_domain))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// An upstream cluster depends on its Service only (never on the proxy that uses it), so every proxy that
/// sees the Service gets the same bytes.
pub(super) fn upstream_cluster(svc: &ServiceView, protocol: AppProtocol, name: &str, trust_domain: &str) -> Cluster {
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params()),
            tls_certificate_sds_secret_configs: vec![sds(SERVICE_CERT)],
            validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: san_matchers(svc, trust_domain),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOT_CERT_OUTBOUND)),
                    ..Default::default()
                },
            )),
            alpn_protocols: vec![MESH_ALPN.to_owned()],
            ..Default::default()
        }),
        sni: svc.key.fqdn(),
        ..Default::default()
    };
    Cluster {
        name: name.to_owned(),
        alt_stat_name: name.replace(['/', '|'], "_"),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: String::new() }),
        connect_timeout: Some(limits::connect_timeout(svc.traffic.as_deref())),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        transport_socket: Some(tls_socket(pack_any(tls))),
        typed_extension_protocol_options: http_options(
            protocol,
            limits::max_requests_per_connection(svc.traffic.as_deref()),
        ),
        circuit_breakers: Some(limits::circuit_breakers(svc.traffic.as_deref().map(|t| &t.connection))),
        ..Default::default()
    }
}

/// Sends a connection to the address it was originally sent to (egress passthrough).
pub(super) fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst as i32)),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(seconds(1)),
        ..Default::default()
    }
}

/// A route with a Retry policy's `retry_policy`, when one applies to its Service.
pub(super) fn with_retries(mut route: Route, retry: Option<&messages::RetryPolicy>) -> Route {
    if let (Some(r), Some(route::Action::Route(action))) = (retry, route.action.as_mut()) {
        action.retry_policy = Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: r.retry_on.clone(),
            num_retries: Some(UInt32Value { value: r.num_retries }),
            per_try_timeout: Some(duration(r.per_try_timeout)),
            retry_back_off: Some(retry_policy::RetryBackOff {
                base_interval: Some(duration(r.backoff_base_interval)),
                // Envoy's default: ten times the base.
                max_interval: None,
            }),
            ..Default::default()
        });
    }
    route
}
