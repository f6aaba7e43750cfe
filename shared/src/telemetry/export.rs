//! Span exporters, run on the exporter thread: OTLP/HTTP-protobuf (opentelemetry-otlp
//! with a small HTTP/1.1 client on async-net), OTLP/gRPC (HTTP/2 via the `h2` crate on
//! async-net, no tokio runtime: tokio is compiled for its I/O traits only), and the
//! stdout tree/JSON exporter.
//!
//! This is the one module of `shared` that opens sockets. Its I/O is never traced.

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
use async_net::TcpStream;
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

use super::stdout::StdoutExporter;

/// Largest collector response read (bytes).
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// First retry delay of a failed export; doubles up to the export timeout.
#[cfg(feature = "otlp-grpc")]
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// gRPC path of the OTLP trace service.
#[cfg(feature = "otlp-grpc")]
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// One of the exporters.
#[derive(Debug)]
pub enum Exporter {
    /// OTLP/HTTP with protobuf bodies.
    #[cfg(feature = "otlp-http")]
    Http(opentelemetry_otlp::SpanExporter),
    /// OTLP/gRPC.
    #[cfg(feature = "otlp-grpc")]
    Grpc(GrpcExporter),
    /// Human-readable tree (or JSON lines).
    Stdout(StdoutExporter),
}

impl Exporter {
    /// OTLP/HTTP to `endpoint` (`/v1/traces` appended when it has no path).
    #[cfg(feature = "otlp-http")]
    pub fn http(
        endpoint: &str,
        headers: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Exporter, String> {
        let url = if endpoint.trim_end_matches('/').matches('/').count() > 2 {
            endpoint.to_string()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(SmolHttpClient { timeout })
            .with_endpoint(url)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(headers.clone().into_iter().collect())
            .build()
            .map(Exporter::Http)
            .map_err(|e| format!("OTLP/HTTP exporter: {e}"))
    }

    /// OTLP/gRPC to `endpoint` (`http://host:port`).
    #[cfg(feature = "otlp-grpc")]
    pub fn grpc(endpoint: &str, headers: &BTreeMap<String, String>) -> Result<Exporter, String> {
        let (host, port, _) = split_url(endpoint, 4317)?;
        Ok(Exporter::Grpc(GrpcExporter {
            host,
            port,
            headers: headers.clone(),
            resource: ResourceAttributesWithSchema::default(),
        }))
    }

    /// Tells the exporter the process's resource.
    pub fn set_resource(&mut self, r: &Resource) {
        match self {
            #[cfg(feature = "otlp-http")]
            Exporter::Http(e) => e.set_resource(r),
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
            Exporter::Http(e) => {
                futures_lite::future::block_on(e.export(batch)).map_err(|e| e.to_string())
            }
            #[cfg(feature = "otlp-grpc")]
            Exporter::Grpc(e) => e.export(batch, timeout),
            Exporter::Stdout(e) => e.export(batch),
        }
    }

    /// Releases the exporter.
    pub fn shutdown(&mut self) {
        #[cfg(feature = "otlp-http")]
        if let Exporter::Http(e) = self {
            let _ = e.shutdown();
        }
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
/// `http://host:port/path` → (host, port, path).
fn split_url(url: &str, default_port: u16) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url:?}: only http:// endpoints are supported (no TLS in this build)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_string(),
            p.parse().map_err(|_| format!("{url:?}: bad port"))?,
        ),
        _ => (authority.to_string(), default_port),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host, port, path.to_string()))
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

#[cfg(feature = "otlp-http")]
/// A minimal HTTP/1.1 client for opentelemetry-otlp on async-net: one request per
/// connection, `Content-Length` or close-delimited or chunked responses, bounded size.
#[derive(Debug, Clone)]
pub struct SmolHttpClient {
    timeout: Duration,
}

#[cfg(feature = "otlp-http")]
#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for SmolHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let deadline = Instant::now() + self.timeout;
        let (host, port, path) = split_url(&request.uri().to_string(), 80)?;
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
            request.method(),
            request.body().len()
        );
        for (k, v) in request.headers() {
            if let Ok(v) = v.to_str() {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        let raw = with_deadline(deadline, async {
            let mut s = TcpStream::connect((host.as_str(), port)).await?;
            s.write_all(head.as_bytes()).await?;
            s.write_all(request.body()).await?;
            s.flush().await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE_BYTES {
                    return Err(io::Error::other("collector response too large"));
                }
            }
            Ok(buf)
        })
        .await?;
        Ok(parse_response(&raw)?)
    }
}

#[cfg(feature = "otlp-http")]
/// Parses a complete HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> Result<http::Response<Bytes>, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP response")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "bad HTTP response head")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("bad HTTP status line")?;
    let mut builder = http::Response::builder().status(status);
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            }
            builder = builder.header(k, v);
        }
    }
    let mut body = &raw[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let nl = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("bad chunk")?;
            let size_text = std::str::from_utf8(&body[..nl]).map_err(|_| "bad chunk")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            body = &body[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(body.get(..size).ok_or("truncated chunk")?);
            body = body.get(size + 2..).unwrap_or(&[]);
        }
        out
    } else {
        match length {
            Some(n) => body.get(..n).ok_or("truncated body")?.to_vec(),
            None => body.to_vec(),
        }
    };
    builder.body(Bytes::from(body)).map_err(|e| e.to_string())
}

#[cfg(feature = "otlp-grpc")]
/// OTLP/gRPC exporter: unary `TraceService/Export` over HTTP/2 (h2), one connection
/// per export, retried with backoff on connection errors and retryable statuses.
#[derive(Debug)]
pub struct GrpcExporter {
    host: String,
    port: u16,
    headers: BTreeMap<String, String>,
    resource: ResourceAttributesWithSchema,
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
            let attempt = futures_lite::future::block_on(with_deadline(
                deadline,
                self.export_once(body.clone()),
            ));
            let retry = match &attempt {
                Ok(0) => return Ok(()),
                Ok(status) => retryable(*status),
                Err(_) => true,
            };
            let err = match attempt {
                Ok(s) => format!("gRPC status {s}"),
                Err(e) => e.to_string(),
            };
            if !retry || Instant::now() + delay >= deadline {
                return Err(format!(
                    "OTLP/gRPC export to {}:{}: {err}",
                    self.host, self.port
                ));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
    }

    /// One attempt; the gRPC status on a completed call.
    async fn export_once(&self, body: Bytes) -> io::Result<u32> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true).ok();
        let (client, conn) = h2::client::handshake(TokioIo(tcp))
            .await
            .map_err(io::Error::other)?;
        let call = async {
            let mut client = client.ready().await.map_err(io::Error::other)?;
            let mut req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{}:{}{GRPC_PATH}", self.host, self.port))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header(
                    "user-agent",
                    concat!("mcp-bridge/", env!("CARGO_PKG_VERSION")),
                );
            for (k, v) in &self.headers {
                req = req.header(k.to_ascii_lowercase(), v);
            }
            let req = req.body(()).map_err(io::Error::other)?;
            let (resp, mut send) = client.send_request(req, false).map_err(io::Error::other)?;
            send.send_data(body, true).map_err(io::Error::other)?;
            let resp = resp.await.map_err(io::Error::other)?;
            let header_status = grpc_status(resp.headers());
            if resp.status() != http::StatusCode::OK {
                return Err(io::Error::other(format!("HTTP status {}", resp.status())));
            }
            let mut body = resp.into_body();
            let mut total = 0usize;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(io::Error::other)?;
                total += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
                if total > MAX_RESPONSE_BYTES {
                    return Err(io::Error::other("collector response too large"));
                }
            }
            let trailers = body.trailers().await.map_err(io::Error::other)?;
            Ok(trailers
                .as_ref()
                .and_then(grpc_status)
                .or(header_status)
                .unwrap_or(2))
        };
        futures_lite::future::or(call, async {
            conn.await.map_err(io::Error::other)?;
            Err(io::Error::other("connection closed"))
        })
        .await
    }
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

    #[test]
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    fn splits_endpoints() {
        assert_eq!(
            split_url("http://localhost:4317", 1).unwrap(),
            ("localhost".into(), 4317, "/".into())
        );
        assert_eq!(
            split_url("http://127.0.0.1:4318/v1/traces", 1).unwrap(),
            ("127.0.0.1".into(), 4318, "/v1/traces".into())
        );
        assert_eq!(split_url("http://collector", 4317).unwrap().1, 4317);
        assert_eq!(split_url("http://[::1]:9/x", 1).unwrap().0, "::1");
        assert!(split_url("https://x", 1).is_err());
    }

    #[test]
    #[cfg(feature = "otlp-http")]
    fn parses_http_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"abc");
        let r = parse_response(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n1\r\n!\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.body().as_ref(), b"hi!");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nrest").unwrap();
        assert_eq!(r.body().as_ref(), b"rest");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
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
