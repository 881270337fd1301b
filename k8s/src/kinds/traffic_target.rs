//! SMI `access.smi-spec.io/v1alpha3` TrafficTarget: who may reach whom over which routes.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{Kind, MeshObject};
use messages::{Subject, TrafficTargetRule as Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{NameRule, check_name, err, name_ns};

/// `access.smi-spec.io/v1alpha3` TrafficTarget: who (`sources`) may reach whom (`destination`) over which
/// routes (`rules`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "access.smi-spec.io", version = "v1alpha3", kind = "TrafficTarget", namespaced, shortname = "tt")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("required" = ["destination", "rules", "sources"]))]
pub struct TrafficTargetSpec {
    pub destination: IdentityBindingSubject,
    #[serde(default)]
    pub sources: Vec<IdentityBindingSubject>,
    #[serde(default)]
    pub rules: Vec<TrafficTargetRule>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityBindingSubject {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTargetRule {
    #[schemars(extend("enum" = ["HTTPRouteGroup", "TCPRoute", "UDPRoute"]))]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub matches: Vec<String>,
}

fn subject(s: &IdentityBindingSubject, label: &str, field: &str) -> Result<Subject, ConvertError> {
    // An absent namespace stays empty: the policy engine refuses it with a code (E2020 for the
    // destination, E2030 for a source). Reading it as the TrafficTarget's own namespace would grant
    // access OSM denies.
    let namespace = s.namespace.clone().unwrap_or_default();
    check_name(NameRule::Dns1123Subdomain, &s.name).map_err(|e| err(label, format!("{field}.name: {e}")))?;
    if !namespace.is_empty() {
        check_name(NameRule::Dns1123Label, &namespace).map_err(|e| err(label, format!("{field}.namespace: {e}")))?;
    }
    Ok(Subject { kind: s.kind.clone(), name: s.name.clone(), namespace })
}

pub fn convert(o: &TrafficTarget) -> Result<messages::TrafficTarget, ConvertError> {
    let (namespace, name, label) = name_ns("TrafficTarget", &o.metadata, true)?;
    let sources = o
        .spec
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| subject(s, &label, &format!("spec.sources[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(messages::TrafficTarget {
        destination: subject(&o.spec.destination, &label, "spec.destination")?,
        sources,
        rules: o
            .spec
            .rules
            .iter()
            .map(|r| Rule { kind: r.kind.clone(), name: r.name.clone(), matches: r.matches.clone() })
            .collect(),
        namespace,
        name,
    })
}
impl MeshKind for TrafficTarget {
    const KIND: Kind = Kind::TrafficTarget;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}
