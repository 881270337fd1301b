//! A mesh on one machine, for end-to-end tests and the demo.
//!
//! Data flow: [`LocalMesh`] copies a mesh directory, starts the real `osm-controller` on it inside a hub
//! network namespace, and for each pod creates a network namespace with the pod's IP, applies the init
//! container's iptables rules, writes the sidecar bundle (`sidecar::sidecar_for_pod`, exactly what
//! injection produces) and starts the real Envoy as uid 1500. Apps (`mesh-app`) run inside the pods and
//! dial Service ClusterIPs; the sidecars intercept them transparently.

pub mod netns;

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use certs::CertificateAuthority;
use messages::{ENVOY_UID, MeshCatalog, Pod, ports};
use sidecar::{AdsApi, SidecarOptions};

use crate::netns::{Hub, Netns};

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("command {0} failed: {1}")]
    Command(String, String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error(transparent)]
    Sidecar(#[from] sidecar::SidecarError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
    move |e| TestbedError::Io(path.to_owned(), e)
}

/// A binary's exit: the error's chain of causes on stderr (no backtrace) and status 1.
pub fn exit_code<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the programs the testbed runs live.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub controller: PathBuf,
    /// The `osm` troubleshooting tool.
    pub osm: PathBuf,
    pub app: PathBuf,
    pub envoy: PathBuf,
    /// What an injected `osm-healthcheck` container runs.
    pub healthcheck: PathBuf,
}

/// The Envoy binary installed by `scripts/setup.sh` (readable by uid 1500).
pub const DEFAULT_ENVOY: &str = "/usr/local/bin/mesh-envoy";

impl Binaries {
    /// Builds (if needed) and locates `osm-controller` and `mesh-app` in this build's target directory.
    pub fn locate() -> Result<Self, TestbedError> {
        static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = BUILT
            .get_or_init(|| {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                // target/<profile>/deps/<test> or target/<profile>/<bin>
                let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
                if dir.ends_with("deps") {
                    dir.pop();
                }
                let release = dir.file_name().is_some_and(|n| n == "release");
                let mut cmd = Command::new(cargo);
                // Variables that cargo sets for a running test would change build fingerprints and force a
                // full rebuild of the binaries: run this build with the user's environment only.
                for (k, _) in std::env::vars_os() {
                    let k = k.to_string_lossy();
                    if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                        || matches!(k.as_ref(), "OUT_DIR" | "RUSTC" | "RUSTDOC" | "RUST_TEST_THREADS")
                    {
                        cmd.env_remove(k.as_ref());
                    }
                }
                cmd.args([
                    "build",
                    "-q",
                    "-p",
                    "actors",
                    "--bin",
                    "osm-controller",
                    "--bin",
                    "osm-healthcheck",
                    "-p",
                    "osm-cli",
                    "--bin",
                    "osm",
                    "-p",
                    "testbed",
                    "--bin",
                    "mesh-app",
                ]);
                if release {
                    cmd.arg("--release");
                }
                let out = cmd.output().map_err(|e| format!("running cargo: {e}"))?;
                if !out.status.success() {
                    return Err(format!("cargo build failed: {}", String::from_utf8_lossy(&out.stderr)));
                }
                Ok(dir)
            })
            .clone()
            .map_err(TestbedError::Setup)?;
        let envoy = std::env::var_os("MESH_ENVOY").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_ENVOY));
        Ok(Self {
            controller: dir.join("osm-controller"),
            osm: dir.join("osm"),
            app: dir.join("mesh-app"),
            envoy,
            healthcheck: dir.join("osm-healthcheck"),
        })
    }
}

/// Checks the machine can run a local mesh, with a message that says how to fix it.
pub fn preflight(bins: &Binaries) -> Result<(), TestbedError> {
    let hint = "run scripts/setup.sh as root";
    for prog in ["ip", "iptables-restore", "setpriv"] {
        if !Command::new("sh").args(["-c", &format!("command -v {prog}")]).output().is_ok_and(|o| o.status.success()) {
            return Err(TestbedError::Setup(format!("{prog} is not installed ({hint})")));
        }
    }
    if !bins.envoy.exists() {
        return Err(TestbedError::Setup(format!("Envoy is not installed at {} ({hint})", bins.envoy.display())));
    }
    let uid = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
    });
    if uid.as_deref() != Some("0") {
        return Err(TestbedError::Setup("the local mesh needs root (network namespaces and iptables)".to_owned()));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Directory of YAML to start from; copied, so tests can edit their copy.
    pub mesh_source: PathBuf,
    pub ads_api: AdsApi,
    /// The hub's address: the controller listens here; pods use it as their gateway.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub envoy_log_level: String,
    /// Extra `osm-controller` flags, e.g. `--enable-egress false`.
    pub controller_args: Vec<String>,
    /// A link from the host's namespace to the hub: (host address, hub address), for peers of the
    /// controller that run in the test process (an API-server simulator, the webhooks' caller).
    pub host_link: Option<(Ipv4Addr, Ipv4Addr)>,
    /// A CA brought from files (certificate, key) instead of the built-in root: the controller gets
    /// `--ca-cert`/`--ca-key`, and sidecars are bootstrapped from it.
    pub ca_files: Option<(PathBuf, PathBuf)>,
}

impl MeshOptions {
    pub fn new(mesh_source: impl Into<PathBuf>) -> Self {
        Self {
            mesh_source: mesh_source.into(),
            ads_api: AdsApi::Sotw,
            gateway: Ipv4Addr::new(10, 244, 0, 1),
            prefix_len: 16,
            envoy_log_level: "warning".to_owned(),
            controller_args: Vec::new(),
            host_link: None,
            ca_files: None,
        }
    }
}

/// One running pod: its namespace, its Envoy, its files.
#[derive(Debug)]
pub struct PodRuntime {
    pub key: String,
    pub ip: Ipv4Addr,
    pub uuid: String,
    pub dir: PathBuf,
    /// `None` for a host outside the mesh.
    envoy: Option<Child>,
    netns: Netns,
}

impl PodRuntime {
    /// The pod's network namespace (`ip netns exec <it> ...` runs inside the pod).
    pub fn netns_name(&self) -> &str {
        &self.netns.name
    }

    pub fn envoy_log(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// The last lines of Envoy's log that are not admin-interface access logs, for error messages.
    pub fn envoy_log_tail(&self) -> String {
        let log = self.envoy_log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("\"127.0.0.1:15000\"")).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A running mesh: controller, pods, apps. Everything is stopped and removed on drop.
#[derive(Debug)]
pub struct LocalMesh {
    pub opts: MeshOptions,
    pub bins: Binaries,
    pub mesh_dir: PathBuf,
    pub state_dir: PathBuf,
    work: tempfile::TempDir,
    controller: Option<Child>,
    controller_log: PathBuf,
    apps: Vec<Child>,
    pods: BTreeMap<String, PodRuntime>,
    ca: Arc<CertificateAuthority>,
    // Dropped last: everything above runs inside it.
    hub: Hub,
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, TestbedError> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(TestbedError::Timeout(timeout, what.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_file(path: &Path) -> Result<Stdio, TestbedError> {
    Ok(Stdio::from(fs::File::create(path).map_err(io(path))?))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), TestbedError> {
    fs::create_dir_all(to).map_err(io(to))?;
    for entry in fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

impl LocalMesh {
    /// Starts the controller on a copy of `opts.mesh_source`. No pods run yet: see [`LocalMesh::add_pod`].
    pub fn start(opts: MeshOptions, bins: Binaries) -> Result<Self, TestbedError> {
        let mut mesh = Self::prepare(opts, bins)?;
        mesh.start_controller()?;
        Ok(mesh)
    }

    /// The hub, the mesh directory and the root CA, without the controller: for a test that must start
    /// peers of the controller first (see [`LocalMesh::start_controller`]).
    pub fn prepare(opts: MeshOptions, bins: Binaries) -> Result<Self, TestbedError> {
        preflight(&bins)?;
        netns::sweep_stale();
        let work = tempfile::Builder::new().prefix("osm-testbed-").tempdir().map_err(io(Path::new("/tmp")))?;
        // Envoy runs as uid 1500 and must reach its files below this directory.
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).map_err(io(work.path()))?;
        let mesh_dir = work.path().join("mesh");
        let state_dir = work.path().join("state");
        copy_dir(&opts.mesh_source, &mesh_dir)?;
        let hub = Hub::create(opts.gateway, opts.prefix_len)?;
        if let Some((host, hub_side)) = opts.host_link {
            hub.link_host(host, hub_side)?;
        }
        // The mesh root, created here and found by the controller in its state directory, as after a restart
        // (or the one brought from files).
        let ca = Arc::new(match &opts.ca_files {
            Some((cert, key)) => CertificateAuthority::from_files(cert, key, "cluster.local")?,
            None => CertificateAuthority::load_or_create(&state_dir, "cluster.local")?,
        });
        let controller_log = work.path().join("controller.log");
        Ok(Self {
            ca,
            opts,
            bins,
            mesh_dir,
            state_dir,
            work,
            controller: None,
            controller_log,
            apps: Vec::new(),
            pods: BTreeMap::new(),
            hub,
        })
    }

    /// A scratch directory of this mesh (removed with it).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The mesh root CA's certificate (PEM).
    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    /// Starts the controller (again) and waits until it serves ADS.
    pub fn start_controller(&mut self) -> Result<(), TestbedError> {
        const READY: &str = "ADS server listening";
        let before = self.controller_output().matches(READY).count();
        let append = |path: &Path| -> Result<Stdio, TestbedError> {
            let f = fs::OpenOptions::new().create(true).append(true).open(path).map_err(io(path))?;
            Ok(Stdio::from(f))
        };
        let ads_addr = format!("{}:{}", self.opts.gateway, ports::ADS);
        let child = self
            .hub
            .ns
            .command(&self.bins.controller.display().to_string())
            .args(["--mesh-dir", &self.mesh_dir.display().to_string()])
            .args(["--state-dir", &self.state_dir.display().to_string()])
            .args(["--ads-addr", &ads_addr, "--scan-interval-ms", "200"])
            .args(self.opts.ca_files.iter().flat_map(|(cert, key)| {
                ["--ca-cert".to_owned(), cert.display().to_string(), "--ca-key".to_owned(), key.display().to_string()]
            }))
            .args(&self.opts.controller_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(append(&self.controller_log)?)
            .stderr(append(&self.work.path().join("controller.err"))?)
            .spawn()
            .map_err(|e| TestbedError::Setup(format!("starting {}: {e}", self.bins.controller.display())))?;
        self.controller = Some(child);
        let ready = wait_for(Duration::from_secs(30), "the controller to listen", || {
            if self.controller_output().matches(READY).count() > before {
                return Some(true);
            }
            if let Some(c) = self.controller.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return Some(false);
            }
            None
        });
        match ready {
            Ok(true) => Ok(()),
            Ok(false) => Err(TestbedError::Setup(format!("controller exited:\n{}", self.controller_output()))),
            Err(e) => Err(TestbedError::Setup(format!("{e}; controller output:\n{}", self.controller_output()))),
        }
    }

    /// GET on the controller's HTTP endpoint (:9091 on the hub), e.g. `/metrics`.
    pub fn controller_http(&self, path: &str) -> Result<String, TestbedError> {
        self.get_from_hub(&format!("http://{}:9091{path}", self.opts.gateway))
    }

    /// GET from the hub, a vantage point outside every pod (as Prometheus scraping pods would be).
    pub fn get_from_hub(&self, url: &str) -> Result<String, TestbedError> {
        let out = self
            .hub
            .ns
            .command(&self.bins.app.display().to_string())
            .args(["get", url, "--body-only"])
            .output()
            .map_err(|e| TestbedError::Command(format!("GET {url}"), e.to_string()))?;
        if !out.status.success() {
            return Err(TestbedError::Command(format!("GET {url}"), String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `osm <args>` from the hub with only `kubeconfig` to go by (no `--controller`): it finds the
    /// controller, and the sidecars, through the cluster's API server.
    pub fn osm_on_cluster(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output, TestbedError> {
        self.hub
            .ns
            .command(&self.bins.osm.display().to_string())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env_remove("OSM_CONTROLLER")
            .output()
            .map_err(|e| TestbedError::Command(format!("osm {args:?}"), e.to_string()))
    }

    /// The hub's network namespace: where the controller runs and the pods' gateway is.
    pub fn hub_netns_name(&self) -> &str {
        &self.hub.ns.name
    }

    /// Runs `osm <args>` against this mesh's controller, from the hub (as an operator's machine would).
    pub fn osm(&self, args: &[&str]) -> Result<Output, TestbedError> {
        self.hub
            .ns
            .command(&self.bins.osm.display().to_string())
            .args(["--controller", &format!("http://{}:9091", self.opts.gateway)])
            .args(args)
            .output()
            .map_err(|e| TestbedError::Command(format!("osm {args:?}"), e.to_string()))
    }

    /// Stops the controller; sidecars keep running on their last config.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the controller logged so far.
    pub fn controller_output(&self) -> String {
        let mut s = fs::read_to_string(&self.controller_log).unwrap_or_default();
        s.push_str(&fs::read_to_string(self.work.path().join("controller.err")).unwrap_or_default());
        s
    }

    /// The pod as the mesh directory describes it now.
    pub fn pod_model(&self, namespace: &str, name: &str) -> Result<Pod, TestbedError> {
        let mut dir = k8s::YamlDir::new(&self.mesh_dir);
        let mut catalog = MeshCatalog::new("cluster.local");
        for ev in dir.scan().events {
            catalog.apply(ev);
        }
        catalog
            .pod(namespace, name)
            .cloned()
            .ok_or_else(|| TestbedError::Setup(format!("pod {namespace}/{name} is not in {}", self.mesh_dir.display())))
    }

    /// Starts a pod described in the mesh directory and waits until its Envoy has its config.
    pub fn add_pod(&mut self, namespace: &str, name: &str) -> Result<&PodRuntime, TestbedError> {
        let pod = self.pod_model(namespace, name)?;
        let key = self.start_pod(&pod)?;
        self.wait_envoy_ready(&key)?;
        Ok(&self.pods[&key])
    }

    /// Starts a sidecar for any pod, described or not (used to show that strangers are refused). Does not
    /// wait for readiness.
    pub fn start_pod(&mut self, pod: &Pod) -> Result<String, TestbedError> {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let ip = match pod.ip {
            Some(IpAddr::V4(ip)) => ip,
            other => return Err(TestbedError::Setup(format!("pod {key}: needs an IPv4 status.podIP, has {other:?}"))),
        };
        let dir = self.work.path().join("pods").join(key.replace('/', "_"));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
        let opts = SidecarOptions {
            controller_host: self.opts.gateway.to_string(),
            ads_api: self.opts.ads_api,
            config_dir: dir.display().to_string(),
            log_level: self.opts.envoy_log_level.clone(),
            ..Default::default()
        };
        // Signed and trusting as `osm-controller bootstrap` would now: the roots the controller put in force.
        let store = certs::roots::RootStore {
            state_dir: self.state_dir.clone(),
            trust_domain: "cluster.local".to_owned(),
            startup: self.ca.clone(),
            create: false,
        };
        let roots = store.in_force().map_err(|e| TestbedError::Setup(e.to_string()))?;
        let bundle = sidecar::sidecar_for_pod(pod, roots.signer().as_ref(), roots.trust_pem(), &opts)?;
        if !sidecar::write_bundle(&dir, &bundle.files(), ENVOY_UID)? {
            return Err(TestbedError::Setup(format!(
                "{}: the bundle could not be given to uid {ENVOY_UID}",
                dir.display()
            )));
        }
        let rules = dir.join("iptables.rules");
        fs::write(&rules, &bundle.iptables_rules).map_err(io(&rules))?;

        let netns = self.hub.attach(&pod.name.chars().take(12).collect::<String>(), ip)?;
        let rules_in = fs::File::open(&rules).map_err(io(&rules))?;
        netns::run(netns.command("iptables-restore").arg("--noflush").stdin(rules_in))?;

        let log = dir.join("envoy.log");
        let envoy = netns
            .command("setpriv")
            .args([
                format!("--reuid={ENVOY_UID}"),
                format!("--regid={ENVOY_UID}"),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ])
            .arg(&self.bins.envoy)
            .args(&bundle.envoy_args)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .stdout(log_file(&log)?)
            .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&log).map_err(io(&log))?))
            .spawn()
            .map_err(|e| TestbedError::Setup(format!("starting Envoy for {key}: {e}")))?;
        self.pods.insert(
            key.clone(),
            PodRuntime { key: key.clone(), ip, uuid: pod.proxy_uuid.to_string(), dir, envoy: Some(envoy), netns },
        );
        Ok(key)
    }

    /// Runs a pod as Kubernetes would after the injector's admission: its init containers (as root, in
    /// the pod's namespace, with `POD_IP`), then its `envoy` container with the volumes it mounts from
    /// `secrets` (Secret name → data) bind-mounted at their paths and the container's user, command and
    /// arguments. Its IP is `status.podIP`. Does not wait for readiness.
    pub fn start_injected_pod(
        &mut self,
        pod: &k8s_openapi::api::core::v1::Pod,
        secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> Result<String, TestbedError> {
        let bad = |what: String| TestbedError::Setup(format!("injected pod: {what}"));
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let ip: Ipv4Addr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| bad(format!("{key} has no IPv4 status.podIP")))?;
        let spec = pod.spec.clone().ok_or_else(|| bad(format!("{key} has no spec")))?;
        let uuid = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(messages::PROXY_UUID_LABEL))
            .cloned()
            .ok_or_else(|| bad(format!("{key} has no {} label", messages::PROXY_UUID_LABEL)))?;
        let dir = self.work.path().join("pods").join(key.replace('/', "_"));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
        let netns = self.hub.attach(&name.chars().take(12).collect::<String>(), ip)?;
        for init in spec.init_containers.iter().flatten() {
            let cmd = init.command.clone().unwrap_or_default();
            let (program, args) =
                cmd.split_first().ok_or_else(|| bad(format!("init container {} has no command", init.name)))?;
            netns::run(netns.command(program).args(args).env("POD_IP", ip.to_string()))?;
        }
        let envoy = spec
            .containers
            .iter()
            .find(|c| c.name == "envoy")
            .ok_or_else(|| bad(format!("{key} has no envoy container")))?;
        // Volumes: each Secret's data as files (mode from the volume), bind-mounted where the container
        // mounts it, inside the pod's own mount namespace (`ip netns exec` makes one).
        let mut mounts = String::new();
        for m in envoy.volume_mounts.iter().flatten() {
            let vol = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .ok_or_else(|| bad(format!("volume {}", m.name)))?;
            let secret = vol.secret.as_ref().ok_or_else(|| bad(format!("volume {} is not a Secret", m.name)))?;
            let secret_name = secret.secret_name.clone().unwrap_or_default();
            let data =
                secrets.get(&secret_name).ok_or_else(|| bad(format!("Secret {ns}/{secret_name} does not exist")))?;
            let vdir = dir.join(&m.name);
            fs::create_dir_all(&vdir).map_err(io(&vdir))?;
            fs::set_permissions(&vdir, fs::Permissions::from_mode(0o755)).map_err(io(&vdir))?;
            let mode = secret.default_mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644);
            for (file, contents) in data {
                let path = vdir.join(file);
                fs::write(&path, contents).map_err(io(&path))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))?;
            }
            mounts.push_str(&format!("mkdir -p '{0}' && mount --bind '{1}' '{0}' && ", m.mount_path, vdir.display()));
        }
        let ctx = envoy.security_context.clone().unwrap_or_default();
        let uid = ctx.run_as_user.unwrap_or(0);
        let gid = ctx.run_as_group.unwrap_or(uid);
        let command = envoy.command.clone().unwrap_or_default();
        let program = match command.first().map(String::as_str) {
            // The image's Envoy is this machine's.
            Some("envoy") | None => self.bins.envoy.display().to_string(),
            Some(other) => other.to_owned(),
        };
        let log = dir.join("envoy.log");
        let child = netns
            .command("sh")
            .args(["-c", &format!("{mounts}exec \"$@\""), "sh", "setpriv"])
            .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".to_owned(), "--".to_owned()])
            .arg(program)
            .args(command.iter().skip(1))
            .args(envoy.args.iter().flatten())
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .stdout(log_file(&log)?)
            .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&log).map_err(io(&log))?))
            .spawn()
            .map_err(|e| TestbedError::Setup(format!("starting Envoy for {key}: {e}")))?;
        // The injected osm-healthcheck container, as its user, from this build.
        if let Some(helper) = spec.containers.iter().find(|c| c.name == "osm-healthcheck") {
            let uid = helper.security_context.as_ref().and_then(|c| c.run_as_user).unwrap_or(0);
            let log = dir.join("osm-healthcheck.log");
            let child = netns
                .command("setpriv")
                .args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_owned(),
                    "--".to_owned(),
                ])
                .arg(&self.bins.healthcheck)
                .args(helper.args.iter().flatten())
                .stdout(log_file(&log)?)
                .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&log).map_err(io(&log))?))
                .spawn()
                .map_err(|e| TestbedError::Setup(format!("starting osm-healthcheck for {key}: {e}")))?;
            self.apps.push(child);
        }
        self.pods.insert(key.clone(), PodRuntime { key: key.clone(), ip, uuid, dir, envoy: Some(child), netns });
        Ok(key)
    }

    /// Sends a pod's `httpGet` probe from the hub as the kubelet does (to the pod's IP, with the probe's
    /// headers); the answer's status and body.
    pub fn probe_from_hub(
        &self,
        pod: &str,
        probe: &k8s_openapi::api::core::v1::HTTPGetAction,
    ) -> Result<(u16, String), TestbedError> {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let p = self.pod(pod)?;
        let port = match &probe.port {
            IntOrString::Int(port) => *port,
            IntOrString::String(name) => {
                return Err(TestbedError::Setup(format!("probe port {name:?}: the kubelet needs a number here")));
            }
        };
        let url = format!("http://{}:{port}{}", p.ip, probe.path.as_deref().unwrap_or("/"));
        let mut cmd = self.hub.ns.command(&self.bins.app.display().to_string());
        cmd.args(["get", &url]);
        for h in probe.http_headers.iter().flatten() {
            cmd.arg("--header").arg(format!("{}: {}", h.name, h.value));
        }
        let out = cmd.output().map_err(|e| TestbedError::Command(format!("GET {url}"), e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status =
            text.strip_prefix("status=").and_then(|t| t.get(..3)).and_then(|c| c.parse().ok()).ok_or_else(|| {
                TestbedError::Command(format!("GET {url}"), format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            })?;
        Ok((status, text))
    }

    /// A host on the pod network outside the mesh: no sidecar, no interception. Apps run in it as in a pod
    /// (key `external/<name>`).
    pub fn add_external_host(&mut self, name: &str, ip: Ipv4Addr) -> Result<String, TestbedError> {
        let key = format!("external/{name}");
        let dir = self.work.path().join("pods").join(key.replace('/', "_"));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let netns = self.hub.attach(&name.chars().take(12).collect::<String>(), ip)?;
        self.pods
            .insert(key.clone(), PodRuntime { key: key.clone(), ip, uuid: String::new(), dir, envoy: None, netns });
        Ok(key)
    }

    pub fn pod(&self, key: &str) -> Result<&PodRuntime, TestbedError> {
        self.pods.get(key).ok_or_else(|| TestbedError::Setup(format!("pod {key} is not running")))
    }

    /// Runs `mesh-app <args>` inside a pod (as root, so its traffic is intercepted like an app's).
    pub fn app(&self, pod: &str, args: &[&str]) -> Result<Output, TestbedError> {
        let p = self.pod(pod)?;
        let shown = format!("mesh-app {} (in {pod})", args.join(" "));
        p.netns
            .command(&self.bins.app.display().to_string())
            .args(args)
            .output()
            .map_err(|e| TestbedError::Command(shown, e.to_string()))
    }

    /// Runs `osm <args>` inside a pod's network namespace, as an operator on the workload's machine would
    /// (the sidecar's admin interface listens on that namespace's loopback only).
    pub fn osm_in_pod(&self, pod: &str, args: &[&str]) -> Result<Output, TestbedError> {
        let p = self.pod(pod)?;
        // As on a machine of the embedded default: no cluster configured, whatever this one has.
        p.netns
            .command(&self.bins.osm.display().to_string())
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", &p.dir)
            .output()
            .map_err(|e| TestbedError::Command(format!("osm {args:?} (in {pod})"), e.to_string()))
    }

    /// Starts a long-running `mesh-app <args>` inside a pod; stopped when the mesh is dropped.
    pub fn spawn_app(&mut self, pod: &str, args: &[&str]) -> Result<(), TestbedError> {
        let p = self.pod(pod)?;
        let log = p.dir.join(format!("app-{}.log", self.apps.len()));
        let child = p
            .netns
            .command(&self.bins.app.display().to_string())
            .args(args)
            .stdout(log_file(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| TestbedError::Setup(format!("starting mesh-app in {pod}: {e}")))?;
        self.apps.push(child);
        Ok(())
    }

    /// Runs `program` (another real server, such as nginx) inside a pod or external host, in the
    /// background, its output in the pod's directory; stopped with the mesh.
    pub fn spawn_program(&mut self, pod: &str, program: &str, args: &[&str]) -> Result<(), TestbedError> {
        let p = self.pod(pod)?;
        let log = p.dir.join(format!("program-{}.log", self.apps.len()));
        let child = p
            .netns
            .command(program)
            .args(args)
            .stdout(log_file(&log)?)
            .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&log).map_err(io(&log))?))
            .spawn()
            .map_err(|e| TestbedError::Setup(format!("starting {program} in {pod}: {e}")))?;
        self.apps.push(child);
        Ok(())
    }

    /// GET on the pod's Envoy admin interface (127.0.0.1:15000 inside the pod).
    pub fn admin(&self, pod: &str, path: &str) -> Result<String, TestbedError> {
        let url = format!("http://127.0.0.1:{}{path}", ports::ADMIN);
        let out = self.app(pod, &["get", &url, "--body-only"])?;
        if !out.status.success() {
            return Err(TestbedError::Command(
                format!("admin GET {path} in {pod}"),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One counter or gauge from the pod's Envoy stats (`None` if Envoy has no such stat).
    pub fn stat(&self, pod: &str, name: &str) -> Result<Option<u64>, TestbedError> {
        let body = self.admin(pod, &format!("/stats?filter=^{}$", name.replace('|', "\\|")))?;
        Ok(body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok())))
    }

    /// Waits until the pod's Envoy finished its initial xDS fetch (admin `/ready` is LIVE).
    pub fn wait_envoy_ready(&self, pod: &str) -> Result<(), TestbedError> {
        let p = self.pod(pod)?;
        wait_for(Duration::from_secs(30), &format!("Envoy of {pod} to be ready"), || {
            self.admin(pod, "/ready").ok().filter(|b| b.trim() == "LIVE").map(|_| ())
        })
        .map_err(|e| {
            TestbedError::Setup(format!(
                "{e}\nEnvoy log:\n{}\ncontroller:\n{}",
                p.envoy_log_tail(),
                self.controller_output()
            ))
        })
    }

    /// Polls `f` until it returns `Some`, for at most `timeout`.
    pub fn eventually<T>(
        &self,
        timeout: Duration,
        what: &str,
        f: impl FnMut() -> Option<T>,
    ) -> Result<T, TestbedError> {
        wait_for(timeout, what, f)
    }

    /// Writes the bundle of a running pod again with `osm-controller bootstrap`, as an operator refreshes a
    /// sidecar's client certificate and roots: its Envoy takes them into use without a restart.
    pub fn bootstrap_again(&self, pod: &str) -> Result<String, TestbedError> {
        let dir = self.pod(pod)?.dir.display().to_string();
        let mut cmd = Command::new(&self.bins.controller);
        cmd.args(["--mesh-dir", &self.mesh_dir.display().to_string()])
            .args(["--state-dir", &self.state_dir.display().to_string()])
            .args(self.opts.ca_files.iter().flat_map(|(cert, key)| {
                ["--ca-cert".to_owned(), cert.display().to_string(), "--ca-key".to_owned(), key.display().to_string()]
            }))
            .args(["bootstrap", "--pod", pod, "--controller-host", &self.opts.gateway.to_string()])
            .args(["--out", &dir, "--config-dir", &dir]);
        if self.opts.ads_api == AdsApi::Delta {
            cmd.arg("--delta");
        }
        let out = cmd.output().map_err(|e| TestbedError::Command(format!("bootstrap {pod}"), e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(TestbedError::Command(format!("bootstrap {pod}"), text));
        }
        Ok(text)
    }

    /// Deletes a file of the live mesh directory (its objects are deleted from the mesh).
    pub fn remove_mesh_file(&self, name: &str) -> Result<(), TestbedError> {
        let path = self.mesh_dir.join(name);
        fs::remove_file(&path).map_err(io(&path))
    }

    /// Replaces (or creates) a file in the live mesh directory, atomically.
    pub fn write_mesh_file(&self, name: &str, contents: &str) -> Result<(), TestbedError> {
        let tmp = self.mesh_dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, contents).map_err(io(&tmp))?;
        let path = self.mesh_dir.join(name);
        fs::rename(&tmp, &path).map_err(io(&path))
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let children = self
            .apps
            .iter_mut()
            .chain(self.pods.values_mut().filter_map(|p| p.envoy.as_mut()))
            .chain(self.controller.as_mut());
        for c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pod namespaces go with `self.pods`, then the hub.
        self.pods.clear();
        if std::env::var_os("TESTBED_KEEP").is_some() {
            self.work.disable_cleanup(true);
            eprintln!("testbed files kept in {}", self.work.path().display());
        }
    }
}
