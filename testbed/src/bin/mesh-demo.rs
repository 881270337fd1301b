//! `mesh-demo`: a mesh on this machine with live traffic. The controller runs on the demo mesh directory in
//! SMI mode; bookbuyer calls the bookstore Service (two versions) over HTTP and the warehouse over TCP,
//! through real Envoy sidecars speaking mTLS, while the demo edits the policy live: an allowed call, a
//! denied one (403), a bookthief with no access, a TrafficSplit shifting traffic from v1 to v2, access
//! granted, an ingress from outside the mesh admitted by an IngressBackend, and a rate limit on the canary.
//! Prints every request, then what the sidecars counted.

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

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{name: bookstore, namespace: bookstore}}\n\
         spec:\n  service: bookstore\n  backends:\n  - {{service: bookstore-v1, weight: {v1}}}\n  \
         - {{service: bookstore-v2, weight: {v2}}}\n"
    )
}

/// Writes a mesh file, then waits until the controller applied `object` and every sidecar holds it.
fn apply(mesh: &LocalMesh, file: &str, contents: &str, object: &str) -> anyhow::Result<()> {
    mesh.write_mesh_file(file, contents)?;
    mesh.eventually(Duration::from_secs(20), &format!("the controller to apply {object}"), || {
        mesh.controller_output().contains(&format!("applied {object}")).then_some(())
    })?;
    mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "20"])?;
    Ok(())
}

/// `status=200 hello from ...` → `200  hello from ...`; no answer at all → why.
fn outcome(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next().and_then(|l| l.strip_prefix("status=")) {
        Some(code) => format!("{code}  {}", text.lines().nth(1).unwrap_or("").trim()),
        None => "no route: refused by its own sidecar".to_owned(),
    }
}

/// Traffic for `length`: bookbuyer buys books, restocks over TCP, and (with `probe`) tries a path it is not
/// allowed; bookthief tries to buy.
fn run_phase(mesh: &LocalMesh, length: Duration, n: &mut u32, probe: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + length;
    let mut first = true;
    while Instant::now() < deadline {
        *n += 1;
        let i = *n;
        let out = mesh.app("bookbuyer/bookbuyer", &["get", &format!("http://10.96.1.10/books-bought/{i}")])?;
        println!("   #{i:<3} bookbuyer GET bookstore/books-bought/{i:<4} {}", outcome(&out));
        if first {
            let out = mesh.app("bookbuyer/bookbuyer", &["tcp-send", "10.96.1.20:9000", &format!("restock {i}")])?;
            println!(
                "   #{i:<3} bookbuyer TCP stock.warehouse:9000      {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            if probe {
                let out = mesh.app("bookbuyer/bookbuyer", &["get", "http://10.96.1.10/admin"])?;
                println!("   #{i:<3} bookbuyer GET bookstore/admin              {}", outcome(&out));
            }
            let out =
                mesh.app("bookthief/bookthief", &["get", "http://10.96.1.10/books-bought/1", "--timeout-s", "2"])?;
            println!("   #{i:<3} bookthief GET bookstore/books-bought/1    {}", outcome(&out));
            first = false;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    Ok(())
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
        ("bookthief", "bookthief"),
    ] {
        let pod = mesh.add_pod(ns, name).with_context(|| format!("starting pod {ns}/{name}"))?;
        println!("pod {ns}/{name:<13} ip {:<11} sidecar {} ready", pod.ip, pod.uuid);
    }
    mesh.spawn_app("bookstore/bookstore-v1", &["http-server", "--port", "8080", "--name", "bookstore-v1"])?;
    mesh.spawn_app("bookstore/bookstore-v2", &["http-server", "--port", "8080", "--name", "bookstore-v2"])?;
    mesh.spawn_app("warehouse/stock-1", &["tcp-echo", "--port", "9000", "--name", "stock-1"])?;
    std::thread::sleep(Duration::from_millis(300));

    // Each phase sends traffic for a quarter of --seconds, then the demo edits the mesh directory live.
    let phase = Duration::from_secs((args.seconds / 4).max(3));
    let mut n = 0u32;

    println!("\n1. SMI policy (meshconfig.yaml, policy.yaml): bookbuyer may GET /books-bought/... and restock over");
    println!("   TCP; anything else is refused by the destination's sidecar; bookthief is named by no TrafficTarget.");
    run_phase(&mesh, phase, &mut n, true)?;
    println!(
        "\n   why is bookthief refused? osm verify connectivity --from bookthief/bookthief --to bookstore/bookstore"
    );
    let out = mesh.osm(&["verify", "connectivity", "--from", "bookthief/bookthief", "--to", "bookstore/bookstore"])?;
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("FAIL") || l.starts_with("BLOCKED"))
    {
        println!("   {line}");
    }

    println!("\n2. TrafficSplit written live: bookstore -> bookstore-v1 50%, bookstore-v2 50%");
    mesh.write_mesh_file("split.yaml", &split(50, 50))?;
    run_phase(&mesh, phase, &mut n, false)?;

    println!("\n3. Canary done, written live: bookstore -> bookstore-v2 100%");
    mesh.write_mesh_file("split.yaml", &split(0, 100))?;
    run_phase(&mesh, phase, &mut n, false)?;

    println!("\n4. bookthief added to the bookstore TrafficTarget live: it may buy books too");
    let policy = std::fs::read_to_string(mesh.mesh_dir.join("policy.yaml"))?;
    mesh.write_mesh_file(
        "policy.yaml",
        &policy.replacen(
            "  - {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}\n",
            "  - {kind: ServiceAccount, name: bookbuyer, namespace: bookbuyer}\n  \
             - {kind: ServiceAccount, name: bookthief, namespace: bookthief}\n",
            1,
        ),
    )?;
    run_phase(&mesh, phase, &mut n, true)?;

    println!("\n5. Ingress and a canary rate limit. A host outside the mesh (an ingress proxy at 10.244.9.1) calls");
    println!("   bookstore-v2's pod: turned away until an IngressBackend names its address; then an");
    println!("   UpstreamTrafficSetting on the bookstore caps each of its sidecars at 3 requests an hour: the canary");
    println!("   (v2, taking all the traffic now) answers 429 beyond, with a header.");
    let ingress = mesh.add_external_host("ingress", std::net::Ipv4Addr::new(10, 244, 9, 1))?;
    let from_ingress = |mesh: &LocalMesh, path: &str| -> anyhow::Result<String> {
        let url = format!("http://10.244.2.2:8080{path}");
        let out = mesh.app(&ingress, &["get", &url, "--timeout-s", "2"])?;
        Ok(match String::from_utf8_lossy(&out.stdout).lines().next() {
            Some(l) if l.starts_with("status=") => outcome(&out),
            _ => "connection turned away by the sidecar (no IngressBackend)".to_owned(),
        })
    };
    println!("   ingress   GET bookstore-v2:8080/ (no policy)    {}", from_ingress(&mesh, "/")?);
    apply(
        &mesh,
        "ingress.yaml",
        "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: IngressBackend\n\
         metadata: {name: bookstore-v2, namespace: bookstore}\nspec:\n\
         \x20 backends: [{name: bookstore-v2, port: {number: 8080, protocol: http}}]\n\
         \x20 sources: [{kind: IPRange, name: 10.244.9.1/32}]\n",
        "IngressBackend bookstore/bookstore-v2",
    )?;
    println!("   ingress   GET bookstore-v2:8080/ (IngressBackend) {}", from_ingress(&mesh, "/")?);
    apply(
        &mesh,
        "canary-limit.yaml",
        "apiVersion: policy.openservicemesh.io/v1alpha1\nkind: UpstreamTrafficSetting\n\
         metadata: {name: canary, namespace: bookstore}\nspec:\n  host: bookstore.bookstore.svc.cluster.local\n\
         \x20 rateLimit: {local: {http: {requests: 3, unit: hour, responseHeadersToAdd: [{name: x-canary, value: limited}]}}}\n",
        "UpstreamTrafficSetting bookstore/canary",
    )?;
    run_phase(&mesh, phase, &mut n, false)?;
    let out = mesh.osm(&["policy", "get", "bookstore/bookstore-v2"])?;
    println!("\n   osm policy get bookstore/bookstore-v2:");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }

    println!("\nwhat the sidecars counted:");
    for (pod, stat) in [
        ("bookbuyer/bookbuyer", "cluster.bookstore_bookstore_8080.upstream_rq_200"),
        ("bookbuyer/bookbuyer", "cluster.bookstore_bookstore-v1_8080.upstream_rq_200"),
        ("bookbuyer/bookbuyer", "cluster.bookstore_bookstore-v2_8080.upstream_rq_200"),
        ("bookstore/bookstore-v1", "http.rds-inbound.8080.rbac.denied"),
        ("bookstore/bookstore-v2", "http.rds-inbound.8080.rbac.denied"),
        ("bookbuyer/bookbuyer", "cluster.warehouse_stock_9000.upstream_cx_total"),
        ("bookstore/bookstore-v1", "listener.0.0.0.0_15003.ssl.handshake"),
        ("bookstore/bookstore-v2", "listener.0.0.0.0_15003.ssl.handshake"),
        ("warehouse/stock-1", "listener.0.0.0.0_15003.ssl.handshake"),
        ("bookstore/bookstore-v2", "http_local_rate_limiter.http_local_rate_limit.rate_limited"),
        ("bookstore/bookstore-v2", "http.rds-ingress.8080.downstream_rq_2xx"),
    ] {
        println!("  {pod:<24} {stat:<52} {}", mesh.stat(pod, stat)?.map_or("-".to_owned(), |v| v.to_string()));
    }
    println!("\nosm proxy status --wait (is every change live?):");
    let out = mesh.osm(&["proxy", "status", "--wait", "--timeout-s", "20"])?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    println!("\ncontroller metrics (GET :9091/metrics, excerpt):");
    for line in mesh.controller_http("/metrics")?.lines() {
        if line.starts_with("osm_proxy_connect_count")
            || line.starts_with("osm_cert_issued_count")
            || line.starts_with("osm_snapshot_proxies_built_count")
            || line.starts_with("osm_policy_error_count")
            || (line.starts_with("osm_proxy_response_send_success_count") && line.contains("bookbuyer"))
        {
            println!("  {line}");
        }
    }
    println!("\ncontroller log:\n{}", mesh.controller_output());
    Ok(())
}
