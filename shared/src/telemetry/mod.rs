//! OpenTelemetry tracing for both binaries.
//!
//! [`Telemetry::init`] turns a `[tracing]` section (after `OTEL_*` overrides, see
//! [`apply_env`]) into an SDK tracer provider with our sampler choice, resource, and
//! [`batch::BatchProcessor`] feeding one exporter. Disabled tracing is
//! [`Telemetry::disabled`]: no thread, and [`Telemetry::start`] only checks a flag.
//!
//! Sampling: `always_on` and `traceidratio` decide for root spans and otherwise follow
//! the parent's sampled flag (parent-based), because ratio algorithms differ between
//! SDKs of other languages; the flag in `traceparent` is what keeps one decision per
//! trace across services. `always_off` records nothing whatever the parent says, and
//! passes an unsampled flag downstream.
//!
//! Spans are carried explicitly as [`Cx`] values across tasks (never through the
//! thread-local current context); attributes are written through [`Attrs`].

pub mod attrs;
pub mod batch;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub mod conn;
pub mod cx;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub mod encode;
pub mod endpoint;
pub mod export;
pub mod propagation;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub mod span;
pub mod stdout;

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{RandomIdGenerator, Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;

use crate::config::{ExporterType, OtlpProtocol, SamplerType, SpanDetail, TracingConfig};
use crate::jsonrpc::Answer;

pub use cx::{AttrValue, Attrs, Cx, Moment};
pub use stdout::Target;

/// How long shutdown waits for the last spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The process's tracing: a tracer, or nothing.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: Tracer,
    stats: Arc<batch::BatchStats>,
    /// The sampler follows a parent's decision (every type but `always_off`).
    parent_based: bool,
    /// The sampler keeps every root (`always_on`, or a ratio of 1).
    samples_roots: bool,
    /// Short steps as spans (`full`) or as events (`basic`).
    detail: SpanDetail,
    /// OTLP: sampled spans are [`span::RecordingSpan`]s. `None`: SDK spans (stdout).
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    recording: Option<Recording>,
}

/// What [`Inner::start_recording`] needs: the queue the spans end in, and the
/// provider's sampler and id generator, so that the SDK still decides and names them.
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
struct Recording {
    queue: batch::Queue,
    sampler: Sampler,
    ids: RandomIdGenerator,
}

impl Telemetry {
    /// Tracing off.
    pub fn disabled() -> Self {
        Telemetry { inner: None }
    }

    /// Starts tracing as configured (`cfg` already has the environment applied);
    /// `batch_default` is the binary's number of spans per export when `cfg` sets none.
    pub fn init(
        cfg: &TracingConfig,
        service: &'static str,
        version: &str,
        target: Target,
        batch_default: usize,
    ) -> Result<Self, String> {
        if !cfg.enabled {
            return Ok(Self::disabled());
        }
        let mut attrs = vec![
            KeyValue::new(
                "service.name",
                cfg.service_name
                    .clone()
                    .unwrap_or_else(|| service.to_string()),
            ),
            KeyValue::new(
                "service.version",
                cfg.service_version
                    .clone()
                    .unwrap_or_else(|| version.to_string()),
            ),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        ];
        if let Some(env) = &cfg.environment {
            attrs.push(KeyValue::new("deployment.environment.name", env.clone()));
        }
        attrs.extend(
            cfg.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
        let resource = Resource::builder_empty().with_attributes(attrs).build();
        let exporter = match cfg.exporter_type {
            ExporterType::Stdout => {
                export::Exporter::Stdout(stdout::StdoutExporter::new(target, cfg.stdout_format))
            }
            ExporterType::Otlp => match cfg.otlp_protocol {
                #[cfg(feature = "otlp-grpc")]
                OtlpProtocol::Grpc => export::Exporter::grpc(cfg)?,
                #[cfg(feature = "otlp-http")]
                OtlpProtocol::HttpProtobuf => export::Exporter::http(cfg)?,
                #[allow(unreachable_patterns)]
                other => {
                    return Err(format!(
                    "otlp_protocol {other:?} is not built into this binary (cargo features: {})",
                    crate::features()
                ))
                }
            },
        };
        let (processor, stats) = batch::BatchProcessor::start(
            exporter,
            &resource,
            service,
            cfg.max_queue_size,
            cfg.export_batch_size(batch_default),
            cfg.scheduled_delay.0,
            cfg.otlp_timeout.0,
        );
        let sampler = match cfg.sampler_type {
            SamplerType::AlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerType::AlwaysOff => Sampler::AlwaysOff,
            SamplerType::TraceIdRatio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampler_param)))
            }
        };
        let ids = RandomIdGenerator::default();
        #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
        let recording = processor.queue().map(|queue| Recording {
            queue,
            sampler: sampler.clone(),
            ids: ids.clone(),
        });
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_id_generator(ids.clone())
            .with_resource(resource)
            .build();
        // A static scope name: the SDK clones the scope into every ended span.
        let tracer = provider.tracer(service);
        let parent_based = cfg.sampler_type != SamplerType::AlwaysOff;
        let samples_roots = cfg.sampler_type == SamplerType::AlwaysOn
            || (cfg.sampler_type == SamplerType::TraceIdRatio && cfg.sampler_param >= 1.0);
        Ok(Telemetry {
            inner: Some(Arc::new(Inner {
                provider,
                tracer,
                stats,
                parent_based,
                samples_roots,
                detail: cfg.span_detail,
                #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
                recording,
            })),
        })
    }

    /// True when spans are being made.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts a span for a short step of a request under `parent` with
    /// [`SpanDetail::Full`]; with [`SpanDetail::Basic`] records an event of that name
    /// and attributes on `parent` instead and returns `parent`, so that `fail` and `end`
    /// on the result act on the parent (errors are then recorded on it too).
    pub fn step(&self, name: &'static str, parent: &Cx, attrs: impl FnOnce(&mut Attrs)) -> Step {
        self.step_at(name, parent, &Moment::new(), attrs)
    }

    /// [`Telemetry::step`] starting at `at` (the step's span, or its event).
    pub fn step_at(
        &self,
        name: &'static str,
        parent: &Cx,
        at: &Moment,
        attrs: impl FnOnce(&mut Attrs),
    ) -> Step {
        // A step is a leaf: nothing is started under it and its context is never sent
        // on. Inside a trace nobody records, there is nothing for it to carry (no clone
        // of the parent's context, four times per gateway request).
        let psc = parent.span_context();
        if psc.is_valid() && !psc.is_sampled() {
            return Step::Span(Cx::default());
        }
        match &self.inner {
            Some(i) if i.detail == SpanDetail::Basic => {
                parent.step_event(name, at, attrs);
                Step::Event(parent.clone())
            }
            _ => Step::Span(self.start_at(name, SpanKind::Internal, parent, at, attrs)),
        }
    }

    /// Starts a span under `parent` (a new root when `parent` has no span). `attrs` is
    /// only called when the span is sampled. Returns the new span's [`Cx`].
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Cx,
        attrs: impl FnOnce(&mut Attrs),
    ) -> Cx {
        self.start_at(name, kind, parent, &Moment::new(), attrs)
    }

    /// [`Telemetry::start`] with the span starting at `at`.
    pub fn start_at(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Cx,
        at: &Moment,
        attrs: impl FnOnce(&mut Attrs),
    ) -> Cx {
        let Some(inner) = &self.inner else {
            return Cx::default();
        };
        // Inside a trace nobody records (an unsampled parent), a child span would only
        // cost time: the parent's context is passed on instead, carrying the same
        // unsampled flag downstream. Only a trace's first span pays for a sampling
        // decision.
        let psc = parent.span_context();
        if psc.is_valid() && !psc.is_sampled() {
            return parent.clone();
        }
        #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
        if let Some(rec) = &inner.recording {
            return inner.start_recording(rec, name, kind, parent, at, attrs);
        }
        let parent = parent.to_context();
        let mut builder = inner
            .tracer
            .span_builder(Cow::Borrowed(name))
            .with_kind(kind);
        let sampled = if psc.is_valid() {
            inner.parent_based
        } else {
            inner.samples_roots
        };
        if sampled {
            // Known to be sampled (a sampled parent and a parent-based sampler, or a
            // sampler that keeps every root): attributes given at creation are the
            // cheaper way in.
            let span = builder
                .with_start_time(at.time())
                .with_attributes(Attrs::collect(attrs))
                .start_with_context(&inner.tracer, &parent);
            return Cx::from_context(parent.with_span(span));
        }
        // A root (or always_off): attributes are added after the sampling decision (our
        // samplers do not look at them), so an unsampled span never builds them. Its
        // start is the moment's only if the clock was read for it already (the SDK reads
        // its own when it samples; a span it drops costs no reading).
        if let Some(t) = at.read() {
            builder = builder.with_start_time(t);
        }
        let mut span = builder.start_with_context(&inner.tracer, &parent);
        if opentelemetry::trace::Span::is_recording(&span) {
            opentelemetry::trace::Span::set_attributes(&mut span, Attrs::collect(attrs));
        }
        Cx::from_context(parent.with_span(span))
    }

    /// Spans exported and dropped so far.
    pub fn stats(&self) -> (u64, u64) {
        match &self.inner {
            Some(i) => (
                i.stats.exported.load(Ordering::Relaxed),
                i.stats.dropped.load(Ordering::Relaxed),
            ),
            None => (0, 0),
        }
    }

    /// The shared counters (for metrics), when tracing is on.
    pub fn batch_stats(&self) -> Option<Arc<batch::BatchStats>> {
        self.inner.as_ref().map(|i| i.stats.clone())
    }

    /// Exports what is queued, waiting at most [`SHUTDOWN_TIMEOUT`].
    pub fn shutdown(&self) {
        if let Some(i) = &self.inner {
            if let Err(e) = i.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                log::warn!("tracing shutdown: {e}");
            }
            // The tally: the drop warnings come at most one per interval, each with the
            // count so far, and the router has no metrics endpoint to read it from.
            let (exported, dropped) = self.stats();
            if dropped > 0 {
                log::warn!(
                    "tracing: {dropped} span(s) dropped in all (queue full, export failed or refused, or left at the shutdown deadline), {exported} exported"
                );
            } else {
                log::debug!("tracing: {exported} span(s) exported, none dropped");
            }
        }
    }
}

impl Inner {
    /// [`Telemetry::start`] for the OTLP exporters: the SDK tracer's sampling and ids,
    /// with a [`span::RecordingSpan`] for a sampled span, and for an unsampled one
    /// only its context (trace id, a new span id, the unsampled flag) to pass on.
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    fn start_recording(
        &self,
        rec: &Recording,
        name: &'static str,
        kind: SpanKind,
        parent: &Cx,
        at: &Moment,
        attrs: impl FnOnce(&mut Attrs),
    ) -> Cx {
        use opentelemetry::trace::{SpanContext, TraceFlags};
        use opentelemetry_sdk::trace::{IdGenerator, SamplingDecision, ShouldSample};
        let psc = parent.span_context();
        let has_parent = psc.is_valid();
        let trace_id = if has_parent {
            psc.trace_id()
        } else {
            rec.ids.new_trace_id()
        };
        let span_id = rec.ids.new_span_id();
        // As the SDK tracer decides, without a call where the outcome is known (a
        // sampled parent under a parent-based sampler, or a sampler keeping all roots;
        // the sampler would return the parent's trace state then).
        let known = if has_parent {
            self.parent_based
        } else {
            self.samples_roots
        };
        let (sampled, trace_state) = if known {
            (true, psc.trace_state().clone())
        } else {
            let r = rec.sampler.should_sample(
                Some(&parent.to_context()),
                trace_id,
                name,
                &kind,
                &[],
                &[],
            );
            // Our samplers never answer RecordOnly (recorded, not exported): it would
            // be a span nobody sees, so it is treated as a drop.
            (
                r.decision == SamplingDecision::RecordAndSample,
                r.trace_state,
            )
        };
        if !sampled {
            let sc = SpanContext::new(trace_id, span_id, TraceFlags::default(), false, trace_state);
            return Cx::from_span_context(sc);
        }
        let sc = SpanContext::new(
            trace_id,
            span_id,
            psc.trace_flags().with_sampled(true),
            false,
            trace_state,
        );
        let parent_ids = has_parent.then(|| (psc.span_id(), psc.is_remote()));
        // With step events, the server span holds them too (`Telemetry::step`).
        let capacity = if self.detail == SpanDetail::Basic && kind == SpanKind::Server {
            span::STEP_PARENT_CAPACITY
        } else {
            span::INITIAL_CAPACITY
        };
        let span = span::RecordingSpan::start_sized(
            sc,
            parent_ids,
            kind,
            name,
            rec.queue.clone(),
            capacity,
            at.time(),
        );
        let cx = Cx::recording(span);
        cx.set_attributes(attrs);
        cx
    }
}

/// A short step of a request: its own span, or an event on the request's span.
#[derive(Debug, Clone)]
pub enum Step {
    /// The step's span (ended by [`Step::end`]).
    Span(Cx),
    /// An event was recorded on this (the parent's) span, which stays open.
    Event(Cx),
}

impl Step {
    /// Marks the step failed: its own span gets `error.type`, error status and an
    /// `exception` event; as an event, the parent gets only the `exception` event —
    /// the parent's `error.type` and status come from the response it ends with
    /// (`record_response`), and setting them here too would write the key twice.
    pub fn fail(&self, error_type: &str, message: &str) {
        match self {
            Step::Span(cx) => fail(cx, error_type, message),
            Step::Event(cx) => cx.event("exception", &exception(error_type, message)),
        }
    }

    /// Ends the step's own span (nothing for an event).
    pub fn end(&self) {
        self.end_at(&Moment::new());
    }

    /// [`Step::end`] at `at`.
    pub fn end_at(&self, at: &Moment) {
        if let Step::Span(cx) = self {
            cx.end_at(at);
        }
    }
}

/// The attributes of an `exception` event.
fn exception<'a>(error_type: &'a str, message: &'a str) -> [(&'static str, AttrValue<'a>); 2] {
    [
        ("exception.type", AttrValue::Str(error_type)),
        ("exception.message", AttrValue::Str(message)),
    ]
}

/// Marks the span failed: `error.type`, status Error with `message`, and an
/// `exception` event.
pub fn fail(cx: &Cx, error_type: &str, message: &str) {
    if cx.is_recording() {
        cx.set_attributes(|a| a.str("error.type", error_type));
        cx.event("exception", &exception(error_type, message));
        cx.set_status(Status::error(message.to_string()));
    }
}

/// Records the outcome of a JSON-RPC response on the span: error responses set
/// `rpc.response.status_code` and error status; a `tools/call` result with
/// `isError: true` is a `tool_error`. Returns the error type, if any (always `None`
/// when the span is not recording). The response may have been parsed whole or read
/// as a [`crate::jsonrpc::Brief`]: any [`Answer`].
pub fn record_response(cx: &Cx, resp: &impl Answer) -> Option<&'static str> {
    if !cx.is_recording() {
        // Nothing to record (tracing off, or an unsampled trace): skip the lookups.
        return None;
    }
    // An error response records its error; `result` is looked at only without one.
    let error = resp.error();
    record_outcome(cx, error, error.is_none() && resp.is_tool_error())
}

/// What [`record_response`] records, from a response's `error` and whether its result
/// has `isError: true`.
fn record_outcome(
    cx: &Cx,
    error: Option<&serde_json::Value>,
    is_tool_error: bool,
) -> Option<&'static str> {
    use crate::jsonrpc::lookup;
    if let Some(err) = error {
        let code = lookup(err, "code")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        let msg = lookup(err, "message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("error");
        let code = code.to_string();
        cx.set_attributes(|a| a.str("rpc.response.status_code", &code));
        fail(cx, &code, msg);
        return Some("jsonrpc_error");
    }
    if is_tool_error {
        fail(cx, "tool_error", "tool returned isError: true");
        return Some("tool_error");
    }
    None
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-decoded), in order; blank
/// entries are skipped. An entry without `=` or with an empty key, and a value whose
/// percent-encoding is broken or not UTF-8, is an error naming the entry: the SDKs
/// drop such an entry (or the whole variable) silently, and an attribute an operator
/// set that never shows up is worse than a refused start.
fn parse_resource_attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for kv in s.split(',').filter(|kv| !kv.trim().is_empty()) {
        let bad = |why: &str| format!("OTEL_RESOURCE_ATTRIBUTES: {kv:?}: {why}");
        let (k, v) = kv.split_once('=').ok_or_else(|| bad("not key=value"))?;
        if k.trim().is_empty() {
            return Err(bad("no key"));
        }
        let v = percent_decode_strict(v.trim()).map_err(bad)?;
        out.push((k.trim().to_string(), v));
    }
    Ok(out)
}

/// `%XX` escapes decoded, strictly: a `%` not followed by two hex digits, or octets
/// that are not UTF-8, are an error.
fn percent_decode_strict(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("a % not followed by two hex digits"),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoded octets that are not UTF-8")
}

/// `%XX` escapes decoded (W3C baggage octets, as `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS` use them); a `%` not followed by two hex digits is
/// kept as it is, and bytes that do not make UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// [`apply_env`] when the file turns tracing on; with tracing off none of the
/// variables is read, not even checked, since none of them can turn it on: the router
/// inherits its MCP host's environment, whose `OTEL_*` values may be meant for other
/// programs and need not suit ours (a value another SDK takes and ours refuses would
/// stop a router that traces nothing).
pub fn apply_env_when_enabled(
    cfg: &mut TracingConfig,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    if cfg.enabled {
        apply_env(cfg, get)
    } else {
        Ok(())
    }
}

/// A positive whole number (a count) from variable `var`.
fn positive(v: &str, var: &str) -> Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{var}={v:?}: expected a positive whole number")),
    }
}

/// A duration in milliseconds from variable `var`: positive, at most
/// [`crate::config::MAX_DURATION`].
fn millis(v: &str, var: &str) -> Result<crate::config::Dur, String> {
    let d = Duration::from_millis(positive(v, var)?);
    if d > crate::config::MAX_DURATION {
        return Err(format!("{var}={v:?}: longer than the most allowed, 24h"));
    }
    Ok(crate::config::Dur(d))
}

/// Applies the standard `OTEL_*` environment variables over the file's `[tracing]`
/// (environment wins). Returns an error naming a variable with an invalid value.
///
/// `OTEL_SDK_DISABLED=true` turns tracing off; the others tune it but do not turn it
/// on (that takes `enabled = true`). The binaries call it through
/// [`apply_env_when_enabled`].
pub fn apply_env(
    cfg: &mut TracingConfig,
    get: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    // A variable set to an empty (or blank) string counts as unset everywhere.
    let get = |var: &str| get(var).filter(|v| !v.trim().is_empty());
    // Only true or false: an operator who wrote `1` or `yes` meant tracing off, and
    // keeping it on silently would be the worst reading.
    if let Some(v) = get("OTEL_SDK_DISABLED") {
        match v.trim() {
            t if t.eq_ignore_ascii_case("true") => cfg.enabled = false,
            f if f.eq_ignore_ascii_case("false") => {}
            _ => return Err(format!("OTEL_SDK_DISABLED={v:?}: expected true or false")),
        }
    }
    // The exporter: `otlp`, or `console` for the stdout tree (the router's on stderr).
    // `none` turns tracing off: spans that go nowhere would be work for nothing, and a
    // message's own trace context passes through a service with tracing off as it came.
    // One exporter at a time (the specification allows a list); zipkin and the like are
    // not built in.
    if let Some(v) = get("OTEL_TRACES_EXPORTER") {
        let names: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        match names[..] {
            ["otlp"] => cfg.exporter_type = ExporterType::Otlp,
            ["console"] => cfg.exporter_type = ExporterType::Stdout,
            ["none"] => cfg.enabled = false,
            _ => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={v:?}: expected otlp, console or none (one of them)"
                ))
            }
        }
    }
    // Resource attributes: the three the file has keys for replace those keys (the
    // environment wins over the file); the others are added as they are. Then
    // `OTEL_SERVICE_NAME`, which the specification puts above a `service.name` here.
    if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_resource_attributes(&v)? {
            match k.as_str() {
                "service.name" => cfg.service_name = Some(v),
                "service.version" => cfg.service_version = Some(v),
                "deployment.environment.name" => cfg.environment = Some(v),
                _ => {
                    cfg.resource_attributes.retain(|(key, _)| *key != k);
                    cfg.resource_attributes.push((k, v));
                }
            }
        }
    }
    if let Some(v) = get("OTEL_SERVICE_NAME") {
        cfg.service_name = Some(v);
    }
    // Which `[tracing]` key each variable set: a value the checks below refuse is
    // reported under the variable's name, not a key the file may not even have.
    let mut set_by: Vec<(&'static str, &'static str)> = Vec::new();
    // Each OTLP setting has a generic and a traces-only variable; the traces-only one
    // wins (OTLP exporter specification). A set but empty variable counts as unset.
    let otlp = |generic: &'static str, traces: &'static str| -> Option<(String, &'static str)> {
        [traces, generic]
            .into_iter()
            .find_map(|var| get(var).filter(|v| !v.trim().is_empty()).map(|v| (v, var)))
    };
    if let Some((v, var)) = otlp(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ) {
        cfg.otlp_endpoint = Some(v.trim().to_string());
        set_by.push(("otlp_endpoint", var));
        // The traces-only endpoint is the URL to post to; the generic one is a base.
        cfg.otlp_endpoint_is_full_url = var == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    }
    if let Some((v, var)) = otlp(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ) {
        cfg.otlp_protocol = match v.trim() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            other => return Err(format!("{var}={other:?}: expected grpc or http/protobuf")),
        };
        set_by.push(("otlp_protocol", var));
    }
    // Headers: the generic variable's, then the traces-only one's over them.
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        let Some(v) = get(var) else { continue };
        set_by.push(("otlp_headers", var));
        for kv in v.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, val) = kv
                .split_once('=')
                .ok_or_else(|| format!("{var}: {kv:?} is not key=value"))?;
            cfg.otlp_headers
                .insert(k.trim().to_string(), percent_decode(val.trim()));
        }
    }
    if let Some((v, var)) = otlp(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    ) {
        cfg.otlp_timeout = millis(&v, var)?;
        set_by.push(("otlp_timeout", var));
    }
    // The batch processor's variables.
    if let Some(v) = get("OTEL_BSP_SCHEDULE_DELAY").filter(|v| !v.trim().is_empty()) {
        cfg.scheduled_delay = millis(&v, "OTEL_BSP_SCHEDULE_DELAY")?;
        set_by.push(("scheduled_delay", "OTEL_BSP_SCHEDULE_DELAY"));
    }
    if let Some(v) = get("OTEL_BSP_MAX_QUEUE_SIZE").filter(|v| !v.trim().is_empty()) {
        cfg.max_queue_size = positive(&v, "OTEL_BSP_MAX_QUEUE_SIZE")? as usize;
        set_by.push(("max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE"));
        // A batch size over the queue is reported under the batch size's key.
        set_by.push(("max_export_batch_size", "OTEL_BSP_MAX_QUEUE_SIZE"));
    }
    if let Some(v) = get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").filter(|v| !v.trim().is_empty()) {
        cfg.max_export_batch_size = Some(positive(&v, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? as usize);
        set_by.push(("max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"));
    }
    // `parentbased_always_off`: no new traces, a sampled parent followed. Here that is
    // `traceidratio` at 0 (whatever OTEL_TRACES_SAMPLER_ARG says, which the
    // specification ignores for it); `always_off` records nothing even then.
    let mut follow_only = false;
    if let Some(v) = get("OTEL_TRACES_SAMPLER") {
        cfg.sampler_type = match v.trim() {
            "always_on" | "parentbased_always_on" => SamplerType::AlwaysOn,
            "always_off" => SamplerType::AlwaysOff,
            "parentbased_always_off" => {
                follow_only = true;
                SamplerType::TraceIdRatio
            }
            "traceidratio" | "parentbased_traceidratio" => SamplerType::TraceIdRatio,
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other:?}: expected always_on, always_off, traceidratio or their parentbased_ forms"
                ))
            }
        };
    }
    if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
        let r: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG={v:?}: not a number"))?;
        if !(0.0..=1.0).contains(&r) {
            return Err(format!("OTEL_TRACES_SAMPLER_ARG={v}: outside 0.0..=1.0"));
        }
        cfg.sampler_param = r;
    }
    if follow_only {
        cfg.sampler_param = 0.0;
    }
    // TLS files (`https://` endpoints): CA bundle, client certificate and key.
    for (key, generic, traces, slot) in [
        (
            "otlp_certificate",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            &mut cfg.otlp_certificate,
        ),
        (
            "otlp_client_certificate",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            &mut cfg.otlp_client_certificate,
        ),
        (
            "otlp_client_key",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            &mut cfg.otlp_client_key,
        ),
    ] {
        if let Some((v, origin)) = otlp(generic, traces) {
            set_by.push((key, origin));
            *slot = Some(crate::config::FileSetting {
                path: v.into(),
                origin,
            });
        }
    }
    cfg.validate().map_err(|e| {
        let key = e.path.join(".");
        let vars: Vec<&str> = set_by
            .iter()
            .filter(|(k, _)| e.path.get(1).is_some_and(|p| p == k))
            .map(|(_, var)| *var)
            .collect();
        match vars.is_empty() {
            true => format!("tracing (after OTEL_* variables): {key}: {}", e.message),
            false => format!("{} (tracing key {key}): {}", vars.join(", "), e.message),
        }
    })?;
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    conn::check_files(cfg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    // Tracing on with the OTLP exporters: needs both in the build.
    #[cfg(all(feature = "otlp-grpc", feature = "otlp-http"))]
    fn environment_overrides_the_file() {
        let mut c = TracingConfig {
            enabled: true,
            ..TracingConfig::default()
        };
        apply_env(
            &mut c,
            env(&[
                ("OTEL_SERVICE_NAME", "edge-1"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x=y"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ]),
        )
        .unwrap();
        assert_eq!(c.service_name.as_deref(), Some("edge-1"));
        assert_eq!(c.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp_headers["api-key"], "a b");
        assert_eq!(c.sampler_type, SamplerType::TraceIdRatio);
        assert_eq!(c.sampler_param, 0.01);
        assert!(c.enabled);
        apply_env(&mut c, env(&[("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert!(!c.enabled);
        // parentbased_always_off follows a sampled parent: ratio 0, whatever the ARG.
        let mut c = TracingConfig::default();
        let off = [
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ];
        apply_env(&mut c, env(&off)).unwrap();
        assert_eq!(
            (c.sampler_type, c.sampler_param),
            (SamplerType::TraceIdRatio, 0.0)
        );
        apply_env(&mut c, env(&[("OTEL_TRACES_SAMPLER", "always_off")])).unwrap();
        assert_eq!(c.sampler_type, SamplerType::AlwaysOff);
    }

    #[test]
    fn otel_traces_exporter_picks_the_exporter_or_turns_tracing_off() {
        let on = || TracingConfig {
            enabled: true,
            ..TracingConfig::default()
        };
        let mut c = on();
        apply_env(&mut c, env(&[("OTEL_TRACES_EXPORTER", " console ")])).unwrap();
        assert_eq!((c.enabled, c.exporter_type), (true, ExporterType::Stdout));
        let otlp = apply_env(&mut c, env(&[("OTEL_TRACES_EXPORTER", "otlp")]));
        assert_eq!((c.enabled, c.exporter_type), (true, ExporterType::Otlp));
        if cfg!(any(feature = "otlp-grpc", feature = "otlp-http")) {
            otlp.unwrap();
        } else {
            // A build without an OTLP exporter refuses it, as it refuses the key.
            assert!(otlp.unwrap_err().contains("is not built into this binary"));
        }
        // Set but empty: unset, the file's exporter stays.
        let mut c = on();
        c.exporter_type = ExporterType::Stdout;
        apply_env(&mut c, env(&[("OTEL_TRACES_EXPORTER", "")])).unwrap();
        assert_eq!((c.enabled, c.exporter_type), (true, ExporterType::Stdout));
        apply_env(&mut c, env(&[("OTEL_TRACES_EXPORTER", "none")])).unwrap();
        assert!(!c.enabled);
        // It tunes tracing but does not turn it on.
        let mut c = TracingConfig::default();
        apply_env(&mut c, env(&[("OTEL_TRACES_EXPORTER", "otlp")])).unwrap();
        assert!(!c.enabled);
        for bad in ["zipkin", "otlp,console", "OTLP", ","] {
            let e = apply_env(&mut on(), env(&[("OTEL_TRACES_EXPORTER", bad)])).unwrap_err();
            assert!(e.starts_with("OTEL_TRACES_EXPORTER="), "{e}");
        }
    }

    /// Traces-only variables win over the generic ones; the generic endpoint is a base
    /// under which OTLP/HTTP posts to `/v1/traces`, the traces-only one the URL itself.
    #[test]
    // Tracing on with the OTLP exporters: needs both in the build.
    #[cfg(all(feature = "otlp-grpc", feature = "otlp-http"))]
    fn traces_only_variables_win_and_the_http_path_follows_the_spec() {
        let mut c = TracingConfig::default();
        assert_eq!(c.endpoint(), "http://localhost:4317");
        c.otlp_protocol = OtlpProtocol::HttpProtobuf;
        assert_eq!(c.http_traces_url(), "http://localhost:4318/v1/traces");
        for (file, url) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("http://c:4318/otlp", "http://c:4318/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
            ("http://c:4318/v1/traces/", "http://c:4318/v1/traces"),
        ] {
            c.otlp_endpoint = Some(file.into());
            assert_eq!(c.http_traces_url(), url, "{file}");
        }

        let mut c = TracingConfig {
            enabled: true,
            ..TracingConfig::default()
        };
        let generic = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g:4318/otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic.pem"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
        ];
        apply_env(&mut c, env(&generic)).unwrap();
        assert_eq!(c.http_traces_url(), "http://g:4318/otlp/v1/traces");
        assert_eq!(c.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otlp_timeout.0, Duration::from_millis(2500));
        assert_eq!(c.scheduled_delay.0, Duration::from_millis(200));
        assert_eq!((c.max_queue_size, c.max_export_batch_size), (100, Some(10)));
        assert_eq!(
            c.otlp_certificate.as_ref().unwrap().origin,
            "OTEL_EXPORTER_OTLP_CERTIFICATE"
        );

        let mut c = TracingConfig {
            enabled: true,
            ..TracingConfig::default()
        };
        let mut both = generic.to_vec();
        both.extend([
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=3"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem"),
        ]);
        apply_env(&mut c, env(&both)).unwrap();
        assert_eq!(c.endpoint(), "http://t:4318/custom");
        assert_eq!(c.otlp_protocol, OtlpProtocol::Grpc);
        c.otlp_protocol = OtlpProtocol::HttpProtobuf;
        assert_eq!(c.http_traces_url(), "http://t:4318/custom", "used as it is");
        assert_eq!(c.otlp_headers["a"], "1");
        assert_eq!(c.otlp_headers["b"], "3");
        assert_eq!(c.otlp_timeout.0, Duration::from_millis(700));
        let ca = c.otlp_certificate.as_ref().unwrap();
        assert_eq!(
            (ca.origin, ca.path.as_path()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                std::path::Path::new("/traces.pem")
            )
        );
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let mut c = TracingConfig::default();
        let e = apply_env(&mut c, env(&[("OTEL_TRACES_SAMPLER_ARG", "2")])).unwrap_err();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"));
        let e =
            apply_env(&mut c, env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1.5"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "many"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "18446744073709551615"),
            ("OTEL_BSP_SCHEDULE_DELAY", "86400001"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "novalue"),
        ] {
            let e = apply_env(&mut TracingConfig::default(), env(&[(var, value)])).unwrap_err();
            assert!(e.starts_with(var), "{var}: {e}");
        }
        // A batch larger than the queue, from the variables: named by the key it breaks.
        let e = apply_env(
            &mut TracingConfig::default(),
            env(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5000")]),
        )
        .unwrap_err();
        assert!(e.contains("max_export_batch_size"), "{e}");
        assert!(e.starts_with("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), "{e}");
        // Values the variables' own parsing takes but the checks of the configuration
        // refuse: still named by the variable, with the key it set.
        for (var, value, key) in [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "ftp://x",
                "tracing.otlp_endpoint",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://u:p@x:4317",
                "tracing.otlp_endpoint",
            ),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://c:4318/otlp?key=abc",
                "tracing.otlp_endpoint",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces#frag",
                "tracing.otlp_endpoint",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Host=x",
                "tracing.otlp_headers",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-q'=1",
                "tracing.otlp_headers",
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                "/k.pem",
                "tracing.otlp_client_key",
            ),
        ] {
            let e = apply_env(&mut TracingConfig::default(), env(&[(var, value)])).unwrap_err();
            assert!(e.starts_with(var) && e.contains(key), "{var}: {e}");
        }
        // A key the file set wrong is still named as the file's.
        let mut c = TracingConfig {
            sampler_param: 2.0,
            ..TracingConfig::default()
        };
        let e = apply_env(&mut c, env(&[("OTEL_SERVICE_NAME", "x")])).unwrap_err();
        assert!(
            e.starts_with("tracing (after OTEL_* variables): tracing.sampler_param"),
            "{e}"
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let mut c = TracingConfig {
            sampler_type: SamplerType::TraceIdRatio,
            sampler_param: 0.25,
            ..TracingConfig::default()
        };
        let blank = [
            ("OTEL_TRACES_SAMPLER", ""),
            ("OTEL_TRACES_SAMPLER_ARG", " "),
            ("OTEL_SERVICE_NAME", ""),
            ("OTEL_RESOURCE_ATTRIBUTES", ""),
            ("OTEL_EXPORTER_OTLP_HEADERS", ""),
            ("OTEL_SDK_DISABLED", ""),
        ];
        apply_env(&mut c, env(&blank)).unwrap();
        assert_eq!(c.sampler_type, SamplerType::TraceIdRatio);
        assert_eq!(c.sampler_param, 0.25);
        assert_eq!(c.service_name, None);
        assert!(c.resource_attributes.is_empty() && c.otlp_headers.is_empty());
    }

    #[test]
    fn resource_attributes_rank_below_the_service_name_variable_and_above_the_file() {
        let file = || TracingConfig {
            service_name: Some("from-file".into()),
            service_version: Some("1".into()),
            environment: Some("dev".into()),
            ..TracingConfig::default()
        };
        let attrs = "service.name=from-attrs,service.version=2,\
                     deployment.environment.name=prod%2Deu,team=edge,team=core, ,";
        let mut c = file();
        apply_env(&mut c, env(&[("OTEL_RESOURCE_ATTRIBUTES", attrs)])).unwrap();
        assert_eq!(c.service_name.as_deref(), Some("from-attrs"));
        assert_eq!(c.service_version.as_deref(), Some("2"));
        assert_eq!(c.environment.as_deref(), Some("prod-eu"));
        assert_eq!(
            c.resource_attributes,
            [("team".to_string(), "core".to_string())]
        );
        let mut c = file();
        let both = [
            ("OTEL_RESOURCE_ATTRIBUTES", attrs),
            ("OTEL_SERVICE_NAME", "from-service-name"),
        ];
        apply_env(&mut c, env(&both)).unwrap();
        assert_eq!(c.service_name.as_deref(), Some("from-service-name"));
    }

    /// A malformed `OTEL_RESOURCE_ATTRIBUTES` entry or broken percent-encoding, and an
    /// `OTEL_SDK_DISABLED` other than true or false, exit naming the variable.
    #[test]
    fn with_tracing_off_in_the_file_no_variable_is_read_or_checked() {
        let bad = [
            ("OTEL_SDK_DISABLED", "1"),
            ("OTEL_TRACES_SAMPLER", "nope"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=%ZZ"),
        ];
        let mut off = TracingConfig::default();
        assert!(!off.enabled);
        apply_env_when_enabled(&mut off, env(&bad)).unwrap();
        assert_eq!(off.sampler_type, TracingConfig::default().sampler_type);
        let mut on = TracingConfig {
            enabled: true,
            ..TracingConfig::default()
        };
        let e = apply_env_when_enabled(&mut on, env(&bad)).unwrap_err();
        assert!(e.starts_with("OTEL_"), "{e}");
    }

    #[test]
    fn malformed_resource_attributes_and_sdk_disabled_are_refused() {
        for value in ["a=b,c", "=x", "a=%ZZ", "u=%FF", "a=1%", "a=%4"] {
            let e = apply_env(
                &mut TracingConfig::default(),
                env(&[("OTEL_RESOURCE_ATTRIBUTES", value)]),
            )
            .unwrap_err();
            assert!(e.starts_with("OTEL_RESOURCE_ATTRIBUTES: "), "{value}: {e}");
        }
        let mut c = TracingConfig::default();
        let ok = "a=%E2%82%AC, b = c d ,e=";
        apply_env(&mut c, env(&[("OTEL_RESOURCE_ATTRIBUTES", ok)])).unwrap();
        let want = [("a", "€"), ("b", "c d"), ("e", "")];
        let want: Vec<_> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(c.resource_attributes, want);
        for value in ["yes", "1", "0", "off", "ture"] {
            let e = apply_env(
                &mut TracingConfig::default(),
                env(&[("OTEL_SDK_DISABLED", value)]),
            )
            .unwrap_err();
            assert!(e.starts_with("OTEL_SDK_DISABLED="), "{value}: {e}");
        }
        for (value, enabled) in [("TRUE", false), (" True ", false), ("false", true)] {
            let mut c = TracingConfig {
                enabled: true,
                exporter_type: ExporterType::Stdout,
                ..TracingConfig::default()
            };
            apply_env(&mut c, env(&[("OTEL_SDK_DISABLED", value)])).unwrap();
            assert_eq!(c.enabled, enabled, "{value}");
        }
    }

    #[test]
    fn percent_escapes_decode_bytes_and_leave_broken_ones_alone() {
        assert_eq!(percent_decode("a%20b%2C%e2%82%ac"), "a b,€");
        // Not two hex digits after the `%`: kept, whatever follows (a multi-byte
        // character once made this cut a `str` inside it, and panic).
        for s in ["%aé", "%é", "é%", "%", "%4", "100%", "%zz", "%4é"] {
            assert_eq!(percent_decode(s), s);
        }
        // Octets that are not UTF-8 become U+FFFD.
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        // As a header value it is refused (not printable ASCII), naming the header.
        let e = apply_env(
            &mut TracingConfig::default(),
            env(&[("OTEL_EXPORTER_OTLP_HEADERS", "k=%aé")]),
        )
        .unwrap_err();
        assert!(e.contains("otlp_headers.k"), "{e}");
    }

    #[test]
    fn an_endpoint_without_a_scheme_takes_it_from_otlp_insecure() {
        let ep = |insecure| TracingConfig {
            otlp_endpoint: Some("otel-collector:4317".into()),
            otlp_insecure: insecure,
            ..TracingConfig::default()
        };
        assert_eq!(ep(Some(true)).endpoint(), "http://otel-collector:4317");
        ep(Some(true)).validate().unwrap();
        assert_eq!(ep(Some(false)).endpoint(), "https://otel-collector:4317");
        assert_eq!(ep(None).endpoint(), "https://otel-collector:4317");
        let bad = TracingConfig {
            otlp_endpoint: Some("grpc://c:4317".into()),
            ..TracingConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.path, ["tracing", "otlp_endpoint"]);
        // Credentials before the host, or a query or fragment (a key may be in it):
        // refused, and no message repeats the endpoint.
        for (url, insecure) in [
            ("http://c:4318/otlp?key=s3cret", None),
            ("c:4318/otlp#s3cret", Some(true)),
            ("http://u:s3cret@c:4318", None),
            ("grpc://u:s3cret@c", None),
            ("u:s3cret@c:4317", Some(true)),
            ("https://c:4317/s3cret", Some(true)),
        ] {
            let c = TracingConfig {
                otlp_endpoint: Some(url.into()),
                otlp_insecure: insecure,
                ..TracingConfig::default()
            };
            let e = c.validate().unwrap_err();
            assert_eq!(e.path[0], "tracing");
            assert!(!e.message.contains("cret"), "{url}: {}", e.message);
        }
    }

    #[test]
    fn disabled_tracing_makes_no_spans() {
        let t = Telemetry::disabled();
        let cx = t.start("x", SpanKind::Internal, &Cx::default(), |_| {
            panic!("attrs not built when off")
        });
        assert!(!cx.span_context().is_valid());
        assert_eq!(t.stats(), (0, 0));
    }

    #[test]
    fn children_of_unsampled_spans_cost_nothing() {
        let cfg = TracingConfig {
            enabled: true,
            sampler_type: SamplerType::TraceIdRatio,
            sampler_param: 0.0,
            exporter_type: ExporterType::Stdout,
            ..TracingConfig::default()
        };
        let t = Telemetry::init(&cfg, "test", "0", Target::Stderr, 128).unwrap();
        let root = t.start("root", SpanKind::Server, &Cx::default(), |_| {});
        let root_sc = root.span_context().clone();
        assert!(root_sc.is_valid() && !root_sc.is_sampled());
        let child = t.start("child", SpanKind::Client, &root, |_| panic!("never built"));
        assert_eq!(child.span_context().span_id(), root_sc.span_id());
        let mut msg =
            crate::jsonrpc::Message::request(crate::jsonrpc::Id::Number(1.into()), "m", None);
        propagation::inject_message(&child, &mut msg);
        let sent = crate::jsonrpc::Message::parse(msg.to_json().as_bytes()).unwrap();
        let tp = sent.trace_context().unwrap().0.to_string();
        assert!(tp.ends_with("-00"), "{tp}");
        t.shutdown();
    }

    /// The OTLP path ([`Inner::start_recording`]) decides as the SDK tracer does:
    /// roots by the sampler, children by their parent's flag (but always_off), trace
    /// state and flags from the parent, unsampled spans only a context to pass on.
    #[test]
    #[cfg(feature = "otlp-http")]
    fn otlp_spans_are_sampled_like_the_sdks() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let start = |sampler: SamplerType, param: f64| {
            let cfg = TracingConfig {
                enabled: true,
                sampler_type: sampler,
                sampler_param: param,
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                otlp_endpoint: Some("http://127.0.0.1:9".into()),
                otlp_timeout: crate::config::Dur(Duration::from_millis(100)),
                ..TracingConfig::default()
            };
            Telemetry::init(&cfg, "test", "0", Target::Stderr, 128).unwrap()
        };
        let remote = |flags: TraceFlags| {
            Cx::from_span_context(SpanContext::new(
                TraceId::from(0x77u128),
                SpanId::from(0x88u64),
                flags,
                true,
                TraceState::from_key_value([("v", "1")]).unwrap(),
            ))
        };
        let sc = |cx: &Cx| cx.span_context().clone();

        let t = start(SamplerType::AlwaysOn, 1.0);
        let root = t.start("root", SpanKind::Server, &Cx::default(), |_| {});
        assert!(sc(&root).is_sampled() && root.is_recording());
        let child = t.start("child", SpanKind::Client, &root, |_| {});
        assert_eq!(sc(&child).trace_id(), sc(&root).trace_id());
        assert_ne!(sc(&child).span_id(), sc(&root).span_id());
        let cont = t.start(
            "cont",
            SpanKind::Server,
            &remote(TraceFlags::SAMPLED),
            |_| {},
        );
        assert_eq!(sc(&cont).trace_id(), TraceId::from(0x77u128));
        assert_eq!(sc(&cont).trace_state().header(), "v=1");
        assert!(sc(&cont).is_sampled() && !sc(&cont).is_remote());
        let parent = remote(TraceFlags::default());
        let skip = t.start("skip", SpanKind::Server, &parent, |_| panic!("never built"));
        assert_eq!(sc(&skip).span_id(), SpanId::from(0x88u64));
        for cx in [&child, &cont, &root] {
            cx.end();
        }
        t.shutdown();
        assert_eq!(t.stats(), (0, 3), "three sampled spans, none exportable");

        let t = start(SamplerType::TraceIdRatio, 0.0);
        let root = t.start("root", SpanKind::Server, &Cx::default(), |_| {
            panic!("unsampled")
        });
        assert!(sc(&root).is_valid() && !sc(&root).is_sampled());
        assert!(!root.is_recording());
        let cont = t.start(
            "cont",
            SpanKind::Server,
            &remote(TraceFlags::SAMPLED),
            |_| {},
        );
        assert!(sc(&cont).is_sampled(), "a sampled parent is followed");
        cont.end();
        t.shutdown();
        assert_eq!(t.stats(), (0, 1));

        let t = start(SamplerType::AlwaysOff, 0.0);
        let cx = t.start(
            "off",
            SpanKind::Server,
            &remote(TraceFlags::SAMPLED),
            |_| panic!("always_off records nothing"),
        );
        assert_eq!(sc(&cx).trace_id(), TraceId::from(0x77u128));
        assert!(!sc(&cx).is_sampled() && sc(&cx).span_id() != SpanId::from(0x88u64));
        t.shutdown();
        assert_eq!(t.stats(), (0, 0));
    }

    /// Spans and events recorded at one [`Moment`] carry its one time: a step starts
    /// where the one before it ended, an event and a child at their span's start. A
    /// moment that only an unsampled span was given never reads the clock. The
    /// gateway's request steps and the router's spans rely on this (docs/tracing.md,
    /// "Clock readings").
    #[test]
    #[cfg(feature = "otlp-http")]
    fn what_is_recorded_at_one_moment_has_one_time() {
        use opentelemetry_proto::tonic::trace::v1::ScopeSpans;
        use prost::Message as _;
        let start = |sampler: SamplerType| {
            let cfg = TracingConfig {
                enabled: true,
                sampler_type: sampler,
                sampler_param: 0.0,
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                otlp_endpoint: Some("http://127.0.0.1:9".into()),
                ..TracingConfig::default()
            };
            Telemetry::init(&cfg, "test", "0", Target::Stderr, 128).unwrap()
        };
        let t = start(SamplerType::AlwaysOn);
        let arrived = Moment::new();
        let root = t.start_at("root", SpanKind::Server, &Cx::default(), &arrived, |_| {});
        root.event_at("read", &[], &arrived);
        let first = t.step_at("first", &root, &arrived, |_| {});
        std::thread::sleep(Duration::from_millis(2));
        let done = Moment::new();
        first.end_at(&done);
        let second = t.step_at("second", &root, &done, |_| {});
        std::thread::sleep(Duration::from_millis(2));
        second.end();
        root.end();
        let queued = t.inner.as_ref().unwrap().recording.as_ref().unwrap();
        let spans = ScopeSpans::decode(&queued.queue.take_bytes()[..])
            .unwrap()
            .spans;
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap().clone();
        let (root, first, second) = (by_name("root"), by_name("first"), by_name("second"));
        let t0 = root.start_time_unix_nano;
        assert_eq!(root.events[0].time_unix_nano, t0);
        assert_eq!(first.start_time_unix_nano, t0);
        assert!(first.end_time_unix_nano >= t0 + 2_000_000, "{first:?}");
        assert_eq!(second.start_time_unix_nano, first.end_time_unix_nano);
        assert!(second.end_time_unix_nano >= second.start_time_unix_nano + 2_000_000);
        assert!(root.end_time_unix_nano >= second.end_time_unix_nano);
        t.shutdown();

        let t = start(SamplerType::TraceIdRatio);
        let unread = Moment::new();
        let root = t.start_at("root", SpanKind::Server, &Cx::default(), &unread, |_| {});
        root.event_at("read", &[], &unread);
        t.step_at("step", &root, &unread, |_| {}).end_at(&unread);
        root.end_at(&unread);
        assert!(unread.read().is_none(), "nothing recorded, no clock read");
        t.shutdown();
    }

    /// Spans a collector rejects in a partial success count as dropped, not exported.
    #[test]
    #[cfg(feature = "otlp-http")]
    fn spans_a_collector_rejects_count_as_dropped() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let body = export::tests::partial_success_response(1, "one too old");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                // One request per connection; the test's batch fits in one read.
                let mut buf = vec![0u8; 1 << 20];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&[head.as_bytes(), &body].concat());
            }
        });
        let cfg = TracingConfig {
            enabled: true,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            scheduled_delay: crate::config::Dur(Duration::from_secs(3600)),
            ..TracingConfig::default()
        };
        let t = Telemetry::init(&cfg, "test", "0", Target::Stderr, 128).unwrap();
        for _ in 0..3 {
            t.start("s", SpanKind::Internal, &Cx::default(), |_| {})
                .end();
        }
        t.shutdown();
        assert_eq!(t.stats(), (2, 1));
    }

    #[test]
    #[cfg(not(feature = "otlp-grpc"))]
    fn an_exporter_left_out_of_the_build_is_a_clear_error() {
        let cfg = TracingConfig {
            enabled: true,
            otlp_protocol: OtlpProtocol::Grpc,
            ..TracingConfig::default()
        };
        let e = Telemetry::init(&cfg, "t", "0", Target::Stderr, 128)
            .err()
            .unwrap();
        assert!(e.contains("not built into this binary"), "{e}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Cc"), "a b,c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
