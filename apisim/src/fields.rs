//! Field management, as server-side apply keeps it: per leaf field, the managers owning it — a manager
//! being a name, an operation (`Apply` or `Update`) and a subresource, so `kubectl scale` (an update of
//! `scale`) and `kubectl apply --server-side` are two managers. A list with a merge key (containers by
//! name, webhooks by name, ...) is a map of its items, so two managers may own different fields of one
//! item (`helm` the webhook's service, the controller its `caBundle`); any other list is one field.
//! Shown to clients as `metadata.managedFields` (`FieldsV1`), and taken from them when a client writes
//! other ones (how `kubectl` and `helm` hand client-side-applied fields over to server-side apply).

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::http::{ApiError, api_error};
use crate::patch::merge_key;

/// One step of a field path: a map's field, or the item of a keyed list whose key field has a value
/// (JSON-encoded).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    Field(String),
    Item(String, String),
}

pub(crate) type Path = Vec<Seg>;

/// A field manager, as the API server tells them apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Manager {
    name: String,
    operation: &'static str,
    subresource: String,
}

impl Manager {
    pub(crate) fn new(name: &str, apply: bool, subresource: Option<&str>) -> Self {
        let operation = if apply { "Apply" } else { "Update" };
        Self { name: name.to_owned(), operation, subresource: subresource.unwrap_or_default().to_owned() }
    }

    /// As conflicts name it: `"kubectl-edit" using apps/v1`, `"kubectl" with subresource "scale" using ...`.
    fn describe(&self, api_version: Option<&str>) -> String {
        let mut s = format!("{:?}", self.name);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if let (Some(v), "Update") = (api_version, self.operation) {
            s.push_str(&format!(" using {v}"));
        }
        s
    }
}

/// Who owns which fields of one object.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Owners {
    fields: BTreeMap<Path, BTreeSet<Manager>>,
    /// Per manager: the apiVersion and time of its last write.
    managers: BTreeMap<Manager, (String, String)>,
}

impl Owners {
    /// The ownership `metadata.managedFields` describes (a client may write them: to hand fields over, or
    /// `[]` to reset them).
    pub(crate) fn parse(entries: &Value) -> Self {
        let mut owners = Self::default();
        for e in entries.as_array().into_iter().flatten() {
            let s = |f: &str| e[f].as_str().unwrap_or_default();
            if s("manager").is_empty() {
                continue;
            }
            let manager = Manager::new(s("manager"), s("operation") == "Apply", Some(s("subresource")));
            let mut paths = Vec::new();
            paths_of(&e["fieldsV1"], &mut Vec::new(), &mut paths);
            for path in paths {
                owners.fields.entry(path).or_default().insert(manager.clone());
            }
            owners.managers.insert(manager, (s("apiVersion").to_owned(), s("time").to_owned()));
        }
        owners
    }
}

/// The leaf paths of a `FieldsV1` tree (`f:<field>`, `k:{"<key>":<value>}`; sets and indexes are not
/// tracked).
fn paths_of(tree: &Value, prefix: &mut Path, out: &mut Vec<Path>) {
    let mut children = false;
    for (k, v) in tree.as_object().into_iter().flatten() {
        let seg = if let Some(f) = k.strip_prefix("f:") {
            Seg::Field(f.to_owned())
        } else if let Some(item) = k.strip_prefix("k:") {
            let key: Option<(String, Value)> =
                serde_json::from_str::<Map<String, Value>>(item).ok().and_then(|m| m.into_iter().next());
            let Some((key, value)) = key else { continue };
            Seg::Item(key, value.to_string())
        } else {
            continue;
        };
        children = true;
        prefix.push(seg);
        paths_of(v, prefix, out);
        prefix.pop();
    }
    if !children && !prefix.is_empty() {
        out.push(prefix.clone());
    }
}

/// Fields the server owns, never a manager.
const SERVER_OWNED: [&str; 5] = ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"];

/// The leaf fields of an object (scalars and unkeyed lists), without the server's metadata. `keyed`:
/// whether lists with a built-in merge key are maps of their items.
pub(crate) fn leaves(v: &Value, keyed: bool) -> BTreeMap<Path, Value> {
    fn walk(path: &mut Path, names: &mut Vec<String>, v: &Value, keyed: bool, out: &mut BTreeMap<Path, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if path.len() == 1
                        && path[0] == Seg::Field("metadata".to_owned())
                        && SERVER_OWNED.contains(&k.as_str())
                    {
                        continue;
                    }
                    path.push(Seg::Field(k.clone()));
                    names.push(k.clone());
                    walk(path, names, v, keyed, out);
                    names.pop();
                    path.pop();
                }
            }
            Value::Null => {}
            Value::Array(items) if keyed => {
                let key = names.split_last().and_then(|(field, parents)| merge_key(parents, field));
                match key {
                    Some(key) if !items.is_empty() && items.iter().all(|i| i.get(key).is_some()) => {
                        for item in items {
                            path.push(Seg::Item(key.to_owned(), item[key].to_string()));
                            walk(path, names, item, keyed, out);
                            path.pop();
                        }
                    }
                    _ => {
                        out.insert(path.clone(), v.clone());
                    }
                }
            }
            other => {
                out.insert(path.clone(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&mut Vec::new(), &mut Vec::new(), v, keyed, &mut out);
    out
}

/// Whether `v` is the JSON-encoded key value of an item.
fn encodes(v: &Value, encoded: &str) -> bool {
    serde_json::to_string(v).is_ok_and(|s| s == encoded)
}

/// The value at a field path.
pub(crate) fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Field(k) => v.get(k),
        Seg::Item(k, val) => v.as_array()?.iter().find(|i| i.get(k).is_some_and(|x| encodes(x, val))),
    })
}

fn remove(v: &mut Value, path: &[Seg]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = v;
    for seg in parents {
        let next = match seg {
            Seg::Field(k) => at.get_mut(k),
            Seg::Item(k, val) => {
                at.as_array_mut().and_then(|a| a.iter_mut().find(|i| i.get(k).is_some_and(|x| encodes(x, val))))
            }
        };
        let Some(next) = next else { return };
        at = next;
    }
    match (last, at) {
        (Seg::Field(k), Value::Object(m)) => {
            m.remove(k);
        }
        (Seg::Item(k, val), Value::Array(a)) => a.retain(|i| i.get(k).is_none_or(|x| !encodes(x, val))),
        _ => {}
    }
}

/// `.spec.containers[name="app"].image`, as the API server writes field paths.
pub(crate) fn display(path: &[Seg]) -> String {
    path.iter()
        .map(|s| match s {
            Seg::Field(k) => format!(".{k}"),
            Seg::Item(k, v) => format!("[{k}={v}]"),
        })
        .collect()
}

/// Server-side apply: changing a field another manager owns is a conflict unless forced.
pub(crate) fn check_apply(
    current: &Value,
    config: &Value,
    owners: Option<&Owners>,
    applier: &Manager,
    force: bool,
    keyed: bool,
) -> Result<(), ApiError> {
    if force {
        return Ok(());
    }
    let Some(owners) = owners else { return Ok(()) };
    let mut by_manager: BTreeMap<&Manager, Vec<String>> = BTreeMap::new();
    let mut conflicting = Vec::new();
    for (path, v) in leaves(config, keyed) {
        if get(current, &path).is_none_or(|c| *c == v) {
            continue;
        }
        for other in owners.fields.get(&path).into_iter().flatten().filter(|o| *o != applier) {
            by_manager.entry(other).or_default().push(display(&path));
            conflicting.push((other, path.clone()));
        }
    }
    let count: usize = by_manager.values().map(Vec::len).sum();
    if count == 0 || upgrades_client_side_apply(current, applier, &conflicting, keyed) {
        return Ok(());
    }
    let named = |m: &Manager| m.describe(owners.managers.get(m).map(|(v, _)| v.as_str()));
    let described = match by_manager.iter().next() {
        Some((m, paths)) if count == 1 => format!("conflict with {}: {}", named(m), paths.join("")),
        _ => by_manager
            .iter()
            .map(|(m, paths)| {
                format!(
                    "conflicts with {}:\n{}",
                    named(m),
                    paths.iter().map(|p| format!("- {p}\n")).collect::<String>()
                )
            })
            .collect::<String>()
            .trim_end()
            .to_owned(),
    };
    let causes: Vec<Value> = by_manager
        .iter()
        .flat_map(|(m, paths)| {
            paths.iter().map(|p| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", named(m)), "field": p})
            })
        })
        .collect();
    let plural = if count == 1 { "" } else { "s" };
    let mut e =
        api_error(StatusCode::CONFLICT, "Conflict", format!("Apply failed with {count} conflict{plural}: {described}"));
    e.body["details"] = json!({"causes": causes});
    Err(e)
}

/// The API server lets `kubectl apply --server-side` take over what `kubectl apply` (client-side) applied
/// before: conflicts only with `kubectl-client-side-apply` over fields of the last-applied configuration
/// annotation are forced.
fn upgrades_client_side_apply(current: &Value, applier: &Manager, conflicts: &[(&Manager, Path)], keyed: bool) -> bool {
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    let Some(text) = current.pointer("/metadata/annotations").and_then(|a| a.get(LAST_APPLIED)).and_then(Value::as_str)
    else {
        return false;
    };
    let Ok(last_applied) = serde_json::from_str::<Value>(text) else { return false };
    let applied = leaves(&last_applied, keyed);
    applier.name == "kubectl"
        && conflicts.iter().all(|(owner, path)| {
            owner.name == "kubectl-client-side-apply" && owner.operation == "Update" && applied.contains_key(path)
        })
}

/// Server-side apply: removes from `obj` the fields the applier alone owned and no longer applies.
pub(crate) fn disown(obj: &mut Value, config: &Value, owners: Option<&Owners>, applier: &Manager, keyed: bool) {
    let Some(owners) = owners else { return };
    let applied = leaves(config, keyed);
    let identity = |p: &Path| {
        matches!(p.as_slice(), [Seg::Field(f)] if f == "apiVersion" || f == "kind")
            || matches!(p.as_slice(), [Seg::Field(m), Seg::Field(f)] if m == "metadata" && (f == "name" || f == "namespace"))
    };
    for (path, managers) in &owners.fields {
        if managers.len() != 1 || !managers.contains(applier) || applied.contains_key(path) || identity(path) {
            continue;
        }
        // The key field of a keyed list's item: the item goes.
        match path.as_slice() {
            [.., Seg::Item(key, _), Seg::Field(f)] if f == key => remove(obj, &path[..path.len() - 1]),
            _ => remove(obj, path),
        }
    }
}

/// A write, for ownership: what changed is the writer's alone; what an apply names is the applier's too
/// (shared with owners of the same value); what an apply no longer names is no longer the applier's; what
/// is gone, nobody's.
pub(crate) struct Write<'a> {
    pub(crate) manager: Manager,
    pub(crate) apply: Option<&'a Value>,
    pub(crate) api_version: String,
    pub(crate) time: String,
    pub(crate) keyed: bool,
}

pub(crate) fn update(before: Option<&Owners>, old: Option<&Value>, new: &Value, w: &Write<'_>) -> Owners {
    let mut owners = before.cloned().unwrap_or_default();
    let was = old.map(|o| leaves(o, w.keyed)).unwrap_or_default();
    let now = leaves(new, w.keyed);
    let applied = w.apply.map(|c| leaves(c, w.keyed));
    owners.fields.retain(|p, _| now.contains_key(p));
    let mut touched = w.apply.is_some();
    for (path, v) in &now {
        let named = applied.as_ref().is_some_and(|a| a.contains_key(path));
        if was.get(path) != Some(v) {
            owners.fields.insert(path.clone(), BTreeSet::from([w.manager.clone()]));
            touched = true;
        } else if named {
            owners.fields.entry(path.clone()).or_default().insert(w.manager.clone());
        }
    }
    if let Some(applied) = &applied {
        for (path, managers) in owners.fields.iter_mut() {
            if !applied.contains_key(path) {
                managers.remove(&w.manager);
            }
        }
    }
    owners.fields.retain(|_, m| !m.is_empty());
    if touched {
        owners.managers.insert(w.manager.clone(), (w.api_version.clone(), w.time.clone()));
    }
    let owning: BTreeSet<&Manager> = owners.fields.values().flatten().collect();
    let managers = std::mem::take(&mut owners.managers);
    owners.managers = managers.into_iter().filter(|(m, _)| owning.contains(m)).collect();
    owners
}

/// `metadata.managedFields`.
pub(crate) fn render(owners: &Owners) -> Value {
    let entries: Vec<Value> = owners
        .managers
        .iter()
        .map(|(manager, (api_version, time))| {
            let mut tree = Map::new();
            for path in owners.fields.iter().filter(|(_, m)| m.contains(manager)).map(|(p, _)| p) {
                let mut at = &mut tree;
                for seg in path {
                    let name = match seg {
                        Seg::Field(k) => format!("f:{k}"),
                        Seg::Item(k, v) => format!("k:{{{k:?}:{v}}}"),
                    };
                    let next = at.entry(name).or_insert_with(|| json!({}));
                    if !next.is_object() {
                        *next = json!({});
                    }
                    let Value::Object(m) = next else { break };
                    at = m;
                }
            }
            let mut entry = json!({
                "manager": manager.name, "operation": manager.operation, "apiVersion": api_version, "time": time,
                "fieldsType": "FieldsV1", "fieldsV1": tree,
            });
            if !manager.subresource.is_empty() {
                entry["subresource"] = json!(manager.subresource);
            }
            entry
        })
        .collect();
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners_after(writes: &[(&str, Option<&Value>, &Value)]) -> (Owners, Value) {
        let (mut owners, mut old): (Option<Owners>, Option<Value>) = (None, None);
        for (manager, apply, new) in writes {
            let manager = Manager::new(manager, apply.is_some(), None);
            let w = Write { manager, apply: *apply, api_version: "v1".into(), time: "t".into(), keyed: true };
            owners = Some(update(owners.as_ref(), old.as_ref(), new, &w));
            old = Some((*new).clone());
        }
        (owners.unwrap_or_default(), old.unwrap_or_default())
    }

    #[test]
    fn keyed_items_are_owned_field_by_field() {
        let installed = json!({"webhooks": [{"name": "w", "clientConfig": {"service": {"name": "s"}}}]});
        let patched =
            json!({"webhooks": [{"name": "w", "clientConfig": {"service": {"name": "s"}, "caBundle": "Q0E="}}]});
        let (owners, current) = owners_after(&[("helm", Some(&installed), &installed), ("controller", None, &patched)]);
        let helm = Manager::new("helm", true, None);
        // Applying the chart again touches nothing the controller owns.
        assert!(check_apply(&current, &installed, Some(&owners), &helm, false, true).is_ok());
        let changed = json!({"webhooks": [{"name": "w", "clientConfig": {"caBundle": "other"}}]});
        let e = check_apply(&current, &changed, Some(&owners), &helm, false, true).unwrap_err();
        assert_eq!(
            e.body["message"],
            "Apply failed with 1 conflict: conflict with \"controller\" using v1: .webhooks[name=\"w\"].clientConfig.caBundle"
        );
        let fields = &render(&owners)[0]["fieldsV1"];
        assert!(fields["f:webhooks"]["k:{\"name\":\"w\"}"]["f:clientConfig"]["f:caBundle"].is_object(), "{fields}");
    }

    #[test]
    fn an_applier_loses_what_it_stops_applying() {
        let first = json!({"spec": {"a": 1, "b": 2, "containers": [{"name": "x", "image": "i"}]}});
        let (owners, mut current) = owners_after(&[("helm", Some(&first), &first)]);
        let second = json!({"spec": {"a": 1}});
        disown(&mut current, &second, Some(&owners), &Manager::new("helm", true, None), true);
        assert_eq!(current, json!({"spec": {"a": 1, "containers": []}}));
    }

    #[test]
    fn managed_fields_read_back_as_they_were_written() {
        let obj = json!({"spec": {"replicas": 2, "containers": [{"name": "x", "image": "i"}]}});
        let (owners, _) = owners_after(&[("kubectl", Some(&obj), &obj), ("kubectl-scale", None, &obj)]);
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = json!(3);
        let w = Write {
            manager: Manager::new("kubectl", false, Some("scale")),
            apply: None,
            api_version: "apps/v1".into(),
            time: "t".into(),
            keyed: true,
        };
        let owners = update(Some(&owners), Some(&obj), &scaled, &w);
        let rendered = render(&owners);
        assert_eq!(rendered[1]["subresource"], "scale");
        assert_eq!(Owners::parse(&rendered), owners);
        let e =
            check_apply(&scaled, &obj, Some(&owners), &Manager::new("kubectl", true, None), false, true).unwrap_err();
        assert_eq!(
            e.body["message"],
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
    }
}
