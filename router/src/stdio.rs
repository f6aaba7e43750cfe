//! The router's ends of the host's pipes: how stdin is read and stdout written.
//!
//! MCP hosts launch a stdio server with pipes (or a socket pair). Such a stdin or stdout
//! is switched to non-blocking mode and watched by the relay thread's reactor, like the
//! WebSocket: a message read or written costs system calls on that thread and no
//! hand-off to another one. Anything else (a terminal, a regular file, `/dev/null`:
//! epoll refuses regular files, and a terminal is shared with the shell) keeps the
//! blocking path: stdin through `smol::Unblock`, stdout from one blocking-pool thread.
//!
//! `O_NONBLOCK` belongs to the open file description, which another process may share,
//! so [`Restore`] puts the flags back as they were when the relay ends: at stdin's EOF,
//! and on `SIGTERM`, which ends the relay the same way (nothing can after `SIGKILL`).
//! stdin or stdout keeps the blocking path when stderr is the same file (`2>&1`, one
//! socket for all three): log lines written there would otherwise meet `EAGAIN`.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_io::Async;
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use mcp_shared::framing::PIPE_READ_CHUNK_BYTES;
use rustix::fs::{FileType, OFlags};

use crate::queue;

/// Bytes of stdout gathered into one write when several messages are queued (a message
/// this long, taken first, is written on its own; one that joins a batch ends it).
pub const STDOUT_BUFFER_BYTES: usize = 16 * 1024;

/// Messages queued for stdout, at most (the WebSocket reader waits when it is full).
pub const STDOUT_QUEUE: usize = 256;
/// Bytes of messages queued for stdout, at most: beyond, whoever queues waits for the
/// writer (a message longer than this goes when the queue is empty). A host that reads
/// slowly holds this much of the router's memory plus one message, not
/// [`STDOUT_QUEUE`] × `max_message_bytes`.
pub const STDOUT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The sending side of the stdout queue (see [`stdout_queue`]).
pub type StdoutTx = queue::Tx<String>;
/// The writer's side of the stdout queue.
pub type StdoutRx = queue::Rx<String>;

/// The queue between the relay and the stdout writer: at most [`STDOUT_QUEUE`]
/// messages and [`STDOUT_QUEUE_BYTES`] bytes.
pub fn stdout_queue() -> (StdoutTx, StdoutRx) {
    queue::bounded(STDOUT_QUEUE, STDOUT_QUEUE_BYTES)
}

/// How the router reads its stdin.
pub enum Input {
    /// A pipe or socket, polled by the reactor.
    Polled(Async<File>),
    /// Anything else, read on a blocking-pool thread.
    Pool(smol::Unblock<io::Stdin>),
}

/// How the router writes its stdout.
pub enum Output {
    /// A pipe or socket, polled by the reactor.
    Polled(Async<File>),
    /// Anything else, written by one blocking-pool thread; `shared` when stdout is
    /// stderr's file (`2>&1`).
    Pool { shared: bool },
}

/// Puts back the file status flags of the descriptors [`open`] switched to non-blocking
/// mode, when dropped.
pub struct Restore(Vec<(OwnedFd, OFlags)>);

impl Drop for Restore {
    fn drop(&mut self) {
        for (fd, flags) in &self.0 {
            if let Err(e) = rustix::fs::fcntl_setfl(fd, *flags) {
                log::debug!("restoring the flags of stdio: {e}");
            }
        }
    }
}

/// Opens stdin and stdout the cheapest way each allows (see the module documentation).
/// Keep the [`Restore`] until both are done with.
pub fn open() -> (Input, Output, Restore) {
    let stdin = io::stdin();
    let stdout = io::stdout();
    // Read before anything is switched: stdin and stdout may be one socket.
    let flags_in = rustix::fs::fcntl_getfl(stdin.as_fd()).ok();
    let flags_out = rustix::fs::fcntl_getfl(stdout.as_fd()).ok();
    let mut restore = Restore(Vec::new());

    // stderr stays blocking: neither is switched when it is the same file (`2>&1`, or
    // one socket for all three).
    let stderr = io::stderr();
    let input = match flags_in
        .filter(|_| !same_file(stdin.as_fd(), stderr.as_fd()))
        .and_then(|f| polled(stdin.as_fd(), f, &mut restore))
    {
        Some(io) => Input::Polled(io),
        None => {
            // The blocking path needs a blocking descriptor: one the host left
            // non-blocking (a socket it uses so, a terminal another program left so)
            // would fail every read that must wait with EAGAIN, taken for the end.
            make_blocking(stdin.as_fd(), flags_in, &mut restore);
            Input::Pool(smol::Unblock::with_capacity(PIPE_READ_CHUNK_BYTES, stdin))
        }
    };
    let shared = same_file(stdout.as_fd(), stderr.as_fd());
    let output = match flags_out
        .filter(|_| !shared)
        .and_then(|f| polled(stdout.as_fd(), f, &mut restore))
    {
        Some(io) => Output::Polled(io),
        None => Output::Pool { shared },
    };
    // The same for stdout (a write that must wait would end the writer).
    if matches!(output, Output::Pool { .. }) {
        make_blocking(stdout.as_fd(), flags_out, &mut restore);
    }
    let how = |polled: bool| {
        if polled {
            "polled"
        } else {
            "via the blocking pool"
        }
    };
    log::debug!(
        "stdin {}, stdout {}",
        how(matches!(input, Input::Polled(_))),
        how(matches!(output, Output::Polled(_)))
    );
    (input, output, restore)
}

/// `fd` registered with the reactor, when it is a pipe or a socket and the registration
/// works; its original `flags` are recorded in `restore` once it has been switched.
fn polled(fd: BorrowedFd<'_>, flags: OFlags, restore: &mut Restore) -> Option<Async<File>> {
    let kind = FileType::from_raw_mode(rustix::fs::fstat(fd).ok()?.st_mode);
    if !matches!(kind, FileType::Fifo | FileType::Socket) {
        return None;
    }
    // Duplicates share the description (and its flags); each owner closes its own.
    let (io, keep) = (fd.try_clone_to_owned().ok()?, fd.try_clone_to_owned().ok()?);
    match Async::new(File::from(io)) {
        Ok(io) => {
            restore.0.push((keep, flags));
            Some(io)
        }
        Err(e) => {
            // `Async::new` switches the mode before the reactor may refuse the
            // descriptor: the blocking path needs it back now, unless the description
            // is also the other one, already polled (one socket for both), which must
            // stay non-blocking.
            let shared = restore
                .0
                .iter()
                .any(|(other, _)| same_file(other.as_fd(), fd));
            if !shared {
                if let Err(e) = rustix::fs::fcntl_setfl(&keep, flags) {
                    log::warn!("restoring the flags of stdio: {e}");
                }
            }
            log::debug!("stdio not polled: {e}");
            None
        }
    }
}

/// Clears `O_NONBLOCK` on `fd` (its original `flags` recorded in `restore`) unless it
/// is clear, or its description is one [`polled`] switched (one socket for both, the
/// other end polled: it must stay non-blocking) or already made blocking here.
fn make_blocking(fd: BorrowedFd<'_>, flags: Option<OFlags>, restore: &mut Restore) {
    let Some(flags) = flags.filter(|f| f.contains(OFlags::NONBLOCK)) else {
        return;
    };
    if restore
        .0
        .iter()
        .any(|(other, _)| same_file(other.as_fd(), fd))
    {
        return;
    }
    let Ok(keep) = fd.try_clone_to_owned() else {
        return;
    };
    match rustix::fs::fcntl_setfl(fd, flags - OFlags::NONBLOCK) {
        Ok(()) => restore.0.push((keep, flags)),
        Err(e) => log::warn!("stdio is non-blocking and stays so: {e}"),
    }
}

/// Whether two descriptors name the same file (`2>&1`).
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

impl Input {
    /// Reads some bytes; `Ok(0)` at end of file.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Polled(io) => io.read(buf).await,
            Input::Pool(io) => io.read(buf).await,
        }
    }
}

/// How many bytes stdout has taken so far (shared with the blocking-pool thread), so
/// that shutdown can tell a host that reads slowly from one that stopped.
pub type Written = Arc<AtomicU64>;

impl Output {
    /// The only writer of stdout: writes each message from `rx` as one line, until `rx`
    /// closes or a write fails, counting the bytes taken in `written`. Messages queued
    /// together go out in one write.
    pub async fn write_all_from(self, rx: StdoutRx, written: Written) {
        let result = match self {
            Output::Polled(io) => write_polled(io, rx, &written).await,
            Output::Pool { shared } => write_pool(rx, written, shared).await,
        };
        match result {
            Ok(()) => {}
            // The host closed its end: the session ends, which `relay` logs ("stdout
            // closed by the host"); no error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => log::debug!("writing stdout: {e}"),
            Err(e) => log::error!("writing stdout: {e}"),
        }
    }
}

async fn write_polled(mut io: Async<File>, rx: StdoutRx, written: &Written) -> io::Result<()> {
    let mut batch: Vec<u8> = Vec::new();
    while let Some(mut line) = rx.recv().await {
        if rx.is_empty() || line.len() >= STDOUT_BUFFER_BYTES {
            // Alone (or long): written from its own buffer (the newline may make
            // `push` reallocate it, which is still no more than the batch's copy).
            line.push('\n');
            write_counted(&mut io, line.as_bytes(), written).await?;
            continue;
        }
        batch.clear();
        batch.extend_from_slice(line.as_bytes());
        batch.push(b'\n');
        while batch.len() < STDOUT_BUFFER_BYTES {
            let Some(next) = rx.try_recv() else { break };
            batch.extend_from_slice(next.as_bytes());
            batch.push(b'\n');
        }
        write_counted(&mut io, &batch, written).await?;
        // A long message that joined a batch does not keep its size here.
        batch.shrink_to(2 * STDOUT_BUFFER_BYTES);
    }
    Ok(())
}

/// Writes all of `buf`, adding each write's bytes to `written` as stdout takes them.
async fn write_counted(io: &mut Async<File>, mut buf: &[u8], written: &Written) -> io::Result<()> {
    while !buf.is_empty() {
        let n = io.write(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written.fetch_add(n as u64, Ordering::Relaxed);
        buf = &buf[n..];
    }
    Ok(())
}

/// Bytes handed to a blocking stdout at a time, so that [`Written`] moves while a host
/// reads a long message slowly (one `write(2)` of a whole 4 MiB message returns only
/// when the host has read nearly all of it).
const COUNTED_WRITE_BYTES: usize = 64 * 1024;

/// A writer that adds the bytes its inner writer takes to a [`Written`] count, handing
/// it at most [`COUNTED_WRITE_BYTES`] at a time.
struct Counting<W> {
    inner: W,
    written: Written,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .inner
            .write(&buf[..buf.len().min(COUNTED_WRITE_BYTES)])?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes on one thread of the blocking pool for the router's lifetime, through a
/// `BufWriter` flushed when the queue is empty. Not `smol::Unblock`: its writer closes
/// its pipe on every flush and opens a new one (an 8 MiB buffer, its first 4 KiB zeroed)
/// on the next write, which cost the router ~2–4k instructions per message under load
/// (callgrind: docs/benchmark.md, "Instructions per request").
///
/// When stdout is stderr's file (`shared`), each message is written and flushed under
/// stderr's lock, which the logger's thread and the span tree take for each of their
/// writes: a log line goes between two messages, never inside one (a long message is
/// handed over in [`COUNTED_WRITE_BYTES`] pieces, and a pipe takes a write longer than
/// `PIPE_BUF` in parts, so without the lock another writer's line could land in it).
async fn write_pool(rx: StdoutRx, written: Written, shared: bool) -> io::Result<()> {
    smol::unblock(move || {
        let stdout = io::stdout();
        let inner = Counting {
            inner: stdout.lock(),
            written,
        };
        let mut w = io::BufWriter::with_capacity(STDOUT_BUFFER_BYTES, inner);
        while let Some(line) = rx.recv_blocking() {
            let _stderr = shared.then(|| io::stderr().lock());
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
            if shared || rx.is_empty() {
                w.flush()?;
            }
        }
        w.flush()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size of every write it is given.
    struct Sizes(Vec<usize>);

    impl Write for Sizes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_long_message_is_counted_as_stdout_takes_it() {
        let written = Written::default();
        let mut w = io::BufWriter::with_capacity(
            STDOUT_BUFFER_BYTES,
            Counting {
                inner: Sizes(Vec::new()),
                written: written.clone(),
            },
        );
        // Longer than the buffer: `BufWriter` hands it on in one call.
        w.write_all(&vec![b'x'; 300_000]).unwrap();
        w.write_all(b"\n").unwrap();
        w.flush().unwrap();
        let sizes = &w.get_ref().inner.0;
        assert!(sizes.iter().all(|&n| n <= COUNTED_WRITE_BYTES), "{sizes:?}");
        assert!(sizes.len() >= 5, "{sizes:?}");
        assert_eq!(written.load(Ordering::Relaxed), 300_001);
    }
}
