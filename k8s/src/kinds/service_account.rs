//! `v1` ServiceAccount: the identities of the mesh.

use k8s_openapi::api::core::v1::ServiceAccount;
use messages::ServiceAccount as Model;
use messages::{Kind, MeshObject};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::name_ns;

pub fn convert(o: &ServiceAccount) -> Result<Model, ConvertError> {
    let (namespace, name, _) = name_ns("ServiceAccount", &o.metadata, true)?;
    Ok(Model { namespace, name })
}
impl MeshKind for ServiceAccount {
    const KIND: Kind = Kind::ServiceAccount;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }
}
