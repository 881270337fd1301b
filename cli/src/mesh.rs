//! `osm mesh` and `osm namespace`: the mesh a controller serves, its recent changes, and namespaces in
//! and out of it.

use super::*;

pub(crate) async fn namespace(
    kubeconfig: Option<&std::path::Path>,
    mesh: &str,
    command: &NamespaceCommand,
    output: Output,
) -> anyhow::Result<u8> {
    let config = k8s::client::kube_config(kubeconfig).await.map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_from(config).context("connecting to the cluster")?;
    match command {
        NamespaceCommand::Add { namespaces, disable_sidecar_injection } => {
            for ns in namespaces {
                k8s::namespaces::add(client.clone(), ns, mesh, !disable_sidecar_injection).await?;
                let injection = if *disable_sidecar_injection { "without" } else { "with" };
                println!("namespace {ns} is in mesh {mesh}, {injection} sidecar injection");
            }
        }
        NamespaceCommand::Remove { namespaces } => {
            for ns in namespaces {
                k8s::namespaces::remove(client.clone(), ns, mesh).await?;
                println!("namespace {ns} left mesh {mesh} (restart its pods to remove their sidecars)");
            }
        }
        NamespaceCommand::Ignore { namespaces } => {
            for ns in namespaces {
                k8s::namespaces::ignore(client.clone(), ns).await?;
                println!("namespace {ns} is ignored by every mesh (restart its pods to remove their sidecars)");
            }
        }
        NamespaceCommand::List => {
            let list = k8s::namespaces::list(client, Some(mesh)).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table if list.is_empty() => println!("no namespace is in mesh {mesh}"),
                Output::Table => {
                    let width = list.iter().map(|n| n.name.len()).max().unwrap_or(0).max(9);
                    println!("{:<width$}  {:<10}  SIDECAR-INJECTION", "NAMESPACE", "MESH");
                    for n in list {
                        let inject = if n.sidecar_injection { "enabled" } else { "disabled" };
                        println!("{:<width$}  {:<10}  {inject}", n.name, n.mesh);
                    }
                }
            }
        }
    }
    Ok(0)
}

/// Prints what the controllers answered: the document of the controller at `--controller` (or the
/// embedded default's), or for a cluster's controller pods a JSON array of `{"controller": <pod>,
/// "status": <document>}`, however many there are.
pub(crate) fn print_json<T: serde::Serialize>(
    controllers: &Controllers,
    answers: &[(String, T)],
) -> anyhow::Result<()> {
    match answers {
        [(_, only)] if !controllers.is_cluster() => println!("{}", serde_json::to_string_pretty(only)?),
        all => {
            let list: Vec<serde_json::Value> = all
                .iter()
                .map(|(name, doc)| Ok(serde_json::json!({"controller": name, "status": serde_json::to_value(doc)?})))
                .collect::<Result<_, serde_json::Error>>()?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(())
}

pub(crate) async fn mesh_list(controllers: &Controllers, output: Output) -> anyhow::Result<u8> {
    let answers: Vec<(String, messages::status::MeshSummary)> = controllers.get_json("/status/mesh").await?;
    if output == Output::Json {
        print_json(controllers, &answers)?;
        return Ok(0);
    }
    for (i, (name, m)) in answers.iter().enumerate() {
        if answers.len() > 1 {
            println!("{}controller {name}", if i > 0 { "\n" } else { "" });
        }
        let rows = [
            ("controller", format!("{} (trust domain {})", m.version, m.trust_domain)),
            ("sources", format!("{}{}", m.sources.join(", "), if m.synced { "" } else { " (first sync not done)" })),
            ("traffic policy", m.mode.clone()),
            ("egress", if m.egress { "allowed" } else { "mesh Services only" }.to_owned()),
            ("tracing", m.tracing.clone().unwrap_or_else(|| "off".to_owned())),
            ("MeshConfig", m.mesh_config.clone().unwrap_or_else(|| "none (command-line settings)".to_owned())),
            ("Services, pods", format!("{}, {}", m.services, m.pods)),
            ("proxies", format!("{} connected, {} synced", m.proxies_connected, m.proxies_synced)),
            ("policy errors", m.policy_errors.to_string()),
            ("signing root", m.signing_root.clone()),
        ];
        for (k, v) in rows {
            println!("{k:<15} {v}");
        }
    }
    Ok(0)
}

pub(crate) async fn mesh_changes(
    controllers: &Controllers,
    output: Output,
    generation: Option<u64>,
) -> anyhow::Result<u8> {
    if generation.is_some() && controllers.names().len() > 1 {
        bail!(
            "--generation: each of the {} controller replicas numbers its own changes; list them without it, or \
             reach one controller with --controller",
            controllers.names().len()
        );
    }
    let query = generation.map_or_else(String::new, |g| format!("?generation={g}"));
    let answers: Vec<(String, Vec<ChangeStatus>)> = controllers.get_json(&format!("/status/changes{query}")).await?;
    if let (Some(g), true) = (generation, answers.iter().all(|(_, c)| c.is_empty())) {
        bail!("generation {g} is not among the changes the controller remembers (osm mesh changes lists them)");
    }
    if output == Output::Json {
        print_json(controllers, &answers)?;
        return Ok(0);
    }
    let now = messages::status::unix_now();
    for (i, (name, changes)) in answers.iter().enumerate() {
        if answers.len() > 1 {
            println!("{}controller {name}", if i > 0 { "\n" } else { "" });
        }
        if changes.is_empty() {
            println!("no mesh change since the controller started");
            continue;
        }
        println!("{:>10}  {:>6}  {:>13}  WHAT", "GENERATION", "AGE", "HELD BY");
        for c in changes {
            let held = format!("{}/{}", c.holding, c.proxies);
            let age = duration((now - c.change.at).max(0.0));
            println!("{:>10}  {age:>6}  {held:>13}  {}", c.change.generation, c.change.what);
        }
        if generation.is_some() {
            for c in changes {
                if c.not_holding.is_empty() {
                    println!("\nevery connected proxy holds generation {}", c.change.generation);
                } else {
                    let more = c.proxies - c.holding - c.not_holding.len();
                    println!("\nnot holding generation {}:", c.change.generation);
                    for p in &c.not_holding {
                        println!("  {p}");
                    }
                    if more > 0 {
                        println!("  ... and {more} more");
                    }
                }
            }
        }
    }
    Ok(0)
}
