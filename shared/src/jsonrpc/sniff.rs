//! What can still be read of a message that cannot be parsed (not JSON, not UTF-8, or
//! over the size limit): its top-level `id` and whether it is a response.
//!
//! [`Sniffer`] reads the text byte by byte and keeps no more than the id's own text, so
//! an over-long line can be fed through it as it is discarded, whatever its length and
//! wherever its `id` is (the TypeScript SDK writes `id` after `params`). It only tracks
//! strings and nesting: keys are read at the top level of the first object (decoded
//! when written with escapes, `"\u0069d"` being `id` to the parser too), and text that
//! is broken elsewhere does not stop it. Where the nesting itself is broken (a closing
//! bracket of the wrong kind, an object never closed) it may miss the `id`, so it never
//! calls such a text a notification: it gets an answer, with id `null`. What it finds
//! decides what the bridge answers: a request gets an error carrying its id, a response
//! is never answered (its sender's request is failed instead).

use super::Id;

/// An `id` whose text (as written, with the spaces around it) is longer than this is
/// not read back: a JSON-RPC id is a short string or a number.
pub const MAX_SNIFFED_ID_BYTES: usize = 1024;

/// What [`Sniffer`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sniffed {
    /// The top-level `id` (the last one, if given twice), if it is a string or number.
    pub id: Option<Id>,
    /// The top level has `result` or `error` and no `method`: a response, which must
    /// not be answered.
    pub response: bool,
    /// The top level has `method` and no `id` key, and the object closed with no
    /// bracket out of place: a notification, which is not answered either.
    pub notification: bool,
}

impl Sniffed {
    /// Whether the text may be answered: it is neither a response nor a notification.
    pub fn answerable(&self) -> bool {
        !self.response && !self.notification
    }
}

/// A top-level key the sniffer cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Id,
    Method,
    Result,
    Error,
    Other,
}

impl Key {
    fn of(name: &[u8]) -> Key {
        match name {
            b"id" => Key::Id,
            b"method" => Key::Method,
            b"result" => Key::Result,
            b"error" => Key::Error,
            _ => Key::Other,
        }
    }
}

/// Longest key text kept while reading one: `method` with every character written as
/// a `\uXXXX` escape (a key JSON decodes to one of ours). Longer keys are others.
const KEY_BYTES: usize = 6 * 6;

/// Levels whose opening bracket is remembered (deeper ones take any closing bracket).
const KIND_LEVELS: usize = 128;

/// An incremental reader of a message's top level (see the module documentation).
#[derive(Debug, Default)]
pub struct Sniffer {
    /// 0 before and after the top-level object, 1 inside it, more inside its values.
    depth: usize,
    /// Which bracket opened each level from 2 on (bit `depth - 2` set: `[`), for the
    /// first [`KIND_LEVELS`] of them: a closing bracket of the other kind means the
    /// nesting read may be wrong (a stray `]` may have ended an object early).
    kinds: u128,
    /// A closing bracket that did not match was seen.
    mismatched: bool,
    /// The top-level object was closed by its `}`.
    closed: bool,
    /// The top-level object has begun (or the text is not an object: `done`).
    started: bool,
    /// Bytes of a UTF-8 byte order mark read at the very start (3: none may come any
    /// more). A BOM makes the text invalid JSON, but its id is still the one to answer
    /// under (a peer that writes a BOM before a later line).
    lead: u8,
    done: bool,
    in_string: bool,
    escaped: bool,
    /// At depth 1, where the next string is a key.
    want_key: bool,
    /// Reading a top-level key: its first bytes.
    key: Option<Vec<u8>>,
    /// The key being read is longer than ours.
    key_other: bool,
    /// The key being read has an escape: it is decoded before it is compared.
    key_escaped: bool,
    /// The last top-level key read, until its value ends.
    current: Option<Key>,
    /// The text of the `id` value being read (`None` when not reading one, or it grew
    /// past [`MAX_SNIFFED_ID_BYTES`]).
    id_text: Option<Vec<u8>>,
    /// The last whole `id` value's text.
    id: Option<Vec<u8>>,
    /// An `id` key was seen (whatever its value).
    id_key: bool,
    method: bool,
    result: bool,
    error: bool,
}

impl Sniffer {
    /// A sniffer at the start of a message.
    pub fn new() -> Self {
        Sniffer::default()
    }

    /// Reads the next bytes of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() && !self.done {
            if self.in_string {
                let rest = &bytes[i..];
                if self.escaped {
                    self.escaped = false;
                    self.keep(&rest[..1]);
                    i += 1;
                    continue;
                }
                // The bulk of a long line is string contents: jump to what ends or
                // escapes, keeping what a key or an id needs.
                let n = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                self.keep(&rest[..n]);
                i += n;
                let Some(&b) = bytes.get(i) else { break };
                i += 1;
                if b == b'\\' {
                    self.escaped = true;
                    self.key_escaped |= self.key.is_some();
                    self.keep(b"\\");
                } else if let Some(k) = self.key.take() {
                    self.in_string = false;
                    self.current = Some(if self.key_other {
                        Key::Other
                    } else if self.key_escaped {
                        // `"\u0069d"` is the key `id` to the parser, so to us too.
                        let mut quoted = Vec::with_capacity(k.len() + 2);
                        quoted.push(b'"');
                        quoted.extend_from_slice(&k);
                        quoted.push(b'"');
                        serde_json::from_slice::<String>(&quoted)
                            .map_or(Key::Other, |name| Key::of(name.as_bytes()))
                    } else {
                        Key::of(&k)
                    });
                    self.want_key = false;
                } else {
                    self.in_string = false;
                    self.keep(b"\"");
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            if !self.started {
                if self.lead < 3 && b == crate::framing::BOM[usize::from(self.lead)] {
                    self.lead += 1;
                    continue;
                }
                self.lead = 3;
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        self.want_key = true;
                    }
                    _ => self.done = true,
                }
                continue;
            }
            if self.depth == 1 {
                match b {
                    b'"' if self.want_key => {
                        self.in_string = true;
                        self.key = Some(Vec::with_capacity(KEY_BYTES));
                        self.key_other = false;
                        self.key_escaped = false;
                    }
                    b':' if self.key.is_none() && !self.want_key => match self.current {
                        Some(Key::Id) => {
                            self.id_key = true;
                            self.id_text = Some(Vec::new());
                        }
                        Some(Key::Method) => self.method = true,
                        Some(Key::Result) => self.result = true,
                        Some(Key::Error) => self.error = true,
                        _ => {}
                    },
                    b',' => self.end_value(),
                    b'}' => {
                        self.end_value();
                        self.depth = 0;
                        self.closed = true;
                        self.done = true;
                    }
                    b']' => self.mismatched = true,
                    _ => {
                        self.keep(&[b]);
                        match b {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.open(b),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.open(b),
                b'}' | b']' => {
                    // Counted whatever its kind (a `}` typed for a `]` still closes the
                    // level), but a wrong kind makes the reading unsure.
                    let level = self.depth - 2;
                    let array = self.kinds & (1 << level.min(KIND_LEVELS - 1)) != 0;
                    if level < KIND_LEVELS && array != (b == b']') {
                        self.mismatched = true;
                    }
                    self.depth -= 1;
                }
                _ => {}
            }
            self.keep(&[b]);
        }
    }

    /// A value opens with `b` (`{` or `[`): one level deeper.
    fn open(&mut self, b: u8) {
        self.depth += 1;
        let level = self.depth - 2;
        if level < KIND_LEVELS {
            if b == b'[' {
                self.kinds |= 1 << level;
            } else {
                self.kinds &= !(1 << level);
            }
        }
    }

    /// What was found, the message having ended (a number at the very end counts).
    pub fn finish(mut self) -> Sniffed {
        if !self.in_string {
            self.end_value();
        }
        let id = self
            .id
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| Id::from_value(&v));
        Sniffed {
            id,
            response: !self.method && (self.result || self.error),
            // Only when sure: the object ended cleanly. A text broken where an `id`
            // might have been gets an answer (with id `null`) rather than none.
            notification: self.method && !self.id_key && self.closed && !self.mismatched,
        }
    }

    /// Adds bytes to the key or the id being read, within their bounds.
    fn keep(&mut self, b: &[u8]) {
        if let Some(k) = &mut self.key {
            if k.len() + b.len() <= KEY_BYTES {
                k.extend_from_slice(b);
            } else {
                self.key_other = true;
            }
        } else if let Some(t) = &mut self.id_text {
            if t.len() + b.len() <= MAX_SNIFFED_ID_BYTES {
                t.extend_from_slice(b);
            } else {
                self.id_text = None;
                self.current = None;
            }
        }
    }

    /// A top-level value ended (at `,`, `}` or the end of the text).
    fn end_value(&mut self) {
        if self.depth == 1 {
            if let Some(t) = self.id_text.take() {
                self.id = Some(t);
            }
            self.current = None;
            self.want_key = true;
        }
    }
}

/// [`Sniffer`] over a whole text.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    let mut s = Sniffer::new();
    s.feed(bytes);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: u64) -> Option<Id> {
        Some(Id::from(n))
    }

    #[test]
    fn reads_the_top_level_id_wherever_it_is() {
        let cases: &[(&[u8], Option<Id>)] = &[
            (br#"{"jsonrpc":"2.0","id":7,"method":"x"}"#, num(7)),
            // Past a byte order mark at the very start (only there).
            (b"\xEF\xBB\xBF{\"id\":8,\"result\":{}}", num(8)),
            (b" \xEF\xBB\xBF{\"id\":8,\"result\":{}}", None),
            (b"\xEF\xBB\xBF\xEF\xBB\xBF{\"id\":8}", None),
            // After params, as the TypeScript SDK writes it, with an `id` inside.
            (
                br#"{"method":"x","params":{"id":3,"s":"\"id\":4}"},"jsonrpc":"2.0","id":12}"#,
                num(12),
            ),
            (
                br#" { "id" : "a\"b" , "method":"x"}"#,
                Some(Id::String("a\"b".into())),
            ),
            // Broken JSON elsewhere does not hide it.
            (br#"{"params":{"a":[1,,2}},"id":5,"method":"x",}"#, num(5)),
            (
                br#"{"params":{"x":tru},"id":-1.5e3}"#,
                Some(Id::Number(serde_json::Number::from_f64(-1500.0).unwrap())),
            ),
            // The text ends after a number: it counts (the line ended there).
            (br#"{"jsonrpc":"2.0","id":12"#, num(12)),
            // Given twice: the last, as the parser takes it.
            (br#"{"id":1,"method":"x","id":2}"#, num(2)),
            // Not ids.
            (br#"{"id":null,"method":"x"}"#, None),
            (br#"{"id":[1],"method":"x"}"#, None),
            (br#"{"id":{"a":1}}"#, None),
            (br#"{"id":"unterminated"#, None),
            (br#"{"method":"x","params":{"id":1}}"#, None),
            (b"garbage", None),
            (br#"[{"id":1}]"#, None),
            // After the top-level object: not its id.
            (br#"{"method":"x"} {"id":9}"#, None),
            // An escaped key is read as the parser reads it.
            (br#"{"i\u0064":3}"#, num(3)),
            (br#"{"\u0069\u0064":"a"}"#, Some(Id::String("a".into()))),
            (br#"{"i\"d":3}"#, None),
            (br#"{"i\u0064x":3}"#, None),
            // A broken escape is no key of ours.
            (br#"{"i\u00":3}"#, None),
            (br#"{"identity":3,"method":"x"}"#, None),
            // A `}` typed for a `]` still closes its level.
            (br#"{"params":[{"a":1}}],"id":9}"#, num(9)),
        ];
        for (text, want) in cases {
            assert_eq!(&sniff(text).id, want, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn tells_notifications() {
        for (text, notification) in [
            (
                &br#"{"jsonrpc":"2.0","method":"notifications/x","params":{"id":1,"a":}}"#[..],
                true,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"notifications/x","params":{"id":1,"#,
                false,
            ),
            (br#"{"method":"x","id":null,"params":"#, false),
            (br#"{"method":"x","id":[1]}"#, false),
            (br#"{"params":{},"method":"x","id":3"#, false),
            (br#"{"params":{"method":"x"}}"#, false),
            (b"garbage", false),
            // Not sure: a bracket out of place, or no end; answered (id null) rather
            // than a request left without an answer.
            (br#"{"method":"x","params":{"a":]}}"#, false),
            // (A stray `]` ended `params`, the next `}` the object: the id after it
            // is not seen, so this request must not pass for a notification.)
            (
                br#"{"method":"tools/call","params":{"name":"e","arguments":{"text":]}},"jsonrpc":"2.0","id":8}"#,
                false,
            ),
            (br#"{"method":"x","params":{"a":1}"#, false),
            (br#"{"method":"x","params":{"a":[1,2,{"b":[]}]}}"#, true),
        ] {
            let seen = sniff(text);
            assert_eq!(
                seen.notification,
                notification,
                "{}",
                String::from_utf8_lossy(text)
            );
            assert_eq!(seen.answerable(), !notification);
        }
    }

    #[test]
    fn tells_responses_from_requests_and_notifications() {
        for (text, response) in [
            (&br#"{"id":1,"result":{"x":[}"#[..], true),
            (br#"{"id":1,"error":{"code":1,"message":"m"},"x":"#, true),
            (br#"{"jsonrpc":"2.0","result":"#, true),
            (br#"{"id":1,"method":"x","result":1}"#, false),
            (
                br#"{"id":1,"method":"sampling/createMessage","params":{"result":1}}"#,
                false,
            ),
            (
                br#"{"method":"notifications/x","params":{"error":1}}"#,
                false,
            ),
            (br#"{"params":{"result":1},"id":1}"#, false),
            (b"\xff\xfe", false),
        ] {
            assert_eq!(
                sniff(text).response,
                response,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn any_cut_into_pieces_reads_the_same() {
        let texts: &[&[u8]] = &[
            br#"{"method":"tools/call","params":{"name":"a\\\"b","arguments":{"id":"x","q":"}}}"}},"jsonrpc":"2.0","id":"req-\u00e9\"7"}"#,
            br#" {"result":{"content":[{"type":"text","text":"\\"}]} , "id" : 42 }"#,
            br#"{"identity":1,"i":2,"methods":3,"error":4,"id":5"#,
        ];
        for text in texts {
            let whole = sniff(text);
            for cut in 0..=text.len() {
                for cut2 in cut..=text.len() {
                    let mut s = Sniffer::new();
                    s.feed(&text[..cut]);
                    s.feed(&text[cut..cut2]);
                    s.feed(&text[cut2..]);
                    assert_eq!(s.finish(), whole, "cuts {cut} {cut2}");
                }
            }
        }
        assert_eq!(sniff(texts[0]).id, Some(Id::String("req-é\"7".into())));
        let response = |id| Sniffed {
            id,
            response: true,
            notification: false,
        };
        assert_eq!(sniff(texts[1]), response(num(42)));
        assert_eq!(sniff(texts[2]), response(num(5)));
    }

    #[test]
    fn an_id_too_long_to_be_one_is_not_read() {
        let long = format!(
            r#"{{"id":"{}","method":"x"}}"#,
            "a".repeat(MAX_SNIFFED_ID_BYTES)
        );
        assert_eq!(sniff(long.as_bytes()).id, None);
        let fits = format!(
            r#"{{"id":"{}","method":"x"}}"#,
            "a".repeat(MAX_SNIFFED_ID_BYTES - 2)
        );
        assert!(sniff(fits.as_bytes()).id.is_some());
        // A later id still counts.
        let again = format!(r#"{{"id":"{}","id":3}}"#, "a".repeat(5000));
        assert_eq!(sniff(again.as_bytes()).id, num(3));
    }
}
