//! The real `kubectl` and `helm` pointed at a simulator, as a user runs them: each [`Tools`] has its own
//! kubeconfig, home and caches in a temporary directory, so nothing of the machine's configuration leaks in.
//! `MESH_KUBECTL` and `MESH_HELM` may name other binaries (`scripts/setup.sh` installs both).

use std::path::PathBuf;
use std::time::Duration;

use crate::{ApiServer, SimError};

/// How long one run of `kubectl` or `helm` may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// A client process's output (`ok: false` with the reason in `stderr` when it could not run at all).
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `kubectl` and `helm` pointed at one simulator, isolated from the user's configuration and caches.
#[derive(Debug)]
pub struct Tools {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Tools {
    pub fn new(sim: &ApiServer) -> Result<Self, SimError> {
        let dir = tempfile::tempdir().map_err(|e| SimError::Object(format!("a temporary directory: {e}")))?;
        let tools = Self { kubeconfig: dir.path().join("kubeconfig"), dir };
        tools.write_file("kubeconfig", &sim.kubeconfig())?;
        Ok(tools)
    }

    async fn run(&self, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let home = self.dir.path().join("home");
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &home)
            .env("KUBECTL_KUBERC", "false")
            .env("HELM_CACHE_HOME", home.join("helm-cache"))
            .env("HELM_CONFIG_HOME", home.join("helm-config"))
            .env("HELM_DATA_HOME", home.join("helm-data"))
            .envs(env.iter().copied())
            .kill_on_drop(true);
        let failed = |stderr: String| Run { ok: false, stdout: String::new(), stderr };
        match tokio::time::timeout(COMMAND_DEADLINE, cmd.output()).await {
            Err(_) => failed(format!("{bin} {args:?} took longer than {COMMAND_DEADLINE:?}")),
            Ok(Err(e)) => failed(format!("running {bin} (install it with scripts/setup.sh): {e}")),
            Ok(Ok(out)) => Run {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
        }
    }

    pub async fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let bin = std::env::var("MESH_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
        self.run(&bin, args, env).await
    }

    pub async fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_env(args, &[]).await
    }

    pub async fn helm(&self, args: &[&str]) -> Run {
        let bin = std::env::var("MESH_HELM").unwrap_or_else(|_| "helm".to_owned());
        self.run(&bin, args, &[]).await
    }

    /// Writes a file in the temporary directory; its path.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<String, SimError> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).map_err(|e| SimError::Object(format!("{}: {e}", path.display())))?;
        Ok(path.display().to_string())
    }

    /// Writes an executable shell script (for `KUBE_EDITOR`, which gives it the file to edit as `$1`).
    pub fn write_script(&self, name: &str, body: &str) -> Result<String, SimError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.write_file(name, &format!("#!/bin/sh\nset -e\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| SimError::Object(format!("{path}: {e}")))?;
        Ok(path)
    }
}
