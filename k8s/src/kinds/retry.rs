//! OSM's `policy.openservicemesh.io/v1alpha1` Retry: how the sidecars of a source service account retry
//! requests to destination Services (`retryOn`, `numRetries`, `perTryTimeout`,
//! `retryBackoffBaseInterval` on their outbound routes), in force when the MeshConfig's
//! `featureFlags.enableRetryPolicy` is on.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use messages::{Kind, MeshObject, RETRY_ON, RetryPolicy, ServiceIdentity, ServiceKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MeshKind, Watch};
use crate::convert::{ConvertError, NameRule, check_name, err, name_ns};

/// `policy.openservicemesh.io/v1alpha1` Retry.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "policy.openservicemesh.io",
    version = "v1alpha1",
    kind = "Retry",
    plural = "retries",
    namespaced,
    shortname = "retry"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// The service account whose sidecars retry.
    pub source: RetryPeer,
    /// The Services they retry requests to.
    pub destinations: Vec<RetryPeer>,
    pub retry_policy: RetryPolicySpec,
}

/// A source (`ServiceAccount`) or destination (`Service`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPeer {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

/// `spec.retryPolicy`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicySpec {
    /// Envoy's retry conditions, comma-separated.
    pub retry_on: String,
    /// A duration, e.g. `1s`.
    pub per_try_timeout: String,
    pub num_retries: u32,
    /// A duration, e.g. `25ms`; the backoff grows to at most ten times it.
    pub retry_backoff_base_interval: String,
}

/// The Retry in the model; every problem of its policy is named at once.
pub fn convert(o: &Retry) -> Result<messages::Retry, ConvertError> {
    let (namespace, name, label) = name_ns("Retry", &o.metadata, true)?;
    let spec = &o.spec;
    if spec.source.kind != "ServiceAccount" {
        return Err(err(&label, format!("spec.source.kind {:?} must be ServiceAccount", spec.source.kind)));
    }
    check_name(NameRule::Dns1123Subdomain, &spec.source.name)
        .map_err(|e| err(&label, format!("spec.source.name: {e}")))?;
    check_name(NameRule::Dns1123Label, &spec.source.namespace)
        .map_err(|e| err(&label, format!("spec.source.namespace: {e}")))?;
    let mut destinations = Vec::new();
    for (i, d) in spec.destinations.iter().enumerate() {
        // Destinations of other kinds are ignored, as OSM ignores them.
        if d.kind != "Service" {
            continue;
        }
        check_name(NameRule::Dns1035Label, &d.name)
            .map_err(|e| err(&label, format!("spec.destinations[{i}].name: {e}")))?;
        check_name(NameRule::Dns1123Label, &d.namespace)
            .map_err(|e| err(&label, format!("spec.destinations[{i}].namespace: {e}")))?;
        destinations.push(ServiceKey::new(d.namespace.clone(), d.name.clone()));
    }
    let p = &spec.retry_policy;
    let mut problems = Vec::new();
    let unknown: Vec<&str> = p.retry_on.split(',').map(str::trim).filter(|c| !RETRY_ON.contains(c)).collect();
    if !unknown.is_empty() {
        problems.push(format!("spec.retryPolicy.retryOn: {unknown:?} not among Envoy's ({})", RETRY_ON.join(", ")));
    }
    let mut duration = |field: &str, text: &str| match messages::parse_go_duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            problems.push(format!("spec.retryPolicy.{field} must be more than 0"));
            Default::default()
        }
        Err(e) => {
            problems.push(format!("spec.retryPolicy.{field}: {e}"));
            Default::default()
        }
    };
    let per_try_timeout = duration("perTryTimeout", &p.per_try_timeout);
    let backoff_base_interval = duration("retryBackoffBaseInterval", &p.retry_backoff_base_interval);
    if !problems.is_empty() {
        return Err(err(&label, problems.join("; ")));
    }
    Ok(messages::Retry {
        namespace,
        name,
        source: ServiceIdentity::new(spec.source.name.clone(), spec.source.namespace.clone()),
        destinations,
        policy: RetryPolicy {
            retry_on: p.retry_on.split(',').map(str::trim).collect::<Vec<_>>().join(","),
            num_retries: p.num_retries,
            per_try_timeout,
            backoff_base_interval,
        },
    })
}

impl MeshKind for Retry {
    const KIND: Kind = Kind::Retry;
    const WATCH: Watch<Self> = Watch::InMonitoredNamespaces;

    fn to_model(&self) -> Result<MeshObject, ConvertError> {
        convert(self).map(MeshObject::from)
    }

    fn definition() -> Option<CustomResourceDefinition> {
        Some(<Self as kube::CustomResourceExt>::crd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(policy: serde_json::Value) -> Result<messages::Retry, ConvertError> {
        let o: Retry = serde_json::from_value(serde_json::json!({
            "apiVersion": "policy.openservicemesh.io/v1alpha1", "kind": "Retry",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {
                "source": {"kind": "ServiceAccount", "name": "client", "namespace": "demo"},
                "destinations": [
                    {"kind": "Service", "name": "web", "namespace": "demo"},
                    {"kind": "Other", "name": "x", "namespace": "demo"}
                ],
                "retryPolicy": policy
            }
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        convert(&o)
    }

    #[test]
    fn a_retry_names_its_source_its_services_and_envoys_terms() {
        let ok = retry(serde_json::json!({
            "retryOn": "5xx, connect-failure", "perTryTimeout": "1s", "numRetries": 5, "retryBackoffBaseInterval": "25ms"
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.source, ServiceIdentity::new("client", "demo"));
        assert_eq!(ok.destinations, vec![ServiceKey::new("demo", "web")], "other kinds are ignored");
        assert_eq!(ok.policy.retry_on, "5xx,connect-failure");
        assert_eq!(ok.policy.backoff_base_interval, std::time::Duration::from_millis(25));
        let bad = retry(serde_json::json!({
            "retryOn": "5xx,sometimes", "perTryTimeout": "0s", "numRetries": 5, "retryBackoffBaseInterval": "soon"
        }))
        .unwrap_err()
        .to_string();
        for named in ["\"sometimes\"", "perTryTimeout must be more than 0", "retryBackoffBaseInterval"] {
            assert!(bad.contains(named), "{bad}");
        }
    }
}
