//! The Grafana dashboard shipped in `deploy/grafana/` only charts metrics the controller exposes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeSet;

#[test]
fn every_metric_the_dashboard_charts_is_exposed() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/osm-control-plane.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Labelled metrics show once they have a series.
    let metrics = actors::metrics::Metrics::default();
    metrics.proxy_connected(&messages::ProxyUuid::parse("u").unwrap(), &"sa.ns".into()).response_sent("CDS", true);
    metrics.nack("CDS");
    metrics.error("E2025");
    metrics.rejected("unknown_proxy");
    metrics.handshake_failed("unknown_ca");
    metrics.admission("Pod", true);
    let exposed: BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut charted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("osm_").map(|_| word) {
                    let base = name.strip_suffix("_bucket").unwrap_or(name);
                    charted.insert(base.to_owned());
                }
            }
        }
    }
    assert!(charted.len() >= 10, "{charted:?}");
    let missing: Vec<&String> = charted.difference(&exposed).collect();
    assert!(missing.is_empty(), "charted but not exposed: {missing:?} (exposed: {exposed:?})");
}
