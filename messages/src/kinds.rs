//! The one table of the kinds the mesh model holds.
//!
//! Each line names a kind, its Kubernetes kind, what the catalog does with it ([`Role`]) and, when objects
//! of the kind reach the catalog as themselves, the model type that carries them. From the table come
//! [`Kind`], [`MeshObject`], their names and keys, and the [`Model`] link from a model type to its kind;
//! the catalog dispatches on the role, the Kubernetes edge (`k8s::kinds`) on the kind. Adding a kind is one
//! line here, its model type (with [`Keyed`]) and its module in `k8s::kinds`; a kind left out of either
//! registry does not compile.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::*;

/// What the catalog does with the objects of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An input of the access policy: kept as it is; a change recomputes the policy, and the difference
    /// decides which proxies are dirty.
    Policy,
    /// The mesh-wide settings: a change in force makes every proxy dirty.
    Settings,
    /// Certificates' roots: read by the certificate actor, never by a proxy's configuration.
    Roots,
    /// Kept for troubleshooting and selectors; carries no proxy configuration.
    Inventory,
    /// Services: indexed by key; their audience is dirty.
    Service,
    /// Endpoints (from `Endpoints` or `EndpointSlice`): indexed by Service.
    Endpoints,
    /// Pods: indexed by proxy UUID, identity, address and labels.
    Pod,
}

/// The key a model value is stored under.
pub trait Keyed {
    fn object_key(&self) -> ObjectKey;
}

/// A model type that reaches the catalog as itself: the link back to its kind, so the catalog can hand
/// out every object of one kind without a match per kind.
pub trait Model: Keyed + Sized + 'static {
    const KIND: Kind;
    fn of(object: &MeshObject) -> Option<&Self>;
}

macro_rules! mesh_kinds {
    ($( $(#[$doc:meta])* $kind:ident = $name:literal, $role:ident $(, $model:ident)? ; )*) => {
        /// The kinds of object the mesh model understands.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Kind {
            $( $(#[$doc])* $kind, )*
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[ $( Kind::$kind, )* ];

            /// The Kubernetes kind, e.g. `HTTPRouteGroup`.
            pub fn name(self) -> &'static str {
                match self { $( Kind::$kind => $name, )* }
            }

            /// What the catalog does with objects of this kind.
            pub fn role(self) -> Role {
                match self { $( Kind::$kind => Role::$role, )* }
            }
        }

        /// Everything a source can hand to the catalog.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum MeshObject {
            $( $( $kind($model), )? )*
        }

        impl MeshObject {
            pub fn key(&self) -> ObjectKey {
                match self { $( $( MeshObject::$kind(o) => Keyed::object_key(o as &$model), )? )* }
            }
        }

        $( $(
            impl Model for $model {
                const KIND: Kind = Kind::$kind;
                fn of(object: &MeshObject) -> Option<&Self> {
                    match object {
                        MeshObject::$kind(o) => Some(o),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }

            impl From<$model> for MeshObject {
                fn from(o: $model) -> Self {
                    MeshObject::$kind(o)
                }
            }
        )? )*
    };
}

mesh_kinds! {
    Namespace = "Namespace", Inventory, Namespace;
    Service = "Service", Service, Service;
    Endpoints = "Endpoints", Endpoints, Endpoints;
    /// Carried as [`Endpoints`] keyed by this kind.
    EndpointSlice = "EndpointSlice", Endpoints;
    Pod = "Pod", Pod, Pod;
    ServiceAccount = "ServiceAccount", Inventory, ServiceAccount;
    TrafficTarget = "TrafficTarget", Policy, TrafficTarget;
    HttpRouteGroup = "HTTPRouteGroup", Policy, HttpRouteGroup;
    TcpRoute = "TCPRoute", Policy, TcpRoute;
    TrafficSplit = "TrafficSplit", Policy, TrafficSplit;
    MeshConfig = "MeshConfig", Settings, MeshConfig;
    MeshRootCertificate = "MeshRootCertificate", Roots, MeshRootCertificate;
    Retry = "Retry", Policy, Retry;
    UpstreamTrafficSetting = "UpstreamTrafficSetting", Policy, UpstreamTrafficSetting;
    IngressBackend = "IngressBackend", Policy, IngressBackend;
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Keys of the model types named by namespace and name.
macro_rules! keyed_by_name {
    ($($model:ident),*) => {$(
        impl Keyed for $model {
            fn object_key(&self) -> ObjectKey {
                ObjectKey::new(<$model as Model>::KIND, self.namespace.clone(), self.name.clone())
            }
        }
    )*};
}

keyed_by_name!(
    Pod,
    ServiceAccount,
    TrafficTarget,
    HttpRouteGroup,
    TcpRoute,
    TrafficSplit,
    MeshConfig,
    MeshRootCertificate,
    Retry,
    UpstreamTrafficSetting,
    IngressBackend
);

impl Keyed for Namespace {
    fn object_key(&self) -> ObjectKey {
        ObjectKey::new(Kind::Namespace, "", self.name.clone())
    }
}

impl Keyed for Service {
    fn object_key(&self) -> ObjectKey {
        ObjectKey::new(Kind::Service, self.key.namespace.clone(), self.key.name.clone())
    }
}

impl Keyed for Endpoints {
    /// An `Endpoints` or an `EndpointSlice`: the key says which.
    fn object_key(&self) -> ObjectKey {
        self.key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_name() {
        let names: std::collections::BTreeSet<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
    }
}
