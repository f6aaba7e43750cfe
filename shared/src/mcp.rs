//! MCP protocol facts the bridge needs: protocol versions, how each client method is
//! served by the gateway, and merging of backend capabilities.

use serde_json::{Map, Value};

/// Protocol versions the gateway accepts, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Header of the gateway's WebSocket handshake response naming the session the
/// connection opened (`<16 hex digits>-<n>`: the gateway process's random part, then
/// the session's number in that process). The router records it as `mcp.session.id` on its spans,
/// so that its side of a session can be found next to the gateway's. (The name is the
/// Streamable HTTP transport's; on WebSocket it is informative only: nothing is sent
/// back with it.)
pub const SESSION_ID_HEADER: &str = "mcp-session-id";

/// The version offered when the client asks for one we do not know.
pub const LATEST_VERSION: &str = "2025-11-25";

/// The version to answer `initialize` with: the client's when supported, else ours.
pub fn negotiate_version(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED_VERSIONS.iter().find(|v| **v == r).copied())
        .unwrap_or(LATEST_VERSION)
}

/// Which list method, and the result field holding the items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list` → `tools` (names prefixed).
    Tools,
    /// `prompts/list` → `prompts` (names prefixed).
    Prompts,
    /// `resources/list` → `resources` (URIs learned).
    Resources,
    /// `resources/templates/list` → `resourceTemplates` (templates learned).
    ResourceTemplates,
}

impl ListKind {
    /// The method name.
    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The field of the result that holds the items.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The capability a backend must announce to be asked.
    pub fn capability(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources | ListKind::ResourceTemplates => "resources",
        }
    }
}

/// How the gateway serves a client request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// `initialize`: answered by the gateway after initializing the backends.
    Initialize,
    /// `ping`: answered by the gateway.
    Ping,
    /// A list merged from every backend.
    List(ListKind),
    /// Routed by the prefix of `params.name` (tools/call).
    ByToolName,
    /// Routed by the prefix of `params.name` (prompts/get).
    ByPromptName,
    /// Routed by `params.uri` (resources/read, subscribe, unsubscribe).
    ByUri,
    /// Routed by `params.ref` (completion/complete).
    ByCompletionRef,
    /// Sent to every backend (logging/setLevel).
    Broadcast,
    /// Not served.
    Unknown,
}

/// Method names of the MCP specification (requests and notifications, both
/// directions): the gateway's per-method metric series.
pub const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/roots/list_changed",
];

/// How the gateway handles `method`.
pub fn handling(method: &str) -> Handling {
    match method {
        "initialize" => Handling::Initialize,
        "ping" => Handling::Ping,
        "tools/list" => Handling::List(ListKind::Tools),
        "prompts/list" => Handling::List(ListKind::Prompts),
        "resources/list" => Handling::List(ListKind::Resources),
        "resources/templates/list" => Handling::List(ListKind::ResourceTemplates),
        "tools/call" => Handling::ByToolName,
        "prompts/get" => Handling::ByPromptName,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Handling::ByUri,
        "completion/complete" => Handling::ByCompletionRef,
        "logging/setLevel" => Handling::Broadcast,
        _ => Handling::Unknown,
    }
}

/// The server capabilities whose methods the gateway routes ([`handling`]): only these
/// are announced. Others a backend declares (`tasks`, `experimental`, newer ones) would
/// promise methods the gateway answers with "method not found".
pub const ROUTED_CAPABILITIES: &[&str] =
    &["tools", "prompts", "resources", "logging", "completions"];

/// Merges capability objects: the union of their keys, recursively; `true` wins over
/// `false` for flags such as `listChanged`. Only [`ROUTED_CAPABILITIES`] are kept.
pub fn merge_capabilities<'a>(caps: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut out = Map::new();
    for c in caps {
        if let Value::Object(m) = c {
            merge_into(&mut out, m);
        }
    }
    out.retain(|k, _| ROUTED_CAPABILITIES.contains(&k.as_str()));
    Value::Object(out)
}

fn merge_into(dst: &mut Map<String, Value>, src: &Map<String, Value>) {
    for (k, v) in src {
        match (dst.get_mut(k), v) {
            (Some(Value::Object(d)), Value::Object(s)) => merge_into(d, s),
            (Some(Value::Bool(d)), Value::Bool(s)) => *d |= *s,
            (Some(_), _) => {}
            (None, _) => {
                dst.insert(k.clone(), v.clone());
            }
        }
    }
}

/// MCP's log levels (RFC 5424's severities), least severe first.
pub const LOG_LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// The rank of a log level in [`LOG_LEVELS`] (higher is more severe).
pub fn log_level_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

/// True when a backend's capabilities announce `name` (e.g. "tools", "logging").
pub fn has_capability(caps: &Value, name: &str) -> bool {
    caps.get(name).is_some_and(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_rank_by_severity() {
        assert_eq!(log_level_rank("debug"), Some(0));
        assert!(log_level_rank("warning") < log_level_rank("emergency"));
        assert_eq!(log_level_rank("verbose"), None);
    }
    use serde_json::json;

    #[test]
    fn negotiates_versions() {
        assert_eq!(negotiate_version(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate_version(Some("2099-01-01")), LATEST_VERSION);
        assert_eq!(negotiate_version(None), LATEST_VERSION);
    }

    #[test]
    fn merges_capabilities_as_a_union() {
        let a = json!({"tools":{"listChanged":false},"logging":{}});
        let b = json!({"tools":{"listChanged":true},"resources":{"subscribe":true}});
        let m = merge_capabilities([&a, &b]);
        assert_eq!(
            m,
            json!({"tools":{"listChanged":true},"logging":{},"resources":{"subscribe":true}})
        );
        assert!(has_capability(&m, "resources"));
        assert!(!has_capability(&m, "prompts"));
        // What the gateway does not route is not announced.
        let c = json!({"tasks":{"requests":{"tools":{"call":{}}}},"experimental":{"x":{}},"completions":{}});
        assert_eq!(
            merge_capabilities([&a, &c]),
            json!({"tools":{"listChanged":false},"logging":{},"completions":{}})
        );
        for method in ["tasks/list", "tasks/get", "tasks/result"] {
            assert_eq!(handling(method), Handling::Unknown, "{method}");
        }
    }

    #[test]
    fn classifies_methods() {
        assert_eq!(handling("tools/call"), Handling::ByToolName);
        assert_eq!(
            handling("resources/templates/list"),
            Handling::List(ListKind::ResourceTemplates)
        );
        assert_eq!(handling("sampling/createMessage"), Handling::Unknown);
        assert_eq!(ListKind::ResourceTemplates.field(), "resourceTemplates");
    }
}
