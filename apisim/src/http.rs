//! The HTTP side: routing of discovery, OpenAPI, reads, writes and port-forwards; paths and query
//! parameters; the API's `Status` errors.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::{Dialer, Key, Resource, State, discovery, portforward, scale, watch, write};

pub(crate) fn router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/namespaces/{namespace}/pods/{name}/portforward", axum::routing::any(port_forward))
        .fallback(handle)
        .with_state(state)
}

/// What a request path names.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) resource: Resource,
    /// `""` for cluster-scoped resources and for lists across namespaces.
    pub(crate) namespace: String,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

pub(crate) fn parse_path(path: &str) -> Option<Target> {
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

/// How unknown fields of a custom resource are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    /// The server's default.
    #[default]
    Warn,
    Strict,
}

#[derive(Debug, Default)]
pub(crate) struct Query {
    pub(crate) watch: bool,
    pub(crate) resource_version: Option<String>,
    pub(crate) label_selector: Option<String>,
    pub(crate) field_selector: Option<String>,
    pub(crate) timeout_s: Option<u64>,
    pub(crate) bookmarks: bool,
    pub(crate) send_initial_events: bool,
    pub(crate) dry_run: bool,
    pub(crate) field_manager: Option<String>,
    pub(crate) force: bool,
    pub(crate) field_validation: FieldValidation,
}

pub(crate) fn parse_query(q: Option<&str>) -> Result<Query, ApiError> {
    let mut out = Query::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => out.resource_version = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "labelSelector" => out.label_selector = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "fieldSelector" => out.field_selector = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "timeoutSeconds" => out.timeout_s = v.parse().ok(),
            "allowWatchBookmarks" => out.bookmarks = v == "true" || v == "1",
            "sendInitialEvents" => out.send_initial_events = v == "true",
            "dryRun" => out.dry_run = v == "All",
            "fieldManager" => out.field_manager = Some(v.into_owned()).filter(|v| !v.is_empty()),
            "force" => out.force = v == "true",
            "fieldValidation" => {
                out.field_validation = match v.as_ref() {
                    "Ignore" => FieldValidation::Ignore,
                    "Warn" | "" => FieldValidation::Warn,
                    "Strict" => FieldValidation::Strict,
                    other => {
                        return Err(api_error(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            format!(
                                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", not {other:?}"
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

pub(crate) fn api_error(status: StatusCode, reason: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": status.as_u16(),
    });
    if reason.is_empty() {
        body.as_object_mut().map(|b| b.remove("reason"));
    }
    ApiError { status, body }
}

pub(crate) fn not_found(t: &Target, name: &str) -> ApiError {
    api_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{}.{} \"{name}\" not found", t.resource.plural, t.resource.group),
    )
}

fn no_such_path() -> ApiError {
    api_error(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource")
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `obj` shown at `api_version` (a custom resource is stored at its storage version and served at the
/// version asked for).
pub(crate) fn served_as<'a>(api_version: Option<&str>, obj: &'a Value) -> Cow<'a, Value> {
    match api_version {
        Some(v) if obj.get("apiVersion").and_then(Value::as_str) != Some(v) && obj.is_object() => {
            let mut o = obj.clone();
            o["apiVersion"] = json!(v);
            Cow::Owned(o)
        }
        _ => Cow::Borrowed(obj),
    }
}

fn record(state: &State, method: &Method, uri: &Uri) {
    if let Ok(mut r) = state.requests.lock() {
        r.push((method.clone(), uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.to_string())));
    }
}

/// `GET /api/v1/namespaces/<ns>/pods/<name>/portforward?ports=...` with a WebSocket upgrade.
async fn port_forward(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
    mut request: axum::extract::Request,
) -> Response {
    let uri = request.uri().clone();
    record(&state, request.method(), &uri);
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

/// Discovery, OpenAPI and health paths; `None` for anything else.
fn discover(state: &State, uri: &Uri, headers: &HeaderMap) -> Option<Result<Response, ApiError>> {
    let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let ok = |v: Option<Value>| v.map(|v| json_response(StatusCode::OK, &v)).ok_or_else(no_such_path);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let aggregated = accept.contains("as=APIGroupDiscoveryList");
    let served = || state.store().served();
    let aggregated_response = |core: bool| {
        const TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        let body = discovery::aggregated(&served(), core).to_string();
        Ok((StatusCode::OK, [(header::CONTENT_TYPE, TYPE), (header::VARY, "Accept")], body).into_response())
    };
    let found = match segs.as_slice() {
        ["version"] => ok(Some(discovery::version())),
        ["healthz" | "livez" | "readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] if aggregated => aggregated_response(true),
        ["apis"] if aggregated => aggregated_response(false),
        ["api"] => ok(Some(discovery::core_versions(&headers_host(headers)))),
        ["apis"] => ok(Some(discovery::groups(&served()))),
        ["api", version] => ok(discovery::resource_list(&served(), "", version)),
        ["apis", group] => ok(discovery::group(&served(), group)),
        ["apis", group, version] => ok(discovery::resource_list(&served(), group, version)),
        ["openapi", "v3"] => ok(Some(discovery::openapi_root(&served()))),
        ["openapi", "v3", "api", version] => ok(discovery::openapi_gv(&served(), "", version)),
        ["openapi", "v3", "apis", group, version] => ok(discovery::openapi_gv(&served(), group, version)),
        ["openapi", ..] => Err(no_such_path()),
        _ => return None,
    };
    Some(found)
}

fn headers_host(headers: &HeaderMap) -> String {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned()
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, &method, &uri);
    let result = if method == Method::GET
        && let Some(found) = discover(&state, &uri, &headers)
    {
        found
    } else {
        serve(&state, &method, &uri, &headers, &body).await
    };
    result.unwrap_or_else(|e| json_response(e.status, &e.body))
}

async fn serve(
    state: &Arc<State>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let target = parse_path(uri.path()).ok_or_else(no_such_path)?;
    let query = parse_query(uri.query())?;
    // A custom resource is served only at its CRD's served versions.
    let crd = state.store().crd(&target.resource.group, &target.resource.plural);
    if crd.as_deref().is_some_and(|c| !crate::schema::served(c, &target.resource.version)) {
        return Err(no_such_path());
    }
    let shown_as = crd.as_ref().map(|_| target.resource.api_version());
    // The scale subresource is read and written as a Scale.
    let show = |v: &Value| match target.subresource.as_deref() {
        Some("scale") => scale::of(v, crd.as_deref(), &target.resource.version),
        _ => served_as(shown_as.as_deref(), v).into_owned(),
    };
    let (status, value, warnings) = match (method, &target.name) {
        (&Method::GET, None) if query.watch => return Ok(watch::watch(state, &target, &query)),
        (&Method::GET, None) => (StatusCode::OK, watch::list(state, &target, &query)?, Vec::new()),
        (&Method::GET, Some(name)) => {
            let key = Key { resource: target.resource.id(), namespace: target.namespace.clone(), name: name.clone() };
            let found = state.store().objects.get(&key).cloned();
            (StatusCode::OK, show(&*found.ok_or_else(|| not_found(&target, name))?), Vec::new())
        }
        (&Method::DELETE, None) => {
            (StatusCode::OK, write::delete_collection(state, &target, &query, headers).await?, Vec::new())
        }
        _ => {
            let w = write::admitted(state, method, &target, &query, headers, body).await?;
            (w.status, show(&w.body), w.warnings)
        }
    };
    let mut response = json_response(status, &value);
    for w in warnings {
        let text = format!("299 - {:?}", w.replace(['\r', '\n'], " "));
        if let Ok(v) = HeaderValue::from_str(&text) {
            response.headers_mut().append("Warning", v);
        }
    }
    Ok(response)
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
    fn field_validation_is_one_of_three() {
        assert_eq!(parse_query(Some("fieldValidation=Strict")).unwrap().field_validation, FieldValidation::Strict);
        assert_eq!(parse_query(None).unwrap().field_validation, FieldValidation::Warn);
        assert_eq!(parse_query(Some("fieldValidation=Loose")).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
