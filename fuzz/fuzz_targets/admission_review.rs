//! Fuzzes the admission webhooks' pure part: any body must give a request or an error, and a pod in it an
//! injection decision, a patch or an error; any object a validation answer — never a panic. Run from
//! `fuzz/`: `mkdir -p corpus/admission_review && RUSTC_BOOTSTRAP=1 cargo fuzz run admission_review
//! corpus/admission_review seeds-admission -- -max_total_time=300`.

#![no_main]

use std::sync::OnceLock;

use k8s::inject::{Decision, InjectorSettings, decide, inject};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static certs::CertificateAuthority {
    static CA: OnceLock<certs::CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| certs::CertificateAuthority::generate("cluster.local").expect("a CA"))
}

fn namespace() -> Namespace {
    serde_json::from_value(serde_json::json!({"metadata": {
        "name": "shop",
        "labels": {"openservicemesh.io/monitored-by": "osm"},
        "annotations": {"openservicemesh.io/sidecar-injection": "enabled", "openservicemesh.io/metrics": "enabled"}
    }}))
    .expect("a namespace")
}

fuzz_target!(|data: &[u8]| {
    let settings = InjectorSettings::new("osm", "osm-system");
    if let Ok(req) = k8s::webhook::parse::<Pod>(data)
        && let Some(pod) = &req.object
    {
        let ns = namespace();
        if let Ok(Decision::Inject) = decide(pod, &ns, &settings) {
            let uuid = messages::ProxyUuid::derived("shop", "fuzz");
            if let Ok(injection) = inject(pod, "shop", &ns, ca(), &settings, uuid) {
                // The patch must turn the submitted pod into the injected one.
                let mut applied = serde_json::to_value(pod).expect("a pod serializes");
                json_patch::patch(&mut applied, &injection.patch).expect("the patch applies");
            }
        }
    }
    if let Ok(req) = k8s::webhook::parse::<DynamicObject>(data)
        && let Some(obj) = &req.object
    {
        let _ = k8s::webhook::check_object(&req.kind, obj);
    }
});
