//! A cheap OTLP/HTTP trace sink for the tracing benchmarks, and the client side that
//! reads its counters.
//!
//! The sink accepts `POST /v1/traces` (HTTP/1.1, `Content-Length` bodies, keep-alive or
//! `Connection: close`), counts requests, header and body bytes and the spans in each
//! protobuf body (walked on the wire format, no schema needed), and answers 200 with an
//! empty `ExportTraceServiceResponse` (`Content-Type: application/x-protobuf`,
//! `Content-Length: 0`). `GET /stats` returns the counters as JSON; `POST /reset` sets
//! them to zero. Bounded: a request head is at most [`MAX_HEAD_BYTES`], a body at most
//! [`MAX_BODY_BYTES`], [`MAX_CONNECTIONS`] connections at once, and a connection that
//! sends nothing for [`IDLE_TIMEOUT`] is closed.
//!
//! [`settle`] (subcommand `otlp-stats`) waits until the sinks and the gateway's span
//! counters stop moving, then reports payload bytes per span.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};

use crate::procfs;
use mcp_shared::time::timeout;

/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection idle (or stalled mid-request) this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response the stats client reads.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The sink's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// `POST /v1/traces` requests answered 200.
    pub requests: AtomicU64,
    /// Their body bytes (the OTLP payload).
    pub body_bytes: AtomicU64,
    /// Their head bytes (request line and headers).
    pub header_bytes: AtomicU64,
    /// Spans found in the bodies.
    pub spans: AtomicU64,
    /// Bytes of the encoded `Span` messages alone (without resource and scope).
    pub span_bytes: AtomicU64,
    /// Bodies that were not a well-formed protobuf message (still answered 200).
    pub malformed: AtomicU64,
    /// Requests refused (too large, chunked, unknown path or method).
    pub rejected: AtomicU64,
    /// This process's CPU time at the last reset, ms.
    pub cpu_base_ms: AtomicU64,
}

impl Stats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "requests": g(&self.requests),
            "body_bytes": g(&self.body_bytes),
            "header_bytes": g(&self.header_bytes),
            "spans": g(&self.spans),
            "span_bytes": g(&self.span_bytes),
            "malformed": g(&self.malformed),
            "rejected": g(&self.rejected),
            // The whole process's CPU since the reset (the sink's own cost, for the
            // otlp-sink subcommand, whose process does nothing else).
            "cpu_ms": procfs::cpu_ms(std::process::id())
                .map(|ms| ms - g(&self.cpu_base_ms) as f64),
        })
    }

    fn reset(&self) {
        let cpu = procfs::cpu_ms(std::process::id()).unwrap_or(0.0);
        self.cpu_base_ms.store(cpu as u64, Ordering::Relaxed);
        for a in [
            &self.requests,
            &self.body_bytes,
            &self.header_bytes,
            &self.spans,
            &self.span_bytes,
            &self.malformed,
            &self.rejected,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// Binds `listen` (e.g. `127.0.0.1:0`).
pub fn bind(listen: &str) -> Result<(TcpListener, String), String> {
    let l = std::net::TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let l = TcpListener::try_from(l).map_err(|e| format!("{listen}: {e}"))?;
    Ok((l, format!("http://{addr}")))
}

/// Starts a sink on a thread of its own (for in-process use); returns its URL and
/// counters. It lives until the process exits.
pub fn start_thread() -> Result<(String, Arc<Stats>), String> {
    let (listener, url) = bind("127.0.0.1:0")?;
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    std::thread::Builder::new()
        .name("otlp-sink".into())
        .spawn(move || serve(listener, s))
        .map_err(|e| format!("sink thread: {e}"))?;
    Ok((url, stats))
}

/// Serves on `listener` forever (one task per connection on a local executor).
pub fn serve(listener: TcpListener, stats: Arc<Stats>) {
    let ex = smol::LocalExecutor::new();
    let active = Arc::new(AtomicUsize::new(0));
    smol::block_on(ex.run(async {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    smol::Timer::after(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                drop(stream);
                continue;
            }
            stream.set_nodelay(true).ok();
            active.fetch_add(1, Ordering::Relaxed);
            let (stats, active) = (stats.clone(), active.clone());
            ex.spawn(async move {
                let _ = connection(stream, &stats).await;
                active.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
        }
    }));
}

/// One parsed request head.
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    path: String,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    let mut h = Head {
        method: method.to_string(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(v.parse().ok()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = !v.eq_ignore_ascii_case("identity");
        } else if k.eq_ignore_ascii_case("connection") {
            h.close = v.eq_ignore_ascii_case("close");
        }
    }
    Some(h)
}

async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>, chunk: usize) -> std::io::Result<usize> {
    let old = buf.len();
    buf.resize(old + chunk, 0);
    let n = timeout(IDLE_TIMEOUT, s.read(&mut buf[old..]))
        .await
        .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()));
    buf.truncate(old + *n.as_ref().unwrap_or(&0));
    n
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    timeout(IDLE_TIMEOUT, s.write_all(&out))
        .await
        .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()))?;
    s.flush().await
}

/// Serves the requests of one connection until it closes or asks to.
async fn connection(mut s: TcpStream, stats: &Stats) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() >= MAX_HEAD_BYTES {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                return respond(
                    &mut s,
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"",
                    true,
                )
                .await;
            }
            let room = (MAX_HEAD_BYTES - buf.len()).min(8192);
            if read_some(&mut s, &mut buf, room).await? == 0 {
                return Ok(());
            }
        };
        let Some(head) = parse_head(&buf[..head_end - 4]) else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            return respond(&mut s, "400 Bad Request", "text/plain", b"", true).await;
        };
        if head.chunked {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            return respond(&mut s, "411 Length Required", "text/plain", b"", true).await;
        }
        let len = head.content_length.unwrap_or(0);
        if len > MAX_BODY_BYTES {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            return respond(&mut s, "413 Content Too Large", "text/plain", b"", true).await;
        }
        // The body.
        while buf.len() < head_end + len {
            let want = (head_end + len - buf.len()).min(256 * 1024);
            if read_some(&mut s, &mut buf, want).await? == 0 {
                return Ok(());
            }
        }
        let body = &buf[head_end..head_end + len];
        match (head.method.as_str(), head.path.as_str()) {
            ("POST", "/v1/traces") => {
                match count_spans(body) {
                    Some((n, bytes)) => {
                        stats.spans.fetch_add(n, Ordering::Relaxed);
                        stats.span_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    None => {
                        stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats.body_bytes.fetch_add(len as u64, Ordering::Relaxed);
                stats
                    .header_bytes
                    .fetch_add(head_end as u64, Ordering::Relaxed);
                respond(&mut s, "200 OK", "application/x-protobuf", b"", head.close).await?;
            }
            ("GET", "/stats") => {
                let body = stats.to_json().to_string();
                respond(
                    &mut s,
                    "200 OK",
                    "application/json",
                    body.as_bytes(),
                    head.close,
                )
                .await?;
            }
            ("POST", "/reset") => {
                stats.reset();
                respond(&mut s, "200 OK", "text/plain", b"", head.close).await?;
            }
            (_, "/v1/traces" | "/stats" | "/reset") => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                respond(&mut s, "405 Method Not Allowed", "text/plain", b"", true).await?;
                return Ok(());
            }
            _ => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                respond(&mut s, "404 Not Found", "text/plain", b"", head.close).await?;
            }
        }
        if head.close {
            return Ok(());
        }
        buf.drain(..head_end + len);
    }
}

/// Protobuf wire format: one field of a message.
enum Field<'a> {
    /// A length-delimited field (sub-message, string or bytes).
    Len(u32, &'a [u8]),
    /// Any other wire type (skipped).
    Other,
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message, or `None` if it is not well formed.
fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (number, wire) = (u32::try_from(key >> 3).ok()?, key & 7);
        match wire {
            0 => {
                varint(b, &mut i)?;
                out.push(Field::Other);
            }
            1 | 5 => {
                i = i.checked_add(if wire == 1 { 8 } else { 4 })?;
                if i > b.len() {
                    return None;
                }
                out.push(Field::Other);
            }
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len).filter(|&e| e <= b.len())?;
                out.push(Field::Len(number, &b[i..end]));
                i = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The spans of an `ExportTraceServiceRequest` (`resource_spans` = 1 → `scope_spans` =
/// 2 → `spans` = 2) and the bytes of their encoded `Span` messages.
pub fn count_spans(body: &[u8]) -> Option<(u64, u64)> {
    let (mut n, mut bytes) = (0u64, 0u64);
    for rs in fields(body)? {
        let Field::Len(1, rs) = rs else { continue };
        for ss in fields(rs)? {
            let Field::Len(2, ss) = ss else { continue };
            for span in fields(ss)? {
                if let Field::Len(2, s) = span {
                    n += 1;
                    bytes += s.len() as u64;
                }
            }
        }
    }
    Some((n, bytes))
}

/// `http://host:port[/…]` → `host:port`.
fn authority(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// One HTTP/1.1 request with `Connection: close` and no body; (status, body).
pub async fn http(method: &str, url: &str, path: &str) -> Result<(u16, String), String> {
    let addr = authority(url)?;
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
            if raw.len() > MAX_RESPONSE_BYTES {
                return Err(format!("{addr}: response too large"));
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{addr}{path}: incomplete response"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{addr}{path}: bad status line"))?;
        Ok((status, body.to_string()))
    };
    timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|| Err(format!("{addr}{path}: no response within 10 s")))
}

/// The value of an unlabelled Prometheus sample `name` in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// What `otlp-stats` reads.
pub struct SettleOpts {
    /// `(name, sink URL)`, e.g. `("router", "http://127.0.0.1:4318")`.
    pub sinks: Vec<(String, String)>,
    /// The gateway's admin URL, for `mcp_gateway_spans_{exported,dropped}_total`.
    pub admin: Option<String>,
    /// Requests the load sent (measured + warm-up), for spans per request.
    pub requests: u64,
    /// Settled when nothing moved for this long.
    pub quiet: Duration,
    /// Give up waiting after this long (and report what is there).
    pub timeout: Duration,
    /// Name of the run in the output.
    pub label: String,
}

async fn snapshot(o: &SettleOpts) -> Result<(Vec<Value>, Option<(f64, f64)>), String> {
    let mut sinks = Vec::new();
    for (name, url) in &o.sinks {
        let (status, body) = http("GET", url, "/stats").await?;
        if status != 200 {
            return Err(format!("{name} sink {url}: /stats answered {status}"));
        }
        sinks.push(serde_json::from_str(&body).map_err(|e| format!("{url}/stats: {e}"))?);
    }
    let gw = match &o.admin {
        Some(url) => {
            let (status, text) = http("GET", url, "/metrics").await?;
            if status != 200 {
                return Err(format!("{url}/metrics answered {status}"));
            }
            Some((
                metric(&text, "mcp_gateway_spans_exported_total")
                    .ok_or("no mcp_gateway_spans_exported_total in /metrics")?,
                metric(&text, "mcp_gateway_spans_dropped_total").unwrap_or(0.0),
            ))
        }
        None => None,
    };
    Ok((sinks, gw))
}

/// Waits until the sinks' counters and the gateway's span counters have not moved for
/// `quiet` (the batch processors export a partial batch once per `scheduled_delay`),
/// then reports bytes per span: body bytes / spans, per sink and over all. The
/// `gateway` sink's spans are the gateway's own count (`…_exported_total`) when `admin`
/// is given, else those the sink found.
pub async fn settle(o: &SettleOpts) -> Result<Value, String> {
    let t0 = Instant::now();
    let mut last = snapshot(o).await?;
    let mut still_since = Instant::now();
    let settled = loop {
        if still_since.elapsed() >= o.quiet {
            break true;
        }
        if t0.elapsed() >= o.timeout {
            break false;
        }
        smol::Timer::after(Duration::from_millis(100)).await;
        let now = snapshot(o).await?;
        // The counters, not the sinks' CPU time (answering /stats moves that).
        let counters = |(sinks, gw): &(Vec<Value>, _)| {
            let mut s = sinks.clone();
            s.iter_mut().for_each(|v| v["cpu_ms"] = Value::Null);
            (s, *gw)
        };
        if counters(&now) != counters(&last) {
            last = now;
            still_since = Instant::now();
        }
    };
    let (sinks, gw) = last;
    let settle_ms = (t0.elapsed().as_secs_f64() * 1e3).round();
    let mut out = json!({
        "label": o.label,
        "mode": "otlp",
        "requests": o.requests,
        "settled": settled,
        "settle_ms": settle_ms,
    });
    let (mut all_bytes, mut all_spans) = (0.0, 0.0);
    out["sinks_cpu_ms"] = sinks
        .iter()
        .filter_map(|s| s["cpu_ms"].as_f64())
        .sum::<f64>()
        .into();
    let per_req = |x: f64| {
        if o.requests > 0 {
            Some(x / o.requests as f64)
        } else {
            None
        }
    };
    for ((name, _), s) in o.sinks.iter().zip(&sinks) {
        let bytes = s["body_bytes"].as_f64().unwrap_or(0.0);
        let found = s["spans"].as_f64().unwrap_or(0.0);
        let spans = match (name.as_str(), gw) {
            ("gateway", Some((exported, dropped))) => {
                out["gateway_spans_exported"] = exported.into();
                out["gateway_spans_dropped"] = dropped.into();
                exported
            }
            _ => found,
        };
        all_bytes += bytes;
        all_spans += spans;
        out[format!("{name}_sink")] = s.clone();
        out[format!("{name}_spans")] = spans.into();
        out[format!("{name}_spans_per_request")] = json!(per_req(spans));
        out[format!("{name}_bytes_per_span")] = json!((spans > 0.0).then(|| bytes / spans));
    }
    out["bytes_per_span"] = json!((all_spans > 0.0).then(|| all_bytes / all_spans));
    Ok(out)
}

/// `POST /reset` to every sink.
pub async fn reset(sinks: &[(String, String)]) -> Result<(), String> {
    for (name, url) in sinks {
        let (status, _) = http("POST", url, "/reset").await?;
        if status != 200 {
            return Err(format!("{name} sink {url}: /reset answered {status}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protobuf length-delimited field.
    fn len_field(number: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |mut v: u64| loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        };
        put(u64::from(number) << 3 | 2);
        put(body.len() as u64);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn counts_spans_on_the_wire() {
        // span: name (5) = "x", kind (6, varint) = 1, start (7, fixed64).
        let mut span = len_field(5, b"x");
        span.extend_from_slice(&[6 << 3, 1, 7 << 3 | 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let scope = len_field(1, &len_field(1, b"lib"));
        let mut ss = scope.clone();
        ss.extend(len_field(2, &span));
        ss.extend(len_field(2, &span));
        let mut rs = len_field(1, &len_field(1, b"resource attrs"));
        rs.extend(len_field(2, &ss));
        rs.extend(len_field(2, &ss));
        let mut req = len_field(1, &rs);
        req.extend(len_field(1, &rs));
        assert_eq!(count_spans(&req), Some((8, 8 * span.len() as u64)));
        assert_eq!(count_spans(&[]), Some((0, 0)));
        assert_eq!(count_spans(&req[..req.len() - 1]), None);
    }

    #[test]
    fn parses_heads() {
        let h = parse_head(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\nConnection: close",
        )
        .unwrap();
        assert_eq!(
            h,
            Head {
                method: "POST".into(),
                path: "/v1/traces".into(),
                content_length: Some(12),
                chunked: false,
                close: true
            }
        );
        assert!(
            parse_head(b"GET /stats HTTP/1.1\r\nTransfer-Encoding: chunked")
                .unwrap()
                .chunked
        );
        assert!(parse_head(b"garbage").is_none());
    }

    #[test]
    fn reads_prometheus_samples() {
        let t = "# HELP a x\na_total 3\nmcp_gateway_spans_exported_total 42\n";
        assert_eq!(metric(t, "mcp_gateway_spans_exported_total"), Some(42.0));
        assert_eq!(metric(t, "a"), None);
    }

    #[test]
    fn sink_answers_and_counts() {
        let (url, stats) = start_thread().unwrap();
        let span = len_field(5, b"abc");
        let body = len_field(1, &len_field(2, &len_field(2, &span)));
        smol::block_on(async {
            let addr = authority(&url).unwrap().to_string();
            let mut s = TcpStream::connect(addr.as_str()).await.unwrap();
            // Two requests on one connection (keep-alive), the second one closing.
            for close in [false, true] {
                let head = format!(
                    "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{}\r\n",
                    body.len(),
                    if close { "Connection: close\r\n" } else { "" }
                );
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&body).await.unwrap();
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 512];
                    let n = s.read(&mut b).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&b[..n]);
                }
                let text = String::from_utf8(got).unwrap();
                assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
                assert!(text.contains("Content-Type: application/x-protobuf\r\n"));
                assert!(text.contains("Content-Length: 0\r\n"));
            }
            let (status, json) = http("GET", &url, "/stats").await.unwrap();
            assert_eq!(status, 200);
            let v: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["requests"], 2);
            assert_eq!(v["spans"], 2);
            assert_eq!(v["body_bytes"], 2 * body.len() as u64);
            let (status, _) = http("GET", &url, "/nope").await.unwrap();
            assert_eq!(status, 404);
            reset(&[("t".into(), url.clone())]).await.unwrap();
            assert_eq!(stats.requests.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn sink_refuses_oversized_bodies() {
        let (url, stats) = start_thread().unwrap();
        smol::block_on(async {
            let addr = authority(&url).unwrap().to_string();
            let mut s = TcpStream::connect(addr.as_str()).await.unwrap();
            let head = format!(
                "POST /v1/traces HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES + 1
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        });
        assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
    }
}
