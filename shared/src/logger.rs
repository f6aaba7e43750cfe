//! A minimal `log` backend writing one line per record to stderr.
//!
//! Plain format: `2026-11-25T13:50:33.123Z INFO  target: message`, plus
//! ` trace_id=… span_id=…` when written inside a traced request; JSON format: one object
//! per line with the same fields. The level comes from the configuration; the `MCP_LOG`
//! environment variable (`error`, `warn`, `info`, `debug`, `trace`, `off`) overrides
//! it. Nothing is ever written to stdout (the router's stdout is the MCP channel).
//!
//! Trace ids reach the logger through [`with_ids`]: a future wrapper that makes a span's
//! ids current for the duration of each poll (the executors are single-threaded, so
//! a poll is never interleaved with another task's).
//!
//! Lines reach stderr through a thread of their own, never from the thread that logs:
//! stderr may be a pipe its reader does not drain (an MCP host that captures it and
//! reads it only at exit, `2>&1 | less` paused), and a blocking write there used to stop
//! the router's relay and the gateway's executor once the pipe's 64 KiB were full. The
//! thread starts with the first line logged, and the lines wait in a backlog of at most [`MAX_LOG_BACKLOG_BYTES`]; beyond it they are
//! dropped, and counted in one warning written when stderr takes lines again.
//! [`flush`] (at exit) waits for the backlog at most [`LOG_FLUSH_DEADLINE`].

use std::cell::Cell;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context as TaskCx, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};
use opentelemetry::trace::{SpanId, TraceId};

use crate::config::LogFormat;

thread_local! {
    /// The ids of the span whose task is being polled; formatted only when a line is
    /// written (a poll must not pay for text nobody logs).
    static CURRENT: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

static JSON: AtomicBool = AtomicBool::new(false);

pin_project_lite::pin_project! {
    /// A future whose polls run with a span's trace and span id as the log context.
    /// The wrapped future is held in place, not boxed: the gateway wraps every
    /// request's task in one, and a box was an allocation and a copy of the whole
    /// future per request, with tracing on or off.
    pub struct Traced<F> {
        ids: Option<(TraceId, SpanId)>,
        #[pin]
        inner: F,
    }
}

/// The ids log lines carry for the span in `cx` (`None` when it has no valid span),
/// for [`with_ids`].
pub fn span_ids(cx: &crate::telemetry::Cx) -> Option<(TraceId, SpanId)> {
    let sc = cx.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

/// Wraps `f` so that log lines written while it runs carry `ids` ([`span_ids`] of the
/// span the work belongs to; nothing is added for `None`). The ids are read before
/// `f` is built, so `f` may take the `Cx` itself.
pub fn with_ids<F: Future>(ids: Option<(TraceId, SpanId)>, f: F) -> Traced<F> {
    Traced { ids, inner: f }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<F::Output> {
        let this = self.project();
        let prev = CURRENT.replace(*this.ids);
        let r = this.inner.poll(cx);
        CURRENT.set(prev);
        r
    }
}

/// Runs `f` with no span as the log context: for lines about the process as a whole
/// (a full span queue) that happen to be written while some request's task is polled,
/// and would otherwise carry that unrelated request's ids.
pub fn outside_trace<R>(f: impl FnOnce() -> R) -> R {
    let prev = CURRENT.replace(None);
    let r = f();
    CURRENT.set(prev);
    r
}

/// Environment variable that overrides the configured log level.
pub const LOG_ENV: &str = "MCP_LOG";

struct StderrLogger;

/// Whether a record of `level` from `target` is written at all: other crates' `trace`
/// records never are, whatever the level. They add nothing an operator needs, and
/// some carry secrets: tungstenite traces whole handshakes, `Authorization: Bearer`
/// header and the URL's query included, on both the router's side and the gateway's.
fn allowed(level: Level, target: &str, max: LevelFilter) -> bool {
    level <= max && (level < Level::Trace || target.starts_with("mcp_"))
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        allowed(m.level(), m.target(), log::max_level())
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        queue(format_line(r.level(), r.target(), r.args(), CURRENT.get()));
    }

    fn flush(&self) {
        flush();
    }
}

/// A warning that a peer can make happen over and over (a backend's invalid lines, a
/// client whose queue is full): logged at most once per interval, the ones held back
/// meanwhile counted in the next. One per thing warned about, so that one flood does
/// not hide another.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Cell<Option<Instant>>,
    held: Cell<u64>,
}

impl Throttle {
    /// Whether to log at `now`: `Some(n)`, `n` being how many were held back since the
    /// last one logged; `None` (and counted) within `every` of it.
    pub fn pass(&self, now: Instant, every: Duration) -> Option<u64> {
        if self
            .last
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            self.held.set(self.held.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.held.replace(0))
    }

    /// How many were held back since the last one logged.
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// [`Throttle::held`], counted as said from now on (for a tally written when no
    /// warning came to carry it).
    pub fn take_held(&self) -> u64 {
        self.held.replace(0)
    }
}

/// Logs `args` at info from `target` whatever the level: for the few lines that are a
/// contract (the gateway's readiness line, which scripts wait for), in the configured
/// format and through the backlog like every other line.
pub fn always(target: &str, args: std::fmt::Arguments<'_>) {
    queue(format_line(Level::Info, target, &args, CURRENT.get()));
}

/// Hands a formatted line to the writer thread (or writes it, before `init`).
fn queue(line: String) {
    let mut b = backlog();
    if let Some(line) = b.accept(line, spawn_writer) {
        // Not initialised: written here.
        drop(b);
        write_stderr(line.as_bytes());
        return;
    }
    // Woken for a dropped line too: its count is news to write.
    if b.writer_waiting {
        READY.notify_one();
    }
}

/// Bytes of log lines that may wait for stderr (the batch being written included). A
/// line that would go beyond is dropped and counted: a reader that stopped reading
/// costs at most this much memory, and the threads that log never wait for it.
pub const MAX_LOG_BACKLOG_BYTES: usize = 64 * 1024;

/// Capacity the writer keeps in each of its two buffers between bursts; a burst's
/// larger buffers are given back after it.
const LOG_BUFFER_KEEP_BYTES: usize = 4 * 1024;

/// How long [`flush`] waits for the backlog to reach stderr (at exit).
pub const LOG_FLUSH_DEADLINE: Duration = Duration::from_secs(1);

/// The lines waiting for the writer thread: their bytes, one after the other (a
/// buffer, not an allocation per line: a burst of lines, 1,000 sessions opening at
/// `info`, cost the gateway ~200 KiB of resident memory held that way).
struct Backlog {
    queued: Vec<u8>,
    /// Bytes of the batch being written.
    writing_bytes: usize,
    /// Lines dropped since the last warning about it was taken.
    dropped: u64,
    /// Who writes the lines.
    writer: Writer,
    /// The writer thread waits for lines (worth a wake-up).
    writer_waiting: bool,
    /// A batch is being written.
    writing: bool,
}

impl Backlog {
    const fn new() -> Backlog {
        Backlog {
            queued: Vec::new(),
            writing_bytes: 0,
            dropped: 0,
            writer: Writer::Direct,
            writer_waiting: false,
            writing: false,
        }
    }

    /// Takes `line` into the backlog, starting the writer thread with `spawn` when it
    /// is not running yet; gives it back when it is to be written by the caller
    /// ([`Writer::Direct`]). A line is queued even when the thread could not start (no
    /// threads or memory left, often the moment the first warning is about): the next
    /// line tries again, and writing from here could block the caller on stderr.
    fn accept(&mut self, line: String, spawn: fn() -> bool) -> Option<String> {
        match self.writer {
            Writer::Direct => return Some(line),
            Writer::Lazy => self.start(spawn),
            Writer::Running => {}
        }
        self.push(&line);
        None
    }

    /// Starts the writer thread with `spawn` (whether it started).
    fn start(&mut self, spawn: fn() -> bool) {
        if spawn() {
            self.writer = Writer::Running;
        }
    }

    /// Queues `line`, or counts it as dropped when it would take the backlog beyond
    /// [`MAX_LOG_BACKLOG_BYTES`]. Whether it was queued.
    fn push(&mut self, line: &str) -> bool {
        if self.writing_bytes + self.queued.len() + line.len() > MAX_LOG_BACKLOG_BYTES {
            self.dropped += 1;
            return false;
        }
        // Grown by doubling, but never past the bound: a stderr nobody reads holds
        // the bound, not up to twice it.
        let need = self.queued.len() + line.len();
        if need > self.queued.capacity() {
            let to = (self.queued.capacity() * 2).clamp(need, MAX_LOG_BACKLOG_BYTES);
            self.queued.reserve_exact(to - self.queued.len());
        }
        self.queued.extend_from_slice(line.as_bytes());
        true
    }

    /// Hands everything queued to the writer in exchange for `spare` (its emptied
    /// buffer), with the warning about dropped lines to write first when there were
    /// any. Its bytes stay counted until [`Backlog::written`].
    fn take(&mut self, spare: &mut Vec<u8>) -> Option<String> {
        let note = (self.dropped > 0).then(|| {
            format_line(
                log::Level::Warn,
                module_path!(),
                &format_args!(
                    "{} log line(s) dropped: stderr was not read fast enough (backlog limit \
                     {MAX_LOG_BACKLOG_BYTES} bytes)",
                    self.dropped
                ),
                None,
            )
        });
        self.dropped = 0;
        std::mem::swap(&mut self.queued, spare);
        self.writing_bytes = spare.len();
        self.writing = true;
        note
    }

    /// The batch from [`Backlog::take`] was written.
    fn written(&mut self) {
        self.writing_bytes = 0;
        self.writing = false;
    }

    fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.dropped == 0 && !self.writing
    }
}

static BACKLOG: Mutex<Backlog> = Mutex::new(Backlog::new());
/// Lines were queued while the writer waited.
static READY: Condvar = Condvar::new();
/// A batch was written (for [`flush`]).
static WRITTEN: Condvar = Condvar::new();

fn backlog() -> MutexGuard<'static, Backlog> {
    // A panic while the lock was held left the queue as consistent as it ever is.
    BACKLOG.lock().unwrap_or_else(|e| e.into_inner())
}

/// One write per batch, under stderr's lock, so that lines written by others (the
/// router's stdout span tree) never land inside one.
fn write_stderr(text: &[u8]) {
    let _ = std::io::stderr().lock().write_all(text);
}

/// Who writes log lines to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    /// The thread that logs (before [`init`]).
    Direct,
    /// The writer thread, started with the first line (and tried again with each
    /// later one while it cannot start): a process that logs nothing (the router at
    /// `warn`, as hosts run it) pays no thread for it.
    Lazy,
    /// The writer thread, running.
    Running,
}

/// Starts the thread that writes the backlog to stderr (called with the backlog
/// locked: the thread waits for it until the caller has queued its line).
fn spawn_writer() -> bool {
    std::thread::Builder::new()
        .name("log-writer".into())
        // Lines are formatted on the logging threads; this one copies bytes and
        // formats at most the one note about dropped lines.
        .stack_size(64 * 1024)
        .spawn(write_backlog)
        .is_ok()
}

fn write_backlog() {
    let mut batch = Vec::new();
    let mut b = backlog();
    loop {
        while b.queued.is_empty() && b.dropped == 0 {
            b.writer_waiting = true;
            b = READY.wait(b).unwrap_or_else(|e| e.into_inner());
            b.writer_waiting = false;
        }
        let note = b.take(&mut batch);
        drop(b);
        {
            // One lock of stderr for the batch, so that lines written by others (the
            // router's stdout span tree) never land inside it.
            let mut err = std::io::stderr().lock();
            if let Some(note) = note {
                let _ = err.write_all(note.as_bytes());
            }
            let _ = err.write_all(&batch);
        }
        batch.clear();
        batch.shrink_to(LOG_BUFFER_KEEP_BYTES);
        b = backlog();
        b.written();
        WRITTEN.notify_all();
    }
}

/// Waits until the lines logged so far are written to stderr, or
/// [`LOG_FLUSH_DEADLINE`] has passed (stderr may never be read). For the end of `main`.
pub fn flush() {
    let deadline = Instant::now() + LOG_FLUSH_DEADLINE;
    let mut b = backlog();
    if b.writer == Writer::Lazy && !b.is_idle() {
        // Lines queued while no thread could start: one more try (else they are lost:
        // written from here, they could block the exit on stderr).
        b.start(spawn_writer);
    }
    while b.writer == Writer::Running && !b.is_idle() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        b = WRITTEN
            .wait_timeout(b, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Most bytes of a log message a line carries; the rest is cut, and the line says how
/// much was.
pub const MAX_LOG_MESSAGE_BYTES: usize = 8 * 1024;

/// A message's text, at most [`MAX_LOG_MESSAGE_BYTES`] of it kept.
#[derive(Default)]
struct Bounded {
    text: String,
    cut: usize,
}

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = MAX_LOG_MESSAGE_BYTES - self.text.len();
        if self.cut > 0 {
            // After a cut, nothing more: the text kept stays a prefix of the message.
            self.cut += s.len();
        } else if s.len() <= room {
            self.text.push_str(s);
        } else {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            self.cut += s.len() - end;
        }
        Ok(())
    }
}

impl Bounded {
    fn finish(mut self) -> String {
        if self.cut > 0 {
            let note = format!("… ({} more bytes not logged)", self.cut);
            self.text.push_str(&note);
        }
        self.text
    }
}

/// One log line, newline included, in the configured format.
fn format_line(
    level: log::Level,
    target: &str,
    msg: &std::fmt::Arguments<'_>,
    ids: Option<(TraceId, SpanId)>,
) -> String {
    let ts = utc_timestamp(SystemTime::now());
    // A message can carry what a peer sent (a method name, an error text: up to the
    // message size limit); the line takes at most MAX_LOG_MESSAGE_BYTES of it.
    let mut bounded = Bounded::default();
    let _ = std::fmt::Write::write_fmt(&mut bounded, *msg);
    let msg = bounded.finish();
    if JSON.load(Ordering::Relaxed) {
        let mut o = serde_json::json!({
            "ts": ts,
            "level": level.as_str(),
            "target": target,
            "msg": msg,
        });
        if let Some((t, s)) = ids {
            o["trace_id"] = t.to_string().into();
            o["span_id"] = s.to_string().into();
        }
        format!("{o}\n")
    } else {
        let msg = escape_controls(msg);
        match ids {
            Some((t, s)) => {
                format!("{ts} {level:<5} {target}: {msg} trace_id={t} span_id={s}\n")
            }
            None => format!("{ts} {level:<5} {target}: {msg}\n"),
        }
    }
}

/// A message for a plain line: control characters (C0 but tab, DEL, C1) written as
/// escapes. A message can carry what a peer sent (a client's method name, a backend's
/// stderr), and a raw line break in it would start a line that looks like the
/// gateway's own, an escape sequence would drive the operator's terminal. (JSON lines
/// escape them anyway.)
pub(crate) fn escape_controls(msg: String) -> String {
    let bad = |c: char| c != '\t' && c.is_control();
    if !msg.contains(bad) {
        return msg;
    }
    // The escapes count against the bound (`\u{1b}` is six bytes for one): the line
    // stays within MAX_LOG_MESSAGE_BYTES plus its note, however the message is made.
    use std::fmt::Write as _;
    let mut out = Bounded::default();
    let mut buf = [0u8; 4];
    for c in msg.chars() {
        let _ = match c {
            '\n' => out.write_str("\\n"),
            '\r' => out.write_str("\\r"),
            c if bad(c) => out.write_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.write_str(c.encode_utf8(&mut buf)),
        };
    }
    out.finish()
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at `level` (unless `MCP_LOG` says otherwise) in `format`.
pub fn init(level: LevelFilter, format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    if log::set_logger(&LOGGER).is_ok() {
        backlog().writer = Writer::Lazy;
        set_level(level);
    }
}

/// Changes the level (e.g. on configuration reload); `MCP_LOG` still wins. Returns the
/// level in effect.
pub fn set_level(level: LevelFilter) -> LevelFilter {
    let level = env_level().ok().flatten().unwrap_or(level);
    log::set_max_level(level);
    level
}

/// The level `MCP_LOG` sets: `None` when it is unset or empty, an error naming it when
/// it is not a level (checked at start, like the configuration: exit 64).
pub fn env_level() -> Result<Option<LevelFilter>, String> {
    let Ok(v) = std::env::var(LOG_ENV) else {
        return Ok(None);
    };
    if v.trim().is_empty() {
        return Ok(None);
    }
    v.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("{LOG_ENV}={v:?}: expected off, error, warn, info, debug or trace"))
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_throttle_passes_one_per_interval_and_counts_the_rest() {
        let t = Throttle::default();
        let (start, every) = (Instant::now(), Duration::from_secs(10));
        assert_eq!(t.pass(start, every), Some(0));
        for s in 1..10 {
            assert_eq!(t.pass(start + Duration::from_secs(s), every), None);
        }
        assert_eq!(t.pass(start + every, every), Some(9));
        assert_eq!(t.pass(start + every, every), None);
        assert_eq!(t.pass(start + 3 * every, every), Some(1));
        // A tally taken in between is not counted again.
        assert_eq!(t.pass(start + 3 * every, every), None);
        assert_eq!((t.held(), t.take_held(), t.held()), (1, 1, 0));
        assert_eq!(t.pass(start + 5 * every, every), Some(0));
        // A clock reading older than the last (taken before it, logged after) is within
        // it.
        assert_eq!(t.pass(start, every), None);
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn outside_trace_hides_the_polled_spans_ids_and_restores_them() {
        let ids = (TraceId::from(7u128), SpanId::from(9u64));
        let mut f = std::pin::pin!(with_ids(Some(ids), async {
            let inside = CURRENT.get();
            let outside = outside_trace(|| CURRENT.get());
            (inside, outside, CURRENT.get())
        }));
        let Poll::Ready((inside, outside, after)) = f
            .as_mut()
            .poll(&mut TaskCx::from_waker(std::task::Waker::noop()))
        else {
            panic!("an async block without awaits is ready at once");
        };
        assert_eq!(inside, Some(ids));
        assert_eq!(outside, None);
        assert_eq!(after, Some(ids), "restored after the closure");
        assert_eq!(CURRENT.get(), None, "and cleared after the poll");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_614_633_123);
        assert_eq!(utc_timestamp(t), "2026-11-25T13:50:33.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_backlog_drops_beyond_its_bound_and_says_how_many_once() {
        let mut b = Backlog::new();
        let line = "x".repeat(1000) + "\n";
        let fit = MAX_LOG_BACKLOG_BYTES / line.len();
        for _ in 0..fit {
            assert!(b.push(&line));
        }
        assert!(!b.push(&line), "beyond the bound");
        assert!(
            b.queued.capacity() <= MAX_LOG_BACKLOG_BYTES,
            "{}",
            b.queued.capacity()
        );
        assert!(!b.push(&line));
        assert_eq!(b.dropped, 2);
        // What is being written still counts: nothing fits until it is written.
        let mut batch = Vec::new();
        let note = b.take(&mut batch).expect("a note");
        assert!(
            note.contains("WARN") && note.contains("2 log line(s) dropped"),
            "{note}"
        );
        assert_eq!(batch.len(), fit * line.len());
        assert!(!b.push(&line));
        assert!(!b.is_idle());
        batch.clear();
        b.written();
        assert!(b.push(&line), "room again once written");
        // The count restarted with the warning that reported it.
        let note = b.take(&mut batch).expect("a note");
        assert!(note.contains("1 log line(s) dropped"), "{note}");
        assert_eq!(batch, line.as_bytes());
        batch.clear();
        b.written();
        assert_eq!(b.take(&mut batch), None);
        assert!(batch.is_empty());
        b.written();
        assert!(b.is_idle());
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_and_says_how_much() {
        let long = "é".repeat(MAX_LOG_MESSAGE_BYTES); // two bytes each
        let l = format_line(log::Level::Warn, "t", &format_args!("x{long}"), None);
        let (head, note) = l.split_once('…').unwrap();
        let kept = head.len() - head.find(": x").unwrap() - 2;
        assert!(
            kept <= MAX_LOG_MESSAGE_BYTES && kept > MAX_LOG_MESSAGE_BYTES - 2,
            "{kept}"
        );
        let cut = 1 + 2 * MAX_LOG_MESSAGE_BYTES - kept;
        assert_eq!(note, format!(" ({cut} more bytes not logged)\n"));
        // A cut a byte short of the bound (a two-byte character) takes nothing more
        // after it: what is kept is a prefix of the message.
        let odd = "é".repeat(MAX_LOG_MESSAGE_BYTES / 2);
        let l = format_line(log::Level::Warn, "t", &format_args!("x{odd} {} y", 7), None);
        let kept = l.split_once(": ").unwrap().1.split_once('…').unwrap().0;
        assert!(format!("x{odd} 7 y").starts_with(kept), "{kept:?}");
        assert!(
            l.ends_with(&format!("({} more bytes not logged)\n", 2 + 1 + 1 + 2)),
            "{l}"
        );
        // Short messages are whole.
        let l = format_line(
            log::Level::Info,
            "t",
            &format_args!("{}", "é".repeat(9)),
            None,
        );
        assert!(l.ends_with(&format!(": {}\n", "é".repeat(9))), "{l}");
    }

    #[test]
    fn a_plain_line_escapes_what_could_forge_a_line_or_drive_a_terminal() {
        JSON.store(false, Ordering::Relaxed);
        let forged = "foo\n2026-12-07T06:00:00.000Z ERROR mcp_gateway: FORGED\u{1b}[31m\r\0\u{7f}\u{9b}\tend é";
        let l = format_line(log::Level::Warn, "t", &format_args!("{forged}"), None);
        assert_eq!(l.matches('\n').count(), 1, "{l:?}");
        assert!(l.ends_with('\n'));
        assert!(
            l.ends_with(": foo\\n2026-12-07T06:00:00.000Z ERROR mcp_gateway: FORGED\\u{1b}[31m\\r\\u{0}\\u{7f}\\u{9b}\tend é\n"),
            "{l:?}"
        );
        // Escapes count against the bound: a message of control characters makes a
        // line no longer than any other.
        let esc = "\u{1b}".repeat(MAX_LOG_MESSAGE_BYTES);
        let l = format_line(log::Level::Warn, "t", &format_args!("{esc}"), None);
        assert!(l.len() <= MAX_LOG_MESSAGE_BYTES + 128, "{} bytes", l.len());
        assert!(
            l.ends_with("more bytes not logged)\n"),
            "{}",
            &l[l.len() - 60..]
        );
    }

    #[test]
    fn a_writer_that_cannot_start_is_tried_again_and_lines_wait_for_it() {
        let mut b = Backlog::new();
        assert_eq!(
            b.accept("a\n".into(), || false).as_deref(),
            Some("a\n"),
            "direct"
        );
        b.writer = Writer::Lazy;
        assert_eq!(
            b.accept("b\n".into(), || false),
            None,
            "queued, not written here"
        );
        assert_eq!(b.writer, Writer::Lazy, "tried again with the next line");
        assert_eq!(b.accept("c\n".into(), || true), None);
        assert_eq!(b.writer, Writer::Running);
        let mut batch = Vec::new();
        assert_eq!(b.take(&mut batch), None);
        assert_eq!(batch, b"b\nc\n");
    }

    #[test]
    fn other_crates_never_trace() {
        let all = LevelFilter::Trace;
        assert!(allowed(Level::Trace, "mcp_gateway::session", all));
        assert!(allowed(Level::Trace, "mcp_shared::telemetry", all));
        assert!(!allowed(
            Level::Trace,
            "tungstenite::handshake::client",
            all
        ));
        assert!(allowed(Level::Debug, "tungstenite::handshake::server", all));
        assert!(!allowed(
            Level::Debug,
            "mcp_gateway::session",
            LevelFilter::Info
        ));
    }

    #[test]
    fn lines_carry_level_target_and_ids() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let l = format_line(
            log::Level::Info,
            "mcp_gateway",
            &format_args!("hi {}", 5),
            None,
        );
        assert!(l.ends_with(" INFO  mcp_gateway: hi 5\n"), "{l:?}");
        let l = format_line(
            log::Level::Warn,
            "t",
            &format_args!("m"),
            Some((trace, span)),
        );
        assert!(
            l.ends_with(
                " WARN  t: m trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7\n"
            ),
            "{l:?}"
        );
    }

    #[test]
    fn a_traced_future_sees_its_span_ids_in_every_poll_and_only_there() {
        use crate::telemetry::Cx;
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let sc = SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::NONE);
        let mut seen = Vec::new();
        let mut first = true;
        let f = std::future::poll_fn(|tcx: &mut TaskCx<'_>| {
            seen.push(CURRENT.get());
            if std::mem::take(&mut first) {
                // Pending once, so that a second poll is needed.
                tcx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(7)
        });
        CURRENT.set(None);
        let out = futures_lite::future::block_on(with_ids(span_ids(&Cx::from_span_context(sc)), f));
        assert_eq!(out, 7);
        assert_eq!(seen, vec![Some((trace, span)); 2]);
        assert_eq!(CURRENT.get(), None, "restored after each poll");
        // A context without a valid span adds no ids.
        let none = futures_lite::future::block_on(with_ids(span_ids(&Cx::default()), async {
            CURRENT.get()
        }));
        assert_eq!(none, None);
    }
}
