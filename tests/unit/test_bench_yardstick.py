"""The CPU yardstick the benches give operator CPU in (no cluster; no timings asserted)."""

from __future__ import annotations

import json
import math

import pytest

from bench import yardstick


def test_a_round_does_the_same_work_each_time() -> None:
    texts = [json.dumps(yardstick._pod(i)).encode() for i in range(3)]
    first = yardstick._round(texts)
    assert first > 0
    assert yardstick._round(texts) == first
    assert yardstick._round(texts[:1]) < first


def test_the_event_is_the_size_of_a_lab_pod_watch_event() -> None:
    size = len(json.dumps(yardstick._pod(7)))
    assert 2_000 < size < 8_000


def test_measure_gives_cpu_milliseconds_and_refuses_empty_work() -> None:
    assert yardstick.measure(rounds=1, events=20) > 0
    with pytest.raises(ValueError, match="at least 1"):
        yardstick.measure(rounds=0)
    with pytest.raises(ValueError, match="at least 1"):
        yardstick.measure(events=0)


def test_in_yardsticks_divides_and_has_no_answer_without_a_yardstick() -> None:
    assert yardstick.in_yardsticks(92.0, 40.0) == 2.3
    assert math.isnan(yardstick.in_yardsticks(92.0, 0.0))
    assert math.isnan(yardstick.in_yardsticks(92.0, math.nan))
