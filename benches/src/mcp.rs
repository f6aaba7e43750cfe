//! The client side of MCP, as much as the benchmarks need: a connection over stdio (a
//! spawned command) or a WebSocket, the `initialize` handshake, `tools/call` requests
//! built without a JSON tree, and classifying what comes back.

use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message as WsMessage;
use async_tungstenite::WebSocketStream;
use mcp_shared::time::timeout;
use serde_json::{json, Value};
use smol::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use smol::net::TcpStream;
use smol::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use smol::stream::StreamExt;

/// The protocol version the benchmark client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// WebSocket read buffer, as the router uses (small, so many sessions stay cheap).
pub const WS_READ_BUFFER_BYTES: usize = 4096;
/// Pause between connection attempts while a port is not listening yet.
pub const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// How long closing a connection may take before it is abandoned (or killed).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// WebSocket settings for both ends of every benchmark connection: the ones the router
/// and the gateway use (4 KiB read buffer, every message written out at once).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
}

/// One MCP connection as seen by a client.
pub enum Conn {
    /// A child process: requests to its stdin, one JSON message per line; responses
    /// from its stdout. Its stderr is inherited.
    Stdio {
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: BufReader<ChildStdout>,
        line: Vec<u8>,
    },
    /// A WebSocket, one JSON message per text frame.
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Conn {
    /// Spawns `program args…` with piped stdin and stdout.
    pub fn spawn(program: &str, args: &[String]) -> Result<Conn, String> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(Conn::Stdio {
            child,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            line: Vec::new(),
        })
    }

    /// Connects to `url` (`ws://host:port/path`) offering the subprotocol `mcp`. While
    /// the port refuses connections, tries again every [`RETRY_PAUSE`] for up to `wait`
    /// (for servers that announce readiness only by listening).
    pub async fn connect(url: &str, wait: Duration) -> Result<Conn, String> {
        let mut req = url
            .into_client_request()
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        let host = req.uri().host().unwrap_or("127.0.0.1").to_string();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = req.uri().port_u16().unwrap_or(80);
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
        let deadline = std::time::Instant::now() + wait;
        let stream = loop {
            match TcpStream::connect((host.as_str(), port)).await {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline =>
                {
                    smol::Timer::after(RETRY_PAUSE).await;
                }
                Err(e) => return Err(format!("connect {url}: {e}")),
            }
        };
        stream.set_nodelay(true).ok();
        let (ws, _) = async_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
            .await
            .map_err(|e| format!("WebSocket handshake with {url}: {e}"))?;
        Ok(Conn::Ws(Box::new(ws)))
    }

    /// The child's process id (stdio only).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Conn::Stdio { child, .. } => Some(child.id()),
            Conn::Ws(_) => None,
        }
    }

    /// Sends one message (`text` without a trailing newline).
    pub async fn send(&mut self, text: &str) -> Result<(), String> {
        match self {
            Conn::Stdio { stdin, line, .. } => {
                let stdin = stdin.as_mut().ok_or("stdin already closed")?;
                // One write per message: the line and its newline together.
                line.clear();
                line.extend_from_slice(text.as_bytes());
                line.push(b'\n');
                stdin
                    .write_all(line)
                    .await
                    .map_err(|e| format!("writing to the child: {e}"))
            }
            Conn::Ws(ws) => ws
                .send(WsMessage::text(text))
                .await
                .map_err(|e| format!("WebSocket send: {e}")),
        }
    }

    /// The next message, or `None` when the other side closed.
    pub async fn recv(&mut self) -> Result<Option<String>, String> {
        match self {
            Conn::Stdio { stdout, .. } => loop {
                let mut text = String::new();
                let n = stdout
                    .read_line(&mut text)
                    .await
                    .map_err(|e| format!("reading from the child: {e}"))?;
                if n == 0 {
                    return Ok(None);
                }
                if !text.trim().is_empty() {
                    return Ok(Some(text));
                }
            },
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Ok(WsMessage::Text(t))) => return Ok(Some(t.as_str().to_owned())),
                    Some(Ok(WsMessage::Binary(b))) => {
                        return String::from_utf8(b.to_vec())
                            .map(Some)
                            .map_err(|_| "binary frame that is not UTF-8".to_string())
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("WebSocket receive: {e}")),
                }
            },
        }
    }

    /// Closes the connection: end of stdin (and the child's exit, killed after
    /// [`CLOSE_TIMEOUT`]), or a WebSocket close handshake.
    pub async fn close(self) {
        let closing = async {
            match self {
                Conn::Stdio {
                    mut child,
                    mut stdin,
                    ..
                } => {
                    drop(stdin.take());
                    let waited = timeout(CLOSE_TIMEOUT, child.status()).await;
                    if !matches!(waited, Some(Ok(_))) {
                        let _ = child.kill();
                        let _ = child.status().await;
                    }
                }
                Conn::Ws(mut ws) => {
                    if ws.close(None).await.is_ok() {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
            }
        };
        timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// What a received message is, for the benchmark.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A response to request `id`; `ok` is false for a JSON-RPC error or a tool result
    /// with `isError: true`.
    Response { id: u64, ok: bool },
    /// Anything else (notifications, server-to-client requests, other ids).
    Other,
}

/// Classifies a message. With `echo`, a message carrying our request's `method` counts
/// as its response (the raw echo floor sends requests straight back).
pub fn classify(text: &str, echo: bool) -> Incoming {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Incoming::Other;
    };
    if !echo && v.get("method").is_some() {
        return Incoming::Other;
    }
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        return Incoming::Other;
    };
    let tool_error = v
        .get("result")
        .and_then(|r| r.get("isError"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Incoming::Response {
        id,
        ok: v.get("error").is_none() && !tool_error,
    }
}

/// `tools/call` requests for one tool and one payload, built by concatenation: the
/// JSON around the id is serialised once.
#[derive(Clone)]
pub struct Requests {
    head: &'static str,
    tail: String,
}

impl Requests {
    /// Requests calling `tool` with `{arg: <payload bytes of text>}`.
    pub fn new(tool: &str, arg: &str, payload_bytes: usize) -> Requests {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let text: String = (0..payload_bytes)
            .map(|i| ALPHABET[i % ALPHABET.len()] as char)
            .collect();
        let params = json!({ "name": tool, "arguments": { arg: text } });
        Requests {
            head: r#"{"jsonrpc":"2.0","id":"#,
            tail: format!(r#","method":"tools/call","params":{params}}}"#),
        }
    }

    /// Writes the request with `id` into `out` (cleared first).
    pub fn build(&self, id: u64, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        out.push_str(self.head);
        let _ = write!(out, "{id}");
        out.push_str(&self.tail);
    }
}

/// The MCP handshake: `initialize` (id 0), its response, then
/// `notifications/initialized`.
pub async fn initialize(conn: &mut Conn) -> Result<(), String> {
    let init = json!({
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "mcp-bench", "version": env!("CARGO_PKG_VERSION") },
        },
    });
    conn.send(&init.to_string()).await?;
    loop {
        let text = conn
            .recv()
            .await?
            .ok_or("connection closed before the initialize response")?;
        match classify(&text, false) {
            Incoming::Response { id: 0, ok: true } => break,
            Incoming::Response { id: 0, ok: false } => {
                return Err(format!("initialize failed: {}", text.trim()))
            }
            _ => continue,
        }
    }
    conn.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await
}

/// Sends request `id` and waits for its response; `Ok(true)` when it succeeded.
pub async fn call(conn: &mut Conn, reqs: &Requests, id: u64) -> Result<bool, String> {
    let mut buf = String::new();
    reqs.build(id, &mut buf);
    conn.send(&buf).await?;
    loop {
        let text = conn
            .recv()
            .await?
            .ok_or("connection closed while waiting for a response")?;
        if let Incoming::Response { id: got, ok } = classify(&text, false) {
            if got == id {
                return Ok(ok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_valid_requests() {
        let reqs = Requests::new("fx.echo", "text", 5);
        let mut s = String::new();
        reqs.build(42, &mut s);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["method"], "tools/call");
        assert_eq!(v["params"]["name"], "fx.echo");
        assert_eq!(v["params"]["arguments"]["text"], "abcde");
    }

    #[test]
    fn classifies_messages() {
        let ok = r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#;
        assert_eq!(classify(ok, false), Incoming::Response { id: 3, ok: true });
        let err = r#"{"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"x"}}"#;
        assert_eq!(
            classify(err, false),
            Incoming::Response { id: 4, ok: false }
        );
        let tool_err = r#"{"jsonrpc":"2.0","id":5,"result":{"isError":true}}"#;
        assert_eq!(
            classify(tool_err, false),
            Incoming::Response { id: 5, ok: false }
        );
        let req = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call"}"#;
        assert_eq!(classify(req, false), Incoming::Other);
        assert_eq!(classify(req, true), Incoming::Response { id: 6, ok: true });
        assert_eq!(classify("not json", false), Incoming::Other);
    }
}
