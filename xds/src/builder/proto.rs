//! Small protobuf helpers shared by every part of the builder.

use super::*;

pub(super) fn socket(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

pub(super) fn any_addr(port: u16) -> Address {
    socket(IpAddr::from([0, 0, 0, 0]), port)
}

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(super) fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig { name: name.to_owned(), sds_config: Some(ads()) }
}

pub(super) fn inline(bytes: &str) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::InlineBytes(bytes.as_bytes().to_vec())), ..Default::default() }
}

pub(super) fn seconds(s: i64) -> PbDuration {
    PbDuration { seconds: s, nanos: 0 }
}

pub(super) fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(super) fn tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

pub(super) fn cidr(ip: IpAddr) -> CidrRange {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    CidrRange { address_prefix: ip.to_string(), prefix_len: Some(UInt32Value { value: len }) }
}

pub(super) fn cidr_range(c: &messages::Cidr) -> CidrRange {
    CidrRange { address_prefix: c.addr.to_string(), prefix_len: Some(UInt32Value { value: c.len.into() }) }
}

pub(super) fn tls_socket(any: Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any)),
    }
}

pub(super) fn network_filter(name: &str, any: Any) -> Filter {
    Filter { name: name.to_owned(), config_type: Some(filter::ConfigType::TypedConfig(any)) }
}

pub(super) fn listener_filter(name: &str, any: Any) -> ListenerFilter {
    ListenerFilter {
        name: name.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

pub(super) fn resource<M: prost::Name + prost::Message>(name: &str, msg: M) -> Resource {
    Resource::new(name, pack_any(msg))
}

/// For HTTP-family clusters: speak to the upstream in whatever protocol the client used (HTTP/1.1, or
/// HTTP/2 for gRPC); without it Envoy would downgrade every request to HTTP/1.1.
/// HTTP options of a cluster of an HTTP port: the downstream's protocol upstream, and at most
/// `max_requests_per_connection` requests on one connection when set.
pub(super) fn http_options(protocol: AppProtocol, max_requests_per_connection: Option<u32>) -> HashMap<String, Any> {
    let mut options = HashMap::new();
    if protocol.is_http() {
        let http = HttpProtocolOptions {
            common_http_protocol_options: max_requests_per_connection.map(|n| {
                envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                    max_requests_per_connection: Some(UInt32Value { value: n }),
                    ..Default::default()
                }
            }),
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                    http_protocol_options::UseDownstreamHttpConfig {
                        http_protocol_options: Some(Http1ProtocolOptions::default()),
                        http2_protocol_options: Some(Http2ProtocolOptions::default()),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        };
        options.insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(), pack_any(http));
    }
    options
}

pub(super) fn load_assignment(cluster: &str, endpoints: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket(a.ip(), a.port())),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
