//! State-of-the-world ADS session: a pure state machine fed with requests and snapshots.
//!
//! Rules (xDS protocol): a response is sent for a type only after Envoy asked for it; an ACK (a request
//! echoing the last nonce, without `error_detail`) is never answered unless it changes the subscribed
//! names; a request carrying an older nonce is stale and ignored; a NACK keeps Envoy on its last good
//! config and is reported, and the same content is not sent again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use prost::Message as _;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::snapshot::{ProxySnapshot, Resource, ResourceType, TypeResources};

/// A NACK reported by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub type_url: String,
    pub version: String,
    pub message: String,
}

/// What a request produced.
#[derive(Debug)]
pub struct Outcome<R> {
    pub responses: Vec<R>,
    pub nack: Option<Nack>,
    /// Set when the request was for a type the control plane does not serve.
    pub unknown_type: Option<String>,
    /// Set when the request breaks a bound ([`crate::limits`]): the stream must end with this reason.
    pub refused: Option<String>,
    /// Set when the request repeated an initial request that was answered already (left unanswered).
    pub repeated: bool,
}

impl<R> Default for Outcome<R> {
    fn default() -> Self {
        Self { responses: Vec::new(), nack: None, unknown_type: None, refused: None, repeated: false }
    }
}

#[derive(Debug, Default)]
struct TypeState {
    requested: bool,
    names: BTreeSet<String>,
    last_nonce: Option<String>,
    last_version: Option<String>,
    /// The last response answered the current names (false before the first, and after names change).
    answered_names: bool,
    /// What the last response carried: a snapshot whose resources of this type are the same (the very
    /// same set, or usually the very same `Arc`s) sends nothing, found without hashing anything.
    sent: Option<Sent>,
    /// A response was sent and the proxy has not answered it yet (ACK or NACK): newer content waits for
    /// the answer, so a proxy that falls behind gets the latest snapshot once, not every one in between.
    unanswered: bool,
    /// For the current names: whether they hold every name of sets with these names (most pushes
    /// change content, not names, so this is worked out once per subscription and name set).
    covers: Option<(Arc<[String]>, bool)>,
    acked_version: Option<String>,
}

/// The resources of a type's last response.
#[derive(Debug, Clone)]
struct Sent {
    /// The shared set they came from: the same set again is unchanged at a pointer's cost.
    set: Arc<TypeResources>,
    /// The resources, in name order, when they were a part of the set (the proxy subscribed to fewer
    /// names); `None`: the whole set, kept without a list of its own.
    part: Option<Vec<Arc<Resource>>>,
}

impl Sent {
    fn resources(&self) -> SentIter<'_> {
        match &self.part {
            None => SentIter::Whole(self.set.resources().values()),
            Some(part) => SentIter::Part(part.iter()),
        }
    }
}

enum SentIter<'a> {
    Whole(std::collections::btree_map::Values<'a, String, Arc<Resource>>),
    Part(std::slice::Iter<'a, Arc<Resource>>),
}

impl<'a> Iterator for SentIter<'a> {
    type Item = &'a Arc<Resource>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SentIter::Whole(it) => it.next(),
            SentIter::Part(it) => it.next(),
        }
    }
}

/// What every proxy receiving the same resources of a type gets: fields 1 (version), 2 (resources) and 4
/// (type URL) of a `DiscoveryResponse`, encoded once and shared.
#[derive(Debug)]
pub struct EncodedBody {
    ty: ResourceType,
    version: String,
    count: usize,
    bytes: prost::bytes::Bytes,
    /// For a body of part of a set, the resources it carries: a [`BodyCache`] hit is checked against
    /// them, so two selections whose versions collide can never share a body.
    part: Vec<Arc<Resource>>,
}

impl EncodedBody {
    fn encode<'a>(
        ty: ResourceType,
        version: &str,
        resources: impl ExactSizeIterator<Item = &'a Arc<Resource>>,
    ) -> Self {
        let count = resources.len();
        let msg = DiscoveryResponse {
            version_info: version.to_owned(),
            resources: resources.map(|r| r.body.clone()).collect(),
            type_url: ty.type_url().to_owned(),
            ..Default::default()
        };
        Self { ty, version: version.to_owned(), count, bytes: msg.encode_to_vec().into(), part: Vec::new() }
    }
}

impl TypeResources {
    /// The whole set as a response body of type `ty`, encoded by the first session that sends it and
    /// shared by every other.
    fn sotw_body(&self, ty: ResourceType) -> Arc<EncodedBody> {
        self.sotw_body
            .get_or_init(|| Arc::new(EncodedBody::encode(ty, self.version(), self.resources().values())))
            .clone()
    }
}

/// A SotW response as sent: the shared body and this proxy's nonce (field 5), appended on the wire
/// (protobuf fields may come in any order), so a push to thousands of proxies copies and encodes the
/// resources once, not once per proxy.
#[derive(Debug, Clone)]
pub struct SotwResponse {
    body: Arc<EncodedBody>,
    nonce: String,
}

/// Field 5 (`nonce`) of `DiscoveryResponse`, length-delimited.
const NONCE_TAG: u32 = 5;

impl SotwResponse {
    pub fn type_url(&self) -> &'static str {
        self.body.ty.type_url()
    }

    pub fn version(&self) -> &str {
        &self.body.version
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// How many resources it carries.
    pub fn len(&self) -> usize {
        self.body.count
    }

    pub fn is_empty(&self) -> bool {
        self.body.count == 0
    }

    /// Whether two responses share one encoded body.
    pub fn shares_body_with(&self, other: &SotwResponse) -> bool {
        Arc::ptr_eq(&self.body, &other.body)
    }

    /// The length of the wire form.
    pub fn encoded_len(&self) -> usize {
        self.body.bytes.len() + prost::encoding::string::encoded_len(NONCE_TAG, &self.nonce)
    }

    /// Writes the wire form: the shared body, then the nonce.
    pub fn encode_to(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.body.bytes);
        prost::encoding::string::encode(NONCE_TAG, &self.nonce, buf);
    }

    /// The message as a proxy decodes it (tests, tools).
    pub fn to_proto(&self) -> DiscoveryResponse {
        let mut wire = Vec::with_capacity(self.encoded_len());
        self.encode_to(&mut wire);
        DiscoveryResponse::decode(wire.as_slice()).unwrap_or_default()
    }
}

/// Encoded bodies of parts of sets (a proxy subscribed to fewer names than its set has, e.g. while Envoy
/// catches up with new clusters) by type and version, held weakly: an entry lives as long as a session
/// still holds its last response. One per process: a version names the same resources for every proxy.
/// (Whole sets carry their own body: [`TypeResources::sotw_body`].)
#[derive(Debug, Default)]
pub struct BodyCache {
    bodies: Mutex<HashMap<(ResourceType, String), Weak<EncodedBody>>>,
    inserts: AtomicU64,
}

impl BodyCache {
    pub fn global() -> &'static BodyCache {
        static CACHE: OnceLock<BodyCache> = OnceLock::new();
        CACHE.get_or_init(BodyCache::default)
    }

    fn get_or_encode(&self, ty: ResourceType, version: &str, included: &[Arc<Resource>]) -> Arc<EncodedBody> {
        let key = (ty, version.to_owned());
        let same = |body: &EncodedBody| {
            body.part.len() == included.len()
                && body.part.iter().zip(included).all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
        };
        if let Some(body) = self.bodies.lock().ok().and_then(|m| m.get(&key).and_then(Weak::upgrade))
            && same(&body)
        {
            return body;
        }
        // Encoded outside the lock: another session may encode the same body meanwhile; either copy is right.
        let mut body = EncodedBody::encode(ty, version, included.iter());
        body.part = included.to_vec();
        let body = Arc::new(body);
        if let Ok(mut m) = self.bodies.lock() {
            // Dead entries are swept now and then, so the map stays the size of what sessions hold.
            if self.inserts.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
                m.retain(|_, w| w.strong_count() > 0);
            }
            m.insert(key, Arc::downgrade(&body));
        }
        body
    }
}

#[derive(Debug, Default)]
pub struct SotwSession {
    types: HashMap<ResourceType, TypeState>,
    snapshot: Option<Arc<ProxySnapshot>>,
    nonce: u64,
}

impl SotwSession {
    pub fn new() -> Self {
        Self::default()
    }

    /// The version of each type the proxy last acknowledged.
    pub fn acked_version(&self, ty: ResourceType) -> Option<&str> {
        self.types.get(&ty).and_then(|t| t.acked_version.as_deref())
    }

    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Outcome<SotwResponse> {
        let mut out = Outcome::default();
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            out.unknown_type = Some(req.type_url.clone());
            return out;
        };
        if let Err(e) = crate::limits::check_names(req.resource_names.len(), &req.resource_names) {
            out.refused = Some(e);
            return out;
        }
        let state = self.types.entry(ty).or_default();
        let first = req.response_nonce.is_empty();
        if !first && state.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return out; // stale: Envoy will send a request for the latest nonce too
        }
        // An initial request again, on a stream that was answered for this type already: Envoy never sends
        // one (it echoes a nonce from then on), and answering each would let ~100 bytes draw the whole
        // type again, over and over. Answered only if it subscribes to other names.
        if first && state.last_nonce.is_some() {
            let requested: BTreeSet<&str> =
                req.resource_names.iter().map(String::as_str).filter(|n| *n != "*").collect();
            if requested.len() == state.names.len() && requested.iter().all(|n| state.names.contains(*n)) {
                out.repeated = true;
                return out;
            }
        }
        state.requested = true;
        state.unanswered = false;
        // Most requests are ACKs naming what was subscribed already: compared in place, without
        // building a set of the names first.
        let requested = req.resource_names.iter().filter(|n| n.as_str() != "*");
        let same = requested.clone().count() == state.names.len() && requested.clone().all(|n| state.names.contains(n));
        let names_changed = !same && {
            // (Different in count only when a name repeats: compare as sets.)
            let names: BTreeSet<String> = requested.cloned().collect();
            let changed = names != state.names;
            state.names = names;
            changed
        };
        if names_changed {
            state.answered_names = false;
            state.covers = None;
        }
        if let Some(err) = &req.error_detail {
            out.nack = Some(Nack {
                type_url: req.type_url.clone(),
                version: req.version_info.clone(),
                message: err.message.clone(),
            });
        } else if !first {
            state.acked_version = Some(req.version_info.clone());
        }
        if first || names_changed {
            // A new stream, or a new set of names: Envoy waits for an answer, even an unchanged one.
            if let Some(r) = self.respond(ty, true) {
                out.responses.push(r);
            }
        } else {
            // An answer: what changed while it was awaited goes now (nothing, usually).
            out.responses = self.push();
        }
        out
    }

    pub fn on_snapshot(&mut self, snap: Arc<ProxySnapshot>) -> Vec<SotwResponse> {
        self.snapshot = Some(snap);
        self.push()
    }

    /// What the latest snapshot changes for the proxy, in push order, for the types not awaiting an answer.
    fn push(&mut self) -> Vec<SotwResponse> {
        let mut out = Vec::new();
        let mut clusters_changed = false;
        for ty in ResourceType::ALL {
            // Envoy re-warms an updated cluster and waits for its endpoints again, even unchanged ones:
            // follow a cluster update with the endpoints.
            let force = ty == ResourceType::Endpoint && clusters_changed;
            // (A pointer to the set, unless the proxy subscribed to part of it.)
            let before = match ty {
                ResourceType::Cluster => self.types.get(&ty).and_then(|t| t.sent.clone()),
                _ => None,
            };
            let response = self.respond(ty, force);
            if let (Some(before), Some(after), Some(_)) =
                (&before, self.types.get(&ty).and_then(|t| t.sent.as_ref()), &response)
            {
                let after: BTreeMap<&str, &str> =
                    after.resources().map(|r| (r.name.as_str(), r.version.as_str())).collect();
                clusters_changed =
                    before.resources().any(|b| after.get(b.name.as_str()).is_some_and(|v| *v != b.version));
            }
            out.extend(response);
        }
        out
    }

    fn respond(&mut self, ty: ResourceType, force: bool) -> Option<SotwResponse> {
        let snap = self.snapshot.clone()?;
        let state = self.types.get_mut(&ty)?;
        if !state.requested || (state.unanswered && !force) {
            return None;
        }
        let set = snap.shared(ty);
        let res: &TypeResources = set;
        let scope = if ty.is_wildcard() { None } else { Some(&state.names) };
        // Usually a proxy subscribes to every name of the set: then nothing needs looking up per name.
        let covers = match scope {
            None => true,
            Some(names) => {
                let set_names = res.names();
                match &state.covers {
                    Some((checked, covers)) if Arc::ptr_eq(checked, set_names) => *covers,
                    _ => {
                        let covers = res.all_in(names);
                        state.covers = Some((set_names.clone(), covers));
                        covers
                    }
                }
            }
        };
        let scope = if covers { None } else { scope };
        let in_scope = |name: &String| scope.is_none_or(|n| n.contains(name));
        if !force && state.answered_names {
            let unchanged = match &state.sent {
                None => false,
                Some(sent) if Arc::ptr_eq(&sent.set, set) => true,
                // The same names: anything to send only if a resource differs from what was sent
                // (compared in step, by pointer first; most snapshots share the previous ones' resources).
                Some(sent) => {
                    let mut now = res.resources().iter().filter(|(name, _)| in_scope(name)).map(|(_, r)| r);
                    let mut sent = sent.resources();
                    loop {
                        match (now.next(), sent.next()) {
                            (None, None) => break true,
                            (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a == b => {}
                            _ => break false,
                        }
                    }
                }
            };
            if unchanged {
                // Remember the new set (when it is sent whole) so the next comparison is a pointer's.
                if covers && let Some(sent) = &mut state.sent {
                    *sent = Sent { set: set.clone(), part: None };
                }
                return None;
            }
        }
        let (body, part) = if covers {
            (res.sotw_body(ty), None)
        } else {
            let included: Vec<Arc<Resource>> =
                res.resources().iter().filter(|(name, _)| in_scope(name)).map(|(_, r)| r.clone()).collect();
            let version = res.version_of(scope);
            (BodyCache::global().get_or_encode(ty, &version, &included), Some(included))
        };
        state.sent = Some(Sent { set: set.clone(), part });
        self.nonce += 1;
        // The version is already a short hash: the nonce needs no hashing of its own.
        let version = &body.version;
        let nonce = format!("{}-{}", self.nonce, version.get(..8).unwrap_or(version));
        state.last_nonce = Some(nonce.clone());
        state.last_version = Some(version.clone());
        state.answered_names = true;
        state.unanswered = true;
        Some(SotwResponse { body, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two selections whose versions collide never share a body: a hit is checked against what it carries.
    #[test]
    fn a_body_is_shared_only_by_the_very_same_resources() {
        let cache = BodyCache::default();
        let r = |name: &str, bytes: &[u8]| {
            Arc::new(Resource::new(name, Any { type_url: "t".into(), value: bytes.to_vec() }))
        };
        let (a, b) = (r("x", b"one"), r("x", b"two"));
        let first = cache.get_or_encode(ResourceType::Endpoint, "same-version", std::slice::from_ref(&a));
        let again = cache.get_or_encode(ResourceType::Endpoint, "same-version", &[r("x", b"one")]);
        assert!(Arc::ptr_eq(&first, &again), "equal resources share the body");
        let other = cache.get_or_encode(ResourceType::Endpoint, "same-version", std::slice::from_ref(&b));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_ne!(first.bytes, other.bytes);
    }
    use crate::snapshot::Resource;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;

    fn snap(eds: &[(&str, &str)]) -> Arc<ProxySnapshot> {
        let mut s = ProxySnapshot::default();
        s.insert(
            ResourceType::Cluster,
            Arc::new(Resource::new("c1", Any { type_url: "t".into(), value: b"c1".to_vec() })),
        )
        .unwrap();
        for (name, body) in eds {
            s.insert(
                ResourceType::Endpoint,
                Arc::new(Resource::new(*name, Any { type_url: "t".into(), value: body.as_bytes().to_vec() })),
            )
            .unwrap();
        }
        Arc::new(s)
    }

    fn req(ty: ResourceType, names: &[&str], nonce: &str, version: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_is_sent_before_a_request_and_acks_are_not_answered() {
        let mut s = SotwSession::new();
        assert!(s.on_snapshot(snap(&[])).is_empty());
        let r = s.on_request(&req(ResourceType::Cluster, &[], "", "")).responses;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].len(), 1);
        let ack = s.on_request(&req(ResourceType::Cluster, &[], r[0].nonce(), r[0].version()));
        assert!(ack.responses.is_empty());
        assert_eq!(s.acked_version(ResourceType::Cluster), Some(r[0].version()));
        // An identical snapshot sends nothing.
        assert!(s.on_snapshot(snap(&[])).is_empty());
    }

    /// A request with an empty nonce again and again on one stream draws one response, not one each time
    /// (~100 bytes in, the whole type out); new names are still answered.
    #[test]
    fn a_repeated_initial_request_draws_nothing_more() {
        let mut s = SotwSession::new();
        s.on_snapshot(snap(&[("a", "1"), ("b", "1")]));
        let first = s.on_request(&req(ResourceType::Cluster, &[], "", "")).responses;
        assert_eq!(first.len(), 1);
        for _ in 0..1000 {
            let again = s.on_request(&req(ResourceType::Cluster, &[], "", ""));
            assert!(again.responses.is_empty() && again.repeated);
        }
        // After the ACK too.
        s.on_request(&req(ResourceType::Cluster, &[], first[0].nonce(), first[0].version()));
        assert!(s.on_request(&req(ResourceType::Cluster, &[], "", "")).responses.is_empty());
        // Other names are a new subscription: answered.
        let eds = s.on_request(&req(ResourceType::Endpoint, &["a"], "", "")).responses;
        assert_eq!(eds.len(), 1);
        let more = s.on_request(&req(ResourceType::Endpoint, &["a", "b"], "", "")).responses;
        assert_eq!(more.len(), 1, "new names on an initial request are answered");
    }

    #[test]
    fn named_types_follow_the_requested_names() {
        let mut s = SotwSession::new();
        s.on_snapshot(snap(&[("a", "1"), ("b", "1")]));
        let r = s.on_request(&req(ResourceType::Endpoint, &["a"], "", "")).responses;
        assert_eq!(r[0].len(), 1);
        assert!(s.on_request(&req(ResourceType::Endpoint, &["a"], r[0].nonce(), r[0].version())).responses.is_empty());
        // Changing b alone does not concern this proxy.
        assert!(s.on_snapshot(snap(&[("a", "1"), ("b", "2")])).is_empty());
        // Changing a does.
        let r2 = s.on_snapshot(snap(&[("a", "2"), ("b", "2")]));
        assert_eq!(r2.len(), 1);
        // Subscribing to b as well, while acking, is answered.
        let r3 = s.on_request(&req(ResourceType::Endpoint, &["a", "b"], r2[0].nonce(), r2[0].version())).responses;
        assert_eq!(r3[0].len(), 2);
    }

    #[test]
    fn nack_is_reported_and_not_resent_and_stale_nonces_ignored() {
        let mut s = SotwSession::new();
        s.on_snapshot(snap(&[]));
        let r = s.on_request(&req(ResourceType::Cluster, &[], "", "")).responses;
        let mut nack = req(ResourceType::Cluster, &[], r[0].nonce(), "");
        nack.error_detail = Some(Status { code: 3, message: "bad cluster".into(), details: vec![] });
        let out = s.on_request(&nack);
        assert_eq!(out.nack.unwrap().message, "bad cluster");
        assert!(out.responses.is_empty());
        assert!(s.on_snapshot(snap(&[])).is_empty());
        let stale = s.on_request(&req(ResourceType::Cluster, &["x"], "0-old", ""));
        assert!(stale.responses.is_empty());
    }

    #[test]
    fn an_updated_cluster_is_followed_by_its_endpoints() {
        let mut s = SotwSession::new();
        s.on_snapshot(snap(&[("c1", "1")]));
        let cds = s.on_request(&req(ResourceType::Cluster, &[], "", "")).responses;
        s.on_request(&req(ResourceType::Cluster, &[], cds[0].nonce(), cds[0].version()));
        let eds = s.on_request(&req(ResourceType::Endpoint, &["c1"], "", "")).responses;
        s.on_request(&req(ResourceType::Endpoint, &["c1"], eds[0].nonce(), eds[0].version()));
        // Same endpoints, changed cluster: both are sent, clusters first.
        let old = snap(&[("c1", "1")]);
        let mut cluster = (*old.get(ResourceType::Cluster).resources()["c1"]).clone();
        cluster.version = "other".into();
        let mut changed = ProxySnapshot::default();
        changed.insert(ResourceType::Cluster, Arc::new(cluster)).unwrap();
        changed.insert(ResourceType::Endpoint, old.get(ResourceType::Endpoint).resources()["c1"].clone()).unwrap();
        let out = s.on_snapshot(Arc::new(changed));
        let types: Vec<&str> = out.iter().map(|r| r.type_url()).collect();
        assert_eq!(types, vec![ResourceType::Cluster.type_url(), ResourceType::Endpoint.type_url()]);
    }

    #[test]
    fn an_ack_repeating_a_name_is_still_an_ack() {
        let mut s = SotwSession::new();
        s.on_snapshot(snap(&[("a", "1")]));
        let r = s.on_request(&req(ResourceType::Endpoint, &["a"], "", "")).responses;
        let ack = s.on_request(&req(ResourceType::Endpoint, &["a", "a", "*"], r[0].nonce(), r[0].version()));
        assert!(ack.responses.is_empty());
        assert_eq!(s.acked_version(ResourceType::Endpoint), Some(r[0].version()));
    }

    #[test]
    fn newer_content_waits_for_the_answer_to_the_last_response_and_only_the_latest_goes() {
        let mut s = SotwSession::new();
        s.on_snapshot(snap(&[("a", "1")]));
        let r = s.on_request(&req(ResourceType::Endpoint, &["a"], "", "")).responses;
        assert_eq!(r.len(), 1);
        // Two changes before the proxy answered: nothing is sent yet.
        assert!(s.on_snapshot(snap(&[("a", "2")])).is_empty());
        assert!(s.on_snapshot(snap(&[("a", "3")])).is_empty());
        // The answer (an ACK) brings the latest content, once.
        let next = s.on_request(&req(ResourceType::Endpoint, &["a"], r[0].nonce(), r[0].version())).responses;
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].to_proto().resources[0].value, b"3");
        assert!(
            s.on_request(&req(ResourceType::Endpoint, &["a"], r[0].nonce(), r[0].version())).responses.is_empty(),
            "a stale answer"
        );
        // A NACK is an answer too: a newer snapshot then goes.
        let mut nack = req(ResourceType::Endpoint, &["a"], next[0].nonce(), r[0].version());
        nack.error_detail = Some(Status { code: 3, message: "bad".into(), details: vec![] });
        assert!(s.on_request(&nack).responses.is_empty(), "the same content is not resent");
        assert_eq!(s.on_snapshot(snap(&[("a", "4")])).len(), 1);
    }

    #[test]
    fn unknown_types_are_flagged() {
        let mut s = SotwSession::new();
        let out = s.on_request(&DiscoveryRequest { type_url: "type.googleapis.com/x.Y".into(), ..Default::default() });
        assert_eq!(out.unknown_type.as_deref(), Some("type.googleapis.com/x.Y"));
    }

    #[test]
    fn proxies_with_the_same_resources_share_one_encoded_body() {
        let snapshot = snap(&[("c1", "endpoints")]);
        let mut a = SotwSession::new();
        let mut b = SotwSession::new();
        a.on_snapshot(snapshot.clone());
        b.on_snapshot(snapshot.clone());
        let ra = a.on_request(&req(ResourceType::Endpoint, &["c1"], "", "")).responses;
        let rb = b.on_request(&req(ResourceType::Endpoint, &["c1"], "", "")).responses;
        assert!(ra[0].shares_body_with(&rb[0]), "one encoding for both proxies");
        // On the wire: the shared fields and this proxy's nonce, decoded as one message.
        let wire = ra[0].to_proto();
        assert_eq!(wire.version_info, ra[0].version());
        assert_eq!(wire.nonce, ra[0].nonce());
        assert_eq!(wire.type_url, ResourceType::Endpoint.type_url());
        assert_eq!(wire.resources.len(), 1);
        assert_eq!(wire.resources[0].value, b"endpoints");
        assert_eq!(ra[0].encoded_len(), wire.encoded_len());
        // The body lives as long as the set, not just while a response is in flight: proxies answered one
        // after another still share one encoding.
        let body = Arc::downgrade(&ra[0].body);
        drop((ra, rb));
        assert!(body.upgrade().is_some());
        let mut c = SotwSession::new();
        c.on_snapshot(snapshot.clone());
        let rc = c.on_request(&req(ResourceType::Endpoint, &["c1"], "", "")).responses;
        assert!(body.upgrade().is_some_and(|b| Arc::ptr_eq(&b, &rc[0].body)));
        // Proxies subscribed to the same part of a set share one encoding too.
        let bigger = snap(&[("c1", "endpoints"), ("c2", "more")]);
        let parts: Vec<SotwResponse> = (0..2)
            .map(|_| {
                let mut s = SotwSession::new();
                s.on_snapshot(bigger.clone());
                s.on_request(&req(ResourceType::Endpoint, &["c1"], "", "")).responses.remove(0)
            })
            .collect();
        assert_eq!(parts[0].len(), 1);
        assert!(parts[0].shares_body_with(&parts[1]));
        assert_eq!(parts[0].to_proto().resources[0].value, b"endpoints");
    }
}
