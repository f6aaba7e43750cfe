//! The human-readable exporter: one tree per local root span (one without a parent in
//! this process), printed when that root ends, in the layout of the tracing guide's
//! example traces (requests that share a trace, a host's parallel calls, each print
//! their own tree):
//!
//! ```text
//! mcp-router: stdio.read (10.2ms) tools/call fx.echo trace_id=4bf92f3577b34da6a3ce929d0e0e4736
//!   └─ mcp-router: gateway.request (8.1ms)
//! ```
//!
//! The top line of a tree adds what the guide's example has not: the request's
//! `mcp.method.name` (with its tool, prompt or resource) and the trace id. What a peer
//! sent is printed with its control characters escaped, as plain log lines have them.
//!
//! Or one JSON object per span and line (`stdout_format = "json"`). The router writes
//! to stderr (its stdout is the MCP channel); the gateway to stdout.
//!
//! A span is [`bounded`] before it is queued for this exporter: string values longer
//! than [`MAX_VALUE_BYTES`] are cut, as the OTLP encoder cuts them, so a queued or
//! waiting span has a bounded size whatever a peer put in a tool name or an error
//! message (the queue is bounded in spans: with a stdout nobody drains, 1 MB tool names
//! grew the gateway by 6.7 MB per request before).

use std::collections::HashMap;
use std::io::Write;

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;
use serde_json::json;

use super::attrs::{cut, MAX_VALUE_BYTES};
use crate::config::StdoutFormat;

/// Traces held while waiting for their root span, at most: beyond, the oldest one's
/// spans are printed as they are, marked as printed without their root, and the root,
/// if it ends later, is marked as printed apart from them.
pub const MAX_OPEN_TRACES: usize = 256;
/// Spans that spans printed without their root hang under (their parents, still
/// running then) remembered, at most (the most recent): what marks the root that ends
/// after them, and only that one (other requests of the same trace are whole).
pub const MAX_SPLIT_PARENTS: usize = 4096;
/// Spans held per open trace, at most.
pub const MAX_SPANS_PER_TRACE: usize = 512;
/// Ids of printed spans remembered, at most (the most recent): a span that ends after
/// its parent was printed (a backend start that outlived the request which asked for
/// it) is printed at once, marked late, instead of waiting for a root that has gone.
pub const MAX_PRINTED_IDS: usize = 4096;

/// After the root line of a late span.
const LATE_NOTE: &str = " (ended after its parent was printed)";
/// After the root lines of spans printed without their root because more than
/// [`MAX_OPEN_TRACES`] traces were waiting (their root may still end, or never here).
const SPLIT_NOTE: &str = " (printed without its root: more traces were waiting than are held)";
/// After the top line of a root some of whose spans were printed before it, with
/// [`SPLIT_NOTE`].
const SPLIT_ROOT_NOTE: &str =
    " (some of its trace was printed before it: more traces were waiting than are held)";
/// After the root lines of spans still waiting for their root at shutdown.
const ROOTLESS_NOTE: &str = " (its root had not ended at shutdown)";

/// Which stream the exporter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output (the gateway).
    Stdout,
    /// Standard error (the router: its stdout is the MCP channel).
    Stderr,
}

/// Prints finished traces.
#[derive(Debug)]
pub struct StdoutExporter {
    target: Target,
    format: StdoutFormat,
    service: String,
    open: HashMap<TraceId, Vec<SpanData>>,
    order: Vec<TraceId>,
    /// Printed span ids, and their order (for [`MAX_PRINTED_IDS`]).
    printed: std::collections::HashSet<SpanId>,
    printed_order: std::collections::VecDeque<SpanId>,
    /// The parents of spans printed without their root ([`SPLIT_NOTE`]), and their
    /// order (for [`MAX_SPLIT_PARENTS`]).
    split: std::collections::HashSet<SpanId>,
    split_order: std::collections::VecDeque<SpanId>,
}

impl StdoutExporter {
    /// An exporter writing to `target`.
    pub fn new(target: Target, format: StdoutFormat) -> Self {
        StdoutExporter {
            target,
            format,
            service: String::new(),
            open: HashMap::new(),
            order: Vec::new(),
            printed: Default::default(),
            printed_order: Default::default(),
            split: Default::default(),
            split_order: Default::default(),
        }
    }

    /// Takes `service.name` from the resource.
    pub fn set_resource(&mut self, r: &Resource) {
        if let Some(v) = r.get(&opentelemetry::Key::new("service.name")) {
            self.service = v.to_string();
        }
    }

    fn write(&self, text: &str) -> Result<(), String> {
        let r = match self.target {
            Target::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
            Target::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
        };
        r.map_err(|e| e.to_string())
    }

    /// Prints the traces whose root has ended; keeps the rest for later batches.
    pub fn export(&mut self, batch: Vec<SpanData>) -> Result<(), String> {
        let out = self.render(batch);
        if out.is_empty() {
            return Ok(());
        }
        self.write(&out)
    }

    /// At shutdown: prints what still waits for a root, marked as such.
    pub fn finish(&mut self) -> Result<(), String> {
        let out = self.render_rest();
        if out.is_empty() {
            return Ok(());
        }
        self.write(&out)
    }

    /// What [`Self::finish`] prints.
    fn render_rest(&mut self) -> String {
        let mut out = String::new();
        for id in std::mem::take(&mut self.order) {
            if let Some(spans) = self.open.remove(&id) {
                out.push_str(&marked(&self.service, &spans, ROOTLESS_NOTE));
            }
        }
        out
    }

    /// Notes spans as printed (the most recent [`MAX_PRINTED_IDS`]).
    fn remember(&mut self, spans: &[SpanData]) {
        for s in spans {
            let id = s.span_context.span_id();
            if self.printed.insert(id) {
                self.printed_order.push_back(id);
            }
        }
        while self.printed_order.len() > MAX_PRINTED_IDS {
            if let Some(old) = self.printed_order.pop_front() {
                self.printed.remove(&old);
            }
        }
    }

    /// What [`Self::export`] prints for `batch`.
    fn render(&mut self, batch: Vec<SpanData>) -> String {
        if self.format == StdoutFormat::Json {
            let mut out = String::new();
            for s in &batch {
                out.push_str(&span_json(&self.service, s));
                out.push('\n');
            }
            return out;
        }
        let mut finished = Vec::new();
        let mut late = Vec::new();
        for s in batch {
            let id = s.span_context.trace_id();
            let is_root = s.parent_span_id == SpanId::INVALID || s.parent_span_is_remote;
            if !is_root && self.printed.contains(&s.parent_span_id) {
                late.push(s);
                continue;
            }
            if !self.open.contains_key(&id) {
                self.order.push(id);
            }
            if is_root {
                finished.push((id, s.span_context.span_id()));
            }
            let spans = self.open.entry(id).or_default();
            if spans.len() < MAX_SPANS_PER_TRACE || is_root {
                spans.push(s);
            }
        }
        let mut out = String::new();
        for (id, root) in finished {
            let Some(spans) = self.open.get_mut(&id) else {
                continue;
            };
            // Only this root's own subtree: other requests of the same trace (a host's
            // parallel calls under one trace context) may still be running, and their
            // finished spans wait for their own root.
            let tree = take_subtree(spans, root);
            if spans.is_empty() {
                self.open.remove(&id);
                self.order.retain(|t| *t != id);
            }
            // Marked when part of its own subtree went before it; each mark is used
            // once (the order entry goes when it falls out of the bound).
            let mut part_went = false;
            for s in &tree {
                part_went |= self.split.remove(&s.span_context.span_id());
            }
            if part_went {
                out.push_str(&marked(&self.service, &tree, SPLIT_ROOT_NOTE));
            } else {
                out.push_str(&render_tree(&self.service, &tree));
            }
            self.remember(&tree);
        }
        // Late spans, with whatever ended under them (their children end first, so they
        // wait in `open`).
        for l in late {
            let trace = l.span_context.trace_id();
            let mut tree = match self.open.get_mut(&trace) {
                Some(spans) => {
                    let under = take_subtree(spans, l.span_context.span_id());
                    if spans.is_empty() {
                        self.open.remove(&trace);
                        self.order.retain(|t| *t != trace);
                    }
                    under
                }
                None => Vec::new(),
            };
            tree.push(l);
            out.push_str(&marked(&self.service, &tree, LATE_NOTE));
            self.remember(&tree);
        }
        // Bounded after this batch's trees are out: a full batch of small traces is
        // printed whole, and what is pushed out is printed too, not lost; its root,
        // if it ends later, says that part of its trace went before it.
        while self.order.len() > MAX_OPEN_TRACES {
            let old = self.order.remove(0);
            if let Some(spans) = self.open.remove(&old) {
                out.push_str(&marked(&self.service, &spans, SPLIT_NOTE));
                self.remember(&spans);
                // The spans these hang under, not printed with them: still running.
                let ids: std::collections::HashSet<SpanId> =
                    spans.iter().map(|s| s.span_context.span_id()).collect();
                for s in &spans {
                    let parent = s.parent_span_id;
                    if parent != SpanId::INVALID
                        && !ids.contains(&parent)
                        && self.split.insert(parent)
                    {
                        self.split_order.push_back(parent);
                    }
                }
                while self.split_order.len() > MAX_SPLIT_PARENTS {
                    if let Some(gone) = self.split_order.pop_front() {
                        self.split.remove(&gone);
                    }
                }
            }
        }
        out
    }
}

/// `span` with every string it holds (name, attribute values, events' names and
/// attribute values, links' attribute values, status message) cut to at most
/// [`MAX_VALUE_BYTES`] at a character boundary. What the batch processor queues for
/// this exporter.
pub fn bounded(mut span: SpanData) -> SpanData {
    fn name(n: &mut std::borrow::Cow<'static, str>) {
        if n.len() > MAX_VALUE_BYTES {
            *n = cut(n).to_string().into();
        }
    }
    fn values(kvs: &mut [opentelemetry::KeyValue]) {
        use opentelemetry::{Array, StringValue, Value};
        let long = |s: &StringValue| s.as_str().len() > MAX_VALUE_BYTES;
        for kv in kvs {
            match &mut kv.value {
                Value::String(v) if long(v) => *v = cut(v.as_str()).to_string().into(),
                Value::Array(Array::String(vs)) if vs.iter().any(long) => {
                    for v in vs.iter_mut().filter(|v| long(v)) {
                        *v = cut(v.as_str()).to_string().into();
                    }
                }
                _ => {}
            }
        }
    }
    name(&mut span.name);
    values(&mut span.attributes);
    for e in span.events.events.iter_mut() {
        name(&mut e.name);
        values(&mut e.attributes);
    }
    for l in span.links.links.iter_mut() {
        values(&mut l.attributes);
    }
    if let Status::Error { description } = &mut span.status {
        name(description);
    }
    span
}

/// [`render_tree`] with `note` after each top line.
fn marked(service: &str, spans: &[SpanData], note: &str) -> String {
    let mut out = String::new();
    for line in render_tree(service, spans).lines() {
        out.push_str(line);
        if !line.starts_with(' ') {
            out.push_str(note);
        }
        out.push('\n');
    }
    out
}

/// Removes from `spans` the span `root` and every span under it, and returns them.
fn take_subtree(spans: &mut Vec<SpanData>, root: SpanId) -> Vec<SpanData> {
    let mut ids = std::collections::HashSet::from([root]);
    // Parents may come after their children in `spans`: repeat until nothing joins.
    loop {
        let before = ids.len();
        for s in spans.iter() {
            if ids.contains(&s.parent_span_id) && s.span_context.span_id() != root {
                ids.insert(s.span_context.span_id());
            }
        }
        if ids.len() == before {
            break;
        }
    }
    let (tree, rest) = std::mem::take(spans)
        .into_iter()
        .partition(|s| ids.contains(&s.span_context.span_id()));
    *spans = rest;
    tree
}

fn duration_text(s: &SpanData) -> String {
    let d = s.end_time.duration_since(s.start_time).unwrap_or_default();
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}ms")
    } else if ms >= 1.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.0}µs", ms * 1000.0)
    }
}

/// Renders spans of one trace as an indented tree (roots: spans whose parent is not
/// among them), children in start order.
pub fn render_tree(service: &str, spans: &[SpanData]) -> String {
    let ids: std::collections::HashSet<SpanId> =
        spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id))
        .collect();
    roots.sort_by_key(|s| s.start_time);
    let mut out = String::new();
    for r in roots {
        render_node(service, spans, r, "", true, true, &mut out);
    }
    out
}

fn render_node(
    service: &str,
    all: &[SpanData],
    s: &SpanData,
    prefix: &str,
    last: bool,
    root: bool,
    out: &mut String,
) {
    let (branch, child_prefix) = if root {
        (String::new(), String::from("  "))
    } else if last {
        (format!("{prefix}└─ "), format!("{prefix}    "))
    } else {
        (format!("{prefix}├─ "), format!("{prefix}│   "))
    };
    let cancelled = s
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "mcp.request.cancelled" && kv.value.as_str() == "true");
    let status = match (&s.status, cancelled) {
        (Status::Error { .. }, _) => " [ERROR]",
        // Not an error (MCP), but not a success either.
        (_, true) => " [cancelled]",
        _ => "",
    };
    out.push_str(&format!(
        "{branch}{service}: {} ({}){status}",
        escape(&s.name),
        duration_text(s)
    ));
    if root {
        // What the request was and its trace id, so that a tree can be told from the
        // next one and found in the logs (whose lines carry `trace_id`) and the other
        // service's trees.
        // (The router's `stdio.read` names the method; its child, the tool.)
        let attr = |key: &str| {
            std::iter::once(s)
                .chain(
                    all.iter()
                        .filter(|c| c.parent_span_id == s.span_context.span_id()),
                )
                .flat_map(|sp| sp.attributes.iter())
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        if let Some(method) = attr("mcp.method.name") {
            out.push(' ');
            out.push_str(&escape(&method));
            let target = ["gen_ai.tool.name", "gen_ai.prompt.name", "mcp.resource.uri"]
                .into_iter()
                .find_map(attr);
            if let Some(t) = target {
                out.push(' ');
                out.push_str(&escape(&t));
            }
        }
        out.push_str(&format!(" trace_id={}", s.span_context.trace_id()));
    }
    out.push('\n');
    let mut children: Vec<&SpanData> = all
        .iter()
        .filter(|c| c.parent_span_id == s.span_context.span_id())
        .collect();
    children.sort_by_key(|c| c.start_time);
    // The error line stands under the span where the error happened: the failed span
    // none of whose children failed.
    let child_failed = children
        .iter()
        .any(|c| matches!(c.status, Status::Error { .. }));
    let error_line = match &s.status {
        Status::Error { description } if !description.is_empty() && !child_failed => {
            Some(description.to_string())
        }
        _ => None,
    };
    let n = children.len() + usize::from(error_line.is_some());
    for (i, c) in children.iter().enumerate() {
        render_node(service, all, c, &child_prefix, i + 1 == n, false, out);
    }
    if let Some(e) = error_line {
        out.push_str(&format!("{child_prefix}└─ error: {e:?}\n"));
    }
}

/// Peer text (a method, a tool or prompt name, a resource URI) for a tree line: control
/// characters written as escapes, as plain log lines have them
/// ([`crate::logger::escape_controls`]), so a client cannot start a line that looks
/// like a tree's own or drive the operator's terminal. (The error line under a span is
/// escaped by its `{:?}`; JSON lines escape them anyway.)
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(|c: char| c != '\t' && c.is_control()) {
        crate::logger::escape_controls(text.to_string()).into()
    } else {
        text.into()
    }
}

/// An attribute value as JSON of its own type (a port stays a number, a flag a bool).
fn json_value(v: &opentelemetry::Value) -> serde_json::Value {
    use opentelemetry::Value;
    match v {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        other => json!(other.to_string()),
    }
}

fn span_json(service: &str, s: &SpanData) -> String {
    let attrs: serde_json::Map<String, serde_json::Value> = s
        .attributes
        .iter()
        .map(|kv| (kv.key.to_string(), json_value(&kv.value)))
        .collect();
    let (status, message) = match &s.status {
        Status::Error { description } => ("error", description.to_string()),
        Status::Ok => ("ok", String::new()),
        Status::Unset => ("unset", String::new()),
    };
    json!({
        "service": service,
        "trace_id": s.span_context.trace_id().to_string(),
        "span_id": s.span_context.span_id().to_string(),
        "parent_span_id": (s.parent_span_id != SpanId::INVALID).then(|| s.parent_span_id.to_string()),
        "name": s.name,
        "kind": format!("{:?}", s.span_kind).to_lowercase(),
        "duration_us": s.end_time.duration_since(s.start_time).unwrap_or_default().as_micros() as u64,
        "status": status,
        "status_message": message,
        "attributes": attrs,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
    use opentelemetry::InstrumentationScope;
    use std::time::{Duration, SystemTime};

    fn span(trace: u128, id: u64, parent: u64, name: &'static str, start_ms: u64) -> SpanData {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent == 99,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: t0 + Duration::from_millis(start_ms),
            end_time: t0 + Duration::from_millis(start_ms + 2),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    /// What a tree's top line ends with for trace `t`.
    fn tid(t: u128) -> String {
        format!(" trace_id={t:032x}")
    }

    #[test]
    fn json_lines_keep_the_types_of_attribute_values() {
        use opentelemetry::KeyValue;
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Json);
        let mut s = span(1, 1, 0, "http.request", 0);
        s.attributes = vec![
            KeyValue::new("server.port", 4317_i64),
            KeyValue::new("auth.success", true),
            KeyValue::new("mcp.method.name", "ping"),
        ];
        let out = e.render(vec![s]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(
            v["attributes"],
            json!({"server.port": 4317, "auth.success": true, "mcp.method.name": "ping"})
        );
    }

    #[test]
    fn a_cancelled_span_says_so() {
        use opentelemetry::KeyValue;
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        e.service = "gw".into();
        let mut s = span(0xab, 1, 0, "host.request", 0);
        s.attributes = vec![
            KeyValue::new("mcp.method.name", "sampling/createMessage"),
            KeyValue::new("mcp.request.cancelled", true),
        ];
        let out = e.render(vec![s]);
        assert_eq!(
            out,
            format!(
                "gw: host.request (2.0ms) [cancelled] sampling/createMessage{}\n",
                tid(0xab)
            )
        );
    }

    #[test]
    fn a_top_line_names_the_request_and_its_trace() {
        use opentelemetry::KeyValue;
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        e.service = "gw".into();
        let mut call = span(0xab, 1, 0, "http.request", 0);
        call.attributes = vec![
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("gen_ai.tool.name", "fx.echo"),
        ];
        call.status = Status::error("tool_error");
        let mut list = span(0xcd, 2, 0, "http.request", 0);
        list.attributes = vec![KeyValue::new("mcp.method.name", "tools/list")];
        let out = e.render(vec![call, list]);
        assert_eq!(
            out,
            format!(
                "gw: http.request (2.0ms) [ERROR] tools/call fx.echo{}\n  └─ error: \"tool_error\"\n\
                 gw: http.request (2.0ms) tools/list{}\n",
                tid(0xab),
                tid(0xcd)
            )
        );
    }

    /// A client's tool name or method cannot start a line of its own or reach the
    /// terminal as an escape sequence: the tree writes control characters as the log
    /// lines do.
    #[test]
    fn peer_text_on_a_tree_line_has_its_control_characters_escaped() {
        use opentelemetry::KeyValue;
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        e.service = "gw".into();
        let forged =
            "fx.echo\ngw: http.request (1ms) tools/call fx.FORGED\r\u{1b}[2J\u{7f}\u{85}\tx";
        let mut call = span(0xab, 1, 0, "http.request", 0);
        call.attributes = vec![
            KeyValue::new("mcp.method.name", "tools/call\nFORGED"),
            KeyValue::new("gen_ai.tool.name", forged),
        ];
        let mut child = span(0xab, 2, 1, "backend.forward", 1);
        child.name = "backend\n.forward".into();
        let out = e.render(vec![child, call]);
        assert_eq!(
            out,
            format!(
                "gw: http.request (2.0ms) tools/call\\nFORGED fx.echo\\ngw: http.request (1ms) \
                 tools/call fx.FORGED\\r\\u{{1b}}[2J\\u{{7f}}\\u{{85}}\tx{}\n  \
                 └─ gw: backend\\n.forward (2.0ms)\n",
                tid(0xab)
            )
        );
    }

    #[test]
    fn a_root_prints_its_own_subtree_not_the_rest_of_its_trace() {
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        e.service = "gw".into();
        // Two requests under one remote parent (99): A (1, child 2 and grandchild 3)
        // is still running when B (4, child 5) ends.
        let out = e.render(vec![
            span(7, 3, 2, "a.grandchild", 2),
            span(7, 2, 1, "a.child", 1),
            span(7, 5, 4, "b.child", 4),
            span(7, 4, 99, "b", 3),
        ]);
        assert_eq!(
            out,
            format!("gw: b (2.0ms){}\n  └─ gw: b.child (2.0ms)\n", tid(7))
        );
        let out = e.render(vec![span(7, 1, 99, "a", 0)]);
        assert_eq!(
            out,
            format!(
                "gw: a (2.0ms){}\n  └─ gw: a.child (2.0ms)\n      └─ gw: a.grandchild (2.0ms)\n",
                tid(7)
            )
        );
        assert!(e.open.is_empty() && e.order.is_empty(), "{:?}", e.open);
    }

    #[test]
    fn a_batch_of_more_small_traces_than_are_held_open_prints_every_one() {
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        let n = MAX_OPEN_TRACES as u64 + 44;
        let batch = (1..=n)
            .map(|t| span(u128::from(t), t, 0, "ping", 0))
            .collect();
        let out = e.render(batch);
        assert_eq!(out.lines().count(), n as usize, "{out}");
        assert!(e.open.is_empty() && e.order.is_empty());
    }

    #[test]
    fn a_span_that_ends_after_its_root_was_printed_is_printed_late() {
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        e.service = "gw".into();
        let out = e.render(vec![span(7, 1, 0, "http.request", 0)]);
        assert_eq!(out, format!("gw: http.request (2.0ms){}\n", tid(7)));
        // Its child ends later, after a grandchild: both print at once, marked.
        let out = e.render(vec![
            span(7, 3, 2, "connect.step", 5),
            span(7, 2, 1, "backend.connect", 4),
        ]);
        assert_eq!(
            out,
            format!(
                "gw: backend.connect (2.0ms){}{LATE_NOTE}\n  └─ gw: connect.step (2.0ms)\n",
                tid(7)
            )
        );
        assert!(e.open.is_empty() && e.order.is_empty(), "{:?}", e.open);
    }

    /// An exporter that has rendered `first` (a span of trace 1) and then one span of
    /// each of [`MAX_OPEN_TRACES`] newer traces, none with its root, and what it printed.
    fn pushed_out(first: SpanData) -> (StdoutExporter, String) {
        let mut e = StdoutExporter::new(Target::Stdout, StdoutFormat::Tree);
        e.service = "gw".into();
        let mut batch = vec![first];
        batch.extend((2..=MAX_OPEN_TRACES as u128 + 1).map(|t| span(t, 20, 21, "waiting", 0)));
        let out = e.render(batch);
        (e, out)
    }

    #[test]
    fn spans_whose_root_never_ends_are_printed_when_pushed_out_and_at_the_end() {
        // Trace 1's root never comes; 256 newer traces wait for theirs.
        let (mut e, out) = pushed_out(span(1, 10, 11, "orphan", 0));
        assert_eq!(out, format!("gw: orphan (2.0ms){}{SPLIT_NOTE}\n", tid(1)));
        assert_eq!(e.order.len(), MAX_OPEN_TRACES);
        let out = e.render_rest();
        assert_eq!(out.lines().count(), MAX_OPEN_TRACES);
        assert!(out.lines().all(|l| l.ends_with(ROOTLESS_NOTE)), "{out}");
        assert!(e.open.is_empty() && e.order.is_empty());
    }

    /// Over MAX_OPEN_TRACES traces waiting, the oldest one's spans are printed without
    /// their root, saying why (not that their root never ended here), and the root, when
    /// it ends, says that part of its trace went before it.
    #[test]
    fn a_trace_pushed_out_while_its_root_runs_is_printed_in_parts_that_say_so() {
        // Trace 1's child ends, then MAX_OPEN_TRACES newer traces' children.
        let (mut e, out) = pushed_out(span(1, 2, 1, "auth.verify", 0));
        assert_eq!(
            out,
            format!("gw: auth.verify (2.0ms){}{SPLIT_NOTE}\n", tid(1))
        );
        // Then trace 1's root and a later child of it.
        let out = e.render(vec![
            span(1, 3, 1, "backend.forward", 5),
            span(1, 1, 0, "http.request", 0),
        ]);
        assert_eq!(
            out,
            format!(
                "gw: http.request (2.0ms){}{SPLIT_ROOT_NOTE}\n  └─ gw: backend.forward (2.0ms)\n",
                tid(1)
            )
        );
        // A trace printed whole is not marked.
        let out = e.render(vec![span(2, 21, 0, "http.request", 0)]);
        assert_eq!(
            out,
            format!(
                "gw: http.request (2.0ms){}\n  └─ gw: waiting (2.0ms)\n",
                tid(2)
            )
        );
        // Nor is another request of trace 1 (a host's calls under one context), whole.
        let out = e.render(vec![
            span(1, 8, 7, "backend.forward", 0),
            span(1, 7, 0, "http.request", 0),
        ]);
        assert_eq!(
            out,
            format!(
                "gw: http.request (2.0ms){}\n  └─ gw: backend.forward (2.0ms)\n",
                tid(1)
            )
        );
    }
}
