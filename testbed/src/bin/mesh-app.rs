//! `mesh-app`: the applications that run inside testbed pods. Plain sockets, no knowledge of the mesh:
//! an HTTP server, a TCP echo server, and their clients. Every client call is bounded in time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mesh-app", about = "Test applications for the local mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 server answering every request with 200 and "hello from <name>".
    HttpServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
        /// Appends every request to this file: `<method> <path> <body>`, one line each (a Zipkin collector,
        /// say).
        #[arg(long)]
        record: Option<std::path::PathBuf>,
    },
    /// TCP server that answers each line with "<name>: <line>".
    TcpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// Server-first TCP (like a database): greets every connection with "<name> ready" before reading.
    BannerServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// gRPC (HTTP/2 cleartext) server: the standard health service, reporting SERVING overall and for
    /// `<name>`.
    GrpcServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// One gRPC health check (`grpc.health.v1.Health/Check`) to host:port; prints the serving status.
    GrpcCheck {
        addr: String,
        #[arg(long, default_value = "")]
        service: String,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Connects and prints the first line the server sends, without sending anything.
    TcpRead {
        addr: String,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// One HTTP request (GET unless --method); prints "status=<code>" then the body (or only the body).
    Get {
        url: String,
        #[arg(long)]
        body_only: bool,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
        #[arg(long, default_value = "GET")]
        method: String,
        /// An extra request header, `name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Print the response's headers too (`header <name>: <value>`, lower-case).
        #[arg(long)]
        show_headers: bool,
    },
    /// Sends --count requests (HTTP GET to a URL, or with --tcp one line to host:port) and prints how many
    /// answers came from each server name, one `name=count` per line, then `errors=<n>`.
    Tally {
        target: String,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long)]
        tcp: bool,
    },
    /// Connects to addr, then copies stdin to it and what it sends to stdout until it closes: the
    /// kubelet's part of a port-forward (reaching a port on the pod's loopback from inside the pod).
    Pipe {
        addr: String,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Sends one line over TCP and prints the reply line.
    TcpSend {
        addr: String,
        message: String,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Repeats GET requests and prints one line per request (bounded by --count).
    /// `count` GETs of `url` at once (each on its own connection); prints how many got each status
    /// (`200=3`, `503=7`) and `errors=<n>`.
    Burst {
        url: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    Load {
        url: String,
        #[arg(long, default_value_t = 10)]
        count: u32,
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        #[arg(long, default_value = "")]
        label: String,
    },
}

fn main() -> std::process::ExitCode {
    testbed::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::HttpServer { port, name, record } => http_server(port, &name, record),
        Cmd::TcpEcho { port, name } => tcp_echo(port, &name),
        Cmd::BannerServer { port, name } => banner_server(port, &name),
        Cmd::GrpcServer { port, name } => tokio_runtime()?.block_on(grpc_server(port, name)),
        Cmd::GrpcCheck { addr, service, timeout_s } => {
            let status = tokio_runtime()?.block_on(grpc_check(&addr, service, Duration::from_secs(timeout_s)))?;
            println!("{status}");
            Ok(())
        }
        Cmd::Pipe { addr, timeout_s } => pipe(&addr, Duration::from_secs(timeout_s)),
        Cmd::TcpRead { addr, timeout_s } => {
            let s = connect(&addr, Duration::from_secs(timeout_s))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).context("reading the greeting")?;
            if line.is_empty() {
                bail!("connection closed without a greeting");
            }
            println!("{}", line.trim_end());
            Ok(())
        }
        Cmd::Get { url, body_only, timeout_s, method, headers, show_headers } => {
            let (status, head, body) = request_full(&method, &url, &headers, Duration::from_secs(timeout_s))?;
            if !body_only {
                println!("status={status}");
            }
            if show_headers {
                for line in head.lines().skip(1) {
                    println!("header {}", line.trim_end().to_ascii_lowercase());
                }
            }
            print!("{body}");
            if !(200..300).contains(&status) {
                std::process::exit(2);
            }
            Ok(())
        }
        Cmd::Tally { target, count, tcp } => {
            let mut seen: std::collections::BTreeMap<String, u32> = Default::default();
            let mut errors = 0;
            for _ in 0..count {
                let answer = if tcp {
                    tcp_send(&target, "ping", Duration::from_secs(5))
                        .map(|line| line.split(':').next().unwrap_or_default().to_owned())
                } else {
                    get(&target, Duration::from_secs(5)).and_then(|(status, body)| {
                        if status != 200 {
                            bail!("status {status}");
                        }
                        Ok(body.split_whitespace().nth(2).unwrap_or_default().to_owned())
                    })
                };
                match answer {
                    Ok(name) => *seen.entry(name).or_default() += 1,
                    Err(_) => errors += 1,
                }
            }
            for (name, n) in seen {
                println!("{name}={n}");
            }
            println!("errors={errors}");
            Ok(())
        }
        Cmd::TcpSend { addr, message, timeout_s } => {
            println!("{}", tcp_send(&addr, &message, Duration::from_secs(timeout_s))?);
            Ok(())
        }
        Cmd::Burst { url, count } => {
            let start = std::sync::Arc::new(std::sync::Barrier::new(count as usize));
            let workers: Vec<_> = (0..count)
                .map(|_| {
                    let (url, start) = (url.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        get(&url, Duration::from_secs(20)).map(|(status, _)| status).ok()
                    })
                })
                .collect();
            let mut seen: std::collections::BTreeMap<u16, u32> = Default::default();
            let mut errors = 0;
            for w in workers {
                match w.join().ok().flatten() {
                    Some(status) => *seen.entry(status).or_default() += 1,
                    None => errors += 1,
                }
            }
            for (status, n) in seen {
                println!("{status}={n}");
            }
            println!("errors={errors}");
            Ok(())
        }
        Cmd::Load { url, count, interval_ms, label } => {
            for i in 1..=count {
                let start = Instant::now();
                match get(&url, Duration::from_secs(5)) {
                    Ok((status, body)) => println!(
                        "{label}#{i} GET {url} -> {status} in {:.1}ms: {}",
                        start.elapsed().as_secs_f64() * 1e3,
                        body.trim()
                    ),
                    Err(e) => println!("{label}#{i} GET {url} -> error: {e:#}"),
                }
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
            Ok(())
        }
    }
}

fn http_server(port: u16, name: &str, record: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding :{port}"))?;
    let record = record
        .map(|p| {
            std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("{}", p.display()))
        })
        .transpose()?
        .map(|f| std::sync::Arc::new(std::sync::Mutex::new(f)));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_owned();
        let record = record.clone();
        std::thread::spawn(move || {
            let _ = serve_http(conn, &name, record.as_deref());
        });
    }
    Ok(())
}

fn serve_http(conn: TcpStream, name: &str, record: Option<&std::sync::Mutex<std::fs::File>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let method = request_line.split_whitespace().next().unwrap_or("GET").to_owned();
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        if chunked {
            body = read_chunked(&mut reader)?;
        }
        if let Some(file) = record
            && let Ok(mut f) = file.lock()
        {
            let body = String::from_utf8_lossy(&body).replace('\n', " ");
            writeln!(f, "{method} {path} {body}")?;
        }
        // `/slow/<ms>/...`: answered after that long (a server under load, for circuit breakers).
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|r| r.split('/').next()?.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
        let reply = format!("hello from {name} path={path}\n");
        let status = if flaky(&path) { "503 Service Unavailable" } else { "200 OK" };
        write!(out, "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{reply}", reply.len())?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// `/flaky/<n>/...`: the first `n` requests for that exact path are answered 503, later ones 200 (a
/// server that fails for a while, for retry policies).
fn flaky(path: &str) -> bool {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
        std::sync::LazyLock::new(Default::default);
    let Some(n) = path.strip_prefix("/flaky/").and_then(|rest| rest.split('/').next()?.parse::<u32>().ok()) else {
        return false;
    };
    let Ok(mut seen) = SEEN.lock() else { return false };
    let count = seen.entry(path.to_owned()).or_default();
    *count += 1;
    *count <= n
}

/// A chunked request body: hex size lines, each followed by that many bytes and CRLF, up to a size 0.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let hex = size.trim().split(';').next().unwrap_or_default();
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad("chunk size"))?;
        if n > 16 << 20 {
            return Err(bad("chunk too large"));
        }
        if n == 0 {
            // Trailers, then the blank line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + n, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn tcp_echo(port: u16, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding :{port}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_owned();
        std::thread::spawn(move || -> std::io::Result<()> {
            conn.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut reader = BufReader::new(conn.try_clone()?);
            let mut out = conn;
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                writeln!(out, "{name}: {}", line.trim_end())?;
                line.clear();
            }
            Ok(())
        });
    }
    Ok(())
}

fn banner_server(port: u16, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding :{port}"))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = writeln!(conn, "{name} ready");
        // Keep the connection open briefly so the client can read; it is closed when dropped.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.read(&mut [0u8; 64]);
    }
    Ok(())
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a tokio runtime")
}

async fn grpc_server(port: u16, name: String) -> anyhow::Result<()> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(&name, tonic_health::ServingStatus::Serving).await;
    tonic::transport::Server::builder()
        .add_service(service)
        .serve(([0, 0, 0, 0], port).into())
        .await
        .with_context(|| format!("serving gRPC on :{port}"))
}

async fn grpc_check(addr: &str, service: String, timeout: Duration) -> anyhow::Result<String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map_err(|s| anyhow::anyhow!("gRPC status {:?}: {}", s.code(), s.message()))?;
    Ok(reply.into_inner().status().as_str_name().to_owned())
}

fn pipe(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let s = connect(addr, timeout)?;
    // Idle periods are the client's business: no timeouts once connected.
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    let mut up = s.try_clone()?;
    // Each chunk is passed on as it comes (std's copy may hold output back until the stream ends, and a
    // kept-alive HTTP connection never ends).
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            if up.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = (&s).read(&mut buf).context("reading")?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

fn connect(addr: &str, timeout: Duration) -> anyhow::Result<TcpStream> {
    let sa = addr.to_socket_addrs()?.next().with_context(|| format!("cannot resolve {addr}"))?;
    let s = TcpStream::connect_timeout(&sa, timeout).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn get(url: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    request("GET", url, &[], timeout)
}

fn request(method: &str, url: &str, headers: &[String], timeout: Duration) -> anyhow::Result<(u16, String)> {
    request_full(method, url, headers, timeout).map(|(status, _, body)| (status, body))
}

/// One request: the status, the response's head (status line and headers) and its body.
fn request_full(
    method: &str,
    url: &str,
    headers: &[String],
    timeout: Duration,
) -> anyhow::Result<(u16, String, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let mut s = connect(&addr, timeout)?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: mesh-app\r\nconnection: close\r\n\
         content-length: 0\r\n{extra}\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("malformed status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok((status, head.to_owned(), body))
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").context("malformed chunk")?;
        let size =
            usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("truncated chunk")?);
        rest = after.get(size + 2..).context("truncated chunk")?;
    }
}

fn tcp_send(addr: &str, message: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut s = connect(addr, timeout)?;
    writeln!(s, "{message}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).context("reading the reply")?;
    if line.is_empty() {
        bail!("connection closed without a reply");
    }
    Ok(line.trim_end().to_owned())
}
