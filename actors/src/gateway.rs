//! The ingress gateway's certificate (MeshConfig `certificate.ingressGateway`): issued by the mesh's
//! signing root to the names the MeshConfig gives, renewed before it expires and whenever the roots or the
//! names change, and stored where the ingress controller reads it: a `kubernetes.io/tls` Secret on a
//! cluster, files in the state directory on the embedded default. IngressBackends name its first name as an
//! `AuthenticatedPrincipal`.
//!
//! Data flow: the catalog actor pushes the MeshConfig's setting into a watch channel; the roots in force
//! come from the certificate actor's trust channel; this task issues and writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::certs::roots::TrustSet;
use ::certs::{KeyAlgorithm, LeafRequest, SubjectName};
use futures::future::BoxFuture;
use messages::IngressGatewayCert;
use tokio::sync::watch;

/// What the ingress controller reads: the certificate (chain), its key, and the mesh's trust bundle.
#[derive(Clone)]
pub struct GatewayFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// Where the certificate is stored.
pub trait GatewaySink: Send + Sync {
    fn write<'a>(&'a self, secret: &'a (String, String), files: GatewayFiles) -> BoxFuture<'a, Result<String, String>>;
}

/// `<dir>/<namespace>/<name>/{tls.crt,tls.key,ca.crt}` (the key readable by its owner only), each file
/// replaced whole so a reader never sees half of one.
pub struct DirSink(pub PathBuf);

impl DirSink {
    fn write_files(dir: &Path, files: &GatewayFiles) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir)?;
        for (name, contents, mode) in
            [("tls.crt", &files.cert_pem, 0o644), ("tls.key", &files.key_pem, 0o600), ("ca.crt", &files.ca_pem, 0o644)]
        {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, contents)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }
}

impl GatewaySink for DirSink {
    fn write<'a>(&'a self, secret: &'a (String, String), files: GatewayFiles) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let dir = self.0.join(&secret.0).join(&secret.1);
            let shown = dir.display().to_string();
            tokio::task::spawn_blocking(move || Self::write_files(&dir, &files))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{shown}: {e}"))?;
            Ok(shown)
        })
    }
}

/// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, `ca.crt`), written by server-side apply.
pub struct SecretSink(pub kube::Client);

impl GatewaySink for SecretSink {
    fn write<'a>(&'a self, secret: &'a (String, String), files: GatewayFiles) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            use k8s_openapi::ByteString;
            use k8s_openapi::api::core::v1::Secret;
            let (ns, name) = secret;
            let data = [("tls.crt", files.cert_pem), ("tls.key", files.key_pem), ("ca.crt", files.ca_pem)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect();
            let object = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some([("app.kubernetes.io/name".to_owned(), "openservicemesh.io".to_owned())].into()),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(data),
                ..Default::default()
            };
            let api: kube::Api<Secret> = kube::Api::namespaced(self.0.clone(), ns);
            let params = kube::api::PatchParams::apply("osm-controller").force();
            api.patch(name, &params, &kube::api::Patch::Apply(&object)).await.map_err(|e| e.to_string())?;
            Ok(format!("Secret {ns}/{name}"))
        })
    }
}

/// Issues the gateway certificate with the signer in force.
fn issue(spec: &IngressGatewayCert, trust: &TrustSet) -> Result<(GatewayFiles, SystemTime, SystemTime), String> {
    let request = LeafRequest {
        common_name: spec.subject_alt_names.first().cloned().unwrap_or_default(),
        names: spec.subject_alt_names.iter().cloned().map(SubjectName::Dns).collect(),
        validity: spec.validity,
        key: KeyAlgorithm::default(),
    };
    let issued = trust.signer().issue(&request).map_err(|e| e.to_string())?;
    let files =
        GatewayFiles { cert_pem: issued.cert_pem, key_pem: issued.key_pem, ca_pem: trust.trust_pem().to_owned() };
    Ok((files, issued.not_before, issued.not_after))
}

/// Keeps the gateway certificate issued, renewed and written until `stop` resolves.
pub async fn run(
    mut spec: watch::Receiver<Option<IngressGatewayCert>>,
    mut trust: watch::Receiver<Arc<TrustSet>>,
    sink: Arc<dyn GatewaySink>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let policy = ::certs::rotation::RenewPolicy::default();
    let mut failures = 0u32;
    loop {
        let current = spec.borrow_and_update().clone();
        let roots = trust.borrow_and_update().clone();
        // When to look again: at renewal, after a failure, or (nothing to keep) only on a change.
        let next: Option<Duration> = match &current {
            None => None,
            Some(s) => match issue(s, &roots) {
                Ok((files, not_before, not_after)) => match sink.write(&s.secret, files).await {
                    Ok(where_) => {
                        failures = 0;
                        tracing::info!(
                            to = %where_,
                            names = ?s.subject_alt_names,
                            signer = roots.signer_name(),
                            "ingress gateway certificate issued"
                        );
                        let at = policy.renew_at(not_before, not_after, 0);
                        Some(at.duration_since(SystemTime::now()).unwrap_or_default())
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "cannot store the ingress gateway certificate; retrying");
                        Some(::certs::rotation::retry_after(failures, SystemTime::now(), None))
                    }
                },
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot issue the ingress gateway certificate; retrying");
                    Some(::certs::rotation::retry_after(failures, SystemTime::now(), None))
                }
            },
        };
        let timer = async {
            match next {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = timer => {}
            changed = spec.changed() => if changed.is_err() { return },
            changed = trust.changed() => if changed.is_err() { return },
            () = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_certificate_is_written_for_the_ingress_and_rewritten_when_the_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(::certs::CertificateAuthority::generate("cluster.local").unwrap());
        let trust = watch::Sender::new(Arc::new(TrustSet::single("startup", ca.clone())));
        let spec = watch::Sender::new(Some(IngressGatewayCert {
            subject_alt_names: vec!["ingress.osm-system.cluster.local".to_owned()],
            validity: Duration::from_secs(3600),
            secret: ("osm-system".to_owned(), "ingress-cert".to_owned()),
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let task = tokio::spawn(run(spec.subscribe(), trust.subscribe(), Arc::new(DirSink(dir.path().into())), stop));
        let cert = dir.path().join("osm-system/ingress-cert/tls.crt");
        let read = || std::fs::read_to_string(&cert).ok();
        let wait = |want: &'static str| {
            let read = &read;
            async move {
                for _ in 0..200 {
                    if let Some(pem) = read() {
                        let der = ::certs::pem_to_der(&pem).unwrap();
                        if ::certs::peer_common_name(&der).unwrap() == want {
                            return pem;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("no certificate for {want}");
            }
        };
        let first = wait("ingress.osm-system.cluster.local").await;
        assert!(::certs::signed_by(&first, ca.root_pem()).is_some(), "signed by the mesh root");
        assert_eq!(std::fs::read_to_string(dir.path().join("osm-system/ingress-cert/ca.crt")).unwrap(), ca.root_pem());
        spec.send_replace(Some(IngressGatewayCert {
            subject_alt_names: vec!["edge.example.internal".to_owned()],
            validity: Duration::from_secs(3600),
            secret: ("osm-system".to_owned(), "ingress-cert".to_owned()),
        }));
        wait("edge.example.internal").await;
        let _ = stop_tx.send(());
        task.await.unwrap();
    }
}
