//! SMI `specs.smi-spec.io/v1alpha4` HTTPRouteGroup: named HTTP request matches that TrafficTargets refer to.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{HttpMatch, HttpRouteGroup};
use messages::{Kind, MeshObject};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{err, name_ns};

/// `specs.smi-spec.io/v1alpha4` HTTPRouteGroup: named HTTP request matches that TrafficTargets refer to.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "specs.smi-spec.io", version = "v1alpha4", kind = "HTTPRouteGroup", namespaced, shortname = "htr")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("required" = ["matches"]))]
pub struct HTTPRouteGroupSpec {
    #[serde(default)]
    pub matches: Vec<HTTPMatch>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPMatch {
    pub name: String,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "http_methods")]
    pub methods: Vec<String>,
    /// Header name to regex, as a map or a list of maps: open in the CRD, checked when read.
    #[serde(default)]
    #[schemars(schema_with = "crate::crds::open_value")]
    pub headers: Option<HTTPHeaders>,
}

/// Header matches: `{name: regex}`, or the list-of-maps form (`- user-agent: ".*Android.*"`) seen in SMI's
/// examples; both mean "every listed header matches".
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum HTTPHeaders {
    Map(BTreeMap<String, String>),
    List(Vec<BTreeMap<String, String>>),
}

impl HTTPHeaders {
    pub fn flatten(&self) -> BTreeMap<String, String> {
        match self {
            HTTPHeaders::Map(m) => m.clone(),
            HTTPHeaders::List(l) => l.iter().flat_map(|m| m.clone()).collect(),
        }
    }
}

/// `methods`: the methods SMI names, so the API server refuses `FETCH` as OSM's CRD does.
fn http_methods(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "string",
            "enum": ["*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        }
    })
}

pub fn convert(o: &HTTPRouteGroup) -> Result<HttpRouteGroup, ConvertError> {
    let (namespace, name, label) = name_ns("HTTPRouteGroup", &o.metadata, true)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut matches = Vec::new();
    for (i, m) in o.spec.matches.iter().enumerate() {
        if m.name.is_empty() {
            return Err(err(&label, format!("spec.matches[{i}].name is empty")));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(err(&label, format!("spec.matches[{i}].name {:?} is used twice", m.name)));
        }
        matches.push(HttpMatch {
            name: m.name.clone(),
            path_regex: m.path_regex.clone(),
            methods: m.methods.clone(),
            headers: m.headers.as_ref().map(HTTPHeaders::flatten).unwrap_or_default(),
        });
    }
    Ok(HttpRouteGroup { namespace, name, matches })
}
impl MeshKind for HTTPRouteGroup {
    const KIND: Kind = Kind::HttpRouteGroup;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}
