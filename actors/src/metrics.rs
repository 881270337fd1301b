//! Control-plane metrics, exposed in the Prometheus text format on `/metrics` through the `prometheus`
//! crate.
//!
//! Names and labels follow OSM (`osm_proxy_connect_count`, `osm_proxy_xds_request_count{proxy_uuid,identity,type}`,
//! ...) so existing dashboards keep working (the crate keeps names verbatim; OpenMetrics libraries would
//! append `_total`). Per-proxy counters are atomics the sessions hold, exposed by a collector of ours at
//! scrape time (one series per proxy and type that counted) and gone with the proxy's last session, so
//! their number is bounded by the connected proxies and counting is an atomic add.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The `type` label values of per-proxy series.
const TYPE_LABELS: [&str; 6] = ["CDS", "EDS", "LDS", "RDS", "SDS", "other"];

/// Buckets of the timings, in seconds.
const FAST: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the time from a mesh change to a proxy's ACK, in seconds.
const PROPAGATION: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The per-proxy metrics (name, help): requests received, responses sent, responses that could not be sent.
const PROXY_METRICS: [(&str, &str); 3] = [
    ("osm_proxy_xds_request_count", "xDS requests received from proxies"),
    ("osm_proxy_response_send_success_count", "xDS responses sent to proxies"),
    ("osm_proxy_response_send_error_count", "xDS responses that could not be sent"),
];

/// One connected proxy's counters, held by its sessions: counting is an atomic add, never a lookup under
/// a lock shared by every session. (A registered series per proxy and type costs the better part of a
/// kilobyte each; these are 144 bytes a proxy, exposed by [`ProxyCollector`] at scrape time.)
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// [metric][type], indexed as [`PROXY_METRICS`] × [`TYPE_LABELS`].
    counts: [[AtomicU64; TYPE_LABELS.len()]; PROXY_METRICS.len()],
}

impl ProxyCounters {
    fn bump(&self, metric: usize, ty: &str) {
        let t = TYPE_LABELS.iter().position(|l| *l == ty).unwrap_or(TYPE_LABELS.len() - 1);
        self.counts[metric][t].fetch_add(1, Ordering::Relaxed);
    }

    /// A request of type `ty` (a label of [`xds::type_label`]) arrived.
    pub fn xds_request(&self, ty: &str) {
        self.bump(0, ty);
    }

    pub fn response_sent(&self, ty: &str, ok: bool) {
        self.bump(if ok { 1 } else { 2 }, ty);
    }
}

/// A connected proxy's series, dropped with its last session.
#[derive(Debug)]
struct ProxySeries {
    identity: Arc<str>,
    sessions: u32,
    counters: Arc<ProxyCounters>,
}

type ProxyMap = Arc<Mutex<HashMap<messages::ProxyUuid, ProxySeries>>>;

/// Exposes the per-proxy counters through the registry, one series per proxy and type that counted.
struct ProxyCollector {
    descs: Vec<prometheus::core::Desc>,
    proxies: ProxyMap,
}

impl prometheus::core::Collector for ProxyCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};
        let label = |name: &str, value: &str| {
            let mut l = LabelPair::default();
            l.set_name(name.to_owned());
            l.set_value(value.to_owned());
            l
        };
        let Ok(proxies) = self.proxies.lock() else { return Vec::new() };
        let mut uuids: Vec<&messages::ProxyUuid> = proxies.keys().collect();
        uuids.sort();
        PROXY_METRICS
            .iter()
            .enumerate()
            .map(|(i, (name, help))| {
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(MetricType::COUNTER);
                let mut metrics = Vec::new();
                for uuid in &uuids {
                    let p = &proxies[*uuid];
                    for (ty, count) in TYPE_LABELS.iter().zip(&p.counters.counts[i]) {
                        let v = count.load(Ordering::Relaxed);
                        if v == 0 {
                            continue;
                        }
                        let mut m = Metric::from_label(vec![
                            label("identity", &p.identity),
                            label("proxy_uuid", uuid.as_str()),
                            label("type", ty),
                        ]);
                        let mut c = Counter::default();
                        c.set_value(v as f64);
                        m.set_counter(c);
                        metrics.push(m);
                    }
                }
                family.set_metric(metrics);
                family
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connected: IntGauge,
    /// Per-proxy series by UUID (exposed by [`ProxyCollector`]).
    proxies: ProxyMap,
    nacks: IntCounterVec,
    rejected: IntCounterVec,
    handshakes_failed: IntCounterVec,
    errors: IntCounterVec,
    policy_errors: IntGauge,
    certs_issued: IntCounter,
    cert_issue_time: Histogram,
    cert_expiry: IntGauge,
    snapshot_build_time: Histogram,
    proxies_built: IntCounter,
    change_ack_time: Histogram,
    proxies_behind: IntGauge,
    mesh_generation: IntGauge,
    proxies_not_holding_latest: IntGauge,
    admissions: IntCounterVec,
    leader_gauge: IntGauge,
    k8s_events: IntCounterVec,
    namespaces: IntGauge,
    feature_flags: IntGaugeVec,
    /// This replica holds the Lease of the one-time duties (Kubernetes).
    pub leader: Arc<AtomicBool>,
}

/// Registers a metric; the names are fixed and distinct, so registration cannot fail but for a bug.
fn reg<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: prometheus::Result<M>) -> M {
    match m {
        Ok(m) => {
            if let Err(e) = registry.register(Box::new(m.clone())) {
                tracing::error!(error = %e, "metric not registered");
            }
            m
        }
        // Only reachable with an invalid name or label, which the tests below would catch.
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help));
        let counters =
            |name: &str, help: &str, labels: &[&str]| reg(&r, IntCounterVec::new(Opts::new(name, help), labels));
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            reg(&r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())))
        };
        let version =
            reg(&r, IntGaugeVec::new(Opts::new("osm_version_info", "Version of the control plane"), &["version"]));
        version.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let proxies = ProxyMap::default();
        let descs = PROXY_METRICS
            .iter()
            .filter_map(|(name, help)| {
                let labels = ["identity", "proxy_uuid", "type"].map(str::to_owned).to_vec();
                prometheus::core::Desc::new((*name).to_owned(), (*help).to_owned(), labels, HashMap::new()).ok()
            })
            .collect();
        if let Err(e) = r.register(Box::new(ProxyCollector { descs, proxies: proxies.clone() })) {
            tracing::error!(error = %e, "per-proxy metrics not registered");
        }
        Self {
            connected: gauge("osm_proxy_connect_count", "Number of connected proxies"),
            proxies,
            nacks: counters("osm_proxy_nack_count", "xDS responses proxies rejected (NACK)", &["type"]),
            rejected: counters("osm_proxy_rejected_count", "proxies refused at connection", &["reason"]),
            errors: counters("osm_error_err_code_count", "errors by stable error code", &["err_code"]),
            handshakes_failed: counters(
                "osm_ads_tls_handshake_failed_count",
                "ADS connections whose TLS handshake failed",
                &["reason"],
            ),
            policy_errors: gauge("osm_policy_error_count", "Policy objects or parts of them not in force"),
            certs_issued: counter("osm_cert_issued_count", "Certificates issued"),
            cert_issue_time: histogram("osm_cert_issued_time", "Time to issue a certificate, seconds", FAST),
            cert_expiry: gauge(
                "osm_cert_next_expiry_timestamp_seconds",
                "When the service certificate in use that expires first expires (Unix time)",
            ),
            proxies_built: counter("osm_snapshot_proxies_built_count", "Proxy snapshots built"),
            snapshot_build_time: histogram(
                "osm_snapshot_build_time",
                "Time to build one batch of snapshots, seconds",
                FAST,
            ),
            change_ack_time: histogram(
                "osm_proxy_config_ack_time",
                "Time from a mesh change to a proxy's ACK of the configuration it brought, seconds",
                PROPAGATION,
            ),
            proxies_behind: gauge(
                "osm_proxy_out_of_date_count",
                "Connected proxies that do not hold everything sent to them (stale or NACK)",
            ),
            mesh_generation: gauge(
                "osm_mesh_generation",
                "The generation number of the latest mesh change the controller took (osm mesh changes)",
            ),
            proxies_not_holding_latest: gauge(
                "osm_proxy_not_holding_latest_count",
                "Connected proxies whose ACKed configuration lacks the latest mesh change",
            ),
            admissions: counters(
                "osm_admission_webhook_response_total",
                "Admission reviews answered",
                &["kind", "success"],
            ),
            leader_gauge: gauge("osm_controller_leader", "1 while this replica holds the leader Lease"),
            k8s_events: counters(
                "osm_k8s_api_event_count",
                "Kubernetes API events received (type: <kind>-applied, -deleted or -relisted)",
                &["type", "namespace"],
            ),
            namespaces: gauge("osm_resource_namespace_count", "Namespaces in the mesh"),
            feature_flags: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("osm_feature_flag_enabled", "MeshConfig feature flags (1: enabled)"),
                    &["feature_flag"],
                ),
            ),
            leader: Arc::default(),
            registry: r,
        }
    }
}

impl Metrics {
    /// A session of the proxy started; it counts into the returned counters (shared by the proxy's
    /// sessions: a reconnect may overlap the old stream).
    pub fn proxy_connected(&self, uuid: &messages::ProxyUuid, identity: &Arc<str>) -> Arc<ProxyCounters> {
        self.connected.inc();
        let Ok(mut m) = self.proxies.lock() else { return Arc::default() };
        let p = m.entry(uuid.clone()).or_insert_with(|| ProxySeries {
            identity: identity.clone(),
            sessions: 0,
            counters: Arc::default(),
        });
        if p.identity != *identity {
            // Another identity's counts are not this one's.
            p.identity = identity.clone();
            p.counters = Arc::default();
        }
        p.sessions += 1;
        p.counters.clone()
    }

    /// Drops the proxy's series once its last session ended.
    pub fn proxy_disconnected(&self, uuid: &str) {
        self.connected.dec();
        if let Ok(mut m) = self.proxies.lock()
            && let Some(p) = m.get_mut(uuid)
        {
            p.sessions = p.sessions.saturating_sub(1);
            if p.sessions == 0 {
                m.remove(uuid);
            }
        }
    }

    pub fn nack(&self, ty: &'static str) {
        self.nacks.with_label_values(&[ty]).inc();
    }

    /// A proxy refused at connection; `reason` is a short stable code.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshakes_failed.with_label_values(&[reason]).inc();
    }

    /// A user-visible error with a stable code happened.
    pub fn error(&self, code: &'static str) {
        self.errors.with_label_values(&[code]).inc();
    }

    /// A Kubernetes API event of `kind` (`applied`, `deleted` or `relisted`) in `namespace` ("" for a
    /// cluster-wide object or a relist).
    pub fn k8s_event(&self, kind: messages::Kind, what: &str, namespace: &str) {
        let ty = format!("{}-{what}", kind.name().to_ascii_lowercase());
        self.k8s_events.with_label_values(&[ty.as_str(), namespace]).inc();
    }

    pub fn set_namespaces(&self, n: usize) {
        self.namespaces.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_feature_flags(&self, flags: &[(String, bool)]) {
        for (flag, on) in flags {
            self.feature_flags.with_label_values(&[flag.as_str()]).set(i64::from(*on));
        }
    }

    /// An admission review of an object of `kind` was answered (allowed or not).
    pub fn admission(&self, kind: &str, allowed: bool) {
        self.admissions.with_label_values(&[kind, if allowed { "true" } else { "false" }]).inc();
    }

    pub fn set_policy_errors(&self, n: usize) {
        self.policy_errors.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn cert_issued(&self, took: Duration) {
        self.certs_issued.inc();
        self.cert_issue_time.observe(took.as_secs_f64());
    }

    /// When the service certificate in use that expires first expires (`None`: none in use).
    pub fn set_next_cert_expiry(&self, at: Option<std::time::SystemTime>) {
        let unix = at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        self.cert_expiry.set(i64::try_from(unix).unwrap_or(i64::MAX));
    }

    pub fn snapshots_built(&self, proxies: usize, took: Duration) {
        self.proxies_built.inc_by(proxies as u64);
        self.snapshot_build_time.observe(took.as_secs_f64());
    }

    /// A proxy ACKed everything a mesh change brought it, `took` after the change.
    pub fn change_acked(&self, took: Duration) {
        self.change_ack_time.observe(took.as_secs_f64());
    }

    /// Connected proxies that do not hold everything sent to them, as of now.
    pub fn set_proxies_behind(&self, n: usize) {
        self.proxies_behind.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The latest mesh generation, and how many connected proxies do not hold it.
    pub fn set_generation(&self, generation: u64, not_holding: usize) {
        self.mesh_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.proxies_not_holding_latest.set(i64::try_from(not_holding).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.leader_gauge.set(i64::from(self.leader.load(Ordering::Relaxed)));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics exposition failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_osm_names_and_drops_departed_proxies() {
        let m = Metrics::default();
        let u1 = m.proxy_connected(&messages::ProxyUuid::parse("u1").unwrap(), &"sa.ns".into());
        u1.xds_request("CDS");
        u1.xds_request("CDS");
        u1.response_sent("CDS", true);
        m.nack("LDS");
        m.error("E2025");
        m.snapshots_built(3, Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains("osm_proxy_connect_count 1\n"), "{text}");
        assert!(text.contains("osm_proxy_xds_request_count{identity=\"sa.ns\",proxy_uuid=\"u1\",type=\"CDS\"} 2\n"));
        assert!(
            text.contains(
                "osm_proxy_response_send_success_count{identity=\"sa.ns\",proxy_uuid=\"u1\",type=\"CDS\"} 1\n"
            )
        );
        assert!(text.contains("osm_proxy_nack_count{type=\"LDS\"} 1\n"));
        assert!(text.contains("osm_error_err_code_count{err_code=\"E2025\"} 1\n"));
        assert!(text.contains("osm_snapshot_build_time_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("osm_snapshot_build_time_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("osm_snapshot_build_time_count 1\n"));
        // A reconnect overlapping the old stream keeps the series until the last session ends.
        let again = m.proxy_connected(&messages::ProxyUuid::parse("u1").unwrap(), &"sa.ns".into());
        again.xds_request("CDS");
        m.proxy_disconnected("u1");
        assert!(
            m.encode().contains("osm_proxy_xds_request_count{identity=\"sa.ns\",proxy_uuid=\"u1\",type=\"CDS\"} 3\n")
        );
        assert!(m.encode().contains("proxy_uuid=\"u1\""));
        m.proxy_disconnected("u1");
        let text = m.encode();
        assert!(text.contains("osm_proxy_connect_count 0\n"));
        assert!(!text.contains("proxy_uuid=\"u1\""));
    }
}
