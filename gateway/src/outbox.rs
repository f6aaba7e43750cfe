//! A session's queue of lines for its client: bounded, single-threaded, and holding no
//! buffer while it is empty.
//!
//! Every session has one, and nearly all the time it is empty (an idle session, or one
//! whose writer keeps up). `async_channel::bounded(32)` allocated its 32 slots and two
//! cache-padded counters up front: 1.2 KB of every idle session on musl
//! (`mcp-bench sessions`, docs/benchmark.md "Memory per idle session"). The gateway runs
//! on one thread (`rt`), so this queue is an `Rc<RefCell<…>>` around a `VecDeque` that
//! grows with a burst and is given back when the writer has drained it.
//! (`event_listener::Event`, which async-channel waits with, allocates its state on the
//! first `notify` even with nobody listening, so it would cost every session too.)
//!
//! Semantics are those of a bounded channel: [`Sender::send`] waits for room,
//! [`Sender::try_send`] does not; the receiver gets `None` once every sender is gone and
//! the queue is empty; senders get [`Closed`] once the receiver is gone. Senders waiting
//! for room are all woken when a line leaves the queue and try again, so a waiting send
//! that is cancelled cannot swallow the wake-up another one needed; at most
//! `max_in_flight` requests wait at once, and with [`Sender::send_bounded`] they hold
//! at most [`WAITING_BYTES`] (plus one line) between them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A queue that has grown past this many lines while busy is given back whole once the
/// writer empties it (below, it keeps its small buffer: most sessions send one line at a
/// time).
const KEEP_CAPACITY: usize = 4;

/// Bytes of lines queued beyond which no line is queued until the writer takes some
/// (below it a line of any length goes in): a client that stops reading holds this much
/// of the gateway's memory here plus one line, not the queue's lines ×
/// `max_message_bytes` (32 × 4 MiB with the defaults).
pub const OUTBOX_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of lines that senders may hold while they wait for room
/// ([`Sender::send_bounded`]): past it a sender is refused at once (one sender may
/// always wait, whatever its line's length). Without it a client that stops reading
/// held `max_in_flight` answers of up to `max_message_bytes` each in the gateway: a
/// review's client drove the gateway to 184 MB with 64 answers of 4 MB, where the
/// packaged unit allows the whole service 64 MB.
pub const WAITING_BYTES: usize = 4 * 1024 * 1024;

/// A line this short may always wait in [`Sender::send_bounded`] (and is not counted
/// in [`WAITING_BYTES`]): the error that would replace it is no shorter.
pub const ALWAYS_WAITS_BYTES: usize = 1024;

struct Inner {
    lines: VecDeque<String>,
    /// The bytes of `lines`.
    bytes: usize,
    /// The bytes of lines held by senders waiting in [`Sender::send_bounded`].
    waiting_bytes: usize,
    cap: usize,
    senders: usize,
    receiver_alive: bool,
    receiver: Option<Waker>,
    /// Senders waiting for room.
    waiting: Vec<Waker>,
}

/// The sending side; clones share the queue.
pub struct Sender(Rc<RefCell<Inner>>);

/// The receiving side (the session's writer).
pub struct Receiver(Rc<RefCell<Inner>>);

/// The receiver is gone: the line was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// Why [`Sender::send_bounded`] did not queue the line.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The receiver is gone.
    Closed,
    /// The queue is full and [`WAITING_BYTES`] are already held by senders waiting for
    /// room: the line is given back, for the sender to send something shorter instead.
    Backlog(String),
}

/// Why [`Sender::try_send`] did not queue the line (which it gives back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    Full(String),
    Closed(String),
}

impl TrySendError {
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
}

/// A queue of at most `cap` lines (at least one).
pub fn channel(cap: usize) -> (Sender, Receiver) {
    let inner = Rc::new(RefCell::new(Inner {
        lines: VecDeque::new(),
        bytes: 0,
        waiting_bytes: 0,
        cap: cap.max(1),
        senders: 1,
        receiver_alive: true,
        receiver: None,
        waiting: Vec::new(),
    }));
    (Sender(inner.clone()), Receiver(inner))
}

impl Sender {
    /// Queues `line` if there is room.
    pub fn try_send(&self, line: String) -> Result<(), TrySendError> {
        let mut q = self.0.borrow_mut();
        if !q.receiver_alive {
            return Err(TrySendError::Closed(line));
        }
        if q.lines.len() >= q.cap || q.bytes >= OUTBOX_BYTES {
            return Err(TrySendError::Full(line));
        }
        q.bytes += line.len();
        q.lines.push_back(line);
        if let Some(w) = q.receiver.take() {
            w.wake();
        }
        Ok(())
    }

    /// Queues `line`, waiting for room.
    pub async fn send(&self, line: String) -> Result<(), Closed> {
        let mut line = Some(line);
        poll_fn(|cx| {
            match self.try_send(line.take().expect("polled after completion")) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(TrySendError::Closed(_)) => return Poll::Ready(Err(Closed)),
                Err(TrySendError::Full(l)) => line = Some(l),
            }
            let waiting = &mut self.0.borrow_mut().waiting;
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Sender {
    /// [`Sender::send`], unless the queue is full and other senders already hold
    /// [`WAITING_BYTES`] waiting for room: then refused at once, the line given back.
    pub async fn send_bounded(&self, line: String) -> Result<(), Refused> {
        let line = match self.try_send(line) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(Refused::Closed),
            Err(TrySendError::Full(line)) => line,
        };
        let held = {
            let mut q = self.0.borrow_mut();
            if line.len() > ALWAYS_WAITS_BYTES
                && q.waiting_bytes > 0
                && q.waiting_bytes + line.len() > WAITING_BYTES
            {
                return Err(Refused::Backlog(line));
            }
            let counted = if line.len() > ALWAYS_WAITS_BYTES {
                line.len()
            } else {
                0
            };
            q.waiting_bytes += counted;
            Held(&self.0, counted)
        };
        let sent = self.send(line).await.map_err(|Closed| Refused::Closed);
        drop(held);
        sent
    }
}

/// Bytes a waiting [`Sender::send_bounded`] holds, given back when it ends or is
/// cancelled.
struct Held<'a>(&'a RefCell<Inner>, usize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.borrow_mut().waiting_bytes -= self.1;
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.borrow_mut().senders += 1;
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut q = self.0.borrow_mut();
        q.senders -= 1;
        if q.senders == 0 {
            if let Some(w) = q.receiver.take() {
                w.wake();
            }
        }
    }
}

impl Receiver {
    /// The next line; `None` when the queue is empty and every sender is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<String>> {
        if let Some(line) = self.try_recv() {
            return Poll::Ready(Some(line));
        }
        let mut q = self.0.borrow_mut();
        if q.senders == 0 {
            return Poll::Ready(None);
        }
        if !q.receiver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            q.receiver = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next line if one is queued, without waiting (and without asking to be woken).
    pub fn try_recv(&mut self) -> Option<String> {
        let mut q = self.0.borrow_mut();
        let line = q.lines.pop_front()?;
        q.bytes -= line.len();
        if q.lines.is_empty() && q.lines.capacity() > KEEP_CAPACITY {
            q.lines = VecDeque::new();
        }
        for w in std::mem::take(&mut q.waiting) {
            w.wake();
        }
        Some(line)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut q = self.0.borrow_mut();
        q.receiver_alive = false;
        q.lines = VecDeque::new();
        q.bytes = 0;
        for w in std::mem::take(&mut q.waiting) {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::pin::pin;

    fn recv_now(rx: &mut Receiver) -> Poll<Option<String>> {
        future::block_on(future::poll_once(poll_fn(|cx| rx.poll_recv(cx))))
            .map_or(Poll::Pending, Poll::Ready)
    }

    #[test]
    fn senders_waiting_for_room_hold_a_bounded_number_of_bytes() {
        let (tx, mut rx) = channel(1);
        tx.try_send("queued".into()).unwrap();
        let big = || "x".repeat(WAITING_BYTES / 2 + 1);
        // The first big line may wait, whatever its length; a second one would take the
        // waiting past the bound: refused at once, given back. A short one still waits.
        let mut first = pin!(tx.send_bounded(big()));
        assert!(future::block_on(future::poll_once(&mut first)).is_none());
        let refused = future::block_on(tx.send_bounded(big()));
        assert_eq!(refused, Err(Refused::Backlog(big())));
        let mut short = pin!(tx.send_bounded("short".into()));
        assert!(future::block_on(future::poll_once(&mut short)).is_none());
        // Room: the first goes in; what it held is given back, so a big line may wait.
        assert_eq!(rx.try_recv().as_deref(), Some("queued"));
        assert_eq!(future::block_on(first), Ok(()));
        let mut again = Box::pin(tx.send_bounded(big()));
        assert!(future::block_on(future::poll_once(&mut again)).is_none());
        // A waiting send that is cancelled gives its bytes back too.
        drop(again);
        assert_eq!(tx.0.borrow().waiting_bytes, 0);
        let mut third = pin!(tx.send_bounded(big()));
        assert!(future::block_on(future::poll_once(&mut third)).is_none());
        assert_eq!(tx.0.borrow().waiting_bytes, big().len());
        drop(rx);
        assert_eq!(future::block_on(third), Err(Refused::Closed));
        assert_eq!(future::block_on(short), Err(Refused::Closed));
    }

    #[test]
    fn lines_come_out_in_order_and_the_bound_holds() {
        let (tx, mut rx) = channel(2);
        tx.try_send("a".into()).unwrap();
        tx.try_send("b".into()).unwrap();
        assert_eq!(tx.try_send("c".into()), Err(TrySendError::Full("c".into())));
        assert_eq!(recv_now(&mut rx), Poll::Ready(Some("a".into())));
        tx.try_send("c".into()).unwrap();
        assert_eq!(recv_now(&mut rx), Poll::Ready(Some("b".into())));
        assert_eq!(recv_now(&mut rx), Poll::Ready(Some("c".into())));
        assert_eq!(recv_now(&mut rx), Poll::Pending);
    }

    #[test]
    fn the_queue_holds_at_most_its_bytes_plus_one_line() {
        let (tx, mut rx) = channel(32);
        let mib = "x".repeat(1 << 20);
        for _ in 0..OUTBOX_BYTES / mib.len() {
            tx.try_send(mib.clone()).unwrap();
        }
        assert!(tx.try_send("{}".into()).unwrap_err().is_full());
        assert_eq!(recv_now(&mut rx), Poll::Ready(Some(mib.clone())));
        // Under the bound again: a line of any length goes in.
        tx.try_send("y".repeat(2 * OUTBOX_BYTES)).unwrap();
        assert!(tx.try_send("{}".into()).unwrap_err().is_full());
        while let Some(line) = rx.try_recv() {
            assert!(!line.is_empty());
        }
        tx.try_send("{}".into()).unwrap();
    }

    #[test]
    fn the_receiver_ends_after_the_last_sender_and_the_last_line() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        tx.try_send("a".into()).unwrap();
        drop(tx);
        assert_eq!(recv_now(&mut rx), Poll::Ready(Some("a".into())));
        assert_eq!(recv_now(&mut rx), Poll::Pending, "one sender is left");
        drop(tx2);
        assert_eq!(recv_now(&mut rx), Poll::Ready(None));
    }

    #[test]
    fn senders_see_a_receiver_that_is_gone() {
        let (tx, rx) = channel(1);
        tx.try_send("a".into()).unwrap();
        let mut waiting = pin!(tx.send("b".into()));
        assert!(future::block_on(future::poll_once(waiting.as_mut())).is_none());
        drop(rx);
        assert_eq!(future::block_on(waiting), Err(Closed));
        assert_eq!(
            tx.try_send("c".into()),
            Err(TrySendError::Closed("c".into()))
        );
    }

    /// Lets the executor run until `n` senders wait for room.
    async fn until_waiting(probe: &Sender, n: usize) {
        for _ in 0..1000 {
            if probe.0.borrow().waiting.len() == n {
                return;
            }
            future::yield_now().await;
        }
        panic!("{n} senders never waited");
    }

    #[test]
    fn a_waiting_send_gets_room_when_a_line_leaves() {
        let ex = smol::LocalExecutor::new();
        let (tx, mut rx) = channel(1);
        tx.try_send("a".into()).unwrap();
        let probe = tx.clone();
        let task = ex.spawn(async move { tx.send("b".into()).await });
        future::block_on(ex.run(async {
            until_waiting(&probe, 1).await;
            drop(probe);
            assert!(!task.is_finished(), "the queue is full");
            assert_eq!(poll_fn(|cx| rx.poll_recv(cx)).await, Some("a".to_string()));
            assert_eq!(task.await, Ok(()));
            assert_eq!(poll_fn(|cx| rx.poll_recv(cx)).await, Some("b".into()));
            assert_eq!(poll_fn(|cx| rx.poll_recv(cx)).await, None);
        }));
    }

    #[test]
    fn a_cancelled_waiting_send_does_not_take_the_room_of_another() {
        let ex = smol::LocalExecutor::new();
        let (tx, mut rx) = channel(1);
        tx.try_send("a".into()).unwrap();
        let tx2 = tx.clone();
        let probe = tx.clone();
        let first = ex.spawn(async move { tx.send("first".into()).await });
        let second = ex.spawn(async move { tx2.send("second".into()).await });
        future::block_on(ex.run(async {
            until_waiting(&probe, 2).await;
            // The first waiter goes away; the second must still get the room.
            first.cancel().await;
            assert_eq!(poll_fn(|cx| rx.poll_recv(cx)).await, Some("a".into()));
            let lost = async {
                smol::Timer::after(std::time::Duration::from_secs(10)).await;
                panic!("the second sender was never woken");
            };
            assert_eq!(future::or(second, lost).await, Ok(()));
            assert_eq!(poll_fn(|cx| rx.poll_recv(cx)).await, Some("second".into()));
        }));
    }

    #[test]
    fn a_drained_queue_gives_its_buffer_back() {
        let (tx, mut rx) = channel(32);
        assert_eq!(
            rx.0.borrow().lines.capacity(),
            0,
            "nothing allocated up front"
        );
        for i in 0..32 {
            tx.try_send(i.to_string()).unwrap();
        }
        assert!(rx.0.borrow().lines.capacity() >= 32);
        while let Poll::Ready(Some(_)) = recv_now(&mut rx) {}
        assert_eq!(rx.0.borrow().lines.capacity(), 0);
        // One line at a time keeps its small buffer (no allocation per line).
        tx.try_send("x".into()).unwrap();
        let _ = recv_now(&mut rx);
        let kept = rx.0.borrow().lines.capacity();
        assert!(kept > 0 && kept <= KEEP_CAPACITY, "kept {kept}");
    }
}
