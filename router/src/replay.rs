//! What the router replays on a new gateway link, so that the fresh gateway session is
//! the one the host set up (sans-I/O: the relay feeds it messages and asks for the list).
//!
//! A gateway session lives as long as its WebSocket connection. When the router
//! reconnects (the gateway restarted, the host woke from sleep), the new session knows
//! nothing: the gateway refuses requests before `initialize`, and the host, which
//! initialised once, will not do it again. So the router remembers the session-shaping
//! messages the host sent — its last `initialize`, whether it sent
//! `notifications/initialized`, its last `logging/setLevel`, and the resources it is
//! subscribed to — and sends them again, under ids of its own, before the host's traffic
//! flows on the new link. Their answers go to the router, not the host.
//!
//! Not restored: requests that were in flight when the link went (the host got an error
//! for each: whether the old gateway carried them out is unknown), and state a backend
//! keeps per session (a per-client backend process is new). After a reconnection the
//! host is told that the lists it may have cached changed, for each list the gateway
//! declared `listChanged` for: the new gateway may route to other backends.

use mcp_shared::jsonrpc::{lookup, Id, Kind, Message};

/// Resource subscriptions remembered for replay, at most (more are still forwarded,
/// only not restored after a reconnection; logged once).
pub const MAX_REPLAYED_SUBSCRIPTIONS: usize = 1024;

/// A negotiated protocol version longer than this (bytes) is not recorded in spans
/// (versions are dates, `2025-06-18`).
pub const MAX_PROTOCOL_VERSION_BYTES: usize = 64;

/// The prefix of the ids of the router's own requests on a new link.
const OWN_ID_PREFIX: &str = "mcp-router-replay-";

/// The session-shaping messages the host sent (see the module documentation).
#[derive(Default)]
pub struct Replay {
    /// The host's last `initialize` that the gateway answered with a result.
    initialize: Option<Message>,
    /// The host's `initialize` forwarded and not yet answered: it counts once its
    /// result is seen (a host whose `initialize` failed has no session to restore).
    asked_initialize: Option<Message>,
    /// The id of the host's `initialize` request, until its answer is seen.
    initialize_id: Option<Id>,
    initialized: bool,
    log_level: Option<Message>,
    subscriptions: Vec<String>,
    warned_full: bool,
    /// The `notifications/*/list_changed` methods the gateway's `initialize` result
    /// declared.
    list_changed: Vec<&'static str>,
    /// The protocol version the gateway's last `initialize` result gave (for the
    /// spans' `mcp.protocol.version`).
    protocol_version: Option<std::rc::Rc<str>>,
    next_id: u64,
}

impl Replay {
    /// Notes a message the host sent, as it is forwarded (before trace context is added).
    pub fn observe(&mut self, msg: &Message) {
        let Some(method) = msg.method() else { return };
        match (msg.kind(), method) {
            (Kind::Request, "initialize") => {
                self.asked_initialize = Some(msg.clone());
                self.initialize_id = msg.id();
            }
            (Kind::Notification, "notifications/initialized") => self.initialized = true,
            (Kind::Request, "logging/setLevel") => self.log_level = Some(msg.clone()),
            (Kind::Request, "resources/subscribe") => {
                let Some(uri) = msg.param_str("uri") else {
                    return;
                };
                if self.subscriptions.iter().any(|u| u == uri) {
                    return;
                }
                if self.subscriptions.len() >= MAX_REPLAYED_SUBSCRIPTIONS {
                    if !self.warned_full {
                        log::warn!(
                            "more than {MAX_REPLAYED_SUBSCRIPTIONS} resource subscriptions: \
                             the rest will not be restored after a reconnection"
                        );
                        self.warned_full = true;
                    }
                    return;
                }
                self.subscriptions.push(uri.to_string());
            }
            (Kind::Request, "resources/unsubscribe") => {
                if let Some(uri) = msg.param_str("uri") {
                    self.subscriptions.retain(|u| u != uri);
                }
            }
            _ => {}
        }
    }

    /// Whether [`Replay::observe_response`] needs the response to `id` (the answer to
    /// the host's `initialize`), so that it must be parsed whole.
    pub fn wants_response(&self, id: &Id) -> bool {
        self.initialize_id.as_ref() == Some(id)
    }

    /// Notes a response the gateway sent the host: the result of the host's `initialize`
    /// says which lists can change.
    pub fn observe_response(&mut self, msg: &Message) {
        if self.initialize_id.is_none() || msg.id() != self.initialize_id {
            return;
        }
        self.initialize_id = None;
        let asked = self.asked_initialize.take();
        if msg.result().is_some() {
            self.initialize = asked;
            self.observe_capabilities(msg);
        }
    }

    /// The host's request `id` was answered with an error by the router itself (the
    /// link was lost before the gateway answered): an `initialize` so answered does not
    /// count.
    pub fn request_failed(&mut self, id: &Id) {
        if self.initialize_id.as_ref() == Some(id) {
            self.initialize_id = None;
            self.asked_initialize = None;
        }
    }

    /// Takes the lists that can change from an `initialize` result (the host's, or the
    /// replayed one's on a new link: that gateway's capabilities are the ones that count).
    pub fn observe_capabilities(&mut self, msg: &Message) {
        if let Some(v) = msg
            .result()
            .and_then(|r| lookup(r, "protocolVersion"))
            .and_then(|v| v.as_str())
        {
            // Bounded like any attribute value a peer sends (a version is a date).
            if v.len() <= MAX_PROTOCOL_VERSION_BYTES {
                self.protocol_version = Some(v.into());
            }
        }
        let Some(caps) = msg.result().and_then(|r| lookup(r, "capabilities")) else {
            return;
        };
        self.list_changed.clear();
        for (cap, method) in [
            ("tools", "notifications/tools/list_changed"),
            ("prompts", "notifications/prompts/list_changed"),
            ("resources", "notifications/resources/list_changed"),
        ] {
            let declared = lookup(caps, cap)
                .and_then(|c| lookup(c, "listChanged"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if declared {
                self.list_changed.push(method);
            }
        }
    }

    /// The protocol version of the session, once the gateway answered `initialize`.
    pub fn protocol_version(&self) -> Option<std::rc::Rc<str>> {
        self.protocol_version.clone()
    }

    /// Whether the host has a session (an `initialize` answered with a result; nothing
    /// to restore before that).
    #[cfg(test)]
    pub fn has_session(&self) -> bool {
        self.initialize.is_some()
    }

    /// Whether the host's session is established (it also sent
    /// `notifications/initialized`): only then may it be told its lists changed.
    pub fn session_ready(&self) -> bool {
        self.initialize.is_some() && self.initialized
    }

    /// The messages to send on a new link, in order, each request with an id of the
    /// router's own (see [`is_own_id`]). `initialize` comes first and must be answered
    /// before the rest is sent.
    pub fn messages(&mut self) -> Vec<Message> {
        let Some(init) = &self.initialize else {
            return Vec::new();
        };
        let mut out = vec![init.clone()];
        if self.initialized {
            out.push(Message::notification("notifications/initialized", None));
        }
        if let Some(level) = &self.log_level {
            out.push(level.clone());
        }
        for uri in &self.subscriptions {
            out.push(Message::request(
                Id::from(0),
                "resources/subscribe",
                Some(serde_json::json!({ "uri": uri })),
            ));
        }
        for m in &mut out {
            if m.kind() == Kind::Request {
                self.next_id += 1;
                m.set_id(&Id::String(format!("{OWN_ID_PREFIX}{}", self.next_id)));
            }
        }
        out
    }

    /// The notifications that tell the host its cached lists may be stale.
    pub fn list_changed(&self) -> Vec<Message> {
        self.list_changed
            .iter()
            .map(|m| Message::notification(m, None))
            .collect()
    }
}

/// Whether the host's message is one [`Replay::observe`] keeps (the relay clones only
/// those, before adding trace context).
pub fn shapes_session(msg: &Message) -> bool {
    matches!(
        msg.method(),
        Some(
            "initialize"
                | "notifications/initialized"
                | "logging/setLevel"
                | "resources/subscribe"
                | "resources/unsubscribe"
        )
    )
}

/// Whether `id` is one the router gave a request of its own.
pub fn is_own_id(id: &Id) -> bool {
    matches!(id, Id::String(s) if s.starts_with(OWN_ID_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(v: serde_json::Value) -> Message {
        Message::from_value(v).unwrap()
    }

    fn methods(ms: &[Message]) -> Vec<&str> {
        ms.iter().map(|m| m.method().unwrap()).collect()
    }

    #[test]
    fn nothing_is_replayed_before_the_host_initialises() {
        let mut r = Replay::default();
        r.observe(&msg(json!({"jsonrpc":"2.0","id":1,"method":"ping"})));
        assert!(!r.has_session());
        assert!(r.messages().is_empty());
    }

    #[test]
    fn the_session_is_replayed_in_order_under_own_ids() {
        let mut r = Replay::default();
        let init = json!({"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"host","version":"1"}}});
        r.observe(&msg(init.clone()));
        r.observe_response(&msg(
            json!({"jsonrpc":"2.0","id":7,"result":{"capabilities":{}}}),
        ));
        r.observe(&msg(
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        ));
        r.observe(&msg(
            json!({"jsonrpc":"2.0","id":8,"method":"logging/setLevel","params":{"level":"info"}}),
        ));
        r.observe(&msg(
            json!({"jsonrpc":"2.0","id":9,"method":"logging/setLevel","params":{"level":"debug"}}),
        ));
        for (id, uri) in [(10, "file:///a"), (11, "file:///b"), (12, "file:///a")] {
            r.observe(&msg(json!({"jsonrpc":"2.0","id":id,"method":"resources/subscribe","params":{"uri":uri}})));
        }
        r.observe(&msg(json!({"jsonrpc":"2.0","id":13,"method":"resources/unsubscribe","params":{"uri":"file:///a"}})));
        r.observe(&msg(
            json!({"jsonrpc":"2.0","id":14,"method":"tools/call","params":{"name":"x"}}),
        ));

        let ms = r.messages();
        assert_eq!(
            methods(&ms),
            [
                "initialize",
                "notifications/initialized",
                "logging/setLevel",
                "resources/subscribe"
            ]
        );
        assert_eq!(
            ms[0].params(),
            Some(&init["params"]),
            "the host's own params"
        );
        assert_eq!(
            ms[2].param_str("level"),
            Some("debug"),
            "the last level set"
        );
        assert_eq!(ms[3].param_str("uri"), Some("file:///b"));
        for m in &ms {
            match m.kind() {
                Kind::Request => assert!(is_own_id(&m.id().unwrap()), "{:?}", m.id()),
                _ => assert_eq!(m.id(), None),
            }
        }
        // Each replay has fresh ids.
        let again = r.messages();
        assert_ne!(again[0].id(), ms[0].id());
        assert!(!is_own_id(&Id::from(7)));
        assert!(!is_own_id(&Id::String("host-1".into())));
    }

    #[test]
    fn subscriptions_are_bounded() {
        let mut r = Replay::default();
        r.observe(&msg(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}),
        ));
        r.observe_response(&msg(json!({"jsonrpc":"2.0","id":0,"result":{}})));
        for i in 0..MAX_REPLAYED_SUBSCRIPTIONS + 10 {
            r.observe(&msg(json!({"jsonrpc":"2.0","id":i+1,"method":"resources/subscribe","params":{"uri":format!("u:{i}")}})));
        }
        assert_eq!(r.messages().len(), 1 + MAX_REPLAYED_SUBSCRIPTIONS);
    }

    #[test]
    fn the_negotiated_protocol_version_is_the_last_initialize_results() {
        let mut r = Replay::default();
        let init = |id: i64| {
            msg(
                json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}),
            )
        };
        assert_eq!(r.protocol_version(), None);
        r.observe(&init(1));
        r.observe_response(&msg(
            json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-03-26","capabilities":{}}}),
        ));
        // The gateway's answer is what was agreed, not what the host asked for.
        assert_eq!(r.protocol_version().as_deref(), Some("2025-03-26"));
        // A refused initialize changes nothing; an oversized version is not taken.
        r.observe(&init(2));
        r.observe_response(&msg(
            json!({"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"no"}}),
        ));
        r.observe_capabilities(&msg(
            json!({"jsonrpc":"2.0","id":"x","result":{"protocolVersion":"9".repeat(MAX_PROTOCOL_VERSION_BYTES + 1)}}),
        ));
        assert_eq!(r.protocol_version().as_deref(), Some("2025-03-26"));
        // A new link's answer to the replayed initialize is the session's from then on.
        r.observe_capabilities(&msg(
            json!({"jsonrpc":"2.0","id":"x","result":{"protocolVersion":"2025-06-18"}}),
        ));
        assert_eq!(r.protocol_version().as_deref(), Some("2025-06-18"));
    }

    #[test]
    fn an_initialize_counts_once_answered_with_a_result() {
        let mut r = Replay::default();
        let init = |id: i64| {
            msg(
                json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"clientInfo":{"name":format!("h{id}"),"version":"1"}}}),
            )
        };
        // Lost with the link (the router answered it): nothing to restore.
        r.observe(&init(1));
        r.request_failed(&Id::from(1));
        assert!(!r.has_session() && r.messages().is_empty());
        // Refused by the gateway: nothing either.
        r.observe(&init(2));
        r.observe_response(&msg(
            json!({"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"no"}}),
        ));
        assert!(!r.has_session());
        // Answered: the session, but not ready for notices before `initialized`.
        r.observe(&init(3));
        r.observe_response(&msg(json!({"jsonrpc":"2.0","id":3,"result":{}})));
        assert!(r.has_session() && !r.session_ready());
        r.observe(&msg(
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        ));
        assert!(r.session_ready());
        // A later one refused keeps the one that worked.
        r.observe(&init(4));
        r.observe_response(&msg(
            json!({"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"no"}}),
        ));
        let ms = r.messages();
        assert_eq!(
            ms[0].params().unwrap()["clientInfo"]["name"],
            "h3",
            "the initialize that was answered"
        );
    }

    #[test]
    fn list_changed_follows_the_gateways_capabilities() {
        let mut r = Replay::default();
        r.observe(&msg(
            json!({"jsonrpc":"2.0","id":"i","method":"initialize","params":{}}),
        ));
        // Another response first: ignored.
        r.observe_response(&msg(json!({"jsonrpc":"2.0","id":"x","result":{"capabilities":{"tools":{"listChanged":true}}}})));
        assert!(r.list_changed().is_empty());
        r.observe_response(&msg(json!({"jsonrpc":"2.0","id":"i","result":{"capabilities":{
            "tools":{"listChanged":true},"prompts":{"listChanged":false},"resources":{"subscribe":true,"listChanged":true}}}})));
        assert_eq!(
            methods(&r.list_changed()),
            [
                "notifications/tools/list_changed",
                "notifications/resources/list_changed"
            ]
        );
    }
}
