//! Operations endpoints of the real gateway: /healthz, /readyz, /metrics (Prometheus
//! text), counting real traffic, and `--version`.

use std::process::Command;

use mcp_e2e::*;
use serde_json::json;

#[test]
fn health_readiness_and_metrics_reflect_real_traffic() {
    let gw = Gateway::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        fixture_backend("one", "")
    ));
    let addr = admin_addr(&gw);
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
