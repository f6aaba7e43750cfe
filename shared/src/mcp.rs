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

    /// The member an item is known by: a client calls or reads it by this, so one
    /// backend listing two items with the same one is an error of the backend's.
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
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

/// What [`keep_listable`] left out of a backend's listing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unlisted {
    /// Items that MCP's schema refuses (not an object, or a required member missing or
    /// of the wrong type).
    pub invalid: usize,
    /// Items whose key ([`ListKind::key`]) an earlier item of the same backend had.
    pub repeated: usize,
    /// Why the first of them was left out, for the log.
    pub first: Option<String>,
}

impl Unlisted {
    /// Whether anything was left out.
    pub fn any(&self) -> bool {
        self.invalid + self.repeated > 0
    }

    fn note(&mut self, repeated: bool, why: impl FnOnce() -> String) {
        if repeated {
            self.repeated += 1;
        } else {
            self.invalid += 1;
        }
        if self.first.is_none() {
            self.first = Some(why());
        }
    }
}

/// Keeps the items of one page of a backend's listing that a client can use: objects
/// with the members MCP's schema requires, of the right types (a tool's string `name`
/// and object `inputSchema`; a prompt's `name`; a resource's `uri` and `name`; a
/// template's `uriTemplate` and `name`), and not listed before by the same backend
/// (`seen` holds the keys of its earlier pages). One bad entry in a merged listing makes
/// a client that validates it (the official SDKs do) refuse the whole listing, every
/// other backend's items with it.
pub fn keep_listable(
    kind: ListKind,
    items: &mut Vec<Value>,
    seen: &mut std::collections::HashSet<String>,
    unlisted: &mut Unlisted,
) {
    /// A member an item must have: its name, a test of its value, and what it must be.
    type Member = (&'static str, fn(&Value) -> bool, &'static str);
    let required: &[Member] = match kind {
        ListKind::Tools => &[
            ("name", Value::is_string, "a string"),
            ("inputSchema", Value::is_object, "an object"),
        ],
        ListKind::Prompts => &[("name", Value::is_string, "a string")],
        ListKind::Resources => &[
            ("uri", Value::is_string, "a string"),
            ("name", Value::is_string, "a string"),
        ],
        ListKind::ResourceTemplates => &[
            ("uriTemplate", Value::is_string, "a string"),
            ("name", Value::is_string, "a string"),
        ],
    };
    // Members that may be left out, but are of this type when given (the SDKs refuse a
    // listing with a `description` that is a number as readily as one without a name).
    let optional: &[Member] = match kind {
        ListKind::Tools => &[
            ("title", Value::is_string, "a string"),
            ("description", Value::is_string, "a string"),
            ("outputSchema", Value::is_object, "an object"),
            ("annotations", Value::is_object, "an object"),
        ],
        ListKind::Prompts => &[
            ("title", Value::is_string, "a string"),
            ("description", Value::is_string, "a string"),
            ("arguments", Value::is_array, "an array"),
        ],
        ListKind::Resources | ListKind::ResourceTemplates => &[
            ("title", Value::is_string, "a string"),
            ("description", Value::is_string, "a string"),
            ("mimeType", Value::is_string, "a string"),
        ],
    };
    items.retain(|item| {
        let Some(obj) = item.as_object() else {
            unlisted.note(false, || {
                format!("an item that is not an object: {}", brief(item))
            });
            return false;
        };
        let wrong = required
            .iter()
            .find(|(member, is, _)| !obj.get(*member).is_some_and(is))
            .or_else(|| {
                optional
                    .iter()
                    .find(|(member, is, _)| obj.get(*member).is_some_and(|v| !is(v)))
            });
        if let Some((member, _, what)) = wrong {
            unlisted.note(false, || {
                format!("an item whose \"{member}\" is not {what}: {}", brief(item))
            });
            return false;
        }
        // A tool's input schema describes its arguments: an object (MCP's schema).
        if kind == ListKind::Tools && obj["inputSchema"].get("type") != Some(&Value::from("object"))
        {
            unlisted.note(false, || {
                format!(
                    "a tool whose inputSchema's \"type\" is not \"object\": {}",
                    brief(item)
                )
            });
            return false;
        }
        let key = obj[kind.key()].as_str().unwrap_or_default();
        if !seen.insert(key.to_string()) {
            unlisted.note(true, || format!("\"{key}\" listed twice"));
            return false;
        }
        true
    });
}

/// At most 80 bytes of an item's JSON, for a log line.
pub fn brief(item: &Value) -> String {
    let mut text = item.to_string();
    if text.len() > 80 {
        let mut end = 77;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
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

    #[test]
    fn a_listing_keeps_only_what_a_client_can_use_and_each_key_once() {
        use serde_json::json;
        let mut seen = std::collections::HashSet::new();
        let mut unlisted = Unlisted::default();
        let schema = json!({"type": "object"});
        let mut page = vec![
            json!({"name": "ok", "inputSchema": schema}),
            json!({"name": 5, "inputSchema": schema}),
            json!({"nope": 1}),
            json!("str"),
            json!({"name": "no_schema"}),
            json!({"name": "ok", "inputSchema": schema, "description": "again"}),
            json!({"name": "other", "inputSchema": schema}),
            json!({"name": "described", "inputSchema": schema, "description": 5}),
            json!({"name": "array_input", "inputSchema": {"type": "array"}}),
            json!({"name": "untyped_input", "inputSchema": {}}),
            json!({"name": "titled", "inputSchema": schema, "title": "T", "annotations": {}}),
        ];
        keep_listable(ListKind::Tools, &mut page, &mut seen, &mut unlisted);
        let names: Vec<&str> = page.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["ok", "other", "titled"]);
        assert_eq!((unlisted.invalid, unlisted.repeated), (7, 1));
        assert_eq!(
            unlisted.first.as_deref(),
            Some("an item whose \"name\" is not a string: {\"name\":5,\"inputSchema\":{\"type\":\"object\"}}")
        );
        // A later page: a key of an earlier page counts as listed twice.
        let mut page = vec![json!({"name": "other", "inputSchema": schema})];
        keep_listable(ListKind::Tools, &mut page, &mut seen, &mut unlisted);
        assert!(page.is_empty());
        assert_eq!(unlisted.repeated, 2);

        // One page, of its own listing: what is kept, and what was left out.
        let keep = |kind, mut page: Vec<Value>| {
            let mut unlisted = Unlisted::default();
            keep_listable(kind, &mut page, &mut Default::default(), &mut unlisted);
            (page.len(), unlisted)
        };
        let (kept, unlisted) = keep(
            ListKind::Resources,
            vec![
                json!({"uri": "a://1", "name": "one"}),
                json!({"uri": "a://2"}),
                json!({"uri": "a://1", "name": "one again"}),
            ],
        );
        assert_eq!((kept, unlisted.invalid, unlisted.repeated), (1, 1, 1));
        let (kept, unlisted) = keep(
            ListKind::ResourceTemplates,
            vec![
                json!({"uriTemplate": "a://{x}", "name": "t"}),
                json!({"uri": "a://{x}", "name": "t"}),
            ],
        );
        assert_eq!((kept, unlisted.invalid), (1, 1));
        let (kept, unlisted) = keep(
            ListKind::Prompts,
            vec![
                json!({"name": "p", "arguments": []}),
                json!({"name": ["p"]}),
                json!({"name": "q", "arguments": {}}),
            ],
        );
        assert_eq!((kept, unlisted.invalid, unlisted.any()), (1, 2, true));
        // A long item is cut for the log, on a character boundary.
        let (_, unlisted) = keep(ListKind::Prompts, vec![json!("é".repeat(100))]);
        let first = unlisted.first.unwrap();
        assert!(first.ends_with("...") && first.len() < 130, "{first}");
    }

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
