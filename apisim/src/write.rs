//! Writes: what a create, update, patch, apply or delete makes of the stored object, the metadata the
//! server owns, the pipeline of a request over HTTP (CRD schema, mutating admission, schema validation,
//! validating admission) and the commit that stores the result and tells the watches.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::fields::{self, Owners};
use crate::http::{ApiError, FieldValidation, Query, Target, api_error, not_found};
use crate::{CRDS, Change, Key, Note, Resource, State, Store, admission, patch, proto, scale, schema, watch};

/// What a write does to an object, as admission names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// A write worked out against the store as it was, not stored yet.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) status: StatusCode,
    pub(crate) key: Key,
    pub(crate) operation: Operation,
    pub(crate) old: Option<Arc<Value>>,
    /// `None` for a delete.
    pub(crate) new: Option<Value>,
    pub(crate) manager: String,
    pub(crate) subresource: Option<String>,
    /// The configuration a server-side apply applied.
    pub(crate) apply: Option<Value>,
    /// The CustomResourceDefinition of a custom resource.
    pub(crate) crd: Option<Arc<Value>>,
    pub(crate) warnings: Vec<String>,
}

/// The answer to a write.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    pub(crate) warnings: Vec<String>,
}

/// How often a write over HTTP is worked out again when the object changed during its admission.
const RETRIES: usize = 5;

/// The field manager of a request: `fieldManager`, else the client's name from its User-Agent.
fn manager_of(query: &Query, headers: &HeaderMap) -> String {
    let agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let from_agent = agent.split('/').next().unwrap_or_default().trim();
    query.field_manager.clone().unwrap_or_else(|| if from_agent.is_empty() { "unknown" } else { from_agent }.to_owned())
}

fn bad(message: String) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn parse_object(body: &[u8], yaml: bool) -> Result<Value, ApiError> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) if yaml => {
            let text = std::str::from_utf8(body).map_err(|e| bad(format!("the request body is not UTF-8: {e}")))?;
            serde_saphyr::from_str(text).map_err(|e| bad(format!("the request body is not YAML: {e}")))?
        }
        Err(e) => return Err(bad(format!("the request body is not JSON: {e}"))),
    };
    if v.is_object() { Ok(v) } else { Err(bad("the request body is not an object".to_owned())) }
}

/// A create or update body: JSON, or protobuf for the few kinds [`proto`] decodes (else 415).
fn object_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let unsupported = |why: String| {
        api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json ({why})"
            ),
        )
    };
    match content_type.split(';').next().unwrap_or_default().trim() {
        "" | "application/json" | "*/*" => parse_object(body, false),
        "application/vnd.kubernetes.protobuf" => proto::decode(body).map_err(unsupported),
        other => Err(unsupported(format!("not {other}"))),
    }
}

/// Works out a write against `store` without changing it.
pub(crate) fn prepare(
    state: &State,
    store: &Store,
    method: &Method,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Prepared, ApiError> {
    let id = target.resource.id();
    let key_of = |name: &str| Key { resource: id.clone(), namespace: target.namespace.clone(), name: name.to_owned() };
    let crd = store.crd(&target.resource.group, &target.resource.plural);
    let manager = manager_of(query, headers);
    let mut apply = None;
    let (status, operation, name, old, new) = match (method, &target.name) {
        (&Method::POST, None) => {
            let obj = object_body(headers, body)?;
            let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or_default();
            if !body_ns.is_empty() && body_ns != target.namespace {
                return Err(bad(format!(
                    "the namespace of the provided object does not match the namespace sent on the request ({body_ns} \
                     vs {})",
                    target.namespace
                )));
            }
            let name =
                match (meta.get("name").and_then(Value::as_str), meta.get("generateName").and_then(Value::as_str)) {
                    (Some(n), _) if !n.is_empty() => n.to_owned(),
                    (_, Some(prefix)) => format!("{prefix}{:05x}", state.next_uid()),
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
            (StatusCode::CREATED, Operation::Create, name, None, Some(obj))
        }
        (&Method::PUT, Some(name)) => {
            let obj = object_body(headers, body)?;
            let old = store.objects.get(&key_of(name)).cloned().ok_or_else(|| not_found(target, name))?;
            check_version(&obj, &old, target, name)?;
            (StatusCode::OK, Operation::Update, name.clone(), Some(old), Some(obj))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type =
                headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let old = store.objects.get(&key_of(name)).cloned();
            let applying = content_type.starts_with("application/apply-patch");
            let scaling = target.subresource.as_deref() == Some("scale");
            let mut obj = match (&old, applying) {
                (Some(o), _) if scaling => scale::of(o, crd.as_deref(), &target.resource.version),
                (Some(o), _) => (**o).clone(),
                (None, true) => json!({}),
                (None, false) => return Err(not_found(target, name)),
            };
            let unsupported = || {
                api_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                        if crd.is_some() { "" } else { ", application/strategic-merge-patch+json" }
                    ),
                )
            };
            let invalid = |e: String| api_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
            if content_type.starts_with("application/json-patch+json") {
                let ops: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| bad(format!("the request body is not a JSON patch: {e}")))?;
                json_patch::patch(&mut obj, &ops).map_err(|e| invalid(e.to_string()))?;
            } else if content_type.starts_with("application/merge-patch+json") {
                json_patch::merge(&mut obj, &parse_object(body, false)?);
            } else if content_type.starts_with("application/strategic-merge-patch+json") {
                if crd.is_some() {
                    return Err(unsupported());
                }
                patch::strategic(&mut obj, &parse_object(body, false)?, true).map_err(invalid)?;
            } else if applying {
                let config = parse_object(body, true)?;
                let owners = store.owners.get(&key_of(name));
                let keyed = crd.is_none();
                let applier = fields::Manager::new(&manager, true, target.subresource.as_deref());
                fields::check_apply(&obj, &config, owners, &applier, query.force, keyed)?;
                fields::disown(&mut obj, &config, owners, &applier, keyed);
                patch::strategic(&mut obj, &config, keyed).map_err(invalid)?;
                apply = Some(config);
            } else {
                return Err(unsupported());
            }
            if let Some(o) = &old {
                check_version(&obj, o, target, name)?;
            }
            let (status, operation) = if old.is_some() {
                (StatusCode::OK, Operation::Update)
            } else {
                (StatusCode::CREATED, Operation::Create)
            };
            (status, operation, name.clone(), old, Some(obj))
        }
        (&Method::DELETE, Some(name)) => {
            let old = store.objects.get(&key_of(name)).cloned().ok_or_else(|| not_found(target, name))?;
            (StatusCode::OK, Operation::Delete, name.clone(), Some(old), None)
        }
        _ => {
            return Err(api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on this path"),
            ));
        }
    };
    let key = key_of(&name);
    let new = new.map(|mut obj| {
        let with_status = crd.as_deref().is_some_and(|c| schema::has_status(c, &target.resource.version));
        match (target.subresource.as_deref(), old.as_deref()) {
            (Some("scale"), Some(o)) => obj = scale::apply(o, &obj, crd.as_deref(), &target.resource.version),
            // Only the subresource's part of the body is written (status, ...).
            (Some(sub), Some(o)) => {
                let part = obj.get(sub).cloned().unwrap_or(Value::Null);
                obj = o.clone();
                obj[sub] = part;
            }
            // With a status subresource, the main resource's writes leave the status alone.
            (None, o) if with_status => match o.and_then(|o| o.get("status")) {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    obj.as_object_mut().map(|m| m.remove("status"));
                }
            },
            _ => {}
        }
        set_meta(state, &key, &mut obj, old.as_deref());
        if let Some(storage) = crd.as_deref().and_then(schema::storage_version) {
            obj["apiVersion"] = json!(format!("{}/{storage}", target.resource.group));
        }
        if key.resource.0 == CRDS.0 && key.resource.1 == CRDS.1 {
            schema::establish(&mut obj, old.as_deref(), &state.now_rfc3339());
        }
        obj
    });
    let subresource = target.subresource.clone();
    Ok(Prepared { status, key, operation, old, new, manager, subresource, apply, crd, warnings: Vec::new() })
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

/// Fills the metadata the server owns: name, namespace, uid, creation time, generation; and a
/// Namespace's `kubernetes.io/metadata.name` label.
fn set_meta(state: &State, key: &Key, obj: &mut Value, old: Option<&Value>) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    meta["name"] = json!(key.name);
    if !key.namespace.is_empty() {
        meta["namespace"] = json!(key.namespace);
    }
    if key.resource.0.is_empty() && key.resource.1 == "namespaces" {
        if !meta.get("labels").is_some_and(Value::is_object) {
            meta["labels"] = json!({});
        }
        meta["labels"]["kubernetes.io/metadata.name"] = json!(key.name);
    }
    let (uid, created, generation) = match old {
        Some(o) => (
            o.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
            o.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1)
                + u64::from(o.get("spec") != obj.get("spec")),
        ),
        None => {
            let n = state.next_uid();
            (json!(format!("00000000-0000-4000-8000-{n:012x}")), json!(state.now_rfc3339()), 1)
        }
    };
    let meta = &mut obj["metadata"];
    meta["uid"] = uid;
    meta["creationTimestamp"] = created;
    meta["generation"] = json!(generation);
}

/// Stores a prepared write (unless a dry run) and tells the watches; returns the status and the object.
pub(crate) fn commit(state: &State, store: &mut Store, p: Prepared, dry_run: bool) -> (StatusCode, Value) {
    if let Some(kind) = p.new.as_ref().and_then(|n| n.get("kind")).and_then(Value::as_str) {
        store.kinds.entry(p.key.resource.clone()).or_insert_with(|| kind.to_owned());
    }
    if dry_run {
        return (p.status, p.new.or(p.old.map(|o| (*o).clone())).unwrap_or(Value::Null));
    }
    store.rv += 1;
    let rv = store.rv;
    let new = p.new.map(|mut n| {
        let write = fields::Write {
            manager: fields::Manager::new(&p.manager, p.apply.is_some(), p.subresource.as_deref()),
            apply: p.apply.as_ref(),
            api_version: n.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned(),
            time: state.now_rfc3339(),
            keyed: p.crd.is_none(),
        };
        // Managed fields a client wrote (other than those it read) are the ownership from now on.
        let sent = n.pointer("/metadata/managedFields").filter(|m| m.is_array());
        let had = p.old.as_deref().and_then(|o| o.pointer("/metadata/managedFields"));
        let before = match sent {
            Some(sent) if Some(sent) != had => Some(Owners::parse(sent)),
            _ => store.owners.get(&p.key).cloned(),
        };
        let owners = fields::update(before.as_ref(), p.old.as_deref(), &n, &write);
        n["metadata"]["resourceVersion"] = json!(rv.to_string());
        if owners == Owners::default() {
            n["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
        } else {
            n["metadata"]["managedFields"] = fields::render(&owners);
        }
        store.owners.insert(p.key.clone(), owners);
        Arc::new(n)
    });
    match &new {
        Some(n) => {
            store.objects.insert(p.key.clone(), n.clone());
        }
        None => {
            store.objects.remove(&p.key);
            store.owners.remove(&p.key);
        }
    }
    let is_crd = p.key.resource.0 == CRDS.0 && p.key.resource.1 == CRDS.1;
    publish(state, store, Change { rv, resource: p.key.resource, old: p.old.clone(), new: new.clone() });
    if let (true, None, Some(crd)) = (is_crd, &new, &p.old) {
        delete_instances(state, store, crd);
    }
    (p.status, new.or(p.old).map(|v| (*v).clone()).unwrap_or(Value::Null))
}

/// Keeps a change for watches resuming from before it, and tells the watching ones.
fn publish(state: &State, store: &mut Store, change: Change) {
    let change = Arc::new(change);
    store.history.push_back(change.clone());
    while store.history.len() > state.options.history {
        if let Some(c) = store.history.pop_front() {
            store.history_floor = c.rv;
        }
    }
    let _ = state.notes.send(Note::Change(change));
}

/// A deleted CustomResourceDefinition takes its custom resources with it.
fn delete_instances(state: &State, store: &mut Store, crd: &Value) {
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    let id = (s("/spec/group"), s("/spec/names/plural"));
    let keys: Vec<Key> = store.of_resource(&id).map(|(k, _)| k.clone()).collect();
    for key in keys {
        let old = store.objects.remove(&key);
        store.owners.remove(&key);
        store.rv += 1;
        let rv = store.rv;
        publish(state, store, Change { rv, resource: key.resource, old, new: None });
    }
}

/// [`crate::ApiServer::put`]: create or replace, without admission or schemas.
pub(crate) fn put(state: &State, resource: &Resource, object: Value) -> Result<Value, ApiError> {
    let str_at = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (namespace, name) = (str_at("/metadata/namespace"), str_at("/metadata/name"));
    let body = serde_json::to_vec(&object).map_err(|e| bad(e.to_string()))?;
    let mut store = state.store();
    let key = Key { resource: resource.id(), namespace: namespace.clone(), name: name.clone() };
    let exists = store.objects.contains_key(&key);
    let method = if exists { Method::PUT } else { Method::POST };
    let target = Target { resource: resource.clone(), namespace, name: exists.then_some(name), subresource: None };
    let p = prepare(state, &store, &method, &target, &Query::default(), &HeaderMap::new(), &body)?;
    Ok(commit(state, &mut store, p, false).1)
}

/// [`crate::ApiServer::remove`]: delete without admission; false when there was nothing.
pub(crate) fn remove(state: &State, resource: &Resource, namespace: &str, name: &str) -> bool {
    let target = Target {
        resource: resource.clone(),
        namespace: namespace.to_owned(),
        name: Some(name.to_owned()),
        subresource: None,
    };
    let mut store = state.store();
    match prepare(state, &store, &Method::DELETE, &target, &Query::default(), &HeaderMap::new(), &[]) {
        Ok(p) => {
            commit(state, &mut store, p, false);
            true
        }
        Err(_) => false,
    }
}

/// A write over HTTP, as the API server handles it: worked out, then the custom resource's schema
/// (pruning, defaulting, `fieldValidation`), mutating admission, the schema's validation, validating
/// admission, and the commit — again from the start if the object changed meanwhile.
pub(crate) async fn admitted(
    state: &Arc<State>,
    method: &Method,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Written, ApiError> {
    for _ in 0..RETRIES {
        let (mut p, attributes, hooks) = {
            let store = state.store();
            let p = prepare(state, &store, method, target, query, headers, body)?;
            let attributes = admission::Attributes::of(&store, target, &p, query.dry_run);
            let hooks = admission::Hooks::take(&store, &attributes, p.new.as_ref(), p.old.as_deref());
            (p, attributes, hooks)
        };
        let openapi = p.crd.as_deref().and_then(|c| schema::openapi_schema(c, &target.resource.version)).cloned();
        let kind = (attributes.kind.clone(), target.resource.group.clone(), p.key.name.clone());
        if let (Some(openapi), Some(new)) = (&openapi, p.new.as_mut()) {
            let unknown = schema::prune_and_default(openapi, new);
            match query.field_validation {
                FieldValidation::Strict if !unknown.is_empty() => {
                    return Err(schema::strict_error(&kind.0, &target.resource.version, p.operation, &unknown));
                }
                FieldValidation::Warn => p.warnings.extend(unknown.iter().map(|f| format!("unknown field {f:?}"))),
                _ => {}
            }
        }
        admission::mutate(state, &attributes, &hooks, &mut p).await?;
        if let (Some(openapi), Some(new)) = (&openapi, p.new.as_mut()) {
            schema::prune_and_default(openapi, new);
            let errors = schema::validate(openapi, new);
            if !errors.is_empty() {
                return Err(schema::invalid(&kind.0, &kind.1, &kind.2, &errors));
            }
        }
        if p.key.resource.0 == CRDS.0
            && p.key.resource.1 == CRDS.1
            && let Some(new) = &p.new
        {
            let errors = schema::validate_crd(new);
            if !errors.is_empty() {
                return Err(schema::invalid("CustomResourceDefinition", CRDS.0, &p.key.name, &errors));
            }
        }
        admission::validate(state, &attributes, &hooks, &mut p).await?;
        let mut store = state.store();
        let unchanged = match (store.objects.get(&p.key), &p.old) {
            (None, None) => true,
            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
            _ => false,
        };
        if unchanged {
            let warnings = std::mem::take(&mut p.warnings);
            let (status, body) = commit(state, &mut store, p, query.dry_run);
            return Ok(Written { status, body, warnings });
        }
    }
    Err(api_error(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}.{}: the object kept changing",
            target.resource.plural, target.resource.group
        ),
    ))
}

/// `DELETE` of a collection: each object it selects deleted as on its own (through admission).
pub(crate) async fn delete_collection(
    state: &Arc<State>,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Value, ApiError> {
    let objects = watch::matching(&state.store(), target, query)?;
    let mut deleted = Vec::new();
    for obj in objects {
        let str_at = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        let one =
            Target { namespace: str_at("/metadata/namespace"), name: Some(str_at("/metadata/name")), ..target.clone() };
        match admitted(state, &Method::DELETE, &one, query, headers, &[]).await {
            Ok(w) => deleted.push(w.body),
            Err(e) if e.status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    let store = state.store();
    Ok(json!({
        "apiVersion": target.resource.api_version(),
        "kind": format!("{}List", store.kind(&target.resource)),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": deleted,
    }))
}
