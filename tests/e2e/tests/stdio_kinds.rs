//! The router on every kind of stdin and stdout a host or a shell can give it: pipes and
//! a socket (polled by its reactor, switched to non-blocking mode and switched back at
//! exit), a regular file, and a stdout shared with stderr (`2>&1`, kept blocking so that
//! log lines are never refused). Each run answers every request, in full.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Instant;

use mcp_e2e::*;
use rustix::fs::OFlags;
use rustix::pipe::PipeFlags;
use serde_json::{json, Value};

/// The router, killed if a test fails before it exits.
struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn router(gw: &Gateway, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Router {
    Router(
        Command::new(bin("mcp-router"))
            .args(["--gateway", &gw.url])
            .env("MCP_LOG", "debug")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start mcp-router"),
    )
}

/// Lines of a session: the handshake, a ping, a tool call with a 100 kB argument (more
/// than one pipe read and one stdout batch) and a tool call that fails.
fn script() -> String {
    let big = "x".repeat(100_000);
    [
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"stdio-kinds","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":big}}}),
        json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
            "params":{"name":"one.no_such_tool","arguments":{}}}),
    ]
    .iter()
    .map(|m| format!("{m}\n"))
    .collect()
}

/// The session's opening: `initialize` (id 0) and `notifications/initialized`.
fn handshake() -> String {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"stdio-kinds","version":"1"}}});
    format!(
        "{init}\n{}\n",
        json!({"jsonrpc":"2.0","method":"notifications/initialized"})
    )
}

/// Checks that `out` (stdout, maybe with log lines between) answers the script in full.
fn check_answers(out: &str) {
    let answers: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}")))
        .collect();
    let by_id = |id: i64| {
        answers
            .iter()
            .find(|a| a["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer to {id} in {out:.2000}"))
    };
    assert!(by_id(1)["result"]["serverInfo"].is_object(), "{}", by_id(1));
    assert_eq!(by_id(2)["result"], json!({}));
    assert_eq!(text_of(by_id(3)), "x".repeat(100_000));
    assert!(by_id(4).get("error").is_some() || by_id(4)["result"]["isError"] == json!(true));
    assert_eq!(answers.len(), 4, "{out:.2000}");
}

/// Stderr lines as they come, from a thread.
fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`.
fn wait_for(lines: &Receiver<String>, needle: &str) -> String {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {needle:?} in:\n{}", seen.join("\n")),
        }
    }
}

/// Reads lines from `r` (on a thread) until `n` of them are messages, or until the end
/// when `n` is `None`; returns them as text. Fails after [`DEADLINE`] instead of waiting
/// for ever on a router that neither answers nor exits.
fn read_answers(r: impl Read + Send + 'static, n: Option<usize>) -> String {
    let lines = lines_of(r);
    let (mut out, mut got, start) = (String::new(), 0, Instant::now());
    while n.is_none_or(|n| got < n) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) => {
                got += usize::from(line.starts_with('{'));
                out.push_str(&line);
                out.push('\n');
            }
            Err(RecvTimeoutError::Disconnected) if n.is_none() => break,
            Err(e) => panic!("{e:?} after {got} answers:\n{out:.2000}"),
        }
    }
    out
}

fn nonblocking(fd: impl AsFd) -> bool {
    rustix::fs::fcntl_getfl(fd)
        .unwrap()
        .contains(OFlags::NONBLOCK)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap()
}

/// A router on two pipes: its stderr lines, the test's ends of the pipes (`stdin` to
/// write, `out` to read) and copies of the router's own ends (stdin's read end,
/// stdout's write end), which share their flags. Reading `out` to its end needs the
/// copies dropped first.
struct Piped {
    r: Router,
    log: Receiver<String>,
    stdin: File,
    out: OwnedFd,
    ends: (OwnedFd, OwnedFd),
}

fn piped(gw: &Gateway) -> Piped {
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let mut r = router(
        gw,
        Stdio::from(in_r.try_clone().unwrap()),
        Stdio::from(out_w.try_clone().unwrap()),
        Stdio::piped(),
    );
    let log = lines_of(r.0.stderr.take().unwrap());
    Piped {
        r,
        log,
        stdin: File::from(in_w),
        out: out_r,
        ends: (in_r, out_w),
    }
}

/// Waits for the answer to [`start_slow_request`]'s request: -32004, telling SIGTERM.
fn slow_request_stopped_by_sigterm(answers: &Receiver<String>) {
    let answer: Value = serde_json::from_str(&wait_for(answers, "slow")).unwrap();
    assert_eq!(error_code(&answer), -32004, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("stopped (SIGTERM)"), "{answer}");
}

/// Starts the session and a request that takes a minute (id `"slow"`), and returns
/// once it has been forwarded: stdin is handled in order, so when the ping written
/// after it is answered.
fn start_slow_request(stdin: &mut File, answers: &Receiver<String>) {
    stdin.write_all(handshake().as_bytes()).unwrap();
    let slow = json!({"jsonrpc":"2.0","id":"slow","method":"tools/call",
        "params":{"name":"one.sleep","arguments":{"ms":60000}}});
    writeln!(stdin, "{slow}").unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":"p","method":"ping"}}"#).unwrap();
    wait_for(answers, r#""id":"p""#);
}

#[test]
fn pipes_are_polled_and_get_their_flags_back() {
    let gw = gateway_with("");
    let mut p = piped(&gw);
    wait_for(&p.log, "stdin polled, stdout polled");
    // The test keeps its own descriptors of the router's ends: they share the flags.
    assert!(nonblocking(&p.ends.0) && nonblocking(&p.ends.1));
    p.stdin.write_all(script().as_bytes()).unwrap();
    check_answers(&read_answers(File::from(p.out), Some(4)));
    drop(p.stdin);
    assert!(wait_deadline(&mut p.r.0).success());
    assert!(!nonblocking(&p.ends.0), "stdin left non-blocking");
    assert!(!nonblocking(&p.ends.1), "stdout left non-blocking");
}

/// inetd style: stdin and stdout are one socket, so one description and one set of
/// flags, switched back only once both are done with.
#[test]
fn one_socket_for_stdin_and_stdout() {
    let gw = gateway_with("");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let kept = theirs.try_clone().unwrap();
    let mut r = router(
        &gw,
        Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())),
        Stdio::from(OwnedFd::from(theirs)),
        Stdio::piped(),
    );
    let log = lines_of(r.0.stderr.take().unwrap());
    wait_for(&log, "stdin polled, stdout polled");
    assert!(nonblocking(&kept));
    (&ours).write_all(script().as_bytes()).unwrap();
    // EOF on the router's stdin only: its answers still come back on the other half.
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    check_answers(&read_answers(ours, Some(4)));
    assert!(wait_deadline(&mut r.0).success());
    assert!(!nonblocking(&kept), "the socket left non-blocking");
}

/// One socket for stdin, stdout and stderr: nothing is switched, since stderr (log
/// lines) must stay blocking.
#[test]
fn one_socket_for_all_three() {
    let gw = gateway_with("");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut r = router(
        &gw,
        Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())),
        Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())),
        Stdio::from(OwnedFd::from(theirs)),
    );
    (&ours).write_all(script().as_bytes()).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let out = read_answers(ours, Some(4));
    assert!(
        out.contains("stdin via the blocking pool, stdout via the blocking pool"),
        "{out:.3000}"
    );
    check_answers(&out);
    assert!(wait_deadline(&mut r.0).success());
}

/// The same, on a socket the host made non-blocking: the blocking path makes it
/// blocking for the session (a read or write that must wait would fail with EAGAIN,
/// taken for stdin's end) and gives the flag back at the end.
#[test]
fn one_non_blocking_socket_for_all_three() {
    let gw = gateway_with("");
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let keep = theirs.try_clone().unwrap();
    let mut r = router(
        &gw,
        Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())),
        Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())),
        Stdio::from(OwnedFd::from(theirs)),
    );
    // The requests come after the router has started reading (it waits for them).
    let lines = lines_of(ours.try_clone().unwrap());
    wait_for(&lines, "stdin via the blocking pool");
    (&ours).write_all(script().as_bytes()).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut out, mut answers) = (String::new(), 0);
    while answers < 4 {
        let l = lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("{e:?} after {answers} answers:\n{out:.3000}"));
        answers += usize::from(l.starts_with('{'));
        out.push_str(&l);
        out.push('\n');
    }
    check_answers(&out);
    assert!(wait_deadline(&mut r.0).success());
    assert!(nonblocking(&keep), "the host's flag is back");
}

/// `mcp-router < requests 2>&1 | reader`: stdin a regular file (blocking pool), stdout
/// and stderr one pipe (blocking, so that log lines are never refused).
#[test]
fn a_file_for_stdin_and_stdout_shared_with_stderr() {
    let gw = gateway_with("");
    let path = temp_path("stdin");
    std::fs::write(&path, script()).unwrap();
    let (out_r, out_w) = pipe();
    let mut r = router(
        &gw,
        Stdio::from(File::open(&path).unwrap()),
        Stdio::from(out_w.try_clone().unwrap()),
        Stdio::from(out_w.try_clone().unwrap()),
    );
    drop(out_w);
    let out = read_answers(File::from(out_r), None);
    assert!(wait_deadline(&mut r.0).success(), "{out:.3000}");
    assert!(
        out.contains("stdin via the blocking pool, stdout via the blocking pool"),
        "{out:.3000}"
    );
    check_answers(&out);
}

/// `2>&1` into one pipe with a host that reads late: a log line (the warning about a
/// stdin line that is not JSON) logged while a long answer is half written goes after
/// that answer, never into it.
#[test]
fn a_log_line_never_lands_inside_a_message_on_a_shared_stdout() {
    let gw = gateway_with("");
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let mut r = router(
        &gw,
        Stdio::from(in_r),
        Stdio::from(out_w.try_clone().unwrap()),
        Stdio::from(out_w),
    );
    let mut stdin = File::from(in_w);
    let big = "x".repeat(1_000_000);
    stdin.write_all(handshake().as_bytes()).unwrap();
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"one.echo","arguments":{"text":big}}});
    writeln!(stdin, "{call}").unwrap();
    // Nothing is read until the pipe holds half its size (it is full with less than its
    // size when its first page holds only the short lines before): only the answer is
    // that long, and it is longer than the pipe, so the router is inside it.
    let half = rustix::pipe::fcntl_getpipe_size(&out_r).unwrap() as u64 / 2;
    let start = Instant::now();
    while rustix::io::ioctl_fionread(&out_r).unwrap() < half {
        assert!(
            start.elapsed() < DEADLINE,
            "the answer never filled the pipe"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    writeln!(stdin, "not json").unwrap();
    // Read to the end (the router's exit): the warning is written by the logger's
    // thread, maybe after the last answer.
    drop(stdin);
    let out = read_answers(File::from(out_r), None);
    assert!(wait_deadline(&mut r.0).success());
    let mut answers = Vec::new();
    for line in out.lines() {
        if line.starts_with('{') {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a message line broken by another writer: {e}"));
            answers.push(v);
        } else {
            assert!(
                !line.contains("xxxxxxxxxx"),
                "a piece of the answer in {line:.200}"
            );
        }
    }
    assert_eq!(answers.len(), 3, "{out:.2000}");
    assert!(answers[0]["result"]["serverInfo"].is_object());
    assert_eq!(text_of(&answers[1]), big);
    assert_eq!(answers[2]["error"]["code"], json!(-32700), "{}", answers[2]);
    assert!(
        out.lines().any(|l| l.contains("bad message on stdin")),
        "the warning is its own line: {out:.3000}"
    );
}

/// A pipe for stdin, a regular file for stdout (`mcp-router > answers`).
#[test]
fn a_pipe_for_stdin_and_a_file_for_stdout() {
    let gw = gateway_with("");
    let path = temp_path("stdout");
    let (in_r, in_w) = pipe();
    let mut r = router(
        &gw,
        Stdio::from(in_r),
        Stdio::from(File::create(&path).unwrap()),
        Stdio::piped(),
    );
    let log = lines_of(r.0.stderr.take().unwrap());
    wait_for(&log, "stdin polled, stdout via the blocking pool");
    let mut stdin = File::from(in_w);
    stdin.write_all(script().as_bytes()).unwrap();
    drop(stdin);
    assert!(wait_deadline(&mut r.0).success());
    check_answers(&std::fs::read_to_string(&path).unwrap());
}

/// A host that closes stdin and never reads stdout cannot keep the router alive: with
/// the pipe full, the stdout queue full and a reader waiting for room, the router still
/// exits after its shutdown bounds (5 s for answers, 2 s for the close, 5 s for stdout).
#[test]
fn a_host_that_stops_reading_stdout_does_not_keep_the_router() {
    let gw = gateway_with("");
    // `p.out` is never read.
    let mut p = piped(&gw);
    p.stdin.write_all(script().as_bytes()).unwrap();
    // Three more 100 kB answers than a pipe holds, then more small ones than the stdout
    // queue (`STDOUT_QUEUE`, 256) holds.
    let big = "y".repeat(100_000);
    for id in 10..13 {
        let m = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":big}}});
        writeln!(p.stdin, "{m}").unwrap();
    }
    for id in 100..500 {
        writeln!(p.stdin, r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#).unwrap();
    }
    drop(p.stdin);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.r.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(40),
            "the router did not exit"
        );
        // No readiness event for a child's exit in std: a bounded poll of its state.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success());
    wait_for(&p.log, "stdout took nothing for 5000 ms");
}

/// A host that reads slowly gets every answer, however long the reading takes after
/// stdin's EOF, even one answer that takes longer than 5 s to read: the shutdown gives
/// up only when stdout takes no byte for 5 s. A SIGTERM meanwhile (hosts close stdin,
/// wait, then signal) does not cut what is being written: only a second one would.
#[test]
fn a_host_that_reads_slowly_gets_every_answer() {
    let gw = gateway_with("");
    let mut p = piped(&gw);
    // Read to its end below.
    drop(p.ends);
    p.stdin.write_all(handshake().as_bytes()).unwrap();
    // A 3.8 MB answer (under the 4 MiB message limit), read below at ~0.55 MB/s: ~7 s
    // for that one line; then a small one.
    let big = "z".repeat(3_800_000);
    for (id, text) in [(1, big.as_str()), (2, "small")] {
        let m = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":text}}});
        writeln!(p.stdin, "{m}").unwrap();
    }
    drop(p.stdin);
    wait_for(&p.log, "stdin closed; shutting down");
    let (tx, rx) = channel();
    let (first_tx, first) = channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let mut out = File::from(p.out);
        let (mut buf, mut text) = (vec![0u8; 32 * 1024], Vec::new());
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
            // Well into the big answer: it came back, and only its writing is left.
            if text.len() > 1_000_000 {
                let _ = first_tx.send(());
            }
            // The slow reader this test is about (pacing, not synchronisation).
            std::thread::sleep(std::time::Duration::from_millis(60));
        }
        let _ = tx.send(text);
    });
    first
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the big answer not begun");
    signal(p.r.0.id(), "TERM");
    let text = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("stdout not at its end within 60 s");
    assert!(
        start.elapsed() > std::time::Duration::from_secs(6),
        "not slow enough"
    );
    let text = String::from_utf8(text).unwrap();
    let answers: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}")))
        .filter(|a: &Value| a["id"] != json!(0))
        .collect();
    assert_eq!(text_of(&answers[0]).len(), 3_800_000);
    // The small one may not have come back from the gateway when the signal came: it
    // is then left unanswered (SIGTERM after EOF: the host has ended the session).
    assert!(answers.len() <= 2, "{answers:?}");
    if let Some(small) = answers.get(1) {
        assert_eq!(text_of(small), "small");
    }
    assert!(wait_deadline(&mut p.r.0).success());
    wait_for(&p.log, "SIGTERM;");
}

/// A second SIGTERM exits at once, even while the host is not reading stdout (the
/// drain would otherwise take 5 s without a byte taken), and the flags are put back.
#[test]
fn a_second_sigterm_exits_at_once() {
    let gw = gateway_with("");
    let mut p = piped(&gw);
    p.stdin.write_all(script().as_bytes()).unwrap();
    // Until the pipe is full: the 100 kB answer came back and is being written, and
    // cannot be finished while nobody reads (a bounded poll of the pipe's state).
    let start = Instant::now();
    while rustix::io::ioctl_fionread(&p.out).unwrap() < 60_000 {
        assert!(start.elapsed() < DEADLINE, "stdout never filled");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(p.stdin);
    wait_for(&p.log, "stdin closed; shutting down");
    let start = Instant::now();
    signal(p.r.0.id(), "TERM");
    wait_for(&p.log, "SIGTERM;");
    signal(p.r.0.id(), "TERM");
    wait_for(&p.log, "second SIGTERM; exiting now");
    assert!(wait_deadline(&mut p.r.0).success());
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
    assert!(!nonblocking(&p.ends.0) && !nonblocking(&p.ends.1));
}

/// SIGTERM after stdin's EOF (hosts close stdin, wait, then signal): the 5 s wait for
/// answers on their way ends at once, and the request in flight is left unanswered:
/// the host has ended the session and may have stopped reading (the Python SDK fails
/// on a message that comes after its close).
#[test]
fn sigterm_after_eof_ends_the_wait_for_answers() {
    let gw = gateway_with("");
    let mut p = piped(&gw);
    let answers = lines_of(File::from(p.out));
    start_slow_request(&mut p.stdin, &answers);
    drop(p.stdin);
    wait_for(&p.log, "stdin closed; shutting down");
    let start = Instant::now();
    signal(p.r.0.id(), "TERM");
    assert!(wait_deadline(&mut p.r.0).success());
    // The wait it ended is 5 s (`EOF_DRAIN_TIMEOUT`); the close takes at most 2 s.
    assert!(start.elapsed() < std::time::Duration::from_millis(4500));
    wait_for(&p.log, "SIGTERM; not waiting for the answers on their way");
    wait_for(
        &p.log,
        "request(s) left unanswered: the host closed stdin, then sent SIGTERM",
    );
    // Nothing after the pong, to stdout's end (the router has exited; the test's own
    // copy of the pipe's write end goes now).
    drop(p.ends);
    let rest: Vec<String> = answers.iter().collect();
    assert!(rest.iter().all(|l| !l.contains("slow")), "{rest:?}");
}

/// SIGTERM (as hosts stop a stdio server) ends the relay at once: a request in flight
/// is answered with an error, the descriptors get their flags back, the exit is 0.
#[test]
fn sigterm_answers_what_is_in_flight_and_gives_the_flags_back() {
    let gw = gateway_with("");
    let mut p = piped(&gw);
    wait_for(&p.log, "stdin polled, stdout polled");
    let answers = lines_of(File::from(p.out));
    start_slow_request(&mut p.stdin, &answers);
    let start = Instant::now();
    signal(p.r.0.id(), "TERM");
    slow_request_stopped_by_sigterm(&answers);
    assert!(wait_deadline(&mut p.r.0).success());
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
    wait_for(&p.log, "SIGTERM; shutting down");
    assert!(!nonblocking(&p.ends.0) && !nonblocking(&p.ends.1));
    drop(p.stdin);
}
