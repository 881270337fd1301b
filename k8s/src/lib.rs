//! The edge to Kubernetes-shaped input: real Kubernetes types (k8s-openapi) converted to the mesh model.
//!
//! Data flow: [`yaml_dir::YamlDir`] (the embedded default: a directory of manifests on disk) produces
//! `SourceEvent`s for the catalog actor; [`convert`] is the one place Kubernetes objects become
//! `messages` model values, shared by the directory and by [`watch`] (the kube-rs watchers of a cluster,
//! the Kubernetes source).

pub mod ca_secret;
pub mod client;
pub mod convert;
pub mod crds;
pub mod duties;
pub mod inject;
pub mod install;
pub mod kinds;
pub mod namespaces;
pub mod watch;
pub mod webhook;
pub mod yaml_dir;

pub use yaml_dir::{FileError, Scan, YamlDir};
