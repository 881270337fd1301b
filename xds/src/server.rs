//! The tonic ADS service: authenticates the proxy from its client certificate and hands the stream to
//! whoever runs sessions (the actors crate), through [`SessionHandler`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use messages::ProxyId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Responses queued per stream before the session waits for the proxy to read (backpressure).
pub const STREAM_BUFFER: usize = 16;

pub type RequestStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One accepted ADS stream, ready for a session to run.
pub enum AdsStream {
    Sotw {
        requests: RequestStream<DiscoveryRequest>,
        responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    },
    Delta {
        requests: RequestStream<DeltaDiscoveryRequest>,
        responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    },
}

impl std::fmt::Debug for AdsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdsStream::Sotw { .. } => "AdsStream::Sotw",
            AdsStream::Delta { .. } => "AdsStream::Delta",
        })
    }
}

/// Accepts or refuses a proxy and runs its session. Refusal is a `Status` the proxy sees.
pub trait SessionHandler: Send + Sync + 'static {
    fn open(
        &self,
        proxy: ProxyId,
        peer: Option<SocketAddr>,
        stream: AdsStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send + 'static>>;
}

/// Reads the proxy's identity from the verified client certificate of the connection.
fn identify<T>(req: &Request<T>) -> Result<ProxyId, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate: the ADS server requires mTLS"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    let cn = certs::peer_common_name(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    ProxyId::from_common_name(&cn).map_err(|e| Status::permission_denied(e.to_string()))
}

pub struct AdsService<H> {
    handler: Arc<H>,
}

impl<H: SessionHandler> AdsService<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Self { handler }
    }

    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(16 << 20)
    }
}

#[tonic::async_trait]
impl<H: SessionHandler> AggregatedDiscoveryService for AdsService<H> {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let proxy = identify(&request)?;
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let requests: RequestStream<DiscoveryRequest> = Box::pin(request.into_inner());
        self.handler.open(proxy, peer, AdsStream::Sotw { requests, responses: tx }).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let proxy = identify(&request)?;
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let requests: RequestStream<DeltaDiscoveryRequest> = Box::pin(request.into_inner());
        self.handler.open(proxy, peer, AdsStream::Delta { requests, responses: tx }).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// TLS material of the ADS server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// Roots that sign sidecars' client certificates.
    pub client_ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("ADS server TLS configuration rejected: {0}")]
    Tls(tonic::transport::Error),
    #[error("ADS server on {addr} failed: {source}")]
    Serve { addr: SocketAddr, source: tonic::transport::Error },
}

/// Serves ADS over mTLS (client certificate required) on an already-bound listener until `shutdown`.
pub async fn serve<H: SessionHandler>(
    listener: tokio::net::TcpListener,
    tls: ServerTls,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let tls_config = ServerTlsConfig::new()
        .identity(Identity::from_pem(tls.cert_pem, tls.key_pem))
        .client_ca_root(Certificate::from_pem(tls.client_ca_pem));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Server::builder()
        .tls_config(tls_config)
        .map_err(ServeError::Tls)?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .add_service(AdsService::new(handler).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}
