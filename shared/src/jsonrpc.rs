//! JSON-RPC 2.0 message model for a transparent relay.
//!
//! A [`Message`] keeps the whole JSON object it was parsed from (in its original key
//! order, thanks to serde_json's `preserve_order`), so relaying a message never drops or
//! reorders fields the bridge does not understand. The bridge only looks at `id`,
//! `method`, `params` (and `params._meta`), `result` and `error`.
//!
//! The W3C trace context in `params._meta` (`traceparent`, `tracestate`) is held
//! beside the maps rather than in them ([`Message::trace_context`],
//! [`Message::set_trace_context`]; parsed in one pass by the `de` module) and written
//! back at its place: every traced message carries it, and building a map for it was
//! a third of the gateway's tracing cost for an unsampled request
//! (docs/benchmark.md "Tracing").
//!
//! [`Message::parse`] classifies a line as request, notification or response, and turns
//! anything else into a [`Rejection`]: the JSON-RPC error to answer with, carrying the
//! request's id whenever it can be read (see [`sniff_id`] for text that is not valid
//! JSON).

use serde_json::{Map, Number, Value};
use std::fmt;

use crate::error::{codes, RpcError};

mod brief;
mod de;
#[cfg(test)]
mod fuzz;
mod reply;
mod sniff;

pub use brief::Brief;
pub use reply::{Answer, Reply};
pub use sniff::{sniff, Sniffed, Sniffer, MAX_SNIFFED_ID_BYTES};

/// A JSON-RPC request id, exactly as the peer sent it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Id {
    /// A numeric id (kept as the exact JSON number).
    Number(Number),
    /// A string id.
    String(String),
}

impl Id {
    /// Reads an id from a JSON value; only strings and numbers are ids.
    pub fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::Number(n) => Some(Id::Number(n.clone())),
            Value::String(s) => Some(Id::String(s.clone())),
            _ => None,
        }
    }

    /// The id as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(n) => Value::Number(n.clone()),
            Id::String(s) => Value::String(s.clone()),
        }
    }

    /// The id as an unsigned integer, when it is one (the bridge's own ids are).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Id::Number(n) => n.as_u64(),
            Id::String(_) => None,
        }
    }
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// What kind of JSON-RPC message a [`Message`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and exactly one of `result` / `error`.
    Response,
}

/// A parsed JSON-RPC message that remembers every field it arrived with.
#[derive(Clone, Debug)]
pub struct Message {
    kind: Kind,
    obj: Map<String, Value>,
    /// Trace context written into `params._meta` at serialisation
    /// ([`Message::set_trace_context`]).
    trace: Option<Box<TraceContext>>,
    /// `params._meta` may hold a string `traceparent` of its own: the message was built
    /// from values, or its `params` were handed out mutably. False after
    /// [`Message::parse`], which takes it out (so reading none costs nothing).
    map_may_hold_trace: bool,
    /// Length of the text the message was parsed from (0 when built from values): the
    /// first guess at the size of its serialisation, so that writing it rarely grows the
    /// buffer (each growth is a reallocation and a copy of everything written so far).
    size_hint: usize,
    /// Whether the text it was parsed from still describes it, and how
    /// ([`Message::to_text`]).
    source: Source,
    /// The text it was parsed from, when kept ([`Message::parse_owned`]).
    kept: Option<Box<Kept>>,
}

/// The text a [`Message`] was parsed from ([`Message::parse_owned`]), and where the
/// parse met the keys whose values the bridge may write over (so that
/// [`Message::to_text`] need not scan the text for them). Boxed: a `Message` is moved
/// by value through the request path, and every byte it grows makes those moves
/// dearer (16 more bytes made them `memcpy` calls, +430 instructions per gateway
/// request under callgrind).
#[derive(Clone, Debug)]
struct Kept {
    bytes: Vec<u8>,
    keys: de::KeyEnds,
    /// Read by [`Message::parse_relayed`]: `params` holds only `name`, `uri` and
    /// `_meta`, and the text is what holds the rest.
    lean: bool,
}

/// How much the text a [`Message`] was parsed from still tells of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Built from values, or changed since it was parsed in a way [`Edits`] does not
    /// follow: only serialisation gives its text.
    Lost,
    /// The text, whether it has a key twice in the message's object, `params` or
    /// `params._meta` (then it is not sent as it is: the bridge acted on the last one,
    /// a receiver might take the first or refuse it), and what has changed since.
    Text { repeated: bool, edits: Edits },
}

/// The changes since the parse that the text can take by replacing or inserting a few
/// bytes (see [`Message::to_text`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Edits {
    /// A new value of the top-level `id` (the gateway's id mapping).
    id: bool,
    /// A new string `params.name` (the gateway's namespaces).
    name: bool,
    /// A trace context set ([`Message::set_trace_context`]).
    trace: bool,
}

/// Equal when they hold the same message: how either was written (`size_hint`) does not
/// count.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.obj == other.obj
            && self.trace == other.trace
            && self.map_may_hold_trace == other.map_may_hold_trace
    }
}

/// The W3C trace context of `params._meta`: read there by [`Message::parse`], or set
/// by [`Message::set_trace_context`]; written back there by [`Message::to_json`].
#[derive(Clone, Debug, PartialEq)]
struct TraceContext {
    traceparent: String,
    /// `None`: no `tracestate` (one in the map is not written either).
    tracestate: Option<String>,
    /// The places of the two keys among all of `_meta`'s keys, as parsed; `None`:
    /// after the last key.
    parent_at: Option<usize>,
    state_at: Option<usize>,
}

/// Requests of one refused batch answered under their ids, at most: the answers to a
/// batch cannot be much longer than the batch (about 130 bytes each, ~16 KiB for these
/// together, ~30 KiB when the answers say how many more there were), whatever is in
/// it. Requests beyond get no answer; the answers say how many.
pub const MAX_BATCH_ANSWERS: usize = 128;

/// Why a line could not be accepted, and what to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The id of the offending request, when it could be read.
    pub id: Option<Id>,
    /// The error to send back.
    pub error: RpcError,
    /// False when the bad message was itself a response: a response must never be
    /// answered, so the receiver only logs it.
    pub reply: bool,
    /// An object with an id but neither `method` nor `result`/`error`: a request
    /// without its method, or a response without its outcome. The receiver that has a
    /// request of its own pending under that id takes it for the latter.
    pub no_outcome: bool,
    /// A batch (a JSON array): the ids of its requests, each answered with the error
    /// (`None`: an element that is not an object, or an id of no valid type, answered
    /// with id `null`, as JSON-RPC says). MCP 2025-03-26 asked receivers to take
    /// batches and 2025-06-18 removed them: the bridge refuses them, but never leaves a
    /// request in one unanswered. Notifications and responses in it get nothing.
    pub batch: Option<Vec<Option<Id>>>,
}

impl Rejection {
    fn new(id: Option<Id>, code: i64, message: impl Into<String>) -> Self {
        Rejection {
            id,
            error: RpcError::new(code, message),
            reply: true,
            no_outcome: false,
            batch: None,
        }
    }

    /// The rejection of text that could not be read as JSON (or UTF-8): the id and
    /// kind are what [`sniff`] reads of it; a response or a notification is not
    /// answered.
    pub fn unreadable(bytes: &[u8], code: i64, message: impl Into<String>) -> Self {
        let seen = sniff(bytes);
        Rejection::sniffed(seen, code, message)
    }

    /// [`Rejection::unreadable`] for what [`sniff`] (or a [`Sniffer`]) found.
    pub fn sniffed(seen: Sniffed, code: i64, message: impl Into<String>) -> Self {
        Rejection {
            reply: seen.answerable(),
            id: seen.id,
            error: RpcError::new(code, message),
            no_outcome: false,
            batch: None,
        }
    }

    /// The id of the request a rejected response was answering, if it could be read:
    /// that request should fail now rather than wait out its timeout (the receiver
    /// sends its sender an error response with this id, [`Rejection::reply`] being
    /// false).
    pub fn answered_id(&self) -> Option<&Id> {
        if self.reply {
            None
        } else {
            self.id.as_ref()
        }
    }

    /// The error response to send back for this rejection.
    pub fn to_response(&self) -> Message {
        Message::error_response(self.id.clone(), self.error.clone())
    }

    /// The text to send back: [`Rejection::to_response`]'s, or for a batch an array of
    /// one error response per request in it.
    pub fn reply_text(&self) -> String {
        match &self.batch {
            None => self.to_response().to_json(),
            Some(ids) => {
                let answers: Vec<String> = ids
                    .iter()
                    .map(|id| Message::error_response(id.clone(), self.error.clone()).to_json())
                    .collect();
                format!("[{}]", answers.join(","))
            }
        }
    }
}

/// The text of a line, or the rejection of a line that is not UTF-8.
fn utf8(bytes: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(bytes).map_err(|_| {
        Rejection::unreadable(
            bytes,
            codes::PARSE_ERROR,
            "parse error: message is not valid UTF-8",
        )
    })
}

/// What type a JSON value is, without its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Tag {
    fn of(v: &Value) -> Tag {
        match v {
            Value::Null => Tag::Null,
            Value::Bool(_) => Tag::Bool,
            Value::Number(_) => Tag::Number,
            Value::String(_) => Tag::String,
            Value::Array(_) => Tag::Array,
            Value::Object(_) => Tag::Object,
        }
    }
}

/// The fields of a message's object that decide its kind or its rejection: the one
/// place the rules are written, for [`Message::from_value`] and [`Brief::parse`].
/// `None`: the key is absent (a repeated key counts with its last value).
#[derive(Debug)]
struct Shape {
    jsonrpc_is_2_0: bool,
    /// The type of `id`, and the id when it is one.
    raw_id: Option<(Tag, Option<Id>)>,
    method: Option<Tag>,
    params: Option<Tag>,
    result: Option<Tag>,
    error: Option<Tag>,
}

impl Shape {
    /// The rejection of a batch; with its `items` when they were read, so that each
    /// request among them is answered ([`Rejection::batch`]).
    fn batch(items: Option<&[Value]>) -> Rejection {
        let mut rej = Rejection::new(
            None,
            codes::INVALID_REQUEST,
            "invalid request: JSON-RPC batches are not supported (removed in MCP 2025-06-18)",
        );
        // An empty batch is answered with the one error (JSON-RPC), as any other
        // invalid request.
        if let Some(items) = items.filter(|i| !i.is_empty()) {
            let mut ids: Vec<Option<Id>> = Vec::new();
            let mut unreadable = false;
            let mut beyond = 0usize;
            for item in items {
                let id = match item {
                    Value::Object(o) if o.contains_key("method") => {
                        // A notification (no id) is not answered.
                        match o.get("id") {
                            None => continue,
                            Some(v) => Id::from_value(v),
                        }
                    }
                    // A response is never answered.
                    Value::Object(o) if o.contains_key("result") || o.contains_key("error") => {
                        continue
                    }
                    Value::Object(o) => o.get("id").and_then(Id::from_value),
                    _ => None,
                };
                match id {
                    // Elements without a readable id get one answer between them (it
                    // could not tell them apart): a batch of a million `1`s is not
                    // answered a million times.
                    None => unreadable = true,
                    Some(id) if ids.len() < MAX_BATCH_ANSWERS => ids.push(Some(id)),
                    Some(_) => beyond += 1,
                }
            }
            if unreadable {
                ids.push(None);
            }
            if beyond > 0 {
                // Said in every answer (and in the log line): the client knows why the
                // rest get none.
                rej.error.message.push_str(&format!(
                    "; only the first {MAX_BATCH_ANSWERS} requests of a batch are answered, \
                     {beyond} more are not"
                ));
            }
            rej.reply = !ids.is_empty();
            rej.batch = Some(ids);
        }
        rej
    }

    fn not_an_object() -> Rejection {
        Rejection::new(
            None,
            codes::INVALID_REQUEST,
            "invalid request: a JSON-RPC message must be a JSON object",
        )
    }

    /// The message's kind and id, or why it is rejected.
    fn classify(self) -> Result<(Kind, Option<Id>), Rejection> {
        let has_raw_id = self.raw_id.is_some();
        let id = self.raw_id.and_then(|(_, id)| id);
        // A notification (a `method` and no `id` key) is never answered, valid or not.
        let notification = self.method.is_some() && !has_raw_id;
        let invalid = |id: Option<Id>, what: &str| {
            let mut r = Rejection::new(
                id,
                codes::INVALID_REQUEST,
                format!("invalid request: {what}"),
            );
            r.reply = !notification;
            Err(r)
        };
        let (has_result, has_error) = (self.result.is_some(), self.error.is_some());
        if !self.jsonrpc_is_2_0 {
            let looks_like_response = self.method.is_none() && (has_result || has_error);
            let mut r = Rejection::new(
                id,
                codes::INVALID_REQUEST,
                "invalid request: \"jsonrpc\" must be \"2.0\"",
            );
            r.reply = !looks_like_response && !notification;
            return Err(r);
        }
        if has_raw_id && id.is_none() {
            let looks_like_response = self.method.is_none();
            let mut r = Rejection::new(
                None,
                codes::INVALID_REQUEST,
                "invalid request: \"id\" must be a string or a number",
            );
            r.reply = !looks_like_response;
            return Err(r);
        }
        match self.method {
            Some(Tag::String) => {
                if self
                    .params
                    .is_some_and(|p| p != Tag::Object && p != Tag::Array)
                {
                    return invalid(id, "\"params\" must be an object");
                }
                let kind = if id.is_some() {
                    Kind::Request
                } else {
                    Kind::Notification
                };
                Ok((kind, id))
            }
            Some(_) => invalid(id, "\"method\" must be a string"),
            None => {
                if id.is_some() && has_result != has_error {
                    if has_error && self.error != Some(Tag::Object) {
                        let mut r = Rejection::new(
                            id,
                            codes::INVALID_REQUEST,
                            "invalid response: \"error\" must be an object",
                        );
                        r.reply = false;
                        return Err(r);
                    }
                    return Ok((Kind::Response, id));
                }
                let mut r = Rejection::new(
                    id,
                    codes::INVALID_REQUEST,
                    "invalid request: no \"method\", and not a response with an id and exactly one of \"result\" or \"error\"",
                );
                r.reply = !(has_result || has_error);
                r.no_outcome = r.reply && r.id.is_some();
                Err(r)
            }
        }
    }
}

impl Message {
    /// Parses one framed message (one line of text, without its newline).
    pub fn parse(bytes: &[u8]) -> Result<Message, Rejection> {
        Self::parse_with_keys(bytes).map(|(msg, _)| msg)
    }

    /// [`Message::parse`], and where the keys the bridge may edit end in the text.
    fn parse_with_keys(bytes: &[u8]) -> Result<(Message, de::KeyEnds), Rejection> {
        Self::parse_as(bytes, false)
    }

    /// [`Message::parse_with_keys`], lean or whole ([`Message::parse_relayed`]).
    fn parse_as(bytes: &[u8], lean: bool) -> Result<(Message, de::KeyEnds), Rejection> {
        // The whole line is checked once, and the parser then reads a `&str`: reading
        // bytes, serde_json checks every string on its own, which cost ~3.5k
        // instructions per forwarded request in the gateway against ~0.2k for one pass
        // (docs/benchmark.md, "Changes made").
        let text = utf8(bytes)?;
        let parsed = if lean {
            de::parse_lean(text)
        } else {
            de::parse(text)
        };
        let (value, taken) = parsed.map_err(|e| {
            Rejection::unreadable(bytes, codes::PARSE_ERROR, format!("parse error: {e}"))
        })?;
        let mut msg = Message::from_value(value)?;
        msg.trace = taken.trace.map(Box::new);
        msg.map_may_hold_trace = taken.left_in_map;
        msg.size_hint = bytes.len();
        msg.source = Source::Text {
            repeated: taken.repeated,
            edits: Edits::default(),
        };
        Ok((msg, taken.keys))
    }

    /// [`Message::parse`], keeping `bytes` for [`Message::to_text`].
    pub fn parse_owned(bytes: Vec<u8>) -> Result<Message, Rejection> {
        let (mut msg, keys) = Message::parse_with_keys(&bytes)?;
        msg.kept = Some(Box::new(Kept {
            bytes,
            keys,
            lean: false,
        }));
        Ok(msg)
    }

    /// [`Message::parse_owned`] for a relay that sends the text on: of an object
    /// `params` only `name`, `uri` and `_meta` are built (the rest, a tool call's
    /// `arguments` above all, is checked as JSON but not built). It accepts and rejects
    /// what [`Message::parse`] does, with the same [`Rejection`].
    ///
    /// Such a message reads as the whole one through [`Message::kind`], `id`,
    /// `method`, `param_str("name")`, `param_str("uri")`, [`Message::meta`], the
    /// trace context, `result` and `error`, and is sent as the whole one by
    /// [`Message::to_text`] and [`Message::to_json`]. [`Message::params`] and
    /// [`Message::as_object`] show only what was built: read those on
    /// [`Message::whole`]. Every change but the id, `params.name` and the trace context
    /// (which [`Message::to_text`] writes over the text) first parses the message
    /// whole, as does a text that must be written anew.
    pub fn parse_relayed(bytes: Vec<u8>) -> Result<Message, Rejection> {
        let (mut msg, keys) = Message::parse_as(&bytes, true)?;
        msg.kept = Some(Box::new(Kept {
            bytes,
            keys,
            lean: true,
        }));
        Ok(msg)
    }

    /// Whether `params` holds only part of the message's ([`Message::parse_relayed`]).
    pub fn is_lean(&self) -> bool {
        self.kept.as_ref().is_some_and(|k| k.lean)
    }

    /// The message with all of its `params` built: itself unless it was read by
    /// [`Message::parse_relayed`]; then its text parsed whole, with the same changes.
    pub fn whole(&self) -> Message {
        let mut m = self.clone();
        m.make_whole();
        m
    }

    /// [`Message::whole`], taking the message.
    pub fn into_whole(mut self) -> Message {
        self.make_whole();
        self
    }

    /// [`Message::whole`] in place.
    fn make_whole(&mut self) {
        let Some(k) = self.kept.as_mut().filter(|k| k.lean) else {
            return;
        };
        k.lean = false;
        let Ok((mut whole, keys)) = Message::parse_with_keys(&k.bytes) else {
            // The lean parse accepted the text, so the whole one does (`jsonrpc::fuzz`).
            debug_assert!(false, "a lean message's text did not parse whole");
            return;
        };
        k.keys = keys;
        // The changes a lean message takes: the id, `params.name`, the trace context.
        if let Source::Text { edits, .. } = self.source {
            if edits.id {
                if let (Some(v), Some(id)) = (field_mut(&mut whole.obj, "id"), self.id()) {
                    *v = id.to_value();
                }
            }
            if edits.name {
                if let Some(name) = self.param_str("name") {
                    let name = name.to_owned();
                    if let Some(Value::Object(p)) = field_mut(&mut whole.obj, "params") {
                        if let Some(v) = field_mut(p, "name") {
                            *v = Value::String(name);
                        }
                    }
                }
            }
        }
        // The whole parse is the one that knows (the lean one sees the same repeats).
        if let (
            Source::Text { repeated, .. },
            Source::Text {
                repeated: whole, ..
            },
        ) = (&mut self.source, whole.source)
        {
            *repeated = whole;
        }
        self.obj = whole.obj;
    }

    /// Classifies an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Message, Rejection> {
        let obj = match value {
            Value::Object(obj) => obj,
            Value::Array(items) => return Err(Shape::batch(Some(&items))),
            _ => return Err(Shape::not_an_object()),
        };
        let tag = |k: &str| field(&obj, k).map(Tag::of);
        let shape = Shape {
            jsonrpc_is_2_0: field(&obj, "jsonrpc").and_then(Value::as_str) == Some("2.0"),
            raw_id: field(&obj, "id").map(|v| (Tag::of(v), Id::from_value(v))),
            method: tag("method"),
            params: tag("params"),
            result: tag("result"),
            error: tag("error"),
        };
        let (kind, _) = shape.classify()?;
        Ok(Message::built(kind, obj))
    }

    /// A message of `kind` made of `obj`, with no text behind it.
    fn built(kind: Kind, obj: Map<String, Value>) -> Message {
        Message {
            kind,
            obj,
            trace: None,
            map_may_hold_trace: true,
            size_hint: 0,
            source: Source::Lost,
            kept: None,
        }
    }

    /// A new request.
    pub fn request(id: Id, method: &str, params: Option<Value>) -> Message {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), "2.0".into());
        obj.insert("id".into(), id.to_value());
        obj.insert("method".into(), method.into());
        if let Some(p) = params {
            obj.insert("params".into(), p);
        }
        Message::built(Kind::Request, obj)
    }

    /// A new notification.
    pub fn notification(method: &str, params: Option<Value>) -> Message {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), "2.0".into());
        obj.insert("method".into(), method.into());
        if let Some(p) = params {
            obj.insert("params".into(), p);
        }
        Message::built(Kind::Notification, obj)
    }

    /// A success response.
    pub fn response(id: Id, result: Value) -> Message {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), "2.0".into());
        obj.insert("id".into(), id.to_value());
        obj.insert("result".into(), result);
        Message::built(Kind::Response, obj)
    }

    /// An error response. `id` is `None` only when the request's id could not be read.
    pub fn error_response(id: Option<Id>, error: RpcError) -> Message {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), "2.0".into());
        obj.insert("id".into(), id.map(|i| i.to_value()).unwrap_or(Value::Null));
        obj.insert("error".into(), error.to_value());
        Message::built(Kind::Response, obj)
    }

    /// The message's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The id (requests and responses).
    pub fn id(&self) -> Option<Id> {
        field(&self.obj, "id").and_then(Id::from_value)
    }

    /// Replaces the id, keeping the field where it was.
    pub fn set_id(&mut self, id: &Id) {
        match field_mut(&mut self.obj, "id") {
            Some(v) => {
                *v = id.to_value();
                self.edited(|e| e.id = true);
            }
            None => {
                self.make_whole();
                self.source = Source::Lost;
                self.obj.insert("id".into(), id.to_value());
            }
        }
    }

    /// Notes a change that the parsed text can take ([`Edits`]).
    fn edited(&mut self, f: impl FnOnce(&mut Edits)) {
        if let Source::Text { edits, .. } = &mut self.source {
            f(edits);
        }
    }

    /// The method (requests and notifications).
    pub fn method(&self) -> Option<&str> {
        field(&self.obj, "method").and_then(Value::as_str)
    }

    /// Replaces the method name.
    pub fn set_method(&mut self, method: &str) {
        self.make_whole();
        self.source = Source::Lost;
        self.obj.insert("method".into(), method.into());
    }

    /// The params, if any.
    pub fn params(&self) -> Option<&Value> {
        field(&self.obj, "params")
    }

    /// The params object, created empty when absent (or not an object).
    pub fn params_mut(&mut self) -> &mut Map<String, Value> {
        self.make_whole();
        self.map_may_hold_trace = true;
        self.source = Source::Lost;
        let p = self
            .obj
            .entry("params")
            .or_insert_with(|| Value::Object(Map::new()));
        if !p.is_object() {
            *p = Value::Object(Map::new());
        }
        p.as_object_mut().expect("params is an object")
    }

    /// Sets `params.name` (a tool's or a prompt's), creating `params` as
    /// [`Message::params_mut`] does when it is not an object.
    pub fn set_param_name(&mut self, name: &str) {
        let current = match field_mut(&mut self.obj, "params") {
            Some(Value::Object(p)) => field_mut(p, "name"),
            _ => None,
        };
        match current {
            Some(v) => {
                *v = Value::String(name.to_owned());
                self.edited(|e| e.name = true);
            }
            None => {
                self.params_mut().insert("name".into(), name.into());
            }
        }
    }

    /// A string field of `params` (of a lean message, `name` and `uri` only:
    /// [`Message::parse_relayed`]).
    pub fn param_str(&self, key: &str) -> Option<&str> {
        debug_assert!(
            !self.is_lean() || de::LEAN_PARAMS.contains(&key),
            "params.{key} of a lean message"
        );
        field(self.params()?.as_object()?, key)?.as_str()
    }

    /// `params._meta`, when present. A parsed message's string `traceparent` (and the
    /// `tracestate` beside it) are not in this map: see [`Message::trace_context`].
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        field(self.params()?.as_object()?, "_meta")?.as_object()
    }

    /// A copy of `params._meta` as it will be sent: [`Message::meta`] with the trace
    /// context keys in their places (for building other requests from this one).
    pub fn meta_with_trace(&self) -> Option<Map<String, Value>> {
        let Some(t) = &self.trace else {
            return self.meta().cloned();
        };
        match self.params() {
            // Positional params carry no `_meta`: the context is not sent.
            Some(p) if !p.is_object() => None,
            _ => Some(meta_map(self.meta(), t)),
        }
    }

    /// `params._meta`, created when absent; existing keys are kept. A trace context held
    /// beside the map (parsed, or set) is put into it first, at its places, so that
    /// what is edited here is what is sent.
    pub fn meta_mut(&mut self) -> &mut Map<String, Value> {
        self.make_whole();
        self.source = Source::Lost;
        if let Some(t) = self.trace.take() {
            let merged = meta_map(self.meta(), &t);
            self.params_mut()
                .insert("_meta".into(), Value::Object(merged));
        }
        let meta = self
            .params_mut()
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        meta.as_object_mut().expect("_meta is an object")
    }

    /// The result of a success response.
    pub fn result(&self) -> Option<&Value> {
        field(&self.obj, "result")
    }

    /// The error object of an error response.
    pub fn error(&self) -> Option<&Value> {
        field(&self.obj, "error")
    }

    /// Takes the result (or error) payload out of a response, as `Ok(result)` or
    /// `Err(error object)`.
    pub fn into_outcome(mut self) -> Result<Value, Value> {
        self.make_whole();
        match self.obj.remove("result") {
            Some(r) => Ok(r),
            None => Err(self.obj.remove("error").unwrap_or(Value::Null)),
        }
    }

    /// Has `params._meta` carry this W3C trace context when the message is serialised:
    /// `traceparent` replaces any there (or is added last), `tracestate` likewise, and an
    /// empty `tracestate` removes the one there. Other keys and the order of every key
    /// are kept — what editing `_meta` as a map would do, without building the maps
    /// (for every traced message; docs/benchmark.md "Tracing"). `params` is created
    /// when absent; positional (array) `params` have no room for `_meta` and are left
    /// as they are. [`Message::meta`] does not show this context;
    /// [`Message::trace_context`] does.
    ///
    /// Setting the context a parsed message already carries is no change: a hop that
    /// passes an unsampled trace on (its spans are its parent's context) then sends
    /// the text it read as it was (docs/benchmark.md "Tracing").
    pub fn set_trace_context(&mut self, traceparent: &str, tracestate: &str) {
        let tracestate = (!tracestate.is_empty()).then_some(tracestate);
        if let Some(t) = &self.trace {
            if t.traceparent == traceparent && t.tracestate.as_deref() == tracestate {
                return;
            }
        }
        self.edited(|e| e.trace = true);
        match &mut self.trace {
            // Parsed with a context: the new one takes its places (and its buffers).
            Some(t) => {
                t.traceparent.clear();
                t.traceparent.push_str(traceparent);
                match (&mut t.tracestate, tracestate) {
                    (Some(old), Some(new)) => {
                        old.clear();
                        old.push_str(new);
                    }
                    (old, new) => *old = new.map(str::to_owned),
                }
            }
            None => {
                self.trace = Some(Box::new(TraceContext {
                    traceparent: traceparent.to_owned(),
                    tracestate: tracestate.map(str::to_owned),
                    parent_at: None,
                    state_at: None,
                }))
            }
        }
    }

    /// The `traceparent` and `tracestate` strings of `params._meta`, if it has a
    /// `traceparent` (as parsed, or as set by [`Message::set_trace_context`]).
    pub fn trace_context(&self) -> Option<(&str, Option<&str>)> {
        if let Some(t) = &self.trace {
            return Some((&t.traceparent, t.tracestate.as_deref()));
        }
        if !self.map_may_hold_trace {
            return None;
        }
        // Built from values, or edited since parsed: the keys may be in the map.
        let meta = self.meta()?;
        let parent = meta.get("traceparent")?.as_str()?;
        Some((parent, meta.get("tracestate").and_then(Value::as_str)))
    }

    /// Serialises the message as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        String::from_utf8(self.to_json_bytes()).expect("JSON text is UTF-8")
    }

    /// [`Message::to_json`] as bytes, for a byte stream (a backend's stdin): no UTF-8
    /// check of the result. The buffer has room for a line terminator after the text.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        if self.is_lean() {
            return self.whole().to_json_bytes();
        }
        let trace_len = self.trace.as_ref().map_or(0, |t| {
            TRACE_KEYS_BYTES + t.traceparent.len() + t.tracestate.as_ref().map_or(0, String::len)
        });
        let mut out = Vec::with_capacity(
            self.size_hint.max(MIN_WRITE_CAPACITY) + WRITE_SLACK_BYTES + trace_len + 1,
        );
        match &self.trace {
            None => {
                serde_json::to_writer(&mut out, &self.obj).expect("a JSON map always serialises")
            }
            Some(t) => write_with_trace(&mut out, &self.obj, t),
        }
        out
    }

    /// The message's text, given `text`, the bytes it was parsed from (only a length
    /// check guards that: private, reached through the text [`Message::parse_owned`]
    /// keeps, [`Message::to_text`], with `keys`, where the parse met the keys it may
    /// change; without them the text is scanned for them, [`find_places`]). Unchanged since,
    /// it is that text as it is (the peer's bytes, not a re-serialisation). Changed only
    /// in its `id` ([`Message::set_id`]), its `params.name`
    /// ([`Message::set_param_name`]) and its trace context
    /// ([`Message::set_trace_context`]), it is that text with those values written over
    /// the old ones; a context new to the text goes in as the first key of `params`
    /// (`"_meta":{…}`, when `params` has no `_meta`) or of the message
    /// (`"params":{"_meta":{…}}`). That costs reading the values changed (or a scan of
    /// the keys up to the last one changed) instead of writing the whole message
    /// (callgrind: docs/benchmark.md, "Instructions per request"). Anything else (a changed key the text has twice or
    /// spells with escapes, a `tracestate` to drop, a `_meta` without a context, other
    /// changes, or `text` of another length than the one parsed) is
    /// [`Message::to_json`]. The result reads back as what `to_json` gives; key order,
    /// spacing and number spelling may differ, and line breaks between the text's
    /// tokens are kept: for a line-framed stream, [`Message::to_text_bytes`].
    fn over_checked(&self, text: &[u8], keys: Option<&de::KeyEnds>) -> String {
        // The one UTF-8 check (the parse has checked the text already; the text is cut
        // only next to ASCII bytes: `{`, `,`, a value's first and last byte).
        match self.over(text, keys).map(String::from_utf8) {
            Some(Ok(s)) => s,
            _ => self.to_json(),
        }
    }

    /// [`Message::over_checked`] with the text scanned for its keys (the tests compare
    /// it with the keys the parse gave).
    #[cfg(test)]
    fn to_json_over(&self, text: &[u8]) -> String {
        self.over_checked(text, None)
    }

    /// The text to relay: over the text kept by [`Message::parse_owned`] as
    /// `to_json_over` describes (the text itself, or with the bridge's changes written
    /// over it); [`Message::to_json`] when none was kept, when the text has a key twice
    /// in the message, `params` or `params._meta`, or when the changes are of another
    /// kind.
    pub fn to_text(&self) -> String {
        match &self.kept {
            Some(k) => self.over_checked(&k.bytes, Some(&k.keys)),
            None => self.to_json(),
        }
    }

    /// [`Message::to_text`] as bytes for a line-framed stream (a backend's stdin): always
    /// one line (a kept text with a line break between its tokens, valid JSON, is
    /// written anew), no UTF-8 check of the result, and room for a line terminator
    /// after the text.
    pub fn to_text_bytes(&self) -> Vec<u8> {
        let kept = self.kept.as_deref().filter(|k| is_one_line(&k.bytes));
        match kept.and_then(|k| self.over(&k.bytes, Some(&k.keys))) {
            Some(b) => b,
            None => self.to_json_bytes(),
        }
    }

    /// The text over `text` (unchecked bytes, with room for one more); `None` when only
    /// serialisation will do. `keys`: where the parse of `text` met the keys (else the
    /// text is scanned for them).
    fn over(&self, text: &[u8], keys: Option<&de::KeyEnds>) -> Option<Vec<u8>> {
        if text.len() != self.size_hint {
            return None;
        }
        let Source::Text {
            repeated: false,
            edits,
        } = self.source
        else {
            return None;
        };
        if edits == Edits::default() {
            let mut out = Vec::with_capacity(text.len() + 1);
            out.extend_from_slice(text);
            return Some(out);
        }
        self.splice(text, edits, keys)
    }

    /// The text with `edits` applied in place; see [`Message::over_checked`].
    /// With `keys` (where the parse met the keys), the places are read from there
    /// instead of a scan of the text ([`find_places`]).
    fn splice(&self, text: &[u8], edits: Edits, keys: Option<&de::KeyEnds>) -> Option<Vec<u8>> {
        // The context to write, and whether the text has one to write it over.
        let (trace, over_text) = match (&self.trace, edits.trace) {
            (_, false) => (None, false),
            // Keys the parse left in the map (unusual ones) are sorted out by `to_json`.
            (Some(_), true) if self.map_may_hold_trace => return None,
            (Some(t), true) => match (t.parent_at, t.state_at, &t.tracestate) {
                (None, None, _) => (Some(&**t), false),
                // The text's `tracestate` goes when the new context has none: `to_json`.
                (Some(_), Some(_), None) => return None,
                (Some(_), _, _) => (Some(&**t), true),
                (None, Some(_), _) => return None,
            },
            (None, true) => return None,
        };
        let params = self.params();
        let new_name = match (edits.name, params) {
            (false, _) => None,
            (true, Some(Value::Object(p))) => Some(field(p, "name")?.as_str()?),
            (true, _) => return None,
        };
        // A context new to the text goes into `params` when it is an object without
        // `_meta`, or as new `params` when there are none. Positional params take no
        // `_meta`, and a `_meta` of the message's own would need it written into it.
        let meta_in_params = match (trace.is_some() && !over_text, params) {
            (false, _) => false,
            (true, None) => false,
            (true, Some(Value::Object(p))) if field(p, "_meta").is_none() => true,
            (true, Some(_)) => return None,
        };
        let new_id = if edits.id {
            Some(field(&self.obj, "id")?)
        } else {
            None
        };
        let want = Want {
            id: edits.id,
            params_open: meta_in_params,
            name: edits.name,
            traceparent: over_text,
            tracestate: over_text && trace.is_some_and(|t| t.state_at.is_some()),
        };
        let found = match keys {
            Some(k) => k.places(text, want)?,
            None => find_places(text, want)?,
        };
        // What goes where, in the text's order: (start, end, what replaces the bytes
        // between). At most four parts; no buffer of their own (each would be an
        // allocation per message).
        let mut parts: [(usize, usize, Part); 4] = [(usize::MAX, 0, Part::None); 4];
        let mut n = 0;
        macro_rules! add {
            ($start:expr, $end:expr, $part:expr) => {{
                parts[n] = ($start, $end, $part);
                n += 1;
            }};
        }
        if let (Some(v), Some((start, end))) = (new_id, found.id) {
            add!(start, end, Part::Id(v));
        }
        if let (Some(name), Some((start, end))) = (new_name, found.name) {
            add!(start, end, Part::Str(name));
        }
        let mut extra = 0;
        if let (Some(t), true) = (trace, over_text) {
            let (start, end) = found.traceparent?;
            add!(start, end, Part::Str(&t.traceparent));
            match (found.tracestate, &t.tracestate) {
                (Some((start, end)), Some(state)) => add!(start, end, Part::Str(state)),
                // New to the text: after `traceparent`.
                (None, Some(state)) => add!(end, end, Part::StateAfter(state)),
                (_, None) => {}
            }
        } else if let Some(t) = trace {
            let at = if meta_in_params {
                found.params_open?
            } else {
                object_start(text)?
            };
            let mut rest = Scanner { b: text, i: at };
            rest.ws();
            let comma = rest.peek()? != b'}';
            extra = TRACE_KEYS_BYTES
                + t.traceparent.len()
                + t.tracestate.as_ref().map_or(0, String::len);
            add!(at, at, Part::Meta(t, meta_in_params, comma));
        }
        let parts = &mut parts[..n];
        parts.sort_unstable_by_key(|p| p.0);
        let mut out = Vec::with_capacity(text.len() + extra + WRITE_SLACK_BYTES + 1);
        let mut from = 0;
        for &(start, end, part) in parts.iter() {
            crate::bytes::append(&mut out, &text[from..start]);
            match part {
                Part::Id(v) => value(&mut out, v),
                Part::Str(s) => string(&mut out, s),
                Part::StateAfter(state) => {
                    out.push(b',');
                    string(&mut out, "tracestate");
                    out.push(b':');
                    string(&mut out, state);
                }
                Part::Meta(t, in_params, comma) => {
                    crate::bytes::append(
                        &mut out,
                        if in_params {
                            b"\"_meta\":"
                        } else {
                            b"\"params\":{\"_meta\":"
                        },
                    );
                    write_meta(&mut out, None, t);
                    if !in_params {
                        out.push(b'}');
                    }
                    if comma {
                        out.push(b',');
                    }
                }
                Part::None => {}
            }
            from = end;
        }
        crate::bytes::append(&mut out, &text[from..]);
        Some(out)
    }

    /// The underlying JSON object.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.obj
    }
}

/// Smallest buffer [`Message::to_json_bytes`] starts with (serde_json's own start).
const MIN_WRITE_CAPACITY: usize = 128;
/// Room beyond the parsed text's length for what routing changes (a longer `id`, a
/// progress token swapped for ours), so that it does not double the buffer.
const WRITE_SLACK_BYTES: usize = 32;
/// Room for the keys, quotes and commas of a trace context added to `params._meta`
/// (`,"_meta":{"traceparent":"…","tracestate":"…"}`).
const TRACE_KEYS_BYTES: usize = 48;

/// Maps with at most this many keys are searched key by key instead of by hash (see
/// [`field`]). JSON-RPC envelopes have 3–4 keys and MCP `params` usually 1–3.
const SCAN_MAX_KEYS: usize = 8;

/// `m.get(key)`, comparing the keys in order when the map is small. serde_json's maps
/// hash with the std `RandomState` (SipHash), which costs more than a few short string
/// comparisons; every routed message is looked up this way several times (callgrind:
/// see docs/benchmark.md, "Changes made because of these numbers"). A map holds each
/// key once, so the first match is the only one.
fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if m.len() <= SCAN_MAX_KEYS {
        m.iter().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        m.get(key)
    }
}

/// `v.get(key)` for an object `v`, searched as [`field`] searches (for the small
/// objects read on every response: `result`, `error`).
pub fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    field(v.as_object()?, key)
}

/// [`field`], mutably.
fn field_mut<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Value> {
    if m.len() <= SCAN_MAX_KEYS {
        m.iter_mut().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        m.get_mut(key)
    }
}

// Pieces of the JSON text `to_json` writes by hand when a trace context goes in.

/// A JSON string, as serde_json writes it. Text with nothing to escape (keys and the
/// trace context, nearly always) is copied in one piece: each `serde_json::to_writer`
/// call costs a serializer and a byte-by-byte escape loop (callgrind: see
/// docs/benchmark.md, "Changes made because of these numbers").
fn string(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        crate::bytes::append(out, s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("a string always serialises");
    }
}

/// Eight copies of a byte, for the word-at-a-time byte tests of [`needs_escape`] and
/// [`quote_or_backslash`].
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `w` that is `"` or `\\`. The lowest flagged byte is
/// exact (flags above it may be borrows, never flags below it).
fn quotes_or_backslashes(w: u64) -> u64 {
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let (quote, backslash) = (ONES * u64::from(b'"'), ONES * u64::from(b'\\'));
    zero(w ^ quote) | zero(w ^ backslash)
}

/// True when serde_json would escape a byte of `s`: exactly the control characters,
/// `"` and `\`. Eight bytes at a time (one word test instead of eight compares and
/// branches; a traceparent is 55 bytes).
fn needs_escape(s: &[u8]) -> bool {
    // Some byte of `w` is below `n` (exact for n ≤ 0x80; bytes ≥ 0x80 never match).
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS != 0;
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_ne_bytes(word.try_into().expect("chunks of 8"));
        if below(w, 0x20) || quotes_or_backslashes(w) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A key of an object, after a comma unless it is the `first`.
fn key(out: &mut Vec<u8>, first: &mut bool, k: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    string(out, k);
    out.push(b':');
}

fn value(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(out, v).expect("a JSON value always serialises");
}

/// One entry of `_meta` as it is sent: the map's own value, or a trace context string.
enum MetaItem<'a> {
    Value(&'a Value),
    Str(&'a str),
}

/// Calls `f` with each entry of `_meta` (the map `m`, if any) with the trace context `t`
/// in it, in order: the context's keys at the places they were parsed at, else instead
/// of the map's own copies, else last. The one place that decides the order, for
/// writing the text and for copies of the map.
fn meta_items<'a>(
    m: Option<&'a Map<String, Value>>,
    t: &'a TraceContext,
    mut f: impl FnMut(&'a str, MetaItem<'a>),
) {
    let put_parent = |f: &mut dyn FnMut(&'a str, MetaItem<'a>)| {
        f("traceparent", MetaItem::Str(&t.traceparent));
    };
    // A `tracestate` of `None` takes its place (and the map's copy) but gives nothing.
    let put_state = |f: &mut dyn FnMut(&'a str, MetaItem<'a>)| {
        if let Some(state) = &t.tracestate {
            f("tracestate", MetaItem::Str(state));
        }
    };
    let (mut parent, mut state) = (false, false);
    let mut keys = m.into_iter().flatten();
    // The place being filled, counting every key.
    let mut at = 0;
    loop {
        if !parent && t.parent_at == Some(at) {
            put_parent(&mut f);
            parent = true;
        } else if !state && t.state_at == Some(at) {
            put_state(&mut f);
            state = true;
        } else {
            let Some((k, v)) = keys.next() else { break };
            // The map's own copies give way to the context's, given once.
            match k.as_str() {
                "traceparent" if !parent => {
                    put_parent(&mut f);
                    parent = true;
                }
                "tracestate" if !state => {
                    put_state(&mut f);
                    state = true;
                }
                "traceparent" | "tracestate" => {}
                _ => f(k, MetaItem::Value(v)),
            }
        }
        at += 1;
    }
    if !parent {
        put_parent(&mut f);
    }
    if !state {
        put_state(&mut f);
    }
}

/// Writes `_meta` (the map `m`, if any) with the trace context `t` in it.
fn write_meta(out: &mut Vec<u8>, m: Option<&Map<String, Value>>, t: &TraceContext) {
    out.push(b'{');
    let mut first = true;
    meta_items(m, t, |k, item| {
        key(out, &mut first, k);
        match item {
            MetaItem::Value(v) => value(out, v),
            MetaItem::Str(s) => string(out, s),
        }
    });
    out.push(b'}');
}

/// `_meta` (the map `m`, if any) with the trace context `t` in it, as a map.
fn meta_map(m: Option<&Map<String, Value>>, t: &TraceContext) -> Map<String, Value> {
    let mut out = Map::new();
    meta_items(m, t, |k, item| {
        let v = match item {
            MetaItem::Value(v) => v.clone(),
            MetaItem::Str(s) => Value::String(s.to_owned()),
        };
        out.insert(k.to_owned(), v);
    });
    out
}

/// Writes `obj` as JSON with `t` in `params._meta` (see [`Message::set_trace_context`]).
fn write_with_trace(out: &mut Vec<u8>, obj: &Map<String, Value>, t: &TraceContext) {
    fn params(out: &mut Vec<u8>, p: Option<&Map<String, Value>>, t: &TraceContext) {
        out.push(b'{');
        let (mut first, mut done) = (true, false);
        for (k, v) in p.into_iter().flatten() {
            key(out, &mut first, k);
            if k == "_meta" {
                write_meta(out, v.as_object(), t);
                done = true;
            } else {
                value(out, v);
            }
        }
        if !done {
            key(out, &mut first, "_meta");
            write_meta(out, None, t);
        }
        out.push(b'}');
    }
    out.push(b'{');
    let (mut first, mut done) = (true, false);
    for (k, v) in obj {
        key(out, &mut first, k);
        match v {
            Value::Object(p) if k == "params" => params(out, Some(p), t),
            // Positional params (or any other value): no room for `_meta`.
            _ => value(out, v),
        }
        done |= k == "params";
    }
    if !done {
        key(out, &mut first, "params");
        params(out, None, t);
    }
    out.push(b'}');
}

/// Reads the top-level `"id"` of a JSON object from text that may be invalid, so an
/// error about a broken message can still carry its id ([`sniff`] says more: whether it
/// is a response).
pub fn sniff_id(bytes: &[u8]) -> Option<Id> {
    sniff(bytes).id
}

/// True when `text` holds no line break (`\n` or `\r`): JSON text that can go on a
/// line-framed transport (stdio) as it is. Inside JSON strings line breaks are always
/// escaped, so only whitespace between tokens can hold one.
pub fn is_one_line(text: &[u8]) -> bool {
    memchr::memchr2(b'\n', b'\r', text).is_none()
}

/// Where the first key of the top-level object of `bytes` goes: just after its `{`.
fn object_start(bytes: &[u8]) -> Option<usize> {
    let mut s = Scanner { b: bytes, i: 0 };
    s.ws();
    s.eat(b'{')?;
    Some(s.i)
}

/// What [`Message::splice`] writes at a place in the text.
#[derive(Clone, Copy)]
enum Part<'a> {
    None,
    /// A new `id`.
    Id(&'a Value),
    /// A new string value (`params.name`, `traceparent`, `tracestate`).
    Str(&'a str),
    /// `,"tracestate":"…"`, after a `traceparent`.
    StateAfter(&'a str),
    /// The context as a new `"_meta":{…}` key of `params` (true), or as new
    /// `"params":{"_meta":{…}}` (false); then a comma when keys follow.
    Meta(&'a TraceContext, bool, bool),
}

/// What [`find_places`] is to find (the fields of [`Places`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Want {
    id: bool,
    params_open: bool,
    name: bool,
    traceparent: bool,
    tracestate: bool,
}

/// Places in a message's text, as [`find_places`] finds them: value spans
/// (start, end) and insertion points.
#[derive(Debug, Default, PartialEq, Eq)]
struct Places {
    /// The top-level `id`'s value.
    id: Option<(usize, usize)>,
    /// Just after the `{` of the top-level `params` object.
    params_open: Option<usize>,
    /// `params.name`'s value.
    name: Option<(usize, usize)>,
    /// `params._meta.traceparent`'s value.
    traceparent: Option<(usize, usize)>,
    /// `params._meta.tracestate`'s value.
    tracestate: Option<(usize, usize)>,
}

impl de::KeyEnds {
    /// The places `want` asks for, as [`find_places`] finds them, from where the parse
    /// met the keys: only each value is read. `None` when a key asked for was not met
    /// spelt exactly (the caller then serialises), or `params` is no object.
    fn places(&self, text: &[u8], want: Want) -> Option<Places> {
        // The scanner just past a key's closing quote, moved past `:`. The quote is
        // checked: the offsets rest on the parser lending keys out of this very text,
        // and anything else is serialised rather than spliced at a wrong place.
        let at = |end: Option<usize>| {
            let end = end?;
            if text.get(end.checked_sub(1)?) != Some(&b'"') {
                return None;
            }
            let mut s = Scanner { b: text, i: end };
            s.ws();
            s.eat(b':')?;
            s.ws();
            Some(s)
        };
        let value = |end| at(end)?.value();
        let mut found = Places::default();
        if want.id {
            found.id = Some(value(self.id)?);
        }
        if want.params_open {
            let mut s = at(self.params)?;
            s.eat(b'{')?;
            found.params_open = Some(s.i);
        }
        if want.name {
            found.name = Some(value(self.name)?);
        }
        if want.traceparent {
            found.traceparent = Some(value(self.traceparent)?);
        }
        if want.tracestate {
            found.tracestate = Some(value(self.tracestate)?);
        }
        Some(found)
    }
}

/// Finds the places `want` asks for in the text of a JSON object, reading its keys only
/// as far as the last one needed. Only keys spelt exactly (`"id"`, `"params"`,
/// `"name"`, …) count; `None` when one asked for is not found that way (the caller then
/// serialises).
fn find_places(text: &[u8], want: Want) -> Option<Places> {
    let mut found = Places::default();
    let complete = |f: &Places| {
        (!want.id || f.id.is_some())
            && (!want.params_open || f.params_open.is_some())
            && (!want.name || f.name.is_some())
            && (!want.traceparent || f.traceparent.is_some())
            && (!want.tracestate || f.tracestate.is_some())
    };
    // Whether `params` must be read key by key (else it is skipped whole).
    let inside = want.name || want.traceparent;
    let mut s = Scanner {
        b: text,
        i: object_start(text)?,
    };
    loop {
        let key = s.key()?;
        let start = s.i;
        if key == b"\"id\"" && want.id {
            found.id = Some(s.value()?);
        } else if key == b"\"params\"" && (inside || want.params_open) {
            s.eat(b'{')?;
            found.params_open = Some(s.i);
            if complete(&found) {
                return Some(found);
            }
            if !inside {
                s.i = start;
                s.skip_value()?;
            } else if params_places(&mut s, want, &mut found, &complete)? {
                return Some(found);
            }
        } else {
            s.skip_value()?;
        }
        if complete(&found) {
            return Some(found);
        }
        s.ws();
        s.eat(b',')?;
    }
}

/// The keys of `params`, from just after its `{` up to its `}`, or only as far as the
/// last place wanted (then `Some(true)`).
fn params_places(
    s: &mut Scanner,
    want: Want,
    found: &mut Places,
    complete: &impl Fn(&Places) -> bool,
) -> Option<bool> {
    s.ws();
    if s.peek()? != b'}' {
        loop {
            let key = s.key()?;
            if key == b"\"name\"" && want.name {
                found.name = Some(s.value()?);
            } else if key == b"\"_meta\"" && want.traceparent {
                s.eat(b'{')?;
                s.ws();
                if s.peek()? != b'}' {
                    loop {
                        let key = s.key()?;
                        let span = s.value()?;
                        if key == b"\"traceparent\"" {
                            found.traceparent = Some(span);
                        } else if key == b"\"tracestate\"" {
                            found.tracestate = Some(span);
                        }
                        s.ws();
                        if s.eat(b',').is_none() {
                            break;
                        }
                    }
                }
                s.eat(b'}')?;
            } else {
                s.skip_value()?;
            }
            if complete(found) {
                return Some(true);
            }
            s.ws();
            if s.eat(b',').is_none() {
                break;
            }
        }
    }
    s.eat(b'}')?;
    Some(false)
}

/// Where the first `"` or `\\` of `b` is. Eight bytes at a time (a `traceparent` the
/// scanner passes over on the way to `params.name` is 55), then byte by byte.
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        let hit = quotes_or_backslashes(w);
        if hit != 0 {
            return Some(at + hit.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = words.remainder();
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|p| at + p)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    /// Reads `"key" :` (with the whitespace around) and gives the key as written, quotes
    /// included.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip_string()?;
        let key = &self.b[start..self.i];
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(key)
    }
    /// Skips a value and gives where it was: (start, end).
    fn value(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        self.skip_value()?;
        Some((start, self.i))
    }
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        let (b, mut i) = (self.b, self.i);
        loop {
            i += quote_or_backslash(b.get(i..)?)?;
            if b[i] == b'"' {
                self.i = i + 1;
                return Some(());
            }
            i += 2;
        }
    }
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let b = self.b;
                while self.i < b.len() {
                    match b[self.i] {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                None
            }
            _ => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
                {
                    self.i += 1;
                }
                // A scalar at the very end of truncated input may itself be cut short.
                (self.i > start && self.i < self.b.len()).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The key-by-key search finds what the hash lookup finds, on both sides of
    /// `SCAN_MAX_KEYS`, and `set_id` keeps the id in its place or adds it last.
    #[test]
    fn small_map_lookups_agree_with_the_hash_lookups() {
        use serde_json::{Map, Value};
        for n in 0..=super::SCAN_MAX_KEYS + 2 {
            let mut m = Map::new();
            for i in 0..n {
                m.insert(format!("k{i}"), Value::from(i));
            }
            for i in 0..=n {
                let k = format!("k{i}");
                assert_eq!(super::field(&m, &k), m.get(&k), "{n} keys, {k}");
                let v = Value::Object(m.clone());
                assert_eq!(super::lookup(&v, &k), m.get(&k), "{n} keys, {k}");
                assert_eq!(
                    super::field_mut(&mut m.clone(), &k).cloned(),
                    m.get(&k).cloned()
                );
            }
            // A response with the id among the other keys, and one without an id.
            let mut obj = m.clone();
            obj.insert("jsonrpc".into(), "2.0".into());
            obj.insert("id".into(), 7.into());
            obj.insert("result".into(), serde_json::json!({}));
            let mut msg = super::Message::from_value(Value::Object(obj.clone())).unwrap();
            msg.set_id(&super::Id::String("x".into()));
            obj.insert("id".into(), "x".into());
            assert_eq!(msg.to_json(), serde_json::to_string(&obj).unwrap());
            assert_eq!(msg.id(), Some(super::Id::String("x".into())));
            let mut req = super::Message::notification("m", None);
            req.set_id(&super::Id::from(3));
            assert_eq!(req.id(), Some(super::Id::from(3)));
            assert!(req.to_json().ends_with(r#""id":3}"#), "{}", req.to_json());
        }
        assert_eq!(super::lookup(&Value::from(1), "k0"), None);
    }

    /// The copy-through path of `string` writes what serde_json writes, for every ASCII
    /// character alone and among others, and for text beyond ASCII.
    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        cases.extend((0u8..0x80).map(|b| format!("tracestate{}x", char::from(b))));
        cases.extend(
            [
                "",
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ]
            .map(String::from),
        );
        cases.extend(["é", "日本語", "\u{2028}", "a\u{7f}b", "\u{10ffff}"].map(String::from));
        // Each character that needs escaping at each place of strings of 1–24 bytes
        // (whole words and remainders), among plain ASCII and among bytes ≥ 0x80.
        for len in 1..=24 {
            for at in 0..len {
                for bad in ['"', '\\', '\0', '\n', '\u{1f}'] {
                    for fill in ['a', '~', ' ', '\u{ff}'] {
                        let mut t: Vec<char> = std::iter::repeat_n(fill, len).collect();
                        t[at] = bad;
                        cases.push(t.into_iter().collect());
                    }
                }
            }
        }
        for case in cases {
            let mut out = Vec::new();
            super::string(&mut out, &case);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&case).unwrap(),
                "{case:?}"
            );
        }
    }

    /// The word-at-a-time check agrees with the byte-by-byte rule for every byte value at
    /// every place of inputs of 1–17 bytes (whole words, remainders, both).
    #[test]
    fn escape_check_matches_the_byte_rule() {
        let rule = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for len in 1..=17 {
            for at in 0..len {
                for fill in [b'a', 0x7f, 0x80, 0xff] {
                    let mut t = vec![fill; len];
                    for b in 0..=255u8 {
                        t[at] = b;
                        let want = t.iter().any(|&c| rule(c));
                        assert_eq!(super::needs_escape(&t), want, "{t:?}");
                    }
                }
            }
        }
    }

    /// The places the parse gives ([`de::KeyEnds`]) are the ones a scan of the text
    /// finds ([`find_places`]), for every combination of places asked for; and a text
    /// with a context inserted through them reads back as the maps' version.
    #[test]
    fn the_parse_finds_the_places_a_scan_finds() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let texts = [
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}}"#,
            r#"{"params" : {"a":1, "name" :"x","_meta":{"k":[1,{"traceparent":2}], "tracestate" :"s", "traceparent":"t"}},"jsonrpc":"2.0","id" : "q\"r","method":"m"}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":-1.5e3,\"method\":\"m\",\"params\"\t:\n {\"name\":\"n\\u0041\"}}",
            r#"{"jsonrpc":"2.0","id":1,"method":"m","par\u0061ms":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","\u0069d":1,"method":"m","params":{"n\u0061me":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"m","params":{"_meta":{"tr\u0061ceparent":"t"}}}"#,
            r#"{"jsonrpc":"2.0","method":"m"}"#,
        ];
        for text in texts {
            let (_, keys) = Message::parse_with_keys(text.as_bytes()).unwrap();
            for bits in 0..32u8 {
                let want = Want {
                    id: bits & 1 != 0,
                    params_open: bits & 2 != 0,
                    name: bits & 4 != 0,
                    traceparent: bits & 8 != 0,
                    tracestate: bits & 16 != 0,
                };
                if want.tracestate && !want.traceparent {
                    continue; // never asked: a tracestate is only written beside a traceparent
                }
                let scan = find_places(text.as_bytes(), want);
                let parsed = keys.places(text.as_bytes(), want);
                // The scan also notes places it passes that were not asked for.
                let strip = |p: Option<Places>| {
                    p.map(|p| Places {
                        id: p.id.filter(|_| want.id),
                        params_open: p.params_open.filter(|_| want.params_open),
                        name: p.name.filter(|_| want.name),
                        traceparent: p.traceparent.filter(|_| want.traceparent),
                        tracestate: p.tracestate.filter(|_| want.tracestate),
                    })
                };
                assert_eq!(strip(parsed), strip(scan), "{text} {want:?}");
            }
            let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
            m.set_trace_context(TP, "");
            assert_eq!(m.to_text(), m.to_json_over(text.as_bytes()), "{text}");
        }
    }

    /// What the bridge wrote before the one-pass parser: `params._meta` edited in
    /// `serde_json` maps (`traceparent` set, `tracestate` set or removed), serialised.
    fn through_maps(text: &str, set: Option<(&str, &str)>) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        match set {
            Some((tp, state)) => serde_json::to_string(&fuzz::maps_with(&v, tp, state)).unwrap(),
            None => serde_json::to_string(&v).unwrap(),
        }
    }

    /// Relayed as parsed, and with a new context set, a message serialises exactly as
    /// the maps would have it (same keys, same order, same escaping), whatever the
    /// shape of `params` and `_meta`; positional params are left alone.
    #[test]
    fn trace_context_is_written_as_the_maps_would_have_it() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let shapes = [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":"a\"b","method":"tools/call","params":{"name":"x.echo","arguments":{"text":"é\n\u0000"}}}"#,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"_meta":{"progressToken":3},"name":"x"}}"#,
            r#"{"id":3,"params":{"name":"x","_meta":{"traceparent":"old","x":1,"tracestate":"a=b","y":[2]}},"method":"m","jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"m","params":{"_meta":5,"k\"ey":null}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"m","params":{"_meta":{"tracestate":"z=1"}}}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":"m","params":{"_meta":{"tracestate":"z=1","a":{"traceparent":1},"traceparent":"t\u0041"}}}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"m","params":{"_meta":{"traceparent":"1","traceparent":"2"},"_meta":{"q":1}}}"#,
            r#"{"jsonrpc":"2.0","id":8,"method":"m","params":{"_meta":{"traceparent":"1"}},"params":{"_meta":{"x":1,"traceparent":"2"}}}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"m","params":{"_meta":{"traceparent":"1","tracestate":null,"traceparent":2}}}"#,
            r#"{"jsonrpc":"2.0","id":10,"method":"m","params":{"_meta":{"traceparent":"","tracestate":""}}}"#,
            r#"{"jsonrpc":"2.0","id":11,"method":"m","params":[1,{"_meta":{"traceparent":"x"}}]}"#,
        ];
        for shape in shapes {
            let relayed = Message::parse(shape.as_bytes()).unwrap();
            assert_eq!(relayed.to_json(), through_maps(shape, None), "{shape}");
            for state in ["", "vendor=v1,other=2"] {
                let mut ours = Message::parse(shape.as_bytes()).unwrap();
                ours.set_trace_context(tp, state);
                let want = if shape.contains(r#""params":["#) {
                    shape.to_string()
                } else {
                    through_maps(shape, Some((tp, state)))
                };
                assert_eq!(ours.to_json(), want, "{shape} with {state:?}");
                // Twice: the second replaces the first in its places.
                ours.set_trace_context("x", "y=1");
                ours.set_trace_context(tp, state);
                assert_eq!(ours.to_json(), want, "{shape} with {state:?}, set twice");
            }
        }
    }

    /// Every sequence of up to five `_meta` keys drawn from the two trace keys (as
    /// strings and as other values) and two others, repeats included: relayed and
    /// re-traced output equals the maps', and `trace_context` reads what the maps hold.
    #[test]
    fn every_arrangement_of_meta_keys_round_trips() {
        let items = [
            r#""traceparent":"p1""#,
            r#""traceparent":"p2""#,
            r#""traceparent":7"#,
            r#""tracestate":"s=1""#,
            r#""tracestate":null"#,
            r#""a":1"#,
            r#""b":{"traceparent":"n"}"#,
        ];
        let mut seen = 0;
        for len in 0..=5u32 {
            for mut code in 0..items.len().pow(len) {
                let mut keys = Vec::new();
                for _ in 0..len {
                    keys.push(items[code % items.len()]);
                    code /= items.len();
                }
                let text = format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"z":0,"_meta":{{{}}},"y":1}}}}"#,
                    keys.join(",")
                );
                let m = Message::parse(text.as_bytes()).unwrap();
                assert_eq!(m.to_json(), through_maps(&text, None), "{text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                let meta = &v["params"]["_meta"];
                let want = meta["traceparent"]
                    .as_str()
                    .map(|p| (p, meta["tracestate"].as_str()));
                assert_eq!(m.trace_context(), want, "{text}");
                let copy = m.meta_with_trace().map(|c| Value::Object(c).to_string());
                assert_eq!(copy, Some(meta.to_string()), "{text}");
                for state in ["", "t=2"] {
                    let mut t = m.clone();
                    t.set_trace_context("00-new", state);
                    let want = through_maps(&text, Some(("00-new", state)));
                    assert_eq!(t.to_json(), want, "{text} with {state:?}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, 1 + 7 + 49 + 343 + 2401 + 16807);
    }

    /// Found by the differential fuzzing (`fuzz.rs`) of the first version: a repeated
    /// `params` or `_meta` that holds no context drops the earlier one; a copy of `_meta`
    /// keeps numbers as they were; an edit through `meta_mut` is what is sent.
    #[test]
    fn repeats_copies_and_edits_keep_the_value_paths_meaning() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"traceparent":"x"},"_meta":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"traceparent":"x"}},"params":[]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"tracestate":"a","traceparent":"b"},"_meta":null}}"#,
        ] {
            let m = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(m.to_json(), through_maps(text, None), "{text}");
            assert_eq!(m.trace_context(), None, "{text}");
            let v: Value = serde_json::from_str(text).unwrap();
            let meta = v["params"].get("_meta").and_then(Value::as_object).cloned();
            assert_eq!(m.meta_with_trace(), meta, "{text}");
            if !text.contains(r#""params":[]"#) {
                let mut t = m.clone();
                t.set_trace_context("T", "s=1");
                assert_eq!(
                    t.to_json(),
                    through_maps(text, Some(("T", "s=1"))),
                    "{text}"
                );
            }
        }
        let big = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"traceparent":"x","n":12345678901234567890123456789012}}}"#;
        let copy = Message::parse(big.as_bytes())
            .unwrap()
            .meta_with_trace()
            .unwrap();
        let v: Value = serde_json::from_str(big).unwrap();
        assert_eq!(
            Value::Object(copy).to_string(),
            v["params"]["_meta"].to_string()
        );
        let mut m = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"a":1,"traceparent":"old","b":2}}}"#,
        )
        .unwrap();
        m.meta_mut().insert("traceparent".into(), "new".into());
        assert_eq!(m.trace_context(), Some(("new", None)));
        assert_eq!(
            m.to_json(),
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"a":1,"traceparent":"new","b":2}}}"#
        );
    }

    /// Broken text gets the error `serde_json` gives for it.
    #[test]
    fn parse_errors_are_serde_jsons() {
        for bad in [
            "",
            "{",
            r#"{"a":1} x"#,
            r#"{"params":{"_meta":{"traceparent":}}}"#,
            r#"{"params":{"_meta":{"traceparent":"x","tracestate":"#,
            r#"{"params":{"_meta":{1:2}}}"#,
            r#"{"params":[1,]}"#,
            "[1e400]",
        ] {
            let ours = de::parse(bad).unwrap_err().to_string();
            let theirs = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            assert_eq!(ours, theirs, "{bad}");
        }
        let deep = format!(
            r#"{{"params":{{"_meta":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(de::parse(&deep).is_err(), "the recursion limit holds");
        // As docs/errors.md has it: 127 levels deep, the message's own included, are
        // taken; 128 are not.
        let nested = |levels: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(de::parse(&nested(127)).is_ok());
        assert!(de::parse(&nested(128)).is_err());
    }

    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<Message, Rejection> {
        Message::parse(s.as_bytes())
    }

    #[test]
    fn classifies_the_three_kinds() {
        let r = parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
        assert_eq!(r.kind(), Kind::Request);
        assert_eq!(r.id(), Some(Id::from(1)));
        let n = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind(), Kind::Notification);
        assert_eq!(n.id(), None);
        let resp = parse(r#"{"jsonrpc":"2.0","id":"x","result":{}}"#).unwrap();
        assert_eq!(resp.kind(), Kind::Response);
        assert_eq!(resp.id(), Some(Id::String("x".into())));
    }

    #[test]
    fn relaying_keeps_unknown_fields_and_their_order() {
        let line = r#"{"zeta":1,"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"b":2,"a":{"y":1,"x":[3,2,1]}},"extra":{"k":null}}"#;
        let m = parse(line).unwrap();
        assert_eq!(m.to_json(), line);
    }

    #[test]
    fn ids_keep_their_exact_type() {
        for id in [json!(7), json!("7"), json!(-3), json!(1.5), json!(u64::MAX)] {
            let v = json!({"jsonrpc":"2.0","id":id.clone(),"method":"ping"});
            let m = Message::from_value(v).unwrap();
            assert_eq!(m.id().unwrap().to_value(), id);
            let out: Value = serde_json::from_str(&m.to_json()).unwrap();
            assert_eq!(out["id"], id);
        }
    }

    #[test]
    fn bad_input_gets_the_right_error_and_id() {
        let e = parse("{not json").unwrap_err();
        assert_eq!(e.error.code, codes::PARSE_ERROR);
        assert_eq!(e.id, None);
        let e = parse(r#"{"jsonrpc":"2.0","id":42,"method":"x","params":{"a":}"#).unwrap_err();
        assert_eq!(e.error.code, codes::PARSE_ERROR);
        assert_eq!(e.id, Some(Id::from(42)));
        let e = parse(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).unwrap_err();
        assert_eq!(e.error.code, codes::INVALID_REQUEST);
        assert!(e.error.message.contains("batch"));
        // Each request of a batch is answered with its id (in a batch, as JSON-RPC
        // answers one); notifications and responses in it are not; an element that is
        // no request object gets id null.
        let e = parse(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":"s","method":"tools/list"},{"jsonrpc":"2.0","id":9,"result":{}},3]"#,
        )
        .unwrap_err();
        assert!(e.reply);
        let answers: Value = serde_json::from_str(&e.reply_text()).unwrap();
        let ids: Vec<&Value> = answers
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["id"])
            .collect();
        assert_eq!(ids, [&json!(1), &json!("s"), &Value::Null]);
        assert!(answers[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batch"));
        // Only notifications: nothing to answer.
        let e = parse(r#"[{"jsonrpc":"2.0","method":"n"}]"#).unwrap_err();
        assert!(!e.reply && e.answered_id().is_none());
        // An empty batch: the one error, id null (JSON-RPC).
        let e = parse("[]").unwrap_err();
        assert!(e.reply && e.batch.is_none());
        assert_eq!(e.reply_text(), e.to_response().to_json());
        // What cannot be told apart is answered once; at most MAX_BATCH_ANSWERS ids.
        let many = format!("[{}]", vec!["1"; 10_000].join(","));
        let e = parse(&many).unwrap_err();
        assert_eq!(e.batch.as_deref(), Some(&[None][..]));
        let reqs: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#))
            .collect();
        let e = parse(&format!("[{}]", reqs.join(","))).unwrap_err();
        assert_eq!(e.batch.as_ref().map(Vec::len), Some(MAX_BATCH_ANSWERS));
        assert!(e.reply_text().len() < 40 * 1024);
        assert!(
            e.error.message.ends_with(
                "; only the first 128 requests of a batch are answered, 872 more are not"
            ),
            "{}",
            e.error.message
        );
        // Within the bound, nothing is said of it.
        let e = parse(&format!("[{}]", reqs[..MAX_BATCH_ANSWERS].join(","))).unwrap_err();
        assert!(e.error.message.ends_with("(removed in MCP 2025-06-18)"));
        // Not a batch: one response, as before.
        let e = parse(r#"{"jsonrpc":"1.0","id":"q","method":"ping"}"#).unwrap_err();
        assert_eq!(e.reply_text(), e.to_response().to_json());
        let e = parse(r#""hello""#).unwrap_err();
        assert_eq!(e.error.code, codes::INVALID_REQUEST);
        let e = parse(r#"{"jsonrpc":"1.0","id":"q","method":"ping"}"#).unwrap_err();
        assert_eq!(e.error.code, codes::INVALID_REQUEST);
        assert_eq!(e.id, Some(Id::String("q".into())));
        assert!(e.reply);
        let e = parse(r#"{"jsonrpc":"2.0","id":5,"method":17}"#).unwrap_err();
        assert_eq!(e.id, Some(Id::from(5)));
        let e = parse(r#"{"jsonrpc":"2.0","id":5,"method":"x","params":3}"#).unwrap_err();
        assert_eq!(e.id, Some(Id::from(5)));
        let e = parse(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#).unwrap_err();
        assert_eq!(e.id, None);
        assert!(e.reply);
        for text in [
            &b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"\xff\"}"[..],
            b"{\"jsonrpc\":\"2.0\",\"id\":9,\"params\":{\"_meta\":{\"traceparent\":\"\xc3\"}}}",
            b"{\"id\":9,\"a\xe9\":1}",
            b"{\"id\":9,\xff}",
        ] {
            let e = Message::parse(text).unwrap_err();
            assert_eq!(e.error.code, codes::PARSE_ERROR);
            assert_eq!(e.error.message, "parse error: message is not valid UTF-8");
            assert_eq!(e.id, Some(Id::from(9)));
        }
    }

    #[test]
    fn malformed_responses_are_not_answered() {
        let e = parse(r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#).unwrap_err();
        assert!(!e.reply);
        let e = parse(r#"{"jsonrpc":"2.0","result":{}}"#).unwrap_err();
        assert!(!e.reply);
        let e = parse(r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#).unwrap_err();
        assert!(!e.reply);
        let e = parse(r#"{"jsonrpc":"2.0","id":1}"#).unwrap_err();
        assert!(e.reply);
        assert_eq!(e.id, Some(Id::from(1)));
    }

    #[test]
    fn malformed_notifications_are_not_answered() {
        for text in [
            r#"{"jsonrpc":"2.0","method":"notifications/x","params":5}"#,
            r#"{"jsonrpc":"1.0","method":"notifications/y"}"#,
            r#"{"jsonrpc":"2.0","method":7}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/z","params":{"a":}}"#,
        ] {
            let e = parse(text).unwrap_err();
            assert!(!e.reply, "{text}: {e:?}");
            assert_eq!(e.answered_id(), None);
            // Brief reads the same.
            let b = Brief::parse(text.as_bytes()).unwrap_err();
            assert_eq!(b.reply, e.reply, "{text}");
        }
        // With an id key, even a bad one, it is a request: answered.
        let e = parse(r#"{"jsonrpc":"2.0","method":"x","id":null}"#).unwrap_err();
        assert!(e.reply);
    }

    #[test]
    fn sniffs_ids_from_broken_text() {
        assert_eq!(
            sniff_id(br#"{"jsonrpc":"2.0","id":"a\"b","method":"x","params":{"#),
            Some(Id::String("a\"b".into()))
        );
        assert_eq!(
            sniff_id(br#" { "params" : {"id": 3, "s":"}"}, "id" : 12 , "#),
            Some(Id::from(12))
        );
        // The line ended after the number: it is the id.
        assert_eq!(sniff_id(br#"{"jsonrpc":"2.0","id":12"#), Some(Id::from(12)));
        assert_eq!(sniff_id(br#"{"method":"x","params":{"#), None);
        assert_eq!(sniff_id(b"garbage"), None);
        assert_eq!(sniff_id(br#"{"id":null,"#), None);
        assert_eq!(sniff_id(br#"{"id":[1],"#), None);
    }

    #[test]
    fn meta_is_created_without_losing_existing_keys() {
        let mut m = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":5}}}"#,
        )
        .unwrap();
        assert_eq!(m.trace_context(), None);
        m.meta_mut().insert("traceparent".into(), "x".into());
        assert_eq!(m.meta().unwrap()["progressToken"], 5);
        assert_eq!(m.meta().unwrap()["traceparent"], "x");
        assert_eq!(
            m.trace_context(),
            Some(("x", None)),
            "an edited map is read again"
        );
        let mut bare = parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
        bare.meta_mut().insert("k".into(), 1.into());
        assert_eq!(bare.params().unwrap()["_meta"]["k"], 1);
    }

    #[test]
    fn error_responses_without_a_readable_id_use_null() {
        let m = Message::error_response(None, RpcError::new(codes::PARSE_ERROR, "x"));
        let v: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], codes::PARSE_ERROR);
    }

    /// `to_json_over` / `to_text` insert the context as the first key of `params` (or
    /// add `params` first), write the id, name and context over the old ones, keep every
    /// other byte of the text, and serialise whenever the text cannot simply take it.
    #[test]
    fn setting_the_context_a_message_carries_changes_nothing() {
        use super::Message;
        // The hex spelled with escapes: any rewrite of the text would show (it writes
        // the plain digits), so the text coming back as it was shows none happened.
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"traceparent":"\u0030\u0030-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00","tracestate":"k=v"},"x":1}}"#;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
        m.set_trace_context(tp, "k=v");
        assert_eq!(m.to_text(), text);
        // Another tracestate, or none, is a change.
        for state in ["", "k=w"] {
            let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
            m.set_trace_context(tp, state);
            assert_ne!(m.to_text(), text);
            assert_eq!(
                m.trace_context(),
                Some((tp, (!state.is_empty()).then_some(state)))
            );
        }
    }

    #[test]
    fn a_lean_message_builds_only_what_is_read_and_sends_its_text() {
        let text = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ns.t","arguments":{"big":[1,2,{"x":"y"}]},"_meta":{"k":1}}}"#;
        let m = Message::parse_relayed(text.as_bytes().to_vec()).unwrap();
        assert!(m.is_lean());
        assert_eq!(m.params(), Some(&json!({"name":"ns.t","_meta":{"k":1}})));
        assert_eq!(m.param_str("name"), Some("ns.t"));
        assert_eq!(m.meta(), json!({"k":1}).as_object());
        assert_eq!(m.to_text(), text);
        assert_eq!(m.to_json(), text, "written anew from the whole parse");
        let w = m.whole();
        assert!(!w.is_lean());
        assert_eq!(
            w.params().unwrap()["arguments"],
            json!({"big":[1,2,{"x":"y"}]})
        );
        // A change the text cannot take makes it whole first.
        let mut e = m.clone();
        e.params_mut().insert("extra".into(), json!(true));
        assert!(!e.is_lean());
        let sent: Value = serde_json::from_str(&e.to_text()).unwrap();
        assert_eq!(sent["params"]["arguments"]["big"][2]["x"], "y");
        assert_eq!(sent["params"]["extra"], true);
    }

    #[test]
    fn a_lean_message_with_a_params_key_twice_is_sent_as_read_and_many_keys_as_they_came() {
        let twice = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":1},"arguments":{"y":2}}}"#;
        let m = Message::parse_relayed(twice.as_bytes().to_vec()).unwrap();
        let sent = m.to_text();
        assert_eq!(sent.matches("\"arguments\"").count(), 1, "{sent}");
        assert_eq!(
            sent,
            Message::parse_owned(twice.as_bytes().to_vec())
                .unwrap()
                .to_text()
        );
        // More keys than are kept without allocating, one spelt with an escape, and
        // numbers no `f64` holds: still the text as it came (written anew, the numbers
        // would change).
        let keys: Vec<String> = (0..2 * de::DROPPED_KEYS_INLINE)
            .map(|i| format!("\"k{i}\":12345678901234567890123{i}"))
            .collect();
        let many = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","\u006b":0,{}}}}}"#,
            keys.join(",")
        );
        let mut m = Message::parse_relayed(many.as_bytes().to_vec()).unwrap();
        assert_eq!(m.to_text(), many);
        m.set_trace_context(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        );
        let sent = m.to_text();
        assert!(
            sent.contains(&keys[2 * de::DROPPED_KEYS_INLINE - 1]),
            "{sent}"
        );
        assert_eq!(m.into_whole().to_text(), sent);
        // The escaped key and a plain one are the same key: given twice.
        let again = many.replace(r#""k0":"#, r#""k":"#);
        let m = Message::parse_relayed(again.as_bytes().to_vec()).unwrap();
        assert_ne!(m.to_text(), again, "written anew");
    }

    #[test]
    fn a_new_trace_context_is_inserted_into_the_text() {
        use super::Message;
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let over = |text: &str, state: &str| {
            let mut m = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(m.to_json_over(text.as_bytes()), text, "unchanged: the text");
            m.set_trace_context(TP, state);
            (m.to_json_over(text.as_bytes()), m.to_json())
        };
        let meta = format!(r#""_meta":{{"traceparent":"{TP}"}}"#);
        // The official Python SDK's key order: `params` before the rest.
        let text = r#"{"method":"tools/call","params":{"name":"echo","arguments":{"n":1.50}},"jsonrpc":"2.0","id":7}"#;
        let (got, _) = over(text, "");
        assert_eq!(
            got,
            format!(
                r#"{{"method":"tools/call","params":{{{meta},"name":"echo","arguments":{{"n":1.50}}}},"jsonrpc":"2.0","id":7}}"#
            )
        );
        // Keys (a nested one included) before `params`, whitespace, and a tracestate.
        let text = "{ \"jsonrpc\" : \"2.0\", \"x\": {\"params\": [1]}, \"id\": \"a\\\"b\",\t \"method\": \"m\", \"params\" : { } }";
        let (got, _) = over(text, "k=v");
        assert_eq!(
            got,
            format!(
                "{{ \"jsonrpc\" : \"2.0\", \"x\": {{\"params\": [1]}}, \"id\": \"a\\\"b\",\t \"method\": \"m\", \"params\" : {{\"_meta\":{{\"traceparent\":\"{TP}\",\"tracestate\":\"k=v\"}} }} }}"
            )
        );
        // No params: they are added first.
        let (got, _) = over(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "",
        );
        assert_eq!(
            got,
            format!(
                r#"{{"params":{{{meta}}},"jsonrpc":"2.0","method":"notifications/initialized"}}"#
            )
        );
        // A context the text has: the new one is written over it (a tracestate added
        // after it when new), other `_meta` keys kept.
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"progressToken":3,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}"#;
        let (got, _) = over(text, "k=v");
        assert_eq!(
            got,
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"_meta":{{"progressToken":3,"traceparent":"{TP}","tracestate":"k=v"}}}}}}"#
            )
        );
        // Serialised instead: a `_meta` of its own without a context (the context joins
        // it), positional params, `params` twice, `params` spelt with an escape, a
        // tracestate of the host's that the new context drops.
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"progressToken":3}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1,2]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","param\u0073":{"a":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"a=b"}}}"#,
        ] {
            let (got, want) = over(text, "");
            assert_eq!(got, want, "{text}");
            assert!(got.contains(TP) || text.contains("[1,2]"), "{got}");
        }
        // The gateway's edits: a new id and tool name written over the old ones, from
        // the kept text, in any key order; the response's id likewise.
        let text = r#"{"params":{"arguments":{"name":"x"},"name":"fx.echo"},"method":"tools/call","id":"c-1","jsonrpc":"2.0"}"#;
        let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
        m.set_param_name("echo");
        m.set_id(&42u64.into());
        m.set_trace_context(TP, "");
        let want = format!(
            r#"{{"params":{{{meta},"arguments":{{"name":"x"}},"name":"echo"}},"method":"tools/call","id":42,"jsonrpc":"2.0"}}"#
        );
        assert_eq!(m.to_text(), want);
        assert_eq!(m.to_text_bytes(), want.as_bytes());
        let text = r#"{"result":{"content":[{"type":"text","text":"id"}],"id":9},"jsonrpc":"2.0","id":42}"#;
        let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
        m.set_id(&super::Id::String("c-1".into()));
        assert_eq!(
            m.to_text(),
            r#"{"result":{"content":[{"type":"text","text":"id"}],"id":9},"jsonrpc":"2.0","id":"c-1"}"#
        );
        // A key twice in the message, its params or their `_meta` (the bridge read the
        // last one): serialised, changed or not. Deeper, the text is left alone.
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1},"params":{"b":2}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","method":"n"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"uri":"a://x","uri":"b://y"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"progressToken":1,"progressToken":2}}}"#,
        ] {
            let m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
            assert_eq!(m.to_text(), m.to_json(), "{text}");
            assert_ne!(m.to_text(), text);
            let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
            m.set_id(&5u64.into());
            if m.kind() == super::Kind::Request {
                m.set_param_name("c");
            }
            assert_eq!(m.to_text(), m.to_json(), "{text}");
        }
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"arguments":{"k":1,"k":2}}}"#;
        let m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
        assert_eq!(m.to_text(), text);
        // A line break between tokens: kept over the text, but written anew, on one
        // line, for a line-framed stream, changed or not.
        let text = "{\"jsonrpc\":\"2.0\",\n\"id\":1,\"method\":\"m\"}";
        let mut m = Message::parse_owned(text.as_bytes().to_vec()).unwrap();
        assert_eq!(m.to_json_over(text.as_bytes()), text);
        assert_eq!(m.to_text_bytes(), m.to_json_bytes());
        m.set_trace_context(TP, "");
        assert!(m.to_json_over(text.as_bytes()).contains(",\n\"id\""));
        assert_eq!(m.to_text_bytes(), m.to_json_bytes());
        assert!(super::is_one_line(&m.to_json_bytes()));
        // Changed otherwise since parsed, or not the text it was parsed from: serialised.
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}}"#;
        let mut m = Message::parse(text.as_bytes()).unwrap();
        m.set_id(&2u64.into());
        assert_eq!(m.to_json_over(text.as_bytes()), m.to_json());
        assert!(m.to_json().contains(r#""id":2"#));
        let m = Message::parse(text.as_bytes()).unwrap();
        let other = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":2}} "#;
        assert_eq!(m.to_json_over(other.as_bytes()), m.to_json());
    }
}
