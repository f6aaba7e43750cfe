//! The gateway's single-threaded runtime: one smol `LocalExecutor` per process, so state
//! can live in `Rc`/`RefCell` without locks. Helpers for spawning; `timeout` is the
//! shared one; [`Turns`] is how long a read loop may keep the thread.

use std::future::Future;

use smol::{LocalExecutor, Task};

thread_local! {
    static EX: &'static LocalExecutor<'static> = Box::leak(Box::new(LocalExecutor::new()));
}

/// Spawns a task on the gateway's executor.
pub fn spawn<T: 'static>(f: impl Future<Output = T> + 'static) -> Task<T> {
    EX.with(|ex| ex.spawn(f))
}

/// Runs `f` to completion, driving every spawned task. `async_io::block_on` makes this
/// thread drive the I/O reactor itself while idle, instead of waiting for smol's reactor
/// thread to wake it: one thread hand-off less per I/O event (the benchmark's median
/// gateway latency went from ~265 µs to ~70 µs with this alone).
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    EX.with(|ex| async_io::block_on(ex.run(f)))
}

pub use mcp_shared::time::timeout;

/// After the first warning `throttle` held back since one was logged: `say`s how many
/// it held once `every` is over, unless a warning that carries the count came first
/// (a burst that ended within the interval was never counted in the log).
pub fn tally_later(
    throttle: &std::rc::Rc<mcp_shared::logger::Throttle>,
    every: std::time::Duration,
    say: impl FnOnce(u64) + 'static,
) {
    if throttle.held() != 1 {
        return; // one is due already
    }
    let t = throttle.clone();
    spawn(async move {
        async_io::Timer::after(every).await;
        let n = t.take_held();
        if n > 0 {
            say(n);
        }
    })
    .detach();
}

/// Frames (or reads, or lines) a read loop takes before it lets the other tasks of the
/// gateway's one thread run: a peer whose socket or pipe always has data (a flood of
/// pings or notifications) cannot stall the other sessions.
pub const READ_FRAMES_PER_TURN: usize = 32;

/// Bytes a read loop takes before it lets the other tasks run, whatever the number of
/// frames: a client sending messages of `max_message_bytes` (each read and parsed in
/// milliseconds) gives the others a turn after each one, not after 32 of them. A
/// review measured another session's calls taking up to 1.6 s (7 s with messages that
/// were not JSON) beside such a client before this bound, with 32 frames a turn.
pub const READ_BYTES_PER_TURN: usize = 64 * 1024;

/// A read loop's share of the thread: [`Turns::take`] after each frame, read or line
/// yields once [`READ_FRAMES_PER_TURN`] of them or [`READ_BYTES_PER_TURN`] bytes were
/// taken since the last turn (smol does not pre-empt a task that never waits).
#[derive(Debug, Default)]
pub struct Turns {
    frames: usize,
    bytes: usize,
}

impl Turns {
    /// Counts one unit of work of `bytes` bytes, and yields when the turn is used up.
    pub async fn take(&mut self, bytes: usize) {
        self.frames += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.frames >= READ_FRAMES_PER_TURN || self.bytes >= READ_BYTES_PER_TURN {
            *self = Turns::default();
            futures_lite::future::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    /// Whether `take` went on without yielding.
    fn went_on(t: &mut Turns, bytes: usize) -> bool {
        block_on(poll_once(t.take(bytes))).is_some()
    }

    #[test]
    fn a_turn_ends_at_the_frame_count_or_the_byte_count() {
        let mut t = Turns::default();
        for round in 0..2 {
            for i in 1..READ_FRAMES_PER_TURN {
                assert!(went_on(&mut t, 10), "round {round}, frame {i}");
            }
            assert!(!went_on(&mut t, 10), "round {round}: the 32nd frame yields");
        }
        // One large frame is a turn of its own; small ones add up.
        assert!(!went_on(&mut t, READ_BYTES_PER_TURN));
        assert!(went_on(&mut t, READ_BYTES_PER_TURN / 2));
        assert!(!went_on(&mut t, READ_BYTES_PER_TURN / 2));
        assert!(went_on(&mut t, 0));
        assert!(!went_on(&mut t, usize::MAX), "no overflow");
    }
}
