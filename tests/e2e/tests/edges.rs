//! Bad input, bounds, configuration errors and process lifecycle, against the real
//! binaries: every bad message gets a JSON-RPC error (with its id when readable) and the
//! stream keeps working.

use std::process::Command;
use std::time::Duration;

use mcp_e2e::*;
use serde_json::json;

fn gateway() -> Gateway {
    gateway_with("")
}

/// Feeds `input` to `mcp-router --gateway` on stdin (a file, then EOF) and returns every
/// message it wrote to stdout; the router must exit 0.
fn router_script(gw: &Gateway, input: &[u8]) -> Vec<serde_json::Value> {
    let path = temp_path("stdin");
    std::fs::write(&path, input).unwrap();
    let out = Command::new(bin("mcp-router"))
        .args(["--gateway", &gw.url])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends each bad line and checks the error code and id, then checks the stream works.
fn check_bad_input(c: &mut Client) {
    let cases: Vec<(String, i64, serde_json::Value)> = vec![
        ("{not json".into(), -32700, json!(null)),
        (
            r#"{"jsonrpc":"2.0","id":"keep-me","method":"tools/call","params":{"name":}"#.into(),
            -32700,
            json!("keep-me"),
        ),
        ("42".into(), -32600, json!(null)),
        (
            r#"{"jsonrpc":"1.0","id":5,"method":"ping"}"#.into(),
            -32600,
            json!(5),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":7}"#.into(),
            -32600,
            json!(6),
        ),
        (
            r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#.into(),
            -32600,
            json!(null),
        ),
        (r#"{"jsonrpc":"2.0","id":8}"#.into(), -32600, json!(8)),
    ];
    for (line, code, id) in cases {
        c.send_raw(&line);
        let r = c.recv();
        assert_eq!(error_code(&r), code, "for {line}: {r}");
        assert_eq!(r["id"], id, "for {line}: {r}");
    }
    // A batch: its request answered under its id, in a batch.
    c.send_raw(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
    let r = c.recv();
    assert_eq!(error_code(&r[0]), -32600, "{r}");
    assert_eq!(r[0]["id"], json!(1), "{r}");
    // A malformed response is not answered (answering a response is never right).
    c.send_raw(r#"{"jsonrpc":"2.0","id":9,"result":{},"error":{"code":1,"message":"x"}}"#);
    let r = c.request(json!("alive"), "ping", json!({}));
    assert_eq!(r["result"], json!({}));
    let r = c.call(json!("echo"), "one.echo", json!({"text":"still fine"}));
    assert_eq!(text_of(&r), "still fine");
}

#[test]
fn bad_input_through_the_router() {
    let gw = gateway();
    let mut c = Client::router(&gw.url);
    c.initialize();
    check_bad_input(&mut c);
    c.send_raw("\u{0}\u{1}garbage\u{7f}");
    assert_eq!(error_code(&c.recv()), -32700);
}

/// An MCP host may capture the router's stderr and not read it. The relay must not stop
/// when that pipe is full: log lines beyond the logger's backlog are dropped and counted,
/// and every line is either written or counted once the pipe is read again.
#[test]
fn a_router_whose_stderr_is_not_read_keeps_answering() {
    let gw = gateway();
    // At warn, the bad lines are all it logs (at debug, lines about the link's close
    // could be dropped too, and counted).
    let (mut c, stderr) =
        Client::router_unread_stderr(&["--gateway", &gw.url], &[("MCP_LOG", "warn")]);
    c.initialize();
    // Each bad line is answered and logged at warn (~100 bytes): far more than the pipe
    // (64 KiB) and the logger's backlog (64 KiB) hold together.
    // Sent in rounds that fit in the stdin pipe, so that a router stuck on its stderr
    // fails the test at `recv`'s deadline instead of blocking it in a write.
    const BAD: usize = 6_000;
    const ROUND: usize = 500;
    for round in 0..BAD / ROUND {
        let ids = round * ROUND..(round + 1) * ROUND;
        for i in ids.clone() {
            c.send_raw(&format!(r#"{{"jsonrpc":"1.0","id":{i},"method":"ping"}}"#));
        }
        for i in ids {
            let r = c.recv();
            assert_eq!((error_code(&r), &r["id"]), (-32600, &json!(i)), "{r}");
        }
    }
    let r = c.call(json!("after"), "one.echo", json!({"text":"still relaying"}));
    assert_eq!(text_of(&r), "still relaying");
    // Now read it: what was kept comes out, then the count of what was not.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut text).unwrap();
        text
    });
    assert!(c.close_stdin().success());
    let text = reader.join().unwrap();
    let written = text.matches("bad message on stdin").count();
    let dropped: usize = text
        .lines()
        .filter_map(|l| l.split_once(" log line(s) dropped"))
        .map(|(head, _)| head.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!(
        dropped > 0,
        "nothing dropped:\n{}",
        &text[text.len() - 2000..]
    );
    assert!(written > 0);
    assert_eq!(written + dropped, BAD, "every line written or counted");
}

#[test]
fn bad_input_over_websocket_to_the_gateway() {
    let gw = gateway();
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    check_bad_input(&mut c);
}

#[test]
fn invalid_utf8_on_stdin_gets_a_parse_error_with_its_id() {
    let gw = gateway();
    let mut bytes = br#"{"jsonrpc":"2.0","id":31,"method":"ping","params":{"x":""#.to_vec();
    bytes.extend_from_slice(b"\xff\xfe\"}}\n");
    let replies = router_script(&gw, &bytes);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let r = &replies[0];
    assert_eq!(error_code(r), -32700);
    assert_eq!(r["id"], 31);
}

#[test]
fn over_long_line_gets_an_error_with_its_id_and_the_stream_goes_on() {
    let gw = gateway();
    let mut c = router_with_config(&gw.url, "[limits]\nmax_message_bytes = 2048\n");
    c.initialize();
    let big = "x".repeat(100_000);
    c.send(json!({"jsonrpc":"2.0","id":"huge","method":"tools/call","params":{"name":"one.echo","arguments":{"text":big}}}));
    let r = c.recv();
    assert_eq!(error_code(&r), -32600);
    assert_eq!(r["id"], "huge");
    assert!(r["error"]["message"].as_str().unwrap().contains("2048"));
    assert_eq!(
        text_of(&c.call(json!(2), "one.echo", json!({"text":"small"}))),
        "small"
    );
}

#[test]
fn oversized_websocket_message_is_answered_before_the_close() {
    let gw = gateway_with("[limits]\nmax_message_bytes = 4096\n");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    c.send(json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"y".repeat(10_000)}}));
    let r = c.recv();
    assert_eq!(error_code(&r), -32600, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("4096"));
}

#[test]
fn oversized_backend_response_fails_only_that_request() {
    let gw = gateway_with("[limits]\nmax_message_bytes = 65536\n");
    let mut c = Client::router(&gw.url);
    c.initialize();
    let r = c.call(json!("big"), "one.big", json!({"bytes": 200_000}));
    assert_eq!(error_code(&r), -32603, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger than 65536"));
    let r = c.call(json!("ok"), "one.big", json!({"bytes": 1000}));
    assert_eq!(text_of(&r).len(), 1000);
}

#[test]
fn in_flight_bound_answers_the_excess_request() {
    let gw = gateway_with("[limits]\nmax_in_flight = 2\n");
    let mut c = Client::router(&gw.url);
    c.initialize();
    for id in ["a", "b"] {
        c.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":1000}}}));
    }
    // The gateway reads a session's messages in order, so "a" and "b" are in flight
    // when "c" arrives.
    let r = c.call(json!("c"), "one.echo", json!({"text":"x"}));
    assert_eq!(error_code(&r), -32003, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("limit 2"));
    assert_eq!(text_of(&c.response(&json!("a"))), "slept 1000");
    assert_eq!(text_of(&c.response(&json!("b"))), "slept 1000");
}

#[test]
fn duplicate_in_flight_id_is_refused() {
    let gw = gateway();
    let mut c = Client::router(&gw.url);
    c.initialize();
    c.send(json!({"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":500}}}));
    c.send(json!({"jsonrpc":"2.0","id":"d","method":"ping"}));
    let first = c.response(&json!("d"));
    assert_eq!(error_code(&first), -32600, "{first}");
    let second = c.response(&json!("d"));
    assert_eq!(text_of(&second), "slept 500");
}

/// A string id over `session::MAX_ID_BYTES` (1,024 bytes) is refused with -32600 under
/// that id: every answer repeats its id, so a long one would make each answer long, the
/// short error that replaces an answer a non-reading client has no room for included.
/// One of 1,024 bytes is taken.
#[test]
fn a_request_with_an_over_long_id_is_refused_with_its_id() {
    let gw = gateway();
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let long = json!("i".repeat(1025));
    let r = c.call(long.clone(), "one.echo", json!({"text": "x"}));
    assert_eq!(error_code(&r), -32600, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("longer than 1024 bytes")));
    let fits = json!("i".repeat(1024));
    let r = c.call(fits, "one.echo", json!({"text": "x"}));
    assert_eq!(text_of(&r), "x");
}

#[test]
fn router_without_a_gateway_answers_every_request_and_exits_on_eof() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = Client::router(&format!("ws://127.0.0.1:{port}/mcp"));
    for id in [json!(1), json!("two")] {
        let r = c.request(id.clone(), "initialize", json!({}));
        assert_eq!(error_code(&r), -32004);
        assert_eq!(r["id"], id);
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"));
    }
    c.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    assert!(c.close_stdin().success());
}

#[test]
fn gateway_loss_answers_pending_requests() {
    let gw = gateway();
    let mut c = Client::router(&gw.url);
    c.initialize();
    c.send(json!({"jsonrpc":"2.0","id":"stuck","method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":30000}}}));
    assert_eq!(
        text_of(&c.call(json!("probe"), "one.echo", json!({"text":"p"}))),
        "p"
    );
    signal(gw.pid(), "KILL");
    let r = c.response(&json!("stuck"));
    assert_eq!(error_code(&r), -32004, "{r}");
    let r = c.request(json!("later"), "ping", json!({}));
    assert_eq!(error_code(&r), -32004);
    drop(gw);
}

/// A gateway (or a proxy in front of one) that drops every link right after its
/// handshake leaves the router no dead sockets: each lost link's tasks end with it.
/// Before, its keepalive slept out its interval and held the link's queue, and with it
/// the writer and the socket: a review counted 508 dead sockets after 9 s, and the
/// router then ran out of descriptors.
#[test]
fn links_a_gateway_drops_at_once_leave_no_sockets_behind() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if let Ok(mut ws) = tungstenite::accept_hdr(stream, choose_mcp) {
                let _ = ws.close(None);
                let _ = ws.flush();
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    let sockets = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.to_string_lossy().starts_with("socket:"))
            .count()
    };
    let c = router_with_config(
        &url,
        "reconnect_delay = \"5ms\"\nreconnect_max_delay = \"10ms\"\nping_interval = \"60s\"\n",
    );
    for _ in 0..5 {
        rx.recv_timeout(DEADLINE).expect("a connection");
    }
    let early = sockets(c.pid());
    for _ in 0..60 {
        rx.recv_timeout(DEADLINE).expect("a connection");
    }
    let late = sockets(c.pid());
    assert!(
        late <= early + 2,
        "{early} sockets after 5 links, {late} after 65"
    );
}

/// A gateway like [`gateway`] listening on `addr` (one an earlier gateway used).
fn gateway_on(addr: &str) -> Gateway {
    Gateway::start_raw(&format!(
        "[server]\nlisten = \"{addr}\"\n{}",
        fixture_backend("one", "")
    ))
}

/// `127.0.0.1:PORT` with a port that was free a moment ago.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Reconnection settings short enough for a test (the backoff stays under 200 ms).
const FAST_RECONNECT: &str = "reconnect_delay = \"100ms\"\nreconnect_max_delay = \"200ms\"\n";

#[test]
fn router_reconnects_to_a_restarted_gateway_and_restores_the_session() {
    let mut gw = gateway();
    let addr = gw.addr();
    let mut c = router_with_config(&gw.url, FAST_RECONNECT);
    let caps = c.initialize();
    assert_eq!(caps["capabilities"]["tools"]["listChanged"], true, "{caps}");
    // Session state the new gateway must get again: a log level that silences the
    // fixture's info messages, and a subscription.
    let r = c.request(
        json!("lvl"),
        "logging/setLevel",
        json!({"level": "warning"}),
    );
    assert!(r.get("result").is_some(), "{r}");
    let uri = "fixture://one/hello";
    let r = c.request(json!("sub"), "resources/subscribe", json!({ "uri": uri }));
    assert!(r.get("result").is_some(), "{r}");
    c.send(json!({"jsonrpc":"2.0","id":"stuck","method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":3000}}}));
    // Answered after "stuck" reached the gateway (one link, in order).
    let r = c.call(json!("probe"), "one.echo", json!({"text":"p"}));
    assert_eq!(text_of(&r), "p");
    signal(gw.pid(), "KILL");
    gw.terminate();
    // In flight at the loss: an error (whether the old gateway ran it is unknown).
    let r = c.response(&json!("stuck"));
    assert_eq!(error_code(&r), -32004, "{r}");
    c.wait_log("gateway link lost");

    let gw2 = gateway_on(&addr);
    c.wait_log("reconnected to gateway");
    // The host is told its cached lists may be stale.
    c.recv_where(|m| m["method"] == "notifications/tools/list_changed");
    // The new gateway session was initialised by the router's replay (a gateway refuses
    // tools/call before initialize), with the host's client info.
    let init = gw2.wait_line("initialized by");
    assert!(init.contains("e2e"), "{init}");
    let r = c.call(json!(2), "one.echo", json!({"text":"b"}));
    assert_eq!(text_of(&r), "b");
    // The subscription was restored: the backend tells the host about the update.
    let r = c.call(json!(3), "one.touch", json!({ "uri": uri }));
    assert_eq!(text_of(&r), "touched");
    c.recv_where(|m| m["method"] == "notifications/resources/updated" && m["params"]["uri"] == uri);
    // So was the log level: the info message `progress` logs before its result would
    // be queued ahead of the result.
    let r = c.call(json!(4), "one.progress", json!({"steps": 1}));
    assert_eq!(text_of(&r), "done 1");
    assert!(
        !c.log.text().contains("replaying the session"),
        "every replayed step succeeded:\n{}",
        c.log.text()
    );
    // Neither the router's own replay answers nor the silenced log message reached the
    // host.
    let rest = c.drain_for(Duration::ZERO);
    let leaked = |m: &serde_json::Value| {
        m["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("mcp-router"))
            || m["method"] == "notifications/message"
    };
    assert!(!rest.iter().any(leaked), "{rest:?}");
    assert!(c.close_stdin().success());
}

#[test]
fn router_started_before_its_gateway_connects_when_it_comes_up() {
    let addr = free_addr();
    let mut c = router_with_config(&format!("ws://{addr}/mcp"), FAST_RECONNECT);
    let r = c.request(json!(1), "initialize", json!({}));
    assert_eq!(error_code(&r), -32004, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{r}"
    );
    let _gw = gateway_on(&addr);
    // The first link: a connection, not a reconnection (there was no session).
    c.wait_log("connected to gateway");
    assert!(!c.log.text().contains("reconnected"), "{}", c.log.text());
    c.initialize();
    assert_eq!(
        text_of(&c.call(json!(2), "one.echo", json!({"text":"up"}))),
        "up"
    );
    // A host id that looks like the router's own replay ids is still the host's.
    let own_looking = json!("mcp-router-replay-1");
    let r = c.call(own_looking.clone(), "one.echo", json!({"text":"mine"}));
    assert_eq!((text_of(&r), &r["id"]), ("mine".to_string(), &own_looking));
    assert!(c.close_stdin().success());
}

/// While the router replays the host's session on a new link, the host's requests are
/// told so (-32004, "replaying the session"), not the error of the failed attempt
/// before the link came up; and a replay that fails is logged once, not as both a lost
/// link and a closed connection.
#[test]
fn requests_during_a_replay_are_told_so_and_its_failure_is_logged_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
    let (replayed_tx, replayed_rx) = std::sync::mpsc::channel::<()>();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let read_request = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>| loop {
            let m = ws.read().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.into_data()).unwrap();
            if v.get("id").is_some() {
                return v;
            }
        };
        // The first link answers `initialize`, then drops.
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept_hdr(stream, choose_mcp).unwrap();
        let init = read_request(&mut ws);
        let answer = json!({"jsonrpc":"2.0","id":init["id"],"result":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "serverInfo":{"name":"stand-in","version":"1"}}});
        ws.send(tungstenite::Message::text(answer.to_string()))
            .unwrap();
        drop(ws);
        // The next one gets the replayed `initialize` and holds it until told to drop.
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept_hdr(stream, choose_mcp).unwrap();
        let replayed = read_request(&mut ws);
        assert_eq!(replayed["method"], "initialize");
        replayed_tx.send(()).unwrap();
        let _ = end_rx.recv();
        drop(ws);
        // Later attempts are refused (the listener closes).
    });
    let mut c = router_with_config(
        &url,
        "reconnect_delay = \"10ms\"\nreconnect_max_delay = \"20ms\"\n",
    );
    c.initialize();
    replayed_rx
        .recv_timeout(DEADLINE)
        .expect("a replayed initialize");
    let r = c.call(json!("during"), "one.echo", json!({"text": "x"}));
    assert_eq!(error_code(&r), -32004, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("replaying the session")),
        "{r}"
    );
    end_tx.send(()).unwrap();
    // The first link's loss, then the replay's.
    c.wait_log("gateway link lost");
    c.wait_log("gateway link lost");
    c.wait_log("reconnecting to the gateway");
    let log = c.log.text();
    // (A message the host sent while the link was down is dropped with that reason:
    // those lines say so.)
    let doubled = log
        .lines()
        .filter(|l| l.contains("connection to the gateway closed") && !l.contains("dropped a"))
        .count();
    assert_eq!(doubled, 0, "{log}");
    assert_eq!(log.matches("gateway link lost").count(), 2, "{log}");
}

/// A WebSocket client of `gw` (subprotocol `mcp`) that reads only when the test does.
fn raw_client(gw: &Gateway) -> tungstenite::WebSocket<std::net::TcpStream> {
    use tungstenite::client::IntoClientRequest;
    let mut req = gw.url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    let stream = std::net::TcpStream::connect(gw.addr()).unwrap();
    tungstenite::client(req, stream).unwrap().0
}

/// Sends `v` as a text frame.
fn send_json(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, v: serde_json::Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap()
}

/// A [`raw_client`] of `gw` whose `initialize` has been answered.
fn initialized_raw_client(gw: &Gateway) -> tungstenite::WebSocket<std::net::TcpStream> {
    let mut ws = raw_client(gw);
    send_json(
        &mut ws,
        json!({"jsonrpc":"2.0","id":"init","method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}),
    );
    let init = ws.read().unwrap();
    assert!(init.to_text().unwrap().contains("\"result\""), "{init}");
    ws
}

/// Waits for the gateway to drop a session (its log line containing `needle`, then the
/// session's "closed" line) and returns `mcp_gateway_sessions_dropped_total` by reason,
/// as `/metrics` (the gateway needs `[admin]`) shows it then.
fn wait_dropped(gw: &Gateway, needle: &str) -> impl Fn(&str) -> f64 {
    let line = gw.wait_line(needle);
    gw.wait_line(&format!("{} closed", session_of(&line)));
    let (_, metrics) = get(&admin_addr(gw), "/metrics");
    move |reason| {
        sample(
            &metrics,
            &format!("mcp_gateway_sessions_dropped_total{{reason=\"{reason}\"}}"),
        )
    }
}

/// `session N` of a gateway log line naming a session.
fn session_of(line: &str) -> String {
    let at = line.find("session ").expect("names the session");
    line[at..].split(':').next().unwrap().to_string()
}

/// A peer that completes the WebSocket handshake (subprotocol `mcp`) and then neither
/// reads, writes nor closes: a gateway that hung. It holds the socket until dropped.
struct HungGateway {
    url: String,
    _release: std::sync::mpsc::Sender<()>,
}

impl HungGateway {
    fn start() -> HungGateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
        let (release, held) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let ws = tungstenite::accept_hdr(stream, choose_mcp).unwrap();
            // Returns when the test drops the sender.
            let _ = held.recv();
            drop(ws);
        });
        HungGateway {
            url,
            _release: release,
        }
    }
}

#[test]
fn router_without_tracing_forwards_the_hosts_bytes_unchanged() {
    // A gateway stand-in that hands over the first text message it receives.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept_hdr(stream, choose_mcp).unwrap();
        while let Ok(m) = ws.read() {
            if let tungstenite::Message::Text(t) = m {
                let _ = tx.send(t.as_str().to_owned());
                return;
            }
        }
    });
    let mut c = Client::router(&url);
    // Spacing, an escaped character and a number a serialiser would each write
    // differently.
    let line =
        r#"{ "jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "\u00e9", "n": 1.50} }"#;
    c.send_raw(line);
    let got = rx.recv_timeout(Duration::from_secs(15)).expect("a message");
    assert_eq!(got, line);
    drop(c);
}

/// A host that closes its end of the router's stdout ends the session: nothing the
/// router relays could reach it, so it stops reading stdin (no more tools run for
/// answers nobody gets) and exits.
#[test]
fn router_ends_when_the_host_closes_its_stdout() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let gw = Gateway::start(&fixture_backend("one", ""));
    let mut router = Command::new(bin("mcp-router"))
        .args(["--gateway", &gw.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(router.stdout.take());
    let mut stdin = router.stdin.take().unwrap();
    let request = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    writeln!(stdin, "{request}").unwrap();
    // Stdin stays open: only the broken stdout can end the router.
    let status = wait_deadline(&mut router);
    let mut err = String::new();
    router
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        err.contains("stdout closed by the host; shutting down"),
        "{err}"
    );
    // The normal end of a session, not an error.
    assert!(!err.contains("ERROR"), "{err}");
    drop(stdin);
}

/// A host that writes a UTF-8 byte order mark first (.NET's and PowerShell's writers do)
/// has its `initialize` read and answered under its id.
#[test]
fn router_reads_a_first_message_behind_a_byte_order_mark() {
    let gw = Gateway::start(&fixture_backend("one", ""));
    let mut c = Client::router(&gw.url);
    c.send_raw(concat!(
        "\u{FEFF}",
        r#"{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#
    ));
    let r = c.recv();
    assert_eq!(r["id"], json!("init"), "{r}");
    assert!(r["result"]["protocolVersion"].is_string(), "{r}");
    assert!(c.close_stdin().success());
}

/// Each host request gets one answer: a second response to it, and a response to an id
/// the host never sent (or cancelled), go no further than the router.
#[test]
fn router_passes_on_only_responses_a_host_request_waits_for() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept_hdr(stream, choose_mcp).unwrap();
        while let Ok(m) = ws.read() {
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let req: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            let answer = |id: &serde_json::Value, n: i64| {
                tungstenite::Message::text(
                    json!({"jsonrpc":"2.0","id":id,"result":{"n":n}}).to_string(),
                )
            };
            let mut sent = vec![answer(&req["id"], 1)];
            if req["id"] == json!(1) {
                sent.extend([answer(&req["id"], 2), answer(&json!("never-sent"), 3)]);
            }
            for m in sent {
                if ws.send(m).is_err() {
                    return;
                }
            }
        }
    });
    let mut c = Client::router(&url);
    c.send(json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
    let r = c.recv();
    assert_eq!((&r["id"], &r["result"]["n"]), (&json!(1), &json!(1)), "{r}");
    // The stand-in answers in order: what it sent after the first answer came before
    // the probe's.
    c.send(json!({"jsonrpc":"2.0","id":"probe","method":"ping"}));
    let r = c.recv();
    assert_eq!(
        r["id"],
        json!("probe"),
        "nothing else reached the host before: {r}"
    );
    assert!(c.close_stdin().success());
}

/// Sends `n` requests of about 1 MiB each: more than the kernel buffers between the
/// router and a peer that does not read, so the router's WebSocket writer blocks.
fn send_big_requests(c: &mut Client, n: i64) {
    let text = "x".repeat(1 << 20);
    for id in 0..n {
        c.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":text}}}));
    }
}

/// Receives `n` error responses, one per id `0..n`, each -32004 naming `reason`.
fn expect_link_errors(c: &mut Client, n: i64, reason: &str) {
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..n {
        let r = c.recv();
        assert_eq!(error_code(&r), -32004, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
        assert!(ids.insert(r["id"].as_i64().expect("an integer id")), "{r}");
    }
    assert_eq!(ids, (0..n).collect(), "every request answered once");
}

#[test]
fn gateway_that_stops_reading_is_dropped_after_send_timeout() {
    let gw = HungGateway::start();
    let mut c = router_with_config(&gw.url, "send_timeout = \"1s\"\n");
    send_big_requests(&mut c, 32);
    expect_link_errors(&mut c, 32, "send_timeout");
    let r = c.request(json!("later"), "ping", json!({}));
    assert_eq!(error_code(&r), -32004, "{r}");
    c.wait_log("gateway link lost");
    assert!(c.close_stdin().success());
}

#[test]
fn silent_gateway_is_found_by_ping_and_its_requests_answered() {
    let gw = HungGateway::start();
    let mut c = router_with_config(&gw.url, "ping_interval = \"500ms\"\n");
    c.send(json!({"jsonrpc":"2.0","id":"waiting","method":"ping"}));
    c.wait_log("ping sent");
    let r = c.response(&json!("waiting"));
    assert_eq!(error_code(&r), -32004, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("after a ping (ping_interval)"),
        "{message}"
    );
    assert!(c.close_stdin().success());
}

#[test]
fn idle_link_to_a_live_gateway_survives_pings() {
    let gw = gateway();
    let mut c = router_with_config(&gw.url, "ping_interval = \"500ms\"\n");
    c.initialize();
    // Each ping after the first means the one before was answered (otherwise the link
    // would have been dropped instead).
    for _ in 0..3 {
        c.wait_log("ping sent");
    }
    let r = c.call(json!("after"), "one.echo", json!({"text":"alive"}));
    assert_eq!(text_of(&r), "alive");
    assert!(
        !c.log.text().contains("gateway link lost"),
        "{}",
        c.log.text()
    );
    assert!(c.close_stdin().success());
}

#[test]
fn stdin_eof_with_a_hung_gateway_answers_every_request_and_exits() {
    // The default send_timeout (30 s) is longer than the test's deadline: the router
    // must exit on its own shutdown bounds (EOF drain, close), not on the send timeout.
    // As many as the kernel's buffers and the router's WebSocket queue take
    // (`WS_QUEUE_BYTES`, 4 MiB): beyond, the router reads no stdin, and sees its EOF
    // only at `send_timeout` (docs/configuration.md).
    let gw = HungGateway::start();
    let mut c = router_with_config(&gw.url, "");
    send_big_requests(&mut c, 6);
    assert!(c.close_stdin().success(), "{}", c.log.text());
    expect_link_errors(&mut c, 6, "stdin closed before the gateway answered");
    assert!(c.drain_for(Duration::ZERO).is_empty());
}

#[test]
fn gateway_stops_backends_and_exits_zero_on_sigterm() {
    let mut gw = Gateway::start(&format!(
        "{}{}",
        fixture_backend("one", ""),
        fixture_backend("two", "session = \"shared\"")
    ));
    let mut c = Client::router(&gw.url);
    c.initialize();
    let pids: Vec<u32> = ["one.whoami", "two.whoami"]
        .iter()
        .map(|t| {
            text_of(&c.call(json!(t), t, json!({})))
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(pids.iter().all(|p| process_alive(*p)));
    let status = gw.terminate();
    assert!(status.success(), "{status:?}\n{}", gw.log.text());
    for p in pids {
        assert!(
            !process_alive(p),
            "backend {p} still running after gateway exit"
        );
    }
    // Stopped by the gateway, and cleanly (its stdin closed, it exited 0), not killed
    // (which the process's drop would do anyway). Read as the lines come: the process
    // has exited, its last lines may still be on their way to the log.
    let stopped: Vec<String> = (0..2).map(|_| gw.wait_line("\" stopped (")).collect();
    for name in ["one", "two"] {
        let want = format!("backend \"{name}\" stopped (exit status: 0)");
        assert!(stopped.iter().any(|l| l.contains(&want)), "{stopped:?}");
    }
    gw.wait_line(": stopped");
    assert!(!gw.log.text().contains("killing it"), "{}", gw.log.text());
    // The router sees the close and answers what comes next with an error.
    let r = c.request(json!("after"), "ping", json!({}));
    assert_eq!(error_code(&r), -32004);
    assert!(c.close_stdin().success());
}

#[test]
fn websocket_handshake_checks_path_subprotocol_and_session_limit() {
    let gw = Gateway::start_raw(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_sessions = 1\n{}",
        fixture_backend("one", "")
    ));
    match WsClient::connect(&gw, "/other", Some("mcp"), None) {
        Handshake::Refused(s) => assert_eq!(s, 404),
        Handshake::Ok(..) => panic!("wrong path accepted"),
    }
    match WsClient::connect(&gw, "/mcp", Some("graphql-ws"), None) {
        Handshake::Refused(s) => assert_eq!(s, 400),
        Handshake::Ok(..) => panic!("wrong subprotocol accepted"),
    }
    let first = match WsClient::connect(&gw, "/mcp", Some("mcp"), None) {
        Handshake::Ok(c, proto) => {
            assert_eq!(proto.as_deref(), Some("mcp"));
            c
        }
        Handshake::Refused(s) => panic!("refused {s}"),
    };
    match WsClient::connect(&gw, "/mcp", None, None) {
        Handshake::Refused(s) => assert_eq!(s, 503),
        Handshake::Ok(..) => panic!("session limit not enforced"),
    }
    drop(first);
}

#[test]
fn bearer_token_is_required_when_configured() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\ntoken_env = \"E2E_GW_TOKEN\"\n{}",
        fixture_backend("one", "")
    );
    let gw = Gateway::start_with_env(&config, &[("E2E_GW_TOKEN", "s3cret")]);
    match WsClient::connect(&gw, "/mcp", Some("mcp"), Some("Bearer wrong")) {
        Handshake::Refused(s) => assert_eq!(s, 401),
        Handshake::Ok(..) => panic!("wrong token accepted"),
    }
    let mut anon = Client::router(&gw.url);
    let r = anon.request(json!(1), "initialize", json!({}));
    assert_eq!(error_code(&r), -32004);
    assert!(r["error"]["message"].as_str().unwrap().contains("401"));

    let path = temp_path("router.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nurl = {:?}\ntoken_env = \"E2E_ROUTER_TOKEN\"\n",
            gw.url
        ),
    )
    .unwrap();
    let mut c = Client::router_args(
        &["--config", path.to_str().unwrap()],
        &[("E2E_ROUTER_TOKEN", "s3cret")],
    );
    c.initialize();
    assert_eq!(
        text_of(&c.call(json!(1), "one.echo", json!({"text":"authorized"}))),
        "authorized"
    );
    assert!(
        !gw.log.text().contains("s3cret"),
        "the token never appears in logs"
    );
    assert!(!c.log.text().contains("s3cret"));
    let r = c.call(json!(2), "one.env", json!({"name": "E2E_GW_TOKEN"}));
    assert_eq!(
        text_of(&r),
        "",
        "backends do not inherit the gateway's token"
    );
}

#[test]
fn check_config_exit_codes_and_messages() {
    let good = temp_path("good.toml");
    std::fs::write(&good, fixture_backend("one", "")).unwrap();
    let out = Command::new(bin("mcp-gateway"))
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = temp_path("bad.toml");
    std::fs::write(
        &bad,
        format!("{}sesion = \"shared\"\n", fixture_backend("one", "")),
    )
    .unwrap();
    let out = Command::new(bin("mcp-gateway"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sesion") && err.contains(":7:"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear message: {err}");

    // Running (not only checking) with a bad config also exits 64.
    let out = Command::new(bin("mcp-gateway"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let rbad = temp_path("router-bad.toml");
    std::fs::write(&rbad, "[gateway]\nurl = \"http://nope\"\n").unwrap();
    let out = Command::new(bin("mcp-router"))
        .args(["--check-config", "--config"])
        .arg(&rbad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.url") && err.contains(":2:"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "the router never writes anything but MCP to stdout"
    );
    let out = Command::new(bin("mcp-router"))
        .args(["--check-config", "--gateway", "ws://127.0.0.1:1/mcp"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    let router = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin("mcp-router"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // --gateway replaces the file's URL: a file without one, or with a wrong one, is
    // fine with it; a wrong flag is named as the flag.
    let nourl = temp_path("router-nourl.toml");
    std::fs::write(
        &nourl,
        "[logging]
level = \"info\"\n",
    )
    .unwrap();
    for file in [&nourl, &rbad] {
        let f = file.to_str().unwrap();
        let (code, err) = router(
            &[
                "--check-config",
                "--config",
                f,
                "--gateway",
                "ws://127.0.0.1:1/mcp",
            ],
            &[],
        );
        assert_eq!(code, Some(0), "{err}");
        let (code, err) = router(
            &["--check-config", "--config", f, "--gateway", "http://x"],
            &[],
        );
        assert_eq!(code, Some(64), "{err}");
        assert!(err.contains("--gateway:"), "{err}");
    }
    // What is wrong in the file's own text is the file's, flag or not: a `url` given
    // twice is named with its line, not blamed on the flag.
    let twice = temp_path("router-twice.toml");
    std::fs::write(
        &twice,
        "[gateway]\nurl = \"ws://h:1/\"\nurl = \"ws://h:2/\"\n",
    )
    .unwrap();
    let f = twice.to_str().unwrap();
    for args in [
        &["--check-config", "--config", f][..],
        &[
            "--check-config",
            "--config",
            f,
            "--gateway",
            "ws://127.0.0.1:1/mcp",
        ],
    ] {
        let (code, err) = router(args, &[]);
        assert_eq!(code, Some(64), "{err}");
        assert!(
            err.contains(":3:") && err.contains("gateway.url") && !err.contains("--gateway"),
            "{args:?}: {err}"
        );
    }
    // A token that cannot be read is a configuration error for --check-config too,
    // named by key and file.
    let tok = temp_path("router-token.toml");
    std::fs::write(
        &tok,
        "[gateway]\nurl = \"ws://127.0.0.1:1/mcp\"\ntoken_env = \"E2E_NO_SUCH_TOKEN\"\n",
    )
    .unwrap();
    let (code, err) = router(&["--check-config", "--config", tok.to_str().unwrap()], &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("gateway.token_env") && err.contains("router-token") && err.contains(":3:"),
        "named by key, file and line: {err}"
    );
    let (code, err) = router(
        &["--check-config", "--config", tok.to_str().unwrap()],
        &[("E2E_NO_SUCH_TOKEN", "t")],
    );
    assert_eq!(code, Some(0), "{err}");
    let gtok = temp_path("gateway-token.toml");
    std::fs::write(
        &gtok,
        format!(
            "{}[auth]\ntoken_file = \"/nonexistent/e2e-token\"\n",
            fixture_backend("one", "")
        ),
    )
    .unwrap();
    let out = Command::new(bin("mcp-gateway"))
        .args(["--check-config", "--config"])
        .arg(&gtok)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let line = fixture_backend("one", "").lines().count() + 2;
    assert!(
        err.contains("auth.token_file") && err.contains(&format!(":{line}:")),
        "named by key, file and line: {err}"
    );
    // A bad command line is a usage error too, for both binaries (the unit does not
    // restart on 64).
    let (code, err) = router(&["--bogus"], &[]);
    assert_eq!(code, Some(64), "{err}");
    let g = good.to_str().unwrap();
    for args in [
        &["--bogus"][..],
        &["extra"],
        &["--config"],
        &["--config", g, "--config", g],
    ] {
        let out = Command::new(bin("mcp-gateway"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("mcp-gateway: "));
    }
    // An unknown MCP_LOG level is refused like a bad file, by both.
    let out = Command::new(bin("mcp-gateway"))
        .args(["--check-config", "--config", g])
        .env("MCP_LOG", "verbose")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MCP_LOG=\"verbose\""));
    let (code, err) = router(
        &["--check-config", "--gateway", "ws://127.0.0.1:1/mcp"],
        &[("MCP_LOG", "verbose")],
    );
    assert_eq!(code, Some(64), "{err}");
    // A collector URL the exporter could never use is refused by the check (and so by
    // a reload), with its key and line, not by the next start.
    let ep = temp_path("bad-endpoint.toml");
    std::fs::write(
        &ep,
        format!(
            "{}[tracing]\nenabled = true\notlp_endpoint = \"http://collector:43l7\"\n",
            fixture_backend("one", "")
        ),
    )
    .unwrap();
    let out = Command::new(bin("mcp-gateway"))
        .args(["--check-config", "--config"])
        .arg(&ep)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tracing.otlp_endpoint") && err.contains(":9:"),
        "{err}"
    );
    // A bad `OTEL_*` value counts when tracing is on; with tracing off none is read
    // (an MCP host's environment may hold values meant for other programs).
    let traced = temp_path("traced.toml");
    std::fs::write(
        &traced,
        format!("{}[tracing]\nenabled = true\n", fixture_backend("one", "")),
    )
    .unwrap();
    for (file, code) in [(traced.as_path(), 64), (std::path::Path::new(g), 0)] {
        let out = Command::new(bin("mcp-gateway"))
            .args(["--check-config", "--config"])
            .arg(file)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{file:?}: {out:?}");
    }
}

#[test]
fn router_stdout_carries_only_protocol_messages() {
    let gw = gateway();
    let mut c = Client::router(&gw.url);
    c.initialize();
    c.call(json!(1), "one.echo", json!({"text":"x"}));
    // The harness parses every stdout line as JSON and panics otherwise; logs went to stderr.
    assert!(c.log.text().contains("connected to gateway"));
    let rest = c.drain_for(Duration::from_millis(50));
    assert!(rest.iter().all(|v| v["jsonrpc"] == "2.0"));
}

#[test]
fn a_burst_larger_than_a_write_batch_arrives_whole_both_ways() {
    // 60 requests of 2 KiB sent at once: the router's writer and the gateway's (for the
    // answers) put what is queued into one write, up to `WS_WRITE_BATCH_BYTES` (4 KiB)
    // at a time; every frame must still arrive whole, and each answer be its own.
    let gw = gateway();
    let mut c = Client::router(&gw.url);
    c.initialize();
    let text = |i: usize| format!("{i:04}{}", "z".repeat(2048));
    for i in 0..60 {
        c.send(json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                      "params":{"name":"one.echo","arguments":{"text":text(i)}}}));
    }
    for i in 0..60 {
        let r = c.response(&json!(i));
        assert_eq!(text_of(&r), text(i));
    }
}

#[test]
fn pipelined_script_through_the_router_gets_every_answer_before_exit() {
    // `printf ... | mcp-router`: requests right behind initialize wait for it, and
    // stdin EOF waits for the answers already on their way.
    let gw = gateway();
    let script = [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"script","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":200}}}),
        json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"one.echo","arguments":{"text":"piped"}}}),
    ];
    let text: String = script.iter().map(|m| format!("{m}\n")).collect();
    let replies = router_script(&gw, text.as_bytes());
    let mut ids: Vec<i64> = replies.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4], "{replies:?}");
    assert!(
        replies.iter().all(|r| r.get("result").is_some()),
        "{replies:?}"
    );
}

#[test]
fn sighup_with_otel_variables_set_reports_no_tracing_change() {
    // The running [tracing] has OTEL_SERVICE_NAME applied; a reload that changes only
    // the log level must not read that as a change to [tracing].
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        fixture_backend("one", "")
    );
    let gw = Gateway::start_with_env(&config, &[("OTEL_SERVICE_NAME", "reload-test")]);
    std::fs::write(
        gw.config_path(),
        format!("{config}\n[logging]\nlevel = \"warn\"\n"),
    )
    .unwrap();
    signal(gw.pid(), "HUP");
    let l = gw.wait_line("reload:");
    assert!(l.contains("configuration applied"), "{l}");
}

/// A token rotated in `[auth] token_file` applies at SIGHUP: the new one is accepted,
/// the old one refused; a token file that cannot be read keeps the running token.
#[test]
fn sighup_reads_a_rotated_token_file() {
    let token = temp_path("gw-token");
    std::fs::write(&token, "old-token\n").unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\ntoken_file = {:?}\n{}",
        token.to_str().unwrap(),
        fixture_backend("one", "")
    );
    let gw = Gateway::start_raw(&config);
    let accepted =
        |t: &str| match WsClient::connect(&gw, "/mcp", Some("mcp"), Some(&format!("Bearer {t}"))) {
            Handshake::Ok(..) => true,
            Handshake::Refused(s) => {
                assert_eq!(s, 401);
                false
            }
        };
    assert!(accepted("old-token") && !accepted("new-token"));
    std::fs::write(&token, "new-token\n").unwrap();
    signal(gw.pid(), "HUP");
    let l = gw.wait_line("token_file read again");
    assert!(!l.contains("new-token"), "{l}");
    gw.wait_line("reload: configuration applied");
    assert!(accepted("new-token") && !accepted("old-token"));
    std::fs::remove_file(&token).unwrap();
    signal(gw.pid(), "HUP");
    gw.wait_line("keeping the running token");
    assert!(accepted("new-token"));
    assert!(
        !gw.log.text().contains("new-token"),
        "the token never appears in logs"
    );
}

#[test]
fn sighup_reloads_what_is_safe_and_reports_the_rest() {
    let gw = gateway();
    let mut c = Client::router(&gw.url);
    c.initialize();
    let original = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        format!("{original}\n[logging]\nlevel = \"warn\"\n"),
    )
    .unwrap();
    signal(gw.pid(), "HUP");
    gw.wait_line("reload: configuration applied");
    std::fs::write(
        gw.config_path(),
        format!("{original}\n[limits]\nmax_in_flight = 3\n"),
    )
    .unwrap();
    signal(gw.pid(), "HUP");
    let l = gw.wait_line("reload:");
    assert!(l.contains("[limits]") && l.contains("restart"), "{l}");
    // The admin listener is not moved, added or removed by a reload either.
    std::fs::write(
        gw.config_path(),
        format!("{original}\n[admin]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    signal(gw.pid(), "HUP");
    let l = gw.wait_line("reload:");
    assert!(l.contains("[admin]") && l.contains("restart"), "{l}");
    std::fs::write(gw.config_path(), "[server]\nbogus = 1\n").unwrap();
    signal(gw.pid(), "HUP");
    let l = gw.wait_line("reload:");
    assert!(
        l.contains("bogus") && l.contains("keeping the running configuration"),
        "{l}"
    );
    // Still serving, with the original configuration.
    assert_eq!(
        text_of(&c.call(json!(1), "one.echo", json!({"text":"up"}))),
        "up"
    );
}

#[test]
fn requests_over_the_per_backend_cap_are_refused_with_their_ids() {
    // One session may have all of them in flight, so the cap met is the backend's own
    // (MAX_PENDING_PER_PROCESS, 4096).
    let gw = gateway_with("[limits]\nmax_in_flight = 5000\n");
    let mut ws = raw_client(&gw);
    ws.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    let send = |ws: &mut tungstenite::WebSocket<_>, v: serde_json::Value| {
        ws.send(tungstenite::Message::text(v.to_string())).unwrap()
    };
    let recv = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>| loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            return serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"t","version":"1"}}}),
    );
    assert!(recv(&mut ws)["result"].is_object());
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    // The backend answers, then reads nothing for longer than the test runs: every
    // later request stays pending (queued for its stdin, or waiting for room there).
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":"stall","method":"tools/call",
            "params":{"name":"one.stall","arguments":{"ms":60000}}}),
    );
    assert_eq!(recv(&mut ws)["id"], json!("stall"));
    let total = 4096 + 4;
    for id in 1..=total {
        send(
            &mut ws,
            json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
                "name":"one.echo","arguments":{"text":"x"},"_meta":{"progressToken":id}}}),
        );
    }
    // Exactly the four over the cap come back, at once, each with its own id.
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = recv(&mut ws);
        assert_eq!(error_code(&r), -32003, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("limit 4096"), "{message}");
        ids.insert(r["id"].as_i64().expect("the request's id"));
    }
    // The last four: requests take their places in the order they came.
    assert_eq!(ids, (4097..=total).collect(), "{ids:?}");
    // And no fifth: the next message is the answer to a ping sent now.
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":"after","method":"ping"}),
    );
    let r = recv(&mut ws);
    assert_eq!(
        (&r["id"], &r["result"]),
        (&json!("after"), &json!({})),
        "{r}"
    );
}

#[test]
fn client_that_stops_reading_loses_its_session_after_send_timeout() {
    let gw = gateway_with("send_timeout = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let mut ws = raw_client(&gw);
    let send = |ws: &mut tungstenite::WebSocket<_>, v: serde_json::Value| {
        ws.send(tungstenite::Message::text(v.to_string())).is_ok()
    };
    assert!(send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"t","version":"1"}}})
    ));
    let init = ws.read().unwrap();
    assert!(
        init.to_text().unwrap().contains("protocolVersion"),
        "{init}"
    );
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    // From here on the client never reads: ~32 MiB of echoes pile up behind it. Its own
    // sends may block, then fail once the gateway closes the session.
    let text = "x".repeat(1 << 20);
    for id in 1..=32 {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":text}}});
        if !send(&mut ws, call) {
            break;
        }
    }
    let dropped = wait_dropped(&gw, "(send_timeout); closing");
    assert_eq!(dropped("send_timeout"), 1.0);
    assert_eq!(dropped("ping_timeout"), 0.0);
    // The gateway serves the next client as before.
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let r = c.call(json!("next"), "one.echo", json!({"text":"still here"}));
    assert_eq!(text_of(&r), "still here");
}

#[test]
fn silent_client_is_found_by_ping_and_live_ones_are_kept() {
    let gw = gateway_with("ping_interval = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    // A live client (its reader answers pings) and one that never reads again.
    let mut live = WsClient::mcp(&gw);
    live.initialize();
    let _silent = raw_client(&gw);
    let dropped = wait_dropped(&gw, "after a ping (ping_interval); closing");
    assert_eq!(dropped("ping_timeout"), 1.0);
    // The live client was pinged too, and is still served.
    let r = live.call(json!("after"), "one.echo", json!({"text":"kept"}));
    assert_eq!(text_of(&r), "kept");
    let log = gw.log.text();
    assert_eq!(
        log.matches("after a ping (ping_interval)").count(),
        1,
        "{log}"
    );
}

/// A client that closes its WebSocket gets the gateway's close frame in reply at once
/// (RFC 6455 §5.5.1), with a request in flight or not: the closing handshake ends
/// cleanly instead of the socket being shut before the reply went out.
#[test]
fn client_close_gets_a_close_frame_in_reply() {
    client_close(false);
}

/// … also while a request is in flight (whose failure, as the session ends, must not
/// be sent after the client's close frame).
#[test]
fn client_close_with_a_request_in_flight_gets_a_close_frame_in_reply() {
    client_close(true);
}

fn client_close(in_flight: bool) {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;
    let gw = gateway();
    let mut req = format!("ws://{}/mcp", gw.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    let stream = std::net::TcpStream::connect(gw.addr()).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).unwrap();
    let answer_to = |ws: &mut tungstenite::WebSocket<_>, id: serde_json::Value| loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    };
    let send = |ws: &mut tungstenite::WebSocket<_>, v: serde_json::Value| {
        ws.send(Message::text(v.to_string())).unwrap()
    };
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"e2e","version":"1"}}}),
    );
    answer_to(&mut ws, json!(0));
    send(
        &mut ws,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    if in_flight {
        send(
            &mut ws,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                "params":{"name":"one.sleep","arguments":{"ms":60000}}}),
        );
    }
    // Answered after the call was handed to the session (messages are taken in order).
    send(&mut ws, json!({"jsonrpc":"2.0","id":2,"method":"ping"}));
    answer_to(&mut ws, json!(2));
    let start = std::time::Instant::now();
    ws.close(None).unwrap();
    let end = loop {
        if let Err(e) = ws.read() {
            break e;
        }
    };
    // `ConnectionClosed` only once the server's close frame came back.
    assert!(
        matches!(end, tungstenite::Error::ConnectionClosed),
        "{end} after {:?}\n{}",
        start.elapsed(),
        gw.log.text()
    );
    // Before the backend's stop (`shutdown_grace`, 3 s) or the writer's drain bound
    // (2 s) could have ended it.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "close frame after {:?}",
        start.elapsed()
    );
    if in_flight {
        // The session's end cancels the request: it is not answered with the failure
        // that stopping its backend then causes.
        gw.wait_line("tools/call 1: the client disconnected before the answer");
        assert!(
            !gw.log.text().contains("tools/call 1 failed"),
            "{}",
            gw.log.text()
        );
    }
}

#[test]
fn a_cancelled_request_leaves_the_routers_in_flight_table_and_is_never_answered() {
    let gw = gateway();
    let mut c = router_with_config(&gw.url, "[limits]\nmax_in_flight = 2\n");
    c.initialize();
    for id in [1, 2] {
        c.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.sleep","arguments":{"ms":60000}}}));
    }
    // Both reached the gateway (one link, in order) before they are cancelled.
    c.send(json!({"jsonrpc":"2.0","id":"full","method":"ping"}));
    let r = c.response(&json!("full"));
    assert_eq!(error_code(&r), -32003, "two in flight: {r}");
    for id in [1, 2] {
        c.send(json!({"jsonrpc":"2.0","method":"notifications/cancelled",
            "params":{"requestId":id,"reason":"user"}}));
    }
    // Their places are free again.
    let r = c.call(json!(3), "one.echo", json!({"text":"after"}));
    assert_eq!(text_of(&r), "after");
    let r = c.request(json!(4), "ping", json!({}));
    assert_eq!(r["result"], json!({}), "{r}");
    // At EOF nothing is waited for, and the cancelled requests get no answer.
    assert!(c.close_stdin().success());
    let rest = c.drain_for(DEADLINE);
    assert!(
        !rest.iter().any(|m| m["id"] == 1 || m["id"] == 2),
        "{rest:?}"
    );
    assert!(
        !c.log.text().contains("still unanswered"),
        "{}",
        c.log.text()
    );
}

#[test]
fn a_last_line_without_a_newline_is_still_a_message() {
    let gw = gateway();
    let init = json!({"jsonrpc":"2.0","id":"init","method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}});
    let input = format!("{init}\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}}");
    let replies = router_script(&gw, input.as_bytes());
    assert!(
        replies
            .iter()
            .any(|r| r["id"] == 1 && r["result"] == json!({})),
        "{replies:?}"
    );
}

/// The TypeScript SDK writes `id` after `params`: an over-long request's id is read
/// wherever it is, and however its key is spelt.
#[test]
fn an_over_long_request_with_its_id_last_gets_an_error_with_its_id() {
    let gw = gateway_with("[limits]\nmax_message_bytes = 4096\n");
    let mut r = router_with_config(&gw.url, "[limits]\nmax_message_bytes = 2048\n");
    r.initialize();
    let mut ws = WsClient::mcp(&gw);
    ws.initialize();
    for c in [&mut r, &mut ws] {
        let big = "x".repeat(6000);
        c.send_raw(&format!(
            r#"{{"method":"tools/call","params":{{"name":"one.echo","arguments":{{"text":"{big}","id":1}}}},"jsonrpc":"2.0","id":"last"}}"#
        ));
        let e = c.response(&json!("last"));
        assert_eq!(error_code(&e), -32600, "{e}");
        // The key written with escapes is still `id` (the parser reads it so).
        c.send_raw(&format!(
            r#"{{"method":"tools/call","params":{{"arguments":{{"text":"{big}"}}}},"jsonrpc":"2.0","\u0069\u0064":"escaped"}}"#
        ));
        let e = c.response(&json!("escaped"));
        assert_eq!(error_code(&e), -32600, "{e}");
        // A notification that long is not answered, and the stream goes on.
        c.send_raw(&format!(
            r#"{{"method":"notifications/progress","params":{{"x":"{big}"}},"jsonrpc":"2.0"}}"#
        ));
        let ok = c.call(json!("after"), "one.echo", json!({"text":"fine"}));
        assert_eq!(text_of(&ok), "fine");
        assert!(c.drain_for(Duration::ZERO).is_empty());
    }
}

/// An answer of the client's to a backend's request that cannot be read (not JSON, too
/// long, or with neither result nor error) is not answered back: the backend's request fails at once, rather than at
/// its timeout.
#[test]
fn an_unreadable_answer_to_a_sampling_request_fails_it_at_once() {
    let gw = gateway_with("[limits]\nmax_message_bytes = 4096\n");
    let mut r = router_with_config(&gw.url, "[limits]\nmax_message_bytes = 2048\n");
    r.initialize();
    let mut ws = WsClient::mcp(&gw);
    ws.initialize();
    let big = "y".repeat(5000);
    for c in [&mut r, &mut ws] {
        for (i, (answer, why)) in [
            (
                r#"{"jsonrpc":"2.0","id":$ID,"result":{"x":}"#.to_string(),
                "parse error",
            ),
            (
                format!(r#"{{"jsonrpc":"2.0","result":{{"text":"{big}"}},"id":$ID}}"#),
                "maximum size",
            ),
            // Neither result nor error: taken for the answer it is (its id is the
            // request's), not for a request without its method.
            (
                r#"{"jsonrpc":"2.0","id":$ID}"#.to_string(),
                "exactly one of",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            c.send(json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                "params":{"name":"one.sample","arguments":{"prompt":"2+2?"}}}));
            let req = c.recv_where(|v| v["method"] == "sampling/createMessage");
            c.send_raw(&answer.replace("$ID", &req["id"].to_string()));
            let res = c.response(&json!(i));
            let text = text_of(&res);
            assert!(
                text.starts_with("sampling failed:") && text.contains(why),
                "{text}"
            );
            // Nothing was sent back for the bad answer.
            assert!(
                c.drain_for(Duration::ZERO).is_empty(),
                "the answer was answered"
            );
        }
    }
}

#[test]
fn a_backend_response_that_is_not_json_fails_its_request_at_once() {
    let gw = gateway_with("[limits]\nrequest_timeout = \"60s\"\n");
    let mut c = Client::router(&gw.url);
    c.initialize();
    // Not JSON; and an answer with neither result nor error (not taken for a request
    // of the backend's without its method, since its id is one of the gateway's).
    for (i, line) in [
        r#"{"jsonrpc":"2.0","id":$ID,"result":{"content":[}"#,
        r#"{"jsonrpc":"2.0","id":$ID}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.call(json!(i), "one.respond_raw", json!({ "line": line }));
        assert_eq!(error_code(&r), -32603, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("invalid response"), "{message}");
        assert_eq!(r["error"]["data"]["kind"], "invalid_response");
    }
}

#[test]
fn a_gateway_message_over_the_routers_limit_fails_only_its_request() {
    let gw = gateway();
    let mut c = router_with_config(&gw.url, "[limits]\nmax_message_bytes = 65536\n");
    c.initialize();
    c.send(json!({"jsonrpc":"2.0","id":"slow","method":"tools/call",
        "params":{"name":"one.sleep","arguments":{"ms":300}}}));
    let r = c.call(json!("big"), "one.big", json!({"bytes": 70_000}));
    assert_eq!(error_code(&r), -32603, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than 65536"),
        "{r}"
    );
    // The link stayed up: the request in flight is answered by the gateway.
    let r = c.response(&json!("slow"));
    assert_eq!(text_of(&r), "slept 300");
    assert!(!c.log.text().contains("link lost"), "{}", c.log.text());
}

#[test]
fn replay_restores_more_subscriptions_than_the_gateways_in_flight_bound() {
    let config = |listen: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[limits]\nmax_in_flight = 4\n{}",
            fixture_backend("one", "")
        )
    };
    let mut gw = Gateway::start_raw(&config("127.0.0.1:0"));
    let addr = gw.addr();
    let mut c = router_with_config(&gw.url, FAST_RECONNECT);
    c.initialize();
    const N: usize = 40;
    for i in 0..N {
        let uri = format!("fixture://one/item/{i}");
        let r = c.request(
            json!(format!("s{i}")),
            "resources/subscribe",
            json!({ "uri": uri }),
        );
        assert!(r.get("result").is_some(), "{r}");
    }
    gw.terminate();
    c.wait_log("gateway link lost");
    let _gw2 = Gateway::start_raw(&config(&addr));
    c.wait_log("reconnected to gateway");
    for i in [0, N / 2, N - 1] {
        let uri = format!("fixture://one/item/{i}");
        let r = c.call(json!(format!("t{i}")), "one.touch", json!({ "uri": uri }));
        assert_eq!(text_of(&r), "touched", "item {i}: {r}");
        c.recv_where(|m| {
            m["method"] == "notifications/resources/updated" && m["params"]["uri"] == uri
        });
    }
    assert!(
        !c.log.text().contains("replaying the session"),
        "every replayed step succeeded:\n{}",
        c.log.text()
    );
}

#[test]
fn a_hosts_late_answer_to_a_lost_links_request_does_not_answer_a_new_one() {
    let mut gw = gateway();
    let addr = gw.addr();
    let mut c = router_with_config(&gw.url, FAST_RECONNECT);
    c.initialize();
    c.send(json!({"jsonrpc":"2.0","id":"s1","method":"tools/call",
        "params":{"name":"one.sample","arguments":{"prompt":"first"}}}));
    let old = c.recv_where(|v| v["method"] == "sampling/createMessage");
    gw.terminate();
    let r = c.response(&json!("s1"));
    assert_eq!(error_code(&r), -32004, "{r}");
    // The host is told the request it holds is void.
    let n = c.recv_where(|v| v["method"] == "notifications/cancelled");
    assert_eq!(n["params"]["requestId"], old["id"], "{n}");
    let _gw2 = gateway_on(&addr);
    c.wait_log("reconnected to gateway");
    c.send(json!({"jsonrpc":"2.0","id":"s2","method":"tools/call",
        "params":{"name":"one.sample","arguments":{"prompt":"second"}}}));
    let new = c.recv_where(|v| v["method"] == "sampling/createMessage");
    assert_eq!(new["params"]["messages"][0]["content"]["text"], "second");
    assert_ne!(new["id"], old["id"], "a new id for the host");
    let answer = |id: &serde_json::Value, text: &str| {
        json!({"jsonrpc":"2.0","id":id,"result":{"role":"assistant",
            "content":{"type":"text","text":text},"model":"test"}})
    };
    c.send(answer(&old["id"], "to the first"));
    c.send(answer(&new["id"], "to the second"));
    let r = c.response(&json!("s2"));
    assert_eq!(text_of(&r), "sampled: to the second");
}

/// A client that sends requests but reads nothing holds at most `max_in_flight`
/// answers in the gateway beyond its queue (and the sockets): the request after them is
/// refused, and reading stops. Before, an answered request stopped counting while its
/// answer waited for room, and the gateway held one answer per request sent; and then,
/// a cancellation of an answered request freed its place all the same.
#[test]
fn a_client_that_does_not_read_cannot_pile_up_answers() {
    for cancel in [false, true] {
        let gw = gateway_with("send_timeout = \"60s\"\n[limits]\nmax_in_flight = 4\n");
        let mut ws = initialized_raw_client(&gw);
        let send = send_json;
        // 1 MB answers: the gateway's queue (`OUTBOX_BYTES`, 4 MiB: five of them) and
        // the socket buffers hold about a dozen; 200 would be 200 MB held.
        let refused_at = (0..200).find(|i| {
            send(
                &mut ws,
                json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                    "params":{"name":"one.big","arguments":{"bytes": 1_000_000}}}),
            );
            let line = gw.wait_line(&format!("tools/call {i} "));
            if line.contains("refused") {
                assert!(line.contains("too many requests in flight"), "{line}");
                return true;
            }
            assert!(line.contains("answered"), "{line}");
            if cancel {
                send(
                    &mut ws,
                    json!({"jsonrpc":"2.0","method":"notifications/cancelled",
                        "params":{"requestId":i}}),
                );
            }
            false
        });
        let at = refused_at.unwrap_or_else(|| {
            panic!("200 answers held for a client that reads nothing (cancel: {cancel})")
        });
        // `max_in_flight` answers waiting, after the five the queue takes (and what the
        // sockets hold); not after 32 queued lines, as before the byte bound.
        assert!(at > 4 + 5, "refused too early, at {at}");
        assert!(
            at < 4 + 32,
            "refused only at {at}: the queue held more than its bytes"
        );
    }
}

/// With `max_in_flight` high, a client that reads nothing still holds a bounded part of
/// the gateway's memory: answers wait for room in its queue up to
/// `outbox::WAITING_BYTES` (4 MiB) between them, and an answer beyond that is replaced
/// by a short -32003 under its id. Each request still gets exactly one answer. Before,
/// 64 answers of 4 MB took the gateway to 184 MB.
#[test]
fn answers_waiting_for_a_client_that_does_not_read_are_bounded_in_bytes() {
    let gw = gateway_with("send_timeout = \"60s\"\n");
    let mut ws = initialized_raw_client(&gw);
    let send = send_json;
    let n = 24;
    for i in 0..n {
        send(
            &mut ws,
            json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
                "params":{"name":"one.big","arguments":{"bytes": 2_000_000}}}),
        );
    }
    // 48 MB of answers: past what the queue, the waiting answers and the sockets hold.
    gw.wait_line("not reading its answers fast enough");
    let mut answers = std::collections::HashMap::new();
    while answers.len() < n {
        let m = ws.read().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.into_data()).unwrap();
        let id = v["id"].as_u64().expect("an answer with its id");
        assert!(answers.insert(id, v).is_none(), "answered twice: {id}");
    }
    let dropped = answers
        .values()
        .filter(|v| v["error"]["code"] == -32003)
        .count();
    let whole = answers
        .values()
        .filter(|v| v.get("result").is_some() && text_of(v).len() == 2_000_000)
        .count();
    assert_eq!(dropped + whole, n, "every answer whole or dropped");
    assert!(dropped > 0 && whole > 2, "dropped {dropped}, whole {whole}");
}

/// Connections that all arrive before any handshake completes are held to
/// `max_sessions` too (it was checked when each connection came, and counted only after
/// its handshake).
#[test]
fn max_sessions_holds_for_handshakes_in_progress_together() {
    use tungstenite::client::IntoClientRequest;
    let gw = Gateway::start_raw(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_sessions = 2\n{}",
        fixture_backend("one", "")
    ));
    let streams: Vec<_> = (0..6)
        .map(|_| std::net::TcpStream::connect(gw.addr()).unwrap())
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for stream in streams {
        let mut req = gw.url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
        match tungstenite::client(req, stream) {
            Ok((ws, _)) => open.push(ws),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                assert_eq!(r.status().as_u16(), 503);
                refused += 1;
            }
            Err(e) => panic!("handshake: {e}"),
        }
    }
    assert_eq!((open.len(), refused), (2, 4));
}

#[test]
fn a_binary_frame_that_is_not_utf8_gets_a_parse_error_with_its_id() {
    let gw = gateway();
    let mut ws = raw_client(&gw);
    let mut bytes = br#"{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":"caf"#.to_vec();
    bytes.extend_from_slice(b"\xe9\"}}");
    ws.send(tungstenite::Message::binary(bytes)).unwrap();
    let r: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(error_code(&r), -32700, "{r}");
    assert_eq!(r["id"], 5, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("UTF-8"),
        "{r}"
    );
}

/// A broken request the sniffer cannot be sure about (a stray `]` may hide an id that
/// follows) is answered, with id `null`, rather than taken for a notification; a broken
/// notification that is clearly one is not answered.
#[test]
fn a_broken_request_is_answered_even_when_its_id_cannot_be_read() {
    let gw = gateway();
    let input = concat!(
        r#"{"method":"tools/call","params":{"name":"one.echo","arguments":{"text":]}},"jsonrpc":"2.0","id":7}"#,
        "\n",
        r#"{"jsonrpc":"2.0","method":"notifications/x","params":{"a":}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","method":"notifications/y","params":5}"#,
        "\n",
    );
    let replies = router_script(&gw, input.as_bytes());
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(error_code(&replies[0]), -32700, "{replies:?}");
}

/// An over-long answer whose id cannot be read (an id longer than the sniffer keeps)
/// still answers its request: the link is given up, which answers every pending one.
#[test]
fn an_over_long_answer_without_a_readable_id_ends_the_link() {
    let gw = gateway();
    let mut c = router_with_config(&gw.url, "[limits]\nmax_message_bytes = 65536\n");
    c.initialize();
    // The longest id the gateway takes (`session::MAX_ID_BYTES`), whose text with its
    // quotes (1,026 bytes) is past what the sniffer keeps (1,024).
    let id = json!("i".repeat(1024));
    let r = c.call(id.clone(), "one.big", json!({"bytes": 70_000}));
    assert_eq!(error_code(&r), -32004, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{r}"
    );
}

/// After stdin's end the router flushes its spans (up to the tracing shutdown's 3 s):
/// a SIGTERM then ends that wait at once. (Its own SIGTERM watch had ended with the
/// relay, and a SIGTERM nobody forwarded was ignored.)
#[test]
fn a_sigterm_ends_the_wait_for_spans_at_exit() {
    let gw = gateway();
    // A collector that takes connections and never answers: the flush would take its
    // whole bound.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = router_with_config(
        &gw.url,
        &format!(
            "[tracing]\nenabled = true\notlp_protocol = \"http/protobuf\"\notlp_endpoint = \"http://{}\"\notlp_timeout = \"10s\"\n",
            silent.local_addr().unwrap()
        ),
    );
    c.initialize();
    c.end_stdin();
    c.wait_log("flushing spans");
    let start = std::time::Instant::now();
    signal(c.pid(), "TERM");
    assert!(c.wait_exit().success());
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?} after the SIGTERM",
        start.elapsed()
    );
    c.wait_log("exiting without the spans still queued");
}

/// The "span queue full" warning is about the process, not about the request whose
/// span found the queue full: it carries no trace ids (it carried that request's).
#[test]
fn the_span_queue_full_warning_names_no_request() {
    // A collector that takes connections and never answers: the first batch's export
    // hangs, and the queue of two fills with the calls' next spans. Roots are not
    // sampled, so only the calls, whose sampled parent is in `_meta`, make spans; with
    // `span_detail = "basic"` all of them end while a call's task runs (the steps are
    // events), so every drop, the first included, happens there.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = gateway_with(&format!(
        "[tracing]\nenabled = true\nsampler_type = \"traceidratio\"\nsampler_param = 0.0\n\
         span_detail = \"basic\"\notlp_protocol = \"http/protobuf\"\n\
         otlp_endpoint = \"http://{}\"\notlp_timeout = \"10s\"\nmax_queue_size = 2\n\
         max_export_batch_size = 1\n",
        silent.local_addr().unwrap()
    ));
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for id in 1..=2 {
        let r = c.request(
            json!(id),
            "tools/call",
            json!({"name":"one.echo","arguments":{"text":"hi"},"_meta":{"traceparent":parent}}),
        );
        assert_eq!(text_of(&r), "hi", "{r}");
    }
    let line = gw.wait_line("span queue full");
    assert!(!line.contains("trace_id"), "{line}");
    // The request's own lines carry them: the line above lost them on purpose.
    let needle = "tools/call 1 answered";
    let answered = match gw.log.text().lines().find(|l| l.contains(needle)) {
        Some(l) => l.to_string(), // written before the warning
        None => gw.wait_line(needle),
    };
    assert!(
        answered.contains("trace_id=0af7651916cd43dd8448eb211c80319c"),
        "{answered}"
    );
}

/// Drop warnings come at most one per 10 s, each with the count so far: the router
/// (which has no metrics endpoint) says the whole count at exit, so a burst that
/// overflowed the span queue shows for what it was (it showed "dropped so far: 1").
#[test]
fn the_router_tallies_the_spans_it_dropped_at_exit() {
    let gw = gateway();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = router_with_config(
        &gw.url,
        &format!(
            "[tracing]\nenabled = true\nsampler_type = \"always_on\"\n\
             otlp_protocol = \"http/protobuf\"\notlp_endpoint = \"http://127.0.0.1:{port}\"\n\
             otlp_timeout = \"1s\"\nmax_queue_size = 2\nmax_export_batch_size = 1\n"
        ),
    );
    c.initialize();
    for i in 0..10 {
        c.send(json!({"jsonrpc":"2.0","id":i,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":"x"}}}));
    }
    for i in 0..10 {
        assert_eq!(text_of(&c.response(&json!(i))), "x");
    }
    c.end_stdin();
    assert!(c.wait_exit().success());
    let line = c.wait_log("span(s) dropped in all");
    // Two spans a call at the least (stdio.read, gateway.request), and nobody took any.
    let n: u64 = line
        .split("tracing: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(n >= 20, "{line}");
    assert!(line.ends_with(", 0 exported"), "{line}");
}

/// MCP forbids cancelling `initialize`; a client that does anyway (while a slow backend
/// starts) still gets it answered, and the requests it pipelined behind it too.
#[test]
fn a_cancelled_initialize_is_answered_and_so_is_what_waited_for_it() {
    let gw = Gateway::start(&sh_backend(
        "one",
        "sleep 0.3; exec \"$0\" --name one",
        &[],
        "",
    ));
    let mut c = WsClient::mcp(&gw);
    c.send(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"e2e","version":"1"}}}),
    );
    c.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
    c.send(json!({"jsonrpc":"2.0","method":"notifications/cancelled",
        "params":{"requestId":0,"reason":"changed my mind"}}));
    let init = c.response(&json!(0));
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    let list = c.response(&json!(1));
    assert!(list["result"]["tools"].is_array(), "{list}");
}

/// A backend's `initialize` answer that cannot be taken (neither result nor error, or a
/// result that is not an object) fails its start: the client's request gets -32000
/// `backend_initialize`, as for a refused `initialize`. (The first was a -32603 "invalid
/// response" as if the client's own request had been answered badly; the second was
/// taken as a backend with no capabilities, silently.)
#[test]
fn an_initialize_answer_that_cannot_be_taken_fails_the_start() {
    let script = "read -r l; id=$(printf '%s' \"$l\" | sed 's/.*\"id\":\\([0-9]*\\).*/\\1/'); \
                  printf '{\"jsonrpc\":\"2.0\",\"id\":%s%s}\\n' \"$id\" \"$1\"; sleep 60";
    for (tail, says) in [
        ("", r#"neither "result" nor "error""#),
        (
            r#","result":"hello""#,
            r#"its initialize result is not an object: "hello""#,
        ),
    ] {
        let gw = Gateway::start(&sh_backend("one", script, &[tail], ""));
        let mut c = WsClient::mcp(&gw);
        c.initialize();
        let r = c.call(json!(1), "one.x", json!({}));
        assert_eq!(error_code(&r), -32000, "{r}");
        assert_eq!(r["error"]["data"]["kind"], "backend_initialize", "{r}");
        let m = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains("failed to initialize") && m.contains(says),
            "{r}"
        );
    }
}

/// Warnings about one backend process are logged one per 10 s; those held back are
/// counted once the interval is over even when no later warning comes to carry the
/// count (a burst of invalid lines that ended within it was never counted).
#[test]
fn held_back_backend_warnings_are_counted_when_the_interval_ends() {
    let script = "printf 'junk one\\njunk two\\njunk three\\n'; exec \"$0\" --name one";
    let gw = Gateway::start(&sh_backend("one", script, &[], ""));
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let first = gw.wait_line("backend \"one\" sent an invalid message");
    assert!(!first.contains("held back"), "{first}");
    let tally = gw.wait_line("2 warning(s) about a backend process held back");
    assert!(
        tally.contains("the first of them: backend \"one\" sent an invalid message"),
        "{tally}"
    );
    assert_eq!(
        text_of(&c.call(json!(1), "one.echo", json!({"text":"fine"}))),
        "fine"
    );
}

/// A backend that answers `initialize` with another protocol version than the client's
/// is used as it is (nothing is translated), and the gateway says so.
#[test]
fn a_backend_on_another_protocol_version_is_named_in_the_log() {
    let script = "\"$0\" --name one | sed -u 's/\"protocolVersion\":\"2025-06-18\"/\"protocolVersion\":\"2024-11-05\"/'";
    let gw = Gateway::start(&sh_backend("one", script, &[], ""));
    let mut c = WsClient::mcp(&gw);
    let r = c.initialize();
    assert_eq!(r["protocolVersion"], "2025-06-18");
    let l = gw.wait_line("answered initialize with protocol version");
    assert!(
        l.contains("\"2024-11-05\"") && l.contains("\"2025-06-18\""),
        "{l}"
    );
    assert_eq!(
        text_of(&c.call(json!(1), "one.echo", json!({"text":"still works"}))),
        "still works"
    );
}
