//! End to end: test client ↔ mcp-router (stdio) ↔ mcp-gateway ↔ two fixture backends.
//! Every flow in both directions, with string and numeric ids.

use std::time::Duration;

use mcp_e2e::*;
use serde_json::{json, Value};

fn two_backends(extra_one: &str, extra_two: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{}",
        fixture_backend("one", extra_one),
        fixture_backend("two", extra_two)
    ))
}

fn setup() -> (Gateway, Client) {
    let gw = two_backends("", "session = \"shared\"");
    let mut c = Client::router(&gw.url);
    c.initialize();
    (gw, c)
}

#[test]
fn initialize_negotiates_and_merges_capabilities() {
    let gw = two_backends("", "");
    let mut c = Client::router(&gw.url);
    let r = c.initialize();
    assert_eq!(r["protocolVersion"], "2025-06-18");
    assert_eq!(r["serverInfo"]["name"], "mcp-gateway");
    for cap in ["tools", "prompts", "resources", "logging", "completions"] {
        assert!(r["capabilities"].get(cap).is_some(), "missing {cap}: {r}");
    }
    assert_eq!(r["capabilities"]["resources"]["subscribe"], true);
    // Each backend's instructions, under its name and prefix, in configuration order.
    let i = r["instructions"].as_str().unwrap_or_else(|| panic!("{r}"));
    let (one, two) = (
        i.find("Test tools of the fixture one.").unwrap(),
        i.find("Test tools of the fixture two.").unwrap(),
    );
    assert!(
        one < two
            && i.contains(
                "From backend \"two\" (its tools and prompts are named two.<name> here):"
            ),
        "{i}"
    );

    let mut c2 = Client::router(&gw.url);
    let r = c2.request(
        json!(1),
        "initialize",
        json!({"protocolVersion":"1999-01-01","capabilities":{},"clientInfo":{"name":"x","version":"0"}}),
    );
    assert_eq!(r["result"]["protocolVersion"], "2025-11-25");
}

#[test]
fn requests_before_initialize_are_refused_with_their_id() {
    let gw = two_backends("", "");
    let mut c = Client::router(&gw.url);
    let r = c.request(json!("early"), "tools/list", json!({}));
    assert_eq!(error_code(&r), -32600);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("initialize"));
    let r = c.request(json!(2), "ping", json!({}));
    assert_eq!(r["result"], json!({}));
}

#[test]
fn listings_merge_all_backends_under_prefixes() {
    let (_gw, mut c) = setup();
    let r = c.request(json!("t"), "tools/list", json!({}));
    let names: Vec<&str> = r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"one.echo") && names.contains(&"two.echo"),
        "{names:?}"
    );
    assert!(names
        .iter()
        .all(|n| n.starts_with("one.") || n.starts_with("two.")));
    assert!(
        r["result"]["tools"][0]["inputSchema"].is_object(),
        "fields kept"
    );

    let r = c.request(json!(2), "prompts/list", json!({}));
    let prompts: Vec<&str> = r["result"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(prompts, vec!["one.greet", "two.greet"]);

    let r = c.request(json!(3), "resources/list", json!({}));
    assert_eq!(r["result"]["resources"].as_array().unwrap().len(), 2);
    let r = c.request(json!(4), "resources/templates/list", json!({}));
    assert_eq!(
        r["result"]["resourceTemplates"][1]["uriTemplate"],
        "fixture://two/item/{id}"
    );
    let r = c.request(json!(5), "tools/list", json!({"cursor": "x"}));
    assert_eq!(error_code(&r), -32602);
}

#[test]
fn tool_calls_route_by_prefix_and_keep_id_types() {
    let (_gw, mut c) = setup();
    for (id, backend) in [
        (json!("abc"), "one"),
        (json!(7), "two"),
        (json!(-1), "one"),
        (json!(2.5), "two"),
    ] {
        let r = c.call(id.clone(), &format!("{backend}.whoami"), json!({}));
        assert_eq!(r["id"], id, "id returned exactly");
        assert!(text_of(&r).starts_with(backend), "{r}");
    }
    let r = c.call(json!(8), "one.add", json!({"a": 2, "b": 3}));
    assert_eq!(text_of(&r), "5");
    let r = c.call(json!(9), "one.fail", json!({}));
    assert_eq!(r["result"]["isError"], true);
}

#[test]
fn unknown_tool_and_method_get_errors_naming_them() {
    let (_gw, mut c) = setup();
    let r = c.call(json!(1), "nope.echo", json!({}));
    assert_eq!(error_code(&r), -32602);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nope.echo"));
    let r = c.call(json!(2), "noprefix", json!({}));
    assert_eq!(error_code(&r), -32602);
    let r = c.call(json!(3), "one.missing", json!({}));
    assert_eq!(error_code(&r), -32602, "the backend's own error is relayed");
    let r = c.request(json!("m"), "frobnicate/now", json!({}));
    assert_eq!(error_code(&r), -32601);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("frobnicate/now"));
    let r = c.request(json!(4), "tools/call", json!({"arguments": {}}));
    assert_eq!(error_code(&r), -32602);
}

#[test]
fn prompts_resources_and_completion_route() {
    let (_gw, mut c) = setup();
    let r = c.request(
        json!(1),
        "prompts/get",
        json!({"name":"two.greet","arguments":{"name":"Ada"}}),
    );
    assert_eq!(r["result"]["messages"][0]["content"]["text"], "Hello, Ada!");
    // Reading before any listing: the gateway learns the routes on demand.
    let r = c.request(
        json!(2),
        "resources/read",
        json!({"uri":"fixture://two/hello"}),
    );
    assert_eq!(r["result"]["contents"][0]["text"], "hello from two");
    let r = c.request(
        json!(3),
        "resources/read",
        json!({"uri":"fixture://one/item/42"}),
    );
    assert_eq!(r["result"]["contents"][0]["text"], "item 42 from one");
    let r = c.request(json!(4), "resources/read", json!({"uri":"nowhere://x"}));
    assert_eq!(error_code(&r), -32002);
    let r = c.request(
        json!(5),
        "completion/complete",
        json!({"ref":{"type":"ref/prompt","name":"one.greet"},"argument":{"name":"name","value":"al"}}),
    );
    assert_eq!(
        r["result"]["completion"]["values"],
        json!(["alice", "albert"])
    );
    let r = c.request(
        json!(6),
        "completion/complete",
        json!({"ref":{"type":"ref/resource","uri":"fixture://two/item/{id}"},"argument":{"name":"id","value":""}}),
    );
    assert!(r["result"]["completion"].is_object(), "{r}");
    let r = c.request(json!(7), "logging/setLevel", json!({"level":"debug"}));
    assert_eq!(r["result"], json!({}));
    // A level every backend refuses is not reported as set: the first refusal comes
    // back, with the backend named.
    let r = c.request(json!(8), "logging/setLevel", json!({"level":"bogus"}));
    assert_eq!(error_code(&r), -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid log level"),
        "{r}"
    );
}

#[test]
fn subscriptions_deliver_resource_updates() {
    let (_gw, mut c) = setup();
    for (id, backend) in [(1, "one"), (2, "two")] {
        let uri = format!("fixture://{backend}/hello");
        let r = c.request(json!(id), "resources/subscribe", json!({ "uri": uri }));
        assert_eq!(r["result"], json!({}));
        let r = c.call(
            json!(10 + id),
            &format!("{backend}.touch"),
            json!({ "uri": uri }),
        );
        assert_eq!(text_of(&r), "touched");
        let n = c.recv_where(|v| v["method"] == "notifications/resources/updated");
        assert_eq!(n["params"]["uri"], uri.as_str());
    }
}

#[test]
fn sampling_request_round_trips_through_both_hops() {
    let (_gw, mut c) = setup();
    for (id, backend) in [(json!("s1"), "one"), (json!(77), "two")] {
        c.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":format!("{backend}.sample"),"arguments":{"prompt":"2+2?"}}}));
        let req = c.recv_where(|v| v["method"] == "sampling/createMessage");
        assert_eq!(req["params"]["messages"][0]["content"]["text"], "2+2?");
        let sid = req["id"].clone();
        assert!(sid.is_number() || sid.is_string());
        c.send(
            json!({"jsonrpc":"2.0","id":sid,"result":{"role":"assistant",
            "content":{"type":"text","text":"4"},"model":"test"}}),
        );
        let r = c.response(&id);
        assert_eq!(text_of(&r), "sampled: 4");
    }
    // An error answer from the client is relayed too.
    c.send(json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"one.sample","arguments":{"prompt":"x"}}}));
    let req = c.recv_where(|v| v["method"] == "sampling/createMessage");
    c.send(json!({"jsonrpc":"2.0","id":req["id"],"error":{"code":-1,"message":"user declined"}}));
    let r = c.response(&json!(3));
    assert_eq!(text_of(&r), "sampling failed: user declined");
}

#[test]
fn progress_and_log_notifications_come_back_with_the_clients_token() {
    let (_gw, mut c) = setup();
    for (id, token, backend) in [(1, json!("tok-a"), "one"), (2, json!(99), "two")] {
        c.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
            "name":format!("{backend}.progress"),"arguments":{"steps":3},"_meta":{"progressToken":token}}}));
        let r = c.response(&json!(id));
        assert_eq!(text_of(&r), "done 3");
        let all = c.drain_for(Duration::from_millis(0));
        let progress: Vec<&Value> = all
            .iter()
            .filter(|v| v["method"] == "notifications/progress")
            .collect();
        assert_eq!(progress.len(), 3, "{all:?}");
        for (i, p) in progress.iter().enumerate() {
            assert_eq!(p["params"]["progressToken"], token);
            assert_eq!(p["params"]["progress"], i as u64 + 1);
        }
        assert!(all
            .iter()
            .any(|v| v["method"] == "notifications/message"
                && v["params"]["data"] == "progress done"));
    }
}

#[test]
fn list_changed_is_forwarded() {
    let (_gw, mut c) = setup();
    let r = c.call(json!(1), "two.notify_list_changed", json!({}));
    assert_eq!(text_of(&r), "ok");
    c.recv_where(|v| v["method"] == "notifications/tools/list_changed");
}

#[test]
fn concurrent_requests_are_answered_independently() {
    let (_gw, mut c) = setup();
    // A slow call does not hold up a fast one behind it.
    c.send(json!({"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":400}}}));
    c.send(json!({"jsonrpc":"2.0","id":"fast","method":"tools/call","params":{"name":"one.echo","arguments":{"text":"x"}}}));
    let first = c.recv_where(|v| v.get("id").is_some() && v.get("method").is_none());
    assert_eq!(first["id"], "fast");
    assert_eq!(text_of(&c.response(&json!("slow"))), "slept 400");
    // Many in flight across both backends, each matched to its id.
    for i in 0..40 {
        let b = if i % 2 == 0 { "one" } else { "two" };
        c.send(json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":format!("{b}.echo"),"arguments":{"text":format!("m{i}")}}}));
    }
    for i in (0..40).rev() {
        let r = c.response(&json!(i));
        assert_eq!(text_of(&r), format!("m{i}"));
    }
}

#[test]
fn cancellation_reaches_the_backend_and_suppresses_the_response() {
    let (_gw, mut c) = setup();
    c.send(json!({"jsonrpc":"2.0","id":"long","method":"tools/call","params":{"name":"two.sleep","arguments":{"ms":10000}}}));
    // Wait until the backend is working on it: a later echo on the same backend answers.
    assert_eq!(
        text_of(&c.call(json!("probe"), "two.echo", json!({"text":"p"}))),
        "p"
    );
    c.send(json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"long","reason":"user"}}));
    let n = c.recv_where(|v| v["method"] == "notifications/message");
    let text = n["params"]["data"].as_str().unwrap();
    assert!(
        text.starts_with("cancelled "),
        "backend saw the cancel under its own id: {text}"
    );
    assert_ne!(
        text, "cancelled \"long\"",
        "the id was mapped to the backend's"
    );
    let r = c.call(json!("after"), "two.echo", json!({"text":"still here"}));
    assert_eq!(text_of(&r), "still here");
    let rest = c.drain_for(Duration::from_millis(200));
    assert!(
        !rest.iter().any(|v| v["id"] == "long"),
        "no response for a cancelled request: {rest:?}"
    );
}

#[test]
fn backend_crash_fails_pending_requests_and_restarts() {
    let (gw, mut c) = setup();
    c.send(json!({"jsonrpc":"2.0","id":"pending","method":"tools/call","params":{"name":"one.sleep","arguments":{"ms":10000}}}));
    let r = c.call(json!("boom"), "one.crash", json!({}));
    for r in [r, c.response(&json!("pending"))] {
        assert_eq!(error_code(&r), -32000, "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("\"one\"") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }
    // The other backend is unaffected, and "one" comes back on next use.
    assert_eq!(
        text_of(&c.call(json!(1), "two.echo", json!({"text":"a"}))),
        "a"
    );
    assert_eq!(
        text_of(&c.call(json!(2), "one.echo", json!({"text":"b"}))),
        "b"
    );
    assert!(
        gw.log.text().contains("fixture crashing"),
        "backend stderr is logged"
    );
}

#[test]
fn backend_that_cannot_start_does_not_break_the_others() {
    let gw = Gateway::start(&format!(
        "{}[[backends]]\nname = \"broken\"\ntransport = \"stdio\"\ncommand = \"/nonexistent/mcp-server\"\n",
        fixture_backend("one", "")
    ));
    let mut c = Client::router(&gw.url);
    c.initialize();
    let r = c.request(json!(1), "tools/list", json!({}));
    let tools = r["result"]["tools"].as_array().unwrap();
    assert!(!tools.is_empty());
    assert!(tools
        .iter()
        .all(|t| t["name"].as_str().unwrap().starts_with("one.")));
    let r = c.call(json!(2), "broken.anything", json!({}));
    assert_eq!(error_code(&r), -32000);
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"broken\"") && msg.contains("failed to start"),
        "{msg}"
    );
    assert!(gw.log.text().contains("/nonexistent/mcp-server"));
}

#[test]
fn backend_that_exits_at_once_is_reported_with_its_status() {
    let gw = Gateway::start(
        "[[backends]]\nname = \"quitter\"\ntransport = \"stdio\"\ncommand = \"sh\"\nargs = [\"-c\", \"exit 7\"]\n",
    );
    let mut c = Client::router(&gw.url);
    c.initialize();
    let r = c.call(json!("q"), "quitter.x", json!({}));
    assert_eq!(error_code(&r), -32000);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exit status: 7"),
        "{r}"
    );
}

#[test]
fn slow_backend_times_out_with_the_request_id() {
    let gw = Gateway::start(&fixture_backend("one", "request_timeout = \"300ms\""));
    let mut c = Client::router(&gw.url);
    c.initialize();
    let r = c.call(json!("t1"), "one.sleep", json!({"ms": 5000}));
    assert_eq!(error_code(&r), -32001);
    assert!(r["error"]["message"].as_str().unwrap().contains("300 ms"));
    assert_eq!(
        text_of(&c.call(json!("t2"), "one.echo", json!({"text":"ok"}))),
        "ok"
    );
}

#[test]
fn per_client_backends_are_private_and_shared_ones_are_not() {
    let gw = two_backends("", "session = \"shared\"");
    let mut a = Client::router(&gw.url);
    let mut b = Client::router(&gw.url);
    a.initialize();
    b.initialize();
    let who = |c: &mut Client, t: &str| text_of(&c.call(json!(1), t, json!({})));
    assert_ne!(who(&mut a, "one.whoami"), who(&mut b, "one.whoami"));
    assert_eq!(who(&mut a, "two.whoami"), who(&mut b, "two.whoami"));
    // A per-client backend ends with its session.
    let pid: u32 = who(&mut a, "one.whoami")
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(process_alive(pid));
    assert!(a.close_stdin().success());
    let start = std::time::Instant::now();
    while process_alive(pid) {
        assert!(
            start.elapsed() < DEADLINE,
            "backend {pid} outlived its session"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn backend_env_and_cwd_are_applied() {
    let dir = temp_path("cwd");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = Gateway::start(&fixture_backend(
        "one",
        &format!(
            "env = {{ FIXTURE_GREETING = \"hola\" }}\ncwd = {:?}",
            dir.display().to_string()
        ),
    ));
    let mut c = Client::router(&gw.url);
    c.initialize();
    let r = c.call(json!(1), "one.env", json!({"name":"FIXTURE_GREETING"}));
    assert_eq!(text_of(&r), "hola");
    let r = c.call(json!(2), "one.env", json!({"name":"PWD"}));
    let _ = r; // PWD is set by shells, not by exec; the cwd is checked via /proc below.
    let who = text_of(&c.call(json!(3), "one.whoami", json!({})));
    let pid = who.split(' ').nth(1).unwrap();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, dir.canonicalize().unwrap());
}

#[test]
fn notifications_are_never_answered() {
    let (_gw, mut c) = setup();
    c.send(json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"}));
    c.send(json!({"jsonrpc":"2.0","method":"notifications/unknown_thing","params":{}}));
    let r = c.request(json!("p"), "ping", json!({}));
    assert_eq!(r["result"], json!({}));
    let rest = c.drain_for(Duration::from_millis(100));
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn router_exits_cleanly_on_stdin_eof() {
    let (_gw, mut c) = setup();
    assert!(c.close_stdin().success());
}

#[test]
fn backend_that_stops_reading_fails_requests_within_their_timeout() {
    let mut gw = Gateway::start(&format!(
        "shutdown_grace = \"200ms\"\n[limits]\nmax_in_flight = 500\n{}",
        fixture_backend("one", "request_timeout = \"1s\"")
    ));
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    // The backend answers, then reads nothing for longer than the test may run.
    let r = c.call(json!("stall"), "one.stall", json!({"ms": 30000}));
    assert_eq!(text_of(&r), "stalled 30000");
    // 400 requests of ~8 KiB: more than its stdin pipe and the gateway's stdin queue
    // hold, so some wait for room in the queue; their timeout counts that wait too.
    let text = "x".repeat(8 * 1024);
    for id in 0..400 {
        c.send(json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"one.echo","arguments":{"text":text}}}));
    }
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let r = c.recv();
        assert_eq!(error_code(&r), -32001, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("did not answer within 1000 ms"),
            "{message}"
        );
        assert!(ids.insert(r["id"].as_i64().unwrap()), "{r}");
    }
    assert_eq!(ids, (0..400).collect());
    assert!(gw.terminate().success());
}

/// A backend that lists its tools in pages is listed whole: every page is fetched; a
/// last page whose `nextCursor` is `""` ends the listing; a page that fails after the
/// first keeps what the pages before gave.
#[test]
fn paged_tool_listings_are_fetched_whole() {
    let names_of = |r: &Value, prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = r["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .filter_map(|t| t["name"].as_str())
            .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let gw = two_backends("", "");
    let mut c = Client::router(&gw.url);
    c.initialize();
    let whole = names_of(&c.request(json!("t"), "tools/list", json!({})), "one.");
    assert!(whole.len() > 6, "{whole:?}");
    for end in [None, Some(""), Some("bogus")] {
        let env = match end {
            Some(e) => {
                format!("env = {{ FIXTURE_TOOLS_PAGE = \"3\", FIXTURE_END_CURSOR = {e:?} }}")
            }
            None => "env = { FIXTURE_TOOLS_PAGE = \"3\" }".to_string(),
        };
        let gw = two_backends(&env, "");
        let mut c = Client::router(&gw.url);
        c.initialize();
        let r = c.request(json!("t"), "tools/list", json!({}));
        assert_eq!(names_of(&r, "one."), whole, "end {end:?}: {r}");
        assert_eq!(names_of(&r, "two."), whole, "the other backend: {r}");
        if end == Some("bogus") {
            let line = gw.wait_line("page");
            assert!(
                line.contains("failed") && line.contains("tools/list"),
                "{line}"
            );
        }
    }
}

/// A backend that exits while the client holds its request (sampling) makes the
/// gateway tell the client the request is void; through the router the host gets the
/// cancellation under the id it was asked with.
#[test]
fn a_request_of_a_backend_that_exits_is_cancelled_at_the_client() {
    let (_gw, mut c) = setup();
    c.send(json!({"jsonrpc":"2.0","id":"s","method":"tools/call",
        "params":{"name":"one.sample","arguments":{"prompt":"2+2?"}}}));
    let req = c.recv_where(|v| v["method"] == "sampling/createMessage");
    c.send(json!({"jsonrpc":"2.0","id":"c","method":"tools/call",
        "params":{"name":"one.crash","arguments":{}}}));
    let n = c.recv_where(|v| v["method"] == "notifications/cancelled");
    assert_eq!(n["params"]["requestId"], req["id"], "{n}");
    for id in ["s", "c"] {
        let r = c.response(&json!(id));
        assert_eq!(error_code(&r), -32000, "{r}");
    }
}

/// A resource one backend stops listing and another starts is read from the other once
/// listed again: each backend's listing replaces what the session learned from it.
#[test]
fn a_resource_that_moves_between_backends_is_read_where_it_is_now_listed() {
    let (_gw, mut c) = setup();
    let read = |c: &mut Client, id: i64| {
        c.request(json!(id), "resources/read", json!({"uri": "x://moving"}))
    };
    let listed_uris = |c: &mut Client, id: i64| {
        let r = c.request(json!(id), "resources/list", json!({}));
        r["result"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["uri"] == "x://moving")
            .count()
    };
    c.call(json!(1), "one.offer", json!({"uri": "x://moving"}));
    assert_eq!(listed_uris(&mut c, 2), 1);
    let r = read(&mut c, 3);
    assert_eq!(r["result"]["contents"][0]["text"], "offered by one", "{r}");
    c.call(json!(4), "one.offer", json!({"uri": ""}));
    c.call(json!(5), "two.offer", json!({"uri": "x://moving"}));
    assert_eq!(listed_uris(&mut c, 6), 1);
    let r = read(&mut c, 7);
    assert_eq!(r["result"]["contents"][0]["text"], "offered by two", "{r}");
    // Withdrawn everywhere: unknown once listed again.
    c.call(json!(8), "two.offer", json!({"uri": ""}));
    assert_eq!(listed_uris(&mut c, 9), 0);
    let r = read(&mut c, 10);
    assert!(r.get("error").is_some(), "{r}");
}

/// A backend's listing is followed only while it fits `max_message_bytes` (the most a
/// peer with the same bound reads): past it the pages after are not asked for, so the
/// gateway does not hold up to MAX_LIST_PAGES pages of that size, and the client gets
/// an error naming the bound rather than a message it could not read.
#[test]
fn a_listing_is_followed_only_while_it_fits_max_message_bytes() {
    let gw = Gateway::start(&format!(
        "[limits]\nmax_message_bytes = 1024\n{}",
        fixture_backend("one", "env = { FIXTURE_TOOLS_PAGE = \"1\" }")
    ));
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let r = c.request(json!(1), "tools/list", json!({}));
    assert_eq!(error_code(&r), -32603, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_message_bytes (1024)"), "{message}");
    let l = gw.wait_line("passed max_message_bytes");
    let pages: usize = l
        .split(" after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{l}"));
    assert!(pages < 10, "17 tools, one per page: {l}");
}

/// `request_timeout` waits for a backend that is visibly at work: progress on the
/// request restarts it, a request of the backend's open at the client (a person
/// answering an elicitation, a model a sampling request) holds it; never past
/// REQUEST_TIMEOUT_MAX_FACTOR (10) times it in all.
#[test]
fn a_backend_at_work_is_waited_for_past_the_request_timeout_up_to_ten_times_it() {
    let gw = Gateway::start(&fixture_backend("one", "request_timeout = \"300ms\""));
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let sleep = |c: &mut Client, id: i64, ms: u64| {
        c.send(
            json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
            "name":"one.sleep","arguments":{"ms":ms,"progress_every":100},
            "_meta":{"progressToken":format!("p{id}")}}}),
        );
        c.response(&json!(id))
    };
    // Three times the timeout, with progress every third of it.
    assert_eq!(text_of(&sleep(&mut c, 1, 900)), "slept 900");
    // Progress for longer than ten times the timeout: the maximum holds.
    let r = sleep(&mut c, 2, 5000);
    assert_eq!(error_code(&r), -32001, "{r}");
    // Without progress, the timeout is the timeout.
    let r = c.call(json!(3), "one.sleep", json!({"ms": 900}));
    assert_eq!(error_code(&r), -32001, "{r}");
    // A sampling request the client answers after twice the timeout (the slow
    // answer is what is under test, not a wait for something to happen).
    c.send(json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
        "params":{"name":"one.sample","arguments":{"prompt":"2+2?"}}}));
    let req = c.recv_where(|v| v["method"] == "sampling/createMessage");
    std::thread::sleep(std::time::Duration::from_millis(600));
    c.send(json!({"jsonrpc":"2.0","id":req["id"],"result":{
        "role":"assistant","content":{"type":"text","text":"4"},"model":"m"}}));
    let r = c.response(&json!(4));
    assert_eq!(text_of(&r), "sampled: 4", "{r}");
}

/// A tool that runs only as a task (`execution.taskSupport: "required"`) is not listed:
/// the gateway does not route `tasks/*`, so no client could call it through it.
#[test]
fn tools_that_need_tasks_are_not_listed() {
    let gw = Gateway::start(&fixture_backend(
        "one",
        "env = { FIXTURE_TASK_TOOL = \"1\" }",
    ));
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let r = c.request(json!(1), "tools/list", json!({}));
    let names: Vec<&str> = r["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"one.echo"), "{names:?}");
    assert!(!names.contains(&"one.needs_task"), "{names:?}");
}

/// A backend that writes its answer without the newline and exits is still answered
/// with it: the end of its stdout ends the line.
#[test]
fn a_last_line_without_its_newline_is_read_at_the_backends_exit() {
    let (_gw, mut c) = setup();
    let line =
        r#"{"jsonrpc":"2.0","id":$ID,"result":{"content":[{"type":"text","text":"last words"}]}}"#;
    let r = c.call(
        json!("bye"),
        "one.respond_raw",
        json!({"line": line, "exit": true}),
    );
    assert_eq!(text_of(&r), "last words", "{r}");
}

/// One backend's entries that no client could use (the official SDKs refuse a whole
/// listing for one of them) are left out, and logged; the other backends' items and its
/// own good ones are listed, each name once.
#[test]
fn entries_a_client_cannot_use_are_left_out_of_a_merged_listing() {
    let gw = two_backends("env = { FIXTURE_BAD_TOOLS = \"1\" }", "");
    let mut c = WsClient::mcp(&gw);
    c.initialize();
    let r = c.request(json!(1), "tools/list", json!({}));
    let tools = r["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names.len(),
        tools.len(),
        "every item has a string name: {r}"
    );
    assert!(tools.iter().all(|t| t["inputSchema"].is_object()), "{r}");
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    let of = |p: &str| names.iter().filter(|n| n.starts_with(p)).count();
    assert!(of("two.") > 0 && of("one.") == of("two."), "{names:?}");
    assert_eq!(of("one.") + of("two."), names.len(), "{names:?}");
    gw.wait_line("backend \"one\": tools/list left 4 invalid and 1 repeated item(s) out");
}

/// The bound on a merged listing measures what is sent: the names with their
/// `<backend>.` prefixes (a listing that fits only without them is refused).
#[test]
fn a_merged_listing_is_measured_as_sent() {
    let tools_len = |extra: &str| {
        let gw = Gateway::start(&format!("{extra}{}", fixture_backend("one", "")));
        let mut c = WsClient::mcp(&gw);
        c.initialize();
        c.request(json!(1), "tools/list", json!({}))
    };
    let r = tools_len("");
    let sent = serde_json::to_string(&r["result"]["tools"]).unwrap().len();
    // Room for the listing without its 17 prefixes ("one.", 68 bytes), not with them.
    let r = tools_len(&format!("[limits]\nmax_message_bytes = {}\n", sent - 10));
    assert_eq!(error_code(&r), -32603, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{r}"
    );
    let r = tools_len(&format!("[limits]\nmax_message_bytes = {sent}\n"));
    assert!(r["result"]["tools"].is_array(), "{r}");
}

#[test]
fn a_duplicate_id_in_flight_is_refused_and_the_first_request_still_answered() {
    let (_gw, mut c) = setup();
    c.send(json!({"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"two.sleep","arguments":{"ms":300}}}));
    c.send(json!({"jsonrpc":"2.0","id":"d","method":"tools/call","params":{"name":"two.echo","arguments":{"text":"again"}}}));
    // The duplicate is refused (by the router: the gateway's refusal would answer the
    // first request in its place)...
    let refused = c.response(&json!("d"));
    assert_eq!(error_code(&refused), -32600, "{refused}");
    // ...and the first request is still pending: at stdin's end the router waits for
    // its answer, and it comes, once.
    c.end_stdin();
    let answered = c.response(&json!("d"));
    assert_eq!(text_of(&answered), "slept 300");
    let rest = c.drain_for(Duration::from_millis(100));
    assert!(!rest.iter().any(|v| v["id"] == "d"), "{rest:?}");
}

#[test]
fn a_batch_is_refused_with_an_answer_for_each_request_in_it() {
    let (gw, mut c) = setup();
    // MCP 2025-03-26 allowed batches; the bridge refuses them, but each request in one
    // gets its error under its own id (none is left waiting), in a batch of answers.
    c.send_raw(
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":"b","method":"tools/list"}]"#,
    );
    let answers = c.recv_where(|v| v.is_array());
    let ids: Vec<&Value> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!("b")], "{answers}");
    assert!(answers
        .as_array()
        .unwrap()
        .iter()
        .all(|a| error_code(a) == -32600));
    // The gateway, to a direct client, the same.
    let mut ws = WsClient::mcp(&gw);
    ws.send_raw(r#"[{"jsonrpc":"2.0","id":7,"method":"ping"}]"#);
    let answers = ws.recv_where(|v| v.is_array());
    assert_eq!(answers[0]["id"], json!(7), "{answers}");
    assert_eq!(error_code(&answers[0]), -32600);
}

#[test]
fn a_backends_request_the_client_never_answers_is_given_up_on() {
    // A backend's sampling request unanswered past 10 × its request_timeout (the
    // longest any request to it is waited for): the host is told it is cancelled, the
    // backend gets an error, and nothing holds a place for it any more.
    let gw = Gateway::start(&fixture_backend("one", "request_timeout = \"200ms\"\n"));
    let mut c = Client::router(&gw.url);
    c.initialize();
    c.send(json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"one.sample","arguments":{"prompt":"anyone?"}}}));
    let asked = c.recv_where(|v| v["method"] == "sampling/createMessage");
    let cancel = c.recv_where(|v| v["method"] == "notifications/cancelled");
    assert_eq!(cancel["params"]["requestId"], asked["id"], "{cancel}");
    assert!(
        cancel["params"]["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer within 2000 ms"),
        "{cancel}"
    );
    // The call that asked fails one way or the other at about the same time (its own
    // time runs out then too), and is answered. The gateway's error says whose silence
    // it was (it blamed the backend alone).
    let r = c.response(&json!(1));
    match r["error"]["message"].as_str() {
        Some(m) => assert!(
            m.ends_with("as it still waited for the client's answer to a request of its own"),
            "{r}"
        ),
        None => assert_eq!(r["result"]["isError"], true, "{r}"),
    }
    gw.wait_line("the client did not answer within 2000 ms");
    // The host's late answer is dropped; a new request is asked and answered.
    c.send(
        json!({"jsonrpc":"2.0","id":asked["id"],"result":{"role":"assistant",
        "content":{"type":"text","text":"late"},"model":"test"}}),
    );
    c.send(json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"one.sample","arguments":{"prompt":"again"}}}));
    let again = c.recv_where(|v| v["method"] == "sampling/createMessage");
    c.send(
        json!({"jsonrpc":"2.0","id":again["id"],"result":{"role":"assistant",
        "content":{"type":"text","text":"yes"},"model":"test"}}),
    );
    assert_eq!(text_of(&c.response(&json!(2))), "sampled: yes");
}
