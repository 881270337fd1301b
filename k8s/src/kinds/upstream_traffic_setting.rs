//! OSM's `policy.openservicemesh.io/v1alpha1` UpstreamTrafficSetting: for one upstream Service (`spec.host`,
//! `<svc>.<ns>.svc.cluster.local` in the object's namespace), the client-side circuit breakers and connect
//! timeout every client's cluster gets (`connectionSettings`), and the local rate limits its own sidecars
//! enforce on what they accept (`rateLimit.local`, per route with `httpRoutes`).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{
    ConnectionSettings, ENVOY_HTTP_ERROR_STATUSES, HttpRateLimit, Kind, MeshObject, TcpRateLimit, TokenBucket,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::{ConvertError, err, name_ns};

/// `policy.openservicemesh.io/v1alpha1` UpstreamTrafficSetting.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.openservicemesh.io",
    version = "v1alpha1",
    kind = "UpstreamTrafficSetting",
    plural = "upstreamtrafficsettings",
    namespaced,
    shortname = "upstreamtrafficsetting",
    status = "UpstreamTrafficSettingStatus",
    printcolumn = r#"{"name":"Status","type":"string","description":"Current status of the UpstreamTrafficSetting policy.","jsonPath":".status.currentStatus"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTrafficSettingSpec {
    /// The upstream: `<service>.<namespace>.svc.cluster.local`, a Service of this object's namespace.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_settings: Option<ConnectionSettingsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Per-route settings: `path` is the route's path regex (an HTTPRouteGroup match's `pathRegex`, or
    /// `.*` in permissive mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_routes: Option<Vec<HttpRouteSpec>>,
}

/// Written by the controller (OSM's `currentStatus` and `reason`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTrafficSettingStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSettingsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpConnectionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConnectionSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpConnectionSpec {
    /// Connections open at once to the upstream, from each client sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// A duration, e.g. `5s` (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConnectionSpec {
    /// Requests in flight at once, from each client sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Requests waiting for a connection at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Retries in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRateLimitSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpLocalRateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpLocalRateLimitSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpLocalRateLimitSpec {
    #[schemars(range(min = 1))]
    pub connections: u32,
    #[schemars(extend("enum" = ["second", "minute", "hour"]))]
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpLocalRateLimitSpec {
    #[schemars(range(min = 1))]
    pub requests: u32,
    #[schemars(extend("enum" = ["second", "minute", "hour"]))]
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// The status of a refused request, 400-599 (default 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub response_status_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers_to_add: Option<Vec<HeaderSpec>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderSpec {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[schemars(length(min = 1))]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RouteRateLimitSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRateLimitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<HttpLocalRateLimitSpec>,
}

fn unit(field: &str, unit: &str) -> Result<std::time::Duration, String> {
    match unit {
        "second" => Ok(std::time::Duration::from_secs(1)),
        "minute" => Ok(std::time::Duration::from_secs(60)),
        "hour" => Ok(std::time::Duration::from_secs(3600)),
        other => Err(format!("{field}.unit {other:?} is not one of second, minute, hour")),
    }
}

/// An RFC 7230 token: what Envoy accepts as a header name.
fn header_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http_limit(field: &str, spec: &HttpLocalRateLimitSpec, problems: &mut Vec<String>) -> Option<HttpRateLimit> {
    let mut ok = true;
    let unit = unit(field, &spec.unit).map_err(|e| problems.push(e)).ok();
    if spec.requests == 0 {
        problems.push(format!("{field}.requests must be at least 1"));
        ok = false;
    }
    let status = spec.response_status_code.unwrap_or(429);
    let status = match u16::try_from(status).ok().filter(|s| ENVOY_HTTP_ERROR_STATUSES.contains(s)) {
        Some(s) => s,
        None => {
            problems.push(format!(
                "{field}.responseStatusCode {status} is not a status Envoy can answer with (one of {})",
                ENVOY_HTTP_ERROR_STATUSES.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
            ));
            ok = false;
            429
        }
    };
    let mut headers = Vec::new();
    for (i, h) in spec.response_headers_to_add.iter().flatten().enumerate() {
        if !header_name_ok(&h.name) {
            problems.push(format!("{field}.responseHeadersToAdd[{i}].name {:?} is not a header name", h.name));
            ok = false;
        } else if h.value.is_empty() || h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            problems.push(format!("{field}.responseHeadersToAdd[{i}].value must be one non-empty line"));
            ok = false;
        } else {
            headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
    }
    let unit = unit?;
    ok.then(|| HttpRateLimit {
        requests: TokenBucket { per_unit: spec.requests, unit, burst: spec.burst.unwrap_or(0) },
        status,
        headers,
    })
}

/// The UpstreamTrafficSetting in the model; every problem of it is named at once.
pub fn convert(o: &UpstreamTrafficSetting) -> Result<messages::UpstreamTrafficSetting, ConvertError> {
    let (namespace, name, label) = name_ns("UpstreamTrafficSetting", &o.metadata, true)?;
    let spec = &o.spec;
    let mut problems = Vec::new();
    if spec.host.trim().is_empty() {
        problems.push("spec.host is empty".to_owned());
    }
    let mut connection = ConnectionSettings::default();
    if let Some(cs) = &spec.connection_settings {
        if let Some(tcp) = &cs.tcp {
            connection.max_connections = tcp.max_connections;
            if let Some(t) = &tcp.connect_timeout {
                match messages::parse_go_duration(t) {
                    Ok(d) if !d.is_zero() => connection.connect_timeout = Some(d),
                    Ok(_) => problems.push("spec.connectionSettings.tcp.connectTimeout must be more than 0".to_owned()),
                    Err(e) => problems.push(format!("spec.connectionSettings.tcp.connectTimeout: {e}")),
                }
            }
        }
        if let Some(http) = &cs.http {
            connection.max_requests = http.max_requests;
            connection.max_requests_per_connection = http.max_requests_per_connection;
            connection.max_pending_requests = http.max_pending_requests;
            connection.max_retries = http.max_retries;
        }
    }
    let local = spec.rate_limit.as_ref().and_then(|r| r.local.as_ref());
    let tcp_rate_limit = local.and_then(|l| l.tcp.as_ref()).and_then(|t| {
        let field = "spec.rateLimit.local.tcp";
        if t.connections == 0 {
            problems.push(format!("{field}.connections must be at least 1"));
        }
        let unit = unit(field, &t.unit).map_err(|e| problems.push(e)).ok()?;
        (t.connections > 0).then(|| TcpRateLimit {
            connections: TokenBucket { per_unit: t.connections, unit, burst: t.burst.unwrap_or(0) },
        })
    });
    let http_rate_limit =
        local.and_then(|l| l.http.as_ref()).and_then(|h| http_limit("spec.rateLimit.local.http", h, &mut problems));
    let mut route_rate_limits = Vec::new();
    for (i, r) in spec.http_routes.iter().flatten().enumerate() {
        if let Err(e) = messages::policy::check_regex(&r.path) {
            problems.push(format!("spec.httpRoutes[{i}].path: {e}"));
            continue;
        }
        if route_rate_limits.iter().any(|(p, _)| p == &r.path) {
            problems.push(format!("spec.httpRoutes[{i}].path {:?} is listed twice", r.path));
            continue;
        }
        let field = format!("spec.httpRoutes[{i}].rateLimit.local");
        if let Some(limit) = r.rate_limit.as_ref().and_then(|l| l.local.as_ref())
            && let Some(limit) = http_limit(&field, limit, &mut problems)
        {
            route_rate_limits.push((r.path.clone(), limit));
        }
    }
    if !problems.is_empty() {
        return Err(err(&label, problems.join("; ")));
    }
    Ok(messages::UpstreamTrafficSetting {
        namespace,
        name,
        host: spec.host.trim().to_ascii_lowercase(),
        connection,
        tcp_rate_limit,
        http_rate_limit,
        route_rate_limits,
    })
}

impl MeshKind for UpstreamTrafficSetting {
    const KIND: Kind = Kind::UpstreamTrafficSetting;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uts(spec: serde_json::Value) -> Result<messages::UpstreamTrafficSetting, ConvertError> {
        let o: UpstreamTrafficSetting = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.openservicemesh.io/v1alpha1", "kind": "UpstreamTrafficSetting",
            "metadata": {"name": "limits", "namespace": "demo"},
            "spec": spec
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        convert(&o)
    }

    #[test]
    fn osms_example_reads_as_written() {
        let ok = uts(serde_json::json!({
            "host": "server.demo.svc.cluster.local",
            "connectionSettings": {
                "tcp": {"maxConnections": 100, "connectTimeout": "5s"},
                "http": {"maxRequests": 10, "maxPendingRequests": 1, "maxRequestsPerConnection": 5, "maxRetries": 2}
            },
            "rateLimit": {"local": {
                "tcp": {"connections": 5, "unit": "minute", "burst": 2},
                "http": {"requests": 3, "unit": "second", "responseStatusCode": 503,
                         "responseHeadersToAdd": [{"name": "X-Limited", "value": "yes"}]}
            }},
            "httpRoutes": [{"path": "/echo/.*", "rateLimit": {"local": {"requests": 1, "unit": "hour"}}}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.connection.max_connections, Some(100));
        assert_eq!(ok.connection.connect_timeout, Some(std::time::Duration::from_secs(5)));
        assert_eq!(ok.connection.max_pending_requests, Some(1));
        let tcp = ok.tcp_rate_limit.unwrap_or_else(|| panic!("tcp limit"));
        assert_eq!((tcp.connections.per_unit, tcp.connections.unit.as_secs(), tcp.connections.burst), (5, 60, 2));
        let http = ok.http_rate_limit.unwrap_or_else(|| panic!("http limit"));
        assert_eq!((http.status, http.headers.clone()), (503, vec![("x-limited".to_owned(), "yes".to_owned())]));
        assert_eq!(ok.route_rate_limits.len(), 1);
        assert_eq!(ok.route_rate_limits[0].1.status, 429, "OSM's default status");
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let bad = uts(serde_json::json!({
            "host": "server.demo.svc.cluster.local",
            "connectionSettings": {"tcp": {"connectTimeout": "soon"}},
            "rateLimit": {"local": {
                "tcp": {"connections": 0, "unit": "second"},
                "http": {"requests": 3, "unit": "day", "responseStatusCode": 499,
                         "responseHeadersToAdd": [{"name": "bad name", "value": "x"}]}
            }},
            "httpRoutes": [{"path": "(", "rateLimit": {"local": {"requests": 1, "unit": "hour"}}}]
        }))
        .unwrap_err()
        .to_string();
        for named in [
            "UpstreamTrafficSetting demo/limits",
            "connectTimeout",
            "tcp.connections must be at least 1",
            "unit \"day\"",
            "responseStatusCode 499",
            "\"bad name\" is not a header name",
            "httpRoutes[0].path",
        ] {
            assert!(bad.contains(named), "{named}: {bad}");
        }
    }
}
