//! Admission webhooks, called as the API server calls them for requests over HTTP: on a create, update
//! or delete, every stored MutatingWebhookConfiguration (by name, each webhook in order), then every
//! ValidatingWebhookConfiguration, whose webhook matches the request — `rules` (apiGroups, apiVersions,
//! operations, resources with `*` and subresources, scope), `namespaceSelector` (over the labels of the
//! object's Namespace, which always carry `kubernetes.io/metadata.name`) and `objectSelector` — gets an
//! AdmissionReview v1 over HTTPS ([`crate::webhook`]), trusting only its `clientConfig.caBundle`.
//!
//! `clientConfig.service` is reached through the [`ServiceResolver`] a test gives
//! ([`crate::ApiServer::resolve_services_with`]); `clientConfig.url` as it is. A call that fails is
//! refused with 500 under `failurePolicy: Fail` (the default) and ignored under `Ignore`; a denial refuses
//! the write with the webhook's status code (at least 400); a mutating webhook's JSONPatch is applied;
//! `timeoutSeconds` (default 10) bounds each call; a dry run reaches only webhooks declaring
//! `sideEffects: None` or `NoneOnDryRun` and fails on the others. Webhook configurations themselves are
//! never subject to webhooks. Not simulated: `matchPolicy: Equivalent` (every match is exact),
//! `matchConditions`, `reinvocationPolicy`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::http::{ApiError, Target, api_error};
use crate::write::{Operation, Prepared};
use crate::{Key, State, Store, webhook};

/// The address of a service's port (`namespace`, `name`, `port`), or `None` when it has no endpoints.
pub type ServiceResolver = Arc<dyn Fn(&str, &str, u16) -> Option<SocketAddr> + Send + Sync>;

/// A [`ServiceResolver`] in the simulator's state (which is `Debug`).
#[derive(Clone)]
pub(crate) struct Resolver(pub(crate) ServiceResolver);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceResolver")
    }
}

const MUTATING: (&str, &str) = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations");
const VALIDATING: (&str, &str) = ("admissionregistration.k8s.io", "validatingwebhookconfigurations");

/// What admission knows of a request.
#[derive(Debug, Clone)]
pub(crate) struct Attributes {
    group: String,
    version: String,
    plural: String,
    subresource: Option<String>,
    pub(crate) kind: String,
    namespaced: bool,
    namespace: String,
    name: String,
    operation: Operation,
    dry_run: bool,
    manager: String,
}

impl Attributes {
    pub(crate) fn of(store: &Store, target: &Target, p: &Prepared, dry_run: bool) -> Self {
        let described = store.describe(&target.resource);
        Self {
            group: target.resource.group.clone(),
            version: target.resource.version.clone(),
            plural: target.resource.plural.clone(),
            subresource: target.subresource.clone(),
            kind: described.as_ref().map(|d| d.kind.clone()).unwrap_or_else(|| store.kind(&target.resource)),
            namespaced: described.map(|d| d.namespaced).unwrap_or(!p.key.namespace.is_empty()),
            namespace: p.key.namespace.clone(),
            name: p.key.name.clone(),
            operation: p.operation,
            dry_run,
            manager: p.manager.clone(),
        }
    }
}

/// The webhooks whose rules and namespace selector match one request, mutating and validating.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    mutating: Vec<Value>,
    validating: Vec<Value>,
}

type Labels = serde_json::Map<String, Value>;

fn labels_of(obj: Option<&Value>) -> Labels {
    obj.and_then(|o| o.pointer("/metadata/labels")).and_then(Value::as_object).cloned().unwrap_or_default()
}

impl Hooks {
    pub(crate) fn take(store: &Store, a: &Attributes, new: Option<&Value>, old: Option<&Value>) -> Self {
        let mut hooks = Self::default();
        if [MUTATING, VALIDATING].iter().any(|(g, p)| a.group == *g && a.plural == *p) {
            return hooks;
        }
        // The labels a namespaceSelector sees: the Namespace's own for a Namespace, none to see for
        // other cluster-scoped objects.
        let namespace_labels = if a.group.is_empty() && a.plural == "namespaces" {
            Some(labels_of(new.or(old)))
        } else if a.namespaced {
            let key = Key {
                resource: (String::new(), "namespaces".to_owned()),
                namespace: String::new(),
                name: a.namespace.clone(),
            };
            let mut labels = labels_of(store.objects.get(&key).map(|n| &**n));
            labels.insert("kubernetes.io/metadata.name".to_owned(), json!(a.namespace));
            Some(labels)
        } else {
            None
        };
        for (resource, into) in [(MUTATING, &mut hooks.mutating), (VALIDATING, &mut hooks.validating)] {
            let id = (resource.0.to_owned(), resource.1.to_owned());
            for (_, config) in store.of_resource(&id) {
                for hook in config["webhooks"].as_array().into_iter().flatten() {
                    let selected =
                        namespace_labels.as_ref().is_none_or(|labels| selects(&hook["namespaceSelector"], labels));
                    if selected && hook["rules"].as_array().into_iter().flatten().any(|r| rule_matches(r, a)) {
                        into.push(hook.clone());
                    }
                }
            }
        }
        hooks
    }
}

fn any_is(list: &Value, wanted: &str) -> bool {
    list.as_array().into_iter().flatten().filter_map(Value::as_str).any(|v| v == "*" || v == wanted)
}

fn rule_matches(rule: &Value, a: &Attributes) -> bool {
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !a.namespaced,
        "Namespaced" => a.namespaced,
        _ => true,
    };
    let resource_ok = rule["resources"].as_array().into_iter().flatten().filter_map(Value::as_str).any(|pattern| {
        let (res, sub) = pattern.split_once('/').map_or((pattern, None), |(r, s)| (r, Some(s)));
        let res_ok = res == "*" || res == a.plural;
        match (sub, a.subresource.as_deref()) {
            (None, None) => res_ok,
            (Some(s), Some(actual)) => res_ok && (s == "*" || s == actual),
            _ => false,
        }
    });
    scope_ok
        && resource_ok
        && any_is(&rule["apiGroups"], &a.group)
        && any_is(&rule["apiVersions"], &a.version)
        && any_is(&rule["operations"], a.operation.as_str())
}

/// A LabelSelector (`matchLabels`, `matchExpressions` with In, NotIn, Exists, DoesNotExist); none selects
/// everything.
fn selects(selector: &Value, labels: &Labels) -> bool {
    let value = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_label = selector["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| value(k) == v.as_str());
    let by_expression = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match e["operator"].as_str() {
            Some("In") => value(key).is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value(key).is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value(key).is_some(),
            Some("DoesNotExist") => value(key).is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

/// Calls the matching mutating webhooks in turn, applying their patches to the object.
pub(crate) async fn mutate(state: &State, a: &Attributes, hooks: &Hooks, p: &mut Prepared) -> Result<(), ApiError> {
    for hook in &hooks.mutating {
        let Some(answer) = admit(state, a, hook, p.new.as_ref(), p.old.as_deref()).await? else { continue };
        let patched = apply_patch(&answer, p.new.as_ref());
        match patched {
            Ok(Some(patched)) => p.new = Some(patched),
            Ok(None) => {}
            Err(reason) => fail(hook, reason)?,
        }
        p.warnings.extend(warnings(&answer));
    }
    Ok(())
}

/// Calls the matching validating webhooks (together); the first refusal, in order, refuses the write.
pub(crate) async fn validate(state: &State, a: &Attributes, hooks: &Hooks, p: &mut Prepared) -> Result<(), ApiError> {
    let calls = hooks.validating.iter().map(|hook| admit(state, a, hook, p.new.as_ref(), p.old.as_deref()));
    for answer in futures::future::join_all(calls).await {
        if let Some(answer) = answer? {
            p.warnings.extend(warnings(&answer));
        }
    }
    Ok(())
}

fn warnings(answer: &Value) -> Vec<String> {
    answer["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

fn hook_name(hook: &Value) -> &str {
    hook["name"].as_str().unwrap_or_default()
}

/// A failed call under the webhook's failure policy: `Ok` (ignored) or the 500 the API server answers.
fn fail(hook: &Value, reason: String) -> Result<(), ApiError> {
    let message = format!("failed calling webhook {:?}: {reason}", hook_name(hook));
    if hook["failurePolicy"].as_str() == Some("Ignore") {
        tracing::warn!(%message, "admission webhook failed; ignored (failurePolicy: Ignore)");
        return Ok(());
    }
    let mut e =
        api_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("Internal error occurred: {message}"));
    e.body["details"] = json!({"causes": [{"message": message}]});
    Err(e)
}

/// One webhook's answer when it allowed the request (`None` when its call failed and is ignored);
/// `Err` when the request is refused.
async fn admit(
    state: &State,
    a: &Attributes,
    hook: &Value,
    new: Option<&Value>,
    old: Option<&Value>,
) -> Result<Option<Value>, ApiError> {
    let object_selected = |o: Option<&Value>| o.is_some_and(|o| selects(&hook["objectSelector"], &labels_of(Some(o))));
    if !object_selected(new) && !object_selected(old) {
        return Ok(None);
    }
    if a.dry_run && !matches!(hook["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("admission webhook {:?} does not support dry run", hook_name(hook)),
        ));
    }
    let answer = match call(state, a, hook, new, old).await {
        Ok(answer) => answer,
        Err(reason) => return fail(hook, reason).map(|()| None),
    };
    if answer["allowed"].as_bool() == Some(true) {
        return Ok(Some(answer));
    }
    Err(denied(hook_name(hook), &answer["status"]))
}

/// A denial as the API server reports it.
fn denied(name: &str, status: &Value) -> ApiError {
    let code = status["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400).unwrap_or(400);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let said = |f: &str| status[f].as_str().filter(|s| !s.is_empty());
    let by = format!("admission webhook {name:?} denied the request");
    let message = match (said("message"), said("reason")) {
        (Some(m), _) | (None, Some(m)) => format!("{by}: {m}"),
        (None, None) => format!("{by} without explanation"),
    };
    let mut e = api_error(code, said("reason").unwrap_or_default(), message);
    if !status["details"].is_null() {
        e.body["details"] = status["details"].clone();
    }
    e
}

/// A mutating webhook's JSONPatch applied to the object.
fn apply_patch(answer: &Value, object: Option<&Value>) -> Result<Option<Value>, String> {
    let Some(encoded) = answer["patch"].as_str().filter(|p| !p.is_empty()) else { return Ok(None) };
    if let Some(t) = answer["patchType"].as_str().filter(|t| *t != "JSONPatch") {
        return Err(format!("received invalid webhook response: unsupported patch type {t:?}"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("received invalid webhook response: patch is not base64: {e}"))?;
    let ops: json_patch::Patch =
        serde_json::from_slice(&bytes).map_err(|e| format!("received invalid webhook response: {e}"))?;
    let Some(mut patched) = object.cloned() else { return Ok(None) };
    json_patch::patch(&mut patched, &ops).map_err(|e| format!("JSON Patch: {e}"))?;
    Ok(Some(patched))
}

/// Where a webhook is: its URL as the API server names it in errors, the TLS server name, the path with
/// query, and how to find the address.
struct Endpoint {
    url: String,
    server_name: String,
    path: String,
    target: Reach,
}

enum Reach {
    Service { namespace: String, name: String, port: u16 },
    Host(String, u16),
}

fn endpoint(hook: &Value, timeout_s: u64) -> Result<Endpoint, String> {
    let config = &hook["clientConfig"];
    let with_timeout = |path: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}timeout={timeout_s}s")
    };
    if let Some(service) = config.get("service").filter(|s| s.is_object()) {
        let s = |f: &str| service[f].as_str().unwrap_or_default().to_owned();
        let port = service["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(443);
        let server_name = format!("{}.{}.svc", s("name"), s("namespace"));
        let path = with_timeout(&Some(s("path")).filter(|p| !p.is_empty()).unwrap_or_else(|| "/".to_owned()));
        return Ok(Endpoint {
            url: format!("https://{server_name}:{port}{path}"),
            server_name,
            path,
            target: Reach::Service { namespace: s("namespace"), name: s("name"), port },
        });
    }
    let url = config["url"].as_str().ok_or("clientConfig has neither service nor url")?;
    let rest = url.strip_prefix("https://").ok_or_else(|| format!("webhook URL {url:?} is not https"))?;
    let (authority, path) = rest.find(['/', '?']).map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_owned(), p.parse().map_err(|_| format!("webhook URL {url:?}: bad port"))?)
        }
        _ => (authority.to_owned(), 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let path = with_timeout(&path);
    Ok(Endpoint {
        url: format!("https://{authority}{path}"),
        server_name: host.clone(),
        path,
        target: Reach::Host(host, port),
    })
}

/// Posts the AdmissionReview; the webhook's `response`, or why the call failed (worded as the API
/// server words it).
async fn call(
    state: &State,
    a: &Attributes,
    hook: &Value,
    new: Option<&Value>,
    old: Option<&Value>,
) -> Result<Value, String> {
    let accepts = hook["admissionReviewVersions"].as_array().into_iter().flatten().any(|v| v == "v1");
    if !accepts {
        return Err(format!(
            "webhook does not accept known AdmissionReview versions (v1): {}",
            hook["admissionReviewVersions"]
        ));
    }
    let timeout_s = hook["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30);
    let at = endpoint(hook, timeout_s).map_err(|e| format!("failed to call webhook: {e}"))?;
    let failed = |e: &dyn std::fmt::Display| format!("failed to call webhook: Post {:?}: {e}", at.url);
    let ca_pem = match hook["clientConfig"]["caBundle"].as_str().filter(|b| !b.is_empty()) {
        Some(b) => {
            let pem =
                base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| failed(&format!("caBundle: {e}")))?;
            String::from_utf8_lossy(&pem).into_owned()
        }
        None => String::new(),
    };
    let n = state.next_uid();
    let uid = format!("{n:08x}-0000-4000-8000-{n:012x}");
    let review = review_of(a, &uid, new, old);
    let exchange = async {
        let addr = match &at.target {
            Reach::Service { namespace, name, port } => {
                let resolver = state.resolver.lock().ok().and_then(|r| r.clone());
                resolver
                    .and_then(|Resolver(r)| r(namespace, name, *port))
                    .ok_or_else(|| failed(&format!("no endpoints available for service {name:?}")))?
            }
            Reach::Host(host, port) => tokio::net::lookup_host((host.as_str(), *port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| failed(&format!("dial tcp: lookup {host}: no such host")))?,
        };
        let body = review.to_string();
        webhook::exchange(addr, &at.server_name, &ca_pem, &at.path, "application/json", body.as_bytes())
            .await
            .map_err(|e| failed(&e))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(timeout_s), exchange)
        .await
        .map_err(|_| failed(&"context deadline exceeded"))??;
    if status != 200 {
        let text = String::from_utf8_lossy(&body);
        return Err(failed(&format!(
            "an error on the server ({:?}) has prevented the request from succeeding",
            text.trim()
        )));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("received invalid webhook response: {e}"))?;
    if v["apiVersion"] != "admission.k8s.io/v1" || v["kind"] != "AdmissionReview" {
        return Err(format!(
            "received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, \
             got {}, Kind={}",
            v["apiVersion"].as_str().unwrap_or_default(),
            v["kind"].as_str().unwrap_or_default()
        ));
    }
    if v["response"]["uid"] != uid.as_str() {
        return Err(format!(
            "received invalid webhook response: expected response.uid={uid:?}, got {:?}",
            v["response"]["uid"].as_str().unwrap_or_default()
        ));
    }
    Ok(v["response"].clone())
}

fn review_of(a: &Attributes, uid: &str, new: Option<&Value>, old: Option<&Value>) -> Value {
    let kind = json!({"group": a.group, "version": a.version, "kind": a.kind});
    let resource = json!({"group": a.group, "version": a.version, "resource": a.plural});
    let options = match a.operation {
        Operation::Create => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": a.manager})
        }
        Operation::Update => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions", "fieldManager": a.manager})
        }
        Operation::Delete => json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}),
    };
    let mut request = json!({
        "uid": uid, "kind": kind, "resource": resource, "requestKind": kind, "requestResource": resource,
        "name": a.name, "operation": a.operation.as_str(),
        "userInfo": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
        "object": new, "oldObject": old, "dryRun": a.dry_run, "options": options,
    });
    if !a.namespace.is_empty() {
        request["namespace"] = json!(a.namespace);
    }
    if let Some(sub) = &a.subresource {
        request["subResource"] = json!(sub);
        request["requestSubResource"] = json!(sub);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(plural: &str, sub: Option<&str>, namespaced: bool) -> Attributes {
        Attributes {
            group: String::new(),
            version: "v1".into(),
            plural: plural.into(),
            subresource: sub.map(str::to_owned),
            kind: "Pod".into(),
            namespaced,
            namespace: "demo".into(),
            name: "p".into(),
            operation: Operation::Create,
            dry_run: false,
            manager: "m".into(),
        }
    }

    #[test]
    fn rules_match_resources_subresources_and_scope() {
        let rule = |resources: Value, scope: &str| json!({"apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE"], "resources": resources, "scope": scope});
        let pods = attributes("pods", None, true);
        let status = attributes("pods", Some("status"), true);
        assert!(rule_matches(&rule(json!(["pods"]), "*"), &pods));
        assert!(!rule_matches(&rule(json!(["pods"]), "*"), &status));
        assert!(rule_matches(&rule(json!(["*"]), "Namespaced"), &pods));
        assert!(!rule_matches(&rule(json!(["*"]), "Cluster"), &pods));
        assert!(!rule_matches(&rule(json!(["*"]), "*"), &status));
        assert!(rule_matches(&rule(json!(["*/*"]), "*"), &status));
        assert!(rule_matches(&rule(json!(["pods/*"]), "*"), &status));
        assert!(!rule_matches(&rule(json!(["pods/*"]), "*"), &pods));
        assert!(rule_matches(&rule(json!(["*/status"]), "*"), &status));
        let mut update = pods.clone();
        update.operation = Operation::Update;
        assert!(!rule_matches(&rule(json!(["pods"]), "*"), &update));
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels: Labels =
            serde_json::from_value(json!({"team": "a", "kubernetes.io/metadata.name": "demo"})).unwrap();
        let s = |v: Value| selects(&v, &labels);
        assert!(s(Value::Null));
        assert!(s(json!({"matchLabels": {"team": "a"}})));
        assert!(!s(json!({"matchLabels": {"team": "b"}})));
        assert!(s(
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]})
        ));
        assert!(!s(json!({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]})));
        assert!(s(
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "DoesNotExist"}]})
        ));
        assert!(!s(json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]})));
    }

    #[test]
    fn denials_carry_the_webhooks_code_and_message() {
        let e = denied("v.k8s.io", &json!({"code": 403, "message": "no"}));
        assert_eq!(
            (e.status, e.body["message"].as_str()),
            (StatusCode::FORBIDDEN, Some("admission webhook \"v.k8s.io\" denied the request: no"))
        );
        let e = denied("v.k8s.io", &json!({"code": 200}));
        assert_eq!(
            (e.status, e.body["message"].as_str()),
            (StatusCode::BAD_REQUEST, Some("admission webhook \"v.k8s.io\" denied the request without explanation"))
        );
    }

    #[test]
    fn endpoints_are_named_as_the_api_server_names_them() {
        let hook = json!({"clientConfig": {"service": {"namespace": "osm-system", "name": "osm-validator", "port": 9093, "path": "/validate"}}});
        let e = endpoint(&hook, 20).unwrap();
        assert_eq!(e.url, "https://osm-validator.osm-system.svc:9093/validate?timeout=20s");
        assert_eq!(e.server_name, "osm-validator.osm-system.svc");
        let e = endpoint(&json!({"clientConfig": {"url": "https://127.0.0.1:8443/v?x=1"}}), 10).unwrap();
        assert_eq!(
            (e.url.as_str(), e.path.as_str()),
            ("https://127.0.0.1:8443/v?x=1&timeout=10s", "/v?x=1&timeout=10s")
        );
        assert!(matches!(e.target, Reach::Host(ref h, 8443) if h == "127.0.0.1"));
        let e = endpoint(&json!({"clientConfig": {"url": "https://hooks.example"}}), 10).unwrap();
        assert!(matches!(e.target, Reach::Host(ref h, 443) if h == "hooks.example"));
    }
}
