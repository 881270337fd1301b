//! `osm proxy`: each proxy's sync status, and a sidecar's own view from its Envoy admin interface.

use super::*;

/// GETs `path` from a sidecar's admin interface, after checking it is the sidecar of `pod`'s service
/// account (its node's cluster is `<sa>.<ns>`; the pod's name is not known to Envoy).
pub(crate) async fn proxy_get(pod: &str, admin: &Admin, path: &str) -> anyhow::Result<u8> {
    let (ns, name) = pod.split_once('/').context("the pod is <namespace>/<pod>")?;
    let info = admin.get((ns, name), "/server_info").await?;
    let info: serde_json::Value = serde_json::from_str(&info).context("the admin interface's /server_info")?;
    let cluster = info["command_line_options"]["service_cluster"].as_str().unwrap_or_default();
    if !cluster.ends_with(&format!(".{ns}")) {
        bail!("the Envoy reached is the sidecar of {cluster:?}, not of a pod in namespace {ns}");
    }
    print!("{}", admin.get((ns, name), path).await?);
    Ok(0)
}

/// How long after `--wait` starts a newer mesh change still counts as the one waited for: a file written
/// (or an object applied) just before is read by the controller within moments.
pub(crate) const WAIT_CATCH_UP: Duration = Duration::from_secs(1);

pub(crate) async fn proxy_status(
    controllers: &Controllers,
    output: Output,
    wait: Option<(Duration, Option<u64>)>,
) -> anyhow::Result<u8> {
    let names = controllers.names();
    // Per controller, the generation waited for (generations are numbered by each replica).
    let mut targets: Vec<Option<u64>> = vec![None; names.len()];
    // Whether the wait ended with every proxy holding its target (the table is fetched after).
    let mut waited_held = false;
    // Per controller, when it started (a restart renumbers its changes).
    let mut starts: Vec<Option<u64>> = vec![None; names.len()];
    if let Some((timeout, generation)) = wait {
        if generation.is_some() && names.len() > 1 {
            bail!(
                "--generation: each of the {} controller replicas numbers its own changes; wait for the latest \
                 (no --generation), or reach one controller with --controller",
                names.len()
            );
        }
        // Polls the counts only (a full status is megabytes at 10,000 proxies).
        let summary = |i: usize, of: Option<u64>| async move {
            let query = of.map_or_else(String::new, |g| format!("&generation={g}"));
            controllers.get_json_at::<StatusSummary>(i, &format!("/status/proxies?summary{query}")).await
        };
        let started = Instant::now();
        let deadline = started + timeout;
        let bar = (output == Output::Table).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} proxies hold {msg} {wide_bar} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        loop {
            let caught_up = generation.is_some() || started.elapsed() >= WAIT_CATCH_UP;
            let (mut holding, mut proxies, mut held) = (0, 0, true);
            for (i, target) in targets.iter_mut().enumerate() {
                let mut s = summary(i, target.or(generation)).await?;
                // A controller that restarted numbers its changes from 0 again: wait for its latest.
                if starts[i].is_some_and(|started| started != s.started_ms) {
                    if generation.is_some() {
                        bail!(
                            "{} restarted while waiting: its generations start again at 0, so --generation no \
                             longer names the same change (wait for its latest: no --generation)",
                            names[i]
                        );
                    }
                    if let Some(bar) = &bar {
                        bar.println(format!("{} restarted; waiting for its latest change", names[i]));
                    }
                    *target = None;
                    s = summary(i, None).await?;
                }
                starts[i] = Some(s.started_ms);
                if let Some(g) = generation.filter(|g| *g > s.generation) {
                    bail!(
                        "generation {g} has not happened: the controller's latest is {} (numbering starts again \
                         at 0 when the controller restarts; osm mesh changes lists them)",
                        s.generation
                    );
                }
                // The generation waited for: the one asked for, or the latest as of the first moment.
                let goal = match generation {
                    Some(g) => g,
                    None if !caught_up => target.unwrap_or(0).max(s.generation),
                    None => target.unwrap_or(s.generation),
                };
                if s.of_generation != goal {
                    s = summary(i, Some(goal)).await?;
                }
                *target = Some(goal);
                (holding, proxies, held) = (holding + s.holding, proxies + s.proxies, held && s.held());
            }
            if let Some(bar) = &bar {
                bar.set_message(match targets.as_slice() {
                    [Some(g)] => format!("generation {g}"),
                    _ => format!("the latest change of each of {} controllers", targets.len()),
                });
                bar.set_length(proxies as u64);
                bar.set_position(holding as u64);
            }
            if (held && caught_up) || Instant::now() >= deadline {
                waited_held = held && caught_up;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    let statuses: Vec<(String, MeshStatus)> = controllers.get_json("/status/proxies").await?;
    match output {
        Output::Json => print_json(controllers, &statuses)?,
        Output::Table => print_table(&statuses, &targets),
    }
    let held =
        waited_held || statuses.iter().zip(&targets).all(|((_, s), target)| StatusSummary::of(s, *target).held());
    Ok(if wait.is_some() && !held { 3 } else { 0 })
}

/// What is wrong with a proxy, in a line.
pub(crate) fn detail(p: &ProxyStatusView) -> String {
    let nacks: Vec<String> = p
        .types
        .iter()
        .filter_map(|(ty, t)| t.nack.as_ref().map(|e| format!("{ty} {} refused: {e}", short(&t.sent))))
        .collect();
    if !nacks.is_empty() {
        return nacks.join("; ");
    }
    let waiting: Vec<&str> = p.types.iter().filter(|(_, t)| t.acked != t.sent).map(|(ty, _)| ty.as_str()).collect();
    if waiting.is_empty() { String::new() } else { format!("waiting for the ACK of {}", waiting.join(", ")) }
}

pub(crate) fn short(version: &str) -> &str {
    version.get(..8).unwrap_or(version)
}

pub(crate) fn duration(s: f64) -> String {
    match s {
        s if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.1}h", s / 3600.0),
    }
}

/// The proxies of every controller (a CONTROLLER column when there are several), and how many hold the
/// generation waited for (default: each controller's latest).
pub(crate) fn print_table(statuses: &[(String, MeshStatus)], targets: &[Option<u64>]) {
    let many = statuses.len() > 1;
    let proxies: Vec<(&str, &ProxyStatusView)> =
        statuses.iter().flat_map(|(name, s)| s.proxies.iter().map(move |p| (name.as_str(), p))).collect();
    if proxies.is_empty() {
        println!("no proxy is connected");
        return;
    }
    let mut header = vec!["POD", "IDENTITY", "PROXY", "API", "STATUS", "GEN", "BEHIND", "DETAIL"];
    if many {
        header.insert(0, "CONTROLLER");
    }
    let header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|(controller, p)| {
            let state = match p.state {
                SyncState::Synced => "synced",
                SyncState::Stale => "stale",
                SyncState::Nack => "NACK",
            };
            let behind = if p.state == SyncState::Synced { "-".to_owned() } else { duration(p.behind_s) };
            let pod = p.pod.clone().unwrap_or_else(|| "-".to_owned());
            let generation = p.generation.to_string();
            let mut row = vec![
                pod,
                p.identity.clone(),
                p.uuid.clone(),
                p.api.clone(),
                state.to_owned(),
                generation,
                behind,
                detail(p),
            ];
            if many {
                row.insert(0, controller.rsplit('/').next().unwrap_or(controller).to_owned());
            }
            row
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| std::iter::once(&header).chain(&rows).map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    let count = |s: SyncState| proxies.iter().filter(|(_, p)| p.state == s).count();
    println!(
        "\n{} proxies: {} synced, {} stale, {} NACK",
        proxies.len(),
        count(SyncState::Synced),
        count(SyncState::Stale),
        count(SyncState::Nack)
    );
    for ((name, status), target) in statuses.iter().zip(targets) {
        let summary = StatusSummary::of(status, *target);
        let what = match &status.change {
            Some(c) if c.generation == summary.of_generation => format!(" ({})", c.what),
            _ if summary.of_generation == 0 => " (the configuration the controller started with)".to_owned(),
            _ => String::new(),
        };
        let prefix = if many { format!("controller {name}: ") } else { String::new() };
        println!(
            "{prefix}mesh generation {}{what}: held by {} of {} proxies",
            summary.of_generation, summary.holding, summary.proxies
        );
    }
}
