//! `osm support`: what an error code means, and what a bug report needs.

use super::*;

pub(crate) fn error_info(output: Output, code: Option<&str>) -> anyhow::Result<u8> {
    use messages::errcode::{CODES, ErrorCode, lookup};
    let codes: Vec<&ErrorCode> = match code {
        None => CODES.iter().collect(),
        Some(c) => match lookup(c) {
            Some(e) => vec![e],
            None => bail!("{c} is not an error code of this control plane (osm support error-info lists them)"),
        },
    };
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> =
                codes.iter().map(|c| serde_json::json!({"code": c.code, "cause": c.cause, "fix": c.fix})).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Table => {
            for c in codes {
                println!("{}\n  cause: {}\n  fix:   {}", c.code, c.cause, c.fix);
            }
        }
    }
    Ok(0)
}

/// Sidecars not in sync whose config a bug report includes, at most.
pub(crate) const REPORTED_SIDECARS: usize = 20;

pub(crate) async fn bug_report(
    controllers: &Controllers,
    admin: Option<&Admin>,
    out: Option<std::path::PathBuf>,
) -> anyhow::Result<u8> {
    let dir = out.unwrap_or_else(|| format!("osm-bug-report-{}", messages::status::unix_now() as u64).into());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
    };
    let mut summary = String::new();
    let mut unsynced: Vec<String> = Vec::new();
    for (i, name) in controllers.names().into_iter().enumerate() {
        let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        std::fs::create_dir_all(dir.join(&slug)).with_context(|| format!("creating {}/{slug}", dir.display()))?;
        summary.push_str(&format!("controller {name} ({slug}/)\n"));
        for (file, path) in [
            ("version.json", "/version"),
            ("mesh.json", "/status/mesh"),
            ("proxies.json", "/status/proxies"),
            ("changes.json", "/status/changes"),
            ("metrics.txt", "/metrics"),
        ] {
            // One answer missing does not lose the others: say what it was.
            let body = match controllers.get_text_at(i, path).await {
                Ok((_, body)) => body,
                Err(e) => format!("error: {e:#}\n"),
            };
            write(&format!("{slug}/{file}"), &body)?;
            if file == "proxies.json"
                && let Ok(status) = serde_json::from_str::<MeshStatus>(&body)
            {
                unsynced.extend(
                    status.proxies.iter().filter(|p| p.state != SyncState::Synced).filter_map(|p| p.pod.clone()),
                );
            }
            if file == "metrics.txt" {
                // The error codes counted, with what they mean.
                for line in body.lines().filter(|l| l.starts_with("osm_error_err_code_count{")) {
                    let code = line.split('"').nth(1).unwrap_or_default();
                    let count = line.rsplit(' ').next().unwrap_or_default();
                    let meaning = messages::errcode::lookup(code).map_or("", |c| c.cause);
                    summary.push_str(&format!("  error {code} counted {count}: {meaning}\n"));
                }
            }
        }
    }
    summary.push('\n');
    match admin {
        Some(admin) => {
            std::fs::create_dir_all(dir.join("sidecars"))?;
            for pod in unsynced.iter().take(REPORTED_SIDECARS) {
                let Some((ns, name)) = pod.split_once('/') else { continue };
                let body = match admin.get((ns, name), "/config_dump").await {
                    Ok(body) => body,
                    Err(e) => format!("error: {e:#}\n"),
                };
                write(&format!("sidecars/{ns}_{name}.config_dump.json"), &body)?;
                summary.push_str(&format!(
                    "sidecar {pod} is not in sync: its config in sidecars/{ns}_{name}.config_dump.json\n"
                ));
            }
        }
        None if !unsynced.is_empty() => summary.push_str(&format!(
            "{} sidecars are not in sync ({}); their config is reached from inside each pod: \
             ip netns exec <netns> osm proxy get config_dump <ns>/<pod>\n",
            unsynced.len(),
            unsynced.iter().take(REPORTED_SIDECARS).cloned().collect::<Vec<_>>().join(", ")
        )),
        None => {}
    }
    write("SUMMARY.txt", &summary)?;
    println!("{}{}wrote {}", summary, if summary.ends_with("\n\n") { "" } else { "\n" }, dir.display());
    Ok(0)
}
