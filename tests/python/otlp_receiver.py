"""A real OTLP trace receiver for the tests: the OTLP/gRPC TraceService (grpcio +
opentelemetry-proto) and OTLP/HTTP protobuf (`POST /v1/traces`, HTTP/1.1 keep-alive),
both on 127.0.0.1 with a free port, in plain text or TLS (optionally requiring a client
certificate). Received spans are kept as plain dicts, and every export is recorded with
the connection it came on (gRPC: the peer's address; HTTP: the accepted socket), so
tests can count connections."""

from __future__ import annotations

import socket
import time
import ssl
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

GRPC_STOP_GRACE = 5.0  # seconds calls in flight may take when the gRPC server restarts

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(v):
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def flatten(req: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list[dict]:
    out = []
    for rs in req.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "service": resource.get("service.name"),
                        "resource": resource,
                        "transport": transport,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": KINDS.get(s.kind, str(s.kind)),
                        "status": STATUS.get(s.status.code, str(s.status.code)),
                        "status_message": s.status.message,
                        "attributes": {a.key: _value(a.value) for a in s.attributes},
                        "attribute_keys": [a.key for a in s.attributes],
                        "events": [e.name for e in s.events],
                        "event_attributes": [
                            (e.name, {a.key: _value(a.value) for a in e.attributes})
                            for e in s.events
                        ],
                        "size": s.ByteSize(),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                    }
                )
    return out


def retry_info(code: grpc.StatusCode, delay_s: float | None) -> bytes:
    """A google.rpc.Status for `code` whose details hold a RetryInfo of `delay_s` (None:
    a RetryInfo without a delay), as sent in gRPC's grpc-status-details-bin trailer."""
    info = error_details_pb2.RetryInfo()
    if delay_s is not None:
        info.retry_delay.FromNanoseconds(int(delay_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code.value[0], message="refused by the test",
                             details=[detail]).SerializeToString()


@dataclass(frozen=True)
class ServerTls:
    """TLS for both listeners: the server's PEM certificate and key, and the CA whose
    client certificates are required (None: no client certificate asked for)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def _shut_down(socks) -> None:
    """Ends each socket both ways, unannounced (as a collector's idle timeout would)."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Receiver:
    def __init__(self, tls: ServerTls | None = None) -> None:
        self.spans: list[dict] = []
        self.requests = 0
        self.metadata: list[dict] = []
        # One entry per export: {"transport", "conn", "services"}.
        self.exports: list[dict] = []
        self.tls = tls
        self._cv = threading.Condition()
        self._close_next_http = False
        self._http_responses = 0
        self._http_socks: set[socket.socket] = set()
        # Exports to refuse before accepting again, and how: `retryable` answers gRPC
        # UNAVAILABLE / HTTP 503 (worth another try), otherwise INVALID_ARGUMENT / 400.
        self.refuse_next = 0
        self.refuse_retryable = True
        # gRPC only: a google.rpc.RetryInfo sent with each refusal (its delay in seconds,
        # or "bare" for one without a delay), and the gRPC status to refuse with instead
        # of UNAVAILABLE.
        self.refuse_retry_delay: float | str | None = None
        self.refuse_grpc_code: grpc.StatusCode | None = None
        # When each gRPC export arrived (time.monotonic()), refused or not.
        self.grpc_export_times: list[float] = []
        self.refused = 0
        self.refused_span_ids: list[str] = []
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC name)
                with receiver._cv:
                    receiver.grpc_export_times.append(time.monotonic())
                if receiver._refuse(request):
                    code = (grpc.StatusCode.UNAVAILABLE if receiver.refuse_retryable
                            else grpc.StatusCode.INVALID_ARGUMENT)
                    code = receiver.refuse_grpc_code or code
                    if receiver.refuse_retry_delay is not None:
                        context.set_trailing_metadata(
                            (("grpc-status-details-bin", retry_info(
                                code, None if receiver.refuse_retry_delay == "bare"
                                else receiver.refuse_retry_delay)),))
                    context.abort(code, "refused by the test")
                # Each HTTP/2 connection has its own client port: the peer names it.
                receiver._add(flatten(request, "grpc"), dict(context.invocation_metadata()),
                              "grpc:" + context.peer())
                return trace_service_pb2.ExportTraceServiceResponse()

        self._service = Service()
        self.grpc_port = 0
        # OTLP/HTTP answers 404 on other paths; tests may change it. Every path asked for
        # is kept in http_requested.
        self.http_paths = {"/v1/traces"}
        self.http_requested: list[str] = []
        self._grpc = self._start_grpc()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive unless a side says close

            def setup(self):
                super().setup()
                with receiver._cv:
                    receiver._http_socks.add(self.connection)

            def finish(self):
                with receiver._cv:
                    receiver._http_socks.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cv:
                    receiver.http_requested.append(self.path)
                if self.path not in receiver.http_paths:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                if receiver._refuse(req):
                    self.send_response(503 if receiver.refuse_retryable else 400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = "http:%s:%d" % self.client_address
                receiver._add(flatten(req, "http"), {k.lower(): v for k, v in self.headers.items()}, conn)
                payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                with receiver._cv:
                    close, receiver._close_next_http = receiver._close_next_http, False
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)
                with receiver._cv:
                    receiver._http_responses += 1
                    receiver._cv.notify_all()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # refused handshakes and dropped connections are what tests do

        self._http = Server(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert, tls.key)
            ctx.set_alpn_protocols(["http/1.1"])
            if tls.client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(tls.client_ca)
            # The handshake runs on the connection's own thread, at its first read.
            self._http.socket = ctx.wrap_socket(
                self._http.socket, server_side=True, do_handshake_on_connect=False
            )
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def _refuse(self, request) -> bool:
        """Whether to refuse this export (counting it, and keeping its span ids)."""
        with self._cv:
            if self.refuse_next <= 0:
                return False
            self.refuse_next -= 1
            self.refused += 1
            self.refused_span_ids += [s["span_id"] for s in flatten(request, "refused")]
            self._cv.notify_all()
            return True

    def _start_grpc(self) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._service, server)
        address = f"127.0.0.1:{self.grpc_port}"
        if self.tls:
            creds = grpc.ssl_server_credentials(
                [(self.tls.key.read_bytes(), self.tls.cert.read_bytes())],
                root_certificates=self.tls.client_ca.read_bytes() if self.tls.client_ca else None,
                require_client_auth=self.tls.client_ca is not None,
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        assert port, f"cannot listen on {address}"
        self.grpc_port = port
        server.start()
        return server

    def restart_grpc(self) -> None:
        """Stops the gRPC server (closing its connections) and starts a new one on the
        same port."""
        # With a grace period, calls in flight finish before the connections close.
        self._grpc.stop(grace=GRPC_STOP_GRACE).wait()
        self._grpc = self._start_grpc()

    def close_next_http(self) -> None:
        """The next HTTP response says `Connection: close` and the connection ends."""
        with self._cv:
            self._close_next_http = True

    def drop_http_connections(self, timeout: float = 15.0) -> int:
        """Once every HTTP export has had its response written, closes every open HTTP
        connection from this side, unannounced (as an idle timeout would). Returns how
        many."""
        with self._cv:
            done = self._cv.wait_for(
                lambda: self._http_responses == sum(e["transport"] == "http" for e in self.exports),
                timeout=timeout,
            )
            assert done, "an HTTP response was never written"
            socks = list(self._http_socks)
        _shut_down(socks)
        return len(socks)

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def grpc_endpoint(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.http_port}"

    def _add(self, spans: list[dict], metadata: dict, conn: str) -> None:
        with self._cv:
            self.spans.extend(spans)
            self.requests += 1
            self.metadata.append(metadata)
            self.exports.append({"transport": conn.split(":", 1)[0], "conn": conn,
                                 "services": {s["service"] for s in spans}})
            self._cv.notify_all()

    def connections(self, service: str) -> set[str]:
        """The connections that carried exports with spans of `service`."""
        with self._cv:
            return {e["conn"] for e in self.exports if service in e["services"]}

    def wait_for(self, pred, timeout: float = 15.0) -> list[dict]:
        """Waits until pred(spans) is true; returns a snapshot of the spans."""
        with self._cv:
            ok = self._cv.wait_for(lambda: pred(self.spans), timeout=timeout)
            if not ok:
                raise AssertionError(f"spans never satisfied the condition; got {self.spans}")
            return list(self.spans)

    def snapshot(self) -> list[dict]:
        with self._cv:
            return list(self.spans)

    def close(self) -> None:
        self._grpc.stop(grace=None)
        self._http.shutdown()
        self._http.server_close()
        with self._cv:
            socks = list(self._http_socks)
        _shut_down(socks)
