//! A response on its way back to a client, and what any response says of its request.
//!
//! The gateway relays a backend's answer to a forwarded request (`tools/call`,
//! `resources/read`, `prompts/get`, …) with one change: the client's id in place of
//! its own. Parsing the answer whole built `serde_json` maps of the result only to
//! read the id and the outcome, and then wrote the text anew. A [`Reply::Brief`] keeps
//! the backend's text and what a [`Brief`] read of it; [`Reply::set_id`] writes the
//! new id over the old one in that text. A [`Reply::Whole`] is a parsed [`Message`]:
//! what the gateway builds itself, and an answer whose contents it reads (listings,
//! `initialize`) or whose text says a read key twice ([`Brief::has_repeated_key`]).
//!
//! [`Answer`] is the outcome of a response however it was read: what spans and
//! metrics record.

use serde_json::Value;

use super::{find_places, lookup, value, Brief, Id, Message, Want};
use crate::error::{codes, RpcError};

/// What a response says of its request, however it was read.
pub trait Answer {
    /// A response's `error` object.
    fn error(&self) -> Option<&Value>;
    /// Whether a response's `result` has `isError: true` (a failed tool call). False
    /// for an error response.
    fn is_tool_error(&self) -> bool;
}

impl Answer for Message {
    fn error(&self) -> Option<&Value> {
        Message::error(self)
    }
    fn is_tool_error(&self) -> bool {
        Message::error(self).is_none()
            && self
                .result()
                .and_then(|r| lookup(r, "isError"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
    }
}

impl Answer for Brief {
    fn error(&self) -> Option<&Value> {
        Brief::error(self)
    }
    fn is_tool_error(&self) -> bool {
        Brief::is_tool_error(self)
    }
}

/// A response to relay; see the module doc.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Parsed whole (or built).
    Whole(Message),
    /// Read as a [`Brief`].
    Brief {
        /// What was read of it.
        brief: Brief,
        /// The message as it came (one line, without its newline), with the id
        /// [`Reply::set_id`] wrote.
        text: Vec<u8>,
    },
}

impl From<Message> for Reply {
    fn from(m: Message) -> Reply {
        Reply::Whole(m)
    }
}

impl Answer for Reply {
    fn error(&self) -> Option<&Value> {
        match self {
            Reply::Whole(m) => Answer::error(m),
            Reply::Brief { brief, .. } => brief.error(),
        }
    }
    fn is_tool_error(&self) -> bool {
        match self {
            Reply::Whole(m) => Answer::is_tool_error(m),
            Reply::Brief { brief, .. } => brief.is_tool_error(),
        }
    }
}

impl Reply {
    /// The reply for a response `brief` read from `text`: kept as that text, unless
    /// `whole` is asked for or the text gives a key the brief reads twice; then `text`
    /// is parsed whole.
    pub fn read(brief: Brief, text: Vec<u8>, whole: bool) -> Reply {
        if whole || brief.has_repeated_key() {
            Reply::Whole(Reply::whole(text, brief.id().cloned()))
        } else {
            Reply::Brief { brief, text }
        }
    }

    /// Replaces the id. A kept text takes the new id in place of the old one's bytes;
    /// when its `id` key is not spelt plainly (`"\u0069d"`), it is parsed whole first.
    pub fn set_id(&mut self, id: &Id) {
        match self {
            Reply::Whole(m) => m.set_id(id),
            Reply::Brief { brief, text } => {
                if write_id(text, id).is_some() {
                    brief.set_id(id.clone());
                    return;
                }
                let mut whole = Reply::whole(std::mem::take(text), Some(id.clone()));
                whole.set_id(id);
                *self = Reply::Whole(whole);
            }
        }
    }

    /// The id it answers.
    pub fn id(&self) -> Option<Id> {
        match self {
            Reply::Whole(m) => m.id(),
            Reply::Brief { brief, .. } => brief.id().cloned(),
        }
    }

    /// The message, parsed whole if it was kept as text.
    pub fn into_message(self) -> Message {
        match self {
            Reply::Whole(m) => m,
            Reply::Brief { brief, text } => Reply::whole(text, brief.id().cloned()),
        }
    }

    /// The text to send: a kept text as it is (with its new id), a message as
    /// [`Message::to_text`] writes it.
    pub fn into_text(self) -> String {
        match self {
            Reply::Whole(m) => m.to_text(),
            // `Brief::parse` checked the text's UTF-8, and the id is cut out next to
            // ASCII bytes (`:` and `,` or `}`): the lossy branch is never taken.
            Reply::Brief { text, .. } => String::from_utf8(text)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }

    /// `text`, which a `Brief` read, parsed whole. `Brief::parse` and
    /// [`Message::parse`] accept the same texts (`jsonrpc::fuzz` checks it); should they
    /// ever differ, the client gets an internal error for its request, not silence.
    fn whole(text: Vec<u8>, id: Option<Id>) -> Message {
        Message::parse_owned(text).unwrap_or_else(|rej| {
            Message::error_response(
                id,
                RpcError::new(
                    codes::INTERNAL_ERROR,
                    format!(
                        "the backend's response could not be relayed: {}",
                        rej.error.message
                    ),
                ),
            )
        })
    }
}

/// Writes `id` over the value of the top-level `id` of `text` (a JSON object).
/// `None`, with `text` unchanged, when no key spelt exactly `"id"` is found.
fn write_id(text: &mut Vec<u8>, id: &Id) -> Option<()> {
    let want = Want {
        id: true,
        params_open: false,
        name: false,
        traceparent: false,
        tracestate: false,
    };
    let (start, end) = find_places(text, want)?.id?;
    let mut new = Vec::with_capacity(24);
    value(&mut new, &id.to_value());
    text.splice(start..end, new);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief_reply(text: &str) -> Reply {
        let b = text.as_bytes().to_vec();
        Reply::read(Brief::parse(&b).unwrap(), b, false)
    }

    #[test]
    fn the_id_is_written_over_the_kept_text() {
        let mut r = brief_reply(r#"{"jsonrpc":"2.0", "id" : 17 ,"result":{"content":[]}}"#);
        r.set_id(&Id::String("a\"b".into()));
        assert!(matches!(r, Reply::Brief { .. }));
        assert_eq!(
            r.into_text(),
            r#"{"jsonrpc":"2.0", "id" : "a\"b" ,"result":{"content":[]}}"#
        );
        let mut r = brief_reply(r#"{"result":{},"id":"x","jsonrpc":"2.0"}"#);
        r.set_id(&Id::from(3));
        assert_eq!(r.into_text(), r#"{"result":{},"id":3,"jsonrpc":"2.0"}"#);
    }

    #[test]
    fn an_id_key_spelt_with_an_escape_is_parsed_whole() {
        let mut r = brief_reply(r#"{"jsonrpc":"2.0","\u0069d":5,"result":{}}"#);
        r.set_id(&Id::from(9));
        let Reply::Whole(m) = &r else {
            panic!("kept as text: {r:?}")
        };
        assert_eq!(m.id(), Some(Id::from(9)));
        assert_eq!(r.into_text(), r#"{"jsonrpc":"2.0","id":9,"result":{}}"#);
    }

    #[test]
    fn a_repeated_key_or_asking_for_it_gives_the_whole_message() {
        let text = r#"{"jsonrpc":"2.0","id":1,"id":2,"result":{}}"#;
        let b = Brief::parse(text.as_bytes()).unwrap();
        assert!(b.has_repeated_key());
        let r = Reply::read(b, text.as_bytes().to_vec(), false);
        let Reply::Whole(m) = r else { panic!() };
        assert_eq!(m.id(), Some(Id::from(2)));
        // A repeated key the brief does not read is kept as it is.
        let text = r#"{"jsonrpc":"2.0","id":1,"x":1,"x":2,"result":{}}"#;
        assert!(matches!(brief_reply(text), Reply::Brief { .. }));
        let b = Brief::parse(text.as_bytes()).unwrap();
        let r = Reply::read(b, text.as_bytes().to_vec(), true);
        assert!(matches!(r, Reply::Whole(_)));
    }

    #[test]
    fn the_outcome_reads_the_same_either_way() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"isError":false}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"no"}}"#,
        ] {
            let r = brief_reply(text);
            let m = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(Answer::error(&r), Answer::error(&m));
            assert_eq!(r.is_tool_error(), m.is_tool_error());
            assert_eq!(r.into_message(), m);
        }
    }
}
