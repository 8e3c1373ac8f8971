"""Which lab pod events wake their session (``podview.PodNews``): only those that change
what a pass reads of the pod (its ``PodView``)."""

from __future__ import annotations

import copy
from typing import Any

from kernelsession.operator.podview import PodNews

SESSION = ("labs", "alice")


def pod(name: str = "ks-alice-lab") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "labs",
            "creationTimestamp": "2026-12-06T07:00:00Z",
        },
        "spec": {"containers": [{"name": "lab", "args": ["--ServerApp.base_url=/u/alice/"]}]},
        "status": {"phase": "Pending"},
    }


def test_the_schedulers_binding_and_condition_bookkeeping_wake_nobody() -> None:
    news = PodNews()
    created = pod()
    assert news.news(SESSION, created, deleted=False)  # first sight: news
    bound = copy.deepcopy(created)
    bound["spec"]["nodeName"] = "node-1"
    bound["metadata"]["resourceVersion"] = "12"
    bound["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    assert not news.news(SESSION, bound, deleted=False)
    initialized = copy.deepcopy(bound)
    initialized["status"]["conditions"].append({"type": "Initialized", "status": "True"})
    initialized["status"]["startTime"] = "2026-12-06T07:00:01Z"
    assert not news.news(SESSION, initialized, deleted=False)


def test_what_a_pass_reads_wakes_it() -> None:
    news = PodNews()
    p = pod()
    assert news.news(SESSION, p, deleted=False)
    p = copy.deepcopy(p)
    p["status"]["containerStatuses"] = [{"state": {"waiting": {"reason": "ContainerCreating"}}}]
    assert news.news(SESSION, p, deleted=False)
    p = copy.deepcopy(p)
    p["status"].update(phase="Running", podIP="10.88.0.7")
    p["status"]["containerStatuses"] = [{"state": {"running": {}}}]
    assert news.news(SESSION, p, deleted=False)
    p = copy.deepcopy(p)
    p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert news.news(SESSION, p, deleted=False)
    assert not news.news(SESSION, copy.deepcopy(p), deleted=False)  # the same again
    p = copy.deepcopy(p)
    p["metadata"]["deletionTimestamp"] = "2026-12-06T08:00:00Z"
    assert news.news(SESSION, p, deleted=False)


def test_a_deleted_pod_is_news_and_its_successor_of_the_same_name_too() -> None:
    news = PodNews()
    p = pod()
    assert news.news(SESSION, p, deleted=False)
    assert news.news(SESSION, p, deleted=True)
    assert len(news) == 0
    assert news.news(SESSION, p, deleted=False)  # made again, same view: still news


def test_a_forgotten_session_leaves_no_view() -> None:
    news = PodNews()
    news.news(SESSION, pod("ks-alice-lab"), deleted=False)
    news.news(SESSION, pod("ks-alice-lab-2"), deleted=False)
    news.news(("labs", "bob"), pod("ks-bob-lab"), deleted=False)
    assert len(news) == 3
    news.forget(SESSION)
    assert len(news) == 1
    assert news.news(SESSION, pod("ks-alice-lab"), deleted=False)
