//! Builds one proxy's Envoy configuration from its [`ProxyView`] (permissive traffic policy).
//!
//! Names and shapes follow OSM's generated configuration: listeners `outbound-listener` (:15001) and
//! `inbound-listener` (:15003), clusters `<ns>/<svc>|<targetPort>` and `…|local`, routes
//! `rds-outbound.<port>` / `rds-inbound.<targetPort>`.
//!
//! Where OSM's names would make a resource differ between proxies that see the same thing, names are fixed
//! instead, so one encoding serves every proxy: the proxy's own certificate is the secret `service-cert`
//! (OSM: `service-cert:<ns>/<sa>`), upstream clusters validate against one trust bundle
//! `root-cert-for-mtls-outbound` (OSM: one copy per upstream Service) and carry their Service's SAN list in
//! the cluster itself, and outbound HTTP traffic of one port goes through one filter chain matching every
//! ClusterIP on that port (OSM: one chain per Service; the routing is by Host in `rds-outbound.<port>`
//! either way). A cluster is then a function of its Service alone.
//!
//! The parts: [`names`] (OSM's resource names and a Service's host names), `proto` (protobuf helpers),
//! `filters` (connection managers, tcp_proxy, routes, access logs, tracing), `outbound` (what a proxy may
//! call), `inbound` (what it serves), `cache` ([`BuildCache`]); [`build_with`] puts one proxy together.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, CidrRange, ConfigSource, DataSource, Http1ProtocolOptions,
    Http2ProtocolOptions, SocketAddress, SubstitutionFormatString, TrafficDirection, TransportSocket, address,
    config_source, data_source, socket_address, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, retry_policy, route,
    route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, tracing as trace, zipkin_config};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{StdoutAccessLog, stdout_access_log};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context, secret,
    subject_alt_name_matcher, tls_parameters,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use messages::{
    AppProtocol, MeshSettings, ProxyView, ResolvedPort, ServiceIdentity, ServiceKey, ServiceView, TracingSettings,
    ports,
};

use crate::snapshot::{ProxySnapshot, Resource, ResourceType, SnapshotError};

mod cache;
mod filters;
mod inbound;
mod limits;
pub mod names;
mod outbound;
mod proto;
#[cfg(test)]
mod tests;

use cache::*;
pub use cache::{BuildCache, UpstreamPart};
use filters::*;
use inbound::*;
pub use names::*;
use outbound::*;
use proto::*;

/// The certificate material a proxy's snapshot carries.
#[derive(Debug, Clone, Copy)]
pub struct CertInput<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    /// Roots that validate peers (more than one while a root rotates).
    pub trust_bundle_pem: &'a str,
}

/// Collects a proxy's resources per type, in order; [`ProxySnapshot::assemble`] makes the snapshot.
struct Builder {
    pending: [Vec<Arc<Resource>>; 5],
}

impl Builder {
    fn add<M: prost::Name + prost::Message>(
        &mut self,
        ty: ResourceType,
        name: &str,
        msg: M,
    ) -> Result<(), SnapshotError> {
        self.pending[ty.index()].push(Arc::new(resource(name, msg)));
        Ok(())
    }

    fn add_all(&mut self, ty: ResourceType, resources: Vec<Arc<Resource>>) -> Result<(), SnapshotError> {
        self.pending[ty.index()].extend(resources);
        Ok(())
    }
}

/// Builds a consistent snapshot for one proxy.
pub fn build(view: &ProxyView, certs: CertInput<'_>) -> Result<ProxySnapshot, SnapshotError> {
    build_with(view, certs, &mut BuildCache::new())
}

/// Builds a consistent snapshot for one proxy, sharing encodings through `cache` with the other proxies of
/// the same batch.
pub fn build_with(
    view: &ProxyView,
    certs: CertInput<'_>,
    cache: &mut BuildCache,
) -> Result<ProxySnapshot, SnapshotError> {
    let mut b = Builder { pending: Default::default() };
    let identity = view.identity();
    let own_cert = SERVICE_CERT;
    let td = &view.trust_domain;

    // --- SDS -------------------------------------------------------------------------------------
    let key = CacheKey::Cert(identity.clone(), certs.cert_pem.to_owned(), certs.key_pem.to_owned());
    let cert = cache.get_or_make(key, || {
        vec![resource(
            own_cert,
            Secret {
                name: own_cert.to_owned(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(certs.cert_pem)),
                    private_key: Some(inline(certs.key_pem)),
                    ..Default::default()
                })),
            },
        )]
    });
    b.add_all(ResourceType::Secret, cert)?;
    for root in [ROOT_CERT_INBOUND, ROOT_CERT_OUTBOUND] {
        let secret = cache.get_or_make(CacheKey::Root(root, certs.trust_bundle_pem.to_owned()), || {
            vec![validation_secret(root, certs.trust_bundle_pem)]
        });
        b.add_all(ResourceType::Secret, secret)?;
    }

    // --- Outbound: clusters and endpoints per upstream Service; one listener; routes -------------
    let chains = cache.upstream_chains(&view.upstream);
    // Proxies that share an upstream list share all of this: assembled once per list and batch.
    let part = cache.upstream_part(&view.upstream, td);
    b.add_all(ResourceType::Cluster, part.clusters.clone())?;
    b.add_all(ResourceType::Endpoint, part.endpoints.clone())?;
    let listener = cache.get_or_make(CacheKey::OutboundListener(chains.clone(), view.settings.clone()), || {
        outbound_listener(&view.upstream, &view.settings).map(|l| resource(OUTBOUND_LISTENER, l)).into_iter().collect()
    });
    b.add_all(ResourceType::Listener, listener)?;
    if view.settings.enable_egress {
        let passthrough = cache.get_or_make(CacheKey::Fixed("cds-passthrough"), || {
            vec![resource(PASSTHROUGH_CLUSTER, passthrough_cluster())]
        });
        b.add_all(ResourceType::Cluster, passthrough)?;
    }
    if let Some(t) = &view.settings.tracing {
        let cluster =
            cache.get_or_make(CacheKey::Tracing(t.clone()), || vec![resource(TRACING_CLUSTER, tracing_cluster(t))]);
        b.add_all(ResourceType::Cluster, cluster)?;
    }
    let key = CacheKey::OutboundRoutes(view.pod.namespace.clone(), chains, view.retries.clone());
    let routes = cache.get_or_make(key, || outbound_routes(&view.upstream, &view.pod.namespace, &view.retries));
    b.add_all(ResourceType::Route, routes)?;

    // --- Inbound: mTLS-terminating filter chains to local clusters (per pod, not shared) ---------
    add_inbound(&mut b, view)?;

    if view.pod.prometheus_scrape {
        let listener = cache.get_or_make(CacheKey::Fixed("lds-prometheus"), || {
            vec![resource(PROMETHEUS_LISTENER, prometheus_listener())]
        });
        b.add_all(ResourceType::Listener, listener)?;
        let cluster = cache.get_or_make(CacheKey::Fixed("cds-metrics"), || {
            let addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), ports::ADMIN);
            let cluster = Cluster {
                name: METRICS_CLUSTER.to_owned(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(seconds(1)),
                load_assignment: Some(load_assignment(METRICS_CLUSTER, &[addr])),
                ..Default::default()
            };
            vec![resource(METRICS_CLUSTER, cluster)]
        });
        b.add_all(ResourceType::Cluster, cluster)?;
    }

    let snap = ProxySnapshot::assemble(b.pending, &mut cache.sets)?;
    // Derived from the resources, not from what was built: whatever the builder does, a snapshot that
    // names something it does not carry is never published.
    crate::consistency::check_with(&snap, &mut cache.checked)?;
    Ok(snap)
}
