//! Port-forwards through the simulator with kube-rs's own client (`Api::portforward`), to a local server
//! standing in for a pod's port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::sync::Arc;
use std::time::Duration;

use apisim::ApiServer;
use apisim::portforward::{PodDialer, PodStream};
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POD: &str =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: app, image: x}]}\n";

/// A dialer reaching `port` of every pod at a local echo server that answers each read with `<port>:` and
/// what it read.
fn echo_dialer() -> PodDialer {
    Arc::new(|_ns: &str, _pod: &str, port: u16| {
        let dial: futures::future::BoxFuture<'static, std::io::Result<Box<dyn PodStream>>> = Box::pin(async move {
            if port == 9 {
                return Err(std::io::Error::other("connection refused"));
            }
            let (near, mut far) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = far.read(&mut buf).await {
                    let answer = [format!("{port}:").as_bytes(), &buf[..n]].concat();
                    if far.write_all(&answer).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Box::new(near) as Box<dyn PodStream>)
        });
        dial
    })
}

#[tokio::test]
async fn bytes_go_both_ways_per_port_and_dial_errors_come_back_on_the_error_channel() {
    let sim = ApiServer::start().await.unwrap();
    sim.apply_yaml(POD).unwrap();
    let pods: kube::Api<Pod> = kube::Api::namespaced(sim.client().unwrap(), "shop");
    let refused = pods.portforward("web", &[80]).await.map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("no reachable kubelet"), "{refused}");
    sim.forward_ports_with(echo_dialer());

    let mut forward = pods.portforward("web", &[80, 8080]).await.unwrap();
    for (port, message) in [(80u16, "hello"), (8080, "world")] {
        let mut stream = forward.take_stream(port).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            stream.write_all(message.as_bytes()).await.unwrap();
            let mut answer = String::new();
            let mut buf = [0u8; 64];
            while !answer.ends_with(message) {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended early: {answer:?}");
                answer.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            }
            answer
        })
        .await
        .unwrap_or_else(|_| panic!("no echo of {message:?} on port {port}"));
        assert_eq!(answer, format!("{port}:{message}"));
    }

    let mut forward = pods.portforward("web", &[9]).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), forward.take_error(9).unwrap())
        .await
        .expect("the refusal of port 9 is reported");
    assert!(error.as_deref().is_some_and(|e| e.contains("connection refused")), "{error:?}");

    let missing = pods.portforward("nobody", &[80]).await.map(|_| ()).unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
}
