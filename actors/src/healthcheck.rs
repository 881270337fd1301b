//! `osm-healthcheck`: the pod-side helper behind rewritten `tcpSocket` probes. The injector turns a
//! container's `tcpSocket` probe into an `httpGet` on port 15904, path `/osm-healthcheck`, with the
//! original port in the `Original-Tcp-Port` header; this server answers it by opening a TCP connection to
//! that port on the pod's loopback. The sidecar is not on the path (15904 is excluded from interception),
//! so the kubelet learns whether the application accepts connections, not whether Envoy does.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;

/// The header carrying the probe's original port, and the path the rewritten probes ask for.
pub use k8s::inject::{HEALTHCHECK_PATH as PATH, HEALTHCHECK_PORT_HEADER as PORT_HEADER};

/// The router: one path; `dial_timeout` bounds each connection attempt (the kubelet gives up after the
/// probe's own timeout anyway, and a dial that never completes must not hold a connection slot).
pub fn router(dial_timeout: Duration) -> Router {
    Router::new().route(PATH, get(move |headers: HeaderMap| check(headers, dial_timeout)))
}

/// 200 when the port accepts a connection; 404 when it does not (as OSM answers); 400 for a request
/// without a usable port.
async fn check(headers: HeaderMap, dial_timeout: Duration) -> (StatusCode, String) {
    let Some(raw) = headers.get(PORT_HEADER) else {
        tracing::warn!("probe without the {PORT_HEADER} header");
        return (StatusCode::BAD_REQUEST, format!("header {PORT_HEADER} not found in request\n"));
    };
    let Some(port) = raw.to_str().ok().and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| *p > 0) else {
        let shown = String::from_utf8_lossy(raw.as_bytes()).chars().take(32).collect::<String>();
        tracing::warn!(value = %shown.escape_debug(), "probe with a bad {PORT_HEADER} header");
        return (StatusCode::BAD_REQUEST, format!("header {PORT_HEADER}: {shown:?} is not a port (1-65535)\n"));
    };
    let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(dial_timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => {
            tracing::debug!(%address, "probe succeeded");
            (StatusCode::OK, format!("Successfully established connection to {address}\n"))
        }
        Ok(Err(e)) => {
            tracing::info!(%address, error = %e, "probe failed");
            (StatusCode::NOT_FOUND, format!("Failed to establish connection to {address}: {e}\n"))
        }
        Err(_) => {
            tracing::info!(%address, "probe timed out");
            (StatusCode::NOT_FOUND, format!("Failed to establish connection to {address}: timed out\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower_service::Service as _;

    async fn ask(header: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(PATH);
        if let Some(v) = header {
            req = req.header(PORT_HEADER, v);
        }
        let resp = router(Duration::from_secs(1)).call(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn answers_by_dialing_the_original_port_on_loopback() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = open.local_addr().unwrap().port();
        let (status, body) = ask(Some(&port.to_string())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        drop(open);
        // The same port, now closed: refused.
        let (status, body) = ask(Some(&port.to_string())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    }

    #[tokio::test]
    async fn a_request_without_a_port_is_refused_and_named() {
        let (status, body) = ask(None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains(PORT_HEADER), "{body}");
        for bad in ["0", "65536", "http", "-1"] {
            let (status, body) = ask(Some(bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert!(body.contains("not a port"), "{body}");
        }
    }
}
