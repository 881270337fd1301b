//! The whole controller on a runtime of its own, on loopback listeners, for the in-process tests.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code; each test file uses a part

use std::time::Duration;

/// A controller running on its own thread; stopped (and waited for) when dropped.
pub struct Running {
    pub ads_port: u16,
    pub http_port: u16,
    pub webhook_port: u16,
    pub validator_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Runs `config` with the ADS, HTTP and webhook listeners on free loopback ports.
    pub fn start(config: actors::ControllerConfig) -> Self {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let bind = || xds::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let (ads, http, webhook, validator) = (bind(), bind(), bind(), bind());
                let port = |l: &tokio::net::TcpListener| l.local_addr().unwrap().port();
                port_tx.send((port(&ads), port(&http), port(&webhook), port(&validator))).unwrap();
                let listeners =
                    actors::Listeners { ads, http: Some(http), webhook: Some(webhook), validator: Some(validator) };
                actors::run_on(config, listeners, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let (ads_port, http_port, webhook_port, validator_port) =
            port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self { ads_port, http_port, webhook_port, validator_port, stop: Some(stop), thread: Some(thread) }
    }
}

impl Running {
    /// Tells the controller to shut down; its thread, to wait for it.
    pub fn stop(&mut self) -> std::thread::JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.thread.take().expect("stopped once")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain HTTP GET on loopback: the status and body, or `None` when nothing answers (refused). A server
/// that accepts and then never answers fails the test rather than hanging it.
pub async fn get_at(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_owned()))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on port {port}: no answer within 10 s"))
}

/// A controller of the cluster at `cluster_url` only (no mesh directory) for the mesh `osm` in `osm-system`,
/// as replica `replica`, keeping its state in `state_dir`, ADS on a loopback port.
pub fn on_cluster(cluster_url: &str, state_dir: &std::path::Path, replica: &str) -> actors::ControllerConfig {
    let mut config = actors::ControllerConfig::new(state_dir.join("state"));
    config.mesh_dir = None;
    config.ads_addr = "127.0.0.1:0".parse().unwrap();
    config.kubernetes = Some(actors::KubernetesSource::new(
        kube::Config::new(cluster_url.parse().unwrap()),
        "osm",
        "osm-system",
        replica,
    ));
    config
}
