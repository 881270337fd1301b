//! A Kubernetes API-server simulator for tests: the wire protocol kube-rs, `kubectl` and `helm` speak,
//! without etcd or a cluster.
//!
//! Place in the data flow: it stands where the real API server stands, in front of the Kubernetes
//! watchers (`k8s::watch`), the webhooks' object writes and the Lease of the controller replicas, so those
//! are tested through the real kube-rs client, and the chart through the real `helm` and `kubectl`
//! ([`ApiServer::kubeconfig`]). It serves, for any resource path (core `/api/v1/...` and
//! `/apis/<group>/<version>/...`, cluster-scoped or namespaced), JSON objects with:
//!
//! - list with a collection `resourceVersion`, label selectors (`=`, `==`, `!=`, `in`, `notin`, exists,
//!   `!`exists) and the `metadata.name` / `metadata.namespace` field selectors;
//! - watch from a resourceVersion, with the events since then replayed, `BOOKMARK`s when asked for,
//!   `timeoutSeconds`, an object that stops (or starts) matching the selector seen as `DELETED` (`ADDED`),
//!   and `410 Gone` for a resourceVersion older than the history kept — [`ApiServer::expire`] forces that
//!   for one resource, as a compaction of etcd would; watch-lists (`sendInitialEvents=true`) end their
//!   initial events with the `k8s.io/initial-events-end` bookmark;
//! - create (with `generateName`), get, update (optimistic concurrency on `metadata.resourceVersion`),
//!   patch (JSON merge, JSON patch, strategic merge with the built-in types' merge keys and the `$patch`,
//!   `$setElementOrder`, `$retainKeys` and `$deleteFromPrimitiveList` directives — refused with 415 for
//!   custom resources, as the real server does — and server-side apply, JSON or YAML), delete, delete of a
//!   collection, and `dryRun=All` for each write; bodies in JSON, or in Kubernetes protobuf for the core
//!   kinds typed Go clients send that way (Secret, ConfigMap, Namespace, ServiceAccount: Helm's release
//!   storage, `kubectl create`); a Namespace always carries `kubernetes.io/metadata.name=<name>`; the
//!   `status` subresource writes only the status, the `scale` subresource reads and writes a Scale;
//! - server-side apply's field ownership, shown as `metadata.managedFields`: per leaf field, the managers
//!   (told apart by name, operation and subresource) owning it, a list with a built-in merge key being a
//!   map of its items (two managers own different fields of one container or webhook) and any other list
//!   one field. An apply that changes a field another manager owns is refused with `409 Conflict` (the real
//!   server's message) unless `force=true` — what Lease-based leader election relies on and what `helm
//!   upgrade` meets after a `kubectl edit`; applying the value already there shares the field; a field an
//!   applier stops applying is removed unless another manager owns it; `kubectl apply --server-side`
//!   takes over fields of the last-applied annotation from `kubectl-client-side-apply`; managedFields a
//!   client writes become the ownership (how Helm and kubectl hand client-side-applied fields over);
//! - discovery (module `discovery`): `/version` (1.37), `/api`, `/apis`, `/apis/<group>`, per
//!   group-version resource lists and the aggregated form (`apidiscovery.k8s.io/v2`), for a table of
//!   built-in resources and every stored CustomResourceDefinition's served versions; a minimal OpenAPI v3
//!   (`/openapi/v3`: per group-version, the object paths' PATCH operations with their `fieldValidation`
//!   parameter — what tells kubectl to leave field validation to the server); `/openapi/v2` is 404;
//! - admission webhooks ([`admission`]) for requests over HTTP: every stored Mutating- then
//!   ValidatingWebhookConfiguration whose rules, `namespaceSelector` and `objectSelector` match is called
//!   over HTTPS ([`webhook`]) with an AdmissionReview v1, through services resolved by
//!   [`ApiServer::resolve_services_with`]; `failurePolicy`, denials, JSONPatch mutations, `timeoutSeconds`,
//!   `sideEffects` against dry runs, `warnings`, and the real server's messages;
//! - CustomResourceDefinitions (module `schema`): a CRD is `Established` (with its accepted names and
//!   stored versions) as soon as it is stored — what Helm waits for —, must be named `<plural>.<group>` and
//!   have exactly one storage version, and its deletion deletes its custom resources. For requests over
//!   HTTP, its structural schema prunes unknown fields, fills `default`s and validates (`422 Invalid` in
//!   the real server's words); `fieldValidation` is `Strict` (an unknown field is a 400), `Warn` (the
//!   default: a `Warning` header) or `Ignore`; the status subresource; served versions (another one is
//!   404) and the storage version (objects are stored at it and served at the version asked for).
//!
//! Writes through the Rust API ([`ApiServer::put`], [`ApiServer::apply_yaml`], [`ApiServer::remove`]) stand
//! for the cluster's own state: they bypass admission webhooks and CRD schemas.
//!
//! [`portforward`] serves `pods/<name>/portforward` (WebSocket, as `kubectl port-forward` uses it) to a
//! port reached by a [`portforward::PodDialer`] the test provides ([`ApiServer::forward_ports_with`]).
//!
//! Not simulated: authentication and authorization (every client is `system:admin`); CEL
//! (`x-kubernetes-validations`, ValidatingAdmissionPolicy, `matchConditions`), `format` checks and
//! `x-kubernetes-list-type` keys of custom resources (their lists are atomic); webhook reinvocation and
//! `matchPolicy: Equivalent` (matches are exact); conversion webhooks (a CRD's versions convert by
//! rewriting `apiVersion`); finalizers, namespace termination (deleting a Namespace leaves its objects, and
//! objects may be created in a Namespace that does not exist) and garbage collection; built-in types'
//! validation and defaulting (their unknown fields are kept); server-side printing (`kubectl get` prints
//! its own default columns); pagination (`limit` is ignored: every list is one page); protobuf responses
//! and protobuf bodies of other kinds (415).

pub mod admission;
pub mod clients;
mod discovery;
mod fields;
mod http;
mod patch;
pub mod portforward;
mod proto;
mod scale;
mod schema;
mod watch;
pub mod webhook;
mod write;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

pub use admission::ServiceResolver;

/// An API resource: its group (`""` for the core group), version and plural name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Resource {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Self { group: group.to_owned(), version: version.to_owned(), plural: plural.to_owned() }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Objects are stored per group and plural: one object served at several versions is one object.
    fn id(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }
}

/// The kind of a plural name nothing declares (`pods` → `Pod`).
fn kind_from_plural(plural: &str) -> String {
    let singular =
        plural.strip_suffix("es").filter(|s| s.ends_with("ss")).unwrap_or(plural.strip_suffix('s').unwrap_or(plural));
    let mut c = singular.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The plural resource name of a kind, by the API's own rule for the kinds the mesh uses.
pub fn plural_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.as_str() {
        "endpoints" => lower,
        l if l.ends_with('s') => format!("{l}es"),
        l if l.ends_with('y') => format!("{}ies", &l[..l.len() - 1]),
        _ => format!("{lower}s"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    resource: (String, String),
    namespace: String,
    name: String,
}

/// One write, as the watch streams see it.
#[derive(Debug)]
struct Change {
    rv: u64,
    resource: (String, String),
    old: Option<Arc<Value>>,
    new: Option<Arc<Value>>,
}

#[derive(Debug, Clone)]
enum Note {
    Change(Arc<Change>),
    /// Watches of this resource end with 410 Gone.
    Expire((String, String)),
}

const CRDS: (&str, &str) = ("apiextensions.k8s.io", "customresourcedefinitions");

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    owners: BTreeMap<Key, fields::Owners>,
    history: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is still in `history`.
    history_floor: u64,
    /// Per resource: a watch must start at or after this resourceVersion (set by [`ApiServer::expire`]).
    expired_at: BTreeMap<(String, String), u64>,
    /// Kinds seen written, for resources neither built in nor defined by a CRD.
    kinds: BTreeMap<(String, String), String>,
}

impl Store {
    /// An empty store at resourceVersion 1, as etcd's revisions start: a list of an empty store must not
    /// answer "0", which to a watch means "from any point" — the changes between such a list and its watch
    /// would be lost.
    fn new() -> Self {
        Self { rv: 1, history_floor: 1, ..Default::default() }
    }

    fn floor(&self, resource: &(String, String)) -> u64 {
        self.history_floor.max(self.expired_at.get(resource).copied().unwrap_or(0))
    }

    fn of_resource(&self, id: &(String, String)) -> impl Iterator<Item = (&Key, &Arc<Value>)> {
        self.objects.iter().filter(move |(k, _)| &k.resource == id)
    }

    /// The stored CustomResourceDefinition of a group's plural.
    fn crd(&self, group: &str, plural: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&Key {
                resource: (CRDS.0.to_owned(), CRDS.1.to_owned()),
                namespace: String::new(),
                name: format!("{plural}.{group}"),
            })
            .filter(|c| c["spec"]["group"] == group && c["spec"]["names"]["plural"] == plural)
            .cloned()
    }

    /// Everything served: the built-in resources, then every CRD's served versions.
    fn served(&self) -> Vec<discovery::ApiResource> {
        let mut all = discovery::built_in().to_vec();
        for (_, crd) in self.of_resource(&(CRDS.0.to_owned(), CRDS.1.to_owned())) {
            all.extend(discovery::of_crd(crd));
        }
        all
    }

    /// What discovery says of a resource, if it is built in or defined by a CRD.
    fn describe(&self, resource: &Resource) -> Option<discovery::ApiResource> {
        if let Some(crd) = self.crd(&resource.group, &resource.plural) {
            let served = discovery::of_crd(&crd);
            return served.iter().find(|r| r.version == resource.version).or(served.first()).cloned();
        }
        let mut same =
            discovery::built_in().iter().filter(|r| r.group == resource.group && r.plural == resource.plural);
        let first = same.next()?;
        Some(std::iter::once(first).chain(same).find(|r| r.version == resource.version).unwrap_or(first).clone())
    }

    /// The kind of a resource's objects: declared, seen written, or derived from the plural.
    fn kind(&self, resource: &Resource) -> String {
        self.describe(resource)
            .map(|r| r.kind)
            .or_else(|| self.kinds.get(&resource.id()).cloned())
            .unwrap_or_else(|| kind_from_plural(&resource.plural))
    }
}

/// Knobs of the simulator.
#[derive(Debug, Clone)]
pub struct Options {
    /// Changes kept for watches resuming from an older resourceVersion; older ones get 410 Gone.
    pub history: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Where to listen (loopback and any free port by default).
    pub bind: SocketAddr,
}

impl Default for Options {
    fn default() -> Self {
        Self { history: 10_000, bookmark_interval: Duration::from_secs(1), bind: SocketAddr::from(([127, 0, 0, 1], 0)) }
    }
}

#[derive(Debug)]
struct State {
    store: Mutex<Store>,
    notes: broadcast::Sender<Note>,
    options: Options,
    uid: AtomicU64,
    /// Requests served, by method and path, for tests that check what a client did.
    requests: Mutex<Vec<(axum::http::Method, String)>>,
    /// Reaches pods' ports for port-forwards (the kubelet's part); none until a test gives one.
    dialer: Mutex<Option<Dialer>>,
    /// Finds the address behind a webhook's service (the endpoints' part); none until a test gives one.
    resolver: Mutex<Option<admission::Resolver>>,
}

/// A [`portforward::PodDialer`] in [`State`] (which is `Debug`).
#[derive(Clone)]
struct Dialer(portforward::PodDialer);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodDialer")
    }
}

impl State {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock is a bug in the simulator itself; keep serving what is there.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_uid(&self) -> u64 {
        self.uid.fetch_add(1, Ordering::Relaxed)
    }

    fn now_rfc3339(&self) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        rfc3339(i64::try_from(now.as_secs()).unwrap_or(0))
    }
}

/// Seconds since the Unix epoch as an RFC 3339 UTC time (`2026-01-01T00:00:00Z`).
fn rfc3339(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A running simulator on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    #[error("cannot configure a client for {url}: {reason}")]
    Client { url: String, reason: String },
    #[error("{0}")]
    Object(String),
}

impl ApiServer {
    /// Starts on `127.0.0.1:<any port>` on the current tokio runtime.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<Self, SimError> {
        let listener = tokio::net::TcpListener::bind(options.bind).await?;
        let addr = listener.local_addr()?;
        let (notes, _) = broadcast::channel(options.history.max(16));
        let state = Arc::new(State {
            store: Mutex::new(Store::new()),
            notes,
            options,
            uid: AtomicU64::new(1),
            requests: Mutex::default(),
            dialer: Mutex::default(),
            resolver: Mutex::default(),
        });
        let app = http::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "API-server simulator stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves port-forwards to pods through `dialer` (what the kubelet does: reach the port on the pod's
    /// loopback). Without one, a port-forward to an existing pod is refused.
    pub fn forward_ports_with(&self, dialer: portforward::PodDialer) {
        if let Ok(mut d) = self.state.dialer.lock() {
            *d = Some(Dialer(dialer));
        }
    }

    /// Reaches admission webhooks' services (`clientConfig.service`) through `resolver`: given the
    /// service's namespace, name and port, the address to connect to, or `None` when the service has no
    /// endpoints. Without one, every service has none ("no endpoints available for service").
    pub fn resolve_services_with(&self, resolver: ServiceResolver) {
        if let Ok(mut r) = self.state.resolver.lock() {
            *r = Some(admission::Resolver(resolver));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> Result<kube::Client, SimError> {
        let bad = |reason: String| SimError::Client { url: self.url(), reason };
        let url = self.url().parse().map_err(|e: axum::http::uri::InvalidUri| bad(e.to_string()))?;
        kube::Client::try_from(kube::Config::new(url)).map_err(|e| bad(e.to_string()))
    }

    /// A kubeconfig file's contents pointing at this server (for a controller run as a process, `kubectl`,
    /// `helm`).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for(&self.url())
    }

    /// A kubeconfig reaching this server at another URL (from another network namespace, say).
    pub fn kubeconfig_for(&self, url: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {url}\ncontexts:\n- name: sim\n  \
             context:\n    cluster: sim\n    user: sim\n    namespace: default\ncurrent-context: sim\nusers:\n- name: sim\n  user: {{}}\n",
            url = url
        )
    }

    /// Forces every watch of `resource` to end with 410 Gone and refuses resumption from any
    /// resourceVersion handed out so far, as a compaction would: clients must relist.
    pub fn expire(&self, group: &str, plural: &str) {
        let id = (group.to_owned(), plural.to_owned());
        let mut store = self.state.store();
        store.rv += 1;
        let rv = store.rv;
        store.expired_at.insert(id.clone(), rv);
        let _ = self.state.notes.send(Note::Expire(id));
    }

    /// Writes `object` (create or replace), as a controller of the cluster would, without admission or
    /// schemas; returns the stored object.
    pub fn put(&self, resource: &Resource, object: Value) -> Result<Value, SimError> {
        write::put(&self.state, resource, object).map_err(|e| SimError::Object(e.body.to_string()))
    }

    /// Writes every document of a multi-document YAML manifest (as `kubectl apply -f` would, without
    /// merging, admission or schemas): the resource of each is found from its `apiVersion` and `kind`
    /// (a stored CRD's plural, or the API's rule). Returns how many.
    pub fn apply_yaml(&self, text: &str) -> Result<usize, SimError> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).map_err(|e| SimError::Object(format!("invalid YAML: {e}")))?;
        let mut n = 0;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let field = |f: &str| doc.get(f).and_then(Value::as_str).map(str::to_owned);
            let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
                return Err(SimError::Object(format!("a document without apiVersion or kind: {doc}")));
            };
            let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
            let plural = {
                let store = self.state.store();
                store.served().into_iter().find(|r| r.group == group && r.kind == kind).map(|r| r.plural)
            };
            let plural = plural.unwrap_or_else(|| plural_of(&kind));
            self.put(&Resource::new(group, version, &plural), doc)?;
            n += 1;
        }
        Ok(n)
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &Resource, namespace: &str, name: &str) -> Option<Value> {
        let key = Key { resource: resource.id(), namespace: namespace.to_owned(), name: name.to_owned() };
        self.state.store().objects.get(&key).map(|v| (**v).clone())
    }

    /// Every stored object of `resource`.
    pub fn list(&self, resource: &Resource) -> Vec<Value> {
        self.state.store().of_resource(&resource.id()).map(|(_, v)| (**v).clone()).collect()
    }

    /// Deletes an object (without admission); false when it did not exist.
    pub fn remove(&self, resource: &Resource, namespace: &str, name: &str) -> bool {
        write::remove(&self.state, resource, namespace, name)
    }

    /// Requests served so far (method and path with query), oldest first.
    pub fn requests(&self) -> Vec<(axum::http::Method, String)> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_the_api() {
        let p = |k: &str| plural_of(k);
        assert_eq!(
            [p("Pod"), p("Endpoints"), p("EndpointSlice"), p("HTTPRouteGroup"), p("Egress"), p("NetworkPolicy")],
            ["pods", "endpoints", "endpointslices", "httproutegroups", "egresses", "networkpolicies"]
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600 + 3_723), "2026-01-01T01:02:03Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    /// To a watch, resourceVersion "0" means "from any point": a list must never answer it, or what is
    /// written between the list and its watch is lost (a fresh simulator's first list did).
    #[test]
    fn a_fresh_store_lists_at_a_resource_version_a_watch_resumes_from() {
        let store = Store::new();
        assert!(store.rv > 0 && store.history_floor <= store.rv);
    }

    #[test]
    fn kinds_are_declared_or_derived_from_plurals() {
        let store = Store::default();
        assert_eq!(store.kind(&Resource::new("", "v1", "pods")), "Pod");
        assert_eq!(store.kind(&Resource::new("", "v1", "endpoints")), "Endpoints");
        assert_eq!(store.kind(&Resource::new("x", "v1", "classes")), "Class");
    }
}
