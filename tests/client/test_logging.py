"""The token never reaches logs or error strings."""

from __future__ import annotations

import logging

import pytest
import structlog
from structlog.testing import capture_logs

from kernelsession.client import JupyterError, JupyterWebError


async def test_token_absent_from_logs_and_errors(lab, manager_for, caplog):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with capture_logs() as logs:
        async with manager_for(lab, logger=structlog.get_logger("test")) as session:
            await session.run_python("print('x')")
            with pytest.raises(JupyterError) as excinfo:
                await session.run_python(f"raise ValueError({lab.token!r})")
            texts.append(str(excinfo.value))
            texts.append(repr(excinfo.value.__dict__))
            with pytest.raises(JupyterError) as excinfo:
                await session.run_python("import time; time.sleep(5)", timeout=0.5)
            texts.append(str(excinfo.value))
    with pytest.raises(JupyterWebError) as web_error:
        async with manager_for(lab, token=lab.token + "x"):
            pass
    texts.append(str(web_error.value))
    texts.append(repr(web_error.value.__dict__))
    assert logs, "expected structlog events"
    assert all(event.get("user") == "alice" for event in logs)
    texts.extend(repr(event) for event in logs)
    texts.extend(record.getMessage() for record in caplog.records)
    for text in texts:
        assert lab.token not in text
    assert "<redacted>" in texts[0]
