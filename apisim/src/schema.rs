//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): which versions are served and stored, the
//! CRD's own validity and status, and the structural `openAPIV3Schema` of a version applied to custom
//! resources as the API server applies it — unknown fields pruned (kept under
//! `x-kubernetes-preserve-unknown-fields`), `default`s filled in (nested, inside lists' items too), and
//! values validated (`type`, `nullable`, `enum`, `minimum`/`maximum` and their exclusive forms,
//! `minLength`/`maxLength`, `pattern`, `required`, `minItems`/`maxItems`, `minProperties`/`maxProperties`,
//! `x-kubernetes-int-or-string`, `allOf`, `additionalProperties`), errors worded as the API server words
//! them. CEL rules (`x-kubernetes-validations`) and `format` are not checked.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::http::{ApiError, api_error};
use crate::write::Operation;

fn version<'a>(crd: &'a Value, name: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?.as_array()?.iter().find(|v| v["name"] == name)
}

/// Whether the CRD serves `name`.
pub(crate) fn served(crd: &Value, name: &str) -> bool {
    version(crd, name).is_some_and(|v| v["served"].as_bool().unwrap_or(false))
}

/// The version objects are stored at.
pub(crate) fn storage_version(crd: &Value) -> Option<&str> {
    crd.pointer("/spec/versions")?.as_array()?.iter().find(|v| v["storage"] == true)?["name"].as_str()
}

/// Whether `name` has the status subresource.
pub(crate) fn has_status(crd: &Value, name: &str) -> bool {
    version(crd, name).is_some_and(|v| v.pointer("/subresources/status").is_some())
        || crd.pointer("/spec/subresources/status").is_some()
}

/// The schema of a version.
pub(crate) fn openapi_schema<'a>(crd: &'a Value, name: &str) -> Option<&'a Value> {
    version(crd, name)
        .and_then(|v| v.pointer("/schema/openAPIV3Schema"))
        .or_else(|| crd.pointer("/spec/validation/openAPIV3Schema"))
}

/// What the CRD controller reports once a CRD is stored: its names accepted and the CRD established.
pub(crate) fn establish(crd: &mut Value, old: Option<&Value>, now: &str) {
    let since = |kind: &str| {
        let conditions = old.and_then(|o| o.pointer("/status/conditions")).and_then(Value::as_array);
        let before = conditions.into_iter().flatten().find(|c| c["type"] == kind);
        before.and_then(|c| c["lastTransitionTime"].as_str()).unwrap_or(now).to_owned()
    };
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": since(kind)});
    let mut stored: Vec<Value> =
        old.and_then(|o| o.pointer("/status/storedVersions")).and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(v) = storage_version(crd).map(|v| json!(v))
        && !stored.contains(&v)
    {
        stored.push(v);
    }
    crd["status"] = json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "storedVersions": stored,
    });
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
}

/// Prunes what the schema does not know and fills its defaults; returns the pruned fields' paths
/// (`spec.foo`). `apiVersion`, `kind` and `metadata` of the object are the API's, never pruned.
pub(crate) fn prune_and_default(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Value::Object(root) = obj {
        for (k, v) in root.iter_mut() {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match schema.pointer(&format!("/properties/{}", k.replace('~', "~0").replace('/', "~1"))) {
                Some(s) => walk(s, v, k, &mut unknown),
                None if flag(schema, "x-kubernetes-preserve-unknown-fields") => {}
                None => unknown.push(k.clone()),
            }
        }
        root.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                || schema["properties"].get(k).is_some()
                || flag(schema, "x-kubernetes-preserve-unknown-fields")
        });
        default_fields(schema, root, "");
    }
    unknown.sort();
    unknown
}

/// Prunes and defaults below one node.
fn walk(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true))
                || (props.is_none() && additional.is_none() && schema.get("type").is_none());
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            let mut gone = Vec::new();
            for (k, child) in map.iter_mut() {
                let child_path = join(path, k);
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) | (None, Some(s)) => walk(s, child, &child_path, unknown),
                    _ if preserve || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) => {}
                    _ => {
                        unknown.push(child_path);
                        gone.push(k.clone());
                    }
                }
            }
            for k in gone {
                map.remove(&k);
            }
            default_fields(schema, map, path);
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(s, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Defaults of an object's properties: a missing (or, unless nullable, null) field takes its default,
/// which is pruned and defaulted in turn.
fn default_fields(schema: &Value, map: &mut serde_json::Map<String, Value>, path: &str) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
    for (k, s) in props {
        if map.get(k).is_some_and(Value::is_null) && !flag(s, "nullable") && s.get("default").is_some() {
            map.remove(k);
        }
        if map.contains_key(k) {
            continue;
        }
        if let Some(d) = s.get("default") {
            let mut d = d.clone();
            let mut ignored = Vec::new();
            walk(s, &mut d, &join(path, k), &mut ignored);
            map.insert(k.clone(), d);
        }
    }
}

/// One field's error, as the API server reports it (`field.Error`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    /// `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueRequired`, `FieldValueTooLong`, ...
    pub reason: &'static str,
    /// The error without the field: `Unsupported value: "y": supported values: "a", "b"`.
    pub body: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body)
    }
}

/// A value as Go's `field.Error` prints it: strings quoted, numbers and booleans bare.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "\"null\"".to_owned(),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

/// Validates a (pruned, defaulted) object against its schema.
pub(crate) fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let (Some(props), Value::Object(map)) = (schema.get("properties").and_then(Value::as_object), obj) {
        for (k, s) in props.iter().filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")) {
            if let Some(v) = map.get(k) {
                check(s, v, k, &mut errors);
            }
        }
        required(schema, map, "", &mut errors);
    }
    errors.sort_by(|a, b| a.field.cmp(&b.field));
    errors
}

fn required(schema: &Value, map: &serde_json::Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(r) {
            errors.push(FieldError {
                field: join(path, r),
                reason: "FieldValueRequired",
                body: "Required value".into(),
            });
        }
    }
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut invalid = |detail: String, value: String| {
        errors.push(FieldError {
            field: path.to_owned(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {value}: {path} in body {detail}"),
        });
    };
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if v.is_null() {
        if !flag(schema, "nullable") && (schema.get("type").is_some() || int_or_string) {
            let t = if int_or_string { "integer,string" } else { schema["type"].as_str().unwrap_or_default() };
            invalid(format!("must be of type {t}: \"null\""), "\"null\"".into());
        }
        return;
    }
    if int_or_string {
        if !(has_type(v, "integer") || v.is_string()) {
            let t = type_name(v);
            invalid(format!("must be of type integer,string: {t:?}"), format!("{t:?}"));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str)
        && !has_type(v, t)
    {
        let actual = type_name(v);
        invalid(format!("must be of type {t}: {actual:?}"), format!("{actual:?}"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let supported: Vec<String> =
            allowed.iter().map(|a| format!("{:?}", a.as_str().map_or_else(|| a.to_string(), str::to_owned))).collect();
        errors.push(FieldError {
            field: path.to_owned(),
            reason: "FieldValueNotSupported",
            body: format!("Unsupported value: {}: supported values: {}", shown(v), supported.join(", ")),
        });
    }
    let mut invalid = |detail: String| {
        errors.push(FieldError {
            field: path.to_owned(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {}: {path} in body {detail}", shown(v)),
        });
    };
    if let Some(n) = v.as_f64() {
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        let num = |k: &str| schema.get(k).map(Value::to_string).unwrap_or_default();
        if let Some(max) = bound("maximum") {
            if flag(schema, "exclusiveMaximum") && n >= max {
                invalid(format!("should be less than {}", num("maximum")));
            } else if n > max {
                invalid(format!("should be less than or equal to {}", num("maximum")));
            }
        }
        if let Some(min) = bound("minimum") {
            if flag(schema, "exclusiveMinimum") && n <= min {
                invalid(format!("should be greater than {}", num("minimum")));
            } else if n < min {
                invalid(format!("should be greater than or equal to {}", num("minimum")));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            errors.push(FieldError {
                field: path.to_owned(),
                reason: "FieldValueTooLong",
                body: format!("Too long: may not be more than {max} {}", if max == 1 { "byte" } else { "bytes" }),
            });
        }
        let mut invalid = |detail: String| {
            errors.push(FieldError {
                field: path.to_owned(),
                reason: "FieldValueInvalid",
                body: format!("Invalid value: {}: {path} in body {detail}", shown(v)),
            });
        };
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            invalid(format!("should be at least {min} chars long"));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && let Ok(re) = regex::Regex::new(p)
            && !re.is_match(s)
        {
            invalid(format!("should match '{p}'"));
        }
    }
    match v {
        Value::Array(items) => {
            size_bounds(schema, path, items.len(), ("maxItems", "minItems", "items"), errors);
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(s, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            size_bounds(schema, path, map.len(), ("maxProperties", "minProperties", "properties"), errors);
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    check(s, child, &join(path, k), errors);
                }
            }
            required(schema, map, path, errors);
        }
        _ => {}
    }
    for s in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        check(s, v, path, errors);
    }
}

/// The CRD's own rules: a name of `<plural>.<group>`, a known scope, and exactly one storage version.
pub(crate) fn validate_crd(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let (group, plural, name) = (s("/spec/group"), s("/spec/names/plural"), s("/metadata/name"));
    let mut push = |field: &str, reason: &'static str, body: String| {
        errors.push(FieldError { field: field.to_owned(), reason, body });
    };
    if name != format!("{plural}.{group}") {
        push(
            "metadata.name",
            "FieldValueInvalid",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        );
    }
    if group.is_empty() {
        push("spec.group", "FieldValueRequired", "Required value".into());
    }
    if plural.is_empty() {
        push("spec.names.plural", "FieldValueRequired", "Required value".into());
    }
    if s("/spec/names/kind").is_empty() {
        push("spec.names.kind", "FieldValueRequired", "Required value".into());
    }
    if !matches!(s("/spec/scope"), "Cluster" | "Namespaced") {
        push(
            "spec.scope",
            "FieldValueNotSupported",
            format!("Unsupported value: {:?}: supported values: \"Cluster\", \"Namespaced\"", s("/spec/scope")),
        );
    }
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        push(
            "spec.versions",
            "FieldValueInvalid",
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        );
    } else if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        let names: Vec<&str> = versions.iter().filter_map(|v| v["name"].as_str()).collect();
        push(
            "spec.versions",
            "FieldValueInvalid",
            format!("Invalid value: {names:?}: must have exactly one version marked as storage version"),
        );
    }
    for (i, v) in versions.iter().enumerate() {
        if v.pointer("/schema/openAPIV3Schema").is_none() {
            push(
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "FieldValueRequired",
                "Required value: schemas are required".into(),
            );
        }
    }
    errors
}

/// `422 Invalid`: `<Kind>.<group> "<name>" is invalid: <error>` (several in brackets).
pub(crate) fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> ApiError {
    let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let all = if listed.len() == 1 { listed.join("") } else { format!("[{}]", listed.join(", ")) };
    let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
    let mut e =
        api_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{qualified} {name:?} is invalid: {all}"));
    let causes: Vec<Value> =
        errors.iter().map(|f| json!({"reason": f.reason, "message": f.body, "field": f.field})).collect();
    e.body["details"] = json!({"name": name, "group": group, "kind": kind, "causes": causes});
    e
}

/// `fieldValidation=Strict` and an unknown field: `400 BadRequest`, as the API server decodes it.
pub(crate) fn strict_error(kind: &str, version: &str, operation: Operation, unknown: &[String]) -> ApiError {
    let fields: Vec<String> = unknown.iter().map(|f| format!("unknown field {f:?}")).collect();
    let strict = format!("strict decoding error: {}", fields.join(", "));
    let message = match operation {
        Operation::Create => format!("{kind} in version {version:?} cannot be handled as a {kind}: {strict}"),
        _ => strict,
    };
    api_error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// `maxItems`/`minItems` (or `maxProperties`/`minProperties`) of a list (or map) of `n` entries, worded as
/// the API server words them; `keys` are the two schema keys and what the lower bound counts.
fn size_bounds(
    schema: &Value,
    path: &str,
    n: usize,
    (max_key, min_key, unit): (&str, &str, &str),
    errors: &mut Vec<FieldError>,
) {
    let n = n as u64;
    if let Some(max) = schema.get(max_key).and_then(Value::as_u64).filter(|max| n > *max) {
        errors.push(FieldError {
            field: path.to_owned(),
            reason: "FieldValueTooMany",
            body: format!("Too many: {n}: must have at most {max} items"),
        });
    }
    if let Some(min) = schema.get(min_key).and_then(Value::as_u64).filter(|min| n < *min) {
        errors.push(FieldError {
            field: path.to_owned(),
            reason: "FieldValueInvalid",
            body: format!("Invalid value: {n}: {path} in body should have at least {min} {unit}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
            "rules": {"type": "array", "maxItems": 2, "items": {"type": "object", "required": ["kind"], "properties": {
                "kind": {"type": "string"}, "weight": {"type": "integer", "default": 1}}}},
            "nested": {"type": "object", "default": {}, "properties": {"on": {"type": "boolean", "default": true}}},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "target": {"x-kubernetes-int-or-string": true},
        }, "required": ["port"]}}})
    }

    #[test]
    fn defaults_fill_in_nested_and_in_items_and_unknown_fields_are_pruned() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "any": 1},
            "spec": {"port": 80, "foo": 1, "rules": [{"kind": "r", "bar": 2}], "open": {"kept": true}}, "extra": 1});
        let unknown = prune_and_default(&schema(), &mut o);
        assert_eq!(unknown, ["extra", "spec.foo", "spec.rules[0].bar"]);
        assert_eq!(
            o["spec"],
            json!({"port": 80, "mode": "a", "nested": {"on": true}, "rules": [{"kind": "r", "weight": 1}], "open": {"kept": true}})
        );
        assert_eq!(o["metadata"]["any"], 1);
    }

    #[test]
    fn violations_read_like_the_api_server() {
        let o = json!({"spec": {"mode": "y", "port": 70000, "name": "Abcdef", "target": true,
            "rules": [{"kind": "a"}, {}, {"kind": "c"}]}});
        let errors: Vec<String> = validate(&schema(), &o).iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "spec.mode: Unsupported value: \"y\": supported values: \"a\", \"b\"",
                "spec.name: Too long: may not be more than 5 bytes",
                "spec.name: Invalid value: \"Abcdef\": spec.name in body should match '^[a-z]+$'",
                "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535",
                "spec.rules: Too many: 3: must have at most 2 items",
                "spec.rules[1].kind: Required value",
                "spec.target: Invalid value: \"boolean\": spec.target in body must be of type integer,string: \"boolean\"",
            ]
        );
        let e = invalid("Widget", "example.com", "w", &validate(&schema(), &json!({"spec": {"port": "80"}})));
        assert_eq!(
            e.body["message"],
            "Widget.example.com \"w\" is invalid: spec.port: Invalid value: \"string\": spec.port in body must be of type \
             integer: \"string\""
        );
        assert_eq!(validate(&schema(), &json!({"spec": {}}))[0].to_string(), "spec.port: Required value");
    }
}
