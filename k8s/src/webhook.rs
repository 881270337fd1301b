//! The admission webhooks (AdmissionReview v1), as two axum routers the controller serves over HTTPS on
//! OSM's ports (the injector on 9090, the validator on 9093):
//!
//! - `POST /mutate-pod-creation`: sidecar injection ([`crate::inject`]); creates the pod's bootstrap
//!   Secret (not on a dry run) and answers with the JSON patch.
//! - `POST /validate`: the mesh's own kinds (SMI, MeshConfig) refused at the door when they could never
//!   be in force — a misspelt field, a name the mesh cannot use, a TrafficTarget outside its destination's
//!   namespace, an invalid regex — with the message (and stable code) the controller would otherwise log.
//!
//! Bodies are bounded ([`MAX_REVIEW_BYTES`]); a body that is not JSON gets `415`, one that is not an
//! AdmissionReview `400` with the reason, never a crash. A review of something the webhook cannot read
//! (a pod whose `containers` is a string, a ConfigMap sent to the injector) is answered as a review:
//! denied, with its uid and a code. Injection happens on CREATE only.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use certs::CertificateAuthority;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, GroupVersionKind};
use messages::{ProxyUuid, Role};
use serde_json::Value;

use crate::crds;
use crate::inject::{self, Decision, InjectorSettings};
use crate::kinds::ReadError;
use crate::watch::MESH_CONFIG_NAME;

/// Largest AdmissionReview read (the API server's own object limit is about 1.5 MiB).
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

/// Told (the object's kind, allowed) for every review answered (metrics).
pub type Observer = Arc<dyn Fn(&str, bool) + Send + Sync>;
/// Told how long each certificate the injector issued took (a sidecar's xDS client certificate).
pub type IssueObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// What the webhooks need: the cluster (namespaces, the MeshConfig, bootstrap Secrets), the CA that signs
/// sidecars' xDS certificates, and the injector's settings.
#[derive(Clone)]
pub struct WebhookState {
    pub client: kube::Client,
    pub ca: Arc<CertificateAuthority>,
    pub settings: InjectorSettings,
    /// Called with (the object's kind, allowed) for every review answered (metrics).
    pub observe: Observer,
    /// Called for every certificate the injector issues (metrics: `osm_cert_issued_count`).
    pub issued: IssueObserver,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The injector (OSM's `osm-injector` Service, port 9090): `/mutate-pod-creation`, `/healthz`.
pub fn injector_router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate-pod-creation", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state)
}

/// The validator (OSM's `osm-validator` Service, port 9093): `/validate`, `/healthz`.
pub fn validator_router(state: WebhookState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state)
}

fn review_response(resp: AdmissionResponse) -> Response {
    use base64::Engine as _;
    let patch = resp.patch.clone();
    let mut review = serde_json::to_value(resp.into_review()).unwrap_or(Value::Null);
    // The API's `patch` is bytes, which Kubernetes' JSON carries as a base64 string (not an array).
    if let Some(p) = patch {
        review["response"]["patch"] = Value::String(base64::engine::general_purpose::STANDARD.encode(p));
    }
    let body = serde_json::to_vec(&review).unwrap_or_default();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Refusals of what is not an admission review at all (wrong media type, not JSON, no request): a
/// hostile peer may send these at any rate, so their log lines are limited.
static REFUSALS: std::sync::LazyLock<messages::ratelog::LogLimiter> =
    std::sync::LazyLock::new(|| messages::ratelog::LogLimiter::new(std::time::Duration::from_secs(10)));

fn refuse(status: StatusCode, kind: &'static str, path: &str, reason: String) -> Response {
    if let Some(left_out) = REFUSALS.admit(kind) {
        tracing::warn!(
            path,
            status = status.as_u16(),
            left_out_since_last = left_out,
            "admission request refused: {}",
            messages::ratelog::peer_str(&reason)
        );
    }
    (status, format!("{reason}\n")).into_response()
}

/// The API server sends reviews as `application/json`; anything else is refused before it is read (as
/// OSM's webhooks answer 415): the refusal, if so.
fn not_json(headers: &HeaderMap, path: &str) -> Option<Response> {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = media.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return None;
    }
    Some(refuse(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "media_type",
        path,
        format!("E7013: Content-Type {media:?} is not application/json"),
    ))
}

fn bad_request(path: &str, reason: String) -> Response {
    refuse(StatusCode::BAD_REQUEST, "not_a_review", path, format!("E7010: not an AdmissionReview v1: {reason}"))
}

/// The review's request, or why the body is not one (answered with 400).
pub fn parse<T>(body: &[u8]) -> Result<AdmissionRequest<T>, String>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<T> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    review.try_into().map_err(|_| "it has no request".to_owned())
}

/// `namespace/name` of the object under review, for logs (a pod being created may have only a
/// generateName).
fn object_name(req: &AdmissionRequest<DynamicObject>) -> String {
    let meta = req.object.as_ref().map(|o| &o.metadata);
    let name = meta
        .and_then(|m| m.name.clone().or_else(|| m.generate_name.clone()))
        .or_else(|| Some(req.name.clone()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "<unnamed>".to_owned());
    let namespace = req.namespace.clone().or_else(|| meta.and_then(|m| m.namespace.clone())).unwrap_or_default();
    messages::ratelog::peer_str(&format!("{namespace}/{name}"))
}

async fn mutate(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = not_json(&headers, "/mutate-pod-creation") {
        return refused;
    }
    // Read as any object first, so a review that is well formed but carries something other than a
    // readable pod is still answered as a review (denied, with its uid) rather than with a bare 400.
    let req: AdmissionRequest<DynamicObject> = match parse(&body) {
        Ok(r) => r,
        Err(reason) => return bad_request("/mutate-pod-creation", reason),
    };
    let resp = match review_pod(&state, &req).await {
        Ok(resp) => resp,
        Err(reason) => {
            tracing::warn!(uid = %req.uid, pod = %object_name(&req), "sidecar injection refused: {reason}");
            AdmissionResponse::from(&req).deny(reason)
        }
    };
    (state.observe)("Pod", resp.allowed);
    review_response(resp)
}

/// Injection is for pods being created; anything else under review is let through unchanged, or
/// refused when it cannot be what the webhook is registered for.
async fn review_pod(state: &WebhookState, req: &AdmissionRequest<DynamicObject>) -> Result<AdmissionResponse, String> {
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        return Err(format!("E7014: the injector reviews Pods, not {:?}", req.kind.kind));
    }
    if req.operation != Operation::Create {
        // A sidecar is added when the pod is created; an update must not add another (nor sign and
        // store a second identity for the same pod).
        tracing::debug!(pod = %object_name(req), operation = ?req.operation, "not a CREATE: left unchanged");
        return Ok(AdmissionResponse::from(req));
    }
    let object = req.object.as_ref().ok_or("E7014: the request carries no pod")?;
    let value = serde_json::to_value(object).map_err(|e| format!("E7014: the pod cannot be read: {e}"))?;
    let pod: core::Pod = serde_json::from_value(value).map_err(|e| format!("E7014: the pod cannot be read: {e}"))?;
    injection(state, req, &pod).await
}

async fn injection(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    pod: &core::Pod,
) -> Result<AdmissionResponse, String> {
    let namespace = req.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
    let ns = Api::<core::Namespace>::all(state.client.clone())
        .get(&namespace)
        .await
        .map_err(|e| format!("E7011: cannot read namespace {namespace:?}: {e}"))?;
    let mesh_config = Api::<crds::MeshConfig>::namespaced(state.client.clone(), &state.settings.osm_namespace)
        .get_opt(MESH_CONFIG_NAME)
        .await
        .map_err(|e| format!("E7011: cannot read MeshConfig {}: {e}", MESH_CONFIG_NAME))?;
    let settings = match &mesh_config {
        Some(mc) => state.settings.with_mesh_config(&mc.spec).map_err(|e| e.to_string())?,
        None => state.settings.clone(),
    };
    match inject::decide(pod, &ns, &settings).map_err(|e| e.to_string())? {
        Decision::Skip(why) => {
            tracing::debug!(namespace, pod = ?pod.metadata.name, "no sidecar: {why}");
            return Ok(AdmissionResponse::from(req));
        }
        Decision::Inject => {}
    }
    let uuid = ProxyUuid::parse(&uuid::Uuid::new_v4().to_string()).map_err(|e| format!("E7003: {e}"))?;
    let (pod, ca, ns_name) = (pod.clone(), state.ca.clone(), namespace.clone());
    // Signing the xDS certificate is CPU work: off the threads that serve.
    let started = std::time::Instant::now();
    let injection = tokio::task::spawn_blocking(move || inject::inject(&pod, &ns_name, &ns, &ca, &settings, uuid))
        .await
        .map_err(|e| format!("E7003: injection failed: {e}"))?
        .map_err(|e| e.to_string())?;
    (state.issued)(started.elapsed());
    if !req.dry_run {
        Api::<core::Secret>::namespaced(state.client.clone(), &namespace)
            .create(&PostParams::default(), &injection.secret)
            .await
            .map_err(|e| format!("E7012: cannot create the bootstrap Secret in {namespace:?}: {e}"))?;
    }
    tracing::info!(
        pod = %object_name(req),
        proxy = injection.uuid.as_str(),
        dry_run = req.dry_run,
        "sidecar injected"
    );
    let mut resp = AdmissionResponse::from(req)
        .with_patch(injection.patch)
        .map_err(|e| format!("E7003: cannot encode the patch: {e}"))?;
    if !injection.warnings.is_empty() {
        resp.warnings = Some(injection.warnings);
    }
    Ok(resp)
}

async fn validate(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = not_json(&headers, "/validate") {
        return refused;
    }
    let req: AdmissionRequest<DynamicObject> = match parse(&body) {
        Ok(r) => r,
        Err(reason) => return bad_request("/validate", reason),
    };
    let checked = match req.object.as_ref() {
        None => Ok(()),
        Some(o) => match check_object(&req.kind, o) {
            Ok(()) => check_against_others(&state.client, &req, o).await,
            Err(e) => Err(e),
        },
    };
    let resp = match checked {
        Ok(()) => AdmissionResponse::from(&req),
        Err(reason) => {
            tracing::warn!(
                uid = %req.uid,
                kind = %messages::ratelog::peer_str(&req.kind.kind),
                object = %object_name(&req),
                operation = ?req.operation,
                "admission refused: {reason}"
            );
            AdmissionResponse::from(&req).deny(reason)
        }
    };
    (state.observe)(&req.kind.kind, resp.allowed);
    review_response(resp)
}

/// Rules across the objects of a kind, read from the API server (OSM's): one UpstreamTrafficSetting per
/// host in a namespace, one IngressBackend per backend Service and port.
async fn check_against_others(
    client: &kube::Client,
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
) -> Result<(), String> {
    if req.kind.group != "policy.openservicemesh.io" {
        return Ok(());
    }
    let namespace = req.namespace.clone().or_else(|| obj.metadata.namespace.clone()).unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    match req.kind.kind.as_str() {
        "UpstreamTrafficSetting" => one_setting_per_host(client, &namespace, &name, obj).await,
        "IngressBackend" => one_ingress_per_backend(client, &namespace, &name, obj).await,
        _ => Ok(()),
    }
}

async fn one_ingress_per_backend(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    obj: &DynamicObject,
) -> Result<(), String> {
    let backends = |spec: &Value| -> Vec<(String, u64)> {
        spec["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| (b["name"].as_str().unwrap_or_default().to_owned(), b["port"]["number"].as_u64().unwrap_or(0)))
            .collect()
    };
    let mine = backends(&obj.data["spec"]);
    let others = Api::<crds::IngressBackend>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map_err(|e| format!("E7011: cannot list the IngressBackends of {namespace:?}: {e}"))?;
    for other in others.items.iter().filter(|o| o.metadata.name.as_deref() != Some(name)) {
        let theirs = backends(&serde_json::to_value(&other.spec).unwrap_or(Value::Null));
        if let Some((svc, port)) = mine.iter().find(|b| theirs.contains(b)) {
            return Err(format!(
                "{}: IngressBackend {namespace}/{} already admits ingress to backend {svc} port {port}: one per \
                 backend port; add the sources to that one",
                messages::policy::codes::INGRESS_BACKEND_DUPLICATE,
                other.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

async fn one_setting_per_host(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    obj: &DynamicObject,
) -> Result<(), String> {
    let host = obj.data["spec"]["host"].as_str().unwrap_or_default().trim().to_ascii_lowercase();
    let others = Api::<crds::UpstreamTrafficSetting>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map_err(|e| format!("E7011: cannot list the UpstreamTrafficSettings of {namespace:?}: {e}"))?;
    let taken = others
        .items
        .iter()
        .find(|o| o.metadata.name.as_deref() != Some(name) && o.spec.host.trim().eq_ignore_ascii_case(&host));
    match taken {
        Some(o) => Err(format!(
            "{}: UpstreamTrafficSetting {namespace}/{} already sets host {host:?}: one per host and namespace; \
             change that one instead",
            messages::policy::codes::UPSTREAM_HOST_DUPLICATE,
            o.metadata.name.as_deref().unwrap_or_default()
        )),
        None => Ok(()),
    }
}

/// Codes of problems an object has on its own (not those that depend on other objects existing, which
/// may simply be created later).
const SELF_CONTAINED: &[&str] = &[
    messages::policy::codes::ROUTE_GROUP_NO_MATCH,
    messages::policy::codes::INVALID_DESTINATION_KIND,
    messages::policy::codes::INVALID_SOURCE_KIND,
    messages::policy::codes::SOURCE_NO_NAMESPACE,
    messages::policy::codes::TARGET_NAMESPACE_MISMATCH,
    messages::policy::codes::TARGET_NO_RULES,
    messages::policy::codes::UNKNOWN_ROUTE_KIND,
    messages::policy::codes::INVALID_REGEX,
    messages::policy::codes::INVALID_METHOD,
    messages::policy::codes::INVALID_PORT,
    messages::policy::codes::INVALID_WEIGHTS,
];

/// Why an object of the mesh's kinds could never be in force, if so. Objects of kinds the mesh does not
/// read, and of the Kubernetes kinds that only feed its inventory, pass.
pub fn check_object(gvk: &GroupVersionKind, obj: &DynamicObject) -> Result<(), String> {
    let api_version = if gvk.group.is_empty() { gvk.version.clone() } else { format!("{}/{}", gvk.group, gvk.version) };
    let Some(entry) = crate::kinds::by_type(&api_version, &gvk.kind) else { return Ok(()) };
    if !matches!(entry.kind().role(), Role::Policy | Role::Settings | Role::Roots) {
        return Ok(());
    }
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let object = entry.admit(value).map_err(|e| match e {
        ReadError::Schema(e) => format!("E7014: the {} does not match its schema: {e}", gvk.kind),
        other => other.to_string(),
    })?;
    let policy = messages::policy::compute_objects(std::slice::from_ref(&object), |_| true);
    let problems: Vec<String> = policy
        .errors
        .iter()
        .filter(|e| SELF_CONTAINED.contains(&e.code))
        .map(|e| format!("{}: {}: {}", e.code, e.object, e.reason))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
