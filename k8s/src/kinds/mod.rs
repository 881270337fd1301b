//! The kind registry: every kind the mesh reads, each in a module of its own that implements [`MeshKind`]
//! on its Kubernetes type (a k8s-openapi type, or the custom resource the module defines): its group,
//! version and kind come from that type, its conversion into the model and the validating webhook's
//! checks sit beside it, and the catalog's part is its [`messages::Role`].
//!
//! The mesh directory ([`crate::yaml_dir`]), the kube watchers ([`crate::watch`]), the validating webhook
//! ([`crate::webhook`]) and the CRD definitions ([`crate::crds`]) all dispatch through [`entry`]: a kind
//! of [`messages::Kind`] without an entry here does not compile.

use std::fmt::Debug;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, Resource};
use messages::{Kind, MeshObject};
use serde::de::DeserializeOwned;

use crate::convert::ConvertError;
use crate::watch::WatchContext;

pub mod endpoint_slice;
pub mod endpoints;
pub mod http_route_group;
pub mod ingress_backend;
pub mod mesh_config;
pub mod mesh_root_certificate;
pub mod namespace;
pub mod pod;
pub mod retry;
pub mod service;
pub mod service_account;
pub mod tcp_route;
pub mod traffic_split;
pub mod traffic_target;
pub mod upstream_traffic_setting;

/// How a kind is read on a cluster.
pub enum Watch<K> {
    /// Namespaces labelled monitored-by the mesh: the watch that publishes the monitored set.
    MonitoredNamespaces,
    /// A namespaced kind watched cluster-wide; only objects of monitored namespaces pass.
    InMonitoredNamespaces,
    /// The one object `name` in the control plane's namespace, monitored or not, through `api` (the
    /// namespaced API: the controller's permission on it is a Role of its namespace).
    ControlPlaneObject { name: &'static str, api: fn(Client, &str) -> Api<K> },
    /// Read from the mesh directory only.
    DirectoryOnly,
}

/// One kind the mesh reads, implemented on its Kubernetes type.
pub trait MeshKind: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    /// The model's kind (what the catalog does with it is [`Kind::role`]).
    const KIND: Kind;
    const WATCH: Watch<Self>;

    /// The object as the model holds it; the error names the object and the field.
    fn to_model(&self) -> Result<MeshObject, ConvertError>;

    /// What the validating webhook checks beyond conversion and the policy engine.
    fn admit(&self) -> Result<(), String> {
        Ok(())
    }

    /// The CustomResourceDefinition, for kinds the mesh defines.
    fn definition() -> Option<CustomResourceDefinition> {
        None
    }
}

/// Why a Kubernetes document could not be read as an object of its kind.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It does not have the kind's shape (a missing field, a wrong type, an unknown field).
    #[error("{0}")]
    Schema(serde_json::Error),
    /// It has the shape, and a value the mesh cannot use.
    #[error(transparent)]
    Invalid(#[from] ConvertError),
    /// The validating webhook's own checks.
    #[error("{0}")]
    Refused(String),
}

/// A registered kind, for dispatch by value (see [`entry`]).
pub trait Registered: Send + Sync {
    fn kind(&self) -> Kind;
    /// `<group>/<version>`, or `v1` for the core group.
    fn api_version(&self) -> String;
    fn group(&self) -> String;
    fn version(&self) -> String;
    /// The Kubernetes kind, e.g. `HTTPRouteGroup`.
    fn kubernetes_kind(&self) -> String;
    /// Whether it is watched on a cluster (else read from the mesh directory only).
    fn watched(&self) -> bool;
    /// Reads one document of this kind into the model.
    fn read(&self, document: serde_json::Value) -> Result<MeshObject, ReadError>;
    /// [`Self::read`], then the kind's admission checks.
    fn admit(&self, document: serde_json::Value) -> Result<MeshObject, ReadError>;
    fn definition(&self) -> Option<CustomResourceDefinition>;
    /// The kind's watch on a cluster, for the namespaced kinds and control-plane objects.
    fn watcher(&self, context: WatchContext) -> Option<BoxFuture<'static, ()>>;
}

struct Entry<K>(PhantomData<fn() -> K>);

impl<K: MeshKind> Registered for Entry<K> {
    fn kind(&self) -> Kind {
        K::KIND
    }
    fn api_version(&self) -> String {
        K::api_version(&()).into_owned()
    }
    fn group(&self) -> String {
        K::group(&()).into_owned()
    }
    fn version(&self) -> String {
        K::version(&()).into_owned()
    }
    fn kubernetes_kind(&self) -> String {
        K::kind(&()).into_owned()
    }
    fn watched(&self) -> bool {
        !matches!(K::WATCH, Watch::DirectoryOnly)
    }
    fn read(&self, document: serde_json::Value) -> Result<MeshObject, ReadError> {
        let typed: K = serde_json::from_value(document).map_err(ReadError::Schema)?;
        Ok(typed.to_model()?)
    }
    fn admit(&self, document: serde_json::Value) -> Result<MeshObject, ReadError> {
        let typed: K = serde_json::from_value(document).map_err(ReadError::Schema)?;
        let model = typed.to_model()?;
        typed.admit().map_err(ReadError::Refused)?;
        Ok(model)
    }
    fn definition(&self) -> Option<CustomResourceDefinition> {
        K::definition()
    }
    fn watcher(&self, context: WatchContext) -> Option<BoxFuture<'static, ()>> {
        crate::watch::watcher_of::<K>(context)
    }
}

macro_rules! registry {
    ($($kind:ident => $ty:ty),* $(,)?) => {
        /// The registry entry of `kind`.
        pub fn entry(kind: Kind) -> &'static dyn Registered {
            match kind {
                $( Kind::$kind => {
                    static ENTRY: Entry<$ty> = Entry(PhantomData);
                    // The entry's type says the same kind: checked when the registry is built.
                    const _: () = assert!(matches!(<$ty as MeshKind>::KIND, Kind::$kind));
                    &ENTRY
                } )*
            }
        }
    };
}

registry! {
    Namespace => k8s_openapi::api::core::v1::Namespace,
    Service => k8s_openapi::api::core::v1::Service,
    Endpoints => k8s_openapi::api::core::v1::Endpoints,
    EndpointSlice => k8s_openapi::api::discovery::v1::EndpointSlice,
    Pod => k8s_openapi::api::core::v1::Pod,
    ServiceAccount => k8s_openapi::api::core::v1::ServiceAccount,
    TrafficTarget => traffic_target::TrafficTarget,
    HttpRouteGroup => http_route_group::HTTPRouteGroup,
    TcpRoute => tcp_route::TCPRoute,
    TrafficSplit => traffic_split::TrafficSplit,
    MeshConfig => mesh_config::MeshConfig,
    MeshRootCertificate => mesh_root_certificate::MeshRootCertificate,
    Retry => retry::Retry,
    UpstreamTrafficSetting => upstream_traffic_setting::UpstreamTrafficSetting,
    IngressBackend => ingress_backend::IngressBackend,
}

/// Every registered kind, in [`Kind::ALL`]'s order.
pub fn all() -> impl Iterator<Item = &'static dyn Registered> {
    Kind::ALL.iter().map(|k| entry(*k))
}

/// The kind of a document's `apiVersion` and `kind`, if the mesh reads it.
pub fn by_type(api_version: &str, kind: &str) -> Option<&'static dyn Registered> {
    all().find(|e| e.kubernetes_kind() == kind && e.api_version() == api_version)
}

/// The kinds watched on a cluster: the catalog is synced once each has been listed.
pub fn watched() -> Vec<Kind> {
    all().filter(|e| e.watched()).map(|e| e.kind()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_is_its_kind_and_names_its_kubernetes_type() {
        for kind in Kind::ALL {
            let e = entry(*kind);
            assert_eq!(e.kind(), *kind);
            assert_eq!(e.kubernetes_kind(), kind.name());
            assert!(by_type(&e.api_version(), kind.name()).is_some_and(|found| found.kind() == *kind));
        }
        assert_eq!(
            by_type("access.smi-spec.io/v1alpha3", "TrafficTarget").map(|e| e.kind()),
            Some(Kind::TrafficTarget)
        );
        assert!(by_type("access.smi-spec.io/v1alpha2", "TrafficTarget").is_none(), "another version is not read");
    }
}
