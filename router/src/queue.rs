//! A queue bounded in messages and in bytes, between the relay's tasks and one writer
//! (stdout, the WebSocket).
//!
//! A bound in messages alone lets a peer that reads slowly hold that many times
//! `max_message_bytes` of the router's memory (256 × 4 MiB with the defaults): the byte
//! bound keeps it to a few MiB plus one message. A message longer than the byte bound
//! goes alone, into an empty queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_channel::Receiver;

/// What a queued item weighs against the byte bound.
pub trait Weigh {
    /// Its size in bytes (what it holds of the router's memory while queued).
    fn bytes(&self) -> usize;
}

impl Weigh for String {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// The sending side (see [`bounded`]).
pub struct Tx<T> {
    tx: async_channel::Sender<T>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Senders waiting for byte room (the queue is full to them).
    waiting: Arc<AtomicUsize>,
    /// A token each time the writer takes an item: what a sender over the byte bound
    /// waits for.
    room: Receiver<()>,
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        Tx {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            max_bytes: self.max_bytes,
            waiting: self.waiting.clone(),
            room: self.room.clone(),
        }
    }
}

/// The writer's side.
pub struct Rx<T> {
    rx: Receiver<T>,
    bytes: Arc<AtomicUsize>,
    room: async_channel::Sender<()>,
}

/// A queue of at most `items` items and `max_bytes` bytes (one longer item at a time).
pub fn bounded<T: Weigh>(items: usize, max_bytes: usize) -> (Tx<T>, Rx<T>) {
    let (tx, rx) = async_channel::bounded(items);
    let (room_tx, room_rx) = async_channel::bounded(1);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        Tx {
            tx,
            bytes: bytes.clone(),
            max_bytes,
            waiting: Arc::default(),
            room: room_rx,
        },
        Rx {
            rx,
            bytes,
            room: room_tx,
        },
    )
}

/// Undoes its count when dropped (the wait ended, or the send was abandoned).
struct Held<'a>(&'a AtomicUsize, usize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

impl<T: Weigh> Tx<T> {
    /// Queues an item, waiting for room (in items and in bytes); `Err` once the writer
    /// has stopped.
    pub async fn send(&self, item: T) -> Result<(), ()> {
        let len = item.bytes();
        loop {
            let queued = self.bytes.load(Ordering::Acquire);
            if queued == 0 || queued + len <= self.max_bytes {
                break;
            }
            // Counted as waiting meanwhile: `is_full` says so (the keepalive must not
            // take a reader held here for a silent gateway).
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let _waiting = Held(&self.waiting, 1);
            // The writer takes an item and leaves a token (kept if nobody waits): no
            // wake-up is lost between the look above and this wait.
            if self.room.recv().await.is_err() {
                return Err(());
            }
        }
        self.bytes.fetch_add(len, Ordering::AcqRel);
        // Given back if the item never gets into the queue (the send abandoned or the
        // writer gone); once in, the writer gives it back as it takes it.
        let pending = Held(&self.bytes, len);
        let sent = self.tx.send(item).await;
        if sent.is_ok() {
            std::mem::forget(pending);
        }
        sent.map_err(|_| ())
    }

    /// Queues an item that weighs nothing (a ping, a close) if there is a place for it
    /// now.
    pub fn try_send_light(&self, item: T) -> Result<(), ()> {
        debug_assert_eq!(item.bytes(), 0);
        self.tx.try_send(item).map_err(|_| ())
    }

    /// Whether an item would have to wait (or one waits).
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
            || self.bytes.load(Ordering::Acquire) >= self.max_bytes
            || self.waiting.load(Ordering::Acquire) > 0
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Ends the queue: the writer gets what is in it, then the end.
    pub fn close(&self) {
        self.tx.close();
    }
}

impl<T: Weigh> Rx<T> {
    fn took(&self, item: &T) {
        self.bytes.fetch_sub(item.bytes(), Ordering::AcqRel);
        let _ = self.room.try_send(());
    }

    /// The next item; `None` once the queue is closed and empty (or every sender gone).
    pub async fn recv(&self) -> Option<T> {
        let item = self.rx.recv().await.ok()?;
        self.took(&item);
        Some(item)
    }

    /// [`Rx::recv`] from a blocking thread.
    pub fn recv_blocking(&self) -> Option<T> {
        let item = self.rx.recv_blocking().ok()?;
        self.took(&item);
        Some(item)
    }

    /// An item if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        let item = self.rx.try_recv().ok()?;
        self.took(&item);
        Some(item)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BYTES: usize = 1000;

    #[test]
    fn the_queue_holds_at_most_its_bytes_and_one_item() {
        use futures_lite::future::poll_once;
        smol::block_on(async {
            let (tx, rx) = bounded::<String>(256, BYTES);
            let half = "x".repeat(BYTES / 2 + 1);
            tx.send(half.clone()).await.unwrap();
            assert!(!tx.is_full());
            // A second would go past the bound: it waits for the writer, and the queue
            // says it is full meanwhile.
            let mut second = Box::pin(tx.send(half.clone()));
            assert!(poll_once(&mut second).await.is_none());
            assert!(poll_once(&mut second).await.is_none());
            assert!(tx.is_full());
            assert_eq!(rx.try_recv().map(|l| l.len()), Some(half.len()));
            assert_eq!(poll_once(&mut second).await, Some(Ok(())));
            assert!(!tx.is_full());
            // A send abandoned while it waits gives its count back.
            let mut dropped = Box::pin(tx.send(half.clone()));
            assert!(poll_once(&mut dropped).await.is_none());
            drop(dropped);
            assert!(!tx.is_full());
            assert_eq!(rx.recv().await.map(|l| l.len()), Some(half.len()));
            // An item longer than the bound goes alone, into an empty queue.
            let huge = "y".repeat(BYTES * 2);
            tx.send(huge).await.unwrap();
            assert!(tx.is_full());
            let mut small = Box::pin(tx.send("z".into()));
            assert!(poll_once(&mut small).await.is_none());
            assert_eq!(rx.recv_blocking().map(|l| l.len()), Some(BYTES * 2));
            assert_eq!(poll_once(&mut small).await, Some(Ok(())));
            assert_eq!(rx.try_recv().as_deref(), Some("z"));
            // The writer gone, a waiting sender learns it.
            tx.send("a".repeat(BYTES)).await.unwrap();
            let mut late = Box::pin(tx.send("b".repeat(10)));
            assert!(poll_once(&mut late).await.is_none());
            drop(rx);
            assert_eq!(late.await, Err(()));
        });
    }

    #[test]
    fn items_that_weigh_nothing_need_only_a_place() {
        smol::block_on(async {
            let (tx, rx) = bounded::<String>(2, BYTES);
            tx.send("x".repeat(BYTES)).await.unwrap();
            assert!(tx.is_full());
            // Over the byte bound, an empty item still takes a place in the queue...
            assert_eq!(tx.try_send_light(String::new()), Ok(()));
            // ...but only while there is one.
            assert_eq!(tx.try_send_light(String::new()), Err(()));
            assert_eq!(rx.recv().await.map(|l| l.len()), Some(BYTES));
            assert_eq!(rx.recv().await.as_deref(), Some(""));
            assert!(rx.is_empty());
        });
    }
}
