//! Newline-delimited framing with a maximum line size, without I/O.
//!
//! Feed bytes as they arrive with [`LineDecoder::push`], then take complete frames with
//! [`LineDecoder::next_frame`]. A line longer than the limit is not buffered: the decoder
//! passes it through a [`Sniffer`] as it discards it, up to the next newline, and
//! reports [`Frame::TooLong`] with the line's id and whether it was a response or a
//! notification, wherever in the line these were. The stream keeps working after any bad line. Blank lines are
//! skipped; a trailing `\r` is removed. [`LineDecoder::finish`] gives a last line that
//! has no newline when the stream ends.

use crate::jsonrpc::{sniff, Sniffed, Sniffer};

/// Default maximum size of one message (one line), in bytes: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A WebSocket message over `max_message_bytes` but at most this many times as large is
/// still read whole (tungstenite cannot skip part of one), so that it can be answered
/// for its id and dropped while the connection stays up; a larger one is refused by
/// tungstenite, which cannot go on reading after it, and the connection ends. So a
/// connection may buffer up to this many times `max_message_bytes`.
pub const WS_OVERSIZE_FACTOR: usize = 2;

/// The message size tungstenite is given for a `max_message_bytes` bound
/// ([`WS_OVERSIZE_FACTOR`]).
pub fn ws_read_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(WS_OVERSIZE_FACTOR)
}

/// WebSocket read buffer per connection (tungstenite allocates it up front; its default
/// of 128 KiB would dominate the memory of an idle session).
pub const WS_READ_BUFFER_BYTES: usize = 4096;

/// WebSocket write batch: messages already queued when a writer takes one go out with
/// it in one write to the socket, until about this many bytes are waiting
/// (tungstenite's write buffer; a bigger message goes as it is), then the writer
/// flushes. One `sendto` per burst instead of one per message: at C = 32 the gateway
/// made one per response, and the kernel's part of its CPU time was larger than its
/// own (docs/benchmark.md, "Changes made"). A lone message is written at once, as
/// before. A connection that sent a burst keeps a buffer of about this size plus its
/// largest message (tungstenite never shrinks it), so it is per-session memory: 4 KiB
/// did as well as 16 KiB (paired runs at C = 32, gateway only and router + gateway).
pub const WS_WRITE_BATCH_BYTES: usize = 4 * 1024;

/// Bytes read from a pipe (stdin, a backend's stdout) per read call.
pub const PIPE_READ_CHUNK_BYTES: usize = 16 * 1024;

/// One unit of input.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A complete line, without its newline.
    Line(Vec<u8>),
    /// A line longer than the limit was dropped.
    TooLong {
        /// What could be read of the line: its id, and whether it was a response or a
        /// notification (neither is answered).
        seen: Sniffed,
        /// How many bytes the line had.
        len: usize,
    },
}

/// Splits a byte stream into lines of at most `max` bytes.
///
/// Lines are taken from the front of `buf` by moving `start`, not by removing them:
/// the bytes still to read move to the front once per [`LineDecoder::push`], not once
/// per line (a pipe read can bring many lines at once).
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Where the bytes not yet returned begin in `buf`.
    start: usize,
    /// Bytes of `buf` (from its beginning) already searched for a newline.
    scanned: usize,
    max: usize,
    /// Set while skipping the rest of an over-long line: its length so far and what
    /// has been read of it. `start` is 0 then, and `buf` holds only bytes not yet
    /// passed to the sniffer.
    discarding: Option<(usize, Sniffer)>,
    /// Whether a line has been framed yet: a UTF-8 byte order mark before the first one
    /// is dropped ([`BOM`]).
    past_first: bool,
}

/// The UTF-8 byte order mark, which some writers (.NET's and PowerShell's, by default)
/// put before the first byte of a stream. RFC 8259 lets a JSON reader ignore it: before
/// a stream's first line it is dropped, so the host's `initialize` is read, not refused
/// as invalid JSON with no id. Anywhere else it is the text's own.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

impl LineDecoder {
    /// A decoder for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
            discarding: None,
            past_first: false,
        }
    }

    /// Adds newly received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned (bounded by about `max` plus one read).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, if one is available.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let newline =
                memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|p| p + self.scanned);
            match (newline, self.discarding.take()) {
                (Some(nl), Some((skipped, mut sniffer))) => {
                    sniffer.feed(&self.buf[..nl]);
                    self.start = nl + 1;
                    self.scanned = self.start;
                    return Some(Frame::TooLong {
                        seen: sniffer.finish(),
                        len: skipped + nl,
                    });
                }
                (Some(nl), None) => {
                    let begin = self.start;
                    self.start = nl + 1;
                    self.scanned = self.start;
                    if let Some(frame) = self.frame(begin, nl) {
                        return Some(frame);
                    }
                }
                (None, Some((skipped, mut sniffer))) => {
                    // Everything buffered belongs to the over-long line: read, dropped.
                    sniffer.feed(&self.buf);
                    let dropped = self.buf.len();
                    self.buf.clear();
                    self.scanned = 0;
                    self.discarding = Some((skipped + dropped, sniffer));
                    return None;
                }
                (None, None) => {
                    self.scanned = self.buf.len();
                    // (Room for a `\r` before the newline: a line of `max` bytes in CRLF
                    // is not too long, however the reads cut it. Nor is a first line
                    // of `max` bytes after a BOM.)
                    let bom = !self.past_first && self.buf[self.start..].starts_with(BOM);
                    if self.buffered() > self.max + 1 + if bom { BOM.len() } else { 0 } {
                        // The over-long line moves to the front, to be discarded, and
                        // its sniffer starts after the BOM, as the parser would.
                        if bom {
                            self.start += BOM.len();
                        }
                        self.past_first = true;
                        self.compact();
                        self.discarding = Some((0, Sniffer::new()));
                        continue;
                    }
                    if self.start == self.buf.len() {
                        self.compact();
                    }
                    return None;
                }
            }
        }
    }

    /// The end of the stream: the last line if it had no newline (as a frame of its
    /// own, or too long), and nothing if it was blank or there was none.
    pub fn finish(&mut self) -> Option<Frame> {
        if let Some((skipped, mut sniffer)) = self.discarding.take() {
            sniffer.feed(&self.buf);
            let len = skipped + self.buf.len();
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
            let seen = sniffer.finish();
            return Some(Frame::TooLong { seen, len });
        }
        let frame = self.frame(self.start, self.buf.len());
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        frame
    }

    /// The frame of the line `buf[begin..end]` (its newline excluded, a `\r` before it
    /// not yet): `None` when it is blank. A too-long line's length counts that `\r`, as
    /// when it is discarded.
    fn frame(&mut self, begin: usize, end: usize) -> Option<Frame> {
        let first = !std::mem::replace(&mut self.past_first, true);
        let raw = &self.buf[begin..end];
        let raw = match raw.strip_prefix(BOM) {
            Some(rest) if first => rest,
            _ => raw,
        };
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() > self.max {
            let seen = sniff(raw);
            return Some(Frame::TooLong {
                seen,
                len: raw.len(),
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(Frame::Line(line.to_vec()))
    }

    /// Moves the bytes not yet returned to the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Id;

    fn frames(d: &mut LineDecoder) -> Vec<Frame> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut d = LineDecoder::new(100);
        d.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{\"a\":1}".to_vec())]);
        d.push(b":2}\r\n\n  \n{\"c\":3}\n");
        assert_eq!(
            frames(&mut d),
            vec![
                Frame::Line(b"{\"b\":2}".to_vec()),
                Frame::Line(b"{\"c\":3}".to_vec())
            ]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn many_lines_in_one_read_come_out_in_order_with_a_partial_one_kept() {
        let mut d = LineDecoder::new(100);
        let mut data = Vec::new();
        for i in 0..50 {
            data.extend_from_slice(format!("{{\"id\":{i}}}\n").as_bytes());
        }
        data.extend_from_slice(b"{\"id\":");
        d.push(&data);
        let mut left = data.len();
        for i in 0..50 {
            let line = format!("{{\"id\":{i}}}").into_bytes();
            left -= line.len() + 1;
            assert_eq!(d.next_frame(), Some(Frame::Line(line)));
            assert_eq!(d.buffered(), left);
        }
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.buffered(), 6, "only the partial line is left");
        d.push(b"50}\n");
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{\"id\":50}".to_vec())]);
        assert_eq!(d.buffered(), 0);
        assert!(d.buf.is_empty(), "a fully read buffer is emptied");
    }

    /// What the decoder must return for `stream` when every line is complete, however
    /// the stream is cut into reads.
    fn model(stream: &[u8], max: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut lines: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
        lines.pop(); // after the last newline: nothing, or a partial line
        for raw in lines {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.len() > max {
                let seen = sniff(raw);
                out.push(Frame::TooLong {
                    seen,
                    len: raw.len(),
                });
            } else if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(Frame::Line(line.to_vec()));
            }
        }
        out
    }

    #[test]
    fn any_cut_of_a_stream_into_reads_gives_the_same_frames() {
        const MAX: usize = 64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            // Lines of every kind: short, blank, CRLF, at the limit, just over it, and
            // several times over it; some start with an id.
            let mut stream = Vec::new();
            for i in 0..1 + next(12) {
                let len = match next(5) {
                    0 => next(8),
                    1 => MAX - 1 + next(3),
                    2 => 3 * MAX + next(100),
                    _ => 10 + next(40),
                };
                let mut line = match next(3) {
                    0 => format!("{{\"id\":{round}{i},\"x\":\"").into_bytes(),
                    1 => b"{\"result\":{\"x\":\"".to_vec(),
                    _ => Vec::new(),
                };
                let tail = format!("\"}},\"id\":\"t{round}-{i}\"}}");
                while line.len() < len {
                    line.push([b'a', b' ', b'{', b'"', b'\\'][next(5)]);
                }
                line.truncate(len);
                if next(3) == 0 {
                    // The id last, as the TypeScript SDK writes it.
                    line.extend_from_slice(tail.as_bytes());
                }
                if next(4) == 0 {
                    line.push(b'\r');
                }
                stream.extend_from_slice(&line);
                stream.push(b'\n');
            }
            let want = model(&stream, MAX);
            let mut d = LineDecoder::new(MAX);
            let mut got = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let n = (1 + next(2 * MAX)).min(stream.len() - at);
                d.push(&stream[at..at + n]);
                at += n;
                got.extend(frames(&mut d));
                assert!(d.buffered() <= 2 * MAX);
            }
            assert_eq!(
                got,
                want,
                "round {round}: {}",
                String::from_utf8_lossy(&stream)
            );
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn over_long_line_is_reported_with_its_id_and_the_stream_goes_on() {
        // The id first, or last (the TypeScript SDK writes it after `params`); a
        // response says so.
        for (head, tail, id, response) in [
            (
                &br#"{"jsonrpc":"2.0","id":"big-1","method":"tools/call","params":{"x":""#[..],
                &br#""}}"#[..],
                Id::String("big-1".into()),
                false,
            ),
            (
                br#"{"method":"tools/call","params":{"id":1,"x":""#,
                br#""},"jsonrpc":"2.0","id":77}"#,
                Id::from(77),
                false,
            ),
            (
                br#"{"jsonrpc":"2.0","result":{"x":""#,
                br#""},"id":"r-9"}"#,
                Id::String("r-9".into()),
                true,
            ),
        ] {
            let mut d = LineDecoder::new(64);
            d.push(head);
            for _ in 0..100 {
                d.push(&[b'x'; 1000]);
                assert_eq!(d.next_frame(), None);
                assert!(d.buffered() <= 1000, "only what is not yet read is kept");
            }
            d.push(tail);
            d.push(b"\n{\"ok\":true}\n");
            let got = frames(&mut d);
            assert_eq!(
                got,
                vec![
                    Frame::TooLong {
                        seen: Sniffed {
                            id: Some(id),
                            response,
                            notification: false
                        },
                        len: head.len() + 100_000 + tail.len()
                    },
                    Frame::Line(b"{\"ok\":true}".to_vec())
                ]
            );
        }
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_dropped() {
        let mut d = LineDecoder::new(64);
        d.push(b"\xEF\xBB\xBF{\"id\":1}\r\n\xEF\xBB\xBF{\"id\":2}\n");
        assert_eq!(
            frames(&mut d),
            vec![
                Frame::Line(b"{\"id\":1}".to_vec()),
                // Not at the start of the stream: the line's own bytes.
                Frame::Line(b"\xEF\xBB\xBF{\"id\":2}".to_vec()),
            ]
        );
        // The last line without a newline, when it is the first.
        let mut d = LineDecoder::new(64);
        d.push(b"\xEF\xBB\xBF{\"id\":3}");
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.finish(), Some(Frame::Line(b"{\"id\":3}".to_vec())));
        // A first line of the full size after a BOM is not too long, however the reads
        // cut it; one byte more is, and its id is read past the BOM.
        let line = format!("{{\"id\":4,\"p\":\"{}\"}}", "x".repeat(49));
        assert_eq!(line.len(), 64);
        for cut in [0, 2, 3, 40, 67] {
            let mut d = LineDecoder::new(64);
            let text = [BOM, line.as_bytes(), b"\n"].concat();
            d.push(&text[..cut]);
            assert_eq!(d.next_frame(), None);
            d.push(&text[cut..]);
            assert_eq!(frames(&mut d), vec![Frame::Line(line.clone().into_bytes())]);
            // Too long by more than the `\r` allowance, and read before its newline
            // comes (the cut at the end): discarded as it arrives, past the BOM.
            let long = format!("{{\"p\":\"{}\",\"id\":5}}", "x".repeat(50));
            let mut d = LineDecoder::new(long.len() - 3);
            let text = [BOM, long.as_bytes(), b"\n{\"id\":6}\n"].concat();
            let cut = if cut == 67 {
                BOM.len() + long.len()
            } else {
                cut
            };
            d.push(&text[..cut]);
            let mut got = frames(&mut d);
            d.push(&text[cut..]);
            got.extend(frames(&mut d));
            let Frame::TooLong { seen, .. } = &got[0] else {
                panic!("{got:?}")
            };
            assert_eq!(seen.id, Some(Id::from(5)), "cut at {cut}");
            assert_eq!(got[1], Frame::Line(b"{\"id\":6}".to_vec()));
        }
    }

    #[test]
    fn the_last_line_without_a_newline_is_given_at_the_end() {
        let mut d = LineDecoder::new(64);
        d.push(b"{\"a\":1}\n{\"id\":2,\"method\":\"ping\"}\r");
        assert_eq!(frames(&mut d), vec![Frame::Line(b"{\"a\":1}".to_vec())]);
        assert_eq!(
            d.finish(),
            Some(Frame::Line(b"{\"id\":2,\"method\":\"ping\"}".to_vec()))
        );
        assert_eq!(d.finish(), None, "given once");
        d.push(b" \t");
        assert_eq!(d.finish(), None, "blank");
        // Too long, and never ended: still reported, with its id.
        let mut d = LineDecoder::new(16);
        d.push(b"{\"method\":\"x\",\"params\":{\"p\":\"");
        d.push(&[b'y'; 100]);
        d.push(b"\"},\"id\":5}");
        assert_eq!(frames(&mut d), vec![]);
        assert_eq!(
            d.finish(),
            Some(Frame::TooLong {
                seen: Sniffed {
                    id: Some(Id::from(5)),
                    response: false,
                    notification: false
                },
                len: 29 + 100 + 10
            })
        );
    }

    #[test]
    fn line_just_over_the_limit_in_one_read() {
        let mut d = LineDecoder::new(10);
        d.push(b"{\"id\":7,\"x\":1}\n0123456789\n");
        let got = frames(&mut d);
        assert_eq!(
            got,
            vec![
                Frame::TooLong {
                    seen: Sniffed {
                        id: Some(Id::from(7)),
                        response: false,
                        notification: false
                    },
                    len: 14
                },
                Frame::Line(b"0123456789".to_vec())
            ]
        );
    }
}
