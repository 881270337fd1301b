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

use actors::status::{ChangeStatus, MeshStatus, ProxyStatusView, StatusSummary, SyncState};
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use reach::{Admin, Controllers};

mod reach;

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

/// GETs `path` from a sidecar's admin interface, after checking it is the sidecar of `pod`'s service
/// account (its node's cluster is `<sa>.<ns>`; the pod's name is not known to Envoy).
async fn proxy_get(pod: &str, admin: &Admin, path: &str) -> anyhow::Result<u8> {
    let (ns, name) = pod.split_once('/').context("the pod is <namespace>/<pod>")?;
    let info = admin.get((ns, name), "/server_info").await?;
    let info: serde_json::Value = serde_json::from_str(&info).context("the admin interface's /server_info")?;
    let cluster = info["command_line_options"]["service_cluster"].as_str().unwrap_or_default();
    if !cluster.ends_with(&format!(".{ns}")) {
        bail!("the Envoy reached is the sidecar of {cluster:?}, not of a pod in namespace {ns}");
    }
    print!("{}", admin.get((ns, name), path).await?);
    Ok(0)
}

async fn namespace(
    kubeconfig: Option<&std::path::Path>,
    mesh: &str,
    command: &NamespaceCommand,
    output: Output,
) -> anyhow::Result<u8> {
    let config = actors::kube_source::kube_config(kubeconfig).await.map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_from(config).context("connecting to the cluster")?;
    match command {
        NamespaceCommand::Add { namespaces, disable_sidecar_injection } => {
            for ns in namespaces {
                k8s::namespaces::add(client.clone(), ns, mesh, !disable_sidecar_injection).await?;
                let injection = if *disable_sidecar_injection { "without" } else { "with" };
                println!("namespace {ns} is in mesh {mesh}, {injection} sidecar injection");
            }
        }
        NamespaceCommand::Remove { namespaces } => {
            for ns in namespaces {
                k8s::namespaces::remove(client.clone(), ns, mesh).await?;
                println!("namespace {ns} left mesh {mesh} (restart its pods to remove their sidecars)");
            }
        }
        NamespaceCommand::List => {
            let list = k8s::namespaces::list(client, Some(mesh)).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table if list.is_empty() => println!("no namespace is in mesh {mesh}"),
                Output::Table => {
                    let width = list.iter().map(|n| n.name.len()).max().unwrap_or(0).max(9);
                    println!("{:<width$}  {:<10}  SIDECAR-INJECTION", "NAMESPACE", "MESH");
                    for n in list {
                        let inject = if n.sidecar_injection { "enabled" } else { "disabled" };
                        println!("{:<width$}  {:<10}  {inject}", n.name, n.mesh);
                    }
                }
            }
        }
    }
    Ok(0)
}

/// Prints what the controllers answered: the document of the controller at `--controller` (or the
/// embedded default's), or for a cluster's controller pods a JSON array of `{"controller": <pod>,
/// "status": <document>}`, however many there are.
fn print_json<T: serde::Serialize>(controllers: &Controllers, answers: &[(String, T)]) -> anyhow::Result<()> {
    match answers {
        [(_, only)] if !controllers.is_cluster() => println!("{}", serde_json::to_string_pretty(only)?),
        all => {
            let list: Vec<serde_json::Value> = all
                .iter()
                .map(|(name, doc)| Ok(serde_json::json!({"controller": name, "status": serde_json::to_value(doc)?})))
                .collect::<Result<_, serde_json::Error>>()?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(())
}

async fn mesh_list(controllers: &Controllers, output: Output) -> anyhow::Result<u8> {
    let answers: Vec<(String, actors::http::MeshSummary)> = controllers.get_json("/status/mesh").await?;
    if output == Output::Json {
        print_json(controllers, &answers)?;
        return Ok(0);
    }
    for (i, (name, m)) in answers.iter().enumerate() {
        if answers.len() > 1 {
            println!("{}controller {name}", if i > 0 { "\n" } else { "" });
        }
        let rows = [
            ("controller", format!("{} (trust domain {})", m.version, m.trust_domain)),
            ("sources", format!("{}{}", m.sources.join(", "), if m.synced { "" } else { " (first sync not done)" })),
            ("traffic policy", m.mode.clone()),
            ("egress", if m.egress { "allowed" } else { "mesh Services only" }.to_owned()),
            ("tracing", m.tracing.clone().unwrap_or_else(|| "off".to_owned())),
            ("MeshConfig", m.mesh_config.clone().unwrap_or_else(|| "none (command-line settings)".to_owned())),
            ("Services, pods", format!("{}, {}", m.services, m.pods)),
            ("proxies", format!("{} connected, {} synced", m.proxies_connected, m.proxies_synced)),
            ("policy errors", m.policy_errors.to_string()),
            ("signing root", m.signing_root.clone()),
        ];
        for (k, v) in rows {
            println!("{k:<15} {v}");
        }
    }
    Ok(0)
}

fn error_info(output: Output, code: Option<&str>) -> anyhow::Result<u8> {
    use messages::errcode::{CODES, ErrorCode, lookup};
    let codes: Vec<&ErrorCode> = match code {
        None => CODES.iter().collect(),
        Some(c) => match lookup(c) {
            Some(e) => vec![e],
            None => bail!("{c} is not an error code of this control plane (osm support error-info lists them)"),
        },
    };
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> =
                codes.iter().map(|c| serde_json::json!({"code": c.code, "cause": c.cause, "fix": c.fix})).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Table => {
            for c in codes {
                println!("{}\n  cause: {}\n  fix:   {}", c.code, c.cause, c.fix);
            }
        }
    }
    Ok(0)
}

/// How long after `--wait` starts a newer mesh change still counts as the one waited for: a file written
/// (or an object applied) just before is read by the controller within moments.
const WAIT_CATCH_UP: Duration = Duration::from_secs(1);

async fn proxy_status(
    controllers: &Controllers,
    output: Output,
    wait: Option<(Duration, Option<u64>)>,
) -> anyhow::Result<u8> {
    let names = controllers.names();
    // Per controller, the generation waited for (generations are numbered by each replica).
    let mut targets: Vec<Option<u64>> = vec![None; names.len()];
    // Whether the wait ended with every proxy holding its target (the table is fetched after).
    let mut waited_held = false;
    // Per controller, when it started (a restart renumbers its changes).
    let mut starts: Vec<Option<u64>> = vec![None; names.len()];
    if let Some((timeout, generation)) = wait {
        if generation.is_some() && names.len() > 1 {
            bail!(
                "--generation: each of the {} controller replicas numbers its own changes; wait for the latest \
                 (no --generation), or reach one controller with --controller",
                names.len()
            );
        }
        // Polls the counts only (a full status is megabytes at 10,000 proxies).
        let summary = |i: usize, of: Option<u64>| async move {
            let query = of.map_or_else(String::new, |g| format!("&generation={g}"));
            controllers.get_json_at::<StatusSummary>(i, &format!("/status/proxies?summary{query}")).await
        };
        let started = Instant::now();
        let deadline = started + timeout;
        let bar = (output == Output::Table).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} proxies hold {msg} {wide_bar} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        loop {
            let caught_up = generation.is_some() || started.elapsed() >= WAIT_CATCH_UP;
            let (mut holding, mut proxies, mut held) = (0, 0, true);
            for (i, target) in targets.iter_mut().enumerate() {
                let mut s = summary(i, target.or(generation)).await?;
                // A controller that restarted numbers its changes from 0 again: wait for its latest.
                if starts[i].is_some_and(|started| started != s.started_ms) {
                    if generation.is_some() {
                        bail!(
                            "{} restarted while waiting: its generations start again at 0, so --generation no \
                             longer names the same change (wait for its latest: no --generation)",
                            names[i]
                        );
                    }
                    if let Some(bar) = &bar {
                        bar.println(format!("{} restarted; waiting for its latest change", names[i]));
                    }
                    *target = None;
                    s = summary(i, None).await?;
                }
                starts[i] = Some(s.started_ms);
                if let Some(g) = generation.filter(|g| *g > s.generation) {
                    bail!(
                        "generation {g} has not happened: the controller's latest is {} (numbering starts again \
                         at 0 when the controller restarts; osm mesh changes lists them)",
                        s.generation
                    );
                }
                // The generation waited for: the one asked for, or the latest as of the first moment.
                let goal = match generation {
                    Some(g) => g,
                    None if !caught_up => target.unwrap_or(0).max(s.generation),
                    None => target.unwrap_or(s.generation),
                };
                if s.of_generation != goal {
                    s = summary(i, Some(goal)).await?;
                }
                *target = Some(goal);
                (holding, proxies, held) = (holding + s.holding, proxies + s.proxies, held && s.held());
            }
            if let Some(bar) = &bar {
                bar.set_message(match targets.as_slice() {
                    [Some(g)] => format!("generation {g}"),
                    _ => format!("the latest change of each of {} controllers", targets.len()),
                });
                bar.set_length(proxies as u64);
                bar.set_position(holding as u64);
            }
            if (held && caught_up) || Instant::now() >= deadline {
                waited_held = held && caught_up;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    let statuses: Vec<(String, MeshStatus)> = controllers.get_json("/status/proxies").await?;
    match output {
        Output::Json => print_json(controllers, &statuses)?,
        Output::Table => print_table(&statuses, &targets),
    }
    let held =
        waited_held || statuses.iter().zip(&targets).all(|((_, s), target)| StatusSummary::of(s, *target).held());
    Ok(if wait.is_some() && !held { 3 } else { 0 })
}

async fn mesh_changes(controllers: &Controllers, output: Output, generation: Option<u64>) -> anyhow::Result<u8> {
    if generation.is_some() && controllers.names().len() > 1 {
        bail!(
            "--generation: each of the {} controller replicas numbers its own changes; list them without it, or \
             reach one controller with --controller",
            controllers.names().len()
        );
    }
    let query = generation.map_or_else(String::new, |g| format!("?generation={g}"));
    let answers: Vec<(String, Vec<ChangeStatus>)> = controllers.get_json(&format!("/status/changes{query}")).await?;
    if let (Some(g), true) = (generation, answers.iter().all(|(_, c)| c.is_empty())) {
        bail!("generation {g} is not among the changes the controller remembers (osm mesh changes lists them)");
    }
    if output == Output::Json {
        print_json(controllers, &answers)?;
        return Ok(0);
    }
    let now = actors::status::unix_now();
    for (i, (name, changes)) in answers.iter().enumerate() {
        if answers.len() > 1 {
            println!("{}controller {name}", if i > 0 { "\n" } else { "" });
        }
        if changes.is_empty() {
            println!("no mesh change since the controller started");
            continue;
        }
        println!("{:>10}  {:>6}  {:>13}  WHAT", "GENERATION", "AGE", "HELD BY");
        for c in changes {
            let held = format!("{}/{}", c.holding, c.proxies);
            let age = duration((now - c.change.at).max(0.0));
            println!("{:>10}  {age:>6}  {held:>13}  {}", c.change.generation, c.change.what);
        }
        if generation.is_some() {
            for c in changes {
                if c.not_holding.is_empty() {
                    println!("\nevery connected proxy holds generation {}", c.change.generation);
                } else {
                    let more = c.proxies - c.holding - c.not_holding.len();
                    println!("\nnot holding generation {}:", c.change.generation);
                    for p in &c.not_holding {
                        println!("  {p}");
                    }
                    if more > 0 {
                        println!("  ... and {more} more");
                    }
                }
            }
        }
    }
    Ok(0)
}

async fn verify_connectivity(controllers: &Controllers, output: Output, from: &str, to: &str) -> anyhow::Result<u8> {
    let ok_chars = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-./:".contains(c));
    if !ok_chars(from) || !ok_chars(to) {
        bail!(
            "--from <namespace>/<pod> and --to <namespace>/<service>[:<port>] (names of letters, digits, '-' and '.')"
        );
    }
    let answers: Vec<(String, actors::http::Connectivity)> =
        controllers.get_json(&format!("/status/connectivity?from={from}&to={to}")).await?;
    // Each replica sees the sidecars connected to it: one report of what they all see.
    let now = actors::status::unix_now();
    let report = match answers.len() {
        1 => answers.into_iter().map(|(_, r)| r).next(),
        _ => actors::http::Connectivity::merge(answers.into_iter().map(|(_, r)| r).collect(), now),
    }
    .context("no controller answered")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!("{} → {}", report.from, report.to);
            print_steps(&report.steps);
            match report.steps.iter().find(|s| !s.ok) {
                None => println!("\nOK: {} can reach {}", report.from, report.to),
                Some(s) => println!("\nBLOCKED at {}: {}", s.step, s.detail),
            }
        }
    }
    Ok(if report.ok { 0 } else { 2 })
}

/// Sidecars not in sync whose config a bug report includes, at most.
const REPORTED_SIDECARS: usize = 20;

async fn bug_report(
    controllers: &Controllers,
    admin: Option<&Admin>,
    out: Option<std::path::PathBuf>,
) -> anyhow::Result<u8> {
    let dir = out.unwrap_or_else(|| format!("osm-bug-report-{}", actors::status::unix_now() as u64).into());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
    };
    let mut summary = String::new();
    let mut unsynced: Vec<String> = Vec::new();
    for (i, name) in controllers.names().into_iter().enumerate() {
        let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        std::fs::create_dir_all(dir.join(&slug)).with_context(|| format!("creating {}/{slug}", dir.display()))?;
        summary.push_str(&format!("controller {name} ({slug}/)\n"));
        for (file, path) in [
            ("version.json", "/version"),
            ("mesh.json", "/status/mesh"),
            ("proxies.json", "/status/proxies"),
            ("changes.json", "/status/changes"),
            ("metrics.txt", "/metrics"),
        ] {
            // One answer missing does not lose the others: say what it was.
            let body = match controllers.get_text_at(i, path).await {
                Ok((_, body)) => body,
                Err(e) => format!("error: {e:#}\n"),
            };
            write(&format!("{slug}/{file}"), &body)?;
            if file == "proxies.json"
                && let Ok(status) = serde_json::from_str::<MeshStatus>(&body)
            {
                unsynced.extend(
                    status.proxies.iter().filter(|p| p.state != SyncState::Synced).filter_map(|p| p.pod.clone()),
                );
            }
            if file == "metrics.txt" {
                // The error codes counted, with what they mean.
                for line in body.lines().filter(|l| l.starts_with("osm_error_err_code_count{")) {
                    let code = line.split('"').nth(1).unwrap_or_default();
                    let count = line.rsplit(' ').next().unwrap_or_default();
                    let meaning = messages::errcode::lookup(code).map_or("", |c| c.cause);
                    summary.push_str(&format!("  error {code} counted {count}: {meaning}\n"));
                }
            }
        }
    }
    summary.push('\n');
    match admin {
        Some(admin) => {
            std::fs::create_dir_all(dir.join("sidecars"))?;
            for pod in unsynced.iter().take(REPORTED_SIDECARS) {
                let Some((ns, name)) = pod.split_once('/') else { continue };
                let body = match admin.get((ns, name), "/config_dump").await {
                    Ok(body) => body,
                    Err(e) => format!("error: {e:#}\n"),
                };
                write(&format!("sidecars/{ns}_{name}.config_dump.json"), &body)?;
                summary.push_str(&format!(
                    "sidecar {pod} is not in sync: its config in sidecars/{ns}_{name}.config_dump.json\n"
                ));
            }
        }
        None if !unsynced.is_empty() => summary.push_str(&format!(
            "{} sidecars are not in sync ({}); their config is reached from inside each pod: \
             ip netns exec <netns> osm proxy get config_dump <ns>/<pod>\n",
            unsynced.len(),
            unsynced.iter().take(REPORTED_SIDECARS).cloned().collect::<Vec<_>>().join(", ")
        )),
        None => {}
    }
    write("SUMMARY.txt", &summary)?;
    println!("{}{}wrote {}", summary, if summary.ends_with("\n\n") { "" } else { "\n" }, dir.display());
    Ok(0)
}

/// Prints checks step by step, as `verify` does: `ok` or `FAIL`, the step, what was found.
fn print_steps(steps: &[messages::PathStep]) {
    let width = steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
    for s in steps {
        println!("  {} {:<width$}  {}", if s.ok { "ok  " } else { "FAIL" }, s.step, s.detail);
    }
}

async fn verify_control_plane(controllers: &Controllers, output: Output) -> anyhow::Result<u8> {
    let meshes: Vec<(String, actors::http::MeshSummary)> = controllers.get_json("/status/mesh").await?;
    let summaries: Vec<(String, StatusSummary)> = controllers.get_json("/status/proxies?summary").await?;
    let step = |step: &str, ok: bool, detail: String| messages::PathStep { step: step.to_owned(), ok, detail };
    let reports: Vec<(String, Vec<messages::PathStep>)> = meshes
        .into_iter()
        .zip(summaries)
        .map(|((name, m), (_, s))| {
            let steps = vec![
                step(
                    "controller",
                    true,
                    format!("{name} answers: version {}, trust domain {}", m.version, m.trust_domain),
                ),
                step(
                    "mesh sources",
                    m.synced,
                    if m.synced {
                        format!("{} read", m.sources.join(", "))
                    } else {
                        format!(
                            "{}: the first read is not done, and sidecars are refused until it is (the controller's \
                             log says what it waits for)",
                            m.sources.join(", ")
                        )
                    },
                ),
                step(
                    "policy",
                    m.policy_errors == 0,
                    match m.policy_errors {
                        0 => format!("{} mode, every policy object in force", m.mode),
                        n => format!(
                            "{n} policy objects (or parts of them) are not in force: the controller's log names each \
                             with its error code (osm support error-info <code>)"
                        ),
                    },
                ),
                step("signing root", true, m.signing_root.clone()),
                step(
                    "proxies",
                    s.nack == 0,
                    format!(
                        "{} connected: {} synced, {} stale, {} refusing their configuration{}",
                        s.proxies,
                        s.synced,
                        s.stale,
                        s.nack,
                        if s.nack > 0 { " (osm proxy status names them, with Envoy's reason)" } else { "" }
                    ),
                ),
                // Still on its way is not a fault; refused is, and shows above.
                step(
                    "latest change",
                    true,
                    format!(
                        "generation {} held by {} of {} proxies{}",
                        s.of_generation,
                        s.holding,
                        s.proxies,
                        if s.held() { "" } else { " (on its way: osm proxy status --wait)" }
                    ),
                ),
            ];
            (name, steps)
        })
        .collect();
    let ok = reports.iter().all(|(_, steps)| steps.iter().all(|s| s.ok));
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> = reports
                .iter()
                .map(|(name, steps)| serde_json::json!({"controller": name, "ok": steps.iter().all(|s| s.ok), "steps": steps}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Table => {
            for (name, steps) in &reports {
                println!("controller {name}");
                print_steps(steps);
            }
            println!("\n{}", if ok { "OK: the control plane is healthy" } else { "NOT OK: see FAIL above" });
        }
    }
    Ok(if ok { 0 } else { 2 })
}

/// What is wrong with a proxy, in a line.
fn detail(p: &ProxyStatusView) -> String {
    let nacks: Vec<String> = p
        .types
        .iter()
        .filter_map(|(ty, t)| t.nack.as_ref().map(|e| format!("{ty} {} refused: {e}", short(&t.sent))))
        .collect();
    if !nacks.is_empty() {
        return nacks.join("; ");
    }
    let waiting: Vec<&str> = p.types.iter().filter(|(_, t)| t.acked != t.sent).map(|(ty, _)| ty.as_str()).collect();
    if waiting.is_empty() { String::new() } else { format!("waiting for the ACK of {}", waiting.join(", ")) }
}

fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

fn duration(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.1}h", s / 3600.0),
    }
}

/// The proxies of every controller (a CONTROLLER column when there are several), and how many hold the
/// generation waited for (default: each controller's latest).
fn print_table(statuses: &[(String, MeshStatus)], targets: &[Option<u64>]) {
    let many = statuses.len() > 1;
    let proxies: Vec<(&str, &ProxyStatusView)> =
        statuses.iter().flat_map(|(name, s)| s.proxies.iter().map(move |p| (name.as_str(), p))).collect();
    if proxies.is_empty() {
        println!("no proxy is connected");
        return;
    }
    let mut header = vec!["POD", "IDENTITY", "PROXY", "API", "STATUS", "GEN", "BEHIND", "DETAIL"];
    if many {
        header.insert(0, "CONTROLLER");
    }
    let header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|(controller, p)| {
            let state = match p.state {
                SyncState::Synced => "synced",
                SyncState::Stale => "stale",
                SyncState::Nack => "NACK",
            };
            let behind = if p.state == SyncState::Synced { "-".to_owned() } else { duration(p.behind_s) };
            let pod = p.pod.clone().unwrap_or_else(|| "-".to_owned());
            let generation = p.generation.to_string();
            let mut row = vec![
                pod,
                p.identity.clone(),
                p.uuid.clone(),
                p.api.clone(),
                state.to_owned(),
                generation,
                behind,
                detail(p),
            ];
            if many {
                row.insert(0, controller.rsplit('/').next().unwrap_or(controller).to_owned());
            }
            row
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| std::iter::once(&header).chain(&rows).map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    let count = |s: SyncState| proxies.iter().filter(|(_, p)| p.state == s).count();
    println!(
        "\n{} proxies: {} synced, {} stale, {} NACK",
        proxies.len(),
        count(SyncState::Synced),
        count(SyncState::Stale),
        count(SyncState::Nack)
    );
    for ((name, status), target) in statuses.iter().zip(targets) {
        let summary = StatusSummary::of(status, *target);
        let what = match &status.change {
            Some(c) if c.generation == summary.of_generation => format!(" ({})", c.what),
            _ if summary.of_generation == 0 => " (the configuration the controller started with)".to_owned(),
            _ => String::new(),
        };
        let prefix = if many { format!("controller {name}: ") } else { String::new() };
        println!(
            "{prefix}mesh generation {}{what}: held by {} of {} proxies",
            summary.of_generation, summary.holding, summary.proxies
        );
    }
}
