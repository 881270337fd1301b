//! Custom resources under their CustomResourceDefinition's structural schema, as the real API server
//! treats them: defaults, pruning, `fieldValidation`, validation errors (422 in the API server's words),
//! served and storage versions, the status subresource, the CRD's own rules, and its deletion taking its
//! custom resources along.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use apisim::{ApiServer, Resource};
use common::http;
use serde_json::{Value, json};

const JSON: &str = "application/json";
const WIDGETS: &str = "/apis/example.com/v1/namespaces/demo/widgets";

fn schema() -> Value {
    json!({"type": "object", "properties": {
        "spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "mode": {"type": "string", "enum": ["fast", "slow"], "default": "slow"},
            "name": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 8},
            "target": {"x-kubernetes-int-or-string": true},
            "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
            "rules": {"type": "array", "items": {"type": "object", "required": ["kind"], "properties": {
                "kind": {"type": "string"}, "weight": {"type": "integer", "default": 1}}}},
            "limits": {"type": "object", "default": {}, "properties": {"cpu": {"type": "string", "default": "100m"}}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "note": {"type": "string", "nullable": true},
        }},
        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    }})
}

fn crd() -> Value {
    let version = |name: &str, served: bool, storage: bool| {
        json!({"name": name, "served": served, "storage": storage, "subresources": {"status": {}},
               "schema": {"openAPIV3Schema": schema()}})
    };
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
            "versions": [version("v1beta1", true, false), version("v1", true, true), version("v1alpha1", false, false)],
        },
    })
}

async fn with_crd() -> ApiServer {
    let sim = ApiServer::start().await.unwrap();
    let created =
        http(&sim, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", JSON, &crd().to_string()).await;
    assert_eq!(created.status, 201, "{created:?}");
    sim
}

fn widget(name: &str, spec: Value) -> String {
    json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}).to_string()
}

#[tokio::test]
async fn defaults_fill_in_and_unknown_fields_are_pruned_on_create_update_and_patch() {
    let sim = with_crd().await;
    let spec = json!({"size": 3, "colour": "red", "rules": [{"kind": "a"}], "extra": {"anything": {"goes": 1}}});
    let created = http(&sim, "POST", WIDGETS, JSON, &widget("w", spec)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.warnings, ["unknown field \"spec.colour\""], "fieldValidation defaults to Warn");
    let expected = json!({"size": 3, "mode": "slow", "limits": {"cpu": "100m"}, "rules": [{"kind": "a", "weight": 1}],
                          "extra": {"anything": {"goes": 1}}});
    assert_eq!(created.body["spec"], expected);
    let widgets = Resource::new("example.com", "v1", "widgets");
    assert_eq!(sim.get(&widgets, "demo", "w").unwrap()["spec"], expected);

    // An update without a defaulted field gets it again.
    let mut replacement = created.body.clone();
    replacement["spec"] = json!({"size": 4});
    let updated = http(&sim, "PUT", &format!("{WIDGETS}/w"), JSON, &replacement.to_string()).await;
    assert_eq!(updated.status, 200, "{updated:?}");
    assert_eq!(updated.body["spec"], json!({"size": 4, "mode": "slow", "limits": {"cpu": "100m"}}));

    // A null non-nullable field is dropped and defaulted; a nullable one keeps its null.
    let merge = json!({"spec": {"limits": null, "mode": null, "note": null, "rules": [{"kind": "b", "weight": 5}]}});
    let patched =
        http(&sim, "PATCH", &format!("{WIDGETS}/w"), "application/merge-patch+json", &merge.to_string()).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(
        patched.body["spec"],
        json!({"size": 4, "mode": "slow", "limits": {"cpu": "100m"}, "rules": [{"kind": "b", "weight": 5}]}),
        "merge patch null removes: the defaults come back"
    );
    let ops = json!([{"op": "add", "path": "/spec/note", "value": null}, {"op": "add", "path": "/spec/limits", "value": null}]);
    let patched = http(&sim, "PATCH", &format!("{WIDGETS}/w"), "application/json-patch+json", &ops.to_string()).await;
    assert_eq!(patched.body["spec"]["note"], Value::Null);
    assert!(patched.body["spec"].as_object().unwrap().contains_key("note"), "nullable: kept as null");
    assert_eq!(patched.body["spec"]["limits"], json!({"cpu": "100m"}));

    // Server-side apply (YAML) is defaulted and pruned too.
    let applied = http(
        &sim,
        "PATCH",
        "/apis/example.com/v1/namespaces/demo/widgets/applied?fieldManager=test",
        "application/apply-patch+yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: applied}\nspec:\n  size: 2\n  unknown: x\n",
    )
    .await;
    assert_eq!(applied.status, 201, "{applied:?}");
    assert_eq!(applied.body["spec"], json!({"size": 2, "mode": "slow", "limits": {"cpu": "100m"}}));

    // Custom resources take no strategic merge patch.
    let strategic = http(&sim, "PATCH", &format!("{WIDGETS}/w"), "application/strategic-merge-patch+json", "{}").await;
    assert_eq!(strategic.status, 415, "{strategic:?}");
}

#[tokio::test]
async fn field_validation_strict_refuses_unknown_fields_warn_warns_and_ignore_prunes() {
    let sim = with_crd().await;
    let spec = json!({"size": 1, "colour": "red", "rules": [{"kind": "a", "x": 1}]});
    let strict =
        http(&sim, "POST", &format!("{WIDGETS}?fieldValidation=Strict"), JSON, &widget("w", spec.clone())).await;
    assert_eq!(strict.status, 400);
    assert_eq!(
        strict.body["message"],
        "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.colour\", \
         unknown field \"spec.rules[0].x\""
    );
    let warned = http(&sim, "POST", &format!("{WIDGETS}?fieldValidation=Warn"), JSON, &widget("w", spec.clone())).await;
    assert_eq!(warned.status, 201);
    assert_eq!(warned.warnings, ["unknown field \"spec.colour\"", "unknown field \"spec.rules[0].x\""]);
    let ignored = http(&sim, "POST", &format!("{WIDGETS}?fieldValidation=Ignore"), JSON, &widget("v", spec)).await;
    assert_eq!(ignored.status, 201);
    assert!(ignored.warnings.is_empty());
    assert_eq!(ignored.body["spec"]["rules"], json!([{"kind": "a", "weight": 1}]));

    let merge = json!({"spec": {"foo": 1}}).to_string();
    let patched =
        http(&sim, "PATCH", &format!("{WIDGETS}/w?fieldValidation=Strict"), "application/merge-patch+json", &merge)
            .await;
    assert_eq!(
        (patched.status, patched.body["message"].as_str()),
        (400, Some("strict decoding error: unknown field \"spec.foo\""))
    );
}

#[tokio::test]
async fn violations_are_422_invalid_in_the_api_servers_words() {
    let sim = with_crd().await;
    let one = http(&sim, "POST", WIDGETS, JSON, &widget("w", json!({"size": 3, "mode": "medium"}))).await;
    assert_eq!((one.status, one.body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        one.body["message"],
        "Widget.example.com \"w\" is invalid: spec.mode: Unsupported value: \"medium\": supported values: \"fast\", \"slow\""
    );
    assert_eq!(one.body["details"]["causes"][0]["field"], "spec.mode");
    assert_eq!(one.body["details"]["causes"][0]["reason"], "FieldValueNotSupported");

    let spec =
        json!({"size": 11, "name": "A", "target": 1.5, "tags": ["a", "b", "c"], "rules": [{"weight": 2}], "note": 3});
    let many = http(&sim, "POST", WIDGETS, JSON, &widget("w", spec)).await;
    assert_eq!(many.status, 422);
    assert_eq!(
        many.body["message"],
        "Widget.example.com \"w\" is invalid: [\
         spec.name: Invalid value: \"A\": spec.name in body should be at least 2 chars long, \
         spec.name: Invalid value: \"A\": spec.name in body should match '^[a-z]+$', \
         spec.note: Invalid value: \"integer\": spec.note in body must be of type string: \"integer\", \
         spec.rules[0].kind: Required value, \
         spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10, \
         spec.tags: Too many: 3: must have at most 2 items, \
         spec.target: Invalid value: \"number\": spec.target in body must be of type integer,string: \"number\"]"
    );
    let missing = http(&sim, "POST", WIDGETS, JSON, &widget("w", json!({"size": 0, "name": "toolongname"}))).await;
    assert_eq!(
        missing.body["message"],
        "Widget.example.com \"w\" is invalid: [spec.name: Too long: may not be more than 8 bytes, \
         spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1]"
    );
    let required = http(&sim, "POST", WIDGETS, JSON, &widget("w", json!({"target": "50%"}))).await;
    assert_eq!(required.body["message"], "Widget.example.com \"w\" is invalid: spec.size: Required value");
    assert!(sim.list(&Resource::new("example.com", "v1", "widgets")).is_empty());

    // The same through kube-rs: an API error with the same message.
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        sim.client().unwrap(),
        "demo",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget"),
            "widgets",
        ),
    );
    let obj: kube::api::DynamicObject = serde_json::from_str(&widget("w", json!({"size": 99}))).unwrap();
    let kube::Error::Api(status) = api.create(&Default::default(), &obj).await.unwrap_err() else {
        panic!("an API error")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.ends_with("spec.size: Invalid value: 99: spec.size in body should be less than or equal to 10")
    );
}

#[tokio::test]
async fn versions_are_served_as_declared_stored_at_the_storage_version_and_status_is_a_subresource() {
    let sim = with_crd().await;
    let stored_crd = sim
        .get(&Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions"), "", "widgets.example.com")
        .unwrap();
    let conditions = stored_crd["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().any(|c| c["type"] == "Established" && c["status"] == "True"), "{stored_crd}");
    assert_eq!(stored_crd["status"]["storedVersions"], json!(["v1"]));
    assert_eq!(stored_crd["status"]["acceptedNames"]["kind"], "Widget");

    let beta = "/apis/example.com/v1beta1/namespaces/demo/widgets";
    let mut body: Value = serde_json::from_str(&widget("w", json!({"size": 1}))).unwrap();
    body["apiVersion"] = json!("example.com/v1beta1");
    let created = http(&sim, "POST", beta, JSON, &body.to_string()).await;
    assert_eq!((created.status, created.body["apiVersion"].as_str()), (201, Some("example.com/v1beta1")));
    let stored = sim.get(&Resource::new("example.com", "v1", "widgets"), "demo", "w").unwrap();
    assert_eq!(stored["apiVersion"], "example.com/v1", "stored at the storage version");
    assert_eq!(http(&sim, "GET", &format!("{WIDGETS}/w"), JSON, "").await.body["apiVersion"], "example.com/v1");
    let listed = http(&sim, "GET", beta, JSON, "").await.body;
    assert_eq!(listed["items"][0]["apiVersion"], "example.com/v1beta1");
    assert_eq!(listed["kind"], "WidgetList");
    let unserved = http(&sim, "GET", "/apis/example.com/v1alpha1/namespaces/demo/widgets/w", JSON, "").await;
    assert_eq!(unserved.status, 404);
    let group = http(&sim, "GET", "/apis/example.com", JSON, "").await.body;
    assert_eq!(
        group["versions"],
        json!([{"groupVersion": "example.com/v1", "version": "v1"}, {"groupVersion": "example.com/v1beta1", "version": "v1beta1"}])
    );

    // With the status subresource, the main resource's writes leave status alone, and /status only status.
    let mut with_status = stored.clone();
    with_status["status"] = json!({"ready": true});
    with_status["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let main = http(&sim, "PUT", &format!("{WIDGETS}/w"), JSON, &with_status.to_string()).await;
    assert_eq!(main.status, 200);
    assert!(main.body.get("status").is_none(), "{main:?}");
    with_status["spec"]["size"] = json!(9);
    let status = http(&sim, "PUT", &format!("{WIDGETS}/w/status"), JSON, &with_status.to_string()).await;
    assert_eq!(status.body["status"], json!({"ready": true}));
    assert_eq!(status.body["spec"]["size"], 1);
    let bad_status = json!({"status": {"ready": "yes"}}).to_string();
    let invalid =
        http(&sim, "PATCH", &format!("{WIDGETS}/w/status"), "application/merge-patch+json", &bad_status).await;
    assert_eq!(invalid.status, 422, "the status is validated too: {invalid:?}");

    // Deleting the CRD deletes its custom resources.
    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com";
    assert_eq!(http(&sim, "DELETE", crd_path, JSON, "").await.status, 200);
    assert!(sim.list(&Resource::new("example.com", "v1", "widgets")).is_empty());
    assert_eq!(http(&sim, "GET", "/apis/example.com", JSON, "").await.status, 404);
}

#[tokio::test]
async fn a_crd_must_name_itself_after_its_plural_and_group_and_store_exactly_one_version() {
    let sim = ApiServer::start().await.unwrap();
    let mut two = crd();
    two["metadata"]["name"] = json!("gadgets.example.com");
    two["spec"]["versions"][0]["storage"] = json!(true);
    let refused =
        http(&sim, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", JSON, &two.to_string()).await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        refused.body["message"],
        "CustomResourceDefinition.apiextensions.k8s.io \"gadgets.example.com\" is invalid: [metadata.name: Invalid value: \
         \"gadgets.example.com\": must be spec.names.plural+\".\"+spec.group, spec.versions: Invalid value: \
         [\"v1beta1\", \"v1\", \"v1alpha1\"]: must have exactly one version marked as storage version]"
    );
    assert!(sim.list(&Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions")).is_empty());
}
