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

/// WebSocket write buffer: 0 writes each message through at once, no buffering.
pub const WS_WRITE_BUFFER_BYTES: usize = 0;

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
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
    /// Set while skipping the rest of an over-long line: its length so far.
    discarding: Option<usize>,
}

impl LineDecoder {
    /// A decoder for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            scanned: 0,
            max,
            discarding: None,
        }
    }

    /// Adds newly received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned (bounded by about `max` plus one read).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, if one is available.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let newline = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + self.scanned);
            match (newline, self.discarding) {
                (Some(nl), Some(skipped)) => {
                    let len = skipped + nl;
                    let id = sniff_id(&self.buf[..nl.min(SNIFF_PREFIX_BYTES)]);
                    self.consume(nl + 1);
                    self.discarding = None;
                    return Some(Frame::TooLong { id, len });
                }
                (Some(nl), None) => {
                    let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                    self.scanned = 0;
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
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
                    return Some(Frame::Line(line));
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
                    if self.buf.len() > self.max {
                        self.discarding = Some(0);
                        continue;
                    }
                    return None;
                }
            }
        }
    }

    /// Drops the first `n` bytes of the buffer.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.scanned = 0;
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
