//! What an UpstreamTrafficSetting turns into: client-side circuit breakers and a connect timeout on every
//! client's cluster of the Service, and local rate limits on the Service's own sidecars (a network filter
//! for connections; for requests, the HTTP filter configured per virtual host and per route).

use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, circuit_breakers};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFeatureFlag, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as TcpLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, HttpStatus, TokenBucket, fractional_percent};
use messages::{ConnectionSettings, HttpRateLimit, TcpRateLimit, UpstreamTrafficSetting};

use super::*;

/// The HTTP filter's name: also the key of its per-host and per-route configuration.
pub(super) const HTTP_LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
const TCP_LOCAL_RATE_LIMIT: &str = "envoy.filters.network.local_ratelimit";
/// OSM's stat prefix of the HTTP limit (`http_local_rate_limiter.http_local_rate_limit.rate_limited`).
const HTTP_STAT_PREFIX: &str = "http_local_rate_limiter";
/// A cluster's connect timeout unless an UpstreamTrafficSetting says otherwise.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Circuit-breaker thresholds: the setting's, each one it leaves unset at the maximum (as OSM does:
/// Envoy's own defaults — 1,024 connections, requests and pending requests, 3 retries — would throttle a
/// busy upstream no one asked to limit). Only thresholds someone set track what remains: the gauges cost
/// memory in every sidecar for every cluster.
pub(super) fn circuit_breakers(settings: Option<&ConnectionSettings>) -> CircuitBreakers {
    let c = settings.cloned().unwrap_or_default();
    let limited =
        [c.max_connections, c.max_pending_requests, c.max_requests, c.max_retries].iter().any(Option::is_some);
    let max = |v: Option<u32>| Some(UInt32Value { value: v.unwrap_or(u32::MAX) });
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: max(c.max_connections),
            max_pending_requests: max(c.max_pending_requests),
            max_requests: max(c.max_requests),
            max_retries: max(c.max_retries),
            track_remaining: limited,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn connect_timeout(traffic: Option<&UpstreamTrafficSetting>) -> PbDuration {
    duration(traffic.and_then(|t| t.connection.connect_timeout).unwrap_or(DEFAULT_CONNECT_TIMEOUT))
}

pub(super) fn max_requests_per_connection(traffic: Option<&UpstreamTrafficSetting>) -> Option<u32> {
    traffic.and_then(|t| t.connection.max_requests_per_connection)
}

fn bucket(b: &messages::TokenBucket) -> TokenBucket {
    TokenBucket {
        max_tokens: b.per_unit.saturating_add(b.burst),
        tokens_per_fill: Some(UInt32Value { value: b.per_unit }),
        fill_interval: Some(duration(b.unit)),
    }
}

/// The connection limit of a Service's inbound chain (before the connection manager or tcp_proxy).
pub(super) fn tcp_rate_limit_filter(limit: &TcpRateLimit, stat_prefix: &str) -> Filter {
    let config = TcpLocalRateLimit {
        stat_prefix: stat_prefix.to_owned(),
        token_bucket: Some(bucket(&limit.connections)),
        runtime_enabled: Some(RuntimeFeatureFlag {
            default_value: Some(BoolValue { value: true }),
            runtime_key: "local_rate_limit_enabled".to_owned(),
        }),
        ..Default::default()
    };
    network_filter(TCP_LOCAL_RATE_LIMIT, pack_any(config))
}

/// The HTTP filter in an inbound connection manager; it limits nothing by itself: hosts and routes carry
/// their buckets ([`http_rate_limit_config`]).
pub(super) fn http_rate_limit_filter() -> HttpFilter {
    let config = HttpLocalRateLimit { stat_prefix: HTTP_STAT_PREFIX.to_owned(), ..Default::default() };
    HttpFilter {
        name: HTTP_LOCAL_RATE_LIMIT.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

fn all_of(key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: key.to_owned(),
    }
}

/// A bucket of requests for a virtual host or a route, answered past it with the setting's status and
/// headers.
pub(super) fn http_rate_limit_config(limit: &HttpRateLimit) -> Any {
    pack_any(HttpLocalRateLimit {
        stat_prefix: HTTP_STAT_PREFIX.to_owned(),
        status: Some(HttpStatus { code: i32::from(limit.status) }),
        token_bucket: Some(bucket(&limit.requests)),
        filter_enabled: Some(all_of("local_rate_limit_enabled")),
        filter_enforced: Some(all_of("local_rate_limit_enforced")),
        response_headers_to_add: limit
            .headers
            .iter()
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

/// The path regex a route matches: its `safe_regex`, or `.*` for the catch-all prefix `/` (permissive
/// mode's one route, which OSM writes as the regex `.*`).
fn route_path(route: &Route) -> Option<&str> {
    match route.r#match.as_ref()?.path_specifier.as_ref()? {
        route_match::PathSpecifier::SafeRegex(re) => Some(re.regex.as_str()),
        route_match::PathSpecifier::Prefix(p) if p == "/" => Some(".*"),
        _ => None,
    }
}

/// The virtual host's and its routes' request limits, as the setting says (`httpRoutes[].path` names a
/// route by its path regex).
pub(super) fn limit_host(vhost: &mut VirtualHost, traffic: Option<&UpstreamTrafficSetting>) {
    let Some(t) = traffic else { return };
    if let Some(limit) = &t.http_rate_limit {
        vhost.typed_per_filter_config.insert(HTTP_LOCAL_RATE_LIMIT.to_owned(), http_rate_limit_config(limit));
    }
    for route in &mut vhost.routes {
        let limit = route_path(route).and_then(|p| t.route_rate_limits.iter().find(|(path, _)| path == p));
        if let Some((_, limit)) = limit {
            route.typed_per_filter_config.insert(HTTP_LOCAL_RATE_LIMIT.to_owned(), http_rate_limit_config(limit));
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::r#type::v3::StatusCode;

    #[test]
    fn the_statuses_a_setting_may_name_are_exactly_envoys_error_statuses() {
        for code in 400..600 {
            let envoys = StatusCode::try_from(code).is_ok();
            let ours = messages::ENVOY_HTTP_ERROR_STATUSES.contains(&u16::try_from(code).unwrap_or(0));
            assert_eq!(ours, envoys, "status {code}");
        }
    }
}
