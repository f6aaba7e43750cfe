//! Tracing off costs a request a check and nothing else (issue #3): every call the
//! router and gateway make on a request's path with a disabled `Telemetry` allocates
//! nothing. Measured with a counting global allocator (test binaries only).

use mcp_shared::jsonrpc::Message;
use mcp_shared::telemetry::{self, cx::Moment, propagation, Cx, Telemetry};
use opentelemetry::trace::SpanKind;

#[test]
fn a_request_allocates_nothing_for_tracing_when_it_is_off() {
    let tel = Telemetry::disabled();
    let mut msg = Message::parse(
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a.b","arguments":{}}}"#,
    )
    .unwrap();
    let resp = Message::parse(br#"{"jsonrpc":"2.0","id":7,"result":{"isError":true}}"#).unwrap();
    let info = allocation_counter::measure(|| {
        assert!(!tel.enabled());
        let at = Moment::new();
        let parent = propagation::extract_message(&msg);
        let root = tel.start_at("http.request", SpanKind::Server, &parent, &at, |_| {
            unreachable!("attributes are not built when off")
        });
        for step in ["auth.verify", "request.validate", "rate_limit.check"] {
            let s = tel.step_at(step, &root, &at, |_| unreachable!());
            s.end_at(&at);
        }
        let fwd = tel.start(
            "backend.forward",
            SpanKind::Client,
            &root,
            |_| unreachable!(),
        );
        propagation::inject_message(&fwd, &mut msg);
        fwd.event("websocket.message.sent", &[]);
        assert_eq!(telemetry::record_response(&fwd, &resp), None);
        telemetry::fail(&fwd, "tool_error", "failed");
        fwd.end();
        root.end_at(&at);
        assert!(propagation::headers_for(&Cx::default()).is_empty());
    });
    assert_eq!(info.count_total, 0, "{info:?}");
    // The check itself can fail: the same span API with tracing on does allocate.
    let on = Telemetry::init(
        &mcp_shared::config::TracingConfig {
            enabled: true,
            exporter_type: mcp_shared::config::ExporterType::Stdout,
            ..Default::default()
        },
        "test",
        "0",
        telemetry::stdout::Target::Stderr,
        128,
    )
    .unwrap();
    let info = allocation_counter::measure(|| {
        let root = on.start("http.request", SpanKind::Server, &Cx::default(), |_| {});
        root.end();
    });
    assert!(info.count_total > 0, "{info:?}");
}
