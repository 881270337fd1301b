//! `pods/<name>/portforward` over WebSocket (`v4.channel.k8s.io`), as the API server and kubelet serve it
//! to `kubectl port-forward` and kube-rs's `Api::portforward`: per requested port `i`, channel `2i`
//! carries data and `2i+1` errors, each opened by a frame holding the port (little-endian `u16`); every
//! frame starts with its channel number. The kubelet's part, reaching the port on the pod's loopback, is
//! the test's: a [`PodDialer`] (a network-namespace pod is reached from inside its namespace).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A byte stream to a port of a pod.
pub trait PodStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PodStream for T {}

/// Opens a stream to `port` on the loopback of pod `namespace`/`name` (what the kubelet does).
pub type PodDialer =
    Arc<dyn Fn(&str, &str, u16) -> BoxFuture<'static, std::io::Result<Box<dyn PodStream>>> + Send + Sync>;

const PROTOCOL: &str = "v4.channel.k8s.io";
/// Ports one port-forward may ask for (a channel number is a byte: two per port).
const MAX_PORTS: usize = 16;
/// The largest WebSocket frame or message taken from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// How long reaching a pod's port may take.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The ports of `?ports=80,8080` (also `ports=80&ports=8080`), or why not.
pub(crate) fn ports_of(query: Option<&str>) -> Result<Vec<u16>, String> {
    let ports: Vec<u16> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "ports")
        .flat_map(|(_, v)| v.split(',').map(|p| p.trim().to_owned()).collect::<Vec<_>>())
        .map(|p| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port {p:?}")))
        .collect::<Result<_, _>>()?;
    match ports.len() {
        0 => Err("at least one port must be specified (?ports=)".to_owned()),
        n if n > MAX_PORTS => Err(format!("{n} ports asked for; at most {MAX_PORTS} per port-forward")),
        _ => Ok(ports),
    }
}

/// Answers the upgrade request and forwards once upgraded; `Err` when the request is no WebSocket
/// upgrade this serves.
pub(crate) fn upgrade(
    headers: &HeaderMap,
    on_upgrade: hyper::upgrade::OnUpgrade,
    dial: PodDialer,
    (namespace, pod): (String, String),
    ports: Vec<u16>,
) -> Result<Response, String> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("a WebSocket upgrade (Sec-WebSocket-Key) is required")?;
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return Err(format!("the client must offer the {PROTOCOL} subprotocol (offered {offered:?})"));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(MAX_MESSAGE))
                    .max_frame_size(Some(MAX_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                forward(ws, dial, &namespace, &pod, &ports).await;
            }
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade".to_owned()),
            (header::UPGRADE, "websocket".to_owned()),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
            (header::SEC_WEBSOCKET_PROTOCOL, PROTOCOL.to_owned()),
        ],
    )
        .into_response())
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(channel);
    bytes.extend_from_slice(data);
    Message::binary(bytes)
}

/// Pumps bytes between the WebSocket and the pod's ports until the client closes or every port's stream
/// has ended.
async fn forward<S>(ws: WebSocketStream<S>, dial: PodDialer, namespace: &str, pod: &str, ports: &[u16])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = ws.split();
    let (from_pods, mut to_client) = mpsc::channel::<(u8, Option<Bytes>)>(16);
    let mut writers = Vec::with_capacity(ports.len());
    let mut open = 0usize;
    for (i, port) in ports.iter().enumerate() {
        let Ok(data) = u8::try_from(2 * i) else { break };
        let initial = port.to_le_bytes();
        if sink.send(frame(data, &initial)).await.is_err() || sink.send(frame(data + 1, &initial)).await.is_err() {
            return;
        }
        let dialed = tokio::time::timeout(DIAL_TIMEOUT, dial(namespace, pod, *port))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")));
        match dialed {
            Ok(stream) => {
                let (mut reader, writer) = tokio::io::split(stream);
                writers.push(Some(writer));
                open += 1;
                let from_pods = from_pods.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if from_pods.send((data, Some(Bytes::copy_from_slice(&buf[..n])))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = from_pods.send((data, None)).await;
                });
            }
            Err(e) => {
                writers.push(None);
                let message = format!("error forwarding port {port} to pod {namespace}/{pod}: {e}");
                if sink.send(frame(data + 1, message.as_bytes())).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(from_pods);
    while open > 0 {
        tokio::select! {
            message = incoming.next() => match message {
                // Data for a port: an even channel (odd ones are the server's, for errors).
                Some(Ok(Message::Binary(bytes))) if bytes.len() > 1 && bytes[0] % 2 == 0 => {
                    let index = usize::from(bytes[0] / 2);
                    // (A slow pod holds up the other direction too; this serves tests, one request at a time.)
                    if let Some(Some(writer)) = writers.get_mut(index)
                        && writer.write_all(&bytes[1..]).await.is_err()
                    {
                        writers[index] = None;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            from_pod = to_client.recv() => match from_pod {
                Some((channel, Some(bytes))) => {
                    if sink.send(frame(channel, &bytes)).await.is_err() {
                        return;
                    }
                }
                Some((_, None)) => open -= 1,
                None => break,
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_either_form_and_bad_ones_refused() {
        assert_eq!(ports_of(Some("&ports=80%2C1234")), Ok(vec![80, 1234]));
        assert_eq!(ports_of(Some("ports=80&ports=15000")), Ok(vec![80, 15000]));
        assert!(ports_of(Some("ports=0")).is_err());
        assert!(ports_of(Some("ports=x")).is_err());
        assert!(ports_of(None).is_err());
        assert!(ports_of(Some(&format!("ports={}", vec!["80"; 17].join(",")))).is_err());
    }
}
