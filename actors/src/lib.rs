//! The running control plane: actix actors around the pure cores, and their wiring.
//!
//! Data flow: [`source::DirSourceActor`] scans the mesh directory and [`kube_source::KubeSourceActor`]
//! watches a cluster → [`catalog::CatalogActor`] applies the
//! events to the mesh index and marks proxies dirty → [`snapshot::SnapshotActor`] builds their snapshots
//! (with certificates from [`certs::CertActor`]) and publishes each through a `watch` channel →
//! a session per connected Envoy ([`session`]) streams what changed over ADS. This is the only crate
//! that knows actix.
//!
//! Threads: the actors (catalog, snapshots, certificates, sources) live on one actix system
//! thread of their own; the ADS server, its TLS handshakes and every proxy session run on the caller's
//! multi-threaded tokio runtime, so serving uses every core and never waits behind signing or file reading.

pub mod catalog;
pub mod certs;
pub mod debug;
pub mod gateway;
pub mod healthcheck;
pub mod http;
pub mod kube_source;
pub mod metrics;
pub mod policy_status;
pub mod schedule;
pub mod session;
pub mod snapshot;
pub mod source;
pub mod status;

use ::certs::Issuer as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ::certs::CertificateAuthority;
use actix::prelude::*;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The mesh directory; `None` when a cluster is the only source.
    pub mesh_dir: Option<PathBuf>,
    /// The cluster to watch, if any.
    pub kubernetes: Option<KubernetesSource>,
    pub state_dir: PathBuf,
    /// A CA brought from files (certificate, then key): used instead of the root in the state directory
    /// or the cluster's Secret.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    pub ads_addr: SocketAddr,
    pub trust_domain: String,
    pub scan_interval: Duration,
    pub service_cert_validity: Duration,
    /// Validity of the ADS server's certificate, renewed like service certificates.
    pub ads_cert_validity: Duration,
    /// Extra DNS names / IPs for the ADS server certificate.
    pub ads_server_names: Vec<String>,
    /// Bounds on ADS peers (connections, handshake time, streams, shutdown drain).
    pub limits: xds::ServeLimits,
    /// Bounds of the HTTP endpoint's peers.
    pub http_limits: http::HttpLimits,
    pub settings: messages::MeshSettings,
    /// Health, readiness and metrics endpoint (OSM: :9091); `None` serves none.
    pub http_addr: Option<SocketAddr>,
    /// Where the debug server listens while the MeshConfig's `observability.enableDebugServer` is on
    /// (OSM: 9092, here on localhost unless configured).
    pub debug_addr: SocketAddr,
    /// Sets the process's log filter when the MeshConfig's `observability.osmLogLevel` changes (the
    /// binary owns the subscriber); `None`: the level is not followed.
    pub log_level: Option<LogLevelControl>,
}

/// Sets the controller's log level from a level name of the `tracing` filter (`trace` … `error`, `off`).
#[derive(Clone)]
pub struct LogLevelControl(pub Arc<SetLogLevel>);

/// Sets the filter to a level name; the error says why it could not.
pub type SetLogLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for LogLevelControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevelControl")
    }
}

impl ControllerConfig {
    /// The defaults (the mesh directory `mesh`, ADS on :15128, a day of service-certificate validity, no
    /// HTTP endpoint), keeping state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            mesh_dir: Some(PathBuf::from("mesh")),
            kubernetes: None,
            state_dir: state_dir.into(),
            ca_files: None,
            ads_addr: SocketAddr::from(([0, 0, 0, 0], messages::ports::ADS)),
            trust_domain: "cluster.local".to_owned(),
            scan_interval: Duration::from_secs(5),
            service_cert_validity: Duration::from_secs(24 * 3600),
            ads_cert_validity: Duration::from_secs(24 * 3600),
            ads_server_names: Vec::new(),
            limits: Default::default(),
            http_limits: Default::default(),
            settings: Default::default(),
            http_addr: None,
            debug_addr: SocketAddr::from(([127, 0, 0, 1], 9092)),
            log_level: None,
        }
    }
}

impl KubernetesSource {
    /// The cluster of `client`, the mesh `mesh_name` with its control plane in `osm_namespace`: default
    /// injector settings, no webhooks, the default Lease timing.
    pub fn new(client: kube::Config, mesh_name: &str, osm_namespace: &str, replica_id: impl Into<String>) -> Self {
        Self {
            client,
            watch: k8s::watch::WatchConfig { mesh_name: mesh_name.to_owned(), osm_namespace: osm_namespace.to_owned() },
            injector: k8s::inject::InjectorSettings::new(mesh_name, osm_namespace),
            webhook_addr: None,
            validator_addr: None,
            replica_id: replica_id.into(),
            lease: Default::default(),
        }
    }
}

/// Where the Kubernetes source reads from.
#[derive(Debug, Clone)]
pub struct KubernetesSource {
    pub client: kube::Config,
    pub watch: k8s::watch::WatchConfig,
    /// What the sidecar injector puts into pods (a MeshConfig overrides it per request).
    pub injector: k8s::inject::InjectorSettings,
    /// The sidecar injector's HTTPS address (OSM: 9090); `None` serves none.
    pub webhook_addr: Option<SocketAddr>,
    /// The validating webhook's HTTPS address (OSM: 9093); `None` serves none.
    pub validator_addr: Option<SocketAddr>,
    /// This replica's name in the leader election (its pod's name on a cluster).
    pub replica_id: String,
    pub lease: k8s::duties::LeaseTiming,
}

/// Already-bound listeners for [`run_on`] (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub ads: tokio::net::TcpListener,
    pub http: Option<tokio::net::TcpListener>,
    /// The sidecar injector (Kubernetes only).
    pub webhook: Option<tokio::net::TcpListener>,
    /// The validating webhook (Kubernetes only).
    pub validator: Option<tokio::net::TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{code}: {0}", code = messages::errcode::CA_UNUSABLE)]
    Cert(#[from] ::certs::CertError),
    #[error("cannot listen on {addr}: {source} (hint: is another controller running, or is the address wrong?)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("mesh directory {0}: {1}")]
    MeshDir(PathBuf, String),
    #[error(transparent)]
    Serve(#[from] xds::server::ServeError),
    #[error(transparent)]
    AdsTls(#[from] xds::tls::TlsConfigError),
    #[error("no source of mesh objects: give a mesh directory, a cluster, or both")]
    NoSource,
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(String),
    #[error(transparent)]
    WebhookTls(#[from] http::TlsError),
    #[error(transparent)]
    CaSecret(#[from] k8s::ca_secret::CaSecretError),
    #[error("cannot start the actor system: {0}")]
    Actors(String),
}

/// Keeps the ADS server's TLS in step with the mesh's roots, for as long as the server runs: its
/// certificate is renewed on the schedule of service certificates ([`::certs::rotation`]) and re-issued at
/// once when another root signs; client certificates are verified against every root in use. Signing runs
/// on the blocking pool; new handshakes present the new certificate (connected sidecars keep their
/// connections). A failed renewal keeps the current certificate and is retried.
async fn keep_ads_tls(
    mut trust: tokio::sync::watch::Receiver<Arc<::certs::roots::TrustSet>>,
    (cn, names): (String, Vec<String>),
    validity: Duration,
    first: ::certs::IssuedCert,
    certificate: Arc<xds::tls::ServerCertificate>,
    client_roots: Arc<xds::tls::ClientRoots>,
) {
    use std::time::SystemTime;
    let mut rotation = ::certs::rotation::Rotation::new(Default::default());
    let now = SystemTime::now();
    rotation.issued((), now, now + validity, first.jitter_seed());
    let mut signer = trust.borrow_and_update().clone();
    loop {
        let Some(due) = rotation.next_due() else { return };
        let sleep = tokio::time::sleep(due.duration_since(SystemTime::now()).unwrap_or_default());
        tokio::select! {
            () = sleep => {
                if rotation.take_due(SystemTime::now()).is_empty() {
                    continue;
                }
            }
            changed = trust.changed() => {
                if changed.is_err() {
                    return;
                }
                let set = trust.borrow_and_update().clone();
                match client_roots.replace(set.trust_pem()) {
                    Ok(()) => {
                        // Sidecars connected with a retired root's certificate must go: off the serving
                        // threads, a verification per stream.
                        let roots = client_roots.clone();
                        let evicted = tokio::task::spawn_blocking(move || roots.evict_untrusted()).await.unwrap_or(0);
                        if evicted > 0 {
                            tracing::warn!(evicted, "ended the streams of sidecars whose client certificate's root was retired; they must be bootstrapped again");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot verify sidecars with the new mesh roots; the previous ones stay");
                    }
                }
                if set.same_signer(&signer) {
                    continue;
                }
                signer = set;
            }
        }
        let (ca, cn, names) = (signer.signer().clone(), cn.clone(), names.clone());
        let signed = tokio::task::spawn_blocking(move || ca.issue_server(&cn, &names, validity)).await;
        let renewed = match signed {
            Ok(Ok(cert)) => {
                certificate.replace(&cert.cert_pem, &cert.key_pem).map(|()| cert).map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("signing task failed: {e}")),
        };
        let now = SystemTime::now();
        match renewed {
            Ok(cert) => {
                tracing::info!(serial = %cert.serial, root = signer.signer_name(), "renewed the ADS server certificate");
                rotation.issued((), now, now + validity, cert.jitter_seed());
            }
            Err(e) => {
                tracing::error!(error = %e, "ADS server certificate renewal failed; the current one stays in use");
                rotation.failed((), now);
            }
        }
    }
}

/// Runs the controller until `shutdown` resolves. Must run on a multi-threaded tokio runtime (it serves
/// from there) and outside any actix `System` (it starts its own).
pub async fn run(config: ControllerConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), ControllerError> {
    fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ControllerError> {
        xds::server::bind(addr).map_err(|source| ControllerError::Bind { addr, source })
    }
    let ads = bind(config.ads_addr)?;
    let http = match config.http_addr {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    let webhook = match config.kubernetes.as_ref().and_then(|k| k.webhook_addr) {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    let validator = match config.kubernetes.as_ref().and_then(|k| k.validator_addr) {
        Some(addr) => Some(bind(addr)?),
        None => None,
    };
    run_on(config, Listeners { ads, http, webhook, validator }, shutdown).await
}

/// The actors and the thread their actix system runs on.
struct ActorSystem {
    system: actix_rt::System,
    thread: std::thread::JoinHandle<()>,
    catalog: Addr<catalog::CatalogActor>,
    /// The catalog itself, read directly by sessions admitting proxies.
    shared: catalog::SharedCatalog,
    snapshots: Addr<snapshot::SnapshotActor>,
    certs: Addr<certs::CertActor>,
    source: Option<Addr<source::DirSourceActor>>,
    /// Held: the watchers run while their actor is addressable.
    _kube_source: Option<Addr<kube_source::KubeSourceActor>>,
}

/// What the catalog actor pushes to tasks outside the actors.
struct MeshConfigOutlets {
    /// `observability.enableDebugServer`.
    debug_switch: Arc<tokio::sync::watch::Sender<bool>>,
    /// `certificate.ingressGateway`.
    gateway: Arc<tokio::sync::watch::Sender<Option<messages::IngressGatewayCert>>>,
    /// The status of each IngressBackend.
    statuses: Arc<tokio::sync::watch::Sender<policy_status::Statuses>>,
}

impl ActorSystem {
    async fn start(
        config: &ControllerConfig,
        trust: Arc<certs::TrustWatch>,
        (load_root, record_roots): (certs::RootLoader, certs::RootRecorder),
        progress: Arc<status::MeshProgress>,
        outlets: MeshConfigOutlets,
        metrics: Arc<metrics::Metrics>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, ControllerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("actors".to_owned())
            .spawn(move || {
                let runner = actix_rt::System::new();
                runner.block_on(async move {
                    // Started downstream first, so each actor is given what it pushes to: no wiring after
                    // start. Data flows one way: sources → catalog → (snapshots, certificates); certificates
                    // → snapshots through the store and the trust channel.
                    let shared = catalog::shared_catalog(&config.trust_domain, config.settings.clone());
                    let (cert_store, ends) = certs::CertStore::new();
                    let trust_rx = trust.subscribe();
                    let snapshots = snapshot::SnapshotActor::new(
                        shared.clone(),
                        (cert_store.clone(), ends.renewed),
                        trust_rx,
                        metrics.clone(),
                    )
                    .with_progress(progress)
                    .start();
                    let cert_actor = certs::CertActor::new(
                        trust,
                        load_root,
                        config.service_cert_validity,
                        metrics.clone(),
                        (cert_store, ends.wanted),
                    )
                    .with_recorder(record_roots)
                    .start();
                    let catalog = catalog::CatalogActor::new(
                        shared.clone(),
                        (snapshots.clone(), cert_actor.clone()),
                        ready,
                        metrics.clone(),
                    )
                    .with_debug_switch(outlets.debug_switch)
                    .with_ingress_gateway(outlets.gateway)
                    .with_policy_status(outlets.statuses)
                    .with_log_level(config.log_level.clone())
                    .start();
                    let kube_source = match config.kubernetes.clone() {
                        Some(k) => {
                            // Declared before any source delivers: nothing is served until the cluster's
                            // every kind was listed once, even if the mesh directory is read first.
                            let kinds = k8s::watch::kinds();
                            let expect = catalog::Expect { source: k8s::watch::SOURCE.to_owned(), kinds };
                            let _ = catalog.send(expect).await;
                            Some(kube_source::KubeSourceActor::new(k.client, k.watch, catalog.clone()).start())
                        }
                        None => None,
                    };
                    let source = config.mesh_dir.clone().map(|dir| {
                        source::DirSourceActor::new(dir, catalog.clone(), config.scan_interval)
                            .with_metrics(metrics.clone())
                            .start()
                    });
                    let _ = tx.send((
                        actix_rt::System::current(),
                        (catalog, shared),
                        snapshots,
                        cert_actor,
                        source,
                        kube_source,
                    ));
                });
                if let Err(e) = runner.run() {
                    tracing::error!(error = %e, "actor system failed");
                }
            })
            .map_err(|e| ControllerError::Actors(e.to_string()))?;
        let (system, (catalog, shared), snapshots, certs, source, kube_source) =
            rx.await.map_err(|_| ControllerError::Actors("the actor thread ended at start".to_owned()))?;
        Ok(Self { system, thread, catalog, shared, snapshots, certs, source, _kube_source: kube_source })
    }

    async fn stop(self) {
        self.system.stop();
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// The admission webhooks over HTTPS (the injector and the validator, each on its listener), with a
/// certificate from the mesh CA for the names the chart's Services give them (the webhook
/// configurations trust the mesh root).
fn serve_webhooks<F: Future<Output = ()> + Send + 'static>(
    listeners: [Option<tokio::net::TcpListener>; 2],
    ns: &str,
    state: k8s::webhook::WebhookState,
    limits: http::HttpLimits,
    until: impl Fn() -> F,
) -> Result<(), ControllerError> {
    let names: Vec<String> = ["osm-injector", "osm-validator", "osm-controller"]
        .iter()
        .flat_map(|svc| [format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local")])
        .chain(["localhost".to_owned(), "127.0.0.1".to_owned()])
        .collect();
    let cert = state.ca.issue_server(&format!("osm-injector.{ns}.svc"), &names, ::certs::LONG_VALIDITY)?;
    let tls = http::tls_acceptor(&cert.cert_pem, &cert.key_pem)?;
    let [injector, validator] = listeners;
    // The API server is the webhooks' one peer (a few, with replicas): no per-peer share here, or a burst
    // of pod creations would see their reviews' connections closed and fail.
    let limits = http::HttpLimits { max_per_peer: limits.max_connections, ..limits };
    let routers = [
        (injector, k8s::webhook::injector_router(state.clone()), "sidecar injector (HTTPS: /mutate-pod-creation)"),
        (validator, k8s::webhook::validator_router(state), "validating webhook (HTTPS: /validate)"),
    ];
    for (listener, router, what) in routers {
        let Some(listener) = listener else { continue };
        let addr = listener.local_addr().ok();
        let (tls, limits, until) = (tls.clone(), limits.clone(), until());
        tokio::spawn(async move {
            if let Err(e) = http::serve_router(listener, router, limits, Some(tls), until).await {
                tracing::error!(error = %e, "{what} failed");
            }
        });
        tracing::info!(addr = ?addr, "{what} listening");
    }
    Ok(())
}

/// Like [`run`], on already-bound listeners.
pub async fn run_on(
    config: ControllerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    match (&config.mesh_dir, &config.kubernetes) {
        (Some(dir), _) if !dir.is_dir() => {
            return Err(ControllerError::MeshDir(dir.clone(), "not a directory".to_owned()));
        }
        (None, None) => return Err(ControllerError::NoSource),
        _ => {}
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let status = Arc::new(status::StatusBoard::default());
    let queries: Arc<std::sync::OnceLock<http::Queries>> = Arc::default();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_sessions = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // The HTTP endpoint comes up first: liveness answers, readiness says why not yet.
    if let Some(listener) = listeners.http {
        let addr = listener.local_addr().ok();
        let state = http::HttpState {
            metrics: metrics.clone(),
            status: status.clone(),
            actors: queries.clone(),
            identity: Arc::new(http::MeshIdentity {
                trust_domain: config.trust_domain.clone(),
                sources: config
                    .mesh_dir
                    .iter()
                    .map(|d| format!("mesh directory {}", d.display()))
                    .chain(config.kubernetes.iter().map(|k| format!("cluster {}", k.client.cluster_url)))
                    .collect(),
            }),
            ready: ready.clone(),
        };
        let until = stopped();
        let limits = config.http_limits.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state, limits, until).await {
                tracing::error!(error = %e, "HTTP endpoint failed");
            }
        });
        tracing::info!(addr = ?addr, "HTTP endpoint listening (/health/ready, /health/alive, /metrics, /status/proxies, /status/changes, /status/connectivity, /status/mesh)");
    }
    // One client (and connection pool) for what runs here on a cluster: the root, the webhooks, the
    // election. The watchers have their own, on the actor thread.
    let cluster = match &config.kubernetes {
        Some(k) => {
            Some((k, kube::Client::try_from(k.client.clone()).map_err(|e| ControllerError::Kube(e.to_string()))?))
        }
        None => None,
    };
    // On a cluster the root lives in a Secret that every replica shares; otherwise in the state directory.
    let ca = match (&config.ca_files, &cluster) {
        (Some((cert, key)), _) => {
            let ca = CertificateAuthority::from_files(cert, key, &config.trust_domain)?;
            tracing::info!(certificate = %cert.display(), "mesh CA brought from files");
            ca
        }
        (None, Some((k, client))) => {
            // An API server that is briefly unreachable (a control-plane upgrade) is waited for, a while.
            let mut delay = Duration::from_millis(500);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                match k8s::ca_secret::load_or_create(client.clone(), &k.watch.osm_namespace, &config.trust_domain).await
                {
                    Ok(ca) => break ca,
                    Err(e) if e.is_transient() && tokio::time::Instant::now() + delay < deadline => {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read the mesh root yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(8));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        (None, None) => CertificateAuthority::load_or_create(&config.state_dir, &config.trust_domain)?,
    };
    let ca = Arc::new(ca);
    if let Some((k, client)) = &cluster
        && (listeners.webhook.is_some() || listeners.validator.is_some())
    {
        let state = k8s::webhook::WebhookState {
            client: client.clone(),
            ca: ca.clone(),
            settings: k.injector.clone(),
            observe: {
                let metrics = metrics.clone();
                Arc::new(move |kind, allowed| metrics.admission(kind, allowed))
            },
            issued: {
                let metrics = metrics.clone();
                Arc::new(move |took| metrics.cert_issued(took))
            },
        };
        let listeners = [listeners.webhook, listeners.validator];
        serve_webhooks(listeners, &k.watch.osm_namespace, state, config.http_limits.clone(), &stopped)?;
    }
    let election = match &cluster {
        Some((k, client)) => {
            let duties = k8s::duties::run(
                client.clone(),
                k.watch.clone(),
                k.replica_id.clone(),
                k.lease,
                ca.root_pem().to_owned(),
                metrics.leader.clone(),
                stopped(),
            );
            Some(tokio::spawn(async move {
                if let Err(e) = duties.await {
                    tracing::error!(error = %e, "leader election stopped");
                }
            }))
        }
        None => None,
    };
    // The roots MeshRootCertificates name are kept in the state directory (created the first time one is
    // named); the one named `osm-ca-bundle` is the root loaded above.
    let startup: Arc<dyn ::certs::Issuer> = ca.clone();
    let store = ::certs::roots::RootStore {
        state_dir: config.state_dir.clone(),
        trust_domain: config.trust_domain.clone(),
        startup: startup.clone(),
        create: true,
    };
    let recorder = store.clone();
    let record_roots: certs::RootRecorder = Arc::new(move |mrcs| {
        if let Err(e) = recorder.record_in_force(mrcs) {
            tracing::warn!(error = %e, "cannot record the mesh roots in force for osm-controller bootstrap");
        }
    });
    let load_root: certs::RootLoader = Arc::new(move |m| store.load(m));
    let roots = ::certs::roots::TrustSet::single(::certs::roots::STARTUP_ROOT_SECRET, startup);
    let trust = Arc::new(tokio::sync::watch::Sender::new(Arc::new(roots)));
    let debug_switch = Arc::new(tokio::sync::watch::Sender::new(false));
    let gateway = Arc::new(tokio::sync::watch::Sender::new(None));
    let statuses = Arc::new(tokio::sync::watch::Sender::new(policy_status::Statuses::new()));
    let actors = ActorSystem::start(
        &config,
        trust.clone(),
        (load_root, record_roots),
        status.progress.clone(),
        MeshConfigOutlets { debug_switch: debug_switch.clone(), gateway: gateway.clone(), statuses: statuses.clone() },
        metrics.clone(),
        ready,
    )
    .await?;
    // The ingress gateway's certificate: a Secret on a cluster, files in the state directory otherwise.
    let sink: Arc<dyn gateway::GatewaySink> = match &cluster {
        Some((_, client)) => Arc::new(gateway::SecretSink(client.clone())),
        None => Arc::new(gateway::DirSink(config.state_dir.join("ingress-gateway"))),
    };
    tokio::spawn(gateway::run(gateway.subscribe(), trust.subscribe(), sink, stopped()));
    if let Some((_, client)) = &cluster {
        tokio::spawn(policy_status::run(statuses.subscribe(), client.clone(), stopped()));
    }
    let q = http::Queries { catalog: actors.catalog.clone(), certs: actors.certs.clone() };
    let _ = queries.set(q.clone());
    let debug_state = debug::DebugState { queries: q, snapshots: actors.snapshots.clone(), status: status.clone() };
    tokio::spawn(debug::run(
        debug_switch.subscribe(),
        config.debug_addr,
        debug_state,
        config.http_limits.clone(),
        stopped(),
    ));
    // No config is served before the first full scan has reached the catalog (sessions also refuse until
    // every source has listed everything, which for a cluster may take a while); and the ADS server starts
    // on the roots that scan's MeshRootCertificates name (a controller restarted after a root rotation
    // presents a certificate of the new root from its first handshake).
    if let Some(source) = &actors.source {
        let _ = source.send(source::ScanNow).await;
        let settled = actors.certs.send(certs::RootsSettled);
        if tokio::time::timeout(Duration::from_secs(30), settled).await.is_err() {
            tracing::warn!("the mesh roots are not resolved after 30 s; serving with the roots in force");
        }
    }
    let manager = Arc::new(session::SessionManager::new(
        actors.shared.clone(),
        actors.snapshots.clone(),
        metrics.clone(),
        status,
        stop_rx_sessions,
    ));

    let mut names = config.ads_server_names.clone();
    names.extend(["osm-controller".to_owned(), "osm-controller.osm-system.svc".to_owned()]);
    if !config.ads_addr.ip().is_unspecified() {
        names.push(config.ads_addr.ip().to_string());
    }
    let cn = ::certs::ads_server_common_name(&config.trust_domain);
    // Subscribed before reading: a change in between is not missed.
    let mut trust_rx = trust.subscribe();
    let roots = trust_rx.borrow_and_update().clone();
    let server_cert = roots.signer().issue_server(&cn, &names, config.ads_cert_validity)?;
    let certificate = Arc::new(xds::tls::ServerCertificate::new(&server_cert.cert_pem, &server_cert.key_pem)?);
    let client_roots = Arc::new(xds::tls::ClientRoots::new(roots.trust_pem())?);
    let renewals = tokio::spawn(keep_ads_tls(
        trust_rx,
        (cn, names),
        config.ads_cert_validity,
        server_cert,
        certificate.clone(),
        client_roots.clone(),
    ));
    let tls = xds::ServerTls { certificate, client_roots, trust_domain: config.trust_domain.clone() };
    let addr = listeners.ads.local_addr().unwrap_or(config.ads_addr);
    let mesh_dir = config.mesh_dir.as_ref().map(|d| d.display().to_string());
    let cluster = config.kubernetes.as_ref().map(|k| k.client.cluster_url.to_string());
    tracing::info!(addr = %addr, mesh_dir, cluster, "ADS server listening (mTLS)");
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let counted = metrics.clone();
    let handshake_failed: xds::tls::FailureSink = Arc::new(move |f| {
        counted.handshake_failed(f.reason);
        counted.error(messages::errcode::ADS_HANDSHAKE_FAILED);
    });
    let result = xds::serve(listeners.ads, tls, manager, config.limits.clone(), handshake_failed, shutdown).await;
    renewals.abort();
    // The Lease is released on the way out, so another replica takes the duties over at once.
    if let Some(e) = election {
        let _ = e.await;
    }
    actors.stop().await;
    result.map_err(Into::into)
}
