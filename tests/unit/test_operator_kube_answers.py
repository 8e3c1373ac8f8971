"""The operator reads the API server's answers as JSON (``kube.answer``), not as the
generated client's model objects: what a create, a delete and a token read give back,
and how a refusal surfaces. A local HTTP server stands in for the API server's answers
(the cluster tests make the same calls against the real one)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from helpers import serving
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kernelsession.client.kubeapi import DeadlineApiClient, api_message
from kernelsession.operator.kube import ChildRejected, Kube, answer

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "alice-lab", "namespace": "labs"},
    "spec": {"containers": [{"name": "lab", "image": "lab"}]},
}


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "status": "Failure", "reason": reason, "message": message}
    return web.json_response(body, status=code)


async def _create_pod(request: web.Request) -> web.Response:
    sent = await request.json()
    name = sent["metadata"]["name"]
    if name == "taken":
        return _status(409, "AlreadyExists", 'pods "taken" already exists')
    if name == "invalid":
        return _status(
            422, "Invalid", 'Pod "invalid" is invalid: spec.containers[0].image: Required value'
        )
    # the answer carries fields the model would check (an empty containerStatuses entry)
    return web.json_response(
        {
            **sent,
            "metadata": {**sent["metadata"], "uid": "uid-1"},
            "status": {"containerStatuses": [{}]},
        },
        status=201,
    )


async def _read_secret(request: web.Request) -> web.Response:
    if request.match_info["name"] != "alice-token":
        return _status(404, "NotFound", "not found")
    return web.json_response(
        {
            "metadata": {
                "name": "alice-token",
                "uid": "secret-uid",
                "labels": {"kernelsession.dev/session": "alice"},
                "ownerReferences": [
                    {"uid": "session-uid", "kind": "KernelSession", "name": "alice"}
                ],
            },
            "data": {"token": base64.b64encode(b"s3cret").decode()},
        }
    )


async def _delete_pod(request: web.Request) -> web.Response:
    if request.match_info["name"] == "gone":
        return _status(404, "NotFound", 'pods "gone" not found')
    return web.json_response({"kind": "Pod", "metadata": {"name": request.match_info["name"]}})


@pytest.fixture
async def kube() -> AsyncIterator[Kube]:
    app = web.Application()
    app.router.add_post("/api/v1/namespaces/labs/pods", _create_pod)
    app.router.add_get("/api/v1/namespaces/labs/secrets/{name}", _read_secret)
    app.router.add_delete("/api/v1/namespaces/labs/pods/{name}", _delete_pod)
    async with serving(app) as url:
        api = DeadlineApiClient(client.Configuration(host=url))
        try:
            yield Kube(api)
        finally:
            await api.close()


async def test_a_create_answers_the_new_objects_uid_even_where_the_model_would_refuse_it(
    kube: Kube,
) -> None:
    assert await kube.create(POD) == "uid-1"


async def test_a_create_of_what_exists_answers_none(kube: Kube) -> None:
    taken = {**POD, "metadata": {"name": "taken", "namespace": "labs"}}
    assert await kube.create(taken) is None


async def test_a_refused_create_names_the_field(kube: Kube) -> None:
    invalid = {**POD, "metadata": {"name": "invalid", "namespace": "labs"}}
    with pytest.raises(ChildRejected) as caught:
        await kube.create(invalid)
    assert caught.value.status == 422
    assert "spec.containers[0].image: Required value" in caught.value.message


async def test_a_token_read_gives_uid_token_labels_and_owners(kube: Kube) -> None:
    assert await kube.read_token("labs", "alice-token") == (
        "secret-uid",
        "s3cret",
        {"kernelsession.dev/session": "alice"},
        ("session-uid",),
    )
    assert await kube.read_token("labs", "bob-token") is None


async def test_deleting_a_pod_that_is_gone_is_fine(kube: Kube) -> None:
    await kube.delete_pod("labs", "alice-lab")
    await kube.delete_pod("labs", "gone")


async def test_an_answer_outside_2xx_raises_the_api_exception_with_its_message(kube: Kube) -> None:
    with pytest.raises(ApiException) as caught:
        await answer(kube.core.read_namespaced_secret, "bob-token", "labs")
    assert caught.value.status == 404
    assert isinstance(caught.value.body, str)
    assert api_message(caught.value) == "not found"
    found: dict[str, Any] = await answer(kube.core.read_namespaced_secret, "alice-token", "labs")
    assert json.dumps(found["data"]) == json.dumps({"token": base64.b64encode(b"s3cret").decode()})
