//! What the API server says it serves: `/version`, the discovery documents (`/api`, `/apis`, one per
//! group-version, and the aggregated `apidiscovery.k8s.io/v2` form kubectl and Helm ask for first), and a
//! minimal OpenAPI v3 (per group-version, the PATCH operations with their `fieldValidation` parameter:
//! how kubectl learns it may ask the server to validate fields). Built-in resources come from a table;
//! custom resources from every stored CustomResourceDefinition's served versions.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The Kubernetes version the simulator claims to be.
pub const KUBERNETES_VERSION: (u32, u32) = (1, 37);

/// One resource of one group-version, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub subresources: Vec<String>,
}

/// group, version, plural, kind, namespaced, short names, categories, subresources.
type Row = (&'static str, &'static str, &'static str, &'static str, bool, &'static str, &'static str, &'static str);

/// The built-in resources served (what the mesh, its chart, Helm and kubectl use, and their neighbours).
const BUILT_IN: &[Row] = &[
    ("", "v1", "configmaps", "ConfigMap", true, "cm", "", ""),
    ("", "v1", "endpoints", "Endpoints", true, "ep", "", ""),
    ("", "v1", "events", "Event", true, "ev", "", ""),
    ("", "v1", "limitranges", "LimitRange", true, "limits", "", ""),
    ("", "v1", "namespaces", "Namespace", false, "ns", "", "status finalize"),
    ("", "v1", "nodes", "Node", false, "no", "", "status"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, "pvc", "", "status"),
    ("", "v1", "persistentvolumes", "PersistentVolume", false, "pv", "", "status"),
    ("", "v1", "pods", "Pod", true, "po", "all", "status portforward eviction"),
    ("", "v1", "podtemplates", "PodTemplate", true, "", "", ""),
    ("", "v1", "replicationcontrollers", "ReplicationController", true, "rc", "all", "status scale"),
    ("", "v1", "resourcequotas", "ResourceQuota", true, "quota", "", "status"),
    ("", "v1", "secrets", "Secret", true, "", "", ""),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, "sa", "", ""),
    ("", "v1", "services", "Service", true, "svc", "all", "status"),
    (
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        "",
        "api-extensions",
        "",
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        "",
        "api-extensions",
        "",
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        "crd crds",
        "api-extensions",
        "status",
    ),
    ("apps", "v1", "controllerrevisions", "ControllerRevision", true, "", "", ""),
    ("apps", "v1", "daemonsets", "DaemonSet", true, "ds", "all", "status"),
    ("apps", "v1", "deployments", "Deployment", true, "deploy", "all", "status scale"),
    ("apps", "v1", "replicasets", "ReplicaSet", true, "rs", "all", "status scale"),
    ("apps", "v1", "statefulsets", "StatefulSet", true, "sts", "all", "status scale"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, "hpa", "all", "status"),
    ("autoscaling", "v1", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, "hpa", "all", "status"),
    ("batch", "v1", "cronjobs", "CronJob", true, "cj", "all", "status"),
    ("batch", "v1", "jobs", "Job", true, "", "all", "status"),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, "", "", ""),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", true, "", "", ""),
    ("events.k8s.io", "v1", "events", "Event", true, "ev", "", ""),
    ("networking.k8s.io", "v1", "ingressclasses", "IngressClass", false, "", "", ""),
    ("networking.k8s.io", "v1", "ingresses", "Ingress", true, "ing", "", "status"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, "netpol", "", ""),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, "pdb", "", "status"),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, "", "", ""),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, "", "", ""),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, "", "", ""),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true, "", "", ""),
    ("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", false, "pc", "", ""),
    ("storage.k8s.io", "v1", "storageclasses", "StorageClass", false, "sc", "", ""),
];

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// The built-in resources, the preferred version of a group first.
pub fn built_in() -> &'static [ApiResource] {
    static TABLE: std::sync::OnceLock<Vec<ApiResource>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        BUILT_IN
            .iter()
            .map(|&(group, version, plural, kind, namespaced, short, categories, subresources)| ApiResource {
                group: group.to_owned(),
                version: version.to_owned(),
                plural: plural.to_owned(),
                singular: kind.to_ascii_lowercase(),
                kind: kind.to_owned(),
                namespaced,
                short_names: words(short),
                categories: words(categories),
                subresources: words(subresources),
            })
            .collect()
    })
}

/// The resources a stored CustomResourceDefinition serves, one per served version (storage version first).
pub fn of_crd(crd: &Value) -> Vec<ApiResource> {
    let spec = &crd["spec"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let list = |v: &Value| v.as_array().map(|a| a.iter().map(s).collect()).unwrap_or_default();
    let names = &spec["names"];
    let mut versions: Vec<&Value> = spec["versions"]
        .as_array()
        .map(|a| a.iter().filter(|v| v["served"].as_bool().unwrap_or(false)).collect())
        .unwrap_or_default();
    versions.sort_by_key(|v| !v["storage"].as_bool().unwrap_or(false));
    let kind = s(&names["kind"]);
    versions
        .into_iter()
        .map(|v| ApiResource {
            group: s(&spec["group"]),
            version: s(&v["name"]),
            plural: s(&names["plural"]),
            singular: Some(s(&names["singular"]))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| kind.to_ascii_lowercase()),
            kind: kind.clone(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: list(&names["shortNames"]),
            categories: list(&names["categories"]),
            subresources: ["status", "scale"]
                .into_iter()
                .filter(|sub| !v["subresources"][sub].is_null() || !spec["subresources"][sub].is_null())
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn sub_kind(r: &ApiResource, sub: &str) -> (String, String, String) {
    match sub {
        "scale" => ("autoscaling".to_owned(), "v1".to_owned(), "Scale".to_owned()),
        "eviction" => ("policy".to_owned(), "v1".to_owned(), "Eviction".to_owned()),
        "portforward" => (String::new(), "v1".to_owned(), "PodPortForwardOptions".to_owned()),
        _ => (r.group.clone(), r.version.clone(), r.kind.clone()),
    }
}

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "portforward" => vec!["create", "get"],
        "eviction" => vec!["create"],
        "finalize" => vec!["update"],
        _ => vec!["get", "patch", "update"],
    }
}

/// Group-versions in discovery order: the core group, then groups by name, each preferred version first.
fn group_versions(all: &[ApiResource]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in all {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version.clone()),
            Some(_) => {}
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `GET /version`.
pub fn version() -> Value {
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "major": major.to_string(), "minor": minor.to_string(),
        "gitVersion": format!("v{major}.{minor}.0-apisim"), "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// The aggregated discovery document of the core group (`/api`) or of the others (`/apis`).
pub fn aggregated(all: &[ApiResource], core: bool) -> Value {
    let items: Vec<Value> = group_versions(all)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = all
                        .iter()
                        .filter(|r| r.group == group && &r.version == v)
                        .map(|r| {
                            let subresources: Vec<Value> = r
                                .subresources
                                .iter()
                                .map(|sub| {
                                    let (g, v, k) = sub_kind(r, sub);
                                    json!({
                                        "subresource": sub, "verbs": sub_verbs(sub),
                                        "responseKind": {"group": g, "version": v, "kind": k},
                                    })
                                })
                                .collect();
                            let mut res = json!({
                                "resource": r.plural, "singularResource": r.singular,
                                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "verbs": VERBS,
                            });
                            if !r.short_names.is_empty() {
                                res["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                res["categories"] = json!(r.categories);
                            }
                            if !subresources.is_empty() {
                                res["subresources"] = json!(subresources);
                            }
                            res
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `GET /api` (unaggregated).
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null)})
}

/// `GET /apis` (unaggregated).
pub fn groups(all: &[ApiResource]) -> Value {
    let groups: Vec<Value> = group_versions(all)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(group, versions)| group_doc(&group, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`, if the group is served.
pub fn group(all: &[ApiResource], group: &str) -> Option<Value> {
    let (_, versions) = group_versions(all).into_iter().find(|(g, _)| g == group && !g.is_empty())?;
    let mut doc = group_doc(group, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `/apis/<group>/<version>`, if served.
pub fn resource_list(all: &[ApiResource], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in all.iter().filter(|r| r.group == group && r.version == version) {
        let mut res = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            res["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            res["categories"] = json!(r.categories);
        }
        resources.push(res);
        for sub in &r.subresources {
            let (g, v, k) = sub_kind(r, sub);
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced,
                "group": g, "version": v, "kind": k, "verbs": sub_verbs(sub),
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn openapi_root(all: &[ApiResource]) -> Value {
    let mut paths = BTreeMap::new();
    for (group, versions) in group_versions(all) {
        for v in versions {
            let p = gv_path(&group, &v);
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}")}));
        }
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1 | apis/group/version>`: per resource, the object paths with their PATCH
/// operation (its group-version-kind and the `fieldValidation` and `dryRun` query parameters), and a
/// schema per kind that accepts any object (the server validates what it knows itself).
pub fn openapi_gv(all: &[ApiResource], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ApiResource> = all.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    for r in served {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = format!("/{}", gv_path(&r.group, &r.version));
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(path, json!({"patch": op("patch"), "put": op("put")}));
        let schema_name = format!("{}.{}.{}", if r.group.is_empty() { "core" } else { &r.group }, r.version, r.kind);
        schemas.insert(
            schema_name,
            json!({
                "type": "object",
                "x-kubernetes-group-version-kind": [gvk],
                "x-kubernetes-preserve-unknown-fields": true,
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (apisim)", "version": format!("v{}.{}", KUBERNETES_VERSION.0, KUBERNETES_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crd_serves_its_served_versions_storage_first() {
        let crd = json!({"spec": {
            "group": "example.com", "scope": "Cluster",
            "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1beta1", "served": true, "storage": false},
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                {"name": "v1alpha1", "served": false, "storage": false},
            ],
        }});
        let served = of_crd(&crd);
        let versions: Vec<&str> = served.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        assert!(!served[0].namespaced);
        assert_eq!(served[0].singular, "widget");
        assert_eq!(served[0].subresources, ["status"]);
        assert!(served[1].subresources.is_empty());
    }

    #[test]
    fn resource_lists_name_subresources_after_their_resource() {
        let doc = resource_list(built_in(), "apps", "v1").unwrap();
        let names: Vec<&str> = doc["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        let i = names.iter().position(|n| *n == "deployments").unwrap();
        assert_eq!(names[i + 1], "deployments/status");
        assert!(resource_list(built_in(), "apps", "v9").is_none());
    }
}
