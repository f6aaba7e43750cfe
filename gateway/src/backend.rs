//! Backend MCP servers run as stdio subprocesses.
//!
//! A [`Slot`] is one configured backend as seen by its owner (one client session for
//! `per_client`, every session for `shared`): it starts the process on first need,
//! initializes it as an MCP client, restarts it after a crash with backoff, and stops it
//! (close stdin, wait `shutdown_grace`, then kill). A [`Proc`] is one running process:
//! its stdin queue, the table of requests sent to it and not yet answered, and three
//! tasks (stdin writer, stdout reader, stderr logger).
//!
//! Invariant: every request in a `Proc`'s pending table is answered exactly once — by
//! the backend's response, a timeout, or the process's exit status.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_process::{Child, Command, Stdio};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use mcp_shared::config::{BackendConfig, SessionMode};
use mcp_shared::error::{BackendError, SessionError, ToRpcError};
use mcp_shared::framing::{Frame, LineDecoder, PIPE_READ_CHUNK_BYTES};
use mcp_shared::idmap::IdMap;
use mcp_shared::jsonrpc::{Answer, Brief, Id, Kind, Message, Rejection, Reply};
use mcp_shared::mcp;
use mcp_shared::telemetry::{self, attrs, propagation, Cx, Telemetry};
use opentelemetry::trace::{SpanKind, TraceId};
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::oneshot;
use crate::rt;
use crate::rt::Turns;
use crate::session::Session;

/// Messages queued for a backend's stdin, at most.
pub const STDIN_QUEUE: usize = 256;
/// Bytes queued for a backend's stdin beyond which no line is queued until the writer
/// takes some: a backend that stops reading holds this much of the gateway's memory
/// plus one line, not [`STDIN_QUEUE`] × `max_message_bytes` (a review measured 634 MB
/// for one process with 3 MiB requests before this bound).
pub const STDIN_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Stderr lines of one backend process logged per second, at most (see `log_stderr`).
pub const STDERR_LINES_PER_SECOND: usize = 200;
/// Most bytes of a backend's stderr line that are logged (less room for its `[name] `
/// prefix and the cut note, within `logger::MAX_LOG_MESSAGE_BYTES`); the rest are counted.
pub const STDERR_LINE_BYTES: usize = 8 * 1024;
/// After a backend closes stdout, how long to wait for its exit status before killing it.
pub const EXIT_WAIT: Duration = Duration::from_secs(1);
/// Requests of a restarted backend's restore (`Slot::restore`) unanswered at once: few
/// next to [`MAX_PENDING_PER_PROCESS`], so that a restore of many subscriptions never
/// takes the room of the clients' requests.
pub const RESTORE_WINDOW: usize = 16;

/// One of the gateway's own requests to a backend (a restore or a release).
struct Ask {
    method: &'static str,
    params: Value,
    /// The resource it is about, if any (checked again before it is sent).
    uri: Option<String>,
}

/// How [`ask_all`] went.
#[derive(Default)]
struct Tally {
    /// Requests that got an answer (or failed).
    answered: usize,
    /// Of those, the ones refused: an error answer, or none.
    refused: usize,
    /// Requests not sent: no longer wanted when their turn came.
    skipped: usize,
    /// All were handled before the deadline.
    finished: bool,
    /// The first refusal, for the log.
    first: Option<String>,
    /// The deadline, for the log.
    deadline: Duration,
}

impl Tally {
    /// Why not everything went through, for a log line.
    fn why(&self) -> String {
        let mut s = String::new();
        if !self.finished {
            s += &format!(" (stopped after {} ms)", self.deadline.as_millis());
        }
        if let Some(f) = &self.first {
            s += &format!("; first refusal: {f}");
        }
        s
    }
}

/// Sends `asks` to `proc` with at most [`RESTORE_WINDOW`] unanswered at a time, each
/// only if `wanted` still says so when its turn comes (the check and the queueing of
/// its line happen in one step), each answer awaited at most `timeout` and all of them
/// at most `timeout` too; at the deadline what is still waiting is dropped (its
/// pending entry with it) and the rest is not sent. Traced under `span`, if given.
async fn ask_all(
    proc: &Rc<Proc>,
    asks: VecDeque<Ask>,
    wanted: Rc<dyn Fn(&Ask) -> bool>,
    timeout: Duration,
    span: Option<&Cx>,
) -> Tally {
    let workers = RESTORE_WINDOW.min(asks.len());
    let queue = Rc::new(RefCell::new(asks));
    let tally = Rc::new(RefCell::new(Tally::default()));
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, tally, proc) = (queue.clone(), tally.clone(), proc.clone());
            let (wanted, span) = (wanted.clone(), span.cloned());
            rt::spawn(async move {
                loop {
                    let Some(ask) = queue.borrow_mut().pop_front() else {
                        return;
                    };
                    // The check and the queueing of the line in one step: a line sent
                    // by someone else in between (a session's subscribe) would come
                    // before ours at the backend although our check did not see it.
                    proc.wait_for_room().await;
                    if !wanted(&ask) {
                        tally.borrow_mut().skipped += 1;
                        continue;
                    }
                    let mut msg = Message::request(Id::from(0), ask.method, Some(ask.params));
                    if let Some(span) = &span {
                        propagation::inject_message(span, &mut msg);
                    }
                    let refused = match proc
                        .request(Caller::GATEWAY, msg, timeout, None, ReadAs::Brief, false)
                        .await
                    {
                        Ok(r) => r.error().map(|e| e["message"].to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    let mut t = tally.borrow_mut();
                    t.answered += 1;
                    if let Some(why) = refused {
                        t.refused += 1;
                        let what = ask.uri.as_deref().unwrap_or_default();
                        t.first
                            .get_or_insert_with(|| format!("{} {what}: {why}", ask.method));
                    }
                }
            })
        })
        .collect();
    let all = async {
        for w in workers {
            w.await;
        }
    };
    // Dropping the workers at the deadline cancels what they still wait for.
    let finished = rt::timeout(timeout, all).await.is_some();
    let mut t = std::mem::take(&mut *tally.borrow_mut());
    t.finished = finished;
    t.deadline = timeout;
    t
}

/// Clears [`Slot::starting`] when `Slot::start` ends, however it ends.
struct Starting<'a>(&'a Slot);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.starting.borrow_mut().take();
    }
}

/// A backend that ran at least this long before dying is restarted without delay.
pub const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// First restart delay after repeated quick failures; doubles each time.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Requests to one backend process in flight at most (all sessions together).
pub const MAX_PENDING_PER_PROCESS: usize = 4096;

/// How the response to a request is read ([`Proc::request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAs {
    /// Parsed whole: the caller reads its result (listings, `initialize`).
    Whole,
    /// For its outcome only, the text kept to relay with a new id ([`Reply::Brief`]):
    /// a forwarded request's answer. Most of the gateway's work per forwarded request
    /// was building the maps of a result it only passed on (docs/benchmark.md).
    Brief,
}

/// Restart delay after `failures` consecutive quick failures (none after the first).
pub fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exp = (failures - 2).min(16);
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// How a line fared in [`Proc::queue`].
enum Queued {
    /// There was room at once.
    Now,
    /// Queued after waiting this long for room.
    After(Duration),
    /// The process is gone.
    Closed,
    /// No room within the limit.
    TimedOut,
}

struct Pending {
    tx: oneshot::Sender<Result<Reply, BackendError>>,
    session: u64,
    /// The span the request was sent under (`backend.forward`): the parent of what the
    /// backend asks a client meanwhile, when it sends no trace context of its own.
    span: Cx,
    /// The trace the request went to the backend in: its span's, or with tracing off
    /// here, that of the context it carried through as it came (`TraceId::INVALID`:
    /// none). What the backend asks in that trace is for this request's session, with
    /// tracing on or off ([`Proc::asked_for`]).
    trace: TraceId,
    /// How its response is to be read.
    read: ReadAs,
    /// The progress token we gave the backend for this request, if any.
    token: Option<String>,
}

/// One running backend process.
pub struct Proc {
    name: Rc<str>,
    /// Lines for its stdin, each ending in `\n`.
    stdin: Sender<Vec<u8>>,
    /// Bytes of the lines in `stdin` (the writer takes each line's off as it takes it).
    stdin_bytes: Rc<Cell<usize>>,
    /// Told each time the stdin writer takes a line: room in `stdin`
    /// ([`Proc::wait_for_room`]).
    room: Rc<event_listener::Event>,
    pending: RefCell<IdMap<Pending>>,
    /// Our progress token → (session id, the client's original token, when the
    /// backend last reported progress on that request).
    progress: RefCell<HashMap<String, ProgressEntry>>,
    /// The process's requests to clients not yet answered, per session (`Asking`
    /// guards): while a session has any, its requests here wait (a person answering an
    /// elicitation, a model a sampling request).
    asking: Rc<RefCell<HashMap<u64, usize>>>,
    /// Its clients share it (`session = "shared"`): what it asks a client is routed by
    /// the trace it asks in.
    shared: bool,
    /// How many of the process's requests to clients were given up on, unanswered
    /// ([`Proc::client_gave_up`]): a request of its that timed out meanwhile timed out
    /// for the client's silence. Per process, not per session: on a shared backend,
    /// another client's silence given up on in the same window makes a session's
    /// timeout name the client too (only the message's wording; kept simple rather
    /// than a map per session that would have to be cleaned as sessions go).
    client_give_ups: Cell<u64>,
    next_token: Cell<u64>,
    caps: RefCell<Value>,
    /// The `instructions` of its `initialize` result, if any.
    instructions: RefCell<Option<String>>,
    alive: Cell<bool>,
    /// A second handle on its stdin pipe, only to ask whether anything still reads it
    /// once the process has exited (`read_stdout`); dropped by `close_stdin`, or the
    /// process would never see its stdin's end.
    stdin_watch: RefCell<Option<OwnedFd>>,
    /// Set by `watch_exit` once the process is reaped and its group killed.
    reaped: Rc<Cell<bool>>,
    /// Set when a request timed out after the process had exited: nothing there
    /// answers, whatever holds its pipes (`read_stdout` then ends; woken by `room`).
    silent_after_exit: Cell<bool>,
    /// Its process id, `None` for a record with no process behind it (tests); also its
    /// process group's when `own_group`.
    group: Option<rustix::process::Pid>,
    /// It leads a process group of its own ([`own_process_groups`]).
    own_group: bool,
    /// Closed when the stdout reader has finished (the process is gone).
    exited: Receiver<()>,
    exit_status: RefCell<Option<String>>,
    /// Set when the gateway asked it to stop, so its exit is expected.
    stopping: Cell<bool>,
    metrics: Rc<Metrics>,
    /// When [`Proc::warn_limited`] last logged, and how many it held back since, for
    /// each kind of warning ([`Warned`]): one kind flooding does not hide another.
    warned: [Rc<mcp_shared::logger::Throttle>; 5],
    /// The backend's request timeout: also the longest a message waits for room in the
    /// stdin queue (a backend that stopped reading fills it).
    timeout: Duration,
}

impl Proc {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long one of its requests to a client may stay unanswered: as long as the
    /// longest any request to it may be waited for (a request of the client's that led
    /// to it has failed by then).
    pub fn client_answer_limit(&self) -> Duration {
        self.timeout * REQUEST_TIMEOUT_MAX_FACTOR
    }

    /// The capabilities it announced in `initialize`.
    pub fn capabilities(&self) -> Value {
        self.caps.borrow().clone()
    }

    /// The instructions it gave in `initialize`.
    pub fn instructions(&self) -> Option<String> {
        self.instructions.borrow().clone()
    }

    /// False once the process has exited.
    pub fn is_alive(&self) -> bool {
        self.alive.get()
    }

    /// Kills the process and what it started in its group (its exit is then seen as
    /// any other: `read_stdout`).
    fn kill(&self) {
        // Not once `watch_exit` has reaped it and killed its group: the number may be
        // another group's by now.
        if let (Some(g), false) = (self.group, self.reaped.get()) {
            kill(g, self.own_group);
        }
    }

    /// Closes the stdin queue (the writer then closes the pipe) and wakes whoever waits
    /// for room in it ([`Self::wait_for_room`]): there will be none.
    fn close_stdin(&self) {
        self.stdin_watch.borrow_mut().take();
        self.stdin.close();
        self.room.notify(usize::MAX);
    }

    /// Returns when the stdin queue has room for a line (or is closed), in the same
    /// poll in which it saw the room: a caller that checks something and then sends
    /// (`request`'s first poll queues the line) does both in one step, with nothing
    /// sent in between. A queue with room is not waited on.
    pub async fn wait_for_room(&self) {
        while self.stdin_full() && !self.stdin.is_closed() {
            let listener = self.room.listen();
            if !self.stdin_full() {
                break;
            }
            listener.await;
        }
    }

    /// Whether a line would have to wait: [`STDIN_QUEUE`] lines are queued, or
    /// [`STDIN_QUEUE_BYTES`] bytes (below that a line of any length goes in, so room
    /// that [`Self::wait_for_room`] saw is room for the next line, whatever its size).
    fn stdin_full(&self) -> bool {
        self.stdin.is_full() || self.stdin_bytes.get() >= STDIN_QUEUE_BYTES
    }

    /// Queues a line for stdin if there is room now; gives it back if not.
    fn try_queue(&self, line: Vec<u8>) -> Result<(), async_channel::TrySendError<Vec<u8>>> {
        if self.stdin.is_closed() {
            return Err(async_channel::TrySendError::Closed(line));
        }
        if self.stdin_full() {
            return Err(async_channel::TrySendError::Full(line));
        }
        let len = line.len();
        self.stdin.try_send(line)?;
        self.stdin_bytes.set(self.stdin_bytes.get() + len);
        Ok(())
    }

    fn exited_error(&self) -> BackendError {
        BackendError::Exited {
            backend: self.name.to_string(),
            status: self
                .exit_status
                .borrow()
                .clone()
                .unwrap_or_else(|| "stdin closed".into()),
        }
    }

    /// Sends a request and waits for its response, at most `timeout`.
    ///
    /// `msg` is the client's request; its id is replaced by ours and any progress token
    /// is replaced by one unique to this process (restored on the way back). `sent` is
    /// told our id once the request is queued, so the caller can cancel it; a caller
    /// that cannot asks for `cancel_if_abandoned` (the backend is then told if the
    /// future is dropped while the request is pending). The response is read as `read`
    /// says (still with our id).
    pub async fn request(
        &self,
        caller: Caller<'_>,
        mut msg: Message,
        timeout: Duration,
        sent: Option<&Cell<Option<u64>>>,
        read: ReadAs,
        cancel_if_abandoned: bool,
    ) -> Result<Reply, BackendError> {
        if !self.alive.get() {
            return Err(self.exited_error());
        }
        let overloaded = |f: mcp_shared::idmap::Full| BackendError::Overloaded {
            backend: self.name.to_string(),
            limit: f.limit,
        };
        // Checked before the progress token is swapped: a refused request must leave
        // nothing in the progress table. (Nothing runs between here and the insert.)
        self.pending.borrow().has_room().map_err(overloaded)?;
        let session = caller.session;
        let (tx, rx) = oneshot::channel();
        let (token, heard) = self.swap_progress_token(session, &mut msg).unzip();
        let span = caller.span.cloned().unwrap_or_default();
        let trace = match span.span_context() {
            sc if sc.is_valid() => sc.trace_id(),
            // Not traced here: the context the client sent goes on to the backend
            // unchanged, and the backend asks within its trace. Read for a shared
            // backend only: a per-client one's requests go to their one session.
            _ if self.shared => msg
                .trace_context()
                .and_then(|(parent, _)| propagation::parse_traceparent(parent))
                .map_or(TraceId::INVALID, |(trace, _, _)| trace),
            _ => TraceId::INVALID,
        };
        let id = self
            .pending
            .borrow_mut()
            .insert(Pending {
                tx,
                session,
                span,
                trace,
                read,
                token: token.clone(),
            })
            .map_err(overloaded)?;
        let mut guard = PendingGuard {
            proc: self,
            id,
            cancel: false,
        };
        msg.set_id(&Id::from(id));
        // The time it had: `timeout`, or longer while the backend was at work.
        let had = Cell::new(timeout);
        // `waiting_for_client`: only a request that was sent can be waiting on that.
        let timed_out = |waiting_for_client| BackendError::Timeout {
            backend: self.name.to_string(),
            after_ms: had.get().as_millis() as u64,
            waiting_for_client,
        };
        // The timeout covers waiting for room in the stdin queue too.
        let left = match self.queue(line_of(&msg), timeout).await {
            Queued::Now => timeout,
            Queued::After(waited) => timeout.saturating_sub(waited),
            Queued::Closed => return Err(self.exited_error()),
            Queued::TimedOut => return Err(timed_out(false)),
        };
        if let Some(s) = sent {
            s.set(Some(id));
        }
        guard.cancel = cancel_if_abandoned;
        let for_client = Cell::new(false);
        let outcome = self
            .answer_within(rx, (left, timeout), session, heard, (&had, &for_client))
            .await;
        match outcome {
            Some(Ok(r)) => {
                std::mem::forget(guard);
                r
            }
            Some(Err(_)) => Err(self.exited_error()),
            None => {
                guard.cancel = false;
                drop(guard);
                // The process has exited, and still no answer: what holds its pipes is
                // no server of its (see `read_stdout`); it is gone.
                if self.reaped.get() {
                    self.silent_after_exit.set(true);
                    self.room.notify(usize::MAX);
                }
                // Not an `initialize`: MCP forbids cancelling it (the process that did
                // not answer it is stopped instead).
                if msg.method() != Some("initialize") {
                    self.notify(&Message::notification(
                        "notifications/cancelled",
                        Some(json!({ "requestId": id, "reason": "request timed out at the gateway" })),
                    ));
                }
                Err(timed_out(for_client.get()))
            }
        }
    }

    /// Waits for the answer `rx` for `left`, and on while the backend is visibly at work
    /// on it: until `timeout` after its last progress on this request (`heard`), and
    /// for as long as the process has a request of its own open at this `session`'s
    /// client (a person answering an elicitation, a model a sampling request); never past
    /// [`REQUEST_TIMEOUT_MAX_FACTOR`] × `timeout` in all. `None`: timed out (`had`: the
    /// time it had in all; `for_client`: the last of it was a wait for the client).
    async fn answer_within(
        &self,
        mut rx: oneshot::Receiver<Outcome>,
        (left, timeout): (Duration, Duration),
        session: u64,
        heard: Option<Rc<Cell<Instant>>>,
        (had, for_client): (&Cell<Duration>, &Cell<bool>),
    ) -> Option<Result<Outcome, oneshot::Closed>> {
        // When the request began, read only if the first wait runs out (then it is
        // `timeout` ago): no clock reading on a request answered in time.
        let mut began = None;
        let mut wait = left;
        // The last extension was for a request open at the client, and how many had
        // been given up on then.
        let mut extended_for_client = (false, 0);
        loop {
            if let Some(r) = rt::timeout(wait, &mut rx).await {
                return Some(r);
            }
            let now = Instant::now();
            let start = *began.get_or_insert_with(|| now.checked_sub(timeout).unwrap_or(now));
            let most = start + timeout * REQUEST_TIMEOUT_MAX_FACTOR;
            let mut until = heard.as_ref().map_or(now, |h| h.get() + timeout);
            let asking = self.asking.borrow().contains_key(&session);
            if asking {
                until = until.max(now + timeout);
            }
            let until = until.min(most);
            if until <= now {
                // The client's silence: still waited for, or the last wait was for it
                // and it was given up on since (at this same moment, likely: both
                // bounds are 10 × the timeout). Not when the client answered meanwhile.
                let (was, give_ups) = extended_for_client;
                for_client.set(asking || (was && self.client_give_ups.get() != give_ups));
                return None;
            }
            extended_for_client = (asking, self.client_give_ups.get());
            had.set(until - start);
            wait = until - now;
        }
    }

    /// Queues a line for stdin, waiting at most `limit` for room.
    async fn queue(&self, line: Vec<u8>, limit: Duration) -> Queued {
        match self.try_queue(line) {
            Ok(()) => Queued::Now,
            Err(async_channel::TrySendError::Closed(_)) => Queued::Closed,
            Err(async_channel::TrySendError::Full(line)) => {
                let start = Instant::now();
                let mut line = Some(line);
                let queued = rt::timeout(limit, async {
                    loop {
                        self.wait_for_room().await;
                        let l = line.take().expect("given back while full");
                        match self.try_queue(l) {
                            Ok(()) => return true,
                            Err(async_channel::TrySendError::Closed(_)) => return false,
                            Err(async_channel::TrySendError::Full(l)) => line = Some(l),
                        }
                    }
                })
                .await;
                match queued {
                    Some(true) => Queued::After(start.elapsed()),
                    Some(false) => Queued::Closed,
                    None => Queued::TimedOut,
                }
            }
        }
    }

    /// Queues a notification (or a response) without waiting; dropped if the queue is
    /// full or the process is gone.
    pub fn notify(&self, msg: &Message) {
        if self.try_queue(line_of(msg)).is_err() {
            self.warn_limited(
                Warned::StdinFull,
                &format!(
                    "backend {:?}: stdin queue full or closed; dropped a {}",
                    self.name,
                    msg.method().unwrap_or("response")
                ),
            );
        }
    }

    /// A warning about what the process does, at most once per
    /// [`BACKEND_WARN_INTERVAL`]; the ones held back meanwhile are counted in the next.
    /// (A backend that writes garbage without pause made 2.9 million warnings in
    /// 40 s, 730 MB of log.)
    pub(crate) fn warn_limited(&self, kind: Warned, msg: &str) {
        let throttle = &self.warned[kind as usize];
        match throttle.pass(Instant::now(), BACKEND_WARN_INTERVAL) {
            // The first held back only (`tally_later` ignores the rest): a flood of
            // them copies no text.
            None if throttle.held() == 1 => {
                let first = msg.to_string();
                rt::tally_later(throttle, BACKEND_WARN_INTERVAL, move |n| {
                    log::warn!("{n} warning(s) about a backend process held back since the last one; the first of them: {first}")
                });
            }
            None => {}
            Some(0) => log::warn!("{msg}"),
            Some(n) => log::warn!("{msg} ({n} more such warnings about this process held back)"),
        }
    }

    /// Sends a message, waiting for room in the stdin queue at most the backend's request
    /// timeout; dropped (and logged) after that.
    pub async fn send(&self, msg: &Message) {
        if let Queued::TimedOut = self.queue(line_of(msg), self.timeout).await {
            log::warn!(
                "backend {:?}: stdin queue full for {} ms; dropped a {}",
                self.name,
                self.timeout.as_millis(),
                msg.method().unwrap_or("response")
            );
        }
    }

    /// Forgets a request the client cancelled; its late response will be dropped.
    pub fn forget(&self, id: u64) -> bool {
        let Some(p) = self.pending.borrow_mut().remove(id) else {
            return false;
        };
        if let Some(t) = p.token {
            self.progress.borrow_mut().remove(&t);
        }
        true
    }

    /// Drops every pending request of a session that ended, telling the backend.
    pub fn cancel_session(&self, session: u64) {
        let gone = self
            .pending
            .borrow_mut()
            .remove_where(|p| p.session == session);
        for (id, p) in gone {
            if let Some(t) = p.token {
                self.progress.borrow_mut().remove(&t);
            }
            self.notify(&Message::notification(
                "notifications/cancelled",
                Some(json!({ "requestId": id, "reason": "client disconnected" })),
            ));
        }
    }

    fn swap_progress_token(
        &self,
        session: u64,
        msg: &mut Message,
    ) -> Option<(String, Rc<Cell<Instant>>)> {
        let original = msg.meta()?.get("progressToken")?.clone();
        let n = self.next_token.get();
        self.next_token.set(n + 1);
        let ours = format!("gw-{n}");
        msg.meta_mut()
            .insert("progressToken".into(), Value::String(ours.clone()));
        let heard = Rc::new(Cell::new(Instant::now()));
        self.progress
            .borrow_mut()
            .insert(ours.clone(), (session, original, heard.clone()));
        Some((ours, heard))
    }

    /// One of its requests to a client was given up on, unanswered.
    pub fn client_gave_up(&self) {
        self.client_give_ups.set(self.client_give_ups.get() + 1);
    }

    /// Counts a request of this process's to `session`'s client until dropped.
    pub fn asking(&self, session: u64) -> Asking {
        *self.asking.borrow_mut().entry(session).or_insert(0) += 1;
        Asking(self.asking.clone(), session)
    }

    /// For a `notifications/progress` from the backend: the session it belongs to, with
    /// the client's own token put back.
    fn restore_progress_token(&self, msg: &mut Message) -> Option<u64> {
        let ours = msg.param_str("progressToken")?.to_string();
        let (session, original, heard) = self.progress.borrow().get(&ours).cloned()?;
        heard.set(Instant::now());
        msg.params_mut().insert("progressToken".into(), original);
        Some(session)
    }

    /// The sessions with a request pending here in `trace` (one walk of the table,
    /// whatever the number of sessions asked about after).
    fn sessions_in_trace(&self, trace: TraceId) -> Vec<u64> {
        let mut found: Vec<u64> = Vec::new();
        for (_, p) in self.pending.borrow().iter() {
            if p.trace == trace && p.session != 0 && !found.contains(&p.session) {
                found.push(p.session);
            }
        }
        found
    }

    /// The request pending here that a request of the backend's most likely comes
    /// from, as its session and the span it was sent under: the most recent one in
    /// `trace` (the trace of the context the backend sent, if any: a backend with an
    /// OpenTelemetry SDK asks within the trace of the request it works on), else the
    /// most recent one. With `session`, only that session's requests count.
    fn asked_for(&self, trace: Option<TraceId>, session: Option<u64>) -> Option<(u64, Cx)> {
        let pending = self.pending.borrow();
        let latest = |in_trace: bool| {
            pending
                .iter()
                .filter(|(_, p)| p.session != 0 && session.is_none_or(|s| s == p.session))
                .filter(|(_, p)| !in_trace || Some(p.trace) == trace)
                .max_by_key(|(id, _)| *id)
                .map(|(_, p)| (p.session, p.span.clone()))
        };
        trace.and_then(|_| latest(true)).or_else(|| latest(false))
    }
}

/// Whom a request to a backend is for: a session (0: the gateway itself), and the
/// span it goes under, if traced.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub session: u64,
    pub span: Option<&'a Cx>,
}

impl Caller<'static> {
    /// The gateway's own requests (`initialize`, a restore's subscriptions).
    pub const GATEWAY: Caller<'static> = Caller {
        session: 0,
        span: None,
    };
}

/// A progress token's session, the client's own token, and when the backend last
/// reported progress under it.
type ProgressEntry = (u64, Value, Rc<Cell<Instant>>);

/// What a request to a backend comes to.
type Outcome = Result<Reply, BackendError>;

/// A request of a backend process to a client, counted until it is answered or
/// dropped ([`Proc::asking`]).
pub struct Asking(Rc<RefCell<HashMap<u64, usize>>>, u64);

impl Drop for Asking {
    fn drop(&mut self) {
        let mut asking = self.0.borrow_mut();
        if let Some(n) = asking.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                asking.remove(&self.1);
            }
        }
    }
}

/// A request whose backend keeps reporting progress on it, or asks a client
/// something meanwhile, waits past `request_timeout`, but never longer than this many
/// times it in all (MCP: progress may extend a timeout; a maximum is still kept).
pub const REQUEST_TIMEOUT_MAX_FACTOR: u32 = 10;

/// What a rate-limited warning about a process is about (`Proc::warn_limited`).
#[derive(Clone, Copy)]
pub(crate) enum Warned {
    Invalid = 0,
    StdinFull = 1,
    TooLong = 2,
    Unmatched = 3,
    /// Entries of a listing left out (`Session::list_one`): every client's listing
    /// would repeat it.
    Listing = 4,
}

/// How often one process's repeated warnings (invalid lines, a full stdin queue) may
/// reach the log.
pub const BACKEND_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Removes a pending entry when a request is abandoned (timeout or cancellation).
struct PendingGuard<'a> {
    proc: &'a Proc,
    id: u64,
    /// Once the request is sent: tell the backend it is cancelled if it is abandoned
    /// while still pending (its caller cannot: a listing, a broadcast).
    cancel: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        // Still pending: nobody else (an answer, the session's end, the exit) took it.
        if self.proc.forget(self.id) && self.cancel {
            self.proc.notify(&Message::notification(
                "notifications/cancelled",
                Some(json!({
                    "requestId": self.id,
                    "reason": "the client cancelled the request that needed it"
                })),
            ));
        }
    }
}

/// One configured backend for its owner(s).
pub struct Slot {
    /// Its configuration.
    pub cfg: Rc<BackendConfig>,
    /// Its request timeout.
    pub timeout: Duration,
    max_message_bytes: usize,
    proc: RefCell<Option<Rc<Proc>>>,
    start_lock: async_lock::Mutex<()>,
    failures: Cell<u32>,
    next_start: Cell<Option<Instant>>,
    /// Sessions that use this slot (one for per_client).
    sessions: RefCell<Vec<Weak<Session>>>,
    /// Processes started so far (the second and later are restarts).
    starts: Cell<u64>,
    /// Subscriptions of closed sessions to end at the backend, and whether a task is
    /// ending them ([`Slot::release_subscriptions`]).
    to_release: RefCell<BTreeSet<String>>,
    releasing: Cell<bool>,
    /// A task is starting the backend again after it exited ([`Slot::revive`]).
    reviving: Cell<bool>,
    /// Processes that closed stdout and have not exited yet ([`Slot::on_gone`]): no
    /// longer the slot's process, but `stop` still waits for them.
    leaving: RefCell<Vec<Rc<Proc>>>,
    /// The process `start` is starting, until it returns it.
    starting: RefCell<Option<Rc<Proc>>>,
    /// A client notification for every backend (`notifications/roots/list_changed`)
    /// came while a process was being started: it is sent once that process is ready
    /// ([`Slot::notify_or_hold`]). The last one of each method is kept.
    held_notifications: RefCell<Vec<Message>>,
    /// Set by `stop`: nothing starts any more, and a start in progress is undone.
    stopped: Cell<bool>,
    /// Start attempts finished so far, and the last one's error: callers that waited
    /// through an attempt take its outcome instead of making one of their own.
    attempts: Cell<u64>,
    last_error: RefCell<Option<BackendError>>,
    /// The `level` of the last `logging/setLevel` the backend accepted from a client
    /// (any session, for a shared backend: the last one is what the process had).
    log_level: RefCell<Option<Value>>,
    metrics: Rc<Metrics>,
}

impl Slot {
    /// A slot that starts nothing until first needed.
    pub fn new(
        cfg: Rc<BackendConfig>,
        timeout: Duration,
        max_message_bytes: usize,
        metrics: Rc<Metrics>,
    ) -> Rc<Slot> {
        Rc::new(Slot {
            starts: Cell::new(0),
            log_level: RefCell::new(None),
            to_release: RefCell::new(BTreeSet::new()),
            releasing: Cell::new(false),
            reviving: Cell::new(false),
            leaving: RefCell::new(Vec::new()),
            starting: RefCell::new(None),
            held_notifications: RefCell::new(Vec::new()),
            stopped: Cell::new(false),
            attempts: Cell::new(0),
            last_error: RefCell::new(None),
            metrics,
            cfg,
            timeout,
            max_message_bytes,
            proc: RefCell::new(None),
            start_lock: async_lock::Mutex::new(()),
            failures: Cell::new(0),
            next_start: Cell::new(None),
            sessions: RefCell::new(Vec::new()),
        })
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// True for `session = "shared"`.
    pub fn is_shared(&self) -> bool {
        self.cfg.session == SessionMode::Shared
    }

    /// Registers a session as a user of this slot.
    pub fn attach(&self, s: &Rc<Session>) {
        let mut v = self.sessions.borrow_mut();
        v.retain(|w| w.strong_count() > 0);
        if !v.iter().any(|w| w.as_ptr() == Rc::as_ptr(s)) {
            v.push(Rc::downgrade(s));
        }
    }

    /// Ends at the backend the subscriptions to `uris` (those of a session that ended,
    /// or one whose every subscribe was refused) that no attached session holds: the
    /// backend would go on watching those resources, and sending their updates, for no
    /// one. The URIs join the slot's set
    /// of subscriptions to release (so many sessions ending at once, or a backend that
    /// answers slowly, make one set, not a queue of tasks); one task per slot releases
    /// them, after any start in progress (whose restore may be subscribing to them),
    /// at most [`RESTORE_WINDOW`] requests unanswered, each URI checked again when its
    /// turn comes (a session may have subscribed since).
    pub fn release_subscriptions(self: &Rc<Self>, uris: Vec<String>) {
        if uris.is_empty() {
            return;
        }
        self.to_release.borrow_mut().extend(uris);
        if self.releasing.replace(true) {
            return;
        }
        let slot = self.clone();
        rt::spawn(async move {
            loop {
                drop(slot.start_lock.lock().await);
                let uris = std::mem::take(&mut *slot.to_release.borrow_mut());
                let Some(proc) = slot.running().filter(|_| !uris.is_empty()) else {
                    slot.releasing.set(false);
                    return;
                };
                let total = uris.len();
                let asks = uris.into_iter().map(|uri| Ask {
                    method: "resources/unsubscribe",
                    params: json!({ "uri": uri }),
                    uri: Some(uri),
                });
                let weak = Rc::downgrade(&slot);
                let unheld = move |ask: &Ask| {
                    let uri = ask.uri.as_deref().unwrap_or_default();
                    weak.upgrade()
                        .is_some_and(|s| !s.sessions().iter().any(|s| s.is_subscribed(uri)))
                };
                let t = ask_all(&proc, asks.collect(), Rc::new(unheld), slot.timeout, None).await;
                if t.refused == 0 && t.finished {
                    log::debug!(
                        "backend {:?}: released {} subscription(s) no session holds ({} still held)",
                        slot.name(),
                        t.answered,
                        t.skipped
                    );
                } else {
                    log::warn!(
                        "backend {:?}: could not release {} of {total} subscription(s) no session holds{}",
                        slot.name(),
                        total - t.skipped - (t.answered - t.refused),
                        t.why()
                    );
                }
            }
        })
        .detach();
    }

    /// Unregisters a session; its pending requests are cancelled at the backend.
    pub fn detach(&self, session: u64) {
        self.sessions
            .borrow_mut()
            .retain(|w| w.upgrade().is_some_and(|s| s.id() != session));
        if let Some(p) = self.running() {
            p.cancel_session(session);
        }
    }

    /// Notes a log level the backend accepted, to set again on a restarted process.
    pub fn record_log_level(&self, level: Value) {
        *self.log_level.borrow_mut() = Some(level);
    }

    /// The sessions attached to this slot.
    pub fn sessions(&self) -> Vec<Rc<Session>> {
        self.sessions
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Sends a client's notification for every backend (`notifications/roots/list_changed`)
    /// to the running process. One being started gets it once it is ready: it may
    /// already have asked for what changed (a server asks for the roots after
    /// `initialized`), and dropping the notice would leave it with the old answer. With
    /// no process at all nothing is kept: the next one starts afresh.
    pub fn notify_or_hold(&self, msg: &Message) {
        if let Some(p) = self.running() {
            p.notify(msg);
        } else if self.starting.borrow().is_some() {
            let mut held = self.held_notifications.borrow_mut();
            held.retain(|m| m.method() != msg.method());
            if held.len() < MAX_HELD_NOTIFICATIONS {
                held.push(msg.clone());
            } else {
                log::warn!(
                    "backend {:?}: a {} notification came while it starts, beyond the {} \
                     kinds held for it: dropped",
                    self.name(),
                    msg.method().unwrap_or_default(),
                    MAX_HELD_NOTIFICATIONS
                );
            }
        }
    }

    /// The running process, if any.
    pub fn running(&self) -> Option<Rc<Proc>> {
        self.proc.borrow().clone().filter(|p| p.is_alive())
    }

    /// The running, initialized process, starting it if needed (after the restart delay).
    ///
    /// A start runs in a task of its own: a caller that goes away (its request
    /// cancelled, its session ended) does not abandon a start that other callers wait
    /// for, and whatever comes of it is the slot's. Only `stop` undoes one.
    pub async fn ensure(
        self: &Rc<Self>,
        client_caps: &Value,
        version: &str,
        tel: &Telemetry,
        cx: &Cx,
    ) -> Result<Rc<Proc>, BackendError> {
        if let Some(p) = self.running() {
            return Ok(p);
        }
        let (tx, rx) = oneshot::channel();
        let (slot, caps, version) = (self.clone(), client_caps.clone(), version.to_string());
        let (tel, cx, seen) = (tel.clone(), cx.clone(), self.attempts.get());
        rt::spawn(async move {
            let _ = tx.send(slot.ensure_started(&caps, &version, &tel, &cx, seen).await);
        })
        .detach();
        rx.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    fn stopped_error(&self) -> BackendError {
        BackendError::Start {
            backend: self.name().to_string(),
            reason: "the backend is being stopped".into(),
        }
    }

    /// [`Self::ensure`]'s start, one at a time. `seen` is the number of attempts
    /// finished when the caller came: if one has finished since, the caller waited
    /// through it and takes its outcome (one attempt serves every caller waiting for
    /// it, and callers that went away start nothing).
    async fn ensure_started(
        self: &Rc<Self>,
        client_caps: &Value,
        version: &str,
        tel: &Telemetry,
        cx: &Cx,
        seen: u64,
    ) -> Result<Rc<Proc>, BackendError> {
        let _guard = match self.start_lock.try_lock() {
            Some(g) => g,
            None => {
                log::debug!(
                    "backend {:?}: waiting for the start in progress",
                    self.name()
                );
                self.start_lock.lock().await
            }
        };
        if let Some(p) = self.running() {
            return Ok(p);
        }
        if self.stopped.get() {
            return Err(self.stopped_error());
        }
        if self.attempts.get() != seen {
            if let Some(e) = self.last_error.borrow().clone() {
                return Err(e);
            }
        }
        if let Some(at) = self.next_start.get() {
            if at > Instant::now() {
                log::info!(
                    "backend {:?}: restarting in {} ms",
                    self.name(),
                    (at - Instant::now()).as_millis()
                );
                async_io::Timer::at(at).await;
                if self.stopped.get() {
                    log::info!(
                        "backend {:?}: restart dropped: stopped meanwhile",
                        self.name()
                    );
                    return Err(self.stopped_error());
                }
            }
        }
        let started = Instant::now();
        let span = tel.start("backend.connect", SpanKind::Client, cx, |a| {
            attrs::gateway_route(a, self.name(), "stdio", None);
            let pool = if self.is_shared() {
                "shared"
            } else {
                "per_client"
            };
            attrs::connection_pool(a, pool, 1, 0, 0);
            a.str("process.executable.name", &self.cfg.command);
            a.str("network.transport", "pipe");
        });
        let result = self.start(client_caps, version, &span).await;
        self.attempts.set(self.attempts.get() + 1);
        *self.last_error.borrow_mut() = result.as_ref().err().cloned();
        match &result {
            Ok(_) => {}
            Err(e) => telemetry::fail(&span, e.kind(), &e.to_string()),
        }
        span.end();
        match result {
            Ok(p) if self.stopped.get() => {
                // `stop` came while it started: stop it (it may have killed it already).
                p.stopping.set(true);
                p.close_stdin();
                p.kill();
                Err(self.stopped_error())
            }
            Ok(p) => {
                *self.proc.borrow_mut() = Some(p.clone());
                log::info!(
                    "backend {:?} ready in {} ms",
                    self.name(),
                    started.elapsed().as_millis()
                );
                for msg in self.held_notifications.take() {
                    p.notify(&msg);
                }
                Ok(p)
            }
            Err(e) if self.stopped.get() => Err(e),
            Err(e) => {
                // The next process starts afresh.
                self.held_notifications.take();
                self.record_failure(Duration::ZERO);
                log::error!("backend {:?}: start failed: {e}", self.name());
                Err(e)
            }
        }
    }

    fn record_failure(&self, uptime: Duration) {
        let n = if uptime >= STABLE_UPTIME {
            1
        } else {
            self.failures.get().saturating_add(1)
        };
        self.failures.set(n);
        self.next_start.set(Some(Instant::now() + backoff(n)));
    }

    async fn start(
        self: &Rc<Self>,
        client_caps: &Value,
        version: &str,
        span: &Cx,
    ) -> Result<Rc<Proc>, BackendError> {
        let cfg = &self.cfg;
        // A process group of its own: a helper it starts (a browser, a language server,
        // `npx`'s child) holding its stdout or stderr goes with it when it exits or is
        // stopped; otherwise its pipes never close, and its end is never seen.
        let own_group = own_process_groups();
        let mut cmd = {
            use std::os::unix::process::CommandExt as _;
            let mut std_cmd = std::process::Command::new(&cfg.command);
            if own_group {
                std_cmd.process_group(0);
            }
            Command::from(std_cmd)
        };
        cmd.args(&cfg.args)
            .envs(&cfg.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .kill_on_drop(true);
        if let Some(dir) = &cfg.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| BackendError::Start {
            backend: cfg.name.clone(),
            reason: format!("{}: {e}", cfg.command),
        })?;
        let child_pid = child.id();
        if self.starts.replace(self.starts.get() + 1) > 0 {
            self.metrics.backend_restarted(&cfg.name);
        }
        self.metrics.backend_up(&cfg.name, true);
        log::info!(
            "backend {:?}: started {} (pid {child_pid})",
            cfg.name,
            cfg.command,
        );
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        // Close-on-exec, like every descriptor of ours: a backend started later must not
        // inherit it (this backend would then never see its stdin's end).
        let stdin_watch = RefCell::new(rustix::io::fcntl_dupfd_cloexec(&stdin, 0).ok());
        let group = rustix::process::Pid::from_raw(child_pid as i32);
        let (status_tx, status_rx) = oneshot::channel();
        let reaped = Rc::new(Cell::new(false));
        rt::spawn(watch_exit(
            child,
            group.filter(|_| own_group),
            reaped.clone(),
            status_tx,
        ))
        .detach();
        let (in_tx, in_rx) = async_channel::bounded(STDIN_QUEUE);
        let (exit_tx, exit_rx) = async_channel::bounded::<()>(1);
        let name: Rc<str> = cfg.name.as_str().into();
        let room = Rc::new(event_listener::Event::new());
        let stdin_bytes = Rc::new(Cell::new(0));
        let proc = Rc::new(Proc {
            name: name.clone(),
            stdin: in_tx,
            stdin_bytes: stdin_bytes.clone(),
            room: room.clone(),
            pending: RefCell::new(IdMap::new(MAX_PENDING_PER_PROCESS)),
            progress: RefCell::new(HashMap::new()),
            asking: Rc::default(),
            shared: cfg.session == SessionMode::Shared,
            client_give_ups: Cell::new(0),
            next_token: Cell::new(1),
            caps: RefCell::new(Value::Null),
            instructions: RefCell::new(None),
            alive: Cell::new(true),
            stdin_watch,
            reaped,
            silent_after_exit: Cell::new(false),
            group,
            own_group,
            exited: exit_rx,
            exit_status: RefCell::new(None),
            stopping: Cell::new(false),
            metrics: self.metrics.clone(),
            warned: Default::default(),
            timeout: self.timeout,
        });
        // Until `start` returns it, `stop` finds it here.
        *self.starting.borrow_mut() = Some(proc.clone());
        let _starting = Starting(self);
        rt::spawn(write_stdin(
            stdin,
            in_rx,
            (room, stdin_bytes),
            Rc::downgrade(&proc),
        ))
        .detach();
        rt::spawn(log_stderr(name, stderr)).detach();
        rt::spawn(read_stdout(
            Rc::downgrade(self),
            proc.clone(),
            stdout,
            self.max_message_bytes,
            (exit_tx, status_rx),
        ))
        .detach();

        span.set_attributes(|a| a.int("process.pid", i64::from(child_pid)));
        let mut init = Message::request(
            Id::from(0),
            "initialize",
            Some(json!({
                "protocolVersion": version,
                "capabilities": client_caps,
                "clientInfo": { "name": "mcp-gateway", "version": mcp_shared::VERSION },
            })),
        );
        propagation::inject_message(span, &mut init);
        let resp = match proc
            .request(
                Caller::GATEWAY,
                init,
                self.timeout,
                None,
                ReadAs::Whole,
                false,
            )
            .await
        {
            Ok(r) => r.into_message(),
            Err(e) => {
                proc.kill();
                // No answer, or one that could not be taken, is a failed initialize
                // (-32000, what the client's request waited for), not a bad answer to
                // the client's own request.
                return Err(match e {
                    BackendError::Timeout { .. }
                    | BackendError::InvalidResponse { .. }
                    | BackendError::ResponseTooLarge { .. } => BackendError::Initialize {
                        backend: cfg.name.clone(),
                        reason: e.to_string(),
                    },
                    other => other,
                });
            }
        };
        match resp.into_outcome() {
            Ok(result) if !result.is_object() => {
                proc.kill();
                return Err(BackendError::Initialize {
                    backend: cfg.name.clone(),
                    reason: format!(
                        "its initialize result is not an object: {}",
                        mcp_shared::mcp::brief(&result)
                    ),
                });
            }
            Ok(result) => {
                if !result.get("capabilities").is_some_and(Value::is_object) {
                    log::warn!(
                        "backend {:?}: its initialize result has no \"capabilities\" object; taken as none (its tools, prompts and resources are not listed)",
                        cfg.name
                    );
                }
                *proc.caps.borrow_mut() = result.get("capabilities").cloned().unwrap_or(json!({}));
                *proc.instructions.borrow_mut() = result
                    .get("instructions")
                    .and_then(Value::as_str)
                    .filter(|i| !i.trim().is_empty())
                    .map(str::to_string);
                let agreed = result.get("protocolVersion").and_then(Value::as_str);
                if agreed.is_some_and(|v| v != version) {
                    // It is not translated: the client and this backend each speak
                    // their own version through the gateway.
                    log::warn!(
                        "backend {:?} answered initialize with protocol version {:?}, not the client's {version:?}; messages pass as they are",
                        cfg.name,
                        agreed.unwrap_or_default()
                    );
                }
            }
            Err(err) => {
                proc.kill();
                return Err(BackendError::Initialize {
                    backend: cfg.name.clone(),
                    reason: err
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error response")
                        .to_string(),
                });
            }
        }
        proc.send(&Message::notification("notifications/initialized", None))
            .await;
        self.restore(&proc, span).await;
        if !proc.is_alive() {
            // It died on what the restore sent it: a failed start (counted, so the next
            // one waits its backoff), not a ready process.
            return Err(proc.exited_error());
        }
        Ok(proc)
    }

    /// Sets on a new process what clients had set on the one before it: the last log
    /// level a client set (`logging/setLevel`) and the resource subscriptions of the
    /// sessions attached to the slot (those still awaiting their answer included),
    /// each where the backend announces the capability. Without this a crash would
    /// silently end a client's subscriptions and reset its log level.
    ///
    /// `start` waits for it, so the requests that waited for the restart reach the
    /// backend after it; at most [`RESTORE_WINDOW`] of its requests are unanswered at a
    /// time (the pending table stays the clients'), a subscription is sent only if a
    /// session still holds it when its turn comes, and it all stops after the
    /// backend's request timeout (a backend that does not answer delays the waiting
    /// requests by that much, once). One log line says how it went.
    async fn restore(self: &Rc<Self>, proc: &Rc<Proc>, span: &Cx) {
        let caps = proc.capabilities();
        let mut asks = VecDeque::new();
        let level = self.log_level.borrow().clone();
        if let (true, Some(level)) = (mcp::has_capability(&caps, "logging"), level) {
            asks.push_back(Ask {
                method: "logging/setLevel",
                params: json!({ "level": level }),
                uri: None,
            });
        }
        let mut missed = Vec::new();
        if caps.pointer("/resources/subscribe") == Some(&Value::Bool(true)) {
            let sessions = self.sessions();
            let held: BTreeSet<String> = sessions
                .iter()
                .flat_map(|s| s.subscriptions_to(self.name()))
                .collect();
            // Who may have missed an update: a session whose subscribe of the URI an
            // earlier process accepted (one still in flight, or refused, missed
            // nothing: it may even be what started this process).
            missed = sessions
                .iter()
                .map(|s| (Rc::downgrade(s), s.accepted_subscriptions_to(self.name())))
                .filter(|(_, uris)| !uris.is_empty())
                .collect();
            asks.extend(held.into_iter().map(|uri| Ask {
                method: "resources/subscribe",
                params: json!({ "uri": uri }),
                uri: Some(uri),
            }));
        }
        let total = asks.len();
        if total == 0 {
            return;
        }
        let weak = Rc::downgrade(self);
        let held = move |ask: &Ask| match &ask.uri {
            None => true,
            Some(uri) => weak
                .upgrade()
                .is_some_and(|s| s.sessions().iter().any(|s| s.is_subscribed(uri))),
        };
        let t = ask_all(proc, asks, Rc::new(held), self.timeout, Some(span)).await;
        if proc.is_alive() {
            self.announce_missed_updates(missed);
        }
        let restored = t.answered - t.refused;
        if t.finished && t.refused == 0 {
            log::info!(
                "backend {:?}: restored {restored} setting(s) clients had made (log level, subscriptions)",
                self.name()
            );
        } else {
            log::warn!(
                "backend {:?}: could not restore {} of {total} setting(s) clients had made{}",
                self.name(),
                total - t.skipped - restored,
                t.why()
            );
        }
    }

    /// Sends each session of `missed` `notifications/resources/updated` for each of its
    /// URIs that it still holds here: between the old process's end and the new one's
    /// subscribe, the resource may have changed with no one to say so. A client
    /// re-reads what it is told changed; one told needlessly reads the same content
    /// again. (A subscription the new process refused is announced too, and stays
    /// recorded, to be asked again at the next restart.) In a task of its own, after
    /// the restore: a slow client does not hold up the start.
    fn announce_missed_updates(&self, missed: Vec<(Weak<Session>, Vec<String>)>) {
        if missed.is_empty() {
            return;
        }
        let (name, shared) = (self.cfg.name.clone(), self.is_shared());
        rt::spawn(async move {
            for (s, uris) in missed {
                let Some(s) = s.upgrade() else { continue };
                for uri in uris {
                    if !s.is_subscribed_on(&uri, &name) {
                        continue;
                    }
                    let line = Message::notification(
                        "notifications/resources/updated",
                        Some(json!({ "uri": uri })),
                    )
                    .to_text();
                    s.deliver(line, !shared).await;
                }
            }
        })
        .detach();
    }

    /// Stops the process: close stdin, wait up to `grace`, then kill.
    pub async fn stop(&self, grace: Duration) {
        self.stopped.set(true);
        let starting = self.starting.borrow_mut().take();
        if let Some(p) = starting {
            // Still being started (its restore may be waiting on it): its start fails.
            log::info!("backend {:?}: stopped while starting", self.name());
            p.stopping.set(true);
            p.close_stdin();
            p.kill();
        }
        // Every process of the slot that has not exited is waited for: this call's
        // running one (its stdin closed), those that closed stdout (their readers kill
        // them at EXIT_WAIT), and those an earlier stop still waits for. A second
        // stop (a session's end racing the shutdown) that returned at once would let
        // the gateway exit with the first one's process still running. One deadline
        // for all; then what is left is killed. Processes that ended on their own are
        // not marked as stopping: their exit is logged as theirs.
        let running = self.proc.borrow_mut().take();
        if let Some(p) = &running {
            p.stopping.set(true);
            p.close_stdin();
            self.leaving.borrow_mut().push(p.clone());
        }
        let waiting: Vec<Rc<Proc>> = self.leaving.borrow().clone();
        let deadline = Instant::now() + grace;
        for p in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            if rt::timeout(left, p.exited.recv()).await.is_some() {
                continue;
            }
            // One that closed stdout on its own is its reader's to kill (it holds the
            // child, and does at EXIT_WAIT): only waited for, with no warning.
            if p.stopping.get() {
                log::warn!(
                    "backend {:?} did not exit within {} ms of being stopped; killing it",
                    self.name(),
                    grace.as_millis()
                );
                p.kill();
            }
            let _ = rt::timeout(EXIT_WAIT, p.exited.recv()).await;
        }
    }

    /// Called by the stdout reader as soon as the process closed stdout, before its
    /// exit status is collected (up to [`EXIT_WAIT`] later): it is no longer the slot's
    /// process, and its end counts toward the backoff now. Counted only at the exit, a
    /// request in between started a new process at once and the late count found
    /// another process current and was skipped, so a backend that lingers after
    /// closing stdout was restarted at every request with no backoff.
    /// Until it has exited it is one of the slot's `leaving`, which `stop` waits for:
    /// any process, also one still being started (its reader has taken the child, so
    /// no one else can kill it; the reader does at EXIT_WAIT).
    fn on_gone(&self, proc: &Rc<Proc>, uptime: Duration) {
        let mut leaving = self.leaving.borrow_mut();
        if !leaving.iter().any(|p| Rc::ptr_eq(p, proc)) {
            leaving.push(proc.clone());
        }
        drop(leaving);
        let mut cur = self.proc.borrow_mut();
        if cur.as_ref().is_some_and(|p| Rc::ptr_eq(p, proc)) {
            *cur = None;
            drop(cur);
            self.record_failure(uptime);
        }
    }

    /// Called by the stdout reader when the process has exited (after [`Self::on_gone`]
    /// and failing what was pending on it).
    fn on_exit(self: &Rc<Self>, proc: &Rc<Proc>) {
        self.leaving.borrow_mut().retain(|p| !Rc::ptr_eq(p, proc));
        for s in self.sessions() {
            s.forget_server_requests(proc);
        }
        if !proc.stopping.get() {
            self.revive();
        }
    }

    /// The first attached session holding a subscription on this backend, if any.
    fn subscriber(&self) -> Option<Rc<Session>> {
        self.sessions()
            .into_iter()
            .find(|s| !s.subscriptions_to(self.name()).is_empty())
    }

    /// After the running process exited on its own: if attached sessions hold
    /// subscriptions on it, starts it again now (after the usual backoff), not at the
    /// next request. Only a running process can send their updates, and a client
    /// that only listens sends none. One task per slot, which goes on until a process
    /// runs, the slot is stopped, or no session holds a subscription any more (checked
    /// again after each backoff): a process that dies right after its start, before
    /// the task has seen it ready, is started again too. The task holds no session
    /// (a client that goes away is not kept for it): each start takes the
    /// capabilities and protocol version of a session holding a subscription then, as
    /// a request of that session would.
    fn revive(self: &Rc<Self>) {
        if self.stopped.get() || self.subscriber().is_none() || self.reviving.replace(true) {
            return;
        }
        let slot = self.clone();
        rt::spawn(async move {
            while !slot.stopped.get() && slot.running().is_none() {
                if let Some(at) = slot.next_start.get().filter(|at| *at > Instant::now()) {
                    async_io::Timer::at(at).await;
                    continue; // everything may have changed meanwhile
                }
                let Some((caps, version, tel)) = slot.subscriber().map(|s| s.start_params())
                else {
                    log::info!(
                        "backend {:?}: not started again: no session holds a subscription on it any more",
                        slot.name()
                    );
                    break;
                };
                log::info!(
                    "backend {:?}: starting it again for the subscriptions clients hold",
                    slot.name()
                );
                // Its failure is logged and backed off by the start itself.
                let _ = slot.ensure(&caps, version, &tel, &Cx::default()).await;
            }
            slot.reviving.set(false);
        })
        .detach();
    }

    /// Routes a message the backend sent on its own (request or notification).
    async fn on_backend_message(self: &Rc<Self>, proc: &Rc<Proc>, mut msg: Message) {
        let sessions = self.sessions();
        match msg.kind() {
            Kind::Request => {
                // The session whose request the backend is most likely working on,
                // and that request's span: the one in the trace of the context the
                // backend sent, if any, else the most recent one.
                let only = match self.is_shared() {
                    true => None,
                    false => sessions.first().map(|s| s.id()),
                };
                let own = propagation::extract_message(&msg);
                let trace = propagation::has_span(&own).then(|| own.span_context().trace_id());
                let latest = proc.asked_for(trace, only);
                let target = latest
                    .as_ref()
                    .and_then(|(id, _)| sessions.iter().find(|s| s.id() == *id))
                    .or(sessions.first())
                    .cloned();
                match target {
                    Some(s) => {
                        // A backend that sends trace context of its own is followed;
                        // otherwise what it asks goes in that request's trace. A shared
                        // backend's context is followed only into a session with a
                        // request in its trace: another session's client is not handed
                        // that trace (with tracing off here, it would go as written).
                        let foreign = self.is_shared()
                            && trace.is_some_and(|t| !proc.sessions_in_trace(t).contains(&s.id()));
                        if foreign {
                            strip_trace_context(&mut msg);
                        }
                        let parent = if propagation::has_span(&own) && !foreign {
                            own
                        } else {
                            latest
                                .filter(|(id, _)| *id == s.id())
                                .map(|(_, span)| span)
                                .unwrap_or_default()
                        };
                        s.relay_server_request(proc, msg, !self.is_shared(), &parent)
                            .await
                    }
                    None => {
                        let id = msg.id();
                        let e = SessionError::NoClientSession.to_rpc_error();
                        proc.notify(&Message::error_response(id, e));
                    }
                }
            }
            Kind::Notification => {
                let method = msg.method().unwrap_or_default().to_string();
                if method == "notifications/progress" {
                    if let Some(sid) = proc.restore_progress_token(&mut msg) {
                        if let Some(s) = sessions.iter().find(|s| s.id() == sid) {
                            s.deliver(msg.to_text(), !self.is_shared()).await;
                        }
                    }
                    return;
                }
                if method == "notifications/cancelled" {
                    // The backend cancels one of its own requests to a client.
                    for s in &sessions {
                        s.relay_server_cancel(proc, &msg).await;
                    }
                    return;
                }
                let uri = (method == "notifications/resources/updated")
                    .then(|| msg.param_str("uri").map(str::to_string))
                    .flatten();
                let log_level = (method == "notifications/message")
                    .then(|| msg.param_str("level").map(str::to_string))
                    .flatten();
                let line = msg.to_text();
                // A shared backend's notification in the trace of one session's request
                // (a backend with an OpenTelemetry SDK sends its context) keeps that
                // context for the sessions with a request pending in the trace only:
                // the others get it without, not another client's trace ids.
                let trace = self
                    .is_shared()
                    .then(|| msg.trace_context())
                    .flatten()
                    .and_then(|(parent, _)| propagation::parse_traceparent(parent))
                    .map(|(trace, _, _)| trace);
                let owners = trace.map(|t| proc.sessions_in_trace(t)).unwrap_or_default();
                let mut untraced = None;
                for s in &sessions {
                    if !s.wants_log(log_level.as_deref()) {
                        // Below the level this session set (a shared backend logs at
                        // the most verbose level of its sessions).
                        continue;
                    }
                    if let Some(u) = &uri {
                        // Every backend: a client that unsubscribed stops getting the
                        // updates at once, whatever the backend answered.
                        if !s.wants_update(u, self.name()) {
                            continue;
                        }
                    }
                    let text = if trace.is_some() && !owners.contains(&s.id()) {
                        untraced
                            .get_or_insert_with(|| {
                                let mut m = msg.clone();
                                strip_trace_context(&mut m);
                                m.to_text()
                            })
                            .clone()
                    } else {
                        line.clone()
                    };
                    s.deliver(text, !self.is_shared()).await;
                }
            }
            Kind::Response => unreachable!("responses are matched before"),
        }
    }
}

/// Takes the `traceparent` and `tracestate` out of `msg`'s `params._meta` (and `_meta`
/// itself when nothing else was in it).
fn strip_trace_context(msg: &mut Message) {
    if msg.meta().is_none() && msg.trace_context().is_none() {
        return;
    }
    let meta = msg.meta_mut();
    meta.remove("traceparent");
    meta.remove("tracestate");
    if meta.is_empty() {
        msg.params_mut().remove("_meta");
    }
}

/// Whether nothing holds the read end of the pipe whose write end is `fd` (a backend's
/// stdin): the pipe reports an error to a writer then.
fn no_reader(fd: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(fd, PollFlags::OUT)];
    match poll(&mut fds, Some(&rustix::time::Timespec::default())) {
        Ok(_) => fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP),
        Err(_) => true,
    }
}

/// Whether backends are started as leaders of process groups of their own: not when
/// the gateway runs in the foreground of a terminal (by hand), where a process outside
/// the terminal's foreground group is stopped (`SIGTTOU`) as soon as it touches it (a
/// credential prompt, `stty`); then a backend stays in the gateway's group, and a
/// helper it leaves is not killed with it. (A gateway in the background of a terminal
/// would have its backends stopped either way.) Decided once.
fn own_process_groups() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        let Ok(tty) = std::fs::File::open("/dev/tty") else {
            return true;
        };
        rustix::termios::tcgetpgrp(&tty).map_or(true, |fg| fg != rustix::process::getpgrp())
    })
}

/// SIGKILL to process `pid`, or to its group when it leads one of its own.
fn kill(pid: rustix::process::Pid, group: bool) {
    use rustix::process::{kill_process, kill_process_group, Signal};
    let _ = if group {
        kill_process_group(pid, Signal::KILL)
    } else {
        kill_process(pid, Signal::KILL)
    };
}

/// Waits for a backend process's exit and reaps it, whatever its pipes do (a helper it
/// started may hold them open), then kills what is left of its process group (such a
/// helper: the pipes then close, and the stdout reader sees the end), and tells the
/// reader the exit status.
async fn watch_exit(
    mut child: Child,
    group: Option<rustix::process::Pid>,
    reaped: Rc<Cell<bool>>,
    status: oneshot::Sender<String>,
) {
    let s = match child.status().await {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    if let Some(g) = group {
        let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
    }
    reaped.set(true);
    let _ = status.send(s);
}

/// Logs a message a backend sent that is not JSON-RPC, and answers it with the
/// error when it could be a request.
fn invalid(proc: &Proc, rej: Rejection) {
    proc.warn_limited(
        Warned::Invalid,
        &format!(
            "backend {:?} sent an invalid message: {}",
            proc.name, rej.error.message
        ),
    );
    // `{"id": N}` alone, N the id of a request of ours: its answer, broken. That
    // request fails now, rather than at its timeout (and the backend is not answered).
    let pending_id = rej
        .id
        .as_ref()
        .filter(|id| rej.no_outcome && proc.pending.borrow().is_live(id));
    if let Some(id) = pending_id {
        let err = BackendError::InvalidResponse {
            backend: proc.name.to_string(),
            reason: "a response with neither \"result\" nor \"error\"".into(),
        };
        fail_pending(proc, id, err);
        return;
    }
    if rej.reply {
        // (Each request of a batch under its own id, as a client is answered.)
        let mut line = rej.reply_text().into_bytes();
        line.push(b'\n');
        if proc.try_queue(line).is_err() {
            proc.warn_limited(
                Warned::StdinFull,
                &format!(
                    "backend {:?}: stdin queue full or closed; dropped a response",
                    proc.name
                ),
            );
        }
    } else if let Some(id) = rej.answered_id() {
        // A response that could not be read: the request it answered fails now.
        let err = BackendError::InvalidResponse {
            backend: proc.name.to_string(),
            reason: rej.error.message.clone(),
        };
        fail_pending(proc, id, err);
    }
}

/// Fails the pending request `id` of `proc` (if it still is) with `err`.
fn fail_pending(proc: &Proc, id: &Id, err: BackendError) {
    let entry = proc.pending.borrow_mut().take(id);
    if let Some(p) = entry {
        if let Some(t) = p.token {
            proc.progress.borrow_mut().remove(&t);
        }
        let _ = p.tx.send(Err(err));
    }
}

/// A message as one line for a backend's stdin (bytes: nothing checks UTF-8 again),
/// written over the text it came in as when it has one ([`Message::to_text_bytes`]).
fn line_of(msg: &Message) -> Vec<u8> {
    let mut line = msg.to_text_bytes();
    line.push(b'\n');
    line
}

/// Distinct notification methods held for a process being started
/// ([`Slot::notify_or_hold`]); a client sending others meanwhile loses the excess.
pub const MAX_HELD_NOTIFICATIONS: usize = 8;

/// Buffer between the stdin queue and the pipe: a burst of queued messages goes out in
/// few writes, flushed as soon as the queue is empty.
pub const STDIN_BUFFER_BYTES: usize = 16 * 1024;

async fn write_stdin(
    stdin: async_process::ChildStdin,
    rx: Receiver<Vec<u8>>,
    (room, queued): (Rc<event_listener::Event>, Rc<Cell<usize>>),
    proc: Weak<Proc>,
) {
    let mut stdin = futures_lite::io::BufWriter::with_capacity(STDIN_BUFFER_BYTES, stdin);
    let mut broken = None;
    while let Ok(line) = rx.recv().await {
        queued.set(queued.get().saturating_sub(line.len()));
        room.notify(usize::MAX);
        if let Err(e) = stdin.write_all(&line).await {
            broken = Some(e);
            break;
        }
        if rx.is_empty() {
            if let Err(e) = stdin.flush().await {
                broken = Some(e);
                break;
            }
        }
    }
    // Channel closed, or the pipe broke: nothing more will be taken from the queue, so
    // it is closed (what waits to send fails now, not at its timeout) and whoever waits
    // for room is told. Dropping `stdin` closes the pipe, asking the backend to exit.
    rx.close();
    room.notify(usize::MAX);
    // A process that closed its stdin reads no more requests, but it may keep its
    // stdout open and live on: only its exit fails what is pending and restarts it, so
    // it is ended here.
    if let (Some(e), Some(proc)) = (broken, proc.upgrade()) {
        if proc.alive.get() && !proc.stopping.get() {
            log::warn!(
                "backend {:?}: writing to its stdin failed ({e}); it closed its stdin or \
                 is exiting, and reads no more requests: killing it so that it is restarted",
                proc.name
            );
            proc.kill();
        }
    }
}

/// Logs a backend's stderr, line by line, at most [`STDERR_LINES_PER_SECOND`] lines a
/// second (the lines beyond are counted, and the count logged with the next line that
/// is), giving the gateway's other tasks a turn as often as [`Turns`] says: a backend
/// writing stderr without pause (2.2 million lines, 166 MB of log in a review) starves
/// nothing, and floods neither the log nor the disk.
async fn log_stderr(name: Rc<str>, mut stderr: async_process::ChildStderr) {
    // Room for the `[name] ` prefix and the cut note within one log message, so the
    // logger's own cut does not take the end of either (for plain text: the logger's
    // escapes of control characters and invalid UTF-8 make a line longer, and may).
    let keep = mcp_shared::logger::MAX_LOG_MESSAGE_BYTES
        .saturating_sub(name.len() + 64)
        .clamp(256, STDERR_LINE_BYTES);
    let mut lines = StderrLines::new(keep);
    let mut buf = vec![0u8; 4096];
    let mut turns = Turns::default();
    let (mut second, mut logged, mut held) = (Instant::now(), 0usize, 0u64);
    let mut done = false;
    while !done {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        done = n == 0;
        turns.take(n).await;
        let mut ready = Vec::new();
        if done {
            lines.finish(&mut |l, cut| ready.push((l.to_vec(), cut)));
        } else {
            lines.push(&buf[..n], &mut |l, cut| ready.push((l.to_vec(), cut)));
        }
        for (line, cut) in ready {
            turns.take(0).await;
            if logged >= STDERR_LINES_PER_SECOND {
                if second.elapsed() < Duration::from_secs(1) {
                    held += 1;
                    continue;
                }
                (second, logged) = (Instant::now(), 0);
            }
            logged += 1;
            if held > 0 {
                log::warn!("[{name}] {held} stderr line(s) not logged (more than {STDERR_LINES_PER_SECOND} a second)");
                held = 0;
            }
            let text = String::from_utf8_lossy(&line);
            if cut == 0 {
                log::info!("[{name}] {text}");
            } else {
                log::info!("[{name}] {text} … ({cut} more bytes not logged)");
            }
        }
    }
    if held > 0 {
        log::warn!("[{name}] {held} stderr line(s) not logged (more than {STDERR_LINES_PER_SECOND} a second)");
    }
}

/// Splits a backend's stderr into lines, keeping at most `keep` bytes of each and
/// counting the rest: a long line (a one-line stack trace, a JSON error) is logged cut,
/// not left out, and a line without end costs no more than `keep` bytes.
struct StderrLines {
    keep: usize,
    head: Vec<u8>,
    cut: usize,
    /// Bytes seen of the current line (a lone `\r` before `\n` is not logged).
    started: bool,
}

impl StderrLines {
    fn new(keep: usize) -> Self {
        StderrLines {
            keep,
            head: Vec::new(),
            cut: 0,
            started: false,
        }
    }

    /// Takes `bytes`; `line` gets each line that ends in them (without `\n` or a
    /// `\r` before it) and how many of its bytes were not kept.
    fn push(&mut self, mut bytes: &[u8], line: &mut impl FnMut(&[u8], usize)) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let mut part = &bytes[..end.unwrap_or(bytes.len())];
            if end.is_some() {
                // A CR before the LF ends the line; it is neither kept nor cut.
                part = part.strip_suffix(b"\r").unwrap_or(part);
            }
            let room = self.keep - self.head.len();
            self.head.extend_from_slice(&part[..part.len().min(room)]);
            self.cut += part.len().saturating_sub(room);
            self.started |= !part.is_empty();
            match end {
                Some(i) => {
                    self.emit(line);
                    bytes = &bytes[i + 1..];
                }
                None => break,
            }
        }
    }

    /// At the end of the stream: the last line, if it had no `\n`.
    fn finish(&mut self, line: &mut impl FnMut(&[u8], usize)) {
        if self.started {
            self.emit(line);
        }
    }

    fn emit(&mut self, line: &mut impl FnMut(&[u8], usize)) {
        if self.cut == 0 && self.head.last() == Some(&b'\r') {
            self.head.pop();
        }
        line(&self.head, self.cut);
        self.head.clear();
        self.cut = 0;
        self.started = false;
    }
}

async fn read_stdout(
    slot: Weak<Slot>,
    proc: Rc<Proc>,
    mut stdout: async_process::ChildStdout,
    max: usize,
    (_exit_tx, mut status): (Sender<()>, oneshot::Receiver<String>),
) {
    let started = Instant::now();
    let mut dec = LineDecoder::new(max);
    let mut buf = vec![0u8; PIPE_READ_CHUNK_BYTES];
    // Reads and messages handled since the last turn given to the other tasks, and the
    // size of the last read (counted before the next one).
    let mut turns = Turns::default();
    let mut read_bytes = 0usize;
    // The exit status, once the process has exited (`watch_exit`), and from then on
    // how long what is left in stdout is read, when nothing can still be writing it
    // (see `Exited`).
    let mut exited: Option<String> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        // A turn for the gateway's other tasks every so often: a pipe that always has
        // data never makes the read wait, and what a backend floods the gateway with
        // (notifications, lines that are not JSON-RPC) is handled without waiting
        // either, so one backend would otherwise starve every session, the admin
        // listener and the signal handler.
        turns.take(std::mem::take(&mut read_bytes)).await;
        let read = match (&exited, drain_until) {
            // Running: stdout, or its exit, whichever comes first.
            (None, _) => {
                futures_lite::future::or(async { Some(stdout.read(&mut buf).await) }, async {
                    exited = Some((&mut status).await.unwrap_or_else(|_| "unknown".into()));
                    None
                })
                .await
            }
            // Gone, and nothing reads its stdin: what is left, for a while.
            (Some(_), Some(until)) => {
                let left = until.saturating_duration_since(Instant::now());
                match rt::timeout(left, stdout.read(&mut buf)).await {
                    Some(r) => Some(r),
                    // Given up on: the end of its stdout (a last line without its
                    // newline is still taken, below).
                    None => Some(Ok(0)),
                }
            }
            // Gone, and something still holds its stdin (the server a wrapper left
            // running): read on, to the end of stdout, unless a request sent there times
            // out (`silent_after_exit`): what holds the pipe is then no server (a helper
            // started in a session of its own with the backend's stdin), and the
            // backend is gone.
            (Some(_), None) => {
                let woken = (!proc.silent_after_exit.get()).then(|| proc.room.listen());
                match woken {
                    // Given up on, as above.
                    _ if proc.silent_after_exit.get() => Some(Ok(0)),
                    None => Some(Ok(0)),
                    Some(woken) => {
                        let read = futures_lite::future::or(
                            async { Some(stdout.read(&mut buf).await) },
                            async {
                                woken.await;
                                None
                            },
                        )
                        .await;
                        match read {
                            Some(r) => Some(r),
                            None => continue,
                        }
                    }
                }
            }
        };
        let n = match read {
            None => {
                // It exited with its stdout still open: a helper of its, out of its
                // process group, may hold it for good. Unless something still reads its
                // stdin, its end is near: what it wrote is read for `EXIT_WAIT`.
                if proc.stdin_watch.borrow().as_ref().is_none_or(no_reader) {
                    drain_until = Some(Instant::now() + EXIT_WAIT);
                }
                continue;
            }
            // The end of stdout: a last line without its newline is still a line (a
            // server that writes its answer and exits without one).
            Some(Ok(0)) | Some(Err(_)) => 0,
            Some(Ok(n)) => n,
        };
        read_bytes = n;
        let end = n == 0;
        dec.push(&buf[..n]);
        while let Some(frame) = dec
            .next_frame()
            .or_else(|| end.then(|| dec.finish()).flatten())
        {
            turns.take(0).await;
            match frame {
                Frame::TooLong { seen, len } => {
                    proc.warn_limited(
                        Warned::TooLong,
                        &format!(
                            "backend {:?} sent a {len}-byte message (limit {max}); dropped",
                            proc.name
                        ),
                    );
                    let too_large = BackendError::ResponseTooLarge {
                        backend: proc.name.to_string(),
                        limit: max,
                    };
                    if seen.response {
                        // The request it answered fails now, not at its timeout.
                        if let Some(id) = &seen.id {
                            fail_pending(&proc, id, too_large);
                        }
                    } else if let (true, Some(id)) = (seen.answerable(), seen.id) {
                        // A request of the backend's own: answered, like the client's.
                        let err = SessionError::TooLarge { limit: max }.to_rpc_error();
                        proc.notify(&Message::error_response(Some(id), err));
                    }
                }
                // A response is read for its id first: the request it answers says
                // whether it is parsed whole. Anything else is parsed whole.
                Frame::Line(line) => match Brief::parse(&line) {
                    Ok(brief) if brief.kind() == Kind::Response => {
                        let id = brief.id().cloned().expect("responses have ids");
                        let entry = proc.pending.borrow_mut().take(&id);
                        match entry {
                            Some(p) => {
                                if let Some(t) = p.token {
                                    proc.progress.borrow_mut().remove(&t);
                                }
                                let reply = Reply::read(brief, line, p.read == ReadAs::Whole);
                                let _ = p.tx.send(Ok(reply));
                            }
                            // An id given out and no longer waited for: a request
                            // timed out or cancelled, or a second answer to one.
                            None if proc.pending.borrow().was_issued(&id) => log::debug!(
                                "backend {:?}: response to abandoned or answered id {id}",
                                proc.name
                            ),
                            // An id it was never sent (one of another type, say, "2"
                            // for 2): the request it meant to answer will time out.
                            None => proc.warn_limited(
                                Warned::Unmatched,
                                &format!(
                                    "backend {:?}: a response to id {id}, which it was never sent; dropped",
                                    proc.name
                                ),
                            ),
                        }
                    }
                    Ok(_) => match Message::parse_owned(line) {
                        Ok(msg) => {
                            if let Some(s) = slot.upgrade() {
                                s.on_backend_message(&proc, msg).await;
                            }
                        }
                        Err(rej) => invalid(&proc, rej),
                    },
                    Err(rej) => invalid(&proc, rej),
                },
            }
        }
        if end {
            break;
        }
    }
    // The process closed stdout: collect its exit status, then fail what is pending.
    proc.alive.set(false);
    if let Some(s) = slot.upgrade() {
        s.on_gone(&proc, started.elapsed());
    }
    proc.close_stdin();
    // `watch_exit` tells the status; a process that closed stdout and lingers is killed.
    let status = match exited {
        Some(s) => s,
        None => match rt::timeout(EXIT_WAIT, &mut status).await {
            Some(Ok(s)) => s,
            Some(Err(_)) => "unknown".into(),
            None => {
                proc.kill();
                match status.await {
                    Ok(s) => format!("{s}, killed after closing stdout"),
                    Err(_) => "unknown".into(),
                }
            }
        },
    };
    if proc.stopping.get() {
        log::info!("backend {:?} stopped ({status})", proc.name);
    } else {
        log::warn!("backend {:?} exited ({status})", proc.name);
    }
    *proc.exit_status.borrow_mut() = Some(status);
    proc.metrics.backend_up(&proc.name, false);
    let pending = proc.pending.borrow_mut().drain();
    for (_, p) in pending {
        let _ = p.tx.send(Err(proc.exited_error()));
    }
    proc.progress.borrow_mut().clear();
    if let Some(s) = slot.upgrade() {
        s.on_exit(&proc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending request of `session`'s, sent under a span in trace `trace`.
    fn pend(proc: &Proc, session: u64, trace: u128) {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
        let sc = SpanContext::new(
            TraceId::from(trace),
            SpanId::from(7),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let (tx, _) = oneshot::channel();
        let p = Pending {
            tx,
            session,
            span: Cx::from_span_context(sc),
            trace: TraceId::from(trace),
            read: ReadAs::Brief,
            token: None,
        };
        proc.pending.borrow_mut().insert(p).unwrap();
    }

    #[test]
    fn a_backends_batch_is_answered_per_request() {
        let (proc, rx) = detached_proc();
        let rej = Brief::parse(
            br#"[{"jsonrpc":"2.0","id":"s1","method":"roots/list"},{"jsonrpc":"2.0","id":"s2","method":"ping"}]"#,
        )
        .map(|_| ())
        .unwrap_err();
        invalid(&proc, rej);
        let line = rx.try_recv().expect("an answer");
        let v: Value = serde_json::from_slice(&line).unwrap();
        let ids: Vec<&Value> = v.as_array().unwrap().iter().map(|a| &a["id"]).collect();
        assert_eq!(ids, [&json!("s1"), &json!("s2")], "{v}");
    }

    #[test]
    fn a_backends_request_goes_to_the_session_whose_trace_it_carries() {
        let (proc, _rx) = detached_proc();
        pend(&proc, 1, 0xa);
        pend(&proc, 2, 0xb);
        pend(&proc, 1, 0xc);
        pend(&proc, 0, 0xd); // the gateway's own: never the one asked for
        let trace = |t: u128| Some(TraceId::from(t));
        let session = |r: Option<(u64, Cx)>| r.map(|(s, cx)| (s, cx.span_context().trace_id()));
        // In a trace: that trace's request, although another is more recent.
        assert_eq!(
            session(proc.asked_for(trace(0xb), None)),
            Some((2, TraceId::from(0xb)))
        );
        assert_eq!(
            session(proc.asked_for(trace(0xa), None)),
            Some((1, TraceId::from(0xa)))
        );
        // Without context, or in no pending request's trace: the most recent.
        assert_eq!(
            session(proc.asked_for(None, None)),
            Some((1, TraceId::from(0xc)))
        );
        assert_eq!(
            session(proc.asked_for(trace(0xd), None)),
            Some((1, TraceId::from(0xc)))
        );
        // Only the given session's requests count.
        assert_eq!(
            session(proc.asked_for(trace(0xb), Some(1))),
            Some((1, TraceId::from(0xc)))
        );
        assert_eq!(session(proc.asked_for(None, Some(3))), None);
    }

    #[test]
    fn stderr_lines_keep_a_head_of_each_and_count_the_rest() {
        let mut s = StderrLines::new(4);
        // Exactly the bound, and a CR before its LF: nothing cut.
        s.push(b"wxyz\r\n", &mut |l, cut| {
            assert_eq!((l, cut), (&b"wxyz"[..], 0))
        });
        let mut got: Vec<(String, usize)> = Vec::new();
        let mut take = |l: &[u8], cut: usize| got.push((String::from_utf8_lossy(l).into(), cut));
        // Lines cut by the reads anywhere, CRLF, an empty line, a long one.
        for part in [&b"ab"[..], b"c\r\nlong", b"er than four\n\nx", b"yz"] {
            s.push(part, &mut take);
        }
        s.finish(&mut take);
        // Nothing more at a second end.
        s.finish(&mut take);
        assert_eq!(
            got,
            [
                ("abc".into(), 0),
                ("long".into(), 12),
                (String::new(), 0),
                ("xyz".into(), 0)
            ]
        );
    }

    /// A request that runs out while its backend waited for the client's answer says
    /// so; not when the client had answered (and the backend then kept silent), even
    /// if the last extension of its time was for that wait.
    #[test]
    fn a_timeout_blames_the_clients_silence_only_when_it_was_one() {
        let t = Duration::from_millis(100);
        for given_up in [false, true] {
            let (proc, _rx) = detached_proc();
            let err = rt::block_on(async {
                let p = proc.clone();
                let call = rt::spawn(async move {
                    let msg = Message::request(Id::from(1), "tools/call", None);
                    let caller = Caller {
                        session: 1,
                        span: None,
                    };
                    p.request(caller, msg, t, None, ReadAs::Brief, false).await
                });
                // The backend asks the client at once; the first wait runs out at `t`
                // and is extended by `t` for that; the ask ends within it.
                let asking = proc.asking(1);
                async_io::Timer::after(t + t / 2).await;
                if given_up {
                    proc.client_gave_up();
                }
                drop(asking);
                call.await
            });
            match err {
                Err(BackendError::Timeout {
                    waiting_for_client, ..
                }) => assert_eq!(waiting_for_client, given_up),
                other => panic!("{other:?}"),
            }
        }
    }

    /// With tracing off here, a request keeps the trace of the context it carries on to
    /// the backend: what a shared backend asks in that trace goes to its session, not
    /// to the session with the most recent request (it did, with tracing off only).
    #[test]
    fn an_untraced_request_keeps_the_trace_it_carries_for_what_the_backend_asks() {
        let (proc, rx) = detached_proc();
        let tp = |t: &str| format!("00-{t:0>32}-00f067aa0ba902b7-01");
        rt::block_on(async {
            let mut tasks = Vec::new();
            for (session, trace) in [(1, "a"), (2, "b")] {
                let p = proc.clone();
                let msg = Message::request(
                    Id::from(session),
                    "tools/call",
                    Some(json!({"name": "x", "_meta": {"traceparent": tp(trace)}})),
                );
                tasks.push(rt::spawn(async move {
                    let caller = Caller {
                        session,
                        span: None,
                    };
                    let _ = p
                        .request(caller, msg, p.timeout, None, ReadAs::Brief, false)
                        .await;
                }));
                futures_lite::future::yield_now().await; // sent, pending
            }
            assert_eq!(rx.len(), 2, "both sent");
            let session = |t: u128| proc.asked_for(Some(TraceId::from(t)), None).map(|r| r.0);
            assert_eq!(session(0xa), Some(1), "the older request's trace");
            assert_eq!(session(0xb), Some(2));
            assert_eq!(session(0xc), Some(2), "in no trace: the most recent");
            drop(tasks);
        });
    }

    /// A process record with no process behind it; its stdin lines stay in `rx`.
    fn detached_proc() -> (Rc<Proc>, Receiver<Vec<u8>>) {
        let (_, exited) = async_channel::bounded::<()>(1);
        detached_proc_exiting(exited)
    }

    /// [`detached_proc`] whose exit is the closing of `exited`'s sender.
    fn detached_proc_exiting(exited: Receiver<()>) -> (Rc<Proc>, Receiver<Vec<u8>>) {
        let (tx, rx) = async_channel::bounded(STDIN_QUEUE);
        let proc = Rc::new(Proc {
            name: "two".into(),
            stdin: tx,
            stdin_bytes: Rc::default(),
            room: Rc::new(event_listener::Event::new()),
            pending: RefCell::new(IdMap::new(MAX_PENDING_PER_PROCESS)),
            progress: RefCell::new(HashMap::new()),
            asking: Rc::default(),
            shared: true,
            client_give_ups: Cell::new(0),
            next_token: Cell::new(1),
            caps: RefCell::new(Value::Null),
            instructions: RefCell::new(None),
            alive: Cell::new(true),
            stdin_watch: RefCell::new(None),
            reaped: Rc::default(),
            silent_after_exit: Cell::new(false),
            group: None,
            own_group: false,
            exited,
            exit_status: RefCell::new(None),
            stopping: Cell::new(false),
            metrics: Rc::new(Metrics::new("t", "t")),
            warned: Default::default(),
            timeout: Duration::from_secs(5),
        });
        (proc, rx)
    }

    /// The methods of the subscribe/unsubscribe lines taken from `rx` so far.
    fn sent(rx: &Receiver<Vec<u8>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = rx.try_recv() {
            let v: Value = serde_json::from_slice(&line).unwrap_or_default();
            if let Some(m) = v["method"].as_str().filter(|m| m.contains("subscribe")) {
                out.push(m.to_string());
            }
        }
        out
    }

    #[test]
    fn the_stdin_queue_holds_at_most_its_bytes_plus_one_line() {
        let (proc, rx) = detached_proc();
        let mib = vec![b'x'; 1 << 20];
        // Below the bound a line of any length goes in; at it, none does.
        for _ in 0..STDIN_QUEUE_BYTES / mib.len() {
            proc.try_queue(mib.clone()).unwrap();
        }
        assert!(proc.stdin_full());
        assert!(proc.try_queue(b"{}\n".to_vec()).unwrap_err().is_full());
        let ping = Message::notification("notifications/initialized", None);
        proc.notify(&ping); // dropped, with a warning
        assert_eq!(rx.len(), STDIN_QUEUE_BYTES / mib.len());
        // A request waits for room, and is queued once the writer takes a line.
        let queued = rt::block_on(async {
            let p = proc.clone();
            let waiting =
                rt::spawn(async move { p.queue(b"{}\n".to_vec(), Duration::from_secs(5)).await });
            futures_lite::future::yield_now().await; // it waits
            let line = rx.recv().await.unwrap();
            // What `write_stdin` does with each line it takes.
            proc.stdin_bytes.set(proc.stdin_bytes.get() - line.len());
            proc.room.notify(usize::MAX);
            waiting.await
        });
        assert!(matches!(queued, Queued::After(_)));
        assert_eq!(proc.stdin_bytes.get(), STDIN_QUEUE_BYTES - mib.len() + 3);
        // One line longer than the whole bound goes into a queue under it.
        while let Ok(line) = rx.try_recv() {
            proc.stdin_bytes.set(proc.stdin_bytes.get() - line.len());
        }
        proc.try_queue(vec![b'y'; 2 * STDIN_QUEUE_BYTES]).unwrap();
        assert!(proc.stdin_full());
    }

    #[test]
    fn waiting_for_room_ends_when_the_queue_closes() {
        // A full queue whose backend dies: `read_stdout` closes it; a waiter must not
        // wait for ever on room that never comes.
        let (proc, _rx) = detached_proc();
        for _ in 0..STDIN_QUEUE {
            proc.stdin.try_send(b"{}\n".to_vec()).unwrap();
        }
        let done = rt::block_on(async {
            let p = proc.clone();
            let waiter = rt::spawn(async move { p.wait_for_room().await });
            futures_lite::future::yield_now().await; // it waits
            proc.close_stdin();
            rt::timeout(Duration::from_secs(5), waiter).await
        });
        assert!(done.is_some(), "the waiter was left waiting");
    }

    #[test]
    fn a_release_waiting_for_room_checks_the_uri_when_it_can_send() {
        // A backend slow to read: its stdin queue is full. A release of "u" (no
        // session holds it yet) must wait for room; meanwhile a session subscribes
        // to "u", and its line gets the first room. The release's check must see
        // that session, or its unsubscribe would undo the subscribe.
        let (proc, rx) = detached_proc();
        for _ in 0..STDIN_QUEUE {
            proc.stdin.try_send(b"{}\n".to_vec()).unwrap();
        }
        let held = Rc::new(Cell::new(false));
        let (tally, lines) = rt::block_on(async {
            let (p, h) = (proc.clone(), held.clone());
            let release = rt::spawn(async move {
                let asks = VecDeque::from([Ask {
                    method: "resources/unsubscribe",
                    params: json!({"uri": "u"}),
                    uri: Some("u".into()),
                }]);
                ask_all(&p, asks, Rc::new(move |_: &Ask| !h.get()), p.timeout, None).await
            });
            futures_lite::future::yield_now().await; // the release waits for room
            let (p, h) = (proc.clone(), held.clone());
            let subscribe = rt::spawn(async move {
                h.set(true); // `forward_by_uri` records the subscription first
                let msg = Message::request(Id::from(7), "resources/subscribe", None);
                let caller = Caller {
                    session: 1,
                    span: None,
                };
                let _ = p
                    .request(caller, msg, p.timeout, None, ReadAs::Brief, false)
                    .await;
            });
            let mut lines = Vec::new();
            // The stdin writer takes lines (as `write_stdin` does, telling of room).
            for _ in 0..STDIN_QUEUE + 2 {
                lines.extend(sent(&rx));
                proc.room.notify(usize::MAX);
                futures_lite::future::yield_now().await;
            }
            lines.extend(sent(&rx));
            drop(subscribe);
            (release.await, lines)
        });
        assert_eq!(lines, ["resources/subscribe"], "no unsubscribe after it");
        assert_eq!((tally.skipped, tally.answered), (1, 0));
    }

    /// Two stops at once (a session's end racing the shutdown): the second waits for
    /// the process the first is stopping, instead of finding nothing and returning
    /// (which let the gateway exit with it still running).
    #[test]
    fn a_second_stop_waits_for_the_process_the_first_is_stopping() {
        let cfg: mcp_shared::config::GatewayConfig = mcp_shared::config::from_str(
            "[[backends]]\nname = \"two\"\ntransport = \"stdio\"\ncommand = \"x\"\n",
            None,
        )
        .unwrap();
        let slot = Slot::new(
            Rc::new(cfg.backends[0].clone()),
            Duration::from_secs(5),
            1 << 20,
            Rc::new(Metrics::new("t", "t")),
        );
        let (exit, exited) = async_channel::bounded::<()>(1);
        let (proc, _rx) = detached_proc_exiting(exited);
        *slot.proc.borrow_mut() = Some(proc);
        let grace = Duration::from_secs(30);
        rt::block_on(async {
            let (a, b) = (slot.clone(), slot.clone());
            let first = rt::spawn(async move { a.stop(grace).await });
            futures_lite::future::yield_now().await;
            let second = rt::spawn(async move { b.stop(grace).await });
            for _ in 0..10 {
                futures_lite::future::yield_now().await;
            }
            assert!(!first.is_finished(), "the process has not exited");
            assert!(!second.is_finished(), "nor for the second stop");
            drop(exit); // it exits
            first.await;
            second.await;
        });
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), BACKOFF_BASE);
        assert_eq!(backoff(3), BACKOFF_BASE * 2);
        assert_eq!(backoff(40), BACKOFF_MAX);
    }
}
