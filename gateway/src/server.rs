//! The WebSocket front end: accept, handshake (path, subprotocol `mcp`, bearer token,
//! session limit, deadline), then one [`Session`] per connection with a reader loop and
//! a writer task. Also the shutdown sequence: stop accepting, close sessions, wait for
//! them within a deadline.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_net::{TcpListener, TcpStream};
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::WebSocketReceiver;
use futures_lite::StreamExt;
use mcp_shared::framing::WS_WRITE_BUFFER_BYTES;
use mcp_shared::telemetry::{attrs, propagation, Attrs, Cx};

use crate::rt;
use crate::session::Session;
use crate::Gateway;

/// Messages queued for one client, at most. The queue's slots are allocated up front,
/// so this is also per-session memory: 32 slots ≈ 1 KiB. A full queue makes responses
/// wait (backpressure) and drops fan-out notifications from shared backends.
pub const CLIENT_QUEUE: usize = 32;
/// WebSocket read buffer per client session (tungstenite allocates it up front; larger
/// messages are read in more steps, not refused). Small because sessions are many.
pub const SESSION_WS_READ_BUFFER_BYTES: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop cannot spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// When a session ends, how long its queued messages get to reach the client.
pub const WRITER_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// After shutdown starts, extra time sessions get beyond `shutdown_grace` to close.
pub const SESSION_CLOSE_SLACK: Duration = Duration::from_secs(2);

/// WebSocket settings for client connections.
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(SESSION_WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Accepts clients until `stop` closes, then closes every session (waiting at most the
/// shutdown grace plus [`SESSION_CLOSE_SLACK`]).
pub async fn serve(gw: Rc<Gateway>, listener: TcpListener, stop: Receiver<()>) {
    let (close_tx, close_rx) = async_channel::bounded::<()>(1);
    let (done_tx, done_rx) = async_channel::bounded::<()>(1);
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                let (gw, close_rx, done_tx) = (gw.clone(), close_rx.clone(), done_tx.clone());
                rt::spawn(async move {
                    connection(gw, stream, peer.to_string(), close_rx).await;
                    drop(done_tx);
                })
                .detach();
            }
            Some(Err(e)) => {
                log::warn!("accept failed: {e}");
                async_io::Timer::after(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(listener);
    log::info!("shutting down: closing {} session(s)", gw.session_count());
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

fn reject(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_string()));
    *r.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert("WWW-Authenticate", HeaderValue::from_static("Bearer"));
    }
    r
}

/// Checks the upgrade request; on success selects subprotocol `mcp` if offered.
// The error type is tungstenite's handshake callback contract; it is built once per
// rejected handshake, so its size does not matter.
#[allow(clippy::result_large_err)]
fn check_handshake(
    gw: &Gateway,
    full: bool,
    req: &Request,
    mut resp: Response,
    seen: &mut Handshake,
) -> Result<Response, ErrorResponse> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    if gw.tel.enabled() {
        seen.cx = propagation::extract_headers(header);
        seen.host = header("host").unwrap_or_default().to_string();
        seen.user_agent = header("user-agent").map(str::to_string);
    }
    if req.uri().path() != gw.cfg.server.path {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "no MCP endpoint at this path",
        ));
    }
    if let Some(token) = &gw.token {
        let ok = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| token.matches(t.trim()));
        if !ok {
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token",
            ));
        }
    }
    if full {
        return Err(reject(StatusCode::SERVICE_UNAVAILABLE, "too many sessions"));
    }
    if let Some(offered) = req.headers().get("Sec-WebSocket-Protocol") {
        let offered = offered.to_str().unwrap_or("");
        if !offered.split(',').any(|p| p.trim() == "mcp") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "subprotocol \"mcp\" required",
            ));
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
    }
    Ok(resp)
}

/// Hands the client's messages to `session` until the client closes, the connection
/// fails, or `stopped` completes. `stopped` is one future for the whole session (not
/// one per message); `received` counts every frame read.
async fn read_client(
    stream: &mut WebSocketReceiver<TcpStream>,
    session: &Rc<Session>,
    received: &Cell<u64>,
    stopped: impl Future<Output = ()>,
) {
    futures_lite::pin!(stopped);
    loop {
        let next = futures_lite::future::or(async { Some(stream.next().await) }, async {
            stopped.as_mut().await;
            None
        })
        .await;
        if let Some(Some(Ok(_))) = &next {
            received.set(received.get() + 1);
        }
        let text = match next {
            None | Some(None) => break,
            Some(Some(Ok(WsMessage::Text(t)))) => t,
            Some(Some(Ok(WsMessage::Binary(b)))) => match std::str::from_utf8(&b) {
                Ok(t) => t.into(),
                Err(_) => {
                    session.on_client_message("\u{fffd}").await;
                    continue;
                }
            },
            Some(Some(Ok(WsMessage::Close(_)))) => break,
            Some(Some(Ok(_))) => continue,
            Some(Some(Err(async_tungstenite::tungstenite::Error::Capacity(e)))) => {
                // tungstenite cannot resynchronise after an oversized frame: answer, close.
                log::warn!("session {}: {e}; closing", session.id());
                session.reject_too_large(None).await;
                break;
            }
            Some(Some(Err(e))) => {
                log::info!("session {}: read error: {e}", session.id());
                break;
            }
        };
        session.on_client_message(text.as_str()).await;
    }
}

/// The line that asks a session's writer for a WebSocket ping instead of a message (a
/// message is never empty).
const PING: &str = "";

/// Returns when the client has gone silent: after `interval` with no frame from it, a
/// ping is queued; with still none as long again, it is taken for gone (a vanished host
/// or path, which TCP reports only after many minutes, would otherwise hold the session
/// and its per-client backends). WebSocket clients answer pings by themselves.
async fn keepalive(received: &Cell<u64>, out: &Sender<String>, interval: Duration, session: u64) {
    let mut seen = received.get();
    let mut pinged = false;
    loop {
        async_io::Timer::after(interval).await;
        let now = received.get();
        if now != seen {
            (seen, pinged) = (now, false);
        } else if pinged {
            log::info!(
                "session {session}: no frame from the client for {} ms after a ping (ping_interval); closing",
                interval.as_millis()
            );
            return;
        } else {
            // A full queue: the writer's send_timeout watches a client that stopped
            // reading.
            log::debug!(
                "session {session}: silent for {} ms; ping sent",
                interval.as_millis()
            );
            let _ = out.try_send(PING.to_string());
            pinged = true;
        }
    }
}

/// What the handshake told us, for tracing.
#[derive(Default)]
struct Handshake {
    cx: Cx,
    host: String,
    user_agent: Option<String>,
}

async fn connection(gw: Rc<Gateway>, stream: TcpStream, peer: String, close: Receiver<()>) {
    stream.set_nodelay(true).ok();
    let full = gw.session_count() >= gw.cfg.server.max_sessions;
    let max = gw.cfg.limits.max_message_bytes;
    let mut seen = Handshake::default();
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| check_handshake(&gw, full, req, resp, &mut seen);
    // Boxed: the handshake's state would otherwise stay inline in this task's future
    // (several KiB) for the whole life of the session.
    let handshake = Box::pin(async_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(max)),
    ));
    let ws = match rt::timeout(gw.cfg.server.handshake_timeout.0, handshake).await {
        Some(Ok(ws)) => ws,
        Some(Err(e)) => {
            log::info!("handshake with {peer} failed: {e}");
            return;
        }
        None => {
            log::info!("handshake with {peer} timed out");
            return;
        }
    };
    let _count = gw.count_session();
    let opened = std::time::Instant::now();
    gw.metrics.session_opened();
    let (mut sink, mut stream) = ws.split();
    let peer_w = peer.clone();
    let (out_tx, out_rx) = async_channel::bounded::<String>(CLIENT_QUEUE);
    // Dropped when the writer stops, which ends the session's read loop too.
    let (writer_alive, writer_gone) = async_channel::bounded::<()>(1);
    let send_timeout = gw.cfg.server.send_timeout.0;
    let writer = rt::spawn(async move {
        let _alive = writer_alive;
        while let Ok(line) = out_rx.recv().await {
            let frame = if line == PING {
                WsMessage::Ping(Default::default())
            } else {
                WsMessage::text(line)
            };
            match rt::timeout(send_timeout, sink.send(frame)).await {
                Some(Ok(())) => {}
                Some(Err(_)) => return,
                None => {
                    log::warn!(
                        "{peer_w}: the client took no message for {} ms (send_timeout); closing its session",
                        send_timeout.as_millis()
                    );
                    return;
                }
            }
        }
        let _ = rt::timeout(send_timeout, sink.close(None)).await;
    });
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
    let session = Session::new(gw.clone(), out_tx.clone(), seen.cx, conn_attrs);
    log::info!("session {} opened from {peer}", session.id());
    // Frames received (any kind): how the keepalive tells a silent client.
    let received = Cell::new(0u64);
    // Shutdown, the writer gave up on the client, or the client went silent.
    let stopped = futures_lite::future::or(
        async {
            let _ = close.recv().await;
        },
        futures_lite::future::or(
            async {
                let _ = writer_gone.recv().await;
            },
            keepalive(
                &received,
                &out_tx,
                gw.cfg.server.ping_interval.0,
                session.id(),
            ),
        ),
    );
    read_client(&mut stream, &session, &received, stopped).await;
    // Stop accepting client input, then let the writer flush and send a close frame.
    session.close().await;
    drop(session);
    drop(out_tx);
    gw.metrics.session_closed(opened.elapsed());
    if rt::timeout(WRITER_DRAIN_TIMEOUT, writer).await.is_none() {
        log::debug!("session writer did not finish within {WRITER_DRAIN_TIMEOUT:?}");
    }
}
