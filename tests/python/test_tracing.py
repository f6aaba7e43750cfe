"""Tracing end to end, against a real OTLP receiver (gRPC and HTTP/protobuf):
router -> gateway -> fixture backend yields one trace with the guide's span tree;
the backend receives the backend.forward context in _meta; failures give the error
trace; samplers behave (ratio 0 and always_off export nothing, the gateway follows an
unsampled router); the stdout tree; a collector that is down costs nothing.

Every assertion on "everything exported" is made after both processes have exited:
their shutdown flushes the span queue, so no sleeping is needed."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import BIN_DIR, router_env, toml_str, track

FIXTURE_BIN = BIN_DIR / "mcp-fixture"
DEADLINE = 15.0


def tracing_toml(endpoint: str | None, *, sampler="always_on", param=1.0, protocol="grpc",
                 exporter="otlp", extra="") -> str:
    lines = [
        "[tracing]",
        "enabled = true",
        f'sampler_type = "{sampler}"',
        f"sampler_param = {param}",
        f'exporter_type = "{exporter}"',
        f'otlp_protocol = "{protocol}"',
        'scheduled_delay = "50ms"',
        'otlp_timeout = "2s"',
    ]
    if endpoint:
        lines.append(f"otlp_endpoint = {toml_str(endpoint)}")
    return "\n".join(lines) + "\n" + extra


def fixture_backend(name="one") -> str:
    return (
        "[[backends]]\n"
        f'name = "{name}"\ntransport = "stdio"\n'
        f"command = {toml_str(str(FIXTURE_BIN))}\n"
        f'args = ["--name", "{name}"]\n'
    )


class Router:
    """mcp-router as a raw JSON-lines peer (no SDK: full control over _meta)."""

    def __init__(self, url: str, tracing: str, tmp: Path, binary: Path = BIN_DIR / "mcp-router",
                 env: dict | None = None):
        cfg = tmp / "router.toml"
        cfg.write_text(f"[gateway]\nurl = {toml_str(url)}\n{tracing}")
        self.stderr_path = tmp / "router.stderr"
        self._err = open(self.stderr_path, "w+")
        self.proc = track(subprocess.Popen(
            [str(binary), "--config", str(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            env={**router_env(), **(env or {})},
        ))
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._q.put(json.loads(line))

    def send(self, msg: dict) -> None:
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, id_, method, params=None) -> dict:
        msg = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        while True:
            m = self._q.get(timeout=DEADLINE)
            if m.get("id") == id_ and "method" not in m:
                return m

    def initialize(self, capabilities: dict | None = None) -> None:
        r = self.request("init", "initialize", {"protocolVersion": "2025-06-18",
                                                "capabilities": capabilities or {},
                                                "clientInfo": {"name": "tracing-test", "version": "1"}})
        assert "result" in r, r
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def close(self) -> int:
        """Closes stdin and returns the exit code; a router that does not exit within
        DEADLINE is killed and the test fails."""
        self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mcp-router did not exit within {DEADLINE} s of stdin's close:\n{self.stderr()}")
        self._err.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def run_session(start_gateway, tmp_path, gw_tracing, router_tracing, calls, capabilities=None):
    """Starts gateway + router (the host declaring `capabilities`), runs
    `calls(router)`, stops both (flushing spans)."""
    gw = start_gateway(gw_tracing + fixture_backend())
    router = Router(gw.url, router_tracing, tmp_path)
    try:
        router.initialize(capabilities)
        result = calls(router)
    except BaseException:
        # The test's own failure is the one to report; the processes just go.
        router.kill()
        gw.terminate()
        raise
    assert router.close() == 0, router.stderr()
    assert gw.terminate() == 0, gw.describe()
    return gw, router, result


def by_name(spans, service, name):
    return [s for s in spans if s["service"] == service and s["name"] == name]


def one(spans, service, name):
    found = by_name(spans, service, name)
    assert len(found) == 1, f"expected one {service}/{name}, got {len(found)}: {spans}"
    return found[0]


def trace_of(spans, trace_id):
    return [s for s in spans if s["trace_id"] == trace_id]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_one_trace_across_router_gateway_and_backend(start_gateway, tmp_path, receiver, protocol):
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint

    secret = "s3cr3t-arg-value"

    def calls(r: Router):
        meta = r.request(7, "tools/call", {"name": "one.echo_meta",
                                           "arguments": {"password": secret}})
        return meta, r.request(8, "tools/call", {"name": "one.echo_line", "arguments": {}})

    _, _, (resp, line_resp) = run_session(start_gateway, tmp_path,
                             tracing_toml(endpoint, protocol=protocol, extra='otlp_headers = { x-test = "yes" }\n'),
                             tracing_toml(endpoint, protocol=protocol), calls)
    spans = receiver.snapshot()
    assert all(s["transport"] == ("grpc" if protocol == "grpc" else "http") for s in spans)
    assert any(m.get("x-test") == "yes" for m in receiver.metadata), "otlp_headers are sent"
    # The tools/call trace: find the router's gateway.request span for id 7.
    req = [s for s in by_name(spans, "mcp-router", "gateway.request")
           if s["attributes"].get("jsonrpc.request.id") == "7"]
    assert len(req) == 1, spans
    trace = trace_of(spans, req[0]["trace_id"])
    stdio = one(trace, "mcp-router", "stdio.read")
    gw_req = one(trace, "mcp-gateway", "http.request")
    fwd = one(trace, "mcp-gateway", "backend.forward")
    # Parent links and kinds, as in the guide's example trace.
    assert stdio["parent_span_id"] == "" and stdio["kind"] == "SERVER"
    assert req[0]["parent_span_id"] == stdio["span_id"] and req[0]["kind"] == "CLIENT"
    assert gw_req["parent_span_id"] == req[0]["span_id"] and gw_req["kind"] == "SERVER"
    for child in ["auth.verify", "request.validate", "rate_limit.check", "discovery.resolve"]:
        assert one(trace, "mcp-gateway", child)["parent_span_id"] == gw_req["span_id"], child
    assert fwd["parent_span_id"] == gw_req["span_id"] and fwd["kind"] == "CLIENT"
    # Attributes of both conventions; no secrets: the call's arguments are in no
    # attribute or event attribute of any span, under any key.
    for s in spans:
        values = [str(v) for v in s["attributes"].values()]
        values += [str(v) for _, attrs in s["event_attributes"] for v in attrs.values()]
        assert not any(secret in v for v in values), s
    a = gw_req["attributes"]
    assert a["mcp.method.name"] == "tools/call" and a["gen_ai.tool.name"] == "one.echo_meta"
    assert a["jsonrpc.request.id"] == "7" and a["mcp.method"] == "tools/call"
    assert fwd["attributes"]["gen_ai.tool.name"] == "echo_meta"
    assert fwd["attributes"]["gateway.service"] == "one"
    assert one(trace, "mcp-gateway", "rate_limit.check")["attributes"]["ratelimit.limited"] is False
    assert one(trace, "mcp-gateway", "auth.verify")["attributes"]["auth.success"] is True
    assert stdio["resource"]["service.version"] and gw_req["resource"]["service.name"] == "mcp-gateway"
    # The backend got backend.forward's context in _meta.
    meta = json.loads(resp["result"]["content"][0]["text"])
    assert meta["traceparent"] == f"00-{fwd['trace_id']}-{fwd['span_id']}-01"
    # backend.forward records the id the backend was sent (the gateway's own for that
    # process), not the client's.
    sent = json.loads(line_resp["result"]["content"][0]["text"])
    req8 = [s for s in by_name(spans, "mcp-router", "gateway.request")
            if s["attributes"].get("jsonrpc.request.id") == "8"]
    fwd8 = one(trace_of(spans, req8[0]["trace_id"]), "mcp-gateway", "backend.forward")
    assert fwd8["attributes"]["jsonrpc.request.id"] == str(sent["id"]) != "8", (fwd8, sent)
    # The initialize span carries the version the session agreed on.
    init = [s for s in by_name(spans, "mcp-gateway", "http.request")
            if s["attributes"].get("mcp.method.name") == "initialize"]
    assert len(init) == 1 and init[0]["attributes"]["mcp.protocol.version"] == "2025-06-18", init
    # So do the router's spans of the requests after it (the gateway's answer says it).
    for s in (stdio, req[0]):
        assert s["attributes"]["mcp.protocol.version"] == "2025-06-18", s
    # The gateway's session id, from its handshake, on the router's request and
    # connection spans: the router's side of the session is found by it.
    session = gw_req["attributes"]["mcp.session.id"]
    assert re.fullmatch(r"[0-9a-f]{16}-1", session), session
    assert req[0]["attributes"]["mcp.session.id"] == session, (req[0], gw_req)
    connects = by_name(spans, "mcp-router", "gateway.connect")
    assert [c["attributes"].get("mcp.session.id") for c in connects] == [session], connects
    assert "mcp.session.id" not in stdio["attributes"], stdio
    # Typical span payload stays small (budget: 300 bytes).
    sizes = sorted(s["size"] for s in trace)
    print("span sizes", sizes, "mean", sum(sizes) / len(sizes))
    assert sum(sizes) / len(sizes) <= 300, sizes


def test_basic_span_detail_turns_the_short_steps_into_events(start_gateway, tmp_path, receiver):
    """span_detail = "basic": http.request and backend.forward stay spans; the four short
    steps are events on http.request, and an unknown tool still fails http.request."""
    def calls(r: Router):
        ok = r.request(7, "tools/call", {"name": "one.echo", "arguments": {"text": "hi"}})
        bad = r.request(8, "tools/call", {"name": "nope.echo", "arguments": {}})
        return ok, bad

    _, _, (ok, bad) = run_session(
        start_gateway, tmp_path,
        tracing_toml(receiver.grpc_endpoint, extra='span_detail = "basic"\n'),
        tracing_toml(receiver.grpc_endpoint), calls)
    assert "result" in ok and "error" in bad
    spans = receiver.snapshot()
    names = {s["name"] for s in spans if s["resource"]["service.name"] == "mcp-gateway"}
    steps = {"auth.verify", "request.validate", "rate_limit.check", "discovery.resolve"}
    assert not names & steps, names
    by_id = {}
    for s in by_name(spans, "mcp-gateway", "http.request"):
        by_id[s["attributes"]["jsonrpc.request.id"]] = s
    good, failed = by_id["7"], by_id["8"]
    for s in (good, failed):
        assert steps <= set(s["events"]), s["events"]
    fwd = one(trace_of(spans, good["trace_id"]), "mcp-gateway", "backend.forward")
    assert fwd["parent_span_id"] == good["span_id"]
    assert good["status"] != "ERROR" and failed["status"] == "ERROR", (good, failed)
    # The failed step and the error response both show on http.request, and no key is
    # written twice (OTLP forbids duplicate attribute keys).
    assert failed["events"].count("exception") == 2, failed["events"]
    for s in spans:
        keys = s["attribute_keys"]
        assert len(keys) == len(set(keys)), (s["name"], keys)


def test_backend_crash_yields_the_error_trace(start_gateway, tmp_path, receiver):
    def calls(r: Router):
        return r.request("boom", "tools/call", {"name": "one.crash", "arguments": {}})

    gw, _, resp = run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint),
                              tracing_toml(receiver.grpc_endpoint), calls)
    assert resp["error"]["code"] == -32000
    spans = receiver.snapshot()
    fwd = [s for s in by_name(spans, "mcp-gateway", "backend.forward") if s["attributes"].get("gen_ai.tool.name") == "crash"]
    assert len(fwd) == 1, spans
    trace = trace_of(spans, fwd[0]["trace_id"])
    assert fwd[0]["status"] == "ERROR" and "exited" in fwd[0]["status_message"]
    assert fwd[0]["attributes"]["error.type"] == "backend_exited"
    for service, name in [("mcp-gateway", "http.request"), ("mcp-router", "gateway.request"), ("mcp-router", "stdio.read")]:
        assert one(trace, service, name)["status"] == "ERROR", name
    req = one(trace, "mcp-router", "gateway.request")
    assert req["attributes"]["rpc.response.status_code"] == "-32000", req
    # The gateway's log line about the failure leads to the trace.
    failed = [l for l in gw.lines if "tools/call" in l and "failed" in l]
    assert failed and f"trace_id={fwd[0]['trace_id']}" in failed[0], gw.log()


def test_tool_error_marks_the_spans(start_gateway, tmp_path, receiver):
    def calls(r: Router):
        return r.request(3, "tools/call", {"name": "one.fail", "arguments": {}})

    _, _, resp = run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint),
                             tracing_toml(receiver.grpc_endpoint), calls)
    assert resp["result"]["isError"] is True
    spans = receiver.snapshot()
    fwd = [s for s in by_name(spans, "mcp-gateway", "backend.forward") if s["attributes"].get("gen_ai.tool.name") == "fail"]
    assert fwd and fwd[0]["attributes"]["error.type"] == "tool_error" and fwd[0]["status"] == "ERROR"
    # The router reads the outcome of the response it relays (without parsing its
    # result whole): both its spans fail the same way.
    trace = trace_of(spans, fwd[0]["trace_id"])
    for name in ["gateway.request", "stdio.read"]:
        span = one(trace, "mcp-router", name)
        assert span["attributes"]["error.type"] == "tool_error" and span["status"] == "ERROR", span


def test_ratio_zero_exports_nothing_and_the_gateway_follows(start_gateway, tmp_path, receiver):
    def calls(r: Router):
        return r.request(1, "tools/call", {"name": "one.echo_meta", "arguments": {}})

    _, _, resp = run_session(start_gateway, tmp_path,
                             tracing_toml(receiver.grpc_endpoint, sampler="always_on"),
                             tracing_toml(receiver.grpc_endpoint, sampler="traceidratio", param=0.0), calls)
    meta = json.loads(resp["result"]["content"][0]["text"])
    assert meta["traceparent"].endswith("-00"), "the unsampled flag is passed on"
    # gateway.connect has no parent and ratio 0 drops it too: nothing at all.
    assert receiver.snapshot() == []


def test_always_off_records_nothing_in_that_service(start_gateway, tmp_path, receiver):
    def calls(r: Router):
        return r.request(1, "tools/call", {"name": "one.echo_meta", "arguments": {}})

    _, _, resp = run_session(start_gateway, tmp_path,
                             tracing_toml(receiver.grpc_endpoint, sampler="always_off"),
                             tracing_toml(receiver.grpc_endpoint, sampler="always_on"), calls)
    spans = receiver.snapshot()
    assert spans and {s["service"] for s in spans} == {"mcp-router"}
    meta = json.loads(resp["result"]["content"][0]["text"])
    assert meta["traceparent"].endswith("-00"), "always_off passes an unsampled flag on"
    # And with both off, nothing is exported.
    receiver.spans.clear()
    run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint, sampler="always_off"),
                tracing_toml(receiver.grpc_endpoint, sampler="always_off"), calls)
    assert receiver.snapshot() == []


def test_host_trace_context_is_continued(start_gateway, tmp_path, receiver):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    host_span = "00f067aa0ba902b7"

    def calls(r: Router):
        r.request(5, "tools/call", {"name": "one.echo", "arguments": {"text": "x"},
                                    "_meta": {"traceparent": f"00-{trace_id}-{host_span}-01", "progressToken": 9}})
        # A malformed traceparent starts a new root and is not an error.
        return r.request(6, "tools/call", {"name": "one.echo", "arguments": {"text": "y"},
                                           "_meta": {"traceparent": "00-garbage"}})

    _, _, resp = run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint),
                             tracing_toml(receiver.grpc_endpoint), calls)
    assert resp["result"]["content"][0]["text"] == "y"
    spans = receiver.snapshot()
    stdio = [s for s in by_name(spans, "mcp-router", "stdio.read") if s["attributes"].get("jsonrpc.request.id") == "5"][0]
    assert stdio["trace_id"] == trace_id and stdio["parent_span_id"] == host_span
    other = [s for s in by_name(spans, "mcp-router", "stdio.read") if s["attributes"].get("jsonrpc.request.id") == "6"][0]
    assert other["parent_span_id"] == "" and other["trace_id"] != trace_id


def test_backend_request_to_the_host_is_traced(start_gateway, tmp_path, receiver):
    """A backend's request to the host (sampling) is in the trace of the tool call that
    caused it: the gateway's client.forward under the backend.forward of that call (the
    fixture sends no context) or under the context the backend sent, the router's
    host.request under client.forward; the host gets host.request's context, its answer's
    stdio.read is a child of host.request, and an error answer fails both spans."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    backend_span = "b7ad6b7169203331"
    seen = {}

    def sample(r: Router, id_, arguments, answer):
        r.send({"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                "params": {"name": "one.sample", "arguments": arguments,
                           "_meta": {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}}})
        while True:
            m = r._q.get(timeout=DEADLINE)
            if m.get("method") == "sampling/createMessage":
                seen[id_] = m
                r.send({"jsonrpc": "2.0", "id": m["id"], **answer})
            elif m.get("id") == id_ and "method" not in m:
                return m

    def calls(r: Router):
        ok = sample(r, 1, {"prompt": "hi"}, {"result": {
            "role": "assistant", "content": {"type": "text", "text": "fine"}, "model": "m"}})
        refused = sample(r, 2, {"prompt": "no", "traceparent": f"00-{trace_id}-{backend_span}-01"},
                         {"error": {"code": -1, "message": "the user declined"}})
        return ok, refused

    _, _, (ok, refused) = run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint),
                                      tracing_toml(receiver.grpc_endpoint), calls,
                                      capabilities={"sampling": {}})
    assert ok["result"]["content"][0]["text"] == "sampled: fine", ok
    assert refused["result"]["isError"] is True, refused
    spans = receiver.snapshot()
    assert {s["trace_id"] for s in spans if s["name"] in ("client.forward", "host.request")} == {trace_id}
    fwd = [s for s in by_name(spans, "mcp-gateway", "backend.forward")
           if s["attributes"].get("gen_ai.tool.name") == "sample"]
    client_fwd = by_name(spans, "mcp-gateway", "client.forward")
    host_req = by_name(spans, "mcp-router", "host.request")
    assert len(fwd) == 2 and len(client_fwd) == 2 and len(host_req) == 2, spans
    # In order of the calls (the second one's spans start after the first's ended).
    fwd.sort(key=lambda s: s["start"])
    client_fwd.sort(key=lambda s: s["start"])
    host_req.sort(key=lambda s: s["start"])
    # Without context from the backend: under the backend.forward of the call.
    assert client_fwd[0]["parent_span_id"] == fwd[0]["span_id"], (client_fwd[0], fwd[0])
    # With the backend's own context: under it.
    assert client_fwd[1]["parent_span_id"] == backend_span, client_fwd[1]
    for c, h, id_ in zip(client_fwd, host_req, (1, 2)):
        assert c["kind"] == "CLIENT" and h["kind"] == "CLIENT"
        assert c["attributes"]["mcp.method.name"] == "sampling/createMessage"
        assert c["attributes"]["gateway.service"] == "one"
        assert h["parent_span_id"] == c["span_id"], (h, c)
        # The host got host.request's context in _meta (and the backend's token).
        meta = seen[id_]["params"]["_meta"]
        assert meta["traceparent"] == f"00-{trace_id}-{h['span_id']}-01", meta
        assert "progressToken" in meta
        # The host's answer: its stdio.read is a child of host.request.
        answer = [s for s in by_name(spans, "mcp-router", "stdio.read")
                  if s["parent_span_id"] == h["span_id"]]
        assert len(answer) == 1, answer
        assert answer[0]["attributes"]["jsonrpc.request.id"] == str(seen[id_]["id"]), answer
        assert h["attributes"]["jsonrpc.request.id"] == str(seen[id_]["id"]), h
    assert client_fwd[0]["status"] != "ERROR" and host_req[0]["status"] != "ERROR"
    # Near the per-span budget (300 bytes, which is for a typical request's spans:
    # test_one_trace_across_router_gateway_and_backend) when all goes well. The
    # gateway's client.forward carries the session id, 18 bytes for the first session
    # (16 random hex digits, `-1`): 309 bytes measured on 12-07.
    print("client.forward", client_fwd[0]["size"], "host.request", host_req[0]["size"])
    assert client_fwd[0]["size"] <= 320 and host_req[0]["size"] <= 300
    for s in (client_fwd[1], host_req[1]):
        assert s["status"] == "ERROR" and s["status_message"] == "the user declined", s
        assert s["attributes"]["rpc.response.status_code"] == "-1", s


@pytest.mark.parametrize("ending", ["backend_exit", "gateway_shutdown"])
def test_backend_request_voided_by_the_backends_exit_ends_its_spans(start_gateway, tmp_path, receiver, ending):
    """The backend exits while the host holds its sampling request: the gateway's
    client.forward fails (backend_exited) and the router's host.request ends marked
    cancelled when the gateway's notice reaches it: no span is left open. Or the
    gateway shuts down meanwhile: client.forward says so (gateway_shutdown)."""
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + fixture_backend())
    router = Router(gw.url, tracing_toml(receiver.grpc_endpoint), tmp_path)
    try:
        router.initialize({"sampling": {}})
        router.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "one.sample", "arguments": {"prompt": "hi"}}})
        while True:
            asked = router._q.get(timeout=DEADLINE)
            if asked.get("method") == "sampling/createMessage":
                break
        if ending == "gateway_shutdown":
            assert gw.terminate() == 0, gw.describe()
            assert router.close() == 0, router.stderr()
            client_fwd = one(receiver.snapshot(), "mcp-gateway", "client.forward")
            assert client_fwd["status"] == "ERROR", client_fwd
            assert client_fwd["attributes"]["error.type"] == "gateway_shutdown", client_fwd
            return
        router.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {"name": "one.crash", "arguments": {}}})
        notices, answers = [], {}
        while len(notices) < 1 or len(answers) < 2:
            m = router._q.get(timeout=DEADLINE)
            if m.get("method") == "notifications/cancelled":
                notices.append(m)
            elif m.get("id") in (1, 2):
                answers[m["id"]] = m
        assert all("error" in a for a in answers.values()), answers
    except BaseException:
        router.kill()
        gw.terminate()
        raise
    assert router.close() == 0, router.stderr()
    assert gw.terminate() == 0, gw.describe()
    assert any(m.get("params", {}).get("requestId") == asked["id"] for m in notices), notices
    spans = receiver.snapshot()
    client_fwd = one(spans, "mcp-gateway", "client.forward")
    host_req = one(spans, "mcp-router", "host.request")
    assert client_fwd["status"] == "ERROR" and client_fwd["attributes"]["error.type"] == "backend_exited", client_fwd
    assert host_req["parent_span_id"] == client_fwd["span_id"]
    assert host_req["attributes"].get("mcp.request.cancelled") is True, host_req
    assert host_req["end"] >= host_req["start"] > 0


@pytest.mark.parametrize("ending", ["cancel", "client_gone", "shutdown"])
def test_abandoned_requests_record_why(start_gateway, tmp_path, receiver, ending):
    """A request in flight at the backend that is never answered: the client's
    cancellation marks the gateway's spans cancelled (not an error, as MCP says), the
    client's disconnection and the gateway's shutdown fail http.request with their
    cause; backend.forward is marked cancelled and keeps the id the backend was sent."""
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + fixture_backend())
    router = Router(gw.url, tracing_toml(receiver.grpc_endpoint), tmp_path)
    try:
        router.initialize()
        router.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "one.sleep", "arguments": {"ms": 20000, "progress_every": 50},
                                "_meta": {"progressToken": "p"}}})
        # The backend is at work on it once it reports progress.
        while router._q.get(timeout=DEADLINE).get("method") != "notifications/progress":
            pass
        if ending == "cancel":
            router.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                         "params": {"requestId": 1}})
            assert router.request(2, "ping")["result"] == {}
            assert router.close() == 0, router.stderr()
            assert gw.terminate() == 0, gw.describe()
        elif ending == "client_gone":
            router.kill()
            assert gw.terminate() == 0, gw.describe()
        else:
            assert gw.terminate() == 0, gw.describe()
            router.close()
    except BaseException:
        router.kill()
        gw.terminate()
        raise
    spans = receiver.snapshot()
    req = [s for s in by_name(spans, "mcp-gateway", "http.request")
           if s["attributes"].get("gen_ai.tool.name") == "one.sleep"]
    assert len(req) == 1, spans
    trace = trace_of(spans, req[0]["trace_id"])
    fwd = one(trace, "mcp-gateway", "backend.forward")
    for s in (req[0], fwd):
        assert s["attributes"].get("mcp.request.cancelled") is True, s
    assert fwd["attributes"]["jsonrpc.request.id"].isdigit(), fwd
    assert fwd["status"] != "ERROR", fwd
    if ending == "cancel":
        assert req[0]["status"] != "ERROR", req[0]
    else:
        want = {"client_gone": "client_disconnected", "shutdown": "gateway_shutdown"}[ending]
        assert req[0]["status"] == "ERROR" and req[0]["attributes"]["error.type"] == want, req[0]


TREE_LINE = re.compile(r"\((?:[0-9.]+(?:ms|µs))\)")
TRACE_ID = re.compile(r" trace_id=([0-9a-f]{32})")


def test_stdout_tree(start_gateway, tmp_path):
    def calls(r: Router):
        r.request(1, "tools/call", {"name": "one.echo", "arguments": {"text": "x"}})
        return r.request(2, "tools/call", {"name": "one.crash", "arguments": {}})

    gw, router, _ = run_session(start_gateway, tmp_path, tracing_toml(None, exporter="stdout"),
                                tracing_toml(None, exporter="stdout"), calls)
    gw_out = "\n".join(l[len("[stdout] "):] for l in gw.lines if l.startswith("[stdout] "))
    gw_out = TREE_LINE.sub("(…)", gw_out)
    # Each tree's top line names the request and its trace (one id per tree, and the
    # same in both services' trees of one request).
    gw_ids = TRACE_ID.findall(gw_out)
    r_ids = TRACE_ID.findall(router.stderr())
    assert len(gw_ids) >= 2 and set(gw_ids) <= set(r_ids), (gw_ids, r_ids)
    gw_out = TRACE_ID.sub(" trace_id=…", gw_out)
    assert (
        "mcp-gateway: http.request (…) tools/call one.echo trace_id=…\n"
    ) in gw_out, gw_out
    assert (
        "mcp-gateway: http.request (…) [ERROR] tools/call one.crash trace_id=…\n"
        "  ├─ mcp-gateway: auth.verify (…)\n"
        "  ├─ mcp-gateway: request.validate (…)\n"
        "  ├─ mcp-gateway: rate_limit.check (…)\n"
        "  ├─ mcp-gateway: discovery.resolve (…)\n"
        "  └─ mcp-gateway: backend.forward (…) [ERROR]\n"
        "      └─ error: \"backend \\\"one\\\" exited (exit status: 3)\"\n"
    ) in gw_out + "\n", gw_out
    r_out = TRACE_ID.sub(" trace_id=…", TREE_LINE.sub("(…)", router.stderr()))
    assert (
        "mcp-router: stdio.read (…) tools/call one.echo trace_id=…\n"
        "  └─ mcp-router: gateway.request (…)\n"
    ) in r_out, r_out
    assert (
        "mcp-router: stdio.read (…) [ERROR] tools/call one.crash trace_id=…\n"
        "  └─ mcp-router: gateway.request (…) [ERROR]\n      └─ error:"
    ) in r_out, r_out


def test_collector_down_costs_nothing(start_gateway, tmp_path):
    # A collector that takes connections and never answers: every export waits out its
    # timeout, so the span queue (64) fills and what comes after is dropped and counted,
    # while every request is still answered.
    import re
    import socket
    import urllib.request
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    small_queue = 'max_queue_size = 64\nmax_export_batch_size = 16\n'
    requests = 200

    def calls(r: Router):
        # Waves of 50 (the gateway's default max_in_flight is 64 per session).
        for wave in range(requests // 50):
            for i in range(wave * 50, wave * 50 + 50):
                r.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                        "params": {"name": "one.echo", "arguments": {"text": str(i)}}})
            got = 0
            while got < 50:
                m = r._q.get(timeout=DEADLINE)
                if "id" in m and "method" not in m:
                    assert m["result"]["content"][0]["text"] == str(m["id"]), m
                    got += 1
        gw = gw_holder[0]
        line = next(l for l in gw.lines if "admin endpoints on http://" in l)
        addr = re.search(r"http://([^ ]+) ", line).group(1)
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
            return resp.read().decode()

    gw_holder = []
    orig = start_gateway

    def start(text, **kw):
        gw = orig(text, **kw)
        gw_holder.append(gw)
        return gw

    admin = '[admin]\nlisten = "127.0.0.1:0"\n'
    try:
        gw, router, metrics = run_session(
            start, tmp_path, tracing_toml(endpoint, extra=small_queue) + admin,
            tracing_toml(endpoint, extra=small_queue), calls)
    finally:
        silent.close()

    def sample(name):
        m = re.search(rf"^{name} (\d+)$", metrics, re.M)
        assert m, f"{name} not in:\n{metrics}"
        return int(m.group(1))

    # Six gateway spans per request (full detail). Only the queue (64) and the batch
    # being exported (16) may be held; everything else was dropped, none exported.
    spans = 6 * requests
    dropped = sample("mcp_gateway_spans_dropped_total")
    assert dropped >= spans - 64 - 16, f"only {dropped} of {spans} spans dropped:\n{metrics}"
    assert sample("mcp_gateway_spans_exported_total") == 0, metrics
    assert "dropped" in router.stderr(), router.stderr()
    assert "dropped" in gw.log(), gw.log()


SDK2_PYTHON = Path(__file__).resolve().parents[2] / ".cache" / "venv-mcp2" / "bin" / "python"
SDK2_BACKEND = Path(__file__).resolve().parent / "sdk2_backend.py"


def test_python_sdk2_backend_continues_our_trace(start_gateway, tmp_path, receiver):
    if not SDK2_PYTHON.exists():
        pytest.fail(f"{SDK2_PYTHON} missing: run bash tests/setup.sh", pytrace=False)
    backend = (
        "[[backends]]\n"
        'name = "py"\ntransport = "stdio"\n'
        f"command = {toml_str(str(SDK2_PYTHON))}\n"
        f"args = [{toml_str(str(SDK2_BACKEND))}]\n"
        f"env = {{ OTLP_ENDPOINT = {toml_str(receiver.grpc_endpoint)} }}\n"
    )
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + backend)
    router = Router(gw.url, tracing_toml(receiver.grpc_endpoint), tmp_path)
    try:
        router.initialize()
        resp = router.request("s", "tools/call", {"name": "py.shout", "arguments": {"text": "hi"}})
        assert resp["result"]["content"][0]["text"] == "HI", resp
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    # The backend exports synchronously (SimpleSpanProcessor): its span is there once
    # its process has exited, which the gateway's shutdown waited for.
    spans = receiver.wait_for(lambda ss: any(s["service"] == "sdk2-backend" and s["name"] == "tools/call shout" for s in ss))
    theirs = [s for s in spans if s["service"] == "sdk2-backend" and s["name"] == "tools/call shout"][0]
    fwd = [s for s in by_name(spans, "mcp-gateway", "backend.forward") if s["attributes"].get("gen_ai.tool.name") == "shout"]
    assert len(fwd) == 1, spans
    assert theirs["parent_span_id"] == fwd[0]["span_id"]
    assert theirs["trace_id"] == fwd[0]["trace_id"]
    stdio = one(trace_of(spans, theirs["trace_id"]), "mcp-router", "stdio.read")
    assert stdio["parent_span_id"] == "", "one trace from the router's root to the backend"
