//! The load-test harness in the suite: a small run against the real `osm-controller` binary, asserting
//! correctness only (every sidecar converges, every change reaches every sidecar, none is left stale).
//! Timing is measured by `loadtest` runs, never asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;
use std::time::Duration;

use loadtest::client::Api;
use loadtest::mesh::{ChurnKind, MeshSpec};

/// `osm-controller` of this build (scripts/test.sh builds the binaries first).
fn controller_bin() -> PathBuf {
    // target/<profile>/deps/<this test>
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("osm-controller");
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --bins` first", bin.display());
    bin
}

fn scenario(api: Api, churn: ChurnKind, work: &std::path::Path) -> loadtest::Scenario {
    loadtest::Scenario {
        mesh: MeshSpec {
            services: 3,
            pods_per_service: 2,
            clients: 200,
            accounts: 10,
            pods_per_file: 50,
            churn,
            smi: false,
        },
        api,
        rate: 1000.0,
        changes: 4,
        change_rate: 10.0,
        idle_s: 0,
        restart: false,
        source_ips: 2,
        timeout: Duration::from_secs(60),
        controller_bin: controller_bin(),
        controller_args: vec![],
        work_dir: work.to_owned(),
        progress: false,
    }
}

fn assert_correct(report: &loadtest::report::Report) {
    assert_eq!(report.converged, 200, "every sidecar converges:\n{report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(report.stale, 0, "no sidecar misses the last change:\n{report}");
    assert_eq!(report.change_complete.count, 4, "every change reached every sidecar:\n{report}");
    assert_eq!(report.change_per_sidecar.count, 4 * 200, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_sidecars_converge_and_follow_endpoint_changes() {
    let work = tempfile::tempdir().unwrap();
    let report = loadtest::run(&scenario(Api::Sotw, ChurnKind::Endpoints, work.path())).await.unwrap();
    assert_correct(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smi_mode_sidecars_converge_and_follow_pod_churn_through_policy() {
    let work = tempfile::tempdir().unwrap();
    let mut s = scenario(Api::Sotw, ChurnKind::Pods, work.path());
    s.mesh.smi = true;
    let report = loadtest::run(&s).await.unwrap();
    assert_correct(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sidecars_converge_and_follow_pod_churn() {
    let work = tempfile::tempdir().unwrap();
    let report = loadtest::run(&scenario(Api::Delta, ChurnKind::Pods, work.path())).await.unwrap();
    assert_correct(&report);
}
