//! `v1` Endpoints: read from the mesh directory (on a cluster, EndpointSlices are watched instead; the
//! `v1` Endpoints API is deprecated).

use k8s_openapi::api::core::v1::Endpoints;
use messages::{EndpointPort, EndpointSubset, ObjectKey, ServiceKey};
use messages::{Kind, MeshObject};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{is_tcp, name_ns, parse_ip, port_u16};

pub fn convert(o: &Endpoints) -> Result<messages::Endpoints, ConvertError> {
    let (ns, name, label) = name_ns("Endpoints", &o.metadata, true)?;
    let mut subsets = Vec::new();
    for (i, s) in o.subsets.clone().unwrap_or_default().iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in s.addresses.clone().unwrap_or_default().iter().enumerate() {
            addresses.push(parse_ip(&label, &format!("subsets[{i}].addresses[{j}].ip"), &a.ip)?);
        }
        let mut ports = Vec::new();
        for (j, p) in s.ports.clone().unwrap_or_default().iter().enumerate() {
            if is_tcp(p.protocol.as_deref()) {
                let port = port_u16(&label, &format!("subsets[{i}].ports[{j}].port"), p.port)?;
                ports.push(EndpointPort { name: p.name.clone().filter(|n| !n.is_empty()), port });
            }
        }
        subsets.push(EndpointSubset { addresses, ports });
    }
    Ok(messages::Endpoints {
        key: ObjectKey::new(Kind::Endpoints, ns.clone(), name.clone()),
        service: ServiceKey::new(ns, name),
        subsets,
    })
}
impl MeshKind for Endpoints {
    const KIND: Kind = Kind::Endpoints;
    const WATCH: Watch<Self> = Watch::DirectoryOnly;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }
}
