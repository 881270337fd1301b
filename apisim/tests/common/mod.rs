//! Shared by the integration tests: the real `kubectl` and `helm` against a simulator (each run with its
//! own kubeconfig, home and caches in a temporary directory), and an admission webhook served over TLS.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apisim::ApiServer;
use base64::Engine as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use apisim::clients::Tools;

/// The tools of `sim`.
pub fn tools(sim: &ApiServer) -> Tools {
    Tools::new(sim).unwrap()
}

/// What the tests ask of [`Tools`], failing the test instead of returning errors.
pub trait ToolsExt {
    fn file(&self, name: &str, contents: &str) -> String;
    fn script(&self, name: &str, body: &str) -> String;
    /// `kubectl`, which must succeed; its stdout.
    async fn kubectl_ok(&self, args: &[&str]) -> String;
}

impl ToolsExt for Tools {
    fn file(&self, name: &str, contents: &str) -> String {
        self.write_file(name, contents).unwrap()
    }

    fn script(&self, name: &str, body: &str) -> String {
        self.write_script(name, body).unwrap()
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let run = self.kubectl(args).await;
        assert!(run.ok, "kubectl {args:?} failed:\n{}{}", run.stdout, run.stderr);
        run.stdout
    }
}

/// What a webhook answers to one AdmissionReview (given its path and the review): the `response` without
/// its uid, or `None` to never answer.
pub type Answer = Arc<dyn Fn(&str, &Value) -> Option<Value> + Send + Sync>;

/// An admission webhook served over TLS on loopback, keeping every review it gets.
pub struct Webhook {
    pub addr: SocketAddr,
    /// The `clientConfig.caBundle` that trusts it.
    pub ca_bundle: String,
    pub reviews: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Webhook {
    /// Reviews received so far (path and review).
    pub fn reviews(&self) -> Vec<(String, Value)> {
        self.reviews.lock().unwrap().clone()
    }
}

/// A certificate for `names`, self-signed (its PEM is also the CA bundle that trusts it): PEM, DER, key.
pub fn self_signed(names: &[&str]) -> (String, rustls::pki_types::CertificateDer<'static>, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let key = rcgen::generate_simple_self_signed(names).unwrap();
    (key.cert.pem(), key.cert.der().clone(), key.signing_key.serialize_der())
}

pub fn ca_bundle_of(pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// Serves AdmissionReviews over TLS with a certificate valid for `names`.
pub async fn webhook(names: &[&str], answer: Answer) -> Webhook {
    let (pem, cert, key) = self_signed(names);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reviews = Arc::new(Mutex::new(Vec::new()));
    let kept = reviews.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, answer, kept) = (acceptor.clone(), answer.clone(), kept.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Some((path, body)) = read_request(&mut tls).await else { return };
                let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                kept.lock().unwrap().push((path.clone(), review.clone()));
                let Some(mut response) = answer(&path, &review) else {
                    // Never answers: holds the connection until the caller gives up.
                    let _ = tls.read(&mut [0u8; 1]).await;
                    return;
                };
                response["uid"] = review["request"]["uid"].clone();
                let body =
                    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
                        .to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(format!("{head}{body}").as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Webhook { addr, ca_bundle: ca_bundle_of(&pem), reviews }
}

async fn read_request(tls: &mut (impl AsyncReadExt + Unpin)) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let path = head.split_whitespace().nth(1)?.to_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))?
                .parse()
                .ok()?;
            while raw.len() < end + 4 + length {
                let n = tls.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            return Some((path, raw[end + 4..end + 4 + length].to_vec()));
        }
        let n = tls.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Waits up to `deadline` for `check` to hold.
pub async fn eventually(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !check() {
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An answer over HTTP: status, body (JSON, or `Null`), and the `Warning` headers' texts.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

/// One HTTP/1.1 request to the simulator, as a client would send it.
pub async fn http(sim: &ApiServer, method: &str, path: &str, content_type: &str, body: &str) -> Reply {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", sim.port())).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json\r\ncontent-type: {content_type}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange).await.expect("the simulator answers");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let warnings = head
        .lines()
        .filter_map(|l| l.strip_prefix("warning: ").or_else(|| l.strip_prefix("Warning: ")))
        .map(|w| {
            // `299 - "text"`: the text.
            let quoted = w.split_once(" - ").map_or(w, |(_, q)| q);
            serde_json::from_str::<String>(quoted).unwrap_or_else(|_| quoted.to_owned())
        })
        .collect();
    let body = serde_json::from_slice(&raw[end + 4..]).unwrap_or(Value::Null);
    Reply { status, body, warnings }
}
