//! `v1` Pod: a workload of the mesh, its proxy UUID (label `osm-proxy-uuid`), identity, address and ports.

use k8s_openapi::api::core::v1::Pod;
use messages::{ContainerPort, PROXY_UUID_LABEL, ProxyUuid};
use messages::{Kind, MeshObject};

use super::{MeshKind, Watch};
use crate::convert::ConvertError;
use crate::convert::{NameRule, PROMETHEUS_SCRAPE_ANNOTATION, check_name, err, is_tcp, name_ns, parse_ip, port_u16};

pub fn convert(o: &Pod) -> Result<messages::Pod, ConvertError> {
    let (ns, name, label) = name_ns("Pod", &o.metadata, true)?;
    let labels = o.metadata.labels.clone().unwrap_or_default();
    let proxy_uuid = match labels.get(PROXY_UUID_LABEL) {
        Some(v) => ProxyUuid::parse(v).map_err(|e| err(&label, format!("label {PROXY_UUID_LABEL}: {e}")))?,
        None => ProxyUuid::derived(&ns, &name),
    };
    let spec = o.spec.clone().unwrap_or_default();
    let service_account =
        spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".to_owned());
    check_name(NameRule::Dns1123Subdomain, &service_account)
        .map_err(|e| err(&label, format!("spec.serviceAccountName: {e}")))?;
    let ip = match o.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => None,
        Some(ip) => Some(parse_ip(&label, "status.podIP", ip)?),
    };
    let mut container_ports = Vec::new();
    for c in &spec.containers {
        for (j, p) in c.ports.clone().unwrap_or_default().iter().enumerate() {
            if is_tcp(p.protocol.as_deref()) {
                let port =
                    port_u16(&label, &format!("containers[{}].ports[{j}].containerPort", c.name), p.container_port)?;
                container_ports.push(ContainerPort { name: p.name.clone(), port });
            }
        }
    }
    let prometheus_scrape = o
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROMETHEUS_SCRAPE_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(messages::Pod {
        namespace: ns,
        name,
        labels,
        service_account,
        ip,
        proxy_uuid,
        container_ports,
        prometheus_scrape,
    })
}
impl MeshKind for Pod {
    const KIND: Kind = Kind::Pod;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }
}
