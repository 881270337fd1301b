//! Which policy objects shape one pod's sidecar, and how (`osm policy get`): a read of the catalog, built
//! from the same policy the sidecars are configured from.

use super::*;
use crate::status::{AppliedPolicy, PodPolicies};

/// A rate limit's time unit, as OSM names it.
fn per(unit: std::time::Duration) -> String {
    match unit.as_secs() {
        1 => "second".to_owned(),
        60 => "minute".to_owned(),
        3600 => "hour".to_owned(),
        _ => format!("{unit:?}"),
    }
}

fn subject_is(s: &Subject, id: &ServiceIdentity) -> bool {
    s.kind == "ServiceAccount" && s.name == id.service_account && s.namespace == id.namespace
}

impl MeshCatalog {
    /// The policies of pod `namespace/name`, or `None` if the catalog has no such pod.
    pub fn pod_policies(&self, namespace: &str, name: &str) -> Option<PodPolicies> {
        let pod = self.pod(namespace, name)?;
        let identity = pod.identity();
        let view = self.proxy_view(&pod.proxy_uuid);
        let backs: Vec<ServiceKey> = view.iter().flat_map(|v| v.local.iter().map(|s| s.key.clone())).collect();
        let calls: Vec<ServiceKey> = view.iter().flat_map(|v| v.upstream.iter().map(|s| s.key.clone())).collect();
        let problems_of = |kind: Kind, ns: &str, n: &str| -> Vec<String> {
            let key = ObjectKey::new(kind, ns, n);
            self.policy
                .errors
                .iter()
                .filter(|e| e.object == key)
                .map(|e| format!("[{}] {}", e.code, e.reason))
                .collect()
        };
        let mut applied = Vec::new();
        let mut push = |kind: Kind, ns: &str, n: &str, direction: &str, effect: String, mut extra: Vec<String>| {
            let mut problems = problems_of(kind, ns, n);
            problems.append(&mut extra);
            applied.push(AppliedPolicy {
                kind: kind.name().to_owned(),
                object: format!("{ns}/{n}"),
                direction: direction.to_owned(),
                effect,
                problems,
            });
        };
        let permissive = self.settings.permissive;
        let not_in_force = || {
            if permissive {
                vec!["not in force: the mesh is in permissive mode (every identity may call every Service)".to_owned()]
            } else {
                Vec::new()
            }
        };
        for tt in self.objects::<TrafficTarget>() {
            let sources: Vec<String> = tt.sources.iter().map(|s| format!("{}/{}", s.namespace, s.name)).collect();
            if subject_is(&tt.destination, &identity) {
                let effect = format!("admits {} to {identity}", sources.join(", "));
                push(Kind::TrafficTarget, &tt.namespace, &tt.name, "inbound", effect, not_in_force());
            }
            if tt.sources.iter().any(|s| subject_is(s, &identity)) {
                let d = &tt.destination;
                let effect = format!("lets {identity} call {}/{}", d.namespace, d.name);
                push(Kind::TrafficTarget, &tt.namespace, &tt.name, "outbound", effect, not_in_force());
            }
        }
        for r in self.objects::<Retry>() {
            if r.source != identity {
                continue;
            }
            let dests: Vec<String> = r.destinations.iter().map(ToString::to_string).collect();
            let effect = format!(
                "retries requests to {} ({}; {} retries, {:?} per try)",
                dests.join(", "),
                r.policy.retry_on,
                r.policy.num_retries,
                r.policy.per_try_timeout
            );
            let off = (!self.settings.retry_policy)
                .then(|| "not in force: the MeshConfig's featureFlags.enableRetryPolicy is off".to_owned());
            push(Kind::Retry, &r.namespace, &r.name, "outbound", effect, off.into_iter().collect());
        }
        for (svc, uts) in &self.policy.upstream_traffic {
            let (ns, n) = (&uts.namespace, &uts.name);
            if backs.contains(svc) {
                let mut limits = Vec::new();
                if let Some(t) = &uts.tcp_rate_limit {
                    limits.push(format!("{} connections per {}", t.connections.per_unit, per(t.connections.unit)));
                }
                if let Some(h) = &uts.http_rate_limit {
                    limits.push(format!("{} requests per {}", h.requests.per_unit, per(h.requests.unit)));
                }
                if !uts.route_rate_limits.is_empty() {
                    limits.push(format!("{} routes with limits of their own", uts.route_rate_limits.len()));
                }
                if !limits.is_empty() {
                    let effect = format!("limits what it accepts for {svc}: {}", limits.join(", "));
                    push(Kind::UpstreamTrafficSetting, ns, n, "inbound", effect, Vec::new());
                }
            }
            if calls.contains(svc) {
                let c = &uts.connection;
                let set: Vec<String> = [
                    ("max connections", c.max_connections),
                    ("max requests", c.max_requests),
                    ("max pending requests", c.max_pending_requests),
                    ("max retries", c.max_retries),
                    ("max requests per connection", c.max_requests_per_connection),
                ]
                .iter()
                .filter_map(|(what, v)| v.map(|v| format!("{what} {v}")))
                .chain(c.connect_timeout.map(|t| format!("connect timeout {t:?}")))
                .collect();
                if !set.is_empty() {
                    let effect = format!("circuit breakers on calls to {svc}: {}", set.join(", "));
                    push(Kind::UpstreamTrafficSetting, ns, n, "outbound", effect, Vec::new());
                }
            }
        }
        for ((svc, port), rule) in &self.policy.ingress {
            if !backs.contains(svc) {
                continue;
            }
            let from: Vec<String> = rule
                .sources
                .iter()
                .map(|s| match s {
                    IngressSource::Service(k) => format!("Service {k}"),
                    IngressSource::IpRange(c) => c.to_string(),
                    IngressSource::AuthenticatedPrincipal(p) => format!("principal {p}"),
                })
                .collect();
            let protocol = if rule.target.https { "https" } else { "http" };
            let from = if from.is_empty() { "any address (insecure)".to_owned() } else { from.join(", ") };
            let effect = format!("admits {protocol} to {svc} port {port} from {from}");
            push(Kind::IngressBackend, &svc.namespace, &rule.policy, "ingress", effect, Vec::new());
        }
        for (apex, backends) in &self.policy.splits {
            if calls.contains(apex) {
                let to: Vec<String> = backends.iter().map(|(b, w)| format!("{b} ({w})")).collect();
                let split =
                    self.objects::<TrafficSplit>().find(|s| s.namespace == apex.namespace && s.service == apex.name);
                if let Some(s) = split {
                    let effect = format!("splits calls to {apex} between {}", to.join(", "));
                    push(Kind::TrafficSplit, &s.namespace, &s.name, "outbound", effect, Vec::new());
                }
            }
        }
        applied.sort_by(|a, b| (&a.direction, &a.kind, &a.object).cmp(&(&b.direction, &b.kind, &b.object)));
        Some(PodPolicies {
            pod: format!("{namespace}/{name}"),
            identity: identity.to_string(),
            mode: if permissive { "permissive" } else { "smi" }.to_owned(),
            backs: backs.iter().map(ToString::to_string).collect(),
            applied,
        })
    }
}
