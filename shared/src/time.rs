//! Deadlines for futures, shared by every binary (a timer, not I/O: async-io's timers
//! work under any executor).

use std::future::Future;
use std::time::Duration;

/// `Some(output)` if `f` finishes within `d`, else `None` (and `f` is dropped).
pub async fn timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        async_io::Timer::after(d).await;
        None
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishes_or_gives_up() {
        let quick = futures_lite::future::block_on(timeout(Duration::from_secs(5), async { 7 }));
        assert_eq!(quick, Some(7));
        let never = futures_lite::future::block_on(timeout(
            Duration::from_millis(10),
            futures_lite::future::pending::<()>(),
        ));
        assert_eq!(never, None);
    }
}
