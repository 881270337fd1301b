//! Fuzzes the MeshConfig reader (the mesh directory's and the validating webhook's path): any YAML or JSON
//! must give a MeshConfig in the model or an error naming its fields, never a panic, a hang or a blow-up.
//! Run from `fuzz/`:
//! `mkdir -p corpus/mesh_config && RUSTC_BOOTSTRAP=1 cargo fuzz run mesh_config corpus/mesh_config seeds-mesh-config`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(text) else { return };
    if let Some(o) = doc.as_object_mut() {
        o.insert("apiVersion".into(), "config.openservicemesh.io/v1alpha2".into());
        o.insert("kind".into(), "MeshConfig".into());
    }
    let _ = k8s::kinds::entry(messages::Kind::MeshConfig).admit(doc);
});
