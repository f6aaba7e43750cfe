//! W3C trace context in MCP `params._meta` and in HTTP/WebSocket handshake headers.
//!
//! A malformed `traceparent` yields an empty context (the caller starts a new root);
//! it is never an error. Empty `tracestate` values are not written.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::{Map, Value};

/// Keys of `_meta` (and header names) that carry trace context.
pub const TRACE_KEYS: [&str; 2] = ["traceparent", "tracestate"];

struct MetaInjector<'a>(&'a mut Map<String, Value>);

impl Injector for MetaInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            self.0.remove(key);
        } else {
            self.0.insert(key.to_string(), Value::String(value));
        }
    }
}

struct MetaExtractor<'a>(&'a Map<String, Value>);

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the span context of `cx` into a `_meta` object (other keys are kept).
pub fn inject_meta(cx: &Context, meta: &mut Map<String, Value>) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(cx, &mut MetaInjector(meta));
}

/// Reads a remote parent from `_meta`; an empty context when absent or malformed.
pub fn extract_meta(meta: Option<&Map<String, Value>>) -> Context {
    match meta {
        Some(m) if m.contains_key("traceparent") => {
            TraceContextPropagator::new().extract_with_context(&Context::new(), &MetaExtractor(m))
        }
        _ => Context::new(),
    }
}

struct HeaderInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_string(), value));
        }
    }
}

/// The `traceparent`/`tracestate` headers for `cx` (none when it has no valid span).
pub fn headers_for(cx: &Context) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(&mut out));
    }
    out
}

/// Reads a remote parent from headers, given a lookup by (lower-case) header name.
pub fn extract_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    let map: std::collections::HashMap<String, String> = TRACE_KEYS
        .iter()
        .filter_map(|k| get(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    if !map.contains_key("traceparent") {
        return Context::new();
    }
    TraceContextPropagator::new().extract_with_context(&Context::new(), &map)
}

/// True when `cx` carries a valid span context (local or remote).
pub fn has_span(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_through_meta_keeping_other_keys() {
        let meta = json!({"traceparent": TP, "tracestate": "", "progressToken": 3});
        let cx = extract_meta(meta.as_object());
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = json!({"progressToken": 3}).as_object().unwrap().clone();
        inject_meta(&cx, &mut out);
        assert_eq!(out["traceparent"], TP);
        assert!(
            !out.contains_key("tracestate"),
            "empty tracestate is not written"
        );
        assert_eq!(out["progressToken"], 3);
    }

    #[test]
    fn malformed_traceparent_is_a_new_root_not_an_error() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "",
            "01-zz",
        ] {
            let meta = json!({ "traceparent": bad });
            assert!(!has_span(&extract_meta(meta.as_object())), "{bad}");
        }
        assert!(!has_span(&extract_meta(None)));
        let meta = json!({ "traceparent": 5 });
        assert!(!has_span(&extract_meta(meta.as_object())));
    }

    #[test]
    fn headers_round_trip() {
        let cx = extract_headers(|k| (k == "traceparent").then_some(TP));
        let h = headers_for(&cx);
        assert_eq!(h, vec![("traceparent".to_string(), TP.to_string())]);
        assert!(headers_for(&Context::new()).is_empty());
    }
}
