//! The `scale` subresource (`autoscaling/v1` Scale), as `kubectl scale` and autoscalers use it: the
//! replicas of a Deployment, ReplicaSet, StatefulSet or ReplicationController, or of a custom resource at
//! the paths its CRD's `subresources.scale` names.

use serde_json::{Value, json};

/// JSON pointers of the desired replicas, the current replicas and the label selector.
struct Paths {
    spec: String,
    status: String,
    selector: Option<String>,
}

fn pointer(path: &str) -> String {
    path.trim_start_matches('.').split('.').map(|s| format!("/{s}")).collect()
}

fn paths(crd: Option<&Value>, version: &str) -> Paths {
    let declared = crd.and_then(|c| {
        let versions = c.pointer("/spec/versions")?.as_array()?;
        let v = versions.iter().find(|v| v["name"] == version)?;
        v.pointer("/subresources/scale").or_else(|| c.pointer("/spec/subresources/scale"))
    });
    match declared {
        Some(s) => Paths {
            spec: pointer(s["specReplicasPath"].as_str().unwrap_or(".spec.replicas")),
            status: pointer(s["statusReplicasPath"].as_str().unwrap_or(".status.replicas")),
            selector: s["labelSelectorPath"].as_str().map(pointer),
        },
        None => Paths { spec: "/spec/replicas".into(), status: "/status/replicas".into(), selector: None },
    }
}

/// The Scale of an object.
pub(crate) fn of(obj: &Value, crd: Option<&Value>, version: &str) -> Value {
    let p = paths(crd, version);
    let meta = |f: &str| obj.pointer(&format!("/metadata/{f}")).cloned().unwrap_or(Value::Null);
    let selector = match &p.selector {
        Some(s) => obj.pointer(s).cloned().unwrap_or(Value::Null),
        None => {
            let labels = obj.pointer("/spec/selector/matchLabels").or_else(|| obj.pointer("/spec/selector"));
            let pairs: Vec<String> = labels
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                .collect();
            json!(pairs.join(","))
        }
    };
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {
            "name": meta("name"), "namespace": meta("namespace"), "uid": meta("uid"),
            "resourceVersion": meta("resourceVersion"), "creationTimestamp": meta("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(&p.spec).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer(&p.status).and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

/// The object with the replicas a (written) Scale asks for.
pub(crate) fn apply(obj: &Value, scale: &Value, crd: Option<&Value>, version: &str) -> Value {
    let mut out = obj.clone();
    let Some(replicas) = scale.pointer("/spec/replicas").cloned() else { return out };
    let p = paths(crd, version);
    let (parent, field) = p.spec.rsplit_once('/').unwrap_or(("", p.spec.as_str()));
    if let Some(Value::Object(m)) = out.pointer_mut(parent) {
        m.insert(field.to_owned(), replicas);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployments_scale_reads_and_writes_its_replicas() {
        let d = json!({"metadata": {"name": "web", "namespace": "demo", "resourceVersion": "7"},
                       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 1}});
        let s = of(&d, None, "v1");
        assert_eq!((s["spec"]["replicas"].as_i64(), s["status"]["replicas"].as_i64()), (Some(2), Some(1)));
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(apply(&d, &json!({"spec": {"replicas": 5}}), None, "v1")["spec"]["replicas"], 5);
        let crd = json!({"spec": {"versions": [{"name": "v1", "subresources": {"scale": {
            "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size", "labelSelectorPath": ".status.sel"}}}]}});
        let w = json!({"spec": {"size": 3}, "status": {"size": 3, "sel": "a=b"}});
        assert_eq!(of(&w, Some(&crd), "v1")["status"]["selector"], "a=b");
        assert_eq!(apply(&w, &json!({"spec": {"replicas": 4}}), Some(&crd), "v1")["spec"]["size"], 4);
    }
}
