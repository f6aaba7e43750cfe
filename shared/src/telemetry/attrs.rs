//! Span attribute helpers: the distributed tracing guide's keys (WebSocket, MCP
//! message, connection pool, rate limit, authentication, gateway route) and the
//! OpenTelemetry MCP semantic conventions. Nothing here may carry a token, an
//! Authorization header or tool arguments.
//!
//! Each helper writes into an [`Attrs`] (a recording span's encoding, or a list of
//! `KeyValue`s), borrowing from the message: no attribute is built as a value first.

use super::Attrs;
use crate::jsonrpc::{Id, Kind, Message};

/// Longest string value (attribute, event attribute, status message) a span keeps for
/// export, in bytes: the OTLP encoder (`encode`) and the stdout exporter (`stdout`)
/// both cut longer ones with [`cut`], so a queued span has a bounded size whatever a
/// peer put in a tool name or an error message.
pub const MAX_VALUE_BYTES: usize = 4096;

/// `s`, cut to at most [`MAX_VALUE_BYTES`] at a character boundary.
#[inline(always)]
pub(crate) fn cut(s: &str) -> &str {
    if s.len() <= MAX_VALUE_BYTES {
        return s;
    }
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// WebSocket connection attributes (guide: `WebSocketSpanAttributes`).
pub fn websocket(
    a: &mut Attrs,
    peer_ip: &str,
    host: &str,
    target: &str,
    user_agent: Option<&str>,
    protocol: Option<&str>,
) {
    a.str("net.transport", "ip_tcp");
    a.str("net.peer.ip", peer_ip);
    a.str("http.method", "GET");
    a.str("http.target", target);
    a.str("http.host", host);
    a.str("network.transport", "tcp");
    if let Some(ua) = user_agent {
        a.str("http.user_agent", ua);
    }
    if let Some(p) = protocol {
        a.str("websocket.protocol", p);
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Request => "request",
        Kind::Notification => "notification",
        Kind::Response => "response",
    }
}

/// MCP message attributes: the guide's (`mcp.message.type`, `mcp.method`,
/// `mcp.message.id`) and the semantic conventions' (`mcp.method.name`,
/// `jsonrpc.request.id`, `gen_ai.tool.name`,
/// `gen_ai.prompt.name`, `gen_ai.operation.name`, `mcp.resource.uri`).
pub fn mcp_message(a: &mut Attrs, msg: &Message) {
    mcp_message_without_id(a, msg);
    if let Some(id) = msg.id() {
        request_id(a, &id);
    }
}

/// The request id attributes (`mcp.message.id`, `jsonrpc.request.id`): for a span
/// that learns the id it sent only after it started ([`mcp_message_without_id`]).
pub fn request_id(a: &mut Attrs, id: &Id) {
    id_attrs(a, id, &["mcp.message.id", "jsonrpc.request.id"]);
}

/// [`mcp_message`] but the id: for a message whose id on the wire is not yet known
/// (the gateway gives each request to a backend an id of its own).
pub fn mcp_message_without_id(a: &mut Attrs, msg: &Message) {
    a.str("mcp.message.type", kind_name(msg.kind()));
    if let Some(m) = msg.method() {
        a.str("mcp.method", m);
        a.str("mcp.method.name", m);
        match m {
            "tools/call" => {
                a.str("gen_ai.operation.name", "execute_tool");
                if let Some(n) = msg.param_str("name") {
                    a.str("gen_ai.tool.name", n);
                }
            }
            "prompts/get" => {
                if let Some(n) = msg.param_str("name") {
                    a.str("gen_ai.prompt.name", n);
                }
            }
            _ => {
                if let Some(u) = msg.param_str("uri") {
                    a.str("mcp.resource.uri", &crate::config::redact_uri(u));
                }
            }
        }
    }
}

/// The few attributes that identify a message (`mcp.method.name`,
/// `jsonrpc.request.id`), for spans whose child carries the full set.
pub fn mcp_message_brief(a: &mut Attrs, msg: &Message) {
    if let Some(m) = msg.method() {
        a.str("mcp.method.name", m);
    }
    if let Some(id) = msg.id() {
        id_attrs(a, &id, &["jsonrpc.request.id"]);
    }
}

/// An id as text under each of `keys` (a number is formatted once, on the stack).
fn id_attrs(a: &mut Attrs, id: &Id, keys: &[&'static str]) {
    match id {
        Id::Number(n) => {
            let mut buf = itoa::Buffer::new();
            let owned;
            let text = if let Some(i) = n.as_i64() {
                buf.format(i)
            } else if let Some(u) = n.as_u64() {
                buf.format(u)
            } else {
                owned = n.to_string();
                &owned
            };
            for k in keys {
                a.str(k, text);
            }
        }
        Id::String(s) => {
            for k in keys {
                a.str(k, s);
            }
        }
    }
}

/// An id as attribute text (strings without quotes).
pub fn id_text(id: &Id) -> String {
    match id {
        Id::Number(n) => n.to_string(),
        Id::String(s) => s.clone(),
    }
}

/// Connection pool attributes (guide: `ConnectionPoolAttributes`).
pub fn connection_pool(a: &mut Attrs, pool_type: &str, size: i64, active: i64, idle: i64) {
    a.str("pool.type", pool_type);
    a.int("pool.size", size);
    a.int("pool.connections.active", active);
    a.int("pool.connections.idle", idle);
}

/// Rate limit attributes (guide: `RateLimitAttributes`); `reset_time` in seconds.
pub fn rate_limit(a: &mut Attrs, limited: bool, limit: i64, remaining: i64, reset_time: i64) {
    a.bool("ratelimit.limited", limited);
    a.int("ratelimit.limit", limit);
    a.int("ratelimit.remaining", remaining);
    a.int("ratelimit.reset_time", reset_time);
}

/// Authentication attributes (guide: `AuthenticationAttributes`). `user_id` is an
/// identity label, never a credential.
pub fn authentication(a: &mut Attrs, auth_type: &str, success: bool, user_id: Option<&str>) {
    a.str("auth.type", auth_type);
    a.bool("auth.success", success);
    if let Some(u) = user_id {
        a.str("auth.user.id", u);
    }
}

/// Gateway route attributes (guide: `GatewayRouteAttributes`).
pub fn gateway_route(a: &mut Attrs, service: &str, target_host: &str, target_port: Option<i64>) {
    a.str("gateway.service", service);
    a.str("gateway.target.host", target_host);
    if let Some(p) = target_port {
        a.int("gateway.target.port", p);
    }
}

/// `server.address` / `server.port`.
pub fn server(a: &mut Attrs, address: &str, port: u16) {
    a.str("server.address", address);
    a.int("server.port", i64::from(port));
}

/// `url.full`, with every query value replaced by `REDACTED`
/// ([`crate::config::redact_url_query`]): the semantic conventions ask that
/// credentials never appear there, and a query value may be one. (Credentials before
/// the host, `user:pass@`, are refused by the configuration.)
pub fn url_full(a: &mut Attrs, url: &str) {
    a.str("url.full", &crate::config::redact_url_query(url));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;

    #[test]
    fn a_resource_uri_keeps_no_credential() {
        for (uri, recorded) in [
            ("file:///tmp/a.txt", "file:///tmp/a.txt"),
            ("fixture://one/item/7", "fixture://one/item/7"),
            (
                "postgres://user:secret@db:5432/x?sslmode=require",
                "postgres://REDACTED@db:5432/x?sslmode=REDACTED",
            ),
            (
                "https://api.example/doc?token=abc#top",
                "https://api.example/doc?token=REDACTED#top",
            ),
            ("s3://key@bucket", "s3://REDACTED@bucket"),
            // An @ past the host is part of the path, not user information.
            ("mail://host/a@b", "mail://host/a@b"),
            ("urn:isbn:0451450523", "urn:isbn:0451450523"),
            ("x y://u@h", "x y://u@h"),
        ] {
            assert_eq!(crate::config::redact_uri(uri), recorded, "{uri}");
        }
        let msg = Message::request(
            Id::from(1),
            "resources/read",
            Some(serde_json::json!({"uri": "db://u:pw@h/t?k=v"})),
        );
        match get(&list(|a| mcp_message(a, &msg)), "mcp.resource.uri") {
            Some(opentelemetry::Value::String(s)) => {
                assert_eq!(s.as_str(), "db://REDACTED@h/t?k=REDACTED")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn url_full_keeps_no_query_value() {
        let full = |url: &str| match get(&list(|a| url_full(a, url)), "url.full") {
            Some(opentelemetry::Value::String(s)) => s.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(full("ws://h:1/mcp"), "ws://h:1/mcp");
        assert_eq!(
            full("ws://h:1/mcp?access_token=abc&x&sig=1#f"),
            "ws://h:1/mcp?access_token=REDACTED&x&sig=REDACTED#f"
        );
        assert_eq!(full("ws://h?k=v"), "ws://h?k=REDACTED");
    }

    fn list(f: impl FnOnce(&mut Attrs)) -> Vec<KeyValue> {
        Attrs::collect(f)
    }

    fn get<'a>(v: &'a [KeyValue], k: &str) -> Option<&'a opentelemetry::Value> {
        v.iter().find(|kv| kv.key.as_str() == k).map(|kv| &kv.value)
    }

    #[test]
    fn message_attributes_follow_both_conventions() {
        const SECRET: &str = "s3cr3t-arg-value";
        let text = format!(
            r#"{{"jsonrpc":"2.0","id":"7","method":"tools/call","params":{{"name":"fs.read","arguments":{{"password":"{SECRET}","path":"{SECRET}"}},"_meta":{{"note":"{SECRET}"}}}}}}"#
        );
        for m in [
            Message::parse(text.as_bytes()).unwrap(),
            Message::parse_relayed(text.clone().into_bytes()).unwrap(),
        ] {
            let a = list(|a| mcp_message(a, &m));
            assert_eq!(get(&a, "mcp.method.name").unwrap().as_str(), "tools/call");
            assert_eq!(get(&a, "mcp.method").unwrap().as_str(), "tools/call");
            assert_eq!(get(&a, "gen_ai.tool.name").unwrap().as_str(), "fs.read");
            assert_eq!(get(&a, "jsonrpc.request.id").unwrap().as_str(), "7");
            assert_eq!(get(&a, "mcp.message.type").unwrap().as_str(), "request");
            // Arguments (and other params) never become attributes, whatever key a
            // leak would use: no value carries them (the brief set neither).
            let brief = list(|a| mcp_message_brief(a, &m));
            assert!(!brief.is_empty());
            for kv in a.iter().chain(&brief) {
                assert!(
                    !kv.value.as_str().contains(SECRET),
                    "{} carries an argument",
                    kv.key
                );
            }
        }
    }

    #[test]
    fn guide_helpers_use_the_guide_keys() {
        assert_eq!(list(|a| rate_limit(a, false, 10, 9, 0)).len(), 4);
        let a = list(|a| authentication(a, "bearer", true, None));
        assert_eq!(get(&a, "auth.type").unwrap().as_str(), "bearer");
        let r = list(|a| gateway_route(a, "fs", "stdio", None));
        assert_eq!(get(&r, "gateway.service").unwrap().as_str(), "fs");
        assert_eq!(list(|a| connection_pool(a, "stdio", 2, 1, 1)).len(), 4);
        assert!(get(
            &list(|a| websocket(a, "127.0.0.1", "h", "/mcp", None, Some("mcp"))),
            "websocket.protocol"
        )
        .is_some());
    }

    #[test]
    fn numeric_ids_format_like_display() {
        for id in [
            "0",
            "-42",
            "9223372036854775807",
            "-9223372036854775808",
            "1.5",
            "18446744073709551615",
            "\"x\"",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            let m = Message::parse(line.as_bytes()).unwrap();
            let a = list(|a| mcp_message_brief(a, &m));
            let want = id_text(&m.id().unwrap());
            assert_eq!(get(&a, "jsonrpc.request.id").unwrap().as_str(), want);
        }
    }
}
