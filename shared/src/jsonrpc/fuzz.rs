//! Differential fuzzing of [`Message::parse`] and the trace context it holds against
//! the path it replaced, `serde_json::from_slice::<Value>` with the maps edited
//! directly: random JSON-RPC-like texts (shuffled and repeated keys, `_meta` with trace
//! keys of every type, escapes, odd numbers, deep nesting, truncated and corrupted
//! bytes) must be accepted or rejected alike, relay to the same bytes, and read and
//! take a new trace context alike. Written over the text they came in as
//! ([`Message::to_json_over`]), unchanged they give that text, and with the gateway's
//! edits (id, `params.name`, trace context, in any combination) they read back as the
//! maps edited alike. 20,000 cases per test run; `FUZZ_N`, `FUZZ_SEED` and
//! `FUZZ_MUT` (the per cent of texts broken, default 8)
//! run others (`FUZZ_N=1000000 cargo test -p mcp-shared --lib differential_fuzz`).
//! [`Brief::parse`] is checked against [`Message::parse`] on the same kind of texts
//! and on response-like ones, and a response relayed as a [`Reply`] with a new id
//! against the parsed message given that id (`brief_reads_what_parse_reads`,
//! `FUZZ_N` too). [`Message::parse_relayed`] is checked against
//! [`Message::parse_owned`]: the same outcome, the same reads, and the same text sent,
//! unchanged and with each kind of change (`relayed_reads_and_sends_what_parse_owned_does`).

use super::*;
use serde_json::json;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// A setting of the fuzz runs from the environment (`FUZZ_N`, `FUZZ_SEED`, `FUZZ_MUT`),
/// or `default` when it is unset or does not parse.
fn from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ws(r: &mut Rng, out: &mut String) {
    if r.chance(10) {
        out.push_str(r.pick(&[" ", "\n", "\t", "\r", "  "]));
    }
}

fn gen_string_body(r: &mut Rng, out: &mut String) {
    let n = r.below(6);
    for _ in 0..n {
        out.push_str(r.pick(&[
            "a",
            "b",
            "-",
            "0",
            "f",
            "é",
            "𝄞",
            "\\n",
            "\\\"",
            "\\\\",
            "\\/",
            "\\u0041",
            "\\u00e9",
            "\\ud834\\udd1e",
            "\\u0000",
            "\\u001f",
            "\\b",
            "\\t",
            "=",
            ",",
            " ",
            "\u{7f}",
            "\u{2028}",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ]));
        if r.chance(1) {
            out.push_str(r.pick(&["\\ud800", "\\udc00", "\\x", "\u{1}", "\\u12"]));
        }
    }
}

fn gen_string(r: &mut Rng, out: &mut String) {
    out.push('"');
    gen_string_body(r, out);
    out.push('"');
}

fn gen_number(r: &mut Rng, out: &mut String) {
    out.push_str(r.pick(&[
        "0",
        "-0",
        "1",
        "-1",
        "1.5",
        "-0.0",
        "1e400",
        "-1e400",
        "1e-400",
        "1E5",
        "0.1e1",
        "2.5e+3",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "3.141592653589793238462643",
        "1e308",
        "5e-324",
        "0.30000000000000004",
        "1.0",
    ]));
    if r.chance(1) {
        out.push_str(r.pick(&["01", "-", "1.", ".5", "+1", "1e", "NaN", "Infinity"]));
    }
}

fn gen_scalar(r: &mut Rng, out: &mut String) {
    match r.below(6) {
        0 => gen_string(r, out),
        1 => gen_number(r, out),
        2 => out.push_str("null"),
        3 => out.push_str(r.pick(&["true", "false"])),
        4 => out.push_str("[]"),
        _ => out.push_str("{}"),
    }
}

fn gen_value(r: &mut Rng, out: &mut String, depth: usize) {
    if depth == 0 || r.chance(60) {
        return gen_scalar(r, out);
    }
    if r.chance(50) {
        out.push('[');
        let n = r.below(4);
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            ws(r, out);
            gen_value(r, out, depth - 1);
            ws(r, out);
        }
        out.push(']');
    } else {
        gen_object(
            r,
            out,
            depth - 1,
            &["a", "b", "traceparent", "tracestate", "_meta", "params"],
            &mut |r, out, _k, d| gen_value(r, out, d),
        );
    }
}

type ValGen<'a> = dyn FnMut(&mut Rng, &mut String, &str, usize) + 'a;

fn gen_object(r: &mut Rng, out: &mut String, depth: usize, keys: &[&str], val: &mut ValGen) {
    out.push('{');
    ws(r, out);
    let n = r.below(7);
    for i in 0..n {
        if i > 0 {
            out.push(',');
            ws(r, out);
        }
        let k = if r.chance(85) {
            r.pick(keys).to_string()
        } else {
            let mut s = String::new();
            gen_string_body(r, &mut s);
            s
        };
        out.push('"');
        // sometimes escape a letter of the key
        if r.chance(5) && !k.is_empty() && k.is_ascii() {
            let i = r.below(k.len());
            out.push_str(&k[..i]);
            out.push_str(&format!("\\u{:04x}", k.as_bytes()[i]));
            out.push_str(&k[i + 1..]);
        } else {
            out.push_str(&k);
        }
        out.push('"');
        ws(r, out);
        out.push(':');
        ws(r, out);
        val(r, out, &k, depth);
        ws(r, out);
    }
    out.push('}');
}

fn gen_meta(r: &mut Rng, out: &mut String) {
    if r.chance(10) {
        return gen_value(r, out, 2);
    }
    gen_object(
        r,
        out,
        2,
        &[
            "traceparent",
            "traceparent",
            "tracestate",
            "tracestate",
            "progressToken",
            "a",
            "b",
        ],
        &mut |r, out, k, d| {
            if (k == "traceparent" || k == "tracestate") && r.chance(70) {
                gen_string(r, out)
            } else {
                gen_value(r, out, d)
            }
        },
    );
}

fn gen_params(r: &mut Rng, out: &mut String) {
    match r.below(20) {
        0 => return gen_value(r, out, 2),
        1 => {
            out.push('[');
            gen_meta_obj_wrapped(r, out);
            out.push(']');
            return;
        }
        2 => {
            // Many keys (more than a lean parse keeps without allocating), some spelt
            // with an escape, some given twice.
            let n = 6 + r.below(14);
            let parts: Vec<String> = (0..n)
                .map(|_| {
                    let k = r.below(24);
                    let key = if r.chance(10) {
                        format!("\\u006b{k}")
                    } else {
                        format!("k{k}")
                    };
                    let mut v = String::new();
                    gen_value(r, &mut v, 1);
                    format!("\"{key}\":{v}")
                })
                .collect();
            shuffled_object(r, parts, out);
            return;
        }
        _ => {}
    }
    gen_object(
        r,
        out,
        2,
        &["_meta", "_meta", "name", "arguments", "cursor", "uri", "x"],
        &mut |r, out, k, d| {
            if k == "_meta" {
                gen_meta(r, out)
            } else {
                gen_value(r, out, d)
            }
        },
    );
}

fn gen_meta_obj_wrapped(r: &mut Rng, out: &mut String) {
    out.push_str("{\"_meta\":");
    gen_meta(r, out);
    out.push('}');
}

fn gen_message(r: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    ws(r, &mut out);
    if r.chance(2) {
        gen_value(r, &mut out, 3);
    } else if r.chance(75) {
        // A plausible message: required fields plus extras, shuffled, repeats allowed.
        let mut parts: Vec<String> = vec!["\"jsonrpc\":\"2.0\"".into(), "\"method\":\"m\"".into()];
        if r.chance(70) {
            parts.push(format!(
                "\"id\":{}",
                r.pick(&["1", "\"a\"", "-0", "1.5", "18446744073709551616"])
            ));
        }
        let np = 1 + r.below(3);
        for _ in 0..np {
            let mut s = String::from("\"params\":");
            ws(r, &mut s);
            gen_params(r, &mut s);
            parts.push(s);
        }
        for _ in 0..r.below(3) {
            let mut s = String::from("\"x\":");
            gen_value(r, &mut s, 2);
            parts.push(s);
        }
        shuffled_object(r, parts, &mut out);
    } else {
        gen_object(
            r,
            &mut out,
            3,
            &[
                "jsonrpc", "id", "method", "params", "params", "result", "error", "z",
            ],
            &mut |r, out, k, d| match k {
                "jsonrpc" => out.push_str(if r.chance(95) { "\"2.0\"" } else { "\"1.0\"" }),
                "id" => {
                    if r.chance(80) {
                        out.push_str(r.pick(&["1", "\"a\"", "-0", "1.5"]))
                    } else {
                        gen_value(r, out, 1)
                    }
                }
                "method" => {
                    if r.chance(95) {
                        out.push_str("\"m\"")
                    } else {
                        gen_value(r, out, 1)
                    }
                }
                "params" => gen_params(r, out),
                _ => gen_value(r, out, d),
            },
        );
    }
    ws(r, &mut out);
    mutate(r, out.into_bytes())
}

/// An object of `parts` (`"key":value` texts) in a random order.
fn shuffled_object(r: &mut Rng, mut parts: Vec<String>, out: &mut String) {
    for i in (1..parts.len()).rev() {
        let j = r.below(i + 1);
        parts.swap(i, j);
    }
    out.push('{');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        ws(r, out);
        out.push_str(p);
    }
    out.push('}');
}

/// Breaks a few texts (see below).
fn mutate(r: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    // Break a few (8 % unless FUZZ_MUT says otherwise): truncated, a byte changed,
    // inserted or removed, trailing garbage, invalid UTF-8, or nesting at serde_json's
    // recursion limit.
    let mut_pct: usize = from_env("FUZZ_MUT", 8);
    if r.chance(mut_pct) {
        match r.below(7) {
            0 => {
                let n = r.below(b.len() + 1);
                b.truncate(n);
            }
            1 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] = (r.next() & 0xff) as u8;
            }
            2 => {
                let i = r.below(b.len() + 1);
                let c = *[0xffu8, 0xc3, 0x80, 0xe2, b'"', b'\\', b',', b'}', 0, b' ']
                    .get(r.below(10))
                    .unwrap();
                b.insert(i, c);
            }
            3 if !b.is_empty() => {
                let i = r.below(b.len());
                b.remove(i);
            }
            4 => b.extend_from_slice(
                r.pick(&[" x", "}", " ", "\n", "\u{0}", "{}", "\u{ff}"])
                    .as_bytes(),
            ),
            5 => {
                b.push(0xff);
            }
            _ => {
                let d = 120 + r.below(20);
                let s = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":{{\"_meta\":{{\"traceparent\":\"x\",\"a\":{}{}}}}}}}", "[".repeat(d), "]".repeat(d));
                b = s.into_bytes();
            }
        }
    }
    b
}

fn old_parse(bytes: &[u8]) -> Result<(Message, Value), Rejection> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(Rejection::unreadable(
            bytes,
            codes::PARSE_ERROR,
            "parse error: message is not valid UTF-8",
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Rejection::unreadable(bytes, codes::PARSE_ERROR, format!("parse error: {e}"))
    })?;
    Ok((Message::from_value(value.clone())?, value))
}

/// The message `v` as the bridge wrote it before the one-pass parser: `tp` set in
/// `params._meta` by editing the `serde_json` maps, `state` set there or, when empty,
/// removed (`params` created when absent; positional params have no room for it).
pub(super) fn maps_with(v: &Value, tp: &str, state: &str) -> Value {
    let mut v = v.clone();
    if let Some(p) = v.as_object_mut().unwrap().get_mut("params") {
        if let Some(p) = p.as_object_mut() {
            let meta = p.entry("_meta").or_insert_with(|| json!({}));
            if !meta.is_object() {
                *meta = json!({});
            }
            let meta = meta.as_object_mut().unwrap();
            meta.insert("traceparent".into(), tp.into());
            if state.is_empty() {
                meta.shift_remove("tracestate");
            } else {
                meta.insert("tracestate".into(), state.into());
            }
        }
    } else {
        v["params"] = json!({"_meta": {"traceparent": tp}});
        if !state.is_empty() {
            v["params"]["_meta"]["tracestate"] = state.into();
        }
    }
    v
}

fn want_trace(v: &Value) -> Option<(&str, Option<&str>)> {
    let meta = v.get("params")?.get("_meta")?.as_object()?;
    let p = meta.get("traceparent")?.as_str()?;
    Some((p, meta.get("tracestate").and_then(Value::as_str)))
}

/// `m` reads the trace context and gives the copy of `_meta` that `v`, the maps'
/// version of it, holds; `what` names the check in the message.
fn reads_like(m: &Message, v: &Value, what: &str, show: &str) -> Result<(), String> {
    let want = want_trace(v);
    if m.trace_context() != want {
        let got = m.trace_context();
        return Err(format!(
            "{what}TRACE_CONTEXT {show}\n got  {got:?}\n want {want:?}"
        ));
    }
    let want = v
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
        .cloned();
    let got = m.meta_with_trace();
    if serde_json::to_string(&got).unwrap() != serde_json::to_string(&want).unwrap() {
        return Err(format!(
            "{what}META_WITH_TRACE {show}\n got  {got:?}\n want {want:?}"
        ));
    }
    Ok(())
}

/// Whether the object in `bytes` has a key twice in itself, in its `params` or in
/// `params._meta`: read with serde's visitor API apart from the parser under test.
fn has_repeated_keys(bytes: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    /// 0: the message, 1: `params`, 2: `_meta`.
    struct Dups<'a>(u8, &'a mut bool);
    impl<'de> DeserializeSeed<'de> for Dups<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Dups<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                let inner = match (self.0, k.as_str()) {
                    (0, "params") => Some(1),
                    (1, "_meta") => Some(2),
                    _ => None,
                };
                match inner {
                    Some(level) => map.next_value_seed(Dups(level, &mut *self.1))?,
                    None => map.next_value::<IgnoredAny>().map(drop)?,
                }
                if !seen.insert(k) {
                    *self.1 = true;
                }
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut found = false;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Dups(0, &mut found)
        .deserialize(&mut de)
        .expect("an accepted text");
    found
}

/// Returns a description of the first mismatch.
/// `Ok((accepted, times the context was inserted into the text))`.
fn check(bytes: &[u8], r: &mut Rng) -> Result<(bool, usize), String> {
    let show = String::from_utf8_lossy(bytes).into_owned();
    let old = old_parse(bytes);
    // Kept, so that `to_text` writes over the text from where the parse met the keys,
    // checked below against `to_json_over`, which scans the text for them.
    let new = Message::parse_owned(bytes.to_vec());
    let (old, v) = match (old, new) {
        (Err(a), Err(b)) => {
            return if a == b {
                Ok((false, 0))
            } else {
                Err(format!("REJECTION DIFFERS {show}\n old {a:?}\n new {b:?}"))
            };
        }
        (Ok(_), Err(b)) => return Err(format!("NEW REJECTS {show}: {b:?}")),
        (Err(a), Ok(_)) => return Err(format!("NEW ACCEPTS {show}: old {a:?}")),
        (Ok((o, v)), Ok(n)) => {
            if o.kind() != n.kind() {
                return Err(format!("KIND {show}"));
            }
            if o.id() != n.id() {
                return Err(format!("ID {show}"));
            }
            ((o, n), v)
        }
    };
    let (_o, n) = old;
    let want = serde_json::to_string(&v).unwrap();
    let got = n.to_json();
    if got != want {
        return Err(format!("RELAY {show}\n got  {got}\n want {want}"));
    }
    reads_like(&n, &v, "", &show)?;
    // Unchanged, it relays as the very text it came in, unless that has a key twice
    // where the bridge reads keys (then as the maps have it).
    let repeated = has_repeated_keys(bytes);
    let over = n.to_json_over(bytes);
    if n.to_text() != over {
        return Err(format!(
            "KEYS (unchanged) {show}\n keys {}\n scan {over}",
            n.to_text()
        ));
    }
    let want_over = if repeated { got.as_bytes() } else { bytes };
    if over.as_bytes() != want_over {
        return Err(format!(
            "OVER (repeated keys: {repeated}) {show}\n got  {over}"
        ));
    }
    // A new context, set twice: written and read as the maps would have it.
    let positional = matches!(v.get("params"), Some(p) if !p.is_object());
    let tps = [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x\"y\u{1}é",
        "",
    ];
    let tss = ["", "k=v", "a\\b\u{2028}"];
    let mut m = n.clone();
    let mut spliced = 0;
    for round in 0..2 {
        let tp = tps[r.below(tps.len())];
        let ts = tss[r.below(tss.len())];
        m.set_trace_context(tp, ts);
        // The maps' version, kept as a value: read back from text, a long float could
        // come back different (serde_json without float_roundtrip).
        let rv = if positional {
            v.clone()
        } else {
            maps_with(&v, tp, ts)
        };
        let want = serde_json::to_string(&rv).unwrap();
        let got = m.to_json();
        if got != want {
            return Err(format!(
                "SET(round {round}, {tp:?}, {ts:?}) {show}\n got  {got}\n want {want}"
            ));
        }
        // What is read back: the context set (positional: none, as nothing is sent).
        if !positional {
            reads_like(&m, &rv, "SET ", &show)?;
        }
        // Over the text it came in: `to_json` itself, or the text with the context
        // inserted, which reads back as the maps' version (numbers as spelt in the text,
        // so compared as read from it, not as `to_json` writes them).
        let over = m.to_json_over(bytes);
        if m.to_text() != over {
            return Err(format!(
                "KEYS (set) {show}\n keys {}\n scan {over}",
                m.to_text()
            ));
        }
        if over != got && repeated {
            return Err(format!("SPLICED WITH REPEATED KEYS {show}\n got  {over}"));
        }
        if over != got {
            match serde_json::from_str::<Value>(&over) {
                Ok(back) if back == rv => spliced += 1,
                _ => {
                    return Err(format!(
                        "SPLICE(round {round}, {tp:?}, {ts:?}) {show}\n got  {over}\n want {want}"
                    ))
                }
            }
        }
    }
    // The gateway's edits in any combination: a new id, a new `params.name`, a trace
    // context. Over the text, they read back as the maps' version of the same edits.
    let mut m = n.clone();
    let mut rv = v.clone();
    let ids = [json!(7), json!("b\"é"), json!(18446744073709551615u64)];
    if r.chance(50) && m.id().is_some() {
        let id = ids[r.below(ids.len())].clone();
        m.set_id(&Id::from_value(&id).unwrap());
        rv["id"] = id;
    }
    if r.chance(50) {
        let name = r.pick(&["echo", "a\\b\"c", "", "日本"]);
        m.set_param_name(name);
        match rv.get_mut("params").and_then(Value::as_object_mut) {
            Some(p) => {
                p.insert("name".into(), name.into());
            }
            None => rv["params"] = json!({ "name": name }),
        }
    }
    if r.chance(50) {
        let tp = tps[r.below(tps.len())];
        let ts = tss[r.below(tss.len())];
        m.set_trace_context(tp, ts);
        if rv["params"].is_object() || rv.get("params").is_none() {
            rv = maps_with(&rv, tp, ts);
        }
    }
    let got = m.to_json_over(bytes);
    if m.to_text() != got {
        return Err(format!(
            "KEYS (edits) {show}\n keys {}\n scan {got}",
            m.to_text()
        ));
    }
    // For a line-framed stream, from the kept text: the same, on one line.
    let line = m.to_text_bytes();
    let want_line = if is_one_line(bytes) {
        got.as_bytes().to_vec()
    } else {
        m.to_json_bytes()
    };
    if line != want_line {
        return Err(format!(
            "LINE {show}\n got  {}\n want {}",
            String::from_utf8_lossy(&line),
            String::from_utf8_lossy(&want_line)
        ));
    }
    if got != m.to_json() && repeated {
        return Err(format!("SPLICED WITH REPEATED KEYS {show}\n got  {got}"));
    }
    if got != m.to_json() {
        match serde_json::from_str::<Value>(&got) {
            Ok(back) if back == rv => spliced += 1,
            _ => {
                return Err(format!(
                    "EDITS {show}\n got  {got}\n want {}",
                    serde_json::to_string(&rv).unwrap()
                ))
            }
        }
    }
    Ok((true, spliced))
}

#[test]
fn differential_fuzz() {
    let n: usize = from_env("FUZZ_N", 20_000);
    let seed: u64 = from_env("FUZZ_SEED", 0x9e3779b97f4a7c15);
    let mut r = Rng(seed);
    let (mut accepted, mut spliced, mut fails) = (0usize, 0usize, Vec::new());
    for _ in 0..n {
        let b = gen_message(&mut r);
        // Line breaks keep a text from being written over (it is written anew), so the
        // same text with spaces instead is checked too.
        let spaced: Vec<u8> = b
            .iter()
            .map(|&c| if c == b'\n' || c == b'\r' { b' ' } else { c })
            .collect();
        let texts = if spaced == b {
            vec![b]
        } else {
            vec![b, spaced]
        };
        for b in texts {
            match check(&b, &mut r) {
                Ok((a, s)) => {
                    accepted += a as usize;
                    spliced += s;
                }
                Err(e) => {
                    if fails.len() < 2000 {
                        fails.push((b.len(), e));
                    }
                }
            }
        }
    }
    let total = fails.len();
    // Shortest failing inputs per category first.
    fails.sort();
    let mut seen = std::collections::HashSet::new();
    for (_, f) in &fails {
        let cat = f.split_whitespace().next().unwrap().to_string();
        if seen.insert(cat) {
            eprintln!("{f}\n");
        }
    }
    eprintln!("cases {n}, accepted {accepted}, context inserted {spliced}, failures {total}");
    assert!(fails.is_empty());
    // The insertion path ran, not only the fallback to `to_json`.
    assert!(spliced * 20 > accepted, "{spliced} insertions");
}

/// The scanner's word-at-a-time search for the end of a string agrees with a byte loop,
/// on bytes chosen to trip a word test: the two it looks for, their neighbours, the same
/// with the high bit set (`0xa2`, `0xdc` differ from them in one bit), zero and 0xff.
#[test]
fn quote_or_backslash_agrees_with_a_byte_loop() {
    let bytes = [
        b'"', b'\\', b'!', b'#', b'[', b']', 0xa2, 0xdc, 0x00, 0x01, 0x7f, 0x80, 0xff, b'a',
    ];
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut found = 0;
    for _ in 0..200_000 {
        let len = r.below(40);
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                if r.chance(90) {
                    bytes[r.below(bytes.len() - 2) + 2]
                } else {
                    bytes[r.below(2)]
                }
            })
            .collect();
        if r.chance(20) {
            b.iter_mut().for_each(|c| *c = b'a' ^ (*c & 1));
        }
        let want = b.iter().position(|&c| c == b'"' || c == b'\\');
        found += usize::from(want.is_some());
        assert_eq!(super::quote_or_backslash(&b), want, "{b:?}");
    }
    // Both outcomes were exercised.
    assert!(found > 50_000 && found < 190_000, "{found}");
}

/// A response-like text: `result` with `isError` of every type (repeated too),
/// `error` objects and non-objects, odd ids, a missing or wrong `jsonrpc`, shuffled.
fn gen_response(r: &mut Rng) -> Vec<u8> {
    let mut parts: Vec<String> = Vec::new();
    if r.chance(95) {
        let v = if r.chance(90) {
            "\"2.0\""
        } else {
            r.pick(&["\"1.0\"", "2", "\"2.\\u0030\""])
        };
        parts.push(format!("\"jsonrpc\":{v}"));
    }
    if r.chance(95) {
        let id = if r.chance(90) {
            r.pick(&[
                "1",
                "\"a\"",
                "-0",
                "1.5",
                "\"\\u0041\"",
                "18446744073709551616",
            ])
        } else {
            r.pick(&["null", "{}", "[1]", "true"])
        };
        // The key spelt with an escape now and then (a relay that writes over the
        // text must not miss it), and given twice.
        let key = if r.chance(5) { "\\u0069d" } else { "id" };
        parts.push(format!("\"{key}\":{id}"));
        if r.chance(5) {
            parts.push(format!("\"id\":{}", r.pick(&["2", "\"b\""])));
        }
    }
    let results = if r.chance(80) { 1 + r.below(2) } else { 0 };
    for _ in 0..results {
        let mut s = String::from("{\"content\":[{\"type\":\"text\",\"text\":");
        gen_string(r, &mut s);
        s.push_str("}]");
        for _ in 0..r.below(3) {
            let v = r.pick(&["true", "false", "\"true\"", "null", "1", "{\"a\":true}"]);
            s.push_str(&format!(",\"isError\":{v}"));
        }
        if r.chance(30) {
            s.push_str(",\"x\":");
            gen_value(r, &mut s, 3);
        }
        s.push('}');
        let result = if r.chance(90) {
            s
        } else {
            let mut v = String::new();
            gen_value(r, &mut v, 2);
            v
        };
        parts.push(format!("\"result\":{result}"));
    }
    if r.chance(if results == 0 { 70 } else { 20 }) {
        let e = r.pick(&[
            "{\"code\":-32000,\"message\":\"m\"}",
            "{\"code\":\"x\"}",
            "{}",
            "\"e\"",
            "null",
        ]);
        parts.push(format!("\"error\":{e}"));
    }
    if r.chance(10) {
        parts.push("\"method\":\"m\"".into());
    }
    for _ in 0..r.below(2) {
        let mut s = format!("\"{}\":", r.pick(&["z", "isError", "params", "_meta"]));
        gen_value(r, &mut s, 3);
        parts.push(s);
    }
    let mut out = String::new();
    ws(r, &mut out);
    shuffled_object(r, parts, &mut out);
    ws(r, &mut out);
    mutate(r, out.into_bytes())
}

/// Whether one of the keys a [`Brief`] reads is given twice in the object of `bytes`
/// (an accepted text), as serde's visitor API reads the keys.
fn repeats_a_read_key(bytes: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut repeated = false;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                let read = ["jsonrpc", "id", "method", "params", "result", "error"];
                repeated |= read.contains(&k.as_str()) && !seen.insert(k);
            }
            Ok(repeated)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(Keys).expect("an accepted text")
}

/// [`Brief::parse`] accepts and rejects what [`Message::parse`] does, with the same
/// rejection, and reads the same kind, id, `error` and `result.isError`; it tells a
/// read key given twice. A response relayed as a [`Reply`] with a new id reads back
/// as the parsed message given that id.
#[test]
fn brief_reads_what_parse_reads() {
    let n: usize = from_env("FUZZ_N", 20_000);
    let mut r = Rng(0x2545_f491_4f6c_dd1d);
    let (mut responses, mut errors, mut tool_errors, mut rejected) = (0, 0, 0, 0);
    let (mut repeated, mut kept_texts) = (0, 0);
    for i in 0..n {
        let b = if i % 2 == 0 {
            gen_response(&mut r)
        } else {
            gen_message(&mut r)
        };
        let show = String::from_utf8_lossy(&b).into_owned();
        match (Message::parse(&b), Brief::parse(&b)) {
            (Err(want), Err(got)) => {
                assert_eq!(got, want, "{show}");
                rejected += 1;
            }
            (Ok(m), Ok(got)) => {
                assert_eq!(got.kind(), m.kind(), "{show}");
                assert_eq!(got.id(), m.id().as_ref(), "{show}");
                let (error, tool_error) = if m.kind() == Kind::Response {
                    let tool_error = m
                        .result()
                        .and_then(|r| lookup(r, "isError"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    (m.error(), tool_error)
                } else {
                    (None, false)
                };
                assert_eq!(got.error(), error, "{show}");
                assert_eq!(got.is_tool_error(), tool_error, "{show}");
                assert_eq!(got.has_repeated_key(), repeats_a_read_key(&b), "{show}");
                repeated += usize::from(got.has_repeated_key());
                if m.kind() == Kind::Response {
                    let new_id = if r.chance(50) {
                        Id::from(r.next() >> 20)
                    } else {
                        Id::String(r.pick(&["c", "q\"\\é", "\u{1}"]).to_string())
                    };
                    let kept = !got.has_repeated_key();
                    let mut reply = Reply::read(got, b.clone(), false);
                    assert_eq!(matches!(reply, Reply::Brief { .. }), kept, "{show}");
                    reply.set_id(&new_id);
                    let kept = matches!(reply, Reply::Brief { .. });
                    kept_texts += usize::from(kept);
                    let text = reply.into_text();
                    let mut want = m.clone();
                    want.set_id(&new_id);
                    if kept {
                        let back = Message::parse(text.as_bytes())
                            .unwrap_or_else(|e| panic!("{show}\n relayed {text}\n {e:?}"));
                        assert_eq!(back, want, "{show}\n relayed {text}");
                    } else {
                        // Written anew (a float may not read back as the same `f64`).
                        assert_eq!(text, want.to_text(), "{show}");
                    }
                }
                responses += usize::from(m.kind() == Kind::Response);
                errors += usize::from(error.is_some());
                tool_errors += usize::from(tool_error);
            }
            (want, got) => panic!("{show}\n parse {want:?}\n brief {got:?}"),
        }
    }
    eprintln!(
        "{n} texts: {responses} responses ({errors} errors, {tool_errors} isError, \
         {kept_texts} relayed over their text), {repeated} with a read key twice, \
         {rejected} rejected"
    );
    // Every outcome was exercised.
    assert!(responses * 8 > n && errors * 100 > n && tool_errors * 100 > n && rejected * 10 > n);
    assert!(repeated * 100 > n && kept_texts * 10 > n && kept_texts < responses);
}

/// [`Message::parse_relayed`] accepts and rejects what [`Message::parse_owned`] does,
/// reads alike what a relay reads, becomes the same message through
/// [`Message::whole`], sees the same keys given twice, and sends the same text,
/// unchanged and with an id, a `params.name`, a trace context or a map-level change.
#[test]
fn relayed_reads_and_sends_what_parse_owned_does() {
    let n: usize = from_env("FUZZ_N", 20_000);
    let mut r = Rng(from_env("FUZZ_SEED", 0x9e37_79b9_7f4a_7c15));
    let (mut accepted, mut lean_params, mut repeats, mut changed) = (0, 0, 0, 0);
    let value = |t: &[u8], show: &str| -> Value {
        serde_json::from_slice(t).unwrap_or_else(|e| panic!("{show}\n sent {t:?}: {e}"))
    };
    for i in 0..n {
        let b = if i % 4 == 0 {
            gen_response(&mut r)
        } else {
            gen_message(&mut r)
        };
        let show = String::from_utf8_lossy(&b).into_owned();
        let (mut whole, mut lean) = match (
            Message::parse_owned(b.clone()),
            Message::parse_relayed(b.clone()),
        ) {
            (Err(want), Err(got)) => {
                assert_eq!(got, want, "{show}");
                continue;
            }
            (Ok(w), Ok(l)) => (w, l),
            (want, got) => panic!("{show}\n parse_owned {want:?}\n parse_relayed {got:?}"),
        };
        accepted += 1;
        assert!(lean.is_lean() && !whole.is_lean());
        assert_eq!(lean.kind(), whole.kind(), "{show}");
        assert_eq!(lean.id(), whole.id(), "{show}");
        assert_eq!(lean.method(), whole.method(), "{show}");
        for key in ["name", "uri"] {
            assert_eq!(lean.param_str(key), whole.param_str(key), "{show}");
        }
        assert_eq!(lean.meta(), whole.meta(), "{show}");
        assert_eq!(lean.trace_context(), whole.trace_context(), "{show}");
        assert_eq!(lean.result(), whole.result(), "{show}");
        assert_eq!(lean.error(), whole.error(), "{show}");
        lean_params += usize::from(lean.params() != whole.params());
        assert_eq!(lean.whole(), whole, "{show}");
        assert!(!lean.whole().is_lean());
        let whole_repeats = matches!(whole.source, Source::Text { repeated: true, .. });
        let lean_repeats = matches!(lean.source, Source::Text { repeated: true, .. });
        assert_eq!(lean_repeats, whole_repeats, "{show}");
        repeats += usize::from(whole_repeats);
        let check = |lean: &Message, whole: &Message, when: &str| {
            let (lt, wt) = (lean.to_text().into_bytes(), whole.to_text().into_bytes());
            let (lb, wb) = (lean.to_text_bytes(), whole.to_text_bytes());
            assert_eq!(lean.to_json(), whole.to_json(), "{show}\n {when}");
            assert_eq!(lt, wt, "{show}\n {when}");
            assert_eq!(lb, wb, "{show}\n {when}");
            value(&lt, &show);
            lt != b
        };
        check(&lean, &whole, "unchanged");
        // Changed alike.
        if r.chance(50) {
            let id = Id::from(r.next() >> 20);
            lean.set_id(&id);
            whole.set_id(&id);
        }
        if r.chance(40) {
            let name = r.pick(&["ns.tool", "q\"\\é", ""]);
            lean.set_param_name(name);
            whole.set_param_name(name);
        }
        if r.chance(60) {
            let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let state = r.pick(&["", "k=v"]);
            lean.set_trace_context(parent, state);
            whole.set_trace_context(parent, state);
        }
        if r.chance(10) {
            lean.meta_mut().insert("progressToken".into(), json!(3));
            whole.meta_mut().insert("progressToken".into(), json!(3));
            assert!(!lean.is_lean(), "{show}");
        }
        changed += usize::from(check(&lean, &whole, "changed"));
        assert_eq!(lean.whole(), whole, "{show}\n after the changes");
    }
    eprintln!(
        "{n} texts: {accepted} accepted, {lean_params} with params partly built, \
         {repeats} with a read key twice, {changed} sent changed"
    );
    assert!(accepted * 3 > n && lean_params * 10 > n && repeats * 50 > n);
    assert!(changed * 3 > accepted && changed < accepted);
}

/// `key` as a JSON string, each character written as a `\uXXXX` escape (upper or lower
/// case hex) now and then.
fn spelt_key(r: &mut Rng, key: &str) -> String {
    let mut out = String::from("\"");
    for c in key.chars() {
        match r.below(6) {
            0 => out.push_str(&format!("\\u{:04x}", c as u32)),
            1 => out.push_str(&format!("\\u{:04X}", c as u32)),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The sniffer that reads an unparseable or over-long message finds what the parser
/// finds in a well-formed one: its id, and whether it is a response or a notification,
/// with top-level keys spelt with escapes, values that look like keys, and the text fed
/// in pieces cut anywhere (inside an escape too), as the router's line reader does.
#[test]
fn sniff_reads_what_parse_reads() {
    let n: usize = from_env("FUZZ_N", 20_000);
    let mut r = Rng(from_env("FUZZ_SEED", 0x5eed_5eed_5eed_5eed));
    let mut checked = [0usize; 3];
    for _ in 0..n {
        let mut parts = Vec::new();
        for (key, values) in [
            (
                "id",
                &["7", "\"a\"", "-0", "1.5", "\"\\u0041\"", "null"][..],
            ),
            ("method", &["\"tools/call\"", "\"notifications/x\""][..]),
            ("result", &["{}", "{\"id\":1}", "[]"][..]),
            ("error", &["{\"code\":-1,\"message\":\"m\"}"][..]),
            ("params", &["{\"id\":9,\"method\":\"m\"}", "[\"id\"]"][..]),
            ("jsonrpc", &["\"2.0\""][..]),
            ("x\\\"id", &["\"id\""][..]),
        ] {
            if r.chance(if key == "jsonrpc" { 95 } else { 45 }) {
                parts.push(format!("{}:{}", spelt_key(&mut r, key), r.pick(values)));
            }
        }
        let mut text = String::new();
        shuffled_object(&mut r, parts, &mut text);
        let bytes = text.as_bytes();
        let Ok(msg) = Message::parse(bytes) else {
            continue;
        };
        let mut s = Sniffer::new();
        let mut at = 0;
        while at < bytes.len() {
            let step = 1 + r.below(8);
            let end = (at + step).min(bytes.len());
            s.feed(&bytes[at..end]);
            at = end;
        }
        let seen = s.finish();
        assert_eq!(seen.id, msg.id(), "{text}");
        assert_eq!(seen.response, msg.kind() == Kind::Response, "{text}");
        assert_eq!(
            seen.notification,
            msg.kind() == Kind::Notification,
            "{text}"
        );
        checked[msg.kind() as usize] += 1;
    }
    eprintln!("requests, notifications, responses: {checked:?}");
    assert!(checked.iter().all(|&c| c * 50 > n), "{checked:?}");
}
