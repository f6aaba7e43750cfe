//! A message read only as far as a relay that passes it on unchanged needs: its kind,
//! its id and its outcome (`error`, and `result.isError`), with everything else
//! checked as JSON but not built.
//!
//! The router relays the gateway's responses to the host as the text they came in;
//! building `serde_json` maps of a result (tool output: content arrays, strings) only
//! to read the id was most of its work per response (docs/benchmark.md, "Changes
//! made"). [`Brief::parse`] accepts and rejects exactly what [`Message::parse`]
//! does, with the same [`Rejection`]: the kind rules are [`Shape`]'s, and skipped
//! values go through serde_json's `deserialize_any` like the maps' values, so the same
//! syntax errors and the same nesting limit apply (`jsonrpc::fuzz` checks both
//! against each other).
//!
//! [`Message::parse`]: super::Message::parse

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Number, Value};

use super::{utf8, Id, Kind, Rejection, Shape, Tag};
use crate::error::codes;

/// A message's kind, id and outcome; see the module doc.
#[derive(Clone, Debug, PartialEq)]
pub struct Brief {
    kind: Kind,
    id: Option<Id>,
    /// The `error` object of a response.
    error: Option<Value>,
    /// `result.isError` of a response, when it is `true`.
    tool_error: bool,
    /// A key it reads is given twice at the top level ([`Brief::has_repeated_key`]).
    repeated: bool,
}

impl Brief {
    /// Reads one framed message (one line of text, without its newline).
    pub fn parse(bytes: &[u8]) -> Result<Brief, Rejection> {
        let text = utf8(bytes)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let read = Top
            .deserialize(&mut de)
            .and_then(|read| de.end().map(|()| read))
            .map_err(|e| {
                Rejection::unreadable(bytes, codes::PARSE_ERROR, format!("parse error: {e}"))
            })?;
        let f = match read {
            Read::Object(f) => f,
            // A batch is rejected, and its requests answered, as `Message::parse`
            // does: it reads the items (a batch is rare, and refused anyway).
            Read::Array => {
                let items: Vec<Value> = serde_json::from_str(text).map_err(|e| {
                    Rejection::unreadable(bytes, codes::PARSE_ERROR, format!("parse error: {e}"))
                })?;
                return Err(Shape::batch(Some(&items)));
            }
            Read::Other => return Err(Shape::not_an_object()),
        };
        let (kind, id) = f.shape.classify()?;
        let response = kind == Kind::Response;
        Ok(Brief {
            kind,
            id,
            error: f.error.filter(|_| response),
            tool_error: response && f.tool_error,
            repeated: f.repeated,
        })
    }

    /// What kind of message it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its id (requests and responses).
    pub fn id(&self) -> Option<&Id> {
        self.id.as_ref()
    }

    /// Notes the id a relay wrote over the text's ([`super::Reply::set_id`]).
    pub(super) fn set_id(&mut self, id: Id) {
        self.id = Some(id);
    }

    /// A response's `error` object.
    pub fn error(&self) -> Option<&Value> {
        self.error.as_ref()
    }

    /// Whether a response's `result` has `isError: true` (a failed tool call).
    pub fn is_tool_error(&self) -> bool {
        self.tool_error
    }

    /// Whether one of the keys it reads (`jsonrpc`, `id`, `method`, `params`, `result`,
    /// `error`) is given twice in the message's object. Read like a map, the last one
    /// counts; a receiver of the text might take the first, so a relay that edits the
    /// text (the gateway writing its client's id) must parse such a message whole and
    /// write it anew. Other keys given twice are relayed as they are: nothing in the
    /// bridge reads them.
    pub fn has_repeated_key(&self) -> bool {
        self.repeated
    }
}

/// What the top-level value was.
enum Read {
    Object(Fields),
    Array,
    Other,
}

/// What was read of a message's object.
struct Fields {
    shape: Shape,
    error: Option<Value>,
    tool_error: bool,
    repeated: bool,
}

/// The keys that are read; the rest are skipped.
enum Name {
    Jsonrpc,
    Id,
    Method,
    Params,
    Result,
    Error,
    IsError,
    Other,
}

impl Name {
    /// A bit of its own for each key [`Brief::has_repeated_key`] watches; 0 for the rest.
    fn bit(&self) -> u8 {
        match self {
            Name::Jsonrpc => 1,
            Name::Id => 2,
            Name::Method => 4,
            Name::Params => 8,
            Name::Result => 16,
            Name::Error => 32,
            Name::IsError | Name::Other => 0,
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Name, E> {
                Ok(match v {
                    "jsonrpc" => Name::Jsonrpc,
                    "id" => Name::Id,
                    "method" => Name::Method,
                    "params" => Name::Params,
                    "result" => Name::Result,
                    "error" => Name::Error,
                    "isError" => Name::IsError,
                    _ => Name::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The message itself.
struct Top;

impl<'de> DeserializeSeed<'de> for Top {
    type Value = Read;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Read, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = Read;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Read, E> {
        Ok(Read::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Read, E> {
        Ok(Read::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Read, E> {
        Ok(Read::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Read, E> {
        Ok(Read::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Read, E> {
        Ok(Read::Other)
    }
    fn visit_unit<E>(self) -> Result<Read, E> {
        Ok(Read::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Read, A::Error> {
        Probe::default().visit_seq(seq).map(|_| Read::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Read, A::Error> {
        let mut f = Fields {
            shape: Shape {
                jsonrpc_is_2_0: false,
                raw_id: None,
                method: None,
                params: None,
                result: None,
                error: None,
            },
            error: None,
            tool_error: false,
            repeated: false,
        };
        // A repeated key counts with its last value, as in a map.
        let mut seen = 0u8;
        while let Some(name) = map.next_key::<Name>()? {
            let bit = name.bit();
            f.repeated |= seen & bit != 0;
            seen |= bit;
            match name {
                Name::Jsonrpc => {
                    f.shape.jsonrpc_is_2_0 = map.next_value_seed(Probe::default())?.is_2_0;
                }
                Name::Id => {
                    let p = map.next_value_seed(Probe { keep_id: true })?;
                    f.shape.raw_id = Some((p.tag, p.id));
                }
                Name::Method => f.shape.method = Some(map.next_value_seed(Probe::default())?.tag),
                Name::Params => f.shape.params = Some(map.next_value_seed(Probe::default())?.tag),
                Name::Result => {
                    let (tag, tool_error) = map.next_value_seed(ResultProbe)?;
                    f.shape.result = Some(tag);
                    f.tool_error = tool_error;
                }
                Name::Error => {
                    let v: Value = map.next_value()?;
                    f.shape.error = Some(Tag::of(&v));
                    f.error = Some(v);
                }
                Name::IsError | Name::Other => {
                    map.next_value_seed(Probe::default())?;
                }
            }
        }
        Ok(Read::Object(f))
    }
}

/// A value read for its type only (its contents checked and dropped), and for `id`
/// and `jsonrpc` what they hold.
#[derive(Default)]
pub(super) struct Probe {
    /// Build the [`Id`] of a string or a number.
    keep_id: bool,
}

pub(super) struct Probed {
    tag: Tag,
    id: Option<Id>,
    is_2_0: bool,
}

impl Probed {
    fn tag(tag: Tag) -> Probed {
        Probed {
            tag,
            id: None,
            is_2_0: false,
        }
    }

    fn number(keep: bool, n: Number) -> Probed {
        Probed {
            tag: Tag::Number,
            id: keep.then_some(Id::Number(n)),
            is_2_0: false,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Probe {
    type Value = Probed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Probed, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe {
    type Value = Probed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Probed, E> {
        Ok(Probed::tag(Tag::Bool))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Probed, E> {
        Ok(Probed::number(self.keep_id, v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Probed, E> {
        Ok(Probed::number(self.keep_id, v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Probed, E> {
        // As `Value` reads it: a float that is no JSON number would be null.
        Ok(Number::from_f64(v).map_or(Probed::tag(Tag::Null), |n| Probed::number(self.keep_id, n)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Probed, E> {
        Ok(Probed {
            tag: Tag::String,
            id: self.keep_id.then(|| Id::String(v.to_owned())),
            is_2_0: v == "2.0",
        })
    }
    fn visit_unit<E>(self) -> Result<Probed, E> {
        Ok(Probed::tag(Tag::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Probed, A::Error> {
        while seq.next_element_seed(Probe::default())?.is_some() {}
        Ok(Probed::tag(Tag::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probed, A::Error> {
        while map.next_key::<Name>()?.is_some() {
            map.next_value_seed(Probe::default())?;
        }
        Ok(Probed::tag(Tag::Object))
    }
}

/// A response's `result`: its type, and whether its last `isError` is `true`.
struct ResultProbe;

impl<'de> DeserializeSeed<'de> for ResultProbe {
    type Value = (Tag, bool);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(Tag, bool), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResultProbe {
    type Value = (Tag, bool);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(Tag, bool), E> {
        Ok((Tag::Bool, false))
    }
    fn visit_i64<E>(self, _: i64) -> Result<(Tag, bool), E> {
        Ok((Tag::Number, false))
    }
    fn visit_u64<E>(self, _: u64) -> Result<(Tag, bool), E> {
        Ok((Tag::Number, false))
    }
    fn visit_f64<E>(self, v: f64) -> Result<(Tag, bool), E> {
        let tag = if Number::from_f64(v).is_some() {
            Tag::Number
        } else {
            Tag::Null
        };
        Ok((tag, false))
    }
    fn visit_str<E>(self, _: &str) -> Result<(Tag, bool), E> {
        Ok((Tag::String, false))
    }
    fn visit_unit<E>(self) -> Result<(Tag, bool), E> {
        Ok((Tag::Null, false))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(Tag, bool), A::Error> {
        Probe::default().visit_seq(seq).map(|p| (p.tag, false))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(Tag, bool), A::Error> {
        let mut tool_error = false;
        while let Some(name) = map.next_key::<Name>()? {
            if let Name::IsError = name {
                tool_error = map.next_value_seed(IsTrue)?;
            } else {
                map.next_value_seed(Probe::default())?;
            }
        }
        Ok((Tag::Object, tool_error))
    }
}

/// A value that is `true`, or anything else (checked and dropped).
struct IsTrue;

impl<'de> DeserializeSeed<'de> for IsTrue {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsTrue {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        Probe::default().visit_seq(seq).map(|_| false)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        Probe::default().visit_map(map).map(|_| false)
    }
}
