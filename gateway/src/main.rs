//! `mcp-gateway`: accepts MCP clients over WebSocket and serves them from backend MCP
//! servers, aggregating tools, prompts and resources under backend namespaces.
//!
//! Lifecycle: parse and validate the configuration (exit 64 when invalid), bind, log
//! `listening on ws://ADDR/PATH`, serve until SIGTERM/SIGINT, then close sessions, stop
//! backends (close stdin, wait, kill) and exit 0.
#![forbid(unsafe_code)]

/// mimalloc on x86_64 Linux: the request path allocates ~40 times per request, and
/// glibc's and musl's allocators spend about a quarter of the gateway's instructions
/// on that (docs/benchmark.md, "Allocator"). The router keeps the system allocator:
/// mimalloc's per-thread heaps cost it ~0.4 MB, over its 2 MB budget.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod backend;
mod metrics;
mod oneshot;
mod outbox;
mod rt;
mod sdnotify;
mod server;
mod session;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::{Rc, Weak};

use argh::FromArgs;
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use mcp_shared::config::{self, GatewayConfig, SessionMode, EXIT_CONFIG};
use mcp_shared::routing::Namespace;
use mcp_shared::secret::Secret;
use mcp_shared::telemetry::{self, Telemetry};

use crate::backend::Slot;

/// Serve MCP clients over WebSocket from backend MCP servers.
#[derive(FromArgs)]
struct Args {
    /// path to the TOML configuration file
    #[argh(option)]
    config: Option<PathBuf>,
    /// validate the configuration and exit (0 valid, 64 invalid)
    #[argh(switch)]
    check_config: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

/// State shared by every session of the process.
pub struct Gateway {
    /// The configuration.
    pub cfg: GatewayConfig,
    /// Tool/prompt namespacing.
    pub ns: Namespace,
    /// The expected bearer token, when `[auth]` is set: a `token_file`'s is read again
    /// on SIGHUP (a rotated token applies to the next handshakes).
    pub token: RefCell<Option<Secret>>,
    /// Tracing (disabled unless configured).
    pub tel: Telemetry,
    /// Prometheus metrics.
    pub metrics: Rc<metrics::Metrics>,
    /// Backends with `session = "shared"`, by configuration index.
    shared: Vec<Option<Rc<Slot>>>,
    /// Per-client slots of sessions that may still be open: stopped at shutdown too,
    /// for a session that does not close in time (dead entries pruned as new ones
    /// come, so it holds about as many as there are sessions).
    per_client: RefCell<Vec<Weak<Slot>>>,
    next_session: Cell<u64>,
    /// Random per process, in hex and followed by `-`: the first part of every
    /// session's label, so that session ids given out by different gateway processes
    /// (a restart, a fleet) do not repeat.
    instance: [u8; 17],
    sessions: Rc<Cell<usize>>,
}

/// A session's id as the client and traces see it: `<instance>-<n>`, the gateway
/// process's random 64-bit instance in 16 hex digits and the session's number in that
/// process (the number alone names the session in the gateway's own log lines). Kept on
/// the stack: it is written into every traced request's spans.
#[derive(Clone, Copy)]
pub struct SessionLabel {
    text: [u8; SessionLabel::MAX],
    len: u8,
}

impl SessionLabel {
    /// 16 hex digits, `-`, up to 20 decimal digits.
    const MAX: usize = 37;

    /// The label's first part for a process's random `instance`.
    fn prefix(instance: u64) -> [u8; 17] {
        let mut p = [b'-'; 17];
        for (i, d) in p[..16].iter_mut().enumerate() {
            *d = b"0123456789abcdef"[(instance >> (60 - 4 * i)) as usize & 0xf];
        }
        p
    }

    /// Session `n`'s label after `prefix` (made for every traced request's spans: a
    /// copy and an integer's digits, no formatting machinery).
    fn new(prefix: &[u8; 17], n: u64) -> SessionLabel {
        let mut text = [0u8; SessionLabel::MAX];
        text[..17].copy_from_slice(prefix);
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n).as_bytes();
        text[17..17 + digits.len()].copy_from_slice(digits);
        SessionLabel {
            text,
            len: (17 + digits.len()) as u8,
        }
    }

    /// The label's text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)]).expect("ASCII")
    }
}

/// 64 bits no other gateway process is likely to draw: the standard library's
/// per-process random hash keys (seeded from the OS) over the time and the pid.
fn random_instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// Decrements the session count when a session ends.
pub struct SessionCount(Rc<Cell<usize>>);

impl Drop for SessionCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Gateway {
    fn new(cfg: GatewayConfig, token: Option<Secret>, tel: Telemetry) -> Gateway {
        let metrics = Rc::new(metrics::Metrics::new(
            mcp_shared::VERSION,
            mcp_shared::GIT_COMMIT,
        ));
        if let Some(stats) = tel.batch_stats() {
            use std::sync::atomic::Ordering::Relaxed;
            metrics.set_span_source(move || {
                (stats.exported.load(Relaxed), stats.dropped.load(Relaxed))
            });
        }
        for b in &cfg.backends {
            metrics.register_backend(&b.name);
        }
        let shared = cfg
            .backends
            .iter()
            .map(|b| {
                (b.session == SessionMode::Shared).then(|| {
                    Slot::new(
                        Rc::new(b.clone()),
                        cfg.request_timeout(b),
                        cfg.limits.max_message_bytes,
                        metrics.clone(),
                    )
                })
            })
            .collect();
        Gateway {
            ns: Namespace::new(&cfg.routing.separator),
            cfg,
            token: RefCell::new(token),
            tel,
            metrics,
            shared,
            per_client: RefCell::new(Vec::new()),
            next_session: Cell::new(1),
            instance: SessionLabel::prefix(random_instance()),
            sessions: Rc::new(Cell::new(0)),
        }
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        let id = self.next_session.get();
        self.next_session.set(id + 1);
        id
    }

    /// Session `n`'s label (see [`SessionLabel`]).
    pub fn session_label(&self, n: u64) -> SessionLabel {
        SessionLabel::new(&self.instance, n)
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.get()
    }

    /// Counts a session until the returned guard drops.
    pub fn count_session(&self) -> SessionCount {
        self.sessions.set(self.sessions.get() + 1);
        SessionCount(self.sessions.clone())
    }

    /// The backends of a new session, in configuration order: the shared slots, and a
    /// fresh slot for each per-client backend.
    pub fn slots_for_session(&self) -> Vec<Rc<Slot>> {
        let slots: Vec<Rc<Slot>> = self
            .cfg
            .backends
            .iter()
            .zip(&self.shared)
            .map(|(b, shared)| match shared {
                Some(s) => s.clone(),
                None => Slot::new(
                    Rc::new(b.clone()),
                    self.cfg.request_timeout(b),
                    self.cfg.limits.max_message_bytes,
                    self.metrics.clone(),
                ),
            })
            .collect();
        let mut per_client = self.per_client.borrow_mut();
        per_client.retain(|w| w.strong_count() > 0);
        per_client.extend(slots.iter().filter(|s| !s.is_shared()).map(Rc::downgrade));
        slots
    }

    /// `/readyz`: every backend's command can be found (so it can be started).
    fn ready(&self) -> Result<(), String> {
        let missing = missing_commands(&self.cfg);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("backend command not found: {}", missing.join(", ")))
        }
    }

    /// Stops every backend at once (each within the grace, then killed): the shared
    /// ones, and the per-client ones of sessions that did not close in time (those
    /// that did have stopped theirs already; stopping a slot again costs nothing).
    /// One after another, N stubborn backends took N graces.
    async fn stop_backends(&self) {
        let grace = self.cfg.server.shutdown_grace.0;
        let per_client: Vec<Rc<Slot>> = self
            .per_client
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let stops: Vec<_> = self
            .shared
            .iter()
            .flatten()
            .cloned()
            .chain(per_client)
            .map(|s| rt::spawn(async move { s.stop(grace).await }))
            .collect();
        for t in stops {
            t.await;
        }
    }
}

/// The backends whose command cannot be found (so they cannot be started).
fn missing_commands(cfg: &GatewayConfig) -> Vec<&str> {
    cfg.backends
        .iter()
        .filter(|b| {
            let path = b.env.get("PATH").map(String::as_str);
            !command_exists(&b.command, b.cwd.as_deref(), path)
        })
        .map(|b| b.name.as_str())
        .collect()
}

/// True when `command` names an existing file, directly or on `PATH`.
fn command_exists(command: &str, cwd: Option<&std::path::Path>, path: Option<&str>) -> bool {
    // What exec would take: a regular file this process may execute (`access(X_OK)`,
    // not just any execute bit), looked up from the backend's working directory.
    let runnable = |p: &std::path::Path| {
        let p = match cwd {
            Some(d) if p.is_relative() => d.join(p),
            _ => p.to_path_buf(),
        };
        std::fs::metadata(&p).is_ok_and(|m| m.is_file())
            && rustix::fs::access(&p, rustix::fs::Access::EXEC_OK).is_ok()
    };
    if command.contains('/') {
        return runnable(std::path::Path::new(command));
    }
    // A backend's own PATH (its `env`) is the one its command is looked up in; a
    // relative entry (an empty one is `.`) from its working directory, as the child
    // sees it after changing there.
    let paths = match path {
        Some(p) => Some(std::ffi::OsString::from(p)),
        None => std::env::var_os("PATH"),
    };
    paths
        .map(|paths| {
            std::env::split_paths(&paths).any(|d| {
                let d = if d.as_os_str().is_empty() {
                    std::path::PathBuf::from(".")
                } else {
                    d
                };
                runnable(&d.join(command))
            })
        })
        .unwrap_or(false)
}

fn main() -> ExitCode {
    // Not `argh::from_env` (exit status 1): a bad command line is a usage error (64),
    // like a bad file, which the systemd unit does not restart on.
    let argv: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args = match Args::from_args(&strs[..1], &strs[1..]) {
        Ok(a) => a,
        Err(early) if early.status.is_ok() => {
            print!("{}", early.output);
            return ExitCode::SUCCESS;
        }
        Err(early) => {
            eprint!("mcp-gateway: {}", early.output);
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if args.version {
        println!("{}", mcp_shared::version_line("mcp-gateway"));
        return ExitCode::SUCCESS;
    }
    let Some(path) = args.config else {
        eprintln!("mcp-gateway: --config FILE is required (see --help)");
        return ExitCode::from(EXIT_CONFIG as u8);
    };
    let mut cfg: GatewayConfig = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let token = match cfg
        .auth
        .as_ref()
        .map(|a| mcp_shared::secret::load(a.token_env.as_deref(), a.token_file.as_deref()))
    {
        Some(Err(msg)) => {
            let key = if cfg.auth.as_ref().is_some_and(|a| a.token_env.is_some()) {
                "auth.token_env"
            } else {
                "auth.token_file"
            };
            eprintln!("mcp-gateway: {}", config::error_at(Some(&path), key, msg));
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Some(Ok(t)) => t,
        None => None,
    };
    // Backends inherit the gateway's environment: the token must not be in it. This
    // runs before any thread exists, so changing the environment is safe here.
    if let Some(var) = cfg.auth.as_ref().and_then(|a| a.token_env.as_deref()) {
        std::env::remove_var(var);
    }
    if let Err(msg) = telemetry::apply_env_when_enabled(&mut cfg.tracing, |k| std::env::var(k).ok())
    {
        eprintln!("mcp-gateway: {msg}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    if let Err(msg) = mcp_shared::logger::env_level() {
        eprintln!("mcp-gateway: {msg}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    if args.check_config {
        println!("mcp-gateway: {}: configuration is valid", path.display());
        // Not invalid (the file may be checked where the backends are not installed),
        // but what the gateway would report on `/readyz`: said here too.
        for name in missing_commands(&cfg) {
            eprintln!(
                "mcp-gateway: warning: backend {name:?}: its command is not found here; \
                 it cannot start (/readyz reports it)"
            );
        }
        return ExitCode::SUCCESS;
    }
    mcp_shared::logger::init(cfg.logging.level.filter(), cfg.logging.format);
    let tel = match Telemetry::init(
        &cfg.tracing,
        "mcp-gateway",
        mcp_shared::VERSION,
        telemetry::Target::Stdout,
        mcp_shared::config::GATEWAY_MAX_EXPORT_BATCH_SIZE,
    ) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("mcp-gateway: tracing: {msg}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let result = rt::block_on(run(cfg, token, tel.clone(), path));
    // The spans still queued, within `telemetry::SHUTDOWN_TIMEOUT`: "stopped" comes
    // after them, when the process is about to exit.
    tel.shutdown();
    let code = match result {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    };
    // The last lines (the error, "stopped") are still in the logger's backlog.
    mcp_shared::logger::flush();
    code
}

/// Re-reads the configuration on SIGHUP. Applied at once: `[logging] level`, and the
/// token of an unchanged `[auth] token_file` (read again: a rotated token). Everything
/// else takes a restart (the running sessions depend on it); what changed is logged.
fn reload(path: &std::path::Path, gw: &Gateway) {
    let running = &gw.cfg;
    let mut new: GatewayConfig = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload: {e}; keeping the running configuration");
            return;
        }
    };
    // The running [tracing] has the OTEL_* variables applied; so must the new one, or
    // any such variable reads as a change to [tracing] on every reload.
    if let Err(msg) = telemetry::apply_env_when_enabled(&mut new.tracing, |k| std::env::var(k).ok())
    {
        log::error!("reload: {msg}; keeping the running configuration");
        return;
    }
    let level = mcp_shared::logger::set_level(new.logging.level.filter());
    let mut needs_restart = Vec::new();
    if new.server != running.server {
        needs_restart.push("[server]");
    }
    if new.limits != running.limits {
        needs_restart.push("[limits]");
    }
    if new.routing != running.routing {
        needs_restart.push("[routing]");
    }
    if new.auth != running.auth {
        needs_restart.push("[auth]");
    } else if let Some(file) = new.auth.as_ref().and_then(|a| a.token_file.as_deref()) {
        // The same file, perhaps with a new token in it.
        match mcp_shared::secret::load(None, Some(file)) {
            Ok(t) if t == *gw.token.borrow() => {}
            Ok(t) => {
                *gw.token.borrow_mut() = t;
                log::info!(
                    "reload: [auth] token_file read again: its new token applies to new connections (open ones stay)"
                );
            }
            Err(msg) => {
                log::error!("reload: [auth] token_file: {msg}; keeping the running token")
            }
        }
    }
    if new.tracing != running.tracing {
        needs_restart.push("[tracing]");
    }
    if new.admin != running.admin {
        needs_restart.push("[admin]");
    }
    if new.backends != running.backends {
        needs_restart.push("[[backends]]");
    }
    if new.logging.format != running.logging.format {
        needs_restart.push("[logging] format");
    }
    if needs_restart.is_empty() {
        log::info!("reload: configuration applied (log level {level})");
    } else {
        log::warn!(
            "reload: log level {level} applied; changes to {} take effect after a restart",
            needs_restart.join(", ")
        );
    }
}

async fn run(
    cfg: GatewayConfig,
    token: Option<Secret>,
    tel: Telemetry,
    path: PathBuf,
) -> Result<(), String> {
    let listener = async_net::TcpListener::bind(cfg.server.listen.as_str())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])
        .map_err(|e| format!("signals: {e}"))?;
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let gw = Rc::new(Gateway::new(cfg, token, tel));
    let reload_gw = gw.clone();
    rt::spawn(async move {
        let mut signals = signals;
        while let Some(Ok(sig)) = signals.next().await {
            log::info!("received {sig:?}");
            if sig == Signal::Hup {
                let _ = sdnotify::reloading();
                reload(&path, &reload_gw);
                let _ = sdnotify::ready();
                continue;
            }
            break;
        }
        drop(stop_tx);
    })
    .detach();
    let mut admin_at = None;
    let _admin = match &gw.cfg.admin {
        Some(a) => {
            let l = async_net::TcpListener::bind(a.listen.as_str())
                .await
                .map_err(|e| format!("cannot listen on {} ([admin] listen): {e}", a.listen))?;
            let admin_addr = l.local_addr().map_err(|e| e.to_string())?;
            log::info!("admin endpoints on http://{admin_addr} (/healthz /readyz /metrics)");
            admin_at = Some(admin_addr);
            let ready_gw = gw.clone();
            // Closed once a stop signal came: not ready from then on (new connections
            // are already refused while the sessions close).
            let stopping = stop_rx.clone();
            let state = admin::AdminState {
                metrics: gw.metrics.clone(),
                ready: Rc::new(move || {
                    if stopping.is_closed() {
                        return Err("shutting down".into());
                    }
                    ready_gw.ready()
                }),
            };
            Some(rt::spawn(admin::serve(l, state)))
        }
        None => None,
    };
    for name in missing_commands(&gw.cfg) {
        log::warn!(
            "backend {name:?}: its command is not found; it cannot start until it is \
             (/readyz reports it)"
        );
    }
    // The readiness line is a contract (scripts and tests wait for it): it is written
    // whatever the log level.
    // The admin address too: with `[admin] listen` on port 0 and a level below info,
    // nothing else would say where it is.
    let admin_note = admin_at
        .map(|a| format!(", admin on http://{a}"))
        .unwrap_or_default();
    let ready_line = format!(
        "listening on ws://{addr}{} ({} backend(s){admin_note})",
        gw.cfg.server.path,
        gw.cfg.backends.len()
    );
    mcp_shared::logger::always("mcp_gateway", format_args!("{ready_line}"));
    if let Err(e) = sdnotify::ready() {
        log::warn!("sd_notify READY: {e}");
    }
    if let Some(every) = sdnotify::watchdog_interval() {
        // Ping at half the interval systemd expects, from the same executor that serves
        // clients: a stuck executor stops the pings and systemd restarts the service.
        rt::spawn(async move {
            loop {
                let _ = sdnotify::watchdog();
                async_io::Timer::after(every / 2).await;
            }
        })
        .detach();
    }
    // A task of its own, not this future's body: the executor polls the future it runs
    // (this one) each time it wakes to run tasks, and each such poll of the accept loop
    // was an `accept4` that found nothing (two per request at C = 1; strace -c,
    // docs/benchmark.md "Changes made").
    rt::spawn(server::serve(gw.clone(), listener, stop_rx)).await;
    let _ = sdnotify::stopping();
    gw.stop_backends().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SessionLabel;

    #[test]
    fn a_session_label_is_the_instance_in_hex_then_the_number() {
        let p = SessionLabel::prefix(0x0123_4567_89ab_cdef);
        assert_eq!(SessionLabel::new(&p, 1).as_str(), "0123456789abcdef-1");
        assert_eq!(
            SessionLabel::new(&SessionLabel::prefix(u64::MAX), u64::MAX).as_str(),
            "ffffffffffffffff-18446744073709551615"
        );
        assert_eq!(
            SessionLabel::new(&SessionLabel::prefix(0), 0).as_str(),
            "0000000000000000-0"
        );
    }
}
