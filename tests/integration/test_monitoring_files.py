"""The ready-made monitoring in deploy/: the Prometheus rules pass promtool (their syntax,
and their unit tests on synthetic series), the Grafana dashboard's queries parse, and the
dashboard and the rules name only metrics Headrace exports.

promtool comes from Debian's ``prometheus`` package: the ``promtool`` fixture installs it
with apt when it is missing. Without it the tests skip, except under ``CI=true``, where
they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace.observe.metrics import PipelineMetrics
from system_packages import ensure_command

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "headrace.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
SRC = ROOT / "src" / "headrace"

# The server the package's install script would start (policy-rc.d stops that) and enable
# for the next boot: only promtool is wanted.
BOOT_DISABLE = (
    ["update-rc.d", "prometheus", "disable"],
    ["deb-systemd-helper", "disable", "prometheus.service"],
)

METRIC = re.compile(r"\bheadrace_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}
# Metric families built anywhere in the source with a literal name, by constructor.
DECLARED = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|Info|Enum|BulkHistogram|(\w+)MetricFamily)"
    r"\(\s*\"(headrace_[a-z0-9_]+)\""
)
KIND_OF = {"BulkHistogram": "histogram", "Info": "info", "Enum": "enum"}


# --- promtool ------------------------------------------------------------------------------


def _no_server() -> None:
    """After the install: no Prometheus server running, none started at boot."""
    for exe in Path("/proc").glob("[0-9]*/exe"):
        try:
            if os.readlink(exe) == "/usr/bin/prometheus":
                os.kill(int(exe.parent.name), signal.SIGTERM)
        except OSError:
            continue
    for disable in BOOT_DISABLE:  # either init system's; the other one's is harmless
        subprocess.run(disable, capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def promtool() -> str:
    """The path of promtool, installed from Debian's prometheus package when missing."""
    return ensure_command("promtool", "prometheus", recommends=False, after_install=_no_server)


def _run_promtool(promtool: str, *args: str) -> None:
    done = subprocess.run(
        [promtool, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


@pytest.mark.timeout(900)  # the first test may wait for apt
def test_the_alert_rules_pass_promtool_check(promtool: str) -> None:
    _run_promtool(promtool, "check", "rules", ALERTS.name)


@pytest.mark.timeout(900)
def test_the_alert_rules_fire_on_synthetic_series(promtool: str) -> None:
    """deploy/prometheus/alerts_test.yml: lag, no output, failed updates, the circuit
    breaker and dead letters, each firing where it should and not before."""
    _run_promtool(promtool, "test", "rules", ALERTS_TEST.name)


@pytest.mark.timeout(900)
def test_the_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses every panel query, written as a recording rule, with Grafana's
    interval variables filled in."""
    exprs = [
        (panel["title"], t["expr"])
        for panel in panels(dashboard())
        for t in panel.get("targets", [])
    ]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": re.sub(r"\$__\w*interval|\$__range", "5m", e)}
        for i, (_, e) in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    failed = "\n".join(f"query_{i}: panel {title!r}" for i, (title, _) in enumerate(exprs))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n(queries by number)\n{failed}"


# --- the rules' shape ----------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_rule_has_a_duration_a_severity_and_says_what_to_do() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "HeadraceConsumerLagHigh",
        "HeadraceModelCircuitOpen",
        "HeadraceDeadLetterRateHigh",
        "HeadraceModelUpdateFailed",
        "HeadraceNoOutput",
    }
    for rule in rules:
        name = rule["alert"]
        assert "for" in rule, f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert len(annotations.get("description", "")) > 80, f"{name}: no description"


# --- metric names --------------------------------------------------------------------------


def exported_names() -> set[str]:
    """Every series name Headrace can export, in the forms prometheus-client writes them."""
    names: set[str] = set()
    for family in PipelineMetrics().registry.collect():
        names.update(family.name + s for s in SUFFIXES[family.type])
        names.update(s.name for s in family.samples)
    for path in SRC.rglob("*.py"):
        for m in DECLARED.finditer(path.read_text()):
            kind = KIND_OF.get(m.group(1)) or (m.group(2) or m.group(1)).lower()
            names.update(m.group(3) + s for s in SUFFIXES.get(kind, ("",)))
    return names


def test_the_exported_names_are_read_as_prometheus_writes_them() -> None:
    names = exported_names()
    assert {
        "headrace_records_in_total",
        "headrace_model_circuit_open",
        "headrace_end_to_end_latency_seconds_bucket",
        "headrace_batch_size_sum",
        "headrace_batch_size_count",
    } <= names
    assert "headrace_records_in" not in names  # counters are exported with `_total` only


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def family_names() -> set[str]:
    """The metric names as the README and the prose write them (``headrace_records_in``)."""
    return {family.name for family in PipelineMetrics().registry.collect()}


Text = tuple[str, str, bool]  # where, PromQL or prose, whether it is PromQL


def dashboard_texts() -> Iterator[Text]:
    """Every query (variables' and panels') and every panel description of the dashboard."""
    board = dashboard()
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        yield f"variable {var.get('name')!r}", str(query or ""), True
        yield f"variable {var.get('name')!r}", str(var.get("definition", "")), True
    for panel in panels(board):
        where = f"panel {panel.get('title')!r}"
        yield f"{where}, description", str(panel.get("description", "")), False
        for t in panel.get("targets", []):
            yield f"{where}, target {t.get('refId')}", str(t.get("expr", "")), True


def alert_texts() -> Iterator[Text]:
    """Every rule's expression and annotations."""
    for rule in alert_rules():
        where = f"rule {rule['alert']}"
        yield f"{where}, expr", rule["expr"], True
        for key, text in rule.get("annotations", {}).items():
            yield f"{where}, annotation {key}", text, False


@pytest.mark.parametrize(
    ("path", "texts"),
    [(DASHBOARD, dashboard_texts), (ALERTS, alert_texts)],
    ids=["dashboard", "alerts"],
)
def test_every_metric_named_is_one_headrace_exports(path: Path, texts: Any) -> None:
    """In queries, the series names exported; in prose, those or the family names."""
    exported = exported_names()
    in_prose = exported | family_names()
    named = [
        (where, name, promql) for where, text, promql in texts() for name in METRIC.findall(text)
    ]
    assert any(promql for *_, promql in named), f"{path.name}: no headrace_ metric in a query"
    unknown = [
        f"{name} ({path.relative_to(ROOT)}, {where})"
        for where, name, promql in named
        if name not in (exported if promql else in_prose)
    ]
    assert not unknown, "metrics Headrace does not export:\n" + "\n".join(unknown)


def test_the_name_check_catches_an_unknown_metric() -> None:
    text = 'sum(rate(headrace_records_in_total[5m])) / headrace_recods_out_total{job=~"x"}'
    assert [n for n in METRIC.findall(text) if n not in exported_names()] == [
        "headrace_recods_out_total"
    ]


# --- the dashboard -------------------------------------------------------------------------


def test_the_dashboard_loads_and_every_panel_has_a_title_and_a_query() -> None:
    board = dashboard()
    assert board["title"] and board["uid"]
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert {"job", "instance", "worker"} <= variables.keys()
    shown = [p for p in panels(board) if p.get("type") != "row"]
    assert len(shown) >= 15
    for panel in shown:
        assert panel.get("title"), f"panel {panel.get('id')}: no title"
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r}: no target"
        for t in targets:
            assert t.get("expr"), f"panel {panel['title']!r}, target {t.get('refId')}: no expr"
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
