//! `osm install`, `osm mesh upgrade` and `osm uninstall mesh`: the chart this `osm` was built with
//! (embedded), installed through the `helm` binary, after the checks OSM makes; the CRDs brought to this
//! version by server-side apply first (Helm installs a chart's CRDs once and never upgrades them).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use super::*;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/chart.rs"));
}

/// How `osm` runs Helm, shared by the three commands.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct HelmArgs {
    /// The mesh's name (the Helm release's, and the controller's --mesh-name).
    #[arg(long, default_value = "osm")]
    pub mesh_name: String,
    /// The `helm` program (Helm 3.14 or later).
    #[arg(long, env = "OSM_HELM", default_value = "helm")]
    pub helm: PathBuf,
    /// How long Helm may take (a Go duration: 90s, 5m).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// Chart values, as Helm's `--set key=value` (repeatable).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ValuesArgs {
    /// A chart value, e.g. --set meshConfig.enablePermissiveTrafficPolicyMode=false (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Return once Helm has applied the chart, without waiting for the controller to be ready.
    #[arg(long)]
    pub no_wait: bool,
}

/// The embedded chart, written out for Helm; removed when dropped.
struct ChartDir(tempfile::TempDir);

impl ChartDir {
    fn write() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("osm-chart-").tempdir().context("a temporary directory")?;
        for (rel, contents) in embedded::CHART {
            let path = dir.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// The chart's version (its `Chart.yaml`).
pub(crate) fn chart_version() -> String {
    embedded::CHART
        .iter()
        .find(|(rel, _)| *rel == "Chart.yaml")
        .and_then(|(_, c)| {
            String::from_utf8_lossy(c).lines().find_map(|l| l.strip_prefix("version:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// Runs Helm with the user's kubeconfig; its output goes to the user as it comes.
fn helm(args: &HelmArgs, kubeconfig: Option<&Path>, helm_args: &[String]) -> anyhow::Result<()> {
    let mut cmd = Process::new(&args.helm);
    cmd.args(helm_args).args(["--timeout", &args.timeout]);
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    let shown = format!("{} {}", args.helm.display(), helm_args.first().map(String::as_str).unwrap_or_default());
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "running {}: {e}; osm installs the mesh through Helm 3.14 or later: install it \
             (https://helm.sh/docs/intro/install/) or name it with --helm",
            args.helm.display()
        )
    })?;
    if !status.success() {
        bail!("{shown} failed ({status}); Helm's reason is above");
    }
    Ok(())
}

/// Helm is there and runs, before anything is changed on the cluster.
fn check_helm(args: &HelmArgs) -> anyhow::Result<()> {
    let out = Process::new(&args.helm).args(["version", "--short"]).output().map_err(|e| {
        anyhow::anyhow!(
            "running {}: {e}; osm installs the mesh through Helm 3.14 or later: install it \
             (https://helm.sh/docs/intro/install/) or name it with --helm",
            args.helm.display()
        )
    })?;
    if !out.status.success() {
        bail!("{} version: {}", args.helm.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = k8s::client::kube_config(kubeconfig).await.map_err(anyhow::Error::msg)?;
    kube::Client::try_from(config).context("connecting to the cluster")
}

async fn apply_crds(client: kube::Client) -> anyhow::Result<()> {
    let crds = k8s::install::apply_crds(client).await.context("applying the mesh's CRDs")?;
    println!("CRDs at this version: {}", crds.join(", "));
    Ok(())
}

fn values(args: &ValuesArgs) -> Vec<String> {
    let mut out = Vec::new();
    for v in &args.set {
        out.extend(["--set".to_owned(), v.clone()]);
    }
    if !args.no_wait {
        out.push("--wait".to_owned());
    }
    out
}

pub(crate) async fn install(
    kubeconfig: Option<&Path>,
    namespace: &str,
    args: &HelmArgs,
    vals: &ValuesArgs,
) -> anyhow::Result<u8> {
    let mesh = &args.mesh_name;
    k8s::install::check_mesh_name(mesh)?;
    check_helm(args)?;
    let client = client(kubeconfig).await?;
    let installed = k8s::install::installed_meshes(client.clone()).await.context("looking for installed meshes")?;
    k8s::install::check_new(&installed, mesh, namespace)?;
    apply_crds(client).await?;
    let chart = ChartDir::write()?;
    let mut helm_args: Vec<String> = ["install", mesh, &chart.path().display().to_string()]
        .into_iter()
        .chain(["--namespace", namespace, "--create-namespace", "--skip-crds"])
        .map(str::to_owned)
        .collect();
    helm_args.extend(["--set".to_owned(), format!("meshName={mesh}")]);
    helm_args.extend(values(vals));
    helm(args, kubeconfig, &helm_args)?;
    println!("mesh {mesh} (chart {}) installed in namespace {namespace}", chart_version());
    println!("next: osm namespace add <namespace> --mesh-name {mesh}, then restart its pods to inject their sidecars");
    Ok(0)
}

pub(crate) async fn upgrade(
    kubeconfig: Option<&Path>,
    namespace: &str,
    args: &HelmArgs,
    vals: &ValuesArgs,
) -> anyhow::Result<u8> {
    let mesh = &args.mesh_name;
    check_helm(args)?;
    let client = client(kubeconfig).await?;
    let installed = k8s::install::installed_meshes(client.clone()).await.context("looking for installed meshes")?;
    let from = k8s::install::find(&installed, mesh, namespace)?.version.clone();
    apply_crds(client).await?;
    let chart = ChartDir::write()?;
    // This chart's defaults for what the user never set, the user's own values kept (`--reuse-values`
    // alone would keep the old chart's defaults and miss values this version adds).
    let mut helm_args: Vec<String> = ["upgrade", mesh, &chart.path().display().to_string()]
        .into_iter()
        .chain(["--namespace", namespace, "--reset-then-reuse-values"])
        .map(str::to_owned)
        .collect();
    helm_args.extend(values(vals));
    helm(args, kubeconfig, &helm_args)?;
    let from = if from.is_empty() { String::new() } else { format!(" from {from}") };
    println!("mesh {mesh} in namespace {namespace} upgraded{from} to chart {}", chart_version());
    Ok(0)
}

pub(crate) async fn uninstall(
    kubeconfig: Option<&Path>,
    namespace: &str,
    args: &HelmArgs,
    opts: &UninstallOptions,
) -> anyhow::Result<u8> {
    let mesh = &args.mesh_name;
    check_helm(args)?;
    let client = client(kubeconfig).await?;
    let installed = k8s::install::installed_meshes(client.clone()).await.context("looking for installed meshes")?;
    k8s::install::find(&installed, mesh, namespace)?;
    if !opts.force {
        if !std::io::stdin().is_terminal() {
            bail!(
                "uninstalling mesh {mesh} from namespace {namespace} needs a yes: run it at a terminal, or add --force"
            );
        }
        print!("Uninstall mesh {mesh} from namespace {namespace}? [y/N] ");
        std::io::Write::flush(&mut std::io::stdout())?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing uninstalled");
            return Ok(1);
        }
    }
    let helm_args: Vec<String> =
        ["uninstall", mesh, "--namespace", namespace, "--wait"].into_iter().map(str::to_owned).collect();
    helm(args, kubeconfig, &helm_args)?;
    println!("mesh {mesh} uninstalled from namespace {namespace}");
    let others = installed.iter().any(|m| !(m.name == *mesh && m.namespace == namespace));
    if opts.delete_cluster_wide_resources {
        let deleted = k8s::install::delete_mesh_resources(client.clone(), namespace, others).await?;
        for d in &deleted {
            println!("deleted {d}");
        }
        if others {
            println!("the CRDs stay: other meshes use them");
        }
    } else {
        println!(
            "kept: the MeshConfig and the mesh root (Secret {}) in {namespace}, which a reinstall takes up, and the \
             CRDs with the policies of your namespaces; --delete-cluster-wide-resources deletes them",
            k8s::ca_secret::CA_SECRET
        );
    }
    if opts.delete_namespace {
        if matches!(namespace, "default" | "kube-system" | "kube-public" | "kube-node-lease") {
            bail!("namespace {namespace} is the cluster's own: not deleted");
        }
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        match api.delete(namespace, &Default::default()).await {
            Ok(_) => println!("namespace {namespace} deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => println!("namespace {namespace} was already gone"),
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {namespace}")),
        }
    }
    println!("pods already injected keep their sidecars until restarted");
    Ok(0)
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct UninstallOptions {
    /// Also delete the control plane's namespace.
    #[arg(long)]
    pub delete_namespace: bool,
    /// Also delete the MeshConfig, the mesh root Secret, and (when no other mesh remains) the mesh's CRDs
    /// with every policy object of those kinds.
    #[arg(long)]
    pub delete_cluster_wide_resources: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

pub(crate) async fn metrics(kubeconfig: Option<&Path>, namespaces: &[String], enable: bool) -> anyhow::Result<u8> {
    let client = client(kubeconfig).await?;
    for ns in namespaces {
        let pods = k8s::namespaces::set_metrics(client.clone(), ns, enable).await?;
        let state = if enable { "enabled" } else { "disabled" };
        println!("metrics {state} in namespace {ns} ({pods} running pods with a sidecar changed)");
    }
    Ok(0)
}
