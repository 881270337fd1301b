//! The Envoy-facing side: per-proxy snapshots and the ADS server that streams them.
//!
//! Data flow: the snapshot actor calls [`builder::build`] with a proxy's `ProxyView` and certificates and
//! gets a consistent [`snapshot::ProxySnapshot`] (every resource encoded once, versioned by content). A
//! session actor per connected proxy feeds that snapshot and the proxy's requests into the pure state
//! machines [`sotw::SotwSession`] or [`delta::DeltaSession`], which decide what to send. [`server`] is the
//! tonic ADS service: it authenticates the proxy by its client certificate and hands the stream over
//! through [`server::SessionHandler`]. No actor framework and no Kubernetes client here.

pub mod builder;
pub mod delta;
pub mod server;
pub mod snapshot;
pub mod sotw;

pub use builder::{CertInput, build};
pub use server::{AdsStream, ServerTls, SessionHandler, serve};
pub use snapshot::{ProxySnapshot, Resource, ResourceType, SnapshotError};
