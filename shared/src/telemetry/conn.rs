//! Connections from the exporter thread to the collector (the URL parsed by
//! `endpoint.rs`): TCP, and TLS (rustls with the ring provider, behind the `otlp-tls`
//! feature).
//!
//! The scheme alone decides: `http://` is plain text, `https://` is TLS with the
//! collector's certificate verified (chain and host name) against the system roots, or
//! against `otlp_certificate` instead when it is set; an optional client certificate
//! gives mutual TLS. Nothing here skips verification. `docs/tracing.md` has the rules.
//!
//! A connection is kept across exports by the exporters (`export.rs`); [`is_closed`]
//! tells whether an idle one is still usable before it is reused.
//!
//! The exporter thread waits for its own socket. A connection is a non-blocking
//! [`Tcp`] that the process's reactor (async-io) never hears of: when it would block,
//! it notes which way, and [`block_on`] waits for exactly that with `poll(2)` on this
//! thread. Through the reactor, every export's answer was first seen by the thread
//! that drives it, the gateway's request thread, which then had to wake the exporter:
//! a futex wake, a context switch and a cross-CPU interrupt per wait, on the thread
//! the requests run on (docs/benchmark.md, "Changes made").

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskCx, Poll, Wake, Waker};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::config::TracingConfig;
#[cfg(feature = "otlp-tls")]
use crate::config::{ExporterType, FileSetting};

pub use super::endpoint::{Endpoint, HTTPS_PORT};

/// Largest PEM file read for `otlp_certificate`, `otlp_client_certificate` and
/// `otlp_client_key` (bytes); a system CA bundle is about 200 KB.
#[cfg(feature = "otlp-tls")]
pub const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

thread_local! {
    /// The sockets the future [`block_on`] runs has found not ready, and for what:
    /// what it waits for when nothing else can move.
    static WAITING: RefCell<Vec<(Arc<TcpStream>, PollFlags)>> = const { RefCell::new(Vec::new()) };
    /// The deadline of the [`block_on`] running on this thread, checked by every
    /// socket operation too: a collector that keeps the socket ready (h2 reads frames
    /// until a read would block; a response dripped a byte at a time) would otherwise
    /// keep the future from ever returning `Pending`, where `block_on` looks.
    static DEADLINE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// A TCP connection of the exporter thread: non-blocking, and not registered with any
/// reactor. An operation that would block returns `Pending` after noting the socket
/// and the direction in [`WAITING`], for [`block_on`]; it wakes no waker, so it works
/// only under `block_on`.
pub struct Tcp(Arc<TcpStream>);

impl Tcp {
    /// Connects to the first address of `host`:`port` that answers before `deadline`.
    #[cfg(test)]
    fn connect(host: &str, port: u16, deadline: Instant) -> io::Result<Tcp> {
        Self::connect_any(&resolve(host, port, deadline)?, deadline)
    }

    /// Connects to the first of `addrs` that answers before `deadline`. Each address
    /// gets an equal share of the time left (the last one all of what remains), so an
    /// address that drops packets (an IPv6 route that goes nowhere, say) cannot use up
    /// the deadline before the next is tried.
    fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> io::Result<Tcp> {
        let mut last = None;
        for (i, addr) in addrs.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            let share = left / (addrs.len() - i) as u32;
            match TcpStream::connect_timeout(addr, share) {
                Ok(tcp) => {
                    tcp.set_nonblocking(true)?;
                    tcp.set_nodelay(true).ok();
                    return Ok(Tcp(Arc::new(tcp)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
    }

    /// Runs `op` on the socket (again when a signal interrupts it): `Pending`, with
    /// the socket noted as waiting for `flags`, when it would block.
    fn io<T>(
        &self,
        flags: PollFlags,
        mut op: impl FnMut(&TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        if DEADLINE.get().is_some_and(|d| Instant::now() >= d) {
            return Poll::Ready(Err(timed_out()));
        }
        loop {
            match op(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    WAITING.with(|w| w.borrow_mut().push((self.0.clone(), flags)));
                    return Poll::Pending;
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

/// The addresses of `host`:`port`. An IP address is taken as it is; a name goes to the
/// system resolver on a thread of its own, waited for until `deadline` (a resolver that
/// does not answer costs that thread until it gives up, never the export's deadline).
fn resolve(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("resolving {host} timed out"),
        )
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("otlp-resolve".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })?;
    rx.recv_timeout(left).unwrap_or_else(|_| Err(timed_out()))
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut TaskCx<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.io(PollFlags::IN, |mut s| s.read(buf))
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(self: Pin<&mut Self>, _: &mut TaskCx<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io(PollFlags::OUT, |mut s| s.write(buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut TaskCx<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io(PollFlags::OUT, |mut s| s.write_vectored(bufs))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        match self.0.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

/// Set when the future's own parts wake it (h2's stream and connection handles).
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `fut`, which does its I/O on [`Tcp`] connections, on this thread until it is
/// done or `deadline` passes (then `TimedOut`, checked after every poll that leaves it
/// pending: a future that keeps waking itself cannot outlive its deadline either;
/// futures-rustls does that when rustls would block with nothing to read or write).
/// When it is pending it is polled again at once if it woke itself, else once one of
/// the sockets it waits for is ready.
pub fn block_on<T>(deadline: Instant, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    // Restored on the way out, however it goes (an export inside another's block_on
    // would be a bug, but must not lose the outer deadline).
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.set(self.0);
        }
    }
    let _restore = Restore(DEADLINE.replace(Some(deadline)));
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = TaskCx::from_waker(&waker);
    let mut fut = pin!(fut);
    let clear = || WAITING.with(|w| w.borrow_mut().clear());
    clear();
    let mut waiting = Vec::new();
    loop {
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            clear();
            return r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            clear();
            return Err(timed_out());
        }
        if flag.0.swap(false, Ordering::Acquire) {
            clear();
            continue;
        }
        // Swapped, not taken: both buffers keep their room from wait to wait.
        WAITING.with(|w| std::mem::swap(&mut waiting, &mut *w.borrow_mut()));
        if waiting.is_empty() {
            // Only a bug could get here: nothing would ever make it ready.
            return Err(io::Error::other("export stalled: waiting on nothing"));
        }
        let timeout = Timespec::try_from(left).map_err(io::Error::other)?;
        let mut fds: Vec<PollFd<'_>> = waiting
            .iter()
            .map(|(s, flags)| PollFd::new(&**s, *flags))
            .collect();
        let polled = rustix::event::poll(&mut fds, Some(&timeout));
        drop(fds);
        waiting.clear();
        match polled {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A connection to the collector: plain TCP or TLS over it.
pub enum Stream {
    /// `http://`.
    Plain(Tcp),
    /// `https://`.
    #[cfg(feature = "otlp-tls")]
    Tls(Box<futures_rustls::client::TlsStream<Tcp>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Plain(_) => f.write_str("Stream::Plain"),
            #[cfg(feature = "otlp-tls")]
            Stream::Tls(_) => f.write_str("Stream::Tls"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "otlp-tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "otlp-tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskCx<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "otlp-tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "otlp-tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskCx<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            #[cfg(feature = "otlp-tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Writes all of `parts`, in order, with as few writes as the stream takes (one
/// `writev` on a plain connection): a request's head and its spans go out together
/// without first being copied into one buffer. (`writev`, unlike std's `send`, has no
/// `MSG_NOSIGNAL`: a reset connection raises SIGPIPE, which Rust programs ignore from
/// the start and neither binary restores.)
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut parts: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = std::future::poll_fn(|cx| Pin::new(&mut *w).poll_write_vectored(cx, parts)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// True when an idle connection can no longer carry a request: the peer closed it
/// (end of stream, a TLS close_notify, a reset) or sent something unasked. Never waits.
pub async fn is_closed(s: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    futures_lite::future::poll_once(s.read(&mut byte))
        .await
        .is_some()
}

/// Opens connections to one endpoint: TCP, then TLS for `https://`.
pub struct Connector {
    /// Where.
    pub endpoint: Endpoint,
    /// The endpoint's addresses as last resolved: kept while connections to them
    /// succeed, so that a reconnection to a named collector (`localhost` by default)
    /// does not ask the resolver (and start its thread) each time; dropped when none
    /// answers, so that a collector that moved is found again.
    addrs: Mutex<Vec<SocketAddr>>,
    #[cfg(feature = "otlp-tls")]
    tls: Option<(
        futures_rustls::TlsConnector,
        futures_rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `endpoint` as `cfg` says (certificates, client identity).
    /// `alpn` is offered in the TLS handshake (e.g. `h2` for gRPC).
    pub fn new(endpoint: Endpoint, cfg: &TracingConfig, alpn: &[&[u8]]) -> Result<Self, String> {
        if !endpoint.tls {
            for f in [
                &cfg.otlp_certificate,
                &cfg.otlp_client_certificate,
                &cfg.otlp_client_key,
            ]
            .into_iter()
            .flatten()
            {
                log::warn!("{f} is not used: the collector endpoint is http:// (plain text)");
            }
        }
        #[cfg(feature = "otlp-tls")]
        {
            let tls = if endpoint.tls {
                let name =
                    futures_rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                        .map_err(|e| format!("{:?}: not a TLS server name: {e}", endpoint.host))?;
                let config = client_config(cfg, alpn, true)?;
                Some((futures_rustls::TlsConnector::from(config), name))
            } else {
                None
            };
            Ok(Connector {
                endpoint,
                tls,
                addrs: Mutex::default(),
            })
        }
        #[cfg(not(feature = "otlp-tls"))]
        {
            let _ = alpn;
            if endpoint.tls {
                return Err(
                    "https:// needs TLS, which is not built into this binary (cargo feature `otlp-tls`)"
                        .into(),
                );
            }
            Ok(Connector {
                endpoint,
                addrs: Mutex::default(),
            })
        }
    }

    /// Opens a connection: TCP before `deadline` (blocking this thread), then the TLS
    /// handshake, which the caller's [`block_on`] bounds by the same deadline.
    pub async fn connect(&self, deadline: Instant) -> io::Result<Stream> {
        let tcp = self.tcp(deadline)?;
        #[cfg(feature = "otlp-tls")]
        if let Some((connector, name)) = &self.tls {
            let tls = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
            return Ok(Stream::Tls(Box::new(tls)));
        }
        Ok(Stream::Plain(tcp))
    }
}

impl Connector {
    /// A TCP connection to the endpoint, through the kept addresses or newly resolved
    /// ones (see [`Connector::addrs`]).
    fn tcp(&self, deadline: Instant) -> io::Result<Tcp> {
        let kept = self.addrs.lock().map(|a| a.clone()).unwrap_or_default();
        let addrs = if kept.is_empty() {
            resolve(&self.endpoint.host, self.endpoint.port, deadline)?
        } else {
            kept
        };
        let r = Tcp::connect_any(&addrs, deadline);
        if let Ok(mut a) = self.addrs.lock() {
            *a = if r.is_ok() { addrs } else { Vec::new() };
        }
        r
    }
}

/// The protocol the TLS handshake agreed on (ALPN), if any.
pub fn negotiated_alpn(s: &Stream) -> Option<Vec<u8>> {
    match s {
        Stream::Plain(_) => None,
        #[cfg(feature = "otlp-tls")]
        Stream::Tls(t) => t.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
    }
}

/// Checks the TLS files of `cfg` (CA bundle, client certificate and key) when they will
/// be used (tracing on, OTLP, `https://`), so that a bad one is a configuration error
/// at start (and in `--check-config`), named by its key or variable.
pub fn check_files(cfg: &TracingConfig) -> Result<(), String> {
    #[cfg(feature = "otlp-tls")]
    if cfg.enabled
        && cfg.exporter_type == ExporterType::Otlp
        && cfg.endpoint().starts_with("https://")
    {
        client_config(cfg, &[], false)?;
    }
    let _ = cfg;
    Ok(())
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
#[cfg(feature = "otlp-tls")]
fn read_pem(f: &FileSetting) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(&f.path)
        .and_then(|file| file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{f}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("{f}: larger than {MAX_PEM_BYTES} bytes"));
    }
    Ok(bytes)
}

/// The certificates of a PEM file (at least one).
#[cfg(feature = "otlp-tls")]
fn load_certs(
    f: &FileSetting,
) -> Result<Vec<futures_rustls::pki_types::CertificateDer<'static>>, String> {
    use futures_rustls::pki_types::pem::PemObject;
    use futures_rustls::pki_types::CertificateDer;
    let bytes = read_pem(f)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{f}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{f}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// The rustls client configuration for `cfg`: trusted roots (`otlp_certificate`, or the
/// system's when `system_roots`), optional client identity, ring provider, TLS 1.2/1.3.
#[cfg(feature = "otlp-tls")]
fn client_config(
    cfg: &TracingConfig,
    alpn: &[&[u8]],
    system_roots: bool,
) -> Result<std::sync::Arc<futures_rustls::rustls::ClientConfig>, String> {
    use futures_rustls::pki_types::pem::PemObject;
    use futures_rustls::pki_types::PrivateKeyDer;
    use futures_rustls::rustls::{self, RootCertStore};

    let mut roots = RootCertStore::empty();
    if let Some(f) = &cfg.otlp_certificate {
        for (i, cert) in load_certs(f)?.into_iter().enumerate() {
            roots
                .add(cert)
                .map_err(|e| format!("{f}: certificate #{}: {e}", i + 1))?;
        }
    } else if system_roots {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(format!(
                "no system CA certificates found{why}: set tracing.otlp_certificate or \
                 OTEL_EXPORTER_OTLP_CERTIFICATE (or SSL_CERT_FILE)"
            ));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (&cfg.otlp_client_certificate, &cfg.otlp_client_key) {
        (Some(c), Some(k)) => {
            let chain = load_certs(c)?;
            let key = PrivateKeyDer::from_pem_slice(&read_pem(k)?)
                .map_err(|e| format!("{k}: no PEM private key in it: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{c} with {k}: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A peer that takes connections and says nothing until told to send `reply`.
    fn quiet_peer() -> (u16, std::sync::mpsc::Sender<&'static [u8]>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel::<&'static [u8]>();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            if let Ok(reply) = rx.recv() {
                s.write_all(reply).unwrap();
            }
            // Held open until the test ends.
            let _ = rx.recv();
        });
        (port, tx)
    }

    #[test]
    fn block_on_waits_for_the_socket_until_the_deadline() {
        let (port, reply) = quiet_peer();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tcp = Tcp::connect("127.0.0.1", port, deadline).unwrap();
        let mut byte = [0u8; 1];
        // Nothing comes: the read gives up at the deadline, not before, not much after.
        let start = Instant::now();
        let e = block_on(start + Duration::from_millis(200), tcp.read(&mut byte)).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // A byte sent while the reader waits ends the wait.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            reply.send(b"x").unwrap();
            reply
        });
        let n = block_on(Instant::now() + Duration::from_secs(5), tcp.read(&mut byte)).unwrap();
        assert_eq!((n, byte[0]), (1, b'x'));
        drop(sender.join().unwrap());
        // A connection refused is an error at once, not a wait.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = Tcp::connect("127.0.0.1", closed, deadline).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn each_address_gets_a_share_of_the_time() {
        // A listener whose accept queue is full drops new handshakes: connecting to it
        // hangs until the timeout, like an address whose packets go nowhere.
        let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let full_addr = full.local_addr().unwrap();
        let mut held = Vec::new();
        while let Ok(s) = TcpStream::connect_timeout(&full_addr, Duration::from_millis(200)) {
            held.push(s);
            assert!(held.len() < 10_000, "the accept queue never filled");
        }
        let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let addrs = [full_addr, good.local_addr().unwrap()];
        let r = Tcp::connect_any(&addrs, start + Duration::from_secs(2));
        let took = start.elapsed();
        // The first address had half the time, not all of it.
        assert!(r.is_ok(), "{:?}", r.err());
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_millis(1900), "{took:?}");
    }

    #[test]
    fn a_connector_keeps_the_addresses_that_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let endpoint = Endpoint::parse(&format!("http://localhost:{port}"), 1).unwrap();
        let c = Connector::new(endpoint, &TracingConfig::default(), &[]).unwrap();
        let soon = || Instant::now() + Duration::from_secs(2);
        let kept = || c.addrs.lock().unwrap().clone();
        // Resolved once, kept while it answers.
        c.tcp(soon()).unwrap();
        let first = kept();
        assert!(first.iter().any(|a| a.port() == port), "{first:?}");
        c.tcp(soon()).unwrap();
        assert_eq!(kept(), first);
        // Nothing answers: the addresses go, and the next connection resolves anew.
        drop(l);
        assert!(c.tcp(soon()).is_err());
        assert!(kept().is_empty());
    }

    #[test]
    fn names_are_resolved_within_the_deadline() {
        let soon = || Instant::now() + Duration::from_secs(2);
        // An address is taken as it is.
        let a = resolve("127.0.0.1", 4318, soon()).unwrap();
        assert_eq!(a, vec![SocketAddr::from(([127, 0, 0, 1], 4318))]);
        let a = resolve("::1", 4317, soon()).unwrap();
        assert_eq!(a, vec!["[::1]:4317".parse().unwrap()]);
        // A name goes to the resolver (localhost is in /etc/hosts).
        let a = resolve("localhost", 9, soon()).unwrap();
        assert!(
            !a.is_empty() && a.iter().all(|a| a.ip().is_loopback() && a.port() == 9),
            "{a:?}"
        );
        // A name that cannot resolve fails, and no later than the deadline.
        let start = Instant::now();
        assert!(resolve("no-such-host.invalid", 9, start + Duration::from_secs(1)).is_err());
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // A deadline already past does not wait for the resolver at all.
        let e = resolve("no-such-host.invalid", 9, Instant::now()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }

    #[test]
    fn block_on_waits_for_room_to_write() {
        // More than the socket buffers hold (loopback: at most a few MiB each way), to
        // a peer that starts reading 100 ms late: the writer must wait for room, and
        // the write takes at least that long.
        const TOTAL: usize = 32 << 20;
        // Filled before the peer's 100 ms start: writing 32 MiB of pages took ~20 ms on
        // a loaded VM, and when it ran between the connect and `start` the write was
        // measured at under 80 ms.
        let data = vec![7u8; TOTAL];
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut got = 0;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got += n,
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let start = Instant::now();
        let mut tcp = Tcp::connect("127.0.0.1", port, deadline).unwrap();
        block_on(
            deadline,
            futures_lite::AsyncWriteExt::write_all(&mut tcp, &data),
        )
        .unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
        block_on(deadline, futures_lite::AsyncWriteExt::close(&mut tcp)).unwrap();
        assert_eq!(reader.join().unwrap(), TOTAL);
    }

    #[test]
    fn block_on_polls_again_when_woken_and_refuses_to_wait_on_nothing() {
        // Woken by itself (as h2's handles wake each other): polled again at once.
        let mut polls = 0;
        let r = block_on(
            Instant::now() + Duration::from_secs(5),
            futures_lite::future::poll_fn(|cx| {
                polls += 1;
                if polls < 3 {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(polls))
                }
            }),
        );
        assert_eq!(r.unwrap(), 3);
        // One that wakes itself forever (as futures-rustls can) ends at the deadline.
        let start = Instant::now();
        let e = block_on(
            start + Duration::from_millis(200),
            futures_lite::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                Poll::<io::Result<()>>::Pending
            }),
        )
        .unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Pending with no socket to wait for would never end: an error, not a hang.
        let e = block_on(
            Instant::now() + Duration::from_secs(5),
            futures_lite::future::pending::<io::Result<()>>(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("stalled"), "{e}");
    }

    #[test]
    fn tls_files_come_from_the_environment_too() {
        let mut cfg = TracingConfig {
            otlp_endpoint: Some("http://c:4318".into()),
            ..TracingConfig::default()
        };
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some("/env/ca.pem".to_string()),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" => Some("/env/c.pem".to_string()),
            _ => None,
        };
        // A client certificate without its key: the error names the variable that is
        // set and the key that is missing.
        let e = crate::telemetry::apply_env(&mut cfg, env).unwrap_err();
        assert!(
            e.contains("needs otlp_client_key")
                && e.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            "{e}"
        );
        let ca = cfg.otlp_certificate.as_ref().unwrap();
        assert_eq!(
            (ca.path.to_str(), ca.origin),
            (Some("/env/ca.pem"), "OTEL_EXPORTER_OTLP_CERTIFICATE")
        );
    }

    #[test]
    #[cfg(not(feature = "otlp-tls"))]
    fn https_without_the_feature_names_it() {
        let e = Connector::new(
            Endpoint::parse("https://h", 1).unwrap(),
            &TracingConfig::default(),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("otlp-tls"), "{e}");
    }

    #[cfg(feature = "otlp-tls")]
    fn file_setting(dir: &std::path::Path, name: &str, text: &str) -> FileSetting {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        FileSetting {
            path,
            origin: "OTEL_EXPORTER_OTLP_CERTIFICATE",
        }
    }

    #[test]
    #[cfg(feature = "otlp-tls")]
    fn bad_tls_files_are_named() {
        let dir = std::env::temp_dir().join(format!("mcp-conn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = TracingConfig {
            enabled: true,
            otlp_endpoint: Some("https://127.0.0.1:1".into()),
            ..TracingConfig::default()
        };
        cfg.otlp_certificate = Some(FileSetting {
            path: dir.join("missing.pem"),
            origin: "tracing.otlp_certificate",
        });
        let e = check_files(&cfg).unwrap_err();
        assert!(
            e.contains("tracing.otlp_certificate") && e.contains("cannot read"),
            "{e}"
        );
        cfg.otlp_certificate = Some(file_setting(&dir, "junk.pem", "not a certificate\n"));
        let e = check_files(&cfg).unwrap_err();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && e.contains("no certificate"),
            "{e}"
        );
        cfg.otlp_certificate = Some(file_setting(
            &dir,
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ));
        let e = check_files(&cfg).unwrap_err();
        assert!(e.contains("certificate #1"), "{e}");
        // Not used (tracing off, or plain text): not read.
        cfg.enabled = false;
        check_files(&cfg).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}
