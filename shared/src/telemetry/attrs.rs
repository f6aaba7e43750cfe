//! Span attribute helpers: the distributed tracing guide's keys (WebSocket, MCP
//! message, connection pool, rate limit, authentication, gateway route) and the
//! OpenTelemetry MCP semantic conventions. Nothing here may carry a token, an
//! Authorization header or tool arguments.

use std::sync::Arc;

use opentelemetry::{KeyValue, Value};

use crate::jsonrpc::{Id, Kind, Message};

/// WebSocket connection attributes (guide: `WebSocketSpanAttributes`).
pub fn websocket(
    peer_ip: &str,
    host: &str,
    target: &str,
    user_agent: Option<&str>,
    protocol: Option<&str>,
) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new("net.transport", "ip_tcp"),
        KeyValue::new("net.peer.ip", peer_ip.to_string()),
        KeyValue::new("http.method", "GET"),
        KeyValue::new("http.target", target.to_string()),
        KeyValue::new("http.host", host.to_string()),
        KeyValue::new("network.transport", "tcp"),
    ];
    if let Some(ua) = user_agent {
        v.push(KeyValue::new("http.user_agent", ua.to_string()));
    }
    if let Some(p) = protocol {
        v.push(KeyValue::new("websocket.protocol", p.to_string()));
    }
    v
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
pub fn mcp_message(msg: &Message) -> Vec<KeyValue> {
    let mut v = Vec::with_capacity(8);
    v.push(KeyValue::new("mcp.message.type", kind_name(msg.kind())));
    if let Some(m) = msg.method() {
        let name = method_value(m);
        v.push(KeyValue::new("mcp.method", name.clone()));
        v.push(KeyValue::new("mcp.method.name", name));
        match m {
            "tools/call" => {
                v.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
                if let Some(n) = msg.param_str("name") {
                    v.push(KeyValue::new("gen_ai.tool.name", n.to_string()));
                }
            }
            "prompts/get" => {
                if let Some(n) = msg.param_str("name") {
                    v.push(KeyValue::new("gen_ai.prompt.name", n.to_string()));
                }
            }
            _ => {
                if let Some(u) = msg.param_str("uri") {
                    v.push(KeyValue::new("mcp.resource.uri", u.to_string()));
                }
            }
        }
    }
    if let Some(id) = msg.id() {
        // One allocation shared by both keys.
        let s: Arc<str> = id_text(&id).into();
        v.push(KeyValue::new("mcp.message.id", s.clone()));
        v.push(KeyValue::new("jsonrpc.request.id", s));
    }
    v
}

/// A method name as an attribute value: static for the specification's methods, one
/// shared allocation otherwise.
fn method_value(m: &str) -> Value {
    match crate::mcp::static_method(m) {
        Some(s) => Value::from(s),
        None => Value::from(Arc::<str>::from(m)),
    }
}

/// The few attributes that identify a message (`mcp.method.name`,
/// `jsonrpc.request.id`), for spans whose child carries the full set.
pub fn mcp_message_brief(msg: &Message) -> Vec<KeyValue> {
    let mut v = Vec::with_capacity(3);
    if let Some(m) = msg.method() {
        v.push(KeyValue::new("mcp.method.name", method_value(m)));
    }
    if let Some(id) = msg.id() {
        v.push(KeyValue::new("jsonrpc.request.id", id_text(&id)));
    }
    v
}

/// An id as attribute text (strings without quotes).
pub fn id_text(id: &Id) -> String {
    match id {
        Id::Number(n) => n.to_string(),
        Id::String(s) => s.clone(),
    }
}

/// Connection pool attributes (guide: `ConnectionPoolAttributes`).
pub fn connection_pool(pool_type: &str, size: i64, active: i64, idle: i64) -> Vec<KeyValue> {
    vec![
        KeyValue::new("pool.type", pool_type.to_string()),
        KeyValue::new("pool.size", size),
        KeyValue::new("pool.connections.active", active),
        KeyValue::new("pool.connections.idle", idle),
    ]
}

/// Rate limit attributes (guide: `RateLimitAttributes`); `reset_time` in seconds.
pub fn rate_limit(limited: bool, limit: i64, remaining: i64, reset_time: i64) -> Vec<KeyValue> {
    vec![
        KeyValue::new("ratelimit.limited", limited),
        KeyValue::new("ratelimit.limit", limit),
        KeyValue::new("ratelimit.remaining", remaining),
        KeyValue::new("ratelimit.reset_time", reset_time),
    ]
}

/// Authentication attributes (guide: `AuthenticationAttributes`). `user_id` is an
/// identity label, never a credential.
pub fn authentication(
    auth_type: &'static str,
    success: bool,
    user_id: Option<&str>,
) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new("auth.type", auth_type),
        KeyValue::new("auth.success", success),
    ];
    if let Some(u) = user_id {
        v.push(KeyValue::new("auth.user.id", u.to_string()));
    }
    v
}

/// Gateway route attributes (guide: `GatewayRouteAttributes`).
pub fn gateway_route(
    service: &str,
    target_host: &'static str,
    target_port: Option<i64>,
) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new("gateway.service", service.to_string()),
        KeyValue::new("gateway.target.host", target_host),
    ];
    if let Some(p) = target_port {
        v.push(KeyValue::new("gateway.target.port", p));
    }
    v
}

/// `server.address` / `server.port`.
pub fn server(address: &str, port: u16) -> Vec<KeyValue> {
    vec![
        KeyValue::new("server.address", address.to_string()),
        KeyValue::new("server.port", i64::from(port)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(v: &'a [KeyValue], k: &str) -> Option<&'a opentelemetry::Value> {
        v.iter().find(|kv| kv.key.as_str() == k).map(|kv| &kv.value)
    }

    #[test]
    fn message_attributes_follow_both_conventions() {
        let m = Message::parse(
            br#"{"jsonrpc":"2.0","id":"7","method":"tools/call","params":{"name":"fs.read","arguments":{"password":"x"}}}"#,
        )
        .unwrap();
        let a = mcp_message(&m);
        assert_eq!(get(&a, "mcp.method.name").unwrap().as_str(), "tools/call");
        assert_eq!(get(&a, "mcp.method").unwrap().as_str(), "tools/call");
        assert_eq!(get(&a, "gen_ai.tool.name").unwrap().as_str(), "fs.read");
        assert_eq!(get(&a, "jsonrpc.request.id").unwrap().as_str(), "7");
        assert_eq!(get(&a, "mcp.message.type").unwrap().as_str(), "request");
        assert!(a
            .iter()
            .all(|kv| !kv.value.as_str().contains('x') || kv.key.as_str() != "arguments"));
        assert!(
            get(&a, "password").is_none(),
            "arguments never become attributes"
        );
    }

    #[test]
    fn guide_helpers_use_the_guide_keys() {
        assert_eq!(rate_limit(false, 10, 9, 0).len(), 4);
        let a = authentication("bearer", true, None);
        assert_eq!(get(&a, "auth.type").unwrap().as_str(), "bearer");
        let r = gateway_route("fs", "stdio", None);
        assert_eq!(get(&r, "gateway.service").unwrap().as_str(), "fs");
        assert_eq!(connection_pool("stdio", 2, 1, 1).len(), 4);
        assert!(get(
            &websocket("127.0.0.1", "h", "/mcp", None, Some("mcp")),
            "websocket.protocol"
        )
        .is_some());
    }
}
