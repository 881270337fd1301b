//! The API server's side of admission: posting an AdmissionReview to a webhook over HTTPS, trusting only
//! the CA bundle the webhook configuration would carry.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::SimError;

/// Why a webhook could not be called, worded as the API server (a Go HTTP client) words it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("dial tcp {addr}: connect: {}", go_io(.source))]
    Dial { addr: SocketAddr, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(String),
    #[error("x509: {0}")]
    CaBundle(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response {0:?}")]
    Response(String),
}

fn go_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        _ => e.to_string(),
    }
}

/// A TLS handshake's failure as Go's `crypto/tls` reports it.
fn tls_error(e: &std::io::Error, server_name: &str) -> CallError {
    use rustls::{CertificateError, Error};
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
    CallError::Tls(match inner {
        // Go reports a certificate whose issuer's name matches a trusted one but whose signature does not
        // verify as signed by an unknown authority too.
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            "failed to verify certificate: x509: certificate signed by unknown authority".to_owned()
        }
        Some(Error::InvalidCertificate(CertificateError::NotValidForName))
        | Some(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
            format!("failed to verify certificate: x509: certificate is not valid for {server_name}")
        }
        Some(Error::InvalidCertificate(CertificateError::Expired))
        | Some(Error::InvalidCertificate(CertificateError::ExpiredContext { .. })) => {
            "failed to verify certificate: x509: certificate has expired or is not yet valid".to_owned()
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    })
}

/// POSTs `body` to `https://<server_name><path>` at `addr`; returns the status and body. A webhook that
/// refuses an oversized body may close the connection before it is all written: that is not an error.
pub async fn post(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), SimError> {
    exchange(addr, server_name, ca_pem, path, "application/json", body)
        .await
        .map_err(|e| SimError::Object(format!("webhook {server_name}{path}: {e}")))
}

/// [`post`] with any `Content-Type`, and the reason of a failure kept.
pub async fn exchange(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), CallError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| CallError::CaBundle(e.to_string()))?;
        roots.add(c).map_err(|e| CallError::CaBundle(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| CallError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|source| CallError::Dial { addr, source })?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| CallError::Tls(e.to_string()))?;
    let mut tls = connector.connect(name, tcp).await.map_err(|e| tls_error(&e, server_name))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {server_name}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    let _ = tls.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| CallError::Response("EOF".to_owned()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(CallError::Response(head.clone()))?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        let Some(chunk) = b.get(end + 2..end + 2 + n).filter(|_| n > 0) else { break };
        out.extend_from_slice(chunk);
        b = b.get(end + 2 + n + 2..).unwrap_or_default();
    }
    out
}

/// Posts an AdmissionReview and returns its `response`, checking it answers the request's uid.
pub async fn review(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
    review: &serde_json::Value,
) -> Result<serde_json::Value, SimError> {
    let (status, body) = post(addr, server_name, ca_pem, path, review.to_string().as_bytes()).await?;
    if status != 200 {
        return Err(SimError::Object(format!("webhook answered {status}: {}", String::from_utf8_lossy(&body))));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| SimError::Object(format!("webhook answer is not JSON: {e}")))?;
    if v["response"]["uid"] != review["request"]["uid"] {
        return Err(SimError::Object(format!("the webhook's answer names another request: {v}")));
    }
    Ok(v["response"].clone())
}
