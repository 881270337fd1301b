//! Strategic merge patch, as the API server applies it to built-in types: lists of objects with a merge
//! key (containers by `name`, container ports by `containerPort`, ...) merge item by item, other lists
//! are replaced, and the directives `$patch` (`replace`, `delete`, `merge`), `$setElementOrder/<list>`,
//! `$retainKeys` and `$deleteFromPrimitiveList/<list>` are obeyed. Server-side apply merges an applied
//! configuration the same way.

use serde_json::{Map, Value};

/// The merge key of the list `field` under the fields `parents` (outermost first), for built-in types.
pub(crate) fn merge_key(parents: &[String], field: &str) -> Option<&'static str> {
    let in_container = parents
        .iter()
        .rev()
        .find(|p| !p.is_empty())
        .is_some_and(|p| matches!(p.as_str(), "containers" | "initContainers" | "ephemeralContainers"));
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates"
        | "webhooks"
        | "secrets" => "name",
        "ports" if in_container => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        _ => return None,
    })
}

/// Lists of primitives whose patch adds to them rather than replacing them.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

/// Applies a strategic merge patch to `target` (an object). `keyed`: whether lists merge by the
/// built-in types' merge keys (false for custom resources: every list is replaced).
pub(crate) fn strategic(target: &mut Value, patch: &Value, keyed: bool) -> Result<(), String> {
    let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
        return Err("a strategic merge patch must be an object".to_owned());
    };
    if merge_map(t, p, &mut Vec::new(), keyed)? == Outcome::Delete {
        *target = Value::Object(Map::new());
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Keep,
    /// `$patch: delete`: the map is to be removed from its parent.
    Delete,
}

/// A patch value without its directives (for what is added rather than merged).
fn clean(v: &Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.get("$patch").and_then(Value::as_str) == Some("delete") {
                return None;
            }
            Some(Value::Object(
                m.iter()
                    .filter(|(k, _)| !k.starts_with('$'))
                    .filter_map(|(k, v)| Some((k.clone(), clean(v)?)))
                    .collect(),
            ))
        }
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace"))
                .filter_map(clean)
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    keyed: bool,
) -> Result<Outcome, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(Outcome::Delete),
        Some("replace") => {
            if let Some(Value::Object(m)) = clean(&Value::Object(patch.clone())) {
                *target = m;
            }
            return Ok(Outcome::Keep);
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    let mut orders = Vec::new();
    for (k, pv) in patch {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_owned(), pv));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = pv.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        path.push(k.clone());
        match (target.get_mut(k), pv) {
            (_, Value::Null) => {
                target.remove(k);
            }
            (Some(Value::Object(tv)), Value::Object(pm)) => {
                if merge_map(tv, pm, path, keyed)? == Outcome::Delete {
                    target.remove(k);
                }
            }
            (Some(Value::Array(tl)), Value::Array(pl)) => merge_list(tl, pl, path, keyed)?,
            (_, pv) => match clean(pv) {
                Some(v) => {
                    target.insert(k.clone(), v);
                }
                None => {
                    target.remove(k);
                }
            },
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field.clone());
        let key = if keyed { merge_key(&path[..path.len() - 1], &field) } else { None };
        path.pop();
        if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(&field), order.as_array()) {
            reorder(list, order, key);
        }
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        target.retain(|k, _| keep.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(Outcome::Keep)
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], path: &mut [String], keyed: bool) -> Result<(), String> {
    let field = path.last().cloned().unwrap_or_default();
    let replace = |i: &Value| i.get("$patch").and_then(Value::as_str) == Some("replace");
    if patch.iter().any(replace) {
        *target = patch.iter().filter(|i| !replace(i)).filter_map(clean).collect();
        return Ok(());
    }
    let key = if keyed { merge_key(&path[..path.len().saturating_sub(1)], &field) } else { None };
    let items_are_maps = patch.iter().all(Value::is_object) && target.iter().all(Value::is_object);
    match key {
        Some(key) if items_are_maps => {
            for item in patch {
                let Some(k) = item.get(key) else {
                    return Err(format!("map: {item} does not contain declared merge key: {key}"));
                };
                let existing = target.iter().position(|t| t.get(key) == Some(k));
                match (item.get("$patch").and_then(Value::as_str), existing) {
                    (Some("delete"), Some(i)) => {
                        target.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let (Some(Value::Object(t)), Value::Object(p)) = (target.get_mut(i), item) {
                            let mut path = path.to_vec();
                            if merge_map(t, p, &mut path, keyed)? == Outcome::Delete {
                                target.remove(i);
                            }
                        }
                    }
                    (_, None) => target.extend(clean(item)),
                }
            }
        }
        _ if merges_primitives(&field) => {
            for item in patch {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
        }
        _ => *target = patch.iter().filter_map(clean).collect(),
    }
    Ok(())
}

/// Puts the items `order` names first, in its order; the others keep their place after them.
fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let rank = |v: &Value| {
        order.iter().position(|o| match key {
            Some(k) => o.get(k).is_some() && o.get(k) == v.get(k),
            None => o == v,
        })
    };
    let mut ranked: Vec<(usize, Value)> =
        std::mem::take(list).into_iter().map(|v| (rank(&v).unwrap_or(usize::MAX), v)).collect();
    ranked.sort_by_key(|(r, _)| *r);
    *list = ranked.into_iter().map(|(_, v)| v).collect();
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn containers_merge_by_name_and_keep_what_the_patch_does_not_name() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "side", "image": "s:1"},
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "a:2"}],
        }}}});
        strategic(&mut d, &patch, true).unwrap();
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["name"], "side");
        assert_eq!(
            containers[1],
            json!({"name": "app", "image": "a:2", "ports": [{"containerPort": 80, "name": "http"}]})
        );
    }

    #[test]
    fn directives_delete_replace_and_retain() {
        let mut o = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x", "y"],
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"metadata": {"finalizers": ["b"], "labels": {"x": null}},
            "spec": {"env": [{"name": "A", "$patch": "delete"}], "args": ["z"],
                     "$deleteFromPrimitiveList/args": ["x"],
                     "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        strategic(&mut o, &patch, true).unwrap();
        assert_eq!(o["metadata"], json!({"finalizers": ["a", "b"], "labels": {"y": "2"}}));
        assert_eq!(o["spec"]["env"], json!([{"name": "B", "value": "2"}]));
        assert_eq!(o["spec"]["args"], json!(["z"]));
        assert_eq!(o["spec"]["strategy"], json!({"type": "Recreate"}));
        let mut o = json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}});
        strategic(&mut o, &json!({"spec": {"ports": [{"port": 8080}, {"$patch": "replace"}]}}), true).unwrap();
        assert_eq!(o["spec"]["ports"], json!([{"port": 8080}]));
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let mut o = json!({"spec": {"containers": [{"name": "a", "image": "1"}]}});
        strategic(&mut o, &json!({"spec": {"containers": [{"name": "a"}]}}), false).unwrap();
        assert_eq!(o["spec"]["containers"], json!([{"name": "a"}]));
    }
}
