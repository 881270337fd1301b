//! Cost of turning one proxy's view into an encoded, checked snapshot, and of computing the view itself,
//! as the mesh grows (permissive mode: every proxy sees every Service).

#![allow(clippy::unwrap_used)] // benchmark fixtures: a panic is a broken fixture

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use messages::*;
use xds::CertInput;

/// `n` Services in 10 namespaces, each backed by 3 pods; HTTP and TCP alternate.
fn mesh(n: usize) -> MeshCatalog {
    let mut objects = Vec::new();
    for i in 0..n {
        let ns = format!("ns{}", i % 10);
        let app = format!("app{i}");
        let protocol = if i % 2 == 0 { AppProtocol::Http } else { AppProtocol::Tcp };
        objects.push(MeshObject::Service(Service {
            key: ServiceKey::new(ns.clone(), app.clone()),
            cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1).parse().unwrap()),
            selector: Some(BTreeMap::from([("app".to_owned(), app.clone())])),
            ports: vec![ServicePort { name: None, port: 80, target_port: TargetPort::Number(8080), protocol }],
        }));
        for r in 0..3 {
            let name = format!("{app}-{r}");
            objects.push(MeshObject::Pod(Pod {
                namespace: ns.clone(),
                name: name.clone(),
                labels: BTreeMap::from([("app".to_owned(), app.clone())]),
                service_account: app.clone(),
                ip: Some(format!("10.{}.{}.{}", 100 + r, i / 250, i % 250 + 1).parse().unwrap()),
                proxy_uuid: ProxyUuid::derived(&ns, &name),
                container_ports: vec![],
                prometheus_scrape: false,
            }));
        }
    }
    let mut c = MeshCatalog::new("cluster.local");
    c.apply(SourceEvent::reset_all(objects));
    c
}

fn bench(c: &mut Criterion) {
    let certs = CertInput { cert_pem: "CERT", key_pem: "KEY", trust_bundle_pem: "ROOT" };
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(20);
    for n in [10usize, 100, 1000] {
        let catalog = mesh(n);
        let uuid = ProxyUuid::derived("ns0", "app0-0");
        let view = catalog.proxy_view(&uuid).unwrap();
        g.bench_with_input(BenchmarkId::new("proxy_view", n), &n, |b, _| {
            b.iter(|| black_box(catalog.proxy_view(black_box(&uuid))))
        });
        g.bench_with_input(BenchmarkId::new("build", n), &n, |b, _| {
            b.iter(|| black_box(xds::build(black_box(&view), certs)))
        });
    }
    // A full rebuild of 100 proxies (10 namespaces, 100 identities) in a 1000-Service mesh, with and without
    // sharing encodings across the batch.
    let catalog = mesh(1000);
    let views: Vec<ProxyView> = (0..100)
        .map(|i| catalog.proxy_view(&ProxyUuid::derived(&format!("ns{}", i % 10), &format!("app{i}-0"))).unwrap())
        .collect();
    g.sample_size(10);
    g.bench_function("batch100_of_1000/unshared", |b| {
        b.iter(|| views.iter().for_each(|v| drop(black_box(xds::build(v, certs).unwrap()))))
    });
    g.bench_function("batch100_of_1000/shared", |b| {
        b.iter(|| {
            let mut cache = xds::BuildCache::new();
            views.iter().for_each(|v| drop(black_box(xds::build_with(v, certs, &mut cache).unwrap())))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
