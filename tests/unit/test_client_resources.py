"""The public resources module: names, phases, status parsing, token reading."""

from __future__ import annotations

import base64

import kernelsession.client as ks
from kernelsession.client import resources
from kernelsession.client.resources import KernelSessionStatus, Phase, parse_status, read_token


def test_names_and_reexports():
    assert (resources.GROUP, resources.VERSION, resources.PLURAL, resources.KIND) == (
        "kernelsession.dev",
        "v1alpha1",
        "kernelsessions",
        "KernelSession",
    )
    assert resources.API_VERSION == "kernelsession.dev/v1alpha1"
    assert resources.CRD_NAME == "kernelsessions.kernelsession.dev"
    assert resources.DEFAULT_NAMESPACE == "labs"
    assert ks.Phase is Phase
    assert ks.KernelSessionStatus is KernelSessionStatus
    assert ks.GROUP == resources.GROUP


def test_phase_parse_and_terminal():
    assert [p.value for p in Phase] == [
        "Pending", "Starting", "Ready", "Failed", "Culled", "Suspended", "Terminating",
    ]  # fmt: skip
    assert Phase.parse("Culled") is Phase.CULLED
    assert Phase.parse("Bogus") is None
    assert Phase.parse(None) is None
    assert Phase.FAILED.terminal
    assert not Phase.STARTING.terminal


def test_parse_status():
    obj = {
        "metadata": {"name": "a", "namespace": "labs", "generation": 2},
        "spec": {"user": "alice"},
        "status": {
            "phase": "Ready",
            "observedGeneration": 2,
            "url": "http://x/",
            "tokenSecretName": "a-token",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    status = parse_status(obj)
    assert (status.name, status.user, status.phase_enum, status.ready) == (
        "a",
        "alice",
        Phase.READY,
        True,
    )
    assert status.current
    assert status.token_secret_name == "a-token"
    assert KernelSessionStatus.from_object(obj) == status
    empty = parse_status({})
    assert (empty.phase, empty.ready, empty.current) == (None, False, False)
    assert empty.describe() == "/: Unknown"


def test_read_token():
    assert read_token({"token": base64.b64encode(b"abc").decode()}) == "abc"
    assert read_token({}) is None
    assert read_token(None) is None
    assert read_token({"token": "***not base64***"}) is None
