//! How `osm` reaches what it reads: the controllers' HTTP endpoints and the sidecars' Envoy admin
//! interfaces, at a URL, or on a cluster through the API server (a port-forward per request, as
//! `kubectl port-forward` makes), so no port-forward of the operator's own is needed.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Pod;

/// The port of a sidecar's Envoy admin interface, on the pod's loopback.
pub const ENVOY_ADMIN_PORT: u16 = 15000;
/// The port of the controller's HTTP endpoint.
pub const CONTROLLER_HTTP_PORT: u16 = 9091;
/// The label of the controller's pods (the Helm chart's).
const CONTROLLER_LABEL: &str = "app=osm-controller";

/// The cluster this osm talks to: the kubeconfig named, else in-cluster, `$KUBECONFIG` or
/// `~/.kube/config`; `None` when none of them is there (the embedded default). One that is there but
/// cannot be used is an error, not a reason to look elsewhere.
pub async fn cluster(kubeconfig: Option<&Path>) -> anyhow::Result<Option<kube::Client>> {
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    let home_config = std::env::var_os("HOME").is_some_and(|h| Path::new(&h).join(".kube/config").exists());
    if kubeconfig.is_none() && !set("KUBECONFIG") && !set("KUBERNETES_SERVICE_HOST") && !home_config {
        return Ok(None);
    }
    let config = k8s::client::kube_config(kubeconfig).await.map_err(anyhow::Error::msg)?;
    Ok(Some(kube::Client::try_from(config).context("connecting to the cluster")?))
}

/// Where a sidecar's admin interface is reached.
pub enum Admin {
    /// At a URL: the pod's loopback from its network namespace, or a port-forward of one's own.
    Url(String),
    /// Through the cluster's API server: a port-forward to the pod's admin port per request.
    Cluster(kube::Client),
}

impl Admin {
    /// GET `path` from the admin interface of pod `ns`/`name`'s sidecar; the body.
    pub async fn get(&self, (ns, name): (&str, &str), path: &str) -> anyhow::Result<String> {
        match self {
            Admin::Url(url) => get(url, path).await.with_context(|| {
                format!(
                    "no Envoy admin interface at {url}: run osm in the pod's network namespace \
                     (ip netns exec <netns> osm ...), or, on a cluster, give --kubeconfig"
                )
            }),
            Admin::Cluster(client) => {
                forward_get(client, (ns, name), ENVOY_ADMIN_PORT, path).await.with_context(|| {
                    format!(
                        "the sidecar's admin interface in pod {ns}/{name} (is it a mesh pod with a running sidecar?)"
                    )
                })
            }
        }
    }
}

/// The controllers osm reads.
pub enum Controllers {
    /// One controller's HTTP endpoint.
    Url(String),
    /// Every ready controller pod of a cluster: each replica serves the sidecars connected to it.
    Cluster { client: kube::Client, namespace: String, pods: Vec<String> },
}

impl Controllers {
    /// On a cluster, the ready pods labelled `app=osm-controller` in `namespace`; else the embedded
    /// default's `http://127.0.0.1:9091`.
    pub async fn find(cluster: Option<kube::Client>, namespace: &str) -> anyhow::Result<Self> {
        let Some(client) = cluster else {
            return Ok(Self::Url(format!("http://127.0.0.1:{CONTROLLER_HTTP_PORT}")));
        };
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
        let list = api
            .list(&kube::api::ListParams::default().labels(CONTROLLER_LABEL))
            .await
            .with_context(|| format!("listing the controller's pods ({CONTROLLER_LABEL}) in namespace {namespace}"))?;
        let mut pods: Vec<String> =
            list.items.iter().filter(|p| ready(p)).filter_map(|p| p.metadata.name.clone()).collect();
        pods.sort();
        if pods.is_empty() {
            bail!(
                "no ready controller pod ({CONTROLLER_LABEL}) in namespace {namespace} of the cluster \
                 (--osm-namespace; or reach a controller with --controller <url>)"
            );
        }
        Ok(Self::Cluster { client, namespace: namespace.to_owned(), pods })
    }

    /// The controller pods of a cluster (their answers are shown as a list, whatever their number).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// The controllers' names: the URL, or `<namespace>/<pod>` each, in a stable order.
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Url(url) => vec![url.clone()],
            Self::Cluster { namespace, pods, .. } => pods.iter().map(|p| format!("{namespace}/{p}")).collect(),
        }
    }

    /// GET `path` from controller `i` (of [`Controllers::names`]): its name and the body.
    pub async fn get_text_at(&self, i: usize, path: &str) -> anyhow::Result<(String, String)> {
        match self {
            Self::Url(url) => {
                let body = get(url, path).await.with_context(|| {
                    format!("the controller's HTTP endpoint at {url} (is it running? --controller, or OSM_CONTROLLER)")
                })?;
                Ok((url.clone(), body))
            }
            Self::Cluster { client, namespace, pods } => {
                let pod = pods.get(i).context("no such controller")?;
                let body = forward_get(client, (namespace, pod), CONTROLLER_HTTP_PORT, path)
                    .await
                    .with_context(|| format!("the controller pod {namespace}/{pod}"))?;
                Ok((format!("{namespace}/{pod}"), body))
            }
        }
    }

    /// GET `path` from controller `i` (of [`Controllers::names`]), parsed.
    pub async fn get_json_at<T: serde::de::DeserializeOwned>(&self, i: usize, path: &str) -> anyhow::Result<T> {
        let (name, body) = self.get_text_at(i, path).await?;
        let route = path.split('?').next().unwrap_or(path);
        serde_json::from_str(&body)
            .with_context(|| format!("{name}'s {route} is not what this osm reads (versions differ?)"))
    }

    /// GET `path` from every controller, parsed: (controller, answer) in the order of
    /// [`Controllers::names`].
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<(String, T)>> {
        let mut answers = Vec::new();
        for (i, name) in self.names().into_iter().enumerate() {
            answers.push((name, self.get_json_at(i, path).await?));
        }
        Ok(answers)
    }
}

/// Running, and its Ready condition true.
fn ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// GET `path` from `port` of pod `ns`/`name`, through the API server.
async fn forward_get(client: &kube::Client, (ns, name): (&str, &str), port: u16, path: &str) -> anyhow::Result<String> {
    use futures::FutureExt as _;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let forwarding = || format!("port-forwarding to pod {ns}/{name}:{port} through the API server");
    let mut forward = pods.portforward(name, &[port]).await.with_context(forwarding)?;
    let stream = forward.take_stream(port).with_context(forwarding)?;
    // The API server says on the error channel why a port cannot be reached (fused: it may be awaited
    // again below after it ended).
    let mut error = forward.take_error(port).with_context(forwarding)?.fuse();
    let host = format!("127.0.0.1:{port}");
    let exchange = tokio::select! {
        body = get_on(stream, &host, path) => body,
        Some(e) = &mut error => bail!("{}: {e}", forwarding()),
    };
    match exchange {
        Ok(body) => Ok(body),
        // The stream may end before the reason arrives: wait for it a moment.
        Err(e) => match tokio::time::timeout(Duration::from_millis(500), error).await {
            Ok(Some(reason)) => bail!("{}: {reason}", forwarding()),
            _ => Err(e),
        },
    }
}

/// GET `path` from an HTTP endpoint; the body.
pub async fn get(base: &str, path: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = format!("{}{path}", base.trim_end_matches('/')).parse().with_context(|| base.to_owned())?;
    if uri.scheme_str() != Some("http") {
        bail!("{base:?}: give an http:// address");
    }
    let host = uri.host().context("no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let unreachable = || format!("cannot reach {base}");
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(Into::into))
        .with_context(unreachable)?;
    get_on(tcp, &format!("{host}:{port}"), uri.path_and_query().map_or("/", |p| p.as_str())).await
}

/// GET `path` (with its query) over a connection to `host`; the body.
async fn get_on<S>(io: S, host: &str, path: &str) -> anyhow::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .with_context(|| format!("{host} did not answer within 10 s"))??;
    let status = response.status();
    let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .with_context(|| format!("{host} did not send all of its answer within 30 s"))??
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("{host}{path} answered {status}: {}", body.trim());
    }
    Ok(body)
}
