//! Namespaces in and out of the mesh (`osm namespace add|remove|list|ignore`, `osm metrics
//! enable|disable`), as OSM marks them: the label `openservicemesh.io/monitored-by=<mesh>` puts a namespace
//! in the mesh (the controller watches only those), the annotation `openservicemesh.io/sidecar-injection:
//! enabled` has its new pods injected, the label `openservicemesh.io/ignore=true` keeps a namespace out
//! whatever else it carries, and the annotation `openservicemesh.io/metrics: enabled` has its pods scraped.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::inject::{INJECTION_ANNOTATION, METRICS_ANNOTATION};
use crate::watch::{IGNORE_LABEL, MONITORED_BY_LABEL};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("namespace {0} does not exist")]
    NotFound(String),
    #[error("namespace {namespace} is already in mesh {other}; remove it from that mesh first")]
    OtherMesh { namespace: String, other: String },
    #[error("namespace {namespace} is not in mesh {mesh}")]
    NotInMesh { namespace: String, mesh: String },
    #[error(
        "namespace {0} is ignored by the mesh (label openservicemesh.io/ignore=true); remove the label first: \
         kubectl label namespace {0} openservicemesh.io/ignore-"
    )]
    Ignored(String),
    #[error(
        "namespace {0} is in no mesh (no label openservicemesh.io/monitored-by); add it first: osm namespace add {0}"
    )]
    NotMonitored(String),
    #[error("the API server: {0}")]
    Api(#[from] kube::Error),
}

/// A namespace of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MeshNamespace {
    pub name: String,
    pub mesh: String,
    pub sidecar_injection: bool,
}

async fn get(api: &Api<Namespace>, name: &str) -> Result<Namespace, NamespaceError> {
    api.get_opt(name).await?.ok_or_else(|| NamespaceError::NotFound(name.to_owned()))
}

fn monitored_by(ns: &Namespace) -> Option<&str> {
    ns.metadata.labels.as_ref()?.get(MONITORED_BY_LABEL).map(String::as_str)
}

fn ignored(ns: &Namespace) -> bool {
    ns.metadata.labels.as_ref().and_then(|l| l.get(IGNORE_LABEL)).is_some_and(|v| v == "true")
}

/// Puts `name` in mesh `mesh`, with sidecar injection unless `inject` is false. Idempotent; a namespace of
/// another mesh is refused.
pub async fn add(client: kube::Client, name: &str, mesh: &str, inject: bool) -> Result<(), NamespaceError> {
    let api: Api<Namespace> = Api::all(client);
    let ns = get(&api, name).await?;
    if let Some(other) = monitored_by(&ns).filter(|m| *m != mesh) {
        return Err(NamespaceError::OtherMesh { namespace: name.to_owned(), other: other.to_owned() });
    }
    if ignored(&ns) {
        return Err(NamespaceError::Ignored(name.to_owned()));
    }
    let injection = if inject { serde_json::json!("enabled") } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {
        "labels": {MONITORED_BY_LABEL: mesh},
        "annotations": {INJECTION_ANNOTATION: injection},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Takes `name` out of mesh `mesh` (its label and injection annotation go; running pods keep their
/// sidecars until restarted).
pub async fn remove(client: kube::Client, name: &str, mesh: &str) -> Result<(), NamespaceError> {
    let api: Api<Namespace> = Api::all(client);
    let ns = get(&api, name).await?;
    if monitored_by(&ns) != Some(mesh) {
        return Err(NamespaceError::NotInMesh { namespace: name.to_owned(), mesh: mesh.to_owned() });
    }
    let patch = serde_json::json!({"metadata": {
        "labels": {MONITORED_BY_LABEL: null},
        "annotations": {INJECTION_ANNOTATION: null},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Has every mesh leave `name` alone (`osm namespace ignore`): neither watched nor injected, whatever its
/// other labels say. Idempotent.
pub async fn ignore(client: kube::Client, name: &str) -> Result<(), NamespaceError> {
    let api: Api<Namespace> = Api::all(client);
    get(&api, name).await?;
    let patch = serde_json::json!({"metadata": {"labels": {IGNORE_LABEL: "true"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Turns Prometheus scraping of `name`'s sidecars on or off (`osm metrics enable|disable`): the
/// namespace's annotation for pods injected from now on, and the scrape annotations of its running
/// injected pods (the controller opens or closes their metrics listener live). The namespace must be in a
/// mesh. Returns how many running pods were changed.
pub async fn set_metrics(client: kube::Client, name: &str, enable: bool) -> Result<usize, NamespaceError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = get(&api, name).await?;
    if monitored_by(&ns).is_none() {
        return Err(NamespaceError::NotMonitored(name.to_owned()));
    }
    let value = |v: &str| if enable { serde_json::json!(v) } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {"annotations": {METRICS_ANNOTATION: value("enabled")}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let pods: Api<Pod> = Api::namespaced(client, name);
    let scrape: serde_json::Map<String, serde_json::Value> =
        crate::inject::prometheus_annotations().into_iter().map(|(k, v)| (k.to_owned(), value(&v))).collect();
    let patch = serde_json::json!({"metadata": {"annotations": scrape}});
    let mut changed = 0;
    for pod in pods.list(&ListParams::default().labels(messages::PROXY_UUID_LABEL)).await?.items {
        let Some(pod_name) = pod.metadata.name else { continue };
        match pods.patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => changed += 1,
            // Gone since the list: nothing to change.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(changed)
}

/// The namespaces of mesh `mesh` (every mesh with `None`), by name.
pub async fn list(client: kube::Client, mesh: Option<&str>) -> Result<Vec<MeshNamespace>, NamespaceError> {
    let api: Api<Namespace> = Api::all(client);
    let selector = match mesh {
        Some(m) => format!("{MONITORED_BY_LABEL}={m}"),
        None => MONITORED_BY_LABEL.to_owned(),
    };
    let mut out: Vec<MeshNamespace> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(|ns| MeshNamespace {
            mesh: monitored_by(&ns).unwrap_or_default().to_owned(),
            // Read as injection reads it (a value it does not know counts as off here).
            sidecar_injection: crate::inject::annotation(&ns.metadata, INJECTION_ANNOTATION)
                .is_some_and(|v| crate::inject::switch(INJECTION_ANNOTATION, v, String::new()).unwrap_or(false)),
            name: ns.metadata.name.unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
