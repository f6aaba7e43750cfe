//! Slow but live links, against the real binaries: a peer that moves bytes slowly keeps
//! its link; `send_timeout` and the keepalive only drop a peer that moves none
//! (`shared::meter`). Each test's peer reads or writes at about 1.5 MiB/s (paced by
//! [`Paced`]) behind small socket buffers, so one message of a few MiB takes well over
//! the 500 ms bound while bytes keep moving. Each was checked to fail against the
//! per-message bounds these replaced.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use mcp_e2e::*;
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};

/// Bytes per paced read or write.
const CHUNK: usize = 32 * 1024;
/// Pause before each paced read or write: 32 KiB per 20 ms, about 1.6 MiB/s. This paces
/// the peer's bandwidth; no test waits on it to synchronise.
const PAUSE: Duration = Duration::from_millis(20);
/// SO_RCVBUF of the slow peer (the kernel doubles it), so that what the bridge sends is
/// held back by the peer's pace rather than by tens of MiB of loopback buffers.
const SMALL_BUFFER: usize = 64 * 1024;
/// Size of each large message.
const BIG: usize = 2 << 20;

/// A socket whose reads or writes go at the peer's pace.
struct Paced {
    inner: TcpStream,
    reads: bool,
    writes: bool,
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.reads {
            return self.inner.read(buf);
        }
        std::thread::sleep(PAUSE);
        let n = buf.len().min(CHUNK);
        self.inner.read(&mut buf[..n])
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.writes {
            return self.inner.write(buf);
        }
        std::thread::sleep(PAUSE);
        let n = buf.len().min(CHUNK);
        self.inner.write(&buf[..n])
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn small_buffer_socket() -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(SMALL_BUFFER).unwrap();
    s
}

/// A WebSocket client of the gateway (subprotocol `mcp`), paced as asked, that has
/// completed MCP initialisation.
fn slow_client(gw: &Gateway, reads: bool, writes: bool) -> tungstenite::WebSocket<Paced> {
    use tungstenite::client::IntoClientRequest;
    let s = small_buffer_socket();
    let addr: SocketAddr = gw.addr().parse().unwrap();
    s.connect(&addr.into()).unwrap();
    let inner: TcpStream = s.into();
    inner.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = gw.url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    let paced = Paced {
        inner,
        reads,
        writes,
    };
    let mut ws = tungstenite::client(req, paced).unwrap().0;
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"slow","version":"1"}}}),
    );
    let init = next_json(&mut ws);
    assert!(init["result"]["protocolVersion"].is_string(), "{init}");
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    ws
}

fn send<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, v: Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

/// The next text message, as JSON (pings are answered by tungstenite on the way).
fn next_json<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>) -> Value {
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            tungstenite::Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

fn echo(id: i64, text: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
        "params":{"name":"one.echo","arguments":{"text":text}}})
}

#[test]
fn gateway_keeps_a_client_that_reads_slowly() {
    let gw = gateway_with("send_timeout = \"500ms\"\n");
    let mut ws = slow_client(&gw, true, false);
    let text = "r".repeat(BIG);
    for id in 1..=3 {
        send(&mut ws, echo(id, &text));
    }
    // 6 MiB of echoes at the client's pace: the later ones each wait over a second for
    // room, with bytes moving all along.
    for id in 1..=3 {
        let r = next_json(&mut ws);
        assert_eq!(r["id"], json!(id), "{}", gw.log.text());
        assert_eq!(text_of(&r).len(), BIG);
    }
    let log = gw.log.text();
    assert!(!log.contains("send_timeout"), "{log}");
}

#[test]
fn gateway_keeps_a_client_that_uploads_slowly() {
    let gw = gateway_with("ping_interval = \"500ms\"\n");
    let mut ws = slow_client(&gw, false, true);
    // One 3 MiB frame at the client's pace takes about 2 s: several keepalive intervals
    // with no whole frame from the client (and no answer to a ping until it is done),
    // but bytes all along.
    let text = "u".repeat(3 << 20);
    send(&mut ws, echo(1, &text));
    let r = next_json(&mut ws);
    assert_eq!(r["id"], json!(1), "{}", gw.log.text());
    assert_eq!(text_of(&r).len(), text.len());
    let log = gw.log.text();
    assert!(!log.contains("(ping_interval)"), "{log}");
}

/// A gateway stand-in behind a small receive buffer, paced as asked. It hands the test
/// each text message it reads, and sends what the test gives it.
struct SlowGateway {
    url: String,
    got: mpsc::Receiver<String>,
    say: mpsc::Sender<String>,
}

impl SlowGateway {
    fn start(reads: bool, writes: bool) -> SlowGateway {
        let s = small_buffer_socket();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&any.into()).unwrap();
        s.listen(4).unwrap();
        let listener: TcpListener = s.into();
        let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
        let (got_tx, got) = mpsc::channel();
        let (say, say_rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Accepted sockets inherit the listener's small receive buffer.
            let (inner, _) = listener.accept().unwrap();
            inner
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let paced = Paced {
                inner,
                reads,
                writes,
            };
            let mut ws = tungstenite::accept_hdr(paced, choose_mcp).unwrap();
            loop {
                if let Ok(text) = say_rx.try_recv() {
                    if ws.send(tungstenite::Message::text(text)).is_err() {
                        return;
                    }
                }
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        if got_tx.send(t.as_str().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
        SlowGateway { url, got, say }
    }
}

#[test]
fn router_keeps_a_gateway_that_reads_slowly() {
    let gw = SlowGateway::start(true, false);
    let mut c = router_with_config(&gw.url, "send_timeout = \"500ms\"\n");
    let text = "g".repeat(BIG);
    for id in 1..=3 {
        c.send(echo(id, &text));
    }
    for id in 1..=3 {
        let m = gw.got.recv_timeout(DEADLINE).expect("a forwarded request");
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["id"], json!(id), "{}", c.log.text());
        assert_eq!(
            v["params"]["arguments"]["text"].as_str().unwrap().len(),
            BIG
        );
    }
    let log = c.log.text();
    assert!(!log.contains("link lost"), "{log}");
    // (Not closed through stdin: the stand-in never answers, and the router would wait
    // out its drain bound for the three requests. Dropping `c` kills it.)
}

#[test]
fn router_keeps_a_gateway_that_sends_slowly() {
    let gw = SlowGateway::start(false, true);
    let mut c = router_with_config(&gw.url, "ping_interval = \"500ms\"\n");
    // A request first, so the link is up and the gateway has something to answer.
    c.send(json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
    let forwarded = gw.got.recv_timeout(DEADLINE).expect("the ping forwarded");
    assert!(forwarded.contains("\"ping\""), "{forwarded}");
    // A 3 MiB answer at the gateway's pace: about 2 s with no whole frame (and no answer
    // to a ping until it is done), but bytes all along.
    let data = "s".repeat(3 << 20);
    gw.say
        .send(json!({"jsonrpc":"2.0","id":1,"result":{"data":data}}).to_string())
        .unwrap();
    let r = c.response(&json!(1));
    assert_eq!(r["result"]["data"].as_str().map(str::len), Some(data.len()));
    let log = c.log.text();
    assert!(!log.contains("link lost"), "{log}");
    assert!(c.close_stdin().success());
}
