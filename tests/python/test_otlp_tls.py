"""TLS to the collector (binaries built with `--features otlp-tls`; tests/run.sh builds
them and names their directory in MCP_TLS_BIN_DIR): spans arrive over https:// for
OTLP/gRPC and OTLP/HTTP with the CA given by `otlp_certificate` or by
OTEL_EXPORTER_OTLP_CERTIFICATE, over one kept connection; a certificate the bridge does
not trust is refused (spans dropped, requests still answered, a warning logged); mutual
TLS with a client certificate; and unusable TLS files are configuration errors (exit
64) naming the key or variable. Certificates are made by the test (tls_certs.py)."""

from __future__ import annotations

import os
import queue
import subprocess
import time
from pathlib import Path

import pytest

from conftest import toml_str
from otlp_receiver import Receiver, ServerTls
from test_otlp_transport import EXIT_CONFIG, echo, exit_code, exported, gateway_config, sent
from test_tracing import DEADLINE, Router, fixture_backend, tracing_toml
from tls_certs import make_pki

# Where tests/run.sh puts them, unless MCP_TLS_BIN_DIR says otherwise. Missing binaries
# fail these tests (below), they are not skipped: a skip would pass unnoticed.
TLS_BIN_DIR = os.environ.get("MCP_TLS_BIN_DIR") or str(
    Path(__file__).resolve().parents[2] / "target" / "tls-debug")
TLS_GATEWAY = Path(TLS_BIN_DIR) / "mcp-gateway"
TLS_ROUTER = Path(TLS_BIN_DIR) / "mcp-router"
TLS_BUILD_HINT = ("build them: cargo build -p mcp-router -p mcp-gateway --features otlp-tls, "
                  "then copy both to target/tls-debug (tests/run.sh does), or set MCP_TLS_BIN_DIR")


@pytest.fixture(autouse=True)
def _tls_binaries():
    for b in (TLS_GATEWAY, TLS_ROUTER):
        if not b.is_file():
            pytest.fail(f"{b} not found: {TLS_BUILD_HINT}", pytrace=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gateway_bin():
    """The TLS build, for start_gateway (overrides conftest's)."""
    if not TLS_GATEWAY.is_file():
        pytest.fail(f"{TLS_GATEWAY} not found: {TLS_BUILD_HINT}", pytrace=False)
    return TLS_GATEWAY


@pytest.fixture
def tls_receiver(pki):
    r = Receiver(ServerTls(cert=pki.server_cert, key=pki.server_key))
    yield r
    r.close()


def endpoint_of(receiver: Receiver, protocol: str) -> str:
    return receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint


def wait_line(gw, needle: str) -> str:
    """Waits for a line of the gateway's output containing `needle`."""
    deadline = time.monotonic() + DEADLINE
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line with {needle!r}:\n{gw.log()}")
        try:
            line = gw._queue.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is not None and needle in line:
            return line


def test_version_says_tls():
    out = subprocess.run([str(TLS_GATEWAY), "--version"], capture_output=True, text=True,
                         timeout=DEADLINE).stdout
    assert "tls: otlp (rustls, ring)" in out, out


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("ca_from", ["key", "env"])
def test_spans_arrive_over_https(start_gateway, tmp_path, tls_receiver, pki, monkeypatch,
                                 protocol, ca_from):
    endpoint = endpoint_of(tls_receiver, protocol)
    assert endpoint.startswith("https://")
    extra = ""
    if ca_from == "key":
        extra = f"otlp_certificate = {toml_str(str(pki.ca))}\n"
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca))
    tracing = tracing_toml(endpoint, protocol=protocol, extra=extra)
    gw = start_gateway(tracing + fixture_backend())
    router = Router(gw.url, tracing, tmp_path, binary=TLS_ROUTER)
    sent.clear()
    try:
        router.initialize()
        for i in (1, 2):
            echo(router, i)
            exported(tls_receiver, i)
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    spans = tls_receiver.snapshot()
    transport = "grpc" if protocol == "grpc" else "http"
    assert {s["service"] for s in spans} == {"mcp-router", "mcp-gateway"}, spans
    assert all(s["transport"] == transport for s in spans)
    # Every export of a process over one TLS connection.
    assert len(tls_receiver.connections("mcp-gateway")) == 1, tls_receiver.exports
    assert len(tls_receiver.connections("mcp-router")) == 1, tls_receiver.exports
    assert "span export failed" not in gw.log() + router.stderr()


@pytest.mark.parametrize("protocol,trust", [("grpc", "other-ca"), ("http/protobuf", "system")])
def test_an_untrusted_certificate_is_refused(start_gateway, tmp_path, tls_receiver, pki,
                                             protocol, trust):
    # other-ca: a CA that did not sign the collector's certificate; system: the
    # machine's roots, which do not know the test CA either.
    extra = f"otlp_certificate = {toml_str(str(pki.other_ca))}\n" if trust == "other-ca" else ""
    tracing = tracing_toml(endpoint_of(tls_receiver, protocol), protocol=protocol, extra=extra)
    gw = start_gateway(tracing + fixture_backend())
    router = Router(gw.url, "", tmp_path)
    sent.clear()
    try:
        router.initialize()
        echo(router, 1)
        line = wait_line(gw, "span export failed")
        # The bridge keeps answering while its exports fail.
        echo(router, 2)
    finally:
        assert router.close() == 0, router.stderr()
        assert gw.terminate() == 0, gw.describe()
    assert "invalid peer certificate" in line, line
    assert tls_receiver.snapshot() == []


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_mutual_tls(start_gateway, tmp_path, pki, monkeypatch, protocol):
    receiver = Receiver(ServerTls(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca))
    try:
        if protocol == "grpc":
            extra = (f"otlp_certificate = {toml_str(str(pki.ca))}\n"
                     f"otlp_client_certificate = {toml_str(str(pki.client_cert))}\n"
                     f"otlp_client_key = {toml_str(str(pki.client_key))}\n")
        else:
            extra = ""
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca))
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(pki.client_cert))
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(pki.client_key))
        tracing = tracing_toml(endpoint_of(receiver, protocol), protocol=protocol, extra=extra)
        gw = start_gateway(tracing + fixture_backend())
        router = Router(gw.url, "", tmp_path)
        sent.clear()
        try:
            router.initialize()
            echo(router, 1)
            exported(receiver, 1)
        finally:
            assert router.close() == 0, router.stderr()
            assert gw.terminate() == 0, gw.describe()
        assert "span export failed" not in gw.log()

        # Without a client certificate the collector refuses the connection.
        for var in ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki.ca))
        tracing = tracing_toml(endpoint_of(receiver, protocol), protocol=protocol)
        before = len(receiver.snapshot())
        gw = start_gateway(tracing + fixture_backend())
        again = tmp_path / "no-client-cert"
        again.mkdir()
        router = Router(gw.url, "", again)
        try:
            router.initialize()
            echo(router, 2)
            wait_line(gw, "span export failed")
        finally:
            assert router.close() == 0, router.stderr()
            assert gw.terminate() == 0, gw.describe()
        assert len(receiver.snapshot()) == before
    finally:
        receiver.close()


def test_unusable_tls_files_exit_64_naming_the_key_or_variable(tmp_path, pki):
    tracing = tracing_toml("https://127.0.0.1:4317",
                           extra=f"otlp_certificate = {toml_str(str(tmp_path / 'missing.pem'))}\n")
    code, err = exit_code(TLS_GATEWAY, gateway_config(tracing), tmp_path)
    assert code == EXIT_CONFIG, err
    assert "tracing.otlp_certificate" in err and "cannot read" in err, err
    # Also caught by --check-config.
    code, err = exit_code(TLS_GATEWAY, gateway_config(tracing), tmp_path, "--check-config")
    assert code == EXIT_CONFIG, err

    # Not PEM, through the variable, in the router.
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    env = {**os.environ, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(junk)}
    router_cfg = f'[gateway]\nurl = "ws://127.0.0.1:1/mcp"\n{tracing_toml("https://127.0.0.1:4318")}'
    code, err = exit_code(TLS_ROUTER, router_cfg, tmp_path, env=env)
    assert code == EXIT_CONFIG, err
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in err and "no certificate" in err, err

    # A client certificate whose key is not a key.
    env = {**os.environ, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca),
           "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
           "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_cert)}
    code, err = exit_code(TLS_ROUTER, router_cfg, tmp_path, env=env)
    assert code == EXIT_CONFIG, err
    assert "OTEL_EXPORTER_OTLP_CLIENT_KEY" in err, err

    # insecure = true cannot mean "skip verification".
    tracing = tracing_toml("https://127.0.0.1:4317", extra="otlp_insecure = true\n")
    code, err = exit_code(TLS_GATEWAY, gateway_config(tracing), tmp_path)
    assert code == EXIT_CONFIG, err
    assert "tracing.otlp_insecure" in err, err
