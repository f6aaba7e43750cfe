"""A backend MCP server written with the official Python MCP SDK 2.x, exporting its
spans with the OpenTelemetry Python SDK over OTLP/gRPC to $OTLP_ENDPOINT. The SDK
extracts the trace context the gateway puts in params._meta and names its server span
"tools/call <tool>", so its span must appear as a child of our backend.forward.

Runs in .cache/venv-mcp2 (SDK 2.x cannot share a venv with 1.x)."""

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "sdk2-backend"}))
provider.add_span_processor(
    SimpleSpanProcessor(OTLPSpanExporter(endpoint=os.environ["OTLP_ENDPOINT"], insecure=True))
)
trace.set_tracer_provider(provider)

from mcp.server.mcpserver import MCPServer  # noqa: E402 (after the provider is set)

server = MCPServer("sdk2-backend")


@server.tool()
def shout(text: str) -> str:
    """Upper-cases the text."""
    return text.upper()


if __name__ == "__main__":
    try:
        server.run("stdio")
    finally:
        provider.shutdown()
