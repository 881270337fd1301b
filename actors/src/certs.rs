//! The certificate actor: issues service certificates per identity and renews each one before it
//! expires on the schedule of [`certs::rotation`]. Signing runs on the blocking pool, a few at a time,
//! never on the actor thread. Each identity's current certificate is published in the [`CertStore`] as a
//! latest value that the snapshot builder reads directly: the first reader of an identity asks for it
//! there (once, however many ask at once), and a renewal is published there with the renewed identities,
//! which reach the sidecars as a new `service-cert` secret alone (clusters and listeners name the secret,
//! not its content).
//!
//! It also owns the mesh's roots: MeshRootCertificates from the catalog are resolved into a
//! [`TrustSet`] (off the actor thread: a new root may be generated), published on a watch channel to
//! whoever verifies, signs or builds outside the actor (the ADS server; the snapshot actor, for validation
//! contexts); when the signing root changes, every certificate in use is re-issued from the new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use certs::IssuedCert;
use certs::roots::TrustSet;
use certs::rotation::{RenewPolicy, Rotation};
use messages::{MeshRootCertificate, ServiceIdentity};
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;
use tokio::sync::mpsc;

/// Certificates for these identities (issued on first request). One identity that cannot be issued does
/// not hold back the others.
/// An identity's certificate, or why it could not be issued.
pub type CertResult = Result<Arc<IssuedCert>, String>;

/// Each identity's current service certificate as a latest value: written by the certificate actor, read
/// directly by the snapshot builder (no message asks the actor for state). An identity read for the first
/// time is asked of the actor through `wanted`, once: a second reader waits on the same value, so two
/// concurrent readers never both sign. Renewed identities are published on `renewed`, in order.
#[derive(Debug)]
pub struct CertStore {
    slots: std::sync::Mutex<HashMap<ServiceIdentity, watch::Sender<Option<CertResult>>>>,
    wanted: mpsc::UnboundedSender<ServiceIdentity>,
    renewed: mpsc::UnboundedSender<Vec<ServiceIdentity>>,
}

/// The receiving ends of a [`CertStore`]: the identities asked for (the certificate actor's), and the
/// identities renewed (the snapshot actor's).
#[derive(Debug)]
pub struct CertStoreEnds {
    pub wanted: mpsc::UnboundedReceiver<ServiceIdentity>,
    pub renewed: mpsc::UnboundedReceiver<Vec<ServiceIdentity>>,
}

impl CertStore {
    pub fn new() -> (Arc<Self>, CertStoreEnds) {
        let (wanted, wanted_rx) = mpsc::unbounded_channel();
        let (renewed, renewed_rx) = mpsc::unbounded_channel();
        let store = Arc::new(Self { slots: Default::default(), wanted, renewed });
        (store, CertStoreEnds { wanted: wanted_rx, renewed: renewed_rx })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceIdentity, watch::Sender<Option<CertResult>>>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current certificates of `ids`, waiting for those not issued yet.
    pub async fn certificates(
        &self,
        ids: impl IntoIterator<Item = ServiceIdentity>,
    ) -> HashMap<ServiceIdentity, CertResult> {
        let receivers: Vec<(ServiceIdentity, watch::Receiver<Option<CertResult>>)> = {
            let mut slots = self.slots();
            ids.into_iter()
                .map(|id| {
                    let rx = match slots.get(&id) {
                        Some(tx) => tx.subscribe(),
                        None => {
                            let (tx, rx) = watch::channel(None);
                            slots.insert(id.clone(), tx);
                            // Unbounded: a herd of new identities queues here, not in the builder.
                            let _ = self.wanted.send(id.clone());
                            rx
                        }
                    };
                    (id, rx)
                })
                .collect()
        };
        let mut out = HashMap::new();
        for (id, mut rx) in receivers {
            let result = match rx.wait_for(Option::is_some).await {
                Ok(value) => value.clone().unwrap_or_else(|| Err("no certificate".to_owned())),
                Err(_) => Err("the certificate actor stopped".to_owned()),
            };
            out.insert(id, result);
        }
        out
    }

    /// Whether someone still reads `id`'s certificate.
    fn is_wanted(&self, id: &ServiceIdentity) -> bool {
        self.slots().contains_key(id)
    }

    /// Publishes `id`'s certificate (nothing when it was forgotten meanwhile).
    fn publish(&self, id: &ServiceIdentity, cert: Arc<IssuedCert>) {
        if let Some(slot) = self.slots().get(id) {
            slot.send_replace(Some(Ok(cert)));
        }
    }

    /// Tells the readers waiting for `id` why it cannot be issued, and forgets it: the next reader asks
    /// again.
    fn fail(&self, id: &ServiceIdentity, error: String) {
        if let Some(slot) = self.slots().remove(id) {
            slot.send_replace(Some(Err(error)));
        }
    }

    /// Identities nobody reads any more: their certificates are not renewed.
    pub fn forget(&self, ids: &[ServiceIdentity]) {
        let mut slots = self.slots();
        for id in ids {
            slots.remove(id);
        }
    }

    fn renewed(&self, ids: Vec<ServiceIdentity>) {
        let _ = self.renewed.send(ids);
    }
}

/// The certificates in use for these identities (never issues one), `None` when there is none.
#[derive(Message)]
#[rtype(result = "Vec<(ServiceIdentity, Option<CertFacts>)>")]
pub struct CertInfo(pub Vec<ServiceIdentity>);

/// What [`CertInfo`] tells of a certificate (never its key).
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub serial: String,
    pub not_after: SystemTime,
    /// The root of those sidecars trust now that signed it (its common name); `None`: none did.
    pub signed_by: Option<String>,
}

/// The name of the root that signs now.
#[derive(Message)]
#[rtype(result = "String")]
pub struct Signer;

/// Every certificate in use, for the debug server: never keys.
#[derive(Message)]
#[rtype(result = "IssuedList")]
pub struct ListCerts;

/// What [`ListCerts`] answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedList {
    /// The root that signs, and every root trusted.
    pub signer: String,
    pub roots: Vec<String>,
    pub certificates: Vec<IssuedEntry>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedEntry {
    pub identity: String,
    pub common_name: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
    pub expires_in_s: i64,
}

/// How service certificates are issued from now on, from the MeshConfig: their validity (`None`: the
/// command line's) and key. Certificates in use that live longer are renewed when a certificate of the new
/// validity would be; a new key kind re-issues every certificate at once.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct CertSettings {
    pub validity: Option<Duration>,
    pub key: certs::KeyAlgorithm,
}

/// The MeshRootCertificates in the mesh now (all of them; none: the root the controller started with).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRoots(pub Vec<MeshRootCertificate>);

/// Answered once the MRCs told so far are resolved (at once when none were told): the ADS server starts
/// with the roots the mesh directory names, not the startup root for a moment.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RootsSettled;

/// Finds the root an MRC names (loading or creating it; blocking).
pub type RootLoader = Arc<certs::roots::LoadRoot<'static>>;

/// Records the MRCs put in force (for tools; see [`certs::roots::RootStore::record_in_force`]).
pub type RootRecorder = Arc<dyn Fn(&[MeshRootCertificate]) + Send + Sync>;

/// The roots in force, as the certificate actor publishes them.
pub type TrustWatch = watch::Sender<Arc<TrustSet>>;

/// What time it is: the system clock; tests pass the runtime's (paused) clock, so renewals follow it.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Signatures running at once on the blocking pool: enough to use the cores, few enough that a herd of
/// new identities never takes the threads the builds need.
fn signing_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

pub struct CertActor {
    metrics: Arc<Metrics>,
    /// The roots in force (published to `trust_tx` too); new certificates come from its signer.
    trust: Arc<TrustSet>,
    trust_tx: Arc<TrustWatch>,
    /// The root the controller started with, used when no MRC exists.
    startup: Arc<dyn certs::Issuer>,
    load_root: RootLoader,
    record_roots: Option<RootRecorder>,
    /// The last MRCs told, resolved one set at a time in order.
    roots_wanted: Option<Vec<MeshRootCertificate>>,
    resolving: bool,
    /// The first MRCs told have been resolved: from then on a root must be trusted before it signs (the
    /// first set is taken as it is: a controller restarted after a rotation starts on the new root).
    roots_settled: bool,
    /// Who waits for the roots to settle ([`RootsSettled`]).
    settle_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    default_validity: Duration,
    validity: Duration,
    key: certs::KeyAlgorithm,
    cache: HashMap<ServiceIdentity, Arc<IssuedCert>>,
    rotation: Rotation<ServiceIdentity>,
    /// The timer of the next renewal.
    wake: Option<SpawnHandle>,
    signing: Arc<Semaphore>,
    /// Where certificates are published, and the identities asked for there (taken when started).
    store: Arc<CertStore>,
    wanted: Option<mpsc::UnboundedReceiver<ServiceIdentity>>,
    clock: Clock,
}

/// A signed certificate and how long signing took, or why it failed.
type Signed = Result<(IssuedCert, Duration), String>;

/// What a certificate was issued under: the roots (their signer signed it) and the key kind.
#[derive(Clone)]
struct Issuance {
    trust: Arc<TrustSet>,
    key: certs::KeyAlgorithm,
}

/// Identities renewed together: a renewal reaches their sidecars as soon as its group is signed, not once
/// every due certificate is (thousands of RSA keys take minutes).
const RENEWAL_GROUP: usize = 64;

impl CertActor {
    /// Issues from the signer of `trust_tx`'s roots, which it then keeps up to date from the
    /// MeshRootCertificates it is told (`load_root` finds each one's root).
    /// Certificates are published in `store`; `wanted` is the store's queue of identities asked for.
    pub fn new(
        trust_tx: Arc<TrustWatch>,
        load_root: RootLoader,
        validity: Duration,
        metrics: Arc<Metrics>,
        (store, wanted): (Arc<CertStore>, mpsc::UnboundedReceiver<ServiceIdentity>),
    ) -> Self {
        let trust = trust_tx.borrow().clone();
        Self {
            metrics,
            startup: trust.signer().clone(),
            trust,
            trust_tx,
            load_root,
            record_roots: None,
            roots_wanted: None,
            resolving: false,
            roots_settled: false,
            settle_waiters: Vec::new(),
            default_validity: validity,
            validity,
            key: certs::KeyAlgorithm::default(),
            cache: HashMap::new(),
            rotation: Rotation::new(RenewPolicy::default()),
            wake: None,
            signing: Arc::new(Semaphore::new(signing_permits())),
            store,
            wanted: Some(wanted),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// The same, recording each set of MRCs put in force with `record`.
    pub fn with_recorder(self, record: RootRecorder) -> Self {
        Self { record_roots: Some(record), ..self }
    }

    /// The same, reading the time from `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// Signs certificates for `ids` on the blocking pool; resolves to each result, and what they were
    /// issued under.
    fn sign(
        &self,
        ids: Vec<ServiceIdentity>,
    ) -> impl Future<Output = (Issuance, Vec<(ServiceIdentity, Signed)>)> + 'static {
        let issuance = Issuance { trust: self.trust.clone(), key: self.key };
        let jobs = ids.into_iter().map(|id| {
            let (ca, validity, key, signing) =
                (self.trust.signer().clone(), self.validity, self.key, self.signing.clone());
            async move {
                let result = async {
                    let _permit = signing.acquire_owned().await.map_err(|e| e.to_string())?;
                    let id = id.clone();
                    tokio::task::spawn_blocking(move || {
                        let started = std::time::Instant::now();
                        ca.issue_service_with(&id, validity, false, key)
                            .map(|c| (c, started.elapsed()))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| format!("signing task failed: {e}"))?
                }
                .await;
                (id, result)
            }
        });
        futures::FutureExt::map(futures::future::join_all(jobs), move |results| (issuance, results))
    }

    /// Takes a signed certificate into use and schedules its renewal: at once when the roots or the key
    /// kind changed while it was being signed (it must not outlive the root that signed it).
    fn keep(&mut self, id: ServiceIdentity, cert: IssuedCert, took: Duration, under: &Issuance) -> Arc<IssuedCert> {
        self.metrics.cert_issued(took);
        let cert = Arc::new(cert);
        // Scheduled over the validity asked for (from now), not over the backdated start the certificate
        // carries for clock skew.
        let now = (self.clock)();
        let due = self.rotation.issued(id.clone(), now, now + self.validity, cert.jitter_seed());
        tracing::debug!(
            identity = %id,
            serial = %cert.serial,
            renew_in_s = due.duration_since(now).unwrap_or_default().as_secs(),
            "issued service certificate"
        );
        if !under.trust.same_signer(&self.trust) || under.key != self.key {
            self.rotation.renew_by(&id, now);
        }
        self.cache.insert(id.clone(), cert.clone());
        self.store.publish(&id, cert.clone());
        cert
    }

    /// Tells the metrics when the first certificate in use expires.
    fn report_expiry(&self) {
        self.metrics.set_next_cert_expiry(self.cache.values().map(|c| c.not_after).min());
    }

    /// Sleeps until the next renewal is due.
    fn rearm(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.wake.take() {
            ctx.cancel_future(h);
        }
        if let Some(at) = self.rotation.next_due() {
            let wait = at.duration_since((self.clock)()).unwrap_or_default();
            self.wake = Some(ctx.run_later(wait, |act, ctx| {
                act.wake = None;
                act.renew_due(ctx);
            }));
        }
    }

    fn renew_due(&mut self, ctx: &mut Context<Self>) {
        let mut due = self.rotation.take_due((self.clock)());
        // Nobody reads these any more: not renewed, and dropped.
        due.retain(|id| {
            let wanted = self.store.is_wanted(id);
            if !wanted {
                self.rotation.forget(id);
                if self.cache.remove(id).is_some() {
                    tracing::debug!(identity = %id, "certificate no longer needed");
                }
            }
            wanted
        });
        self.report_expiry();
        if due.is_empty() {
            self.rearm(ctx);
            return;
        }
        for group in due.chunks(RENEWAL_GROUP) {
            self.renew(group.to_vec(), ctx);
        }
    }

    /// Renews `ids`; their sidecars get the new certificates once these are signed.
    fn renew(&mut self, ids: Vec<ServiceIdentity>, ctx: &mut Context<Self>) {
        ctx.spawn(self.sign(ids).into_actor(self).map(|(under, results), act, ctx| {
            let mut renewed = Vec::new();
            for (id, result) in results {
                // Forgotten while it was being signed: nobody needs it.
                if !act.store.is_wanted(&id) {
                    act.rotation.forget(&id);
                    act.cache.remove(&id);
                    continue;
                }
                match result {
                    Ok((cert, took)) => {
                        let serial = act.keep(id.clone(), cert, took, &under).serial.clone();
                        tracing::info!(identity = %id, %serial, "renewed service certificate");
                        renewed.push(id);
                    }
                    Err(e) => {
                        // The valid certificate stays in use; retries come before it expires.
                        let now = (act.clock)();
                        let retry_s = act.rotation.failed(id.clone(), now).duration_since(now).unwrap_or_default().as_secs();
                        tracing::error!(identity = %id, error = %e, retry_s, "certificate renewal failed; the current certificate stays in use");
                    }
                }
            }
            act.report_expiry();
            if !renewed.is_empty() {
                act.store.renewed(renewed);
            }
            act.rearm(ctx);
        }));
    }
}

impl CertActor {
    /// Resolves the latest MRCs told (one resolution at a time; later ones wait for it).
    fn resolve_roots(&mut self, ctx: &mut Context<Self>) {
        if self.resolving {
            return;
        }
        let Some(mrcs) = self.roots_wanted.take() else { return };
        self.resolving = true;
        let previous = self.roots_settled.then(|| self.trust.clone());
        let (startup, load, record) = (self.startup.clone(), self.load_root.clone(), self.record_roots.clone());
        let trust_domain = startup.trust_domain().to_owned();
        let work = tokio::task::spawn_blocking(move || {
            let set = certs::roots::resolve(&mrcs, &trust_domain, &startup, load.as_ref(), previous.as_deref())
                .map_err(|e| e.to_string())?;
            // Recorded before anyone is told: a bundle refreshed after a sidecar trusts these roots is
            // issued under them.
            if let Some(record) = record {
                record(&mrcs);
            }
            Ok(set)
        });
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.resolving = false;
            match result.map_err(|e| format!("root resolution failed: {e}")).and_then(|r| r) {
                Ok(set) => {
                    // Only a set in force is what later ones are checked against: a first one that failed
                    // (a root not loadable yet) must not make the roots the mesh names look untrusted.
                    act.roots_settled = true;
                    act.use_roots(Arc::new(set), ctx);
                }
                Err(e) => {
                    act.metrics.error(certs::roots::ROOTS_REFUSED);
                    tracing::error!(
                        error_code = certs::roots::ROOTS_REFUSED,
                        roots = %describe(&act.trust),
                        "the mesh roots stay as they are: {e}"
                    );
                }
            }
            act.resolve_roots(ctx);
            if !act.resolving {
                for w in act.settle_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        }));
    }

    /// Puts a set of roots in force: published, sent to the snapshot actor when what sidecars trust
    /// changed, and every certificate in use re-issued when another root signs.
    fn use_roots(&mut self, set: Arc<TrustSet>, ctx: &mut Context<Self>) {
        let (old, new) = (&self.trust, &set);
        let trust_changed = old.trust_pem() != new.trust_pem();
        let signer_changed = !old.same_signer(new);
        if !trust_changed && !signer_changed {
            return;
        }
        tracing::info!(roots = %describe(new), signer = new.signer_name(), "mesh roots in force");
        self.trust = set.clone();
        // The snapshot actor follows this channel: validation contexts change with what sidecars trust.
        self.trust_tx.send_replace(set.clone());
        if signer_changed {
            tracing::info!(
                certificates = self.cache.len(),
                signer = set.signer_name(),
                "re-issuing every service certificate from the new signing root"
            );
            self.renew_all_now(ctx);
        }
    }

    /// Every certificate in use is due now (another root signs, another key kind).
    fn renew_all_now(&mut self, ctx: &mut Context<Self>) {
        let now = (self.clock)();
        for id in self.cache.keys() {
            self.rotation.renew_by(id, now);
        }
        self.rearm(ctx);
    }
}

/// The roots of a set and their roles, for logs: `a (active), b (passive)`.
fn describe(set: &TrustSet) -> String {
    set.roots().iter().map(|(n, r)| format!("{n} ({r})")).collect::<Vec<_>>().join(", ")
}

impl Actor for CertActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(wanted) = self.wanted.take() {
            ctx.add_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(wanted));
        }
    }
}

/// An identity read for the first time: issued, and published in the store.
impl StreamHandler<ServiceIdentity> for CertActor {
    fn handle(&mut self, id: ServiceIdentity, ctx: &mut Self::Context) {
        ctx.spawn(self.sign(vec![id]).into_actor(self).map(|(under, results), act, ctx| {
            for (id, result) in results {
                match result {
                    Ok((cert, took)) => {
                        act.keep(id, cert, took, &under);
                    }
                    Err(e) => {
                        tracing::error!(identity = %id, error = %e, "cannot issue service certificate");
                        act.store.fail(&id, e);
                    }
                }
            }
            act.report_expiry();
            act.rearm(ctx);
        }));
    }

    /// The store lives as long as the controller; nothing to do when it goes.
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<RootsSettled> for CertActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: RootsSettled, _: &mut Self::Context) -> Self::Result {
        if !self.resolving && self.roots_wanted.is_none() {
            return Box::pin(async {});
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.settle_waiters.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<SetRoots> for CertActor {
    type Result = ();
    fn handle(&mut self, msg: SetRoots, ctx: &mut Self::Context) {
        self.roots_wanted = Some(msg.0);
        self.resolve_roots(ctx);
    }
}

impl Handler<Signer> for CertActor {
    type Result = String;
    fn handle(&mut self, _: Signer, _: &mut Self::Context) -> String {
        self.trust.signer_name().to_owned()
    }
}

impl Handler<ListCerts> for CertActor {
    type Result = MessageResult<ListCerts>;
    fn handle(&mut self, _: ListCerts, _: &mut Self::Context) -> Self::Result {
        let now = (self.clock)();
        let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut certificates: Vec<IssuedEntry> = self
            .cache
            .iter()
            .map(|(id, c)| IssuedEntry {
                identity: id.to_string(),
                common_name: c.common_name.clone(),
                serial: c.serial.clone(),
                not_after: unix(c.not_after),
                expires_in_s: match c.not_after.duration_since(now) {
                    Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
                },
            })
            .collect();
        certificates.sort_by(|a, b| a.identity.cmp(&b.identity));
        MessageResult(IssuedList {
            signer: self.trust.signer_name().to_owned(),
            roots: self.trust.roots().iter().map(|(n, r)| format!("{n} ({r})")).collect(),
            certificates,
        })
    }
}

impl Handler<CertInfo> for CertActor {
    type Result = MessageResult<CertInfo>;
    fn handle(&mut self, msg: CertInfo, _: &mut Self::Context) -> Self::Result {
        let roots = self.trust.trust_pem();
        MessageResult(
            msg.0
                .into_iter()
                .map(|id| {
                    let facts = self.cache.get(&id).map(|c| CertFacts {
                        serial: c.serial.clone(),
                        not_after: c.not_after,
                        signed_by: certs::signed_by(&c.cert_pem, roots),
                    });
                    (id, facts)
                })
                .collect(),
        )
    }
}

impl Handler<CertSettings> for CertActor {
    type Result = ();
    fn handle(&mut self, msg: CertSettings, ctx: &mut Self::Context) {
        if msg.key != self.key {
            tracing::info!(key = %msg.key, certificates = self.cache.len(), "service certificate key changed; re-issuing every certificate");
            self.key = msg.key;
            self.renew_all_now(ctx);
        }
        let validity = msg.validity.unwrap_or(self.default_validity);
        if validity == self.validity {
            return;
        }
        tracing::info!(validity_s = validity.as_secs(), "service certificate validity changed");
        self.validity = validity;
        // A certificate living longer than the new validity is renewed when one of the new validity,
        // issued now, would be.
        let now = (self.clock)();
        let policy = self.rotation.policy();
        for (id, cert) in &self.cache {
            if cert.not_after > now + validity {
                self.rotation.renew_by(id, policy.renew_at(now, now + validity, cert.jitter_seed()));
            }
        }
        self.rearm(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime's clock (paused in these tests) as wall-clock time.
    fn paused_clock() -> Clock {
        tokio::time::pause();
        let (wall, start) = (SystemTime::now(), tokio::time::Instant::now());
        Arc::new(move || wall + start.elapsed())
    }

    /// A certificate actor on a new built-in root, with MRC roots kept in a temporary state directory.
    fn actor(clock: Clock, validity: Duration) -> (CertActor, Arc<CertStore>) {
        let ca: Arc<dyn certs::Issuer> = Arc::new(certs::CertificateAuthority::generate("cluster.local").unwrap());
        let trust = Arc::new(watch::Sender::new(Arc::new(TrustSet::single("startup", ca.clone()))));
        let store = certs::roots::RootStore {
            state_dir: tempfile::tempdir().unwrap().keep(),
            trust_domain: "cluster.local".to_owned(),
            startup: ca,
            create: true,
        };
        let (certs, ends) = CertStore::new();
        let actor = CertActor::new(
            trust,
            Arc::new(move |m| store.load(m)),
            validity,
            Arc::default(),
            (certs.clone(), ends.wanted),
        )
        .with_clock(clock);
        (actor, certs)
    }

    /// Readers of one identity at once share one signing: the store asks the actor once.
    #[actix_rt::test]
    async fn concurrent_readers_of_one_identity_never_both_sign() {
        let (actor, store) = actor(Arc::new(SystemTime::now), Duration::from_secs(3600));
        let metrics = actor.metrics.clone();
        let _certs = actor.start();
        let id = ServiceIdentity::new("sa", "ns");
        let reads = (0..8).map(|_| store.certificates([id.clone()]));
        let serials: std::collections::BTreeSet<String> = futures::future::join_all(reads)
            .await
            .into_iter()
            .map(|m| m[&id].clone().unwrap().serial.clone())
            .collect();
        assert_eq!(serials.len(), 1, "{serials:?}");
        assert!(metrics.encode().contains("osm_cert_issued_count 1\n"), "{}", metrics.encode());
    }

    async fn cert(certs: &CertStore, id: &ServiceIdentity) -> Arc<IssuedCert> {
        certs.certificates([id.clone()]).await[id].clone().unwrap()
    }

    #[actix_rt::test]
    async fn another_key_kind_reissues_every_certificate_in_use() {
        let (actor, store) = actor(paused_clock(), Duration::from_secs(24 * 3600));
        let certs = actor.start();
        let ids = [ServiceIdentity::new("a", "ns"), ServiceIdentity::new("b", "ns")];
        let mut first = Vec::new();
        for id in &ids {
            first.push(cert(&store, id).await);
        }
        let rsa = certs::KeyAlgorithm::Rsa(certs::RsaBits::B2048);
        certs.send(CertSettings { validity: None, key: rsa }).await.unwrap();
        // A guard against hanging, in real time: RSA keys are generated on the blocking pool while the
        // paused clock runs ahead.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        for (id, old) in ids.iter().zip(&first) {
            let renewed = loop {
                assert!(std::time::Instant::now() < deadline, "{id}: never re-issued with the new key kind");
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = cert(&store, id).await;
                if now.serial != old.serial {
                    break now;
                }
            };
            // A PKCS#8 RSA 2048 key is about 1.7 kB of PEM; an ECDSA P-256 one about 240 bytes.
            assert!(old.key_pem.len() < 400 && renewed.key_pem.len() > 1500, "{id}: an RSA key now");
        }
    }

    #[actix_rt::test]
    async fn certificates_are_issued_once_renewed_on_schedule_and_follow_a_shorter_validity() {
        let clock = paused_clock();
        let day = Duration::from_secs(24 * 3600);
        let (actor, store) = actor(clock.clone(), day);
        let certs = actor.start();
        let id = ServiceIdentity::new("sa", "ns");
        let first = cert(&store, &id).await;
        assert_eq!(first.serial, cert(&store, &id).await.serial, "cached");
        // Nothing is renewed in the first two thirds of the day.
        tokio::time::sleep(day * 6 / 10).await;
        assert_eq!(first.serial, cert(&store, &id).await.serial);
        // A minute's validity from now on: the day-long certificate is renewed within half a minute,
        // and the new one every half minute or so.
        certs.send(CertSettings { validity: Some(Duration::from_secs(60)), key: Default::default() }).await.unwrap();
        let mut serials = vec![first.serial.clone()];
        for _ in 0..3 {
            let before = (clock)();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let renewed = loop {
                assert!(std::time::Instant::now() < deadline, "renewal {} never came", serials.len());
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = cert(&store, &id).await;
                if now.serial != *serials.last().unwrap() {
                    break now;
                }
            };
            let waited = (clock)().duration_since(before).unwrap();
            assert!(waited <= Duration::from_secs(31), "{waited:?}");
            assert!(renewed.lifetime() <= Duration::from_secs(120), "a minute (and the backdating)");
            serials.push(renewed.serial.clone());
        }
        assert_eq!(serials.iter().collect::<std::collections::BTreeSet<_>>().len(), 4);
    }
}
