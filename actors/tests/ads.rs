//! In-process gRPC: the whole controller (actors + mTLS ADS server) against a scripted sidecar client.
//! Covers the protocol details real Envoy does not let a test steer: ACKs, NACKs, refusals, delta removal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use certs::Issuer as _;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use messages::{ProxyId, ProxyUuid, ServiceIdentity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use xds::ResourceType;

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: app, image: x}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {osm-proxy-uuid: client-uuid}}
spec: {serviceAccountName: client, containers: [{name: app, image: x}]}
status: {podIP: 10.244.1.1}
"#;

mod common;

struct Controller {
    port: u16,
    http_port: u16,
    ca: certs::CertificateAuthority,
    // Dropped first: the controller stops before its directory goes.
    running: common::Running,
    dir: tempfile::TempDir,
}

impl Controller {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut actors::ControllerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mesh")).unwrap();
        std::fs::write(dir.path().join("mesh/mesh.yaml"), MESH).unwrap();
        let ca = certs::CertificateAuthority::load_or_create(&dir.path().join("state"), "cluster.local").unwrap();
        let mut config = actors::ControllerConfig::new(dir.path().join("state"));
        config.mesh_dir = Some(dir.path().join("mesh"));
        config.ads_addr = "127.0.0.1:0".parse().unwrap();
        config.scan_interval = Duration::from_millis(50);
        config.service_cert_validity = Duration::from_secs(3600);
        tweak(&mut config);
        let running = common::Running::start(config);
        Self { port: running.ads_port, http_port: running.http_port, ca, running, dir }
    }

    fn mesh_dir(&self) -> PathBuf {
        self.dir.path().join("mesh")
    }

    async fn client(&self, uuid: &str, sa: &str) -> AggregatedDiscoveryServiceClient<Channel> {
        let proxy = ProxyId { uuid: ProxyUuid::parse(uuid).unwrap(), identity: ServiceIdentity::new(sa, "demo") };
        self.client_with(self.ca.issue_proxy_client(&proxy, Duration::from_secs(3600)).unwrap()).await
    }
}

/// Replaces the mesh file atomically, as a careful operator (or kubectl-like tool) would.
fn write_mesh(c: &Controller, text: impl AsRef<str>) -> std::io::Result<()> {
    let tmp = c.mesh_dir().join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text.as_ref())?;
    std::fs::rename(tmp, c.mesh_dir().join("mesh.yaml"))
}

impl Controller {
    /// GET on the controller's HTTP endpoint: (status, body).
    async fn http(&self, path: &str) -> (u16, String) {
        common::get_at(self.http_port, path).await.expect("the HTTP endpoint answers")
    }
}

fn request(ty: ResourceType, names: &[&str], last: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node { id: "client-uuid".into(), ..Default::default() }),
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a response").unwrap().unwrap()
}

/// The client pod's sidecar, connected (SotW) and holding its first CDS response.
async fn connected_client(c: &Controller) -> (mpsc::Sender<DiscoveryRequest>, tonic::Streaming<DiscoveryResponse>) {
    let mut client = c.client("client-uuid", "client").await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
    let mut stream = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    next(&mut stream).await;
    (tx, stream)
}

async fn stream_ends_with(stream: &mut tonic::Streaming<DiscoveryResponse>, code: tonic::Code, reason: &str) {
    let status =
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("stream ends").unwrap_err();
    assert_eq!(status.code(), code);
    assert!(status.message().contains(reason), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_session_serves_acks_quietly_and_survives_a_nack() {
    let c = Controller::start();
    let mut client = c.client("client-uuid", "client").await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
    let mut stream = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let cds = next(&mut stream).await;
    assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
    assert_eq!(cds.resources.len(), 2, "one upstream cluster (demo/web|8080) and egress passthrough");

    tx.send(request(ResourceType::Cluster, &[], Some(&cds))).await.unwrap(); // ACK

    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], None)).await.unwrap();
    let eds = next(&mut stream).await;
    // The stream is ordered: an answer to the ACK would have come first.
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url(), "the ACK is not answered");
    assert_eq!(eds.resources.len(), 1);
    // Acknowledged, as Envoy does: the next EDS push waits for it.
    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], Some(&eds))).await.unwrap();

    tx.send(request(ResourceType::Listener, &[], None)).await.unwrap();
    let lds = next(&mut stream).await;
    let mut nack = request(ResourceType::Listener, &[], Some(&lds));
    nack.version_info = String::new();
    nack.error_detail = Some(RpcStatus { code: 3, message: "rejected on purpose".into(), details: vec![] });
    tx.send(nack).await.unwrap();
    // Once the NACK is recorded, anything sent for it is on the stream before what the change below sends.
    http_json_until(&c, "/status/proxies?summary", |s| s["nack"] == 1).await;

    // A change in the mesh still reaches the proxy after its NACK.
    let more = MESH.replace("status: {podIP: 10.244.1.2}", "status: {podIP: 10.244.1.3}");
    write_mesh(&c, more).unwrap();
    let update = next(&mut stream).await;
    assert_eq!(update.type_url, ResourceType::Endpoint.type_url(), "only EDS changed");
}

/// One proxy holds at most `MAX_SESSIONS_PER_PROXY` sessions; the next is refused with RESOURCE_EXHAUSTED,
/// and a session that ends makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_proxy_holds_a_bounded_number_of_sessions() {
    let c = Controller::start();
    let mut held = Vec::new();
    for _ in 0..actors::snapshot::MAX_SESSIONS_PER_PROXY {
        held.push(connected_client(&c).await);
    }
    let open = || async {
        let mut client = c.client("client-uuid", "client").await;
        let (tx, rx) = mpsc::channel(8);
        tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
        (tx, client.stream_aggregated_resources(ReceiverStream::new(rx)).await)
    };
    let status = open().await.1.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 8"), "{}", status.message());
    // One ends: a new one is admitted once its session is gone.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let (_tx, Ok(_)) = open().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a session is admitted again once one ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_impostors_are_refused_with_a_reason() {
    let c = Controller::start();
    for (uuid, sa, expect) in [
        ("nobody", "client", "no pod in the mesh has proxy UUID nobody"),
        ("client-uuid", "web", "presented identity web.demo but its pod demo/client runs as client.demo"),
    ] {
        let mut client = c.client(uuid, sa).await;
        let (tx, rx) = mpsc::channel(8);
        tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
        let status = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains(expect), "{}", status.message());
    }
}

impl Controller {
    /// A client presenting any certificate (the load test's sidecar connection, so both exercise one client).
    async fn client_with(&self, cert: certs::IssuedCert) -> AggregatedDiscoveryServiceClient<Channel> {
        loadtest::client::connect(&loadtest::client::ConnectConfig {
            addr: ([127, 0, 0, 1], self.port).into(),
            server_name: "ads.cluster.local".into(),
            ca_pem: self.ca.root_pem().into(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            local_ip: None,
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sidecar_certificates_of_this_trust_domain_open_a_stream() {
    let c = Controller::start();
    let hour = Duration::from_secs(3600);
    // A workload's service certificate whose service account name makes its CN read like the client's
    // sidecar certificate (`client-uuid.sidecar.client.demo.cluster.local`): it must not get the client's key.
    let forged = c.ca.issue_service(&ServiceIdentity::new("client-uuid.sidecar.client", "demo"), hour, true).unwrap();
    // A sidecar certificate from the same root but for another trust domain.
    let elsewhere = certs::CertificateAuthority::load(&c.dir.path().join("state"), "evil.local").unwrap();
    let client =
        ProxyId { uuid: ProxyUuid::parse("client-uuid").unwrap(), identity: ServiceIdentity::new("client", "demo") };
    let foreign = elsewhere.issue_proxy_client(&client, hour).unwrap();
    for (cert, expect) in [(forged, "not a sidecar certificate of this mesh"), (foreign, "not a sidecar certificate")] {
        let mut ads = c.client_with(cert).await;
        let (tx, rx) = mpsc::channel(8);
        tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
        let status = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains(expect), "{}", status.message());
    }
    // The genuine sidecar certificate still works.
    let mut ads = c.client("client-uuid", "client").await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
    let mut stream = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert_eq!(next(&mut stream).await.type_url, ResourceType::Cluster.type_url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_end_the_stream_with_an_error_not_ok() {
    let c = Controller::start();
    let too_many: Vec<String> = (0..40_000).map(|i| format!("demo/svc-{i}|80")).collect();
    let huge_name = vec!["x".repeat(5 << 20)];
    for (names, expect_code, expect) in [
        (too_many, tonic::Code::ResourceExhausted, "40000 resource names for one type; the limit is 32768"),
        (huge_name, tonic::Code::OutOfRange, "request refused"),
    ] {
        let mut ads = c.client("client-uuid", "client").await;
        let (tx, rx) = mpsc::channel(8);
        let mut req = request(ResourceType::Endpoint, &[], None);
        req.resource_names = names;
        tx.send(req).await.unwrap();
        let mut stream = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let status = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended with OK"),
                    Err(status) => break status,
                }
            }
        })
        .await
        .expect("the stream ends with an error");
        assert_eq!(status.code(), expect_code, "{status:?}");
        assert!(status.message().contains(expect), "{}", status.message());
    }
    // Delta: claiming too many held resources is refused the same way.
    let mut ads = c.client("client-uuid", "client").await;
    let (tx, rx) = mpsc::channel(8);
    let req = DeltaDiscoveryRequest {
        type_url: ResourceType::Endpoint.type_url().to_owned(),
        initial_resource_versions: (0..40_000).map(|i| (format!("n{i}"), "v".to_owned())).collect(),
        ..Default::default()
    };
    tx.send(req).await.unwrap();
    let mut stream = ads.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the delta stream ended with OK"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the delta stream ends with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

impl Controller {
    /// The serial of the certificate the ADS server presents to a new connection (a TLS handshake with
    /// the client's sidecar certificate).
    async fn server_serial(&self) -> String {
        let proxy = ProxyId {
            uuid: ProxyUuid::parse("client-uuid").unwrap(),
            identity: ServiceIdentity::new("client", "demo"),
        };
        let cert = self.ca.issue_proxy_client(&proxy, Duration::from_secs(3600)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(certs::pem_to_der(self.ca.root_pem()).unwrap())).unwrap();
        let chain = vec![rustls::pki_types::CertificateDer::from(certs::pem_to_der(&cert.cert_pem).unwrap())];
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("ads.cluster.local").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        certs::serial_of(&presented).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ads_server_certificate_is_renewed_and_connected_sidecars_keep_their_stream() {
    // Four seconds of validity: renewed about two seconds after issuance.
    let c = Controller::start_with(|config| config.ads_cert_validity = Duration::from_secs(4));
    let (tx, mut stream) = connected_client(&c).await;
    let first = c.server_serial().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut serials = vec![first];
    while serials.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "renewals seen: {serials:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = c.server_serial().await;
        if serials.last() != Some(&now) {
            serials.push(now);
        }
    }
    // The stream opened before the renewals still serves: a changed subscription is answered on it.
    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], None)).await.unwrap();
    let eds = next(&mut stream).await;
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_or_another_root_no_connection_and_the_reason_is_counted() {
    let c = Controller::start();
    let tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(c.ca.root_pem())).domain_name("ads.cluster.local");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", c.port)).unwrap().tls_config(tls).unwrap();
    // Bounded: with TLS 1.3 the client finishes its handshake before the server refuses it, and a client
    // whose connection is gone may wait on a reconnect; either way no stream may ever be served.
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let ch = channel.connect().await?;
        let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        AggregatedDiscoveryServiceClient::new(ch).stream_aggregated_resources(ReceiverStream::new(rx)).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await;
    assert!(!matches!(result, Ok(Ok(()))), "a connection without a client certificate must fail");
    // A sidecar whose certificate comes from another mesh root (bootstrapped with another state directory).
    let other = certs::CertificateAuthority::generate("cluster.local").unwrap();
    let proxy =
        ProxyId { uuid: ProxyUuid::parse("client-uuid").unwrap(), identity: ServiceIdentity::new("client", "demo") };
    let cert = other.issue_proxy_client(&proxy, Duration::from_secs(3600)).unwrap();
    let connected = loadtest::client::connect(&loadtest::client::ConnectConfig {
        addr: ([127, 0, 0, 1], c.port).into(),
        server_name: "ads.cluster.local".into(),
        ca_pem: c.ca.root_pem().into(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        local_ip: None,
    })
    .await;
    if let Ok(mut ads) = connected {
        let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        let served =
            tokio::time::timeout(Duration::from_secs(5), ads.stream_aggregated_resources(ReceiverStream::new(rx)));
        assert!(!matches!(served.await, Ok(Ok(_))), "a sidecar of another root must not get a stream");
    }
    // Both failures are counted by reason (and logged with a hint).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = c.http("/metrics").await;
        // A client may try more than once (its channel reconnects): at least one of each.
        let counted = |reason: &str| {
            let prefix = format!("osm_ads_tls_handshake_failed_count{{reason=\"{reason}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        if counted("no_client_certificate") >= 1 && counted("unknown_ca") >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_session_sends_changes_and_removals() {
    let c = Controller::start();
    let mut client = c.client("client-uuid", "client").await;
    let (tx, rx) = mpsc::channel(8);
    let sub = |nonce: &str| DeltaDiscoveryRequest {
        node: Some(Node { id: "client-uuid".into(), ..Default::default() }),
        type_url: ResourceType::Cluster.type_url().into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(sub("")).await.unwrap();
    let mut stream = client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first: DeltaDiscoveryResponse = next(&mut stream).await;
    assert_eq!(
        first.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec!["demo/web|8080", "passthrough-outbound"]
    );
    tx.send(sub(&first.nonce)).await.unwrap(); // ACK
    // Once the ACK is recorded, anything sent for it is on the stream before what the change below sends.
    http_json_until(&c, "/status/proxies?summary", |s| s["holding"] == 1).await;

    let without_service: String =
        MESH.split("\n---\n").filter(|d| !d.contains("kind: Service")).collect::<Vec<_>>().join("\n---\n");
    write_mesh(&c, without_service).unwrap();
    let removal = next(&mut stream).await;
    assert_eq!(removal.removed_resources, vec!["demo/web|8080"]);
    assert!(removal.resources.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_removed_from_the_mesh_loses_its_stream() {
    let c = Controller::start();
    let (_tx, mut stream) = connected_client(&c).await;
    let without_client: String =
        MESH.split("\n---\n").filter(|d| !d.contains("name: client")).collect::<Vec<_>>().join("\n---\n");
    write_mesh(&c, without_client).unwrap();
    stream_ends_with(&mut stream, tonic::Code::PermissionDenied, "no longer in the mesh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_changes_service_account_loses_its_stream_not_gains_a_key() {
    let c = Controller::start();
    let (_tx, mut stream) = connected_client(&c).await;
    let moved = MESH.replace("spec: {serviceAccountName: client,", "spec: {serviceAccountName: web,");
    assert_ne!(moved, MESH);
    write_mesh(&c, moved).unwrap();
    stream_ends_with(&mut stream, tonic::Code::PermissionDenied, "now runs as web.demo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoint() {
    let c = Controller::start();
    let wait_ready = async {
        loop {
            if c.http("/health/ready").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait_ready).await.expect("ready");
    assert_eq!(c.http("/health/alive").await.0, 200);
    let (_tx, _stream) = connected_client(&c).await;
    let mut nobody = c.client("nobody", "client").await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
    assert!(nobody.stream_aggregated_resources(ReceiverStream::new(rx)).await.is_err());
    let (status, text) = c.http("/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("osm_proxy_connect_count 1\n"), "{text}");
    assert!(
        text.contains(
            "osm_proxy_xds_request_count{identity=\"client.demo\",proxy_uuid=\"client-uuid\",type=\"CDS\"} 1\n"
        ),
        "{text}"
    );
    assert!(text.contains("osm_proxy_response_send_success_count{identity=\"client.demo\",proxy_uuid=\"client-uuid\",type=\"CDS\"} 1\n"), "{text}");
    assert!(text.contains("osm_proxy_rejected_count{reason=\"unknown_proxy\"} 1\n"), "{text}");
    assert!(text.contains("osm_cert_issued_count 1\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_closed_and_health_keeps_answering() {
    use tokio::io::AsyncReadExt;
    let c = Controller::start_with(|cfg| {
        cfg.http_limits = actors::http::HttpLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            max_connection_age: Duration::from_secs(60),
            max_per_peer: 4,
        };
    });
    // More idle connections than the endpoint takes at once: they sit in the backlog, then time out.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", c.http_port)).await.unwrap());
    }
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), c.http("/health/alive")).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "alive\n"));
    // The server closed the idle ones (end of stream), rather than holding them forever.
    for mut s in idle {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "an idle connection got {text:?}");
    }
}

/// One peer's idle sockets, however many and however often reopened, take at most its share of the
/// endpoint: liveness is answered to another address at once (the kubelet's probe times out after 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peers_idle_sockets_cannot_starve_the_liveness_probe() {
    let c = Controller::start_with(|cfg| {
        cfg.http_limits = actors::http::HttpLimits {
            max_connections: 32,
            header_timeout: Duration::from_secs(30),
            max_connection_age: Duration::from_secs(60),
            max_per_peer: 8,
        };
    });
    // 140 idle sockets from 127.0.0.1, more than the endpoint's every slot.
    let mut idle = Vec::new();
    for _ in 0..140 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", c.http_port)).await {
            idle.push(s);
        }
    }
    // The probe from another address (the node's, for a kubelet): answered well within its timeout.
    for _ in 0..5 {
        let probe = async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut s = socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], c.http_port))).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /health/alive HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let answer = tokio::time::timeout(Duration::from_secs(1), probe).await.expect("liveness answered within 1 s");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_connected_sidecars_to_go_and_completes() {
    let mut c = Controller::start();
    let (_tx, mut stream) = connected_client(&c).await;
    let thread = c.running.stop();
    stream_ends_with(&mut stream, tonic::Code::Unavailable, "shutting down").await;
    // The controller returns although the sidecar never closed its side.
    tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || thread.join().unwrap()))
        .await
        .expect("controller stops within its drain period")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_and_idle_handshakes_time_out() {
    let c = Controller::start_with(|config| {
        config.limits.max_connections = 2;
        config.limits.handshake_timeout = Duration::from_millis(300);
    });
    // Two sockets that never speak TLS take both connection slots ...
    let idle: Vec<tokio::net::TcpStream> =
        futures::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(("127.0.0.1", c.port))))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // ... and are dropped at the handshake timeout, after which a real sidecar gets through.
    let (_tx, _stream) = tokio::time::timeout(Duration::from_secs(10), connected_client(&c)).await.expect("served");
    use tokio::io::AsyncReadExt;
    for mut s in idle {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed by the server");
        assert!(matches!(n, Ok(0) | Err(_)), "the idle connection was closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_changes_arrive_through_file_notifications_not_the_rescan() {
    // The safety-net rescan never comes during the test: only a file-system notification can deliver it.
    let c = Controller::start_with(|config| config.scan_interval = Duration::from_secs(3600));
    let (tx, mut stream) = connected_client(&c).await;
    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], None)).await.unwrap();
    let eds = next(&mut stream).await;
    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], Some(&eds))).await.unwrap();
    let more = MESH.replace("status: {podIP: 10.244.1.2}", "status: {podIP: 10.244.1.3}");
    write_mesh(&c, more).unwrap();
    let update = next(&mut stream).await;
    assert_eq!(update.type_url, ResourceType::Endpoint.type_url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_watched_through_the_api_server_and_its_changes_reach_the_sidecars() {
    let sim = apisim::ApiServer::start().await.unwrap();
    sim.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {openservicemesh.io/monitored-by: osm}}",
    )
    .unwrap();
    sim.apply_yaml(MESH).unwrap();
    // On a cluster the root is the one in the osm-ca-bundle Secret.
    let ca = k8s::ca_secret::load_or_create(sim.client().unwrap(), "osm-system", "cluster.local").await.unwrap();
    let mut c = replica(&sim, "test");
    let wait_ready = async {
        while c.http("/health/ready").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait_ready).await.expect("ready once every kind was listed");
    c.ca = ca;
    let (tx, mut stream) = connected_client(&c).await;
    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], None)).await.unwrap();
    let eds = next(&mut stream).await;
    assert_eq!(eds.resources.len(), 1);
    tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], Some(&eds))).await.unwrap();

    // A pod written to the API server becomes an endpoint of the sidecar's upstream.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: demo, labels: {app: web}}\n\
         spec: {serviceAccountName: web, containers: [{name: app, image: x}]}\nstatus: {podIP: 10.244.1.9}",
    )
    .unwrap();
    let update = next(&mut stream).await;
    assert_eq!(update.type_url, ResourceType::Endpoint.type_url());
    let has = |ip: &[u8]| update.resources.iter().any(|r| r.value.windows(ip.len()).any(|w| w == ip));
    assert!(has(b"10.244.1.9") && has(b"10.244.1.2"), "{update:?}");

    // Unlabelling the namespace takes its pods out of the mesh: the sidecar's stream ends.
    sim.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = status.expect("an error status, not a clean end");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("no longer in the mesh"), "{status:?}");
}

/// A controller of the cluster behind `sim`, as replica `id`.
fn replica(sim: &apisim::ApiServer, id: &str) -> Controller {
    let cluster = sim.url().parse().unwrap();
    let mut source = actors::KubernetesSource::new(kube::Config::new(cluster), "osm", "osm-system", id);
    // Short, so a failover is quick.
    source.lease = k8s::duties::LeaseTiming { duration_s: 2, grace_s: 1 };
    Controller::start_with(move |config| {
        config.mesh_dir = None;
        config.kubernetes = Some(source);
    })
}

async fn leads(c: &Controller) -> bool {
    c.http("/metrics").await.1.contains("osm_controller_leader 1\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_the_same_config_share_one_root_and_one_holds_the_lease() {
    let sim = apisim::ApiServer::start().await.unwrap();
    sim.apply_yaml(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {openservicemesh.io/monitored-by: osm}}",
    )
    .unwrap();
    sim.apply_yaml(MESH).unwrap();
    sim.apply_yaml(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\n\
         metadata: {name: osm-webhook-osm}\nwebhooks:\n- name: osm-inject.k8s.io\n  admissionReviewVersions: [v1]\n  \
         sideEffects: NoneOnDryRun\n  clientConfig: {service: {name: osm-injector, namespace: osm-system, path: /mutate-pod-creation}}",
    )
    .unwrap();
    let mut a = replica(&sim, "replica-a");
    let mut b = replica(&sim, "replica-b");
    let both_ready = async {
        while a.http("/health/ready").await.0 != 200 || b.http("/health/ready").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), both_ready).await.expect("both replicas ready");

    // One root for both, from the cluster's Secret: a sidecar certificate from it is accepted by each.
    let secret = sim.get(&apisim::Resource::new("", "v1", "secrets"), "osm-system", "osm-ca-bundle").unwrap();
    let ca = k8s::ca_secret::load_or_create(sim.client().unwrap(), "osm-system", "cluster.local").await.unwrap();
    assert!(secret["data"]["ca.crt"].is_string());
    a.ca = k8s::ca_secret::load_or_create(sim.client().unwrap(), "osm-system", "cluster.local").await.unwrap();
    b.ca = ca;
    let mut assignments = Vec::new();
    for c in [&a, &b] {
        let (tx, mut stream) = connected_client(c).await;
        tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], None)).await.unwrap();
        let eds = next(&mut stream).await;
        assignments.push((eds.version_info.clone(), eds.resources.clone()));
    }
    assert_eq!(assignments[0], assignments[1], "both replicas serve the same configuration");

    // Exactly one holds the Lease, and it did the one-time duties.
    let one_leader = async {
        loop {
            let (la, lb) = (leads(&a).await, leads(&b).await);
            if la != lb {
                return la;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let a_leads = tokio::time::timeout(Duration::from_secs(20), one_leader).await.expect("one leader");
    let lease =
        sim.get(&apisim::Resource::new("coordination.k8s.io", "v1", "leases"), "osm-system", "osm-controller-leader");
    let holder = lease.unwrap()["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert_eq!(holder, if a_leads { "replica-a" } else { "replica-b" });
    let root = a.ca.root_pem().to_owned();
    let duties_done = async {
        loop {
            let hook = sim.get(
                &apisim::Resource::new("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations"),
                "",
                "osm-webhook-osm",
            );
            let bundle = hook.and_then(|h| h["webhooks"][0]["clientConfig"]["caBundle"].as_str().map(str::to_owned));
            let mc = sim.get(
                &apisim::Resource::new("config.openservicemesh.io", "v1alpha2", "meshconfigs"),
                "osm-system",
                "osm-mesh-config",
            );
            if let (Some(bundle), Some(_)) = (bundle, mc) {
                return bundle;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let bundle =
        tokio::time::timeout(Duration::from_secs(10), duties_done).await.expect("webhook CA bundle and MeshConfig");
    use base64::Engine as _;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(bundle).unwrap(), root.as_bytes());

    // The leader leaves: it releases the Lease and the other replica takes over.
    let (leader, follower) = if a_leads { (a, b) } else { (b, a) };
    drop(leader);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !leads(&follower).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the other replica takes the Lease over");
}

/// An ADS client presenting `cert` and trusting `ca_pem`.
async fn sidecar_client(
    c: &Controller,
    ca_pem: &str,
    cert: &certs::IssuedCert,
) -> Result<AggregatedDiscoveryServiceClient<Channel>, loadtest::client::ClientError> {
    loadtest::client::connect(&loadtest::client::ConnectConfig {
        addr: ([127, 0, 0, 1], c.port).into(),
        server_name: "ads.cluster.local".into(),
        ca_pem: ca_pem.into(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        local_ip: None,
    })
    .await
}

/// Whether a sidecar with `cert`, trusting `ca_pem`, gets a stream served: a first answer to its request.
async fn served(c: &Controller, ca_pem: &str, cert: &certs::IssuedCert) -> bool {
    let attempt = async {
        let mut ads = sidecar_client(c, ca_pem, cert).await.ok()?;
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        tx.send(request(ResourceType::Cluster, &[], None)).await.ok()?;
        let mut stream = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.ok()?.into_inner();
        stream.message().await.ok()?
    };
    // Served, or refused (an error): a server that does neither is a failure, never read as "refused".
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .expect("the ADS server neither served nor refused within 10 s")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ads_server_verifies_and_presents_certificates_of_the_roots_in_force() {
    let c = Controller::start();
    let mrc = |name: &str, secret: &str, role: &str| {
        format!(
            "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshRootCertificate\n\
             metadata: {{name: {name}, namespace: osm-system}}\n\
             spec: {{role: {role}, provider: {{tresor: {{ca: {{secretRef: {{name: {secret}}}}}}}}}}}\n"
        )
    };
    let step = |old: Option<&str>, new: &str| {
        let old = old.map(|r| mrc("old", "osm-ca-bundle", r) + "---\n").unwrap_or_default();
        let tmp = c.mesh_dir().join(".roots.yaml.tmp");
        std::fs::write(&tmp, old + &mrc("new", "osm-ca-bundle-2", new)).unwrap();
        std::fs::rename(tmp, c.mesh_dir().join("roots.yaml")).unwrap();
    };
    let until = |what: &'static str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        move || assert!(std::time::Instant::now() < deadline, "{what}")
    };
    let proxy =
        ProxyId { uuid: ProxyUuid::parse("client-uuid").unwrap(), identity: ServiceIdentity::new("client", "demo") };
    let old_cert = c.ca.issue_proxy_client(&proxy, Duration::from_secs(3600)).unwrap();
    let old_root = c.ca.root_pem().to_owned();
    assert!(served(&c, &old_root, &old_cert).await);

    // A new root beside the old one: sidecars with certificates of either are served.
    step(Some("active"), "passive");
    let new_dir =
        certs::roots::RootStore::dir_of(&c.dir.path().join("state"), &("osm-system".into(), "osm-ca-bundle-2".into()));
    let check = until("the new root is created");
    let new_ca = loop {
        if let Ok(ca) = certs::CertificateAuthority::load(&new_dir, "cluster.local") {
            break ca;
        }
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_cert = new_ca.issue_proxy_client(&proxy, Duration::from_secs(3600)).unwrap();
    let both = format!("{old_root}{}", new_ca.root_pem());
    let check = until("a sidecar of the new root is served");
    while !served(&c, &both, &new_cert).await {
        check();
    }
    assert!(served(&c, &both, &old_cert).await);
    assert!(!served(&c, new_ca.root_pem(), &new_cert).await, "the old root still signs the server's certificate");

    // The new root signs: the server presents a certificate of it.
    step(Some("passive"), "active");
    let check = until("the server presents a certificate of the new root");
    while !served(&c, new_ca.root_pem(), &new_cert).await {
        check();
    }
    assert!(served(&c, &both, &old_cert).await, "the old root is still trusted");

    // A sidecar of the old root, connected before it retires.
    let mut ads = sidecar_client(&c, &both, &old_cert).await.unwrap();
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
    let mut connected = ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    next(&mut connected).await;

    // The old root retires: its sidecars are refused, the new one's served, and the stream of the one
    // connected with it ends (it must not keep receiving keys).
    step(None, "active");
    let check = until("a sidecar of the old root is refused");
    while served(&c, &both, &old_cert).await {
        check();
    }
    assert!(served(&c, new_ca.root_pem(), &new_cert).await);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match connected.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended with OK"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the retired root's stream to end");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("bootstrap it again"), "{ended:?}");
    drop(tx);
}

/// GET on a local port: (status, body), or `None` when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_server_follows_the_mesh_config_and_never_shows_keys() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = Controller::start_with(|config| config.debug_addr = ([127, 0, 0, 1], port).into());
    let (_tx, _stream) = connected_client(&c).await;
    assert!(common::get_at(port, "/debug").await.is_none(), "off by default");
    let switch = |on: bool| {
        let text = format!(
            "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
             metadata: {{name: osm-mesh-config, namespace: osm-system}}\n\
             spec: {{observability: {{enableDebugServer: {on}}}}}\n"
        );
        let tmp = c.mesh_dir().join(".meshconfig.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, c.mesh_dir().join("meshconfig.yaml")).unwrap();
    };
    switch(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let certs = loop {
        if let Some((200, body)) = common::get_at(port, "/debug/certs").await {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "the debug server never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(certs.contains("\"identity\": \"client.demo\"") && certs.contains("\"serial\""), "{certs}");
    assert!(!certs.contains("PRIVATE KEY"), "{certs}");
    let (status, config) = common::get_at(port, "/debug/config?proxy=client-uuid").await.unwrap();
    assert_eq!(status, 200, "{config}");
    assert!(
        config.contains("\"CDS\"") && config.contains("demo/web|8080") && !config.contains("PRIVATE KEY"),
        "{config}"
    );
    let (_, catalog) = common::get_at(port, "/debug/catalog").await.unwrap();
    assert!(catalog.contains("\"pods\": 2") && catalog.contains("osm-system/osm-mesh-config"), "{catalog}");
    let (_, proxies) = common::get_at(port, "/debug/proxies").await.unwrap();
    assert!(proxies.contains("client-uuid"), "{proxies}");
    switch(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::get_at(port, "/debug").await.is_some() {
        assert!(std::time::Instant::now() < deadline, "the debug server never went off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SotW request from the sidecar of proxy `node`.
fn request_from(node: &str, ty: ResourceType, names: &[&str], last: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest { node: Some(Node { id: node.into(), ..Default::default() }), ..request(ty, names, last) }
}

/// Polls a JSON document of the controller's HTTP endpoint until `ok` accepts it.
async fn http_json_until(c: &Controller, path: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = c.http(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        if ok(&doc) {
            return doc;
        }
        assert!(std::time::Instant::now() < deadline, "{path} never came to what was expected; last: {doc:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mesh_change_is_numbered_and_the_controller_knows_which_proxies_hold_it() {
    let mesh = MESH.replace("labels: {app: web}}", "labels: {app: web, osm-proxy-uuid: web-uuid}}");
    assert_ne!(mesh, MESH);
    let written = mesh.clone();
    let c = Controller::start_with(move |config| {
        std::fs::write(config.mesh_dir.as_ref().unwrap().join("mesh.yaml"), written).unwrap();
    });
    // The client's sidecar watches clusters and web's endpoints; web's sidecar only clusters.
    let mut client_ads = c.client("client-uuid", "client").await;
    let (client_tx, rx) = mpsc::channel(8);
    client_tx.send(request(ResourceType::Cluster, &[], None)).await.unwrap();
    let mut client = client_ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let cds = next(&mut client).await;
    client_tx.send(request(ResourceType::Cluster, &[], Some(&cds))).await.unwrap();
    let mut web_ads = c.client("web-uuid", "web").await;
    let (web_tx, rx) = mpsc::channel(8);
    web_tx.send(request_from("web-uuid", ResourceType::Cluster, &[], None)).await.unwrap();
    let mut web = web_ads.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let web_cds = next(&mut web).await;
    web_tx.send(request_from("web-uuid", ResourceType::Cluster, &[], Some(&web_cds))).await.unwrap();
    client_tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], None)).await.unwrap();
    let eds = next(&mut client).await;
    client_tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], Some(&eds))).await.unwrap();
    let summary = http_json_until(&c, "/status/proxies?summary", |s| s["proxies"] == 2 && s["holding"] == 2).await;
    let before = summary["generation"].as_u64().unwrap();

    // web-1 moves: the client's endpoints change; web's sidecar has nothing new to take.
    let moved = mesh.replace("status: {podIP: 10.244.1.2}", "status: {podIP: 10.244.1.3}");
    write_mesh(&c, &moved).unwrap();
    let update = next(&mut client).await;
    assert_eq!(update.type_url, ResourceType::Endpoint.type_url());
    let changes =
        http_json_until(&c, "/status/changes", |c| c[0]["generation"].as_u64() > Some(before) && c[0]["holding"] == 1)
            .await;
    let change = &changes[0];
    let first = change["generation"].as_u64().unwrap();
    assert!(change["what"].as_str().unwrap().contains("web-1"), "{change:#}");
    assert_eq!(change["not_holding"], serde_json::json!(["demo/client"]), "{change:#}");
    assert_eq!(change["proxies"], 2);

    // The client refuses it: it still does not hold that change, and its status says why.
    let mut nack = request(ResourceType::Endpoint, &["demo/web|8080"], Some(&update));
    nack.version_info = eds.version_info.clone();
    nack.error_detail = Some(RpcStatus { code: 3, message: "rejected on purpose".into(), details: vec![] });
    client_tx.send(nack).await.unwrap();
    let status = http_json_until(&c, "/status/proxies", |s| {
        s["proxies"].as_array().unwrap().iter().any(|p| p["uuid"] == "client-uuid" && p["state"] == "nack")
    })
    .await;
    for p in status["proxies"].as_array().unwrap() {
        let expected = if p["uuid"] == "client-uuid" { before } else { first };
        assert_eq!(p["generation"].as_u64(), Some(expected), "{p:#}");
    }
    // web took nothing: the clusters it holds are the ones it had.
    let web_status = status["proxies"].as_array().unwrap().iter().find(|p| p["uuid"] == "web-uuid").unwrap();
    assert_eq!(web_status["types"]["CDS"]["acked"].as_str(), Some(web_cds.version_info.as_str()));
    let (code, body) = c.http(&format!("/status/changes?generation={first}")).await;
    assert_eq!(code, 200);
    assert!(body.contains("\"holding\": 1"), "{body}");

    // The next change reaches it and it ACKs: it holds both changes.
    write_mesh(&c, moved.replace("status: {podIP: 10.244.1.3}", "status: {podIP: 10.244.1.4}")).unwrap();
    let again = next(&mut client).await;
    client_tx.send(request(ResourceType::Endpoint, &["demo/web|8080"], Some(&again))).await.unwrap();
    let summary =
        http_json_until(&c, "/status/proxies?summary", |s| s["generation"].as_u64() > Some(first) && s["holding"] == 2)
            .await;
    assert_eq!(summary["synced"], 2);
    let (_, of_first) = c.http(&format!("/status/proxies?summary&generation={first}")).await;
    assert!(of_first.contains("\"holding\": 2"), "{of_first}");
    let (code, body) = c.http("/status/changes?generation=x").await;
    assert_eq!((code, body.contains("generation")), (400, true), "{body}");
    drop((client_tx, web_tx));
}
