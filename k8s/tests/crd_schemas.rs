//! The CRDs generated from the Rust types, field by field against OSM's published ones (types, enums,
//! defaults, ranges, required fields), and as the API-server simulator applies them: defaults filled in,
//! values outside an enum or a range refused with 422, required fields enforced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use apisim::{ApiServer, Resource};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The served version's schema of the CRD of `kind`.
fn schema(kind: &str) -> Value {
    let crd = k8s::crds::definitions().into_iter().find(|c| c.spec.names.kind == kind).unwrap();
    serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

/// The schema node at a dotted path of properties (`[]` steps into array items).
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(schema, |n, step| match step.strip_suffix("[]") {
        Some(p) => &n["properties"][p]["items"],
        None => &n["properties"][step],
    })
}

/// OSM's MeshConfig v1alpha2 schema, as published: (path under spec, type, enum, default).
const OSM_MESH_CONFIG: &[(&str, &str, &[&str], Option<&str>)] = &[
    ("sidecar.enablePrivilegedInitContainer", "boolean", &[], None),
    ("sidecar.logLevel", "string", &["trace", "debug", "info", "warning", "warn", "error", "critical", "off"], None),
    ("sidecar.maxDataPlaneConnections", "integer", &[], None),
    ("sidecar.envoyImage", "string", &[], None),
    ("sidecar.envoyWindowsImage", "string", &[], None),
    ("sidecar.initContainerImage", "string", &[], None),
    ("sidecar.resources", "object", &[], None),
    ("sidecar.configResyncInterval", "string", &[], None),
    (
        "sidecar.tlsMinProtocolVersion",
        "string",
        &["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"],
        Some("TLSv1_2"),
    ),
    (
        "sidecar.tlsMaxProtocolVersion",
        "string",
        &["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"],
        Some("TLSv1_3"),
    ),
    ("sidecar.cipherSuites", "array", &[], None),
    ("sidecar.ecdhCurves", "array", &[], None),
    ("sidecar.localProxyMode", "string", &["Localhost", "PodIP"], Some("Localhost")),
    ("traffic.enableEgress", "boolean", &[], None),
    ("traffic.outboundIPRangeExclusionList", "array", &[], None),
    ("traffic.outboundIPRangeInclusionList", "array", &[], None),
    ("traffic.outboundPortExclusionList", "array", &[], None),
    ("traffic.inboundPortExclusionList", "array", &[], None),
    ("traffic.networkInterfaceExclusionList", "array", &[], None),
    ("traffic.enablePermissiveTrafficPolicyMode", "boolean", &[], None),
    ("traffic.inboundExternalAuthorization", "object", &[], None),
    ("traffic.inboundExternalAuthorization.port", "integer", &[], None),
    ("traffic.inboundExternalAuthorization.statPrefix", "string", &[], Some("inboundExtAuthz")),
    ("traffic.inboundExternalAuthorization.timeout", "string", &[], Some("1s")),
    ("observability.osmLogLevel", "string", &[], None),
    ("observability.enableDebugServer", "boolean", &[], None),
    ("observability.tracing", "object", &[], None),
    ("certificate.serviceCertValidityDuration", "string", &[], None),
    ("certificate.certKeyBitSize", "integer", &[], None),
    ("certificate.ingressGateway", "object", &[], None),
    ("featureFlags.enableWASMStats", "boolean", &[], None),
    ("featureFlags.enableEgressPolicy", "boolean", &[], None),
    ("featureFlags.enableMulticlusterMode", "boolean", &[], None),
    ("featureFlags.enableSnapshotCacheMode", "boolean", &[], None),
    ("featureFlags.enableAsyncProxyServiceMapping", "boolean", &[], None),
    ("featureFlags.enableIngressBackendPolicy", "boolean", &[], None),
    ("featureFlags.enableEnvoyActiveHealthChecks", "boolean", &[], None),
    ("featureFlags.enableRetryPolicy", "boolean", &[], None),
];

#[test]
fn the_crds_match_osms_published_schemas_field_by_field() {
    let mc = schema("MeshConfig");
    let spec = node(&mc, "spec");
    for (path, ty, enumeration, default) in OSM_MESH_CONFIG {
        let n = node(spec, path);
        assert_eq!(n["type"], *ty, "spec.{path}: {n}");
        let got: Vec<&str> = n["enum"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(got, *enumeration, "spec.{path}: enum");
        assert_eq!(n["default"].as_str(), *default, "spec.{path}: default");
    }
    // Ranges and patterns OSM's CRD has.
    for list in ["outboundPortExclusionList", "inboundPortExclusionList"] {
        let items = node(spec, &format!("traffic.{list}[]"));
        assert_eq!((items["minimum"].as_f64(), items["maximum"].as_f64()), (Some(1.0), Some(65535.0)), "{list}");
    }
    for list in ["outboundIPRangeExclusionList", "outboundIPRangeInclusionList"] {
        assert!(node(spec, &format!("traffic.{list}[]"))["pattern"].is_string(), "{list}");
    }
    let required: Vec<&str> =
        node(spec, "certificate")["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(required.contains(&"serviceCertValidityDuration") && required.contains(&"certKeyBitSize"));

    // SMI: HTTPRouteGroup methods, TrafficTarget's required fields and rule kinds.
    let hrg = schema("HTTPRouteGroup");
    let methods = node(&hrg, "spec.matches[].methods[]");
    let methods: Vec<&str> = methods["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(methods, ["*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]);
    let tt = schema("TrafficTarget");
    let required: Vec<&str> =
        node(&tt, "spec")["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for field in ["destination", "rules", "sources"] {
        assert!(required.contains(&field), "TrafficTarget spec.{field} is required: {required:?}");
    }
    let kinds = node(&tt, "spec.rules[].kind");
    let kinds: Vec<&str> = kinds["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(kinds, ["HTTPRouteGroup", "TCPRoute", "UDPRoute"]);

    // OSM's Retry: every field required, numRetries an integer, durations strings.
    let retry = schema("Retry");
    let required = |path: &str| -> Vec<String> {
        let n = if path.is_empty() { &retry } else { node(&retry, path) };
        let mut r: Vec<String> =
            n["required"].as_array().unwrap().iter().filter_map(Value::as_str).map(str::to_owned).collect();
        r.sort();
        r
    };
    assert_eq!(required("spec"), ["destinations", "retryPolicy", "source"]);
    for peer in ["spec.source", "spec.destinations[]"] {
        assert_eq!(required(peer), ["kind", "name", "namespace"], "{peer}");
    }
    assert_eq!(required("spec.retryPolicy"), ["numRetries", "perTryTimeout", "retryBackoffBaseInterval", "retryOn"]);
    assert_eq!(node(&retry, "spec.retryPolicy.numRetries")["type"], "integer");
    for duration in ["perTryTimeout", "retryBackoffBaseInterval", "retryOn"] {
        assert_eq!(node(&retry, &format!("spec.retryPolicy.{duration}"))["type"], "string", "{duration}");
    }

    // OSM's UpstreamTrafficSetting: host required; units an enum; counts and statuses in OSM's ranges.
    let uts = schema("UpstreamTrafficSetting");
    let required: Vec<&str> =
        node(&uts, "spec")["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, ["host"]);
    let integers = [
        ("spec.connectionSettings.tcp.maxConnections", Some(0.0), None),
        ("spec.connectionSettings.http.maxRequests", Some(0.0), None),
        ("spec.connectionSettings.http.maxRequestsPerConnection", Some(0.0), None),
        ("spec.connectionSettings.http.maxPendingRequests", Some(0.0), None),
        ("spec.connectionSettings.http.maxRetries", Some(0.0), None),
        ("spec.rateLimit.local.tcp.connections", Some(1.0), None),
        ("spec.rateLimit.local.http.requests", Some(1.0), None),
        ("spec.rateLimit.local.http.responseStatusCode", Some(400.0), Some(599.0)),
        ("spec.httpRoutes[].rateLimit.local.requests", Some(1.0), None),
        ("spec.httpRoutes[].rateLimit.local.responseStatusCode", Some(400.0), Some(599.0)),
    ];
    for (path, min, max) in integers {
        let n = node(&uts, path);
        assert_eq!(n["type"], "integer", "{path}: {n}");
        assert_eq!(n["minimum"].as_f64(), min, "{path}: minimum");
        if max.is_some() {
            assert_eq!(n["maximum"].as_f64(), max, "{path}: maximum");
        }
    }
    for path in
        ["spec.rateLimit.local.tcp.unit", "spec.rateLimit.local.http.unit", "spec.httpRoutes[].rateLimit.local.unit"]
    {
        let units: Vec<&str> = node(&uts, path)["enum"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(units, ["second", "minute", "hour"], "{path}");
    }
    assert_eq!(node(&uts, "spec.connectionSettings.tcp.connectTimeout")["type"], "string");
    let header = node(&uts, "spec.rateLimit.local.http.responseHeadersToAdd[]");
    let mut required: Vec<&str> = header["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    required.sort();
    assert_eq!(required, ["name", "value"]);
    assert_eq!(node(&uts, "spec.httpRoutes[].path")["minLength"].as_f64(), Some(1.0));
}

fn api(sim: &ApiServer, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(sim.client().unwrap(), "osm-system", &resource)
}

fn object(api_version: &str, kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "osm-system"}, "spec": spec
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_fills_osms_defaults_and_refuses_values_outside_the_schema() {
    let sim = ApiServer::start().await.unwrap();
    let crds = Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions");
    for crd in k8s::crds::definitions() {
        sim.put(&crds, serde_json::to_value(crd).unwrap()).unwrap();
    }
    let group = "config.openservicemesh.io";
    let meshconfigs = api(&sim, group, "v1alpha2", "MeshConfig", "meshconfigs");
    let mc = |name: &str, spec: Value| object("config.openservicemesh.io/v1alpha2", "MeshConfig", name, spec);
    let post = PostParams::default();

    // Defaults filled in where a section is given.
    let created = meshconfigs.create(&post, &mc("defaults", json!({"sidecar": {"logLevel": "debug"}}))).await.unwrap();
    let sidecar = &created.data["spec"]["sidecar"];
    assert_eq!(sidecar["tlsMinProtocolVersion"], "TLSv1_2", "{sidecar}");
    assert_eq!(sidecar["tlsMaxProtocolVersion"], "TLSv1_3", "{sidecar}");
    assert_eq!(sidecar["localProxyMode"], "Localhost", "{sidecar}");

    // Values OSM's CRD refuses are refused by the API server, with 422.
    for (name, spec, field) in [
        ("log-level", json!({"sidecar": {"logLevel": "verbose"}}), "spec.sidecar.logLevel"),
        ("tls", json!({"sidecar": {"tlsMinProtocolVersion": "TLSv1_4"}}), "spec.sidecar.tlsMinProtocolVersion"),
        ("port", json!({"traffic": {"outboundPortExclusionList": [70000]}}), "spec.traffic.outboundPortExclusionList"),
        (
            "cidr",
            json!({"traffic": {"outboundIPRangeExclusionList": ["10.0.0.0"]}}),
            "spec.traffic.outboundIPRangeExclusionList",
        ),
        ("key-size", json!({"certificate": {"serviceCertValidityDuration": "24h"}}), "spec.certificate.certKeyBitSize"),
    ] {
        match meshconfigs.create(&post, &mc(name, spec)).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{name}: {s:?}");
                assert!(s.message.contains(field), "{name}: {}", s.message);
            }
            other => panic!("{name}: a MeshConfig outside the schema was stored: {other:?}"),
        }
    }

    // SMI: an HTTP method outside the enum.
    let groups = api(&sim, "specs.smi-spec.io", "v1alpha4", "HTTPRouteGroup", "httproutegroups");
    let fetch = object(
        "specs.smi-spec.io/v1alpha4",
        "HTTPRouteGroup",
        "fetch",
        json!({"matches": [{"name": "m", "methods": ["FETCH"]}]}),
    );
    match groups.create(&post, &fetch).await {
        Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains("FETCH"), "{s:?}"),
        other => panic!("an HTTPRouteGroup with method FETCH was stored: {other:?}"),
    }
}
