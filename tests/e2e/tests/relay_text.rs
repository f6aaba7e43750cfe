//! What the bridge relays is its peer's own text, with only the bridge's changes written
//! over it (`Message::to_json_over`, `Message::to_text`): the id and the tool name the
//! gateway maps, and the trace context the router adds. A text with a line break between
//! its tokens (valid JSON) goes to a line-framed peer written anew on one line, and so
//! does one with a key given twice where the bridge reads keys. The fixture's
//! `echo_line` tool shows the line a backend received.

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use mcp_e2e::*;
use serde_json::{json, Value};

/// The text of a tools/call result.
fn result_text(resp: &Value) -> &str {
    resp["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text result: {resp}"))
}

#[test]
fn gateway_relays_the_clients_text_with_only_the_id_and_tool_name_changed() {
    let gw = gateway_with("");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // Spacing, key order, an escape and a number spelling that a serialiser would each
    // write differently.
    let sent = r#"{ "params": {"arguments": {"n": 1.50, "s": "\u00e9"}, "name": "one.echo_line"}, "id": "c 1", "method": "tools/call", "jsonrpc": "2.0" }"#;
    c.send_raw(sent);
    let resp = c.response(&json!("c 1"));
    let got = result_text(&resp);
    let backend_id = serde_json::from_str::<Value>(got).unwrap()["id"].clone();
    assert!(backend_id.is_u64(), "{got}");
    let want = sent
        .replace(r#""c 1""#, &backend_id.to_string())
        .replace(r#""one.echo_line""#, r#""echo_line""#);
    assert_eq!(got, want);
}

#[test]
fn a_key_given_twice_reaches_the_backend_once_as_the_gateway_read_it() {
    let gw = gateway_with("");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // The gateway reads the last `arguments` (as serde_json does); the backend must not
    // be left to choose (or to refuse the message).
    let sent = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"one.echo_line","arguments":{"x":1},"arguments":{"y":2}}}"#;
    c.send_raw(sent);
    let resp = c.response(&json!(3));
    let got = result_text(&resp);
    assert_eq!(got.matches(r#""arguments""#).count(), 1, "{got}");
    let got: Value = serde_json::from_str(got).unwrap();
    assert_eq!(got["params"]["arguments"], json!({"y": 2}));
}

#[test]
fn gateway_relays_a_backends_answer_as_its_text_with_only_the_id_changed() {
    let gw = gateway_with("");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // Spacing, key order, escapes and number spellings a serialiser would each write
    // otherwise, and a key the gateway does not read given twice: the backend's text
    // is what the client gets, with the client's id written over the gateway's.
    let line = r#"{ "result" : {"content":[{"type":"text","text":"\u00e9 \/"}],"n":1.50,"z":1,"z":2} ,"id" :$ID, "jsonrpc":"2.0"}"#;
    let resp = c.call(json!("r 1"), "one.respond_raw", json!({ "line": line }));
    assert_eq!(resp["result"]["content"][0]["text"], "é /");
    let got = c.text_of_response(&json!("r 1"));
    assert_eq!(got, line.replace("$ID", r#""r 1""#));
}

#[test]
fn a_backend_answer_with_an_id_given_twice_or_escaped_reaches_the_client_with_its_id() {
    let gw = gateway_with("");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // The gateway matches the last `id` (as serde_json reads a map); the client must get
    // its own id once, not the backend's first one.
    let line = r#"{"jsonrpc":"2.0","id":"first","result":{"content":[]},"id":$ID}"#;
    let resp = c.call(json!(7), "one.respond_raw", json!({ "line": line }));
    assert_eq!(resp["result"], json!({"content": []}));
    let got = c.text_of_response(&json!(7));
    assert_eq!(got.matches(r#""id""#).count(), 1, "{got}");
    assert!(!got.contains("first"), "{got}");
    // A key spelt with an escape is the same key.
    let line = r#"{"jsonrpc":"2.0","\u0069d":$ID,"result":{"isError":true,"content":[]}}"#;
    let resp = c.call(json!(8), "one.respond_raw", json!({ "line": line }));
    assert_eq!(resp["result"]["isError"], true);
    assert_eq!(resp["id"], json!(8));
}

#[test]
fn a_request_with_line_breaks_reaches_a_stdio_backend_on_one_line() {
    let gw = gateway_with("");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let sent = "{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 5,\n  \"method\": \"tools/call\",\r\n  \"params\": {\"name\": \"one.echo_line\", \"arguments\": {\"t\": \"a\\nb\"}}\n}";
    c.send_raw(sent);
    let resp = c.response(&json!(5));
    let got = result_text(&resp);
    assert!(!got.contains(['\n', '\r']), "{got:?}");
    let got: Value = serde_json::from_str(got).unwrap();
    assert_eq!(got["params"]["name"], "echo_line");
    assert_eq!(got["params"]["arguments"]["t"], "a\nb");
    assert_eq!(got["method"], "tools/call");
}

/// A gateway stand-in: hands over the first text message it receives, answers it with
/// `reply` (with the request's id put in for `ID`) if given, then holds the link until
/// the router closes it.
fn stand_in(reply: Option<&'static str>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/mcp", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept_hdr(stream, choose_mcp).unwrap();
        let mut first = true;
        while let Ok(m) = ws.read() {
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            if !std::mem::take(&mut first) {
                continue;
            }
            let text = t.as_str().to_owned();
            let id = serde_json::from_str::<Value>(&text).unwrap()["id"].to_string();
            let _ = tx.send(text);
            if let Some(r) = reply {
                let _ = ws.send(tungstenite::Message::text(r.replace("ID", &id)));
            }
        }
    });
    (url, rx)
}

/// What the gateway gets when a host sends `line` through a router tracing every
/// request (always_on, stdout exporter): the first message, as text.
fn through_a_traced_router(line: &str) -> String {
    let (url, rx) = stand_in(None);
    let mut c = router_with_config(
        &url,
        "[tracing]\nenabled = true\nsampler_type = \"always_on\"\nexporter_type = \"stdout\"\n",
    );
    c.send_raw(line);
    let got = rx.recv_timeout(Duration::from_secs(15)).expect("a message");
    drop(c);
    got
}

#[test]
fn router_with_tracing_puts_its_context_into_a_notification_keeping_other_meta_keys() {
    let got = through_a_traced_router(
        r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{"_meta":{"k":"v"}}}"#,
    );
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["method"], "notifications/roots/list_changed", "{got}");
    assert_eq!(v["params"]["_meta"]["k"], "v", "{got}");
    let tp = v["params"]["_meta"]["traceparent"].as_str().expect(&got);
    assert!(
        tp.starts_with("00-") && tp.ends_with("-01") && tp.len() == 55,
        "{tp}"
    );
}

#[test]
fn router_with_tracing_inserts_its_context_into_the_hosts_text() {
    let line =
        r#"{ "jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "\u00e9", "n": 1.50} }"#;
    let got = through_a_traced_router(line);
    let v: Value = serde_json::from_str(&got).unwrap();
    let tp = v["params"]["_meta"]["traceparent"].as_str().unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
    let want = line.replace(
        r#""params": {"#,
        &format!(r#""params": {{"_meta":{{"traceparent":"{tp}"}},"#),
    );
    assert_eq!(got, want);
}

#[test]
fn router_puts_a_gateway_message_with_line_breaks_on_one_line() {
    let (url, rx) = stand_in(Some(
        "{\n  \"jsonrpc\": \"2.0\",\n  \"id\": ID,\r\n  \"result\": {\"t\": \"a\\nb\"}\n}",
    ));
    let mut c = Client::router(&url);
    c.send(json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}));
    rx.recv_timeout(Duration::from_secs(15))
        .expect("the request");
    // The client's reader fails the test on a line that is not JSON.
    let r = c.response(&json!(9));
    assert_eq!(r["result"]["t"], "a\nb");
    drop(c);
}

#[test]
fn gateway_passes_an_unsampled_trace_context_on_as_it_came() {
    let gw = gateway_with(
        "[tracing]\nenabled = true\nsampler_type = \"always_on\"\nexporter_type = \"otlp\"\notlp_protocol = \"http/protobuf\"\notlp_endpoint = \"http://127.0.0.1:9\"\n",
    );
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // The version digits spelled as escapes: a context written again would show.
    let with_flags = |flags: &str| {
        format!(
            r#"{{ "jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {{"_meta": {{"traceparent": "\u0030\u0030-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}", "tracestate": "k=v"}}, "name": "one.echo_line", "arguments": {{}}}} }}"#
        )
    };
    // Unsampled: the gateway starts no span, so the backend gets the client's context
    // as it came, and the text with only the id and tool name changed.
    let sent = with_flags("00");
    c.send_raw(&sent);
    let resp = c.response(&json!(9));
    let got = result_text(&resp);
    let backend_id = serde_json::from_str::<Value>(got).unwrap()["id"].clone();
    let want = sent
        .replace(r#""id": 9"#, &format!(r#""id": {backend_id}"#))
        .replace(r#""one.echo_line""#, r#""echo_line""#);
    assert_eq!(got, want);
    // Sampled: the backend gets the gateway's `backend.forward` span as its parent.
    c.send_raw(&with_flags("01"));
    let resp = c.response(&json!(9));
    let got: Value = serde_json::from_str(result_text(&resp)).unwrap();
    let tp = got["params"]["_meta"]["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
        "{tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
    assert_eq!(got["params"]["_meta"]["tracestate"], "k=v");
}
