"""The Prometheus rules of observability/prometheus (recording and alerting), checked with
promtool: the files load (`promtool check rules`), every promtool unit test passes (`promtool test
rules`), every alert has a test case where it fires and one where it does not, every alert carries
its severity and its summary/description/runbook, and every metric the rules read is one the code
registers (or Prometheus' `up`, or Envoy's own stats). Also: compose's Prometheus configuration
(`promtool check config`, the jobs the rules assume) and the Grafana dashboard (it reads series that
are recorded or exported).

promtool comes from Debian's `prometheus` package (set-up installs it); without it these tests
fail, they do not skip: the alerts would otherwise ship untested.

No YAML library is a dependency: the rule and test files are read with a few line patterns, and the
rule count promtool reports checks that the patterns saw every rule."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.bootstrap import REPO

PROMETHEUS = REPO / "observability" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARDS = sorted((REPO / "observability" / "grafana" / "dashboards").glob("*.json"))
# The scrape the rules assume (recording.yml's header): one job per workload.
JOBS = {"auth", "recipients", "capsules", "notifications", "gateway", "envoy", "control-plane"}
CODE_DIRS = ("services", "gateway")
# Metrics the code does not register: Prometheus' own, and Envoy's /stats/prometheus.
EXTERNAL_METRICS = {"up", "ALERTS"}
EXTERNAL_PREFIXES = ("envoy_",)
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    if found is None:
        pytest.fail(
            "promtool not found (on PATH or at /usr/bin/promtool): install Debian's `prometheus` package "
            "(apt-get install prometheus) to check and unit-test the alerting rules",
            pytrace=False,
        )
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=PROMETHEUS)


def rules_of(path: Path) -> list[dict[str, str]]:
    """Each rule of a rule file: its kind (alert/record), name, and its text (expr, labels,
    annotations), up to the next rule or group."""
    rules: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        if match := re.match(r"\s*- (alert|record): (\S+)\s*$", line):
            rules.append({"kind": match.group(1), "name": match.group(2), "text": ""})
        elif re.match(r"\s*- name: ", line):
            rules.append({"kind": "group", "name": "", "text": ""})
        elif rules and not line.lstrip().startswith("#"):
            rules[-1]["text"] += line + "\n"
    return [rule for rule in rules if rule["kind"] != "group"]


def all_rules() -> list[dict[str, str]]:
    return [rule for path in RULE_FILES for rule in rules_of(path)]


def alert_names() -> list[str]:
    return [rule["name"] for rule in all_rules() if rule["kind"] == "alert"]


def expr_of(rule: dict[str, str]) -> str:
    """The expr (one line, or the `|` block under it) of a rule's text."""
    lines = rule["text"].splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("expr:"))
    indent = len(lines[start]) - len(lines[start].lstrip())
    expr = [lines[start].split("expr:", 1)[1]]
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        expr.append(line)
    return "\n".join(expr).strip().removeprefix("|")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (recorded series, with a colon, excepted)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()[:1]
        if word in PROMQL_WORDS or following == "(" or ":" in word or re.fullmatch(r"[0-9.e]+", word):
            continue
        names.add(word)
    return names


def registered_metrics() -> set[str]:
    """Every metric name given as a string to a prometheus_client constructor in the code."""
    names = set()
    pattern = re.compile(r'(?:Counter|Gauge|Histogram|Summary)\(\s*"([a-z_:][a-z0-9_:]*)"', re.S)
    for directory in CODE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            names |= set(pattern.findall(path.read_text()))
    return names


def check_series_exist(where: str, expr: str, recorded: set[str], registered: set[str]) -> None:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    for name in re.findall(r"\b[a-z_]+:[a-z0-9_:]+", text):
        assert name in recorded, (where, name)
    for name in metric_names(expr):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        known = name in registered or base in registered or name in EXTERNAL_METRICS
        assert known or name.startswith(EXTERNAL_PREFIXES), (where, name)


def test_promtool_accepts_the_rule_files_and_sees_every_rule() -> None:
    assert RULE_FILES, "no rule files in observability/prometheus/rules"
    result = run("check", "rules", *(str(p) for p in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout)]
    assert sum(counts) == len(all_rules()), (counts, "a rule this test's line patterns did not see")


def test_the_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "no promtool test files in observability/prometheus/tests"
    result = run("test", "rules", *(str(p) for p in TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        cases = re.findall(r"alertname: (\S+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", path.read_text())
        for name, empty in cases:
            (silent if empty else fires).add(name)
    names = alert_names()
    assert len(names) == len(set(names)), "an alert name used twice"
    assert names, "no alerts"
    assert sorted(set(names) - fires) == [], "alerts never shown firing"
    assert sorted(set(names) - silent) == [], "alerts never shown silent"
    assert sorted((fires | silent) - set(names)) == [], "test cases of alerts that do not exist"


def test_every_alert_has_a_severity_and_runbook_style_annotations() -> None:
    for rule in all_rules():
        if rule["kind"] != "alert":
            continue
        text = rule["text"]
        assert re.search(r"^\s+severity: (page|ticket)\s*$", text, re.M), rule["name"]
        for annotation in ("summary", "description", "runbook"):
            assert re.search(rf"^\s+{annotation}: \S", text, re.M), (rule["name"], annotation)


def test_the_rules_read_metrics_the_code_exports_and_series_they_record() -> None:
    registered = registered_metrics()
    assert {"grpc_server_handled_total", "gateway_http_requests_total"} <= registered  # the scan works
    recorded = {rule["name"] for rule in all_rules() if rule["kind"] == "record"}
    for rule in all_rules():
        check_series_exist(rule["name"], expr_of(rule), recorded, registered)


def test_composes_prometheus_config_loads_the_rules_and_scrapes_the_jobs_the_rules_assume() -> None:
    config = PROMETHEUS / "prometheus.yml"
    result = run("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout, result.stdout
    jobs = set(re.findall(r"^\s*- job_name: (\S+)\s*$", config.read_text(), re.M))
    # Every job the rules name is scraped, the control plane's admin port included.
    assert jobs == JOBS
    # InstanceDown watches the same jobs.
    watched = re.search(r'up\{job=~"([^"]+)"\}', (PROMETHEUS / "rules" / "alerts.yml").read_text())
    assert watched and set(watched.group(1).split("|")) == JOBS


def test_the_dashboard_reads_recorded_or_exported_series() -> None:
    assert DASHBOARDS, "no Grafana dashboard"
    recorded = {rule["name"] for rule in all_rules() if rule["kind"] == "record"}
    registered = registered_metrics()
    datasources = (REPO / "observability/grafana/provisioning/datasources/datasources.yaml").read_text()
    uids = set(re.findall(r'"uid": "([^"]+)"', datasources))
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"], path.name
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
        used_recorded: set[str] = set()
        for panel in panels:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in uids, (panel["title"], target["datasource"])
                check_series_exist(panel["title"], target["expr"], recorded, registered)
                used_recorded |= set(re.findall(r"\b[a-z_]+:[a-z0-9_:]+", target["expr"]))
        # RED per route and per RPC come from the recording rules, not from raw series.
        assert {
            "route_method:gateway_http_requests:rate5m",
            "route_method:gateway_http_errors:rate5m",
            "route_method:gateway_http_request_duration_seconds:p99_5m",
            "job_service_method:grpc_server_requests:rate5m",
            "job_service_method:grpc_server_errors:rate5m",
            "job_service_method:grpc_server_handling_seconds:p99_5m",
        } <= used_recorded
