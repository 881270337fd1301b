//! "Can this pod reach that Service?", answered from the catalog step by step: the pods and the Service,
//! its endpoints and split, the policy (naming the TrafficTarget that is missing), and whether the
//! source's configuration holds the route. The controller adds what only it knows (connected and synced
//! sidecars, certificates) and `osm verify connectivity` prints it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::catalog::MeshCatalog;
use crate::model::{ProxyUuid, ServiceIdentity, ServiceKey};

/// One step of a path check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStep {
    pub step: String,
    pub ok: bool,
    /// What was found, or what blocks the path and how to fix it.
    pub detail: String,
}

/// The steps, and the proxies a caller checks further (their sidecars' status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCheck {
    pub steps: Vec<PathStep>,
    pub source: Option<(ProxyUuid, ServiceIdentity)>,
    pub destinations: Vec<(ProxyUuid, ServiceIdentity)>,
}

impl PathCheck {
    fn push(&mut self, step: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.steps.push(PathStep { step: step.to_owned(), ok, detail: detail.into() });
        ok
    }
}

impl MeshCatalog {
    /// Checks the path from pod `from` (namespace, name) to Service `to`, on `port` (a Service port) or
    /// every port. Stops at the first step that makes the rest meaningless (no pod, no Service).
    pub fn check_path(&self, from: (&str, &str), to: &ServiceKey, port: Option<u16>) -> PathCheck {
        let mut c = PathCheck::default();
        let Some(pod) = self.pod(from.0, from.1) else {
            c.push("source pod", false, format!("pod {}/{} is not in the mesh", from.0, from.1));
            return c;
        };
        let src = pod.identity();
        c.source = Some((pod.proxy_uuid.clone(), src.clone()));
        c.push("source pod", true, format!("{}/{} runs as {src} (proxy {})", pod.namespace, pod.name, pod.proxy_uuid));
        let Some(svc) = self.service_view_of(to) else {
            c.push("destination Service", false, format!("Service {to} does not exist (or has no ports)"));
            return c;
        };
        let ports: Vec<_> = svc.ports.iter().filter(|p| port.is_none_or(|n| p.port == n)).collect();
        if ports.is_empty() {
            let have: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
            c.push(
                "destination Service",
                false,
                format!("Service {to} has no port {:?} (ports: {})", port, have.join(", ")),
            );
            return c;
        }
        let described: Vec<String> =
            ports.iter().map(|p| format!("{} → {} ({:?})", p.port, p.target_port, p.protocol)).collect();
        c.push("destination Service", true, format!("{to} ports {}", described.join(", ")));

        // Where requests go: the Service's own endpoints, or its split's backends.
        let backends: Vec<ServiceKey> = match self.policy().splits.get(to) {
            Some(split) => {
                let weights: Vec<String> = split.iter().map(|(b, w)| format!("{b} ({w})")).collect();
                c.push("traffic split", true, format!("{to} is split to {}", weights.join(", ")));
                split.iter().map(|(b, _)| b.clone()).collect()
            }
            None => vec![to.clone()],
        };
        let mut destinations: BTreeSet<(ProxyUuid, ServiceIdentity)> = BTreeSet::new();
        let mut endpoints = 0;
        for b in &backends {
            let Some(view) = self.service_view_of(b) else { continue };
            for p in view.ports.iter().filter(|p| ports.iter().any(|q| q.port == p.port)) {
                endpoints += p.endpoints.len();
                for a in &p.endpoints {
                    destinations.extend(self.pods_at(a.ip()).map(|pod| (pod.proxy_uuid.clone(), pod.identity())));
                }
            }
        }
        if !c.push(
            "endpoints",
            endpoints > 0,
            if endpoints > 0 {
                let ids: BTreeSet<String> = destinations.iter().map(|(_, i)| i.to_string()).collect();
                let ids: Vec<String> = ids.into_iter().collect();
                format!("{endpoints} endpoint(s), served by {}", if ids.is_empty() { "no mesh pod".to_owned() } else { ids.join(", ") })
            } else {
                format!("no endpoints for {to} on {described:?}: no ready pod matches its selector, and no Endpoints list one", described = described)
            },
        ) {
            c.destinations = destinations.into_iter().collect();
            return c;
        }
        let dest_ids: BTreeSet<ServiceIdentity> = destinations.iter().map(|(_, i)| i.clone()).collect();
        c.destinations = destinations.into_iter().collect();

        if self.settings().permissive {
            c.push("policy", true, "permissive mode: every mesh Service may call every other");
        } else {
            let allowed = self.policy().outbound.get(&src).cloned().unwrap_or_default();
            let denied: Vec<&ServiceIdentity> = dest_ids.iter().filter(|d| !allowed.contains(*d)).collect();
            let target_ports: BTreeSet<String> = ports.iter().map(|p| p.target_port.to_string()).collect();
            let target_ports: Vec<String> = target_ports.into_iter().collect();
            if denied.is_empty() {
                let targets = self.targets_between(&src, &dest_ids);
                c.push("policy", true, format!("allowed by TrafficTarget {}", targets.join(", ")));
            } else {
                let missing: Vec<String> = denied
                    .iter()
                    .map(|d| {
                        format!(
                            "no TrafficTarget allows {src} to reach {d}: add one in namespace {ns} with destination \
                             ServiceAccount {sa} and source ServiceAccount {src_sa} (namespace {src_ns}), and an \
                             HTTPRouteGroup or TCPRoute rule for port {tp}",
                            ns = d.namespace,
                            sa = d.service_account,
                            src_sa = src.service_account,
                            src_ns = src.namespace,
                            tp = target_ports.join(", ")
                        )
                    })
                    .collect();
                let errors: Vec<String> = self
                    .policy_errors()
                    .iter()
                    .filter(|e| denied.iter().any(|d| e.object.namespace == d.namespace))
                    .map(|e| format!("{} {} is not in force: {}", e.code, e.object, e.reason))
                    .collect();
                let mut detail = missing.join("; ");
                if !errors.is_empty() {
                    detail.push_str(&format!(" (related: {})", errors.join("; ")));
                }
                c.push("policy", false, detail);
            }
        }

        // What the controller generated for the source holds a cluster per port of the Service.
        let view = self.proxy_view(&pod.proxy_uuid);
        let holds = view.as_ref().is_some_and(|v| v.upstream.iter().any(|s| &s.key == to));
        c.push(
            "source configuration",
            holds,
            if holds {
                format!("{}'s configuration routes to {to}", pod.name)
            } else {
                format!("{}'s configuration has no route to {to} (see the steps above)", pod.name)
            },
        );
        c
    }

    /// TrafficTargets naming `src` as a source and one of `dests` as destination.
    fn targets_between(&self, src: &ServiceIdentity, dests: &BTreeSet<ServiceIdentity>) -> Vec<String> {
        self.traffic_targets()
            .filter(|t| {
                let d = ServiceIdentity::new(t.destination.name.clone(), t.destination.namespace.clone());
                dests.contains(&d)
                    && t.sources.iter().any(|s| s.name == src.service_account && s.namespace == src.namespace)
            })
            .map(|t| format!("{}/{}", t.namespace, t.name))
            .collect()
    }
}
