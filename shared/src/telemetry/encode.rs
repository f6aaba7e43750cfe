//! OTLP protobuf encoding straight from the SDK's `SpanData`, without building the
//! intermediate `opentelemetry-proto` message structs.
//!
//! Why: converting a span into those structs copies every name, key and value into a
//! new `String`/`Vec`, and on the exporter thread that meant freeing, in bulk, memory
//! the request thread had allocated — with glibc's malloc the two threads then fight
//! over one arena (measured: ~25,000 futex calls per 20,000 requests in the gateway and
//! −56 % throughput at C = 32 with always_on; docs/benchmark.md). Encoding here costs a
//! length pass and a write pass with no allocation, so the batch processor encodes each
//! span on the thread that ended it and the span's memory is freed where it was made.
//!
//! Only the mapping of the OTLP trace messages (opentelemetry/proto/trace/v1/trace.proto,
//! field numbers below) and the protobuf wire primitives it needs (keys, varints,
//! fixed-width numbers: a dozen lines) are written here, the small helpers forced
//! inline: the release profile's `opt-level = "s"` left them as calls, and inlining
//! took a sampled span from 522 to 442 ns in `mcp-bench span-cost` (glibc). With the
//! primitives here, `prost` is only a dev-dependency: a unit test decodes our output
//! with the generated `opentelemetry-proto` types and compares it with the SDK's own
//! conversion, so the library still checks the wire format.
//!
//! String values longer than [`MAX_VALUE_BYTES`] are cut at a character boundary, so
//! one queued span has a bounded size whatever a peer put in an error message.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

use super::attrs::cut;
pub use super::attrs::MAX_VALUE_BYTES;

/// `ScopeSpans.spans`: the field under which [`append_span`] frames each span.
const SCOPE_SPANS_SPANS: u32 = 2;
/// OTLP `SpanFlags`: the flags say whether the parent is remote, and it is.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

// --- low-level writers -----------------------------------------------------------------

/// Protobuf wire types used here.
#[derive(Clone, Copy)]
enum WireType {
    Varint = 0,
    SixtyFourBit = 1,
    LengthDelimited = 2,
    ThirtyTwoBit = 5,
}

#[inline(always)]
fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline(always)]
fn encoded_len_varint(v: u64) -> usize {
    // 7 bits per byte; zero takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline(always)]
fn encode_key(field: u32, wire: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(field << 3 | wire as u32), out);
}

#[inline(always)]
fn key_len(field: u32) -> usize {
    encoded_len_varint(u64::from(field << 3))
}

/// Size of a length-delimited field holding `len` bytes.
#[inline(always)]
fn delim_len(field: u32, len: usize) -> usize {
    key_len(field) + encoded_len_varint(len as u64) + len
}

#[inline(always)]
fn put_delim_head(out: &mut Vec<u8>, field: u32, len: usize) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

#[inline(always)]
pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_delim_head(out, field, b.len());
    crate::bytes::append(out, b);
}

#[inline(always)]
fn put_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    encode_key(field, WireType::Varint, out);
    encode_varint(v, out);
}

#[inline(always)]
fn varint_len(field: u32, v: u64) -> usize {
    key_len(field) + encoded_len_varint(v)
}

#[inline(always)]
fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    encode_key(field, WireType::SixtyFourBit, out);
    crate::bytes::append(out, &v.to_le_bytes());
}

#[inline(always)]
fn put_fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
    encode_key(field, WireType::ThirtyTwoBit, out);
    crate::bytes::append(out, &v.to_le_bytes());
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// --- AnyValue / KeyValue (common.proto) --------------------------------------------------
// AnyValue: string_value = 1, bool_value = 2, int_value = 3, double_value = 4,
// array_value = 5 (ArrayValue { values = 1 }). KeyValue: key = 1, value = 2.

/// One scalar of an AnyValue, borrowed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
}

#[inline(always)]
fn scalar_len(s: &Scalar) -> usize {
    match s {
        Scalar::Str(v) => delim_len(1, cut(v).len()),
        Scalar::Bool(_) => 2,
        Scalar::Int(v) => varint_len(3, *v as u64),
        Scalar::Double(_) => 9,
    }
}

#[inline(always)]
fn put_scalar(out: &mut Vec<u8>, s: &Scalar) {
    match s {
        Scalar::Str(v) => put_bytes(out, 1, cut(v).as_bytes()),
        Scalar::Bool(v) => put_varint(out, 2, *v as u64),
        Scalar::Int(v) => put_varint(out, 3, *v as u64),
        Scalar::Double(v) => put_fixed64(out, 4, v.to_bits()),
    }
}

/// Calls `f` with each element of an array value, as a scalar.
fn for_each_element(a: &Array, mut f: impl FnMut(&Scalar)) {
    match a {
        Array::Bool(v) => v.iter().for_each(|x| f(&Scalar::Bool(*x))),
        Array::I64(v) => v.iter().for_each(|x| f(&Scalar::Int(*x))),
        Array::F64(v) => v.iter().for_each(|x| f(&Scalar::Double(*x))),
        Array::String(v) => v
            .iter()
            .for_each(|x: &StringValue| f(&Scalar::Str(x.as_str()))),
        _ => {}
    }
}

/// Size of the ArrayValue message body.
fn array_body_len(a: &Array) -> usize {
    let mut n = 0;
    for_each_element(a, |s| n += delim_len(1, scalar_len(s)));
    n
}

/// Size of the AnyValue message body (a value type this encoder does not know is
/// written as its string form).
#[inline(always)]
fn any_len(v: &Value) -> usize {
    match v {
        Value::Bool(b) => scalar_len(&Scalar::Bool(*b)),
        Value::I64(i) => scalar_len(&Scalar::Int(*i)),
        Value::F64(f) => scalar_len(&Scalar::Double(*f)),
        Value::String(s) => scalar_len(&Scalar::Str(s.as_str())),
        Value::Array(a) => delim_len(5, array_body_len(a)),
        other => scalar_len(&Scalar::Str(&other.as_str())),
    }
}

fn put_any(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => put_scalar(out, &Scalar::Bool(*b)),
        Value::I64(i) => put_scalar(out, &Scalar::Int(*i)),
        Value::F64(f) => put_scalar(out, &Scalar::Double(*f)),
        Value::String(s) => put_scalar(out, &Scalar::Str(s.as_str())),
        Value::Array(a) => {
            put_delim_head(out, 5, array_body_len(a));
            for_each_element(a, |s| {
                put_delim_head(out, 1, scalar_len(s));
                put_scalar(out, s);
            });
        }
        other => put_scalar(out, &Scalar::Str(&other.as_str())),
    }
}

#[inline(always)]
fn kv_len(kv: &KeyValue) -> usize {
    delim_len(1, kv.key.as_str().len()) + delim_len(2, any_len(&kv.value))
}

pub(crate) fn put_kv(out: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    let key = kv.key.as_str();
    let scalar = match &kv.value {
        Value::String(v) => Scalar::Str(v.as_str()),
        Value::Bool(b) => Scalar::Bool(*b),
        Value::I64(i) => Scalar::Int(*i),
        Value::F64(f) => Scalar::Double(*f),
        other => {
            put_kv_head(out, field, key, any_len(other));
            put_any(out, other);
            return;
        }
    };
    put_scalar_kv(out, field, key, scalar);
}

/// A `KeyValue` message with a scalar value, as field `field`: what [`put_kv`] writes,
/// from borrowed parts (no `KeyValue` built).
pub(crate) fn put_scalar_kv(out: &mut Vec<u8>, field: u32, key: &str, value: Scalar) {
    if let Scalar::Str(v) = value {
        let v = cut(v);
        // Most attributes: a short key and a short string, where every length fits in
        // one varint byte. The entry is put together on the stack and appended once:
        // with `opt-level = "s"` each `extend_from_slice` is a call of ~40 instructions
        // before its copy (callgrind, `mcp-bench span-cost`: 261 → 157 instructions per
        // attribute).
        let (klen, vlen) = (key.len(), v.len());
        // KeyValue { key = 1, value = 2: AnyValue { string_value = 1 } }, each length
        // one byte: [tag, body, 0x0a, klen] key [0x12, any, 0x0a, vlen] value.
        let any = 2 + vlen;
        let body = 2 + klen + 2 + any;
        if field < 16 && body < 128 {
            let mut buf = [0u8; 2 + 127];
            buf[..4].copy_from_slice(&[
                (field << 3 | WireType::LengthDelimited as u32) as u8,
                body as u8,
                0x0a,
                klen as u8,
            ]);
            crate::bytes::copy(&mut buf[4..4 + klen], key.as_bytes());
            buf[4 + klen..8 + klen].copy_from_slice(&[0x12, any as u8, 0x0a, vlen as u8]);
            crate::bytes::copy(&mut buf[8 + klen..8 + klen + vlen], v.as_bytes());
            crate::bytes::append(out, &buf[..2 + body]);
            return;
        }
        let any = 1 + encoded_len_varint(v.len() as u64) + v.len();
        let body = delim_len(1, key.len()) + delim_len(2, any);
        out.reserve(delim_len(field, body));
        put_delim_head(out, field, body);
        put_bytes(out, 1, key.as_bytes());
        put_delim_head(out, 2, any);
        put_bytes(out, 1, v.as_bytes());
        return;
    }
    put_kv_head(out, field, key, scalar_len(&value));
    put_scalar(out, &value);
}

/// The start of a `KeyValue` message as field `field`, up to its value's body: the
/// message's head, the key, and the head of an `AnyValue` of `value_len` bytes.
fn put_kv_head(out: &mut Vec<u8>, field: u32, key: &str, value_len: usize) {
    put_delim_head(
        out,
        field,
        delim_len(1, key.len()) + delim_len(2, value_len),
    );
    put_bytes(out, 1, key.as_bytes());
    put_delim_head(out, 2, value_len);
}

fn kvs_len(field: u32, kvs: &[KeyValue]) -> usize {
    kvs.iter().map(|kv| delim_len(field, kv_len(kv))).sum()
}

// --- Span (trace.proto) -----------------------------------------------------------------
// Span: trace_id = 1, span_id = 2, trace_state = 3, parent_span_id = 4, name = 5,
// kind = 6, start_time_unix_nano = 7, end_time_unix_nano = 8, attributes = 9,
// dropped_attributes_count = 10, events = 11, dropped_events_count = 12, links = 13,
// dropped_links_count = 14, status = 15, flags = 16.
// Event: time_unix_nano = 1, name = 2, attributes = 3, dropped_attributes_count = 4.
// Link: trace_id = 1, span_id = 2, trace_state = 3, attributes = 4,
// dropped_attributes_count = 5, flags = 6. Status: message = 2, code = 3.

fn kind_number(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn status_parts(s: &Status) -> (u64, &str) {
    match s {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, cut(description)),
    }
}

fn status_len(s: &Status) -> usize {
    let (code, msg) = status_parts(s);
    let mut n = 0;
    if !msg.is_empty() {
        n += delim_len(2, msg.len());
    }
    if code != 0 {
        n += varint_len(3, code);
    }
    n
}

fn optional_varint_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        varint_len(field, v)
    }
}

fn put_optional_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, field, v);
    }
}

fn event_len(name: &str, attrs: &[KeyValue], dropped: u32) -> usize {
    9 + delim_len(2, name.len()) + kvs_len(3, attrs) + optional_varint_len(4, dropped.into())
}

fn link_len(state: &str, attrs: &[KeyValue], dropped: u32) -> usize {
    delim_len(1, 16)
        + delim_len(2, 8)
        + if state.is_empty() {
            0
        } else {
            delim_len(3, state.len())
        }
        + kvs_len(4, attrs)
        + optional_varint_len(5, dropped.into())
        + 5
}

/// The span's `flags`: its trace flags plus whether its parent is remote.
fn span_flags(trace_flags: u8, parent_is_remote: bool) -> u32 {
    let mut f = u32::from(trace_flags) | FLAG_HAS_IS_REMOTE;
    if parent_is_remote {
        f |= FLAG_IS_REMOTE;
    }
    f
}

/// Appends one `Span.attributes` entry.
#[inline]
pub(crate) fn put_attribute(out: &mut Vec<u8>, kv: &KeyValue) {
    put_kv(out, 9, kv);
}

/// Appends one `Span.events` entry.
pub(crate) fn put_event(
    out: &mut Vec<u8>,
    time: SystemTime,
    name: &str,
    attrs: &[KeyValue],
    dropped: u32,
) {
    put_delim_head(out, 11, event_len(name, attrs, dropped));
    put_fixed64(out, 1, nanos(time));
    put_bytes(out, 2, name.as_bytes());
    for kv in attrs {
        put_kv(out, 3, kv);
    }
    put_optional_varint(out, 4, dropped.into());
}

/// Appends one `Span.attributes` entry with a scalar value.
#[inline]
pub(crate) fn put_scalar_attribute(out: &mut Vec<u8>, key: &str, value: Scalar) {
    put_scalar_kv(out, 9, key, value);
}

/// Appends one `Span.events` entry whose attributes are scalars (see [`put_event`]).
pub(crate) fn put_scalar_event(
    out: &mut Vec<u8>,
    time: SystemTime,
    name: &str,
    attrs: &[(&str, Scalar)],
    dropped: u32,
) {
    let attrs_len: usize = attrs
        .iter()
        .map(|(k, v)| delim_len(3, delim_len(1, k.len()) + delim_len(2, scalar_len(v))))
        .sum();
    let len = 9 + delim_len(2, name.len()) + attrs_len + optional_varint_len(4, dropped.into());
    put_delim_head(out, 11, len);
    put_fixed64(out, 1, nanos(time));
    put_bytes(out, 2, name.as_bytes());
    for (k, v) in attrs {
        put_scalar_kv(out, 3, k, *v);
    }
    put_optional_varint(out, 4, dropped.into());
}

/// Appends one `Span.events` entry whose attributes are already encoded: `attrs` holds
/// `Event.attributes` entries (field 3), as [`put_scalar_kv`] writes them.
pub(crate) fn put_encoded_event(
    out: &mut Vec<u8>,
    time: SystemTime,
    name: &str,
    attrs: &[u8],
    dropped: u32,
) {
    let len = 9 + delim_len(2, name.len()) + attrs.len() + optional_varint_len(4, dropped.into());
    put_delim_head(out, 11, len);
    put_fixed64(out, 1, nanos(time));
    put_bytes(out, 2, name.as_bytes());
    crate::bytes::append(out, attrs);
    put_optional_varint(out, 4, dropped.into());
}

/// Appends one `Span.links` entry.
pub(crate) fn put_link(out: &mut Vec<u8>, sc: &SpanContext, attrs: &[KeyValue], dropped: u32) {
    let state = sc.trace_state().header();
    put_delim_head(out, 13, link_len(&state, attrs, dropped));
    put_bytes(out, 1, &sc.trace_id().to_bytes());
    put_bytes(out, 2, &sc.span_id().to_bytes());
    if !state.is_empty() {
        put_bytes(out, 3, state.as_bytes());
    }
    for kv in attrs {
        put_kv(out, 4, kv);
    }
    put_optional_varint(out, 5, dropped.into());
    put_fixed32(out, 6, span_flags(sc.trace_flags().to_u8(), sc.is_remote()));
}

/// A span's fields other than its attributes, events and links.
pub(crate) struct SpanHead<'a> {
    pub sc: &'a SpanContext,
    /// The parent's span id and whether the parent is remote; `None` for a root.
    pub parent: Option<(SpanId, bool)>,
    pub kind: &'a SpanKind,
    pub name: &'a str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub dropped_attributes: u32,
    pub dropped_events: u32,
    pub dropped_links: u32,
    pub status: &'a Status,
}

/// Appends one `ScopeSpans.spans` entry (field 2, length-delimited), ready to be
/// wrapped by [`Envelope::request`]: `head`'s fields plus `recorded`, the span's
/// attribute, event and link entries as written by [`put_attribute`], [`put_event`]
/// and [`put_link`]. Protobuf lets a message's fields come in any order, repeated ones
/// interleaved, so a span can write them as they happen.
pub(crate) fn append_span_parts(out: &mut Vec<u8>, head: &SpanHead, recorded: &[u8]) {
    let sc = head.sc;
    let trace_state = sc.trace_state().header();
    let mut len = delim_len(1, 16) + delim_len(2, 8);
    if !trace_state.is_empty() {
        len += delim_len(3, trace_state.len());
    }
    if head.parent.is_some() {
        len += delim_len(4, 8);
    }
    len += delim_len(5, head.name.len());
    len += varint_len(6, kind_number(head.kind));
    len += 9 + 9; // start and end times
    len += recorded.len();
    len += optional_varint_len(10, head.dropped_attributes.into());
    len += optional_varint_len(12, head.dropped_events.into());
    len += optional_varint_len(14, head.dropped_links.into());
    let status_body = status_len(head.status);
    len += delim_len(15, status_body);
    len += key_len(16) + 4;

    // The entry's exact size is known: make room once and write in place (with
    // `opt-level = "s"` each `Vec` append is a call; callgrind, `mcp-bench span-cost`:
    // 960 → 295 instructions per span).
    let start = out.len();
    let total = delim_len(SCOPE_SPANS_SPANS, len);
    out.resize(start + total, 0);
    let mut w = Slot {
        buf: &mut out[start..],
        pos: 0,
    };
    w.delim_head(SCOPE_SPANS_SPANS, len);
    let body = w.pos;
    w.field_bytes(1, &sc.trace_id().to_bytes());
    w.field_bytes(2, &sc.span_id().to_bytes());
    if !trace_state.is_empty() {
        w.field_bytes(3, trace_state.as_bytes());
    }
    let mut parent_is_remote = false;
    if let Some((id, remote)) = head.parent {
        w.field_bytes(4, &id.to_bytes());
        parent_is_remote = remote;
    }
    w.field_bytes(5, head.name.as_bytes());
    w.field_varint(6, kind_number(head.kind));
    w.field_fixed64(7, nanos(head.start));
    w.field_fixed64(8, nanos(head.end));
    w.bytes(recorded);
    for (field, n) in [
        (10, head.dropped_attributes),
        (12, head.dropped_events),
        (14, head.dropped_links),
    ] {
        if n != 0 {
            w.field_varint(field, n.into());
        }
    }
    let (code, msg) = status_parts(head.status);
    w.delim_head(15, status_body);
    if !msg.is_empty() {
        w.field_bytes(2, msg.as_bytes());
    }
    if code != 0 {
        w.field_varint(3, code);
    }
    w.key(16, WireType::ThirtyTwoBit);
    w.bytes(&span_flags(sc.trace_flags().to_u8(), parent_is_remote).to_le_bytes());
    debug_assert_eq!(w.pos - body, len, "span length pass and write pass agree");
    debug_assert_eq!(w.pos, total, "the entry fills exactly the room made for it");
}

/// Writes protobuf into room already made in a buffer (see [`append_span_parts`]).
struct Slot<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Slot<'_> {
    #[inline(always)]
    fn bytes(&mut self, b: &[u8]) {
        crate::bytes::copy(&mut self.buf[self.pos..self.pos + b.len()], b);
        self.pos += b.len();
    }

    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf[self.pos] = v as u8 | 0x80;
            self.pos += 1;
            v >>= 7;
        }
        self.buf[self.pos] = v as u8;
        self.pos += 1;
    }

    #[inline(always)]
    fn key(&mut self, field: u32, wire: WireType) {
        self.varint(u64::from(field << 3 | wire as u32));
    }

    #[inline(always)]
    fn delim_head(&mut self, field: u32, len: usize) {
        self.key(field, WireType::LengthDelimited);
        self.varint(len as u64);
    }

    #[inline(always)]
    fn field_bytes(&mut self, field: u32, b: &[u8]) {
        self.delim_head(field, b.len());
        self.bytes(b);
    }

    #[inline(always)]
    fn field_varint(&mut self, field: u32, v: u64) {
        self.key(field, WireType::Varint);
        self.varint(v);
    }

    #[inline(always)]
    fn field_fixed64(&mut self, field: u32, v: u64) {
        self.key(field, WireType::SixtyFourBit);
        self.bytes(&v.to_le_bytes());
    }
}

/// Appends an SDK span as one `ScopeSpans.spans` entry (see [`append_span_parts`]).
pub fn append_span(span: &SpanData, out: &mut Vec<u8>) {
    let mut recorded = Vec::new();
    for kv in &span.attributes {
        put_attribute(&mut recorded, kv);
    }
    for e in span.events.iter() {
        put_event(
            &mut recorded,
            e.timestamp,
            &e.name,
            &e.attributes,
            e.dropped_attributes_count,
        );
    }
    for l in span.links.iter() {
        put_link(
            &mut recorded,
            &l.span_context,
            &l.attributes,
            l.dropped_attributes_count,
        );
    }
    let head = SpanHead {
        sc: &span.span_context,
        parent: (span.parent_span_id != SpanId::INVALID)
            .then_some((span.parent_span_id, span.parent_span_is_remote)),
        kind: &span.span_kind,
        name: &span.name,
        start: span.start_time,
        end: span.end_time,
        dropped_attributes: span.dropped_attributes_count,
        dropped_events: span.events.dropped_count,
        dropped_links: span.links.dropped_count,
        status: &span.status,
    };
    append_span_parts(out, &head, &recorded);
}

// --- the request around the spans --------------------------------------------------------
// ExportTraceServiceRequest: resource_spans = 1. ResourceSpans: resource = 1,
// scope_spans = 2. Resource: attributes = 1. ScopeSpans: scope = 1, spans = 2.
// InstrumentationScope: name = 1, version = 2.

/// The parts of an export request that are the same for every batch of a process:
/// its resource and the instrumentation scope (one tracer per process).
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// `ResourceSpans.resource` field, encoded with its key.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` field, encoded with its key.
    scope: Vec<u8>,
}

impl Envelope {
    /// The envelope for `resource` and the tracer named `scope_name`.
    pub fn new(resource: &Resource, scope_name: &str, scope_version: Option<&str>) -> Self {
        let attrs: Vec<KeyValue> = resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let mut body = Vec::new();
        for kv in &attrs {
            put_kv(&mut body, 1, kv);
        }
        let mut resource = Vec::new();
        put_bytes(&mut resource, 1, &body);
        let mut body = Vec::new();
        put_bytes(&mut body, 1, scope_name.as_bytes());
        if let Some(v) = scope_version.filter(|v| !v.is_empty()) {
            put_bytes(&mut body, 2, v.as_bytes());
        }
        let mut scope = Vec::new();
        put_bytes(&mut scope, 1, &body);
        Envelope { resource, scope }
    }

    /// Appends an `ExportTraceServiceRequest` holding `spans` (entries written by
    /// [`append_span`]) to `out`.
    pub fn request(&self, spans: &[u8], out: &mut Vec<u8>) {
        self.prefix(spans.len(), out);
        out.extend_from_slice(spans);
    }

    /// Appends what comes before the spans in an `ExportTraceServiceRequest` holding
    /// `spans_len` bytes of span entries: the request is this followed by the entries,
    /// which can then be sent from where they are, without a copy.
    pub fn prefix(&self, spans_len: usize, out: &mut Vec<u8>) {
        let scope_spans = self.scope.len() + spans_len;
        let resource_spans = self.resource.len() + delim_len(2, scope_spans);
        out.reserve(delim_len(1, resource_spans) - spans_len);
        put_delim_head(out, 1, resource_spans);
        out.extend_from_slice(&self.resource);
        put_delim_head(out, 2, scope_spans);
        out.extend_from_slice(&self.scope);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, TraceFlags, TraceId, TraceState};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;
    use std::borrow::Cow;
    use std::time::Duration;

    /// The span the test spans link to (remote, sampled, with a trace state).
    pub(crate) fn linked() -> SpanContext {
        SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("k", "v")]).unwrap(),
        )
    }

    pub(crate) fn span(i: u64, parent: bool, status: Status) -> SpanData {
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789 + i);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "exception",
            t0 + Duration::from_micros(3),
            vec![
                KeyValue::new("exception.type", "tool_error"),
                KeyValue::new("exception.message", "x".repeat(5000)),
            ],
            0,
        ));
        events.dropped_count = 2;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            linked(),
            vec![KeyValue::new("link.kind", "follows")],
            1,
        ));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128 + i as u128),
                SpanId::from(0x1112_1314_1516_1718u64 + i),
                TraceFlags::SAMPLED,
                false,
                if i % 2 == 0 {
                    TraceState::from_key_value([("vendor", "abc")]).unwrap()
                } else {
                    TraceState::default()
                },
            ),
            parent_span_id: if parent {
                SpanId::from(0x2122_2324_2526_2728u64)
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: parent && i % 2 == 1,
            span_kind: [SpanKind::Server, SpanKind::Client, SpanKind::Internal][i as usize % 3]
                .clone(),
            name: Cow::Borrowed("backend.forward"),
            start_time: t0,
            end_time: t0 + Duration::from_micros(250),
            attributes: vec![
                KeyValue::new("mcp.method.name", "tools/call"),
                KeyValue::new("jsonrpc.request.id", "é".repeat(3000)),
                KeyValue::new("server.port", 4317i64),
                KeyValue::new("mcp.negative", -5i64),
                KeyValue::new("ok", true),
                KeyValue::new("ratio", 0.25f64),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
                KeyValue::new("empty", ""),
            ],
            dropped_attributes_count: 3,
            events,
            links,
            status,
            instrumentation_scope: InstrumentationScope::builder("mcp-gateway").build(),
        }
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "mcp-gateway"),
                KeyValue::new("service.version", "0.1.0"),
            ])
            .build()
    }

    /// What the SDK's own conversion makes of the same spans, with long strings cut as
    /// ours are.
    fn reference(spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        let spans = spans
            .into_iter()
            .map(|mut s| {
                for kv in &mut s.attributes {
                    if let Value::String(v) = &kv.value {
                        kv.value = Value::from(cut(v.as_str()).to_string());
                    }
                }
                for e in &mut s.events.events {
                    for kv in &mut e.attributes {
                        if let Value::String(v) = &kv.value {
                            kv.value = Value::from(cut(v.as_str()).to_string());
                        }
                    }
                }
                s
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource()),
            ),
        }
    }

    #[test]
    fn decodes_to_what_the_sdk_conversion_makes() {
        let spans = vec![
            span(0, false, Status::Unset),
            span(1, true, Status::error("x".repeat(5000))),
            span(2, true, Status::Ok),
        ];
        let env = Envelope::new(&resource(), "mcp-gateway", None);
        let mut entries = Vec::new();
        for s in &spans {
            append_span(s, &mut entries);
        }
        let mut body = Vec::new();
        env.request(&entries, &mut body);
        let ours = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid protobuf");
        let mut want = reference(spans);
        // The SDK's conversion leaves the status message uncut.
        for s in &mut want.resource_spans[0].scope_spans[0].spans {
            if let Some(st) = &mut s.status {
                st.message = cut(&st.message).to_string();
            }
        }
        // A resource keeps its attributes in a hash map: compare them in key order.
        let mut ours = ours;
        for r in ours
            .resource_spans
            .iter_mut()
            .chain(want.resource_spans.iter_mut())
        {
            if let Some(res) = &mut r.resource {
                res.attributes.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        if ours != want {
            let (a, b) = (format!("{ours:#?}"), format!("{want:#?}"));
            for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
                assert_eq!(x, y, "first difference at line {i} of the decoded request");
            }
            panic!("decoded requests differ in length");
        }
        let s = &ours.resource_spans[0].scope_spans[0].spans[1];
        assert_eq!(s.attributes[1].key, "jsonrpc.request.id");
        match &s.attributes[1].value.as_ref().unwrap().value {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) => {
                assert!(v.len() <= MAX_VALUE_BYTES && v.len() > MAX_VALUE_BYTES - 2)
            }
            other => panic!("{other:?}"),
        }
    }

    /// String attributes of every length class around the one-byte varint limits (the
    /// short-string path and the general one) are byte for byte what prost writes.
    #[test]
    fn string_attributes_match_prost_at_every_length() {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as PKv};
        // (An empty key is left out: prost omits a proto3 default, we write it; both
        // decode the same, and an attribute key is never empty.)
        let lens = [
            0usize, 1, 60, 61, 62, 63, 100, 121, 122, 123, 126, 127, 128, 200,
        ];
        for field in [1u32, 3, 9] {
            for &k in &lens[1..] {
                for &v in &lens {
                    let (key, value) = ("k".repeat(k), "v".repeat(v));
                    let mut ours = Vec::new();
                    put_kv(&mut ours, field, &KeyValue::new(key.clone(), value.clone()));
                    let msg = PKv {
                        key,
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(value)),
                        }),
                        ..Default::default()
                    };
                    let mut theirs = Vec::new();
                    prost::encoding::message::encode(field, &msg, &mut theirs);
                    assert_eq!(ours, theirs, "field {field}, key {k} B, value {v} B");
                }
            }
        }
    }

    #[test]
    fn varints_match_prost() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            encode_varint(v, &mut ours);
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
            assert_eq!(encoded_len_varint(v), theirs.len(), "{v}");
        }
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let mut body = Vec::new();
        Envelope::new(&resource(), "mcp-router", Some("0.1.0")).request(&[], &mut body);
        let r = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(r.resource_spans[0].scope_spans[0].spans.len(), 0);
        let scope = r.resource_spans[0].scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("mcp-router", "0.1.0")
        );
    }
}
