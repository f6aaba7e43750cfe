"""Real-peer tests: the official MCP Python SDK and the official reference
server `@modelcontextprotocol/server-everything` talk to each other through
mcp-router and mcp-gateway.

    SDK client --stdio--> mcp-router --WebSocket--> mcp-gateway --stdio--> server-everything
    SDK client --WebSocket (subprotocol "mcp")----> mcp-gateway --stdio--> server-everything

Facts about @modelcontextprotocol/server-everything 2026.8.31 (pinned in
tests/package.json, installed by tests/setup.sh into .cache/npm):

* Start in stdio mode:
      node .cache/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js stdio
  ("stdio" is also the default when no argument is given; "sse" and
  "streamableHttp" are the other modes). It prints
  "Starting default (STDIO) server..." on stderr. serverInfo.name is
  "mcp-servers/everything"; it answers protocolVersion 2025-11-25.
* Tool `echo`, arguments {"message": str}; returns one text content
  "Echo: <message>".
* Tool `trigger-sampling-request`, arguments {"prompt": str, "maxTokens": int
  = 100}; sends `sampling/createMessage` to ITS CLIENT with
  messages=[{role: user, content: {type: text,
  text: "Resource trigger-sampling-request context: <prompt>"}}],
  systemPrompt "You are a helpful test server.", maxTokens, temperature 0.7,
  and returns one text content
  "LLM sampling result: \\n" + JSON.stringify(CreateMessageResult, null, 2),
  i.e. the sampled answer text appears verbatim inside it.
  IMPORTANT: this tool is registered only after `notifications/initialized`,
  and ONLY if the client's `initialize` declared the `sampling` capability
  (same for the other "conditional" tools: get-roots-list,
  trigger-elicitation-request, trigger-url-elicitation,
  simulate-research-query, trigger-*-async, which need roots / elicitation /
  tasks capabilities). So the gateway, which is server-everything's client,
  must declare `sampling` when it initializes the backend, otherwise
  `everything.trigger-sampling-request` never shows up.
* Always-present tools: echo, get-annotated-message, get-env,
  get-resource-links, get-resource-reference, get-structured-content,
  get-sum ({"a","b"} -> "The sum of A and B is S."), get-tiny-image,
  gzip-file-as-resource, toggle-simulated-logging, toggle-subscriber-updates,
  trigger-long-running-operation ({"duration": seconds, "steps": n}; sends
  n `notifications/progress` when the request has `_meta.progressToken`).
* Prompts: simple-prompt (no args; one user text message
  "This is a simple prompt without arguments."), args-prompt,
  completable-prompt, resource-prompt.
* Resources: static docs `demo://resource/static/document/<file>.md`
  (text/markdown), templates `demo://resource/dynamic/text/{resourceId}` and
  `demo://resource/dynamic/blob/{resourceId}`.
* If the client declares `roots`, the server sends `roots/list` 350 ms after
  initialization (the Python SDK declares roots only with a list_roots_callback;
  we give none).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.websocket import websocket_client
from mcp.shared.exceptions import McpError

from conftest import BIN_DIR, everything_backend_toml, pid_alive, router_env, toml_str

PREFIX = "everything."
ECHO = PREFIX + "echo"
SAMPLING = PREFIX + "trigger-sampling-request"
SCENARIO_DEADLINE = 30  # seconds, for each async scenario (pytest-timeout is 60)
# Per request: a lost response fails at the call that lost it, not at the deadline.
REQUEST_TIMEOUT = timedelta(seconds=10)


# ----------------------------------------------------------------- helpers


def make_sampling_callback(answer: str, calls: list):
    """A sampling callback that records its requests and answers `answer`."""

    async def callback(context, params: types.CreateMessageRequestParams):
        calls.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=answer),
            model="test-model",
            stopReason="endTurn",
        )

    return callback


@asynccontextmanager
async def router_session(router_bin, url: str, errlog, **session_kwargs):
    """mcp-router launched by the SDK's stdio_client; yields (session, init result)."""
    params = StdioServerParameters(
        command=str(router_bin), args=["--gateway", url], env=router_env()
    )
    session_kwargs.setdefault("read_timeout_seconds", REQUEST_TIMEOUT)
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write, **session_kwargs) as session:
            init = await session.initialize()
            yield session, init


@asynccontextmanager
async def websocket_session(url: str, **session_kwargs):
    """The SDK's 1.x websocket client straight to the gateway; yields (session, init)."""
    session_kwargs.setdefault("read_timeout_seconds", REQUEST_TIMEOUT)
    async with websocket_client(url) as (read, write):
        async with ClientSession(read, write, **session_kwargs) as session:
            init = await session.initialize()
            yield session, init


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def run(scenario, *args) -> Any:
    """Run an async scenario with a deadline; unwrap single-error task groups
    so that pytest shows the failing assertion itself."""

    async def main():
        with anyio.fail_after(SCENARIO_DEADLINE):
            return await scenario(*args)

    try:
        return anyio.run(main)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def texts(result: types.CallToolResult | types.GetPromptResult) -> list[str]:
    if isinstance(result, types.GetPromptResult):
        contents = [m.content for m in result.messages]
    else:
        contents = result.content
    return [c.text for c in contents if isinstance(c, types.TextContent)]


async def check_tools(session: ClientSession) -> list[types.Tool]:
    tools = (await session.list_tools()).tools
    names = [t.name for t in tools]
    unprefixed = [n for n in names if not n.startswith(PREFIX)]
    assert not unprefixed, f"tool names without {PREFIX!r} prefix: {unprefixed} (all: {names})"
    assert len(set(names)) == len(names), f"duplicate tool names: {names}"
    for expected in (ECHO, PREFIX + "get-sum", SAMPLING):
        assert expected in names, f"{expected} missing from tools/list: {names}"
    echo = next(t for t in tools if t.name == ECHO)
    assert "message" in echo.inputSchema.get("properties", {}), echo.inputSchema
    return tools


async def check_echo(session: ClientSession, message: str) -> None:
    result = await session.call_tool(ECHO, {"message": message})
    assert not result.isError, result
    assert texts(result) == [f"Echo: {message}"], result


async def check_sampling(session: ClientSession, calls: list, answer: str, prompt: str) -> None:
    before = len(calls)
    result = await session.call_tool(SAMPLING, {"prompt": prompt, "maxTokens": 32})
    assert not result.isError, result
    assert len(calls) == before + 1, f"sampling callback called {len(calls) - before} times"
    req = calls[-1]
    assert req.maxTokens == 32, req
    assert req.systemPrompt == "You are a helpful test server.", req
    assert [m.content.text for m in req.messages] == [
        f"Resource trigger-sampling-request context: {prompt}"
    ], req
    body = "\n".join(texts(result))
    assert body.startswith("LLM sampling result:"), body
    sampled = json.loads(body.split("\n", 1)[1])
    assert sampled["content"] == {"type": "text", "text": answer}, sampled
    assert sampled["model"] == "test-model", sampled


# ------------------------------------------------------------------- tests


def test_python_sdk_via_router(gateway, router_bin, router_errlog):
    calls: list = []
    answer = "sampled answer: 42 \u2713"

    async def scenario():
        async with router_session(
            router_bin,
            gateway.url,
            router_errlog(),
            sampling_callback=make_sampling_callback(answer, calls),
        ) as (session, init):
            assert init.capabilities.tools is not None, init
            await check_tools(session)
            await check_echo(session, "hello through router \u00e9\u4e16")
            await check_sampling(session, calls, answer, "what is 6*7?")
            # the session keeps working after a server->client round trip
            await check_echo(session, "still alive")

    run(scenario)


def test_a_backend_listing_unusable_tools_does_not_break_the_sdks_listing(
        start_gateway, everything_js, router_bin, router_errlog):
    # The fixture, with FIXTURE_BAD_TOOLS, lists tools no client can use (a number for
    # a name, no name, a string, no inputSchema) and one of its tools twice, next to
    # server-everything. The SDK validates the whole merged listing: one bad entry
    # would fail it, server-everything's tools with it.
    fixture = BIN_DIR / "mcp-fixture"
    bad = (
        "[[backends]]\n"
        'name = "bad"\ntransport = "stdio"\n'
        f"command = {toml_str(str(fixture))}\n"
        'args = ["--name", "bad"]\n'
        'env = { FIXTURE_BAD_TOOLS = "1" }\n'
    )
    gw = start_gateway(everything_backend_toml(everything_js) + bad)

    async def scenario():
        async with router_session(router_bin, gw.url, router_errlog()) as (session, _):
            names = [t.name for t in (await session.list_tools()).tools]
            assert "everything.echo" in names, names
            assert "bad.echo" in names, names
            assert len(names) == len(set(names)), names
            await check_echo(session, "after a listing with bad entries")

    run(scenario)
    gw.wait_log('backend "bad": tools/list left 4 invalid and 1 repeated item(s) out')


def test_python_sdk_websocket_direct(gateway):
    calls: list = []
    answer = "direct websocket sample"

    async def scenario():
        async with websocket_session(
            gateway.url, sampling_callback=make_sampling_callback(answer, calls)
        ) as (session, init):
            assert init.capabilities.tools is not None, init
            await check_tools(session)
            await check_echo(session, "hello over websocket")
            await check_sampling(session, calls, answer, "ws prompt")

    run(scenario)


def test_prompts_and_resources_via_router(gateway, router_bin, router_errlog):
    async def scenario():
        async with router_session(router_bin, gateway.url, router_errlog()) as (session, init):
            prompts = [p.name for p in (await session.list_prompts()).prompts]
            assert prompts, "no prompts listed"
            assert all(n.startswith(PREFIX) for n in prompts), prompts
            assert PREFIX + "simple-prompt" in prompts, prompts
            got = await session.get_prompt(PREFIX + "simple-prompt")
            assert texts(got) == ["This is a simple prompt without arguments."], got
            got = await session.get_prompt(PREFIX + "args-prompt", {"city": "Paris"})
            assert any("Paris" in t for t in texts(got)), got

            resources = (await session.list_resources()).resources
            docs = [r for r in resources if str(r.uri).endswith("/features.md")]
            assert docs, f"features.md not in resources/list: {[str(r.uri) for r in resources]}"
            read = await session.read_resource(docs[0].uri)
            assert len(read.contents) == 1, read
            content = read.contents[0]
            assert isinstance(content, types.TextResourceContents), content
            assert content.mimeType == "text/markdown", content
            assert "Everything Server" in content.text, content.text[:200]

            templates = (await session.list_resource_templates()).resourceTemplates
            assert templates, "no resource templates listed"

    run(scenario)


def test_tool_results_and_errors_via_router(gateway, router_bin, router_errlog):
    async def expect_error(session, name, args):
        try:
            result = await session.call_tool(name, args)
        except McpError as e:  # JSON-RPC error response: fine
            return e.error.message
        assert result.isError, f"{name} should fail, got {result}"
        return " ".join(texts(result))

    async def scenario():
        async with router_session(router_bin, gateway.url, router_errlog()) as (session, _):
            result = await session.call_tool(PREFIX + "get-sum", {"a": 2, "b": 40})
            assert texts(result) == ["The sum of 2 and 40 is 42."], result
            # Each error says what was wrong, not just that something was.
            msg = await expect_error(session, PREFIX + "no-such-tool", {})
            assert "no-such-tool" in msg, msg
            msg = await expect_error(session, "echo", {"message": "unprefixed"})
            assert "unknown tool" in msg.lower() and "echo" in msg, msg
            msg = await expect_error(session, "nobackend.echo", {"message": "x"})
            assert "unknown tool" in msg.lower() and "nobackend.echo" in msg, msg
            # invalid arguments for a real tool
            msg = await expect_error(session, ECHO, {"message": 12})
            assert "message" in msg, msg
            # errors did not break the session
            await check_echo(session, "after errors")

    run(scenario)


def test_concurrent_calls_and_progress_via_router(gateway, router_bin, router_errlog):
    progress: list[tuple[float, float | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total))

    async def scenario():
        async with router_session(router_bin, gateway.url, router_errlog()) as (session, _):
            results: dict[int, types.CallToolResult] = {}

            async def echo(i: int):
                results[i] = await session.call_tool(ECHO, {"message": f"msg-{i}"})

            async def long_op():
                results[-1] = await session.call_tool(
                    PREFIX + "trigger-long-running-operation",
                    {"duration": 0.4, "steps": 4},
                    progress_callback=on_progress,
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_op)
                for i in range(16):
                    tg.start_soon(echo, i)
            for i in range(16):
                assert texts(results[i]) == [f"Echo: msg-{i}"], (i, results[i])
            assert "Long running operation completed" in texts(results[-1])[0], results[-1]
            assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)], progress

    run(scenario)


def test_two_routers_sampling_isolated(gateway, router_bin, router_errlog):
    """Two clients on one gateway: each server->client sampling request goes
    back to the client whose tool call caused it."""
    calls_a: list = []
    calls_b: list = []

    async def scenario():
        async with router_session(
            router_bin,
            gateway.url,
            router_errlog(),
            sampling_callback=make_sampling_callback("answer-A", calls_a),
        ) as (a, _), router_session(
            router_bin,
            gateway.url,
            router_errlog(),
            sampling_callback=make_sampling_callback("answer-B", calls_b),
        ) as (b, _):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(check_sampling_concurrent, a, calls_a, "answer-A")
                    tg.start_soon(check_sampling_concurrent, b, calls_b, "answer-B")
            assert len(calls_a) == 3 and len(calls_b) == 3, (len(calls_a), len(calls_b))

    async def check_sampling_concurrent(session, calls, answer):
        result = await session.call_tool(SAMPLING, {"prompt": answer, "maxTokens": 8})
        body = "\n".join(texts(result))
        assert not result.isError, result
        sampled = json.loads(body.split("\n", 1)[1])
        assert sampled["content"]["text"] == answer, sampled
        assert all(
            c.messages[0].content.text.endswith(answer) for c in calls
        ), "a sampling request reached the wrong client"

    run(scenario)


def test_router_exits_zero_on_stdin_eof(gateway, router_bin, router_errlog):
    """Plain JSON-RPC over the router's stdio: initialize, then close stdin
    (the MCP stdio shutdown); the router must exit 0 promptly."""
    errlog = router_errlog()
    proc = subprocess.Popen(
        [str(router_bin), "--gateway", gateway.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errlog,
        env=router_env(),
    )
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, b"")] and None,
        daemon=True,
    )
    reader.start()
    try:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        }
        proc.stdin.write((json.dumps(init) + "\n").encode())
        proc.stdin.flush()
        deadline = time.monotonic() + 15
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no initialize response from mcp-router within 15s"
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            msg = json.loads(line)
            if msg.get("id") == 1:
                break
        assert "result" in msg, msg
        assert msg["result"]["protocolVersion"], msg
        proc.stdin.write(
            (json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n").encode()
        )
        proc.stdin.flush()
        proc.stdin.close()
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("mcp-router still running 5s after its stdin was closed", pytrace=False)
        assert code == 0, f"mcp-router exit code {code} after stdin EOF (expected 0)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        reader.join(timeout=5)


def test_gateway_sigterm_stops_backends(gateway, router_bin, router_errlog):
    """SIGTERM to the gateway while a client session is open: exit code 0 and
    no backend process left behind."""

    async def scenario():
        async with router_session(router_bin, gateway.url, router_errlog()) as (session, _):
            await check_echo(session, "spawn the backend")
            children = gateway.children()
            code = await anyio.to_thread.run_sync(gateway.terminate)
            return children, code

    children, code = run(scenario)
    assert children, "mcp-gateway had no child process while a session was using the backend"
    assert code == 0, f"mcp-gateway exit code {code} after SIGTERM (expected 0)"
    # The gateway waits for its backends before it exits: none may be left now.
    left = sorted(p for p in children if pid_alive(p))
    assert not left, f"backend processes still alive after mcp-gateway exited: {left}"
    # Stopped by the gateway and cleanly (stdin closed, exit 0), not killed: the drop of
    # the process handle would kill it too, so this is what tells the stop happened.
    gateway.wait_log('backend "everything" stopped (exit status: 0)')
    assert "killing it" not in gateway.log(), gateway.log()
