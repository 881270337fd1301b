//! Leaf issuance per second on one core: a service certificate (a new ECDSA P-256 key, signed) from the
//! built-in ECDSA P-256 root and from an RSA 2048 root (a fixed test key; the root certificate is made at
//! start); and one with an RSA 2048 key of its own (MeshConfig `certKeyBitSize`), where key generation is
//! the cost. Compare with `openssl speed ecdsap256 rsa2048` on the same machine (SCALE.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark code

use certs::Issuer as _;
use std::time::Duration;

use certs::CertificateAuthority;
use criterion::{Criterion, criterion_group, criterion_main};
use messages::ServiceIdentity;

/// A root of the test key in `benches/rsa2048-ca.key`, as a user would bring it.
fn rsa_root(dir: &std::path::Path) -> CertificateAuthority {
    let key_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/rsa2048-ca.key");
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "bench RSA root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    let crt = dir.join("rsa.crt");
    std::fs::write(&crt, cert.pem()).unwrap();
    CertificateAuthority::from_files(&crt, &key_path, "cluster.local").unwrap()
}

fn issue(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let id = ServiceIdentity::new("bookstore", "bookstore");
    let day = Duration::from_secs(24 * 3600);
    let mut g = c.benchmark_group("issue_service_certificate");
    let ecdsa = CertificateAuthority::generate("cluster.local").unwrap();
    g.bench_function("ecdsa_p256_root", |b| b.iter(|| ecdsa.issue_service(&id, day, false).unwrap()));
    let rsa = rsa_root(dir.path());
    g.bench_function("rsa2048_root", |b| b.iter(|| rsa.issue_service(&id, day, false).unwrap()));
    g.finish();
    // Tens of milliseconds each: fewer samples.
    let mut g = c.benchmark_group("issue_service_certificate_rsa_key");
    g.sample_size(20).measurement_time(Duration::from_secs(20));
    let key = certs::KeyAlgorithm::Rsa(certs::RsaBits::B2048);
    g.bench_function("rsa2048_key_ecdsa_root", |b| b.iter(|| ecdsa.issue_service_with(&id, day, false, key).unwrap()));
    g.finish();
}

criterion_group!(benches, issue);
criterion_main!(benches);
