"""Every request of the client to the Kubernetes API has a deadline: against a real
server socket on loopback that accepts and never answers, the CLI fails with a message
naming the request instead of hanging."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kernelsession.client.cli import main


@pytest.fixture
def hung_api(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for an API server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_exec_by_name_against_a_hung_api_server_fails_at_the_deadline(
    hung_api: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(hung_api))
    monkeypatch.setenv("KERNELSESSION_API_TIMEOUT", "0.5")
    assert main(["exec", "alice", "-c", "print(1)"]) == 1
    err = capsys.readouterr().err
    assert (
        "did not answer GET /apis/kernelsession.dev/v1alpha1/namespaces/labs/"
        "kernelsessions/alice within 0.5 s" in err
    ), err
    assert "not-a-real-token" not in err
    assert "Traceback" not in err


async def test_a_port_forward_the_api_server_never_opens_fails_at_the_deadline(
    hung_api: Path,
) -> None:
    """``kernelsession open``'s streams: the websocket handshake has a deadline too."""
    from kubernetes_asyncio import client, config

    from kernelsession.client.cli._portforward import PortForwardError, PortForwardUpstream

    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(hung_api), client_configuration=cfg)
    upstream = PortForwardUpstream(cfg, namespace="labs", pod="lab", port=8888, connect_timeout=0.5)
    try:
        with pytest.raises(
            PortForwardError, match=r"did not open the port-forward .* within 0\.5 s"
        ):
            await upstream.connect()
    finally:
        await upstream.aclose()
