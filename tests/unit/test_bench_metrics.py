"""The operator bench's reading of the operator's Prometheus text, and its table of who
used the CPU."""

from __future__ import annotations

import os
import time

from bench.operator_costs import (
    cpu_by_process,
    cpu_used_since,
    metric_by_label,
    metric_value,
    process_label,
)

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


def test_process_labels_name_the_program_and_a_python_programs_module_or_script() -> None:
    assert process_label(["/usr/bin/kube-apiserver", "--v=1"]) == "kube-apiserver"
    assert process_label(["/opt/x/bin/python3", "-u", "-m", "bench", "scale"]) == "python -m bench"
    assert (
        process_label(
            ["/opt/kernelsession/bin/python3", "/opt/kernelsession/bin/kernelsession-operator"]
        )
        == "python kernelsession-operator"
    )
    assert process_label(["python3", "-c", "print(1)"]) == "python -c"
    assert process_label(["python3"]) == "python3"
    assert process_label([]) == "?"


def test_cpu_used_since_counts_this_process_work_under_its_label() -> None:
    before = cpu_by_process()
    me = before[os.getpid()][0]
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # CPU work to be counted, not a wait
        pass
    used = cpu_used_since(before, top=1000)
    assert used[me] >= 0.2
