//! What a proxy serves: the inbound listener and its routes, local clusters, validation contexts.

use super::*;

pub(super) fn validation_secret(name: &str, bundle: &str) -> Resource {
    resource(
        name,
        Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(bundle)),
                ..Default::default()
            })),
        },
    )
}

pub(super) fn local_cluster_resource(name: &str, port: u16, protocol: AppProtocol) -> Cluster {
    Cluster {
        typed_extension_protocol_options: http_options(protocol, None),
        name: name.to_owned(),
        alt_stat_name: name.replace(['/', '|'], "_"),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(load_assignment(name, &[SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)])),
        ..Default::default()
    }
}

/// The inbound listener, its routes and the local clusters of the Services this pod backs (per pod, not
/// shared).
pub(super) fn add_inbound(b: &mut Builder, view: &ProxyView) -> Result<(), SnapshotError> {
    let own_cert = SERVICE_CERT;
    let td = &view.trust_domain;
    let mut clusters_done = BTreeSet::new();
    let mut inbound_chains = Vec::new();
    let mut inbound_routes: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
    let mut inbound_domains: HashMap<u16, BTreeSet<String>> = HashMap::new();
    for svc in &view.local {
        // Several Service ports may lead to one target port: they share one chain (the match would be
        // identical) whose virtual host answers to every one of those ports.
        let mut by_target: BTreeMap<u16, Vec<&ResolvedPort>> = BTreeMap::new();
        for port in &svc.ports {
            by_target.entry(port.target_port).or_default().push(port);
        }
        for group in by_target.values() {
            let port = group[0];
            let local_cluster = format!("{}|{}|local", svc.key, port.target_port);
            if clusters_done.insert(local_cluster.clone()) {
                // The application behind a gRPC port needs HTTP/2 from its sidecar too.
                let protocol = group.iter().map(|p| p.protocol).find(|p| p.is_http()).unwrap_or(port.protocol);
                b.add(
                    ResourceType::Cluster,
                    &local_cluster,
                    local_cluster_resource(&local_cluster, port.target_port, protocol),
                )?;
            }
            let chain_name = format!("inbound_{}_{}_{}", svc.key, port.target_port, port.protocol);
            // The Service's UpstreamTrafficSetting: a connection limit first on the chain, request limits
            // on its host and routes.
            let traffic = svc.traffic.as_deref();
            let connection_limit = traffic.and_then(|t| t.tcp_rate_limit.as_ref()).map(|l| {
                let stat_prefix = format!("inbound_{}_{}", svc.key, port.target_port).replace('/', "_");
                limits::tcp_rate_limit_filter(l, &stat_prefix)
            });
            let filters = if port.protocol.is_http() {
                let rds = format!("rds-inbound.{}", port.target_port);
                let used = inbound_domains.entry(port.target_port).or_default();
                // A TrafficSplit backend also answers to its apexes' names (clients address the apex).
                let domains: Vec<String> = group
                    .iter()
                    .flat_map(|p| {
                        let own = hostnames(svc, p.port, &svc.key.namespace);
                        let apexes =
                            svc.apexes.iter().flat_map(|(apex, ip)| hostnames_of(apex, *ip, p.port, &apex.namespace));
                        own.into_iter().chain(apexes).collect::<Vec<_>>()
                    })
                    .filter(|d| used.insert(d.clone()))
                    .collect();
                let routes = match &view.inbound_policy {
                    None => vec![route_to(&local_cluster)],
                    Some(policy) => {
                        crate::rbac::inbound_routes(&policy.http_rules_for_port(port.target_port), &local_cluster, td)
                    }
                };
                let mut vhost = VirtualHost {
                    name: format!("inbound_virtual-host|{}", svc.key.fqdn()),
                    domains,
                    routes,
                    ..Default::default()
                };
                limits::limit_host(&mut vhost, traffic);
                inbound_routes.entry(port.target_port).or_default().push(vhost);
                connection_limit
                    .into_iter()
                    .chain([http_connection_manager(
                        &rds,
                        &rds,
                        // The rate-limit filter always, as OSM has it: a limit set later is a route change,
                        // in force at once on connections already open (a new filter would reach only new
                        // connections, the old ones draining on the old chain).
                        HcmOptions { rbac: true, rate_limit: true, ..Default::default() },
                        view.settings.tracing.as_ref(),
                    )])
                    .collect()
            } else {
                let mut filters = Vec::new();
                if let Some(policy) = &view.inbound_policy {
                    filters.push(network_filter(
                        crate::rbac::NETWORK_RBAC_FILTER,
                        crate::rbac::network_filter(policy.tcp.values(), port.target_port, td),
                    ));
                }
                filters.extend(connection_limit);
                filters.push(tcp_proxy_filter(&local_cluster, &format!("inbound-tcp.{local_cluster}")));
                filters
            };
            let tls = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_params: Some(tls_params()),
                    tls_certificate_sds_secret_configs: vec![sds(own_cert)],
                    validation_context_type: Some(
                        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                            ROOT_CERT_INBOUND,
                        )),
                    ),
                    ..Default::default()
                }),
                require_client_certificate: Some(BoolValue { value: true }),
                ..Default::default()
            };
            inbound_chains.push(FilterChain {
                name: chain_name,
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: port.target_port.into() }),
                    server_names: vec![svc.key.fqdn()],
                    transport_protocol: "tls".to_owned(),
                    application_protocols: vec![MESH_ALPN.to_owned()],
                    ..Default::default()
                }),
                filters,
                transport_socket: Some(tls_socket(pack_any(tls))),
                ..Default::default()
            });
        }
    }
    add_ingress(b, view, &mut inbound_chains)?;
    for (port, vhosts) in inbound_routes {
        let name = format!("rds-inbound.{port}");
        b.add(
            ResourceType::Route,
            &name,
            RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vhosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            },
        )?;
    }
    if !inbound_chains.is_empty() {
        b.add(
            ResourceType::Listener,
            INBOUND_LISTENER,
            Listener {
                name: INBOUND_LISTENER.to_owned(),
                address: Some(any_addr(ports::INBOUND)),
                listener_filters: vec![
                    listener_filter("envoy.filters.listener.tls_inspector", pack_any(TlsInspector::default())),
                    listener_filter("envoy.filters.listener.original_dst", pack_any(OriginalDst::default())),
                ],
                filter_chains: inbound_chains,
                traffic_direction: TrafficDirection::Inbound as i32,
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Chains for clients outside the mesh (IngressBackend), beside the mesh's mTLS chains on the same port:
/// matched by the client's address (and for HTTPS by TLS and SNI), through `rds-ingress.<port>` to the local
/// cluster, with the principals allowed per route. One per target port (two Services of a pod that share a
/// target port would need the same match: the first keeps it).
fn add_ingress(b: &mut Builder, view: &ProxyView, chains: &mut Vec<FilterChain>) -> Result<(), SnapshotError> {
    let mut done = BTreeSet::new();
    for svc in &view.local {
        for ing in &svc.ingress {
            let port = ing.target_port;
            let source_prefix_ranges = match &ing.source_ranges {
                None => Vec::new(),
                // Sources named, none with an address now: no chain, so the port stays closed to them.
                Some(r) if r.is_empty() => continue,
                Some(r) => r.iter().map(cidr_range).collect(),
            };
            if !done.insert(port) {
                continue;
            }
            let local_cluster = format!("{}|{}|local", svc.key, port);
            let protocol = if ing.https { "https" } else { "http" };
            let rds = format!("rds-ingress.{port}");
            let mut chain_match = FilterChainMatch {
                destination_port: Some(UInt32Value { value: port.into() }),
                source_prefix_ranges,
                ..Default::default()
            };
            let mut transport_socket = None;
            if ing.https {
                chain_match.transport_protocol = "tls".to_owned();
                chain_match.server_names = ing.sni_hosts.clone();
                let validate = !ing.skip_client_cert_validation;
                let tls = DownstreamTlsContext {
                    common_tls_context: Some(CommonTlsContext {
                        tls_params: Some(tls_params()),
                        tls_certificate_sds_secret_configs: vec![sds(SERVICE_CERT)],
                        validation_context_type: validate.then(|| {
                            common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                                ROOT_CERT_INBOUND,
                            ))
                        }),
                        ..Default::default()
                    }),
                    require_client_certificate: Some(BoolValue { value: validate }),
                    ..Default::default()
                };
                transport_socket = Some(tls_socket(pack_any(tls)));
            }
            chains.push(FilterChain {
                name: format!("ingress_{}_{port}_{protocol}", svc.key),
                filter_chain_match: Some(chain_match),
                filters: vec![http_connection_manager(
                    &rds,
                    &rds,
                    HcmOptions { rbac: true, accept_http_10: true, ..Default::default() },
                    view.settings.tracing.as_ref(),
                )],
                transport_socket,
                ..Default::default()
            });
            b.add(
                ResourceType::Route,
                &rds,
                RouteConfiguration {
                    name: rds.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: format!("ingress_virtual-host|{}_from_{}", svc.key, ing.policy),
                        domains: vec!["*".to_owned()],
                        routes: vec![crate::rbac::ingress_route(&local_cluster, &ing.principals)],
                        ..Default::default()
                    }],
                    validate_clusters: Some(BoolValue { value: false }),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(())
}
