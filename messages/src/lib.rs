//! The shared vocabulary of the control plane: the mesh model and the events that move it.
//!
//! Data flow: sources (`k8s`: the YAML directory, later kube watchers) turn Kubernetes objects into
//! [`kinds::MeshObject`]s and emit [`events::SourceEvent`]s; the catalog ([`catalog::MeshCatalog`], owned by
//! the catalog actor) indexes them and answers "what does this proxy see" as a [`catalog::ProxyView`]; the
//! `xds` crate turns a view into Envoy resources. This crate does no I/O and knows no actor framework.

pub mod catalog;
pub mod errcode;
pub mod events;
pub mod kinds;
pub mod model;
pub mod path;
pub mod policy;
pub mod ratelog;
pub mod status;

pub use catalog::{Dirty, IngressPort, MeshCatalog, ProxyView, ResolvedPort, ServiceView, VerifyError};
pub use events::{DEFAULT_SOURCE, Reset, SourceEvent};
pub use kinds::{Keyed, Kind, MeshObject, Model, Role};
pub use model::*;
pub use path::{PathCheck, PathStep};
pub use policy::{HttpRule, InboundPolicy, Policy, PolicyError, TcpGrant};
