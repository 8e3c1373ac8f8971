"""The operator bench's reading of the operator's Prometheus text."""

from __future__ import annotations

from bench.operator_costs import metric_by_label, metric_value

TEXT = """\
# HELP kernelsession_passes_total Reconcile passes begun
# TYPE kernelsession_passes_total counter
kernelsession_passes_total{cause="first"} 100.0
kernelsession_passes_total{cause="Pod",other="a \\"quoted\\" value"} 412.0
kernelsession_passes_total{cause="timer"} 3.0e2
kernelsession_passes_created{cause="first"} 1.7e9
kernelsession_reconciles_total 812.0
"""


def test_samples_are_summed_by_a_label() -> None:
    assert metric_by_label(TEXT, "kernelsession_passes_total", "cause") == {
        "first": 100.0,
        "Pod": 412.0,
        "timer": 300.0,
    }


def test_a_metric_without_the_label_is_summed_under_the_empty_value() -> None:
    assert metric_by_label(TEXT, "kernelsession_reconciles_total", "cause") == {"": 812.0}
    assert metric_value(TEXT, "kernelsession_passes_total") == 812.0
    assert metric_value(TEXT, "kernelsession_missing_total") == 0.0
