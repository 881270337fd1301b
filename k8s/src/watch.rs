//! The Kubernetes source: kube-rs watchers of every kind the mesh reads, turned into `SourceEvent`s of
//! source [`SOURCE`].
//!
//! - Namespaces are watched by the label `openservicemesh.io/monitored-by=<mesh>` (as OSM does); one that
//!   also carries `openservicemesh.io/ignore=true` is not monitored.
//! - Every namespaced kind is watched cluster-wide and only objects in monitored namespaces pass; nothing
//!   else is kept (objects are converted to the compact mesh model at once, so `managedFields`,
//!   annotations and the rest of the Kubernetes object are dropped). When the set of monitored namespaces
//!   changes, the namespaced watchers relist, so a newly labelled namespace's objects arrive and an
//!   unlabelled one's leave through the same scoped `Reset` as any relist.
//! - Each watcher's (re)list ends in a `Reset` of its own kind only: a Pod relist (after `410 Gone`, say)
//!   never touches Services, and deletes missed while the watch was down are found by the relist.
//! - The MeshConfig is read from the control plane's namespace, by name, monitored or not.
//! - Endpoints come from EndpointSlices (`discovery.k8s.io/v1`), the API Kubernetes maintains; the
//!   `v1` Endpoints API is deprecated.
//!
//! An object that cannot be converted (a bad port, an unparseable IP, a name the mesh cannot use) is
//! logged with what is wrong; an update of that kind is skipped, so the last good version stays in force.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1 as core;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use messages::{Kind, MeshObject, ObjectKey, Reset, SourceEvent};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::convert::ConvertError;
use crate::kinds::{MeshKind, Watch};

/// The catalog source name of everything read from the API server.
pub const SOURCE: &str = "kubernetes";
/// A namespace is in the mesh named by this label's value (`osm namespace add`).
pub const MONITORED_BY_LABEL: &str = "openservicemesh.io/monitored-by";
/// A namespace with this label set to `true` is left out of the mesh even when labelled monitored.
pub const IGNORE_LABEL: &str = "openservicemesh.io/ignore";
/// The MeshConfig the controller reads, in its own namespace.
pub const MESH_CONFIG_NAME: &str = "osm-mesh-config";

/// Every kind the watchers list; the catalog is synced once each has been listed once.
pub fn kinds() -> Vec<Kind> {
    crate::kinds::watched()
}

#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The mesh's name: namespaces labelled `openservicemesh.io/monitored-by=<mesh_name>` are in it.
    pub mesh_name: String,
    /// The control plane's namespace, where the MeshConfig lives.
    pub osm_namespace: String,
}

/// Events from one watcher, in order. The receiver applies them before taking the next batch.
pub type Batch = Vec<SourceEvent>;

type Monitored = Option<Arc<BTreeSet<String>>>;

/// What a kind's watcher needs (see [`crate::kinds::Registered::watcher`]).
#[derive(Clone)]
pub struct WatchContext {
    client: Client,
    osm_namespace: String,
    monitored: watch::Receiver<Monitored>,
    sink: mpsc::Sender<Batch>,
}

/// Runs every watcher until the receiver of `sink` is dropped.
pub async fn run(client: Client, config: WatchConfig, sink: mpsc::Sender<Batch>) {
    let (monitored_tx, monitored_rx) = watch::channel::<Monitored>(None);
    let ns_watch = watch_namespaces(client.clone(), config.mesh_name.clone(), monitored_tx, sink.clone());
    let context = WatchContext { client, osm_namespace: config.osm_namespace, monitored: monitored_rx, sink };
    let watchers = crate::kinds::all().filter_map(|k| k.watcher(context.clone()));
    tokio::join!(ns_watch, futures::future::join_all(watchers));
}

/// The watch of kind `K` on a cluster, as its [`Watch`] says (`None` for the namespaces, watched by
/// [`run`] itself, and for kinds read from the mesh directory only).
pub(crate) fn watcher_of<K: MeshKind>(cx: WatchContext) -> Option<futures::future::BoxFuture<'static, ()>> {
    match K::WATCH {
        Watch::InMonitoredNamespaces => {
            Some(Box::pin(watch_kind(Api::<K>::all(cx.client), K::KIND, K::to_model, cx.monitored, cx.sink)))
        }
        Watch::ControlPlaneObject { name, api } => {
            let filter = watcher::Config::default().fields(&format!("metadata.name={name}"));
            Some(Box::pin(watch_one(api(cx.client, &cx.osm_namespace), filter, K::KIND, K::to_model, cx.sink)))
        }
        Watch::MonitoredNamespaces | Watch::DirectoryOnly => None,
    }
}

/// Whether a namespace returned by the label-selected watch is in the mesh.
pub fn is_monitored(ns: &core::Namespace, mesh_name: &str) -> bool {
    let labels = ns.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(MONITORED_BY_LABEL) == Some(mesh_name) && label(IGNORE_LABEL) != Some("true")
}

fn key_of<K: Resource<DynamicType = ()>>(kind: Kind, o: &K) -> ObjectKey {
    ObjectKey::new(kind, o.namespace().unwrap_or_default(), o.name_any())
}

fn reset(kind: Kind, objects: Vec<MeshObject>) -> SourceEvent {
    SourceEvent::Reset(Reset { source: SOURCE.to_owned(), kinds: [kind].into_iter().collect(), objects })
}

/// Says why a watch failed, with the fix for the usual causes.
fn log_watch_error(kind: Kind, e: &watcher::Error) {
    let hint = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404 =>
        {
            " (hint: is the CustomResourceDefinition installed? `osm-controller crds | kubectl apply -f -`)"
        }
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 403 =>
        {
            " (hint: the controller's ServiceAccount lacks list/watch permission on this kind)"
        }
        _ => "",
    };
    // An outage fails every watcher at once and again on each retry: a line per kind at first, then at
    // most one per kind every 10 s, with how many were left out.
    static LIMITER: std::sync::LazyLock<messages::ratelog::LogLimiter> =
        std::sync::LazyLock::new(|| messages::ratelog::LogLimiter::new(Duration::from_secs(10)));
    if let Some(left_out) = LIMITER.admit(kind.name()) {
        tracing::warn!(%kind, error = %e, left_out_since_last = left_out, "Kubernetes watch failed; retrying with backoff{hint}");
    }
}

/// The watchers' retry policy: exponential from 200 ms, at most 2 s apart (with jitter, so replicas and
/// kinds do not retry in step), so a watch is back within a couple of seconds of the API server's return
/// even after a long outage (client-go's default waits up to 30 s); reset after a minute of health.
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(builder),
        Duration::from_secs(60),
    )
}

fn converted(kind: Kind, label: impl Fn() -> String, result: Result<MeshObject, ConvertError>) -> Option<MeshObject> {
    match result {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::error!(%kind, object = %label(), error = %e, "Kubernetes object rejected; what it defined before stays in force");
            None
        }
    }
}

/// The monitored-namespace watcher: publishes the monitored set and forwards Namespace objects.
async fn watch_namespaces(
    client: Client,
    mesh_name: String,
    monitored: watch::Sender<Monitored>,
    sink: mpsc::Sender<Batch>,
) {
    let api = Api::<core::Namespace>::all(client);
    let config = watcher::Config::default().labels(&format!("{MONITORED_BY_LABEL}={mesh_name}"));
    let mut stream = watcher::watcher(api, config).backoff(watch_backoff()).boxed();
    let mut current: BTreeSet<String> = BTreeSet::new();
    let mut listing: Option<Vec<core::Namespace>> = None;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                log_watch_error(Kind::Namespace, &e);
                continue;
            }
        };
        let batch = match event {
            Event::Init => {
                listing = Some(Vec::new());
                continue;
            }
            Event::InitApply(ns) => {
                listing.get_or_insert_with(Vec::new).push(ns);
                continue;
            }
            Event::InitDone => {
                let all = listing.take().unwrap_or_default();
                let ours: Vec<&core::Namespace> = all.iter().filter(|n| is_monitored(n, &mesh_name)).collect();
                current = ours.iter().map(|n| n.name_any()).collect();
                let objects =
                    ours.iter().filter_map(|n| converted(Kind::Namespace, || n.name_any(), n.to_model())).collect();
                vec![reset(Kind::Namespace, objects)]
            }
            Event::Apply(ns) if is_monitored(&ns, &mesh_name) => {
                current.insert(ns.name_any());
                converted(Kind::Namespace, || ns.name_any(), ns.to_model())
                    .map(SourceEvent::Apply)
                    .into_iter()
                    .collect()
            }
            Event::Apply(ns) | Event::Delete(ns) => {
                current.remove(&ns.name_any());
                vec![SourceEvent::Delete(key_of(Kind::Namespace, &ns))]
            }
        };
        // Set before the batch is sent: the namespaced watchers relist against the new set.
        monitored.send_if_modified(|m| {
            let changed = m.as_deref() != Some(&current);
            if changed {
                tracing::info!(namespaces = ?current, "monitored namespaces");
                *m = Some(Arc::new(current.clone()));
            }
            changed
        });
        if sink.send(batch).await.is_err() {
            return;
        }
    }
}

/// A namespaced kind, cluster-wide, filtered by the monitored namespaces; relists when they change.
async fn watch_kind<K>(
    api: Api<K>,
    kind: Kind,
    convert: fn(&K) -> Result<MeshObject, ConvertError>,
    mut monitored: watch::Receiver<Monitored>,
    sink: mpsc::Sender<Batch>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    loop {
        let set = match monitored.wait_for(Option::is_some).await {
            Ok(s) => s.clone().unwrap_or_default(),
            Err(_) => return,
        };
        let filter = move |o: &K| o.namespace().is_some_and(|ns| set.contains(&ns));
        let stream = watcher::watcher(api.clone(), watcher::Config::default()).backoff(watch_backoff());
        tokio::select! {
            done = forward(stream, kind, convert, filter, &sink) => if done { return },
            changed = monitored.changed() => if changed.is_err() { return },
        }
        tracing::debug!(%kind, "monitored namespaces changed: relisting");
    }
}

/// One object watched by a field selector (the MeshConfig), monitored namespaces or not.
async fn watch_one<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    convert: fn(&K) -> Result<MeshObject, ConvertError>,
    sink: mpsc::Sender<Batch>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher::watcher(api, config).backoff(watch_backoff());
    forward(stream, kind, convert, |_: &K| true, &sink).await;
}

/// Forwards a watcher's events as source events until the stream ends; true when the sink is gone.
async fn forward<K>(
    stream: impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    kind: Kind,
    convert: fn(&K) -> Result<MeshObject, ConvertError>,
    filter: impl Fn(&K) -> bool,
    sink: &mpsc::Sender<Batch>,
) -> bool
where
    K: Resource<DynamicType = ()> + Debug,
{
    let label = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let mut stream = std::pin::pin!(stream.ready_chunks(256));
    let mut listing: Option<Vec<MeshObject>> = None;
    while let Some(events) = stream.next().await {
        let mut batch = Vec::new();
        for event in events {
            match event {
                Ok(Event::Init) => listing = Some(Vec::new()),
                Ok(Event::InitApply(o)) => {
                    if filter(&o)
                        && let Some(obj) = converted(kind, || label(&o), convert(&o))
                    {
                        listing.get_or_insert_with(Vec::new).push(obj);
                    }
                }
                Ok(Event::InitDone) => batch.push(reset(kind, listing.take().unwrap_or_default())),
                Ok(Event::Apply(o)) if filter(&o) => {
                    if let Some(obj) = converted(kind, || label(&o), convert(&o)) {
                        batch.push(SourceEvent::Apply(obj));
                    }
                }
                Ok(Event::Delete(o)) if filter(&o) => batch.push(SourceEvent::Delete(key_of(kind, &o))),
                Ok(Event::Apply(_) | Event::Delete(_)) => {}
                Err(e) => log_watch_error(kind, &e),
            }
        }
        if !batch.is_empty() && sink.send(batch).await.is_err() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_back_within_seconds_whatever_the_outage() {
        let mut backoff = watch_backoff();
        let delays: Vec<Duration> = (&mut backoff).take(100).collect();
        assert_eq!(delays.len(), 100, "a watch never gives up");
        // Jitter adds at most the delay itself: 4 s is the ceiling after any number of failures.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)), "{delays:?}");
        assert!(delays[0] <= Duration::from_millis(400), "the first retry is quick: {:?}", delays[0]);
    }
}
