//! The mesh root kept in a Kubernetes Secret (`osm-ca-bundle` in the control plane's namespace), so every
//! controller replica and every restart signs with the same root and running sidecars keep trusting it.
//!
//! The first replica to start creates it; a replica that loses that race (the API server answers
//! `AlreadyExists`) reads the winner's. Creation is the only write, so no lock is needed.

use std::collections::BTreeMap;

use certs::CertificateAuthority;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

/// The Secret's name (OSM's).
pub const CA_SECRET: &str = "osm-ca-bundle";
/// Keys of the Secret's data.
pub const CERT_KEY: &str = "ca.crt";
pub const PRIVATE_KEY: &str = "private.key";

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("Secret {namespace}/{CA_SECRET}: {source}{}", hint(.source))]
    Api { namespace: String, source: kube::Error },
    #[error("Secret {namespace}/{CA_SECRET} lacks {key} (restore it, or delete the Secret to create a new root)")]
    Missing { namespace: String, key: &'static str },
    #[error(transparent)]
    Ca(#[from] certs::CertError),
}

fn hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            " (hint: the controller needs get and create on Secrets in its namespace)"
        }
        kube::Error::Api(_) => "",
        _ => " (hint: is the API server reachable? check the kubeconfig's server address)",
    }
}

impl CaSecretError {
    /// Worth trying again: the API server could not be reached or is overloaded.
    pub fn is_transient(&self) -> bool {
        match self {
            CaSecretError::Api { source: kube::Error::Api(s), .. } => s.code == 429 || s.code >= 500,
            CaSecretError::Api { .. } => true,
            _ => false,
        }
    }
}

fn from_secret(s: &Secret, namespace: &str, trust_domain: &str) -> Result<CertificateAuthority, CaSecretError> {
    let get = |key: &'static str| -> Result<String, CaSecretError> {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| CaSecretError::Missing { namespace: namespace.to_owned(), key })
    };
    let names = (
        format!("Secret {namespace}/{CA_SECRET} key {CERT_KEY}"),
        format!("Secret {namespace}/{CA_SECRET} key {PRIVATE_KEY}"),
    );
    Ok(CertificateAuthority::from_pem(&get(CERT_KEY)?, &get(PRIVATE_KEY)?, trust_domain, &names)?)
}

/// The root in the Secret, creating both when there is none.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, CaSecretError> {
    let api = Api::<Secret>::namespaced(client, namespace);
    let api_err = |source| CaSecretError::Api { namespace: namespace.to_owned(), source };
    if let Some(s) = api.get_opt(CA_SECRET).await.map_err(api_err)? {
        tracing::info!(secret = CA_SECRET, namespace, "using the mesh root kept in the Secret");
        return from_secret(&s, namespace, trust_domain);
    }
    let ca = CertificateAuthority::generate(trust_domain)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_owned(), "openservicemesh.io".to_owned())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (CERT_KEY.to_owned(), ByteString(ca.root_pem().as_bytes().to_vec())),
            (PRIVATE_KEY.to_owned(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = CA_SECRET, namespace, "created a new mesh root and kept it in the Secret");
            Ok(ca)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Another replica created it first: everyone uses that one.
            let s = api.get(CA_SECRET).await.map_err(api_err)?;
            from_secret(&s, namespace, trust_domain)
        }
        Err(e) => Err(api_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replicas_share_one_root_and_a_broken_secret_is_named() {
        let sim = apisim::ApiServer::start().await.unwrap_or_else(|e| panic!("{e}"));
        let client = sim.client().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = tokio::join!(
            load_or_create(client.clone(), "osm-system", "cluster.local"),
            load_or_create(client.clone(), "osm-system", "cluster.local")
        );
        let (a, b) = (a.unwrap_or_else(|e| panic!("{e}")), b.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(a.root_pem(), b.root_pem(), "two replicas starting together agree on one root");
        let again =
            load_or_create(client.clone(), "osm-system", "cluster.local").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.root_pem(), a.root_pem(), "a restart keeps it");

        let secrets = apisim::Resource::new("", "v1", "secrets");
        let mut s = sim.get(&secrets, "osm-system", CA_SECRET).unwrap_or_default();
        let good = s.clone();
        s["data"][PRIVATE_KEY] = good["data"][CERT_KEY].clone();
        sim.put(&secrets, s.clone()).unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_create(client.clone(), "osm-system", "cluster.local").await.err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("key private.key")), "{e:?}");
        if let Some(data) = s["data"].as_object_mut() {
            data.remove(PRIVATE_KEY);
        }
        s["metadata"]["resourceVersion"] = serde_json::Value::Null; // a replace, not a stale update
        sim.put(&secrets, s).unwrap_or_else(|e| panic!("{e}"));
        let e = load_or_create(client, "osm-system", "cluster.local").await.err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("lacks private.key")), "{e:?}");
    }
}
