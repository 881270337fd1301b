//! The admission webhooks (AdmissionReview v1), as an axum router the controller serves over HTTPS:
//!
//! - `POST /mutate-pod-creation`: sidecar injection ([`crate::inject`]); creates the pod's bootstrap
//!   Secret (not on a dry run) and answers with the JSON patch.
//! - `POST /validate`: the mesh's own kinds (SMI, MeshConfig) refused at the door when they could never
//!   be in force — a misspelt field, a name the mesh cannot use, a TrafficTarget outside its destination's
//!   namespace, an invalid regex — with the message (and stable code) the controller would otherwise log.
//!
//! Bodies are bounded ([`MAX_REVIEW_BYTES`]); a body that is not an AdmissionReview gets `400` with the
//! reason, never a crash.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use certs::CertificateAuthority;
use k8s_openapi::api::core::v1 as core;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use messages::ProxyUuid;
use serde_json::Value;

use crate::convert;
use crate::crds;
use crate::inject::{self, Decision, InjectorSettings};
use crate::watch::MESH_CONFIG_NAME;

/// Largest AdmissionReview read (the API server's own object limit is about 1.5 MiB).
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

/// Told (the object's kind, allowed) for every review answered (metrics).
pub type Observer = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// What the webhooks need: the cluster (namespaces, the MeshConfig, bootstrap Secrets), the CA that signs
/// sidecars' xDS certificates, and the injector's settings.
#[derive(Clone)]
pub struct WebhookState {
    pub client: kube::Client,
    pub ca: Arc<CertificateAuthority>,
    pub settings: InjectorSettings,
    /// Called with (the object's kind, allowed) for every review answered (metrics).
    pub observe: Observer,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState").field("settings", &self.settings).finish_non_exhaustive()
    }
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate-pod-creation", post(mutate))
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

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("E7010: not an AdmissionReview v1: {reason}\n")).into_response()
}

/// The review's request, or why the body is not one (answered with 400).
pub fn parse<T>(body: &[u8]) -> Result<AdmissionRequest<T>, String>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<T> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    review.try_into().map_err(|_| "it has no request".to_owned())
}

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let req: AdmissionRequest<core::Pod> = match parse(&body) {
        Ok(r) => r,
        Err(reason) => return bad_request(reason),
    };
    let resp = match injection(&state, &req).await {
        Ok(resp) => resp,
        Err(reason) => {
            tracing::warn!(uid = %req.uid, namespace = ?req.namespace, "sidecar injection refused: {reason}");
            AdmissionResponse::from(&req).deny(reason)
        }
    };
    (state.observe)("Pod", resp.allowed);
    review_response(resp)
}

async fn injection(state: &WebhookState, req: &AdmissionRequest<core::Pod>) -> Result<AdmissionResponse, String> {
    let pod = req.object.as_ref().ok_or("the request carries no pod")?;
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
    let injection = tokio::task::spawn_blocking(move || inject::inject(&pod, &ns_name, &ns, &ca, &settings, uuid))
        .await
        .map_err(|e| format!("E7003: injection failed: {e}"))?
        .map_err(|e| e.to_string())?;
    if !req.dry_run {
        Api::<core::Secret>::namespaced(state.client.clone(), &namespace)
            .create(&PostParams::default(), &injection.secret)
            .await
            .map_err(|e| format!("E7012: cannot create the bootstrap Secret in {namespace:?}: {e}"))?;
    }
    tracing::info!(
        namespace,
        pod = ?req.object.as_ref().and_then(|p| p.metadata.name.clone().or(p.metadata.generate_name.clone())),
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

async fn validate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let req: AdmissionRequest<DynamicObject> = match parse(&body) {
        Ok(r) => r,
        Err(reason) => return bad_request(reason),
    };
    let resp = match req.object.as_ref().map(|o| check_object(&req.kind.kind, o)) {
        None | Some(Ok(())) => AdmissionResponse::from(&req),
        Some(Err(reason)) => AdmissionResponse::from(&req).deny(reason),
    };
    (state.observe)(&req.kind.kind, resp.allowed);
    review_response(resp)
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

/// Why an object of the mesh's kinds could never be in force, if so.
pub fn check_object(kind: &str, obj: &DynamicObject) -> Result<(), String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    fn typed<T: serde::de::DeserializeOwned>(kind: &str, v: Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| format!("{kind}: {e}"))
    }
    let (mut targets, mut groups, mut routes, mut splits) = (vec![], vec![], vec![], vec![]);
    let conv = |e: convert::ConvertError| e.to_string();
    match kind {
        "TrafficTarget" => targets.push(convert::traffic_target(&typed(kind, value)?).map_err(conv)?),
        "HTTPRouteGroup" => groups.push(convert::http_route_group(&typed(kind, value)?).map_err(conv)?),
        "TCPRoute" => routes.push(convert::tcp_route(&typed(kind, value)?).map_err(conv)?),
        "TrafficSplit" => splits.push(convert::traffic_split(&typed(kind, value)?).map_err(conv)?),
        "MeshConfig" => {
            let mc: crds::MeshConfig = typed(kind, value)?;
            convert::mesh_config(&mc).map_err(conv)?;
            InjectorSettings::new("osm", "osm-system").with_mesh_config(&mc.spec).map_err(|e| e.to_string())?;
            return Ok(());
        }
        _ => return Ok(()),
    }
    let policy = messages::policy::compute(&targets, &groups, &routes, &splits, |_| true);
    let problems: Vec<String> = policy
        .errors
        .iter()
        .filter(|e| SELF_CONTAINED.contains(&e.code))
        .map(|e| format!("{}: {}: {}", e.code, e.object, e.reason))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
