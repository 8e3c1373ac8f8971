"""The liveness endpoint answered from its own thread (``health``): what it says before
the operator started, while its event loop turns (busy or not), and when the loop has
not turned for longer than the stall allows."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kernelsession.operator import health


def test_before_the_first_beat_the_endpoint_says_not_yet() -> None:
    live = health.Health()
    status, body = live.answer(time.monotonic())
    assert status == 503
    assert body["started"] is False


def test_a_loop_that_turned_within_the_stall_is_alive_and_says_what_it_holds() -> None:
    live = health.Health(stall=120.0)
    live.beat(active=True, sessions=3000)
    assert live.beat_at is not None
    status, body = live.answer(live.beat_at + 119.0)
    assert status == 200
    assert body == {"started": True, "loop_lag_s": 119.0, "active": True, "sessions": 3000}


def test_a_loop_that_has_not_turned_for_longer_than_the_stall_is_not() -> None:
    live = health.Health(stall=120.0)
    live.beat(active=False, sessions=0)
    assert live.beat_at is not None
    status, body = live.answer(live.beat_at + 121.0)
    assert status == 503
    assert body["loop_lag_s"] == 121.0


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served() -> Iterator[tuple[health.Health, str]]:
    live = health.Health(stall=0.5)
    server = health.serve(live, 0, host="127.0.0.1")
    try:
        yield live, f"http://127.0.0.1:{server.server_address[1]}{health.PATH}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_thread_answers_while_the_loop_is_blocked_and_says_so(
    served: tuple[health.Health, str],
) -> None:
    live, url = served
    seen: list[tuple[int, float]] = []  # (status, seconds the answer took)
    blocked = threading.Event()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            status, _ = _get(url)
            seen.append((status, time.monotonic() - t0))
            if blocked.is_set() and status == 503:
                return

    async def operator_loop() -> None:
        beats = asyncio.create_task(health.heartbeat(live, lambda: (True, 7)))
        deadline = time.monotonic() + 10
        while live.beat_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # until the first beat
        assert _get(url)[0] == 200
        poller = threading.Thread(target=poll, daemon=True)
        blocked.set()
        poller.start()
        # the fault under test: the loop does not turn (a blocking call inside it) for
        # longer than the stall, until the endpoint has said so or 10 s passed
        stuck_until = time.monotonic() + 10
        while time.monotonic() < stuck_until and not any(s == 503 for s, _ in seen):
            time.sleep(0.05)
        done.set()
        poller.join(timeout=5)
        await asyncio.sleep(health.BEAT * 1.5)  # the loop turns again: a beat follows
        status, body = _get(url)
        assert status == 200
        assert (body["active"], body["sessions"]) == (True, 7)
        beats.cancel()

    asyncio.run(operator_loop())
    assert any(status == 503 for status, _ in seen)
    assert all(took < 2 for _, took in seen)  # answered while the loop was stuck


def test_other_paths_are_not_found(served: tuple[health.Health, str]) -> None:
    _, url = served
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url.replace("/healthz", "/metrics"), timeout=2)
    assert caught.value.code == 404
