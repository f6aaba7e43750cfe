//! The gateway's Prometheus metrics: a small registry with fixed, bounded label sets and
//! a hand-written renderer for the Prometheus text exposition format 0.0.4 (served by
//! `admin.rs` at `/metrics`).
//!
//! Names follow the OpenTelemetry MCP semantic conventions where they define one
//! (`mcp.server.operation.duration` → `mcp_server_operation_duration_seconds` with label
//! `mcp_method_name`, `mcp.server.session.duration` → `mcp_server_session_duration_seconds`);
//! the rest are `mcp_gateway_*`.
//!
//! Cardinality is bounded by construction: a method outside [`KNOWN_METHODS`] is counted
//! as [`OTHER`], an error type outside [`ERROR_TYPES`] as [`OTHER`], and at most
//! [`MAX_BACKEND_SERIES`] backend names (which come from the configuration) get series.
//!
//! The gateway is single-threaded, so the registry uses `Cell`/`RefCell` and is shared as
//! `Rc<Metrics>`; no borrow outlives a method call. Span counters live on the exporter's
//! thread and are read through a closure at render time ([`Metrics::set_span_source`]).
//!
//! Why not the `prometheus-client` crate: it adds 8 crates (parking_lot, a derive
//! proc-macro, dtoa, ...) and ~80 KB to the release binary, and it only writes OpenMetrics
//! 1.0 text (`# EOF`, counter `TYPE` lines without `_total`), not the 0.0.4 format this
//! endpoint promises. The exposition below is ~150 lines and fully unit-tested.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use mcp_shared::error::codes;

/// Label value for a method or error type outside the known sets.
pub const OTHER: &str = "other";

/// Methods that get their own `mcp_method_name` series (the specification's, both
/// directions: the one list in `mcp_shared::mcp`); anything else is [`OTHER`]. Series
/// are written only once counted, so the list's length costs no exposition.
pub const KNOWN_METHODS: &[&str] = mcp_shared::mcp::METHODS;

/// Error type of a `tools/call` whose result has `isError: true` (the OpenTelemetry MCP
/// conventions' `error.type` value for it).
pub const TOOL_ERROR: &str = "tool_error";

/// Error type of a request the client cancelled (it gets no answer).
pub const CANCELLED: &str = "cancelled";

/// Error types that get their own `error_type` series; anything else is [`OTHER`]. What
/// the client was answered, whoever answered: the JSON-RPC code as a decimal string
/// (as the OpenTelemetry MCP conventions set `error.type`; [`error_type_for_code`]),
/// or [`TOOL_ERROR`]; for a request that got no answer, why: [`CANCELLED`] by the
/// client, or `client_disconnected`. (The cause of a refusal of the gateway's own,
/// `duplicate_id` or `overloaded`, is on the span of the step that refused, and in the
/// error's message.)
pub const ERROR_TYPES: &[&str] = &[
    TOOL_ERROR,
    CANCELLED,
    "client_disconnected",
    "-32700",
    "-32600",
    "-32601",
    "-32602",
    "-32603",
    "-32000",
    "-32001",
    "-32002",
    "-32003",
    "-32004",
];

/// Bucket upper bounds (seconds) of `mcp_server_operation_duration_seconds`: 100 µs (a
/// gateway-local answer) to 60 s (the default request timeout).
pub const OPERATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Bucket upper bounds (seconds) of `mcp_server_session_duration_seconds`: 1 s to 1 day.
pub const SESSION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];

/// Most backend names that get `mcp_gateway_backend_*` series; further names are ignored
/// (the configuration takes no more backends than this).
pub const MAX_BACKEND_SERIES: usize = mcp_shared::config::MAX_BACKENDS;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A result (or, for a notification, handled).
    Ok,
    /// A JSON-RPC error response (or no response: cancelled).
    Error,
    /// A `tools/call` result with `isError: true`.
    ToolError,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Error, Outcome::ToolError];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::ToolError => "tool_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `error_type` of a JSON-RPC error code: its decimal string when it is one of the
/// bridge's codes (`mcp_shared::error::codes`), else [`OTHER`].
pub fn error_type_for_code(code: i64) -> &'static str {
    match code {
        codes::PARSE_ERROR => "-32700",
        codes::INVALID_REQUEST => "-32600",
        codes::METHOD_NOT_FOUND => "-32601",
        codes::INVALID_PARAMS => "-32602",
        codes::INTERNAL_ERROR => "-32603",
        codes::BACKEND_UNAVAILABLE => "-32000",
        codes::REQUEST_TIMEOUT => "-32001",
        codes::RESOURCE_NOT_FOUND => "-32002",
        codes::OVERLOADED => "-32003",
        codes::GATEWAY_UNAVAILABLE => "-32004",
        _ => OTHER,
    }
}

/// Index of `method` in [`KNOWN_METHODS`], or `KNOWN_METHODS.len()` for [`OTHER`].
fn method_index(method: &str) -> usize {
    KNOWN_METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(KNOWN_METHODS.len())
}

fn method_name(i: usize) -> &'static str {
    KNOWN_METHODS.get(i).copied().unwrap_or(OTHER)
}

/// Index of `ty` in [`ERROR_TYPES`], or `ERROR_TYPES.len()` for [`OTHER`].
fn error_index(ty: &str) -> usize {
    ERROR_TYPES
        .iter()
        .position(|t| *t == ty)
        .unwrap_or(ERROR_TYPES.len())
}

fn error_name(i: usize) -> &'static str {
    ERROR_TYPES.get(i).copied().unwrap_or(OTHER)
}

/// A histogram with fixed bounds; `counts` are per bucket (not cumulative), the last one
/// for observations above every bound.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        // `le` is inclusive: the first bound >= v.
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

struct Backend {
    name: String,
    /// Running processes of this backend (several for `per_client`).
    processes: u64,
    restarts: u64,
}

/// Everything behind one `RefCell`, borrowed only inside a method.
struct Inner {
    /// Per method index, per [`Outcome`].
    requests: Vec<[u64; 3]>,
    /// Per error type index.
    errors: Vec<u64>,
    /// Per method index, created on first use.
    operations: Vec<Option<Histogram>>,
    sessions: Histogram,
    backends: Vec<Backend>,
}

/// Reads (spans exported, spans dropped) from the exporter.
type SpanSource = Box<dyn Fn() -> (u64, u64)>;

/// Why the gateway ended a client's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The client's socket took no bytes for `send_timeout` while a message waited.
    SendTimeout = 0,
    /// The client sent no byte for an interval after a ping (`ping_interval`).
    Silent = 1,
}

impl Dropped {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::SendTimeout => "send_timeout",
            Dropped::Silent => "ping_timeout",
        }
    }
}

/// The registry. Share it as `Rc<Metrics>`.
pub struct Metrics {
    version: String,
    commit: String,
    sessions_active: Cell<u64>,
    /// Sessions the gateway ended, by [`Dropped`] reason.
    sessions_dropped: [Cell<u64>; 2],
    in_flight: Cell<u64>,
    inner: RefCell<Inner>,
    spans: RefCell<Option<SpanSource>>,
}

impl Metrics {
    /// An empty registry for a build `version` at git `commit`.
    pub fn new(version: &str, commit: &str) -> Metrics {
        Metrics {
            version: version.to_owned(),
            commit: commit.to_owned(),
            sessions_active: Cell::new(0),
            sessions_dropped: [Cell::new(0), Cell::new(0)],
            in_flight: Cell::new(0),
            inner: RefCell::new(Inner {
                requests: vec![[0; 3]; KNOWN_METHODS.len() + 1],
                errors: vec![0; ERROR_TYPES.len() + 1],
                operations: (0..=KNOWN_METHODS.len()).map(|_| None).collect(),
                sessions: Histogram::new(SESSION_BUCKETS),
                backends: Vec::new(),
            }),
            spans: RefCell::new(None),
        }
    }

    /// Where the span counters come from (called on every render); until set, both are 0.
    /// E.g. `move || (c.exported.load(Relaxed), c.dropped.load(Relaxed))`.
    pub fn set_span_source(&self, source: impl Fn() -> (u64, u64) + 'static) {
        *self.spans.borrow_mut() = Some(Box::new(source));
    }

    /// Records a finished request (answered, refused or cancelled): `mcp_gateway_requests_total`, the
    /// duration histogram, and for a non-`Ok` outcome `mcp_gateway_errors_total` with
    /// `error_type` (default: [`TOOL_ERROR`] for `ToolError`, [`OTHER`] for `Error`;
    /// ignored for `Ok`).
    pub fn request_finished(
        &self,
        method: &str,
        outcome: Outcome,
        error_type: Option<&str>,
        duration: Duration,
    ) {
        let m = method_index(method);
        let mut inner = self.inner.borrow_mut();
        inner.requests[m][outcome.index()] += 1;
        inner.operations[m]
            .get_or_insert_with(|| Histogram::new(OPERATION_BUCKETS))
            .observe(duration);
        let ty = match (outcome, error_type) {
            (Outcome::Ok, _) => return,
            (_, Some(t)) => t,
            (Outcome::ToolError, None) => TOOL_ERROR,
            (Outcome::Error, None) => OTHER,
        };
        inner.errors[error_index(ty)] += 1;
    }

    /// A request refused before its method could be read (not JSON, not JSON-RPC 2.0,
    /// too large; each request of a batch): [`Metrics::request_refused`] under
    /// [`OTHER`].
    pub fn request_unread(&self, error_type: &str) {
        self.request_refused(OTHER, error_type);
    }

    /// A request the gateway refused before any work (unread, a duplicate id, too many
    /// in flight): counted with `error_type`, and not in the duration histogram (no
    /// operation ran; a flood of zero durations under overload would pull down the
    /// quantiles that latency alerts read just when they matter).
    pub fn request_refused(&self, method: &str, error_type: &str) {
        let mut inner = self.inner.borrow_mut();
        inner.requests[method_index(method)][Outcome::Error.index()] += 1;
        inner.errors[error_index(error_type)] += 1;
    }

    /// A client session started.
    pub fn session_opened(&self) {
        self.sessions_active.set(self.sessions_active.get() + 1);
    }

    /// A client session that lasted `duration` ended.
    pub fn session_closed(&self, duration: Duration) {
        self.sessions_active
            .set(self.sessions_active.get().saturating_sub(1));
        self.inner.borrow_mut().sessions.observe(duration);
    }

    /// The gateway ended a session because of its client.
    pub fn session_dropped(&self, why: Dropped) {
        let c = &self.sessions_dropped[why as usize];
        c.set(c.get() + 1);
    }

    /// A request started.
    pub fn in_flight_inc(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// A request finished (or was dropped).
    pub fn in_flight_dec(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    /// Counts a request in flight until the guard drops (also on cancellation).
    pub fn in_flight(self: &Rc<Self>) -> InFlight {
        self.in_flight_inc();
        InFlight(self.clone())
    }

    /// Gives `name` its backend series (up = 0, restarts = 0) so they exist before the
    /// backend first starts. Call once per configured backend.
    pub fn register_backend(&self, name: &str) {
        self.with_backend(name, |_| ());
    }

    /// A process of backend `name` started (`true`) or ended (`false`). The
    /// `mcp_gateway_backend_up` gauge is 1 while at least one of its processes runs.
    pub fn backend_up(&self, name: &str, up: bool) {
        self.with_backend(name, |b| {
            b.processes = if up {
                b.processes + 1
            } else {
                b.processes.saturating_sub(1)
            }
        });
    }

    /// The backend `name` was restarted after it exited.
    pub fn backend_restarted(&self, name: &str) {
        self.with_backend(name, |b| b.restarts += 1);
    }

    fn with_backend(&self, name: &str, f: impl FnOnce(&mut Backend)) {
        let mut inner = self.inner.borrow_mut();
        let backends = &mut inner.backends;
        let i = match backends.iter().position(|b| b.name == name) {
            Some(i) => i,
            None if backends.len() < MAX_BACKEND_SERIES => {
                backends.push(Backend {
                    name: name.to_owned(),
                    processes: 0,
                    restarts: 0,
                });
                backends.len() - 1
            }
            None => return,
        };
        f(&mut backends[i]);
    }

    /// The registry in the Prometheus text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let spans = self.spans.borrow().as_ref().map_or((0, 0), |f| f());
        let inner = self.inner.borrow();
        let mut out = String::with_capacity(RENDER_CAPACITY);
        let o = &mut out;

        family(
            o,
            "mcp_gateway_build_info",
            "gauge",
            "Build of the running gateway (value is always 1).",
        );
        sample(
            o,
            "mcp_gateway_build_info",
            &[("version", &self.version), ("commit", &self.commit)],
            1,
        );

        family(
            o,
            "mcp_gateway_requests_total",
            "counter",
            "Requests handled (answered, refused or cancelled), by MCP method and outcome.",
        );
        for (m, per_outcome) in inner.requests.iter().enumerate() {
            for outcome in Outcome::ALL {
                let n = per_outcome[outcome.index()];
                if n > 0 {
                    let labels = [
                        ("mcp_method_name", method_name(m)),
                        ("outcome", outcome.as_str()),
                    ];
                    sample(o, "mcp_gateway_requests_total", &labels, n);
                }
            }
        }

        family(
            o,
            "mcp_gateway_errors_total",
            "counter",
            "Requests that ended in an error, by error type.",
        );
        for (i, n) in inner.errors.iter().enumerate() {
            if *n > 0 {
                let labels = [("error_type", error_name(i))];
                sample(o, "mcp_gateway_errors_total", &labels, *n);
            }
        }

        let name = "mcp_server_operation_duration_seconds";
        family(
            o,
            name,
            "histogram",
            "MCP request duration as observed by the gateway, from receipt until the \
             response is queued (or the client cancels).",
        );
        for (m, h) in inner.operations.iter().enumerate() {
            if let Some(h) = h {
                histogram(o, name, &[("mcp_method_name", method_name(m))], h);
            }
        }

        gauge(
            o,
            "mcp_gateway_sessions_active",
            "Client sessions open now.",
            self.sessions_active.get(),
        );
        let name = "mcp_gateway_sessions_dropped_total";
        family(
            o,
            name,
            "counter",
            "Sessions the gateway closed because of the client: send_timeout (its socket \
             took no bytes for send_timeout) or ping_timeout (silent after a ping).",
        );
        for why in [Dropped::SendTimeout, Dropped::Silent] {
            let n = self.sessions_dropped[why as usize].get();
            sample(o, name, &[("reason", why.label())], n);
        }
        let name = "mcp_server_session_duration_seconds";
        family(
            o,
            name,
            "histogram",
            "Duration of finished client sessions.",
        );
        histogram(o, name, &[], &inner.sessions);

        gauge(
            o,
            "mcp_gateway_requests_in_flight",
            "Client requests being processed now.",
            self.in_flight.get(),
        );

        family(
            o,
            "mcp_gateway_backend_up",
            "gauge",
            "1 if the backend process is running, else 0.",
        );
        for b in &inner.backends {
            sample(
                o,
                "mcp_gateway_backend_up",
                &[("backend", &b.name)],
                u64::from(b.processes > 0),
            );
        }
        family(
            o,
            "mcp_gateway_backend_restarts_total",
            "counter",
            "Backend processes restarted after they exited.",
        );
        for b in &inner.backends {
            sample(
                o,
                "mcp_gateway_backend_restarts_total",
                &[("backend", &b.name)],
                b.restarts,
            );
        }

        counter(
            o,
            "mcp_gateway_spans_exported_total",
            "Trace spans the exporter delivered.",
            spans.0,
        );
        counter(
            o,
            "mcp_gateway_spans_dropped_total",
            "Trace spans dropped (queue full or export failed).",
            spans.1,
        );
        out
    }
}

/// Initial size of the rendered text (it grows if needed).
const RENDER_CAPACITY: usize = 8 * 1024;

/// Decrements `mcp_gateway_requests_in_flight` when dropped.
pub struct InFlight(Rc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight_dec();
    }
}

// Writing to a `String` cannot fail, hence the ignored `fmt::Result`s below.

fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn gauge(o: &mut String, name: &str, help: &str, v: u64) {
    family(o, name, "gauge", help);
    sample(o, name, &[], v);
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    family(o, name, "counter", help);
    sample(o, name, &[], v);
}

fn sample(o: &mut String, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
    o.push_str(name);
    write_labels(o, labels, None);
    let _ = writeln!(o, " {v}");
}

fn histogram(o: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    let mut cumulative = 0;
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        let le = match h.bounds.get(i) {
            Some(b) => b.to_string(),
            None => "+Inf".to_owned(),
        };
        let _ = write!(o, "{name}_bucket");
        write_labels(o, labels, Some(&le));
        let _ = writeln!(o, " {cumulative}");
    }
    let _ = write!(o, "{name}_sum");
    write_labels(o, labels, None);
    let _ = writeln!(o, " {}", h.sum);
    let _ = write!(o, "{name}_count");
    write_labels(o, labels, None);
    let _ = writeln!(o, " {}", h.count);
}

/// `{a="x",b="y"}` (with `le` last when given), nothing when there are no labels.
fn write_labels(o: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    o.push('{');
    let le = le.map(|v| ("le", v));
    for (i, (k, v)) in labels.iter().copied().chain(le).enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str(k);
        o.push_str("=\"");
        escape_label_value(o, v);
        o.push('"');
    }
    o.push('}');
}

/// Label values escape `\`, `"` and newline.
fn escape_label_value(o: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
}

/// HELP text escapes `\` and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap, HashSet};

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    /// A strict-enough parser of the 0.0.4 text format: returns TYPE by family and the
    /// samples, failing on anything malformed.
    fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
        let mut types = HashMap::new();
        let mut helps = HashSet::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "exposition ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has text");
                assert!(valid_name(name), "{line}");
                assert!(helps.insert(name.to_owned()), "duplicate HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert!(valid_name(name), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "duplicate TYPE: {line}"
                );
            } else {
                assert!(!line.starts_with('#'), "unexpected comment: {line}");
                samples.push(parse_sample(line));
            }
        }
        (types, samples)
    }

    fn valid_name(n: &str) -> bool {
        let mut cs = n.chars();
        matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("sample has a value");
        let name = &line[..name_end];
        assert!(valid_name(name), "bad name: {line}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            loop {
                let (start, c) = chars.next().expect("unterminated labels");
                if c == '}' {
                    rest = &body[start + 1..];
                    break;
                }
                let eq = body[start..].find("=\"").expect("label has =\"") + start;
                let key = &body[start..eq];
                assert!(valid_name(key), "bad label name {key:?}: {line}");
                // Skip to just after the opening quote.
                for (i, _) in chars.by_ref() {
                    if i == eq + 1 {
                        break;
                    }
                }
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("dangling escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c}: {line}"),
                        },
                        '\n' => panic!("raw newline in label value"),
                        c => value.push(c),
                    }
                }
                labels.push((key.to_owned(), value));
                match chars.next().expect("unterminated labels") {
                    (_, ',') => {}
                    (i, '}') => {
                        rest = &body[i + 1..];
                        break;
                    }
                    (_, c) => panic!("unexpected {c:?} after a label: {line}"),
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("one space before the value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    /// The family a sample belongs to, given the declared TYPEs.
    fn family_of<'a>(types: &'a HashMap<String, String>, name: &str) -> (&'a str, &'a str) {
        if let Some((k, v)) = types.get_key_value(name) {
            return (k, v);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if let Some((k, v)) = types.get_key_value(base) {
                    assert_eq!(v, "histogram", "{name}");
                    return (k, v);
                }
            }
        }
        panic!("sample {name} has no TYPE");
    }

    /// Checks structure: TYPE for every sample, no duplicate series, counters named
    /// `_total`, histograms cumulative with `+Inf` == `_count`. Returns the samples.
    fn check(text: &str) -> Vec<Sample> {
        let (types, samples) = parse(text);
        let mut seen = HashSet::new();
        // histogram series (family, labels without le) -> (buckets, sum, count)
        type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
        let mut hists: BTreeMap<(String, Vec<(String, String)>), Series> = BTreeMap::new();
        for s in &samples {
            let (fam, kind) = family_of(&types, &s.name);
            assert!(
                seen.insert(format!("{}{:?}", s.name, s.labels)),
                "dup {s:?}"
            );
            if kind == "counter" {
                assert!(fam.ends_with("_total"), "{fam}");
            }
            if kind != "histogram" {
                assert!(s.value >= 0.0, "{s:?}");
                continue;
            }
            let le = s.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v);
            let rest: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            let e = hists.entry((fam.to_owned(), rest)).or_default();
            if s.name.ends_with("_bucket") {
                let le = le.expect("bucket has le");
                let b = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                e.0.push((b, s.value));
            } else if s.name.ends_with("_sum") {
                assert!(le.is_none());
                e.1 = Some(s.value);
            } else {
                assert!(le.is_none());
                e.2 = Some(s.value);
            }
        }
        for ((fam, labels), (buckets, sum, count)) in &hists {
            let count = count.unwrap_or_else(|| panic!("{fam}{labels:?} has no _count"));
            assert!(sum.is_some(), "{fam}{labels:?} has no _sum");
            assert!(!buckets.is_empty());
            for w in buckets.windows(2) {
                assert!(w[0].0 < w[1].0, "le increasing: {fam}");
                assert!(w[0].1 <= w[1].1, "buckets cumulative: {fam}");
            }
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{fam} ends with +Inf");
            assert_eq!(last.1, count, "{fam}: +Inf == _count");
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
            .value
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn empty_registry_is_valid_and_names_every_family() {
        let m = Metrics::new("0.1.0", "abc123");
        let text = m.render();
        let samples = check(&text);
        for name in [
            "mcp_gateway_build_info",
            "mcp_gateway_requests_total",
            "mcp_gateway_errors_total",
            "mcp_server_operation_duration_seconds",
            "mcp_gateway_sessions_active",
            "mcp_server_session_duration_seconds",
            "mcp_gateway_requests_in_flight",
            "mcp_gateway_backend_up",
            "mcp_gateway_backend_restarts_total",
            "mcp_gateway_spans_exported_total",
            "mcp_gateway_spans_dropped_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        let build = [("version", "0.1.0"), ("commit", "abc123")];
        assert_eq!(value(&samples, "mcp_gateway_build_info", &build), 1.0);
        assert_eq!(value(&samples, "mcp_gateway_spans_dropped_total", &[]), 0.0);
        let inf = [("le", "+Inf")];
        assert_eq!(
            value(&samples, "mcp_server_session_duration_seconds_bucket", &inf),
            0.0
        );
    }

    #[test]
    fn records_requests_sessions_backends_and_spans() {
        let m = Rc::new(Metrics::new("0.1.0", "abc123"));
        m.request_finished("tools/call", Outcome::Ok, None, ms(3));
        m.request_finished("tools/call", Outcome::ToolError, None, ms(40));
        m.request_finished("tools/call", Outcome::Error, Some("-32001"), ms(60_000));
        m.request_finished("tools/list", Outcome::Ok, None, Duration::from_micros(50));
        m.request_finished("x/custom", Outcome::Error, Some("-32601"), ms(1));
        m.request_finished("y/custom", Outcome::Error, Some("weird"), ms(1));
        m.request_finished("ping", Outcome::Error, None, Duration::from_secs(600));
        m.request_unread("-32700");
        m.session_opened();
        m.session_opened();
        m.session_closed(Duration::from_secs(30));
        m.session_dropped(Dropped::Silent);
        m.session_dropped(Dropped::Silent);
        let g1 = m.in_flight();
        let g2 = m.in_flight();
        drop(g1);
        m.register_backend("files");
        m.backend_up("files", true);
        m.backend_up("git", true);
        m.backend_restarted("git");
        m.backend_up("git", false);
        m.set_span_source(|| (42, 7));
        let s = check(&m.render());
        drop(g2);

        let req = "mcp_gateway_requests_total";
        let call = ("mcp_method_name", "tools/call");
        assert_eq!(value(&s, req, &[call, ("outcome", "ok")]), 1.0);
        assert_eq!(value(&s, req, &[call, ("outcome", "tool_error")]), 1.0);
        assert_eq!(value(&s, req, &[call, ("outcome", "error")]), 1.0);
        let other = ("mcp_method_name", "other");
        assert_eq!(value(&s, req, &[other, ("outcome", "error")]), 3.0);
        let err = "mcp_gateway_errors_total";
        assert_eq!(value(&s, err, &[("error_type", "tool_error")]), 1.0);
        assert_eq!(value(&s, err, &[("error_type", "-32001")]), 1.0);
        assert_eq!(value(&s, err, &[("error_type", "-32601")]), 1.0);
        assert_eq!(value(&s, err, &[("error_type", "other")]), 2.0);

        let op = "mcp_server_operation_duration_seconds";
        let b = format!("{op}_bucket");
        assert_eq!(value(&s, &b, &[call, ("le", "0.0025")]), 0.0);
        assert_eq!(value(&s, &b, &[call, ("le", "0.005")]), 1.0);
        assert_eq!(value(&s, &b, &[call, ("le", "0.05")]), 2.0);
        // Bounds are inclusive: exactly 60 s lands in le="60".
        assert_eq!(value(&s, &b, &[call, ("le", "60")]), 3.0);
        assert_eq!(value(&s, &format!("{op}_count"), &[call]), 3.0);
        let sum = value(&s, &format!("{op}_sum"), &[call]);
        assert!((sum - 60.043).abs() < 1e-9, "{sum}");
        let list = ("mcp_method_name", "tools/list");
        assert_eq!(value(&s, &b, &[list, ("le", "0.0001")]), 1.0);
        let ping = ("mcp_method_name", "ping");
        assert_eq!(value(&s, &b, &[ping, ("le", "60")]), 0.0);
        assert_eq!(value(&s, &b, &[ping, ("le", "+Inf")]), 1.0);
        // The unread request is not an operation: two of the three under `other`.
        assert_eq!(value(&s, &format!("{op}_count"), &[other]), 2.0);
        assert_eq!(value(&s, err, &[("error_type", "-32700")]), 1.0);

        assert_eq!(value(&s, "mcp_gateway_sessions_active", &[]), 1.0);
        let dropped = "mcp_gateway_sessions_dropped_total";
        assert_eq!(value(&s, dropped, &[("reason", "send_timeout")]), 0.0);
        assert_eq!(value(&s, dropped, &[("reason", "ping_timeout")]), 2.0);
        let sess = "mcp_server_session_duration_seconds";
        assert_eq!(value(&s, &format!("{sess}_bucket"), &[("le", "15")]), 0.0);
        assert_eq!(value(&s, &format!("{sess}_bucket"), &[("le", "60")]), 1.0);
        assert_eq!(value(&s, "mcp_gateway_requests_in_flight", &[]), 1.0);

        let up = "mcp_gateway_backend_up";
        assert_eq!(value(&s, up, &[("backend", "files")]), 1.0);
        assert_eq!(value(&s, up, &[("backend", "git")]), 0.0);
        let restarts = "mcp_gateway_backend_restarts_total";
        assert_eq!(value(&s, restarts, &[("backend", "files")]), 0.0);
        assert_eq!(value(&s, restarts, &[("backend", "git")]), 1.0);
        assert_eq!(value(&s, "mcp_gateway_spans_exported_total", &[]), 42.0);
        assert_eq!(value(&s, "mcp_gateway_spans_dropped_total", &[]), 7.0);

        // The guard released its count.
        assert!(m.render().contains("\nmcp_gateway_requests_in_flight 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new("1.0 \"beta\"", "a\\b\nc");
        m.backend_up("we\"ird\\na\nme", true);
        let text = m.render();
        assert!(
            text.contains(r#"version="1.0 \"beta\"",commit="a\\b\nc""#),
            "{text}"
        );
        let s = check(&text);
        let build = [("version", "1.0 \"beta\""), ("commit", "a\\b\nc")];
        assert_eq!(value(&s, "mcp_gateway_build_info", &build), 1.0);
        let up = [("backend", "we\"ird\\na\nme")];
        assert_eq!(value(&s, "mcp_gateway_backend_up", &up), 1.0);
    }

    #[test]
    fn label_cardinality_is_bounded() {
        let m = Metrics::new("0", "0");
        for i in 0..MAX_BACKEND_SERIES + 10 {
            m.backend_up(&format!("b{i}"), true);
            m.request_finished(
                &format!("m{i}"),
                Outcome::Error,
                Some(&format!("e{i}")),
                ms(1),
            );
        }
        let s = check(&m.render());
        let count = |name: &str| s.iter().filter(|x| x.name == name).count();
        assert_eq!(count("mcp_gateway_backend_up"), MAX_BACKEND_SERIES);
        assert_eq!(count("mcp_gateway_requests_total"), 1);
        assert_eq!(count("mcp_gateway_errors_total"), 1);
        assert_eq!(
            count("mcp_server_operation_duration_seconds_bucket"),
            OPERATION_BUCKETS.len() + 1
        );
    }

    #[test]
    fn known_sets_are_consistent() {
        for set in [KNOWN_METHODS, ERROR_TYPES] {
            let unique: HashSet<_> = set.iter().collect();
            assert_eq!(unique.len(), set.len());
            assert!(!set.contains(&OTHER));
        }
        for b in [OPERATION_BUCKETS, SESSION_BUCKETS] {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
        for code in [
            codes::PARSE_ERROR,
            codes::INVALID_REQUEST,
            codes::METHOD_NOT_FOUND,
            codes::INVALID_PARAMS,
            codes::INTERNAL_ERROR,
            codes::BACKEND_UNAVAILABLE,
            codes::REQUEST_TIMEOUT,
            codes::RESOURCE_NOT_FOUND,
            codes::OVERLOADED,
            codes::GATEWAY_UNAVAILABLE,
        ] {
            let t = error_type_for_code(code);
            assert_eq!(t, code.to_string());
            assert!(ERROR_TYPES.contains(&t));
        }
        assert_eq!(error_type_for_code(-1), OTHER);
    }
}
