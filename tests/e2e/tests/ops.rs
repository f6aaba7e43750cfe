//! Operations endpoints of the real gateway: /healthz, /readyz, /metrics (Prometheus
//! text), counting real traffic, and `--version`.

use std::process::Command;

use mcp_e2e::*;
use serde_json::json;

#[test]
fn health_readiness_and_metrics_reflect_real_traffic() {
    let (gw, addr) = with_admin("");
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    assert_eq!(get(&addr, "/nope").0, 404);

    let mut c = Client::router(&gw.url);
    c.initialize();
    c.call(json!(1), "one.echo", json!({"text":"a"}));
    c.call(json!(2), "one.fail", json!({}));
    c.call(json!(3), "nope.x", json!({}));
    c.call(json!(4), "one.crash", json!({}));

    let (status, m) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    let calls = "mcp_gateway_requests_total{mcp_method_name=\"tools/call\",outcome=";
    assert_eq!(sample(&m, &format!("{calls}\"ok\"}}")), 1.0, "{m}");
    assert_eq!(sample(&m, &format!("{calls}\"tool_error\"}}")), 1.0);
    assert_eq!(sample(&m, &format!("{calls}\"error\"}}")), 2.0);
    assert_eq!(sample(&m, "mcp_gateway_sessions_active"), 1.0);
    assert_eq!(sample(&m, "mcp_gateway_requests_in_flight"), 0.0);
    assert_eq!(
        sample(
            &m,
            "mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/call\"}"
        ),
        4.0
    );
    assert!(m.contains("mcp_gateway_build_info{"), "{m}");
    // The crash took the backend down; the next call restarts it.
    assert_eq!(sample(&m, "mcp_gateway_backend_up{backend=\"one\"}"), 0.0);
    c.call(json!(5), "one.echo", json!({"text":"b"}));
    let (_, m) = get(&addr, "/metrics");
    assert_eq!(sample(&m, "mcp_gateway_backend_up{backend=\"one\"}"), 1.0);
    assert_eq!(
        sample(&m, "mcp_gateway_backend_restarts_total{backend=\"one\"}"),
        1.0
    );
    // A request the client cancels is counted, as an error of type cancelled.
    c.send(json!({"jsonrpc":"2.0","id":6,"method":"tools/call",
        "params":{"name":"one.sleep","arguments":{"ms":60000}}}));
    c.send(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6}}));
    gw.wait_line("tools/call 6 cancelled by the client");
    let (_, m) = get(&addr, "/metrics");
    assert_eq!(sample(&m, &format!("{calls}\"error\"}}")), 3.0, "{m}");
    assert_eq!(
        sample(&m, "mcp_gateway_errors_total{error_type=\"cancelled\"}"),
        1.0
    );
}

#[test]
fn readiness_fails_when_a_backend_cannot_be_started() {
    let gw = Gateway::start(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"ghost\"\ntransport = \"stdio\"\ncommand = \"/nonexistent/server\"\n",
    );
    let (status, body) = get(&admin_addr(&gw), "/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("ghost"), "{body}");
    // Said at the start, and by `--check-config` (which still passes the file: it may be
    // checked where the backends are not installed).
    // (Before the readiness line, which the start waited for.)
    let log = gw.log.text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("\"ghost\": its command is not found")),
        "{log}"
    );
    let out = std::process::Command::new(bin("mcp-gateway"))
        .args(["--check-config", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: backend \"ghost\": its command is not found"),
        "{stderr}"
    );
}

/// Readiness looks a command up as the start will: in the backend's own `PATH` when
/// its `env` sets one, and only an executable file counts.
#[test]
fn readiness_looks_commands_up_as_the_start_does() {
    let dir = temp_path("readyz-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let config = |backend: &str| {
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n[[backends]]\nname = \"b\"\ntransport = \"stdio\"\n{backend}\n")
    };
    let fixture_dir = bin_dir();
    let via_env = config(&format!(
        "command = \"mcp-fixture\"\nenv = {{ PATH = {:?} }}",
        fixture_dir.display().to_string()
    ));
    let gw = Gateway::start_with_env(
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n{via_env}"),
        &[("PATH", "/nonexistent")],
    );
    let (status, body) = get(&admin_addr(&gw), "/readyz");
    assert_eq!(status, 200, "found in the backend's PATH: {body}");
    let gw = Gateway::start(&config(&format!(
        "command = {:?}",
        script.display().to_string()
    )));
    let (status, body) = get(&admin_addr(&gw), "/readyz");
    assert_eq!(status, 503, "not executable: {body}");
    assert!(body.contains("not found") && body.contains('b'), "{body}");
    // A relative PATH entry is the backend's: from its `cwd`, not the gateway's.
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    let _ = std::fs::remove_file(home.join("bin/fixture-b"));
    std::os::unix::fs::symlink(bin("mcp-fixture"), home.join("bin/fixture-b")).unwrap();
    let relative = config(&format!(
        "command = \"fixture-b\"\ncwd = {:?}\nenv = {{ PATH = \"bin\" }}",
        home.display().to_string()
    ));
    let gw = Gateway::start(&relative);
    let (status, body) = get(&admin_addr(&gw), "/readyz");
    assert_eq!(status, 200, "bin/ under the backend's cwd: {body}");
}

/// Once a stop signal came the gateway refuses new connections, and says it is not
/// ready for as long as its sessions take to close.
#[test]
fn readiness_fails_while_the_gateway_shuts_down() {
    let gw = Gateway::start(&format!(
        "shutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        fixture_backend("one", "")
    ));
    let addr = admin_addr(&gw);
    assert_eq!(get(&addr, "/readyz").0, 200);
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // The backend reads nothing for a while: its stop takes the grace.
    let r = c.call(json!(1), "one.stall", json!({"ms": 4000}));
    assert_eq!(text_of(&r), "stalled 4000");
    signal(gw.pid(), "TERM");
    gw.wait_line("shutting down");
    let (status, body) = get(&addr, "/readyz");
    assert_eq!((status, body.trim()), (503, "not ready: shutting down"));
}

#[test]
fn version_names_commit_and_features() {
    for b in ["mcp-gateway", "mcp-router"] {
        let out = Command::new(bin(b)).arg("--version").output().unwrap();
        assert!(out.status.success());
        let v = String::from_utf8(out.stdout).unwrap();
        assert!(
            v.starts_with(&format!("{b} ")) && v.contains("commit ") && v.contains("otlp-grpc"),
            "{v}"
        );
    }
}

/// The readiness line is written whatever the level, and in the configured format: a
/// JSON log stays JSON, line by line.
#[test]
fn the_readiness_line_follows_the_log_format_at_any_level() {
    let (_gw, line) = readiness_line_at_warn("[logging]\nformat = \"json\"\n");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert!(
        v["msg"].as_str().unwrap().starts_with("listening on ws://"),
        "{v}"
    );
}

/// A request the gateway refuses is counted as what its client was answered: the
/// JSON-RPC code, also when the refusal is the gateway's own (a duplicate id, too many
/// in flight: these had names of their own) or the message could not be read as a
/// request (these were not counted at all).
#[test]
fn refused_requests_are_counted_by_the_code_their_client_got() {
    let (gw, addr) = with_admin("[limits]\nmax_in_flight = 2\n");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let sleep = |id: i64| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.sleep","arguments":{"ms":60000}}})
    };
    c.send(sleep(1));
    c.send(sleep(1)); // the same id while the first is in flight
    assert_eq!(error_code(&c.response(&json!(1))), -32600);
    c.send(sleep(2));
    c.send(sleep(3)); // a third in flight, of two allowed
    assert_eq!(error_code(&c.response(&json!(3))), -32003);
    c.send_raw(r#"{"jsonrpc":"2.0","id":4,"method":"ping","params":"#);
    assert_eq!(error_code(&c.response(&json!(4))), -32700);
    c.send_raw(r#"{"jsonrpc":"1.0","id":5,"method":"ping"}"#);
    assert_eq!(error_code(&c.response(&json!(5))), -32600);
    c.send_raw(
        r#"[{"jsonrpc":"2.0","id":6,"method":"ping"},{"jsonrpc":"2.0","id":7,"method":"ping"}]"#,
    );
    let batch = c.recv_where(|v| v.is_array());
    assert_eq!(batch.as_array().map(Vec::len), Some(2), "{batch}");
    let (_, m) = get(&addr, "/metrics");
    let errors = |t: &str| {
        sample(
            &m,
            &format!("mcp_gateway_errors_total{{error_type=\"{t}\"}}"),
        )
    };
    assert_eq!(errors("-32600"), 4.0, "{m}"); // duplicate, jsonrpc 1.0, the batch's two
    assert_eq!(errors("-32003"), 1.0, "{m}");
    assert_eq!(errors("-32700"), 1.0, "{m}");
    let requests = "mcp_gateway_requests_total";
    assert_eq!(
        sample(
            &m,
            &format!("{requests}{{mcp_method_name=\"other\",outcome=\"error\"}}")
        ),
        4.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("{requests}{{mcp_method_name=\"tools/call\",outcome=\"error\"}}")
        ),
        2.0,
        "{m}"
    );
    for name in ["duplicate_id", "overloaded"] {
        assert!(!m.contains(&format!("error_type=\"{name}\"")), "{m}");
    }
    // Refused before any work: no zero durations among the operations (the two calls
    // in flight have not ended either).
    assert!(
        !m.contains("mcp_server_operation_duration_seconds_count{mcp_method_name=\"tools/call\"}")
            && !m
                .contains("mcp_server_operation_duration_seconds_count{mcp_method_name=\"other\"}"),
        "{m}"
    );
}

/// The readiness line, written whatever the level, names the admin address too: with
/// `[admin] listen` on port 0 and the level at warn, nothing else said where it was.
#[test]
fn the_readiness_line_names_the_admin_address() {
    let (gw, line) = readiness_line_at_warn("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let log = gw.log.text();
    assert!(
        !log.contains("admin endpoints on"),
        "an info line, not at warn: {log}"
    );
    let addr = line
        .split("admin on http://")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(get(addr, "/healthz").0, 200, "{line}");
}

/// A gateway with `extra` TOML and one fixture backend, logging at warn, and its
/// readiness line (written at any level).
fn readiness_line_at_warn(extra: &str) -> (Gateway, String) {
    let gw = Gateway::start_with_env(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra}{}",
            fixture_backend("one", "")
        ),
        &[("MCP_LOG", "warn")],
    );
    let log = gw.log.text();
    let line = log
        .lines()
        .find(|l| l.contains("listening on ws://"))
        .unwrap_or_else(|| panic!("no readiness line: {log}"))
        .to_string();
    (gw, line)
}

/// A gateway with `[admin]` on a free port, `extra` TOML and one fixture backend, and
/// its admin address.
fn with_admin(extra: &str) -> (Gateway, String) {
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{extra}{}",
        fixture_backend("one", "")
    ));
    let addr = admin_addr(&gw);
    (gw, addr)
}
