"""Tracing's links that the one-trace test does not see, against the real OTLP
receiver: the router's gateway.connect span and the trace context it sends in the
WebSocket handshake (to a stand-in gateway that records the headers); a failed connect
as an error span; the gateway continuing a direct client's handshake context when
_meta carries none (or a malformed one); backend.connect; the message events and their
sizes; exports retried on a retryable refusal and given up on another; and no exporter
thread at all with tracing off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import socket
import threading
from pathlib import Path

import grpc
import pytest
from websockets.asyncio.server import serve
from websockets.sync.client import connect

from test_tracing import DEADLINE, Router, by_name, fixture_backend, one, run_session, tracing_toml

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class StandIn:
    """A WebSocket server speaking subprotocol `mcp` that records each handshake's
    headers and reads (and ignores) whatever it is sent."""

    def __init__(self) -> None:
        self.handshakes: queue.Queue = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(DEADLINE), "stand-in did not start"
        self.url = f"ws://127.0.0.1:{self.port}/mcp"

    def _run(self) -> None:
        async def handler(ws):
            async for _ in ws:
                pass

        def record(_conn, request):
            self.handshakes.put(request.headers)

        async def main():
            async with serve(handler, "127.0.0.1", 0, subprotocols=["mcp"],
                             process_request=record) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._stop = asyncio.get_running_loop().create_future()
                self._ready.set()
                await self._stop

        self._loop.run_until_complete(main())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(DEADLINE)


def test_the_router_sends_its_connect_span_in_the_handshake(tmp_path, receiver):
    gw = StandIn()
    router = Router(gw.url, tracing_toml(receiver.grpc_endpoint), tmp_path)
    try:
        headers = gw.handshakes.get(timeout=DEADLINE)
    finally:
        assert router.close() == 0, router.stderr()
        gw.close()
    # The router flushed its spans on exit: gateway.connect is there.
    connect_span = one(receiver.snapshot(), "mcp-router", "gateway.connect")
    assert connect_span["kind"] == "CLIENT" and connect_span["parent_span_id"] == ""
    assert connect_span["status"] != "ERROR", connect_span
    assert headers["traceparent"] == \
        f"00-{connect_span['trace_id']}-{connect_span['span_id']}-01", headers
    a = connect_span["attributes"]
    assert a["server.address"] == "127.0.0.1" and a["server.port"] == gw.port, a
    assert a["url.full"] == gw.url and a["network.transport"] == "tcp", a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_connect_is_an_error_span(tmp_path, receiver):
    # Nothing listens there. The query's value may be a credential: it appears in no
    # span and no log line.
    secret = "s3cr3t-query-token"
    url = f"ws://127.0.0.1:{free_port()}/mcp?access_token={secret}"
    router = Router(url, tracing_toml(receiver.grpc_endpoint), tmp_path,
                    env={"MCP_LOG": "debug"})
    try:
        spans = receiver.wait_for(lambda spans: any(
            s["name"] == "gateway.connect" and s["status"] == "ERROR" for s in spans))
    except BaseException:
        router.kill()
        raise
    assert router.close() == 0, router.stderr()
    failed = next(s for s in spans if s["name"] == "gateway.connect" and s["status"] == "ERROR")
    assert failed["kind"] == "CLIENT" and failed["status_message"], failed
    assert failed["attributes"].get("error.type"), failed
    assert failed["attributes"]["url.full"].endswith("/mcp?access_token=REDACTED"), failed
    for s in spans:
        assert secret not in json.dumps(s), s
    assert "unreachable" in router.stderr() and secret not in router.stderr(), router.stderr()


def test_a_refused_token_is_a_failed_auth_verify_in_the_clients_trace(start_gateway, tmp_path, receiver):
    """A handshake the gateway refuses for its token leaves a trace on the gateway too:
    auth.verify, failed, with auth.success false, under the router's gateway.connect;
    neither token appears in it."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("right-s3cr3t\n")
    bad.write_text("wrong-s3cr3t\n")
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + f'[auth]\ntoken_file = "{good}"\n'
                       + fixture_backend())
    router = Router(gw.url, f'token_file = "{bad}"\n' + tracing_toml(receiver.grpc_endpoint), tmp_path)
    try:
        # The gateway's span, and the router's failed connect it is the child of.
        receiver.wait_for(lambda spans: any(
            a["name"] == "auth.verify" and a["service"] == "mcp-gateway"
            and any(c["span_id"] == a["parent_span_id"] and c["name"] == "gateway.connect"
                    for c in spans)
            for a in spans))
    except BaseException:
        router.kill()
        raise
    router.kill()
    assert gw.terminate() == 0, gw.describe()
    spans = receiver.snapshot()
    auth = by_name(spans, "mcp-gateway", "auth.verify")[0]
    assert auth["status"] == "ERROR" and auth["attributes"]["auth.success"] is False, auth
    assert auth["attributes"]["auth.type"] == "bearer" and auth["attributes"]["error.type"] == "unauthorized"
    connect = [s for s in by_name(spans, "mcp-router", "gateway.connect") if s["span_id"] == auth["parent_span_id"]]
    assert len(connect) == 1 and connect[0]["status"] == "ERROR", (auth, spans)
    assert connect[0]["trace_id"] == auth["trace_id"]
    for s in spans:
        assert "s3cr3t" not in json.dumps(s), s


def test_refused_messages_are_failed_spans(start_gateway, tmp_path, receiver):
    """A message refused before it is a request (not JSON, a batch) still has its span:
    the router's stdio.read, the gateway's http.request, each failed with the error the
    peer is told and the id when it could be read."""
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + fixture_backend())
    router = Router(gw.url, tracing_toml(receiver.grpc_endpoint), tmp_path)
    try:
        router.initialize()
        router.proc.stdin.write(b'{"jsonrpc":"2.0","id":9,"method":"ping",\n')
        router.proc.stdin.flush()
        while True:
            m = router._q.get(timeout=DEADLINE)
            if m.get("id") == 9:
                break
        assert m["error"]["code"] == -32700, m
        with connect(gw.url, subprotocols=["mcp"]) as ws:
            ws.send('[{"jsonrpc":"2.0","id":4,"method":"ping"}]')
            answer = json.loads(ws.recv(timeout=DEADLINE))
            # A batch: its request answered under its id, in a batch.
            assert answer[0]["error"]["code"] == -32600 and answer[0]["id"] == 4, answer
    except BaseException:
        router.kill()
        raise
    assert router.close() == 0, router.stderr()
    assert gw.terminate() == 0, gw.describe()
    spans = receiver.snapshot()
    read = [s for s in by_name(spans, "mcp-router", "stdio.read") if s["status"] == "ERROR"]
    assert len(read) == 1, spans
    assert read[0]["attributes"]["jsonrpc.request.id"] == "9"
    assert read[0]["attributes"]["error.type"] == "-32700" and read[0]["parent_span_id"] == ""
    assert "stdio.message.read" in read[0]["events"]
    refused = [s for s in by_name(spans, "mcp-gateway", "http.request") if s["status"] == "ERROR"]
    assert len(refused) == 1, spans
    assert refused[0]["attributes"]["error.type"] == "-32600", refused[0]
    assert "batch" in refused[0]["status_message"], refused[0]


def direct_request(ws, id_, method, params) -> dict:
    ws.send(json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}))
    while True:
        m = json.loads(ws.recv(timeout=DEADLINE))
        if m.get("id") == id_:
            return m


def test_the_gateway_continues_the_handshake_context_without_meta(start_gateway, receiver):
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + fixture_backend())
    other_trace, other_parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    # Two tracestate headers are one list (W3C): the backend gets both members.
    with connect(gw.url, subprotocols=["mcp"],
                 additional_headers=[("traceparent", f"00-{TRACE}-{PARENT}-01"),
                                     ("tracestate", "x=1"), ("tracestate", "y=2")]) as ws:
        r = direct_request(ws, 1, "initialize", {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "direct", "version": "1"}})
        assert "result" in r, r
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        echo = {"name": "one.echo", "arguments": {"text": "x"}}
        assert "result" in direct_request(ws, 2, "tools/call", echo)
        bad = {**echo, "_meta": {"traceparent": "00-zz-not-a-context"}}
        assert "result" in direct_request(ws, 3, "tools/call", bad)
        own = {**echo, "_meta": {"traceparent": f"00-{other_trace}-{other_parent}-01"}}
        assert "result" in direct_request(ws, 4, "tools/call", own)
        meta = direct_request(ws, 5, "tools/call", {"name": "one.echo_meta", "arguments": {}})
        sent = json.loads(meta["result"]["content"][0]["text"])
        assert sent["tracestate"] == "x=1,y=2", sent
        assert sent["traceparent"].split("-")[1] == TRACE, sent
    assert gw.terminate() == 0, gw.describe()
    reqs = {s["attributes"]["jsonrpc.request.id"]: s
            for s in by_name(receiver.snapshot(), "mcp-gateway", "http.request")}
    # No `_meta` context, or a malformed one: the handshake's (docs/tracing.md).
    for id_ in ["1", "2", "3"]:
        assert (reqs[id_]["trace_id"], reqs[id_]["parent_span_id"]) == (TRACE, PARENT), reqs[id_]
    assert (reqs["4"]["trace_id"], reqs["4"]["parent_span_id"]) == (other_trace, other_parent)


def test_backend_starts_and_message_sizes_are_recorded(start_gateway, tmp_path, receiver):
    line = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "one.echo", "arguments": {"text": "sized"}}}

    def calls(r: Router):
        r.send(line)
        while True:
            m = r._q.get(timeout=DEADLINE)
            if m.get("id") == 7:
                return m

    gw, _, resp = run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint),
                              tracing_toml(receiver.grpc_endpoint), calls)
    spans = receiver.snapshot()
    # The backend was started for the client's initialize, under its http.request.
    start = one(spans, "mcp-gateway", "backend.connect")
    init = next(s for s in by_name(spans, "mcp-gateway", "http.request")
                if s["attributes"].get("mcp.method.name") == "initialize")
    assert start["kind"] == "CLIENT" and start["parent_span_id"] == init["span_id"], start
    assert start["attributes"]["process.pid"] > 0 and start["status"] != "ERROR", start
    assert start["attributes"]["gateway.service"] == "one", start
    # Sizes: what the router read from the host, sent over the WebSocket, and got back.
    req = next(s for s in by_name(spans, "mcp-router", "gateway.request")
               if s["attributes"].get("jsonrpc.request.id") == "7")
    stdio = next(s for s in spans if s["span_id"] == req["parent_span_id"])
    read = dict(stdio["event_attributes"])
    assert read["stdio.message.read"]["message.size"] == len(json.dumps(line)), stdio
    events = dict(req["event_attributes"])
    sent = events["websocket.message.sent"]["message.size"]
    # The router adds its trace context to what it forwards.
    assert sent > len(json.dumps(line)) + len('"_meta":{"traceparent":""}'), events
    answer = len(json.dumps(resp, separators=(",", ":")))
    assert events["websocket.message.received"]["message.size"] >= answer - 2, (events, resp)
    assert read.keys() | {"stdio.message.written"} == read.keys(), stdio


def test_a_dropped_oversized_answer_records_both_sizes(start_gateway, tmp_path, receiver):
    """An answer over the router's max_message_bytes (but under twice it) is dropped and
    the host told -32603: the spans record what came and what the host got instead,
    like any answer's."""
    def calls(r: Router):
        return r.request(3, "tools/call", {"name": "one.big", "arguments": {"bytes": 6000}})

    _, _, resp = run_session(start_gateway, tmp_path, tracing_toml(receiver.grpc_endpoint),
                             tracing_toml(receiver.grpc_endpoint)
                             + "[limits]\nmax_message_bytes = 4096\n", calls)
    assert resp["error"]["code"] == -32603, resp
    spans = receiver.snapshot()
    req = next(s for s in by_name(spans, "mcp-router", "gateway.request")
               if s["attributes"].get("jsonrpc.request.id") == "3")
    stdio = next(s for s in spans if s["span_id"] == req["parent_span_id"])
    assert req["attributes"]["error.type"] == "response_too_large", req
    received = dict(req["event_attributes"])["websocket.message.received"]["message.size"]
    written = dict(stdio["event_attributes"])["stdio.message.written"]["message.size"]
    assert received > 6000 and written == len(json.dumps(resp, separators=(",", ":"))), (received, written)


@contextlib.contextmanager
def direct_client(gw):
    """A WebSocket client straight to the gateway, initialized; closed on exit."""
    with connect(gw.url, subprotocols=["mcp"]) as ws:
        r = direct_request(ws, "init", "initialize", {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "direct", "version": "1"}})
        assert "result" in r, r
        yield ws


def echo_direct(ws, id_) -> None:
    r = direct_request(ws, id_, "tools/call", {"name": "one.echo", "arguments": {"text": "x"}})
    assert "result" in r, r


def gateway_span_of(id_):
    return lambda spans: any(s["name"] == "http.request"
                             and s["attributes"].get("jsonrpc.request.id") == id_
                             for s in spans)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_retryable_refusal_is_retried(start_gateway, receiver, protocol):
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    receiver.refuse_next = 2  # the first two tries: UNAVAILABLE / 503
    gw = start_gateway(tracing_toml(endpoint, protocol=protocol) + fixture_backend())
    with direct_client(gw) as ws:
        echo_direct(ws, 1)
        # Retried (backoff 100 ms, then 200 ms, within otlp_timeout = 2 s): it arrives.
        receiver.wait_for(gateway_span_of("1"))
    assert gw.terminate() == 0, gw.describe()
    assert receiver.refused == 2
    assert "span export failed" not in gw.log(), gw.log()


@pytest.mark.parametrize("delay", [1.2, "bare"])
def test_a_grpc_retry_info_delays_the_next_try(start_gateway, receiver, delay):
    """A collector that refuses with a google.rpc.RetryInfo (gRPC's Retry-After) is not
    tried again before that delay, where the backoff alone would wait 100 ms; with one,
    delay or not, RESOURCE_EXHAUSTED is retried too (without, OTLP says it is not)."""
    receiver.refuse_next, receiver.refuse_retry_delay = 1, delay
    receiver.refuse_grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    gw = start_gateway(tracing_toml(receiver.grpc_endpoint) + fixture_backend())
    with direct_client(gw) as ws:
        echo_direct(ws, 1)
        receiver.wait_for(gateway_span_of("1"))
    assert gw.terminate() == 0, gw.describe()
    assert receiver.refused == 1
    first, second = receiver.grpc_export_times[:2]
    assert second - first >= (1.2 if delay == 1.2 else 0.1), receiver.grpc_export_times
    assert "span export failed" not in gw.log(), gw.log()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_refusal_not_worth_retrying_loses_that_batch_only(start_gateway, receiver, protocol):
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    receiver.refuse_next, receiver.refuse_retryable = 1, False  # INVALID_ARGUMENT / 400
    gw = start_gateway(tracing_toml(endpoint, protocol=protocol) + fixture_backend())
    with direct_client(gw) as ws:
        echo_direct(ws, 1)
        gw.wait_log("span export failed")
        echo_direct(ws, 2)
        receiver.wait_for(gateway_span_of("2"))
    assert gw.terminate() == 0, gw.describe()
    assert receiver.refused == 1, "not tried again"
    # Whichever spans that export held (the batching decides) never came again.
    lost = set(receiver.refused_span_ids)
    assert lost, "the refused export held spans"
    assert not lost & {s["span_id"] for s in receiver.snapshot()}, "that batch is lost"


def export_threads(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass  # a thread that ended meanwhile
    return [n for n in names if n == "span-export"]


@pytest.mark.parametrize("enabled", [False, True])
def test_no_exporter_thread_with_tracing_off(start_gateway, tmp_path, receiver, enabled):
    tracing = tracing_toml(receiver.grpc_endpoint)
    if not enabled:
        tracing = tracing.replace("enabled = true", "enabled = false")
    gw = start_gateway(tracing + fixture_backend())
    router = Router(gw.url, tracing, tmp_path)
    try:
        router.initialize()
        assert router.request(1, "tools/call", {"name": "one.echo",
                                                "arguments": {"text": "x"}})["result"]
        want = ["span-export"] if enabled else []
        assert export_threads(gw.proc.pid) == want
        assert export_threads(router.proc.pid) == want
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
