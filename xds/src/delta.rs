//! Incremental (delta) ADS session: a pure state machine.
//!
//! Per type the session tracks what the proxy holds (name → version). A response carries only resources
//! whose version differs, and `removed_resources` for ones that went away. The first request of a type is
//! always answered (even empty) so Envoy finishes its initial fetch; an ACK is a request with a nonce and
//! no subscription change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as PbResource,
};

use crate::snapshot::{ProxySnapshot, ResourceType};
use crate::sotw::{Nack, Outcome};

#[derive(Debug, Default)]
struct TypeState {
    started: bool,
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// What the proxy holds: name → version.
    held: BTreeMap<String, String>,
    pending_first: bool,
}

#[derive(Debug, Default)]
pub struct DeltaSession {
    types: HashMap<ResourceType, TypeState>,
    snapshot: Option<Arc<ProxySnapshot>>,
    nonce: u64,
}

impl DeltaSession {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn on_request(&mut self, req: &DeltaDiscoveryRequest) -> Outcome<DeltaDiscoveryResponse> {
        let mut out = Outcome::default();
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            out.unknown_type = Some(req.type_url.clone());
            return out;
        };
        let state = self.types.entry(ty).or_default();
        // What the stream would hold after this request, at most: bounded before anything is stored.
        let count = state.subscribed.len() + req.resource_names_subscribe.len() + req.initial_resource_versions.len();
        let names = req.resource_names_subscribe.iter().chain(req.initial_resource_versions.keys());
        if let Err(e) = crate::limits::check_names(count, names) {
            out.refused = Some(e);
            return out;
        }
        if !state.started {
            state.started = true;
            state.pending_first = true;
            // An empty first subscription means "everything" for clusters and listeners.
            state.wildcard = ty.is_wildcard() && req.resource_names_subscribe.is_empty();
            // After a reconnect Envoy tells what it still holds; do not resend identical content.
            state.held = req.initial_resource_versions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.subscribed.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.subscribed.remove(name);
                // Forget it, so a later re-subscription sends it again.
                state.held.remove(name);
            }
        }
        if let Some(err) = &req.error_detail {
            out.nack =
                Some(Nack { type_url: req.type_url.clone(), version: String::new(), message: err.message.clone() });
            // The proxy refused a response and keeps what it had, in part or in whole: which versions it
            // holds of this type is no longer known. The next response of the type sends every resource
            // again, not only what changed after the refused one; none is sent for the refusal itself, as
            // the same content would only be refused again.
            for version in state.held.values_mut() {
                version.clear();
            }
            if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
                return out;
            }
        }
        out.responses = self.respond_with_endpoints(ty);
        out
    }

    pub fn on_snapshot(&mut self, snap: Arc<ProxySnapshot>) -> Vec<DeltaDiscoveryResponse> {
        self.snapshot = Some(snap);
        ResourceType::ALL.into_iter().flat_map(|ty| self.respond_with_endpoints(ty)).collect()
    }

    /// Responds for `ty`; after clusters that replace ones the proxy held, also sends their endpoints:
    /// Envoy re-warms an updated cluster and waits for its endpoints again, even unchanged ones. This holds
    /// for a reconnect too, where the proxy reported what it held in `initial_resource_versions`.
    fn respond_with_endpoints(&mut self, ty: ResourceType) -> Vec<DeltaDiscoveryResponse> {
        let before = self.types.get(&ty).map(|t| t.held.clone()).unwrap_or_default();
        let Some(r) = self.respond(ty) else { return Vec::new() };
        let mut out = vec![r];
        if ty == ResourceType::Cluster {
            let updated: Vec<String> =
                out[0].resources.iter().filter(|x| before.contains_key(&x.name)).map(|x| x.name.clone()).collect();
            if let Some(eds) = self.types.get_mut(&ResourceType::Endpoint)
                && !updated.is_empty()
            {
                for name in &updated {
                    eds.held.remove(name);
                }
                out.extend(self.respond(ResourceType::Endpoint));
            }
        }
        out
    }

    fn respond(&mut self, ty: ResourceType) -> Option<DeltaDiscoveryResponse> {
        let snap = self.snapshot.clone()?;
        let state = self.types.get_mut(&ty)?;
        let res = snap.get(ty).resources();
        let in_scope = |name: &str| state.wildcard || state.subscribed.contains(name);
        let mut resources = Vec::new();
        for (name, r) in res {
            if in_scope(name) && state.held.get(name) != Some(&r.version) {
                resources.push(PbResource {
                    name: name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> =
            state.held.keys().filter(|name| !res.contains_key(*name) || !in_scope(name)).cloned().collect();
        if resources.is_empty() && removed.is_empty() && !state.pending_first {
            return None;
        }
        state.pending_first = false;
        for r in &resources {
            state.held.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            state.held.remove(name);
        }
        self.nonce += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: snap.get(ty).version_of(None),
            resources,
            type_url: ty.type_url().to_owned(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Resource;
    use envoy_types::pb::google::protobuf::Any;

    fn snap(clusters: &[(&str, &str)]) -> Arc<ProxySnapshot> {
        let mut s = ProxySnapshot::default();
        for (name, body) in clusters {
            s.insert(
                ResourceType::Cluster,
                Arc::new(Resource::new(*name, Any { type_url: "t".into(), value: body.as_bytes().to_vec() })),
            )
            .unwrap();
        }
        Arc::new(s)
    }

    fn req(ty: ResourceType, sub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn wildcard_sends_changes_and_removals_only() {
        let mut s = DeltaSession::new();
        s.on_snapshot(snap(&[("a", "1"), ("b", "1")]));
        let r = s.on_request(&req(ResourceType::Cluster, &[], "")).responses;
        assert_eq!(r[0].resources.len(), 2);
        assert!(s.on_request(&req(ResourceType::Cluster, &[], &r[0].nonce)).responses.is_empty());
        let r = s.on_snapshot(snap(&[("a", "2")]));
        assert_eq!(r[0].resources.len(), 1);
        assert_eq!(r[0].resources[0].name, "a");
        assert_eq!(r[0].removed_resources, vec!["b"]);
        assert!(s.on_snapshot(snap(&[("a", "2")])).is_empty());
    }

    #[test]
    fn an_updated_cluster_is_followed_by_its_endpoints() {
        let mut s = DeltaSession::new();
        let mut snapshot = ProxySnapshot::default();
        let body = |v: &str| Any { type_url: "t".into(), value: v.as_bytes().to_vec() };
        snapshot.insert(ResourceType::Cluster, Arc::new(Resource::new("a", body("c1")))).unwrap();
        snapshot.insert(ResourceType::Endpoint, Arc::new(Resource::new("a", body("e1")))).unwrap();
        s.on_snapshot(Arc::new(snapshot));
        let cds = s.on_request(&req(ResourceType::Cluster, &[], "")).responses;
        s.on_request(&req(ResourceType::Cluster, &[], &cds[0].nonce));
        let eds = s.on_request(&req(ResourceType::Endpoint, &["a"], "")).responses;
        assert_eq!(eds[0].resources.len(), 1);
        let mut changed = ProxySnapshot::default();
        changed.insert(ResourceType::Cluster, Arc::new(Resource::new("a", body("c2")))).unwrap();
        changed.insert(ResourceType::Endpoint, Arc::new(Resource::new("a", body("e1")))).unwrap();
        let out = s.on_snapshot(Arc::new(changed));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].type_url, ResourceType::Endpoint.type_url());
        assert_eq!(out[1].resources[0].name, "a");
    }

    #[test]
    fn after_a_reconnect_an_updated_cluster_still_gets_its_endpoints() {
        let body = |v: &str| Any { type_url: "t".into(), value: v.as_bytes().to_vec() };
        let mut snapshot = ProxySnapshot::default();
        snapshot.insert(ResourceType::Cluster, Arc::new(Resource::new("a", body("c2")))).unwrap();
        let cla = Arc::new(Resource::new("a", body("e1")));
        snapshot.insert(ResourceType::Endpoint, cla.clone()).unwrap();
        let mut s = DeltaSession::new();
        s.on_snapshot(Arc::new(snapshot));
        // The proxy held the old cluster and the current endpoints; it asks for endpoints first.
        let mut eds = req(ResourceType::Endpoint, &["a"], "");
        eds.initial_resource_versions.insert("a".into(), cla.version.clone());
        assert!(s.on_request(&eds).responses[0].resources.is_empty());
        let mut cds = req(ResourceType::Cluster, &[], "");
        cds.initial_resource_versions.insert("a".into(), "old".into());
        let out = s.on_request(&cds).responses;
        assert_eq!(out.len(), 2, "cluster, then its endpoints");
        assert_eq!(out[1].type_url, ResourceType::Endpoint.type_url());
        assert_eq!(out[1].resources[0].name, "a");
    }

    #[test]
    fn after_a_nack_nothing_is_sent_at_once_and_the_next_change_sends_the_type_again_in_full() {
        let mut s = DeltaSession::new();
        s.on_snapshot(snap(&[("a", "1"), ("b", "1")]));
        let r = s.on_request(&req(ResourceType::Cluster, &[], "")).responses;
        s.on_request(&req(ResourceType::Cluster, &[], &r[0].nonce));
        let update = s.on_snapshot(snap(&[("a", "2"), ("b", "1")]));
        assert_eq!(update[0].resources.len(), 1);
        let mut nack = req(ResourceType::Cluster, &[], &update[0].nonce);
        nack.error_detail =
            Some(envoy_types::pb::google::rpc::Status { message: "bad a".into(), ..Default::default() });
        let out = s.on_request(&nack);
        assert!(out.nack.is_some() && out.responses.is_empty(), "no resend of what was refused");
        // A later change of b alone still carries a and b: the proxy may hold neither as sent.
        let r = s.on_snapshot(snap(&[("a", "2"), ("b", "2")]));
        assert_eq!(r[0].resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        assert!(r[0].removed_resources.is_empty());
    }

    #[test]
    fn first_request_is_answered_even_when_empty() {
        let mut s = DeltaSession::new();
        s.on_snapshot(snap(&[]));
        let r = s.on_request(&req(ResourceType::Listener, &[], "")).responses;
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty());
    }

    #[test]
    fn named_subscriptions_and_reconnect_with_initial_versions() {
        let mut s = DeltaSession::new();
        let snapshot = snap(&[("a", "1"), ("b", "1")]);
        let va = snapshot.get(ResourceType::Cluster).resources()["a"].version.clone();
        s.on_snapshot(snapshot);
        let mut first = req(ResourceType::Cluster, &["a", "b"], "");
        first.initial_resource_versions.insert("a".into(), va);
        let r = s.on_request(&first).responses;
        assert_eq!(r[0].resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["b"]);
        let mut unsub = req(ResourceType::Cluster, &[], &r[0].nonce);
        unsub.resource_names_unsubscribe = vec!["b".into()];
        assert!(s.on_request(&unsub).responses.is_empty());
    }
}
