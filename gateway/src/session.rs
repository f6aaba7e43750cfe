//! One client session: the gateway as the MCP server its client sees.
//!
//! A session answers `initialize` and `ping` itself, merges listings from its backends,
//! routes each other request to one backend (by tool/prompt prefix, resource URI or
//! completion ref), relays server-to-client requests with id remapping, and maps
//! cancellations to the backend's ids. Each client request runs in its own task, bounded
//! by `max_in_flight`; every request gets exactly one response unless the client
//! cancelled it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};

use async_channel::Sender;
use mcp_shared::error::{BackendError, RouteError, RpcError, SessionError, ToRpcError};
use mcp_shared::idmap::IdMap;
use mcp_shared::jsonrpc::{self, Answer, Id, Kind, Message, Rejection, Reply, Sniffed};
use mcp_shared::mcp::{self, Handling, ListKind};
use mcp_shared::routing::{route_prompt, route_tool, ResourceRoutes};
use mcp_shared::telemetry::{self, attrs, propagation, Cx, Moment};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde_json::{json, Value};

use crate::backend::{Caller, Proc, ReadAs, Slot, Warned};
use crate::metrics::{error_type_for_code, Outcome, CANCELLED};
use crate::oneshot;
use crate::outbox;
use crate::rt;
use crate::Gateway;

/// Pages followed per backend when merging a listing, at most.
pub const MAX_LIST_PAGES: usize = 100;

/// Resource URIs one session may be subscribed to at once: each is remembered (to
/// filter a shared backend's updates and to subscribe again after a backend restart),
/// so the client's count is bounded. A subscribe beyond it is answered -32003.
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 1024;

/// One resource subscription of a session, from its first subscribe until its
/// unsubscribe (or the session's end). It counts as held while a subscribe is in flight
/// (the backend may have taken it) and once one was accepted; it goes when every
/// subscribe of it was refused. `epoch` tells a late answer from a subscribe made
/// before an unsubscribe (it then changes nothing).
struct Sub {
    /// The backend that serves the URI (set again there if it restarts:
    /// `Slot::restore`).
    backend: String,
    epoch: u64,
    /// Subscribes sent and not yet answered (one cancelled stays counted).
    in_flight: u32,
    /// A subscribe of it was accepted.
    accepted: bool,
}

/// The order of a session's subscribes and unsubscribes. Each takes a ticket when it
/// arrives ([`Session::take_turn`]) and does its work when its turn comes; it passes
/// the turn on as soon as its line is queued at the backend, or when it ends however
/// it ends (answered, refused, cancelled). So a session's (un)subscribes reach the
/// backends in the order the client sent them even when one must first learn the
/// URI's route (`route_uri` may list the backends), and a slow backend holds up the
/// next one only until it has taken the line.
#[derive(Default)]
struct Turns {
    next: u64,
    /// The ticket whose turn it is.
    serving: u64,
    /// Tickets done while an earlier one still had the turn.
    done: std::collections::BTreeSet<u64>,
    /// How each waiting ticket is told that its turn has come.
    waiting: HashMap<u64, oneshot::Sender<()>>,
}

impl Turns {
    /// A new ticket, and what resolves when its turn comes (`None`: it has it now).
    fn take(&mut self) -> (u64, Option<oneshot::Receiver<()>>) {
        let ticket = self.next;
        self.next += 1;
        let ready = (ticket != self.serving).then(|| {
            let (tx, rx) = oneshot::channel();
            self.waiting.insert(ticket, tx);
            rx
        });
        (ticket, ready)
    }

    /// `ticket` is done: the turn goes to the first ticket not done, which is told.
    fn pass(&mut self, ticket: u64) {
        self.done.insert(ticket);
        self.waiting.remove(&ticket);
        while self.done.remove(&self.serving) {
            self.serving += 1;
        }
        if let Some(tx) = self.waiting.remove(&self.serving) {
            let _ = tx.send(());
        }
    }
}

/// A ticket in a session's [`Turns`]; passes the turn on when dropped.
struct Turn {
    session: Weak<Session>,
    ticket: u64,
    passed: Cell<bool>,
    /// Resolves when the turn comes (`None`: it had it from the start).
    ready: RefCell<Option<oneshot::Receiver<()>>>,
}

impl Turn {
    /// Waits for the turn.
    async fn wait(&self) {
        let ready = self.ready.borrow_mut().take();
        if let Some(rx) = ready {
            let _ = rx.await;
        }
    }

    /// Passes the turn on (once).
    fn pass(&self) {
        if !self.passed.replace(true) {
            if let Some(s) = self.session.upgrade() {
                s.pass_turn(self.ticket);
            }
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.pass();
    }
}

/// Where a forwarded request went, so a cancellation can follow it.
#[derive(Default)]
struct Target {
    proc: RefCell<Option<Weak<Proc>>>,
    id: Cell<Option<u64>>,
    /// The request has its answer (waiting for room in the outbox, perhaps): a
    /// cancellation no longer frees its place in `max_in_flight`, nor goes to the
    /// backend.
    answered: Cell<bool>,
}

struct InFlight {
    /// Given `None` for the client's cancellation, else why the session closed.
    cancel: oneshot::Sender<Option<Closing>>,
    target: Rc<Target>,
    /// An `initialize`, which MCP forbids a client to cancel: a cancellation of it is
    /// ignored (the requests pipelined behind it wait for it, and would wait for ever).
    initialize: bool,
}

/// Why a session closes: what its requests still in flight record on their spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The client closed the connection, or it failed.
    ClientGone,
    /// The gateway is shutting down.
    Shutdown,
}

impl Closing {
    /// `error.type` of an unanswered request's spans.
    fn error_type(self) -> &'static str {
        match self {
            Closing::ClientGone => "client_disconnected",
            Closing::Shutdown => "gateway_shutdown",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Closing::ClientGone => "the client disconnected before the answer",
            // What the client is told (`SessionError::ShuttingDown`).
            Closing::Shutdown => "the gateway is shutting down",
        }
    }
}

/// A server-to-client request relayed to this session's client.
struct ServerReq {
    proc: Weak<Proc>,
    backend_id: Id,
    /// Its `_meta.progressToken` as the backend wrote it: the client's progress on it
    /// goes to that process only, under this token. The client is given
    /// [`server_progress_token`] instead, unique among the session's requests (two
    /// backends may choose the same token).
    progress_token: Option<Value>,
    /// Counted as open at the process while the entry lives: its requests wait for it.
    _asking: crate::backend::Asking,
    /// Its `client.forward` span, ended with the entry (with the client's answer, or
    /// failed before by whatever voided the request).
    span: Cx,
    /// Gives up on the client's answer at the process's `client_answer_limit`
    /// (cancelled with the entry).
    expiry: Option<smol::Task<()>>,
}

impl Drop for ServerReq {
    fn drop(&mut self) {
        self.span.end();
    }
}

/// One client connection.
pub struct Session {
    id: u64,
    gw: Rc<Gateway>,
    out: outbox::Sender,
    backends: Vec<Rc<Slot>>,
    initialized: Cell<bool>,
    /// Set while `initialize` runs; closed when it is done, releasing requests that
    /// were pipelined behind it.
    init_gate: RefCell<Option<async_channel::Receiver<()>>>,
    init_done: RefCell<Option<Sender<()>>>,
    client_caps: RefCell<Value>,
    version: Cell<&'static str>,
    routes: RefCell<ResourceRoutes>,
    in_flight: RefCell<HashMap<Id, InFlight>>,
    server_reqs: RefCell<IdMap<ServerReq>>,
    /// Resource URIs the client subscribed to (see [`Sub`]).
    subscriptions: RefCell<HashMap<String, Sub>>,
    /// Numbers the entries of `subscriptions`.
    subscribes: Cell<u64>,
    /// The order of the session's subscribes and unsubscribes ([`Turn`]); made at the
    /// first one (it is per-session memory).
    turns: RefCell<Option<Box<Turns>>>,
    /// Trace context from the WebSocket handshake: the parent of requests that carry
    /// none in `_meta`.
    handshake_cx: Cx,
    /// Connection attributes added to the session's first `http.request` span.
    conn_attrs: Vec<KeyValue>,
    conn_attrs_sent: Cell<bool>,
    /// The log level the client set (`logging/setLevel`, a rank of
    /// `mcp::LOG_LEVELS`): log messages below it are not delivered (a shared backend
    /// logs at the most verbose level one of its sessions set).
    log_level: Cell<Option<usize>>,
    /// When the last "outbound queue full" warning was logged, and how many drops since
    /// went without one ([`Session::deliver`]).
    drops: Rc<mcp_shared::logger::Throttle>,
    /// The same for "bad message" warnings about what the client sends
    /// ([`Session::on_rejected`]).
    rejects: Rc<mcp_shared::logger::Throttle>,
}

/// How often one session's "outbound queue full; dropped a message" may reach the log:
/// a client that stops reading while a backend floods notifications would otherwise
/// make a line per message (a review counted 39,638 lines in one run, and the logger
/// then dropped real ones).
pub const DROP_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`Session::tally_later`] counts of the "outbound queue full" warnings.
const DROPS: &str = "message(s) dropped (the client's queue was full)";
/// What it counts of the "bad message" warnings.
const REJECTS: &str = "bad message(s) from the client";

/// Longest string id a request may have (the sniffer reads ids as long,
/// `jsonrpc::MAX_SNIFFED_ID_BYTES`): every answer repeats the id, so without a bound a
/// client could make each answer, the -32003 that replaces one its queue has no room
/// for included, as long as a message (`outbox::WAITING_BYTES`).
pub const MAX_ID_BYTES: usize = mcp_shared::jsonrpc::MAX_SNIFFED_ID_BYTES;

/// How often one session's "bad message" warning may reach the log: a client sending
/// junk without pause made 150,000–240,000 lines a second in a review (each one
/// answered all the same), and the logger then dropped other sessions' lines.
pub const REJECT_WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl Session {
    /// A new session `id` (from [`Gateway::next_session_id`], given to the client in
    /// the handshake) whose messages to the client go to `out`.
    pub fn new(
        gw: Rc<Gateway>,
        out: outbox::Sender,
        id: u64,
        handshake_cx: Cx,
        conn_attrs: Vec<KeyValue>,
    ) -> Rc<Session> {
        let backends = gw.slots_for_session();
        let max = gw.cfg.limits.max_in_flight;
        let s = Rc::new(Session {
            id,
            gw,
            out,
            backends,
            initialized: Cell::new(false),
            init_gate: RefCell::new(None),
            init_done: RefCell::new(None),
            client_caps: RefCell::new(json!({})),
            version: Cell::new(mcp::LATEST_VERSION),
            routes: RefCell::new(ResourceRoutes::default()),
            in_flight: RefCell::new(HashMap::new()),
            server_reqs: RefCell::new(IdMap::new(max)),
            subscriptions: RefCell::new(HashMap::new()),
            subscribes: Cell::new(0),
            turns: RefCell::new(None),
            handshake_cx,
            conn_attrs,
            conn_attrs_sent: Cell::new(false),
            log_level: Cell::new(None),
            drops: Default::default(),
            rejects: Default::default(),
        });
        for b in &s.backends {
            b.attach(&s);
        }
        s
    }

    /// The session's id (unique in this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The session's id as the client and traces see it (see [`crate::SessionLabel`]).
    pub fn label(&self) -> crate::SessionLabel {
        self.gw.session_label(self.id)
    }

    /// [`rt::tally_later`] for one of this session's warnings.
    fn tally_later(
        &self,
        throttle: &Rc<mcp_shared::logger::Throttle>,
        every: std::time::Duration,
        what: &'static str,
    ) {
        let id = self.id;
        rt::tally_later(throttle, every, move |n| {
            log::warn!("session {id}: {n} more {what} since the last warning")
        });
    }

    /// Queues a line for the client. With `wait`, waits for room; otherwise drops the
    /// line when the queue is full (used for fan-out from shared backends, so one slow
    /// client cannot stall the others). Returns false when the line was not queued.
    pub async fn deliver(&self, line: String, wait: bool) -> bool {
        if wait {
            return self.out.send(line).await.is_ok();
        }
        match self.out.try_send(line) {
            Ok(()) => true,
            Err(e) => {
                if e.is_full() {
                    let now = std::time::Instant::now();
                    match self.drops.pass(now, DROP_WARN_INTERVAL) {
                        None => self.tally_later(&self.drops, DROP_WARN_INTERVAL, DROPS),
                        Some(0) => log::warn!(
                            "session {}: outbound queue full; dropped a message",
                            self.id
                        ),
                        Some(n) => log::warn!(
                            "session {}: outbound queue full; dropped a message ({n} more dropped since the last warning)",
                            self.id
                        ),
                    }
                }
                false
            }
        }
    }

    /// Queues an answer for the client, waiting for room, unless answers the client has
    /// not made room for already hold `outbox::WAITING_BYTES`: it then gets a short
    /// error under the same id instead (-32003), so that a client that does not read
    /// holds that much of the gateway's memory, not `max_in_flight` whole answers.
    /// Returns the error sent in its place, if it was replaced.
    async fn reply(&self, reply: impl Into<Reply>) -> Option<RpcError> {
        let reply = reply.into();
        let id = reply.id();
        match self.out.send_bounded(reply.into_text()).await {
            Ok(()) | Err(outbox::Refused::Closed) => None,
            Err(outbox::Refused::Backlog(line)) => {
                let err = SessionError::ClientBacklog(line.len()).to_rpc_error();
                drop(line);
                match self
                    .drops
                    .pass(std::time::Instant::now(), DROP_WARN_INTERVAL)
                {
                    None => self.tally_later(&self.drops, DROP_WARN_INTERVAL, DROPS),
                    Some(0) => log::warn!("session {}: {}", self.id, err.message),
                    Some(n) => log::warn!(
                        "session {}: {} ({n} more dropped since the last warning)",
                        self.id,
                        err.message
                    ),
                }
                self.deliver(Message::error_response(id, err.clone()).to_text(), true)
                    .await;
                Some(err)
            }
        }
    }

    /// True when the client subscribed to `uri`.
    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions.borrow().contains_key(uri)
    }

    /// The URIs the client subscribed to on `backend` with a subscribe that was
    /// accepted there (not only in flight).
    pub fn accepted_subscriptions_to(&self, backend: &str) -> Vec<String> {
        self.subscriptions
            .borrow()
            .iter()
            .filter(|(_, sub)| sub.backend == backend && sub.accepted)
            .map(|(uri, _)| uri.clone())
            .collect()
    }

    /// True when the client holds a subscription to exactly `uri` on `backend`.
    pub fn is_subscribed_on(&self, uri: &str, backend: &str) -> bool {
        self.subscriptions
            .borrow()
            .get(uri)
            .is_some_and(|sub| sub.backend == backend)
    }

    /// Whether `notifications/resources/updated` for `uri` from `backend` is for this
    /// client: it holds, on that backend, `uri` or a URI that `uri` lies under (MCP:
    /// the update's URI "might be a sub-resource of the one that the client actually
    /// subscribed to"), the held URI ending at a `/` of `uri`.
    pub fn wants_update(&self, uri: &str, backend: &str) -> bool {
        let subs = self.subscriptions.borrow();
        for_uri_or_parent(uri, |held| {
            subs.get(held).is_some_and(|sub| sub.backend == backend)
        })
    }

    /// The URIs the client subscribed to on `backend`.
    pub fn subscriptions_to(&self, backend: &str) -> Vec<String> {
        self.subscriptions
            .borrow()
            .iter()
            .filter(|(_, sub)| sub.backend == backend)
            .map(|(uri, _)| uri.clone())
            .collect()
    }

    /// Handles one message from the client.
    pub async fn on_client_message(self: &Rc<Self>, text: &[u8]) {
        // Kept, so that what is forwarded is the client's text with the gateway's few
        // changes written over it (`Message::to_text`), not a re-serialisation. The
        // requests routed by their `name` or `uri` alone (the bulk of the traffic)
        // stay lean: their other params, a tool call's arguments above all, are checked
        // but never built. Everything else reads more of its params: parsed whole.
        let msg = match Message::parse_relayed(text.to_vec()) {
            Ok(m) => match (m.kind(), m.method()) {
                (Kind::Request, Some("tools/call" | "prompts/get" | "resources/read")) => m,
                _ => m.into_whole(),
            },
            Err(rej) => return self.on_rejected(rej).await,
        };
        match msg.kind() {
            Kind::Request => self.start_request(msg).await,
            Kind::Notification => self.on_client_notification(msg).await,
            Kind::Response => self.on_client_response(msg).await,
        }
    }

    /// A message of the client's that could not be taken. A request is answered with
    /// the error. A response (to a request a backend sent the client) is not: the
    /// backend gets an error response for its request instead, at once rather than at
    /// its timeout. Anything else is only logged.
    pub async fn on_rejected(self: &Rc<Self>, rej: Rejection) {
        let now = std::time::Instant::now();
        match self.rejects.pass(now, REJECT_WARN_INTERVAL) {
            None => {
                log::debug!("session {}: bad message: {}", self.id, rej.error.message);
                self.tally_later(&self.rejects, REJECT_WARN_INTERVAL, REJECTS);
            }
            Some(0) => log::warn!("session {}: bad message: {}", self.id, rej.error.message),
            Some(n) => log::warn!(
                "session {}: bad message: {} ({n} more since the last warning)",
                self.id,
                rej.error.message
            ),
        }
        // `{"id": N}` alone, N the id of a backend's request to this client: its
        // answer, broken (not a request without its method).
        let broken_answer = rej.no_outcome
            && rej
                .id
                .as_ref()
                .is_some_and(|id| self.server_reqs.borrow().is_live(id));
        let answered = if broken_answer {
            rej.id.as_ref()
        } else {
            rej.answered_id()
        };
        if rej.reply && !broken_answer {
            self.rejected_span(&rej);
            // Requests too, refused before their method could be read: each answer (one
            // per request of a batch) is counted.
            let error_type = error_type_for_code(rej.error.code);
            for _ in 0..rej.batch.as_ref().map_or(1, Vec::len) {
                self.gw.metrics.request_unread(error_type);
            }
            self.deliver(rej.reply_text(), true).await;
        } else if let Some(id) = answered {
            let err = SessionError::UnreadableResponse(rej.error.message.clone()).to_rpc_error();
            self.on_client_response(Message::error_response(Some(id.clone()), err))
                .await;
        } else {
            self.rejected_span(&rej);
        }
    }

    /// The `http.request` span of a message refused before it could be read as a
    /// request (not JSON-RPC, too large): failed with the error, under the handshake's
    /// context (the message's own `_meta` could not be read).
    fn rejected_span(&self, rej: &Rejection) {
        let tel = &self.gw.tel;
        if !tel.enabled() {
            return;
        }
        let at = Moment::new();
        let cx = tel.start_at(
            "http.request",
            SpanKind::Server,
            &self.handshake_cx,
            &at,
            |a| {
                if let Some(id) = &rej.id {
                    attrs::request_id(a, id);
                }
                a.str("mcp.session.id", self.label().as_str());
            },
        );
        let code = rej.error.code.to_string();
        cx.set_attributes(|a| a.str("rpc.response.status_code", &code));
        telemetry::fail(&cx, &code, &rej.error.message);
        cx.end_at(&at);
    }

    /// Handles a message that was too large to read, as far as it could be read
    /// (nothing, when tungstenite refused it).
    pub async fn reject_too_large(self: &Rc<Self>, seen: Sniffed) {
        let limit = self.gw.cfg.limits.max_message_bytes;
        let err = SessionError::TooLarge { limit }.to_rpc_error();
        self.on_rejected(Rejection::sniffed(seen, err.code, err.message))
            .await;
    }

    /// Starts the `http.request` span of a client request at `at`, with its
    /// `auth.verify` child (the token was checked at the handshake: this records the
    /// outcome, and takes no time of its own).
    fn request_span(&self, msg: &Message, at: &Moment) -> Cx {
        let tel = &self.gw.tel;
        if !tel.enabled() {
            return Cx::default();
        }
        let from_meta = propagation::extract_message(msg);
        let parent = if propagation::has_span(&from_meta) {
            from_meta
        } else {
            self.handshake_cx.clone()
        };
        let cx = tel.start_at("http.request", SpanKind::Server, &parent, at, |a| {
            attrs::mcp_message(a, msg);
            a.str("mcp.session.id", self.label().as_str());
            // An `initialize` sets the session's version: the one it will agree on.
            let version = match msg.method() {
                Some("initialize") => mcp::negotiate_version(msg.param_str("protocolVersion")),
                _ => self.version.get(),
            };
            a.str("mcp.protocol.version", version);
            // Connection attributes once per session, on its first request span (they
            // would otherwise double the size of every span).
            if !self.conn_attrs_sent.replace(true) {
                self.conn_attrs.iter().for_each(|kv| a.key_value(kv));
            } else if let Some(ip) = self
                .conn_attrs
                .iter()
                .find(|kv| kv.key.as_str() == "client.address")
            {
                a.str("client.address", &ip.value.as_str());
            }
        });
        let auth = tel.step_at("auth.verify", &cx, at, |a| {
            let kind = if self.gw.token.borrow().is_some() {
                "bearer"
            } else {
                "none"
            };
            attrs::authentication(a, kind, true, None)
        });
        auth.end_at(at);
        cx
    }

    async fn start_request(self: &Rc<Self>, msg: Message) {
        let id = msg.id().expect("requests have ids");
        // The request's steps follow each other with nothing between them: each step
        // starts at the moment the one before ended, one clock reading per step
        // (docs/tracing.md, "Clock readings").
        let arrived = Moment::new();
        let cx = self.request_span(&msg, &arrived);
        let tel = &self.gw.tel;
        let limit = self.gw.cfg.limits.max_in_flight;
        let validate = tel.step_at("request.validate", &cx, &arrived, |_| {});
        let id_too_long = match &id {
            Id::String(s) => s.len() > MAX_ID_BYTES,
            Id::Number(_) => false,
        };
        let duplicate = !id_too_long && self.in_flight.borrow().contains_key(&id);
        if id_too_long {
            let err = SessionError::IdTooLong(MAX_ID_BYTES).to_rpc_error();
            validate.fail("invalid_request", &err.message);
        } else if duplicate {
            let err = SessionError::DuplicateId.to_rpc_error();
            validate.fail("duplicate_id", &err.message);
        }
        let validated = Moment::new();
        validate.end_at(&validated);
        let in_flight = self.in_flight.borrow().len();
        let limited = !duplicate && !id_too_long && in_flight >= limit;
        let rl = tel.step_at("rate_limit.check", &cx, &validated, |a| {
            attrs::rate_limit(
                a,
                limited,
                limit as i64,
                limit.saturating_sub(in_flight) as i64,
                0,
            )
        });
        if limited {
            rl.fail("overloaded", "too many requests in flight");
        }
        rl.end();
        let refused = if id_too_long {
            Some(SessionError::IdTooLong(MAX_ID_BYTES))
        } else if duplicate {
            Some(SessionError::DuplicateId)
        } else if limited {
            Some(SessionError::TooManyInFlight(limit))
        } else {
            None
        };
        if let Some(e) = refused {
            let method = msg.method().unwrap_or_default();
            log::debug!("session {}: {method} {id} refused: {e}", self.id);
            let err = e.to_rpc_error();
            // The code the client gets, as for every error answer (the step's span
            // names the cause).
            let error_type = error_type_for_code(err.code);
            let resp = Message::error_response(Some(id), err);
            self.gw.metrics.request_refused(method, error_type);
            telemetry::record_response(&cx, &resp);
            cx.end();
            self.reply(resp).await;
            return;
        }
        let turn = matches!(
            msg.method(),
            Some("resources/subscribe" | "resources/unsubscribe")
        )
        .then(|| self.take_turn());
        let (cancel_tx, cancel_rx) = oneshot::channel::<Option<Closing>>();
        let target = Rc::new(Target::default());
        self.in_flight.borrow_mut().insert(
            id.clone(),
            InFlight {
                cancel: cancel_tx,
                target: target.clone(),
                initialize: msg.method() == Some("initialize"),
            },
        );
        let me = self.clone();
        let log_ids = mcp_shared::logger::span_ids(&cx);
        rt::spawn(mcp_shared::logger::with_ids(log_ids, async move {
            let method = msg.method().unwrap_or_default().to_string();
            let started = std::time::Instant::now();
            let _in_flight = me.gw.metrics.in_flight();
            let work = async { Ok(me.handle_request(msg, &target, &cx, turn).await) };
            let cancelled = async { Err(cancel_rx.await.ok().flatten()) };
            // Cancellation first: when the client's cancel (or its session's end) and the
            // answer are both ready, the client has said it no longer wants the answer
            // (MCP: the receiver should not answer a cancelled request). `or` polls its
            // first future first.
            let outcome = futures_lite::future::or(cancelled, work).await;
            match outcome {
                Ok(resp) => {
                    target.answered.set(true);
                    telemetry::record_response(&cx, &resp);
                    let (mut outcome, mut error_type) = outcome_of(&resp);
                    let took = started.elapsed();
                    match resp.error() {
                        Some(e) => log::warn!(
                            "session {}: {method} {id} failed in {} µs: {}",
                            me.id,
                            started.elapsed().as_micros(),
                            e.get("message").and_then(Value::as_str).unwrap_or("error")
                        ),
                        None => log::debug!(
                            "session {}: {method} {id} answered in {} µs",
                            me.id,
                            started.elapsed().as_micros()
                        ),
                    }
                    if let Some(e) = me.reply(resp).await {
                        // The client got this instead of the answer: what it saw is what
                        // the span and the metrics record.
                        let code = e.code.to_string();
                        cx.set_attributes(|a| a.str("rpc.response.status_code", &code));
                        telemetry::fail(&cx, "client_backlog", &e.message);
                        (outcome, error_type) = (Outcome::Error, Some(error_type_for_code(e.code)));
                    }
                    me.gw
                        .metrics
                        .request_finished(&method, outcome, error_type, took);
                    // Counted until its answer is queued: a client that does not read
                    // holds at most `max_in_flight` answers waiting for room in the
                    // outbox, not one per request it keeps sending. The entry is this
                    // request's unless a cancellation came meanwhile and the id was
                    // used again.
                    let mut in_flight = me.in_flight.borrow_mut();
                    if in_flight
                        .get(&id)
                        .is_some_and(|e| Rc::ptr_eq(&e.target, &target))
                    {
                        in_flight.remove(&id);
                    }
                }
                Err(closing) => {
                    // Until the request ended, not until its -32004 found room.
                    let took = started.elapsed();
                    cx.set_attributes(|a| a.bool("mcp.request.cancelled", true));
                    let error_type = match closing {
                        // MCP: a cancellation is not an error of the request's.
                        None => {
                            log::debug!("session {}: {method} {id} cancelled by the client", me.id);
                            CANCELLED
                        }
                        Some(why) => {
                            log::debug!("session {}: {method} {id}: {}", me.id, why.message());
                            telemetry::fail(&cx, why.error_type(), why.message());
                            // A client still there is answered: every request gets one
                            // answer (its close frame follows).
                            if why == Closing::Shutdown {
                                let e = SessionError::ShuttingDown.to_rpc_error();
                                let code = e.code.to_string();
                                cx.set_attributes(|a| a.str("rpc.response.status_code", &code));
                                let sent = e.code;
                                // What the client got: this, or what replaced it.
                                let got = me
                                    .reply(Message::error_response(Some(id), e))
                                    .await
                                    .map_or(sent, |instead| instead.code);
                                error_type_for_code(got)
                            } else {
                                why.error_type()
                            }
                        }
                    };
                    // Counted too: requests slow enough that clients give up are what
                    // the latency and error alerts are for.
                    me.gw
                        .metrics
                        .request_finished(&method, Outcome::Error, Some(error_type), took);
                }
            }
            cx.end();
        }))
        .detach();
    }

    async fn handle_request(
        self: &Rc<Self>,
        msg: Message,
        target: &Target,
        cx: &Cx,
        turn: Option<Turn>,
    ) -> Reply {
        let id = msg.id().expect("requests have ids");
        let method = msg.method().unwrap_or_default().to_string();
        let handling = mcp::handling(&method);
        if !matches!(handling, Handling::Initialize | Handling::Ping) && !self.initialized.get() {
            // A client may pipeline requests right behind `initialize`: let them wait.
            let gate = self.init_gate.borrow().clone();
            if let Some(g) = gate {
                let _ = g.recv().await;
            }
        }
        let respond = |v| Reply::from(Message::response(id.clone(), v));
        let result = match handling {
            Handling::Initialize => self.initialize(&msg, cx).await.map(respond),
            Handling::Ping => Ok(respond(json!({}))),
            _ if !self.initialized.get() => Err(RouteError::NotInitialized.to_rpc_error()),
            Handling::List(kind) => {
                if msg.params().and_then(|p| p.get("cursor")).is_some() {
                    Err(RouteError::MissingParam {
                        method: kind.method().into(),
                        param: "cursor",
                    }
                    .to_rpc_error()
                    .with_data(json!({
                        "reason": "the gateway returns complete listings; no cursor is valid"
                    })))
                } else {
                    self.list(kind, msg.meta_with_trace(), cx)
                        .await
                        .map(respond)
                }
            }
            Handling::ByToolName | Handling::ByPromptName => {
                self.forward_by_name(msg, handling, target, cx).await
            }
            Handling::ByUri => self.forward_by_uri(msg, target, cx, turn).await,
            Handling::ByCompletionRef => self.forward_completion(msg, target, cx).await,
            Handling::Broadcast => self.broadcast(&msg, cx).await.map(respond),
            Handling::Unknown => Err(RouteError::UnknownMethod(method).to_rpc_error()),
        };
        result.unwrap_or_else(|e| Message::error_response(Some(id.clone()), e).into())
    }

    async fn initialize(self: &Rc<Self>, msg: &Message, cx: &Cx) -> Result<Value, RpcError> {
        let params = msg.params().cloned().unwrap_or(json!({}));
        let version = mcp::negotiate_version(params.get("protocolVersion").and_then(Value::as_str));
        if !self.initialized.get() && self.init_gate.borrow().is_none() {
            let (tx, rx) = async_channel::bounded(1);
            *self.init_gate.borrow_mut() = Some(rx);
            *self.init_done.borrow_mut() = Some(tx);
        }
        *self.client_caps.borrow_mut() = params.get("capabilities").cloned().unwrap_or(json!({}));
        self.version.set(version);
        let starts: Vec<_> = self
            .backends
            .iter()
            .map(|slot| {
                let (me, slot, cx) = (self.clone(), slot.clone(), cx.clone());
                rt::spawn(async move { me.ensure(&slot, &cx).await })
            })
            .collect();
        let mut caps = Vec::new();
        let mut instructions = String::new();
        for (t, slot) in starts.into_iter().zip(&self.backends) {
            if let Ok(p) = t.await {
                caps.push(p.capabilities());
                if let Some(i) = p.instructions() {
                    // Each backend's under its name: its tools and prompts carry that
                    // prefix here.
                    if !instructions.is_empty() {
                        instructions.push_str("\n\n");
                    }
                    let prefix = self.gw.ns.prefix(slot.name(), "");
                    instructions.push_str(&format!(
                        "From backend {:?} (its tools and prompts are named {prefix}<name> here):\n{i}",
                        slot.name()
                    ));
                }
            }
        }
        self.initialized.set(true);
        if let Some(done) = self.init_done.borrow_mut().take() {
            done.close();
        }
        // Waiters hold their own clone; the session no longer needs the gate.
        self.init_gate.borrow_mut().take();
        let client = params
            .get("clientInfo")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        log::info!(
            "session {}: initialized by {client:?} (protocol {version}, {}/{} backends up)",
            self.id,
            caps.len(),
            self.backends.len()
        );
        let mut result = json!({
            "protocolVersion": version,
            "capabilities": mcp::merge_capabilities(caps.iter()),
            "serverInfo": { "name": "mcp-gateway", "version": mcp_shared::VERSION },
        });
        if !instructions.is_empty() {
            result["instructions"] = Value::String(instructions);
        }
        Ok(result)
    }

    /// The slot's process, started if needed (a `backend.connect` span under `cx`
    /// records a start).
    async fn ensure(&self, slot: &Rc<Slot>, cx: &Cx) -> Result<Rc<Proc>, RpcError> {
        // The usual case, a running process, without copying the client's capabilities
        // or carrying the start-up's state in every request's future.
        if let Some(p) = slot.running() {
            return Ok(p);
        }
        let caps = self.client_caps.borrow().clone();
        Box::pin(slot.ensure(&caps, self.version.get(), &self.gw.tel, cx))
            .await
            .map_err(|e| e.to_rpc_error())
    }

    /// What a backend process is started with for this client: its capabilities and
    /// protocol version (as sent in `initialize`), and the gateway's telemetry.
    pub fn start_params(&self) -> (Value, &'static str, mcp_shared::telemetry::Telemetry) {
        (
            self.client_caps.borrow().clone(),
            self.version.get(),
            self.gw.tel.clone(),
        )
    }

    fn slot(&self, name: &str) -> Option<&Rc<Slot>> {
        self.backends.iter().find(|s| s.name() == name)
    }

    /// A `discovery.resolve` span for a routing decision.
    fn resolve_span<T>(
        &self,
        cx: &Cx,
        what: &str,
        result: &Result<T, RpcError>,
        backend: Option<&str>,
    ) {
        let tel = &self.gw.tel;
        if !tel.enabled() {
            return;
        }
        // Recorded once the route is known: the decision, at one moment.
        let at = Moment::new();
        let step = tel.step_at("discovery.resolve", cx, &at, |a| {
            // A URI (resources) may hold a credential, as `mcp.resource.uri` may.
            a.str("gateway.route.key", &mcp_shared::config::redact_uri(what));
            if let Some(b) = backend {
                attrs::gateway_route(a, b, "stdio", None);
            }
        });
        if let Err(e) = result {
            step.fail("route_not_found", &e.message);
        }
        step.end_at(&at);
    }

    /// Starts a `backend.forward` client span under `cx` and puts its context in the
    /// message's `_meta`.
    fn forward_span(&self, slot: &Slot, msg: &mut Message, cx: &Cx) -> Cx {
        let tel = &self.gw.tel;
        if !tel.enabled() {
            return Cx::default();
        }
        // The request's id is the one the backend gets, known once it is sent
        // (`send_traced`), not the client's.
        let span = tel.start("backend.forward", SpanKind::Client, cx, |a| {
            attrs::mcp_message_without_id(a, msg);
            attrs::gateway_route(a, slot.name(), "stdio", None);
            a.str("network.transport", "pipe");
            a.str("mcp.session.id", self.label().as_str());
        });
        propagation::inject_message(&span, msg);
        span
    }

    /// Sends `msg` to the backend of `slot` and returns its response, with the client's
    /// id, to relay as it came ([`ReadAs::Brief`]).
    async fn forward(
        &self,
        slot: &Rc<Slot>,
        msg: Message,
        target: &Target,
        cx: &Cx,
    ) -> Result<Reply, RpcError> {
        let client_id = msg.id().expect("requests have ids");
        let proc = self.ensure(slot, cx).await?;
        *target.proc.borrow_mut() = Some(Rc::downgrade(&proc));
        let mut resp = self
            .send_traced(&proc, slot, msg, cx, Some(&target.id), ReadAs::Brief)
            .await?;
        resp.set_id(&client_id);
        Ok(resp)
    }

    /// Sends a request to `proc` under a `backend.forward` span (ended with the
    /// outcome) and waits for the response, read as `read` says.
    async fn send_traced(
        &self,
        proc: &Proc,
        slot: &Slot,
        mut msg: Message,
        cx: &Cx,
        sent: Option<&Cell<Option<u64>>>,
        read: ReadAs,
    ) -> Result<Reply, RpcError> {
        let span = self.forward_span(slot, &mut msg, cx);
        let own = Cell::new(None);
        let sent_given_none = sent.is_none();
        let sent = sent.unwrap_or(&own);
        // A caller that passes no `sent` cannot cancel the request itself (a listing,
        // a broadcast): if it is dropped (the client cancelled what needed it), the
        // backend is told.
        let cancel = sent_given_none;
        let abandoned = Abandoned {
            span: &span,
            sent,
            done: Cell::new(false),
        };
        let outcome = proc
            .request(
                Caller {
                    session: self.id,
                    span: Some(&span),
                },
                msg,
                slot.timeout,
                Some(sent),
                read,
                cancel,
            )
            .await;
        abandoned.done.set(true);
        if let Some(id) = sent.get() {
            span.set_attributes(|a| attrs::request_id(a, &Id::from(id)));
        }
        match &outcome {
            Ok(resp) => {
                telemetry::record_response(&span, resp);
            }
            Err(e) => telemetry::fail(&span, e.kind(), &e.to_string()),
        }
        span.end();
        outcome.map_err(|e| e.to_rpc_error())
    }

    async fn forward_by_name(
        &self,
        mut msg: Message,
        handling: Handling,
        target: &Target,
        cx: &Cx,
    ) -> Result<Reply, RpcError> {
        let method = msg.method().unwrap_or_default().to_string();
        let full = msg
            .param_str("name")
            .ok_or(RouteError::MissingParam {
                method,
                param: "name",
            })
            .map_err(|e| e.to_rpc_error())?
            .to_string();
        let ns = &self.gw.ns;
        let known = |b: &str| self.slot(b).is_some();
        let routed = if handling == Handling::ByToolName {
            route_tool(ns, &full, known)
        } else {
            route_prompt(ns, &full, known)
        }
        .map_err(|e| e.to_rpc_error());
        self.resolve_span(cx, &full, &routed, routed.as_ref().ok().map(|r| r.0));
        let (backend, local) = routed?;
        let slot = self.slot(backend).expect("checked above").clone();
        msg.set_param_name(local);
        self.forward(&slot, msg, target, cx).await
    }

    async fn route_uri(self: &Rc<Self>, uri: &str, cx: &Cx) -> Result<Rc<Slot>, RpcError> {
        let found = self.routes.borrow().route(uri).map(str::to_string);
        let found = match found {
            Ok(n) => Ok(n),
            Err(_) => {
                // Not listed yet in this session: learn the routes, then look again.
                let _ = self.list(ListKind::Resources, None, cx).await;
                let _ = self.list(ListKind::ResourceTemplates, None, cx).await;
                let found = self.routes.borrow().route(uri).map(str::to_string);
                found.map_err(|e| e.to_rpc_error())
            }
        };
        let slot = found.and_then(|name| {
            self.slot(&name)
                .cloned()
                .ok_or_else(|| RouteError::UnknownResource(uri.into()).to_rpc_error())
        });
        self.resolve_span(cx, uri, &slot, slot.as_ref().ok().map(|s| s.name()));
        slot
    }

    async fn forward_by_uri(
        self: &Rc<Self>,
        msg: Message,
        target: &Target,
        cx: &Cx,
        turn: Option<Turn>,
    ) -> Result<Reply, RpcError> {
        let method = msg.method().unwrap_or_default().to_string();
        let uri = msg
            .param_str("uri")
            .ok_or_else(|| {
                RouteError::MissingParam {
                    method: method.clone(),
                    param: "uri",
                }
                .to_rpc_error()
            })?
            .to_string();
        if let Some(t) = &turn {
            t.wait().await;
        }
        let slot = self.route_uri(&uri, cx).await?;
        match method.as_str() {
            "resources/subscribe" => {
                // Held from now on, not from the answer: another session's unsubscribe,
                // this session's end and a restore must count a subscribe the backend
                // may already have taken. The entry goes when its last subscribe in
                // flight fails and none ever succeeded (see `Sub`).
                let epoch = {
                    let mut subs = self.subscriptions.borrow_mut();
                    let full = subs.len() >= MAX_SUBSCRIPTIONS_PER_SESSION;
                    match subs.get_mut(&uri) {
                        Some(sub) => {
                            sub.in_flight += 1;
                            sub.epoch
                        }
                        None if full => {
                            return Err(SessionError::TooManySubscriptions(
                                MAX_SUBSCRIPTIONS_PER_SESSION,
                            )
                            .to_rpc_error());
                        }
                        None => {
                            let epoch = self.subscribes.get() + 1;
                            self.subscribes.set(epoch);
                            let backend = slot.name().to_string();
                            let sub = Sub {
                                backend,
                                epoch,
                                in_flight: 1,
                                accepted: false,
                            };
                            subs.insert(uri.clone(), sub);
                            epoch
                        }
                    }
                };
                let resp = self.forward_in_turn(&slot, msg, target, cx, turn).await;
                let accepted = matches!(&resp, Ok(r) if r.error().is_none());
                let mut subs = self.subscriptions.borrow_mut();
                // An entry of another epoch is not this subscribe's: it was unsubscribed.
                if let Some(sub) = subs.get_mut(&uri).filter(|s| s.epoch == epoch) {
                    sub.in_flight -= 1;
                    sub.accepted |= accepted;
                    if sub.in_flight == 0 && !sub.accepted {
                        subs.remove(&uri);
                        drop(subs);
                        // The backend may hold it all the same: a restore subscribed it
                        // while this subscribe was in flight, another session's release
                        // or unsubscribe left it to this one, or the answer came too
                        // late. Released unless a session holds it when its turn comes.
                        slot.release_subscriptions(vec![uri]);
                    }
                }
                resp
            }
            "resources/unsubscribe" => {
                // The client stops getting the updates now, whatever the backend says.
                self.subscriptions.borrow_mut().remove(&uri);
                let id = msg.id().expect("requests have ids");
                let held = || {
                    slot.is_shared()
                        && slot
                            .sessions()
                            .iter()
                            .any(|s| s.id != self.id && s.is_subscribed(&uri))
                };
                if held() {
                    // Another client of the shared backend still wants this resource's
                    // updates: the backend keeps the subscription, nothing is sent.
                    return Ok(Message::response(id, json!({})).into());
                }
                // With room in the backend's stdin queue, the check again and the
                // queueing of the line (`forward` on a running backend awaits nothing
                // before it) are one step: no other session's subscribe of the URI can
                // get between them and be undone by this unsubscribe. A backend that
                // takes no line for the request timeout gets a timeout answer, as any
                // request would, and the URI is left to the slot's releases.
                let stuck = match slot.running() {
                    Some(proc) => rt::timeout(slot.timeout, proc.wait_for_room())
                        .await
                        .is_none(),
                    None => false,
                };
                if held() {
                    return Ok(Message::response(id, json!({})).into());
                }
                if stuck {
                    slot.release_subscriptions(vec![uri]);
                    return Err(BackendError::Timeout {
                        backend: slot.name().to_string(),
                        after_ms: slot.timeout.as_millis() as u64,
                        waiting_for_client: false,
                    }
                    .to_rpc_error());
                }
                self.forward_in_turn(&slot, msg, target, cx, turn).await
            }
            _ => self.forward(&slot, msg, target, cx).await,
        }
    }

    /// [`Self::forward`] for a request that holds the session's [`Turn`]: the turn
    /// passes on as soon as the request's line is queued at the backend (or it ends),
    /// so the next (un)subscribe reaches the backend after it, without waiting for its
    /// answer.
    async fn forward_in_turn(
        &self,
        slot: &Rc<Slot>,
        msg: Message,
        target: &Target,
        cx: &Cx,
        turn: Option<Turn>,
    ) -> Result<Reply, RpcError> {
        let mut work = std::pin::pin!(self.forward(slot, msg, target, cx));
        std::future::poll_fn(|w| {
            let outcome = std::future::Future::poll(work.as_mut(), w);
            if outcome.is_ready() || target.id.get().is_some() {
                if let Some(t) = &turn {
                    t.pass();
                }
            }
            outcome
        })
        .await
    }

    /// A ticket in the session's order of (un)subscribes, taken when one arrives.
    fn take_turn(self: &Rc<Self>) -> Turn {
        let (ticket, ready) = self
            .turns
            .borrow_mut()
            .get_or_insert_with(Box::default)
            .take();
        Turn {
            session: Rc::downgrade(self),
            ticket,
            passed: Cell::new(false),
            ready: RefCell::new(ready),
        }
    }

    /// Ticket `ticket` is done: the turn goes to the first ticket not done.
    fn pass_turn(&self, ticket: u64) {
        if let Some(turns) = self.turns.borrow_mut().as_mut() {
            turns.pass(ticket);
        }
    }

    async fn forward_completion(
        self: &Rc<Self>,
        mut msg: Message,
        target: &Target,
        cx: &Cx,
    ) -> Result<Reply, RpcError> {
        let missing = |param| {
            RouteError::MissingParam {
                method: "completion/complete".into(),
                param,
            }
            .to_rpc_error()
        };
        let reference = msg
            .params()
            .and_then(|p| p.get("ref"))
            .cloned()
            .ok_or_else(|| missing("ref"))?;
        match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let full = reference
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing("ref.name"))?;
                let routed = route_prompt(&self.gw.ns, full, |b| self.slot(b).is_some())
                    .map_err(|e| e.to_rpc_error());
                self.resolve_span(cx, full, &routed, routed.as_ref().ok().map(|r| r.0));
                let (backend, local) = routed?;
                let slot = self.slot(backend).expect("checked above").clone();
                let local = local.to_string();
                if let Some(r) = msg.params_mut().get_mut("ref") {
                    r["name"] = local.into();
                }
                self.forward(&slot, msg, target, cx).await
            }
            Some("ref/resource") => {
                let uri = reference
                    .get("uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| missing("ref.uri"))?;
                let slot = self.route_uri(uri, cx).await?;
                self.forward(&slot, msg, target, cx).await
            }
            _ => Err(missing("ref.type")),
        }
    }

    /// Sends `logging/setLevel` (or another broadcast) to every backend that supports it.
    async fn broadcast(self: &Rc<Self>, msg: &Message, cx: &Cx) -> Result<Value, RpcError> {
        let requested = msg.param_str("level").and_then(mcp::log_level_rank);
        // Set before any backend is asked, so that another session setting its level
        // meanwhile sees this one's (a shared backend gets the most verbose); put back
        // if no backend takes it.
        let before = self.log_level.get();
        if requested.is_some() {
            self.log_level.set(requested);
        }
        let tasks: Vec<_> = self
            .backends
            .iter()
            .map(|slot| {
                let (me, slot, mut msg, cx) = (self.clone(), slot.clone(), msg.clone(), cx.clone());
                rt::spawn(async move {
                    let proc = me.ensure(&slot, &cx).await?;
                    if !mcp::has_capability(&proc.capabilities(), "logging") {
                        return Ok::<bool, RpcError>(false);
                    }
                    // A shared backend serves other sessions too: it is set to the most
                    // verbose level any of them asked for (each gets what it asked for:
                    // `wants_log`).
                    if let (true, Some(rank)) = (slot.is_shared(), requested) {
                        let most = slot
                            .sessions()
                            .iter()
                            .filter(|s| s.id != me.id)
                            .filter_map(|s| s.log_level.get())
                            .fold(rank, usize::min);
                        if most != rank {
                            msg.params_mut()
                                .insert("level".into(), mcp::LOG_LEVELS[most].into());
                        }
                    }
                    let level = msg.params().and_then(|p| p.get("level")).cloned();
                    let reply = me
                        .send_traced(&proc, &slot, msg, &cx, None, ReadAs::Brief)
                        .await?;
                    match (reply.error(), level) {
                        (None, level) => {
                            if let Some(level) = level {
                                slot.record_log_level(level);
                            }
                            Ok(true)
                        }
                        (Some(e), _) => {
                            // (Logged below, with the failures.)
                            Err(RpcError::new(
                                e.get("code")
                                    .and_then(Value::as_i64)
                                    .unwrap_or(mcp_shared::error::codes::INTERNAL_ERROR),
                                format!(
                                    "backend {:?}: {}",
                                    slot.name(),
                                    e.get("message").and_then(Value::as_str).unwrap_or("error")
                                ),
                            ))
                        }
                    }
                })
            })
            .collect();
        // Answered with success when a backend took the level, or none has logging;
        // when every one that has it refused or failed, with the first one's error (the
        // client must not believe a level is in effect that is not).
        let (mut accepted, mut first_error) = (false, None);
        for t in tasks {
            match t.await {
                Ok(took) => accepted |= took,
                Err(e) => {
                    log::warn!("session {}: logging/setLevel: {}", self.id, e.message);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !accepted => {
                self.log_level.set(before);
                Err(e)
            }
            _ => Ok(json!({})),
        }
    }

    /// Whether the client wants a log message of `level` (at or above the level it set;
    /// all when it set none, or the level is not one of MCP's).
    pub fn wants_log(&self, level: Option<&str>) -> bool {
        match (self.log_level.get(), level.and_then(mcp::log_level_rank)) {
            (Some(min), Some(rank)) => rank >= min,
            _ => true,
        }
    }

    /// Merges one listing from every backend that offers it.
    async fn list(
        self: &Rc<Self>,
        kind: ListKind,
        meta: Option<serde_json::Map<String, Value>>,
        cx: &Cx,
    ) -> Result<Value, RpcError> {
        let tasks: Vec<_> = self
            .backends
            .iter()
            .map(|slot| {
                let (me, slot, meta, cx) = (self.clone(), slot.clone(), meta.clone(), cx.clone());
                rt::spawn(async move {
                    let items = me.list_one(&slot, kind, meta, &cx).await;
                    (slot, items)
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            let (slot, items) = t.await;
            match items {
                Ok(listed) => answers.push((slot, listed)),
                Err(e) => log::warn!(
                    "session {}: {} from backend {:?} failed: {}",
                    self.id,
                    kind.method(),
                    slot.name(),
                    e.message
                ),
            }
        }
        // A backend's complete listing replaces the routes learned from it before: all
        // are forgotten first, so that a URI one backend stopped listing and another
        // started goes to the other.
        if matches!(kind, ListKind::Resources | ListKind::ResourceTemplates) {
            let mut routes = self.routes.borrow_mut();
            for (slot, (_, complete)) in &answers {
                match (kind, complete) {
                    (ListKind::Resources, true) => routes.forget_resources(slot.name()),
                    (ListKind::ResourceTemplates, true) => routes.forget_templates(slot.name()),
                    _ => {}
                }
            }
        }
        let mut all = Vec::new();
        let mut bytes = 0;
        for (slot, (mut items, _)) in answers {
            match kind {
                ListKind::Tools => {
                    // A tool that runs only as a task cannot be called through the
                    // gateway, which does not route `tasks/*` (nor announce them).
                    let before = items.len();
                    items.retain(|t| {
                        t.pointer("/execution/taskSupport").and_then(Value::as_str)
                            != Some("required")
                    });
                    if items.len() < before {
                        log::debug!(
                            "session {}: {} tool(s) of backend {:?} need tasks; not listed",
                            self.id,
                            before - items.len(),
                            slot.name()
                        );
                    }
                    self.gw.ns.prefix_names(slot.name(), &mut items)
                }
                ListKind::Prompts => self.gw.ns.prefix_names(slot.name(), &mut items),
                ListKind::Resources => self
                    .routes
                    .borrow_mut()
                    .learn_resources(slot.name(), &items),
                ListKind::ResourceTemplates => self
                    .routes
                    .borrow_mut()
                    .learn_templates(slot.name(), &items),
            }
            // What is sent: after the filter and the prefixes.
            bytes += json_len(&items);
            all.extend(items);
        }
        // (The routes are learned whatever comes of this.)
        let limit = self.gw.cfg.limits.max_message_bytes;
        if bytes > limit {
            return Err(SessionError::ListingTooLarge {
                method: kind.method(),
                bytes,
                limit,
            }
            .to_rpc_error());
        }
        Ok(json!({ kind.field(): all }))
    }

    /// One backend's listing, every page, and whether it is complete (a failed later
    /// page, too many pages, or pages past `max_message_bytes` give the pages before).
    async fn list_one(
        &self,
        slot: &Rc<Slot>,
        kind: ListKind,
        meta: Option<serde_json::Map<String, Value>>,
        cx: &Cx,
    ) -> Result<Listed, RpcError> {
        let proc = self.ensure(slot, cx).await?;
        if !mcp::has_capability(&proc.capabilities(), kind.capability()) {
            return Ok((Vec::new(), true));
        }
        let mut items = Vec::new();
        // What was left out of the pages so far, and the keys listed (each once).
        let (mut unlisted, mut seen) = (mcp::Unlisted::default(), HashSet::new());
        let listed = |items: Vec<Value>, complete: bool, unlisted: &mcp::Unlisted| {
            if unlisted.any() {
                proc.warn_limited(
                    Warned::Listing,
                    &format!(
                        "backend {:?}: {} left {} invalid and {} repeated item(s) out ({})",
                        slot.name(),
                        kind.method(),
                        unlisted.invalid,
                        unlisted.repeated,
                        unlisted.first.as_deref().unwrap_or_default()
                    ),
                );
            }
            Ok((items, complete))
        };
        let mut cursor: Option<Value> = None;
        // The items' JSON so far: past `max_message_bytes` no client could take the
        // listing anyway, and the gateway would hold up to MAX_LIST_PAGES pages of that
        // size for one backend.
        let (mut bytes, max) = (0usize, self.gw.cfg.limits.max_message_bytes);
        for page in 0..MAX_LIST_PAGES {
            let mut params = serde_json::Map::new();
            if let Some(m) = &meta {
                params.insert("_meta".into(), Value::Object(m.clone()));
            }
            if let Some(c) = cursor.take() {
                params.insert("cursor".into(), c);
            }
            let req = Message::request(Id::from(0), kind.method(), Some(Value::Object(params)));
            let outcome = match self
                .send_traced(&proc, slot, req, cx, None, ReadAs::Whole)
                .await
            {
                Ok(resp) => resp.into_message().into_outcome().map_err(|err| {
                    RpcError::new(
                        err.get("code")
                            .and_then(Value::as_i64)
                            .unwrap_or(mcp_shared::error::codes::INTERNAL_ERROR),
                        err.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("error")
                            .to_string(),
                    )
                }),
                Err(e) => Err(e),
            };
            let result = match outcome {
                Ok(r) => r,
                Err(e) if page > 0 => {
                    // What the earlier pages gave is still the backend's: kept, rather
                    // than the whole listing dropped for its tail.
                    log::warn!(
                        "backend {:?}: {} page {} failed ({}); listing the {} item(s) of the pages before",
                        slot.name(),
                        kind.method(),
                        page + 1,
                        e.message,
                        items.len()
                    );
                    return listed(items, false, &unlisted);
                }
                Err(e) => return Err(e),
            };
            let mut result = result;
            let Some(Value::Array(found)) = result.get_mut(kind.field()) else {
                // Not a listing: the backend is left out, as one that answered an error.
                let e = BackendError::InvalidResponse {
                    backend: slot.name().to_string(),
                    reason: format!(
                        "a {} result without a \"{}\" array",
                        kind.method(),
                        kind.field()
                    ),
                };
                if page > 0 {
                    log::warn!(
                        "{e}; listing the {} item(s) of the pages before",
                        items.len()
                    );
                    return listed(items, false, &unlisted);
                }
                return Err(e.to_rpc_error());
            };
            mcp::keep_listable(kind, found, &mut seen, &mut unlisted);
            bytes += json_len(found);
            items.append(found);
            match result.get("nextCursor") {
                // An empty cursor ends the listing too (some servers end with "").
                Some(c) if !c.is_null() && c.as_str() != Some("") => cursor = Some(c.clone()),
                _ => return listed(items, true, &unlisted),
            }
            if bytes > max {
                log::warn!(
                    "backend {:?}: {} passed max_message_bytes ({max}) after {} page(s); the pages after are not asked for",
                    slot.name(),
                    kind.method(),
                    page + 1
                );
                return listed(items, false, &unlisted);
            }
        }
        log::warn!(
            "backend {:?}: {} has more than {MAX_LIST_PAGES} pages; truncated",
            slot.name(),
            kind.method()
        );
        listed(items, false, &unlisted)
    }

    async fn on_client_notification(self: &Rc<Self>, msg: Message) {
        match msg.method().unwrap_or_default() {
            "notifications/initialized" => {}
            "notifications/cancelled" => {
                let Some(rid) = msg
                    .params()
                    .and_then(|p| p.get("requestId"))
                    .and_then(Id::from_value)
                else {
                    return;
                };
                let entry = {
                    let mut in_flight = self.in_flight.borrow_mut();
                    match in_flight.get(&rid) {
                        // Its task removes it once the answer is queued: until then it
                        // holds memory, so it keeps its place.
                        Some(e) if e.target.answered.get() => None,
                        Some(e) if e.initialize => {
                            log::debug!(
                                "session {}: ignored a cancellation of initialize {rid} (MCP forbids it)",
                                self.id
                            );
                            return;
                        }
                        Some(_) => in_flight.remove(&rid),
                        None => None,
                    }
                };
                let Some(entry) = entry else {
                    log::debug!(
                        "session {}: cancel for unknown or answered request {rid}",
                        self.id
                    );
                    return;
                };
                let _ = entry.cancel.send(None);
                let proc = entry.target.proc.borrow().as_ref().and_then(Weak::upgrade);
                if let (Some(proc), Some(bid)) = (proc, entry.target.id.get()) {
                    // The request task, woken by `cancel`, drops its pending entry; its
                    // response would otherwise race the cancellation.
                    let mut fwd = msg.clone();
                    fwd.params_mut().insert("requestId".into(), bid.into());
                    proc.notify(&fwd);
                }
            }
            "notifications/progress" => {
                // Progress on a request a backend asked this client: to that process
                // only (another backend, a shared one above all, may have a request of
                // its own with the same token). Any other token is no request's here.
                let found = msg
                    .param_str("progressToken")
                    .and_then(request_of_progress_token)
                    .and_then(|cid| {
                        let reqs = self.server_reqs.borrow();
                        let r = reqs.get(cid)?;
                        Some((r.proc.upgrade()?, r.progress_token.clone()?))
                    });
                match found {
                    Some((proc, original)) => {
                        let mut msg = msg;
                        msg.params_mut().insert("progressToken".into(), original);
                        proc.notify(&msg);
                    }
                    None => log::debug!(
                        "session {}: progress for no request a backend asked; dropped",
                        self.id
                    ),
                }
            }
            _ => {
                // roots/list_changed and anything newer: every backend of the session,
                // the ones being started once they are ready.
                for slot in &self.backends {
                    slot.notify_or_hold(&msg);
                }
            }
        }
    }

    async fn on_client_response(&self, mut msg: Message) {
        let id = msg.id().expect("responses have ids");
        let entry = self.server_reqs.borrow_mut().take(&id);
        let Some(req) = entry else {
            log::debug!("session {}: response to unknown id {id}", self.id);
            return;
        };
        telemetry::record_response(&req.span, &msg);
        if let Some(proc) = req.proc.upgrade() {
            msg.set_id(&req.backend_id);
            // Its own task: a backend whose stdin queue is full must not stop this
            // session's read loop (nor its answers to pings) for up to its timeout.
            rt::spawn(async move { proc.send(&msg).await }).detach();
        }
    }

    /// Relays a backend's request to this session's client under a fresh id, in a
    /// `client.forward` span under `parent` whose context goes to the client in
    /// `_meta` (docs/tracing.md, "Requests to the client").
    ///
    /// The backend's reader awaits this, so the backend's own cancellation of the
    /// request, and its exit ([`Session::forget_server_requests`]), are read only once
    /// the request is queued: the client never gets the request after the notice that
    /// voids it.
    pub async fn relay_server_request(
        self: &Rc<Self>,
        proc: &Rc<Proc>,
        mut msg: Message,
        wait: bool,
        parent: &Cx,
    ) {
        let backend_id = msg.id().expect("requests have ids");
        let progress_token = msg.meta().and_then(|m| m.get("progressToken")).cloned();
        let span = self.client_forward_span(proc, &msg, parent);
        let refuse = |e: RpcError, span: &Cx| {
            telemetry::fail(span, &e.code.to_string(), &e.message);
            proc.notify(&Message::error_response(Some(backend_id.clone()), e));
        };
        if self.server_reqs.borrow().has_room().is_err() {
            let e = SessionError::TooManyInFlight(self.gw.cfg.limits.max_in_flight);
            refuse(e.to_rpc_error(), &span);
            span.end();
            return;
        }
        let cid = self
            .server_reqs
            .borrow_mut()
            .insert(ServerReq {
                proc: Rc::downgrade(proc),
                backend_id: backend_id.clone(),
                progress_token,
                _asking: proc.asking(self.id),
                span: span.clone(),
                expiry: None,
            })
            .expect("room was checked");
        let (me, limit) = (Rc::downgrade(self), proc.client_answer_limit());
        let expiry = rt::spawn(async move {
            async_io::Timer::after(limit).await;
            if let Some(me) = me.upgrade() {
                me.give_up_on_client(cid, limit);
            }
        });
        if let Some(req) = self.server_reqs.borrow_mut().get_mut(cid) {
            req.expiry = Some(expiry);
        }
        msg.set_id(&Id::from(cid));
        if msg.meta().is_some_and(|m| m.contains_key("progressToken")) {
            msg.meta_mut()
                .insert("progressToken".into(), server_progress_token(cid).into());
        }
        span.set_attributes(|a| attrs::request_id(a, &Id::from(cid)));
        propagation::inject_message(&span, &mut msg);
        // Refused only while still ours: a session that closed meanwhile (`close`) has
        // answered it already.
        if !self.deliver(msg.to_text(), wait).await {
            if let Some(req) = self.server_reqs.borrow_mut().remove(cid) {
                refuse(SessionError::ClientUnavailable.to_rpc_error(), &req.span);
            }
        }
    }

    /// A backend's request the client has not answered within `limit`: the client is
    /// told it is cancelled (a host frees what it holds for it), the backend gets an
    /// error, and neither waits for it any longer (it held a place of `max_in_flight`
    /// at the gateway, and at the router, for good).
    fn give_up_on_client(&self, cid: u64, limit: std::time::Duration) {
        let Some(mut req) = self.server_reqs.borrow_mut().remove(cid) else {
            return;
        };
        // This runs in that task: it ends on its own.
        if let Some(t) = req.expiry.take() {
            t.detach();
        }
        let e = SessionError::ClientDidNotAnswer(limit.as_millis() as u64).to_rpc_error();
        log::warn!("session {}: {}", self.id, e.message);
        telemetry::fail(&req.span, "timeout", &e.message);
        if let Some(proc) = req.proc.upgrade() {
            proc.client_gave_up();
            proc.notify(&Message::error_response(
                Some(req.backend_id.clone()),
                e.clone(),
            ));
        }
        let params = json!({"requestId": cid, "reason": e.message});
        let notice = Message::notification("notifications/cancelled", Some(params));
        if self.out.try_send(notice.to_json()).is_err() {
            log::debug!("session {}: no room to cancel request {cid}", self.id);
        }
    }

    /// The `client.forward` span of a backend's request to this session's client.
    fn client_forward_span(&self, proc: &Proc, msg: &Message, parent: &Cx) -> Cx {
        let tel = &self.gw.tel;
        if !tel.enabled() {
            return Cx::default();
        }
        // The conventions' few (a span of the bridge's own, not one of the guide's:
        // without the guide's duplicates it stays near the 300-byte budget).
        tel.start("client.forward", SpanKind::Client, parent, |a| {
            if let Some(m) = msg.method() {
                a.str("mcp.method.name", m);
            }
            a.str("gateway.service", proc.name());
            a.str("network.transport", "tcp");
            a.str("mcp.session.id", self.label().as_str());
            a.str("mcp.protocol.version", self.version.get());
        })
    }

    /// Relays a backend's cancellation of one of its requests to this client.
    pub async fn relay_server_cancel(&self, proc: &Rc<Proc>, msg: &Message) {
        let Some(bid) = msg
            .params()
            .and_then(|p| p.get("requestId"))
            .and_then(Id::from_value)
        else {
            return;
        };
        let found = self.server_reqs.borrow().iter().find_map(|(cid, r)| {
            (r.backend_id == bid && r.proc.as_ptr() == Rc::as_ptr(proc)).then_some(cid)
        });
        if let Some(cid) = found {
            if let Some(req) = self.server_reqs.borrow_mut().remove(cid) {
                req.span
                    .set_attributes(|a| a.bool("mcp.request.cancelled", true));
            }
            let mut fwd = msg.clone();
            fwd.params_mut().insert("requestId".into(), cid.into());
            self.deliver(fwd.to_json(), false).await;
        }
    }

    /// Forgets server requests from a process that exited, and tells the client each
    /// one is void (`notifications/cancelled`: it may stop working on it, and a client
    /// that keeps ids of its own, like `mcp-router`, frees them). Not waited for: a
    /// client whose queue is full misses the notice.
    pub fn forget_server_requests(&self, proc: &Rc<Proc>) {
        let gone = self
            .server_reqs
            .borrow_mut()
            .remove_where(|r| r.proc.as_ptr() == Rc::as_ptr(proc));
        for (cid, req) in gone {
            telemetry::fail(&req.span, "backend_exited", "the backend that asked exited");
            let params = json!({"requestId": cid, "reason": "the backend that asked exited"});
            let notice = Message::notification("notifications/cancelled", Some(params));
            if self.out.try_send(notice.to_json()).is_err() {
                log::debug!("session {}: no room to cancel request {cid}", self.id);
            }
        }
    }

    /// Ends the session (`why`: recorded by its requests still in flight): cancels its
    /// requests, detaches from shared backends and stops its own.
    pub async fn close(&self, why: Closing) {
        for (_, f) in self.in_flight.borrow_mut().drain() {
            let _ = f.cancel.send(Some(why));
        }
        // What backends asked this client and it never answered: failed now, or a
        // shared backend (which lives on) would wait for the answers for ever.
        let asked = self.server_reqs.borrow_mut().drain();
        for (_, req) in asked {
            let e = match why {
                Closing::ClientGone => SessionError::ClientDisconnected,
                Closing::Shutdown => SessionError::ShuttingDown,
            }
            .to_rpc_error();
            telemetry::fail(&req.span, why.error_type(), &e.message);
            if let Some(proc) = req.proc.upgrade() {
                proc.notify(&Message::error_response(Some(req.backend_id.clone()), e));
            }
        }
        let grace = self.gw.cfg.server.shutdown_grace.0;
        let mut stops = Vec::new();
        for slot in &self.backends {
            slot.detach(self.id);
            if slot.is_shared() {
                slot.release_subscriptions(self.subscriptions_to(slot.name()));
            } else {
                let slot = slot.clone();
                stops.push(rt::spawn(async move { slot.stop(grace).await }));
            }
        }
        for t in stops {
            t.await;
        }
        log::info!("session {} closed", self.id);
    }
}

/// Ends the `backend.forward` span of a request whose caller went away before the
/// answer (the client cancelled it, or its session closed: `http.request` says which),
/// marked cancelled, with the id the backend was sent if it was sent.
struct Abandoned<'a> {
    span: &'a Cx,
    sent: &'a Cell<Option<u64>>,
    done: Cell<bool>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.done.get() || !self.span.is_recording() {
            return;
        }
        self.span.set_attributes(|a| {
            if let Some(id) = self.sent.get() {
                attrs::request_id(a, &Id::from(id));
            }
            a.bool("mcp.request.cancelled", true);
        });
        self.span.end();
    }
}

/// A backend's listing: its items, and whether it is complete.
type Listed = (Vec<Value>, bool);

/// The progress token the client is given for a backend's request relayed to it
/// under id `cid` (when the backend asked for progress): unique among the session's
/// requests, as MCP wants of a requester's tokens.
fn server_progress_token(cid: u64) -> String {
    format!("gw-{cid}")
}

/// The id of the relayed request a progress token of [`server_progress_token`]'s is
/// for; `None` for any other token.
fn request_of_progress_token(token: &str) -> Option<u64> {
    let n = token.strip_prefix("gw-")?;
    // Exactly as written: "gw-01" or "gw-+1" is no token of ours.
    n.parse().ok().filter(|cid: &u64| cid.to_string() == n)
}

/// The length of `items` as JSON text.
fn json_len(items: &[Value]) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, items);
    n.0
}

/// Whether `holds` is true of `uri` or of a URI it lies under ([`lies_under`]): one
/// lookup per `/` of `uri` (the prefix before it and the one through it), not a scan
/// of every held URI; a shared backend's update is checked against each attached
/// session.
fn for_uri_or_parent(uri: &str, holds: impl Fn(&str) -> bool) -> bool {
    holds(uri)
        || uri
            .match_indices('/')
            .any(|(i, _)| holds(&uri[..i]) || (i + 1 < uri.len() && holds(&uri[..=i])))
}

/// Whether `uri` names a sub-resource of `held`: `held` is a prefix of it that ends at a
/// `/` (`held` ending with one, or the rest of `uri` starting with one).
#[cfg(test)]
fn lies_under(uri: &str, held: &str) -> bool {
    uri.strip_prefix(held)
        .is_some_and(|rest| !rest.is_empty() && (held.ends_with('/') || rest.starts_with('/')))
}

/// The metrics outcome of a response: an error (typed by its code), a tool error
/// (`isError: true`), or success.
fn outcome_of(resp: &impl Answer) -> (Outcome, Option<&'static str>) {
    if let Some(e) = resp.error() {
        let code = jsonrpc::lookup(e, "code")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        return (Outcome::Error, Some(error_type_for_code(code)));
    }
    if resp.is_tool_error() {
        (Outcome::ToolError, None)
    } else {
        (Outcome::Ok, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_requests_progress_token_names_it_exactly() {
        for cid in [0, 7, u64::MAX] {
            assert_eq!(
                request_of_progress_token(&server_progress_token(cid)),
                Some(cid)
            );
        }
        for other in [
            "gw-",
            "gw-01",
            "gw-+1",
            "gw-1x",
            "fx-1",
            "7",
            "gw-18446744073709551616",
        ] {
            assert_eq!(request_of_progress_token(other), None, "{other}");
        }
    }

    /// Whether a turn's wake-up has come, without waiting.
    fn has_turn(ready: &mut Option<oneshot::Receiver<()>>) -> bool {
        match ready {
            None => true,
            Some(rx) => {
                futures_lite::future::block_on(futures_lite::future::poll_once(rx)).is_some()
            }
        }
    }

    #[test]
    fn sub_resources_lie_under_their_parent_at_a_slash() {
        assert!(lies_under(
            "fixture://one/hello/part",
            "fixture://one/hello"
        ));
        assert!(lies_under("file:///proj/src/a.rs", "file:///proj/"));
        assert!(!lies_under("fixture://one/hello", "fixture://one/hel"));
        assert!(
            !lies_under("fixture://one/hello", "fixture://one/hello"),
            "not under itself"
        );
        assert!(!lies_under("fixture://one/hell", "fixture://one/hello"));
        // The lookup by prefixes says the same as the rule, over every pair of these.
        let uris = [
            "fixture://one/hello",
            "fixture://one/hello/",
            "fixture://one/hello/part",
            "fixture://one/hello/part/x",
            "fixture://one/hel",
            "fixture://one/",
            "fixture://one",
            "file:///proj/",
            "file:///proj/src/a.rs",
            "file:///proj",
            "a",
            "/",
            "",
        ];
        for uri in uris {
            for held in uris {
                let by_prefix = for_uri_or_parent(uri, |h| h == held);
                let by_rule = uri == held || lies_under(uri, held);
                assert_eq!(by_prefix, by_rule, "update {uri:?}, held {held:?}");
            }
        }
    }

    #[test]
    fn turns_come_in_ticket_order_whatever_order_tickets_are_done_in() {
        let mut turns = Turns::default();
        let (a, mut ra) = turns.take();
        let (b, mut rb) = turns.take();
        let (c, mut rc) = turns.take();
        assert!(has_turn(&mut ra), "the first ticket has the turn at once");
        assert!(!has_turn(&mut rb) && !has_turn(&mut rc));
        // The third is given up (its request was cancelled) before its turn: nothing
        // moves until the first is done, and then the turn skips it.
        turns.pass(c);
        assert!(!has_turn(&mut rb));
        turns.pass(a);
        assert!(has_turn(&mut rb), "the second is next");
        turns.pass(b);
        assert_eq!(turns.serving, 3, "the given-up third is skipped");
        assert!(turns.done.is_empty() && turns.waiting.is_empty());
        // A ticket taken now has the turn at once.
        let (_, mut rd) = turns.take();
        assert!(has_turn(&mut rd));
    }
}
