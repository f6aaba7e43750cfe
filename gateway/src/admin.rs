//! The admin listener (`[admin] listen`): a minimal HTTP/1.1 server on the gateway's
//! executor for operations.
//!
//! - `GET /healthz`: 200 `ok` while the process serves at all.
//! - `GET /readyz`: 200 `ready` when [`AdminState::ready`] passes, else 503 with its reason.
//! - `GET /metrics`: 200, [`Metrics::render`] as `text/plain; version=0.0.4`.
//!
//! `HEAD` works like `GET` without the body; another method on these paths gets 405, any
//! other path 404. One request per connection (`Connection: close`); the request head is
//! at most [`MAX_HEAD_BYTES`] (431 beyond), must arrive within [`READ_TIMEOUT`] (408
//! otherwise), and at most [`MAX_CONNECTIONS`] connections are served at once: when
//! all are taken, a new one closes the oldest that is still sending its request head
//! (so idle connections cannot lock scrapes and probes out), or is closed itself when
//! every one is being answered. Request bodies are never read.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Duration;

use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::{self, Metrics};
use crate::rt;

/// Largest request head (request line and headers) read; larger gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time for a client to send its request head; then 408 and close.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a client to take the response; then the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once (see the module documentation for the excess).
pub const MAX_CONNECTIONS: usize = 32;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After answering, unread request bytes (a body, an over-long head) are discarded up to
/// this much, so closing does not reset the connection before the client reads the
/// response.
const DRAIN_MAX_BYTES: usize = 64 * 1024;
/// Longest wait for the client to close after the response.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Read size while reading the head.
const READ_CHUNK: usize = 1024;

/// The readiness check: `Err(reason)` while the gateway should not get traffic.
pub type ReadyCheck = Rc<dyn Fn() -> Result<(), String>>;

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    /// Rendered at `/metrics`.
    pub metrics: Rc<Metrics>,
    /// Evaluated at every `/readyz`.
    pub ready: ReadyCheck,
}

/// The bounds one server applies ([`serve`] uses the public constants).
#[derive(Clone, Copy)]
struct Bounds {
    read_timeout: Duration,
    max_connections: usize,
}

const BOUNDS: Bounds = Bounds {
    read_timeout: READ_TIMEOUT,
    max_connections: MAX_CONNECTIONS,
};

/// Serves admin requests on `listener` until this future is dropped (e.g. the `Task`
/// from `rt::spawn`); each connection runs as its own task.
pub async fn serve(listener: TcpListener, state: AdminState) {
    serve_with(listener, state, BOUNDS, Rc::default()).await
}

/// Admin connections open now, and the most ever open at once (what the tests check).
#[derive(Default)]
struct Open {
    now: Cell<usize>,
    most: Cell<usize>,
}

/// Connections still sending their request head, oldest first, each with what evicts
/// it.
type Waiting = Rc<RefCell<VecDeque<(u64, async_channel::Sender<()>)>>>;

async fn serve_with(listener: TcpListener, state: AdminState, bounds: Bounds, open: Rc<Open>) {
    let waiting: Waiting = Rc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("admin: accept: {e}");
                async_io::Timer::after(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if open.now.get() >= bounds.max_connections {
            // Every slot taken: the oldest connection still sending its head makes room
            // (a scrape or probe sends its head at once; connections left idle by a
            // peer cannot keep them out). Its slot frees when its task sees it.
            let oldest = waiting.borrow_mut().pop_front();
            match oldest {
                Some((_, evict)) => {
                    let _ = evict.try_send(());
                    log::debug!(
                        "admin: {peer}: {} connections; the oldest still sending its request is closed",
                        bounds.max_connections
                    );
                    // Its task runs now and closes it, before the next `accept` (which
                    // in a burst is ready at once): the count of open connections stays
                    // within the bound instead of growing by one per connection evicted
                    // and not yet closed. (One whose head had just come is answered
                    // whole: the bound is passed by that one until it is done.)
                    futures_lite::future::yield_now().await;
                }
                None => {
                    log::debug!(
                        "admin: {peer}: {} connections busy answering, closed",
                        bounds.max_connections
                    );
                    drop(stream);
                    continue;
                }
            }
        }
        // Counted here, not in the task, so a burst cannot overshoot the bound.
        let slot = ConnSlot::take(&open);
        let state = state.clone();
        let (evict_tx, evict_rx) = async_channel::bounded::<()>(1);
        let id = next_id;
        next_id += 1;
        let again = evict_tx.clone();
        waiting.borrow_mut().push_back((id, evict_tx));
        let waiting = waiting.clone();
        rt::spawn(async move {
            let _slot = slot;
            // Evictable while waiting for its head, and again once answered (only
            // draining what the client still sends), at the back of the queue.
            let evictable = |on: bool| {
                let mut w = waiting.borrow_mut();
                w.retain(|(i, _)| *i != id);
                if on {
                    w.push_back((id, again.clone()));
                }
            };
            handle(stream, &state, bounds.read_timeout, &evict_rx, evictable).await;
            waiting.borrow_mut().retain(|(i, _)| *i != id);
        })
        .detach();
    }
}

/// Holds one of the connection slots until dropped.
struct ConnSlot(Rc<Open>);

impl ConnSlot {
    fn take(open: &Rc<Open>) -> ConnSlot {
        let now = open.now.get() + 1;
        open.now.set(now);
        open.most.set(open.most.get().max(now));
        ConnSlot(open.clone())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.now.set(self.0.now.get() - 1);
    }
}

/// One connection: read the head, answer, drain, close. Evictable (a message on
/// `evict`) while it waits for the head and while it drains, not while it answers
/// (`evictable` says which).
async fn handle(
    mut stream: TcpStream,
    state: &AdminState,
    read_timeout: Duration,
    evict: &async_channel::Receiver<()>,
    mut evictable: impl FnMut(bool),
) {
    // The sender lives as long as this connection's task: `recv` ends with a message.
    let evicted = || async {
        let _ = evict.recv().await;
    };
    // Eviction can end the wait for the head: once the head is read the request is
    // answered whole.
    let read = futures_lite::future::or(
        async { Some(rt::timeout(read_timeout, read_head(&mut stream)).await) },
        async {
            evicted().await;
            None
        },
    )
    .await;
    evictable(false);
    let Some(read) = read else {
        return;
    };
    let (response, head_only) = match read {
        None => (
            Response::text(408, "request head not received in time\n"),
            false,
        ),
        Some(Err(e)) => {
            log::debug!("admin: read: {e}");
            return;
        }
        Some(Ok(Head::Closed)) => return,
        Some(Ok(Head::TooLarge)) => (Response::text(431, "request head too large\n"), false),
        Some(Ok(Head::Complete(bytes))) => match parse_head(&bytes) {
            Ok(req) => (route(&req, state), req.method == Method::Head),
            Err(status) => (
                Response::text(status, format!("{}\n", reason(status))),
                false,
            ),
        },
    };
    let bytes = response.to_bytes(head_only);
    let written = rt::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    })
    .await;
    match written {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            log::debug!("admin: write: {e}");
            return;
        }
        None => return,
    }
    let _ = stream.shutdown(Shutdown::Write);
    // A client that neither reads nor closes must not hold a slot for DRAIN_TIMEOUT
    // when others wait for one (probes would be refused). (An eviction that came as
    // the head was read, too late to end that wait, does not count here.)
    while evict.try_recv().is_ok() {}
    evictable(true);
    futures_lite::future::or(
        async {
            rt::timeout(DRAIN_TIMEOUT, drain(&mut stream)).await;
        },
        evicted(),
    )
    .await;
}

/// Discards what the client still sends, up to [`DRAIN_MAX_BYTES`] or its close.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; READ_CHUNK];
    let mut left = DRAIN_MAX_BYTES;
    while left > 0 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// How reading a request head ended.
#[derive(Debug, PartialEq)]
enum Head {
    /// The head, through its terminating empty line.
    Complete(Vec<u8>),
    /// [`MAX_HEAD_BYTES`] read without the end of the head.
    TooLarge,
    /// The client closed before sending a whole head.
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let room = MAX_HEAD_BYTES - buf.len();
        if room == 0 {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk[..room.min(READ_CHUNK)]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // The terminator may straddle two reads: look back 3 bytes.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
    }
}

/// Length of the head in `buf` (through the empty line ending it), if it is complete.
/// Lines end with CRLF, or a bare LF (RFC 9112 §2.2 lets a server accept that).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .find_map(|(i, b)| match (b, &buf[i + 1..]) {
            (b'\n', [b'\n', ..]) => Some(i + 2),
            (b'\n', [b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
}

#[derive(Debug, PartialEq)]
enum Method {
    Get,
    Head,
    Other,
}

/// What the server looks at in a request.
#[derive(Debug, PartialEq)]
struct Request {
    method: Method,
    /// The path, without the query.
    path: String,
}

/// Parses a request head; `Err(status)` for a malformed one (400) or another HTTP
/// version (505). Headers are not needed and only checked for shape.
fn parse_head(head: &[u8]) -> Result<Request, u16> {
    let head = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    // Origin form (`/metrics`), or absolute form (`http://host:port/metrics`), which
    // a server must accept too (RFC 9112, 3.2.2); only the path matters here.
    let target = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        _ => target,
    };
    if !is_token(method) || !target.starts_with('/') {
        return Err(400);
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(505),
        _ => return Err(400),
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        match header.split_once(':') {
            Some((name, _)) if is_token(name) => {}
            _ => return Err(400),
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    Ok(Request {
        method,
        path: path.to_owned(),
    })
}

/// A response to write.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

/// `Content-Type` of every response but `/metrics`.
const TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            body: body.into().into_bytes(),
        }
    }

    /// The bytes on the wire; `head_only` (a HEAD request) omits the body but keeps its
    /// `Content-Length`.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The response to a well-formed request.
fn route(req: &Request, state: &AdminState) -> Response {
    let known = matches!(req.path.as_str(), "/healthz" | "/readyz" | "/metrics");
    if !known {
        return Response::text(404, "not found\n");
    }
    if req.method == Method::Other {
        return Response::text(405, "method not allowed\n");
    }
    match req.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match (state.ready)() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(reason) => Response::text(503, format!("not ready: {reason}\n")),
        },
        _ => Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: state.metrics.render().into_bytes(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn state(ready: Result<(), &'static str>) -> AdminState {
        AdminState {
            metrics: Rc::new(Metrics::new("0.1.0", "test")),
            ready: Rc::new(move || ready.map_err(str::to_owned)),
        }
    }

    fn req(method: Method, path: &str) -> Request {
        Request {
            method,
            path: path.to_owned(),
        }
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn parses_request_heads() {
        let ok = |h: &str| parse_head(h.as_bytes());
        assert_eq!(
            ok("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
            Ok(req(Method::Get, "/metrics"))
        );
        assert_eq!(
            ok("HEAD /healthz?verbose=1 HTTP/1.0\r\n\r\n"),
            Ok(req(Method::Head, "/healthz"))
        );
        assert_eq!(
            ok("POST /readyz HTTP/1.1\n\n"),
            Ok(req(Method::Other, "/readyz"))
        );
        assert_eq!(ok("GET /healthz HTTP/2.0\r\n\r\n"), Err(505));
        // Absolute form is accepted too (RFC 9112, 3.2.2).
        assert_eq!(
            ok("GET http://127.0.0.1:9464/healthz?x=1 HTTP/1.1\r\n\r\n"),
            Ok(req(Method::Get, "/healthz"))
        );
        assert_eq!(
            ok("GET HTTP://gw HTTP/1.1\r\n\r\n"),
            Ok(req(Method::Get, "/"))
        );
        for bad in [
            "GET /healthz\r\n\r\n",
            "GET  /healthz HTTP/1.1\r\n\r\n",
            "GET /healthz HTTP/1.1 x\r\n\r\n",
            "GET healthz HTTP/1.1\r\n\r\n",
            "GET ftp://gw/healthz HTTP/1.1\r\n\r\n",
            "G(T /healthz HTTP/1.1\r\n\r\n",
            "GET /healthz FTP/1.1\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nbad name: x\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert_eq!(ok(bad), Err(400), "{bad:?}");
        }
        assert_eq!(parse_head(b"GET /\xff HTTP/1.1\r\n\r\n"), Err(400));
    }

    #[test]
    fn routes_requests() {
        let up = state(Ok(()));
        let r = route(&req(Method::Get, "/healthz"), &up);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
        let r = route(&req(Method::Get, "/readyz"), &up);
        assert_eq!(r.status, 200);
        let r = route(
            &req(Method::Get, "/readyz"),
            &state(Err("backend git cannot start")),
        );
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"not ready: backend git cannot start\n");
        let r = route(&req(Method::Head, "/metrics"), &up);
        assert_eq!((r.status, r.content_type), (200, metrics::CONTENT_TYPE));
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("mcp_gateway_build_info{version=\"0.1.0\",commit=\"test\"} 1\n"));
        assert_eq!(route(&req(Method::Get, "/"), &up).status, 404);
        assert_eq!(route(&req(Method::Other, "/nope"), &up).status, 404);
        assert_eq!(route(&req(Method::Other, "/metrics"), &up).status, 405);
    }

    #[test]
    fn builds_responses() {
        let r = Response::text(200, "ok\n");
        assert_eq!(
            String::from_utf8(r.to_bytes(false)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nok\n"
        );
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.ends_with(
            "Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
        let r = Response::text(405, "method not allowed\n");
        let s = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(s.contains("\r\nAllow: GET, HEAD\r\n"));
        for status in [200, 400, 404, 405, 408, 431, 503, 505] {
            assert!(!reason(status).is_empty());
        }
    }

    /// Test deadline for one exchange with the server.
    const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Sends `raw` and returns everything the server sends until it closes. A reset
    /// counts as a close: a server that closes a connection without reading what was
    /// sent on it makes the kernel answer with RST, which the read sees as an error
    /// (this made `bounds_connections_and_read_time` flaky).
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        rt::timeout(EXCHANGE_TIMEOUT, async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut out = Vec::new();
            let sent = s.write_all(raw).await;
            let read = match sent {
                Ok(()) => s.read_to_end(&mut out).await.map(drop),
                Err(e) => Err(e),
            };
            match read {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) => {}
                Err(e) => panic!("exchange with the admin server: {e}"),
            }
            String::from_utf8(out).unwrap()
        })
        .await
        .expect("server answered and closed in time")
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        split(&exchange(addr, raw.as_bytes()).await)
    }

    /// (status, head, body) of a response.
    fn split(resp: &str) -> (u16, String, String) {
        let (head, body) = resp.split_once("\r\n\r\n").expect("a complete response");
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(body.len(), len, "Content-Length matches");
        assert!(head.contains("\r\nConnection: close"));
        (status, head.to_owned(), body.to_owned())
    }

    /// Serves `st` on a loopback port with room for two connections and `read_timeout`
    /// (short bounds: the tests do not wait for the real ones); its address and task.
    async fn serve_two(st: AdminState, read_timeout: Duration) -> (SocketAddr, smol::Task<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bounds = Bounds {
            read_timeout,
            max_connections: 2,
        };
        (
            addr,
            rt::spawn(serve_with(listener, st, bounds, Rc::default())),
        )
    }

    #[test]
    fn serves_over_tcp() {
        rt::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let ready = Rc::new(Cell::new(false));
            let st = AdminState {
                metrics: Rc::new(Metrics::new("0.1.0", "abc")),
                ready: {
                    let ready = ready.clone();
                    Rc::new(move || {
                        if ready.get() {
                            Ok(())
                        } else {
                            Err("starting".to_owned())
                        }
                    })
                },
            };
            st.metrics.request_finished(
                "tools/call",
                metrics::Outcome::Ok,
                None,
                Duration::from_millis(2),
            );
            let _server = rt::spawn(serve(listener, st));

            assert_eq!(get(addr, "/healthz").await.2, "ok\n");
            let (status, _, body) = get(addr, "/readyz").await;
            assert_eq!((status, body.as_str()), (503, "not ready: starting\n"));
            ready.set(true);
            assert_eq!(get(addr, "/readyz").await.0, 200);
            let (status, head, body) = get(addr, "/metrics").await;
            assert_eq!(status, 200);
            assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
            assert!(body.contains(
                "mcp_gateway_requests_total{mcp_method_name=\"tools/call\",outcome=\"ok\"} 1\n"
            ));
            assert_eq!(get(addr, "/other").await.0, 404);

            let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
            let resp = exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
            assert_eq!(split(&resp).0, 405);
            let resp = exchange(addr, b"garbage\r\n\r\n").await;
            assert_eq!(split(&resp).0, 400);
            // A head over the bound, never terminated.
            let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
            big.resize(MAX_HEAD_BYTES + 1024, b'a');
            let resp = exchange(addr, &big).await;
            assert_eq!(split(&resp).0, 431);
            // A body after the head is ignored, and the answer still arrives whole.
            let mut with_body = b"GET /healthz HTTP/1.1\r\nContent-Length: 20000\r\n\r\n".to_vec();
            with_body.resize(with_body.len() + 20000, b'x');
            assert_eq!(split(&exchange(addr, &with_body).await).2, "ok\n");
        });
    }

    /// A connection picked to make room whose head has already come (its task had
    /// not read it yet) is answered whole: eviction ends only the wait for a head.
    #[test]
    fn an_evicted_connection_whose_head_came_is_answered_whole() {
        rt::block_on(async {
            let st = state(Ok(()));
            // About 10 MB of /metrics: the answer cannot go out in one write.
            for i in 0..256 {
                st.metrics
                    .backend_up(&format!("{i}{}", "n".repeat(20_000)), true);
            }
            let (addr, _server) = serve_two(st, Duration::from_secs(2)).await;
            let mut first = TcpStream::connect(addr).await.unwrap();
            let _second = TcpStream::connect(addr).await.unwrap();
            // A third comes (the kernel completes it) while the first's head is on its
            // way: the server takes the first as the oldest still waiting.
            let _third = std::net::TcpStream::connect(addr).unwrap();
            first
                .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            first.read_to_end(&mut out).await.unwrap();
            let out = String::from_utf8(out).unwrap();
            let (status, _, body) = split(&out);
            assert_eq!(status, 200);
            assert!(body.len() > 5_000_000, "{}", body.len());
        });
    }

    #[test]
    fn bounds_connections_and_read_time() {
        const READ_TIMEOUT: Duration = Duration::from_millis(300);
        rt::block_on(async {
            let (addr, _server) = serve_two(state(Ok(())), READ_TIMEOUT).await;

            // Two idle connections take both slots; a third, a real request, closes
            // the oldest idle one and is answered, long before they time out.
            let mut idle1 = TcpStream::connect(addr).await.unwrap();
            let mut idle2 = TcpStream::connect(addr).await.unwrap();
            // (Accepted in the order they came, before the third. Part of a head is
            // still waiting for the rest: evictable too, but idle1 is older.)
            idle2.write_all(b"GET").await.unwrap();
            let start = std::time::Instant::now();
            let answered = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
            assert_eq!(split(&answered).0, 200, "{answered}");
            assert!(start.elapsed() < READ_TIMEOUT);
            let mut out = Vec::new();
            idle1.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, b"", "the oldest idle one closed unanswered");
            assert!(start.elapsed() < READ_TIMEOUT);

            // The other gets 408 at the read deadline.
            let mut out = Vec::new();
            idle2.read_to_end(&mut out).await.unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
            // Slots are free again. (The server task may still be draining; retry briefly.)
            let mut answered = String::new();
            for _ in 0..50 {
                answered = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
                if !answered.is_empty() {
                    break;
                }
                async_io::Timer::after(Duration::from_millis(20)).await;
            }
            assert_eq!(split(&answered).0, 200);
        });
    }

    /// Clients that sent a whole request, got it answered, and neither read nor close:
    /// they hold their slots only while nobody else needs one (a probe is answered).
    #[test]
    fn connections_left_open_after_their_answer_make_room_for_a_probe() {
        rt::block_on(async {
            let (addr, _server) = serve_two(state(Ok(())), Duration::from_secs(5)).await;
            let mut held = Vec::new();
            for _ in 0..2 {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
                // Its answer has come: the server only drains it now (up to 1 s).
                let mut buf = [0u8; 12];
                c.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"HTTP/1.1 200");
                held.push(c);
            }
            let probe = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
            assert_eq!(split(&probe).0, 200, "{probe}");
            drop(held);
        });
    }

    /// A burst of idle connections, far more than the bound, all waiting in the
    /// listen queue: each one accepted closes the oldest idle one first, so no more
    /// than the bound are ever open at once.
    #[test]
    fn a_burst_never_opens_more_than_the_bound() {
        const TEST_BOUNDS: Bounds = Bounds {
            read_timeout: Duration::from_secs(5),
            max_connections: 2,
        };
        rt::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // Completed by the kernel before the server accepts any of them.
            let burst: Vec<_> = (0..12)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            let open = Rc::new(Open::default());
            let _server = rt::spawn(serve_with(
                listener,
                state(Ok(())),
                TEST_BOUNDS,
                open.clone(),
            ));
            // The first ten are closed unanswered, each by a later one.
            for c in burst.iter().take(10) {
                let mut c = async_io::Async::new(c.try_clone().unwrap()).unwrap();
                let mut out = Vec::new();
                c.read_to_end(&mut out).await.unwrap();
                assert_eq!(out, b"");
            }
            assert_eq!(open.most.get(), TEST_BOUNDS.max_connections);
            assert_eq!(open.now.get(), TEST_BOUNDS.max_connections);
        });
    }
}
