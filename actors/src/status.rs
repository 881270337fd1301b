//! Per-proxy config status, kept by each session: for every xDS type the version and nonce last sent,
//! the version last ACKed and the last NACK with Envoy's error; whether the proxy holds everything sent to
//! it, and since when it does not. The HTTP endpoint serves the board as JSON (`/status/proxies`), which
//! `osm proxy status` reads; the same types deserialize there.
//!
//! Every mesh change (a batch of objects the catalog applied, a certificate renewal, a trust change) gets
//! a generation number from [`MeshProgress`]. A proxy *holds* generation `g` when the configuration it
//! ACKed reflects every change up to `g`: its session records the generation of each snapshot it sends
//! and ACKs, the snapshot actor records (in [`ProxyGenerations`]) the generation each proxy's latest build
//! was for, changed or not, and a proxy no change touched holds whatever every build has caught up with
//! (`settled`). So for every change the board knows which proxies hold it (`/status/changes`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use messages::status::{
    Change, ChangeStatus, MeshStatus, ProxyStatusView, StatusSummary, SyncState, TypeStatus, unix, unix_now,
};

/// The type labels a status is kept for, by index (the types the controller serves: it answers no other,
/// so there is nothing to follow for one).
const TYPES: [&str; 5] = ["CDS", "EDS", "LDS", "RDS", "SDS"];

/// A version as kept: the 16 hex digits the controller writes fit a `u64` (no allocation per proxy and
/// type; 10,000 proxies hold this for every type). Any other text is kept behind a thin pointer, so a
/// version takes 16 bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Version {
    #[default]
    None,
    Hex(u64),
    #[allow(clippy::redundant_allocation)] // a thin pointer to a rarely used text: half the size inline
    Text(Box<Box<str>>),
}

impl Version {
    fn of(v: &str) -> Self {
        match v.len() {
            0 => Self::None,
            16 => u64::from_str_radix(v, 16).map_or_else(|_| Self::Text(Box::new(v.into())), Self::Hex),
            _ => Self::Text(Box::new(v.into())),
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

/// One type's state, as kept (56 bytes: every connected proxy holds five).
#[derive(Debug, Clone, Default)]
struct Slot {
    used: bool,
    /// Responses sent and not answered yet. Envoy answers in order; a delta session does not wait for
    /// one answer before sending the next response, so several may be out at once.
    unanswered: u16,
    /// Responses sent so far (wrapping: only compared for equality with a NACK's).
    sends: u16,
    sent: Version,
    acked: Version,
    /// A hash of the last response's nonce: an answer is matched against it.
    nonce: u64,
    /// The last refusal, while it stands (rare: kept out of line).
    nack: Option<Box<Refusal>>,
}

/// A NACK: Envoy's error, and `sends` when it came. It stands until a response sent after it is ACKed
/// (a delta response sent before it carries nothing of what was refused).
#[derive(Debug, Clone)]
struct Refusal {
    error: Box<str>,
    at: u16,
}
fn nonce_hash(nonce: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    nonce.hash(&mut h);
    h.finish()
}

fn slot_of(ty: &str) -> Option<usize> {
    TYPES.iter().position(|t| *t == ty)
}

/// How many recent changes are remembered for `/status/changes`.
const CHANGES_KEPT: usize = 64;

/// How far the controller has come with the mesh's changes: written by the snapshot actor, read by the
/// board.
#[derive(Debug)]
pub struct MeshProgress {
    /// When this controller started (Unix milliseconds): generations are numbered from then.
    started_ms: u64,
    /// Raised while proxies are being built or wait to be.
    building: AtomicBool,
    /// The latest change's generation (0: none since the controller started).
    latest: AtomicU64,
    /// Every connected proxy that any change up to this generation touched has been built for it (or its
    /// build failed and says so): the proxies no such change touched hold it as soon as they hold their
    /// own. (A proxy without a session then is built again when it reconnects.)
    settled: AtomicU64,
    changes: Mutex<VecDeque<Change>>,
}

impl Default for MeshProgress {
    fn default() -> Self {
        Self {
            started_ms: (unix_now() * 1000.0) as u64,
            building: AtomicBool::default(),
            latest: AtomicU64::default(),
            settled: AtomicU64::default(),
            changes: Mutex::default(),
        }
    }
}

impl MeshProgress {
    /// A mesh change: its generation.
    pub fn change(&self, what: String) -> u64 {
        let Ok(mut changes) = self.changes.lock() else { return self.latest.fetch_add(1, Ordering::SeqCst) + 1 };
        let generation = self.latest.fetch_add(1, Ordering::SeqCst) + 1;
        if changes.len() == CHANGES_KEPT {
            changes.pop_front();
        }
        changes.push_back(Change { generation, at: unix_now(), what });
        generation
    }

    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::SeqCst)
    }

    /// Every proxy touched by a change up to `generation` has been built for it.
    pub fn settle(&self, generation: u64) {
        self.settled.fetch_max(generation, Ordering::SeqCst);
    }

    pub fn set_building(&self, building: bool) {
        self.building.store(building, Ordering::Relaxed);
    }

    pub fn is_building(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }

    fn settled(&self) -> u64 {
        self.settled.load(Ordering::SeqCst)
    }
}

/// One proxy's builds, kept by the snapshot actor across the proxy's sessions (a reconnect keeps them).
#[derive(Debug, Default)]
pub struct ProxyGenerations {
    /// The generation of the snapshot last published to the proxy's session: what it must ACK.
    published: AtomicU64,
    /// The generation the proxy's latest build was for, whether it changed the snapshot or not.
    built: AtomicU64,
    /// The generation of a build that failed, until one succeeds (0: none failed): the proxy does not
    /// have that change, whatever it ACKed.
    failed: AtomicU64,
}

impl ProxyGenerations {
    /// A snapshot built for `generation` is about to be handed to the session (store before the watch
    /// notifies it, so the session never ACKs a generation the board does not yet ask it for).
    pub fn published(&self, generation: u64) {
        self.published.fetch_max(generation, Ordering::SeqCst);
        self.built(generation);
    }

    /// A build for `generation` came out identical to the snapshot the session has.
    pub fn built(&self, generation: u64) {
        self.built.fetch_max(generation, Ordering::SeqCst);
        self.failed.store(0, Ordering::SeqCst);
    }

    /// The build for `generation` failed: the proxy keeps its last good config, without that change.
    pub fn failed(&self, generation: u64) {
        self.failed.store(generation, Ordering::SeqCst);
    }
}

struct Inner {
    types: [Slot; TYPES.len()],
    /// The generation of the snapshot the session last took (sent, or had nothing to send for).
    gen_taken: u64,
    /// The generation of the last snapshot the proxy holds all of.
    gen_acked: u64,
    /// Since when something sent is unanswered or refused.
    behind_since: Option<Instant>,
    /// When the earliest mesh change whose configuration the proxy has not ACKed yet was made.
    change: Option<Instant>,
    /// When the proxy last held everything sent to it.
    synced_at: Option<Instant>,
}

fn state(inner: &Inner) -> SyncState {
    if inner.types.iter().any(|t| t.nack.is_some()) {
        SyncState::Nack
    } else if inner.behind_since.is_some() {
        SyncState::Stale
    } else {
        SyncState::Synced
    }
}

/// The status of one connected proxy, written by its session only.
pub struct ProxyStatus {
    uuid: messages::ProxyUuid,
    identity: Arc<str>,
    api: &'static str,
    connected: Instant,
    gens: Arc<ProxyGenerations>,
    inner: Mutex<Inner>,
}

impl ProxyStatus {
    /// A response of type `ty` went out.
    pub fn sent(&self, ty: &'static str, nonce: &str, version: &str) {
        let (Ok(mut inner), Some(slot)) = (self.inner.lock(), slot_of(ty)) else { return };
        let t = &mut inner.types[slot];
        t.used = true;
        t.sent = Version::of(version);
        t.nonce = nonce_hash(nonce);
        t.unanswered = t.unanswered.saturating_add(1);
        t.sends = t.sends.wrapping_add(1);
        inner.behind_since.get_or_insert_with(Instant::now);
    }

    /// What was just sent carries a mesh change made at `at` (the earliest one counts until ACKed).
    pub fn change_sent(&self, at: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.change.get_or_insert(at);
        }
    }

    /// The session took a snapshot of `generation`: once the proxy holds everything sent to it after
    /// this (what the session defers until an answer comes counts too), it holds that generation.
    pub fn took(&self, generation: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.gen_taken = generation;
        }
    }

    /// The proxy answered a response of type `ty` (`nonce`), refusing it with `error` or not. Answers to
    /// responses already answered, and requests that answer nothing, change nothing.
    pub fn answered(&self, ty: &'static str, nonce: &str, error: Option<&str>) {
        let (Ok(mut inner), Some(slot)) = (self.inner.lock(), slot_of(ty)) else { return };
        let t = &mut inner.types[slot];
        if nonce.is_empty() || !t.used || t.unanswered == 0 {
            return;
        }
        let latest = t.nonce == nonce_hash(nonce);
        // An older response than the latest is answered in order, before it; one answer too many for the
        // responses out (a duplicate, or a nonce never sent) is ignored.
        if !latest && t.unanswered < 2 {
            return;
        }
        t.unanswered = if latest { 0 } else { t.unanswered - 1 };
        match error {
            Some(e) => {
                let error = xds::limits::peer_str(e.trim_end()).to_string().into();
                t.nack = Some(Box::new(Refusal { error, at: t.sends }));
            }
            // Only the latest response's ACK says which version the proxy holds; it clears a NACK only if
            // it was sent after that NACK came.
            None if latest => {
                t.acked = t.sent.clone();
                if t.nack.as_ref().is_some_and(|n| n.at != t.sends) {
                    t.nack = None;
                }
            }
            None => {}
        }
        if inner.types.iter().filter(|t| t.used).all(|t| t.unanswered == 0 && t.nack.is_none()) {
            inner.behind_since = None;
            inner.synced_at = Some(Instant::now());
        }
    }

    /// Called once the session has done what a snapshot or a request asked of it (sent what it had to):
    /// when the proxy then holds everything sent to it, it holds the generation last taken, and this
    /// returns how long ago the mesh change it brought was made.
    pub fn settle(&self) -> Option<std::time::Duration> {
        let mut inner = self.inner.lock().ok()?;
        if inner.behind_since.is_some() {
            return None;
        }
        inner.gen_acked = inner.gen_taken;
        inner.change.take().map(|at| at.elapsed())
    }

    /// The latest generation this proxy holds, given how far every build has come (`settled`).
    fn generation(&self, inner: &Inner, settled: u64) -> u64 {
        let gens = &self.gens;
        let current = inner.behind_since.is_none()
            && gens.failed.load(Ordering::SeqCst) == 0
            && inner.gen_acked >= gens.published.load(Ordering::SeqCst);
        if current { inner.gen_acked.max(gens.built.load(Ordering::SeqCst)).max(settled) } else { inner.gen_acked }
    }

    pub fn view(&self, settled: u64) -> Option<ProxyStatusView> {
        let inner = self.inner.lock().ok()?;
        let state = state(&inner);
        Some(ProxyStatusView {
            uuid: self.uuid.to_string(),
            pod: None,
            identity: self.identity.to_string(),
            api: self.api.to_owned(),
            state,
            generation: self.generation(&inner, settled),
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
                        nack: t.nack.as_ref().map(|n| n.error.to_string()),
                    };
                    ((*label).to_owned(), status)
                })
                .collect(),
        })
    }
}

/// What a metrics scrape reads off the board ([`StatusBoard::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeCounts {
    pub behind: usize,
    pub generation: u64,
    pub not_holding_latest: usize,
}

/// Every connected proxy's status.
#[derive(Default)]
pub struct StatusBoard {
    /// Written by the snapshot actor: the changes, and how far its builds have come.
    pub progress: Arc<MeshProgress>,
    /// By UUID; a proxy may have two sessions for a moment (a reconnect racing the old one): the newest
    /// is shown.
    proxies: Mutex<HashMap<messages::ProxyUuid, Arc<ProxyStatus>>>,
}

impl StatusBoard {
    /// A session starts: its status, on the board until [`StatusBoard::leave`].
    pub fn join(
        &self,
        uuid: &messages::ProxyUuid,
        identity: Arc<str>,
        api: &'static str,
        gens: Arc<ProxyGenerations>,
    ) -> Arc<ProxyStatus> {
        let status = Arc::new(ProxyStatus {
            uuid: uuid.clone(),
            identity,
            api,
            connected: Instant::now(),
            gens,
            inner: Mutex::new(Inner {
                types: Default::default(),
                gen_taken: 0,
                gen_acked: 0,
                behind_since: Some(Instant::now()),
                change: None,
                synced_at: None,
            }),
        });
        if let Ok(mut p) = self.proxies.lock() {
            p.insert(uuid.clone(), status.clone());
        }
        status
    }

    /// A session ended (a newer session of the same proxy stays).
    pub fn leave(&self, status: &Arc<ProxyStatus>) {
        if let Ok(mut p) = self.proxies.lock()
            && p.get(&status.uuid).is_some_and(|s| Arc::ptr_eq(s, status))
        {
            p.remove(status.uuid.as_str());
        }
    }

    /// The counts of [`StatusBoard::view`] (what `StatusSummary::of` makes of it), without building every
    /// proxy's view: what `osm proxy status --wait` polls and a scrape reads.
    pub fn summary(&self, of: Option<u64>) -> StatusSummary {
        // Settled first, as in `view`.
        let settled = self.progress.settled();
        let generation = self.progress.latest();
        let of_generation = of.unwrap_or(generation);
        let statuses: Vec<Arc<ProxyStatus>> =
            self.proxies.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        let mut summary = StatusSummary {
            building: self.progress.is_building(),
            generation,
            of_generation,
            started_ms: self.progress.started_ms,
            ..StatusSummary::default()
        };
        for s in &statuses {
            let Ok(inner) = s.inner.lock() else { continue };
            summary.proxies += 1;
            match state(&inner) {
                SyncState::Synced => summary.synced += 1,
                SyncState::Stale => summary.stale += 1,
                SyncState::Nack => summary.nack += 1,
            }
            summary.holding += usize::from(s.generation(&inner, settled) >= of_generation);
        }
        summary
    }

    /// For a scrape: how many connected proxies do not hold everything sent to them (stale or NACK); the
    /// latest generation; how many do not hold it.
    pub fn counts(&self) -> ScrapeCounts {
        let s = self.summary(None);
        ScrapeCounts { behind: s.stale + s.nack, generation: s.generation, not_holding_latest: s.proxies - s.holding }
    }

    /// One proxy's status, if it is connected.
    pub fn proxy(&self, uuid: &str) -> Option<ProxyStatusView> {
        let status = self.proxies.lock().ok()?.get(uuid).cloned()?;
        status.view(self.progress.settled())
    }

    pub fn view(&self) -> MeshStatus {
        // Settled first: what untouched proxies are credited with never passes the generation reported.
        let settled = self.progress.settled();
        let generation = self.progress.latest();
        let statuses: Vec<Arc<ProxyStatus>> =
            self.proxies.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        let mut proxies: Vec<ProxyStatusView> = statuses.iter().filter_map(|s| s.view(settled)).collect();
        proxies.sort_by(|a, b| a.identity.cmp(&b.identity).then_with(|| a.uuid.cmp(&b.uuid)));
        let change = self.changes().into_iter().rev().find(|c| c.generation == generation);
        MeshStatus {
            at: unix_now(),
            building: self.progress.is_building(),
            generation,
            change,
            started_ms: self.progress.started_ms,
            proxies,
        }
    }

    /// The changes remembered, oldest first.
    pub fn changes(&self) -> Vec<Change> {
        self.progress.changes.lock().map(|c| c.iter().cloned().collect()).unwrap_or_default()
    }

    /// The recent changes (or the one of `generation`), newest first, with the proxies of `status` (a
    /// [`StatusBoard::view`]) holding each.
    pub fn change_status(&self, status: &MeshStatus, generation: Option<u64>) -> Vec<ChangeStatus> {
        let mut held: Vec<u64> = status.proxies.iter().map(|p| p.generation).collect();
        held.sort_unstable();
        self.changes()
            .into_iter()
            .rev()
            .filter(|c| generation.is_none_or(|g| g == c.generation))
            .map(|change| {
                let behind = held.partition_point(|g| *g < change.generation);
                let not_holding = status
                    .proxies
                    .iter()
                    .filter(|p| p.generation < change.generation)
                    .take(ChangeStatus::LISTED)
                    .map(|p| p.pod.clone().unwrap_or_else(|| p.uuid.clone()))
                    .collect();
                ChangeStatus { change, proxies: held.len(), holding: held.len() - behind, not_holding }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(s: &str) -> messages::ProxyUuid {
        messages::ProxyUuid::parse(s).unwrap()
    }

    #[test]
    fn a_proxy_is_stale_until_it_acks_everything_and_a_nack_shows_until_a_later_ack() {
        let board = StatusBoard::default();
        let s = board.join(&uuid("u1"), "sa.ns".into(), "sotw", Arc::default());
        assert_eq!(s.view(0).unwrap().state, SyncState::Stale, "nothing received yet");
        s.sent("CDS", "n1", "06e4bbe9f2b4f66e");
        s.sent("LDS", "n2", "v1");
        s.answered("CDS", "n1", None);
        assert_eq!(s.view(0).unwrap().state, SyncState::Stale, "LDS unanswered");
        s.answered("LDS", "n2", None);
        let v = s.view(0).unwrap();
        assert_eq!((v.state, v.behind_s), (SyncState::Synced, 0.0));
        assert_eq!(v.types["CDS"].acked, "06e4bbe9f2b4f66e", "versions are kept as they were sent");
        // Envoy refuses the next listeners: it keeps v1 and says why.
        s.sent("LDS", "n3", "v2");
        s.answered("LDS", "n3", Some("cannot bind 0.0.0.0:15010: Address already in use"));
        let v = s.view(0).unwrap();
        assert_eq!(v.state, SyncState::Nack);
        assert_eq!((v.types["LDS"].acked.as_str(), v.types["LDS"].sent.as_str()), ("v1", "v2"));
        assert!(v.types["LDS"].nack.as_deref().unwrap().contains("Address already in use"));
        // An answer to an older response changes nothing; an ACK of a newer one clears the NACK.
        s.answered("LDS", "n2", None);
        assert_eq!(s.view(0).unwrap().state, SyncState::Nack);
        s.sent("LDS", "n4", "v3");
        s.change_sent(Instant::now());
        s.answered("LDS", "n4", None);
        assert!(s.settle().is_some(), "the change is ACKed: how long it took");
        assert_eq!(s.view(0).unwrap().state, SyncState::Synced);
        s.sent("CDS", "n5", "v2");
        s.answered("CDS", "n5", None);
        assert_eq!(s.settle(), None, "no change to time");
        // A reconnect's newer session stays when the old one leaves.
        let newer = board.join(&uuid("u1"), "sa.ns".into(), "delta", Arc::default());
        board.leave(&s);
        assert_eq!(board.view().proxies.len(), 1);
        board.leave(&newer);
        assert!(board.view().proxies.is_empty());
    }

    #[test]
    fn a_proxys_type_slot_stays_small() {
        // Five per connected proxy: 10,000 proxies hold 50,000.
        assert!(std::mem::size_of::<Slot>() <= 56, "{}", std::mem::size_of::<Slot>());
    }

    #[test]
    fn a_delta_nack_of_an_earlier_response_stands_until_a_later_response_is_acked() {
        let board = StatusBoard::default();
        let s = board.join(&uuid("u1"), "sa.ns".into(), "delta", Arc::default());
        s.sent("CDS", "n1", "v1");
        s.sent("CDS", "n2", "v2");
        s.answered("CDS", "n1", Some("bad cluster"));
        // The response after it was sent before the NACK came: its ACK does not cover what was refused.
        s.answered("CDS", "n2", None);
        assert_eq!(s.view(0).unwrap().state, SyncState::Nack);
        s.answered("CDS", "n2", None);
        assert_eq!(s.view(0).unwrap().state, SyncState::Nack, "a duplicate answer changes nothing");
        s.sent("CDS", "n3", "v3");
        s.answered("CDS", "n3", None);
        assert_eq!(s.view(0).unwrap().state, SyncState::Synced);
    }

    #[test]
    fn a_proxy_holds_a_generation_once_it_acked_a_config_with_it_or_no_build_touched_it() {
        let board = StatusBoard::default();
        let progress = board.progress.clone();
        let (gens_a, gens_b) = (Arc::new(ProxyGenerations::default()), Arc::new(ProxyGenerations::default()));
        let a = board.join(&uuid("a"), "a.ns".into(), "sotw", gens_a.clone());
        let b = board.join(&uuid("b"), "b.ns".into(), "sotw", gens_b.clone());
        let held = |uuid: &str| board.proxy(uuid).unwrap().generation;
        // What a session does with a snapshot of generation `g`: send what it has to, take it, settle.
        let take = |s: &ProxyStatus, g: u64, send: Option<&str>| {
            if let Some(nonce) = send {
                s.sent("CDS", nonce, nonce);
            }
            s.took(g);
            s.settle();
        };
        // ... and with an answer.
        let answer = |s: &ProxyStatus, nonce: &str, error: Option<&str>| {
            s.answered("CDS", nonce, error);
            s.settle();
        };
        // Both get their first config (built before any change: generation 0) and ACK it.
        for (s, g) in [(&a, &gens_a), (&b, &gens_b)] {
            g.published(0);
            take(s, 0, Some("n1"));
            answer(s, "n1", None);
        }
        // Change 1 touches only a: a's new config is published, b is not built at all.
        assert_eq!(progress.change("Service demo/web applied".into()), 1);
        gens_a.published(1);
        assert_eq!((held("a"), held("b")), (0, 0), "a has not taken it; the build is not over");
        take(&a, 1, Some("n2"));
        progress.settle(1);
        assert_eq!((held("a"), held("b")), (0, 1), "b holds what no build of it changed; a waits for its ACK");
        let status = board.view();
        assert_eq!(status.generation, 1);
        assert_eq!(status.change.as_ref().map(|c| c.what.as_str()), Some("Service demo/web applied"));
        let changes = board.change_status(&status, Some(1));
        assert_eq!((changes[0].proxies, changes[0].holding, changes[0].not_holding.clone()), (2, 1, vec!["a".into()]));
        // a refuses it: it still does not hold it.
        answer(&a, "n2", Some("bad cluster"));
        assert_eq!(held("a"), 0);
        // Change 2: a's rebuild fixes it; b's build comes out identical (nothing to send, held at once).
        progress.change("Service demo/web applied".into());
        gens_a.published(2);
        gens_b.built(2);
        assert_eq!(held("b"), 2);
        take(&a, 2, Some("n3"));
        answer(&a, "n3", None);
        assert_eq!(held("a"), 2, "its ACK of a config built for 2 holds 1 and 2");
        assert_eq!(StatusSummary::of(&board.view(), Some(1)).holding, 2);
        // Change 3: a's build fails; it keeps its config, without the change, even once all is settled.
        progress.change("certificates renewed".into());
        gens_a.failed(3);
        progress.settle(3);
        assert_eq!((held("a"), held("b")), (2, 3));
        let summary = StatusSummary::of(&board.view(), None);
        assert_eq!((summary.of_generation, summary.holding, summary.held()), (3, 1, false));
        assert_eq!(board.counts(), ScrapeCounts { behind: 0, generation: 3, not_holding_latest: 1 });
        // Two changes before one ACK (SotW): the second's response waits for the first's ACK. That ACK
        // leaves nothing unanswered for a moment, but the proxy holds neither until the second is ACKed.
        gens_a.published(4);
        take(&a, 4, Some("n4"));
        gens_a.published(5);
        take(&a, 5, None);
        a.answered("CDS", "n4", None);
        a.sent("CDS", "n5", "n5");
        a.settle();
        assert_eq!(held("a"), 2, "the ACK of generation 4's response came with 5's held back");
        answer(&a, "n5", Some("bad endpoints"));
        assert_eq!(held("a"), 2);
        gens_a.published(6);
        take(&a, 6, Some("n6"));
        answer(&a, "n6", None);
        assert_eq!(held("a"), 6);
    }
}
