//! `osm-healthcheck`: the container the injector adds to pods with `tcpSocket` probes. It answers the
//! rewritten probes (`GET /osm-healthcheck` with an `Original-Tcp-Port` header, port 15904) by connecting
//! to that port on the pod's loopback, so the kubelet checks the application rather than its sidecar.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "osm-healthcheck", version, about = "Answers a pod's rewritten tcpSocket probes")]
struct Cli {
    /// Log level (error, warn, info, debug, trace).
    #[arg(short, long, default_value = "info")]
    verbosity: String,
    /// Where the probes arrive (the injector points them at port 15904).
    #[arg(long, default_value = "0.0.0.0:15904")]
    addr: SocketAddr,
    /// How long one connection attempt to the application may take.
    #[arg(long, default_value = "5")]
    dial_timeout_s: u64,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.verbosity)
        .with_context(|| format!("--verbosity {:?} is not a log level", cli.verbosity))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread: a probe every few seconds per container is all this serves.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(cli.addr).await.with_context(|| format!("listening on {}", cli.addr))?;
        tracing::info!(addr = %cli.addr, version = env!("CARGO_PKG_VERSION"), "osm-healthcheck serving");
        // Few connections (the kubelet sends one probe at a time per container), each short-lived: a
        // flood of idle sockets cannot pin descriptors or the process.
        let limits = actors::http::HttpLimits {
            max_connections: 32,
            header_timeout: Duration::from_secs(5),
            max_connection_age: Duration::from_secs(30),
            // The kubelet sends a few probes at a time from its node's address; no other peer can take
            // more than half the slots.
            max_per_peer: 16,
        };
        let app = actors::healthcheck::router(Duration::from_secs(cli.dial_timeout_s.max(1)));
        actors::http::serve_router(listener, app, limits, None, shutdown()).await.context("serving probes")
    })
}

async fn shutdown() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
