//! The `status` of policy objects on a cluster, as OSM writes it for IngressBackends: `committed` when the
//! object is in force, `error` with the reasons (and their codes) when a part of it cannot be.
//!
//! Data flow: the catalog actor derives each IngressBackend's status from the policy it computed and pushes
//! the set into a watch channel; this task writes what changed through the `status` subresource. Objects
//! read from the mesh directory are not on the cluster: their writes are skipped.

use std::collections::BTreeMap;

use messages::{Kind, MeshCatalog, ObjectKey};
use tokio::sync::watch;

/// What `status` says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// `committed` or `error`.
    pub current: &'static str,
    pub reason: String,
}

pub type Statuses = BTreeMap<ObjectKey, PolicyStatus>;

/// Each IngressBackend's status, from the policy in force.
pub fn of(catalog: &MeshCatalog) -> Statuses {
    catalog
        .objects::<messages::IngressBackend>()
        .map(|ib| {
            let key = ObjectKey::new(Kind::IngressBackend, ib.namespace.clone(), ib.name.clone());
            let errors: Vec<String> = catalog
                .policy_errors()
                .iter()
                .filter(|e| e.object == key)
                .map(|e| format!("[{}] {}", e.code, e.reason))
                .collect();
            let status = if errors.is_empty() {
                PolicyStatus { current: "committed", reason: "successfully committed by the system".to_owned() }
            } else {
                PolicyStatus { current: "error", reason: errors.join("; ") }
            };
            (key, status)
        })
        .collect()
}

/// IngressBackends that admit plain HTTP from any address (no Service or IPRange source): allowed, as in
/// OSM, and worth a warning.
pub fn insecure(catalog: &MeshCatalog) -> Vec<ObjectKey> {
    catalog
        .objects::<messages::IngressBackend>()
        .filter(|ib| {
            let addressed = ib
                .sources
                .iter()
                .any(|s| matches!(s, messages::IngressSource::Service(_) | messages::IngressSource::IpRange(_)));
            !addressed && ib.backends.iter().any(|b| !b.https)
        })
        .map(|ib| ObjectKey::new(Kind::IngressBackend, ib.namespace.clone(), ib.name.clone()))
        .collect()
}

/// Writes each status that changed, until `stop` resolves.
pub async fn run(mut statuses: watch::Receiver<Statuses>, client: kube::Client, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut written: Statuses = BTreeMap::new();
    loop {
        let now = statuses.borrow_and_update().clone();
        let mut failed = false;
        for (key, status) in &now {
            if written.get(key) == Some(status) {
                continue;
            }
            let api: kube::Api<k8s::crds::IngressBackend> = kube::Api::namespaced(client.clone(), &key.namespace);
            let patch = serde_json::json!({"status": {"currentStatus": status.current, "reason": status.reason}});
            match api
                .patch_status(&key.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(object = %key, status = status.current, "policy status written");
                }
                // From the mesh directory, or deleted since: nothing to write.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "cannot write the policy status; retrying");
                    failed = true;
                    continue;
                }
            }
            written.insert(key.clone(), status.clone());
        }
        written.retain(|k, _| now.contains_key(k));
        let retry = async {
            match failed {
                true => tokio::time::sleep(std::time::Duration::from_secs(5)).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = statuses.changed() => if changed.is_err() { return },
            () = retry => {}
            () = &mut stop => return,
        }
    }
}
