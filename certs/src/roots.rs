//! Which roots the mesh trusts and which one signs, from OSM's MeshRootCertificates (MRCs).
//!
//! A root rotation goes: the old root active → a new root added as passive (sidecars trust both, the old one
//! still signs) → the new one active and the old one passive (leaves are re-issued from the new root; peers
//! holding either kind verify the other) → the old one inactive or deleted (only the new root is trusted).
//! [`TrustSet::new`] applies OSM's rules to the MRCs in use and refuses a change that would break
//! connections: a root that is not trusted yet never starts signing.
//!
//! Data flow: the catalog holds the MRC objects; the certificate actor resolves them into a [`TrustSet`]
//! with a [`RootStore`] and hands it to whatever signs or verifies (service certificates, the snapshot
//! builder's validation contexts, the ADS server); `osm-controller bootstrap` resolves the same set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use messages::{MeshRootCertificate, RootRole};

use crate::{CertError, CertificateAuthority, Issuer, pem_certificates};

/// The Secret of the root the mesh starts with (OSM's `osm-ca-bundle`): an MRC naming it is the root the
/// controller was started with (its state directory, `--ca-cert`, or the cluster's Secret).
pub const STARTUP_ROOT_SECRET: &str = "osm-ca-bundle";

/// Error code of a set of MeshRootCertificates that cannot be put in force (logged with `error_code` and
/// counted); the roots in force stay.
pub use messages::errcode::ROOTS_REFUSED;

/// A root in use and its role.
#[derive(Debug, Clone)]
pub struct Root {
    /// The MRC's `<namespace>/<name>` (or [`STARTUP_ROOT_SECRET`] when no MRC exists).
    pub name: String,
    pub role: RootRole,
    pub issuer: Arc<dyn Issuer>,
}

/// Why a set of MRCs cannot be used (the roots in force stay).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootsError {
    #[error("MeshRootCertificates: none is active or passive (at least one root must be active)")]
    NoneInUse,
    #[error("MeshRootCertificates: {0} is passive and none is active; one root must sign (make one active)")]
    NoneActive(String),
    #[error(
        "MeshRootCertificates: {0} are in use; at most two (the root being retired and the one replacing it): make the others inactive"
    )]
    TooMany(String),
    #[error(
        "MeshRootCertificate {0}: would sign certificates before sidecars trust it; add it as passive first, then make it active"
    )]
    NotTrustedYet(String),
    #[error(
        "MeshRootCertificate {name}: spec.trustDomain {found:?} is not the mesh's ({mesh:?}); rotating the trust domain is not supported"
    )]
    TrustDomain { name: String, found: String, mesh: String },
    #[error("MeshRootCertificate {name}: {reason}")]
    Load { name: String, reason: String },
}

/// The roots in force: the one that signs and every root sidecars trust.
#[derive(Debug, Clone)]
pub struct TrustSet {
    signer: Root,
    /// The certificates of every root in use, each once, the signer's first.
    trust_pem: String,
    roots: Vec<(String, RootRole)>,
}

impl TrustSet {
    /// One root that signs and is the only one trusted.
    pub fn single(name: impl Into<String>, issuer: Arc<dyn Issuer>) -> Self {
        let name = name.into();
        Self {
            trust_pem: issuer.trust_pem().to_owned(),
            roots: vec![(name.clone(), RootRole::Active)],
            signer: Root { name, role: RootRole::Active, issuer },
        }
    }

    /// The set of `roots` (inactive ones are left out), under OSM's rules: one or two roots in use, at
    /// least one active; of two active roots the one that signed in `previous` keeps signing (no flapping),
    /// and a root `previous` did not trust is never active (it enters as passive first).
    pub fn new(roots: Vec<Root>, previous: Option<&TrustSet>) -> Result<Self, RootsError> {
        let mut in_use: Vec<Root> = roots.into_iter().filter(|r| r.role != RootRole::Inactive).collect();
        in_use.sort_by(|a, b| a.name.cmp(&b.name));
        let names = || in_use.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ");
        if in_use.is_empty() {
            return Err(RootsError::NoneInUse);
        }
        if in_use.len() > 2 {
            return Err(RootsError::TooMany(names()));
        }
        let active: Vec<&Root> = in_use.iter().filter(|r| r.role == RootRole::Active).collect();
        let signer = match (active.as_slice(), previous) {
            ([], _) => return Err(RootsError::NoneActive(names())),
            ([one], _) => (*one).clone(),
            ([_, b], Some(p)) if b.issuer.trust_pem() == p.signer.issuer.trust_pem() => (*b).clone(),
            ([a, _], _) => (*a).clone(),
            _ => return Err(RootsError::TooMany(names())),
        };
        // Every active root, not only the one that signs: a new root made active beside the current one
        // would sign as soon as the current one goes, with no passive period for sidecars to trust it.
        if let Some(p) = previous
            && let Some(untrusted) = active.iter().find(|r| !p.trusts(r.issuer.trust_pem()))
        {
            return Err(RootsError::NotTrustedYet(untrusted.name.clone()));
        }
        let mut blocks: Vec<String> = pem_certificates(signer.issuer.trust_pem());
        for r in &in_use {
            for block in pem_certificates(r.issuer.trust_pem()) {
                if !blocks.contains(&block) {
                    blocks.push(block);
                }
            }
        }
        Ok(Self {
            trust_pem: blocks.concat(),
            roots: in_use.iter().map(|r| (r.name.clone(), r.role)).collect(),
            signer,
        })
    }

    /// Who signs new certificates.
    pub fn signer(&self) -> &Arc<dyn Issuer> {
        &self.signer.issuer
    }

    pub fn signer_name(&self) -> &str {
        &self.signer.name
    }

    /// What sidecars and the ADS server trust: every root in use (PEM).
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }

    /// The roots in use and their roles, by name.
    pub fn roots(&self) -> &[(String, RootRole)] {
        &self.roots
    }

    /// Whether every certificate of `pem` is trusted by this set.
    pub fn trusts(&self, pem: &str) -> bool {
        let trusted = pem_certificates(&self.trust_pem);
        pem_certificates(pem).iter().all(|b| trusted.contains(b))
    }

    /// Whether `other` signs with the same root as this set.
    pub fn same_signer(&self, other: &TrustSet) -> bool {
        self.signer.issuer.trust_pem() == other.signer.issuer.trust_pem()
    }
}

/// Finds the root an MRC names (loading it, or creating it where allowed).
pub type LoadRoot<'a> = dyn Fn(&MeshRootCertificate) -> Result<Arc<dyn Issuer>, String> + Send + Sync + 'a;

/// Resolves MeshRootCertificates into the roots in force. No MRC at all: `startup` alone.
pub fn resolve(
    mrcs: &[MeshRootCertificate],
    trust_domain: &str,
    startup: &Arc<dyn Issuer>,
    load: &LoadRoot<'_>,
    previous: Option<&TrustSet>,
) -> Result<TrustSet, RootsError> {
    if mrcs.is_empty() {
        return Ok(TrustSet::single(STARTUP_ROOT_SECRET, startup.clone()));
    }
    let mut roots = Vec::new();
    for m in mrcs {
        let name = format!("{}/{}", m.namespace, m.name);
        if !m.trust_domain.is_empty() && m.trust_domain != trust_domain {
            return Err(RootsError::TrustDomain { name, found: m.trust_domain.clone(), mesh: trust_domain.to_owned() });
        }
        if m.role == RootRole::Inactive {
            continue;
        }
        let issuer = load(m).map_err(|reason| RootsError::Load { name: name.clone(), reason })?;
        roots.push(Root { name, role: m.role, issuer });
    }
    TrustSet::new(roots, previous)
}

/// Where the roots MRCs name are kept on a machine: the startup root for [`STARTUP_ROOT_SECRET`], any
/// other Secret's root in `<state-dir>/roots/<namespace>.<name>/` (created by the controller the first time
/// an MRC names it, then kept, so a restart resolves the same roots).
#[derive(Debug, Clone)]
pub struct RootStore {
    pub state_dir: PathBuf,
    pub trust_domain: String,
    pub startup: Arc<dyn Issuer>,
    /// Create a root that does not exist yet (the controller); tools only read.
    pub create: bool,
}

/// Where the controller records the MeshRootCertificates it put in force, in its state directory.
const IN_FORCE_FILE: &str = "in-force.json";

impl RootStore {
    /// Records the MRCs the controller put in force, so tools (`osm-controller bootstrap`) issue from and
    /// trust exactly what the controller does, whatever the mesh directory holds meanwhile (a set the
    /// controller refused, a file being edited).
    pub fn record_in_force(&self, mrcs: &[MeshRootCertificate]) -> Result<(), CertError> {
        let dir = self.state_dir.join("roots");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let text = serde_json::to_string_pretty(mrcs).map_err(|e| CertError::BadCa { reason: e.to_string() })?;
        let tmp = dir.join(format!(".{IN_FORCE_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, dir.join(IN_FORCE_FILE)).map_err(io(&dir.join(IN_FORCE_FILE)))
    }

    /// The roots in force as the controller last recorded them (the startup root when it recorded none).
    pub fn in_force(&self) -> Result<TrustSet, RootsError> {
        let path = self.state_dir.join("roots").join(IN_FORCE_FILE);
        let mrcs: Vec<MeshRootCertificate> = match crate::read_pem_file(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| RootsError::Load { name: path.display().to_string(), reason: e.to_string() })?,
            Err(CertError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(RootsError::Load { name: path.display().to_string(), reason: e.to_string() }),
        };
        self.trust_set(&mrcs, None)
    }

    pub fn dir_of(state_dir: &Path, secret: &(String, String)) -> PathBuf {
        state_dir.join("roots").join(format!("{}.{}", secret.0, secret.1))
    }

    /// The roots `mrcs` put in force (see [`resolve`]).
    pub fn trust_set(&self, mrcs: &[MeshRootCertificate], previous: Option<&TrustSet>) -> Result<TrustSet, RootsError> {
        resolve(mrcs, &self.trust_domain, &self.startup, &|m| self.load(m), previous)
    }

    pub fn load(&self, mrc: &MeshRootCertificate) -> Result<Arc<dyn Issuer>, String> {
        if mrc.secret.1 == STARTUP_ROOT_SECRET {
            return Ok(self.startup.clone());
        }
        let dir = Self::dir_of(&self.state_dir, &mrc.secret);
        let ca = if self.create {
            CertificateAuthority::load_or_create(&dir, &self.trust_domain)
        } else {
            CertificateAuthority::load(&dir, &self.trust_domain).map_err(|e| match e {
                CertError::NoCa(_) => CertError::BadCa {
                    reason: format!(
                        "its root ({}) does not exist yet: the controller creates it when it first reads this \
                         MeshRootCertificate",
                        dir.display()
                    ),
                },
                e => e,
            })
        };
        ca.map(|ca| Arc::new(ca) as Arc<dyn Issuer>).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str, role: RootRole, ca: &Arc<dyn Issuer>) -> Root {
        Root { name: name.to_owned(), role, issuer: ca.clone() }
    }

    fn ca() -> Arc<dyn Issuer> {
        Arc::new(CertificateAuthority::generate("cluster.local").unwrap())
    }

    #[test]
    fn a_rotation_trusts_both_roots_while_it_runs_and_signs_with_the_active_one() {
        let (old, new) = (ca(), ca());
        let start = TrustSet::single("old", old.clone());
        // Step 2: the new root is passive: trusted, not signing.
        let both = TrustSet::new(
            vec![root("old", RootRole::Active, &old), root("new", RootRole::Passive, &new)],
            Some(&start),
        )
        .unwrap();
        assert_eq!(both.signer_name(), "old");
        assert!(both.trusts(old.trust_pem()) && both.trusts(new.trust_pem()));
        // Step 3: both active: the signer does not change (no flapping), whatever the names' order.
        let step3 =
            TrustSet::new(vec![root("new", RootRole::Active, &new), root("old", RootRole::Active, &old)], Some(&both))
                .unwrap();
        assert_eq!(step3.signer_name(), "old");
        // Step 4: the new one signs; the old one is still trusted.
        let step4 = TrustSet::new(
            vec![root("old", RootRole::Passive, &old), root("new", RootRole::Active, &new)],
            Some(&step3),
        )
        .unwrap();
        assert_eq!(step4.signer_name(), "new");
        assert!(step4.trusts(old.trust_pem()));
        assert_eq!(pem_certificates(step4.trust_pem()).len(), 2);
        assert!(pem_certificates(step4.trust_pem())[0] == pem_certificates(new.trust_pem())[0], "the signer's first");
        // Step 5: the old one is retired.
        let end = TrustSet::new(
            vec![root("old", RootRole::Inactive, &old), root("new", RootRole::Active, &new)],
            Some(&step4),
        )
        .unwrap();
        assert!(!end.trusts(old.trust_pem()));
        assert_eq!(end.trust_pem(), new.trust_pem());
    }

    #[test]
    fn changes_that_would_break_connections_are_refused() {
        let (old, new, third) = (ca(), ca(), ca());
        let start = TrustSet::single("old", old.clone());
        // Straight to the new root: it would sign before anyone trusts it.
        let e = TrustSet::new(vec![root("new", RootRole::Active, &new)], Some(&start)).unwrap_err();
        assert_eq!(e, RootsError::NotTrustedYet("new".to_owned()));
        assert!(e.to_string().contains("add it as passive first"), "{e}");
        // Nor active beside the current root: deleting the current one next would make it sign with no
        // passive period.
        let e =
            TrustSet::new(vec![root("old", RootRole::Active, &old), root("new", RootRole::Active, &new)], Some(&start))
                .unwrap_err();
        assert_eq!(e, RootsError::NotTrustedYet("new".to_owned()));
        // At start (nothing before) the MRCs are taken as they are: a restart after a rotation.
        assert_eq!(TrustSet::new(vec![root("new", RootRole::Active, &new)], None).unwrap().signer_name(), "new");
        let e = TrustSet::new(vec![root("new", RootRole::Passive, &new)], Some(&start)).unwrap_err();
        assert!(matches!(e, RootsError::NoneActive(_)), "{e}");
        let e = TrustSet::new(
            vec![
                root("a", RootRole::Active, &old),
                root("b", RootRole::Passive, &new),
                root("c", RootRole::Passive, &third),
            ],
            Some(&start),
        )
        .unwrap_err();
        assert!(e.to_string().contains("a, b, c are in use"), "{e}");
        assert_eq!(TrustSet::new(vec![root("a", RootRole::Inactive, &old)], None).unwrap_err(), RootsError::NoneInUse);
    }

    #[test]
    fn the_store_keeps_a_root_per_secret_and_tools_never_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let startup = ca();
        let mut store = RootStore {
            state_dir: dir.path().to_owned(),
            trust_domain: "cluster.local".to_owned(),
            startup: startup.clone(),
            create: false,
        };
        let mrc = |secret: &str| MeshRootCertificate {
            namespace: "osm-system".into(),
            name: "mrc".into(),
            role: RootRole::Active,
            trust_domain: String::new(),
            secret: ("osm-system".into(), secret.into()),
        };
        assert_eq!(store.load(&mrc(STARTUP_ROOT_SECRET)).unwrap().trust_pem(), startup.trust_pem());
        let e = store.load(&mrc("next")).unwrap_err();
        assert!(e.contains("does not exist yet"), "{e}");
        store.create = true;
        let created = store.load(&mrc("next")).unwrap();
        assert_eq!(store.load(&mrc("next")).unwrap().trust_pem(), created.trust_pem(), "kept");
        store.create = false;
        assert_eq!(store.load(&mrc("next")).unwrap().trust_pem(), created.trust_pem());
        assert!(dir.path().join("roots/osm-system.next/ca.crt").exists());
        // What tools use is what the controller recorded, not what the directory says now.
        assert_eq!(store.in_force().unwrap().signer_name(), STARTUP_ROOT_SECRET, "nothing recorded yet");
        store.record_in_force(&[mrc("next")]).unwrap();
        assert_eq!(store.in_force().unwrap().trust_pem(), created.trust_pem());
    }
}
