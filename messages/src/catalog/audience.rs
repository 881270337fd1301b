//! Whom a change reaches: the proxies whose configuration a changed policy, Service or pod touches (see
//! ARCHITECTURE.md, "Policy").

use super::*;

impl MeshCatalog {
    /// The proxies that see these Services: in permissive mode every proxy; in SMI mode the pods behind them
    /// (the Services are local to them) and the proxies of every identity allowed to call one of those pods.
    /// A Service in a TrafficSplit reaches every proxy (splits are rare; their audience is wider).
    pub(super) fn service_audience(&self, keys: &[ServiceKey]) -> Dirty {
        if keys.is_empty() {
            return Dirty::Nothing;
        }
        if self.settings.permissive {
            return Dirty::All;
        }
        let split = |k: &ServiceKey| {
            self.policy.splits.contains_key(k) || self.policy.splits.values().flatten().any(|(b, _)| b == k)
        };
        if keys.iter().any(split) {
            return Dirty::All;
        }
        let mut behind: BTreeSet<ServiceIdentity> = BTreeSet::new();
        let mut proxies: BTreeSet<ProxyUuid> = BTreeSet::new();
        // A Service that is an ingress source: its endpoints are the backends' allowed addresses.
        let backends: Vec<ServiceKey> = keys.iter().flat_map(|k| self.policy.ingress_backends_of(k)).cloned().collect();
        if let Dirty::Proxies(p) = self.pods_behind_services(&backends) {
            proxies.extend(p);
        }
        for svc in keys.iter().filter_map(|k| self.services.get(k)) {
            for pod in self.pods_behind(svc) {
                behind.insert(pod.identity());
                proxies.insert(pod.proxy_uuid.clone());
            }
        }
        let callers = self.policy.outbound.iter().filter(|(_, dests)| !dests.is_disjoint(&behind)).map(|(src, _)| src);
        match self.proxies_of(callers) {
            Dirty::Proxies(p) => proxies.extend(p),
            Dirty::All => return Dirty::All,
            Dirty::Nothing => {}
        }
        if proxies.is_empty() { Dirty::Nothing } else { Dirty::Proxies(proxies) }
    }

    /// The proxies of the pods behind these Services (their inbound side changes).
    pub(super) fn pods_behind_services(&self, keys: &[ServiceKey]) -> Dirty {
        if keys.is_empty() {
            return Dirty::Nothing;
        }
        if self.settings.permissive {
            return Dirty::All;
        }
        let proxies: BTreeSet<ProxyUuid> = keys
            .iter()
            .filter_map(|k| self.services.get(k))
            .flat_map(|svc| self.pods_behind(svc))
            .map(|p| p.proxy_uuid.clone())
            .collect();
        if proxies.is_empty() { Dirty::Nothing } else { Dirty::Proxies(proxies) }
    }

    /// The pods a Service is local to: those its selector matches and those its Endpoints list by address.
    pub(super) fn pods_behind<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Pod> + 'a {
        let listed = self
            .endpoint_objects(&svc.key)
            .flat_map(|e| e.subsets.iter().flat_map(|s| s.addresses.iter()))
            .flat_map(|ip| self.pods_at(*ip));
        self.selected_pods(svc).chain(listed)
    }

    /// The proxies a pod's change reaches: its own, and the audience of every Service it backs (selected by
    /// labels, or listed by address in its namespace's Endpoints).
    pub(super) fn pod_audience(&self, key: &NsName) -> Dirty {
        if self.settings.permissive {
            return Dirty::All;
        }
        let Some(pod) = self.pods.get(key) else { return Dirty::Nothing };
        let ns = &pod.namespace;
        let mut backs: Vec<ServiceKey> = self
            .services
            .range(ServiceKey::new(ns.clone(), "")..)
            .take_while(|(k, _)| &k.namespace == ns)
            .filter(|(_, svc)| {
                svc.selector
                    .as_ref()
                    .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(ip) = pod.ip {
            for kind in [Kind::Endpoints, Kind::EndpointSlice] {
                let listing = self
                    .endpoints
                    .range(ObjectKey::new(kind, ns.clone(), "")..)
                    .take_while(|(k, _)| k.kind == kind && &k.namespace == ns)
                    .filter(|(_, e)| e.subsets.iter().any(|s| s.addresses.contains(&ip)))
                    .map(|(_, e)| e.service.clone());
                backs.extend(listing);
            }
        }
        Dirty::Proxies(BTreeSet::from([pod.proxy_uuid.clone()])).merge(self.service_audience(&backs))
    }

    /// Recomputes the policy after policy objects or Services changed; dirty are the proxies whose
    /// configuration the difference reaches (see ARCHITECTURE.md, "Policy").
    pub(super) fn refresh_policy(&mut self) -> Dirty {
        if !std::mem::take(&mut self.policy_stale) {
            return Dirty::Nothing;
        }
        let services = &self.services;
        let mut new = policy::compute(
            self.objects::<TrafficTarget>(),
            self.objects::<HttpRouteGroup>(),
            self.objects::<TcpRoute>(),
            self.objects::<TrafficSplit>(),
            |k| services.contains_key(k),
        );
        let mesh_configs: Vec<ObjectKey> = self.objects::<MeshConfig>().map(Keyed::object_key).collect();
        if let [first, others @ ..] = mesh_configs.as_slice() {
            for other in others.iter().cloned() {
                new.errors.push(PolicyError {
                    code: policy::codes::MULTIPLE_MESH_CONFIGS,
                    object: other,
                    reason: format!("{first} is the MeshConfig in force; this one is ignored"),
                });
            }
        }
        if let Some(mc) = self.retained_mesh_config.as_ref().filter(|_| self.mesh_config_deleted()) {
            new.errors.push(PolicyError {
                code: policy::codes::MESH_CONFIG_DELETED,
                object: ObjectKey::new(Kind::MeshConfig, mc.namespace.clone(), mc.name.clone()),
                reason: "it was deleted; its last settings stay in force until a MeshConfig is created again"
                    .to_owned(),
            });
        }
        new.retries = policy::retries(self.objects::<Retry>());
        let services = &self.services;
        new.upstream_traffic = policy::upstream_traffic(
            self.objects::<UpstreamTrafficSetting>(),
            |k| services.contains_key(k),
            &mut new.errors,
        );
        new.ingress = policy::ingress(self.objects::<IngressBackend>(), |k| services.contains_key(k), &mut new.errors);
        let old = std::mem::replace(&mut self.policy, new);
        // Retries change outbound routes in either mode: the proxies of every source whose retries changed.
        let mut dirty = self.proxies_of(old.changed_retries(&self.policy).iter());
        // Upstream settings change the Service's clusters at its callers and its own sidecars' limits.
        dirty = dirty.merge(self.service_audience(&old.changed_upstream_traffic(&self.policy)));
        // Ingress changes the backends' own inbound listeners.
        let backends = old.changed_ingress(&self.policy);
        dirty = dirty.merge(self.pods_behind_services(&backends));
        if !self.settings.permissive {
            // Access rules matter in SMI mode only: the proxies of every identity whose rules changed.
            let ids = old.changed_identities(&self.policy);
            dirty = dirty.merge(self.proxies_of(ids.iter()));
        }
        for apex in old.changed_splits(&self.policy) {
            dirty = dirty.merge(self.split_audience(&apex, &old));
        }
        dirty
    }

    /// Proxies that see a change of `apex`'s split: those that may call it, and the pods behind its old and
    /// new backends (they accept the apex's host names).
    pub(super) fn split_audience(&self, apex: &ServiceKey, old: &Policy) -> Dirty {
        if self.settings.permissive {
            return Dirty::All;
        }
        let mut behind: BTreeSet<ServiceIdentity> = BTreeSet::new();
        let backends = [old, &self.policy].into_iter().flat_map(|p| p.splits.get(apex)).flatten().map(|(b, _)| b);
        for svc in std::iter::once(apex).chain(backends) {
            if let Some(svc) = self.services.get(svc) {
                behind.extend(self.pods_behind(svc).map(Pod::identity));
            }
        }
        let callers: BTreeSet<ServiceIdentity> = [old, &self.policy]
            .into_iter()
            .flat_map(|p| p.outbound.iter())
            .filter(|(_, dests)| !dests.is_disjoint(&behind))
            .map(|(src, _)| src.clone())
            .collect();
        self.proxies_of(behind.iter().chain(callers.iter()))
    }

    pub(super) fn proxies_of<'a>(&self, ids: impl Iterator<Item = &'a ServiceIdentity>) -> Dirty {
        let set: BTreeSet<ProxyUuid> = ids
            .flat_map(|id| self.pods_by_identity.get(id).into_iter().flatten())
            .filter_map(|k| self.pods.get(k))
            .map(|p| p.proxy_uuid.clone())
            .collect();
        if set.is_empty() { Dirty::Nothing } else { Dirty::Proxies(set) }
    }
}
