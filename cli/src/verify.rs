//! `osm verify`: a path between two workloads, and the control plane, checked step by step.

use super::*;

pub(crate) async fn verify_connectivity(
    controllers: &Controllers,
    output: Output,
    from: &str,
    to: &str,
) -> anyhow::Result<u8> {
    let ok_chars = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-./:".contains(c));
    if !ok_chars(from) || !ok_chars(to) {
        bail!(
            "--from <namespace>/<pod> and --to <namespace>/<service>[:<port>] (names of letters, digits, '-' and '.')"
        );
    }
    let answers: Vec<(String, messages::status::Connectivity)> =
        controllers.get_json(&format!("/status/connectivity?from={from}&to={to}")).await?;
    // Each replica sees the sidecars connected to it: one report of what they all see.
    let now = messages::status::unix_now();
    let report = match answers.len() {
        1 => answers.into_iter().map(|(_, r)| r).next(),
        _ => messages::status::Connectivity::merge(answers.into_iter().map(|(_, r)| r).collect(), now),
    }
    .context("no controller answered")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => {
            println!("{} → {}", report.from, report.to);
            print_steps(&report.steps);
            match report.steps.iter().find(|s| !s.ok) {
                None => println!("\nOK: {} can reach {}", report.from, report.to),
                Some(s) => println!("\nBLOCKED at {}: {}", s.step, s.detail),
            }
        }
    }
    Ok(if report.ok { 0 } else { 2 })
}

/// Prints checks step by step, as `verify` does: `ok` or `FAIL`, the step, what was found.
pub(crate) fn print_steps(steps: &[messages::PathStep]) {
    let width = steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
    for s in steps {
        println!("  {} {:<width$}  {}", if s.ok { "ok  " } else { "FAIL" }, s.step, s.detail);
    }
}

pub(crate) async fn verify_control_plane(controllers: &Controllers, output: Output) -> anyhow::Result<u8> {
    let meshes: Vec<(String, messages::status::MeshSummary)> = controllers.get_json("/status/mesh").await?;
    let summaries: Vec<(String, StatusSummary)> = controllers.get_json("/status/proxies?summary").await?;
    let step = |step: &str, ok: bool, detail: String| messages::PathStep { step: step.to_owned(), ok, detail };
    let reports: Vec<(String, Vec<messages::PathStep>)> = meshes
        .into_iter()
        .zip(summaries)
        .map(|((name, m), (_, s))| {
            let steps = vec![
                step(
                    "controller",
                    true,
                    format!("{name} answers: version {}, trust domain {}", m.version, m.trust_domain),
                ),
                step(
                    "mesh sources",
                    m.synced,
                    if m.synced {
                        format!("{} read", m.sources.join(", "))
                    } else {
                        format!(
                            "{}: the first read is not done, and sidecars are refused until it is (the controller's \
                             log says what it waits for)",
                            m.sources.join(", ")
                        )
                    },
                ),
                step(
                    "policy",
                    m.policy_errors == 0,
                    match m.policy_errors {
                        0 => format!("{} mode, every policy object in force", m.mode),
                        n => format!(
                            "{n} policy objects (or parts of them) are not in force: the controller's log names each \
                             with its error code (osm support error-info <code>)"
                        ),
                    },
                ),
                step("signing root", true, m.signing_root.clone()),
                step(
                    "proxies",
                    s.nack == 0,
                    format!(
                        "{} connected: {} synced, {} stale, {} refusing their configuration{}",
                        s.proxies,
                        s.synced,
                        s.stale,
                        s.nack,
                        if s.nack > 0 { " (osm proxy status names them, with Envoy's reason)" } else { "" }
                    ),
                ),
                // Still on its way is not a fault; refused is, and shows above.
                step(
                    "latest change",
                    true,
                    format!(
                        "generation {} held by {} of {} proxies{}",
                        s.of_generation,
                        s.holding,
                        s.proxies,
                        if s.held() { "" } else { " (on its way: osm proxy status --wait)" }
                    ),
                ),
            ];
            (name, steps)
        })
        .collect();
    let ok = reports.iter().all(|(_, steps)| steps.iter().all(|s| s.ok));
    match output {
        Output::Json => {
            let list: Vec<serde_json::Value> = reports
                .iter()
                .map(|(name, steps)| serde_json::json!({"controller": name, "ok": steps.iter().all(|s| s.ok), "steps": steps}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Table => {
            for (name, steps) in &reports {
                println!("controller {name}");
                print_steps(steps);
            }
            println!("\n{}", if ok { "OK: the control plane is healthy" } else { "NOT OK: see FAIL above" });
        }
    }
    Ok(if ok { 0 } else { 2 })
}

/// `osm policy get`: the policies of one pod, as the controller derives them.
pub(crate) async fn policy_get(controllers: &Controllers, output: Output, pod: &str) -> anyhow::Result<u8> {
    if pod.split_once('/').is_none_or(|(ns, name)| ns.is_empty() || name.is_empty()) {
        bail!("{pod:?}: give the pod as <namespace>/<pod>");
    }
    // Every replica derives the same from the same objects: one answer is enough.
    let p: messages::status::PodPolicies = controllers.get_json_at(0, &format!("/status/policy?pod={pod}")).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(0);
    }
    let backs = if p.backs.is_empty() { "no Service".to_owned() } else { p.backs.join(", ") };
    println!("pod {} (identity {}), {} mode; backs {backs}", p.pod, p.identity, p.mode);
    if p.applied.is_empty() {
        println!("no policy object applies to it");
        return Ok(0);
    }
    let kind_w = p.applied.iter().map(|a| a.kind.len()).max().unwrap_or(4).max(4);
    let obj_w = p.applied.iter().map(|a| a.object.len()).max().unwrap_or(6).max(6);
    println!("{:<9}  {:<kind_w$}  {:<obj_w$}  EFFECT", "DIRECTION", "KIND", "OBJECT");
    for a in &p.applied {
        println!("{:<9}  {:<kind_w$}  {:<obj_w$}  {}", a.direction, a.kind, a.object, a.effect);
        for problem in &a.problems {
            println!("{:<9}  {:<kind_w$}  {:<obj_w$}  ! {problem}", "", "", "");
        }
    }
    Ok(0)
}
