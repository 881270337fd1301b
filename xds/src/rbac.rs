//! SMI policy as Envoy configuration: inbound HTTP routes carrying per-route RBAC, and L4 RBAC for TCP
//! filter chains. The decisions come from `messages::policy`; this module only encodes them.
//!
//! Names and shapes follow OSM: the HTTP RBAC filter sits in every inbound connection manager with no rules
//! of its own, each inbound route carries an `RBACPerRoute` ALLOW policy `rbac-for-route`, and TCP chains
//! start with `envoy.filters.network.rbac` (stat prefix `network-`). Unlike OSM, a request that matches no
//! allowed route meets a final deny-all route, so it is answered 403 by RBAC rather than 404.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy as RbacPolicy, Principal, Rbac as RbacRules, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteMatch, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac as HttpRbac, RbacPerRoute};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use envoy_types::util::pack_any;
use messages::{HttpRule, ServiceIdentity, TcpGrant};

pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// The policy name inside every per-route RBAC.
pub const ROUTE_POLICY: &str = "rbac-for-route";

/// The HTTP RBAC filter of inbound connection managers: no rules of its own (allow), each route says more.
pub fn http_filter() -> HttpFilter {
    HttpFilter {
        name: HTTP_RBAC_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(HttpRbac::default()))),
        ..Default::default()
    }
}

fn exact(s: String) -> StringMatcher {
    StringMatcher { match_pattern: Some(string_matcher::MatchPattern::Exact(s)), ..Default::default() }
}

fn regex(re: &str) -> RegexMatcher {
    RegexMatcher { regex: re.to_owned(), ..Default::default() }
}

/// The peers an identity set stands for: the principal of the identity's service certificate, in both the
/// DNS form and the SPIFFE form (Envoy reads a URI SAN first when a certificate has one).
fn principals(sources: &BTreeSet<ServiceIdentity>, trust_domain: &str) -> Vec<Principal> {
    sources
        .iter()
        .flat_map(|id| [id.principal(trust_domain), id.spiffe_id(trust_domain)])
        .map(|name| Principal {
            identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
                principal_name: Some(exact(name)),
            })),
        })
        .collect()
}

/// ALLOW rules with one policy (one policy only: protobuf maps have no order, and the bytes must not
/// change from one build to the next). No policy at all denies everything.
fn allow(name: &str, policy: Option<RbacPolicy>) -> RbacRules {
    RbacRules {
        action: rbac::Action::Allow as i32,
        policies: policy.into_iter().map(|p| (name.to_owned(), p)).collect(),
        ..Default::default()
    }
}

fn any_permission() -> Permission {
    Permission { rule: Some(permission::Rule::Any(true)) }
}

fn per_route(rules: RbacRules) -> HashMap<String, Any> {
    let cfg = RbacPerRoute { rbac: Some(HttpRbac { rules: Some(rules), ..Default::default() }) };
    HashMap::from([(HTTP_RBAC_FILTER.to_owned(), pack_any(cfg))])
}

fn to_local(cluster: &str) -> Option<route::Action> {
    Some(route::Action::Route(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
        timeout: Some(PbDuration { seconds: 0, nanos: 0 }),
        ..Default::default()
    }))
}

/// One inbound route per allowed kind of request, then a deny-all catch-all.
pub fn inbound_routes<'a>(
    rules: impl IntoIterator<Item = (&'a HttpRule, &'a BTreeSet<ServiceIdentity>)>,
    local_cluster: &str,
    trust_domain: &str,
) -> Vec<Route> {
    let mut routes: Vec<Route> = rules
        .into_iter()
        .map(|(rule, sources)| {
            let mut headers: Vec<HeaderMatcher> = rule
                .headers
                .iter()
                .map(|(name, value)| HeaderMatcher {
                    name: name.clone(),
                    header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(value))),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect();
            if rule.methods != ["*"] {
                headers.push(HeaderMatcher {
                    name: ":method".to_owned(),
                    header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(&format!(
                            "^(?:{})$",
                            rule.methods.join("|")
                        )))),
                        ..Default::default()
                    })),
                    ..Default::default()
                });
            }
            let policy = RbacPolicy {
                permissions: vec![any_permission()],
                principals: principals(sources, trust_domain),
                ..Default::default()
            };
            Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::SafeRegex(regex(&rule.path_regex))),
                    headers,
                    ..Default::default()
                }),
                action: to_local(local_cluster),
                typed_per_filter_config: per_route(allow(ROUTE_POLICY, Some(policy))),
                ..Default::default()
            }
        })
        .collect();
    routes.push(Route {
        name: "deny-unmatched".to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..Default::default()
        }),
        action: to_local(local_cluster),
        typed_per_filter_config: per_route(allow(ROUTE_POLICY, None)),
        ..Default::default()
    });
    routes
}

/// L4 RBAC for an inbound TCP chain on `port`: the sources of every grant covering the port (none: deny).
pub fn network_filter<'a>(grants: impl IntoIterator<Item = &'a TcpGrant>, port: u16, trust_domain: &str) -> Any {
    let sources: BTreeSet<ServiceIdentity> =
        grants.into_iter().filter(|g| g.covers(port)).flat_map(|g| g.sources.iter().cloned()).collect();
    let policy = (!sources.is_empty()).then(|| RbacPolicy {
        permissions: vec![any_permission()],
        principals: principals(&sources, trust_domain),
        ..Default::default()
    });
    pack_any(NetworkRbac {
        rules: Some(allow("tcp-traffic-targets", policy)),
        stat_prefix: "network-".to_owned(),
        ..Default::default()
    })
}

/// The one route of an ingress virtual host: every request to the local cluster, from the principals
/// given (empty: any client, as for plain HTTP, or HTTPS without client-certificate validation).
pub fn ingress_route(local_cluster: &str, principals: &[String]) -> Route {
    let principals = if principals.is_empty() {
        vec![Principal { identifier: Some(principal::Identifier::Any(true)) }]
    } else {
        principals
            .iter()
            .map(|name| Principal {
                identifier: Some(principal::Identifier::Authenticated(principal::Authenticated {
                    principal_name: Some(exact(name.clone())),
                })),
            })
            .collect()
    };
    let policy = RbacPolicy { permissions: vec![any_permission()], principals, ..Default::default() };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            ..Default::default()
        }),
        action: to_local(local_cluster),
        typed_per_filter_config: per_route(allow(ROUTE_POLICY, Some(policy))),
        ..Default::default()
    }
}
