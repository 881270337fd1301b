//! `v1` Service: the mesh's Services, their ports and protocols (TCP only; UDP and SCTP pass by the mesh).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use messages::{AppProtocol, ServiceKey, ServicePort, TargetPort};
use messages::{Kind, MeshObject};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{is_tcp, name_ns, parse_ip, port_u16};

pub fn convert(o: &Service) -> Result<messages::Service, ConvertError> {
    let (ns, name, label) = name_ns("Service", &o.metadata, true)?;
    let spec = o.spec.clone().unwrap_or_default();
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => Some(parse_ip(&label, "spec.clusterIP", ip)?),
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().iter().enumerate() {
        if !is_tcp(p.protocol.as_deref()) {
            continue;
        }
        let port = port_u16(&label, &format!("spec.ports[{i}].port"), p.port)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_u16(&label, &format!("spec.ports[{i}].targetPort"), *n)?)
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port_u16(&label, &format!("spec.ports[{i}].targetPort"), n)?),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            target_port,
            protocol: AppProtocol::select(p.app_protocol.as_deref(), p.name.as_deref()),
        });
    }
    let selector: Option<BTreeMap<String, String>> = spec.selector.filter(|s| !s.is_empty());
    Ok(messages::Service { key: ServiceKey::new(ns, name), cluster_ip, selector, ports })
}
impl MeshKind for Service {
    const KIND: Kind = Kind::Service;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }
}
