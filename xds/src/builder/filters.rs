//! Listeners' filters and routes: HTTP connection managers, tcp_proxy, access logs, tracing, the
//! Prometheus listener.

use super::*;

/// Access log written to Envoy's stdout for every request/connection, as OSM does by default (JSON).
pub(super) fn access_log() -> AccessLog {
    // OSM's default fields, in its order.
    const FORMAT: &str = concat!(
        r#"{"start_time":"%START_TIME%","method":"%REQ(:METHOD)%","path":"%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%","#,
        r#""protocol":"%PROTOCOL%","response_code":"%RESPONSE_CODE%","#,
        r#""response_code_details":"%RESPONSE_CODE_DETAILS%","time_to_first_byte":"%RESPONSE_DURATION%","#,
        r#""upstream_cluster":"%UPSTREAM_CLUSTER%","response_flags":"%RESPONSE_FLAGS%","#,
        r#""bytes_received":"%BYTES_RECEIVED%","bytes_sent":"%BYTES_SENT%","duration":"%DURATION%","#,
        r#""upstream_service_time":"%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%","#,
        r#""x_forwarded_for":"%REQ(X-FORWARDED-FOR)%","user_agent":"%REQ(USER-AGENT)%","#,
        r#""request_id":"%REQ(X-REQUEST-ID)%","requested_server_name":"%REQUESTED_SERVER_NAME%","#,
        r#""authority":"%REQ(:AUTHORITY)%","upstream_host":"%UPSTREAM_HOST%"}"#,
        "\n"
    );
    let fmt = SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(FORMAT.to_owned())),
            ..Default::default()
        })),
        ..Default::default()
    };
    AccessLog {
        name: "envoy.access_loggers.stream".to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(StdoutAccessLog {
            access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(fmt)),
        }))),
        ..Default::default()
    }
}

pub(super) fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
        ..Default::default()
    }
}

/// Zipkin (HTTP JSON, v2) spans of every request, reported to [`TRACING_CLUSTER`].
pub(super) fn tracing(t: &TracingSettings) -> http_connection_manager::Tracing {
    let zipkin = ZipkinConfig {
        collector_cluster: TRACING_CLUSTER.to_owned(),
        collector_endpoint: t.endpoint.clone(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        collector_hostname: t.address.clone(),
        trace_id_128bit: true,
        ..Default::default()
    };
    http_connection_manager::Tracing {
        provider: Some(trace::Http {
            name: "envoy.tracers.zipkin".to_owned(),
            config_type: Some(trace::http::ConfigType::TypedConfig(pack_any(zipkin))),
        }),
        ..Default::default()
    }
}

/// The collector of [`tracing`]: its address as given (an IP, or a name resolved by DNS).
pub(super) fn tracing_cluster(t: &TracingSettings) -> Cluster {
    let discovery = if t.address.parse::<IpAddr>().is_ok() {
        cluster::DiscoveryType::Static
    } else {
        cluster::DiscoveryType::StrictDns
    };
    Cluster {
        name: TRACING_CLUSTER.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(seconds(1)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: TRACING_CLUSTER.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: t.address.clone(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(t.port.into())),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a connection manager carries beyond routing.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HcmOptions {
    /// The (rule-less) RBAC filter that inbound routes configure per route.
    pub rbac: bool,
    /// The local rate-limit filter that hosts and routes configure (UpstreamTrafficSetting).
    pub rate_limit: bool,
    /// HTTP/1.0 accepted (ingress proxies such as nginx send it by default); else answered 426.
    pub accept_http_10: bool,
}

/// An HTTP connection manager on RDS `route_config`; with `tracing` every request is traced.
pub(super) fn http_connection_manager(
    route_config: &str,
    stat_prefix: &str,
    options: HcmOptions,
    tracing_to: Option<&TracingSettings>,
) -> Filter {
    let mut http_filters = Vec::new();
    if options.rbac {
        http_filters.push(crate::rbac::http_filter());
    }
    if options.rate_limit {
        http_filters.push(super::limits::http_rate_limit_filter());
    }
    http_filters.push(router_filter());
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters,
        access_log: vec![access_log()],
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            ..Default::default()
        }],
        generate_request_id: Some(BoolValue { value: true }),
        tracing: tracing_to.map(tracing),
        http_protocol_options: options
            .accept_http_10
            .then(|| Http1ProtocolOptions { accept_http_10: true, ..Default::default() }),
        ..Default::default()
    };
    network_filter("envoy.filters.network.http_connection_manager", pack_any(hcm))
}

pub(super) fn tcp_proxy_filter(cluster: &str, stat_prefix: &str) -> Filter {
    tcp_proxy_to(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned()), stat_prefix)
}

/// tcp_proxy to a port's cluster, or to its TrafficSplit backends by weight.
pub(super) fn tcp_proxy_for(port: &ResolvedPort, cluster: &str, stat_prefix: &str) -> Filter {
    if port.split.is_empty() {
        return tcp_proxy_filter(cluster, stat_prefix);
    }
    let clusters = port
        .split
        .iter()
        .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
            name: name.clone(),
            weight: *weight,
            ..Default::default()
        })
        .collect();
    tcp_proxy_to(tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster { clusters }), stat_prefix)
}

pub(super) fn tcp_proxy_to(cluster_specifier: tcp_proxy::ClusterSpecifier, stat_prefix: &str) -> Filter {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        access_log: vec![access_log()],
        ..Default::default()
    };
    network_filter("envoy.filters.network.tcp_proxy", pack_any(tcp))
}

pub(super) fn route_to(cluster: &str) -> Route {
    route_with(route_action::ClusterSpecifier::Cluster(cluster.to_owned()))
}

/// The outbound route of a port: to its cluster, or to its TrafficSplit backends by weight.
pub(super) fn route_for(port: &ResolvedPort, cluster: &str) -> Route {
    if port.split.is_empty() {
        return route_to(cluster);
    }
    let clusters = port
        .split
        .iter()
        .map(|(name, weight)| weighted_cluster::ClusterWeight {
            name: name.clone(),
            weight: Some(UInt32Value { value: *weight }),
            ..Default::default()
        })
        .collect();
    route_with(route_action::ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }))
}

pub(super) fn route_with(cluster_specifier: route_action::ClusterSpecifier) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            // No route timeout: streaming and long requests are the application's business.
            timeout: Some(seconds(0)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// :15010 → Envoy's own admin `/stats/prometheus` (and nothing else of the admin interface).
pub(super) fn prometheus_listener() -> Listener {
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(PROMETHEUS_PATH.to_owned())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(METRICS_CLUSTER.to_owned())),
            prefix_rewrite: PROMETHEUS_PATH.to_owned(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: "prometheus-http-conn-manager".to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
            name: "prometheus-route-config".to_owned(),
            virtual_hosts: vec![VirtualHost {
                name: "prometheus-inbound-virtual-host".to_owned(),
                domains: vec!["*".to_owned()],
                routes: vec![route],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![router_filter()],
        ..Default::default()
    };
    Listener {
        name: PROMETHEUS_LISTENER.to_owned(),
        address: Some(any_addr(ports::PROMETHEUS)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter("envoy.filters.network.http_connection_manager", pack_any(hcm))],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}
