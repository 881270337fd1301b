//! The certificate authority's unit tests.

use super::*;
use messages::ProxyUuid;

/// Runs openssl in `dir` (the suite's setup installs it): CA material as users bring it.
fn openssl(dir: &Path, args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether openssl verifies `leaf` (with its chain) against `root`.
fn verifies(dir: &Path, root: &str, leaf_pem: &str) -> bool {
    fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
    // The leaf file holds the leaf and its chain: openssl takes the chain as untrusted.
    std::process::Command::new("openssl")
        .args(["verify", "-CAfile", root, "-untrusted", "leaf.pem", "leaf.pem"])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

const CA_EXT: &str = "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign";

#[test]
fn a_root_brought_from_files_signs_rsa_or_ecdsa_and_an_intermediate_sends_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = ServiceIdentity::new("sa", "ns");
    for (name, keygen) in [
        ("rsa", "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key"),
        ("ec", "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key"),
    ] {
        openssl(d, keygen);
        openssl(d, &format!("req -x509 -new -key {name}.key -subj /CN=byo-{name} -days 30 -out {name}.crt {CA_EXT}"));
        let ca = CertificateAuthority::from_files(
            &d.join(format!("{name}.crt")),
            &d.join(format!("{name}.key")),
            "cluster.local",
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let leaf = ca.issue_service(&id, Duration::from_secs(3600), false).unwrap();
        assert!(verifies(d, &format!("{name}.crt"), &leaf.cert_pem), "{name}: the leaf chains to the root");
        assert_eq!(pem_certificates(&leaf.cert_pem).len(), 1, "a root sends no chain");
    }
    // An intermediate signed by the RSA root, given with its chain: leaves carry the intermediate.
    openssl(d, "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out int.key");
    openssl(d, "req -new -key int.key -subj /CN=byo-intermediate -out int.csr");
    fs::write(d.join("int.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n").unwrap();
    openssl(
        d,
        "x509 -req -in int.csr -CA rsa.crt -CAkey rsa.key -CAcreateserial -days 30 -extfile int.ext -out int.crt",
    );
    let chain = fs::read_to_string(d.join("int.crt")).unwrap() + &fs::read_to_string(d.join("rsa.crt")).unwrap();
    fs::write(d.join("chain.crt"), chain).unwrap();
    let ca = CertificateAuthority::from_files(&d.join("chain.crt"), &d.join("int.key"), "cluster.local").unwrap();
    let leaf = ca.issue_service(&id, Duration::from_secs(3600), false).unwrap();
    assert_eq!(pem_certificates(&leaf.cert_pem).len(), 2, "leaf and intermediate");
    assert!(verifies(d, "rsa.crt", &leaf.cert_pem), "the leaf chains to the root through the intermediate");
    assert_eq!(pem_certificates(ca.root_pem()).len(), 2, "sidecars trust the whole file");
}

#[test]
fn rsa_leaf_keys_of_each_size_chain_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
    let id = ServiceIdentity::new("sa", "ns");
    for bits in [2048, 3072] {
        let key = KeyAlgorithm::Rsa(RsaBits::new(bits).unwrap());
        let leaf = ca.issue_service_with(&id, Duration::from_secs(3600), false, key).unwrap();
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(verifies(dir.path(), "ca.crt", &leaf.cert_pem), "RSA {bits} leaf chains to the root");
        let der = pem_to_der(&leaf.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let public = cert.public_key().parsed().unwrap();
        assert_eq!(public.key_size(), bits as usize, "an RSA key of {bits} bits");
    }
    assert_eq!(RsaBits::new(1024), None, "too weak: not issued");
}

#[test]
fn bad_ca_files_are_refused_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out a.key");
    openssl(d, "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out b.key");
    openssl(d, &format!("req -x509 -new -key a.key -subj /CN=a -days 30 -out a.crt {CA_EXT}"));
    openssl(
        d,
        "req -x509 -new -key a.key -subj /CN=leaf -days 30 -out leaf.crt -addext basicConstraints=critical,CA:FALSE",
    );
    openssl(d, "ec -in a.key -out sec1.key");
    fs::write(d.join("junk.crt"), "not a certificate\n").unwrap();
    let err = |cert: &str, key: &str| {
        CertificateAuthority::from_files(&d.join(cert), &d.join(key), "cluster.local").unwrap_err().to_string()
    };
    let wrong = err("a.crt", "b.key");
    assert!(wrong.contains("b.key does not belong to") && wrong.contains("a.crt"), "{wrong}");
    let not_ca = err("leaf.crt", "a.key");
    assert!(not_ca.contains("leaf.crt is not a CA certificate"), "{not_ca}");
    let sec1 = err("a.crt", "sec1.key");
    assert!(sec1.contains("sec1.key") && sec1.contains("openssl pkcs8 -topk8"), "{sec1}");
    // An RSA key too small for the signer is named by its size.
    openssl(d, "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out weak.key");
    openssl(d, &format!("req -x509 -new -key weak.key -subj /CN=weak -days 30 -out weak.crt {CA_EXT}"));
    let weak = err("weak.crt", "weak.key");
    assert!(weak.contains("weak.key") && weak.contains("RSA key of 1024 bits"), "{weak}");
    let junk = err("junk.crt", "a.key");
    assert!(junk.contains("junk.crt"), "{junk}");
    let missing = err("missing.crt", "a.key");
    assert!(missing.contains("missing.crt"), "{missing}");
    // Expired (openssl 3.0 cannot backdate a request, so this one is made here).
    let key = KeyPair::generate().unwrap();
    let mut params = params_for("old");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = to_offset(SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800));
    params.not_after = to_offset(SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_923_200));
    fs::write(d.join("old.crt"), params.self_signed(&key).unwrap().pem()).unwrap();
    fs::write(d.join("old.key"), key.serialize_pem()).unwrap();
    let old = err("old.crt", "old.key");
    assert!(old.contains("old.crt is not valid now"), "{old}");
}

fn parse(pem: &str) -> (String, Vec<String>, bool) {
    let der = pem_to_der(pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|e| e.value.general_names.iter().map(|g| g.to_string()).collect())
        .unwrap_or_default();
    let cn = peer_common_name(&der).unwrap();
    (cn, sans, cert.is_ca())
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    CertificateAuthority::load_or_create(&a, "cluster.local").unwrap();
    CertificateAuthority::load_or_create(&b, "cluster.local").unwrap();
    fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE)).unwrap();
    let e = CertificateAuthority::load(&a, "cluster.local").unwrap_err().to_string();
    assert!(e.contains("ca.key does not belong to") && e.contains("ca.crt: their public keys differ"), "{e}");
    fs::remove_file(a.join(CA_CERT_FILE)).unwrap();
    let e = CertificateAuthority::load(&a, "cluster.local").unwrap_err().to_string();
    assert!(e.contains("ca.key is there but ca.crt is not"), "{e}");
}

#[test]
fn controllers_starting_together_agree_on_one_root() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let roots: Vec<String> = (0..8)
        .map(|_| {
            let state = state.clone();
            std::thread::spawn(move || {
                CertificateAuthority::load_or_create(&state, "cluster.local").unwrap().root_pem().to_owned()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(roots.iter().all(|r| r == &roots[0]));
    let names: Vec<String> =
        fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
}

#[test]
fn service_cert_names_the_identity_and_chains_to_the_root() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let id = ServiceIdentity::new("bookbuyer", "books");
    let c = ca.issue_service(&id, Duration::from_secs(3600), true).unwrap();
    let (cn, sans, is_ca) = parse(&c.cert_pem);
    assert_eq!(cn, "bookbuyer.books.cluster.local");
    assert!(sans.contains(&"DNSName(bookbuyer.books.cluster.local)".to_owned()), "{sans:?}");
    assert!(sans.contains(&"URI(spiffe://cluster.local/bookbuyer/books)".to_owned()), "{sans:?}");
    assert!(!is_ca);
    assert_eq!(c.lifetime(), Duration::from_secs(3600) + BACKDATE);

    let root_der = pem_to_der(ca.root_pem()).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    assert!(root.is_ca());
    let leaf_der = pem_to_der(&c.cert_pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.issuer(), root.subject());
    // Found in a bundle of roots; not by another root of the same name.
    let other = CertificateAuthority::generate("cluster.local").unwrap();
    let bundle = format!("{}{}", other.root_pem(), ca.root_pem());
    let name = root.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
    assert_eq!(signed_by(&c.cert_pem, &bundle), Some(name));
    assert_eq!(signed_by(&c.cert_pem, other.root_pem()), None);
}

#[test]
fn proxy_client_cert_cn_names_the_proxy() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let proxy = ProxyId { uuid: ProxyUuid::parse("abc-1").unwrap(), identity: ServiceIdentity::new("sa", "ns") };
    let c = ca.issue_proxy_client(&proxy, LONG_VALIDITY).unwrap();
    let cn = peer_common_name(&pem_to_der(&c.cert_pem).unwrap()).unwrap();
    assert_eq!(ProxyId::from_common_name(&cn).unwrap(), proxy);
}

#[test]
fn server_cert_gets_ip_sans() {
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let c =
        ca.issue_server("ads.cluster.local", &["127.0.0.1".into(), "osm-controller".into()], LONG_VALIDITY).unwrap();
    let (_, sans, _) = parse(&c.cert_pem);
    assert!(sans.contains(&"IPAddress(7f:00:00:01)".to_owned()), "{sans:?}");
    assert!(sans.contains(&"DNSName(osm-controller)".to_owned()));
}

#[test]
fn root_persists_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let a = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
    let b = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap();
    assert_eq!(a.root_pem(), b.root_pem());
    // A leaf from the reloaded CA chains to the persisted root.
    let leaf = b.issue_service(&ServiceIdentity::new("a", "b"), Duration::from_secs(600), false).unwrap();
    let root_der = pem_to_der(a.root_pem()).unwrap();
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    let der = pem_to_der(&leaf.cert_pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
}

#[test]
fn corrupt_persisted_ca_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), "junk").unwrap();
    std::fs::write(dir.path().join("ca.key"), "junk").unwrap();
    let err = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap_err().to_string();
    assert!(err.contains("persisted CA is unusable"), "{err}");
}

/// A CA key or certificate pointing at a device, a FIFO or a huge file is refused at once, naming the file,
/// instead of growing the controller without bound (or blocking on the FIFO forever).
#[test]
fn ca_files_are_read_bounded_regular_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("cluster.local").unwrap();
    let cert = dir.path().join("ca.crt");
    fs::write(&cert, ca.root_pem()).unwrap();
    let zero = dir.path().join("zero.key");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let e = CertificateAuthority::from_files(&cert, &zero, "cluster.local").unwrap_err().to_string();
    assert!(e.contains("zero.key") && e.contains("not a regular file"), "{e}");
    let fifo = dir.path().join("fifo.key");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let e = CertificateAuthority::from_files(&cert, &fifo, "cluster.local").unwrap_err().to_string();
    assert!(e.contains("fifo.key") && e.contains("not a regular file"), "{e}");
    let huge = dir.path().join("huge.crt");
    fs::write(&huge, vec![b'A'; (MAX_PEM_FILE + 1) as usize]).unwrap();
    let e = CertificateAuthority::from_files(&huge, &zero, "cluster.local").unwrap_err().to_string();
    assert!(e.contains("huge.crt") && e.contains("at most 1048576"), "{e}");
    // The state directory's root is read the same way.
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    fs::write(state.join(CA_CERT_FILE), ca.root_pem()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", state.join(CA_KEY_FILE)).unwrap();
    let e = CertificateAuthority::load(&state, "cluster.local").unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}
