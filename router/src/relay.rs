//! The relay loop: stdin → gateway, gateway → stdout.
//!
//! Tasks on one thread: the stdin reader (framing, validation, forwarding), the
//! WebSocket writer, the WebSocket reader (gateway → stdout queue), the keepalive and the
//! stdout writer ([`crate::stdio`]: a blocking-pool thread unless stdout is a pipe or a
//! socket of its own). The router remembers the ids of client requests it forwarded and
//! not yet saw answered, so that when the link is down or drops (including a gateway
//! that stops reading, `send_timeout`, or goes silent, `ping_interval`), every one of
//! them is answered with an error carrying its id. Stdin's EOF ends the relay, and so
//! does `SIGTERM`, which also ends the wait for answers on their way (whenever it
//! comes); a second SIGTERM exits at once.
//! Nothing but MCP messages is ever written to stdout.
//!
//! The link is kept by [`maintain_link`]: when it is lost, or the first connection
//! fails, the router connects again after `reconnect_delay` (doubled, with jitter, up to
//! `reconnect_max_delay`). A new link is opened to the host's traffic only after the
//! host's session has been replayed on it ([`crate::replay`]); until then requests are
//! answered with the error of the loss. Every link has a generation number: the tasks of
//! a lost link find theirs stale and stop, so they can never end a newer one.
//!
//! Tracing: each message read from stdin gets a `stdio.read` server span (the child of
//! trace context the host put in `params._meta`, if any); each request or notification
//! forwarded gets a `gateway.request` client span whose context replaces `traceparent`
//! in `params._meta`. A request's spans end when its response is relayed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_signal::{Signal, Signals};
use async_tungstenite::tungstenite::Message as WsMessage;
use futures_lite::future::or;
use futures_lite::StreamExt;
use futures_util::SinkExt;
use mcp_shared::config::{redact_url_query, RouterConfig};
use mcp_shared::error::{codes, RelayError, SessionError, ToRpcError};
use mcp_shared::framing::{Frame, LineDecoder, PIPE_READ_CHUNK_BYTES};
use mcp_shared::jsonrpc::{self, Brief, Id, Kind, Message, Rejection};
use mcp_shared::meter::{within_progress, Meter};
use mcp_shared::secret::Secret;
use mcp_shared::telemetry::{self, attrs, propagation, AttrValue, Cx, Moment, Telemetry};
use mcp_shared::time::timeout;
use opentelemetry::trace::SpanKind;
use serde_json::Value;
use smol::{LocalExecutor, Task};

use mcp_shared::idmap::IdMap;

use crate::link;
use crate::queue::{self, Weigh};
use crate::replay::{self, Replay};
use crate::stdio::{self, StdoutTx};

/// Messages queued for the WebSocket writer, at most (stdin reading waits when full).
pub const WS_QUEUE: usize = 256;
/// Bytes of messages queued for the WebSocket writer, at most (one longer message
/// goes alone): a gateway that reads slowly holds this much of the router's memory
/// plus one message, not [`WS_QUEUE`] × `max_message_bytes`.
pub const WS_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// On stdin EOF, how long to wait for the gateway to acknowledge the close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// On stdin EOF, how long responses to requests already forwarded may still take to
/// arrive (so `printf ... | mcp-router` prints its answers) before the link is closed.
pub const EOF_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// At the end, after the link is closed, how long stdout may go without taking a byte
/// before the router exits without the rest (a host that closed stdin and stopped
/// reading cannot keep the router alive; one that reads slowly gets everything).
pub const STDOUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the end of shutdown checks that stdout still takes bytes (so the router
/// gives up between 5 and 6 s after the last one).
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long the gateway may take to answer the replayed `initialize` on a new link (and,
/// all together, the rest of the replay). Longer than the gateway's default
/// `request_timeout` (60 s): its `initialize` waits for its backends to start.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);

/// Requests of a replay sent before their answers (a gateway refuses those beyond its
/// `max_in_flight`, 64 by default).
pub const REPLAY_WINDOW: usize = 16;
/// How many times a replayed request the gateway refused as overloaded (-32003) is sent
/// again (one at a time, after the others).
pub const REPLAY_RETRIES: usize = 3;

/// Requests of the gateway's waiting for the host's answer, at most (one more is
/// refused with -32003 at once).
pub const MAX_ASKED: usize = 1024;
/// What the host is told of a request of the gateway's it has not answered when the
/// link is lost (its answer could no longer be delivered).
const ASKED_LOST_REASON: &str = "the router lost its link to the gateway";
/// … and when the router is shutting down.
const ASKED_SHUTDOWN_REASON: &str = "the router is shutting down";

/// What a request still unanswered when the router exits at stdin's EOF is told.
const SHUTDOWN_REASON: &str = "stdin closed before the gateway answered";
/// … and when SIGTERM stopped it.
const SIGNAL_REASON: &str = "the router was stopped (SIGTERM) before the gateway answered";

enum WsCmd {
    Text(String),
    /// A keepalive probe (see [`keepalive`]).
    Ping,
    Close,
}

impl Weigh for WsCmd {
    fn bytes(&self) -> usize {
        match self {
            WsCmd::Text(t) => t.len(),
            WsCmd::Ping | WsCmd::Close => 0,
        }
    }
}

/// The queue to a link's WebSocket writer.
type WsTx = queue::Tx<WsCmd>;

/// The spans of a forwarded request.
struct Spans {
    stdio: Cx,
    request: Cx,
}

impl Spans {
    fn end(self) {
        self.end_at(&Moment::new());
    }

    /// Ends both at `at`: the request span where the stdio span ends, one reading.
    fn end_at(self, at: &Moment) {
        self.request.end_at(at);
        self.stdio.end_at(at);
    }
}

#[derive(Default)]
struct State {
    /// Client requests forwarded and not yet answered, with their spans.
    pending: HashMap<Id, Spans>,
    /// Tracing (disabled unless configured).
    tel: Telemetry,
    /// `server.address` / `server.port` of the gateway, for span attributes (shared:
    /// read for every message).
    server: Rc<(String, u16)>,
    /// The gateway session of the live link, as its handshake named it
    /// (`mcp.session.id` on the spans of what goes over it).
    session_id: Option<Rc<str>>,
    /// The queue to the WebSocket writer, while the link is open to the host's traffic.
    link: Option<WsTx>,
    /// Why the link is down (kept until a new link is open).
    down: Option<RelayError>,
    /// Generation of the newest link (one per successful connection).
    gen: u64,
    /// Whether link `gen` is alive (connected and not yet lost).
    live: bool,
    /// Dropped when link `gen` is lost: wakes [`maintain_link`].
    lost: Option<Sender<()>>,
    /// The reader tasks of the newest link and of older ones not yet finished (one
    /// may still be handing a response to stdout), each with the sender that stops it.
    readers: Vec<(smol::Task<()>, Sender<()>)>,
    /// The queue to the writer of a link whose session is being replayed: the host's
    /// responses and notifications go through (the new session may already ask the
    /// host something), its requests wait for the link to open.
    replaying: Option<WsTx>,
    /// Responses [`maintain_link`] waits for (requests of its own, while it replays the
    /// session on a new link): their ids, and where they go.
    awaited: Option<(Vec<Id>, Sender<Message>)>,
    /// The host's session, for replay on a new link.
    replay: Replay,
    /// Set at stdin EOF: a link that ends now is not reported as lost.
    closing: bool,
    /// Set when a signal ended the relay instead of stdin's EOF.
    signalled: bool,
    /// Set when SIGTERM came after stdin's EOF: the host has ended the session and is
    /// stopping the router, so what is left unanswered is not written to stdout (a host
    /// may have stopped reading it: the Python SDK closes stdin, waits 2 s, sends
    /// SIGTERM, and fails on a message that comes after).
    host_gone: bool,
    /// Set when the host closed stdout (the reason `host_gone` is set, then).
    stdout_broken: bool,
    /// Set when the router closes the link itself, at the end.
    ending: bool,
    /// Set after stdin EOF; dropped (waking the waiter) once nothing is pending.
    drained: Option<Sender<()>>,
    /// The link's TCP socket while it is alive (see [`link_down`]).
    socket: Option<async_net::TcpStream>,
    /// Requests the gateway sent the host and the host has not answered.
    asked: Asked,
}

/// Requests the gateway sent the host, under ids of the router's own: each gateway
/// session numbers its requests from 1, so after a reconnection the host's late answer
/// to a request of the lost link would otherwise be taken for the answer to the new
/// link's request with the same id.
struct Asked(IdMap<AskedReq>);

/// A request of the gateway's for the host.
struct AskedReq {
    /// The link's generation.
    gen: u64,
    /// The gateway's id for it.
    gateway_id: Id,
    /// Its `host.request` span, ended with the entry (at the host's answer, or failed
    /// before by what voided the request).
    span: Cx,
}

impl Drop for AskedReq {
    fn drop(&mut self) {
        self.span.end();
    }
}

impl Default for Asked {
    fn default() -> Self {
        Asked(IdMap::new(MAX_ASKED))
    }
}

impl State {
    /// What requests left unanswered at the end are told.
    fn shutdown_reason(&self) -> &'static str {
        if self.signalled {
            SIGNAL_REASON
        } else {
            SHUTDOWN_REASON
        }
    }

    /// Whether link `gen` is the newest one and still alive.
    fn is_alive(&self, gen: u64) -> bool {
        self.live && self.gen == gen
    }

    /// Forgets an answered request, returning its spans; wakes the EOF drain when it
    /// was the last one.
    fn answered(&mut self, id: &Id) -> Option<Spans> {
        let spans = self.pending.remove(id);
        if self.pending.is_empty() {
            self.drained = None;
        }
        spans
    }
}

type Shared = Rc<RefCell<State>>;

/// Runs the router until stdin closes or SIGTERM.
pub fn run(cfg: RouterConfig, token: Option<Secret>, tel: Telemetry) -> Result<Ended, String> {
    // Leaked: the link manager spawns each link's tasks, so it needs the executor for
    // as long as the process runs (there is one per process).
    let ex: &'static LocalExecutor<'static> = Box::leak(Box::new(LocalExecutor::new()));
    // async_io::block_on: this thread drives the reactor while idle (no hand-off from
    // smol's reactor thread per I/O event).
    // Boxed: the relay's future is ~8.7 KB, and the executor's `run` future embeds it
    // several times (35 KB); moved onto the main thread's stack by `block_on`, those
    // copies kept ~90 KiB of stack resident for the process's life (measured with
    // /proc/PID/smaps, docs/benchmark.md). On the heap it is one 8.7 KB allocation.
    let relay = Box::pin(relay(ex, cfg, token, tel.clone()));
    let ended = async_io::block_on(ex.run(relay))?;
    if ended == Ended::AtOnce {
        return Ok(ended);
    }
    // The spans still queued go to the collector within the tracing shutdown's bound
    // (3 s), unless a SIGTERM comes meanwhile: the relay's own watch has ended, so one
    // is kept here (a SIGTERM no handler forwards would be ignored).
    if !tel.enabled() {
        return Ok(ended);
    }
    let mut signals = Signals::new([Signal::Term]).ok();
    log::debug!("flushing spans (a SIGTERM stops the wait)");
    let flush = smol::unblock(move || tel.shutdown());
    let cut = async_io::block_on(unless_signalled(&mut signals, flush)).is_none();
    if cut {
        log::warn!("SIGTERM; exiting without the spans still queued");
        return Ok(Ended::AtOnce);
    }
    Ok(ended)
}

/// Host (an IPv6 address without its brackets) and port of a ws:// URL, for span
/// attributes (the authority ends at the path, the query or the fragment).
fn server_of(url: &str) -> (String, u16) {
    let authority = url
        .trim_start_matches("ws://")
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    let (host, port) = mcp_shared::config::split_authority(authority);
    (host.to_string(), port.parse().unwrap_or(80))
}

async fn relay(
    ex: &'static LocalExecutor<'static>,
    cfg: RouterConfig,
    token: Option<Secret>,
    tel: Telemetry,
) -> Result<Ended, String> {
    // Before stdio is switched: from here on SIGTERM ends the relay (below), so the
    // descriptors get their flags back. Only SIGTERM, which is how hosts stop a stdio
    // server: a handler for SIGINT or SIGHUP would override the `SIG_IGN` that a
    // non-interactive shell's `&` or `nohup` gives them (and in a terminal, where
    // Ctrl-C sends SIGINT, stdin is a tty, which is never switched).
    let mut signals = match Signals::new([Signal::Term]) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("SIGTERM will not shut down cleanly: {e}");
            None
        }
    };
    // `_restore` lives to the end: stdin and stdout get their flags back after the last
    // write.
    let (mut stdin, stdout, _restore) = stdio::open();
    let (out_tx, out_rx) = stdio::stdout_queue();
    let written = stdio::Written::default();
    // Closed when the stdout writer ends. Before the shutdown closes its queue that
    // means a write failed: the host closed its end of the pipe, and nothing the
    // router relays can reach it any more.
    let (stdout_alive, stdout_ended) = async_channel::bounded::<()>(1);
    let stdout_task = ex.spawn({
        let written = written.clone();
        async move {
            stdout.write_all_from(out_rx, written).await;
            drop(stdout_alive);
        }
    });
    let server = Rc::new(server_of(&cfg.gateway.url));
    let state: Shared = Rc::new(RefCell::new(State {
        tel: tel.clone(),
        server: server.clone(),
        ..State::default()
    }));
    let max = cfg.limits.max_message_bytes;

    // The first connection attempt ends before stdin is read: the host's first message
    // finds the link up, or the reason it is not.
    let (first_tx, first_rx) = async_channel::bounded::<()>(1);
    let manager = ex.spawn(maintain_link(
        ex,
        cfg.clone(),
        token,
        state.clone(),
        out_tx.clone(),
        first_tx,
    ));
    let session = async {
        let read = async {
            let _ = first_rx.recv().await;
            read_stdin(&mut stdin, &state, &out_tx, cfg.limits.max_in_flight, max).await;
            false
        };
        // A stdout that broke ends the session too: what the host still sends would
        // run (tools called) for answers that cannot reach it.
        or(read, async {
            let _ = stdout_ended.recv().await;
            true
        })
        .await
    };
    // A signal stops the reading of stdin wherever it is: a message read but not yet
    // forwarded is dropped (the host is ending the session), one forwarded is answered.
    let ended = unless_signalled(&mut signals, session).await;
    let mut signalled = ended.is_none();
    let broken = ended == Some(true);
    let eof = !signalled && !broken;
    drop(stdin);
    log::info!(
        "{}; shutting down",
        if signalled {
            "SIGTERM"
        } else if broken {
            "stdout closed by the host"
        } else {
            "stdin closed"
        }
    );
    {
        let mut st = state.borrow_mut();
        st.closing = true;
        // Nothing can be written for the requests still in flight.
        st.host_gone = broken;
        st.stdout_broken = broken;
    }

    // After EOF the answers on their way are awaited; a signal (then or meanwhile) ends
    // the wait: the requests are answered with an error once the link is closed.
    let waiter = {
        let mut st = state.borrow_mut();
        (eof && !st.pending.is_empty() && st.link.is_some()).then(|| {
            let (tx, rx) = async_channel::bounded::<()>(1);
            st.drained = Some(tx);
            rx
        })
    };
    if let Some(rx) = waiter {
        match unless_signalled(&mut signals, timeout(EOF_DRAIN_TIMEOUT, rx.recv())).await {
            Some(Some(_)) => {}
            Some(None) => log::warn!(
                "{} request(s) still unanswered {} ms after stdin closed",
                state.borrow().pending.len(),
                EOF_DRAIN_TIMEOUT.as_millis()
            ),
            None => {
                log::info!("SIGTERM; not waiting for the answers on their way");
                signalled = true;
                state.borrow_mut().host_gone = true;
            }
        }
    }
    {
        let mut st = state.borrow_mut();
        st.signalled = signalled;
        // No new link from here on (one being connected or replayed is abandoned).
        st.replaying = None;
        st.ending = true;
    }
    drop(manager);
    // One SIGTERM asks to stop without waiting for the answers on their way, which is
    // all a first one does from here on too; a second one exits at once (the
    // descriptors get their flags back; what is not yet written to stdout is lost).
    let finish = finish(&state, &out_tx, stdout_task, &written);
    futures_lite::pin!(finish);
    while unless_signalled(&mut signals, finish.as_mut())
        .await
        .is_none()
    {
        if signalled {
            log::warn!("second SIGTERM; exiting now");
            return Ok(Ended::AtOnce);
        }
        log::info!("SIGTERM; finishing the shutdown (a second one exits at once)");
        signalled = true;
        let mut st = state.borrow_mut();
        st.signalled = true;
        st.host_gone |= eof;
    }
    Ok(Ended::Finished)
}

/// How the relay ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Normally, or by one SIGTERM: what is left (spans, log lines) is flushed, within
    /// its bounds, unless another SIGTERM comes.
    Finished,
    /// A second SIGTERM: exit now.
    AtOnce,
}

/// `f`'s output, or `None` if a SIGTERM comes first (`f` is then dropped).
async fn unless_signalled<T>(
    signals: &mut Option<Signals>,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    or(async { Some(f.await) }, async {
        next_signal(signals).await;
        None
    })
    .await
}

/// The next SIGTERM (never, when none could be registered or the signal stream fails).
async fn next_signal(signals: &mut Option<Signals>) {
    if let Some(s) = signals {
        match s.next().await {
            Some(Ok(_)) => return,
            Some(Err(e)) => log::warn!("waiting for SIGTERM: {e}; it will not be seen"),
            None => {}
        }
        *signals = None;
    }
    std::future::pending().await
}

/// The end of the relay: closes the link (`CLOSE_TIMEOUT`), answers whatever the
/// gateway did not, and writes what is left for stdout for as long as the host keeps
/// reading (`STDOUT_DRAIN_TIMEOUT` without a byte taken ends it).
async fn finish(
    state: &Shared,
    out_tx: &StdoutTx,
    stdout_task: Task<()>,
    written: &stdio::Written,
) {
    let (link, mut readers, gen) = {
        let mut st = state.borrow_mut();
        (st.link.take(), std::mem::take(&mut st.readers), st.gen)
    };
    if let Some(tx) = link {
        // Bounded even when the writer is stuck on a gateway that stopped reading.
        timeout(CLOSE_TIMEOUT, async {
            let _ = tx.send(WsCmd::Close).await;
            if let Some((task, _)) = readers.last_mut() {
                task.await;
                readers.pop();
            }
        })
        .await;
    }
    // The rest hands answers to stdout, so it takes as long as the host takes to read
    // them: as long as it reads, for a host that reads slowly, but not for one that
    // stopped reading.
    let tail = async {
        for (task, stop) in readers {
            // Not cancelled: a reader that is handing a response to stdout finishes
            // that first (cancelling it there would lose a response already taken off
            // the pending table). It stops reading its link at once.
            stop.close();
            task.await;
        }
        // Whatever the gateway did not answer gets an error now: no request goes
        // unanswered (`link_down` gives the shutdown's reason).
        link_down(state, out_tx, gen, SHUTDOWN_REASON.into()).await;
        // `close`, not `drop`: the detached writer task may still hold a sender.
        out_tx.close();
        stdout_task.await;
    };
    futures_lite::pin!(tail);
    let (mut seen, mut idle) = (written.load(Ordering::Relaxed), Duration::ZERO);
    while timeout(DRAIN_CHECK_INTERVAL, tail.as_mut()).await.is_none() {
        let now = written.load(Ordering::Relaxed);
        idle = if now == seen {
            idle + DRAIN_CHECK_INTERVAL
        } else {
            Duration::ZERO
        };
        seen = now;
        if idle >= STDOUT_DRAIN_TIMEOUT {
            log::warn!(
                "stdout took nothing for {} ms; exiting without what is left to write",
                STDOUT_DRAIN_TIMEOUT.as_millis()
            );
            return;
        }
    }
}

/// Keeps a link to the gateway: connects, and after a failed attempt or a lost link
/// connects again after a growing delay (see the module documentation). Runs until
/// shutdown cancels it, or after the first loss when `reconnect_delay` is zero.
async fn maintain_link(
    ex: &'static LocalExecutor<'static>,
    cfg: RouterConfig,
    token: Option<Secret>,
    state: Shared,
    out: StdoutTx,
    first_done: Sender<()>,
) {
    let mut first_done = Some(first_done);
    let first = cfg.gateway.reconnect_delay.0;
    let mut delay = first;
    let mut attempt = 0u64;
    // Whether a link was ever open: the next one is a reconnection (the host's session
    // is replayed on it), not the first connection after failed attempts.
    let mut was_open = false;
    loop {
        attempt += 1;
        let opened = open_link(ex, &cfg, token.as_ref(), &state, &out, was_open).await;
        was_open |= opened.is_ok();
        // (A link lost during its replay, `Disconnected`, was logged by `link_down`,
        // which set `down` too.)
        if let Err(e) = &opened {
            if !matches!(e, RelayError::Disconnected { .. }) {
                if attempt == 1 || first.is_zero() {
                    log::error!("{e}; every request will be answered with an error");
                } else {
                    log::warn!("{e}");
                }
                state.borrow_mut().down = Some(e.clone());
            }
        }
        first_done.take();
        if let Ok(lost) = opened {
            let up = std::time::Instant::now();
            // Every sender is dropped when the link is lost.
            let _ = lost.recv().await;
            // A link that stayed up a while starts the backoff over; one a gateway drops
            // right after the handshake does not (it would be reconnected to, and a
            // session and its backends made, every `reconnect_delay`).
            if up.elapsed() >= cfg.gateway.reconnect_max_delay.0 {
                delay = first;
            }
        }
        if first.is_zero() {
            return;
        }
        // Jitter (half to all of the delay): routers that lost the same gateway do not
        // all come back at the same instant.
        let wait = delay / 2 + delay.mul_f64(fastrand::f64() / 2.0);
        log::info!("reconnecting to the gateway in {} ms", wait.as_millis());
        async_io::Timer::after(wait).await;
        delay = (delay * 2).min(cfg.gateway.reconnect_max_delay.0);
    }
}

/// One connection attempt: connects (a `gateway.connect` span), starts the link's
/// tasks, replays the host's session on it and opens it to the host's traffic. Returns
/// what tells when the link is lost.
async fn open_link(
    ex: &'static LocalExecutor<'static>,
    cfg: &RouterConfig,
    token: Option<&Secret>,
    state: &Shared,
    out: &StdoutTx,
    again: bool,
) -> Result<Receiver<()>, RelayError> {
    let (tel, server) = {
        let st = state.borrow();
        (st.tel.clone(), st.server.clone())
    };
    let connect_cx = tel.start("gateway.connect", SpanKind::Client, &Cx::default(), |a| {
        attrs::server(a, &server.0, server.1);
        a.str("network.transport", "tcp");
        attrs::url_full(a, &cfg.gateway.url);
    });
    let connected = link::connect(
        &cfg.gateway.url,
        token,
        cfg.limits.max_message_bytes,
        cfg.gateway.connect_timeout.0,
        propagation::headers_for(&connect_cx),
    )
    .await;
    let link::Link {
        sink,
        stream,
        socket,
        meter,
        session_id,
    } = match connected {
        Ok(link) => {
            connect_cx.set_attributes(|a| {
                a.str("websocket.protocol", "mcp");
                if let Some(id) = &link.session_id {
                    a.str("mcp.session.id", id);
                }
            });
            connect_cx.end();
            link
        }
        Err(e) => {
            telemetry::fail(&connect_cx, "gateway_unreachable", &e.to_string());
            connect_cx.end();
            return Err(e);
        }
    };
    let (ws_tx, ws_rx) = queue::bounded(WS_QUEUE, WS_QUEUE_BYTES);
    let (lost_tx, lost_rx) = async_channel::bounded::<()>(1);
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let gen = {
        let mut st = state.borrow_mut();
        st.gen += 1;
        st.live = true;
        st.session_id = session_id;
        st.socket = Some(socket);
        st.lost = Some(lost_tx);
        st.gen
    };
    let send_timeout = cfg.gateway.send_timeout.0;
    ex.spawn(write_ws(
        sink,
        ws_rx,
        (meter.clone(), send_timeout),
        gen,
        state.clone(),
        out.clone(),
    ))
    .detach();
    let reader = ex.spawn(read_ws(
        stream,
        gen,
        state.clone(),
        out.clone(),
        stop_rx,
        cfg.limits.max_message_bytes,
    ));
    {
        let mut st = state.borrow_mut();
        st.readers.retain(|(task, _)| !task.is_finished());
        st.readers.push((reader, stop_tx));
        st.replaying = Some(ws_tx.clone());
        // What the host's requests are told meanwhile (not the error of the last failed
        // attempt before this one).
        st.down = Some(RelayError::Replaying);
    }
    let interval = cfg.gateway.ping_interval.0;
    if !interval.is_zero() {
        ex.spawn(keepalive(
            state.clone(),
            out.clone(),
            (ws_tx.clone(), lost_rx.clone()),
            gen,
            (meter, interval),
        ))
        .detach();
    }

    let replayed = restore_session(&ws_tx, state, gen).await;
    state.borrow_mut().replaying = None;
    if let Err(reason) = replayed {
        let alive = state.borrow().is_alive(gen);
        if !alive {
            // Lost meanwhile: that loss is the reason.
            let down = state.borrow().down.clone();
            return Err(down.unwrap_or(RelayError::Disconnected { reason }));
        }
        link_down(state, out, gen, reason.clone()).await;
        return Err(RelayError::Disconnected { reason });
    }
    let notices = {
        let mut st = state.borrow_mut();
        st.link = Some(ws_tx);
        st.down = None;
        if again && st.replay.session_ready() {
            st.replay.list_changed()
        } else {
            Vec::new()
        }
    };
    if again {
        log::info!(
            "reconnected to gateway {}",
            redact_url_query(&cfg.gateway.url)
        );
    } else {
        log::info!(
            "connected to gateway {}",
            redact_url_query(&cfg.gateway.url)
        );
    }
    // The new gateway may route to other backends: lists the host cached may be stale.
    for m in notices {
        send_out(out, m.to_json()).await;
    }
    Ok(lost_rx)
}

/// Replays the host's session on a new link (see [`crate::replay`]): `initialize`
/// first, answered (with a result) within [`REPLAY_TIMEOUT`] or the attempt fails;
/// then the rest together, whose failures are only logged. Fails too when link `gen`
/// is lost meanwhile.
async fn restore_session(ws: &WsTx, state: &Shared, gen: u64) -> Result<(), String> {
    let messages = state.borrow_mut().replay.messages();
    let mut messages = messages.into_iter();
    let Some(init) = messages.next() else {
        return Ok(());
    };
    let answers = exchange(ws, state, gen, vec![init]).await?;
    let Some(init) = answers.first() else {
        return Err(format!(
            "the gateway did not answer the replayed initialize within {} s",
            REPLAY_TIMEOUT.as_secs()
        ));
    };
    if let Some(e) = init.error() {
        return Err(format!("the gateway refused the replayed initialize: {e}"));
    }
    // The new gateway's capabilities decide which lists the host is told changed.
    state.borrow_mut().replay.observe_capabilities(init);
    let rest: Vec<Message> = messages.collect();
    let asked = rest.iter().filter(|m| m.kind() == Kind::Request).count();
    let answers = exchange(ws, state, gen, rest).await?;
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|a| a.error().map(|e| e.to_string()))
        .collect();
    if answers.len() < asked || !failed.is_empty() {
        log::warn!(
            "replaying the session on the new link: {} of {asked} request(s) unanswered, {} refused{}",
            asked - answers.len(),
            failed.len(),
            failed.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Sends the router's own `messages` on link `gen`, in order, at most
/// [`REPLAY_WINDOW`] requests unanswered at a time (a gateway refuses what is beyond
/// its `max_in_flight`), and collects the answers to its requests until all came or
/// [`REPLAY_TIMEOUT`] passed. A request the gateway refuses as overloaded is sent again
/// once the others are answered, one at a time, at most [`REPLAY_RETRIES`] times.
/// Fails when the link is lost.
async fn exchange(
    ws: &WsTx,
    state: &Shared,
    gen: u64,
    messages: Vec<Message>,
) -> Result<Vec<Message>, String> {
    let ids: Vec<Id> = messages.iter().filter_map(|m| m.id()).collect();
    let (tx, rx) = async_channel::bounded::<Message>(ids.len().max(1));
    let expected = ids.len();
    state.borrow_mut().awaited = Some((ids, tx));
    let lost = || {
        let st = state.borrow();
        (!st.is_alive(gen)).then(|| match &st.down {
            Some(e) => e.to_string(),
            None => "the link was lost".to_string(),
        })
    };
    let mut queue: std::collections::VecDeque<(Message, usize)> =
        messages.into_iter().map(|m| (m, 0)).collect();
    let mut sent: HashMap<Id, (Message, usize)> = HashMap::new();
    let mut answers = Vec::with_capacity(expected);
    let mut window = REPLAY_WINDOW;
    timeout(REPLAY_TIMEOUT, async {
        loop {
            while sent.len() < window {
                let Some((m, tries)) = queue.pop_front() else {
                    break;
                };
                let text = m.to_json();
                if let Some(id) = m.id() {
                    sent.insert(id, (m, tries));
                }
                if ws.send(WsCmd::Text(text)).await.is_err() {
                    return;
                }
            }
            if answers.len() == expected {
                return;
            }
            // Ends early when the link is lost (`link_down` drops the sender).
            let Ok(answer) = rx.recv().await else {
                return;
            };
            let Some((m, tries)) = answer.id().and_then(|id| sent.remove(&id)) else {
                continue;
            };
            let overloaded = answer
                .error()
                .is_some_and(|e| e.get("code").and_then(Value::as_i64) == Some(codes::OVERLOADED));
            if overloaded && tries < REPLAY_RETRIES {
                // Again after the rest, and from now on one at a time.
                window = 1;
                if let (Some(id), Some((ids, _))) = (m.id(), &mut state.borrow_mut().awaited) {
                    ids.push(id);
                }
                queue.push_back((m, tries + 1));
            } else {
                answers.push(answer);
            }
        }
    })
    .await;
    state.borrow_mut().awaited = None;
    match lost() {
        Some(reason) => Err(reason),
        None => Ok(answers),
    }
}

/// Reads stdin to EOF, forwarding each valid message and answering bad ones.
async fn read_stdin(
    stdin: &mut stdio::Input,
    state: &Shared,
    out: &StdoutTx,
    max_in_flight: usize,
    max: usize,
) {
    let mut dec = LineDecoder::new(max);
    let mut buf = vec![0u8; PIPE_READ_CHUNK_BYTES];
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                log::error!("reading stdin: {e}");
                0
            }
        };
        if n == 0 {
            // A last message without a newline is still one (`printf '…' | mcp-router`).
            if let Some(frame) = dec.finish() {
                handle_frame(state, out, max_in_flight, max, frame).await;
            }
            return;
        }
        dec.push(&buf[..n]);
        while let Some(frame) = dec.next_frame() {
            handle_frame(state, out, max_in_flight, max, frame).await;
        }
    }
}

async fn handle_frame(
    state: &Shared,
    out: &StdoutTx,
    max_in_flight: usize,
    max: usize,
    frame: Frame,
) {
    match frame {
        Frame::TooLong { seen, len } => {
            let err = SessionError::TooLarge { limit: max }.to_rpc_error();
            let rej = Rejection::sniffed(seen, err.code, err.message);
            log::warn!("dropped a {len}-byte message from stdin (limit {max})");
            on_rejected(state, out, max_in_flight, rej, len).await;
        }
        Frame::Line(line) => handle_client_line(state, out, max_in_flight, line).await,
    }
}

/// A line from stdin that could not be taken. A request is answered with the error. A
/// response (the host's answer to what the gateway asked) is never answered: the
/// gateway is sent an error response with its id instead, so that its request fails
/// now rather than at its timeout. Anything else is only logged.
async fn on_rejected(
    state: &Shared,
    out: &StdoutTx,
    max_in_flight: usize,
    rej: Rejection,
    size: usize,
) {
    // `{"id": N}` alone, N the id of a request of the gateway's the host holds: its
    // answer, broken (not a request without its method).
    let broken_answer = rej.no_outcome
        && rej
            .id
            .as_ref()
            .is_some_and(|id| state.borrow().asked.0.is_live(id));
    let answered = if broken_answer {
        rej.id.as_ref()
    } else {
        rej.answered_id()
    };
    if rej.reply && !broken_answer {
        log::warn!("bad message on stdin: {}", rej.error.message);
        rejected_span(state, &rej, size);
        send_out(out, rej.reply_text()).await;
    } else if let Some(id) = answered {
        log::warn!(
            "bad response on stdin (to the gateway's request {id}): {}",
            rej.error.message
        );
        let err = SessionError::UnreadableResponse(rej.error.message.clone()).to_rpc_error();
        let msg = Message::error_response(Some(id.clone()), err);
        let size = msg.to_json().len();
        handle_client_message(state, out, max_in_flight, msg, size).await;
    } else {
        log::warn!("bad message on stdin, not answered: {}", rej.error.message);
        rejected_span(state, &rej, size);
    }
}

/// The `stdio.read` span of a line from stdin the router refused itself (not JSON-RPC,
/// too long): a root, failed with the error the host is told (or would be).
fn rejected_span(state: &Shared, rej: &Rejection, size: usize) {
    let tel = state.borrow().tel.clone();
    if !tel.enabled() {
        return;
    }
    let read = Moment::new();
    let span = tel.start_at("stdio.read", SpanKind::Server, &Cx::default(), &read, |a| {
        if let Some(id) = &rej.id {
            attrs::request_id(a, id);
        }
        a.str("network.transport", "pipe");
    });
    span.event_at(
        "stdio.message.read",
        &[("message.size", AttrValue::Int(size as i64))],
        &read,
    );
    let code = rej.error.code.to_string();
    span.set_attributes(|a| a.str("rpc.response.status_code", &code));
    telemetry::fail(&span, &code, &rej.error.message);
    span.end_at(&read);
}

async fn handle_client_line(state: &Shared, out: &StdoutTx, max_in_flight: usize, line: Vec<u8>) {
    let size = line.len();
    // Kept, so that what goes to the gateway is the host's text (`to_text`); of its
    // `params` only what the spans and the replay read is built (a tool call's
    // arguments, of any size, are checked but not built).
    match Message::parse_relayed(line) {
        Ok(msg) => handle_client_message(state, out, max_in_flight, msg, size).await,
        Err(rej) => on_rejected(state, out, max_in_flight, rej, size).await,
    }
}

/// Forwards one message of the host's (`size` bytes on stdin) to the gateway, or
/// answers it with the reason it cannot go.
async fn handle_client_message(
    state: &Shared,
    out: &StdoutTx,
    max_in_flight: usize,
    mut msg: Message,
    size: usize,
) {
    // Kept as the host sent it (before trace context is added) if the gateway session
    // would need it again after a reconnection.
    let shaping = replay::shapes_session(&msg).then(|| msg.whole());
    let (tel, server, version, session_id) = {
        let st = state.borrow();
        let version = st.replay.protocol_version();
        (
            st.tel.clone(),
            st.server.clone(),
            version,
            st.session_id.clone(),
        )
    };
    // The host's answer goes back under the gateway's id, and only to the link that
    // asked (taken here: its `host.request` span is the parent of this line's span).
    let asked = match (msg.kind(), msg.id()) {
        (Kind::Response, Some(id)) => {
            let mut st = state.borrow_mut();
            let gen = st.gen;
            st.asked.0.take(&id).filter(|a| a.gen == gen)
        }
        _ => None,
    };
    let spans = if tel.enabled() {
        let parent = match &asked {
            Some(a) => a.span.clone(),
            None => propagation::extract_message(&msg),
        };
        // The line was read, its span starts and its request span starts under it: one
        // moment, one clock reading (docs/tracing.md, "Clock readings").
        let read = Moment::new();
        let stdio = tel.start_at("stdio.read", SpanKind::Server, &parent, &read, |a| {
            attrs::mcp_message_brief(a, &msg);
            a.str("network.transport", "pipe");
            if let Some(v) = &version {
                a.str("mcp.protocol.version", v);
            }
        });
        stdio.event_at(
            "stdio.message.read",
            &[("message.size", AttrValue::Int(size as i64))],
            &read,
        );
        let request = if msg.kind() == Kind::Response {
            Cx::default()
        } else {
            let request = tel.start_at("gateway.request", SpanKind::Client, &stdio, &read, |a| {
                attrs::mcp_message(a, &msg);
                attrs::server(a, &server.0, server.1);
                a.str("network.transport", "tcp");
                if let Some(v) = &version {
                    a.str("mcp.protocol.version", v);
                }
                // The gateway's session this goes into (the host's stdio session has
                // no id of its own).
                if let Some(id) = &session_id {
                    a.str("mcp.session.id", id);
                }
            });
            propagation::inject_message(&request, &mut msg);
            request
        };
        Spans { stdio, request }
    } else {
        Spans {
            stdio: Cx::default(),
            request: Cx::default(),
        }
    };
    let decision = {
        let st = state.borrow();
        match st.link.clone().or_else(|| {
            // While a new link's session is replayed, the host's answers (to what the
            // new session asks it) and notifications go through; its requests wait.
            (msg.kind() != Kind::Request)
                .then(|| st.replaying.clone())
                .flatten()
        }) {
            None => Err((
                "gateway_unavailable",
                st.down
                    .clone()
                    .unwrap_or(RelayError::Disconnected {
                        reason: "not connected".into(),
                    })
                    .to_rpc_error(),
            )),
            Some(link) => match (msg.kind(), msg.id()) {
                // Refused here, not by the gateway: its refusal would be taken for the
                // answer to the first request (which would then never get its own).
                (Kind::Request, Some(id)) if st.pending.contains_key(&id) => {
                    Err(("duplicate_id", SessionError::DuplicateId.to_rpc_error()))
                }
                (Kind::Request, Some(_)) if st.pending.len() >= max_in_flight => Err((
                    "overloaded",
                    SessionError::TooManyInFlight(max_in_flight).to_rpc_error(),
                )),
                _ => Ok(link),
            },
        }
    };
    let link = match decision {
        Ok(link) => link,
        Err((error_type, err)) => {
            telemetry::fail(&spans.request, error_type, &err.message);
            telemetry::fail(&spans.stdio, error_type, &err.message);
            spans.end();
            if let (Kind::Request, Some(id)) = (msg.kind(), msg.id()) {
                send_out(out, Message::error_response(Some(id), err).to_json()).await;
            } else {
                let kind = match msg.kind() {
                    Kind::Response => "response",
                    _ => "notification",
                };
                log::warn!("{}; dropped a {kind}", err.message);
            }
            return;
        }
    };
    if msg.kind() == Kind::Response {
        let Some(asked) = &asked else {
            let id = msg.id().expect("responses have ids");
            log::debug!("dropped the host's answer to {id}: no request of the gateway's on this link has that id (an earlier link's, or one it cancelled)");
            spans.end();
            return;
        };
        msg.set_id(&asked.gateway_id);
        telemetry::record_response(&asked.span, &msg);
    }
    // The router changes nothing in a message but the trace context it adds: without
    // one the message goes on as the host's exact bytes, and with one those bytes get
    // the context inserted where that can be done without writing the message anew
    // (callgrind: docs/benchmark.md, "Instructions per request").
    let text = msg.to_text();
    spans.request.event(
        "websocket.message.sent",
        &[("message.size", AttrValue::Int(text.len() as i64))],
    );
    // A request the host cancels will not be answered (MCP): it leaves the pending
    // table now, or it would hold a place of `max_in_flight` for good, and be answered
    // with an error at the end that the host asked not to get.
    let cancelled = (msg.method() == Some("notifications/cancelled"))
        .then(|| {
            msg.whole()
                .params()
                .and_then(|p| p.get("requestId"))
                .and_then(Id::from_value)
        })
        .flatten();
    let (done, cancelled) = {
        let mut st = state.borrow_mut();
        if let Some(m) = &shaping {
            st.replay.observe(m);
        }
        let cancelled = cancelled.and_then(|id| st.answered(&id));
        match (msg.kind(), msg.id()) {
            (Kind::Request, Some(id)) => {
                st.pending.insert(id, spans);
                (None, cancelled)
            }
            _ => (Some(spans), cancelled),
        }
    };
    if let Some(spans) = done {
        spans.end();
    }
    if let Some(spans) = cancelled {
        for cx in [&spans.request, &spans.stdio] {
            cx.set_attributes(|a| a.bool("mcp.request.cancelled", true));
        }
        spans.end();
    }
    // The writer task answers pending requests itself if the link fails meanwhile.
    let _ = link.send(WsCmd::Text(text)).await;
}

async fn send_out(out: &StdoutTx, line: String) {
    if out.send(line).await.is_err() {
        // Logged once where the write failed; the session is ending.
        log::debug!("stdout writer has stopped; a message dropped");
    }
}

/// Gives a request of the gateway's for the host an id of the router's own
/// ([`Asked`]) and a `host.request` span, continuing the trace context it came with
/// and passing its own on in `_meta`; false when it cannot go to the host (the
/// gateway is then answered).
async fn ask_host(state: &Shared, gen: u64, m: &mut Message) -> bool {
    let gateway_id = m.id().expect("requests have ids");
    let tel = state.borrow().tel.clone();
    let span = if tel.enabled() {
        let parent = propagation::extract_message(m);
        tel.start("host.request", SpanKind::Client, &parent, |a| {
            attrs::mcp_message_without_id(a, m);
            a.str("network.transport", "pipe");
        })
    } else {
        Cx::default()
    };
    let entry = state.borrow_mut().asked.0.insert(AskedReq {
        gen,
        gateway_id: gateway_id.clone(),
        span: span.clone(),
    });
    match entry {
        Ok(id) => {
            m.set_id(&Id::from(id));
            span.set_attributes(|a| attrs::request_id(a, &Id::from(id)));
            propagation::inject_message(&span, m);
            true
        }
        Err(full) => {
            log::warn!(
                "the gateway asked the host more than {} things at once; refused",
                full.limit
            );
            let err = SessionError::TooManyInFlight(full.limit).to_rpc_error();
            telemetry::fail(&span, &err.code.to_string(), &err.message);
            span.end();
            let answer = Message::error_response(Some(gateway_id), err).to_json();
            let link = {
                let st = state.borrow();
                st.link.clone().or_else(|| st.replaying.clone())
            };
            if let Some(link) = link {
                let _ = link.send(WsCmd::Text(answer)).await;
            }
            false
        }
    }
}

/// Points the gateway's cancellation of one of its requests to the host at the id the
/// host knows; false when the host has no such request (already answered).
fn cancel_asked(state: &Shared, gen: u64, m: &mut Message) -> bool {
    let Some(gateway_id) = m
        .params()
        .and_then(|p| p.get("requestId"))
        .and_then(Id::from_value)
    else {
        return true;
    };
    let mut st = state.borrow_mut();
    let Some(id) = st
        .asked
        .0
        .find(|a| a.gen == gen && a.gateway_id == gateway_id)
    else {
        return false;
    };
    if let Some(a) = st.asked.0.remove(id) {
        a.span
            .set_attributes(|a| a.bool("mcp.request.cancelled", true));
    }
    m.params_mut().insert("requestId".into(), id.into());
    true
}

/// A message from the gateway over `max_message_bytes` (read whole only to be handled
/// here: up to [`mcp_shared::framing::WS_OVERSIZE_FACTOR`] times the bound), dropped.
/// The request it answers fails with [`RelayError::ResponseTooLarge`]; a request of the
/// gateway's is answered with the size error; anything else is only logged. The link
/// stays up, except for a response whose id cannot be read: the link's loss is then
/// the only way to answer the request it was for (returned: the reason).
async fn on_oversized(state: &Shared, out: &StdoutTx, max: usize, text: &str) -> Option<String> {
    let seen = jsonrpc::sniff(text.as_bytes());
    log::warn!(
        "the gateway sent a {}-byte message (limit {max}); dropped",
        text.len()
    );
    let Some(id) = seen.id.clone() else {
        return seen.response.then(|| {
            format!(
                "the gateway sent a {}-byte response whose id could not be read (limit {max})",
                text.len()
            )
        });
    };
    if seen.response {
        let err = RelayError::ResponseTooLarge { limit: max }.to_rpc_error();
        let answer = Message::error_response(Some(id.clone()), err.clone());
        let spans = {
            let mut st = state.borrow_mut();
            if let Some((ids, tx)) = &mut st.awaited {
                // One of the router's own (replay): it fails, not waits.
                if let Some(i) = ids.iter().position(|w| *w == id) {
                    ids.swap_remove(i);
                    let _ = tx.try_send(answer);
                    return None;
                }
            }
            st.answered(&id)
        };
        if let Some(spans) = spans {
            for cx in [&spans.request, &spans.stdio] {
                telemetry::fail(cx, "response_too_large", &err.message);
            }
            let line = answer.to_json();
            let (received, written) = (text.len() as i64, line.len() as i64);
            send_out(out, line).await;
            // What came (and was dropped) and what the host got instead, as for any
            // answer.
            let at = Moment::new();
            spans.request.event_at(
                "websocket.message.received",
                &[("message.size", AttrValue::Int(received))],
                &at,
            );
            spans.stdio.event_at(
                "stdio.message.written",
                &[("message.size", AttrValue::Int(written))],
                &at,
            );
            spans.end_at(&at);
        }
    } else if seen.answerable() {
        let link = {
            let st = state.borrow();
            st.link.clone().or_else(|| st.replaying.clone())
        };
        if let Some(link) = link {
            let err = SessionError::TooLarge { limit: max }.to_rpc_error();
            let answer = Message::error_response(Some(id), err).to_json();
            let _ = link.send(WsCmd::Text(answer)).await;
        }
    }
    None
}

/// Gateway → stdout, until the link ends or `stop` closes (shutdown).
async fn read_ws(
    mut stream: link::Receiver,
    gen: u64,
    state: Shared,
    out: StdoutTx,
    stop: Receiver<()>,
    max: usize,
) {
    // One future for the whole link, not one per frame.
    let stopped = async {
        let _ = stop.recv().await;
    };
    futures_lite::pin!(stopped);
    let reason = loop {
        let frame = futures_lite::future::or(async { Some(stream.next().await) }, async {
            stopped.as_mut().await;
            None
        })
        .await;
        let Some(frame) = frame else {
            break SHUTDOWN_REASON.to_string();
        };
        let text = match frame {
            None => break "connection closed".to_string(),
            Some(Err(e)) => break e.to_string(),
            Some(Ok(WsMessage::Text(t))) => t.as_str().to_owned(),
            Some(Ok(WsMessage::Binary(b))) => match String::from_utf8(b.to_vec()) {
                Ok(t) => t,
                Err(_) => {
                    log::warn!("gateway sent a binary frame that is not UTF-8; dropped");
                    continue;
                }
            },
            Some(Ok(WsMessage::Close(frame))) => {
                break match frame {
                    Some(f) if f.reason.is_empty() => {
                        format!("gateway closed the connection ({})", f.code)
                    }
                    Some(f) => format!("gateway closed the connection ({} {})", f.code, f.reason),
                    None => "gateway closed the connection".into(),
                }
            }
            Some(Ok(_)) => continue,
        };
        if !state.borrow().is_alive(gen) {
            // This link was given up on and its requests answered: nothing more from it
            // may reach the host (a late response would answer an id twice).
            break "link abandoned".to_string();
        }
        if text.len() > max {
            match on_oversized(&state, &out, max, &text).await {
                Some(reason) => break reason,
                None => continue,
            }
        }
        // Nearly all that comes back answers a request of the host's and goes on as
        // its text: only its id and outcome are read (`Brief`), not the maps of its
        // result (callgrind: docs/benchmark.md, "Changes made"). Anything else is
        // parsed whole: what the gateway asks or tells the host, the answer to a
        // request of the router's own or to the host's `initialize` (the replay keeps
        // its capabilities), and a text with a line break (written anew).
        let brief = match Brief::parse(text.as_bytes()) {
            Ok(b) => b,
            Err(rej) => {
                log::warn!("gateway sent an invalid message: {}", rej.error.message);
                continue;
            }
        };
        if let (Kind::Response, Some(id)) = (brief.kind(), brief.id()) {
            let spans = {
                let mut st = state.borrow_mut();
                let plain = st.pending.contains_key(id)
                    && !st.replay.wants_response(id)
                    && jsonrpc::is_one_line(text.as_bytes());
                plain.then(|| st.answered(id))
            };
            if let Some(spans) = spans {
                let size = [("message.size", AttrValue::Int(text.len() as i64))];
                send_out(&out, text).await;
                if let Some(spans) = spans {
                    let written = Moment::new();
                    spans
                        .request
                        .event_at("websocket.message.received", &size, &written);
                    telemetry::record_response(&spans.request, &brief);
                    telemetry::record_response(&spans.stdio, &brief);
                    spans
                        .stdio
                        .event_at("stdio.message.written", &size, &written);
                    spans.end_at(&written);
                }
                continue;
            }
        }
        match Message::parse(text.as_bytes()) {
            Ok(mut m) => {
                let changed = match m.kind() {
                    Kind::Request => {
                        if !ask_host(&state, gen, &mut m).await {
                            continue;
                        }
                        true
                    }
                    Kind::Notification if m.method() == Some("notifications/cancelled") => {
                        if !cancel_asked(&state, gen, &mut m) {
                            continue;
                        }
                        true
                    }
                    _ => false,
                };
                let spans = match (m.kind(), m.id()) {
                    (Kind::Response, Some(id)) => {
                        let mut st = state.borrow_mut();
                        if !st.pending.contains_key(&id) {
                            // Not the host's: the answer to a request of the router's
                            // own (replay), which never reaches the host.
                            if let Some((ids, tx)) = &mut st.awaited {
                                if let Some(i) = ids.iter().position(|w| *w == id) {
                                    ids.swap_remove(i);
                                    let _ = tx.try_send(m);
                                    continue;
                                }
                            }
                            if replay::is_own_id(&id) {
                                continue;
                            }
                            // No request of the host's waits for it: one the host
                            // cancelled (MCP lets the gateway answer it anyway), one
                            // answered already, or an id the host never sent. Each
                            // host request gets one answer, so this one goes no
                            // further.
                            log::debug!("dropped the gateway's response to {id}: no request of the host's is waiting for it (cancelled, answered already, or never sent)");
                            continue;
                        }
                        st.replay.observe_response(&m);
                        st.answered(&id)
                    }
                    _ => None,
                };
                let size = text.len() as i64;
                // Relay the text as received, unless a line break in it (whitespace
                // between tokens, valid JSON) would split it on stdout.
                let line = if !changed && jsonrpc::is_one_line(text.as_bytes()) {
                    text
                } else {
                    m.to_json()
                };
                send_out(&out, line).await;
                if let Some(spans) = spans {
                    let size = [("message.size", AttrValue::Int(size))];
                    let written = Moment::new();
                    spans
                        .request
                        .event_at("websocket.message.received", &size, &written);
                    telemetry::record_response(&spans.request, &m);
                    telemetry::record_response(&spans.stdio, &m);
                    spans
                        .stdio
                        .event_at("stdio.message.written", &size, &written);
                    spans.end_at(&written);
                }
            }
            Err(rej) => log::warn!("gateway sent an invalid message: {}", rej.error.message),
        }
    };
    link_down(&state, &out, gen, reason).await;
}

/// Queue → gateway. A send during which the gateway's socket takes no byte for
/// `send_timeout` (a gateway that stopped reading) ends the link like a failed send; a
/// large message over a slow link that keeps moving is not cut off (`meter`). Frames
/// already queued behind the one taken go out in the same write
/// ([`mcp_shared::framing::WS_WRITE_BATCH_BYTES`]).
async fn write_ws(
    mut sink: link::Sender,
    rx: queue::Rx<WsCmd>,
    (meter, send_timeout): (Rc<Meter>, Duration),
    gen: u64,
    state: Shared,
    out: StdoutTx,
) {
    while let Some(cmd) = rx.recv().await {
        // The frame taken and every one queued behind it, up to a close, then one flush.
        let mut closing = false;
        let batch = async {
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                match cmd {
                    WsCmd::Text(t) => sink.feed(WsMessage::text(t)).await?,
                    WsCmd::Ping => sink.feed(WsMessage::Ping(Default::default())).await?,
                    WsCmd::Close => {
                        closing = true;
                        break;
                    }
                }
                next = rx.try_recv();
            }
            sink.flush().await
        };
        let result = within_progress(&meter, send_timeout, batch).await;
        let reason = match result {
            Some(Ok(())) if closing => {
                let _ = within_progress(&meter, send_timeout, sink.close(None)).await;
                return;
            }
            Some(Ok(())) => continue,
            Some(Err(e)) => format!("send failed: {e}"),
            None => format!(
                "the gateway took no bytes for {} ms (send_timeout)",
                send_timeout.as_millis()
            ),
        };
        link_down(&state, &out, gen, reason).await;
        return;
    }
}

/// Probes a silent link: after `interval` without a byte from the gateway (`meter`: a
/// large message arriving slowly is not silence), a ping; after as long again still
/// without one, the link is lost (pending requests answered
/// with an error). A gateway answers pings by itself (WebSocket pong) even while every
/// request is busy, so only a dead peer or path stays silent. Ends with the link.
async fn keepalive(
    state: Shared,
    out: StdoutTx,
    (link, lost): (WsTx, async_channel::Receiver<()>),
    gen: u64,
    (meter, interval): (Rc<Meter>, Duration),
) {
    let mut seen = meter.read();
    let mut pinged = false;
    loop {
        // Ended as soon as the link is lost, not at the next tick: its hold on the link's
        // queue keeps the writer task, and with it the socket, alive (a gateway that
        // dropped every connection at once left the router hundreds of dead sockets).
        let tick = futures_lite::future::or(
            async {
                async_io::Timer::after(interval).await;
                true
            },
            async {
                let _ = lost.recv().await;
                false
            },
        );
        if !tick.await || !state.borrow().is_alive(gen) {
            return;
        }
        let received = meter.read();
        // Not silence: a full stdout queue stops our reader, not the gateway; a message
        // being sent or still queued for the gateway means the writer is busy (and a
        // ping would wait behind it), which `send_timeout` watches.
        if received != seen || meter.sending() || out.is_full() || !link.is_empty() {
            (seen, pinged) = (received, false);
        } else if pinged {
            let reason = format!(
                "no byte from the gateway for {} ms after a ping (ping_interval)",
                interval.as_millis()
            );
            link_down(&state, &out, gen, reason).await;
            return;
        } else {
            log::debug!("link silent for {} ms; ping sent", interval.as_millis());
            pinged = link.try_send_light(WsCmd::Ping).is_ok();
        }
    }
}

/// Marks link `gen` lost and answers every pending request with an error. The first
/// report of a link's loss counts (the reason later requests are told); later ones, and
/// reports about an older link, do nothing.
async fn link_down(state: &Shared, out: &StdoutTx, gen: u64, reason: String) {
    let (pending, reason, asked) = {
        let mut st = state.borrow_mut();
        if !st.is_alive(gen) {
            return;
        }
        // Once the router closes the link itself, however the link then ends (the
        // gateway may drop it without a close frame), what is unanswered is so because
        // of the end.
        let reason = if st.ending {
            st.shutdown_reason().to_string()
        } else {
            reason
        };
        st.live = false;
        st.session_id = None;
        st.link = None;
        // Wakes the link manager, and a replay waiting for an answer.
        st.lost = None;
        st.awaited = None;
        st.replaying = None;
        // Both halves share the socket: shut it so that the reader ends and the gateway
        // sees the connection go (its session and backends then end).
        if let Some(socket) = st.socket.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        st.down = Some(RelayError::Disconnected {
            reason: reason.clone(),
        });
        st.drained = None;
        let asked = st.asked.0.remove_where(|a| a.gen == gen);
        // What the spans of what is left unanswered record.
        let (why, error_type) = if st.ending || st.closing {
            (ASKED_SHUTDOWN_REASON, "shutdown")
        } else {
            (ASKED_LOST_REASON, "gateway_unavailable")
        };
        (
            st.pending.drain().collect::<Vec<_>>(),
            reason,
            (asked, why, error_type),
        )
    };
    if !state.borrow().closing {
        log::error!("gateway link lost: {reason}");
    }
    let (asked, why, error_type) = asked;
    if state.borrow().host_gone {
        // The host closed stdin, then stopped the router: nobody waits for these.
        for (_, a) in &asked {
            telemetry::fail(&a.span, error_type, why);
        }
        let left = pending.len();
        for (_, spans) in pending {
            telemetry::fail(&spans.request, error_type, SIGNAL_REASON);
            telemetry::fail(&spans.stdio, error_type, SIGNAL_REASON);
            spans.end();
        }
        if left > 0 {
            log::info!(
                "{left} request(s) left unanswered: {}",
                if state.borrow().stdout_broken {
                    "the host closed stdout"
                } else {
                    "the host closed stdin, then sent SIGTERM"
                }
            );
        }
        return;
    }
    // What the gateway asked the host can no longer be answered: the host may stop.
    for (id, a) in asked {
        telemetry::fail(&a.span, error_type, why);
        drop(a);
        let params = serde_json::json!({"requestId": id, "reason": why});
        let cancel = Message::notification("notifications/cancelled", Some(params));
        send_out(out, cancel.to_json()).await;
    }
    let err = RelayError::Disconnected { reason }.to_rpc_error();
    {
        let mut st = state.borrow_mut();
        for (id, _) in &pending {
            st.replay.request_failed(id);
        }
    }
    for (id, spans) in pending {
        telemetry::fail(&spans.request, error_type, &err.message);
        telemetry::fail(&spans.stdio, error_type, &err.message);
        spans.end();
        send_out(
            out,
            Message::error_response(Some(id), err.clone()).to_json(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_the_authority_whatever_follows_it() {
        for url in [
            "ws://h:8443/mcp",
            "ws://h:8443?x=1",
            "ws://h:8443#f",
            "ws://h:8443",
        ] {
            assert_eq!(server_of(url), ("h".to_string(), 8443), "{url}");
        }
        assert_eq!(server_of("ws://h/mcp"), ("h".to_string(), 80));
        assert_eq!(server_of("ws://[::1]/mcp"), ("::1".to_string(), 80));
        assert_eq!(server_of("ws://[::1]:9/mcp"), ("::1".to_string(), 9));
    }
}
