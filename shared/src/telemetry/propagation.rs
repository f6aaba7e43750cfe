//! W3C trace context in MCP `params._meta` and in HTTP/WebSocket handshake headers.
//!
//! A malformed `traceparent` yields an empty context (the caller starts a new root);
//! it is never an error. Empty `tracestate` values are not written.
//!
//! `traceparent` is written and read here directly (W3C Trace Context level 1: version
//! `00` written, any version but `ff` read, lower-case hex, ids not all zero, only the
//! sampled flag kept) rather than through the SDK's `TraceContextPropagator`: every
//! forwarded message goes through this, sampled or not, and the propagator's
//! `format!`/`split` path cost ~3,800 instructions per inject and ~2,900 per extract in
//! the gateway (callgrind; docs/benchmark.md) against a few hundred here. A unit test
//! checks that both agree on valid and malformed inputs. `tracestate` is still parsed
//! by the SDK's `TraceState` (one bad member discards all of it), after one over 512
//! characters is truncated as W3C suggests ([`MAX_TRACESTATE_BYTES`]).

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use super::Cx;

/// Keys of `_meta` (and header names) that carry trace context.
pub const TRACE_KEYS: [&str; 2] = ["traceparent", "tracestate"];

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// `out` gets two digits per byte of `bytes`: one table lookup and one two-byte store
/// per byte, no index checks (every traced message gets a `traceparent` written).
fn put_hex(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Each byte's value as a lower-case hex digit, 0xff for every other byte.
const UNHEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        t[HEX[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Lower-case hex digits only; `text` holds two digits per byte of `out`. One table
/// lookup per digit, checked once at the end (every traced request parses a
/// `traceparent`).
fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    debug_assert_eq!(text.len(), 2 * out.len());
    let mut bad = 0;
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (UNHEX[usize::from(pair[0])], UNHEX[usize::from(pair[1])]);
        bad |= hi | lo;
        *o = hi << 4 | lo;
    }
    (bad & 0xf0 == 0).then_some(())
}

/// The `traceparent` value of a span context (version 00, sampled flag only).
pub fn format_traceparent(sc: &SpanContext) -> String {
    traceparent_text(sc).to_owned()
}

/// The text of [`format_traceparent`], on the stack.
fn traceparent_text(sc: &SpanContext) -> TraceparentText {
    let mut b = [b'-'; TRACEPARENT_LEN];
    b[..2].copy_from_slice(b"00");
    put_hex(&sc.trace_id().to_bytes(), &mut b[3..35]);
    put_hex(&sc.span_id().to_bytes(), &mut b[36..52]);
    let sampled = sc.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8();
    put_hex(&[sampled], &mut b[53..55]);
    TraceparentText(b)
}

/// A `traceparent` of version 00: ASCII hex digits and dashes.
struct TraceparentText([u8; TRACEPARENT_LEN]);

impl std::ops::Deref for TraceparentText {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits and dashes are ASCII")
    }
}

/// Parses a `traceparent`; `None` when it is malformed or carries an all-zero id.
pub fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let b = value.trim().as_bytes();
    if b.len() < TRACEPARENT_LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    unhex(&b[..2], &mut version)?;
    // Version ff is invalid; 00 has exactly four fields; later versions may append
    // fields after a dash.
    match version[0] {
        0xff => return None,
        0 if b.len() != TRACEPARENT_LEN => return None,
        _ if b.len() > TRACEPARENT_LEN && b[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    let mut trace = [0u8; 16];
    unhex(&b[3..35], &mut trace)?;
    let mut span = [0u8; 8];
    unhex(&b[36..52], &mut span)?;
    let mut flags = [0u8; 1];
    unhex(&b[53..55], &mut flags)?;
    let (trace, span) = (TraceId::from_bytes(trace), SpanId::from_bytes(span));
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    Some((trace, span, TraceFlags::new(flags[0]) & TraceFlags::SAMPLED))
}

/// The longest `tracestate` kept from a peer (W3C Trace Context: 512 characters); a
/// longer one is truncated as W3C suggests ([`truncate_tracestate`]).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// `tracestate` list-members longer than this are the first removed when it must be
/// truncated (W3C Trace Context, "Tracestate Limits": 128 characters).
pub const MAX_KEPT_MEMBER_BYTES: usize = 128;

/// `state` within [`MAX_TRACESTATE_BYTES`], as W3C Trace Context suggests a vendor
/// truncate it: list-members longer than [`MAX_KEPT_MEMBER_BYTES`] removed first (the
/// last first), then members from the end, until the rest fits. Empty members (and
/// the blanks around members) are not kept when it is cut. `None` when nothing is
/// left.
fn truncate_tracestate(state: &str) -> Option<std::borrow::Cow<'_, str>> {
    if state.len() <= MAX_TRACESTATE_BYTES {
        return Some(state.into());
    }
    let mut members: Vec<&str> = state
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    let len = |ms: &[&str]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len().saturating_sub(1);
    while len(&members) > MAX_TRACESTATE_BYTES {
        match members
            .iter()
            .rposition(|m| m.len() > MAX_KEPT_MEMBER_BYTES)
        {
            Some(i) => members.remove(i),
            None => members.pop()?,
        };
    }
    (!members.is_empty()).then(|| members.join(",").into())
}

/// A remote parent from a `traceparent` and an optional `tracestate`.
fn remote(traceparent: Option<&str>, tracestate: Option<&str>) -> Cx {
    let Some((trace, span, flags)) = traceparent.and_then(parse_traceparent) else {
        return Cx::default();
    };
    // W3C: printable ASCII, or dropped whole (the trace continues without it); at most
    // 512 characters (the SDK checks only 32 members of 256 bytes each), a longer one
    // truncated as W3C suggests, not carried whole in every span and `_meta` after.
    let state = tracestate
        .filter(|s| !s.trim().is_empty())
        .filter(|s| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)))
        .and_then(truncate_tracestate)
        .and_then(|s| TraceState::from_str(&s).ok())
        .unwrap_or_default();
    Cx::from_span_context(SpanContext::new(trace, span, flags, true, state))
}

/// Has `msg` carry the context of `cx` in `params._meta` when it is serialised
/// ([`crate::jsonrpc::Message::set_trace_context`]: `traceparent` set, `tracestate`
/// set or, when the context has none, removed; other keys kept). Nothing without a
/// valid span context.
pub fn inject_message(cx: &Cx, msg: &mut crate::jsonrpc::Message) {
    let sc = cx.span_context();
    if sc.is_valid() {
        msg.set_trace_context(&traceparent_text(sc), &sc.trace_state().header());
    }
}

/// Reads a remote parent from the message's `params._meta`
/// ([`crate::jsonrpc::Message::trace_context`]); an empty context when absent or
/// malformed.
pub fn extract_message(msg: &crate::jsonrpc::Message) -> Cx {
    match msg.trace_context() {
        Some((parent, state)) => remote(Some(parent), state),
        None => Cx::default(),
    }
}

/// The `traceparent`/`tracestate` headers for `cx` (none when it has no valid span).
pub fn headers_for(cx: &Cx) -> Vec<(String, String)> {
    let sc = cx.span_context();
    if !sc.is_valid() {
        return Vec::new();
    }
    let mut out = vec![("traceparent".to_string(), format_traceparent(sc))];
    let state = sc.trace_state().header();
    if !state.is_empty() {
        out.push(("tracestate".to_string(), state));
    }
    out
}

/// Reads a remote parent from headers, given a lookup by (lower-case) header name.
pub fn extract_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Cx {
    remote(get("traceparent"), get("tracestate"))
}

/// True when `cx` carries a valid span context (local or remote).
pub fn has_span(cx: &Cx) -> bool {
    cx.span_context().is_valid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use serde_json::{json, Value};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The context of a request whose `params._meta` is `meta`, read from the parsed
    /// text and from the same message built from values; both must agree.
    fn extract_meta(meta: Value) -> Cx {
        let v = json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"_meta": meta}});
        let parsed = crate::jsonrpc::Message::parse(v.to_string().as_bytes()).unwrap();
        let built = crate::jsonrpc::Message::from_value(v).unwrap();
        let (a, b) = (extract_message(&parsed), extract_message(&built));
        assert_eq!(a.span_context(), b.span_context());
        a
    }

    #[test]
    fn round_trips_through_meta_keeping_other_keys() {
        let meta = json!({"traceparent": TP, "tracestate": "", "progressToken": 3});
        let cx = extract_meta(meta);
        let sc = cx.span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let line = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"progressToken":3,"tracestate":"old=1"}}}"#;
        let mut msg = crate::jsonrpc::Message::parse(line.as_bytes()).unwrap();
        inject_message(&cx, &mut msg);
        let sent: Value = serde_json::from_str(&msg.to_json()).unwrap();
        let out = sent["params"]["_meta"].as_object().unwrap();
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
            assert!(
                !has_span(&extract_meta(json!({ "traceparent": bad }))),
                "{bad}"
            );
        }
        let none = crate::jsonrpc::Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
        assert!(!has_span(&extract_message(&none.unwrap())));
        assert!(!has_span(&extract_meta(json!({ "traceparent": 5 }))));
        assert!(!has_span(&extract_meta(json!({ "tracestate": "a=b" }))));
        assert!(!has_span(&extract_meta(json!(7))));
    }

    /// Our codec and the SDK's propagator agree on what is valid and what it means.
    /// (The SDK also takes ids of the wrong length and a trailing dash after a
    /// version-00 value, which W3C does not allow; those are checked separately.)
    #[test]
    fn agrees_with_the_sdk_propagator() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        use std::collections::HashMap;
        let cases = [
            TP,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-XYZxsf09",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-g1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "",
            "garbage",
        ];
        for tp in cases {
            for state in [None, Some("k=v,a=b"), Some("bad state"), Some("")] {
                let mut carrier = HashMap::new();
                carrier.insert("traceparent".to_string(), tp.to_string());
                if let Some(s) = state {
                    carrier.insert("tracestate".to_string(), s.to_string());
                }
                let sdk = TraceContextPropagator::new().extract(&carrier);
                let ours = extract_headers(|k| carrier.get(k).map(String::as_str));
                assert_eq!(
                    ours.span_context(),
                    sdk.span().span_context(),
                    "{tp:?} / {state:?}"
                );
                if sdk.span().span_context().is_valid() {
                    let mut written = HashMap::new();
                    TraceContextPropagator::new().inject_context(&sdk, &mut written);
                    let h: HashMap<String, String> = headers_for(&ours).into_iter().collect();
                    assert_eq!(h.get("traceparent"), written.get("traceparent"), "{tp:?}");
                    let sdk_state = written.get("tracestate").filter(|s| !s.is_empty());
                    assert_eq!(h.get("tracestate"), sdk_state, "{tp:?}");
                }
            }
        }
    }

    /// The table-driven `unhex` reads every pair of bytes as the plain digit match
    /// would, and a single bad digit anywhere in an id fails it.
    #[test]
    fn unhex_agrees_with_a_plain_digit_match() {
        fn digit(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let mut o = [0u8; 1];
                let ours = unhex(&[a, b], &mut o).map(|_| o[0]);
                let plain = digit(a).zip(digit(b)).map(|(h, l)| h << 4 | l);
                assert_eq!(ours, plain, "{a} {b}");
            }
        }
        let good = *b"4bf92f3577b34da6a3ce929d0e0e4736";
        for i in 0..good.len() {
            for c in 0..=255u8 {
                let mut text = good;
                text[i] = c;
                let mut o = [0u8; 16];
                let ok = unhex(&text, &mut o).is_some();
                assert_eq!(ok, digit(c).is_some(), "{c} at {i}");
            }
        }
    }

    #[test]
    fn fields_of_the_wrong_length_are_malformed() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_tracestate_that_is_not_printable_ascii_is_dropped_and_the_trace_kept() {
        let ok = "vendor=a,other=b";
        let cx = remote(Some(TP), Some(ok));
        assert_eq!(cx.span_context().trace_state().header(), ok);
        for bad in ["vendor=a\u{1b}[31m", "vendor=é"] {
            let cx = remote(Some(TP), Some(bad));
            assert!(cx.span_context().is_valid(), "the trace goes on: {bad:?}");
            assert_eq!(cx.span_context().trace_state().header(), "", "{bad:?}");
        }
    }

    /// W3C: a vendor may truncate a `tracestate` over 512 characters, removing members
    /// over 128 characters first, then members from the end. (It was dropped whole.)
    #[test]
    fn a_tracestate_over_512_characters_is_truncated_as_w3c_suggests() {
        let state = |s: &str| {
            remote(Some(TP), Some(s))
                .span_context()
                .trace_state()
                .header()
        };
        // The reviewer's case: 10 members of 59 characters (589 in all): the last two go.
        let members: Vec<String> = (0..10)
            .map(|i| format!("k{i}={}", "v".repeat(55)))
            .collect();
        let whole = members.join(",");
        assert_eq!(whole.len(), 589);
        assert_eq!(state(&whole), members[..8].join(","));
        // Members over 128 characters go first, the last of them first, wherever
        // they stand; blanks and empty members are not kept.
        let big = |k: &str| format!("{k}={}", "b".repeat(200));
        let text = format!(
            "{}, a=1 ,,{},{},{},z=9",
            big("x"),
            big("y"),
            members[0],
            big("w")
        );
        assert!(text.len() > MAX_TRACESTATE_BYTES);
        assert_eq!(
            state(&text),
            format!("{},a=1,{},{},z=9", big("x"), big("y"), members[0])
        );
        // Nothing over 128 and one member still too long: nothing is left.
        assert_eq!(truncate_tracestate(&"a".repeat(600)), None);
        // Within the bound it is taken as it is.
        let fits = members[..8].join(" , ");
        assert!(fits.len() <= MAX_TRACESTATE_BYTES);
        assert_eq!(truncate_tracestate(&fits).as_deref(), Some(fits.as_str()));
    }

    #[test]
    fn headers_round_trip() {
        let cx = extract_headers(|k| (k == "traceparent").then_some(TP));
        let h = headers_for(&cx);
        assert_eq!(h, vec![("traceparent".to_string(), TP.to_string())]);
        assert!(headers_for(&Cx::default()).is_empty());
    }
}
