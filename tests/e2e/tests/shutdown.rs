//! End to end: the gateway's shutdown stops every backend process, within about one
//! `shutdown_grace` whatever their number, including those of a session that does not
//! close in time and those that closed stdout without exiting.

use std::time::{Duration, Instant};

use mcp_e2e::*;
use serde_json::json;

/// A backend `name` run as `sh -c SCRIPT FIXTURE` (`$0` is the fixture's path).
fn sh_backend(name: &str, script: &str, extra: &str) -> String {
    let fixture = bin("mcp-fixture").display().to_string();
    format!(
        "[[backends]]\nname = \"{name}\"\ntransport = \"stdio\"\ncommand = \"sh\"\n\
         args = [\"-c\", {script:?}, {fixture:?}]\n{extra}\n"
    )
}

/// A backend that does not exit when its stdin closes: the fixture ends, and the
/// shell becomes `sleep 30` with stdout still open.
fn stubborn(name: &str, extra: &str) -> String {
    sh_backend(name, &format!("\"$0\" --name {name}; exec sleep 30"), extra)
}

/// The pid in the gateway's `started sh (pid N)` line.
fn started_pid(gw: &Gateway) -> u32 {
    let line = gw.wait_line("started sh (pid ");
    line.split("(pid ")
        .nth(1)
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .expect(&line)
}

/// Kills `pid` if it is still there; true if it was.
fn outlived(pid: u32) -> bool {
    let alive = process_alive(pid);
    if alive {
        signal(pid, "KILL");
    }
    alive
}

/// Stubborn shared backends are stopped together: each is killed at the grace, and
/// the shutdown takes about one grace, not one per backend (it took four here).
#[test]
fn stubborn_backends_are_stopped_together() {
    let mut cfg = String::from("shutdown_grace = \"1s\"\n");
    cfg += &stubborn("p1", "");
    for n in ["s1", "s2", "s3"] {
        cfg += &stubborn(n, "session = \"shared\"");
    }
    let mut gw = Gateway::start(&cfg);
    let mut c = Client::router(&gw.url);
    c.initialize();
    for n in ["p1", "s1", "s2", "s3"] {
        let r = c.call(json!(n), &format!("{n}.echo"), json!({"text": "x"}));
        assert_eq!(text_of(&r), "x");
    }
    let start = Instant::now();
    gw.terminate();
    let took = start.elapsed();
    let log = gw.log.text();
    assert_eq!(
        log.matches("did not exit within 1000 ms").count(),
        4,
        "{log}"
    );
    // The session's own backend (one grace), then the shared ones together (one
    // more): not five.
    assert!(
        took < Duration::from_millis(3500),
        "shutdown took {took:?}\n{log}"
    );
}

/// A backend that closes stdout while it is being started and lingers: its reader
/// holds it (and kills it a second later); a shutdown in between waits for that.
#[test]
fn a_backend_lingering_during_its_start_does_not_outlive_the_gateway() {
    for shared in [true, false] {
        let extra = if shared { "session = \"shared\"" } else { "" };
        let script = "exec >&-; echo lingering >&2; exec sleep 30";
        let mut gw = Gateway::start(&sh_backend("one", script, extra));
        let mut c = Client::router(&gw.url);
        c.send(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"t","version":"0"}}}),
        );
        let pid = started_pid(&gw);
        gw.wait_line("[one] lingering");
        gw.terminate();
        assert!(
            !outlived(pid),
            "shared {shared}: backend {pid} outlived the gateway"
        );
    }
}

/// A client that stops reading while its messages draw error replies keeps its
/// session from closing (the replies wait for room); the shutdown gives up on the
/// session at its deadline but still stops the session's own backend.
#[test]
fn a_session_that_does_not_close_still_has_its_backend_stopped() {
    let gw_cfg = format!("shutdown_grace = \"1s\"\n{}", stubborn("p1", ""));
    let mut gw = Gateway::start(&gw_cfg);
    let url = format!("ws://{}/mcp", gw.addr());
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = gw.addr().parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let (mut ws, _) = tungstenite::client(url.as_str(), std::net::TcpStream::from(sock)).unwrap();
    let send = |ws: &mut tungstenite::WebSocket<std::net::TcpStream>, v: String| {
        ws.send(tungstenite::Message::text(v))
    };
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    send(&mut ws, init.to_string()).unwrap();
    ws.read().unwrap();
    let pid = started_pid(&gw);
    // From here on nothing is read: each bad message's error reply waits, until the
    // buffers both ways are full and our send times out.
    ws.get_mut()
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let pad = "y".repeat(2000);
    let mut sent = 0;
    while sent < 200_000 && send(&mut ws, format!("not json {pad}")).is_ok() {
        sent += 1;
    }
    assert!(sent < 200_000, "the gateway kept reading");
    gw.terminate();
    let log = gw.log.text();
    assert!(log.contains("some sessions did not close"), "{log}");
    assert!(
        !outlived(pid),
        "per-client backend {pid} outlived the gateway"
    );
    drop(ws);
}

/// A backend that ended on its own just before a shutdown, its stdout closed and the
/// process not yet gone, is waited for but not reported as one that ignored being
/// stopped (even with a grace shorter than the second its reader gives it).
#[test]
fn a_backend_that_ended_on_its_own_is_not_reported_as_stubborn() {
    let cfg = format!(
        "shutdown_grace = \"200ms\"\n{}",
        sh_backend(
            "one",
            "\"$0\" --name one; exec >&-; echo lingering >&2; exec sleep 30",
            ""
        )
    );
    let mut gw = Gateway::start(&cfg);
    let mut c = Client::router(&gw.url);
    c.initialize();
    let pid = started_pid(&gw);
    c.send(json!({"jsonrpc":"2.0","id":"crash","method":"tools/call",
        "params":{"name":"one.crash","arguments":{}}}));
    gw.wait_line("[one] lingering");
    gw.terminate();
    assert!(!outlived(pid), "backend {pid} outlived the gateway");
    let log = gw.log.text();
    assert!(!log.contains("did not exit within"), "{log}");
    assert!(log.contains("backend \"one\" exited ("), "{log}");
}

/// The pid a backend's helper wrote to `file` (waited for: the helper writes it as the
/// backend starts).
fn helper_pid(file: &std::path::Path) -> u32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no helper pid");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A backend that starts a helper (a browser, a language server, `npx`'s child) which
/// holds its stdout and stderr: the helper goes with the backend, whether the backend is
/// stopped at its session's end or exits on its own, and the backend's end is seen at
/// once (it used to be seen never: a zombie, its pipes held, `stop` waiting out its
/// grace and warning of a backend that had exited).
#[test]
fn a_backends_helper_goes_with_it() {
    for crash in [false, true] {
        let pidfile = temp_path("helper.pid");
        let script = format!(
            "sleep 317 & echo $! > {}; exec \"$0\" --name h",
            pidfile.display()
        );
        let mut gw = Gateway::start(&format!(
            "shutdown_grace = \"5s\"\n{}",
            sh_backend("h", &script, "session = \"per_client\"")
        ));
        let mut c = Client::router(&gw.url);
        c.initialize();
        let helper = helper_pid(&pidfile);
        assert!(process_alive(helper));
        let start = Instant::now();
        if crash {
            c.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                "params":{"name":"h.crash","arguments":{}}}));
            gw.wait_line("backend \"h\" exited (exit status: 3)");
        } else {
            // The router's end closes the session, which stops its backend.
            drop(c);
            gw.wait_line("backend \"h\" stopped (");
        }
        // Its end seen at once, not after the 5 s grace.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(
            !outlived(helper),
            "the helper {helper} outlived its backend"
        );
        assert!(gw.terminate().success());
        let log = gw.log.text();
        assert!(!log.contains("did not exit within"), "{log}");
        let _ = std::fs::remove_file(&pidfile);
    }
}

/// A client's requests in flight when the gateway shuts down are answered (-32004, "the
/// gateway is shutting down"), then the connection closes with 1001 ("going away"):
/// a direct client gets what the router gives its host.
#[test]
fn a_shutdown_answers_what_is_in_flight_and_closes_with_going_away() {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::Message;
    let mut gw = Gateway::start(&fixture_backend("one", ""));
    let mut req = format!("ws://{}/mcp", gw.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    let stream = std::net::TcpStream::connect(gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).unwrap();
    let mut send = |v: serde_json::Value| ws.send(Message::text(v.to_string())).unwrap();
    send(
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}),
    );
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"one.sleep","arguments":{"ms":60000}}}));
    // Answered after the call was handed to the session (messages are taken in order).
    send(json!({"jsonrpc":"2.0","id":2,"method":"ping"}));
    let mut answers = std::collections::HashMap::new();
    while !answers.contains_key(&json!(2)) {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            answers.insert(v["id"].clone(), v);
        }
    }
    signal(gw.pid(), "TERM");
    let mut close = None;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                answers.insert(v["id"].clone(), v);
            }
            Ok(Message::Close(frame)) => close = frame,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let sleep = &answers[&json!(1)];
    assert_eq!(error_code(sleep), -32004, "{sleep}");
    assert!(sleep["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    let close = close.expect("a close frame with a status");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    assert!(gw.terminate().success());
}

/// A gateway with backend `h` (the fixture) run by a shell that first starts `launch`
/// in the background, a router initialized on it, the helper's pid, and the file that
/// pid was written to.
fn with_helper(launch: &str, extra: &str) -> (Gateway, Client, u32, std::path::PathBuf) {
    let pidfile = temp_path("helper.pid");
    let script = format!(
        "{launch} & echo $! > {}; exec 3<&-; exec \"$0\" --name h",
        pidfile.display()
    );
    let gw = Gateway::start(&sh_backend("h", &script, extra));
    let mut c = Client::router(&gw.url);
    c.initialize();
    let helper = helper_pid(&pidfile);
    (gw, c, helper, pidfile)
}

/// Stops the gateway of [`with_helper`] and the helpers left: the first one, and the
/// one the backend started anew started (out of its group too).
fn stop_with_helpers(mut gw: Gateway, helper: u32, pidfile: &std::path::Path) {
    outlived(helper);
    assert!(gw.terminate().success());
    outlived(helper_pid(pidfile));
    let _ = std::fs::remove_file(pidfile);
}

/// A helper that left the backend's process group (`setsid`) and holds its stdout:
/// once the backend has exited and nothing reads its stdin, its end is seen within
/// about a second (what is left in stdout is read meanwhile), and it is started anew
/// at the next call. (It stayed "alive" for as long as the helper lived: every call
/// failed with "stdin closed", and it was never restarted.)
#[test]
fn a_backend_whose_helper_left_its_group_is_still_seen_to_exit() {
    let (gw, mut c, helper, pidfile) = with_helper("setsid sleep 287", "");
    let start = Instant::now();
    let r = c.call(json!(1), "h.crash", json!({}));
    assert_eq!(error_code(&r), -32000, "{r}");
    gw.wait_line("backend \"h\" exited (exit status: 3)");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Started anew (after the restart delay) and answering.
    let r = c.call(json!(2), "h.echo", json!({"text": "back"}));
    assert_eq!(text_of(&r), "back", "{r}");
    stop_with_helpers(gw, helper, &pidfile);
}

/// A helper in a session of its own that holds the backend's stdin and stdout: once the
/// backend has exited, a request that gets no byte for its `request_timeout` ends the
/// wait, the backend counts as gone, and it is started anew. (It was never seen to
/// end: every call timed out, and it was never restarted.)
#[test]
fn a_backend_whose_helper_holds_its_stdin_is_still_seen_to_exit() {
    // (The shell gives a background job /dev/null for stdin: its own stdin as fd 3.)
    let (gw, mut c, helper, pidfile) = with_helper(
        "exec 3<&0; setsid sleep 289 <&3",
        "request_timeout = \"500ms\"",
    );
    let r = c.call(json!(1), "h.crash", json!({}));
    assert!(r.get("error").is_some(), "{r}");
    gw.wait_line("backend \"h\" exited (exit status: 3)");
    let r = c.call(json!(2), "h.echo", json!({"text": "back"}));
    assert_eq!(text_of(&r), "back", "{r}");
    stop_with_helpers(gw, helper, &pidfile);
}
