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
//! - `osm namespace add|remove|list`: namespaces in and out of the mesh on a cluster (the kubeconfig's).
//! - `osm support error-info [code]`: what an error code means and what to do (no controller needed).
//! - `osm support bug-report [--out DIR]`: what a bug report needs, collected into a directory.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use messages::status::{ChangeStatus, MeshStatus, ProxyStatusView, StatusSummary, SyncState};
use reach::{Admin, Controllers};

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
#[command(name = "osm", version, about = "Troubleshoot the service mesh: proxy sync status and more")]
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
        Command::Namespace { mesh_name, command } => {
            namespace(cli.kubeconfig.as_deref(), mesh_name, command, cli.output).await
        }
    }
}
