//! The WebSocket front end: accept, handshake (path, subprotocol `mcp`, bearer token,
//! session limit, deadline), then one [`Session`] per connection with a reader loop and
//! a writer task. Also the shutdown sequence: stop accepting, close sessions, wait for
//! them within a deadline.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use async_channel::Receiver;
use async_net::{TcpListener, TcpStream};
use async_tungstenite::tungstenite::error::ProtocolError;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use async_tungstenite::WebSocketSender;
use futures_lite::StreamExt;
use futures_util::Sink;
use mcp_shared::framing::{ws_read_limit, WS_WRITE_BATCH_BYTES};
use mcp_shared::jsonrpc::{self, Sniffed};
use mcp_shared::meter::{Meter, Metered};
use mcp_shared::telemetry::{self, attrs, propagation, Attrs, Cx};
use opentelemetry::trace::SpanKind;

use crate::metrics::Dropped;
use crate::outbox;
use crate::rt;
use crate::session::{Closing, Session};
use crate::Gateway;

/// Messages queued for one client, at most ([`outbox`]: its buffer grows with a burst and
/// is given back when drained). A full queue makes responses wait (backpressure) and
/// drops fan-out notifications from shared backends.
pub const CLIENT_QUEUE: usize = 32;
/// WebSocket read buffer per client session (tungstenite allocates it up front; larger
/// messages are read in more steps, not refused). Small because sessions are many.
pub const SESSION_WS_READ_BUFFER_BYTES: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop cannot spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How often a failing `accept` may reach the log (a review's descriptor exhaustion
/// logged 20 lines a second).
pub const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// When a session ends, how long its queued messages get to reach the client.
pub const WRITER_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// After shutdown starts, extra time sessions get beyond `shutdown_grace` to close.
pub const SESSION_CLOSE_SLACK: Duration = Duration::from_secs(2);
/// Connections still in their WebSocket handshake, at most: past it, a new connection
/// closes the oldest one still in its handshake (a client that completes its
/// handshake does so within milliseconds; connections that never do cannot hold the
/// gateway's memory and descriptors, or keep clients out, for `handshake_timeout`).
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// WebSocket settings for client connections.
///
/// The write buffer is bounded too (tungstenite's default is none): a client that
/// sends pings and reads nothing had every pong queued there (700 MB in 10 s). Past
/// the bound tungstenite keeps one pong, the latest. The bound holds the largest
/// message the gateway sends: a backend's (at most `max_message_bytes`, plus the
/// bridge's edits), a merged listing (refused past `max_message_bytes`).
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(SESSION_WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BATCH_BYTES)
        .max_write_buffer_size(ws_read_limit(max_message_bytes) + WS_WRITE_BATCH_BYTES)
        .max_message_size(Some(ws_read_limit(max_message_bytes)))
        .max_frame_size(Some(ws_read_limit(max_message_bytes)))
}

/// Accepts clients until `stop` closes, then closes every session (waiting at most the
/// shutdown grace plus [`SESSION_CLOSE_SLACK`]).
pub async fn serve(gw: Rc<Gateway>, listener: TcpListener, stop: Receiver<()>) {
    let (close_tx, close_rx) = async_channel::bounded::<()>(1);
    let (done_tx, done_rx) = async_channel::bounded::<()>(1);
    let pending: Pending = Rc::default();
    let mut next_id = 0u64;
    let accept_errors = mcp_shared::logger::Throttle::default();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                if pending.borrow().len() >= MAX_PENDING_HANDSHAKES {
                    let oldest = pending.borrow_mut().pop_front();
                    if let Some((_, evict)) = oldest {
                        let _ = evict.try_send(());
                        log::debug!(
                            "{MAX_PENDING_HANDSHAKES} handshakes in progress: the oldest is closed"
                        );
                        // Its task runs now and closes it, before the next `accept`.
                        futures_lite::future::yield_now().await;
                    }
                }
                let (evict_tx, evict_rx) = async_channel::bounded::<()>(1);
                let id = next_id;
                next_id += 1;
                pending.borrow_mut().push_back((id, evict_tx));
                let pending = pending.clone();
                let (gw, close_rx, done_tx) = (gw.clone(), close_rx.clone(), done_tx.clone());
                rt::spawn(async move {
                    let handshake_over = || pending.borrow_mut().retain(|(i, _)| *i != id);
                    connection(
                        gw,
                        stream,
                        peer.to_string(),
                        close_rx,
                        (evict_rx, handshake_over),
                    )
                    .await;
                    drop(done_tx);
                })
                .detach();
            }
            Some(Err(e)) => {
                // Out of descriptors, this repeats every `ACCEPT_ERROR_PAUSE` for as
                // long as it lasts: one line per `ACCEPT_WARN_INTERVAL`, with a count.
                match accept_errors.pass(std::time::Instant::now(), ACCEPT_WARN_INTERVAL) {
                    None => {}
                    Some(0) => log::warn!("accept failed: {e}"),
                    Some(n) => {
                        log::warn!("accept failed: {e} ({n} more since the last warning)")
                    }
                }
                async_io::Timer::after(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    log::info!("shutting down: closing {} session(s)", gw.session_count());
    GOING_AWAY.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(close_tx);
    drop(done_tx);
    let deadline = gw.cfg.server.shutdown_grace.0 + SESSION_CLOSE_SLACK;
    if rt::timeout(deadline, done_rx.recv()).await.is_none() {
        log::warn!(
            "some sessions did not close within {} ms",
            deadline.as_millis()
        );
    }
}

/// Set when the gateway begins to shut down: sessions closed from then on end with
/// close code 1001 ("going away"), not one without a status.
static GOING_AWAY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn reject(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_string()));
    *r.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert("WWW-Authenticate", HeaderValue::from_static("Bearer"));
    }
    r
}

/// How long the HTTP answer to a request that is no WebSocket upgrade gets to be
/// written, and what follows the request to be read, before the connection is closed.
pub const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// What the client sends after such a request is read and dropped, at most this much,
/// before the connection is closed.
pub const REFUSAL_DRAIN_BYTES: u64 = 1 << 20;

thread_local! {
    /// Connections being given such an answer: at most [`MAX_PENDING_HANDSHAKES`]; past
    /// that a connection is closed without one (each holds a socket for up to
    /// [`REFUSAL_WRITE_TIMEOUT`], and they are out of the handshakes' count by then).
    static REFUSING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts one refusal in [`REFUSING`], and out again when dropped.
fn refusing() -> impl Drop {
    REFUSING.with(|n| n.set(n.get() + 1));
    struct Out;
    impl Drop for Out {
        fn drop(&mut self) {
            REFUSING.with(|n| n.set(n.get() - 1));
        }
    }
    Out
}

/// The HTTP answer to a request tungstenite refused before asking [`check_handshake`]
/// (it then writes nothing itself): a plain `GET` or a `POST` on the MCP path, an
/// HTTP/1.0 request, a WebSocket version other than 13 (RFC 6455 §4.4: 426 with the
/// version spoken), a missing key, a malformed or oversized head. `None` for what has
/// no answer (the connection broke, or tungstenite answered already).
fn handshake_refusal(e: &WsError) -> Option<String> {
    use ProtocolError as P;
    let (status, extra) = match e {
        WsError::Protocol(P::WrongHttpMethod) => ("405 Method Not Allowed", "Allow: GET\r\n"),
        WsError::Protocol(P::WrongHttpVersion) => ("505 HTTP Version Not Supported", ""),
        WsError::Protocol(P::MissingConnectionUpgradeHeader | P::MissingUpgradeWebSocketHeader) => {
            ("426 Upgrade Required", "Upgrade: websocket\r\n")
        }
        WsError::Protocol(P::MissingSecWebSocketVersionHeader) => (
            "426 Upgrade Required",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        ),
        WsError::Protocol(
            P::MissingSecWebSocketKey
            | P::InvalidSecWebSocketKey
            | P::InvalidHeader(_)
            | P::HttparseError(_)
            | P::JunkAfterRequest,
        )
        | WsError::HttpFormat(_) => ("400 Bad Request", ""),
        WsError::AttackAttempt | WsError::Capacity(_) => {
            ("431 Request Header Fields Too Large", "")
        }
        _ => return None,
    };
    let body = format!("{e}\n");
    Some(format!(
        "HTTP/1.1 {status}\r\n{extra}Connection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// Checks the upgrade request; on success selects subprotocol `mcp` if offered.
// The error type is tungstenite's handshake callback contract; it is built once per
// rejected handshake, so its size does not matter.
#[allow(clippy::result_large_err)]
fn check_handshake(
    gw: &Gateway,
    req: &Request,
    mut resp: Response,
    seen: &mut Handshake,
) -> Result<Response, ErrorResponse> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    if gw.tel.enabled() {
        // Several `tracestate` headers are one list (W3C trace context, as HTTP has it
        // for any list-valued header): read joined, not the first alone.
        let tracestate = req
            .headers()
            .get_all("tracestate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        seen.cx = propagation::extract_headers(|n: &str| {
            if n.eq_ignore_ascii_case("tracestate") {
                (!tracestate.is_empty()).then_some(tracestate.as_str())
            } else {
                header(n)
            }
        });
        seen.host = header("host").unwrap_or_default().to_string();
        seen.user_agent = header("user-agent").map(str::to_string);
    }
    if req.uri().path() != gw.cfg.server.path {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "no MCP endpoint at this path",
        ));
    }
    if let Some(token) = &*gw.token.borrow() {
        let ok = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme's name is case-insensitive (RFC 9110 §11.1).
                let (scheme, credentials) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
            })
            .is_some_and(|t| token.matches(t.trim()));
        if !ok {
            let why = "missing or invalid bearer token";
            // The refusal is in the client's trace (its handshake's context): the
            // guide's `auth.verify`, failed. Accepted handshakes record theirs on each
            // request's `http.request`.
            if gw.tel.enabled() {
                let span = gw
                    .tel
                    .start("auth.verify", SpanKind::Server, &seen.cx, |a| {
                        attrs::authentication(a, "bearer", false, None);
                        a.str("url.path", req.uri().path());
                    });
                telemetry::fail(&span, "unauthorized", why);
                span.end();
            }
            return Err(reject(StatusCode::UNAUTHORIZED, why));
        }
    }
    // Every Sec-WebSocket-Protocol header counts (a list may be split over several).
    let mut offered = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .peekable();
    if offered.peek().is_some() {
        let has_mcp = offered
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == "mcp");
        if !has_mcp {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "subprotocol \"mcp\" required",
            ));
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
    }
    // Checked and taken in one step, on the gateway's one thread: handshakes in
    // progress together cannot all pass a check made when their connections came.
    if gw.session_count() >= gw.cfg.server.max_sessions {
        return Err(reject(StatusCode::SERVICE_UNAVAILABLE, "too many sessions"));
    }
    seen.count = Some(gw.count_session());
    seen.session_id = gw.next_session_id();
    resp.headers_mut().insert(
        mcp_shared::mcp::SESSION_ID_HEADER,
        HeaderValue::from_str(gw.session_label(seen.session_id).as_str())
            .expect("a label is ASCII"),
    );
    Ok(resp)
}

/// The session's writer task: sends the queued lines to the client until the queue
/// closes (then a close frame), the client closes first (then only the reply to its
/// close frame, which tungstenite queued when the read loop read it, before the socket
/// is shut), a send fails, the client's socket takes no byte for `send_timeout` while a
/// message waits (looked at once per `send_timeout`: a large message on a slow link that
/// keeps moving is not cut off), or the client goes silent; in the last three cases it
/// shuts the socket down, which ends the session's read loop too.
///
/// Keepalive: every `ping_interval` (zero: never) it looks at the bytes read from the
/// client (`meter`; a large message arriving slowly is not silence). Silent for a whole
/// interval: a ping (clients answer by themselves); silent at the next look too: the
/// client is gone (a vanished host or
/// path, which TCP reports only after many minutes, would otherwise hold the session and
/// its per-client backends).
///
/// A hand-written future, not an `async fn`: its size is per-session memory, and the
/// `async` versions of this loop (a timer raced against each send, the keepalive's
/// timer) were 648–1,064 bytes against this struct's 368 (376 since the send deadline
/// looks at progress); that cost idle sessions
/// 0.5–1.7 KB each (`mcp-bench sessions`, docs/benchmark.md).
struct ClientWriter {
    sink: WebSocketSender<Metered<TcpStream>>,
    queue: outbox::Receiver,
    socket: TcpStream,
    meter: Rc<Meter>,
    session: u64,
    send_timeout: Duration,
    ping_interval: Duration,
    /// Armed only while a send waits (most finish at their first poll).
    deadline: async_io::Timer,
    /// Bytes written when `deadline` was last armed.
    mark: u64,
    tick: async_io::Timer,
    /// Bytes read at the last tick, and whether a ping has gone out since they changed.
    seen: u64,
    pinged: bool,
    /// The frame to hand to the sink; `sending` while it is handed or being flushed.
    frame: Option<WsMessage>,
    sending: bool,
    armed: bool,
    /// The close frame is the one being sent: done after it.
    closing: bool,
    /// The client closed first: only the reply to its close frame is left to write.
    peer_closed: bool,
    /// Why the reader failed the connection, if it did: the close frame says so.
    failed: Failed,
}

/// The close code a session's reader failed the connection with (RFC 6455 §7.4.1), for
/// its writer's close frame: 1007 for a text frame that is not UTF-8, 1002 for a
/// broken frame, 1009 for a message over twice `max_message_bytes`.
type Failed = Rc<std::cell::Cell<Option<CloseCode>>>;

/// The close code for a read error that ends a session.
fn close_code(e: &WsError) -> Option<CloseCode> {
    match e {
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        WsError::Protocol(_) => Some(CloseCode::Protocol),
        WsError::Capacity(_) => Some(CloseCode::Size),
        _ => None,
    }
}

/// The reason sent with a [`close_code`].
fn close_reason(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Invalid => "a text frame was not valid UTF-8",
        CloseCode::Size => "message too big",
        _ => "WebSocket protocol error",
    }
}

impl ClientWriter {
    /// Starts the writer task. (Built here, in a plain function: built inside the
    /// `connection` future, the writer would also take room in that future's state.)
    fn spawn(
        sink: WebSocketSender<Metered<TcpStream>>,
        queue: outbox::Receiver,
        socket: TcpStream,
        (send_timeout, ping_interval): (Duration, Duration),
        (meter, failed): (Rc<Meter>, Failed),
        session: u64,
    ) -> smol::Task<Option<Dropped>> {
        let tick = if ping_interval.is_zero() {
            async_io::Timer::never()
        } else {
            async_io::Timer::interval(ping_interval)
        };
        rt::spawn(ClientWriter {
            sink,
            queue,
            socket,
            seen: meter.read(),
            meter,
            session,
            send_timeout,
            ping_interval,
            deadline: async_io::Timer::never(),
            mark: 0,
            tick,
            pinged: false,
            frame: None,
            sending: false,
            armed: false,
            closing: false,
            peer_closed: false,
            failed,
        })
    }

    fn start(&mut self, frame: WsMessage) {
        self.frame = Some(frame);
        self.sending = true;
    }

    /// Hands the frame to the sink (when not yet done), and with it every line already
    /// queued ([`WS_WRITE_BATCH_BYTES`]), then flushes them.
    fn poll_send(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), WsError>> {
        let mut sink = Pin::new(&mut self.sink);
        while let Some(frame) = self.frame.take() {
            match sink.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => sink.as_mut().start_send(frame)?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.frame = Some(frame);
                    return Poll::Pending;
                }
            }
            // After a close frame nothing more goes.
            if !self.closing {
                self.frame = self.queue.try_recv().map(WsMessage::text);
            }
        }
        sink.poll_flush(cx)
    }

    /// A whole `send_timeout` without a byte taken: give up on the client.
    fn stalled(&mut self) -> Poll<Option<Dropped>> {
        log::warn!(
            "session {}: the client took no bytes for {} ms (send_timeout); closing",
            self.session,
            self.send_timeout.as_millis()
        );
        self.give_up(Some(Dropped::SendTimeout))
    }

    /// The client is gone or unwilling: shut the socket (the reader ends too).
    fn give_up(&mut self, why: Option<Dropped>) -> Poll<Option<Dropped>> {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        Poll::Ready(why)
    }
}

impl Future for ClientWriter {
    /// Why the gateway dropped the client, if it did.
    type Output = Option<Dropped>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Dropped>> {
        let me = self.get_mut();
        loop {
            if me.peer_closed {
                // Bounded by the session's wait for its writer (`WRITER_DRAIN_TIMEOUT`).
                return match Pin::new(&mut me.sink).poll_close(cx) {
                    Poll::Ready(_) => me.give_up(None),
                    Poll::Pending => Poll::Pending,
                };
            }
            if me.sending {
                match me.poll_send(cx) {
                    Poll::Ready(Ok(())) => {
                        me.sending = false;
                        if me.armed {
                            // Dropping the armed timer takes it out of the reactor.
                            me.deadline = async_io::Timer::never();
                            me.armed = false;
                        }
                        if me.closing {
                            return Poll::Ready(None);
                        }
                    }
                    Poll::Ready(Err(WsError::Protocol(ProtocolError::SendAfterClosing))) => {
                        // The client closed first: its close frame was read and
                        // tungstenite queued the reply, so nothing but that reply may go
                        // (not a line the session's end produced, nor our own close).
                        // Closing the sink writes the reply; giving up here shut the
                        // socket before it went out, and clients saw the connection
                        // reset without a closing handshake.
                        me.frame = None;
                        me.peer_closed = true;
                    }
                    Poll::Ready(Err(_)) => return me.give_up(None),
                    Poll::Pending => {
                        if !me.armed {
                            me.deadline.set_after(me.send_timeout);
                            me.mark = me.meter.written();
                            me.armed = true;
                        }
                        while Pin::new(&mut me.deadline).poll(cx).is_ready() {
                            if me.meter.written() == me.mark {
                                return me.stalled();
                            }
                            // Still moving: another window.
                            me.deadline.set_after(me.send_timeout);
                            me.mark = me.meter.written();
                        }
                        return Poll::Pending;
                    }
                }
            }
            // The next line first (a busy writer is not idle), else a keepalive tick.
            match me.queue.poll_recv(cx) {
                Poll::Ready(Some(line)) => {
                    me.start(WsMessage::text(line));
                    continue;
                }
                Poll::Ready(None) => {
                    // The session ended: a close frame (the session bounds this wait),
                    // saying "going away" when the gateway is shutting down, and why
                    // when the reader failed the connection.
                    me.closing = true;
                    let frame = if GOING_AWAY.load(std::sync::atomic::Ordering::Relaxed) {
                        Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "the gateway is shutting down".into(),
                        })
                    } else {
                        me.failed.get().map(|code| CloseFrame {
                            code,
                            reason: close_reason(code).into(),
                        })
                    };
                    me.start(WsMessage::Close(frame));
                    continue;
                }
                Poll::Pending => {}
            }
            if Pin::new(&mut me.tick).poll_next(cx).is_pending() {
                return Poll::Pending;
            }
            // The next look a whole interval from now: ticks that fell due during a long
            // send must not fire back to back (a ping, then at once "no answer").
            me.tick.set_interval(me.ping_interval);
            let now = me.meter.read();
            if now != me.seen {
                (me.seen, me.pinged) = (now, false);
            } else if me.pinged {
                log::info!(
                    "session {}: no byte from the client for {} ms after a ping (ping_interval); closing",
                    me.session,
                    me.ping_interval.as_millis()
                );
                return me.give_up(Some(Dropped::Silent));
            } else {
                log::debug!(
                    "session {}: silent for {} ms; ping sent",
                    me.session,
                    me.ping_interval.as_millis()
                );
                me.pinged = true;
                me.start(WsMessage::Ping(Default::default()));
            }
        }
    }
}

/// What the handshake told us, for tracing, and the session's place in
/// `max_sessions`, taken when the handshake was accepted.
#[derive(Default)]
struct Handshake {
    cx: Cx,
    host: String,
    user_agent: Option<String>,
    count: Option<crate::SessionCount>,
    /// The session's id, given in the handshake's response.
    session_id: u64,
}

/// Connections in their handshake, oldest first, each with what closes it.
type Pending = Rc<std::cell::RefCell<std::collections::VecDeque<(u64, async_channel::Sender<()>)>>>;

async fn connection(
    gw: Rc<Gateway>,
    stream: TcpStream,
    peer: String,
    close: Receiver<()>,
    (evicted, handshake_over): (Receiver<()>, impl FnOnce()),
) {
    stream.set_nodelay(true).ok();
    let socket = stream.clone();
    // Bytes each way: the writer's send timeout and keepalive look at progress.
    let (stream, meter) = Metered::new(stream);
    let max = gw.cfg.limits.max_message_bytes;
    let mut seen = Handshake::default();
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| check_handshake(&gw, req, resp, &mut seen);
    // Boxed: the handshake's state would otherwise stay inline in this task's future
    // (several KiB) for the whole life of the session.
    let handshake = Box::pin(async_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(max)),
    ));
    // Closed by a newer connection when MAX_PENDING_HANDSHAKES are in progress (boxed
    // whole, timer and eviction included, for the same reason).
    let handshake = Box::pin(futures_lite::future::or(
        async { Some(rt::timeout(gw.cfg.server.handshake_timeout.0, handshake).await) },
        async {
            // A message: closed. The queue gone (shutdown): never.
            if evicted.recv().await.is_err() {
                std::future::pending::<()>().await;
            }
            None
        },
    ))
    .await;
    drop(evicted);
    handshake_over();
    let ws = match handshake {
        Some(Some(Ok(ws))) => ws,
        Some(Some(Err(e))) => {
            log::info!("handshake with {peer} failed: {e}");
            let room = REFUSING.with(|n| n.get()) < MAX_PENDING_HANDSHAKES;
            if let Some(refusal) = handshake_refusal(&e).filter(|_| room) {
                let _counted = refusing();
                use futures_lite::{AsyncReadExt, AsyncWriteExt};
                // Then what the client still sends is read and dropped until it closes
                // (closed with unread bytes, the socket would send a reset, and the
                // client could lose the answer), all of it bounded in time and bytes: a
                // client that reads nothing or sends without end does not hold the task.
                let mut socket = socket;
                let answer = async {
                    socket.write_all(refusal.as_bytes()).await?;
                    socket.flush().await?;
                    socket.shutdown(std::net::Shutdown::Write)?;
                    let mut sink = futures_lite::io::sink();
                    futures_lite::io::copy((&mut socket).take(REFUSAL_DRAIN_BYTES), &mut sink).await
                };
                // Boxed: inline, this rare await would size the connection's future,
                // which lives as long as the session (docs/benchmark.md, "Memory per
                // idle session").
                let _ = Box::pin(rt::timeout(REFUSAL_WRITE_TIMEOUT, answer)).await;
            }
            return;
        }
        Some(None) => {
            log::info!("handshake with {peer} timed out");
            return;
        }
        None => {
            log::info!("handshake with {peer} closed: {MAX_PENDING_HANDSHAKES} newer ones came");
            return;
        }
    };
    let _count = seen.count.take();
    let opened = std::time::Instant::now();
    gw.metrics.session_opened();
    let (sink, mut stream) = ws.split();
    let (out_tx, out_rx) = outbox::channel(CLIENT_QUEUE);
    let conn_attrs = if gw.tel.enabled() {
        let ip = peer
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&peer)
            .to_string();
        Attrs::collect(|a| {
            attrs::websocket(
                a,
                &ip,
                &seen.host,
                &gw.cfg.server.path,
                seen.user_agent.as_deref(),
                Some("mcp"),
            );
            a.str("client.address", &ip);
        })
    } else {
        Vec::new()
    };
    let session = Session::new(
        gw.clone(),
        out_tx.clone(),
        seen.session_id,
        seen.cx,
        conn_attrs,
    );
    log::info!(
        "session {} opened from {peer} (mcp-session-id {})",
        session.id(),
        session.label().as_str()
    );
    let limits = (gw.cfg.server.send_timeout.0, gw.cfg.server.ping_interval.0);
    let failed = Failed::default();
    let writer = ClientWriter::spawn(
        sink,
        out_rx,
        socket,
        limits,
        (meter, failed.clone()),
        session.id(),
    );
    // Hand the client's messages to the session until the client closes, the
    // connection fails (the writer shuts the socket when it gives up on the client), or
    // shutdown.
    let mut turns = rt::Turns::default();
    // The size of the last frame read, counted toward the turn before the next read.
    let mut last = 0usize;
    let mut why = Closing::ClientGone;
    loop {
        turns.take(std::mem::take(&mut last)).await;
        let next = futures_lite::future::or(async { Some(stream.next().await) }, async {
            let _ = close.recv().await;
            None
        })
        .await;
        // Text and binary frames alike: the parser checks UTF-8 itself, and reads the id
        // of a message that is not (so its error carries it).
        let data = match next {
            None => {
                why = Closing::Shutdown;
                break;
            }
            Some(None) => break,
            Some(Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_))))) => m.into_data(),
            Some(Some(Ok(WsMessage::Close(_)))) => break,
            Some(Some(Ok(m))) => {
                last = m.len();
                continue;
            }
            Some(Some(Err(e @ WsError::Capacity(_)))) => {
                // tungstenite cannot resynchronise after an oversized frame: answer, close.
                log::warn!("session {}: {e}; closing", session.id());
                failed.set(close_code(&e));
                Box::pin(session.reject_too_large(Sniffed::default())).await;
                break;
            }
            Some(Some(Err(e))) => {
                // A broken frame fails the connection (RFC 6455 §7.1.7), with a close
                // code saying why.
                log::info!("session {}: read error: {e}", session.id());
                failed.set(close_code(&e));
                break;
            }
        };
        last = data.len();
        if data.len() > max {
            // Read whole (up to `WS_OVERSIZE_FACTOR` times the bound) only to be
            // answered: the session goes on.
            // (Warned of by the rejection, at most every `REJECT_WARN_INTERVAL`.)
            log::debug!(
                "session {}: dropped a {}-byte message (limit {max})",
                session.id(),
                data.len()
            );
            Box::pin(session.reject_too_large(jsonrpc::sniff(&data))).await;
            continue;
        }
        // Boxed, as are the rare awaits above: inline, the largest of them (this one,
        // ~1.2 KB) sized this task's future for the whole life of an idle session
        // (docs/benchmark.md, "Memory per idle session"); a box per message costs
        // less than that memory in every session.
        Box::pin(session.on_client_message(&data)).await;
    }
    // A writer that gave up on the client ended the read loop: count why (before the
    // session's "closed" line, which tests wait for).
    let mut writer = Some(writer);
    if writer.as_ref().is_some_and(|w| w.is_finished()) {
        if let Some(why) = writer.take().expect("checked").await {
            gw.metrics.session_dropped(why);
        }
    }
    // Stop accepting client input, then let the writer flush and send a close frame.
    session.close(why).await;
    drop(session);
    drop(out_tx);
    gw.metrics.session_closed(opened.elapsed());
    if let Some(writer) = writer {
        if rt::timeout(WRITER_DRAIN_TIMEOUT, writer).await.is_none() {
            log::debug!("session writer did not finish within {WRITER_DRAIN_TIMEOUT:?}");
        }
    }
}
