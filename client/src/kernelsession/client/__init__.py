"""kernelsession client: drive JupyterLab sessions from code.

>>> async with JupyterLabSessionManager(
...     base_url="http://lab:8888/user/alice/", token=token, username="alice"
... ) as session:
...     print(await session.run_python("print(6 * 7)"))
42
"""

from ._errors import (
    JupyterError,
    JupyterExecutionError,
    JupyterExecutionTimeoutError,
    JupyterKernelDiedError,
    JupyterOutputLostError,
    JupyterTimeoutError,
    JupyterWebError,
    JupyterWebSocketError,
)
from ._kubernetes import (
    KernelSessionClient,
    KernelSessionError,
    KernelSessionFailedError,
    KernelSessionNotFoundError,
    KernelSessionStatus,
    KernelSessionTimeoutError,
)
from ._models import CodeContext, ExecutionResult, SessionTimings
from ._session import JupyterLabSession, JupyterLabSessionManager

__all__ = [
    "CodeContext",
    "ExecutionResult",
    "JupyterError",
    "JupyterExecutionError",
    "JupyterExecutionTimeoutError",
    "JupyterKernelDiedError",
    "JupyterLabSession",
    "JupyterLabSessionManager",
    "JupyterOutputLostError",
    "JupyterTimeoutError",
    "JupyterWebError",
    "JupyterWebSocketError",
    "KernelSessionClient",
    "KernelSessionError",
    "KernelSessionFailedError",
    "KernelSessionNotFoundError",
    "KernelSessionStatus",
    "KernelSessionTimeoutError",
    "SessionTimings",
]
