"""Error text: ANSI stripping, redaction, readable multi-line str()."""

from __future__ import annotations

from datetime import UTC, datetime

from kernelsession.client import (
    CodeContext,
    JupyterExecutionError,
    JupyterWebError,
    JupyterWebSocketError,
)
from kernelsession.client._errors import redact, strip_ansi

TOKEN = "0123456789abcdef0123456789abcdef"


def test_strip_ansi():
    assert strip_ansi("\x1b[0;31mZeroDivisionError\x1b[0m: x\x1b[1A") == "ZeroDivisionError: x"
    assert strip_ansi("plain") == "plain"


def test_redact_secret_and_params():
    text = f"GET /api?token={TOKEN}&x=1 body {TOKEN} Authorization: token abc password=pw"
    out = redact(text, [TOKEN])
    assert TOKEN not in out
    assert "abc" not in out
    assert "pw" not in out
    assert "&x=1" in out
    assert redact("token=zzz&other=1") == "token=<redacted>&other=1"
    assert redact("nothing secret", [""]) == "nothing secret"


def test_web_error_redacts_everything():
    error = JupyterWebError(
        f"login failed for {TOKEN}",
        method="POST",
        url=f"http://lab/login?token={TOKEN}",
        status=403,
        body=f"<html>bad token {TOKEN}</html>",
        user="alice",
        secrets=(TOKEN,),
    )
    for text in (str(error), error.url, error.body or "", error.message, repr(error.__dict__)):
        assert TOKEN not in text
    assert "403" in str(error)
    assert "POST http://lab/login?token=<redacted>" in str(error)


def test_execution_error_str():
    started = datetime(2024, 1, 1, tzinfo=UTC)
    error = JupyterExecutionError(
        "NameError: name 'x' is not defined",
        error="\x1b[31mNameError\x1b[0m Traceback\n----> 1 x",
        ename="NameError",
        evalue="name 'x' is not defined",
        status="error",
        user="bob",
        started_at=started,
        context=CodeContext(notebook="a.ipynb", cell_number="2"),
        code="x",
    )
    text = str(error)
    assert text.splitlines()[0] == "JupyterExecutionError: NameError: name 'x' is not defined"
    assert "user: bob" in text
    assert "context: notebook=a.ipynb, cell_number=2" in text
    assert "\x1b" not in text
    assert "    ----> 1 x" in text
    assert error.started_at == started
    assert error.failed_at >= started
    assert "\x1b[31m" in (error.error or "")


def test_websocket_error_code():
    error = JupyterWebSocketError("broke", close_code=1006, code="print(1)", user="u")
    assert error.code == 1006
    assert error.running_code == "print(1)"
    assert "close code: 1006" in str(error)


def test_to_dict_is_structured_and_redacted():
    import json
    from datetime import UTC, datetime

    from kernelsession.client import (
        CodeContext,
        JupyterExecutionError,
        JupyterWebError,
        JupyterWebSocketError,
    )

    token = "tok-3f9a2c"
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    error = JupyterExecutionError(
        f"ValueError: {token}",
        error=f"\x1b[31mTraceback\x1b[0m: ValueError({token!r})",
        ename="ValueError",
        evalue=token,
        status="error",
        user="alice",
        started_at=started,
        context=CodeContext(notebook="n.ipynb", cell="c1", cell_number="2"),
        code=f"raise ValueError({token!r})",
        secrets=(token,),
    )
    d = error.to_dict()
    assert d["type"] == "JupyterExecutionError"
    assert d["user"] == "alice"
    assert d["started_at"] == started.isoformat()
    assert d["context"] == {
        "node": None, "image": None, "notebook": "n.ipynb", "cell": "c1", "cell_number": "2",
    }  # fmt: skip
    assert d["traceback"] == "Traceback: ValueError('<redacted>')"
    assert d["ename"] == "ValueError"
    assert "<redacted>" in d["code"]
    web = JupyterWebError(
        "login failed",
        method="POST",
        url=f"http://lab/login?token={token}",
        status=403,
        body=f"bad {token}",
        secrets=(token,),
    )
    ws = JupyterWebSocketError("broke", close_code=1006, code="print(1)", secrets=(token,))
    assert ws.to_dict()["close_code"] == 1006
    assert ws.to_dict()["code"] == "print(1)"
    for item in (error, web, ws):
        text = json.dumps(item.to_dict())
        assert token not in text
    assert web.to_dict()["status"] == 403
    assert web.to_dict()["traceback"] is None  # never raised
