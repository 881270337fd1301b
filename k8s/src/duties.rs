//! Duties of the controller replica that holds the Lease `osm-controller-leader` (coordination.k8s.io,
//! through `kube-lease-manager`), each a watch of its own: keeping the mesh root in the webhook
//! configurations' CA bundles, creating the MeshConfig from the chart's preset when there is none (and
//! again, with its last settings, when it is deleted), and making each injected pod the owner of its
//! bootstrap Secret (so Kubernetes deletes the Secret with the pod). Every replica serves sidecars and
//! webhooks; only these writes are done once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures::TryStreamExt as _;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::{Value, json};

use crate::crds;
use crate::watch::{MESH_CONFIG_NAME, WatchConfig};

/// The Lease one replica holds.
pub const LEASE_NAME: &str = "osm-controller-leader";

pub fn mutating_webhook_name(mesh: &str) -> String {
    format!("osm-webhook-{mesh}")
}

pub fn validating_webhook_name(mesh: &str) -> String {
    format!("osm-validator-mesh-{mesh}")
}

#[derive(Debug, thiserror::Error)]
pub enum DutyError {
    #[error("{what}: {source}")]
    Api { what: String, source: kube::Error },
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("{what} is not a MeshConfig spec: {reason}")]
    Preset { what: String, reason: String },
}

/// Puts `ca_pem` into every webhook of this mesh's two webhook configurations (a configuration that does
/// not exist is skipped: the chart may not install the validator). Returns how many webhooks changed.
pub async fn patch_ca_bundles(client: &kube::Client, mesh: &str, ca_pem: &str) -> Result<usize, DutyError> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut changed = 0;
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let mw = mutating_webhook_name(mesh);
    let vw = validating_webhook_name(mesh);
    let err = |what: &str| {
        let what = what.to_owned();
        move |source| DutyError::Api { what, source }
    };
    let m = mutating.get_opt(&mw).await.map_err(err(&mw))?.map(|c| serde_json::to_value(c).unwrap_or_default());
    let v = validating.get_opt(&vw).await.map_err(err(&vw))?.map(|c| serde_json::to_value(c).unwrap_or_default());
    for (name, config, is_mutating) in [(&mw, m, true), (&vw, v, false)] {
        let Some(config) = config else {
            tracing::debug!(configuration = %name, "no such webhook configuration; nothing to patch");
            continue;
        };
        let ops: Vec<Value> = config["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, w)| w["clientConfig"]["caBundle"].as_str() != Some(bundle.as_str()))
            .map(|(i, _)| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
            .collect();
        if ops.is_empty() {
            continue;
        }
        changed += ops.len();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap_or(json_patch::Patch(vec![]));
        let params = PatchParams::default();
        if is_mutating {
            mutating.patch(name, &params, &Patch::<()>::Json(patch)).await.map_err(err(name))?;
        } else {
            validating.patch(name, &params, &Patch::<()>::Json(patch)).await.map_err(err(name))?;
        }
        tracing::info!(configuration = %name, "webhook CA bundle set to the mesh root");
    }
    Ok(changed)
}

/// OSM's default MeshConfig spec (its chart's preset), created when the cluster has none.
pub fn default_mesh_config_spec() -> crds::MeshConfigSpec {
    crds::MeshConfigSpec {
        sidecar: Some(crds::SidecarSpec {
            enable_privileged_init_container: Some(false),
            log_level: Some("error".to_owned()),
            max_data_plane_connections: Some(0),
            config_resync_interval: Some("0s".to_owned()),
            local_proxy_mode: Some("Localhost".to_owned()),
            tls_min_protocol_version: Some("TLSv1_2".to_owned()),
            tls_max_protocol_version: Some("TLSv1_3".to_owned()),
            ..Default::default()
        }),
        traffic: Some(crds::TrafficSpec {
            enable_egress: Some(true),
            enable_permissive_traffic_policy_mode: Some(true),
            ..Default::default()
        }),
        observability: Some(crds::ObservabilitySpec {
            osm_log_level: Some("info".to_owned()),
            enable_debug_server: Some(false),
            ..Default::default()
        }),
        certificate: Some(crds::CertificateSpec {
            service_cert_validity_duration: Some("24h".to_owned()),
            cert_key_bit_size: Some(2048),
            ..Default::default()
        }),
        feature_flags: None,
    }
}

/// The ConfigMap the chart writes the MeshConfig's initial settings to (OSM's name and key).
pub const PRESET_MESH_CONFIG: &str = "preset-mesh-config";
const PRESET_KEY: &str = "preset-mesh-config.json";

/// The spec to create the MeshConfig with: the chart's preset (ConfigMap [`PRESET_MESH_CONFIG`]), else
/// OSM's defaults when there is no preset. A preset that cannot be read now, or is not a MeshConfig spec,
/// is an error (retried): falling back to the defaults could open a mesh the preset keeps closed.
pub async fn preset_mesh_config(client: &kube::Client, namespace: &str) -> Result<crds::MeshConfigSpec, DutyError> {
    let what = format!("ConfigMap {namespace}/{PRESET_MESH_CONFIG}");
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let found =
        api.get_opt(PRESET_MESH_CONFIG).await.map_err(|source| DutyError::Api { what: what.clone(), source })?;
    let Some(text) = found.and_then(|cm| cm.data).and_then(|mut d| d.remove(PRESET_KEY)) else {
        return Ok(default_mesh_config_spec());
    };
    serde_json::from_str(&text)
        .map_err(|e| DutyError::Preset { what: format!("{what} key {PRESET_KEY}"), reason: e.to_string() })
}

/// Runs `attempt` until it succeeds, backing off from 200 ms to 30 s; failures are logged at debug level
/// while they are expected to be brief (a webhook not reachable yet, a conflict), as warnings once they
/// last.
async fn retry<T, F: Future<Output = Result<T, DutyError>>>(what: &str, mut attempt: impl FnMut() -> F) -> T {
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(e) if delay >= Duration::from_secs(5) => tracing::warn!(error = %e, "cannot {what} yet; retrying"),
            Err(e) => tracing::debug!(error = %e, "cannot {what} yet; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Keeps this mesh's webhook configurations' CA bundles on the mesh root: set once this replica leads,
/// and again whenever the configurations change (a `helm upgrade` that rewrites them, say). Runs until
/// the watches end.
pub async fn keep_ca_bundles(client: kube::Client, mesh: String, ca_pem: String) {
    use futures::StreamExt as _;
    let by_name = |name: String| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mutating = watcher::watcher(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        by_name(mutating_webhook_name(&mesh)),
    )
    .backoff(crate::watch::watch_backoff())
    .map(|e| e.map(|_| ()));
    let validating = watcher::watcher(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        by_name(validating_webhook_name(&mesh)),
    )
    .backoff(crate::watch::watch_backoff())
    .map(|e| e.map(|_| ()));
    let mut events = std::pin::pin!(futures::stream::select(mutating, validating));
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::debug!(error = %e, "webhook configuration watch failed; retrying");
            continue;
        }
        retry("set the webhooks' CA bundles", || patch_ca_bundles(&client, &mesh, &ca_pem)).await;
    }
}

/// Creates the MeshConfig with `spec` when there is none; true when it did.
pub async fn ensure_mesh_config(
    client: &kube::Client,
    namespace: &str,
    spec: &crds::MeshConfigSpec,
) -> Result<bool, DutyError> {
    let api = Api::<crds::MeshConfig>::namespaced(client.clone(), namespace);
    let what = format!("MeshConfig {namespace}/{MESH_CONFIG_NAME}");
    if api.get_opt(MESH_CONFIG_NAME).await.map_err(|source| DutyError::Api { what: what.clone(), source })?.is_some() {
        return Ok(false);
    }
    let mut mc = crds::MeshConfig::new(MESH_CONFIG_NAME, spec.clone());
    mc.metadata.namespace = Some(namespace.to_owned());
    match api.create(&PostParams::default(), &mc).await {
        Ok(_) => {
            tracing::info!(meshconfig = %what, "created the MeshConfig");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(source) => Err(DutyError::Api { what, source }),
    }
}

/// Keeps the MeshConfig in existence while this replica leads: a deleted MeshConfig is created again
/// with the last spec seen (OSM's reconciler does the same), so the mesh's settings survive a stray
/// `kubectl delete` and a restarting controller never falls back to its command line. The controller keeps
/// the last settings in force meanwhile (see `MeshCatalog::mesh_config`). Runs until the watch ends.
pub async fn keep_mesh_config(client: kube::Client, namespace: String) {
    let api = Api::<crds::MeshConfig>::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={MESH_CONFIG_NAME}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, config).backoff(crate::watch::watch_backoff()));
    let mut last: Option<crds::MeshConfigSpec> = None;
    let mut seen_in_listing = false;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "MeshConfig watch failed; retrying");
                continue;
            }
        };
        let gone = match event {
            watcher::Event::Apply(mc) | watcher::Event::InitApply(mc) => {
                seen_in_listing = true;
                last = Some(mc.spec);
                false
            }
            watcher::Event::Init => {
                seen_in_listing = false;
                false
            }
            watcher::Event::InitDone => !seen_in_listing,
            watcher::Event::Delete(mc) => {
                last = Some(mc.spec);
                true
            }
        };
        if !gone {
            continue;
        }
        // Expected to fail until this replica's validating webhook is reachable (no endpoints before it is
        // ready, no CA bundle before the other duty set it).
        let created = retry("create the MeshConfig", || async {
            let spec = match &last {
                Some(spec) => spec.clone(),
                None => preset_mesh_config(&client, &namespace).await?,
            };
            ensure_mesh_config(&client, &namespace, &spec).await
        })
        .await;
        if created && last.is_some() {
            tracing::warn!(
                meshconfig = %format!("{namespace}/{MESH_CONFIG_NAME}"),
                error_code = messages::policy::codes::MESH_CONFIG_DELETED,
                "the MeshConfig was deleted; created it again with its last settings"
            );
        }
    }
}

/// Makes every injected pod (label `osm-proxy-uuid`) the owner of its bootstrap Secret, so the Secret goes
/// with the pod. The Secret is written at admission, before the pod has a UID; the pod's first appearance
/// supplies it. Runs until the watch ends.
pub async fn own_bootstrap_secrets(client: kube::Client) {
    let pods = Api::<Pod>::all(client.clone());
    let config = watcher::Config::default().labels(messages::PROXY_UUID_LABEL);
    let mut stream =
        std::pin::pin!(watcher::watcher(pods, config).backoff(crate::watch::watch_backoff()).applied_objects());
    let mut done = std::collections::HashSet::new();
    loop {
        let pod = match stream.try_next().await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "pod watch for bootstrap Secret owners failed; retrying");
                continue;
            }
        };
        let (Some(uid), Some(ns), Some(name)) =
            (pod.metadata.uid.clone(), pod.metadata.namespace.clone(), pod.metadata.name.clone())
        else {
            continue;
        };
        let Some(uuid) = pod.metadata.labels.as_ref().and_then(|l| l.get(messages::PROXY_UUID_LABEL)).cloned() else {
            continue;
        };
        if !done.insert(uid.clone()) {
            continue;
        }
        let secret = format!("envoy-bootstrap-config-{uuid}");
        let api = Api::<Secret>::namespaced(client.clone(), &ns);
        let owned = match api.get_opt(&secret).await {
            Ok(Some(s)) => s.metadata.owner_references.iter().flatten().any(|o| o.uid == uid),
            // Not injected by this mesh (or already gone): nothing to own.
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, secret, namespace = ns, "cannot read a bootstrap Secret");
                done.remove(&uid);
                continue;
            }
        };
        if owned {
            continue;
        }
        let patch = json!({"metadata": {"ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "blockOwnerDeletion": false
        }]}});
        match api.patch(&secret, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => tracing::debug!(secret, namespace = ns, pod = name, "bootstrap Secret owned by its pod"),
            Err(e) => {
                tracing::warn!(error = %e, secret, namespace = ns, "cannot give a bootstrap Secret its pod as owner");
                done.remove(&uid);
            }
        }
    }
}

/// How long a Lease holds without renewal, and how long before that its holder renews it. A replica
/// that leaves releases the Lease, but the others notice only when it would have expired: `duration`
/// bounds the failover time.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub duration_s: u64,
    pub grace_s: u64,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self { duration_s: 15, grace_s: 5 }
    }
}

/// Takes part in the leader election until `stop` resolves; while this replica leads, `leader` is true
/// and the duties are done (again after each gain of the Lease, and retried until they succeed).
pub async fn run(
    client: kube::Client,
    config: WatchConfig,
    identity: String,
    timing: LeaseTiming,
    ca_pem: String,
    leader: Arc<AtomicBool>,
    stop: impl Future<Output = ()>,
) -> Result<(), DutyError> {
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(config.osm_namespace.clone())
        .with_identity(identity.clone())
        .with_duration(timing.duration_s.max(2))
        .with_grace(timing.grace_s.clamp(1, timing.duration_s.max(2) - 1))
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    let mut stop = std::pin::pin!(stop);
    let mut owning: Option<[tokio::task::JoinHandle<()>; 3]> = None;
    loop {
        let is_leader = *leading.borrow_and_update();
        leader.store(is_leader, Ordering::Relaxed);
        match (is_leader, &owning) {
            (true, None) => {
                // Each duty is a watch of its own, independent of the others: the CA bundles are filled even
                // while the MeshConfig cannot be created yet (its creation goes through the validating
                // webhook, which the API server trusts only once its bundle is there).
                owning = Some([
                    tokio::spawn(own_bootstrap_secrets(client.clone())),
                    tokio::spawn(keep_ca_bundles(client.clone(), config.mesh_name.clone(), ca_pem.clone())),
                    tokio::spawn(keep_mesh_config(client.clone(), config.osm_namespace.clone())),
                ])
            }
            (false, Some(tasks)) => {
                tasks.iter().for_each(|t| t.abort());
                owning = None;
            }
            _ => {}
        }
        if is_leader {
            tracing::info!(
                identity,
                lease = LEASE_NAME,
                "this replica leads: keeping the webhooks' CA bundles and the MeshConfig"
            );
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { break },
            () = &mut stop => break,
        }
    }
    if let Some(tasks) = owning {
        tasks.iter().for_each(|t| t.abort());
    }
    // Dropping the receiver makes the manager release the Lease, so another replica takes over at once.
    drop(leading);
    let _ = task.await;
    leader.store(false, Ordering::Relaxed);
    Ok(())
}
