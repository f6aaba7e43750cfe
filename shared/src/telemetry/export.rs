//! Span exporters, run on the exporter thread: OTLP/HTTP-protobuf (opentelemetry-otlp
//! with a small keep-alive HTTP/1.1 client on async-net), OTLP/gRPC (HTTP/2 via the
//! `h2` crate on async-net, no tokio runtime: tokio is compiled for its I/O traits
//! only), and the stdout tree/JSON exporter. Both OTLP exporters go over
//! [`super::conn`] (plain text or TLS) and keep one connection open across exports.
//!
//! Kept connections: an idle connection is checked before it is reused, and one the
//! collector closed is replaced at once; a request that fails on a reused connection
//! before any answer is sent once more on a fresh connection, which is not counted as
//! a failed attempt. Everything (connect, TLS handshake, retries) fits in the export
//! timeout.
//!
//! This is the one module of `shared` that does network I/O (with `conn`). Its I/O is
//! never traced.

#[cfg(feature = "otlp-grpc")]
use std::collections::BTreeMap;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::io;
#[cfg(feature = "otlp-grpc")]
use std::pin::Pin;
#[cfg(feature = "otlp-http")]
use std::sync::{Arc, Mutex};
#[cfg(feature = "otlp-grpc")]
use std::task::{ready, Context as TaskCx, Poll};
use std::time::Duration;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::time::Instant;

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use bytes::Bytes;
#[cfg(feature = "otlp-http")]
use futures_lite::{AsyncReadExt, AsyncWriteExt};
#[cfg(feature = "otlp-http")]
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
#[cfg(feature = "otlp-grpc")]
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
#[cfg(feature = "otlp-grpc")]
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
#[cfg(feature = "otlp-grpc")]
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::SpanData;
#[cfg(feature = "otlp-http")]
use opentelemetry_sdk::trace::SpanExporter;
use opentelemetry_sdk::Resource;
#[cfg(feature = "otlp-grpc")]
use prost::Message as _;

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use super::conn::{self, Connector, Endpoint, Stream};
use super::stdout::StdoutExporter;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::config::TracingConfig;

/// Largest collector response read (bytes).
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Bytes asked of the socket per read of an HTTP response.
#[cfg(feature = "otlp-http")]
const READ_CHUNK: usize = 8192;
/// First retry delay of a failed export; doubles up to the export timeout.
#[cfg(feature = "otlp-grpc")]
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// gRPC path of the OTLP trace service.
#[cfg(feature = "otlp-grpc")]
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Port of an `http://` OTLP/gRPC endpoint without one.
#[cfg(feature = "otlp-grpc")]
pub const GRPC_PORT: u16 = 4317;
/// Port of an `http://` OTLP/HTTP endpoint without one.
#[cfg(feature = "otlp-http")]
pub const HTTP_PORT: u16 = 80;

/// One of the exporters.
#[derive(Debug)]
pub enum Exporter {
    /// OTLP/HTTP with protobuf bodies.
    #[cfg(feature = "otlp-http")]
    Http(HttpExporter),
    /// OTLP/gRPC.
    #[cfg(feature = "otlp-grpc")]
    Grpc(GrpcExporter),
    /// Human-readable tree (or JSON lines).
    Stdout(StdoutExporter),
}

impl Exporter {
    /// OTLP/HTTP to `cfg.otlp_endpoint` (`/v1/traces` appended when it has no path).
    #[cfg(feature = "otlp-http")]
    pub fn http(cfg: &TracingConfig) -> Result<Exporter, String> {
        let endpoint = &cfg.otlp_endpoint;
        let url = if endpoint.trim_end_matches('/').matches('/').count() > 2 {
            endpoint.to_string()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let connector = Connector::new(Endpoint::parse(&url, HTTP_PORT)?, cfg, &[b"http/1.1"])?;
        let client = SmolHttpClient {
            shared: Arc::new(HttpShared {
                connector,
                timeout: cfg.otlp_timeout.0,
                idle: Mutex::new(None),
                deadline: Mutex::new(None),
                last_error: Mutex::new(None),
            }),
        };
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client.clone())
            .with_endpoint(url)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(cfg.otlp_timeout.0)
            .with_headers(cfg.otlp_headers.clone().into_iter().collect())
            .build()
            .map(|inner| Exporter::Http(HttpExporter { inner, client }))
            .map_err(|e| format!("OTLP/HTTP exporter: {e}"))
    }

    /// OTLP/gRPC to `cfg.otlp_endpoint` (`http[s]://host[:port]`).
    #[cfg(feature = "otlp-grpc")]
    pub fn grpc(cfg: &TracingConfig) -> Result<Exporter, String> {
        let endpoint = Endpoint::parse(&cfg.otlp_endpoint, GRPC_PORT)?;
        let uri = format!(
            "{}://{}{GRPC_PATH}",
            if endpoint.tls { "https" } else { "http" },
            endpoint.authority()
        );
        Ok(Exporter::Grpc(GrpcExporter {
            connector: Connector::new(endpoint, cfg, &[b"h2"])?,
            uri,
            headers: cfg.otlp_headers.clone(),
            resource: ResourceAttributesWithSchema::default(),
            conn: None,
        }))
    }

    /// Tells the exporter the process's resource.
    pub fn set_resource(&mut self, r: &Resource) {
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => e.inner.set_resource(r),
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.resource = r.into(),
            Exporter::Stdout(e) => e.set_resource(r),
        }
    }

    /// Exports one batch, with retries, within `timeout`. Blocks the calling thread.
    pub fn export(&mut self, batch: Vec<SpanData>, timeout: Duration) -> Result<(), String> {
        let _ = timeout;
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => e.export(batch, timeout),
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.export(batch, timeout),
            Exporter::Stdout(e) => e.export(batch),
        }
    }

    /// Releases the exporter (and its connection).
    pub fn shutdown(&mut self) {
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => {
                let _ = e.inner.shutdown();
                lock(&e.client.shared.idle).take();
            }
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.conn = None,
            Exporter::Stdout(_) => {}
        }
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
async fn with_deadline<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(f, async {
        async_io::Timer::at(deadline).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    })
    .await
}

/// A request that failed, and whether the collector had answered anything before.
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
#[derive(Debug)]
struct Failed {
    err: io::Error,
    answered: bool,
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
impl Failed {
    fn unanswered(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Failed {
        Failed {
            err: io::Error::other(err),
            answered: false,
        }
    }
    fn answered(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Failed {
        Failed {
            err: io::Error::other(err),
            answered: true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// OTLP/HTTP

#[cfg(feature = "otlp-http")]
/// OTLP/HTTP: opentelemetry-otlp's exporter (encoding, retries with backoff) over
/// [`SmolHttpClient`].
#[derive(Debug)]
pub struct HttpExporter {
    inner: opentelemetry_otlp::SpanExporter,
    client: SmolHttpClient,
}

#[cfg(feature = "otlp-http")]
impl HttpExporter {
    fn export(&mut self, batch: Vec<SpanData>, timeout: Duration) -> Result<(), String> {
        let shared = &self.client.shared;
        *lock(&shared.deadline) = Some(Instant::now() + timeout);
        lock(&shared.last_error).take();
        let result = futures_lite::future::block_on(self.inner.export(batch));
        lock(&shared.deadline).take();
        result.map_err(|e| match lock(&shared.last_error).take() {
            // opentelemetry-otlp reports a transport failure as "network error" only.
            Some(cause) => format!("{e} ({cause})"),
            None => e.to_string(),
        })
    }
}

#[cfg(feature = "otlp-http")]
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(feature = "otlp-http")]
/// A minimal HTTP/1.1 client for opentelemetry-otlp on async-net, plain or TLS: one
/// kept-alive connection, responses framed by `Content-Length`, chunked, or the end of
/// the connection, bounded by [`MAX_RESPONSE_BYTES`].
#[derive(Debug, Clone)]
pub struct SmolHttpClient {
    shared: Arc<HttpShared>,
}

#[cfg(feature = "otlp-http")]
#[derive(Debug)]
struct HttpShared {
    connector: Connector,
    /// Bound of one request when no export deadline is set.
    timeout: Duration,
    /// The connection kept between requests.
    idle: Mutex<Option<Stream>>,
    /// End of the export in progress: no request outlives it.
    deadline: Mutex<Option<Instant>>,
    /// Why the last request failed (the exporter's own error does not say).
    last_error: Mutex<Option<String>>,
}

#[cfg(feature = "otlp-http")]
#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for SmolHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let s = &self.shared;
        let own = Instant::now() + s.timeout;
        let deadline = lock(&s.deadline).map_or(own, |d| d.min(own));
        let head = request_head(&request, &s.connector.endpoint);
        let idle = lock(&s.idle).take();
        let result = with_deadline(deadline, async {
            let (mut stream, reused) = match idle {
                Some(mut kept) => {
                    if conn::is_closed(&mut kept).await {
                        (s.connector.connect().await?, false)
                    } else {
                        (kept, true)
                    }
                }
                None => (s.connector.connect().await?, false),
            };
            let (response, keep) = match exchange(&mut stream, &head, request.body()).await {
                Ok(r) => r,
                Err(f) if reused && !f.answered => {
                    // The collector closed the kept connection under us: once more on
                    // a fresh one (not a failed attempt).
                    log::debug!(
                        "OTLP/HTTP: kept connection failed ({}); reconnecting",
                        f.err
                    );
                    stream = s.connector.connect().await?;
                    exchange(&mut stream, &head, request.body())
                        .await
                        .map_err(|f| f.err)?
                }
                Err(f) => return Err(f.err),
            };
            if keep {
                *lock(&s.idle) = Some(stream);
            }
            Ok(response)
        })
        .await;
        if let Err(e) = &result {
            *lock(&s.last_error) = Some(e.to_string());
        }
        Ok(result?)
    }
}

#[cfg(feature = "otlp-http")]
/// The request line and headers (no `Connection` header: HTTP/1.1 keeps it open).
fn request_head(request: &http::Request<Bytes>, endpoint: &Endpoint) -> Vec<u8> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        request.method(),
        endpoint.authority(),
        request.body().len()
    );
    for (k, v) in request.headers() {
        if matches!(k.as_str(), "host" | "content-length" | "connection") {
            continue;
        }
        if let Ok(v) = v.to_str() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(feature = "otlp-http")]
/// Sends one request and reads exactly its response; true when the connection can
/// carry another.
async fn exchange(
    s: &mut Stream,
    head: &[u8],
    body: &[u8],
) -> Result<(http::Response<Bytes>, bool), Failed> {
    let write = async {
        s.write_all(head).await?;
        s.write_all(body).await?;
        s.flush().await
    };
    write.await.map_err(Failed::unanswered)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    let mut eof = false;
    loop {
        let parsed = parse_response(&buf, eof).map_err(|e| Failed {
            err: io::Error::new(io::ErrorKind::InvalidData, e),
            answered: !buf.is_empty(),
        })?;
        if let Some(p) = parsed {
            // Bytes beyond the response were never asked for: do not reuse.
            let keep = p.keep_alive && !eof && p.consumed == buf.len();
            return Ok((p.response, keep));
        }
        if eof {
            let err = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "collector closed the connection before a whole response",
            );
            return Err(Failed {
                err,
                answered: !buf.is_empty(),
            });
        }
        let n = s.read(&mut chunk).await.map_err(|err| Failed {
            err,
            answered: !buf.is_empty(),
        })?;
        eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(Failed::answered("collector response too large"));
        }
    }
}

#[cfg(feature = "otlp-http")]
/// A whole HTTP response found at the start of a buffer.
#[derive(Debug)]
struct Parsed {
    response: http::Response<Bytes>,
    /// Bytes of the buffer it took.
    consumed: usize,
    /// The connection may carry another request (HTTP/1.1 without `Connection:
    /// close`, or HTTP/1.0 with `keep-alive`, and a body not delimited by the end).
    keep_alive: bool,
}

#[cfg(feature = "otlp-http")]
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(feature = "otlp-http")]
/// Parses the response at the start of `buf`: `Ok(None)` while more bytes are needed.
/// `eof`: the connection has ended, which completes a body without a length. Interim
/// (1xx) responses are skipped.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Parsed>, String> {
    let mut start = 0;
    loop {
        let Some(end) = find(&buf[start..], b"\r\n\r\n") else {
            return Ok(None);
        };
        let head =
            std::str::from_utf8(&buf[start..start + end]).map_err(|_| "bad HTTP response head")?;
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or("").split_whitespace();
        let version = status_line.next().unwrap_or("");
        let status: u16 = status_line
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/1."))
            .ok_or("bad HTTP status line")?;
        let body_start = start + end + 4;
        if (100..200).contains(&status) {
            start = body_start;
            continue;
        }
        let mut builder = http::Response::builder().status(status);
        let (mut chunked, mut length, mut close, mut keep) = (false, None, false, false);
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v
                    .rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            } else if k.eq_ignore_ascii_case("content-length") {
                let n: usize = v.parse().map_err(|_| "bad Content-Length")?;
                if length.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length".into());
                }
                length = Some(n);
            } else if k.eq_ignore_ascii_case("connection") {
                for token in v.split(',').map(str::trim) {
                    close |= token.eq_ignore_ascii_case("close");
                    keep |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            builder = builder.header(k, v);
        }
        let mut keep_alive = !close && (version == "HTTP/1.1" || keep);
        let rest = &buf[body_start..];
        let (body, used) = if chunked {
            match dechunk(rest)? {
                Some(found) => found,
                None => return Ok(None),
            }
        } else if let Some(n) = length.or((status == 204 || status == 304).then_some(0)) {
            if n > MAX_RESPONSE_BYTES {
                return Err("collector response too large".into());
            }
            match rest.get(..n) {
                Some(b) => (b.to_vec(), n),
                None => return Ok(None),
            }
        } else if eof {
            keep_alive = false;
            (rest.to_vec(), rest.len())
        } else {
            return Ok(None);
        };
        let response = builder.body(Bytes::from(body)).map_err(|e| e.to_string())?;
        return Ok(Some(Parsed {
            response,
            consumed: body_start + used,
            keep_alive,
        }));
    }
}

#[cfg(feature = "otlp-http")]
/// Decodes a chunked body at the start of `b`: the body and the bytes it took
/// (trailers included), or `None` while incomplete.
fn dechunk(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(nl) = find(&b[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[pos..pos + nl]).map_err(|_| "bad chunk")?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        if size > MAX_RESPONSE_BYTES {
            return Err("collector response too large".into());
        }
        pos += nl + 2;
        if size == 0 {
            // Trailers, if any, then an empty line.
            loop {
                let Some(nl) = find(&b[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += nl + 2;
                if nl == 0 {
                    return Ok(Some((out, pos)));
                }
            }
        }
        let Some(data) = b.get(pos..pos + size + 2) else {
            return Ok(None);
        };
        if &data[size..] != b"\r\n" {
            return Err("bad chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------------------
// OTLP/gRPC

#[cfg(feature = "otlp-grpc")]
/// OTLP/gRPC exporter: unary `TraceService/Export` over HTTP/2 (h2) on one kept
/// connection, retried with backoff on connection errors and retryable statuses.
#[derive(Debug)]
pub struct GrpcExporter {
    connector: Connector,
    /// `http[s]://authority/path` of the call.
    uri: String,
    headers: BTreeMap<String, String>,
    resource: ResourceAttributesWithSchema,
    /// The kept connection.
    conn: Option<H2>,
}

#[cfg(feature = "otlp-grpc")]
/// An HTTP/2 connection: the handle to open streams, and the future that drives the
/// connection (polled alongside every call, and checked before reuse).
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    driver: Pin<Box<h2::client::Connection<TokioIo<Stream>, Bytes>>>,
}

#[cfg(feature = "otlp-grpc")]
impl std::fmt::Debug for H2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2")
    }
}

#[cfg(feature = "otlp-grpc")]
/// Encodes spans as a length-prefixed gRPC message of an `ExportTraceServiceRequest`.
pub fn grpc_frame(batch: Vec<SpanData>, resource: &ResourceAttributesWithSchema) -> Bytes {
    let req = ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(batch, resource),
    };
    let len = req.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    req.encode(&mut buf).expect("a Vec grows as needed");
    Bytes::from(buf)
}

#[cfg(feature = "otlp-grpc")]
/// gRPC statuses worth retrying (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
/// ABORTED, CANCELLED).
fn retryable(status: u32) -> bool {
    matches!(status, 14 | 4 | 8 | 10 | 1)
}

#[cfg(feature = "otlp-grpc")]
impl GrpcExporter {
    fn export(&mut self, batch: Vec<SpanData>, timeout: Duration) -> Result<(), String> {
        let body = grpc_frame(batch, &self.resource);
        let deadline = Instant::now() + timeout;
        let mut delay = RETRY_BASE;
        loop {
            let attempt =
                futures_lite::future::block_on(with_deadline(deadline, self.attempt(body.clone())));
            let retry = match &attempt {
                Ok(0) => return Ok(()),
                Ok(status) => retryable(*status),
                // A refused certificate (or another TLS failure) will not heal.
                Err(e) => e.kind() != io::ErrorKind::InvalidData,
            };
            let err = match attempt {
                Ok(s) => format!("gRPC status {s}"),
                Err(e) => {
                    // Whatever state a failed (or timed out) call left it in: start over.
                    self.conn = None;
                    e.to_string()
                }
            };
            if !retry || Instant::now() + delay >= deadline {
                return Err(format!(
                    "OTLP/gRPC export to {}: {err}",
                    self.connector.endpoint.authority()
                ));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
    }

    /// One attempt on the kept connection (or a new one); the gRPC status of the call.
    async fn attempt(&mut self, body: Bytes) -> io::Result<u32> {
        let mut reused = false;
        if let Some(c) = &mut self.conn {
            // A connection the collector has closed (or sent GOAWAY on) ends its driver.
            if futures_lite::future::poll_once(c.driver.as_mut())
                .await
                .is_some()
            {
                self.conn = None;
            } else {
                reused = true;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.open().await?);
        }
        let req = self.request()?;
        let c = self.conn.as_mut().expect("connected above");
        match call(c, req, body.clone()).await {
            Err(f) if reused && !f.answered => {
                // Closed under us before any answer: once more on a fresh connection,
                // which is not a failed attempt.
                log::debug!(
                    "OTLP/gRPC: kept connection failed ({}); reconnecting",
                    f.err
                );
                self.conn = None;
                let fresh = self.open().await?;
                let req = self.request()?;
                call(self.conn.insert(fresh), req, body)
                    .await
                    .map_err(|f| f.err)
            }
            r => r.map_err(|f| f.err),
        }
    }

    fn request(&self) -> io::Result<http::Request<()>> {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(&self.uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(
                "user-agent",
                concat!("mcp-bridge/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in &self.headers {
            req = req.header(k.to_ascii_lowercase(), v);
        }
        req.body(()).map_err(io::Error::other)
    }

    /// Connects (TLS with ALPN `h2` for `https://`) and starts HTTP/2.
    async fn open(&self) -> io::Result<H2> {
        let stream = self.connector.connect().await?;
        if let Some(p) = conn::negotiated_alpn(&stream) {
            if p != b"h2" {
                return Err(io::Error::other(format!(
                    "the collector chose {:?} in ALPN, not h2",
                    String::from_utf8_lossy(&p)
                )));
            }
        }
        let (send, driver) = h2::client::handshake(TokioIo(stream))
            .await
            .map_err(io::Error::other)?;
        Ok(H2 {
            send,
            driver: Box::pin(driver),
        })
    }
}

#[cfg(feature = "otlp-grpc")]
/// One unary call on `c`, driving the connection while it runs.
async fn call(c: &mut H2, req: http::Request<()>, body: Bytes) -> Result<u32, Failed> {
    let H2 { send, driver } = c;
    let answered = std::cell::Cell::new(false);
    let exchange = async {
        let mut send = send.clone().ready().await.map_err(Failed::unanswered)?;
        let (resp, mut tx) = send.send_request(req, false).map_err(Failed::unanswered)?;
        tx.send_data(body, true).map_err(Failed::unanswered)?;
        let resp = resp.await.map_err(Failed::unanswered)?;
        answered.set(true);
        let header_status = grpc_status(resp.headers());
        if resp.status() != http::StatusCode::OK {
            return Err(Failed::answered(format!("HTTP status {}", resp.status())));
        }
        let mut body = resp.into_body();
        let mut total = 0usize;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(Failed::answered)?;
            total += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
            if total > MAX_RESPONSE_BYTES {
                return Err(Failed::answered("collector response too large"));
            }
        }
        let trailers = body.trailers().await.map_err(Failed::answered)?;
        Ok(trailers
            .as_ref()
            .and_then(grpc_status)
            .or(header_status)
            .unwrap_or(2))
    };
    let mut exchange = std::pin::pin!(exchange);
    // Ok: the call's result; Err: how the connection ended first.
    let first = futures_lite::future::or(async { Ok(exchange.as_mut().await) }, async {
        Err(driver.as_mut().await)
    })
    .await;
    let end = match first {
        Ok(result) => return result,
        Err(end) => end,
    };
    // The connection ended, possibly right after the whole answer (read in the same
    // poll of the driver): what arrived is buffered, so the call finishes now or never.
    if let Some(result) = futures_lite::future::poll_once(exchange).await {
        return result;
    }
    Err(Failed {
        err: match end {
            Ok(()) => io::Error::other("connection closed"),
            Err(e) => io::Error::other(e),
        },
        answered: answered.get(),
    })
}

#[cfg(feature = "otlp-grpc")]
fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(feature = "otlp-grpc")]
/// Adapts a futures-io stream to tokio's I/O traits (all h2 needs; no tokio runtime).
struct TokioIo<T>(T);

#[cfg(feature = "otlp-grpc")]
impl<T: futures_lite::AsyncRead + Unpin> tokio::io::AsyncRead for TokioIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = ready!(Pin::new(&mut self.0).poll_read(cx, buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "otlp-grpc")]
impl<T: futures_lite::AsyncWrite + Unpin> tokio::io::AsyncWrite for TokioIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[cfg(all(test, any(feature = "otlp-grpc", feature = "otlp-http")))]
mod tests {
    use super::*;

    #[cfg(feature = "otlp-http")]
    fn parse(raw: &[u8], eof: bool) -> Parsed {
        parse_response(raw, eof).unwrap().expect("a whole response")
    }

    #[test]
    #[cfg(feature = "otlp-http")]
    fn content_length_takes_exactly_the_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1";
        let p = parse(raw, false);
        assert_eq!(p.response.status(), 200);
        assert_eq!(p.response.body().as_ref(), b"abc");
        assert_eq!(p.consumed, raw.len() - "HTTP/1.1".len());
        assert!(p.keep_alive);
        // One byte short: more is needed, whether or not the peer is still there.
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabc";
        assert!(parse_response(short, false).unwrap().is_none());
        assert!(parse_response(short, true).unwrap().is_none());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        let empty = parse(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((empty.consumed, empty.keep_alive), (27, true));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            false
        )
        .is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n", false).is_err());
    }

    #[test]
    #[cfg(feature = "otlp-http")]
    fn chunked_bodies_end_at_the_last_chunk() {
        let raw = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n1;x=y\r\n!\r\n0\r\n\r\n";
        let p = parse(raw, false);
        assert_eq!(p.response.status(), 503);
        assert_eq!(p.response.body().as_ref(), b"hi!");
        assert_eq!(p.consumed, raw.len());
        assert!(p.keep_alive);
        // Trailers are consumed too.
        let t =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(parse(t, false).consumed, t.len());
        // Every prefix is incomplete, never an error.
        for cut in 0..raw.len() {
            assert!(
                parse_response(&raw[..cut], false).unwrap().is_none(),
                "{cut}"
            );
        }
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n";
        assert!(parse_response(bad, false).is_err());
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
        assert!(parse_response(huge, false).is_err());
    }

    #[test]
    #[cfg(feature = "otlp-http")]
    fn close_ends_the_connection() {
        let p = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!p.keep_alive);
        let p = parse(
            b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!p.keep_alive);
        // HTTP/1.0 closes unless it says keep-alive.
        assert!(!parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).keep_alive);
        assert!(
            parse(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                false
            )
            .keep_alive
        );
        // No length: the body runs to the end of the connection.
        let raw = b"HTTP/1.0 200 OK\r\n\r\nrest";
        assert!(parse_response(raw, false).unwrap().is_none());
        let p = parse(raw, true);
        assert_eq!(p.response.body().as_ref(), b"rest");
        assert!(!p.keep_alive);
        // Interim responses are skipped.
        let p = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz",
            false,
        );
        assert_eq!(p.response.body().as_ref(), b"z");
    }

    #[test]
    #[cfg(feature = "otlp-http")]
    fn request_heads_name_the_authority() {
        let req = http::Request::post("http://[::1]:4318/v1/traces")
            .header("x-api-key", "k")
            .header("connection", "close")
            .body(Bytes::from_static(b"12345"))
            .unwrap();
        let ep = Endpoint::parse("http://[::1]:4318/v1/traces", HTTP_PORT).unwrap();
        let head = String::from_utf8(request_head(&req, &ep)).unwrap();
        assert_eq!(
            head,
            "POST /v1/traces HTTP/1.1\r\nHost: [::1]:4318\r\nContent-Length: 5\r\nx-api-key: k\r\n\r\n"
        );
    }

    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn grpc_frames_are_length_prefixed() {
        let f = grpc_frame(Vec::new(), &ResourceAttributesWithSchema::default());
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
    }
}
