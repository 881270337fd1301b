//! OSM's `config.openservicemesh.io/v1alpha2` MeshRootCertificate: one root of the mesh and its role in a
//! root rotation. Read from the mesh directory; on a cluster, not watched yet.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{Kind, MeshObject};
use messages::{MeshRootCertificate as Model, RootRole};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{NameRule, check_name, err, name_ns};

/// `config.openservicemesh.io/v1alpha2` MeshRootCertificate: one root of the mesh and its role in a root
/// rotation (active: signs and is trusted; passive: trusted only; inactive: neither).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "config.openservicemesh.io",
    version = "v1alpha2",
    kind = "MeshRootCertificate",
    namespaced,
    shortname = "mrc"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshRootCertificateSpec {
    pub provider: RootProviderSpec,
    #[serde(default)]
    pub trust_domain: String,
    /// `active`, `passive` or `inactive`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_enabled: Option<bool>,
}

/// `spec.provider`: exactly one issuer. Vault and cert-manager are read (so they can be refused by name).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootProviderSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tresor: Option<TresorProviderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crds::open_object")]
    pub vault: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crds::open_object")]
    pub cert_manager: Option<serde_json::Value>,
}

/// `spec.provider.tresor`: the built-in CA, its certificate and key in a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TresorProviderSpec {
    pub ca: TresorCaSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TresorCaSpec {
    pub secret_ref: SecretReference,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The root of a MeshRootCertificate (its trust domain is checked against the mesh's where roots are
/// put to use).
pub fn convert(o: &MeshRootCertificate) -> Result<Model, ConvertError> {
    let (namespace, name, label) = name_ns("MeshRootCertificate", &o.metadata, true)?;
    let role = match o.spec.role.as_str() {
        "active" => RootRole::Active,
        "passive" => RootRole::Passive,
        "inactive" => RootRole::Inactive,
        other => return Err(err(&label, format!("spec.role {other:?} is not one of active, passive, inactive"))),
    };
    let p = &o.spec.provider;
    let secret = match (&p.tresor, &p.vault, &p.cert_manager) {
        (Some(t), None, None) => {
            let r = &t.ca.secret_ref;
            check_name(NameRule::Dns1123Subdomain, &r.name)
                .map_err(|e| err(&label, format!("spec.provider.tresor.ca.secretRef.name: {e}")))?;
            if let Some(ns) = &r.namespace {
                check_name(NameRule::Dns1123Label, ns)
                    .map_err(|e| err(&label, format!("spec.provider.tresor.ca.secretRef.namespace: {e}")))?;
            }
            (r.namespace.clone().unwrap_or_else(|| namespace.clone()), r.name.clone())
        }
        (None, None, None) => return Err(err(&label, "spec.provider names no issuer (tresor)")),
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(err(
                &label,
                "spec.provider: only the built-in issuer (tresor) is supported; vault and certManager are not yet",
            ));
        }
        _ => return Err(err(&label, "spec.provider must name exactly one issuer")),
    };
    if o.spec.spiffe_enabled == Some(true) {
        return Err(err(&label, "spec.spiffeEnabled: SPIFFE URIs in service certificates are not supported yet"));
    }
    Ok(Model { namespace, name, role, trust_domain: o.spec.trust_domain.clone(), secret })
}
impl MeshKind for MeshRootCertificate {
    const KIND: Kind = Kind::MeshRootCertificate;
    const WATCH: Watch<Self> = Watch::DirectoryOnly;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}
