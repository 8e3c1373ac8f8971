"""The alerts in manifests/monitoring/: valid rules, unit-tested with ``promtool test rules``
(Debian's ``prometheus`` package, which ``make setup`` installs), on metrics that exist, and
kept out of ``kubectl apply -k manifests/`` (clusters without the Prometheus Operator)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
CASES = Path(__file__).parent / "fixtures" / "alerts.test.yaml"
METRIC = re.compile(r"\bkernelsession_[a-z_]+\b")
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _rule() -> dict[str, Any]:
    rule: dict[str, Any] = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return rule


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _rule()["spec"]["groups"] for r in g["rules"] if "alert" in r]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: `make setup` installs it (Debian package `prometheus`; "
            "`python -m kernelsession.localcluster.host.ospackages install monitoring`)"
        )
    return path


@pytest.fixture
def rule_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's groups as the plain rule file promtool reads, beside the cases."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": _rule()["spec"]["groups"]}))
    shutil.copy(CASES, tmp_path / CASES.name)
    return tmp_path


def test_rules_are_valid(rule_dir: Path) -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", "rules.yaml"],
        cwd=rule_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_alerts_fire_as_the_cases_say(rule_dir: Path) -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", CASES.name],
        cwd=rule_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_cases_that_fire_it_and_keep_it_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(CASES.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fired == set(), "alerts never seen firing in the cases"
    assert names - quiet == set(), "alerts never seen staying quiet in the cases"


def test_alerts_have_severity_and_summary() -> None:
    for alert in _alerts():
        assert alert["labels"]["severity"] in ("page", "ticket"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]


def _exported_metrics() -> set[str]:
    """Metric names the operator and the client (the probers) declare in their sources."""
    names: set[str] = set()
    for package in ("operator", "client"):
        for source in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"[\"'](kernelsession_[a-z_]+)[\"']", source.read_text()))
    return names


def test_alerts_use_metrics_that_exist() -> None:
    exported = _exported_metrics()
    assert {"kernelsession_leader", "kernelsession_probe_up"} <= exported
    for alert in _alerts():
        text = alert["expr"] + " ".join(alert.get("annotations", {}).values())
        for name in METRIC.findall(text):
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            assert name in exported or base in exported, f"{alert['alert']}: {name}"


def _kustomized_kinds(directory: Path) -> set[str]:
    """apiVersion/kind of every object a kustomization reaches (resources, recursively)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    kinds: set[str] = set()
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            kinds |= _kustomized_kinds(path)
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kinds.add(f"{doc['apiVersion']}/{doc['kind']}")
    return kinds


def test_monitoring_is_its_own_kustomization() -> None:
    assert _kustomized_kinds(MONITORING) == {"monitoring.coreos.com/v1/PrometheusRule"}
    assert not any(
        k.startswith("monitoring.coreos.com/") for k in _kustomized_kinds(ROOT / "manifests")
    )
