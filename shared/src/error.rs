//! Typed errors for each family of operations, and the one place where they become
//! JSON-RPC error codes.
//!
//! Families: [`RouteError`] (which backend serves a request), [`BackendError`] (talking
//! to a backend), [`SessionError`] (per-client bounds), [`RelayError`] (the router's link
//! to the gateway). Each implements [`ToRpcError`]. The only codes picked elsewhere:
//! the message model's rejection of what is not JSON-RPC (-32700/-32600,
//! `jsonrpc::Rejection`, where the id is salvaged) and a backend's own error code,
//! passed on. Codes are listed in `docs/errors.md`.

use serde_json::{json, Value};
use std::fmt;

/// JSON-RPC error codes used by the bridge.
pub mod codes {
    /// Invalid JSON (or invalid UTF-8) was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object (also: batches, over-long messages).
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not served by any backend.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters (also: unknown tool or prompt name, as MCP specifies).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error of the bridge.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A backend could not be started, or exited, or its connection closed.
    pub const BACKEND_UNAVAILABLE: i64 = -32000;
    /// The request timed out (the same code the MCP SDKs use for timeouts).
    pub const REQUEST_TIMEOUT: i64 = -32001;
    /// A resource URI is not known to any backend (MCP's "resource not found").
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// Too many requests are in flight on this session; retry later.
    pub const OVERLOADED: i64 = -32003;
    /// The router has no working connection to the gateway.
    pub const GATEWAY_UNAVAILABLE: i64 = -32004;
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The error code.
    pub code: i64,
    /// A short human-readable message.
    pub message: String,
    /// Optional structured details (boxed to keep `Result`s small).
    pub data: Option<Box<Value>>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Adds structured details.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(Box::new(data));
        self
    }

    /// The JSON error object.
    pub fn to_value(&self) -> Value {
        let mut v = json!({ "code": self.code, "message": self.message });
        if let Some(d) = &self.data {
            v["data"] = (**d).clone();
        }
        v
    }
}

/// Conversion of a typed error to the JSON-RPC error a peer receives.
pub trait ToRpcError {
    /// The JSON-RPC error for this failure.
    fn to_rpc_error(&self) -> RpcError;
}

/// Why a request could not be routed to a backend.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteError {
    /// No backend serves this method.
    UnknownMethod(String),
    /// The tool name has no known backend prefix, or the backend has no such tool.
    UnknownTool(String),
    /// The prompt name has no known backend prefix.
    UnknownPrompt(String),
    /// No backend announced this resource URI (or a template matching it).
    UnknownResource(String),
    /// A required parameter is missing or has the wrong type.
    MissingParam {
        /// The method.
        method: String,
        /// The parameter.
        param: &'static str,
    },
    /// The session has not completed `initialize`.
    NotInitialized,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::UnknownMethod(m) => write!(f, "method not found: {m}"),
            RouteError::UnknownTool(t) => write!(f, "unknown tool: {t}"),
            RouteError::UnknownPrompt(p) => write!(f, "unknown prompt: {p}"),
            // Without what may be a credential: the message goes into logs and spans.
            RouteError::UnknownResource(u) => {
                write!(f, "resource not found: {}", crate::config::redact_uri(u))
            }
            RouteError::MissingParam { method, param } => {
                write!(
                    f,
                    "invalid params for {method}: missing or invalid \"{param}\""
                )
            }
            RouteError::NotInitialized => {
                write!(f, "session not initialized: send \"initialize\" first")
            }
        }
    }
}

impl ToRpcError for RouteError {
    fn to_rpc_error(&self) -> RpcError {
        let code = match self {
            RouteError::UnknownMethod(_) => codes::METHOD_NOT_FOUND,
            RouteError::UnknownTool(_)
            | RouteError::UnknownPrompt(_)
            | RouteError::MissingParam { .. } => codes::INVALID_PARAMS,
            RouteError::UnknownResource(_) => codes::RESOURCE_NOT_FOUND,
            RouteError::NotInitialized => codes::INVALID_REQUEST,
        };
        RpcError::new(code, self.to_string())
    }
}

/// A failure talking to one backend.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendError {
    /// The backend process could not be started.
    Start {
        /// Backend name.
        backend: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend process exited (or closed its stdout) while requests were pending.
    Exited {
        /// Backend name.
        backend: String,
        /// Exit status as text ("exit status: 3", "signal: 9", "unknown").
        status: String,
    },
    /// The backend did not answer within the request timeout.
    Timeout {
        /// Backend name.
        backend: String,
        /// The timeout that elapsed, in milliseconds.
        after_ms: u64,
        /// When it ran out, the backend still waited for the client's answer to a
        /// request of its own (sampling, elicitation): the silence was the client's.
        waiting_for_client: bool,
    },
    /// The backend's initialize handshake failed.
    Initialize {
        /// Backend name.
        backend: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend's response exceeded `max_message_bytes` and was dropped.
    ResponseTooLarge {
        /// Backend name.
        backend: String,
        /// The configured bound.
        limit: usize,
    },
    /// Too many requests in flight to this backend.
    Overloaded {
        /// Backend name.
        backend: String,
        /// The configured bound.
        limit: usize,
    },
    /// The backend answered with a response that is not valid JSON-RPC (its id could
    /// still be read).
    InvalidResponse {
        /// Backend name.
        backend: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl BackendError {
    /// The backend this error is about.
    pub fn backend(&self) -> &str {
        match self {
            BackendError::Start { backend, .. }
            | BackendError::Exited { backend, .. }
            | BackendError::InvalidResponse { backend, .. }
            | BackendError::Timeout { backend, .. }
            | BackendError::Initialize { backend, .. }
            | BackendError::ResponseTooLarge { backend, .. }
            | BackendError::Overloaded { backend, .. } => backend,
        }
    }

    /// A short machine-friendly name of the failure, for logs and `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Start { .. } => "backend_start",
            BackendError::Exited { .. } => "backend_exited",
            BackendError::Timeout { .. } => "timeout",
            BackendError::Initialize { .. } => "backend_initialize",
            BackendError::ResponseTooLarge { .. } => "response_too_large",
            BackendError::Overloaded { .. } => "overloaded",
            BackendError::InvalidResponse { .. } => "invalid_response",
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Start { backend, reason } => {
                write!(f, "backend {backend:?} failed to start: {reason}")
            }
            BackendError::Exited { backend, status } => {
                write!(f, "backend {backend:?} exited ({status})")
            }
            BackendError::Timeout {
                backend,
                after_ms,
                waiting_for_client,
            } => {
                write!(f, "backend {backend:?} did not answer within {after_ms} ms")?;
                if *waiting_for_client {
                    f.write_str(
                        ", as it still waited for the client's answer to a request of its own",
                    )?;
                }
                Ok(())
            }
            BackendError::Initialize { backend, reason } => {
                write!(f, "backend {backend:?} failed to initialize: {reason}")
            }
            BackendError::ResponseTooLarge { backend, limit } => write!(
                f,
                "backend {backend:?} sent a response larger than {limit} bytes; dropped"
            ),
            BackendError::Overloaded { backend, limit } => write!(
                f,
                "backend {backend:?} has too many requests in flight (limit {limit})"
            ),
            BackendError::InvalidResponse { backend, reason } => {
                write!(f, "backend {backend:?} sent an invalid response: {reason}")
            }
        }
    }
}

impl ToRpcError for BackendError {
    fn to_rpc_error(&self) -> RpcError {
        let code = match self {
            BackendError::Timeout { .. } => codes::REQUEST_TIMEOUT,
            BackendError::Overloaded { .. } => codes::OVERLOADED,
            BackendError::ResponseTooLarge { .. } | BackendError::InvalidResponse { .. } => {
                codes::INTERNAL_ERROR
            }
            _ => codes::BACKEND_UNAVAILABLE,
        };
        RpcError::new(code, self.to_string())
            .with_data(json!({ "backend": self.backend(), "kind": self.kind() }))
    }
}

/// A per-session bound was hit.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionError {
    /// More requests in flight than `max_in_flight`.
    TooManyInFlight(usize),
    /// The message exceeds `max_message_bytes`.
    TooLarge {
        /// The configured bound.
        limit: usize,
    },
    /// A request reused the id of a request still in flight.
    DuplicateId,
    /// A request's string id is longer than this many bytes.
    IdTooLong(usize),
    /// A `resources/subscribe` beyond the session's bound on subscriptions.
    TooManySubscriptions(usize),
    /// The client answered a request sent to it with a response that could not be
    /// read (not JSON, not UTF-8, not JSON-RPC, or over `max_message_bytes`): what the
    /// request's sender is told instead.
    UnreadableResponse(String),
    /// A listing merged from the backends is longer than `max_message_bytes`: no peer
    /// with the same bound could read it.
    ListingTooLarge {
        /// The listing's method.
        method: &'static str,
        /// Its length as JSON.
        bytes: usize,
        /// The configured bound.
        limit: usize,
    },
    /// A backend's request to the client could not be queued for it (its queue stayed
    /// full, or the session is closing): what the backend is told.
    ClientUnavailable,
    /// The client disconnected with a backend's request to it unanswered.
    ClientDisconnected,
    /// A backend asked a client something while no session was attached to it.
    NoClientSession,
    /// The client did not answer a backend's request within this many milliseconds
    /// (the longest any request to that backend may be waited for).
    ClientDidNotAnswer(u64),
    /// The gateway shut down with the request in flight.
    ShuttingDown,
    /// The answer (this many bytes) was dropped: the client is not reading, its queue is
    /// full, and other answers already wait for room up to the bound.
    ClientBacklog(usize),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::TooManyInFlight(n) => {
                write!(f, "too many requests in flight on this session (limit {n})")
            }
            SessionError::TooLarge { limit } => {
                write!(f, "message exceeds the maximum size of {limit} bytes")
            }
            SessionError::DuplicateId => {
                write!(f, "a request with this id is already in flight")
            }
            SessionError::IdTooLong(n) => {
                write!(f, "the request's id is longer than {n} bytes")
            }
            SessionError::TooManySubscriptions(n) => {
                write!(
                    f,
                    "too many resource subscriptions on this session (limit {n})"
                )
            }
            SessionError::UnreadableResponse(reason) => {
                write!(f, "the client's response could not be read: {reason}")
            }
            SessionError::ListingTooLarge {
                method,
                bytes,
                limit,
            } => write!(
                f,
                "the {method} result merged from the backends is {bytes} bytes, more than \
                 max_message_bytes ({limit})"
            ),
            SessionError::ClientUnavailable => write!(f, "client unavailable"),
            SessionError::ClientDisconnected => {
                write!(f, "the client disconnected before answering")
            }
            SessionError::NoClientSession => {
                write!(f, "no client session is attached to this backend")
            }
            SessionError::ClientDidNotAnswer(ms) => {
                write!(f, "the client did not answer within {ms} ms")
            }
            SessionError::ShuttingDown => write!(f, "the gateway is shutting down"),
            SessionError::ClientBacklog(bytes) => write!(
                f,
                "the answer ({bytes} bytes) was dropped: this client is not reading its \
                 answers fast enough, and others already wait for room"
            ),
        }
    }
}

impl ToRpcError for SessionError {
    fn to_rpc_error(&self) -> RpcError {
        let code = match self {
            SessionError::TooManyInFlight(_)
            | SessionError::TooManySubscriptions(_)
            | SessionError::ClientBacklog(_) => codes::OVERLOADED,
            SessionError::ClientDidNotAnswer(_) => codes::REQUEST_TIMEOUT,
            SessionError::ShuttingDown => codes::GATEWAY_UNAVAILABLE,
            SessionError::TooLarge { .. }
            | SessionError::DuplicateId
            | SessionError::IdTooLong(_) => codes::INVALID_REQUEST,
            SessionError::UnreadableResponse(_)
            | SessionError::ListingTooLarge { .. }
            | SessionError::ClientUnavailable
            | SessionError::ClientDisconnected
            | SessionError::NoClientSession => codes::INTERNAL_ERROR,
        };
        RpcError::new(code, self.to_string())
    }
}

/// The router's link to the gateway is not usable.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayError {
    /// The gateway could not be reached (or refused the handshake).
    GatewayUnreachable {
        /// The gateway URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection to the gateway closed while the request was pending.
    Disconnected {
        /// Why, if known.
        reason: String,
    },
    /// A new link is up and the host's session is being replayed on it: the host's
    /// requests wait for that.
    Replaying,
    /// The gateway's response exceeded the router's `max_message_bytes` and was
    /// dropped (the link stays up).
    ResponseTooLarge {
        /// The configured bound.
        limit: usize,
    },
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::GatewayUnreachable { url, reason } => {
                write!(f, "gateway {url} unreachable: {reason}")
            }
            RelayError::Disconnected { reason } => {
                write!(f, "connection to the gateway closed: {reason}")
            }
            RelayError::Replaying => write!(
                f,
                "the router reconnected to the gateway and is replaying the session on the \
                 new link; try again shortly"
            ),
            RelayError::ResponseTooLarge { limit } => write!(
                f,
                "the gateway's response is larger than {limit} bytes (the router's max_message_bytes); dropped"
            ),
        }
    }
}

impl ToRpcError for RelayError {
    fn to_rpc_error(&self) -> RpcError {
        let code = match self {
            RelayError::ResponseTooLarge { .. } => codes::INTERNAL_ERROR,
            _ => codes::GATEWAY_UNAVAILABLE,
        };
        RpcError::new(code, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_maps_to_its_code() {
        assert_eq!(
            RouteError::UnknownMethod("x".into()).to_rpc_error().code,
            codes::METHOD_NOT_FOUND
        );
        assert_eq!(
            RouteError::UnknownTool("a.b".into()).to_rpc_error().code,
            codes::INVALID_PARAMS
        );
        assert_eq!(
            RouteError::UnknownResource("u".into()).to_rpc_error().code,
            codes::RESOURCE_NOT_FOUND
        );
        // Its message goes into logs and spans: no credential of the URI's in it.
        assert_eq!(
            RouteError::UnknownResource("db://u:pw@h/x?k=v".into()).to_string(),
            "resource not found: db://REDACTED@h/x?k=REDACTED"
        );
        let timeout = |waiting_for_client| {
            BackendError::Timeout {
                backend: "b".into(),
                after_ms: 5,
                waiting_for_client,
            }
            .to_rpc_error()
        };
        let t = timeout(false);
        assert_eq!(t.code, codes::REQUEST_TIMEOUT);
        assert_eq!(t.data.unwrap()["backend"], "b");
        assert_eq!(t.message, "backend \"b\" did not answer within 5 ms");
        let t = timeout(true);
        assert_eq!(t.code, codes::REQUEST_TIMEOUT);
        assert!(t
            .message
            .ends_with("waited for the client's answer to a request of its own"));
        let e = BackendError::Exited {
            backend: "fs".into(),
            status: "exit status: 3".into(),
        }
        .to_rpc_error();
        assert_eq!(e.code, codes::BACKEND_UNAVAILABLE);
        assert!(e.message.contains("\"fs\"") && e.message.contains("exit status: 3"));
        assert_eq!(
            SessionError::TooManyInFlight(4).to_rpc_error().code,
            codes::OVERLOADED
        );
        let e = SessionError::TooManySubscriptions(2).to_rpc_error();
        assert_eq!(e.code, codes::OVERLOADED);
        assert!(e.message.contains("limit 2"), "{}", e.message);
        assert_eq!(
            RelayError::Disconnected { reason: "x".into() }
                .to_rpc_error()
                .code,
            codes::GATEWAY_UNAVAILABLE
        );
        let e = RelayError::ResponseTooLarge { limit: 9 }.to_rpc_error();
        assert_eq!(e.code, codes::INTERNAL_ERROR);
        assert!(e.message.contains("larger than 9 bytes"), "{}", e.message);
        let e = SessionError::UnreadableResponse("parse error: x".into()).to_rpc_error();
        assert_eq!(e.code, codes::INTERNAL_ERROR);
        assert!(e.message.contains("parse error: x"), "{}", e.message);
        let e = BackendError::InvalidResponse {
            backend: "fs".into(),
            reason: "parse error: y".into(),
        }
        .to_rpc_error();
        assert_eq!(e.code, codes::INTERNAL_ERROR);
        assert_eq!(e.data.unwrap()["kind"], "invalid_response");
    }
}
