//! Reading a message's JSON in one pass, with the W3C trace context of
//! `params._meta` kept out of the maps.
//!
//! The result is what `serde_json::Value` would give, except that a string
//! `traceparent` in `params._meta` (and a string `tracestate` beside it) becomes a
//! [`TraceContext`] that remembers where the two keys stood. A traced request would
//! otherwise pay for a map, its hash table and two keys only to carry 55 characters
//! (docs/benchmark.md "Tracing"). [`super::Message::to_json`] writes them back at
//! their places, so relaying stays byte for byte what the `Value` path gives.
//!
//! Anything unusual (a `traceparent` that is not a string, a `tracestate` without a
//! `traceparent`) leaves the keys in the map, as `Value` would have them.
//!
//! [`parse_lean`] reads a message for a relay that sends its text on: of `params` it
//! builds only the values the bridge reads (`name`, `uri`, `_meta`); the others
//! (a tool call's `arguments`, of any size) are checked as JSON, as the maps'
//! values are, but not built.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::TraceContext;

/// What [`parse`] took out of `params._meta`.
#[derive(Debug, Default)]
pub(super) struct Taken<'t> {
    /// The trace context, if `_meta` had a string `traceparent`.
    pub trace: Option<TraceContext>,
    /// Something unusual left the keys in the map, where a string `traceparent` may
    /// then be (a repeated key whose first value was not a string).
    pub left_in_map: bool,
    /// A key the message's own object, its `params` or `params._meta` has more than
    /// once (the last one counts, as with `Value`): then only a serialisation of the
    /// maps sends what the bridge read (`Message::to_text`).
    pub repeated: bool,
    /// Where the keys whose values the bridge may write over end in the text.
    pub keys: KeyEnds,
    /// Where the text starts in memory: a key read in place is located by its address.
    base: usize,
    /// The `params` and `_meta` keys being read were spelt without escapes: only then
    /// are the keys inside them noted (a scan of the text, which looks for the exact
    /// spelling of the whole path, would not find them either).
    params_in_place: bool,
    meta_in_place: bool,
    /// [`parse_lean`]: `params` keeps only [`LEAN_PARAMS`].
    lean: bool,
    /// The `params` keys a lean parse dropped, to tell one given twice.
    dropped: Dropped<'t>,
}

/// The `params` keys a lean parse dropped that it keeps without allocating (as read
/// in place in the text); more, or keys spelt with escapes, go into a set. MCP's
/// params have three or four.
pub(super) const DROPPED_KEYS_INLINE: usize = 8;

/// The keys a lean parse dropped from `params` (compared exactly: a key taken for a
/// repeat when it is not would have the text written anew, and a number written anew
/// may not be the number that came).
#[derive(Debug, Default)]
struct Dropped<'t> {
    inline: [&'t str; DROPPED_KEYS_INLINE],
    len: usize,
    more: Option<std::collections::HashSet<Cow<'t, str>>>,
}

impl<'t> Dropped<'t> {
    /// Notes `key`; whether it was noted before.
    fn note(&mut self, key: Cow<'t, str>) -> bool {
        if self.inline[..self.len].contains(&&*key)
            || self.more.as_ref().is_some_and(|m| m.contains(&*key))
        {
            return true;
        }
        match key {
            Cow::Borrowed(k) if self.len < DROPPED_KEYS_INLINE => {
                self.inline[self.len] = k;
                self.len += 1;
            }
            k => {
                self.more.get_or_insert_with(Default::default).insert(k);
            }
        }
        false
    }
}

/// The members of `params` a lean parse builds ([`parse_lean`]): what the router and
/// the gateway read of the requests they relay as text.
pub(super) const LEAN_PARAMS: [&str; 3] = ["name", "uri", "_meta"];

/// Just past the closing quote of each key whose value the bridge may write over
/// (`Message::to_text`), as the parse met it, when it is spelt without escapes (the
/// only spelling those edits recognise): the message's `id` and `params`,
/// `params.name`, and `params._meta`'s `traceparent` and `tracestate`. The last one of
/// each counts: a key given twice leaves the text to a serialisation anyway
/// ([`Taken::repeated`]). With them the text is not scanned again for its keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct KeyEnds {
    pub id: Option<usize>,
    pub params: Option<usize>,
    pub name: Option<usize>,
    pub traceparent: Option<usize>,
    pub tracestate: Option<usize>,
}

impl Taken<'_> {
    /// Where a key read in place at address `at` ends in the text: past its closing
    /// quote (`None` when it was not read in place).
    fn key_end(&self, at: Option<usize>, key: &str) -> Option<usize> {
        at.map(|a| a - self.base + key.len() + 1)
    }
}

/// Parses one JSON text: the value, and what was taken out of `params._meta`.
pub(super) fn parse(text: &str) -> serde_json::Result<(Value, Taken<'_>)> {
    parse_as(text, false)
}

/// [`parse`], except that an object `params` gets only its members named in
/// [`LEAN_PARAMS`]; the others are checked (the same syntax errors and nesting limit
/// as [`parse`]) and dropped. A key among the others given twice is still noted in
/// [`Taken::repeated`]: the bridge sends such a message written anew as it read it,
/// not for the next peer to choose.
pub(super) fn parse_lean(text: &str) -> serde_json::Result<(Value, Taken<'_>)> {
    parse_as(text, true)
}

fn parse_as(text: &str, lean: bool) -> serde_json::Result<(Value, Taken<'_>)> {
    let mut taken = Taken {
        base: text.as_ptr() as usize,
        lean,
        ..Taken::default()
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Shaped {
        level: Level::Top,
        taken: &mut taken,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok((value, taken))
}

/// Which object of a message a map is.
#[derive(Clone, Copy)]
enum Level {
    /// The message itself.
    Top,
    /// Its `params`.
    Params,
    /// `params._meta`.
    Meta,
}

/// Reads any value as `Value` does; a map at `level` is read with the rules above.
struct Shaped<'a, 't> {
    level: Level,
    taken: &'a mut Taken<'t>,
}

impl<'de> DeserializeSeed<'de> for Shaped<'_, 'de> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // A repeated `params` or `_meta` replaces the earlier one, trace context and all,
        // whatever it is (an object, or a value that holds no context).
        if !matches!(self.level, Level::Top) {
            self.taken.trace = None;
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shaped<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let (level, taken) = (self.level, self.taken);
        if let Level::Meta = level {
            return meta(map, taken);
        }
        let mut m = Map::new();
        loop {
            let Some((k, at)) = map.next_key_seed(KeyAt)? else {
                break;
            };
            if let Level::Params = level {
                if taken.lean && !LEAN_PARAMS.contains(&&*k) {
                    taken.repeated |= taken.dropped.note(k);
                    map.next_value_seed(super::brief::Probe::default())?;
                    continue;
                }
            }
            let end = taken.key_end(at, &k);
            match (level, &*k) {
                (Level::Top, "id") => taken.keys.id = end,
                (Level::Top, "params") => {
                    taken.keys.params = end;
                    taken.params_in_place = end.is_some();
                }
                (Level::Params, "name") if taken.params_in_place => taken.keys.name = end,
                (Level::Params, "name") => taken.keys.name = None,
                (Level::Params, "_meta") => {
                    taken.meta_in_place = taken.params_in_place && end.is_some()
                }
                _ => {}
            }
            let inner = match (level, &*k) {
                (Level::Top, "params") => Some(Level::Params),
                (Level::Params, "_meta") => Some(Level::Meta),
                _ => None,
            };
            let v = match inner {
                Some(level) => map.next_value_seed(Shaped {
                    level,
                    taken: &mut *taken,
                })?,
                None => map.next_value()?,
            };
            // Only these two levels (and `_meta`) get here; nested objects are read
            // by `Value` itself.
            taken.repeated |= m.insert(k.into_owned(), v).is_some();
        }
        Ok(Value::Object(m))
    }
}

/// A key of the message's object, and the address of its first character when the
/// parser read it in place (no escapes), else `None`. Borrowed when read in place: a
/// key a lean parse drops costs no allocation.
struct KeyAt;

impl<'de> DeserializeSeed<'de> for KeyAt {
    type Value = (Cow<'de, str>, Option<usize>);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyAt {
    type Value = (Cow<'de, str>, Option<usize>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok((Cow::Borrowed(v), Some(v.as_ptr() as usize)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((Cow::Owned(v.to_owned()), None))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok((Cow::Owned(v), None))
    }
}

/// A key of `_meta`: the two trace context keys are recognised without allocating
/// (with their address in the text when read in place, as [`KeyAt`] gives it).
enum MetaKey {
    Parent(Option<usize>),
    State(Option<usize>),
    Other(String),
}

impl<'de> serde::Deserialize<'de> for MetaKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = MetaKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<MetaKey, E> {
                let at = Some(v.as_ptr() as usize);
                Ok(match v {
                    "traceparent" => MetaKey::Parent(at),
                    "tracestate" => MetaKey::State(at),
                    _ => MetaKey::Other(v.to_owned()),
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MetaKey, E> {
                Ok(match v {
                    "traceparent" => MetaKey::Parent(None),
                    "tracestate" => MetaKey::State(None),
                    _ => MetaKey::Other(v.to_owned()),
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Reads `params._meta`. The map gets every key but a string `traceparent` (and a
/// string `tracestate` beside it); their places count every key, as in the text.
fn meta<'de, A: MapAccess<'de>>(mut map: A, taken: &mut Taken<'_>) -> Result<Value, A::Error> {
    let mut m = Map::new();
    // (value, place) of the keys taken out; `None` once something unusual put them back.
    let mut parent: Option<(String, usize)> = None;
    let mut state: Option<(String, usize)> = None;
    let mut taking = true;
    while let Some(key) = map.next_key::<MetaKey>()? {
        let name = match key {
            MetaKey::Other(k) => {
                let v = map.next_value()?;
                taken.repeated |= m.insert(k, v).is_some();
                continue;
            }
            MetaKey::Parent(at) => {
                taken.keys.traceparent =
                    taken.key_end(at.filter(|_| taken.meta_in_place), "traceparent");
                "traceparent"
            }
            MetaKey::State(at) => {
                taken.keys.tracestate =
                    taken.key_end(at.filter(|_| taken.meta_in_place), "tracestate");
                "tracestate"
            }
        };
        let v: Value = map.next_value()?;
        if taking {
            let out = usize::from(parent.is_some()) + usize::from(state.is_some());
            let slot = if name == "traceparent" {
                &mut parent
            } else {
                &mut state
            };
            if let Value::String(s) = v {
                // A repeated key keeps its first place and takes the last value.
                taken.repeated |= slot.is_some();
                let at = slot.as_ref().map_or(m.len() + out, |(_, at)| *at);
                *slot = Some((s, at));
                continue;
            }
            put_back(&mut m, parent.take(), state.take());
            taking = false;
            taken.left_in_map = true;
            taken.repeated |= m.insert(name.to_owned(), v).is_some();
        } else {
            taken.repeated |= m.insert(name.to_owned(), v).is_some();
        }
    }
    match parent {
        Some((traceparent, parent_at)) => {
            let (tracestate, state_at) = match state {
                Some((s, at)) => (Some(s), Some(at)),
                None => (None, None),
            };
            taken.trace = Some(TraceContext {
                traceparent,
                tracestate,
                parent_at: Some(parent_at),
                state_at,
            });
        }
        None => put_back(&mut m, None, state),
    }
    Ok(Value::Object(m))
}

/// Returns taken keys to the map at their places (the earlier place first, so that
/// each index exists when it is used).
fn put_back(
    m: &mut Map<String, Value>,
    parent: Option<(String, usize)>,
    state: Option<(String, usize)>,
) {
    let mut back: Vec<(&str, String, usize)> = Vec::with_capacity(2);
    if let Some((v, at)) = parent {
        back.push(("traceparent", v, at));
    }
    if let Some((v, at)) = state {
        back.push(("tracestate", v, at));
    }
    back.sort_by_key(|b| b.2);
    for (k, v, at) in back {
        m.shift_insert(at.min(m.len()), k.to_owned(), Value::String(v));
    }
}
