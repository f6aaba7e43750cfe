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

use std::cell::Cell;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskCx, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};
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

/// Environment variable that overrides the configured log level.
pub const LOG_ENV: &str = "MCP_LOG";

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let ts = utc_timestamp(SystemTime::now());
        let ids = CURRENT.get().map(|(t, s)| (t.to_string(), s.to_string()));
        let line = if JSON.load(Ordering::Relaxed) {
            let mut o = serde_json::json!({
                "ts": ts,
                "level": r.level().as_str(),
                "target": r.target(),
                "msg": r.args().to_string(),
            });
            if let Some((t, s)) = ids {
                o["trace_id"] = t.into();
                o["span_id"] = s.into();
            }
            format!("{o}\n")
        } else {
            match ids {
                Some((t, s)) => format!(
                    "{ts} {:<5} {}: {} trace_id={t} span_id={s}\n",
                    r.level(),
                    r.target(),
                    r.args()
                ),
                None => format!("{ts} {:<5} {}: {}\n", r.level(), r.target(), r.args()),
            }
        };
        // One write per line so concurrent lines do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at `level` (unless `MCP_LOG` says otherwise) in `format`.
pub fn init(level: LevelFilter, format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    if log::set_logger(&LOGGER).is_ok() {
        set_level(level);
    }
}

/// Changes the level (e.g. on configuration reload); `MCP_LOG` still wins.
pub fn set_level(level: LevelFilter) {
    let level = std::env::var(LOG_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    log::set_max_level(level);
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
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_614_633_123);
        assert_eq!(utc_timestamp(t), "2026-11-25T13:50:33.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
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
