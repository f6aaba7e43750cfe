//! Test harness: runs the real `mcp-gateway`, `mcp-router` and `mcp-fixture` binaries.
//!
//! - [`Gateway::start`] writes a config, starts the gateway on `127.0.0.1:0` and waits
//!   for its `listening on ws://…` line (no sleeps: it reads stderr with a deadline).
//! - [`Client::router`] starts a router on that URL and talks MCP to its stdio.
//! - [`WsClient`] talks to the gateway's WebSocket directly.
//!
//! Every child is killed and reaped on drop. Binaries are found next to the test
//! executable (`target/debug`), or in `$MCP_BIN_DIR`; build them first with
//! `cargo build --workspace`.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MCP_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A `[[backends]]` entry running the fixture server.
pub fn fixture_backend(name: &str, extra: &str) -> String {
    format!(
        "[[backends]]\nname = \"{name}\"\ntransport = \"stdio\"\ncommand = {:?}\nargs = [\"--name\", \"{name}\"]\n{extra}\n",
        bin("mcp-fixture").display().to_string()
    )
}

/// A unique temporary file path. The first call removes what earlier test processes
/// left (`mcp-e2e-<pid>-…` of a process no longer running): tests write files there
/// without always removing them, and a test binary has no hook at its exit.
pub fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_temp_files);
    std::env::temp_dir().join(format!(
        "mcp-e2e-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes `mcp-e2e-<pid>-…` files and directories of test processes that are gone.
fn sweep_temp_files() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mcp-e2e-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(entry.path()),
                _ => std::fs::remove_file(entry.path()),
            };
        }
    }
}

/// Lines a child wrote to stderr, collected by a thread.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Everything so far, one string.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

fn collect_stderr(child: &mut Child, log: &Log) -> Receiver<String> {
    let (tx, rx) = channel();
    let stderr = child.stderr.take().expect("stderr piped");
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.0.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    rx
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    /// Its WebSocket URL.
    pub url: String,
    /// Its stderr.
    pub log: Log,
    config: PathBuf,
    lines: Receiver<String>,
}

impl Gateway {
    /// Starts a gateway with `[server] listen = "127.0.0.1:0"` plus `config`.
    pub fn start(config: &str) -> Gateway {
        let full = format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}");
        Self::start_raw(&full)
    }

    /// Starts a gateway with exactly `config` (which must listen on port 0).
    pub fn start_raw(config: &str) -> Gateway {
        Self::start_with_env(config, &[])
    }

    /// Like [`Gateway::start_raw`], with extra environment variables (`MCP_LOG` among
    /// them overrides the default `debug`).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let path = temp_path("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(bin("mcp-gateway"))
            // A process group of its own: dropping the gateway kills its backends too,
            // even when a failed test never stopped it.
            .process_group(0)
            .arg("--config")
            .arg(&path)
            .env("MCP_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcp-gateway");
        let log = Log::default();
        let rx = collect_stderr(&mut child, &log);
        let start = Instant::now();
        let url = loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("listening on ") {
                        let rest = &line[i + "listening on ".len()..];
                        break rest.split_whitespace().next().unwrap().to_string();
                    }
                }
                Err(_) => panic!("gateway did not become ready:\n{}", log.text()),
            }
        };
        Gateway {
            child,
            url,
            log,
            config: path,
            lines: rx,
        }
    }

    /// The configuration file it was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Waits for a stderr line (written after startup) containing `needle`.
    pub fn wait_line(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}:\n{}", self.log.text()),
            }
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of the WebSocket listener.
    pub fn addr(&self) -> String {
        self.url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_deadline(&mut self.child)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Kills `child`'s process group (it leads one: `process_group(0)`), so that what it
/// started goes too (a gateway's backends), and reaps it.
fn kill_group(child: &mut Child) {
    use rustix::process::{kill_process_group, Pid, Signal};
    if let Some(pgid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process_group(pgid, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends a signal with kill(2) (no kill(1): procps is not on every machine).
pub fn signal(pid: u32, sig: &str) {
    use rustix::process::{kill_process, Pid, Signal};
    let s = match sig {
        "KILL" => Signal::KILL,
        "TERM" => Signal::TERM,
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        other => panic!("signal {other}: not one the tests send"),
    };
    let p = Pid::from_raw(pid as i32).expect("pid 0");
    if let Err(e) = kill_process(p, s) {
        panic!("kill -{sig} {pid} failed: {e}");
    }
}

/// Waits for a child to exit, failing the test after [`DEADLINE`].
pub fn wait_deadline(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "process {} did not exit",
            child.id()
        );
        // Polling a child's exit has no readiness event in std; this is a bounded poll
        // of process state, not a synchronisation sleep.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// An MCP client over some transport: send JSON, receive JSON with deadlines, with a
/// queue for messages that arrive while waiting for a particular response.
pub struct Client {
    tx: Box<dyn FnMut(&str) + Send>,
    rx: Receiver<Value>,
    queue: VecDeque<Value>,
    child: Option<Child>,
    stdin: Option<Arc<Mutex<ChildStdin>>>,
    /// The router's stderr, for routers.
    pub log: Log,
    /// The router's stderr lines as they come, for [`Client::wait_log`].
    log_lines: Option<Receiver<String>>,
    /// The last [`KEPT_TEXTS`] messages received, as their text came.
    texts: Texts,
    /// Files made for it (a router's configuration), removed with it.
    files: Vec<PathBuf>,
}

/// How many received texts a [`Client`] keeps for [`Client::text_of_response`].
pub const KEPT_TEXTS: usize = 64;

/// The texts a client's reader thread received, latest last.
type Texts = Arc<Mutex<VecDeque<String>>>;

/// Keeps `text` among the last [`KEPT_TEXTS`].
fn keep_text(texts: &Texts, text: &str) {
    let mut t = texts.lock().unwrap();
    if t.len() == KEPT_TEXTS {
        t.pop_front();
    }
    t.push_back(text.to_string());
}

impl Client {
    /// Starts `mcp-router --gateway URL`.
    pub fn router(url: &str) -> Client {
        Self::router_args(&["--gateway", url], &[])
    }

    /// Starts `mcp-router` with arguments and environment.
    pub fn router_args(args: &[&str], env: &[(&str, &str)]) -> Client {
        Self::router_stderr(args, env, true).0
    }

    /// Starts `mcp-router` with its stderr piped but not read: the pipe's reading end
    /// is returned, for the test to read (or never to).
    pub fn router_unread_stderr(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Client, std::process::ChildStderr) {
        let (c, stderr) = Self::router_stderr(args, env, false);
        (c, stderr.expect("stderr kept"))
    }

    fn router_stderr(
        args: &[&str],
        env: &[(&str, &str)],
        read: bool,
    ) -> (Client, Option<std::process::ChildStderr>) {
        let mut child = Command::new(bin("mcp-router"))
            .process_group(0)
            .args(args)
            .env("MCP_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcp-router");
        let log = Log::default();
        let (log_lines, unread) = if read {
            (Some(collect_stderr(&mut child, &log)), None)
        } else {
            (None, child.stderr.take())
        };
        let stdout = child.stdout.take().unwrap();
        let (vtx, rx) = channel();
        let texts = Texts::default();
        let kept = texts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                keep_text(&kept, &line);
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("router wrote a non-JSON line {line:?}: {e}"));
                if vtx.send(v).is_err() {
                    return;
                }
            }
        });
        let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
        let w = stdin.clone();
        let client = Client {
            tx: Box::new(move |s: &str| {
                let mut w = w.lock().unwrap();
                let _ = w.write_all(s.as_bytes());
                let _ = w.write_all(b"\n");
                let _ = w.flush();
            }),
            rx,
            queue: VecDeque::new(),
            child: Some(child),
            stdin: Some(stdin),
            files: Vec::new(),
            log,
            log_lines,
            texts,
        };
        (client, unread)
    }

    /// Sends raw text as one line (or one WebSocket message).
    pub fn send_raw(&mut self, s: &str) {
        (self.tx)(s)
    }

    /// Sends a JSON message.
    pub fn send(&mut self, v: Value) {
        self.send_raw(&v.to_string())
    }

    /// The next message (queued first), failing after [`DEADLINE`].
    pub fn recv(&mut self) -> Value {
        if let Some(v) = self.queue.pop_front() {
            return v;
        }
        match self.rx.recv_timeout(DEADLINE) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no message within {DEADLINE:?}; log:\n{}", self.log.text())
            }
            Err(RecvTimeoutError::Disconnected) => panic!("peer closed; log:\n{}", self.log.text()),
        }
    }

    /// Waits for the first message matching `pred`; others stay queued in order.
    pub fn recv_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.queue.iter().position(&pred) {
            return self.queue.remove(i).unwrap();
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => self.queue.push_back(v),
                Err(_) => panic!(
                    "no matching message within {DEADLINE:?}; got {:?}; log:\n{}",
                    self.queue,
                    self.log.text()
                ),
            }
        }
    }

    /// Waits for the response with this id.
    pub fn response(&mut self, id: &Value) -> Value {
        let id = id.clone();
        self.recv_where(move |v| v.get("id") == Some(&id) && v.get("method").is_none())
    }

    /// The text of a response already received (by [`Client::response`]) as it came,
    /// byte for byte; it must be among the last [`KEPT_TEXTS`] messages.
    pub fn text_of_response(&self, id: &Value) -> String {
        let texts = self.texts.lock().unwrap();
        texts
            .iter()
            .rev()
            .find(|t| {
                let v: Value = serde_json::from_str(t).unwrap_or_default();
                v.get("id") == Some(id) && v.get("method").is_none()
            })
            .cloned()
            .unwrap_or_else(|| panic!("no response with id {id} among {texts:?}"))
    }

    /// Sends a request and waits for its response.
    pub fn request(&mut self, id: Value, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}));
        self.response(&id)
    }

    /// `tools/call` and its response.
    pub fn call(&mut self, id: Value, tool: &str, args: Value) -> Value {
        self.request(id, "tools/call", json!({"name": tool, "arguments": args}))
    }

    /// The MCP handshake; returns the initialize result.
    pub fn initialize(&mut self) -> Value {
        let r = self.request(
            json!("init"),
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {"sampling": {}, "roots": {"listChanged": true}},
                "clientInfo": {"name": "e2e", "version": "1"}
            }),
        );
        self.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
        r.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("initialize failed: {r}"))
    }

    /// Everything that arrives within `d` (for asserting that nothing more came).
    pub fn drain_for(&mut self, d: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self.queue.drain(..).collect();
        let start = Instant::now();
        while let Some(left) = d.checked_sub(start.elapsed()) {
            match self.rx.recv_timeout(left) {
                Ok(v) => out.push(v),
                Err(_) => break,
            }
        }
        out
    }

    /// Waits for a router stderr line (not seen by an earlier call) containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let lines = self.log_lines.as_ref().expect("a router client");
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no router log line with {needle:?}:\n{}", self.log.text()),
            }
        }
    }

    /// The router's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a router client").id()
    }

    /// Closes the router's stdin without waiting for its exit.
    pub fn end_stdin(&mut self) {
        if let Some(stdin) = self.stdin.take() {
            drop(stdin);
            self.tx = Box::new(|_| {});
        }
    }

    /// Waits for the router's exit (after [`Client::end_stdin`] or a signal).
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_deadline(self.child.as_mut().expect("a router client"))
    }

    /// Closes the router's stdin and returns its exit status.
    pub fn close_stdin(&mut self) -> ExitStatus {
        if let Some(stdin) = self.stdin.take() {
            drop(stdin);
            self.tx = Box::new(|_| {});
        }
        wait_deadline(self.child.as_mut().expect("a router client"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            kill_group(c);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A direct WebSocket client of the gateway (tungstenite, blocking, reader thread).
pub struct WsClient;

/// Outcome of a WebSocket handshake attempt.
pub enum Handshake {
    /// Connected: a client over the socket, and the subprotocol the server chose.
    Ok(Client, Option<String>),
    /// Refused with this HTTP status.
    Refused(u16),
}

impl WsClient {
    /// Connects with the given subprotocol offer and Authorization header.
    pub fn connect(
        gw: &Gateway,
        path: &str,
        protocol: Option<&str>,
        auth: Option<&str>,
    ) -> Handshake {
        use tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}{path}", gw.addr());
        let mut req = url.into_client_request().unwrap();
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
        }
        if let Some(a) = auth {
            req.headers_mut()
                .insert("Authorization", a.parse().unwrap());
        }
        let stream = TcpStream::connect(gw.addr()).unwrap();
        let (ws, resp) = match tungstenite::client(req, stream) {
            Ok(x) => x,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                return Handshake::Refused(r.status().as_u16())
            }
            Err(e) => panic!("handshake: {e}"),
        };
        let proto = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        Handshake::Ok(Self::wrap(ws), proto)
    }

    /// Connects offering subprotocol `mcp`; panics if refused.
    pub fn mcp(gw: &Gateway) -> Client {
        match Self::connect(gw, "/mcp", Some("mcp"), None) {
            Handshake::Ok(c, _) => c,
            Handshake::Refused(s) => panic!("refused with {s}"),
        }
    }

    fn wrap(ws: tungstenite::WebSocket<TcpStream>) -> Client {
        let reader = ws.get_ref().try_clone().unwrap();
        let ws = Arc::new(Mutex::new(ws));
        // Reading and writing share the socket: a short read timeout lets the reader
        // release the lock so writes can proceed.
        reader
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let (vtx, rx) = channel();
        let r = ws.clone();
        let texts = Texts::default();
        let kept = texts.clone();
        // A std `Mutex` is not fair: a reader that takes the lock again right after
        // releasing it can keep a writer out for seconds (a test saw requests reach the
        // gateway one per second). The reader stands aside while a writer waits.
        let writers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiting = writers.clone();
        std::thread::spawn(move || loop {
            while waiting.load(std::sync::atomic::Ordering::Acquire) > 0 {
                std::thread::yield_now();
            }
            let msg = r.lock().unwrap().read();
            match msg {
                Ok(tungstenite::Message::Text(t)) => {
                    keep_text(&kept, t.as_str());
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if vtx.send(v).is_err() {
                        return;
                    }
                }
                Ok(tungstenite::Message::Close(f)) => {
                    let _ = vtx.send(json!({"ws_close": f.map(|f| u16::from(f.code))}));
                    return;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    std::thread::yield_now();
                }
                Err(_) => {
                    let _ = vtx.send(json!({"ws_closed": true}));
                    return;
                }
            }
        });
        let w = ws.clone();
        Client {
            tx: Box::new(move |s: &str| {
                writers.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let mut ws = w.lock().unwrap();
                writers.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                let _ = ws.send(tungstenite::Message::text(s.to_string()));
            }),
            rx,
            queue: VecDeque::new(),
            child: None,
            stdin: None,
            files: Vec::new(),
            log: Log::default(),
            log_lines: None,
            texts,
        }
    }
}

/// Text of the first content item of a tools/call result.
pub fn text_of(resp: &Value) -> String {
    resp["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text content in {resp}"))
        .to_string()
}

/// The error code of a response.
pub fn error_code(resp: &Value) -> i64 {
    resp["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error response: {resp}"))
}

/// The gateway's admin listener address (`[admin] listen` with port 0), from its log.
pub fn admin_addr(gw: &Gateway) -> String {
    let line = gw
        .log
        .text()
        .lines()
        .find(|l| l.contains("admin endpoints on http://"))
        .map(str::to_string)
        .unwrap_or_else(|| gw.wait_line("admin endpoints on http://"));
    line.split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A plain HTTP GET; (status, body).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// The value of one series (`name{labels}`) in Prometheus text.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Handshake callback for a gateway stand-in: answers the router's subprotocol offer
/// with `mcp`.
#[allow(clippy::result_large_err)] // the signature tungstenite requires of a callback
pub fn choose_mcp(
    _: &tungstenite::handshake::server::Request,
    mut resp: tungstenite::handshake::server::Response,
) -> Result<tungstenite::handshake::server::Response, tungstenite::handshake::server::ErrorResponse>
{
    resp.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    Ok(resp)
}

/// A backend `name` run as `sh -c SCRIPT FIXTURE ARGS…`: in `script`, `$0` is the
/// fixture's path and `$1`… are `args`. `extra` is more of its TOML (`session = …`).
pub fn sh_backend(name: &str, script: &str, args: &[&str], extra: &str) -> String {
    let fixture = bin("mcp-fixture").display().to_string();
    let args: String = args.iter().map(|a| format!(", {a:?}")).collect();
    format!(
        "[[backends]]\nname = \"{name}\"\ntransport = \"stdio\"\ncommand = \"sh\"\n\
         args = [\"-c\", {script:?}, {fixture:?}{args}]\n{extra}\n"
    )
}

/// Starts a gateway with `config` and one fixture backend, `one`.
pub fn gateway_with(config: &str) -> Gateway {
    Gateway::start(&format!("{config}{}", fixture_backend("one", "")))
}

/// Starts a router on `gw_url` with `extra` lines in its `[gateway]` section.
pub fn router_with_config(gw_url: &str, extra: &str) -> Client {
    let path = temp_path("router.toml");
    std::fs::write(&path, format!("[gateway]\nurl = {gw_url:?}\n{extra}")).unwrap();
    let mut c = Client::router_args(&["--config", path.to_str().unwrap()], &[]);
    c.files.push(path);
    c
}
