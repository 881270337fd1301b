//! The tonic ADS service: authenticates the proxy from its client certificate and hands the stream to
//! whoever runs sessions (the actors crate), through [`SessionHandler`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt as _};
use messages::ProxyId;

use crate::sotw::SotwResponse;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};

/// Responses queued per stream before the session waits for the proxy to read (backpressure). Small: a
/// proxy that stops reading holds at most this many responses (plus HTTP/2's window), and newer
/// snapshots coalesce in the session's watch instead.
pub const STREAM_BUFFER: usize = 2;

pub type RequestStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One accepted ADS stream, ready for a session to run.
pub enum AdsStream {
    Sotw {
        requests: RequestStream<DiscoveryRequest>,
        responses: mpsc::Sender<Result<SotwResponse, Status>>,
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

/// Reads the proxy's identity from the verified client certificate of the connection: exactly one sidecar
/// URI SAN of this mesh's trust domain, and a CN that says the same. A workload's service certificate,
/// signed by the same root, carries no such URI and is refused.
fn identify<T>(req: &Request<T>, trust_domain: &str) -> Result<ProxyId, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate: the ADS server requires mTLS"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
    let unreadable = |e: certs::CertError| Status::unauthenticated(format!("unreadable client certificate: {e}"));
    let uris = certs::peer_uris(leaf.as_ref()).map_err(unreadable)?;
    let mut ids = uris.iter().filter_map(|u| ProxyId::from_uri(u, trust_domain).ok());
    let (Some(proxy), None) = (ids.next(), ids.next()) else {
        return Err(Status::permission_denied(format!(
            "the client certificate is not a sidecar certificate of this mesh: it needs exactly one URI SAN \
             spiffe://{trust_domain}/{}/<namespace>/<service-account>/<proxy-uuid> (found {uris:?}; hint: \
             bootstrap the sidecar again)",
            messages::PROXY_URI_SEGMENT
        )));
    };
    let cn = certs::peer_common_name(leaf.as_ref()).map_err(unreadable)?;
    if cn != proxy.common_name(trust_domain) {
        return Err(Status::permission_denied(format!(
            "the client certificate's common name {cn:?} does not match its sidecar URI {}",
            proxy.uri(trust_domain)
        )));
    }
    Ok(proxy)
}

pub struct AdsService<H> {
    handler: Arc<H>,
    trust_domain: String,
    /// Told about every stream opened, to end it if its client certificate's root is retired.
    client_roots: Option<Arc<crate::tls::ClientRoots>>,
}

impl<H: SessionHandler> AdsService<H> {
    pub fn new(handler: Arc<H>, trust_domain: impl Into<String>) -> Self {
        Self { handler, trust_domain: trust_domain.into(), client_roots: None }
    }

    /// The same, registering every stream with `roots` (see [`crate::tls::ClientRoots::evict_untrusted`]).
    pub fn with_client_roots(self, roots: Arc<crate::tls::ClientRoots>) -> Self {
        Self { client_roots: Some(roots), ..self }
    }

    /// The gRPC service: both kinds of ADS stream through [`AdsRouter`].
    pub fn into_server(self) -> AdsRouter<H> {
        let service = Arc::new(self);
        let generated = AggregatedDiscoveryServiceServer::from_arc(service.clone())
            .max_decoding_message_size(crate::limits::MAX_REQUEST_BYTES);
        AdsRouter { service, generated }
    }

    /// Identifies the proxy and hands its stream to the session handler; the responses the session sends
    /// are the response stream.
    async fn open<Req, Resp>(
        &self,
        request: Request<Streaming<Req>>,
        stream: impl FnOnce(RequestStream<Req>, mpsc::Sender<Result<Resp, Status>>) -> AdsStream,
    ) -> Result<Response<ReceiverStream<Result<Resp, Status>>>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let proxy = identify(&request, &self.trust_domain)?;
        let peer = request.remote_addr();
        let chain = request.peer_certs();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        if let (Some(roots), Some(chain)) = (&self.client_roots, chain) {
            let (closed, end) = (tx.clone(), tx.clone());
            roots.track(crate::tls::LiveStream {
                chain,
                closed: Box::new(move || closed.is_closed()),
                end: Box::new(move |status| {
                    let end = end.clone();
                    tokio::spawn(async move {
                        let _ = end.send(Err(status)).await;
                    });
                }),
            });
        }
        self.handler.open(proxy, peer, stream(Box::pin(request.into_inner()), tx)).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// A stream of [`AdsRouter`]: its requests decoded, the stream opened, its responses written by
    /// [`ResponseBody`]; a refusal is the gRPC status the proxy sees.
    async fn answer<Req, Resp, B>(
        &self,
        req: http::Request<B>,
        stream: impl FnOnce(RequestStream<Req>, mpsc::Sender<Result<Resp, Status>>) -> AdsStream,
    ) -> http::Response<tonic::body::Body>
    where
        Req: prost::Message + Default + Send + 'static,
        Resp: WireMessage + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let opened = match decode_requests::<Req, _>(req) {
            Ok(request) => self.open(request, stream).await,
            Err(status) => Err(status),
        };
        match opened {
            Ok(responses) => grpc_response(responses.into_inner().into_inner()),
            Err(status) => status.into_http(),
        }
    }

    async fn open_sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ReceiverStream<Result<SotwResponse, Status>>>, Status> {
        self.open(request, |requests, responses| AdsStream::Sotw { requests, responses }).await
    }

    async fn open_delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ReceiverStream<Result<DeltaDiscoveryResponse, Status>>>, Status> {
        self.open(request, |requests, responses| AdsStream::Delta { requests, responses }).await
    }
}

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service. State-of-the-world responses are sent with a codec of their own: each is a body
/// encoded once and shared by every proxy that receives the same resources, plus the proxy's nonce, so a
/// push to thousands of proxies does not copy and encode every resource once per proxy. Both kinds of
/// stream are served here ([`ResponseBody`], [`stream_buffers`]); the generated server is only reached by
/// other paths (it answers them as unimplemented).
pub struct AdsRouter<H> {
    service: Arc<AdsService<H>>,
    generated: AggregatedDiscoveryServiceServer<AdsService<H>>,
}

impl<H> Clone for AdsRouter<H> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone(), generated: self.generated.clone() }
    }
}

impl<H> tonic::server::NamedService for AdsRouter<H> {
    const NAME: &'static str =
        envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<H, B> tower_service::Service<http::Request<B>> for AdsRouter<H>
where
    H: SessionHandler,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                Ok(service.answer(req, |requests, responses| AdsStream::Sotw { requests, responses }).await)
            }),
            DELTA_PATH => Box::pin(async move {
                Ok(service.answer(req, |requests, responses| AdsStream::Delta { requests, responses }).await)
            }),
            _ => self.generated.call(req),
        }
    }
}

/// Decode buffers of an ADS stream: tonic's default keeps 8 KiB per stream for as long as it lives; with
/// thousands of mostly idle streams, a buffer that starts small and grows to what a request needs saves
/// that memory on every sidecar.
fn stream_buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(256, 32 * 1024)
}

/// A stream's requests, decoded with [`stream_buffers`] (uncompressed only).
fn decode_requests<M, B>(req: http::Request<B>) -> Result<Request<Streaming<M>>, Status>
where
    M: prost::Message + Default + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    if req.headers().get("grpc-encoding").is_some_and(|e| e != "identity") {
        return Err(Status::unimplemented("compressed requests are not supported"));
    }
    let decoder = tonic_prost::ProstCodec::<M, M>::raw_decoder(stream_buffers());
    Ok(Request::from_http(
        req.map(|body| Streaming::new_request(decoder, body, None, Some(crate::limits::MAX_REQUEST_BYTES))),
    ))
}

/// A response that writes its own wire form.
trait WireMessage {
    fn wire_len(&self) -> usize;
    fn write_to(&self, buf: &mut Vec<u8>);
}

impl WireMessage for SotwResponse {
    fn wire_len(&self) -> usize {
        self.encoded_len()
    }
    fn write_to(&self, buf: &mut Vec<u8>) {
        self.encode_to(buf);
    }
}

impl WireMessage for DeltaDiscoveryResponse {
    fn wire_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }
    fn write_to(&self, buf: &mut Vec<u8>) {
        prost::Message::encode_raw(self, buf);
    }
}

/// The gRPC response of an ADS stream: headers now, then [`ResponseBody`].
fn grpc_response<M: WireMessage + Send + 'static>(
    responses: mpsc::Receiver<Result<M, Status>>,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(ResponseBody { responses, ended: false }));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// The response body of an ADS stream, written without tonic's encoder: each response is framed for gRPC
/// (flag, length, message; for SotW the shared body and this proxy's nonce) into a buffer of its own that
/// is freed once written, so an idle stream keeps no encode buffer (with tonic's, each kept the size of
/// its last response); the status goes in the trailers at the end.
struct ResponseBody<M> {
    responses: mpsc::Receiver<Result<M, Status>>,
    ended: bool,
}

impl<M: WireMessage + Send + 'static> http_body::Body for ResponseBody<M> {
    type Data = prost::bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.responses.poll_recv(cx)) {
            Some(Ok(r)) => return Poll::Ready(Some(grpc_message(&r).map(http_body::Frame::data))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        status.add_header(&mut trailers)?;
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// A response as one gRPC message: no compression, its length, its bytes.
fn grpc_message(r: &impl WireMessage) -> Result<prost::bytes::Bytes, Status> {
    let len = r.wire_len();
    let prefix = u32::try_from(len).map_err(|_| Status::internal(format!("response of {len} bytes is too large")))?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    r.write_to(&mut buf);
    Ok(buf.into())
}

#[tonic::async_trait]
impl<H: SessionHandler> AggregatedDiscoveryService for AdsService<H> {
    type StreamAggregatedResourcesStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    /// Not reached through [`AdsRouter`] (its own codec serves this method); kept whole for any other
    /// mounting of the generated server.
    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let stream = self.open_sotw(request).await?.into_inner();
        Ok(Response::new(Box::pin(stream.map(|r| r.map(|r| r.to_proto())))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.open_delta(request).await
    }
}

/// TLS material of the ADS server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Its certificate: replaced when renewed; each handshake takes the newest.
    pub certificate: Arc<crate::tls::ServerCertificate>,
    /// Roots that sign sidecars' client certificates: replaced during a root rotation.
    pub client_roots: Arc<crate::tls::ClientRoots>,
    /// The mesh's trust domain: a client certificate must name a sidecar of it.
    pub trust_domain: String,
}

/// Bounds on what a peer of the ADS port may hold. Every peer is hostile until bounded: an idle socket, a
/// half-done handshake or a connection with thousands of streams must not take the server down.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections held at once; past it the server stops accepting (the kernel's backlog holds the rest)
    /// instead of running out of file descriptors.
    pub max_connections: usize,
    /// A TLS handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
    /// HTTP/2 streams per connection (Envoy opens one ADS stream).
    pub max_streams_per_connection: u32,
    /// After shutdown, how long connected sidecars get to go before the server stops waiting for them.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 8,
            drain: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    #[error("ADS server on {addr} failed: {source}")]
    Serve { addr: SocketAddr, source: tonic::transport::Error },
}

/// Listen backlog: a storm of sidecars (a controller restart) connects thousands at once; tokio's default of
/// 128 drops them into SYN retries of 1 s and 3 s. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with a backlog sized for connection storms.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// An accepted connection; holds one of the server's connection permits until it closes.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.io.peer_addr().ok()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections while a permit is free. Running out of descriptors (EMFILE/ENFILE) backs off
/// instead of spinning, and says so (at most once every ten seconds).
pub fn incoming(listener: TcpListener, max_connections: usize) -> impl Stream<Item = std::io::Result<Conn>> {
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    let state = (listener, permits, None::<Instant>, None::<Instant>);
    futures::stream::unfold(state, move |(listener, permits, mut fd_warned, mut full_warned)| async move {
        loop {
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if full_warned.is_none_or(|t| t.elapsed() > WARN_EVERY) {
                        full_warned = Some(Instant::now());
                        tracing::warn!(
                            limit = max_connections,
                            "ADS connection limit reached; new sidecars wait in the listen backlog"
                        );
                    }
                    match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return None,
                    }
                }
            };
            match listener.accept().await {
                Ok((io, _)) => {
                    // Without it each new stream loses ~40 ms to Nagle and delayed ACKs.
                    let _ = io.set_nodelay(true);
                    return Some((Ok(Conn { io, _permit: permit }), (listener, permits, fd_warned, full_warned)));
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    if fd_warned.is_none_or(|t| t.elapsed() > WARN_EVERY) {
                        fd_warned = Some(Instant::now());
                        tracing::error!(
                            error = %e,
                            open = max_connections.saturating_sub(permits.available_permits() + 1),
                            "out of file descriptors: sidecars are being refused (hint: raise the open-file limit, \
                             `ulimit -n`; each sidecar holds one)"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Per-connection errors (a peer that reset before accept) concern that peer only.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    })
}

const WARN_EVERY: Duration = Duration::from_secs(10);

fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (24): this process; ENFILE (23): the whole system.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Serves ADS over mTLS (client certificate required) on an already-bound listener until `shutdown`;
/// then waits at most `limits.drain` for connections to close. Every failed TLS handshake is logged
/// (rate-limited) and handed to `handshake_failed`.
pub async fn serve<H: SessionHandler>(
    listener: TcpListener,
    tls: ServerTls,
    handler: Arc<H>,
    limits: ServeLimits,
    handshake_failed: crate::tls::FailureSink,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let trust_domain = tls.trust_domain.clone();
    let tls_config = crate::tls::server_config(&tls)?;
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let connections = crate::tls::incoming(
        incoming(listener, limits.max_connections),
        tls_config,
        limits.handshake_timeout,
        handshake_failed,
    );
    let server = Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .add_service(AdsService::new(handler, trust_domain).with_client_roots(tls.client_roots.clone()).into_server())
        .serve_with_incoming_shutdown(connections, shutdown);
    let drained = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(limits.drain).await;
    };
    tokio::select! {
        result = server => result.map_err(|source| ServeError::Serve { addr, source }),
        () = drained => {
            tracing::warn!(drain_s = limits.drain.as_secs(), "connections still open after the drain period; closing them");
            Ok(())
        }
    }
}
