//! What sources tell the catalog.

use serde::{Deserialize, Serialize};

use crate::model::{MeshObject, ObjectKey};

/// A change from a source. Sources emit `Reset` with their complete content on first sync and after any
/// relist, so the catalog never keeps an object its source no longer has; `Apply`/`Delete` carry single
/// changes in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceEvent {
    Apply(MeshObject),
    Delete(ObjectKey),
    /// The authoritative full content of the source: objects not listed are removed.
    Reset(Vec<MeshObject>),
}
