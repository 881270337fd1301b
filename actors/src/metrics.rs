//! Control-plane metrics, exposed in the Prometheus text format on `/metrics`.
//!
//! Names and labels follow OSM (`osm_proxy_connect_count`, `osm_proxy_xds_request_count{proxy_uuid,identity,type}`,
//! ...) so existing dashboards keep working; written by hand because OpenMetrics client libraries append
//! `_total` to counter names. Per-proxy series are removed when the proxy disconnects, so their number is
//! bounded by the connected proxies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A histogram with fixed upper bounds, in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }

    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        if let Ok(mut g) = self.inner.lock() {
            for (i, b) in self.bounds.iter().enumerate() {
                if v <= *b {
                    g.0[i] += 1;
                }
            }
            g.1 += v;
            g.2 += 1;
        }
    }

    fn encode(&self, out: &mut String, name: &str, help: &str) {
        let Ok(g) = self.inner.lock() else { return };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&g.0) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", g.2, g.1, g.2);
    }
}

/// The `type` label values of per-proxy series, in exposition order.
const TYPE_LABELS: [&str; 6] = ["CDS", "EDS", "LDS", "RDS", "SDS", "other"];

/// The per-proxy metrics, in exposition order.
const PROXY_METRICS: [(&str, &str); 3] = [
    ("osm_proxy_xds_request_count", "xDS requests received from proxies"),
    ("osm_proxy_response_send_success_count", "xDS responses sent to proxies"),
    ("osm_proxy_response_send_error_count", "xDS responses that could not be sent"),
];

/// One connected proxy's counters, held by its sessions: counting is an atomic add, never a lookup under
/// a lock shared by every session (10,000 sessions answering a change at once contended on one).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// [metric][type], indexed as [`PROXY_METRICS`] × [`TYPE_LABELS`].
    counts: [[AtomicU64; TYPE_LABELS.len()]; PROXY_METRICS.len()],
}

impl ProxyCounters {
    fn bump(&self, metric: usize, ty: &str) {
        let ty = TYPE_LABELS.iter().position(|t| *t == ty).unwrap_or(TYPE_LABELS.len() - 1);
        self.counts[metric][ty].fetch_add(1, Ordering::Relaxed);
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
    identity: String,
    sessions: u32,
    counters: Arc<ProxyCounters>,
}

#[derive(Debug)]
pub struct Metrics {
    connected: AtomicI64,
    /// Per-proxy series by UUID: a disconnect drops one entry, not a scan of every series.
    proxies: Mutex<BTreeMap<String, ProxySeries>>,
    nacks: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed ADS TLS handshakes by reason.
    handshakes_failed: Mutex<BTreeMap<&'static str, u64>>,
    /// `osm_error_err_code_count{err_code}`: user-visible errors by stable code.
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Policy objects (or parts of them) not in force right now.
    policy_errors: AtomicI64,
    certs_issued: AtomicU64,
    pub cert_issue_time: Histogram,
    pub snapshot_build_time: Histogram,
    proxies_built: AtomicU64,
    /// `osm_admission_webhook_response_total{kind,success}`: admission reviews answered.
    admissions: Mutex<BTreeMap<(String, bool), u64>>,
    /// This replica holds the Lease of the one-time duties (Kubernetes).
    pub leader: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        const FAST: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        Self {
            connected: AtomicI64::new(0),
            proxies: Mutex::default(),
            nacks: Mutex::default(),
            rejected: Mutex::default(),
            errors: Mutex::default(),
            handshakes_failed: Mutex::default(),
            policy_errors: AtomicI64::new(0),
            certs_issued: AtomicU64::new(0),
            cert_issue_time: Histogram::new(FAST),
            snapshot_build_time: Histogram::new(FAST),
            proxies_built: AtomicU64::new(0),
            admissions: Mutex::default(),
            leader: Arc::default(),
        }
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// A session of the proxy started; it counts into the returned counters (shared by the proxy's
    /// sessions: a reconnect may overlap the old stream).
    pub fn proxy_connected(&self, uuid: &str, identity: &str) -> Arc<ProxyCounters> {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let Ok(mut m) = self.proxies.lock() else { return Arc::default() };
        let p = m.entry(uuid.to_owned()).or_insert_with(|| ProxySeries {
            identity: identity.to_owned(),
            sessions: 0,
            counters: Arc::default(),
        });
        p.identity = identity.to_owned();
        p.sessions += 1;
        p.counters.clone()
    }

    /// Drops the proxy's series once its last session ended.
    pub fn proxy_disconnected(&self, uuid: &str) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
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
        bump(&self.nacks, ty);
    }

    /// A proxy refused at connection; `reason` is a short stable code.
    pub fn rejected(&self, reason: &'static str) {
        bump(&self.rejected, reason);
    }

    pub fn handshake_failed(&self, reason: &'static str) {
        bump(&self.handshakes_failed, reason);
    }

    /// A user-visible error with a stable code happened.
    pub fn error(&self, code: &'static str) {
        bump(&self.errors, code);
    }

    /// An admission review of an object of `kind` was answered (allowed or not).
    pub fn admission(&self, kind: &str, allowed: bool) {
        bump(&self.admissions, (kind.to_owned(), allowed));
    }

    pub fn set_policy_errors(&self, n: usize) {
        self.policy_errors.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn cert_issued(&self, took: Duration) {
        self.certs_issued.fetch_add(1, Ordering::Relaxed);
        self.cert_issue_time.observe(took);
    }

    pub fn snapshots_built(&self, proxies: usize, took: Duration) {
        self.proxies_built.fetch_add(proxies as u64, Ordering::Relaxed);
        self.snapshot_build_time.observe(took);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP osm_version_info Version of the control plane\n# TYPE osm_version_info gauge\nosm_version_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP osm_proxy_connect_count Number of connected proxies\n# TYPE osm_proxy_connect_count gauge\nosm_proxy_connect_count {}",
            self.connected.load(Ordering::Relaxed)
        );
        for (metric, (name, help)) in PROXY_METRICS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(m) = self.proxies.lock() {
                for (uuid, p) in m.iter() {
                    for (ty, v) in TYPE_LABELS.iter().zip(&p.counters.counts[metric]) {
                        let v = v.load(Ordering::Relaxed);
                        if v > 0 {
                            let _ = writeln!(
                                out,
                                "{name}{{proxy_uuid=\"{}\",identity=\"{}\",type=\"{ty}\"}} {v}",
                                escape(uuid),
                                escape(&p.identity)
                            );
                        }
                    }
                }
            }
        }
        for (name, help, label, map) in [
            ("osm_proxy_nack_count", "xDS responses proxies rejected (NACK)", "type", &self.nacks),
            ("osm_proxy_rejected_count", "proxies refused at connection", "reason", &self.rejected),
            ("osm_error_err_code_count", "errors by stable error code", "err_code", &self.errors),
            (
                "osm_ads_tls_handshake_failed_count",
                "ADS connections whose TLS handshake failed",
                "reason",
                &self.handshakes_failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(m) = map.lock() {
                for (k, v) in m.iter() {
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP osm_controller_leader 1 while this replica holds the leader Lease\n# TYPE osm_controller_leader gauge\nosm_controller_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        let name = "osm_admission_webhook_response_total";
        let _ = writeln!(out, "# HELP {name} Admission reviews answered\n# TYPE {name} counter");
        if let Ok(m) = self.admissions.lock() {
            for ((kind, ok), v) in m.iter() {
                let _ = writeln!(out, "{name}{{kind=\"{}\",success=\"{ok}\"}} {v}", escape(kind));
            }
        }
        let _ = writeln!(
            out,
            "# HELP osm_policy_error_count Policy objects or parts of them not in force\n# TYPE osm_policy_error_count gauge\nosm_policy_error_count {}",
            self.policy_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP osm_cert_issued_count Certificates issued\n# TYPE osm_cert_issued_count counter\nosm_cert_issued_count {}",
            self.certs_issued.load(Ordering::Relaxed)
        );
        self.cert_issue_time.encode(&mut out, "osm_cert_issued_time", "Time to issue a certificate, seconds");
        let _ = writeln!(
            out,
            "# HELP osm_snapshot_proxies_built_count Proxy snapshots built\n# TYPE osm_snapshot_proxies_built_count counter\nosm_snapshot_proxies_built_count {}",
            self.proxies_built.load(Ordering::Relaxed)
        );
        self.snapshot_build_time.encode(
            &mut out,
            "osm_snapshot_build_time",
            "Time to build one batch of snapshots, seconds",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_osm_names_and_drops_departed_proxies() {
        let m = Metrics::default();
        let u1 = m.proxy_connected("u1", "sa.ns");
        u1.xds_request("CDS");
        u1.xds_request("CDS");
        u1.response_sent("CDS", true);
        m.nack("LDS");
        m.error("E2025");
        m.snapshots_built(3, Duration::from_millis(2));
        let text = m.encode();
        assert!(text.contains("osm_proxy_connect_count 1\n"), "{text}");
        assert!(text.contains("osm_proxy_xds_request_count{proxy_uuid=\"u1\",identity=\"sa.ns\",type=\"CDS\"} 2\n"));
        assert!(
            text.contains(
                "osm_proxy_response_send_success_count{proxy_uuid=\"u1\",identity=\"sa.ns\",type=\"CDS\"} 1\n"
            )
        );
        assert!(text.contains("osm_proxy_nack_count{type=\"LDS\"} 1\n"));
        assert!(text.contains("osm_error_err_code_count{err_code=\"E2025\"} 1\n"));
        assert!(text.contains("osm_snapshot_build_time_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("osm_snapshot_build_time_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("osm_snapshot_build_time_count 1\n"));
        // A reconnect overlapping the old stream keeps the series until the last session ends.
        let again = m.proxy_connected("u1", "sa.ns");
        again.xds_request("CDS");
        m.proxy_disconnected("u1");
        assert!(
            m.encode().contains("osm_proxy_xds_request_count{proxy_uuid=\"u1\",identity=\"sa.ns\",type=\"CDS\"} 3\n")
        );
        assert!(m.encode().contains("proxy_uuid=\"u1\""));
        m.proxy_disconnected("u1");
        let text = m.encode();
        assert!(text.contains("osm_proxy_connect_count 0\n"));
        assert!(!text.contains("proxy_uuid=\"u1\""));
    }
}
