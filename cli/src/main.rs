//! `osm`: the operator's troubleshooting tool. Reads the controller's HTTP endpoint: `--controller <url>`;
//! else, on a cluster (a kubeconfig, or in-cluster), every ready controller pod's, through the API server
//! (each replica serves some sidecars: their answers are shown together); else the embedded default's
//! `http://127.0.0.1:9091` ([`reach`]).
//!
//! - `osm proxy status [--wait [--generation N]] [-o json]`: every connected proxy, synced / stale (for how
//!   long) / NACK with Envoy's reason, and the mesh generation it holds; `--wait` blocks until every proxy
//!   holds the latest mesh change (or generation N), or times out.
//! - `osm verify connectivity --from <ns>/<pod> --to <ns>/<svc>[:port]`: the path checked step by step;
//!   what blocks it, named.
//! - `osm proxy get config_dump|stats|clusters|listeners|certs|... <ns>/<pod>`: the sidecar's own view,
//!   from its Envoy admin interface (read-only pages only):
//!   on a cluster through the API server (a port-forward to the pod's 15000, as `kubectl port-forward`
//!   makes), else at `--admin` (default `127.0.0.1:15000`: run it in the pod's network namespace).
//! - `osm verify control-plane`: each controller's health, step by step.
//! - `osm mesh list`: the mesh this controller serves: sources, mode, proxies, roots.
//! - `osm mesh changes [--generation N]`: the recent mesh changes and which proxies hold each.
//! - `osm policy get <ns>/<pod>`: every policy object that shapes the pod's sidecar, and how.
//! - `osm namespace add|remove|list|ignore`: namespaces in and out of the mesh on a cluster (the
//!   kubeconfig's); `osm metrics enable|disable --namespace <ns>`: Prometheus scraping of their sidecars.
//! - `osm install`, `osm mesh upgrade`, `osm uninstall mesh`: the control plane on a cluster, from the chart
//!   this `osm` embeds, through `helm` ([`install`]).
//! - `osm support error-info [code]`: what an error code means and what to do (no controller needed).
//! - `osm support bug-report [--out DIR]`: what a bug report needs, collected into a directory.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use messages::status::{ChangeStatus, MeshStatus, ProxyStatusView, StatusSummary, SyncState};
use reach::{Admin, Controllers};

mod install;
mod mesh;
mod proxy;
mod reach;
mod support;
mod verify;

use mesh::*;
use proxy::*;
use support::*;
use verify::*;

#[derive(Parser, Debug)]
#[command(
    name = "osm",
    version,
    about = "Install and troubleshoot the service mesh: proxy sync status, connectivity, namespaces and more"
)]
struct Cli {
    /// The controller's HTTP endpoint. Without it: on a cluster every ready controller pod, through the
    /// API server; else http://127.0.0.1:9091.
    #[arg(long, global = true, env = "OSM_CONTROLLER")]
    controller: Option<String>,
    /// The namespace of the controller's pods on a cluster.
    #[arg(long, global = true, default_value = "osm-system")]
    osm_namespace: String,
    /// The kubeconfig for cluster commands (default: in-cluster, $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Output: a table for people, JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sidecar proxies.
    Proxy {
        #[command(subcommand)]
        command: ProxyCommand,
    },
    /// Checks that something works, step by step.
    Verify {
        #[command(subcommand)]
        command: VerifyCommand,
    },
    /// Namespaces of the mesh on a Kubernetes cluster (labelled openservicemesh.io/monitored-by=<mesh>).
    Namespace {
        /// The mesh's name (the controller's --mesh-name).
        #[arg(long, global = true, default_value = "osm")]
        mesh_name: String,
        #[command(subcommand)]
        command: NamespaceCommand,
    },
    /// The mesh.
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// Installs the mesh's control plane on the cluster (the chart this osm was built with, through
    /// helm), after checking that the namespace has no mesh and the name is not taken; the CRDs first.
    Install {
        #[command(flatten)]
        helm: install::HelmArgs,
        #[command(flatten)]
        values: install::ValuesArgs,
    },
    /// Removes things from the cluster.
    Uninstall {
        #[command(subcommand)]
        command: UninstallCommand,
    },
    /// Policies as they apply to pods.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Prometheus scraping of the sidecars of mesh namespaces.
    Metrics {
        #[command(subcommand)]
        command: MetricsCommand,
    },
    /// Help with problems.
    Support {
        #[command(subcommand)]
        command: SupportCommand,
    },
}

#[derive(Subcommand, Debug)]
enum NamespaceCommand {
    /// Puts namespaces in the mesh: their pods are watched, and new pods get a sidecar.
    Add {
        #[arg(required = true)]
        namespaces: Vec<String>,
        /// Watch the namespaces without injecting sidecars into new pods.
        #[arg(long)]
        disable_sidecar_injection: bool,
    },
    /// Takes namespaces out of the mesh (running pods keep their sidecars until restarted).
    Remove {
        #[arg(required = true)]
        namespaces: Vec<String>,
    },
    /// The namespaces of the mesh.
    List,
    /// Has every mesh leave namespaces alone (label openservicemesh.io/ignore=true): not watched, no
    /// sidecars injected, whatever their other labels say.
    Ignore {
        #[arg(required = true)]
        namespaces: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Every policy object that shapes a pod's sidecar, and how: TrafficTargets it is a source or
    /// destination of, Retries, UpstreamTrafficSettings of what it calls and serves, IngressBackends,
    /// TrafficSplits; with whatever keeps one from being in force.
    Get {
        /// The pod: <namespace>/<pod>.
        pod: String,
    },
}

#[derive(Subcommand, Debug)]
enum UninstallCommand {
    /// Uninstalls a mesh's control plane (its Helm release); asks first unless --force.
    Mesh {
        #[command(flatten)]
        helm: install::HelmArgs,
        #[command(flatten)]
        options: install::UninstallOptions,
    },
}

#[derive(Subcommand, Debug)]
enum MetricsCommand {
    /// Has Prometheus scrape the sidecars of these mesh namespaces: new pods, and running ones.
    Enable {
        /// Namespaces (repeatable, or comma-separated).
        #[arg(long, required = true, value_delimiter = ',')]
        namespace: Vec<String>,
    },
    /// Stops Prometheus scraping the sidecars of these namespaces.
    Disable {
        /// Namespaces (repeatable, or comma-separated).
        #[arg(long, required = true, value_delimiter = ',')]
        namespace: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// The mesh this controller serves: version, trust domain, sources, mode, Services, pods, proxies.
    List,
    /// The recent mesh changes, numbered (generations), newest first: what changed, when, and how many
    /// proxies hold it; with --generation, the proxies that do not.
    Changes {
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Upgrades an installed mesh to the chart this osm was built with: the CRDs, then the release, keeping
    /// the values it was installed with (`--set` changes some).
    Upgrade {
        #[command(flatten)]
        helm: install::HelmArgs,
        #[command(flatten)]
        values: install::ValuesArgs,
    },
}

#[derive(Subcommand, Debug)]
enum SupportCommand {
    /// What an error code (the `error_code` of a log line, or a label of osm_error_err_code_count) means and
    /// how to fix it; every code without one.
    ErrorInfo {
        /// E.g. E2025.
        code: Option<String>,
    },
    /// Collects what a bug report needs into a directory: each controller's status, changes, mesh summary
    /// and metrics, the health check, the error codes counted with their meaning, and (on a cluster) the
    /// config of the sidecars that are not in sync. Never keys: Envoy redacts them from its config.
    BugReport {
        /// The directory to write (created; default: osm-bug-report-<time> here).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum VerifyCommand {
    /// Can this pod reach that Service? Pods, Service, endpoints, split, policy (naming the missing
    /// TrafficTarget), both ends' sidecars and certificates. Exit 0 when the path is open, 2 when not.
    Connectivity {
        /// The client pod: <namespace>/<pod>.
        #[arg(long)]
        from: String,
        /// The Service: <namespace>/<service>[:<port>].
        #[arg(long)]
        to: String,
    },
    /// Is the control plane healthy? Each controller: reachable, its mesh sources read, its policy in force,
    /// its proxies taking their configuration, the latest change reaching them. Exit 0 when nothing needs
    /// action, 2 when something does.
    #[command(name = "control-plane", alias = "control-plane-health")]
    ControlPlane,
}

#[derive(Subcommand, Debug)]
enum ProxyCommand {
    /// Is my change live? Every connected proxy: synced, stale (for how long) or NACK (Envoy's reason).
    Status {
        /// Wait until every connected proxy holds the latest mesh change (exit 0), or the timeout (exit 3).
        #[arg(long)]
        wait: bool,
        /// With --wait: the mesh generation to wait for (`osm mesh changes` lists them), instead of the
        /// latest.
        #[arg(long, requires = "wait")]
        generation: Option<u64>,
        /// Seconds `--wait` waits.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// What a sidecar's Envoy holds, from its admin interface: `osm proxy get config_dump <ns>/<pod>`.
    Get {
        /// The admin page.
        #[arg(value_enum)]
        query: AdminQuery,
        /// The pod: <namespace>/<pod> (checked against the sidecar's node).
        pod: String,
        /// The sidecar's admin interface, reached directly. Without it: on a cluster (a kubeconfig, or
        /// in-cluster) through the API server, a port-forward to the pod's 15000; otherwise
        /// http://127.0.0.1:15000, the pod's loopback (run osm in the pod's network namespace).
        #[arg(long)]
        admin: Option<String>,
    },
}

/// A read-only page of a sidecar's Envoy admin interface (nothing that changes the sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AdminQuery {
    /// Its configuration, as Envoy holds it (secrets' keys are redacted by Envoy).
    #[value(name = "config_dump", alias = "config-dump")]
    ConfigDump,
    /// Its statistics.
    Stats,
    /// Its statistics in Prometheus' text format.
    #[value(name = "stats/prometheus")]
    StatsPrometheus,
    /// Upstream clusters: each endpoint with its health and counters.
    Clusters,
    /// Listeners and their addresses.
    Listeners,
    /// Certificates loaded, with their expiry (no keys).
    Certs,
    /// Whether it is ready to serve (LIVE).
    Ready,
    /// Envoy's version, uptime and command line.
    #[value(name = "server_info", alias = "server-info")]
    ServerInfo,
    /// Memory use.
    Memory,
    /// Runtime values.
    Runtime,
}

impl AdminQuery {
    fn path(self) -> &'static str {
        match self {
            Self::ConfigDump => "/config_dump",
            Self::Stats => "/stats",
            Self::StatsPrometheus => "/stats/prometheus",
            Self::Clusters => "/clusters",
            Self::Listeners => "/listeners",
            Self::Certs => "/certs",
            Self::Ready => "/ready",
            Self::ServerInfo => "/server_info",
            Self::Memory => "/memory",
            Self::Runtime => "/runtime",
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    // The controllers to read: `--controller`, else a cluster's, else the embedded default's.
    let controllers = || async {
        match &cli.controller {
            Some(url) => Ok(Controllers::Url(url.clone())),
            None => Controllers::find(reach::cluster(cli.kubeconfig.as_deref()).await?, &cli.osm_namespace).await,
        }
    };
    match &cli.command {
        Command::Proxy { command: ProxyCommand::Status { wait, generation, timeout_s } } => {
            let wait = wait.then(|| (Duration::from_secs(*timeout_s), *generation));
            proxy_status(&controllers().await?, cli.output, wait).await
        }
        Command::Proxy { command: ProxyCommand::Get { query, pod, admin } } => {
            let path = query.path();
            let admin = match admin {
                Some(url) => Admin::Url(url.clone()),
                // A cluster if one is configured, else the pod's loopback.
                None => match reach::cluster(cli.kubeconfig.as_deref()).await? {
                    Some(client) => Admin::Cluster(client),
                    None => Admin::Url(format!("http://127.0.0.1:{}", reach::ENVOY_ADMIN_PORT)),
                },
            };
            proxy_get(pod, &admin, path).await
        }
        Command::Verify { command: VerifyCommand::Connectivity { from, to } } => {
            verify_connectivity(&controllers().await?, cli.output, from, to).await
        }
        Command::Verify { command: VerifyCommand::ControlPlane } => {
            verify_control_plane(&controllers().await?, cli.output).await
        }
        Command::Support { command: SupportCommand::ErrorInfo { code } } => error_info(cli.output, code.as_deref()),
        Command::Support { command: SupportCommand::BugReport { out } } => {
            let admin = reach::cluster(cli.kubeconfig.as_deref()).await?.map(Admin::Cluster);
            bug_report(&controllers().await?, admin.as_ref(), out.clone()).await
        }
        Command::Mesh { command: MeshCommand::List } => mesh_list(&controllers().await?, cli.output).await,
        Command::Mesh { command: MeshCommand::Changes { generation } } => {
            mesh_changes(&controllers().await?, cli.output, *generation).await
        }
        Command::Mesh { command: MeshCommand::Upgrade { helm, values } } => {
            install::upgrade(cli.kubeconfig.as_deref(), &cli.osm_namespace, helm, values).await
        }
        Command::Namespace { mesh_name, command } => {
            namespace(cli.kubeconfig.as_deref(), mesh_name, command, cli.output).await
        }
        Command::Policy { command: PolicyCommand::Get { pod } } => {
            policy_get(&controllers().await?, cli.output, pod).await
        }
        Command::Install { helm, values } => {
            install::install(cli.kubeconfig.as_deref(), &cli.osm_namespace, helm, values).await
        }
        Command::Uninstall { command: UninstallCommand::Mesh { helm, options } } => {
            install::uninstall(cli.kubeconfig.as_deref(), &cli.osm_namespace, helm, options).await
        }
        Command::Metrics { command: MetricsCommand::Enable { namespace } } => {
            install::metrics(cli.kubeconfig.as_deref(), namespace, true).await
        }
        Command::Metrics { command: MetricsCommand::Disable { namespace } } => {
            install::metrics(cli.kubeconfig.as_deref(), namespace, false).await
        }
    }
}
