//! The Envoy-facing side: per-proxy snapshots and the ADS server that streams them.
//!
//! Data flow: the snapshot actor calls [`builder::build`] with a proxy's `ProxyView` and certificates and
//! gets a consistent [`snapshot::ProxySnapshot`] (every resource encoded once, versioned by content). A
//! session actor per connected proxy feeds that snapshot and the proxy's requests into the pure state
//! machines [`sotw::SotwSession`] or [`delta::DeltaSession`], which decide what to send. [`server`] is the
//! tonic ADS service: it authenticates the proxy by its client certificate and hands the stream over
//! through [`server::SessionHandler`]. No actor framework and no Kubernetes client here.

pub mod builder;
pub mod consistency;
pub mod delta;
pub mod limits;
pub mod rbac;
pub mod server;
pub mod snapshot;
pub mod sotw;
pub mod tls;

pub use builder::{BuildCache, CertInput, build, build_with};
pub use server::{AdsStream, ServeLimits, ServerTls, SessionHandler, serve};
pub use snapshot::{ProxySnapshot, Resource, ResourceType, SnapshotError};

use std::sync::Arc;

/// The two ADS flavours behind one interface, so a session driver serves either.
pub trait Protocol: Unpin + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// `"sotw"` or `"delta"`, for logs and metrics.
    const NAME: &'static str;
    fn on_request(&mut self, req: &Self::Request) -> sotw::Outcome<Self::Response>;
    fn on_snapshot(&mut self, snap: Arc<ProxySnapshot>) -> Vec<Self::Response>;
    fn request_type_url(req: &Self::Request) -> &str;
    fn response_type_url(resp: &Self::Response) -> &str;
    /// The response's nonce and version (delta: the system version), for a proxy's sync status.
    fn response_nonce_version(resp: &Self::Response) -> (&str, &str);
    /// What a request answers: the nonce of the response it answers (empty: none) and the error detail
    /// of a NACK.
    fn request_answer(req: &Self::Request) -> (&str, Option<&str>);
}

/// `CDS`, `EDS`, ... for a type URL this control plane serves; `other` for the rest (metric labels).
pub fn type_label(type_url: &str) -> &'static str {
    ResourceType::from_type_url(type_url).map_or("other", ResourceType::short)
}

impl Protocol for sotw::SotwSession {
    type Request = envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    type Response = sotw::SotwResponse;
    const NAME: &'static str = "sotw";
    fn on_request(&mut self, req: &Self::Request) -> sotw::Outcome<Self::Response> {
        sotw::SotwSession::on_request(self, req)
    }
    fn on_snapshot(&mut self, snap: Arc<ProxySnapshot>) -> Vec<Self::Response> {
        sotw::SotwSession::on_snapshot(self, snap)
    }
    fn request_type_url(req: &Self::Request) -> &str {
        &req.type_url
    }
    fn response_type_url(resp: &Self::Response) -> &str {
        resp.type_url()
    }
    fn response_nonce_version(resp: &Self::Response) -> (&str, &str) {
        (resp.nonce(), resp.version())
    }
    fn request_answer(req: &Self::Request) -> (&str, Option<&str>) {
        (&req.response_nonce, req.error_detail.as_ref().map(|e| e.message.as_str()))
    }
}

impl Protocol for delta::DeltaSession {
    type Request = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    type Response = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    fn on_request(&mut self, req: &Self::Request) -> sotw::Outcome<Self::Response> {
        delta::DeltaSession::on_request(self, req)
    }
    fn on_snapshot(&mut self, snap: Arc<ProxySnapshot>) -> Vec<Self::Response> {
        delta::DeltaSession::on_snapshot(self, snap)
    }
    fn request_type_url(req: &Self::Request) -> &str {
        &req.type_url
    }
    fn response_type_url(resp: &Self::Response) -> &str {
        &resp.type_url
    }
    fn response_nonce_version(resp: &Self::Response) -> (&str, &str) {
        (&resp.nonce, &resp.system_version_info)
    }
    fn request_answer(req: &Self::Request) -> (&str, Option<&str>) {
        (&req.response_nonce, req.error_detail.as_ref().map(|e| e.message.as_str()))
    }
}
