//! A Kubernetes API-server simulator for tests: the wire protocol kube-rs (and `kubectl`) speak, without
//! etcd or a cluster.
//!
//! Place in the data flow: it stands where the real API server stands, in front of the Kubernetes
//! watchers (`k8s::watch`), the webhooks' object writes and the Lease of the controller replicas, so those
//! are tested through the real kube-rs client. It serves, for any resource path (core `/api/v1/...` and
//! `/apis/<group>/<version>/...`, cluster-scoped or namespaced), JSON objects with:
//!
//! - list with a collection `resourceVersion`, label selectors (`=`, `==`, `!=`, `in`, `notin`, exists,
//!   `!`exists) and the `metadata.name` / `metadata.namespace` field selectors;
//! - watch from a resourceVersion, with the events since then replayed, `BOOKMARK`s when asked for,
//!   `timeoutSeconds`, an object that stops (or starts) matching the selector seen as `DELETED` (`ADDED`),
//!   and `410 Gone` for a resourceVersion older than the history kept — [`ApiServer::expire`] forces that
//!   for one resource, as a compaction of etcd would;
//! - create (with `generateName`), get, update (optimistic concurrency on `metadata.resourceVersion`),
//!   patch (JSON merge, strategic merge treated as JSON merge, JSON patch, and server-side apply as a
//!   merge that creates), delete, and `dryRun=All` for each write;
//! - server-side apply's field ownership, per leaf field: an apply that changes a field another
//!   `fieldManager` set is refused with `409 Conflict` unless `force=true` (what Lease-based leader
//!   election relies on); a field that is removed has no owner.
//!
//! [`webhook`] is the API server's other side: calling admission webhooks over HTTPS. [`portforward`]
//! serves `pods/<name>/portforward` (WebSocket, as `kubectl port-forward` uses it) to a port reached by a
//! [`portforward::PodDialer`] the test provides ([`ApiServer::forward_ports_with`]).
//!
//! Not simulated: schema validation, admission, finalizers and garbage collection, pagination (`limit` is
//! ignored: every list is one page), protobuf.

pub mod portforward;
pub mod webhook;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

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

    /// The kind of this resource's objects, for list and bookmark envelopes.
    fn kind(&self, known: &BTreeMap<(String, String), String>) -> String {
        if let Some(k) = known.get(&self.id()) {
            return k.clone();
        }
        let singular = self
            .plural
            .strip_suffix("es")
            .filter(|s| s.ends_with("ss"))
            .unwrap_or(self.plural.strip_suffix('s').unwrap_or(&self.plural));
        let mut c = singular.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
    }
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

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    /// Per object, the field manager of each leaf field (JSON pointer).
    owners: BTreeMap<Key, BTreeMap<String, String>>,
    history: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is still in `history`.
    history_floor: u64,
    /// Per resource: a watch must start at or after this resourceVersion (set by [`ApiServer::expire`]).
    expired_at: BTreeMap<(String, String), u64>,
    kinds: BTreeMap<(String, String), String>,
}

impl Store {
    fn floor(&self, resource: &(String, String)) -> u64 {
        self.history_floor.max(self.expired_at.get(resource).copied().unwrap_or(0))
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
    requests: Mutex<Vec<(Method, String)>>,
    /// Reaches pods' ports for port-forwards (the kubelet's part); none until a test gives one.
    dialer: Mutex<Option<Dialer>>,
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
            store: Mutex::default(),
            notes,
            options,
            uid: AtomicU64::new(1),
            requests: Mutex::default(),
            dialer: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/api/v1/namespaces/{namespace}/pods/{name}/portforward", axum::routing::any(port_forward))
            .fallback(handle)
            .with_state(state.clone());
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

    /// A kubeconfig file's contents pointing at this server (for a controller run as a process, `kubectl`).
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

    /// Writes `object` (create or replace), as a controller of the cluster would; returns the stored object.
    pub fn put(&self, resource: &Resource, object: Value) -> Result<Value, SimError> {
        let ns = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let target = Target { resource: resource.clone(), namespace: ns, name: Some(name), subresource: None };
        let exists = self.get(resource, &target.namespace, target.name.as_deref().unwrap_or_default()).is_some();
        let (method, status) = if exists { (Method::PUT, StatusCode::OK) } else { (Method::POST, StatusCode::CREATED) };
        let body = serde_json::to_vec(&object).map_err(|e| SimError::Object(e.to_string()))?;
        let target = if exists { target } else { Target { name: None, ..target } };
        match write(&self.state, &method, &target, &Query::default(), &HeaderMap::new(), &body) {
            Ok((s, v)) if s == status => Ok(v),
            Ok((_, v)) | Err(ApiError { body: v, .. }) => Err(SimError::Object(v.to_string())),
        }
    }

    /// Writes every document of a multi-document YAML manifest (as `kubectl apply -f` would, without
    /// merging): the resource of each is found from its `apiVersion` and `kind`. Returns how many.
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
            self.put(&Resource::new(group, version, &plural_of(&kind)), doc)?;
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
        let id = resource.id();
        self.state.store().objects.iter().filter(|(k, _)| k.resource == id).map(|(_, v)| (**v).clone()).collect()
    }

    /// Deletes an object; false when it did not exist.
    pub fn remove(&self, resource: &Resource, namespace: &str, name: &str) -> bool {
        let target = Target {
            resource: resource.clone(),
            namespace: namespace.to_owned(),
            name: Some(name.to_owned()),
            subresource: None,
        };
        write(&self.state, &Method::DELETE, &target, &Query::default(), &HeaderMap::new(), &[]).is_ok()
    }

    /// Requests served so far (method and path with query), oldest first.
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// What a request path names.
#[derive(Debug, Clone)]
struct Target {
    resource: Resource,
    /// `""` for cluster-scoped resources and for lists across namespaces.
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let t = |ns: &str, plural: &str, name: Option<&str>, sub: Option<&str>| Target {
        resource: Resource::new(group, version, plural),
        namespace: ns.to_owned(),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
    };
    Some(match rest {
        // `/api/v1/namespaces/<name>` is the Namespace itself; deeper paths are inside it.
        ["namespaces", ns, plural] => t(ns, plural, None, None),
        ["namespaces", ns, plural, name] => t(ns, plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(ns, plural, Some(name), Some(sub)),
        [plural] => t("", plural, None, None),
        [plural, name] => t("", plural, Some(name), None),
        [plural, name, sub] => t("", plural, Some(name), Some(sub)),
        _ => return None,
    })
}

#[derive(Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_s: Option<u64>,
    bookmarks: bool,
    dry_run: bool,
    field_manager: Option<String>,
    force: bool,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => out.resource_version = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "labelSelector" => out.label_selector = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "fieldSelector" => out.field_selector = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "timeoutSeconds" => out.timeout_s = v.parse().ok(),
            "allowWatchBookmarks" => out.bookmarks = v == "true" || v == "1",
            "dryRun" => out.dry_run = v == "All",
            "fieldManager" => out.field_manager = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "force" => out.force = v == "true",
            _ => {}
        }
    }
    out
}

/// A label or field selector, as the API server parses it.
#[derive(Debug, Clone, Default)]
struct Selector(Vec<Term>);

#[derive(Debug, Clone)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

impl Selector {
    fn parse(s: Option<&str>) -> Result<Self, String> {
        let Some(s) = s else { return Ok(Self::default()) };
        let mut terms = Vec::new();
        for term in split_terms(s) {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')'));
                let inner = inner.ok_or_else(|| format!("selector term {term:?}: expected a (list)"))?;
                Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
            };
            let t = if let Some((k, v)) = term.split_once("!=") {
                Term::Ne(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Term::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                Term::NotIn(k.trim().to_owned(), set(rest)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                Term::In(k.trim().to_owned(), set(rest)?)
            } else if let Some(k) = term.strip_prefix('!') {
                Term::Absent(k.trim().to_owned())
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Term::Exists(term.to_owned())
            } else {
                return Err(format!("unable to parse selector term {term:?}"));
            };
            terms.push(t);
        }
        Ok(Self(terms))
    }

    fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Eq(k, v) => get(k).as_deref() == Some(v),
            Term::Ne(k, v) => get(k).as_deref() != Some(v),
            Term::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Term::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
        })
    }
}

/// The list or watch filter of one request.
#[derive(Debug, Clone)]
struct Filter {
    resource: (String, String),
    namespace: String,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let str_at = |p: &str| obj.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let ns = str_at("/metadata/namespace").unwrap_or_default();
        (self.namespace.is_empty() || ns == self.namespace)
            && self
                .labels
                .matches(|k| obj.pointer("/metadata/labels").and_then(|l| l.get(k))?.as_str().map(str::to_owned))
            && self.fields.matches(|k| match k {
                "metadata.name" => str_at("/metadata/name"),
                "metadata.namespace" => Some(ns.clone()),
                _ => None,
            })
    }
}

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    body: Value,
}

fn api_error(status: StatusCode, reason: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError {
        status,
        body: json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": status.as_u16(),
        }),
    }
}

fn not_found(t: &Target, name: &str) -> ApiError {
    api_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{}.{} \"{name}\" not found", t.resource.plural, t.resource.group),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `GET /api/v1/namespaces/<ns>/pods/<name>/portforward?ports=...` with a WebSocket upgrade.
async fn port_forward(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
    mut request: axum::extract::Request,
) -> Response {
    let uri = request.uri().clone();
    if let Ok(mut r) = state.requests.lock() {
        r.push((
            request.method().clone(),
            uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
        ));
    }
    let bad = |reason: String| {
        let e = api_error(StatusCode::BAD_REQUEST, "BadRequest", reason);
        json_response(e.status, &e.body)
    };
    if !matches!(*request.method(), Method::GET | Method::POST) {
        return bad(format!(
            "{} is not how a port-forward is asked for (GET with a WebSocket upgrade)",
            request.method()
        ));
    }
    let key = Key { resource: (String::new(), "pods".to_owned()), namespace: namespace.clone(), name: name.clone() };
    if !state.store().objects.contains_key(&key) {
        let e = api_error(StatusCode::NOT_FOUND, "NotFound", format!("pods \"{name}\" not found"));
        return json_response(e.status, &e.body);
    }
    let ports = match portforward::ports_of(uri.query()) {
        Ok(p) => p,
        Err(reason) => return bad(reason),
    };
    let Some(Dialer(dial)) = state.dialer.lock().ok().and_then(|d| d.clone()) else {
        let e = api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("pod {namespace}/{name} has no reachable kubelet in this simulator (no dialer)"),
        );
        return json_response(e.status, &e.body);
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return bad("the connection cannot be upgraded".to_owned());
    };
    portforward::upgrade(request.headers(), on_upgrade, dial, (namespace, name), ports).unwrap_or_else(bad)
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(mut r) = state.requests.lock() {
        r.push((method.clone(), uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.to_string())));
    }
    let Some(target) = parse_path(uri.path()) else {
        let e = api_error(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {}", uri.path()));
        return json_response(e.status, &e.body);
    };
    let query = parse_query(uri.query());
    let result = match (&method, &target.name) {
        (&Method::GET, None) if query.watch => return watch(&state, &target, &query),
        (&Method::GET, None) => list(&state, &target, &query).map(|v| (StatusCode::OK, v)),
        (&Method::GET, Some(name)) => {
            let key = Key { resource: target.resource.id(), namespace: target.namespace.clone(), name: name.clone() };
            state
                .store()
                .objects
                .get(&key)
                .map(|v| (StatusCode::OK, (**v).clone()))
                .ok_or_else(|| not_found(&target, name))
        }
        _ => write(&state, &method, &target, &query, &headers, &body),
    };
    match result {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => json_response(e.status, &e.body),
    }
}

fn filter_of(target: &Target, query: &Query) -> Result<Filter, ApiError> {
    let bad = |e: String| api_error(StatusCode::BAD_REQUEST, "BadRequest", e);
    Ok(Filter {
        resource: target.resource.id(),
        namespace: target.namespace.clone(),
        labels: Selector::parse(query.label_selector.as_deref()).map_err(bad)?,
        fields: Selector::parse(query.field_selector.as_deref()).map_err(bad)?,
    })
}

fn list(state: &State, target: &Target, query: &Query) -> Result<Value, ApiError> {
    let filter = filter_of(target, query)?;
    let store = state.store();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(k, v)| k.resource == filter.resource && filter.matches(v))
        .map(|(_, v)| (**v).clone())
        .collect();
    Ok(json!({
        "apiVersion": target.resource.api_version(),
        "kind": format!("{}List", target.resource.kind(&store.kinds)),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line
}

/// The event a filtered watch sees for one change: an object that stops matching is `DELETED` for it.
fn event_for(filter: &Filter, c: &Change) -> Option<String> {
    if c.resource != filter.resource {
        return None;
    }
    let old = c.old.as_deref().filter(|o| filter.matches(o));
    let new = c.new.as_deref().filter(|n| filter.matches(n));
    match (old, new) {
        (None, Some(n)) => Some(event_line("ADDED", n)),
        (Some(_), Some(n)) => Some(event_line("MODIFIED", n)),
        (Some(o), None) => Some(event_line("DELETED", c.new.as_deref().unwrap_or(o))),
        (None, None) => None,
    }
}

fn gone_line(message: String) -> String {
    event_line("ERROR", &api_error(StatusCode::GONE, "Expired", message).body)
}

fn watch(state: &Arc<State>, target: &Target, query: &Query) -> Response {
    let filter = match filter_of(target, query) {
        Ok(f) => f,
        Err(e) => return json_response(e.status, &e.body),
    };
    // Replay and subscription happen under the store's lock, so no change falls between them.
    let (backlog, mut notes, mut last_rv, bookmark_envelope) = {
        let store = state.store();
        let notes = state.notes.subscribe();
        let envelope = (target.resource.api_version(), target.resource.kind(&store.kinds));
        let mut backlog = Vec::new();
        match query.resource_version.as_deref().map(str::parse::<u64>) {
            None | Some(Ok(0)) => {
                // No resourceVersion: the current state as ADDED events, then what follows.
                for (k, v) in &store.objects {
                    if k.resource == filter.resource && filter.matches(v) {
                        backlog.push(event_line("ADDED", v));
                    }
                }
            }
            Some(Ok(from)) => {
                let floor = store.floor(&filter.resource);
                if from < floor || from > store.rv {
                    backlog.push(gone_line(format!("too old resource version: {from} ({floor})")));
                    drop(store);
                    return stream_lines(backlog, None);
                }
                backlog.extend(store.history.iter().filter(|c| c.rv > from).filter_map(|c| event_for(&filter, c)));
            }
            Some(Err(_)) => {
                let e = api_error(StatusCode::BAD_REQUEST, "BadRequest", "resourceVersion is not a number");
                return json_response(e.status, &e.body);
            }
        }
        (backlog, notes, store.rv, envelope)
    };
    let (tx, rx) = mpsc::channel::<Result<String, Infallible>>(64);
    let bookmarks = query.bookmarks;
    let interval = state.options.bookmark_interval;
    let deadline = query.timeout_s.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            let line = tokio::select! {
                note = notes.recv() => match note {
                    Ok(Note::Change(c)) if c.rv > last_rv => {
                        last_rv = c.rv;
                        match event_for(&filter, &c) {
                            Some(line) => line,
                            None => continue,
                        }
                    }
                    Ok(Note::Change(_)) => continue,
                    Ok(Note::Expire(id)) if id == filter.resource => {
                        let _ = tx.send(Ok(gone_line(format!("too old resource version: {last_rv}")))).await;
                        return;
                    }
                    Ok(Note::Expire(_)) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(gone_line(format!("watch fell behind at {last_rv}")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    // Every change reaches this loop in order, so `last_rv` is as far as this watch has seen.
                    let (api_version, kind) = &bookmark_envelope;
                    event_line("BOOKMARK", &json!({
                        "apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    }))
                }
                () = &mut timeout => return,
                () = tx.closed() => return,
            };
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
    });
    stream_lines(Vec::new(), Some(rx))
}

fn stream_lines(first: Vec<String>, rest: Option<mpsc::Receiver<Result<String, Infallible>>>) -> Response {
    use futures::StreamExt as _;
    let head = futures::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let tail = rest.map(tokio_stream::wrappers::ReceiverStream::new);
    let stream = head.chain(futures::stream::iter(tail).flatten());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn now_rfc3339(state: &State) -> String {
    // Timestamps only need to be well-formed and increase; the simulator's clock is its write counter.
    let n = state.uid.load(Ordering::Relaxed);
    format!("2026-01-01T00:{:02}:{:02}Z", (n / 60) % 60, n % 60)
}

fn write(
    state: &State,
    method: &Method,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let bad = |m: String| api_error(StatusCode::BAD_REQUEST, "BadRequest", m);
    let parse_body = || -> Result<Value, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("the request body is not JSON: {e}")))?;
        if v.is_object() { Ok(v) } else { Err(bad("the request body is not an object".to_owned())) }
    };
    let id = target.resource.id();
    let mut store = state.store();
    let key_of = |name: &str| Key { resource: id.clone(), namespace: target.namespace.clone(), name: name.to_owned() };
    let (status, old, new) = match (method, &target.name) {
        (&Method::POST, None) => {
            let mut obj = parse_body()?;
            let meta = obj.pointer("/metadata").cloned().unwrap_or(json!({}));
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
            if !body_ns.is_empty() && body_ns != target.namespace {
                return Err(bad(format!(
                    "the namespace of the object ({body_ns}) does not match the namespace on the request ({})",
                    target.namespace
                )));
            }
            let name =
                match (meta.get("name").and_then(Value::as_str), meta.get("generateName").and_then(Value::as_str)) {
                    (Some(n), _) if !n.is_empty() => n.to_owned(),
                    (_, Some(prefix)) => format!("{prefix}{:05x}", state.uid.fetch_add(1, Ordering::Relaxed)),
                    _ => {
                        return Err(api_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "metadata.name: Required value: name or generateName is required",
                        ));
                    }
                };
            if store.objects.contains_key(&key_of(&name)) {
                return Err(api_error(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{}.{} \"{name}\" already exists", target.resource.plural, target.resource.group),
                ));
            }
            set_meta(state, &mut obj, &target.namespace, &name, None);
            (StatusCode::CREATED, None, Some(obj))
        }
        (&Method::PUT, Some(name)) => {
            let mut obj = parse_body()?;
            let old = store.objects.get(&key_of(name)).cloned().ok_or_else(|| not_found(target, name))?;
            check_version(&obj, &old, target, name)?;
            if let Some(sub) = &target.subresource {
                // Only the subresource's part of the body is written (status, scale, ...).
                let part = obj.get(sub).cloned().unwrap_or(Value::Null);
                obj = (*old).clone();
                obj[sub] = part;
            }
            set_meta(state, &mut obj, &target.namespace, name, Some(&old));
            (StatusCode::OK, Some(old), Some(obj))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type =
                headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let old = store.objects.get(&key_of(name)).cloned();
            let apply = content_type.starts_with("application/apply-patch");
            let mut obj = match (&old, apply) {
                (Some(o), _) => (**o).clone(),
                (None, true) => json!({}),
                (None, false) => return Err(not_found(target, name)),
            };
            if content_type.starts_with("application/json-patch+json") {
                let ops: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| bad(format!("the request body is not a JSON patch: {e}")))?;
                json_patch::patch(&mut obj, &ops)
                    .map_err(|e| api_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string()))?;
            } else if content_type.starts_with("application/merge-patch+json")
                || content_type.starts_with("application/strategic-merge-patch+json")
                || apply
            {
                let body = parse_body()?;
                if apply {
                    let manager = query.field_manager.as_deref().unwrap_or("unknown");
                    let owners = store.owners.get(&key_of(name));
                    check_apply(&obj, &body, owners, manager, query.force)?;
                }
                json_patch::merge(&mut obj, &body);
            } else {
                return Err(api_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format: {content_type:?}"),
                ));
            }
            if let Some(o) = &old {
                check_version(&obj, o, target, name)?;
            }
            set_meta(state, &mut obj, &target.namespace, name, old.as_deref());
            let status = if old.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            (status, old, Some(obj))
        }
        (&Method::DELETE, Some(name)) => {
            let old = store.objects.get(&key_of(name)).cloned().ok_or_else(|| not_found(target, name))?;
            (StatusCode::OK, Some(old), None)
        }
        _ => {
            return Err(api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on this path"),
            ));
        }
    };
    if let Some(kind) = new.as_ref().and_then(|n| n.get("kind")).and_then(Value::as_str) {
        store.kinds.entry(id.clone()).or_insert_with(|| kind.to_owned());
    }
    if query.dry_run {
        return Ok((status, new.or(old.map(|o| (*o).clone())).unwrap_or(Value::Null)));
    }
    store.rv += 1;
    let rv = store.rv;
    let name = new
        .as_ref()
        .and_then(|n| n.pointer("/metadata/name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| target.name.clone())
        .unwrap_or_default();
    let new = new.map(|mut n| {
        n["metadata"]["resourceVersion"] = json!(rv.to_string());
        Arc::new(n)
    });
    match &new {
        Some(n) => store.objects.insert(key_of(&name), n.clone()),
        None => store.objects.remove(&key_of(&name)),
    };
    // Ownership: whoever changed a field owns it now; a removed field has no owner.
    let manager = query.field_manager.clone().unwrap_or_else(|| "unknown".to_owned());
    match &new {
        Some(n) => {
            let before = old.as_deref().map(leaves).unwrap_or_default();
            let after = leaves(n);
            let owners = store.owners.entry(key_of(&name)).or_default();
            owners.retain(|path, _| after.contains_key(path));
            for (path, v) in &after {
                if before.get(path) != Some(v) {
                    owners.insert(path.clone(), manager.clone());
                }
            }
        }
        None => {
            store.owners.remove(&key_of(&name));
        }
    }
    let change = Arc::new(Change { rv, resource: id, old: old.clone(), new: new.clone() });
    store.history.push_back(change.clone());
    while store.history.len() > state.options.history {
        if let Some(c) = store.history.pop_front() {
            store.history_floor = c.rv;
        }
    }
    let _ = state.notes.send(Note::Change(change));
    let out = new.or(old).map(|v| (*v).clone()).unwrap_or(Value::Null);
    Ok((status, out))
}

/// The leaf fields of an object (scalars and lists, by JSON pointer), without the server's metadata.
fn leaves(v: &Value) -> BTreeMap<String, Value> {
    fn walk(path: String, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")), v, out);
                }
            }
            Value::Null => {}
            other => {
                out.insert(path, other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(String::new(), v, &mut out);
    for server_owned in
        ["/metadata/resourceVersion", "/metadata/uid", "/metadata/creationTimestamp", "/metadata/generation"]
    {
        out.remove(server_owned);
    }
    out.retain(|k, _| !k.starts_with("/metadata/managedFields"));
    out
}

/// Server-side apply: changing a field another manager owns is a conflict unless forced.
fn check_apply(
    current: &Value,
    patch: &Value,
    owners: Option<&BTreeMap<String, String>>,
    manager: &str,
    force: bool,
) -> Result<(), ApiError> {
    if force {
        return Ok(());
    }
    let conflicts: Vec<String> = leaves(patch)
        .into_iter()
        .filter(|(path, v)| current.pointer(path).is_some_and(|c| c != v))
        .filter_map(|(path, _)| {
            let owner = owners?.get(&path)?;
            (owner != manager).then(|| format!("conflict with \"{owner}\": {}", path.replace('/', ".")))
        })
        .collect();
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(api_error(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Apply failed with {} conflict(s): {}", conflicts.len(), conflicts.join(", ")),
    ))
}

/// Optimistic concurrency: a write that names a resourceVersion must name the current one.
fn check_version(obj: &Value, old: &Value, target: &Target, name: &str) -> Result<(), ApiError> {
    let given = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty());
    let current = old.pointer("/metadata/resourceVersion").and_then(Value::as_str);
    match given {
        Some(g) if Some(g) != current => Err(api_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                target.resource.plural, target.resource.group
            ),
        )),
        _ => Ok(()),
    }
}

/// Fills the metadata the server owns: name, namespace, uid, creation time, generation.
fn set_meta(state: &State, obj: &mut Value, namespace: &str, name: &str, old: Option<&Value>) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    meta["name"] = json!(name);
    if !namespace.is_empty() {
        meta["namespace"] = json!(namespace);
    }
    let (uid, created, generation) = match old {
        Some(o) => (
            o.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
            o.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1)
                + u64::from(o.get("spec") != obj.get("spec")),
        ),
        None => {
            let n = state.uid.fetch_add(1, Ordering::Relaxed);
            (json!(format!("00000000-0000-4000-8000-{n:012x}")), json!(now_rfc3339(state)), 1)
        }
    };
    let meta = &mut obj["metadata"];
    meta["uid"] = uid;
    meta["creationTimestamp"] = created;
    meta["generation"] = json!(generation);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_objects_and_subresources() {
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!((t.resource.plural.as_str(), t.namespace.as_str(), t.name), ("namespaces", "", None));
        let t = parse_path("/api/v1/namespaces/demo").unwrap();
        assert_eq!((t.resource.plural.as_str(), t.name.as_deref()), ("namespaces", Some("demo")));
        let t = parse_path("/api/v1/namespaces/demo/pods/p1/status").unwrap();
        assert_eq!(
            (t.resource.plural.as_str(), t.namespace.as_str(), t.name.as_deref(), t.subresource.as_deref()),
            ("pods", "demo", Some("p1"), Some("status"))
        );
        let t = parse_path("/apis/access.smi-spec.io/v1alpha3/traffictargets").unwrap();
        assert_eq!(
            (t.resource.group.as_str(), t.resource.api_version()),
            ("access.smi-spec.io", "access.smi-spec.io/v1alpha3".to_owned())
        );
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels: BTreeMap<&str, &str> = [("app", "web"), ("tier", "front")].into();
        let get = |k: &str| labels.get(k).map(|v| (*v).to_owned());
        let m = |s: &str| Selector::parse(Some(s)).unwrap().matches(get);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(m("app in (web, api),!missing"));
        assert!(!m("app notin (web)"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(Selector::parse(Some("app in web")).is_err());
    }

    #[test]
    fn plurals_follow_the_api() {
        let p = |k: &str| plural_of(k);
        assert_eq!(
            [p("Pod"), p("Endpoints"), p("EndpointSlice"), p("HTTPRouteGroup"), p("Egress"), p("NetworkPolicy")],
            ["pods", "endpoints", "endpointslices", "httproutegroups", "egresses", "networkpolicies"]
        );
    }

    #[test]
    fn kinds_are_derived_from_plurals_when_unknown() {
        let known = BTreeMap::new();
        assert_eq!(Resource::new("", "v1", "pods").kind(&known), "Pod");
        assert_eq!(Resource::new("x", "v1", "classes").kind(&known), "Class");
    }
}
