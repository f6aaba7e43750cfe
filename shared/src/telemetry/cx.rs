//! [`Cx`]: the span a piece of request work belongs to, passed explicitly from task to
//! task (the bridge never uses a thread-local current context).
//!
//! Why not the API's `opentelemetry::Context`: a span in a `Context` sits behind an
//! `Arc`, a `Mutex` and a `Box<dyn ObjectSafeSpan>`, and every attribute goes in as a
//! `KeyValue` (often an owned `String`) that the span then encodes and frees. With the
//! OTLP exporters a sampled span is our [`RecordingSpan`], which encodes as it records,
//! so `Cx` holds it directly (one `Rc`; both binaries run their request work on one
//! thread) and [`Attrs`] hands it borrowed scalars. Callgrind counts of that cost are in
//! docs/benchmark.md ("Instructions per request").
//!
//! A `Cx` is one of: nothing (a new trace starts under it); a span context only (read
//! from a peer, or a span nobody records — an unsampled trace costs no more than its
//! ids); a [`RecordingSpan`]; or, with the stdout exporter, which shows the SDK's own
//! spans, an SDK span in a `Context`.
//!
//! A [`Moment`] is one reading of the clock that the spans and events recorded at the
//! same point of the work share (`Telemetry::start_at`, [`Cx::event_at`],
//! [`Cx::end_at`]): on the VM of docs/benchmark.md a reading costs 30–55 ns, and a
//! traced gateway request took 19 of them.

use std::cell::Cell;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TraceState};
use opentelemetry::{Context, KeyValue};

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use super::encode::Scalar;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use super::span::RecordingSpan;

/// First size of the buffer a step event's attributes are encoded into: the gateway's
/// step events (`span_detail = "basic"`) take 40–120 bytes.
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
const STEP_EVENT_CAPACITY: usize = 128;

/// The span a piece of work belongs to (see the module documentation). Cloning is
/// cheap: the span itself is shared, and ends once.
#[derive(Clone, Default)]
pub struct Cx(Repr);

#[derive(Clone, Default)]
enum Repr {
    #[default]
    Empty,
    /// A parent only: a remote context, or an unsampled span.
    Context(Sc),
    /// A sampled span with an OTLP exporter.
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    Recording(Rc<Recorded>),
    /// An SDK span (the stdout exporter), with a copy of its span context to lend out.
    Sdk(Context, Sc),
}

/// A span context that is cheap to clone. A `SpanContext` is plain ids and flags
/// except its W3C `tracestate`, a list of owned strings: one a peer sent would be
/// copied, a handful of allocations, on every clone (and an unsampled trace clones its
/// parent for each span it skips). So a context with a trace state is shared.
#[derive(Clone)]
enum Sc {
    Plain(SpanContext),
    Shared(Rc<SpanContext>),
}

impl Sc {
    fn new(sc: SpanContext) -> Self {
        if *sc.trace_state() == TraceState::NONE {
            Sc::Plain(sc)
        } else {
            Sc::Shared(Rc::new(sc))
        }
    }

    fn get(&self) -> &SpanContext {
        match self {
            Sc::Plain(sc) => sc,
            Sc::Shared(sc) => sc,
        }
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
struct Recorded {
    /// The span's context, kept outside the cell so it can be lent out.
    sc: SpanContext,
    span: RefCell<RecordingSpan>,
}

static NO_SPAN: SpanContext = SpanContext::NONE;

/// One point in time for whatever is recorded there: the clock is read the first time a
/// span or an event asks (never when nothing records) and the reading is reused after.
/// Only for things that happen together — a span started where another ends, an event
/// at a span's start or end — never across an await.
#[derive(Debug, Default)]
pub struct Moment(Cell<Option<SystemTime>>);

impl Moment {
    /// A moment whose clock is not read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The time of this moment (the clock is read on the first call).
    pub fn time(&self) -> SystemTime {
        match self.0.get() {
            Some(t) => t,
            None => {
                let t = opentelemetry::time::now();
                self.0.set(Some(t));
                t
            }
        }
    }

    /// The time, if something has read it already.
    pub(crate) fn read(&self) -> Option<SystemTime> {
        self.0.get()
    }
}

impl fmt::Debug for Cx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.0 {
            Repr::Empty => "empty",
            Repr::Context(_) => "context",
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(_) => "recording",
            Repr::Sdk(..) => "sdk",
        };
        f.debug_struct("Cx")
            .field("kind", &what)
            .field("span_context", self.span_context())
            .finish()
    }
}

impl Cx {
    /// A context holding only `sc` (a remote parent, or a span that records nothing).
    pub fn from_span_context(sc: SpanContext) -> Self {
        Cx(Repr::Context(Sc::new(sc)))
    }

    /// Wraps an SDK context (its span, if any, is the one acted on).
    pub fn from_context(cx: Context) -> Self {
        let sc = cx.span().span_context().clone();
        Cx(Repr::Sdk(cx, Sc::new(sc)))
    }

    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    pub(crate) fn recording(span: RecordingSpan) -> Self {
        use opentelemetry::trace::Span as _;
        Cx(Repr::Recording(Rc::new(Recorded {
            sc: span.span_context().clone(),
            span: RefCell::new(span),
        })))
    }

    /// The span's context (invalid when there is none).
    pub fn span_context(&self) -> &SpanContext {
        match &self.0 {
            Repr::Empty => &NO_SPAN,
            Repr::Context(sc) => sc.get(),
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => &r.sc,
            Repr::Sdk(_, sc) => sc.get(),
        }
    }

    /// True when attributes and events given to this span are kept.
    pub fn is_recording(&self) -> bool {
        match &self.0 {
            Repr::Empty | Repr::Context(_) => false,
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => opentelemetry::trace::Span::is_recording(&*r.span.borrow()),
            Repr::Sdk(cx, _) => cx.span().is_recording(),
        }
    }

    /// The same parent as an SDK `Context` (for the SDK's tracer and sampler).
    pub(crate) fn to_context(&self) -> Context {
        match &self.0 {
            Repr::Empty => Context::new(),
            Repr::Sdk(cx, _) => cx.clone(),
            _ => Context::new().with_remote_span_context(self.span_context().clone()),
        }
    }

    /// Adds attributes, given by `f` (called only when the span records).
    pub fn set_attributes(&self, f: impl FnOnce(&mut Attrs)) {
        match &self.0 {
            Repr::Empty | Repr::Context(_) => {}
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => {
                let mut span = r.span.borrow_mut();
                f(&mut Attrs(Sink::Span(&mut span)));
            }
            Repr::Sdk(cx, _) => {
                let span = cx.span();
                if span.is_recording() {
                    span.set_attributes(Attrs::collect(f));
                }
            }
        }
    }

    /// Adds an event now, with these attributes.
    pub fn event(&self, name: &'static str, attrs: &[(&'static str, AttrValue)]) {
        self.event_at(name, attrs, &Moment::new());
    }

    /// Adds an event at `at`, with these attributes.
    pub fn event_at(&self, name: &'static str, attrs: &[(&'static str, AttrValue)], at: &Moment) {
        match &self.0 {
            Repr::Empty | Repr::Context(_) => {}
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => {
                const INLINE: usize = 4;
                let mut scalars = [("", Scalar::Bool(false)); INLINE];
                if attrs.len() <= INLINE {
                    for (slot, (k, v)) in scalars.iter_mut().zip(attrs) {
                        *slot = (k, v.scalar());
                    }
                    r.span
                        .borrow_mut()
                        .scalar_event(name, &scalars[..attrs.len()], at);
                } else {
                    let many: Vec<_> = attrs.iter().map(|(k, v)| (*k, v.scalar())).collect();
                    r.span.borrow_mut().scalar_event(name, &many, at);
                }
            }
            Repr::Sdk(cx, _) => {
                let span = cx.span();
                if span.is_recording() {
                    let kvs = attrs.iter().map(|(k, v)| v.key_value(k)).collect();
                    span.add_event_with_timestamp(name, at.time(), kvs);
                }
            }
        }
    }

    /// Adds an event at `at` with the attributes `f` gives: encoded as they are given
    /// when the span is ours (no `KeyValue`s, as [`Attrs`] does for span attributes), as
    /// `KeyValue`s for an SDK span. `f` is not called when nothing records.
    pub(crate) fn step_event(&self, name: &'static str, at: &Moment, f: impl FnOnce(&mut Attrs)) {
        match &self.0 {
            Repr::Empty | Repr::Context(_) => {}
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => {
                if !opentelemetry::trace::Span::is_recording(&*r.span.borrow()) {
                    return;
                }
                // Encoded before the span is borrowed: `f` is free to read it.
                let mut out = Vec::with_capacity(STEP_EVENT_CAPACITY);
                let (mut kept, mut dropped) = (0, 0);
                f(&mut Attrs(Sink::Event(&mut out, &mut kept, &mut dropped)));
                r.span.borrow_mut().encoded_event(name, &out, dropped, at);
            }
            Repr::Sdk(cx, _) => {
                let span = cx.span();
                if span.is_recording() {
                    span.add_event_with_timestamp(name, at.time(), Attrs::collect(f));
                }
            }
        }
    }

    /// Sets the status (it only moves up Unset < Error < Ok).
    pub fn set_status(&self, status: Status) {
        match &self.0 {
            Repr::Empty | Repr::Context(_) => {}
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => {
                opentelemetry::trace::Span::set_status(&mut *r.span.borrow_mut(), status)
            }
            Repr::Sdk(cx, _) => cx.span().set_status(status),
        }
    }

    /// Ends the span now (nothing when there is none, when it records nothing, or when
    /// it has ended).
    pub fn end(&self) {
        self.end_at(&Moment::new());
    }

    /// [`Cx::end`] at `at`.
    pub fn end_at(&self, at: &Moment) {
        match &self.0 {
            Repr::Empty | Repr::Context(_) => {}
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Repr::Recording(r) => {
                let mut span = r.span.borrow_mut();
                // An ended span takes no time: the clock is read only for a live one.
                if opentelemetry::trace::Span::is_recording(&*span) {
                    opentelemetry::trace::Span::end_with_timestamp(&mut *span, at.time());
                }
            }
            Repr::Sdk(cx, _) => {
                let span = cx.span();
                // Only a sampled span records anything (our samplers never answer
                // RecordOnly); the API's `end` reads the clock before it looks.
                if span.span_context().is_sampled() {
                    span.end_with_timestamp(at.time());
                }
            }
        }
    }
}

/// An attribute value, borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl AttrValue<'_> {
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    fn scalar(&self) -> Scalar<'_> {
        match *self {
            AttrValue::Str(s) => Scalar::Str(s),
            AttrValue::Int(i) => Scalar::Int(i),
            AttrValue::Bool(b) => Scalar::Bool(b),
        }
    }

    fn key_value(&self, key: &'static str) -> KeyValue {
        match *self {
            AttrValue::Str(s) => KeyValue::new(key, s.to_string()),
            AttrValue::Int(i) => KeyValue::new(key, i),
            AttrValue::Bool(b) => KeyValue::new(key, b),
        }
    }
}

/// Where span attributes go: straight into a recording span's encoding, or into a list
/// of `KeyValue`s (SDK spans, tests). Attribute helpers write here instead of building
/// a `Vec<KeyValue>`.
pub struct Attrs<'a>(Sink<'a>);

enum Sink<'a> {
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    Span(&'a mut RecordingSpan),
    /// An event's attributes, encoded as they come ([`Cx::step_event`]): the buffer,
    /// how many were kept and how many cut (over the per-event limit).
    #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
    Event(&'a mut Vec<u8>, &'a mut usize, &'a mut u32),
    List(&'a mut Vec<KeyValue>),
}

impl Attrs<'_> {
    /// What `f` writes, as `KeyValue`s.
    pub fn collect(f: impl FnOnce(&mut Attrs)) -> Vec<KeyValue> {
        let mut v = Vec::new();
        f(&mut Attrs(Sink::List(&mut v)));
        v
    }

    /// Adds `key` = `value`.
    pub fn add(&mut self, key: &'static str, value: AttrValue) {
        match &mut self.0 {
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Sink::Span(s) => s.scalar_attribute(key, value.scalar()),
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Sink::Event(out, kept, dropped) => {
                if **kept < super::span::MAX_ATTRIBUTES_PER_EVENT {
                    super::encode::put_scalar_kv(out, 3, key, value.scalar());
                    **kept += 1;
                } else {
                    **dropped += 1;
                }
            }
            Sink::List(v) => v.push(value.key_value(key)),
        }
    }

    /// Adds a string attribute.
    pub fn str(&mut self, key: &'static str, value: &str) {
        self.add(key, AttrValue::Str(value));
    }

    /// Adds an integer attribute.
    pub fn int(&mut self, key: &'static str, value: i64) {
        self.add(key, AttrValue::Int(value));
    }

    /// Adds a boolean attribute.
    pub fn bool(&mut self, key: &'static str, value: bool) {
        self.add(key, AttrValue::Bool(value));
    }

    /// Adds an integer as a decimal string attribute (for ids that the conventions
    /// give as strings), formatted on the stack.
    pub fn int_text(&mut self, key: &'static str, value: impl itoa::Integer) {
        self.str(key, itoa::Buffer::new().format(value));
    }

    /// Adds a prepared `KeyValue` (any value type).
    pub fn key_value(&mut self, kv: &KeyValue) {
        match &mut self.0 {
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Sink::Span(s) => opentelemetry::trace::Span::set_attribute(&mut **s, kv.clone()),
            #[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
            Sink::Event(out, kept, dropped) => {
                if **kept < super::span::MAX_ATTRIBUTES_PER_EVENT {
                    super::encode::put_kv(out, 3, kv);
                    **kept += 1;
                } else {
                    **dropped += 1;
                }
            }
            Sink::List(v) => v.push(kv.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn a_context_only_records_nothing_and_lends_its_ids() {
        let sc = SpanContext::new(
            TraceId::from(3u128),
            SpanId::from(4u64),
            TraceFlags::default(),
            true,
            TraceState::NONE,
        );
        let cx = Cx::from_span_context(sc.clone());
        assert_eq!(cx.span_context(), &sc);
        assert!(!cx.is_recording());
        let mut called = false;
        cx.set_attributes(|_| called = true);
        assert!(
            !called,
            "attributes are not built for a span nobody records"
        );
        cx.event("e", &[("k", AttrValue::Int(1))]);
        cx.end();
        assert!(!Cx::default().span_context().is_valid());
        assert_eq!(
            cx.to_context().span().span_context().span_id(),
            SpanId::from(4u64)
        );
    }

    #[test]
    fn a_context_with_a_trace_state_is_shared_not_copied() {
        let state = TraceState::from_key_value([("congo", "t61rcWkgMzE"), ("dd", "s:0")]).unwrap();
        let sc = SpanContext::new(
            TraceId::from(3u128),
            SpanId::from(4u64),
            TraceFlags::default(),
            true,
            state,
        );
        let cx = Cx::from_span_context(sc.clone());
        let copy = cx.clone();
        match (&cx.0, &copy.0) {
            (Repr::Context(Sc::Shared(a)), Repr::Context(Sc::Shared(b))) => {
                assert!(Rc::ptr_eq(a, b), "a clone shares the context")
            }
            _ => panic!("a context with a trace state is held behind an Rc"),
        }
        assert_eq!(copy.span_context(), &sc);
        let plain = Cx::from_span_context(SpanContext::new(
            TraceId::from(3u128),
            SpanId::from(4u64),
            TraceFlags::default(),
            true,
            TraceState::NONE,
        ));
        assert!(matches!(plain.0, Repr::Context(Sc::Plain(_))));
    }

    #[test]
    fn attrs_collect_keeps_types() {
        let v = Attrs::collect(|a| {
            a.str("s", "x");
            a.int("i", 7);
            a.bool("b", true);
            a.key_value(&KeyValue::new("f", 1.5));
        });
        let want = vec![
            KeyValue::new("s", "x"),
            KeyValue::new("i", 7),
            KeyValue::new("b", true),
            KeyValue::new("f", 1.5),
        ];
        assert_eq!(v, want);
    }
}
