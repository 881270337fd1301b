//! SMI `specs.smi-spec.io/v1alpha4` TCPRoute: the destination ports a TrafficTarget allows.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::TcpRoute;
use messages::{Kind, MeshObject};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::name_ns;

/// `specs.smi-spec.io/v1alpha4` TCPRoute: the destination ports a TrafficTarget allows.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "specs.smi-spec.io", version = "v1alpha4", kind = "TCPRoute", namespaced)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPRouteSpec {
    #[serde(default)]
    pub matches: TCPMatch,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub ports: Vec<i64>,
}

pub fn convert(o: &TCPRoute) -> Result<TcpRoute, ConvertError> {
    let (namespace, name, _) = name_ns("TCPRoute", &o.metadata, true)?;
    Ok(TcpRoute { namespace, name, ports: o.spec.matches.ports.clone() })
}
impl MeshKind for TCPRoute {
    const KIND: Kind = Kind::TcpRoute;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}
