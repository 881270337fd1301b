//! Certificates for the mesh: issuers (the built-in CA, a CA brought from files), leaf issuance, the mesh's
//! roots and their rotation, certificate inspection.
//!
//! Data flow: the certificate actor resolves the mesh's roots ([`roots::TrustSet`]) and issues each service
//! identity's certificate from the signing one ([`Issuer::issue_service`]); the snapshot builder (`xds`)
//! sends it and the trusted roots to sidecars as SDS secrets. The sidecar bootstrap (`sidecar`) uses
//! [`Issuer::issue_proxy_client`] for the xDS client certificate that names the proxy, and the ADS server
//! uses [`Issuer::issue_server`] plus [`peer_common_name`] to know who connected.

pub mod roots;
pub mod rotation;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use messages::{ProxyId, ServiceIdentity};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Common name of the built-in root, as OSM names it.
pub const CA_COMMON_NAME: &str = "osm-ca.openservicemesh.io";
pub const CA_ORGANIZATION: &str = "Open Service Mesh";
/// Root and internal certificates (xDS server, proxy client) live ten years, as in OSM.
pub const LONG_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);
/// Service certificates default to 24 hours.
pub const DEFAULT_SERVICE_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Allow for clocks that run slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(60);

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file the controller will not read: not a regular file, or larger than any certificate or key.
    #[error("{path}: {reason}")]
    FileRefused { path: PathBuf, reason: String },
    #[error(
        "{path}: the persisted CA is unusable: {reason} (hint: move the state directory's ca.crt/ca.key away to create a new root)"
    )]
    BadPersistedCa { path: PathBuf, reason: String },
    #[error("the mesh CA is unusable: {reason}")]
    BadCa { reason: String },
    #[error(
        "{0}: no mesh CA here (ca.crt, ca.key) (hint: pass the controller's --state-dir; the controller creates the CA when it first starts)"
    )]
    NoCa(PathBuf),
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate has no common name")]
    NoCommonName,
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
}

/// A leaf certificate and its private key, PEM encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub common_name: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedCert {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("common_name", &self.common_name)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// A number derived from the serial, to spread the renewals of certificates issued together (see
    /// [`rotation::RenewPolicy::renew_at`]).
    pub fn jitter_seed(&self) -> u64 {
        self.serial.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }
}

/// The mesh's certificate authority: the built-in root (ECDSA P-256), or one brought from files or a
/// Kubernetes Secret (RSA or ECDSA, a root or an intermediate followed by its chain).
pub struct CertificateAuthority {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// What sidecars trust: every certificate of the CA's file (the signing CA and its chain).
    cert_pem: String,
    /// The signing CA and its chain short of a self-signed root (nothing when the root signs), sent after
    /// every issued certificate so a peer that trusts only the root can verify it.
    chain_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> Result<SerialNumber, CertError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| CertError::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and not zero-led
    Ok(SerialNumber::from_slice(&bytes))
}

/// Parameters with the subject every mesh certificate carries: the CN and the mesh's organization.
fn params_for(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    params
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CertificateAuthority {
    /// A new self-signed root.
    pub fn generate(trust_domain: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = params_for(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + LONG_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            chain_pem: String::new(),
            issuer: rcgen::Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Loads the root persisted in `state_dir`, or creates and persists one, so a restart keeps the same root
    /// and running sidecars keep trusting the controller.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        match Self::load(state_dir, trust_domain) {
            Err(CertError::NoCa(_)) => {}
            // One file of the pair: perhaps another process is creating the root this very moment.
            Err(CertError::BadPersistedCa { .. })
                if state_dir.join(CA_KEY_FILE).exists() != state_dir.join(CA_CERT_FILE).exists() =>
            {
                return Self::wait_for_other(state_dir, trust_domain);
            }
            loaded => return loaded,
        }
        let ca = Self::generate(trust_domain)?;
        fs::create_dir_all(state_dir).map_err(|source| CertError::Io { path: state_dir.to_owned(), source })?;
        // Each file is written in full and synced under a temporary name, then linked into place: a crash
        // never leaves a half-written key, and linking (unlike renaming) fails if another process got there
        // first, so two controllers starting together agree on one root instead of mixing two.
        let key_tmp = write_temp(state_dir, CA_KEY_FILE, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
        let cert_tmp = write_temp(state_dir, CA_CERT_FILE, ca.cert_pem.as_bytes(), 0o644)?;
        let key_path = state_dir.join(CA_KEY_FILE);
        let linked = fs::hard_link(&key_tmp, &key_path);
        let result = match linked {
            Ok(()) => fs::hard_link(&cert_tmp, state_dir.join(CA_CERT_FILE))
                .map_err(|source| CertError::Io { path: state_dir.join(CA_CERT_FILE), source }),
            Err(e) => Err(CertError::Io { path: key_path, source: e }),
        };
        let _ = fs::remove_file(&key_tmp);
        let _ = fs::remove_file(&cert_tmp);
        match result {
            Ok(()) => {
                sync_dir(state_dir)?;
                tracing::info!(path = %state_dir.display(), "created a new mesh root certificate");
                Ok(ca)
            }
            Err(CertError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another process created the root meanwhile: use it once both of its files are in place.
                Self::wait_for_other(state_dir, trust_domain)
            }
            Err(e) => Err(e),
        }
    }

    /// Loads a root another process is creating right now.
    fn wait_for_other(state_dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let mut last = None;
        for _ in 0..50 {
            match Self::load(state_dir, trust_domain) {
                Ok(ca) => return Ok(ca),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| CertError::NoCa(state_dir.to_owned())))
    }

    /// Loads the root persisted in `state_dir`; never creates one (a tool run from the wrong directory must
    /// not quietly start a second mesh).
    pub fn load(state_dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        if !cert_path.exists() && !key_path.exists() {
            return Err(CertError::NoCa(state_dir.to_owned()));
        }
        let read = |p: &Path| read_pem_file(p);
        let bad = |reason: String| CertError::BadPersistedCa { path: state_dir.to_owned(), reason };
        for (have, missing) in [(&cert_path, CA_KEY_FILE), (&key_path, CA_CERT_FILE)] {
            if have.exists() && !state_dir.join(missing).exists() {
                return Err(bad(format!(
                    "{} is there but {missing} is not (an interrupted first start, or a file moved away)",
                    have.display()
                )));
            }
        }
        warn_if_exposed(&key_path);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let names = (cert_path.display().to_string(), key_path.display().to_string());
        Self::checked(&cert_pem, &key_pem, trust_domain, &names).map_err(bad)
    }

    /// A root from its certificate and key (PEM), checked as [`CertificateAuthority::load`] checks files:
    /// the key must be the certificate's, the certificate a CA, valid now. `names` say where the
    /// certificate and the key came from, for errors (keys of a Kubernetes Secret, say).
    pub fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        trust_domain: &str,
        names: &(String, String),
    ) -> Result<Self, CertError> {
        Self::checked(cert_pem, key_pem, trust_domain, names).map_err(|reason| CertError::BadCa { reason })
    }

    /// A CA brought from files: the signing CA's certificate (PEM; an intermediate may be followed by its
    /// chain up to the root) and its private key (PEM, PKCS#8, RSA or ECDSA). Checked as
    /// [`CertificateAuthority::from_pem`] checks; errors name the file.
    pub fn from_files(cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let read = |p: &Path| read_pem_file(p);
        let (cert_pem, key_pem) = (read(cert_path)?, read(key_path)?);
        warn_if_exposed(key_path);
        let names = (cert_path.display().to_string(), key_path.display().to_string());
        Self::from_pem(&cert_pem, &key_pem, trust_domain, &names)
    }

    /// The pair checked; `names` (certificate, key) say where each came from.
    fn checked(cert_pem: &str, key_pem: &str, trust_domain: &str, names: &(String, String)) -> Result<Self, String> {
        let (cert_name, key_name) = names;
        let key = parse_key(key_pem).map_err(|e| format!("{key_name}: {e}"))?;
        // The key must be the certificate's: otherwise every certificate issued would fail to verify, and
        // every sidecar's TLS with it, while the controller looked healthy.
        let der = pem_to_der(cert_pem).map_err(|e| format!("{cert_name}: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("{cert_name}: {e}"))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(format!(
                "{key_name} does not belong to {cert_name}: their public keys differ (restore the matching pair)"
            ));
        }
        if !cert.is_ca() {
            return Err(format!("{cert_name} is not a CA certificate"));
        }
        if !cert.validity().is_valid() {
            return Err(format!(
                "{cert_name} is not valid now (valid from {} to {})",
                cert.validity().not_before,
                cert.validity().not_after
            ));
        }
        let blocks = pem_certificates(cert_pem);
        let issuer = rcgen::Issuer::from_ca_cert_pem(blocks.first().map_or(cert_pem, String::as_str), key)
            .map_err(|e| format!("{cert_name}: {e}"))?;
        // What a peer needs besides its root: the signing CA (unless it is the root) and the chain after it,
        // short of the root (a self-signed last certificate).
        let mut chain: &[String] = &blocks;
        if let Some(last) = chain.last()
            && is_self_signed(last)
        {
            chain = &chain[..chain.len() - 1];
        }
        Ok(Self { issuer, cert_pem: blocks.concat(), chain_pem: chain.concat(), trust_domain: trust_domain.to_owned() })
    }

    /// The root's private key (PEM), for keeping it where replicas share it (a Kubernetes Secret).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

/// A name a leaf certificate is issued for (a subject alternative name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectName {
    Dns(String),
    Uri(String),
    Ip(std::net::IpAddr),
}

/// The key of a leaf certificate: ECDSA P-256 (the default: small and fast), or RSA of 2048, 3072 or 4096
/// bits for peers that need RSA (OSM's MeshConfig `certificate.certKeyBitSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa(RsaBits),
}

/// An RSA key size the mesh issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RsaBits {
    B2048,
    B3072,
    B4096,
}

impl RsaBits {
    /// The size of `bits`, if it is one the mesh issues.
    pub fn new(bits: u32) -> Option<Self> {
        match bits {
            2048 => Some(Self::B2048),
            3072 => Some(Self::B3072),
            4096 => Some(Self::B4096),
            _ => None,
        }
    }

    pub fn bits(self) -> usize {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
            Self::B4096 => 4096,
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::Rsa(b) => write!(f, "RSA {}", b.bits()),
        }
    }
}

/// A new private key of `alg`. RSA keys are generated here (ring, which signs, cannot generate them).
fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, CertError> {
    match alg {
        KeyAlgorithm::EcdsaP256 => Ok(KeyPair::generate()?),
        KeyAlgorithm::Rsa(bits) => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits.bits())
                .map_err(|e| CertError::KeyGeneration(e.to_string()))?;
            let der = key.to_pkcs8_der().map_err(|e| CertError::KeyGeneration(e.to_string()))?;
            // Parsed as PKCS#8 RSA: signs with RSA PKCS#1 v1.5 SHA-256.
            Ok(KeyPair::try_from(der.as_bytes())?)
        }
    }
}

/// What to sign: the subject's common name, its alternative names, how long it lives and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    pub common_name: String,
    pub names: Vec<SubjectName>,
    pub validity: Duration,
    pub key: KeyAlgorithm,
}

/// Whatever signs the mesh's certificates: the built-in CA or one brought from files today; an external
/// issuer (Vault, cert-manager) implements [`Issuer::issue`] and [`Issuer::trust_pem`] and every caller
/// (service certificates, sidecar bootstraps, the ADS server) uses it unchanged.
pub trait Issuer: Send + Sync + std::fmt::Debug {
    /// What a peer trusts to verify the certificates this issuer signs (PEM): its root, or the file of
    /// certificates brought with it.
    fn trust_pem(&self) -> &str;

    fn trust_domain(&self) -> &str;

    /// Signs a leaf certificate (client and server use) with a new key.
    fn issue(&self, request: &LeafRequest) -> Result<IssuedCert, CertError>;

    /// The certificate of a service identity: CN and DNS SAN `<sa>.<ns>.<td>`, plus the SPIFFE URI SAN when
    /// asked for.
    fn issue_service(
        &self,
        identity: &ServiceIdentity,
        validity: Duration,
        spiffe: bool,
    ) -> Result<IssuedCert, CertError> {
        self.issue_service_with(identity, validity, spiffe, KeyAlgorithm::default())
    }

    /// [`Issuer::issue_service`] with a key of `key`.
    fn issue_service_with(
        &self,
        identity: &ServiceIdentity,
        validity: Duration,
        spiffe: bool,
        key: KeyAlgorithm,
    ) -> Result<IssuedCert, CertError> {
        let principal = identity.principal(self.trust_domain());
        let mut names = vec![SubjectName::Dns(principal.clone())];
        if spiffe {
            names.push(SubjectName::Uri(identity.spiffe_id(self.trust_domain())));
        }
        self.issue(&LeafRequest { common_name: principal, names, validity, key })
    }

    /// The xDS client certificate of one sidecar: CN `<uuid>.sidecar.<sa>.<ns>.<td>`.
    fn issue_proxy_client(&self, proxy: &ProxyId, validity: Duration) -> Result<IssuedCert, CertError> {
        let cn = proxy.common_name(self.trust_domain());
        // The URI is what identifies the sidecar (see `ProxyId`); the CN is kept for people reading it.
        let names = vec![SubjectName::Dns(cn.clone()), SubjectName::Uri(proxy.uri(self.trust_domain()))];
        self.issue(&LeafRequest { common_name: cn, names, validity, key: KeyAlgorithm::default() })
    }

    /// A server certificate (the ADS server: CN `ads.<td>`); DNS names and IP addresses become SANs.
    fn issue_server(&self, cn: &str, names: &[String], validity: Duration) -> Result<IssuedCert, CertError> {
        let names = std::iter::once(cn)
            .chain(names.iter().map(String::as_str))
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SubjectName::Ip(ip),
                Err(_) => SubjectName::Dns(n.to_owned()),
            })
            .collect();
        self.issue(&LeafRequest { common_name: cn.to_owned(), names, validity, key: KeyAlgorithm::default() })
    }
}

impl Issuer for CertificateAuthority {
    fn trust_pem(&self) -> &str {
        &self.cert_pem
    }

    fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    fn issue(&self, request: &LeafRequest) -> Result<IssuedCert, CertError> {
        let validity = request.validity;
        if validity.is_zero() || validity > LONG_VALIDITY {
            return Err(CertError::Validity(validity));
        }
        let key = generate_key(request.key)?;
        let mut params = params_for(&request.common_name);
        params.subject_alt_names = request
            .names
            .iter()
            .map(|n| {
                Ok(match n {
                    SubjectName::Dns(d) => SanType::DnsName(d.clone().try_into()?),
                    SubjectName::Uri(u) => SanType::URI(u.clone().try_into()?),
                    SubjectName::Ip(ip) => SanType::IpAddress(*ip),
                })
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        let now = SystemTime::now();
        let not_before = now - BACKDATE;
        let not_after = now + validity;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            common_name: request.common_name.clone(),
            cert_pem: cert.pem() + &self.chain_pem,
            key_pem: key.serialize_pem(),
            serial: serial_hex,
            not_before,
            not_after,
        })
    }
}

/// The common name of the ADS server certificate.
pub fn ads_server_common_name(trust_domain: &str) -> String {
    format!("ads.{trust_domain}")
}

/// Writes `contents` in full and syncs it, under a temporary name next to `name`; returns that path.
fn write_temp(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, CertError> {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let path = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let io = |source| CertError::Io { path: path.clone(), source };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(path)
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| CertError::Io { path: dir.to_owned(), source })
}

/// The most a certificate, chain or key file may hold: far beyond any real one (a chain of a few dozen
/// certificates), small enough that a file pointing at `/dev/zero` or a log cannot exhaust memory.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads a PEM file the controller was pointed at: a regular file (not a device, a FIFO or a directory,
/// which could block or never end) of at most [`MAX_PEM_FILE`] bytes; the limit holds even if the file
/// grows while it is read.
pub fn read_pem_file(path: &Path) -> Result<String, CertError> {
    use std::io::Read as _;
    let refused = |reason: String| CertError::FileRefused { path: path.to_owned(), reason };
    let io = |source| CertError::Io { path: path.to_owned(), source };
    // Checked before opening: opening a FIFO for reading blocks until someone writes.
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(refused("not a regular file (a certificate or key file is expected)".to_owned()));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(refused(format!("{} bytes; a certificate or key file holds at most {MAX_PEM_FILE}", meta.len())));
    }
    let mut text = String::new();
    let read = fs::File::open(path).and_then(|f| f.take(MAX_PEM_FILE + 1).read_to_string(&mut text));
    match read {
        Ok(n) if n as u64 > MAX_PEM_FILE => Err(refused(format!(
            "grew past {MAX_PEM_FILE} bytes while read; a certificate or key file holds at most that"
        ))),
        Ok(_) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(refused("not text (PEM is expected)".to_owned())),
        Err(e) => Err(io(e)),
    }
}

/// A CA key others can read or write is a mesh anyone on the machine can impersonate: say so.
fn warn_if_exposed(key_path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %key_path.display(), mode = %format!("{mode:o}"),
                "the mesh CA key is accessible to other users; run chmod 600 on it"
            );
        }
    }
}

/// The subject common name of a DER certificate (the leaf a peer presented).
pub fn peer_common_name(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or(CertError::NoCommonName)?
        .as_str()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(cn.to_owned())
}

/// The serial number of a DER certificate, in hex (as `IssuedCert::serial`).
pub fn serial_of(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(hex(cert.raw_serial()))
}

/// The URI SANs of a DER certificate.
pub fn peer_uris(der: &[u8]) -> Result<Vec<String>, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let sans = cert.subject_alternative_name().map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(sans
        .into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

/// Which certificate of `roots_pem` (a bundle) issued `cert_pem` directly (its name is the issuer's and
/// its key verifies the signature), by its subject common name (or whole subject); `None` when none did.
/// Service certificates are issued by a mesh root itself, so this is their whole chain.
pub fn signed_by(cert_pem: &str, roots_pem: &str) -> Option<String> {
    let leaf_der = pem_to_der(cert_pem).ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).ok()?;
    pem_certificates(roots_pem).iter().find_map(|root_pem| {
        let der = pem_to_der(root_pem).ok()?;
        let (_, root) = x509_parser::parse_x509_certificate(&der).ok()?;
        if leaf.issuer() != root.subject() || leaf.verify_signature(Some(root.public_key())).is_err() {
            return None;
        }
        let cn = root.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_owned);
        Some(cn.unwrap_or_else(|| root.subject().to_string()))
    })
}

/// A private key from PEM. Only PKCS#8 is read; the other forms `openssl` writes get the command that
/// converts them.
fn parse_key(pem: &str) -> Result<KeyPair, String> {
    let convert = "convert it with: openssl pkcs8 -topk8 -nocrypt -in <key> -out <key>.pk8";
    if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return Err(format!("the key is in PKCS#1 form (BEGIN RSA PRIVATE KEY); PKCS#8 is needed: {convert}"));
    }
    if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        return Err(format!("the key is in SEC1 form (BEGIN EC PRIVATE KEY); PKCS#8 is needed: {convert}"));
    }
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("the key is encrypted; give it unencrypted (openssl pkcs8 -in <key> -out <plain>)".to_owned());
    }
    KeyPair::from_pem(pem).map_err(|e| {
        // The signer refuses RSA keys under 2048 bits with a vague parse error: name the size instead.
        use rsa::pkcs8::DecodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        if let Ok(rsa) = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            && rsa.size() * 8 < 2048
        {
            return format!(
                "an RSA key of {} bits is too weak: use 2048 bits or more (or ECDSA P-256)",
                rsa.size() * 8
            );
        }
        format!("not a usable private key ({e}); PEM PKCS#8 with an RSA (2048 bits or more) or ECDSA P-256/P-384 key")
    })
}

/// The certificates of a PEM text, each block as it was written (other blocks are left out).
fn pem_certificates(pem: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// Whether a certificate (PEM) names itself as its issuer.
fn is_self_signed(pem: &str) -> bool {
    pem_to_der(pem)
        .ok()
        .and_then(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some(c.subject() == c.issuer())
        })
        .unwrap_or(false)
}

/// Decodes the first certificate of a PEM string to DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CertError::Parse(e.to_string()))?;
    Ok(p.contents)
}

#[cfg(test)]
mod tests;
