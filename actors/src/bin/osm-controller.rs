//! `osm-controller`: the control plane binary. Runs on the embedded default, a directory of
//! Kubernetes-format YAML, on a Kubernetes cluster (`--kubernetes` / `--kubeconfig`), or both; writes the
//! sidecar bundle of one pod for machines outside Kubernetes, and prints the mesh's CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use messages::{MeshCatalog, SourceEvent};

#[derive(Parser, Debug)]
#[command(
    name = "osm-controller",
    version,
    about = "Service-mesh control plane: programs Envoy sidecars over mTLS ADS"
)]
struct Cli {
    /// Directory of Kubernetes-format YAML describing the mesh (watched for changes). Default `mesh`
    /// when no cluster is watched; with a cluster, read only when given (machines outside the cluster).
    #[arg(long, global = true)]
    mesh_dir: Option<PathBuf>,
    /// Where the mesh root CA is kept across restarts.
    #[arg(long, default_value = "state", global = true)]
    state_dir: PathBuf,
    /// Bring your own CA: its certificate (PEM; an intermediate may be followed by its chain up to the
    /// root). Used instead of the built-in root; needs --ca-key.
    #[arg(long, global = true, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PEM PKCS#8, RSA or ECDSA).
    #[arg(long, global = true, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Trust domain of mesh identities (`<sa>.<ns>.<trust-domain>`).
    #[arg(long, default_value = "cluster.local", global = true)]
    trust_domain: String,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Watch a Kubernetes cluster: the in-cluster configuration, else $KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    kubernetes: bool,
    /// Watch the Kubernetes cluster of this kubeconfig file (implies --kubernetes).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The mesh's name: namespaces labelled `openservicemesh.io/monitored-by=<name>` are in it.
    #[arg(long, default_value = "osm")]
    mesh_name: String,
    /// The control plane's namespace in the cluster, where the MeshConfig `osm-mesh-config` is read.
    #[arg(long, default_value = "osm-system")]
    osm_namespace: String,
    /// HTTPS address of the sidecar injector (the mutating webhook) in Kubernetes mode ("off" for none).
    #[arg(long, default_value = "0.0.0.0:9090")]
    webhook_addr: String,
    /// HTTPS address of the validating webhook in Kubernetes mode ("off" for none).
    #[arg(long, default_value = "0.0.0.0:9093")]
    validator_addr: String,
    /// Sidecar image of injected pods (MeshConfig `sidecar.envoyImage` overrides it).
    #[arg(long)]
    envoy_image: Option<String>,
    /// Init-container image of injected pods, with iptables-restore (MeshConfig
    /// `sidecar.initContainerImage` overrides it).
    #[arg(long)]
    init_image: Option<String>,
    /// Image of the `osm-healthcheck` container added to pods with tcpSocket probes (it must have
    /// `/osm-healthcheck`; the controller's own image does).
    #[arg(long)]
    healthcheck_image: Option<String>,
    /// Host injected sidecars reach the ADS server at (default: osm-controller.<osm-namespace>.svc.cluster.local).
    #[arg(long)]
    sidecar_ads_host: Option<String>,
    /// Address of the ADS (xDS) gRPC server.
    #[arg(long, default_value = "0.0.0.0:15128")]
    ads_addr: SocketAddr,
    /// Address of the HTTP endpoint: /health/alive, /health/ready, /metrics, /version, /status/proxies
    /// ("off" for none).
    #[arg(long, default_value = "0.0.0.0:9091")]
    http_addr: String,
    /// Where the debug server listens while a MeshConfig's `observability.enableDebugServer` is on.
    #[arg(long, default_value = "127.0.0.1:9092")]
    debug_addr: SocketAddr,
    /// Changes are seen through file-system notifications; this is the interval of the safety-net rescan
    /// (a stat per file when nothing changed), in milliseconds.
    #[arg(long, default_value_t = 5000)]
    scan_interval_ms: u64,
    /// Lifetime of service (SDS) certificates, in seconds (minimum 60); a MeshConfig's
    /// `spec.certificate.serviceCertValidityDuration` overrides it.
    #[arg(long, default_value_t = 24 * 3600)]
    service_cert_validity_s: u64,
    /// Extra DNS names or IPs for the ADS server certificate (repeatable).
    #[arg(long = "ads-server-name")]
    ads_server_names: Vec<String>,
    /// Threads serving sidecars: TLS, HTTP/2 and every proxy session (default: one per core).
    #[arg(long)]
    serve_threads: Option<usize>,
    /// Seconds connected sidecars get to go at shutdown before their connections are closed.
    #[arg(long, default_value_t = 5)]
    drain_s: u64,
    /// Let traffic to destinations outside the mesh pass through the sidecars (MeshConfig
    /// `traffic.enableEgress`); with `false` only mesh Services are reachable.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enable_egress: bool,
    /// Allow all traffic between mesh Services (MeshConfig `traffic.enablePermissiveTrafficPolicyMode`);
    /// with `false` only what SMI TrafficTargets allow. A MeshConfig in the mesh directory overrides this.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    permissive: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions of the kinds the mesh reads (SMI, MeshConfig), as YAML for
    /// `kubectl apply -f -`.
    Crds,
    /// Write the sidecar bundle (Envoy bootstrap, client certificate, CA, iptables rules) of one pod.
    Bootstrap {
        /// The pod, as <namespace>/<name>, described in the mesh directory.
        #[arg(long)]
        pod: String,
        /// Host (IP or DNS name) where the sidecar reaches the controller.
        #[arg(long)]
        controller_host: String,
        #[arg(long, default_value_t = messages::ports::ADS)]
        controller_port: u16,
        /// Use incremental (delta) ADS instead of state-of-the-world.
        #[arg(long)]
        delta: bool,
        /// Directory the files are written to.
        #[arg(long)]
        out: PathBuf,
        /// Directory the sidecar will read them from (defaults to --out).
        #[arg(long)]
        config_dir: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: these are a user's errors, not the program's.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Reloadable, so the MeshConfig's observability.osmLogLevel changes the level live.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person at a terminal, never into a log file or a collector.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let log_level = actors::LogLevelControl(std::sync::Arc::new(move |level: &str| {
        reload.reload(tracing_subscriber::EnvFilter::new(level)).map_err(|e| e.to_string())
    }));
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crds) => {
            print!("{}", k8s::crds::definitions_yaml().context("rendering the CRDs")?);
            Ok(())
        }
        Some(Command::Bootstrap { pod, controller_host, controller_port, delta, out, config_dir }) => write_bootstrap(
            &cli.mesh_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_MESH_DIR)),
            &cli.state_dir,
            &ca_source(&cli.state_dir, cli.ca_cert.zip(cli.ca_key)),
            &cli.trust_domain,
            &pod,
            controller_host,
            controller_port,
            delta,
            &out,
            config_dir,
        ),
        None => serve(cli.mesh_dir, cli.state_dir, cli.ca_cert.zip(cli.ca_key), cli.trust_domain, cli.serve, log_level),
    }
}

const DEFAULT_MESH_DIR: &str = "mesh";

/// Where the CA comes from: files brought by the user, else the state directory.
enum CaSource {
    Files(PathBuf, PathBuf),
    StateDir(PathBuf),
}

fn ca_source(state_dir: &std::path::Path, files: Option<(PathBuf, PathBuf)>) -> CaSource {
    match files {
        Some((cert, key)) => CaSource::Files(cert, key),
        None => CaSource::StateDir(state_dir.to_owned()),
    }
}

fn serve(
    mesh_dir: Option<PathBuf>,
    state_dir: PathBuf,
    ca_files: Option<(PathBuf, PathBuf)>,
    trust_domain: String,
    args: ServeArgs,
    log_level: actors::LogLevelControl,
) -> anyhow::Result<()> {
    if args.service_cert_validity_s < messages::MIN_CERT_VALIDITY.as_secs() {
        bail!("--service-cert-validity-s must be at least {} (a minute)", messages::MIN_CERT_VALIDITY.as_secs());
    }
    let cluster = args.kubernetes || args.kubeconfig.is_some();
    let mesh_dir = match mesh_dir {
        Some(d) => Some(d),
        None if cluster => None,
        None => Some(PathBuf::from(DEFAULT_MESH_DIR)),
    };
    let mut config = actors::ControllerConfig {
        mesh_dir,
        kubernetes: None,
        state_dir,
        ca_files,
        ads_addr: args.ads_addr,
        trust_domain,
        scan_interval: Duration::from_millis(args.scan_interval_ms.max(50)),
        service_cert_validity: Duration::from_secs(args.service_cert_validity_s),
        ads_cert_validity: actors::ControllerConfig::new(".").ads_cert_validity,
        ads_server_names: args.ads_server_names,
        limits: xds::ServeLimits {
            max_connections: raise_fd_limit(),
            drain: Duration::from_secs(args.drain_s),
            ..Default::default()
        },
        settings: messages::MeshSettings {
            enable_egress: args.enable_egress,
            permissive: args.permissive,
            tracing: None,
            retry_policy: false,
        },
        http_limits: Default::default(),
        debug_addr: args.debug_addr,
        log_level: Some(log_level),
        http_addr: match args.http_addr.as_str() {
            "off" => None,
            a => Some(a.parse().with_context(|| format!("--http-addr {a:?} is not an address (or off)"))?),
        },
    };
    let threads = args.serve_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("serve")
        .enable_all()
        .build()
        .context("starting the serving runtime")?;
    runtime.block_on(async move {
        if cluster {
            // The pod's name on a cluster (the chart passes it); elsewhere, host and process.
            let replica_id = std::env::var("POD_NAME").unwrap_or_else(|_| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            });
            let client =
                actors::kube_source::kube_config(args.kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
            let mut source = actors::KubernetesSource::new(client, &args.mesh_name, &args.osm_namespace, replica_id);
            if let Some(image) = args.envoy_image {
                source.injector.envoy_image = image;
            }
            if let Some(image) = args.init_image {
                source.injector.init_image = image;
            }
            if let Some(image) = args.healthcheck_image {
                source.injector.healthcheck_image = image;
            }
            if let Some(host) = args.sidecar_ads_host {
                source.injector.controller_host = host;
            }
            source.webhook_addr = match args.webhook_addr.as_str() {
                "off" => None,
                a => Some(a.parse().with_context(|| format!("--webhook-addr {a:?} is not an address (or off)"))?),
            };
            source.validator_addr = match args.validator_addr.as_str() {
                "off" => None,
                a => Some(a.parse().with_context(|| format!("--validator-addr {a:?} is not an address (or off)"))?),
            };
            config.kubernetes = Some(source);
        }
        let shutdown = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        };
        actors::run(config, shutdown).await.map_err(anyhow::Error::from)
    })?;
    Ok(())
}

/// Each sidecar holds a connection, so the soft open-file limit (often 1,024 under supervisors) caps the
/// mesh: raise it to the hard limit and size the connection limit from it, keeping room for the files,
/// the HTTP endpoint and the runtime.
fn raise_fd_limit() -> usize {
    const RESERVED: u64 = 256;
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let max = limit.saturating_sub(RESERVED).max(16);
    tracing::info!(open_file_limit = limit, max_sidecar_connections = max, "file descriptors");
    usize::try_from(max).unwrap_or(usize::MAX)
}

#[allow(clippy::too_many_arguments)]
fn write_bootstrap(
    mesh_dir: &std::path::Path,
    state_dir: &std::path::Path,
    ca: &CaSource,
    trust_domain: &str,
    pod: &str,
    controller_host: String,
    controller_port: u16,
    delta: bool,
    out: &std::path::Path,
    config_dir: Option<String>,
) -> anyhow::Result<()> {
    let (ns, name) = pod.split_once('/').context("--pod must be <namespace>/<name>")?;
    let mut dir = k8s::YamlDir::new(mesh_dir);
    let scan = dir.scan();
    for e in &scan.errors {
        tracing::warn!("{e}");
    }
    let mut catalog = MeshCatalog::new(trust_domain);
    for ev in scan.events {
        let _: messages::Dirty = catalog.apply(ev as SourceEvent);
    }
    let pod = catalog.pod(ns, name).with_context(|| format!("pod {ns}/{name} is not in {}", mesh_dir.display()))?;
    // Never a new CA here: a sidecar bootstrapped from another root would be refused by the controller.
    let ca = match ca {
        CaSource::Files(cert, key) => certs::CertificateAuthority::from_files(cert, key, trust_domain)?,
        CaSource::StateDir(dir) => certs::CertificateAuthority::load(dir, trust_domain)?,
    };
    // Signed by the root that signs now and trusting every root in use, as the controller put them in force
    // (during a root rotation: both), whatever the mesh directory's MeshRootCertificates say meanwhile.
    let store = certs::roots::RootStore {
        state_dir: state_dir.to_owned(),
        trust_domain: trust_domain.to_owned(),
        startup: std::sync::Arc::new(ca),
        create: false,
    };
    let roots = store.in_force()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out_abs = std::fs::canonicalize(out)?;
    let opts = sidecar::SidecarOptions {
        controller_host,
        controller_port,
        ads_api: if delta { sidecar::AdsApi::Delta } else { sidecar::AdsApi::Sotw },
        config_dir: config_dir.unwrap_or_else(|| out_abs.display().to_string()),
        ..Default::default()
    };
    let bundle = sidecar::sidecar_for_pod(pod, roots.signer().as_ref(), roots.trust_pem(), &opts)?;
    let refresh = out.join(sidecar::BOOTSTRAP_FILE).exists();
    // Envoy runs as uid 1500 (the iptables rules exempt that uid) and must read its key: the files are handed
    // over to it. Only root may; anyone else keeps them and is told. A bundle written again replaces the
    // previous one in one step, and a running Envoy takes the new certificate and roots into use.
    let mut files = bundle.files();
    files.push(("iptables.rules", bundle.iptables_rules.as_str(), 0o644));
    let owned_by_envoy = sidecar::write_bundle(out, &files, messages::ENVOY_UID)?;
    println!("proxy {} ({})", bundle.proxy.uuid, bundle.proxy.identity);
    println!(
        "files written to {} (client certificate serial {}, roots: {})",
        out.display(),
        bundle.client_cert.serial,
        roots.roots().iter().map(|(n, r)| format!("{n} {r}")).collect::<Vec<_>>().join(", ")
    );
    if refresh {
        println!("a running sidecar of this bundle takes the new certificate and roots into use by itself");
    }
    println!(
        "1. interception, in the workload's network namespace: iptables-restore --noflush < {}",
        out.join("iptables.rules").display()
    );
    println!(
        "2. the sidecar, as uid {uid} (exempt from interception): setpriv --reuid {uid} --regid {uid} --clear-groups envoy {}",
        bundle.envoy_args.join(" "),
        uid = messages::ENVOY_UID
    );
    if !owned_by_envoy {
        println!(
            "note: the files could not be given to uid {} (run bootstrap as root, or chown them) and {} is readable by its owner only",
            messages::ENVOY_UID,
            sidecar::KEY_FILE
        );
    }
    Ok(())
}
