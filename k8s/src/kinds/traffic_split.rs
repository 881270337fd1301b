//! SMI `split.smi-spec.io/v1alpha2` TrafficSplit: traffic for an apex Service goes to backends by weight.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::TrafficSplit as Model;
use messages::{Kind, MeshObject};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{NameRule, check_name, err, name_ns};

/// `split.smi-spec.io/v1alpha2` TrafficSplit: traffic for the apex `service` goes to `backends` by weight.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "split.smi-spec.io", version = "v1alpha2", kind = "TrafficSplit", namespaced, shortname = "ts")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    pub service: String,
    #[serde(default)]
    pub backends: Vec<TrafficSplitBackend>,
    /// Route matches (v1alpha4's field; kept so such objects parse). Not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crds::open_value")]
    pub matches: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitBackend {
    pub service: String,
    pub weight: i64,
}

pub fn convert(o: &TrafficSplit) -> Result<Model, ConvertError> {
    let (namespace, name, label) = name_ns("TrafficSplit", &o.metadata, true)?;
    check_name(NameRule::Dns1035Label, &o.spec.service).map_err(|e| err(&label, format!("spec.service: {e}")))?;
    for (i, b) in o.spec.backends.iter().enumerate() {
        check_name(NameRule::Dns1035Label, &b.service)
            .map_err(|e| err(&label, format!("spec.backends[{i}].service: {e}")))?;
    }
    Ok(Model {
        namespace,
        name,
        service: o.spec.service.clone(),
        backends: o.spec.backends.iter().map(|b| (b.service.clone(), b.weight)).collect(),
    })
}

impl MeshKind for TrafficSplit {
    const KIND: Kind = Kind::TrafficSplit;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}
