//! The traffic policy engine: SMI objects in, per-identity access decisions out.
//!
//! Pure and synchronous (no Envoy types, no I/O): the catalog calls [`compute`] whenever a policy object
//! changes and diffs the result to find the proxies it affects; the `xds` builder turns an identity's
//! [`InboundPolicy`] into RBAC. Every object that cannot be used is reported as a [`PolicyError`] with a
//! stable code, and only the part it would have granted is dropped: policy fails closed, and a bad object
//! never produces configuration Envoy would reject.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::kinds::Model as _;
use crate::model::*;

/// Stable codes of the policy errors (also in the troubleshooting table of the docs). Codes OSM has for the
/// same condition keep OSM's number.
pub mod codes {
    /// A referenced HTTPRouteGroup does not exist in the TrafficTarget's namespace.
    pub const ROUTE_GROUP_NOT_FOUND: &str = "E2004";
    /// An HTTPRouteGroup has no matches.
    pub const ROUTE_GROUP_NO_MATCH: &str = "E2006";
    /// More than one TrafficSplit names the same apex Service; only the first (by name) is used.
    pub const MULTIPLE_SPLITS: &str = "E2007";
    /// A TrafficTarget destination is not a ServiceAccount.
    pub const INVALID_DESTINATION_KIND: &str = "E2010";
    /// A TrafficTarget source is not a ServiceAccount.
    pub const INVALID_SOURCE_KIND: &str = "E2011";
    /// A TrafficTarget lives in another namespace than its destination.
    pub const TARGET_NAMESPACE_MISMATCH: &str = "E2020";
    /// A TrafficTarget has no rules.
    pub const TARGET_NO_RULES: &str = "E2021";
    /// A rule's kind is neither HTTPRouteGroup nor TCPRoute.
    pub const UNKNOWN_ROUTE_KIND: &str = "E2022";
    /// A referenced TCPRoute does not exist in the TrafficTarget's namespace.
    pub const TCP_ROUTE_NOT_FOUND: &str = "E2023";
    /// A rule names a match its HTTPRouteGroup does not have.
    pub const MATCH_NOT_FOUND: &str = "E2024";
    /// A path or header regex is not a valid RE2 expression.
    pub const INVALID_REGEX: &str = "E2025";
    /// An HTTP method is not one of `*`, GET, HEAD, PUT, POST, DELETE, CONNECT, OPTIONS, TRACE, PATCH.
    pub const INVALID_METHOD: &str = "E2026";
    /// A TCPRoute port is not in 1-65535.
    pub const INVALID_PORT: &str = "E2027";
    /// A TrafficSplit's weights are all zero, or one is negative.
    pub const INVALID_WEIGHTS: &str = "E2028";
    /// A TrafficSplit's apex or backend Service does not exist.
    pub const SPLIT_SERVICE_NOT_FOUND: &str = "E2029";
    /// A TrafficTarget source names no namespace (it would match nobody: that source is ignored).
    pub const SOURCE_NO_NAMESPACE: &str = "E2030";
    /// An UpstreamTrafficSetting's host names no Service of its namespace (`<svc>.<ns>.svc.cluster.local`).
    pub const UPSTREAM_HOST_NOT_FOUND: &str = "E2031";
    /// Two UpstreamTrafficSettings of one namespace name the same host; only the first (by name) is used.
    pub const UPSTREAM_HOST_DUPLICATE: &str = "E2032";
    /// Two IngressBackends of one namespace name the same backend Service and port; the first (by name) holds.
    pub const INGRESS_BACKEND_DUPLICATE: &str = "E2033";
    /// An IngressBackend's backend Service, or a Service named as a source, does not exist.
    pub const INGRESS_SERVICE_NOT_FOUND: &str = "E2034";
    /// More than one MeshConfig; only the first (by namespace and name) is used.
    pub const MULTIPLE_MESH_CONFIGS: &str = "E4150";
    /// The MeshConfig in force was deleted; its last settings stay in force.
    pub const MESH_CONFIG_DELETED: &str = "E4151";
}

/// An object (or part of one) the policy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyError {
    pub code: &'static str,
    pub object: ObjectKey,
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.code, self.object, self.reason)
    }
}

/// One allowed kind of HTTP request, normalised: regexes are RE2, `*`/empty means any.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpRule {
    /// Regex the whole path must match (`.*` when the match named no path).
    pub path_regex: String,
    /// Upper-case methods; `["*"]` for any.
    pub methods: Vec<String>,
    /// (header, value regex); the `host` header is matched as `:authority`, as Envoy sees it.
    pub headers: Vec<(String, String)>,
}

impl HttpRule {
    /// Any request.
    pub fn any() -> Self {
        Self { path_regex: ".*".to_owned(), methods: vec!["*".to_owned()], headers: Vec::new() }
    }
}

/// L4 access from one TrafficTarget: its sources, to these destination ports (empty: any port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TcpGrant {
    pub sources: BTreeSet<ServiceIdentity>,
    pub ports: BTreeSet<u16>,
}

impl TcpGrant {
    pub fn covers(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// What a destination identity accepts, from whom, in SMI mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct InboundPolicy {
    /// HTTP requests allowed by HTTPRouteGroup rules, and who may send each (rules naming the same match
    /// are merged).
    pub http: BTreeMap<HttpRule, BTreeSet<ServiceIdentity>>,
    /// L4 access by TrafficTarget (`<ns>/<name>`) from TCPRoute rules.
    pub tcp: BTreeMap<String, TcpGrant>,
}

impl InboundPolicy {
    /// The HTTP rules in force on one target port: the HTTPRouteGroup rules, plus "any request" for the
    /// sources of TCP grants that cover the port (L4 access to a port includes every request on it).
    pub fn http_rules_for_port(&self, port: u16) -> BTreeMap<HttpRule, BTreeSet<ServiceIdentity>> {
        let mut rules = self.http.clone();
        for grant in self.tcp.values().filter(|g| g.covers(port)) {
            rules.entry(HttpRule::any()).or_default().extend(grant.sources.iter().cloned());
        }
        rules
    }
}

/// The policy in force, from every TrafficTarget, route and TrafficSplit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Destination identity → what it accepts. An identity missing here accepts nothing (in SMI mode).
    pub inbound: BTreeMap<ServiceIdentity, Arc<InboundPolicy>>,
    /// Source identity → the destination identities it may reach.
    pub outbound: BTreeMap<ServiceIdentity, BTreeSet<ServiceIdentity>>,
    /// Apex Service → (backend Service, weight), weights as written, zero weights dropped.
    pub splits: BTreeMap<ServiceKey, Vec<(ServiceKey, u32)>>,
    /// Source identity → destination Service → how its sidecars retry requests there (Retry policies;
    /// in force when the MeshConfig's `enableRetryPolicy` is on).
    pub retries: BTreeMap<ServiceIdentity, BTreeMap<ServiceKey, RetryPolicy>>,
    /// Upstream Service → the UpstreamTrafficSetting in force for it (its clients' circuit breakers, its
    /// sidecars' rate limits).
    pub upstream_traffic: BTreeMap<ServiceKey, Arc<UpstreamTrafficSetting>>,
    /// (backend Service, target port) → who outside the mesh may reach it (IngressBackend).
    pub ingress: BTreeMap<(ServiceKey, u16), Arc<IngressRule>>,
    pub errors: Vec<PolicyError>,
}

/// One backend port of an IngressBackend in force.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressRule {
    /// The IngressBackend's name (it names the virtual host).
    pub policy: String,
    pub target: IngressTarget,
    pub sources: Vec<IngressSource>,
}

impl Policy {
    /// Identities whose inbound or outbound policy differs between `self` and `other`.
    pub fn changed_identities(&self, other: &Policy) -> BTreeSet<ServiceIdentity> {
        fn diff<V: PartialEq>(
            a: &BTreeMap<ServiceIdentity, V>,
            b: &BTreeMap<ServiceIdentity, V>,
            out: &mut BTreeSet<ServiceIdentity>,
        ) {
            for (k, v) in a {
                if b.get(k) != Some(v) {
                    out.insert(k.clone());
                }
            }
            for k in b.keys() {
                if !a.contains_key(k) {
                    out.insert(k.clone());
                }
            }
        }
        let mut out = BTreeSet::new();
        diff(&self.inbound, &other.inbound, &mut out);
        diff(&self.outbound, &other.outbound, &mut out);
        out
    }

    /// Source identities whose retry policies differ between `self` and `other` (they change outbound
    /// routes in either traffic mode).
    pub fn changed_retries(&self, other: &Policy) -> BTreeSet<ServiceIdentity> {
        let mut out: BTreeSet<ServiceIdentity> = BTreeSet::new();
        for (id, r) in &self.retries {
            if other.retries.get(id) != Some(r) {
                out.insert(id.clone());
            }
        }
        out.extend(other.retries.keys().filter(|id| !self.retries.contains_key(*id)).cloned());
        out
    }

    /// Backend Services whose ingress differs between `self` and `other`.
    pub fn changed_ingress(&self, other: &Policy) -> Vec<ServiceKey> {
        let keys: BTreeSet<&(ServiceKey, u16)> = self.ingress.keys().chain(other.ingress.keys()).collect();
        let changed: BTreeSet<ServiceKey> = keys
            .into_iter()
            .filter(|k| self.ingress.get(*k) != other.ingress.get(*k))
            .map(|(svc, _)| svc.clone())
            .collect();
        changed.into_iter().collect()
    }

    /// The backend Services whose ingress sources include `source` (their chains list its endpoints).
    pub fn ingress_backends_of<'a>(&'a self, source: &'a ServiceKey) -> impl Iterator<Item = &'a ServiceKey> + 'a {
        self.ingress
            .iter()
            .filter(move |(_, r)| r.sources.iter().any(|s| matches!(s, IngressSource::Service(k) if k == source)))
            .map(|((svc, _), _)| svc)
    }

    /// Services whose UpstreamTrafficSetting differs between `self` and `other`.
    pub fn changed_upstream_traffic(&self, other: &Policy) -> Vec<ServiceKey> {
        let keys: BTreeSet<&ServiceKey> = self.upstream_traffic.keys().chain(other.upstream_traffic.keys()).collect();
        keys.into_iter().filter(|k| self.upstream_traffic.get(*k) != other.upstream_traffic.get(*k)).cloned().collect()
    }

    /// Apex Services whose split differs between `self` and `other`.
    pub fn changed_splits(&self, other: &Policy) -> BTreeSet<ServiceKey> {
        let keys: BTreeSet<&ServiceKey> = self.splits.keys().chain(other.splits.keys()).collect();
        keys.into_iter().filter(|k| self.splits.get(*k) != other.splits.get(*k)).cloned().collect()
    }
}

const METHODS: &[&str] = &["*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
/// Longer patterns are refused: Envoy bounds the compiled size of every regex it is given.
const MAX_REGEX_LEN: usize = 1024;

/// Whether `re` is a path or header regex Envoy takes: RE2 syntax, within the size bound.
pub fn check_regex(re: &str) -> Result<(), String> {
    if re.len() > MAX_REGEX_LEN {
        return Err(format!("regex is {} characters long; the limit is {MAX_REGEX_LEN}", re.len()));
    }
    regex::RegexBuilder::new(re).size_limit(1 << 20).build().map(|_| ()).map_err(|e| {
        // The regex crate's messages span several lines with a caret diagram; the last line says what is wrong.
        let msg = e.to_string();
        let last = msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("invalid").trim().to_owned();
        format!("{re:?} is not a valid regex: {last}")
    })
}

/// A match made usable, or the reason it is not.
fn normalise(m: &HttpMatch) -> Result<HttpRule, (&'static str, String)> {
    let path_regex = m.path_regex.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| ".*".to_owned());
    check_regex(&path_regex).map_err(|e| (codes::INVALID_REGEX, format!("match {:?}: pathRegex {e}", m.name)))?;
    let mut methods = BTreeSet::new();
    for method in &m.methods {
        let upper = method.to_ascii_uppercase();
        if !METHODS.contains(&upper.as_str()) {
            return Err((
                codes::INVALID_METHOD,
                format!("match {:?}: method {method:?} is not one of {}", m.name, METHODS.join(", ")),
            ));
        }
        methods.insert(upper);
    }
    let methods =
        if methods.is_empty() || methods.contains("*") { vec!["*".to_owned()] } else { methods.into_iter().collect() };
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        check_regex(value).map_err(|e| (codes::INVALID_REGEX, format!("match {:?}: header {name:?} {e}", m.name)))?;
        let name = name.to_ascii_lowercase();
        let name = if name == "host" { ":authority".to_owned() } else { name };
        headers.push((name, value.clone()));
    }
    Ok(HttpRule { path_regex, methods, headers })
}

fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, ns, name)
}

/// Per source identity, how its sidecars retry requests to each destination Service: the first Retry
/// (by namespace and name) that names the pair holds, as in OSM.
pub fn retries<'a>(
    retries: impl IntoIterator<Item = &'a Retry>,
) -> BTreeMap<ServiceIdentity, BTreeMap<ServiceKey, RetryPolicy>> {
    let mut out: BTreeMap<ServiceIdentity, BTreeMap<ServiceKey, RetryPolicy>> = BTreeMap::new();
    for r in retries {
        let for_source = out.entry(r.source.clone()).or_default();
        for dest in &r.destinations {
            for_source.entry(dest.clone()).or_insert_with(|| r.policy.clone());
        }
    }
    out.retain(|_, dests| !dests.is_empty());
    out
}

/// The Service an UpstreamTrafficSetting's host names: `<svc>.<ns>.svc.cluster.local` with `<ns>` its own
/// namespace (OSM matches the namespace and the exact FQDN).
fn upstream_service(s: &UpstreamTrafficSetting) -> Option<ServiceKey> {
    let (svc, ns) = s.host.strip_suffix(".svc.cluster.local")?.split_once('.')?;
    (ns == s.namespace && !svc.is_empty()).then(|| ServiceKey::new(ns, svc))
}

/// Per upstream Service, the UpstreamTrafficSetting in force: the first (by namespace and name) whose host
/// is the Service's FQDN. Later ones for the same host, and hosts that name no Service, are reported.
pub fn upstream_traffic<'a>(
    settings: impl IntoIterator<Item = &'a UpstreamTrafficSetting>,
    service_exists: impl Fn(&ServiceKey) -> bool,
    errors: &mut Vec<PolicyError>,
) -> BTreeMap<ServiceKey, Arc<UpstreamTrafficSetting>> {
    let mut out: BTreeMap<ServiceKey, Arc<UpstreamTrafficSetting>> = BTreeMap::new();
    for s in settings {
        let object = key(Kind::UpstreamTrafficSetting, &s.namespace, &s.name);
        let Some(svc) = upstream_service(s).filter(|k| service_exists(k)) else {
            errors.push(PolicyError {
                code: codes::UPSTREAM_HOST_NOT_FOUND,
                object,
                reason: format!(
                    "host {:?} names no Service of namespace {} (<service>.{}.svc.cluster.local); the setting is \
                     not in force",
                    s.host, s.namespace, s.namespace
                ),
            });
            continue;
        };
        match out.get(&svc) {
            Some(first) => errors.push(PolicyError {
                code: codes::UPSTREAM_HOST_DUPLICATE,
                object,
                reason: format!(
                    "UpstreamTrafficSetting {}/{} already sets host {:?}; this one is ignored",
                    first.namespace, first.name, s.host
                ),
            }),
            None => {
                out.insert(svc, Arc::new(s.clone()));
            }
        }
    }
    out
}

/// Per (backend Service, target port), the IngressBackend in force: the first (by namespace and name) that
/// names it. Later ones for the same backend port, and Services that do not exist, are reported.
pub fn ingress<'a>(
    backends: impl IntoIterator<Item = &'a IngressBackend>,
    service_exists: impl Fn(&ServiceKey) -> bool,
    errors: &mut Vec<PolicyError>,
) -> BTreeMap<(ServiceKey, u16), Arc<IngressRule>> {
    let mut out: BTreeMap<(ServiceKey, u16), Arc<IngressRule>> = BTreeMap::new();
    for ib in backends {
        let object = key(Kind::IngressBackend, &ib.namespace, &ib.name);
        for s in &ib.sources {
            if let IngressSource::Service(k) = s
                && !service_exists(k)
            {
                errors.push(PolicyError {
                    code: codes::INGRESS_SERVICE_NOT_FOUND,
                    object: object.clone(),
                    reason: format!("source Service {k} does not exist: it admits no one"),
                });
            }
        }
        for t in &ib.backends {
            let svc = ServiceKey::new(ib.namespace.clone(), t.service.clone());
            if !service_exists(&svc) {
                errors.push(PolicyError {
                    code: codes::INGRESS_SERVICE_NOT_FOUND,
                    object: object.clone(),
                    reason: format!("backend Service {svc} does not exist"),
                });
                continue;
            }
            match out.get(&(svc.clone(), t.port)) {
                Some(first) => errors.push(PolicyError {
                    code: codes::INGRESS_BACKEND_DUPLICATE,
                    object: object.clone(),
                    reason: format!(
                        "IngressBackend {}/{} already admits ingress to {svc} port {}; this backend is ignored",
                        ib.namespace, first.policy, t.port
                    ),
                }),
                None => {
                    let rule = IngressRule { policy: ib.name.clone(), target: t.clone(), sources: ib.sources.clone() };
                    out.insert((svc, t.port), Arc::new(rule));
                }
            }
        }
    }
    out
}

/// [`compute`] over objects of any kind: the policy inputs among them are used, the rest ignored.
pub fn compute_objects(objects: &[MeshObject], service_exists: impl Fn(&ServiceKey) -> bool) -> Policy {
    let mut policy = compute(
        objects.iter().filter_map(TrafficTarget::of),
        objects.iter().filter_map(HttpRouteGroup::of),
        objects.iter().filter_map(TcpRoute::of),
        objects.iter().filter_map(TrafficSplit::of),
        &service_exists,
    );
    policy.retries = retries(objects.iter().filter_map(Retry::of));
    let settings = objects.iter().filter_map(UpstreamTrafficSetting::of);
    policy.upstream_traffic = upstream_traffic(settings, &service_exists, &mut policy.errors);
    policy.ingress = ingress(objects.iter().filter_map(IngressBackend::of), &service_exists, &mut policy.errors);
    policy
}

/// Computes the policy from every policy object. `service_exists` tells whether a Service is in the mesh
/// (TrafficSplits name Services).
pub fn compute<'a>(
    targets: impl IntoIterator<Item = &'a TrafficTarget>,
    groups: impl IntoIterator<Item = &'a HttpRouteGroup>,
    tcp_routes: impl IntoIterator<Item = &'a TcpRoute>,
    splits: impl IntoIterator<Item = &'a TrafficSplit>,
    service_exists: impl Fn(&ServiceKey) -> bool,
) -> Policy {
    let mut errors = Vec::new();

    // Route groups: each match checked once, wherever it is referenced.
    let mut group_matches: HashMap<(&str, &str), BTreeMap<&str, Option<HttpRule>>> = HashMap::new();
    for g in groups {
        let gk = key(Kind::HttpRouteGroup, &g.namespace, &g.name);
        if g.matches.is_empty() {
            errors.push(PolicyError {
                code: codes::ROUTE_GROUP_NO_MATCH,
                object: gk.clone(),
                reason: "spec.matches is empty: the group allows nothing".to_owned(),
            });
        }
        let mut matches = BTreeMap::new();
        for m in &g.matches {
            let rule = match normalise(m) {
                Ok(rule) => Some(rule),
                Err((code, reason)) => {
                    errors.push(PolicyError {
                        code,
                        object: gk.clone(),
                        reason: format!("{reason}; the match is ignored"),
                    });
                    None
                }
            };
            matches.insert(m.name.as_str(), rule);
        }
        group_matches.insert((g.namespace.as_str(), g.name.as_str()), matches);
    }
    let mut route_ports: HashMap<(&str, &str), BTreeSet<u16>> = HashMap::new();
    for r in tcp_routes {
        let mut ports = BTreeSet::new();
        for p in &r.ports {
            match u16::try_from(*p).ok().filter(|p| *p > 0) {
                Some(p) => {
                    ports.insert(p);
                }
                None => errors.push(PolicyError {
                    code: codes::INVALID_PORT,
                    object: key(Kind::TcpRoute, &r.namespace, &r.name),
                    reason: format!("port {p} is not in 1-65535; it is ignored"),
                }),
            }
        }
        // A route whose every port was invalid must not widen to "any port".
        if r.ports.is_empty() || !ports.is_empty() {
            route_ports.insert((r.namespace.as_str(), r.name.as_str()), ports);
        }
    }

    let mut inbound: BTreeMap<ServiceIdentity, InboundPolicy> = BTreeMap::new();
    let mut outbound: BTreeMap<ServiceIdentity, BTreeSet<ServiceIdentity>> = BTreeMap::new();
    for tt in targets {
        let tk = key(Kind::TrafficTarget, &tt.namespace, &tt.name);
        let mut fail = |code, reason: String| errors.push(PolicyError { code, object: tk.clone(), reason });
        if tt.destination.kind != "ServiceAccount" {
            fail(
                codes::INVALID_DESTINATION_KIND,
                format!("destination kind {:?} is not ServiceAccount; the target is ignored", tt.destination.kind),
            );
            continue;
        }
        if tt.destination.namespace.is_empty() {
            // Never read as "the TrafficTarget's namespace": an absent namespace grants nothing (as OSM,
            // which compares the empty string with the TrafficTarget's namespace and ignores the target).
            fail(
                codes::TARGET_NAMESPACE_MISMATCH,
                format!(
                    "spec.destination.namespace is missing; the target is ignored (set it to {:?}, the \
                     TrafficTarget's namespace)",
                    tt.namespace
                ),
            );
            continue;
        }
        if tt.destination.namespace != tt.namespace {
            fail(
                codes::TARGET_NAMESPACE_MISMATCH,
                format!(
                    "destination namespace {:?} differs from the TrafficTarget's namespace {:?}; the target is ignored \
                     (create it in {:?})",
                    tt.destination.namespace, tt.namespace, tt.destination.namespace
                ),
            );
            continue;
        }
        if tt.rules.is_empty() {
            fail(codes::TARGET_NO_RULES, "spec.rules is empty; the target allows nothing".to_owned());
            continue;
        }
        let mut sources = BTreeSet::new();
        for s in &tt.sources {
            if s.kind == "ServiceAccount" && s.namespace.is_empty() {
                fail(
                    codes::SOURCE_NO_NAMESPACE,
                    format!("source ServiceAccount {:?} names no namespace; that source is ignored", s.name),
                );
            } else if s.kind == "ServiceAccount" {
                sources.insert(ServiceIdentity::new(s.name.clone(), s.namespace.clone()));
            } else {
                fail(
                    codes::INVALID_SOURCE_KIND,
                    format!("source kind {:?} ({}) is not ServiceAccount; that source is ignored", s.kind, s.name),
                );
            }
        }
        let destination = ServiceIdentity::new(tt.destination.name.clone(), tt.destination.namespace.clone());
        let mut http: Vec<HttpRule> = Vec::new();
        // Ports of the TCPRoutes found (None: no TCPRoute rule holds); a route without ports means any.
        let mut tcp_ports: Option<BTreeSet<u16>> = None;
        let mut any_port = false;
        for rule in &tt.rules {
            match rule.kind.as_str() {
                "HTTPRouteGroup" => {
                    let Some(matches) = group_matches.get(&(tt.namespace.as_str(), rule.name.as_str())) else {
                        fail(
                            codes::ROUTE_GROUP_NOT_FOUND,
                            format!(
                                "HTTPRouteGroup {}/{} does not exist; the rule is ignored",
                                tt.namespace, rule.name
                            ),
                        );
                        continue;
                    };
                    // No match names: every match of the group.
                    let names: Vec<&str> = if rule.matches.is_empty() {
                        matches.keys().copied().collect()
                    } else {
                        rule.matches.iter().map(String::as_str).collect()
                    };
                    for name in names {
                        match matches.get(name) {
                            Some(Some(r)) => http.push(r.clone()),
                            Some(None) => {} // invalid; reported with the group
                            None => fail(
                                codes::MATCH_NOT_FOUND,
                                format!(
                                    "HTTPRouteGroup {}/{} has no match named {name:?}; it is ignored",
                                    tt.namespace, rule.name
                                ),
                            ),
                        }
                    }
                }
                "TCPRoute" => match route_ports.get(&(tt.namespace.as_str(), rule.name.as_str())) {
                    Some(ports) => {
                        any_port |= ports.is_empty();
                        tcp_ports.get_or_insert_with(BTreeSet::new).extend(ports.iter().copied());
                    }
                    None => fail(
                        codes::TCP_ROUTE_NOT_FOUND,
                        format!("TCPRoute {}/{} does not exist; the rule is ignored", tt.namespace, rule.name),
                    ),
                },
                other => fail(
                    codes::UNKNOWN_ROUTE_KIND,
                    format!("rule kind {other:?} is neither HTTPRouteGroup nor TCPRoute; the rule is ignored"),
                ),
            }
        }
        if any_port {
            tcp_ports = Some(BTreeSet::new());
        }
        if (http.is_empty() && tcp_ports.is_none()) || sources.is_empty() {
            continue;
        }
        let policy = inbound.entry(destination.clone()).or_default();
        for rule in http {
            policy.http.entry(rule).or_default().extend(sources.iter().cloned());
        }
        if let Some(ports) = tcp_ports {
            policy.tcp.insert(format!("{}/{}", tt.namespace, tt.name), TcpGrant { sources: sources.clone(), ports });
        }
        for s in sources {
            outbound.entry(s).or_default().insert(destination.clone());
        }
    }

    let mut split_map: BTreeMap<ServiceKey, Vec<(ServiceKey, u32)>> = BTreeMap::new();
    let mut split_owner: BTreeMap<ServiceKey, ObjectKey> = BTreeMap::new();
    let mut all_splits: Vec<&TrafficSplit> = splits.into_iter().collect();
    all_splits.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for ts in all_splits {
        let sk = key(Kind::TrafficSplit, &ts.namespace, &ts.name);
        let apex = ServiceKey::new(ts.namespace.clone(), ts.service.clone());
        let mut fail = |code, reason: String| errors.push(PolicyError { code, object: sk.clone(), reason });
        if let Some(first) = split_owner.get(&apex) {
            fail(codes::MULTIPLE_SPLITS, format!("{first} already splits Service {apex}; this split is ignored"));
            continue;
        }
        if !service_exists(&apex) {
            fail(codes::SPLIT_SERVICE_NOT_FOUND, format!("apex Service {apex} does not exist; the split is inert"));
            continue;
        }
        if let Some((b, w)) = ts.backends.iter().find(|(_, w)| *w < 0) {
            fail(codes::INVALID_WEIGHTS, format!("backend {b} has negative weight {w}; the split is ignored"));
            continue;
        }
        let mut backends = Vec::new();
        for (b, w) in &ts.backends {
            let backend = ServiceKey::new(ts.namespace.clone(), b.clone());
            if !service_exists(&backend) {
                fail(
                    codes::SPLIT_SERVICE_NOT_FOUND,
                    format!("backend Service {backend} does not exist; it is ignored"),
                );
                continue;
            }
            let w = u32::try_from(*w).unwrap_or(u32::MAX).min(1_000_000);
            if w > 0 {
                backends.push((backend, w));
            }
        }
        if backends.is_empty() {
            fail(
                codes::INVALID_WEIGHTS,
                "no backend with a weight above zero; the split is ignored and the apex Service serves itself"
                    .to_owned(),
            );
            continue;
        }
        split_owner.insert(apex.clone(), sk);
        split_map.insert(apex, backends);
    }

    errors.sort();
    errors.dedup();
    Policy {
        inbound: inbound.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        outbound,
        splits: split_map,
        // Filled from the Retry and UpstreamTrafficSetting objects by the caller (they need nothing of the
        // above).
        retries: BTreeMap::new(),
        upstream_traffic: BTreeMap::new(),
        ingress: BTreeMap::new(),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(name: &str, ns: &str) -> Subject {
        Subject { kind: "ServiceAccount".into(), name: name.into(), namespace: ns.into() }
    }

    fn target(name: &str, dest: &str, sources: &[&str], rules: Vec<TrafficTargetRule>) -> TrafficTarget {
        TrafficTarget {
            namespace: "books".into(),
            name: name.into(),
            destination: sa(dest, "books"),
            sources: sources.iter().map(|s| sa(s, "books")).collect(),
            rules,
        }
    }

    fn rule(kind: &str, name: &str, matches: &[&str]) -> TrafficTargetRule {
        TrafficTargetRule {
            kind: kind.into(),
            name: name.into(),
            matches: matches.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn group(name: &str, matches: Vec<HttpMatch>) -> HttpRouteGroup {
        HttpRouteGroup { namespace: "books".into(), name: name.into(), matches }
    }

    fn m(name: &str, path: &str, methods: &[&str], headers: &[(&str, &str)]) -> HttpMatch {
        HttpMatch {
            name: name.into(),
            path_regex: Some(path.into()),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn id(name: &str) -> ServiceIdentity {
        ServiceIdentity::new(name, "books")
    }

    fn run(targets: &[TrafficTarget], groups: &[HttpRouteGroup], tcp: &[TcpRoute]) -> Policy {
        compute(targets, groups, tcp, &[], |_| true)
    }

    fn codes_of(p: &Policy) -> Vec<&'static str> {
        p.errors.iter().map(|e| e.code).collect()
    }

    #[test]
    fn http_rules_grant_matches_to_sources_and_outbound_access_follows() {
        let groups = [group(
            "routes",
            vec![m("buy", "/buy", &["get", "POST"], &[("Host", "store.*"), ("X-Debug", "1")]), m("all", "", &[], &[])],
        )];
        let targets = [
            target("a", "bookstore", &["bookbuyer"], vec![rule("HTTPRouteGroup", "routes", &["buy"])]),
            target("b", "bookstore", &["bookthief"], vec![rule("HTTPRouteGroup", "routes", &["buy"])]),
        ];
        let p = run(&targets, &groups, &[]);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let store = &p.inbound[&id("bookstore")];
        assert_eq!(store.http.len(), 1, "rules naming the same match merge");
        let (rule, who) = store.http.iter().next().unwrap();
        assert_eq!(rule.path_regex, "/buy");
        assert_eq!(rule.methods, vec!["GET", "POST"]);
        assert_eq!(rule.headers, vec![(":authority".into(), "store.*".into()), ("x-debug".into(), "1".into())]);
        assert_eq!(who, &BTreeSet::from([id("bookbuyer"), id("bookthief")]));
        assert_eq!(p.outbound[&id("bookbuyer")], BTreeSet::from([id("bookstore")]));
        assert!(!p.outbound.contains_key(&id("bookstore")));
    }

    #[test]
    fn an_empty_match_list_means_every_match_of_the_group() {
        let groups = [group("routes", vec![m("a", "/a", &[], &[]), m("b", "/b", &["*", "GET"], &[])])];
        let p = run(&[target("t", "store", &["buyer"], vec![rule("HTTPRouteGroup", "routes", &[])])], &groups, &[]);
        let rules: Vec<_> = p.inbound[&id("store")].http.keys().cloned().collect();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].methods, vec!["*"], "* absorbs the other methods");
        assert_eq!(HttpRule::any().path_regex, ".*");
    }

    #[test]
    fn tcp_routes_restrict_ports_and_cover_http_on_those_ports() {
        let tcp = [
            TcpRoute { namespace: "books".into(), name: "mysql".into(), ports: vec![3306] },
            TcpRoute { namespace: "books".into(), name: "any".into(), ports: vec![] },
            TcpRoute { namespace: "books".into(), name: "bad".into(), ports: vec![70000] },
        ];
        let targets = [
            target("db", "mysql", &["bookstore"], vec![rule("TCPRoute", "mysql", &[])]),
            target("open", "echo", &["bookstore"], vec![rule("TCPRoute", "any", &[])]),
            target("broken", "cache", &["bookstore"], vec![rule("TCPRoute", "bad", &[])]),
        ];
        let p = run(&targets, &[], &tcp);
        assert_eq!(codes_of(&p), vec![codes::TCP_ROUTE_NOT_FOUND, codes::INVALID_PORT]);
        let db = &p.inbound[&id("mysql")];
        assert_eq!(db.tcp["books/db"].ports, BTreeSet::from([3306]));
        assert!(db.tcp["books/db"].covers(3306) && !db.tcp["books/db"].covers(8080));
        assert!(db.http_rules_for_port(3306).contains_key(&HttpRule::any()));
        assert!(db.http_rules_for_port(8080).is_empty());
        assert!(p.inbound[&id("echo")].tcp["books/open"].covers(1));
        assert!(!p.inbound.contains_key(&id("cache")), "a route with only invalid ports grants nothing");
        assert!(!p.outbound[&id("bookstore")].contains(&id("cache")));
    }

    #[test]
    fn invalid_objects_are_reported_with_codes_and_fail_closed() {
        let groups = [
            group(
                "routes",
                vec![m("ok", "/ok", &[], &[]), m("bad-re", "/(", &[], &[]), m("bad-method", "/", &["FETCH"], &[])],
            ),
            group("empty", vec![]),
        ];
        let mut elsewhere = target("elsewhere", "store", &["buyer"], vec![rule("HTTPRouteGroup", "routes", &["ok"])]);
        elsewhere.destination.namespace = "other".into();
        let mut group_dest = target("group-dest", "store", &["buyer"], vec![]);
        group_dest.destination.kind = "Group".into();
        let mut user_source =
            target("user-source", "store", &["buyer"], vec![rule("HTTPRouteGroup", "routes", &["ok"])]);
        user_source.sources.push(Subject { kind: "User".into(), name: "eve".into(), namespace: "books".into() });
        let targets = [
            elsewhere,
            group_dest,
            user_source,
            target("no-rules", "store", &["buyer"], vec![]),
            target("unknown-kind", "store", &["x"], vec![rule("UDPRoute", "r", &[])]),
            target("missing-group", "store", &["y"], vec![rule("HTTPRouteGroup", "nope", &[])]),
            target("missing-match", "store", &["z"], vec![rule("HTTPRouteGroup", "routes", &["typo", "bad-re"])]),
        ];
        let p = run(&targets, &groups, &[]);
        let mut got = codes_of(&p);
        got.sort();
        let mut want = vec![
            codes::ROUTE_GROUP_NOT_FOUND,
            codes::ROUTE_GROUP_NO_MATCH,
            codes::INVALID_DESTINATION_KIND,
            codes::INVALID_SOURCE_KIND,
            codes::TARGET_NAMESPACE_MISMATCH,
            codes::TARGET_NO_RULES,
            codes::UNKNOWN_ROUTE_KIND,
            codes::MATCH_NOT_FOUND,
            codes::INVALID_REGEX,
            codes::INVALID_METHOD,
        ];
        want.sort();
        assert_eq!(got, want, "{:#?}", p.errors);
        // The valid part of user-source still holds; nothing else grants anything.
        let store = &p.inbound[&id("store")];
        assert_eq!(store.http.len(), 1);
        assert_eq!(store.http.values().next().unwrap(), &BTreeSet::from([id("buyer")]));
        assert_eq!(p.outbound.keys().cloned().collect::<Vec<_>>(), vec![id("buyer")]);
        let regex = p.errors.iter().find(|e| e.code == codes::INVALID_REGEX).unwrap();
        assert_eq!(regex.object.to_string(), "HTTPRouteGroup books/routes");
        assert!(
            regex.to_string().starts_with("[E2025] HTTPRouteGroup books/routes: match \"bad-re\": pathRegex \"/(\"")
        );
    }

    #[test]
    fn a_missing_namespace_grants_nothing() {
        let groups = [group("routes", vec![m("ok", "/ok", &[], &[])])];
        let mut no_dest_ns = target("no-dest-ns", "store", &["buyer"], vec![rule("HTTPRouteGroup", "routes", &[])]);
        no_dest_ns.destination.namespace = String::new();
        let mut no_src_ns = target("no-src-ns", "shelf", &["buyer"], vec![rule("HTTPRouteGroup", "routes", &[])]);
        no_src_ns.sources[0].namespace = String::new();
        let p = run(&[no_dest_ns, no_src_ns], &groups, &[]);
        let mut got = codes_of(&p);
        got.sort();
        assert_eq!(got, vec![codes::TARGET_NAMESPACE_MISMATCH, codes::SOURCE_NO_NAMESPACE], "{:#?}", p.errors);
        assert!(p.outbound.is_empty(), "{:?}", p.outbound);
        assert!(p.inbound.values().all(|i| i.http.values().all(|s| s.is_empty())), "{:?}", p.inbound);
        assert!(
            p.errors[0].reason.contains("spec.destination.namespace is missing")
                || p.errors[1].reason.contains("spec.destination.namespace is missing")
        );
    }

    #[test]
    fn splits_take_the_first_per_apex_and_drop_zero_weights() {
        let split = |name: &str, apex: &str, backends: &[(&str, i64)]| TrafficSplit {
            namespace: "books".into(),
            name: name.into(),
            service: apex.into(),
            backends: backends.iter().map(|(b, w)| (b.to_string(), *w)).collect(),
        };
        let splits = [
            split("a", "store", &[("store-v1", 50), ("store-v2", 50), ("store-v3", 0)]),
            split("b", "store", &[("store-v1", 100)]),
            split("zero", "cart", &[("cart-v1", 0)]),
            split("neg", "pay", &[("pay-v1", -1)]),
            split("ghost", "nothing", &[("x", 1)]),
            split("partial", "shelf", &[("shelf-v1", 1), ("shelf-gone", 1)]),
        ];
        let exists = |k: &ServiceKey| !k.name.contains("nothing") && !k.name.contains("gone");
        let p = compute(&[], &[], &[], &splits, exists);
        let store = ServiceKey::new("books", "store");
        assert_eq!(
            p.splits[&store],
            vec![(ServiceKey::new("books", "store-v1"), 50), (ServiceKey::new("books", "store-v2"), 50)]
        );
        assert_eq!(p.splits[&ServiceKey::new("books", "shelf")].len(), 1);
        assert_eq!(p.splits.len(), 2);
        let mut got = codes_of(&p);
        got.sort();
        assert_eq!(
            got,
            vec![
                codes::MULTIPLE_SPLITS,
                codes::INVALID_WEIGHTS,
                codes::INVALID_WEIGHTS,
                codes::SPLIT_SERVICE_NOT_FOUND,
                codes::SPLIT_SERVICE_NOT_FOUND
            ]
        );
    }

    #[test]
    fn diffs_name_the_identities_and_apexes_that_changed() {
        let groups = [group("routes", vec![m("all", ".*", &[], &[])])];
        let a = run(&[target("t", "store", &["buyer"], vec![rule("HTTPRouteGroup", "routes", &[])])], &groups, &[]);
        let b = run(&[target("t", "store", &["thief"], vec![rule("HTTPRouteGroup", "routes", &[])])], &groups, &[]);
        assert_eq!(a.changed_identities(&a), BTreeSet::new());
        assert_eq!(a.changed_identities(&b), BTreeSet::from([id("buyer"), id("store"), id("thief")]));
        assert!(a.changed_splits(&b).is_empty());
    }
}
