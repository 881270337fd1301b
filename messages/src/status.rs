//! The documents the controller's HTTP endpoint serves and the `osm` CLI reads: per-proxy config status
//! (`/status/proxies`, `/status/changes`), the mesh summary (`/status/mesh`) and the connectivity report
//! (`/status/connectivity`). Plain serde types, shared by the server (`actors`) and the CLI.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::path::PathStep;

/// Where a proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// Every response sent was ACKed.
    Synced,
    /// A response is not answered yet.
    Stale,
    /// The proxy refused (NACKed) the latest response of a type; it runs on its last good config.
    Nack,
}

/// One xDS type of one proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStatus {
    /// Version of the last response sent.
    pub sent: String,
    /// Version the proxy last ACKed.
    pub acked: String,
    /// The proxy's error for the last response, when it refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
}

/// A time in Unix seconds (what the status endpoints serve).
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

/// A mesh change, numbered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub generation: u64,
    /// Unix seconds at which the controller took it.
    pub at: f64,
    /// What changed, e.g. `Service bookstore/bookstore applied`.
    pub what: String,
}

/// A proxy's status, as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatusView {
    pub uuid: String,
    /// The pod (`<namespace>/<name>`) the catalog knows by this UUID, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// `<service account>.<namespace>`.
    pub identity: String,
    /// `sotw` or `delta`.
    pub api: String,
    pub state: SyncState,
    /// The latest mesh generation the proxy holds (every change up to it is in the config it ACKed).
    #[serde(default)]
    pub generation: u64,
    /// Seconds since the proxy stopped holding everything sent to it (0 when synced).
    pub behind_s: f64,
    /// Seconds since it last held everything sent to it (`None`: not yet since it connected).
    #[serde(default)]
    pub synced_s_ago: Option<f64>,
    pub connected_s: f64,
    /// By type label (`CDS`, `EDS`, `LDS`, `RDS`, `SDS`).
    pub types: BTreeMap<String, TypeStatus>,
}

/// What `/status/proxies` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Unix seconds at which this was taken.
    pub at: f64,
    /// Proxies are being built or wait to be: a change is on its way to some proxies.
    #[serde(default)]
    pub building: bool,
    /// The latest mesh change's generation.
    #[serde(default)]
    pub generation: u64,
    /// That change, when it is still remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// When this controller started (Unix milliseconds): its generations are numbered from then, so a
    /// restart (another value) starts them again at 0.
    #[serde(default)]
    pub started_ms: u64,
    pub proxies: Vec<ProxyStatusView>,
}

/// The counts of a [`MeshStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSummary {
    pub building: bool,
    pub proxies: usize,
    pub synced: usize,
    pub stale: usize,
    pub nack: usize,
    /// The latest mesh change's generation.
    #[serde(default)]
    pub generation: u64,
    /// The generation `holding` counts for (the latest unless asked for another).
    #[serde(default)]
    pub of_generation: u64,
    /// Proxies that hold `of_generation`.
    #[serde(default)]
    pub holding: usize,
    /// When the controller started (Unix milliseconds; see [`MeshStatus::started_ms`]).
    #[serde(default)]
    pub started_ms: u64,
}

impl StatusSummary {
    /// The counts, with the proxies holding generation `of` (`None`: the latest).
    pub fn of(status: &MeshStatus, of: Option<u64>) -> Self {
        let count = |s: SyncState| status.proxies.iter().filter(|p| p.state == s).count();
        let of_generation = of.unwrap_or(status.generation);
        Self {
            building: status.building,
            proxies: status.proxies.len(),
            synced: count(SyncState::Synced),
            stale: count(SyncState::Stale),
            nack: count(SyncState::Nack),
            generation: status.generation,
            of_generation,
            holding: status.proxies.iter().filter(|p| p.generation >= of_generation).count(),
            started_ms: status.started_ms,
        }
    }

    /// Every connected proxy holds `of_generation`.
    pub fn held(&self) -> bool {
        self.holding == self.proxies
    }
}

/// A recent mesh change and the proxies that hold it (`/status/changes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeStatus {
    #[serde(flatten)]
    pub change: Change,
    /// Connected proxies.
    pub proxies: usize,
    /// Those that hold this change (ACKed a config with it, or a later one).
    pub holding: usize,
    /// Those that do not (pod, or proxy UUID when the catalog does not know the pod), at most
    /// [`ChangeStatus::LISTED`].
    pub not_holding: Vec<String>,
}

impl ChangeStatus {
    /// How many proxies not holding a change are named.
    pub const LISTED: usize = 100;
}

/// What `/status/connectivity` answers (`osm verify connectivity` reads it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Connectivity {
    pub from: String,
    pub to: String,
    pub ok: bool,
    /// Every step: the path's, then the sidecars' and certificates'.
    pub steps: Vec<PathStep>,
    /// The path's own steps (pods, Service, endpoints, split, policy, routes): the same at every replica.
    #[serde(default)]
    pub path: Vec<PathStep>,
    /// The sidecars of both ends as this controller sees them; with several controller replicas each
    /// serves some sidecars, and `osm` merges what they see ([`Connectivity::merge`]).
    #[serde(default)]
    pub sidecars: Vec<SidecarSeen>,
    /// The service certificates of both ends' identities, as this controller issued them.
    #[serde(default)]
    pub certificates: Vec<CertSeen>,
}

/// A sidecar of a checked path, as one controller sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SidecarSeen {
    pub uuid: String,
    pub identity: String,
    /// The source's (else a destination's).
    pub source: bool,
    /// `None`: not connected to this controller.
    pub status: Option<ProxyStatusView>,
}

/// A service certificate, as one controller issued it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CertSeen {
    pub identity: String,
    /// Serial and expiry (Unix seconds), when this controller issued one.
    pub issued: Option<(String, f64)>,
    /// The trusted root that signed it (its common name); `None`: no root sidecars trust did.
    #[serde(default)]
    pub signed_by: Option<String>,
}

impl Connectivity {
    /// The report of the path's own steps and what was seen of its sidecars and certificates, at `now`
    /// (Unix seconds).
    pub fn new(
        (from, to): (String, String),
        path: Vec<PathStep>,
        sidecars: Vec<SidecarSeen>,
        certificates: Vec<CertSeen>,
        now: f64,
    ) -> Self {
        let mut steps = path.clone();
        if let Some(s) = sidecars.iter().find(|s| s.source) {
            let (ok, detail) = sidecar_detail(s);
            steps.push(PathStep { step: "source sidecar".to_owned(), ok, detail });
        }
        // One step for all destinations (a Service may have hundreds of pods): the first few problems.
        let destinations: Vec<(bool, String)> = sidecars.iter().filter(|s| !s.source).map(sidecar_detail).collect();
        if !destinations.is_empty() {
            const SHOWN: usize = 5;
            let bad: Vec<&String> = destinations.iter().filter(|(ok, _)| !ok).map(|(_, d)| d).collect();
            let detail = if bad.is_empty() {
                match destinations.as_slice() {
                    [(_, only)] => only.clone(),
                    all => format!("all {} are connected and synced", all.len()),
                }
            } else {
                let more = bad.len().saturating_sub(SHOWN);
                let shown: Vec<&str> = bad.iter().take(SHOWN).map(|d| d.as_str()).collect();
                let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                format!("{} of {}: {}{tail}", bad.len(), destinations.len(), shown.join("; "))
            };
            steps.push(PathStep { step: "destination sidecars".to_owned(), ok: bad.is_empty(), detail });
        }
        for c in &certificates {
            let id = &c.identity;
            let (ok, detail) = match &c.issued {
                Some((serial, _)) if c.signed_by.is_none() => (
                    false,
                    format!(
                        "{id}: serial {serial} is signed by no root the sidecars trust (a root retired before it was \
                         re-issued? see osm mesh list)"
                    ),
                ),
                Some((serial, until)) if *until > now => {
                    let root = c.signed_by.as_deref().unwrap_or_default();
                    (
                        true,
                        format!(
                            "{id}: serial {serial}, signed by trusted root {root:?}, valid for {:.0}s more",
                            until - now
                        ),
                    )
                }
                Some((serial, _)) => (false, format!("{id}: serial {serial} has expired")),
                None => (false, format!("{id}: no service certificate issued (its sidecar never got a config)")),
            };
            steps.push(PathStep { step: "certificate".to_owned(), ok, detail });
        }
        Self { from, to, ok: steps.iter().all(|s| s.ok), steps, path, sidecars, certificates }
    }

    /// One report of the answers of several controller replicas: each sidecar as the replica it is
    /// connected to sees it, and each identity's certificate as the replicas serving a sidecar of that
    /// identity hold it (the worst of them: every such sidecar must have a good one; with none serving,
    /// the best any replica has).
    pub fn merge(reports: Vec<Connectivity>, now: f64) -> Option<Connectivity> {
        let first = reports.first()?.clone();
        let mut sidecars: Vec<SidecarSeen> = Vec::new();
        // Per identity: the certificates of replicas serving it, and of the others.
        let mut certs: std::collections::BTreeMap<String, (Vec<CertSeen>, Vec<CertSeen>)> = Default::default();
        for r in reports {
            let served: std::collections::BTreeSet<&str> =
                r.sidecars.iter().filter(|s| s.status.is_some()).map(|s| s.identity.as_str()).collect();
            for c in &r.certificates {
                let (serving, others) = certs.entry(c.identity.clone()).or_default();
                if served.contains(c.identity.as_str()) { serving } else { others }.push(c.clone());
            }
            for s in r.sidecars {
                match sidecars.iter_mut().find(|k| k.uuid == s.uuid && k.source == s.source) {
                    Some(known) => {
                        let synced = |v: &SidecarSeen| v.status.as_ref().map(|p| p.state == SyncState::Synced);
                        if synced(&s) > synced(known) {
                            *known = s;
                        }
                    }
                    None => sidecars.push(s),
                }
            }
        }
        // Good (issued, chained) before bad, then by expiry.
        let rank = |c: &CertSeen| (c.issued.is_some() && c.signed_by.is_some(), c.issued.as_ref().map(|(_, u)| *u));
        let certificates = certs
            .into_values()
            .filter_map(|(serving, others)| match serving.is_empty() {
                false => serving
                    .into_iter()
                    .min_by(|a, b| rank(a).partial_cmp(&rank(b)).unwrap_or(std::cmp::Ordering::Equal)),
                true => {
                    others.into_iter().max_by(|a, b| rank(a).partial_cmp(&rank(b)).unwrap_or(std::cmp::Ordering::Equal))
                }
            })
            .collect();
        Some(Self::new((first.from, first.to), first.path, sidecars, certificates, now))
    }
}

/// Whether a sidecar is connected and in sync, in a line.
fn sidecar_detail(s: &SidecarSeen) -> (bool, String) {
    let (identity, uuid) = (&s.identity, &s.uuid);
    match &s.status {
        None => (false, format!("{identity} proxy {uuid} is not connected to this controller")),
        Some(p) => match p.state {
            SyncState::Synced => (true, format!("{identity} proxy {uuid} is connected and synced")),
            SyncState::Stale => {
                (false, format!("{identity} proxy {uuid} has not ACKed its latest config for {:.0}s", p.behind_s))
            }
            SyncState::Nack => {
                let why: Vec<String> =
                    p.types.iter().filter_map(|(t, v)| v.nack.as_ref().map(|e| format!("{t}: {e}"))).collect();
                (false, format!("{identity} proxy {uuid} refused its config: {}", why.join("; ")))
            }
        },
    }
}

/// What `/status/mesh` answers (`osm mesh list` reads it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MeshSummary {
    pub version: String,
    pub trust_domain: String,
    /// Where the mesh is described: the mesh directory, the cluster, or both.
    pub sources: Vec<String>,
    pub synced: bool,
    pub mode: String,
    pub egress: bool,
    pub tracing: Option<String>,
    pub mesh_config: Option<String>,
    pub services: usize,
    pub pods: usize,
    pub proxies_connected: usize,
    pub proxies_synced: usize,
    pub policy_errors: usize,
    pub signing_root: String,
}

/// What `/status/policy` answers (`osm policy get` reads it): every policy object that shapes one pod's
/// sidecar, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodPolicies {
    pub pod: String,
    pub identity: String,
    /// `permissive` or `smi`.
    pub mode: String,
    /// The Services the pod backs.
    pub backs: Vec<String>,
    pub applied: Vec<AppliedPolicy>,
}

/// One policy object as it applies to a pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedPolicy {
    /// The object's kind, e.g. `TrafficTarget`.
    pub kind: String,
    /// `<namespace>/<name>`.
    pub object: String,
    /// `inbound` (what the pod accepts), `outbound` (what it calls) or `ingress`.
    pub direction: String,
    /// What it does here, in a sentence.
    pub effect: String,
    /// Why (part of) it is not in force: its policy errors, or a switch that is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}
