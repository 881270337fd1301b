//! An immutable, versioned, consistent set of one proxy's Envoy resources, encoded once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

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

    pub(crate) fn index(self) -> usize {
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
#[derive(Clone)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
    /// What the resource names, decoded from the body at most once (see [`crate::consistency`]).
    pub(crate) refs: OnceLock<Result<Vec<crate::consistency::Reference>, String>>,
}

impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version && self.body == other.body
    }
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
        Self { name: name.into(), version, body, refs: OnceLock::new() }
    }
}

/// The resources of one type, by name. Proxies with the same resources of a type share one of these
/// (see [`ProxySnapshot::intern`]), so a session compares, and the mesh keeps, one map instead of
/// thousands.
#[derive(Debug, Clone, Default)]
pub struct TypeResources {
    /// Private: what is derived from it below is computed once, so it never changes after that.
    resources: BTreeMap<String, Arc<Resource>>,
    /// The version of all of them, computed once.
    all_version: OnceLock<String>,
    /// All of them as the body of a SotW response, encoded once for every proxy that subscribes to the
    /// whole set (the usual case) and kept as long as the set.
    pub(crate) sotw_body: OnceLock<Arc<crate::sotw::EncodedBody>>,
    /// The names alone, shared by every set of this type with the very same names (interned by the
    /// [`SetCache`]; an endpoint change keeps them): a session compares them by pointer and checks its
    /// subscription against them once, not per push.
    names: OnceLock<Arc<[String]>>,
}

impl PartialEq for TypeResources {
    fn eq(&self, other: &Self) -> bool {
        self.resources == other.resources
    }
}

impl TypeResources {
    /// The resources, by name.
    pub fn resources(&self) -> &BTreeMap<String, Arc<Resource>> {
        &self.resources
    }

    /// The names (not the content). Two sets of a [`SetCache`] with the same names have the very same
    /// `Arc`; other sets (changed by [`ProxySnapshot::insert`]) have one of their own.
    pub fn names(&self) -> &Arc<[String]> {
        self.names.get_or_init(|| self.resources.keys().cloned().collect())
    }

    /// Whether `names` holds every name of the set (compared in step when the sizes match).
    pub fn all_in(&self, names: &BTreeSet<String>) -> bool {
        if names.len() == self.resources.len() {
            names.iter().zip(self.resources.keys()).all(|(a, b)| a == b)
        } else {
            self.resources.keys().all(|k| names.contains(k))
        }
    }

    /// The version of every resource: a hash of names and versions, computed once.
    pub fn version(&self) -> &str {
        self.all_version.get_or_init(|| self.version_of(None))
    }

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
    #[error("[E5006] inconsistent snapshot: {kind} {name:?} is named by {by} but not present")]
    Dangling { kind: ResourceType, name: String, by: String },
    #[error("[E5006] inconsistent snapshot: {kind} {name:?} cannot be read back: {reason}")]
    Undecodable { kind: ResourceType, name: String, reason: String },
    #[error("[E5006] inconsistent snapshot: duplicate {kind} resource {name:?}")]
    Duplicate { kind: ResourceType, name: String },
}

impl SnapshotError {
    /// The stable error code (`messages::errcode`).
    pub fn code(&self) -> &'static str {
        messages::errcode::SNAPSHOT_INCONSISTENT
    }
}

/// The resource sets snapshots hold, by type and the addresses of their resources in the order they were
/// added (see [`ProxySnapshot::assemble`]). Kept across batches while some snapshot holds a set, so a type
/// that did not change is the very same set in the next snapshot, and a session skips it at a pointer's
/// cost.
type SetEntry = (Vec<Arc<Resource>>, Arc<TypeResources>);

#[derive(Debug, Default)]
pub struct SetCache {
    /// (type, hash of the resources' addresses) → (the resources in order added, their set).
    sets: HashMap<(ResourceType, u64), Vec<SetEntry>>,
    /// The name lists of the sets, one `Arc` per distinct list (see [`TypeResources::names`]).
    names: std::collections::HashSet<Arc<[String]>>,
    len: usize,
    /// The size after the last sweep: the next one comes when it doubled (amortised constant per set).
    swept_at: usize,
}

impl SetCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets held by the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the sets no snapshot holds any more, once the cache doubled since the last sweep.
    pub fn sweep(&mut self) {
        if self.len < 2 * self.swept_at.max(64) {
            return;
        }
        for bucket in self.sets.values_mut() {
            bucket.retain(|(_, set)| Arc::strong_count(set) > 1);
        }
        self.sets.retain(|_, bucket| !bucket.is_empty());
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.len = self.sets.values().map(Vec::len).sum();
        self.swept_at = self.len;
    }
}

/// A complete configuration for one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySnapshot {
    types: [Arc<TypeResources>; 5],
}

impl ProxySnapshot {
    pub fn get(&self, ty: ResourceType) -> &TypeResources {
        &self.types[ty.index()]
    }

    /// The shared set of one type (compare with [`Arc::ptr_eq`] to skip an unchanged type at once).
    pub fn shared(&self, ty: ResourceType) -> &Arc<TypeResources> {
        &self.types[ty.index()]
    }

    pub fn insert(&mut self, ty: ResourceType, r: Arc<Resource>) -> Result<(), SnapshotError> {
        let set = Arc::make_mut(&mut self.types[ty.index()]);
        if set.resources.contains_key(&r.name) {
            return Err(SnapshotError::Duplicate { kind: ty, name: r.name.clone() });
        }
        set.all_version = OnceLock::new();
        set.names = OnceLock::new();
        set.sotw_body = OnceLock::new();
        set.resources.insert(r.name.clone(), r);
        Ok(())
    }

    /// A snapshot of these resources (per type, in the order they were added), sharing each type's set
    /// with every other snapshot (of this batch or an earlier one still held) that has the very same
    /// resources: resources come from the
    /// build cache as shared `Arc`s, so identity of the `Arc`s is the cheap, exact test, and a proxy whose
    /// types match another's costs a pass over pointers instead of building maps of its own. A name added
    /// twice is an error.
    pub fn assemble(pending: [Vec<Arc<Resource>>; 5], sets: &mut SetCache) -> Result<Self, SnapshotError> {
        use std::hash::Hasher;
        let mut snap = ProxySnapshot::default();
        for (ty, resources) in ResourceType::ALL.into_iter().zip(pending) {
            if resources.is_empty() {
                continue;
            }
            let mut h = std::hash::DefaultHasher::new();
            for r in &resources {
                h.write_usize(Arc::as_ptr(r) as usize);
            }
            let hash = h.finish();
            let same = |order: &Vec<Arc<Resource>>| {
                order.len() == resources.len() && order.iter().zip(&resources).all(|(a, b)| Arc::ptr_eq(a, b))
            };
            let found = sets.sets.get(&(ty, hash)).and_then(|bucket| bucket.iter().find(|(order, _)| same(order)));
            let set = match found {
                Some((_, set)) => set.clone(),
                None => {
                    let mut set = TypeResources::default();
                    for r in &resources {
                        if set.resources.insert(r.name.clone(), r.clone()).is_some() {
                            return Err(SnapshotError::Duplicate { kind: ty, name: r.name.clone() });
                        }
                    }
                    let names: Vec<String> = set.resources.keys().cloned().collect();
                    let names = match sets.names.get(names.as_slice()) {
                        Some(shared) => shared.clone(),
                        None => {
                            let shared: Arc<[String]> = names.into();
                            sets.names.insert(shared.clone());
                            shared
                        }
                    };
                    let _ = set.names.set(names);
                    let set = Arc::new(set);
                    let bucket = sets.sets.entry((ty, hash)).or_default();
                    bucket.push((resources, set.clone()));
                    sets.len += 1;
                    set
                }
            };
            snap.types[ty.index()] = set;
        }
        Ok(snap)
    }

    pub fn len(&self) -> usize {
        self.types.iter().map(|t| t.resources.len()).sum()
    }

    /// This snapshot without the resource `name` of type `ty` (a broken snapshot, for tests).
    #[cfg(test)]
    pub(crate) fn without(&self, ty: ResourceType, name: &str) -> Self {
        let mut copy = self.clone();
        let set = Arc::make_mut(&mut copy.types[ty.index()]);
        set.resources.remove(name);
        set.all_version = OnceLock::new();
        set.names = OnceLock::new();
        set.sotw_body = OnceLock::new();
        copy
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Same resources as `other`: by pointer first, else by name, version and bytes.
    pub fn same_as(&self, other: &ProxySnapshot) -> bool {
        self.types.iter().zip(&other.types).all(|(a, b)| {
            Arc::ptr_eq(a, b)
                || a.resources.len() == b.resources.len()
                    && a.resources
                        .iter()
                        .zip(&b.resources)
                        .all(|((na, ra), (nb, rb))| na == nb && (Arc::ptr_eq(ra, rb) || ra == rb))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, body: &str) -> Arc<Resource> {
        Arc::new(Resource::new(name, Any { type_url: "t".into(), value: body.as_bytes().to_vec() }))
    }

    #[test]
    fn equal_sets_are_shared_and_versioned_once() {
        let mut sets = SetCache::new();
        let c1 = resource("c1", "x");
        let pending = |extra: Option<Arc<Resource>>| {
            let mut p: [Vec<Arc<Resource>>; 5] = Default::default();
            p[ResourceType::Endpoint.index()].push(c1.clone());
            p[ResourceType::Cluster.index()].extend(extra);
            p
        };
        let mut a = ProxySnapshot::assemble(pending(None), &mut sets).unwrap_or_else(|e| panic!("{e}"));
        let b =
            ProxySnapshot::assemble(pending(Some(resource("c1", "own"))), &mut sets).unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(a.shared(ResourceType::Endpoint), b.shared(ResourceType::Endpoint)));
        assert!(!Arc::ptr_eq(a.shared(ResourceType::Cluster), b.shared(ResourceType::Cluster)));
        let mut twice: [Vec<Arc<Resource>>; 5] = Default::default();
        twice[0] = vec![resource("c1", "a"), resource("c1", "b")];
        assert!(matches!(ProxySnapshot::assemble(twice, &mut sets), Err(SnapshotError::Duplicate { .. })));
        // A selection of every name has the whole set's version; a smaller one its own.
        let eds = a.get(ResourceType::Endpoint);
        let all: BTreeSet<String> = ["c1".to_owned()].into();
        assert_eq!(eds.version_of(Some(&all)), eds.version());
        assert_ne!(eds.version_of(Some(&BTreeSet::new())), eds.version());
        // Changing a shared set gives the changer a copy; the other keeps its own.
        a.insert(ResourceType::Endpoint, resource("c2", "y")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.get(ResourceType::Endpoint).resources().len(), 1);
        assert_ne!(a.get(ResourceType::Endpoint).version(), b.get(ResourceType::Endpoint).version());
    }
    #[test]
    fn sets_outlive_their_batch_while_held_and_are_swept_after() {
        let mut sets = SetCache::new();
        let eds = |r: &Arc<Resource>| {
            let mut p: [Vec<Arc<Resource>>; 5] = Default::default();
            p[ResourceType::Endpoint.index()].push(r.clone());
            p
        };
        let held = resource("c1", "x");
        let first = ProxySnapshot::assemble(eds(&held), &mut sets).unwrap_or_else(|e| panic!("{e}"));
        // Enough unheld sets to make a sweep due.
        for i in 0..200 {
            let r = resource(&format!("c{i}"), "y");
            ProxySnapshot::assemble(eds(&r), &mut sets).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(sets.len(), 201);
        sets.sweep();
        assert_eq!(sets.len(), 1, "only the set a snapshot holds is kept");
        // A later batch with the very same resources gets the very same set.
        let later = ProxySnapshot::assemble(eds(&held), &mut sets).unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(first.shared(ResourceType::Endpoint), later.shared(ResourceType::Endpoint)));
    }
}
