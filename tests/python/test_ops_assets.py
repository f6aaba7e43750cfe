"""The dashboard and alert rules only use metrics the gateway really exposes, the rules
pass promtool, and the live /metrics output passes promtool's lint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN_DIR, toml_str

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "packaging" / "grafana" / "mcp-gateway.json"
ALERTS = REPO / "packaging" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\b(mcp_[a-z_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def exposed_families(text: str) -> set[str]:
    return {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")}


def strip_labels(expr: str) -> str:
    """Removes label matchers and grouping clauses, leaving metric names."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)


def family_of(name: str, families: set[str]) -> str:
    if name in families:
        return name
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in families:
            return name[: -len(s)]
    return name


def live_metrics(start_gateway) -> str:
    backend = (
        "[admin]\nlisten = \"127.0.0.1:0\"\n"
        "[[backends]]\nname = \"one\"\ntransport = \"stdio\"\n"
        f"command = {toml_str(str(BIN_DIR / 'mcp-fixture'))}\n"
    )
    gw = start_gateway(backend)
    line = next(l for l in gw.lines if "admin endpoints on http://" in l)
    addr = line.split("http://")[1].split()[0]
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def test_dashboard_and_rules_use_only_exposed_metrics(start_gateway):
    text = live_metrics(start_gateway)
    families = exposed_families(text)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["query"])
    exprs.append(ALERTS.read_text())
    used = {m for e in exprs for m in METRIC.findall(strip_labels(e))}
    assert used, "no metric names found"
    missing = sorted(n for n in used if family_of(n, families) not in families)
    assert not missing, f"used but not exposed: {missing}\nexposed: {sorted(families)}"
    # Every panel the issue asks for is there.
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ["request rate", "error rate", "latency", "sessions", "backend", "spans"]:
        assert word in titles, word


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: tests/setup.sh installs Debian's prometheus package", pytrace=False)
    return path


def test_alert_rules_pass_promtool():
    out = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_live_metrics_pass_promtool_lint(start_gateway):
    text = live_metrics(start_gateway)
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr + text
