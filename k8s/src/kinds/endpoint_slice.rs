//! `discovery.k8s.io/v1` EndpointSlice: the endpoints of a Service (named by its label
//! `kubernetes.io/service-name`); not-ready endpoints receive no traffic.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use messages::{EndpointPort, EndpointSubset, ObjectKey, ServiceKey};
use messages::{Kind, MeshObject};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{NameRule, SERVICE_NAME_LABEL, check_name, err, is_tcp, name_ns, parse_ip, port_u16};

pub fn convert(o: &EndpointSlice) -> Result<messages::Endpoints, ConvertError> {
    let (ns, name, label) = name_ns("EndpointSlice", &o.metadata, true)?;
    let service = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .ok_or_else(|| err(&label, format!("label {SERVICE_NAME_LABEL} is missing: the slice names no Service")))?;
    check_name(NameRule::Dns1035Label, &service)
        .map_err(|e| err(&label, format!("label {SERVICE_NAME_LABEL}: {e}")))?;
    let mut addresses = Vec::new();
    for (i, e) in o.endpoints.iter().flatten().enumerate() {
        // A not-ready endpoint receives no traffic, as with kube-proxy.
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(parse_ip(&label, &format!("endpoints[{i}].addresses[{j}]"), a)?);
        }
    }
    let mut ports = Vec::new();
    for (j, p) in o.ports.clone().unwrap_or_default().iter().enumerate() {
        if is_tcp(p.protocol.as_deref()) {
            let port = p.port.ok_or_else(|| err(&label, format!("ports[{j}].port is missing")))?;
            let port = port_u16(&label, &format!("ports[{j}].port"), port)?;
            ports.push(EndpointPort { name: p.name.clone().filter(|n| !n.is_empty()), port });
        }
    }
    Ok(messages::Endpoints {
        key: ObjectKey::new(Kind::EndpointSlice, ns.clone(), name),
        service: ServiceKey::new(ns, service),
        subsets: vec![EndpointSubset { addresses, ports }],
    })
}
impl MeshKind for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }
}
