//! `mesh-demo`: a mesh on this machine with live traffic. The controller runs on the demo mesh directory;
//! bookbuyer calls the bookstore Service (two versions) over HTTP and the warehouse over TCP, through
//! real Envoy sidecars speaking mTLS. Prints every request, then what the sidecars counted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use testbed::{Binaries, LocalMesh, MeshOptions};

#[derive(Parser)]
#[command(name = "mesh-demo", about = "Runs a demo mesh on this machine (needs root: scripts/setup.sh first)")]
struct Args {
    /// Mesh directory to run (default: the bundled bookstore demo).
    #[arg(long)]
    mesh_dir: Option<PathBuf>,
    /// How long to send traffic, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Use incremental (delta) ADS.
    #[arg(long)]
    delta: bool,
}

fn main() -> std::process::ExitCode {
    testbed::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = args.mesh_dir.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo-mesh"));
    let mut opts = MeshOptions::new(&source);
    if args.delta {
        opts.ads_api = sidecar::AdsApi::Delta;
    }
    println!("building and starting the controller on {} ...", source.display());
    let mut mesh = LocalMesh::start(opts, Binaries::locate()?).context("starting the mesh")?;
    for (ns, name) in [
        ("bookstore", "bookstore-v1"),
        ("bookstore", "bookstore-v2"),
        ("warehouse", "stock-1"),
        ("bookbuyer", "bookbuyer"),
    ] {
        let pod = mesh.add_pod(ns, name).with_context(|| format!("starting pod {ns}/{name}"))?;
        println!("pod {ns}/{name:<13} ip {:<11} sidecar {} ready", pod.ip, pod.uuid);
    }
    mesh.spawn_app("bookstore/bookstore-v1", &["http-server", "--port", "8080", "--name", "bookstore-v1"])?;
    mesh.spawn_app("bookstore/bookstore-v2", &["http-server", "--port", "8080", "--name", "bookstore-v2"])?;
    mesh.spawn_app("warehouse/stock-1", &["tcp-echo", "--port", "9000", "--name", "stock-1"])?;
    std::thread::sleep(Duration::from_millis(300));

    println!("\nlive traffic from bookbuyer (apps dial ClusterIPs; sidecars intercept and speak mTLS):");
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut n = 0u32;
    while Instant::now() < deadline {
        n += 1;
        let out = mesh.app("bookbuyer/bookbuyer", &["get", &format!("http://10.96.1.10/books-bought/{n}")])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let status = text.lines().next().unwrap_or("no answer");
        let body = text.lines().nth(1).unwrap_or("").trim();
        println!("  HTTP #{n:<3} bookbuyer -> bookstore.bookstore:80  {status}  {body}");
        if n.is_multiple_of(3) {
            let out = mesh.app("bookbuyer/bookbuyer", &["tcp-send", "10.96.1.20:9000", &format!("restock {n}")])?;
            println!(
                "  TCP  #{n:<3} bookbuyer -> stock.warehouse:9000  {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    println!("\nwhat the sidecars counted:");
    for (pod, stat) in [
        ("bookbuyer/bookbuyer", "cluster.bookstore_bookstore_8080.upstream_rq_200"),
        ("bookbuyer/bookbuyer", "cluster.bookstore_bookstore_8080.ssl.handshake"),
        ("bookbuyer/bookbuyer", "cluster.warehouse_stock_9000.upstream_cx_total"),
        ("bookstore/bookstore-v1", "listener.0.0.0.0_15003.ssl.handshake"),
        ("bookstore/bookstore-v2", "listener.0.0.0.0_15003.ssl.handshake"),
        ("warehouse/stock-1", "listener.0.0.0.0_15003.ssl.handshake"),
    ] {
        println!("  {pod:<24} {stat:<50} {}", mesh.stat(pod, stat)?.map_or("-".to_owned(), |v| v.to_string()));
    }
    println!("\ncontroller metrics (GET :9091/metrics, excerpt):");
    for line in mesh.controller_http("/metrics")?.lines() {
        if line.starts_with("osm_proxy_connect_count")
            || line.starts_with("osm_cert_issued_count")
            || line.starts_with("osm_snapshot_proxies_built_count")
            || (line.starts_with("osm_proxy_response_send_success_count") && line.contains("bookbuyer"))
        {
            println!("  {line}");
        }
    }
    println!("\ncontroller log:\n{}", mesh.controller_output());
    Ok(())
}
