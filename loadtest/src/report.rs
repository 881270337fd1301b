//! What a run measured: a table for people, JSON for SCALE.md's charts and for comparing runs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Scenario;
use crate::client::{Changes, SidecarStats};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distribution {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Distribution {
    /// From microsecond samples.
    pub fn of_micros(mut v: Vec<u64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Self { count: v.len(), p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub command: String,
    pub scenario: serde_json::Value,
    pub sidecars: usize,
    pub converged: usize,
    /// Sidecars that never converged within the timeout.
    pub failed: usize,
    /// Launch → first response.
    pub connect: Distribution,
    /// Launch → full configuration received and acknowledged.
    pub converge: Distribution,
    /// First launch → last sidecar converged, seconds.
    pub all_converged_s: Option<f64>,
    pub controller_cpu_connect_ms: f64,
    pub cpu_per_sidecar_ms: f64,
    pub rss_before_mb: f64,
    pub rss_after_connect_mb: f64,
    pub rss_end_mb: f64,
    pub rss_per_sidecar_kb: f64,
    pub initial_bytes_per_sidecar: f64,
    /// The same by type: CDS, EDS, LDS, RDS, SDS (absent from older reports).
    #[serde(default)]
    pub initial_bytes_by_type: [f64; 5],
    pub changes: u32,
    /// Per change: write → the last sidecar has it.
    pub change_complete: Distribution,
    /// Per (change, sidecar): write → that sidecar has it.
    pub change_per_sidecar: Distribution,
    /// Sidecars that did not have the last change when the wait ended.
    pub stale: usize,
    pub bytes_per_change_per_sidecar: f64,
    pub controller_cpu_changes_ms: f64,
    pub idle_cpu_pct: Option<f64>,
    pub restart_stop_s: Option<f64>,
    pub restart_reconverged_s: Option<f64>,
    pub controller_stop_s: Option<f64>,
    pub connect_errors: u64,
    pub stream_errors: u64,
    /// A few of the errors sidecars saw, to say why.
    pub sample_errors: Vec<String>,
}

impl Report {
    pub fn new(sc: &Scenario, stats: &[Arc<SidecarStats>], all: bool) -> Self {
        let us = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let since_launch = |f: fn(&SidecarStats) -> &std::sync::atomic::AtomicU64| {
            stats
                .iter()
                .filter(|s| us(f(s)) > 0)
                .map(|s| us(f(s)).saturating_sub(us(&s.launched_us)))
                .collect::<Vec<u64>>()
        };
        let converged = stats.iter().filter(|s| us(&s.converged_us) > 0).count();
        let last = stats.iter().map(|s| us(&s.converged_us)).max().unwrap_or(0);
        let with_bytes: Vec<u64> = stats.iter().map(|s| us(&s.bytes_at_convergence)).filter(|b| *b > 0).collect();
        Self {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            scenario: serde_json::to_value(sc).unwrap_or_default(),
            sidecars: stats.len(),
            converged,
            failed: stats.len() - converged,
            connect: Distribution::of_micros(since_launch(|s| &s.first_response_us)),
            converge: Distribution::of_micros(since_launch(|s| &s.converged_us)),
            all_converged_s: all.then(|| last as f64 / 1e6),
            initial_bytes_per_sidecar: with_bytes.iter().sum::<u64>() as f64 / with_bytes.len().max(1) as f64,
            initial_bytes_by_type: std::array::from_fn(|i| {
                let converged = stats.iter().filter(|s| us(&s.bytes_at_convergence) > 0);
                converged.map(|s| us(&s.bytes_by_type_at_convergence[i])).sum::<u64>() as f64
                    / with_bytes.len().max(1) as f64
            }),
            ..Default::default()
        }
    }

    pub fn derive_per_sidecar(&mut self) {
        let n = self.sidecars.max(1) as f64;
        self.cpu_per_sidecar_ms = self.controller_cpu_connect_ms / n;
        self.rss_per_sidecar_kb = (self.rss_after_connect_mb - self.rss_before_mb) * 1000.0 / n;
    }

    pub fn record_changes(&mut self, changes: &Changes, n: u32, stats: &[Arc<SidecarStats>]) {
        self.changes = n;
        let mut complete = Vec::new();
        let mut all = Vec::new();
        for seq in 1..=n {
            let l = changes.latencies(seq);
            // A change reached everyone only if every sidecar recorded it.
            if l.len() >= stats.len()
                && let Some(max) = l.iter().max()
            {
                complete.push(*max);
            }
            all.extend(l);
        }
        self.change_complete = Distribution::of_micros(complete);
        self.change_per_sidecar = Distribution::of_micros(all);
        self.stale = stats.iter().filter(|s| s.max_seq.load(Ordering::Relaxed) < u64::from(n)).count();
    }

    pub fn finish(&mut self, stats: &[Arc<SidecarStats>]) {
        self.connect_errors = stats.iter().map(|s| s.connect_errors.load(Ordering::Relaxed)).sum();
        self.stream_errors = stats.iter().map(|s| s.stream_errors.load(Ordering::Relaxed)).sum();
        let mut seen = std::collections::BTreeSet::new();
        for s in stats {
            if let Ok(e) = s.last_error.lock()
                && let Some(e) = e.as_ref()
                && seen.len() < 5
            {
                seen.insert(e.clone());
            }
        }
        self.sample_errors = seen.into_iter().collect();
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2} {unit}"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |x: &Distribution| format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", x.p50_ms, x.p99_ms, x.max_ms);
        let rows: Vec<(&str, String)> = vec![
            ("command", self.command.clone()),
            ("sidecars", format!("{} ({} converged, {} failed)", self.sidecars, self.converged, self.failed)),
            ("connect (launch → first response)", d(&self.connect)),
            ("converge (launch → full config)", d(&self.converge)),
            ("all converged after", opt(self.all_converged_s, "s")),
            ("controller CPU per sidecar", format!("{:.3} ms", self.cpu_per_sidecar_ms)),
            (
                "controller RSS before / after",
                format!("{:.1} MB / {:.1} MB", self.rss_before_mb, self.rss_after_connect_mb),
            ),
            ("RSS per connected sidecar", format!("{:.1} kB", self.rss_per_sidecar_kb)),
            ("initial config bytes per sidecar", {
                let t = &self.initial_bytes_by_type;
                format!(
                    "{:.0} B (CDS {:.0}, EDS {:.0}, LDS {:.0}, RDS {:.0}, SDS {:.0})",
                    self.initial_bytes_per_sidecar, t[0], t[1], t[2], t[3], t[4]
                )
            }),
            ("changes", format!("{}", self.changes)),
            ("change → last sidecar", d(&self.change_complete)),
            ("change → each sidecar", d(&self.change_per_sidecar)),
            ("stale sidecars after the changes", format!("{}", self.stale)),
            ("bytes per change per sidecar", format!("{:.0} B", self.bytes_per_change_per_sidecar)),
            ("controller CPU during changes", format!("{:.0} ms", self.controller_cpu_changes_ms)),
            ("idle CPU", self.idle_cpu_pct.map_or_else(|| "—".to_owned(), |v| format!("{v:.2} % of a core"))),
            (
                "restart: stop / all reconverged",
                format!("{} / {}", opt(self.restart_stop_s, "s"), opt(self.restart_reconverged_s, "s")),
            ),
            ("RSS at the end", format!("{:.1} MB", self.rss_end_mb)),
            ("errors (connect / stream)", format!("{} / {}", self.connect_errors, self.stream_errors)),
        ];
        for (k, v) in rows {
            writeln!(f, "{k:<38} {v}")?;
        }
        for e in &self.sample_errors {
            writeln!(f, "{:<38} {e}", "sample error")?;
        }
        Ok(())
    }
}
