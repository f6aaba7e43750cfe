"""Fixtures for the real-peer tests: locate the binaries and the npm peers,
run mcp-gateway with a temporary config, and run mcp-router.

Layout (see tests/setup.sh):
  $MCP_BIN_DIR/mcp-gateway, $MCP_BIN_DIR/mcp-router   (default <repo>/target/debug)
  <repo>/.cache/npm/node_modules/@modelcontextprotocol/server-everything
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("MCP_BIN_DIR") or REPO / "target" / "debug").resolve()
GATEWAY_BIN = BIN_DIR / "mcp-gateway"
ROUTER_BIN = BIN_DIR / "mcp-router"
NPM_MODULES = REPO / ".cache" / "npm" / "node_modules"
EVERYTHING_JS = NPM_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"

GATEWAY_START_DEADLINE = 20.0  # seconds until the "listening on" line must appear
GATEWAY_STOP_DEADLINE = 10.0  # seconds between SIGTERM and exit

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LISTENING = re.compile(r"listening on\s+\S*?(ws://[^\s\"'`,;)]+/mcp)\b")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _require_file(path: Path, hint: str) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} not found: {hint}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    return _require_file(GATEWAY_BIN, "build it with `cargo build` (or set MCP_BIN_DIR)")


@pytest.fixture(scope="session")
def router_bin() -> Path:
    return _require_file(ROUTER_BIN, "build it with `cargo build` (or set MCP_BIN_DIR)")


@pytest.fixture(scope="session")
def everything_js() -> Path:
    return _require_file(EVERYTHING_JS, "run `bash tests/setup.sh`")


def toml_str(value: str) -> str:
    # A JSON string literal is a valid TOML basic string for anything we write.
    return json.dumps(value)


def everything_backend_toml(everything_js: Path, name: str = "everything") -> str:
    return (
        "[[backends]]\n"
        f"name = {toml_str(name)}\n"
        'transport = "stdio"\n'
        'command = "node"\n'
        f"args = [{toml_str(str(everything_js))}, \"stdio\"]\n"
    )


def descendants(pid: int) -> set[int]:
    """All live descendant pids of `pid` (Linux /proc)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


# Child processes a test started outside the fixtures (routers): whatever is still
# running when the test ends is killed, passed or failed.
_CHILDREN: list[subprocess.Popen] = []


def track(proc: subprocess.Popen) -> subprocess.Popen:
    """Registers `proc` to be killed (and reaped) at the end of the current test."""
    _CHILDREN.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _reap_tracked_children():
    yield
    while _CHILDREN:
        p = _CHILDREN.pop()
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # state is the field after the ")" that closes the command name
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Gateway:
    """A running mcp-gateway. Its stdout and stderr are drained by threads
    into `self.lines` for the whole life of the process."""

    def __init__(self, binary: Path, config_text: str, workdir: Path):
        self.config_path = workdir / "gateway.toml"
        self.config_path.write_text(config_text)
        self.config_text = config_text
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("NO_COLOR", "1")
        self.argv = [str(binary), "--config", str(self.config_path)]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=workdir,
            start_new_session=True,  # own process group: teardown can reap strays
        )
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stderr, "stderr"), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stdout, "stdout"), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.url = self._wait_listening()

    def _drain(self, stream, name: str) -> None:
        for raw in iter(stream.readline, b""):
            line = strip_ansi(raw.decode("utf-8", "replace").rstrip("\n"))
            with self._lock:
                self.lines.append(line if name == "stderr" else f"[stdout] {line}")
            self._queue.put(line)
        stream.close()
        self._queue.put(None)

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        """Waits for a line of its output containing `text`; returns it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            seen = next((l for l in self.lines if text in l), None)
        while seen is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no line with {text!r}\n{self.describe()}", pytrace=False)
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is not None and text in line:
                seen = line
        return seen

    def describe(self) -> str:
        return (
            f"command: {' '.join(self.argv)}\nconfig:\n{self.config_text}\n"
            f"exit code: {self.proc.poll()}\n--- gateway output ---\n{self.log()}\n--- end ---"
        )

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + GATEWAY_START_DEADLINE
        closed = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(
                    f"mcp-gateway did not print 'listening on ws://.../mcp' within "
                    f"{GATEWAY_START_DEADLINE:.0f}s\n{self.describe()}",
                    pytrace=False,
                )
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                closed += 1
                if closed == 2:  # both streams closed: the process is gone
                    try:
                        self.proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                    self.kill()
                    pytest.fail(
                        f"mcp-gateway exited before listening\n{self.describe()}", pytrace=False
                    )
                continue
            m = _LISTENING.search(line)
            if m:
                return m.group(1)

    def children(self) -> set[int]:
        return descendants(self.proc.pid)

    def terminate(self) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL + fail if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=GATEWAY_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"mcp-gateway did not exit within {GATEWAY_STOP_DEADLINE:.0f}s of SIGTERM\n"
                f"{self.describe()}",
                pytrace=False,
            )
        for t in self._threads:
            t.join(timeout=5)
        return code

    def kill(self) -> None:
        """Kill the gateway and anything left in its process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def attach_log(request, title: str, fn) -> None:
    """Show fn() as a report section if the test fails (see the hook below)."""
    if not hasattr(request.node, "_mcp_logs"):
        request.node._mcp_logs = []
    request.node._mcp_logs.append((title, fn))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, fn in getattr(item, "_mcp_logs", []):
            try:
                text = fn()
            except Exception as e:  # pragma: no cover - diagnostics only
                text = f"<could not collect: {e!r}>"
            rep.sections.append((title, text))


@pytest.fixture
def start_gateway(gateway_bin, tmp_path, request):
    """Factory: start_gateway(backends_toml) -> Gateway. Every gateway started
    is SIGTERMed at teardown, and its exit code must be 0."""
    started: list[Gateway] = []

    def start(backends_toml: str, *, server_toml: str = 'listen = "127.0.0.1:0"\n') -> Gateway:
        workdir = Path(tempfile.mkdtemp(prefix="gw-", dir=tmp_path))
        config = f"[server]\n{server_toml}\n{backends_toml}"
        gw = Gateway(gateway_bin, config, workdir)
        started.append(gw)
        attach_log(request, f"mcp-gateway #{len(started)}", gw.describe)
        return gw

    yield start

    errors = []
    for gw in started:
        if gw.proc.poll() is None:
            code = gw.terminate()
        else:
            code = gw.proc.returncode
        gw.kill()  # reap anything left in the process group
        if code != 0:
            errors.append(
                f"mcp-gateway exit code {code} after SIGTERM (expected 0); "
                f"command: {' '.join(gw.argv)} (its output is in the report section below)"
            )
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def gateway(start_gateway, everything_js) -> Gateway:
    """A gateway with the single backend `everything` (server-everything over stdio)."""
    return start_gateway(everything_backend_toml(everything_js))


@pytest.fixture
def router_errlog(tmp_path, request):
    """Factory: router_errlog() -> a real file for one mcp-router's stderr (the
    SDK hands it to the child process); shown in the report if the test fails."""
    files = []

    def make():
        path = tmp_path / f"router-{len(files) + 1}-stderr.log"
        f = open(path, "w+")
        files.append(f)
        attach_log(request, f"mcp-router #{len(files)} stderr", path.read_text)
        return f

    yield make
    for f in files:
        f.close()


def router_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("NO_COLOR", "1")
    return env


@pytest.fixture
def receiver():
    """A real OTLP receiver (gRPC and HTTP, plain text), closed after the test."""
    from otlp_receiver import Receiver

    r = Receiver()
    yield r
    r.close()
