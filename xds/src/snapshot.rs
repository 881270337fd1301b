//! An immutable, versioned, consistent set of one proxy's Envoy resources, encoded once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};

/// The xDS resource types, in the order they are pushed: CDS, EDS, LDS, RDS, SDS (clusters before the
/// endpoints that fill them, listeners before their routes, so Envoy never sees a dangling reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Clusters and listeners are requested as a whole (wildcard); the others by name.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::Secret => "SDS",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One encoded resource; its version is a hash of its bytes, so identical content has identical versions
/// and Envoy is never asked to replace (and drain) something that did not change.
#[derive(Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies may hold private keys: never print them.
        f.debug_struct("Resource").field("name", &self.name).field("version", &self.version).finish_non_exhaustive()
    }
}

pub(crate) fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Resource {
    pub fn new(name: impl Into<String>, body: Any) -> Self {
        let version = short_hash(&[body.type_url.as_bytes(), &body.value]);
        Self { name: name.into(), version, body }
    }
}

/// The resources of one type, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    pub resources: BTreeMap<String, Arc<Resource>>,
}

impl TypeResources {
    /// Version of a selection of resources (all of them for `None`): a hash of names and versions.
    pub fn version_of(&self, names: Option<&BTreeSet<String>>) -> String {
        let mut parts: Vec<&[u8]> = Vec::new();
        for (name, r) in &self.resources {
            if names.is_none_or(|n| n.contains(name)) {
                parts.push(name.as_bytes());
                parts.push(r.version.as_bytes());
            }
        }
        short_hash(&parts)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("inconsistent snapshot: {kind} {name:?} is referenced by {by} but not present")]
    Dangling { kind: ResourceType, name: String, by: String },
    #[error("duplicate {kind} resource {name:?}")]
    Duplicate { kind: ResourceType, name: String },
}

/// A complete configuration for one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySnapshot {
    types: [TypeResources; 5],
}

impl ProxySnapshot {
    pub fn get(&self, ty: ResourceType) -> &TypeResources {
        &self.types[ty.index()]
    }

    pub fn insert(&mut self, ty: ResourceType, r: Arc<Resource>) -> Result<(), SnapshotError> {
        let map = &mut self.types[ty.index()].resources;
        if map.contains_key(&r.name) {
            return Err(SnapshotError::Duplicate { kind: ty, name: r.name.clone() });
        }
        map.insert(r.name.clone(), r);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.types.iter().map(|t| t.resources.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Same resources (names and content versions) as `other`: cheaper than comparing bodies.
    pub fn same_as(&self, other: &ProxySnapshot) -> bool {
        self.types.iter().zip(&other.types).all(|(a, b)| {
            a.resources.len() == b.resources.len()
                && a.resources
                    .iter()
                    .zip(&b.resources)
                    .all(|((na, ra), (nb, rb))| na == nb && (Arc::ptr_eq(ra, rb) || ra.version == rb.version))
        })
    }

    /// Every reference must resolve within the snapshot; `refs` lists (type, name, referrer).
    pub fn check_references(&self, refs: &[(ResourceType, String, String)]) -> Result<(), SnapshotError> {
        for (kind, name, by) in refs {
            if !self.get(*kind).resources.contains_key(name) {
                return Err(SnapshotError::Dangling { kind: *kind, name: name.clone(), by: by.clone() });
            }
        }
        Ok(())
    }
}
