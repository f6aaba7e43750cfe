"""The OTLP exporter's standard environment variables, end to end: with only
OTEL_EXPORTER_OTLP_ENDPOINT (a base URL with a path, as hosted collectors give them) and
OTEL_EXPORTER_OTLP_PROTOCOL, both binaries post to <base>/v1/traces; the traces-only
variables (OTEL_EXPORTER_OTLP_TRACES_*) win over the generic ones, and the traces-only
endpoint is used as the URL itself. The receiver answers 404 on any other path, so a
wrong path shows up as spans that never arrive. OTEL_TRACES_EXPORTER picks the exporter
over the file's `exporter_type` (`console`: the stdout tree) or turns tracing off
(`none`)."""

from __future__ import annotations

import pytest

from test_otlp_transport import echo, exported, sent
from test_tracing import Router, fixture_backend, tracing_toml
from test_tracing_links import export_threads


def run_one_request(start_gateway, tmp_path, receiver, tracing=None,
                    arrived=None) -> tuple[str, str]:
    """One echo through router and gateway, both with `tracing` (by default gRPC and no
    endpoint: everything else comes from the variables); returns both logs once
    `arrived(spans)` holds (by default: the gateway's span of it and a router span)."""
    tracing = tracing or tracing_toml(None, protocol="grpc")
    gw = start_gateway(tracing + fixture_backend())
    router = Router(gw.url, tracing, tmp_path)
    sent.clear()
    try:
        router.initialize()
        echo(router, 1)
        if arrived:
            receiver.wait_for(arrived)
        else:
            exported(receiver, 1)
            receiver.wait_for(lambda spans: any(s["service"] == "mcp-router" for s in spans))
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    return gw.log(), router.stderr()


def test_the_generic_endpoint_is_a_base_for_v1_traces(start_gateway, tmp_path, receiver,
                                                       monkeypatch):
    receiver.http_paths = {"/otlp/v1/traces"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint + "/otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    gw_log, router_err = run_one_request(start_gateway, tmp_path, receiver)
    spans = receiver.snapshot()
    assert {s["service"] for s in spans} == {"mcp-router", "mcp-gateway"}, spans
    assert all(s["transport"] == "http" for s in spans), spans
    assert set(receiver.http_requested) == {"/otlp/v1/traces"}, receiver.http_requested
    assert "span export failed" not in gw_log + router_err


def test_traces_only_variables_win(start_gateway, tmp_path, receiver, monkeypatch):
    receiver.http_paths = {"/custom/traces"}
    # The generic variables point at the receiver's gRPC port: spans arriving over
    # gRPC would mean they were used.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-which=generic,x-generic=1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                       receiver.http_endpoint + "/custom/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-which=traces")
    gw_log, router_err = run_one_request(start_gateway, tmp_path, receiver)
    spans = receiver.snapshot()
    assert {s["service"] for s in spans} == {"mcp-router", "mcp-gateway"}, spans
    assert all(s["transport"] == "http" for s in spans), "nothing went to the gRPC port"
    assert set(receiver.http_requested) == {"/custom/traces"}, receiver.http_requested
    assert all(m.get("x-which") == "traces" and m.get("x-generic") == "1"
               for m in receiver.metadata), receiver.metadata
    assert "span export failed" not in gw_log + router_err


def test_the_guides_endpoint_without_a_scheme_and_resource_attributes(
        start_gateway, tmp_path, receiver, monkeypatch):
    # The guide's deployment example writes `otel-collector:4317` with
    # `otlp_insecure = true`: plain-text gRPC to that address.
    hostport = receiver.grpc_endpoint.removeprefix("http://")
    tracing = tracing_toml(hostport, protocol="grpc",
                           extra='otlp_insecure = true\nenvironment = "from-file"\n')
    # service.name here loses to OTEL_SERVICE_NAME; the environment here wins over
    # the file's; other keys are added (percent-decoded).
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES",
                       "service.name=from-attrs,deployment.environment.name=prod%2Deu,"
                       "host.name=edge%201")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    # Both services carry the same name here: the request's span on each side is
    # waited for by its name.
    run_one_request(start_gateway, tmp_path, receiver, tracing,
                    arrived=lambda spans: {"http.request", "gateway.request"} <= {
                        s["name"] for s in spans
                        if s["attributes"].get("jsonrpc.request.id") == "1"})
    spans = receiver.snapshot()
    assert all(s["transport"] == "grpc" for s in spans), spans
    resources = {tuple(sorted(s["resource"].items())) for s in spans}
    for r in map(dict, resources):
        assert r["service.name"] == "from-service-name", r
        assert r["deployment.environment.name"] == "prod-eu", r
        assert r["host.name"] == "edge 1", r


@pytest.mark.parametrize("exporter", ["console", "none"])
def test_otel_traces_exporter_replaces_the_files_exporter(start_gateway, tmp_path, receiver,
                                                          monkeypatch, exporter):
    # Both files export OTLP to the receiver; the variable says otherwise.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
    tracing = tracing_toml(receiver.grpc_endpoint)
    gw = start_gateway(tracing + fixture_backend())
    router = Router(gw.url, tracing, tmp_path)
    try:
        router.initialize()
        echo(router, 1)
        threads = {"gateway": export_threads(gw.proc.pid),
                   "router": export_threads(router.proc.pid)}
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    # Both have stopped, so whatever either had to export has been sent by now.
    assert receiver.snapshot() == [], "nothing went to the file's collector"
    gw_tree = "\n".join(l for l in gw.lines if l.startswith("[stdout] "))
    if exporter == "console":
        # The stdout exporter runs on its own thread too.
        assert threads == {"gateway": ["span-export"], "router": ["span-export"]}, threads
        assert "mcp-gateway: http.request (" in gw_tree, gw.log()
        assert "mcp-router: stdio.read (" in router.stderr(), router.stderr()
    else:
        assert threads == {"gateway": [], "router": []}, threads
        assert "http.request" not in gw_tree, gw.log()
        assert "stdio.read" not in router.stderr(), router.stderr()
