//! Span exporters, run on the exporter thread: OTLP/HTTP-protobuf (a small keep-alive
//! HTTP/1.1 client), OTLP/gRPC (HTTP/2 via the `h2` crate, no tokio runtime: tokio is
//! compiled for its I/O traits only), both over the exporter thread's own socket
//! ([`super::conn::Tcp`], run by [`super::conn::block_on`]), and the stdout tree/JSON
//! exporter. Both OTLP exporters send batches the batch processor has already
//! encoded (see [`super::encode`]), go over [`super::conn`] (plain text or TLS), keep
//! one connection open across exports and retry with backoff within the export
//! timeout.
//!
//! Kept connections: an idle connection is checked before it is reused, and one the
//! collector closed is replaced at once; a request that fails on a reused connection
//! before any answer is sent once more on a fresh connection, which is not counted as
//! a failed attempt. Everything (connect, TLS handshake, retries) fits in the export
//! timeout.
//!
//! This is the one module of `shared` that does network I/O (with `conn`). Its I/O is
//! never traced.

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::collections::BTreeMap;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::io;
#[cfg(feature = "otlp-grpc")]
use std::pin::Pin;
#[cfg(feature = "otlp-grpc")]
use std::task::{ready, Context as TaskCx, Poll};
use std::time::Duration;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::time::Instant;

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use bytes::Bytes;
#[cfg(feature = "otlp-http")]
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use super::conn::{self, Connector, Endpoint, Stream};
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use super::encode::Envelope;
use super::stdout::StdoutExporter;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::config::TracingConfig;

/// Largest collector response read (bytes).
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// A response's head (status line and headers; gRPC: headers and trailers) at most.
/// Collectors send a few hundred bytes.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;
/// Bytes asked of the socket per read of an HTTP response.
#[cfg(feature = "otlp-http")]
const READ_CHUNK: usize = 8192;
/// First retry delay of a failed export; doubles up to the export timeout.
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest collector's text (a gRPC `grpc-message`, a partial success's
/// `error_message`) quoted in a warning, in characters; the rest is cut.
pub const MAX_QUOTED_CHARS: usize = 256;
/// gRPC path of the OTLP trace service.
#[cfg(feature = "otlp-grpc")]
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Port of an `http://` OTLP/gRPC endpoint without one.
#[cfg(feature = "otlp-grpc")]
pub const GRPC_PORT: u16 = 4317;
/// Port of an `http://` OTLP/HTTP endpoint without one.
#[cfg(feature = "otlp-http")]
pub const HTTP_PORT: u16 = 80;

/// What the collector said of a batch it took (OTLP's `partial_success` in the export
/// response): how many of its spans it rejected, and its message (made fit for a log
/// line). Both empty for a plain success, and when the response could not be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Spans the collector rejected (`rejected_spans`; a negative value is read as 0).
    pub rejected: u64,
    /// Its `error_message`, when not empty: at most [`MAX_QUOTED_CHARS`] characters,
    /// control characters escaped.
    pub message: Option<String>,
}

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
    /// OTLP/HTTP to [`TracingConfig::http_traces_url`].
    #[cfg(feature = "otlp-http")]
    pub fn http(cfg: &TracingConfig) -> Result<Exporter, String> {
        let endpoint = Endpoint::parse(&cfg.http_traces_url(), HTTP_PORT)?;
        let head = request_head(&endpoint, &cfg.otlp_headers);
        let connector = Connector::new(endpoint, cfg, &[b"http/1.1"])?;
        Ok(Exporter::Http(HttpExporter {
            connector,
            head,
            idle: None,
            envelope: Envelope::default(),
            front: Vec::new(),
        }))
    }

    /// OTLP/gRPC to [`TracingConfig::endpoint`] (`http[s]://host[:port]`).
    #[cfg(feature = "otlp-grpc")]
    pub fn grpc(cfg: &TracingConfig) -> Result<Exporter, String> {
        let endpoint = Endpoint::parse(&cfg.endpoint(), GRPC_PORT)?;
        let uri = format!(
            "{}://{}{GRPC_PATH}",
            if endpoint.tls { "https" } else { "http" },
            endpoint.authority()
        );
        Ok(Exporter::Grpc(GrpcExporter {
            connector: Connector::new(endpoint, cfg, &[b"h2"])?,
            uri,
            headers: cfg.otlp_headers.clone(),
            envelope: Envelope::default(),
            conn: None,
        }))
    }

    /// Tells the exporter the process's resource and its tracer's name.
    pub fn set_resource(&mut self, r: &Resource, scope: &str) {
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => e.envelope = Envelope::new(r, scope, None),
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.envelope = Envelope::new(r, scope, None),
            Exporter::Stdout(e) => {
                let _ = scope;
                e.set_resource(r)
            }
        }
    }

    /// True when the exporter takes batches encoded by [`super::encode::append_span`] (OTLP);
    /// false when it takes the spans themselves (stdout).
    pub fn takes_encoded(&self) -> bool {
        !matches!(self, Exporter::Stdout(_))
    }

    /// Exports one batch of encoded span entries, with retries, within `timeout`.
    /// Blocks the calling thread. `spans` is the batch's own buffer, sent from where it
    /// is: afterwards it is a buffer to reuse, its content unspecified (the gRPC exporter
    /// hands it to h2 and takes it back; it is left empty if h2 still holds it). On
    /// success, what the collector said of the batch ([`Accepted`]).
    pub fn export_encoded(
        &mut self,
        spans: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<Accepted, String> {
        let _ = (&spans, timeout);
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => e.export(spans.as_slice(), timeout),
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.export(spans, timeout),
            Exporter::Stdout(_) => Err("the stdout exporter takes spans, not bytes".into()),
        }
    }

    /// Exports one batch of spans (the stdout exporter; the batch processor hands the
    /// OTLP ones encoded batches, see [`Exporter::takes_encoded`]).
    pub fn export_records(&mut self, batch: Vec<SpanData>) -> Result<(), String> {
        match self {
            Exporter::Stdout(e) => e.export(batch),
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            _ => Err("OTLP exporters take encoded batches, not spans".into()),
        }
    }

    /// Releases the exporter (and its connection).
    pub fn shutdown(&mut self) {
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => e.idle = None,
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.conn = None,
            Exporter::Stdout(e) => {
                if let Err(err) = e.finish() {
                    log::debug!("stdout exporter: {err}");
                }
            }
        }
    }
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
    #[cfg(feature = "otlp-http")]
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

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// The export's deadline passed (a socket operation's check, `conn::block_on`).
fn timed_out(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// Whether a failed export is worth another try, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Again {
    /// No: it would fail the same way.
    No,
    /// Yes, after the next backoff delay.
    Backoff,
    /// Yes, not before this long (the collector's `Retry-After`).
    After(Duration),
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
impl From<bool> for Again {
    fn from(retry: bool) -> Again {
        if retry {
            Again::Backoff
        } else {
            Again::No
        }
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// Runs `attempt` until it succeeds, fails for good, or the next try would begin past
/// `timeout`; waits [`RETRY_BASE`], doubling, between tries, or as long as the collector
/// asked (`Retry-After`, OTLP's "SHOULD honor"; when that is past the deadline, the
/// export gives up at once instead of trying against the collector's wish).
fn with_retries<T>(
    timeout: Duration,
    mut attempt: impl FnMut(Instant) -> Result<T, (String, Again)>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = RETRY_BASE;
    loop {
        let (err, again) = match attempt(deadline) {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        // The collector's wish, but never sooner than the backoff (a `Retry-After: 0`
        // would otherwise have the collector hammered without a pause).
        let delay = match again {
            Again::No => return Err(err),
            Again::Backoff => backoff,
            Again::After(d) => d.max(backoff),
        };
        backoff *= 2;
        // (A wish past any deadline does not overflow the clock.)
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|t| t >= deadline)
        {
            return match again {
                Again::After(d) => Err(format!("{err}; retry after {}", retry_text(d))),
                _ => Err(err),
            };
        }
        std::thread::sleep(delay);
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// A collector's wish to be retried later, for a log line: milliseconds, or seconds
/// when long (a `Retry-After` may be a 20-digit number of seconds).
fn retry_text(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

#[cfg(feature = "otlp-http")]
/// OTLP/HTTP: `POST` of an `ExportTraceServiceRequest` (`application/x-protobuf`) on
/// one kept-alive HTTP/1.1 connection, plain or TLS; responses framed by
/// `Content-Length`, chunked, or the end of the connection, bounded by
/// [`MAX_RESPONSE_BYTES`]. Retried on connection errors and on 429, 502, 503 and 504
/// (the statuses OTLP/HTTP calls retryable).
#[derive(Debug)]
pub struct HttpExporter {
    connector: Connector,
    /// Request line and fixed headers, up to (not including) `Content-Length`.
    head: Vec<u8>,
    /// The connection kept between exports.
    idle: Option<Stream>,
    envelope: Envelope,
    /// What goes before the spans (request line, headers, the start of the protobuf
    /// message), rebuilt for every export in this kept buffer. The spans are sent from
    /// the batch's own buffer: no copy of the body (it had cost the router ~100 KB of
    /// resident memory, docs/benchmark.md).
    front: Vec<u8>,
}

#[cfg(feature = "otlp-http")]
impl HttpExporter {
    fn export(&mut self, spans: &[u8], timeout: Duration) -> Result<Accepted, String> {
        // The head and the message's start in one small buffer, the spans where they
        // are: both go out in one `writev` (one segment, one wake-up of the collector).
        let mut front = std::mem::take(&mut self.front);
        front.clear();
        front.extend_from_slice(&self.head);
        let at = front.len();
        self.envelope.prefix(spans.len(), &mut front);
        let length = format!("Content-Length: {}\r\n\r\n", front.len() - at + spans.len());
        front.splice(at..at, length.bytes());
        let result = with_retries(timeout, |deadline| {
            match conn::block_on(deadline, self.send(&front, spans, deadline)) {
                Ok((status, _, body)) if (200..300).contains(&status) => Ok(partial_success(&body)),
                Ok((status, retry_after, _)) => Err((
                    format!("HTTP status {status}"),
                    match (matches!(status, 429 | 502 | 503 | 504), retry_after) {
                        (false, _) => Again::No,
                        (true, Some(d)) => Again::After(d),
                        (true, None) => Again::Backoff,
                    },
                )),
                Err(e) => {
                    // A refused certificate (or another TLS failure) will not heal.
                    let retry = e.kind() != io::ErrorKind::InvalidData;
                    Err((e.to_string(), retry.into()))
                }
            }
        })
        .map_err(|e| {
            format!(
                "OTLP/HTTP export to {}: {e}",
                self.connector.endpoint.authority()
            )
        });
        self.front = front;
        result
    }

    /// One request (`front`, then `spans`) on the kept connection (or a new one); the
    /// response's status, its `Retry-After` when given in seconds, and its body.
    async fn send(
        &mut self,
        front: &[u8],
        spans: &[u8],
        deadline: Instant,
    ) -> io::Result<(u16, Option<Duration>, Bytes)> {
        let (mut stream, reused) = match self.idle.take() {
            Some(mut kept) => {
                if conn::is_closed(&mut kept).await {
                    (self.connector.connect(deadline).await?, false)
                } else {
                    (kept, true)
                }
            }
            None => (self.connector.connect(deadline).await?, false),
        };
        let (response, keep) = match exchange(&mut stream, [front, spans]).await {
            Ok(r) => r,
            Err(f) if reused && !f.answered && !timed_out(&f.err) => {
                // The collector closed the kept connection under us: once more on a
                // fresh one (not a failed attempt). Not after the deadline: that is
                // the export's end, not the connection's.
                log::debug!(
                    "OTLP/HTTP: kept connection failed ({}); reconnecting",
                    f.err
                );
                stream = self.connector.connect(deadline).await?;
                exchange(&mut stream, [front, spans])
                    .await
                    .map_err(|f| f.err)?
            }
            Err(f) => return Err(f.err),
        };
        if keep {
            self.idle = Some(stream);
        }
        let after = retry_after(response.headers());
        Ok((response.status().as_u16(), after, response.into_body()))
    }
}

#[cfg(feature = "otlp-http")]
/// A `Retry-After` in seconds (its HTTP-date form is not read: the backoff applies).
/// More seconds than a `u64` holds is still a wish to wait, longer than any deadline.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)))
}

#[cfg(feature = "otlp-http")]
/// The request line and the headers that are the same for every export (no
/// `Connection` header: HTTP/1.1 keeps it open). `Content-Length` follows.
fn request_head(endpoint: &Endpoint, headers: &BTreeMap<String, String>) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nUser-Agent: {}\r\n",
        endpoint.path,
        endpoint.authority(),
        concat!("mcp-bridge/", env!("CARGO_PKG_VERSION")),
    );
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "content-length" | "connection" | "content-type" | "transfer-encoding"
        ) || k.contains(['\r', '\n'])
            || v.contains(['\r', '\n'])
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.into_bytes()
}

#[cfg(feature = "otlp-http")]
/// Sends one request (its parts in order) and reads exactly its response; true when
/// the connection can carry another.
async fn exchange(
    s: &mut Stream,
    request: [&[u8]; 2],
) -> Result<(http::Response<Bytes>, bool), Failed> {
    let write = async {
        let mut parts = request.map(io::IoSlice::new);
        conn::write_all_vectored(s, &mut parts).await?;
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
/// How every response this client can read begins.
const STATUS_PREFIX: &[u8] = b"HTTP/1.";

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
        // The head is looked for within its bound only: a collector that sends
        // headers without end is refused at MAX_RESPONSE_HEAD_BYTES, not scanned again
        // up to MAX_RESPONSE_BYTES at every read.
        let window = &buf[start..buf.len().min(start + MAX_RESPONSE_HEAD_BYTES + 4)];
        // Refused as soon as it cannot be a status line, not read on to the end and
        // then reported as a response cut short (nor as a bad status line when a
        // blank line came in the same read). Not retried: the same server would
        // answer the same.
        let lead = &window[..window.len().min(STATUS_PREFIX.len())];
        if !STATUS_PREFIX.starts_with(lead) {
            return Err("collector answered something that is not HTTP/1.x".into());
        }
        let Some(end) = find(window, b"\r\n\r\n") else {
            if window.len() > MAX_RESPONSE_HEAD_BYTES {
                return Err(format!(
                    "collector response head longer than {MAX_RESPONSE_HEAD_BYTES} bytes"
                ));
            }
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
    envelope: Envelope,
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
/// What goes before `spans_len` bytes of span entries in the length-prefixed gRPC
/// message of an `ExportTraceServiceRequest`: the 5-byte gRPC prefix and the start of
/// the protobuf message. The entries follow as they are.
pub fn grpc_head(envelope: &Envelope, spans_len: usize) -> Bytes {
    let mut buf = vec![0; 5];
    envelope.prefix(spans_len, &mut buf);
    let len = (buf.len() - 5 + spans_len) as u32;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    Bytes::from(buf)
}

#[cfg(feature = "otlp-grpc")]
/// A request's body as sent on the stream: [`grpc_head`], then the batch's buffer
/// itself (two DATA frames or more; one gRPC message). Clones share the bytes.
#[derive(Clone, Debug)]
struct GrpcBody {
    head: Bytes,
    spans: Bytes,
}

#[cfg(feature = "otlp-grpc")]
/// Whether a gRPC status is worth another try, and when (OTLP's list): CANCELLED,
/// DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are, and
/// RESOURCE_EXHAUSTED only when the status holds a `RetryInfo` (else the collector is
/// out of something that may not come back). After the `RetryInfo`'s delay when it
/// gives one, else the backoff.
fn retryable(status: u32, info: Option<RetryInfo>) -> Again {
    match (status, info) {
        (1 | 4 | 8 | 10 | 11 | 14 | 15, Some(RetryInfo { delay: Some(d) })) => Again::After(d),
        (1 | 4 | 10 | 11 | 14 | 15, _) | (8, Some(RetryInfo { delay: None })) => Again::Backoff,
        _ => Again::No,
    }
}

#[cfg(feature = "otlp-grpc")]
/// A `google.rpc.RetryInfo` found in a call's status details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RetryInfo {
    /// Its `retry_delay`, when set (and valid).
    delay: Option<Duration>,
}

#[cfg(feature = "otlp-grpc")]
/// The type of the `google.rpc.Status` detail that says when to retry.
const RETRY_INFO_TYPE: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";

#[cfg(feature = "otlp-grpc")]
/// The `RetryInfo` of a call's `grpc-status-details-bin` (a base64 `google.rpc.Status`
/// whose `details` are `Any`s), when the collector sent one. Details that cannot be
/// read are none; a delay that cannot be read is no delay (the backoff applies).
fn retry_info(h: &http::HeaderMap) -> Option<RetryInfo> {
    let status = base64_decode(h.get("grpc-status-details-bin")?.as_bytes())?;
    // Status: details = 3 (Any: type_url = 1, value = 2). RetryInfo: retry_delay = 1
    // (Duration: seconds = 1, nanos = 2).
    let any = proto_fields(&status)?
        .into_iter()
        .filter(|(f, _)| *f == 3)
        .filter_map(|(_, v)| v.bytes())
        .find(|any| {
            proto_fields(any).is_some_and(|fs| {
                fs.iter()
                    .any(|(f, v)| *f == 1 && v.bytes() == Some(RETRY_INFO_TYPE))
            })
        })?;
    // An empty RetryInfo has no `value` field at all.
    let info = match proto_fields(any)?.into_iter().find(|(f, _)| *f == 2) {
        Some((_, v)) => v.bytes()?,
        None => &[],
    };
    Some(RetryInfo {
        delay: retry_delay(info),
    })
}

#[cfg(feature = "otlp-grpc")]
/// The `retry_delay` of an encoded `RetryInfo`, when set to a valid duration.
fn retry_delay(info: &[u8]) -> Option<Duration> {
    let delay = proto_fields(info)?
        .into_iter()
        .find(|(f, _)| *f == 1)?
        .1
        .bytes()?;
    let (mut secs, mut nanos) = (0i64, 0i64);
    for (f, v) in proto_fields(delay)? {
        match (f, v) {
            (1, Proto::Varint(n)) => secs = n as i64,
            (2, Proto::Varint(n)) => nanos = n as i64,
            _ => {}
        }
    }
    // Negative or out-of-range values are the collector's mistake: no delay.
    let secs = u64::try_from(secs).ok()?;
    let nanos = u32::try_from(nanos).ok().filter(|n| *n < 1_000_000_000)?;
    Some(Duration::new(secs, nanos))
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// One field's value in a protobuf message, as far as [`proto_fields`] reads it.
#[derive(Debug, PartialEq)]
enum Proto<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
impl<'a> Proto<'a> {
    fn bytes(&self) -> Option<&'a [u8]> {
        match self {
            Proto::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// The fields of a protobuf message, in order; `None` when it is not well formed.
fn proto_fields(mut b: &[u8]) -> Option<Vec<(u64, Proto<'_>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => Proto::Varint(varint(&mut b)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                b = b.get(n..)?;
                Proto::Fixed
            }
            2 => {
                let n = usize::try_from(varint(&mut b)?).ok()?;
                let (v, rest) = (b.get(..n)?, b.get(n..)?);
                b = rest;
                Proto::Bytes(v)
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// The partial success of an encoded `ExportTraceServiceResponse` (`partial_success`
/// = 1: `rejected_spans` = 1, int64; `error_message` = 2, string). A response that is
/// not well formed says nothing: a plain success (the spans count as exported).
fn partial_success(response: &[u8]) -> Accepted {
    let read = || {
        let (_, field) = proto_fields(response)?.into_iter().find(|(f, _)| *f == 1)?;
        let mut accepted = Accepted::default();
        for (f, v) in proto_fields(field.bytes()?)? {
            match (f, v) {
                (1, Proto::Varint(n)) => accepted.rejected = u64::try_from(n as i64).unwrap_or(0),
                (2, Proto::Bytes(text)) => {
                    accepted.message = quoted(&String::from_utf8_lossy(text))
                }
                _ => {}
            }
        }
        Some(accepted)
    };
    read().unwrap_or_default()
}

#[cfg(feature = "otlp-grpc")]
/// [`partial_success`] of a gRPC response body: its first length-prefixed message,
/// uncompressed (nothing else was asked for); anything else says nothing.
fn grpc_partial_success(body: &[u8]) -> Accepted {
    match body {
        [0, a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            rest.get(..len).map(partial_success).unwrap_or_default()
        }
        _ => Accepted::default(),
    }
}

#[cfg(feature = "otlp-grpc")]
/// Standard base64, padded or not (gRPC's binary metadata); `None` on anything else.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let s = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(feature = "otlp-grpc")]
impl GrpcExporter {
    fn export(&mut self, spans: &mut Vec<u8>, timeout: Duration) -> Result<Accepted, String> {
        // The batch's buffer goes to h2 as it is (`Bytes` from a `Vec` is no copy) and
        // comes back once h2 has let go of it: no copy of the spans into a frame.
        let body = GrpcBody {
            head: grpc_head(&self.envelope, spans.len()),
            spans: Bytes::from(std::mem::take(spans)),
        };
        let result = with_retries(timeout, |deadline| {
            match conn::block_on(deadline, self.attempt(&body, deadline)) {
                Ok(a) if a.status == 0 => Ok(a.accepted),
                Ok(a) => {
                    let why = match &a.message {
                        Some(m) => format!("gRPC status {}: {m}", a.status),
                        None => format!("gRPC status {}", a.status),
                    };
                    Err((why, retryable(a.status, a.info)))
                }
                Err(e) => {
                    // Whatever state a failed (or timed out) call left it in: start over.
                    self.conn = None;
                    // A refused certificate (or another TLS failure) will not heal.
                    let retry = e.kind() != io::ErrorKind::InvalidData;
                    Err((e.to_string(), retry.into()))
                }
            }
        })
        .map_err(|e| {
            format!(
                "OTLP/gRPC export to {}: {e}",
                self.connector.endpoint.authority()
            )
        });
        // Unique again unless a failed call left the stream's data queued in h2 (the
        // connection is dropped then, but a clone may live until it is).
        if let Ok(buf) = body.spans.try_into_mut() {
            *spans = Vec::from(buf);
        }
        result
    }

    /// One attempt on the kept connection (or a new one); the collector's answer.
    async fn attempt(&mut self, body: &GrpcBody, deadline: Instant) -> io::Result<GrpcAnswer> {
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
            self.conn = Some(self.open(deadline).await?);
        }
        let req = self.request()?;
        let c = self.conn.as_mut().expect("connected above");
        match call(c, req, body.clone()).await {
            Err(f) if reused && !f.answered && !timed_out(&f.err) => {
                // Closed under us before any answer: once more on a fresh connection,
                // which is not a failed attempt (not after the deadline, which ends
                // the export).
                log::debug!(
                    "OTLP/gRPC: kept connection failed ({}); reconnecting",
                    f.err
                );
                self.conn = None;
                let fresh = self.open(deadline).await?;
                let req = self.request()?;
                call(self.conn.insert(fresh), req, body.clone())
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
    async fn open(&self, deadline: Instant) -> io::Result<H2> {
        let stream = self.connector.connect(deadline).await?;
        if let Some(p) = conn::negotiated_alpn(&stream) {
            if p != b"h2" {
                return Err(io::Error::other(format!(
                    "the collector chose {:?} in ALPN, not h2",
                    String::from_utf8_lossy(&p)
                )));
            }
        }
        // Bounded against what the collector controls: no server push (each promise
        // would reserve a stream and keep its headers for the connection's life) and
        // response headers and trailers of at most MAX_RESPONSE_HEAD_BYTES (h2's
        // default allows 16 MiB).
        let (send, driver) = h2::client::Builder::new()
            .enable_push(false)
            .max_header_list_size(MAX_RESPONSE_HEAD_BYTES as u32)
            .handshake(TokioIo(stream))
            .await
            .map_err(h2_io)?;
        Ok(H2 {
            send,
            driver: Box::pin(driver),
        })
    }
}

#[cfg(feature = "otlp-grpc")]
/// What the collector answered a call.
#[derive(Debug)]
struct GrpcAnswer {
    /// The gRPC status (2, UNKNOWN, when it sent none).
    status: u32,
    /// Its `RetryInfo`, when it sent one.
    info: Option<RetryInfo>,
    /// Its `grpc-message`, made fit for a log line ([`grpc_message`]).
    message: Option<String>,
    /// The response message's partial success.
    accepted: Accepted,
}

#[cfg(feature = "otlp-grpc")]
/// One unary call on `c`, driving the connection while it runs: the collector's answer.
async fn call(c: &mut H2, req: http::Request<()>, body: GrpcBody) -> Result<GrpcAnswer, Failed> {
    let H2 { send, driver } = c;
    let answered = std::cell::Cell::new(false);
    let exchange = async {
        let unanswered = |e| Failed {
            err: h2_io(e),
            answered: false,
        };
        let mut send = send.clone().ready().await.map_err(unanswered)?;
        let (resp, mut tx) = send.send_request(req, false).map_err(unanswered)?;
        tx.send_data(body.head, false).map_err(unanswered)?;
        tx.send_data(body.spans, true).map_err(unanswered)?;
        let resp = resp.await.map_err(unanswered)?;
        answered.set(true);
        let header_status = grpc_status(resp.headers());
        // A trailers-only answer has its status (and details) in the headers.
        let header_info = retry_info(resp.headers());
        let header_message = grpc_message(resp.headers());
        if resp.status() != http::StatusCode::OK {
            // gRPC's HTTP-to-status mapping: 429, 502, 503 and 504 are UNAVAILABLE (worth
            // another try); any other status will not heal (InvalidData: no retry).
            let status = resp.status().as_u16();
            let kind = if matches!(status, 429 | 502 | 503 | 504) {
                io::ErrorKind::Other
            } else {
                io::ErrorKind::InvalidData
            };
            return Err(Failed {
                err: io::Error::new(kind, format!("HTTP status {status}")),
                answered: true,
            });
        }
        let mut body = resp.into_body();
        let mut message = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| Failed {
                err: h2_io(e),
                answered: true,
            })?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if message.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Failed::answered("collector response too large"));
            }
            message.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(|e| Failed {
            err: h2_io(e),
            answered: true,
        })?;
        let status = trailers
            .as_ref()
            .and_then(grpc_status)
            .or(header_status)
            .unwrap_or(2);
        Ok(GrpcAnswer {
            status,
            info: trailers.as_ref().and_then(retry_info).or(header_info),
            message: trailers.as_ref().and_then(grpc_message).or(header_message),
            accepted: grpc_partial_success(&message),
        })
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
            Err(e) => h2_io(e),
        },
        answered: answered.get(),
    })
}

#[cfg(feature = "otlp-grpc")]
/// An h2 error as an I/O error, with the kind of the I/O error under it when there is
/// one: a TLS failure (a collector refusing our client certificate is seen only after
/// the handshake, as an alert on the first read) is `InvalidData`, which is not
/// retried, as for OTLP/HTTP. (Wrapped as `Other`, it was retried until the timeout:
/// six connections for one batch in review.)
fn h2_io(e: h2::Error) -> io::Error {
    match e.get_io() {
        Some(under) => io::Error::new(under.kind(), e.to_string()),
        None => io::Error::other(e),
    }
}

#[cfg(feature = "otlp-grpc")]
fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(feature = "otlp-grpc")]
/// The call's `grpc-message` (percent-encoded UTF-8, as gRPC sends it), decoded and
/// made fit for a log line ([`quoted`]); `None` when absent or empty.
fn grpc_message(h: &http::HeaderMap) -> Option<String> {
    let raw = h.get("grpc-message")?.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (raw[i], raw.get(i + 1).copied(), raw.get(i + 2).copied()) {
            (b'%', Some(h1), Some(l)) if hex(h1).is_some() && hex(l).is_some() => {
                bytes.push((hex(h1).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    quoted(&String::from_utf8_lossy(&bytes))
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// A collector's text made fit for a log line: at most [`MAX_QUOTED_CHARS`]
/// characters (then `…`), control characters escaped (`\n`, `\u{1b}`), so a collector
/// cannot forge lines or terminal sequences in the log; `None` when empty.
fn quoted(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Some(out)
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_collectors_retry_after_is_honoured_within_the_deadline() {
        // Asked to wait 300 ms: the second try comes no sooner.
        let start = Instant::now();
        let mut tries = Vec::new();
        let r = with_retries(Duration::from_secs(5), |_| {
            tries.push(start.elapsed());
            match tries.len() {
                1 => Err((
                    "HTTP status 503".into(),
                    Again::After(Duration::from_millis(300)),
                )),
                _ => Ok(()),
            }
        });
        assert_eq!(r, Ok(()));
        assert!(tries[1] >= Duration::from_millis(300), "{tries:?}");
        // Asked to wait past the deadline: given up at once, saying why.
        let start = Instant::now();
        let mut n = 0;
        let r = with_retries::<()>(Duration::from_secs(1), |_| {
            n += 1;
            Err((
                "HTTP status 429".into(),
                Again::After(Duration::from_secs(30)),
            ))
        });
        assert_eq!(n, 1);
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(r, Err("HTTP status 429; retry after 30 s".into()));
        // `Retry-After: 0` waits the backoff all the same; one past the clock's range
        // gives up at once (no overflow).
        let start = Instant::now();
        let mut tries = Vec::new();
        let _ = with_retries::<()>(Duration::from_secs(5), |_| {
            tries.push(start.elapsed());
            match tries.len() {
                1 => Err(("HTTP status 503".into(), Again::After(Duration::ZERO))),
                _ => Ok(()),
            }
        });
        assert!(tries[1] >= RETRY_BASE, "{tries:?}");
        let mut n = 0;
        let r = with_retries::<()>(Duration::from_secs(1), |_| {
            n += 1;
            Err(("HTTP status 503".into(), Again::After(Duration::MAX)))
        });
        assert_eq!(n, 1);
        assert!(r.is_err());
        // Not retryable: one try.
        let mut n = 0;
        let r = with_retries::<()>(Duration::from_secs(1), |_| {
            n += 1;
            Err(("HTTP status 400".into(), Again::No))
        });
        assert_eq!((n, r), (1, Err("HTTP status 400".into())));
    }

    #[cfg(feature = "otlp-http")]
    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        // The date form is left to the backoff.
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        // More seconds than a u64 holds: a wish past any deadline, not no wish.
        h.insert(
            http::header::RETRY_AFTER,
            "99999999999999999999".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(u64::MAX)));
        for odd in ["", "-1", "+5", "1.5"] {
            h.insert(http::header::RETRY_AFTER, odd.parse().unwrap());
            assert_eq!(retry_after(&h), None, "{odd:?}");
        }
    }

    /// A collector that takes connections and reads what it is sent, and never
    /// answers; its port.
    fn mute_collector() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        port
    }

    /// A batch larger than the socket takes in one write reaches the collector whole:
    /// the request's head and the message's start (one buffer) and the spans (the
    /// batch's own) go out by `writev` resumed where each partial write stopped, and
    /// the body decodes to the spans sent, with the envelope's resource around them.
    #[test]
    #[cfg(feature = "otlp-http")]
    fn a_batch_is_sent_from_its_own_buffer_whole() {
        use opentelemetry::trace::Status;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        use std::io::{BufRead, BufReader, Read, Write};

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let collector = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::with_capacity(1024, s.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    length = v.trim().parse().unwrap();
                }
            }
            // Slowly, in small reads: the exporter's writes come back partial.
            let mut body = vec![0u8; length];
            for part in body.chunks_mut(1024) {
                r.read_exact(part).unwrap();
            }
            (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            body
        });
        let mut e = Exporter::http(&TracingConfig {
            enabled: true,
            otlp_protocol: crate::config::OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..TracingConfig::default()
        })
        .unwrap();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("writev-test")
            .build();
        e.set_resource(&resource, "mcp-bridge");
        // Each test span carries a 5,000-byte event: 800 of them are ~4 MB.
        let mut spans = Vec::new();
        for i in 0..800 {
            super::super::encode::append_span(
                &super::super::encode::tests::span(i, true, Status::Unset),
                &mut spans,
            );
        }
        assert!(spans.len() > 4_000_000, "{}", spans.len());
        e.export_encoded(&mut spans, Duration::from_secs(20))
            .unwrap();
        let body = collector.join().unwrap();
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let service = rs.resource.as_ref().unwrap().attributes.iter();
        assert!(service
            .map(|kv| format!("{:?}", kv.value))
            .any(|v| v.contains("writev-test")));
        let sent = &rs.scope_spans[0].spans;
        assert_eq!(sent.len(), 800);
        assert_eq!(
            sent[799].span_id,
            0x1112_1314_1516_1718u64.wrapping_add(799).to_be_bytes()
        );
    }

    /// An export to a collector that never answers fails at its timeout (the exporter
    /// waits for its socket itself, so nothing but the deadline can end the wait).
    #[test]
    fn an_unanswered_export_ends_at_its_timeout() {
        let port = mute_collector();
        let mut exporters = Vec::new();
        #[cfg(feature = "otlp-http")]
        exporters.push(
            Exporter::http(&TracingConfig {
                enabled: true,
                otlp_protocol: crate::config::OtlpProtocol::HttpProtobuf,
                otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
                ..TracingConfig::default()
            })
            .unwrap(),
        );
        #[cfg(feature = "otlp-grpc")]
        exporters.push(
            Exporter::grpc(&TracingConfig {
                enabled: true,
                otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
                ..TracingConfig::default()
            })
            .unwrap(),
        );
        for mut e in exporters {
            let timeout = Duration::from_millis(300);
            let start = Instant::now();
            let err = e.export_encoded(&mut Vec::new(), timeout).unwrap_err();
            let took = start.elapsed();
            assert!(err.contains("timed out"), "{err}");
            assert!(took >= timeout, "{took:?}");
            assert!(took < Duration::from_secs(3), "{took:?}");
        }
    }

    /// A collector that keeps the socket readable without ever answering (HTTP/2
    /// PRIORITY frames, which ask for no reply, as fast as it can) cannot hold an
    /// export past its timeout: h2 reads frames until a read would block, so the
    /// deadline must be checked at each socket operation, not only when the export
    /// waits. (Before, a 500 ms export lasted as long as the flood: 6 s in review.)
    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn a_collector_flooding_frames_cannot_hold_an_export_past_its_timeout() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let flood = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // The client's preface and SETTINGS; then ours, and the flood.
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            // PRIORITY on stream 3: depends on stream 0, weight 16.
            let frame = [0, 0, 5, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 15];
            let many: Vec<u8> = frame
                .iter()
                .copied()
                .cycle()
                .take(frame.len() * 4096)
                .collect();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until && s.write_all(&many).is_ok() {}
        });
        let mut e = Exporter::grpc(&TracingConfig {
            enabled: true,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..TracingConfig::default()
        })
        .unwrap();
        let timeout = Duration::from_millis(500);
        let start = Instant::now();
        let err = e.export_encoded(&mut Vec::new(), timeout).unwrap_err();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}: {err}");
        drop(e); // closes the socket: the flood ends
        flood.join().unwrap();
    }

    /// An export that reaches its deadline on a kept connection ends there: the
    /// timeout is not taken for the collector having closed the connection, which
    /// made it try a fresh one (failing as a "connect timed out", and dropping the
    /// collector's kept addresses).
    #[test]
    #[cfg(feature = "otlp-http")]
    fn a_timeout_on_a_kept_connection_is_no_reason_to_reconnect() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Answers the first request, then reads and never answers.
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 65536];
            let mut answered = false;
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {
                if !std::mem::replace(&mut answered, true) {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                }
            }
        });
        let mut e = Exporter::http(&TracingConfig {
            enabled: true,
            otlp_protocol: crate::config::OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some(format!("http://localhost:{port}")),
            ..TracingConfig::default()
        })
        .unwrap();
        e.export_encoded(&mut Vec::new(), Duration::from_secs(5))
            .unwrap();
        let err = e
            .export_encoded(&mut Vec::new(), Duration::from_millis(300))
            .unwrap_err();
        assert!(
            err.contains("timed out") && !err.contains("connect"),
            "{err}"
        );
    }

    /// A response head without end is refused at its bound, not read up to the whole
    /// response's.
    #[test]
    #[cfg(feature = "otlp-http")]
    fn an_endless_response_head_is_refused_at_its_bound() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        raw.resize(MAX_RESPONSE_HEAD_BYTES + 10, b'a');
        let e = parse_response(&raw, false).unwrap_err();
        assert!(e.contains("head longer than"), "{e}");
        // Within the bound, still waiting for more.
        assert!(parse_response(&raw[..MAX_RESPONSE_HEAD_BYTES - 10], false)
            .unwrap()
            .is_none());
    }

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
        let e = parse_response(b"SSH-2.0\r\n\r\n", false).unwrap_err();
        assert!(e.contains("not HTTP/1.x"), "{e}");
    }

    /// Something that cannot begin a status line is refused from its first bytes,
    /// without waiting for a head's end, and says so (it used to read as a response
    /// cut short when the collector then closed).
    #[test]
    #[cfg(feature = "otlp-http")]
    fn an_answer_that_is_not_http_is_named_so_at_once() {
        for junk in [&b"garbage"[..], b"\x15\x03\x03", b"H2", b"HTTP/2 200"] {
            for eof in [false, true] {
                let e = parse_response(junk, eof).unwrap_err();
                assert!(e.contains("not HTTP/1.x"), "{junk:?}: {e}");
            }
        }
        // A prefix of a status line waits for more.
        for part in [&b""[..], b"H", b"HTTP/", b"HTTP/1.", b"HTTP/1.1 2"] {
            assert!(parse_response(part, false).unwrap().is_none(), "{part:?}");
        }
        // After an interim response, the next one is held to the same.
        let e = parse_response(b"HTTP/1.1 100 Continue\r\n\r\nnonsense", false).unwrap_err();
        assert!(e.contains("not HTTP/1.x"), "{e}");
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
        let headers: BTreeMap<String, String> = [
            ("x-api-key", "k"),
            ("Connection", "close"),
            ("x-evil", "a\r\nInjected: 1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ep = Endpoint::parse("http://[::1]:4318/v1/traces", HTTP_PORT).unwrap();
        let head = String::from_utf8(request_head(&ep, &headers)).unwrap();
        assert_eq!(
            head,
            concat!(
                "POST /v1/traces HTTP/1.1\r\nHost: [::1]:4318\r\n",
                "Content-Type: application/x-protobuf\r\nUser-Agent: mcp-bridge/",
                env!("CARGO_PKG_VERSION"),
                "\r\nx-api-key: k\r\n"
            )
        );
    }

    #[cfg(feature = "otlp-grpc")]
    fn base64(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = c.iter().fold(0u32, |acc, &x| acc << 8 | u32::from(x)) << (8 * (3 - c.len()));
            for i in 0..=c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[cfg(feature = "otlp-grpc")]
    fn field(f: u64, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::telemetry::encode::put_bytes(&mut out, f as u32, v);
        out
    }

    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn base64_is_read_padded_or_not() {
        assert_eq!(base64_decode(b"TWFu").as_deref(), Some(&b"Man"[..]));
        assert_eq!(base64_decode(b"TWE=").as_deref(), Some(&b"Ma"[..]));
        assert_eq!(base64_decode(b"TWE").as_deref(), Some(&b"Ma"[..]));
        assert_eq!(base64_decode(b"TQ==").as_deref(), Some(&b"M"[..]));
        assert_eq!(base64_decode(b"T W").as_deref(), None);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(base64(&all).as_bytes()), Some(all));
    }

    /// The collector's `RetryInfo` in `grpc-status-details-bin` is the delay before the
    /// next try; without one, RESOURCE_EXHAUSTED is not retried (OTLP).
    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn a_grpc_retry_info_sets_the_delay() {
        // Duration { seconds: 2, nanos: 500_000_000 } in RetryInfo in an Any in a Status,
        // after another detail that must be skipped.
        let duration = [&[0x08, 2][..], &[0x10, 0x80, 0xca, 0xb5, 0xee, 0x01][..]].concat();
        let info = field(1, &duration);
        let other = [
            field(1, b"type.googleapis.com/google.rpc.DebugInfo"),
            field(2, b"x"),
        ]
        .concat();
        let any = [field(1, RETRY_INFO_TYPE), field(2, &info)].concat();
        let status = [
            vec![0x08, 14],
            field(2, b"busy"),
            field(3, &other),
            field(3, &any),
        ]
        .concat();
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_info(&h), None);
        h.insert(
            "grpc-status-details-bin",
            base64(&status).trim_end_matches('=').parse().unwrap(),
        );
        let d = Some(Duration::from_millis(2500));
        assert_eq!(retry_info(&h), Some(RetryInfo { delay: d }));
        // Not well formed, or no RetryInfo: none (the backoff applies).
        h.insert("grpc-status-details-bin", "!!".parse().unwrap());
        assert_eq!(retry_info(&h), None);
        let without = [vec![0x08, 14], field(3, &other)].concat();
        h.insert("grpc-status-details-bin", base64(&without).parse().unwrap());
        assert_eq!(retry_info(&h), None);
        // A RetryInfo without a delay (its Any has no value) is still one.
        let empty = [vec![0x08, 8], field(3, &field(1, RETRY_INFO_TYPE))].concat();
        h.insert("grpc-status-details-bin", base64(&empty).parse().unwrap());
        let bare = Some(RetryInfo { delay: None });
        assert_eq!(retry_info(&h), bare);
        let one = Some(RetryInfo {
            delay: Some(Duration::from_secs(1)),
        });
        assert_eq!(retryable(14, one), Again::After(Duration::from_secs(1)));
        assert_eq!(retryable(14, None), Again::Backoff);
        assert_eq!(retryable(15, None), Again::Backoff);
        assert_eq!(retryable(11, None), Again::Backoff);
        assert_eq!(retryable(8, one), Again::After(Duration::from_secs(1)));
        assert_eq!(retryable(8, bare), Again::Backoff);
        assert_eq!(retryable(8, None), Again::No);
        assert_eq!(retryable(3, one), Again::No);
    }

    /// A gRPC export hands the batch's buffer to h2 without copying it and gets it
    /// back once h2 has sent it (the buffer is reused for the next batch), and the
    /// collector receives the whole message: head, then the spans.
    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn a_grpc_export_sends_the_batch_buffer_and_gets_it_back() {
        use opentelemetry::trace::Status;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;

        let (port, collector) = one_call_grpc_collector(Vec::new(), &[("grpc-status", "0")]);
        let mut e = grpc_to(port);
        let mut spans = Vec::with_capacity(64 * 1024);
        for i in 0..5 {
            super::super::encode::append_span(
                &super::super::encode::tests::span(i, true, Status::Unset),
                &mut spans,
            );
        }
        let (len, cap, ptr) = (spans.len(), spans.capacity(), spans.as_ptr());
        e.export_encoded(&mut spans, Duration::from_secs(10))
            .unwrap();
        // The same allocation is back, whole.
        assert_eq!((spans.capacity(), spans.as_ptr()), (cap, ptr));
        assert_eq!(spans.len(), len);
        // Closing the kept connection lets the collector's connection end.
        drop(e);
        let got = collector.join().unwrap();
        let n = u32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize;
        assert_eq!((got[0], n), (0, got.len() - 5));
        let req = ExportTraceServiceRequest::decode(&got[5..]).unwrap();
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 5);
    }

    /// A gRPC collector on h2's server side, run by async-io on its own thread: takes
    /// one connection and answers its first call with `body` (the response message,
    /// unframed; none if empty) and `trailers`. Its port, and its thread, which ends
    /// with the request's body (as sent: framed) once the exporter closes the
    /// connection.
    #[cfg(feature = "otlp-grpc")]
    fn one_call_grpc_collector(
        body: Vec<u8>,
        trailers: &[(&'static str, &'static str)],
    ) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut t = http::HeaderMap::new();
        for (k, v) in trailers {
            t.insert(*k, v.parse().unwrap());
        }
        let collector = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            async_io::block_on(async move {
                let io = TokioIo(async_io::Async::new(s).unwrap());
                let mut conn = h2::server::handshake(io).await.unwrap();
                let (req, mut respond) = conn.accept().await.unwrap().unwrap();
                let serve = async move {
                    let mut request = req.into_body();
                    let mut got = Vec::new();
                    while let Some(chunk) = request.data().await {
                        let chunk = chunk.unwrap();
                        let _ = request.flow_control().release_capacity(chunk.len());
                        got.extend_from_slice(&chunk);
                    }
                    let head = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let mut tx = respond.send_response(head, false).unwrap();
                    if !body.is_empty() {
                        let mut framed = vec![0];
                        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
                        framed.extend_from_slice(&body);
                        tx.send_data(Bytes::from(framed), false).unwrap();
                    }
                    tx.send_trailers(t).unwrap();
                    got
                };
                // Driven until the exporter closes the connection.
                let drive = std::future::poll_fn(|cx| conn.poll_closed(cx));
                futures_lite::future::zip(serve, drive).await.0
            })
        });
        (port, collector)
    }

    #[cfg(feature = "otlp-grpc")]
    fn grpc_to(port: u16) -> Exporter {
        Exporter::grpc(&TracingConfig {
            enabled: true,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..TracingConfig::default()
        })
        .unwrap()
    }

    /// An `ExportTraceServiceResponse` with a partial success.
    pub(crate) fn partial_success_response(rejected: i64, message: &str) -> Vec<u8> {
        let mut inner = vec![0x08];
        let mut n = rejected as u64;
        while n >= 0x80 {
            inner.push(n as u8 | 0x80);
            n >>= 7;
        }
        inner.push(n as u8);
        crate::telemetry::encode::put_bytes(&mut inner, 2, message.as_bytes());
        let mut out = Vec::new();
        crate::telemetry::encode::put_bytes(&mut out, 1, &inner);
        out
    }

    /// A collector's partial success is read from its response, on both transports:
    /// the spans it rejected and its message (bounded, escaped); a response that is not
    /// well formed says nothing.
    #[test]
    fn a_partial_success_is_read() {
        let ok = |rejected, message: Option<&str>| Accepted {
            rejected,
            message: message.map(str::to_string),
        };
        let r = partial_success_response(3, "3 spans\nbad");
        assert_eq!(partial_success(&r), ok(3, Some("3 spans\\nbad")));
        assert_eq!(
            partial_success(&partial_success_response(-1, "")),
            ok(0, None)
        );
        assert_eq!(partial_success(b""), Accepted::default());
        assert_eq!(partial_success(&r[..r.len() - 1]), Accepted::default());
        assert_eq!(
            partial_success(b"{\"partialSuccess\":{}}"),
            Accepted::default()
        );
        #[cfg(feature = "otlp-http")]
        {
            use std::io::{Read, Write};
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let body = partial_success_response(2, "too old");
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                s.write_all(&[head.as_bytes(), &body].concat()).unwrap();
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
            let mut e = Exporter::http(&TracingConfig {
                enabled: true,
                otlp_protocol: crate::config::OtlpProtocol::HttpProtobuf,
                otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
                ..TracingConfig::default()
            })
            .unwrap();
            let got = e.export_encoded(&mut Vec::new(), Duration::from_secs(5));
            assert_eq!(got, Ok(ok(2, Some("too old"))));
        }
        #[cfg(feature = "otlp-grpc")]
        {
            let body = partial_success_response(4, "over quota");
            let (port, _) = one_call_grpc_collector(body, &[("grpc-status", "0")]);
            let got = grpc_to(port).export_encoded(&mut Vec::new(), Duration::from_secs(5));
            assert_eq!(got, Ok(ok(4, Some("over quota"))));
        }
    }

    /// An I/O failure under h2 keeps its kind: a TLS alert (`InvalidData`, what
    /// rustls gives for a refused client certificate) ends the export without a retry.
    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn a_tls_failure_under_h2_is_not_retried() {
        /// A connection whose reads fail as a TLS alert does; writes go nowhere.
        struct Refused;
        impl futures_lite::AsyncRead for Refused {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut TaskCx<'_>,
                _: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                let alert = "received fatal alert: CertificateRequired";
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, alert)))
            }
        }
        impl futures_lite::AsyncWrite for Refused {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut TaskCx<'_>,
                b: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut tries = 0;
        let r = with_retries(Duration::from_secs(5), |_| {
            tries += 1;
            let e = async_io::block_on(async {
                let (_send, conn) = h2::client::handshake(TokioIo(Refused)).await?;
                conn.await
            })
            .unwrap_err();
            let e = h2_io(e);
            let retry = e.kind() != io::ErrorKind::InvalidData;
            Err::<(), _>((e.to_string(), retry.into()))
        });
        assert_eq!(tries, 1, "{r:?}");
        assert!(r.unwrap_err().contains("CertificateRequired"));
    }

    /// A failed call's warning quotes the collector's `grpc-message`: percent-decoded,
    /// control characters escaped (no forged log line), bounded.
    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn a_grpc_failure_quotes_the_collectors_message() {
        let (port, _) = one_call_grpc_collector(
            Vec::new(),
            &[
                ("grpc-status", "3"),
                ("grpc-message", "bad%20batch%0AWARN forged %E2%82%AC"),
            ],
        );
        let err = grpc_to(port)
            .export_encoded(&mut Vec::new(), Duration::from_secs(5))
            .unwrap_err();
        assert!(
            err.ends_with("gRPC status 3: bad batch\\nWARN forged €"),
            "{err}"
        );
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_message(&h), None);
        h.insert("grpc-message", "%zz%4".parse().unwrap());
        assert_eq!(grpc_message(&h).as_deref(), Some("%zz%4"));
        h.insert("grpc-message", "%1B[31m%FF".parse().unwrap());
        assert_eq!(grpc_message(&h).as_deref(), Some("\\u{1b}[31m\u{fffd}"));
        let long = "x".repeat(MAX_QUOTED_CHARS * 2);
        h.insert("grpc-message", long.parse().unwrap());
        let m = grpc_message(&h).unwrap();
        assert_eq!(m.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(m.ends_with('…'));
        h.insert("grpc-message", "".parse().unwrap());
        assert_eq!(grpc_message(&h), None);
    }

    #[test]
    #[cfg(feature = "otlp-grpc")]
    fn grpc_frames_are_length_prefixed() {
        let envelope = Envelope::new(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_service_name("s")
                .build(),
            "mcp-bridge",
            Some("1"),
        );
        let spans = b"\x12\x03abc";
        let head = grpc_head(&envelope, spans.len());
        let f = [&head[..], &spans[..]].concat();
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
        let mut whole = Vec::new();
        envelope.request(spans, &mut whole);
        assert_eq!(&f[5..], &whole[..], "head and spans are the whole message");
    }
}
