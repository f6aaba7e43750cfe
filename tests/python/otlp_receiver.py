"""A real OTLP trace receiver for the tests: the OTLP/gRPC TraceService (grpcio +
opentelemetry-proto) and OTLP/HTTP protobuf (`POST /v1/traces`), both on 127.0.0.1
with a free port. Received spans are kept as plain dicts."""

from __future__ import annotations

import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

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
                        "events": [e.name for e in s.events],
                        "size": s.ByteSize(),
                    }
                )
    return out


class Receiver:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.requests = 0
        self.metadata: list[dict] = []
        self._cv = threading.Condition()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (gRPC name)
                receiver._add(flatten(request, "grpc"), dict(context.invocation_metadata()))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver._add(flatten(req, "http"), {k.lower(): v for k, v in self.headers.items()})
                payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _add(self, spans: list[dict], metadata: dict) -> None:
        with self._cv:
            self.spans.extend(spans)
            self.requests += 1
            self.metadata.append(metadata)
            self._cv.notify_all()

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
