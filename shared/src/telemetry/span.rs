//! Sampled spans for the OTLP exporters that encode themselves while they are recorded.
//!
//! An SDK span keeps every attribute and event as `KeyValue`s in a `SpanData` until
//! it ends; the batch processor then encodes that and frees it. With OTLP the bytes
//! are all that is ever needed, so [`RecordingSpan`] writes each attribute, event and
//! link into one buffer as it is recorded (the instrumentation hands it borrowed
//! scalars through [`super::cx::Attrs`], so no `KeyValue` is built on a request path);
//! at the end it frames the span around that buffer straight into the batch being
//! filled ([`super::batch::Queue`]). Measured in docs/benchmark.md ("Tracing"). It is
//! carried in a [`super::Cx`]; the sampler and the id generator stay the SDK's (see
//! [`super::Telemetry::start`]), and the stdout exporter, which shows the spans
//! themselves, still gets SDK spans.
//!
//! The behaviour is the SDK span's, limits included: at most
//! [`MAX_ATTRIBUTES_PER_SPAN`] attributes, [`MAX_EVENTS_PER_SPAN`] events,
//! [`MAX_LINKS_PER_SPAN`] links, [`MAX_ATTRIBUTES_PER_EVENT`] attributes per event and
//! [`MAX_ATTRIBUTES_PER_LINK`] per link, the rest counted as dropped; a status only
//! moves up the order Unset < Error < Ok; a span dropped without `end` ends then. Unit
//! tests compare the bytes with the SDK span's, decoded.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::KeyValue;

use super::batch::Queue;
use super::cx::Moment;
use super::encode;

/// The SDK's default span limits, which ours match.
pub const MAX_ATTRIBUTES_PER_SPAN: u32 = 128;
/// See [`MAX_ATTRIBUTES_PER_SPAN`].
pub const MAX_EVENTS_PER_SPAN: u32 = 128;
/// See [`MAX_ATTRIBUTES_PER_SPAN`].
pub const MAX_LINKS_PER_SPAN: u32 = 128;
/// See [`MAX_ATTRIBUTES_PER_SPAN`].
pub const MAX_ATTRIBUTES_PER_EVENT: usize = 128;
/// See [`MAX_ATTRIBUTES_PER_SPAN`].
pub const MAX_ATTRIBUTES_PER_LINK: usize = 128;

/// The recorded entries' buffer starts this large, so that the bridge's spans rarely
/// grow it: encoded, they average 232 B (gateway) and 387 B (router) with their
/// attributes and events (docs/benchmark.md).
pub(crate) const INITIAL_CAPACITY: usize = 512;

/// The buffer's first size for a span that will also carry the step events of
/// `span_detail = "basic"` (the gateway's `http.request`): its four events took it past
/// 512 bytes, and the one reallocation that followed cost ~4k instructions per request
/// (callgrind: docs/benchmark.md, "Instructions per request").
pub(crate) const STEP_PARENT_CAPACITY: usize = 1024;

/// A sampled span being recorded; see the module documentation.
#[derive(Debug)]
pub(crate) struct RecordingSpan {
    sc: SpanContext,
    parent: Option<(SpanId, bool)>,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    /// `Span.attributes`, `.events` and `.links` entries, in the order recorded.
    recorded: Vec<u8>,
    attributes: u32,
    events: u32,
    links: u32,
    dropped_attributes: u32,
    dropped_events: u32,
    dropped_links: u32,
    status: Status,
    /// Where the span goes when it ends; `None` once it has.
    queue: Option<Queue>,
}

impl RecordingSpan {
    /// Starts a span now. `parent` is the parent's span id and whether it is remote.
    #[cfg(all(test, feature = "otlp-http"))]
    pub(crate) fn start(
        sc: SpanContext,
        parent: Option<(SpanId, bool)>,
        kind: SpanKind,
        name: &'static str,
        queue: Queue,
    ) -> Self {
        let start = opentelemetry::time::now();
        Self::start_sized(sc, parent, kind, name, queue, INITIAL_CAPACITY, start)
    }

    /// Starts a span at `start` (as `start`) with room for `capacity` bytes of
    /// attributes and events.
    pub(crate) fn start_sized(
        sc: SpanContext,
        parent: Option<(SpanId, bool)>,
        kind: SpanKind,
        name: &'static str,
        queue: Queue,
        capacity: usize,
        start: SystemTime,
    ) -> Self {
        RecordingSpan {
            sc,
            parent,
            kind,
            name: Cow::Borrowed(name),
            start,
            recorded: Vec::with_capacity(capacity),
            attributes: 0,
            events: 0,
            links: 0,
            dropped_attributes: 0,
            dropped_events: 0,
            dropped_links: 0,
            status: Status::Unset,
            queue: Some(queue),
        }
    }
}

impl RecordingSpan {
    /// True when the span records and has room for one more attribute (else it is
    /// counted as dropped, if the span records).
    fn admit_attribute(&mut self) -> bool {
        self.queue.is_some()
            && admit(
                &mut self.attributes,
                &mut self.dropped_attributes,
                MAX_ATTRIBUTES_PER_SPAN,
            )
    }

    /// [`Self::admit_attribute`] for an event.
    fn admit_event(&mut self) -> bool {
        self.queue.is_some()
            && admit(
                &mut self.events,
                &mut self.dropped_events,
                MAX_EVENTS_PER_SPAN,
            )
    }

    /// `set_attribute` for a scalar, from borrowed parts (no `KeyValue` built).
    pub(crate) fn scalar_attribute(&mut self, key: &str, value: encode::Scalar) {
        if !self.admit_attribute() {
            return;
        }
        encode::put_scalar_attribute(&mut self.recorded, key, value);
    }

    /// `add_event` at `at` with scalar attributes, from borrowed parts.
    pub(crate) fn scalar_event(
        &mut self,
        name: &str,
        attributes: &[(&str, encode::Scalar)],
        at: &Moment,
    ) {
        if !self.admit_event() {
            return;
        }
        let kept = attributes.len().min(MAX_ATTRIBUTES_PER_EVENT);
        let dropped = (attributes.len() - kept) as u32;
        encode::put_scalar_event(
            &mut self.recorded,
            at.time(),
            name,
            &attributes[..kept],
            dropped,
        );
    }
}

impl RecordingSpan {
    /// `add_event` at `at` with attributes already encoded as `Event.attributes`
    /// entries ([`super::cx::Attrs`] writing into a buffer; at most
    /// [`MAX_ATTRIBUTES_PER_EVENT`] of them, `dropped` more cut).
    pub(crate) fn encoded_event(&mut self, name: &str, attrs: &[u8], dropped: u32, at: &Moment) {
        if !self.admit_event() {
            return;
        }
        encode::put_encoded_event(&mut self.recorded, at.time(), name, attrs, dropped);
    }
}

/// Counts one more attribute, event or link of a span against `max`: true when it is
/// kept, false (and counted in `dropped`) when the span already has `max`.
fn admit(count: &mut u32, dropped: &mut u32, max: u32) -> bool {
    if *count >= max {
        *dropped += 1;
        return false;
    }
    *count += 1;
    true
}

/// Keeps the first `max` attributes of an event or link; returns how many were cut.
fn limit(attributes: &mut Vec<KeyValue>, max: usize) -> u32 {
    let cut = attributes.len().saturating_sub(max);
    attributes.truncate(max);
    cut as u32
}

impl opentelemetry::trace::Span for RecordingSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        mut attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        if !self.admit_event() {
            return;
        }
        let dropped = limit(&mut attributes, MAX_ATTRIBUTES_PER_EVENT);
        let name = name.into();
        encode::put_event(&mut self.recorded, timestamp, &name, &attributes, dropped);
    }

    fn span_context(&self) -> &SpanContext {
        &self.sc
    }

    fn is_recording(&self) -> bool {
        self.queue.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        if !self.admit_attribute() {
            return;
        }
        encode::put_attribute(&mut self.recorded, &attribute);
    }

    fn set_status(&mut self, status: Status) {
        // The SDK's rule: Ok > Error > Unset, a status only moves up.
        if self.queue.is_some() && status > self.status {
            self.status = status;
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if self.queue.is_some() {
            self.name = new_name.into();
        }
    }

    fn add_link(&mut self, span_context: SpanContext, mut attributes: Vec<KeyValue>) {
        if self.queue.is_none()
            || !admit(&mut self.links, &mut self.dropped_links, MAX_LINKS_PER_SPAN)
        {
            return;
        }
        let dropped = limit(&mut attributes, MAX_ATTRIBUTES_PER_LINK);
        encode::put_link(&mut self.recorded, &span_context, &attributes, dropped);
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        let Some(queue) = self.queue.take() else {
            return;
        };
        let head = encode::SpanHead {
            sc: &self.sc,
            parent: self.parent,
            kind: &self.kind,
            name: &self.name,
            start: self.start,
            end: timestamp,
            dropped_attributes: self.dropped_attributes,
            dropped_events: self.dropped_events,
            dropped_links: self.dropped_links,
            status: &self.status,
        };
        let recorded = &self.recorded;
        queue.push(|out| encode::append_span_parts(out, &head, recorded));
    }
}

impl Drop for RecordingSpan {
    fn drop(&mut self) {
        // Like the SDK's span: one never ended explicitly ends when dropped.
        if self.queue.is_some() {
            opentelemetry::trace::Span::end(self);
        }
    }
}

#[cfg(all(test, feature = "otlp-http"))]
mod tests {
    use super::*;
    use crate::config::{OtlpProtocol, TracingConfig};
    use crate::telemetry::batch::BatchProcessor;
    use crate::telemetry::export::Exporter;
    use opentelemetry::trace::{
        Span as _, SpanBuilder, TraceContextExt, TraceFlags, TraceId, TraceState,
        TracerProvider as _,
    };
    use opentelemetry::{Context, Value};
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span as ProtoSpan};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
    use opentelemetry_sdk::Resource;
    use prost::Message as _;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Keeps the SDK's ended spans.
    #[derive(Debug, Default, Clone)]
    struct Keep(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Keep {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// A local, sampled span context without trace state.
    fn sampled(trace: u128, span: u64) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    /// A queue whose exporter never sends before the test reads it.
    fn queue() -> (BatchProcessor, Queue) {
        let cfg = TracingConfig {
            enabled: true,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_endpoint: Some("http://127.0.0.1:9".into()),
            ..TracingConfig::default()
        };
        let (p, _) = BatchProcessor::start(
            Exporter::http(&cfg).unwrap(),
            &Resource::builder_empty().build(),
            "test",
            10_000,
            10_000,
            Duration::from_secs(3600),
            Duration::from_millis(100),
        );
        let q = p.queue().expect("OTLP queues encoded spans");
        (p, q)
    }

    /// Decodes queued `ScopeSpans.spans` entries, times zeroed (they are taken at
    /// different instants by the two spans).
    fn decode(entries: &[u8]) -> Vec<ProtoSpan> {
        let mut spans = ScopeSpans::decode(entries).expect("valid entries").spans;
        for s in &mut spans {
            s.start_time_unix_nano = 0;
            s.end_time_unix_nano = 0;
            for e in &mut s.events {
                e.time_unix_nano = 0;
            }
        }
        spans
    }

    /// The same calls on an SDK span and on ours.
    fn record(span: &mut impl opentelemetry::trace::Span, many: bool) {
        span.set_attribute(KeyValue::new("mcp.method.name", "tools/call"));
        span.set_attribute(KeyValue::new("server.port", 4317i64));
        span.add_event(
            "auth.verify",
            vec![
                KeyValue::new("auth.type", "bearer"),
                KeyValue::new("ok", true),
            ],
        );
        span.set_status(Status::error("b"));
        span.set_status(Status::error("a")); // lower: ignored
        span.add_link(
            encode::tests::linked(),
            vec![KeyValue::new("link.kind", "follows")],
        );
        if many {
            for i in 0..130 {
                span.set_attribute(KeyValue::new(format!("a{i}"), Value::from(i as i64)));
            }
            for i in 0..130 {
                let attrs = (0..130).map(|j| KeyValue::new(format!("e{j}"), j as i64));
                span.add_event(format!("ev{i}"), attrs.collect());
            }
            span.set_status(Status::Ok);
            span.set_status(Status::error("after ok: ignored"));
        }
        span.update_name("renamed");
    }

    #[test]
    fn encodes_what_the_sdk_span_would_with_its_limits() {
        for (many, remote) in [(false, false), (true, true)] {
            let kept = Keep::default();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(kept.clone())
                .build();
            let tracer = provider.tracer("test");
            let parent = Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(0xabcu128),
                SpanId::from(0xdefu64),
                TraceFlags::SAMPLED,
                remote,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            ));
            let mut sdk = SpanBuilder::from_name("http.request")
                .with_kind(SpanKind::Server)
                .start_with_context(&tracer, &parent);
            let sc = sdk.span_context().clone();
            record(&mut sdk, many);
            sdk.end();
            let mut want = Vec::new();
            encode::append_span(&kept.0.lock().unwrap()[0], &mut want);

            let (_p, q) = queue();
            let psc = parent.span().span_context().clone();
            let mut ours = RecordingSpan::start(
                sc,
                Some((psc.span_id(), psc.is_remote())),
                SpanKind::Server,
                "http.request",
                q.clone(),
            );
            record(&mut ours, many);
            ours.end();
            assert!(!ours.is_recording());
            ours.set_attribute(KeyValue::new("after.end", 1i64)); // ignored
            drop(ours);
            let got = decode(&q.take_bytes());
            let want = decode(&want);
            assert_eq!(got, want, "many = {many}");
            assert_eq!(got[0].name, "renamed");
            if many {
                assert_eq!(
                    (got[0].attributes.len(), got[0].dropped_attributes_count),
                    (128, 4)
                );
                assert_eq!((got[0].events.len(), got[0].dropped_events_count), (128, 3));
                assert_eq!(got[0].events[1].dropped_attributes_count, 2);
                assert_eq!(got[0].status.as_ref().unwrap().code, 1, "Ok stays");
            } else {
                assert_eq!(got[0].status.as_ref().unwrap().message, "b");
            }
        }
    }

    /// The borrowed-scalar path (`Attrs`, `Cx::event`) writes what the `KeyValue` path
    /// writes, limits included.
    #[test]
    fn scalars_encode_like_key_values() {
        let sc = sampled(5, 6);
        let long = "v".repeat(300);
        let values = [
            Value::from("short"),
            Value::from(long.clone()),
            Value::from(-3i64),
            Value::from(i64::MAX),
            Value::from(true),
        ];
        let scalars = [
            encode::Scalar::Str("short"),
            encode::Scalar::Str(&long),
            encode::Scalar::Int(-3),
            encode::Scalar::Int(i64::MAX),
            encode::Scalar::Bool(true),
        ];
        let keys = ["k", "a.longer.key.name", "i", "max", "b"];
        let (_p, q) = queue();
        let mut by_kv = RecordingSpan::start(sc.clone(), None, SpanKind::Client, "s", q.clone());
        let mut by_scalar = RecordingSpan::start(sc, None, SpanKind::Client, "s", q.clone());
        for round in 0..30 {
            for ((k, v), s) in keys.iter().zip(&values).zip(&scalars) {
                by_kv.set_attribute(KeyValue::new(*k, v.clone()));
                by_scalar.scalar_attribute(k, *s);
            }
            let n = round % 6;
            let kvs: Vec<KeyValue> = (0..n)
                .map(|j| KeyValue::new(keys[j % 5], values[j % 5].clone()))
                .collect();
            let pairs: Vec<(&str, encode::Scalar)> =
                (0..n).map(|j| (keys[j % 5], scalars[j % 5])).collect();
            by_kv.add_event("ev", kvs);
            by_scalar.scalar_event("ev", &pairs, &Moment::new());
        }
        by_kv.end();
        by_scalar.end();
        let spans = decode(&q.take_bytes());
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].attributes.len(), 128);
        assert_eq!(spans[0].dropped_attributes_count, 22);
        assert_eq!(spans[0], spans[1]);
    }

    /// A step event (`Cx::step_event`: attributes encoded as `Attrs` gives them) is
    /// what `add_event` with the same attributes as `KeyValue`s writes, the per-event
    /// limit and a prepared `KeyValue` of another type included.
    #[test]
    fn step_events_encode_like_key_value_events() {
        use crate::telemetry::cx::{Attrs, Cx};
        let long = "w".repeat(200);
        let attrs = |n: usize| {
            let long = long.clone();
            move |a: &mut Attrs| {
                a.str("auth.type", "bearer");
                a.str("long", &long);
                a.bool("ok", false);
                a.int("limit", -7);
                a.key_value(&KeyValue::new("f", 2.5));
                for i in 0..n {
                    a.int_text("id", i);
                }
            }
        };
        let (_p, q) = queue();
        let sc = sampled(7, 8);
        let mut by_kv = RecordingSpan::start(sc.clone(), None, SpanKind::Server, "s", q.clone());
        let ours = Cx::recording(RecordingSpan::start(
            sc,
            None,
            SpanKind::Server,
            "s",
            q.clone(),
        ));
        for n in [0, 3, 130] {
            by_kv.add_event("step", Attrs::collect(attrs(n)));
            ours.step_event("step", &Moment::new(), attrs(n));
        }
        by_kv.end();
        ours.end();
        let spans = decode(&q.take_bytes());
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].events.len(), 3);
        assert_eq!(spans[0].events[2].dropped_attributes_count, 7);
        assert_eq!(spans[0], spans[1]);
    }

    #[test]
    fn a_span_dropped_without_end_is_queued_once() {
        let (_p, q) = queue();
        let sc = sampled(1, 2);
        drop(RecordingSpan::start(
            sc.clone(),
            None,
            SpanKind::Internal,
            "dropped",
            q.clone(),
        ));
        let cx = Context::new().with_span(RecordingSpan::start(
            sc,
            None,
            SpanKind::Internal,
            "ended",
            q.clone(),
        ));
        cx.span().end();
        drop(cx);
        let spans = decode(&q.take_bytes());
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["dropped", "ended"]);
        assert!(spans.iter().all(|s| s.parent_span_id.is_empty()));
    }
}
