//! How the controller and the `osm` CLI reach the cluster's API server.

/// The cluster's client configuration: the given kubeconfig, else in-cluster, $KUBECONFIG or ~/.kube/config.
pub async fn kube_config(path: Option<&std::path::Path>) -> Result<kube::Config, String> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    match path {
        Some(p) => {
            let file = Kubeconfig::read_from(p).map_err(|e| format!("reading kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", p.display()))
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!(
                "no Kubernetes configuration: not in a cluster, and no $KUBECONFIG or ~/.kube/config (or give --kubeconfig): {e}"
            )
        }),
    }
}
