//! Per-proxy config status, kept by each session: for every xDS type the version and nonce last sent,
//! the version last ACKed and the last NACK with Envoy's error; whether the proxy holds everything sent to
//! it, and since when it does not. The HTTP endpoint serves the board as JSON (`/status/proxies`), which
//! `osm proxy status` reads; the same types deserialize there.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

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

/// The type labels a status is kept for, by index.
const TYPES: [&str; 6] = ["CDS", "EDS", "LDS", "RDS", "SDS", "other"];

/// A version as kept: the 16 hex digits the controller writes fit a `u64` (no allocation per proxy and
/// type; 10,000 proxies hold this for every type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Version {
    #[default]
    None,
    Hex(u64),
    Text(Box<str>),
}

impl Version {
    fn of(v: &str) -> Self {
        match v.len() {
            0 => Self::None,
            16 => u64::from_str_radix(v, 16).map_or_else(|_| Self::Text(v.into()), Self::Hex),
            _ => Self::Text(v.into()),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Hex(h) => format!("{h:016x}"),
            Self::Text(t) => t.to_string(),
        }
    }
}

/// One type's state, as kept.
#[derive(Debug, Clone, Default)]
struct Slot {
    used: bool,
    sent: Version,
    acked: Version,
    /// A hash of the last response's nonce: an answer is matched against it.
    nonce: u64,
    /// The last response sent is answered (ACK or NACK).
    answered: bool,
    nack: Option<Box<str>>,
}

fn nonce_hash(nonce: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    nonce.hash(&mut h);
    h.finish()
}

fn slot_of(ty: &str) -> usize {
    TYPES.iter().position(|t| *t == ty).unwrap_or(TYPES.len() - 1)
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
}

impl StatusSummary {
    pub fn of(status: &MeshStatus) -> Self {
        let count = |s: SyncState| status.proxies.iter().filter(|p| p.state == s).count();
        Self {
            building: status.building,
            proxies: status.proxies.len(),
            synced: count(SyncState::Synced),
            stale: count(SyncState::Stale),
            nack: count(SyncState::Nack),
        }
    }

    /// Nothing left to build and every proxy synced.
    pub fn live(&self) -> bool {
        !self.building && self.synced == self.proxies
    }
}

struct Inner {
    types: [Slot; TYPES.len()],
    /// Since when something sent is unanswered or refused.
    behind_since: Option<Instant>,
    /// When the earliest mesh change whose configuration the proxy has not ACKed yet was made.
    change: Option<Instant>,
    /// When the proxy last held everything sent to it.
    synced_at: Option<Instant>,
}

/// The status of one connected proxy, written by its session only.
pub struct ProxyStatus {
    uuid: String,
    identity: String,
    api: &'static str,
    connected: Instant,
    inner: Mutex<Inner>,
}

impl ProxyStatus {
    /// A response of type `ty` went out.
    pub fn sent(&self, ty: &'static str, nonce: &str, version: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let t = &mut inner.types[slot_of(ty)];
        t.used = true;
        t.sent = Version::of(version);
        t.nonce = nonce_hash(nonce);
        t.answered = false;
        inner.behind_since.get_or_insert_with(Instant::now);
    }

    /// What was just sent carries a mesh change made at `at` (the earliest one counts until ACKed).
    pub fn change_sent(&self, at: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.change.get_or_insert(at);
        }
    }

    /// The proxy answered a response of type `ty` (`nonce`), refusing it with `error` or not. Answers to
    /// older responses, and requests that answer nothing, change nothing. When this answer leaves the
    /// proxy holding everything sent to it, returns how long ago the change it brought was made.
    pub fn answered(&self, ty: &'static str, nonce: &str, error: Option<&str>) -> Option<std::time::Duration> {
        let mut inner = self.inner.lock().ok()?;
        let t = &mut inner.types[slot_of(ty)];
        if nonce.is_empty() || !t.used || t.nonce != nonce_hash(nonce) || t.answered {
            return None;
        }
        t.answered = true;
        match error {
            Some(e) => t.nack = Some(xds::limits::peer_str(e.trim_end()).to_string().into()),
            None => {
                t.acked = t.sent.clone();
                t.nack = None;
            }
        }
        if inner.types.iter().filter(|t| t.used).all(|t| t.answered && t.nack.is_none()) {
            inner.behind_since = None;
            inner.synced_at = Some(Instant::now());
            return inner.change.take().map(|at| at.elapsed());
        }
        None
    }

    pub fn view(&self) -> Option<ProxyStatusView> {
        let inner = self.inner.lock().ok()?;
        let state = if inner.types.iter().any(|t| t.nack.is_some()) {
            SyncState::Nack
        } else if inner.behind_since.is_some() {
            SyncState::Stale
        } else {
            SyncState::Synced
        };
        Some(ProxyStatusView {
            uuid: self.uuid.clone(),
            pod: None,
            identity: self.identity.clone(),
            api: self.api.to_owned(),
            state,
            behind_s: inner.behind_since.map_or(0.0, |s| s.elapsed().as_secs_f64()),
            synced_s_ago: match inner.behind_since {
                None => Some(0.0),
                Some(_) => inner.synced_at.map(|t| t.elapsed().as_secs_f64()),
            },
            connected_s: self.connected.elapsed().as_secs_f64(),
            types: TYPES
                .iter()
                .zip(&inner.types)
                .filter(|(_, t)| t.used)
                .map(|(label, t)| {
                    let status = TypeStatus {
                        sent: t.sent.text(),
                        acked: t.acked.text(),
                        nack: t.nack.as_deref().map(str::to_owned),
                    };
                    ((*label).to_owned(), status)
                })
                .collect(),
        })
    }
}

/// Every connected proxy's status.
#[derive(Default)]
pub struct StatusBoard {
    /// Raised by the snapshot actor while it has proxies to build.
    pub building: Arc<std::sync::atomic::AtomicBool>,
    /// By UUID; a proxy may have two sessions for a moment (a reconnect racing the old one): the newest
    /// is shown.
    proxies: Mutex<HashMap<String, Arc<ProxyStatus>>>,
}

impl StatusBoard {
    /// A session starts: its status, on the board until [`StatusBoard::leave`].
    pub fn join(&self, uuid: &str, identity: &str, api: &'static str) -> Arc<ProxyStatus> {
        let status = Arc::new(ProxyStatus {
            uuid: uuid.to_owned(),
            identity: identity.to_owned(),
            api,
            connected: Instant::now(),
            inner: Mutex::new(Inner {
                types: Default::default(),
                behind_since: Some(Instant::now()),
                change: None,
                synced_at: None,
            }),
        });
        if let Ok(mut p) = self.proxies.lock() {
            p.insert(uuid.to_owned(), status.clone());
        }
        status
    }

    /// A session ended (a newer session of the same proxy stays).
    pub fn leave(&self, status: &Arc<ProxyStatus>) {
        if let Ok(mut p) = self.proxies.lock()
            && p.get(&status.uuid).is_some_and(|s| Arc::ptr_eq(s, status))
        {
            p.remove(&status.uuid);
        }
    }

    /// How many connected proxies do not hold everything sent to them (stale or NACK).
    pub fn behind(&self) -> usize {
        let statuses: Vec<Arc<ProxyStatus>> =
            self.proxies.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        statuses.iter().filter(|s| s.inner.lock().is_ok_and(|i| i.behind_since.is_some())).count()
    }

    /// One proxy's status, if it is connected.
    pub fn proxy(&self, uuid: &str) -> Option<ProxyStatusView> {
        let status = self.proxies.lock().ok()?.get(uuid).cloned()?;
        status.view()
    }

    pub fn view(&self) -> MeshStatus {
        let statuses: Vec<Arc<ProxyStatus>> =
            self.proxies.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        let mut proxies: Vec<ProxyStatusView> = statuses.iter().filter_map(|s| s.view()).collect();
        proxies.sort_by(|a, b| a.identity.cmp(&b.identity).then_with(|| a.uuid.cmp(&b.uuid)));
        let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        MeshStatus { at, building: self.building.load(std::sync::atomic::Ordering::Relaxed), proxies }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_is_stale_until_it_acks_everything_and_a_nack_shows_until_a_later_ack() {
        let board = StatusBoard::default();
        let s = board.join("u1", "sa.ns", "sotw");
        assert_eq!(s.view().unwrap().state, SyncState::Stale, "nothing received yet");
        s.sent("CDS", "n1", "06e4bbe9f2b4f66e");
        s.sent("LDS", "n2", "v1");
        s.answered("CDS", "n1", None);
        assert_eq!(s.view().unwrap().state, SyncState::Stale, "LDS unanswered");
        s.answered("LDS", "n2", None);
        let v = s.view().unwrap();
        assert_eq!((v.state, v.behind_s), (SyncState::Synced, 0.0));
        assert_eq!(v.types["CDS"].acked, "06e4bbe9f2b4f66e", "versions are kept as they were sent");
        // Envoy refuses the next listeners: it keeps v1 and says why.
        s.sent("LDS", "n3", "v2");
        s.answered("LDS", "n3", Some("cannot bind 0.0.0.0:15010: Address already in use"));
        let v = s.view().unwrap();
        assert_eq!(v.state, SyncState::Nack);
        assert_eq!((v.types["LDS"].acked.as_str(), v.types["LDS"].sent.as_str()), ("v1", "v2"));
        assert!(v.types["LDS"].nack.as_deref().unwrap().contains("Address already in use"));
        // An answer to an older response changes nothing; an ACK of a newer one clears the NACK.
        s.answered("LDS", "n2", None);
        assert_eq!(s.view().unwrap().state, SyncState::Nack);
        s.sent("LDS", "n4", "v3");
        s.change_sent(Instant::now());
        assert!(s.answered("LDS", "n4", None).is_some(), "the change is ACKed: how long it took");
        assert_eq!(s.view().unwrap().state, SyncState::Synced);
        s.sent("CDS", "n5", "v2");
        assert_eq!(s.answered("CDS", "n5", None), None, "no change to time");
        // A reconnect's newer session stays when the old one leaves.
        let newer = board.join("u1", "sa.ns", "delta");
        board.leave(&s);
        assert_eq!(board.view().proxies.len(), 1);
        board.leave(&newer);
        assert!(board.view().proxies.is_empty());
    }
}
