"""When a pass reads the token Secret (observe._token) and when it trusts what it holds.

The fake Kube below stands in for the API server's answer to one Secret read; it counts
reads, which is what these tests are about (the cluster tests read real Secrets)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, cast

import pytest

from kernelsession.operator import observe
from kernelsession.operator.state import SessionState, TokenRecord

SESSION_UID = "uid-of-the-session"


class CountingKube:
    def __init__(self) -> None:
        self.reads = 0

    async def read_token(
        self, namespace: str, name: str
    ) -> tuple[str, str, Mapping[str, str], tuple[str, ...]]:
        self.reads += 1
        return ("secret-uid", "read-token", {"kernelsession.dev/session": "a"}, (SESSION_UID,))


def setup(
    record: TokenRecord | None, phase: str | None = "Pending"
) -> tuple[Any, SessionState, CountingKube]:
    kube = CountingKube()
    rt = cast(Any, type("Rt", (), {"kube": kube})())
    body: dict[str, Any] = {"metadata": {"name": "a", "namespace": "labs", "uid": SESSION_UID}}
    if phase:
        body["status"] = {"phase": phase}
    state = SessionState(("labs", "a"), body)
    state.token = record
    return rt, state, kube


def old() -> float:
    return time.monotonic() - observe.FRESH_TOKEN_AGE - 100


async def test_a_token_made_here_and_unused_is_not_read_before_its_first_pod() -> None:
    rt, state, kube = setup(TokenRecord("secret-uid", "made-token", old(), unused=True))
    found = await observe._token(rt, state, fresh=True)
    assert kube.reads == 0
    assert found is not None
    assert found.token == "made-token"


async def test_a_used_token_is_read_again_before_another_pod() -> None:
    rt, state, kube = setup(TokenRecord("secret-uid", "made-token", old(), unused=False))
    found = await observe._token(rt, state, fresh=True)
    assert kube.reads == 1
    assert found is not None
    assert found.token == "read-token"
    assert not found.unused


async def test_a_token_read_recently_is_not_read_again() -> None:
    rt, state, kube = setup(TokenRecord("secret-uid", "t", time.monotonic()))
    await observe._token(rt, state, fresh=True)
    assert kube.reads == 0


@pytest.mark.parametrize("fresh", [True, False])
async def test_nothing_held_means_a_read(fresh: bool) -> None:
    rt, state, kube = setup(None)
    await observe._token(rt, state, fresh=fresh)
    assert kube.reads == 1


async def test_a_new_session_s_token_is_made_not_read() -> None:
    rt, state, kube = setup(None, phase=None)
    assert await observe._token(rt, state, fresh=True) is None
    assert kube.reads == 0


async def test_once_a_create_was_tried_a_new_session_s_token_is_read() -> None:
    # the create was answered 409 (a Secret of the name exists): the next pass reads it
    rt, state, kube = setup(None, phase=None)
    state.token_create_tried = True
    found = await observe._token(rt, state, fresh=True)
    assert kube.reads == 1
    assert found is not None
