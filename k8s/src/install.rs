//! The cluster side of `osm install`, `osm mesh upgrade` and `osm uninstall mesh` (Helm does the rest):
//! the meshes already installed, the checks OSM makes before installing one (a valid mesh name, one mesh
//! per namespace, no two meshes of one name), the CRDs brought to this version by server-side apply (Helm
//! installs a chart's CRDs once and never upgrades them), and what an uninstall leaves unless asked.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

use crate::kinds::mesh_config::MeshConfig;
use crate::watch::MESH_CONFIG_NAME;

/// Labels of every controller Deployment the chart installs (`app.kubernetes.io/instance` is the mesh).
const CONTROLLER_SELECTOR: &str = "app=osm-controller,app.kubernetes.io/name=openservicemesh.io";
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
const VERSION_LABEL: &str = "app.kubernetes.io/version";
/// Who owns the CRDs' fields when `osm` applies them.
const FIELD_MANAGER: &str = "osm-cli";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "mesh name {0:?}: it must be a DNS label (at most 63 lower-case letters, digits and '-', starting and \
         ending with a letter or digit)"
    )]
    MeshName(String),
    #[error(
        "namespace {namespace} already has mesh {mesh}: one mesh per namespace (choose another --osm-namespace, or \
         `osm uninstall mesh --mesh-name {mesh} --osm-namespace {namespace}` first)"
    )]
    NamespaceTaken { namespace: String, mesh: String },
    #[error(
        "a mesh named {mesh} is already installed in namespace {namespace}: mesh names are unique in a cluster \
         (choose another --mesh-name, or `osm mesh upgrade` to change that one)"
    )]
    NameTaken { mesh: String, namespace: String },
    #[error("no mesh named {mesh} is installed in namespace {namespace}{}", others_hint(.installed))]
    NotInstalled { mesh: String, namespace: String, installed: Vec<InstalledMesh> },
    #[error("the API server: {0}")]
    Api(#[from] kube::Error),
}

fn others_hint(installed: &[InstalledMesh]) -> String {
    if installed.is_empty() {
        return " (the cluster has none)".to_owned();
    }
    let list: Vec<String> = installed.iter().map(|m| format!("{} in {}", m.name, m.namespace)).collect();
    format!(" (installed: {})", list.join(", "))
}

/// A mesh's control plane found on the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstalledMesh {
    pub name: String,
    pub namespace: String,
    pub version: String,
}

/// The mesh name rule: it becomes a label value and part of object names (`osm-webhook-<mesh>`).
pub fn check_mesh_name(name: &str) -> Result<(), InstallError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(InstallError::MeshName(name.to_owned())) }
}

/// Every mesh control plane installed on the cluster, by namespace.
pub async fn installed_meshes(client: kube::Client) -> Result<Vec<InstalledMesh>, InstallError> {
    let api: Api<Deployment> = Api::all(client);
    let mut out: Vec<InstalledMesh> = api
        .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
        .await?
        .items
        .into_iter()
        .map(|d| {
            let label = |k: &str| d.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default();
            InstalledMesh {
                name: label(INSTANCE_LABEL),
                version: label(VERSION_LABEL),
                namespace: d.metadata.namespace.clone().unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

/// OSM's checks before installing mesh `mesh` into `namespace`.
pub fn check_new(installed: &[InstalledMesh], mesh: &str, namespace: &str) -> Result<(), InstallError> {
    check_mesh_name(mesh)?;
    if let Some(m) = installed.iter().find(|m| m.namespace == namespace) {
        return Err(InstallError::NamespaceTaken { namespace: namespace.to_owned(), mesh: m.name.clone() });
    }
    if let Some(m) = installed.iter().find(|m| m.name == mesh) {
        return Err(InstallError::NameTaken { mesh: mesh.to_owned(), namespace: m.namespace.clone() });
    }
    Ok(())
}

/// The installed mesh `mesh` in `namespace`, for an upgrade or an uninstall.
pub fn find<'a>(
    installed: &'a [InstalledMesh],
    mesh: &str,
    namespace: &str,
) -> Result<&'a InstalledMesh, InstallError> {
    installed.iter().find(|m| m.name == mesh && m.namespace == namespace).ok_or_else(|| InstallError::NotInstalled {
        mesh: mesh.to_owned(),
        namespace: namespace.to_owned(),
        installed: installed.to_vec(),
    })
}

/// Brings the mesh's CRDs to this version (new kinds, new fields, schemas): server-side apply, taking the
/// fields over from whoever set them (Helm's first install). Returns their names.
pub async fn apply_crds(client: kube::Client) -> Result<Vec<String>, InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in crate::crds::definitions() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    Ok(names)
}

/// What an uninstall deletes beyond the Helm release when asked to (`--delete-cluster-wide-resources`):
/// the MeshConfig and the mesh root (`osm-ca-bundle`) the controller created in its namespace, and the
/// CRDs when no other mesh remains to use them. Returns what was deleted, as `kind/name`.
pub async fn delete_mesh_resources(
    client: kube::Client,
    namespace: &str,
    other_meshes_remain: bool,
) -> Result<Vec<String>, InstallError> {
    let mut deleted = Vec::new();
    let gone = |r: Result<_, kube::Error>| match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    };
    let configs: Api<MeshConfig> = Api::namespaced(client.clone(), namespace);
    if gone(configs.delete(MESH_CONFIG_NAME, &DeleteParams::default()).await.map(|_| ()))? {
        deleted.push(format!("meshconfig/{MESH_CONFIG_NAME}"));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let bundle = crate::ca_secret::CA_SECRET;
    if gone(secrets.delete(bundle, &DeleteParams::default()).await.map(|_| ()))? {
        deleted.push(format!("secret/{bundle}"));
    }
    if !other_meshes_remain {
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        for crd in crate::crds::definitions() {
            let name = crd.metadata.name.unwrap_or_default();
            if gone(crds.delete(&name, &DeleteParams::default()).await.map(|_| ()))? {
                deleted.push(format!("customresourcedefinition/{name}"));
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(name: &str, namespace: &str) -> InstalledMesh {
        InstalledMesh { name: name.to_owned(), namespace: namespace.to_owned(), version: "0.1.0".to_owned() }
    }

    #[test]
    fn one_mesh_per_namespace_and_one_namespace_per_mesh_name() {
        let installed = [mesh("osm", "osm-system")];
        assert!(check_new(&installed, "other", "other-system").is_ok());
        let e = check_new(&installed, "other", "osm-system").unwrap_err().to_string();
        assert!(e.contains("namespace osm-system already has mesh osm"), "{e}");
        let e = check_new(&installed, "osm", "elsewhere").unwrap_err().to_string();
        assert!(e.contains("a mesh named osm is already installed in namespace osm-system"), "{e}");
        for bad in ["", "Osm", "osm_1", "-osm", "osm-", &"a".repeat(64)] {
            assert!(matches!(check_new(&[], bad, "ns"), Err(InstallError::MeshName(_))), "{bad:?}");
        }
        assert!(check_mesh_name(&"a".repeat(63)).is_ok());
        let e = find(&installed, "osm", "elsewhere").unwrap_err().to_string();
        assert!(e.contains("installed: osm in osm-system"), "{e}");
    }
}
