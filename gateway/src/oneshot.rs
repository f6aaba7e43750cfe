//! A single-threaded one-shot channel: one value, or word that it will never come.
//!
//! Each forwarded request used two `async_channel::bounded(1)` channels: one that
//! carries the backend's response to the request's task, one that cancels it. Those are
//! built for many threads: an `Arc`, atomics, and an `event_listener::Event` that
//! allocates its list on the first wait and locks it on every send and drop. Under
//! callgrind they were about a tenth of the gateway's instructions per request
//! (docs/benchmark.md, "Instructions per request"). The gateway runs on one thread
//! (`rt`), so one `Rc` with a slot and a waker does the same job.
//!
//! Semantics are those the two channels were used with: [`Sender::send`] hands the
//! value over (or gives it back when the receiver is gone); dropping the sender unsent
//! tells the receiver that nothing will come ([`Receiver`] resolves to `Err(Closed)`),
//! which is how a pending request learns that its backend went away and how a request
//! task learns that its client cancelled it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The sender went away without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

struct Slot<T> {
    value: Cell<Option<T>>,
    /// The receiver's task, while it waits.
    waker: Cell<Option<Waker>>,
    /// The sender has sent or is gone: nothing more will come.
    done: Cell<bool>,
}

/// The sending half; see the module documentation.
pub struct Sender<T>(Rc<Slot<T>>);

/// The receiving half, a future of the value.
pub struct Receiver<T>(Rc<Slot<T>>);

/// A new channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Rc::new(Slot {
        value: Cell::new(None),
        waker: Cell::new(None),
        done: Cell::new(false),
    });
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Hands `value` to the receiver and wakes it; `Err(value)` when the receiver is
    /// gone.
    pub fn send(self, value: T) -> Result<(), T> {
        if Rc::strong_count(&self.0) == 1 {
            return Err(value);
        }
        self.0.value.set(Some(value));
        // `self` is dropped on return, which marks the slot done and wakes the receiver.
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.done.set(true);
        if let Some(w) = self.0.waker.take() {
            w.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    /// Forgets the waiting task, so that a sender dropped later does not wake a task
    /// that no longer waits here.
    fn drop(&mut self) {
        self.0.waker.take();
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let slot = &self.0;
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Ok(v));
        }
        if slot.done.get() {
            return Poll::Ready(Err(Closed));
        }
        let waker = match slot.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        slot.waker.set(Some(waker));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(rx: &mut Receiver<T>, count: &Arc<Count>) -> Poll<Result<T, Closed>> {
        let waker = Waker::from(count.clone());
        Pin::new(rx).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_value_sent_before_the_wait_is_received() {
        let (tx, mut rx) = channel();
        assert_eq!(tx.send(7), Ok(()));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Ok(7)));
    }

    #[test]
    fn a_waiting_receiver_is_woken_once_by_the_send() {
        let (tx, mut rx) = channel();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        assert_eq!(poll(&mut rx, &count), Poll::Pending);
        // Polled again with the same waker: still one registration.
        assert_eq!(poll(&mut rx, &count), Poll::Pending);
        assert_eq!(tx.send("r"), Ok(()));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Ok("r")));
    }

    #[test]
    fn a_sender_dropped_unsent_closes_the_channel() {
        let (tx, mut rx) = channel::<()>();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        assert_eq!(poll(&mut rx, &count), Poll::Pending);
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Err(Closed)));
    }

    #[test]
    fn sending_to_a_dropped_receiver_gives_the_value_back() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(String::from("late")), Err(String::from("late")));
    }

    #[test]
    fn a_dropped_receiver_is_not_woken() {
        let (tx, mut rx) = channel::<()>();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        assert_eq!(poll(&mut rx, &count), Poll::Pending);
        drop(rx);
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_new_waker_replaces_the_old_one() {
        let (tx, mut rx) = channel();
        let first = Arc::new(Count(AtomicUsize::new(0)));
        let second = Arc::new(Count(AtomicUsize::new(0)));
        assert_eq!(poll(&mut rx, &first), Poll::Pending);
        assert_eq!(poll(&mut rx, &second), Poll::Pending);
        assert_eq!(tx.send(1u8), Ok(()));
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }
}
