//! `v1` Namespace: the mesh's namespaces (on a cluster, those labelled monitored-by the mesh).

use k8s_openapi::api::core::v1::Namespace;
use messages::Namespace as Model;
use messages::{Kind, MeshObject};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::name_ns;

pub fn convert(o: &Namespace) -> Result<Model, ConvertError> {
    let (_, name, _) = name_ns("Namespace", &o.metadata, false)?;
    Ok(Model { name, labels: o.metadata.labels.clone().unwrap_or_default() })
}
impl MeshKind for Namespace {
    const KIND: Kind = Kind::Namespace;
    const WATCH: Watch<Self> = Watch::MonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }
}
