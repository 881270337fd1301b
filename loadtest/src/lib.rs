//! The load-test harness: measures a running `osm-controller` from the outside.
//!
//! Place in the data flow: it stands where the sidecars stand. [`mesh`] writes a generated mesh as the
//! controller's YAML directory (and churns it); [`run`] starts the real controller binary on it as a
//! separate process, connects N simulated sidecars ([`client::Sidecar`], real ADS clients over mTLS, each
//! with its own client certificate), writes marked changes and times them to the last sidecar, and samples
//! the controller's CPU and memory from `/proc`. The result is a [`report::Report`] (a table and JSON) whose
//! figures go to SCALE.md. The same client serves the in-process tests and the smoke run in the suite.

pub mod client;
pub mod mesh;
pub mod report;

use ::certs::Issuer as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::client::{Api, Changes, ConnectConfig, Sidecar, SidecarConfig, SidecarStats};
use crate::mesh::{ChurnKind, MeshSpec};
use crate::report::Report;

/// One load-test run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scenario {
    pub mesh: MeshSpec,
    pub api: Api,
    /// Sidecars launched per second.
    pub rate: f64,
    /// Marked changes written after convergence, and how many per second.
    pub changes: u32,
    pub change_rate: f64,
    /// Seconds of idle CPU sampling after the changes (0: none).
    pub idle_s: u64,
    /// Restart the controller at the end and time the reconnection of every sidecar.
    pub restart: bool,
    /// Loopback source addresses the sidecars spread over (127.0.0.1 ..).
    pub source_ips: u8,
    /// How long to wait for convergence, and for each change, before calling the rest stale.
    pub timeout: Duration,
    #[serde(skip)]
    pub controller_bin: PathBuf,
    pub controller_args: Vec<String>,
    #[serde(skip)]
    pub work_dir: PathBuf,
    /// Show progress bars (on a terminal).
    #[serde(skip)]
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("the controller did not become ready within {0:?}; see its log at {1}")]
    NotReady(Duration, PathBuf),
    #[error("the controller exited early ({0}); see its log at {1}")]
    ControllerExited(String, PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoadtestError {
    let what = what.into();
    move |source| LoadtestError::Io { what, source }
}

/// The controller under test, as a child process.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    pub ads: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

fn free_port() -> Result<u16, LoadtestError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

impl ControllerProcess {
    pub fn start(
        bin: &Path,
        mesh_dir: &Path,
        state_dir: &Path,
        extra: &[String],
        log: &Path,
    ) -> Result<Self, LoadtestError> {
        let ads = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        Self::start_on(bin, mesh_dir, state_dir, extra, log, ads, http)
    }

    /// Starts the controller on given addresses (a restart keeps the address sidecars know).
    pub fn start_on(
        bin: &Path,
        mesh_dir: &Path,
        state_dir: &Path,
        extra: &[String],
        log: &Path,
        ads: SocketAddr,
        http: SocketAddr,
    ) -> Result<Self, LoadtestError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let err = out.try_clone().map_err(io("log file"))?;
        let child = Command::new(bin)
            .arg("--mesh-dir")
            .arg(mesh_dir)
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--ads-addr", &ads.to_string(), "--http-addr", &http.to_string()])
            .args(extra)
            .env("RUST_LOG", std::env::var("LOADTEST_CONTROLLER_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        Ok(Self { child, ads, http, log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for `/health/ready`.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), LoadtestError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LoadtestError::ControllerExited(status.to_string(), self.log.clone()));
            }
            if http_status(self.http, "/health/ready").await == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LoadtestError::NotReady(within, self.log.clone()))
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) -> Option<Duration> {
        let started = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET; the status code, or `None` when nothing answered.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut raw)).await.ok()?.ok()?;
    String::from_utf8_lossy(&raw).split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) and resident memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcSample { cpu: Duration::from_millis(ticks * 1000 / USER_HZ), rss_bytes: rss_kb * 1024 })
}

fn bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len}") {
        pb.set_style(style);
    }
    pb.set_message(what.to_owned());
    pb
}

/// Runs a scenario end to end and reports what it measured.
pub async fn run(sc: &Scenario) -> Result<Report, LoadtestError> {
    let mesh_dir = sc.work_dir.join("mesh");
    let state_dir = sc.work_dir.join("state");
    let _ = std::fs::remove_dir_all(&mesh_dir);
    std::fs::create_dir_all(&mesh_dir).map_err(io(format!("creating {}", mesh_dir.display())))?;
    std::fs::create_dir_all(&state_dir).map_err(io(format!("creating {}", state_dir.display())))?;
    let pods = mesh::write_mesh(&mesh_dir, &sc.mesh).map_err(io("writing the mesh"))?;

    // The mesh CA is created here, so the sidecars' client certificates can be issued before the clock
    // starts; the controller loads the same state directory.
    let ca = Arc::new(certs::CertificateAuthority::load_or_create(&state_dir, messages::DEFAULT_TRUST_DOMAIN)?);
    let creds = issue_client_certs(&ca, &pods)?;

    let log = sc.work_dir.join("controller.log");
    let _ = std::fs::remove_file(&log);
    let mut controller =
        ControllerProcess::start(&sc.controller_bin, &mesh_dir, &state_dir, &sc.controller_args, &log)?;
    controller.wait_ready(Duration::from_secs(120)).await?;
    let pid = controller.pid();
    // Let start-up settle (the first scan, the listener) before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample(pid).unwrap_or_default();

    let epoch = Instant::now();
    let changes = Arc::new(Changes::new(sc.changes as usize + 1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stats: Vec<Arc<SidecarStats>> = Vec::with_capacity(pods.len());
    let mut tasks = tokio::task::JoinSet::new();
    let pb = bar(sc.progress, pods.len() as u64, "converged");
    let interval = Duration::from_secs_f64(1.0 / sc.rate.max(1.0));
    for (i, (pod, (cert_pem, key_pem))) in pods.iter().zip(creds).enumerate() {
        let cfg = SidecarConfig {
            uuid: pod.uuid.clone(),
            api: sc.api,
            nack: None,
            connect: ConnectConfig {
                addr: controller.ads,
                server_name: certs::ads_server_common_name(messages::DEFAULT_TRUST_DOMAIN),
                ca_pem: ca.root_pem().to_owned(),
                cert_pem,
                key_pem,
                local_ip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sc.source_ips.max(1) as usize) as u8))),
            },
        };
        let sidecar = Sidecar::new(cfg, epoch, changes.clone());
        stats.push(sidecar.stats.clone());
        // Launch on schedule: sidecar i starts at i / rate.
        let due = epoch + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        tasks.spawn(sidecar.run(stop_rx.clone()));
        if i % 64 == 0 {
            pb.set_position(stats.iter().filter(|s| s.is_converged()).count() as u64);
        }
    }
    let converged_all = wait_until(sc.timeout, || {
        let n = stats.iter().filter(|s| s.is_converged()).count();
        pb.set_position(n as u64);
        n == stats.len()
    })
    .await;
    pb.finish_and_clear();
    let after_connect = sample(pid).unwrap_or_default();
    let mut report = Report::new(sc, &stats, converged_all);
    report.controller_cpu_connect_ms = (after_connect.cpu.saturating_sub(before.cpu)).as_secs_f64() * 1000.0;
    report.rss_before_mb = before.rss_bytes as f64 / 1e6;
    report.rss_after_connect_mb = after_connect.rss_bytes as f64 / 1e6;
    report.derive_per_sidecar();

    // Marked changes, at the given rate; each is timed to every sidecar.
    if sc.changes > 0 {
        let bytes_before: u64 = stats.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
        let cpu_before = sample(pid).unwrap_or_default().cpu;
        let pb = bar(sc.progress, u64::from(sc.changes), "changes");
        let every = Duration::from_secs_f64(1.0 / sc.change_rate.max(0.001));
        let start = Instant::now();
        for seq in 1..=sc.changes.min(mesh::MAX_MARKER) {
            tokio::time::sleep_until((start + every.mul_f64(f64::from(seq - 1))).into()).await;
            changes.mark_written(seq);
            let written = match sc.mesh.churn {
                ChurnKind::Endpoints => mesh::write_endpoint_change(&mesh_dir, seq),
                ChurnKind::Pods => mesh::add_churn_pod(&mesh_dir, seq)
                    .and_then(|()| if seq > 1 { mesh::remove_churn_pod(&mesh_dir, seq - 1) } else { Ok(()) }),
            };
            written.map_err(io("writing a change"))?;
            pb.inc(1);
        }
        let last = u64::from(sc.changes);
        // Stale sidecars are counted in the report; the wait only gives the last change its time.
        wait_until(sc.timeout, || stats.iter().all(|s| s.max_seq.load(Ordering::Relaxed) >= last)).await;
        pb.finish_and_clear();
        let bytes_after: u64 = stats.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum();
        let cpu_after = sample(pid).unwrap_or_default().cpu;
        report.record_changes(&changes, sc.changes, &stats);
        report.bytes_per_change_per_sidecar =
            (bytes_after - bytes_before) as f64 / f64::from(sc.changes) / stats.len().max(1) as f64;
        report.controller_cpu_changes_ms = cpu_after.saturating_sub(cpu_before).as_secs_f64() * 1000.0;
    }

    if sc.idle_s > 0 {
        let a = sample(pid).unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(sc.idle_s)).await;
        let b = sample(pid).unwrap_or_default();
        report.idle_cpu_pct = Some(b.cpu.saturating_sub(a.cpu).as_secs_f64() / sc.idle_s as f64 * 100.0);
    }
    report.rss_end_mb = sample(pid).unwrap_or_default().rss_bytes as f64 / 1e6;

    if sc.restart {
        let (ads, http) = (controller.ads, controller.http);
        report.restart_stop_s = controller.stop(Duration::from_secs(30)).map(|d| d.as_secs_f64());
        drop(controller);
        let restarted = Instant::now();
        let restarted_us = restarted.duration_since(epoch).as_micros() as u64;
        // Same address: the sidecars' bootstrap names one.
        let mut again = ControllerProcess::start_on(
            &sc.controller_bin,
            &mesh_dir,
            &state_dir,
            &sc.controller_args,
            &log,
            ads,
            http,
        )?;
        again.wait_ready(Duration::from_secs(120)).await?;
        let pb = bar(sc.progress, stats.len() as u64, "reconnected");
        let back = wait_until(sc.timeout, || {
            let n = stats
                .iter()
                .filter(|s| s.is_converged() && s.last_converged_us.load(Ordering::Relaxed) > restarted_us)
                .count();
            pb.set_position(n as u64);
            n == stats.len()
        })
        .await;
        pb.finish_and_clear();
        report.restart_reconverged_s = back.then(|| restarted.elapsed().as_secs_f64());
        controller = again;
    }

    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    report.finish(&stats);
    report.controller_stop_s = controller.stop(Duration::from_secs(30)).map(|d| d.as_secs_f64());
    Ok(report)
}

/// Polls `done` every 20 ms until it holds or `timeout` passes; whether it held.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client certificate per sidecar, issued on every core before the measurement starts.
fn issue_client_certs(
    ca: &certs::CertificateAuthority,
    pods: &[mesh::ClientPod],
) -> Result<Vec<(String, String)>, LoadtestError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = pods.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<(String, String)>, certs::CertError>> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|p| {
                            let proxy = messages::ProxyId {
                                uuid: messages::ProxyUuid::parse(&p.uuid)
                                    .unwrap_or_else(|_| messages::ProxyUuid::derived(mesh::NAMESPACE, &p.uuid)),
                                identity: messages::ServiceIdentity::new(p.service_account.clone(), mesh::NAMESPACE),
                            };
                            ca.issue_proxy_client(&proxy, Duration::from_secs(24 * 3600))
                                .map(|c| (c.cert_pem, c.key_pem))
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new()))).collect()
    });
    let mut out = Vec::with_capacity(pods.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
