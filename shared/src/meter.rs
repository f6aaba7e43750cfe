//! Byte meters on a connection, so the bridge's peer-facing timeouts can ask "has the
//! peer moved any bytes lately?" instead of "is this whole message done yet?".
//!
//! Why: a WebSocket message may be as large as `max_message_bytes` (4 MiB by default,
//! up to 64 MiB). Over a slow but healthy link (a constrained edge uplink at 100 KB/s,
//! say) one message takes longer than any sensible `send_timeout`, and a single large
//! frame arriving slowly contains no complete frame for several keepalive intervals.
//! Measured per message, both would drop a live peer. Measured in bytes, only a peer
//! that really stopped (stopped reading, vanished) is dropped.
//!
//! [`Metered`] wraps the TCP stream under the WebSocket and counts, in a shared
//! [`Meter`], the bytes the peer took (written to the socket) and sent (read from it).
//! [`within_progress`] bounds a send by the time without a written byte. Both binaries
//! run their connection work on one thread, so the meter is an `Rc` of `Cell`s: one
//! allocation per connection, two plain additions per read or write.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite};

/// Bytes moved on one connection so far.
#[derive(Debug, Default)]
pub struct Meter {
    read: Cell<u64>,
    written: Cell<u64>,
    /// Sends under way in [`within_progress`].
    sending: Cell<u32>,
}

impl Meter {
    /// Bytes read from the peer so far (it is alive while this grows).
    pub fn read(&self) -> u64 {
        self.read.get()
    }

    /// Bytes the peer's side of the socket has taken so far (a send makes progress
    /// while this grows).
    pub fn written(&self) -> u64 {
        self.written.get()
    }

    /// Whether a send bounded by [`within_progress`] is under way. A keepalive must not
    /// take a peer for silent then: its answer to a ping would queue behind the send,
    /// and a send that stops moving is `within_progress`'s to end.
    pub fn sending(&self) -> bool {
        self.sending.get() > 0
    }
}

/// Marks a send under way for as long as it lives.
struct Sending<'a>(&'a Meter);

impl<'a> Sending<'a> {
    fn new(meter: &'a Meter) -> Self {
        meter.sending.set(meter.sending.get() + 1);
        Sending(meter)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.set(self.0.sending.get() - 1);
    }
}

/// A stream that counts its traffic in a [`Meter`].
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    meter: Rc<Meter>,
}

impl<S> Metered<S> {
    /// Wraps `inner`; the returned meter is shared with the stream.
    pub fn new(inner: S) -> (Self, Rc<Meter>) {
        let meter = Rc::new(Meter::default());
        (
            Metered {
                inner,
                meter: meter.clone(),
            },
            meter,
        )
    }
}

fn add(c: &Cell<u64>, n: usize) {
    c.set(c.get().wrapping_add(n as u64));
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            add(&self.meter.read, n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            add(&self.meter.written, n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            add(&self.meter.written, n);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// `Some(output)` if `f` finishes before the connection goes a whole `limit` without
/// writing a byte, else `None` (and `f` is dropped). Progress is looked at once per
/// `limit`, so a send that stalls is given up between one and two `limit`s after its
/// last byte went out; one that never starts moving, after exactly `limit`. While it
/// runs, [`Meter::sending`] is true.
pub async fn within_progress<T>(
    meter: &Meter,
    limit: Duration,
    f: impl Future<Output = T>,
) -> Option<T> {
    let _sending = Sending::new(meter);
    let mut f = std::pin::pin!(f);
    loop {
        let mark = meter.written();
        if let Some(out) = crate::time::timeout(limit, f.as_mut()).await {
            return Some(out);
        }
        if meter.written() == mark {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt, Cursor};

    #[test]
    fn counts_bytes_both_ways() {
        block_on(async {
            let (mut s, meter) = Metered::new(Cursor::new(b"hello world".to_vec()));
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!((meter.read(), meter.written()), (5, 0));
            s.write_all(b"abc").await.unwrap();
            assert_eq!((meter.read(), meter.written()), (5, 3));
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert_eq!(meter.read(), 8);
            assert_eq!(s.inner.into_inner(), b"helloabcrld");
        });
    }

    /// A writer that takes one byte per call, after a delay: slow, never stalled.
    struct Trickle {
        timer: Option<async_io::Timer>,
        every: Duration,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            let every = self.every;
            let timer = self
                .timer
                .get_or_insert_with(|| async_io::Timer::after(every));
            match Pin::new(timer).poll(cx) {
                Poll::Ready(_) => {
                    self.timer = None;
                    Poll::Ready(Ok(1))
                }
                Poll::Pending => Poll::Pending,
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_slow_send_that_keeps_moving_is_not_given_up() {
        block_on(async {
            let (mut s, meter) = Metered::new(Trickle {
                timer: None,
                every: Duration::from_millis(20),
            });
            // 12 bytes at one per 20 ms: ~240 ms in all, each window of 100 ms moves some.
            let limit = Duration::from_millis(100);
            let send = within_progress(&meter, limit, s.write_all(b"twelve bytes"));
            let (done, seen_sending) = futures_lite::future::zip(send, async {
                async_io::Timer::after(Duration::from_millis(30)).await;
                meter.sending()
            })
            .await;
            assert!(seen_sending);
            assert!(!meter.sending());
            assert!(matches!(done, Some(Ok(()))), "{done:?}");
            assert_eq!(meter.written(), 12);
            // The plain deadline would have given the same send up.
            let (mut s, _) = Metered::new(Trickle {
                timer: None,
                every: Duration::from_millis(20),
            });
            let whole = crate::time::timeout(limit, s.write_all(b"twelve bytes")).await;
            assert!(whole.is_none());
        });
    }

    #[test]
    fn a_send_that_moves_nothing_is_given_up_after_the_limit() {
        block_on(async {
            let meter = Meter::default();
            let start = std::time::Instant::now();
            let r = within_progress(
                &meter,
                Duration::from_millis(50),
                futures_lite::future::pending::<()>(),
            )
            .await;
            assert!(r.is_none());
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(50), "{took:?}");
        });
    }
}
