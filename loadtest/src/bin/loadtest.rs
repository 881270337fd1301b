//! `loadtest`: runs a scenario against the real `osm-controller` and prints what it measured.
//!
//! The standard scenario (SCALE.md): `loadtest --release-controller --sidecars 10000 --rate 5000`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loadtest::client::Api;
use loadtest::mesh::{ChurnKind, MeshSpec};

#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "Measures osm-controller with simulated sidecars (ADS over mTLS)")]
struct Cli {
    /// Simulated sidecars (client pods), each with its own client certificate.
    #[arg(long, default_value_t = 1000)]
    sidecars: usize,
    /// Sidecars launched per second.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Server Services every sidecar sees.
    #[arg(long, default_value_t = 10)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    /// Service accounts the sidecars are spread over (identities).
    #[arg(long, default_value_t = 100)]
    accounts: usize,
    #[arg(long, default_value_t = 100)]
    pods_per_file: usize,
    #[arg(long, value_enum, default_value_t = Api::Sotw)]
    api: Api,
    /// Marked changes written once every sidecar converged.
    #[arg(long, default_value_t = 20)]
    changes: u32,
    /// Changes per second.
    #[arg(long, default_value_t = 2.0)]
    change_rate: f64,
    #[arg(long, value_enum, default_value_t = ChurnKind::Endpoints)]
    churn: ChurnKind,
    /// SMI mode: permissive mode off, every client identity allowed to every server identity by
    /// TrafficTargets (use with `--churn pods`: in SMI mode only pods' addresses are endpoints).
    #[arg(long)]
    smi: bool,
    /// Seconds of idle CPU sampling after the changes.
    #[arg(long, default_value_t = 0)]
    idle_s: u64,
    /// Restart the controller at the end and time the reconnection.
    #[arg(long)]
    restart: bool,
    /// Loopback source addresses to spread connections over (each offers ~28k ports).
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// The controller binary (default: `osm-controller` next to this binary).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// Extra controller flag (repeatable), e.g. `--controller-arg=--serve-threads=2`.
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
    /// Where the mesh, the CA and the controller's log are written.
    #[arg(long, default_value = "target/loadtest")]
    work_dir: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a log file or a collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Every sidecar holds a connection.
    let fds = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if (fds as usize) < cli.sidecars + 256 {
        anyhow::bail!("the open-file limit is {fds}: too low for {} sidecars", cli.sidecars);
    }
    let controller_bin = match cli.controller_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("osm-controller"),
    };
    anyhow::ensure!(
        controller_bin.exists(),
        "{} not found (hint: cargo build --release -p actors, or pass --controller-bin)",
        controller_bin.display()
    );
    let scenario = loadtest::Scenario {
        mesh: MeshSpec {
            services: cli.services,
            pods_per_service: cli.pods_per_service,
            clients: cli.sidecars,
            accounts: cli.accounts,
            pods_per_file: cli.pods_per_file,
            churn: cli.churn,
            smi: cli.smi,
        },
        api: cli.api,
        rate: cli.rate,
        changes: cli.changes,
        change_rate: cli.change_rate,
        idle_s: cli.idle_s,
        restart: cli.restart,
        source_ips: cli.source_ips,
        timeout: Duration::from_secs(cli.timeout_s),
        controller_bin,
        controller_args: cli.controller_args,
        work_dir: cli.work_dir,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(loadtest::run(&scenario))?;
    println!("{report}");
    if let Some(path) = cli.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
