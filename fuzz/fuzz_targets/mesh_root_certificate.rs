//! Fuzzes the MeshRootCertificate reader and the resolution of a set of them into the roots in force: any
//! objects must give roots or a refusal naming the object, never a panic, a hang or a blow-up. Run from
//! `fuzz/`:
//! `mkdir -p corpus/mrc && RUSTC_BOOTSTRAP=1 cargo fuzz run mesh_root_certificate corpus/mrc seeds-mrc`.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

fn startup() -> Arc<dyn certs::Issuer> {
    static CA: OnceLock<Arc<dyn certs::Issuer>> = OnceLock::new();
    CA.get_or_init(|| Arc::new(certs::CertificateAuthority::generate("cluster.local").expect("a CA")) as Arc<dyn certs::Issuer>)
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A JSON array of MeshRootCertificate documents.
    let Ok(docs) = serde_json::from_str::<Vec<serde_json::Value>>(text) else { return };
    let mut mrcs = Vec::new();
    for mut doc in docs.into_iter().take(8) {
        if let Some(o) = doc.as_object_mut() {
            o.insert("apiVersion".into(), "config.openservicemesh.io/v1alpha2".into());
            o.insert("kind".into(), "MeshRootCertificate".into());
        }
        if let Ok(messages::MeshObject::MeshRootCertificate(m)) =
            k8s::kinds::entry(messages::Kind::MeshRootCertificate).admit(doc)
        {
            mrcs.push(m);
        }
    }
    // Every root the set names loads as the startup one: resolution is what is fuzzed here.
    let start = startup();
    let load = |_: &messages::MeshRootCertificate| -> Result<Arc<dyn certs::Issuer>, String> { Ok(start.clone()) };
    let _ = certs::roots::resolve(&mrcs, "cluster.local", &start, &load, None);
});
