//! The consistency of a built snapshot, derived from the resources themselves (not from what the builder
//! says it referenced): every cluster a route, weighted cluster or tcp_proxy names exists, every EDS
//! cluster has its assignment, every route configuration a connection manager asks for by RDS is served,
//! and every SDS secret a TLS context names is served. A snapshot that fails is never published (error
//! E5006): Envoy would keep a listener warming, or answer 503 for a cluster it does not know.
//!
//! What a resource refers to is decoded once per resource and kept with it ([`Resource::references`]):
//! resources are shared between proxies and across builds, so the check of a snapshot costs a lookup per
//! reference.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::snapshot::{ProxySnapshot, Resource, ResourceType, SnapshotError, TypeResources};

/// A reference from one resource to another: (type, name).
pub type Reference = (ResourceType, String);

/// Every resource one resource names, decoded from its body.
pub(crate) fn references_of(ty: ResourceType, body: &Any) -> Result<Vec<Reference>, String> {
    let mut refs = Vec::new();
    match ty {
        ResourceType::Cluster => cluster_refs(&decode::<Cluster>(body)?, &mut refs)?,
        ResourceType::Listener => {
            let l = decode::<Listener>(body)?;
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.as_ref()) {
                chain_refs(chain, &mut refs)?;
            }
        }
        ResourceType::Route => route_config_refs(&decode::<RouteConfiguration>(body)?, &mut refs),
        ResourceType::Endpoint | ResourceType::Secret => {}
    }
    Ok(refs)
}

fn decode<M: Message + Name + Default>(any: &Any) -> Result<M, String> {
    if any.type_url != M::type_url() {
        return Err(format!("a {} where a {} belongs", any.type_url, M::full_name()));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("{}: {e}", M::full_name()))
}

/// A typed config of type `M`, if it is one (`None` for other types: filters the check does not read).
fn typed<M: Message + Name + Default>(any: Option<&Any>) -> Result<Option<M>, String> {
    match any {
        Some(a) if a.type_url == M::type_url() => decode(a).map(Some),
        _ => Ok(None),
    }
}

fn cluster_refs(c: &Cluster, refs: &mut Vec<Reference>) -> Result<(), String> {
    let eds = c.cluster_discovery_type == Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32));
    if eds {
        let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.as_str()).filter(|s| !s.is_empty());
        refs.push((ResourceType::Endpoint, service.unwrap_or(&c.name).to_owned()));
    }
    if let Some(tls) = typed::<UpstreamTlsContext>(transport_config(c.transport_socket.as_ref()))? {
        tls_refs(tls.common_tls_context.as_ref(), refs);
    }
    Ok(())
}

fn transport_config(socket: Option<&TransportSocket>) -> Option<&Any> {
    match socket?.config_type.as_ref()? {
        transport_socket::ConfigType::TypedConfig(any) => Some(any),
    }
}

fn tls_refs(common: Option<&CommonTlsContext>, refs: &mut Vec<Reference>) {
    let Some(common) = common else { return };
    for sds in &common.tls_certificate_sds_secret_configs {
        refs.push((ResourceType::Secret, sds.name.clone()));
    }
    match &common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            refs.push((ResourceType::Secret, sds.name.clone()));
        }
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) => {
            if let Some(sds) = &combined.validation_context_sds_secret_config {
                refs.push((ResourceType::Secret, sds.name.clone()));
            }
        }
        _ => {}
    }
}

fn chain_refs(chain: &FilterChain, refs: &mut Vec<Reference>) -> Result<(), String> {
    if let Some(tls) = typed::<DownstreamTlsContext>(transport_config(chain.transport_socket.as_ref()))? {
        tls_refs(tls.common_tls_context.as_ref(), refs);
    }
    for f in &chain.filters {
        let config = match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        if let Some(hcm) = typed::<HttpConnectionManager>(config)? {
            match &hcm.route_specifier {
                Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                    refs.push((ResourceType::Route, rds.route_config_name.clone()));
                }
                Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => route_config_refs(rc, refs),
                _ => {}
            }
            let provider = hcm.tracing.as_ref().and_then(|t| t.provider.as_ref());
            let zipkin = provider.and_then(|p| match &p.config_type {
                Some(envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType::TypedConfig(any)) => {
                    Some(any)
                }
                _ => None,
            });
            if let Some(z) = typed::<ZipkinConfig>(zipkin)? {
                refs.push((ResourceType::Cluster, z.collector_cluster));
            }
        }
        if let Some(tcp) = typed::<TcpProxy>(config)? {
            match tcp.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => refs.push((ResourceType::Cluster, c)),
                Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                    refs.extend(w.clusters.into_iter().map(|c| (ResourceType::Cluster, c.name)));
                }
                None => {}
            }
        }
    }
    Ok(())
}

fn route_config_refs(rc: &RouteConfiguration, refs: &mut Vec<Reference>) {
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            let Some(route::Action::Route(action)) = &r.action else { continue };
            match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => refs.push((ResourceType::Cluster, c.clone())),
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    refs.extend(w.clusters.iter().map(|c| (ResourceType::Cluster, c.name.clone())));
                }
                _ => {}
            }
        }
    }
}

/// Checks that everything each resource of `snap` names is in `snap`.
pub fn check(snap: &ProxySnapshot) -> Result<(), SnapshotError> {
    check_with(snap, &mut Checked::default())
}

/// Pairs of sets (the set whose resources name, the set of the type they name) already found complete.
/// Snapshots share sets ([`crate::snapshot::SetCache`]), so most proxies of a batch repeat pairs an earlier
/// proxy had: the check of a snapshot is then a lookup per pair. The pairs hold their sets, so an address
/// is never reused while it is a key (a build cache clears it with every batch).
#[derive(Debug, Default)]
pub struct Checked(HashMap<(usize, usize), (Arc<TypeResources>, Arc<TypeResources>)>);

impl Checked {
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// [`check`], skipping pairs of sets `checked` already holds and adding those found complete.
pub fn check_with(snap: &ProxySnapshot, checked: &mut Checked) -> Result<(), SnapshotError> {
    for from in ResourceType::ALL {
        let set = snap.shared(from);
        if set.resources().is_empty() {
            continue;
        }
        for to in ResourceType::ALL {
            let target = snap.shared(to);
            let pair = (Arc::as_ptr(set) as usize, Arc::as_ptr(target) as usize);
            if checked.0.contains_key(&pair) {
                continue;
            }
            for r in set.resources().values() {
                let refs = r.references(from).as_ref().map_err(|reason| SnapshotError::Undecodable {
                    kind: from,
                    name: r.name.clone(),
                    reason: reason.clone(),
                })?;
                for (kind, name) in refs.iter().filter(|(kind, _)| *kind == to) {
                    if !target.resources().contains_key(name.as_str()) {
                        return Err(SnapshotError::Dangling {
                            kind: *kind,
                            name: name.clone(),
                            by: format!("{from} {:?}", r.name),
                        });
                    }
                }
            }
            checked.0.insert(pair, (set.clone(), target.clone()));
        }
    }
    Ok(())
}

impl Resource {
    /// What this resource (of type `ty`) names, decoded from its body once.
    pub fn references(&self, ty: ResourceType) -> &Result<Vec<Reference>, String> {
        self.refs.get_or_init(|| references_of(ty, &self.body))
    }
}
