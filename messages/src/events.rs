//! What sources tell the catalog.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::{Kind, MeshObject, ObjectKey};

/// The source the single-source constructors speak for (the mesh directory).
pub const DEFAULT_SOURCE: &str = "mesh-dir";

/// A change from a source. A source emits `Reset` with its complete content of some kinds on first sync and
/// after any relist, so the catalog never keeps an object its source no longer has; `Apply`/`Delete` carry
/// single changes in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceEvent {
    Apply(MeshObject),
    Delete(ObjectKey),
    Reset(Reset),
}

/// The authoritative full content of `kinds` from `source`: objects of those kinds that this source put in
/// the catalog and that are not listed are removed; other kinds, and other sources' objects, stay. A
/// Kubernetes watcher relisting Pods therefore never touches Services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    pub source: String,
    pub kinds: BTreeSet<Kind>,
    pub objects: Vec<MeshObject>,
}

impl SourceEvent {
    /// A reset of every kind from the default source (the mesh directory holds every kind).
    pub fn reset_all(objects: Vec<MeshObject>) -> Self {
        SourceEvent::Reset(Reset {
            source: DEFAULT_SOURCE.to_owned(),
            kinds: Kind::ALL.iter().copied().collect(),
            objects,
        })
    }
}
