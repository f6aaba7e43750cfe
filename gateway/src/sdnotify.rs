//! systemd's service notification protocol without libsystemd: one datagram of
//! newline-separated `KEY=VALUE` assignments to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a path, or an abstract name when it starts with `@`). See
//! `sd_notify(3)`; the protocol is documented as stable.
//!
//! Every function is a no-op returning `Ok(false)` when `$NOTIFY_SOCKET` is unset, so
//! the gateway behaves the same outside systemd. Errors are worth a log line, never
//! worth stopping the gateway for.
//!
//! Backends started by the gateway inherit `$NOTIFY_SOCKET`; with `NotifyAccess=main`
//! systemd ignores their messages, and spawning them with
//! `Command::env_remove(NOTIFY_SOCKET)` keeps them out entirely.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Environment variable naming the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Environment variable with the watchdog timeout in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// Environment variable with the PID the watchdog applies to (absent: this process).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
/// Largest message sent; the protocol has no limit, but a notification is a few dozen
/// bytes and anything near this is a bug (e.g. an unbounded `STATUS=`).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Sends `state` (e.g. `"READY=1"`, or several `KEY=VALUE` lines) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset or empty, `Ok(true)` once sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(addr) if !addr.is_empty() => {
            send(addr.as_encoded_bytes(), state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends one datagram with `state` to the socket `addr` (`$NOTIFY_SOCKET`'s value).
fn send(addr: &[u8], state: &str) -> io::Result<()> {
    if state.is_empty() || state.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "notification of {} bytes (1..={MAX_MESSAGE_BYTES})",
                state.len()
            ),
        ));
    }
    let sock = UnixDatagram::unbound()?;
    // Sent from the executor that serves every client: a receiver that stopped reading
    // (its queue full) must cost a notification, not the gateway's only thread.
    sock.set_nonblocking(true)?;
    let sent = match addr {
        [b'@', name @ ..] => send_abstract(&sock, name, state)?,
        [b'/', ..] => {
            use std::os::unix::ffi::OsStrExt;
            sock.send_to(state.as_bytes(), std::ffi::OsStr::from_bytes(addr))?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{NOTIFY_SOCKET}={:?}: only absolute paths and @abstract names are supported",
                    String::from_utf8_lossy(addr)
                ),
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("notification truncated: {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], state: &str) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// Startup finished (or a reload finished): `READY=1`.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// Shutdown began: `STOPPING=1`.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// A configuration reload began: `RELOADING=1` with `MONOTONIC_USEC` (`CLOCK_MONOTONIC`
/// now, which systemd ≥ 253 uses under `Type=notify-reload` to tell this reload from a
/// stale one). Send [`ready`] when the reload is done.
pub fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_usec()))
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// `CLOCK_MONOTONIC` in microseconds (`std::time::Instant` uses the same clock but does
/// not expose its value).
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

/// Keep-alive for `WatchdogSec=`: `WATCHDOG=1`. Send it every
/// [`watchdog_interval`]` / 2`.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// The watchdog timeout systemd expects keep-alives within, from `$WATCHDOG_USEC`;
/// `None` when unset, invalid, zero, or meant for another process (`$WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var(WATCHDOG_USEC).ok();
    let pid = std::env::var(WATCHDOG_PID).ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Serialises the tests that set `$NOTIFY_SOCKET` (the environment is per process).
    static ENV: Mutex<()> = Mutex::new(());

    /// Receive deadline in tests.
    const RECV_TIMEOUT: Duration = Duration::from_secs(5);

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let n = sock.recv(&mut buf).expect("datagram received");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn temp_socket_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("mcp-gw-sdnotify-{}-{tag}.sock", std::process::id()))
    }

    #[test]
    fn a_receiver_that_does_not_read_costs_notifications_not_the_thread() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let path = temp_socket_path("full");
        let _ = std::fs::remove_file(&path);
        let _server = UnixDatagram::bind(&path).unwrap();
        std::env::set_var(NOTIFY_SOCKET, &path);
        // The receiver's queue holds a few datagrams (net.unix.max_dgram_qlen); a
        // blocking send would hang at the first one past it (on a thread of its own
        // here, so that the test fails instead).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((0..10_000).find_map(|_| watchdog().err()));
        });
        let full = rx.recv_timeout(RECV_TIMEOUT);
        std::env::remove_var(NOTIFY_SOCKET);
        let _ = std::fs::remove_file(&path);
        let e = full
            .expect("a send blocked on a receiver that does not read")
            .expect("a full queue refuses");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
    }

    #[test]
    fn sends_each_state_to_notify_socket() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let path = temp_socket_path("env");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();

        std::env::remove_var(NOTIFY_SOCKET);
        assert!(!ready().unwrap(), "unset: nothing sent");
        std::env::set_var(NOTIFY_SOCKET, "");
        assert!(!ready().unwrap(), "empty: nothing sent");

        std::env::set_var(NOTIFY_SOCKET, &path);
        assert!(ready().unwrap());
        assert_eq!(recv(&server), "READY=1");
        assert!(watchdog().unwrap());
        assert_eq!(recv(&server), "WATCHDOG=1");
        let before = monotonic_usec();
        assert!(reloading().unwrap());
        let msg = recv(&server);
        let usec: u64 = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{msg:?}"))
            .parse()
            .unwrap();
        assert!(usec >= before && usec <= monotonic_usec(), "{usec}");
        assert!(notify("STATUS=serving 3 sessions").unwrap());
        assert_eq!(recv(&server), "STATUS=serving 3 sessions");
        assert!(stopping().unwrap());
        assert_eq!(recv(&server), "STOPPING=1");

        std::env::set_var(NOTIFY_SOCKET, "relative/path");
        assert_eq!(
            ready().unwrap_err().kind(),
            io::ErrorKind::Unsupported,
            "relative paths are refused"
        );
        std::env::remove_var(NOTIFY_SOCKET);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let path = temp_socket_path("path");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        use std::os::unix::ffi::OsStrExt;
        send(path.as_os_str().as_bytes(), "READY=1").unwrap();
        assert_eq!(recv(&server), "READY=1");
        let _ = std::fs::remove_file(&path);

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("mcp-gw-sdnotify-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            let server = UnixDatagram::bind_addr(&addr).unwrap();
            server.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
            send(format!("@{name}").as_bytes(), "STOPPING=1").unwrap();
            assert_eq!(recv(&server), "STOPPING=1");
        }
    }

    #[test]
    fn refuses_empty_and_oversized_messages_and_missing_sockets() {
        let path = temp_socket_path("none");
        let _ = std::fs::remove_file(&path);
        use std::os::unix::ffi::OsStrExt;
        let addr = path.as_os_str().as_bytes();
        assert_eq!(
            send(addr, "").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let big = "X".repeat(MAX_MESSAGE_BYTES + 1);
        assert_eq!(
            send(addr, &big).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(send(addr, "READY=1").is_err(), "no listener");
    }

    #[test]
    fn parses_watchdog_settings() {
        let s = Duration::from_secs;
        assert_eq!(parse_watchdog(Some("30000000"), None, 7), Some(s(30)));
        assert_eq!(parse_watchdog(Some("30000000"), Some("7"), 7), Some(s(30)));
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("30000000"), Some("x"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, Some("7"), 7), None);
        assert_eq!(reloading_message(5), "RELOADING=1\nMONOTONIC_USEC=5");
    }
}
