//! Clients that do not play fair cannot hurt the others: a flood of frames does not
//! stall the gateway's one thread, pongs to a client that never reads do not pile up,
//! connections that never finish their handshake are bounded, and the handshake takes
//! what HTTP allows (a `bearer` scheme in any case, a subprotocol list over several
//! headers), and names each session with an id no other gateway process gives. Junk
//! from a client is answered message by message but warned of once in a while.

use mcp_e2e::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tungstenite::Message as WsMessage;

/// A raw WebSocket connection to the gateway, handshake done.
fn raw_ws(gw: &Gateway) -> tungstenite::WebSocket<TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/mcp", gw.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    let stream = TcpStream::connect(gw.addr()).unwrap();
    tungstenite::client(req, stream).expect("handshake").0
}

/// The gateway's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One client sends pings without end and reads nothing. Another is answered while
/// the flood goes on (the flooding session's read loop gives the thread up), and the
/// pongs the flooder never reads do not pile up in the gateway (its write buffer is
/// bounded: tungstenite then keeps only the latest pong).
#[test]
fn a_ping_flood_that_never_reads_neither_stalls_others_nor_grows_the_gateway() {
    // A small message bound makes the write buffer's bound small (2 × 64 KiB + 4 KiB),
    // so that what the flood could pile up without it stands out.
    let gw = gateway_with("[limits]\nmax_message_bytes = 65536\n");
    let mut other = WsClient::mcp(&gw);
    other.initialize();
    let before = rss_kib(gw.pid());
    let (sent, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    const FLOOD: usize = 200_000;
    let flood = {
        let (sent, done) = (sent.clone(), done.clone());
        let mut ws = raw_ws(&gw);
        std::thread::spawn(move || {
            for i in 0..FLOOD {
                if ws.write(WsMessage::Ping(vec![b'p'; 125].into())).is_err() {
                    break;
                }
                if i % 256 == 0 && ws.flush().is_err() {
                    break;
                }
                sent.store(i + 1, Ordering::Relaxed);
            }
            let _ = ws.flush();
            done.store(true, Ordering::Relaxed);
            ws
        })
    };
    // Once the flood is well under way, the other session asks something.
    while sent.load(Ordering::Relaxed) < 20_000 && !done.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    let r = other.request(json!(1), "ping", json!({}));
    assert_eq!(r["result"], json!({}));
    assert!(
        !done.load(Ordering::Relaxed),
        "answered only after the flood's {FLOOD} frames"
    );
    let ws = flood.join().unwrap();
    // (The flooder's socket may still hold a few MiB of pings; most have been read.)
    let r = other.request(json!(2), "ping", json!({}));
    assert_eq!(r["result"], json!({}));
    let grown = rss_kib(gw.pid()).saturating_sub(before);
    // 200,000 pongs of 127 bytes would be 24 MiB.
    assert!(grown < 8 * 1024, "the gateway grew by {grown} KiB");
    drop(ws);
}

/// Connections that never send a handshake are bounded: past MAX_PENDING_HANDSHAKES
/// (256), each new one closes the oldest, long before `handshake_timeout`; a client
/// that completes its handshake is served.
#[test]
fn connections_that_never_finish_their_handshake_are_bounded() {
    // (Lands in the `[server]` table `Gateway::start` opens.)
    let gw = gateway_with("handshake_timeout = \"60s\"\n");
    let idle: Vec<TcpStream> = (0..256 + 8)
        .map(|_| TcpStream::connect(gw.addr()).unwrap())
        .collect();
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    for s in idle.iter().take(8) {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 16];
        let n = (&*s).read(&mut buf).expect("closed, not timed out");
        assert_eq!(n, 0, "the oldest idle connections are closed");
    }
    let r = c.call(json!(1), "one.echo", json!({"text":"served"}));
    assert_eq!(text_of(&r), "served");
}

/// A connection to the gateway that has sent a WebSocket upgrade request with the extra
/// `headers` (each ending in CRLF), the answer not yet read.
fn send_upgrade(gw: &Gateway, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET /mcp HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {headers}\r\n",
        gw.addr()
    )
    .unwrap();
    s
}

/// The handshake as HTTP allows it: the auth scheme's name in any case, and the
/// subprotocols offered over several `Sec-WebSocket-Protocol` headers.
#[test]
fn the_handshake_takes_a_lowercase_scheme_and_split_protocol_headers() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\ntoken_env = \"E2E_GW_TOKEN\"\n{}",
        fixture_backend("one", "")
    );
    let gw = Gateway::start_with_env(&config, &[("E2E_GW_TOKEN", "s3cret")]);
    let upgrade = |headers: &str| {
        let mut s = send_upgrade(&gw, headers);
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[9..12]).into_owned()
    };
    let ok = "Sec-WebSocket-Protocol: mcp\r\n";
    assert_eq!(
        upgrade(&format!("Authorization: bearer s3cret\r\n{ok}")),
        "101"
    );
    assert_eq!(
        upgrade(&format!("Authorization: BEARER s3cret\r\n{ok}")),
        "101"
    );
    assert_eq!(
        upgrade(&format!("Authorization: Basic s3cret\r\n{ok}")),
        "401"
    );
    assert_eq!(
        upgrade(&format!("Authorization: bearer wrong\r\n{ok}")),
        "401"
    );
    assert_eq!(
        upgrade(
            "Authorization: Bearer s3cret\r\nSec-WebSocket-Protocol: x\r\n\
             Sec-WebSocket-Protocol: mcp\r\n"
        ),
        "101"
    );
    assert_eq!(
        upgrade("Authorization: Bearer s3cret\r\nSec-WebSocket-Protocol: x, y\r\n"),
        "400"
    );
}

/// A request on the MCP path that is no WebSocket upgrade gets an HTTP answer saying
/// why, not a connection closed without a word: 426 with `Upgrade: websocket` for a
/// plain GET, 426 with the version spoken for another WebSocket version (RFC 6455
/// §4.4), 405 for a POST, 505 for HTTP/1.0, 400 for a missing key, 431 for a head
/// too large.
#[test]
fn a_request_that_is_no_upgrade_gets_an_http_answer() {
    let gw = gateway_with("");
    let answer = |request: &str| {
        let mut s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    };
    let host = gw.addr();
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let big = format!("X-Big: {}\r\n", "b".repeat(200_000));
    for (request, status, header) in [
        (
            format!("GET /mcp HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            "426",
            "Upgrade: websocket",
        ),
        (
            format!(
                "GET /mcp HTTP/1.1\r\nHost: {host}\r\n{upgrade}{key}Sec-WebSocket-Version: 8\r\n\r\n"
            ),
            "426",
            "Sec-WebSocket-Version: 13",
        ),
        (
            format!("POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"),
            "405",
            "Allow: GET",
        ),
        (
            format!(
                "GET /mcp HTTP/1.0\r\nHost: {host}\r\n{upgrade}{key}Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            "505",
            "Connection: close",
        ),
        (
            format!(
                "GET /mcp HTTP/1.1\r\nHost: {host}\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            "400",
            "Connection: close",
        ),
        (
            format!("GET /mcp HTTP/1.1\r\nHost: {host}\r\n{big}\r\n"),
            "431",
            "Connection: close",
        ),
    ] {
        let text = answer(&request);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {head:?}"
        );
        assert!(head.contains(header), "{status}: {head:?}");
    }
    // The gateway goes on.
    let mut c = WsClient::mcp(&gw);
    c.initialize();
}

/// A backend that writes without pause (lines that are no JSON-RPC, or log messages
/// nobody asked for, or stderr lines) starves nobody: another session's request to another backend is
/// answered at once, and SIGTERM still stops the gateway (its stdout reader gives the
/// other tasks a turn every `READ_FRAMES_PER_TURN` reads or messages). The warnings
/// about it are held back to one per `BACKEND_WARN_INTERVAL`.
#[test]
fn a_backend_flooding_its_stdout_starves_no_other_session() {
    // (garbage on stdout, notifications on stdout, lines on stderr)
    for (garbage, stderr) in [(true, false), (false, false), (false, true)] {
        let mut gw = Gateway::start_with_env(
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
                fixture_backend("one", ""),
                fixture_backend("two", "session = \"shared\"\n")
            ),
            &[("MCP_LOG", "info")],
        );
        let mut clients = [WsClient::mcp(&gw), WsClient::mcp(&gw)];
        for c in &mut clients {
            c.initialize();
            // The flood's log messages are below what either asked for.
            let r = c.request(json!("lvl"), "logging/setLevel", json!({"level": "error"}));
            assert!(r.get("result").is_some(), "{r}");
        }
        let [mut flooder, mut other] = clients;
        let r = flooder.call(
            json!(1),
            "two.flood",
            json!({"garbage": garbage, "stderr": stderr}),
        );
        assert_eq!(text_of(&r), "flooding");
        for i in 0..3 {
            let start = std::time::Instant::now();
            let r = other.call(json!(i), "one.echo", json!({"text": "still here"}));
            assert_eq!(text_of(&r), "still here");
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "answered after {:?} (garbage: {garbage})",
                start.elapsed()
            );
        }
        let start = std::time::Instant::now();
        assert!(gw.terminate().success());
        // Well before `shutdown_grace` (3 s): each backend sees its stdin's end at once
        // (a descriptor of one backend's stdin leaked into the next one started had it
        // wait for the kill at the grace).
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let log = gw.log.text();
        if garbage {
            let warned = log.matches("sent an invalid message").count();
            assert!(warned <= 2, "{warned} warnings about the flood");
        }
        if stderr {
            // At most `STDERR_LINES_PER_SECOND` (200) a second, the rest counted.
            let logged = log.matches("a line of the stderr flood").count();
            let secs = start.elapsed().as_secs() + 10;
            assert!(logged as u64 <= 200 * secs, "{logged} stderr lines logged");
            assert!(log.contains("stderr line(s) not logged"), "{logged}");
        }
    }
}

/// A client that sends junk without pause gets every error it is owed, while the log
/// gets one "bad message" warning per `REJECT_WARN_INTERVAL` (10 s) for its session, not
/// one per message: such a flood made 150,000 lines a second, and the logger then
/// dropped other sessions' lines.
#[test]
fn a_client_sending_junk_gets_each_error_and_one_warning() {
    let gw = gateway_with("[limits]\nmax_message_bytes = 4096\n");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    gw.wait_line("session 1 opened");
    let n = 300;
    for i in 0..n {
        if i % 100 == 99 {
            // Over the size limit: its id is read all the same.
            let big = "x".repeat(5000);
            c.send_raw(&format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"{big}"}}"#));
        } else {
            c.send_raw(&format!(r#"{{"jsonrpc":"2.0","id":{i},"method":}}"#));
        }
    }
    for i in 0..n {
        let e = c.response(&json!(i));
        let want = if i % 100 == 99 { -32600 } else { -32700 };
        assert_eq!(error_code(&e), want, "{e}");
    }
    let ok = c.call(json!("after"), "one.echo", json!({"text": "fine"}));
    assert_eq!(text_of(&ok), "fine");
    let log = gw.log.text();
    let warned = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("session 1: bad message"))
        .count();
    assert_eq!(warned, 1, "{warned} warnings:\n{log}");
    // The flood ended within the interval: the rest are still counted, once it is over
    // (10 s after the first held back; no later warning came to carry the count).
    let tally = gw.wait_line("session 1: 299 more bad message(s) from the client");
    assert!(tally.contains(" WARN "), "{tally}");
}

/// A frame the gateway must fail the connection for (RFC 6455) closes it with a code
/// saying why: 1007 for a text frame that is not UTF-8 (a binary frame with the same
/// bytes is answered with -32700 and its id instead), 1002 for a frame with a reserved
/// bit set. Other sessions go on.
#[test]
fn a_broken_frame_closes_the_connection_with_a_code_saying_why() {
    use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    let gw = gateway_with("");
    let mut other = WsClient::mcp(&gw);
    other.initialize();
    let bad = [
        &br#"{"jsonrpc":"2.0","id":7,"method":"ping","params":{"x":""#[..],
        b"\xff\xfe\"}}",
    ]
    .concat();
    let mut ws = raw_ws(&gw);
    ws.send(WsMessage::Binary(bad.clone().into())).unwrap();
    let answer = ws.read().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&answer.into_data()).unwrap();
    assert_eq!((v["id"].clone(), error_code(&v)), (json!(7), -32700), "{v}");
    let reserved = {
        let mut f = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
        f.header_mut().rsv1 = true;
        f
    };
    for (frame, want) in [
        (
            Frame::message(bad, OpCode::Data(Data::Text), true),
            CloseCode::Invalid,
        ),
        (reserved, CloseCode::Protocol),
    ] {
        let mut ws = raw_ws(&gw);
        ws.send(WsMessage::Frame(frame)).unwrap();
        let closed = match ws.read() {
            Ok(WsMessage::Close(f)) => f,
            Ok(m) => panic!("{m:?} before the close frame"),
            Err(e) => panic!("{e} before the close frame"),
        };
        assert_eq!(closed.map(|f| f.code), Some(want));
    }
    let ok = other.call(json!("after"), "one.echo", json!({"text": "fine"}));
    assert_eq!(text_of(&ok), "fine");
}

/// The session id of the handshake's response: `<16 hex digits>-<n>`, the first part
/// drawn per gateway process, so that two gateways (or one restarted) never hand out
/// the same id, and `n` counting the process's sessions from 1. The opening log line
/// names both.
#[test]
fn session_ids_do_not_repeat_across_gateway_processes() {
    let session_id = |gw: &Gateway| {
        let mut s = send_upgrade(gw, "Sec-WebSocket-Protocol: mcp\r\n");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("mcp-session-id")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no mcp-session-id in {head}"))
    };
    let config = fixture_backend("one", "");
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let ids = [session_id(&a), session_id(&a), session_id(&b)];
    let split = |id: &str| {
        let (instance, n) = id.split_once('-').unwrap_or_else(|| panic!("{id}"));
        assert!(
            instance.len() == 16 && instance.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        (instance.to_string(), n.parse::<u64>().unwrap())
    };
    let [(a1, n1), (a2, n2), (b1, m1)] = ids.clone().map(|id| split(&id));
    assert_eq!((a1.as_str(), n1, n2), (a2.as_str(), 1, 2), "{ids:?}");
    assert_eq!(m1, 1, "{ids:?}");
    assert_ne!(
        a1, b1,
        "two gateway processes drew the same instance: {ids:?}"
    );
    let line = a.wait_line(&format!("(mcp-session-id {})", ids[1]));
    assert!(line.contains("session 2 opened from 127.0.0.1:"), "{line}");
}
