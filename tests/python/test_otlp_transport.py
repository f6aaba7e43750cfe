"""How the OTLP exporters use their connection to the collector (default build, plain
text): several exports go over ONE kept connection; when the collector ends it (an
HTTP `Connection: close`, an HTTP connection dropped while idle, a gRPC server restart
on the same port) export resumes on a new one at once, with no failed export. And the
startup checks of the transport settings: an https:// endpoint in a build without TLS,
and otlp_insecure contradicting the scheme, exit 64 naming the key."""

from __future__ import annotations

import subprocess

import pytest

from conftest import GATEWAY_BIN, toml_str
from otlp_receiver import Receiver
from test_tracing import DEADLINE, Router, fixture_backend, tracing_toml

EXIT_CONFIG = 64


sent: list[str] = []  # ids of the requests of the running test


def exported(receiver: Receiver, request_id: int) -> None:
    """Waits until the gateway's http.request span of `request_id` has arrived."""
    receiver.wait_for(lambda spans: any(
        s["service"] == "mcp-gateway" and s["name"] == "http.request"
        and s["attributes"].get("jsonrpc.request.id") == str(request_id) for s in spans))


def echo(router: Router, i: int) -> None:
    sent.append(str(i))
    r = router.request(i, "tools/call", {"name": "one.echo", "arguments": {"text": str(i)}})
    assert r["result"]["content"][0]["text"] == str(i), r


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exports_share_one_connection_and_outlive_its_end(start_gateway, tmp_path, receiver,
                                                          protocol):
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    sent.clear()
    gw = start_gateway(tracing_toml(endpoint, protocol=protocol) + fixture_backend())
    router = Router(gw.url, "", tmp_path)  # only the gateway exports
    try:
        router.initialize()
        # One export per request: each waits for the previous one's spans.
        for i in (1, 2, 3):
            echo(router, i)
            exported(receiver, i)
        first = receiver.connections("mcp-gateway")
        assert len(first) == 1, receiver.exports
        assert sum("mcp-gateway" in e["services"] for e in receiver.exports) >= 3
        if protocol == "grpc":
            # The collector goes away and comes back on the same port.
            receiver.restart_grpc()
            expected = 2
        else:
            # The collector says close once (after export 4) ...
            receiver.close_next_http()
            echo(router, 4)
            exported(receiver, 4)
            # ... then drops the next connection while it is idle.
            echo(router, 5)
            exported(receiver, 5)
            assert receiver.drop_http_connections() == 1
            expected = 3
        echo(router, 6)
        exported(receiver, 6)
        echo(router, 7)
        exported(receiver, 7)
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    conns = receiver.connections("mcp-gateway")
    assert len(conns) == expected, receiver.exports
    # Replacing a connection the collector closed is not a failure.
    assert "span export failed" not in gw.log(), gw.log()
    ids = [s["attributes"].get("jsonrpc.request.id") for s in receiver.snapshot()
           if s["name"] == "http.request"]
    assert sorted(i for i in ids if i != "init") == sent, f"every span once, none twice: {ids}"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_full_batches_larger_than_the_windows_arrive_whole(start_gateway, tmp_path, receiver,
                                                           protocol):
    """The gateway's default batch (512 spans, ~120 KB) is larger than HTTP/2's first
    flow-control window (64 KiB): over gRPC the exporter has to read the collector's
    window updates while it sends, waiting for its socket itself. Over HTTP the body
    goes in one write (on loopback the socket takes it whole; a write that must wait
    for room is tested in conn.rs, block_on_waits_for_room_to_write). No timer export
    gets in the way (scheduled_delay 1 h): two full batches go out during the run, the
    rest at shutdown."""
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    n = 200  # x 6 gateway spans: two full batches of 512 and 176 at shutdown
    tracing = tracing_toml(endpoint, protocol=protocol)
    assert 'scheduled_delay = "50ms"' in tracing
    tracing = tracing.replace('scheduled_delay = "50ms"', 'scheduled_delay = "1h"')
    gw = start_gateway(tracing + fixture_backend())
    router = Router(gw.url, "", tmp_path)  # only the gateway exports
    try:
        router.initialize()
        wave = 50  # in flight at once (the gateway's default limit per session is 64)
        for first in range(0, n, wave):
            ids = range(first, min(first + wave, n))
            for i in ids:
                router.send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                             "params": {"name": "one.echo", "arguments": {"text": str(i)}}})
            for _ in ids:
                m = router._q.get(timeout=DEADLINE)
                assert m["result"]["content"][0]["text"] == str(m["id"]), m
        # The two full batches arrive without any flush.
        receiver.wait_for(lambda spans: sum(s["service"] == "mcp-gateway" for s in spans)
                          >= 2 * 512)
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    spans = [s for s in receiver.snapshot() if s["service"] == "mcp-gateway"]
    ids = sorted(int(s["attributes"]["jsonrpc.request.id"]) for s in spans
                 if s["name"] == "http.request" and s["attributes"]["jsonrpc.request.id"] != "init")
    assert ids == list(range(n)), "every request's span once"
    gateway_exports = [e for e in receiver.exports if "mcp-gateway" in e["services"]]
    assert len(gateway_exports) == 3, gateway_exports  # 512 + 512 + the rest
    assert "span export failed" not in gw.log(), gw.log()


def exit_code(binary, config_text: str, tmp_path, *args: str, env=None) -> tuple[int, str]:
    """Runs a binary that must exit by itself (a configuration error, --check-config)."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(config_text)
    p = subprocess.run([str(binary), "--config", str(cfg), *args], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=DEADLINE, env=env)
    return p.returncode, p.stderr


def gateway_config(tracing: str) -> str:
    return f'[server]\nlisten = "127.0.0.1:0"\n{tracing}'


def test_https_without_tls_in_the_build_names_the_feature(tmp_path):
    code, err = exit_code(GATEWAY_BIN, gateway_config(tracing_toml("https://127.0.0.1:4317")),
                          tmp_path)
    assert code == EXIT_CONFIG, err
    assert "tracing.otlp_endpoint" in err and "`otlp-tls`" in err, err


def test_otlp_insecure_must_match_the_scheme(tmp_path):
    code, err = exit_code(GATEWAY_BIN, gateway_config(
        tracing_toml("http://127.0.0.1:4317", extra="otlp_insecure = false\n")), tmp_path)
    assert code == EXIT_CONFIG, err
    assert "tracing.otlp_insecure" in err and "https://" in err, err
    # A CA file with a plain-text endpoint is not read (and not an error).
    tracing = tracing_toml("http://127.0.0.1:4317",
                           extra=f"otlp_certificate = {toml_str(str(tmp_path / 'none.pem'))}\n")
    code, err = exit_code(GATEWAY_BIN, gateway_config(tracing), tmp_path, "--check-config")
    assert code == 0, err
