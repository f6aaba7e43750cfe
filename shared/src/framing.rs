//! Newline-delimited framing with a maximum line size, without I/O.
//!
//! Feed bytes as they arrive with [`LineDecoder::push`], then take complete frames with
//! [`LineDecoder::next_frame`]. A line longer than the limit is not buffered: the decoder
//! keeps only its first [`SNIFF_PREFIX_BYTES`] (so the request id can still be read with
//! [`crate::jsonrpc::sniff_id`]), discards the rest up to the next newline and reports
//! [`Frame::TooLong`]. The stream keeps working after any bad line. Blank lines are
//! skipped; a trailing `\r` is removed.

use crate::jsonrpc::{sniff_id, Id};

/// Default maximum size of one message (one line), in bytes: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How much of an over-long line is kept to read its id from.
pub const SNIFF_PREFIX_BYTES: usize = 4096;

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
        /// The id read from the start of the line, if any.
        id: Option<Id>,
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
    /// Set while skipping the rest of an over-long line: its length so far. `start` is
    /// 0 then, and `buf` holds only the line's first bytes.
    discarding: Option<usize>,
}

impl LineDecoder {
    /// A decoder for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
            discarding: None,
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
            match (newline, self.discarding) {
                (Some(nl), Some(skipped)) => {
                    let len = skipped + nl;
                    let id = sniff_id(&self.buf[..nl.min(SNIFF_PREFIX_BYTES)]);
                    self.start = nl + 1;
                    self.scanned = self.start;
                    self.discarding = None;
                    return Some(Frame::TooLong { id, len });
                }
                (Some(nl), None) => {
                    let begin = self.start;
                    let mut end = nl;
                    if end > begin && self.buf[end - 1] == b'\r' {
                        end -= 1;
                    }
                    self.start = nl + 1;
                    self.scanned = self.start;
                    let line = &self.buf[begin..end];
                    if line.len() > self.max {
                        let id = sniff_id(&line[..line.len().min(SNIFF_PREFIX_BYTES)]);
                        return Some(Frame::TooLong {
                            id,
                            len: line.len(),
                        });
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(Frame::Line(line.to_vec()));
                }
                (None, Some(skipped)) => {
                    // Keep the sniff prefix, drop everything after it.
                    let keep = SNIFF_PREFIX_BYTES.min(self.buf.len());
                    let dropped = self.buf.len() - keep;
                    self.buf.truncate(keep);
                    self.scanned = keep;
                    self.discarding = Some(skipped + dropped);
                    return None;
                }
                (None, None) => {
                    self.scanned = self.buf.len();
                    if self.buffered() > self.max {
                        // The over-long line moves to the front: `discarding` keeps
                        // only its first bytes.
                        self.compact();
                        self.discarding = Some(0);
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
            if raw.len() > max {
                let id = sniff_id(&raw[..raw.len().min(SNIFF_PREFIX_BYTES)]);
                out.push(Frame::TooLong { id, len: raw.len() });
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
                let mut line = if next(2) == 0 {
                    format!("{{\"id\":{round}{i},\"x\":\"").into_bytes()
                } else {
                    Vec::new()
                };
                while line.len() < len {
                    line.push([b'a', b' ', b'{', b'"'][next(4)]);
                }
                line.truncate(len);
                if next(4) == 0 && len + 1 < MAX {
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
                assert!(d.buffered() <= SNIFF_PREFIX_BYTES + 2 * MAX);
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
        let mut d = LineDecoder::new(64);
        let head = br#"{"jsonrpc":"2.0","id":"big-1","method":"tools/call","params":{"x":""#;
        d.push(head);
        for _ in 0..100 {
            d.push(&[b'x'; 1000]);
            assert_eq!(d.next_frame(), None);
            assert!(d.buffered() <= SNIFF_PREFIX_BYTES + 1000);
        }
        d.push(b"\"}}\n{\"ok\":true}\n");
        let got = frames(&mut d);
        assert_eq!(got.len(), 2);
        match &got[0] {
            Frame::TooLong { id, len } => {
                assert_eq!(id, &Some(Id::String("big-1".into())));
                assert_eq!(*len, head.len() + 100_000 + 3);
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert_eq!(got[1], Frame::Line(b"{\"ok\":true}".to_vec()));
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
                    id: Some(Id::from(7)),
                    len: 14
                },
                Frame::Line(b"0123456789".to_vec())
            ]
        );
    }
}
