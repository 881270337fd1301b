//! `osm-controller bootstrap` as a user runs it: it never creates a second CA, and the bundle it writes is
//! usable by Envoy running as uid 1500.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::os::unix::fs::MetadataExt;
use std::process::Command;

const MESH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec: {serviceAccountName: client, containers: [{name: app, image: x}]}
status: {podIP: 10.244.1.1}
"#;

fn bootstrap(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_osm-controller"))
        .arg("--mesh-dir")
        .arg(dir.join("mesh"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["bootstrap", "--pod", "demo/client", "--controller-host", "127.0.0.1", "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap()
}

#[test]
fn bootstrap_refuses_to_create_a_ca_and_hands_the_bundle_to_envoy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/mesh.yaml"), MESH).unwrap();

    // Run from the wrong place: no CA there, and none is made.
    let out = bootstrap(dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no mesh CA here"), "{err}");
    assert!(!dir.path().join("state/ca.key").exists());

    certs::CertificateAuthority::load_or_create(&dir.path().join("state"), "cluster.local").unwrap();
    let out = bootstrap(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("setpriv --reuid 1500 --regid 1500"), "{stdout}");
    let key = std::fs::metadata(dir.path().join("out/sds_key.pem")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o600);
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        assert_eq!(key.uid(), messages::ENVOY_UID, "Envoy (uid 1500) must be able to read its key");
    } else {
        assert!(stdout.contains("could not be given to uid 1500"), "{stdout}");
    }
}

#[test]
fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("mesh/broken.yaml"), "kind: [").unwrap();
    let out = bootstrap(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN") && err.contains("broken.yaml"), "the broken file is reported: {err}");
    assert!(!err.contains('\u{1b}'), "no terminal escape codes in piped logs: {err:?}");
}

/// The lines a running controller writes to stderr, as they come.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads lines until one satisfies `want`; fails after a generous bound instead of hanging.
fn wait_line(rx: &std::sync::mpsc::Receiver<String>, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(_) => {}
            Err(_) => panic!("no log line {what} within 30 s"),
        }
    }
}

#[test]
fn the_mesh_configs_osm_log_level_sets_the_controllers_level_live() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    std::fs::create_dir(&mesh).unwrap();
    std::fs::write(mesh.join("mesh.yaml"), MESH).unwrap();
    let config = |level: &str| {
        format!(
            "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\n\
             metadata: {{name: osm-mesh-config, namespace: osm-system}}\nspec: {{observability: {{osmLogLevel: {level}}}}}\n"
        )
    };
    std::fs::write(mesh.join("meshconfig.yaml"), config("info")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_osm-controller"))
        .env_remove("RUST_LOG")
        .arg("--mesh-dir")
        .arg(&mesh)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--ads-addr", "127.0.0.1:0", "--http-addr", "off", "--scan-interval-ms", "200"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    wait_line(&lines, "setting the level to info", |l| l.contains("log level set") && l.contains("info"));
    // debug: DEBUG lines follow.
    std::fs::write(mesh.join(".meshconfig.yaml.tmp"), config("debug")).unwrap();
    std::fs::rename(mesh.join(".meshconfig.yaml.tmp"), mesh.join("meshconfig.yaml")).unwrap();
    wait_line(&lines, "setting the level to debug", |l| l.contains("log level set") && l.contains("debug"));
    wait_line(&lines, "at DEBUG", |l| l.contains("DEBUG"));
    // A level OSM has and the filter spells otherwise.
    std::fs::write(mesh.join(".meshconfig.yaml.tmp"), config("disabled")).unwrap();
    std::fs::rename(mesh.join(".meshconfig.yaml.tmp"), mesh.join("meshconfig.yaml")).unwrap();
    wait_line(&lines, "turning logging off", |l| l.contains("log level set") && l.contains("off"));
    let _ = child.kill();
    let _ = child.wait();
}
